//! The command table: each command's arity, whether it writes, and its
//! handler. Errors use Redis's wording where clients parse them.

mod keys;
mod locks;
mod server;
mod strings;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard, OnceLock};

use latchkey::{now_ms, WriteBatch};

use crate::resp::Reply;
use crate::{Client, Shared};

/// What running a command produced.
pub(crate) enum Outcome {
    /// Reply now.
    Reply(Reply),
    /// Reply once the writes made so far are durable.
    Wrote(Reply),
    /// Reply when a queued lock acquire is decided.
    Block(Waiting),
    /// Reply, then close the connection.
    Quit(Reply),
    /// Work that may wait on an fsync: run it on the blocking pool, then
    /// handle the outcome it returns.
    Offload(Box<dyn FnOnce(&Shared) -> Outcome + Send>),
    /// The writes staged for earlier commands could not be made: the
    /// replies already made for them are void. Send this, then close.
    Failed(Reply),
}

/// A client queued for a lock by `LOCK.ACQUIRE ... WAIT`.
pub(crate) struct Waiting {
    pub(crate) name: String,
    pub(crate) owner: String,
    pub(crate) id: u64,
    pub(crate) rx: tokio::sync::oneshot::Receiver<latchkey::Result<Option<latchkey::Grant>>>,
}

impl Waiting {
    /// The client went away: leave the queue, or give back a grant that
    /// was made in the meantime, so the lock is not held by nobody.
    pub(crate) fn abandon(self, shared: &Shared) {
        if !shared.locks.cancel(&self.name, self.id) {
            if let Err(e) = shared.locks.release(&self.name, &self.owner) {
                tracing::warn!(error = %e, lock = %self.name, "could not release the grant of a departed client");
            }
        }
    }
}

/// A cursor over a command's arguments (after the name).
pub(crate) struct Args {
    name: &'static str,
    args: std::vec::IntoIter<Vec<u8>>,
}

pub(crate) type CmdResult<T> = Result<T, Reply>;

pub(crate) fn not_integer() -> Reply {
    Reply::err("value is not an integer or out of range")
}

pub(crate) fn syntax() -> Reply {
    Reply::err("syntax error")
}

impl Args {
    fn wrong_arity(&self) -> Reply {
        Reply::err(format!("wrong number of arguments for '{}' command", self.name))
    }

    pub(crate) fn len(&self) -> usize {
        self.args.len()
    }

    pub(crate) fn next(&mut self) -> CmdResult<Vec<u8>> {
        self.args.next().ok_or_else(|| self.wrong_arity())
    }

    pub(crate) fn next_upper(&mut self) -> Option<String> {
        self.args.next().map(|a| String::from_utf8_lossy(&a).to_ascii_uppercase())
    }

    pub(crate) fn next_string(&mut self) -> CmdResult<String> {
        let a = self.next()?;
        String::from_utf8(a).map_err(|_| Reply::err("argument is not valid UTF-8"))
    }

    pub(crate) fn next_i64(&mut self) -> CmdResult<i64> {
        parse_i64(&self.next()?).ok_or_else(not_integer)
    }

    pub(crate) fn rest(&mut self) -> Vec<Vec<u8>> {
        self.args.by_ref().collect()
    }

    pub(crate) fn done(&self) -> CmdResult<()> {
        if self.args.len() == 0 {
            Ok(())
        } else {
            Err(syntax())
        }
    }
}

pub(crate) fn parse_i64(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// A write command: computes its batch from the current state (it runs
/// under the server's write lock, so read-modify-write is atomic).
type WriteFn = fn(&Tx, &mut Args) -> CmdResult<(Reply, WriteBatch)>;

/// Staged changes: key -> its new value and expiry, or `None` if deleted.
type Staged = HashMap<Vec<u8>, Option<(Vec<u8>, u64)>, foldhash::fast::RandomState>;

/// Bytes of changes staged before they are appended mid-turn.
const STAGE_LIMIT: usize = 1 << 20;

/// The writes staged by every connection since the last append: one pass
/// of the command threads over the connections that had commands waiting.
/// They go to the store together, as one batch (one append to the log),
/// when the appender task gets its turn after those connections ran theirs
/// (see [`crate::append_passes`]), or earlier when a command needs them
/// written. Redis likewise writes its AOF buffer once per event-loop pass,
/// before it sends the replies of that pass.
#[derive(Default)]
pub(crate) struct Pass {
    staged: Staged,
    bytes: usize,
    /// What the connections with writes in this pass wait on.
    done: Arc<PassDone>,
}

/// How one pass's append went. A connection sends the replies of its
/// writes only once the pass holding them is appended.
#[derive(Default)]
pub(crate) struct PassDone {
    result: OnceLock<Result<(), String>>,
    appended: tokio::sync::Notify,
}

impl PassDone {
    /// Waits until the pass is appended; the error if its append failed.
    pub(crate) async fn wait(&self) -> Result<(), String> {
        loop {
            let appended = self.appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            if let Some(r) = self.result.get() {
                return r.clone();
            }
            appended.await;
        }
    }

    /// The append's result, if the pass was appended.
    pub(crate) fn result(&self) -> Option<&Result<(), String>> {
        self.result.get()
    }
}

/// The reply to a connection whose staged writes could not be appended:
/// the replies made for them are void.
pub(crate) fn writes_failed(e: impl std::fmt::Display) -> Reply {
    Reply::err(format!("writes of this pipeline failed: {e}"))
}

impl Pass {
    /// Appends the staged writes as one batch and wakes the connections
    /// waiting on them. The caller holds the write lock.
    pub(crate) fn append(&mut self, shared: &Shared) -> Result<(), String> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::new();
        for (key, state) in self.staged.drain() {
            match state {
                Some((value, at)) => batch.put_owned(key, value, at),
                None => batch.delete(key),
            };
        }
        self.bytes = 0;
        let result = shared.db.write_unsynced(batch).map_err(|e| e.to_string());
        shared.stats.appends.fetch_add(1, Ordering::Relaxed);
        let done = std::mem::take(&mut self.done);
        let _ = done.result.set(result.clone());
        done.appended.notify_waiters();
        result
    }
}

