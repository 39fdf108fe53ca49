//! Merge: rewrite the closed segments without dead records, and write the
//! key table (the hint file) of what was kept.
//!
//! The commit protocol, and why a crash at any point is safe:
//!
//! 1. Rotate, so every existing segment is closed. These are the inputs;
//!    writes go on into the new active segment while the merge runs.
//! 2. Copy every record the keydir still points at into output segments
//!    named `*.data.tmp`, and write the key table of the copies as
//!    `*.keys.tmp`; sync them. A crash here leaves only `.tmp` files, which
//!    recovery deletes.
//! 3. Write the `MERGE` commit file (inputs, the old key tables, outputs,
//!    the new key table), atomically by rename. This is the commit point:
//!    from here recovery finishes the merge instead of undoing it.
//! 4. Rename the outputs and the table into place, install the table as the
//!    keydir's base (later writes stay in the overlay and win), drop the
//!    inputs from the segment map and unlink them and the old tables,
//!    delete `MERGE`.
//!
//! Tombstones are never copied: every older record of their key is in an
//! input too and is dropped with them. Expired values are not copied either.
//! Readers are never blocked for long: they see either the old or the new
//! location of a key, and a reader still holding an input segment keeps
//! reading its open (unlinked) file.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::keydir::Loc;
use super::segment::{self, SegId, Segment};
use super::table::KeyTable;
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
    pub(super) keys: usize,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
}

/// What a merge commit names. Ids of key tables are those of the merge's
/// base (its first output's id minus one).
#[derive(Debug, Default)]
pub(super) struct Commit {
    pub(super) inputs: Vec<SegId>,
    pub(super) old_tables: Vec<SegId>,
    pub(super) outputs: Vec<SegId>,
    pub(super) table: Option<SegId>,
}

/// Merges if the dead fraction calls for it (checked under the merge lock,
/// so a merge that just finished is not followed by a needless one).
pub(super) fn merge_if_due(inner: &Inner) -> Result<()> {
    let guard = inner.merge_lock.lock();
    if inner.durability.is_poisoned() || !inner.merge_due() {
        return Ok(());
    }
    merge_locked(inner, guard).map(|_| ())
}

/// Merges now.
pub(super) fn merge(inner: &Inner) -> Result<MergeReport> {
    merge_locked(inner, inner.merge_lock.lock())
}

fn merge_locked(inner: &Inner, _one_at_a_time: parking_lot::MutexGuard<'_, ()>) -> Result<MergeReport> {
    inner.durability.check_writable()?;
    let (inputs, base, cut_seq) = {
        let mut w = inner.writer.lock();
        inner.rotate(&mut w)?;
        let inputs: Vec<Arc<Segment>> =
            inner.segments.read().range(..w.active.id).map(|(_, s)| Arc::clone(s)).collect();
        (inputs, segment::active_id(w.generation - 1), w.next_seq)
    };
    let now = now_ms();
    let live = live_offsets(inner, &inputs, now);
    let mut out = Outputs::new(inner, base);
    let mut moved: Vec<(Box<[u8]>, Loc)> = Vec::new();
    for (seg, live) in inputs.iter().zip(&live) {
        // Only the live records are read and checked (in offset order);
        // most of an input's records are usually dead.
        seg.for_each_record_at(live, |_, rec| {
            moved.push((rec.key.into(), out.append(&rec)?));
            Ok(())
        })?;
    }
    out.finish()?;
    let table_path = segment::table_path(&inner.dir, base);
    let table = match KeyTable::encode_covering(&moved, &[], 0, |n| inner.spare.take_or_new(n)) {
        Some(bytes) => {
            let tmp = tmp_path(&table_path);
            out.files.push(tmp.clone());
            let f = crate::fs::File::create_new(&tmp)?;
            f.write_all_at(&bytes, 0)?;
            f.sync_data()?;
            Some(KeyTable::from_bytes(&table_path, bytes)?)
        }
        None => None,
    };
    crate::fs::sync_dir(&inner.dir)?;

    let commit = Commit {
        inputs: inputs.iter().map(|s| s.id).collect(),
        old_tables: table_ids(&inner.dir)?,
        outputs: out.done.clone(),
        table: table.is_some().then_some(base),
    };
    let report = MergeReport {
        inputs: inputs.len(),
        outputs: out.done.len(),
        keys: moved.len(),
        bytes_in: inputs.iter().map(|s| s.size()).sum(),
        bytes_out: out.bytes + table.as_ref().map_or(0, |t| t.byte_len() as u64),
    };
    write_commit(&inner.dir, &commit)?;
    out.committed = true;
    if let Err(e) = install(inner, &commit, &inputs, table, moved, cut_seq) {
        // Committed on disk but not in memory: recovery will finish it.
        inner.durability.poison(&e);
        return Err(e);
    }
    inner.expired_bytes.store(0, Ordering::Relaxed); // merged away; the next sweep recounts
    inner.counters.merges.fetch_add(1, Ordering::Relaxed);
    inner.counters.disk_bytes.fetch_add(report.bytes_out, Ordering::Relaxed);
    tracing::info!(
        inputs = report.inputs,
        outputs = report.outputs,
        keys = report.keys,
        bytes_in = report.bytes_in,
        bytes_out = report.bytes_out,
        "merge finished"
    );
    // The inputs' memory is given back as their last reader lets go; the
    // outputs (just written, so read from the page cache) take it.
    drop(inputs);
    if inner.opts.warm_cache {
        make_resident(inner, &commit.outputs);
    }
    Ok(report)
}

