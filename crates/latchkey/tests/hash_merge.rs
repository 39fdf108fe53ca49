//! Merge and key-table scenarios of the `hash` engine.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use latchkey::{Db, Engine, Options, Sync};

fn value_for(key: u64, version: u64) -> Vec<u8> {
    let mut v = format!("{key}:{version}:").into_bytes();
    v.resize(64, b'.');
    v
}

fn parse_value(v: &[u8]) -> (u64, u64) {
    let s = std::str::from_utf8(v).unwrap();
    let mut it = s.split(':');
    (it.next().unwrap().parse().unwrap(), it.next().unwrap().parse().unwrap())
}

/// Merges run back to back while 2 writers and 2 readers work. Readers
/// always see a value that was written for that key, never an error; one
/// of them hints each batch of its gets with `Db::prefetch` (which the
/// merges' swaps of segments, rings and tables must not trip).
#[test]
fn merge_under_two_writers_and_two_readers() {
    const KEYS: u64 = 500;
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { sync: Sync::Never, ..common::small_options(Engine::Hash, true) };
    let db = Db::open(dir.path(), opts).unwrap();
    let started: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    for k in 0..KEYS {
        db.put(k.to_be_bytes(), value_for(k, 0)).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut threads = Vec::new();
    for w in 0..2u64 {
        let (db, started, stop) = (db.clone(), Arc::clone(&started), Arc::clone(&stop));
        threads.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 2_000_000 {
                let k = (n * 7 % (KEYS / 2)) * 2 + w; // each writer owns half the keys
                let v = started[k as usize].fetch_add(1, Ordering::SeqCst) + 1;
                db.put(k.to_be_bytes(), value_for(k, v)).unwrap();
                n += 1;
            }
            n
        }));
    }
    for r in 0..2u64 {
        let (db, started, stop) = (db.clone(), Arc::clone(&started), Arc::clone(&stop));
        threads.push(std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && n < 5_000_000 {
                let k = (n * 11 + r) % KEYS;
                if r == 1 && n.is_multiple_of(16) {
                    let batch: Vec<[u8; 8]> = (n..n + 16).map(|m| ((m * 11 + r) % KEYS).to_be_bytes()).collect();
                    db.prefetch(&batch);
                }
                let v = db.get(k.to_be_bytes()).expect("read failed during merge").expect("key vanished");
                let (key, version) = parse_value(&v);
                assert_eq!(key, k, "value of another key");
                assert!(version <= started[k as usize].load(Ordering::SeqCst), "a version never written");
                n += 1;
            }
            n
        }));
    }
    let mut merges = 0;
    while Instant::now() < deadline {
        db.compact().unwrap();
        merges += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let counts: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(merges >= 3, "only {merges} merges ran");
    assert!(counts.iter().all(|&c| c > 100), "a thread made no progress: {counts:?}");
    for k in 0..KEYS {
        let (key, version) = parse_value(&db.get(k.to_be_bytes()).unwrap().unwrap());
        assert_eq!((key, version), (k, started[k as usize].load(Ordering::SeqCst)));
    }
}

/// After every key is overwritten 10 times, a merge brings the files on
/// disk within 1.5x of the live records.
#[test]
fn merge_brings_space_within_1_5x_after_ten_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { sync: Sync::Never, segment_size: 1 << 20, ..common::small_options(Engine::Hash, false) };
    let db = Db::open(dir.path(), opts).unwrap();
    for round in 0..11u64 {
        for k in 0..5000u64 {
            let mut v = [0u8; 100];
            v[..8].copy_from_slice(&round.to_le_bytes());
            db.put(format!("{k:016}"), v).unwrap();
        }
    }
    let before = db.stats();
    assert!(before.space_amplification() > 10.0, "{before}");
    db.compact().unwrap();
    let after = db.stats();
    let on_disk: u64 = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    let ratio = on_disk as f64 / after.live_bytes as f64;
    assert!(ratio <= 1.5, "{on_disk} bytes on disk for {} live: {ratio:.2}x", after.live_bytes);
    assert_eq!(after.keys, 5000);
}

