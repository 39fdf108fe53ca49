//! Best-effort and fenced locks through a real client, including the
//! paused-client scenario that fencing exists for.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cmd;

fn acquire(con: &mut redis::Connection, name: &str, owner: &str, ttl_ms: u64, wait_ms: Option<u64>) -> Option<u64> {
    let mut c = cmd("LOCK.ACQUIRE");
    c.arg(name).arg(owner).arg(ttl_ms);
    if let Some(w) = wait_ms {
        c.arg("WAIT").arg(w);
    }
    c.query(con).unwrap()
}

fn fenced_set(
    con: &mut redis::Connection,
    lock: &str,
    token: u64,
    key: &str,
    value: &str,
) -> redis::RedisResult<String> {
    cmd("FENCED").arg(lock).arg(token).arg("SET").arg(key).arg(value).query(con)
}

#[test]
fn best_effort_lock_with_set_nx_px_and_delifeq() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path());
    let mut con = server.connect();
    let took: Option<String> =
        cmd("SET").arg("lock").arg("tok-a").arg("NX").arg("PX").arg(200).query(&mut con).unwrap();
    assert_eq!(took.as_deref(), Some("OK"));
    let second: Option<String> =
        cmd("SET").arg("lock").arg("tok-b").arg("NX").arg("PX").arg(200).query(&mut con).unwrap();
    assert_eq!(second, None, "held");
    assert_eq!(cmd("DELIFEQ").arg("lock").arg("tok-b").query::<i64>(&mut con).unwrap(), 0, "not b's to release");
    assert_eq!(cmd("DELIFEQ").arg("lock").arg("tok-a").query::<i64>(&mut con).unwrap(), 1);
    let _: String = cmd("SET").arg("lock").arg("tok-c").arg("NX").arg("PX").arg(100).query(&mut con).unwrap();
    std::thread::sleep(Duration::from_millis(150));
    let after: Option<String> =
        cmd("SET").arg("lock").arg("tok-d").arg("NX").arg("PX").arg(100).query(&mut con).unwrap();
    assert_eq!(after.as_deref(), Some("OK"), "the PX lease ran out");
}

/// A takes the lock with a 200 ms lease and pauses past it; B takes the
/// lock and writes; A's write with its old token is refused; B's stands.
fn stale_client_scenario(restart_between: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut server = common::start(dir.path());
    let mut a = server.connect();
    let token_a = acquire(&mut a, "doc", "A", 200, None).expect("free lock");
    assert_eq!(fenced_set(&mut a, "doc", token_a, "doc", "A-1").unwrap(), "OK");
    std::thread::sleep(Duration::from_millis(250)); // A is paused (GC, swap, ...)
    let mut b = server.connect();
    let token_b = acquire(&mut b, "doc", "B", 10_000, None).expect("A's lease ran out");
    assert!(token_b > token_a);
    assert_eq!(fenced_set(&mut b, "doc", token_b, "doc", "B-1").unwrap(), "OK");
    if restart_between {
        drop((a, b));
        server.stop();
        server = common::start(dir.path());
        a = server.connect();
    }
    let err = fenced_set(&mut a, "doc", token_a, "doc", "A-2").unwrap_err();
    assert_eq!(err.code(), Some("STALE"), "{err}");
    let detail = err.detail().unwrap_or_default();
    assert!(
        detail.contains(&token_a.to_string()) && detail.contains(&token_b.to_string()),
        "both tokens named: {detail}"
    );
    assert_eq!(cmd("GET").arg("doc").query::<String>(&mut a).unwrap(), "B-1", "B's value stands");
    let renew: redis::RedisResult<i64> = cmd("LOCK.RENEW").arg("doc").arg("A").arg(1000).query(&mut a);
    assert_eq!(renew.unwrap_err().code(), Some("LOCKLOST"));
    // A token never granted is refused too.
    let forged = fenced_set(&mut a, "doc", token_b + 100, "doc", "X").unwrap_err();
    assert!(forged.to_string().contains("never granted"), "{forged}");
    drop(server);
}

#[test]
fn a_paused_client_past_its_lease_is_fenced_off() {
    stale_client_scenario(false);
}

#[test]
fn a_paused_client_is_fenced_off_across_a_restart() {
    stale_client_scenario(true);
}

#[test]
fn tokens_keep_rising_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut last = 0;
    for round in 0..3 {
        let server = common::start(dir.path());
        let mut con = server.connect();
        for _ in 0..3 {
            let t = acquire(&mut con, "l", "me", 5_000, None).unwrap();
            assert!(t > last, "round {round}: token {t} after {last}");
            last = t;
            assert_eq!(cmd("LOCK.RELEASE").arg("l").arg("me").query::<i64>(&mut con).unwrap(), 1);
        }
        let info: std::collections::HashMap<String, redis::Value> = cmd("LOCK.INFO").arg("l").query(&mut con).unwrap();
        assert_eq!(info.get("last-token"), Some(&redis::Value::Int(last as i64)));
        server.stop();
    }
}

