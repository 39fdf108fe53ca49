//! The page layout of the `btree` engine: fixed-size pages with a header
//! and, for tree nodes, a slotted body. Drawn in `docs/FORMAT.md`.
//!
//! ```text
//! 0     4    5    6       8      16     20     24     28           30    32
//! | crc | type | 0 | nslots | lsn  | id   | next | aux  | cells_start | 0 | slots (u16 each) ... free ... cells |
//! ```
//!
//! `crc` is CRC32C over bytes 4.. of the page. `next`: a leaf's right
//! sibling, an overflow page's successor, a free page's successor (0 =
//! none: page 0 is the meta page, never a child). `aux`: a leaf's left
//! sibling, an internal node's leftmost child, an overflow page's byte count.
//! Slots hold the offsets of cells, in key order; cells are packed at the
//! end of the page.
//!
//! A leaf cell is `klen u16 | flags u8 | expires_at u64 | vlen u32 | key |
//! value` where with flag 1 (overflow) the value is a u32: the first page of
//! the chain holding it. An internal cell is `klen u16 | child u32 | key`:
//! `child` holds the keys at or above `key`, up to the next cell's key.

use crate::error::Error;

pub(crate) const HEADER: usize = 32;
pub(crate) const LEAF_CELL_HEADER: usize = 2 + 1 + 8 + 4;
pub(crate) const INTERNAL_CELL_HEADER: usize = 2 + 4;
const FLAG_OVERFLOW: u8 = 1;

/// Kinds of page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum PageType {
    Leaf = 1,
    Internal = 2,
    Overflow = 3,
    Free = 4,
    Meta = 5,
}

impl PageType {
    fn from_u8(b: u8) -> Option<PageType> {
        Some(match b {
            1 => PageType::Leaf,
            2 => PageType::Internal,
            3 => PageType::Overflow,
            4 => PageType::Free,
            5 => PageType::Meta,
            _ => return None,
        })
    }
}

fn u16_at(p: &[u8], at: usize) -> usize {
    u16::from_le_bytes([p[at], p[at + 1]]) as usize
}
fn u32_at(p: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(p[at..at + 4].try_into().unwrap())
}
fn u64_at(p: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(p[at..at + 8].try_into().unwrap())
}

/// Reads of the header fields of a page held in memory.
pub(crate) fn page_type(p: &[u8]) -> Option<PageType> {
    PageType::from_u8(p[4])
}
pub(crate) fn nslots(p: &[u8]) -> usize {
    u16_at(p, 6)
}
pub(crate) fn page_id(p: &[u8]) -> u32 {
    u32_at(p, 16)
}
pub(crate) fn next(p: &[u8]) -> u32 {
    u32_at(p, 20)
}
pub(crate) fn aux(p: &[u8]) -> u32 {
    u32_at(p, 24)
}
/// Bytes free between the slots and the cells.
pub(crate) fn free_space(p: &[u8]) -> usize {
    u16_at(p, 28).saturating_sub(HEADER + 2 * nslots(p))
}

/// Bytes in use: header, slots and cells.
pub(crate) fn used(p: &[u8]) -> usize {
    HEADER + 2 * nslots(p) + (p.len() - u16_at(p, 28).min(p.len()))
}

/// Writes a header; `cells_start` is where the cells begin.
pub(crate) fn set_header(p: &mut [u8], ty: PageType, nslots: usize, id: u32, next: u32, aux: u32) {
    p[4] = ty as u8;
    p[5] = 0;
    p[6..8].copy_from_slice(&(nslots as u16).to_le_bytes());
    p[16..20].copy_from_slice(&id.to_le_bytes());
    p[20..24].copy_from_slice(&next.to_le_bytes());
    p[24..28].copy_from_slice(&aux.to_le_bytes());
}

pub(crate) fn set_lsn(p: &mut [u8], lsn: u64) {
    p[8..16].copy_from_slice(&lsn.to_le_bytes());
}
pub(crate) fn set_aux(p: &mut [u8], aux: u32) {
    p[24..28].copy_from_slice(&aux.to_le_bytes());
}

/// Sets the checksum; done just before a page goes to disk.
pub(crate) fn seal(p: &mut [u8]) {
    let crc = crc32c::crc32c(&p[4..]);
    p[0..4].copy_from_slice(&crc.to_le_bytes());
}

