//! Changes to the tree, made by the one writer: insert with splits, delete
//! with merges and redistribution, overflow chains, page allocation.
//!
//! Latching (see `docs/ENGINES.md`): the writer descends from the root
//! taking write latches and lets go of every ancestor as soon as the node
//! below is *safe* — a split or merge cannot reach past it. Readers descend
//! taking read latches, holding a parent until they hold the child, so a
//! reader is either above a change or below it, never inside a half-made
//! split. Latches are taken top-down and, among siblings, left to right
//! (the writer lets go of a node before latching its left sibling), so no
//! two threads can wait on each other in a cycle.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::lock_api::ArcRwLockWriteGuard;
use parking_lot::RawRwLock;

use super::page::{self, LeafCell, Node, PageType, Val};
use super::pager::WriteGuard;
use super::{Inner, Writer};
use crate::error::{Error, Result};

/// The write latches a change holds: the root pointer (while the root may
/// change) and the chain of nodes from the highest unsafe one down.
pub(super) struct Path {
    pub root: Option<ArcRwLockWriteGuard<RawRwLock, u32>>,
    pub nodes: Vec<WriteGuard>,
}

#[derive(Clone, Copy)]
enum Mode {
    /// Inserting a cell of this many bytes (slot included).
    Insert(usize),
    Delete,
}

impl Inner {
    pub(super) fn corrupt(&self, id: u32, reason: impl Into<String>) -> Error {
        page::damaged(self.pager.path(), id, self.limits.page_size, format!("page {id}: {}", reason.into()))
    }

    /// Records that the writer is about to change page `g`: the page's
    /// image as of the last checkpoint goes to the log at the next
    /// checkpoint (once), and the page stays pinned in memory until then.
    pub(super) fn touch(&self, w: &mut Writer, g: &mut WriteGuard) {
        let id = page::page_id(g);
        if id < w.ckpt_pages && w.imaged.insert(id) {
            w.unimaged.push(id);
        }
        w.dirty.entry(id).or_insert_with(|| Arc::clone(ArcRwLockWriteGuard::rwlock(g)));
        page::set_lsn(g, w.seq);
    }

    /// Writes `node` into page `g`, keeping the count of used bytes.
    fn write_node(&self, w: &mut Writer, g: &mut WriteGuard, node: &Node) {
        self.touch(w, g);
        let old = match page::page_type(g) {
            Some(PageType::Leaf | PageType::Internal) => page::used(g) as u64,
            _ => 0,
        };
        node.encode(g);
        w.meta.used_bytes = w.meta.used_bytes + node.size() as u64 - old;
    }

    /// Counts a change of the tree's shape (done while the latches of the
    /// pages it changes are held, before any is let go).
    fn structure_changed(&self) {
        self.smo.fetch_add(1, Ordering::AcqRel);
    }

    /// A page for new data: from the free list, or a new one at the end.
    fn alloc(&self, w: &mut Writer) -> Result<WriteGuard> {
        self.structure_changed();
        let id = w.meta.free_head;
        if id != 0 {
            let mut g = self.pager.write(id)?;
            if page::page_type(&g) != Some(PageType::Free) {
                return Err(self.corrupt(id, "on the free list but not a free page"));
            }
            w.meta.free_head = page::next(&g);
            w.meta.free_count -= 1;
            self.touch(w, &mut g);
            return Ok(g);
        }
        let id = w.meta.page_count;
        if id == u32::MAX {
            return Err(Error::InvalidArgument("the page file is full (2^32 pages)".into()));
        }
        w.meta.page_count += 1;
        let mut g = self.pager.create(id).write_arc();
        self.touch(w, &mut g);
        Ok(g)
    }

    /// Puts page `g` on the free list.
    fn free(&self, w: &mut Writer, mut g: WriteGuard) {
        self.structure_changed();
        self.touch(w, &mut g);
        if matches!(page::page_type(&g), Some(PageType::Leaf | PageType::Internal)) {
            w.meta.used_bytes -= page::used(&g) as u64;
        }
        page::encode_free(&mut g, w.meta.free_head);
        w.meta.free_head = page::page_id(&g);
        w.meta.free_count += 1;
    }

    /// Writes a value too large for a leaf to a chain of overflow pages;
    /// returns the first.
    fn write_overflow(&self, w: &mut Writer, value: &[u8]) -> Result<u32> {
        let cap = self.limits.overflow_capacity();
        let mut pages = Vec::new();
        for _ in value.chunks(cap) {
            pages.push(self.alloc(w)?);
        }
        let ids: Vec<u32> = pages.iter().map(|g| page::page_id(g)).collect();
        for (i, (chunk, g)) in value.chunks(cap).zip(pages.iter_mut()).enumerate() {
            page::encode_overflow(g, ids.get(i + 1).copied().unwrap_or(0), chunk);
        }
        w.meta.overflow_pages += ids.len() as u32;
        Ok(ids[0])
    }

