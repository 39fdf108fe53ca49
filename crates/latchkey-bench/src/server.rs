//! `latchkey-bench server`: `latchkey serve` (each engine,
//! `Sync::Interval(1000)`) beside `redis-server` (`appendonly yes`,
//! `appendfsync everysec`) on loopback, both driven by
//! `redis-benchmark -t set,get,incr -n N -r 100000 -d 100 -c 50` with
//! `-P 1` and `-P 16`; requests per second side by side with ratios.
//!
//! A shared machine's noise moves one redis-benchmark figure by 20% or
//! more from run to run, so the servers are measured in rounds: each round
//! starts every server afresh in turn (Redis first), and the tables give
//! each figure's median over the rounds; the JSON keeps every round's.

use std::path::Path;
use std::process::Command;

use crate::procs::{self, Server};

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Requests per test (redis-benchmark -n).
    #[arg(long, default_value_t = 1_000_000)]
    pub requests: u64,
    /// Parallel connections (redis-benchmark -c).
    #[arg(long, default_value_t = 50)]
    pub clients: u32,
    /// latchkey engines to serve, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "hash,lsm,btree")]
    pub engines: Vec<String>,
    /// Pipeline depths to run (redis-benchmark -P), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub pipelines: Vec<u32>,
    /// `latchkey serve --threads`: threads that run commands (0: one per
    /// CPU). 1 by default, as Redis runs its commands on one thread, and
    /// redis-benchmark needs a core of its own on a small machine.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Rounds: each starts every server afresh, one after another, and
    /// runs every test against it; the tables show each figure's median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    #[command(flatten)]
    pub common: procs::Common,
}

const TESTS: &[&str] = &["SET", "GET", "INCR"];

/// One server's figures: (test, pipeline) -> requests per second.
struct Figures {
    name: String,
    rps: Vec<((String, u32), f64)>,
    p50_ms: Vec<((String, u32), f64)>,
    server_cpu_secs: f64,
    server_peak_rss_mib: f64,
    /// Per pipeline depth: redis-benchmark's CPU seconds (user+system)
    /// and wall seconds over its three tests.
    client: Vec<(u32, f64, f64)>,
}

/// user+system CPU seconds of this process's children that have been
/// waited for.
fn children_cpu_secs() -> f64 {
    // SAFETY: getrusage writes into the struct it is given; a zeroed
    // rusage is a valid value of it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_CHILDREN is a valid `who`, `ru` a valid pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return f64::NAN;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// user+system CPU seconds and peak RSS (MiB) of a running process, from /proc.
fn proc_usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(f64::NAN);
    // utime and stime are fields 14 and 15 of stat; `after` starts at field 3.
    let cpu = (ticks(11) + ticks(12)) / hz;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0);
    (cpu, hwm)
}

/// Runs redis-benchmark against one server and returns its figures.
fn drive(server: &Server, args: &ServerArgs) -> Result<Figures, String> {
    let mut f = Figures {
        name: server.name.clone(),
        rps: Vec::new(),
        p50_ms: Vec::new(),
        server_cpu_secs: 0.0,
        server_peak_rss_mib: 0.0,
        client: Vec::new(),
    };
    let cpu0 = proc_usage(server.pid()).0;
    for &p in &args.pipelines {
        eprintln!("{}: redis-benchmark -t set,get,incr -n {} -P {p} ...", server.name, args.requests);
        let (client0, started) = (children_cpu_secs(), std::time::Instant::now());
        let out = Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &server.port.to_string(), "-t", "set,get,incr"])
            .args(["-n", &args.requests.to_string(), "-r", "100000", "-d", "100"])
            .args(["-c", &args.clients.to_string(), "-P", &p.to_string(), "--csv"])
            .output()
            .map_err(|e| format!("cannot run redis-benchmark: {e}"))?;
        f.client.push((p, children_cpu_secs() - client0, started.elapsed().as_secs_f64()));
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "redis-benchmark against {} failed: {}",
                server.name,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // CSV: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms",...
        for line in text.lines() {
            let cols: Vec<&str> = line.split(',').map(|c| c.trim_matches('"')).collect();
            let Some(test) = cols.first().map(|t| t.to_string()) else { continue };
            if !TESTS.contains(&test.as_str()) {
                continue;
            }
            let num = |i: usize| cols.get(i).and_then(|c| c.parse::<f64>().ok()).unwrap_or(f64::NAN);
            f.rps.push(((test.clone(), p), num(1)));
            f.p50_ms.push(((test, p), num(4)));
        }
        if f.rps.iter().filter(|((_, q), _)| *q == p).count() != TESTS.len() {
            return Err(format!("redis-benchmark printed no figures for every test; it printed:\n{text}"));
        }
    }
    let (cpu1, rss) = proc_usage(server.pid());
    f.server_cpu_secs = cpu1 - cpu0;
    f.server_peak_rss_mib = rss;
    Ok(f)
}

