//! The controller's side of staged rollouts (issue 14): it starts a rollout when a source's commit in
//! force carries a new Release of an app, steps every running rollout with the pure engine
//! ([`crate::rollout`]), records each decision in the store before any ClusterState shows its effect,
//! and tells `issue_states` which Release each cluster gets.
//!
//! Which Release a cluster gets for an app is the app's newest rollout record's answer
//! ([`Rollout::release_for`]); the objects of a Release other than the commit in force's come from a held
//! render of the commit it was rendered at, kept in memory while some cluster gets it (and rendered again
//! after a restart before any state is issued).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use flotilla_common::status::{AppHealth, AppPhase, StatusReport};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{AppRender, Controller, unix_now};
use crate::events::{NewEvent, Severity};
use crate::rollout::{
    AppReport, ClusterProgress, ClusterView, Decision, Phase, Policy, Rollout, RolloutRecord, Wake,
    short, step,
};
use crate::store::ClusterRecord;

/// What an operator asks of an app's rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutAction {
    /// Approve the next stage that waits for an approval.
    Approve,
    /// Hold everything where it is.
    Pause,
    /// Go on after a pause or a halt (failed clusters are tried again).
    Resume,
    /// Give every cluster the rollout touched its Release from before.
    Rollback,
}

impl RolloutAction {
    /// Parses `approve`, `pause`, `resume` or `rollback`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "approve" => RolloutAction::Approve,
            "pause" => RolloutAction::Pause,
            "resume" => RolloutAction::Resume,
            "rollback" => RolloutAction::Rollback,
            _ => return None,
        })
    }
}

/// Why a rollout action was not done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutActionError {
    /// The app has no rollout.
    #[error("app {0:?} has no rollout: its releases go to every cluster at once")]
    NotFound(String),
    /// The rollout is not in a state the action applies to.
    #[error("{0}")]
    Refused(String),
    /// The hub is stopping, or the store failed.
    #[error("{0}")]
    Unavailable(String),
}

/// An operator's action, sent to the controller task, which alone changes rollouts.
pub struct RolloutCommand {
    /// App name.
    pub app: String,
    /// What to do.
    pub action: RolloutAction,
    /// The admin certificate's name.
    pub who: String,
    /// The rollout after the action.
    pub reply: oneshot::Sender<Result<RolloutRecord, RolloutActionError>>,
}

/// One analysis measurement to take, off the controller task.
pub struct MeasureJob {
    app: String,
    rollout: u64,
    stage: usize,
    key: String,
    /// Cluster name, for a per-cluster query.
    cluster: String,
    promql: Result<String, String>,
    query: crate::manifest::AnalysisQuery,
}

/// A measurement taken.
pub struct MeasureDone {
    job: MeasureJob,
    outcome: crate::analysis::Outcome,
    detail: String,
}

impl MeasureJob {
    /// Queries Prometheus (a template that does not render fails without a query).
    pub async fn run(self, prometheus: Option<crate::analysis::Prometheus>) -> MeasureDone {
        let (outcome, detail) = match &self.promql {
            Ok(promql) => crate::analysis::measure(prometheus.as_ref(), promql, &self.query).await,
            Err(e) => (crate::analysis::Outcome::Fail, e.clone()),
        };
        MeasureDone {
            job: self,
            outcome,
            detail,
        }
    }
}

/// Which entry a cluster gets for an app.
pub(super) enum Choice<'a> {
    /// This render's entry.
    Use(&'a AppRender),
    /// The app is not part of the cluster's Release (it was not targeted at that commit).
    Skip,
    /// The render of the Release it gets is not in memory yet: issue nothing to the cluster for now.
    Hold,
}

/// The newest report of a cluster about `app`, as the engine reads it: fenced by the version that
/// carried the new Release (`fence`), healthy only once applied.
fn app_report(
    report: &StatusReport,
    app: &str,
    release: &str,
    fence: Option<u64>,
) -> Option<AppReport> {
    let status = report.apps.iter().find(|a| a.app == app)?;
    Some(AppReport {
        version: status.version,
        release_id: if fence.is_some_and(|f| status.version >= f) {
            release.to_string()
        } else {
            String::new()
        },
        failed: status.phase == AppPhase::Failed,
        health: if status.phase == AppPhase::Applied {
            status.health
        } else {
            AppHealth::Progressing
        },
    })
}

