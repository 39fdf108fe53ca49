//! Merge: rewrite the closed segments without dead records.
//!
//! The commit protocol, and why a crash at any point is safe:
//!
//! 1. Rotate, so every existing segment is closed. These are the inputs;
//!    writes go on into the new active segment while the merge runs.
//! 2. Copy every record the keydir still points at into output segments
//!    named `*.data.tmp`, each with a hint file `*.hint.tmp`; sync them.
//!    A crash here leaves only `.tmp` files, which recovery deletes.
//! 3. Write the `MERGE` commit file (inputs and outputs), atomically by
//!    rename. This is the commit point: from here recovery finishes the
//!    merge (renames outputs, deletes inputs) instead of undoing it.
//! 4. Rename the outputs into place, repoint the keydir (only where it
//!    still points at the copied record; a newer write wins), drop the
//!    inputs from the segment map and unlink them, delete `MERGE`.
//!
//! Tombstones are never copied: every older record of their key is in an
//! input too and is dropped with them. Expired values are not copied either.
//! Readers are never blocked for long: they see either the old or the new
//! location of a key, and a reader still holding an input segment keeps
//! reading its open (unlinked) file.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::keydir::Loc;
use super::segment::{self, SegId, Segment};
use super::Inner;
use crate::codec::{Kind, Record};
use crate::db::now_ms;
use crate::error::Result;
use crate::log::{self, FileKind, LogWriter, TailMode};

/// The merge commit file's name.
pub(super) const MERGE_FILE: &str = "MERGE";

/// What a merge did.
#[derive(Debug, Default)]
pub(super) struct MergeReport {
    pub(super) inputs: usize,
    pub(super) outputs: usize,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
}

pub(super) fn merge(inner: &Inner) -> Result<MergeReport> {
    let _one_at_a_time = inner.merge_lock.lock();
    inner.check_writable()?;
    let (inputs, base) = {
        let mut w = inner.writer.lock();
        inner.rotate(&mut w)?;
        let inputs: Vec<Arc<Segment>> = inner
            .segments
            .read()
            .range(..w.active.id)
            .map(|(_, s)| Arc::clone(s))
            .collect();
        (inputs, segment::active_id(w.generation - 1))
    };
    let now = now_ms();
    let mut out = Outputs::new(inner, base);
    let mut moved: Vec<(Box<[u8]>, Loc, Loc)> = Vec::new();
    let mut expired: Vec<(Box<[u8]>, Loc)> = Vec::new();
    for seg in &inputs {
        log::scan(seg.path(), FileKind::Data, TailMode::Sealed, |found| {
            let rec = found.record;
            if rec.kind != Kind::Put {
                return Ok(());
            }
            let current = inner.keydir.read().map.get(rec.key).copied();
            match current {
                Some(cur) if cur.seg == seg.id && cur.offset == found.offset => {
                    if cur.expired(now) {
                        expired.push((rec.key.into(), cur));
                    } else {
                        let new = out.append(&rec)?;
                        moved.push((rec.key.into(), cur, new));
                    }
                }
                _ => {}
            }
            Ok(())
        })?;
    }
    let outputs = out.finish()?;
    let report = MergeReport {
        inputs: inputs.len(),
        outputs: outputs.len(),
        bytes_in: inputs.iter().map(|s| s.size()).sum(),
        bytes_out: out.bytes,
    };

    // Commit point.
    write_commit(inner, &inputs, &outputs)?;
    out.committed = true;
    if let Err(e) = install(inner, &inputs, &outputs, &moved, &expired) {
        // Committed on disk but not in memory: recovery will finish it.
        inner.poison(&e);
        return Err(e);
    }
    inner.counters.merges.fetch_add(1, Ordering::Relaxed);
    inner
        .counters
        .disk_bytes
        .fetch_add(report.bytes_out, Ordering::Relaxed);
    tracing::info!(
        inputs = report.inputs,
        outputs = report.outputs,
        bytes_in = report.bytes_in,
        bytes_out = report.bytes_out,
        "merge finished"
    );
    Ok(report)
}

