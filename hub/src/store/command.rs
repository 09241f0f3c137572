//! Every write of the hub's store as a command: a plain data value, applied by one deterministic
//! function inside one redb write transaction (issue 15: the unit a Raft log will replicate).
//!
//! A command carries every non-deterministic input — the time, generated ids, signed states, the
//! retention settings — decided by its proposer, so applying the same command to the same state gives
//! the same writes and the same [`Outcome`] on every replica. A refusal (a used token, a taken name, an
//! unknown cluster) is an outcome, not an error: nothing is written and every replica refuses alike.
//! Only storage failures are errors.

use std::collections::BTreeSet;

use flotilla_common::capabilities::Capabilities;
use flotilla_common::labels::Labels;
use flotilla_common::status::StatusReport;
use redb::{ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::*;

/// One write of the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "command")]
pub enum Command {
    /// Sets a meta value.
    SetMeta {
        /// Key.
        key: String,
        /// Value.
        value: u64,
    },
    /// Stores a bootstrap token under the hash of its secret.
    PutToken {
        /// SHA-256 of the secret.
        hash: [u8; 32],
        /// The token.
        record: TokenRecord,
    },
    /// Consumes a token and creates the cluster, if the token is still usable at `now` and the name is
    /// free.
    Register(Registration),
    /// Deletes tokens that expired before `now`.
    SweepTokens {
        /// Unix seconds.
        now: i64,
    },
    /// Stores new ClusterState versions with their blobs and the rollouts whose fences they set, and
    /// prunes each cluster's versions beyond `retention`.
    CommitStates {
        /// The states.
        states: Vec<NewState>,
        /// Rollout records stored with them.
        rollouts: Vec<crate::rollout::RolloutRecord>,
        /// Versions kept per cluster.
        retention: u64,
    },
    /// Stores a status report unless a newer one is stored; a deleted cluster's is dropped.
    RecordReport {
        /// Cluster id.
        cluster_id: String,
        /// The report.
        report: StatusReport,
        /// Unix seconds, the hub's clock.
        received_at: i64,
    },
    /// Stores several status reports, each as [`Command::RecordReport`] would: the hub batches the
    /// reports that arrive while one batch is being committed into one log entry.
    RecordReports {
        /// The reports, in arrival order.
        reports: Vec<ReportEntry>,
    },
    /// Appends events and drops the oldest beyond `retention`.
    AppendEvents {
        /// The events.
        events: Vec<crate::events::NewEvent>,
        /// Events kept.
        retention: u64,
    },
    /// Sets and removes labels of a cluster.
    LabelCluster {
        /// Name or id.
        cluster: String,
        /// Labels to set.
        set: Labels,
        /// Keys to remove.
        remove: Vec<String>,
    },
    /// Records a renewed certificate's expiry.
    RecordRenewal {
        /// Cluster id.
        cluster: String,
        /// Unix seconds.
        cert_expires_at: i64,
        /// Unix seconds.
        now: i64,
    },
    /// Replaces a cluster's capabilities.
    SetCapabilities {
        /// Cluster id.
        cluster: String,
        /// What its agent reported.
        capabilities: Capabilities,
    },
    /// Deletes a cluster with its states, blob index, blobs only it referenced, and its report.
    DeleteCluster {
        /// Name or id.
        cluster: String,
    },
    /// Saves what the hub knows about a source.
    PutSource {
        /// Source name.
        name: String,
        /// The record.
        record: SourceRecord,
    },
    /// Stores rollout records.
    PutRollouts {
        /// The records.
        rollouts: Vec<crate::rollout::RolloutRecord>,
    },
    /// A command of the leader's controller, valid only in the Raft term it led in when it decided
    /// it: applied from a log entry of another term (its proposer was deposed, perhaps re-elected
    /// since) it is refused, so a controller that lost the lead can never issue a version.
    Fenced {
        /// The term the proposer led in.
        term: u64,
        /// The command.
        inner: Box<Command>,
    },
}

/// One report of a [`Command::RecordReports`] batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportEntry {
    /// Cluster id.
    pub cluster_id: String,
    /// The report.
    pub report: StatusReport,
    /// Unix seconds, the hub's clock.
    pub received_at: i64,
}

/// A registration, decided before it is applied: the id and the certificate's expiry come from the
/// proposer (which signed the certificate); the name and labels from the token when it is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    /// SHA-256 of the token's secret.
    pub token_hash: [u8; 32],
    /// Unix seconds.
    pub now: i64,
    /// The new cluster's id.
    pub id: String,
    /// The name the agent asked for.
    pub requested_name: String,
    /// Unix seconds the signed certificate expires.
    pub cert_expires_at: i64,
    /// What the agent reported its API server offers.
    pub capabilities: Capabilities,
}

