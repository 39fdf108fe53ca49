//! The pager and buffer pool: pages of the data file read into frames,
//! each frame guarded by a read/write latch, evicted second-chance (CLOCK)
//! when the pool is full. A frame someone holds (a latch, or the writer's
//! list of dirty pages) is never evicted, so dirty pages stay in memory
//! until a checkpoint writes them.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::lock_api::{ArcRwLockReadGuard, ArcRwLockWriteGuard};
use parking_lot::{Mutex, RawRwLock, RwLock};

use super::page;
use crate::error::Result;
use crate::fs::File;

/// A page in memory.
pub(crate) type Latch = Arc<RwLock<Box<[u8]>>>;
pub(crate) type ReadGuard = ArcRwLockReadGuard<RawRwLock, Box<[u8]>>;
pub(crate) type WriteGuard = ArcRwLockWriteGuard<RawRwLock, Box<[u8]>>;

struct Slot {
    latch: Latch,
    referenced: AtomicBool,
}

#[derive(Default)]
struct Shard {
    frames: HashMap<u32, Slot, foldhash::fast::RandomState>,
    clock: VecDeque<u32>,
}

const SHARDS: usize = 16;

pub(crate) struct Pager {
    pub file: File,
    pub page_size: usize,
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl Pager {
    pub fn new(file: File, page_size: usize, cache_bytes: usize) -> Pager {
        let pages = (cache_bytes / page_size).max(SHARDS * 8);
        Pager {
            file,
            page_size,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: pages / SHARDS,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard(&self, id: u32) -> &Mutex<Shard> {
        &self.shards[(id as usize).wrapping_mul(0x9E37_79B9) % SHARDS]
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The frame of page `id`, read from disk (and verified) if not cached.
    pub fn latch(&self, id: u32) -> Result<Latch> {
        if let Some(slot) = self.shard(id).lock().frames.get(&id) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            if !slot.referenced.load(Ordering::Relaxed) {
                slot.referenced.store(true, Ordering::Relaxed);
            }
            return Ok(Arc::clone(&slot.latch));
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let buf = self.read_from_disk(id)?;
        Ok(self.insert(id, buf))
    }

    /// Reads and verifies page `id` from the file.
    pub fn read_from_disk(&self, id: u32) -> Result<Box<[u8]>> {
        let mut buf = vec![0u8; self.page_size].into_boxed_slice();
        self.file.read_exact_at(&mut buf, id as u64 * self.page_size as u64)?;
        page::verify(&buf, id).map_err(|r| page::damaged(self.path(), id, self.page_size, r))?;
        Ok(buf)
    }

    /// Puts a page into the pool unless another thread got there first;
    /// returns the frame that is there.
    pub fn insert(&self, id: u32, buf: Box<[u8]>) -> Latch {
        let mut shard = self.shard(id).lock();
        if let Some(slot) = shard.frames.get(&id) {
            return Arc::clone(&slot.latch);
        }
        self.add_frame(&mut shard, id, buf)
    }

    /// Adds a frame to a shard, evicting one first if the shard is full.
    fn add_frame(&self, shard: &mut Shard, id: u32, buf: Box<[u8]>) -> Latch {
        if shard.frames.len() >= self.per_shard {
            evict(shard);
        }
        let latch = Arc::new(RwLock::new(buf));
        shard.frames.insert(id, Slot { latch: Arc::clone(&latch), referenced: AtomicBool::new(false) });
        shard.clock.push_back(id);
        latch
    }

    pub fn read(&self, id: u32) -> Result<ReadGuard> {
        Ok(self.latch(id)?.read_arc())
    }

    pub fn write(&self, id: u32) -> Result<WriteGuard> {
        Ok(self.latch(id)?.write_arc())
    }

    /// A new page that was never on disk (the file grows at a checkpoint).
    pub fn create(&self, id: u32) -> Latch {
        let mut buf = vec![0u8; self.page_size].into_boxed_slice();
        buf[16..20].copy_from_slice(&id.to_le_bytes());
        let mut shard = self.shard(id).lock();
        shard.frames.remove(&id);
        self.add_frame(&mut shard, id, buf)
    }

    /// Pages the pool holds before it evicts.
    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }
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
