//! The hub's Prometheus metrics (issue 16), served with the probes by `flotilla-probes` on
//! `metrics.listen`: `/readyz` answers ready while this replica knows a leader that hears a
//! majority, so it serves agents.
//!
//! Counters and histograms are updated where the work happens (the controller, the API); gauges
//! of state (Raft indexes, clusters by state, connected agents) are read at each scrape from the
//! replica's Raft metrics and store, so they are never stale. Labels are bounded: a source name or
//! a cluster state, never a commit or an object name.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::warn;

/// A source's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `sources[].name` in hub.yaml.
    pub source: String,
}

/// A cluster state: `converged`, `progressing`, `failed` or `pending` (nothing issued yet).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// The state.
    pub state: String,
}

/// A notification target's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    /// `notifications.targets[].name` in hub.yaml.
    pub target: String,
}

/// A cluster's health: the worst of its apps' (`healthy`, `progressing`, `degraded`, `failed`,
/// `unknown` for no report).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthLabels {
    /// The health.
    pub health: String,
}

/// The result of an analysis measurement.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `pass`, `fail` or `inconclusive`.
    pub result: String,
}

/// An app's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabels {
    /// App name.
    pub app: String,
}

/// An app's rollout: its phase (`progressing`, `paused`, `rolled-back`, `completed`, `superseded`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RolloutLabels {
    /// App name.
    pub app: String,
    /// Phase.
    pub phase: String,
}

type HistogramFamily = Family<SourceLabels, Histogram, fn() -> Histogram>;
type TargetHistograms = Family<TargetLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 10 ms to about 40 s.
    Histogram::new(exponential_buckets(0.01, 2.0, 13))
}

/// The hub's metrics; clones share them.
#[derive(Clone)]
pub struct HubMetrics {
    registry: Arc<Registry>,
    /// Source fetches, by how long they took.
    pub fetch_duration: HistogramFamily,
    /// Fetches that failed.
    pub fetch_errors: Family<SourceLabels, Counter>,
    /// Renders of a source's commit, and those that failed for some app.
    pub renders: Family<SourceLabels, Counter>,
    /// Renders with at least one failed app.
    pub render_errors: Family<SourceLabels, Counter>,
    /// ClusterStates signed and committed.
    pub states_issued: Counter,
    /// Status reports received from agents (committed or refused).
    pub reports_received: Counter,
    /// Agents with an open Watch on this replica.
    pub watching_agents: Gauge,
    /// Times this replica saw the leader change.
    pub leader_changes: Counter,
    /// Renders of an app (one per commit rendered, for every cluster it targets).
    pub app_renders: Family<AppLabels, Counter>,
    /// Renders of an app that failed.
    pub app_render_errors: Family<AppLabels, Counter>,
    /// 1 for the phase each app's newest staged rollout is in, 0 for the others.
    pub rollout_phase: Family<RolloutLabels, Gauge>,
    /// Index of the stage each app's rollout is in (the number of stages once it ended).
    pub rollout_stage: Family<AppLabels, Gauge>,
    /// Alerts delivered.
    pub notifications_sent: Family<TargetLabels, Counter>,
    /// Delivery attempts that failed.
    pub notification_failures: Family<TargetLabels, Counter>,
    /// Events skipped because the target was over `queueLimit` behind, or retention dropped them.
    pub notifications_dropped: Family<TargetLabels, Counter>,
    /// Events after the target's cursor.
    pub notification_queue: Family<TargetLabels, Gauge>,
    /// 0 while a target has failed for `notifications.targetDownAfter`, else 1.
    pub notification_target_up: Family<TargetLabels, Gauge>,
    /// Time from an event to its delivery.
    pub notification_delay: TargetHistograms,
    /// Stage analysis queries evaluated, by result (`pass`, `fail`, `inconclusive`).
    pub analysis_measurements: Family<ResultLabels, Counter>,
    clusters: Family<StateLabels, Gauge>,
    cluster_health: Family<HealthLabels, Gauge>,
    raft_term: Gauge<u64, AtomicU64>,
    raft_last_log_index: Gauge<u64, AtomicU64>,
    raft_applied_index: Gauge<u64, AtomicU64>,
    raft_is_leader: Gauge,
}

