//! The hub's durable state in redb: tokens, clusters, ClusterState versions,
//! object blobs, status reports and source progress.
//!
//! Every write is a [`Command`]. A store opened with [`HubStore::open`] applies it itself, in one
//! redb transaction with redb's default `Durability::Immediate`; the hub's store is a Raft replica's
//! applied state ([`open_state_machine`], [`HubStore::with_proposer`]) and proposes it to the leader
//! instead, answering once it is committed and applied. Either way a returned write is on disk.
//! Reads are one read transaction on the applied state. Calls block: async callers wrap writes in
//! `spawn_blocking` (a proposing store waits for Raft with `Handle::block_on`, which panics on an
//! async worker thread).

use std::path::Path;
use std::sync::Arc;

use flotilla_common::capabilities::Capabilities;
use flotilla_common::cluster_state::{SignedClusterState, SignedHeader};
use flotilla_common::digest::Digest;
use flotilla_common::labels::Labels;
use flotilla_common::status::StatusReport;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tokens");
const CLUSTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("clusters");
const STATES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("states");
const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");
/// (cluster, digest) pairs: which cluster may read which blob (invariant 6).
const CLUSTER_BLOBS: TableDefinition<(&str, &[u8]), ()> = TableDefinition::new("cluster_blobs");
const REPORTS: TableDefinition<&str, &[u8]> = TableDefinition::new("reports");
/// Signed headers apart from the bodies, so a chain is read without decoding any body.
const HEADERS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("headers");
/// The distinct digests each stored version references, 32 bytes each, for pruning.
const STATE_DIGESTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("state_digests");
/// How many of a cluster's stored versions reference a digest; its `cluster_blobs` entry
/// lives while this is above zero.
const CLUSTER_BLOB_REFS: TableDefinition<(&str, &[u8]), u64> =
    TableDefinition::new("cluster_blob_refs");
/// How many clusters' `cluster_blobs` entries name a digest; the blob lives while this is above zero.
const BLOB_REFS: TableDefinition<&[u8], u64> = TableDefinition::new("blob_refs");
/// When the hub (by its own clock, unix seconds) stored each cluster's newest report.
const REPORT_RECEIVED: TableDefinition<&str, i64> = TableDefinition::new("report_received");
const SOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("sources");
/// Event log: seq → event JSON (crate::events).
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// Rollout records by id (JSON [`crate::rollout::RolloutRecord`]).
const ROLLOUTS: TableDefinition<u64, &[u8]> = TableDefinition::new("rollouts");
/// Each app's newest rollout id.
const APP_ROLLOUTS: TableDefinition<&str, u64> = TableDefinition::new("app_rollouts");
/// Ended rollouts kept for `rollout list` and `status`, beyond each app's newest.
const ROLLOUT_HISTORY: usize = 200;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed (IO, corruption, full disk).
    #[error("hub store: {0}")]
    Db(#[from] redb::Error),
    /// The store file cannot be created with mode 0600.
    #[error("hub store {path}: cannot create it readable only by its owner: {source}")]
    Io {
        /// The store file.
        path: std::path::PathBuf,
        /// IO error.
        source: std::io::Error,
    },
    /// A stored record did not decode.
    #[error("hub store: corrupt record in {table}: {detail}")]
    Corrupt {
        /// Table.
        table: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// This replica is not the Raft leader, so it cannot write; the write goes to the leader.
    #[error("hub store: this hub replica is not the leader; {}", replicated::describe_leader(*.leader, .address.as_deref()))]
    NotLeader {
        /// The leader's replica id, when one is known.
        leader: Option<crate::raft::ReplicaId>,
        /// The address the leader is reached at, when known.
        address: Option<String>,
    },
    /// Raft stopped (the hub is shutting down) before the write was answered; it may or may not
    /// have been committed.
    #[error(
        "hub store: the hub is shutting down; the write was not answered and may not have been applied"
    )]
    Stopped,
    /// Raft failed (its log or state machine); the replica stops.
    #[error("hub store: replication failed: {0}")]
    Replication(String),
    /// The write was not committed in time: this replica cannot reach a majority. It may still be
    /// applied later, if the replica's log survives; every write is safe to repeat.
    #[error(
        "hub store: the write was not committed within {0:?}; this hub replica cannot reach a majority of the replicas (it may still be applied later)"
    )]
    NotCommitted(std::time::Duration),
    /// This replica follows and the leader did not take the write it forwarded.
    #[error("hub store: this hub replica follows and could not hand the write to the leader: {0}")]
    Forwarding(String),
    /// A write fenced to a Raft term reached the log in a later term: this replica's controller
    /// no longer leads (invariant: a deposed leader never issues a version).
    #[error(
        "hub store: refused a write decided as the leader of Raft term {term}; the log is at term {entry_term}, so another leader was elected since"
    )]
    Deposed {
        /// The term the write was decided in.
        term: u64,
        /// The term of the entry that carried it.
        entry_term: u64,
    },
    /// A ClusterState version not above the cluster's stored one was offered.
    #[error(
        "hub store: refused ClusterState version {version} for cluster {cluster}: version {latest} is already stored, and a version is never reused or lowered"
    )]
    StaleVersion {
        /// Cluster id.
        cluster: String,
        /// Offered.
        version: u64,
        /// Stored.
        latest: u64,
    },
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
db_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Why a registration was refused. Deliberately vague towards the caller: an
/// unknown and a used token look alike.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// No such token, or already used, or expired.
    #[error("bootstrap token is unknown, already used or expired")]
    BadToken,
    /// Another cluster has that name.
    #[error("a cluster named {0:?} is already registered")]
    NameTaken(String),
    /// The token pins another name than the agent asked for.
    #[error(
        "this bootstrap token is for the cluster named {pinned:?}, but the agent asked for {requested:?}; start the agent with --name {pinned} or create a token for {requested:?}"
    )]
    NamePinned {
        /// The token's name.
        pinned: String,
        /// The agent's.
        requested: String,
    },
    /// Storage failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A bootstrap token, stored under the SHA-256 of its secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    /// Labels the registering cluster receives.
    pub labels: Labels,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds after which the token is refused.
    pub expires_at: i64,
    /// Set when consumed.
    pub used_by: Option<String>,
    /// The name the registering cluster gets, when the operator pinned one.
    #[serde(default)]
    pub name: Option<String>,
}

