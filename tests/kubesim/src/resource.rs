//! Served resource types (built-in and from CRDs) and the registry that looks them up.

use std::collections::BTreeMap;
use std::sync::Arc;

/// One served resource: a group/version/plural with its kind and scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    /// API group, empty for the core group.
    pub group: String,
    /// Version within the group.
    pub version: String,
    /// Kind of its objects.
    pub kind: String,
    /// Kind of its lists.
    pub list_kind: String,
    /// Plural name used in URLs.
    pub plural: String,
    /// Singular name used by kubectl.
    pub singular: String,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Short names kubectl accepts (`cm`, `deploy`, ...).
    pub short_names: Vec<String>,
    /// Categories (`all`).
    pub categories: Vec<String>,
    /// Verbs the resource supports.
    pub verbs: Vec<String>,
    /// Whether the resource has a `status` subresource.
    pub has_status: bool,
    /// Where the `scale` subresource reads and writes replicas, if the resource has one.
    pub scale: Option<ScalePaths>,
    /// Name of the CRD that defined it, for custom resources.
    pub crd: Option<String>,
}

/// JSON paths (`.spec.replicas` style) behind a `scale` subresource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePaths {
    /// Desired replicas.
    pub spec_replicas: String,
    /// Observed replicas.
    pub status_replicas: String,
    /// Label selector (a string), if any.
    pub label_selector: Option<String>,
}

impl ScalePaths {
    /// The paths workloads use: `.spec.replicas`, `.status.replicas`, `.status.selector`.
    pub fn workload() -> Self {
        Self {
            spec_replicas: ".spec.replicas".into(),
            status_replicas: ".status.replicas".into(),
            label_selector: Some(".status.selector".into()),
        }
    }
}

/// Verbs of an ordinary read-write resource.
pub const ALL_VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl ResourceType {
    /// `group/version`, or just `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The key under which objects are stored: all versions of a group/plural share objects.
    pub fn storage_key(&self) -> (String, String) {
        (self.group.clone(), self.plural.clone())
    }

    /// Whether a verb is allowed on this resource.
    pub fn allows(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == verb)
    }
}

/// Kubernetes version priority: GA before beta before alpha, higher numbers first.
pub fn version_priority(version: &str) -> (u8, u32, u32) {
    let rest = version.strip_prefix('v').unwrap_or(version);
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    let major = digits.parse().unwrap_or(0);
    let tail = &rest[digits.len()..];
    let (stage, minor) = if tail.is_empty() {
        (3, 0)
    } else if let Some(n) = tail.strip_prefix("beta") {
        (2, n.parse().unwrap_or(0))
    } else if let Some(n) = tail.strip_prefix("alpha") {
        (1, n.parse().unwrap_or(0))
    } else {
        (0, 0)
    };
    (stage, major, minor)
}

/// All served resource types, looked up by path or by kind.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    types: Vec<Arc<ResourceType>>,
}

impl Registry {
    /// A registry holding the given types.
    pub fn new(types: Vec<ResourceType>) -> Self {
        Self {
            types: types.into_iter().map(Arc::new).collect(),
        }
    }

    /// Every type, in registration order.
    pub fn all(&self) -> &[Arc<ResourceType>] {
        &self.types
    }

    /// The type served at `group/version/plural`.
    pub fn by_plural(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .cloned()
    }

    /// The type with this apiVersion and kind.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceType>> {
        self.types
            .iter()
            .find(|t| t.api_version() == api_version && t.kind == kind)
            .cloned()
    }

    /// Whether some version of `group/plural` is namespaced (for parsing `namespaces/{ns}/{plural}` paths).
    pub fn is_namespaced_plural(&self, group: &str, version: &str, plural: &str) -> bool {
        self.by_plural(group, version, plural)
            .is_some_and(|t| t.namespaced)
    }

    /// Groups and their versions, highest-priority version first; the core group comes first.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        for t in &self.types {
            let versions = groups.entry(t.group.clone()).or_insert_with(|| {
                order.push(t.group.clone());
                Vec::new()
            });
            if !versions.contains(&t.version) {
                versions.push(t.version.clone());
            }
        }
        order
            .into_iter()
            .map(|g| {
                let mut versions = groups.remove(&g).unwrap_or_default();
                versions.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
                (g, versions)
            })
            .collect()
    }

    /// Types served at `group/version`.
    pub fn in_group_version(&self, group: &str, version: &str) -> Vec<Arc<ResourceType>> {
        self.types
            .iter()
            .filter(|t| t.group == group && t.version == version)
            .cloned()
            .collect()
    }

    /// Adds the types of a CRD, replacing those it defined before.
    pub fn set_crd_types(&mut self, crd: &str, types: Vec<ResourceType>) {
        self.types.retain(|t| t.crd.as_deref() != Some(crd));
        self.types.extend(types.into_iter().map(Arc::new));
    }

    /// Removes the types a CRD defined.
    pub fn remove_crd_types(&mut self, crd: &str) {
        self.types.retain(|t| t.crd.as_deref() != Some(crd));
    }
}

#[cfg(test)]
mod tests {
    use super::version_priority;

    #[test]
    fn versions_sort_like_kubernetes() {
        let mut v = vec!["v1alpha1", "v1beta1", "v2", "v1", "v1beta2", "v2beta1"];
        v.sort_by_key(|v| std::cmp::Reverse(version_priority(v)));
        assert_eq!(v, ["v2", "v1", "v2beta1", "v1beta2", "v1beta1", "v1alpha1"]);
    }
}