/// The write commands of one connection turn (the commands that arrived
/// together: a pipeline). It holds the server's write lock from its first
/// write to the end of the turn and stages the changes in the shared
/// [`Pass`]; the replies go out only once that pass is appended (and,
/// under `--sync always`, after the fsync). Each write command reads the
/// state with every staged change before it, its own connection's and the
/// others', so read-modify-write (INCR, APPEND, SET NX) stays atomic and
/// in order. A command that is not a plain write first has this turn's
/// changes appended, so it sees them.
pub(crate) struct Tx<'a> {
    pub(crate) shared: &'a Shared,
    pass: Option<MutexGuard<'a, Pass>>,
    /// The pass holding this turn's writes, until it is known appended.
    waits: Option<Arc<PassDone>>,
}

impl<'a> Tx<'a> {
    pub(crate) fn new(shared: &'a Shared) -> Tx<'a> {
        Tx { shared, pass: None, waits: None }
    }

    /// The live value and expiry of `key`, staged changes included.
    pub(crate) fn current(&self, key: &[u8]) -> CmdResult<Option<(Vec<u8>, u64)>> {
        match self.pass.as_ref().and_then(|p| p.staged.get(key)) {
            Some(Some((v, at))) if *at == 0 || *at > now_ms() => Ok(Some((v.clone(), *at))),
            Some(_) => Ok(None),
            None => strings::current(self.shared, key),
        }
    }

    fn lock(&mut self) -> &mut Pass {
        self.pass.get_or_insert_with(|| self.shared.lock_pass())
    }

    fn stage(&mut self, mut batch: WriteBatch) {
        let shared = self.shared;
        let waits = self.waits.take();
        let pass = self.lock();
        if pass.staged.is_empty() {
            shared.pass_due.notify_one();
        }
        for (key, state) in batch.drain_changes() {
            pass.bytes += key.len() + state.as_ref().map_or(0, |(v, _)| v.len());
            pass.staged.insert(key, state);
        }
        let waits = match waits {
            Some(w) if Arc::ptr_eq(&w, &pass.done) => w,
            _ => Arc::clone(&pass.done),
        };
        self.waits = Some(waits);
    }

    /// Appends the staged changes (every connection's) now, keeping the
    /// write lock.
    fn write_staged(&mut self) -> Result<(), Outcome> {
        let shared = self.shared;
        let result = self.lock().append(shared);
        result.map_err(|e| Outcome::Failed(writes_failed(e)))
    }

    /// Has this turn's writes appended, if they are not yet, and lets go of
    /// the write lock. On failure the outcome says so: the replies made for
    /// the staged writes are void.
    pub(crate) fn commit_or_fail(&mut self) -> Result<(), Outcome> {
        let result = match self.waits.take() {
            None => Ok(()),
            Some(done) => match done.result() {
                Some(r) => r.clone().map_err(|e| Outcome::Failed(writes_failed(e))),
                // Passes are appended in order: an unappended one is the current one.
                None => self.write_staged(),
            },
        };
        self.pass = None;
        result
    }

    /// Ends the turn: lets go of the write lock and returns the pass that
    /// holds this turn's writes, which the connection waits on before it
    /// sends the replies.
    pub(crate) fn finish(mut self) -> Option<Arc<PassDone>> {
        self.pass = None;
        self.waits.take()
    }
}

/// Any other command.
type OtherFn = fn(&Shared, &mut Client, &mut Args) -> CmdResult<Outcome>;

#[derive(Clone, Copy)]
pub(crate) enum Handler {
    Write(WriteFn),
    /// `FENCED lock token <write command>`.
    Fenced,
    Other(OtherFn),
}

/// One entry of the command table.
pub(crate) struct Command {
    pub(crate) name: &'static str,
    /// Arguments including the name: n exactly, or -n for at least n.
    pub(crate) arity: i64,
    pub(crate) handler: Handler,
}

pub(crate) const fn w(name: &'static str, arity: i64, f: WriteFn) -> Command {
    Command { name, arity, handler: Handler::Write(f) }
}

pub(crate) const fn o(name: &'static str, arity: i64, f: OtherFn) -> Command {
    Command { name, arity, handler: Handler::Other(f) }
}

pub(crate) fn table() -> impl Iterator<Item = &'static Command> {
    strings::COMMANDS.iter().chain(keys::COMMANDS).chain(server::COMMANDS).chain(locks::COMMANDS)
}

