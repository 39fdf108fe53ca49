//! The `btree` engine's own guarantees: the free list reuses pages, readers
//! run beside a writer that splits and merges, a point read touches one page
//! per level, damage names its page, large values and long keys.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use latchkey::{Db, Engine, Options, Sync, WriteBatch};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn opts() -> Options {
    Options { sync: Sync::Never, ..Options::new(Engine::Btree) }
}

fn page_file_len(dir: &std::path::Path) -> u64 {
    common::file_len(&dir.join("pages.btree"))
}

/// Insert N random keys, delete 90%, insert N new ones: the file grows by
/// less than 20% (freed pages are reused), and `check` finds the tree valid.
/// (`latchkey bench btree-space --keys 1000000` runs the same at 1M keys.)
#[test]
fn the_free_list_reuses_the_pages_of_deleted_keys() {
    const N: u64 = 60_000;
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    let mut rng = SmallRng::seed_from_u64(7);
    let keys: Vec<u64> = (0..N).map(|_| rng.gen()).collect();
    for chunk in keys.chunks(1000) {
        let mut b = WriteBatch::new();
        for k in chunk {
            b.put(k.to_be_bytes(), [1u8; 100]);
        }
        db.write(b).unwrap();
    }
    for chunk in keys.chunks(1000) {
        let mut b = WriteBatch::new();
        for k in chunk.iter().filter(|k| *k % 10 != 0) {
            b.delete(k.to_be_bytes());
        }
        db.write(b).unwrap();
    }
    db.compact().unwrap();
    let after_delete = page_file_len(dir.path());
    let free_before = db.stats().free_pages;
    assert!(free_before > 0, "deleting 90% of the keys freed no page");
    for _ in 0..N / 1000 {
        let mut b = WriteBatch::new();
        for _ in 0..1000 {
            b.put(rng.gen::<u64>().to_be_bytes(), [2u8; 100]);
        }
        db.write(b).unwrap();
    }
    db.compact().unwrap();
    let after_reinsert = page_file_len(dir.path());
    let growth = after_reinsert as f64 / after_delete as f64 - 1.0;
    assert!(growth < 0.20, "file grew {:.1}% ({after_delete} -> {after_reinsert} bytes)", growth * 100.0);
    let stats = db.stats();
    assert!(stats.height >= 2 && stats.fill_factor > 0.3, "{stats}");
    drop(db);
    let report = latchkey::check(dir.path(), &mut |_, _| {}).unwrap();
    assert!(report.is_clean(), "{:?}", report.damage);
}

fn value_for(key: u32, version: u64) -> Vec<u8> {
    let mut v = format!("{key}:{version}:").into_bytes();
    // Some values spill into overflow pages.
    let len = if version.is_multiple_of(17) { 5000 } else { (version % 90) as usize };
    v.resize(v.len() + len, b'.');
    v
}

fn key_of(value: &[u8]) -> Option<u32> {
    std::str::from_utf8(value.split(|&b| b == b':').next()?).ok()?.parse().ok()
}

