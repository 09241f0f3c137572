//! The hub store as the application side of the Raft state machine ([`crate::raft::ReplicatedData`]):
//! a log entry is a [`Command`] as JSON, its answer the [`Outcome`] as JSON, and a snapshot is the
//! store's own stream ([`super::snapshot`]). A refusal is an outcome that wrote nothing, so it needs no
//! rollback and every replica answers it alike. A [`HubStore`] given a [`Proposer`] writes by
//! proposing its commands to the leader and reads the state this replica applied.

use std::io::{self, Read, Write};

use std::sync::{Arc, Mutex};

use redb::{ReadTransaction, WriteTransaction};
use tokio::sync::broadcast;

use openraft::error::{ClientWriteError, Fatal, RaftError};

use super::{Command, HubStore, Notice, Outcome, StoreError, command, snapshot};
use crate::raft::peers::PeerDialer;
use crate::raft::state_machine::{ApplyError, ReplicatedData};
use crate::raft::{Proposal, ReplicaId, StateMachineStore, TypeConfig};

/// The hub store's commands, applied by the Raft state machine. What a batch changed is announced
/// on the store's notice channel once the batch's transaction committed.
#[derive(Debug, Clone)]
pub struct StoreCommands {
    notices: broadcast::Sender<Notice>,
    pending: Arc<Mutex<Vec<Notice>>>,
}

impl StoreCommands {
    fn new(notices: broadcast::Sender<Notice>) -> Self {
        StoreCommands {
            notices,
            pending: Arc::default(),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<Notice>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Opens the hub store as a Raft state machine at `path`, its tables created if missing, and the store
/// that reads its applied state.
pub fn open_state_machine(
    path: &std::path::Path,
) -> Result<(StateMachineStore<StoreCommands>, HubStore), OpenError> {
    let (notices, _) = broadcast::channel(super::NOTICE_BACKLOG);
    let machine = StateMachineStore::open(path, StoreCommands::new(notices.clone()))?;
    let store = HubStore::with_notices(machine.database().clone(), notices)?;
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

/// How long a follower waits for the leader to answer a command it forwarded.
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a write waits to be committed: a leader cut off from the majority never commits, and
/// its callers must move on to a replica that can.
const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A store's way to the Raft leader: a command is proposed with `client_write` and its outcome is
/// what the state machine answered once it applied it. On a follower with a [`PeerDialer`], the
/// command's bytes go to the leader over the peer channel and the leader proposes them unchanged.
#[derive(Clone)]
pub(super) struct Proposer {
    pub(super) raft: openraft::Raft<TypeConfig>,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) forward: Option<PeerDialer>,
}

impl Proposer {
    /// Proposes `command` and waits for its outcome; a fenced command is never forwarded (it is the
    /// leader's own, and a leader that lost the lead must not write). Blocking: `Handle::block_on`
    /// panics on an async worker thread, so callers run it in `spawn_blocking`, as every store write
    /// already is.
    pub(super) fn propose(&self, command: &Command) -> Result<Outcome, StoreError> {
        let bytes = encode(command);
        let written = match self.runtime.block_on(tokio::time::timeout(
            COMMIT_TIMEOUT,
            self.raft.client_write(Proposal(bytes.clone())),
        )) {
            Ok(written) => written,
            Err(_) => return Err(StoreError::NotCommitted(COMMIT_TIMEOUT)),
        };
        let (index, applied) = match written {
            Ok(written) => (written.log_id.index, written.data),
            Err(e) => match (proposal_error(e), &self.forward) {
                (StoreError::NotLeader { .. }, Some(dialer))
                    if !matches!(command, Command::Fenced { .. }) =>
                {
                    let proposed = self
                        .runtime
                        .block_on(dialer.propose_on_leader(&self.raft, &bytes, FORWARD_TIMEOUT))
                        .map_err(|e| StoreError::Forwarding(e.to_string()))?;
                    (proposed.index, proposed.applied)
                }
                (e, _) => return Err(e),
            },
        };
        serde_json::from_slice(&applied.0).map_err(|e| StoreError::Corrupt {
            table: "commands",
            detail: format!("the outcome of log entry {index} does not decode: {e}"),
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
    fn apply(
        &self,
        txn: &WriteTransaction,
        term: u64,
        bytes: &[u8],
    ) -> Result<Vec<u8>, ApplyError> {
        // A replica that cannot read a command must stop, not skip it: skipping would let replicas
        // of different versions diverge.
        let command: Command = serde_json::from_slice(bytes).map_err(|e| {
            corrupted(format!(
                "a replicated store command does not decode ({e}); this replica cannot apply the log (is it older than the leader?)"
            ))
        })?;
        let outcome = command::apply(txn, Some(term), &command).map_err(|e| match e {
            StoreError::Db(e) => ApplyError::Storage(e),
            other => corrupted(other.to_string()),
        })?;
        self.pending().extend(command::notices(&command, &outcome));
        Ok(serde_json::to_vec(&outcome).expect("outcomes always serialize"))
    }

    fn batch_aborted(&self) {
        self.pending().clear();
    }

    fn batch_committed(&self) {
        for notice in self.pending().drain(..) {
            let _ = self.notices.send(notice);
        }
    }

    fn restored(&self) {
        self.pending().clear();
        let _ = self.notices.send(Notice::Restored);
    }

    fn dump(&self, txn: &ReadTransaction, out: &mut dyn Write) -> io::Result<()> {
        snapshot::dump(txn, out).map_err(io::Error::other)
    }

    fn restore(&self, txn: &WriteTransaction, input: &mut dyn Read) -> io::Result<()> {
        snapshot::restore(txn, input).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}
