//! The file layer. Every engine reads and writes its files through these
//! functions and the [`File`] type: a thin, error-annotating wrapper over
//! `std::fs`, and the one seam where tests inject faults ([`faults`]).

pub mod faults;

use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// An open file that remembers its path, so every error can name it.
#[derive(Debug)]
pub struct File {
    path: PathBuf,
    file: fs::File,
}

impl File {
    /// Creates a new file for reading and writing; fails if it exists.
    pub fn create_new(path: &Path) -> Result<File> {
        let file =
            OpenOptions::new().read(true).write(true).create_new(true).open(path).map_err(|e| Error::io(path, e))?;
        Ok(File { path: path.to_owned(), file })
    }

    /// Opens an existing file for reading and writing.
    pub fn open_rw(path: &Path) -> Result<File> {
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| Error::io(path, e))?;
        Ok(File { path: path.to_owned(), file })
    }

    /// Opens an existing file for reading.
    pub fn open_read(path: &Path) -> Result<File> {
        let file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(File { path: path.to_owned(), file })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads exactly `buf.len()` bytes at `offset`. Reading past the end is
    /// reported as damage: callers only read what an index says is there.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == ErrorKind::UnexpectedEof {
                Error::corruption(&self.path, offset, format!("file ends before the {} bytes expected here", buf.len()))
            } else {
                Error::io(&self.path, e)
            }
        })
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if faults::active() {
            let (allowed, fault) = faults::before_write(&self.path, &self.file, offset, buf.len());
            if let Some(e) = fault {
                // A torn write: part of it may land before the error.
                if allowed > 0 {
                    let _ = self.file.write_all_at(&buf[..allowed], offset);
                }
                return Err(Error::io(&self.path, e));
            }
        }
        self.file.write_all_at(buf, offset).map_err(|e| Error::io(&self.path, e))
    }

    /// Flushes the file's data (and the metadata needed to read it) to
    /// stable storage.
    pub fn sync_data(&self) -> Result<()> {
        if faults::active() {
            if let Some(e) = faults::before_sync(&self.path, &self.file) {
                return Err(Error::io(&self.path, e));
            }
        }
        self.file.sync_data().map_err(|e| Error::io(&self.path, e))
    }

    /// Flushes the file's data and all its metadata (its length after a
    /// truncation) to stable storage.
    pub fn sync_all(&self) -> Result<()> {
        if faults::active() {
            if let Some(e) = faults::before_sync(&self.path, &self.file) {
                return Err(Error::io(&self.path, e));
            }
        }
        self.file.sync_all().map_err(|e| Error::io(&self.path, e))
    }

    /// The file's current length.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> Result<u64> {
        Ok(self.file.metadata().map_err(|e| Error::io(&self.path, e))?.len())
    }

    /// Cuts or extends the file to `len` bytes.
    pub fn set_len(&self, len: u64) -> Result<()> {
        self.file.set_len(len).map_err(|e| Error::io(&self.path, e))
    }

    /// The standard library file, for buffered sequential reads.
    pub fn std(&self) -> &fs::File {
        &self.file
    }
}

/// Makes the creation, renaming and removal of files in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    if faults::active() {
        if let Some(e) = faults::before_dir_sync(dir) {
            return Err(Error::io(dir, e));
        }
    }
    let d = fs::File::open(dir).map_err(|e| Error::io(dir, e))?;
    d.sync_all().map_err(|e| Error::io(dir, e))
}

/// Renames `from` to `to` (atomic within one file system).
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|e| Error::io(from, e))
}

/// Removes a file; a file that is already gone is not an error.
pub fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

/// The names of the files in `dir`.
pub fn list(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Writes `contents` to `path` atomically: a temporary file, fsync, rename,
/// fsync of the directory.
pub fn write_atomic(dir: &Path, name: &str, contents: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    remove_file(&tmp)?;
    let f = File::create_new(&tmp)?;
    f.write_all_at(contents, 0)?;
    f.sync_data()?;
    rename(&tmp, &dir.join(name))?;
    sync_dir(dir)
}

/// An exclusive lock on a data directory, held for as long as this value
/// lives. A second lock on the same directory fails, from this process or
/// another.
#[derive(Debug)]
pub struct DirLock {
    _file: fs::File,
}

/// The lock file's name inside a data directory.
pub const LOCK_FILE: &str = "LOCK";

/// Takes the exclusive lock on `dir`.
pub fn lock_dir(dir: &Path) -> Result<DirLock> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(DirLock { _file: file }),
        Err(fs::TryLockError::WouldBlock) => Err(Error::Locked { path: dir.to_owned() }),
        Err(fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}
