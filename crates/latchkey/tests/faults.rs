//! Every engine through the fault-injecting file layer: failed fsyncs,
//! full disks, torn writes and power loss.

mod common;

use std::io::ErrorKind;

use latchkey::fs::faults::{self, Plan};
use latchkey::{Db, Engine, Error, Options, Sync};

fn opts(engine: Engine, sync: Sync) -> Options {
    Options { sync, ..Options::new(engine) }
}

fn is_io(e: &Error, kind: Option<ErrorKind>) -> bool {
    matches!(e, Error::Io { source, .. } if kind.is_none_or(|k| source.kind() == k))
}

/// A failed fsync is reported, and never retried as if nothing happened:
/// every later write is refused until the database is reopened.
#[test]
fn a_failed_fsync_is_reported_and_never_silently_retried() {
    for &engine in Engine::all() {
        let dir = tempfile::tempdir().unwrap();
        faults::set(dir.path(), Plan::default());
        let db = Db::open(dir.path(), opts(engine, Sync::Always)).unwrap();
        db.put(b"before", b"1").unwrap();
        faults::set(dir.path(), Plan { fail_syncs: true, ..Plan::default() });
        let err = db.put(b"during", b"2").unwrap_err();
        assert!(is_io(&err, None), "{engine}: {err}");
        // The disk "recovers", but what reached it is unknown: no retry.
        faults::set(dir.path(), Plan::default());
        let err = db.put(b"after", b"3").unwrap_err();
        assert!(matches!(err, Error::Poisoned { .. }), "{engine}: {err}");
        assert!(err.to_string().contains("reopen"), "{err}");
        assert!(matches!(db.sync(), Err(Error::Poisoned { .. })), "{engine}: sync after a failed fsync");
        assert_eq!(db.get(b"before").unwrap(), Some(b"1".to_vec()), "reads go on");
        drop(db);
        faults::clear(dir.path());
        let db = Db::open(dir.path(), opts(engine, Sync::Always)).unwrap();
        assert_eq!(db.get(b"before").unwrap(), Some(b"1".to_vec()));
        db.put(b"after", b"3").unwrap();
        assert_eq!(db.get(b"after").unwrap(), Some(b"3".to_vec()));
    }
}

/// A full disk is a clean error; the store still opens afterwards with
/// everything acknowledged before, and the torn write is gone.
#[test]
fn a_full_disk_is_a_clean_error_and_the_store_reopens() {
    for &engine in Engine::all() {
        let dir = tempfile::tempdir().unwrap();
        faults::set(dir.path(), Plan::default());
        let db = Db::open(dir.path(), opts(engine, Sync::Always)).unwrap();
        for i in 0..50u32 {
            db.put(i.to_be_bytes(), [7u8; 100]).unwrap();
        }
        faults::set(
            dir.path(),
            Plan { write_budget: Some(60), write_error: Some(ErrorKind::StorageFull), ..Plan::default() },
        );
        let err = db.put(b"big", [1u8; 500]).unwrap_err();
        assert!(is_io(&err, Some(ErrorKind::StorageFull)), "{engine}: {err}");
        assert!(db.put(b"small", b"x").is_err(), "{engine}: a write after ENOSPC must not pretend to succeed");
        drop(db);
        faults::clear(dir.path());
        let db = Db::open(dir.path(), opts(engine, Sync::Always)).unwrap();
        for i in 0..50u32 {
            assert_eq!(db.get(i.to_be_bytes()).unwrap(), Some(vec![7u8; 100]), "{engine}: key {i}");
        }
        assert_eq!(db.get(b"big").unwrap(), None, "{engine}: the torn write must not appear");
        db.put(b"later", b"ok").unwrap();
        drop(db);
        let report = latchkey::check(dir.path(), &mut |_, _| {}).unwrap();
        assert!(report.is_clean(), "{engine}: {:?}", report.damage);
    }
}

/// After a power loss, `Sync::Always` keeps every acknowledged write.
#[test]
fn power_loss_keeps_every_acknowledged_write_under_sync_always() {
    for &engine in Engine::all() {
        let dir = tempfile::tempdir().unwrap();
        faults::set(dir.path(), Plan::default());
        let db = Db::open(dir.path(), common::small_options(engine, true)).unwrap();
        for i in 0..400u32 {
            db.put(i.to_be_bytes(), vec![i as u8; (i % 90) as usize]).unwrap();
        }
        // The power goes: nothing more reaches the disk, not even the close.
        faults::set(dir.path(), Plan { fail_syncs: true, ..Plan::default() });
        drop(db);
        faults::power_loss(dir.path()).unwrap();
        faults::clear(dir.path());
        let db = Db::open(dir.path(), common::small_options(engine, true)).unwrap();
        for i in 0..400u32 {
            assert_eq!(
                db.get(i.to_be_bytes()).unwrap(),
                Some(vec![i as u8; (i % 90) as usize]),
                "{engine}: lost key {i}"
            );
        }
    }
}

