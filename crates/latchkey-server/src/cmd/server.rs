//! Connection and server commands: PING, HELLO, AUTH, CLIENT, COMMAND,
//! INFO, CONFIG, SELECT, QUIT.

use std::sync::atomic::Ordering;

use super::{o, syntax, Args, CmdResult, Command, Handler, Outcome};
use crate::resp::Reply;
use crate::{Client, Shared};

pub(crate) const COMMANDS: &[Command] = &[
    o("ping", -1, ping),
    o("echo", 2, echo),
    o("hello", -1, hello),
    o("auth", -2, auth),
    o("select", 2, select),
    o("quit", -1, |_, _, _| Ok(Outcome::Quit(Reply::Simple("OK")))),
    o("client", -2, client),
    o("command", -1, command),
    o("info", -1, info),
    o("config", -2, config),
];

fn ping(_: &Shared, _: &mut Client, args: &mut Args) -> CmdResult<Outcome> {
    Ok(Outcome::Reply(match args.rest().pop() {
        Some(msg) => Reply::Bulk(msg),
        None => Reply::Simple("PONG"),
    }))
}

fn echo(_: &Shared, _: &mut Client, args: &mut Args) -> CmdResult<Outcome> {
    Ok(Outcome::Reply(Reply::Bulk(args.next()?)))
}

fn check_password(shared: &Shared, client: &mut Client, user: Option<&[u8]>, pass: &[u8]) -> CmdResult<()> {
    let ok = match &shared.config.requirepass {
        Some(p) => p.as_bytes() == pass && user.is_none_or(|u| u == b"default"),
        None => false,
    };
    if !ok {
        if shared.config.requirepass.is_none() {
            return Err(Reply::err(
                "AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
            ));
        }
        return Err(Reply::Error("WRONGPASS invalid username-password pair or user is disabled.".into()));
    }
    client.authenticated = true;
    Ok(())
}

fn auth(shared: &Shared, client: &mut Client, args: &mut Args) -> CmdResult<Outcome> {
    let mut a = args.rest();
    let pass = a.pop().unwrap_or_default();
    let user = a.pop();
    if !a.is_empty() {
        return Err(syntax());
    }
    check_password(shared, client, user.as_deref(), &pass)?;
    Ok(Outcome::Reply(Reply::Simple("OK")))
}

