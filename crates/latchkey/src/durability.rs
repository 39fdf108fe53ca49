//! What every engine shares about durability: group commit of log fsyncs,
//! and the two states that refuse work — closed, and poisoned (a write or
//! fsync failed, so what reached the disk is unknown).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::error::{Error, Result};

#[derive(Default)]
pub(crate) struct Durability {
    sync_lock: Mutex<()>,
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

    /// Makes the log durable up to `lsn`, with group commit: concurrent
    /// callers queue on one lock, and whoever holds it fsyncs everything
    /// written so far, so the others usually find their bytes already
    /// synced. `current` returns the log position now and the fsync of the
    /// active log (older logs were synced when sealed); it is called
    /// without the caller's writer lock held during the fsync.
    pub(crate) fn sync_to<F>(&self, lsn: u64, current: impl FnOnce() -> (u64, F)) -> Result<()>
    where
        F: FnOnce() -> Result<()>,
    {
        if self.synced_lsn.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        let _leader = self.sync_lock.lock();
        if self.synced_lsn.load(Ordering::Acquire) >= lsn {
            return Ok(());
        }
        self.check_writable()?;
        let (target, fsync) = current();
        if let Err(e) = fsync() {
            self.poison(&e);
            return Err(e);
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.mark_synced(target);
        Ok(())
    }
}