/// Verifies a page read from disk: checksum, type, and that it is the page
/// that belongs at `id` (a write misdirected to the wrong place is damage).
pub(crate) fn verify(p: &[u8], id: u32) -> std::result::Result<PageType, String> {
    let stored = u32_at(p, 0);
    let crc = crc32c::crc32c(&p[4..]);
    if stored != crc {
        return Err(format!("page {id}: checksum mismatch (stored {stored:#010x}, computed {crc:#010x})"));
    }
    let ty = page_type(p).ok_or_else(|| format!("page {id}: unknown page type {}", p[4]))?;
    if page_id(p) != id {
        return Err(format!("page {id}: holds page {} (a misdirected write)", page_id(p)));
    }
    if matches!(ty, PageType::Leaf | PageType::Internal) {
        let n = nslots(p);
        let start = u16_at(p, 28);
        if HEADER + 2 * n > start || start > p.len() {
            return Err(format!("page {id}: {n} slots and cells from {start} do not fit"));
        }
        let mut cells = Vec::with_capacity(n);
        for i in 0..n {
            let off = u16_at(p, HEADER + 2 * i);
            let len = if ty == PageType::Leaf { leaf_cell_len(p, off) } else { internal_cell_len(p, off) };
            match len {
                Some(l) if off >= start && off + l <= p.len() => cells.push((off, l)),
                _ => return Err(format!("page {id}: cell {i} at {off} runs outside the page")),
            }
        }
        // The cells tile the space from `cells_start` to the end exactly:
        // no overlap, no gap (pages are always written packed).
        cells.sort_unstable();
        let mut at = start;
        for &(off, len) in &cells {
            if off != at {
                return Err(format!("page {id}: cells overlap or leave a gap at offset {at}"));
            }
            at += len;
        }
        if at != p.len() {
            return Err(format!("page {id}: cells end at {at}, not at the end of the page"));
        }
    }
    Ok(ty)
}

fn leaf_cell_len(p: &[u8], off: usize) -> Option<usize> {
    if off + LEAF_CELL_HEADER > p.len() {
        return None;
    }
    let klen = u16_at(p, off);
    let flags = p[off + 2];
    let vlen = u32_at(p, off + 11) as usize;
    let stored = if flags & FLAG_OVERFLOW != 0 { 4 } else { vlen };
    Some(LEAF_CELL_HEADER + klen + stored)
}

fn internal_cell_len(p: &[u8], off: usize) -> Option<usize> {
    if off + INTERNAL_CELL_HEADER > p.len() {
        return None;
    }
    Some(INTERNAL_CELL_HEADER + u16_at(p, off))
}

fn slot(p: &[u8], i: usize) -> usize {
    u16_at(p, HEADER + 2 * i)
}

/// The key of cell `i` of a node.
pub(crate) fn key_at(p: &[u8], i: usize) -> &[u8] {
    let off = slot(p, i);
    let klen = u16_at(p, off);
    let start = off + if page_type(p) == Some(PageType::Leaf) { LEAF_CELL_HEADER } else { INTERNAL_CELL_HEADER };
    &p[start..start + klen]
}

/// Binary search over a node's keys: `Ok(i)` if cell `i` has `key`,
/// `Err(i)` where it would go.
pub(crate) fn search(p: &[u8], key: &[u8]) -> std::result::Result<usize, usize> {
    let (mut lo, mut hi) = (0, nslots(p));
    while lo < hi {
        let mid = (lo + hi) / 2;
        match key_at(p, mid).cmp(key) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Ok(mid),
        }
    }
    Err(lo)
}

/// The child of an internal node whose range holds `key`.
pub(crate) fn child_for(p: &[u8], key: &[u8]) -> u32 {
    let i = match search(p, key) {
        Ok(i) => i + 1,
        Err(i) => i,
    };
    child_at(p, i)
}

/// Child `i` of an internal node: 0 is the leftmost, `i` that of cell `i-1`.
pub(crate) fn child_at(p: &[u8], i: usize) -> u32 {
    if i == 0 {
        aux(p)
    } else {
        u32_at(p, slot(p, i - 1) + 2)
    }
}

