//! latchkey's benchmark harness: the workloads of issue 6 over latchkey's
//! engines and (with the `peers` feature, the default) redb, fjall, sled and
//! (with `rocksdb`) RocksDB. The `latchkey-bench` binary also compares
//! `latchkey serve` with Redis and the lock service with etcd and
//! ZooKeeper; `latchkey bench workloads` runs the same workloads over
//! latchkey's own engines only.

pub mod adapters;
pub mod chart;
pub mod locks;
pub mod procs;
pub mod server;
pub mod workloads;
