//! Data segments: naming, and positioned reads of one record.
//!
//! A segment id is a u64 `(generation << 32) | index`. The active segment
//! of each generation has index 0; a merge that starts generation `g + 1`
//! writes its outputs as `(g << 32) | 1, 2, ...`, which sort after every
//! input and before the new active segment. So the newest segment by id is
//! always the one being appended to, and the only one that may end in a
//! torn write.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use super::spare::Spare;
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
///
/// Values are read in blocks of [`CACHE_BLOCK`] through the shared block
/// cache, so a hot set of values is served from memory without a system
/// call: every block of a sealed segment (never appended to again), and
/// every full block of the active one.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) id: SegId,
    file: File,
    /// Bytes in the file, header included.
    size: AtomicU64,
    sealed: AtomicBool,
    /// The whole file, once read into memory ([`Segment::make_resident`]).
    resident: OnceLock<Resident>,
}

/// A sealed segment's bytes, read into memory whole. They are reserved in
/// the block cache, and given back when the segment is dropped.
struct Resident {
    bytes: Vec<u8>,
    cache: Arc<SegmentCache>,
    /// Where the buffer goes when the segment is dropped (merged away), for
    /// the next merge's outputs.
    spare: Arc<Spare>,
}

impl Drop for Resident {
    fn drop(&mut self) {
        self.cache.release(self.bytes.len());
        self.spare.give(std::mem::take(&mut self.bytes));
    }
}

impl std::fmt::Debug for Resident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Resident({} bytes)", self.bytes.len())
    }
}

/// Blocks of sealed segments the cache holds.
pub(crate) type SegmentCache = crate::cache::BlockCache<[u8]>;

/// Bytes per cached block. A miss reads a whole block for one record:
/// when the live records are spread over more segment bytes than the
/// cache holds (a server between merges), every miss costs this copy. 8 KiB
/// (32 KiB before session 9): `latchkey serve` GET -P16 on such a store
/// went from a median of 350k to 436k requests/s; a store that fits the
/// cache pays four reads where it paid one while it warms up.
pub(crate) const CACHE_BLOCK: u64 = 8 << 10;

impl Segment {
    pub(crate) fn open(dir: &Path, id: SegId) -> Result<Segment> {
        let file = File::open_read(&dir.join(data_name(id)))?;
        let size = file.len()?;
        Ok(Segment { id, file, size: AtomicU64::new(size), sealed: AtomicBool::new(false), resident: OnceLock::new() })
    }

    /// Whether the segment will never be appended to again.
    pub(crate) fn sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    /// Reads the whole of this sealed segment into memory if `cache` can
    /// reserve its size with all reservations within `limit` bytes: its
    /// records are then read without a lock, a block lookup or a system
    /// call. Every record's checksum is checked once, here, so gets of a
    /// resident segment need not check it again (as a block cache checks
    /// a block when it reads it from disk, not at every hit). False (and
    /// nothing kept) if it cannot, if the segment is not sealed, or if a
    /// record in it is damaged: it is then read in blocks, each get
    /// checking its record, so the damage is reported where it lies.
    ///
    /// The buffer is taken from `spare` if one there is large enough (pages
    /// the process has already touched), and goes back there when the
    /// segment is dropped.
    pub(crate) fn make_resident(&self, cache: &Arc<SegmentCache>, spare: &Arc<Spare>, limit: usize) -> Result<bool> {
        if self.resident.get().is_some() {
            return Ok(true);
        }
        let size = self.size() as usize;
        if !self.sealed() || !cache.reserve(size, limit) {
            return Ok(false);
        }
        let mut bytes = match spare.take(size) {
            Some(mut b) => {
                b.resize(size, 0);
                b
            }
            None => vec![0u8; size],
        };
        let failed = match self.file.read_exact_at(&mut bytes, 0) {
            Err(e) => Some(Err(e)),
            Ok(()) => check_records(&bytes).err().map(|at| {
                tracing::warn!(segment = %self.path().display(), offset = at, "a damaged record keeps the segment on disk");
                Ok(false)
            }),
        };
        if let Some(result) = failed {
            cache.release(size);
            spare.give(bytes);
            return result;
        }
        // Another thread may have made it resident meanwhile: then this
        // copy is dropped, and its reservation and buffer given back.
        let _ = self.resident.set(Resident { bytes, cache: Arc::clone(cache), spare: Arc::clone(spare) });
        Ok(true)
    }

