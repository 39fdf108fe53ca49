//! The newest bytes of the active segment, kept in memory as they are
//! written.
//!
//! A value written a moment ago is the one most likely read next (a
//! counter's increment reads the previous one; a cache-like workload reads
//! what it just set). Without this, such a read goes to the block cache,
//! whose blocks of the active segment are read from the file the first
//! time (a system call and fresh memory) and compete with the sealed
//! segments' blocks for room. Instead the writer copies every record it
//! appends into a ring buffer of the newest `capacity` bytes, under the
//! keydir's write lock (which it takes anyway to point the keys at them),
//! and a get that finds its location within the ring reads the record
//! there, under the keydir's read lock it already holds.
//!
//! The ring holds one segment: when the writer moves on to the next
//! segment (or writes anywhere but at the ring's end) it starts over. Its
//! memory is reserved from the block cache's capacity when the store opens.

use std::borrow::Cow;
use std::sync::Arc;

use super::segment::{SegId, SegmentCache};

/// A ring of the newest bytes written to one segment.
#[derive(Default)]
pub(crate) struct Tail {
    /// The segment the ring holds bytes of (none while `end == start`).
    seg: SegId,
    /// Segment offset of the first byte written since the ring (re)started.
    start: u64,
    /// Segment offset just past the last byte written.
    end: u64,
    /// Segment offset `o` lives at `ring[o % ring.len()]`.
    ring: Vec<u8>,
    /// The cache the ring's bytes were reserved from (given back on drop).
    cache: Option<Arc<SegmentCache>>,
}

impl Tail {
    /// A ring of `capacity` bytes reserved from `cache`, or an empty one
    /// (which holds nothing) if the cache cannot spare them.
    pub(crate) fn new(capacity: usize, cache: &Arc<SegmentCache>) -> Tail {
        if capacity == 0 || !cache.reserve(capacity, cache.capacity()) {
            return Tail::default();
        }
        // Zeroed memory comes from the system untouched: pages are only
        // backed as the ring is written.
        Tail { ring: vec![0; capacity], cache: Some(Arc::clone(cache)), ..Tail::default() }
    }

    /// Bytes the ring can hold.
    pub(crate) fn capacity(&self) -> usize {
        self.ring.len()
    }

    /// Records that `bytes` were written to segment `seg` at offset `at`.
    pub(crate) fn write(&mut self, seg: SegId, at: u64, bytes: &[u8]) {
        let n = self.ring.len() as u64;
        if n == 0 || bytes.is_empty() {
            return;
        }
        if seg != self.seg || at != self.end {
            (self.seg, self.start, self.end) = (seg, at, at);
        }
        // Only the last `n` bytes can stay.
        let skip = (bytes.len() as u64).saturating_sub(n);
        let (mut at, mut rest) = (at + skip, &bytes[skip as usize..]);
        while !rest.is_empty() {
            let i = (at % n) as usize;
            let take = rest.len().min(self.ring.len() - i);
            self.ring[i..i + take].copy_from_slice(&rest[..take]);
            (at, rest) = (at + take as u64, &rest[take..]);
        }
        self.end += bytes.len() as u64;
    }

    /// The `len` bytes of segment `seg` at `offset`, if the ring still
    /// holds all of them.
    pub(crate) fn get(&self, seg: SegId, offset: u64, len: u32) -> Option<Cow<'_, [u8]>> {
        let n = self.ring.len() as u64;
        let end = offset.checked_add(u64::from(len))?;
        if seg != self.seg || n == 0 || offset < self.start.max(self.end.saturating_sub(n)) || end > self.end {
            return None;
        }
        let (i, len) = ((offset % n) as usize, len as usize);
        match self.ring.get(i..i + len) {
            Some(whole) => Some(Cow::Borrowed(whole)),
            // Wraps around the ring's end.
            None => Some(Cow::Owned([&self.ring[i..], &self.ring[..len - (self.ring.len() - i)]].concat())),
        }
    }

    /// The byte at `offset` of segment `seg`, if the ring holds it.
    pub(crate) fn byte(&self, seg: SegId, offset: u64) -> Option<u8> {
        self.get(seg, offset, 1).map(|b| b[0])
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        if let Some(cache) = &self.cache {
            cache.release(self.ring.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Random writes across segments, checked against a copy of every
    /// segment's bytes: a read returns exactly the bytes written when the
    /// ring still holds them, and it holds every range within its last
    /// `capacity` bytes of the current segment.
    #[test]
    fn reads_return_the_bytes_written_while_the_ring_holds_them() {
        let cache = Arc::new(SegmentCache::new(1 << 20));
        let mut tail = Tail::new(1000, &cache);
        assert_eq!((tail.capacity(), cache.reserved()), (1000, 1000));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut segs: Vec<Vec<u8>> = vec![vec![0; 16]];
        for step in 0..20_000 {
            if rng.gen_ratio(1, 500) {
                segs.push(vec![0; 16]); // the next segment
            }
            let seg = segs.len() as SegId;
            let data = segs.last_mut().unwrap();
            let len = if rng.gen_ratio(1, 100) { rng.gen_range(900..2500) } else { rng.gen_range(1..120) };
            let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            tail.write(seg, data.len() as u64, &bytes);
            data.extend_from_slice(&bytes);
            for _ in 0..4 {
                let s = rng.gen_range(1..=segs.len());
                let data = &segs[s - 1];
                let offset = rng.gen_range(0..data.len() as u64);
                let len = rng.gen_range(0..=(data.len() as u64 - offset).min(1100)) as u32;
                let want = &data[offset as usize..(offset + u64::from(len)) as usize];
                let held = s == segs.len() && offset >= 16.max(data.len() as u64 - 1000.min(data.len() as u64));
                let got = tail.get(s as SegId, offset, len);
                assert_eq!(got.is_some(), held, "step {step}: seg {s} at {offset}+{len}");
                if let Some(got) = got {
                    assert_eq!(&*got, want, "step {step}: seg {s} at {offset}+{len}");
                }
            }
        }
        // A write anywhere but at the end starts over.
        let end = segs.last().unwrap().len() as u64;
        tail.write(segs.len() as SegId, end + 5, b"abc");
        assert_eq!(tail.get(segs.len() as SegId, end + 5, 3).as_deref(), Some(&b"abc"[..]));
        assert!(tail.get(segs.len() as SegId, end - 3, 3).is_none());
        drop(tail);
        assert_eq!(cache.reserved(), 0, "the ring's reservation is given back");
    }

    #[test]
    fn a_cache_that_cannot_spare_the_ring_gets_an_empty_one() {
        let cache = Arc::new(SegmentCache::new(100));
        let mut tail = Tail::new(1000, &cache);
        tail.write(1, 16, b"record");
        assert!(tail.get(1, 16, 6).is_none());
        assert_eq!((tail.capacity(), cache.reserved()), (0, 0));
    }
}
