//! Pipelines: the writes of one connection turn are staged and written to
//! the store together (`cmd::Tx`). Every reply must still be what running
//! the commands one by one gives, concurrent read-modify-writes must not
//! lose updates, and the writes must survive a restart.

mod common;

use std::collections::HashMap;

use common::cmd;
use proptest::prelude::*;
use redis::Value;

/// One command over a few counters (`c0`..`c2`, integer values only) and a
/// few strings (`s0`..`s2`), so no command meets a wrong-type value.
#[derive(Debug, Clone)]
enum Op {
    IncrBy(u8, i64),
    SetCounter(u8, i64),
    GetCounter(u8),
    DelCounter(u8),
    Set(u8, String),
    SetNx(u8, String),
    SetXxGet(u8, String),
    Append(u8, String),
    GetDel(u8),
    GetSet(u8, String),
    Get(u8),
    Strlen(u8),
    MSet(u8, String, u8, String),
    Exists(u8, u8),
}

fn text() -> impl Strategy<Value = String> {
    "[a-z]{0,6}"
}

fn op() -> impl Strategy<Value = Op> {
    let k = || 0u8..3;
    prop_oneof![
        4 => (k(), -3i64..5).prop_map(|(k, n)| Op::IncrBy(k, n)),
        1 => (k(), -100i64..100).prop_map(|(k, n)| Op::SetCounter(k, n)),
        2 => k().prop_map(Op::GetCounter),
        1 => k().prop_map(Op::DelCounter),
        2 => (k(), text()).prop_map(|(k, v)| Op::Set(k, v)),
        1 => (k(), text()).prop_map(|(k, v)| Op::SetNx(k, v)),
        1 => (k(), text()).prop_map(|(k, v)| Op::SetXxGet(k, v)),
        2 => (k(), text()).prop_map(|(k, v)| Op::Append(k, v)),
        1 => k().prop_map(Op::GetDel),
        1 => (k(), text()).prop_map(|(k, v)| Op::GetSet(k, v)),
        2 => k().prop_map(Op::Get),
        1 => k().prop_map(Op::Strlen),
        1 => (k(), text(), k(), text()).prop_map(|(a, x, b, y)| Op::MSet(a, x, b, y)),
        1 => (k(), k()).prop_map(|(a, b)| Op::Exists(a, b)),
    ]
}

fn c(k: u8) -> String {
    format!("c{k}")
}

fn s(k: u8) -> String {
    format!("s{k}")
}

fn bulk(v: Option<&Vec<u8>>) -> Value {
    v.map_or(Value::Nil, |v| Value::BulkString(v.clone()))
}

