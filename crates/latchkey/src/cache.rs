//! A byte-bounded cache of immutable blocks keyed by (file id, block
//! number), shared by the `lsm` engine (table data blocks) and the `hash`
//! engine (blocks of sealed segments). Sharded by key so concurrent readers
//! rarely meet on one lock; each shard evicts its oldest blocks once over
//! its share of the capacity.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

const SHARDS: usize = 16;

type Key = (u64, u32);

pub(crate) struct BlockCache<V: ?Sized> {
    shards: Box<[Mutex<Shard<V>>]>,
    /// Bytes each shard may hold.
    shard_capacity: usize,
    /// Evicted blocks each shard keeps for reuse (see [`BlockCache::spare`]).
    spares: usize,
    /// Bytes of the capacity held elsewhere ([`BlockCache::reserve`]): each
    /// shard holds its share of the rest.
    reserved: AtomicUsize,
}

struct Shard<V: ?Sized> {
    map: HashMap<Key, (Arc<V>, usize), foldhash::fast::FixedState>,
    order: VecDeque<Key>,
    bytes: usize,
    /// Evicted blocks no one else holds, kept to be refilled.
    spare: Vec<Arc<V>>,
}

impl<V: ?Sized> Shard<V> {
    /// Keeps `block` under `key`, counted as `size` bytes and as the newest
    /// (a block already there is replaced and keeps its place).
    fn put(&mut self, key: Key, block: Arc<V>, size: usize) {
        if self.map.insert(key, (block, size)).is_none() {
            self.order.push_back(key);
            self.bytes += size;
        }
    }
}

impl<V: ?Sized> Default for Shard<V> {
    fn default() -> Self {
        Shard { map: HashMap::default(), order: VecDeque::new(), bytes: 0, spare: Vec::new() }
    }
}

