//! The memtable: the writes since the last flush, kept three ways.
//!
//! - A hash index of each key's newest version answers point reads, and
//!   gives a flush the keys it writes (sorted then, once).
//! - Every version is appended to a pending list as it arrives: a write
//!   costs a push and an index update, no ordered insert.
//! - An ordered map (a B-tree of every version, by key and then newest
//!   first) is built from the pending list only when something needs order
//!   or an older version: a scan, or a point read whose snapshot is older
//!   than the key's newest version (a batch still being applied). A
//!   write-only memtable never builds it.
//!
//! Ordered inserts were most of the write path: a crossbeam skiplist insert
//! into a 100k-entry memtable cost 1.25-1.8 us (~35% of `fillrandom`), a
//! B-tree insert 0.4-0.5 us (~18% of `fillrandom`, ~25% of a server SET).
//! Readers hold the map's lock only to copy out a few entries at a time
//! (keys inline, values shared), never across a caller's code.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use smallvec::SmallVec;

use super::table::{prefix_past, Lent};
use super::Value;

const INDEX_SHARDS: usize = 16;

/// A key as the memtable holds it: inline up to 24 bytes, so a tree node
/// holds its keys (a comparison reads no second cache line) and a short
/// key costs no allocation.
type MemKey = SmallVec<[u8; 24]>;

/// A map key: the user key, then newest version first.
type VersionKey = (MemKey, Reverse<u64>);

type Ordered = BTreeMap<VersionKey, Value>;