#[test]
fn release_hands_the_lock_to_a_waiter_and_wait_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path());
    let mut a = server.connect();
    let ta = acquire(&mut a, "l", "A", 30_000, None).unwrap();
    let t = Instant::now();
    assert_eq!(acquire(&mut server.connect(), "l", "C", 1_000, Some(150)), None, "WAIT ran out");
    assert!(t.elapsed() >= Duration::from_millis(150));
    let url = server.url();
    let waiter = std::thread::spawn(move || {
        let mut b = redis::Client::open(url).unwrap().get_connection().unwrap();
        acquire(&mut b, "l", "B", 30_000, Some(10_000))
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let info: std::collections::HashMap<String, redis::Value> = cmd("LOCK.INFO").arg("l").query(&mut a).unwrap();
        if info.get("waiters") != Some(&redis::Value::Array(vec![])) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(cmd("LOCK.RELEASE").arg("l").arg("A").query::<i64>(&mut a).unwrap(), 1);
    assert_eq!(waiter.join().unwrap(), Some(ta + 1));
    assert_eq!(cmd("LOCK.RELEASE").arg("l").arg("A").query::<i64>(&mut a).unwrap(), 0, "A no longer holds it");
}

/// 64 clients contend for one lock for 10 s. Every holder writes with its
/// token: all writes succeed and in token order, nobody holds it at the same
/// time as another, the queue is served in order, and nobody starves.
#[test]
fn sixty_four_clients_contending_for_one_lock() {
    const CLIENTS: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path());
    let held = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Vec::<(u64, usize)>::new()));
    // Everyone connects first, then all start together.
    let start = Arc::new(std::sync::Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (url, held, log, start) = (server.url(), Arc::clone(&held), Arc::clone(&log), Arc::clone(&start));
            std::thread::spawn(move || {
                let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
                let owner = format!("client-{i}");
                start.wait();
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut n = 0;
                while Instant::now() < deadline && n < 100_000 {
                    let Some(token) = acquire(&mut con, "hot", &owner, 10_000, Some(20_000)) else {
                        panic!("{owner} waited 20 s: starved");
                    };
                    assert!(!held.swap(true, Ordering::SeqCst), "two holders at once");
                    let r = fenced_set(&mut con, "hot", token, "resource", &format!("{owner}:{token}"));
                    assert_eq!(r.unwrap(), "OK", "a fenced write of the holder failed");
                    log.lock().unwrap().push((token, i));
                    held.store(false, Ordering::SeqCst);
                    assert_eq!(cmd("LOCK.RELEASE").arg("hot").arg(&owner).query::<i64>(&mut con).unwrap(), 1);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let counts: Vec<usize> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let log = log.lock().unwrap();
    assert!(log.windows(2).all(|w| w[1].0 > w[0].0), "writes not in token order");
    assert_eq!(log.len(), counts.iter().sum::<usize>());
    let (min, max) = (*counts.iter().min().unwrap(), *counts.iter().max().unwrap());
    assert!(min >= 1, "a client never got the lock: {counts:?}");
    // First come, first served: once everyone is queued, the lock goes
    // round-robin, so no client gets more than a couple of extra turns.
    assert!(max - min <= 2, "unfair: {counts:?}");
    eprintln!("{} acquisitions in 10 s by {CLIENTS} clients (min {min}, max {max})", log.len());
}

/// A client that disconnects while queued gives up its place: the lock is
/// not handed to (and held by) nobody.
#[test]
fn a_waiter_that_disconnects_gives_up_its_place() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path());
    let mut a = server.connect();
    acquire(&mut a, "l", "A", 30_000, None).unwrap();
    let mut gone = std::net::TcpStream::connect(server.addr).unwrap();
    gone.write_all(b"LOCK.ACQUIRE l B 30000 WAIT 20000\r\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let waiters = |con: &mut redis::Connection| {
        let info: std::collections::HashMap<String, redis::Value> = cmd("LOCK.INFO").arg("l").query(con).unwrap();
        info.get("waiters") != Some(&redis::Value::Array(vec![]))
    };
    while !waiters(&mut a) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(waiters(&mut a), "B never queued");
    drop(gone);
    while waiters(&mut a) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!waiters(&mut a), "B stayed queued after leaving");
    assert_eq!(cmd("LOCK.RELEASE").arg("l").arg("A").query::<i64>(&mut a).unwrap(), 1);
    assert!(acquire(&mut a, "l", "C", 1_000, None).is_some(), "the lock went to a departed client");
}

/// Clients taking locks of their own all at once: every grant is durable
/// before its token is returned, and grants made together share fsyncs
/// (a lock command runs in place on its worker only while no other one is
/// running; the others leave the worker and wait on the same fsync).
#[test]
fn grants_made_together_share_fsyncs() {
    const CLIENTS: usize = 16;
    const CYCLES: usize = 25;
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path());
    let fsyncs = |con: &mut redis::Connection| -> u64 {
        let info: String = cmd("INFO").query(con).unwrap();
        let line = info.lines().find_map(|l| l.strip_prefix("fsyncs:")).expect("INFO has fsyncs");
        line.trim().parse().unwrap()
    };
    let mut admin = server.connect();
    let before = fsyncs(&mut admin);
    let start = Arc::new(std::sync::Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (url, start) = (server.url(), Arc::clone(&start));
            std::thread::spawn(move || {
                let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
                let (name, owner) = (format!("own-{i}"), format!("client-{i}"));
                start.wait();
                let mut last = 0;
                for _ in 0..CYCLES {
                    let token = acquire(&mut con, &name, &owner, 10_000, None).expect("a free lock");
                    assert!(token > last, "tokens of {name} went back: {last} then {token}");
                    last = token;
                    assert_eq!(cmd("LOCK.RELEASE").arg(&name).arg(&owner).query::<i64>(&mut con).unwrap(), 1);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let grants = (CLIENTS * CYCLES) as u64;
    let used = fsyncs(&mut admin) - before;
    eprintln!("{grants} grants, {used} fsyncs");
    assert!(used >= 1 && used < grants * 3 / 4, "{used} fsyncs for {grants} grants made together");
}