fn hello(shared: &Shared, client: &mut Client, args: &mut Args) -> CmdResult<Outcome> {
    let mut resp3 = client.resp3;
    if let Some(v) = args.next_upper() {
        resp3 = match v.as_str() {
            "2" => false,
            "3" => true,
            _ => return Err(Reply::Error("NOPROTO unsupported protocol version".into())),
        };
        while let Some(opt) = args.next_upper() {
            match opt.as_str() {
                "AUTH" => {
                    let (user, pass) = (args.next()?, args.next()?);
                    check_password(shared, client, Some(&user), &pass)?;
                }
                "SETNAME" => client.name = Some(args.next_string()?),
                _ => return Err(syntax()),
            }
        }
    }
    if !client.authenticated {
        return Err(Reply::Error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time".into()));
    }
    client.resp3 = resp3;
    Ok(Outcome::Reply(Reply::Map(vec![
        (Reply::text("server"), Reply::text("latchkey")),
        (Reply::text("version"), Reply::text(env!("CARGO_PKG_VERSION"))),
        (Reply::text("proto"), Reply::Int(if resp3 { 3 } else { 2 })),
        (Reply::text("id"), Reply::Int(client.id as i64)),
        (Reply::text("mode"), Reply::text("standalone")),
        (Reply::text("role"), Reply::text("master")),
        (Reply::text("modules"), Reply::Array(vec![])),
    ])))
}

fn select(_: &Shared, _: &mut Client, args: &mut Args) -> CmdResult<Outcome> {
    match args.next()?.as_slice() {
        b"0" => Ok(Outcome::Reply(Reply::Simple("OK"))),
        _ => Err(Reply::err("DB index is out of range")),
    }
}

fn client(_: &Shared, client: &mut Client, args: &mut Args) -> CmdResult<Outcome> {
    let sub = args.next_upper().unwrap_or_default();
    let reply = match sub.as_str() {
        "ID" => Reply::Int(client.id as i64),
        "SETNAME" => {
            let name = args.next_string()?;
            if name.contains(' ') {
                return Err(Reply::err("Client names cannot contain spaces, newlines or special characters."));
            }
            client.name = (!name.is_empty()).then_some(name);
            Reply::Simple("OK")
        }
        "GETNAME" => client.name.clone().map_or(Reply::Null, Reply::text),
        "SETINFO" => {
            args.rest();
            Reply::Simple("OK")
        }
        "INFO" => Reply::text(format!(
            "id={} name={} resp={}\n",
            client.id,
            client.name.as_deref().unwrap_or(""),
            if client.resp3 { 3 } else { 2 }
        )),
        _ => return Err(Reply::err(format!("unknown subcommand '{sub}'. Try CLIENT HELP."))),
    };
    Ok(Outcome::Reply(reply))
}

fn command_info(c: &Command) -> Reply {
    let flag = match c.handler {
        Handler::Write(_) | Handler::Fenced => "write",
        Handler::Other(_) => "readonly",
    };
    let first_key = i64::from(!matches!(
        c.name,
        "ping"
            | "echo"
            | "hello"
            | "auth"
            | "select"
            | "quit"
            | "client"
            | "command"
            | "info"
            | "config"
            | "dbsize"
            | "flushdb"
            | "flushall"
            | "keys"
            | "scan"
            | "fenced"
            | "lock.acquire"
            | "lock.release"
            | "lock.renew"
            | "lock.info"
    ));
    let last_key = match c.name {
        "mget" | "del" | "unlink" | "exists" => -1,
        "mset" => -1,
        _ => first_key,
    };
    let step = if c.name == "mset" { 2 } else { first_key };
    Reply::Array(vec![
        Reply::text(c.name),
        Reply::Int(c.arity),
        Reply::Array(vec![Reply::Status(flag.into())]),
        Reply::Int(first_key),
        Reply::Int(last_key),
        Reply::Int(step),
    ])
}

fn command(_: &Shared, _: &mut Client, args: &mut Args) -> CmdResult<Outcome> {
    let reply = match args.next_upper().as_deref() {
        None => Reply::Array(super::table().map(command_info).collect()),
        Some("COUNT") => Reply::Int(super::table().count() as i64),
        Some("DOCS") => Reply::Map(vec![]),
        Some("INFO") => {
            let names = args.rest();
            let pick = |n: &Vec<u8>| super::table().find(|c| c.name.as_bytes().eq_ignore_ascii_case(n));
            Reply::Array(names.iter().map(|n| pick(n).map_or(Reply::Null, command_info)).collect())
        }
        Some(other) => return Err(Reply::err(format!("unknown subcommand '{other}'. Try COMMAND HELP."))),
    };
    Ok(Outcome::Reply(reply))
}

/// Resident memory of this process, in bytes (Linux), or 0.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn info(shared: &Shared, _: &mut Client, args: &mut Args) -> CmdResult<Outcome> {
    let want = args.next_upper().map(|s| s.to_ascii_lowercase());
    let stats = shared.db.stats();
    let st = &shared.stats;
    let sync = match shared.config.sync {
        latchkey::Sync::Always => "always".to_string(),
        latchkey::Sync::Never => "never".to_string(),
        latchkey::Sync::Interval(ms) => format!("{ms}ms"),
    };
    let sections: Vec<(&str, Vec<(String, String)>)> = vec![
        (
            "server",
            vec![
                ("redis_version".into(), "7.2.0".into()),
                ("latchkey_version".into(), env!("CARGO_PKG_VERSION").into()),
                ("redis_mode".into(), "standalone".into()),
                ("process_id".into(), std::process::id().to_string()),
                ("tcp_port".into(), shared.config.port.to_string()),
                ("uptime_in_seconds".into(), shared.started.elapsed().as_secs().to_string()),
            ],
        ),
        (
            "clients",
            vec![
                ("connected_clients".into(), st.connected.load(Ordering::Relaxed).to_string()),
                ("maxclients".into(), shared.config.max_clients.to_string()),
            ],
        ),
        (
            "memory",
            vec![("used_memory".into(), rss_bytes().to_string()), ("used_memory_rss".into(), rss_bytes().to_string())],
        ),
        (
            "persistence",
            vec![
                ("engine".into(), stats.engine.into()),
                ("sync".into(), sync),
                ("aof_enabled".into(), "1".into()),
                ("disk_bytes".into(), stats.disk_bytes.to_string()),
                ("live_bytes".into(), stats.live_bytes.to_string()),
                ("data_files".into(), stats.files.to_string()),
                ("fsyncs".into(), stats.syncs.to_string()),
                ("merges".into(), stats.merges.to_string()),
                ("background_errors".into(), stats.background_errors.to_string()),
            ],
        ),
        (
            "stats",
            vec![
                ("total_connections_received".into(), st.accepted.load(Ordering::Relaxed).to_string()),
                ("total_commands_processed".into(), st.commands.load(Ordering::Relaxed).to_string()),
                ("rejected_connections".into(), st.rejected.load(Ordering::Relaxed).to_string()),
                ("total_writes".into(), stats.writes.to_string()),
                ("write_appends".into(), st.appends.load(Ordering::Relaxed).to_string()),
            ],
        ),
        ("keyspace", vec![("db0".into(), format!("keys={},expires=0,avg_ttl=0", stats.keys))]),
    ];
    let mut text = String::new();
    for (name, fields) in sections {
        if want.as_deref().is_some_and(|w| w != name && w != "all" && w != "everything" && w != "default") {
            continue;
        }
        let mut title = name.to_string();
        title[..1].make_ascii_uppercase();
        text.push_str(&format!("# {title}\r\n"));
        for (k, v) in fields {
            text.push_str(&format!("{k}:{v}\r\n"));
        }
        text.push_str("\r\n");
    }
    Ok(Outcome::Reply(Reply::Bulk(text.into_bytes())))
}

