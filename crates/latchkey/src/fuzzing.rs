//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz) and for the
//! test that replays their corpora on every `cargo test`. Each takes
//! arbitrary bytes and runs them through one decoder of latchkey's files;
//! any result is fine except a panic, a hang or unbounded memory.
#![doc(hidden)]

use std::path::Path;

use crate::log::{FileKind, TailMode};

/// The record decoder, over a buffer of back-to-back records.
pub fn record(data: &[u8]) {
    let mut at = 0;
    while at < data.len() {
        match crate::codec::decode(&data[at..]) {
            Ok((r, n)) => {
                let _ = (r.kind, r.key.len(), r.value.len());
                assert!(n > 0 && at + n <= data.len(), "a decoded record must consume bytes within the buffer");
                at += n;
            }
            Err(_) => at += 1,
        }
    }
    let _ = crate::codec::valid_with_length(data);
}

fn write(dir: &Path, name: &str, data: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).expect("the fuzz scratch directory is writable");
    path
}

/// The log reader (write-ahead logs, hash segments), as the newest log and
/// as a sealed one.
pub fn log_file(dir: &Path, data: &[u8]) {
    let path = write(dir, "fuzz.log", data);
    for kind in [FileKind::Wal, FileKind::Data] {
        for mode in [TailMode::Newest, TailMode::Sealed] {
            let _ = crate::log::scan(&path, kind, mode, |f| {
                let _ = f.record.key.len();
                Ok(())
            });
        }
    }
}

/// The SSTable reader: footer, index, bloom filter, then every block and a
/// lookup of every key the index names.
pub fn sstable(dir: &Path, data: &[u8]) {
    write(dir, &crate::lsm::table_name_for_fuzzing(1), data);
    crate::lsm::exercise_table_for_fuzzing(dir, 1);
}

/// The LSM manifest reader.
pub fn manifest(dir: &Path, data: &[u8]) {
    write(dir, "MANIFEST", data);
    let _ = crate::lsm::read_manifest_for_fuzzing(dir);
}

/// The hash engine's key table (hint file) reader.
pub fn key_table(dir: &Path, data: &[u8]) {
    let path = dir.join("fuzz.keys");
    crate::hash::exercise_key_table_for_fuzzing(&path, data.to_vec());
}

/// The B+tree page decoder. The bytes become a page of each size they fill
/// (checksum fixed up, so the structural checks behind it are reached);
/// a page that passes verification must then decode, search and repack
/// without a fault.
pub fn btree_page(data: &[u8]) {
    crate::btree::exercise_page_for_fuzzing(data);
}
