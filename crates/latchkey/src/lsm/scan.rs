//! Range scans over a snapshot: the memtables and the version a scan
//! started with, and the sequence number visible then.
//!
//! The scan works in chunks. Each source (a memtable or a table) gives up
//! to `CHUNK` distinct keys from the current position; the chunk is
//! complete up to the smallest "last key" among the sources that were cut
//! short, and only keys up to there are returned before the next chunk
//! starts after them. Backward is the mirror image. The two ends keep to
//! their own side of each other, so `next` and `next_back` can be mixed.

use std::collections::{BTreeMap, VecDeque};
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use super::memtable::MemCursor;
use super::table::{Lent, RunCursor, Table};
use super::version::Version;
use super::Value;
use crate::db::KeyValue;
use crate::error::Result;

/// Keys per source in the first chunk; each later chunk doubles, up to
/// `MAX_CHUNK`, so short scans stay cheap and long ones amortise.
const FIRST_CHUNK: usize = 16;
const MAX_CHUNK: usize = 1024;

pub(crate) struct Snapshot {
    pub(crate) mems: super::Memtables,
    pub(crate) version: Arc<Version>,
    pub(crate) seq: u64,
    pub(crate) now: u64,
    pub(crate) cache: Arc<super::table::BlockCache>,
}

pub(crate) struct ScanIter {
    snap: Snapshot,
    lo: Bound<Vec<u8>>,
    hi: Bound<Vec<u8>>,
    front: VecDeque<KeyValue>,
    back: VecDeque<KeyValue>,
    done: bool,
    chunk: usize,
}

type Collected = (Vec<(Vec<u8>, u64, Value)>, bool);

/// Up to `limit` distinct keys of `table` in `bounds`, in scan order.
fn collect_table(
    t: &Table,
    cache: &super::table::BlockCache,
    bounds: &(Bound<Vec<u8>>, Bound<Vec<u8>>),
    forward: bool,
    limit: usize,
) -> Result<Collected> {
    let mut out = Vec::new();
    let in_lo = |k: &[u8]| match &bounds.0 {
        Bound::Included(b) => k >= b.as_slice(),
        Bound::Excluded(b) => k > b.as_slice(),
        Bound::Unbounded => true,
    };
    let in_hi = |k: &[u8]| match &bounds.1 {
        Bound::Included(b) => k <= b.as_slice(),
        Bound::Excluded(b) => k < b.as_slice(),
        Bound::Unbounded => true,
    };
    let blocks = t.blocks();
    if blocks == 0 {
        return Ok((out, false));
    }
    if forward {
        let start = match &bounds.0 {
            Bound::Included(k) | Bound::Excluded(k) => t.block_for(k),
            Bound::Unbounded => 0,
        };
        for i in start..blocks {
            for (k, seq, v) in t.block(i, Some(cache))?.iter() {
                if !in_lo(k) {
                    continue;
                }
                if !in_hi(k) {
                    return Ok((out, false));
                }
                if out.len() == limit {
                    return Ok((out, true));
                }
                out.push((k.clone(), *seq, v.clone()));
            }
        }
    } else {
        let start = match &bounds.1 {
            Bound::Included(k) | Bound::Excluded(k) => t.block_for(k).min(blocks - 1),
            Bound::Unbounded => blocks - 1,
        };
        for i in (0..=start).rev() {
            for (k, seq, v) in t.block(i, Some(cache))?.iter().rev() {
                if !in_hi(k) {
                    continue;
                }
                if !in_lo(k) {
                    return Ok((out, false));
                }
                if out.len() == limit {
                    return Ok((out, true));
                }
                out.push((k.clone(), *seq, v.clone()));
            }
        }
    }
    Ok((out, false))
}