/// Reads the merge's `outputs` into memory whole, oldest first, while the
/// block cache can reserve them within the warm-up's limit (half the
/// cache, besides the ring of newest writes): without this a long-running store's reads would go back to
/// cached blocks after its first merge, as only the warm-up at open reads
/// segments whole. A failure only leaves a segment to be read in blocks.
fn make_resident(inner: &Inner, outputs: &[SegId]) {
    for id in outputs {
        let Some(seg) = inner.segments.read().get(id).cloned() else { continue };
        match seg.make_resident(&inner.cache, &inner.spare, inner.resident_limit) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, segment = id, "a merged segment stays on disk");
                return;
            }
        }
    }
}

/// The offsets of the records the keydir points at in each input (every
/// write from before the rotation is in one), sorted. Taken once, after
/// the rotation, instead of a keydir lookup per input record: a merge then
/// costs one pass over the keydir plus a sequential read, however many
/// dead records the inputs hold. A record made dead by a write after the
/// snapshot is still copied; that write's overlay entry is newer than the
/// merge's cut and hides the copy (see [`super::keydir::KeyDir::install_base`]).
/// A base entry hidden by a write while the snapshot is taken (see
/// [`Inner::for_each_loc`]) is left out, which is right as that write
/// hides it anyway.
fn live_offsets(inner: &Inner, inputs: &[Arc<Segment>], now: u64) -> Vec<Vec<(u64, u32)>> {
    let ids: Vec<SegId> = inputs.iter().map(|s| s.id).collect();
    debug_assert!(ids.is_sorted());
    let mut live: Vec<Vec<(u64, u32)>> = vec![Vec::new(); ids.len()];
    inner.for_each_loc(
        |loc| !loc.expired(now) && ids.binary_search(&loc.seg).is_ok(),
        |loc| {
            if let Ok(i) = ids.binary_search(&loc.seg) {
                live[i].push((loc.offset, loc.len));
            }
        },
    );
    for offsets in &mut live {
        offsets.sort_unstable();
    }
    live
}

/// The ids of the key tables in `dir`.
pub(super) fn table_ids(dir: &Path) -> Result<Vec<SegId>> {
    segment::list_ids(dir, "keys")
}

fn write_commit(dir: &Path, c: &Commit) -> Result<()> {
    let mut buf = Vec::new();
    let entries = [(&b"in"[..], &c.inputs), (b"old-table", &c.old_tables), (b"out", &c.outputs)];
    let table = c.table.map(|t| vec![t]).unwrap_or_default();
    for (key, ids) in entries.into_iter().chain([(&b"table"[..], &table)]) {
        for id in ids {
            Record { kind: Kind::Meta, seq: 0, expires_at: 0, key, value: &id.to_le_bytes() }.encode_into(&mut buf);
        }
    }
    let tmp = dir.join(format!("{MERGE_FILE}.tmp"));
    crate::fs::remove_file(&tmp)?;
    let mut w = LogWriter::create(&tmp, FileKind::MergeCommit)?;
    w.append(&buf)?;
    w.sync()?;
    crate::fs::rename(&tmp, &dir.join(MERGE_FILE))?;
    crate::fs::sync_dir(dir)
}

/// Reads a merge commit file.
pub(super) fn read_commit(path: &Path) -> Result<Commit> {
    let mut c = Commit::default();
    log::scan(path, FileKind::MergeCommit, TailMode::Sealed, |f| {
        let bad = || crate::Error::corruption(path, f.offset, "bad merge commit entry");
        let id = crate::codec::read_u64(f.record.value).ok_or_else(bad)?;
        match f.record.key {
            b"in" => c.inputs.push(id),
            b"old-table" => c.old_tables.push(id),
            b"out" => c.outputs.push(id),
            b"table" => c.table = Some(id),
            _ => return Err(bad()),
        }
        Ok(())
    })?;
    Ok(c)
}

