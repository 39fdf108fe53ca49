//! What every engine shares about durability: group commit of log fsyncs,
//! and the two states that refuse work — closed, and poisoned (a write or
//! fsync failed, so what reached the disk is unknown).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};

use crate::error::{Error, Result};

/// The group-commit state, under one lock.
#[derive(Default)]
struct Group {
    /// Whether a caller is fsyncing the log now (the group's leader).
    leading: bool,
    /// Callers asleep until the leader's fsync ends; it wakes each
    /// (`unpark`), and those it covered return without taking this lock
    /// again (a condvar would hand them the lock one after another, each
    /// hand-off a context switch while the rest of the group waits).
    sleepers: Vec<std::thread::Thread>,
    /// Callers the last fsync covered (its waiters and leader): about as
    /// many will be back with their next write.
    covered: u64,
    /// `arrivals` when the last fsync ended.
    arrivals_at_end: u64,
    /// Whether a leader is waiting for arrivals before its fsync.
    gathering: bool,
    /// The `arrivals` count the gathering leader waits for: the arrival
    /// that reaches it leads the fsync instead.
    gather_target: u64,
}

/// The longest a leader waits for the writers of the last group to append
/// again before it fsyncs: at least this long ...
const GATHER_MIN: Duration = Duration::from_micros(100);
/// ... and as long as the last fsync took, up to this.
const GATHER_MAX: Duration = Duration::from_micros(1000);
/// A writer waiting for the leader's fsync polls for at most this long
/// (and no longer than the last fsync took) before it sleeps.
const POLL_MAX: Duration = Duration::from_micros(1000);

