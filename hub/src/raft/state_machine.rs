//! The Raft state machine over the application's own redb database, and its snapshots.
//!
//! Durable when: `apply` runs a batch of entries in one redb write transaction, committed with
//! immediate durability (fsync) before it returns; the same transaction records the last applied
//! log id and the last membership in table `raft_state_machine` (a name the application must not
//! use), so after a crash the data and the applied index always match. A command the application
//! refuses ([`ApplyError::Refused`]) has its writes discarded and its refusal returned as its
//! [`Applied`]; every replica refuses it the same way, so it is not a storage error.
//!
//! Snapshots: `build_snapshot` takes one read transaction, so the application's dump and the
//! applied log id and membership are of the same instant. The current snapshot lives next to the
//! database as `<database file name>.snapshot`, written to a temporary file, fsynced, renamed over
//! the old one and the directory fsynced, so it is the old or the new one after a crash, whole.
//! `install_snapshot` first makes the received snapshot the current one on disk, then replaces the
//! application tables and the metadata in one write transaction; opening the store finishes an
//! install a crash interrupted between the two.
//!
//! Snapshot format (the file and the bytes openraft sends to peers are the same):
//!
//! ```text
//! "flotilla-raft-snapshot-1\n"
//! u64 BE length, the SnapshotMeta as JSON
//! u64 BE length, the application's dump (ReplicatedData::dump)
//! SHA-256 of everything before it (32 bytes)
//! ```
//!
//! Memory: [`SnapshotData`](super::TypeConfig) is an in-memory `Cursor<Vec<u8>>`, so a snapshot is
//! held whole while it is built, sent, received and installed. It is bounded by a limit,
//! [`DEFAULT_SNAPSHOT_LIMIT`] unless [`StateMachineStore::with_snapshot_limit`] sets another: a larger
//! dump fails the build and a larger received snapshot is refused, with an error naming the limit.
//! Expect up to about twice the limit in memory while a snapshot is built.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Cursor, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StoredMembership,
};
use redb::{Database, ReadableDatabase, TableDefinition, TableHandle};
use sha2::{Digest, Sha256};

use super::{Applied, Proposal, ReplicaId, StorageError, TypeConfig, blocking};

/// The state machine's own metadata, in the application's database.
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_state_machine");
const LAST_APPLIED: &str = "last_applied";
const LAST_MEMBERSHIP: &str = "last_membership";

const SNAPSHOT_MAGIC: &[u8] = b"flotilla-raft-snapshot-1\n";

/// The snapshot size limit unless set otherwise: 512 MiB.
pub const DEFAULT_SNAPSHOT_LIMIT: u64 = 512 << 20;

type Meta = SnapshotMeta<ReplicaId, openraft::BasicNode>;
type Membership = StoredMembership<ReplicaId, openraft::BasicNode>;

/// The application side of the state machine: its commands and its tables.
pub trait ReplicatedData: Send + Sync + 'static {
    /// Applies one command inside `txn`. Deterministic: the same bytes on the same data give the
    /// same writes and the same answer on every replica (times, ids and signatures come in the
    /// command). `term` is the Raft term of the entry that carries it, for commands fenced to the term
    /// their proposer led in. The answer is returned to the proposer as [`Applied`].
    fn apply(
        &self,
        txn: &redb::WriteTransaction,
        term: u64,
        command: &[u8],
    ) -> Result<Vec<u8>, ApplyError>;

    /// The transaction of the batch being applied was abandoned (to rerun it without a refused
    /// command): whatever [`Self::apply`] noted for after the commit is void.
    fn batch_aborted(&self) {}

    /// The batch's transaction committed: its writes are visible to readers now.
    fn batch_committed(&self) {}

    /// A snapshot replaced every table.
    fn restored(&self) {}

    /// Writes every application table, as `txn` sees it, to `out`.
    fn dump(&self, txn: &redb::ReadTransaction, out: &mut dyn Write) -> io::Result<()>;

    /// Replaces every application table with the contents of a dump from [`Self::dump`].
    fn restore(&self, txn: &redb::WriteTransaction, dump: &mut dyn Read) -> io::Result<()>;
}

