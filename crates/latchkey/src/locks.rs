//! The lock service: [`latchkey_lock::LockManager`] made durable on a
//! [`Db`]. Every grant is on disk (fsynced, whatever the database's sync
//! policy) before it is returned, and raises the lock's fencing token in
//! the store in the same batch, so a fenced write carrying any older token
//! is refused from that moment on, even if the new holder has not written
//! yet. After a restart every token is still higher than all before it.
//!
//! ```
//! # fn main() -> latchkey::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! use std::time::Duration;
//! use latchkey::{Db, LockService, Options, WriteBatch};
//! let db = Db::open(dir.path(), Options::default())?;
//! let locks = LockService::open(&db)?;
//! let grant = locks.acquire("invoices", "worker-1", Duration::from_secs(10), Duration::ZERO)?.expect("free");
//! let mut write = WriteBatch::new();
//! write.put(b"invoice:7", b"paid").fence("invoices", grant.token);
//! db.write(write)?;
//! locks.release("invoices", "worker-1")?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use latchkey_lock::{Acquire, Events, LockInfo, LockManager, WaiterId};
pub use latchkey_lock::{Grant, LockError};
use parking_lot::{Condvar, Mutex};

use crate::batch::{WriteBatch, RESERVED_PREFIX};
use crate::codec::read_u64;
use crate::db::{now_ms, Db};
use crate::error::{Error, Result};

/// Called once with the outcome of a queued acquire: the grant, `None` if
/// the wait ran out, or an error if the grant could not be made durable.
pub type Callback = Box<dyn FnOnce(Result<Option<Grant>>) + Send>;

const LOCK_RECORD: &[u8] = b"lock\x00";

struct State {
    manager: LockManager,
    waiters: HashMap<WaiterId, Callback>,
    next_id: WaiterId,
    stop: bool,
}

struct Shared {
    db: Db,
    state: Mutex<State>,
    wake: Condvar,
}

/// Durable fenced locks over a [`Db`]. Cheap to clone; clones share state.
/// Open one per database: two services on one database would each believe
/// they alone grant tokens.
#[derive(Clone)]
pub struct LockService {
    shared: Arc<Shared>,
    _ticker: Arc<Ticker>,
}

struct Ticker {
    shared: Arc<Shared>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.shared.state.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The outcome of [`LockService::acquire_with`].
pub enum Pending {
    /// Decided at once: granted, or busy (`None`).
    Done(Option<Grant>),
    /// Queued; the callback will be called. Cancel with the id.
    Queued(WaiterId),
}

impl LockService {
    /// Loads every lock's last token and live lease from `db` and starts
    /// the thread that ends leases and waits.
    pub fn open(db: &Db) -> Result<LockService> {
        let mut manager = LockManager::new();
        let now = now_ms();
        for item in db.scan_reserved(LOCK_RECORD)? {
            let (key, value) = item?;
            let name = String::from_utf8_lossy(&key[RESERVED_PREFIX.len() + LOCK_RECORD.len()..]).into_owned();
            let (Some(token), Some(expires_at)) = (read_u64(&value), value.get(8..).and_then(read_u64)) else {
                return Err(Error::InvalidArgument(format!("lock record of {name:?} is malformed")));
            };
            let owner = String::from_utf8_lossy(value.get(16..).unwrap_or_default()).into_owned();
            let holder = (expires_at > now && !owner.is_empty()).then_some((owner, expires_at));
            manager.restore(&name, token, holder);
        }
        let shared = Arc::new(Shared {
            db: db.clone(),
            state: Mutex::new(State { manager, waiters: HashMap::new(), next_id: 1, stop: false }),
            wake: Condvar::new(),
        });
        let bg = Arc::clone(&shared);
        let handle = std::thread::Builder::new()
            .name("latchkey-locks".into())
            .spawn(move || ticker(&bg))
            .map_err(|e| Error::io("<lock service thread>", e))?;
        Ok(LockService { shared: Arc::clone(&shared), _ticker: Arc::new(Ticker { shared, handle: Some(handle) }) })
    }

    /// Takes `name` for `owner` with a lease of `ttl`, waiting up to `wait`
    /// (first come, first served) if it is held. Returns `None` if the wait
    /// ran out. The grant is durable when this returns.
    pub fn acquire(&self, name: &str, owner: &str, ttl: Duration, wait: Duration) -> Result<Option<Grant>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let cb: Callback = Box::new(move |r| {
            let _ = tx.send(r);
        });
        match self.acquire_with(name, owner, ttl, wait, cb)? {
            Pending::Done(g) => Ok(g),
            Pending::Queued(_) => rx.recv().map_err(|_| Error::Closed)?,
        }
    }

    /// Like [`acquire`](Self::acquire) without blocking: a lock that is
    /// free (or busy with `wait` zero) is decided at once; otherwise the
    /// caller is queued and `done` is called later from another thread.
    pub fn acquire_with(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
        wait: Duration,
        done: Callback,
    ) -> Result<Pending> {
        let now = now_ms();
        let mut st = self.shared.state.lock();
        let id = st.next_id;
        st.next_id += 1;
        // The clock counts whole milliseconds and truncates: round waits and
        // leases up, so neither ends before the time asked for.
        let waiting = (!wait.is_zero()).then(|| (id, now.saturating_add(wait.as_millis() as u64 + 1)));
        match st.manager.acquire(name, owner, lease_ms(ttl), now, waiting) {
            Acquire::Granted(g) => {
                persist(&self.shared.db, std::slice::from_ref(&g))?;
                drop(st);
                self.shared.db.sync()?;
                Ok(Pending::Done(Some(g)))
            }
            Acquire::Busy => Ok(Pending::Done(None)),
            Acquire::Queued => {
                st.waiters.insert(id, done);
                drop(st);
                self.shared.wake.notify_all();
                Ok(Pending::Queued(id))
            }
        }
    }