/// A registered cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterRecord {
    /// `c-<hex>`.
    pub id: String,
    /// Operator-facing name, unique.
    pub name: String,
    /// Labels used for targeting.
    pub labels: Labels,
    /// Unix seconds.
    pub registered_at: i64,
    /// Unix seconds when the newest certificate issued to the cluster expires.
    #[serde(default)]
    pub cert_expires_at: i64,
    /// Unix seconds of the newest renewal; 0 before the first.
    #[serde(default)]
    pub renewed_at: i64,
    /// What the cluster's agent last reported its API server offers (validated at the API edge).
    /// Records from before capabilities, and clusters that reported none, have no such key.
    #[serde(default, skip_serializing_if = "Capabilities::is_empty")]
    pub capabilities: Capabilities,
}

/// Why an operator's change to a cluster was refused.
#[derive(Debug, thiserror::Error)]
pub enum ClusterUpdateError {
    /// No cluster has that name or id.
    #[error("no cluster is named {0:?} (or has that id)")]
    NotFound(String),
    /// Storage failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the hub last learned about a source.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceRecord {
    /// Newest commit fetched.
    pub fetched_commit: String,
    /// Commit whose render is in force (the last good one).
    pub rendered_commit: String,
    /// Why the newest commit is not in force; empty when it is.
    pub error: String,
    /// Unix seconds of the last fetch attempt.
    pub last_fetch: i64,
}

/// What storing a status report found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedReport {
    /// The report was newer than the stored one and replaced it.
    pub fresh: bool,
    /// The reporting cluster's name.
    pub cluster_name: String,
    /// The report stored before.
    pub previous: Option<StatusReport>,
}

/// One new ClusterState version to store with the blobs it references.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewState {
    /// Cluster.
    pub cluster_id: String,
    /// Version number (must be the cluster's latest + 1).
    pub version: u64,
    /// The signed state.
    pub signed: SignedClusterState,
    /// Every object the state references, by digest.
    pub blobs: Vec<(Digest, Arc<Vec<u8>>)>,
}

/// One cluster as a status query sees it, read in one transaction.
#[derive(Debug, Clone)]
pub struct ClusterSnapshot {
    /// Registration.
    pub cluster: ClusterRecord,
    /// Newest ClusterState and its version.
    pub latest: Option<(u64, SignedClusterState)>,
    /// Newest status report.
    pub report: Option<StatusReport>,
    /// When the hub stored that report, by the hub's clock (unix seconds; 0 for never).
    pub reported_at: i64,
}

/// The hub's redb database.
#[derive(Clone)]
pub struct HubStore {
    db: Arc<Database>,
    /// Versions kept per cluster; older ones are pruned when a new one is committed.
    retention: u64,
    /// Where writes go when this is a Raft replica's applied state; `None` applies them here.
    proposer: Option<replicated::Proposer>,
    /// Changes applied to this database, announced once committed.
    notices: tokio::sync::broadcast::Sender<Notice>,
    /// The Raft term this store's writes are fenced to (the leader's controller's store).
    fence: Option<u64>,
}

/// How many applied changes a slow subscriber may fall behind before it is told it lagged (and
/// reads the store afresh).
const NOTICE_BACKLOG: usize = 4096;

/// A digest and its bytes, or `None` when the caller may not read it.
pub type MaybeBlob = (Digest, Option<Vec<u8>>);

/// What pruning removed in one commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pruned {
    /// ClusterState versions (header and body).
    pub versions: u64,
    /// Blobs no retained version of any cluster references any more.
    pub blobs: u64,
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("store records always serialize")
}

fn unjson<T: for<'a> Deserialize<'a>>(table: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        table,
        detail: e.to_string(),
    })
}

