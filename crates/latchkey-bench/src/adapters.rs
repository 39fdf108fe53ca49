//! One adapter per engine behind a small trait. The peers (redb, fjall,
//! sled, RocksDB) exist only with the `peers` (default) and `rocksdb`
//! features; `latchkey bench` builds this crate without them.

use std::path::Path;

pub trait Store {
    fn write_batch(&self, items: &[(impl AsRef<[u8]>, impl AsRef<[u8]>)]) -> Result<(), String>
    where
        Self: Sized;
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String>;
    fn scan(&self, start: &[u8], n: usize) -> Result<usize, String>;
    fn put_durable(&self, key: &[u8], value: &[u8]) -> Result<(), String>;
    fn sync(&self) -> Result<(), String>;
    /// Lets merges or compactions finish (or runs one), for the space figure.
    fn settle(&self) -> Result<(), String>;
}

fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

pub enum Any {
    /// The store and the sync policy it was opened with.
    Latchkey(latchkey::Db, latchkey::Sync),
    #[cfg(feature = "peers")]
    Redb(redb::Database),
    #[cfg(feature = "peers")]
    Fjall(fjall::Keyspace, fjall::PartitionHandle),
    #[cfg(feature = "peers")]
    Sled(sled::Db),
    #[cfg(feature = "rocksdb")]
    Rocks(rocksdb::DB),
}

#[cfg(feature = "peers")]
const TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("t");

/// Opens engine `name`'s store at `path`. With `durable_puts` (the
/// sync-writes workloads) latchkey runs under `Sync::Always`, where a put
/// returns durable and concurrent puts share one log write and one fsync;
/// otherwise under `Sync::Never`, with `sync()` making writes durable.
pub fn open(name: &str, path: &Path, durable_puts: bool) -> Result<Any, String> {
    Ok(match name {
        "latchkey-hash" | "latchkey-lsm" | "latchkey-btree" => {
            let engine: latchkey::Engine = name["latchkey-".len()..].parse().map_err(e)?;
            let sync = if durable_puts { latchkey::Sync::Always } else { latchkey::Sync::Never };
            Any::Latchkey(
                latchkey::Db::open(
                    path,
                    // btree: a 1 GiB buffer pool, as redb's default cache;
                    // hash: 1 GiB of cached segment blocks, the same budget.
                    // (lsm keeps its default 64 MiB block cache.)
                    latchkey::Options {
                        sync,
                        page_cache_size: 1 << 30,
                        block_cache_size: if engine == latchkey::Engine::Hash { 1 << 30 } else { 64 << 20 },
                        ..latchkey::Options::new(engine)
                    },
                )
                .map_err(e)?,
                sync,
            )
        }
        #[cfg(feature = "peers")]
        "redb" => Any::Redb(redb::Database::create(path.join("redb")).map_err(e)?),
        #[cfg(feature = "peers")]
        "fjall" => {
            let ks = fjall::Config::new(path).open().map_err(e)?;
            let p = ks.open_partition("t", fjall::PartitionCreateOptions::default()).map_err(e)?;
            #[cfg(feature = "peers")]
            Any::Fjall(ks, p)
        }
        #[cfg(feature = "peers")]
        "sled" => Any::Sled(sled::open(path).map_err(e)?),
        #[cfg(feature = "rocksdb")]
        "rocksdb" => {
            // As db_bench is usually run: a bloom filter of 10 bits per
            // key, and a block cache the size of latchkey's (64 MiB).
            let mut o = rocksdb::Options::default();
            o.create_if_missing(true);
            let mut table = rocksdb::BlockBasedOptions::default();
            table.set_bloom_filter(10.0, false);
            table.set_block_cache(&rocksdb::Cache::new_lru_cache(64 << 20));
            o.set_block_based_table_factory(&table);
            Any::Rocks(rocksdb::DB::open(&o, path).map_err(e)?)
        }
        other => return Err(format!("unknown engine {other} (or not built in: see --help)")),
    })
}

impl Store for Any {
    fn write_batch(&self, items: &[(impl AsRef<[u8]>, impl AsRef<[u8]>)]) -> Result<(), String> {
        match self {
            Any::Latchkey(db, _) => {
                let mut b = latchkey::WriteBatch::new();
                for (k, v) in items {
                    b.put(k, v);
                }
                db.write(b).map_err(e)
            }
            #[cfg(feature = "peers")]
            Any::Redb(db) => {
                let mut tx = db.begin_write().map_err(e)?;
                tx.set_durability(redb::Durability::None);
                {
                    let mut t = tx.open_table(TABLE).map_err(e)?;
                    for (k, v) in items {
                        t.insert(k.as_ref(), v.as_ref()).map_err(e)?;
                    }
                }
                tx.commit().map_err(e)
            }
            #[cfg(feature = "peers")]
            Any::Fjall(ks, p) => {
                let mut b = ks.batch();
                for (k, v) in items {
                    b.insert(p, k.as_ref(), v.as_ref());
                }
                b.commit().map_err(e)
            }
            #[cfg(feature = "peers")]
            Any::Sled(db) => {
                let mut b = sled::Batch::default();
                for (k, v) in items {
                    b.insert(k.as_ref(), v.as_ref());
                }
                db.apply_batch(b).map_err(e)
            }
            #[cfg(feature = "rocksdb")]
            Any::Rocks(db) => {
                let mut b = rocksdb::WriteBatch::default();
                for (k, v) in items {
                    b.put(k, v);
                }
                let mut o = rocksdb::WriteOptions::default();
                o.set_sync(false);
                db.write_opt(b, &o).map_err(e)
            }
        }
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        match self {
            Any::Latchkey(db, _) => db.get(key).map_err(e),
            #[cfg(feature = "peers")]
            Any::Redb(db) => {
                let tx = db.begin_read().map_err(e)?;
                let t = match tx.open_table(TABLE) {
                    Ok(t) => t,
                    Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                    Err(x) => return Err(e(x)),
                };
                Ok(t.get(key).map_err(e)?.map(|v| v.value().to_vec()))
            }
            #[cfg(feature = "peers")]
            Any::Fjall(_, p) => Ok(p.get(key).map_err(e)?.map(|v| v.to_vec())),
            #[cfg(feature = "peers")]
            Any::Sled(db) => Ok(db.get(key).map_err(e)?.map(|v| v.to_vec())),
            #[cfg(feature = "rocksdb")]
            Any::Rocks(db) => db.get(key).map_err(e),
        }
    }