impl Default for HubMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl HubMetrics {
    /// Every metric, registered under `flotilla_hub_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("flotilla_hub");
        let fetch_duration: HistogramFamily =
            Family::new_with_constructor(duration_histogram as fn() -> Histogram);
        let metrics = HubMetrics {
            registry: Arc::new(Registry::default()),
            fetch_duration,
            fetch_errors: Family::default(),
            renders: Family::default(),
            render_errors: Family::default(),
            states_issued: Counter::default(),
            reports_received: Counter::default(),
            watching_agents: Gauge::default(),
            leader_changes: Counter::default(),
            app_renders: Family::default(),
            app_render_errors: Family::default(),
            rollout_phase: Family::default(),
            rollout_stage: Family::default(),
            notifications_sent: Family::default(),
            notification_failures: Family::default(),
            notifications_dropped: Family::default(),
            notification_queue: Family::default(),
            notification_target_up: Family::default(),
            notification_delay: Family::new_with_constructor(
                duration_histogram as fn() -> Histogram,
            ),
            analysis_measurements: Family::default(),
            clusters: Family::default(),
            cluster_health: Family::default(),
            raft_term: Gauge::default(),
            raft_last_log_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            raft_is_leader: Gauge::default(),
        };
        let r = &mut registry;
        r.register(
            "source_fetch_duration_seconds",
            "Time a fetch of a source took, failed ones included",
            metrics.fetch_duration.clone(),
        );
        r.register(
            "source_fetch_errors",
            "Fetches of a source that failed",
            metrics.fetch_errors.clone(),
        );
        r.register(
            "renders",
            "Renders of a source's commit for the fleet",
            metrics.renders.clone(),
        );
        r.register(
            "render_errors",
            "Renders of a source's commit in which some app failed",
            metrics.render_errors.clone(),
        );
        r.register(
            "cluster_states_issued",
            "ClusterStates signed and committed by this replica as leader",
            metrics.states_issued.clone(),
        );
        r.register(
            "status_reports_received",
            "Status reports received from agents on this replica",
            metrics.reports_received.clone(),
        );
        r.register(
            "watching_agents",
            "Agents with an open Watch on this replica",
            metrics.watching_agents.clone(),
        );
        r.register(
            "clusters",
            "Registered clusters by state (converged, progressing, failed, pending)",
            metrics.clusters.clone(),
        );
        r.register(
            "cluster_health",
            "Registered clusters by health, the worst of their apps' (healthy, progressing, degraded, failed, unknown)",
            metrics.cluster_health.clone(),
        );
        r.register(
            "raft_term",
            "This replica's current Raft term",
            metrics.raft_term.clone(),
        );
        r.register(
            "raft_last_log_index",
            "The index of this replica's last Raft log entry",
            metrics.raft_last_log_index.clone(),
        );
        r.register(
            "raft_applied_index",
            "The index of the last Raft log entry this replica's store applied",
            metrics.raft_applied_index.clone(),
        );
        r.register(
            "raft_is_leader",
            "1 while this replica leads, else 0",
            metrics.raft_is_leader.clone(),
        );
        r.register(
            "raft_leader_changes",
            "Times this replica saw the Raft leader change",
            metrics.leader_changes.clone(),
        );
        r.register(
            "app_renders",
            "Renders of an app at a commit",
            metrics.app_renders.clone(),
        );
        r.register(
            "app_render_errors",
            "Renders of an app at a commit that failed",
            metrics.app_render_errors.clone(),
        );
        r.register(
            "rollout_phase",
            "1 for the phase of each app's newest staged rollout",
            metrics.rollout_phase.clone(),
        );
        r.register(
            "rollout_stage",
            "Index (from 0) of the stage each app's rollout is in; the number of stages once it ended",
            metrics.rollout_stage.clone(),
        );
        r.register(
            "notifications_sent",
            "Alerts a notification target took",
            metrics.notifications_sent.clone(),
        );
        r.register(
            "notification_failures",
            "Alert delivery attempts that failed (each is retried)",
            metrics.notification_failures.clone(),
        );
        r.register(
            "notifications_dropped",
            "Events a notification target never got: over notifications.queueLimit behind, or dropped by eventRetention",
            metrics.notifications_dropped.clone(),
        );
        r.register(
            "notification_queue_length",
            "Events after a notification target's cursor",
            metrics.notification_queue.clone(),
        );
        r.register(
            "notification_target_up",
            "0 while a notification target has failed for notifications.targetDownAfter (1m), else 1",
            metrics.notification_target_up.clone(),
        );
        r.register(
            "notification_delay_seconds",
            "Time from an event to its delivery to a notification target",
            metrics.notification_delay.clone(),
        );
        r.register(
            "analysis_measurements",
            "Stage analysis queries evaluated against Prometheus, by result",
            metrics.analysis_measurements.clone(),
        );
        HubMetrics {
            registry: Arc::new(registry),
            ..metrics
        }
    }

    /// Sets the gauges read at scrape time from `state`'s Raft and store.
    fn refresh(&self, state: &crate::api::ApiState) {
        {
            let raft = state.replica.raft.metrics();
            let m = raft.borrow();
            self.raft_term.set(m.current_term);
            self.raft_last_log_index
                .set(m.last_log_index.unwrap_or_default());
            self.raft_applied_index
                .set(m.last_applied.map(|l| l.index).unwrap_or_default());
            self.raft_is_leader
                .set(i64::from(m.current_leader == Some(m.id)));
        }
        self.count_clusters(&state.store);
        self.count_rollouts(&state.store);
    }

    /// Sets `rollout_phase{app,phase}` and `rollout_stage{app}` from the newest staged rollout of
    /// each app in `store`.
    pub fn count_rollouts(&self, store: &crate::store::HubStore) {
        const PHASES: [&str; 5] = [
            "progressing",
            "paused",
            "rolled-back",
            "completed",
            "superseded",
        ];
        match store.latest_rollouts() {
            Ok(records) => {
                for r in records.iter().filter(|r| !r.is_initial()) {
                    let app = &r.rollout.app;
                    for phase in PHASES {
                        self.rollout_phase
                            .get_or_create(&RolloutLabels {
                                app: app.clone(),
                                phase: phase.into(),
                            })
                            .set(i64::from(r.rollout.phase.as_str() == phase));
                    }
                    let stage = r.rollout.current_stage().unwrap_or(r.rollout.stages.len());
                    self.rollout_stage
                        .get_or_create(&AppLabels { app: app.clone() })
                        .set(stage as i64);
                }
            }
            Err(e) => warn!(error = %e, "reading the rollouts for /metrics failed"),
        }
    }

    /// Sets `clusters{state}` from what `store` holds now.
    pub fn count_clusters(&self, store: &crate::store::HubStore) {
        match store.cluster_snapshots() {
            Ok(snapshots) => {
                let mut counts = [0i64; 4];
                const HEALTH: [&str; 5] =
                    ["healthy", "progressing", "degraded", "failed", "unknown"];
                let mut health = [0i64; 5];
                for snap in &snapshots {
                    health[worst_health(snap.report.as_ref())] += 1;
                    let desired = snap.latest.as_ref().map(|(v, _)| *v).unwrap_or(0);
                    let report = snap.report.as_ref();
                    let failed = report.is_some_and(|r| !crate::api::last_error(r).is_empty());
                    let applied = report.map(|r| r.applied_version).unwrap_or(0);
                    let i = if desired == 0 {
                        3
                    } else if failed {
                        2
                    } else if applied == desired {
                        0
                    } else {
                        1
                    };
                    counts[i] += 1;
                }
                for (i, name) in HEALTH.iter().enumerate() {
                    self.cluster_health
                        .get_or_create(&HealthLabels {
                            health: (*name).to_string(),
                        })
                        .set(health[i]);
                }
                for (i, name) in ["converged", "progressing", "failed", "pending"]
                    .iter()
                    .enumerate()
                {
                    self.clusters
                        .get_or_create(&StateLabels {
                            state: (*name).to_string(),
                        })
                        .set(counts[i]);
                }
            }
            // The other gauges still go out; the cluster counts keep their last values.
            Err(e) => warn!(error = %e, "reading the clusters for /metrics failed"),
        }
    }

    /// Counts an open Watch in `watching_agents` until the guard drops.
    pub fn watching(&self) -> WatchGuard {
        self.watching_agents.inc();
        WatchGuard(self.watching_agents.clone())
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        flotilla_probes::encode(&self.registry)
    }
}

