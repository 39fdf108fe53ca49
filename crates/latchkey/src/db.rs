//! The `Db` facade: one API over every engine.

use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::batch::{check_key, fence_key, is_reserved, WriteBatch};
use crate::error::{Error, Result};
use crate::options::{Engine, Options};

/// A key and its value, as yielded by [`Db::scan`].
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// An ordered iterator over a range of keys, from [`Db::scan`]. It reads a
/// consistent snapshot taken when it was made: later writes are not seen.
/// It runs forwards, and backwards with `.rev()`.
pub struct Iter {
    inner: Box<dyn DoubleEndedIterator<Item = Result<KeyValue>> + Send>,
}

impl Iter {
    pub(crate) fn new(inner: Box<dyn DoubleEndedIterator<Item = Result<KeyValue>> + Send>) -> Self {
        Iter { inner }
    }
}

impl Iterator for Iter {
    type Item = Result<KeyValue>;
    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next()
    }
}

impl DoubleEndedIterator for Iter {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.inner.next_back()
    }
}

/// Figures an engine reports about itself.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Stats {
    /// The engine's name.
    pub engine: &'static str,
    /// Live keys (expired keys not yet reclaimed included).
    pub keys: u64,
    /// Bytes of all data files on disk.
    pub disk_bytes: u64,
    /// Bytes of records still live in those files.
    pub live_bytes: u64,
    /// Data files.
    pub files: u64,
    /// Writes (single puts, deletes, or batches) accepted since open.
    pub writes: u64,
    /// Bytes of keys and values the user wrote since open.
    pub user_bytes_written: u64,
    /// Bytes the engine wrote to disk since open (logs, merges, hints).
    pub disk_bytes_written: u64,
    /// fsyncs of the log since open.
    pub syncs: u64,
    /// Merges or compactions finished since open.
    pub merges: u64,
    /// Bytes written by merges or compactions since open.
    pub bytes_compacted: u64,
    /// Times a writer waited because background work fell behind.
    pub stalls: u64,
    /// Background work (merges, flushes, compactions, interval syncs)
    /// that failed since open; each failure is also logged.
    pub background_errors: u64,
    /// Tables (or files, or pages) read per point lookup, on average since open.
    pub probes_per_get: f64,
    /// `btree`: levels of the tree (1 = the root is a leaf).
    pub height: u64,
    /// `btree`: pages in the page file, the meta page included.
    pub pages: u64,
    /// `btree`: pages on the free list.
    pub free_pages: u64,
    /// `btree`: used bytes per byte of tree-node pages.
    pub fill_factor: f64,
    /// `btree`: page reads served by the buffer pool, as a fraction.
    pub cache_hit_rate: f64,
    /// `btree`: bytes in the write-ahead log since the last checkpoint.
    pub log_bytes: u64,
}

impl Stats {
    /// Bytes on disk per byte of live data (1.0 is perfect).
    pub fn space_amplification(&self) -> f64 {
        self.disk_bytes as f64 / self.live_bytes.max(1) as f64
    }

    /// Bytes written to disk per byte the user wrote.
    pub fn write_amplification(&self) -> f64 {
        self.disk_bytes_written as f64 / self.user_bytes_written.max(1) as f64
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "engine:               {}", self.engine)?;
        writeln!(f, "keys:                 {}", self.keys)?;
        writeln!(f, "files:                {}", self.files)?;
        writeln!(f, "disk bytes:           {}", self.disk_bytes)?;
        writeln!(f, "live bytes:           {}", self.live_bytes)?;
        writeln!(f, "space amplification:  {:.2}", self.space_amplification())?;
        writeln!(f, "writes since open:    {}", self.writes)?;
        writeln!(f, "user bytes written:   {}", self.user_bytes_written)?;
        writeln!(f, "disk bytes written:   {}", self.disk_bytes_written)?;
        writeln!(f, "write amplification:  {:.2}", self.write_amplification())?;
        writeln!(f, "fsyncs since open:    {}", self.syncs)?;
        writeln!(f, "merges since open:    {}", self.merges)?;
        writeln!(f, "bytes compacted:      {}", self.bytes_compacted)?;
        writeln!(f, "write stalls:         {}", self.stalls)?;
        writeln!(f, "background errors:    {}", self.background_errors)?;
        write!(f, "probes per get:       {:.2}", self.probes_per_get)?;
        if self.engine == "btree" {
            writeln!(f)?;
            writeln!(f, "height:               {}", self.height)?;
            writeln!(f, "pages:                {}", self.pages)?;
            writeln!(f, "free pages:           {}", self.free_pages)?;
            writeln!(f, "fill factor:          {:.2}", self.fill_factor)?;
            writeln!(f, "cache hit rate:       {:.4}", self.cache_hit_rate)?;
            write!(f, "log bytes:            {}", self.log_bytes)?;
        }
        Ok(())
    }
}

