//! The `hash` engine: Bitcask. An in-memory hash index (the keydir) over
//! append-only log segments.
//!
//! - Every write appends records to the active segment and then points the
//!   keydir at them; a read is one keydir lookup and one positioned read.
//! - A delete appends a tombstone and drops the key from the keydir.
//! - Merge ([`merge`]) rewrites closed segments without dead records and
//!   writes a key table ([`table`], the hint file) of what it kept, so
//!   that startup ([`recovery`]) loads those keys with one read and reads
//!   record by record only the segments written since.
//!
//! Locks, always taken in this order: `merge_lock`, `writer`, `keydir`,
//! `segments`. Readers take only `keydir` then `segments`, both shared.

mod keydir;
mod merge;
mod recovery;
mod segment;
mod spare;
mod table;
mod tail;

pub(crate) use recovery::check;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use smallvec::SmallVec;

use crate::background::Background;
use crate::batch::{Op, WriteBatch};
use crate::db::{Iter, KeyValue, Stats, Store};
use crate::durability::Durability;
use crate::error::{Error, Result};
use crate::fs::DirLock;
use crate::log::{FileKind, LogWriter};
use crate::now_ms;
use crate::options::{Options, Sync};
use table::KeyTable;

use keydir::{KeyDir, Loc};
#[cfg(test)]
use segment::CACHE_BLOCK;
use segment::{SegId, Segment};

/// The appending side: the active segment and the sequence counter.
struct Writer {
    log: LogWriter,
    active: Arc<Segment>,
    next_seq: u64,
    /// Generation of the active segment.
    generation: u64,
    /// Record bytes appended since open (a log sequence number for syncing).
    lsn: u64,
    buf: Vec<u8>,
    offsets: Vec<(u64, u32)>,
    /// The keydir changes of deferred records (see [`Inner::append`]),
    /// made once the records are written: a reader must not find a
    /// location the segment does not hold yet.
    deferred: Vec<(Box<[u8]>, Change)>,
}

/// A keydir change waiting for its record to be written.
enum Change {
    Put(Loc),
    /// A delete, with its sequence number.
    Remove(u64),
}

impl Change {
    fn apply(self, kd: &mut KeyDir, key: &[u8]) {
        match self {
            Change::Put(loc) => kd.put(key, loc),
            Change::Remove(seq) => kd.remove(key, seq),
        }
    }
}

#[derive(Default)]
struct Counters {
    writes: AtomicU64,
    user_bytes: AtomicU64,
    disk_bytes: AtomicU64,
    merges: AtomicU64,
    background_errors: AtomicU64,
}

/// Base slots [`Inner::for_each_loc`] visits per hold of the keydir lock.
const LOC_CHUNK: usize = 1 << 14;

/// The longest the background thread waits before it tries a failed merge
/// again: the wait doubles from `background_interval` after each failure.
const MERGE_RETRY_MAX: Duration = Duration::from_secs(60);

pub(crate) struct Inner {
    dir: PathBuf,
    opts: Options,
    keydir: RwLock<KeyDir>,
    segments: RwLock<BTreeMap<SegId, Arc<Segment>>>,
    writer: Mutex<Writer>,
    durability: Durability,
    merge_lock: Mutex<()>,
    /// Cached segment blocks (`Options::block_cache_size` bytes): see [`Segment`].
    cache: Arc<segment::SegmentCache>,
    /// Bytes the cache may have reserved for segments read whole: half
    /// of it, beyond the ring of newest writes (see [`tail`]).
    resident_limit: usize,
    /// Buffers of merged-away resident segments and replaced key tables,
    /// kept for the next merge (at most `resident_limit` bytes).
    spare: Arc<spare::Spare>,
    counters: Counters,
    /// Bytes of expired records the keydir still points at, as of the last
    /// sweep; counted as dead for the merge trigger.
    expired_bytes: AtomicU64,
    _lock: DirLock,
}

/// The `hash` engine behind a `Db`.
pub(crate) struct HashStore {
    inner: Arc<Inner>,
    background: Background,
}