    /// Whether this segment is held in memory whole (its reads do no I/O).
    pub(crate) fn is_resident(&self) -> bool {
        self.resident.get().is_some()
    }

    /// The byte at `offset`, if the segment is held in memory whole.
    pub(crate) fn resident_byte(&self, offset: u64) -> Option<u8> {
        self.resident.get()?.bytes.get(usize::try_from(offset).ok()?).copied()
    }

    /// Bytes of this segment held in memory whole (0 if not resident).
    pub(crate) fn resident_bytes(&self) -> usize {
        self.resident.get().map_or(0, |r| r.bytes.len())
    }

    /// Marks the segment as never to be appended to again: its last,
    /// partial block may then be cached too.
    pub(crate) fn seal(&self) {
        self.sealed.store(true, Ordering::Release);
    }

    /// The cached block `i` of this sealed segment, read if absent.
    fn block(&self, i: u64, cache: &SegmentCache) -> Result<Arc<[u8]>> {
        let key = (self.id, i as u32);
        if let Some(b) = cache.get(key) {
            return Ok(b);
        }
        let block = self.read_block(i, cache.spare(key))?;
        cache.insert(key, Arc::clone(&block), block.len() + 64);
        Ok(block)
    }

    /// Reads block `i` from the file, into `spare` if it is the right size
    /// and no one else holds it: an evicted block is refilled rather than
    /// a new one allocated (and its pages faulted in). A new one is
    /// allocated once, in place (`Arc::from(vec![..])` would allocate twice
    /// and copy).
    fn read_block(&self, i: u64, spare: Option<Arc<[u8]>>) -> Result<Arc<[u8]>> {
        let start = i * CACHE_BLOCK;
        let len = CACHE_BLOCK.min(self.size().saturating_sub(start)) as usize;
        let zeroed = || (0..len).map(|_| 0u8).collect::<Arc<[u8]>>();
        let mut block = spare.filter(|b| b.len() == len).unwrap_or_else(zeroed);
        match Arc::get_mut(&mut block) {
            Some(buf) => self.file.read_exact_at(buf, start)?,
            None => {
                let mut buf = vec![0u8; len];
                self.file.read_exact_at(&mut buf, start)?;
                block = Arc::from(buf);
            }
        }
        Ok(block)
    }

    /// Blocks of this segment that may be cached: all of a sealed one, the
    /// full ones of the active one.
    pub(crate) fn cacheable_blocks(&self) -> u64 {
        let size = self.size();
        if self.sealed() {
            size.div_ceil(CACHE_BLOCK)
        } else {
            size / CACHE_BLOCK
        }
    }

