//! Offline verification of a data directory (`latchkey check`).

use std::path::Path;

use crate::db::identify;
use crate::error::{Error, Result};
use crate::options::Engine;

/// Called with (bytes checked, bytes in all) as a check goes on.
pub type Progress<'a> = dyn FnMut(u64, u64) + 'a;

/// What [`check`] found.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct CheckReport {
    /// Files verified.
    pub files: u64,
    /// Records (or blocks, or pages) verified.
    pub records: u64,
    /// Bytes verified.
    pub bytes: u64,
    /// Every piece of damage found, each naming its file and offset.
    pub damage: Vec<Error>,
    /// Things worth knowing that are not damage (such as a torn write at
    /// the end of the newest log, which the next open cuts off).
    pub notes: Vec<String>,
}

impl CheckReport {
    /// True if no damage was found.
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }
}

/// Verifies every checksum of the database in `dir` without changing
/// anything. Takes the directory's lock, so it fails with
/// [`Error::Locked`] while a process has the database open.
pub fn check(dir: &Path, progress: &mut Progress<'_>) -> Result<CheckReport> {
    let engine = identify(dir)?
        .ok_or_else(|| Error::InvalidArgument(format!("{} is not a latchkey data directory", dir.display())))?;
    let _lock = crate::fs::lock_dir(dir)?;
    match engine {
        Engine::Hash => crate::hash::check(dir, progress),
        Engine::Lsm => crate::lsm::check(dir, progress),
        Engine::Btree => crate::btree::check(dir, progress),
    }
}
