//! The replicated hub (issue 15, in progress): the store's writes become commands that openraft
//! replicates to 1, 3 or 5 replicas and that one deterministic state machine applies to redb on each.
//!
//! This module holds the Raft type configuration shared by the log store, the state machine and the
//! peer network (`network`: the replicas' mTLS peer channel). Nothing runs Raft yet: the hub still
//! writes its store directly.

pub mod network;

use serde::{Deserialize, Serialize};

/// A replica's id: assigned by `init` (1) and `add-replica`, never reused.
pub type ReplicaId = u64;

/// A store command as the log carries it: its canonical serialized form, decided by the leader (times,
/// random ids and signatures included) so every replica applies identical bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal(pub Vec<u8>);

/// What applying a command answered (its serialized outcome), returned to the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Applied(pub Vec<u8>);

openraft::declare_raft_types!(
    /// The hub's Raft types.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = ReplicaId,
        Node = openraft::BasicNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);
