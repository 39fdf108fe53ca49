//! The `lsm` engine: an LSM-tree.
//!
//! - **Writes** append a batch to the write-ahead log of the active
//!   memtable, then add it to the memtable (see `memtable`). A full
//!   memtable becomes immutable and a new memtable and log take over at
//!   once; the background thread writes immutable memtables to level-0
//!   tables. Writers wait (a counted stall) only while
//!   `max_immutable_memtables` await a flush.
//! - **Reads** look in the memtables, then level-0 tables newest first,
//!   then one table per deeper level, skipping tables whose bloom filter
//!   rules the key out.
//! - **Compaction** ([`compaction`]) is leveled, in the background; the set
//!   of live tables is recorded in the manifest ([`version`]) and swapped
//!   atomically. Readers hold an `Arc` of the version and memtables they
//!   started with, so scans see a consistent snapshot and files stay
//!   readable until the last reader lets go.
//! - **Recovery** replays the logs of memtables not yet in a table,
//!   flushes them, and deletes those logs only once the table is in the
//!   manifest.
//!
//! Locks, in order: `compact_lock` (one flush or compaction at a time),
//! `writer`, `state`.

mod compaction;
mod memtable;
mod scan;
mod table;
mod version;

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use smallvec::SmallVec;

use crate::background::Background;
use crate::batch::{Op, WriteBatch};
use crate::check::{CheckReport, Progress};
use crate::codec::Kind;
use crate::db::{now_ms, Iter, Stats, Store};
use crate::durability::Durability;
use crate::error::{Error, Result};
use crate::fs::{DirLock, File};
use crate::log::{self, FileKind, LogWriter, TailMode};
use crate::options::{Options, Sync};

use compaction::{Choice, Policy};
use memtable::Memtable;
use table::{BlockCache, Table, TableBuilder};
use version::Version;

/// A version of a key: a value with its expiry (0 = none), or a tombstone.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Value {
    /// The bytes (shared: the memtable's pending list, ordered map and
    /// point-read index hold one copy) and the expiry.
    Put(Arc<[u8]>, u64),
    Delete,
}

impl Value {
    fn len(&self) -> usize {
        match self {
            Value::Put(v, _) => v.len(),
            Value::Delete => 0,
        }
    }

    /// The bytes and expiry of a put, lent (`None` for a delete).
    fn lend(&self) -> Option<(&[u8], u64)> {
        match self {
            Value::Put(v, exp) => Some((v, *exp)),
            Value::Delete => None,
        }
    }

    /// The value and expiry, if live at `now`.
    fn live(self, now: u64) -> Option<(Vec<u8>, u64)> {
        self.lend().filter(|&(_, exp)| exp == 0 || exp > now).map(|(v, exp)| (v.to_vec(), exp))
    }
}

fn wal_name(id: u64) -> String {
    format!("{id:08}.wal")
}

/// What readers pin: the memtables and the tables.
struct State {
    active: Arc<Memtable>,
    /// Newest first.
    immutables: Vec<Arc<Memtable>>,
    version: Arc<Version>,
}

/// The memtables a read consults, newest first.
type Memtables = SmallVec<[Arc<Memtable>; 4]>;

impl State {
    /// The active memtable, then the immutable ones newest first.
    fn memtables(&self) -> Memtables {
        std::iter::once(&self.active).chain(&self.immutables).cloned().collect()
    }

    /// The oldest write-ahead log still needed.
    fn min_wal(&self) -> u64 {
        self.immutables.last().map_or(self.active.wal, |m| m.wal)
    }
}

struct Writer {
    wal: LogWriter,
    /// A second handle on the active log, for fsync outside the writer lock.
    wal_sync: Arc<File>,
    next_seq: u64,
    lsn: u64,
    buf: Vec<u8>,
    offsets: Vec<(u64, u32)>,
}

#[derive(Default)]
struct Counters {
    writes: AtomicU64,
    user_bytes: AtomicU64,
    disk_bytes: AtomicU64,
    compactions: AtomicU64,
    bytes_compacted: AtomicU64,
    stalls: AtomicU64,
    gets: AtomicU64,
    probes: AtomicU64,
    background_errors: AtomicU64,
}

