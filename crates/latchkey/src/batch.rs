//! Atomic write batches.

use crate::codec::{Kind, Record};
use crate::error::{Error, Result};
use crate::options::{MAX_BATCH_BYTES, MAX_KEY_LEN, MAX_VALUE_LEN};

/// One change in a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    Put { key: Vec<u8>, value: Vec<u8>, expires_at: u64 },
    Delete { key: Vec<u8> },
}

impl Op {
    pub(crate) fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// One change of a [`WriteBatch`], as [`WriteBatch::changes`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    /// `key` is set to `value`; it expires at `expires_at` (milliseconds
    /// since the Unix epoch; 0 = never).
    Put {
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
        /// When it expires (0 = never).
        expires_at: u64,
    },
    /// `key` is deleted.
    Delete {
        /// The key.
        key: &'a [u8],
    },
}

/// A set of writes applied all or nothing: after a crash, either every
/// change of the batch is there or none is.
///
/// ```
/// # fn main() -> latchkey::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// let db = latchkey::Db::open(dir.path(), latchkey::Options::default())?;
/// let mut batch = latchkey::WriteBatch::new();
/// batch.put(b"from", b"90").delete(b"pending").put(b"to", b"110");
/// db.write(batch)?;
/// assert_eq!(db.get(b"to")?.as_deref(), Some(&b"110"[..]));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    pub(crate) ops: Vec<Op>,
    pub(crate) fences: Vec<Fence>,
    bytes: usize,
    /// Set by latchkey itself for writes to its reserved keys.
    pub(crate) system: bool,
}

/// A fencing token carried by a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fence {
    pub(crate) lock: Vec<u8>,
    pub(crate) token: u64,
    /// Reject the batch if the token is below the highest seen (a client's
    /// fenced write); otherwise only raise the highest (a new grant).
    pub(crate) check: bool,
}

/// Keys that start with this prefix are latchkey's own (fencing tokens,
/// lock grants). User writes to them are refused, and scans skip them.
pub const RESERVED_PREFIX: &[u8] = b"\xff\xfflatchkey\x00";

/// Whether `key` is in latchkey's reserved keyspace.
pub fn is_reserved(key: &[u8]) -> bool {
    key.starts_with(RESERVED_PREFIX)
}