/// Adds `op` to `pipe` and returns the reply the model expects.
fn step(op: &Op, model: &mut HashMap<String, Vec<u8>>, pipe: &mut redis::Pipeline) -> Value {
    match op {
        Op::IncrBy(k, n) => {
            pipe.cmd("INCRBY").arg(c(*k)).arg(*n);
            let old: i64 = model.get(&c(*k)).map_or(0, |v| String::from_utf8_lossy(v).parse().unwrap());
            model.insert(c(*k), (old + n).to_string().into_bytes());
            Value::Int(old + n)
        }
        Op::SetCounter(k, n) => {
            pipe.cmd("SET").arg(c(*k)).arg(*n);
            model.insert(c(*k), n.to_string().into_bytes());
            Value::Okay
        }
        Op::GetCounter(k) => {
            pipe.cmd("GET").arg(c(*k));
            bulk(model.get(&c(*k)))
        }
        Op::DelCounter(k) => {
            pipe.cmd("DEL").arg(c(*k));
            Value::Int(i64::from(model.remove(&c(*k)).is_some()))
        }
        Op::Set(k, v) => {
            pipe.cmd("SET").arg(s(*k)).arg(v);
            model.insert(s(*k), v.clone().into_bytes());
            Value::Okay
        }
        Op::SetNx(k, v) => {
            pipe.cmd("SETNX").arg(s(*k)).arg(v);
            if model.contains_key(&s(*k)) {
                return Value::Int(0);
            }
            model.insert(s(*k), v.clone().into_bytes());
            Value::Int(1)
        }
        Op::SetXxGet(k, v) => {
            pipe.cmd("SET").arg(s(*k)).arg(v).arg("XX").arg("GET");
            let old = bulk(model.get(&s(*k)));
            if model.contains_key(&s(*k)) {
                model.insert(s(*k), v.clone().into_bytes());
            }
            old
        }
        Op::Append(k, v) => {
            pipe.cmd("APPEND").arg(s(*k)).arg(v);
            let e = model.entry(s(*k)).or_default();
            e.extend_from_slice(v.as_bytes());
            Value::Int(e.len() as i64)
        }
        Op::GetDel(k) => {
            pipe.cmd("GETDEL").arg(s(*k));
            bulk(model.remove(&s(*k)).as_ref())
        }
        Op::GetSet(k, v) => {
            pipe.cmd("GETSET").arg(s(*k)).arg(v);
            bulk(model.insert(s(*k), v.clone().into_bytes()).as_ref())
        }
        Op::Get(k) => {
            pipe.cmd("GET").arg(s(*k));
            bulk(model.get(&s(*k)))
        }
        Op::Strlen(k) => {
            pipe.cmd("STRLEN").arg(s(*k));
            Value::Int(model.get(&s(*k)).map_or(0, |v| v.len() as i64))
        }
        Op::MSet(a, x, b, y) => {
            pipe.cmd("MSET").arg(s(*a)).arg(x).arg(s(*b)).arg(y);
            model.insert(s(*a), x.clone().into_bytes());
            model.insert(s(*b), y.clone().into_bytes());
            Value::Okay
        }
        Op::Exists(a, b) => {
            pipe.cmd("EXISTS").arg(s(*a)).arg(c(*b));
            Value::Int(i64::from(model.contains_key(&s(*a))) + i64::from(model.contains_key(&c(*b))))
        }
    }
}

fn snapshot(con: &mut redis::Connection) -> HashMap<String, Vec<u8>> {
    let mut got = HashMap::new();
    for k in 0..3 {
        for key in [c(k), s(k)] {
            if let Some(v) = cmd("GET").arg(&key).query::<Option<Vec<u8>>>(con).unwrap() {
                got.insert(key, v);
            }
        }
    }
    got
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random pipelines answer exactly as the commands run one by one
    /// would, and what they wrote is there after a restart. Over the
    /// `lsm` and `hash` engines (`hash` acts on the prefetch of a
    /// pipeline's keys); pipelines longer than the 32 commands parsed
    /// ahead at a time included.
    #[test]
    fn pipelines_answer_as_commands_run_one_by_one(
        pipelines in proptest::collection::vec(proptest::collection::vec(op(), 1..80), 1..6),
        hash in proptest::bool::ANY,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let engine = if hash { latchkey::Engine::Hash } else { latchkey::Engine::Lsm };
        let server = common::start_engine(dir.path(), engine);
        let mut con = server.connect();
        let mut model = HashMap::new();
        for ops in &pipelines {
            let mut pipe = redis::pipe();
            let want: Vec<Value> = ops.iter().map(|op| step(op, &mut model, &mut pipe)).collect();
            let got: Vec<Value> = pipe.query(&mut con).unwrap();
            prop_assert_eq!(got, want, "pipeline {:?}", ops);
        }
        drop(con);
        server.stop();
        let server = common::start_engine(dir.path(), engine);
        let mut con = server.connect();
        prop_assert_eq!(snapshot(&mut con), model);
    }
}

/// A pipeline of large values (more bytes than the server parses ahead
/// of running them) answers in order: each GET sees the SET before it.
#[test]
fn a_pipeline_larger_than_the_parse_ahead_window_answers_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start_engine(dir.path(), latchkey::Engine::Hash);
    let mut con = server.connect();
    let value = |i: usize, round: usize| vec![b'a' + ((i + round) % 26) as u8; 5_000 + i * 97];
    for round in 0..3 {
        let mut pipe = redis::pipe();
        for i in 0..60 {
            pipe.cmd("SET").arg(format!("k{}", i % 7)).arg(value(i, round));
            pipe.cmd("GET").arg(format!("k{}", i % 7));
            pipe.cmd("INCR").arg("n");
        }
        let got: Vec<Value> = pipe.query(&mut con).unwrap();
        assert_eq!(got.len(), 180);
        for (i, reply) in got.chunks(3).enumerate() {
            assert_eq!(reply[0], Value::Okay, "round {round} SET {i}");
            assert_eq!(reply[1], Value::BulkString(value(i, round)), "round {round} GET {i}");
            assert_eq!(reply[2], Value::Int((round * 60 + i + 1) as i64), "round {round} INCR {i}");
        }
    }
}