fn fence_of(progress: Option<&ClusterProgress>) -> Option<u64> {
    match progress? {
        ClusterProgress::Updating { version, .. } => *version,
        ClusterProgress::Healthy { version, .. } => Some(*version),
        _ => None,
    }
}

impl Controller {
    /// Commits other than the one in force whose renders source `i`'s rollouts give some cluster now.
    pub(super) fn held_commits(&self, i: usize) -> BTreeSet<String> {
        let name = &self.sources[i].config.name;
        let in_force = self.sources[i].record.rendered_commit.as_str();
        self.rollouts
            .values()
            .filter(|r| &r.source == name)
            .flat_map(|r| r.commits_in_use())
            .filter(|c| *c != in_force)
            .map(str::to_string)
            .collect()
    }

    /// Drops held renders no rollout needs; asks for a render of needed ones that are missing (once per
    /// poll, so a commit that no longer renders is not rendered in a loop).
    pub(super) fn prune_held(&mut self, i: usize) {
        let needed = self.held_commits(i);
        let src = &mut self.sources[i];
        src.held.retain(|c, _| needed.contains(c));
        if needed
            .iter()
            .any(|c| !src.held.contains_key(c) && !src.held_tried.contains(c))
        {
            src.rerender = true;
        }
    }

    /// Whether every held render source `i` needs is in memory.
    pub(super) fn held_ready(&self, i: usize) -> bool {
        self.held_commits(i)
            .iter()
            .all(|c| self.sources[i].held.contains_key(c))
    }