/// The value of a leaf cell as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Val {
    Inline(Vec<u8>),
    /// The first page of an overflow chain, and the value's length.
    Overflow {
        head: u32,
        len: u32,
    },
}

/// Leaf cell `i`: (expires_at, value as stored).
pub(crate) fn leaf_value(p: &[u8], i: usize) -> (u64, Val) {
    let off = slot(p, i);
    let klen = u16_at(p, off);
    let flags = p[off + 2];
    let expires = u64_at(p, off + 3);
    let vlen = u32_at(p, off + 11);
    let at = off + LEAF_CELL_HEADER + klen;
    let val = if flags & FLAG_OVERFLOW != 0 {
        Val::Overflow { head: u32_at(p, at), len: vlen }
    } else {
        Val::Inline(p[at..at + vlen as usize].to_vec())
    };
    (expires, val)
}

/// Leaf cell `i` as it lies in the page: (expires_at, the inline value or
/// the overflow chain's first page and length).
pub(crate) fn leaf_value_ref(p: &[u8], i: usize) -> (u64, Result<&[u8], (u32, u32)>) {
    let off = slot(p, i);
    let klen = u16_at(p, off);
    let expires = u64_at(p, off + 3);
    let vlen = u32_at(p, off + 11);
    let at = off + LEAF_CELL_HEADER + klen;
    if p[off + 2] & FLAG_OVERFLOW != 0 {
        (expires, Err((u32_at(p, at), vlen)))
    } else {
        (expires, Ok(&p[at..at + vlen as usize]))
    }
}

/// A leaf cell decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeafCell {
    pub key: Vec<u8>,
    pub expires: u64,
    pub val: Val,
}

impl LeafCell {
    /// Bytes it takes in a page, slot included.
    pub fn size(&self) -> usize {
        2 + LEAF_CELL_HEADER
            + self.key.len()
            + match &self.val {
                Val::Inline(v) => v.len(),
                Val::Overflow { .. } => 4,
            }
    }
}

impl LeafCell {
    /// Writes the cell into `cell`, exactly `size() - 2` bytes.
    fn write(&self, cell: &mut [u8]) {
        let (flags, vlen) = match &self.val {
            Val::Inline(v) => (0, v.len() as u32),
            Val::Overflow { len, .. } => (FLAG_OVERFLOW, *len),
        };
        cell[0..2].copy_from_slice(&(self.key.len() as u16).to_le_bytes());
        cell[2] = flags;
        cell[3..11].copy_from_slice(&self.expires.to_le_bytes());
        cell[11..15].copy_from_slice(&vlen.to_le_bytes());
        let k = LEAF_CELL_HEADER;
        cell[k..k + self.key.len()].copy_from_slice(&self.key);
        let v = k + self.key.len();
        match &self.val {
            Val::Inline(value) => cell[v..].copy_from_slice(value),
            Val::Overflow { head, .. } => cell[v..v + 4].copy_from_slice(&head.to_le_bytes()),
        }
    }
}

/// Inserts `cell` as cell `i` of a leaf without rewriting the page, if the
/// free space between the slots and the cells holds it. The cells stay
/// packed, so `used` stays exact.
pub(crate) fn insert_leaf_cell(p: &mut [u8], i: usize, cell: &LeafCell) -> bool {
    insert_cell(p, i, cell.size() - 2, |c| cell.write(c))
}

/// Inserts the separator `key` with its `child` as cell `i` of an internal
/// node without rewriting the page, if the free space holds it (as
/// [`insert_leaf_cell`] does for a leaf).
pub(crate) fn insert_internal_cell(p: &mut [u8], i: usize, key: &[u8], child: u32) -> bool {
    insert_cell(p, i, INTERNAL_CELL_HEADER + key.len(), |c| {
        c[0..2].copy_from_slice(&(key.len() as u16).to_le_bytes());
        c[2..6].copy_from_slice(&child.to_le_bytes());
        c[INTERNAL_CELL_HEADER..].copy_from_slice(key);
    })
}