#[derive(Default)]
pub(crate) struct Durability {
    group: Mutex<Group>,
    /// Fsync rounds ended (led and done, or failed): a sleeper waits for
    /// it to move.
    rounds: AtomicU64,
    /// Calls of `sync_to` that found their bytes not yet synced.
    arrivals: AtomicU64,
    /// Log bytes (a log sequence number) known to be on stable storage.
    synced_lsn: AtomicU64,
    /// The first failure's cause, once poisoned (read on every write: a
    /// plain load, no lock).
    poison: std::sync::OnceLock<String>,
    closed: AtomicBool,
    /// Log fsyncs made.
    pub(crate) syncs: AtomicU64,
    /// How long the last fsync took, in nanoseconds: how long a leader
    /// gathers, and how long waiters poll.
    last_fsync_ns: AtomicU64,
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
        match self.poison.get() {
            Some(cause) => Err(Error::Poisoned { cause: cause.clone() }),
            None => Ok(()),
        }
    }

    /// Records that a write or fsync failed: nothing more is written until
    /// the database is reopened. A failed fsync is never retried.
    pub(crate) fn poison(&self, e: &Error) {
        tracing::error!(error = %e, "write failure: the database now refuses writes");
        let _ = self.poison.set(e.to_string()); // the first cause stays
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.poison.get().is_some()
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

    /// One sync of `Sync::Interval` (`sync_all` makes everything written
    /// durable): skipped once poisoned (what reached the disk is unknown,
    /// and a failed fsync is never retried); a failure is counted in
    /// `errors`.
    pub(crate) fn interval_sync(&self, sync_all: impl FnOnce() -> Result<()>, errors: &AtomicU64) -> Result<()> {
        if self.is_poisoned() {
            return Ok(());
        }
        sync_all().inspect_err(|_| {
            errors.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// Everything up to `lsn` is durable (a sealed log was fsynced).
    pub(crate) fn mark_synced(&self, lsn: u64) {
        self.synced_lsn.fetch_max(lsn, Ordering::AcqRel);
    }

    /// Makes the log durable up to `lsn`, with group commit: one caller at a
    /// time (the leader) fsyncs everything written so far; the others
    /// sleep until that fsync ends, and all of them wake at once — those
    /// whose bytes it covered return, and one of the rest leads the next
    /// fsync, which covers every write made while the last one ran.
    /// `current` returns the log position now and the fsync of the active
    /// log (older logs were synced when sealed), after writing the records
    /// the waiting writers deferred (see [`crate::log::LogWriter::defer`]):
    /// one write for the group. The fsync runs without the writer lock held.
    pub(crate) fn sync_to<F>(&self, lsn: u64, current: impl FnOnce() -> Result<(u64, F)>) -> Result<()>
    where
        F: FnOnce() -> Result<()>,
    {
        if self.synced_lsn.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        let arrived = self.arrivals.fetch_add(1, Ordering::AcqRel) + 1;
        let mut group = self.group.lock();
        if group.gathering && arrived >= group.gather_target && self.check_writable().is_ok() {
            // This arrival completes the group the leader is gathering: it
            // leads the fsync in the leader's place (the leader sleeps on,
            // as one of the group) instead of waking it, a context switch
            // the whole group would wait for.
            group.gathering = false;
            drop(group);
            return self.lead(current);
        }
        loop {
            if self.synced_lsn.load(Ordering::Acquire) >= lsn {
                return Ok(());
            }
            self.check_writable()?;
            if group.leading {
                self.sleep(group);
            } else {
                group.leading = true;
                let target = group.arrivals_at_end + group.covered;
                if self.arrivals.load(Ordering::Acquire) >= target {
                    drop(group);
                    return self.lead(current);
                }
                if !self.gather(group, target) {
                    return self.lead(current);
                }
                // An arrival completed the group and led its fsync.
            }
            group = self.group.lock();
        }
    }

    /// Sleeps until the fsync being led now has ended.
    fn sleep(&self, mut group: MutexGuard<'_, Group>) {
        let round = self.enlist(&mut group);
        drop(group);
        self.wait_round(round);
    }

    /// Adds this thread to the sleepers the end of the current round wakes;
    /// returns the round.
    fn enlist(&self, group: &mut Group) -> u64 {
        group.sleepers.push(std::thread::current());
        self.rounds.load(Ordering::Acquire)
    }

    fn last_fsync(&self) -> Duration {
        Duration::from_nanos(self.last_fsync_ns.load(Ordering::Relaxed))
    }

    /// Waits for the end of `round`: first polling, for about as long as
    /// the last fsync took (at most [`POLL_MAX`]), yielding the CPU to any
    /// thread that can run (the other writers of the group, on a small
    /// machine); then asleep. On a virtual machine a CPU with nothing to
    /// run halts, and waking a thread there costs an exit to the host and
    /// back, for every writer of every group; a waiter that polls keeps
    /// its CPU awake and needs no wake-up. RocksDB's write thread does the
    /// same (`enable_write_thread_adaptive_yield`).
    fn wait_round(&self, round: u64) {
        let poll = self.last_fsync().min(POLL_MAX);
        let until = Instant::now() + poll;
        while self.rounds.load(Ordering::Acquire) == round {
            if Instant::now() < until {
                std::thread::yield_now();
            } else {
                std::thread::park();
            }
        }
    }

    /// The writers the last fsync covered are usually a moment from
    /// appending again: the new leader waits (polling, yielding the CPU to
    /// them, as in [`Durability::wait_round`]) until about as many have
    /// arrived, so its fsync covers them too instead of splitting the
    /// writers into two groups that take turns. The arrival that completes
    /// the count leads the fsync; this returns true once it has ended. After the last fsync's
    /// duration (100 us to 1 ms) with the count short, this returns false
    /// and the caller leads the fsync of what there is.
    fn gather(&self, mut group: MutexGuard<'_, Group>, target: u64) -> bool {
        let until = Instant::now() + self.last_fsync().clamp(GATHER_MIN, GATHER_MAX);
        group.gathering = true;
        group.gather_target = target;
        let round = self.enlist(&mut group);
        drop(group);
        loop {
            if self.rounds.load(Ordering::Acquire) != round {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                break;
            }
            std::thread::yield_now();
        }
        let mut g = self.group.lock();
        if g.gathering {
            g.gathering = false;
            let me = std::thread::current().id();
            g.sleepers.retain(|t| t.id() != me);
            return false;
        }
        drop(g);
        self.wait_round(round); // taken over: its fsync is under way
        true
    }

    /// Writes the deferred records and fsyncs them, as the group's leader
    /// (`leading` is set); the leader's flag is cleared and the sleepers
    /// woken however this ends.
    fn lead<F>(&self, current: impl FnOnce() -> Result<(u64, F)>) -> Result<()>
    where
        F: FnOnce() -> Result<()>,
    {
        let _lead = Lead(self);
        let (target, fsync) = current()?;
        {
            let mut g = self.group.lock();
            g.covered = g.sleepers.len() as u64 + 1;
        }
        let started = Instant::now();
        if let Err(e) = fsync() {
            self.poison(&e);
            return Err(e);
        }
        self.last_fsync_ns.store(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.mark_synced(target);
        Ok(())
    }
}

/// Ends a leader's round (an error or a panic in its fsync included):
/// clears the flag and wakes every sleeper.
struct Lead<'a>(&'a Durability);

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        let d = self.0;
        let sleepers = {
            let mut g = d.group.lock();
            g.leading = false;
            g.gathering = false;
            g.arrivals_at_end = d.arrivals.load(Ordering::Acquire);
            d.rounds.fetch_add(1, Ordering::AcqRel);
            std::mem::take(&mut g.sleepers)
        };
        for t in sleepers {
            t.unpark();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::Arc;

    /// Writers that wait for a leader's fsync return once it covers them,
    /// whether it ends while they poll (a short fsync) or after they fell
    /// asleep (one longer than [`POLL_MAX`]); every one is covered by an
    /// fsync that began after its write.
    #[test]
    fn waiters_return_after_short_and_long_fsyncs() {
        for fsync_time in [Duration::from_micros(50), POLL_MAX * 5] {
            let d = Arc::new(Durability::default());
            // The log position written so far, and the positions each fsync covered.
            let written = Arc::new(AtomicU64::new(0));
            let fsyncs = Arc::new(Mutex::new(Vec::new()));
            let (tx, rx) = mpsc::channel();
            for t in 0..6u64 {
                let (d, written, fsyncs, tx) = (d.clone(), written.clone(), fsyncs.clone(), tx.clone());
                std::thread::spawn(move || {
                    for i in 0..20u64 {
                        let lsn = written.fetch_add(1, Ordering::AcqRel) + 1;
                        let r = d.sync_to(lsn, || {
                            let at = written.load(Ordering::Acquire);
                            let fsyncs = fsyncs.clone();
                            Ok((at, move || {
                                std::thread::sleep(fsync_time);
                                fsyncs.lock().push(at);
                                Ok(())
                            }))
                        });
                        tx.send((t, i, lsn, r.is_ok())).unwrap();
                    }
                });
            }
            drop(tx);
            let mut n = 0;
            while let Ok((t, i, lsn, ok)) = rx.recv_timeout(Duration::from_secs(30)) {
                assert!(ok, "writer {t} put {i} failed");
                assert!(d.synced_lsn.load(Ordering::Acquire) >= lsn);
                assert!(fsyncs.lock().iter().any(|&at| at >= lsn), "no fsync covered position {lsn}");
                n += 1;
            }
            assert_eq!(n, 6 * 20, "writers still waiting after 30 s ({fsync_time:?} fsyncs)");
            assert!(d.syncs.load(Ordering::Relaxed) < 6 * 20, "no fsync was shared");
        }
    }
}
