//! # latchkey-server
//!
//! `latchkey serve`: a Redis-protocol (RESP2 and RESP3) server over a
//! latchkey [`Db`], with best-effort locks (`SET NX PX` and `DELIFEQ`) and
//! fenced locks (`LOCK.*` and `FENCED`) whose tokens the store enforces.
//!
//! Layout, after tokio's mini-redis: [`resp`] parses requests and encodes
//! replies, `cmd/` holds the command table and one file per family, and
//! this file holds the accept loop, connections and shutdown.

mod cmd;
pub mod config;
pub mod resp;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use latchkey::{Db, LockService};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, Semaphore};

pub use config::Config;
use resp::{ParseError, Reply};

/// Counters for INFO.
#[derive(Default)]
pub(crate) struct ServerStats {
    pub(crate) accepted: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) connected: AtomicU64,
    pub(crate) commands: AtomicU64,
    /// Appends of staged writes (each one batch holding a pass's writes).
    pub(crate) appends: AtomicU64,
}

/// What every connection shares.
pub(crate) struct Shared {
    pub(crate) db: Db,
    pub(crate) locks: LockService,
    pub(crate) config: Config,
    /// The write lock, and the writes staged under it since the last
    /// append. Held while a connection's write commands read, compute and
    /// stage, so that read-modify-write commands are atomic. Never held
    /// across an fsync.
    pub(crate) pass: std::sync::Mutex<cmd::Pass>,
    /// Tells the appender task a pass has writes to append.
    pub(crate) pass_due: tokio::sync::Notify,
    pub(crate) stats: ServerStats,
    pub(crate) started: Instant,
    /// Offloaded commands (lock commands) running now (see [`offload`]).
    offloaded: AtomicU64,
}