    fn free_overflow(&self, w: &mut Writer, mut id: u32) -> Result<()> {
        while id != 0 {
            let g = self.pager.write(id)?;
            if page::page_type(&g) != Some(PageType::Overflow) {
                return Err(self.corrupt(id, "in an overflow chain but not an overflow page"));
            }
            let next = page::next(&g);
            self.free(w, g);
            w.meta.overflow_pages -= 1;
            id = next;
        }
        Ok(())
    }

    /// Whether a change below `g` cannot reach above it.
    fn safe(&self, g: &[u8], mode: Mode, is_root: bool) -> bool {
        let used = page::used(g);
        let leaf = page::page_type(g) == Some(PageType::Leaf);
        match mode {
            Mode::Insert(cell) => used + if leaf { cell } else { self.limits.max_cell } <= self.limits.page_size,
            Mode::Delete if is_root => leaf || page::nslots(g) >= 2,
            Mode::Delete => used >= self.limits.min_used + self.limits.max_cell,
        }
    }

    fn descend(&self, key: &[u8], mode: Mode) -> Result<Path> {
        let root = self.root.write_arc();
        let mut id = *root;
        let mut path = Path { root: Some(root), nodes: Vec::new() };
        let mut depth = 0;
        loop {
            let g = self.pager.write(id)?;
            let ty = page::page_type(&g);
            if !matches!(ty, Some(PageType::Leaf | PageType::Internal)) {
                return Err(self.corrupt(id, "reached from a parent but not a tree node"));
            }
            if self.safe(&g, mode, depth == 0) {
                path.root = None;
                path.nodes.clear();
            }
            let child = (ty == Some(PageType::Internal)).then(|| page::child_for(&g, key));
            path.nodes.push(g);
            match child {
                Some(c) => id = c,
                None => return Ok(path),
            }
            depth += 1;
        }
    }

    /// Sets `key` to `value`.
    pub(super) fn put(&self, w: &mut Writer, key: &[u8], value: &[u8], expires: u64) -> Result<()> {
        let val = if self.limits.inline(key, value.len()) {
            Val::Inline(value.to_vec())
        } else {
            Val::Overflow { head: self.write_overflow(w, value)?, len: value.len() as u32 }
        };
        let cell = LeafCell { key: key.to_vec(), expires, val };
        let mut path = self.descend(key, Mode::Insert(cell.size()))?;
        let mut leaf = path.nodes.pop().expect("a path ends at a leaf");
        // Fast paths: a new key with room for it, or a same-size overwrite.
        match page::search(&leaf, key) {
            Err(i) if page::free_space(&leaf) >= cell.size() => {
                self.touch(w, &mut leaf);
                page::insert_leaf_cell(&mut leaf, i, &cell);
                w.meta.keys += 1;
                w.meta.used_bytes += cell.size() as u64;
                return Ok(());
            }
            Ok(i) => {
                self.touch(w, &mut leaf);
                if page::overwrite_leaf_cell(&mut leaf, i, &cell) {
                    return Ok(());
                }
            }
            Err(_) => {}
        }
        let mut node = Node::decode(&leaf);
        let Node::Leaf { cells, .. } = &mut node else { unreachable!("descend stops at leaves") };
        match cells.binary_search_by(|c| c.key.as_slice().cmp(key)) {
            Ok(i) => {
                let old = std::mem::replace(&mut cells[i], cell);
                if let Val::Overflow { head, .. } = old.val {
                    self.free_overflow(w, head)?;
                }
            }
            Err(i) => {
                cells.insert(i, cell);
                w.meta.keys += 1;
            }
        }
        if node.size() <= self.limits.page_size {
            self.write_node(w, &mut leaf, &node);
            return Ok(());
        }
        // Split the leaf: the upper half goes to a new right sibling.
        let Node::Leaf { prev, next, mut cells } = node else { unreachable!() };
        let at = split_point(cells.iter().map(LeafCell::size));
        let right_cells = cells.split_off(at);
        let sep = separator(&cells[cells.len() - 1].key, &right_cells[0].key);
        let mut right = self.alloc(w)?;
        let (lid, rid) = (page::page_id(&leaf), page::page_id(&right));
        self.write_node(w, &mut right, &Node::Leaf { prev: lid, next, cells: right_cells });
        if next != 0 {
            let mut n = self.pager.write(next)?;
            self.touch(w, &mut n);
            page::set_aux(&mut n, rid);
        }
        self.write_node(w, &mut leaf, &Node::Leaf { prev, next: rid, cells });
        drop(right);
        drop(leaf);
        self.insert_separator(w, &mut path, sep, rid)
    }

