//! Startup: finish or undo an interrupted merge, load the newest key table
//! (the hint file of the last merge) as the keydir's base, and read record
//! by record only the segments written since. Also the offline checker
//! behind `latchkey check`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::keydir::{KeyDir, Loc, Slot};
use super::merge::{self, MERGE_FILE};
use super::segment::{self, SegId, Segment};
use super::table::KeyTable;
use crate::check::{CheckReport, Progress};
use crate::codec::Kind;
use crate::error::{Error, Result};
use crate::log::{self, FileKind, LogWriter, TailMode};
use crate::options::Options;

/// Everything `HashStore::open` needs, rebuilt from disk.
pub(super) struct Recovered {
    pub(super) keydir: KeyDir,
    pub(super) segments: BTreeMap<SegId, Arc<Segment>>,
    pub(super) log: LogWriter,
    pub(super) active: Arc<Segment>,
    pub(super) next_seq: u64,
    pub(super) generation: u64,
    /// Keys loaded from the key table.
    pub(super) table_keys: usize,
    /// Segments that were read record by record.
    pub(super) scanned: usize,
}

pub(super) fn recover(dir: &Path, _opts: &Options) -> Result<Recovered> {
    finish_interrupted_merge(dir)?;
    let ids = data_segments(dir)?;
    let table = load_table(dir, &ids)?;
    let covered: Vec<SegId> = table.segments().to_vec();
    let mut max_seq = table.max_seq();
    let table_keys = table.len();
    let mut keydir = KeyDir::new(table);
    let mut scanned = 0;
    let mut newest_end = None;
    for (i, &id) in ids.iter().enumerate() {
        if covered.binary_search(&id).is_ok() {
            continue;
        }
        let newest = i + 1 == ids.len() && is_active_id(id);
        let mode = if newest { TailMode::Newest } else { TailMode::Sealed };
        let end = log::scan(&segment::data_path(dir, id), FileKind::Data, mode, |f| {
            let r = f.record;
            max_seq = max_seq.max(r.seq);
            let loc = Loc { seg: id, offset: f.offset, len: f.len, seq: r.seq, expires_at: r.expires_at };
            match r.kind {
                Kind::Put => keydir.recover(r.key, Slot::Live(loc)),
                Kind::Delete => keydir.recover(r.key, Slot::Deleted(r.seq)),
                _ => {}
            }
            Ok(())
        })?;
        scanned += 1;
        if newest {
            newest_end = Some(end);
        }
    }
    keydir.finish_recovery();

    let (log, generation) = match (ids.last(), newest_end) {
        (Some(&id), Some(end)) => {
            let path = segment::data_path(dir, id);
            let log = if end.headerless {
                crate::fs::remove_file(&path)?;
                let log = LogWriter::create(&path, FileKind::Data)?;
                crate::fs::sync_dir(dir)?;
                log
            } else {
                LogWriter::reopen(&path, end.valid_len)?
            };
            let log = log.preallocate();
            (log, id >> 32)
        }
        _ => {
            let generation = ids.last().map_or(1, |id| (id >> 32) + 1);
            let path = segment::data_path(dir, segment::active_id(generation));
            let log = LogWriter::create(&path, FileKind::Data)?.preallocate();
            crate::fs::sync_dir(dir)?;
            (log, generation)
        }
    };
    let active_id = segment::active_id(generation);
    let mut segments = BTreeMap::new();
    for &id in ids.iter().filter(|&&id| id != active_id).chain(std::iter::once(&active_id)) {
        let seg = Segment::open(dir, id)?;
        if id != active_id {
            seg.seal();
        }
        segments.insert(id, Arc::new(seg));
    }
    let active = Arc::clone(&segments[&active_id]);
    Ok(Recovered { keydir, segments, log, active, next_seq: max_seq + 1, generation, table_keys, scanned })
}

fn is_active_id(id: SegId) -> bool {
    id & 0xffff_ffff == 0
}

/// The ids of the data segments in `dir`, oldest first.
fn data_segments(dir: &Path) -> Result<Vec<SegId>> {
    segment::list_ids(dir, "data")
}

/// The newest key table, or an empty one if there is none or it is
/// damaged (then every data segment is read instead, which is slower but
/// loses nothing: the table only repeats what the data segments say).
fn load_table(dir: &Path, ids: &[SegId]) -> Result<KeyTable> {
    let Some(&newest) = merge::table_ids(dir)?.last() else {
        return Ok(KeyTable::default());
    };
    let path = segment::table_path(dir, newest);
    let table = match KeyTable::load(&path) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "key table unusable; reading every data segment instead");
            return Ok(KeyTable::default());
        }
    };
    if let Some(missing) = table.segments().iter().find(|s| ids.binary_search(s).is_err()) {
        return Err(Error::corruption(
            segment::data_path(dir, *missing),
            0,
            format!("data segment named by key table {} is missing", path.display()),
        ));
    }
    Ok(table)
}

/// Redoes a merge whose commit file exists; deletes the leftovers of one
/// that never committed.
fn finish_interrupted_merge(dir: &Path) -> Result<()> {
    let commit = dir.join(MERGE_FILE);
    if commit.exists() {
        let c = merge::read_commit(&commit)?;
        tracing::info!(
            inputs = c.inputs.len(),
            outputs = c.outputs.len(),
            "finishing a merge interrupted after its commit"
        );
        merge::finish_files(dir, &c)?;
    }
    for name in crate::fs::list(dir)? {
        if name.ends_with(".tmp") {
            tracing::info!(file = %name, "removing the leftover of an unfinished write");
            crate::fs::remove_file(&dir.join(&name))?;
        }
    }
    Ok(())
}

