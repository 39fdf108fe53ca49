//! The set of live tables (a version) and the manifest that records it.
//!
//! `MANIFEST` is a log file (header kind 6) of meta records, rewritten
//! whole and atomically (temporary file, fsync, rename) on every change:
//! `state` = next file id u64 | oldest WAL still needed u64, then one
//! `table` = level u32 | id u64 per live table. Readers hold an
//! `Arc<Version>`, so a table stays open as long as someone reads it.

use std::path::Path;
use std::sync::Arc;

use super::table::Table;
use crate::codec::{read_u32, read_u64, Kind, Record};
use crate::error::{Error, Result};
use crate::log::{self, FileKind, LogWriter, TailMode};

/// The manifest's file name.
pub(crate) const MANIFEST: &str = "MANIFEST";
/// How many levels there are (0 to 6).
pub(crate) const LEVELS: usize = 7;

/// Live tables by level. Level 0: newest first, ranges may overlap.
/// Deeper levels: sorted by key, ranges disjoint.
#[derive(Clone, Default)]
pub(crate) struct Version {
    pub(crate) levels: Vec<Vec<Arc<Table>>>,
}

impl Version {
    pub(crate) fn empty() -> Self {
        Version { levels: vec![Vec::new(); LEVELS] }
    }

    pub(crate) fn level_bytes(&self, level: usize) -> u64 {
        self.levels[level].iter().map(|t| t.size).sum()
    }

    pub(crate) fn tables(&self) -> impl Iterator<Item = (usize, &Arc<Table>)> {
        self.levels.iter().enumerate().flat_map(|(l, ts)| ts.iter().map(move |t| (l, t)))
    }

    /// Puts a level in order after a change.
    pub(crate) fn sort(&mut self) {
        self.levels[0].sort_by_key(|t| std::cmp::Reverse(t.id));
        for l in self.levels.iter_mut().skip(1) {
            l.sort_by(|a, b| a.smallest.cmp(&b.smallest));
        }
    }
}

/// What the manifest says beyond the tables.
pub(crate) struct ManifestState {
    pub(crate) next_id: u64,
    pub(crate) min_wal: u64,
    pub(crate) tables: Vec<(usize, u64)>,
}

fn meta<'a>(key: &'a [u8], value: &'a [u8]) -> Record<'a> {
    Record { kind: Kind::Meta, seq: 0, expires_at: 0, key, value }
}

/// Writes the manifest for `version` atomically.
pub(crate) fn write_manifest(dir: &Path, version: &Version, next_id: u64, min_wal: u64) -> Result<()> {
    let mut buf = Vec::new();
    let state = [next_id.to_le_bytes(), min_wal.to_le_bytes()].concat();
    meta(b"state", &state).encode_into(&mut buf);
    for (level, t) in version.tables() {
        let v = [(level as u32).to_le_bytes().as_slice(), &t.id.to_le_bytes()].concat();
        meta(b"table", &v).encode_into(&mut buf);
    }
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    crate::fs::remove_file(&tmp)?;
    let mut w = LogWriter::create(&tmp, FileKind::Manifest)?;
    w.append(&buf)?;
    w.sync()?;
    crate::fs::rename(&tmp, &dir.join(MANIFEST))?;
    crate::fs::sync_dir(dir)
}

/// Reads the manifest, if there is one.
pub(crate) fn read_manifest(dir: &Path) -> Result<Option<ManifestState>> {
    let path = dir.join(MANIFEST);
    if !path.exists() {
        return Ok(None);
    }
    let mut st = ManifestState { next_id: 1, min_wal: 0, tables: Vec::new() };
    log::scan(&path, FileKind::Manifest, TailMode::Sealed, |f| {
        let v = f.record.value;
        let bad = || Error::corruption(&path, f.offset, "bad manifest record");
        match f.record.key {
            b"state" => {
                st.next_id = read_u64(v).ok_or_else(bad)?;
                st.min_wal = v.get(8..).and_then(read_u64).ok_or_else(bad)?;
            }
            b"table" => {
                let level = read_u32(v).ok_or_else(bad)? as usize;
                let id = v.get(4..).and_then(read_u64).ok_or_else(bad)?;
                if level >= LEVELS {
                    return Err(bad());
                }
                st.tables.push((level, id));
            }
            _ => return Err(bad()),
        }
        Ok(())
    })?;
    Ok(Some(st))
}
