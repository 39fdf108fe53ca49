//! Append-only log files: a 16-byte file header followed by records of the
//! [`codec`]. One writer appends; a reader walks the records,
//! groups batches, cuts off a write torn at the tail of the newest log, and
//! reports damage anywhere else with the file and offset.

use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use crate::codec::{self, DecodeError, Kind, Record, HEADER_LEN};
use crate::error::{Error, Result};
use crate::fs::File;

/// Length of the header at the start of every log file.
pub const FILE_HEADER_LEN: u64 = 16;
/// The magic number at the start of every latchkey file.
pub const MAGIC: [u8; 8] = *b"LATCHKEY";
/// The version of the log format this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;

/// What a log file holds; stored in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum FileKind {
    /// A `hash` engine data segment.
    Data = 1,
    /// A `hash` engine merge commit.
    MergeCommit = 3,
    /// A `hash` engine key table of the layout before 2026-11-26 (8-byte
    /// slots and an entry array); recognised only to be set aside.
    OldKeyTable = 4,
    /// An `lsm` engine SSTable; not a log.
    Table = 5,
    /// An `lsm` engine manifest.
    Manifest = 6,
    /// An `lsm` engine write-ahead log.
    Wal = 7,
    /// A `hash` engine key table (the hint file of a merge); not a log.
    KeyTable = 8,
}

/// The 16-byte file header: magic, version, kind, CRC32C of the first 12 bytes.
pub fn file_header(kind: FileKind) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(&MAGIC);
    h[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[10..12].copy_from_slice(&(kind as u16).to_le_bytes());
    let crc = crc32c::crc32c(&h[..12]);
    h[12..].copy_from_slice(&crc.to_le_bytes());
    h
}

pub(crate) fn check_file_header(path: &Path, h: &[u8; 16], kind: FileKind) -> Result<()> {
    let crc = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
    if h[..8] != MAGIC || crc != crc32c::crc32c(&h[..12]) {
        return Err(Error::corruption(path, 0, "bad file header (not a latchkey log, or damaged)"));
    }
    let version = u16::from_le_bytes([h[8], h[9]]);
    if version != FORMAT_VERSION {
        return Err(Error::Incompatible {
            path: path.to_owned(),
            reason: format!("log format version {version}; this build reads version {FORMAT_VERSION}"),
        });
    }
    let k = u16::from_le_bytes([h[10], h[11]]);
    if k != kind as u16 {
        return Err(Error::corruption(path, 0, format!("file kind {k}, expected {}", kind as u16)));
    }
    Ok(())
}

/// Appends records to one log file.
///
/// A writer made with [`LogWriter::preallocate`] grows its file ahead of
/// the records in steps of [`PREALLOC_STEP`] (a sparse extension, as
/// `set_len` makes it), so most appends overwrite space the file already
/// has and their `fdatasync` has no file size to commit: on ext4 that is a
/// data write and a cache flush instead of a journal commit as well. The
/// file is always allocated *past* its last record, never exactly to it,
/// so a write torn inside preallocated space (a record's prefix, then
/// zeroes) is told apart from a whole record damaged at the end of a file
/// (see [`scan`]). [`LogWriter::seal`] cuts the zero tail off again.
#[derive(Debug)]
pub struct LogWriter {
    file: File,
    len: u64,
    /// Bytes the file has (its length); `len` or more.
    allocated: u64,
    /// Whether to grow the file ahead of appends.
    preallocate: bool,
    /// Records held by [`LogWriter::defer`], not written yet: the next
    /// append, flush, sync or seal writes them first.
    deferred: Vec<u8>,
}

/// How far ahead a preallocating [`LogWriter`] grows its file.
pub const PREALLOC_STEP: u64 = 1 << 20;

impl LogWriter {
    /// Creates a new log file with its header, made durable before return
    /// (the caller syncs the directory).
    pub fn create(path: &Path, kind: FileKind) -> Result<LogWriter> {
        let file = File::create_new(path)?;
        file.write_all_at(&file_header(kind), 0)?;
        file.sync_data()?;
        Ok(LogWriter {
            file,
            len: FILE_HEADER_LEN,
            allocated: FILE_HEADER_LEN,
            preallocate: false,
            deferred: Vec::new(),
        })
    }