impl Shared {
    /// Takes the write lock (see [`Shared::pass`]).
    pub(crate) fn lock_pass(&self) -> std::sync::MutexGuard<'_, cmd::Pass> {
        self.pass.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One connection's state.
pub(crate) struct Client {
    pub(crate) id: u64,
    pub(crate) name: Option<String>,
    pub(crate) resp3: bool,
    pub(crate) authenticated: bool,
}

/// Errors that stop the server from starting or end it.
#[derive(Debug)]
pub enum ServeError {
    /// The configuration is unsafe or inconsistent.
    Config(String),
    /// Opening the database failed.
    Db(latchkey::Error),
    /// Binding or accepting failed.
    Io(std::io::Error),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Config(s) => write!(f, "{s}"),
            ServeError::Db(e) => write!(f, "{e}"),
            ServeError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ServeError {}

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Server {
    /// Checks the configuration, opens the database and binds the port.
    pub async fn bind(config: Config) -> Result<Server, ServeError> {
        config.check().map_err(ServeError::Config)?;
        let db = Db::open(&config.dir, config.db_options()).map_err(ServeError::Db)?;
        let locks = LockService::open(&db).map_err(ServeError::Db)?;
        let listener = TcpListener::bind((config.bind.as_str(), config.port)).await.map_err(ServeError::Io)?;
        let shared = Arc::new(Shared {
            db,
            locks,
            config,
            pass: std::sync::Mutex::new(cmd::Pass::default()),
            pass_due: tokio::sync::Notify::new(),
            stats: ServerStats::default(),
            started: Instant::now(),
            offloaded: AtomicU64::new(0),
        });
        Ok(Server { listener, shared })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes; then stops accepting, lets every
    /// connection finish the commands it has read (up to 5 s), syncs and
    /// closes the database (releasing the directory lock).
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), ServeError> {
        let Server { listener, shared } = self;
        let (stop_tx, _) = broadcast::channel::<()>(1);
        let slots = Arc::new(Semaphore::new(shared.config.max_clients));
        let mut tasks = tokio::task::JoinSet::new();
        let mut next_id = 0u64;
        let appender = tokio::spawn(append_passes(Arc::clone(&shared)));
        tokio::pin!(shutdown);
        loop {
            let (socket, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            while tasks.try_join_next().is_some() {}
            shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tasks.spawn(async move {
                    let mut socket = socket;
                    if socket.write_all(b"-ERR max number of clients reached\r\n").await.is_ok() {
                        close_politely(socket).await;
                    }
                });
                continue;
            };
            next_id += 1;
            let (shared, stop) = (Arc::clone(&shared), stop_tx.subscribe());
            let id = next_id;
            tasks.spawn(async move {
                shared.stats.connected.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = connection(&shared, socket, id, stop).await {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
                shared.stats.connected.fetch_sub(1, Ordering::Relaxed);
                drop(permit);
            });
        }
        tracing::info!("shutting down: finishing in-flight commands");
        drop(listener);
        let _ = stop_tx.send(());
        let drained =
            tokio::time::timeout(Duration::from_secs(5), async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!("some connections did not finish within 5 s");
            tasks.abort_all();
        }
        appender.abort();
        let _ = appender.await;
        // Writes of connections cut off above: no reply said they were made,
        // but they were staged in order, so they go in rather than vanish.
        if let Err(e) = shared.lock_pass().append(&shared) {
            tracing::error!(error = %e, "the last staged writes could not be appended");
        }
        let db = shared.db.clone();
        tokio::task::spawn_blocking(move || db.sync())
            .await
            .map_err(|e| ServeError::Io(e.into()))?
            .map_err(ServeError::Db)?;
        shared.db.clone().close().map_err(ServeError::Db)?;
        tracing::info!("data synced; directory released");
        Ok(())
    }
}

/// Appends each pass's staged writes: woken when a pass gets its first
/// write, it yields once, which tokio defers until the runnable tasks have
/// run and the socket events that arrived meanwhile are polled, so every
/// connection with commands waiting runs its turn (and stages) first.
async fn append_passes(shared: Arc<Shared>) {
    loop {
        shared.pass_due.notified().await;
        tokio::task::yield_now().await;
        if let Err(e) = shared.lock_pass().append(&shared) {
            tracing::error!(error = %e, "appending staged writes failed");
        }
    }
}

/// Makes the writes of a pipeline durable (under `Sync::Always`) before
/// their replies go out. Concurrent connections share one fsync.
async fn sync_writes(shared: &Arc<Shared>) -> latchkey::Result<()> {
    if shared.config.sync != latchkey::Sync::Always {
        return Ok(());
    }
    let db = shared.db.clone();
    tokio::task::spawn_blocking(move || db.sync()).await.unwrap_or(Err(latchkey::Error::Closed))
}

/// Why [`run_buffered`] stopped.
enum Next {
    /// Every whole command that had arrived ran.
    Drained,
    /// The replies fill the output buffer: send them, then go on.
    Full,
    /// A command to finish off the runtime (it may wait on an fsync).
    Offload(Box<dyn FnOnce(&Shared) -> cmd::Outcome + Send>),
    /// A lock acquire queued.
    Block(cmd::Waiting),
    /// Send the replies, then close (QUIT, or a protocol error).
    Close,
    /// Writes failed: the replies made are void; send this one and close.
    Failed(Reply),
}

/// Runs the whole commands in `input`, in order, encoding their replies
/// into `out`, until one needs the runtime (or the input runs out). Their
/// writes are staged in the shared pass (see [`cmd::Tx`]); `pending` is set
/// to it, and the replies must wait until it is appended. `wrote` is set if
/// any command wrote.
fn run_buffered(
    shared: &Shared,
    client: &mut Client,
    input: &mut BytesMut,
    out: &mut Vec<u8>,
    wrote: &mut bool,
    pending: &mut Option<Arc<cmd::PassDone>>,
) -> Next {
    let limits = shared.config.limits;
    let mut tx = cmd::Tx::new(shared);
    // Whole commands parsed ahead, with the bytes each took: a pipeline's
    // keys are handed to the store together first (see `Db::prefetch`).
    let mut ahead: VecDeque<(Vec<Vec<u8>>, usize)> = VecDeque::new();
    let next = loop {
        if ahead.is_empty() {
            match parse_ahead(input, &limits, &mut ahead) {
                Ok(()) => {}
                Err(ParseError::Incomplete) => break Next::Drained,
                Err(ParseError::Protocol(msg)) => {
                    Reply::err(msg).encode(out, client.resp3);
                    break Next::Close;
                }
            }
            if ahead.len() > 1 {
                shared.db.prefetch(ahead.iter().filter_map(|(args, _)| args.get(1)));
            }
        }
        let Some((args, used)) = ahead.pop_front() else { break Next::Drained };
        input.advance(used);
        if args.is_empty() {
            continue;
        }
        match cmd::execute(&mut tx, client, args) {
            cmd::Outcome::Reply(r) => r.encode(out, client.resp3),
            cmd::Outcome::Wrote(r) => {
                *wrote = true;
                r.encode(out, client.resp3);
            }
            cmd::Outcome::Quit(r) => {
                r.encode(out, client.resp3);
                break Next::Close;
            }
            cmd::Outcome::Offload(work) => break Next::Offload(work),
            cmd::Outcome::Block(waiting) => break Next::Block(waiting),
            cmd::Outcome::Failed(r) => break Next::Failed(r),
        }
        if out.len() >= 256 * 1024 {
            break Next::Full;
        }
    };
    let Some(done) = tx.finish() else { return next };
    // An earlier pass of this connection's is appended already (passes go
    // in order, and only a command that had them appended lets a turn go
    // on before its replies are sent); only its failure matters.
    if let Some(Some(Err(e))) = pending.replace(done).as_deref().map(cmd::PassDone::result) {
        return Next::Failed(cmd::writes_failed(e));
    }
    next
}

/// Commands parsed ahead of running them, at most.
const PARSE_AHEAD: usize = 32;
/// Bytes of input parsed ahead, at most (past the first command): the
/// copies parsing makes stay small beside the input buffer.
const PARSE_AHEAD_BYTES: usize = 64 << 10;

/// Parses up to [`PARSE_AHEAD`] whole commands at the start of `input`
/// (without consuming them) into `ahead`, stopping at an incomplete or
/// malformed one or past [`PARSE_AHEAD_BYTES`]. The error is returned
/// only if no command came before it; otherwise it is met again once the
/// commands before it have run.
fn parse_ahead(
    input: &[u8],
    limits: &resp::Limits,
    ahead: &mut VecDeque<(Vec<Vec<u8>>, usize)>,
) -> Result<(), ParseError> {
    let mut at = 0;
    while ahead.len() < PARSE_AHEAD && at < PARSE_AHEAD_BYTES {
        match resp::parse(&input[at..], limits) {
            Ok((args, used)) => {
                at += used;
                ahead.push_back((args, used));
            }
            Err(e) if ahead.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    Ok(())
}

/// Serves one client: reads whatever it sent, runs every whole command in
/// it (their writes go to the store together), syncs once if any of them
/// wrote, then sends all the replies.
async fn connection(
    shared: &Arc<Shared>,
    mut socket: TcpStream,
    id: u64,
    mut stop: broadcast::Receiver<()>,
) -> std::io::Result<()> {
    socket.set_nodelay(true)?;
    let limits = shared.config.limits;
    let mut client = Client { id, name: None, resp3: false, authenticated: shared.config.requirepass.is_none() };
    let mut input = BytesMut::with_capacity(16 * 1024);
    let mut out = Vec::with_capacity(16 * 1024);
    let mut wrote = false;
    let mut pending = None;
    loop {
        let outcome = match run_buffered(shared, &mut client, &mut input, &mut out, &mut wrote, &mut pending) {
            Next::Drained => None,
            Next::Full => {
                flush(shared, &mut socket, &mut out, &mut wrote, &mut pending, client.resp3).await?;
                continue;
            }
            Next::Close => {
                flush(shared, &mut socket, &mut out, &mut wrote, &mut pending, client.resp3).await?;
                close_politely(socket).await;
                return Ok(());
            }
            Next::Failed(r) => Some(cmd::Outcome::Failed(r)),
            Next::Offload(work) => Some(offload(shared, work).await),
            Next::Block(waiting) => Some(cmd::Outcome::Block(waiting)),
        };
        match outcome {
            None => {}
            Some(cmd::Outcome::Reply(r)) => {
                r.encode(&mut out, client.resp3);
                continue;
            }
            Some(cmd::Outcome::Wrote(r)) => {
                wrote = true;
                r.encode(&mut out, client.resp3);
                continue;
            }
            Some(cmd::Outcome::Quit(r)) => {
                r.encode(&mut out, client.resp3);
                flush(shared, &mut socket, &mut out, &mut wrote, &mut pending, client.resp3).await?;
                close_politely(socket).await;
                return Ok(());
            }
            Some(cmd::Outcome::Failed(r)) => {
                out.clear();
                r.encode(&mut out, client.resp3);
                socket.write_all(&out).await?;
                return Err(std::io::Error::other("writes failed"));
            }
            Some(cmd::Outcome::Offload(_)) => {
                Reply::err("internal error: nested offload").encode(&mut out, client.resp3);
                continue;
            }
            Some(cmd::Outcome::Block(mut waiting)) => {
                // Replies so far go out first, as a blocking command's would.
                flush(shared, &mut socket, &mut out, &mut wrote, &mut pending, client.resp3).await?;
                let r = loop {
                    tokio::select! {
                        r = &mut waiting.rx => break r,
                        _ = stop.recv() => {
                            abandon(shared, waiting);
                            return Ok(());
                        }
                        // Watch the socket: a client that leaves gives up its place.
                        n = socket.read_buf(&mut input) => match n {
                            Ok(n) if n > 0 && input.len() <= limits.max_bulk + 64 * 1024 => continue,
                            _ => {
                                abandon(shared, waiting);
                                return Ok(());
                            }
                        },
                    }
                };
                let reply = match r {
                    Ok(Ok(Some(g))) => Reply::Int(g.token as i64),
                    Ok(Ok(None)) => Reply::Null,
                    Ok(Err(e)) => cmd::db_error(e),
                    Err(_) => Reply::err("the lock service stopped"),
                };
                reply.encode(&mut out, client.resp3);
                continue;
            }
        }
        // Drained: every whole command ran; send the replies, then read.
        flush(shared, &mut socket, &mut out, &mut wrote, &mut pending, client.resp3).await?;
        tokio::select! {
            n = socket.read_buf(&mut input) => {
                if n? == 0 {
                    return Ok(());
                }
            }
            _ = stop.recv() => return Ok(()),
        }
    }
}

/// Runs a command that may block (a lock command that waits for its
/// grant's fsync, about 0.1 ms). On the multi-threaded runtime `latchkey
/// serve` runs: alone, in place on this worker, as Redis fsyncs in its
/// event loop; while another is running, with `block_in_place` (the
/// worker's other tasks move to another thread meanwhile), so that more
/// of them can wait on one fsync together and the connections of this
/// worker are not held up behind them. Handing every one of them to
/// another thread cost a wake-up of a sleeping thread on each lock
/// hand-off on a machine whose idle CPUs halt (and the blocking pool, two).
/// On a current-thread runtime (where `block_in_place` is not allowed), on
/// the blocking pool. A command that panics gets an error reply either way.
async fn offload(shared: &Arc<Shared>, work: Box<dyn FnOnce(&Shared) -> cmd::Outcome + Send>) -> cmd::Outcome {
    let failed = || cmd::Outcome::Reply(Reply::err("internal error running the command"));
    if tokio::runtime::Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
        let run = std::panic::AssertUnwindSafe(|| work(shared));
        let alone = shared.offloaded.fetch_add(1, Ordering::AcqRel) == 0;
        let outcome = if alone {
            std::panic::catch_unwind(run)
        } else {
            tokio::task::block_in_place(|| std::panic::catch_unwind(run))
        };
        shared.offloaded.fetch_sub(1, Ordering::AcqRel);
        return outcome.unwrap_or_else(|_| failed());
    }
    let bg = Arc::clone(shared);
    tokio::task::spawn_blocking(move || work(&bg)).await.unwrap_or_else(|_| failed())
}

/// Gives up a queued lock acquire of a departing client, off the runtime
/// (releasing a grant that raced in syncs the database).
fn abandon(shared: &Arc<Shared>, waiting: cmd::Waiting) {
    let bg = Arc::clone(shared);
    tokio::task::spawn_blocking(move || waiting.abandon(&bg));
}

/// Closes after a final reply: stops writing, then reads and drops what
/// the client still sends (for at most a second), so that the kernel does
/// not answer its unread bytes with a reset that would destroy the reply.
async fn close_politely(mut socket: TcpStream) {
    let _ = socket.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async {
        while let Ok(n) = socket.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

async fn flush(
    shared: &Arc<Shared>,
    socket: &mut TcpStream,
    out: &mut Vec<u8>,
    wrote: &mut bool,
    pending: &mut Option<Arc<cmd::PassDone>>,
    resp3: bool,
) -> std::io::Result<()> {
    if let Some(done) = pending.take() {
        if let Err(e) = done.wait().await {
            out.clear();
            cmd::writes_failed(e).encode(out, resp3);
            socket.write_all(out).await?;
            return Err(std::io::Error::other("writes failed"));
        }
    }
    if std::mem::take(wrote) {
        if let Err(e) = sync_writes(shared).await {
            // The replies say OK for writes that may not be durable: send
            // none of them, say why, and close.
            out.clear();
            Reply::err(format!("writes of this pipeline may not be durable: {e}")).encode(out, resp3);
            socket.write_all(out).await?;
            return Err(std::io::Error::other("sync failed"));
        }
    }
    if !out.is_empty() {
        socket.write_all(out).await?;
        out.clear();
    }
    Ok(())
}