/// Why a command wrote nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "refusal")]
pub enum Refusal {
    /// The token is unknown, used or expired.
    BadToken,
    /// Another cluster has the name.
    NameTaken {
        /// The name.
        name: String,
    },
    /// The token pins another name.
    NamePinned {
        /// The token's name.
        pinned: String,
        /// The agent's.
        requested: String,
    },
    /// No cluster has that name or id.
    NotFound {
        /// What was asked for.
        cluster: String,
    },
    /// A fenced command reached the log in another term than the one its proposer led in.
    Deposed {
        /// The term the proposer led in.
        term: u64,
        /// The term of the log entry that carried it.
        entry_term: u64,
    },
    /// A ClusterState version is not newer than the cluster's stored one: a version is never
    /// reused nor lowered.
    StaleVersion {
        /// Cluster id.
        cluster: String,
        /// The offered version.
        version: u64,
        /// The newest stored version.
        latest: u64,
    },
}

/// What applying a command gave back. Adjacently tagged: an internal tag cannot carry a count, an
/// `Option` or a list (`Swept`, `Report`, `Events`), and the outcome travels back from the state
/// machine as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "outcome", content = "value")]
pub enum Outcome {
    /// Written.
    Done,
    /// Nothing written, and why.
    Refused(Refusal),
    /// The cluster as it is now (registered, relabelled, renewed, deleted).
    Cluster(ClusterRecord),
    /// Capabilities were replaced; whether they differed.
    Capabilities {
        /// Whether they differed from the stored ones.
        changed: bool,
    },
    /// How many tokens were swept.
    Swept(usize),
    /// What pruning removed.
    Committed(Pruned),
    /// The report's effect: `None` for a deleted cluster.
    Report(Option<RecordedReport>),
    /// Each report's effect, in the batch's order.
    Reports(Vec<Option<RecordedReport>>),
    /// The events as stored, numbered.
    Events(Vec<crate::events::Event>),
}

impl Outcome {
    /// Whether the command wrote something (a refusal writes nothing).
    pub fn wrote(&self) -> bool {
        !matches!(self, Outcome::Refused(_) | Outcome::Report(None))
    }
}

/// Applies `command` inside `txn`. Deterministic: no clock, no randomness, no IO but the transaction.
/// Outside Raft (`entry_term` `None`) a fenced command is applied as its inner command.
pub fn apply(
    txn: &WriteTransaction,
    entry_term: Option<u64>,
    command: &Command,
) -> Result<Outcome, StoreError> {
    match command {
        Command::Fenced { term, inner } => match entry_term {
            Some(entry_term) if entry_term != *term => Ok(Outcome::Refused(Refusal::Deposed {
                term: *term,
                entry_term,
            })),
            _ => apply(txn, entry_term, inner),
        },
        Command::SetMeta { key, value } => {
            txn.open_table(META)?.insert(key.as_str(), *value)?;
            Ok(Outcome::Done)
        }
        Command::PutToken { hash, record } => {
            txn.open_table(TOKENS)?
                .insert(hash.as_slice(), json(record).as_slice())?;
            Ok(Outcome::Done)
        }
        Command::Register(r) => register(txn, r),
        Command::SweepTokens { now } => {
            let mut tokens = txn.open_table(TOKENS)?;
            let mut expired = Vec::new();
            for entry in tokens.iter()? {
                let (k, v) = entry?;
                let record: TokenRecord = unjson("tokens", v.value())?;
                if record.expires_at < *now {
                    expired.push(k.value().to_vec());
                }
            }
            for k in &expired {
                tokens.remove(k.as_slice())?;
            }
            Ok(Outcome::Swept(expired.len()))
        }
        Command::CommitStates {
            states,
            rollouts,
            retention,
        } => {
            if let Some(refusal) = stale_version(txn, states)? {
                return Ok(Outcome::Refused(refusal));
            }
            put_rollouts_in(txn, rollouts)?;
            commit_states_in(txn, states, *retention).map(Outcome::Committed)
        }
        Command::RecordReport {
            cluster_id,
            report,
            received_at,
        } => record_report_in(txn, cluster_id, report, *received_at).map(Outcome::Report),
        Command::RecordReports { reports } => reports
            .iter()
            .map(|r| record_report_in(txn, &r.cluster_id, &r.report, r.received_at))
            .collect::<Result<Vec<_>, _>>()
            .map(Outcome::Reports),
        Command::AppendEvents { events, retention } => {
            let mut table = txn.open_table(EVENTS)?;
            let mut seq = table.last()?.map(|(k, _)| k.value()).unwrap_or(0);
            let mut stored = Vec::with_capacity(events.len());
            for e in events {
                seq += 1;
                let event = crate::events::Event {
                    seq,
                    event: e.clone(),
                };
                table.insert(seq, json(&event).as_slice())?;
                stored.push(event);
            }
            let keep_from = seq.saturating_sub(*retention) + 1;
            table.retain_in(..keep_from, |_, _| false)?;
            Ok(Outcome::Events(stored))
        }
        Command::LabelCluster {
            cluster,
            set,
            remove,
        } => update_cluster(txn, cluster, |c| {
            for key in remove {
                c.labels.remove(key);
            }
            c.labels
                .extend(set.iter().map(|(k, v)| (k.clone(), v.clone())));
        }),
        Command::RecordRenewal {
            cluster,
            cert_expires_at,
            now,
        } => update_cluster(txn, cluster, |c| {
            c.cert_expires_at = *cert_expires_at;
            c.renewed_at = *now;
        }),
        Command::SetCapabilities {
            cluster,
            capabilities,
        } => {
            let mut changed = false;
            match update_cluster(txn, cluster, |c| {
                changed = c.capabilities != *capabilities;
                c.capabilities = capabilities.clone();
            })? {
                Outcome::Cluster(_) => Ok(Outcome::Capabilities { changed }),
                refused => Ok(refused),
            }
        }
        Command::DeleteCluster { cluster } => delete_cluster_in(txn, cluster),
        Command::PutSource { name, record } => {
            txn.open_table(SOURCES)?
                .insert(name.as_str(), json(record).as_slice())?;
            Ok(Outcome::Done)
        }
        Command::PutRollouts { rollouts } => {
            put_rollouts_in(txn, rollouts)?;
            Ok(Outcome::Done)
        }
    }
}

