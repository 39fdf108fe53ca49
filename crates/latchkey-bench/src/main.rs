//! `latchkey-bench`: latchkey's engines side by side with redb, fjall, sled
//! (and RocksDB with `--features rocksdb`); `latchkey serve` beside Redis;
//! the fenced locks beside etcd and ZooKeeper.
//!
//! Durability is comparable across engines: bulk loads write batches with no
//! fsync and make them durable with one sync at the end; `sync-writes` makes
//! each single put durable before the next.

use clap::{Parser, Subcommand};

use latchkey_bench::workloads::{self, RunArgs, WorkerArgs};

#[derive(Parser)]
#[command(args_conflicts_with_subcommands = true)]
/// Benchmarks latchkey against the stores its users would pick instead.
///
/// Without a subcommand: every workload (fillseq, fillrandom, reopen,
/// readrandom, readmissing, scan, overwrite-counter, sync-writes,
/// sync-writes-8t, mixed-4t, space) against every engine, each workload in
/// a process of its own (for its CPU seconds and peak RSS), printed as a
/// table with latchkey's ratio to the best peer. See docs/BENCHMARKS.md.
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one workload against one engine in this process (what the
    /// harness starts for each run).
    #[command(hide = true)]
    Worker(WorkerArgs),
    /// `latchkey serve` (each engine, --sync 1000) beside redis-server
    /// (appendonly yes, appendfsync everysec) under redis-benchmark.
    ///
    /// Starts each server on a free loopback port in a temporary directory,
    /// runs `redis-benchmark -t set,get,incr -n N -r 100000 -d 100 -c 50`
    /// with `-P 1` and `-P 16` against it, and prints requests per second
    /// side by side with latchkey's ratio to Redis, p50 latencies, each
    /// server's CPU seconds and peak RSS, and redis-benchmark's own CPU
    /// (near 100% of a core: the client set the pace). Needs redis-server and
    /// redis-benchmark (Debian: redis-server, redis-tools) and the latchkey
    /// binary (`cargo build --release -p latchkey-cli`).
    Server(latchkey_bench::server::ServerArgs),
    /// The fenced locks beside etcd's lock API and ZooKeeper's lock recipe.
    ///
    /// Starts `latchkey serve` (grants fsynced before a token is returned),
    /// etcd and ZooKeeper on loopback, each in a temporary directory, and
    /// measures uncontended acquire+release latency (p50/p99 over --cycles)
    /// and --clients clients contending for one lock for --secs seconds
    /// (acquisitions per second, wait and hand-off p50/p99, fairness).
    /// etcd and ZooKeeper need `--features lock-peers` and their servers
    /// (Debian: etcd-server, zookeeper).
    Locks(latchkey_bench::locks::LockArgs),
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Some(Cmd::Worker(w)) => workloads::worker_main(&w),
        Some(Cmd::Server(s)) => exit_code(latchkey_bench::server::run(&s)),
        Some(Cmd::Locks(l)) => exit_code(latchkey_bench::locks::run(&l)),
        None => {
            let mut defaults: Vec<&str> = workloads::LATCHKEY_ENGINES.to_vec();
            defaults.extend(["redb", "fjall", "sled"]);
            if cfg!(feature = "rocksdb") {
                defaults.push("rocksdb");
            }
            exit_code(workloads::run(&cli.run, &["worker"], &defaults).map(|_| ()))
        }
    };
    std::process::exit(code);
}

fn exit_code(r: Result<(), String>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("latchkey-bench: {e}");
            1
        }
    }
}