fn encode_parts(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| 4 + p.len()).sum());
    for part in parts {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

fn encode_state(s: &SignedClusterState) -> Vec<u8> {
    encode_parts(&[&s.header, &s.signature, &s.body])
}

fn encode_header(s: &SignedClusterState) -> Vec<u8> {
    encode_parts(&[&s.header, &s.signature])
}

fn decode_header(bytes: &[u8]) -> Result<SignedHeader, StoreError> {
    let mut parts = decode_parts("headers", bytes, 2)?;
    let signature = parts.pop().expect("2 parts");
    let header = parts.pop().expect("2 parts");
    Ok(SignedHeader { header, signature })
}

fn decode_state(bytes: &[u8]) -> Result<SignedClusterState, StoreError> {
    let mut parts = decode_parts("states", bytes, 3)?;
    let body = parts.pop().expect("3 parts");
    let signature = parts.pop().expect("3 parts");
    let header = parts.pop().expect("3 parts");
    Ok(SignedClusterState {
        header,
        signature,
        body,
    })
}

/// The distinct digests of a version's blobs, concatenated.
fn digest_list(blobs: &[(Digest, Arc<Vec<u8>>)]) -> Vec<u8> {
    let set: std::collections::BTreeSet<&Digest> = blobs.iter().map(|(d, _)| d).collect();
    set.into_iter().flat_map(|d| d.0).collect()
}

fn decode_parts(
    table: &'static str,
    bytes: &[u8],
    count: usize,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let corrupt = || StoreError::Corrupt {
        table,
        detail: "truncated record".into(),
    };
    let mut parts = Vec::with_capacity(count);
    let mut rest = bytes;
    for _ in 0..count {
        if rest.len() < 4 {
            return Err(corrupt());
        }
        let len = u32::from_be_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        rest = &rest[4..];
        if rest.len() < len {
            return Err(corrupt());
        }
        parts.push(rest[..len].to_vec());
        rest = &rest[len..];
    }
    Ok(parts)
}

/// A cluster's newest state, report and report time, read in `txn`.
fn snapshot_in(
    txn: &redb::ReadTransaction,
    cluster: ClusterRecord,
) -> Result<ClusterSnapshot, StoreError> {
    let id = cluster.id.as_str();
    let latest = match txn
        .open_table(STATES)?
        .range((id, 0)..=(id, u64::MAX))?
        .next_back()
    {
        Some(entry) => {
            let (k, v) = entry?;
            Some((k.value().1, decode_state(v.value())?))
        }
        None => None,
    };
    let report = txn
        .open_table(REPORTS)?
        .get(id)?
        .map(|v| unjson("reports", v.value()))
        .transpose()?;
    let reported_at = txn
        .open_table(REPORT_RECEIVED)?
        .get(id)?
        .map(|v| v.value())
        .unwrap_or(0);
    Ok(ClusterSnapshot {
        cluster,
        latest,
        report,
        reported_at,
    })
}

fn find_cluster_in(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name_or_id: &str,
) -> Result<Option<ClusterRecord>, StoreError> {
    if let Some(v) = table.get(name_or_id)? {
        return Ok(Some(unjson("clusters", v.value())?));
    }
    for entry in table.iter()? {
        let (_, v) = entry?;
        let record: ClusterRecord = unjson("clusters", v.value())?;
        if record.name == name_or_id {
            return Ok(Some(record));
        }
    }
    Ok(None)
}

/// An outcome a write method did not expect from its own command: a bug, reported as corruption.
impl StoreError {
    /// The same error for another caller of one failed write (a batch's): the kinds callers tell
    /// apart are kept, the others become their sentence.
    pub fn clone_for_caller(&self) -> StoreError {
        match self {
            StoreError::NotLeader { leader, address } => StoreError::NotLeader {
                leader: *leader,
                address: address.clone(),
            },
            StoreError::Stopped => StoreError::Stopped,
            StoreError::NotCommitted(d) => StoreError::NotCommitted(*d),
            StoreError::Forwarding(m) => StoreError::Forwarding(m.clone()),
            StoreError::Deposed { term, entry_term } => StoreError::Deposed {
                term: *term,
                entry_term: *entry_term,
            },
            other => StoreError::Replication(other.to_string()),
        }
    }
}

/// The refusals no caller can act on but by giving up the write: a deposed controller's, and a
/// version that is not new.
fn refusal_as_error(outcome: Outcome) -> Result<Outcome, StoreError> {
    match outcome {
        Outcome::Refused(Refusal::Deposed { term, entry_term }) => {
            Err(StoreError::Deposed { term, entry_term })
        }
        Outcome::Refused(Refusal::StaleVersion {
            cluster,
            version,
            latest,
        }) => Err(StoreError::StaleVersion {
            cluster,
            version,
            latest,
        }),
        other => Ok(other),
    }
}

fn unexpected(command: &str, outcome: &Outcome) -> StoreError {
    StoreError::Corrupt {
        table: "commands",
        detail: format!("{command} answered {outcome:?}"),
    }
}

impl HubStore {
    /// Applies one command in its own write transaction, the one way anything is written; a refusal
    /// writes nothing.
    pub fn execute(&self, command: &Command) -> Result<Outcome, StoreError> {
        let fenced;
        let command = match self.fence {
            Some(term) => {
                fenced = Command::Fenced {
                    term,
                    inner: Box::new(command.clone()),
                };
                &fenced
            }
            None => command,
        };
        if let Some(proposer) = &self.proposer {
            return proposer.propose(command).and_then(refusal_as_error);
        }
        let txn = self.db.begin_write()?;
        let outcome = command::apply(&txn, None, command)?;
        if outcome.wrote() {
            txn.commit()?;
            for notice in command::notices(command, &outcome) {
                let _ = self.notices.send(notice);
            }
        } else {
            txn.abort()?;
        }
        refusal_as_error(outcome)
    }

    /// Hears every change applied to this store from now on, once committed.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    /// The same store with every write fenced to Raft `term`: applied from a log entry of another
    /// term, a write is refused ([`StoreError::Deposed`]). The leader's controller writes through it.
    pub fn fenced_to(mut self, term: u64) -> Self {
        self.fence = Some(term);
        self
    }

    /// Opens (or creates) the database file and its tables.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // Create the file ourselves so it never exists with looser permissions than 0600.
        crate::datadir::create_private_file(path).map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let db = Database::create(path)?;
        Self::from_database(Arc::new(db))
    }

    /// The store over a database someone else opened (the Raft state machine's), its tables created
    /// if missing.
    pub fn from_database(db: Arc<Database>) -> Result<Self, StoreError> {
        Self::with_notices(db, tokio::sync::broadcast::channel(NOTICE_BACKLOG).0)
    }

    /// [`HubStore::from_database`] announcing on `notices`, the channel the database's Raft state
    /// machine announces what it applied on.
    pub(crate) fn with_notices(
        db: Arc<Database>,
        notices: tokio::sync::broadcast::Sender<Notice>,
    ) -> Result<Self, StoreError> {
        let txn = db.begin_write()?;
        {
            txn.open_table(META)?;
            txn.open_table(TOKENS)?;
            txn.open_table(CLUSTERS)?;
            txn.open_table(STATES)?;
            txn.open_table(BLOBS)?;
            txn.open_table(CLUSTER_BLOBS)?;
            txn.open_table(REPORTS)?;
            txn.open_table(SOURCES)?;
            txn.open_table(HEADERS)?;
            txn.open_table(STATE_DIGESTS)?;
            txn.open_table(CLUSTER_BLOB_REFS)?;
            txn.open_table(BLOB_REFS)?;
            txn.open_table(REPORT_RECEIVED)?;
            txn.open_table(EVENTS)?;
            txn.open_table(ROLLOUTS)?;
            txn.open_table(APP_ROLLOUTS)?;
            upgrade_version_index(&txn)?;
        }
        txn.commit()?;
        Ok(HubStore {
            db,
            retention: u64::MAX,
            proposer: None,
            notices,
            fence: None,
        })
    }

    /// The same store writing through `raft`: each command is proposed to the leader and answered
    /// once applied here, waiting on `runtime` (so writes must be called off its async workers).
    /// The store must be `raft`'s state machine's database.
    pub fn with_proposer(
        mut self,
        raft: openraft::Raft<crate::raft::TypeConfig>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        self.proposer = Some(replicated::Proposer {
            raft,
            runtime,
            forward: None,
        });
        self
    }

    /// The same store sending writes this replica cannot propose (it follows) to the leader through
    /// `dialer`; without it they fail with [`StoreError::NotLeader`]. Needs a proposer.
    pub fn forwarding(mut self, dialer: crate::raft::peers::PeerDialer) -> Self {
        if let Some(p) = &mut self.proposer {
            p.forward = Some(dialer);
        }
        self
    }

    /// The same store, keeping only the newest `versions` ClusterStates per cluster from the
    /// next commit on (`rpc.stateRetention`).
    pub fn with_retention(mut self, versions: u64) -> Self {
        self.retention = versions.max(1);
        self
    }

    /// Reads a counter from the meta table.
    pub fn meta(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(META)?.get(key)?.map(|v| v.value()))
    }

    /// Sets a counter in the meta table.
    pub fn set_meta(&self, key: &str, value: u64) -> Result<(), StoreError> {
        self.execute(&Command::SetMeta {
            key: key.into(),
            value,
        })
        .map(|_| ())
    }

    /// Records that a push webhook for source `name` arrived at `at_millis`: the leader's
    /// controller fetches that source at once, whichever replica took the webhook.
    pub fn record_source_hook(&self, name: &str, at_millis: u64) -> Result<(), StoreError> {
        self.set_meta(&format!("{}{name}", command::SOURCE_HOOK_PREFIX), at_millis)
    }

    /// Stores a new bootstrap token under the hash of its secret.
    pub fn put_token(&self, hash: &[u8; 32], record: &TokenRecord) -> Result<(), StoreError> {
        self.execute(&Command::PutToken {
            hash: *hash,
            record: record.clone(),
        })
        .map(|_| ())
    }

    /// Whether a token exists, is unused and unexpired, read without the write lock.
    pub fn token_usable(&self, token_hash: &[u8; 32], now: i64) -> Result<bool, StoreError> {
        let txn = self.db.begin_read()?;
        let Some(v) = txn.open_table(TOKENS)?.get(token_hash.as_slice())? else {
            return Ok(false);
        };
        let record: TokenRecord = unjson("tokens", v.value())?;
        Ok(record.used_by.is_none() && now <= record.expires_at)
    }

    /// Consumes a token and creates the cluster in one transaction, so a token
    /// registers at most one cluster even when two agents race with it.
    pub fn register(&self, registration: Registration) -> Result<ClusterRecord, RegisterError> {
        match self.execute(&Command::Register(registration))? {
            Outcome::Cluster(c) => Ok(c),
            Outcome::Refused(Refusal::BadToken) => Err(RegisterError::BadToken),
            Outcome::Refused(Refusal::NameTaken { name }) => Err(RegisterError::NameTaken(name)),
            Outcome::Refused(Refusal::NamePinned { pinned, requested }) => {
                Err(RegisterError::NamePinned { pinned, requested })
            }
            other => Err(unexpected("register", &other).into()),
        }
    }

    /// Deletes tokens that expired before `now`; returns how many.
    pub fn sweep_tokens(&self, now: i64) -> Result<usize, StoreError> {
        match self.execute(&Command::SweepTokens { now })? {
            Outcome::Swept(n) => Ok(n),
            other => Err(unexpected("sweepTokens", &other)),
        }
    }

    /// Every registered cluster, by id.
    pub fn clusters(&self) -> Result<Vec<ClusterRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CLUSTERS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (_, v) = entry?;
            out.push(unjson("clusters", v.value())?);
        }
        Ok(out)
    }

    /// Every cluster with its newest state and report, from one read
    /// transaction so a status answer never mixes two moments.
    pub fn cluster_snapshots(&self) -> Result<Vec<ClusterSnapshot>, StoreError> {
        let txn = self.db.begin_read()?;
        let clusters = txn.open_table(CLUSTERS)?;
        let mut out = Vec::new();
        for entry in clusters.iter()? {
            let (_, v) = entry?;
            out.push(snapshot_in(&txn, unjson("clusters", v.value())?)?);
        }
        Ok(out)
    }

    /// Every cluster with its newest report and when the hub stored it (0 for never), read in one
    /// transaction; lighter than [`HubStore::cluster_snapshots`] (no ClusterStates).
    pub fn cluster_reports(
        &self,
    ) -> Result<Vec<(ClusterRecord, Option<StatusReport>, i64)>, StoreError> {
        let txn = self.db.begin_read()?;
        let clusters = txn.open_table(CLUSTERS)?;
        let reports = txn.open_table(REPORTS)?;
        let received = txn.open_table(REPORT_RECEIVED)?;
        let mut out = Vec::new();
        for entry in clusters.iter()? {
            let (k, v) = entry?;
            let cluster: ClusterRecord = unjson("clusters", v.value())?;
            let report = reports
                .get(k.value())?
                .map(|r| unjson("reports", r.value()))
                .transpose()?;
            let at = received.get(k.value())?.map(|r| r.value()).unwrap_or(0);
            out.push((cluster, report, at));
        }
        Ok(out)
    }

    /// One cluster.
    pub fn cluster(&self, id: &str) -> Result<Option<ClusterRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CLUSTERS)?;
        table
            .get(id)?
            .map(|v| unjson("clusters", v.value()))
            .transpose()
    }

    /// The newest ClusterState of a cluster and its version.
    pub fn latest_state(
        &self,
        cluster_id: &str,
    ) -> Result<Option<(u64, SignedClusterState)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(STATES)?;
        let last = table
            .range((cluster_id, 0)..=(cluster_id, u64::MAX))?
            .next_back();
        match last {
            Some(entry) => {
                let (k, v) = entry?;
                Ok(Some((k.value().1, decode_state(v.value())?)))
            }
            None => Ok(None),
        }
    }

    /// One version of a cluster's ClusterState.
    pub fn state(
        &self,
        cluster_id: &str,
        version: u64,
    ) -> Result<Option<SignedClusterState>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(STATES)?;
        table
            .get((cluster_id, version))?
            .map(|v| decode_state(v.value()))
            .transpose()
    }

    /// Signed headers of the versions strictly between `after` and `before`, oldest first,
    /// or `None` when one of them is no longer stored (pruned, or `after` was never issued).
    /// At most `max` headers are read: a longer chain is `None` too.
    pub fn chain_between(
        &self,
        cluster_id: &str,
        after: u64,
        before: u64,
        max: usize,
    ) -> Result<Option<Vec<SignedHeader>>, StoreError> {
        if before <= after.saturating_add(1) {
            return Ok(Some(Vec::new()));
        }
        if before - after - 1 > max as u64 {
            return Ok(None);
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(HEADERS)?;
        let mut out = Vec::with_capacity((before - after - 1) as usize);
        for entry in table.range((cluster_id, after + 1)..(cluster_id, before))? {
            let (k, v) = entry?;
            if k.value().1 != after + 1 + out.len() as u64 {
                return Ok(None);
            }
            out.push(decode_header(v.value())?);
        }
        Ok((out.len() as u64 == before - after - 1).then_some(out))
    }

    /// Signed headers of the versions strictly between `after` and `before`, oldest first,
    /// as far as they are stored.
    pub fn headers_between(
        &self,
        cluster_id: &str,
        after: u64,
        before: u64,
    ) -> Result<Vec<SignedHeader>, StoreError> {
        if before <= after.saturating_add(1) {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read()?;
        let table = txn.open_table(HEADERS)?;
        let mut out = Vec::new();
        for entry in table.range((cluster_id, after + 1)..(cluster_id, before))? {
            let (_, v) = entry?;
            out.push(decode_header(v.value())?);
        }
        Ok(out)
    }

    /// Stores new ClusterState versions and their blobs in one transaction, then prunes each
    /// cluster's versions beyond the retention count and the blobs only they referenced.
    pub fn commit_states(&self, states: &[NewState]) -> Result<Pruned, StoreError> {
        self.commit_states_and_rollouts(states, &[])
    }

    /// [`HubStore::commit_states`] and the rollouts whose fences these states set, in one transaction:
    /// a rollout never counts a cluster on a version that was not stored, nor misses one that was.
    pub fn commit_states_and_rollouts(
        &self,
        states: &[NewState],
        rollouts: &[crate::rollout::RolloutRecord],
    ) -> Result<Pruned, StoreError> {
        match self.execute(&Command::CommitStates {
            states: states.to_vec(),
            rollouts: rollouts.to_vec(),
            retention: self.retention,
        })? {
            Outcome::Committed(p) => Ok(p),
            other => Err(unexpected("commitStates", &other)),
        }
    }

    /// Stores rollout records (new ones and changed ones) in one transaction: each app's newest id moves
    /// forward, and ended rollouts beyond the history bound are dropped, oldest first.
    pub fn put_rollouts(
        &self,
        rollouts: &[crate::rollout::RolloutRecord],
    ) -> Result<(), StoreError> {
        self.execute(&Command::PutRollouts {
            rollouts: rollouts.to_vec(),
        })
        .map(|_| ())
    }

    /// Every app's newest rollout record.
    pub fn latest_rollouts(&self) -> Result<Vec<crate::rollout::RolloutRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let index = txn.open_table(APP_ROLLOUTS)?;
        let table = txn.open_table(ROLLOUTS)?;
        let mut out = Vec::new();
        for entry in index.iter()? {
            let (_, id) = entry?;
            if let Some(v) = table.get(id.value())? {
                out.push(unjson("rollouts", v.value())?);
            }
        }
        Ok(out)
    }

    /// Stored rollout records, newest first, of one app or of all.
    pub fn rollouts(
        &self,
        app: Option<&str>,
    ) -> Result<Vec<crate::rollout::RolloutRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ROLLOUTS)?;
        let mut out = Vec::new();
        for entry in table.iter()?.rev() {
            let (_, v) = entry?;
            let record: crate::rollout::RolloutRecord = unjson("rollouts", v.value())?;
            if app.is_none_or(|a| a == record.rollout.app) {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// The highest rollout id stored (0 when there is none).
    pub fn last_rollout_id(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ROLLOUTS)?;
        Ok(table.last()?.map(|(k, _)| k.value()).unwrap_or(0))
    }

    /// Whether a blob is stored at all, whoever may read it (for tests of pruning).
    pub fn has_blob(&self, digest: &Digest) -> Result<bool, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(BLOBS)?.get(digest.0.as_slice())?.is_some())
    }

    /// A blob, but only if one of `cluster_id`'s ClusterStates references it (invariant 6).
    pub fn blob_for_cluster(
        &self,
        cluster_id: &str,
        digest: &Digest,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        if txn
            .open_table(CLUSTER_BLOBS)?
            .get((cluster_id, digest.0.as_slice()))?
            .is_none()
        {
            return Ok(None);
        }
        Ok(txn
            .open_table(BLOBS)?
            .get(digest.0.as_slice())?
            .map(|v| v.value().to_vec()))
    }

    /// The blobs for a prefix of `digests`, each `None` when `cluster_id` may not read it
    /// (invariant 6), read in one transaction: at most `max_blobs`, and no more once
    /// `max_bytes` are gathered (at least one is always returned for a non-empty request).
    pub fn blobs_for_cluster(
        &self,
        cluster_id: &str,
        digests: &[Digest],
        max_blobs: usize,
        max_bytes: u64,
    ) -> Result<Vec<MaybeBlob>, StoreError> {
        let txn = self.db.begin_read()?;
        let index = txn.open_table(CLUSTER_BLOBS)?;
        let blobs = txn.open_table(BLOBS)?;
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for digest in digests.iter().take(max_blobs.max(1)) {
            if bytes >= max_bytes {
                break;
            }
            let data = if index.get((cluster_id, digest.0.as_slice()))?.is_some() {
                blobs.get(digest.0.as_slice())?.map(|v| v.value().to_vec())
            } else {
                None
            };
            bytes += data.as_ref().map_or(0, |d| d.len() as u64);
            out.push((*digest, data));
        }
        Ok(out)
    }

    /// Records a status report unless one with the same or a higher seq is
    /// already stored; returns whether it was new. Either way the caller may ack it.
    /// `received_at` is the hub's clock, kept as the cluster's last durable contact.
    /// A deleted cluster's reports are dropped.
    pub fn record_report(
        &self,
        cluster_id: &str,
        report: &StatusReport,
        received_at: i64,
    ) -> Result<bool, StoreError> {
        Ok(self
            .record_report_with_previous(cluster_id, report, received_at)?
            .is_some_and(|r| r.fresh))
    }

    /// [`HubStore::record_report`], also giving what the events of the report need (the cluster's name
    /// and the report it replaced) from the same transaction; `None` for a deleted cluster.
    pub fn record_report_with_previous(
        &self,
        cluster_id: &str,
        report: &StatusReport,
        received_at: i64,
    ) -> Result<Option<RecordedReport>, StoreError> {
        match self.execute(&Command::RecordReport {
            cluster_id: cluster_id.into(),
            report: report.clone(),
            received_at,
        })? {
            Outcome::Report(r) => Ok(r),
            other => Err(unexpected("recordReport", &other)),
        }
    }

    /// Stores a batch of status reports in one command (one Raft log entry); each answer is what
    /// [`HubStore::record_report_with_previous`] would have answered for it, in order.
    pub fn record_reports(
        &self,
        reports: Vec<ReportEntry>,
    ) -> Result<Vec<Option<RecordedReport>>, StoreError> {
        let n = reports.len();
        match self.execute(&Command::RecordReports { reports })? {
            Outcome::Reports(r) if r.len() == n => Ok(r),
            other => Err(unexpected("recordReports", &other)),
        }
    }

    /// Appends events with the next sequence numbers and drops the oldest beyond `retention`, in one
    /// transaction; returns them numbered.
    pub fn append_events(
        &self,
        events: &[crate::events::NewEvent],
        retention: u64,
    ) -> Result<Vec<crate::events::Event>, StoreError> {
        match self.execute(&Command::AppendEvents {
            events: events.to_vec(),
            retention,
        })? {
            Outcome::Events(e) => Ok(e),
            other => Err(unexpected("appendEvents", &other)),
        }
    }

    /// Up to `limit` events after `after`, oldest first.
    pub fn events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<crate::events::Event>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(EVENTS)?;
        let mut out = Vec::new();
        for entry in table.range(after.saturating_add(1)..)?.take(limit) {
            let (_, v) = entry?;
            out.push(unjson("events", v.value())?);
        }
        Ok(out)
    }

    /// The sequence number of the newest event; 0 when there is none.
    pub fn last_event_seq(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(EVENTS)?;
        Ok(table.last()?.map(|(k, _)| k.value()).unwrap_or(0))
    }

    /// The newest status report of a cluster.
    pub fn report(&self, cluster_id: &str) -> Result<Option<StatusReport>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(REPORTS)?;
        table
            .get(cluster_id)?
            .map(|v| unjson("reports", v.value()))
            .transpose()
    }

    /// The cluster with this name, or else with this id.
    pub fn find_cluster(&self, name_or_id: &str) -> Result<Option<ClusterRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CLUSTERS)?;
        find_cluster_in(&table, name_or_id)
    }

    /// One cluster with its newest state and report, read in one transaction.
    pub fn cluster_snapshot(
        &self,
        name_or_id: &str,
    ) -> Result<Option<ClusterSnapshot>, StoreError> {
        let txn = self.db.begin_read()?;
        let clusters = txn.open_table(CLUSTERS)?;
        let Some(cluster) = find_cluster_in(&clusters, name_or_id)? else {
            return Ok(None);
        };
        snapshot_in(&txn, cluster).map(Some)
    }

    /// Sets and removes labels of a cluster in one transaction; returns the updated record.
    pub fn label_cluster(
        &self,
        name_or_id: &str,
        set: &Labels,
        remove: &[String],
    ) -> Result<ClusterRecord, ClusterUpdateError> {
        self.update_cluster(Command::LabelCluster {
            cluster: name_or_id.into(),
            set: set.clone(),
            remove: remove.to_vec(),
        })
    }

    /// Records a renewed certificate's expiry.
    pub fn record_renewal(
        &self,
        id: &str,
        cert_expires_at: i64,
        now: i64,
    ) -> Result<ClusterRecord, ClusterUpdateError> {
        self.update_cluster(Command::RecordRenewal {
            cluster: id.into(),
            cert_expires_at,
            now,
        })
    }

    /// Replaces a cluster's capabilities; returns whether they changed. Unchanged ones are
    /// found in a read transaction and never take the write lock.
    pub fn set_capabilities(
        &self,
        id: &str,
        capabilities: &Capabilities,
    ) -> Result<bool, ClusterUpdateError> {
        match self.cluster(id)? {
            None => return Err(ClusterUpdateError::NotFound(id.to_string())),
            Some(record) if record.capabilities == *capabilities => return Ok(false),
            Some(_) => {}
        }
        match self.execute(&Command::SetCapabilities {
            cluster: id.into(),
            capabilities: capabilities.clone(),
        })? {
            Outcome::Capabilities { changed } => Ok(changed),
            Outcome::Refused(Refusal::NotFound { cluster }) => {
                Err(ClusterUpdateError::NotFound(cluster))
            }
            other => Err(unexpected("setCapabilities", &other).into()),
        }
    }

    fn update_cluster(&self, command: Command) -> Result<ClusterRecord, ClusterUpdateError> {
        match self.execute(&command)? {
            Outcome::Cluster(c) => Ok(c),
            Outcome::Refused(Refusal::NotFound { cluster }) => {
                Err(ClusterUpdateError::NotFound(cluster))
            }
            other => Err(unexpected("updateCluster", &other).into()),
        }
    }

    /// Deletes a cluster with its ClusterStates, its blob index and its report, in one
    /// transaction; blobs that only its states referenced go with them.
    pub fn delete_cluster(&self, name_or_id: &str) -> Result<ClusterRecord, ClusterUpdateError> {
        self.update_cluster(Command::DeleteCluster {
            cluster: name_or_id.into(),
        })
    }

    /// Saves what the hub knows about a source.
    pub fn put_source(&self, name: &str, record: &SourceRecord) -> Result<(), StoreError> {
        self.execute(&Command::PutSource {
            name: name.into(),
            record: record.clone(),
        })
        .map(|_| ())
    }

    /// What the hub knows about a source.
    pub fn source(&self, name: &str) -> Result<Option<SourceRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SOURCES)?;
        table
            .get(name)?
            .map(|v| unjson("sources", v.value()))
            .transpose()
    }
}