/// Eight connections pipelining increments of one key lose none: each
/// connection sees its own replies rise, and the total is exact (`lsm`
/// and `hash`).
#[test]
fn concurrent_pipelined_increments_lose_no_update() {
    for engine in [latchkey::Engine::Lsm, latchkey::Engine::Hash] {
        concurrent_pipelined_increments(engine);
    }
}

fn concurrent_pipelined_increments(engine: latchkey::Engine) {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start_engine(dir.path(), engine);
    let (clients, rounds, depth) = (8, 40, 25);
    std::thread::scope(|scope| {
        for _ in 0..clients {
            let mut con = server.connect();
            scope.spawn(move || {
                let mut last = 0;
                for _ in 0..rounds {
                    let mut pipe = redis::pipe();
                    for _ in 0..depth {
                        pipe.cmd("INCR").arg("hits");
                        pipe.cmd("APPEND").arg("log").arg("x");
                    }
                    let got: Vec<i64> = pipe.query(&mut con).unwrap();
                    for pair in got.chunks(2) {
                        assert!(pair[0] > last, "INCR replies must rise: {} after {last}", pair[0]);
                        last = pair[0];
                    }
                }
            });
        }
    });
    let mut con = server.connect();
    let total = clients * rounds * depth;
    assert_eq!(cmd("GET").arg("hits").query::<i64>(&mut con).unwrap(), total as i64);
    assert_eq!(cmd("STRLEN").arg("log").query::<i64>(&mut con).unwrap(), total as i64);
}

fn info_field(con: &mut redis::Connection, field: &str) -> u64 {
    let info: String = cmd("INFO").query(con).unwrap();
    let line = info.lines().find_map(|l| l.strip_prefix(&format!("{field}:")));
    line.unwrap_or_else(|| panic!("INFO has no {field}: {info}")).trim().parse().unwrap()
}

/// Connections whose commands are served in the same pass share one
/// append (`write_appends` in INFO counts them): sixteen clients writing
/// one command at a time need fewer appends than writes. Every write is
/// there afterwards, also after a restart, and the shared counter, which
/// each INCR reads with the other connections' staged increments, is
/// exact.
#[test]
fn writes_of_concurrent_connections_share_appends() {
    let dir = tempfile::tempdir().unwrap();
    let (clients, rounds) = (16, 150);
    let check = |con: &mut redis::Connection| {
        for c in 0..clients {
            for r in (0..rounds).step_by(7) {
                let got: Option<String> = cmd("GET").arg(format!("k{c}:{r}")).query(con).unwrap();
                assert_eq!(got.as_deref(), Some(format!("v{r}").as_str()), "k{c}:{r}");
            }
        }
        assert_eq!(cmd("GET").arg("hits").query::<i64>(con).unwrap(), (clients * rounds) as i64);
    };
    let server = common::start(dir.path());
    let before = info_field(&mut server.connect(), "write_appends");
    std::thread::scope(|scope| {
        for c in 0..clients {
            let mut con = server.connect();
            scope.spawn(move || {
                for r in 0..rounds {
                    let _: () = cmd("SET").arg(format!("k{c}:{r}")).arg(format!("v{r}")).query(&mut con).unwrap();
                    let _: i64 = cmd("INCR").arg("hits").query(&mut con).unwrap();
                }
            });
        }
    });
    let mut con = server.connect();
    let appends = info_field(&mut con, "write_appends") - before;
    let writes = (clients * rounds * 2) as u64;
    assert!(appends > 0, "the writes were appended");
    assert!(appends * 4 < writes * 3, "{appends} appends for {writes} writes from {clients} connections");
    check(&mut con);
    drop(con);
    server.stop();
    let server = common::start(dir.path());
    check(&mut server.connect());
}