fn lookup(v: &[((String, u32), f64)], test: &str, p: u32) -> f64 {
    v.iter().find(|((t, q), _)| t == test && *q == p).map_or(f64::NAN, |(_, x)| *x)
}

pub fn run(args: &ServerArgs) -> Result<(), String> {
    if !procs::on_path("redis-benchmark") {
        return Err("redis-benchmark is not installed (Debian: apt-get install redis-tools)".into());
    }
    let bin = procs::latchkey_binary(args.common.latchkey.as_deref())?;
    let base = args.common.base("server");
    let result = run_in(args, &bin, &base);
    let _ = std::fs::remove_dir_all(&base);
    result
}

/// The median of `xs` (NaN if empty).
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// One figure per (test, pipeline): the median of the rounds' figures.
fn medians(rounds: &[Figures], pick: impl Fn(&Figures) -> &Vec<((String, u32), f64)>) -> Vec<((String, u32), f64)> {
    let Some(first) = rounds.first() else { return Vec::new() };
    pick(first)
        .iter()
        .map(|(k, _)| (k.clone(), median(rounds.iter().map(|f| lookup(pick(f), &k.0, k.1)).collect())))
        .collect()
}

fn run_in(args: &ServerArgs, bin: &Path, base: &Path) -> Result<(), String> {
    let names: Vec<String> =
        std::iter::once("redis".to_string()).chain(args.engines.iter().map(|e| format!("latchkey-{e}"))).collect();
    // rounds[s][r]: server s's figures in round r.
    let mut rounds: Vec<Vec<Figures>> = names.iter().map(|_| Vec::new()).collect();
    for r in 1..=args.rounds {
        eprintln!("round {r} of {}", args.rounds);
        for (i, name) in names.iter().enumerate() {
            let server = match name.strip_prefix("latchkey-") {
                None => procs::start_redis(base)?,
                Some(engine) => procs::start_latchkey(bin, base, engine, args.threads)?,
            };
            rounds[i].push(drive(&server, args)?);
        }
    }
    let all: Vec<Figures> = rounds
        .iter()
        .zip(&names)
        .map(|(rs, name)| Figures {
            name: name.clone(),
            rps: medians(rs, |f| &f.rps),
            p50_ms: medians(rs, |f| &f.p50_ms),
            server_cpu_secs: median(rs.iter().map(|f| f.server_cpu_secs).collect()),
            server_peak_rss_mib: rs.iter().map(|f| f.server_peak_rss_mib).fold(f64::NAN, f64::max),
            client: args
                .pipelines
                .iter()
                .map(|&p| {
                    let of = |pick: fn(&(u32, f64, f64)) -> f64| {
                        median(rs.iter().filter_map(|f| f.client.iter().find(|c| c.0 == p)).map(pick).collect())
                    };
                    (p, of(|c| c.1), of(|c| c.2))
                })
                .collect(),
        })
        .collect();
    println!(
        "redis-benchmark -t set,get,incr -n {} -r 100000 -d 100 -c {}, on loopback; requests per second, \
         median of {} round(s)",
        args.requests, args.clients, args.rounds
    );
    println!(
        "redis: appendonly yes, appendfsync everysec; latchkey serve: --sync 1000 (fsync every second), --threads {}",
        args.threads
    );
    print!("{:<10}", "test");
    for f in &all {
        print!("{:>16}", f.name);
    }
    println!("  latchkey vs redis");
    for &p in &args.pipelines {
        for test in TESTS {
            print!("{:<10}", format!("{test} -P{p}"));
            for f in &all {
                print!("{:>16.0}", lookup(&f.rps, test, p));
            }
            let redis = lookup(&all[0].rps, test, p);
            let ratios: Vec<String> = all[1..]
                .iter()
                .map(|f| format!("{}={:.2}x", f.name.trim_start_matches("latchkey-"), lookup(&f.rps, test, p) / redis))
                .collect();
            println!("  {}", ratios.join(" "));
        }
    }
    println!("p50 latency (ms)");
    for &p in &args.pipelines {
        for test in TESTS {
            print!("{:<10}", format!("{test} -P{p}"));
            for f in &all {
                print!("{:>16.3}", lookup(&f.p50_ms, test, p));
            }
            println!();
        }
    }
    print!("{:<10}", "server");
    for f in &all {
        print!("{:>16}", format!("{:.1}s/{:.0}MiB", f.server_cpu_secs, f.server_peak_rss_mib));
    }
    println!("  (server CPU seconds over every test, median of the rounds / peak RSS)");
    // redis-benchmark is one thread: when it keeps a core busy, the
    // figures above are its limit, whichever server it drives.
    for &p in &args.pipelines {
        print!("{:<10}", format!("client -P{p}"));
        for f in &all {
            let (cpu, wall) = f.client.iter().find(|c| c.0 == p).map_or((f64::NAN, f64::NAN), |c| (c.1, c.2));
            let per_req = cpu / (args.requests as f64 * TESTS.len() as f64) * 1e6;
            print!("{:>16}", format!("{:.0}% {:.1}us", cpu / wall * 100.0, per_req));
        }
        println!();
    }
    println!(
        "(redis-benchmark's CPU over its three tests: % of one core while it ran, CPU microseconds per request; \
         near 100% means the client, not the server, set the pace)"
    );
    if args.common.json.is_some() {
        let figures = |f: &Figures| {
            let mut m = serde_json::Map::new();
            for ((t, p), v) in &f.rps {
                m.insert(format!("{t} -P{p} rps"), (*v).into());
            }
            for ((t, p), v) in &f.p50_ms {
                m.insert(format!("{t} -P{p} p50 ms"), (*v).into());
            }
            m.insert("server cpu secs".into(), f.server_cpu_secs.into());
            m.insert("server peak rss mib".into(), f.server_peak_rss_mib.into());
            for (p, cpu, wall) in &f.client {
                m.insert(format!("client -P{p} cpu secs"), (*cpu).into());
                m.insert(format!("client -P{p} wall secs"), (*wall).into());
            }
            m
        };
        let servers: serde_json::Map<String, serde_json::Value> = all
            .iter()
            .zip(&rounds)
            .map(|(f, rs)| {
                let mut m = figures(f);
                m.insert("rounds".into(), rs.iter().map(|r| serde_json::Value::Object(figures(r))).collect());
                (f.name.clone(), serde_json::Value::Object(m))
            })
            .collect();
        let doc = serde_json::json!({"requests": args.requests, "clients": args.clients, "latchkey_threads": args.threads,
            "rounds": args.rounds, "figures": "median of the rounds", "servers": servers});
        args.common.write_json(&doc)?;
    }
    Ok(())
}