/// The tables that track which versions reference which blobs.
struct VersionTables<'t> {
    headers: redb::Table<'t, (&'static str, u64), &'static [u8]>,
    digests: redb::Table<'t, (&'static str, u64), &'static [u8]>,
    index: redb::Table<'t, (&'static str, &'static [u8]), ()>,
    cluster_refs: redb::Table<'t, (&'static str, &'static [u8]), u64>,
    blob_refs: redb::Table<'t, &'static [u8], u64>,
}

impl<'t> VersionTables<'t> {
    fn open(txn: &'t redb::WriteTransaction) -> Result<Self, StoreError> {
        Ok(VersionTables {
            headers: txn.open_table(HEADERS)?,
            digests: txn.open_table(STATE_DIGESTS)?,
            index: txn.open_table(CLUSTER_BLOBS)?,
            cluster_refs: txn.open_table(CLUSTER_BLOB_REFS)?,
            blob_refs: txn.open_table(BLOB_REFS)?,
        })
    }

    /// Records that `cluster`'s `version` references `digests` (distinct, concatenated).
    fn reference(&mut self, cluster: &str, version: u64, digests: &[u8]) -> Result<(), StoreError> {
        self.digests.insert((cluster, version), digests)?;
        for digest in digests.chunks_exact(32) {
            let n = self
                .cluster_refs
                .get((cluster, digest))?
                .map(|v| v.value())
                .unwrap_or(0);
            self.cluster_refs.insert((cluster, digest), n + 1)?;
            if n == 0 {
                self.index.insert((cluster, digest), ())?;
                let b = self.blob_refs.get(digest)?.map(|v| v.value()).unwrap_or(0);
                self.blob_refs.insert(digest, b + 1)?;
            }
        }
        Ok(())
    }