fn write_commit(inner: &Inner, inputs: &[Arc<Segment>], outputs: &[SegId]) -> Result<()> {
    let mut buf = Vec::new();
    let ids = inputs
        .iter()
        .map(|s| (&b"in"[..], s.id))
        .chain(outputs.iter().map(|&id| (&b"out"[..], id)));
    for (key, id) in ids {
        meta(key, &id.to_le_bytes()).encode_into(&mut buf);
    }
    let tmp = inner.dir.join(format!("{MERGE_FILE}.tmp"));
    crate::fs::remove_file(&tmp)?;
    let mut w = LogWriter::create(&tmp, FileKind::MergeCommit)?;
    w.append(&buf)?;
    w.sync()?;
    crate::fs::rename(&tmp, &inner.dir.join(MERGE_FILE))?;
    crate::fs::sync_dir(&inner.dir)
}

/// Steps 4 of the protocol; also what recovery redoes after a crash.
pub(super) fn finish_files(
    dir: &std::path::Path,
    inputs: &[SegId],
    outputs: &[SegId],
) -> Result<()> {
    for &id in outputs {
        for path in [segment::data_path(dir, id), segment::hint_path(dir, id)] {
            let tmp = tmp_path(&path);
            if tmp.exists() {
                crate::fs::rename(&tmp, &path)?;
            }
        }
    }
    crate::fs::sync_dir(dir)?;
    for &id in inputs {
        crate::fs::remove_file(&segment::data_path(dir, id))?;
        crate::fs::remove_file(&segment::hint_path(dir, id))?;
    }
    crate::fs::remove_file(&dir.join(MERGE_FILE))?;
    crate::fs::sync_dir(dir)
}

fn install(
    inner: &Inner,
    inputs: &[Arc<Segment>],
    outputs: &[SegId],
    moved: &[(Box<[u8]>, Loc, Loc)],
    expired: &[(Box<[u8]>, Loc)],
) -> Result<()> {
    for path in outputs.iter().flat_map(|&id| {
        [
            segment::data_path(&inner.dir, id),
            segment::hint_path(&inner.dir, id),
        ]
    }) {
        crate::fs::rename(&tmp_path(&path), &path)?;
    }
    crate::fs::sync_dir(&inner.dir)?;
    {
        let mut segs = inner.segments.write();
        for &id in outputs {
            segs.insert(id, Arc::new(Segment::open(&inner.dir, id)?));
        }
    }
    // Repoint in chunks so that readers and writers get the lock between.
    for chunk in moved.chunks(4096) {
        let mut kd = inner.keydir.write();
        for (key, old, new) in chunk {
            kd.relocate(key, old, *new);
        }
    }
    {
        let mut kd = inner.keydir.write();
        for (key, old) in expired {
            kd.remove_if(key, old);
        }
        for s in inputs {
            kd.live.remove(&s.id);
        }
        #[cfg(debug_assertions)]
        for loc in kd.map.values() {
            debug_assert!(
                !inputs.iter().any(|s| s.id == loc.seg),
                "key left pointing at a merged segment"
            );
        }
    }
    {
        let mut segs = inner.segments.write();
        for s in inputs {
            segs.remove(&s.id);
        }
    }
    let input_ids: Vec<SegId> = inputs.iter().map(|s| s.id).collect();
    finish_files(&inner.dir, &input_ids, &[])
}

pub(super) fn tmp_path(path: &std::path::Path) -> std::path::PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    s.into()
}

fn meta<'a>(key: &'a [u8], value: &'a [u8]) -> Record<'a> {
    Record {
        kind: Kind::Meta,
        seq: 0,
        expires_at: 0,
        key,
        value,
    }
}

/// The key of the last record of every hint file: its value is the number
/// of hints (u64) and the length of the data file they describe (u64).
pub(super) const HINT_FOOTER_KEY: &[u8] = b"hint-footer";

/// Buffered writers for the merge's output segments and their hint files.
struct Outputs<'a> {
    inner: &'a Inner,
    base: SegId,
    current: Option<Output>,
    done: Vec<SegId>,
    bytes: u64,
    committed: bool,
}

