//! The rollout engine (DESIGN.md §3, issue 14): a pure state machine that moves one new Release of an app
//! across the fleet stage by stage.
//!
//! `step(rollout, fleet, now)` looks at the rollout's recorded state, what each cluster last reported and
//! the time, and returns [`Decision`]s; [`Rollout::apply`] folds a decision into the state. Nothing here
//! does IO or reads a clock: the hub records every decision (a store command, later a Raft entry) before
//! acting on it, and a restarted hub resumes from the recorded state and times, bake timers included.
//!
//! Rules:
//! - Clusters belong to the first stage whose selector matches them; clusters no stage selects form an
//!   implicit last stage named `rest`. Membership of a cluster is fixed when its stage starts; until then
//!   a relabelled cluster moves to the stage its labels now select.
//! - Within a running stage at most `maxUnavailable` clusters are updating (given the Release and not yet
//!   healthy on it) at once.
//! - A cluster counts as healthy only on a report for a ClusterState version at or above the one that
//!   carried the Release to it (fenced: a report from before cannot promote a stage).
//! - A cluster not healthy by `progressDeadline` after it got the Release, or reporting `failed`, or
//!   turning unhealthy during its stage's bake, counts as failed. More than `failureBudget` failures halt
//!   the rollout: `onFailure: pause` holds everything where it is, `onFailure: rollback` gives the
//!   previous Release back to every cluster the rollout touched.
//! - `offline: defer`: a cluster not in contact for `offline_after` neither blocks its stage nor counts
//!   as failed; it is marked deferred and gets the Release when it is back, also after the rollout ends.
//! - `bake`: once every (non-deferred) cluster of a stage is healthy, the stage holds for the bake time;
//!   `approval: manual` then waits for an approval before the next stage starts.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_common::labels::{LabelSelector, Labels};
use flotilla_common::status::AppHealth;
use serde::{Deserialize, Serialize};

pub use crate::analysis::Outcome;
use crate::manifest::{Approval, MaxUnavailable, OnFailure, RolloutSpec};

#[cfg(test)]
mod tests;

/// Name of the implicit stage of clusters no stage selects.
pub const REST_STAGE: &str = "rest";

/// One cluster as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// Cluster id.
    pub id: String,
    /// Labels (select the stage).
    pub labels: Labels,
    /// Unix seconds of the last contact with the hub.
    pub last_contact: i64,
    /// The cluster's newest report for this app, if any.
    pub report: Option<AppReport>,
}

/// What a cluster last reported for the rollout's app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppReport {
    /// ClusterState version the report is about.
    pub version: u64,
    /// Release id the cluster applied.
    pub release_id: String,
    /// Whether applying failed for good.
    pub failed: bool,
    /// Health of the app's objects.
    pub health: AppHealth,
}

/// Where one cluster is in the rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum ClusterProgress {
    /// Waiting for its stage (or for a free slot in it).
    Waiting,
    /// Given the Release at `since`; `version` is the ClusterState version that carries it, once issued.
    Updating {
        /// Unix seconds.
        since: i64,
        /// The fencing version.
        version: Option<u64>,
    },
    /// Healthy on the Release since `since`.
    Healthy {
        /// Unix seconds.
        since: i64,
        /// The fencing version.
        version: u64,
    },
    /// Counted as failed.
    Failed {
        /// Why.
        reason: String,
    },
    /// Offline when its turn came; gets the Release when it returns.
    Deferred,
}

/// One stage of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageState {
    /// Stage name.
    pub name: String,
    /// Its clusters (fixed once it starts).
    pub clusters: Vec<String>,
    /// Unix seconds it started.
    pub started_at: Option<i64>,
    /// Unix seconds every cluster was healthy (bake starts).
    pub healthy_at: Option<i64>,
    /// Who approved it and when, for `approval: manual` stages.
    pub approved: Option<(String, i64)>,
    /// Unix seconds it completed.
    pub completed_at: Option<i64>,
    /// Its analysis queries' measurements during this bake, by [`analysis_keys`] key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub analysis: BTreeMap<String, QueryState>,
}

/// The measurements of one analysis query (for one cluster, or for the stage) during a bake.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryState {
    /// Passing measurements.
    pub passes: u32,
    /// Failed measurements.
    pub failures: u32,
    /// Inconclusive measurements since the last conclusive one.
    pub inconclusive_run: u32,
    /// The newest measurement.
    pub last: Option<Measurement>,
}

