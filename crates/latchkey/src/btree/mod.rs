//! The `btree` engine: a B+tree of fixed-size pages overwritten in place,
//! protected by a write-ahead log.
//!
//! - **Pages** ([`page`]) are 4 KiB by default (`Options::page_size`, fixed
//!   when the directory is created), each with a checksum, type, log
//!   sequence number and its own page number; tree nodes are slotted.
//!   Values too large for a leaf go to chains of overflow pages. Freed
//!   pages go on a free list and are reused before the file grows.
//! - **Buffer pool** ([`pager`]): pages are read into latched frames;
//!   clean frames are evicted second-chance, dirty ones stay until the next
//!   checkpoint writes them.
//! - **Writes**: one writer at a time changes the tree ([`tree`]), then
//!   appends the batch to the log. A batch of several changes is applied
//!   while readers wait at a gate, so no reader sees half of it.
//! - **Checkpoints** (when the batches logged since the last one reach
//!   `segment_size`, when dirty pages fill half the pool, and at close):
//!   the images of the changed pages as of the last checkpoint (their
//!   *before-images*, read back from the page file, which still holds
//!   them) are appended to the log and the log is synced; then dirty pages
//!   are written in place and synced, so a page write torn by a crash is
//!   repaired from the log. Then a new log is started whose first record
//!   is the new meta page, the meta page is written and the old log
//!   deleted. (Before-images are logged at the checkpoint, not at the
//!   first change of a page, so a durable write syncs only its batch.)
//! - **Recovery**: take the newest log that begins with a whole checkpoint
//!   record; write back its page images (the pages as of that checkpoint,
//!   whatever a crash did to them) and the meta page; cut the file to the
//!   checkpoint's length; replay its batches through the tree.
//!
//! Locks, in order: `writer`, `gate`, the root latch, page latches (top
//! down, left to right), pager shards.

mod check;
mod page;
mod pager;
mod scan;
mod tree;

use std::collections::{HashMap, HashSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use parking_lot::{Mutex, RwLock};

use crate::background::Background;
use crate::batch::{Op, WriteBatch};
use crate::codec::{Kind, Record};
use crate::db::{Iter, Stats, Store};
use crate::durability::Durability;
use crate::error::{Error, Result};
use crate::fs::{DirLock, File};
use crate::log::{self, FileKind, LogWriter, TailMode};
use crate::options::{Options, Sync};

pub(crate) use check::check;
use page::{Limits, Meta, PageType, Val};
use pager::{Latch, Pager};

/// Batches of at most this many changes have their pages loaded before
/// the writer lock is taken (see `Inner::write`).
const WARM_OPS: usize = 16;

/// The page file.
pub(crate) const DATA_FILE: &str = "pages.btree";
/// Key of a log record holding a page's before-image (seq = page number).
pub(crate) const IMAGE_KEY: &[u8] = b"page";
/// Key of the record that opens every log: the meta page of its checkpoint.
pub(crate) const CHECKPOINT_KEY: &[u8] = b"checkpoint";

pub(crate) fn wal_name(id: u64) -> String {
    format!("{id:08}.wal")
}

pub(crate) struct Writer {
    wal: LogWriter,
    wal_id: u64,
    /// Log bytes appended since open (the log sequence number).
    lsn: u64,
    /// The tree's meta data as of now (on disk as of the last checkpoint).
    meta: Meta,
    /// Pages in the file at the last checkpoint: pages from here on are
    /// new and need no before-image.
    ckpt_pages: u32,
    /// Pages whose before-image is in the log since the last checkpoint,
    /// or in `unimaged`, to be logged at the next one.
    imaged: HashSet<u32>,
    /// Pages changed since the last checkpoint whose before-image is not
    /// in the log yet.
    unimaged: Vec<u32>,
    /// Pages changed since the last checkpoint, pinned in the pool.
    dirty: HashMap<u32, Latch>,
    /// The batch being applied (stamped on pages as their lsn).
    seq: u64,
    /// Bytes of batches logged since the last checkpoint (what recovery
    /// would replay; page images are not counted).
    logged: u64,
    buf: Vec<u8>,
    offsets: Vec<(u64, u32)>,
}

#[derive(Default)]
struct Counters {
    writes: AtomicU64,
    user_bytes: AtomicU64,
    disk_bytes: AtomicU64,
    checkpoints: AtomicU64,
    checkpoint_bytes: AtomicU64,
    gets: AtomicU64,
    probes: AtomicU64,
    background_errors: AtomicU64,
}

pub(crate) struct Inner {
    dir: PathBuf,
    opts: Options,
    limits: Limits,
    pager: Pager,
    /// The root's page number; its latch is the top of every descent.
    root: Arc<RwLock<u32>>,
    /// Readers pass it shared; a batch of several changes holds it alone.
    gate: RwLock<()>,
    writer: Mutex<Writer>,
    durability: Durability,
    counters: Counters,
    /// Splits, merges and redistributions so far: a scan resuming by a
    /// sibling link trusts the link only if this has not moved.
    smo: AtomicU64,
    /// Mirrors for stats without the writer lock.
    height: AtomicU64,
    log_bytes: AtomicU64,
    /// The writer's log position and active log, published for the
    /// group-commit leader, so it need not wait for the writer lock (held
    /// through a whole tree change) to learn what to fsync. The log is
    /// switched before a position in the new log is published. (`published_wal`
    /// is a read handle of the active log, fsynced outside the writer lock.)
    published_lsn: AtomicU64,
    published_wal: Mutex<Arc<File>>,
    _lock: DirLock,
}

/// The `btree` engine behind a `Db`.
pub(crate) struct BtreeStore {
    inner: Arc<Inner>,
    background: Background,
}

impl BtreeStore {
    pub(crate) fn open(dir: &Path, opts: Options) -> Result<BtreeStore> {
        let lock = crate::fs::lock_dir(dir)?;
        let started = Instant::now();
        let r = recover(dir, &opts)?;
        let limits = Limits::new(r.meta.page_size as usize);
        let file = File::open_rw(&dir.join(DATA_FILE))?;
        let wal_sync = Arc::new(File::open_read(&dir.join(wal_name(r.wal_id)))?);
        let inner = Arc::new(Inner {
            dir: dir.to_owned(),
            limits,
            pager: Pager::new(file, limits.page_size, opts.page_cache_size),
            root: Arc::new(RwLock::new(r.meta.root)),
            gate: RwLock::new(()),
            writer: Mutex::new(Writer {
                wal: r.wal,
                wal_id: r.wal_id,
                lsn: 0,
                meta: r.meta,
                ckpt_pages: r.meta.page_count,
                imaged: r.imaged,
                unimaged: Vec::new(),
                dirty: HashMap::new(),
                seq: r.meta.seq,
                logged: 0,
                buf: Vec::new(),
                offsets: Vec::new(),
            }),
            durability: Durability::default(),
            counters: Counters::default(),
            smo: AtomicU64::new(0),
            height: AtomicU64::new(r.meta.height as u64),
            log_bytes: AtomicU64::new(0),
            published_lsn: AtomicU64::new(0),
            published_wal: Mutex::new(wal_sync),
            opts,
            _lock: lock,
        });
        let replayed = r.batches.len();
        if replayed > 0 {
            let mut w = inner.writer.lock();
            for (seq, ops) in &r.batches {
                inner.apply(&mut w, *seq, ops)?;
            }
            inner.checkpoint(&mut w)?;
        }
        inner.log_bytes.store(inner.writer.lock().wal.len(), Ordering::Relaxed);
        tracing::info!(
            dir = %dir.display(),
            pages = r.meta.page_count,
            restored_pages = r.restored,
            replayed_batches = replayed,
            ms = started.elapsed().as_millis() as u64,
            "btree engine opened"
        );
        // Checkpoints run in the writer that fills the log: the threads
        // are the pool's warm-up, and the syncs of `Sync::Interval`.
        let (warm, syncs) = (Arc::clone(&inner), Arc::clone(&inner));
        let background = Background::none()
            .with_thread_if(inner.opts.warm_cache, "latchkey-btree-warm", dir, move |stop| warm.warm_pool(&stop))?
            .with_interval_syncs("latchkey-btree-sync", dir, inner.opts.sync.interval(), move || {
                syncs.durability.interval_sync(|| syncs.sync_all(), &syncs.counters.background_errors)
            })?;
        Ok(BtreeStore { inner, background })
    }
}

impl Drop for BtreeStore {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "closing the btree engine failed");
        }
    }
}