/// The map bound before every version of the keys not below `lo`.
fn from_key(lo: Bound<&[u8]>) -> Bound<VersionKey> {
    match lo {
        Bound::Included(k) => Bound::Included((MemKey::from_slice(k), Reverse(u64::MAX))),
        Bound::Excluded(k) => Bound::Excluded((MemKey::from_slice(k), Reverse(0))),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// A key's newest version in a memtable, and the one before it: that one
/// answers a read whose snapshot is just older than the newest (a batch
/// being applied as it reads) without building the ordered map.
struct Newest {
    seq: u64,
    value: Value,
    /// Boxed: most keys have none, and the index's buckets stay small.
    prev: Option<Box<(u64, Value)>>,
}

type Index = HashMap<MemKey, Newest, foldhash::fast::FixedState>;

/// One memtable and the write-ahead log that holds the same writes.
pub(crate) struct Memtable {
    /// Versions not yet in `map`, in arrival order.
    pending: Mutex<Vec<(MemKey, u64, Value)>>,
    /// Every version moved out of `pending` so far, in order.
    map: RwLock<Ordered>,
    /// Key -> its newest version (sequence number and value).
    newest: Box<[RwLock<Index>]>,
    bytes: AtomicUsize,
    /// The id of this memtable's write-ahead log.
    pub(crate) wal: u64,
}

impl Memtable {
    pub(crate) fn new(wal: u64) -> Self {
        let newest = (0..INDEX_SHARDS).map(|_| RwLock::new(Index::default())).collect();
        Memtable {
            pending: Mutex::new(Vec::new()),
            map: RwLock::new(BTreeMap::new()),
            newest,
            bytes: AtomicUsize::new(0),
            wal,
        }
    }

    fn shard(&self, key: &[u8]) -> &RwLock<Index> {
        use std::hash::BuildHasher;
        let h = foldhash::fast::FixedState::with_seed(0x1a7c_4b3e).hash_one(key);
        &self.newest[(h >> 59) as usize % INDEX_SHARDS]
    }

    /// The same memtable, now belonging to log `wal`.
    pub(crate) fn with_wal(self, wal: u64) -> Self {
        Memtable { wal, ..self }
    }

    /// Adds a version: to the pending list first, then the index, so a
    /// reader that finds the index entry finds the version in order too.
    /// (The value's bytes are shared by both.)
    pub(crate) fn insert(&self, key: &[u8], seq: u64, value: Value) {
        self.bytes.fetch_add(key.len() + value.len() + 32, Ordering::Relaxed);
        self.pending.lock().push((MemKey::from_slice(key), seq, value.clone()));
        let mut index = self.shard(key).write();
        match index.get_mut(key) {
            // A later change of the same key in the same batch wins.
            Some(e) if seq == e.seq => e.value = value,
            Some(e) if seq > e.seq => {
                let old = std::mem::replace(&mut e.value, value);
                let old_seq = std::mem::replace(&mut e.seq, seq);
                match &mut e.prev {
                    Some(p) => **p = (old_seq, old),
                    None => e.prev = Some(Box::new((old_seq, old))),
                }
            }
            // An older version arriving late (a replay).
            Some(e) => {
                if e.prev.as_ref().is_none_or(|p| seq >= p.0) {
                    e.prev = Some(Box::new((seq, value)));
                }
            }
            None => {
                index.insert(MemKey::from_slice(key), Newest { seq, value, prev: None });
            }
        }
    }

    /// Approximate bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.newest.iter().all(|s| s.read().is_empty())
    }

    /// The ordered map, with every version inserted before this call in it
    /// (pending versions are moved in first).
    fn ordered(&self) -> RwLockReadGuard<'_, Ordered> {
        if self.pending.lock().is_empty() {
            return self.map.read();
        }
        let mut map = self.map.write();
        let pending = std::mem::take(&mut *self.pending.lock());
        for (k, seq, v) in pending {
            map.insert((k, Reverse(seq)), v);
        }
        RwLockWriteGuard::downgrade(map)
    }

    /// The newest version of `key` at or below `snapshot`.
    #[cfg(test)]
    pub(crate) fn get(&self, key: &[u8], snapshot: u64) -> Option<(u64, Value)> {
        self.get_with(key, snapshot, |seq, v| (seq, v.clone()))
    }

    /// Calls `f` with the newest version of `key` at or below `snapshot`,
    /// under the lock that holds it: a read copies the bytes it needs
    /// without touching the value's shared count (a cache miss and two
    /// atomic operations per read, in a profile of the server's GETs).
    pub(crate) fn get_with<R>(&self, key: &[u8], snapshot: u64, f: impl FnOnce(u64, &Value) -> R) -> Option<R> {
        match self.shard(key).read().get(key) {
            // No version of `key` at all.
            None => return None,
            Some(e) if e.seq <= snapshot => return Some(f(e.seq, &e.value)),
            Some(Newest { prev: Some(p), .. }) if p.0 <= snapshot => return Some(f(p.0, &p.1)),
            // Both are past the snapshot: an older one from the map.
            Some(_) => {}
        }
        let from = (MemKey::from_slice(key), Reverse(snapshot));
        let map = self.ordered();
        let ((k, seq), v) = map.range(from..).next()?;
        (k.as_slice() == key).then(|| f(seq.0, v))
    }

    /// Calls `f` with every key's newest version (for a flush), in key
    /// order, until it fails. Reads the index, sorted once, holding its
    /// read locks throughout: only for a memtable no longer written.
    pub(crate) fn for_each_newest<E>(&self, mut f: impl FnMut(&[u8], u64, &Value) -> Result<(), E>) -> Result<(), E> {
        let shards: Vec<_> = self.newest.iter().map(|s| s.read()).collect();
        // Sorted by each key's first 8 bytes, held inline, then the key:
        // most comparisons then read no key.
        let mut all: Vec<(u64, &MemKey, &Newest)> =
            shards.iter().flat_map(|s| s.iter()).map(|(k, e)| (prefix_past(k, 0), k, e)).collect();
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        for (_, k, e) in all {
            f(k, e.seq, &e.value)?;
        }
        Ok(())
    }

    /// Up to `limit` distinct keys after `from` (forward) or before it
    /// (backward), within `bounds`, each with its newest version at or below
    /// `snapshot`. Returns them in scan order and whether the limit was hit.
    pub(crate) fn collect(
        &self,
        bounds: &(Bound<Vec<u8>>, Bound<Vec<u8>>),
        snapshot: u64,
        forward: bool,
        limit: usize,
    ) -> (Vec<(Vec<u8>, u64, Value)>, bool) {
        let mut out: Vec<(Vec<u8>, u64, Value)> = Vec::new();
        let lo = from_key(bounds.0.as_ref().map(Vec::as_slice));
        let hi = match &bounds.1 {
            Bound::Included(k) => Bound::Included((MemKey::from_slice(k), Reverse(0))),
            Bound::Excluded(k) => Bound::Excluded((MemKey::from_slice(k), Reverse(u64::MAX))),
            Bound::Unbounded => Bound::Unbounded,
        };
        let map = self.ordered();
        let range = map.range((lo, hi));
        let mut push = |k: &[u8], seq: u64, v: &Value, forward: bool| -> bool {
            if seq > snapshot {
                return true;
            }
            if let Some(last) = out.last_mut() {
                if last.0 == k {
                    // Backward we meet older versions first: keep the newest.
                    if !forward && seq > last.1 {
                        *last = (k.to_vec(), seq, v.clone());
                    }
                    return true;
                }
            }
            if out.len() == limit {
                return false;
            }
            out.push((k.to_vec(), seq, v.clone()));
            true
        };
        let mut hit = false;
        if forward {
            for ((k, seq), v) in range {
                if !push(k, seq.0, v, true) {
                    hit = true;
                    break;
                }
            }
        } else {
            for ((k, seq), v) in range.rev() {
                if !push(k, seq.0, v, false) {
                    hit = true;
                    break;
                }
            }
        }
        (out, hit)
    }
}

