//! The hub store as the application side of the Raft state machine ([`crate::raft::ReplicatedData`]):
//! a log entry is a [`Command`] as JSON, its answer the [`Outcome`] as JSON, and a snapshot is the
//! store's own stream ([`super::snapshot`]). A refusal is an outcome that wrote nothing, so it needs no
//! rollback and every replica answers it alike. A [`HubStore`] given a [`Proposer`] writes by
//! proposing its commands to the leader and reads the state this replica applied.

use std::io::{self, Read, Write};

use redb::{ReadTransaction, WriteTransaction};

use openraft::error::{ClientWriteError, Fatal, RaftError};

use super::{Command, HubStore, Outcome, StoreError, command, snapshot};
use crate::raft::state_machine::{ApplyError, ReplicatedData};
use crate::raft::{Proposal, ReplicaId, StateMachineStore, TypeConfig};

/// The hub store's commands, applied by the Raft state machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreCommands;

/// Opens the hub store as a Raft state machine at `path`, its tables created if missing, and the store
/// that reads its applied state.
pub fn open_state_machine(
    path: &std::path::Path,
) -> Result<(StateMachineStore<StoreCommands>, HubStore), OpenError> {
    let machine = StateMachineStore::open(path, StoreCommands)?;
    let store = HubStore::from_database(machine.database().clone())?;
    Ok((machine, store))
}

/// Why the replicated store did not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The state machine's database or snapshot.
    #[error(transparent)]
    StateMachine(#[from] crate::raft::StateMachineError),
    /// Creating the store's tables.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A command's wire form in the log.
pub fn encode(command: &Command) -> Vec<u8> {
    serde_json::to_vec(command).expect("commands always serialize")
}

/// A store's way to the Raft leader: a command is proposed with `client_write` and its outcome is
/// what the state machine answered once it applied it.
#[derive(Clone)]
pub(super) struct Proposer {
    pub(super) raft: openraft::Raft<TypeConfig>,
    pub(super) runtime: tokio::runtime::Handle,
}

impl Proposer {
    /// Proposes `command` and waits for its outcome. Blocking: `Handle::block_on` panics on an async
    /// worker thread, so callers run it in `spawn_blocking`, as every store write already is.
    pub(super) fn propose(&self, command: &Command) -> Result<Outcome, StoreError> {
        let proposal = Proposal(encode(command));
        let written = self
            .runtime
            .block_on(self.raft.client_write(proposal))
            .map_err(proposal_error)?;
        serde_json::from_slice(&written.data.0).map_err(|e| StoreError::Corrupt {
            table: "commands",
            detail: format!(
                "the outcome of log entry {} does not decode: {e}",
                written.log_id
            ),
        })
    }
}

fn proposal_error(
    error: RaftError<ReplicaId, ClientWriteError<ReplicaId, openraft::BasicNode>>,
) -> StoreError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => StoreError::NotLeader {
            leader: forward.leader_id,
            address: forward.leader_node.map(|n| n.addr),
        },
        RaftError::APIError(other @ ClientWriteError::ChangeMembershipError(_)) => {
            StoreError::Replication(other.to_string())
        }
        RaftError::Fatal(Fatal::Stopped) => StoreError::Stopped,
        RaftError::Fatal(other) => StoreError::Replication(other.to_string()),
    }
}

/// The leader as a [`StoreError::NotLeader`] names it.
pub(super) fn describe_leader(leader: Option<ReplicaId>, address: Option<&str>) -> String {
    match (leader, address) {
        (Some(id), Some(addr)) if !addr.is_empty() => {
            format!("the leader is replica {id} at {addr}")
        }
        (Some(id), _) => format!("the leader is replica {id}"),
        (None, _) => "no leader is elected yet; try again shortly".to_string(),
    }
}

fn corrupted(message: String) -> ApplyError {
    ApplyError::Storage(redb::Error::Corrupted(message))
}

impl ReplicatedData for StoreCommands {
    fn apply(&self, txn: &WriteTransaction, bytes: &[u8]) -> Result<Vec<u8>, ApplyError> {
        // A replica that cannot read a command must stop, not skip it: skipping would let replicas
        // of different versions diverge.
        let command: Command = serde_json::from_slice(bytes).map_err(|e| {
            corrupted(format!(
                "a replicated store command does not decode ({e}); this replica cannot apply the log (is it older than the leader?)"
            ))
        })?;
        let outcome = command::apply(txn, &command).map_err(|e| match e {
            StoreError::Db(e) => ApplyError::Storage(e),
            other => corrupted(other.to_string()),
        })?;
        Ok(serde_json::to_vec(&outcome).expect("outcomes always serialize"))
    }

    fn dump(&self, txn: &ReadTransaction, out: &mut dyn Write) -> io::Result<()> {
        snapshot::dump(txn, out).map_err(io::Error::other)
    }

    fn restore(&self, txn: &WriteTransaction, input: &mut dyn Read) -> io::Result<()> {
        snapshot::restore(txn, input).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}
