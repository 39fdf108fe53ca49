//! Lock commands: DELIFEQ (best-effort locks), LOCK.* (fenced locks), and
//! the FENCED prefix for fenced writes.

use std::time::Duration;

use latchkey::locks::Pending;
use latchkey::WriteBatch;

use super::Tx;
use super::{not_integer, o, w, Args, CmdResult, Command, Outcome};
use crate::resp::Reply;
use crate::{Client, Shared};

pub(crate) const COMMANDS: &[Command] = &[
    w("delifeq", 3, delifeq),
    o("lock.acquire", -4, acquire),
    o("lock.release", 3, release),
    o("lock.renew", 4, renew),
    o("lock.info", 2, info),
    super::Command { name: "fenced", arity: -4, handler: super::Handler::Fenced },
];

/// `DELIFEQ key value`: delete `key` only if it holds `value` (1 if deleted).
fn delifeq(tx: &Tx, args: &mut Args) -> CmdResult<(Reply, WriteBatch)> {
    let (key, value) = (args.next()?, args.next()?);
    let mut batch = WriteBatch::new();
    if tx.current(&key)?.is_some_and(|(v, _)| v == value) {
        batch.delete(key);
        return Ok((Reply::Int(1), batch));
    }
    Ok((Reply::Int(0), batch))
}

fn millis(args: &mut Args) -> CmdResult<Duration> {
    let ms = args.next_i64()?;
    u64::try_from(ms).ok().filter(|&m| m > 0).map(Duration::from_millis).ok_or_else(not_integer)
}

/// `LOCK.ACQUIRE name owner ttl-ms [WAIT ms]`: the fencing token, or nil.
fn acquire(_: &Shared, _: &mut Client, args: &mut Args) -> CmdResult<Outcome> {
    let (name, owner) = (args.next_string()?, args.next_string()?);
    let ttl = millis(args)?;
    let wait = match args.next_upper().as_deref() {
        None => Duration::ZERO,
        Some("WAIT") => {
            let ms = u64::try_from(args.next_i64()?).map_err(|_| not_integer())?;
            Duration::from_millis(ms)
        }
        Some(_) => return Err(super::syntax()),
    };
    args.done()?;
    Ok(Outcome::Offload(Box::new(move |shared: &Shared| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done = Box::new(move |r| {
            let _ = tx.send(r);
        });
        match shared.locks.acquire_with(&name, &owner, ttl, wait, done) {
            Ok(Pending::Done(Some(g))) => Outcome::Reply(Reply::Int(g.token as i64)),
            Ok(Pending::Done(None)) => Outcome::Reply(Reply::Null),
            Ok(Pending::Queued(id)) => Outcome::Block(super::Waiting { name, owner, id, rx }),
            Err(e) => Outcome::Reply(super::db_error(e)),
        }
    })))
}

/// `LOCK.RELEASE name owner`: 1 if released, 0 if `owner` did not hold it.
fn release(_: &Shared, _: &mut Client, args: &mut Args) -> CmdResult<Outcome> {
    let (name, owner) = (args.next_string()?, args.next_string()?);
    Ok(Outcome::Offload(Box::new(move |shared: &Shared| {
        Outcome::Reply(match shared.locks.release(&name, &owner) {
            Ok(r) => Reply::Int(i64::from(r.is_ok())),
            Err(e) => super::db_error(e),
        })
    })))
}

/// `LOCK.RENEW name owner ttl-ms`: the (unchanged) token, or an error once
/// the lease is lost.
fn renew(_: &Shared, _: &mut Client, args: &mut Args) -> CmdResult<Outcome> {
    let (name, owner) = (args.next_string()?, args.next_string()?);
    let ttl = millis(args)?;
    Ok(Outcome::Offload(Box::new(move |shared: &Shared| {
        Outcome::Reply(match shared.locks.renew(&name, &owner, ttl) {
            Ok(Ok(g)) => Reply::Int(g.token as i64),
            Ok(Err(e)) => Reply::Error(format!("LOCKLOST {e}")),
            Err(e) => super::db_error(e),
        })
    })))
}

/// `LOCK.INFO name`: holder, token, remaining lease (ms), last token, waiters.
fn info(shared: &Shared, _: &mut Client, args: &mut Args) -> CmdResult<Outcome> {
    let name = args.next_string()?;
    let i = shared.locks.info(&name);
    let now = latchkey::now_ms();
    let (holder, token, left) = match &i.holder {
        Some(h) => (
            Reply::text(h.owner.clone()),
            Reply::Int(h.token as i64),
            Reply::Int(h.expires_at.saturating_sub(now) as i64),
        ),
        None => (Reply::Null, Reply::Null, Reply::Int(0)),
    };
    Ok(Outcome::Reply(Reply::Map(vec![
        (Reply::text("holder"), holder),
        (Reply::text("token"), token),
        (Reply::text("lease-ms"), left),
        (Reply::text("last-token"), Reply::Int(i.last_token as i64)),
        (Reply::text("waiters"), Reply::Array(i.waiters.into_iter().map(Reply::text).collect())),
    ])))
}
