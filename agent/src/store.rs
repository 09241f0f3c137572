//! The agent's durable store: one redb file, `DATA_DIR/agent.redb`, mode 0600.
//!
//! It holds the identity from registration, the one ClusterState the agent holds (verified
//! before it got here), the object blobs that state references, each app's applied inventory,
//! the version whose apply completed, and the status outbox. Every commit is fsync'd
//! (redb's `Durability::Immediate`).
//!
//! The writes that must stay consistent happen in one transaction each: a new ClusterState
//! with all its blobs ([`Store::commit_state`]); an apply's inventory, applied version and
//! status report ([`Store::record_apply`]), together with the pass's deletions in the
//! deletion log that the windowed deletion budget counts.
//!
//! redb calls block (every commit waits for fsync), so async code calls the store through
//! [`Store::blocking`], which runs them on tokio's blocking pool.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use flotilla_common::cluster_state::{ClusterState, HeldVersion, SignedClusterState};
use flotilla_common::digest::Digest;
use flotilla_common::status::{AppStatus, StatusReport};
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::identity::AgentIdentity;
use crate::inventory::AppInventory;

/// Key "identity": the [`AgentIdentity`] as JSON.
const IDENTITY: TableDefinition<&str, &[u8]> = TableDefinition::new("identity");
/// Keys "header", "signature", "body": the held SignedClusterState's exact bytes.
const HELD: TableDefinition<&str, &[u8]> = TableDefinition::new("held_state");
/// Object bytes by raw 32-byte digest; only those the held state references.
const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");
/// App name → [`AppInventory`] as JSON.
const INVENTORY: TableDefinition<&str, &[u8]> = TableDefinition::new("inventory");
/// Counters: "applied_version", "next_seq".
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// Unacknowledged status reports: seq → [`StatusReport`] as JSON.
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// Key "apps": the newest per-app statuses, repeated in reports about rejections.
const LAST_STATUS: TableDefinition<&str, &[u8]> = TableDefinition::new("last_status");
/// Deletion log: unix second → objects deleted in passes recorded at that second. Entries
/// older than the deletion window are dropped as passes are recorded.
const DELETIONS: TableDefinition<u64, u64> = TableDefinition::new("deletions");

const APPLIED_VERSION: &str = "applied_version";
const NEXT_SEQ: &str = "next_seq";

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory or the store file could not be created or protected.
    #[error("cannot prepare {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// redb failed.
    #[error("store {what} failed: {source}")]
    Db {
        /// What was being done.
        what: &'static str,
        /// The redb error.
        #[source]
        source: Box<redb::Error>,
    },
    /// A stored record does not decode; the file was changed behind the agent's back.
    #[error("stored {what} is corrupt: {reason}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A ClusterState was to be committed without one of its objects.
    #[error("object {0} of the new ClusterState is neither stored nor supplied")]
    MissingBlob(Digest),
    /// The blocking task running a store call did not finish (it panicked or was cancelled).
    #[error("store call on the blocking pool did not finish: {0}")]
    Task(String),
}

fn db_err<E: Into<redb::Error>>(what: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Db {
        what,
        source: Box::new(e.into()),
    }
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Only plain data types go through here; they always serialize.
    serde_json::to_vec(value).expect("store records serialize")
}

fn from_json<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what,
        reason: e.to_string(),
    })
}

/// The ClusterState the agent holds, with its decoded form and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldState {
    /// Exact bytes as received and verified.
    pub signed: SignedClusterState,
    /// Decoded header and body.
    pub state: ClusterState,
    /// Version, digest and epoch, for checking the next offer.
    pub held: HeldVersion,
}

impl HeldState {
    /// Builds the held record from bytes that were verified into `state`.
    pub fn new(signed: SignedClusterState, state: ClusterState) -> Self {
        let held = HeldVersion {
            version: state.header.version,
            digest: signed.digest(),
            hub_epoch: state.header.hub_epoch,
        };
        HeldState {
            signed,
            state,
            held,
        }
    }
}

