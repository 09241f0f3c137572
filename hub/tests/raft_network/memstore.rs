//! A minimal in-memory Raft log and state machine for exercising the peer channel until the
//! redb ones land: the state is the list of proposals applied, in order.
//!
//! Each store's state has one owner, the Raft core that holds the store; the `Arc<Mutex<_>>`
//! only lets the test read the applied list, and no lock is held across an `.await`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};

use flotilla_hub::raft::{Applied, Proposal, ReplicaId, TypeConfig};
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
    Vote,
};

type Id = ReplicaId;

#[derive(Debug, Default)]
struct Log {
    vote: Option<Vote<Id>>,
    committed: Option<LogId<Id>>,
    last_purged: Option<LogId<Id>>,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
}

/// The Raft log, in memory.
#[derive(Debug, Clone, Default)]
pub struct MemLog(Arc<Mutex<Log>>);

impl MemLog {
    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.0.lock().expect("log lock")
    }
}

impl RaftLogReader<TypeConfig> for MemLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<Id>> {
        Ok(self
            .log()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for MemLog {
    type LogReader = MemLog;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<Id>> {
        let log = self.log();
        let last = log.entries.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: log.last_purged,
            last_log_id: last.or(log.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> MemLog {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<Id>) -> Result<(), StorageError<Id>> {
        self.log().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<Id>>, StorageError<Id>> {
        Ok(self.log().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<Id>>,
    ) -> Result<(), StorageError<Id>> {
        self.log().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<Id>>, StorageError<Id>> {
        Ok(self.log().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<Id>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut log = self.log();
            for entry in entries {
                log.entries.insert(entry.log_id.index, entry);
            }
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<Id>) -> Result<(), StorageError<Id>> {
        self.log().entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<Id>) -> Result<(), StorageError<Id>> {
        let mut log = self.log();
        log.entries = log.entries.split_off(&(log_id.index + 1));
        log.last_purged = Some(log_id);
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Machine {
    last_applied: Option<LogId<Id>>,
    membership: StoredMembership<Id, BasicNode>,
    applied: Vec<Vec<u8>>,
    snapshot: Option<(SnapshotMeta<Id, BasicNode>, Vec<u8>)>,
    snapshots_built: u64,
    snapshots_installed: u64,
}

/// The state machine: the proposals applied, in order.
#[derive(Debug, Clone, Default)]
pub struct MemStateMachine(Arc<Mutex<Machine>>);

impl MemStateMachine {
    fn machine(&self) -> std::sync::MutexGuard<'_, Machine> {
        self.0.lock().expect("state machine lock")
    }

    /// How many snapshots a leader has sent this state machine.
    pub fn snapshots_installed(&self) -> u64 {
        self.machine().snapshots_installed
    }

    /// The proposals applied so far, in order.
    pub fn applied(&self) -> Vec<Vec<u8>> {
        self.machine().applied.clone()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MemStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<Id>> {
        let mut m = self.machine();
        let data =
            serde_json::to_vec(&m.applied).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        m.snapshots_built += 1;
        let meta = SnapshotMeta {
            last_log_id: m.last_applied,
            last_membership: m.membership.clone(),
            snapshot_id: format!("snapshot-{}", m.snapshots_built),
        };
        m.snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for MemStateMachine {
    type SnapshotBuilder = MemStateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<Id>>, StoredMembership<Id, BasicNode>), StorageError<Id>> {
        let m = self.machine();
        Ok((m.last_applied, m.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<Id>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut m = self.machine();
        let mut answers = Vec::new();
        for entry in entries {
            m.last_applied = Some(entry.log_id);
            answers.push(match entry.payload {
                EntryPayload::Blank => Applied::default(),
                EntryPayload::Normal(Proposal(bytes)) => {
                    m.applied.push(bytes.clone());
                    Applied(bytes)
                }
                EntryPayload::Membership(membership) => {
                    m.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Applied::default()
                }
            });
        }
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> MemStateMachine {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<Id>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<Id, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<Id>> {
        let data = snapshot.into_inner();
        let applied: Vec<Vec<u8>> = serde_json::from_slice(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let mut m = self.machine();
        m.applied = applied;
        m.last_applied = meta.last_log_id;
        m.membership = meta.last_membership.clone();
        m.snapshot = Some((meta.clone(), data));
        m.snapshots_installed += 1;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<Id>> {
        Ok(self
            .machine()
            .snapshot
            .clone()
            .map(|(meta, data)| Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            }))
    }
}
