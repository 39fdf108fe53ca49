//! The workloads, each run in a process of its own so its CPU seconds and
//! peak RSS are its own: the orchestrator ([`run`]) starts the current
//! executable once per engine and workload with the worker arguments
//! ([`WorkerArgs`]), reads one JSON line of results from its stdout, and
//! prints the table, the JSON file and the charts.
//!
//! The store a worker opens was built by the `fillrandom` worker before it;
//! `reopen` times the open itself, every later workload opens the store
//! untimed (so `readrandom` runs after a reopen, as specified) and then
//! measures.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};

use crate::adapters::{self, Store};

/// Every workload, in the order they run against one engine.
pub const WORKLOADS: &[&str] = &[
    "fillseq",
    "fillrandom",
    "reopen",
    "readrandom",
    "readmissing",
    "scan",
    "overwrite-counter",
    "sync-writes",
    "sync-writes-8t",
    "mixed-4t",
    "space",
];

/// latchkey's own engines, as the harness names them.
pub const LATCHKEY_ENGINES: &[&str] = &["latchkey-hash", "latchkey-lsm", "latchkey-btree"];

/// What the orchestrator runs.
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// Keys to load (16-byte keys, 100-byte values).
    #[arg(long, default_value_t = 1_000_000)]
    pub n: u64,
    /// Engines to run, comma-separated: latchkey-hash, latchkey-lsm,
    /// latchkey-btree, and (in latchkey-bench) redb, fjall, sled, rocksdb
    /// (with --features rocksdb).
    #[arg(long, value_delimiter = ',')]
    pub engines: Option<Vec<String>>,
    /// Workloads to run, comma-separated (default: all). `fillrandom` is
    /// added when a later workload needs its store.
    #[arg(long, value_delimiter = ',')]
    pub workloads: Option<Vec<String>>,
    /// Where the stores are built (a fresh directory under it per engine;
    /// default: the system's temporary directory).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Seconds the 4-thread mixed workload (90% reads, 10% writes) runs per engine.
    #[arg(long, default_value_t = 20)]
    pub mixed_secs: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also draw one SVG bar chart per workload into this directory.
    #[arg(long)]
    pub charts: Option<PathBuf>,
    /// Rounds of the workloads that change nothing the others depend on
    /// (reopen, readrandom, readmissing, scan, overwrite-counter,
    /// sync-writes, sync-writes-8t): each runs this many times, neighbours
    /// taking turns (sync-writes, sync-writes-8t, sync-writes, ...; the
    /// counter's rounds go on counting), and the round with
    /// the median headline figure is reported, so one slow fsync or a
    /// noisy neighbour does not decide a ratio.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
}

/// Workloads that change nothing another workload depends on, so they can
/// be run again (`--rounds`), in groups whose members take turns. The
/// counter has a group of its own: its increments would change the store
/// the readers measure (the `hash` engine keeps the writes made since its
/// last key table in a second map, which every get then searches first).
const REPEATABLE: &[&[&str]] =
    &[&["reopen", "readrandom", "readmissing", "scan"], &["overwrite-counter"], &["sync-writes", "sync-writes-8t"]];

/// The group of [`REPEATABLE`] that `w` belongs to, if any.
fn repeat_group(w: &str) -> Option<usize> {
    REPEATABLE.iter().position(|g| g.contains(&w))
}

/// The round whose headline figure (its first row) is the median of
/// `rounds`, reported whole so its latencies, CPU and RSS belong together.
fn median_round(mut rounds: Vec<Measured>) -> Option<Measured> {
    rounds.sort_by(|a, b| {
        let (x, y) = (a.rows.first().map_or(f64::NAN, |r| r.value), b.rows.first().map_or(f64::NAN, |r| r.value));
        x.total_cmp(&y)
    });
    let mid = rounds.len().checked_sub(1)? / 2;
    Some(rounds.swap_remove(mid))
}