fn register(txn: &WriteTransaction, r: &Registration) -> Result<Outcome, StoreError> {
    let mut tokens = txn.open_table(TOKENS)?;
    let mut record: TokenRecord = match tokens.get(r.token_hash.as_slice())? {
        Some(v) => unjson("tokens", v.value())?,
        None => return Ok(Outcome::Refused(Refusal::BadToken)),
    };
    if record.used_by.is_some() || r.now > record.expires_at {
        return Ok(Outcome::Refused(Refusal::BadToken));
    }
    let name = match &record.name {
        Some(pinned) if *pinned != r.requested_name => {
            return Ok(Outcome::Refused(Refusal::NamePinned {
                pinned: pinned.clone(),
                requested: r.requested_name.clone(),
            }));
        }
        _ => r.requested_name.clone(),
    };
    let mut clusters = txn.open_table(CLUSTERS)?;
    for entry in clusters.iter()? {
        let (_, v) = entry?;
        let existing: ClusterRecord = unjson("clusters", v.value())?;
        if existing.name == name {
            return Ok(Outcome::Refused(Refusal::NameTaken { name }));
        }
    }
    let cluster = ClusterRecord {
        id: r.id.clone(),
        name,
        labels: record.labels.clone(),
        registered_at: r.now,
        cert_expires_at: r.cert_expires_at,
        renewed_at: 0,
        capabilities: r.capabilities.clone(),
    };
    record.used_by = Some(cluster.id.clone());
    tokens.insert(r.token_hash.as_slice(), json(&record).as_slice())?;
    clusters.insert(cluster.id.as_str(), json(&cluster).as_slice())?;
    Ok(Outcome::Cluster(cluster))
}

fn update_cluster(
    txn: &WriteTransaction,
    name_or_id: &str,
    change: impl FnOnce(&mut ClusterRecord),
) -> Result<Outcome, StoreError> {
    let mut table = txn.open_table(CLUSTERS)?;
    let Some(mut record) = find_cluster_in(&table, name_or_id)? else {
        return Ok(Outcome::Refused(Refusal::NotFound {
            cluster: name_or_id.to_string(),
        }));
    };
    change(&mut record);
    table.insert(record.id.as_str(), json(&record).as_slice())?;
    Ok(Outcome::Cluster(record))
}

