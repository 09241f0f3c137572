//! The whole replicated state of the store as one byte stream (issue 15: what a Raft snapshot carries
//! to a replica that is too far behind for the log).
//!
//! Format: the magic `FLOTSNAP1`, then per table its one-byte tag and entry count (u64), then each entry
//! as its key and value in the table's types (byte strings length-prefixed with a u32, integers as
//! little-endian u64/i64), then the SHA-256 of everything before it. A dump is read in one read
//! transaction, so it is consistent; a restore replaces every table in one write transaction and
//! checks the digest before that transaction commits, so a damaged snapshot changes nothing.

use std::io::{Read, Write};

use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, WriteTransaction};
use sha2::{Digest as _, Sha256};

use super::*;

const MAGIC: &[u8] = b"FLOTSNAP1";

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Reading the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing or reading the stream failed.
    #[error("snapshot stream: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a snapshot of this format, or are damaged.
    #[error("invalid snapshot: {0}")]
    Invalid(String),
}

impl From<redb::Error> for SnapshotError {
    fn from(e: redb::Error) -> Self {
        SnapshotError::Store(e.into())
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for SnapshotError {
            fn from(e: $t) -> Self {
                SnapshotError::Store(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TableError,
    redb::StorageError,
    redb::TransactionError,
    redb::CommitError
);

/// Writes with a running digest.
struct Out<'a> {
    w: &'a mut dyn Write,
    hash: Sha256,
}

impl Out<'_> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.hash.update(bytes);
        self.w.write_all(bytes)
    }
    fn u64(&mut self, v: u64) -> std::io::Result<()> {
        self.put(&v.to_le_bytes())
    }
    fn bytes(&mut self, b: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(b.len()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "an entry over 4 GiB")
        })?;
        self.put(&len.to_le_bytes())?;
        self.put(b)
    }
}

/// Reads with a running digest.
struct In<'a> {
    r: &'a mut dyn Read,
    hash: Sha256,
}

impl In<'_> {
    fn take(&mut self, n: usize) -> Result<Vec<u8>, SnapshotError> {
        let mut buf = vec![0; n];
        self.r.read_exact(&mut buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                SnapshotError::Invalid("it ends early (truncated)".into())
            } else {
                SnapshotError::Io(e)
            }
        })?;
        self.hash.update(&buf);
        Ok(buf)
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, SnapshotError> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize;
        // Entries are bounded by what the store accepts; refuse absurd lengths before allocating.
        if len > MAX_ENTRY_BYTES {
            return Err(SnapshotError::Invalid(format!(
                "an entry of {len} bytes is over the {MAX_ENTRY_BYTES}-byte limit"
            )));
        }
        self.take(len)
    }
    fn str(&mut self) -> Result<String, SnapshotError> {
        String::from_utf8(self.bytes()?)
            .map_err(|_| SnapshotError::Invalid("a key is not UTF-8".into()))
    }
}

/// Largest key or value a snapshot may carry (a ClusterState or blob is far smaller).
const MAX_ENTRY_BYTES: usize = 256 << 20;

/// How each table's keys and values are written; one arm per key/value type pair.
macro_rules! tables {
    ($($tag:literal => $table:ident : $kind:ident),* $(,)?) => {
        /// The names of the tables a snapshot carries.
        #[cfg(test)]
        pub(super) fn table_names() -> std::collections::BTreeSet<String> {
            use redb::TableHandle;
            [$($table.name().to_string()),*].into_iter().collect()
        }

        fn dump_tables(txn: &ReadTransaction, out: &mut Out<'_>) -> Result<(), SnapshotError> {
            $(
                let t = txn.open_table($table)?;
                out.put(&[$tag])?;
                out.u64(t.len()?)?;
                for entry in t.iter()? {
                    let (k, v) = entry?;
                    tables!(@dump $kind, out, k, v);
                }
            )*
            Ok(())
        }

        fn restore_tables(txn: &WriteTransaction, input: &mut In<'_>) -> Result<(), SnapshotError> {
            $(
                txn.delete_table($table)?;
                let mut t = txn.open_table($table)?;
                let tag = input.take(1)?[0];
                if tag != $tag {
                    return Err(SnapshotError::Invalid(format!(
                        "table {} expected (tag {}), found tag {tag}",
                        stringify!($table), $tag
                    )));
                }
                for _ in 0..input.u64()? {
                    tables!(@restore $kind, input, t);
                }
            )*
            Ok(())
        }
    };
    (@dump str_u64, $o:ident, $k:ident, $v:ident) => {{ $o.bytes($k.value().as_bytes())?; $o.u64($v.value())?; }};
    (@dump str_i64, $o:ident, $k:ident, $v:ident) => {{ $o.bytes($k.value().as_bytes())?; $o.u64($v.value() as u64)?; }};
    (@dump str_bytes, $o:ident, $k:ident, $v:ident) => {{ $o.bytes($k.value().as_bytes())?; $o.bytes($v.value())?; }};
    (@dump bytes_bytes, $o:ident, $k:ident, $v:ident) => {{ $o.bytes($k.value())?; $o.bytes($v.value())?; }};
    (@dump bytes_u64, $o:ident, $k:ident, $v:ident) => {{ $o.bytes($k.value())?; $o.u64($v.value())?; }};
    (@dump u64_bytes, $o:ident, $k:ident, $v:ident) => {{ $o.u64($k.value())?; $o.bytes($v.value())?; }};
    (@dump strver_bytes, $o:ident, $k:ident, $v:ident) => {{ let (a, b) = $k.value(); $o.bytes(a.as_bytes())?; $o.u64(b)?; $o.bytes($v.value())?; }};
    (@dump strbytes_unit, $o:ident, $k:ident, $v:ident) => {{ let _ = $v; let (a, b) = $k.value(); $o.bytes(a.as_bytes())?; $o.bytes(b)?; }};
    (@dump strbytes_u64, $o:ident, $k:ident, $v:ident) => {{ let (a, b) = $k.value(); $o.bytes(a.as_bytes())?; $o.bytes(b)?; $o.u64($v.value())?; }};
    (@restore str_u64, $i:ident, $t:ident) => {{ let k = $i.str()?; let v = $i.u64()?; $t.insert(k.as_str(), v)?; }};
    (@restore str_i64, $i:ident, $t:ident) => {{ let k = $i.str()?; let v = $i.u64()? as i64; $t.insert(k.as_str(), v)?; }};
    (@restore str_bytes, $i:ident, $t:ident) => {{ let k = $i.str()?; let v = $i.bytes()?; $t.insert(k.as_str(), v.as_slice())?; }};
    (@restore bytes_bytes, $i:ident, $t:ident) => {{ let k = $i.bytes()?; let v = $i.bytes()?; $t.insert(k.as_slice(), v.as_slice())?; }};
    (@restore bytes_u64, $i:ident, $t:ident) => {{ let k = $i.bytes()?; let v = $i.u64()?; $t.insert(k.as_slice(), v)?; }};
    (@restore u64_bytes, $i:ident, $t:ident) => {{ let k = $i.u64()?; let v = $i.bytes()?; $t.insert(k, v.as_slice())?; }};
    (@restore strver_bytes, $i:ident, $t:ident) => {{ let a = $i.str()?; let b = $i.u64()?; let v = $i.bytes()?; $t.insert((a.as_str(), b), v.as_slice())?; }};
    (@restore strbytes_unit, $i:ident, $t:ident) => {{ let a = $i.str()?; let b = $i.bytes()?; $t.insert((a.as_str(), b.as_slice()), ())?; }};
    (@restore strbytes_u64, $i:ident, $t:ident) => {{ let a = $i.str()?; let b = $i.bytes()?; let v = $i.u64()?; $t.insert((a.as_str(), b.as_slice()), v)?; }};
}

