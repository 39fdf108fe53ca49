//! latchkey's engines side by side with redb, fjall, sled (and RocksDB
//! with `--features rocksdb`): one workload trait, one adapter per engine,
//! in the manner of redb's comparison benchmarks. Results are printed as a
//! table with each latchkey engine's ratio to the best peer of the run.
//!
//! Durability is comparable across engines: bulk loads write batches with no
//! fsync and make them durable with one sync at the end; `sync-writes` makes
//! each single put durable before the next.

mod adapters;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use rand::{Rng, SeedableRng};

use adapters::Store;

/// Run the workloads against every engine and print a table.
#[derive(Parser)]
struct Args {
    /// Keys to load (16-byte keys, 100-byte values).
    #[arg(long, default_value_t = 1_000_000)]
    n: u64,
    /// Engines to run (comma-separated): latchkey-hash, latchkey-lsm, latchkey-btree, redb, fjall, sled, rocksdb.
    #[arg(long, value_delimiter = ',', default_value = "latchkey-hash,latchkey-lsm,latchkey-btree,redb,fjall,sled")]
    engines: Vec<String>,
    /// Where the stores are built (a fresh directory under it per engine).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seconds the 4-thread mixed workload (90% reads, 10% writes) runs per engine.
    #[arg(long, default_value_t = 20)]
    mixed_secs: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Latencies of single operations (recorded in nanoseconds, 3 significant
/// figures; reported in microseconds).
struct Latency(hdrhistogram::Histogram<u64>);

impl Latency {
    fn new() -> Self {
        Latency(hdrhistogram::Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds"))
    }

    fn record(&mut self, d: Duration) {
        self.0.saturating_record(d.as_nanos().max(1) as u64);
    }

    /// The `q` quantile in microseconds.
    fn p(&self, q: f64) -> f64 {
        self.0.value_at_quantile(q) as f64 / 1000.0
    }
}

const VALUE_LEN: usize = 100;

fn key(i: u64) -> [u8; 16] {
    let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i >> 31);
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&x.to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
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

/// One engine's results: workload name -> (value, unit).
type Results = Vec<(&'static str, f64, &'static str)>;

/// The machine's rate of 4 KiB appends each followed by fdatasync: what
/// any engine's one-thread durable writes are bounded by.
fn fdatasync_rate(base: &Path) -> Result<f64, String> {
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

fn run_engine(name: &str, base: &Path, n: u64, mixed_secs: u64) -> Result<Results, String> {
    let path = base.join(name);
    let _ = std::fs::remove_dir_all(&path);
    std::fs::create_dir_all(&path).map_err(|e| e.to_string())?;
    let mut out = Results::new();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    let per_sec = |count: u64, d: Duration| count as f64 / d.as_secs_f64();

    // fillseq: N keys in ascending order, batches of 1,000, one sync at the
    // end, into a store of its own.
    {
        let seq_path = base.join(format!("{name}-seq"));
        let _ = std::fs::remove_dir_all(&seq_path);
        std::fs::create_dir_all(&seq_path).map_err(|e| e.to_string())?;
        let db = adapters::open(name, &seq_path)?;
        let t = Instant::now();
        for start in (0..n).step_by(1000) {
            let batch: Vec<([u8; 16], [u8; VALUE_LEN])> =
                (start..(start + 1000).min(n)).map(|i| (seq_key(i), value(&mut rng))).collect();
            db.write_batch(&batch)?;
        }
        db.sync()?;
        out.push(("fillseq", per_sec(n, t.elapsed()), "ops/s"));
        drop(db);
        let _ = std::fs::remove_dir_all(&seq_path);
    }

    // fillrandom: N keys in random order, batches of 1,000, one sync at the end.
    let db = adapters::open(name, &path)?;
    let mut order: Vec<u64> = (0..n).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.gen_range(0..=i));
    }
    let t = Instant::now();
    for chunk in order.chunks(1000) {
        let batch: Vec<([u8; 16], [u8; VALUE_LEN])> = chunk.iter().map(|&i| (key(i), value(&mut rng))).collect();
        db.write_batch(&batch)?;
    }
    db.sync()?;
    out.push(("fillrandom", per_sec(n, t.elapsed()), "ops/s"));

    // reopen: time to open the filled store.
    drop(db);
    let t = Instant::now();
    let db = adapters::open(name, &path)?;
    out.push(("reopen", t.elapsed().as_secs_f64() * 1e3, "ms"));

    // readrandom / readmissing: N random gets (capped at 1M) after the reopen.
    let reads = n.min(1_000_000);
    let mut lat = Latency::new();
    let t = Instant::now();
    for _ in 0..reads {
        let i = rng.gen_range(0..n);
        let op = Instant::now();
        if db.get(&key(i))?.is_none() {
            return Err(format!("{name}: key {i} missing"));
        }
        lat.record(op.elapsed());
    }
    out.push(("readrandom", per_sec(reads, t.elapsed()), "ops/s"));
    out.push(("readrandom p50", lat.p(0.5), "us"));
    out.push(("readrandom p99", lat.p(0.99), "us"));
    let t = Instant::now();
    for j in 0..reads {
        if db.get(&key(n + j))?.is_some() {
            return Err(format!("{name}: phantom key"));
        }
    }
    out.push(("readmissing", per_sec(reads, t.elapsed()), "ops/s"));

    // scan: 10,000 scans of 100 consecutive keys from random starts (or as
    // many as fit in 20 s: the hash engine sorts its whole keydir per scan).
    let t = Instant::now();
    let mut scans = 0u64;
    while scans < 10_000 && t.elapsed() < Duration::from_secs(20) {
        let start = key(rng.gen_range(0..n));
        let got = db.scan(&start, 100)?;
        if got == 0 {
            return Err(format!("{name}: empty scan"));
        }
        scans += 1;
    }
    out.push(("scan", per_sec(scans, t.elapsed()), "scans/s"));

    // overwrite-counter: 1,000 counters, N/10 read-modify-write increments.
    let increments = (n / 10).max(10_000);
    let t = Instant::now();
    for i in 0..increments {
        let k = format!("counter:{:04}", i % 1000).into_bytes();
        let c = db.get(&k)?.map_or(0, |v| u64::from_le_bytes(v[..8].try_into().unwrap_or([0; 8])));
        db.write_batch(&[(k, (c + 1).to_le_bytes())])?;
    }
    db.sync()?;
    out.push(("overwrite-counter", per_sec(increments, t.elapsed()), "ops/s"));

    // sync-writes: single puts, each durable before the next (1 thread).
    let syncs = 2000u64;
    let mut lat = Latency::new();
    let t = Instant::now();
    for i in 0..syncs {
        let op = Instant::now();
        db.put_durable(&key(n * 2 + i), &value(&mut rng))?;
        lat.record(op.elapsed());
    }
    out.push(("sync-writes", per_sec(syncs, t.elapsed()), "ops/s"));
    out.push(("sync-writes p50", lat.p(0.5), "us"));
    out.push(("sync-writes p99", lat.p(0.99), "us"));

    // sync-writes-8t: the same from 8 threads at once (group commit).
    let t = Instant::now();
    let failed = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for th in 0..8u64 {
            let (db, failed) = (&db, &failed);
            s.spawn(move || {
                let v = [th as u8; VALUE_LEN];
                for i in 0..syncs / 8 {
                    if let Err(e) = db.put_durable(&key(n * 3 + th * syncs + i), &v) {
                        *failed.lock().unwrap() = Some(e);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap() {
        return Err(e);
    }
    out.push(("sync-writes-8t", per_sec(syncs / 8 * 8, t.elapsed()), "ops/s"));

    // mixed: 4 threads, 90% random gets and 10% single puts (no sync), for
    // `mixed_secs` seconds.
    let done = std::sync::atomic::AtomicU64::new(0);
    let stop_at = Instant::now() + Duration::from_secs(mixed_secs);
    let t = Instant::now();
    let failed = std::sync::Mutex::new(None);
    std::thread::scope(|s| {
        for th in 0..4u64 {
            let (db, done, failed) = (&db, &done, &failed);
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
                            *failed.lock().unwrap() = Some(e);
                            return;
                        }
                        ops += 1;
                    }
                }
                done.fetch_add(ops, std::sync::atomic::Ordering::Relaxed);
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap() {
        return Err(e);
    }
    out.push(("mixed-4t", per_sec(done.into_inner(), t.elapsed()), "ops/s"));

    // space: overwrite every key once, let background work settle, measure.
    for chunk in order.chunks(1000) {
        let batch: Vec<([u8; 16], [u8; VALUE_LEN])> = chunk.iter().map(|&i| (key(i), value(&mut rng))).collect();
        db.write_batch(&batch)?;
    }
    db.sync()?;
    db.settle()?;
    drop(db);
    let live = (n + syncs + 1000) * (16 + VALUE_LEN as u64);
    out.push(("space", dir_size(&path) as f64 / live as f64, "x live"));
    let _ = std::fs::remove_dir_all(&path);
    Ok(out)
}

fn main() {
    let args = Args::parse();
    let base =
        args.dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("latchkey-bench-{}", std::process::id())));
    let fsync_rate = fdatasync_rate(&base);
    let mut all: Vec<(String, Results)> = Vec::new();
    for name in &args.engines {
        eprintln!("running {name} with {} keys...", args.n);
        match run_engine(name, &base, args.n, args.mixed_secs) {
            Ok(r) => all.push((name.clone(), r)),
            Err(e) => eprintln!("{name}: failed: {e}"),
        }
    }
    let _ = std::fs::remove_dir_all(&base);
    if let Some(path) = &args.json {
        let engines: serde_json::Map<String, serde_json::Value> = all
            .iter()
            .map(|(name, r)| {
                let rows = r.iter().map(|(w, v, unit)| (w.to_string(), serde_json::json!({"value": v, "unit": unit})));
                (name.clone(), serde_json::Value::Object(rows.collect()))
            })
            .collect();
        let doc = serde_json::json!({
            "keys": args.n,
            "key_bytes": 16,
            "value_bytes": VALUE_LEN,
            "fdatasync_per_sec": fsync_rate.as_ref().ok(),
            "engines": engines,
        });
        let text = serde_json::to_string_pretty(&doc).expect("results serialise");
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("could not write {}: {e}", path.display());
        }
    }
    let Some((_, first)) = all.first() else { return };
    println!("{} keys, 16-byte keys, 100-byte values; bulk writes synced once at the end", args.n);
    match fsync_rate {
        Ok(r) => println!("this machine: {r:.0} appends+fdatasync of 4 KiB per second (one thread)"),
        Err(e) => println!("this machine: fdatasync probe failed: {e}"),
    }
    print!("{:<18}", "workload");
    for (name, _) in &all {
        print!("{name:>15}");
    }
    println!("  latchkey vs best peer");
    for (w, (workload, _, unit)) in first.iter().enumerate() {
        print!("{workload:<18}");
        for (_, r) in &all {
            print!("{:>15.2}", r[w].1);
        }
        let lower_is_better = matches!(*unit, "ms" | "us" | "x live");
        let peers: Vec<f64> = all.iter().filter(|(n, _)| !n.starts_with("latchkey")).map(|(_, r)| r[w].1).collect();
        let best = if lower_is_better {
            peers.iter().cloned().fold(f64::MAX, f64::min)
        } else {
            peers.iter().cloned().fold(0.0, f64::max)
        };
        let ratios: Vec<String> = all
            .iter()
            .filter(|(n, _)| n.starts_with("latchkey"))
            .map(|(n, r)| {
                let ratio = if lower_is_better { best / r[w].1 } else { r[w].1 / best };
                let ratio = if peers.is_empty() { "-".to_string() } else { format!("{ratio:.2}x") };
                format!("{}={ratio}", n.trim_start_matches("latchkey-"))
            })
            .collect();
        println!("  {} ({unit})", ratios.join(" "));
    }
}
