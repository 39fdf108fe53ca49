//! Every command of the server, through a real Redis client, in RESP2 and
//! RESP3, with the error replies clients parse.

mod common;

use std::time::Duration;

use common::cmd;
use redis::{RedisResult, Value};

fn err_text<T: std::fmt::Debug>(r: RedisResult<T>) -> String {
    let e = r.expect_err("expected an error reply");
    format!("{} {}", e.code().unwrap_or(""), e.detail().unwrap_or(""))
}

fn exercise_strings(con: &mut redis::Connection) {
    let ok: String = cmd("SET").arg("k").arg("v").query(con).unwrap();
    assert_eq!(ok, "OK");
    assert_eq!(cmd("GET").arg("k").query::<Option<String>>(con).unwrap().as_deref(), Some("v"));
    assert_eq!(cmd("GET").arg("missing").query::<Option<String>>(con).unwrap(), None);
    assert_eq!(cmd("SET").arg("k").arg("w").arg("NX").query::<Option<String>>(con).unwrap(), None);
    assert_eq!(
        cmd("SET").arg("k").arg("w").arg("XX").arg("GET").query::<Option<String>>(con).unwrap().as_deref(),
        Some("v")
    );
    assert_eq!(cmd("SET").arg("new").arg("x").arg("XX").query::<Option<String>>(con).unwrap(), None);
    assert_eq!(cmd("SETNX").arg("k").arg("z").query::<i64>(con).unwrap(), 0);
    assert_eq!(cmd("SETNX").arg("n").arg("z").query::<i64>(con).unwrap(), 1);
    assert_eq!(cmd("GETSET").arg("n").arg("y").query::<String>(con).unwrap(), "z");
    assert_eq!(cmd("GETDEL").arg("n").query::<String>(con).unwrap(), "y");
    assert_eq!(cmd("EXISTS").arg("n").arg("k").arg("k").query::<i64>(con).unwrap(), 2);
    let _: () = cmd("MSET").arg("a").arg("1").arg("b").arg("2").query(con).unwrap();
    let got: Vec<Option<String>> = cmd("MGET").arg("a").arg("nope").arg("b").query(con).unwrap();
    assert_eq!(got, vec![Some("1".into()), None, Some("2".into())]);
    assert_eq!(cmd("INCR").arg("a").query::<i64>(con).unwrap(), 2);
    assert_eq!(cmd("INCRBY").arg("a").arg(40).query::<i64>(con).unwrap(), 42);
    assert_eq!(cmd("DECR").arg("a").query::<i64>(con).unwrap(), 41);
    assert_eq!(cmd("DECRBY").arg("a").arg(41).query::<i64>(con).unwrap(), 0);
    assert_eq!(cmd("INCR").arg("fresh").query::<i64>(con).unwrap(), 1);
    assert_eq!(cmd("APPEND").arg("b").arg("34").query::<i64>(con).unwrap(), 3);
    assert_eq!(cmd("STRLEN").arg("b").query::<i64>(con).unwrap(), 3);
    assert_eq!(cmd("STRLEN").arg("nope").query::<i64>(con).unwrap(), 0);
    assert!(err_text(cmd("INCR").arg("k").query::<i64>(con)).contains("value is not an integer or out of range"));
    let _: () = cmd("SET").arg("max").arg(i64::MAX).query(con).unwrap();
    assert!(err_text(cmd("INCR").arg("max").query::<i64>(con)).contains("increment or decrement would overflow"));
    assert_eq!(cmd("DEL").arg("a").arg("b").arg("nope").query::<i64>(con).unwrap(), 2);
    assert_eq!(cmd("UNLINK").arg("fresh").query::<i64>(con).unwrap(), 1);
    assert_eq!(cmd("TYPE").arg("k").query::<String>(con).unwrap(), "string");
    assert_eq!(cmd("TYPE").arg("nope").query::<String>(con).unwrap(), "none");
}

