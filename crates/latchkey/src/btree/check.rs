//! `latchkey check` for a `btree` directory: every log record's checksum,
//! every page's checksum, and the tree's invariants — keys in order and
//! within their parent's range, every leaf at one depth, leaf links in key
//! order both ways, overflow chains whole, the free list sound, every page
//! accounted for exactly once. Pages are read as recovery would start from
//! them: a page whose before-image the log holds is read from the log.

use std::collections::HashMap;
use std::path::Path;

use super::page::{self, Meta, Node, PageType, Val};
use super::{ids_with, read_log, wal_name, DATA_FILE};
use crate::check::{CheckReport, Progress};
use crate::error::{Error, Result};
use crate::fs::File;

struct Pages<'a> {
    file: File,
    ps: usize,
    images: HashMap<u32, &'a [u8]>,
    /// What each page was found to be, to spot pages used twice or never.
    owner: Vec<Option<&'static str>>,
}

impl Pages<'_> {
    fn read(&self, id: u32) -> Result<Vec<u8>> {
        if let Some(img) = self.images.get(&id) {
            return Ok(img.to_vec());
        }
        let mut p = vec![0u8; self.ps];
        self.file.read_exact_at(&mut p, id as u64 * self.ps as u64)?;
        page::verify(&p, id).map_err(|r| page::damaged(self.file.path(), id, self.ps, r))?;
        Ok(p)
    }

    fn claim(&mut self, id: u32, what: &'static str) -> std::result::Result<(), String> {
        match self.owner.get_mut(id as usize) {
            None => Err(format!("page {id}: {what} beyond the end of the file")),
            Some(Some(before)) => Err(format!("page {id}: used as {what} and as {before}")),
            Some(slot) => {
                *slot = Some(what);
                Ok(())
            }
        }
    }
}

struct Walk<'r> {
    report: &'r mut CheckReport,
    leaves: Vec<(u32, u32, u32)>,
    keys: u64,
    used: u64,
    overflow: u64,
}

