//! Every built-in resource of the Kubernetes release k8s-openapi targets, with its metadata taken
//! from k8s-openapi's `Resource` impls; short names, categories and verbs follow the real API server.

use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope, Resource};

use crate::resource::{ALL_VERBS, ResourceType, ScalePaths};

/// Maps a k8s-openapi scope type to "namespaced?"; subresource scopes have no impl on purpose.
trait TopLevelScope {
    const NAMESPACED: bool;
}

impl TopLevelScope for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}

impl TopLevelScope for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

fn from_openapi<T>() -> ResourceType
where
    T: Resource,
    T::Scope: TopLevelScope,
{
    let kind = T::KIND;
    ResourceType {
        group: T::GROUP.to_string(),
        version: T::VERSION.to_string(),
        kind: kind.to_string(),
        list_kind: format!("{kind}List"),
        plural: T::URL_PATH_SEGMENT.to_string(),
        singular: kind.to_ascii_lowercase(),
        namespaced: <T::Scope as TopLevelScope>::NAMESPACED,
        short_names: short_names(T::GROUP, T::URL_PATH_SEGMENT)
            .iter()
            .map(|s| s.to_string())
            .collect(),
        categories: categories(T::GROUP, T::URL_PATH_SEGMENT)
            .iter()
            .map(|s| s.to_string())
            .collect(),
        verbs: verbs(kind).iter().map(|s| s.to_string()).collect(),
        has_status: !NO_STATUS.contains(&kind),
        scale: matches!(
            kind,
            "Deployment" | "StatefulSet" | "ReplicaSet" | "ReplicationController"
        )
        .then(ScalePaths::workload),
        crd: None,
    }
}

macro_rules! builtin_resources {
    ($($($seg:ident)::+),* $(,)?) => {
        /// Every top-level built-in resource type (no lists, no subresources).
        pub fn builtin_resources() -> Vec<ResourceType> {
            vec![$(from_openapi::<k8s_openapi::$($seg)::+>()),*]
        }
    };
}

// Kept complete by `tests::every_k8s_openapi_resource_is_listed`, which scans k8s-openapi's source.
builtin_resources![
    api::admissionregistration::v1::MutatingWebhookConfiguration,
    api::admissionregistration::v1::ValidatingAdmissionPolicy,
    api::admissionregistration::v1::ValidatingAdmissionPolicyBinding,
    api::admissionregistration::v1::ValidatingWebhookConfiguration,
    api::admissionregistration::v1alpha1::MutatingAdmissionPolicy,
    api::admissionregistration::v1alpha1::MutatingAdmissionPolicyBinding,
    api::admissionregistration::v1beta1::ValidatingAdmissionPolicy,
    api::admissionregistration::v1beta1::ValidatingAdmissionPolicyBinding,
    api::apiserverinternal::v1alpha1::StorageVersion,
    api::apps::v1::ControllerRevision,
    api::apps::v1::DaemonSet,
    api::apps::v1::Deployment,
    api::apps::v1::ReplicaSet,
    api::apps::v1::StatefulSet,
    api::authentication::v1::SelfSubjectReview,
    api::authentication::v1::TokenReview,
    api::authorization::v1::LocalSubjectAccessReview,
    api::authorization::v1::SelfSubjectAccessReview,
    api::authorization::v1::SelfSubjectRulesReview,
    api::authorization::v1::SubjectAccessReview,
    api::autoscaling::v1::HorizontalPodAutoscaler,
    api::autoscaling::v2::HorizontalPodAutoscaler,
    api::batch::v1::CronJob,
    api::batch::v1::Job,
    api::certificates::v1::CertificateSigningRequest,
    api::certificates::v1alpha1::ClusterTrustBundle,
    api::certificates::v1beta1::ClusterTrustBundle,
    api::coordination::v1::Lease,
    api::coordination::v1alpha2::LeaseCandidate,
    api::coordination::v1beta1::LeaseCandidate,
    api::core::v1::Binding,
    api::core::v1::ComponentStatus,
    api::core::v1::ConfigMap,
    api::core::v1::Endpoints,
    api::core::v1::Event,
    api::core::v1::LimitRange,
    api::core::v1::Namespace,
    api::core::v1::Node,
    api::core::v1::PersistentVolume,
    api::core::v1::PersistentVolumeClaim,
    api::core::v1::Pod,
    api::core::v1::PodTemplate,
    api::core::v1::ReplicationController,
    api::core::v1::ResourceQuota,
    api::core::v1::Secret,
    api::core::v1::Service,
    api::core::v1::ServiceAccount,
    api::discovery::v1::EndpointSlice,
    api::events::v1::Event,
    api::flowcontrol::v1::FlowSchema,
    api::flowcontrol::v1::PriorityLevelConfiguration,
    api::networking::v1::IPAddress,
    api::networking::v1::Ingress,
    api::networking::v1::IngressClass,
    api::networking::v1::NetworkPolicy,
    api::networking::v1::ServiceCIDR,
    api::networking::v1beta1::IPAddress,
    api::networking::v1beta1::ServiceCIDR,
    api::node::v1::RuntimeClass,
    api::policy::v1::PodDisruptionBudget,
    api::rbac::v1::ClusterRole,
    api::rbac::v1::ClusterRoleBinding,
    api::rbac::v1::Role,
    api::rbac::v1::RoleBinding,
    api::resource::v1alpha3::DeviceClass,
    api::resource::v1alpha3::DeviceTaintRule,
    api::resource::v1alpha3::ResourceClaim,
    api::resource::v1alpha3::ResourceClaimTemplate,
    api::resource::v1alpha3::ResourceSlice,
    api::resource::v1beta1::DeviceClass,
    api::resource::v1beta1::ResourceClaim,
    api::resource::v1beta1::ResourceClaimTemplate,
    api::resource::v1beta1::ResourceSlice,
    api::resource::v1beta2::DeviceClass,
    api::resource::v1beta2::ResourceClaim,
    api::resource::v1beta2::ResourceClaimTemplate,
    api::resource::v1beta2::ResourceSlice,
    api::scheduling::v1::PriorityClass,
    api::storage::v1::CSIDriver,
    api::storage::v1::CSINode,
    api::storage::v1::CSIStorageCapacity,
    api::storage::v1::StorageClass,
    api::storage::v1::VolumeAttachment,
    api::storage::v1alpha1::VolumeAttributesClass,
    api::storage::v1beta1::VolumeAttributesClass,
    api::storagemigration::v1alpha1::StorageVersionMigration,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    kube_aggregator::pkg::apis::apiregistration::v1::APIService,
];

