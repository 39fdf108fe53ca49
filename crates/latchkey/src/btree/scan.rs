//! Range scans over the leaves. A scan reads in chunks: it descends to the
//! leaf where it stands (read latches, parent held until the child is),
//! copies out up to a chunk of entries — following the right-sibling links
//! forwards, holding each leaf until it holds the next — and lets go of
//! every latch before returning them. Going backwards it descends again
//! for each leaf, so latches are only ever taken left to right.
//!
//! A scan is not a snapshot: each chunk is read as of the moment it is
//! read, and a batch is never seen in part (chunks are read at the gate).

use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::page::{self, PageType};
use super::pager::ReadGuard;
use super::Inner;
use crate::db::KeyValue;
use crate::error::Result;

/// A forward scan reads whole leaves until it has at least this many entries.
const CHUNK: usize = 16;

type Key = Vec<u8>;

/// Where a forward chunk stopped: the last leaf read, its right sibling
/// then, and the writer's count of structure changes then. The next chunk
/// starts at that sibling only if no split, merge or redistribution has
/// happened since (else a key after the scan's position might have moved
/// into the leaf already read); otherwise it descends from the root.
#[derive(Debug, Clone, Copy)]
pub(super) struct Resume {
    leaf: u32,
    next: u32,
    smo: u64,
}

fn above_lo(k: &[u8], lo: &Bound<Vec<u8>>) -> bool {
    match lo {
        Bound::Included(b) => k >= b.as_slice(),
        Bound::Excluded(b) => k > b.as_slice(),
        Bound::Unbounded => true,
    }
}

fn below_hi(k: &[u8], hi: &Bound<Vec<u8>>) -> bool {
    match hi {
        Bound::Included(b) => k <= b.as_slice(),
        Bound::Excluded(b) => k < b.as_slice(),
        Bound::Unbounded => true,
    }
}

pub(super) enum Target<'a> {
    Key(&'a [u8]),
    First,
    Last,
}

impl Inner {
    /// Descends with read latches to the leaf for `target`, for a scan: a
    /// leaf not cached loads into the pool's ring (see the pager), as the
    /// leaves the scan then reaches by sibling links do. (Which level is
    /// the leaves' is read from the tree's height, a hint: a root split
    /// racing with this only changes where one page is cached.)
    fn leaf_for(&self, target: Target<'_>) -> Result<ReadGuard> {
        self.read_down_to(target, true).map(|(g, _)| g)
    }

    /// Like `leaf_for` for a point read (the leaf joins the pool), also
    /// counting the pages read on the way.
    pub(super) fn read_down(&self, target: Target<'_>) -> Result<(ReadGuard, u64)> {
        self.read_down_to(target, false)
    }

    fn read_down_to(&self, target: Target<'_>, leaf_in_ring: bool) -> Result<(ReadGuard, u64)> {
        let height = self.height.load(Ordering::Relaxed);
        let root = self.root.read();
        let mut g = self.pager.read(*root)?;
        drop(root);
        let mut touched = 1;
        loop {
            match page::page_type(&g) {
                Some(PageType::Leaf) => return Ok((g, touched)),
                Some(PageType::Internal) => {
                    touched += 1;
                    let child = match target {
                        Target::Key(k) => page::child_for(&g, k),
                        Target::First => page::child_at(&g, 0),
                        Target::Last => page::child_at(&g, page::nslots(&g)),
                    };
                    g = if leaf_in_ring && touched >= height {
                        self.pager.read_for_scan(child)?
                    } else {
                        self.pager.read(child)?
                    };
                }
                _ => return Err(self.not_a_node(page::page_id(&g))),
            }
        }
    }

