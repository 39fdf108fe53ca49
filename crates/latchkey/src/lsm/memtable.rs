//! The memtable: a concurrent skiplist of the writes since the last flush,
//! ordered by key and then newest first, so a snapshot read takes the first
//! version at or below its sequence number.

use std::cmp::Reverse;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_skiplist::SkipMap;

use super::Value;

/// One memtable and the write-ahead log that holds the same writes.
pub(crate) struct Memtable {
    map: SkipMap<(Vec<u8>, Reverse<u64>), Value>,
    bytes: AtomicUsize,
    /// The id of this memtable's write-ahead log.
    pub(crate) wal: u64,
}

impl Memtable {
    pub(crate) fn new(wal: u64) -> Self {
        Memtable { map: SkipMap::new(), bytes: AtomicUsize::new(0), wal }
    }

    /// The same memtable, now belonging to log `wal`.
    pub(crate) fn with_wal(self, wal: u64) -> Self {
        Memtable { wal, ..self }
    }

    pub(crate) fn insert(&self, key: &[u8], seq: u64, value: Value) {
        self.bytes.fetch_add(key.len() + value.len() + 32, Ordering::Relaxed);
        self.map.insert((key.to_vec(), Reverse(seq)), value);
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