impl HashStore {
    pub(crate) fn open(dir: &Path, opts: Options) -> Result<HashStore> {
        let lock = crate::fs::lock_dir(dir)?;
        let started = Instant::now();
        let r = recovery::recover(dir, &opts)?;
        tracing::info!(
            dir = %dir.display(),
            keys = r.keydir.len(),
            segments = r.segments.len(),
            table_keys = r.table_keys,
            scanned = r.scanned,
            ms = started.elapsed().as_millis() as u64,
            "hash engine opened"
        );
        let cache = Arc::new(segment::SegmentCache::with_spares(opts.block_cache_size, 4));
        let mut keydir = r.keydir;
        // A quarter of the cache holds the newest writes (no more than a
        // segment, as the ring starts over with each).
        let ring = (opts.block_cache_size / 4).min(usize::try_from(opts.segment_size).unwrap_or(usize::MAX));
        keydir.tail = tail::Tail::new(ring, &cache);
        let resident_limit = cache.capacity() / 2 + keydir.tail.capacity();
        let inner = Arc::new(Inner {
            dir: dir.to_owned(),
            opts,
            keydir: RwLock::new(keydir),
            segments: RwLock::new(r.segments),
            writer: Mutex::new(Writer {
                log: r.log,
                active: r.active,
                next_seq: r.next_seq,
                generation: r.generation,
                lsn: 0,
                buf: Vec::new(),
                offsets: Vec::new(),
                deferred: Vec::new(),
            }),
            durability: Durability::default(),
            merge_lock: Mutex::new(()),
            cache,
            resident_limit,
            spare: Arc::new(spare::Spare::new(resident_limit)),
            counters: Counters::default(),
            expired_bytes: AtomicU64::new(0),
            _lock: lock,
        });
        let (bg, syncs, warm) = (Arc::clone(&inner), Arc::clone(&inner), Arc::clone(&inner));
        let background = Background::spawn("latchkey-hash-bg", dir, move |stop| bg.background(stop))?
            .with_thread_if(inner.opts.warm_cache, "latchkey-hash-warm", dir, move |stop| warm.warm_cache(&stop))?
            .with_interval_syncs("latchkey-hash-sync", dir, inner.opts.sync.interval(), move || {
                syncs.durability.interval_sync(|| syncs.sync_all(), &syncs.counters.background_errors)
            })?;
        Ok(HashStore { inner, background })
    }
}

impl Drop for HashStore {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "closing the hash engine failed");
        }
    }
}

impl Store for HashStore {
    fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u64)>> {
        self.inner.durability.check_open()?;
        self.inner.get(key)
    }

    fn prefetch(&self, keys: &[&[u8]]) {
        self.inner.prefetch(keys);
    }

    fn write(&self, batch: &WriteBatch, durable: bool) -> Result<()> {
        let sync = durable && self.inner.opts.sync == Sync::Always;
        let lsn = self.inner.append(batch, sync)?;
        if sync {
            self.inner.sync_to(lsn)?;
        }
        Ok(())
    }

    fn scan(&self, range: (Bound<Vec<u8>>, Bound<Vec<u8>>), now_ms: u64) -> Result<Iter> {
        self.inner.durability.check_open()?;
        Ok(self.inner.scan(range, now_ms))
    }

    fn sync(&self) -> Result<()> {
        self.inner.durability.check_open()?;
        self.inner.sync_all()
    }

    fn compact(&self) -> Result<()> {
        self.inner.durability.check_open()?;
        merge::merge(&self.inner).map(|_| ())
    }

    fn stats(&self) -> Stats {
        self.inner.stats()
    }

    fn close(&self) -> Result<()> {
        self.inner.durability.close(
            || self.background.stop(|| {}),
            || {
                self.inner.sync_all()?;
                // A clean close leaves no preallocated space behind.
                self.inner.writer.lock().log.seal()?;
                // Only a speed-up for the next open: if it cannot be
                // written, startup reads the segments instead.
                if let Err(e) = self.inner.write_close_table() {
                    tracing::warn!(error = %e, "no key table written at close; the next open reads the segments");
                }
                Ok(())
            },
        )
    }

    fn crash(&self) {
        let _ = self.inner.durability.close(|| self.background.stop(|| {}), || Ok(()));
    }

    fn active_log(&self) -> Option<(PathBuf, u64)> {
        let w = self.inner.writer.lock();
        Some((w.log.file().path().to_owned(), w.log.len()))
    }
}

