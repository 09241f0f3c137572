//! The hub's durable state in redb: tokens, clusters, ClusterState versions,
//! object blobs, status reports and source progress.
//!
//! This is the single-replica store; the replicated-hub issue puts the same
//! operations behind Raft. Every method is one redb transaction; writes use
//! redb's default `Durability::Immediate`, so a returned write is on disk.
//! Calls block: async callers wrap writes in `spawn_blocking`.

use std::path::Path;
use std::sync::Arc;

use flotilla_common::cluster_state::{SignedClusterState, SignedHeader};
use flotilla_common::digest::Digest;
use flotilla_common::labels::Labels;
use flotilla_common::status::StatusReport;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tokens");
const CLUSTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("clusters");
const STATES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("states");
const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");
/// (cluster, digest) pairs: which cluster may read which blob (invariant 6).
const CLUSTER_BLOBS: TableDefinition<(&str, &[u8]), ()> = TableDefinition::new("cluster_blobs");
const REPORTS: TableDefinition<&str, &[u8]> = TableDefinition::new("reports");
const SOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("sources");

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

/// One new ClusterState version to store with the blobs it references.
#[derive(Debug, Clone)]
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
}

/// The hub's redb database.
#[derive(Clone)]
pub struct HubStore {
    db: Arc<Database>,
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

fn encode_state(s: &SignedClusterState) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + s.header.len() + s.signature.len() + s.body.len());
    for part in [&s.header, &s.signature, &s.body] {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

fn decode_state(bytes: &[u8]) -> Result<SignedClusterState, StoreError> {
    let corrupt = || StoreError::Corrupt {
        table: "states",
        detail: "truncated record".into(),
    };
    let mut parts = Vec::with_capacity(3);
    let mut rest = bytes;
    for _ in 0..3 {
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
    let body = parts.pop().expect("3 parts");
    let signature = parts.pop().expect("3 parts");
    let header = parts.pop().expect("3 parts");
    Ok(SignedClusterState {
        header,
        signature,
        body,
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

impl HubStore {
    /// Opens (or creates) the database file and its tables.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // Create the file ourselves so it never exists with looser permissions than 0600.
        crate::datadir::create_private_file(path).map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let db = Database::create(path)?;
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
        }
        txn.commit()?;
        Ok(HubStore { db: Arc::new(db) })
    }

    /// Reads a counter from the meta table.
    pub fn meta(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(META)?.get(key)?.map(|v| v.value()))
    }

    /// Sets a counter in the meta table.
    pub fn set_meta(&self, key: &str, value: u64) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(META)?.insert(key, value)?;
        txn.commit()?;
        Ok(())
    }

    /// Stores a new bootstrap token under the hash of its secret.
    pub fn put_token(&self, hash: &[u8; 32], record: &TokenRecord) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(TOKENS)?
            .insert(hash.as_slice(), json(record).as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// Consumes a token and creates the cluster in one transaction, so a token
    /// registers at most one cluster even when two agents race with it.
    pub fn register(
        &self,
        token_hash: &[u8; 32],
        now: i64,
        make_cluster: impl FnOnce(&TokenRecord) -> Result<ClusterRecord, RegisterError>,
    ) -> Result<ClusterRecord, RegisterError> {
        let txn = self.db.begin_write().map_err(StoreError::from)?;
        let cluster = {
            let mut tokens = txn.open_table(TOKENS).map_err(StoreError::from)?;
            let mut record: TokenRecord = match tokens
                .get(token_hash.as_slice())
                .map_err(StoreError::from)?
            {
                Some(v) => unjson("tokens", v.value())?,
                None => return Err(RegisterError::BadToken),
            };
            if record.used_by.is_some() || now > record.expires_at {
                return Err(RegisterError::BadToken);
            }
            let cluster = make_cluster(&record)?;
            let mut clusters = txn.open_table(CLUSTERS).map_err(StoreError::from)?;
            for entry in clusters.iter().map_err(StoreError::from)? {
                let (_, v) = entry.map_err(StoreError::from)?;
                let existing: ClusterRecord = unjson("clusters", v.value())?;
                if existing.name == cluster.name {
                    return Err(RegisterError::NameTaken(cluster.name));
                }
            }
            record.used_by = Some(cluster.id.clone());
            tokens
                .insert(token_hash.as_slice(), json(&record).as_slice())
                .map_err(StoreError::from)?;
            clusters
                .insert(cluster.id.as_str(), json(&cluster).as_slice())
                .map_err(StoreError::from)?;
            cluster
        };
        txn.commit().map_err(StoreError::from)?;
        Ok(cluster)
    }

    /// Deletes tokens that expired before `now`; returns how many.
    pub fn sweep_tokens(&self, now: i64) -> Result<usize, StoreError> {
        let txn = self.db.begin_write()?;
        let removed = {
            let mut tokens = txn.open_table(TOKENS)?;
            let mut expired = Vec::new();
            for entry in tokens.iter()? {
                let (k, v) = entry?;
                let record: TokenRecord = unjson("tokens", v.value())?;
                if record.expires_at < now {
                    expired.push(k.value().to_vec());
                }
            }
            for k in &expired {
                tokens.remove(k.as_slice())?;
            }
            expired.len()
        };
        txn.commit()?;
        Ok(removed)
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
        let states = txn.open_table(STATES)?;
        let reports = txn.open_table(REPORTS)?;
        let mut out = Vec::new();
        for entry in clusters.iter()? {
            let (_, v) = entry?;
            let cluster: ClusterRecord = unjson("clusters", v.value())?;
            let id = cluster.id.as_str();
            let latest = match states.range((id, 0)..=(id, u64::MAX))?.next_back() {
                Some(entry) => {
                    let (k, v) = entry?;
                    Some((k.value().1, decode_state(v.value())?))
                }
                None => None,
            };
            let report = reports
                .get(id)?
                .map(|v| unjson("reports", v.value()))
                .transpose()?;
            out.push(ClusterSnapshot {
                cluster,
                latest,
                report,
            });
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

    /// Signed headers of the versions strictly between `after` and `before`, oldest first.
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
        let table = txn.open_table(STATES)?;
        let mut out = Vec::new();
        for entry in table.range((cluster_id, after + 1)..(cluster_id, before))? {
            let (_, v) = entry?;
            out.push(decode_state(v.value())?.signed_header());
        }
        Ok(out)
    }

    /// Stores new ClusterState versions and their blobs in one transaction.
    pub fn commit_states(&self, states: &[NewState]) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(STATES)?;
            let mut blobs = txn.open_table(BLOBS)?;
            let mut index = txn.open_table(CLUSTER_BLOBS)?;
            let clusters = txn.open_table(CLUSTERS)?;
            for state in states {
                // A cluster deleted while its state was being built gets nothing.
                if clusters.get(state.cluster_id.as_str())?.is_none() {
                    continue;
                }
                for (digest, bytes) in &state.blobs {
                    if blobs.get(digest.0.as_slice())?.is_none() {
                        blobs.insert(digest.0.as_slice(), bytes.as_slice())?;
                    }
                    index.insert((state.cluster_id.as_str(), digest.0.as_slice()), ())?;
                }
                table.insert(
                    (state.cluster_id.as_str(), state.version),
                    encode_state(&state.signed).as_slice(),
                )?;
            }
        }
        txn.commit()?;
        Ok(())
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

    /// Records a status report unless one with the same or a higher seq is
    /// already stored; returns whether it was new. Either way the caller may ack it.
    pub fn record_report(
        &self,
        cluster_id: &str,
        report: &StatusReport,
    ) -> Result<bool, StoreError> {
        let txn = self.db.begin_write()?;
        let fresh = {
            // A deleted cluster's last reports are dropped, not resurrected.
            if txn.open_table(CLUSTERS)?.get(cluster_id)?.is_none() {
                return Ok(false);
            }
            let mut table = txn.open_table(REPORTS)?;
            let current: Option<StatusReport> = table
                .get(cluster_id)?
                .map(|v| unjson("reports", v.value()))
                .transpose()?;
            let fresh = current.is_none_or(|c| c.seq < report.seq);
            if fresh {
                table.insert(cluster_id, json(report).as_slice())?;
            }
            fresh
        };
        txn.commit()?;
        Ok(fresh)
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
        let id = cluster.id.as_str();
        let states = txn.open_table(STATES)?;
        let latest = match states.range((id, 0)..=(id, u64::MAX))?.next_back() {
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
        Ok(Some(ClusterSnapshot {
            cluster,
            latest,
            report,
        }))
    }

    /// Sets and removes labels of a cluster in one transaction; returns the updated record.
    pub fn label_cluster(
        &self,
        name_or_id: &str,
        set: &Labels,
        remove: &[String],
    ) -> Result<ClusterRecord, ClusterUpdateError> {
        self.update_cluster(name_or_id, |c| {
            for key in remove {
                c.labels.remove(key);
            }
            c.labels
                .extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
        })
    }

    /// Records a renewed certificate's expiry.
    pub fn record_renewal(
        &self,
        id: &str,
        cert_expires_at: i64,
        now: i64,
    ) -> Result<ClusterRecord, ClusterUpdateError> {
        self.update_cluster(id, |c| {
            c.cert_expires_at = cert_expires_at;
            c.renewed_at = now;
        })
    }

    fn update_cluster(
        &self,
        name_or_id: &str,
        change: impl FnOnce(&mut ClusterRecord),
    ) -> Result<ClusterRecord, ClusterUpdateError> {
        let txn = self.db.begin_write().map_err(StoreError::from)?;
        let record = {
            let mut table = txn.open_table(CLUSTERS).map_err(StoreError::from)?;
            let Some(mut record) = find_cluster_in(&table, name_or_id)? else {
                return Err(ClusterUpdateError::NotFound(name_or_id.to_string()));
            };
            change(&mut record);
            table
                .insert(record.id.as_str(), json(&record).as_slice())
                .map_err(StoreError::from)?;
            record
        };
        txn.commit().map_err(StoreError::from)?;
        Ok(record)
    }

    /// Deletes a cluster with its ClusterStates, its blob index and its report, in one
    /// transaction. Blobs themselves stay until no state references them.
    pub fn delete_cluster(&self, name_or_id: &str) -> Result<ClusterRecord, ClusterUpdateError> {
        let txn = self.db.begin_write().map_err(StoreError::from)?;
        let record = {
            let mut clusters = txn.open_table(CLUSTERS).map_err(StoreError::from)?;
            let Some(record) = find_cluster_in(&clusters, name_or_id)? else {
                return Err(ClusterUpdateError::NotFound(name_or_id.to_string()));
            };
            let id = record.id.as_str();
            clusters.remove(id).map_err(StoreError::from)?;
            let mut states = txn.open_table(STATES).map_err(StoreError::from)?;
            states
                .retain_in((id, 0)..=(id, u64::MAX), |_, _| false)
                .map_err(StoreError::from)?;
            let mut index = txn.open_table(CLUSTER_BLOBS).map_err(StoreError::from)?;
            // Digests are 32 bytes, so 33 bytes of 0xff sort after every one of them.
            let after_every_digest = [0xffu8; 33];
            index
                .retain_in(
                    (id, [0u8; 0].as_slice())..=(id, after_every_digest.as_slice()),
                    |_, _| false,
                )
                .map_err(StoreError::from)?;
            txn.open_table(REPORTS)
                .map_err(StoreError::from)?
                .remove(id)
                .map_err(StoreError::from)?;
            record
        };
        txn.commit().map_err(StoreError::from)?;
        Ok(record)
    }

    /// Saves what the hub knows about a source.
    pub fn put_source(&self, name: &str, record: &SourceRecord) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        txn.open_table(SOURCES)?
            .insert(name, json(record).as_slice())?;
        txn.commit()?;
        Ok(())
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

#[cfg(test)]
mod tests;
