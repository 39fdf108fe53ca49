//! The one error type of latchkey.

use std::path::PathBuf;

/// Shorthand for `Result<T, latchkey::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in latchkey. Each message says what
/// happened, where, and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O operation on a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// Stored data failed its checksum or is otherwise malformed. The data at
    /// this place is never returned. Run `latchkey check` on the directory
    /// and restore the file from a backup.
    #[error("damaged data in {path} at offset {offset}: {reason}")]
    Corruption {
        /// The damaged file.
        path: PathBuf,
        /// The byte offset of the damaged record, block or page.
        offset: u64,
        /// What was wrong.
        reason: String,
    },

    /// A key, value or batch exceeds a stated limit.
    #[error("{what} is {len} bytes, over the limit of {max} bytes")]
    TooLarge {
        /// Which thing was too large ("key", "value", "batch").
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// An earlier write or fsync failed, so what is on disk is no longer known.
    /// The engine refuses writes until it is closed and reopened.
    #[error("a previous write or fsync failed ({cause}); the database refuses writes: close and reopen it")]
    Poisoned {
        /// The failure that poisoned the database.
        cause: String,
    },

    /// Another `Db` (in this process or another) has the directory open.
    #[error("the data directory {path} is in use by another latchkey process or handle; close it first")]
    Locked {
        /// The data directory.
        path: PathBuf,
    },

    /// The directory holds a different engine's data, or a format this
    /// version cannot read.
    #[error("{path}: {reason}")]
    Incompatible {
        /// The data directory.
        path: PathBuf,
        /// What does not match.
        reason: String,
    },

    /// A fenced write carried a token older than one the store has seen.
    #[error("fencing token {token} for lock {lock:?} is stale: the store has already seen token {highest}")]
    StaleToken {
        /// The lock's name.
        lock: String,
        /// The token the write carried.
        token: u64,
        /// The highest token the store has seen for this lock.
        highest: u64,
    },

    /// An argument was out of its allowed range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The database is shutting down or was closed.
    #[error("the database is closed")]
    Closed,
}

impl Error {
    /// An I/O error on `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// Damage found in `path` at `offset`.
    pub(crate) fn corruption(path: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> Self {
        Error::Corruption { path: path.into(), offset, reason: reason.into() }
    }

    /// True if this error reports damaged data.
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corruption { .. })
    }
}
