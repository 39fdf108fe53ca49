//! `latchkey-bench locks`: latchkey's fenced locks (durable grants, over
//! RESP) beside etcd's v3 lock API and ZooKeeper's lock recipe, each server
//! on loopback.
//!
//! - uncontended: `--cycles` acquire+release cycles of one lock by one
//!   client, p50/p99 of a cycle;
//! - contended: `--clients` clients (one connection each) acquire and at
//!   once release one lock for `--secs` seconds: acquisitions per second,
//!   wait p50/p99 (from asking to holding), hand-off p50/p99 (from the
//!   holder sending its release to the next holder's grant) and fairness
//!   (Jain's index over the clients' acquisition counts, 1.0 = even).
//!
//! etcd and ZooKeeper need the `lock-peers` feature (their clients) and
//! their servers installed (Debian: etcd-server, zookeeper).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::procs::{self, Server};
use crate::workloads::Latency;

#[derive(clap::Args, Debug)]
pub struct LockArgs {
    /// Uncontended acquire+release cycles.
    #[arg(long, default_value_t = 2000)]
    pub cycles: u64,
    /// Clients contending for one lock.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Seconds the contended run lasts.
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// Systems to measure, comma-separated: latchkey, etcd, zookeeper.
    #[arg(long, value_delimiter = ',', default_value = "latchkey,etcd,zookeeper")]
    pub systems: Vec<String>,
    /// The engine `latchkey serve` runs on.
    #[arg(long, default_value = "hash")]
    pub engine: String,
    #[command(flatten)]
    pub common: procs::Common,
}

/// One connection's way to take and give back the lock.
pub trait LockClient: Send {
    /// Blocks until this client holds `name` (or an error).
    fn acquire(&mut self, name: &str) -> Result<(), String>;
    fn release(&mut self, name: &str) -> Result<(), String>;
}

/// A running lock service.
trait System {
    fn client(&self, id: usize) -> Result<Box<dyn LockClient>, String>;
}

/// latchkey over RESP: `LOCK.ACQUIRE name owner ttl WAIT ms` (a fencing
/// token once the grant is durable), `LOCK.RELEASE name owner`.
struct Latchkey {
    port: u16,
}

