//! Malformed, oversized, slow and abruptly closed connections: each gets a
//! clear error (or is simply dropped), memory stays bounded, and a
//! well-behaved client on another connection never notices.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::cmd;

fn raw(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Sends `bytes` and returns everything the server says until it closes.
fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = raw(addr);
    s.write_all(bytes).unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    statm.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
}

#[test]
fn malformed_frames_get_an_error_and_the_connection_closes() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path());
    let mut good = server.connect();
    let _: () = cmd("SET").arg("k").arg("v").query(&mut good).unwrap();
    let cases: &[(&[u8], &str)] = &[
        (b"*1\r\n$2147483648\r\n", "invalid bulk length"),
        (b"*-5\r\n*1\r\n$4\r\nPING\r\n", ""),
        (b"*1\r\n$-7\r\n", "invalid bulk length"),
        (b"*99999999999\r\n", "invalid multibulk length"),
        (b"*2\r\n$3\r\nGET\r\n:12\r\n", "expected '$'"),
        (b"*1\r\n$3\r\nGETX\r\n", "not terminated by CRLF"),
        (b"*abc\r\n", "invalid multibulk length"),
    ];
    for (input, want) in cases {
        let reply = exchange(server.addr, input);
        if want.is_empty() {
            // A negative count is an empty command (as in Redis); the PING after it is answered.
            assert!(reply.is_empty() || reply.starts_with("+PONG"), "{reply:?}");
            continue;
        }
        assert!(
            reply.starts_with("-ERR Protocol error") && reply.contains(want),
            "{:?} -> {reply:?}",
            input.escape_ascii()
        );
    }
    let garbage: Vec<u8> = (0..200_000u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    let reply = exchange(server.addr, &garbage);
    assert!(reply.is_empty() || reply.contains("-ERR"), "{reply:?}");
    assert_eq!(cmd("GET").arg("k").query::<String>(&mut good).unwrap(), "v", "the other client noticed nothing");
}

#[test]
fn a_thousand_huge_bulk_lengths_keep_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path());
    let mut good = server.connect();
    let before = rss_bytes();
    let mut conns = Vec::new();
    for _ in 0..1000 {
        let mut s = raw(server.addr);
        s.write_all(b"*2\r\n$3\r\nSET\r\n$2147483648\r\n").unwrap();
        conns.push(s);
    }
    for s in &mut conns {
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        assert!(reply.contains("invalid bulk length"), "{reply:?}");
    }
    let grown = rss_bytes().saturating_sub(before);
    assert!(grown < 64 << 20, "memory grew by {grown} bytes for 1000 bad connections");
    assert_eq!(cmd("PING").query::<String>(&mut good).unwrap(), "PONG");
}

#[test]
fn a_client_sending_one_byte_at_a_time_and_abrupt_closes_do_not_disturb_others() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start(dir.path());
    // Baseline latency of a well-behaved client.
    let mut good = server.connect();
    let timed = |con: &mut redis::Connection| {
        let t = Instant::now();
        for i in 0..300 {
            let _: () = cmd("SET").arg(format!("g{i}")).arg(i).query(con).unwrap();
        }
        t.elapsed()
    };
    let baseline = timed(&mut good);
    let addr = server.addr;
    let slow = std::thread::spawn(move || {
        let mut s = raw(addr);
        for &b in b"*3\r\n$3\r\nSET\r\n$4\r\nslow\r\n$5\r\nvalue\r\n".iter() {
            s.write_all(&[b]).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut reply = [0u8; 5];
        s.read_exact(&mut reply).unwrap();
        reply
    });
    let closers = std::thread::spawn(move || {
        for i in 0..200 {
            let mut s = raw(addr);
            let half: &[u8] = if i % 2 == 0 { b"*3\r\n$3\r\nSET\r\n$1\r\nk" } else { b"GET k" };
            let _ = s.write_all(half);
            drop(s); // gone mid-command
        }
    });
    let during = timed(&mut good);
    closers.join().unwrap();
    assert_eq!(&slow.join().unwrap(), b"+OK\r\n");
    assert_eq!(cmd("GET").arg("slow").query::<String>(&mut good).unwrap(), "value");
    // Generous: the machine is shared, but the other clients must not stall it.
    assert!(during < baseline * 2 + Duration::from_millis(500), "baseline {baseline:?}, during {during:?}");
}
