//! RESP, the Redis protocol: parsing requests (arrays of bulk strings, or
//! inline commands) with hard limits, and encoding replies in RESP2 or RESP3.
//!
//! Parsing is two-step, as in mini-redis: [`parse`] either returns a whole
//! command and the bytes it used, says more bytes are needed (a cheap
//! `Incomplete`, nothing allocated for the partial frame), or rejects the
//! input. Lengths are checked against the limits *before* anything is
//! buffered for them, so a 2^31-byte bulk length costs nothing.

/// Limits on what a client may send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The largest bulk string (argument).
    pub max_bulk: usize,
    /// The most arguments in one command.
    pub max_args: usize,
    /// The longest inline command or header line.
    pub max_inline: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bulk: latchkey::MAX_VALUE_LEN + 1024, max_args: 1 << 20, max_inline: 64 * 1024 }
    }
}

/// Why bytes are not a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// More bytes are needed.
    Incomplete,
    /// The bytes break the protocol or a limit; the message is the reply.
    Protocol(String),
}

fn protocol(msg: impl Into<String>) -> ParseError {
    ParseError::Protocol(format!("Protocol error: {}", msg.into()))
}

/// Finds the end of the line starting at `at`, returning the line (without
/// CRLF) and the offset after it.
fn line<'a>(buf: &'a [u8], at: usize, limits: &Limits) -> Result<(&'a [u8], usize), ParseError> {
    let rest = &buf[at..];
    match rest.windows(2).position(|w| w == b"\r\n") {
        Some(end) if end > limits.max_inline => Err(protocol("too big inline request")),
        Some(end) => Ok((&rest[..end], at + end + 2)),
        None if rest.len() > limits.max_inline => Err(protocol("too big inline request")),
        None => Err(ParseError::Incomplete),
    }
}

fn number(line: &[u8], what: &str) -> Result<i64, ParseError> {
    std::str::from_utf8(line).ok().and_then(|s| s.parse().ok()).ok_or_else(|| protocol(format!("invalid {what}")))
}

/// Parses one command from the start of `buf`: its arguments and the
/// number of bytes it took. An empty inline line yields no arguments.
///
/// ```
/// use latchkey_server::resp::{parse, Limits, ParseError};
/// let limits = Limits::default();
/// let (args, used) = parse(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nrest", &limits).unwrap();
/// assert_eq!((args, used), (vec![b"GET".to_vec(), b"k".to_vec()], 20));
/// assert_eq!(parse(b"*2\r\n$3\r\nGE", &limits), Err(ParseError::Incomplete));
/// assert!(matches!(parse(b"*1\r\n$2147483648\r\n", &limits), Err(ParseError::Protocol(_))));
/// ```
pub fn parse(buf: &[u8], limits: &Limits) -> Result<(Vec<Vec<u8>>, usize), ParseError> {
    if buf.is_empty() {
        return Err(ParseError::Incomplete);
    }
    if buf[0] != b'*' {
        let (l, next) = line(buf, 0, limits)?;
        let args = l.split(|b| b.is_ascii_whitespace()).filter(|a| !a.is_empty()).map(<[u8]>::to_vec).collect();
        return Ok((args, next));
    }
    let (header, mut at) = line(buf, 0, limits)?;
    let count = number(&header[1..], "multibulk length")?;
    if count > limits.max_args as i64 {
        return Err(protocol("invalid multibulk length"));
    }
    if count <= 0 {
        return Ok((Vec::new(), at));
    }
    // First pass: check that the whole command is here, without copying.
    let mut spans = Vec::with_capacity((count as usize).min(1024));
    for _ in 0..count {
        if at >= buf.len() {
            return Err(ParseError::Incomplete);
        }
        if buf[at] != b'$' {
            return Err(protocol(format!("expected '$', got '{}'", buf[at].escape_ascii())));
        }
        let (h, start) = line(buf, at, limits)?;
        let len = number(&h[1..], "bulk length")?;
        if len < 0 || len as usize > limits.max_bulk {
            return Err(protocol("invalid bulk length"));
        }
        let end = start + len as usize;
        if buf.len() < end + 2 {
            return Err(ParseError::Incomplete);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(protocol("bulk string not terminated by CRLF"));
        }
        spans.push((start, end));
        at = end + 2;
    }
    Ok((spans.into_iter().map(|(s, e)| buf[s..e].to_vec()).collect(), at))
}

