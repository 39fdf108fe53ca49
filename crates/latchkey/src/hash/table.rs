//! The key table: the hint file of a merge. An open-addressing hash table
//! of every key a merge wrote, with its location, stored as one flat,
//! checksummed file that is loaded with a single read and used in place.
//! Startup therefore costs one sequential read per merge, not one hash
//! insert per key. Byte layout (all little-endian):
//!
//! ```text
//! 0    16           file header (magic, version, kind = 8, crc)
//! 16   u64 count    entries
//! 24   u64 bits     the slot array has 2^bits slots (load factor <= 2/3)
//! 32   u64 max_seq  the highest sequence number of any entry
//! 40   u64 nsegs    then nsegs x u64 segment ids
//! ..   u64 keybytes (below 2^32)
//! ..   2^bits x 32-byte slots, all zero if empty, else:
//!        u32 hash, u32 key offset, u32 key length, u32 record length,
//!        u64 (segment index + 1) << 48 | record offset, u64 expires_at
//! ..   keybytes of keys, back to back
//! ..   u32 CRC32C of everything after the file header
//! ```
//!
//! A slot holds the whole entry, so a lookup by hash costs one cache miss
//! (the slot) before the record's. At load, each slot also gets an 8-byte
//! *short entry* in memory (11 more bits of the hash, and the segment,
//! length and offset when they fit in 6, 14 and 32 bits and the entry has
//! no expiry): a lookup by hash reads those, a quarter of the slots'
//! bytes, so more of them are in the CPU's cache when it probes. (Tables of kind 4, from before
//! 2026-11-26, kept 8-byte slots pointing into an entry array: two
//! dependent misses. They are ignored with a warning, as a damaged table
//! is, and the next merge or clean close writes the new layout.)
//!
//! The segment ids are every segment the table *covers*: those holding an
//! entry, and (for a table written at a clean close) segments whose
//! records are all dead. Startup reads no covered segment. Entries carry no
//! sequence number: every segment the table does not cover was written
//! after the table, so any record found there is newer than the table's
//! entry for its key.

use std::path::Path;

use smallvec::SmallVec;

use super::keydir::Loc;
use super::segment::SegId;
use crate::error::{Error, Result};
use crate::fs::File;
use crate::log::{file_header, FileKind, FILE_HEADER_LEN};

const SLOT_LEN: usize = 32;
/// Record offsets are kept in the low 48 bits of a slot's location word.
const OFFSET_BITS: u32 = 48;
/// Segment indexes (plus one) are kept in its high 16 bits.
const MAX_SEGS: usize = (1 << (64 - OFFSET_BITS)) - 1;

/// A loaded (or empty) key table.
#[derive(Debug, Default)]
pub(crate) struct KeyTable {
    buf: Vec<u8>,
    count: usize,
    bits: u32,
    max_seq: u64,
    segs: Vec<SegId>,
    slots_at: usize,
    keys_at: usize,
    /// One word per slot, built at load: what a lookup by hash needs, a
    /// quarter of a slot's size, so more of it stays in the CPU's cache
    /// than of the slots (see [`KeyTable::get_by_hash`]). 0 if the slot
    /// is empty; else the hash's low 11 bits (the slot is chosen by its
    /// high ones), then either [`SLOW`] (look
    /// at the slot: an expiry, or a location that does not fit) or the
    /// segment's index + 1 (6 bits), the record's length (14 bits) and
    /// its offset (32 bits).
    short: Vec<u64>,
}

/// In a short entry: the slot must be read for this entry's location.
const SLOW: u64 = 1 << 52;
const SHORT_SEG_BITS: u32 = 6;
const SHORT_LEN_BITS: u32 = 14;
const SHORT_OFFSET_BITS: u32 = 32;