/// The command named `name`, in any case: looked up in a map built once,
/// by the name lowercased on the stack (no command name is longer than
/// 16 bytes).
fn lookup(name: &[u8]) -> Option<&'static Command> {
    static BY_NAME: OnceLock<HashMap<&'static [u8], &'static Command, foldhash::fast::FixedState>> = OnceLock::new();
    let by_name = BY_NAME.get_or_init(|| table().map(|c| (c.name.as_bytes(), c)).collect());
    let mut lower = [0u8; 16];
    let lower = lower.get_mut(..name.len())?;
    for (l, c) in lower.iter_mut().zip(name) {
        *l = c.to_ascii_lowercase();
    }
    by_name.get(&*lower).copied()
}

/// Runs one command for `client`, staging its writes in `tx` (the caller
/// commits `tx` before it sends the replies).
pub(crate) fn execute(tx: &mut Tx, client: &mut Client, argv: Vec<Vec<u8>>) -> Outcome {
    tx.shared.stats.commands.fetch_add(1, Ordering::Relaxed);
    match run(tx, client, argv, None) {
        Ok(o) => o,
        Err(r) => Outcome::Reply(r),
    }
}

/// A fence carried by `FENCED lock token <command>`.
pub(crate) struct FenceArg {
    lock: String,
    token: u64,
}

fn run(tx: &mut Tx, client: &mut Client, argv: Vec<Vec<u8>>, fence: Option<FenceArg>) -> CmdResult<Outcome> {
    let shared = tx.shared;
    let mut it = argv.into_iter();
    let Some(raw_name) = it.next() else { return Ok(Outcome::Reply(Reply::Simple("OK"))) };
    let Some(cmd) = lookup(&raw_name) else {
        let name = String::from_utf8_lossy(&raw_name).to_ascii_lowercase();
        let shown: Vec<String> = it.take(8).map(|a| format!("'{}' ", String::from_utf8_lossy(&a))).collect();
        return Err(Reply::err(format!("unknown command '{name}', with args beginning with: {}", shown.concat())));
    };
    let name = cmd.name;
    let mut args = Args { name, args: it };
    if !client.authenticated && !matches!(cmd.name, "auth" | "hello" | "quit") {
        return Err(Reply::Error("NOAUTH Authentication required.".into()));
    }
    let n = args.len() as i64 + 1;
    if (cmd.arity > 0 && n != cmd.arity) || (cmd.arity < 0 && n < -cmd.arity) {
        return Err(args.wrong_arity());
    }
    match cmd.handler {
        Handler::Write(f) if fence.is_none() => {
            tx.lock();
            let (reply, batch) = f(tx, &mut args)?;
            if batch.is_empty() {
                return Ok(Outcome::Reply(reply));
            }
            batch.validate().map_err(db_error)?;
            // A large turn is written in parts; the lock stays held, so
            // the state this command read is still the state.
            let staged_bytes = tx.lock().bytes;
            if staged_bytes > 0 && staged_bytes + batch.size_bytes() > STAGE_LIMIT {
                if let Err(o) = tx.write_staged() {
                    return Ok(o);
                }
            }
            tx.stage(batch);
            Ok(Outcome::Wrote(reply))
        }
        Handler::Write(f) => {
            // A fenced write goes alone, with its fence, after what is staged.
            if let Err(o) = tx.write_staged() {
                return Ok(o);
            }
            tx.lock();
            let (reply, mut batch) = f(tx, &mut args)?;
            let Some(fence) = fence else { unreachable!("matched above") };
            let granted = shared.locks.info(&fence.lock).last_token;
            if fence.token > granted {
                return Err(Reply::err(format!(
                    "fencing token {} was never granted for lock '{}' (last granted: {granted})",
                    fence.token, fence.lock
                )));
            }
            batch.fence(&fence.lock, fence.token);
            shared.db.write_unsynced(batch).map_err(db_error)?;
            Ok(Outcome::Wrote(reply))
        }
        Handler::Fenced if fence.is_some() => Err(Reply::err("FENCED cannot be nested")),
        Handler::Fenced => {
            if let Err(o) = tx.commit_or_fail() {
                return Ok(o);
            }
            fenced(tx, client, &mut args)
        }
        Handler::Other(_) if fence.is_some() => {
            Err(Reply::err(format!("FENCED takes a write command; '{name}' does not write")))
        }
        Handler::Other(f) => {
            if let Err(o) = tx.commit_or_fail() {
                return Ok(o);
            }
            f(shared, client, &mut args)
        }
    }
}

