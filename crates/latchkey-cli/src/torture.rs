//! `latchkey torture`: a real crash loop. A child process writes batches
//! under `Sync::Always` and reports each acknowledged batch on stdout; the
//! parent kills it with SIGKILL at a random moment, reopens the directory
//! and checks that every acknowledged batch is there whole, that no batch
//! is there in part, that deletes acknowledged stay deleted, and that
//! `check` finds no damage.
//!
//! Batch `n` writes `k = 1 + n % 7` keys `b/<n>/<j>` and a marker `m/<n>`
//! holding `k`, and deletes every key of batch `n - 20`. Small segments and
//! memtables keep merges, flushes and compactions running when the kill
//! lands. With `--writers W` the child runs W threads, each with batches
//! of its own (`b/<t>.<n>/<j>`, `m/<t>.<n>`), so their durable writes
//! share fsyncs (group commit) when the kill lands; each is checked alone.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use latchkey::{Db, Engine, Options, WriteBatch};
use rand::{Rng, SeedableRng};

const DELETE_LAG: u64 = 20;

fn keys_of(n: u64) -> u64 {
    1 + n % 7
}

fn value_of(n: u64, j: u64) -> Vec<u8> {
    let mut v = format!("{n}/{j}/").into_bytes();
    v.resize(8 + ((n * 31 + j * 17) % 300) as usize, b'.');
    v
}

/// Batch `n` of writer `t`: its name in keys (`<n>` for a lone writer).
fn batch_name(t: usize, n: u64, writers: usize) -> String {
    if writers == 1 {
        n.to_string()
    } else {
        format!("{t}.{n}")
    }
}

fn torture_options(engine: Engine) -> Options {
    Options {
        sync: latchkey::Sync::Always,
        segment_size: 64 << 10,
        merge_min_dead_bytes: 32 << 10,
        merge_dead_ratio: 0.3,
        memtable_size: 64 << 10,
        target_file_size: 64 << 10,
        base_level_bytes: 256 << 10,
        l0_compaction_trigger: 2,
        background_interval: Duration::from_millis(20),
        // btree: small pages and pool, so splits, merges and evictions run.
        page_size: 1024,
        page_cache_size: 256 << 10,
        ..Options::new(engine)
    }
}