/// Up to `limit` distinct keys of a sorted level, reading its tables in
/// order and stopping as soon as the limit is reached.
fn collect_level(
    tables: &[Arc<Table>],
    cache: &super::table::BlockCache,
    bounds: &(Bound<Vec<u8>>, Bound<Vec<u8>>),
    forward: bool,
    limit: usize,
) -> Result<Collected> {
    let mut out = Vec::new();
    let candidates: Vec<&Arc<Table>> = tables.iter().filter(|t| overlaps(t, bounds)).collect();
    let ordered: Box<dyn Iterator<Item = &&Arc<Table>>> =
        if forward { Box::new(candidates.iter()) } else { Box::new(candidates.iter().rev()) };
    for t in ordered {
        let (mut got, hit) = collect_table(t, cache, bounds, forward, limit - out.len())?;
        out.append(&mut got);
        if hit || out.len() == limit {
            return Ok((out, true));
        }
    }
    Ok((out, false))
}

fn overlaps(t: &Table, bounds: &(Bound<Vec<u8>>, Bound<Vec<u8>>)) -> bool {
    let below = match &bounds.1 {
        Bound::Included(h) => t.smallest.as_slice() <= h.as_slice(),
        Bound::Excluded(h) => t.smallest.as_slice() < h.as_slice(),
        Bound::Unbounded => true,
    };
    let above = match &bounds.0 {
        Bound::Included(l) => t.largest.as_slice() >= l.as_slice(),
        Bound::Excluded(l) => t.largest.as_slice() > l.as_slice(),
        Bound::Unbounded => true,
    };
    below && above
}

fn empty_range(lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>) -> bool {
    match (lo, hi) {
        (Bound::Included(l), Bound::Included(h)) => l > h,
        (Bound::Included(l), Bound::Excluded(h))
        | (Bound::Excluded(l), Bound::Included(h))
        | (Bound::Excluded(l), Bound::Excluded(h)) => l >= h,
        _ => false,
    }
}

/// One sorted source of a lending scan.
enum Source<'a> {
    Mem(MemCursor<'a>),
    Run(RunCursor<'a>),
}

impl Source<'_> {
    fn key(&self) -> Option<&[u8]> {
        match self {
            Source::Mem(c) => c.key(),
            Source::Run(c) => c.key(),
        }
    }

    fn version(&self) -> Lent<'_> {
        match self {
            Source::Mem(c) => c.version(),
            Source::Run(c) => c.version(),
        }
    }

    fn advance(&mut self) -> Result<()> {
        match self {
            Source::Mem(c) => {
                c.advance();
                Ok(())
            }
            Source::Run(c) => c.advance(),
        }
    }
}

