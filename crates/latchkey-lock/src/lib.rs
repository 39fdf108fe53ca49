//! # latchkey-lock
//!
//! The lock manager of latchkey: leases, fencing tokens and first-come
//! first-served waiters. It is pure logic: no I/O, no clock, no threads.
//! Time is an argument (`now`, milliseconds), so the same code can run in a
//! server, in a test with a simulated clock, or as a replicated state
//! machine. Persisting grants and waking waiters is the caller's job.
//!
//! Guarantees, for each lock name:
//! - at most one holder at a time, whose lease ends at `expires_at`;
//! - every grant's token is strictly greater than every token granted
//!   before (including those restored with [`LockManager::restore`]);
//! - waiters are granted in the order they queued; a newcomer never jumps
//!   ahead of a queued waiter.
//!
//! ```
//! use latchkey_lock::{LockManager, Acquire};
//! let mut m = LockManager::new();
//! let Acquire::Granted(a) = m.acquire("orders", "client-a", 1_000, 0, None) else { panic!() };
//! assert!(matches!(m.acquire("orders", "client-b", 1_000, 10, Some((7, 500))), Acquire::Queued));
//! let events = m.release("orders", "client-a", 20).unwrap();
//! assert_eq!(events.granted[0].waiter, 7);
//! assert!(events.granted[0].grant.token > a.token);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::{BTreeMap, VecDeque};

/// Milliseconds on the caller's clock.
pub type Millis = u64;

/// A caller-chosen id for a queued waiter, returned in [`Handoff`]s.
pub type WaiterId = u64;

/// A lease on a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The lock's name.
    pub name: String,
    /// Who holds it.
    pub owner: String,
    /// The fencing token: greater than every earlier grant's.
    pub token: u64,
    /// When the lease ends unless renewed.
    pub expires_at: Millis,
}

/// The result of [`LockManager::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// The caller holds the lock now.
    Granted(Grant),
    /// The lock is busy and the caller is queued; a [`Handoff`] will name it.
    Queued,
    /// The lock is busy and the caller did not want to wait.
    Busy,
}

/// What happened to queued waiters during a call: who was granted the
/// lock, and whose wait ran out. Every queued waiter shows up in exactly
/// one of these, exactly once (or is [cancelled](LockManager::cancel)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Events {
    /// Waiters granted the lock.
    pub granted: Vec<Handoff>,
    /// Waiters whose deadline passed.
    pub timed_out: Vec<WaiterId>,
}

/// A queued waiter that has been granted the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    /// The waiter's id, as given to `acquire`.
    pub waiter: WaiterId,
    /// The grant.
    pub grant: Grant,
}

/// Why a release or renewal was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockError {
    /// The caller does not hold the lock (never did, or its lease ran out
    /// and it may since have been granted to someone else).
    NotHolder {
        /// Who holds it now, if anyone.
        holder: Option<String>,
    },
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::NotHolder { holder: Some(h) } => write!(f, "not the holder of the lock (held by {h:?})"),
            LockError::NotHolder { holder: None } => write!(f, "not the holder of the lock (its lease is lost)"),
        }
    }
}

impl std::error::Error for LockError {}

/// A snapshot of one lock, from [`LockManager::info`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// The current holder's grant, if held.
    pub holder: Option<Grant>,
    /// The highest token ever granted for this lock.
    pub last_token: u64,
    /// Owners waiting, first first.
    pub waiters: Vec<String>,
}

#[derive(Debug, Clone)]
struct Waiter {
    id: WaiterId,
    owner: String,
    ttl: Millis,
    deadline: Millis,
}

#[derive(Debug, Default)]
struct Lock {
    holder: Option<Grant>,
    last_token: u64,
    waiters: VecDeque<Waiter>,
}

/// Every lock's state. See the crate docs.
#[derive(Debug, Default)]
pub struct LockManager {
    locks: BTreeMap<String, Lock>,
}

impl LockManager {
    /// An empty manager.
    pub fn new() -> Self {
        Self::default()
    }

    /// Restores a lock from storage after a restart: the highest token it
    /// ever granted, and its holder if the lease may still run.
    pub fn restore(&mut self, name: &str, last_token: u64, holder: Option<(String, Millis)>) {
        let lock = self.locks.entry(name.to_owned()).or_default();
        lock.last_token = lock.last_token.max(last_token);
        lock.holder =
            holder.map(|(owner, expires_at)| Grant { name: name.to_owned(), owner, token: last_token, expires_at });
    }