fn exercise_expiry(con: &mut redis::Connection) {
    let _: () = cmd("SET").arg("e").arg("1").arg("EX").arg(100).query(con).unwrap();
    let ttl: i64 = cmd("TTL").arg("e").query(con).unwrap();
    assert!((99..=100).contains(&ttl), "{ttl}");
    let _: () = cmd("SET").arg("e").arg("2").arg("KEEPTTL").query(con).unwrap();
    assert!(cmd("PTTL").arg("e").query::<i64>(con).unwrap() > 90_000, "KEEPTTL lost the TTL");
    let _: () = cmd("SET").arg("e").arg("3").query(con).unwrap();
    assert_eq!(cmd("TTL").arg("e").query::<i64>(con).unwrap(), -1, "a plain SET clears the TTL");
    assert_eq!(cmd("TTL").arg("nope").query::<i64>(con).unwrap(), -2);
    assert_eq!(cmd("EXPIRE").arg("e").arg(50).query::<i64>(con).unwrap(), 1);
    assert_eq!(cmd("EXPIRE").arg("e").arg(10).arg("GT").query::<i64>(con).unwrap(), 0);
    assert_eq!(cmd("PERSIST").arg("e").query::<i64>(con).unwrap(), 1);
    assert_eq!(cmd("PERSIST").arg("e").query::<i64>(con).unwrap(), 0);
    assert_eq!(cmd("PEXPIRE").arg("e").arg(150).query::<i64>(con).unwrap(), 1);
    let _: () = cmd("SETEX").arg("s").arg(100).arg("v").query(con).unwrap();
    let _: () = cmd("PSETEX").arg("p").arg(100_000).arg("v").query(con).unwrap();
    assert!(cmd("PTTL").arg("p").query::<i64>(con).unwrap() > 99_000);
    let at = latchkey::now_ms() / 1000 + 100;
    assert_eq!(cmd("EXPIREAT").arg("s").arg(at).query::<i64>(con).unwrap(), 1);
    let _: () = cmd("SET").arg("px").arg("v").arg("PXAT").arg(latchkey::now_ms() + 150).query(con).unwrap();
    let _: () = cmd("SET").arg("exat").arg("v").arg("EXAT").arg(latchkey::now_ms() / 1000 + 100).query(con).unwrap();
    assert!((98..=100).contains(&cmd("TTL").arg("exat").query::<i64>(con).unwrap()), "EXAT");
    assert!(err_text(cmd("SET").arg("x").arg("v").arg("EX").arg(0).query::<()>(con))
        .contains("invalid expire time in 'set' command"));
    std::thread::sleep(Duration::from_millis(250));
    assert_eq!(cmd("GET").arg("e").query::<Option<String>>(con).unwrap(), None, "expired on time");
    assert_eq!(cmd("GET").arg("px").query::<Option<String>>(con).unwrap(), None);
    assert_eq!(cmd("EXISTS").arg("e").query::<i64>(con).unwrap(), 0);
    assert_eq!(cmd("EXPIRE").arg("s").arg(-1).query::<i64>(con).unwrap(), 1);
    assert_eq!(cmd("GET").arg("s").query::<Option<String>>(con).unwrap(), None, "a negative EXPIRE deletes");
}

fn exercise_keyspace(con: &mut redis::Connection) {
    let _: () = cmd("FLUSHDB").query(con).unwrap();
    assert_eq!(cmd("DBSIZE").query::<i64>(con).unwrap(), 0);
    for i in 0..25 {
        let _: () = cmd("SET").arg(format!("user:{i}")).arg(i).query(con).unwrap();
    }
    let _: () = cmd("SET").arg("other").arg("x").query(con).unwrap();
    assert_eq!(cmd("DBSIZE").query::<i64>(con).unwrap(), 26);
    let mut keys: Vec<String> = cmd("KEYS").arg("user:1*").query(con).unwrap();
    keys.sort();
    assert_eq!(
        keys,
        [
            "user:1", "user:10", "user:11", "user:12", "user:13", "user:14", "user:15", "user:16", "user:17",
            "user:18", "user:19"
        ]
    );
    let mut seen = Vec::new();
    let mut cursor = 0u64;
    for _ in 0..100 {
        let (next, page): (u64, Vec<String>) =
            cmd("SCAN").arg(cursor).arg("MATCH").arg("user:*").arg("COUNT").arg(7).query(con).unwrap();
        seen.extend(page);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 25);
    let _: () = cmd("FLUSHALL").query(con).unwrap();
    assert_eq!(cmd("DBSIZE").query::<i64>(con).unwrap(), 0);
}

