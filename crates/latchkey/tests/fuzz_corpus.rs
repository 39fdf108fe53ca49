//! Replays the fuzz corpora (`fuzz/corpus/<target>/`, seeds and any inputs
//! committed from fuzzing runs, and `fuzz/regressions/<target>/`) through
//! the same entry points the cargo-fuzz targets call, so a regression
//! shows in every `cargo test` without nightly or libFuzzer.
//!
//! `cargo test -p latchkey --test fuzz_corpus -- --ignored write_seed_corpus`
//! writes the seed corpora anew from real files of every engine.

use std::path::{Path, PathBuf};

use latchkey::{fuzzing, Db, Engine, Options, Sync, WriteBatch};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for sub in ["corpus", "regressions"] {
        let Ok(rd) = std::fs::read_dir(fuzz_dir().join(sub).join(target)) else { continue };
        for e in rd {
            let path = e.unwrap().path();
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

fn replay(target: &str, f: impl Fn(&Path, &[u8])) {
    let scratch = tempfile::tempdir().unwrap();
    let all = inputs(target);
    assert!(!all.is_empty(), "no corpus for {target} under {}", fuzz_dir().display());
    for (path, data) in &all {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(scratch.path(), data)));
        assert!(r.is_ok(), "{target}: {} makes the decoder panic", path.display());
    }
}

#[test]
fn every_fuzz_corpus_input_is_handled_without_a_panic() {
    replay("record", |_, d| fuzzing::record(d));
    replay("log_file", fuzzing::log_file);
    replay("sstable", fuzzing::sstable);
    replay("manifest", fuzzing::manifest);
    replay("key_table", fuzzing::key_table);
    replay("btree_page", |_, d| fuzzing::btree_page(d));
}

fn seed(target: &str, name: &str, data: &[u8]) {
    let dir = fuzz_dir().join("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
}

fn files_ending(dir: &Path, ext: &str) -> Vec<Vec<u8>> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(ext))
        .collect();
    names.sort();
    names.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn fill(db: &Db, n: u32) {
    for i in 0..n {
        let mut b = WriteBatch::new();
        b.put(format!("key{i:04}"), vec![i as u8; (i % 40) as usize]);
        if i % 5 == 0 {
            b.delete(format!("key{:04}", i / 2));
        }
        db.write(b).unwrap();
    }
    db.put_with_expiry(b"expiring", b"soon", 1).unwrap();
    db.put(b"big", vec![7u8; 3000]).unwrap();
}

/// Writes the seed corpora from real files of every engine.
#[test]
#[ignore]
fn write_seed_corpus() {
    let small = |engine| Options {
        sync: Sync::Never,
        segment_size: 4096,
        memtable_size: 4096,
        page_size: 1024,
        merge_min_dead_bytes: 1,
        ..Options::new(engine)
    };
    // lsm: a write-ahead log, tables, the manifest.
    let d = tempfile::tempdir().unwrap();
    let db = Db::open(d.path(), small(Engine::Lsm)).unwrap();
    fill(&db, 120);
    db.compact().unwrap();
    fill(&db, 10);
    let wal = files_ending(d.path(), ".wal").pop().unwrap();
    seed("record", "lsm-wal", &wal[16..]);
    seed("log_file", "lsm-wal", &wal);
    for (i, t) in files_ending(d.path(), ".sst").iter().take(2).enumerate() {
        seed("sstable", &format!("lsm-{i}"), t);
    }
    seed("manifest", "lsm", &std::fs::read(d.path().join("MANIFEST")).unwrap());
    db.simulate_crash();
    // hash: a data segment and a key table.
    let d = tempfile::tempdir().unwrap();
    let db = Db::open(d.path(), small(Engine::Hash)).unwrap();
    fill(&db, 120);
    db.compact().unwrap();
    let seg = files_ending(d.path(), ".data").into_iter().max_by_key(Vec::len).unwrap();
    seed("log_file", "hash-segment", &seg);
    seed("record", "hash-segment", &seg[16..]);
    if let Some(k) = files_ending(d.path(), ".keys").pop() {
        seed("key_table", "hash", &k);
    }
    db.simulate_crash();
    // btree: one seed per kind of page, and its log.
    let d = tempfile::tempdir().unwrap();
    let db = Db::open(d.path(), small(Engine::Btree)).unwrap();
    fill(&db, 300);
    for i in (0..300u32).step_by(3) {
        db.delete(format!("key{i:04}")).unwrap();
    }
    db.compact().unwrap();
    fill(&db, 5);
    let pages = std::fs::read(d.path().join("pages.btree")).unwrap();
    let mut kinds = std::collections::BTreeSet::new();
    for (i, p) in pages.chunks(1024).enumerate() {
        if kinds.insert(p[4]) {
            seed("btree_page", &format!("type{}-page{i}", p[4]), p);
        }
    }
    seed("log_file", "btree-wal", &files_ending(d.path(), ".wal").pop().unwrap());
    db.simulate_crash();
    // The RESP parser's corpus lives beside it (crates/latchkey-server tests).
    let resp: &[(&str, &[u8])] = &[
        ("set-get", b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"),
        ("inline", b"PING\r\nSET k v\r\n"),
        ("lock", b"*4\r\n$12\r\nLOCK.ACQUIRE\r\n$4\r\njobs\r\n$2\r\nPX\r\n$4\r\n5000\r\n"),
        ("huge", b"*1\r\n$2147483648\r\n"),
    ];
    for (name, data) in resp {
        seed("resp", name, data);
    }
}