/// Merge starts by itself once the dead fraction passes the threshold.
#[test]
fn merge_starts_by_itself_past_the_dead_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options { sync: Sync::Never, ..common::small_options(Engine::Hash, true) }).unwrap();
    for round in 0..20u8 {
        for k in 0..50u8 {
            db.put([k], [round; 100]).unwrap();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while db.stats().merges == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = db.stats();
    assert!(s.merges > 0, "no merge started: {s}");
    for k in 0..50u8 {
        assert_eq!(db.get([k]).unwrap(), Some(vec![19u8; 100]));
    }
}

/// A merged store of 300 keys (key 7 deleted before the merge, key 1
/// rewritten after it), closed; returns its options and its key table.
fn merged_store_with_a_table(dir: &std::path::Path) -> (Options, std::path::PathBuf) {
    let opts = common::small_options(Engine::Hash, false);
    let db = Db::open(dir, opts.clone()).unwrap();
    for k in 0..300u32 {
        db.put(k.to_be_bytes(), k.to_le_bytes()).unwrap();
    }
    db.delete(7u32.to_be_bytes()).unwrap();
    db.compact().unwrap();
    db.put(1u32.to_be_bytes(), b"newer").unwrap();
    drop(db);
    let table = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "keys"))
        .expect("merge wrote a key table");
    (opts, table)
}

/// Every key of [`merged_store_with_a_table`] reads as written.
fn assert_merged_store_reads_right(dir: &std::path::Path, opts: Options) {
    let db = Db::open(dir, opts).unwrap();
    for k in 0..300u32 {
        let want = match k {
            1 => Some(b"newer".to_vec()),
            7 => None,
            _ => Some(k.to_le_bytes().to_vec()),
        };
        assert_eq!(db.get(k.to_be_bytes()).unwrap(), want, "key {k}");
    }
}

/// A damaged key table is not trusted: startup reads the data segments.
#[test]
fn damaged_key_table_falls_back_to_reading_the_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (opts, table) = merged_store_with_a_table(dir.path());
    let mut bytes = std::fs::read(&table).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&table, bytes).unwrap();
    assert_merged_store_reads_right(dir.path(), opts);
}

/// A key table of the layout before 2026-11-26 (file kind 4) is not
/// damage: `check` notes it, and an open reads the data segments instead.
#[test]
fn a_key_table_of_the_older_layout_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let (opts, table) = merged_store_with_a_table(dir.path());
    // The file header of the older layout: magic, version 1, kind 4, CRC.
    let mut bytes = std::fs::read(&table).unwrap();
    bytes[10..12].copy_from_slice(&4u16.to_le_bytes());
    let crc = crc32c::crc32c(&bytes[..12]);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&table, bytes).unwrap();
    let report = latchkey::check(dir.path(), &mut |_, _| {}).unwrap();
    assert!(report.is_clean(), "{:?}", report.damage);
    assert!(report.notes.iter().any(|n| n.contains("older layout")), "{:?}", report.notes);
    assert_merged_store_reads_right(dir.path(), opts);
}

