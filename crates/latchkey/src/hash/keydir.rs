//! The keydir: every live key and where its newest value lies.
//!
//! It has two layers. The *base* is the key table written by the last
//! merge (loaded from disk in one read). The *overlay* is a hash map of
//! every write since: a put, or a tombstone that hides a key of the base.
//! Lookups try the overlay first.

use std::collections::{BTreeMap, HashMap};

use smallvec::SmallVec;

use super::segment::SegId;
use super::table::KeyTable;
use super::tail::Tail;

/// Where a key's newest record lies, and what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub(crate) seg: SegId,
    pub(crate) offset: u64,
    pub(crate) len: u32,
    pub(crate) seq: u64,
    pub(crate) expires_at: u64,
}

impl Loc {
    pub(crate) fn expired(&self, now_ms: u64) -> bool {
        self.expires_at != 0 && self.expires_at <= now_ms
    }
}

/// An overlay entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Live(Loc),
    /// Deleted by the write with this seq; hides the base's entry.
    Deleted(u64),
}

impl Slot {
    fn seq(&self) -> u64 {
        match self {
            Slot::Live(l) => l.seq,
            Slot::Deleted(s) => *s,
        }
    }
}

/// The in-memory index, plus the bytes each segment still holds live.
#[derive(Default)]
pub(crate) struct KeyDir {
    base: KeyTable,
    /// Keys inline up to 24 bytes: a probe compares the key in the bucket
    /// (no pointer to follow) and a short key costs no allocation.
    overlay: HashMap<SmallVec<[u8; 24]>, Slot, foldhash::fast::RandomState>,
    /// Live record bytes per segment; a segment's dead bytes are its size
    /// minus this.
    pub(crate) live: BTreeMap<SegId, u64>,
    /// The newest bytes of the active segment: kept here so a get reads
    /// them under the lock it looks the key up with, and the writer adds
    /// them under the lock it repoints the keys with.
    pub(crate) tail: Tail,
}

impl KeyDir {
    pub(crate) fn new(base: KeyTable) -> Self {
        KeyDir { base, overlay: HashMap::default(), live: BTreeMap::new(), tail: Tail::default() }
    }

    /// Where `key`'s value lies, if it has one.
    pub(crate) fn get(&self, key: &[u8]) -> Option<Loc> {
        self.layered(key, KeyTable::get)
    }

    /// The overlay's entry for `key`, or else what `base` finds in the base.
    fn layered(&self, key: &[u8], base: impl FnOnce(&KeyTable, &[u8]) -> Option<Loc>) -> Option<Loc> {
        // An empty overlay (a store just opened) is not hashed into.
        let slot = if self.overlay.is_empty() { None } else { self.overlay.get(key) };
        match slot {
            Some(Slot::Live(l)) => Some(*l),
            Some(Slot::Deleted(_)) => None,
            None => base(&self.base, key),
        }
    }

    /// Like [`KeyDir::get`], but the base is searched by hash alone (see
    /// [`KeyTable::get_by_hash`]): the key must be checked in the record.
    pub(crate) fn get_by_hash(&self, key: &[u8]) -> Option<Loc> {
        self.layered(key, KeyTable::get_by_hash)
    }

    /// The segments the base covers.
    pub(crate) fn base_segments(&self) -> &[SegId] {
        self.base.segments()
    }

    /// True if the base holds no key.
    pub(crate) fn base_is_empty(&self) -> bool {
        self.base.len() == 0
    }

    /// The number of keys (expired ones not yet reclaimed included).
    pub(crate) fn len(&self) -> usize {
        let mut n = self.base.len();
        for (k, slot) in &self.overlay {
            match (slot, self.base.get(k).is_some()) {
                (Slot::Live(_), false) => n += 1,
                (Slot::Deleted(_), true) => n -= 1,
                _ => {}
            }
        }
        n
    }

