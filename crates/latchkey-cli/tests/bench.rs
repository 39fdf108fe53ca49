//! Short versions of the benchmark harness (issue 6): every workload over
//! every latchkey engine in processes of their own, the lock benchmark
//! against `latchkey serve`, and the server benchmark beside Redis when
//! redis-server and redis-benchmark are installed (`.ci/run` installs them).

use std::path::Path;
use std::process::Command;

fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn bench_workloads_measures_every_workload_of_every_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let (out_json, charts) = (tmp.path().join("r.json"), tmp.path().join("charts"));
    let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["bench", "workloads", "--n", "3000", "--mixed-secs", "1", "--rounds", "2", "--json"])
        .arg(&out_json)
        .arg("--charts")
        .arg(&charts)
        .arg("--work-dir")
        .arg(tmp.path().join("work"))
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // The repeatable workloads ran twice each, the others once; the
    // counter's rounds came after both rounds of the readers, not between.
    let at = |w: &str| -> Vec<usize> {
        let line = format!("latchkey-lsm {w:<18}");
        (stderr.lines().enumerate()).filter(|(_, l)| l.trim_start().starts_with(&line)).map(|(i, _)| i).collect()
    };
    for w in ["reopen", "readrandom", "overwrite-counter", "sync-writes", "sync-writes-8t"] {
        let rounds = at(w);
        let last = stderr.lines().nth(rounds[rounds.len() - 1]).unwrap_or_default();
        assert!(rounds.len() == 2 && last.ends_with("(round 2/2)"), "{w}: {rounds:?}\n{stderr}");
    }
    assert!(at("scan")[1] < at("overwrite-counter")[0], "{stderr}");
    let fills = stderr.lines().filter(|l| l.trim_start().starts_with("latchkey-lsm fillrandom ")).count();
    assert_eq!(fills, 1, "{stderr}");
    let doc = json(&out_json);
    for engine in ["latchkey-hash", "latchkey-lsm", "latchkey-btree"] {
        let e = &doc["engines"][engine];
        for w in latchkey_bench::workloads::WORKLOADS {
            let v = e[w]["value"].as_f64().unwrap_or_else(|| panic!("{engine} {w} missing: {e}"));
            assert!(v.is_finite() && v > 0.0, "{engine} {w} = {v}");
            let p = &e[format!("{w} process")];
            assert!(p["cpu_secs"].as_f64().is_some_and(|c| c >= 0.0), "{engine} {w}: {p}");
            assert!(p["peak_rss_mib"].as_f64().is_some_and(|r| r > 1.0), "{engine} {w}: {p}");
        }
        for q in ["readrandom p50", "readrandom p99", "sync-writes p50", "sync-writes p99"] {
            assert!(e[q]["value"].as_f64().is_some_and(|v| v > 0.0), "{engine} {q}");
        }
        // 3,000 keys, each overwritten once: between the live data and 10x it.
        let space = e["space"]["value"].as_f64().unwrap();
        assert!((1.0..10.0).contains(&space), "{engine} space {space}");
    }
    for w in ["fillrandom", "readrandom-p99", "space"] {
        let svg = std::fs::read_to_string(charts.join(format!("{w}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("latchkey-btree"), "{w}.svg");
    }
    assert!(stdout.contains("peak RSS"), "{stdout}");
}

#[test]
fn bench_workloads_refuses_other_stores() {
    let out = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["bench", "workloads", "--engines", "redb", "--n", "10"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not one of latchkey's engines"));
}

#[test]
fn the_lock_benchmark_measures_latchkey() {
    let tmp = tempfile::tempdir().unwrap();
    let out_json = tmp.path().join("locks.json");
    let args = latchkey_bench::locks::LockArgs {
        cycles: 50,
        clients: 4,
        secs: 1,
        systems: vec!["latchkey".into()],
        engine: "btree".into(),
        common: latchkey_bench::procs::Common {
            latchkey: Some(env!("CARGO_BIN_EXE_latchkey").into()),
            work_dir: Some(tmp.path().join("work")),
            json: Some(out_json.clone()),
        },
    };
    latchkey_bench::locks::run(&args).unwrap();
    let f = &json(&out_json)["systems"]["latchkey-btree"];
    let counts: Vec<u64> =
        f["acquisitions_per_client"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect();
    assert_eq!(counts.len(), 4);
    assert!(counts.iter().all(|&c| c > 0), "every client got the lock: {counts:?}");
    let fair = f["fairness_jain"].as_f64().unwrap();
    assert!(fair > 0.25 && fair <= 1.0 + 1e-9, "{fair}");
    for k in ["uncontended_p50_ms", "uncontended_p99_ms", "wait_p50_ms", "handoff_p50_ms"] {
        assert!(f[k].as_f64().is_some_and(|v| v > 0.0 && v < 10_000.0), "{k}: {f}");
    }
    assert!(f["contended_per_sec"].as_f64().unwrap() > 0.0);
}

#[test]
fn the_server_benchmark_runs_beside_redis() {
    let on_path =
        |p: &str| std::env::var_os("PATH").is_some_and(|ps| std::env::split_paths(&ps).any(|d| d.join(p).is_file()));
    if !on_path("redis-server") || !on_path("redis-benchmark") {
        eprintln!("SKIPPED: redis-server and redis-benchmark are not installed (apt-get install redis-server redis-tools; .ci/run does)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out_json = tmp.path().join("server.json");
    let args = latchkey_bench::server::ServerArgs {
        requests: 2000,
        clients: 10,
        engines: vec!["hash".into(), "btree".into()],
        pipelines: vec![1, 16],
        threads: 1,
        rounds: 3,
        common: latchkey_bench::procs::Common {
            latchkey: Some(env!("CARGO_BIN_EXE_latchkey").into()),
            work_dir: Some(tmp.path().join("work")),
            json: Some(out_json.clone()),
        },
    };
    latchkey_bench::server::run(&args).unwrap();
    let doc = json(&out_json);
    for server in ["redis", "latchkey-hash", "latchkey-btree"] {
        for t in ["SET -P1", "GET -P1", "INCR -P1", "SET -P16", "GET -P16", "INCR -P16"] {
            let rps = doc["servers"][server][format!("{t} rps")].as_f64();
            assert!(rps.is_some_and(|r| r > 0.0), "{server} {t}: {}", doc["servers"][server]);
            // The figure is the median of the three rounds'.
            let mut each: Vec<f64> = (doc["servers"][server]["rounds"].as_array().unwrap().iter())
                .map(|r| r[format!("{t} rps")].as_f64().unwrap())
                .collect();
            assert_eq!(each.len(), 3, "{server} {t}");
            each.sort_by(f64::total_cmp);
            assert_eq!(rps, Some(each[1]), "{server} {t}: {each:?}");
        }
        // redis-benchmark's own CPU and wall time per pipeline depth: some
        // CPU, no more than its one thread can use over the wall time.
        for p in [1, 16] {
            let cpu = doc["servers"][server][format!("client -P{p} cpu secs")].as_f64().unwrap();
            let wall = doc["servers"][server][format!("client -P{p} wall secs")].as_f64().unwrap();
            assert!(cpu > 0.0 && wall > 0.0 && cpu <= wall * 1.05 + 0.05, "{server} -P{p}: {cpu} s CPU in {wall} s");
        }
    }
}