    /// Stops waiting: the callback of queued acquire `id` is dropped
    /// uncalled. Returns false if it was no longer queued.
    pub fn cancel(&self, name: &str, id: WaiterId) -> bool {
        let mut st = self.shared.state.lock();
        st.waiters.remove(&id);
        st.manager.cancel(name, id)
    }

    /// Gives up `owner`'s lease; the first waiter gets the lock at once.
    pub fn release(&self, name: &str, owner: &str) -> Result<std::result::Result<(), LockError>> {
        let now = now_ms();
        let mut st = self.shared.state.lock();
        let events = match st.manager.release(name, owner, now) {
            Ok(e) => e,
            Err(e) => return Ok(Err(e)),
        };
        let info = st.manager.info(name, now);
        persist_free(&self.shared.db, name, info.last_token, events.granted.is_empty())?;
        finish(&self.shared, st, events);
        Ok(Ok(()))
    }

    /// Extends `owner`'s lease to `ttl` from now, keeping its token. Fails
    /// once the lease has run out.
    pub fn renew(&self, name: &str, owner: &str, ttl: Duration) -> Result<std::result::Result<Grant, LockError>> {
        let mut st = self.shared.state.lock();
        match st.manager.renew(name, owner, lease_ms(ttl), now_ms()) {
            Ok(g) => {
                persist(&self.shared.db, std::slice::from_ref(&g))?;
                drop(st);
                self.shared.db.sync()?;
                Ok(Ok(g))
            }
            Err(e) => Ok(Err(e)),
        }
    }

    /// Holder, last token and waiters of `name`.
    pub fn info(&self, name: &str) -> LockInfo {
        self.shared.state.lock().manager.info(name, now_ms())
    }
}

/// A lease of `ttl` in whole milliseconds, rounded up (see `acquire_with`).
fn lease_ms(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).saturating_add(1)
}

/// Writes the records of `grants` (lock state and raised fence), unsynced.
fn persist(db: &Db, grants: &[Grant]) -> Result<()> {
    let mut batch = WriteBatch::new();
    batch.system = true;
    for g in grants {
        let mut v = Vec::with_capacity(16 + g.owner.len());
        v.extend_from_slice(&g.token.to_le_bytes());
        v.extend_from_slice(&g.expires_at.to_le_bytes());
        v.extend_from_slice(g.owner.as_bytes());
        batch.put(record_key(&g.name), v);
        batch.raise_fence(g.name.as_bytes(), g.token);
    }
    db.write_unsynced(batch)
}

/// Records that `name` is free (its last token kept).
fn persist_free(db: &Db, name: &str, last_token: u64, free: bool) -> Result<()> {
    if !free {
        return Ok(()); // the handoff's grant record replaces it
    }
    let mut batch = WriteBatch::new();
    batch.system = true;
    let mut v = last_token.to_le_bytes().to_vec();
    v.extend_from_slice(&0u64.to_le_bytes());
    batch.put(record_key(name), v);
    db.write_unsynced(batch)
}

fn record_key(name: &str) -> Vec<u8> {
    [RESERVED_PREFIX, LOCK_RECORD, name.as_bytes()].concat()
}

/// Persists the grants of `events`, releases the state lock, syncs, then
/// tells the waiters.
fn finish(shared: &Shared, mut st: parking_lot::MutexGuard<'_, State>, events: Events) {
    let grants: Vec<Grant> = events.granted.iter().map(|h| h.grant.clone()).collect();
    let written = if grants.is_empty() { Ok(()) } else { persist(&shared.db, &grants) };
    let mut calls: Vec<(Callback, Result<Option<Grant>>)> = Vec::new();
    for id in events.timed_out {
        if let Some(cb) = st.waiters.remove(&id) {
            calls.push((cb, Ok(None)));
        }
    }
    let granted: Vec<_> =
        events.granted.into_iter().filter_map(|h| st.waiters.remove(&h.waiter).map(|cb| (cb, h.grant))).collect();
    drop(st);
    let durable = written.and_then(|()| shared.db.sync());
    for (cb, grant) in granted {
        let r = match &durable {
            Ok(()) => Ok(Some(grant)),
            Err(e) => Err(Error::Poisoned { cause: e.to_string() }),
        };
        calls.push((cb, r));
    }
    for (cb, r) in calls {
        cb(r);
    }
}

fn ticker(shared: &Shared) {
    let mut st = shared.state.lock();
    loop {
        if st.stop {
            return;
        }
        let now = now_ms();
        let events = st.manager.tick(now);
        if !events.granted.is_empty() || !events.timed_out.is_empty() {
            finish(shared, st, events);
            st = shared.state.lock();
            continue;
        }
        let wait = st
            .manager
            .next_deadline()
            .map_or(Duration::from_millis(500), |d| Duration::from_millis(d.saturating_sub(now).clamp(1, 500)));
        shared.wake.wait_for(&mut st, wait);
    }
}
