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
    /// `cluster-labelled`, `cluster-deleted`, `app-failed`, `app-drift`, `app-drift-corrected`, `app-unhealthy`, `app-recovered`,
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
            let corrected = app
                .message
                .starts_with(flotilla_common::status::DRIFT_CORRECTED_PREFIX);
            out.push(app_event(
                if corrected {
                    "app-drift-corrected"
                } else {
                    "app-drift"
                },
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

/// One cluster as the fleet watch sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// Cluster id (the watch's memory is by id).
    pub id: String,
    /// Cluster name (events name it).
    pub name: String,
    /// Unix seconds of its last contact with any replica.
    pub last_contact: i64,
    /// Unix seconds its newest certificate expires; 0 for unknown.
    pub cert_expires_at: i64,
}

/// What the fleet watch remembers it said, so it says each thing once (kept in the store's meta
/// table, so a new leader does not say it again).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Alerted {
    /// Clusters reported offline and not back since.
    pub offline: std::collections::BTreeSet<String>,
    /// Per cluster, the expiry time of the certificate it was warned about.
    pub certificate: std::collections::BTreeMap<String, i64>,
}

/// The events the fleet's contacts mean at `now`: `cluster-offline` once a cluster has not been in
/// contact for `offline_after`, `cluster-online` when it is back, and `certificate-expiring` once per
/// certificate that expires within `cert_warning` (an agent renews its certificate long before, so
/// one that comes close is an agent that cannot renew). Updates `alerted` to match.
pub fn fleet_events(
    fleet: &[Contact],
    offline_after: i64,
    cert_warning: i64,
    alerted: &mut Alerted,
    now: i64,
) -> Vec<NewEvent> {
    let mut out = Vec::new();
    for c in fleet {
        let silent = now - c.last_contact;
        if silent >= offline_after {
            if alerted.offline.insert(c.id.clone()) {
                out.push(NewEvent::cluster(
                    now,
                    "cluster-offline",
                    Severity::Warning,
                    &c.name,
                    format!(
                        "not in contact for {} (notifications.clusterOfflineAfter is {})",
                        humantime::format_duration(std::time::Duration::from_secs(silent as u64)),
                        humantime::format_duration(std::time::Duration::from_secs(
                            offline_after as u64
                        ))
                    ),
                ));
            }
        } else if alerted.offline.remove(&c.id) {
            out.push(NewEvent::cluster(
                now,
                "cluster-online",
                Severity::Info,
                &c.name,
                "in contact again".into(),
            ));
        }
        let left = c.cert_expires_at - now;
        if c.cert_expires_at > 0
            && left < cert_warning
            && alerted.certificate.get(&c.id) != Some(&c.cert_expires_at)
        {
            alerted.certificate.insert(c.id.clone(), c.cert_expires_at);
            out.push(NewEvent::cluster(
                now,
                "certificate-expiring",
                if left <= 0 {
                    Severity::Error
                } else {
                    Severity::Warning
                },
                &c.name,
                if left <= 0 {
                    "the cluster's certificate has expired: its agent cannot reach the hub until it registers again".to_string()
                } else {
                    format!(
                        "the cluster's certificate expires in {} and its agent has not renewed it",
                        humantime::format_duration(std::time::Duration::from_secs(left as u64))
                    )
                },
            ));
        }
    }
    let known: std::collections::BTreeSet<&str> = fleet.iter().map(|c| c.id.as_str()).collect();
    alerted.offline.retain(|id| known.contains(id.as_str()));
    alerted
        .certificate
        .retain(|id, _| known.contains(id.as_str()));
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
    fn offline_clusters_and_expiring_certificates_are_said_once() {
        let mut fleet = vec![
            Contact {
                id: "c-1".into(),
                name: "edge-1".into(),
                last_contact: 1000,
                cert_expires_at: 1000 + 30 * 86400,
            },
            Contact {
                id: "c-2".into(),
                name: "edge-2".into(),
                last_contact: 1000,
                cert_expires_at: 1000 + 2 * 86400,
            },
        ];
        let mut alerted = Alerted::default();
        let week = 7 * 86400;
        let e = fleet_events(&fleet, 900, week, &mut alerted, 1500);
        assert_eq!(kinds(&e), ["certificate-expiring"]);
        assert_eq!(e[0].cluster, "edge-2");
        assert!(
            e[0].message.contains("expires in 1day 23h"),
            "{}",
            e[0].message
        );
        assert!(fleet_events(&fleet, 900, week, &mut alerted, 1600).is_empty());
        let e = fleet_events(&fleet, 900, week, &mut alerted, 1900);
        assert_eq!(kinds(&e), ["cluster-offline", "cluster-offline"]);
        assert!(
            e[0].message.contains("not in contact for 15m"),
            "{}",
            e[0].message
        );
        assert!(fleet_events(&fleet, 900, week, &mut alerted, 2500).is_empty());
        fleet[0].last_contact = 2600;
        // A renewed certificate is a new one: warned about again only when it too comes close.
        fleet[1].cert_expires_at = 2600 + 30 * 86400;
        let e = fleet_events(&fleet, 900, week, &mut alerted, 2600);
        assert_eq!(kinds(&e), ["cluster-online"]);
        assert_eq!(alerted.offline.len(), 1);
        fleet.pop();
        fleet_events(&fleet, 900, week, &mut alerted, 2700);
        assert!(alerted.offline.is_empty(), "a deleted cluster is forgotten");
        fleet[0].cert_expires_at = 2000;
        let e = fleet_events(&fleet, 900, week, &mut alerted, 2700);
        assert_eq!(e[0].severity, Severity::Error);
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
        let corrected = report(
            AppPhase::Applied,
            &format!(
                "{}v1/ConfigMap web/a",
                flotilla_common::status::DRIFT_CORRECTED_PREFIX
            ),
            AppHealth::Healthy,
        );
        assert_eq!(
            kinds(&report_events("edge-1", Some(&ok), &corrected, 5)),
            ["app-drift-corrected"]
        );
        let mut rejected = ok.clone();
        rejected.rejection = Some("signature does not verify".into());
        assert_eq!(
            kinds(&report_events("edge-1", Some(&ok), &rejected, 5)),
            ["state-rejected"]
        );
        assert!(report_events("edge-1", Some(&rejected), &rejected, 5).is_empty());
    }
}