impl Inner {
    fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u64)>> {
        // First by the key's hash alone, its key checked in the record (a
        // key-table probe then reads no stored key); if the record there is
        // another key's, by the key itself.
        if let Some(found) = self.get_at(key, false)? {
            return Ok(found);
        }
        Ok(self.get_at(key, true)?.flatten())
    }

    /// `Some(value or none)` if answered; `None` if the location found by
    /// hash held another key (only when `verified` is false).
    #[allow(clippy::type_complexity)]
    fn get_at(&self, key: &[u8], verified: bool) -> Result<Option<Option<(Vec<u8>, u64)>>> {
        // The keydir lock is held while the segment is looked up, so a merge
        // (which repoints keys before it drops segments) cannot slip between;
        // a record in the ring of newest writes (which the lock guards) or
        // of a segment held in memory whole is read under it too (no
        // reference to the segment taken), any other after it is let go.
        let kd = self.keydir.read();
        let loc = if verified { kd.get(key) } else { kd.get_by_hash(key) };
        let Some(loc) = loc else {
            return Ok(Some(None));
        };
        let value = if let Some(buf) = kd.tail.get(loc.seg, loc.offset, loc.len) {
            // Written a moment ago: still in memory (see [`tail`]).
            let damage = |why| Error::corruption(segment::data_path(&self.dir, loc.seg), loc.offset, why);
            segment::value_of(&buf, key).map_err(damage)?
        } else {
            let segs = self.segments.read();
            let seg = segs.get(&loc.seg).ok_or_else(|| {
                Error::corruption(
                    &self.dir,
                    loc.offset,
                    format!("index points at missing segment {}", segment::data_name(loc.seg)),
                )
            })?;
            if seg.is_resident() {
                seg.read_value_of(key, loc.offset, loc.len, &self.cache)?
            } else {
                let seg = Arc::clone(seg);
                drop((segs, kd));
                seg.read_value_of(key, loc.offset, loc.len, &self.cache)?
            }
        };
        let value = match value {
            None if verified => {
                let path = segment::data_path(&self.dir, loc.seg);
                return Err(Error::corruption(path, loc.offset, "record is not the one the index points at"));
            }
            v => v,
        };
        Ok(value.map(|v| Some((v, loc.expires_at))))
    }

    /// See [`crate::Db::prefetch`]. In two passes under one keydir lock:
    /// the lookups (whose loads the CPU runs ahead into the next key's),
    /// then a load of the first and last byte of each record in memory
    /// (independent of each other, so their misses overlap).
    fn prefetch(&self, keys: &[&[u8]]) {
        let kd = self.keydir.read();
        let locs: SmallVec<[Loc; 32]> = keys.iter().filter_map(|k| kd.get_by_hash(k)).collect();
        let segs = self.segments.read();
        let mut sink = 0u8;
        for loc in &locs {
            let touch = |at: u64| {
                kd.tail.byte(loc.seg, at).or_else(|| segs.get(&loc.seg).and_then(|s| s.resident_byte(at))).unwrap_or(0)
            };
            sink ^= touch(loc.offset) ^ touch(loc.offset + u64::from(loc.len.max(1)) - 1);
        }
        std::hint::black_box(sink);
    }

    fn scan(&self, range: (Bound<Vec<u8>>, Bound<Vec<u8>>), now_ms: u64) -> Iter {
        let (mut items, segments) = {
            let kd = self.keydir.read();
            let mut items: Vec<(Vec<u8>, Loc)> = Vec::new();
            kd.for_each(|k, loc| {
                if !loc.expired(now_ms) && range_contains(&range, k) {
                    items.push((k.to_vec(), *loc));
                }
            });
            (items, self.segments.read().clone())
        };
        items.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let cache = Arc::clone(&self.cache);
        let read = move |(key, loc): (Vec<u8>, Loc)| -> Result<KeyValue> {
            let seg = segments.get(&loc.seg).ok_or_else(|| {
                Error::corruption(segment::data_name(loc.seg), loc.offset, "segment missing during scan")
            })?;
            let value = seg.read_value(&key, loc.offset, loc.len, &cache)?;
            Ok((key, value))
        };
        Iter::new(Box::new(items.into_iter().map(read)))
    }

    /// Logs `batch` and points the keydir at its records; returns the log
    /// position that makes it durable. With `defer` (the caller syncs
    /// next) the records are held for the fsync's leader to write with the
    /// group's, and the keydir learns of them then.
    fn append(&self, batch: &WriteBatch, defer: bool) -> Result<u64> {
        let mut guard = self.writer.lock();
        self.durability.check_writable()?;
        let w = &mut *guard;
        let seq = w.next_seq;
        w.next_seq += 1;
        batch.encode(seq, &mut w.buf, &mut w.offsets);
        if w.log.end() + w.buf.len() as u64 > self.opts.segment_size && !w.log.is_empty() {
            self.rotate(w)?;
        }
        let seg = w.active.id;
        let change = |op: &Op, &(rel, len): &(u64, u32), base: u64| match op {
            Op::Put { expires_at, .. } => {
                Change::Put(Loc { seg, offset: base + rel, len, seq, expires_at: *expires_at })
            }
            Op::Delete { .. } => Change::Remove(seq),
        };
        if defer {
            let base = w.log.defer(&w.buf);
            let changes = batch.ops.iter().zip(&w.offsets).map(|(op, at)| (op.key().into(), change(op, at, base)));
            w.deferred.extend(changes);
        } else {
            self.write_deferred(w)?;
            let base = w.log.append(&w.buf).inspect_err(|e| self.durability.poison(e))?;
            w.active.set_size(w.log.len());
            let mut kd = self.keydir.write();
            kd.tail.write(seg, base, &w.buf);
            for (op, at) in batch.ops.iter().zip(&w.offsets) {
                change(op, at, base).apply(&mut kd, op.key());
            }
        }
        w.lsn += w.buf.len() as u64;
        let c = &self.counters;
        c.writes.fetch_add(1, Ordering::Relaxed);
        c.user_bytes.fetch_add(batch.size_bytes() as u64, Ordering::Relaxed);
        c.disk_bytes.fetch_add(w.buf.len() as u64, Ordering::Relaxed);
        Ok(w.lsn)
    }

    /// Writes the records deferred by writers waiting for an fsync, then
    /// makes their keydir changes.
    fn write_deferred(&self, w: &mut Writer) -> Result<()> {
        if !w.log.has_deferred() {
            return Ok(());
        }
        let seg = w.active.id;
        let kd = w.log.flush_then(|at, written| {
            let mut kd = self.keydir.write();
            kd.tail.write(seg, at, written);
            kd
        });
        let Some(mut kd) = kd.inspect_err(|e| self.durability.poison(e))? else {
            return Ok(());
        };
        w.active.set_size(w.log.len());
        for (key, change) in w.deferred.drain(..) {
            change.apply(&mut kd, &key);
        }
        Ok(())
    }

    /// At a clean close (everything synced): writes a key table of every
    /// live key, covering every segment, so the next open loads it with one
    /// read instead of reading the segments written since the last merge.
    /// The table is named after the active segment, which sorts after every
    /// older table; the next open starts a new active segment. Skipped when
    /// the segments the newest table does not cover hold less than a
    /// quarter of `segment_size`.
    fn write_close_table(&self) -> Result<()> {
        let _no_merge = self.merge_lock.lock();
        let w = self.writer.lock();
        let kd = self.keydir.read();
        let (covers, unread): (Vec<SegId>, u64) = {
            let segs = self.segments.read();
            let unread = segs.values().filter(|s| kd.base_segments().binary_search(&s.id).is_err()).map(|s| s.size());
            (segs.keys().copied().collect(), unread.sum())
        };
        // Not worth it below a quarter segment: the next open reads that
        // little quickly and goes on appending to the same active segment
        // (a table makes it start a new one), so short sessions do not
        // leave a segment file each.
        if unread < self.opts.segment_size / 4 {
            return Ok(());
        }
        let now = now_ms();
        let mut entries: Vec<(Box<[u8]>, Loc)> = Vec::with_capacity(kd.len());
        kd.for_each(|k, loc| {
            if !loc.expired(now) {
                entries.push((k.into(), *loc));
            }
        });
        drop(kd);
        let Some(bytes) =
            KeyTable::encode_covering(&entries, &covers, w.next_seq.saturating_sub(1), Vec::with_capacity)
        else {
            return Ok(()); // over the table's limits: the next open reads the segments
        };
        let path = segment::table_path(&self.dir, w.active.id);
        let tmp = merge::tmp_path(&path);
        let f = crate::fs::File::create_new(&tmp)?;
        f.write_all_at(&bytes, 0)?;
        f.sync_data()?;
        drop(f);
        crate::fs::rename(&tmp, &path)?;
        crate::fs::sync_dir(&self.dir)?;
        for old in merge::table_ids(&self.dir)?.into_iter().filter(|&id| id != w.active.id) {
            crate::fs::remove_file(&segment::table_path(&self.dir, old))?;
        }
        crate::fs::sync_dir(&self.dir)?;
        tracing::info!(keys = entries.len(), segments = covers.len(), "key table written at close");
        Ok(())
    }

    /// Seals the active segment (synced, cut to its records) and starts
    /// the next generation's.
    fn rotate(&self, w: &mut Writer) -> Result<()> {
        self.write_deferred(w)?;
        if let Err(e) = w.log.seal() {
            self.durability.poison(&e);
            return Err(e);
        }
        self.durability.mark_synced(w.lsn);
        w.active.seal();
        let generation = w.generation + 1;
        let id = segment::active_id(generation);
        let log = LogWriter::create(&segment::data_path(&self.dir, id), FileKind::Data)?.preallocate();
        crate::fs::sync_dir(&self.dir)?;
        let active = Arc::new(Segment::open(&self.dir, id)?);
        self.segments.write().insert(id, Arc::clone(&active));
        w.log = log;
        w.active = active;
        w.generation = generation;
        Ok(())
    }

    /// Makes everything written so far durable.
    fn sync_all(&self) -> Result<()> {
        let lsn = self.writer.lock().lsn;
        self.sync_to(lsn)
    }

    /// Makes the log durable up to `lsn`; older segments were synced when
    /// they were sealed.
    fn sync_to(&self, lsn: u64) -> Result<()> {
        self.durability.sync_to(lsn, || {
            let mut w = self.writer.lock();
            self.write_deferred(&mut w)?;
            let active = Arc::clone(&w.active);
            Ok((w.lsn, move || active.file().sync_data()))
        })
    }

    fn stats(&self) -> Stats {
        let (keys, live) = {
            let kd = self.keydir.read();
            (kd.len() as u64, kd.live.values().sum())
        };
        let segs = self.segments.read();
        let c = &self.counters;
        Stats {
            engine: "hash",
            keys,
            disk_bytes: segs.values().map(|s| s.size()).sum(),
            live_bytes: live,
            files: segs.len() as u64,
            writes: c.writes.load(Ordering::Relaxed),
            user_bytes_written: c.user_bytes.load(Ordering::Relaxed),
            disk_bytes_written: c.disk_bytes.load(Ordering::Relaxed),
            syncs: self.durability.syncs.load(Ordering::Relaxed),
            merges: c.merges.load(Ordering::Relaxed),
            background_errors: c.background_errors.load(Ordering::Relaxed),
            ..Stats::default()
        }
    }

    /// True when enough bytes are dead for a merge to start by itself.
    fn merge_due(&self) -> bool {
        let (dead, total) = self.garbage();
        dead >= self.opts.merge_min_dead_bytes && dead as f64 >= self.opts.merge_dead_ratio * total as f64
    }

    /// Dead bytes (expired ones included) and total bytes over all segments.
    fn garbage(&self) -> (u64, u64) {
        let kd = self.keydir.read();
        let segs = self.segments.read();
        let total: u64 = segs.values().map(|s| s.size()).sum();
        let live: u64 = kd.live.values().sum::<u64>().saturating_sub(self.expired_bytes.load(Ordering::Relaxed));
        (total.saturating_sub(live), total)
    }

    /// Counts the bytes of expired records, so that keys whose time ran out
    /// are reclaimed by a merge even when nothing else is dead.
    fn sweep_expired(&self) {
        let now = crate::db::now_ms();
        let mut expired = 0u64;
        self.for_each_loc(|loc| loc.expired(now), |loc| expired += loc.len as u64);
        self.expired_bytes.store(expired, Ordering::Relaxed);
    }

    /// Calls `f` with the location of every live key that `wanted` accepts:
    /// the overlay's in one hold of the keydir's read lock, then the base's
    /// in chunks of [`LOC_CHUNK`] slots, each under its own, so writers
    /// wait for one chunk at most (a whole-keydir walk of a million keys
    /// held them for tens of milliseconds). A base entry is looked up in
    /// the overlay only if `wanted` accepts it. Keys written between
    /// chunks may be seen in either layer or, when a write hides a base
    /// entry not yet visited, not at all.
    fn for_each_loc(&self, wanted: impl Fn(&Loc) -> bool, mut f: impl FnMut(&Loc)) {
        self.keydir.read().overlay_locs(|loc| {
            if wanted(loc) {
                f(loc);
            }
        });
        let slots = self.keydir.read().base_slots();
        for start in (0..slots).step_by(LOC_CHUNK) {
            self.keydir.read().base_locs(start..start + LOC_CHUNK, &wanted, &mut f);
        }
    }

    /// After open: reads the segments into memory, newest first, until the
    /// block cache is nearly full or every segment is in, so the first
    /// gets after a restart find their values in memory instead of reading
    /// a block each with a system call (as the btree engine warms its
    /// buffer pool). A sealed segment is read whole while up to half the
    /// cache's capacity can be reserved for it ([`Segment::make_resident`]:
    /// its reads then take no lock); otherwise its blocks are cached.
    /// Nothing is evicted for it: once the cache's shards have refused a
    /// few chunks' worth of blocks, it is as full as the warm-up will make
    /// it. A segment merged away meanwhile is skipped. It stops when the
    /// store closes.
    fn warm_cache(&self, stop: &mpsc::Receiver<()>) {
        const CHUNK: u64 = 64;
        let full = self.cache.capacity() / 16 * 15;
        let started = Instant::now();
        let mut refused = 0;
        let segments: Vec<Arc<Segment>> = self.segments.read().values().rev().cloned().collect();
        'segments: for seg in segments {
            if !self.segments.read().contains_key(&seg.id) {
                continue; // merged away since
            }
            // A sealed segment is read whole if the cache can spare it,
            // up to half the cache besides the ring of newest writes (the
            // rest is for blocks, the active segment's among them).
            match seg.make_resident(&self.cache, &self.spare, self.resident_limit) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "warming the block cache stopped");
                    return;
                }
            }
            let mut i = 0;
            while i < seg.cacheable_blocks() {
                if !matches!(stop.try_recv(), Err(mpsc::TryRecvError::Empty)) {
                    return;
                }
                if self.cache.bytes() >= full || refused > 4 * CHUNK {
                    break 'segments;
                }
                if !self.segments.read().contains_key(&seg.id) {
                    continue 'segments;
                }
                for j in i..i + CHUNK {
                    match seg.prefill(j, &self.cache) {
                        Ok(true) => {}
                        Ok(false) => refused += 1,
                        Err(e) => {
                            tracing::warn!(error = %e, "warming the block cache stopped");
                            return;
                        }
                    }
                }
                i += CHUNK;
            }
        }
        let resident: usize = self.segments.read().values().map(|s| s.resident_bytes()).sum();
        let (blocks, ms) = (self.cache.bytes() as u64, started.elapsed().as_millis() as u64);
        tracing::debug!(resident, blocks, ms, "segments read into memory after open");
    }

    /// The background thread: automatic merges and expiry sweeps, until
    /// the sender side of `stop` is dropped.
    fn background(&self, stop: mpsc::Receiver<()>) {
        let tick = self.opts.background_interval;
        let mut last_merge_check = Instant::now();
        // After a failed merge (a full disk, a directory gone), wait longer
        // each time before trying again, instead of failing every tick.
        let mut merge_wait = self.opts.background_interval;
        let mut last_sweep = Instant::now();
        let errors = &self.counters.background_errors;
        while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(tick) {
            if last_sweep.elapsed() >= self.opts.background_interval * 10 {
                last_sweep = Instant::now();
                self.sweep_expired();
            }
            if last_merge_check.elapsed() >= merge_wait {
                last_merge_check = Instant::now();
                match merge::merge_if_due(self) {
                    Ok(()) => merge_wait = self.opts.background_interval,
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        merge_wait = (merge_wait * 2).min(MERGE_RETRY_MAX);
                        let retry_in_ms = merge_wait.as_millis() as u64;
                        tracing::error!(error = %e, retry_in_ms, "background merge failed");
                    }
                }
            }
        }
    }
}