/// The child: each of `starts.len()` writers writes its batches from its
/// start on, forever, reporting each ack as `<writer> <batch>`.
pub fn child(dir: &Path, engine: Engine, starts: &[u64]) -> latchkey::Result<()> {
    let db = Db::open(dir, torture_options(engine))?;
    let writers = starts.len();
    std::thread::scope(|s| {
        let handles: Vec<_> = starts
            .iter()
            .enumerate()
            .map(|(t, &start)| {
                let db = &db;
                s.spawn(move || -> latchkey::Result<()> {
                    use std::io::Write;
                    for n in start.. {
                        let name = |n| batch_name(t, n, writers);
                        let mut b = WriteBatch::new();
                        for j in 0..keys_of(n) {
                            b.put(format!("b/{}/{j}", name(n)), value_of(n, j));
                        }
                        b.put(format!("m/{}", name(n)), keys_of(n).to_string());
                        if let Some(old) = n.checked_sub(DELETE_LAG) {
                            for j in 0..keys_of(old) {
                                b.delete(format!("b/{}/{j}", name(old)));
                            }
                            b.delete(format!("m/{}", name(old)));
                        }
                        db.write(b)?;
                        // Acknowledged: durable under Sync::Always.
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "{t} {n}");
                        let _ = out.flush();
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap_or(Ok(()))?;
        }
        Ok(())
    })
}

/// Whether batch `n` (named `name` in keys) is wholly present
/// (Some(true)), wholly absent (Some(false)), or in part (None).
fn presence(db: &Db, n: u64, name: &str) -> latchkey::Result<Option<bool>> {
    let mut found = 0;
    for j in 0..keys_of(n) {
        match db.get(format!("b/{name}/{j}"))? {
            Some(v) if v == value_of(n, j) => found += 1,
            Some(_) => return Ok(None),
            None => {}
        }
    }
    let marker = db.get(format!("m/{name}"))?;
    let marker_ok = marker.as_deref() == Some(keys_of(n).to_string().as_bytes());
    Ok(match (found, marker_ok) {
        (0, false) if marker.is_none() => Some(false),
        (f, true) if f == keys_of(n) => Some(true),
        _ => None,
    })
}

/// Checks the directory after a kill. `acked[t]` is writer `t`'s last
/// acknowledged batch (None if none yet); its next batch may have been in
/// flight. Returns where each writer goes on.
fn verify(dir: &Path, engine: Engine, acked: &[Option<u64>]) -> Result<Vec<u64>, String> {
    let db = Db::open(dir, torture_options(engine)).map_err(|e| format!("reopen failed: {e}"))?;
    let writers = acked.len();
    let mut next = Vec::with_capacity(writers);
    for (t, &acked) in acked.iter().enumerate() {
        let who = if writers == 1 { String::new() } else { format!("writer {t}: ") };
        let present = |n: u64| presence(&db, n, &batch_name(t, n, writers)).map_err(|e| e.to_string());
        let in_flight = acked.map_or(0, |a| a + 1);
        let Some(flight_applied) = present(in_flight)? else {
            return Err(format!("{who}batch {in_flight} (in flight at the kill) is there in part"));
        };
        // Batch n should be present iff it was applied and the batch deleting it was not.
        let last_applied = if flight_applied { Some(in_flight) } else { acked };
        let Some(last) = last_applied else {
            next.push(0);
            continue;
        };
        let from = last.saturating_sub(DELETE_LAG + 5);
        for n in from..=last + 3 {
            let want = n <= last && n + DELETE_LAG > last;
            match present(n)? {
                Some(p) if p == want => {}
                Some(p) => {
                    return Err(format!(
                        "{who}batch {n} is {} but should be {} (last acknowledged {acked:?}, in-flight applied: {flight_applied})",
                        if p { "present" } else { "absent" },
                        if want { "present" } else { "absent" }
                    ))
                }
                None => return Err(format!("{who}batch {n} is there in part")),
            }
        }
        next.push(last + 1);
    }
    close_and_check(db, dir)?;
    Ok(next)
}

/// Closes the reopened store and runs `check` on it.
fn close_and_check(db: Db, dir: &Path) -> Result<(), String> {
    db.close().map_err(|e| e.to_string())?;
    let report = latchkey::check(dir, &mut |_, _| {}).map_err(|e| e.to_string())?;
    if !report.is_clean() {
        return Err(format!("check found damage: {:?}", report.damage));
    }
    Ok(())
}

/// Reports a loss (keeping the directory for inspection); false.
fn report_loss(cycle: u64, e: &str, dir: &Path) -> bool {
    println!("cycle {cycle}: LOST OR DAMAGED DATA: {e}");
    println!("the directory is kept at {}", dir.display());
    false
}

/// Prints the summary of a clean run and removes its directory; true.
fn report_clean(what: &str, cycles: u64, acked: u64, started: Instant, dir: &Path) -> bool {
    println!(
        "{what}: {cycles} kills, {acked} acknowledged batches, 0 lost, 0 partial, no damage ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(dir);
    true
}

/// The parent: `cycles` kills at random moments of `writers` writers.
pub fn run(engine: Engine, cycles: u64, dir: Option<PathBuf>, max_ms: u64, writers: usize) -> latchkey::Result<bool> {
    let dir = dir.unwrap_or_else(|| std::env::temp_dir().join(format!("latchkey-torture-{}", std::process::id())));
    let exe = std::env::current_exe().map_err(|e| latchkey::Error::Io { path: "<current exe>".into(), source: e })?;
    let mut rng = rand::rngs::SmallRng::from_entropy();
    let writers = writers.max(1);
    let mut next = vec![0u64; writers];
    let started = Instant::now();
    let mut total_acked = 0u64;
    for cycle in 0..cycles {
        let starts: Vec<String> = next.iter().map(|n| n.to_string()).collect();
        let mut child = Command::new(&exe)
            .args(["torture-child", "--engine", engine.name(), "--start", &starts.join(","), "--dir"])
            .arg(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| latchkey::Error::Io { path: exe.clone(), source: e })?;
        let stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut last: Vec<Option<u64>> = vec![None; writers];
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.split_whitespace().map(str::parse::<u64>);
                match (parts.next(), parts.next()) {
                    (Some(Ok(t)), Some(Ok(n))) if (t as usize) < writers => last[t as usize] = Some(n),
                    _ => break,
                }
            }
            last
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..max_ms.max(21))));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        let reported = reader.join().unwrap_or_else(|_| vec![None; writers]);
        let acked: Vec<Option<u64>> =
            reported.iter().zip(&next).map(|(last, &start)| last.or(start.checked_sub(1))).collect();
        total_acked +=
            acked.iter().zip(&next).map(|(a, &start)| a.map_or(0, |a| a + 1).saturating_sub(start)).sum::<u64>();
        match verify(&dir, engine, &acked) {
            Ok(n) => next = n,
            Err(e) => return Ok(report_loss(cycle, &e, &dir)),
        }
    }
    let what = if writers == 1 { engine.to_string() } else { format!("{engine}, {writers} writers") };
    Ok(report_clean(&what, cycles, total_acked, started, &dir))
}