/// Puts a cell of `len` bytes (written by `write`) just below the cells
/// and its slot at `i`, if there is room for both.
fn insert_cell(p: &mut [u8], i: usize, len: usize, write: impl FnOnce(&mut [u8])) -> bool {
    let n = nslots(p);
    let start = u16_at(p, 28);
    if HEADER + 2 * (n + 1) + len > start {
        return false;
    }
    let at = start - len;
    write(&mut p[at..start]);
    p.copy_within(HEADER + 2 * i..HEADER + 2 * n, HEADER + 2 * i + 2);
    p[HEADER + 2 * i..HEADER + 2 * i + 2].copy_from_slice(&(at as u16).to_le_bytes());
    p[6..8].copy_from_slice(&((n + 1) as u16).to_le_bytes());
    p[28..30].copy_from_slice(&(at as u16).to_le_bytes());
    true
}

/// Lays the cells of a tree node out again in key order at rising
/// addresses (in-place inserts put new cells wherever there was room).
/// Returns false if they already were.
pub(crate) fn repack(p: &mut [u8]) -> bool {
    let leaf = match page_type(p) {
        Some(PageType::Leaf) => true,
        Some(PageType::Internal) => false,
        _ => return false,
    };
    let n = nslots(p);
    let len_of = |p: &[u8], off| if leaf { leaf_cell_len(p, off) } else { internal_cell_len(p, off) }.unwrap_or(0);
    let sorted = (1..n).all(|i| slot(p, i - 1) + len_of(p, slot(p, i - 1)) == slot(p, i));
    if sorted && (n == 0 || slot(p, n - 1) + len_of(p, slot(p, n - 1)) == p.len()) {
        return false;
    }
    let old = p.to_vec();
    let start = u16_at(p, 28);
    let mut at = start;
    for i in 0..n {
        let off = slot(&old, i);
        let len = len_of(&old, off);
        p[at..at + len].copy_from_slice(&old[off..off + len]);
        p[HEADER + 2 * i..HEADER + 2 * i + 2].copy_from_slice(&(at as u16).to_le_bytes());
        at += len;
    }
    true
}

/// Replaces cell `i` of a leaf in place when the new cell has the same key
/// and takes exactly as many bytes, and neither value is in an overflow
/// chain (the play-counter case). Returns whether it did.
pub(crate) fn overwrite_leaf_cell(p: &mut [u8], i: usize, cell: &LeafCell) -> bool {
    let off = slot(p, i);
    if p[off + 2] & FLAG_OVERFLOW != 0 || !matches!(cell.val, Val::Inline(_)) {
        return false;
    }
    let len = cell.size() - 2;
    if leaf_cell_len(p, off) != Some(len) || key_at(p, i) != cell.key.as_slice() {
        return false;
    }
    cell.write(&mut p[off..off + len]);
    true
}

/// Bytes an internal cell with `key` takes, slot included.
pub(crate) fn internal_size(key: &[u8]) -> usize {
    2 + INTERNAL_CELL_HEADER + key.len()
}

/// A node decoded for a change; written back whole with `encode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Leaf { prev: u32, next: u32, cells: Vec<LeafCell> },
    Internal { first: u32, cells: Vec<(Vec<u8>, u32)> },
}

impl Node {
    pub fn decode(p: &[u8]) -> Node {
        let n = nslots(p);
        if page_type(p) == Some(PageType::Leaf) {
            let cells = (0..n)
                .map(|i| {
                    let (expires, val) = leaf_value(p, i);
                    LeafCell { key: key_at(p, i).to_vec(), expires, val }
                })
                .collect();
            Node::Leaf { prev: aux(p), next: next(p), cells }
        } else {
            let cells = (0..n).map(|i| (key_at(p, i).to_vec(), child_at(p, i + 1))).collect();
            Node::Internal { first: aux(p), cells }
        }
    }

    /// Bytes the node takes in a page, header included.
    pub fn size(&self) -> usize {
        HEADER
            + match self {
                Node::Leaf { cells, .. } => cells.iter().map(LeafCell::size).sum::<usize>(),
                Node::Internal { cells, .. } => cells.iter().map(|(k, _)| internal_size(k)).sum(),
            }
    }

    pub fn len(&self) -> usize {
        match self {
            Node::Leaf { cells, .. } => cells.len(),
            Node::Internal { cells, .. } => cells.len(),
        }
    }