// Every table of the store, in a fixed order; a new table must be added here (the snapshot test
// compares every read of a restored store with the original).
tables! {
    1 => META: str_u64,
    2 => TOKENS: bytes_bytes,
    3 => CLUSTERS: str_bytes,
    4 => STATES: strver_bytes,
    5 => BLOBS: bytes_bytes,
    6 => CLUSTER_BLOBS: strbytes_unit,
    7 => REPORTS: str_bytes,
    8 => HEADERS: strver_bytes,
    9 => STATE_DIGESTS: strver_bytes,
    10 => CLUSTER_BLOB_REFS: strbytes_u64,
    11 => BLOB_REFS: bytes_u64,
    12 => REPORT_RECEIVED: str_i64,
    13 => SOURCES: str_bytes,
    14 => EVENTS: u64_bytes,
    15 => ROLLOUTS: u64_bytes,
    16 => APP_ROLLOUTS: str_u64,
}

/// Writes every table read in `txn` to `out`.
pub fn dump(txn: &ReadTransaction, out: &mut dyn Write) -> Result<(), SnapshotError> {
    let mut o = Out {
        w: out,
        hash: Sha256::new(),
    };
    o.put(MAGIC)?;
    dump_tables(txn, &mut o)?;
    let digest = o.hash.clone().finalize();
    o.w.write_all(&digest)?;
    o.w.flush()?;
    Ok(())
}

/// Replaces every table in `txn` with the snapshot read from `input`; the caller commits only on `Ok`.
pub fn restore(txn: &WriteTransaction, input: &mut dyn Read) -> Result<(), SnapshotError> {
    let mut i = In {
        r: input,
        hash: Sha256::new(),
    };
    if i.take(MAGIC.len())? != MAGIC {
        return Err(SnapshotError::Invalid(
            "it does not start with FLOTSNAP1 (not a Flotilla store snapshot, or another version)"
                .into(),
        ));
    }
    restore_tables(txn, &mut i)?;
    let expected = i.hash.clone().finalize();
    let mut found = [0u8; 32];
    i.r.read_exact(&mut found)
        .map_err(|_| SnapshotError::Invalid("its digest is missing (truncated)".into()))?;
    if found != expected.as_slice() {
        return Err(SnapshotError::Invalid(
            "its SHA-256 does not match its contents (damaged)".into(),
        ));
    }
    let mut rest = [0u8; 1];
    if i.r.read(&mut rest)? != 0 {
        return Err(SnapshotError::Invalid("bytes follow its digest".into()));
    }
    Ok(())
}

impl HubStore {
    /// The whole store as a snapshot, from one read transaction.
    pub fn dump(&self, out: &mut dyn Write) -> Result<(), SnapshotError> {
        let txn = self.db.begin_read().map_err(StoreError::from)?;
        dump(&txn, out)
    }

    /// Replaces the whole store with a snapshot in one transaction; a damaged snapshot changes nothing.
    pub fn restore(&self, input: &mut dyn Read) -> Result<(), SnapshotError> {
        let txn = self.db.begin_write()?;
        restore(&txn, input)?;
        txn.commit()?;
        Ok(())
    }
}
