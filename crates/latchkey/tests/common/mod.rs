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

/// Copies every file of `from` into the (existing) directory `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}