/// Talks RESP to the server just enough to send commands and read replies.
struct RespClient {
    stream: std::net::TcpStream,
    reader: BufReader<std::net::TcpStream>,
}

impl RespClient {
    fn connect(port: u16) -> Option<RespClient> {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let reader = BufReader::new(stream.try_clone().ok()?);
        Some(RespClient { stream, reader })
    }

    /// Sends a command; returns the first line of the reply (None if the
    /// connection broke).
    fn call(&mut self, args: &[Vec<u8>]) -> Option<String> {
        use std::io::Write;
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a);
            req.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&req).ok()?;
        let mut line = String::new();
        (self.reader.read_line(&mut line).ok()? > 0).then_some(line)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_or(16380, |a| a.port())
}

/// The server crash loop: each cycle starts `latchkey serve`, writes MSET
/// batches (batch n: keys b/n/j and marker m/n) until a random moment,
/// kills the server with SIGKILL, and checks the directory as above (no
/// deletes: DELETE_LAG does not apply).
pub fn run_server(engine: Engine, cycles: u64, dir: Option<PathBuf>, max_ms: u64) -> latchkey::Result<bool> {
    let dir =
        dir.unwrap_or_else(|| std::env::temp_dir().join(format!("latchkey-torture-server-{}", std::process::id())));
    let exe = std::env::current_exe().map_err(|e| latchkey::Error::Io { path: "<current exe>".into(), source: e })?;
    let mut rng = rand::rngs::SmallRng::from_entropy();
    let mut next = 0u64;
    let mut total = 0u64;
    let started = Instant::now();
    for cycle in 0..cycles {
        let port = free_port();
        let mut server = Command::new(&exe)
            .args(["--engine", engine.name(), "--dir"])
            .arg(&dir)
            .args(["serve", "--port", &port.to_string(), "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| latchkey::Error::Io { path: exe.clone(), source: e })?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut client = loop {
            if let Some(c) = RespClient::connect(port) {
                break Some(c);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let kill_at = Instant::now() + Duration::from_millis(rng.gen_range(20..max_ms.max(21)));
        let mut acked = next.checked_sub(1);
        while let Some(c) = client.as_mut() {
            if Instant::now() >= kill_at {
                break;
            }
            let n = acked.map_or(0, |a| a + 1);
            let mut args = vec![b"MSET".to_vec()];
            for j in 0..keys_of(n) {
                args.push(format!("b/{n}/{j}").into_bytes());
                args.push(value_of(n, j));
            }
            args.push(format!("m/{n}").into_bytes());
            args.push(keys_of(n).to_string().into_bytes());
            match c.call(&args) {
                Some(reply) if reply.starts_with("+OK") => acked = Some(n),
                _ => client = None,
            }
        }
        let _ = server.kill();
        let _ = server.wait();
        total += acked.map_or(0, |a| a + 1).saturating_sub(next);
        match verify_server(&dir, engine, acked) {
            Ok(n) => next = n,
            Err(e) => return Ok(report_loss(cycle, &e, &dir)),
        }
    }
    Ok(report_clean(&format!("{engine} server"), cycles, total, started, &dir))
}

fn verify_server(dir: &Path, engine: Engine, acked: Option<u64>) -> Result<u64, String> {
    let db = Db::open(dir, Options::new(engine)).map_err(|e| format!("reopen failed: {e}"))?;
    let in_flight = acked.map_or(0, |a| a + 1);
    let Some(flight_applied) = presence(&db, in_flight, &in_flight.to_string()).map_err(|e| e.to_string())? else {
        return Err(format!("batch {in_flight} (in flight at the kill) is there in part"));
    };
    let last = if flight_applied { Some(in_flight) } else { acked };
    for n in 0..=last.map_or(0, |l| l + 2) {
        let want = last.is_some_and(|l| n <= l);
        match presence(&db, n, &n.to_string()).map_err(|e| e.to_string())? {
            Some(p) if p == want => {}
            Some(p) => {
                return Err(format!(
                    "batch {n} is {} (last acknowledged {acked:?})",
                    if p { "present" } else { "missing" }
                ))
            }
            None => return Err(format!("batch {n} is there in part")),
        }
    }
    close_and_check(db, dir)?;
    Ok(last.map_or(0, |l| l + 1))
}