    /// Reads block `i` into `cache` if it is not there and the cache has
    /// room for it without evicting anything (the warm-up after open).
    /// False once the cache has no room for it.
    pub(crate) fn prefill(&self, i: u64, cache: &SegmentCache) -> Result<bool> {
        let key = (self.id, i as u32);
        if i >= self.cacheable_blocks() || cache.contains(key) {
            return Ok(true);
        }
        let block = self.read_block(i, None)?;
        let size = block.len() + 64;
        Ok(cache.insert_if_room(key, block, size))
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
    pub(crate) fn read_value(&self, key: &[u8], offset: u64, len: u32, cache: &SegmentCache) -> Result<Vec<u8>> {
        self.read_value_of(key, offset, len, cache)?
            .ok_or_else(|| Error::corruption(self.path(), offset, "record is not the one the index points at"))
    }

    /// Like [`Segment::read_value`], but a whole, checksummed put record
    /// of another key there is `None`, not damage (the caller found the
    /// location by the key's hash alone).
    pub(crate) fn read_value_of(
        &self,
        key: &[u8],
        offset: u64,
        len: u32,
        cache: &SegmentCache,
    ) -> Result<Option<Vec<u8>>> {
        let damage = |why: String| Error::corruption(self.path(), offset, why);
        let end = offset.saturating_add(u64::from(len));
        let i = offset / CACHE_BLOCK;
        // A block is immutable once every byte of it is written: any block
        // of a sealed segment, and the full blocks of the active one
        // (appends never change written bytes).
        let size = self.size();
        let sealed = self.sealed();
        let cacheable = |block: u64| sealed || (block + 1) * CACHE_BLOCK <= size;
        let value = |buf: &[u8]| value_of(buf, key).map_err(damage);
        let at = (offset - i * CACHE_BLOCK) as usize;
        let past_end = || damage("record lies past the segment's end".into());
        if let Some(resident) = self.resident.get() {
            // Every record was checked when the segment was read in.
            let checked = |buf: &[u8]| value_of_checked(buf, key).map_err(damage);
            return resident.bytes.get(offset as usize..end as usize).map_or_else(|| Err(past_end()), checked);
        }
        if end <= size && cacheable(i) && (end - 1) / CACHE_BLOCK == i {
            let parse = |block: &[u8]| block.get(at..at + len as usize).map_or_else(|| Err(past_end()), value);
            // Decoded in place under the cache's lock when cached.
            if let Some(found) = cache.with((self.id, i as u32), |b| parse(b)) {
                return found;
            }
            return parse(&self.block(i, cache)?);
        }
        if end <= size && cacheable(i + 1) && (end - 1) / CACHE_BLOCK == i + 1 {
            // A record across two blocks is put together from both, so it
            // is served from the cache too.
            let (first, second) = (self.block(i, cache)?, self.block(i + 1, cache)?);
            let head = first.get(at..).ok_or_else(past_end)?;
            let rest = (len as usize).checked_sub(head.len()).ok_or_else(past_end)?;
            let tail = second.get(..rest).ok_or_else(past_end)?;
            return value(&[head, tail].concat());
        }
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, offset)?;
        value(&buf)
    }
}

/// Reads at most this many bytes at once when a merge reads the live
/// records of a segment not held in memory.
const LIVE_READ: u64 = 1 << 20;
/// A gap of dead bytes at least this long between two live records is
/// skipped instead of read.
const LIVE_GAP: u64 = 64 << 10;

