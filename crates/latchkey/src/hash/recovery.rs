//! Startup: finish or undo an interrupted merge, then build the keydir from
//! hint files where they exist and from the data segments where they don't.
//! Also the offline checker behind `latchkey check`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use super::keydir::{KeyDir, Loc};
use super::merge::{self, HINT_FOOTER_KEY, MERGE_FILE};
use super::segment::{self, SegId, Segment};
use crate::check::{CheckReport, Progress};
use crate::codec::{self, Kind};
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
    /// Segments whose keys came from a hint file.
    pub(super) hinted: usize,
    /// Segments that were read record by record.
    pub(super) scanned: usize,
}

pub(super) fn recover(dir: &Path, _opts: &Options) -> Result<Recovered> {
    finish_interrupted_merge(dir)?;
    let ids = data_segments(dir)?;
    let mut keydir = KeyDir::with_capacity(0);
    let mut deleted: HashMap<Box<[u8]>, u64> = HashMap::new();
    let mut max_seq = 0u64;
    let (mut hinted, mut scanned) = (0, 0);
    let mut newest_end = None;
    for (i, &id) in ids.iter().enumerate() {
        let newest = i + 1 == ids.len() && is_active_id(id);
        if !newest && load_hints(dir, id, &mut keydir, &deleted, &mut max_seq)? {
            hinted += 1;
            continue;
        }
        let mode = if newest {
            TailMode::Newest
        } else {
            TailMode::Sealed
        };
        let end = log::scan(&segment::data_path(dir, id), FileKind::Data, mode, |f| {
            let r = f.record;
            max_seq = max_seq.max(r.seq);
            match r.kind {
                Kind::Put => keydir.recover_put(r.key, loc(id, f.offset, f.len, &r), &deleted),
                Kind::Delete => keydir.recover_delete(r.key, r.seq, &mut deleted),
                _ => {}
            }
            Ok(())
        })?;
        scanned += 1;
        if newest {
            newest_end = Some(end);
        }
    }
    drop(deleted);
    keydir.recount_live();

    let (log, generation) = match (ids.last(), newest_end) {
        (Some(&id), Some(end)) => {
            let path = segment::data_path(dir, id);
            let log = if end.headerless {
                crate::fs::remove_file(&path)?;
                let log = LogWriter::create(&path, FileKind::Data)?;
                crate::fs::sync_dir(dir)?;
                log
            } else {
                if end.torn_bytes() > 0 {
                    tracing::warn!(file = %path.display(), bytes = end.torn_bytes(), "cut off a torn write");
                }
                LogWriter::reopen(&path, end.valid_len)?
            };
            (log, id >> 32)
        }
        _ => {
            let generation = ids.last().map_or(1, |id| (id >> 32) + 1);
            let path = segment::data_path(dir, segment::active_id(generation));
            let log = LogWriter::create(&path, FileKind::Data)?;
            crate::fs::sync_dir(dir)?;
            (log, generation)
        }
    };
    let active_id = segment::active_id(generation);
    let mut segments = BTreeMap::new();
    for &id in ids
        .iter()
        .filter(|&&id| id != active_id)
        .chain(std::iter::once(&active_id))
    {
        segments.insert(id, Arc::new(Segment::open(dir, id)?));
    }
    let active = Arc::clone(&segments[&active_id]);
    Ok(Recovered {
        keydir,
        segments,
        log,
        active,
        next_seq: max_seq + 1,
        generation,
        hinted,
        scanned,
    })
}

fn is_active_id(id: SegId) -> bool {
    id & 0xffff_ffff == 0
}

fn loc(seg: SegId, offset: u64, len: u32, r: &codec::Record<'_>) -> Loc {
    Loc {
        seg,
        offset,
        len,
        seq: r.seq,
        expires_at: r.expires_at,
    }
}