/// `FENCED lock token <write command ...>`
fn fenced(tx: &mut Tx, client: &mut Client, args: &mut Args) -> CmdResult<Outcome> {
    let lock = args.next_string()?;
    let token = u64::try_from(args.next_i64()?).map_err(|_| not_integer())?;
    let inner = args.rest();
    if inner.is_empty() {
        return Err(args.wrong_arity());
    }
    if inner[0].eq_ignore_ascii_case(b"fenced") {
        return Err(Reply::err("FENCED cannot be nested"));
    }
    run(tx, client, inner, Some(FenceArg { lock, token }))
}

/// Maps a storage error to a reply.
pub(crate) fn db_error(e: latchkey::Error) -> Reply {
    match e {
        latchkey::Error::StaleToken { .. } => Reply::Error(format!("STALE {e}")),
        latchkey::Error::TooLarge { .. } | latchkey::Error::InvalidArgument(_) => Reply::err(e),
        other => {
            tracing::error!(error = %other, "storage error");
            Reply::err(other)
        }
    }
}

/// Redis glob matching (`*`, `?`, `[abc]`, `[^a-z]`, `\x`) on bytes.
pub(crate) fn glob(pattern: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let (mut star, mut star_i) = (None, 0);
    while i < s.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some(p);
                    star_i = i;
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(pattern, p, s[i]) {
                        if matched {
                            p = next;
                            i += 1;
                            continue;
                        }
                    } else if s[i] == b'[' {
                        p += 1;
                        i += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() && pattern[p + 1] == s[i] => {
                    p += 2;
                    i += 1;
                    continue;
                }
                b'\\' if p + 1 < pattern.len() => {}
                c if c == s[i] => {
                    p += 1;
                    i += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some(sp) => {
                p = sp + 1;
                star_i += 1;
                i = star_i;
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `pattern[p] == '['`.
fn class(pattern: &[u8], p: usize, c: u8) -> Option<(bool, usize)> {
    let mut j = p + 1;
    let negate = pattern.get(j) == Some(&b'^');
    if negate {
        j += 1;
    }
    let mut matched = false;
    let mut first = true;
    while j < pattern.len() && (pattern[j] != b']' || first) {
        first = false;
        if pattern[j] == b'\\' && j + 1 < pattern.len() {
            matched |= pattern[j + 1] == c;
            j += 2;
        } else if j + 2 < pattern.len() && pattern[j + 1] == b'-' && pattern[j + 2] != b']' {
            let (lo, hi) = (pattern[j].min(pattern[j + 2]), pattern[j].max(pattern[j + 2]));
            matched |= (lo..=hi).contains(&c);
            j += 3;
        } else {
            matched |= pattern[j] == c;
            j += 1;
        }
    }
    if j >= pattern.len() {
        return None;
    }
    Some((matched != negate, j + 1))
}

#[cfg(test)]
mod tests {
    use super::{glob, lookup, table};

    #[test]
    fn every_command_is_found_in_any_case() {
        for c in table() {
            let upper = c.name.to_ascii_uppercase();
            let mixed: String = c
                .name
                .chars()
                .enumerate()
                .map(|(i, ch)| if i % 2 == 0 { ch.to_ascii_uppercase() } else { ch })
                .collect();
            for name in [c.name, upper.as_str(), mixed.as_str()] {
                assert!(lookup(name.as_bytes()).is_some_and(|found| std::ptr::eq(found, c)), "{name}");
            }
        }
        for unknown in ["", "gett", "ge", "set\0", "lock.acquire.and.some.more.bytes"] {
            assert!(lookup(unknown.as_bytes()).is_none(), "{unknown}");
        }
    }

    #[test]
    fn glob_matches_like_redis() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "anything", true),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h*llo", "heeeello", true),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("user:*:name", "user:42:name", true),
            ("user:*:name", "user:42:mail", false),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
            ("", "", true),
            ("abc", "abcd", false),
        ];
        for &(p, s, want) in cases {
            assert_eq!(glob(p.as_bytes(), s.as_bytes()), want, "{p} ~ {s}");
        }
    }
}
