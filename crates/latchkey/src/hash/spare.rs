//! Large buffers kept from one merge for the next.
//!
//! Each merge allocates a buffer for its key table and one for each output
//! it reads into memory (tens of megabytes for a few hundred thousand
//! keys), and frees as much: the table it replaces and the inputs' resident
//! bytes. Freed, that memory goes back to the operating system, and the
//! next merge's buffers come back as fresh pages the kernel must fault in
//! and zero one by one: about half of the merge thread's time in the
//! server benchmark (`clear_page_erms`). The merge now gives the freed
//! buffers here and takes its new ones from here, so they are pages the
//! process already has.

use parking_lot::Mutex;

/// Buffers given back, up to a limit of bytes (their capacities).
#[derive(Debug)]
pub(crate) struct Spare {
    bufs: Mutex<Vec<Vec<u8>>>,
    limit: usize,
    /// Buffers handed out again (for tests).
    reused: std::sync::atomic::AtomicU64,
}

impl Spare {
    /// A pool that keeps at most `limit` bytes.
    pub(crate) fn new(limit: usize) -> Spare {
        Spare { bufs: Mutex::new(Vec::new()), limit, reused: Default::default() }
    }

    /// An empty buffer with room for at least `capacity` bytes: the
    /// smallest spare that has it; `None` if none has.
    pub(crate) fn take(&self, capacity: usize) -> Option<Vec<u8>> {
        let mut bufs = self.bufs.lock();
        let fits = bufs.iter().enumerate().filter(|(_, b)| b.capacity() >= capacity);
        let best = fits.min_by_key(|(_, b)| b.capacity()).map(|(i, _)| i)?;
        let mut buf = bufs.swap_remove(best);
        buf.clear();
        self.reused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(buf)
    }

    /// [`Spare::take`], or a new buffer with that capacity.
    pub(crate) fn take_or_new(&self, capacity: usize) -> Vec<u8> {
        self.take(capacity).unwrap_or_else(|| Vec::with_capacity(capacity))
    }

    /// Keeps `buf` for a later [`Spare::take`] if the pool stays within its
    /// limit; otherwise the smallest buffers are let go to make room, or
    /// `buf` itself if it is smaller than all of them.
    pub(crate) fn give(&self, buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > self.limit {
            return;
        }
        let mut dropped = Vec::new();
        {
            let mut bufs = self.bufs.lock();
            bufs.push(buf);
            bufs.sort_unstable_by_key(|b| std::cmp::Reverse(b.capacity()));
            let mut total = 0;
            let keep = bufs.iter().take_while(|b| {
                total += b.capacity();
                total <= self.limit
            });
            let keep = keep.count();
            dropped.extend(bufs.drain(keep..));
        }
        // Freed outside the lock.
        drop(dropped);
    }

    /// Buffers handed out again so far.
    #[cfg(test)]
    pub(crate) fn reused(&self) -> u64 {
        self.reused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes held.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bufs.lock().iter().map(Vec::capacity).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_smallest_fit_first_within_the_limit() {
        let spare = Spare::new(1000);
        assert!(spare.take(1).is_none());
        let a = spare.take_or_new(300);
        assert!(a.capacity() >= 300 && a.is_empty());
        let (a_ptr, a_cap) = (a.as_ptr(), a.capacity());
        let mut b = Vec::with_capacity(600);
        b.extend_from_slice(&[7; 10]);
        let b_cap = b.capacity();
        spare.give(a);
        spare.give(b);
        assert_eq!(spare.bytes(), a_cap + b_cap);
        // The smallest that fits, given back empty.
        let a = spare.take(200).unwrap();
        assert_eq!((a.as_ptr(), a.capacity()), (a_ptr, a_cap));
        assert_eq!(spare.bytes(), b_cap);
        let b = spare.take(500).unwrap();
        assert!(b.is_empty() && b.capacity() == b_cap);
        spare.give(b);
        // None fits: a new one, and the spare stays.
        assert!(spare.take(700).is_none());
        let c = spare.take_or_new(700);
        let (c_ptr, c_cap) = (c.as_ptr(), c.capacity());
        assert!(c_cap >= 700);
        assert_eq!(spare.bytes(), b_cap);
        // Over the limit: the smaller ones are let go.
        spare.give(c);
        assert_eq!(spare.bytes(), c_cap);
        // A buffer larger than the whole limit is not kept, nor an empty one.
        spare.give(Vec::with_capacity(2000));
        spare.give(Vec::new());
        assert_eq!(spare.bytes(), c_cap);
        let c = spare.take(1).unwrap();
        assert_eq!((c.as_ptr(), spare.bytes()), (c_ptr, 0));
    }
}
