//! String commands: GET, SET and friends, counters, APPEND.

use latchkey::{now_ms, WriteBatch};

use super::Tx;
use super::{not_integer, parse_i64, syntax, w, Args, CmdResult, Command, Outcome};
use crate::resp::Reply;
use crate::{Client, Shared};

pub(crate) const COMMANDS: &[Command] = &[
    super::o("get", 2, get),
    w("set", -3, set),
    w("setnx", 3, setnx),
    w("setex", 4, setex),
    w("psetex", 4, psetex),
    w("getset", 3, getset),
    w("getdel", 2, getdel),
    super::o("mget", -2, mget),
    w("mset", -3, mset),
    w("incr", 2, |s, a| incr_by(s, a, Some(1))),
    w("decr", 2, |s, a| incr_by(s, a, Some(-1))),
    w("incrby", 3, |s, a| incr_by(s, a, None)),
    w("decrby", 3, decr_by),
    w("append", 3, append),
    super::o("strlen", 2, strlen),
];

/// The value and expiry (0 = none) of `key`, if it is live.
pub(crate) fn current(shared: &Shared, key: &[u8]) -> CmdResult<Option<(Vec<u8>, u64)>> {
    shared.db.get_with_expiry(key).map_err(super::db_error)
}

fn bulk_or_null(v: Option<Vec<u8>>) -> Reply {
    v.map_or(Reply::Null, Reply::Bulk)
}

fn get(shared: &Shared, _: &mut Client, args: &mut Args) -> CmdResult<Outcome> {
    Ok(Outcome::Reply(bulk_or_null(current(shared, &args.next()?)?.map(|(v, _)| v))))
}

fn strlen(shared: &Shared, _: &mut Client, args: &mut Args) -> CmdResult<Outcome> {
    let n = current(shared, &args.next()?)?.map_or(0, |(v, _)| v.len());
    Ok(Outcome::Reply(Reply::Int(n as i64)))
}

fn mget(shared: &Shared, _: &mut Client, args: &mut Args) -> CmdResult<Outcome> {
    let values: CmdResult<Vec<Reply>> =
        args.rest().iter().map(|k| Ok(bulk_or_null(current(shared, k)?.map(|(v, _)| v)))).collect();
    Ok(Outcome::Reply(Reply::Array(values?)))
}

/// Milliseconds since the epoch `amount` units from now (or at), checked.
pub(crate) fn expiry_ms(unit: &str, amount: i64, cmd: &str) -> CmdResult<u64> {
    let invalid = || Reply::err(format!("invalid expire time in '{cmd}' command"));
    if amount <= 0 && !matches!(unit, "EXAT" | "PXAT") {
        return Err(invalid());
    }
    if amount <= 0 {
        return Err(invalid());
    }
    let amount = amount as u64;
    let now = now_ms();
    let at = match unit {
        "EX" => amount.checked_mul(1000).and_then(|ms| ms.checked_add(now)),
        "PX" => amount.checked_add(now),
        "EXAT" => amount.checked_mul(1000),
        _ => Some(amount),
    };
    at.filter(|&t| t < i64::MAX as u64).ok_or_else(invalid)
}

/// Writes `value` to `key` with expiry `at` (0 = none); an expiry already
/// past deletes the key.
pub(crate) fn put(batch: &mut WriteBatch, key: Vec<u8>, value: Vec<u8>, at: u64) {
    if at != 0 && at <= now_ms() {
        batch.delete(key);
    } else {
        batch.put_owned(key, value, at);
    }
}

fn set(tx: &Tx, args: &mut Args) -> CmdResult<(Reply, WriteBatch)> {
    let (key, value) = (args.next()?, args.next()?);
    let (mut nx, mut xx, mut get, mut keepttl, mut at) = (false, false, false, false, None);
    while let Some(opt) = args.next_upper() {
        match opt.as_str() {
            "NX" if !xx => nx = true,
            "XX" if !nx => xx = true,
            "GET" => get = true,
            "KEEPTTL" if at.is_none() => keepttl = true,
            "EX" | "PX" | "EXAT" | "PXAT" if at.is_none() && !keepttl => {
                let n = args.next().map_err(|_| syntax())?;
                at = Some(expiry_ms(&opt, parse_i64(&n).ok_or_else(not_integer)?, "set")?);
            }
            _ => return Err(syntax()),
        }
    }
    // A plain SET replaces whatever is there: only the options read it.
    let old = if nx || xx || get || keepttl { tx.current(&key)? } else { None };
    let old_value = || if get { bulk_or_null(old.clone().map(|(v, _)| v)) } else { Reply::Null };
    if (nx && old.is_some()) || (xx && old.is_none()) {
        return Ok((old_value(), WriteBatch::new()));
    }
    let expires = match (at, keepttl) {
        (Some(t), _) => t,
        (None, true) => old.as_ref().map_or(0, |(_, e)| *e),
        (None, false) => 0,
    };
    let mut batch = WriteBatch::new();
    put(&mut batch, key, value, expires);
    Ok((if get { old_value() } else { Reply::Simple("OK") }, batch))
}

