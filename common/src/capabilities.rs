//! What a cluster's API server offers, as its agent reports it: the Kubernetes version and the served
//! API group-versions. Helm charts (`.Capabilities`) and templates (`cluster.kubeVersion`,
//! `cluster.apiVersions`) may branch on them.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// A cluster's capabilities; empty when its agent has not reported any (a directory target, an old agent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// `gitVersion` of the API server, e.g. `v1.32.4`; `None` when unknown.
    pub kube_version: Option<String>,
    /// Served API group-versions (`v1`, `apps/v1`) and, where known, `group/version/Kind` entries.
    pub api_versions: BTreeSet<String>,
}

impl Capabilities {
    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        self.kube_version.is_none() && self.api_versions.is_empty()
    }
}
