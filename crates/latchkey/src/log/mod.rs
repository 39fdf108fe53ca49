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
    /// A `hash` engine key table (the hint file of a merge); not a log.
    KeyTable = 4,
    /// An `lsm` engine SSTable; not a log.
    Table = 5,
    /// An `lsm` engine manifest.
    Manifest = 6,
    /// An `lsm` engine write-ahead log.
    Wal = 7,
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

fn check_file_header(path: &Path, h: &[u8; 16], kind: FileKind) -> Result<()> {
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
#[derive(Debug)]
pub struct LogWriter {
    file: File,
    len: u64,
}

impl LogWriter {
    /// Creates a new log file with its header, made durable before return
    /// (the caller syncs the directory).
    pub fn create(path: &Path, kind: FileKind) -> Result<LogWriter> {
        let file = File::create_new(path)?;
        file.write_all_at(&file_header(kind), 0)?;
        file.sync_data()?;
        Ok(LogWriter { file, len: FILE_HEADER_LEN })
    }

    /// Continues an existing log whose valid records end at `len` (anything
    /// after is cut off now).
    pub fn reopen(path: &Path, len: u64) -> Result<LogWriter> {
        let file = File::open_rw(path)?;
        if file.len()? != len {
            file.set_len(len)?;
            file.sync_data()?;
        }
        Ok(LogWriter { file, len })
    }

    /// Appends `buf` (whole encoded records) and returns the offset it starts at.
    pub fn append(&mut self, buf: &[u8]) -> Result<u64> {
        let at = self.len;
        self.file.write_all_at(buf, at)?;
        self.len += buf.len() as u64;
        Ok(at)
    }

    /// Makes everything appended so far durable.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data()
    }

    /// Bytes in the file, header included.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when no record has been appended.
    pub fn is_empty(&self) -> bool {
        self.len == FILE_HEADER_LEN
    }

    /// The file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Gives up the writer, keeping the file open for reads.
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
    /// True if the file had no header yet (created but never written).
    pub headerless: bool,
}

impl ScanEnd {
    /// Bytes of torn write after the valid records.
    pub fn torn_bytes(&self) -> u64 {
        self.file_len - self.valid_len
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
            return Ok(ScanEnd { valid_len: 0, file_len, headerless: true });
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
    Ok(ScanEnd { valid_len: pos, file_len, headerless: false })
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
/// is valid up to) or damage (returns the error).
///
/// A torn write can only leave the file *shorter* than the write meant, or
/// with zeroes where data never landed. So the fault is torn only when, in
/// the newest log, nothing after `pos` is a whole record and the bytes from
/// `pos` are not a whole record with a damaged length or checksum.
fn tail_fault(file: &File, pos: u64, valid: u64, file_len: u64, mode: TailMode, e: DecodeError) -> Result<ScanEnd> {
    let damage = || Error::corruption(file.path(), pos, e.to_string());
    if mode == TailMode::Sealed {
        return Err(damage());
    }
    let mut rest = vec![0u8; (file_len - pos) as usize];
    file.read_exact_at(&mut rest, pos)?;
    let zeroes = rest.iter().all(|&b| b == 0);
    let whole_but_damaged = !matches!(e, DecodeError::Incomplete { .. }) || codec::valid_with_length(&rest);
    if !zeroes && (whole_but_damaged || (1..rest.len()).any(|i| codec::decode(&rest[i..]).is_ok())) {
        return Err(damage());
    }
    tracing::warn!(
        file = %file.path().display(),
        offset = valid,
        bytes = file_len - valid,
        "cutting off a torn write at the end of the newest log"
    );
    Ok(ScanEnd { valid_len: valid, file_len, headerless: false })
}

/// A file shorter than a header is a crash artefact only if it is a prefix
/// of the header we would have written (or empty).
fn is_blank_or_header_prefix(file: &File, len: u64, kind: FileKind) -> Result<bool> {
    let mut b = vec![0u8; len as usize];
    file.read_exact_at(&mut b, 0)?;
    Ok(file_header(kind).starts_with(&b) || b.iter().all(|&x| x == 0))
}