struct Output {
    id: SegId,
    data: LogWriter,
    hint: LogWriter,
    data_buf: Vec<u8>,
    hint_buf: Vec<u8>,
    count: u64,
}

const FLUSH_AT: usize = 1 << 20;

impl Output {
    fn data_len(&self) -> u64 {
        self.data.len() + self.data_buf.len() as u64
    }

    fn flush(&mut self) -> Result<()> {
        self.data.append(&self.data_buf)?;
        self.hint.append(&self.hint_buf)?;
        self.data_buf.clear();
        self.hint_buf.clear();
        Ok(())
    }
}

impl<'a> Outputs<'a> {
    fn new(inner: &'a Inner, base: SegId) -> Self {
        Outputs {
            inner,
            base,
            current: None,
            done: Vec::new(),
            bytes: 0,
            committed: false,
        }
    }

    fn append(&mut self, rec: &Record<'_>) -> Result<Loc> {
        let len = rec.encoded_len() as u64;
        let full = self
            .current
            .as_ref()
            .is_some_and(|o| o.count > 0 && o.data_len() + len > self.inner.opts.segment_size);
        if full {
            self.seal()?;
        }
        if self.current.is_none() {
            let id = self.base + self.done.len() as u64 + 1;
            let dir = &self.inner.dir;
            self.current = Some(Output {
                id,
                data: LogWriter::create(&tmp_path(&segment::data_path(dir, id)), FileKind::Data)?,
                hint: LogWriter::create(&tmp_path(&segment::hint_path(dir, id)), FileKind::Hint)?,
                data_buf: Vec::new(),
                hint_buf: Vec::new(),
                count: 0,
            });
        }
        let Some(o) = self.current.as_mut() else {
            unreachable!("an output was just made")
        };
        let offset = o.data_len();
        rec.encode_into(&mut o.data_buf);
        let mut loc_bytes = [0u8; 12];
        loc_bytes[..8].copy_from_slice(&offset.to_le_bytes());
        loc_bytes[8..].copy_from_slice(&(len as u32).to_le_bytes());
        Record {
            kind: Kind::Hint,
            seq: rec.seq,
            expires_at: rec.expires_at,
            key: rec.key,
            value: &loc_bytes,
        }
        .encode_into(&mut o.hint_buf);
        o.count += 1;
        if o.data_buf.len() >= FLUSH_AT {
            o.flush()?;
        }
        Ok(Loc {
            seg: o.id,
            offset,
            len: len as u32,
            seq: rec.seq,
            expires_at: rec.expires_at,
        })
    }

    /// Flushes and syncs the current output and its hint file.
    fn seal(&mut self) -> Result<()> {
        let Some(mut o) = self.current.take() else {
            return Ok(());
        };
        let data_len = o.data_len();
        let mut footer = [0u8; 16];
        footer[..8].copy_from_slice(&o.count.to_le_bytes());
        footer[8..].copy_from_slice(&data_len.to_le_bytes());
        meta(HINT_FOOTER_KEY, &footer).encode_into(&mut o.hint_buf);
        o.flush()?;
        o.data.sync()?;
        o.hint.sync()?;
        self.bytes += o.data.len() + o.hint.len();
        self.done.push(o.id);
        Ok(())
    }

    fn finish(&mut self) -> Result<Vec<SegId>> {
        self.seal()?;
        crate::fs::sync_dir(&self.inner.dir)?;
        Ok(self.done.clone())
    }
}

impl Drop for Outputs<'_> {
    /// An unfinished merge leaves nothing behind.
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let ids = self
            .done
            .iter()
            .copied()
            .chain(self.current.as_ref().map(|o| o.id));
        for id in ids.collect::<Vec<_>>() {
            for path in [
                segment::data_path(&self.inner.dir, id),
                segment::hint_path(&self.inner.dir, id),
            ] {
                let _ = crate::fs::remove_file(&tmp_path(&path));
            }
        }
    }
}
