//! `latchkey bench`: measurements a user can run on their own machine.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use latchkey::{Db, Engine, Options, WriteBatch};
use rand::{Rng, SeedableRng};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Run the benchmark harness's workloads over latchkey's own engines.
    ///
    /// The workloads of `latchkey-bench` (fillseq, fillrandom, reopen,
    /// readrandom, readmissing, scan, overwrite-counter, sync-writes,
    /// sync-writes-8t, mixed-4t, space; 16-byte keys, 100-byte values),
    /// each in a process of its own, against hash, lsm and btree, so you can
    /// choose an engine on your own hardware. Prints throughput, p50/p99
    /// latencies, CPU seconds and peak RSS per workload; --json and --charts
    /// write them out too. docs/BENCHMARKS.md describes each workload.
    Workloads(latchkey_bench::workloads::RunArgs),
    /// One workload against one engine in this process (what `workloads`
    /// starts for each run).
    #[command(hide = true)]
    Worker(latchkey_bench::workloads::WorkerArgs),
    /// Time reopening a hash store with its hint files, and without them.
    ///
    /// Fills a fresh store with --keys keys (16-byte keys, 100-byte values,
    /// random order), merges it so every segment has a hint file, then
    /// reopens it (best of 3) with the hint files and again after moving
    /// them aside, when every data segment must be read record by record.
    HintReopen {
        /// How many keys to load.
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        /// Where to build the store (must not exist; removed afterwards).
        /// Defaults to a fresh directory under the system's temp directory.
        #[arg(long)]
        path: Option<PathBuf>,
        /// Keep the store afterwards (with its key tables (hint files) moved into
        /// `hints-aside/`).
        #[arg(long)]
        keep: bool,
    },
    /// Load many keys into an engine, then measure random reads.
    ///
    /// Writes --keys keys (16-byte random keys, 100-byte values) in batches
    /// of 1,000 with no sync per batch and one sync at the end, then times
    /// 100,000 random gets of present keys and 100,000 of missing keys, and
    /// prints the tables probed per get (for btree: pages touched per get,
    /// the tree's height and the buffer pool's hit rate) and the process's
    /// peak memory (RSS).
    Load {
        /// Engine to load: hash, lsm or btree.
        #[arg(long, default_value = "lsm")]
        engine: Engine,
        /// btree: MiB of pages the buffer pool keeps (enough for every page
        /// of 1M keys by default, so reads are served from memory).
        #[arg(long, default_value_t = 512)]
        cache_mb: usize,
        /// How many keys.
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        /// Where to build the store (must not exist; removed afterwards).
        #[arg(long)]
        path: Option<PathBuf>,
    },
    /// Show that the btree's free list reuses pages.
    ///
    /// Inserts --keys random keys (16-byte keys, 100-byte values) in
    /// batches of 1,000, deletes 90% of them, then inserts --keys new keys,
    /// and prints the page file's size after each step (the growth of the
    /// last step should stay under 20%), then runs `check` on the tree.
    BtreeSpace {
        /// How many keys per insert step.
        #[arg(long, default_value_t = 1_000_000)]
        keys: u64,
        /// Where to build the store (must not exist; removed afterwards).
        #[arg(long)]
        path: Option<PathBuf>,
    },
}

/// A progress bar over bytes or items, drawn on stderr (hidden when stderr
/// is not a terminal).
pub fn bytes_bar(len: u64, msg: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(msg);
    bar
}

fn count_bar(len: u64, msg: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(msg);
    bar
}

pub fn run(cmd: &BenchCommand) -> latchkey::Result<()> {
    use latchkey_bench::workloads;
    match cmd {
        BenchCommand::Workloads(args) => {
            if let Some(e) = args.engines.iter().flatten().find(|e| !workloads::LATCHKEY_ENGINES.contains(&e.as_str()))
            {
                return Err(latchkey::Error::InvalidArgument(format!(
                    "{e} is not one of latchkey's engines ({}); latchkey-bench compares with other stores",
                    workloads::LATCHKEY_ENGINES.join(", ")
                )));
            }
            workloads::run(args, &["bench", "worker"], workloads::LATCHKEY_ENGINES)
                .map(|_| ())
                .map_err(latchkey::Error::InvalidArgument)
        }
        BenchCommand::Worker(args) => match workloads::worker_main(args) {
            0 => Ok(()),
            code => std::process::exit(code),
        },
        BenchCommand::HintReopen { keys, path, keep } => hint_reopen(*keys, path.clone(), *keep),
        BenchCommand::Load { engine, keys, path, cache_mb } => load(*engine, *keys, path.clone(), *cache_mb),
        BenchCommand::BtreeSpace { keys, path } => btree_space(*keys, path.clone()),
    }
}

