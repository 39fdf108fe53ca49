//! The pager and buffer pool: pages of the data file read into frames,
//! each frame guarded by a read/write latch, evicted second-chance (CLOCK)
//! when the pool is full. A frame someone holds (a latch, or the writer's
//! list of dirty pages) is never evicted, so dirty pages stay in memory
//! until a checkpoint writes them.
//!
//! Leaves a scan reaches by a sibling link are loaded into a small ring
//! per shard instead (as PostgreSQL's ring buffers for scans): when the
//! ring is full, its oldest frame that no one holds and nothing used since
//! the scan goes, and its memory takes the next page the scan loads. A
//! long scan so neither pushes the pool's other pages out nor allocates
//! (and faults in) a fresh frame per leaf; a frame used again before its
//! turn joins the pool's clock like any other.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::lock_api::{ArcRwLockReadGuard, ArcRwLockWriteGuard};
use parking_lot::{Mutex, RawRwLock, RwLock};

use super::page;
use crate::error::Result;
use crate::fs::File;

/// A page in memory. Its bytes share one allocation with the reference
/// count and the latch, so a cold page costs one miss for the latch and
/// the page's first bytes, not one for each.
pub(crate) type Latch = Arc<RwLock<[u8]>>;
pub(crate) type ReadGuard = ArcRwLockReadGuard<RawRwLock, [u8]>;
pub(crate) type WriteGuard = ArcRwLockWriteGuard<RawRwLock, [u8]>;

/// A zeroed frame of `page_size` bytes (a power of two from
/// [`page::MIN_PAGE_SIZE`] to [`page::MAX_PAGE_SIZE`], checked at open).
fn new_frame(page_size: usize) -> Latch {
    match page_size {
        1024 => Arc::new(RwLock::new([0u8; 1024])),
        2048 => Arc::new(RwLock::new([0u8; 2048])),
        4096 => Arc::new(RwLock::new([0u8; 4096])),
        8192 => Arc::new(RwLock::new([0u8; 8192])),
        16384 => Arc::new(RwLock::new([0u8; 16384])),
        32768 => Arc::new(RwLock::new([0u8; 32768])),
        other => unreachable!("page size {other} passed the checks at open"),
    }
}

struct Slot {
    latch: Latch,
    referenced: AtomicBool,
}

impl Slot {
    /// Gives the frame its second chance (written only when it changes:
    /// the line stays shared between the readers of a hot page).
    fn mark_referenced(&self) {
        if !self.referenced.load(Ordering::Relaxed) {
            self.referenced.store(true, Ordering::Relaxed);
        }
    }
}

#[derive(Default)]
struct Shard {
    frames: HashMap<u32, Slot, foldhash::fast::RandomState>,
    clock: VecDeque<u32>,
    /// Pages scans loaded, oldest first (in `frames`, not in `clock`).
    ring: VecDeque<u32>,
    /// Accesses that found their page here (counted under the shard's
    /// lock, already held: a pool-wide atomic was a line every reader and
    /// writer wrote, on every page of every descent).
    hits: u64,
}

const SHARDS: usize = 16;
/// Frames per shard in the scans' ring: 128 pages in all.
const RING: usize = 8;

pub(crate) struct Pager {
    pub file: File,
    pub page_size: usize,
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    pub misses: AtomicU64,
    /// Bumped by a checkpoint before it writes pages in place: a page read
    /// from the file before a bump may be older than the pool's copy was
    /// (see [`Pager::prefill`]).
    pub writes: AtomicU64,
}

