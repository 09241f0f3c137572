//! Kubernetes objects as Flotilla carries them: identity plus canonical JSON.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::canonical::to_canonical_json;
use crate::digest::Digest;
use crate::names::NameRule;

/// What identifies an object in a cluster: group/version/kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectId {
    /// API group; empty for the core group.
    pub group: String,
    /// API version within the group.
    pub version: String,
    /// Kind.
    pub kind: String,
    /// Namespace; `None` for cluster-scoped objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// metadata.name.
    pub name: String,
}

impl ObjectId {
    /// `apiVersion` as written in manifests (`v1`, `apps/v1`).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// A filesystem- and URL-safe key, unique per object.
    pub fn file_key(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        format!(
            "{}_{}_{}_{}_{}",
            group,
            self.version,
            self.kind,
            self.namespace.as_deref().unwrap_or("_cluster"),
            self.name
        )
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(
                f,
                "{}/{} {}/{}",
                self.api_version(),
                self.kind,
                ns,
                self.name
            ),
            None => write!(f, "{}/{} {}", self.api_version(), self.kind, self.name),
        }
    }
}

/// An object that cannot be sent to a cluster.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ObjectError {
    /// Not a JSON/YAML mapping.
    #[error("object is not a mapping")]
    NotAMapping,
    /// A required field is absent or not a string.
    #[error("object has no {0}")]
    Missing(&'static str),
    /// `apiVersion` with more than one slash, or empty parts.
    #[error("invalid apiVersion {0:?}")]
    ApiVersion(String),
    /// A name or namespace the Kubernetes API server would reject.
    #[error("{kind} {field} {value:?} is not {rule}")]
    Name {
        /// The object's kind.
        kind: String,
        /// Which field.
        field: &'static str,
        /// The value.
        value: String,
        /// The rule it breaks.
        rule: NameRule,
    },
}

fn str_field<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// Kinds of the built-in API that are cluster-scoped. Everything else is
/// namespaced unless a CustomResourceDefinition in the same app says otherwise.
const CLUSTER_SCOPED: &[(&str, &str)] = &[
    ("", "Namespace"),
    ("", "Node"),
    ("", "PersistentVolume"),
    ("", "ComponentStatus"),
    ("rbac.authorization.k8s.io", "ClusterRole"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
    ("apiextensions.k8s.io", "CustomResourceDefinition"),
    ("apiregistration.k8s.io", "APIService"),
    (
        "admissionregistration.k8s.io",
        "MutatingWebhookConfiguration",
    ),
    (
        "admissionregistration.k8s.io",
        "ValidatingWebhookConfiguration",
    ),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy"),
    (
        "admissionregistration.k8s.io",
        "ValidatingAdmissionPolicyBinding",
    ),
    ("storage.k8s.io", "StorageClass"),
    ("storage.k8s.io", "CSIDriver"),
    ("storage.k8s.io", "CSINode"),
    ("storage.k8s.io", "VolumeAttachment"),
    ("scheduling.k8s.io", "PriorityClass"),
    ("node.k8s.io", "RuntimeClass"),
    ("networking.k8s.io", "IngressClass"),
    ("certificates.k8s.io", "CertificateSigningRequest"),
    ("flowcontrol.apiserver.k8s.io", "FlowSchema"),
    ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration"),
];

/// True when a built-in kind is cluster-scoped.
pub fn is_builtin_cluster_scoped(group: &str, kind: &str) -> bool {
    CLUSTER_SCOPED
        .iter()
        .any(|(g, k)| *g == group && *k == kind)
}

/// One Kubernetes object ready to ship: its identity and its JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct KubeObject {
    /// Identity.
    pub id: ObjectId,
    /// The full object, `metadata.namespace` filled in for namespaced objects.
    pub value: Value,
}

