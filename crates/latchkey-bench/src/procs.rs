//! Starting and stopping the servers a benchmark compares (latchkey serve,
//! redis-server, etcd, ZooKeeper) on loopback ports, each in a temporary
//! directory of its own.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What every server benchmark (`server`, `locks`) is told besides its own settings.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Common {
    /// The latchkey binary (default: the one beside this executable).
    #[arg(long)]
    pub latchkey: Option<PathBuf>,
    /// Where the servers keep their data (default: the system's temporary directory).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl Common {
    /// The directory the servers of benchmark `what` keep their data under.
    pub fn base(&self, what: &str) -> PathBuf {
        let fresh = || std::env::temp_dir().join(format!("latchkey-bench-{what}-{}", std::process::id()));
        self.work_dir.clone().unwrap_or_else(fresh)
    }

    /// Writes `doc` to the `--json` file, if one was given.
    pub fn write_json(&self, doc: &serde_json::Value) -> Result<(), String> {
        let Some(path) = &self.json else { return Ok(()) };
        std::fs::write(path, serde_json::to_string_pretty(doc).expect("results serialise"))
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// A free loopback port (bound and released; the server binds it next).
pub fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free loopback port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

/// A server process, stopped (SIGTERM, then SIGKILL after 10 s) and its
/// directory removed when dropped.
pub struct Server {
    pub name: String,
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

impl Server {
    /// Starts `cmd` (whose stdout and stderr go to `<dir>/server.log`) and
    /// waits up to `ready_within` until `ready(port)` holds.
    pub fn start(
        name: &str,
        mut cmd: Command,
        dir: PathBuf,
        port: u16,
        ready_within: Duration,
        ready: impl Fn(u16) -> bool,
    ) -> Result<Server, String> {
        let log = std::fs::File::create(dir.join("server.log")).map_err(|e| format!("{}: {e}", dir.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {name} ({:?}): {e}", cmd.get_program()))?;
        let mut server = Server { name: name.to_string(), port, child, dir };
        let t = Instant::now();
        while t.elapsed() < ready_within {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("{name} exited at start ({status}); its log:\n{}", server.log_tail()));
            }
            if ready(port) {
                return Ok(server);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "{name} did not answer on 127.0.0.1:{port} within {ready_within:?}; its log:\n{}",
            server.log_tail()
        ))
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a RESP server on the port answers PING with PONG.
pub fn resp_ping(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// Whether anything accepts TCP connections on the port.
pub fn tcp_open(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(200)).is_ok()
}

/// A fresh directory for one server under `base`.
pub fn server_dir(base: &Path, name: &str) -> Result<PathBuf, String> {
    let dir = base.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}

/// The `latchkey` binary: `--latchkey`, or the one beside this executable
/// (cargo puts both in target/<profile>/).
pub fn latchkey_binary(given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let beside = exe.with_file_name("latchkey");
    if beside.exists() {
        Ok(beside)
    } else {
        Err(format!(
            "no latchkey binary beside {}: build it with `cargo build --release -p latchkey-cli` or pass --latchkey",
            exe.display()
        ))
    }
}

/// Whether `program` can be found on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Starts `latchkey serve` with `engine`, `Sync::Interval(1000)` and
/// `threads` worker threads (0: one per CPU).
pub fn start_latchkey(bin: &Path, base: &Path, engine: &str, threads: usize) -> Result<Server, String> {
    let name = format!("latchkey-{engine}");
    let dir = server_dir(base, &name)?;
    let port = free_port()?;
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--bind", "127.0.0.1", "--port", &port.to_string(), "--engine", engine, "--sync", "1000"])
        .args(["--threads", &threads.to_string()])
        .arg("--dir")
        .arg(dir.join("data"));
    Server::start(&name, cmd, dir, port, Duration::from_secs(30), resp_ping)
}

/// Starts `redis-server` with `appendonly yes` and `appendfsync everysec`
/// (no RDB snapshots).
pub fn start_redis(base: &Path) -> Result<Server, String> {
    if !on_path("redis-server") {
        return Err("redis-server is not installed (Debian: apt-get install redis-server)".into());
    }
    let dir = server_dir(base, "redis")?;
    let port = free_port()?;
    let mut cmd = Command::new("redis-server");
    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--appendonly", "yes"])
        .args(["--appendfsync", "everysec", "--save", "", "--daemonize", "no"])
        .arg("--dir")
        .arg(&dir);
    Server::start("redis", cmd, dir, port, Duration::from_secs(30), resp_ping)
}
