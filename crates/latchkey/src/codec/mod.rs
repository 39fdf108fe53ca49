//! The one binary record format. Every log in latchkey (hash data segments,
//! hint files, merge commits, and the write-ahead logs of later engines) is a
//! sequence of these records. The byte layout is drawn in `docs/FORMAT.md`.
//!
//! ```text
//! 0      4      8      9        17           25      29      29+klen
//! | len  | crc  | kind | seq    | expires_at | klen  | key   | value |
//!   u32    u32    u8     u64      u64          u32
//! ```
//!
//! `len` counts the bytes after the 8-byte header. `crc` is CRC32C over the
//! `len` field followed by the body, so a damaged length is caught too. All
//! integers are little-endian.

use crate::options::{MAX_KEY_LEN, MAX_VALUE_LEN};

/// Bytes before the body: length and checksum.
pub const HEADER_LEN: usize = 8;
/// Fixed part of the body: kind, seq, expires_at, key length.
pub const FIXED_BODY_LEN: usize = 1 + 8 + 8 + 4;
/// The largest body any record may have.
pub const MAX_BODY_LEN: usize = FIXED_BODY_LEN + MAX_KEY_LEN + MAX_VALUE_LEN;

/// What a record means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Set `key` to `value`.
    Put = 1,
    /// Delete `key` (a tombstone). No value.
    Delete = 2,
    /// The records up to the matching `BatchEnd` form one atomic batch.
    /// The value is the number of records in the batch (u32).
    BatchBegin = 3,
    /// Closes the batch opened by the last `BatchBegin` with the same seq.
    BatchEnd = 4,
    /// Engine metadata (merge commits); meaning by file kind. (Kind 5 is
    /// reserved: it was never written by a release.)
    Meta = 6,
    /// The store's highest fencing token for the lock named by `key`
    /// (value: u64 token). Written in the same batch as a fenced write.
    Fence = 7,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Put,
            2 => Kind::Delete,
            3 => Kind::BatchBegin,
            4 => Kind::BatchEnd,
            6 => Kind::Meta,
            7 => Kind::Fence,
            _ => return None,
        })
    }
}

/// One decoded record, borrowing its key and value from the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// What the record means.
    pub kind: Kind,
    /// The sequence number of the write (all records of a batch share one).
    pub seq: u64,
    /// Milliseconds since the Unix epoch after which the entry is gone; 0 = never.
    pub expires_at: u64,
    /// The key.
    pub key: &'a [u8],
    /// The value.
    pub value: &'a [u8],
}

impl<'a> Record<'a> {
    /// The number of bytes this record takes when encoded.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + FIXED_BODY_LEN + self.key.len() + self.value.len()
    }

    /// Appends the encoded record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let body_len = FIXED_BODY_LEN + self.key.len() + self.value.len();
        let start = out.len();
        out.reserve(HEADER_LEN + body_len);
        out.extend_from_slice(&(body_len as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.push(self.kind as u8);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.expires_at.to_le_bytes());
        out.extend_from_slice(&(self.key.len() as u32).to_le_bytes());
        out.extend_from_slice(self.key);
        out.extend_from_slice(self.value);
        let crc = checksum(&out[start..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Why bytes are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The buffer ends before the record does; `needed` is the whole
    /// record's length if the header could be read.
    Incomplete {
        /// Total bytes the record would take, when known.
        needed: Option<usize>,
    },
    /// The length field is impossible.
    BadLength(u32),
    /// The checksum does not match.
    BadChecksum,
    /// The checksum matches but the body is malformed (unknown kind, key
    /// longer than the body).
    Malformed(&'static str),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Incomplete { needed: Some(n) } => {
                write!(f, "record of {n} bytes is cut short")
            }
            DecodeError::Incomplete { needed: None } => write!(f, "record header is cut short"),
            DecodeError::BadLength(n) => write!(f, "impossible record length {n}"),
            DecodeError::BadChecksum => write!(f, "checksum mismatch"),
            DecodeError::Malformed(why) => write!(f, "malformed record: {why}"),
        }
    }
}

/// CRC32C over a whole encoded record (the crc field itself is skipped).
fn checksum(rec: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&rec[..4]);
    crc32c::crc32c_append(crc, &rec[HEADER_LEN..])
}

