//! Size and complexity limits (DESIGN.md §9), shared so that hub and agent
//! enforce the same numbers.

use serde::{Deserialize, Serialize};

/// Limits on what the hub renders and the agent accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Limits {
    /// Largest single object, in canonical JSON bytes.
    pub max_object_bytes: u64,
    /// Most objects in one ClusterState.
    pub max_objects: u64,
    /// Most bytes of objects in one ClusterState.
    pub max_state_bytes: u64,
    /// Deepest YAML nesting accepted from a repository.
    pub max_yaml_depth: usize,
    /// Most YAML aliases in one file (bounds "billion laughs" expansion).
    pub max_yaml_aliases: usize,
    /// Largest YAML or template file read from a repository.
    pub max_file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_object_bytes: 1024 * 1024,
            max_objects: 10_000,
            max_state_bytes: 64 * 1024 * 1024,
            max_yaml_depth: 100,
            max_yaml_aliases: 1_000,
            max_file_bytes: 8 * 1024 * 1024,
        }
    }
}