/// A value found by [`Store::get`], unless its expiry has passed.
fn unexpired(found: Option<(Vec<u8>, u64)>) -> Option<(Vec<u8>, u64)> {
    found.filter(|&(_, exp)| exp == 0 || exp > now_ms())
}

/// What every engine implements; `Db` forwards to it.
pub(crate) trait Store: Send + Sync {
    /// The newest value of `key` and its expiry, expired or not: the
    /// caller drops an expired one (so a get of a key without an expiry
    /// never reads the clock).
    fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u64)>>;
    /// Appends `batch`; if `durable`, returns once the sync policy is met.
    fn write(&self, batch: &WriteBatch, durable: bool) -> Result<()>;
    fn scan(&self, range: (Bound<Vec<u8>>, Bound<Vec<u8>>), now_ms: u64) -> Result<Iter>;
    /// Calls `f` with each live entry in `range`, in order, until it
    /// returns false. Engines that can lend their bytes override it.
    fn for_each(
        &self,
        range: (Bound<Vec<u8>>, Bound<Vec<u8>>),
        now_ms: u64,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        for item in self.scan(range, now_ms)? {
            let (k, v) = item?;
            if !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }
    fn sync(&self) -> Result<()>;
    /// A hint that `keys` are about to be read: engines that keep their
    /// index and hot records in memory bring them into the CPU cache.
    fn prefetch(&self, _keys: &[&[u8]]) {}
    fn compact(&self) -> Result<()>;
    fn stats(&self) -> Stats;
    fn close(&self) -> Result<()>;
    /// Stops like a killed process: no sync, no checkpoint, nothing written.
    fn crash(&self);
    /// The log new writes go to, and where its records end.
    fn active_log(&self) -> Option<(PathBuf, u64)>;
}

/// A latchkey database: a directory of files owned by one process.
///
/// `Db` is cheap to clone (a reference count) and may be shared between
/// threads. All clones refer to the same open database; it is closed when
/// the last clone is dropped, or by [`Db::close`].
///
/// ```
/// # fn main() -> latchkey::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// use latchkey::{Db, Options};
/// let db = Db::open(dir.path(), Options::default())?;
/// db.put(b"cat-video:1", b"42")?;
/// assert_eq!(db.get(b"cat-video:1")?, Some(b"42".to_vec()));
/// for item in db.scan::<&[u8], _>(..)? {
///     let (key, value) = item?;
///     println!("{key:?} = {value:?}");
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Db {
    store: Arc<dyn Store>,
    engine: Engine,
    /// Held while a fenced write checks and raises its tokens.
    fences: Arc<parking_lot::Mutex<()>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("engine", &self.engine).finish_non_exhaustive()
    }
}

/// The name of the file that says which engine owns a directory.
pub const IDENTITY_FILE: &str = "IDENTITY";