/// One workload against one engine, in this process.
#[derive(clap::Args, Clone, Debug)]
pub struct WorkerArgs {
    /// (`--bench-engine`: `latchkey`'s global `--engine` means something else.)
    #[arg(id = "bench_engine", long = "bench-engine")]
    pub engine: String,
    #[arg(long)]
    pub workload: String,
    /// The engine's store directory (built by `fillrandom`).
    #[arg(long)]
    pub path: PathBuf,
    #[arg(long)]
    pub n: u64,
    #[arg(long, default_value_t = 20)]
    pub mixed_secs: u64,
    /// Which round of a repeated workload this is (`--rounds`): the random
    /// values, and the keys the sync-writes workloads write, differ in
    /// every round.
    #[arg(long, default_value_t = 1)]
    pub round: u32,
}

/// One figure: a workload's throughput, a latency quantile, a size.
#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub value: f64,
    pub unit: String,
}

impl Row {
    fn new(name: impl Into<String>, value: f64, unit: &str) -> Row {
        Row { name: name.into(), value, unit: unit.to_string() }
    }

    /// Whether a smaller figure is the better one.
    pub fn lower_is_better(&self) -> bool {
        matches!(self.unit.as_str(), "ms" | "us" | "x live" | "s" | "MiB")
    }
}

/// What one worker process measured.
#[derive(Clone, Debug)]
pub struct Measured {
    pub workload: String,
    pub rows: Vec<Row>,
    /// User + system CPU seconds of the measured part (every thread).
    pub cpu_secs: f64,
    /// The worker process's peak resident set, MiB.
    pub peak_rss_mib: f64,
}

const VALUE_LEN: usize = 100;
/// Durable single puts from one thread.
const SYNC_WRITES: u64 = 4_000;
/// Durable single puts per thread of `sync-writes-8t` (16,000 in all): a
/// run long enough (about a second) that one slow fsync does not decide it.
const SYNC_WRITES_PER_THREAD: u64 = 2_000;

/// The `i`-th key of the random workloads: 16 bytes, spread over the key space.
pub fn key(i: u64) -> [u8; 16] {
    let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i >> 31);
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&x.to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

/// Key `i` of the sync-writes workloads' writer `thread` (8 for the one
/// thread of `sync-writes`) in `round`: outside every other workload's
/// keys, and new in every round. (Rounds that rewrote the last round's
/// keys with the same values let sled's durable puts go from 6.8k to 21.9k
/// and 47.0k per second in three rounds.)
fn sync_key(round: u32, thread: u64, i: u64) -> [u8; 16] {
    key((1 << 62) | (u64::from(round) << 40) | (thread << 32) | i)
}

/// Keys in ascending order, for fillseq.
fn seq_key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

fn value(rng: &mut rand::rngs::SmallRng) -> [u8; VALUE_LEN] {
    let mut v = [0u8; VALUE_LEN];
    rng.fill(&mut v[..]);
    v
}

/// 0..n in the random order fillrandom and space write them (the same in
/// every process).
fn shuffled(n: u64) -> Vec<u64> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let mut order: Vec<u64> = (0..n).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.gen_range(0..=i));
    }
    order
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e.metadata().map(|m| (m.is_dir(), m.len())).unwrap_or((false, 0));
            total += if m.0 { dir_size(&e.path()) } else { m.1 };
        }
    }
    total
}

/// Latencies of single operations, recorded in nanoseconds (3 significant
/// figures, up to 10 minutes).
pub(crate) struct Latency(pub(crate) hdrhistogram::Histogram<u64>);

impl Latency {
    pub(crate) fn new() -> Self {
        Latency(hdrhistogram::Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid histogram bounds"))
    }

    pub(crate) fn record(&mut self, d: Duration) {
        self.0.saturating_record(d.as_nanos().max(1) as u64);
    }

    /// The `q` quantile in milliseconds (NaN if nothing was recorded).
    pub(crate) fn ms(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            f64::NAN
        } else {
            self.0.value_at_quantile(q) as f64 / 1e6
        }
    }