/// Calls `f` with each live entry of `range` in the snapshot, in key
/// order, until it returns false: a merge of one cursor per memtable,
/// per level-0 table and per deeper level, each lending its bytes (no
/// copies, no chunks). Of a key's versions the newest wins.
pub(crate) fn for_each(
    snap: &Snapshot,
    range: &(Bound<Vec<u8>>, Bound<Vec<u8>>),
    f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> Result<()> {
    if empty_range(&range.0, &range.1) {
        return Ok(());
    }
    let lo = range.0.as_ref().map(Vec::as_slice);
    let below_hi = (Bound::Unbounded, range.1.as_ref().map(Vec::as_slice));
    let mut sources = Vec::new();
    for m in &snap.mems {
        sources.push(Source::Mem(MemCursor::seek(m, lo, snap.seq)));
    }
    for (level, tables) in snap.version.levels.iter().enumerate() {
        if level == 0 {
            for t in tables.iter().filter(|t| overlaps(t, range)) {
                sources.push(Source::Run(RunCursor::seek(std::slice::from_ref(t), &snap.cache, lo)?));
            }
        } else if !tables.is_empty() {
            sources.push(Source::Run(RunCursor::seek(tables, &snap.cache, lo)?));
        }
    }
    let mut key = Vec::new();
    loop {
        // The smallest current key, at its newest version among the sources.
        let mut best: Option<(usize, &[u8], u64)> = None;
        for (i, s) in sources.iter().enumerate() {
            let Some(k) = s.key() else { continue };
            let newer = match best {
                None => true,
                Some((_, bk, bseq)) => match k.cmp(bk) {
                    std::cmp::Ordering::Less => true,
                    std::cmp::Ordering::Equal => s.version().0 > bseq,
                    std::cmp::Ordering::Greater => false,
                },
            };
            if newer {
                best = Some((i, k, s.version().0));
            }
        }
        let Some((b, k, _)) = best else { return Ok(()) };
        if !below_hi.contains(k) {
            return Ok(());
        }
        key.clear();
        key.extend_from_slice(k);
        if let (_, Some((v, exp))) = sources[b].version() {
            if (exp == 0 || exp > snap.now) && !f(&key, v) {
                return Ok(());
            }
        }
        for s in &mut sources {
            if s.key() == Some(key.as_slice()) {
                s.advance()?;
            }
        }
    }
}

impl ScanIter {
    pub(crate) fn new(snap: Snapshot, range: (Bound<Vec<u8>>, Bound<Vec<u8>>)) -> Self {
        ScanIter {
            snap,
            lo: range.0,
            hi: range.1,
            front: VecDeque::new(),
            back: VecDeque::new(),
            done: false,
            chunk: FIRST_CHUNK,
        }
    }

    /// Fetches the next chunk from one end. Returns false once the two ends
    /// have met.
    fn fetch(&mut self, forward: bool) -> Result<bool> {
        loop {
            if self.done || empty_range(&self.lo, &self.hi) {
                self.done = true;
                return Ok(false);
            }
            let bounds = (self.lo.clone(), self.hi.clone());
            let chunk = self.chunk;
            self.chunk = (self.chunk * 2).min(MAX_CHUNK);
            let mut merged: BTreeMap<Vec<u8>, (u64, Value)> = BTreeMap::new();
            let mut cut: Option<Vec<u8>> = None;
            let mut add = |(entries, hit): Collected| {
                if hit {
                    let last = entries.last().map(|e| e.0.clone()).unwrap_or_default();
                    cut = Some(match cut.take() {
                        None => last,
                        Some(c) if forward => c.min(last),
                        Some(c) => c.max(last),
                    });
                }
                for (k, seq, v) in entries {
                    match merged.get(&k) {
                        Some((s, _)) if *s >= seq => {}
                        _ => {
                            merged.insert(k, (seq, v));
                        }
                    }
                }
            };
            for m in &self.snap.mems {
                add(m.collect(&bounds, self.snap.seq, forward, chunk));
            }
            for (level, tables) in self.snap.version.levels.iter().enumerate() {
                if level == 0 {
                    // Level-0 tables overlap: each is a source of its own.
                    for t in tables.iter().filter(|t| overlaps(t, &bounds)) {
                        add(collect_table(t, &self.snap.cache, &bounds, forward, chunk)?);
                    }
                } else {
                    // A deeper level is sorted and disjoint: one source.
                    add(collect_level(tables, &self.snap.cache, &bounds, forward, chunk)?);
                }
            }
            // Keys beyond the cut may be missing versions: keep them for later.
            if let Some(c) = &cut {
                if forward {
                    merged.retain(|k, _| k <= c);
                } else {
                    merged.retain(|k, _| k >= c);
                }
            }
            if merged.is_empty() && cut.is_none() {
                self.done = true;
                return Ok(false);
            }
            let edge = if forward { merged.keys().next_back().cloned() } else { merged.keys().next().cloned() };
            let edge = edge.or(cut).unwrap_or_default();
            let now = self.snap.now;
            let live = merged.into_iter().filter_map(|(k, (_, v))| v.live(now).map(|(v, _)| (k, v)));
            if forward {
                self.front.extend(live);
                self.lo = Bound::Excluded(edge);
                if !self.front.is_empty() {
                    return Ok(true);
                }
            } else {
                self.back.extend(live.collect::<Vec<_>>().into_iter().rev());
                self.hi = Bound::Excluded(edge);
                if !self.back.is_empty() {
                    return Ok(true);
                }
            }
        }
    }
}

impl Iterator for ScanIter {
    type Item = Result<KeyValue>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.front.is_empty() {
            match self.fetch(true) {
                Ok(true) => {}
                Ok(false) => return self.back.pop_back().map(Ok),
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        self.front.pop_front().map(Ok)
    }
}

impl DoubleEndedIterator for ScanIter {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.back.is_empty() {
            match self.fetch(false) {
                Ok(true) => {}
                Ok(false) => return self.front.pop_back().map(Ok),
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        self.back.pop_front().map(Ok)
    }
}