fn setnx(tx: &Tx, args: &mut Args) -> CmdResult<(Reply, WriteBatch)> {
    let (key, value) = (args.next()?, args.next()?);
    let mut batch = WriteBatch::new();
    if tx.current(&key)?.is_some() {
        return Ok((Reply::Int(0), batch));
    }
    batch.put_owned(key, value, 0);
    Ok((Reply::Int(1), batch))
}

fn set_with_unit(args: &mut Args, unit: &str, cmd: &str) -> CmdResult<(Reply, WriteBatch)> {
    let key = args.next()?;
    let at = expiry_ms(unit, args.next_i64()?, cmd)?;
    let value = args.next()?;
    let mut batch = WriteBatch::new();
    put(&mut batch, key, value, at);
    Ok((Reply::Simple("OK"), batch))
}

fn setex(_: &Tx, args: &mut Args) -> CmdResult<(Reply, WriteBatch)> {
    set_with_unit(args, "EX", "setex")
}

fn psetex(_: &Tx, args: &mut Args) -> CmdResult<(Reply, WriteBatch)> {
    set_with_unit(args, "PX", "psetex")
}

fn getset(tx: &Tx, args: &mut Args) -> CmdResult<(Reply, WriteBatch)> {
    let (key, value) = (args.next()?, args.next()?);
    let old = tx.current(&key)?.map(|(v, _)| v);
    let mut batch = WriteBatch::new();
    batch.put(key, value);
    Ok((bulk_or_null(old), batch))
}

fn getdel(tx: &Tx, args: &mut Args) -> CmdResult<(Reply, WriteBatch)> {
    let key = args.next()?;
    let old = tx.current(&key)?.map(|(v, _)| v);
    let mut batch = WriteBatch::new();
    if old.is_some() {
        batch.delete(key);
    }
    Ok((bulk_or_null(old), batch))
}

fn mset(_: &Tx, args: &mut Args) -> CmdResult<(Reply, WriteBatch)> {
    let rest = args.rest();
    if !rest.len().is_multiple_of(2) {
        return Err(Reply::err("wrong number of arguments for 'mset' command"));
    }
    let mut batch = WriteBatch::new();
    for pair in rest.chunks(2) {
        batch.put(&pair[0], &pair[1]);
    }
    Ok((Reply::Simple("OK"), batch))
}

fn incr_by(tx: &Tx, args: &mut Args, by: Option<i64>) -> CmdResult<(Reply, WriteBatch)> {
    let key = args.next()?;
    let by = match by {
        Some(b) => b,
        None => args.next_i64()?,
    };
    add(tx, key, by)
}

fn decr_by(tx: &Tx, args: &mut Args) -> CmdResult<(Reply, WriteBatch)> {
    let key = args.next()?;
    let by = args.next_i64()?.checked_neg().ok_or_else(|| Reply::err("decrement would overflow"))?;
    add(tx, key, by)
}

fn add(tx: &Tx, key: Vec<u8>, by: i64) -> CmdResult<(Reply, WriteBatch)> {
    let (old, expires) = match tx.current(&key)? {
        Some((v, e)) => (parse_i64(&v).filter(|_| v.len() < 21).ok_or_else(not_integer)?, e),
        None => (0, 0),
    };
    let new = old.checked_add(by).ok_or_else(|| Reply::err("increment or decrement would overflow"))?;
    let mut batch = WriteBatch::new();
    batch.put_owned(key, new.to_string().into_bytes(), expires);
    Ok((Reply::Int(new), batch))
}

fn append(tx: &Tx, args: &mut Args) -> CmdResult<(Reply, WriteBatch)> {
    let (key, tail) = (args.next()?, args.next()?);
    let (mut value, expires) = tx.current(&key)?.unwrap_or_default();
    value.extend_from_slice(&tail);
    let n = value.len() as i64;
    let mut batch = WriteBatch::new();
    batch.put_owned(key, value, expires);
    Ok((Reply::Int(n), batch))
}