impl Segment {
    /// Calls `f` with the put record at each of `locs` (offset and length,
    /// sorted by offset), in order, and nothing else: a merge reads only
    /// the records the keydir points at, not the dead ones between them.
    /// From memory if the segment is resident (its records were checked
    /// when read in); otherwise from the file in reads of up to
    /// [`LIVE_READ`] bytes (skipping dead gaps of [`LIVE_GAP`] or more),
    /// each record's checksum checked. A record that is damaged, is not a
    /// whole put record of the given length, or lies past the end is
    /// corruption, named by file and offset.
    pub(crate) fn for_each_record_at(
        &self,
        locs: &[(u64, u32)],
        mut f: impl FnMut(u64, codec::Record<'_>) -> Result<()>,
    ) -> Result<()> {
        let damage = |offset: u64, why: String| Error::corruption(self.path(), offset, why);
        let size = self.size();
        let past_end = |offset: u64| damage(offset, "record lies past the segment's end".into());
        if let Some(resident) = self.resident.get() {
            for &(offset, len) in locs {
                let end = offset.saturating_add(u64::from(len));
                let buf = resident.bytes.get(offset as usize..end as usize).ok_or_else(|| past_end(offset))?;
                f(offset, live_record(buf, true).map_err(|why| damage(offset, why))?)?;
            }
            return Ok(());
        }
        let mut header = [0u8; crate::log::FILE_HEADER_LEN as usize];
        self.file.read_exact_at(&mut header, 0)?;
        crate::log::check_file_header(self.path(), &header, crate::log::FileKind::Data)?;
        let mut buf = Vec::new();
        let mut rest = locs;
        while let Some(&(start, _)) = rest.first() {
            // The run of records read at once: at least one, then each next
            // while it ends within LIVE_READ of the start and follows its
            // predecessor by less than LIVE_GAP.
            let mut end = start;
            let mut n = 0;
            for &(offset, len) in rest {
                let stop = offset.saturating_add(u64::from(len));
                if n > 0 && (stop - start > LIVE_READ || offset.saturating_sub(end) >= LIVE_GAP) {
                    break;
                }
                if offset < crate::log::FILE_HEADER_LEN {
                    return Err(damage(offset, "the index points into the file header".into()));
                }
                if offset < end {
                    return Err(damage(offset, "records the index points at overlap".into()));
                }
                end = stop;
                n += 1;
            }
            if end > size {
                return Err(past_end(rest[n - 1].0));
            }
            buf.resize((end - start) as usize, 0);
            self.file.read_exact_at(&mut buf, start)?;
            for &(offset, len) in &rest[..n] {
                let at = (offset - start) as usize;
                let rec = live_record(&buf[at..at + len as usize], false).map_err(|why| damage(offset, why))?;
                f(offset, rec)?;
            }
            rest = &rest[n..];
        }
        Ok(())
    }
}

/// The put record that is exactly `buf` (its checksum checked unless
/// `checked_before`); the reason if it is not one.
fn live_record(buf: &[u8], checked_before: bool) -> std::result::Result<codec::Record<'_>, String> {
    let decoded = if checked_before { codec::decode_checked_before(buf) } else { codec::decode(buf) };
    match decoded {
        Ok((rec, n)) if n == buf.len() && rec.kind == Kind::Put => Ok(rec),
        Ok(_) => Err("record is not the one the index points at".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The value of the put record that is exactly `buf`, if it is `key`'s;
/// the reason if `buf` is not one whole put record.
pub(crate) fn value_of(buf: &[u8], key: &[u8]) -> std::result::Result<Option<Vec<u8>>, String> {
    live_record(buf, false).map(|rec| (rec.key == key).then(|| rec.value.to_vec()))
}

/// Like [`value_of`], for a record whose checksum [`check_records`] checked.
fn value_of_checked(buf: &[u8], key: &[u8]) -> std::result::Result<Option<Vec<u8>>, String> {
    live_record(buf, true).map(|rec| (rec.key == key).then(|| rec.value.to_vec()))
}

/// Checks every record of a sealed segment's bytes (after its file
/// header), through to the end; the offset of the first that fails.
fn check_records(bytes: &[u8]) -> std::result::Result<(), usize> {
    let mut at = crate::log::FILE_HEADER_LEN as usize;
    if bytes.len() < at {
        return Err(0);
    }
    while at < bytes.len() {
        match codec::decode(&bytes[at..]) {
            Ok((_, n)) => at += n,
            Err(_) => return Err(at),
        }
    }
    Ok(())
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

    /// Records inside one block and across two are both served from the
    /// cache once read: after their bytes on disk are overwritten, reads
    /// through the warm cache still return them, and reads through a cold
    /// one find the damage.
    #[test]
    fn records_within_and_across_blocks_are_served_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let id = active_id(1);
        let put = |key: &[u8], value: &[u8]| {
            let mut out = Vec::new();
            codec::Record { kind: Kind::Put, seq: 1, expires_at: 0, key, value }.encode_into(&mut out);
            out
        };
        let (inside, across) = (put(b"inside", &[1; 300]), put(b"across", &[2; 300]));
        let mut file = vec![0u8; 100];
        let inside_at = file.len() as u64;
        file.extend_from_slice(&inside);
        file.resize(CACHE_BLOCK as usize - 150, 0);
        let across_at = file.len() as u64;
        file.extend_from_slice(&across);
        file.resize(2 * CACHE_BLOCK as usize + 10, 0);
        std::fs::write(dir.path().join(data_name(id)), &file).unwrap();
        let seg = Segment::open(dir.path(), id).unwrap();
        seg.seal();
        let records = [(&b"inside"[..], inside_at, inside.len(), 1u8), (&b"across"[..], across_at, across.len(), 2)];
        let (warm, cold) = (SegmentCache::new(1 << 20), SegmentCache::new(1 << 20));
        for (key, at, len, fill) in records {
            assert_eq!(seg.read_value(key, at, len as u32, &warm).unwrap(), vec![fill; 300]);
        }
        assert!(warm.get((id, 0)).is_some() && warm.get((id, 1)).is_some());
        let mut damaged = file.clone();
        for (_, at, len, _) in records {
            damaged[at as usize..at as usize + len].fill(0xAB);
        }
        std::fs::write(dir.path().join(data_name(id)), &damaged).unwrap();
        let seg = Segment::open(dir.path(), id).unwrap();
        seg.seal();
        for (key, at, len, fill) in records {
            assert_eq!(seg.read_value(key, at, len as u32, &warm).unwrap(), vec![fill; 300], "{key:?}");
            assert!(seg.read_value(key, at, len as u32, &cold).is_err(), "{key:?} read from a cold cache");
        }
    }

    /// Only a sealed segment is read whole, and only within the limit; it
    /// is then served from memory (its file can change under it), every
    /// record still checked on read, and its reservation is given back
    /// when it is dropped.
    #[test]
    fn resident_segments_are_sealed_within_the_limit_and_checked_when_read_in() {
        let dir = tempfile::tempdir().unwrap();
        let id = active_id(1);
        let mut file = vec![0u8; crate::log::FILE_HEADER_LEN as usize];
        let mut records = Vec::new();
        for i in 0..50u8 {
            let at = file.len();
            codec::Record { kind: Kind::Put, seq: 1, expires_at: 0, key: &[b'k', i], value: &[i; 200] }
                .encode_into(&mut file);
            records.push((i, at as u64, (file.len() - at) as u32));
        }
        std::fs::write(dir.path().join(data_name(id)), &file).unwrap();
        let cache = Arc::new(SegmentCache::new(1 << 20));
        let spare = Arc::new(Spare::new(1 << 20));
        let seg = Segment::open(dir.path(), id).unwrap();
        assert!(!seg.make_resident(&cache, &spare, 1 << 20).unwrap(), "the active segment was made resident");
        seg.seal();
        assert!(!seg.make_resident(&cache, &spare, file.len() - 1).unwrap(), "resident past the limit");
        assert_eq!(cache.reserved(), 0);
        assert!(seg.make_resident(&cache, &spare, 1 << 20).unwrap());
        assert_eq!((seg.resident_bytes(), cache.reserved()), (file.len(), file.len()));
        std::fs::write(dir.path().join(data_name(id)), vec![0u8; file.len()]).unwrap();
        for &(i, at, len) in &records {
            assert_eq!(seg.read_value(&[b'k', i], at, len, &cache).unwrap(), vec![i; 200]);
        }
        drop(seg);
        assert_eq!(cache.reserved(), 0, "a dropped segment kept its reservation");

        let (_, at, len) = records[30];
        file[at as usize + 40] ^= 1;
        std::fs::write(dir.path().join(data_name(id)), &file).unwrap();
        // A damaged record anywhere keeps the segment out of memory (its
        // gets read blocks and check their records), and is still found.
        let seg = Segment::open(dir.path(), id).unwrap();
        seg.seal();
        assert!(!seg.make_resident(&cache, &spare, 1 << 20).unwrap(), "a damaged segment was made resident");
        assert_eq!((seg.resident_bytes(), cache.reserved()), (0, 0));
        assert!(seg.read_value(&[b'k', 30], at, len, &cache).is_err(), "a damaged record was served");
        let (_, at, len) = records[29];
        assert_eq!(seg.read_value(&[b'k', 29], at, len, &cache).unwrap(), vec![29; 200]);
    }

    /// A merge's read of the live records: only those asked for come back,
    /// in order, from the file (in runs that skip dead gaps and stop at
    /// LIVE_READ) or from memory; damage between them is not read, damage
    /// in one of them is an error naming its offset.
    #[test]
    fn the_live_records_are_read_and_checked_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let id = active_id(1);
        let mut file = crate::log::file_header(crate::log::FileKind::Data).to_vec();
        let mut records = Vec::new();
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        for i in 0..400u32 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // Mostly small values, some long enough to make gaps past
            // LIVE_GAP and runs past LIVE_READ.
            let len = if rng.is_multiple_of(10) {
                70_000 + (rng >> 40) as usize % 200_000
            } else {
                (rng >> 32) as usize % 300
            };
            let at = file.len();
            let key = i.to_le_bytes();
            codec::Record { kind: Kind::Put, seq: u64::from(i), expires_at: 0, key: &key, value: &vec![i as u8; len] }
                .encode_into(&mut file);
            records.push((at as u64, (file.len() - at) as u32, i, len, !rng.is_multiple_of(3)));
        }
        let live: Vec<(u64, u32)> = records.iter().filter(|r| r.4).map(|r| (r.0, r.1)).collect();
        let expect: Vec<(u64, u32, usize)> = records.iter().filter(|r| r.4).map(|r| (r.0, r.2, r.3)).collect();
        // Damage every dead record: none of them is read.
        for r in records.iter().filter(|r| !r.4) {
            file[r.0 as usize + 9] ^= 0x40;
        }
        let path = dir.path().join(data_name(id));
        std::fs::write(&path, &file).unwrap();
        let read_all = |seg: &Segment, locs: &[(u64, u32)]| {
            let mut got = Vec::new();
            seg.for_each_record_at(locs, |offset, rec| {
                let i = u32::from_le_bytes(rec.key.try_into().unwrap());
                assert!(rec.value.iter().all(|&b| b == i as u8));
                got.push((offset, i, rec.value.len()));
                Ok(())
            })
            .map(|()| got)
        };
        let seg = Segment::open(dir.path(), id).unwrap();
        seg.seal();
        assert_eq!(read_all(&seg, &live).unwrap(), expect);
        assert_eq!(read_all(&seg, &[]).unwrap(), vec![]);
        // A damaged live record is an error at its offset, from the file.
        let victim = live[live.len() / 2];
        file[victim.0 as usize + 12] ^= 1;
        std::fs::write(&path, &file).unwrap();
        let err = read_all(&seg, &live).unwrap_err().to_string();
        assert!(err.contains(&victim.0.to_string()), "{err}");
        // A length that does not match the record, and one past the end.
        let (at, len) = live[0];
        assert!(read_all(&seg, &[(at, len - 1)]).is_err());
        assert!(read_all(&seg, &[(file.len() as u64 - 4, 100)]).is_err());
        file[victim.0 as usize + 12] ^= 1;
        // With the dead records mended too, the segment is held in memory
        // and its live records are read from there.
        for r in records.iter().filter(|r| !r.4) {
            file[r.0 as usize + 9] ^= 0x40;
        }
        std::fs::write(&path, &file).unwrap();
        let seg = Segment::open(dir.path(), id).unwrap();
        seg.seal();
        let cache = Arc::new(SegmentCache::new(64 << 20));
        let spare = Arc::new(Spare::new(0));
        assert!(seg.make_resident(&cache, &spare, 64 << 20).unwrap());
        std::fs::write(&path, vec![0u8; file.len()]).unwrap();
        assert_eq!(read_all(&seg, &live).unwrap(), expect, "the resident read went to the file");
    }
}