impl KubeObject {
    /// Reads an object's identity. `default_namespace` fills in `metadata.namespace`
    /// of namespaced objects that have none; `cluster_scoped` says which kinds have no namespace.
    pub fn from_value(
        mut value: Value,
        default_namespace: Option<&str>,
        cluster_scoped: impl Fn(&str, &str) -> bool,
    ) -> Result<Self, ObjectError> {
        if !value.is_object() {
            return Err(ObjectError::NotAMapping);
        }
        let api_version =
            str_field(&value, "/apiVersion").ok_or(ObjectError::Missing("apiVersion"))?;
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), api_version.to_string()),
        };
        if version.is_empty()
            || version.contains('/')
            || (api_version.contains('/') && group.is_empty())
        {
            return Err(ObjectError::ApiVersion(api_version.to_string()));
        }
        let kind = str_field(&value, "/kind")
            .ok_or(ObjectError::Missing("kind"))?
            .to_string();
        if kind.is_empty() {
            return Err(ObjectError::Missing("kind"));
        }
        let name = str_field(&value, "/metadata/name")
            .ok_or(ObjectError::Missing("metadata.name"))?
            .to_string();
        let rule = NameRule::for_kind(&group, &kind);
        if !rule.allows(&name) {
            return Err(ObjectError::Name {
                kind,
                field: "metadata.name",
                value: name,
                rule,
            });
        }
        let namespace = if cluster_scoped(&group, &kind) {
            if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("namespace");
            }
            None
        } else {
            let ns = match str_field(&value, "/metadata/namespace") {
                Some(ns) if !ns.is_empty() => ns.to_string(),
                _ => default_namespace.unwrap_or("default").to_string(),
            };
            if !NameRule::Dns1123Label.allows(&ns) {
                return Err(ObjectError::Name {
                    kind,
                    field: "metadata.namespace",
                    value: ns,
                    rule: NameRule::Dns1123Label,
                });
            }
            value["metadata"]["namespace"] = Value::String(ns.clone());
            Some(ns)
        };
        Ok(KubeObject {
            id: ObjectId {
                group,
                version,
                kind,
                namespace,
                name,
            },
            value,
        })
    }

    /// Canonical JSON bytes: what is hashed, stored and shipped.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        to_canonical_json(&self.value)
    }

    /// Digest of the canonical bytes.
    pub fn digest(&self) -> Digest {
        Digest::of(&self.canonical_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Result<KubeObject, ObjectError> {
        KubeObject::from_value(v, Some("apps"), is_builtin_cluster_scoped)
    }

    #[test]
    fn identity_and_default_namespace() {
        let o = obj(
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}}),
        )
        .unwrap();
        assert_eq!(o.id.group, "apps");
        assert_eq!(o.id.namespace.as_deref(), Some("apps"));
        assert_eq!(o.value["metadata"]["namespace"], "apps");
        assert_eq!(o.id.to_string(), "apps/v1/Deployment apps/web");

        let ns = obj(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "namespace": "y"}})).unwrap();
        assert_eq!(ns.id.namespace, None);
        assert!(ns.value["metadata"].get("namespace").is_none());
        assert_eq!(ns.id.file_key(), "core_v1_Namespace__cluster_x");
    }

    #[test]
    fn rejects_bad_objects() {
        assert_eq!(obj(json!([1])).unwrap_err(), ObjectError::NotAMapping);
        assert_eq!(
            obj(json!({"kind": "A", "metadata": {"name": "a"}})).unwrap_err(),
            ObjectError::Missing("apiVersion")
        );
        assert!(matches!(
            obj(json!({"apiVersion": "a/b/c", "kind": "A", "metadata": {"name": "a"}})),
            Err(ObjectError::ApiVersion(_))
        ));
        assert!(matches!(
            obj(json!({"apiVersion": "v1", "kind": "A", "metadata": {"name": "Bad_Name"}})),
            Err(ObjectError::Name { .. })
        ));
        assert!(matches!(
            obj(json!({"apiVersion": "v1", "kind": "A", "metadata": {}})),
            Err(ObjectError::Missing("metadata.name"))
        ));
    }

    #[test]
    fn names_follow_the_api_server_rules_per_kind() {
        let rbac = "rbac.authorization.k8s.io/v1";
        // (apiVersion, kind, name, namespace, accepted)
        let cases = [
            (
                rbac,
                "ClusterRole",
                "system:aggregated-metrics-reader",
                None,
                true,
            ),
            (rbac, "ClusterRoleBinding", "system:kube-dns", None, true),
            (rbac, "Role", "Mixed_Case:ok", Some("apps"), true),
            (rbac, "ClusterRole", "..", None, false),
            (rbac, "RoleBinding", "a/b", Some("apps"), false),
            ("v1", "ConfigMap", "system:config", None, false),
            ("v1", "ConfigMap", "app.config-1", None, true),
            ("v1", "Namespace", "team.a", None, false),
            ("v1", "Namespace", "team-a", None, true),
            ("v1", "Service", "1web", None, false),
            ("v1", "Service", "web1", None, true),
            ("v1", "Service", "web.internal", None, false),
            ("apps/v1", "Deployment", "web.v2", None, true),
            ("apps/v1", "Deployment", "web-", None, false),
            ("example.com/v1", "Widget", "w:1", None, false),
            ("v1", "ConfigMap", "ok", Some("Bad.NS"), false),
            ("v1", "ConfigMap", "ok", Some("a.b"), false),
        ];
        for (api_version, kind, name, namespace, accepted) in cases {
            let mut value =
                json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name}});
            if let Some(ns) = namespace {
                value["metadata"]["namespace"] = json!(ns);
            }
            let got = obj(value);
            assert_eq!(
                got.is_ok(),
                accepted,
                "{kind} {name:?} in {namespace:?}: {got:?}"
            );
        }
        let err = obj(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "1web"}}))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "Service metadata.name \"1web\" is not a DNS-1035 label (lower-case letters, digits and '-', starting with a letter and ending with a letter or digit, at most 63 characters)"
        );
        let err = obj(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "a.b"}}))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("ConfigMap metadata.namespace \"a.b\" is not a DNS-1123 label"),
            "{err}"
        );
    }
}