fn range_contains(range: &(Bound<Vec<u8>>, Bound<Vec<u8>>), key: &[u8]) -> bool {
    let lo = match &range.0 {
        Bound::Included(s) => key >= s.as_slice(),
        Bound::Excluded(s) => key > s.as_slice(),
        Bound::Unbounded => true,
    };
    let hi = match &range.1 {
        Bound::Included(e) => key <= e.as_slice(),
        Bound::Excluded(e) => key < e.as_slice(),
        Bound::Unbounded => true,
    };
    lo && hi
}

/// Fuzzing hook (see `crate::fuzzing`): a key table from raw bytes, looked into.
pub(crate) fn exercise_key_table_for_fuzzing(path: &Path, data: Vec<u8>) {
    let Ok(t) = table::KeyTable::from_bytes(path, data) else { return };
    let keys: Vec<Vec<u8>> = t.iter().take(64).map(|(k, _)| k.to_vec()).collect();
    for k in &keys {
        let _ = t.get(k);
    }
    let _ = (t.len(), t.max_seq(), t.live_bytes(), t.segments().len());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The live bytes the keydir keeps count of (with the base's entries
    /// that overlay entries hide taken off, in batches) equal a recount of
    /// every live key's record, after a merge, writes and deletes, and a
    /// crash and recovery (whose overlay then hides many base entries).
    #[test]
    fn live_bytes_agree_with_a_recount() {
        let dir = tempfile::tempdir().unwrap();
        let opts = || Options { background_interval: Duration::from_secs(3600), ..Options::new(crate::Engine::Hash) };
        let recount = |store: &HashStore| {
            let mut sum = 0u64;
            store.inner.for_each_loc(|_| true, |loc| sum += u64::from(loc.len));
            (store.inner.keydir.read().live.values().sum::<u64>(), sum)
        };
        let store = HashStore::open(dir.path(), opts()).unwrap();
        let value = |i: u32, round: u32| vec![b'v'; (i % 50 + round * 7) as usize];
        for i in 0..2_000u32 {
            store.write(WriteBatch::new().put(format!("k{i:05}"), value(i, 0)), false).unwrap();
        }
        store.compact().unwrap();
        let (kept, counted) = recount(&store);
        assert_eq!(kept, counted);
        for i in (0..2_000u32).step_by(3) {
            let key = format!("k{i:05}");
            let mut batch = WriteBatch::new();
            if i % 2 == 0 {
                batch.put(key, value(i, 1));
            } else {
                batch.delete(key);
            }
            store.write(&batch, false).unwrap();
        }
        for i in 2_000..2_100u32 {
            store.write(WriteBatch::new().put(format!("k{i:05}"), value(i, 2)), false).unwrap();
        }
        let (kept, counted) = recount(&store);
        assert_eq!(kept, counted);
        store.sync().unwrap();
        store.crash();
        drop(store);
        let store = HashStore::open(dir.path(), opts()).unwrap();
        assert!(store.inner.keydir.read().overlay_len() > 700, "the recovered writes are in the overlay");
        let (kept, counted) = recount(&store);
        assert_eq!(kept, counted, "after recovery");
        store.compact().unwrap();
        let (kept, counted) = recount(&store);
        assert_eq!(kept, counted, "after a second merge");
    }

    /// A merge holds the merge lock for as long as it runs (seconds on a
    /// big store); the interval syncs go on meanwhile, on their own thread.
    #[test]
    fn interval_syncs_go_on_while_a_merge_runs() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            sync: Sync::Interval(20),
            background_interval: Duration::from_millis(10),
            ..Options::new(crate::Engine::Hash)
        };
        let store = HashStore::open(dir.path(), opts).unwrap();
        let merging = store.inner.merge_lock.lock();
        let synced = crate::background::synced_soon_after(&store.inner.durability.syncs, || {
            store.write(WriteBatch::new().put("k", "v"), false).unwrap()
        });
        drop(merging);
        assert!(synced, "no interval sync while a merge held its lock");
    }

    /// Gets of the newest writes are answered from the ring of the active
    /// segment's newest bytes, older ones from the segments: random puts
    /// and deletes of random sizes (records wrap around the ring's end and
    /// fill segments), every get checked against a `BTreeMap`, with a
    /// reopen between rounds; in the last round four writers under
    /// `Sync::Always`, whose records a group's leader writes.
    #[test]
    fn gets_of_new_writes_come_from_the_ring_and_agree_with_a_model() {
        use rand::{Rng, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let opts = |sync| Options {
            segment_size: 256 << 10,
            block_cache_size: 64 << 10, // a 16 KiB ring
            sync,
            ..Options::new(crate::Engine::Hash)
        };
        let mut model = std::collections::BTreeMap::<Vec<u8>, Vec<u8>>::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let (mut from_ring, mut elsewhere) = (0, 0);
        for round in 0..3 {
            let store = HashStore::open(dir.path(), opts(Sync::Never)).unwrap();
            assert_eq!(store.inner.keydir.read().tail.capacity(), 16 << 10);
            for (k, v) in &model {
                assert_eq!(store.get(k).unwrap().map(|(v, _)| v).as_ref(), Some(v), "round {round}, after reopen");
            }
            for _ in 0..3_000 {
                let key = format!("k{:03}", rng.gen_range(0..300)).into_bytes();
                if rng.gen_ratio(1, 10) {
                    store.write(WriteBatch::new().delete(&key), false).unwrap();
                    model.remove(&key);
                } else {
                    let len = if rng.gen_ratio(1, 20) { rng.gen_range(2_000..6_000) } else { rng.gen_range(0..200) };
                    let value: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                    store.write(WriteBatch::new().put(&key, &value), false).unwrap();
                    model.insert(key, value);
                }
                for _ in 0..2 {
                    let key = format!("k{:03}", rng.gen_range(0..300)).into_bytes();
                    let held = {
                        let kd = store.inner.keydir.read();
                        kd.get(&key).is_some_and(|l| kd.tail.get(l.seg, l.offset, l.len).is_some())
                    };
                    *(if held { &mut from_ring } else { &mut elsewhere }) += 1;
                    assert_eq!(store.get(&key).unwrap().map(|(v, _)| v), model.get(&key).cloned(), "round {round}");
                }
            }
            store.close().unwrap();
        }
        assert!(from_ring > 1_000 && elsewhere > 1_000, "{from_ring} gets from the ring, {elsewhere} elsewhere");
        // Group commit: each writer reads its own write back at once.
        let store = Arc::new(HashStore::open(dir.path(), opts(Sync::Always)).unwrap());
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..300 {
                        let (key, value) = (format!("w{t}-{}", i % 50), format!("{t}:{i}:{}", "x".repeat(i % 90)));
                        store.write(WriteBatch::new().put(&key, &value), true).unwrap();
                        let got = store.get(key.as_bytes()).unwrap().map(|(v, _)| v);
                        assert_eq!(got.as_deref(), Some(value.as_bytes()), "writer {t}, write {i}");
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        for (k, v) in &model {
            assert_eq!(store.get(k).unwrap().map(|(v, _)| v).as_ref(), Some(v));
        }
    }

    /// After a reopen the warm-up reads the segments into the block cache:
    /// every cacheable block when the cache is big enough, otherwise up to
    /// the cache's size (nothing evicted for it, the newest segment first);
    /// with `warm_cache` off the cache starts empty. Every key reads back
    /// in each case.
    #[test]
    fn the_block_cache_is_warmed_after_open_up_to_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let opts = |block_cache_size, warm_cache| Options {
            segment_size: 64 << 10,
            block_cache_size,
            warm_cache,
            sync: Sync::Never,
            ..Options::new(crate::Engine::Hash)
        };
        let value = |i: u32| vec![(i % 251) as u8; 200 + (i % 7) as usize];
        let store = HashStore::open(dir.path(), opts(8 << 20, false)).unwrap();
        for i in 0..2_000u32 {
            store.write(WriteBatch::new().put(format!("key{i:05}"), value(i)), false).unwrap();
        }
        store.close().unwrap();
        drop(store);
        // Bytes of each segment in memory: whole (resident) or as cached blocks.
        let in_memory = |store: &HashStore| {
            let segs: Vec<_> = store.inner.segments.read().values().cloned().collect();
            assert!(segs.len() >= 6, "{} segments", segs.len());
            let cached = |s: &Segment| {
                (0..s.cacheable_blocks()).filter(|&i| store.inner.cache.contains((s.id, i as u32))).count()
            };
            segs.iter().map(|s| s.resident_bytes() + cached(s) * CACHE_BLOCK as usize).collect::<Vec<_>>()
        };
        let resident =
            |store: &HashStore| -> usize { store.inner.segments.read().values().map(|s| s.resident_bytes()).sum() };
        let settled = |store: &HashStore| {
            let until = Instant::now() + Duration::from_secs(10);
            let mut last = usize::MAX;
            while Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50));
                let now = store.inner.cache.bytes() + store.inner.cache.reserved();
                if now == last {
                    return now;
                }
                last = now;
            }
            panic!("the warm-up did not settle in 10 s");
        };
        let read_back = |store: &HashStore| {
            for i in 0..2_000u32 {
                let got = store.get(format!("key{i:05}").as_bytes()).unwrap().map(|(v, _)| v);
                assert_eq!(got, Some(value(i)), "key {i}");
            }
        };
        // A cache smaller than the data: filled to at most its size, at most
        // half of it with resident segments (beyond the ring of newest
        // writes, a quarter of it), from the newest segment.
        let small = 16 * 2 * (CACHE_BLOCK as usize + 64);
        let store = HashStore::open(dir.path(), opts(small, true)).unwrap();
        let held = settled(&store);
        let reserved = store.inner.cache.reserved();
        let ring = store.inner.keydir.read().tail.capacity();
        assert_eq!(ring, (small / 4).min(64 << 10));
        assert_eq!(
            store.inner.resident_limit,
            small / 2 + ring,
            "half the cache for resident segments, beyond the ring"
        );
        assert!(
            held > 0 && held <= small && reserved - ring <= small / 2 && reserved - ring > 0,
            "{held} bytes held, {reserved} reserved ({ring} by the ring), of {small}"
        );
        let per_seg = in_memory(&store);
        let (older, newer) = per_seg.split_at(per_seg.len() / 2);
        assert!(newer.iter().sum::<usize>() > older.iter().sum(), "the newest segments first: {per_seg:?}");
        read_back(&store);
        drop(store);

        // A cache that holds everything: every sealed segment is read whole
        // (reserved in the cache), the active one's full blocks are cached.
        let store = HashStore::open(dir.path(), opts(8 << 20, true)).unwrap();
        settled(&store);
        let segs: Vec<_> = store.inner.segments.read().values().cloned().collect();
        for s in &segs {
            if s.sealed() {
                assert_eq!(s.resident_bytes(), s.size() as usize, "segment {} is not resident", s.id);
            } else {
                let blocks = s.cacheable_blocks() as u32;
                assert!((0..blocks).all(|i| store.inner.cache.contains((s.id, i))), "active segment {}", s.id);
            }
        }
        let before = resident(&store);
        assert!(before > 0);
        // The ring of newest writes is reserved too: a quarter of the
        // cache, at most a segment.
        let ring = store.inner.keydir.read().tail.capacity();
        assert_eq!(ring, 64 << 10);
        assert_eq!(store.inner.cache.reserved(), before + ring);
        read_back(&store);
        // A merge drops the segments it read (their memory is given back)
        // and reads its outputs whole in their place.
        let inputs: Vec<SegId> = segs.iter().filter(|s| s.sealed()).map(|s| s.id).collect();
        drop(segs);
        store.compact().unwrap();
        let segs: Vec<_> = store.inner.segments.read().values().cloned().collect();
        let outputs: Vec<_> = segs.iter().filter(|s| s.sealed() && !inputs.contains(&s.id)).collect();
        assert!(!outputs.is_empty() && segs.iter().all(|s| !inputs.contains(&s.id)));
        for s in outputs {
            assert_eq!(s.resident_bytes(), s.size() as usize, "merge output {} is not resident", s.id);
        }
        assert_eq!(store.inner.cache.reserved(), resident(&store) + ring, "the inputs' reservations are given back");
        read_back(&store);
        drop(segs);
        // Their buffers are kept for the next merge, within the limit, and
        // the next merge takes its outputs' and its key table's from there.
        let spare = &store.inner.spare;
        assert!(spare.bytes() > 0 && spare.bytes() <= store.inner.resident_limit, "{} spare bytes", spare.bytes());
        let reused = spare.reused();
        for i in (0..2_000u32).step_by(3) {
            store.write(WriteBatch::new().put(format!("key{i:05}"), value(i)), false).unwrap();
        }
        store.compact().unwrap();
        assert!(spare.reused() >= reused + 2, "{} buffers reused, {reused} before", spare.reused());
        assert!(spare.bytes() <= store.inner.resident_limit);
        read_back(&store);
        store.close().unwrap();
        drop(store);

        // With warm_cache off: nothing cached after open, nothing read
        // whole after a merge.
        let store = HashStore::open(dir.path(), opts(8 << 20, false)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(store.inner.cache.bytes() + resident(&store), 0, "cached without a warm-up");
        read_back(&store);
        store.write(WriteBatch::new().put("key00000", value(0)), false).unwrap();
        store.compact().unwrap();
        assert_eq!(resident(&store), 0, "read whole without warm_cache");
        read_back(&store);
    }
}