/// Why a command was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The command is refused (a consumed token, a stale version): its writes are discarded and
    /// these bytes, the application's encoding of the refusal, are returned as its [`Applied`].
    #[error("the command was refused")]
    Refused(Vec<u8>),
    /// The database failed (IO, corruption): the replica stops.
    #[error(transparent)]
    Storage(#[from] redb::Error),
}

macro_rules! apply_error_from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for ApplyError {
            fn from(e: $t) -> Self {
                ApplyError::Storage(e.into())
            }
        }
    )*};
}
apply_error_from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// The state machine's database or snapshot could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateMachineError {
    /// The file cannot be created with mode 0600.
    #[error("state machine {path}: cannot create it readable only by its owner: {source}")]
    Create {
        /// The database file.
        path: PathBuf,
        /// IO error.
        source: io::Error,
    },
    /// redb refused the file (IO, not a redb file, corrupt) or a transaction failed.
    #[error("state machine {path}: {source}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// redb's error.
        source: redb::Error,
    },
    /// A metadata record does not decode.
    #[error("state machine {path} is corrupt: {detail}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong, naming the table and record.
        detail: String,
    },
    /// The application failed to apply an entry for a reason other than a refusal.
    #[error("state machine {path}: applying the entry at index {index} failed: {source}")]
    Apply {
        /// The database file.
        path: PathBuf,
        /// The entry's index.
        index: u64,
        /// redb's error.
        source: redb::Error,
    },
    /// Reading or writing a snapshot file failed.
    #[error("snapshot {path}: {source}")]
    SnapshotIo {
        /// The snapshot file.
        path: PathBuf,
        /// IO error (the application's dump or restore included).
        source: io::Error,
    },
    /// A snapshot is not in the format above or its checksum does not match.
    #[error("snapshot {origin} is corrupt: {detail}")]
    SnapshotCorrupt {
        /// The snapshot file, or where the bytes came from.
        origin: String,
        /// What is wrong.
        detail: String,
    },
    /// A snapshot is over the limit.
    #[error("a snapshot of the state machine {path} is over the limit of {limit} bytes")]
    SnapshotTooLarge {
        /// The database file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
}

/// openraft's state machine over `D`'s redb database; cheap to clone (clones share everything),
/// and its own snapshot builder.
pub struct StateMachineStore<D> {
    shared: Arc<Shared<D>>,
}