/// The short entry of a slot whose hash is `h` and whose location is
/// segment index `seg` (0-based), `offset`, `len`, `expires_at`.
fn short_entry(h: u32, seg: usize, offset: u64, len: u32, expires_at: u64) -> u64 {
    let top = u64::from(h & 0x7ff) << 53;
    let fits = expires_at == 0
        && seg + 1 < 1 << SHORT_SEG_BITS
        && u64::from(len) < 1 << SHORT_LEN_BITS
        && offset < 1 << SHORT_OFFSET_BITS;
    if !fits {
        return top | SLOW;
    }
    top | ((seg as u64 + 1) << (SHORT_LEN_BITS + SHORT_OFFSET_BITS)) | (u64::from(len) << SHORT_OFFSET_BITS) | offset
}

fn hash(key: &[u8]) -> u32 {
    crc32c::crc32c(key).wrapping_mul(0x9E37_79B1)
}

/// The slot a probe for hash `h` starts at in a table of 2^`bits` slots
/// (chosen by the hash's high bits), and the mask that wraps the probe.
fn home(h: u32, bits: u32) -> (usize, usize) {
    let mask = (1usize << bits) - 1;
    ((h >> (32 - bits.max(1))) as usize & mask, mask)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

impl KeyTable {
    /// [`KeyTable::encode_covering`] with no extra segments, no sequence
    /// number floor and a new buffer (for tests).
    #[cfg(test)]
    pub(crate) fn encode(entries: &[(Box<[u8]>, Loc)]) -> Option<Vec<u8>> {
        Self::encode_covering(entries, &[], 0, Vec::with_capacity)
    }

    /// Encodes a table of `entries` (keys must be distinct) as file bytes,
    /// or `None` if it cannot be written in this layout: keys adding up to
    /// 4 GiB or more, more than 65,535 segments, or a record offset at or
    /// past 2^48. (Then the merge writes no table and startup reads the
    /// data segments instead.) The table also covers the segments `covers`
    /// (which may hold no live entry) and records `max_seq` as the highest
    /// sequence number used (if above every entry's). The bytes go into the
    /// buffer `alloc` gives for the size it is asked for (emptied first);
    /// it is not called when the table cannot be written.
    pub(crate) fn encode_covering(
        entries: &[(Box<[u8]>, Loc)],
        covers: &[SegId],
        max_seq: u64,
        alloc: impl FnOnce(usize) -> Vec<u8>,
    ) -> Option<Vec<u8>> {
        let mut segs: Vec<SegId> = entries.iter().map(|(_, l)| l.seg).chain(covers.iter().copied()).collect();
        segs.sort_unstable();
        segs.dedup();
        // Load factor at most 2/3: probes end soon at an empty slot.
        let bits = (entries.len().max(1) * 3).div_ceil(2).next_power_of_two().trailing_zeros();
        let key_bytes: usize = entries.iter().map(|(k, _)| k.len()).sum();
        if key_bytes > u32::MAX as usize
            || entries.len() >= u32::MAX as usize
            || segs.len() > MAX_SEGS
            || entries.iter().any(|(_, l)| l.offset >> OFFSET_BITS != 0)
        {
            return None;
        }
        let max_seq = entries.iter().map(|(_, l)| l.seq).max().unwrap_or(0).max(max_seq);
        let mut out = alloc(64 + segs.len() * 8 + (SLOT_LEN << bits) + key_bytes);
        out.clear();
        out.extend_from_slice(&file_header(FileKind::KeyTable));
        for x in [entries.len() as u64, bits as u64, max_seq, segs.len() as u64] {
            out.extend_from_slice(&x.to_le_bytes());
        }
        for s in &segs {
            out.extend_from_slice(&s.to_le_bytes());
        }
        out.extend_from_slice(&(key_bytes as u64).to_le_bytes());
        let slots_at = out.len();
        out.resize(slots_at + (SLOT_LEN << bits), 0);
        let mut key_off = 0u32;
        for (key, loc) in entries {
            let h = hash(key);
            let (mut slot, mask) = home(h, bits);
            while u64_at(&out, slots_at + slot * SLOT_LEN + 16) != 0 {
                slot = (slot + 1) & mask;
            }
            let seg_idx = segs.binary_search(&loc.seg).unwrap_or(0) as u64;
            let at = slots_at + slot * SLOT_LEN;
            let e = &mut out[at..at + SLOT_LEN];
            e[0..4].copy_from_slice(&h.to_le_bytes());
            e[4..8].copy_from_slice(&key_off.to_le_bytes());
            e[8..12].copy_from_slice(&(key.len() as u32).to_le_bytes());
            e[12..16].copy_from_slice(&loc.len.to_le_bytes());
            e[16..24].copy_from_slice(&(((seg_idx + 1) << OFFSET_BITS) | loc.offset).to_le_bytes());
            e[24..32].copy_from_slice(&loc.expires_at.to_le_bytes());
            key_off += key.len() as u32;
        }
        for (key, _) in entries {
            out.extend_from_slice(key);
        }
        let crc = crc32c::crc32c(&out[FILE_HEADER_LEN as usize..]);
        out.extend_from_slice(&crc.to_le_bytes());
        Some(out)
    }

    /// Reads and verifies the table at `path`.
    pub(crate) fn load(path: &Path) -> Result<KeyTable> {
        let file = File::open_read(path)?;
        let len = file.len()? as usize;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, 0)?;
        Self::parse(path, buf)
    }

    /// Whether the file at `path` is a key table of the layout before this
    /// one (kind 4): not damage, just a table this version does not use.
    pub(crate) fn is_older_layout(path: &Path) -> bool {
        let mut h = [0u8; FILE_HEADER_LEN as usize];
        File::open_read(path).and_then(|f| f.read_exact_at(&mut h, 0)).is_ok()
            && h == file_header(FileKind::OldKeyTable)
    }

    /// Verifies encoded table bytes (as [`KeyTable::encode_covering`] made them) that
    /// belong to the file at `path`.
    pub(crate) fn from_bytes(path: &Path, buf: Vec<u8>) -> Result<KeyTable> {
        Self::parse(path, buf)
    }

    /// Bytes of the encoded table.
    pub(crate) fn byte_len(&self) -> usize {
        self.buf.len()
    }

    /// The encoded table's buffer, for reuse once the table is replaced.
    pub(crate) fn into_buf(self) -> Vec<u8> {
        self.buf
    }

    fn parse(path: &Path, buf: Vec<u8>) -> Result<KeyTable> {
        let bad = |at: usize, why: &str| Error::corruption(path, at as u64, why.to_string());
        let h = FILE_HEADER_LEN as usize;
        if buf.len() >= h && buf[..h] == file_header(FileKind::OldKeyTable) {
            return Err(bad(0, "key table of an older layout (kind 4), not used by this version"));
        }
        if buf.len() < h + 48 || buf[..h] != file_header(FileKind::KeyTable) {
            return Err(bad(0, "bad key table header"));
        }
        let body_end = buf.len() - 4;
        if crc32c::crc32c(&buf[h..body_end]) != u32_at(&buf, body_end) {
            return Err(bad(h, "key table checksum mismatch"));
        }
        let count = u64_at(&buf, h) as usize;
        let bits = u64_at(&buf, h + 8);
        let max_seq = u64_at(&buf, h + 16);
        let nsegs = u64_at(&buf, h + 24) as usize;
        // At most 2/3 of the slots are used, so every probe ends at an empty one.
        if bits > 31 || count.saturating_mul(3) > (1usize << bits) * 2 || nsegs > MAX_SEGS {
            return Err(bad(h, "impossible key table sizes"));
        }
        let segs_at = h + 32;
        let keys_len_at = nsegs.checked_mul(8).and_then(|n| n.checked_add(segs_at));
        let Some(keys_len_at) = keys_len_at.filter(|&at| at.checked_add(8).is_some_and(|end| end <= body_end)) else {
            return Err(bad(h, "key table is cut short"));
        };
        let segs = (0..nsegs).map(|i| u64_at(&buf, segs_at + i * 8)).collect();
        let key_bytes = u64_at(&buf, keys_len_at) as usize;
        let slots_at = keys_len_at + 8;
        let keys_at = slots_at + (SLOT_LEN << bits);
        if keys_at.checked_add(key_bytes) != Some(body_end) {
            return Err(bad(h, "key table sizes do not add up"));
        }
        let mut t = KeyTable { count, bits: bits as u32, max_seq, segs, slots_at, keys_at, buf, short: Vec::new() };
        t.validate_slots(path)?;
        t.short = t.buf[t.slots_at..t.keys_at]
            .chunks_exact(SLOT_LEN)
            .map(|slot| {
                let word = u64_at(slot, 16);
                if word == 0 {
                    return 0;
                }
                // Validated above: the segment index is 1 or more.
                let seg = (word >> OFFSET_BITS) as usize - 1;
                short_entry(u32_at(slot, 0), seg, word & ((1 << OFFSET_BITS) - 1), u32_at(slot, 12), u64_at(slot, 24))
            })
            .collect();
        Ok(t)
    }

    /// Every entry's key and segment must lie inside the table, so that
    /// later lookups can index without checks failing; and the table holds
    /// as many entries as it says.
    fn validate_slots(&self, path: &Path) -> Result<()> {
        let key_bytes = self.buf.len() - 4 - self.keys_at;
        let mut used = 0;
        for s in 0..1usize << self.bits {
            let at = self.slots_at + s * SLOT_LEN;
            let word = u64_at(&self.buf, at + 16);
            if word == 0 {
                continue;
            }
            used += 1;
            let (off, len) = (u32_at(&self.buf, at + 4) as usize, u32_at(&self.buf, at + 8) as usize);
            let seg = (word >> OFFSET_BITS) as usize;
            if off.checked_add(len).is_none_or(|end| end > key_bytes) || seg == 0 || seg > self.segs.len() {
                return Err(Error::corruption(path, at as u64, "key table entry out of range"));
            }
        }
        if used != self.count {
            return Err(Error::corruption(path, self.slots_at as u64, "key table slots do not match its count"));
        }
        Ok(())
    }

    /// The number of keys.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// The data segments the table points into.
    pub(crate) fn segments(&self) -> &[SegId] {
        &self.segs
    }

    /// The location in slot `s` (which must be in use).
    fn loc(&self, s: usize) -> Loc {
        let (b, at) = (&self.buf, self.slots_at + s * SLOT_LEN);
        let word = u64_at(b, at + 16);
        Loc {
            seg: self.segs[(word >> OFFSET_BITS) as usize - 1],
            len: u32_at(b, at + 12),
            offset: word & ((1 << OFFSET_BITS) - 1),
            expires_at: u64_at(b, at + 24),
            seq: 0,
        }
    }

    /// The key in slot `s` (which must be in use).
    fn key(&self, s: usize) -> &[u8] {
        let (b, at) = (&self.buf, self.slots_at + s * SLOT_LEN);
        let off = self.keys_at + u32_at(b, at + 4) as usize;
        &b[off..off + u32_at(b, at + 8) as usize]
    }

    /// Loads the home slot of each of `keys`, then the stored key that
    /// slot names, so that the cache misses of the [`KeyTable::get`]s that
    /// follow overlap instead of following one another (each `get` waits
    /// for its slot, then for the key bytes). A hint: nothing changes.
    pub(crate) fn touch<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) {
        if self.count == 0 {
            return;
        }
        let mut acc = 0u32;
        let homes: SmallVec<[usize; 32]> =
            keys.into_iter().map(|k| self.slots_at + home(hash(k), self.bits).0 * SLOT_LEN).collect();
        for &at in &homes {
            acc ^= u32_at(&self.buf, at + 4);
        }
        for &at in &homes {
            let off = self.keys_at + u32_at(&self.buf, at + 4) as usize;
            acc ^= u32::from(self.buf.get(off).copied().unwrap_or(0));
        }
        std::hint::black_box(acc);
    }

    /// The highest sequence number of any entry.
    pub(crate) fn max_seq(&self) -> u64 {
        self.max_seq
    }

    /// The slots that hold `key`'s 32-bit hash, in probe order.
    fn probe<'a>(&'a self, key: &[u8]) -> impl Iterator<Item = usize> + 'a {
        let h = hash(key);
        let (mut slot, mask) = home(h, self.bits);
        let mut done = self.count == 0;
        std::iter::from_fn(move || {
            while !done {
                let (s, at) = (slot, self.slots_at + slot * SLOT_LEN);
                slot = (slot + 1) & mask;
                if u64_at(&self.buf, at + 16) == 0 {
                    done = true;
                } else if u32_at(&self.buf, at) == h {
                    return Some(s);
                }
            }
            None
        })
    }

    /// Where `key` lies, if the table has it.
    pub(crate) fn get(&self, key: &[u8]) -> Option<Loc> {
        self.probe(key).find(|&s| self.key(s) == key).map(|s| self.loc(s))
    }

    /// Where `key` probably lies: the first entry whose 32-bit hash is the
    /// key's, its key not compared (no miss on the key bytes). The caller
    /// checks the key in the record and falls back to [`KeyTable::get`].
    pub(crate) fn get_by_hash(&self, key: &[u8]) -> Option<Loc> {
        if self.count == 0 {
            return None;
        }
        // The short entries first: the first whose 11 hash bits match is
        // taken (a slot before it with another key and the same 11 bits
        // makes the caller's check of the key fail, and it falls back to
        // `get`: about 1 lookup in 4,000 at the table's load).
        let h = hash(key);
        let (mut slot, mask) = home(h, self.bits);
        loop {
            let e = self.short[slot];
            if e == 0 {
                return None;
            }
            if e >> 53 == u64::from(h & 0x7ff) {
                if e & SLOW != 0 {
                    if u32_at(&self.buf, self.slots_at + slot * SLOT_LEN) == h {
                        return Some(self.loc(slot));
                    }
                    slot = (slot + 1) & mask;
                    continue;
                }
                let seg = (e >> (SHORT_LEN_BITS + SHORT_OFFSET_BITS)) as usize & ((1 << SHORT_SEG_BITS) - 1);
                return Some(Loc {
                    seg: self.segs[seg - 1],
                    offset: e & ((1 << SHORT_OFFSET_BITS) - 1),
                    len: (e >> SHORT_OFFSET_BITS) as u32 & ((1 << SHORT_LEN_BITS) - 1),
                    seq: 0,
                    expires_at: 0,
                });
            }
            slot = (slot + 1) & mask;
        }
    }

    /// Record bytes per segment of every entry.
    pub(crate) fn live_bytes(&self) -> std::collections::BTreeMap<SegId, u64> {
        let mut live = std::collections::BTreeMap::new();
        for (_, loc) in self.iter() {
            *live.entry(loc.seg).or_default() += loc.len as u64;
        }
        live
    }

    /// Every key and its location, in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], Loc)> + '_ {
        self.iter_slots(0..self.slots())
    }

    /// The number of slots (0 for an empty table).
    pub(crate) fn slots(&self) -> usize {
        if self.count == 0 {
            0
        } else {
            1usize << self.bits
        }
    }

    /// The keys and locations in `slots` (a range within [`KeyTable::slots`]).
    pub(crate) fn iter_slots(&self, slots: std::ops::Range<usize>) -> impl Iterator<Item = (&[u8], Loc)> + '_ {
        slots.filter(|&s| u64_at(&self.buf, self.slots_at + s * SLOT_LEN + 16) != 0).map(|s| (self.key(s), self.loc(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(i: u64) -> Loc {
        Loc { seg: 7 + i % 3, offset: i * 10, len: 30, seq: i, expires_at: 0 }
    }

    #[test]
    fn every_key_is_found_and_absent_keys_are_not() {
        let entries: Vec<(Box<[u8]>, Loc)> =
            (0..1000u64).map(|i| (format!("k{i}").into_bytes().into_boxed_slice(), loc(i))).collect();
        let bytes = KeyTable::encode(&entries).unwrap();
        let t = KeyTable::parse(Path::new("t"), bytes).unwrap();
        assert_eq!(t.len(), 1000);
        for chunk in entries.chunks(32) {
            // Touching keys first (present, absent, empty) changes no answer.
            let mut keys: Vec<&[u8]> = chunk.iter().map(|(k, _)| &k[..]).collect();
            keys.extend([&b"absent"[..], b""]);
            t.touch(keys);
            for (k, l) in chunk {
                assert_eq!(t.get(k), Some(Loc { seq: 0, ..*l }));
            }
        }
        assert_eq!(t.max_seq(), 999);
        assert_eq!(t.get(b"absent"), None);
        assert_eq!(t.iter().count(), 1000);
        assert_eq!(t.segments(), &[7, 8, 9]);
    }

    #[test]
    fn any_flipped_bit_is_damage() {
        let entries: Vec<(Box<[u8]>, Loc)> = (0..5u64).map(|i| (vec![i as u8; 3].into_boxed_slice(), loc(i))).collect();
        let bytes = KeyTable::encode(&entries).unwrap();
        for bit in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(KeyTable::parse(Path::new("t"), b).is_err(), "bit {bit}");
        }
    }

    /// Lookups by hash go through the short entries: an entry with an
    /// expiry, a long record, a far offset or a segment past the 63rd is
    /// read from its slot instead, and every key is found with the
    /// location `get` gives; a short entry whose 11 hash bits match
    /// another key's may answer for it, but only with a real entry.
    #[test]
    fn lookups_by_hash_agree_with_get_for_short_and_slow_entries() {
        let n = 5_000u64;
        let entries: Vec<(Box<[u8]>, Loc)> = (0..n)
            .map(|i| {
                let mut l = Loc { seg: 100 + i % 70, offset: i * 97, len: 40 + (i % 50) as u32, seq: 0, expires_at: 0 };
                match i % 11 {
                    0 => l.expires_at = 1_700_000_000_000 + i,
                    1 => l.len = 1 << 14,
                    2 => l.offset = (1 << 32) + i,
                    _ => {}
                }
                (format!("key-{i}").into_bytes().into_boxed_slice(), l)
            })
            .collect();
        let t = KeyTable::from_bytes(Path::new("t"), KeyTable::encode(&entries).unwrap()).unwrap();
        let slow = t.short.iter().filter(|&&e| e & SLOW != 0).count();
        assert!(slow > n as usize / 4 && slow < n as usize, "{slow} slow entries");
        let locs: Vec<Loc> = entries.iter().map(|(_, l)| Loc { seq: 0, ..*l }).collect();
        let mut other = 0;
        for (k, l) in &entries {
            let want = Loc { seq: 0, ..*l };
            assert_eq!(t.get(k), Some(want));
            match t.get_by_hash(k) {
                Some(found) if found == want => {}
                Some(found) => {
                    assert!(locs.contains(&found), "{found:?} is no entry's");
                    other += 1;
                }
                None => panic!("{:?} not found by hash", String::from_utf8_lossy(k)),
            }
        }
        assert!(other < 20, "{other} lookups answered by another key's entry");
        for i in 0..n {
            if let Some(found) = t.get_by_hash(format!("absent-{i}").as_bytes()) {
                assert!(locs.contains(&found), "{found:?} is no entry's");
            }
        }
    }

    #[test]
    fn an_empty_table_works() {
        let t = KeyTable::parse(Path::new("t"), KeyTable::encode(&[]).unwrap()).unwrap();
        t.touch([&b"x"[..]]);
        assert_eq!((t.len(), t.get(b"x")), (0, None));
    }
}