pub(crate) fn check(dir: &Path, progress: &mut Progress<'_>) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let data = dir.join(DATA_FILE);
    let file = File::open_read(&data)?;
    let total = file.len()?;
    progress(0, total);
    // The logs: every record checked; the newest with a checkpoint is the one recovery uses.
    let mut chosen = None;
    for id in ids_with(dir, ".wal")?.into_iter().rev() {
        report.files += 1;
        match read_log(dir, id) {
            Ok(c) => {
                report.records += c.records;
                report.bytes += c.end.valid_len;
                if c.end.torn_bytes() > 0 {
                    report.notes.push(format!(
                        "{}: {} bytes of an unfinished write at offset {} (a crash artefact; dropped at the next open)",
                        wal_name(id),
                        c.end.torn_bytes(),
                        c.end.valid_len
                    ));
                }
                if chosen.is_none() && c.checkpoint.is_some() {
                    chosen = Some(c);
                } else if chosen.is_none() {
                    report
                        .notes
                        .push(format!("{}: never got its checkpoint record (removed at the next open)", wal_name(id)));
                }
            }
            Err(e) => report.damage.push(e),
        }
    }
    report.files += 1;
    let ps_guess = chosen.as_ref().and_then(|c| c.checkpoint).map_or(4096, |m| m.page_size as usize);
    let mut p0 = vec![0u8; ps_guess];
    let disk_meta = match file.read_exact_at(&mut p0, 0) {
        Ok(()) => match page::verify(&p0, 0) {
            Ok(PageType::Meta) => Meta::from_page(&p0),
            Ok(_) => None,
            Err(r) => {
                report.damage.push(page::damaged(&data, 0, ps_guess, r));
                None
            }
        },
        Err(e) => {
            report.damage.push(e);
            None
        }
    };
    let meta = match chosen.as_ref().and_then(|c| c.checkpoint).or(disk_meta) {
        Some(m) => m,
        None => {
            report.damage.push(Error::corruption(&data, 0, "page 0: no valid meta page and no checkpoint in a log"));
            return Ok(report);
        }
    };
    if !report.damage.is_empty() && disk_meta.is_none() {
        report.notes.push("the meta page is damaged; the next open rewrites it from the log".into());
    }
    let ps = meta.page_size as usize;
    let images: HashMap<u32, &[u8]> =
        chosen.iter().flat_map(|c| c.images.iter().map(|(id, img)| (*id, img.as_slice()))).collect();
    if file.len()? < meta.page_count as u64 * ps as u64 {
        report.damage.push(Error::corruption(
            &data,
            file.len()?,
            format!("the file ends before the {} pages the meta page counts", meta.page_count),
        ));
        return Ok(report);
    }
    let mut pages = Pages { file, ps, images, owner: vec![None; meta.page_count as usize] };
    pages.owner[0] = Some("the meta page");
    // Every page's checksum.
    for id in 1..meta.page_count {
        if let Err(e) = pages.read(id) {
            report.damage.push(e);
        }
        report.records += 1;
        report.bytes += ps as u64;
        if id % 256 == 0 {
            progress(id as u64 * ps as u64, total);
        }
    }
    if !report.damage.is_empty() {
        progress(total, total);
        return Ok(report);
    }
    // The tree.
    let mut walk = Walk { report: &mut report, leaves: Vec::new(), keys: 0, used: 0, overflow: 0 };
    walk_node(&mut pages, &mut walk, meta.root, None, None, 1, meta.height, &data);
    let leaves = std::mem::take(&mut walk.leaves);
    for (i, &(id, prev, next)) in leaves.iter().enumerate() {
        let want_prev = if i == 0 { 0 } else { leaves[i - 1].0 };
        let want_next = leaves.get(i + 1).map_or(0, |l| l.0);
        if prev != want_prev || next != want_next {
            walk.report.damage.push(page::damaged(
                &data,
                id,
                ps,
                format!("page {id}: leaf links ({prev}, {next}) should be ({want_prev}, {want_next})"),
            ));
        }
    }
    let (keys, used, overflow) = (walk.keys, walk.used, walk.overflow);
    // The free list.
    let mut free = 0u32;
    let mut id = meta.free_head;
    while id != 0 {
        let r = pages.claim(id, "a free page").and_then(|()| match pages.read(id) {
            Ok(p) if page::page_type(&p) == Some(PageType::Free) => Ok(page::next(&p)),
            Ok(_) => Err(format!("page {id}: on the free list but not a free page")),
            Err(e) => Err(e.to_string()),
        });
        match r {
            Ok(next) => {
                free += 1;
                id = next;
            }
            Err(reason) => {
                report.damage.push(page::damaged(&data, id, ps, reason));
                break;
            }
        }
    }
    let damage = &mut report.damage;
    for (id, owner) in pages.owner.iter().enumerate() {
        if owner.is_none() {
            damage.push(page::damaged(
                &data,
                id as u32,
                ps,
                format!("page {id}: in neither the tree, an overflow chain nor the free list (leaked)"),
            ));
        }
    }
    let counts = [
        ("keys", keys, meta.keys),
        ("used bytes", used, meta.used_bytes),
        ("overflow pages", overflow, meta.overflow_pages as u64),
        ("free pages", free as u64, meta.free_count as u64),
    ];
    for (what, found, said) in counts {
        if found != said {
            damage.push(Error::corruption(
                &data,
                0,
                format!("page 0: the meta page counts {said} {what}, the tree has {found}"),
            ));
        }
    }
    progress(total, total);
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn walk_node(
    pages: &mut Pages<'_>,
    walk: &mut Walk<'_>,
    id: u32,
    lo: Option<&[u8]>,
    hi: Option<&[u8]>,
    depth: u32,
    height: u32,
    data: &Path,
) {
    let ps = pages.ps;
    let fail = |walk: &mut Walk<'_>, reason: String| walk.report.damage.push(page::damaged(data, id, ps, reason));
    if let Err(r) = pages.claim(id, "a tree node") {
        return fail(walk, r);
    }
    let p = match pages.read(id) {
        Ok(p) => p,
        Err(e) => return walk.report.damage.push(e),
    };
    let node = match page::page_type(&p) {
        Some(PageType::Leaf | PageType::Internal) => Node::decode(&p),
        other => return fail(walk, format!("page {id}: a {other:?} page where a tree node should be")),
    };
    walk.used += node.size() as u64;
    let keys: Vec<&[u8]> = match &node {
        Node::Leaf { cells, .. } => cells.iter().map(|c| c.key.as_slice()).collect(),
        Node::Internal { cells, .. } => cells.iter().map(|(k, _)| k.as_slice()).collect(),
    };
    if keys.windows(2).any(|w| w[0] >= w[1]) {
        fail(walk, format!("page {id}: keys out of order"));
    }
    if keys.iter().any(|k| lo.is_some_and(|lo| *k < lo) || hi.is_some_and(|hi| *k >= hi)) {
        fail(walk, format!("page {id}: a key outside the range its parent gives it"));
    }
    match node {
        Node::Leaf { prev, next, cells } => {
            if depth != height {
                fail(walk, format!("page {id}: a leaf at depth {depth} in a tree of height {height}"));
            }
            if cells.is_empty() && depth > 1 {
                fail(walk, format!("page {id}: an empty leaf below the root"));
            }
            walk.keys += cells.len() as u64;
            walk.leaves.push((id, prev, next));
            for c in cells {
                if let Val::Overflow { head, len } = c.val {
                    check_overflow(pages, walk, head, len as usize, data);
                }
            }
        }
        Node::Internal { first, cells } => {
            if depth >= height {
                return fail(
                    walk,
                    format!("page {id}: an internal node at depth {depth} in a tree of height {height}"),
                );
            }
            let mut bound = lo.map(<[u8]>::to_vec);
            let mut child = first;
            for (k, c) in cells.iter().map(|(k, c)| (Some(k.clone()), *c)).chain([(hi.map(<[u8]>::to_vec), 0)]) {
                walk_node(pages, walk, child, bound.as_deref(), k.as_deref(), depth + 1, height, data);
                bound = k;
                child = c;
            }
        }
    }
}

fn check_overflow(pages: &mut Pages<'_>, walk: &mut Walk<'_>, head: u32, len: usize, data: &Path) {
    let mut id = head;
    let mut got = 0;
    while id != 0 && got < len {
        let r = pages.claim(id, "an overflow page").and_then(|()| match pages.read(id) {
            Ok(p) => page::overflow_data(&p).map(|d| (d.len(), page::next(&p))),
            Err(e) => Err(e.to_string()),
        });
        match r {
            Ok((n, next)) => {
                got += n;
                walk.overflow += 1;
                id = next;
            }
            Err(reason) => return walk.report.damage.push(page::damaged(data, id, pages.ps, reason)),
        }
    }
    if got != len || id != 0 {
        walk.report.damage.push(page::damaged(
            data,
            head,
            pages.ps,
            format!("page {head}: an overflow chain of {got} bytes for a value of {len}"),
        ));
    }
}
