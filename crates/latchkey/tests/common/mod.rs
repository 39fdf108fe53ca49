//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use latchkey::{Engine, Options, Sync};

/// Options that make segments small so that tests cross rotations and
/// merges quickly; automatic merges are off unless `auto_merge`.
pub fn small_options(engine: Engine, auto_merge: bool) -> Options {
    Options {
        engine,
        sync: Sync::Always,
        segment_size: 4096,
        merge_dead_ratio: 0.3,
        merge_min_dead_bytes: if auto_merge { 2048 } else { u64::MAX },
        background_interval: Duration::from_millis(10),
        memtable_size: 4096,
        block_cache_size: 64 * 1024,
        target_file_size: 8192,
        l0_compaction_trigger: 2,
        base_level_bytes: 32 * 1024,
        page_size: 1024,
        page_cache_size: 64 * 1024,
        ..Options::new(engine)
    }
}

pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Cuts `path` to `len` bytes, as a crash that lost the rest would.
pub fn cut(path: &Path, len: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(len).unwrap();
}

/// Tears the write that ended at `end` at `keep`, as a crash would: either
/// the file is cut at `keep` (`zeroes` false), or it keeps its length and
/// the bytes from `keep` to `end` are zeroes (a write into preallocated
/// space that never landed whole). Returns whether that changed the
/// write: zeroing bytes that were zeroes leaves it whole.
pub fn tear(path: &Path, keep: u64, end: u64, zeroes: bool) -> bool {
    if !zeroes {
        cut(path, keep);
        return keep < end;
    }
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut old = vec![0u8; (end - keep) as usize];
    f.read_exact_at(&mut old, keep).unwrap();
    f.write_all_at(&vec![0u8; old.len()], keep).unwrap();
    old.iter().any(|&b| b != 0)
}

/// The active log of `db` and where its records end.
pub fn log_end(db: &latchkey::Db) -> (std::path::PathBuf, u64) {
    db.active_log_end().unwrap()
}

/// Copies every file of `from` into the (existing) directory `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}