/// A consistent view for one apply pass, read in one transaction.
#[derive(Debug, Clone)]
pub struct ApplySnapshot {
    /// The held state.
    pub held: HeldState,
    /// Inventory per app.
    pub inventory: BTreeMap<String, AppInventory>,
    /// Every blob the held state references.
    pub blobs: HashMap<Digest, Vec<u8>>,
    /// Version whose apply last completed.
    pub applied_version: u64,
    /// The deletion log: (unix second, objects deleted), oldest first.
    pub deletions: Vec<(i64, u64)>,
}

/// The outcome of one apply pass, recorded in one transaction.
#[derive(Debug, Clone)]
pub struct ApplyRecord {
    /// New inventory per app; `None` forgets the app.
    pub inventory: BTreeMap<String, Option<AppInventory>>,
    /// Set when the pass completed the held version.
    pub completed_version: Option<u64>,
    /// When the pass finished, unix seconds.
    pub observed_at: i64,
    /// Per-app status after the pass.
    pub apps: Vec<AppStatus>,
    /// Objects the pass deleted, logged at `observed_at`.
    pub deleted: u64,
    /// Deletion log entries before this unix second are dropped (they left the window).
    pub forget_deletions_before: i64,
}

/// Handle to the store; cheap to clone, safe to share between tasks.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    outbox_capacity: usize,
    /// Calls running on the blocking pool; each holds the database open until it returns.
    calls: tokio_util::task::TaskTracker,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("outbox_capacity", &self.outbox_capacity)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the store at `path`; keeps at most `outbox_capacity` reports.
    pub fn open(path: &Path, outbox_capacity: usize) -> Result<Store, StoreError> {
        let io = |p: &Path| {
            let path = p.display().to_string();
            move |source| StoreError::Io { path, source }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io(dir))?;
        }
        // Create the file ourselves so it never exists with looser permissions.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io(path))?;
        file.set_permissions(Permissions::from_mode(0o600))
            .map_err(io(path))?;
        drop(file);
        let database = Database::create(path).map_err(db_err("open"))?;
        let txn = database.begin_write().map_err(db_err("open"))?;
        {
            txn.open_table(IDENTITY).map_err(db_err("open"))?;
            txn.open_table(HELD).map_err(db_err("open"))?;
            txn.open_table(BLOBS).map_err(db_err("open"))?;
            txn.open_table(INVENTORY).map_err(db_err("open"))?;
            txn.open_table(COUNTERS).map_err(db_err("open"))?;
            txn.open_table(OUTBOX).map_err(db_err("open"))?;
            txn.open_table(LAST_STATUS).map_err(db_err("open"))?;
            txn.open_table(DELETIONS).map_err(db_err("open"))?;
        }
        txn.commit().map_err(db_err("open"))?;
        Ok(Store {
            db: Arc::new(database),
            outbox_capacity: outbox_capacity.max(1),
            calls: tokio_util::task::TaskTracker::new(),
        })
    }

    /// Runs `call` with this store on tokio's blocking pool, so that redb's reads and fsync'd
    /// commits never hold up an async worker thread.
    pub async fn blocking<R, F>(&self, call: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Store) -> Result<R, StoreError> + Send + 'static,
    {
        let store = self.clone();
        self.calls
            .spawn_blocking(move || call(&store))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Waits until every call started with [`Store::blocking`] has returned, even those whose
    /// caller stopped waiting: afterwards only the remaining handles hold the database open.
    pub async fn wait_for_calls(&self) {
        self.calls.close();
        self.calls.wait().await;
    }

    fn read(&self) -> Result<ReadTransaction, StoreError> {
        self.db.begin_read().map_err(db_err("read"))
    }

    fn write(&self) -> Result<WriteTransaction, StoreError> {
        self.db.begin_write().map_err(db_err("write"))
    }

    /// The identity from registration, if the agent is registered.
    pub fn identity(&self) -> Result<Option<AgentIdentity>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(IDENTITY).map_err(db_err("read identity"))?;
        let value = table.get("identity").map_err(db_err("read identity"))?;
        value.map(|v| from_json("identity", v.value())).transpose()
    }

    /// Stores the identity (durably, before the agent uses it).
    pub fn save_identity(&self, identity: &AgentIdentity) -> Result<(), StoreError> {
        let txn = self.write()?;
        {
            let mut table = txn.open_table(IDENTITY).map_err(db_err("save identity"))?;
            table
                .insert("identity", to_json(identity).as_slice())
                .map_err(db_err("save identity"))?;
        }
        txn.commit().map_err(db_err("save identity"))
    }

    /// The held ClusterState, if any.
    pub fn held(&self) -> Result<Option<HeldState>, StoreError> {
        let txn = self.read()?;
        read_held(&txn)
    }

    /// The version whose apply last completed; 0 if none.
    pub fn applied_version(&self) -> Result<u64, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(COUNTERS).map_err(db_err("read counters"))?;
        counter(&table, APPLIED_VERSION)
    }

    /// Those of `digests` whose blobs are not stored.
    pub fn missing_blobs(
        &self,
        digests: &BTreeSet<Digest>,
    ) -> Result<BTreeSet<Digest>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(BLOBS).map_err(db_err("read blobs"))?;
        let mut missing = BTreeSet::new();
        for digest in digests {
            if table
                .get(digest.0.as_slice())
                .map_err(db_err("read blobs"))?
                .is_none()
            {
                missing.insert(*digest);
            }
        }
        Ok(missing)
    }

    /// One stored blob.
    pub fn blob(&self, digest: &Digest) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(BLOBS).map_err(db_err("read blobs"))?;
        let value = table
            .get(digest.0.as_slice())
            .map_err(db_err("read blobs"))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Makes `held` the held ClusterState, with `new_blobs`, in one durable transaction.
    ///
    /// Fails, storing nothing, unless every blob the state references is stored or supplied.
    /// Blobs the new state no longer references are dropped in the same transaction.
    pub fn commit_state(
        &self,
        held: &HeldState,
        new_blobs: &BTreeMap<Digest, Vec<u8>>,
    ) -> Result<(), StoreError> {
        let referenced: BTreeSet<Digest> = referenced_digests(&held.state);
        let txn = self.write()?;
        {
            let mut blobs = txn.open_table(BLOBS).map_err(db_err("commit state"))?;
            for (digest, bytes) in new_blobs {
                if referenced.contains(digest) {
                    blobs
                        .insert(digest.0.as_slice(), bytes.as_slice())
                        .map_err(db_err("commit state"))?;
                }
            }
            for digest in &referenced {
                if blobs
                    .get(digest.0.as_slice())
                    .map_err(db_err("commit state"))?
                    .is_none()
                {
                    // Dropping the transaction aborts it: nothing of this state is stored.
                    return Err(StoreError::MissingBlob(*digest));
                }
            }
            blobs
                .retain(|key, _| Digest::from_slice(key).is_ok_and(|d| referenced.contains(&d)))
                .map_err(db_err("commit state"))?;
            let mut state = txn.open_table(HELD).map_err(db_err("commit state"))?;
            for (key, bytes) in [
                ("header", &held.signed.header),
                ("signature", &held.signed.signature),
                ("body", &held.signed.body),
            ] {
                state
                    .insert(key, bytes.as_slice())
                    .map_err(db_err("commit state"))?;
            }
        }
        txn.commit().map_err(db_err("commit state"))
    }

    /// Everything one apply pass needs, from one consistent read; `None` when nothing is held.
    pub fn apply_snapshot(&self) -> Result<Option<ApplySnapshot>, StoreError> {
        let txn = self.read()?;
        let Some(held) = read_held(&txn)? else {
            return Ok(None);
        };
        let blob_table = txn.open_table(BLOBS).map_err(db_err("read blobs"))?;
        let mut blobs = HashMap::new();
        for digest in referenced_digests(&held.state) {
            if let Some(bytes) = blob_table
                .get(digest.0.as_slice())
                .map_err(db_err("read blobs"))?
            {
                blobs.insert(digest, bytes.value().to_vec());
            }
        }
        let counters = txn.open_table(COUNTERS).map_err(db_err("read counters"))?;
        Ok(Some(ApplySnapshot {
            held,
            inventory: read_inventory(&txn)?,
            blobs,
            applied_version: counter(&counters, APPLIED_VERSION)?,
            deletions: read_deletions(&txn)?,
        }))
    }

    /// Inventory per app.
    pub fn inventory(&self) -> Result<BTreeMap<String, AppInventory>, StoreError> {
        let txn = self.read()?;
        read_inventory(&txn)
    }

    /// Records an apply pass and its status report in one transaction; returns the report's seq.
    pub fn record_apply(&self, record: &ApplyRecord) -> Result<u64, StoreError> {
        let txn = self.write()?;
        let seq = {
            let mut inventory = txn.open_table(INVENTORY).map_err(db_err("record apply"))?;
            for (app, inv) in &record.inventory {
                match inv {
                    Some(inv) => inventory
                        .insert(app.as_str(), to_json(inv).as_slice())
                        .map(drop),
                    None => inventory.remove(app.as_str()).map(drop),
                }
                .map_err(db_err("record apply"))?;
            }
            let mut counters = txn.open_table(COUNTERS).map_err(db_err("record apply"))?;
            if let Some(version) = record.completed_version {
                counters
                    .insert(APPLIED_VERSION, version)
                    .map_err(db_err("record apply"))?;
            }
            let applied_version = counter(&counters, APPLIED_VERSION)?;
            drop(counters);
            let mut last = txn
                .open_table(LAST_STATUS)
                .map_err(db_err("record apply"))?;
            last.insert("apps", to_json(&record.apps).as_slice())
                .map_err(db_err("record apply"))?;
            drop(last);
            let mut log = txn.open_table(DELETIONS).map_err(db_err("record apply"))?;
            let before = record.forget_deletions_before.max(0) as u64;
            log.retain(|at, _| at >= before)
                .map_err(db_err("record apply"))?;
            if record.deleted > 0 {
                let at = record.observed_at.max(0) as u64;
                let logged = log
                    .get(at)
                    .map_err(db_err("record apply"))?
                    .map_or(0, |v| v.value());
                log.insert(at, logged + record.deleted)
                    .map_err(db_err("record apply"))?;
            }
            drop(log);
            self.push_report(
                &txn,
                StatusReport {
                    seq: 0,
                    observed_at: record.observed_at,
                    applied_version,
                    apps: record.apps.clone(),
                    rejection: None,
                },
            )?
        };
        txn.commit().map_err(db_err("record apply"))?;
        Ok(seq)
    }

    /// The app statuses of the newest recorded pass.
    pub fn last_statuses(&self) -> Result<Vec<AppStatus>, StoreError> {
        let txn = self.read()?;
        let last = txn
            .open_table(LAST_STATUS)
            .map_err(db_err("read last status"))?;
        match last.get("apps").map_err(db_err("read last status"))? {
            Some(v) => from_json("last status", v.value()),
            None => Ok(Vec::new()),
        }
    }

    /// Queues a report that the newest offered ClusterState was refused; returns its seq.
    ///
    /// The report repeats the newest app statuses and applied version, so the hub's view of
    /// what runs stays whole.
    pub fn record_rejection(&self, observed_at: i64, rejection: &str) -> Result<u64, StoreError> {
        let txn = self.write()?;
        let seq = {
            let counters = txn
                .open_table(COUNTERS)
                .map_err(db_err("record rejection"))?;
            let applied_version = counter(&counters, APPLIED_VERSION)?;
            drop(counters);
            let last = txn
                .open_table(LAST_STATUS)
                .map_err(db_err("record rejection"))?;
            let apps: Vec<AppStatus> = match last.get("apps").map_err(db_err("record rejection"))? {
                Some(v) => from_json("last status", v.value())?,
                None => Vec::new(),
            };
            drop(last);
            self.push_report(
                &txn,
                StatusReport {
                    seq: 0,
                    observed_at,
                    applied_version,
                    apps,
                    rejection: Some(rejection.to_string()),
                },
            )?
        };
        txn.commit().map_err(db_err("record rejection"))?;
        Ok(seq)
    }

    /// Assigns the next seq to `report`, queues it and drops the oldest beyond capacity.
    fn push_report(
        &self,
        txn: &WriteTransaction,
        mut report: StatusReport,
    ) -> Result<u64, StoreError> {
        let mut counters = txn.open_table(COUNTERS).map_err(db_err("queue report"))?;
        let seq = counter(&counters, NEXT_SEQ)?.max(1);
        counters
            .insert(NEXT_SEQ, seq + 1)
            .map_err(db_err("queue report"))?;
        report.seq = seq;
        let mut outbox = txn.open_table(OUTBOX).map_err(db_err("queue report"))?;
        outbox
            .insert(seq, to_json(&report).as_slice())
            .map_err(db_err("queue report"))?;
        // Reports are snapshots: once the hub has been away long enough, older ones are
        // superseded by newer ones and only the newest are worth delivering.
        while outbox.len().map_err(db_err("queue report"))? > self.outbox_capacity as u64 {
            outbox.pop_first().map_err(db_err("queue report"))?;
        }
        Ok(seq)
    }

    /// How many reports wait in the outbox for the hub's ack.
    pub fn outbox_len(&self) -> Result<u64, StoreError> {
        use redb::ReadableTableMetadata;
        let txn = self.read()?;
        let table = txn.open_table(OUTBOX).map_err(db_err("read outbox"))?;
        table.len().map_err(db_err("read outbox"))
    }

    /// Queued reports with seq greater than `after`, oldest first.
    pub fn outbox_after(&self, after: u64) -> Result<Vec<StatusReport>, StoreError> {
        let txn = self.read()?;
        let table = txn.open_table(OUTBOX).map_err(db_err("read outbox"))?;
        let mut reports = Vec::new();
        for entry in table
            .range(after.saturating_add(1)..)
            .map_err(db_err("read outbox"))?
        {
            let (_, value) = entry.map_err(db_err("read outbox"))?;
            reports.push(from_json("status report", value.value())?);
        }
        Ok(reports)
    }

    /// Drops the report the hub acknowledged; false if it was not queued.
    pub fn ack(&self, seq: u64) -> Result<bool, StoreError> {
        let txn = self.write()?;
        let removed = {
            let mut table = txn.open_table(OUTBOX).map_err(db_err("ack report"))?;
            table.remove(seq).map_err(db_err("ack report"))?.is_some()
        };
        txn.commit().map_err(db_err("ack report"))?;
        Ok(removed)
    }
}

