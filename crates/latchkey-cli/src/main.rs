//! `latchkey`: the command-line tool for latchkey data directories.

mod bench;
mod torture;

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
    /// The data directory [default: latchkey-data].
    #[arg(long, global = true)]
    dir: Option<PathBuf>,

    /// The engine of a new directory: lsm (LSM-tree), hash (Bitcask) or
    /// btree (B+tree)
    /// [default: lsm]. An existing directory keeps the engine that made it.
    #[arg(long, global = true)]
    engine: Option<Engine>,

    /// When writes are fsynced: always (before each write returns), never
    /// (left to the OS), or a number of milliseconds between background
    /// syncs [default: always].
    #[arg(long, global = true, value_parser = parse_sync)]
    sync: Option<latchkey::Sync>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Redis-protocol server (RESP2 and RESP3) on the data directory.
    ///
    /// Speaks to redis-cli, redis-benchmark and Redis client libraries, and
    /// adds fenced locks: LOCK.ACQUIRE, LOCK.RELEASE, LOCK.RENEW, LOCK.INFO,
    /// and FENCED <lock> <token> <write command> (see docs/LOCKS.md).
    /// Settings come from the defaults, then --config, then flags.
    /// Stops cleanly on Ctrl-C or SIGTERM: in-flight commands finish, data
    /// is synced and the directory lock is released.
    Serve(ServeArgs),
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
    /// Crash loop: kill a writing process with SIGKILL at random moments
    /// and check after each kill that every acknowledged batch is there
    /// whole, no batch is there in part, and `check` finds no damage.
    /// Exits 1 on the first loss (keeping the directory for inspection).
    Torture {
        /// Engine to torture: lsm, hash or btree.
        #[arg(long, default_value = "lsm")]
        engine: Engine,
        /// How many kills.
        #[arg(long, default_value_t = 20)]
        cycles: u64,
        /// Longest time a writer runs before it is killed, in ms.
        #[arg(long, default_value_t = 400)]
        max_ms: u64,
        /// Kill `latchkey serve` (written to over RESP with MSET) instead
        /// of a library writer.
        #[arg(long)]
        server: bool,
        /// Library writer threads, each with batches of its own: with more
        /// than one, the kill lands while writers share fsyncs (group
        /// commit). Not with --server.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        writers: u16,
    },
    /// (internal) The writer process of `torture`.
    #[command(hide = true)]
    TortureChild {
        #[arg(long)]
        engine: Engine,
        /// Each writer's first batch, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        start: Vec<u64>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// A config file of `name value` lines (bind, port, dir, engine,
    /// appendfsync always|everysec|no, requirepass, maxclients,
    /// proto-max-bulk-len, allow-remote-without-password yes|no, threads).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1]. A non-loopback address
    /// needs --requirepass (or --allow-remote-without-password).
    #[arg(long)]
    bind: Option<String>,
    /// Port to listen on [default: 6379].
    #[arg(long)]
    port: Option<u16>,
    /// Require clients to AUTH with this password before any command.
    #[arg(long)]
    requirepass: Option<String>,
    /// Most clients connected at once [default: 10000].
    #[arg(long)]
    maxclients: Option<usize>,
    /// The largest argument a client may send, in bytes [default: 64 MiB + 1 KiB].
    #[arg(long)]
    proto_max_bulk_len: Option<usize>,
    /// Listen on a non-loopback address without a password.
    #[arg(long)]
    allow_remote_without_password: bool,
    /// Threads that run connections and commands [default: one per CPU].
    /// Redis runs commands on one thread; on a machine shared with its
    /// clients, 1 leaves them the other cores.
    #[arg(long)]
    threads: Option<usize>,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    log_level: tracing::Level,
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

impl Cli {
    fn dir(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| PathBuf::from("latchkey-data"))
    }
}

fn open(cli: &Cli, create: bool) -> latchkey::Result<Db> {
    let dir = cli.dir();
    let engine = latchkey::identify(&dir)?.or(cli.engine).unwrap_or(Engine::Lsm);
    let sync = cli.sync.unwrap_or(latchkey::Sync::Always);
    Db::open(&dir, Options { engine, sync, create_if_missing: create, ..Options::new(engine) })
}

/// The allocator of the `latchkey` binary (the library leaves it to its
/// user): mimalloc, as Redis ships jemalloc. A server command allocates a
/// few small buffers (arguments, values, replies) and glibc's malloc spent
/// ~10% of the server's time on them and on consolidating freed chunks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Serve(args) = &cli.command {
        return serve(&cli, args);
    }
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("latchkey: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> latchkey::Result<ExitCode> {
    // Not locked for the whole run: the torture child's writer threads
    // print to it.
    let mut out = std::io::stdout();
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
        Command::Check { quiet } => return check(&cli.dir(), *quiet),
        Command::Serve(_) => unreachable!("handled in main"),
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
        Command::Torture { engine, cycles, max_ms, server, writers } => {
            let ok = if *server {
                if *writers > 1 {
                    return Err(latchkey::Error::InvalidArgument(
                        "--writers is for library writers, not --server".into(),
                    ));
                }
                torture::run_server(*engine, *cycles, cli.dir.clone(), *max_ms)?
            } else {
                torture::run(*engine, *cycles, cli.dir.clone(), *max_ms, usize::from(*writers))?
            };
            return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) });
        }
        Command::TortureChild { engine, start } => torture::child(&cli.dir(), *engine, start)?,
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

fn serve(cli: &Cli, args: &ServeArgs) -> ExitCode {
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt().with_max_level(args.log_level).with_ansi(ansi).with_writer(std::io::stderr).init();
    let mut config = latchkey_server::Config::default();
    let mut settings = || -> Result<(), String> {
        if let Some(path) = &args.config {
            config.load_file(path)?;
        }
        let sync = cli.sync.map(|s| match s {
            latchkey::Sync::Always => "always".to_string(),
            latchkey::Sync::Never => "never".to_string(),
            latchkey::Sync::Interval(ms) => ms.to_string(),
        });
        let flags: [(&str, Option<String>); 10] = [
            ("dir", cli.dir.as_ref().map(|d| d.display().to_string())),
            ("engine", cli.engine.map(|e| e.to_string())),
            ("sync", sync),
            ("bind", args.bind.clone()),
            ("port", args.port.map(|p| p.to_string())),
            ("requirepass", args.requirepass.clone()),
            ("maxclients", args.maxclients.map(|m| m.to_string())),
            ("proto-max-bulk-len", args.proto_max_bulk_len.map(|m| m.to_string())),
            ("allow-remote-without-password", args.allow_remote_without_password.then(|| "yes".to_string())),
            ("threads", args.threads.map(|t| t.to_string())),
        ];
        for (name, value) in flags {
            if let Some(v) = value {
                config.set(name, &v)?;
            }
        }
        Ok(())
    };
    if let Err(e) = settings() {
        eprintln!("latchkey: {e}");
        return ExitCode::from(2);
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.threads > 0 {
        builder.worker_threads(config.threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("latchkey: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        let server = latchkey_server::Server::bind(config.clone()).await?;
        let addr = server.local_addr().map_err(latchkey_server::ServeError::Io)?;
        tracing::info!(%addr, dir = %config.dir.display(), engine = %config.engine, "latchkey serving; Ctrl-C to stop");
        server.run(shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("latchkey: {e}");
            ExitCode::from(2)
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
