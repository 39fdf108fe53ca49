//! The memtable: a concurrent skiplist of the writes since the last flush,
//! ordered by key and then newest first, so a snapshot read takes the first
//! version at or below its sequence number. Beside it, a hash index of each
//! key's newest version answers point reads without a skiplist search (a
//! search over a memtable of a million versions was ~45% of a server GET);
//! a read falls back to the skiplist only when the newest version is newer
//! than its snapshot (a batch still being applied).

use std::cmp::Reverse;
use std::collections::HashMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_skiplist::map::Entry;
use crossbeam_skiplist::SkipMap;
use parking_lot::RwLock;

use super::table::Lent;
use super::Value;

const INDEX_SHARDS: usize = 16;

/// A skiplist key: the user key, then newest version first.
type VersionKey = (Vec<u8>, Reverse<u64>);

type Index = HashMap<Vec<u8>, (u64, Value), foldhash::fast::FixedState>;

/// One memtable and the write-ahead log that holds the same writes.
pub(crate) struct Memtable {
    map: SkipMap<VersionKey, Value>,
    /// Key -> its newest version in `map` (sequence number and value).
    newest: Box<[RwLock<Index>]>,
    bytes: AtomicUsize,
    /// The id of this memtable's write-ahead log.
    pub(crate) wal: u64,
}

impl Memtable {
    pub(crate) fn new(wal: u64) -> Self {
        let newest = (0..INDEX_SHARDS).map(|_| RwLock::new(Index::default())).collect();
        Memtable { map: SkipMap::new(), newest, bytes: AtomicUsize::new(0), wal }
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

    /// Adds a version. The skiplist first, then the index, so a reader
    /// that finds the index entry finds the version in the skiplist too.
    /// (The index's copy of the value is not counted in `bytes`: a
    /// memtable may hold up to twice its counted size.)
    pub(crate) fn insert(&self, key: &[u8], seq: u64, value: Value) {
        self.bytes.fetch_add(key.len() + value.len() + 32, Ordering::Relaxed);
        self.map.insert((key.to_vec(), Reverse(seq)), value.clone());
        let mut index = self.shard(key).write();
        match index.get_mut(key) {
            Some(e) if e.0 > seq => {}
            Some(e) => *e = (seq, value),
            None => {
                index.insert(key.to_vec(), (seq, value));
            }
        }
    }

    /// Approximate bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The newest version of `key` at or below `snapshot`.
    pub(crate) fn get(&self, key: &[u8], snapshot: u64) -> Option<(u64, Value)> {
        match self.shard(key).read().get(key) {
            // No version of `key` at all.
            None => return None,
            Some((seq, value)) if *seq <= snapshot => return Some((*seq, value.clone())),
            // The newest is past the snapshot: an older one from the skiplist.
            Some(_) => {}
        }
        let from = (key.to_vec(), Reverse(snapshot));
        let e = self.map.range(from..).next()?;
        (e.key().0 == key).then(|| (e.key().1 .0, e.value().clone()))
    }

    /// Every key's newest version (for a flush), in key order.
    pub(crate) fn newest(&self) -> impl Iterator<Item = (Vec<u8>, u64, Value)> + '_ {
        let mut last: Option<Vec<u8>> = None;
        self.map.iter().filter_map(move |e| {
            let (k, Reverse(seq)) = e.key();
            if last.as_ref() == Some(k) {
                return None;
            }
            last = Some(k.clone());
            Some((k.clone(), *seq, e.value().clone()))
        })
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
        let lo = match &bounds.0 {
            Bound::Included(k) => Bound::Included((k.clone(), Reverse(u64::MAX))),
            Bound::Excluded(k) => Bound::Excluded((k.clone(), Reverse(0))),
            Bound::Unbounded => Bound::Unbounded,
        };
        let hi = match &bounds.1 {
            Bound::Included(k) => Bound::Included((k.clone(), Reverse(0))),
            Bound::Excluded(k) => Bound::Excluded((k.clone(), Reverse(u64::MAX))),
            Bound::Unbounded => Bound::Unbounded,
        };
        let range = self.map.range((lo, hi));
        let mut push = |k: &Vec<u8>, seq: u64, v: &Value, forward: bool| -> bool {
            if seq > snapshot {
                return true;
            }
            if let Some(last) = out.last_mut() {
                if &last.0 == k {
                    // Backward we meet older versions first: keep the newest.
                    if !forward && seq > last.1 {
                        *last = (k.clone(), seq, v.clone());
                    }
                    return true;
                }
            }
            if out.len() == limit {
                return false;
            }
            out.push((k.clone(), seq, v.clone()));
            true
        };
        let mut hit = false;
        if forward {
            for e in range {
                if !push(&e.key().0, e.key().1 .0, e.value(), true) {
                    hit = true;
                    break;
                }
            }
        } else {
            for e in range.rev() {
                if !push(&e.key().0, e.key().1 .0, e.value(), false) {
                    hit = true;
                    break;
                }
            }
        }
        (out, hit)
    }
}

/// A forward cursor over a memtable's keys, each at its newest version at
/// or below a snapshot, lending key and value from the skiplist.
pub(crate) struct MemCursor<'a> {
    cur: Option<Entry<'a, VersionKey, Value>>,
    snapshot: u64,
}

impl<'a> MemCursor<'a> {
    /// At the first key not below `lo` that has a version in `snapshot`.
    pub(crate) fn seek(m: &'a Memtable, lo: Bound<&[u8]>, snapshot: u64) -> Self {
        let cur = match lo {
            Bound::Included(k) => m.map.lower_bound(Bound::Included(&(k.to_vec(), Reverse(u64::MAX)))),
            Bound::Excluded(k) => m.map.lower_bound(Bound::Excluded(&(k.to_vec(), Reverse(0)))),
            Bound::Unbounded => m.map.front(),
        };
        let mut c = MemCursor { cur, snapshot };
        c.skip_unseen();
        c
    }

    /// Moves past versions newer than the snapshot.
    fn skip_unseen(&mut self) {
        while let Some(e) = &mut self.cur {
            if e.key().1 .0 <= self.snapshot {
                return;
            }
            if !e.move_next() {
                self.cur = None;
            }
        }
    }

    pub(crate) fn key(&self) -> Option<&[u8]> {
        self.cur.as_ref().map(|e| e.key().0.as_slice())
    }

    /// The current key's version (call only when `key` is some).
    pub(crate) fn version(&self) -> Lent<'_> {
        let e = self.cur.as_ref().expect("a current entry");
        match e.value() {
            Value::Put(v, exp) => (e.key().1 .0, Some((v.as_slice(), *exp))),
            Value::Delete => (e.key().1 .0, None),
        }
    }

    /// To the next key, past the current key's older versions.
    pub(crate) fn advance(&mut self) {
        let Some(e) = self.cur.take() else { return };
        let mut next = e.next();
        while let Some(n) = &next {
            if n.key().0 != e.key().0 {
                break;
            }
            let after = n.next();
            next = after;
        }
        self.cur = next;
        self.skip_unseen();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(v: &str) -> Value {
        Value::Put(v.as_bytes().to_vec(), 0)
    }

    /// Point reads through the index agree with the skiplist at every
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
        for (key, seq, v) in m.newest() {
            assert_eq!(m.get(&key, u64::MAX), Some((seq, v)));
        }
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
}