    /// Writes the node into page `p` (whose id is kept); the caller has
    /// checked that it fits.
    pub fn encode(&self, p: &mut [u8]) {
        let id = page_id(p);
        // Cells in key order at rising addresses, ending at the page's end,
        // so a scan reads a leaf front to back.
        let start = p.len() + HEADER + 2 * self.len() - self.size();
        let mut end = start;
        match self {
            Node::Leaf { prev, next, cells } => {
                set_header(p, PageType::Leaf, cells.len(), id, *next, *prev);
                for (i, c) in cells.iter().enumerate() {
                    let len = c.size() - 2;
                    c.write(&mut p[end..end + len]);
                    p[HEADER + 2 * i..HEADER + 2 * i + 2].copy_from_slice(&(end as u16).to_le_bytes());
                    end += len;
                }
            }
            Node::Internal { first, cells } => {
                set_header(p, PageType::Internal, cells.len(), id, 0, *first);
                for (i, (key, child)) in cells.iter().enumerate() {
                    let len = INTERNAL_CELL_HEADER + key.len();
                    p[end..end + 2].copy_from_slice(&(key.len() as u16).to_le_bytes());
                    p[end + 2..end + 6].copy_from_slice(&child.to_le_bytes());
                    p[end + 6..end + len].copy_from_slice(key);
                    p[HEADER + 2 * i..HEADER + 2 * i + 2].copy_from_slice(&(end as u16).to_le_bytes());
                    end += len;
                }
            }
        }
        debug_assert_eq!(end, p.len());
        p[28..30].copy_from_slice(&(start as u16).to_le_bytes());
        let slots_end = HEADER + 2 * self.len();
        p[slots_end..start].fill(0);
    }
}

/// Writes an overflow page: `data` with the next page of the chain.
pub(crate) fn encode_overflow(p: &mut [u8], next: u32, data: &[u8]) {
    let id = page_id(p);
    set_header(p, PageType::Overflow, 0, id, next, data.len() as u32);
    p[HEADER..HEADER + data.len()].copy_from_slice(data);
    p[HEADER + data.len()..].fill(0);
    p[28..30].copy_from_slice(&0u16.to_le_bytes());
}

/// The data of an overflow page, or why it is damaged.
pub(crate) fn overflow_data(p: &[u8]) -> std::result::Result<&[u8], String> {
    let n = aux(p) as usize;
    if page_type(p) != Some(PageType::Overflow) || HEADER + n > p.len() {
        return Err(format!("page {}: not a valid overflow page", page_id(p)));
    }
    Ok(&p[HEADER..HEADER + n])
}

/// Turns a page into a free page pointing at `next_free`.
pub(crate) fn encode_free(p: &mut [u8], next_free: u32) {
    let id = page_id(p);
    p.fill(0);
    set_header(p, PageType::Free, 0, id, next_free, 0);
    let end = p.len().min(u16::MAX as usize) as u16;
    p[28..30].copy_from_slice(&end.to_le_bytes());
}

/// The meta page (page 0): where the tree is and what it holds. A copy of
/// it opens each write-ahead log, so a torn meta page is repaired from there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Meta {
    pub page_size: u32,
    pub root: u32,
    pub height: u32,
    /// Pages in the file, meta included.
    pub page_count: u32,
    pub free_head: u32,
    pub free_count: u32,
    pub overflow_pages: u32,
    pub keys: u64,
    /// Bytes used in tree nodes (headers, slots, cells).
    pub used_bytes: u64,
    /// The newest batch the pages hold.
    pub seq: u64,
    /// The write-ahead log that holds changes since this checkpoint.
    pub wal: u64,
}

const META_MAGIC: &[u8; 8] = b"LKBTREE1";
pub(crate) const META_LEN: usize = 8 + 4 * 7 + 8 * 4;

