//! The background threads each engine runs (syncs, merges, flushes,
//! compactions), and how they are stopped.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use crate::error::{Error, Result};

/// Running background threads. Each stops when its receiver reports that
/// the sender was dropped.
pub(crate) struct Background(Mutex<Vec<(mpsc::Sender<()>, JoinHandle<()>)>>);

impl Background {
    /// Starts `work` on a thread named `name`; `work` should return once
    /// its receiver says the sender is gone.
    pub(crate) fn spawn(
        name: &str,
        dir: &Path,
        work: impl FnOnce(mpsc::Receiver<()>) + Send + 'static,
    ) -> Result<Self> {
        Background::none().with_thread_if(true, name, dir, work)
    }

    /// No threads yet (see [`Background::with_interval_syncs`]).
    pub(crate) fn none() -> Self {
        Background(Mutex::new(Vec::new()))
    }

    fn add(&self, name: &str, dir: &Path, work: impl FnOnce(mpsc::Receiver<()>) + Send + 'static) -> Result<()> {
        let (tx, rx) = mpsc::channel();
        let handle =
            std::thread::Builder::new().name(name.into()).spawn(move || work(rx)).map_err(|e| Error::io(dir, e))?;
        self.0.lock().push((tx, handle));
        Ok(())
    }

    /// If `on` (an option that enables the thread), also starts `work` on
    /// a thread named `name` (as [`Background::spawn`]); otherwise nothing.
    pub(crate) fn with_thread_if(
        self,
        on: bool,
        name: &str,
        dir: &Path,
        work: impl FnOnce(mpsc::Receiver<()>) + Send + 'static,
    ) -> Result<Self> {
        if on {
            self.add(name, dir, work)?;
        }
        Ok(self)
    }

    /// With `every` (a `Sync::Interval`), also starts a thread named
    /// `name` that calls `sync` at that interval. A thread of its own: a
    /// merge or a compaction on the other one runs for seconds, and the
    /// policy promises that a crash of the machine loses at most the last
    /// interval's writes. A failure is logged (the engine counts it).
    pub(crate) fn with_interval_syncs(
        self,
        name: &str,
        dir: &Path,
        every: Option<Duration>,
        sync: impl Fn() -> Result<()> + Send + 'static,
    ) -> Result<Self> {
        if let Some(every) = every {
            self.add(name, dir, move |stop| {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
                    if let Err(e) = sync() {
                        tracing::error!(error = %e, "interval sync failed");
                    }
                }
            })?;
        }
        Ok(self)
    }

    /// The names of the threads started (running or done).
    #[cfg(test)]
    pub(crate) fn threads(&self) -> Vec<String> {
        self.0.lock().iter().filter_map(|(_, h)| h.thread().name().map(String::from)).collect()
    }

    /// Tells the threads to stop, calls `wake` (to end a wait one may be
    /// in) and waits for them. Later calls do nothing.
    pub(crate) fn stop(&self, wake: impl FnOnce()) {
        let threads = std::mem::take(&mut *self.0.lock());
        let (senders, handles): (Vec<_>, Vec<_>) = threads.into_iter().unzip();
        drop(senders);
        wake();
        for handle in handles {
            let _ = handle.join();
        }
    }
}

/// For the engines' tests: whether a write made by `write` is fsynced
/// within 2 s (`syncs` counts the engine's log fsyncs) while the caller
/// holds whatever lock it holds. Waits 100 ms first, so that a background
/// thread that takes that lock is blocked on it by then.
#[cfg(test)]
pub(crate) fn synced_soon_after(syncs: &std::sync::atomic::AtomicU64, write: impl FnOnce()) -> bool {
    use std::sync::atomic::Ordering;
    std::thread::sleep(Duration::from_millis(100));
    let before = syncs.load(Ordering::Acquire);
    write();
    let until = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < until {
        if syncs.load(Ordering::Acquire) > before {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}
