//! Key-space commands: DEL, EXISTS, expiry, TYPE, KEYS, SCAN, DBSIZE, FLUSHDB.

use latchkey::{now_ms, WriteBatch};

use super::strings::{current, expiry_ms};
use super::Tx;
use super::{glob, parse_i64, syntax, w, Args, CmdResult, Command, Outcome};
use crate::resp::Reply;
use crate::{Client, Shared};

pub(crate) const COMMANDS: &[Command] = &[
    w("del", -2, del),
    w("unlink", -2, del),
    super::o("exists", -2, exists),
    w("expire", -3, |s, a| expire(s, a, "EX", "expire")),
    w("pexpire", -3, |s, a| expire(s, a, "PX", "pexpire")),
    w("expireat", -3, |s, a| expire(s, a, "EXAT", "expireat")),
    w("pexpireat", -3, |s, a| expire(s, a, "PXAT", "pexpireat")),
    super::o("ttl", 2, |s, _, a| ttl(s, a, 1000)),
    super::o("pttl", 2, |s, _, a| ttl(s, a, 1)),
    w("persist", 2, persist),
    super::o("type", 2, key_type),
    super::o("keys", 2, keys),
    super::o("scan", -2, scan),
    super::o("dbsize", 1, dbsize),
    super::o("flushdb", -1, flush),
    super::o("flushall", -1, flush),
];

fn del(tx: &Tx, args: &mut Args) -> CmdResult<(Reply, WriteBatch)> {
    let mut batch = WriteBatch::new();
    let mut n = 0;
    let mut keys = args.rest();
    keys.sort();
    keys.dedup();
    for k in keys {
        if tx.current(&k)?.is_some() {
            n += 1;
            batch.delete(k);
        }
    }
    Ok((Reply::Int(n), batch))
}

fn exists(shared: &Shared, _: &mut Client, args: &mut Args) -> CmdResult<Outcome> {
    let mut n = 0;
    for k in args.rest() {
        n += i64::from(current(shared, &k)?.is_some());
    }
    Ok(Outcome::Reply(Reply::Int(n)))
}

fn expire(tx: &Tx, args: &mut Args, unit: &str, cmd: &str) -> CmdResult<(Reply, WriteBatch)> {
    let key = args.next()?;
    let amount = args.next_i64()?;
    let cond = args.next_upper();
    args.done()?;
    let mut batch = WriteBatch::new();
    let Some((value, old)) = tx.current(&key)? else { return Ok((Reply::Int(0), batch)) };
    let now = now_ms();
    let at = match expiry_ms(unit, amount, cmd) {
        Ok(at) => at,
        // A time in the past (or zero) deletes the key, as in Redis.
        Err(_) if amount <= 0 || unit.ends_with("AT") => now,
        Err(e) => return Err(e),
    };
    let applies = match cond.as_deref() {
        None => true,
        Some("NX") => old == 0,
        Some("XX") => old != 0,
        Some("GT") => old != 0 && at > old,
        Some("LT") => old == 0 || at < old,
        Some(_) => return Err(syntax()),
    };
    if !applies {
        return Ok((Reply::Int(0), batch));
    }
    super::strings::put(&mut batch, key, value, at.max(1));
    Ok((Reply::Int(1), batch))
}

fn ttl(shared: &Shared, args: &mut Args, unit_ms: u64) -> CmdResult<Outcome> {
    let reply = match current(shared, &args.next()?)? {
        None => -2,
        Some((_, 0)) => -1,
        Some((_, at)) => {
            let left = at.saturating_sub(now_ms());
            ((left + unit_ms / 2) / unit_ms) as i64
        }
    };
    Ok(Outcome::Reply(Reply::Int(reply)))
}

fn persist(tx: &Tx, args: &mut Args) -> CmdResult<(Reply, WriteBatch)> {
    let key = args.next()?;
    let mut batch = WriteBatch::new();
    match tx.current(&key)? {
        Some((value, at)) if at != 0 => {
            batch.put(key, value);
            Ok((Reply::Int(1), batch))
        }
        _ => Ok((Reply::Int(0), batch)),
    }
}

fn key_type(shared: &Shared, _: &mut Client, args: &mut Args) -> CmdResult<Outcome> {
    let t = if current(shared, &args.next()?)?.is_some() { "string" } else { "none" };
    Ok(Outcome::Reply(Reply::Simple(t)))
}

fn all_keys(shared: &Shared) -> CmdResult<Vec<Vec<u8>>> {
    shared
        .db
        .scan::<&[u8], _>(..)
        .map_err(super::db_error)?
        .map(|r| r.map(|(k, _)| k).map_err(super::db_error))
        .collect()
}

fn keys(shared: &Shared, _: &mut Client, args: &mut Args) -> CmdResult<Outcome> {
    let pattern = args.next()?;
    let keys = all_keys(shared)?.into_iter().filter(|k| glob(&pattern, k)).map(Reply::Bulk).collect();
    Ok(Outcome::Reply(Reply::Array(keys)))
}

/// `SCAN cursor [MATCH p] [COUNT n] [TYPE t]`. The cursor is a position in
/// key order: every key present for the whole iteration is returned at
/// least once if no key is deleted meanwhile; inserts may shift it.
fn scan(shared: &Shared, _: &mut Client, args: &mut Args) -> CmdResult<Outcome> {
    let cursor =
        parse_i64(&args.next()?).and_then(|c| usize::try_from(c).ok()).ok_or_else(|| Reply::err("invalid cursor"))?;
    let (mut pattern, mut count, mut only_strings) = (None, 10usize, true);
    while let Some(opt) = args.next_upper() {
        match opt.as_str() {
            "MATCH" => pattern = Some(args.next()?),
            "COUNT" => count = usize::try_from(args.next_i64()?).ok().filter(|&c| c > 0).ok_or_else(syntax)?,
            "TYPE" => only_strings = args.next()?.eq_ignore_ascii_case(b"string"),
            _ => return Err(syntax()),
        }
    }
    let keys = all_keys(shared)?;
    let end = cursor.saturating_add(count).min(keys.len());
    let page = keys.get(cursor..end).unwrap_or_default();
    let found = page
        .iter()
        .filter(|k| only_strings && pattern.as_ref().is_none_or(|p| glob(p, k)))
        .map(|k| Reply::Bulk(k.clone()))
        .collect();
    let next = if end >= keys.len() { 0 } else { end };
    Ok(Outcome::Reply(Reply::Array(vec![Reply::text(next.to_string()), Reply::Array(found)])))
}

fn dbsize(shared: &Shared, _: &mut Client, _: &mut Args) -> CmdResult<Outcome> {
    Ok(Outcome::Reply(Reply::Int(all_keys(shared)?.len() as i64)))
}

fn flush(shared: &Shared, _: &mut Client, args: &mut Args) -> CmdResult<Outcome> {
    match args.next_upper().as_deref() {
        None | Some("SYNC") | Some("ASYNC") => args.done()?,
        Some(_) => return Err(syntax()),
    }
    // Writes staged before this command are ordered before it: append
    // them, and keep the write lock so that none comes in between.
    let mut pass = shared.lock_pass();
    pass.append(shared).map_err(|e| Reply::err(format!("writes staged before FLUSHALL failed: {e}")))?;
    for chunk in all_keys(shared)?.chunks(10_000) {
        let mut batch = WriteBatch::new();
        for k in chunk {
            batch.delete(k);
        }
        shared.db.write_unsynced(batch).map_err(super::db_error)?;
    }
    Ok(Outcome::Wrote(Reply::Simple("OK")))
}
