//! The hub's event log: every change an operator should hear of (a commit in force, a failed render,
//! a cluster registered, labelled or deleted, an app failing to apply, drifting or turning unhealthy),
//! stored with a sequence number and bounded retention, and streamed to followers
//! (`flotilla events --follow`).
//!
//! Which report changes are events is pure ([`report_events`]); recording is one store transaction and a
//! broadcast to followers.

use flotilla_common::status::{AppHealth, AppPhase, StatusReport};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::store::HubStore;

/// Events kept by default; older ones are dropped as new ones arrive.
pub const DEFAULT_EVENT_RETENTION: u64 = 10_000;

/// How much an event matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Something happened as intended.
    Info,
    /// Something needs a look.
    Warning,
    /// Something failed.
    Error,
}

impl Severity {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// An event before the store numbers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvent {
    /// Unix seconds.
    pub at: i64,
    /// What happened: `commit-in-force`, `render-failed`, `fetch-failed`, `cluster-registered`,
    /// `cluster-labelled`, `cluster-deleted`, `app-failed`, `app-drift`, `app-unhealthy`, `app-recovered`,
    /// `state-rejected`, and the rollout transitions `rollout-started`, `rollout-warning`,
    /// `rollout-stage-started`, `rollout-cluster-updating`, `rollout-cluster-healthy`,
    /// `rollout-cluster-failed`, `rollout-cluster-deferred`, `rollout-stage-healthy`,
    /// `rollout-stage-completed`, `rollout-awaiting-approval`, `rollout-approved`, `rollout-paused`,
    /// `rollout-resumed`, `rollout-halted`, `rollout-rolled-back`, `rollout-completed`,
    /// `rollout-superseded`.
    pub kind: String,
    /// How much it matters.
    pub severity: Severity,
    /// Source name, when it concerns one.
    #[serde(default)]
    pub source: String,
    /// App name, when it concerns one.
    #[serde(default)]
    pub app: String,
    /// Cluster name, when it concerns one.
    #[serde(default)]
    pub cluster: String,
    /// A sentence.
    pub message: String,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Strictly increasing, from 1.
    pub seq: u64,
    /// The event.
    #[serde(flatten)]
    pub event: NewEvent,
}

impl NewEvent {
    /// An event about a cluster.
    pub fn cluster(
        at: i64,
        kind: &str,
        severity: Severity,
        cluster: &str,
        message: String,
    ) -> Self {
        NewEvent {
            at,
            kind: kind.into(),
            severity,
            source: String::new(),
            app: String::new(),
            cluster: cluster.into(),
            message,
        }
    }

    /// An event about a source.
    pub fn source(at: i64, kind: &str, severity: Severity, source: &str, message: String) -> Self {
        NewEvent {
            source: source.into(),
            ..NewEvent::cluster(at, kind, severity, "", message)
        }
    }
}

/// The events a new status report of `cluster` means, compared with the one before it: an app that
/// starts failing to apply, that reports drift it left alone, that turns unhealthy or recovers, and a
/// refused ClusterState. A report that repeats the previous one means nothing new.
pub fn report_events(
    cluster: &str,
    previous: Option<&StatusReport>,
    report: &StatusReport,
    now: i64,
) -> Vec<NewEvent> {
    let mut out = Vec::new();
    let app_event = |kind: &str, severity, app: &str, message: String| NewEvent {
        app: app.into(),
        ..NewEvent::cluster(now, kind, severity, cluster, message)
    };
    for app in &report.apps {
        let before = previous.and_then(|p| p.apps.iter().find(|a| a.app == app.app));
        let was_failed = before.is_some_and(|b| b.phase == AppPhase::Failed);
        if app.phase == AppPhase::Failed
            && (!was_failed || before.is_some_and(|b| b.message != app.message))
        {
            out.push(app_event(
                "app-failed",
                Severity::Error,
                &app.app,
                format!("applying version {} failed: {}", app.version, app.message),
            ));
        }
        let drift_before = before
            .filter(|b| b.phase == AppPhase::Applied)
            .map(|b| b.message.as_str())
            .unwrap_or("");
        if app.phase == AppPhase::Applied && !app.message.is_empty() && app.message != drift_before
        {
            out.push(app_event(
                "app-drift",
                Severity::Warning,
                &app.app,
                app.message.clone(),
            ));
        }
        let bad = |h: AppHealth| matches!(h, AppHealth::Degraded | AppHealth::Failed);
        let health_before = before.map(|b| b.health).unwrap_or_default();
        if bad(app.health) && health_before != app.health {
            out.push(app_event(
                "app-unhealthy",
                Severity::Warning,
                &app.app,
                format!("{}: {}", app.health.as_str(), app.health_reason),
            ));
        } else if app.health == AppHealth::Healthy && bad(health_before) {
            out.push(app_event(
                "app-recovered",
                Severity::Info,
                &app.app,
                "healthy again".into(),
            ));
        }
    }
    if let Some(rejection) = &report.rejection
        && previous.and_then(|p| p.rejection.as_ref()) != Some(rejection)
    {
        out.push(NewEvent::cluster(
            now,
            "state-rejected",
            Severity::Error,
            cluster,
            format!("the agent refused a ClusterState: {rejection}"),
        ));
    }
    out
}