/// Concurrent writers under `Sync::Always` defer their records to the
/// group's fsync leader, who writes them in one piece: each writer reads
/// its own write once acknowledged, and a power loss keeps every one,
/// with small logs and memtables so that rotations, merges, flushes and
/// checkpoints run while records wait to be written.
#[test]
fn concurrent_acknowledged_writes_are_readable_and_survive_power_loss() {
    for &engine in Engine::all() {
        let dir = tempfile::tempdir().unwrap();
        faults::set(dir.path(), Plan::default());
        let db = Db::open(dir.path(), common::small_options(engine, true)).unwrap();
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let db = &db;
                s.spawn(move || {
                    for i in 0..150u8 {
                        let value = vec![t ^ i; 20 + (i % 40) as usize];
                        db.put([t, i], &value).unwrap();
                        assert_eq!(db.get([t, i]).unwrap(), Some(value), "{engine}: own write {t}/{i} unread");
                        if i % 10 == 9 {
                            db.delete([t, i - 5]).unwrap();
                            assert_eq!(db.get([t, i - 5]).unwrap(), None, "{engine}: own delete {t}/{i} unseen");
                        }
                    }
                });
            }
        });
        faults::set(dir.path(), Plan { fail_syncs: true, ..Plan::default() });
        drop(db);
        faults::power_loss(dir.path()).unwrap();
        faults::clear(dir.path());
        let db = Db::open(dir.path(), common::small_options(engine, true)).unwrap();
        for t in 0..8u8 {
            for i in 0..150u8 {
                let deleted = i % 10 == 4 && i < 145;
                let want = (!deleted).then(|| vec![t ^ i; 20 + (i % 40) as usize]);
                assert_eq!(db.get([t, i]).unwrap(), want, "{engine}: key {t}/{i} after the power loss");
            }
        }
    }
}

/// Under `Sync::Never`, a power loss keeps everything up to the last
/// `sync()` and a prefix of what came after: never a later write without
/// an earlier one. The model has teeth: some unsynced writes are lost.
#[test]
fn power_loss_under_sync_never_keeps_a_prefix_after_the_last_sync() {
    for &engine in Engine::all() {
        let dir = tempfile::tempdir().unwrap();
        faults::set(dir.path(), Plan::default());
        let db = Db::open(dir.path(), opts(engine, Sync::Never)).unwrap();
        for i in 0..100u32 {
            db.put(i.to_be_bytes(), [1u8; 20]).unwrap();
        }
        db.sync().unwrap();
        for i in 100..200u32 {
            db.put(i.to_be_bytes(), [1u8; 20]).unwrap();
        }
        faults::set(dir.path(), Plan { fail_syncs: true, ..Plan::default() });
        drop(db);
        faults::power_loss(dir.path()).unwrap();
        faults::clear(dir.path());
        let db = Db::open(dir.path(), opts(engine, Sync::Never)).unwrap();
        let present: Vec<bool> = (0..200u32).map(|i| db.get(i.to_be_bytes()).unwrap().is_some()).collect();
        assert!(present[..100].iter().all(|&p| p), "{engine}: lost a synced write");
        let kept = present.iter().take_while(|&&p| p).count();
        assert!(present[kept..].iter().all(|&p| !p), "{engine}: a later write survived an earlier one");
        assert!(kept < 200, "{engine}: unsynced writes survived a power loss: is the model on?");
    }
}

/// Power fails in the middle of a merge, compaction or checkpoint, after
/// each number of fsyncs that succeed: overwritten pages get their old
/// bytes back, unsynced appends vanish. Every acknowledged write survives
/// and `check` finds no damage.
#[test]
fn power_loss_during_compaction_or_checkpoint_loses_nothing_acknowledged() {
    for &engine in Engine::all() {
        for budget in 0..8u64 {
            let dir = tempfile::tempdir().unwrap();
            faults::set(dir.path(), Plan::default());
            let opts = common::small_options(engine, false);
            let db = Db::open(dir.path(), opts.clone()).unwrap();
            for i in 0..300u32 {
                db.put(i.to_be_bytes(), vec![i as u8; (i % 200) as usize]).unwrap();
            }
            for i in (0..300u32).step_by(3) {
                db.delete(i.to_be_bytes()).unwrap();
            }
            faults::set(dir.path(), Plan { sync_budget: Some(budget), ..Plan::default() });
            let _ = db.compact();
            faults::set(dir.path(), Plan { fail_syncs: true, ..Plan::default() });
            db.simulate_crash();
            faults::power_loss(dir.path()).unwrap();
            faults::clear(dir.path());
            let db = Db::open(dir.path(), opts).unwrap();
            for i in 0..300u32 {
                let want = (i % 3 != 0).then(|| vec![i as u8; (i % 200) as usize]);
                assert_eq!(db.get(i.to_be_bytes()).unwrap(), want, "{engine}, {budget} syncs: key {i}");
            }
            drop(db);
            let report = latchkey::check(dir.path(), &mut |_, _| {}).unwrap();
            assert!(report.is_clean(), "{engine}, {budget} syncs: {:?}", report.damage);
        }
    }
}