impl Store for BtreeStore {
    fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u64)>> {
        self.inner.durability.check_open()?;
        self.inner.get(key)
    }

    fn write(&self, batch: &WriteBatch, durable: bool) -> Result<()> {
        let sync = durable && self.inner.opts.sync == Sync::Always;
        let lsn = self.inner.write(batch, sync)?;
        if sync {
            self.inner.sync_to(lsn)?;
        }
        Ok(())
    }

    fn scan(&self, range: (Bound<Vec<u8>>, Bound<Vec<u8>>), now_ms: u64) -> Result<Iter> {
        self.inner.durability.check_open()?;
        Ok(Iter::new(Box::new(scan::ScanIter::new(Arc::clone(&self.inner), range, now_ms))))
    }

    fn for_each(
        &self,
        range: (Bound<Vec<u8>>, Bound<Vec<u8>>),
        now_ms: u64,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        self.inner.durability.check_open()?;
        self.inner.for_each(range, now_ms, f)
    }

    fn sync(&self) -> Result<()> {
        self.inner.durability.check_open()?;
        self.inner.sync_all()
    }

    fn compact(&self) -> Result<()> {
        self.inner.durability.check_writable()?;
        self.inner.sweep_expired()?;
        let mut w = self.inner.writer.lock();
        self.inner.durability.check_writable()?;
        self.inner.checkpoint(&mut w)
    }

    fn stats(&self) -> Stats {
        self.inner.stats()
    }

    fn close(&self) -> Result<()> {
        let inner = &self.inner;
        inner.durability.close(
            || self.background.stop(|| {}),
            || {
                let mut w = inner.writer.lock();
                inner.checkpoint(&mut w)?;
                // A clean close leaves no preallocated space behind.
                w.wal.seal()
            },
        )
    }

    fn crash(&self) {
        let inner = &self.inner;
        let _ = inner.durability.close(|| self.background.stop(|| {}), || Ok(()));
    }

    fn active_log(&self) -> Option<(PathBuf, u64)> {
        let w = self.inner.writer.lock();
        Some((w.wal.file().path().to_owned(), w.wal.len()))
    }
}

impl Inner {
    fn poison(&self, e: &Error) {
        self.durability.poison(e);
    }