    /// Takes `name` for `owner` for `ttl` ms if it is free (or already
    /// held by `owner`, which renews it with a new token). Otherwise,
    /// with `wait = Some((id, deadline))` the caller is queued until
    /// `deadline`; with `None` it is told the lock is busy.
    pub fn acquire(
        &mut self,
        name: &str,
        owner: &str,
        ttl: Millis,
        now: Millis,
        wait: Option<(WaiterId, Millis)>,
    ) -> Acquire {
        self.expire_lease(name, now);
        let lock = self.locks.entry(name.to_owned()).or_default();
        let free = lock.holder.is_none() && lock.waiters.is_empty();
        let reentrant = lock.holder.as_ref().is_some_and(|h| h.owner == owner);
        if free || reentrant {
            return Acquire::Granted(grant(lock, name, owner, ttl, now));
        }
        match wait {
            Some((id, deadline)) if deadline > now => {
                lock.waiters.push_back(Waiter { id, owner: owner.to_owned(), ttl, deadline });
                Acquire::Queued
            }
            _ => Acquire::Busy,
        }
    }

    /// Gives up `owner`'s lease on `name`. The next waiter, if any, is
    /// granted the lock at once and returned.
    pub fn release(&mut self, name: &str, owner: &str, now: Millis) -> Result<Events, LockError> {
        self.expire_lease(name, now);
        let lock = self.locks.entry(name.to_owned()).or_default();
        match &lock.holder {
            Some(h) if h.owner == owner => lock.holder = None,
            other => return Err(LockError::NotHolder { holder: other.as_ref().map(|h| h.owner.clone()) }),
        }
        Ok(self.hand_off(name, now))
    }

    /// Extends `owner`'s lease on `name` to `now + ttl`, keeping its token.
    /// Fails once the lease has run out, even if no one else took the lock:
    /// the holder cannot know whether its token was superseded.
    pub fn renew(&mut self, name: &str, owner: &str, ttl: Millis, now: Millis) -> Result<Grant, LockError> {
        self.expire_lease(name, now);
        let lock = self.locks.entry(name.to_owned()).or_default();
        match &mut lock.holder {
            Some(h) if h.owner == owner => {
                h.expires_at = now.saturating_add(ttl);
                Ok(h.clone())
            }
            other => Err(LockError::NotHolder { holder: other.as_ref().map(|h| h.owner.clone()) }),
        }
    }

    /// Stops waiting: removes waiter `id` from `name`'s queue. Returns false
    /// if it was not queued (it may have been granted already).
    pub fn cancel(&mut self, name: &str, id: WaiterId) -> bool {
        let Some(lock) = self.locks.get_mut(name) else { return false };
        let before = lock.waiters.len();
        lock.waiters.retain(|w| w.id != id);
        before != lock.waiters.len()
    }

    /// Advances time: ends expired leases (granting the lock to the next
    /// waiter) and drops waiters whose deadline has passed.
    pub fn tick(&mut self, now: Millis) -> Events {
        let mut events = Events::default();
        for lock in self.locks.values_mut() {
            drop_timed_out(lock, now, &mut events.timed_out);
        }
        let names: Vec<String> = self
            .locks
            .iter()
            .filter(|(_, l)| {
                l.holder.as_ref().is_some_and(|h| h.expires_at <= now) || (l.holder.is_none() && !l.waiters.is_empty())
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            self.expire_lease(&name, now);
            let e = self.hand_off(&name, now);
            events.granted.extend(e.granted);
            events.timed_out.extend(e.timed_out);
        }
        events
    }

    /// The state of `name`.
    pub fn info(&mut self, name: &str, now: Millis) -> LockInfo {
        self.expire_lease(name, now);
        match self.locks.get(name) {
            Some(l) => LockInfo {
                holder: l.holder.clone(),
                last_token: l.last_token,
                waiters: l.waiters.iter().map(|w| w.owner.clone()).collect(),
            },
            None => LockInfo { holder: None, last_token: 0, waiters: Vec::new() },
        }
    }

    /// The earliest time at which [`tick`](Self::tick) has work to do.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.locks
            .values()
            .flat_map(|l| l.holder.iter().map(|h| h.expires_at).chain(l.waiters.iter().map(|w| w.deadline)))
            .min()
    }

    fn expire_lease(&mut self, name: &str, now: Millis) {
        if let Some(lock) = self.locks.get_mut(name) {
            if lock.holder.as_ref().is_some_and(|h| h.expires_at <= now) {
                lock.holder = None;
            }
        }
    }

    /// Grants a free lock to its first waiter still waiting.
    fn hand_off(&mut self, name: &str, now: Millis) -> Events {
        let mut events = Events::default();
        let Some(lock) = self.locks.get_mut(name) else { return events };
        drop_timed_out(lock, now, &mut events.timed_out);
        if lock.holder.is_none() {
            if let Some(w) = lock.waiters.pop_front() {
                let grant = grant(lock, name, &w.owner, w.ttl, now);
                events.granted.push(Handoff { waiter: w.id, grant });
            }
        }
        events
    }
}

fn drop_timed_out(lock: &mut Lock, now: Millis, out: &mut Vec<WaiterId>) {
    lock.waiters.retain(|w| {
        let alive = w.deadline > now;
        if !alive {
            out.push(w.id);
        }
        alive
    });
}