    /// p50 and p99 rows, in microseconds.
    fn rows(&self, name: &str, out: &mut Vec<Row>) {
        for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
            out.push(Row::new(format!("{name} {label}"), self.ms(q) * 1000.0, "us"));
        }
    }
}

/// (user + system CPU seconds of every thread, peak RSS in MiB) of this process.
fn rusage() -> (f64, f64) {
    // SAFETY: getrusage fills the struct it is given; a zeroed rusage is a
    // valid value of that plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return (f64::NAN, f64::NAN);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(ru.ru_utime) + secs(ru.ru_stime), ru.ru_maxrss as f64 / 1024.0)
}

fn bar(engine: &str, workload: &str, len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>15} {msg:<18} [{bar:30}] {human_pos}/{human_len} {per_sec} eta {eta}")
            .expect("valid progress template")
            .progress_chars("=> "),
    );
    bar.set_prefix(engine.to_string());
    bar.set_message(workload.to_string());
    bar
}

fn per_sec(count: u64, d: Duration) -> f64 {
    count as f64 / d.as_secs_f64()
}

/// Runs one workload in this process and returns what it measured.
pub fn work(args: &WorkerArgs) -> Result<Measured, String> {
    let (engine, n, path) = (args.engine.as_str(), args.n, args.path.as_path());
    let mut rng = rand::rngs::SmallRng::seed_from_u64(u64::from(args.round));
    let mut rows = Vec::new();
    let w = args.workload.as_str();
    // Opens the filled store; for every workload but fillseq, fillrandom
    // and reopen this is not part of what is measured.
    let open = || adapters::open(engine, path, w.starts_with("sync-writes"));
    let cpu0;
    match w {
        "fillseq" | "fillrandom" => {
            let order: Vec<u64> = if w == "fillseq" { (0..n).collect() } else { shuffled(n) };
            let _ = std::fs::remove_dir_all(path);
            std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let db = open()?;
            let pb = bar(engine, w, n);
            cpu0 = rusage().0;
            let started = Instant::now();
            for chunk in order.chunks(1000) {
                let batch: Vec<([u8; 16], [u8; VALUE_LEN])> = chunk
                    .iter()
                    .map(|&i| (if w == "fillseq" { seq_key(i) } else { key(i) }, value(&mut rng)))
                    .collect();
                db.write_batch(&batch)?;
                pb.inc(chunk.len() as u64);
            }
            db.sync()?;
            pb.finish_and_clear();
            rows.push(Row::new(w, per_sec(n, started.elapsed()), "ops/s"));
        }
        "reopen" => {
            cpu0 = rusage().0;
            let started = Instant::now();
            let db = open()?;
            rows.push(Row::new(w, started.elapsed().as_secs_f64() * 1e3, "ms"));
            drop(db);
        }
        _ => {
            let db = open()?;
            if w.starts_with("sync-writes") {
                // Work the open started (a merge or a compaction of what
                // the earlier workloads left) and the kernel's write-back
                // of the earlier workloads' files would share the disk with
                // the fsyncs these measure: let both finish first.
                db.settle()?;
                // SAFETY: sync(2) takes no arguments and cannot fail.
                unsafe { libc::sync() };
            }
            cpu0 = rusage().0;
            measure(engine, w, &db, (n, args.round), args.mixed_secs, &mut rng, &mut rows)?;
            if w == "space" {
                // Live data: every key in the store (those of the earlier
                // workloads too) with a 100-byte value.
                let keys = db.scan(&[], usize::MAX)? as u64;
                drop(db);
                let live = keys * (16 + VALUE_LEN as u64);
                rows.push(Row::new(w, dir_size(path) as f64 / live as f64, "x live"));
            }
        }
    }
    let (cpu1, rss) = rusage();
    Ok(Measured { workload: w.to_string(), rows, cpu_secs: cpu1 - cpu0, peak_rss_mib: rss })
}