/// Entries a cursor copies out per visit of the map: the first few, so a
/// short scan stays cheap, then more, up to `MAX_CHUNK`.
const FIRST_CHUNK: usize = 16;
const MAX_CHUNK: usize = 256;

/// A forward cursor over a memtable's keys, each at its newest version at
/// or below a snapshot. It copies a few entries at a time out of the map
/// (inline keys, shared values) and lends them from its buffer.
pub(crate) struct MemCursor<'a> {
    m: &'a Memtable,
    snapshot: u64,
    buf: VecDeque<(MemKey, u64, Value)>,
    /// Where the next copy starts; `Unbounded` before the first, `None`
    /// once the map is exhausted.
    from: Option<Bound<VersionKey>>,
    chunk: usize,
}

impl<'a> MemCursor<'a> {
    /// At the first key not below `lo` that has a version in `snapshot`.
    pub(crate) fn seek(m: &'a Memtable, lo: Bound<&[u8]>, snapshot: u64) -> Self {
        let mut c = MemCursor { m, snapshot, buf: VecDeque::new(), from: Some(from_key(lo)), chunk: FIRST_CHUNK };
        c.refill();
        c
    }

    /// Copies the next chunk of keys into the buffer (when it is empty).
    fn refill(&mut self) {
        let Some(from) = self.from.take() else { return };
        let map = self.m.ordered();
        for ((k, Reverse(seq)), v) in map.range((from, Bound::Unbounded)) {
            if *seq > self.snapshot || self.buf.back().is_some_and(|b| &b.0 == k) {
                continue;
            }
            if self.buf.len() == self.chunk {
                // Resume after every version of the last key taken.
                let last = self.buf.back().map(|b| b.0.clone()).unwrap_or_default();
                self.from = Some(Bound::Excluded((last, Reverse(0))));
                break;
            }
            self.buf.push_back((k.clone(), *seq, v.clone()));
        }
        self.chunk = (self.chunk * 2).min(MAX_CHUNK);
    }

    pub(crate) fn key(&self) -> Option<&[u8]> {
        self.buf.front().map(|e| e.0.as_slice())
    }