    /// Continues an existing log whose valid records end at `len` (anything
    /// after is cut off now).
    pub fn reopen(path: &Path, len: u64) -> Result<LogWriter> {
        let file = File::open_rw(path)?;
        if file.len()? != len {
            file.set_len(len)?;
            file.sync_all()?;
        }
        Ok(LogWriter { file, len, allocated: len, preallocate: false, deferred: Vec::new() })
    }

    /// Makes later appends grow the file ahead of them (see the type's
    /// documentation). For the logs that take durable single writes: the
    /// newest `hash` segment and the write-ahead logs.
    pub fn preallocate(mut self) -> LogWriter {
        self.preallocate = true;
        self
    }

    /// Appends `buf` (whole encoded records) and returns the offset it
    /// starts at. Deferred records go first, in the same write.
    pub fn append(&mut self, buf: &[u8]) -> Result<u64> {
        if self.deferred.is_empty() {
            return self.write(buf);
        }
        let at = self.defer(buf);
        self.flush()?;
        Ok(at)
    }

    /// Holds `buf` (whole encoded records) to be written by the next
    /// append, flush, sync or seal, and returns the offset it will start
    /// at. Writers that wait for an fsync anyway defer their records, so
    /// the one that leads the fsync writes them all at once.
    pub fn defer(&mut self, buf: &[u8]) -> u64 {
        let at = self.end();
        self.deferred.extend_from_slice(buf);
        at
    }

    /// Writes the deferred records.
    pub fn flush(&mut self) -> Result<()> {
        self.flush_then(|_, _| ()).map(|_| ())
    }

    /// Like [`LogWriter::flush`], then calls `written` with the offset the
    /// written records start at and their bytes (if any were deferred and
    /// the write succeeded), and returns what it returns.
    pub fn flush_then<R>(&mut self, written: impl FnOnce(u64, &[u8]) -> R) -> Result<Option<R>> {
        if self.deferred.is_empty() {
            return Ok(None);
        }
        let at = self.len;
        let buf = std::mem::take(&mut self.deferred);
        let result = self.write(&buf).map(|_| written(at, &buf));
        self.deferred = buf;
        self.deferred.clear();
        result.map(Some)
    }

    fn write(&mut self, buf: &[u8]) -> Result<u64> {
        let at = self.len;
        let end = at + buf.len() as u64;
        if self.preallocate && end >= self.allocated {
            // Strictly past `end`: the file never ends exactly at a record.
            let grown = (end / PREALLOC_STEP + 1) * PREALLOC_STEP;
            self.file.set_len(grown)?;
            self.allocated = grown;
        }
        self.file.write_all_at(buf, at)?;
        self.len = end;
        self.allocated = self.allocated.max(end);
        Ok(at)
    }

    /// Makes everything appended or deferred so far durable.
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        self.file.sync_data()
    }

    /// Makes everything appended or deferred so far durable and cuts the
    /// file to its records: for a log that will not be appended to again
    /// (it becomes a sealed log, scanned strictly) or before a clean close.
    pub fn seal(&mut self) -> Result<()> {
        self.flush()?;
        if self.allocated > self.len {
            self.file.set_len(self.len)?;
            self.allocated = self.len;
            self.file.sync_all()
        } else {
            self.file.sync_data()
        }
    }

    /// Bytes of records written to the file, header included (deferred
    /// records not counted).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Where the next record goes: the written records and the deferred.
    pub fn end(&self) -> u64 {
        self.len + self.deferred.len() as u64
    }

    /// Whether records are deferred, not written yet.
    pub fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// True when no record has been appended or deferred.
    pub fn is_empty(&self) -> bool {
        self.end() == FILE_HEADER_LEN
    }

    /// The file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Gives up the writer, keeping the file open for reads. Records still
    /// deferred are dropped: [`LogWriter::flush`] first to keep them.
    pub fn into_file(self) -> File {
        self.file
    }
}

/// Whether a fault at the end of a log may be a torn write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailMode {
    /// The newest log, which a crash may have left with a torn last write:
    /// an unfinished record or batch at the very end is cut off.
    Newest,
    /// A sealed log: every fault is damage.
    Sealed,
}

/// What a scan found at the end of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEnd {
    /// Where the last whole record (or batch) ends; the log is valid up to here.
    pub valid_len: u64,
    /// The length of the file as found.
    pub file_len: u64,
    /// Where the written bytes end: the zeroes of preallocated space after
    /// it (to `file_len`) were never written.
    pub data_end: u64,
    /// True if the file had no header yet (created but never written).
    pub headerless: bool,
}