fn measure(
    engine: &str,
    w: &str,
    db: &adapters::Any,
    (n, round): (u64, u32),
    mixed_secs: u64,
    rng: &mut rand::rngs::SmallRng,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    match w {
        "readrandom" | "readmissing" => {
            let reads = n.min(1_000_000);
            let pb = bar(engine, w, reads);
            let mut lat = Latency::new();
            let t = Instant::now();
            for j in 0..reads {
                let (k, present) =
                    if w == "readrandom" { (key(rng.gen_range(0..n)), true) } else { (key(n + j), false) };
                let op = Instant::now();
                if db.get(&k)?.is_some() != present {
                    return Err(format!("{engine}: {w}: a get of key {k:?} disagrees with what was written"));
                }
                lat.record(op.elapsed());
                if j % 4096 == 0 {
                    pb.set_position(j);
                }
            }
            rows.push(Row::new(w, per_sec(reads, t.elapsed()), "ops/s"));
            pb.finish_and_clear();
            if w == "readrandom" {
                lat.rows(w, rows);
            }
        }
        "scan" => {
            // 10,000 scans of 100 consecutive keys from random starts (or as
            // many as fit in 20 s: the hash engine sorts its keydir per scan).
            let pb = bar(engine, w, 10_000);
            let t = Instant::now();
            let mut scans = 0u64;
            while scans < 10_000 && t.elapsed() < Duration::from_secs(20) {
                if db.scan(&key(rng.gen_range(0..n)), 100)? == 0 {
                    return Err(format!("{engine}: empty scan"));
                }
                scans += 1;
                pb.inc(1);
            }
            pb.finish_and_clear();
            rows.push(Row::new(w, per_sec(scans, t.elapsed()), "scans/s"));
        }
        "overwrite-counter" => {
            // The seed's play counter: 1,000 keys, N/10 read-modify-write increments.
            let increments = (n / 10).max(10_000);
            let pb = bar(engine, w, increments);
            let t = Instant::now();
            for i in 0..increments {
                let k = format!("counter:{:04}", i % 1000).into_bytes();
                let c = db.get(&k)?.map_or(0, |v| u64::from_le_bytes(v[..8].try_into().unwrap_or([0; 8])));
                db.write_batch(&[(k, (c + 1).to_le_bytes())])?;
                if i % 1024 == 0 {
                    pb.set_position(i);
                }
            }
            db.sync()?;
            pb.finish_and_clear();
            rows.push(Row::new(w, per_sec(increments, t.elapsed()), "ops/s"));
        }
        "sync-writes" => {
            let pb = bar(engine, w, SYNC_WRITES);
            let mut lat = Latency::new();
            let t = Instant::now();
            for i in 0..SYNC_WRITES {
                let op = Instant::now();
                db.put_durable(&sync_key(round, 8, i), &value(rng))?;
                lat.record(op.elapsed());
                pb.inc(1);
            }
            pb.finish_and_clear();
            rows.push(Row::new(w, per_sec(SYNC_WRITES, t.elapsed()), "ops/s"));
            lat.rows(w, rows);
        }
        "sync-writes-8t" => {
            let pb = bar(engine, w, SYNC_WRITES_PER_THREAD * 8);
            let t = Instant::now();
            let failed = std::sync::Mutex::new(None);
            std::thread::scope(|s| {
                for th in 0..8u64 {
                    let (failed, pb) = (&failed, &pb);
                    s.spawn(move || {
                        let v = [(th as u8) ^ ((round as u8) << 4); VALUE_LEN];
                        for i in 0..SYNC_WRITES_PER_THREAD {
                            if let Err(e) = db.put_durable(&sync_key(round, th, i), &v) {
                                *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                                return;
                            }
                            pb.inc(1);
                        }
                    });
                }
            });
            pb.finish_and_clear();
            if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
                return Err(e);
            }
            rows.push(Row::new(w, per_sec(SYNC_WRITES_PER_THREAD * 8, t.elapsed()), "ops/s"));
        }
        "mixed-4t" => mixed(engine, db, n, mixed_secs, rows)?,
        "space" => {
            // One overwrite of every key, then merge/compaction settles.
            let pb = bar(engine, w, n);
            for chunk in shuffled(n).chunks(1000) {
                let batch: Vec<([u8; 16], [u8; VALUE_LEN])> = chunk.iter().map(|&i| (key(i), value(rng))).collect();
                db.write_batch(&batch)?;
                pb.inc(chunk.len() as u64);
            }
            db.sync()?;
            pb.finish_and_clear();
            db.settle()?;
        }
        other => return Err(format!("unknown workload {other} (known: {})", WORKLOADS.join(", "))),
    }
    Ok(())
}

