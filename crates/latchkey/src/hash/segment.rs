//! Data segments: naming, and positioned reads of one record.
//!
//! A segment id is a u64 `(generation << 32) | index`. The active segment
//! of each generation has index 0; a merge that starts generation `g + 1`
//! writes its outputs as `(g << 32) | 1, 2, ...`, which sort after every
//! input and before the new active segment. So the newest segment by id is
//! always the one being appended to, and the only one that may end in a
//! torn write.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::codec::{self, Kind};
use crate::error::{Error, Result};
use crate::fs::File;

/// A segment id: `(generation << 32) | index`.
pub(crate) type SegId = u64;

/// The id of generation `g`'s active segment.
pub(crate) fn active_id(generation: u64) -> SegId {
    generation << 32
}

/// The file name of a data segment.
pub(crate) fn data_name(id: SegId) -> String {
    format!("{:08}-{:06}.data", id >> 32, id & 0xffff_ffff)
}

/// The file name of the key table of the merge whose base id is `id`.
pub(crate) fn table_name(id: SegId) -> String {
    format!("{:08}-{:06}.keys", id >> 32, id & 0xffff_ffff)
}

/// Parses `GGGGGGGG-IIIIII.ext` into an id and the extension.
pub(crate) fn parse_name(name: &str) -> Option<(SegId, &str)> {
    let (stem, ext) = name.split_once('.')?;
    let (g, i) = stem.split_once('-')?;
    if g.len() != 8 || i.len() != 6 {
        return None;
    }
    let g: u64 = g.parse().ok()?;
    let i: u64 = i.parse().ok()?;
    Some(((g << 32) | i, ext))
}

/// The ids of the files in `dir` with extension `ext` (`data`, `keys`), in order.
pub(crate) fn list_ids(dir: &Path, ext: &str) -> Result<Vec<SegId>> {
    let mut ids: Vec<SegId> = crate::fs::list(dir)?
        .iter()
        .filter_map(|n| parse_name(n))
        .filter(|(_, e)| *e == ext)
        .map(|(id, _)| id)
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// An open data segment, readable by many threads at once.
///
/// Readers hold an `Arc<Segment>`; a merged-away segment's file is unlinked
/// at once, and the open handle keeps its bytes readable until the last
/// reader lets go.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) id: SegId,
    file: File,
    /// Bytes in the file, header included.
    size: AtomicU64,
}

impl Segment {
    pub(crate) fn open(dir: &Path, id: SegId) -> Result<Segment> {
        let file = File::open_read(&dir.join(data_name(id)))?;
        let size = file.len()?;
        Ok(Segment { id, file, size: AtomicU64::new(size) })
    }

    pub(crate) fn path(&self) -> &Path {
        self.file.path()
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    pub(crate) fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    pub(crate) fn set_size(&self, size: u64) {
        self.size.store(size, Ordering::Release)
    }

    /// Reads the put record of `key` at `offset` and returns its value,
    /// checking the checksum and that the record is the one expected.
    pub(crate) fn read_value(&self, key: &[u8], offset: u64, len: u32) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, offset)?;
        let damage = |why: String| Error::corruption(self.path(), offset, why);
        let (rec, n) = codec::decode(&buf).map_err(|e| damage(e.to_string()))?;
        if n != buf.len() || rec.kind != Kind::Put || rec.key != key {
            return Err(damage("record is not the one the index points at".into()));
        }
        let start = n - rec.value.len();
        buf.drain(..start);
        Ok(buf)
    }
}

/// Path of segment `id`'s data file in `dir`.
pub(crate) fn data_path(dir: &Path, id: SegId) -> PathBuf {
    dir.join(data_name(id))
}

/// Path of the key table with id `id` in `dir`.
pub(crate) fn table_path(dir: &Path, id: SegId) -> PathBuf {
    dir.join(table_name(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_id() {
        let ids = [active_id(1), active_id(1) | 1, active_id(1) | 2, active_id(2)];
        let names: Vec<_> = ids.iter().map(|&i| data_name(i)).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        for (&id, name) in ids.iter().zip(&names) {
            assert_eq!(parse_name(name), Some((id, "data")));
        }
        assert_eq!(parse_name("LOCK"), None);
        assert_eq!(parse_name("1-2.data"), None);
    }
}