/// Short names as the real API server publishes them.
fn short_names(group: &str, plural: &str) -> &'static [&'static str] {
    match (group, plural) {
        ("", "configmaps") => &["cm"],
        ("", "endpoints") => &["ep"],
        ("", "events") | ("events.k8s.io", "events") => &["ev"],
        ("", "limitranges") => &["limits"],
        ("", "namespaces") => &["ns"],
        ("", "nodes") => &["no"],
        ("", "persistentvolumeclaims") => &["pvc"],
        ("", "persistentvolumes") => &["pv"],
        ("", "pods") => &["po"],
        ("", "replicationcontrollers") => &["rc"],
        ("", "resourcequotas") => &["quota"],
        ("", "serviceaccounts") => &["sa"],
        ("", "services") => &["svc"],
        ("", "componentstatuses") => &["cs"],
        ("apps", "daemonsets") => &["ds"],
        ("apps", "deployments") => &["deploy"],
        ("apps", "replicasets") => &["rs"],
        ("apps", "statefulsets") => &["sts"],
        ("autoscaling", "horizontalpodautoscalers") => &["hpa"],
        ("batch", "cronjobs") => &["cj"],
        ("certificates.k8s.io", "certificatesigningrequests") => &["csr"],
        ("networking.k8s.io", "ingresses") => &["ing"],
        ("networking.k8s.io", "networkpolicies") => &["netpol"],
        ("networking.k8s.io", "ipaddresses") => &["ip"],
        ("policy", "poddisruptionbudgets") => &["pdb"],
        ("scheduling.k8s.io", "priorityclasses") => &["pc"],
        ("storage.k8s.io", "storageclasses") => &["sc"],
        ("apiextensions.k8s.io", "customresourcedefinitions") => &["crd", "crds"],
        _ => &[],
    }
}

/// The `all` category, as `kubectl get all` uses it.
fn categories(group: &str, plural: &str) -> &'static [&'static str] {
    match (group, plural) {
        ("", "pods" | "replicationcontrollers" | "services")
        | ("apps", "daemonsets" | "deployments" | "replicasets" | "statefulsets")
        | ("autoscaling", "horizontalpodautoscalers")
        | ("batch", "cronjobs" | "jobs") => &["all"],
        ("apiextensions.k8s.io", "customresourcedefinitions") => &["api-extensions"],
        _ => &[],
    }
}

/// Review kinds are create-only; component statuses are read-only.
fn verbs(kind: &str) -> &'static [&'static str] {
    match kind {
        "TokenReview"
        | "SelfSubjectReview"
        | "SubjectAccessReview"
        | "SelfSubjectAccessReview"
        | "LocalSubjectAccessReview"
        | "SelfSubjectRulesReview"
        | "Binding" => &["create"],
        "ComponentStatus" => &["get", "list"],
        _ => &ALL_VERBS,
    }
}

