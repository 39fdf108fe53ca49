//! What every engine shares about durability: group commit of log fsyncs,
//! and the two states that refuse work — closed, and poisoned (a write or
//! fsync failed, so what reached the disk is unknown).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};

/// The group-commit state, under one lock.
#[derive(Default)]
struct Group {
    /// Whether a caller is fsyncing the log now (the group's leader).
    leading: bool,
    /// Callers waiting for the leader's fsync.
    waiting: u64,
    /// Callers the last fsync covered (its waiters and leader): about as
    /// many will be back with their next write.
    covered: u64,
    /// `arrivals` when the last fsync ended.
    arrivals_at_end: u64,
    /// Whether a leader is waiting for arrivals before its fsync.
    gathering: bool,
    /// The `arrivals` count the gathering leader waits for: only the
    /// arrival that reaches it wakes the leader (each wake-up is a context
    /// switch, and on a small machine the arrivals need the CPU).
    gather_target: u64,
    /// How long the last fsync took.
    last_fsync: std::time::Duration,
}

/// The longest a leader waits for the writers of the last group to append
/// again before it fsyncs: at least this long ...
const GATHER_MIN: std::time::Duration = std::time::Duration::from_micros(100);
/// ... and as long as the last fsync took, up to this.
const GATHER_MAX: std::time::Duration = std::time::Duration::from_micros(1000);

#[derive(Default)]
pub(crate) struct Durability {
    group: Mutex<Group>,
    /// Signalled when a leader's fsync ends.
    synced: Condvar,
    /// Signalled when the arrivals a gathering leader waits for are in.
    arrived: Condvar,
    /// Calls of `sync_to` that found their bytes not yet synced.
    arrivals: AtomicU64,
    /// Log bytes (a log sequence number) known to be on stable storage.
    synced_lsn: AtomicU64,
    poison: Mutex<Option<String>>,
    closed: AtomicBool,
    /// Log fsyncs made.
    pub(crate) syncs: AtomicU64,
}

impl Durability {
    pub(crate) fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    pub(crate) fn check_writable(&self) -> Result<()> {
        self.check_open()?;
        match &*self.poison.lock() {
            Some(cause) => Err(Error::Poisoned { cause: cause.clone() }),
            None => Ok(()),
        }
    }

    /// Records that a write or fsync failed: nothing more is written until
    /// the database is reopened. A failed fsync is never retried.
    pub(crate) fn poison(&self, e: &Error) {
        tracing::error!(error = %e, "write failure: the database now refuses writes");
        self.poison.lock().get_or_insert_with(|| e.to_string());
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.poison.lock().is_some()
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn set_closed(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Closes once: `stop` ends background work, `sync` makes the log
    /// durable (skipped if poisoned: what is on disk is unknown), then every
    /// later call is refused. Closing again does nothing.
    pub(crate) fn close(&self, stop: impl FnOnce(), sync: impl FnOnce() -> Result<()>) -> Result<()> {
        if self.is_closed() {
            return Ok(());
        }
        stop();
        let result = if self.is_poisoned() { Ok(()) } else { sync() };
        self.set_closed();
        result
    }

    /// Everything up to `lsn` is durable (a sealed log was fsynced).
    pub(crate) fn mark_synced(&self, lsn: u64) {
        self.synced_lsn.fetch_max(lsn, Ordering::AcqRel);
    }

    /// Makes the log durable up to `lsn`, with group commit: one caller at a
    /// time (the leader) fsyncs everything written so far; the others wait
    /// for that fsync to end, and all of them wake at once — those whose
    /// bytes it covered return, and one of the rest leads the next fsync,
    /// which covers every write made while the last one ran. `current`
    /// returns the log position now and the fsync of the active log (older
    /// logs were synced when sealed); it is called without the caller's
    /// writer lock held during the fsync.
    pub(crate) fn sync_to<F>(&self, lsn: u64, current: impl FnOnce() -> (u64, F)) -> Result<()>
    where
        F: FnOnce() -> Result<()>,
    {
        if self.synced_lsn.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        let arrived = self.arrivals.fetch_add(1, Ordering::AcqRel) + 1;
        let mut group = self.group.lock();
        if group.gathering && arrived == group.gather_target {
            self.arrived.notify_one();
        }
        loop {
            if self.synced_lsn.load(Ordering::Acquire) >= lsn {
                return Ok(());
            }
            self.check_writable()?;
            if !group.leading {
                break;
            }
            group.waiting += 1;
            self.synced.wait(&mut group);
            group.waiting -= 1;
        }
        group.leading = true;
        let (expect, since) = (group.covered, group.arrivals_at_end);
        // Clears the leader flag and wakes the waiters however this ends
        // (an error or a panic in the fsync included).
        struct Lead<'a>(&'a Durability);
        impl Drop for Lead<'_> {
            fn drop(&mut self) {
                let mut g = self.0.group.lock();
                g.leading = false;
                g.gathering = false;
                g.arrivals_at_end = self.0.arrivals.load(Ordering::Acquire);
                drop(g);
                self.0.synced.notify_all();
            }
        }
        let _lead = Lead(self);
        // The writers the last fsync covered are usually a moment from
        // appending again: wait (briefly, asleep: on a small machine they
        // need the CPU) until about as many have arrived, so this fsync
        // covers them too instead of splitting the writers into two groups
        // that take turns. Alone, this waits for nobody.
        let gather = group.last_fsync.clamp(GATHER_MIN, GATHER_MAX);
        let gather_until = std::time::Instant::now() + gather;
        group.gathering = true;
        group.gather_target = since + expect;
        while self.arrivals.load(Ordering::Acquire) < since + expect {
            if self.arrived.wait_until(&mut group, gather_until).timed_out() {
                break;
            }
        }
        group.gathering = false;
        drop(group);
        let (target, fsync) = current();
        {
            let mut g = self.group.lock();
            g.covered = g.waiting + 1;
        }
        let started = std::time::Instant::now();
        if let Err(e) = fsync() {
            self.poison(&e);
            return Err(e);
        }
        self.group.lock().last_fsync = started.elapsed();
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.mark_synced(target);
        Ok(())
    }
}