    fn sync_all(&self) -> Result<()> {
        let lsn = self.writer.lock().lsn;
        self.sync_to(lsn)
    }

    fn sync_to(&self, lsn: u64) -> Result<()> {
        self.durability.sync_to(lsn, || {
            self.write_deferred(&mut self.writer.lock())?;
            // The position first: if a checkpoint switches the log after
            // it is read, the old log was synced up to it by the checkpoint.
            let lsn = self.published_lsn.load(Ordering::Acquire);
            let log = Arc::clone(&self.published_wal.lock());
            Ok((lsn, move || log.sync_data()))
        })
    }

    /// Writes the log records deferred by writers waiting for an fsync,
    /// and publishes the position after them.
    fn write_deferred(&self, w: &mut Writer) -> Result<()> {
        w.wal.flush().inspect_err(|e| self.poison(e))?;
        self.published_lsn.store(w.lsn, Ordering::Release);
        self.log_bytes.store(w.wal.len(), Ordering::Relaxed);
        Ok(())
    }

    /// Checks what the tree cannot store before anything is logged.
    fn check_batch(&self, batch: &WriteBatch) -> Result<()> {
        for op in &batch.ops {
            let key = op.key();
            if key.len() > self.limits.max_key {
                return Err(Error::InvalidArgument(format!(
                    "key of {} bytes: the btree engine with {}-byte pages takes keys of at most {} bytes",
                    key.len(),
                    self.limits.page_size,
                    self.limits.max_key
                )));
            }
        }
        Ok(())
    }

    /// Applies and logs `batch`; returns the log position that makes it
    /// durable. (A reader may see a single change before it is logged, as
    /// on every engine a reader may see a write before it is synced.) With
    /// `defer` (the caller syncs next) the record is held for the fsync's
    /// leader to write with the group's.
    fn write(&self, batch: &WriteBatch, defer: bool) -> Result<u64> {
        self.check_batch(batch)?;
        // Bring the pages a small batch will change into the pool before
        // queueing for the writer lock: concurrent writers then read them
        // from the file side by side, not one after another under the lock.
        if batch.ops.len() <= WARM_OPS {
            for op in &batch.ops {
                self.warm(op.key())?;
            }
        }
        let mut guard = self.writer.lock();
        self.durability.check_writable()?;
        let w = &mut *guard;
        let seq = w.meta.seq + 1;
        batch.encode(seq, &mut w.buf, &mut w.offsets);
        // The tree first, then one append of the batch (torn anywhere, the
        // batch is wholly absent).
        if let Err(e) = self.apply(w, seq, &batch.ops) {
            self.poison(&e);
            return Err(e);
        }
        if defer {
            w.wal.defer(&w.buf);
            w.lsn += w.buf.len() as u64; // published when written
        } else {
            if let Err(e) = w.wal.append(&w.buf) {
                self.poison(&e);
                return Err(e);
            }
            self.advance(w, w.buf.len());
        }
        self.counters.disk_bytes.fetch_add(w.buf.len() as u64, Ordering::Relaxed);
        let c = &self.counters;
        c.writes.fetch_add(1, Ordering::Relaxed);
        c.user_bytes.fetch_add(batch.size_bytes() as u64, Ordering::Relaxed);
        w.logged += w.buf.len() as u64;
        if w.logged >= self.opts.segment_size || w.dirty.len() > self.pager.capacity() / 2 {
            if let Err(e) = self.checkpoint(w) {
                self.poison(&e);
                return Err(e);
            }
        }
        self.log_bytes.store(w.wal.len(), Ordering::Relaxed);
        Ok(w.lsn)
    }