fn grant(lock: &mut Lock, name: &str, owner: &str, ttl: Millis, now: Millis) -> Grant {
    lock.last_token += 1;
    let g = Grant {
        name: name.to_owned(),
        owner: owner.to_owned(),
        token: lock.last_token,
        expires_at: now.saturating_add(ttl),
    };
    lock.holder = Some(g.clone());
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(a: Acquire) -> Grant {
        match a {
            Acquire::Granted(g) => g,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    #[test]
    fn a_lease_runs_out_and_the_next_token_is_higher() {
        let mut m = LockManager::new();
        let a = granted(m.acquire("l", "a", 100, 0, None));
        assert_eq!(m.acquire("l", "b", 100, 50, None), Acquire::Busy);
        let b = granted(m.acquire("l", "b", 100, 100, None));
        assert!(b.token > a.token);
        assert_eq!(m.renew("l", "a", 100, 101), Err(LockError::NotHolder { holder: Some("b".into()) }));
        assert!(m.release("l", "a", 101).is_err());
    }

    #[test]
    fn renewal_fails_once_the_lease_is_lost_even_if_nobody_took_it() {
        let mut m = LockManager::new();
        granted(m.acquire("l", "a", 100, 0, None));
        assert_eq!(m.renew("l", "a", 100, 50).unwrap().expires_at, 150);
        assert!(m.renew("l", "a", 100, 150).is_err());
    }

    #[test]
    fn waiters_are_served_in_order_and_newcomers_queue_behind_them() {
        let mut m = LockManager::new();
        granted(m.acquire("l", "a", 1000, 0, None));
        for (i, o) in ["b", "c", "d"].iter().enumerate() {
            assert_eq!(m.acquire("l", o, 1000, 1, Some((i as u64, 10_000))), Acquire::Queued);
        }
        let h = m.release("l", "a", 2).unwrap().granted;
        assert_eq!((h[0].waiter, h[0].grant.owner.as_str()), (0, "b"));
        // The lock is held by b; a newcomer without wait is busy.
        assert_eq!(m.acquire("l", "e", 1000, 3, None), Acquire::Busy);
        let h = m.release("l", "b", 4).unwrap().granted;
        assert_eq!(h[0].grant.owner, "c");
        // c's lease runs out: tick hands the lock to d.
        let e = m.tick(2000);
        assert_eq!((e.granted[0].grant.owner.as_str(), e.timed_out.len()), ("d", 0));
    }

    #[test]
    fn a_waiter_whose_deadline_passes_is_dropped() {
        let mut m = LockManager::new();
        granted(m.acquire("l", "a", 1000, 0, None));
        assert_eq!(m.acquire("l", "b", 1000, 0, Some((9, 100))), Acquire::Queued);
        assert_eq!(m.tick(100), Events { granted: vec![], timed_out: vec![9] });
        assert_eq!(m.release("l", "a", 200).unwrap(), Events::default());
        assert_eq!(m.next_deadline(), None);
    }

    #[test]
    fn restored_tokens_keep_rising() {
        let mut m = LockManager::new();
        m.restore("l", 41, Some(("a".into(), 500)));
        assert_eq!(m.acquire("l", "b", 10, 100, None), Acquire::Busy);
        assert_eq!(granted(m.acquire("l", "b", 10, 500, None)).token, 42);
    }

    proptest::proptest! {
        /// Under any interleaving of operations: at most one holder, tokens
        /// strictly rise, and grants to waiters follow queue order.
        #[test]
        fn tokens_rise_and_one_holder_at_a_time(ops in proptest::collection::vec((0u8..5, 0u8..4, 1u64..50), 1..200)) {
            let mut m = LockManager::new();
            let mut now = 0;
            let mut last = 0;
            let mut queue: Vec<u64> = Vec::new();
            let mut next_id = 0;
            for (op, who, dt) in ops {
                now += dt;
                let owner = format!("o{who}");
                let mut grants = Vec::new();
                match op {
                    0 => if let Acquire::Granted(g) = m.acquire("l", &owner, 60, now, None) { grants.push(g) },
                    1 => {
                        next_id += 1;
                        match m.acquire("l", &owner, 60, now, Some((next_id, now + 100))) {
                            Acquire::Granted(g) => grants.push(g),
                            Acquire::Queued => queue.push(next_id),
                            Acquire::Busy => unreachable!("waiting callers are never told busy"),
                        }
                    }
                    3 => { let _ = m.renew("l", &owner, 60, now); }
                    _ => {
                        let e = if op == 2 { m.release("l", &owner, now).unwrap_or_default() } else { m.tick(now) };
                        queue.retain(|id| !e.timed_out.contains(id));
                        for x in e.granted { proptest::prop_assert_eq!(Some(x.waiter), queue.first().copied()); queue.remove(0); grants.push(x.grant) }
                    }
                }
                for g in grants {
                    let reentrant = g.token == last + 1 && m.info("l", now).holder.as_ref() == Some(&g);
                    proptest::prop_assert!(g.token > last && reentrant);
                    last = g.token;
                }
                let info = m.info("l", now);
                proptest::prop_assert!(info.holder.as_ref().is_none_or(|h| h.expires_at > now));
            }
        }
    }
}