impl Meta {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(META_LEN);
        b.extend_from_slice(META_MAGIC);
        for v in [
            self.page_size,
            self.root,
            self.height,
            self.page_count,
            self.free_head,
            self.free_count,
            self.overflow_pages,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        for v in [self.keys, self.used_bytes, self.seq, self.wal] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    pub fn decode(b: &[u8]) -> Option<Meta> {
        if b.len() < META_LEN || &b[..8] != META_MAGIC {
            return None;
        }
        let w = |i: usize| u32_at(b, 8 + 4 * i);
        let d = |i: usize| u64_at(b, 36 + 8 * i);
        let m = Meta {
            page_size: w(0),
            root: w(1),
            height: w(2),
            page_count: w(3),
            free_head: w(4),
            free_count: w(5),
            overflow_pages: w(6),
            keys: d(0),
            used_bytes: d(1),
            seq: d(2),
            wal: d(3),
        };
        let sane = m.page_size.is_power_of_two()
            && (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&(m.page_size as usize))
            && m.root > 0
            && m.root < m.page_count
            && m.free_head < m.page_count
            && m.height >= 1;
        sane.then_some(m)
    }

    /// The meta page image.
    pub fn page(&self) -> Vec<u8> {
        let mut p = vec![0u8; self.page_size as usize];
        set_header(&mut p, PageType::Meta, 0, 0, 0, 0);
        p[HEADER..HEADER + META_LEN].copy_from_slice(&self.encode());
        seal(&mut p);
        p
    }

    /// The meta held in a (verified) meta page.
    pub fn from_page(p: &[u8]) -> Option<Meta> {
        Meta::decode(&p[HEADER..])
    }
}

/// Smallest and largest page sizes.
pub(crate) const MIN_PAGE_SIZE: usize = 1024;
pub(crate) const MAX_PAGE_SIZE: usize = 32 * 1024;

/// Limits that follow from the page size: every cell fits four to a page,
/// so a split always leaves both halves non-empty and every node of a
/// tree of more than one page holds at least two cells' worth.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub page_size: usize,
    /// The largest cell (slot included).
    pub max_cell: usize,
    /// The longest key.
    pub max_key: usize,
    /// A node below this many used bytes is rebalanced after a delete.
    pub min_used: usize,
}

impl Limits {
    pub fn new(page_size: usize) -> Limits {
        let max_cell = (page_size - HEADER) / 4;
        Limits {
            page_size,
            max_cell,
            max_key: max_cell - 2 - LEAF_CELL_HEADER - 4,
            min_used: HEADER + (page_size - HEADER) / 4,
        }
    }

    /// Data bytes an overflow page holds.
    pub fn overflow_capacity(&self) -> usize {
        self.page_size - HEADER
    }

    /// Whether a value of `vlen` bytes with `key` is kept in the leaf.
    pub fn inline(&self, key: &[u8], vlen: usize) -> bool {
        2 + LEAF_CELL_HEADER + key.len() + vlen <= self.max_cell
    }
}