    /// Adds (`sep`, `child`) to the lowest node of `path`, splitting upwards.
    fn insert_separator(&self, w: &mut Writer, path: &mut Path, mut sep: Vec<u8>, mut child: u32) -> Result<()> {
        loop {
            let Some(mut g) = path.nodes.pop() else {
                // The root split: a new root above it.
                let root = path.root.as_mut().expect("the root latch is held while the root may split");
                let mut new = self.alloc(w)?;
                self.write_node(w, &mut new, &Node::Internal { first: **root, cells: vec![(sep, child)] });
                **root = page::page_id(&new);
                w.meta.root = **root;
                w.meta.height += 1;
                return Ok(());
            };
            if page::page_type(&g) != Some(PageType::Internal) {
                return Err(self.corrupt(page::page_id(&g), "a parent that is not an internal node"));
            }
            // Separators are distinct: `sep` goes before the first above it.
            let i = page::search(&g, &sep).unwrap_or_else(|i| i);
            // Fast path: room in the node for one more cell.
            if page::free_space(&g) >= page::internal_size(&sep) {
                self.touch(w, &mut g);
                let added = page::insert_internal_cell(&mut g, i, &sep, child);
                debug_assert!(added, "free space was checked");
                w.meta.used_bytes += page::internal_size(&sep) as u64;
                return Ok(());
            }
            let mut node = Node::decode(&g);
            let Node::Internal { cells, .. } = &mut node else { unreachable!("checked above") };
            cells.insert(i, (sep, child));
            if node.size() <= self.limits.page_size {
                self.write_node(w, &mut g, &node);
                return Ok(());
            }
            let Node::Internal { first, mut cells } = node else { unreachable!() };
            let m = split_point(cells.iter().map(|(k, _)| page::internal_size(k))).clamp(1, cells.len() - 2);
            let mut right_cells = cells.split_off(m);
            let (up, right_first) = right_cells.remove(0);
            let mut right = self.alloc(w)?;
            self.write_node(w, &mut right, &Node::Internal { first: right_first, cells: right_cells });
            self.write_node(w, &mut g, &Node::Internal { first, cells });
            (sep, child) = (up, page::page_id(&right));
        }
    }

    /// Deletes `key`; returns whether it was there.
    pub(super) fn delete(&self, w: &mut Writer, key: &[u8]) -> Result<bool> {
        let mut path = self.descend(key, Mode::Delete)?;
        let leaf = path.nodes.last_mut().expect("a path ends at a leaf");
        let Ok(i) = page::search(leaf, key) else { return Ok(false) };
        let mut node = Node::decode(leaf);
        let Node::Leaf { cells, .. } = &mut node else { unreachable!("descend stops at leaves") };
        let old = cells.remove(i);
        w.meta.keys -= 1;
        let mut leaf = path.nodes.pop().expect("a path ends at a leaf");
        self.write_node(w, &mut leaf, &node);
        if let Val::Overflow { head, .. } = old.val {
            self.free_overflow(w, head)?;
        }
        path.nodes.push(leaf);
        self.rebalance(w, &mut path)?;
        Ok(true)
    }