pub(crate) struct Inner {
    dir: PathBuf,
    opts: Options,
    state: RwLock<State>,
    writer: Mutex<Writer>,
    /// Sequence number of the newest batch wholly in the memtable.
    visible_seq: AtomicU64,
    durability: Durability,
    compact_lock: Mutex<()>,
    next_file: AtomicU64,
    cache: Arc<BlockCache>,
    /// Wakes the background thread, and writers waiting for room.
    work: (Mutex<bool>, Condvar),
    counters: Counters,
    _lock: DirLock,
}

/// The `lsm` engine behind a `Db`.
pub(crate) struct LsmStore {
    inner: Arc<Inner>,
    background: Background,
}

impl LsmStore {
    pub(crate) fn open(dir: &Path, opts: Options) -> Result<LsmStore> {
        let lock = crate::fs::lock_dir(dir)?;
        let started = Instant::now();
        let r = recover(dir, &opts)?;
        tracing::info!(
            dir = %dir.display(),
            tables = r.version.tables().count(),
            replayed = r.replayed,
            ms = started.elapsed().as_millis() as u64,
            "lsm engine opened"
        );
        let wal_sync = Arc::new(File::open_read(&dir.join(wal_name(r.wal_id)))?);
        let inner = Arc::new(Inner {
            dir: dir.to_owned(),
            cache: Arc::new(BlockCache::new(opts.block_cache_size)),
            opts,
            state: RwLock::new(State { active: Arc::new(r.mem), immutables: Vec::new(), version: Arc::new(r.version) }),
            writer: Mutex::new(Writer {
                wal: r.wal,
                wal_sync,
                next_seq: r.max_seq + 1,
                lsn: 0,
                buf: Vec::new(),
                offsets: Vec::new(),
            }),
            visible_seq: AtomicU64::new(r.max_seq),
            durability: Durability::default(),
            compact_lock: Mutex::new(()),
            next_file: AtomicU64::new(r.next_id),
            work: (Mutex::new(false), Condvar::new()),
            counters: Counters::default(),
            _lock: lock,
        });
        let (bg, syncs) = (Arc::clone(&inner), Arc::clone(&inner));
        let background = Background::spawn("latchkey-lsm-bg", dir, move |stop| bg.background(stop))?
            .with_interval_syncs("latchkey-lsm-sync", dir, inner.opts.sync.interval(), move || {
                syncs.durability.interval_sync(|| syncs.sync_all(), &syncs.counters.background_errors)
            })?;
        Ok(LsmStore { inner, background })
    }
}

impl Drop for LsmStore {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "closing the lsm engine failed");
        }
    }
}

impl LsmStore {
    /// What a scan reads: the memtables and tables of this moment, and
    /// the newest sequence number visible now.
    fn snapshot(&self, now_ms: u64) -> scan::Snapshot {
        let st = self.inner.state.read();
        scan::Snapshot {
            mems: st.memtables(),
            version: Arc::clone(&st.version),
            seq: self.inner.visible_seq.load(Ordering::Acquire),
            now: now_ms,
            cache: Arc::clone(&self.inner.cache),
        }
    }
}

impl Store for LsmStore {
    fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u64)>> {
        self.inner.durability.check_open()?;
        self.inner.get(key)
    }

    fn write(&self, batch: &WriteBatch, durable: bool) -> Result<()> {
        let sync = durable && self.inner.opts.sync == Sync::Always;
        let lsn = self.inner.append(batch, sync)?;
        if sync {
            self.inner.sync_to(lsn)?;
        }
        Ok(())
    }

    fn scan(&self, range: (Bound<Vec<u8>>, Bound<Vec<u8>>), now_ms: u64) -> Result<Iter> {
        self.inner.durability.check_open()?;
        Ok(Iter::new(Box::new(scan::ScanIter::new(self.snapshot(now_ms), range))))
    }

    fn for_each(
        &self,
        range: (Bound<Vec<u8>>, Bound<Vec<u8>>),
        now_ms: u64,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        self.inner.durability.check_open()?;
        let snapshot = self.snapshot(now_ms);
        scan::for_each(&snapshot, &range, f)
    }

    fn sync(&self) -> Result<()> {
        self.inner.durability.check_open()?;
        self.inner.sync_all()
    }

    fn compact(&self) -> Result<()> {
        self.inner.durability.check_open()?;
        self.inner.compact_all()
    }

    fn stats(&self) -> Stats {
        self.inner.stats()
    }

    fn close(&self) -> Result<()> {
        let inner = &self.inner;
        let result = inner.durability.close(
            || self.background.stop(|| inner.wake()),
            || {
                inner.sync_all()?;
                // A clean close leaves no preallocated space behind.
                inner.writer.lock().wal.seal()
            },
        );
        inner.wake(); // writers waiting for room see the database closed
        result
    }

    fn crash(&self) {
        let inner = &self.inner;
        let _ = inner.durability.close(|| self.background.stop(|| inner.wake()), || Ok(()));
    }

    fn active_log(&self) -> Option<(PathBuf, u64)> {
        let w = self.inner.writer.lock();
        Some((w.wal.file().path().to_owned(), w.wal.len()))
    }
}