fn config(shared: &Shared, _: &mut Client, args: &mut Args) -> CmdResult<Outcome> {
    let sub = args.next_upper().unwrap_or_default();
    if sub != "GET" {
        return Err(Reply::err(format!(
            "CONFIG {sub} is not supported; change settings with flags or the config file and restart"
        )));
    }
    let c = &shared.config;
    let known: Vec<(&str, String)> = vec![
        ("bind", c.bind.clone()),
        ("port", c.port.to_string()),
        ("dir", c.dir.display().to_string()),
        ("maxclients", c.max_clients.to_string()),
        ("proto-max-bulk-len", c.limits.max_bulk.to_string()),
        ("requirepass", String::new()),
        ("databases", "1".into()),
        ("save", String::new()),
        ("appendonly", "yes".into()),
        (
            "appendfsync",
            match c.sync {
                latchkey::Sync::Always => "always".into(),
                latchkey::Sync::Never => "no".into(),
                _ => "everysec".into(),
            },
        ),
        ("maxmemory", "0".into()),
        ("timeout", "0".into()),
    ];
    let mut pairs = Vec::new();
    for pattern in args.rest() {
        for (k, v) in &known {
            if super::glob(&pattern.to_ascii_lowercase(), k.as_bytes())
                && !pairs.iter().any(|(n, _): &(Reply, Reply)| n == &Reply::text(*k))
            {
                pairs.push((Reply::text(*k), Reply::text(v.clone())));
            }
        }
    }
    Ok(Outcome::Reply(Reply::Map(pairs)))
}
