//! `latchkey bench`: measurements a user can run on their own machine.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use latchkey::{Db, Engine, Options, WriteBatch};
use rand::{Rng, SeedableRng};

#[derive(Subcommand)]
pub enum BenchCommand {
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
    match cmd {
        BenchCommand::HintReopen { keys, path, keep } => hint_reopen(*keys, path.clone(), *keep),
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
