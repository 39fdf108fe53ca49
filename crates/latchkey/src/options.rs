//! How a database is opened: engine, durability policy, limits.

use std::time::Duration;

/// The storage engine behind a [`Db`](crate::Db). Chosen when a directory is
/// created; a directory always reopens with the engine that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Engine {
    /// Bitcask: an in-memory hash index over append-only log segments.
    /// Best for many writes to a set of keys that fits in memory. Range scans
    /// cost a pass over every key plus a sort of the matches.
    Hash,
    /// LSM-tree: memtable and write-ahead log, SSTables with bloom filters,
    /// leveled compaction. For write-heavy data larger than memory, with
    /// range scans.
    Lsm,
    /// B+tree: fixed-size pages overwritten in place, a write-ahead log,
    /// latches. For read-heavy data and predictable read latency. Keys are
    /// limited to about a quarter of a page (995 bytes with 4 KiB pages).
    Btree,
}

impl Engine {
    /// The engine's name as written in the directory and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Hash => "hash",
            Engine::Lsm => "lsm",
            Engine::Btree => "btree",
        }
    }

    /// Every engine this build has.
    pub fn all() -> &'static [Engine] {
        &[Engine::Hash, Engine::Lsm, Engine::Btree]
    }
}

impl std::str::FromStr for Engine {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        Engine::all()
            .iter()
            .copied()
            .find(|e| e.name() == s)
            .ok_or_else(|| crate::Error::InvalidArgument(format!("unknown engine {s:?} (known: hash, lsm, btree)")))
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// When writes are made durable with fsync. `docs/ENGINES.md` says exactly
/// what each policy can lose in a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// Every write or batch is on stable storage before it returns.
    /// Concurrent writers share one fsync (group commit).
    Always,
    /// A background thread fsyncs every this many milliseconds; a crash of
    /// the machine can lose the writes of the last interval.
    Interval(u64),
    /// Never fsync on its own (only on `sync()`, rotation and close); a crash
    /// of the machine can lose everything since the last sync. A crash of
    /// the process alone loses nothing that was acknowledged.
    Never,
}

impl Sync {
    /// The interval of [`Sync::Interval`], if that is the policy.
    pub(crate) fn interval(self) -> Option<Duration> {
        match self {
            Sync::Interval(ms) => Some(Duration::from_millis(ms)),
            _ => None,
        }
    }
}

/// Options for [`Db::open`](crate::Db::open).
#[derive(Debug, Clone)]
pub struct Options {
    /// The engine used when the directory is created. Opening an existing
    /// directory with another engine is an error.
    pub engine: Engine,
    /// The durability policy.
    pub sync: Sync,
    /// Create the directory if it does not exist.
    pub create_if_missing: bool,
    /// A log segment is closed and a new one started once it reaches this
    /// many bytes (a single batch larger than this gets a segment of its own).
    pub segment_size: u64,
    /// `hash`: merge starts by itself when this fraction of the bytes in
    /// closed segments is dead (overwritten, deleted or expired).
    pub merge_dead_ratio: f64,
    /// `hash`: and when at least this many bytes are dead (default 64 MiB).
    pub merge_min_dead_bytes: u64,
    /// How often the background thread looks at the merge trigger.
    pub background_interval: Duration,
    /// `lsm`: a memtable is flushed to a table once it holds this many bytes.
    pub memtable_size: usize,
    /// `lsm`: writers wait while this many full memtables await a flush.
    pub max_immutable_memtables: usize,
    /// `lsm` and `hash`: bytes of blocks kept in memory (lsm: table data
    /// blocks; hash: a quarter of it, at most `segment_size`, is a ring of
    /// the newest bytes written to the active segment, from which gets of
    /// recent writes are answered; the rest holds 8 KiB blocks of sealed
    /// segments and full blocks of the active one, so hot values are read
    /// without a system call, and up to half of it, besides the ring,
    /// sealed segments the warm-up or a merge read whole).
    pub block_cache_size: usize,
    /// `lsm`: compaction writes tables of about this many bytes.
    pub target_file_size: u64,
    /// `lsm`: level 0 is compacted once it has this many tables.
    pub l0_compaction_trigger: usize,
    /// `lsm`: level 1 is compacted once it holds this many bytes; each
    /// deeper level holds 10 times more.
    pub base_level_bytes: u64,
    /// `btree`: bytes per page, a power of two from 1 KiB to 32 KiB. Fixed
    /// when the directory is created (an existing directory keeps its own).
    pub page_size: usize,
    /// `btree`: bytes of pages kept in the buffer pool.
    pub page_cache_size: usize,
    /// `btree` and `hash`: after open, a background thread reads the page
    /// file into the buffer pool (btree: front to back, until the pool is
    /// nearly full or the file ends), or the segments into the block
    /// cache (hash: newest first, whole or in blocks, until the cache is
    /// nearly full), so the
    /// first reads and writes after a restart find their data in memory.
    /// Open does not wait for it, and it evicts nothing. (hash: a merge
    /// also reads its output segments whole while half the cache allows.)
    pub warm_cache: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            engine: Engine::Hash,
            sync: Sync::Always,
            create_if_missing: true,
            segment_size: 64 << 20,
            merge_dead_ratio: 0.5,
            merge_min_dead_bytes: 64 << 20,
            background_interval: Duration::from_millis(200),
            memtable_size: 16 << 20,
            max_immutable_memtables: 2,
            block_cache_size: 64 << 20,
            target_file_size: 4 << 20,
            l0_compaction_trigger: 4,
            base_level_bytes: 32 << 20,
            page_size: 4096,
            page_cache_size: 128 << 20,
            warm_cache: true,
        }
    }
}

impl Options {
    /// Default options for `engine`.
    pub fn new(engine: Engine) -> Self {
        Options { engine, ..Options::default() }
    }

    pub(crate) fn validate(&self) -> crate::Result<()> {
        if self.segment_size < 4096 {
            return Err(crate::Error::InvalidArgument(format!(
                "segment_size {} is below the minimum of 4096 bytes",
                self.segment_size
            )));
        }
        if !(self.merge_dead_ratio > 0.0 && self.merge_dead_ratio <= 1.0) {
            return Err(crate::Error::InvalidArgument(format!(
                "merge_dead_ratio {} must be in (0, 1]",
                self.merge_dead_ratio
            )));
        }
        if let Sync::Interval(0) = self.sync {
            return Err(crate::Error::InvalidArgument("Sync::Interval(0): use Sync::Always".into()));
        }
        Ok(())
    }
}

/// The largest key, in bytes.
pub const MAX_KEY_LEN: usize = 64 * 1024;
/// The largest value, in bytes.
pub const MAX_VALUE_LEN: usize = 64 * 1024 * 1024;
/// The largest total of keys and values in one batch, in bytes.
pub const MAX_BATCH_BYTES: usize = 256 * 1024 * 1024;
