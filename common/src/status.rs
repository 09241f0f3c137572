//! What an agent reports about each app: observed state, kept apart from desired state.

use serde::{Deserialize, Serialize};

/// Where one app stands on one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppPhase {
    /// Accepted but not yet applied.
    Pending,
    /// Every object applied.
    Applied,
    /// Applying failed; the previous objects stay in place.
    Failed,
}

impl AppPhase {
    /// Lower-case name, as shown by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            AppPhase::Pending => "pending",
            AppPhase::Applied => "applied",
            AppPhase::Failed => "failed",
        }
    }

    /// Parses the lower-case name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(AppPhase::Pending),
            "applied" => Some(AppPhase::Applied),
            "failed" => Some(AppPhase::Failed),
            _ => None,
        }
    }
}

/// One app's observed status on a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppStatus {
    /// App name.
    pub app: String,
    /// Commit of the release applied (or being applied).
    pub commit: String,
    /// ClusterState version the status refers to.
    pub version: u64,
    /// Phase.
    pub phase: AppPhase,
    /// Human-readable detail, empty when applied.
    pub message: String,
}

/// A status report from an agent: the apps' state plus any ClusterState it rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Agent-assigned, strictly increasing; the hub acknowledges by it.
    pub seq: u64,
    /// When the agent observed this, unix seconds.
    pub observed_at: i64,
    /// ClusterState version the agent has applied.
    pub applied_version: u64,
    /// Per-app state.
    pub apps: Vec<AppStatus>,
    /// Why the latest offered ClusterState was refused, if it was.
    pub rejection: Option<String>,
}
