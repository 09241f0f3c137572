//! The Raft log on its own redb file (`<data-dir>/raft-log.redb`): entries by index, the vote and
//! the last purged log id.
//!
//! Durable when: every write is one redb transaction committed with redb's default
//! `Durability::Immediate` (fsync). `append` commits its entries before it calls
//! [`LogFlushed::log_io_completed`] and before it returns; `save_vote`, `truncate` and `purge`
//! return after their commit. `truncate` and `purge` each delete in one transaction, so a crash
//! leaves the log as it was before or after, never with a hole; `purge` records the purged log id
//! in the same transaction. The committed index is not saved: the state machine records what it
//! applied in the same transaction as the data, and openraft restarts from there.
//!
//! Encoding: a normal entry is `[1][u32 BE length][its log id as JSON][the proposal's bytes]`, so a
//! store command (already serialized, and large when it carries objects) is stored as it is rather
//! than as a JSON array of numbers, three to four times its size on disk and in every fsync. Blank and
//! membership entries, which are rare and small, are `[0][the entry as JSON]`. The vote and the last
//! purged log id are JSON.
//!
//! Opening checks what a restart depends on: the vote and purge point decode, the first and last
//! entries decode under their own index, the log starts right after the purge point and has no
//! hole. A file redb cannot read is refused with an error naming it.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, Vote,
};
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle,
};

use super::{Proposal, ReplicaId, StorageError, TypeConfig, blocking, storage_error};

/// Index → encoded entry.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// `vote` and `last_purged`, JSON.
const LOG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_log_meta");
const VOTE: &str = "vote";
const LAST_PURGED: &str = "last_purged";

const ENTRY_JSON: u8 = 0;
const ENTRY_NORMAL: u8 = 1;

/// `limited_get_log_entries` stops after this many encoded bytes (always returning at least one
/// entry), so one replication message stays small enough to cross within a heartbeat (100 ms).
pub const READ_BATCH_BYTES: usize = 512 << 10;

/// The Raft log file could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    /// The file cannot be created with mode 0600.
    #[error("raft log {path}: cannot create it readable only by its owner: {source}")]
    Create {
        /// The log file.
        path: PathBuf,
        /// IO error.
        source: std::io::Error,
    },
    /// redb refused the file (IO, not a redb file, corrupt) or a transaction failed.
    #[error("raft log {path}: {source}")]
    Db {
        /// The log file.
        path: PathBuf,
        /// redb's error.
        source: redb::Error,
    },
    /// A record does not decode, or the log is not what openraft wrote.
    #[error("raft log {path} is corrupt: {detail}")]
    Corrupt {
        /// The log file.
        path: PathBuf,
        /// What is wrong, naming the table and index.
        detail: String,
    },
}

/// The Raft log and vote on one redb file; cheap to clone (clones share the file), and its own
/// [`RaftLogReader`].
#[derive(Clone)]
pub struct LogStore {
    file: Arc<LogFile>,
}

struct LogFile {
    db: Database,
    path: PathBuf,
}

impl LogStore {
    /// Opens (creating it, mode 0600) the log at `path`, and refuses a file that is not a sound log.
    pub fn open(path: &Path) -> Result<Self, LogStoreError> {
        crate::datadir::create_private_file(path).map_err(|source| LogStoreError::Create {
            path: path.to_path_buf(),
            source,
        })?;
        let file = LogFile {
            db: Database::builder()
                .set_check_integrity_on_open(true)
                .create(path)
                .map_err(db_error(path))?,
            path: path.to_path_buf(),
        };
        let txn = file.db.begin_write().map_err(db_error(path))?;
        txn.open_table(LOG).map_err(db_error(path))?;
        txn.open_table(LOG_META).map_err(db_error(path))?;
        txn.commit().map_err(db_error(path))?;
        file.verify()?;
        Ok(LogStore {
            file: Arc::new(file),
        })
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.file.path
    }
}

fn db_error<E: Into<redb::Error>>(path: &Path) -> impl FnOnce(E) -> LogStoreError + '_ {
    move |e| LogStoreError::Db {
        path: path.to_path_buf(),
        source: e.into(),
    }
}

