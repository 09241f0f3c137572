//! What an agent reports about each app: observed state, kept apart from desired state.

use serde::{Deserialize, Serialize};

/// How an applied app's message begins when the agent wrote drifted objects back (`drift: correct`);
/// any other message of an applied app is drift the agent reports and leaves alone (`drift: report`).
pub const DRIFT_CORRECTED_PREFIX: &str = "corrected drift (drift: correct) of ";

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

/// How one app's live objects are doing, in the spirit of kstatus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppHealth {
    /// Not observed: the record predates health, or the target cannot tell.
    #[default]
    Unknown,
    /// Objects are being rolled out or have not reached their desired state yet.
    Progressing,
    /// Every object reached its desired state.
    Healthy,
    /// An object that had reached its desired state lost it (e.g. replicas unavailable).
    Degraded,
    /// An object failed for good (e.g. a Deployment past its progress deadline, a failed Job),
    /// or the app could not be applied.
    Failed,
}

impl AppHealth {
    /// Lower-case name, as shown by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            AppHealth::Unknown => "unknown",
            AppHealth::Progressing => "progressing",
            AppHealth::Healthy => "healthy",
            AppHealth::Degraded => "degraded",
            AppHealth::Failed => "failed",
        }
    }

    /// Parses the lower-case name; the empty string is `Unknown`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "unknown" => Some(AppHealth::Unknown),
            "progressing" => Some(AppHealth::Progressing),
            "healthy" => Some(AppHealth::Healthy),
            "degraded" => Some(AppHealth::Degraded),
            "failed" => Some(AppHealth::Failed),
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
    /// Health of the app's live objects.
    #[serde(default)]
    pub health: AppHealth,
    /// Why the app is not healthy (the first object that is not, and how many more); empty when healthy.
    #[serde(default)]
    pub health_reason: String,
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
