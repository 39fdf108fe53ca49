//! `latchkey`: the command-line tool for latchkey data directories.

mod bench;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use latchkey::{Db, Engine, Options};

/// latchkey: a durable key-value store and lock service.
///
/// Every command works on one data directory (--dir). A directory remembers
/// the engine that created it; --engine only matters when creating one.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// The data directory.
    #[arg(long, global = true, default_value = "latchkey-data")]
    dir: PathBuf,

    /// The engine for a new directory: hash (Bitcask).
    #[arg(long, global = true, default_value = "hash")]
    engine: Engine,

    /// When writes are fsynced: always (before each write returns), never
    /// (left to the OS), or a number of milliseconds between background syncs.
    #[arg(long, global = true, default_value = "always", value_parser = parse_sync)]
    sync: latchkey::Sync,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Set KEY to VALUE.
    Put {
        /// The key (taken as UTF-8 bytes).
        key: String,
        /// The value (taken as UTF-8 bytes).
        value: String,
        /// Expire the key after this many milliseconds.
        #[arg(long)]
        ttl_ms: Option<u64>,
    },
    /// Print the value of KEY; exits with status 1 if it is absent.
    Get {
        /// The key.
        key: String,
    },
    /// Delete KEY (deleting an absent key is not an error).
    Del {
        /// The key.
        key: String,
    },
    /// Print the keys in a range, in order, one "key<TAB>value" per line.
    ///
    /// On the hash engine a scan reads every key in memory and sorts the
    /// matches, so it costs time in proportion to the whole store.
    Scan {
        /// The first key to print (inclusive).
        #[arg(long)]
        from: Option<String>,
        /// Stop before this key (exclusive).
        #[arg(long)]
        to: Option<String>,
        /// Print at most this many keys.
        #[arg(long)]
        limit: Option<usize>,
        /// Print in descending order.
        #[arg(long)]
        reverse: bool,
    },
    /// Verify every checksum in the directory without changing it.
    ///
    /// Prints each damaged file with the offset of the damage and exits with
    /// status 1 if there is any. A torn write at the end of the newest log
    /// (left by a crash, and cut off at the next open) is reported as a note,
    /// not as damage. The directory must not be open in another process.
    Check {
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Merge (or compact) the directory now and print the figures after.
    Compact,
    /// Print figures about the directory: keys, files, bytes, amplification.
    Stats,
    /// Measure latchkey on this machine.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn parse_sync(s: &str) -> Result<latchkey::Sync, String> {
    match s {
        "always" => Ok(latchkey::Sync::Always),
        "never" => Ok(latchkey::Sync::Never),
        ms => match ms.parse::<u64>() {
            Ok(0) | Err(_) => Err(format!("{s:?}: use always, never, or a number of milliseconds above 0")),
            Ok(ms) => Ok(latchkey::Sync::Interval(ms)),
        },
    }
}

fn open(cli: &Cli, create: bool) -> latchkey::Result<Db> {
    let engine = latchkey::identify(&cli.dir)?.unwrap_or(cli.engine);
    Db::open(&cli.dir, Options { engine, sync: cli.sync, create_if_missing: create, ..Options::new(engine) })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("latchkey: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> latchkey::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let w = |r: std::io::Result<()>| r.map_err(|e| latchkey::Error::Io { path: "<stdout>".into(), source: e });
    match &cli.command {
        Command::Put { key, value, ttl_ms } => {
            let db = open(cli, true)?;
            let expires_at = ttl_ms.map_or(0, |t| latchkey::now_ms() + t);
            db.put_with_expiry(key, value, expires_at)?;
            db.close()?;
        }
        Command::Get { key } => {
            let db = open(cli, false)?;
            match db.get(key)? {
                Some(v) => {
                    w(out.write_all(&v))?;
                    w(out.write_all(b"\n"))?;
                }
                None => {
                    eprintln!("(not found)");
                    return Ok(ExitCode::from(1));
                }
            }
        }
        Command::Del { key } => {
            let db = open(cli, false)?;
            db.delete(key)?;
            db.close()?;
        }
        Command::Scan { from, to, limit, reverse } => {
            let db = open(cli, false)?;
            use std::ops::Bound::*;
            let lo = from.as_ref().map_or(Unbounded, |f| Included(f.as_bytes().to_vec()));
            let hi = to.as_ref().map_or(Unbounded, |t| Excluded(t.as_bytes().to_vec()));
            let it = db.scan((lo, hi))?;
            let it: Box<dyn Iterator<Item = _>> = if *reverse { Box::new(it.rev()) } else { Box::new(it) };
            for item in it.take(limit.unwrap_or(usize::MAX)) {
                let (k, v) = item?;
                w(out.write_all(&k))?;
                w(out.write_all(b"\t"))?;
                w(out.write_all(&v))?;
                w(out.write_all(b"\n"))?;
            }
        }
        Command::Check { quiet } => return check(&cli.dir, *quiet),
        Command::Compact => {
            let db = open(cli, false)?;
            db.compact()?;
            w(writeln!(out, "{}", db.stats()))?;
            db.close()?;
        }
        Command::Stats => {
            let db = open(cli, false)?;
            w(writeln!(out, "{}", db.stats()))?;
        }
        Command::Bench(b) => bench::run(b)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn check(dir: &Path, quiet: bool) -> latchkey::Result<ExitCode> {
    let bar = if quiet { indicatif::ProgressBar::hidden() } else { bench::bytes_bar(0, "checking") };
    let report = latchkey::check(dir, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    for note in &report.notes {
        println!("note: {note}");
    }
    for e in &report.damage {
        println!("DAMAGE: {e}");
    }
    println!(
        "checked {} files, {} records, {} bytes: {}",
        report.files,
        report.records,
        report.bytes,
        if report.is_clean() { "no damage".to_string() } else { format!("{} damaged", report.damage.len()) }
    );
    Ok(if report.is_clean() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