/// 4 threads, 90% random gets and 10% single puts (no sync), for `secs` seconds.
fn mixed(engine: &str, db: &adapters::Any, n: u64, secs: u64, rows: &mut Vec<Row>) -> Result<(), String> {
    let pb = bar(engine, "mixed-4t", secs);
    let done = std::sync::atomic::AtomicU64::new(0);
    let stop_at = Instant::now() + Duration::from_secs(secs);
    let t = Instant::now();
    let failed = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for th in 0..4u64 {
            let (done, failed) = (&done, &failed);
            s.spawn(move || {
                let mut rng = rand::rngs::SmallRng::seed_from_u64(100 + th);
                let mut ops = 0u64;
                while Instant::now() < stop_at {
                    for _ in 0..100 {
                        let i = rng.gen_range(0..n);
                        let r = if rng.gen_ratio(1, 10) {
                            db.write_batch(&[(key(i), value(&mut rng))]).map(|_| ())
                        } else {
                            db.get(&key(i)).map(|_| ())
                        };
                        if let Err(e) = r {
                            *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                            return;
                        }
                        ops += 1;
                    }
                }
                done.fetch_add(ops, std::sync::atomic::Ordering::Relaxed);
            });
        }
        while Instant::now() < stop_at {
            std::thread::sleep(Duration::from_millis(200));
            pb.set_position(t.elapsed().as_secs());
        }
    });
    pb.finish_and_clear();
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    rows.push(Row::new("mixed-4t", per_sec(done.into_inner(), t.elapsed()), "ops/s"));
    Ok(())
}

/// The worker's entry point: runs the workload and prints its results as
/// one JSON line on stdout. Returns the process's exit code.
pub fn worker_main(args: &WorkerArgs) -> i32 {
    match work(args) {
        Ok(m) => {
            let rows: Vec<serde_json::Value> =
                m.rows.iter().map(|r| serde_json::json!({"name": r.name, "value": r.value, "unit": r.unit})).collect();
            let doc = serde_json::json!({"rows": rows, "cpu_secs": m.cpu_secs, "peak_rss_mib": m.peak_rss_mib});
            println!("{doc}");
            0
        }
        Err(e) => {
            eprintln!("{} {}: {e}", args.engine, args.workload);
            1
        }
    }
}

fn parse_worker_output(workload: &str, stdout: &[u8]) -> Result<Measured, String> {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().last().ok_or("the worker printed nothing")?;
    let doc: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("worker output {line:?}: {e}"))?;
    let num = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let rows = doc["rows"]
        .as_array()
        .ok_or("worker output without rows")?
        .iter()
        .map(|r| Row::new(r["name"].as_str().unwrap_or("?"), num(&r["value"]), r["unit"].as_str().unwrap_or("?")))
        .collect();
    Ok(Measured {
        workload: workload.to_string(),
        rows,
        cpu_secs: num(&doc["cpu_secs"]),
        peak_rss_mib: num(&doc["peak_rss_mib"]),
    })
}

