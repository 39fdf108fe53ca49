//! The keydir: every live key and where its newest value lies.

use std::collections::{BTreeMap, HashMap};

use super::segment::SegId;

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

/// The in-memory hash index, plus the bytes each segment still holds live.
#[derive(Default)]
pub(crate) struct KeyDir {
    pub(crate) map: HashMap<Box<[u8]>, Loc, foldhash::fast::RandomState>,
    /// Live record bytes per segment; a segment's dead bytes are its size
    /// minus this.
    pub(crate) live: BTreeMap<SegId, u64>,
}

impl KeyDir {
    pub(crate) fn with_capacity(n: usize) -> Self {
        KeyDir {
            map: HashMap::with_capacity_and_hasher(n, Default::default()),
            live: BTreeMap::new(),
        }
    }

    fn sub_live(&mut self, loc: &Loc) {
        if let Some(l) = self.live.get_mut(&loc.seg) {
            *l = l.saturating_sub(loc.len as u64);
        }
    }

    /// Points `key` at `loc` (a newer write).
    pub(crate) fn put(&mut self, key: &[u8], loc: Loc) {
        *self.live.entry(loc.seg).or_default() += loc.len as u64;
        let old = match self.map.get_mut(key) {
            Some(slot) => Some(std::mem::replace(slot, loc)),
            None => self.map.insert(key.into(), loc),
        };
        if let Some(old) = old {
            self.sub_live(&old);
        }
    }

    /// Forgets `key` (a newer delete).
    pub(crate) fn remove(&mut self, key: &[u8]) {
        if let Some(old) = self.map.remove(key) {
            self.sub_live(&old);
        }
    }

    /// Moves `key` from `old` to `new` if it still points at `old` (merge).
    /// Returns false if a newer write got there first.
    pub(crate) fn relocate(&mut self, key: &[u8], old: &Loc, new: Loc) -> bool {
        match self.map.get_mut(key) {
            Some(slot) if slot == old => {
                *slot = new;
                self.sub_live(old);
                *self.live.entry(new.seg).or_default() += new.len as u64;
                true
            }
            _ => false,
        }
    }

    /// Forgets `key` if it still points at `old` (merge of an expired key).
    pub(crate) fn remove_if(&mut self, key: &[u8], old: &Loc) {
        if self.map.get(key) == Some(old) {
            self.remove(key);
        }
    }

    /// Applies a record found during recovery, where records may arrive out
    /// of write order (merge outputs): the higher sequence number wins.
    /// `deleted` remembers the newest tombstone of each key seen so far.
    /// Records of one batch share a sequence number and arrive in write
    /// order, so on equal numbers the later record wins.
    pub(crate) fn recover_put(&mut self, key: &[u8], loc: Loc, deleted: &HashMap<Box<[u8]>, u64>) {
        if !deleted.is_empty() && deleted.get(key).is_some_and(|&s| s > loc.seq) {
            return;
        }
        match self.map.get_mut(key) {
            Some(slot) if slot.seq > loc.seq => {}
            Some(slot) => *slot = loc,
            None => {
                self.map.insert(key.into(), loc);
            }
        }
    }

    /// Applies a tombstone found during recovery.
    pub(crate) fn recover_delete(
        &mut self,
        key: &[u8],
        seq: u64,
        deleted: &mut HashMap<Box<[u8]>, u64>,
    ) {
        if self.map.get(key).is_some_and(|l| l.seq <= seq) {
            self.map.remove(key);
        }
        let s = deleted.entry(key.into()).or_insert(seq);
        *s = (*s).max(seq);
    }

    /// Recomputes the live bytes of every segment (after recovery).
    pub(crate) fn recount_live(&mut self) {
        let mut live = BTreeMap::new();
        for loc in self.map.values() {
            *live.entry(loc.seg).or_default() += loc.len as u64;
        }
        self.live = live;
    }
}