impl<D> Clone for StateMachineStore<D> {
    fn clone(&self) -> Self {
        StateMachineStore {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<D> {
    db: Arc<Database>,
    path: PathBuf,
    snapshot_path: PathBuf,
    data: D,
    snapshot_limit: AtomicU64,
    /// The current snapshot's meta, held while its file is replaced, so an older snapshot built
    /// concurrently never replaces a newer installed one.
    current: Mutex<Option<Meta>>,
}

impl<D: ReplicatedData> StateMachineStore<D> {
    /// Opens (creating it, mode 0600) the database at `path` with its snapshot beside it, checks
    /// the metadata and the snapshot, and finishes an install a crash interrupted.
    pub fn open(path: &Path, data: D) -> Result<Self, StateMachineError> {
        crate::datadir::create_private_file(path).map_err(|source| StateMachineError::Create {
            path: path.to_path_buf(),
            source,
        })?;
        // A plain open trusts the file and may panic on a damaged page; the check refuses it.
        let db = Database::builder()
            .set_check_integrity_on_open(true)
            .create(path)
            .map_err(db_error(path))?;
        let txn = db.begin_write().map_err(db_error(path))?;
        txn.open_table(SM_META).map_err(db_error(path))?;
        txn.commit().map_err(db_error(path))?;
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".snapshot");
        let shared = Shared {
            db: Arc::new(db),
            path: path.to_path_buf(),
            snapshot_path: path.with_file_name(name),
            data,
            snapshot_limit: AtomicU64::new(DEFAULT_SNAPSHOT_LIMIT),
            current: Mutex::new(None),
        };
        let (applied, _) = shared.applied_state()?;
        // A temporary file is a write a crash cut short; the renamed one is whole.
        let _ = fs::remove_file(shared.temp_path());
        if let Some(bytes) = shared.read_snapshot_file()? {
            let origin = shared.snapshot_path.display().to_string();
            let snapshot = SnapshotFile::parse(&bytes, &origin)?;
            if snapshot.meta.last_log_id > applied {
                tracing::info!(
                    snapshot = %snapshot.meta,
                    "finishing the install of a snapshot a restart interrupted"
                );
                shared.restore(&snapshot)?;
            }
            *shared.lock_current() = Some(snapshot.meta);
        }
        Ok(StateMachineStore {
            shared: Arc::new(shared),
        })
    }

    /// The same store with snapshots limited to `bytes`.
    pub fn with_snapshot_limit(self, bytes: u64) -> Self {
        self.shared.snapshot_limit.store(bytes, Ordering::Relaxed);
        self
    }

    /// The application's database, for reads; writes go through Raft.
    pub fn database(&self) -> &Arc<Database> {
        &self.shared.db
    }

    /// The application's side.
    pub fn data(&self) -> &D {
        &self.shared.data
    }
}

fn db_error<E: Into<redb::Error>>(path: &Path) -> impl FnOnce(E) -> StateMachineError + '_ {
    move |e| StateMachineError::Db {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

impl<D: ReplicatedData> Shared<D> {
    fn db_error<E: Into<redb::Error>>(&self) -> impl FnOnce(E) -> StateMachineError + '_ {
        db_error(&self.path)
    }

    fn snapshot_io(&self, path: &Path) -> impl FnOnce(io::Error) -> StateMachineError {
        let path = path.to_path_buf();
        move |source| StateMachineError::SnapshotIo { path, source }
    }

    fn temp_path(&self) -> PathBuf {
        let mut name = self.snapshot_path.as_os_str().to_os_string();
        name.push(".tmp");
        PathBuf::from(name)
    }

    fn lock_current(&self) -> std::sync::MutexGuard<'_, Option<Meta>> {
        // The guarded value is replaced whole, so a panic elsewhere cannot leave it half-written.
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn applied_state(&self) -> Result<(Option<LogId<ReplicaId>>, Membership), StateMachineError> {
        let txn = self.db.begin_read().map_err(self.db_error())?;
        self.read_meta(&txn)
    }

    fn read_meta(
        &self,
        txn: &redb::ReadTransaction,
    ) -> Result<(Option<LogId<ReplicaId>>, Membership), StateMachineError> {
        let table = txn.open_table(SM_META).map_err(self.db_error())?;
        let decode = |key: &str| -> Result<Option<Vec<u8>>, StateMachineError> {
            Ok(table
                .get(key)
                .map_err(self.db_error())?
                .map(|v| v.value().to_vec()))
        };
        let corrupt = |key: &str, e: serde_json::Error| StateMachineError::Corrupt {
            path: self.path.clone(),
            detail: format!(
                "the {key} record in table {} does not decode: {e}",
                SM_META.name()
            ),
        };
        let applied = match decode(LAST_APPLIED)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| corrupt(LAST_APPLIED, e))?,
            None => None,
        };
        let membership = match decode(LAST_MEMBERSHIP)? {
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| corrupt(LAST_MEMBERSHIP, e))?
            }
            None => Membership::default(),
        };
        Ok((applied, membership))
    }

    fn write_meta(
        &self,
        txn: &redb::WriteTransaction,
        applied: Option<LogId<ReplicaId>>,
        membership: Option<&Membership>,
    ) -> Result<(), StateMachineError> {
        let mut table = txn.open_table(SM_META).map_err(self.db_error())?;
        let encode = |key: &str, e: serde_json::Error| StateMachineError::Corrupt {
            path: self.path.clone(),
            detail: format!("the {key} record does not encode: {e}"),
        };
        let applied = serde_json::to_vec(&applied).map_err(|e| encode(LAST_APPLIED, e))?;
        table
            .insert(LAST_APPLIED, applied.as_slice())
            .map_err(self.db_error())?;
        if let Some(membership) = membership {
            let membership =
                serde_json::to_vec(membership).map_err(|e| encode(LAST_MEMBERSHIP, e))?;
            table
                .insert(LAST_MEMBERSHIP, membership.as_slice())
                .map_err(self.db_error())?;
        }
        Ok(())
    }

    /// Applies a batch in one transaction. A refusal aborts the transaction, which is then run
    /// again from the start with the refused entries skipped: redb cannot roll back part of a
    /// transaction, and applying is deterministic, so the rerun writes what the first run did.
    fn apply(&self, entries: &[Entry<TypeConfig>]) -> Result<Vec<Applied>, StateMachineError> {
        let mut refused: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
        'batch: loop {
            let txn = self.db.begin_write().map_err(self.db_error())?;
            let mut answers = Vec::with_capacity(entries.len());
            let mut membership = None;
            for (i, entry) in entries.iter().enumerate() {
                match &entry.payload {
                    EntryPayload::Blank => answers.push(Applied::default()),
                    EntryPayload::Membership(m) => {
                        membership = Some(Membership::new(Some(entry.log_id), m.clone()));
                        answers.push(Applied::default());
                    }
                    EntryPayload::Normal(Proposal(command)) => {
                        if let Some(refusal) = refused.get(&i) {
                            answers.push(Applied(refusal.clone()));
                            continue;
                        }
                        match self.data.apply(&txn, entry.log_id.leader_id.term, command) {
                            Ok(answer) => answers.push(Applied(answer)),
                            Err(ApplyError::Refused(refusal)) => {
                                refused.insert(i, refusal);
                                txn.abort().map_err(self.db_error())?;
                                self.data.batch_aborted();
                                continue 'batch;
                            }
                            Err(ApplyError::Storage(source)) => {
                                self.data.batch_aborted();
                                return Err(StateMachineError::Apply {
                                    path: self.path.clone(),
                                    index: entry.log_id.index,
                                    source,
                                });
                            }
                        }
                    }
                }
            }
            let last = entries.last().map(|e| e.log_id);
            if let Err(e) = self.write_meta(&txn, last, membership.as_ref()) {
                self.data.batch_aborted();
                return Err(e);
            }
            if let Err(e) = txn.commit() {
                self.data.batch_aborted();
                return Err(self.db_error()(e));
            }
            self.data.batch_committed();
            return Ok(answers);
        }
    }

    /// Dumps the data and metadata of one read transaction into a snapshot.
    fn build(&self) -> Result<Snapshot<TypeConfig>, StateMachineError> {
        let txn = self.db.begin_read().map_err(self.db_error())?;
        let (last_log_id, last_membership) = self.read_meta(&txn)?;
        let snapshot_id = match last_log_id {
            Some(id) => format!(
                "{}-{}-{}-{:08x}",
                id.leader_id.term,
                id.leader_id.node_id,
                id.index,
                rand::random::<u32>()
            ),
            None => format!("empty-{:08x}", rand::random::<u32>()),
        };
        let meta = Meta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        let limit = self.snapshot_limit.load(Ordering::Relaxed);
        let mut out = SnapshotWriter::begin(&meta, limit).map_err(|e| self.snapshot_corrupt(e))?;
        if let Err(source) = self.data.dump(&txn, &mut out) {
            return Err(if out.over_limit {
                StateMachineError::SnapshotTooLarge {
                    path: self.path.clone(),
                    limit,
                }
            } else {
                StateMachineError::SnapshotIo {
                    path: self.snapshot_path.clone(),
                    source,
                }
            });
        }
        drop(txn);
        let bytes = out.finish();
        self.replace_current(&meta, &bytes)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }

    fn snapshot_corrupt(&self, detail: impl ToString) -> StateMachineError {
        StateMachineError::SnapshotCorrupt {
            origin: self.snapshot_path.display().to_string(),
            detail: detail.to_string(),
        }
    }

    /// Makes `bytes` the current snapshot on disk unless a newer one already is.
    fn replace_current(&self, meta: &Meta, bytes: &[u8]) -> Result<(), StateMachineError> {
        let mut current = self.lock_current();
        if current
            .as_ref()
            .is_some_and(|c| c.last_log_id > meta.last_log_id)
        {
            return Ok(());
        }
        let temp = self.temp_path();
        let write = || -> io::Result<()> {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temp)?;
            file.write_all(bytes)?;
            file.sync_all()
        };
        write().map_err(self.snapshot_io(&temp))?;
        fs::rename(&temp, &self.snapshot_path).map_err(self.snapshot_io(&self.snapshot_path))?;
        if let Some(dir) = self.snapshot_path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(self.snapshot_io(dir))?;
        }
        *current = Some(meta.clone());
        Ok(())
    }

    fn read_snapshot_file(&self) -> Result<Option<Vec<u8>>, StateMachineError> {
        match fs::read(&self.snapshot_path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.snapshot_io(&self.snapshot_path)(e)),
        }
    }

    fn current(&self) -> Result<Option<Snapshot<TypeConfig>>, StateMachineError> {
        let Some(bytes) = self.read_snapshot_file()? else {
            return Ok(None);
        };
        let meta = SnapshotFile::parse(&bytes, &self.snapshot_path.display().to_string())?.meta;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }

    fn install(&self, meta: &Meta, bytes: Vec<u8>) -> Result<(), StateMachineError> {
        let limit = self.snapshot_limit.load(Ordering::Relaxed);
        if bytes.len() as u64 > limit {
            return Err(StateMachineError::SnapshotTooLarge {
                path: self.path.clone(),
                limit,
            });
        }
        let origin = format!("{} received from the leader", meta.snapshot_id);
        let snapshot = SnapshotFile::parse(&bytes, &origin)?;
        if &snapshot.meta != meta {
            return Err(StateMachineError::SnapshotCorrupt {
                origin,
                detail: format!(
                    "it holds the snapshot {} but the leader described {meta}",
                    snapshot.meta
                ),
            });
        }
        self.replace_current(meta, &bytes)?;
        self.restore(&snapshot)
    }

    /// Replaces the application tables and the metadata with the snapshot's, in one transaction.
    fn restore(&self, snapshot: &SnapshotFile<'_>) -> Result<(), StateMachineError> {
        let txn = self.db.begin_write().map_err(self.db_error())?;
        let mut dump = snapshot.dump;
        self.data
            .restore(&txn, &mut dump)
            .map_err(self.snapshot_io(&self.snapshot_path))?;
        self.write_meta(
            &txn,
            snapshot.meta.last_log_id,
            Some(&snapshot.meta.last_membership),
        )?;
        txn.commit().map_err(self.db_error())?;
        self.data.restored();
        Ok(())
    }
}