pub(crate) fn damaged(path: &std::path::Path, id: u32, page_size: usize, reason: String) -> Error {
    Error::corruption(path, id as u64 * page_size as u64, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(cells: Vec<(&[u8], Val)>) -> Node {
        Node::Leaf {
            prev: 3,
            next: 9,
            cells: cells.into_iter().map(|(k, val)| LeafCell { key: k.to_vec(), expires: 7, val }).collect(),
        }
    }

    #[test]
    fn nodes_round_trip_and_search_finds_each_key() {
        let mut p = vec![0u8; 4096];
        p[16..20].copy_from_slice(&5u32.to_le_bytes());
        let n = leaf(vec![
            (b"a", Val::Inline(b"1".to_vec())),
            (b"c", Val::Overflow { head: 77, len: 100_000 }),
            (b"e", Val::Inline(vec![])),
        ]);
        n.encode(&mut p);
        assert_eq!(used(&p), n.size());
        assert_eq!(Node::decode(&p), n);
        seal(&mut p);
        assert_eq!(verify(&p, 5), Ok(PageType::Leaf));
        assert!(verify(&p, 6).is_err(), "a page at the wrong place is damage");
        assert_eq!(search(&p, b"c"), Ok(1));
        assert_eq!(search(&p, b"b"), Err(1));
        assert_eq!(search(&p, b"z"), Err(3));
        let i = Node::Internal { first: 10, cells: vec![(b"g".to_vec(), 11), (b"m".to_vec(), 12)] };
        i.encode(&mut p);
        assert_eq!(Node::decode(&p), i);
        assert_eq!(child_for(&p, b"a"), 10);
        assert_eq!(child_for(&p, b"g"), 11);
        assert_eq!(child_for(&p, b"h"), 11);
        assert_eq!(child_for(&p, b"z"), 12);
        assert_eq!(used(&p), i.size());
    }

    #[test]
    fn in_place_inserts_and_overwrites_match_a_rewrite() {
        let mut p = vec![0u8; 1024];
        p[16..20].copy_from_slice(&4u32.to_le_bytes());
        let cell = |k: &[u8], v: &[u8]| LeafCell { key: k.to_vec(), expires: 0, val: Val::Inline(v.to_vec()) };
        let mut model = vec![cell(b"b", b"2"), cell(b"d", b"4")];
        Node::Leaf { prev: 0, next: 0, cells: model.clone() }.encode(&mut p);
        for (k, i) in [(&b"a"[..], 0), (b"c", 2), (b"e", 4)] {
            let c = cell(k, b"vv");
            assert!(insert_leaf_cell(&mut p, i, &c));
            model.insert(i, c);
            assert_eq!(Node::decode(&p), Node::Leaf { prev: 0, next: 0, cells: model.clone() });
            assert_eq!(used(&p), Node::Leaf { prev: 0, next: 0, cells: model.clone() }.size());
        }
        assert!(repack(&mut p), "in-place inserts leave cells out of order");
        assert!(!repack(&mut p));
        assert_eq!(Node::decode(&p), Node::Leaf { prev: 0, next: 0, cells: model.clone() });
        assert!(overwrite_leaf_cell(&mut p, 1, &cell(b"b", b"9")));
        assert!(!overwrite_leaf_cell(&mut p, 1, &cell(b"b", b"99")), "a longer value needs a rewrite");
        model[1] = cell(b"b", b"9");
        assert_eq!(Node::decode(&p), Node::Leaf { prev: 0, next: 0, cells: model.clone() });
        seal(&mut p);
        assert!(verify(&p, 4).is_ok());
        let big = cell(b"z", &[0u8; 1000]);
        assert!(!insert_leaf_cell(&mut p, 5, &big), "no room: the caller splits");
    }

    #[test]
    fn in_place_separator_inserts_match_a_rewrite() {
        let mut p = vec![0u8; 256];
        p[16..20].copy_from_slice(&6u32.to_le_bytes());
        let mut cells = vec![(b"f".to_vec(), 11), (b"p".to_vec(), 12)];
        Node::Internal { first: 10, cells: cells.clone() }.encode(&mut p);
        for (k, i, child) in [(&b"a"[..], 0, 20), (b"k", 2, 21), (b"z", 4, 22)] {
            assert!(insert_internal_cell(&mut p, i, k, child));
            cells.insert(i, (k.to_vec(), child));
            let model = Node::Internal { first: 10, cells: cells.clone() };
            assert_eq!(Node::decode(&p), model);
            assert_eq!(used(&p), model.size());
        }
        assert_eq!(child_for(&p, b"l"), 21);
        assert_eq!(child_for(&p, b"zz"), 22);
        assert!(repack(&mut p));
        seal(&mut p);
        assert_eq!(verify(&p, 6), Ok(PageType::Internal));
        while free_space(&p) >= internal_size(b"q") {
            assert!(insert_internal_cell(&mut p, 0, b"q", 1));
        }
        assert!(!insert_internal_cell(&mut p, 0, b"q", 1), "no room: the caller splits");
    }

    #[test]
    fn every_flipped_bit_of_a_page_fails_verification() {
        let mut p = vec![0u8; 1024];
        p[16..20].copy_from_slice(&2u32.to_le_bytes());
        leaf(vec![(b"k", Val::Inline(b"v".to_vec()))]).encode(&mut p);
        seal(&mut p);
        for bit in 0..p.len() * 8 {
            let mut q = p.clone();
            q[bit / 8] ^= 1 << (bit % 8);
            assert!(verify(&q, 2).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn meta_round_trips_and_limits_hold() {
        let m = Meta { page_size: 4096, root: 1, height: 1, page_count: 2, wal: 3, ..Meta::default() };
        assert_eq!(Meta::from_page(&m.page()), Some(m));
        let l = Limits::new(4096);
        assert!(l.max_key > 900 && l.max_cell * 4 <= 4096 - HEADER);
        assert!(l.inline(&[0; 16], 100));
        assert!(!l.inline(&[0; 16], 2000));
    }
}
