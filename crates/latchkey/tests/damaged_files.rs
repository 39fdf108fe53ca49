//! Damaged files of every kind, beyond single bit flips: random mutations,
//! truncations and garbage. Opening, reading and checking must answer with
//! data or an error, never a panic or a hang.

mod common;

use latchkey::{Db, Engine, Options};
use proptest::prelude::*;

/// A small directory of each engine with merged/compacted files and an
/// active log, as (file name, bytes) pairs.
fn sample(engine: Engine) -> Vec<(String, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), common::small_options(engine, false)).unwrap();
    for i in 0..120u32 {
        db.put(i.to_be_bytes(), vec![i as u8; (i % 40) as usize]).unwrap();
    }
    db.compact().unwrap();
    for i in 0..30u32 {
        db.delete(i.to_be_bytes()).unwrap();
    }
    drop(db);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().into_string().unwrap(), std::fs::read(e.path()).unwrap()))
        .filter(|(n, _)| n != "LOCK")
        .collect();
    files.sort();
    files
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Truncate(usize),
    Overwrite(usize, Vec<u8>),
    Insert(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(at, x)| Mutation::Flip(at, x)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..64)).prop_map(|(at, b)| Mutation::Overwrite(at, b)),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..64)).prop_map(|(at, b)| Mutation::Insert(at, b)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match m {
        Mutation::Flip(at, x) => {
            let i = at % bytes.len();
            bytes[i] ^= x;
        }
        Mutation::Truncate(at) => bytes.truncate(at % bytes.len()),
        Mutation::Overwrite(at, b) => {
            let i = at % bytes.len();
            for (j, x) in b.iter().enumerate() {
                if let Some(slot) = bytes.get_mut(i + j) {
                    *slot = *x;
                }
            }
        }
        Mutation::Insert(at, b) => {
            let i = at % bytes.len();
            bytes.splice(i..i, b.iter().copied());
        }
    }
}

fn exercise(engine: Engine, files: &[(String, Vec<u8>)]) {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let _ = latchkey::check(dir.path(), &mut |_, _| {});
    if let Ok(db) = Db::open(dir.path(), Options::new(engine)) {
        for i in 0..120u32 {
            let _ = db.get(i.to_be_bytes());
        }
        if let Ok(it) = db.scan::<&[u8], _>(..) {
            for item in it.take(500) {
                let _ = item;
            }
        }
        let _ = db.put(b"after", b"damage");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_files_never_panic(file_pick in any::<usize>(), muts in proptest::collection::vec(mutation(), 1..6)) {
        for &engine in Engine::all() {
            let mut files = sample(engine);
            let i = file_pick % files.len();
            for m in &muts {
                apply(&mut files[i].1, m);
            }
            exercise(engine, &files);
        }
    }

    #[test]
    fn garbage_files_never_panic(garbage in proptest::collection::vec(any::<u8>(), 0..4096), file_pick in any::<usize>()) {
        for &engine in Engine::all() {
            let mut files = sample(engine);
            let i = file_pick % files.len();
            files[i].1 = garbage.clone();
            exercise(engine, &files);
        }
    }

    #[test]
    fn the_record_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = latchkey::codec::decode(&bytes);
        let _ = latchkey::codec::valid_with_length(&bytes);
    }
}