/// One measurement of an analysis query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    /// Unix seconds.
    pub at: i64,
    /// What it found.
    pub outcome: Outcome,
    /// A sentence: the value and the threshold, or why there is none.
    pub detail: String,
}

/// One query of a stage's analysis to measure: `key` names it in [`StageState::analysis`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalysisKey {
    /// `QUERY` for a query of the stage, `QUERY@CLUSTER-ID` for a per-cluster one.
    pub key: String,
    /// Index in the stage's `analysis.queries`.
    pub query: usize,
    /// The cluster a per-cluster query is measured for.
    pub cluster: Option<String>,
}

/// The analysis measurements stage `stage` needs: each query once, or once per cluster of the stage
/// that is healthy on the Release for a query that names `cluster`.
pub fn analysis_keys(r: &Rollout, spec: &RolloutSpec, stage: usize) -> Vec<AnalysisKey> {
    let Some(analysis) = spec.stages.get(stage).and_then(|s| s.analysis.as_ref()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, q) in analysis.queries.iter().enumerate() {
        if crate::analysis::per_cluster(&q.query) {
            for c in &r.stages[stage].clusters {
                if matches!(r.clusters.get(c), Some(ClusterProgress::Healthy { .. })) {
                    out.push(AnalysisKey {
                        key: format!("{}@{c}", q.name),
                        query: i,
                        cluster: Some(c.clone()),
                    });
                }
            }
        } else {
            out.push(AnalysisKey {
                key: q.name.clone(),
                query: i,
                cluster: None,
            });
        }
    }
    out
}

/// The analysis measurements due at `now`: those of the stage that bakes whose last measurement
/// (or the bake's start) is an interval or more ago. Empty unless the rollout progresses.
pub fn due_measurements(r: &Rollout, spec: &RolloutSpec, now: i64) -> Vec<(usize, AnalysisKey)> {
    if r.phase != Phase::Progressing {
        return Vec::new();
    }
    let Some(stage) = r.current_stage() else {
        return Vec::new();
    };
    let s = &r.stages[stage];
    let (Some(healthy_at), Some(analysis)) = (
        s.healthy_at,
        spec.stages.get(stage).and_then(|st| st.analysis.as_ref()),
    ) else {
        return Vec::new();
    };
    let interval = analysis.interval.as_secs() as i64;
    analysis_keys(r, spec, stage)
        .into_iter()
        .filter(|k| {
            let since = s
                .analysis
                .get(&k.key)
                .and_then(|q| q.last.as_ref())
                .map_or(healthy_at, |m| m.at);
            now >= since + interval
        })
        .map(|k| (stage, k))
        .collect()
}

/// What the rollout as a whole is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "phase")]
pub enum Phase {
    /// Moving through the stages.
    Progressing,
    /// Held by an operator or by `onFailure: pause`.
    Paused {
        /// Why.
        reason: String,
    },
    /// `onFailure: rollback`: every touched cluster has the previous Release.
    RolledBack {
        /// Why.
        reason: String,
    },
    /// Every stage completed.
    Completed,
    /// A newer Release of the app started its own rollout, which took over from here.
    Superseded {
        /// The newer Release.
        by: String,
    },
}

impl Phase {
    /// `progressing`, `paused`, `rolled-back`, `completed` or `superseded`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Progressing => "progressing",
            Phase::Paused { .. } => "paused",
            Phase::RolledBack { .. } => "rolled-back",
            Phase::Completed => "completed",
            Phase::Superseded { .. } => "superseded",
        }
    }

    /// Why it is paused, rolled back or superseded; empty otherwise.
    pub fn reason(&self) -> String {
        match self {
            Phase::Paused { reason } | Phase::RolledBack { reason } => reason.clone(),
            Phase::Superseded { by } => format!("superseded by release {}", short(by)),
            Phase::Progressing | Phase::Completed => String::new(),
        }
    }
}

/// The first 12 characters of an id (without a `sha256:` prefix), for messages.
pub fn short(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..id.len().min(12)]
}