/// Verifies every checksum of a `hash` directory without changing it.
pub(crate) fn check(dir: &Path, progress: &mut Progress<'_>) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let names = crate::fs::list(dir)?;
    let files: Vec<(SegId, &str, &String)> = names
        .iter()
        .filter_map(|n| segment::parse_name(n).map(|(id, ext)| (id, ext, n)))
        .filter(|(_, ext, _)| *ext == "data" || *ext == "keys")
        .collect();
    let newest = files.iter().filter(|(_, ext, _)| *ext == "data").map(|(id, _, _)| *id).max();
    let mut total = 0;
    for (_, _, name) in &files {
        total += std::fs::metadata(dir.join(name)).map_err(|e| Error::io(dir.join(name), e))?.len();
    }
    progress(0, total);
    let mut done = 0u64;
    for &(id, ext, name) in &files {
        let path = dir.join(name);
        report.files += 1;
        if ext == "keys" {
            match KeyTable::load(&path) {
                Ok(t) => report.records += t.len() as u64,
                Err(_) if KeyTable::is_older_layout(&path) => report.notes.push(format!(
                    "{}: a key table of an older layout; not used (the data segments are read at open) \
                     until the next merge or clean close writes a new one",
                    path.display()
                )),
                Err(e) => report.damage.push(e),
            }
        } else {
            let mode = if Some(id) == newest && is_active_id(id) { TailMode::Newest } else { TailMode::Sealed };
            let result = log::scan(&path, FileKind::Data, mode, |f| {
                report.records += 1;
                if report.records % 4096 == 0 {
                    progress(done + f.offset, total);
                }
                Ok(())
            });
            match result {
                Ok(end) if end.torn_bytes() > 0 => report.notes.push(format!(
                    "{}: {} bytes of an unfinished write at offset {} (a crash artefact; cut off at the next open)",
                    path.display(),
                    end.torn_bytes(),
                    end.valid_len
                )),
                Ok(_) => {}
                Err(e) => report.damage.push(e),
            }
        }
        let len = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
        report.bytes += len;
        done += len;
        progress(done, total);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use crate::{Db, Engine, Options};

    fn opts() -> Options {
        // Small segments so the keys spread over many, some wholly dead.
        Options { segment_size: 4096, merge_min_dead_bytes: u64::MAX, ..Options::new(Engine::Hash) }
    }

    fn assert_matches(db: &Db, model: &BTreeMap<Vec<u8>, Vec<u8>>) {
        let got: BTreeMap<Vec<u8>, Vec<u8>> = db.scan::<&[u8], _>(..).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(&got, model);
    }

    #[test]
    fn a_clean_close_writes_a_key_table_so_the_next_open_reads_no_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut model = BTreeMap::new();
        for round in 0..3u32 {
            let db = Db::open(dir.path(), opts()).unwrap();
            assert_matches(&db, &model);
            for i in 0..600u32 {
                let key = format!("k{:03}", i % 150).into_bytes();
                if i % 7 == 3 {
                    db.delete(&key).unwrap();
                    model.remove(&key);
                } else {
                    let value = format!("v{round}-{i}").into_bytes();
                    db.put(&key, &value).unwrap();
                    model.insert(key, value);
                }
            }
            if round == 1 {
                db.compact().unwrap();
            }
            db.close().unwrap();
            let r = super::recover(dir.path(), &opts()).unwrap();
            // After the merge of round 1 nothing was written: its own table
            // covers all but the empty active segment, which is read (a header).
            let expect = if round == 1 { 1 } else { 0 };
            assert_eq!(r.scanned, expect, "round {round}: every non-empty segment is covered by a table");
            assert_eq!(r.table_keys, model.len());
            assert_eq!(r.keydir.len(), model.len());
            drop(r);
            let tables = crate::fs::list(dir.path()).unwrap().into_iter().filter(|n| n.ends_with(".keys")).count();
            assert_eq!(tables, 1, "round {round}: older tables are removed");
        }
        // A short session (under a quarter segment of writes) writes no
        // table and leaves no new segment: the next one appends to it.
        let segments =
            |d: &std::path::Path| crate::fs::list(d).unwrap().into_iter().filter(|n| n.ends_with(".data")).count();
        let before = segments(dir.path());
        for i in 0..5 {
            let db = Db::open(dir.path(), opts()).unwrap();
            db.put(format!("short{i}"), b"x").unwrap();
            model.insert(format!("short{i}").into_bytes(), b"x".to_vec());
            db.close().unwrap();
        }
        // (`recover` above already started the new active segment.)
        assert_eq!(segments(dir.path()), before, "the five sessions append to one active segment");
        // A crash writes no table: the segments written since are read.
        let db = Db::open(dir.path(), opts()).unwrap();
        db.put(b"after", b"crash").unwrap();
        model.insert(b"after".to_vec(), b"crash".to_vec());
        db.simulate_crash();
        let r = super::recover(dir.path(), &opts()).unwrap();
        assert_eq!(r.scanned, 1, "the active segment of the short sessions");
        drop(r);
        let db = Db::open(dir.path(), opts()).unwrap();
        assert_matches(&db, &model);
    }
}