pub(crate) fn fence_key(lock: &[u8]) -> Vec<u8> {
    [RESERVED_PREFIX, b"fence\x00", lock].concat()
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> &mut Self {
        self.put_with_expiry(key, value, 0)
    }

    /// Sets `key` to `value` until `expires_at` (milliseconds since the Unix
    /// epoch; 0 means never). Once that time has passed the key reads as
    /// absent, and merge or compaction reclaims its space.
    pub fn put_with_expiry(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>, expires_at: u64) -> &mut Self {
        let (key, value) = (key.as_ref().to_vec(), value.as_ref().to_vec());
        self.bytes += key.len() + value.len();
        self.ops.push(Op::Put { key, value, expires_at });
        self
    }

    /// Like [`WriteBatch::put_with_expiry`], taking the key and value as
    /// they are (no copy).
    pub fn put_owned(&mut self, key: Vec<u8>, value: Vec<u8>, expires_at: u64) -> &mut Self {
        self.bytes += key.len() + value.len();
        self.ops.push(Op::Put { key, value, expires_at });
        self
    }

    /// Deletes `key` (no error if it is absent).
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> &mut Self {
        let key = key.as_ref().to_vec();
        self.bytes += key.len();
        self.ops.push(Op::Delete { key });
        self
    }

    /// Makes the batch a *fenced write*: it is applied only if `token` is
    /// at least the highest fencing token the store has seen for `lock`,
    /// and that highest token is raised to `token` in the same atomic
    /// batch. Otherwise the whole batch is refused with
    /// [`crate::Error::StaleToken`], naming both tokens.
    ///
    /// ```
    /// # fn main() -> latchkey::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = latchkey::Db::open(dir.path(), latchkey::Options::default())?;
    /// let mut b = latchkey::WriteBatch::new();
    /// b.put(b"report", b"by holder 34").fence(b"report-lock", 34);
    /// db.write(b)?;
    /// let mut stale = latchkey::WriteBatch::new();
    /// stale.put(b"report", b"by a paused holder 33").fence(b"report-lock", 33);
    /// assert!(matches!(db.write(stale), Err(latchkey::Error::StaleToken { highest: 34, .. })));
    /// # Ok(()) }
    /// ```
    pub fn fence(&mut self, lock: impl AsRef<[u8]>, token: u64) -> &mut Self {
        self.fences.push(Fence { lock: lock.as_ref().to_vec(), token, check: true });
        self
    }

    /// Raises `lock`'s highest token to `token` without checking (grants).
    pub(crate) fn raise_fence(&mut self, lock: &[u8], token: u64) -> &mut Self {
        self.fences.push(Fence { lock: lock.to_vec(), token, check: false });
        self
    }

    /// The number of changes in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True if the batch holds no change and no fence.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.fences.is_empty()
    }

    /// Bytes of keys and values in the batch.
    pub fn size_bytes(&self) -> usize {
        self.bytes
    }

    /// The changes of the batch, in the order they were added.
    pub fn changes(&self) -> impl Iterator<Item = Change<'_>> + '_ {
        self.ops.iter().map(|op| match op {
            Op::Put { key, value, expires_at } => Change::Put { key, value, expires_at: *expires_at },
            Op::Delete { key } => Change::Delete { key },
        })
    }

    /// Takes the changes out of the batch, in order, keys and values moved
    /// rather than copied: `(key, Some((value, expires_at)))` for a put,
    /// `(key, None)` for a delete. The batch is left empty.
    #[allow(clippy::type_complexity)]
    pub fn drain_changes(&mut self) -> impl Iterator<Item = (Vec<u8>, Option<(Vec<u8>, u64)>)> + '_ {
        self.bytes = 0;
        self.ops.drain(..).map(|op| match op {
            Op::Put { key, value, expires_at } => (key, Some((value, expires_at))),
            Op::Delete { key } => (key, None),
        })
    }

    /// Removes every change.
    pub fn clear(&mut self) {
        self.ops.clear();
        self.fences.clear();
        self.bytes = 0;
    }

    /// Encodes a batch as records: a single change alone, several between
    /// batch markers. `offsets` gets each change's (offset in `buf`, length).
    pub(crate) fn encode(&self, seq: u64, buf: &mut Vec<u8>, offsets: &mut Vec<(u64, u32)>) {
        let batch = self;
        buf.clear();
        offsets.clear();
        let marked = batch.ops.len() > 1;
        let marker = |kind, buf: &mut Vec<u8>| {
            Record { kind, seq, expires_at: 0, key: &[], value: &(batch.ops.len() as u32).to_le_bytes() }
                .encode_into(buf)
        };
        if marked {
            marker(Kind::BatchBegin, buf);
        }
        for op in &batch.ops {
            let start = buf.len();
            let rec = match op {
                Op::Put { key, value, expires_at } => {
                    Record { kind: Kind::Put, seq, expires_at: *expires_at, key, value }
                }
                Op::Delete { key } => Record { kind: Kind::Delete, seq, expires_at: 0, key, value: &[] },
            };
            rec.encode_into(buf);
            offsets.push((start as u64, (buf.len() - start) as u32));
        }
        if marked {
            marker(Kind::BatchEnd, buf);
        }
    }

    /// Checks every key and value against the limits (and that no key is
    /// in the reserved keyspace), as every write does first.
    pub fn validate(&self) -> Result<()> {
        if self.bytes > MAX_BATCH_BYTES {
            return Err(Error::TooLarge { what: "batch", len: self.bytes, max: MAX_BATCH_BYTES });
        }
        for op in &self.ops {
            check_key(op.key())?;
            if !self.system && is_reserved(op.key()) {
                return Err(Error::InvalidArgument(
                    "keys starting with \\xff\\xfflatchkey\\x00 are reserved for latchkey itself".into(),
                ));
            }
            if let Op::Put { value, .. } = op {
                if value.len() > MAX_VALUE_LEN {
                    return Err(Error::TooLarge { what: "value", len: value.len(), max: MAX_VALUE_LEN });
                }
            }
        }
        Ok(())
    }
}

/// Checks a key against the limits (keys may be empty).
pub(crate) fn check_key(key: &[u8]) -> Result<()> {
    if key.len() > MAX_KEY_LEN {
        return Err(Error::TooLarge { what: "key", len: key.len(), max: MAX_KEY_LEN });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Owned puts and the draining of changes move the bytes as given, in
    /// order, and leave an empty batch behind.
    #[test]
    fn owned_changes_go_in_and_come_out_in_order() {
        let mut b = WriteBatch::new();
        b.put_owned(b"k1".to_vec(), b"v1".to_vec(), 7);
        b.delete(b"k2");
        b.put(b"k3", b"value3");
        assert_eq!(b.size_bytes(), 4 + 2 + 8);
        let out: Vec<_> = b.drain_changes().collect();
        assert_eq!(
            out,
            vec![
                (b"k1".to_vec(), Some((b"v1".to_vec(), 7))),
                (b"k2".to_vec(), None),
                (b"k3".to_vec(), Some((b"value3".to_vec(), 0)))
            ]
        );
        assert!(b.is_empty());
        assert_eq!(b.size_bytes(), 0);
    }
}