    /// The current key's version (call only when `key` is some).
    pub(crate) fn version(&self) -> Lent<'_> {
        let (_, seq, v) = self.buf.front().expect("a current entry");
        (*seq, v.lend())
    }

    /// To the next key.
    pub(crate) fn advance(&mut self) {
        self.buf.pop_front();
        if self.buf.is_empty() {
            self.refill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(v: &str) -> Value {
        Value::Put(v.as_bytes().into(), 0)
    }

    /// Point reads through the index agree with the ordered map at every
    /// snapshot: the newest version at or below it, or none.
    #[test]
    fn point_reads_see_the_newest_version_at_their_snapshot() {
        let m = Memtable::new(1);
        m.insert(b"k", 5, put("five"));
        m.insert(b"k", 7, put("seven"));
        m.insert(b"d", 6, put("six"));
        m.insert(b"d", 8, Value::Delete);
        assert_eq!(m.get(b"k", 4), None);
        assert_eq!(m.get(b"k", 6), Some((5, put("five"))));
        assert_eq!(m.get(b"k", 7), Some((7, put("seven"))));
        assert_eq!(m.get(b"k", u64::MAX), Some((7, put("seven"))));
        assert_eq!(m.get(b"d", 7), Some((6, put("six"))));
        assert_eq!(m.get(b"d", 8), Some((8, Value::Delete)));
        assert_eq!(m.get(b"absent", u64::MAX), None);
        // An older version arriving late (a replay) does not hide the newest.
        m.insert(b"k", 3, put("three"));
        assert_eq!(m.get(b"k", u64::MAX), Some((7, put("seven"))));
        assert_eq!(m.get(b"k", 4), Some((3, put("three"))));
        m.for_each_newest(|key, seq, v| {
            assert_eq!(m.get(key, u64::MAX), Some((seq, v.clone())));
            Ok::<_, ()>(())
        })
        .unwrap();
    }

    /// A read just older than a key's newest version takes the version
    /// before it from the index; only an older read builds the ordered
    /// map. Within a batch (one sequence number) the later change wins.
    #[test]
    fn a_read_just_older_than_the_newest_needs_no_ordered_map() {
        let m = Memtable::new(1);
        m.insert(b"k", 5, put("five"));
        m.insert(b"k", 7, put("seven"));
        assert_eq!(m.get(b"k", 6), Some((5, put("five"))));
        assert!(m.map.read().is_empty(), "the ordered map was built");
        assert_eq!(m.get(b"k", 4), None);
        assert!(!m.map.read().is_empty());
        m.insert(b"b", 9, put("first"));
        m.insert(b"b", 9, put("second"));
        m.insert(b"b", 11, Value::Delete);
        assert_eq!(m.get(b"b", 9), Some((9, put("second"))));
        assert_eq!(m.get(b"b", 10), Some((9, put("second"))));
        assert_eq!(m.get(b"b", 11), Some((11, Value::Delete)));
    }

    /// The lending cursor gives each key once, at its newest version in
    /// the snapshot, skipping keys with no version there; bounds hold.
    #[test]
    fn the_cursor_sees_each_key_once_at_its_snapshot() {
        let m = Memtable::new(1);
        m.insert(b"a", 3, put("a3"));
        m.insert(b"a", 9, put("a9"));
        m.insert(b"b", 8, put("b8"));
        m.insert(b"c", 2, put("c2"));
        m.insert(b"c", 4, Value::Delete);
        m.insert(b"c", 6, put("c6"));
        let walk = |lo: Bound<&[u8]>, snapshot: u64| {
            let mut c = MemCursor::seek(&m, lo, snapshot);
            let mut out = Vec::new();
            while let Some(k) = c.key() {
                let (seq, v) = c.version();
                out.push(format!(
                    "{}{}{}",
                    String::from_utf8_lossy(k),
                    seq,
                    v.map_or("-", |(v, _)| if v.len() == 2 { "p" } else { "?" })
                ));
                c.advance();
            }
            out.join(" ")
        };
        assert_eq!(walk(Bound::Unbounded, u64::MAX), "a9p b8p c6p");
        assert_eq!(walk(Bound::Unbounded, 5), "a3p c4-");
        assert_eq!(walk(Bound::Unbounded, 2), "c2p");
        assert_eq!(walk(Bound::Included(b"b"), 8), "b8p c6p");
        assert_eq!(walk(Bound::Excluded(b"b"), 8), "c6p");
        assert_eq!(walk(Bound::Excluded(b"a"), 3), "c2p");
        assert_eq!(walk(Bound::Included(b"d"), 9), "");
    }

    /// Across the cursor's refills (16, 32, 64 ... keys per visit) no key
    /// is lost or repeated, and each shows its newest version in the
    /// snapshot even when its versions straddle a refill.
    #[test]
    fn the_cursor_refills_without_losing_or_repeating_keys() {
        let m = Memtable::new(1);
        let mut seq = 0;
        for round in 0..3u64 {
            for i in 0..500u32 {
                seq += 1;
                m.insert(format!("key{i:04}").as_bytes(), seq, Value::Put(round.to_le_bytes().to_vec().into(), 0));
            }
        }
        for (snapshot, want_round) in [(u64::MAX, 2u64), (1000, 1), (500, 0)] {
            let mut c = MemCursor::seek(&m, Bound::Excluded(b"key0009"), snapshot);
            let mut n = 10;
            while let Some(k) = c.key() {
                assert_eq!(k, format!("key{n:04}").as_bytes());
                let (_, v) = c.version();
                assert_eq!(v.map(|(v, _)| v.to_vec()), Some(want_round.to_le_bytes().to_vec()));
                n += 1;
                c.advance();
            }
            assert_eq!(n, 500, "snapshot {snapshot}");
        }
    }
}