impl Inner {
    fn poison(&self, e: &Error) {
        self.durability.poison(e);
        self.wake();
    }

    /// Makes everything written so far durable.
    fn sync_all(&self) -> Result<()> {
        let lsn = self.writer.lock().lsn;
        self.sync_to(lsn)
    }

    /// Makes the log durable up to `lsn`; older logs were synced when
    /// their memtable was sealed.
    fn sync_to(&self, lsn: u64) -> Result<()> {
        self.durability.sync_to(lsn, || {
            let mut w = self.writer.lock();
            self.write_deferred(&mut w)?;
            let log = Arc::clone(&w.wal_sync);
            Ok((w.lsn, move || log.sync_data()))
        })
    }

    /// Writes the log records deferred by writers waiting for an fsync.
    fn write_deferred(&self, w: &mut Writer) -> Result<()> {
        w.wal.flush().inspect_err(|e| self.poison(e))
    }

    fn wake(&self) {
        *self.work.0.lock() = true;
        self.work.1.notify_all();
    }

    fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u64)>> {
        let snap = self.visible_seq.load(Ordering::Acquire);
        let (mems, version) = {
            let st = self.state.read();
            (st.memtables(), Arc::clone(&st.version))
        };
        self.counters.gets.fetch_add(1, Ordering::Relaxed);
        for m in &mems {
            if let Some(found) = m.get_with(key, snap, |_, v| v.lend().map(|(d, exp)| (d.to_vec(), exp))) {
                return Ok(found);
            }
        }
        drop(mems);
        let mut probes = 0;
        let live = |(_, v): table::Lent<'_>| v.map(|(d, exp)| (d.to_vec(), exp));
        let mut found = None;
        'levels: for (level, tables) in version.levels.iter().enumerate() {
            // Level 0: every table; deeper: the one whose range may hold it.
            let candidates = if level == 0 {
                &tables[..]
            } else {
                let i = tables.partition_point(|t| t.largest.as_slice() < key);
                tables.get(i..=i).unwrap_or_default()
            };
            for t in candidates.iter().filter(|t| t.overlaps(key, key)) {
                if !t.may_contain(key) {
                    continue;
                }
                probes += 1;
                if let Some(v) = t.get_with(key, &self.cache, live)? {
                    found = v;
                    break 'levels;
                }
            }
        }
        self.counters.probes.fetch_add(probes, Ordering::Relaxed);
        Ok(found)
    }

    /// Writers wait while too many memtables await a flush.
    fn wait_for_room(&self) -> Result<()> {
        let mut stalled = false;
        loop {
            self.durability.check_writable()?;
            if self.state.read().immutables.len() < self.opts.max_immutable_memtables {
                return Ok(());
            }
            if !stalled {
                stalled = true;
                self.counters.stalls.fetch_add(1, Ordering::Relaxed);
            }
            self.wake();
            let mut g = self.work.0.lock();
            self.work.1.wait_for(&mut g, Duration::from_millis(10));
        }
    }

    /// Logs and applies `batch`; returns the log position that makes it
    /// durable. With `defer` (the caller syncs next) its record is held for
    /// the fsync's leader to write with the group's (the memtable has the
    /// batch at once: a reader may see a write before it is logged, as it
    /// may see one before it is synced).
    fn append(&self, batch: &WriteBatch, defer: bool) -> Result<u64> {
        self.wait_for_room()?;
        let mut guard = self.writer.lock();
        self.durability.check_writable()?;
        let w = &mut *guard;
        let seq = w.next_seq;
        w.next_seq += 1;
        batch.encode(seq, &mut w.buf, &mut w.offsets);
        if defer {
            w.wal.defer(&w.buf);
        } else if let Err(e) = w.wal.append(&w.buf) {
            self.poison(&e);
            return Err(e);
        }
        w.lsn += w.buf.len() as u64;
        let full = {
            let st = self.state.read();
            for op in &batch.ops {
                match op {
                    Op::Put { key, value, expires_at } => {
                        st.active.insert(key, seq, Value::Put(Arc::from(value.as_slice()), *expires_at))
                    }
                    Op::Delete { key } => st.active.insert(key, seq, Value::Delete),
                }
            }
            st.active.bytes() >= self.opts.memtable_size
        };
        self.visible_seq.store(seq, Ordering::Release);
        let c = &self.counters;
        c.writes.fetch_add(1, Ordering::Relaxed);
        c.user_bytes.fetch_add(batch.size_bytes() as u64, Ordering::Relaxed);
        c.disk_bytes.fetch_add(w.buf.len() as u64, Ordering::Relaxed);
        if full {
            self.rotate(w)?;
        }
        Ok(w.lsn)
    }

    /// Seals the active memtable and its log (synced, cut to its records),
    /// and starts new ones.
    fn rotate(&self, w: &mut Writer) -> Result<()> {
        if let Err(e) = w.wal.seal() {
            self.poison(&e);
            return Err(e);
        }
        self.durability.mark_synced(w.lsn);
        let id = self.next_file.fetch_add(1, Ordering::AcqRel);
        let path = self.dir.join(wal_name(id));
        let wal = LogWriter::create(&path, FileKind::Wal)?.preallocate();
        crate::fs::sync_dir(&self.dir)?;
        w.wal_sync = Arc::new(File::open_read(&path)?);
        w.wal = wal;
        let mut st = self.state.write();
        let old = std::mem::replace(&mut st.active, Arc::new(Memtable::new(id)));
        st.immutables.insert(0, old);
        drop(st);
        self.wake();
        Ok(())
    }

    fn policy(&self) -> Policy {
        Policy { l0_trigger: self.opts.l0_compaction_trigger, base_level_bytes: self.opts.base_level_bytes }
    }

    /// Writes the oldest immutable memtable to a level-0 table. The caller
    /// holds `compact_lock`. Returns false if there was none.
    fn flush_one(&self) -> Result<bool> {
        let (mem, version) = {
            let st = self.state.read();
            match st.immutables.last() {
                Some(m) => (Arc::clone(m), Arc::clone(&st.version)),
                None => return Ok(false),
            }
        };
        let mut v = (*version).clone();
        if !mem.is_empty() {
            let id = self.next_file.fetch_add(1, Ordering::AcqRel);
            let tmp = self.dir.join(format!("{}.tmp", table::table_name(id)));
            let mut b = TableBuilder::create(&tmp)?;
            mem.for_each_newest(|k, seq, value| b.add(k, seq, value))?;
            let size = b.finish()?;
            crate::fs::rename(&tmp, &self.dir.join(table::table_name(id)))?;
            self.counters.disk_bytes.fetch_add(size, Ordering::Relaxed);
            v.levels[0].push(Arc::new(Table::open(&self.dir, id)?));
            v.sort();
        }
        let min_wal = {
            let st = self.state.read();
            st.immutables.iter().rev().nth(1).map_or(st.active.wal, |m| m.wal)
        };
        version::write_manifest(&self.dir, &v, self.next_file.load(Ordering::Acquire), min_wal)?;
        {
            let mut st = self.state.write();
            st.version = Arc::new(v);
            st.immutables.pop();
        }
        crate::fs::remove_file(&self.dir.join(wal_name(mem.wal)))?;
        self.wake();
        Ok(true)
    }

    /// Runs one compaction. The caller holds `compact_lock`.
    fn compact_once(&self, choice: &Choice) -> Result<()> {
        let version = Arc::clone(&self.state.read().version);
        let inputs: Vec<Arc<Table>> =
            version.tables().filter(|(_, t)| choice.inputs.contains(&t.id)).map(|(_, t)| Arc::clone(t)).collect();
        let lo = inputs.iter().map(|t| t.smallest.clone()).min().unwrap_or_default();
        let hi = inputs.iter().map(|t| t.largest.clone()).max().unwrap_or_default();
        let bottom = compaction::is_bottom(&version, choice.to, &lo, &hi);
        let mut outputs = Vec::new();
        let mut written = 0;
        let dir = &self.dir;
        compaction::merge_tables(
            &inputs,
            bottom,
            now_ms(),
            self.opts.target_file_size,
            || {
                let id = self.next_file.fetch_add(1, Ordering::AcqRel);
                Ok((id, TableBuilder::create(&dir.join(format!("{}.tmp", table::table_name(id))))?))
            },
            |id, b| {
                written += b.finish()?;
                crate::fs::rename(
                    &dir.join(format!("{}.tmp", table::table_name(id))),
                    &dir.join(table::table_name(id)),
                )?;
                outputs.push(Arc::new(Table::open(dir, id)?));
                Ok(())
            },
        )?;
        crate::fs::sync_dir(dir)?;
        let mut v = (*version).clone();
        for level in v.levels.iter_mut() {
            level.retain(|t| !choice.inputs.contains(&t.id));
        }
        v.levels[choice.to].extend(outputs);
        v.sort();
        let min_wal = self.state.read().min_wal();
        version::write_manifest(dir, &v, self.next_file.load(Ordering::Acquire), min_wal)?;
        self.state.write().version = Arc::new(v);
        for t in &inputs {
            compaction::remove_table(dir, t.id)?;
        }
        self.counters.compactions.fetch_add(1, Ordering::Relaxed);
        self.counters.bytes_compacted.fetch_add(written, Ordering::Relaxed);
        self.counters.disk_bytes.fetch_add(written, Ordering::Relaxed);
        tracing::debug!(
            from = choice.from,
            to = choice.to,
            inputs = inputs.len(),
            bytes = written,
            "compaction finished"
        );
        Ok(())
    }

    /// Flushes every memtable and compacts everything into one level.
    fn compact_all(&self) -> Result<()> {
        self.durability.check_writable()?;
        let _one = self.compact_lock.lock();
        {
            let mut w = self.writer.lock();
            if !self.state.read().active.is_empty() {
                self.rotate(&mut w)?;
            }
        }
        while self.flush_one()? {}
        let v = Arc::clone(&self.state.read().version);
        if let Some(choice) = compaction::choose_all(&v, &self.policy()) {
            self.compact_once(&choice)?;
        }
        Ok(())
    }

    /// Flushes and compacts until there is nothing due. Returns whether it did anything.
    fn background_work(&self) -> Result<bool> {
        let _one = self.compact_lock.lock();
        if self.flush_one()? {
            return Ok(true);
        }
        let v = Arc::clone(&self.state.read().version);
        match compaction::choose(&v, &self.policy()) {
            Some(choice) => self.compact_once(&choice).map(|()| true),
            None => Ok(false),
        }
    }

    /// The background thread: flushes and compactions, until the sender
    /// side of `stop` is dropped.
    fn background(&self, stop: mpsc::Receiver<()>) {
        loop {
            if !matches!(stop.try_recv(), Err(mpsc::TryRecvError::Empty)) {
                return;
            }
            if !self.durability.is_poisoned() {
                match self.background_work() {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => {
                        self.counters.background_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %e, "background flush or compaction failed");
                        self.poison(&e);
                    }
                }
            }
            let tick = self.opts.background_interval;
            let mut woken = self.work.0.lock();
            if !*woken {
                self.work.1.wait_for(&mut woken, tick);
            }
            *woken = false;
        }
    }

    fn stats(&self) -> Stats {
        let st = self.state.read();
        let tables: Vec<&Arc<Table>> = st.version.tables().map(|(_, t)| t).collect();
        let disk: u64 = tables.iter().map(|t| t.size).sum();
        let entries: u64 = tables.iter().map(|t| t.entries).sum();
        let deepest =
            st.version.levels.iter().rev().find(|l| !l.is_empty()).map_or(0, |l| l.iter().map(|t| t.size).sum());
        let c = &self.counters;
        let gets = c.gets.load(Ordering::Relaxed);
        Stats {
            engine: "lsm",
            keys: entries,
            disk_bytes: disk,
            live_bytes: deepest,
            files: tables.len() as u64 + 1 + st.immutables.len() as u64,
            writes: c.writes.load(Ordering::Relaxed),
            user_bytes_written: c.user_bytes.load(Ordering::Relaxed),
            disk_bytes_written: c.disk_bytes.load(Ordering::Relaxed),
            syncs: self.durability.syncs.load(Ordering::Relaxed),
            merges: c.compactions.load(Ordering::Relaxed),
            bytes_compacted: c.bytes_compacted.load(Ordering::Relaxed),
            stalls: c.stalls.load(Ordering::Relaxed),
            background_errors: c.background_errors.load(Ordering::Relaxed),
            probes_per_get: c.probes.load(Ordering::Relaxed) as f64 / gets.max(1) as f64,
            ..Stats::default()
        }
    }
}