    /// Forgets `cluster`'s `version`'s references; returns the digests no one references now.
    fn unreference(&mut self, cluster: &str, version: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let Some(digests) = self
            .digests
            .remove((cluster, version))?
            .map(|v| v.value().to_vec())
        else {
            return Ok(Vec::new());
        };
        let mut orphans = Vec::new();
        for digest in digests.chunks_exact(32) {
            let n = self
                .cluster_refs
                .get((cluster, digest))?
                .map(|v| v.value())
                .unwrap_or(0);
            if n > 1 {
                self.cluster_refs.insert((cluster, digest), n - 1)?;
                continue;
            }
            self.cluster_refs.remove((cluster, digest))?;
            self.index.remove((cluster, digest))?;
            let b = self.blob_refs.get(digest)?.map(|v| v.value()).unwrap_or(0);
            if b > 1 {
                self.blob_refs.insert(digest, b - 1)?;
            } else {
                self.blob_refs.remove(digest)?;
                orphans.push(digest.to_vec());
            }
        }
        Ok(orphans)
    }
}

/// Stores written before headers and references were kept apart have versions in `states`
/// only: derive their headers and blob references once, from the stored bodies.
fn upgrade_version_index(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let states = txn.open_table(STATES)?;
    let mut t = VersionTables::open(txn)?;
    if states.len()? == t.digests.len()? {
        return Ok(());
    }
    for entry in states.iter()? {
        let (k, v) = entry?;
        let (cluster, version) = k.value();
        if t.digests.get((cluster, version))?.is_some() {
            continue;
        }
        let signed = decode_state(v.value())?;
        let state = signed
            .decode_unverified()
            .map_err(|e| StoreError::Corrupt {
                table: "states",
                detail: format!("{cluster} version {version}: {e}"),
            })?;
        let digests: std::collections::BTreeSet<Digest> = state
            .body
            .apps
            .iter()
            .flat_map(|a| a.objects.iter().map(|o| o.digest))
            .collect();
        let list: Vec<u8> = digests.iter().flat_map(|d| d.0).collect();
        t.headers
            .insert((cluster, version), encode_header(&signed).as_slice())?;
        t.reference(cluster, version, &list)?;
    }
    Ok(())
}

mod command;
mod replicated;
mod snapshot;
#[cfg(test)]
mod tests;

pub use command::{Command, Notice, Outcome, Refusal, Registration, ReportEntry};
pub use replicated::{OpenError, StoreCommands, encode as encode_command, open_state_machine};
pub use snapshot::SnapshotError;