/// A snapshot being written: the header, then the dump streamed in, under the limit.
struct SnapshotWriter {
    bytes: Vec<u8>,
    dump_start: usize,
    limit: u64,
    over_limit: bool,
}

impl SnapshotWriter {
    fn begin(meta: &Meta, limit: u64) -> Result<Self, serde_json::Error> {
        let meta = serde_json::to_vec(meta)?;
        let mut bytes = Vec::with_capacity(SNAPSHOT_MAGIC.len() + 16 + meta.len() + 32);
        bytes.extend_from_slice(SNAPSHOT_MAGIC);
        bytes.extend_from_slice(&(meta.len() as u64).to_be_bytes());
        bytes.extend_from_slice(&meta);
        // The dump's length, filled in by `finish`.
        bytes.extend_from_slice(&[0; 8]);
        let dump_start = bytes.len();
        Ok(SnapshotWriter {
            bytes,
            dump_start,
            limit,
            over_limit: false,
        })
    }

    fn finish(mut self) -> Vec<u8> {
        let dump_len = (self.bytes.len() - self.dump_start) as u64;
        self.bytes[self.dump_start - 8..self.dump_start].copy_from_slice(&dump_len.to_be_bytes());
        let sum = Sha256::digest(&self.bytes);
        self.bytes.extend_from_slice(&sum);
        self.bytes
    }
}