struct Recovered {
    version: Version,
    wal: LogWriter,
    wal_id: u64,
    /// The active memtable: the writes of the log that stays active.
    mem: Memtable,
    next_id: u64,
    max_seq: u64,
    replayed: usize,
}

fn ids_with(dir: &Path, ext: &str) -> Result<Vec<u64>> {
    let mut ids: Vec<u64> =
        crate::fs::list(dir)?.iter().filter_map(|n| n.strip_suffix(ext).and_then(|s| s.parse().ok())).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Opens the tables the manifest names, replays the logs it still needs
/// into a table, and starts a fresh log.
fn recover(dir: &Path, _opts: &Options) -> Result<Recovered> {
    let manifest = version::read_manifest(dir)?;
    let (mut next_id, min_wal, listed) = match manifest {
        Some(m) => (m.next_id, m.min_wal, m.tables),
        None => (1, 0, Vec::new()),
    };
    for name in crate::fs::list(dir)? {
        if name.ends_with(".tmp") {
            crate::fs::remove_file(&dir.join(&name))?;
        }
    }
    // Tables no manifest names were left by a flush or compaction that
    // never committed.
    for id in ids_with(dir, ".sst")? {
        if !listed.iter().any(|&(_, t)| t == id) {
            tracing::info!(table = id, "removing a table that was never committed");
            crate::fs::remove_file(&dir.join(table::table_name(id)))?;
        }
    }
    let mut version = Version::empty();
    let mut max_seq = 0;
    for &(level, id) in &listed {
        let t = Table::open(dir, id)?;
        max_seq = max_seq.max(t.max_seq);
        next_id = next_id.max(id + 1);
        version.levels[level].push(Arc::new(t));
    }
    version.sort();
    let wals: Vec<u64> = ids_with(dir, ".wal")?.into_iter().filter(|&w| w >= min_wal).collect();
    let mut mem = Memtable::new(0);
    let mut last_end = None;
    for (i, &id) in wals.iter().enumerate() {
        next_id = next_id.max(id + 1);
        let mode = if i + 1 == wals.len() { TailMode::Newest } else { TailMode::Sealed };
        let end = log::scan(&dir.join(wal_name(id)), FileKind::Wal, mode, |f| {
            let r = f.record;
            max_seq = max_seq.max(r.seq);
            match r.kind {
                Kind::Put => mem.insert(r.key, r.seq, Value::Put(Arc::from(r.value), r.expires_at)),
                Kind::Delete => mem.insert(r.key, r.seq, Value::Delete),
                _ => {}
            }
            Ok(())
        })?;
        last_end = Some(end);
    }
    // The usual case after a clean close or a crash: one log. It stays the
    // active log (its torn tail cut) and its writes the active memtable.
    if let ([id], Some(end)) = (wals.as_slice(), &last_end) {
        if !end.headerless {
            let wal = LogWriter::reopen(&dir.join(wal_name(*id)), end.valid_len)?.preallocate();
            let mem = mem.with_wal(*id);
            version::write_manifest(dir, &version, next_id, *id)?;
            return Ok(Recovered { version, wal, wal_id: *id, mem, next_id, max_seq, replayed: 1 });
        }
    }
    // Several logs: write what they hold to a table and start afresh.
    if !mem.is_empty() {
        let id = next_id;
        next_id += 1;
        let tmp = dir.join(format!("{}.tmp", table::table_name(id)));
        let mut b = TableBuilder::create(&tmp)?;
        mem.for_each_newest(|k, seq, value| b.add(k, seq, value))?;
        b.finish()?;
        crate::fs::rename(&tmp, &dir.join(table::table_name(id)))?;
        version.levels[0].push(Arc::new(Table::open(dir, id)?));
        version.sort();
    }
    let wal_id = next_id;
    next_id += 1;
    let wal = LogWriter::create(&dir.join(wal_name(wal_id)), FileKind::Wal)?.preallocate();
    crate::fs::sync_dir(dir)?;
    version::write_manifest(dir, &version, next_id, wal_id)?;
    for id in ids_with(dir, ".wal")? {
        if id < wal_id {
            crate::fs::remove_file(&dir.join(wal_name(id)))?;
        }
    }
    mem = Memtable::new(wal_id);
    Ok(Recovered { version, wal, wal_id, mem, next_id, max_seq, replayed: wals.len() })
}

/// Verifies every checksum of an `lsm` directory without changing it.
pub(crate) fn check(dir: &Path, progress: &mut Progress<'_>) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let names = crate::fs::list(dir)?;
    let total: u64 = names.iter().filter_map(|n| std::fs::metadata(dir.join(n)).ok()).map(|m| m.len()).sum();
    let mut done = 0;
    progress(0, total);
    let listed = match version::read_manifest(dir) {
        Ok(m) => m.map(|m| m.tables).unwrap_or_default(),
        Err(e) => {
            report.damage.push(e);
            Vec::new()
        }
    };
    report.files += 1;
    for id in ids_with(dir, ".sst")? {
        report.files += 1;
        if !listed.iter().any(|&(_, t)| t == id) {
            report.notes.push(format!(
                "{}: not in the manifest (an unfinished flush or compaction; removed at the next open)",
                table::table_name(id)
            ));
        }
        let result = Table::open(dir, id).and_then(|t| {
            for i in 0..t.blocks() {
                report.records += t.block(i, None)?.len() as u64;
            }
            Ok(t.size)
        });
        match result {
            Ok(size) => {
                report.bytes += size;
                done += size;
            }
            Err(e) => report.damage.push(e),
        }
        progress(done, total);
    }
    let wals = ids_with(dir, ".wal")?;
    for (i, &id) in wals.iter().enumerate() {
        report.files += 1;
        let path = dir.join(wal_name(id));
        let mode = if i + 1 == wals.len() { TailMode::Newest } else { TailMode::Sealed };
        match log::scan(&path, FileKind::Wal, mode, |_| {
            report.records += 1;
            Ok(())
        }) {
            Ok(end) if end.torn_bytes() > 0 => report.notes.push(format!(
                "{}: {} bytes of an unfinished write at offset {} (a crash artefact; dropped at the next open)",
                path.display(),
                end.torn_bytes(),
                end.valid_len
            )),
            Ok(end) => report.bytes += end.valid_len,
            Err(e) => report.damage.push(e),
        }
    }
    progress(total, total);
    Ok(report)
}

/// Fuzzing hooks (see `crate::fuzzing`).
pub(crate) fn table_name_for_fuzzing(id: u64) -> String {
    table::table_name(id)
}

pub(crate) fn exercise_table_for_fuzzing(dir: &Path, id: u64) {
    let Ok(t) = Table::open(dir, id) else { return };
    let cache = BlockCache::new(1 << 20);
    let mut keys = vec![t.smallest.clone(), t.largest.clone(), Vec::new()];
    for i in 0..t.blocks().min(64) {
        if let Ok(b) = t.block(i, None) {
            keys.extend(b.iter().take(8).map(|(k, _, _)| k.clone()));
        }
    }
    for k in &keys {
        let _ = t.may_contain(k);
        let _ = t.get(k, &cache);
    }
}

pub(crate) fn read_manifest_for_fuzzing(dir: &Path) -> Result<()> {
    version::read_manifest(dir).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flushes and compactions hold the compaction lock for as long as
    /// they run; the interval syncs go on meanwhile, on their own thread.
    #[test]
    fn interval_syncs_go_on_while_a_compaction_runs() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            sync: Sync::Interval(20),
            background_interval: Duration::from_millis(10),
            ..Options::new(crate::Engine::Lsm)
        };
        let store = LsmStore::open(dir.path(), opts).unwrap();
        let compacting = store.inner.compact_lock.lock();
        let synced = crate::background::synced_soon_after(&store.inner.durability.syncs, || {
            store.write(WriteBatch::new().put("k", "v"), false).unwrap()
        });
        drop(compacting);
        assert!(synced, "no interval sync while a compaction held its lock");
    }
}