/// 4 readers get and scan while 1 writer inserts and deletes (splitting
/// and merging nodes) for `LATCHKEY_BTREE_STRESS_SECS` (default 30):
/// every value read belongs to its key and every scan is in order. One
/// mismatch fails the test.
#[test]
fn readers_beside_a_writer_that_splits_and_merges_see_only_whole_nodes() {
    let secs: u64 = std::env::var("LATCHKEY_BTREE_STRESS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let o = Options { page_size: 1024, page_cache_size: 256 * 1024, segment_size: 1 << 20, ..opts() };
    let db = Db::open(dir.path(), o).unwrap();
    const KEYS: u32 = 20_000;
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, scans) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut readers = Vec::new();
    for r in 0..4u64 {
        let (db, stop, reads, scans) = (db.clone(), stop.clone(), reads.clone(), scans.clone());
        readers.push(std::thread::spawn(move || {
            let mut rng = SmallRng::seed_from_u64(100 + r);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let k: u32 = rng.gen_range(0..KEYS);
                if let Some(v) = db.get(k.to_be_bytes()).unwrap() {
                    assert_eq!(key_of(&v), Some(k), "get {k} returned another key's value");
                }
                reads.fetch_add(1, Ordering::Relaxed);
                if rng.gen_ratio(1, 20) {
                    let start: u32 = rng.gen_range(0..KEYS);
                    let it = db.scan(start.to_be_bytes()..).unwrap();
                    let items: Vec<_> = if r % 2 == 0 {
                        it.take(200).map(|x| x.unwrap()).collect()
                    } else {
                        db.scan(..start.to_be_bytes()).unwrap().rev().take(200).map(|x| x.unwrap()).collect()
                    };
                    for w in items.windows(2) {
                        let ordered = if r % 2 == 0 { w[0].0 < w[1].0 } else { w[0].0 > w[1].0 };
                        assert!(ordered, "scan out of order: {:?} then {:?}", w[0].0, w[1].0);
                    }
                    for (k, v) in &items {
                        let k = u32::from_be_bytes(k.as_slice().try_into().unwrap());
                        assert_eq!(key_of(v), Some(k), "scan gave key {k} another key's value");
                    }
                    scans.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let mut rng = SmallRng::seed_from_u64(1);
    let mut version = 0u64;
    let mut writes = 0u64;
    while Instant::now() < deadline {
        // Waves: fill a region (splits), then empty it (merges).
        let lo = rng.gen_range(0..KEYS - 2000);
        for k in lo..lo + 2000 {
            version += 1;
            db.put(k.to_be_bytes(), value_for(k, version)).unwrap();
        }
        for k in (lo..lo + 2000).filter(|k| k % 8 != 0) {
            db.delete(k.to_be_bytes()).unwrap();
        }
        writes += 3750;
        if Instant::now() >= deadline {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("a reader saw a mismatch");
    }
    let (reads, scans) = (reads.load(Ordering::Relaxed), scans.load(Ordering::Relaxed));
    assert!(reads > 1000 && scans > 10 && writes > 1000, "too little happened: {reads} reads, {scans} scans");
    let stats = db.stats();
    assert!(stats.merges > 0, "no checkpoint ran: {stats}");
    drop(db);
    let report = latchkey::check(dir.path(), &mut |_, _| {}).unwrap();
    assert!(report.is_clean(), "{:?}", report.damage);
}

/// With every page cached, a point read touches exactly one page per level.
#[test]
fn a_cached_point_read_touches_one_page_per_level() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    const N: u32 = 50_000;
    for chunk in (0..N).collect::<Vec<_>>().chunks(1000) {
        let mut b = WriteBatch::new();
        for k in chunk {
            b.put(k.wrapping_mul(2_654_435_761).to_be_bytes(), [3u8; 100]);
        }
        db.write(b).unwrap();
    }
    for k in 0..N {
        assert!(db.get(k.wrapping_mul(2_654_435_761).to_be_bytes()).unwrap().is_some());
    }
    let s = db.stats();
    assert!(s.height >= 3, "{s}");
    assert_eq!(s.probes_per_get, s.height as f64, "{s}");
    assert!(s.cache_hit_rate > 0.99, "{s}");
}

/// A flipped bit in any page of a closed database is damage that names the
/// page; reads of the damaged page fail, other reads go on.
#[test]
fn a_flipped_bit_in_any_page_is_damage_naming_the_page() {
    let src = tempfile::tempdir().unwrap();
    let o = Options { page_size: 1024, ..opts() };
    let db = Db::open(src.path(), o.clone()).unwrap();
    for k in 0..300u32 {
        db.put(k.to_be_bytes(), vec![k as u8; if k == 7 { 3000 } else { 40 }]).unwrap();
    }
    for k in (0..300u32).step_by(4) {
        db.delete(k.to_be_bytes()).unwrap();
    }
    let pages = db.stats().pages;
    drop(db);
    assert!(pages > 10);
    let mut rng = SmallRng::seed_from_u64(3);
    for id in 0..pages {
        let dir = tempfile::tempdir().unwrap();
        common::copy_dir(src.path(), dir.path());
        let path = dir.path().join("pages.btree");
        let mut bytes = std::fs::read(&path).unwrap();
        let bit = id as usize * 1024 * 8 + rng.gen_range(0..1024 * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        std::fs::write(&path, &bytes).unwrap();
        let report = latchkey::check(dir.path(), &mut |_, _| {}).unwrap();
        let named = report.damage.iter().any(|e| e.to_string().contains(&format!("page {id}")));
        assert!(named, "flip in page {id} not named: {:?}", report.damage);
        if let Ok(db) = Db::open(dir.path(), o.clone()) {
            for k in (0..300u32).filter(|k| k % 4 != 0) {
                match db.get(k.to_be_bytes()) {
                    Ok(v) => assert_eq!(v, Some(vec![k as u8; if k == 7 { 3000 } else { 40 }]), "page {id}"),
                    Err(e) => assert!(e.is_corruption(), "page {id}: {e}"),
                }
            }
        }
    }
}

/// Values up to the limit go through overflow chains and come back whole;
/// keys longer than a quarter page are refused with a clear error.
#[test]
fn large_values_round_trip_and_long_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    db.put(b"big", &big).unwrap();
    db.put(b"small", b"x").unwrap();
    assert_eq!(db.get(b"big").unwrap().as_deref(), Some(big.as_slice()));
    let pages = db.stats().pages;
    db.put(b"big", b"now small").unwrap();
    db.put(b"big2", &big[..1_000_000]).unwrap();
    assert!(db.stats().pages <= pages + 1, "the freed overflow pages were not reused");
    let err = db.put(vec![b'k'; 2000], b"v").unwrap_err();
    assert!(err.to_string().contains("btree engine"), "{err}");
    db.put(vec![b'k'; 995], b"v").unwrap();
    drop(db);
    let db = Db::open(dir.path(), opts()).unwrap();
    assert_eq!(db.get(b"big").unwrap(), Some(b"now small".to_vec()));
    assert_eq!(db.get(b"big2").unwrap().as_deref(), Some(&big[..1_000_000]));
    assert_eq!(db.get(vec![b'k'; 995]).unwrap(), Some(b"v".to_vec()));
}

/// Reopening a cleanly closed tree reads no log: it is fast at any size.
#[test]
fn a_clean_close_leaves_nothing_to_replay() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), opts()).unwrap();
    for k in 0..20_000u32 {
        db.put(k.to_be_bytes(), [5u8; 50]).unwrap();
    }
    assert!(db.stats().log_bytes > 100_000);
    drop(db);
    let db = Db::open(dir.path(), opts()).unwrap();
    let s = db.stats();
    assert!(s.log_bytes < 5000, "the log after a clean close: {s}");
    assert_eq!(s.keys, 20_000);
}

/// A scan that runs while the tree splits and merges under it still
/// yields keys strictly in order, and every key nobody touched.
#[test]
fn a_scan_interleaved_with_splits_and_merges_stays_ordered_and_whole() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options { page_size: 1024, ..opts() }).unwrap();
    for k in (0..20_000u32).step_by(2) {
        db.put(k.to_be_bytes(), [1u8; 30]).unwrap();
    }
    for reverse in [false, true] {
        let mut it = db.scan::<&[u8], _>(..).unwrap();
        let mut seen: Vec<u32> = Vec::new();
        let mut round = 0u32;
        loop {
            let item = if reverse { it.next_back() } else { it.next() };
            let Some(item) = item else { break };
            seen.push(u32::from_be_bytes(item.unwrap().0.try_into().unwrap()));
            if seen.len().is_multiple_of(50) {
                // Churn everywhere: odd keys in (splits), keys = 2 mod 8 out (merges).
                round += 1;
                for k in (round * 97 % 1000..20_000).step_by(1000) {
                    for j in 0..40 {
                        db.put((k + 2 * j + 1).to_be_bytes(), [2u8; 30]).unwrap();
                    }
                }
                for k in (2..20_000u32).step_by(8).skip((round % 7) as usize).step_by(7) {
                    db.delete(k.to_be_bytes()).unwrap();
                }
            }
        }
        let ordered = seen.windows(2).all(|w| if reverse { w[0] > w[1] } else { w[0] < w[1] });
        assert!(ordered, "reverse={reverse}: a scan went out of order");
        for k in (0..20_000u32).step_by(4) {
            assert!(seen.contains(&k), "reverse={reverse}: key {k}, never touched, was skipped");
        }
        db.delete(b"x").unwrap();
    }
    drop(db);
    let report = latchkey::check(dir.path(), &mut |_, _| {}).unwrap();
    assert!(report.is_clean(), "{:?}", report.damage);
}