/// The machine's rate of 4 KiB appends each followed by fdatasync: what
/// any engine's one-thread durable writes are bounded by.
pub fn fdatasync_rate(base: &Path) -> Result<f64, String> {
    use std::io::Write;
    std::fs::create_dir_all(base).map_err(|e| e.to_string())?;
    let path = base.join("fdatasync-probe");
    let mut f = std::fs::File::create(&path).map_err(|e| e.to_string())?;
    let buf = [7u8; 4096];
    let t = Instant::now();
    let mut n = 0u64;
    while n < 500 && t.elapsed() < Duration::from_secs(3) {
        f.write_all(&buf).map_err(|e| e.to_string())?;
        f.sync_data().map_err(|e| e.to_string())?;
        n += 1;
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    Ok(rate)
}

/// Every engine's results, in the order the engines ran.
pub type Results = Vec<(String, Vec<Measured>)>;

/// Runs every chosen workload against every chosen engine, each in a
/// process of its own (the current executable with `worker_args` in front
/// of the worker's arguments), and prints the tables; writes JSON and
/// charts when asked. `default_engines` is used when `--engines` is not given.
pub fn run(args: &RunArgs, worker_args: &[&str], default_engines: &[&str]) -> Result<Results, String> {
    let engines: Vec<String> =
        args.engines.clone().unwrap_or_else(|| default_engines.iter().map(|s| s.to_string()).collect());
    let mut workloads: Vec<&str> = match &args.workloads {
        None => WORKLOADS.to_vec(),
        Some(ws) => {
            for w in ws {
                if !WORKLOADS.contains(&w.as_str()) {
                    return Err(format!("unknown workload {w} (known: {})", WORKLOADS.join(", ")));
                }
            }
            WORKLOADS.iter().copied().filter(|w| ws.iter().any(|x| x == w)).collect()
        }
    };
    if workloads.iter().any(|w| !matches!(*w, "fillseq" | "fillrandom")) && !workloads.contains(&"fillrandom") {
        let at = workloads.iter().position(|w| *w != "fillseq").unwrap_or(0);
        workloads.insert(at, "fillrandom");
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let base = args
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("latchkey-bench-{}", std::process::id())));
    let fsync_rate = fdatasync_rate(&base);
    let mut all: Results = Vec::new();
    for engine in &engines {
        let mut measured = Vec::new();
        // Runs of repeatable workloads go round `rounds` times, taking turns.
        'engine: for group in workloads.chunk_by(|a, b| repeat_group(a).is_some() && repeat_group(a) == repeat_group(b))
        {
            let rounds = if repeat_group(group[0]).is_some() { args.rounds } else { 1 };
            let mut got: Vec<Vec<Measured>> = vec![Vec::new(); group.len()];
            for round in 1..=rounds {
                for (w, got) in group.iter().zip(&mut got) {
                    let Some(m) = run_worker(&exe, worker_args, args, &base, (engine, w, round))? else {
                        if *w == "fillrandom" {
                            break 'engine;
                        }
                        continue;
                    };
                    let first = &m.rows[0];
                    let of = if rounds > 1 { format!(" (round {round}/{rounds})") } else { String::new() };
                    eprintln!(
                        "{engine:>15} {w:<18} {:>12.2} {:<8} cpu {:>7.2} s  peak rss {:>7.1} MiB{of}",
                        first.value, first.unit, m.cpu_secs, m.peak_rss_mib
                    );
                    got.push(m);
                }
            }
            measured.extend(got.into_iter().filter_map(median_round));
        }
        let _ = std::fs::remove_dir_all(base.join(engine));
        all.push((engine.clone(), measured));
    }
    let _ = std::fs::remove_dir_all(&base);
    print_tables(args, &all, &fsync_rate);
    if let Some(path) = &args.json {
        write_json(path, args, &all, &fsync_rate)?;
    }
    if let Some(dir) = &args.charts {
        crate::chart::draw_all(dir, args.n, &all)?;
    }
    Ok(all)
}

