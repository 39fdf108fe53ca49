//! The `latchkey` binary, driven as a user would.

use std::path::Path;
use std::process::{Command, Output};

fn latchkey(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_latchkey")).arg("--dir").arg(dir).args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn put_get_del_scan_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    for (k, v) in [("b", "2"), ("a", "1"), ("c", "3")] {
        assert!(latchkey(&dir, &["--engine", "hash", "put", k, v]).status.success());
    }
    let got = latchkey(&dir, &["get", "b"]);
    assert!(got.status.success());
    assert_eq!(stdout(&got), "2\n");
    assert_eq!(stdout(&latchkey(&dir, &["scan"])), "a\t1\nb\t2\nc\t3\n");
    assert_eq!(stdout(&latchkey(&dir, &["scan", "--from", "b", "--reverse"])), "c\t3\nb\t2\n");
    assert_eq!(stdout(&latchkey(&dir, &["scan", "--to", "c", "--limit", "1"])), "a\t1\n");
    assert!(latchkey(&dir, &["del", "b"]).status.success());
    let missing = latchkey(&dir, &["get", "b"]);
    assert_eq!(missing.status.code(), Some(1));
    let stats = stdout(&latchkey(&dir, &["stats"]));
    assert!(stats.contains("keys:                 2"), "{stats}");
    assert!(latchkey(&dir, &["compact"]).status.success());
    assert_eq!(stdout(&latchkey(&dir, &["scan"])), "a\t1\nc\t3\n");
}

#[test]
fn check_passes_a_clean_directory_and_names_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    for i in 0..50 {
        assert!(latchkey(&dir, &["--engine", "hash", "put", &format!("key{i}"), "some value"]).status.success());
    }
    let ok = latchkey(&dir, &["check", "--quiet"]);
    assert!(ok.status.success(), "{}", stdout(&ok));
    assert!(stdout(&ok).contains("no damage"));

    let data = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "data"))
        .unwrap();
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[200] ^= 0x01;
    std::fs::write(&data, bytes).unwrap();
    let bad = latchkey(&dir, &["check", "--quiet"]);
    assert_eq!(bad.status.code(), Some(1));
    let out = stdout(&bad);
    let name = data.file_name().unwrap().to_str().unwrap();
    assert!(out.contains("DAMAGE") && out.contains(name) && out.contains("offset"), "{out}");
}

#[test]
fn errors_are_messages_not_panics() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = latchkey(&tmp.path().join("nothing-here"), &["get", "k"]);
    assert_eq!(missing.status.code(), Some(2));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.starts_with("latchkey: ") && !err.contains("panicked"), "{err}");
    let check = latchkey(&tmp.path().join("nothing-here"), &["check"]);
    assert_eq!(check.status.code(), Some(2));
}

#[test]
fn every_command_explains_itself() {
    for cmd in ["serve", "put", "get", "del", "scan", "check", "compact", "stats", "bench"] {
        let o = Command::new(env!("CARGO_BIN_EXE_latchkey")).args([cmd, "--help"]).output().unwrap();
        assert!(o.status.success(), "{cmd} --help failed");
        assert!(stdout(&o).contains("Usage:"), "{cmd}");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_latchkey")).arg("--help").output().unwrap();
    let text = stdout(&o);
    assert!(text.contains("--dir") && text.contains("--engine") && text.contains("--sync"), "{text}");
}

#[test]
fn a_directory_open_in_another_process_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let db = latchkey::Db::open(tmp.path(), latchkey::Options::default()).unwrap();
    db.put(b"k", b"v").unwrap();
    let o = latchkey(tmp.path(), &["get", "k"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("in use"), "{}", String::from_utf8_lossy(&o.stderr));
    drop(db);
    assert_eq!(stdout(&latchkey(tmp.path(), &["get", "k"])), "v\n");
}

#[test]
fn serve_refuses_a_public_address_without_a_password() {
    let tmp = tempfile::tempdir().unwrap();
    let o = latchkey(tmp.path(), &["serve", "--bind", "0.0.0.0", "--port", "0"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("without a password") && err.contains("--requirepass"), "{err}");
}

#[test]
fn serve_reports_a_bad_config_file_line() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("latchkey.conf");
    std::fs::write(&conf, "port 6390\nmaxclients lots\n").unwrap();
    let o = latchkey(tmp.path(), &["serve", "--config", conf.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("latchkey.conf:2") && err.contains("maxclients"), "{err}");
}

#[test]
fn check_names_damage_in_an_lsm_table() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    for i in 0..200 {
        assert!(latchkey(&dir, &["put", &format!("key{i:03}"), "some value"]).status.success());
    }
    assert!(latchkey(&dir, &["compact"]).status.success());
    let ok = latchkey(&dir, &["check", "--quiet"]);
    assert!(ok.status.success(), "{}", stdout(&ok));
    assert_eq!(stdout(&latchkey(&dir, &["get", "key150"])), "some value\n");
    let table = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "sst"))
        .expect("an lsm directory has tables after compact");
    let mut bytes = std::fs::read(&table).unwrap();
    bytes[100] ^= 0x10;
    std::fs::write(&table, bytes).unwrap();
    let bad = latchkey(&dir, &["check", "--quiet"]);
    assert_eq!(bad.status.code(), Some(1));
    let out = stdout(&bad);
    assert!(out.contains(table.file_name().unwrap().to_str().unwrap()) && out.contains("offset"), "{out}");
}

/// The short version of the crash loop (the long one is in docs/RELIABILITY.md).
#[test]
fn crash_loop_loses_nothing_acknowledged_on_every_engine() {
    // (engine, writers, server, kills): 4 writers share fsyncs (group
    // commit) when the kill lands.
    for (engine, writers, server, cycles) in [
        ("hash", "1", false, "10"),
        ("lsm", "1", false, "10"),
        ("btree", "1", false, "10"),
        ("hash", "4", false, "6"),
        ("lsm", "4", false, "6"),
        ("btree", "4", false, "6"),
        ("hash", "1", true, "5"),
        ("lsm", "1", true, "5"),
        ("btree", "1", true, "5"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("torture");
        let mut args =
            vec!["--dir", dir.to_str().unwrap(), "torture", "--engine", engine, "--cycles", cycles, "--max-ms", "200"];
        if server {
            args.push("--server");
        } else {
            args.extend(["--writers", writers]);
        }
        let o = Command::new(env!("CARGO_BIN_EXE_latchkey")).args(&args).output().unwrap();
        let out = stdout(&o);
        assert!(o.status.success(), "{engine} writers={writers} server={server}: {out}");
        assert!(out.contains(&format!("{cycles} kills")) && out.contains("0 lost, 0 partial, no damage"), "{out}");
        let acked: u64 =
            out.split(" kills, ").nth(1).and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0);
        assert!(acked > 0, "{engine} writers={writers}: no batch was acknowledged: {out}");
    }
}
