//! The agent's Prometheus metrics (issue 16), served with the probes by `flotilla-probes` when
//! `flotilla-agent run --metrics-listen ADDR` is given. Every name is under `flotilla_agent_`;
//! labels are bounded (an apply pass's result, a ClusterState verdict).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::warn;

use crate::store::Store;

/// An apply pass's result: `complete` or `incomplete`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// The result.
    pub result: String,
}

/// A Kubernetes API request's verb: get, watch, create, update, patch, delete or other.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    /// The verb.
    pub verb: String,
}

/// Kubernetes API requests by verb.
pub type ApiRequests = Family<VerbLabels, Counter>;

/// The verb of a request to the API server, from its method and query (a GET with `watch=true`
/// or `watch=1` is a watch; collection and single-object GETs both count as `get`).
pub fn verb(method: &str, query: Option<&str>) -> &'static str {
    let watching = query.is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    match method {
        "GET" if watching => "watch",
        "GET" => "get",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "other",
    }
}

/// The agent's metrics; clones share them.
#[derive(Clone)]
pub struct AgentMetrics {
    registry: Arc<Registry>,
    /// Apply passes, by how long they took.
    pub apply_duration: Histogram,
    /// Syncs of an announced ClusterState: GetClusterState, fetching its objects, verifying and
    /// storing it (accepted or refused), by how long they took.
    pub sync_duration: Histogram,
    /// Apply passes that changed or reported something, by result.
    pub apply_passes: Family<ResultLabels, Counter>,
    /// Objects written by server-side apply (created, changed, or put back after drift).
    pub objects_applied: Counter,
    /// Objects deleted because the desired state no longer holds them.
    pub objects_pruned: Counter,
    /// Objects found drifted and left alone (`drift: report`).
    pub drift_reported: Counter,
    /// Objects found drifted and written back (`drift: correct`).
    pub drift_corrected: Counter,
    /// ClusterStates verified and stored.
    pub states_accepted: Counter,
    /// ClusterStates refused (signature, chain, digests, limits).
    pub states_rejected: Counter,
    /// The version the last apply pass applied.
    pub applied_version: Gauge<u64, AtomicU64>,
    /// Requests to the Kubernetes API server (the `kube` target), by verb.
    pub api_requests: ApiRequests,
    outbox: Gauge,
    cert_expiry: Gauge,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    /// Every metric, registered under `flotilla_agent_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("flotilla_agent");
        let m = AgentMetrics {
            registry: Arc::new(Registry::default()),
            // 10 ms to about 80 s.
            apply_duration: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            sync_duration: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            apply_passes: Family::default(),
            objects_applied: Counter::default(),
            objects_pruned: Counter::default(),
            drift_reported: Counter::default(),
            drift_corrected: Counter::default(),
            states_accepted: Counter::default(),
            states_rejected: Counter::default(),
            applied_version: Gauge::default(),
            api_requests: Family::default(),
            outbox: Gauge::default(),
            cert_expiry: Gauge::default(),
        };
        let r = &mut registry;
        r.register(
            "apply_duration_seconds",
            "Time an apply pass took",
            m.apply_duration.clone(),
        );
        r.register(
            "sync_duration_seconds",
            "Time a sync of an announced ClusterState took (fetch, verify, store)",
            m.sync_duration.clone(),
        );
        r.register(
            "apply_passes",
            "Apply passes that applied or reported something, by result",
            m.apply_passes.clone(),
        );
        r.register(
            "objects_applied",
            "Objects written by server-side apply",
            m.objects_applied.clone(),
        );
        r.register(
            "objects_pruned",
            "Objects deleted because the desired state dropped them",
            m.objects_pruned.clone(),
        );
        r.register(
            "drift_reported",
            "Objects found drifted and left alone (drift: report)",
            m.drift_reported.clone(),
        );
        r.register(
            "drift_corrected",
            "Objects found drifted and written back (drift: correct)",
            m.drift_corrected.clone(),
        );
        r.register(
            "cluster_states_accepted",
            "ClusterStates verified and stored",
            m.states_accepted.clone(),
        );
        r.register(
            "cluster_states_rejected",
            "ClusterStates refused",
            m.states_rejected.clone(),
        );
        r.register(
            "applied_version",
            "The ClusterState version the last apply pass applied",
            m.applied_version.clone(),
        );
        r.register(
            "kube_api_requests",
            "Requests to the Kubernetes API server, by verb",
            m.api_requests.clone(),
        );
        r.register(
            "outbox_reports",
            "Status reports waiting for the hub's acknowledgement",
            m.outbox.clone(),
        );
        r.register(
            "certificate_expiry_timestamp_seconds",
            "When the cluster certificate expires, Unix seconds",
            m.cert_expiry.clone(),
        );
        AgentMetrics {
            registry: Arc::new(registry),
            ..m
        }
    }

    /// Counts a finished apply pass.
    pub(crate) fn record_pass(&self, outcome: &crate::apply::ApplyOutcome, seconds: f64) {
        self.apply_duration.observe(seconds);
        if !outcome.reported {
            return;
        }
        let result = if outcome.complete {
            "complete"
        } else {
            "incomplete"
        };
        self.apply_passes
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
        self.objects_applied.inc_by(outcome.written as u64);
        self.objects_pruned.inc_by(outcome.deleted as u64);
        self.drift_reported.inc_by(outcome.drifted as u64);
        self.drift_corrected.inc_by(outcome.corrected as u64);
        self.applied_version.set(outcome.version);
    }

    /// The OpenMetrics text, the outbox and certificate gauges read from `store` now.
    fn encode(&self, store: &Store) -> String {
        match store.outbox_len() {
            Ok(n) => {
                self.outbox.set(n as i64);
            }
            Err(e) => warn!(error = %e, "reading the outbox for /metrics failed"),
        }
        if let Ok(Some(identity)) = store.identity()
            && let Ok(expiry) = crate::identity::cert_expiry(&identity.cert_pem)
        {
            self.cert_expiry.set(expiry);
        }
        flotilla_probes::encode(&self.registry)
    }
}

/// What the agent serves on `--metrics-listen`.
pub struct AgentProbes {
    /// The agent's store.
    pub store: Store,
    /// The metrics.
    pub metrics: AgentMetrics,
}

impl flotilla_probes::Probes for AgentProbes {
    fn metrics(&self) -> String {
        self.metrics.encode(&self.store)
    }

    /// The agent serves no traffic: once running with its store and identity, it is ready.
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::verb;

    #[test]
    fn requests_are_counted_by_the_api_servers_verbs() {
        assert_eq!(verb("GET", None), "get");
        assert_eq!(verb("GET", Some("labelSelector=a%3Db&watch=true")), "watch");
        assert_eq!(verb("GET", Some("watch=1")), "watch");
        assert_eq!(verb("GET", Some("watchx=true")), "get");
        assert_eq!(verb("PATCH", Some("fieldManager=flotilla")), "patch");
        assert_eq!(verb("POST", None), "create");
        assert_eq!(verb("PUT", None), "update");
        assert_eq!(verb("DELETE", None), "delete");
        assert_eq!(verb("OPTIONS", None), "other");
    }
}