/// One rollout as the hub stores it: the engine's state, the settings it started with, where its
/// Releases render from, and when it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutRecord {
    /// Increasing across the hub's rollouts.
    pub id: u64,
    /// Source the app comes from.
    pub source: String,
    /// `rollout:` of the Release being rolled out, as it was when the rollout started.
    pub spec: Option<RolloutSpec>,
    /// The engine's state.
    pub rollout: Rollout,
    /// The commit each Release it refers to renders at (the new one, the previous one, kept ones).
    pub commits: BTreeMap<String, String>,
    /// Unix seconds it ended (completed, rolled back or superseded).
    pub ended_at: Option<i64>,
}

impl RolloutRecord {
    /// The record of an app's first Release: there is nothing running to protect and nothing to roll
    /// back to, so it goes to every targeted cluster at once; it is the baseline later rollouts replace.
    pub fn initial(
        id: u64,
        app: &str,
        source: &str,
        release: &str,
        commit: &str,
        now: i64,
    ) -> Self {
        RolloutRecord {
            id,
            source: source.into(),
            spec: None,
            rollout: Rollout {
                app: app.into(),
                release: release.into(),
                previous: String::new(),
                kept: BTreeMap::new(),
                stages: Vec::new(),
                clusters: BTreeMap::new(),
                phase: Phase::Completed,
                started_at: now,
            },
            commits: BTreeMap::from([(release.to_string(), commit.to_string())]),
            ended_at: Some(now),
        }
    }

    /// Whether this is an app's first Release, which no stage held back.
    pub fn is_initial(&self) -> bool {
        self.spec.is_none()
    }

    /// The commits of every Release some cluster is given by this record now.
    pub fn commits_in_use(&self) -> std::collections::BTreeSet<&str> {
        let mut releases = std::collections::BTreeSet::new();
        match &self.rollout.phase {
            Phase::Completed => {
                releases.insert(self.rollout.release.as_str());
            }
            Phase::Superseded { .. } => {}
            _ => {
                releases.insert(self.rollout.release.as_str());
                releases.insert(self.rollout.previous.as_str());
                releases.extend(self.rollout.kept.values().map(String::as_str));
            }
        }
        releases
            .into_iter()
            .filter_map(|r| self.commits.get(r).map(String::as_str))
            .collect()
    }
}

/// A Rollout: one new Release of one app, moving across the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// App name.
    pub app: String,
    /// The new Release's id.
    pub release: String,
    /// The Release clusters had before (what a rollback gives back).
    pub previous: String,
    /// Clusters whose Release before this rollout was not `previous` (a superseded rollout had reached
    /// them): what they keep until their stage comes, and get back on a rollback.
    #[serde(default)]
    pub kept: BTreeMap<String, String>,
    /// Stages in order, the implicit last one included when it has clusters.
    pub stages: Vec<StageState>,
    /// Per cluster id.
    pub clusters: BTreeMap<String, ClusterProgress>,
    /// What it is doing.
    pub phase: Phase,
    /// Unix seconds it started.
    pub started_at: i64,
}

/// The settings the engine needs from `rollout:` and the hub.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// `rollout:` of the app.
    pub spec: RolloutSpec,
    /// No contact for this long: offline (deferred, not failed).
    pub offline_after: Duration,
}

/// One decision of the engine: a store command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "decision")]
pub enum Decision {
    /// Stage `stage` starts with these clusters.
    StageStarted {
        /// Stage index.
        stage: usize,
        /// Its clusters.
        clusters: Vec<String>,
    },
    /// The cluster gets the new Release now.
    Assign {
        /// Cluster id.
        cluster: String,
    },
    /// The cluster is healthy on the new Release.
    ClusterHealthy {
        /// Cluster id.
        cluster: String,
    },
    /// The cluster counts as failed.
    ClusterFailed {
        /// Cluster id.
        cluster: String,
        /// Why.
        reason: String,
    },
    /// The cluster is offline; it gets the Release when it returns.
    ClusterDeferred {
        /// Cluster id.
        cluster: String,
    },
    /// Every cluster of the stage is healthy; its bake starts.
    StageHealthy {
        /// Stage index.
        stage: usize,
    },
    /// The stage is done.
    StageCompleted {
        /// Stage index.
        stage: usize,
    },
    /// The failure budget is spent and `onFailure: pause`.
    Halted {
        /// Why.
        reason: String,
    },
    /// The failure budget is spent and `onFailure: rollback`: these clusters get the previous Release.
    RolledBack {
        /// Why.
        reason: String,
        /// Every cluster the rollout touched.
        clusters: Vec<String>,
    },
    /// Every stage completed.
    Completed,
    /// An analysis query of a baking stage was measured (the controller's measurement, recorded).
    Measured {
        /// Stage index.
        stage: usize,
        /// [`AnalysisKey::key`].
        key: String,
        /// What it found.
        outcome: Outcome,
        /// Why.
        detail: String,
    },
}

