//! Starts `latchkey serve` in-process on an ephemeral loopback port.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;

use latchkey_server::{Config, Server};

pub struct Running {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    pub fn resp3_url(&self) -> String {
        format!("redis://{}/?protocol=resp3", self.addr)
    }

    pub fn connect(&self) -> redis::Connection {
        redis::Client::open(self.url()).unwrap().get_connection().unwrap()
    }

    /// Stops the server and waits until it has synced and released the directory.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub fn start(dir: &Path) -> Running {
    start_with(Config { dir: dir.to_owned(), port: 0, ..Config::default() })
}

/// A server on a directory of `engine` (an existing one keeps its own).
#[allow(dead_code)] // not every test file uses it
pub fn start_engine(dir: &Path, engine: latchkey::Engine) -> Running {
    start_with(Config { dir: dir.to_owned(), port: 0, engine, ..Config::default() })
}

pub fn start_with(config: Config) -> Running {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let server = Server::bind(config).await.unwrap();
            addr_tx.send(server.local_addr().unwrap()).unwrap();
            server
                .run(async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
        });
    });
    let addr = addr_rx.recv().unwrap();
    Running { addr, stop: Some(stop_tx), thread: Some(thread) }
}

pub fn cmd(name: &str) -> redis::Cmd {
    redis::cmd(name)
}