/// Runs round `round` of workload `w` against `engine` in a worker process (the current
/// executable `exe` with `worker_args`); `None` if the worker failed, which
/// it reports on stderr.
fn run_worker(
    exe: &Path,
    worker_args: &[&str],
    args: &RunArgs,
    base: &Path,
    (engine, w, round): (&str, &str, u32),
) -> Result<Option<Measured>, String> {
    let path = if w == "fillseq" { base.join(format!("{engine}-seq")) } else { base.join(engine) };
    let out = Command::new(exe)
        .args(worker_args)
        .args(["--bench-engine", engine, "--workload", w, "--n", &args.n.to_string()])
        .args(["--mixed-secs", &args.mixed_secs.to_string(), "--round", &round.to_string()])
        .arg("--path")
        .arg(&path)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot start a worker: {e}"))?;
    if w == "fillseq" {
        let _ = std::fs::remove_dir_all(&path);
    }
    if !out.status.success() {
        eprintln!("{engine} {w}: failed ({})", out.status);
        return Ok(None);
    }
    match parse_worker_output(w, &out.stdout) {
        Ok(m) => Ok(Some(m)),
        Err(e) => {
            eprintln!("{engine} {w}: {e}");
            Ok(None)
        }
    }
}

/// Every row name in the order first seen, with its unit.
pub fn row_names(all: &Results) -> Vec<(String, String)> {
    let mut names: Vec<(String, String)> = Vec::new();
    for (_, ms) in all {
        for r in ms.iter().flat_map(|m| &m.rows) {
            if !names.iter().any(|(n, _)| *n == r.name) {
                names.push((r.name.clone(), r.unit.clone()));
            }
        }
    }
    // Keep the workload order of WORKLOADS (an engine may have failed one).
    names.sort_by_key(|(n, _)| WORKLOADS.iter().position(|w| n.split(' ').next() == Some(w)).unwrap_or(usize::MAX));
    names
}

/// The figure `name` of `engine`'s results, if it ran.
pub fn figure(ms: &[Measured], name: &str) -> Option<f64> {
    ms.iter().flat_map(|m| &m.rows).find(|r| r.name == name).map(|r| r.value)
}

fn print_tables(args: &RunArgs, all: &Results, fsync_rate: &Result<f64, String>) {
    println!("{} keys, 16-byte keys, 100-byte values; bulk writes synced once at the end", args.n);
    if args.rounds > 1 {
        println!(
            "{}: the median of {} rounds (each in a process of its own)",
            REPEATABLE.concat().join(", "),
            args.rounds
        );
    }
    match fsync_rate {
        Ok(r) => println!("this machine: {r:.0} appends+fdatasync of 4 KiB per second (one thread)"),
        Err(e) => println!("this machine: fdatasync probe failed: {e}"),
    }
    let peers_ran = all.iter().any(|(n, _)| !n.starts_with("latchkey"));
    if all.iter().any(|(n, _)| n == "sled") {
        println!(
            "durable writes: latchkey, redb, fjall and RocksDB fdatasync; sled's flush() is sync_file_range on Linux \
             (sled 0.34: no disk cache flush, no metadata), a weaker guarantee"
        );
    }
    print!("{:<18}", "workload");
    for (name, _) in all {
        print!("{name:>15}");
    }
    println!("{}", if peers_ran { "  latchkey vs best peer" } else { "" });
    for (name, unit) in row_names(all) {
        print!("{name:<18}");
        let values: Vec<Option<f64>> = all.iter().map(|(_, ms)| figure(ms, &name)).collect();
        for v in &values {
            match v {
                Some(v) => print!("{v:>15.2}"),
                None => print!("{:>15}", "-"),
            }
        }
        let lower = Row::new("", 0.0, &unit).lower_is_better();
        let peers: Vec<f64> =
            all.iter().zip(&values).filter(|((n, _), _)| !n.starts_with("latchkey")).filter_map(|(_, v)| *v).collect();
        if !peers_ran {
            println!("  ({unit})");
            continue;
        }
        let best = if lower {
            peers.iter().cloned().fold(f64::MAX, f64::min)
        } else {
            peers.iter().cloned().fold(0.0, f64::max)
        };
        let ratios: Vec<String> = all
            .iter()
            .zip(&values)
            .filter(|((n, _), _)| n.starts_with("latchkey"))
            .map(|((n, _), v)| {
                let ratio = match v {
                    Some(v) if !peers.is_empty() => format!("{:.2}x", if lower { best / v } else { v / best }),
                    _ => "-".to_string(),
                };
                format!("{}={ratio}", n.trim_start_matches("latchkey-"))
            })
            .collect();
        println!("  {} ({unit})", ratios.join(" "));
    }
    println!();
    println!("CPU seconds (user+system, every thread) / peak RSS (MiB) of each workload's process");
    print!("{:<18}", "workload");
    for (name, _) in all {
        print!("{name:>17}");
    }
    println!();
    for w in WORKLOADS {
        if !all.iter().any(|(_, ms)| ms.iter().any(|m| m.workload == *w)) {
            continue;
        }
        print!("{w:<18}");
        for (_, ms) in all {
            match ms.iter().find(|m| m.workload == *w) {
                Some(m) => print!("{:>17}", format!("{:.2}/{:.0}", m.cpu_secs, m.peak_rss_mib)),
                None => print!("{:>17}", "-"),
            }
        }
        println!();
    }
}