/// What the engine needs to wait for next, so the caller knows when to step again without polling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A report, an approval or a command; no timer.
    OnEvent,
    /// Unix seconds of the next timer (bake end, progress deadline, offline threshold).
    At(i64),
}

/// Which stage each cluster falls in: the first stage whose selector matches, else the implicit last one.
pub fn stage_of(spec: &RolloutSpec, labels: &Labels) -> usize {
    spec.stages
        .iter()
        .position(|s| s.selector.matches(labels))
        .unwrap_or(spec.stages.len())
}

/// Problems `plan` and status show before anything is applied (the manifest already refuses what cannot
/// mean anything, like `maxUnavailable: 0`).
pub fn warnings(spec: &RolloutSpec, fleet: &[ClusterView]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, stage) in spec.stages.iter().enumerate() {
        let n = fleet
            .iter()
            .filter(|c| stage_of(spec, &c.labels) == i)
            .count();
        if n == 0 {
            let shadowed = fleet.iter().any(|c| stage.selector.matches(&c.labels));
            out.push(if shadowed {
                format!(
                    "stage {:?}: every cluster its selector matches is in an earlier stage",
                    stage.name
                )
            } else {
                format!(
                    "stage {:?}: selector {} matches no cluster",
                    stage.name,
                    describe(&stage.selector)
                )
            });
        }
    }
    if spec.failure_budget as usize >= fleet.len() && !fleet.is_empty() {
        out.push(format!(
            "failureBudget {} is not smaller than the {} targeted clusters: the rollout can never halt",
            spec.failure_budget,
            fleet.len()
        ));
    }
    out
}

fn describe(selector: &LabelSelector) -> String {
    let labels: Vec<String> = selector
        .match_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if labels.is_empty() {
        "{}".into()
    } else {
        labels.join(",")
    }
}

/// How many clusters of a stage of `size` may be updating at once.
pub fn max_unavailable(max: MaxUnavailable, size: usize) -> usize {
    match max {
        MaxUnavailable::Count(n) => n as usize,
        MaxUnavailable::Percent(p) => (size * p as usize / 100).max(1),
    }
}

impl Rollout {
    /// A new rollout of `release` (replacing `previous`) for the clusters the app targets.
    pub fn new(
        app: &str,
        release: &str,
        previous: &str,
        spec: &RolloutSpec,
        fleet: &[ClusterView],
        now: i64,
    ) -> Rollout {
        let mut stages: Vec<StageState> = spec
            .stages
            .iter()
            .map(|s| StageState {
                name: s.name.clone(),
                clusters: Vec::new(),
                started_at: None,
                healthy_at: None,
                approved: None,
                completed_at: None,
                analysis: BTreeMap::new(),
            })
            .collect();
        stages.push(StageState {
            name: REST_STAGE.into(),
            clusters: Vec::new(),
            started_at: None,
            healthy_at: None,
            approved: None,
            completed_at: None,
            analysis: BTreeMap::new(),
        });
        let mut clusters = BTreeMap::new();
        for c in fleet {
            stages[stage_of(spec, &c.labels)]
                .clusters
                .push(c.id.clone());
            clusters.insert(c.id.clone(), ClusterProgress::Waiting);
        }
        if stages.last().is_some_and(|s| s.clusters.is_empty()) {
            stages.pop();
        }
        Rollout {
            app: app.into(),
            release: release.into(),
            previous: previous.into(),
            kept: BTreeMap::new(),
            stages,
            clusters,
            phase: Phase::Progressing,
            started_at: now,
        }
    }

    /// The first stage that has not completed.
    pub fn current_stage(&self) -> Option<usize> {
        self.stages.iter().position(|s| s.completed_at.is_none())
    }

    /// Whether the rollout has ended (completed, rolled back or superseded).
    pub fn ended(&self) -> bool {
        matches!(
            self.phase,
            Phase::Completed | Phase::RolledBack { .. } | Phase::Superseded { .. }
        )
    }