    /// The entry `cluster` gets for the app of `entry` (the commit in force's render) from source `i`.
    pub(super) fn choose<'a>(
        &'a self,
        i: usize,
        cluster: &str,
        entry: &'a AppRender,
    ) -> Choice<'a> {
        let src = &self.sources[i];
        let app = &entry.0.name;
        let Some(record) = self.rollouts.get(app) else {
            return Choice::Use(entry);
        };
        let in_force = src.rendered.as_ref().and_then(|r| r.release_of(app));
        if record.source != src.config.name || record.is_initial() || in_force.is_none() {
            return Choice::Use(entry);
        }
        let wanted = record.rollout.release_for(cluster);
        if Some(wanted) == in_force {
            return Choice::Use(entry);
        }
        let Some(commit) = record.commits.get(wanted) else {
            return Choice::Use(entry);
        };
        let Some(held) = src.held.get(commit) else {
            return Choice::Hold;
        };
        match held.per_cluster.get(cluster) {
            None => Choice::Hold,
            Some(apps) => match apps.iter().find(|a| a.0.name == *app) {
                Some(a) => Choice::Use(a),
                None => Choice::Skip,
            },
        }
    }

    /// Whether `cluster` waits for the ClusterState version that gives it the app's new Release (its
    /// fence), given it gets `release` now.
    pub(super) fn awaits_fence(&self, app: &str, cluster: &str) -> bool {
        self.rollouts.get(app).is_some_and(|r| {
            !r.is_initial()
                && !r.rollout.ended()
                && matches!(
                    r.rollout.clusters.get(cluster),
                    Some(ClusterProgress::Updating { version: None, .. })
                )
                && r.rollout.release_for(cluster) == r.rollout.release
        })
    }

    /// Starts a rollout for every app whose Release at source `i`'s commit in force is new, records the
    /// first Release of new apps, and ends rollouts of apps that dropped their `rollout:` block.
    pub(super) async fn reconcile_rollouts(&mut self, i: usize) {
        let Some(rendered) = self.sources[i].rendered.clone() else {
            return;
        };
        let name = self.sources[i].config.name.clone();
        let now = unix_now();
        let mut changed: Vec<RolloutRecord> = Vec::new();
        let mut events = Vec::new();
        let mut fleet: Option<Vec<(ClusterRecord, Option<StatusReport>, i64)>> = None;
        for (app, release) in &rendered.releases {
            // The first source that declares an app wins, as in `issue_states`.
            if self.sources[..i].iter().any(|s| {
                s.rendered
                    .as_ref()
                    .is_some_and(|r| r.releases.contains_key(app))
            }) {
                continue;
            }
            let spec = rendered.rollout_specs.get(app);
            let existing = self.rollouts.get(app).cloned();
            let existing = existing.as_ref();
            let same = existing.is_some_and(|r| r.source == name && r.rollout.release == *release);
            match (existing, spec) {
                (Some(_), Some(_)) if same => continue,
                // Without `rollout:` the release in force goes everywhere, a held-back one included.
                (Some(r), None) if same && r.is_initial() => continue,
                (Some(r), Some(spec)) if r.source == name => {
                    if fleet.is_none() {
                        fleet = Some(self.read_fleet().await);
                    }
                    let views = self.views(app, fleet.as_deref().unwrap_or(&[]), &rendered, None);
                    let mut next = r.rollout.supersede(release, spec, &views, now);
                    if next.stages.is_empty() {
                        // No cluster is targeted: nothing to stage.
                        next.phase = Phase::Completed;
                    }
                    let mut commits = BTreeMap::from([(release.clone(), rendered.commit.clone())]);
                    for rel in std::iter::once(&next.previous).chain(next.kept.values()) {
                        if let Some(c) = r.commits.get(rel) {
                            commits.insert(rel.clone(), c.clone());
                        }
                    }
                    if !r.rollout.ended() {
                        let mut old = r.clone();
                        old.rollout.phase = Phase::Superseded {
                            by: release.clone(),
                        };
                        old.ended_at = Some(now);
                        events.push(self.rollout_event(
                            &old,
                            "rollout-superseded",
                            Severity::Warning,
                            "",
                            format!(
                                "the rollout of release {} was superseded by release {} (commit {}), which starts again from the first stage",
                                short(&old.rollout.release),
                                short(release),
                                short(&rendered.commit)
                            ),
                        ));
                        changed.push(old);
                    }
                    self.next_rollout_id += 1;
                    let record = RolloutRecord {
                        id: self.next_rollout_id,
                        source: name.clone(),
                        spec: Some(spec.clone()),
                        ended_at: next.ended().then_some(now),
                        rollout: next,
                        commits,
                    };
                    let stages: Vec<String> = record
                        .rollout
                        .stages
                        .iter()
                        .map(|s| format!("{} ({})", s.name, s.clusters.len()))
                        .collect();
                    events.push(self.rollout_event(
                        &record,
                        "rollout-started",
                        Severity::Info,
                        "",
                        format!(
                            "release {} (commit {}) rolls out to {} clusters in stages {}",
                            short(release),
                            short(&rendered.commit),
                            record.rollout.clusters.len(),
                            if stages.is_empty() {
                                "(none: no cluster is targeted)".to_string()
                            } else {
                                stages.join(", ")
                            }
                        ),
                    ));
                    for warning in crate::rollout::warnings(spec, &views) {
                        events.push(self.rollout_event(
                            &record,
                            "rollout-warning",
                            Severity::Warning,
                            "",
                            warning,
                        ));
                    }
                    info!(app = %app, release = %short(release), id = record.id, "rollout started");
                    changed.push(record);
                }
                (existing, _) => {
                    // A new app, an app that has no `rollout:` block, or one that moved to this source:
                    // the Release goes to every cluster at once and is the baseline of later rollouts.
                    if let Some(r) = existing
                        && !r.rollout.ended()
                    {
                        let mut old = r.clone();
                        old.rollout.phase = Phase::Superseded {
                            by: release.clone(),
                        };
                        old.ended_at = Some(now);
                        changed.push(old);
                    }
                    self.next_rollout_id += 1;
                    changed.push(RolloutRecord::initial(
                        self.next_rollout_id,
                        app,
                        &name,
                        release,
                        &rendered.commit,
                        now,
                    ));
                }
            }
        }
        if changed.is_empty() {
            return;
        }
        if self.save_rollouts(changed).await {
            self.log_events(events).await;
        }
    }

    /// Stores records and takes them as the apps' newest; false when the store failed (then nothing
    /// changed: no agent may see a decision that is not recorded).
    async fn save_rollouts(&mut self, records: Vec<RolloutRecord>) -> bool {
        let store = self.store.clone();
        let saved = records.clone();
        match tokio::task::spawn_blocking(move || store.put_rollouts(&saved)).await {
            Ok(Ok(())) => {
                for record in records {
                    let newest = self
                        .rollouts
                        .get(&record.rollout.app)
                        .is_none_or(|r| r.id <= record.id);
                    if newest {
                        self.rollouts.insert(record.rollout.app.clone(), record);
                    }
                }
                true
            }
            Ok(Err(e)) => {
                warn!(error = %e, "recording rollout decisions failed; they will be taken again");
                false
            }
            Err(e) => {
                warn!(error = %e, "recording rollout decisions panicked");
                false
            }
        }
    }

    async fn log_events(&self, events: Vec<NewEvent>) {
        if let Some(log) = &self.events
            && !events.is_empty()
        {
            log.record(events).await;
        }
    }

    fn rollout_event(
        &self,
        record: &RolloutRecord,
        kind: &str,
        severity: Severity,
        cluster: &str,
        message: String,
    ) -> NewEvent {
        NewEvent {
            source: record.source.clone(),
            app: record.rollout.app.clone(),
            ..NewEvent::cluster(unix_now(), kind, severity, cluster, message)
        }
    }

    async fn read_fleet(&self) -> Vec<(ClusterRecord, Option<StatusReport>, i64)> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.cluster_reports()).await {
            Ok(Ok(fleet)) => fleet,
            Ok(Err(e)) => {
                warn!(error = %e, "reading clusters for rollouts failed");
                Vec::new()
            }
            Err(e) => {
                warn!(error = %e, "reading clusters for rollouts panicked");
                Vec::new()
            }
        }
    }

    /// The clusters the app's commit in force targets, as the engine sees them.
    fn views(
        &self,
        app: &str,
        fleet: &[(ClusterRecord, Option<StatusReport>, i64)],
        rendered: &super::RenderedSource,
        rollout: Option<&Rollout>,
    ) -> Vec<ClusterView> {
        let contacts = self.contacts.lock().expect("last_contact lock").clone();
        let mut views: Vec<ClusterView> = fleet
            .iter()
            .filter(|(c, _, _)| {
                rendered
                    .per_cluster
                    .get(&c.id)
                    .is_some_and(|apps| apps.iter().any(|a| a.0.name == app))
            })
            .map(|(c, report, reported_at)| {
                let contact = contacts
                    .get(&c.id)
                    .copied()
                    .unwrap_or(0)
                    .max(*reported_at)
                    // The hub being down says nothing about the clusters: count from its start.
                    .max(self.started_at);
                let report = match (rollout, report) {
                    (Some(r), Some(report)) => {
                        app_report(report, app, &r.release, fence_of(r.clusters.get(&c.id)))
                    }
                    _ => None,
                };
                ClusterView {
                    id: c.id.clone(),
                    labels: c.labels.clone(),
                    last_contact: contact,
                    report,
                }
            })
            .collect();
        // The order clusters get the Release in: by name, as `plan` shows it.
        let names: BTreeMap<&str, &str> = fleet
            .iter()
            .map(|(c, _, _)| (c.id.as_str(), c.name.as_str()))
            .collect();
        views.sort_by(|a, b| names.get(a.id.as_str()).cmp(&names.get(b.id.as_str())));
        views
    }

    /// Steps every running rollout until the engine has nothing more to decide, records the decisions
    /// and their events; returns whether anything was decided. Sets the next timer.
    pub(super) async fn step_rollouts(&mut self) -> bool {
        let running: Vec<String> = self
            .rollouts
            .values()
            .filter(|r| !r.is_initial() && !r.rollout.ended())
            .map(|r| r.rollout.app.clone())
            .collect();
        self.rollout_wake = None;
        if running.is_empty() {
            return false;
        }
        let fleet = self.read_fleet().await;
        let names: BTreeMap<String, String> = fleet
            .iter()
            .map(|(c, _, _)| (c.id.clone(), c.name.clone()))
            .collect();
        let now = unix_now();
        let mut changed = Vec::new();
        let mut events = Vec::new();
        let mut wake: Option<i64> = None;
        for app in running {
            let record = &self.rollouts[&app];
            let Some(spec) = record.spec.clone() else {
                continue;
            };
            let Some(rendered) = self
                .sources
                .iter()
                .find(|s| s.config.name == record.source)
                .and_then(|s| s.rendered.clone())
            else {
                continue;
            };
            let views = self.views(&app, &fleet, &rendered, Some(&record.rollout));
            let policy = Policy {
                spec,
                offline_after: self.offline_after,
            };
            let (decisions, next) = step(&record.rollout, &policy, &views, now);
            // Offline clusters are noticed by time, not by an event: look again while it runs.
            let recheck = now + (self.offline_after.as_secs() as i64 / 2).clamp(1, 30);
            let at = match next {
                Wake::At(t) => t.min(recheck),
                Wake::OnEvent => recheck,
            };
            wake = Some(wake.map_or(at, |w| w.min(at)));
            if decisions.is_empty() {
                continue;
            }
            let mut record = record.clone();
            for decision in &decisions {
                let before = record.rollout.clone();
                record.rollout.apply(decision, now);
                events.extend(self.decision_events(&record, &before, &policy, decision, &names));
            }
            if record.rollout.ended() {
                record.ended_at = Some(now);
            }
            changed.push(record);
        }
        self.rollout_wake = wake;
        let decided = if changed.is_empty() {
            false
        } else if self.save_rollouts(changed).await {
            self.log_events(events).await;
            true
        } else {
            return false;
        };
        self.queue_measurements(&fleet, now);
        decided
    }

    /// Queues the analysis measurements that are due and not under way.
    fn queue_measurements(
        &mut self,
        fleet: &[(ClusterRecord, Option<StatusReport>, i64)],
        now: i64,
    ) {
        let clusters: BTreeMap<&str, &ClusterRecord> =
            fleet.iter().map(|(c, _, _)| (c.id.as_str(), c)).collect();
        for record in self.rollouts.values() {
            let Some(spec) = record.spec.as_ref().filter(|_| !record.rollout.ended()) else {
                continue;
            };
            for (stage, key) in crate::rollout::due_measurements(&record.rollout, spec, now) {
                let id = (record.rollout.app.clone(), record.id, key.key.clone());
                if self.measuring.contains(&id) {
                    continue;
                }
                let Some(query) = spec.stages[stage]
                    .analysis
                    .as_ref()
                    .map(|a| a.queries[key.query].clone())
                else {
                    continue;
                };
                let cluster = key
                    .cluster
                    .as_deref()
                    .and_then(|c| clusters.get(c).copied());
                let promql = crate::analysis::render(
                    &query.query,
                    cluster.map(|c| crate::analysis::ClusterVars {
                        name: &c.name,
                        id: &c.id,
                        labels: &c.labels,
                    }),
                    &record.rollout.app,
                    &record.rollout.stages[stage].name,
                );
                self.measuring.insert(id);
                self.due.push(MeasureJob {
                    app: record.rollout.app.clone(),
                    rollout: record.id,
                    stage,
                    key: key.key,
                    cluster: cluster.map(|c| c.name.clone()).unwrap_or_default(),
                    promql,
                    query,
                });
            }
        }
    }

    /// Records a measurement in its rollout (if that is still where it was measured) and steps on it.
    pub(super) async fn record_measurement(&mut self, done: MeasureDone) {
        let job = done.job;
        self.measuring
            .remove(&(job.app.clone(), job.rollout, job.key.clone()));
        self.metrics
            .analysis_measurements
            .get_or_create(&crate::metrics::ResultLabels {
                result: done.outcome.as_str().into(),
            })
            .inc();
        let Some(record) = self.rollouts.get(&job.app).filter(|r| {
            r.id == job.rollout
                && r.rollout.phase == Phase::Progressing
                && r.rollout.current_stage() == Some(job.stage)
                && r.rollout.stages[job.stage].healthy_at.is_some()
        }) else {
            return;
        };
        let mut record = record.clone();
        let now = unix_now();
        let decision = Decision::Measured {
            stage: job.stage,
            key: job.key.clone(),
            outcome: done.outcome,
            detail: done.detail.clone(),
        };
        record.rollout.apply(&decision, now);
        let run = record.rollout.stages[job.stage].analysis[&job.key].inconclusive_run;
        let stage = record.rollout.stages[job.stage].name.clone();
        let on = if job.cluster.is_empty() {
            String::new()
        } else {
            format!(" on cluster {}", job.cluster)
        };
        let event = match done.outcome {
            crate::analysis::Outcome::Fail => Some(self.rollout_event(
                &record,
                "rollout-analysis-failed",
                Severity::Error,
                &job.cluster,
                format!(
                    "analysis query {} of stage {stage}{on} failed: {}",
                    job.query.name, done.detail
                ),
            )),
            crate::analysis::Outcome::Inconclusive if run == 1 => Some(self.rollout_event(
                &record,
                "rollout-analysis-inconclusive",
                Severity::Warning,
                &job.cluster,
                format!(
                    "analysis query {} of stage {stage}{on} is inconclusive: {}; the stage does not complete on it",
                    job.query.name, done.detail
                ),
            )),
            _ => None,
        };
        if !self.save_rollouts(vec![record]).await {
            return;
        }
        self.log_events(event.into_iter().collect()).await;
        self.advance().await;
    }

    fn decision_events(
        &self,
        record: &RolloutRecord,
        before: &Rollout,
        policy: &Policy,
        decision: &Decision,
        names: &BTreeMap<String, String>,
    ) -> Vec<NewEvent> {
        let name = |id: &str| names.get(id).cloned().unwrap_or_else(|| id.to_string());
        let stage = |i: usize| record.rollout.stages[i].name.clone();
        let release = short(&record.rollout.release).to_string();
        let ev = |kind: &str, severity, cluster: &str, message: String| {
            self.rollout_event(record, kind, severity, cluster, message)
        };
        match decision {
            Decision::StageStarted { stage: i, clusters } => vec![ev(
                "rollout-stage-started",
                Severity::Info,
                "",
                format!(
                    "stage {} of release {release} started with {} clusters",
                    stage(*i),
                    clusters.len()
                ),
            )],
            Decision::Assign { cluster } => {
                let again = matches!(
                    before.clusters.get(cluster),
                    Some(ClusterProgress::Deferred)
                );
                vec![ev(
                    "rollout-cluster-updating",
                    Severity::Info,
                    &name(cluster),
                    if again {
                        format!("back in contact: gets release {release} it was deferred for")
                    } else {
                        format!("gets release {release}")
                    },
                )]
            }
            Decision::ClusterHealthy { cluster } => vec![ev(
                "rollout-cluster-healthy",
                Severity::Info,
                &name(cluster),
                format!("healthy on release {release}"),
            )],
            Decision::ClusterFailed { cluster, reason } => vec![ev(
                "rollout-cluster-failed",
                Severity::Error,
                &name(cluster),
                format!("failed on release {release}: {reason}"),
            )],
            Decision::ClusterDeferred { cluster } => vec![ev(
                "rollout-cluster-deferred",
                Severity::Warning,
                &name(cluster),
                format!(
                    "not in contact for {}s: deferred, it gets release {release} when it is back",
                    self.offline_after.as_secs()
                ),
            )],
            Decision::StageHealthy { stage: i } => {
                let bake = policy
                    .spec
                    .stages
                    .get(*i)
                    .and_then(|s| s.bake)
                    .map(|b| b.as_secs())
                    .unwrap_or(0);
                vec![ev(
                    "rollout-stage-healthy",
                    Severity::Info,
                    "",
                    if bake > 0 {
                        format!(
                            "stage {} is healthy on release {release}; it bakes for {bake}s",
                            stage(*i)
                        )
                    } else {
                        format!("stage {} is healthy on release {release}", stage(*i))
                    },
                )]
            }
            Decision::StageCompleted { stage: i } => {
                let mut out = vec![ev(
                    "rollout-stage-completed",
                    Severity::Info,
                    "",
                    format!("stage {} of release {release} completed", stage(*i)),
                )];
                if let Some(next) = record.rollout.awaiting_approval(&policy.spec) {
                    out.push(ev(
                        "rollout-awaiting-approval",
                        Severity::Warning,
                        "",
                        format!(
                            "stage {} waits for an approval: flotilla rollout approve {}",
                            stage(next),
                            record.rollout.app
                        ),
                    ));
                }
                out
            }
            Decision::Halted { reason } => vec![ev(
                "rollout-halted",
                Severity::Error,
                "",
                format!(
                    "the rollout of release {release} halted: {reason}; it waits for `flotilla rollout resume` or `rollback`"
                ),
            )],
            Decision::RolledBack { reason, clusters } => vec![ev(
                "rollout-rolled-back",
                Severity::Error,
                "",
                format!(
                    "the rollout of release {release} rolled back: {reason}; {} clusters get their release from before",
                    clusters.len()
                ),
            )],
            // Recorded with their own events by `record_measurement`.
            Decision::Measured { .. } => Vec::new(),
            Decision::Completed => vec![ev(
                "rollout-completed",
                Severity::Info,
                "",
                format!(
                    "release {release} completed on {} clusters",
                    record.rollout.clusters.len()
                ),
            )],
        }
    }

    /// Records the fences `issue_states` set (the versions that carried the new Release), with those
    /// states, and returns the records to store with them.
    pub(super) fn set_fences(&mut self, fences: &[(String, String, u64)]) -> Vec<RolloutRecord> {
        let mut changed: BTreeMap<String, RolloutRecord> = BTreeMap::new();
        for (app, cluster, version) in fences {
            let Some(record) = self.rollouts.get(app) else {
                continue;
            };
            let record = changed.entry(app.clone()).or_insert_with(|| record.clone());
            record.rollout.issued(cluster, *version);
        }
        changed.into_values().collect()
    }

    /// Takes fenced records as the apps' newest once their states are stored.
    pub(super) fn fences_stored(&mut self, records: Vec<RolloutRecord>) {
        for record in records {
            self.rollouts.insert(record.rollout.app.clone(), record);
        }
    }

    /// Does an operator's action and answers it.
    pub(super) async fn handle_command(&mut self, command: RolloutCommand) {
        let outcome = self.do_action(&command).await;
        let _ = command.reply.send(outcome);
    }

    async fn do_action(
        &mut self,
        command: &RolloutCommand,
    ) -> Result<RolloutRecord, RolloutActionError> {
        let Some(record) = self.rollouts.get(&command.app).filter(|r| !r.is_initial()) else {
            return Err(RolloutActionError::NotFound(command.app.clone()));
        };
        let mut record = record.clone();
        let spec = record.spec.clone().expect("only staged rollouts get here");
        let now = unix_now();
        let who = &command.who;
        let release = short(&record.rollout.release).to_string();
        let (kind, message) = match command.action {
            RolloutAction::Approve => {
                let stage = record
                    .rollout
                    .approve(&spec, who, now)
                    .map_err(RolloutActionError::Refused)?;
                (
                    "rollout-approved",
                    format!(
                        "stage {} of release {release} approved by {who}",
                        record.rollout.stages[stage].name
                    ),
                )
            }
            RolloutAction::Pause => {
                if record.rollout.phase != Phase::Progressing {
                    return Err(RolloutActionError::Refused(format!(
                        "the rollout is {}: only a progressing rollout can be paused",
                        record.rollout.phase.as_str()
                    )));
                }
                record.rollout.pause(&format!("paused by {who}"));
                (
                    "rollout-paused",
                    format!("the rollout of release {release} was paused by {who}"),
                )
            }
            RolloutAction::Resume => {
                if !matches!(record.rollout.phase, Phase::Paused { .. }) {
                    return Err(RolloutActionError::Refused(format!(
                        "the rollout is {}: only a paused rollout can be resumed",
                        record.rollout.phase.as_str()
                    )));
                }
                record.rollout.resume();
                (
                    "rollout-resumed",
                    format!("the rollout of release {release} was resumed by {who}"),
                )
            }
            RolloutAction::Rollback => {
                let decision = record
                    .rollout
                    .rollback(&format!("rolled back by {who}"))
                    .map_err(RolloutActionError::Refused)?;
                record.rollout.apply(&decision, now);
                record.ended_at = Some(now);
                (
                    "rollout-rolled-back",
                    format!(
                        "the rollout of release {release} was rolled back by {who}; {} clusters get their release from before",
                        record.rollout.touched().len()
                    ),
                )
            }
        };
        if !self.save_rollouts(vec![record.clone()]).await {
            return Err(RolloutActionError::Unavailable(
                "the hub could not record the action; try again".into(),
            ));
        }
        let severity = match command.action {
            RolloutAction::Rollback => Severity::Warning,
            _ => Severity::Info,
        };
        let event = self.rollout_event(&record, kind, severity, "", message);
        self.log_events(vec![event]).await;
        Ok(record)
    }

    /// Keeps held renders a render job made.
    pub(super) fn keep_held(&mut self, i: usize, held: super::HeldRenders) {
        for (commit, render) in held {
            match render {
                Ok(r) => {
                    self.sources[i].held.insert(commit, Arc::new(r));
                }
                Err(e) => warn!(
                    source = %self.sources[i].config.name,
                    commit = %commit,
                    error = %e,
                    "rendering a commit a rollout still gives some clusters failed; they get no new state"
                ),
            }
        }
    }
}
