//! The replicated hub (issue 15, in progress): the store's writes become commands that openraft
//! replicates to 1, 3 or 5 replicas and that one deterministic state machine applies to redb on each.
//!
//! This module holds the Raft type configuration shared by the log store, the state machine and the
//! peer network (`network`: the replicas' mTLS peer channel); [`log_store`] (the log and vote on their
//! own redb file) and [`state_machine`] (the applied state and snapshots in the application's redb
//! database) are the storage openraft needs. The hub runs on it as replica 1 of a one-node cluster
//! (`server.rs`); more replicas need the peer listener and replica configuration.

pub mod network;
pub mod peers;

use serde::{Deserialize, Serialize};

/// A replica's id: assigned by `init` (1) and `add-replica`, never reused.
pub type ReplicaId = u64;

/// A store command as the log carries it: its canonical serialized form, decided by the leader (times,
/// random ids and signatures included) so every replica applies identical bytes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal(#[serde(with = "base64_bytes")] pub Vec<u8>);

/// Only the size: a command may carry Secret objects' data, which never goes to a log (invariant 8).
impl std::fmt::Debug for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Proposal({} bytes)", self.0.len())
    }
}

/// What applying a command answered (its serialized outcome), returned to the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Applied(#[serde(with = "base64_bytes")] pub Vec<u8>);

/// Bytes as one base64 string in the peer channel's JSON, not serde's array of numbers: that is
/// up to four times the size and, parsed number by number, too slow for a batch of entries to
/// cross within a heartbeat.
mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("not base64: {e}")))
    }
}

openraft::declare_raft_types!(
    /// The hub's Raft types.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = ReplicaId,
        Node = openraft::BasicNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

pub mod log_store;
pub mod state_machine;

#[cfg(test)]
mod tests;

pub use log_store::{LogStore, LogStoreError};
pub use state_machine::{ApplyError, ReplicatedData, StateMachineError, StateMachineStore};

/// openraft's storage error for the hub's types.
type StorageError = openraft::StorageError<ReplicaId>;

/// Runs blocking redb and file IO (commits fsync) off the async workers and waits for it; its
/// error (a sentence naming the file) becomes openraft's storage error about `subject`.
async fn blocking<T, E>(
    subject: openraft::ErrorSubject<ReplicaId>,
    verb: openraft::ErrorVerb,
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, StorageError>
where
    T: Send + 'static,
    E: std::error::Error + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(storage_error(subject, verb, &e)),
        Err(join) => Err(storage_error(subject, verb, &join)),
    }
}

/// Wraps one of our errors as openraft's storage error.
fn storage_error(
    subject: openraft::ErrorSubject<ReplicaId>,
    verb: openraft::ErrorVerb,
    error: &(impl std::error::Error + 'static),
) -> StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(error)).into()
}