/// The ids of the data segments in `dir`, oldest first.
fn data_segments(dir: &Path) -> Result<Vec<SegId>> {
    let mut ids: Vec<SegId> = crate::fs::list(dir)?
        .iter()
        .filter_map(|n| segment::parse_name(n))
        .filter(|(_, ext)| *ext == "data")
        .map(|(id, _)| id)
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Redoes a merge whose commit file exists; deletes the leftovers of one
/// that never committed.
fn finish_interrupted_merge(dir: &Path) -> Result<()> {
    let commit = dir.join(MERGE_FILE);
    if commit.exists() {
        let (mut inputs, mut outputs) = (Vec::new(), Vec::new());
        log::scan(&commit, FileKind::MergeCommit, TailMode::Sealed, |f| {
            let id = codec::read_u64(f.record.value)
                .ok_or_else(|| Error::corruption(&commit, f.offset, "bad segment id"))?;
            match f.record.key {
                b"in" => inputs.push(id),
                b"out" => outputs.push(id),
                _ => {
                    return Err(Error::corruption(
                        &commit,
                        f.offset,
                        "unknown merge commit entry",
                    ))
                }
            }
            Ok(())
        })?;
        tracing::info!(
            inputs = inputs.len(),
            outputs = outputs.len(),
            "finishing a merge interrupted after its commit"
        );
        merge::finish_files(dir, &inputs, &outputs)?;
    }
    for name in crate::fs::list(dir)? {
        if name.ends_with(".tmp") {
            tracing::info!(file = %name, "removing the leftover of an unfinished write");
            crate::fs::remove_file(&dir.join(&name))?;
        }
    }
    Ok(())
}

/// Loads segment `id`'s keys from its hint file. Returns false (and the
/// caller reads the data file instead) if there is no hint file or it is
/// not whole. Applying hints twice is harmless, so a hint file that breaks
/// half-way needs no undo.
fn load_hints(
    dir: &Path,
    id: SegId,
    keydir: &mut KeyDir,
    deleted: &HashMap<Box<[u8]>, u64>,
    max_seq: &mut u64,
) -> Result<bool> {
    let path = segment::hint_path(dir, id);
    if !path.exists() {
        return Ok(false);
    }
    let data_len = crate::fs::File::open_read(&segment::data_path(dir, id))?.len()?;
    let mut count = 0u64;
    let mut footer = None;
    let result = log::scan(&path, FileKind::Hint, TailMode::Sealed, |f| {
        let r = f.record;
        match r.kind {
            Kind::Hint => {
                let (Some(offset), Some(len)) = (
                    codec::read_u64(r.value),
                    r.value.get(8..).and_then(codec::read_u32),
                ) else {
                    return Err(Error::corruption(&path, f.offset, "bad hint"));
                };
                *max_seq = (*max_seq).max(r.seq);
                keydir.recover_put(r.key, loc(id, offset, len, &r), deleted);
                count += 1;
            }
            Kind::Meta if r.key == HINT_FOOTER_KEY => {
                footer = Some((
                    codec::read_u64(r.value),
                    r.value.get(8..).and_then(codec::read_u64),
                ))
            }
            _ => {
                return Err(Error::corruption(
                    &path,
                    f.offset,
                    "unexpected record in a hint file",
                ))
            }
        }
        Ok(())
    });
    let whole = match result {
        Ok(_) => footer == Some((Some(count), Some(data_len))),
        Err(e) => {
            tracing::warn!(error = %e, "hint file unusable; reading the data file instead");
            false
        }
    };
    if !whole {
        tracing::warn!(file = %path.display(), "hint file incomplete; reading the data file instead");
    }
    Ok(whole)
}

/// Verifies every checksum of a `hash` directory without changing it.
pub(crate) fn check(dir: &Path, progress: &mut Progress<'_>) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let names = crate::fs::list(dir)?;
    let files: Vec<(SegId, &str, &String)> = names
        .iter()
        .filter_map(|n| segment::parse_name(n).map(|(id, ext)| (id, ext, n)))
        .filter(|(_, ext, _)| *ext == "data" || *ext == "hint")
        .collect();
    let newest = files
        .iter()
        .filter(|(_, ext, _)| *ext == "data")
        .map(|(id, _, _)| *id)
        .max();
    let mut total = 0;
    for (_, _, name) in &files {
        total += std::fs::metadata(dir.join(name))
            .map_err(|e| Error::io(dir.join(name), e))?
            .len();
    }
    progress(0, total);
    let mut done = 0u64;
    for &(id, ext, name) in &files {
        let path = dir.join(name);
        let (kind, mode) = match ext {
            "data" if Some(id) == newest && is_active_id(id) => (FileKind::Data, TailMode::Newest),
            "data" => (FileKind::Data, TailMode::Sealed),
            _ => (FileKind::Hint, TailMode::Sealed),
        };
        let mut records = 0u64;
        let result = log::scan(&path, kind, mode, |f| {
            records += 1;
            if records % 4096 == 0 {
                progress(done + f.offset, total);
            }
            Ok(())
        });
        report.files += 1;
        report.records += records;
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
        let len = std::fs::metadata(&path)
            .map_err(|e| Error::io(&path, e))?
            .len();
        report.bytes += len;
        done += len;
        progress(done, total);
    }
    Ok(report)
}