impl<V: ?Sized> BlockCache<V> {
    /// A cache of at most about `capacity` bytes (0: keeps nothing).
    pub(crate) fn new(capacity: usize) -> Self {
        BlockCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            shard_capacity: capacity / SHARDS,
            spares: 0,
            reserved: AtomicUsize::new(0),
        }
    }

    /// Like [`BlockCache::new`], keeping up to `spares` evicted blocks per
    /// shard for [`BlockCache::spare`]: a cache that turns over (random
    /// reads over more data than it holds) then refills memory it already
    /// has instead of allocating, and page-faulting in, a block per miss.
    pub(crate) fn with_spares(capacity: usize, spares: usize) -> Self {
        BlockCache { spares, ..Self::new(capacity) }
    }

    /// An evicted block of the shard `key` belongs to that no one else
    /// holds (so [`Arc::get_mut`] succeeds), to be refilled for `key`.
    pub(crate) fn spare(&self, key: Key) -> Option<Arc<V>> {
        self.shard(key).lock().spare.pop()
    }

    fn shard(&self, key: Key) -> &Mutex<Shard<V>> {
        let h = (key.0 ^ u64::from(key.1).wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        &self.shards[(h >> 60) as usize % SHARDS]
    }

    /// Bytes the cache may hold (reservations included).
    pub(crate) fn capacity(&self) -> usize {
        self.shard_capacity * SHARDS
    }

    /// What each shard may hold now: its share of the capacity not reserved.
    fn shard_room(&self) -> usize {
        self.shard_capacity.saturating_sub(self.reserved.load(Ordering::Acquire) / SHARDS)
    }

    /// Takes `bytes` of the capacity for memory kept elsewhere (the `hash`
    /// engine's resident segments), if that many are free of blocks and of
    /// other reservations and all reservations stay within `limit`; the
    /// blocks then get what is left. Undone by [`BlockCache::release`].
    pub(crate) fn reserve(&self, bytes: usize, limit: usize) -> bool {
        let used = self.bytes();
        let taken = self
            .reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                (used + r + bytes <= self.capacity() && r + bytes <= limit).then_some(r + bytes)
            })
            .is_ok();
        if taken {
            // Blocks inserted since `used` was summed may leave a shard over
            // its new share.
            let room = self.shard_room();
            for s in self.shards.iter() {
                self.evict_to(&mut s.lock(), room);
            }
        }
        taken
    }

    /// Bytes reserved now.
    #[cfg(test)]
    pub(crate) fn reserved(&self) -> usize {
        self.reserved.load(Ordering::Acquire)
    }

    /// Gives back `bytes` taken by [`BlockCache::reserve`].
    pub(crate) fn release(&self, bytes: usize) {
        self.reserved.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Bytes the cache holds now.
    pub(crate) fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().bytes).sum()
    }

    /// Whether `key` is cached.
    pub(crate) fn contains(&self, key: Key) -> bool {
        self.shard(key).lock().map.contains_key(&key)
    }

    /// Keeps `block` (about `size` bytes) only if its shard has room for
    /// it without evicting anything; false if it had not.
    pub(crate) fn insert_if_room(&self, key: Key, block: Arc<V>, size: usize) -> bool {
        let mut s = self.shard(key).lock();
        if s.bytes + size > self.shard_room() {
            return false;
        }
        s.put(key, block, size);
        true
    }

    pub(crate) fn get(&self, key: Key) -> Option<Arc<V>> {
        self.shard(key).lock().map.get(&key).map(|(b, _)| Arc::clone(b))
    }

    /// Calls `f` with the block of `key`, if cached, under its shard's
    /// lock (no reference count taken: for short work on the bytes).
    pub(crate) fn with<R>(&self, key: Key, f: impl FnOnce(&V) -> R) -> Option<R> {
        self.shard(key).lock().map.get(&key).map(|(b, _)| f(b))
    }

    /// Keeps `block` (about `size` bytes) unless it alone is over a shard's share.
    pub(crate) fn insert(&self, key: Key, block: Arc<V>, size: usize) {
        let room = self.shard_room();
        if size > room {
            return;
        }
        let mut s = self.shard(key).lock();
        s.put(key, block, size);
        self.evict_to(&mut s, room);
    }

    /// Evicts the shard's oldest blocks until it holds at most `room` bytes.
    fn evict_to(&self, s: &mut Shard<V>, room: usize) {
        while s.bytes > room {
            let Some(old) = s.order.pop_front() else { break };
            if let Some((mut b, n)) = s.map.remove(&old) {
                s.bytes -= n;
                if s.spare.len() < self.spares && Arc::get_mut(&mut b).is_some() {
                    s.spare.push(b);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_fits_and_evicts_the_oldest() {
        let c: BlockCache<Vec<u8>> = BlockCache::new(SHARDS * 1000);
        for i in 0..10_000u32 {
            c.insert((7, i), Arc::new(vec![i as u8; 10]), 100);
        }
        let kept = (0..10_000u32).filter(|&i| c.get((7, i)).is_some()).count();
        assert!(kept <= SHARDS * 10, "{kept} blocks kept over the capacity");
        assert!(kept >= SHARDS * 5, "only {kept} kept");
        // The newest of each shard survive.
        assert_eq!(c.get((7, 9_999)).map(|b| b[0]), Some((9_999u32 % 256) as u8));
        let none: BlockCache<Vec<u8>> = BlockCache::new(0);
        none.insert((1, 1), Arc::new(vec![1]), 1);
        assert!(none.get((1, 1)).is_none());
    }

    /// `insert_if_room` fills a shard to its share and then refuses,
    /// evicting nothing; `bytes` and `contains` see what it kept.
    #[test]
    fn insert_if_room_never_evicts() {
        let c: BlockCache<Vec<u8>> = BlockCache::new(SHARDS * 1000);
        assert_eq!(c.capacity(), SHARDS * 1000);
        let (mut kept, mut refused) = (Vec::new(), 0);
        for i in 0..1_000u32 {
            if c.insert_if_room((3, i), Arc::new(vec![1]), 100) {
                kept.push(i);
            } else {
                refused += 1;
            }
        }
        assert_eq!((kept.len(), refused), (SHARDS * 10, 1_000 - SHARDS * 10), "every shard filled, then refused");
        assert!(kept.iter().all(|&i| c.contains((3, i))), "a kept block was evicted");
        assert_eq!(c.bytes(), kept.len() * 100);
        assert!(!c.insert_if_room((3, 5_000), Arc::new(vec![1]), SHARDS * 1000));
    }

    /// A reservation takes room from the blocks (evicting what no longer
    /// fits), is refused past the free room or the limit, and is given back.
    #[test]
    fn reservations_take_room_from_blocks_until_released() {
        let c: BlockCache<Vec<u8>> = BlockCache::new(SHARDS * 1000);
        for i in 0..1_000u32 {
            c.insert((5, i), Arc::new(vec![1]), 100);
        }
        assert_eq!(c.bytes(), SHARDS * 1000);
        assert!(!c.reserve(SHARDS * 400, SHARDS * 1000), "reserved over cached blocks");
        let c: BlockCache<Vec<u8>> = BlockCache::new(SHARDS * 1000);
        for i in 0..SHARDS as u32 * 3 {
            c.insert((6, i), Arc::new(vec![1]), 100);
        }
        assert!(!c.reserve(SHARDS * 500, SHARDS * 400), "reserved over the limit");
        assert!(c.reserve(SHARDS * 500, SHARDS * 500));
        assert_eq!(c.reserved(), SHARDS * 500);
        assert!(!c.reserve(SHARDS * 500, SHARDS * 1000), "reserved over the capacity");
        for i in 0..1_000u32 {
            c.insert((7, i), Arc::new(vec![1]), 100);
        }
        assert!(c.bytes() <= SHARDS * 500, "{} bytes of blocks beside the reservation", c.bytes());
        c.release(SHARDS * 500);
        assert_eq!(c.reserved(), 0);
        for i in 0..1_000u32 {
            c.insert((8, i), Arc::new(vec![1]), 100);
        }
        assert_eq!(c.bytes(), SHARDS * 1000, "the released room is used again");
    }

    /// Evicted blocks that no one holds come back as spares (only from a
    /// cache that keeps them, only as many as it keeps); one still held
    /// elsewhere is not reused.
    #[test]
    fn evicted_blocks_come_back_as_spares() {
        let c: BlockCache<[u8]> = BlockCache::with_spares(SHARDS * 100, 2);
        let held: Arc<[u8]> = Arc::from(vec![9u8; 10]);
        c.insert((1, 0), Arc::clone(&held), 100);
        for i in 1..2000u32 {
            c.insert((1, i), Arc::from(vec![i as u8; 10]), 100);
        }
        let mut got = 0;
        for s in 0..SHARDS as u32 {
            while let Some(mut b) = c.spare((1, s)) {
                assert!(Arc::get_mut(&mut b).is_some(), "a spare is held elsewhere");
                assert!(!Arc::ptr_eq(&b, &held));
                got += 1;
            }
        }
        assert!(got > 0 && got <= SHARDS * 2, "{got} spares");
        let plain: BlockCache<[u8]> = BlockCache::new(SHARDS * 100);
        for i in 0..2000u32 {
            plain.insert((1, i), Arc::from(vec![0u8; 10]), 100);
        }
        assert!((0..SHARDS as u32).all(|s| plain.spare((1, s)).is_none()));
    }
}