/// Kinds without a `status` subresource.
const NO_STATUS: &[&str] = &[
    "ConfigMap",
    "Secret",
    "ServiceAccount",
    "Endpoints",
    "Event",
    "LimitRange",
    "PodTemplate",
    "Binding",
    "Role",
    "RoleBinding",
    "ClusterRole",
    "ClusterRoleBinding",
    "ControllerRevision",
    "PriorityClass",
    "RuntimeClass",
    "StorageClass",
    "CSIDriver",
    "CSINode",
    "CSIStorageCapacity",
    "Lease",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "EndpointSlice",
    "IngressClass",
    "ComponentStatus",
    "MutatingAdmissionPolicyBinding",
    "ValidatingAdmissionPolicyBinding",
    "DeviceClass",
    "ResourceSlice",
    "ResourceClaimTemplate",
    "IPAddress",
    "VolumeAttributesClass",
    "ClusterTrustBundle",
    "DeviceTaintRule",
    "LeaseCandidate",
    "TokenReview",
    "SelfSubjectReview",
    "SubjectAccessReview",
    "SelfSubjectAccessReview",
    "LocalSubjectAccessReview",
    "SelfSubjectRulesReview",
];

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    use super::builtin_resources;

    /// The k8s-openapi module our version feature selects.
    const VERSION_DIR: &str = "v1_33";

    /// k8s-openapi's source for the version in Cargo.lock, found in cargo's
    /// registry without running cargo (a `cargo metadata` child can wait on
    /// locks held by the `cargo test` that runs this test).
    fn k8s_openapi_dir() -> PathBuf {
        let lock_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.lock");
        let lock = std::fs::read_to_string(&lock_path).expect("workspace Cargo.lock");
        let version = lock
            .split("[[package]]")
            .find(|p| p.contains("name = \"k8s-openapi\""))
            .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
            .map(|v| v.trim_end_matches('"').to_string())
            .expect("k8s-openapi in Cargo.lock");
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cargo")
            });
        let registry = cargo_home.join("registry").join("src");
        std::fs::read_dir(&registry)
            .expect("cargo registry sources")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join(format!("k8s-openapi-{version}")))
            .find(|p| p.is_dir())
            .unwrap_or_else(|| panic!("k8s-openapi-{version} not under {}", registry.display()))
            .join("src")
            .join(VERSION_DIR)
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    fn const_value(block: &str, name: &str) -> String {
        let needle = format!("const {name}: &'static str = \"");
        let start = block
            .find(&needle)
            .unwrap_or_else(|| panic!("{name} in {block}"))
            + needle.len();
        block[start..].split('"').next().unwrap().to_string()
    }

    /// Every top-level resource k8s-openapi implements `Resource` for must be in our list.
    #[test]
    fn every_k8s_openapi_resource_is_listed() {
        let dir = k8s_openapi_dir();
        let mut files = Vec::new();
        rust_files(&dir, &mut files);
        let mut expected = BTreeSet::new();
        for file in files {
            if file.components().any(|c| c.as_os_str() == "apimachinery") {
                continue; // APIGroup, Status, ...: meta types, not served resources
            }
            let text = std::fs::read_to_string(&file).unwrap();
            for (at, _) in text.match_indices("impl crate::Resource for ") {
                let block = &text[at..at + text[at..].find("\n}").unwrap()];
                let kind = const_value(block, "KIND");
                if kind.ends_with("List") || block.contains("SubResourceScope") {
                    continue;
                }
                expected.insert((
                    const_value(block, "API_VERSION"),
                    kind,
                    const_value(block, "URL_PATH_SEGMENT"),
                ));
            }
        }
        assert!(
            expected.len() > 80,
            "scan found only {} resources in {}",
            expected.len(),
            dir.display()
        );
        let listed: BTreeSet<_> = builtin_resources()
            .into_iter()
            .map(|t| (t.api_version(), t.kind.clone(), t.plural.clone()))
            .collect();
        let missing: Vec<_> = expected.difference(&listed).collect();
        assert!(
            missing.is_empty(),
            "resources missing from builtin_resources!: {missing:?}"
        );
        let extra: Vec<_> = listed.difference(&expected).collect();
        assert!(
            extra.is_empty(),
            "resources listed but not in k8s-openapi: {extra:?}"
        );
    }

    #[test]
    fn core_resources_have_kubernetes_metadata() {
        let all = builtin_resources();
        let cm = all.iter().find(|t| t.kind == "ConfigMap").unwrap();
        assert_eq!(
            (cm.group.as_str(), cm.version.as_str(), cm.plural.as_str()),
            ("", "v1", "configmaps")
        );
        assert!(cm.namespaced && !cm.has_status);
        assert_eq!(cm.short_names, ["cm"]);
        let ns = all.iter().find(|t| t.kind == "Namespace").unwrap();
        assert!(!ns.namespaced && ns.has_status);
        let deploy = all.iter().find(|t| t.kind == "Deployment").unwrap();
        assert_eq!(deploy.api_version(), "apps/v1");
        assert_eq!(deploy.categories, ["all"]);
    }
}