struct TempDir(PathBuf, bool);

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.1 {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn hint_reopen(keys: u64, path: Option<PathBuf>, keep: bool) -> latchkey::Result<()> {
    let dir = path.unwrap_or_else(|| std::env::temp_dir().join(format!("latchkey-bench-{}", std::process::id())));
    if dir.exists() {
        return Err(latchkey::Error::InvalidArgument(format!("{} exists; give a path that does not", dir.display())));
    }
    let dir = TempDir(dir, keep);
    let opts = Options { sync: latchkey::Sync::Never, ..Options::new(Engine::Hash) };
    let db = Db::open(&dir.0, opts.clone())?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(42);
    let bar = count_bar(keys, "loading");
    let mut batch = WriteBatch::new();
    let mut value = [0u8; 100];
    for i in 0..keys {
        let key: u128 = rng.gen();
        rng.fill(&mut value[..]);
        batch.put(key.to_le_bytes(), value);
        if batch.len() == 1000 || i + 1 == keys {
            db.write(std::mem::take(&mut batch))?;
            bar.set_position(i + 1);
        }
    }
    bar.finish_and_clear();
    eprintln!("merging so that every segment has a hint file...");
    db.compact()?;
    let stats = db.stats();
    db.close()?;

    let with_hints = best_reopen(&dir.0, &opts, keys)?;
    let aside = dir.0.join("hints-aside");
    std::fs::create_dir(&aside).map_err(|e| latchkey::Error::Io { path: aside.clone(), source: e })?;
    for name in latchkey::fs::list(&dir.0)? {
        if name.ends_with(".keys") {
            latchkey::fs::rename(&dir.0.join(&name), &aside.join(&name))?;
        }
    }
    let without = best_reopen(&dir.0, &opts, keys)?;
    println!("store: {} keys, {} files, {} bytes on disk", stats.keys, stats.files, stats.disk_bytes);
    println!("reopen with hint files:    {:>8.1} ms (best of 3)", with_hints.as_secs_f64() * 1e3);
    println!("reopen without hint files: {:>8.1} ms (best of 3)", without.as_secs_f64() * 1e3);
    println!("hint files make reopening {:.1}x faster", without.as_secs_f64() / with_hints.as_secs_f64());
    Ok(())
}

fn best_reopen(dir: &std::path::Path, opts: &Options, keys: u64) -> latchkey::Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let db = Db::open(dir, opts.clone())?;
        best = best.min(t.elapsed());
        let found = db.stats().keys;
        if found != keys {
            return Err(latchkey::Error::InvalidArgument(format!("reopened store has {found} keys, expected {keys}")));
        }
        db.close()?;
    }
    Ok(best)
}

/// Peak resident memory of this process, from /proc (Linux), in bytes.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn key_of(i: u64) -> [u8; 16] {
    // A bijective scramble, so keys are random-looking but regenerable.
    let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i >> 29);
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&x.to_be_bytes());
    k[8..].copy_from_slice(&i.to_le_bytes());
    k
}

fn fresh_dir(path: Option<PathBuf>, what: &str) -> latchkey::Result<TempDir> {
    let dir = path.unwrap_or_else(|| std::env::temp_dir().join(format!("latchkey-{what}-{}", std::process::id())));
    if dir.exists() {
        return Err(latchkey::Error::InvalidArgument(format!("{} exists; give a path that does not", dir.display())));
    }
    Ok(TempDir(dir, false))
}