    /// At least `CHUNK` live entries in (lo, hi) (whole leaves), ascending,
    /// appended to `out`; returns where it stopped: the last leaf read and
    /// its right sibling (`None` when the range is done). With `resume`
    /// (where the last chunk stopped) it latches that right sibling
    /// directly, and uses it if it is still a leaf whose left sibling is the
    /// leaf read last (else it descends from the root).
    fn chunk_forward(
        &self,
        lo: &Bound<Vec<u8>>,
        hi: &Bound<Vec<u8>>,
        now: u64,
        resume: Option<Resume>,
        emit: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<Option<Resume>> {
        let _gate = self.gate.read();
        let direct = match resume {
            Some(Resume { leaf, next, smo }) => {
                let g = self.pager.read_for_scan(next)?;
                let unchanged = self.smo.load(Ordering::Acquire) == smo;
                (unchanged && page::page_type(&g) == Some(PageType::Leaf) && page::aux(&g) == leaf).then_some(g)
            }
            None => None,
        };
        // A leaf reached by a right-sibling link holds only keys after `lo`.
        let mut after_lo = direct.is_some();
        let mut g = match (direct, lo) {
            (Some(g), _) => g,
            (None, Bound::Included(k) | Bound::Excluded(k)) => self.leaf_for(Target::Key(k))?,
            (None, Bound::Unbounded) => self.leaf_for(Target::First)?,
        };
        let mut got = 0;
        loop {
            let start = match lo {
                _ if after_lo => 0,
                Bound::Included(k) => page::search(&g, k).unwrap_or_else(|i| i),
                Bound::Excluded(k) => page::search(&g, k).map_or_else(|i| i, |i| i + 1),
                Bound::Unbounded => 0,
            };
            after_lo = true;
            for i in start..page::nslots(&g) {
                let key = page::key_at(&g, i);
                if !below_hi(key, hi) {
                    return Ok(None);
                }
                let (expires, val) = page::leaf_value_ref(&g, i);
                if expires == 0 || expires > now {
                    match val {
                        Ok(v) => emit(key, v),
                        Err((head, len)) => emit(key, &self.value(page::Val::Overflow { head, len })?),
                    }
                    got += 1;
                }
            }
            let next = page::next(&g);
            if next == 0 {
                return Ok(None);
            }
            if got >= CHUNK {
                let smo = self.smo.load(Ordering::Acquire);
                return Ok(Some(Resume { leaf: page::page_id(&g), next, smo }));
            }
            g = self.pager.read_for_scan(next)?;
        }
    }

    /// Calls `f` with each live entry in `range`, in order, until it
    /// returns false. Entries are copied a chunk at a time into one buffer
    /// that is reused, and no latch is held while `f` runs.
    pub(super) fn for_each(
        &self,
        range: (Bound<Vec<u8>>, Bound<Vec<u8>>),
        now: u64,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let (mut lo, hi) = range;
        // A chunk is about a leaf's entries: sized for one from the start.
        let mut arena: Vec<u8> = Vec::with_capacity(2 * self.limits.page_size);
        let mut ents: Vec<(usize, usize, usize)> = Vec::with_capacity(4 * CHUNK);
        let mut resume = None;
        loop {
            arena.clear();
            ents.clear();
            let at = self.chunk_forward(&lo, &hi, now, resume, &mut |k, v| {
                ents.push((arena.len(), k.len(), v.len()));
                arena.extend_from_slice(k);
                arena.extend_from_slice(v);
            })?;
            for &(at, klen, vlen) in &ents {
                if !f(&arena[at..at + klen], &arena[at + klen..at + klen + vlen]) {
                    return Ok(());
                }
            }
            match (at, ents.last()) {
                (Some(r), Some(&(at, klen, _))) => {
                    resume = Some(r);
                    set_excluded(&mut lo, &arena[at..at + klen]);
                }
                (Some(r), None) => resume = Some(r),
                (None, _) => return Ok(()),
            }
        }
    }

    /// Up to a leaf's worth of live entries in (lo, hi), descending; and
    /// whether the range may hold more before them. It moves left by the
    /// leaf's left-sibling link after letting go of the leaf, and checks the
    /// link still holds (else descends again).
    fn chunk_backward(&self, lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>, now: u64) -> Result<(Vec<KeyValue>, bool)> {
        let _gate = self.gate.read();
        let descend = || match hi {
            Bound::Included(k) | Bound::Excluded(k) => self.leaf_for(Target::Key(k)),
            Bound::Unbounded => self.leaf_for(Target::Last),
        };
        let mut g = descend()?;
        let mut out = Vec::new();
        let mut retries = 0;
        let mut smo = self.smo.load(Ordering::Acquire);
        loop {
            let end = match hi {
                Bound::Included(k) => page::search(&g, k).map_or_else(|i| i, |i| i + 1),
                Bound::Excluded(k) => page::search(&g, k).unwrap_or_else(|i| i),
                Bound::Unbounded => page::nslots(&g),
            };
            for i in (0..end).rev() {
                let key = page::key_at(&g, i);
                if !above_lo(key, lo) {
                    return Ok((out, false));
                }
                let (expires, val) = page::leaf_value(&g, i);
                if expires == 0 || expires > now {
                    out.push((key.to_vec(), self.value(val)?));
                }
            }
            let prev = page::aux(&g);
            if prev == 0 || !out.is_empty() {
                return Ok((out, prev != 0));
            }
            let id = page::page_id(&g);
            drop(g);
            let p = self.pager.read(prev)?;
            let now_smo = self.smo.load(Ordering::Acquire);
            if now_smo == smo && page::page_type(&p) == Some(PageType::Leaf) && page::next(&p) == id {
                g = p;
                continue;
            }
            smo = now_smo;
            drop(p);
            retries += 1;
            if retries > 1000 {
                return Err(page::damaged(
                    self.pager.path(),
                    id,
                    self.limits.page_size,
                    format!("page {id}: its left-sibling link {prev} does not link back"),
                ));
            }
            g = descend()?;
        }
    }
}

/// Keys expired at `now`, from `from` on, up to `limit` of them; and the
/// last key looked at if there is more to look at.
pub(super) fn expired_keys(
    inner: &Inner,
    from: Bound<Vec<u8>>,
    now: u64,
    limit: usize,
) -> Result<(Vec<Vec<u8>>, Option<Key>)> {
    let mut g = match &from {
        Bound::Included(k) | Bound::Excluded(k) => inner.leaf_for(Target::Key(k))?,
        Bound::Unbounded => inner.leaf_for(Target::First)?,
    };
    let mut out = Vec::new();
    loop {
        let mut last = None;
        for i in 0..page::nslots(&g) {
            let key = page::key_at(&g, i);
            if !above_lo(key, &from) {
                continue;
            }
            let (expires, _) = page::leaf_value(&g, i);
            if expires != 0 && expires <= now {
                out.push(key.to_vec());
            }
            last = Some(key);
        }
        let next = page::next(&g);
        if next == 0 {
            return Ok((out, None));
        }
        if out.len() >= limit {
            return Ok((out, last.map(<[u8]>::to_vec)));
        }
        g = inner.pager.read(next)?;
    }
}

/// Makes `b` exclude `k`, reusing its buffer (no allocation per entry).
fn set_excluded(b: &mut Bound<Vec<u8>>, k: &[u8]) {
    match b {
        Bound::Excluded(v) => {
            v.clear();
            v.extend_from_slice(k);
        }
        _ => *b = Bound::Excluded(k.to_vec()),
    }
}

/// The iterator behind `Db::scan` on the `btree` engine.
pub(super) struct ScanIter {
    inner: Arc<Inner>,
    lo: Bound<Vec<u8>>,
    hi: Bound<Vec<u8>>,
    now: u64,
    front: VecDeque<KeyValue>,
    back: VecDeque<KeyValue>,
    /// Where the last forward chunk stopped; `None` once the range is done.
    front_at: Option<Option<Resume>>,
    back_more: bool,
    failed: bool,
}

impl ScanIter {
    pub(super) fn new(inner: Arc<Inner>, range: (Bound<Vec<u8>>, Bound<Vec<u8>>), now: u64) -> ScanIter {
        ScanIter {
            inner,
            lo: range.0,
            hi: range.1,
            now,
            front: VecDeque::new(),
            back: VecDeque::new(),
            front_at: Some(None),
            back_more: true,
            failed: false,
        }
    }