/// Index in `HEALTH` of the worst health of a report's apps; `unknown` (4) without a report or apps.
fn worst_health(report: Option<&flotilla_common::status::StatusReport>) -> usize {
    use flotilla_common::status::AppHealth;
    let Some(report) = report.filter(|r| !r.apps.is_empty()) else {
        return 4;
    };
    report
        .apps
        .iter()
        .map(|a| match a.health {
            AppHealth::Healthy => 0,
            AppHealth::Progressing => 1,
            AppHealth::Degraded => 2,
            AppHealth::Failed => 3,
            AppHealth::Unknown => 4,
        })
        // Failed is worse than degraded, degraded than progressing; unknown counts as progressing.
        .max_by_key(|i| match i {
            0 => 0,
            1 | 4 => 1,
            2 => 2,
            _ => 3,
        })
        .unwrap_or(4)
}

/// One open Watch, counted in `watching_agents` while it lives.
pub struct WatchGuard(Gauge);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What the hub serves on `metrics.listen`: its metrics, gauges read from `state` at each scrape,
/// and readiness (not cut off from the majority).
pub struct HubProbes {
    /// The API's state (Raft, store).
    pub state: crate::api::ApiState,
    /// The metrics.
    pub metrics: HubMetrics,
}

impl flotilla_probes::Probes for HubProbes {
    fn metrics(&self) -> String {
        self.metrics.refresh(&self.state);
        self.metrics.encode()
    }

    fn ready(&self) -> Result<(), String> {
        match self.state.cut_off() {
            None => Ok(()),
            Some(why) => Err(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_named_with_units_and_total_suffixes() {
        let m = HubMetrics::new();
        let main = SourceLabels {
            source: "main".into(),
        };
        m.fetch_duration.get_or_create(&main).observe(0.25);
        m.fetch_errors.get_or_create(&main).inc();
        m.states_issued.inc_by(3);
        let text = m.encode();
        for line in [
            "# TYPE flotilla_hub_source_fetch_duration_seconds histogram",
            "flotilla_hub_source_fetch_duration_seconds_count{source=\"main\"} 1",
            "flotilla_hub_source_fetch_errors_total{source=\"main\"} 1",
            "flotilla_hub_cluster_states_issued_total 3",
            "# EOF",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
    }
}