impl Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if (self.bytes.len() + buf.len() + 32) as u64 > self.limit {
            self.over_limit = true;
            return Err(io::Error::other(format!(
                "the snapshot would exceed its limit of {} bytes",
                self.limit
            )));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A verified snapshot: its meta and the application's dump.
struct SnapshotFile<'a> {
    meta: Meta,
    dump: &'a [u8],
}

impl<'a> SnapshotFile<'a> {
    fn parse(bytes: &'a [u8], origin: &str) -> Result<Self, StateMachineError> {
        let corrupt = |detail: &str| StateMachineError::SnapshotCorrupt {
            origin: origin.to_string(),
            detail: detail.to_string(),
        };
        let body = bytes
            .strip_prefix(SNAPSHOT_MAGIC)
            .ok_or_else(|| corrupt("it does not start with the snapshot format's header"))?;
        let (body, sum) = body
            .split_last_chunk::<32>()
            .ok_or_else(|| corrupt("it ends before its checksum"))?;
        if Sha256::digest(&bytes[..bytes.len() - 32]).as_slice() != sum {
            return Err(corrupt("its checksum does not match its contents"));
        }
        let (meta, rest) = take_sized(body).ok_or_else(|| corrupt("it ends inside its meta"))?;
        let meta: Meta = serde_json::from_slice(meta)
            .map_err(|e| corrupt(&format!("its meta does not decode: {e}")))?;
        let (dump, rest) = take_sized(rest).ok_or_else(|| corrupt("it ends inside its dump"))?;
        if !rest.is_empty() {
            return Err(corrupt("it has bytes after its dump"));
        }
        Ok(SnapshotFile { meta, dump })
    }
}