/// The file steps of part 4; also what recovery redoes after a crash.
pub(super) fn finish_files(dir: &Path, c: &Commit) -> Result<()> {
    let new_files = c.outputs.iter().map(|&id| segment::data_path(dir, id));
    for path in new_files.chain(c.table.map(|t| segment::table_path(dir, t))) {
        let tmp = tmp_path(&path);
        if tmp.exists() {
            crate::fs::rename(&tmp, &path)?;
        }
    }
    crate::fs::sync_dir(dir)?;
    for &id in &c.inputs {
        crate::fs::remove_file(&segment::data_path(dir, id))?;
    }
    for &id in c.old_tables.iter().filter(|&&t| Some(t) != c.table) {
        crate::fs::remove_file(&segment::table_path(dir, id))?;
    }
    crate::fs::remove_file(&dir.join(MERGE_FILE))?;
    crate::fs::sync_dir(dir)
}

fn install(
    inner: &Inner,
    commit: &Commit,
    inputs: &[Arc<Segment>],
    table: Option<KeyTable>,
    moved: Vec<(Box<[u8]>, Loc)>,
    cut_seq: u64,
) -> Result<()> {
    let renames = commit.outputs.iter().map(|&id| segment::data_path(&inner.dir, id));
    for path in renames.chain(commit.table.map(|t| segment::table_path(&inner.dir, t))) {
        crate::fs::rename(&tmp_path(&path), &path)?;
    }
    crate::fs::sync_dir(&inner.dir)?;
    let opened = commit.outputs.iter().map(|&id| {
        let s = Segment::open(&inner.dir, id)?;
        s.seal();
        Ok(Arc::new(s))
    });
    let opened: Vec<Arc<Segment>> = opened.collect::<Result<_>>()?;
    inner.segments.write().extend(opened.into_iter().map(|s| (s.id, s)));
    // Without a table (keys over 4 GiB), the moved keys go in the overlay.
    let table = table.unwrap_or_default();
    let base_live = table.live_bytes();
    let mut kd = inner.keydir.write();
    let old = kd.install_base(table, base_live, cut_seq);
    if kd.base_is_empty() {
        for (key, loc) in &moved {
            kd.put_if_absent(key, *loc);
        }
    }
    drop(kd);
    inner.spare.give(old.into_buf());
    {
        let mut segs = inner.segments.write();
        for s in inputs {
            segs.remove(&s.id);
        }
    }
    // The renames are done, so this only deletes.
    finish_files(&inner.dir, commit)
}

pub(super) fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    s.into()
}

/// Buffered writers for the merge's output segments.
struct Outputs<'a> {
    inner: &'a Inner,
    base: SegId,
    current: Option<(LogWriter, SegId, Vec<u8>)>,
    done: Vec<SegId>,
    /// Every file made, removed again if the merge does not commit.
    files: Vec<PathBuf>,
    bytes: u64,
    committed: bool,
}

const FLUSH_AT: usize = 1 << 20;

impl<'a> Outputs<'a> {
    fn new(inner: &'a Inner, base: SegId) -> Self {
        Outputs { inner, base, current: None, done: Vec::new(), files: Vec::new(), bytes: 0, committed: false }
    }

    fn append(&mut self, rec: &Record<'_>) -> Result<Loc> {
        let len = rec.encoded_len() as u64;
        let limit = self.inner.opts.segment_size;
        if self.current.as_ref().is_some_and(|(w, _, buf)| buf.len() as u64 + w.len() + len > limit && !w.is_empty()) {
            self.seal()?;
        }
        if self.current.is_none() {
            let id = self.base + self.done.len() as u64 + 1;
            let path = tmp_path(&segment::data_path(&self.inner.dir, id));
            self.files.push(path.clone());
            self.current = Some((LogWriter::create(&path, FileKind::Data)?, id, Vec::new()));
        }
        let Some((w, id, buf)) = self.current.as_mut() else { unreachable!("an output was just made") };
        let offset = w.len() + buf.len() as u64;
        rec.encode_into(buf);
        if buf.len() >= FLUSH_AT {
            w.append(buf)?;
            buf.clear();
        }
        Ok(Loc { seg: *id, offset, len: len as u32, seq: rec.seq, expires_at: rec.expires_at })
    }

    /// Flushes and syncs the current output.
    fn seal(&mut self) -> Result<()> {
        let Some((mut w, id, buf)) = self.current.take() else { return Ok(()) };
        w.append(&buf)?;
        w.sync()?;
        self.bytes += w.len();
        self.done.push(id);
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.seal()
    }
}