/// Expired keys read as absent at once, survive a reopen as expired, and
/// are not copied by merge.
#[test]
fn expired_keys_are_invisible_and_reclaimed_by_merge() {
    let dir = tempfile::tempdir().unwrap();
    let opts = common::small_options(Engine::Hash, false);
    let db = Db::open(dir.path(), opts.clone()).unwrap();
    let now = latchkey::now_ms();
    db.put(b"old", b"v0").unwrap();
    db.put_with_expiry(b"old", b"v1", now + 1000).unwrap();
    db.put_with_expiry(b"later", b"v", now + 3_600_000).unwrap();
    db.put_with_expiry(b"gone", b"v", now - 1).unwrap();
    assert_eq!(db.get(b"gone").unwrap(), None);
    assert_eq!(db.get_with_expiry(b"later").unwrap(), Some((b"v".to_vec(), now + 3_600_000)));
    assert_eq!(db.get(b"old").unwrap(), Some(b"v1".to_vec()));
    drop(db);
    let db = Db::open(dir.path(), opts.clone()).unwrap();
    assert_eq!(db.get_with_expiry(b"later").unwrap(), Some((b"v".to_vec(), now + 3_600_000)), "TTL lost in reopen");
    // Wait until "old" (expiring at now + 1000) has expired.
    std::thread::sleep(Duration::from_millis((now + 1100).saturating_sub(latchkey::now_ms())));
    assert_eq!(db.get(b"old").unwrap(), None, "an expired write must not uncover the older value");
    let scanned: Vec<_> = db.scan::<&[u8], _>(..).unwrap().map(|r| r.unwrap().0).collect();
    assert_eq!(scanned, vec![b"later".to_vec()]);
    db.compact().unwrap();
    assert_eq!(db.stats().keys, 1, "merge should drop expired keys");
    drop(db);
    let db = Db::open(dir.path(), opts).unwrap();
    assert_eq!(db.get(b"old").unwrap(), None);
    assert_eq!(db.get(b"later").unwrap(), Some(b"v".to_vec()));
}