/// Records events; followers hear them from the store's notices ([`crate::store::Notice::Events`]),
/// on whichever replica they follow.
#[derive(Clone)]
pub struct EventLog {
    store: HubStore,
    retention: u64,
}

impl EventLog {
    /// A log on `store` keeping the newest `retention` events.
    pub fn new(store: HubStore, retention: u64) -> Self {
        EventLog {
            store,
            retention: retention.max(1),
        }
    }

    /// Stores the events. Blocking (a redb transaction); a failure is logged here, once, and loses
    /// only the events.
    pub fn record_blocking(&self, events: Vec<NewEvent>) {
        if events.is_empty() {
            return;
        }
        if let Err(e) = self.store.append_events(&events, self.retention) {
            warn!(error = %e, count = events.len(), "recording events failed");
        }
    }

    /// [`EventLog::record_blocking`] on the blocking pool.
    pub async fn record(&self, events: Vec<NewEvent>) {
        if events.is_empty() {
            return;
        }
        let log = self.clone();
        let _ = tokio::task::spawn_blocking(move || log.record_blocking(events)).await;
    }
}

#[cfg(test)]
mod tests {
    use flotilla_common::status::AppStatus;

    use super::*;

    fn report(phase: AppPhase, message: &str, health: AppHealth) -> StatusReport {
        StatusReport {
            seq: 1,
            observed_at: 0,
            applied_version: 3,
            apps: vec![AppStatus {
                app: "web".into(),
                commit: "c".into(),
                version: 3,
                phase,
                message: message.into(),
                health,
                health_reason: if health == AppHealth::Healthy {
                    String::new()
                } else {
                    "Deployment web/web: 0/2 available".into()
                },
            }],
            rejection: None,
        }
    }

    fn kinds(events: &[NewEvent]) -> Vec<&str> {
        events.iter().map(|e| e.kind.as_str()).collect()
    }

    #[test]
    fn transitions_are_events_and_repeats_are_not() {
        let ok = report(AppPhase::Applied, "", AppHealth::Healthy);
        let failed = report(
            AppPhase::Failed,
            "namespace web not found",
            AppHealth::Unknown,
        );
        let degraded = report(AppPhase::Applied, "", AppHealth::Degraded);
        let drift = report(
            AppPhase::Applied,
            "drifted (drift: report): ConfigMap web/a: data.x",
            AppHealth::Healthy,
        );
        assert!(report_events("edge-1", None, &ok, 5).is_empty());
        let e = report_events("edge-1", Some(&ok), &failed, 5);
        assert_eq!(kinds(&e), ["app-failed"]);
        assert_eq!(e[0].severity, Severity::Error);
        assert!(
            e[0].message.contains("namespace web not found"),
            "{:?}",
            e[0]
        );
        assert_eq!(
            (e[0].cluster.as_str(), e[0].app.as_str()),
            ("edge-1", "web")
        );
        assert!(report_events("edge-1", Some(&failed), &failed, 5).is_empty());
        assert_eq!(
            kinds(&report_events("edge-1", Some(&ok), &degraded, 5)),
            ["app-unhealthy"]
        );
        assert!(report_events("edge-1", Some(&degraded), &degraded, 5).is_empty());
        assert_eq!(
            kinds(&report_events("edge-1", Some(&degraded), &ok, 5)),
            ["app-recovered"]
        );
        assert_eq!(
            kinds(&report_events("edge-1", Some(&ok), &drift, 5)),
            ["app-drift"]
        );
        assert!(report_events("edge-1", Some(&drift), &drift, 5).is_empty());
        let mut rejected = ok.clone();
        rejected.rejection = Some("signature does not verify".into());
        assert_eq!(
            kinds(&report_events("edge-1", Some(&ok), &rejected, 5)),
            ["state-rejected"]
        );
        assert!(report_events("edge-1", Some(&rejected), &rejected, 5).is_empty());
    }
}
