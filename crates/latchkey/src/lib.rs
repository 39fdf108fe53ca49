//! # latchkey
//!
//! A durable key-value store with three storage engines behind one API,
//! and fencing tokens that the store itself enforces.
//!
//! ```
//! # fn main() -> latchkey::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! use latchkey::{Db, Engine, Options, Sync};
//!
//! let db = Db::open(dir.path(), Options { engine: Engine::Hash, sync: Sync::Always, ..Options::default() })?;
//! db.put(b"plays:cat.mp4", b"1")?;
//! let n: u64 = String::from_utf8_lossy(&db.get(b"plays:cat.mp4")?.unwrap()).parse().unwrap();
//! db.put(b"plays:cat.mp4", (n + 1).to_string())?;
//! assert_eq!(db.get(b"plays:cat.mp4")?, Some(b"2".to_vec()));
//! db.delete(b"plays:cat.mp4")?;
//! assert_eq!(db.get(b"plays:cat.mp4")?, None);
//! # Ok(()) }
//! ```
//!
//! Engines:
//! - [`Engine::Hash`]: Bitcask, an in-memory hash index over append-only
//!   log segments, with background merge and hint files.
//! - [`Engine::Lsm`]: an LSM-tree (memtable, SSTables with bloom filters,
//!   leveled compaction).
//! - [`Engine::Btree`]: a B+tree of pages overwritten in place, with a
//!   write-ahead log and latches.
//!
//! Durability is chosen per database with [`Sync`]; every record carries a
//! CRC32C checksum and damaged data is reported, never returned.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod background;
mod batch;
mod btree;
mod cache;
pub mod check;
pub mod codec;
mod db;
mod durability;
mod error;
pub mod fs;
pub mod fuzzing;
mod hash;
pub mod locks;
pub mod log;
mod lsm;
mod options;

pub use batch::{is_reserved, Change, WriteBatch, RESERVED_PREFIX};
pub use check::{check, CheckReport};
pub use db::{identify, now_ms, Db, Iter, KeyValue, Stats, IDENTITY_FILE};
pub use error::{Error, Result};
pub use locks::{Grant, LockService};
pub use options::{Engine, Options, Sync, MAX_BATCH_BYTES, MAX_KEY_LEN, MAX_VALUE_LEN};