fn exercise_server(con: &mut redis::Connection) {
    assert_eq!(cmd("PING").query::<String>(con).unwrap(), "PONG");
    assert_eq!(cmd("PING").arg("hi").query::<String>(con).unwrap(), "hi");
    assert_eq!(cmd("ECHO").arg("x y").query::<String>(con).unwrap(), "x y");
    let _: () = cmd("SELECT").arg(0).query(con).unwrap();
    assert!(err_text(cmd("SELECT").arg(1).query::<()>(con)).contains("DB index is out of range"));
    let _: () = cmd("CLIENT").arg("SETNAME").arg("tester").query(con).unwrap();
    assert_eq!(cmd("CLIENT").arg("GETNAME").query::<String>(con).unwrap(), "tester");
    assert!(cmd("CLIENT").arg("ID").query::<i64>(con).unwrap() > 0);
    assert!(cmd("COMMAND").arg("COUNT").query::<i64>(con).unwrap() >= 45);
    let docs: Value = cmd("COMMAND").arg("DOCS").query(con).unwrap();
    assert!(matches!(docs, Value::Map(_) | Value::Array(_)), "{docs:?}");
    let info: Value = cmd("COMMAND").arg("INFO").arg("get").query(con).unwrap();
    assert!(format!("{info:?}").contains("get"), "{info:?}");
    let info: String = cmd("INFO").query(con).unwrap();
    for section in ["# Server", "# Clients", "# Memory", "# Persistence", "# Stats", "# Keyspace"] {
        assert!(info.contains(section), "INFO lacks {section}");
    }
    assert!(info.contains("connected_clients:1"), "{info}");
    let persistence: String = cmd("INFO").arg("persistence").query(con).unwrap();
    assert!(persistence.contains("engine:") && !persistence.contains("# Server"));
    let cfg: std::collections::HashMap<String, String> = cmd("CONFIG").arg("GET").arg("appendonly").query(con).unwrap();
    assert_eq!(cfg.get("appendonly").map(String::as_str), Some("yes"));
    assert!(err_text(cmd("GET").query::<()>(con)).contains("wrong number of arguments for 'get' command"));
    assert!(err_text(cmd("SET").arg("k").arg("v").arg("BOGUS").query::<()>(con)).contains("syntax error"));
    assert!(err_text(cmd("NOSUCH").arg("a").query::<()>(con)).contains("unknown command 'nosuch'"));
}

#[test]
fn every_command_over_resp2_on_every_engine() {
    for &engine in latchkey::Engine::all() {
        let dir = tempfile::tempdir().unwrap();
        let server = common::start_with(latchkey_server::Config {
            dir: dir.path().to_owned(),
            port: 0,
            engine,
            ..Default::default()
        });
        let mut con = server.connect();
        exercise_strings(&mut con);
        exercise_expiry(&mut con);
        exercise_keyspace(&mut con);
        exercise_server(&mut con);
        let info: String = cmd("INFO").arg("persistence").query(&mut con).unwrap();
        assert!(info.contains(&format!("engine:{engine}")), "{info}");
    }
}

#[test]
fn every_command_over_resp3() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path());
    let mut con = redis::Client::open(server.resp3_url()).unwrap().get_connection().unwrap();
    let hello: Value = cmd("HELLO").arg(3).query(&mut con).unwrap();
    let Value::Map(fields) = hello else { panic!("HELLO 3 should answer a map, got {hello:?}") };
    assert!(fields.iter().any(|(k, v)| *k == Value::BulkString(b"proto".to_vec()) && *v == Value::Int(3)));
    assert_eq!(cmd("GET").arg("missing").query::<Value>(&mut con).unwrap(), Value::Nil);
    exercise_strings(&mut con);
    exercise_expiry(&mut con);
    exercise_keyspace(&mut con);
    exercise_server(&mut con);
    let info: Value = cmd("LOCK.INFO").arg("none").query(&mut con).unwrap();
    assert!(matches!(info, Value::Map(_)), "{info:?}");
}