fn load(engine: Engine, keys: u64, path: Option<PathBuf>, cache_mb: usize) -> latchkey::Result<()> {
    let dir = fresh_dir(path, "load")?;
    let opts = Options { sync: latchkey::Sync::Never, page_cache_size: cache_mb << 20, ..Options::new(engine) };
    let db = Db::open(&dir.0, opts)?;
    let bar = count_bar(keys, "loading");
    let started = Instant::now();
    let mut batch = WriteBatch::new();
    let mut value = [0u8; 100];
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    for i in 0..keys {
        rng.fill(&mut value[..]);
        batch.put(key_of(i), value);
        if batch.len() == 1000 || i + 1 == keys {
            db.write(std::mem::take(&mut batch))?;
            bar.set_position(i + 1);
        }
    }
    db.sync()?;
    let load_time = started.elapsed();
    bar.finish_and_clear();
    let loaded = db.stats();
    let reads = 100_000u64.min(keys.max(1));
    let t = Instant::now();
    for _ in 0..reads {
        let i = rng.gen_range(0..keys.max(1));
        if db.get(key_of(i))?.is_none() {
            return Err(latchkey::Error::InvalidArgument(format!("key {i} is missing after the load")));
        }
    }
    let hit_time = t.elapsed();
    let after_hits = db.stats();
    let t = Instant::now();
    for j in 0..reads {
        db.get(key_of(keys + 1 + j))?;
    }
    let miss_time = t.elapsed();
    let after_misses = db.stats();
    let probes = |a: &latchkey::Stats, b: &latchkey::Stats, n: u64, total_before: u64| {
        let gets_after = total_before + n;
        (b.probes_per_get * gets_after as f64 - a.probes_per_get * total_before as f64) / n as f64
    };
    println!("engine {engine}: {keys} keys of 16 bytes with 100-byte values");
    println!(
        "load:          {:>10.1} s  ({:.0} keys/s), {} stalls",
        load_time.as_secs_f64(),
        keys as f64 / load_time.as_secs_f64(),
        loaded.stalls
    );
    println!(
        "random gets:   {:>10.0} /s, {:.2} tables probed per get",
        reads as f64 / hit_time.as_secs_f64(),
        probes(&loaded, &after_hits, reads, 0)
    );
    println!(
        "missing gets:  {:>10.0} /s, {:.3} tables probed per get (bloom filters passed)",
        reads as f64 / miss_time.as_secs_f64(),
        probes(&after_hits, &after_misses, reads, reads)
    );
    println!(
        "on disk:       {:>10} bytes in {} files; write amplification {:.2}",
        after_misses.disk_bytes,
        after_misses.files,
        after_misses.write_amplification()
    );
    if engine == Engine::Btree {
        println!(
            "btree:         height {}, {} pages, fill factor {:.2}, pool hit rate {:.4}; a present-key get touches {:.2} pages",
            after_misses.height,
            after_misses.pages,
            after_misses.fill_factor,
            after_misses.cache_hit_rate,
            probes(&loaded, &after_hits, reads, 0)
        );
    }
    println!("peak RSS:      {:>10.1} MiB", peak_rss() as f64 / (1 << 20) as f64);
    db.close()
}

fn btree_space(keys: u64, path: Option<PathBuf>) -> latchkey::Result<()> {
    let dir = fresh_dir(path, "btree-space")?;
    let db = Db::open(&dir.0, Options { sync: latchkey::Sync::Never, ..Options::new(Engine::Btree) })?;
    let file_len = || std::fs::metadata(dir.0.join("pages.btree")).map_or(0, |m| m.len());
    let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
    let first: Vec<u128> = (0..keys).map(|_| rng.gen()).collect();
    let value = [7u8; 100];
    let step = |label: &'static str, n: u64, f: &mut dyn FnMut(u64, &mut WriteBatch)| -> latchkey::Result<()> {
        let bar = count_bar(n, label);
        let mut batch = WriteBatch::new();
        for i in 0..n {
            f(i, &mut batch);
            if batch.len() >= 1000 || i + 1 == n {
                db.write(std::mem::take(&mut batch))?;
                bar.set_position(i + 1);
            }
        }
        bar.finish_and_clear();
        db.compact()
    };
    step("inserting", keys, &mut |i, b| {
        b.put(first[i as usize].to_be_bytes(), value);
    })?;
    let full = file_len();
    step("deleting", keys, &mut |i, b| {
        if i % 10 != 0 {
            b.delete(first[i as usize].to_be_bytes());
        }
    })?;
    let after_delete = file_len();
    let free = db.stats().free_pages;
    step("inserting", keys, &mut |_, b| {
        b.put(rng.gen::<u128>().to_be_bytes(), value);
    })?;
    let again = file_len();
    let stats = db.stats();
    db.close()?;
    println!("btree, {keys} keys per step (16-byte keys, 100-byte values), batches of 1,000");
    println!("after inserting {keys} keys:        {full:>12} bytes");
    println!("after deleting 90% of them:      {after_delete:>12} bytes ({free} pages on the free list)");
    println!("after inserting {keys} new keys:    {again:>12} bytes",);
    println!("growth over the last step:       {:>11.1}%", (again as f64 / after_delete as f64 - 1.0) * 100.0);
    println!(
        "tree: height {}, {} pages, {} free, fill factor {:.2}",
        stats.height, stats.pages, stats.free_pages, stats.fill_factor
    );
    let report = latchkey::check(&dir.0, &mut |_, _| {})?;
    println!("check: {} pages and records verified, {} damage", report.records, report.damage.len());
    if !report.is_clean() {
        for d in &report.damage {
            eprintln!("damage: {d}");
        }
        return Err(latchkey::Error::InvalidArgument("check found damage".into()));
    }
    Ok(())
}
