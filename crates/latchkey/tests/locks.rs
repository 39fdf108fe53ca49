//! The durable lock service and fenced writes, through the library.

use std::time::{Duration, Instant};

use latchkey::{Db, Error, LockService, Options, WriteBatch};

fn fenced_put(db: &Db, key: &str, value: &str, lock: &str, token: u64) -> latchkey::Result<()> {
    let mut b = WriteBatch::new();
    b.put(key, value).fence(lock, token);
    db.write(b)
}

#[test]
fn a_paused_holder_past_its_lease_is_fenced_off() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    let locks = LockService::open(&db).unwrap();
    let a = locks.acquire("file", "A", Duration::from_millis(200), Duration::ZERO).unwrap().unwrap();
    fenced_put(&db, "file", "A1", "file", a.token).unwrap();
    std::thread::sleep(Duration::from_millis(250)); // A pauses past its lease
    let b = locks.acquire("file", "B", Duration::from_secs(10), Duration::ZERO).unwrap().expect("lease ran out");
    assert!(b.token > a.token);
    // Refused from the grant on, even before B has written.
    let err = fenced_put(&db, "file", "A2", "file", a.token).unwrap_err();
    assert!(matches!(err, Error::StaleToken { token, highest, .. } if token == a.token && highest == b.token), "{err}");
    fenced_put(&db, "file", "B1", "file", b.token).unwrap();
    assert!(fenced_put(&db, "file", "A3", "file", a.token).is_err());
    assert_eq!(db.get("file").unwrap(), Some(b"B1".to_vec()));
    assert!(locks.renew("file", "A", Duration::from_secs(1)).unwrap().is_err(), "A's lease is lost");
}

#[test]
fn tokens_keep_rising_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut last = 0;
    for round in 0..3 {
        let db = Db::open(dir.path(), Options::default()).unwrap();
        let locks = LockService::open(&db).unwrap();
        for _ in 0..5 {
            let g = locks.acquire("l", "me", Duration::from_secs(5), Duration::ZERO).unwrap().unwrap();
            assert!(g.token > last, "round {round}: token {} after {last}", g.token);
            last = g.token;
            locks.release("l", "me").unwrap().unwrap();
        }
        // The last grant is left held: the next process sees its lease.
        let g = locks.acquire("l", "me", Duration::from_secs(5), Duration::ZERO).unwrap().unwrap();
        last = g.token;
        drop(locks);
        drop(db);
        let db = Db::open(dir.path(), Options::default()).unwrap();
        let locks = LockService::open(&db).unwrap();
        assert_eq!(locks.info("l").holder.map(|h| h.token), Some(last), "lease forgotten in restart");
        assert!(locks.acquire("l", "other", Duration::from_secs(1), Duration::ZERO).unwrap().is_none());
        locks.release("l", "me").unwrap().unwrap();
    }
}

#[test]
fn waiters_are_served_first_come_first_served_and_can_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    let locks = LockService::open(&db).unwrap();
    locks.acquire("q", "holder", Duration::from_secs(30), Duration::ZERO).unwrap().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut threads = Vec::new();
    for i in 0..4 {
        let (mine, tx) = (locks.clone(), tx.clone());
        threads.push(std::thread::spawn(move || {
            let g = mine.acquire("q", &format!("w{i}"), Duration::from_secs(30), Duration::from_secs(20)).unwrap();
            tx.send(g.unwrap().owner).unwrap();
            mine.release("q", &format!("w{i}")).unwrap().unwrap();
        }));
        // Queue them in a known order.
        let deadline = Instant::now() + Duration::from_secs(5);
        while locks.info("q").waiters.len() < i + 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let t = Instant::now();
    assert_eq!(locks.acquire("q", "late", Duration::from_secs(1), Duration::from_millis(100)).unwrap(), None);
    assert!(t.elapsed() >= Duration::from_millis(100));
    locks.release("q", "holder").unwrap().unwrap();
    let order: Vec<String> = (0..4).map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap()).collect();
    assert_eq!(order, ["w0", "w1", "w2", "w3"]);
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn reserved_keys_are_refused_and_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    let locks = LockService::open(&db).unwrap();
    locks.acquire("x", "me", Duration::from_secs(5), Duration::ZERO).unwrap().unwrap();
    let err = db.put([latchkey::RESERVED_PREFIX, b"lock\x00x"].concat(), b"forged").unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    db.put(b"user", b"1").unwrap();
    let keys: Vec<_> = db.scan::<&[u8], _>(..).unwrap().map(|r| r.unwrap().0).collect();
    assert_eq!(keys, vec![b"user".to_vec()]);
    assert_eq!(db.fence_token("x").unwrap(), 1);
}
