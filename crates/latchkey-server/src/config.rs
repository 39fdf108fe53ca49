//! Server settings: defaults, an optional config file in Redis's
//! `name value` format, and the safety checks made before binding.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::resp::Limits;

/// Everything `latchkey serve` can be told.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (default `127.0.0.1`).
    pub bind: String,
    /// Port (default 6379; 0 picks a free one).
    pub port: u16,
    /// Data directory (default `./latchkey-data`).
    pub dir: PathBuf,
    /// Engine of a new data directory.
    pub engine: latchkey::Engine,
    /// Durability of acknowledged writes.
    pub sync: latchkey::Sync,
    /// Password clients must give with AUTH (or HELLO ... AUTH) first.
    pub requirepass: Option<String>,
    /// Most connected clients; more are refused with an error.
    pub max_clients: usize,
    /// Protocol limits (bulk length, arguments, inline length).
    pub limits: Limits,
    /// Allow listening on a non-loopback address without a password.
    pub allow_remote_without_password: bool,
    /// Threads that run connections and commands; 0 = one per CPU. (fsyncs
    /// and lock waits run on a separate pool.) Redis runs its commands on
    /// one thread; on a machine shared with the clients, fewer threads than
    /// CPUs leaves them room.
    pub threads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: "127.0.0.1".into(),
            port: 6379,
            dir: PathBuf::from("latchkey-data"),
            engine: latchkey::Engine::Lsm,
            sync: latchkey::Sync::Always,
            requirepass: None,
            max_clients: 10_000,
            limits: Limits::default(),
            allow_remote_without_password: false,
            threads: 0,
        }
    }
}

impl Config {
    /// Refuses settings that would expose data or cannot work.
    pub fn check(&self) -> Result<(), String> {
        let loopback = match self.bind.parse::<IpAddr>() {
            Ok(ip) => ip.is_loopback(),
            Err(_) => self.bind == "localhost",
        };
        if !loopback && self.requirepass.is_none() && !self.allow_remote_without_password {
            return Err(format!(
                "refusing to listen on {} without a password: set --requirepass, or pass \
                 --allow-remote-without-password if every host that can reach it may read and write all data",
                self.bind
            ));
        }
        if self.max_clients == 0 {
            return Err("maxclients must be at least 1".into());
        }
        if self.limits.max_bulk == 0 || self.limits.max_bulk > latchkey::MAX_VALUE_LEN + 1024 {
            return Err(format!("proto-max-bulk-len must be between 1 and {}", latchkey::MAX_VALUE_LEN + 1024));
        }
        Ok(())
    }

    /// The database options these settings imply.
    pub fn db_options(&self) -> latchkey::Options {
        latchkey::Options { sync: self.sync, ..latchkey::Options::new(self.engine) }
    }

    /// Applies one `name value` setting.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        let num = |v: &str| v.parse::<u64>().map_err(|_| format!("{name}: {v:?} is not a number"));
        match name.to_ascii_lowercase().as_str() {
            "bind" => self.bind = value.split_whitespace().next().unwrap_or("127.0.0.1").to_owned(),
            "port" => self.port = u16::try_from(num(value)?).map_err(|_| format!("port {value} is out of range"))?,
            "dir" => self.dir = PathBuf::from(value),
            "engine" => self.engine = value.parse().map_err(|e: latchkey::Error| e.to_string())?,
            "sync" | "appendfsync" => {
                self.sync = match value {
                    "always" => latchkey::Sync::Always,
                    "never" | "no" => latchkey::Sync::Never,
                    "everysec" => latchkey::Sync::Interval(1000),
                    ms => latchkey::Sync::Interval(num(ms)?.max(1)),
                }
            }
            "requirepass" => self.requirepass = (!value.is_empty()).then(|| value.to_owned()),
            "maxclients" => self.max_clients = num(value)? as usize,
            "proto-max-bulk-len" => self.limits.max_bulk = num(value)? as usize,
            "allow-remote-without-password" => self.allow_remote_without_password = value == "yes",
            "threads" | "io-threads" => self.threads = num(value)?.min(1024) as usize,
            other => return Err(format!("unknown setting {other:?}")),
        }
        Ok(())
    }

    /// Reads a config file: one `name value` per line; `#` starts a comment.
    pub fn load_file(&mut self, path: &Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            self.set(name, value.trim().trim_matches('"')).map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_without_password_is_refused() {
        let mut c = Config { bind: "0.0.0.0".into(), ..Config::default() };
        assert!(c.check().unwrap_err().contains("without a password"));
        c.requirepass = Some("s3cret".into());
        assert!(c.check().is_ok());
        assert!(Config { bind: "::1".into(), ..Config::default() }.check().is_ok());
    }

    #[test]
    fn a_config_file_sets_values_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latchkey.conf");
        std::fs::write(&path, "# comment\nport 7000\nappendfsync everysec\nmaxclients 5\nthreads 1\n").unwrap();
        let mut c = Config::default();
        c.load_file(&path).unwrap();
        assert_eq!((c.port, c.sync, c.max_clients, c.threads), (7000, latchkey::Sync::Interval(1000), 5, 1));
        std::fs::write(&path, "port seventy\n").unwrap();
        assert!(c.load_file(&path).unwrap_err().contains(":1: port"));
    }
}
