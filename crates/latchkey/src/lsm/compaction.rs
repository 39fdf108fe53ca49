//! Leveled compaction. The policy ([`choose`]) is a pure function of a
//! version, so it can be tested and simulated without touching disk; the
//! merge ([`merge_tables`]) streams its inputs in key order and writes
//! tables of about `target_file_size` bytes.
//!
//! - Level 0 is compacted into level 1 once it has `l0_trigger` tables.
//! - Level n >= 1 is compacted into n+1 once it holds more than
//!   `base_level_bytes * 10^(n-1)` bytes, one table at a time.
//! - For each key only the newest version is kept. A tombstone or an
//!   expired value is dropped only when no deeper level can hold an older
//!   version of its key; otherwise it stays to hide that version.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::Path;
use std::sync::Arc;

use super::table::{Table, TableBuilder};
use super::version::{Version, LEVELS};
use super::Value;
use crate::error::Result;

/// What to compact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Choice {
    /// The level the inputs come from, and the level they go to.
    pub(crate) from: usize,
    pub(crate) to: usize,
    /// Ids of the input tables (from both levels).
    pub(crate) inputs: Vec<u64>,
}

/// Tuning of the policy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub(crate) l0_trigger: usize,
    pub(crate) base_level_bytes: u64,
}

impl Policy {
    /// The levels 1.. that have a size target, each with its target
    /// (`base_level_bytes * 10^(level-1)`); the last level has none.
    fn targets(&self) -> impl Iterator<Item = (usize, u64)> {
        let base = self.base_level_bytes;
        (1..LEVELS - 1).scan(base, |target, level| {
            let t = *target;
            *target = t.saturating_mul(10);
            Some((level, t))
        })
    }
}

fn overlapping(tables: &[Arc<Table>], lo: &[u8], hi: &[u8]) -> Vec<u64> {
    tables.iter().filter(|t| t.overlaps(lo, hi)).map(|t| t.id).collect()
}

fn range_of<'a>(ts: impl Iterator<Item = &'a Arc<Table>>) -> Option<(Vec<u8>, Vec<u8>)> {
    ts.fold(None, |acc: Option<(Vec<u8>, Vec<u8>)>, t| match acc {
        None => Some((t.smallest.clone(), t.largest.clone())),
        Some((lo, hi)) => Some((lo.min(t.smallest.clone()), hi.max(t.largest.clone()))),
    })
}

/// Decides the next compaction, if any is due.
pub(crate) fn choose(v: &Version, p: &Policy) -> Option<Choice> {
    let l0 = &v.levels[0];
    if l0.len() >= p.l0_trigger {
        let (lo, hi) = range_of(l0.iter())?;
        let mut inputs: Vec<u64> = l0.iter().map(|t| t.id).collect();
        inputs.extend(overlapping(&v.levels[1], &lo, &hi));
        return Some(Choice { from: 0, to: 1, inputs });
    }
    let (level, _) = p.targets().find(|&(level, target)| v.level_bytes(level) > target)?;
    // The table with the largest keys moves down first, so that a
    // sequential load flows down in order.
    let t = v.levels[level].last()?;
    let mut inputs = vec![t.id];
    inputs.extend(overlapping(&v.levels[level + 1], &t.smallest, &t.largest));
    Some(Choice { from: level, to: level + 1, inputs })
}

/// A full compaction: every table into the deepest level in use (at least
/// level 1), or deeper if that level's target cannot hold them all (so the
/// background finds nothing to move down afterwards), dropping every
/// overwritten value, tombstone and expired value.
pub(crate) fn choose_all(v: &Version, p: &Policy) -> Option<Choice> {
    let inputs: Vec<u64> = v.tables().map(|(_, t)| t.id).collect();
    if inputs.is_empty() {
        return None;
    }
    let deepest = (1..LEVELS).rev().find(|&l| !v.levels[l].is_empty()).unwrap_or(1);
    let total: u64 = v.tables().map(|(_, t)| t.size).sum();
    // The last level has no target: it holds whatever no other level can.
    let fits = p.targets().find(|&(_, target)| total <= target).map_or(LEVELS - 1, |(level, _)| level);
    Some(Choice { from: 0, to: deepest.max(fits), inputs })
}

/// Merges `inputs` (newest data wins by sequence number) into new tables
/// made by `new_table`, dropping tombstones and expired values if
/// `bottom`. Returns the finished tables' ids.
pub(crate) fn merge_tables(
    inputs: &[Arc<Table>],
    bottom: bool,
    now_ms: u64,
    target_file_size: u64,
    mut new_table: impl FnMut() -> Result<(u64, TableBuilder)>,
    mut done: impl FnMut(u64, TableBuilder) -> Result<()>,
) -> Result<()> {
    // A k-way merge over streaming table iterators.
    let mut iters: Vec<TableIter> = inputs.iter().map(|t| TableIter::new(Arc::clone(t))).collect();
    let mut heap = BinaryHeap::new();
    for (i, it) in iters.iter_mut().enumerate() {
        if let Some((k, seq, v)) = it.next()? {
            heap.push(Reverse((k, Reverse(seq), i, v)));
        }
    }
    let mut out: Option<(u64, TableBuilder)> = None;
    let mut last: Option<Vec<u8>> = None;
    while let Some(Reverse((key, Reverse(seq), i, value))) = heap.pop() {
        if let Some((k, s, v)) = iters[i].next()? {
            heap.push(Reverse((k, Reverse(s), i, v)));
        }
        if last.as_ref() == Some(&key) {
            continue; // an older version
        }
        last = Some(key.clone());
        let dead = match &value {
            Value::Delete => true,
            Value::Put(_, exp) => *exp != 0 && *exp <= now_ms,
        };
        if dead && bottom {
            continue;
        }
        if out.is_none() {
            out = Some(new_table()?);
        }
        let Some((_, b)) = out.as_mut() else { unreachable!("a table was just started") };
        b.add(&key, seq, &value)?;
        if b.size() >= target_file_size {
            if let Some((id, b)) = out.take() {
                done(id, b)?;
            }
        }
    }
    if let Some((id, b)) = out.take() {
        done(id, b)?;
    }
    Ok(())
}

/// Walks every entry of a table in key order, a block at a time, without
/// the block cache (compaction reads are not worth caching).
pub(crate) struct TableIter {
    table: Arc<Table>,
    block: usize,
    entries: std::vec::IntoIter<(Vec<u8>, u64, Value)>,
}

impl TableIter {
    pub(crate) fn new(table: Arc<Table>) -> Self {
        TableIter { table, block: 0, entries: Vec::new().into_iter() }
    }

    pub(crate) fn next(&mut self) -> Result<Option<(Vec<u8>, u64, Value)>> {
        loop {
            if let Some(e) = self.entries.next() {
                return Ok(Some(e));
            }
            if self.block >= self.table.blocks() {
                return Ok(None);
            }
            let b = self.table.block(self.block, None)?;
            self.block += 1;
            self.entries = (*b).clone().into_iter();
        }
    }
}

/// True if no level below `level` holds a table overlapping `lo..=hi`.
pub(crate) fn is_bottom(v: &Version, level: usize, lo: &[u8], hi: &[u8]) -> bool {
    v.levels[level + 1..].iter().all(|l| l.iter().all(|t| !t.overlaps(lo, hi)))
}

/// Removes a table file that no version names any more.
pub(crate) fn remove_table(dir: &Path, id: u64) -> Result<()> {
    crate::fs::remove_file(&dir.join(super::table::table_name(id)))
}