    /// Fixes underfull nodes from the bottom of `path` upwards: merges a
    /// node with a sibling when both fit in one page, else (leaves) moves
    /// cells across; shrinks the root when it has one child left.
    fn rebalance(&self, w: &mut Writer, path: &mut Path) -> Result<()> {
        loop {
            let Some(node_g) = path.nodes.pop() else { return Ok(()) };
            let id = page::page_id(&node_g);
            let is_root = path.root.as_ref().is_some_and(|r| **r == id);
            if is_root {
                if page::page_type(&node_g) == Some(PageType::Internal) && page::nslots(&node_g) == 0 {
                    let root = path.root.as_mut().expect("checked above");
                    **root = page::child_at(&node_g, 0);
                    w.meta.root = **root;
                    w.meta.height -= 1;
                    self.free(w, node_g);
                }
                return Ok(());
            }
            if page::used(&node_g) >= self.limits.min_used {
                return Ok(());
            }
            let Some(mut parent_g) = path.nodes.pop() else { return Ok(()) };
            let mut parent = Node::decode(&parent_g);
            let parent_size = parent.size();
            let Node::Internal { first, cells: pcells } = &mut parent else {
                return Err(self.corrupt(page::page_id(&parent_g), "a parent that is not an internal node"));
            };
            if pcells.is_empty() {
                path.nodes.push(parent_g);
                continue;
            }
            let ci = if *first == id {
                0
            } else {
                match pcells.iter().position(|&(_, c)| c == id) {
                    Some(p) => p + 1,
                    None => return Err(self.corrupt(id, "not a child of the parent it was reached from")),
                }
            };
            // Latch the pair left to right.
            let (mut left, mut right) = if ci > 0 {
                let left_id = if ci == 1 { *first } else { pcells[ci - 2].1 };
                drop(node_g);
                let l = self.pager.write(left_id)?;
                (l, self.pager.write(id)?)
            } else {
                let r = self.pager.write(pcells[0].1)?;
                (node_g, r)
            };
            let sep_index = if ci > 0 { ci - 1 } else { 0 };
            let (ln, rn) = (Node::decode(&left), Node::decode(&right));
            let mut changed = true;
            match (ln, rn) {
                (Node::Leaf { prev, cells: mut lc, .. }, Node::Leaf { next, cells: rc, .. }) => {
                    let total = page::HEADER + lc.iter().chain(&rc).map(LeafCell::size).sum::<usize>();
                    let lid = page::page_id(&left);
                    if total <= self.limits.page_size {
                        lc.extend(rc);
                        self.write_node(w, &mut left, &Node::Leaf { prev, next, cells: lc });
                        if next != 0 {
                            let mut n = self.pager.write(next)?;
                            self.touch(w, &mut n);
                            page::set_aux(&mut n, lid);
                        }
                        self.free(w, right);
                        pcells.remove(sep_index);
                    } else {
                        lc.extend(rc);
                        let at = split_point(lc.iter().map(LeafCell::size));
                        let rc = lc.split_off(at);
                        let sep = separator(&lc[lc.len() - 1].key, &rc[0].key);
                        let grown = parent_size + page::internal_size(&sep) - page::internal_size(&pcells[sep_index].0);
                        if grown <= self.limits.page_size {
                            self.structure_changed();
                            pcells[sep_index].0 = sep;
                            let rid = page::page_id(&right);
                            self.write_node(w, &mut left, &Node::Leaf { prev, next: rid, cells: lc });
                            self.write_node(w, &mut right, &Node::Leaf { prev: lid, next, cells: rc });
                        } else {
                            // The new separator does not fit: leave the leaf underfull.
                            changed = false;
                        }
                    }
                }
                (Node::Internal { first: lf, cells: mut lc }, Node::Internal { first: rf, cells: rc }) => {
                    let sep = pcells[sep_index].0.clone();
                    let total = page::HEADER
                        + page::internal_size(&sep)
                        + lc.iter().chain(&rc).map(|(k, _)| page::internal_size(k)).sum::<usize>();
                    if total <= self.limits.page_size {
                        lc.push((sep, rf));
                        lc.extend(rc);
                        self.write_node(w, &mut left, &Node::Internal { first: lf, cells: lc });
                        self.free(w, right);
                        pcells.remove(sep_index);
                    } else {
                        changed = false;
                    }
                }
                _ => return Err(self.corrupt(id, "siblings at one level are not of one kind")),
            }
            if !changed {
                return Ok(());
            }
            self.write_node(w, &mut parent_g, &parent);
            path.nodes.push(parent_g);
        }
    }
}

/// Where to cut a run of cells of these sizes so that both halves hold
/// about the same bytes (never empty).
fn split_point(sizes: impl Iterator<Item = usize>) -> usize {
    let sizes: Vec<usize> = sizes.collect();
    let total: usize = sizes.iter().sum();
    let mut acc = 0;
    for (i, s) in sizes.iter().enumerate() {
        if acc + s / 2 >= total / 2 {
            return i.clamp(1, sizes.len() - 1);
        }
        acc += s;
    }
    sizes.len() - 1
}

/// The shortest key `s` with `left < s <= right`: a prefix of `right`.
fn separator(left: &[u8], right: &[u8]) -> Vec<u8> {
    let common = left.iter().zip(right).take_while(|(a, b)| a == b).count();
    right[..(common + 1).min(right.len())].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_are_short_and_between() {
        for (l, r) in [(&b"apple"[..], &b"apricot"[..]), (b"a", b"b"), (b"ab", b"abc"), (b"", b"x"), (b"k1", b"k2")] {
            let s = separator(l, r);
            assert!(l < s.as_slice() && s.as_slice() <= r, "{l:?} {s:?} {r:?}");
        }
        assert_eq!(separator(b"apple", b"apricot"), b"apr");
    }

    #[test]
    fn split_points_leave_both_halves_non_empty() {
        assert_eq!(split_point([10, 10, 10, 10].into_iter()), 2);
        assert_eq!(split_point([1000, 1, 1].into_iter()), 1);
        assert_eq!(split_point([1, 1, 1000].into_iter()), 2);
        assert_eq!(split_point([5, 5].into_iter()), 1);
    }
}