/// Reads the body length from a header, checking it is possible.
pub fn body_len(header: &[u8; HEADER_LEN]) -> Result<usize, DecodeError> {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    if (len as usize) < FIXED_BODY_LEN || len as usize > MAX_BODY_LEN {
        return Err(DecodeError::BadLength(len));
    }
    Ok(len as usize)
}

/// Decodes the record at the start of `buf`, returning it and its length.
pub fn decode(buf: &[u8]) -> Result<(Record<'_>, usize), DecodeError> {
    let rec = record_bytes(buf)?;
    let stored = u32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
    if checksum(rec) != stored {
        return Err(DecodeError::BadChecksum);
    }
    parse_body(&rec[HEADER_LEN..]).map(|r| (r, rec.len()))
}

/// The bytes of the record at the start of `buf` (header and body), by
/// its length field.
#[inline]
fn record_bytes(buf: &[u8]) -> Result<&[u8], DecodeError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Err(DecodeError::Incomplete { needed: None });
    };
    let total = HEADER_LEN + body_len(header)?;
    buf.get(..total).ok_or(DecodeError::Incomplete { needed: Some(total) })
}

/// Like [`decode`], but without computing the checksum: only for bytes
/// whose records were all checked by [`decode`] when they were read into
/// memory (a `hash` segment held whole). Lengths and the body's layout
/// are still checked, so no input can make it panic.
pub fn decode_checked_before(buf: &[u8]) -> Result<(Record<'_>, usize), DecodeError> {
    let rec = record_bytes(buf)?;
    parse_body(&rec[HEADER_LEN..]).map(|r| (r, rec.len()))
}

/// Checks whether `rec` would be a valid record if its length field said
/// `rec.len() - HEADER_LEN`. Used to tell a damaged length field (whose
/// record is otherwise whole) from a write torn at the end of a file.
pub fn valid_with_length(rec: &[u8]) -> bool {
    if rec.len() < HEADER_LEN + FIXED_BODY_LEN || rec.len() - HEADER_LEN > MAX_BODY_LEN {
        return false;
    }
    let len = ((rec.len() - HEADER_LEN) as u32).to_le_bytes();
    let stored = u32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len), &rec[HEADER_LEN..]);
    crc == stored
}

fn parse_body(body: &[u8]) -> Result<Record<'_>, DecodeError> {
    let kind = Kind::from_u8(body[0]).ok_or(DecodeError::Malformed("unknown record kind"))?;
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&body[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let seq = u64_at(1);
    let expires_at = u64_at(9);
    let klen = u32::from_le_bytes([body[17], body[18], body[19], body[20]]) as usize;
    let rest = &body[FIXED_BODY_LEN..];
    if klen > rest.len() || klen > MAX_KEY_LEN {
        return Err(DecodeError::Malformed("key length exceeds the record"));
    }
    let (key, value) = rest.split_at(klen);
    Ok(Record { kind, seq, expires_at, key, value })
}

/// A little-endian u64 from the start of `b`, if it has 8 bytes.
pub fn read_u64(b: &[u8]) -> Option<u64> {
    b.first_chunk::<8>().map(|c| u64::from_le_bytes(*c))
}

/// A little-endian u32 from the start of `b`, if it has 4 bytes.
pub fn read_u32(b: &[u8]) -> Option<u32> {
    b.first_chunk::<4>().map(|c| u32::from_le_bytes(*c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        Record { kind: Kind::Put, seq: 7, expires_at: 99, key: b"key", value: b"value" }.encode_into(&mut out);
        out
    }

    #[test]
    fn round_trip() {
        let buf = sample();
        let (rec, n) = decode(&buf).unwrap();
        assert_eq!(n, buf.len());
        assert_eq!((rec.kind, rec.seq, rec.expires_at), (Kind::Put, 7, 99));
        assert_eq!((rec.key, rec.value), (&b"key"[..], &b"value"[..]));
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let buf = sample();
        for cut in 0..buf.len() {
            assert!(matches!(decode(&buf[..cut]), Err(DecodeError::Incomplete { .. })), "cut {cut}");
        }
    }

    #[test]
    fn every_bit_flip_is_caught() {
        let buf = sample();
        for bit in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            match decode(&b) {
                Ok(_) => panic!("flip of bit {bit} decoded as a record"),
                Err(DecodeError::Incomplete { .. }) => {
                    // A flipped length that points past the end: the record,
                    // read at its true length, still proves the damage.
                    assert!(valid_with_length(&b), "bit {bit}");
                }
                Err(_) => {}
            }
        }
    }
}