impl LogFile {
    fn db_error<E: Into<redb::Error>>(&self) -> impl FnOnce(E) -> LogStoreError + '_ {
        db_error(&self.path)
    }

    fn corrupt(&self, detail: String) -> LogStoreError {
        LogStoreError::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }

    fn verify(&self) -> Result<(), LogStoreError> {
        let txn = self.db.begin_read().map_err(self.db_error())?;
        self.read_vote(&txn)?;
        let purged = self.read_purged(&txn)?;
        let log = txn.open_table(LOG).map_err(self.db_error())?;
        let first = log.first().map_err(self.db_error())?;
        let last = log.last().map_err(self.db_error())?;
        let (Some((first_key, first)), Some((last_key, last))) = (first, last) else {
            return Ok(());
        };
        let first = self.decode(first_key.value(), first.value())?;
        let last = self.decode(last_key.value(), last.value())?;
        if let Some(purged) = purged
            && first.log_id.index != purged.index + 1
        {
            return Err(self.corrupt(format!(
                "table {} starts at index {} but the log was purged up to index {}",
                LOG.name(),
                first.log_id.index,
                purged.index
            )));
        }
        let len = log.len().map_err(self.db_error())?;
        let span = last.log_id.index - first.log_id.index + 1;
        if len != span {
            return Err(self.corrupt(format!(
                "table {} holds {len} entries from index {} to {}, so it is missing {}",
                LOG.name(),
                first.log_id.index,
                last.log_id.index,
                span.saturating_sub(len)
            )));
        }
        Ok(())
    }

    fn meta<T: serde::de::DeserializeOwned>(
        &self,
        txn: &redb::ReadTransaction,
        key: &str,
    ) -> Result<Option<T>, LogStoreError> {
        let table = txn.open_table(LOG_META).map_err(self.db_error())?;
        let Some(value) = table.get(key).map_err(self.db_error())? else {
            return Ok(None);
        };
        serde_json::from_slice(value.value())
            .map(Some)
            .map_err(|e| {
                self.corrupt(format!(
                    "the {key} record in table {} does not decode: {e}",
                    LOG_META.name()
                ))
            })
    }

    fn read_vote(
        &self,
        txn: &redb::ReadTransaction,
    ) -> Result<Option<Vote<ReplicaId>>, LogStoreError> {
        self.meta(txn, VOTE)
    }

    fn read_purged(
        &self,
        txn: &redb::ReadTransaction,
    ) -> Result<Option<LogId<ReplicaId>>, LogStoreError> {
        self.meta(txn, LAST_PURGED)
    }

    fn decode(&self, index: u64, bytes: &[u8]) -> Result<Entry<TypeConfig>, LogStoreError> {
        let entry = decode_entry(bytes).map_err(|detail| {
            self.corrupt(format!(
                "the entry at index {index} in table {} does not decode: {detail}",
                LOG.name()
            ))
        })?;
        if entry.log_id.index != index {
            return Err(self.corrupt(format!(
                "the entry stored at index {index} in table {} is for index {}",
                LOG.name(),
                entry.log_id.index
            )));
        }
        Ok(entry)
    }

    fn write_meta(&self, key: &str, value: &impl serde::Serialize) -> Result<(), LogStoreError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| self.corrupt(format!("the {key} record does not encode: {e}")))?;
        let txn = self.db.begin_write().map_err(self.db_error())?;
        txn.open_table(LOG_META)
            .map_err(self.db_error())?
            .insert(key, bytes.as_slice())
            .map_err(self.db_error())?;
        txn.commit().map_err(self.db_error())
    }

    fn entries(
        &self,
        range: (Bound<u64>, Bound<u64>),
        byte_limit: usize,
    ) -> Result<Vec<Entry<TypeConfig>>, LogStoreError> {
        let txn = self.db.begin_read().map_err(self.db_error())?;
        let log = txn.open_table(LOG).map_err(self.db_error())?;
        let mut entries = Vec::new();
        let mut bytes = 0;
        for item in log.range::<u64>(range).map_err(self.db_error())? {
            let (index, value) = item.map_err(self.db_error())?;
            if !entries.is_empty() && bytes + value.value().len() > byte_limit {
                break;
            }
            bytes += value.value().len();
            entries.push(self.decode(index.value(), value.value())?);
        }
        Ok(entries)
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, LogStoreError> {
        let txn = self.db.begin_read().map_err(self.db_error())?;
        let last_purged_log_id = self.read_purged(&txn)?;
        let log = txn.open_table(LOG).map_err(self.db_error())?;
        let last = match log.last().map_err(self.db_error())? {
            Some((index, value)) => Some(self.decode(index.value(), value.value())?.log_id),
            None => None,
        };
        Ok(LogState {
            last_log_id: last.or(last_purged_log_id),
            last_purged_log_id,
        })
    }

    fn append(&self, entries: Vec<(u64, Vec<u8>)>) -> Result<(), LogStoreError> {
        let txn = self.db.begin_write().map_err(self.db_error())?;
        {
            let mut log = txn.open_table(LOG).map_err(self.db_error())?;
            for (index, bytes) in &entries {
                log.insert(index, bytes.as_slice())
                    .map_err(self.db_error())?;
            }
        }
        txn.commit().map_err(self.db_error())
    }

    fn truncate(&self, since: u64) -> Result<(), LogStoreError> {
        let txn = self.db.begin_write().map_err(self.db_error())?;
        txn.open_table(LOG)
            .map_err(self.db_error())?
            .retain_in(since.., |_, _| false)
            .map_err(self.db_error())?;
        txn.commit().map_err(self.db_error())
    }

    fn purge(&self, upto: LogId<ReplicaId>) -> Result<(), LogStoreError> {
        let bytes = serde_json::to_vec(&upto)
            .map_err(|e| self.corrupt(format!("the {LAST_PURGED} record does not encode: {e}")))?;
        let txn = self.db.begin_write().map_err(self.db_error())?;
        {
            let mut meta = txn.open_table(LOG_META).map_err(self.db_error())?;
            let previous: Option<LogId<ReplicaId>> =
                match meta.get(LAST_PURGED).map_err(self.db_error())? {
                    Some(v) => Some(serde_json::from_slice(v.value()).map_err(|e| {
                        self.corrupt(format!(
                            "the {LAST_PURGED} record in table {} does not decode: {e}",
                            LOG_META.name()
                        ))
                    })?),
                    None => None,
                };
            // Purging never moves back: openraft only purges forwards, and a stale call must not
            // re-open a range whose entries are gone.
            if previous.is_some_and(|p| p >= upto) {
                return Ok(());
            }
            meta.insert(LAST_PURGED, bytes.as_slice())
                .map_err(self.db_error())?;
            txn.open_table(LOG)
                .map_err(self.db_error())?
                .retain_in(..=upto.index, |_, _| false)
                .map_err(self.db_error())?;
        }
        txn.commit().map_err(self.db_error())
    }
}