fn counter(table: &impl ReadableTable<&'static str, u64>, key: &str) -> Result<u64, StoreError> {
    Ok(table
        .get(key)
        .map_err(db_err("read counters"))?
        .map(|v| v.value())
        .unwrap_or(0))
}

fn read_held(txn: &ReadTransaction) -> Result<Option<HeldState>, StoreError> {
    let table = txn.open_table(HELD).map_err(db_err("read held state"))?;
    let get = |key: &str| -> Result<Option<Vec<u8>>, StoreError> {
        Ok(table
            .get(key)
            .map_err(db_err("read held state"))?
            .map(|v| v.value().to_vec()))
    };
    let (Some(header), Some(signature), Some(body)) =
        (get("header")?, get("signature")?, get("body")?)
    else {
        return Ok(None);
    };
    let signed = SignedClusterState {
        header,
        signature,
        body,
    };
    // These bytes were verified before they were committed; the store is the agent's own.
    let state = signed
        .decode_unverified()
        .map_err(|e| StoreError::Corrupt {
            what: "held ClusterState",
            reason: e.to_string(),
        })?;
    Ok(Some(HeldState::new(signed, state)))
}

fn read_inventory(txn: &ReadTransaction) -> Result<BTreeMap<String, AppInventory>, StoreError> {
    let table = txn
        .open_table(INVENTORY)
        .map_err(db_err("read inventory"))?;
    let mut out = BTreeMap::new();
    for entry in table.range::<&str>(..).map_err(db_err("read inventory"))? {
        let (key, value) = entry.map_err(db_err("read inventory"))?;
        out.insert(
            key.value().to_string(),
            from_json("inventory", value.value())?,
        );
    }
    Ok(out)
}

fn read_deletions(txn: &ReadTransaction) -> Result<Vec<(i64, u64)>, StoreError> {
    let table = txn
        .open_table(DELETIONS)
        .map_err(db_err("read deletion log"))?;
    let mut out = Vec::new();
    for entry in table
        .range::<u64>(..)
        .map_err(db_err("read deletion log"))?
    {
        let (at, count) = entry.map_err(db_err("read deletion log"))?;
        out.push((at.value() as i64, count.value()));
    }
    Ok(out)
}

/// Every object digest a ClusterState references.
pub fn referenced_digests(state: &ClusterState) -> BTreeSet<Digest> {
    state
        .body
        .apps
        .iter()
        .flat_map(|a| a.objects.iter().map(|o| o.digest))
        .collect()
}

#[cfg(test)]
mod tests;