/// A reply to a client.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK`
    Simple(&'static str),
    /// `+...` built at run time.
    Status(String),
    /// `-ERR ...` (the text includes its prefix word: `ERR`, `WRONGTYPE`, ...)
    Error(String),
    /// `:42`
    Int(i64),
    /// `$3\r\nfoo`
    Bulk(Vec<u8>),
    /// Null (`$-1` in RESP2, `_` in RESP3).
    Null,
    /// `*n`
    Array(Vec<Reply>),
    /// A map (`%n` in RESP3; a flat array of pairs in RESP2).
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    /// An error reply with the generic `ERR` prefix.
    pub fn err(msg: impl std::fmt::Display) -> Reply {
        Reply::Error(format!("ERR {msg}"))
    }

    /// A bulk string from text.
    pub fn text(s: impl Into<String>) -> Reply {
        Reply::Bulk(s.into().into_bytes())
    }

    /// Appends the encoded reply to `out`, in RESP3 if `resp3`.
    pub fn encode(&self, out: &mut Vec<u8>, resp3: bool) {
        match self {
            Reply::Simple(s) => push_line(out, b'+', s.as_bytes()),
            Reply::Status(s) => push_line(out, b'+', s.as_bytes()),
            Reply::Error(s) => push_line(out, b'-', s.replace(['\r', '\n'], " ").as_bytes()),
            Reply::Int(n) => push_line(out, b':', n.to_string().as_bytes()),
            Reply::Bulk(b) => {
                push_line(out, b'$', b.len().to_string().as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Null if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::Null => out.extend_from_slice(b"$-1\r\n"),
            Reply::Array(items) => {
                push_line(out, b'*', items.len().to_string().as_bytes());
                for i in items {
                    i.encode(out, resp3);
                }
            }
            Reply::Map(pairs) => {
                if resp3 {
                    push_line(out, b'%', pairs.len().to_string().as_bytes());
                } else {
                    push_line(out, b'*', (pairs.len() * 2).to_string().as_bytes());
                }
                for (k, v) in pairs {
                    k.encode(out, resp3);
                    v.encode(out, resp3);
                }
            }
        }
    }
}

fn push_line(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    out.push(kind);
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

/// The fuzz target's body (`fuzz/fuzz_targets/resp.rs`, and the corpus
/// replay test): parse `data` as a pipeline, with the server's limits and
/// with tiny ones; every parse must consume bytes within the buffer.
#[doc(hidden)]
pub fn fuzz(data: &[u8]) {
    let tiny = Limits { max_bulk: 64, max_args: 8, max_inline: 64 };
    for limits in [Limits::default(), tiny] {
        let mut at = 0;
        while at < data.len() {
            match parse(&data[at..], &limits) {
                Ok((_, used)) => {
                    assert!(used > 0 && at + used <= data.len(), "a parse must consume bytes within the buffer");
                    at += used;
                }
                Err(ParseError::Incomplete) => break,
                Err(ParseError::Protocol(_)) => at += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn parses_arrays_and_inline_commands() {
        let l = Limits::default();
        let buf = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n";
        let (a, n) = parse(buf, &l).unwrap();
        assert_eq!(a, args(&["GET", "k"]));
        assert_eq!(parse(&buf[n..], &l).unwrap().0, args(&["PING"]));
        assert_eq!(parse(b"set  k v\r\n", &l).unwrap(), (args(&["set", "k", "v"]), 10));
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let buf = b"*2\r\n$3\r\nGET\r\n$5\r\nhello\r\n";
        for cut in 0..buf.len() {
            assert_eq!(parse(&buf[..cut], &Limits::default()), Err(ParseError::Incomplete), "cut {cut}");
        }
    }

    #[test]
    fn huge_and_negative_lengths_are_refused_before_buffering() {
        let l = Limits::default();
        for bad in [&b"*1\r\n$2147483648\r\n"[..], b"*1\r\n$-5\r\n", b"*99999999999\r\n", b"*1\r\n:3\r\n", b"*x\r\n"] {
            assert!(matches!(parse(bad, &l), Err(ParseError::Protocol(_))), "{}", bad.escape_ascii());
        }
        let long = vec![b'a'; l.max_inline + 10];
        assert!(matches!(parse(&long, &l), Err(ParseError::Protocol(_))));
    }

    proptest::proptest! {
        /// Any bytes: a command, "need more", or a protocol error; never a
        /// panic, and never a claim to have used more bytes than given.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            if let Ok((_, used)) = parse(&bytes, &Limits::default()) {
                proptest::prop_assert!(used <= bytes.len() && used > 0);
            }
        }

        /// A pipeline of valid commands, however it is split into reads,
        /// parses to the same commands.
        #[test]
        fn pipelines_parse_the_same_whatever_the_split(
            cmds in proptest::collection::vec(proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20), 1..5), 1..10),
            cut in proptest::prelude::any::<usize>(),
        ) {
            let mut wire = Vec::new();
            for c in &cmds {
                wire.extend_from_slice(format!("*{}\r\n", c.len()).as_bytes());
                for a in c {
                    wire.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                    wire.extend_from_slice(a);
                    wire.extend_from_slice(b"\r\n");
                }
            }
            let cut = cut % (wire.len() + 1);
            let mut buf = wire[..cut].to_vec();
            let mut rest = &wire[cut..];
            let mut got = Vec::new();
            loop {
                match parse(&buf, &Limits::default()) {
                    Ok((args, used)) => {
                        got.push(args);
                        buf.drain(..used);
                    }
                    Err(ParseError::Incomplete) if !rest.is_empty() => {
                        buf.extend_from_slice(rest);
                        rest = &[];
                    }
                    Err(ParseError::Incomplete) => break,
                    Err(e) => proptest::prop_assert!(false, "valid input refused: {e:?}"),
                }
            }
            proptest::prop_assert_eq!(got, cmds);
        }
    }

    #[test]
    fn replies_encode_in_both_protocols() {
        let r = Reply::Map(vec![(Reply::text("a"), Reply::Int(1))]);
        let (mut two, mut three) = (Vec::new(), Vec::new());
        r.encode(&mut two, false);
        r.encode(&mut three, true);
        assert_eq!(two, b"*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(three, b"%1\r\n$1\r\na\r\n:1\r\n");
        let (mut n2, mut n3) = (Vec::new(), Vec::new());
        Reply::Null.encode(&mut n2, false);
        Reply::Null.encode(&mut n3, true);
        assert_eq!((n2.as_slice(), n3.as_slice()), (&b"$-1\r\n"[..], &b"_\r\n"[..]));
    }
}