/// Splits a u64 BE length and that many bytes off the front.
fn take_sized(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<8>()?;
    let len = usize::try_from(u64::from_be_bytes(*len)).ok()?;
    (rest.len() >= len).then(|| rest.split_at(len))
}

impl<D: ReplicatedData> RaftSnapshotBuilder<TypeConfig> for StateMachineStore<D> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let shared = self.shared.clone();
        blocking(ErrorSubject::Snapshot(None), ErrorVerb::Write, move || {
            shared.build()
        })
        .await
    }
}

impl<D: ReplicatedData> RaftStateMachine<TypeConfig> for StateMachineStore<D> {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<ReplicaId>>, Membership), StorageError> {
        let shared = self.shared.clone();
        blocking(ErrorSubject::StateMachine, ErrorVerb::Read, move || {
            shared.applied_state()
        })
        .await
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let shared = self.shared.clone();
        blocking(ErrorSubject::StateMachine, ErrorVerb::Write, move || {
            shared.apply(&entries)
        })
        .await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let shared = self.shared.clone();
        let meta = meta.clone();
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        blocking(subject, ErrorVerb::Write, move || {
            let bytes = snapshot.into_inner();
            let size = bytes.len();
            let started = std::time::Instant::now();
            shared.install(&meta, bytes)?;
            tracing::info!(
                snapshot = %meta.snapshot_id,
                bytes = size,
                last_log_index = meta.last_log_id.map(|l| l.index).unwrap_or_default(),
                millis = started.elapsed().as_millis() as u64,
                "installed a snapshot from the leader"
            );
            Ok::<_, StateMachineError>(())
        })
        .await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let shared = self.shared.clone();
        blocking(ErrorSubject::Snapshot(None), ErrorVerb::Read, move || {
            shared.current()
        })
        .await
    }
}