    fn empty_range(&self) -> bool {
        match (&self.lo, &self.hi) {
            (Bound::Included(a), Bound::Included(b)) => a > b,
            (Bound::Included(a) | Bound::Excluded(a), Bound::Excluded(b))
            | (Bound::Excluded(a), Bound::Included(b)) => a >= b,
            _ => false,
        }
    }
}

impl Iterator for ScanIter {
    type Item = Result<KeyValue>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed || self.empty_range() {
                return None;
            }
            if let Some((k, v)) = self.front.pop_front() {
                if !below_hi(&k, &self.hi) {
                    self.front.clear();
                    self.front_at = None;
                    return None;
                }
                set_excluded(&mut self.lo, &k);
                return Some(Ok((k, v)));
            }
            let resume = self.front_at?;
            let front = &mut self.front;
            let mut emit = |k: &[u8], v: &[u8]| front.push_back((k.to_vec(), v.to_vec()));
            match self.inner.chunk_forward(&self.lo, &self.hi, self.now, resume, &mut emit) {
                Ok(at) => self.front_at = at.map(Some),
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl DoubleEndedIterator for ScanIter {
    fn next_back(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed || self.empty_range() {
                return None;
            }
            if let Some((k, v)) = self.back.pop_front() {
                if !above_lo(&k, &self.lo) {
                    self.back.clear();
                    self.back_more = false;
                    return None;
                }
                set_excluded(&mut self.hi, &k);
                return Some(Ok((k, v)));
            }
            if !self.back_more {
                return None;
            }
            match self.inner.chunk_backward(&self.lo, &self.hi, self.now) {
                Ok((items, more)) => {
                    self.back_more = more;
                    self.back.extend(items);
                }
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