/// Which engine made the data directory at `dir`, or `None` if the
/// directory does not exist or holds no latchkey data.
pub fn identify(dir: &Path) -> Result<Option<Engine>> {
    let path = dir.join(IDENTITY_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let engine = text
        .lines()
        .find_map(|l| l.strip_prefix("engine="))
        .ok_or_else(|| Error::corruption(&path, 0, "no engine= line"))?;
    engine.parse().map(Some).map_err(|_| Error::Incompatible {
        path: dir.to_owned(),
        reason: format!("made by engine {engine:?}, which this build does not have"),
    })
}

fn prepare_dir(dir: &Path, opts: &Options) -> Result<()> {
    if !dir.exists() {
        if !opts.create_if_missing {
            return Err(Error::InvalidArgument(format!(
                "{} does not exist (set create_if_missing to create it)",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    match identify(dir)? {
        Some(e) if e == opts.engine => Ok(()),
        Some(e) => Err(Error::Incompatible {
            path: dir.to_owned(),
            reason: format!("holds a {e} database; it cannot be opened with the {} engine", opts.engine),
        }),
        None => {
            let others = crate::fs::list(dir)?.into_iter().any(|n| n != crate::fs::LOCK_FILE);
            if others {
                return Err(Error::Incompatible {
                    path: dir.to_owned(),
                    reason: "not empty and not a latchkey data directory (no IDENTITY file)".into(),
                });
            }
            let text = format!("latchkey\nengine={}\nformat={}\n", opts.engine, crate::log::FORMAT_VERSION);
            crate::fs::write_atomic(dir, IDENTITY_FILE, text.as_bytes())
        }
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn to_owned_bound<K: AsRef<[u8]>>(b: Bound<&K>) -> Bound<Vec<u8>> {
    match b {
        Bound::Included(k) => Bound::Included(k.as_ref().to_vec()),
        Bound::Excluded(k) => Bound::Excluded(k.as_ref().to_vec()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl Db {
    /// Opens (or creates) the database in directory `path`, recovering from
    /// any crash: a write torn at the end of the newest log is cut off, and
    /// damage anywhere else is an error naming the file and offset.
    pub fn open(path: impl AsRef<Path>, opts: Options) -> Result<Db> {
        let dir = path.as_ref();
        opts.validate()?;
        prepare_dir(dir, &opts)?;
        let store: Arc<dyn Store> = match opts.engine {
            Engine::Hash => Arc::new(crate::hash::HashStore::open(dir, opts.clone())?),
            Engine::Lsm => Arc::new(crate::lsm::LsmStore::open(dir, opts.clone())?),
            Engine::Btree => Arc::new(crate::btree::BtreeStore::open(dir, opts.clone())?),
        };
        Ok(Db { store, engine: opts.engine, fences: Arc::default() })
    }

    /// The engine behind this database.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The value of `key`, or `None` if it is absent or expired.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>> {
        Ok(self.get_with_expiry(key)?.map(|(v, _)| v))
    }

    /// The value of `key` and its expiry time (milliseconds since the Unix
    /// epoch, 0 for none), or `None` if it is absent or expired.
    pub fn get_with_expiry(&self, key: impl AsRef<[u8]>) -> Result<Option<(Vec<u8>, u64)>> {
        check_key(key.as_ref())?;
        Ok(unexpired(self.store.get(key.as_ref())?))
    }

    /// A hint that gets of `keys` follow: the `hash` engine looks them all
    /// up under one lock and touches what it finds in memory (index
    /// entries, and records in the ring of newest writes or in segments
    /// held whole), so a batch of gets waits for main memory once rather
    /// than two or three times per key. Reads nothing from disk and
    /// changes nothing; the other engines ignore it. For a server running
    /// a client's pipeline of commands.
    pub fn prefetch<'a, K: AsRef<[u8]> + ?Sized + 'a>(&self, keys: impl IntoIterator<Item = &'a K>) {
        let keys: smallvec::SmallVec<[&[u8]; 32]> =
            keys.into_iter().map(AsRef::as_ref).filter(|k| check_key(k).is_ok()).collect();
        self.store.prefetch(&keys);
    }

    /// Sets `key` to `value`.
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let mut b = WriteBatch::new();
        b.put(key, value);
        self.write(b)
    }

    /// Sets `key` to `value` until `expires_at` (ms since the Unix epoch, 0 = never).
    pub fn put_with_expiry(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>, expires_at: u64) -> Result<()> {
        let mut b = WriteBatch::new();
        b.put_with_expiry(key, value, expires_at);
        self.write(b)
    }

    /// Deletes `key`; deleting an absent key is not an error.
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<()> {
        let mut b = WriteBatch::new();
        b.delete(key);
        self.write(b)
    }

    /// Applies every change of `batch`, or none. Under `Sync::Always` the
    /// batch is durable when this returns. A batch with fences
    /// ([`WriteBatch::fence`]) is refused whole if any token is stale.
    pub fn write(&self, batch: WriteBatch) -> Result<()> {
        self.write_inner(batch, true)
    }

    /// Like [`Db::write`], but returns as soon as the batch is applied and
    /// readable, without waiting for the sync policy: a later
    /// [`Db::sync`] makes it durable (and shares one fsync with every
    /// other write pending). For servers that acknowledge after a sync.
    pub fn write_unsynced(&self, batch: WriteBatch) -> Result<()> {
        self.write_inner(batch, false)
    }

    fn write_inner(&self, mut batch: WriteBatch, durable: bool) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        batch.validate()?;
        if batch.fences.is_empty() {
            return self.store.write(&batch, durable);
        }
        // Check and raise every token under one lock, in the same batch as
        // the write, so no other fenced write can slip between.
        let _fenced = self.fences.lock();
        let fences = std::mem::take(&mut batch.fences);
        batch.system = true; // validated above; now it may write fence keys
        for f in &fences {
            let key = fence_key(&f.lock);
            let highest = self.store.get(&key)?.and_then(|(v, _)| crate::codec::read_u64(&v)).unwrap_or(0);
            if f.check && f.token < highest {
                return Err(Error::StaleToken {
                    lock: String::from_utf8_lossy(&f.lock).into_owned(),
                    token: f.token,
                    highest,
                });
            }
            if f.token > highest {
                batch.put(key, f.token.to_le_bytes());
            }
        }
        self.store.write(&batch, durable)
    }

    /// The highest fencing token the store has seen for `lock` (0 if none).
    pub fn fence_token(&self, lock: impl AsRef<[u8]>) -> Result<u64> {
        let v = self.store.get(&fence_key(lock.as_ref()))?;
        Ok(v.and_then(|(v, _)| crate::codec::read_u64(&v)).unwrap_or(0))
    }

    /// The live keys in `range`, in order, with their values. Keys in
    /// latchkey's reserved keyspace ([`RESERVED_PREFIX`](crate::RESERVED_PREFIX))
    /// are skipped.
    ///
    /// On the `hash` engine a scan costs a pass over every key in memory
    /// plus a sort of the matching keys; values are read as the iterator
    /// reaches them.
    pub fn scan<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Result<Iter> {
        let range = (to_owned_bound(range.start_bound()), to_owned_bound(range.end_bound()));
        let it = self.store.scan(range, now_ms())?;
        Ok(Iter::new(Box::new(it.filter(|r| r.as_ref().map_or(true, |(k, _)| !is_reserved(k))))))
    }

    /// Calls `f` with each live key in `range` and its value, in order,
    /// until `f` returns false. Like [`Db::scan`] forwards, but the key and
    /// value are lent rather than handed over, so no allocation is made per
    /// entry where the engine can avoid it (the `btree` engine copies a
    /// leaf at a time into one reused buffer, and holds no latch while `f`
    /// runs). Reserved keys are skipped.
    ///
    /// ```
    /// # fn main() -> latchkey::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = latchkey::Db::open(dir.path(), latchkey::Options::default())?;
    /// db.put(b"a", b"1")?;
    /// db.put(b"b", b"22")?;
    /// let mut bytes = 0;
    /// db.for_each::<&[u8], _>(.., |_key, value| {
    ///     bytes += value.len();
    ///     true // go on
    /// })?;
    /// assert_eq!(bytes, 3);
    /// # Ok(()) }
    /// ```
    pub fn for_each<K: AsRef<[u8]>, R: RangeBounds<K>>(
        &self,
        range: R,
        mut f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        let range = (to_owned_bound(range.start_bound()), to_owned_bound(range.end_bound()));
        self.store.for_each(range, now_ms(), &mut |k, v| is_reserved(k) || f(k, v))
    }

    /// Like [`Db::scan`] over latchkey's reserved keyspace (lock state).
    pub(crate) fn scan_reserved(&self, prefix: &[u8]) -> Result<Iter> {
        let start = [crate::batch::RESERVED_PREFIX, prefix].concat();
        let mut end = start.clone();
        end.push(0xff);
        self.store.scan((Bound::Included(start), Bound::Included(end)), now_ms())
    }

    /// Makes every write so far durable, whatever the sync policy.
    pub fn sync(&self) -> Result<()> {
        self.store.sync()
    }

    /// Runs a merge or compaction now and waits for it.
    pub fn compact(&self) -> Result<()> {
        self.store.compact()
    }

    /// Figures about the engine and its files. `keys` counts the user's
    /// keys (latchkey's reserved lock records are not counted).
    pub fn stats(&self) -> Stats {
        let mut stats = self.store.stats();
        // Lock and fence records are latchkey's own, not the user's keys.
        let reserved = self.scan_reserved(b"").map_or(0, |it| it.count() as u64);
        stats.keys = stats.keys.saturating_sub(reserved);
        stats
    }

    /// Syncs, stops background work and closes the database for every clone
    /// of this handle (their later calls fail with [`Error::Closed`]). The
    /// directory lock is released once the last clone is dropped.
    pub fn close(self) -> Result<()> {
        self.store.close()
    }

    /// Closes the database the way a killed process would: nothing more is
    /// synced or written (no checkpoint, no final sync). Bytes already
    /// handed to the OS stay. For crash tests.
    #[doc(hidden)]
    pub fn simulate_crash(self) {
        self.store.crash();
    }

    /// The log file that new writes go to (for crash tests and tools).
    #[doc(hidden)]
    pub fn active_log_path(&self) -> Option<PathBuf> {
        self.store.active_log().map(|(path, _)| path)
    }

    /// The log file that new writes go to and where its records end: the
    /// file may be longer (preallocated space). For crash tests.
    #[doc(hidden)]
    pub fn active_log_end(&self) -> Option<(PathBuf, u64)> {
        self.store.active_log()
    }
}
