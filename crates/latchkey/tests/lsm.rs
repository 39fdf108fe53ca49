//! Scenarios of the `lsm` engine: snapshots across compaction, concurrent
//! readers and writers with compaction running, stalls and statistics.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use latchkey::{Db, Engine, Options, Sync};

fn opts() -> Options {
    Options { sync: Sync::Never, ..common::small_options(Engine::Lsm, true) }
}

/// An iterator opened before 10,000 further writes and a full compaction
/// returns exactly the snapshot it was opened on, forwards and backwards.
#[test]
fn an_iterator_keeps_its_snapshot_across_writes_and_a_full_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    for i in 0..3000u32 {
        db.put(format!("k{i:05}"), format!("v0-{i}")).unwrap();
    }
    for i in (0..3000u32).step_by(3) {
        db.delete(format!("k{i:05}")).unwrap();
    }
    let expected: Vec<(Vec<u8>, Vec<u8>)> = (0..3000u32)
        .filter(|i| i % 3 != 0)
        .map(|i| (format!("k{i:05}").into_bytes(), format!("v0-{i}").into_bytes()))
        .collect();
    let mut forward = db.scan::<&[u8], _>(..).unwrap();
    let mut backward = db.scan::<&[u8], _>(..).unwrap().rev();
    let first = forward.next().unwrap().unwrap();
    let last = backward.next().unwrap().unwrap();
    for i in 0..10_000u32 {
        match i % 4 {
            0 => db.delete(format!("k{:05}", i % 3000)).unwrap(),
            _ => db.put(format!("k{:05}", (i * 7) % 4000), format!("v1-{i}")).unwrap(),
        }
    }
    db.compact().unwrap();
    assert!(db.stats().merges > 0);
    let mut got = vec![first];
    got.extend(forward.map(|r| r.unwrap()));
    assert_eq!(got, expected, "forward iterator drifted from its snapshot");
    let mut got = vec![last];
    got.extend(backward.map(|r| r.unwrap()));
    got.reverse();
    assert_eq!(got, expected, "backward iterator drifted from its snapshot");
}

/// 4 writers and 4 readers for 30 s with flushes and compactions running:
/// every read returns a value that was written for that key.
#[test]
fn four_writers_and_four_readers_for_thirty_seconds() {
    const KEYS: u64 = 2000;
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    let started: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let value = |k: u64, v: u64| {
        let mut s = format!("{k}:{v}:").into_bytes();
        s.resize(40 + (k % 60) as usize, b'x');
        s
    };
    for k in 0..KEYS {
        db.put(k.to_be_bytes(), value(k, 0)).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut threads = Vec::new();
    for w in 0..4u64 {
        let (db, started, stop) = (db.clone(), Arc::clone(&started), Arc::clone(&stop));
        threads.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 50_000_000 {
                let k = (n * 13 % (KEYS / 4)) * 4 + w; // each writer owns a quarter of the keys
                let v = started[k as usize].fetch_add(1, Ordering::SeqCst) + 1;
                db.put(k.to_be_bytes(), value(k, v)).unwrap();
                n += 1;
            }
            n
        }));
    }
    for r in 0..4u64 {
        let (db, started, stop) = (db.clone(), Arc::clone(&started), Arc::clone(&stop));
        threads.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 50_000_000 {
                let k = (n * 31 + r * 7) % KEYS;
                let v = db.get(k.to_be_bytes()).expect("read failed").expect("key vanished");
                let text = String::from_utf8_lossy(&v).into_owned();
                let mut parts = text.split(':');
                let key: u64 = parts.next().unwrap().parse().unwrap();
                let version: u64 = parts.next().unwrap().parse().unwrap();
                assert_eq!(key, k, "read the value of another key");
                assert!(version <= started[k as usize].load(Ordering::SeqCst), "read a version never written");
                assert_eq!(v, value(k, version), "value damaged");
                n += 1;
            }
            n
        }));
    }
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let counts: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(counts.iter().all(|&c| c > 1000), "a thread barely ran: {counts:?}");
    let s = db.stats();
    assert!(s.merges > 0, "no compaction ran: {s}");
    for k in 0..KEYS {
        assert_eq!(db.get(k.to_be_bytes()).unwrap(), Some(value(k, started[k as usize].load(Ordering::SeqCst))));
    }
}

/// When flushes fall behind, writers wait and the stall is counted; reads
/// probe few tables for missing keys thanks to the bloom filters.
#[test]
fn stalls_are_counted_and_missing_keys_skip_tables() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options { max_immutable_memtables: 1, ..opts() }).unwrap();
    for i in 0..20_000u32 {
        db.put(i.to_be_bytes(), [1u8; 64]).unwrap();
    }
    let s = db.stats();
    assert!(s.stalls > 0, "no stall recorded with one immutable memtable allowed: {s}");
    db.compact().unwrap();
    let before = db.stats();
    for i in 0..5_000u32 {
        assert_eq!(db.get((1_000_000 + i).to_be_bytes()).unwrap(), None);
    }
    let after = db.stats();
    assert!(after.files > 2, "expected several tables: {after}");
    let probes = after.probes_per_get;
    assert!(probes < 0.2 + before.probes_per_get, "missing keys probed {probes} tables per get");
}

/// A full compaction leaves the tree as the background wants it: its
/// output lands in a level whose target holds it all, so no background
/// compaction follows it (one did, moving the output down a table at a
/// time while the next workload ran).
#[test]
fn a_full_compaction_leaves_the_background_nothing_to_do() {
    let dir = tempfile::tempdir().unwrap();
    // Level 1 holds 32 KiB, level 2 320 KiB: ~130 KiB of live data fits
    // only level 2.
    let db = Db::open(dir.path(), opts()).unwrap();
    for round in 0..2u8 {
        for i in 0..1_500u32 {
            db.put(i.to_be_bytes(), [round; 80]).unwrap();
        }
    }
    db.compact().unwrap();
    let after = db.stats();
    assert!(after.disk_bytes > 64 * 1024, "too little data to need level 2: {after}");
    std::thread::sleep(std::time::Duration::from_millis(300)); // 30 background ticks
    let later = db.stats();
    assert_eq!(later.merges, after.merges, "the background compacted after a full compaction: {later}");
    for i in 0..1_500u32 {
        assert_eq!(db.get(i.to_be_bytes()).unwrap(), Some(vec![1u8; 80]));
    }
}
