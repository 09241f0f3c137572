//! The hub store as the application side of the Raft state machine ([`crate::raft::ReplicatedData`]):
//! a log entry is a [`Command`] as JSON, its answer the [`Outcome`] as JSON, and a snapshot is the
//! store's own stream ([`super::snapshot`]). A refusal is an outcome that wrote nothing, so it needs no
//! rollback and every replica answers it alike.

use std::io::{self, Read, Write};

use redb::{ReadTransaction, WriteTransaction};

use super::{Command, HubStore, StoreError, command, snapshot};
use crate::raft::StateMachineStore;
use crate::raft::state_machine::{ApplyError, ReplicatedData};

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