/// The first state whose version is not above its cluster's newest stored one (nor above an
/// earlier state of the same command).
fn stale_version(
    txn: &WriteTransaction,
    states: &[NewState],
) -> Result<Option<Refusal>, StoreError> {
    let headers = txn.open_table(HEADERS)?;
    let mut newest: std::collections::BTreeMap<&str, u64> = Default::default();
    for state in states {
        let latest = match newest.get(state.cluster_id.as_str()) {
            Some(v) => Some(*v),
            None => headers
                .range((state.cluster_id.as_str(), 0)..=(state.cluster_id.as_str(), u64::MAX))?
                .next_back()
                .transpose()?
                .map(|(k, _)| k.value().1),
        };
        if let Some(latest) = latest
            && state.version <= latest
        {
            return Ok(Some(Refusal::StaleVersion {
                cluster: state.cluster_id.clone(),
                version: state.version,
                latest,
            }));
        }
        newest.insert(state.cluster_id.as_str(), state.version);
    }
    Ok(None)
}

/// What readers on this replica should hear of once `command`'s writes are committed.
pub fn notices(command: &Command, outcome: &Outcome) -> Vec<Notice> {
    match (command, outcome) {
        (Command::Fenced { inner, .. }, outcome) => notices(inner, outcome),
        (Command::CommitStates { states, .. }, Outcome::Committed(_)) => states
            .iter()
            .map(|s| Notice::State {
                cluster_id: s.cluster_id.clone(),
                version: s.version,
                digest: s.signed.digest(),
            })
            .collect(),
        (Command::AppendEvents { .. }, Outcome::Events(stored)) => {
            vec![Notice::Events(stored.clone())]
        }
        (Command::RecordReports { reports }, Outcome::Reports(recorded)) => reports
            .iter()
            .zip(recorded)
            .filter(|(_, r)| r.is_some())
            .map(|(e, _)| Notice::Report {
                cluster_id: e.cluster_id.clone(),
            })
            .collect(),
        (Command::RecordReport { cluster_id, .. }, Outcome::Report(Some(_))) => {
            vec![Notice::Report {
                cluster_id: cluster_id.clone(),
            }]
        }
        (
            Command::Register(_)
            | Command::LabelCluster { .. }
            | Command::DeleteCluster { .. }
            | Command::RecordRenewal { .. },
            Outcome::Cluster(_),
        )
        | (Command::SetCapabilities { .. }, Outcome::Capabilities { changed: true }) => {
            vec![Notice::Clusters]
        }
        (Command::SetMeta { key, .. }, _) if key.starts_with(SOURCE_HOOK_PREFIX) => {
            vec![Notice::SourceHook {
                source: key[SOURCE_HOOK_PREFIX.len()..].to_string(),
            }]
        }
        _ => Vec::new(),
    }
}

/// A change this replica applied, for the tasks that serve it (a Watch announcing a version, the
/// leader's controller reading a report): sent after the transaction that wrote it committed.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// A ClusterState version is stored.
    State {
        /// Cluster id.
        cluster_id: String,
        /// Version.
        version: u64,
        /// Header digest.
        digest: flotilla_common::digest::Digest,
    },
    /// A status report is stored.
    Report {
        /// Cluster id.
        cluster_id: String,
    },
    /// Events were recorded.
    Events(Vec<crate::events::Event>),
    /// A cluster registered, was relabelled, renewed or deleted, or its capabilities changed.
    Clusters,
    /// A push webhook for this source arrived (on any replica): fetch it now.
    SourceHook {
        /// Source name.
        source: String,
    },
    /// A snapshot replaced every table: anything may have changed.
    Restored,
}

/// Meta keys under which a push webhook for a source is recorded (`hook/NAME`, the time).
pub const SOURCE_HOOK_PREFIX: &str = "hook/";

fn commit_states_in(
    txn: &WriteTransaction,
    states: &[NewState],
    retention: u64,
) -> Result<Pruned, StoreError> {
    let mut pruned = Pruned::default();
    let mut t = VersionTables::open(txn)?;
    let mut table = txn.open_table(STATES)?;
    let mut blobs = txn.open_table(BLOBS)?;
    let clusters_table = txn.open_table(CLUSTERS)?;
    for state in states {
        // A cluster deleted while its state was being built gets nothing.
        if clusters_table.get(state.cluster_id.as_str())?.is_none() {
            continue;
        }
        for (digest, bytes) in &state.blobs {
            if blobs.get(digest.0.as_slice())?.is_none() {
                blobs.insert(digest.0.as_slice(), bytes.as_slice())?;
            }
        }
        let digests = digest_list(&state.blobs);
        t.reference(&state.cluster_id, state.version, &digests)?;
        t.headers.insert(
            (state.cluster_id.as_str(), state.version),
            encode_header(&state.signed).as_slice(),
        )?;
        table.insert(
            (state.cluster_id.as_str(), state.version),
            encode_state(&state.signed).as_slice(),
        )?;
    }
    let clusters: BTreeSet<&str> = states.iter().map(|s| s.cluster_id.as_str()).collect();
    for cluster in clusters {
        let Some(latest) = states
            .iter()
            .filter(|s| s.cluster_id == cluster)
            .map(|s| s.version)
            .max()
        else {
            continue;
        };
        let Some(cutoff) = latest.checked_sub(retention) else {
            continue;
        };
        let old: Vec<u64> = table
            .range((cluster, 0)..=(cluster, cutoff))?
            .map(|e| e.map(|(k, _)| k.value().1))
            .collect::<Result<_, _>>()?;
        for version in old {
            table.remove((cluster, version))?;
            t.headers.remove((cluster, version))?;
            for digest in t.unreference(cluster, version)? {
                blobs.remove(digest.as_slice())?;
                pruned.blobs += 1;
            }
            pruned.versions += 1;
        }
    }
    Ok(pruned)
}