    fn scan(&self, start: &[u8], n: usize) -> Result<usize, String> {
        let start = start.to_vec();
        match self {
            Any::Latchkey(db, _) => {
                // The lending scan: borrowed key and value, as redb's range
                // lends access guards.
                let mut c = 0;
                db.for_each(start.as_slice().., |k, v| {
                    let _ = (k.len(), v.len());
                    c += 1;
                    c < n
                })
                .map_err(e)?;
                Ok(c)
            }
            #[cfg(feature = "peers")]
            Any::Redb(db) => {
                let tx = db.begin_read().map_err(e)?;
                let t = tx.open_table(TABLE).map_err(e)?;
                let mut c = 0;
                for item in t.range(start.as_slice()..).map_err(e)?.take(n) {
                    let (k, v) = item.map_err(e)?;
                    let _ = (k.value().len(), v.value().len());
                    c += 1;
                }
                Ok(c)
            }
            #[cfg(feature = "peers")]
            Any::Fjall(_, p) => {
                let mut c = 0;
                for item in p.range(start..).take(n) {
                    item.map_err(e)?;
                    c += 1;
                }
                Ok(c)
            }
            #[cfg(feature = "peers")]
            Any::Sled(db) => {
                let mut c = 0;
                for item in db.range(start..).take(n) {
                    item.map_err(e)?;
                    c += 1;
                }
                Ok(c)
            }
            #[cfg(feature = "rocksdb")]
            Any::Rocks(db) => {
                // The raw iterator lends key and value, as the others do.
                let mut it = db.raw_iterator();
                it.seek(&start);
                let mut c = 0;
                while c < n && it.valid() {
                    let _ = (it.key().map(<[u8]>::len), it.value().map(<[u8]>::len));
                    c += 1;
                    it.next();
                }
                it.status().map_err(e)?;
                Ok(c)
            }
        }
    }

    fn put_durable(&self, key: &[u8], value: &[u8]) -> Result<(), String> {
        match self {
            Any::Latchkey(db, latchkey::Sync::Always) => db.put(key, value).map_err(e),
            Any::Latchkey(db, _) => {
                db.put(key, value).map_err(e)?;
                db.sync().map_err(e)
            }
            #[cfg(feature = "peers")]
            Any::Redb(db) => {
                let tx = db.begin_write().map_err(e)?;
                tx.open_table(TABLE).map_err(e)?.insert(key, value).map_err(e)?;
                tx.commit().map_err(e)
            }
            #[cfg(feature = "peers")]
            Any::Fjall(ks, p) => {
                p.insert(key, value).map_err(e)?;
                ks.persist(fjall::PersistMode::SyncData).map_err(e)
            }
            #[cfg(feature = "peers")]
            Any::Sled(db) => {
                db.insert(key, value).map_err(e)?;
                db.flush().map(|_| ()).map_err(e)
            }
            #[cfg(feature = "rocksdb")]
            Any::Rocks(db) => {
                let mut o = rocksdb::WriteOptions::default();
                o.set_sync(true);
                db.put_opt(key, value, &o).map_err(e)
            }
        }
    }

    fn sync(&self) -> Result<(), String> {
        match self {
            Any::Latchkey(db, _) => db.sync().map_err(e),
            #[cfg(feature = "peers")]
            Any::Redb(db) => {
                let tx = db.begin_write().map_err(e)?;
                tx.commit().map_err(e)
            }
            #[cfg(feature = "peers")]
            Any::Fjall(ks, _) => ks.persist(fjall::PersistMode::SyncAll).map_err(e),
            #[cfg(feature = "peers")]
            Any::Sled(db) => db.flush().map(|_| ()).map_err(e),
            // The write-ahead log fsynced, as the others sync theirs.
            #[cfg(feature = "rocksdb")]
            Any::Rocks(db) => db.flush_wal(true).map_err(e),
        }
    }

    fn settle(&self) -> Result<(), String> {
        match self {
            Any::Latchkey(db, _) => db.compact().map_err(e),
            #[allow(unreachable_patterns)]
            _ => {
                std::thread::sleep(std::time::Duration::from_secs(2));
                Ok(())
            }
        }
    }
}