fn write_json(path: &Path, args: &RunArgs, all: &Results, fsync_rate: &Result<f64, String>) -> Result<(), String> {
    let engines: serde_json::Map<String, serde_json::Value> = all
        .iter()
        .map(|(name, ms)| {
            let mut rows = serde_json::Map::new();
            for m in ms {
                for r in &m.rows {
                    rows.insert(r.name.clone(), serde_json::json!({"value": r.value, "unit": r.unit}));
                }
                rows.insert(
                    format!("{} process", m.workload),
                    serde_json::json!({"cpu_secs": m.cpu_secs, "peak_rss_mib": m.peak_rss_mib}),
                );
            }
            (name.clone(), serde_json::Value::Object(rows))
        })
        .collect();
    let doc = serde_json::json!({
        "keys": args.n,
        "key_bytes": 16,
        "value_bytes": VALUE_LEN,
        "mixed_secs": args.mixed_secs,
        "rounds": args.rounds,
        "fdatasync_per_sec": fsync_rate.as_ref().ok(),
        "engines": engines,
    });
    let text = serde_json::to_string_pretty(&doc).expect("results serialise");
    std::fs::write(path, text).map_err(|e| format!("could not write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(ops: f64, cpu: f64) -> Measured {
        Measured {
            workload: "w".into(),
            rows: vec![Row::new("w", ops, "ops/s"), Row::new("w p50", 1000.0 / ops, "us")],
            cpu_secs: cpu,
            peak_rss_mib: 10.0,
        }
    }

    /// The median round is reported whole: its latency row and CPU seconds
    /// come with its throughput.
    #[test]
    fn the_round_with_the_median_headline_is_reported_whole() {
        let m = median_round(vec![measured(500.0, 5.0), measured(100.0, 1.0), measured(300.0, 3.0)]).unwrap();
        assert_eq!((m.rows[0].value, m.rows[1].value, m.cpu_secs), (300.0, 1000.0 / 300.0, 3.0));
        // An even count reports the lower of the middle two; one round is itself.
        let m = median_round(vec![measured(4.0, 0.4), measured(1.0, 0.1), measured(3.0, 0.3), measured(2.0, 0.2)]);
        assert_eq!(m.unwrap().rows[0].value, 2.0);
        assert_eq!(median_round(vec![measured(7.0, 0.7)]).unwrap().rows[0].value, 7.0);
        assert!(median_round(Vec::new()).is_none());
    }
}