#[test]
fn pipelined_batches_answer_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path());
    let mut con = server.connect();
    let mut pipe = redis::pipe();
    for i in 0..2000 {
        pipe.cmd("SET").arg(format!("k{i}")).arg(i).ignore();
        pipe.cmd("INCR").arg(format!("k{i}"));
    }
    let got: Vec<i64> = pipe.query(&mut con).unwrap();
    assert_eq!(got, (1..=2000).collect::<Vec<i64>>());
    let mut pipe = redis::pipe();
    for i in 0..2000 {
        pipe.cmd("GET").arg(format!("k{i}"));
    }
    let got: Vec<i64> = pipe.query(&mut con).unwrap();
    assert_eq!(got, (1..=2000).collect::<Vec<i64>>());
}

#[test]
fn data_and_ttls_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path());
    let mut con = server.connect();
    let _: () = cmd("SET").arg("kept").arg("v").query(&mut con).unwrap();
    let _: () = cmd("SET").arg("ttl").arg("v").arg("PX").arg(1500).query(&mut con).unwrap();
    let _: () = cmd("SET").arg("long").arg("v").arg("EX").arg(1000).query(&mut con).unwrap();
    drop(con);
    server.stop();
    let server = common::start(dir.path());
    let mut con = server.connect();
    assert_eq!(cmd("GET").arg("kept").query::<String>(&mut con).unwrap(), "v");
    let pttl: i64 = cmd("PTTL").arg("ttl").query(&mut con).unwrap();
    assert!(pttl > 0 && pttl <= 1500, "TTL lost across restart: {pttl}");
    assert!(cmd("TTL").arg("long").query::<i64>(&mut con).unwrap() > 990);
    std::thread::sleep(Duration::from_millis(pttl as u64 + 50));
    assert_eq!(cmd("GET").arg("ttl").query::<Option<String>>(&mut con).unwrap(), None);
}

#[test]
fn a_password_is_required_before_any_command() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start_with(latchkey_server::Config {
        dir: dir.path().to_owned(),
        port: 0,
        requirepass: Some("s3cret".into()),
        ..Default::default()
    });
    let mut con = server.connect();
    assert!(err_text(cmd("GET").arg("k").query::<()>(&mut con)).contains("NOAUTH"));
    assert!(err_text(cmd("AUTH").arg("wrong").query::<()>(&mut con)).contains("WRONGPASS"));
    let _: () = cmd("AUTH").arg("s3cret").query(&mut con).unwrap();
    let _: () = cmd("SET").arg("k").arg("v").query(&mut con).unwrap();
    let with_url = format!("redis://:s3cret@{}/", server.addr);
    let mut con = redis::Client::open(with_url).unwrap().get_connection().unwrap();
    assert_eq!(cmd("GET").arg("k").query::<String>(&mut con).unwrap(), "v");
}

#[test]
fn clients_past_maxclients_are_refused_politely() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start_with(latchkey_server::Config {
        dir: dir.path().to_owned(),
        port: 0,
        max_clients: 2,
        ..Default::default()
    });
    let mut a = server.connect();
    let mut b = server.connect();
    assert_eq!(cmd("PING").query::<String>(&mut a).unwrap(), "PONG");
    assert_eq!(cmd("PING").query::<String>(&mut b).unwrap(), "PONG");
    use std::io::{Read, Write};
    let mut third = std::net::TcpStream::connect(server.addr).unwrap();
    third.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = third.write_all(b"PING\r\n");
    let mut reply = String::new();
    let _ = third.read_to_string(&mut reply);
    assert_eq!(reply, "-ERR max number of clients reached\r\n");
    drop(a);
    std::thread::sleep(Duration::from_millis(100));
    let mut c = server.connect();
    assert_eq!(cmd("PING").query::<String>(&mut c).unwrap(), "PONG");
}

#[test]
fn quit_answers_ok_and_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path());
    let mut con = server.connect();
    assert_eq!(cmd("QUIT").query::<String>(&mut con).unwrap(), "OK");
    assert!(cmd("PING").query::<String>(&mut con).is_err(), "the connection should be closed after QUIT");
    let mut other = server.connect();
    assert_eq!(cmd("PING").query::<String>(&mut other).unwrap(), "PONG");
}