impl Pager {
    pub fn new(file: File, page_size: usize, cache_bytes: usize) -> Pager {
        let pages = (cache_bytes / page_size).max(SHARDS * 8);
        Pager {
            file,
            page_size,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: pages / SHARDS,
            writes: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard(&self, id: u32) -> &Mutex<Shard> {
        &self.shards[(id as usize).wrapping_mul(0x9E37_79B9) % SHARDS]
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Accesses that found their page in the pool.
    pub fn hits(&self) -> u64 {
        self.shards.iter().map(|s| s.lock().hits).sum()
    }

    /// The frame of page `id`, read from disk (and verified) if not cached.
    pub fn latch(&self, id: u32) -> Result<Latch> {
        self.latch_or_load(id, false)
    }

    /// Like [`Pager::latch`], for a scan moving along the leaves: a page
    /// not cached is loaded into the shard's ring (see the module doc).
    pub fn latch_for_scan(&self, id: u32) -> Result<Latch> {
        self.latch_or_load(id, true)
    }

    fn latch_or_load(&self, id: u32, ring: bool) -> Result<Latch> {
        let spare = {
            let mut guard = self.shard(id).lock();
            let shard = &mut *guard;
            if let Some(slot) = shard.frames.get(&id) {
                shard.hits += 1;
                slot.mark_referenced();
                return Ok(Arc::clone(&slot.latch));
            }
            if ring && shard.ring.len() >= RING {
                recycle(shard)
            } else {
                None
            }
        };
        self.misses.fetch_add(1, Ordering::Relaxed);
        let frame = spare.unwrap_or_else(|| new_frame(self.page_size));
        {
            // No one else has the frame yet: the latch is uncontended.
            let mut buf = frame.write();
            self.file.read_exact_at(&mut buf, id as u64 * self.page_size as u64)?;
            page::verify(&buf, id).map_err(|r| page::damaged(self.path(), id, self.page_size, r))?;
        }
        // Unless another thread got there first.
        let mut shard = self.shard(id).lock();
        if let Some(slot) = shard.frames.get(&id) {
            return Ok(Arc::clone(&slot.latch));
        }
        Ok(self.add_frame(&mut shard, id, frame, ring))
    }

    /// Adds a frame to a shard (to its clock, or to its scans' ring),
    /// evicting one first if the shard is full.
    fn add_frame(&self, shard: &mut Shard, id: u32, latch: Latch, ring: bool) -> Latch {
        if shard.frames.len() >= self.per_shard {
            evict(shard);
        }
        shard.frames.insert(id, Slot { latch: Arc::clone(&latch), referenced: AtomicBool::new(false) });
        if ring {
            shard.ring.push_back(id);
        } else {
            shard.clock.push_back(id);
        }
        latch
    }

    pub fn read(&self, id: u32) -> Result<ReadGuard> {
        match self.read_cached(id) {
            Some(guard) => Ok(guard),
            None => Ok(self.latch(id)?.read_arc()),
        }
    }

    /// [`Pager::read`] through [`Pager::latch_for_scan`].
    pub fn read_for_scan(&self, id: u32) -> Result<ReadGuard> {
        match self.read_cached(id) {
            Some(guard) => Ok(guard),
            None => Ok(self.latch_for_scan(id)?.read_arc()),
        }
    }

    /// The read latch of page `id` if it is in the pool and no writer
    /// holds it, taken under the shard's lock: the guard's reference to
    /// the frame is the only one taken (not a reference for the latch and
    /// another for its guard). Otherwise `None`, and the caller waits for
    /// the latch without the shard's lock.
    fn read_cached(&self, id: u32) -> Option<ReadGuard> {
        let mut guard = self.shard(id).lock();
        let shard = &mut *guard;
        let slot = shard.frames.get(&id)?;
        let read = slot.latch.try_read_arc()?;
        shard.hits += 1;
        slot.mark_referenced();
        Some(read)
    }

    pub fn write(&self, id: u32) -> Result<WriteGuard> {
        Ok(self.latch(id)?.write_arc())
    }

    /// A new page that was never on disk (the file grows at a checkpoint).
    pub fn create(&self, id: u32) -> Latch {
        let frame = new_frame(self.page_size);
        frame.write()[16..20].copy_from_slice(&id.to_le_bytes());
        let mut shard = self.shard(id).lock();
        shard.frames.remove(&id);
        shard.ring.retain(|&r| r != id);
        self.add_frame(&mut shard, id, frame, false)
    }

    /// Frames in the pool now.
    /// Puts the pages `first..` that `bytes` holds (read from the file in
    /// one go when [`Pager::writes`] was `writes`) into the pool: each one
    /// that verifies, is not there yet, and whose shard has room (nothing
    /// is evicted for them; they are not marked used). Stops if a
    /// checkpoint has written pages since. Returns how many were added.
    ///
    /// A page absent from the pool is not dirty (dirty pages stay in it
    /// until a checkpoint writes them), so the file holds its current bytes
    /// unless a checkpoint wrote it after `bytes` were read: the check of
    /// `writes` and the insert are under the shard's lock, and a
    /// checkpoint bumps `writes` before it writes.
    pub fn prefill(&self, first: u32, bytes: &[u8], writes: u64) -> usize {
        let mut added = 0;
        for (id, bytes) in (first..).zip(bytes.chunks_exact(self.page_size)) {
            if page::verify(bytes, id).is_err() {
                continue; // free, or damaged: a read reports it, not this
            }
            let mut guard = self.shard(id).lock();
            if self.writes.load(Ordering::Acquire) != writes {
                break;
            }
            let shard = &mut *guard;
            if shard.frames.len() >= self.per_shard || shard.frames.contains_key(&id) {
                continue;
            }
            let frame = new_frame(self.page_size);
            frame.write().copy_from_slice(bytes);
            shard.frames.insert(id, Slot { latch: frame, referenced: AtomicBool::new(false) });
            shard.clock.push_back(id);
            added += 1;
        }
        added
    }

    /// Pages in the pool.
    pub fn frames(&self) -> usize {
        self.shards.iter().map(|s| s.lock().frames.len()).sum()
    }

    /// Pages the pool holds before it evicts.
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }
}

/// Takes the ring's oldest page out of the pool and returns its memory,
/// unless someone holds it or used it since the scan did: then it stays,
/// as an ordinary frame of the clock.
fn recycle(shard: &mut Shard) -> Option<Latch> {
    let id = shard.ring.pop_front()?;
    let slot = shard.frames.get(&id)?;
    if slot.referenced.load(Ordering::Relaxed) || Arc::strong_count(&slot.latch) > 1 {
        shard.clock.push_back(id);
        return None;
    }
    shard.frames.remove(&id).map(|slot| slot.latch)
}

/// Second chance: skip frames someone holds or used since the last pass.
fn evict(shard: &mut Shard) {
    for _ in 0..shard.clock.len() * 2 {
        let Some(id) = shard.clock.pop_front() else { return };
        let Some(slot) = shard.frames.get(&id) else { continue };
        if Arc::strong_count(&slot.latch) > 1 || slot.referenced.swap(false, Ordering::Relaxed) {
            shard.clock.push_back(id);
            continue;
        }
        shard.frames.remove(&id);
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btree::page::PageType;

    const PAGE: usize = 4096;

    /// A pager over a file of `n` empty leaves, each naming its own id, and
    /// a pool big enough never to evict.
    fn pager_of(dir: &Path, n: u32) -> Pager {
        let path = dir.join("pages");
        let file = File::create_new(&path).unwrap();
        for id in 0..n {
            let mut p = vec![0u8; PAGE];
            page::set_header(&mut p, PageType::Leaf, 0, id, 0, 0);
            // No cells: they would start at the end of the page.
            p[28..30].copy_from_slice(&(PAGE as u16).to_le_bytes());
            page::seal(&mut p);
            file.write_all_at(&p, id as u64 * PAGE as u64).unwrap();
        }
        Pager::new(file, PAGE, 64 << 20)
    }

    /// Every access of a cached page counts one hit, by either way of
    /// reading it; a read of a page whose write latch is held waits for
    /// the writer (without the shard's lock, which the writer's own reads
    /// need meanwhile) and sees what it wrote.
    #[test]
    fn cached_reads_count_hits_and_wait_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let pager = Arc::new(pager_of(dir.path(), 64));
        for id in 0..64 {
            drop(pager.read(id).unwrap());
        }
        let (hits, misses) = (pager.hits(), pager.misses.load(Ordering::Relaxed));
        assert_eq!((hits, misses), (0, 64));
        for id in 0..64 {
            drop(pager.read(id).unwrap());
            drop(pager.read_for_scan(id).unwrap());
            drop(pager.latch(id).unwrap());
        }
        assert_eq!(pager.hits(), 3 * 64);
        assert_eq!(pager.misses.load(Ordering::Relaxed), 64);
        let mut w = pager.write(7).unwrap();
        let reader = {
            let pager = Arc::clone(&pager);
            std::thread::spawn(move || pager.read(7).unwrap()[100])
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        // The writer reads other pages of the same shards meanwhile.
        for id in 0..64 {
            if id != 7 {
                drop(pager.read(id).unwrap());
            }
        }
        w[100] = 0xAB;
        drop(w);
        assert_eq!(reader.join().unwrap(), 0xAB);
    }

    #[test]
    fn a_scan_turns_over_a_ring_and_keeps_what_is_held_or_used_again() {
        let dir = tempfile::tempdir().unwrap();
        let pager = pager_of(dir.path(), 1000);
        // Page 3 is held through the scan; page 5 is read again by a point
        // read after the scan loaded it.
        let held = pager.read_for_scan(3).unwrap();
        drop(pager.read_for_scan(5).unwrap());
        drop(pager.read(5).unwrap());
        for id in 6..1000 {
            let g = pager.read_for_scan(id).unwrap();
            assert_eq!(page::page_id(&g), id, "a recycled frame holds the page it was loaded with");
        }
        // The scan's pages came and went through the ring: the pool holds
        // about the ring, not the 1,000 pages read.
        assert!(pager.frames() <= SHARDS * RING + 2, "{} frames", pager.frames());
        assert_eq!(page::page_id(&held), 3, "a held frame is never reused");
        let misses = pager.misses.load(Ordering::Relaxed);
        drop(pager.read(3).unwrap());
        drop(pager.read(5).unwrap());
        assert_eq!(pager.misses.load(Ordering::Relaxed), misses, "pages 3 and 5 stayed in the pool");
        // An ordinary read caches as before.
        for id in 100..400 {
            drop(pager.read(id).unwrap());
        }
        assert!(pager.frames() >= 300, "{} frames", pager.frames());
    }
}
