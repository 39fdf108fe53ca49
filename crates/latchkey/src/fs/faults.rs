//! Fault injection for tests: make the files of one directory fail their
//! writes or fsyncs, and simulate a power loss that drops every byte not
//! yet fsynced. Faults are registered per directory, so tests running in
//! parallel do not disturb each other; with none registered the cost is one
//! relaxed atomic load per write or sync.
//!
//! The power-loss model is that of a file system that orders metadata after
//! data: a file keeps the length it had at its last successful `sync_data`;
//! bytes appended since are lost, and bytes overwritten in place since get
//! their old contents back (the write never reached the disk).
#![doc(hidden)]

use std::collections::BTreeMap;
use std::io::{Error, ErrorKind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// What to do to one directory's files.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Every fsync (of a file or of the directory) fails with EIO.
    pub fail_syncs: bool,
    /// After this many more fsyncs succeed, every fsync fails with EIO.
    pub sync_budget: Option<u64>,
    /// After this many more bytes are written, writes fail (the write that
    /// crosses the budget is torn: its bytes up to the budget land).
    pub write_budget: Option<u64>,
    /// The error writes fail with once the budget is spent: `StorageFull`
    /// (ENOSPC) or `Other` (EIO).
    pub write_error: Option<ErrorKind>,
}

struct Registry {
    plans: Vec<(PathBuf, Plan)>,
    /// Per file under a registered directory: the length it had at its last
    /// fsync (or when first seen).
    durable: BTreeMap<PathBuf, u64>,
    /// Per file: (offset, old bytes) of overwrites made since its last fsync.
    overwritten: BTreeMap<PathBuf, Vec<(u64, Vec<u8>)>>,
}

static ACTIVE: AtomicBool = AtomicBool::new(false);
static REGISTRY: Mutex<Registry> =
    Mutex::new(Registry { plans: Vec::new(), durable: BTreeMap::new(), overwritten: BTreeMap::new() });

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

fn plan_index(r: &Registry, path: &Path) -> Option<usize> {
    r.plans.iter().position(|(dir, _)| path.starts_with(dir))
}

/// Starts tracking `dir` (fsyncs and lengths) with `plan`; replaces an
/// earlier plan for it.
pub fn set(dir: &Path, plan: Plan) {
    let mut r = registry();
    r.plans.retain(|(d, _)| d != dir);
    r.plans.push((dir.to_owned(), plan));
    ACTIVE.store(true, Ordering::Relaxed);
}

/// Stops injecting faults into `dir` (and forgets what it tracked).
pub fn clear(dir: &Path) {
    let mut r = registry();
    r.plans.retain(|(d, _)| d != dir);
    r.durable.retain(|p, _| !p.starts_with(dir));
    r.overwritten.retain(|p, _| !p.starts_with(dir));
    if r.plans.is_empty() {
        ACTIVE.store(false, Ordering::Relaxed);
    }
}

/// Simulates a power loss in `dir`: every tracked file gets back the bytes
/// it had at its last fsync where they were overwritten since, and is cut
/// back to the length it had then. Call it after the database is closed or
/// dropped. Tracking goes on.
pub fn power_loss(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut r = registry();
    for (path, writes) in r.overwritten.iter_mut().filter(|(p, _)| p.starts_with(dir)) {
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) {
            for (offset, old) in writes.drain(..).rev() {
                f.write_all_at(&old, offset)?;
            }
        }
    }
    for (path, &len) in r.durable.iter().filter(|(p, _)| p.starts_with(dir)) {
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) {
            if f.metadata()?.len() > len {
                f.set_len(len)?;
            }
        }
    }
    Ok(())
}

fn note_seen(r: &mut Registry, path: &Path, file: &std::fs::File) {
    if !r.durable.contains_key(path) {
        let len = file.metadata().map_or(0, |m| m.len());
        r.durable.insert(path.to_owned(), len);
    }
}

/// Before a write of `len` bytes at `offset`: how many may land, and the
/// error if the write must fail.
pub(crate) fn before_write(path: &Path, file: &std::fs::File, offset: u64, len: usize) -> (usize, Option<Error>) {
    use std::os::unix::fs::FileExt;
    let mut r = registry();
    let Some(i) = plan_index(&r, path) else { return (len, None) };
    note_seen(&mut r, path, file);
    let durable = r.durable.get(path).copied().unwrap_or(0);
    if offset < durable {
        let n = (durable - offset).min(len as u64) as usize;
        let mut old = vec![0u8; n];
        if file.read_exact_at(&mut old, offset).is_ok() {
            r.overwritten.entry(path.to_owned()).or_default().push((offset, old));
        }
    }
    let plan = &mut r.plans[i].1;
    match plan.write_budget {
        Some(budget) if (len as u64) > budget => {
            plan.write_budget = Some(0);
            let kind = plan.write_error.unwrap_or(ErrorKind::Other);
            (budget as usize, Some(Error::new(kind, "injected write failure")))
        }
        Some(budget) => {
            plan.write_budget = Some(budget - len as u64);
            (len, None)
        }
        None => (len, None),
    }
}

/// Before an fsync: the error if it must fail; otherwise the file's current
/// length becomes durable.
pub(crate) fn before_sync(path: &Path, file: &std::fs::File) -> Option<Error> {
    let mut r = registry();
    let i = plan_index(&r, path)?;
    if spend_sync(&mut r.plans[i].1) {
        return Some(Error::other("injected fsync failure"));
    }
    let len = file.metadata().map_or(0, |m| m.len());
    r.durable.insert(path.to_owned(), len);
    r.overwritten.remove(path);
    None
}

pub(crate) fn before_dir_sync(dir: &Path) -> Option<Error> {
    let mut r = registry();
    let i = plan_index(&r, dir)?;
    spend_sync(&mut r.plans[i].1).then(|| Error::other("injected fsync failure"))
}

/// Whether the next fsync under `plan` fails.
fn spend_sync(plan: &mut Plan) -> bool {
    match plan.sync_budget {
        Some(0) => true,
        Some(n) => {
            plan.sync_budget = Some(n - 1);
            plan.fail_syncs
        }
        None => plan.fail_syncs,
    }
}
