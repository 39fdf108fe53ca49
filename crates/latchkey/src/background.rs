//! The background thread each engine runs (syncs, merges, flushes,
//! compactions), and how it is stopped.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use crate::error::{Error, Result};

/// A running background thread. It stops when its receiver reports that
/// the sender was dropped.
pub(crate) struct Background(Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>);

impl Background {
    /// Starts `work` on a thread named `name`; `work` should return once
    /// its receiver says the sender is gone.
    pub(crate) fn spawn(
        name: &str,
        dir: &Path,
        work: impl FnOnce(mpsc::Receiver<()>) + Send + 'static,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let handle =
            std::thread::Builder::new().name(name.into()).spawn(move || work(rx)).map_err(|e| Error::io(dir, e))?;
        Ok(Background(Mutex::new(Some((tx, handle)))))
    }

    /// Tells the thread to stop, calls `wake` (to end a wait it may be in)
    /// and waits for it. Later calls do nothing.
    pub(crate) fn stop(&self, wake: impl FnOnce()) {
        if let Some((tx, handle)) = self.0.lock().take() {
            drop(tx);
            wake();
            let _ = handle.join();
        }
    }
}