/// Encodes an entry as the module docs describe.
fn encode_entry(entry: &Entry<TypeConfig>) -> Result<Vec<u8>, serde_json::Error> {
    match &entry.payload {
        EntryPayload::Normal(Proposal(command)) => {
            let log_id = serde_json::to_vec(&entry.log_id)?;
            let mut out = Vec::with_capacity(5 + log_id.len() + command.len());
            out.push(ENTRY_NORMAL);
            // A log id's JSON is tens of bytes; u32 cannot overflow.
            out.extend_from_slice(&(log_id.len() as u32).to_be_bytes());
            out.extend_from_slice(&log_id);
            out.extend_from_slice(command);
            Ok(out)
        }
        EntryPayload::Blank | EntryPayload::Membership(_) => {
            let mut out = vec![ENTRY_JSON];
            serde_json::to_writer(&mut out, entry)?;
            Ok(out)
        }
    }
}

fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, String> {
    match bytes.split_first() {
        Some((&ENTRY_JSON, json)) => serde_json::from_slice(json).map_err(|e| e.to_string()),
        Some((&ENTRY_NORMAL, rest)) => {
            let (len, rest) = rest
                .split_first_chunk::<4>()
                .ok_or("the record ends inside its length")?;
            let len = u32::from_be_bytes(*len) as usize;
            if rest.len() < len {
                return Err("the record ends inside its log id".to_string());
            }
            let (log_id, command) = rest.split_at(len);
            let log_id = serde_json::from_slice(log_id).map_err(|e| e.to_string())?;
            Ok(Entry {
                log_id,
                payload: EntryPayload::Normal(Proposal(command.to_vec())),
            })
        }
        Some((kind, _)) => Err(format!("unknown record kind {kind}")),
        None => Err("the record is empty".to_string()),
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let file = self.file.clone();
        let range = bounds(&range);
        blocking(ErrorSubject::Logs, ErrorVerb::Read, move || {
            file.entries(range, usize::MAX)
        })
        .await
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let file = self.file.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Read, move || {
            file.entries(bounds(&(start..end)), READ_BATCH_BYTES)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let file = self.file.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Read, move || {
            file.log_state()
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<ReplicaId>) -> Result<(), StorageError> {
        let file = self.file.clone();
        let vote = *vote;
        blocking(ErrorSubject::Vote, ErrorVerb::Write, move || {
            file.write_meta(VOTE, &vote)
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<ReplicaId>>, StorageError> {
        let file = self.file.clone();
        blocking(ErrorSubject::Vote, ErrorVerb::Read, move || {
            file.read_vote(&file.db.begin_read().map_err(file.db_error())?)
        })
        .await
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for entry in entries {
            let bytes = encode_entry(&entry).map_err(|e| {
                storage_error(ErrorSubject::Log(entry.log_id), ErrorVerb::Write, &e)
            })?;
            encoded.push((entry.log_id.index, bytes));
        }
        let file = self.file.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Write, move || {
            file.append(encoded)
        })
        .await?;
        // Committed with immediate durability: the entries are on disk.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<ReplicaId>) -> Result<(), StorageError> {
        let file = self.file.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Delete, move || {
            file.truncate(log_id.index)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<ReplicaId>) -> Result<(), StorageError> {
        let file = self.file.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Delete, move || {
            file.purge(log_id)
        })
        .await
    }
}