fn record_report_in(
    txn: &WriteTransaction,
    cluster_id: &str,
    report: &StatusReport,
    received_at: i64,
) -> Result<Option<RecordedReport>, StoreError> {
    // A deleted cluster's last reports are dropped, not resurrected.
    let Some(cluster) = txn
        .open_table(CLUSTERS)?
        .get(cluster_id)?
        .map(|v| v.value().to_vec())
    else {
        return Ok(None);
    };
    let cluster: ClusterRecord = unjson("clusters", &cluster)?;
    txn.open_table(REPORT_RECEIVED)?
        .insert(cluster_id, received_at)?;
    let mut table = txn.open_table(REPORTS)?;
    let previous: Option<StatusReport> = table
        .get(cluster_id)?
        .map(|v| unjson("reports", v.value()))
        .transpose()?;
    let fresh = previous.as_ref().is_none_or(|c| c.seq < report.seq);
    if fresh {
        table.insert(cluster_id, json(report).as_slice())?;
    }
    Ok(Some(RecordedReport {
        fresh,
        cluster_name: cluster.name,
        previous,
    }))
}

fn delete_cluster_in(txn: &WriteTransaction, name_or_id: &str) -> Result<Outcome, StoreError> {
    let mut clusters = txn.open_table(CLUSTERS)?;
    let Some(record) = find_cluster_in(&clusters, name_or_id)? else {
        return Ok(Outcome::Refused(Refusal::NotFound {
            cluster: name_or_id.to_string(),
        }));
    };
    let id = record.id.as_str();
    clusters.remove(id)?;
    let mut states = txn.open_table(STATES)?;
    let versions: Vec<u64> = states
        .range((id, 0)..=(id, u64::MAX))?
        .map(|e| e.map(|(k, _)| k.value().1))
        .collect::<Result<_, _>>()?;
    let mut t = VersionTables::open(txn)?;
    let mut blobs = txn.open_table(BLOBS)?;
    for version in versions {
        states.remove((id, version))?;
        t.headers.remove((id, version))?;
        // Drops the (cluster, digest) index, and blobs no other state references.
        for digest in t.unreference(id, version)? {
            blobs.remove(digest.as_slice())?;
        }
    }
    txn.open_table(REPORT_RECEIVED)?.remove(id)?;
    txn.open_table(REPORTS)?.remove(id)?;
    Ok(Outcome::Cluster(record))
}

/// Stores rollout records: each app's newest id moves forward, and ended rollouts beyond the history
/// bound are dropped, oldest first.
pub(super) fn put_rollouts_in(
    txn: &WriteTransaction,
    rollouts: &[crate::rollout::RolloutRecord],
) -> Result<(), StoreError> {
    if rollouts.is_empty() {
        return Ok(());
    }
    let mut table = txn.open_table(ROLLOUTS)?;
    let mut index = txn.open_table(APP_ROLLOUTS)?;
    for record in rollouts {
        table.insert(record.id, json(record).as_slice())?;
        let newest = index
            .get(record.rollout.app.as_str())?
            .map(|v| v.value())
            .unwrap_or(0);
        if record.id >= newest {
            index.insert(record.rollout.app.as_str(), record.id)?;
        }
    }
    let newest: BTreeSet<u64> = index
        .iter()?
        .map(|e| e.map(|(_, v)| v.value()))
        .collect::<Result<_, _>>()?;
    let extra = (table.len()? as usize).saturating_sub(ROLLOUT_HISTORY + newest.len());
    if extra > 0 {
        let old: Vec<u64> = table
            .iter()?
            .map(|e| e.map(|(k, _)| k.value()))
            .filter(|id| id.as_ref().map_or(true, |id| !newest.contains(id)))
            .take(extra)
            .collect::<Result<_, _>>()?;
        for id in old {
            table.remove(id)?;
        }
    }
    Ok(())
}