struct LatchkeyClient {
    owner: String,
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl LatchkeyClient {
    fn call(&mut self, args: &[&str]) -> Result<String, String> {
        let mut frame = format!("*{}\r\n", args.len());
        for a in args {
            frame.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.writer.write_all(frame.as_bytes()).map_err(|e| format!("latchkey: {e}"))?;
        let mut line = String::new();
        self.reader.read_line(&mut line).map_err(|e| format!("latchkey: {e}"))?;
        match line.as_bytes().first() {
            Some(b':' | b'+') => Ok(line[1..].trim_end().to_string()),
            Some(b'$' | b'_') if line.starts_with("$-1") || line.starts_with('_') => Ok(String::new()),
            _ => Err(format!("latchkey: unexpected reply {line:?} to {}", args[0])),
        }
    }
}

impl LockClient for LatchkeyClient {
    fn acquire(&mut self, name: &str) -> Result<(), String> {
        let owner = self.owner.clone();
        // Wait in rounds of 2 s so a stuck grant shows up as an error.
        for _ in 0..30 {
            if !self.call(&["LOCK.ACQUIRE", name, &owner, "30000", "WAIT", "2000"])?.is_empty() {
                return Ok(());
            }
        }
        Err("latchkey: no grant within 60 s".into())
    }

    fn release(&mut self, name: &str) -> Result<(), String> {
        let owner = self.owner.clone();
        match self.call(&["LOCK.RELEASE", name, &owner])?.as_str() {
            "1" => Ok(()),
            r => Err(format!("latchkey: release answered {r}")),
        }
    }
}

impl System for Latchkey {
    fn client(&self, id: usize) -> Result<Box<dyn LockClient>, String> {
        let s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| format!("latchkey: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        let reader = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
        Ok(Box::new(LatchkeyClient { owner: format!("bench-{id}-{}", std::process::id()), writer: s, reader }))
    }
}

/// What one system measured.
struct Figures {
    name: String,
    cycle_p50: f64,
    cycle_p99: f64,
    per_sec: f64,
    wait_p50: f64,
    wait_p99: f64,
    handoff_p50: f64,
    handoff_p99: f64,
    fairness: f64,
    counts: Vec<u64>,
}

fn measure(name: &str, sys: &dyn System, args: &LockArgs) -> Result<Figures, String> {
    let lock = format!("bench-lock-{}", std::process::id());
    // Uncontended.
    let mut c = sys.client(0)?;
    let mut cycle = Latency::new();
    let started = Instant::now();
    for _ in 0..args.cycles {
        if started.elapsed() > Duration::from_secs(120) {
            break;
        }
        let t = Instant::now();
        c.acquire(&lock)?;
        c.release(&lock)?;
        cycle.record(t.elapsed());
    }
    drop(c);
    eprintln!("{name}: uncontended cycle p50 {:.3} ms", cycle.ms(0.5));
    // Contended.
    let clients: Vec<Box<dyn LockClient>> = (0..args.clients).map(|i| sys.client(i + 1)).collect::<Result<_, _>>()?;
    let last_release: Mutex<Option<Instant>> = Mutex::new(None);
    let merged = Mutex::new((Latency::new(), Latency::new(), Vec::new(), None::<String>));
    let stop_at = Instant::now() + Duration::from_secs(args.secs);
    let t = Instant::now();
    std::thread::scope(|s| {
        for mut c in clients {
            let (lock, last_release, merged) = (&lock, &last_release, &merged);
            s.spawn(move || {
                let (mut wait, mut handoff, mut n) = (Latency::new(), Latency::new(), 0u64);
                let mut failure = None;
                while Instant::now() < stop_at {
                    let asked = Instant::now();
                    if let Err(e) = c.acquire(lock) {
                        failure = Some(e);
                        break;
                    }
                    let got = Instant::now();
                    wait.record(got - asked);
                    let prev = *last_release.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(r) = prev.filter(|r| *r > asked) {
                        handoff.record(got - r);
                    }
                    n += 1;
                    *last_release.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                    if let Err(e) = c.release(lock) {
                        failure = Some(e);
                        break;
                    }
                }
                let mut m = merged.lock().unwrap_or_else(|p| p.into_inner());
                let _ = m.0 .0.add(&wait.0);
                let _ = m.1 .0.add(&handoff.0);
                m.2.push(n);
                if failure.is_some() {
                    m.3 = failure;
                }
            });
        }
    });
    let elapsed = t.elapsed();
    let (wait, handoff, counts, failure) = merged.into_inner().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = failure {
        return Err(e);
    }
    let total: u64 = counts.iter().sum();
    let sum_sq: f64 = counts.iter().map(|&c| (c as f64).powi(2)).sum();
    let fairness = if sum_sq > 0.0 { (total as f64).powi(2) / (counts.len() as f64 * sum_sq) } else { f64::NAN };
    Ok(Figures {
        name: name.to_string(),
        cycle_p50: cycle.ms(0.5),
        cycle_p99: cycle.ms(0.99),
        per_sec: total as f64 / elapsed.as_secs_f64(),
        wait_p50: wait.ms(0.5),
        wait_p99: wait.ms(0.99),
        handoff_p50: handoff.ms(0.5),
        handoff_p99: handoff.ms(0.99),
        fairness,
        counts,
    })
}

pub fn run(args: &LockArgs) -> Result<(), String> {
    let base = args.common.base("locks");
    let result = run_in(args, &base);
    let _ = std::fs::remove_dir_all(&base);
    result
}

fn run_in(args: &LockArgs, base: &Path) -> Result<(), String> {
    let mut all = Vec::new();
    for system in &args.systems {
        let figures = match system.as_str() {
            "latchkey" => {
                let bin = procs::latchkey_binary(args.common.latchkey.as_deref())?;
                // Default sync policy (always); lock grants are fsynced whatever it is.
                let dir = procs::server_dir(base, "latchkey")?;
                let port = procs::free_port()?;
                let mut cmd = std::process::Command::new(bin);
                cmd.args(["serve", "--bind", "127.0.0.1", "--port", &port.to_string(), "--engine", &args.engine])
                    .arg("--dir")
                    .arg(dir.join("data"));
                let server = Server::start("latchkey", cmd, dir, port, Duration::from_secs(30), procs::resp_ping)?;
                let f = measure(&format!("latchkey-{}", args.engine), &Latchkey { port }, args);
                drop(server);
                f?
            }
            "etcd" | "zookeeper" => peers::measure(system, base, args)?,
            other => return Err(format!("unknown system {other} (known: latchkey, etcd, zookeeper)")),
        };
        all.push(figures);
    }
    println!(
        "locks on loopback: uncontended = {} acquire+release cycles by one client; contended = {} clients for {} s",
        args.cycles, args.clients, args.secs
    );
    println!("latchkey: grants fsynced before the token is returned; etcd: v3 lock API (HTTP gateway), one lease per client; zookeeper: the lock recipe (ephemeral sequential node, watch the predecessor)");
    print!("{:<24}", "");
    for f in &all {
        print!("{:>16}", f.name);
    }
    println!();
    type Get = fn(&Figures) -> f64;
    let rows: [(&str, Get, bool); 8] = [
        ("uncontended p50 (ms)", |f| f.cycle_p50, true),
        ("uncontended p99 (ms)", |f| f.cycle_p99, true),
        ("contended acq/s", |f| f.per_sec, false),
        ("wait p50 (ms)", |f| f.wait_p50, true),
        ("wait p99 (ms)", |f| f.wait_p99, true),
        ("hand-off p50 (ms)", |f| f.handoff_p50, true),
        ("hand-off p99 (ms)", |f| f.handoff_p99, true),
        ("fairness (Jain)", |f| f.fairness, false),
    ];
    for (label, get, lower) in rows {
        print!("{label:<24}");
        for f in &all {
            print!("{:>16.3}", get(f));
        }
        let ours = all.iter().find(|f| f.name.starts_with("latchkey")).map(get);
        let peers: Vec<f64> = all.iter().filter(|f| !f.name.starts_with("latchkey")).map(get).collect();
        if let (Some(ours), false) = (ours, peers.is_empty()) {
            let best = if lower {
                peers.iter().cloned().fold(f64::MAX, f64::min)
            } else {
                peers.iter().cloned().fold(0.0, f64::max)
            };
            print!("  latchkey vs best peer {:.2}x", if lower { best / ours } else { ours / best });
        }
        println!();
    }
    print!("{:<24}", "acquisitions per client");
    println!();
    for f in &all {
        println!("  {:<22}{:?}", f.name, f.counts);
    }
    if args.common.json.is_some() {
        let doc: serde_json::Map<String, serde_json::Value> = all
            .iter()
            .map(|f| {
                (
                    f.name.clone(),
                    serde_json::json!({
                        "uncontended_p50_ms": f.cycle_p50, "uncontended_p99_ms": f.cycle_p99,
                        "contended_per_sec": f.per_sec, "wait_p50_ms": f.wait_p50, "wait_p99_ms": f.wait_p99,
                        "handoff_p50_ms": f.handoff_p50, "handoff_p99_ms": f.handoff_p99,
                        "fairness_jain": f.fairness, "acquisitions_per_client": f.counts,
                    }),
                )
            })
            .collect();
        let doc =
            serde_json::json!({"cycles": args.cycles, "clients": args.clients, "secs": args.secs, "systems": doc});
        args.common.write_json(&doc)?;
    }
    Ok(())
}

#[cfg(not(feature = "lock-peers"))]
mod peers {
    use super::*;

    pub(super) fn measure(system: &str, _: &Path, _: &LockArgs) -> Result<Figures, String> {
        Err(format!("{system}: this latchkey-bench was built without its client; rebuild with --features lock-peers"))
    }
}

#[cfg(feature = "lock-peers")]
mod peers {
    use super::*;
    use base64::Engine as _;

    pub(super) fn measure(system: &str, base: &Path, args: &LockArgs) -> Result<Figures, String> {
        match system {
            "etcd" => {
                let server = start_etcd(base)?;
                let sys = Etcd { url: format!("http://127.0.0.1:{}", server.port) };
                super::measure("etcd", &sys, args)
            }
            _ => {
                let server = start_zookeeper(base)?;
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                let sys = Zk { addr: format!("127.0.0.1:{}", server.port), rt: rt.handle().clone() };
                super::measure("zookeeper", &sys, args)
            }
        }
    }

    fn start_etcd(base: &Path) -> Result<Server, String> {
        if !procs::on_path("etcd") {
            return Err("etcd is not installed (Debian: apt-get install etcd-server)".into());
        }
        let dir = procs::server_dir(base, "etcd")?;
        let (port, peer) = (procs::free_port()?, procs::free_port()?);
        let client_url = format!("http://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = std::process::Command::new("etcd");
        cmd.args(["--name", "bench", "--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .arg("--data-dir")
            .arg(dir.join("data"));
        Server::start("etcd", cmd, dir, port, Duration::from_secs(30), |p| {
            ureq::get(&format!("http://127.0.0.1:{p}/health"))
                .timeout(Duration::from_millis(500))
                .call()
                .ok()
                .and_then(|r| r.into_string().ok())
                .is_some_and(|b| b.contains("true"))
        })
    }

    fn start_zookeeper(base: &Path) -> Result<Server, String> {
        let script = Path::new("/usr/share/zookeeper/bin/zkServer.sh");
        if !script.exists() {
            return Err("ZooKeeper is not installed (Debian: apt-get install zookeeper)".into());
        }
        let dir = procs::server_dir(base, "zookeeper")?;
        let port = procs::free_port()?;
        let cfg = dir.join("zoo.cfg");
        // forceSync is on by default: every transaction is fsynced to the log.
        let text = format!(
            "tickTime=2000\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\n",
            dir.join("data").display()
        );
        std::fs::write(&cfg, text).map_err(|e| e.to_string())?;
        let mut cmd = std::process::Command::new(script);
        cmd.arg("start-foreground").arg(&cfg).env("ZOO_LOG_DIR", &dir);
        Server::start("zookeeper", cmd, dir, port, Duration::from_secs(60), procs::tcp_open)
    }

    /// etcd's v3 lock API through its HTTP/JSON gateway: one lease per
    /// client (as etcd's concurrency.Session), `lock` blocks until held.
    struct Etcd {
        url: String,
    }

    struct EtcdClient {
        agent: ureq::Agent,
        url: String,
        lease: String,
        key: Option<String>,
    }

    fn post(agent: &ureq::Agent, url: &str, body: serde_json::Value) -> Result<serde_json::Value, String> {
        let text = agent
            .post(url)
            .send_string(&body.to_string())
            .map_err(|e| format!("etcd {url}: {e}"))?
            .into_string()
            .map_err(|e| format!("etcd {url}: {e}"))?;
        serde_json::from_str(&text).map_err(|e| format!("etcd {url}: {e}: {text}"))
    }

    impl System for Etcd {
        fn client(&self, _: usize) -> Result<Box<dyn LockClient>, String> {
            let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
            let r = post(&agent, &format!("{}/v3/lease/grant", self.url), serde_json::json!({"TTL": 600}))?;
            let lease = r["ID"].as_str().ok_or_else(|| format!("etcd: lease grant answered {r}"))?.to_string();
            Ok(Box::new(EtcdClient { agent, url: self.url.clone(), lease, key: None }))
        }
    }

    impl LockClient for EtcdClient {
        fn acquire(&mut self, name: &str) -> Result<(), String> {
            let b64 = base64::engine::general_purpose::STANDARD.encode(name);
            let r = post(
                &self.agent,
                &format!("{}/v3/lock/lock", self.url),
                serde_json::json!({"name": b64, "lease": self.lease}),
            )?;
            self.key = Some(r["key"].as_str().ok_or_else(|| format!("etcd: lock answered {r}"))?.to_string());
            Ok(())
        }

        fn release(&mut self, _: &str) -> Result<(), String> {
            let key = self.key.take().ok_or("etcd: release without a lock")?;
            post(&self.agent, &format!("{}/v3/lock/unlock", self.url), serde_json::json!({"key": key}))?;
            Ok(())
        }
    }

    /// ZooKeeper's lock recipe: create an ephemeral sequential node under
    /// the lock's node; the lowest sequence holds the lock; the others
    /// watch the node just below their own and look again when it goes.
    struct Zk {
        addr: String,
        rt: tokio::runtime::Handle,
    }

    struct ZkClient {
        client: zookeeper_client::Client,
        rt: tokio::runtime::Handle,
        mine: Option<String>,
    }

    fn zk_err(e: zookeeper_client::Error) -> String {
        format!("zookeeper: {e}")
    }

    impl System for Zk {
        fn client(&self, _: usize) -> Result<Box<dyn LockClient>, String> {
            let client = self.rt.block_on(zookeeper_client::Client::connect(&self.addr)).map_err(zk_err)?;
            Ok(Box::new(ZkClient { client, rt: self.rt.clone(), mine: None }))
        }
    }

    impl LockClient for ZkClient {
        fn acquire(&mut self, name: &str) -> Result<(), String> {
            use zookeeper_client::{Acls, CreateMode, Error};
            let dir = format!("/{name}");
            let client = &self.client;
            let mine = self.rt.block_on(async {
                let persistent = CreateMode::Persistent.with_acls(Acls::anyone_all());
                match client.create(&dir, b"", &persistent).await {
                    Ok(_) | Err(Error::NodeExists) => {}
                    Err(e) => return Err(zk_err(e)),
                }
                let eph = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
                let (_, seq) = client.create(&format!("{dir}/lock-"), b"", &eph).await.map_err(zk_err)?;
                let mine = format!("lock-{seq}");
                loop {
                    let mut children = client.list_children(&dir).await.map_err(zk_err)?;
                    children.sort();
                    let at = children.iter().position(|c| *c == mine).ok_or("zookeeper: own lock node vanished")?;
                    if at == 0 {
                        return Ok(mine);
                    }
                    let below = format!("{dir}/{}", children[at - 1]);
                    let (stat, watcher) = client.check_and_watch_stat(&below).await.map_err(zk_err)?;
                    if stat.is_some() {
                        // Look again after 10 s even without an event, so a
                        // lost watch cannot hang the run.
                        let _ = tokio::time::timeout(Duration::from_secs(10), watcher.changed()).await;
                    }
                }
            })?;
            self.mine = Some(format!("{dir}/{mine}"));
            Ok(())
        }

        fn release(&mut self, _: &str) -> Result<(), String> {
            let mine = self.mine.take().ok_or("zookeeper: release without a lock")?;
            self.rt.block_on(self.client.delete(&mine, None)).map_err(zk_err)
        }
    }
}