impl ScanEnd {
    /// Bytes of torn write after the valid records (not counting the
    /// never-written zeroes of preallocated space).
    pub fn torn_bytes(&self) -> u64 {
        self.data_end - self.valid_len
    }
}

/// A record found by [`scan`]: where it starts, how long it is, what it says.
pub struct Found<'a> {
    /// Offset of the record in the file.
    pub offset: u64,
    /// Encoded length of the record.
    pub len: u32,
    /// The record.
    pub record: Record<'a>,
}

/// Walks every committed record of the log at `path`, calling `f` for each
/// in order. Records of a batch are passed only once the batch's end marker
/// has been read, and batch markers themselves are not passed.
pub fn scan(
    path: &Path,
    kind: FileKind,
    mode: TailMode,
    mut f: impl FnMut(Found<'_>) -> Result<()>,
) -> Result<ScanEnd> {
    let file = File::open_read(path)?;
    let file_len = file.len()?;
    if file_len < FILE_HEADER_LEN {
        if mode == TailMode::Newest && is_blank_or_header_prefix(&file, file_len, kind)? {
            return Ok(ScanEnd { valid_len: 0, file_len, data_end: file_len, headerless: true });
        }
        return Err(Error::corruption(path, 0, "file is shorter than its header"));
    }
    let mut header = [0u8; 16];
    file.read_exact_at(&mut header, 0)?;
    check_file_header(path, &header, kind)?;

    let mut reader = BufReader::with_capacity(1 << 20, file.std());
    reader.seek(SeekFrom::Start(FILE_HEADER_LEN)).map_err(|e| Error::io(path, e))?;
    let mut pos = FILE_HEADER_LEN;
    let mut buf = Vec::new();
    let mut batch: Option<PendingBatch> = None;
    while pos < file_len {
        let decoded = match read_record(&mut reader, &mut buf, file_len - pos, path)? {
            Ok(()) => codec::decode(&buf).map(|(r, _)| r),
            Err(e) => Err(e),
        };
        let record = match decoded {
            Ok(r) => r,
            Err(e) => {
                let start = batch.as_ref().map_or(pos, |b| b.offset);
                return tail_fault(&file, pos, start, file_len, mode, e);
            }
        };
        let len = buf.len() as u32;
        match record.kind {
            Kind::BatchBegin => {
                if batch.is_some() {
                    return Err(Error::corruption(path, pos, "batch begins inside another batch"));
                }
                let count = codec::read_u32(record.value).unwrap_or(u32::MAX);
                batch = Some(PendingBatch { offset: pos, seq: record.seq, count, records: Vec::new() });
            }
            Kind::BatchEnd => {
                let Some(b) = batch.take() else {
                    return Err(Error::corruption(path, pos, "batch end without a batch"));
                };
                if b.seq != record.seq || b.count as usize != b.records.len() {
                    return Err(Error::corruption(path, pos, "batch end does not match its batch"));
                }
                for (offset, raw) in &b.records {
                    let (record, n) =
                        codec::decode(raw).map_err(|e| Error::corruption(path, *offset, e.to_string()))?;
                    f(Found { offset: *offset, len: n as u32, record })?;
                }
            }
            _ => match &mut batch {
                Some(b) => b.records.push((pos, buf.clone())),
                None => f(Found { offset: pos, len, record })?,
            },
        }
        pos += len as u64;
    }
    if let Some(b) = batch {
        return tail_fault(&file, pos, b.offset, file_len, mode, DecodeError::Incomplete { needed: None });
    }
    Ok(ScanEnd { valid_len: pos, file_len, data_end: file_len, headerless: false })
}

struct PendingBatch {
    offset: u64,
    seq: u64,
    count: u32,
    records: Vec<(u64, Vec<u8>)>,
}

/// Reads one whole record into `buf`, or says why it cannot.
fn read_record(
    reader: &mut BufReader<&std::fs::File>,
    buf: &mut Vec<u8>,
    remaining: u64,
    path: &Path,
) -> Result<std::result::Result<(), DecodeError>> {
    if remaining < HEADER_LEN as u64 {
        return Ok(Err(DecodeError::Incomplete { needed: None }));
    }
    let mut header = [0u8; HEADER_LEN];
    reader.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    let body = match codec::body_len(&header) {
        Ok(n) => n,
        Err(e) => return Ok(Err(e)),
    };
    let total = HEADER_LEN + body;
    if total as u64 > remaining {
        return Ok(Err(DecodeError::Incomplete { needed: Some(total) }));
    }
    buf.clear();
    buf.extend_from_slice(&header);
    buf.resize(total, 0);
    reader.read_exact(&mut buf[HEADER_LEN..]).map_err(|e| Error::io(path, e))?;
    Ok(Ok(()))
}

/// Decides whether a fault at `pos` is a torn write (returns where the log
/// is valid up to) or damage (returns the error). `valid` is where the last
/// whole record or batch before `pos` ends.
///
/// A torn write can only leave the file *shorter* than the write meant, or
/// with zeroes where data never landed (in preallocated space, everything
/// past the last append is zeroes). So in the newest log the fault is torn
/// when the bytes from `pos` are all zeroes, or when they are the start of
/// one record that never landed whole and nothing after them is a whole
/// record. A record landed whole when its claimed end lies inside the
/// written bytes, or when the file ends exactly where the record does (a
/// preallocated file never does). A sealed log has no torn writes.
fn tail_fault(file: &File, pos: u64, valid: u64, file_len: u64, mode: TailMode, e: DecodeError) -> Result<ScanEnd> {
    let damage = || Error::corruption(file.path(), pos, e.to_string());
    if mode == TailMode::Sealed || matches!(e, DecodeError::Malformed(_)) {
        return Err(damage());
    }
    let mut rest = vec![0u8; (file_len - pos) as usize];
    file.read_exact_at(&mut rest, pos)?;
    // The bytes that were ever written end at the last non-zero one.
    let written = rest.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    if written > 0 {
        // Where the record at `pos` says it ends (a header with an
        // impossible length claims no body).
        let claimed = match rest.first_chunk::<HEADER_LEN>() {
            None => usize::MAX,
            Some(h) => codec::body_len(h).map_or(HEADER_LEN, |body| HEADER_LEN + body),
        };
        let landed_whole = claimed <= written || claimed == rest.len();
        // Checked in this order, each only if the ones before found
        // nothing: past `landed_whole`, `written` is less than one
        // record's claimed length, so the scans below are bounded by it.
        // A damaged length field on a record that is otherwise whole (its
        // true end is where the file, or the written bytes, end; a record
        // may end in a few zero bytes of its own):
        let damaged_length = || {
            codec::valid_with_length(&rest)
                || (written..=rest.len().min(written + 32)).any(|k| codec::valid_with_length(&rest[..k]))
        };
        let later_record = || (1..written).any(|i| codec::decode(&rest[i..]).is_ok());
        if landed_whole || damaged_length() || later_record() {
            return Err(damage());
        }
    }
    let data_end = pos + written as u64;
    if data_end > valid {
        tracing::warn!(
            file = %file.path().display(),
            offset = valid,
            bytes = data_end - valid,
            "cutting off a torn write at the end of the newest log"
        );
    }
    Ok(ScanEnd { valid_len: valid, file_len, data_end, headerless: false })
}

/// A file shorter than a header is a crash artefact only if it is a prefix
/// of the header we would have written (or empty).
fn is_blank_or_header_prefix(file: &File, len: u64, kind: FileKind) -> Result<bool> {
    let mut b = vec![0u8; len as usize];
    file.read_exact_at(&mut b, 0)?;
    Ok(file_header(kind).starts_with(&b) || b.iter().all(|&x| x == 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn record(key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        Record { kind: Kind::Put, seq: 1, expires_at: 0, key, value }.encode_into(&mut out);
        out
    }

    fn keys(path: &Path, mode: TailMode) -> Result<(Vec<Vec<u8>>, ScanEnd)> {
        let mut keys = Vec::new();
        let end = scan(path, FileKind::Wal, mode, |f| {
            keys.push(f.record.key.to_vec());
            Ok(())
        })?;
        Ok((keys, end))
    }

    /// Deferred records reach the file only with the next append, flush,
    /// sync or seal, at the offsets `defer` gave, before the appended one.
    #[test]
    fn deferred_records_are_written_in_order_by_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wal");
        let mut w = LogWriter::create(&path, FileKind::Wal).unwrap().preallocate();
        let (r1, r2, r3) = (record(b"k1", b"one"), record(b"k2", b"two"), record(b"k3", b"three"));
        let at1 = w.defer(&r1);
        let at2 = w.defer(&r2);
        assert_eq!((at1, at2), (FILE_HEADER_LEN, FILE_HEADER_LEN + r1.len() as u64));
        assert_eq!((w.len(), w.end()), (FILE_HEADER_LEN, at2 + r2.len() as u64));
        assert!(w.has_deferred() && !w.is_empty());
        assert!(keys(&path, TailMode::Newest).unwrap().0.is_empty(), "deferred records written early");
        let at3 = w.append(&r3).unwrap();
        assert_eq!(at3, at2 + r2.len() as u64);
        assert!(!w.has_deferred());
        assert_eq!(keys(&path, TailMode::Newest).unwrap().0, [b"k1".to_vec(), b"k2".to_vec(), b"k3".to_vec()]);
        w.defer(&r1);
        w.seal().unwrap();
        assert_eq!(keys(&path, TailMode::Sealed).unwrap().0.len(), 4, "seal must write what was deferred");
    }

    /// A preallocating writer leaves zeroes after its records until it is
    /// sealed; the newest log reads them as unused space, a sealed one as
    /// damage, and sealing cuts them off.
    #[test]
    fn preallocated_space_is_read_as_unused_and_cut_at_seal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wal");
        let mut w = LogWriter::create(&path, FileKind::Wal).unwrap().preallocate();
        w.append(&record(b"k1", b"one")).unwrap();
        w.append(&record(b"k2", b"two")).unwrap();
        w.sync().unwrap();
        let file_len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(file_len, PREALLOC_STEP, "grown ahead of the records");
        let (got, end) = keys(&path, TailMode::Newest).unwrap();
        assert_eq!(got, [b"k1".to_vec(), b"k2".to_vec()]);
        assert_eq!((end.valid_len, end.torn_bytes(), end.file_len), (w.len(), 0, file_len));
        assert!(keys(&path, TailMode::Sealed).is_err(), "a sealed log has no zero tail");
        w.seal().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), w.len());
        assert_eq!(keys(&path, TailMode::Sealed).unwrap().0.len(), 2);
    }

    /// An append that ends exactly at the preallocated end grows the file
    /// again: the file never ends exactly where a record does.
    #[test]
    fn the_file_always_extends_past_the_last_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wal");
        let mut w = LogWriter::create(&path, FileKind::Wal).unwrap().preallocate();
        let rec = record(b"k", b"v");
        let fill = (PREALLOC_STEP - FILE_HEADER_LEN) as usize - rec.len();
        w.append(&record(b"big", &vec![1u8; fill - 29 - 3])).unwrap();
        assert_eq!(w.len() + rec.len() as u64, PREALLOC_STEP);
        w.append(&rec).unwrap();
        assert_eq!(w.len(), PREALLOC_STEP);
        assert!(std::fs::metadata(&path).unwrap().len() > w.len());
    }

    /// The last record of a preallocated newest log, torn (its end zeroes):
    /// cut off. Whole but damaged (a bit flipped before its last byte): damage.
    #[test]
    fn a_torn_last_record_is_cut_and_a_damaged_one_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wal");
        let mut w = LogWriter::create(&path, FileKind::Wal).unwrap().preallocate();
        w.append(&record(b"k1", b"one")).unwrap();
        let last = record(b"k2", &[5u8; 100]);
        let at = w.append(&last).unwrap();
        w.sync().unwrap();
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        for keep in 1..last.len() {
            file.write_all_at(&last, at).unwrap();
            file.write_all_at(&vec![0u8; last.len() - keep], at + keep as u64).unwrap();
            let (got, end) = keys(&path, TailMode::Newest).unwrap();
            assert_eq!(got, [b"k1".to_vec()], "torn at {keep}");
            let landed = last[..keep].iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            assert_eq!((end.valid_len, end.torn_bytes()), (at, landed as u64), "torn at {keep}");
        }
        for byte in 0..last.len() {
            let mut bad = last.clone();
            bad[byte] ^= 0x10;
            file.write_all_at(&bad, at).unwrap();
            let err = keys(&path, TailMode::Newest).err().unwrap_or_else(|| panic!("flip in byte {byte} not reported"));
            assert!(err.is_corruption(), "{err}");
        }
    }
}