    /// Changes the tree; a batch of several changes shuts readers out
    /// while it is applied.
    fn apply(&self, w: &mut Writer, seq: u64, ops: &[Op]) -> Result<()> {
        w.seq = seq;
        let _gate = (ops.len() > 1).then(|| self.gate.write());
        for op in ops {
            match op {
                Op::Put { key, value, expires_at } => self.put(w, key, value, *expires_at)?,
                Op::Delete { key } => {
                    self.delete(w, key)?;
                }
            }
        }
        w.meta.seq = seq;
        self.height.store(w.meta.height as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Moves the log position past `bytes` just appended, and publishes it.
    fn advance(&self, w: &mut Writer, bytes: usize) {
        w.lsn += bytes as u64;
        self.published_lsn.store(w.lsn, Ordering::Release);
    }

    /// Appends the before-images of the pages changed since the last
    /// checkpoint that the log does not hold yet: each page as the page
    /// file holds it, which is as of the last checkpoint (dirty pages stay
    /// in the pool until the next one writes them).
    fn log_images(&self, w: &mut Writer) -> Result<()> {
        let ps = self.limits.page_size;
        let mut page = vec![0u8; ps];
        let mut out = Vec::with_capacity(1 << 20);
        let ids = std::mem::take(&mut w.unimaged);
        for (i, &id) in ids.iter().enumerate() {
            self.pager.file.read_exact_at(&mut page, id as u64 * ps as u64)?;
            // A page damaged on disk must not be logged as what to restore.
            page::verify(&page, id).map_err(|why| self.corrupt(id, why))?;
            Record { kind: Kind::Meta, seq: id as u64, expires_at: 0, key: IMAGE_KEY, value: &page }
                .encode_into(&mut out);
            if out.len() >= 1 << 20 || i + 1 == ids.len() {
                w.wal.append(&out)?;
                self.advance(w, out.len());
                self.counters.disk_bytes.fetch_add(out.len() as u64, Ordering::Relaxed);
                out.clear();
            }
        }
        Ok(())
    }

    /// Writes every dirty page in place and starts a new log.
    fn checkpoint(&self, w: &mut Writer) -> Result<()> {
        // 1. The log, with the before-image of every page about to be
        //    overwritten, is durable before any page is (deferred records
        //    first, in the order they were applied).
        self.write_deferred(w)?;
        self.log_images(w)?;
        w.wal.sync()?;
        self.durability.mark_synced(w.lsn);
        self.durability.syncs.fetch_add(1, Ordering::Relaxed);
        // 2. Dirty pages in place, then synced.
        let ps = self.limits.page_size as u64;
        let mut ids: Vec<u32> = w.dirty.keys().copied().collect();
        ids.sort_unstable();
        let mut buf = Vec::with_capacity(ps as usize);
        self.pager.writes.fetch_add(1, Ordering::AcqRel);
        for id in &ids {
            // Cells back in key order (in-place inserts scatter them), so
            // scans read each leaf front to back.
            let latch = &w.dirty[id];
            page::repack(&mut latch.write());
            buf.clear();
            buf.extend_from_slice(&latch.read());
            page::seal(&mut buf);
            self.pager.file.write_all_at(&buf, *id as u64 * ps)?;
        }
        let written = ids.len() as u64 * ps;
        self.pager.file.sync_data()?;
        // 3. A new log, opened by the new meta page, durable.
        let new_id = w.wal_id + 1;
        w.meta.wal = new_id;
        let meta_page = w.meta.page();
        let path = self.dir.join(wal_name(new_id));
        if path.exists() {
            crate::fs::remove_file(&path)?;
        }
        let mut wal = LogWriter::create(&path, FileKind::Wal)?.preallocate();
        let mut rec = Vec::new();
        Record { kind: Kind::Meta, seq: w.meta.seq, expires_at: 0, key: CHECKPOINT_KEY, value: &meta_page }
            .encode_into(&mut rec);
        wal.append(&rec)?;
        wal.sync()?;
        crate::fs::sync_dir(&self.dir)?;
        // 4. The meta page; then the old log can go.
        self.pager.file.write_all_at(&meta_page, 0)?;
        self.pager.file.sync_data()?;
        let old = std::mem::replace(&mut w.wal_id, new_id);
        *self.published_wal.lock() = Arc::new(File::open_read(&path)?);
        w.wal = wal;
        self.advance(w, rec.len());
        self.durability.mark_synced(w.lsn);
        crate::fs::remove_file(&self.dir.join(wal_name(old)))?;
        w.ckpt_pages = w.meta.page_count;
        w.logged = 0;
        w.imaged.clear();
        w.dirty.clear();
        self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.counters.checkpoint_bytes.fetch_add(written + ps, Ordering::Relaxed);
        self.counters.disk_bytes.fetch_add(written + ps + rec.len() as u64, Ordering::Relaxed);
        self.log_bytes.store(w.wal.len(), Ordering::Relaxed);
        tracing::debug!(pages = ids.len(), wal = new_id, "checkpoint finished");
        Ok(())
    }

    fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u64)>> {
        let _gate = self.gate.read();
        let (g, touched) = self.read_down(scan::Target::Key(key))?;
        self.counters.gets.fetch_add(1, Ordering::Relaxed);
        self.counters.probes.fetch_add(touched, Ordering::Relaxed);
        let Ok(i) = page::search(&g, key) else { return Ok(None) };
        let (expires, val) = page::leaf_value(&g, i);
        Ok(Some((self.value(val)?, expires)))
    }

    /// After open, reads the page file front to back in 256 KiB reads into
    /// the pool, until the pool is nearly full or the file ends, so the
    /// first gets and puts after a restart find their pages in memory
    /// instead of reading each one with a system call of its own (as
    /// InnoDB loads its buffer pool at startup). Pages already there, and
    /// shards that are full, are skipped; nothing is evicted for it. It
    /// stops when the store closes.
    fn warm_pool(&self, stop: &mpsc::Receiver<()>) {
        const CHUNK: u32 = 64;
        let ps = self.limits.page_size;
        let pages = self.writer.lock().meta.page_count;
        let full = self.pager.capacity() / 16 * 15;
        let mut buf = vec![0u8; CHUNK as usize * ps];
        let mut id = 1; // page 0 is the meta page
        let started = Instant::now();
        let mut added = 0;
        while id < pages && self.pager.frames() < full {
            if !matches!(stop.try_recv(), Err(mpsc::TryRecvError::Empty)) {
                return;
            }
            let n = CHUNK.min(pages - id);
            let writes = self.pager.writes.load(Ordering::Acquire);
            let chunk = &mut buf[..n as usize * ps];
            if let Err(e) = self.pager.file.read_exact_at(chunk, id as u64 * ps as u64) {
                tracing::warn!(error = %e, "warming the buffer pool stopped");
                return;
            }
            added += self.pager.prefill(id, chunk, writes);
            id += n;
        }
        tracing::debug!(pages = added, ms = started.elapsed().as_millis() as u64, "buffer pool warmed");
    }

    /// Loads the pages on the path to `key`'s leaf (a read, no change).
    fn warm(&self, key: &[u8]) -> Result<()> {
        let _gate = self.gate.read();
        self.read_down(scan::Target::Key(key)).map(drop)
    }

    /// Damage: page `id` was reached from a parent but is not a tree node.
    fn not_a_node(&self, id: u32) -> Error {
        page::damaged(
            self.pager.path(),
            id,
            self.limits.page_size,
            format!("page {id}: reached from a parent but not a tree node"),
        )
    }

    /// A value as stored: inline, or read from its overflow chain. The
    /// caller holds the latch of the leaf that points at the chain.
    fn value(&self, val: Val) -> Result<Vec<u8>> {
        let (mut id, len) = match val {
            Val::Inline(v) => return Ok(v),
            Val::Overflow { head, len } => (head, len as usize),
        };
        let mut out = Vec::with_capacity(len);
        while id != 0 && out.len() < len {
            let g = self.pager.read(id)?;
            let data = page::overflow_data(&g).map_err(|r| page::damaged(self.pager.path(), id, g.len(), r))?;
            out.extend_from_slice(data);
            id = page::next(&g);
        }
        if out.len() != len {
            return Err(Error::corruption(
                self.pager.path(),
                0,
                format!("an overflow chain holds {} bytes, its leaf says {len}", out.len()),
            ));
        }
        Ok(out)
    }

    /// Deletes every expired key (as ordinary logged batches).
    fn sweep_expired(&self) -> Result<()> {
        let now = crate::db::now_ms();
        let mut from = Bound::Unbounded;
        loop {
            let (expired, next) = scan::expired_keys(self, from, now, 1000)?;
            if !expired.is_empty() {
                let mut b = WriteBatch::new();
                b.system = true;
                for k in expired {
                    b.delete(k);
                }
                self.write(&b, false)?;
            }
            match next {
                Some(k) => from = Bound::Excluded(k),
                None => return Ok(()),
            }
        }
    }

    fn stats(&self) -> Stats {
        let w = self.writer.lock();
        let m = w.meta;
        drop(w);
        let c = &self.counters;
        let gets = c.gets.load(Ordering::Relaxed);
        let (hits, misses) = (self.pager.hits(), self.pager.misses.load(Ordering::Relaxed));
        let ps = self.limits.page_size as u64;
        let node_pages = (m.page_count - 1 - m.free_count - m.overflow_pages) as u64;
        let disk = crate::fs::list(&self.dir)
            .unwrap_or_default()
            .iter()
            .filter_map(|n| std::fs::metadata(self.dir.join(n)).ok())
            .map(|md| md.len())
            .sum();
        Stats {
            engine: "btree",
            keys: m.keys,
            disk_bytes: disk,
            live_bytes: m.used_bytes + m.overflow_pages as u64 * ps,
            files: 2,
            writes: c.writes.load(Ordering::Relaxed),
            user_bytes_written: c.user_bytes.load(Ordering::Relaxed),
            disk_bytes_written: c.disk_bytes.load(Ordering::Relaxed),
            syncs: self.durability.syncs.load(Ordering::Relaxed),
            merges: c.checkpoints.load(Ordering::Relaxed),
            bytes_compacted: c.checkpoint_bytes.load(Ordering::Relaxed),
            stalls: 0,
            background_errors: c.background_errors.load(Ordering::Relaxed),
            probes_per_get: c.probes.load(Ordering::Relaxed) as f64 / gets.max(1) as f64,
            height: m.height as u64,
            pages: m.page_count as u64,
            free_pages: m.free_count as u64,
            fill_factor: m.used_bytes as f64 / (node_pages.max(1) * ps) as f64,
            cache_hit_rate: hits as f64 / (hits + misses).max(1) as f64,
            log_bytes: self.log_bytes.load(Ordering::Relaxed),
        }
    }
}

struct Recovered {
    meta: Meta,
    wal: LogWriter,
    wal_id: u64,
    /// Pages whose before-image the kept log holds.
    imaged: HashSet<u32>,
    restored: usize,
    /// Batches of the kept log, to replay: (seq, changes).
    batches: Vec<(u64, Vec<Op>)>,
}

fn ids_with(dir: &Path, ext: &str) -> Result<Vec<u64>> {
    let mut ids: Vec<u64> =
        crate::fs::list(dir)?.iter().filter_map(|n| n.strip_suffix(ext).and_then(|s| s.parse().ok())).collect();
    ids.sort_unstable();
    Ok(ids)
}

/// What one log holds, read for recovery or check.
pub(crate) struct LogContents {
    pub checkpoint: Option<Meta>,
    pub images: Vec<(u32, Vec<u8>)>,
    pub batches: Vec<(u64, Vec<Op>)>,
    pub end: log::ScanEnd,
    pub records: u64,
}

/// Reads log `id`. `None` if it does not begin with a whole checkpoint
/// record (a log whose creation a crash interrupted).
pub(crate) fn read_log(dir: &Path, id: u64) -> Result<LogContents> {
    let path = dir.join(wal_name(id));
    let mut c = LogContents {
        checkpoint: None,
        images: Vec::new(),
        batches: Vec::new(),
        end: log::ScanEnd { valid_len: 0, file_len: 0, data_end: 0, headerless: true },
        records: 0,
    };
    let mut first = true;
    let mut seen = HashSet::new();
    c.end = log::scan(&path, FileKind::Wal, TailMode::Newest, |f| {
        let r = f.record;
        c.records += 1;
        let is_first = std::mem::replace(&mut first, false);
        match r.kind {
            Kind::Meta if r.key == CHECKPOINT_KEY => {
                if !is_first {
                    return Err(Error::corruption(&path, f.offset, "a checkpoint record inside a log"));
                }
                let meta = page::Meta::from_page(r.value)
                    .filter(|m| m.page_size as usize == r.value.len())
                    .ok_or_else(|| Error::corruption(&path, f.offset, "a checkpoint record with a bad meta page"))?;
                c.checkpoint = Some(meta);
            }
            _ if c.checkpoint.is_none() => {
                return Err(Error::corruption(&path, f.offset, "a log that does not begin with a checkpoint"));
            }
            Kind::Meta if r.key == IMAGE_KEY => {
                let ps = c.checkpoint.map_or(0, |m| m.page_size as usize);
                if r.value.len() != ps || r.seq == 0 || r.seq > u32::MAX as u64 {
                    return Err(Error::corruption(&path, f.offset, "a page image of the wrong size or number"));
                }
                if seen.insert(r.seq as u32) {
                    c.images.push((r.seq as u32, r.value.to_vec()));
                }
            }
            Kind::Put | Kind::Delete => {
                let op = if r.kind == Kind::Put {
                    Op::Put { key: r.key.to_vec(), value: r.value.to_vec(), expires_at: r.expires_at }
                } else {
                    Op::Delete { key: r.key.to_vec() }
                };
                match c.batches.last_mut() {
                    Some((seq, ops)) if *seq == r.seq => ops.push(op),
                    _ => c.batches.push((r.seq, vec![op])),
                }
            }
            _ => return Err(Error::corruption(&path, f.offset, format!("unexpected {:?} record", r.kind))),
        }
        Ok(())
    })?;
    Ok(c)
}

/// The newest log that begins with a whole checkpoint record, and what it holds.
pub(crate) fn newest_checkpoint(dir: &Path) -> Result<Option<(u64, LogContents)>> {
    for id in ids_with(dir, ".wal")?.into_iter().rev() {
        let c = read_log(dir, id)?;
        if c.checkpoint.is_some() {
            return Ok(Some((id, c)));
        }
    }
    Ok(None)
}

fn create_fresh(dir: &Path, opts: &Options) -> Result<()> {
    let ps = opts.page_size;
    let meta = Meta {
        page_size: ps as u32,
        root: 1,
        height: 1,
        page_count: 2,
        wal: 1,
        used_bytes: page::HEADER as u64,
        ..Meta::default()
    };
    let mut root = vec![0u8; ps];
    root[16..20].copy_from_slice(&1u32.to_le_bytes());
    page::Node::Leaf { prev: 0, next: 0, cells: Vec::new() }.encode(&mut root);
    page::seal(&mut root);
    let tmp = dir.join(format!("{DATA_FILE}.tmp"));
    if tmp.exists() {
        crate::fs::remove_file(&tmp)?;
    }
    let f = File::create_new(&tmp)?;
    f.write_all_at(&meta.page(), 0)?;
    f.write_all_at(&root, ps as u64)?;
    f.sync_data()?;
    crate::fs::rename(&tmp, &dir.join(DATA_FILE))?;
    crate::fs::sync_dir(dir)
}

/// Brings the page file back to the last checkpoint and gathers the
/// batches logged since.
fn recover(dir: &Path, opts: &Options) -> Result<Recovered> {
    if !dir.join(DATA_FILE).exists() {
        if !opts.page_size.is_power_of_two() || !(page::MIN_PAGE_SIZE..=page::MAX_PAGE_SIZE).contains(&opts.page_size) {
            return Err(Error::InvalidArgument(format!(
                "page_size {} must be a power of two from {} to {}",
                opts.page_size,
                page::MIN_PAGE_SIZE,
                page::MAX_PAGE_SIZE
            )));
        }
        for id in ids_with(dir, ".wal")? {
            crate::fs::remove_file(&dir.join(wal_name(id)))?;
        }
        create_fresh(dir, opts)?;
    }
    let file = File::open_rw(&dir.join(DATA_FILE))?;
    let (wal_id, contents) = match newest_checkpoint(dir)? {
        Some((id, c)) => (id, Some(c)),
        None => (0, None),
    };
    let meta = match &contents {
        Some(c) => c.checkpoint.expect("newest_checkpoint returns logs with one"),
        None => {
            // No log yet (a crash right after the page file was made):
            // the meta page is the checkpoint.
            let mut p = vec![0u8; 512];
            file.read_exact_at(&mut p, 0)?;
            let ps = u32::from_le_bytes(p[page::HEADER + 8..page::HEADER + 12].try_into().unwrap()) as usize;
            let ps = if (page::MIN_PAGE_SIZE..=page::MAX_PAGE_SIZE).contains(&ps) { ps } else { 4096 };
            let mut p = vec![0u8; ps];
            file.read_exact_at(&mut p, 0)?;
            page::verify(&p, 0)
                .ok()
                .and_then(|_| Meta::from_page(&p))
                .ok_or_else(|| page::damaged(file.path(), 0, ps, "page 0: the meta page is damaged".into()))?
        }
    };
    let ps = meta.page_size as u64;
    // The pages as of the checkpoint, whatever a crash did to them since.
    let mut imaged = HashSet::new();
    let mut restored = 0;
    if let Some(c) = &contents {
        for (id, image) in &c.images {
            let mut p = image.clone();
            page::seal(&mut p);
            file.write_all_at(&p, *id as u64 * ps)?;
            imaged.insert(*id);
            restored += 1;
        }
    }
    let meta_page = meta.page();
    let mut on_disk = vec![0u8; meta_page.len()];
    let meta_intact = file.read_exact_at(&mut on_disk, 0).is_ok() && on_disk == meta_page;
    let want = meta.page_count as u64 * ps;
    let len = file.len()?;
    if len < want {
        return Err(Error::corruption(
            file.path(),
            len,
            format!("the page file ends before the {} pages of the last checkpoint", meta.page_count),
        ));
    }
    // After a clean close there is nothing to write back: no fsync at open.
    if restored > 0 || !meta_intact || len != want {
        file.write_all_at(&meta_page, 0)?;
        file.set_len(want)?;
        file.sync_data()?;
    }
    if restored > 0 {
        tracing::info!(pages = restored, "restored pages from their before-images in the log");
    }
    let (wal, wal_id, batches) = match contents {
        Some(c) => {
            let wal = LogWriter::reopen(&dir.join(wal_name(wal_id)), c.end.valid_len)?.preallocate();
            (wal, wal_id, c.batches)
        }
        None => {
            let id = meta.wal.max(1);
            let path = dir.join(wal_name(id));
            if path.exists() {
                crate::fs::remove_file(&path)?;
            }
            let mut wal = LogWriter::create(&path, FileKind::Wal)?.preallocate();
            let mut rec = Vec::new();
            let meta = Meta { wal: id, ..meta };
            Record { kind: Kind::Meta, seq: meta.seq, expires_at: 0, key: CHECKPOINT_KEY, value: &meta.page() }
                .encode_into(&mut rec);
            wal.append(&rec)?;
            wal.sync()?;
            crate::fs::sync_dir(dir)?;
            (wal, id, Vec::new())
        }
    };
    // Logs older than the kept one are covered by its checkpoint; newer
    // ones never got a whole checkpoint record.
    for id in ids_with(dir, ".wal")? {
        if id != wal_id {
            crate::fs::remove_file(&dir.join(wal_name(id)))?;
        }
    }
    Ok(Recovered { meta: Meta { wal: wal_id, ..meta }, wal, wal_id, imaged, restored, batches })
}

/// Fuzzing hook (see `crate::fuzzing`): arbitrary bytes as pages.
pub(crate) fn exercise_page_for_fuzzing(data: &[u8]) {
    use page::{LeafCell, Node};
    for ps in [page::MIN_PAGE_SIZE, 4096] {
        if data.len() < ps {
            continue;
        }
        let mut p = data[..ps].to_vec();
        let id = page::page_id(&p);
        page::seal(&mut p);
        match page::verify(&p, id) {
            Ok(PageType::Leaf | PageType::Internal) => {
                let node = Node::decode(&p);
                assert_eq!(node.size(), page::used(&p), "a verified node's size is what its page says");
                for key in [&b""[..], b"k", b"\xff\xff"] {
                    let _ = page::search(&p, key);
                    if page::page_type(&p) == Some(PageType::Internal) {
                        let _ = page::child_for(&p, key);
                    }
                }
                for i in 0..page::nslots(&p) {
                    if page::page_type(&p) == Some(PageType::Leaf) {
                        let _ = page::leaf_value_ref(&p, i);
                    }
                }
                let mut q = p.clone();
                page::repack(&mut q);
                assert_eq!(Node::decode(&q), node, "repacking keeps every cell");
                if page::page_type(&p) == Some(PageType::Leaf) {
                    let cell = LeafCell { key: b"fuzz".to_vec(), expires: 0, val: Val::Inline(b"v".to_vec()) };
                    let i = page::search(&q, &cell.key).unwrap_or_else(|i| i);
                    page::insert_leaf_cell(&mut q, i, &cell);
                    if let Ok(i) = page::search(&q, &cell.key) {
                        page::overwrite_leaf_cell(&mut q, i, &cell);
                    }
                }
                let mut r = vec![0u8; ps];
                r[16..20].copy_from_slice(&id.to_le_bytes());
                if node.size() <= ps {
                    node.encode(&mut r);
                    assert_eq!(Node::decode(&r), node, "a decoded node encodes back to itself");
                }
            }
            Ok(PageType::Overflow) => {
                let _ = page::overflow_data(&p);
            }
            Ok(PageType::Meta) => {
                let _ = Meta::from_page(&p);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under `Sync::Interval` a write is fsynced soon without a call to
    /// `sync`, by a thread of its own; other policies start no such thread
    /// (only the pool's warm-up, which ends by itself).
    #[test]
    fn interval_syncs_run_on_a_thread_only_under_sync_interval() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options { sync: Sync::Interval(20), ..Options::new(crate::Engine::Btree) };
        let store = BtreeStore::open(dir.path(), opts).unwrap();
        assert_eq!(store.background.threads(), ["latchkey-btree-warm", "latchkey-btree-sync"]);
        let synced = crate::background::synced_soon_after(&store.inner.durability.syncs, || {
            store.write(WriteBatch::new().put("k", "v"), false).unwrap()
        });
        assert!(synced, "no interval sync within 2 s");
        drop(store);
        for sync in [Sync::Always, Sync::Never] {
            let dir = tempfile::tempdir().unwrap();
            let store = BtreeStore::open(dir.path(), Options { sync, ..Options::new(crate::Engine::Btree) }).unwrap();
            assert_eq!(store.background.threads(), ["latchkey-btree-warm"], "{sync:?}");
            drop(store);
            let cold = Options { sync, warm_cache: false, ..Options::new(crate::Engine::Btree) };
            let store = BtreeStore::open(dir.path(), cold).unwrap();
            assert!(store.background.threads().is_empty(), "{sync:?}");
        }
    }

    /// After a reopen the warm-up fills the pool from the file (up to
    /// its capacity), so gets then read no page from the file; with a
    /// pool smaller than the file it stops at about the pool's size and
    /// evicts nothing. Pages it loads are the pages as last checkpointed:
    /// every key reads back as written, writes going on meanwhile.
    #[test]
    fn the_pool_is_warmed_after_open_and_stays_within_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options { page_size: 1024, ..Options::new(crate::Engine::Btree) };
        let store = BtreeStore::open(dir.path(), opts.clone()).unwrap();
        for chunk in (0..20_000u32).collect::<Vec<_>>().chunks(1000) {
            let mut b = WriteBatch::new();
            for k in chunk {
                b.put(k.to_be_bytes(), k.to_le_bytes().repeat(8));
            }
            store.write(&b, false).unwrap();
        }
        store.close().unwrap();
        drop(store);
        let wait_warm = |store: &BtreeStore| {
            let until = Instant::now() + std::time::Duration::from_secs(10);
            let mut last = usize::MAX;
            // Done when the count stops moving for 50 ms.
            while Instant::now() < until {
                std::thread::sleep(std::time::Duration::from_millis(50));
                let now = store.inner.pager.frames();
                if now == last {
                    return now;
                }
                last = now;
            }
            panic!("the warm-up did not settle in 10 s");
        };
        let store = BtreeStore::open(dir.path(), opts.clone()).unwrap();
        // Writes while the warm-up runs (checkpoints included).
        for k in (0..20_000u32).step_by(7) {
            store.write(WriteBatch::new().put(k.to_be_bytes(), b"new"), false).unwrap();
            if k % 700 == 0 {
                store.inner.checkpoint(&mut store.inner.writer.lock()).unwrap();
            }
        }
        let frames = wait_warm(&store);
        let pages = store.inner.writer.lock().meta.page_count as usize;
        assert!(frames * 10 >= pages * 9, "{frames} of {pages} pages in the pool");
        let misses = store.inner.pager.misses.load(Ordering::Relaxed);
        for k in 0..20_000u32 {
            let want = if k % 7 == 0 { b"new".to_vec() } else { k.to_le_bytes().repeat(8) };
            assert_eq!(store.get(&k.to_be_bytes()).unwrap().map(|v| v.0), Some(want), "key {k}");
        }
        assert_eq!(store.inner.pager.misses.load(Ordering::Relaxed), misses, "gets read pages from the file");
        drop(store);
        let small = Options { page_cache_size: 64 << 10, ..opts };
        let store = BtreeStore::open(dir.path(), small).unwrap();
        let frames = wait_warm(&store);
        let capacity = store.inner.pager.capacity();
        assert!(frames <= capacity && frames * 2 >= capacity, "{frames} frames in a pool of {capacity}");
    }

    /// Scans load their leaves into the pool's ring (the descent's last
    /// page too), so scans over a whole cold tree leave the pool holding
    /// about its internal pages; gets cache the leaves they read.
    #[test]
    fn scans_leave_the_pool_to_the_internal_pages_and_gets_fill_it() {
        let dir = tempfile::tempdir().unwrap();
        // A cold pool (no warm-up): what scans and gets leave in it.
        let opts = Options { engine: crate::Engine::Btree, page_size: 1024, warm_cache: false, ..Options::default() };
        let store = BtreeStore::open(dir.path(), opts.clone()).unwrap();
        for chunk in (0..20_000u32).collect::<Vec<_>>().chunks(1000) {
            let mut b = WriteBatch::new();
            for k in chunk {
                b.put(k.to_be_bytes(), [7u8; 40]);
            }
            store.write(&b, false).unwrap();
        }
        store.close().unwrap();
        drop(store);
        let store = BtreeStore::open(dir.path(), opts).unwrap();
        let internal = store.inner.height.load(Ordering::Relaxed);
        assert!(internal >= 3, "a tree of {internal} levels is too small for this test");
        // Short scans far apart (a leaf read again is used again, and
        // stays), then long ones that follow sibling links.
        let mut seen = 0u64;
        for (step, len) in [(50u32, 1u64), (211, 100)] {
            for start in (0..20_000u32).step_by(step as usize) {
                let mut n = 0;
                let lo = Bound::Included(start.to_be_bytes().to_vec());
                store
                    .for_each((lo, Bound::Unbounded), 0, &mut |_, _| {
                        n += 1;
                        n < len
                    })
                    .unwrap();
                seen += n;
            }
        }
        assert!(seen > 400 + 90 * 99, "the scans saw {seen} entries");
        // 20,000 entries of ~50 bytes on 1 KiB pages: ~1,000 leaves, and
        // a few dozen internal pages above them.
        let after_scans = store.inner.pager.frames();
        assert!(after_scans < 250, "{after_scans} frames after the scans");
        for k in (0..20_000u32).step_by(10) {
            assert!(store.get(&k.to_be_bytes()).unwrap().is_some());
        }
        let after_gets = store.inner.pager.frames();
        assert!(after_gets > 600, "{after_gets} frames after gets of every 10th key");
    }
}