impl Drop for Outputs<'_> {
    /// A merge that does not commit leaves nothing behind.
    fn drop(&mut self) {
        if !self.committed {
            for path in &self.files {
                let _ = crate::fs::remove_file(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Db, Engine, Options};
    use std::collections::BTreeMap;

    fn names(dir: &Path, ext: &str) -> Vec<(SegId, String)> {
        let mut v: Vec<_> = crate::fs::list(dir)
            .unwrap()
            .into_iter()
            .filter_map(|n| segment::parse_name(&n).filter(|(_, e)| *e == ext).map(|(id, _)| (id, n.clone())))
            .collect();
        v.sort();
        v
    }

    fn copy(from: &Path, to: &Path, name: &str, as_name: &str) {
        std::fs::copy(from.join(name), to.join(as_name)).unwrap();
    }

    /// Builds the directory a crash would leave in the middle of a merge:
    /// the pre-merge files plus the merge's outputs as `.tmp`, and (if
    /// `committed`) the commit file. Returns it with the expected contents.
    fn interrupted_merge(committed: bool) -> (tempfile::TempDir, BTreeMap<Vec<u8>, Vec<u8>>) {
        let opts = Options { segment_size: 4096, merge_min_dead_bytes: u64::MAX, ..Options::new(Engine::Hash) };
        let before = tempfile::tempdir().unwrap();
        let mut model = BTreeMap::new();
        {
            let db = Db::open(before.path(), opts.clone()).unwrap();
            for round in 0..3u8 {
                for k in 0..60u8 {
                    db.put([k], [round; 90]).unwrap();
                    model.insert(vec![k], vec![round; 90]);
                }
                if round == 0 {
                    db.compact().unwrap(); // so that an old key table exists too
                }
            }
            for k in 0..10u8 {
                db.delete([k]).unwrap();
                model.remove(&vec![k]);
            }
        }
        let after = tempfile::tempdir().unwrap();
        for (_, n) in names(before.path(), "data").into_iter().chain(names(before.path(), "keys")) {
            copy(before.path(), after.path(), &n, &n);
        }
        std::fs::copy(before.path().join(crate::IDENTITY_FILE), after.path().join(crate::IDENTITY_FILE)).unwrap();
        Db::open(after.path(), opts).unwrap().compact().unwrap();

        let crashed = before;
        let old_data: Vec<SegId> = names(crashed.path(), "data").into_iter().map(|(id, _)| id).collect();
        let old_tables: Vec<SegId> = names(crashed.path(), "keys").into_iter().map(|(id, _)| id).collect();
        let new_tables: Vec<(SegId, String)> =
            names(after.path(), "keys").into_iter().filter(|(id, _)| !old_tables.contains(id)).collect();
        let (table_id, table_name) = new_tables.last().cloned().unwrap();
        let outputs: Vec<(SegId, String)> = names(after.path(), "data")
            .into_iter()
            .filter(|(id, _)| id & 0xffff_ffff != 0 && (id >> 32) == (table_id >> 32))
            .collect();
        assert!(!outputs.is_empty());
        for (_, n) in &outputs {
            copy(after.path(), crashed.path(), n, &format!("{n}.tmp"));
        }
        copy(after.path(), crashed.path(), &table_name, &format!("{table_name}.tmp"));
        if committed {
            let commit = Commit {
                inputs: old_data,
                old_tables,
                outputs: outputs.iter().map(|(id, _)| *id).collect(),
                table: Some(table_id),
            };
            write_commit(crashed.path(), &commit).unwrap();
        }
        (crashed, model)
    }

    fn assert_holds(dir: &Path, model: &BTreeMap<Vec<u8>, Vec<u8>>) {
        let db = Db::open(dir, Options::new(Engine::Hash)).unwrap();
        let got: BTreeMap<Vec<u8>, Vec<u8>> = db.scan::<&[u8], _>(..).unwrap().map(|r| r.unwrap()).collect();
        assert_eq!(&got, model);
        let leftovers: Vec<String> =
            crate::fs::list(dir).unwrap().into_iter().filter(|n| n.ends_with(".tmp") || n == MERGE_FILE).collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert_eq!(names(dir, "keys").len(), 1, "exactly one key table should remain");
    }

    #[test]
    fn crash_after_merge_commit_is_finished_by_recovery() {
        let (dir, model) = interrupted_merge(true);
        assert_holds(dir.path(), &model);
    }

    #[test]
    fn crash_before_merge_commit_is_undone_by_recovery() {
        let (dir, model) = interrupted_merge(false);
        assert_holds(dir.path(), &model);
    }
}