/// A delete that lands while a merge is copying the key must win.
#[test]
fn deletes_during_merges_are_not_undone() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { sync: Sync::Never, ..common::small_options(Engine::Hash, false) };
    let db = Db::open(dir.path(), opts.clone()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let merger = {
        let (db, stop) = (db.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 10_000 {
                db.compact().unwrap();
                n += 1;
            }
        })
    };
    for round in 0..300u32 {
        for k in 0..20u32 {
            db.put((round * 100 + k).to_be_bytes(), [1u8; 50]).unwrap();
        }
        for k in 0..20u32 {
            db.delete((round * 100 + k).to_be_bytes()).unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    merger.join().unwrap();
    assert_eq!(db.scan::<&[u8], _>(..).unwrap().count(), 0);
    db.compact().unwrap();
    drop(db);
    let db = Db::open(dir.path(), opts).unwrap();
    assert_eq!(db.scan::<&[u8], _>(..).unwrap().count(), 0, "a deleted key came back");
}

/// Keys whose time ran out are reclaimed in the background, even when no
/// other byte is dead.
#[test]
fn expired_keys_are_reclaimed_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options { sync: Sync::Never, ..common::small_options(Engine::Hash, true) }).unwrap();
    let at = latchkey::now_ms() + 100;
    for k in 0..200u32 {
        db.put_with_expiry(k.to_be_bytes(), [7u8; 100], at).unwrap();
    }
    db.put(b"forever", b"v").unwrap();
    assert_eq!(db.stats().merges, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while (db.stats().merges == 0 || db.stats().keys > 1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = db.stats();
    assert!(s.merges > 0 && s.keys == 1, "expired keys not reclaimed: {s}");
    assert_eq!(db.get(b"forever").unwrap(), Some(b"v".to_vec()));
}

/// Lookups in a merge's key table go by the key's 32-bit hash first and
/// check the key in the record. Two keys with the same hash (a CRC32C
/// collision, found by a birthday search): each still reads its own value,
/// and one that is absent reads none, not its twin's.
#[test]
fn keys_with_equal_hashes_are_told_apart() {
    let mut seen = std::collections::HashMap::new();
    let (a, b) = (0u32..4_000_000)
        .find_map(|i| {
            let k = format!("twin{i:08}");
            seen.insert(crc32c::crc32c(k.as_bytes()), k.clone()).map(|other| (other, k))
        })
        .expect("a CRC32C collision among 4M keys");
    assert_eq!(crc32c::crc32c(a.as_bytes()), crc32c::crc32c(b.as_bytes()));
    let dir = tempfile::tempdir().unwrap();
    let opts = common::small_options(Engine::Hash, false);
    let db = Db::open(dir.path(), opts.clone()).unwrap();
    for i in 0..200u32 {
        db.put(format!("filler{i}"), b"f").unwrap();
    }
    db.put(&a, b"value of a").unwrap();
    db.compact().unwrap();
    drop(db);
    let db = Db::open(dir.path(), opts.clone()).unwrap();
    assert_eq!(db.get(&a).unwrap().as_deref(), Some(&b"value of a"[..]));
    assert_eq!(db.get(&b).unwrap(), None, "the absent twin read the other's value");
    db.put(&b, b"value of b").unwrap();
    db.compact().unwrap();
    drop(db);
    let db = Db::open(dir.path(), opts).unwrap();
    assert_eq!(db.get(&a).unwrap().as_deref(), Some(&b"value of a"[..]));
    assert_eq!(db.get(&b).unwrap().as_deref(), Some(&b"value of b"[..]));
    assert_eq!(db.stats().keys, 202);
}

/// Merges checked against a model: each round overwrites and deletes some
/// keys of the last merge's key table (so the overlay hides table entries),
/// then merges; a merge keeps exactly the newest version of every live
/// key, before and after a reopen, and the space after the last merge is
/// the live data's (a hidden older version copied along would double it).
#[test]
fn merges_keep_the_newest_version_of_keys_the_overlay_hides() {
    use std::collections::BTreeMap;
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { sync: Sync::Never, ..common::small_options(Engine::Hash, false) };
    let mut db = Db::open(dir.path(), opts.clone()).unwrap();
    let mut model: BTreeMap<u64, u64> = BTreeMap::new();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..6u64 {
        for _ in 0..2_000 {
            let k = next() % 1_500;
            if next() % 5 == 0 {
                db.delete(k.to_be_bytes()).unwrap();
                model.remove(&k);
            } else {
                db.put(k.to_be_bytes(), value_for(k, round)).unwrap();
                model.insert(k, round);
            }
        }
        db.compact().unwrap();
        if round % 2 == 1 {
            drop(db);
            db = Db::open(dir.path(), opts.clone()).unwrap();
        }
        let got: BTreeMap<u64, u64> = db
            .scan::<&[u8], _>(..)
            .unwrap()
            .map(|kv| {
                let (k, v) = kv.unwrap();
                let (key, version) = parse_value(&v);
                assert_eq!(u64::from_be_bytes(k[..].try_into().unwrap()), key);
                (key, version)
            })
            .collect();
        assert_eq!(got, model, "round {round}");
    }
    let live: u64 = model.keys().map(|&k| 8 + value_for(k, 0).len() as u64).sum();
    let stats = db.stats();
    assert!(stats.disk_bytes < 2 * live + (1 << 20), "{} bytes on disk for {live} live", stats.disk_bytes);
}

/// A merge that keeps failing (here: the directory was deleted under an
/// open store) is tried again less and less often, not at every tick of
/// the background thread (10 ms here), and each failure is counted in
/// `Stats::background_errors`.
#[test]
fn a_failing_background_merge_backs_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let opts = Options {
        sync: Sync::Never,
        segment_size: 1 << 20,
        merge_min_dead_bytes: 4096,
        ..common::small_options(Engine::Hash, true)
    };
    let db = Db::open(&path, opts).unwrap();
    std::fs::remove_dir_all(&path).unwrap();
    // One batch makes the merge due: 100 keys, 20 versions each, in the
    // active segment (whose file stays open), so no new file is needed.
    let mut batch = latchkey::WriteBatch::new();
    for version in 0..20 {
        for k in 0..100u64 {
            batch.put(k.to_be_bytes(), value_for(k, version));
        }
    }
    db.write(batch).unwrap();
    let started = Instant::now();
    while db.stats().background_errors == 0 && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let first = db.stats().background_errors;
    assert!(first > 0, "the merge never failed");
    std::thread::sleep(Duration::from_millis(1_500));
    let failures = db.stats().background_errors;
    // Retried after 20, 40, 80, ... ms: about 6 attempts in 1.5 s (150
    // without the back-off).
    assert!(failures - first <= 10, "{} failed merges in 1.5 s", failures - first);
    assert_eq!(db.stats().merges, 0);
}