    /// An operator's rollback: the decision that gives every cluster the rollout touched its Release
    /// from before. Refused once the rollout has ended.
    pub fn rollback(&self, reason: &str) -> Result<Decision, String> {
        if self.ended() {
            return Err(format!(
                "the rollout of release {} has already ended ({})",
                short(&self.release),
                self.phase.as_str()
            ));
        }
        Ok(Decision::RolledBack {
            reason: reason.into(),
            clusters: self.touched(),
        })
    }

    /// Clusters that were given the new Release.
    pub fn touched(&self) -> Vec<String> {
        self.clusters
            .iter()
            .filter(|(_, p)| {
                matches!(
                    p,
                    ClusterProgress::Updating { .. }
                        | ClusterProgress::Healthy { .. }
                        | ClusterProgress::Failed { .. }
                )
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Which Release `cluster` should have now: the new one once assigned (or after completion, for a
    /// cluster that was deferred), else the previous one.
    pub fn release_for(&self, cluster: &str) -> &str {
        let before = self
            .kept
            .get(cluster)
            .map(String::as_str)
            .unwrap_or(&self.previous);
        match (&self.phase, self.clusters.get(cluster)) {
            (Phase::RolledBack { .. } | Phase::Superseded { .. }, _) => before,
            (Phase::Completed, _) => &self.release,
            (
                _,
                Some(
                    ClusterProgress::Updating { .. }
                    | ClusterProgress::Healthy { .. }
                    | ClusterProgress::Failed { .. },
                ),
            ) => &self.release,
            _ => before,
        }
    }

    /// The rollout of the app's next Release after this one. While this one runs, that is the rule for a
    /// new commit: the new rollout starts from the first stage, and every cluster keeps what this one gave
    /// it (the superseded Release or the one before) until the new rollout's stage reaches it; one rollout
    /// per app, so this one ends here (the caller marks it superseded). After a completed rollout the
    /// previous Release is this one's; after a rollback it is the one this rollout replaced.
    pub fn supersede(
        &self,
        release: &str,
        spec: &RolloutSpec,
        fleet: &[ClusterView],
        now: i64,
    ) -> Rollout {
        let base = match self.phase {
            Phase::Completed => &self.release,
            _ => &self.previous,
        };
        let mut next = Rollout::new(&self.app, release, base, spec, fleet, now);
        for c in fleet {
            let has = self.release_for(&c.id);
            if has != base {
                next.kept.insert(c.id.clone(), has.to_string());
            }
        }
        next
    }

    /// Records the ClusterState version that carried the Release to `cluster` (the fence).
    pub fn issued(&mut self, cluster: &str, version: u64) {
        if let Some(ClusterProgress::Updating { version: v, .. }) = self.clusters.get_mut(cluster)
            && v.is_none()
        {
            *v = Some(version);
        }
    }

    /// An operator's approval of the next stage that waits for one (`approval: manual`, not yet
    /// approved, not completed); it may come before that stage's turn.
    pub fn approve(&mut self, spec: &RolloutSpec, who: &str, now: i64) -> Result<usize, String> {
        if self.ended() {
            return Err(format!(
                "the rollout has ended ({}): there is nothing to approve",
                self.phase.as_str()
            ));
        }
        let stage = self
            .stages
            .iter()
            .enumerate()
            .position(|(i, s)| {
                s.completed_at.is_none()
                    && s.approved.is_none()
                    && spec
                        .stages
                        .get(i)
                        .is_some_and(|st| st.approval == Approval::Manual)
            })
            .ok_or("no stage of the rollout waits for an approval")?;
        self.stages[stage].approved = Some((who.to_string(), now));
        Ok(stage)
    }

    /// The stage that waits for an approval now: its turn has come and nobody approved it.
    pub fn awaiting_approval(&self, spec: &RolloutSpec) -> Option<usize> {
        if self.phase != Phase::Progressing {
            return None;
        }
        let stage = self.current_stage()?;
        let s = &self.stages[stage];
        (s.started_at.is_none()
            && s.approved.is_none()
            && spec
                .stages
                .get(stage)
                .is_some_and(|st| st.approval == Approval::Manual))
        .then_some(stage)
    }

    /// An operator's pause.
    pub fn pause(&mut self, reason: &str) {
        if self.phase == Phase::Progressing {
            self.phase = Phase::Paused {
                reason: reason.into(),
            };
        }
    }

    /// An operator's resume. After a halt, the failed clusters are tried again (they wait for a slot in
    /// their stage like any other), so resuming is the operator saying the cause is fixed.
    pub fn resume(&mut self) {
        if matches!(self.phase, Phase::Paused { .. }) {
            self.phase = Phase::Progressing;
            for progress in self.clusters.values_mut() {
                if matches!(progress, ClusterProgress::Failed { .. }) {
                    *progress = ClusterProgress::Waiting;
                }
            }
            for stage in &mut self.stages {
                if stage.completed_at.is_none() {
                    stage.healthy_at = None;
                    stage.analysis.clear();
                }
            }
        }
    }

    /// Folds one decision into the state.
    pub fn apply(&mut self, decision: &Decision, now: i64) {
        match decision {
            Decision::StageStarted { stage, clusters } => {
                let s = &mut self.stages[*stage];
                s.started_at = Some(now);
                s.clusters = clusters.clone();
            }
            Decision::Assign { cluster } => {
                self.clusters.insert(
                    cluster.clone(),
                    ClusterProgress::Updating {
                        since: now,
                        version: None,
                    },
                );
            }
            Decision::ClusterHealthy { cluster } => {
                if let Some(ClusterProgress::Updating {
                    version: Some(v), ..
                }) = self.clusters.get(cluster)
                {
                    let version = *v;
                    self.clusters.insert(
                        cluster.clone(),
                        ClusterProgress::Healthy {
                            since: now,
                            version,
                        },
                    );
                }
            }
            Decision::ClusterFailed { cluster, reason } => {
                self.clusters.insert(
                    cluster.clone(),
                    ClusterProgress::Failed {
                        reason: reason.clone(),
                    },
                );
            }
            Decision::ClusterDeferred { cluster } => {
                self.clusters
                    .insert(cluster.clone(), ClusterProgress::Deferred);
            }
            Decision::StageHealthy { stage } => self.stages[*stage].healthy_at = Some(now),
            Decision::StageCompleted { stage } => self.stages[*stage].completed_at = Some(now),
            Decision::Halted { reason } => {
                self.phase = Phase::Paused {
                    reason: reason.clone(),
                }
            }
            Decision::RolledBack { reason, .. } => {
                self.phase = Phase::RolledBack {
                    reason: reason.clone(),
                }
            }
            Decision::Completed => self.phase = Phase::Completed,
            Decision::Measured {
                stage,
                key,
                outcome,
                detail,
            } => {
                let q = self.stages[*stage].analysis.entry(key.clone()).or_default();
                match outcome {
                    Outcome::Pass => {
                        q.passes += 1;
                        q.inconclusive_run = 0;
                    }
                    Outcome::Fail => {
                        q.failures += 1;
                        q.inconclusive_run = 0;
                    }
                    Outcome::Inconclusive => q.inconclusive_run += 1,
                }
                q.last = Some(Measurement {
                    at: now,
                    outcome: *outcome,
                    detail: detail.clone(),
                });
            }
        }
    }

    fn failures(&self) -> usize {
        self.clusters
            .values()
            .filter(|c| matches!(c, ClusterProgress::Failed { .. }))
            .count()
    }
}

/// One step: every decision that follows from the state, the fleet and the time. Apply them in order
/// (each is also recorded) and step again until nothing is returned.
pub fn step(
    rollout: &Rollout,
    policy: &Policy,
    fleet: &[ClusterView],
    now: i64,
) -> (Vec<Decision>, Wake) {
    let mut state = rollout.clone();
    let mut out = Vec::new();
    let mut wake = Wake::OnEvent;
    loop {
        let (decisions, next) = one_pass(&state, policy, fleet, now);
        if decisions.is_empty() {
            wake = earliest(wake, next);
            break;
        }
        for d in decisions {
            state.apply(&d, now);
            out.push(d);
        }
    }
    (out, wake)
}

/// The decision the rollout's `onFailure` takes for `reason`.
fn on_failure(r: &Rollout, spec: &RolloutSpec, reason: String) -> Decision {
    match spec.on_failure {
        OnFailure::Pause => Decision::Halted { reason },
        OnFailure::Rollback => Decision::RolledBack {
            reason,
            clusters: r.touched(),
        },
    }
}

fn earliest(a: Wake, b: Wake) -> Wake {
    match (a, b) {
        (Wake::At(x), Wake::At(y)) => Wake::At(x.min(y)),
        (Wake::At(x), Wake::OnEvent) | (Wake::OnEvent, Wake::At(x)) => Wake::At(x),
        (Wake::OnEvent, Wake::OnEvent) => Wake::OnEvent,
    }
}

fn one_pass(
    r: &Rollout,
    policy: &Policy,
    fleet: &[ClusterView],
    now: i64,
) -> (Vec<Decision>, Wake) {
    let spec = &policy.spec;
    let mut wake = Wake::OnEvent;
    if r.phase != Phase::Progressing {
        return (Vec::new(), wake);
    }
    let views: BTreeMap<&str, &ClusterView> = fleet.iter().map(|c| (c.id.as_str(), c)).collect();
    let offline_after = policy.offline_after.as_secs() as i64;
    let online = |id: &str| {
        views
            .get(id)
            .is_some_and(|c| now - c.last_contact < offline_after)
    };

    let stage_index: BTreeMap<&str, usize> = r
        .stages
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.clusters.iter().map(move |c| (c.as_str(), i)))
        .collect();
    // Failures first, across every started stage: they can halt everything.
    let mut decisions = Vec::new();
    let deadline = spec.progress_deadline.map(|d| d.as_secs() as i64);
    for (id, progress) in &r.clusters {
        let Some(view) = views.get(id.as_str()) else {
            continue;
        };
        let fenced = view
            .report
            .as_ref()
            .filter(|rep| rep.release_id == r.release)
            .filter(|rep| match progress {
                ClusterProgress::Updating {
                    version: Some(v), ..
                }
                | ClusterProgress::Healthy { version: v, .. } => rep.version >= *v,
                _ => false,
            });
        match progress {
            ClusterProgress::Updating { since, .. } => {
                if let Some(rep) = fenced {
                    if rep.failed || rep.health == AppHealth::Failed {
                        decisions.push(Decision::ClusterFailed {
                            cluster: id.clone(),
                            reason: "applying the release failed".into(),
                        });
                        continue;
                    }
                    if rep.health == AppHealth::Healthy {
                        decisions.push(Decision::ClusterHealthy {
                            cluster: id.clone(),
                        });
                        continue;
                    }
                }
                if !online(id) && spec.offline == crate::manifest::OfflinePolicy::Defer {
                    decisions.push(Decision::ClusterDeferred {
                        cluster: id.clone(),
                    });
                    continue;
                }
                if let Some(d) = deadline {
                    if now >= since + d {
                        decisions.push(Decision::ClusterFailed {
                            cluster: id.clone(),
                            reason: format!(
                                "not healthy on the release {}s after receiving it (progressDeadline)",
                                d
                            ),
                        });
                    } else {
                        wake = earliest(wake, Wake::At(since + d));
                    }
                }
            }
            ClusterProgress::Healthy { .. } => {
                // During its stage's bake a cluster that turns unhealthy counts as failed.
                let baking = stage_index
                    .get(id.as_str())
                    .is_some_and(|s| r.stages[*s].completed_at.is_none());
                if baking
                    && let Some(rep) = fenced
                    && matches!(rep.health, AppHealth::Degraded | AppHealth::Failed)
                {
                    decisions.push(Decision::ClusterFailed {
                        cluster: id.clone(),
                        reason: format!("turned {} during the bake", rep.health.as_str()),
                    });
                }
            }
            ClusterProgress::Deferred => {
                // Back in contact: it gets the Release its stage has (or will have) now.
                let started = stage_index
                    .get(id.as_str())
                    .is_some_and(|s| r.stages[*s].started_at.is_some());
                if started && online(id) {
                    decisions.push(Decision::Assign {
                        cluster: id.clone(),
                    });
                }
            }
            _ => {}
        }
    }
    if !decisions.is_empty() {
        return (decisions, wake);
    }
    if r.failures() > spec.failure_budget as usize {
        let reason = format!(
            "{} clusters failed, over the failure budget of {}",
            r.failures(),
            spec.failure_budget
        );
        return (vec![on_failure(r, spec, reason)], wake);
    }

    let Some(stage) = r.current_stage() else {
        return (vec![Decision::Completed], wake);
    };
    let s = &r.stages[stage];
    let spec_stage = spec.stages.get(stage);
    if s.started_at.is_none() {
        // Clusters that have not started move with their labels: recompute this stage's members.
        let members: Vec<String> = fleet
            .iter()
            .filter(|c| {
                matches!(r.clusters.get(&c.id), Some(ClusterProgress::Waiting))
                    && stage_of(spec, &c.labels) == stage.min(spec.stages.len())
            })
            .map(|c| c.id.clone())
            .collect();
        if spec_stage.is_some_and(|st| st.approval == Approval::Manual) && s.approved.is_none() {
            return (Vec::new(), wake);
        }
        return (
            vec![Decision::StageStarted {
                stage,
                clusters: members,
            }],
            wake,
        );
    }
    let members: Vec<&String> = s
        .clusters
        .iter()
        .filter(|c| views.contains_key(c.as_str()))
        .collect();
    let waiting: Vec<&String> = members
        .iter()
        .copied()
        .filter(|c| matches!(r.clusters.get(*c), Some(ClusterProgress::Waiting)))
        .collect();
    let updating = members
        .iter()
        .filter(|c| matches!(r.clusters.get(**c), Some(ClusterProgress::Updating { .. })))
        .count();
    let limit = max_unavailable(
        spec_stage
            .map(|st| st.max_unavailable)
            .unwrap_or(MaxUnavailable::Percent(25)),
        members.len(),
    );
    let mut out = Vec::new();
    let mut free = limit.saturating_sub(updating);
    for c in waiting {
        if !online(c) && spec.offline == crate::manifest::OfflinePolicy::Defer {
            out.push(Decision::ClusterDeferred { cluster: c.clone() });
            continue;
        }
        if free == 0 {
            break;
        }
        free -= 1;
        out.push(Decision::Assign { cluster: c.clone() });
    }
    if !out.is_empty() {
        return (out, wake);
    }
    let settled = members.iter().all(|c| {
        matches!(
            r.clusters.get(*c),
            Some(
                ClusterProgress::Healthy { .. }
                    | ClusterProgress::Deferred
                    | ClusterProgress::Failed { .. }
            )
        )
    });
    if !settled {
        return (Vec::new(), wake);
    }
    let Some(healthy_at) = s.healthy_at else {
        return (vec![Decision::StageHealthy { stage }], wake);
    };
    let bake = spec_stage
        .and_then(|st| st.bake)
        .map(|b| b.as_secs() as i64)
        .unwrap_or(0);
    if let Some(analysis) = spec_stage.and_then(|st| st.analysis.as_ref()) {
        // A failing query fails the stage; it completes only on a pass of every query, bake or not.
        let keys = analysis_keys(r, spec, stage);
        let interval = analysis.interval.as_secs() as i64;
        let mut next = healthy_at + bake;
        let mut passed = true;
        for k in &keys {
            let q = s.analysis.get(&k.key);
            let name = &analysis.queries[k.query].name;
            let on = match &k.cluster {
                Some(c) => format!(" on cluster {c}"),
                None => String::new(),
            };
            let detail = q
                .and_then(|q| q.last.as_ref())
                .map(|m| m.detail.clone())
                .unwrap_or_default();
            if let Some(q) = q {
                if q.failures > analysis.failure_limit {
                    let reason = format!(
                        "stage {} failed its analysis: query {name}{on} failed {} times (failureLimit {}): {detail}",
                        s.name, q.failures, analysis.failure_limit
                    );
                    return (vec![on_failure(r, spec, reason)], wake);
                }
                if q.inconclusive_run >= analysis.inconclusive_limit {
                    let reason = format!(
                        "stage {} failed its analysis: query {name}{on} was inconclusive {} times in a row (inconclusiveLimit {}): {detail}",
                        s.name, q.inconclusive_run, analysis.inconclusive_limit
                    );
                    return (vec![on_failure(r, spec, reason)], wake);
                }
            }
            let last = q.and_then(|q| q.last.as_ref());
            passed &= last.is_some_and(|m| m.outcome == Outcome::Pass);
            next = next.min(last.map_or(healthy_at, |m| m.at) + interval);
        }
        if now < healthy_at + bake || !passed {
            return (Vec::new(), earliest(wake, Wake::At(next.max(now + 1))));
        }
        return (vec![Decision::StageCompleted { stage }], wake);
    }
    if now < healthy_at + bake {
        return (Vec::new(), Wake::At(healthy_at + bake));
    }
    // The next stage may need an approval; this one is done either way.
    (vec![Decision::StageCompleted { stage }], wake)
}