    /// Calls `f` with every live key and its location, in no order.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&[u8], &Loc)) {
        for (k, loc) in self.base.iter() {
            if !self.overlay.contains_key(k) {
                f(k, &loc);
            }
        }
        for (k, slot) in &self.overlay {
            if let Slot::Live(loc) = slot {
                f(k, loc);
            }
        }
    }

    /// Calls `f` with the location of every live overlay entry.
    pub(crate) fn overlay_locs(&self, mut f: impl FnMut(&Loc)) {
        for slot in self.overlay.values() {
            if let Slot::Live(loc) = slot {
                f(loc);
            }
        }
    }

    /// Entries in the overlay (for tests).
    #[cfg(test)]
    pub(crate) fn overlay_len(&self) -> usize {
        self.overlay.len()
    }

    /// The base's slot count, for [`KeyDir::base_locs`].
    pub(crate) fn base_slots(&self) -> usize {
        self.base.slots()
    }

    /// Calls `f` with the location of every base entry in `slots` that
    /// `wanted` accepts and the overlay does not hide (`wanted` is asked
    /// first, as looking into the overlay costs more). Slots past the
    /// base's end (a merge installed a smaller one) are skipped.
    pub(crate) fn base_locs(
        &self,
        slots: std::ops::Range<usize>,
        wanted: &impl Fn(&Loc) -> bool,
        f: &mut impl FnMut(&Loc),
    ) {
        let end = slots.end.min(self.base.slots());
        let overlay_empty = self.overlay.is_empty();
        for (k, loc) in self.base.iter_slots(slots.start.min(end)..end) {
            if wanted(&loc) && (overlay_empty || !self.overlay.contains_key(k)) {
                f(&loc);
            }
        }
    }

    fn sub_live(&mut self, loc: &Loc) {
        if let Some(l) = self.live.get_mut(&loc.seg) {
            *l = l.saturating_sub(loc.len as u64);
        }
    }

    fn set(&mut self, key: &[u8], slot: Slot) {
        let old = match self.overlay.get_mut(key) {
            Some(s) => match std::mem::replace(s, slot) {
                Slot::Live(l) => Some(l),
                Slot::Deleted(_) => None,
            },
            None => {
                self.overlay.insert(key.into(), slot);
                self.base.get(key)
            }
        };
        if let Some(old) = old {
            self.sub_live(&old);
        }
    }

    /// Points `key` at `loc` (a newer write).
    pub(crate) fn put(&mut self, key: &[u8], loc: Loc) {
        *self.live.entry(loc.seg).or_default() += loc.len as u64;
        self.set(key, Slot::Live(loc));
    }

    /// Points `key` at `loc` unless a write since the merge's cut already
    /// has an overlay entry for it (used when a merge wrote no key table).
    pub(crate) fn put_if_absent(&mut self, key: &[u8], loc: Loc) {
        if !self.overlay.contains_key(key) {
            self.put(key, loc);
        }
    }

    /// Forgets `key` (a newer delete with sequence number `seq`). The
    /// tombstone stays in the overlay even when the base lacks the key: a
    /// merge under way may be about to install a base that has it.
    pub(crate) fn remove(&mut self, key: &[u8], seq: u64) {
        self.set(key, Slot::Deleted(seq));
    }

    /// Applies a record found during recovery. Merge outputs are in the
    /// base and every scanned segment is newer, but a record only wins over
    /// one with a higher sequence number. Records of one batch share a
    /// sequence number and arrive in write order, so the later one wins.
    pub(crate) fn recover(&mut self, key: &[u8], slot: Slot) {
        let newest = match self.overlay.get(key) {
            Some(s) => s.seq(),
            None => self.base.get(key).map_or(0, |l| l.seq),
        };
        if slot.seq() >= newest {
            match self.overlay.get_mut(key) {
                Some(s) => *s = slot,
                None => {
                    self.overlay.insert(key.into(), slot);
                }
            }
        }
    }

    /// Ends recovery: drops tombstones that hide nothing and counts the
    /// live bytes of every segment.
    pub(crate) fn finish_recovery(&mut self) {
        let base = &self.base;
        self.overlay.retain(|k, s| matches!(s, Slot::Live(_)) || base.get(k).is_some());
        self.live = self.count_live(self.base.live_bytes());
    }

    /// Live bytes per segment: the base's (computed once, outside any
    /// lock, by [`KeyTable::live_bytes`]) adjusted for the overlay.
    /// The base is looked up for 32 overlay keys at a time, their slots
    /// and keys loaded first ([`KeyTable::touch`]): this runs under the
    /// keydir's write lock when a merge installs its table, and one key
    /// after the other, each lookup's two misses in a row, held it for up
    /// to 34 ms per merge with 100k keys in the overlay.
    fn count_live(&self, mut live: BTreeMap<SegId, u64>) -> BTreeMap<SegId, u64> {
        let mut batch: Vec<(&[u8], &Slot)> = Vec::with_capacity(32);
        let mut entries = self.overlay.iter().peekable();
        while entries.peek().is_some() {
            batch.clear();
            batch.extend(entries.by_ref().take(32).map(|(k, s)| (&k[..], s)));
            self.base.touch(batch.iter().map(|(k, _)| *k));
            for &(k, slot) in &batch {
                if let Some(hidden) = self.base.get(k) {
                    if let Some(l) = live.get_mut(&hidden.seg) {
                        *l = l.saturating_sub(hidden.len as u64);
                    }
                }
                if let Slot::Live(loc) = slot {
                    *live.entry(loc.seg).or_default() += loc.len as u64;
                }
            }
        }
        live
    }

    /// Installs the key table of a finished merge. Every write with a
    /// sequence number below `cut_seq` was in the merge's inputs, so its
    /// overlay entry is either in the new table or was dead; later writes
    /// stay in the overlay and hide the table's entries.
    /// Returns the table it replaces (to be freed outside the keydir's lock).
    pub(crate) fn install_base(&mut self, base: KeyTable, base_live: BTreeMap<SegId, u64>, cut_seq: u64) -> KeyTable {
        let old = std::mem::replace(&mut self.base, base);
        let base = &self.base;
        self.overlay.retain(|k, s| s.seq() >= cut_seq && (matches!(s, Slot::Live(_)) || base.get(k).is_some()));
        self.live = self.count_live(base_live);
        old
    }
}
