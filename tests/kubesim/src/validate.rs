//! The object-name validation the real API server applies, per kind, with its messages.
//!
//! kube-apiserver picks a name rule per resource: most names are DNS-1123 subdomains, namespaces
//! and StatefulSets DNS-1123 labels, Services DNS-1035 labels, RBAC objects only need to be safe
//! as a URL path segment (so `system:aggregated-metrics-reader` is valid), and CRDs and
//! APIServices must be named after their spec. The messages below are the API server's own
//! wording, because clients and people match on them.

use serde_json::Value;

use crate::error::ApiError;
use crate::resource::ResourceType;

const LABEL_MAX: usize = 63;
const SUBDOMAIN_MAX: usize = 253;
/// A CronJob's Jobs are named `<cronjob>-<11 characters>`, and a Job name is a 63-character label.
const CRONJOB_MAX: usize = LABEL_MAX - 11;

const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// Which rule the API server applies to a kind's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// DNS-1123 subdomain: lowercase alphanumerics, `-` and `.`, at most 253 characters.
    Subdomain,
    /// DNS-1123 label: lowercase alphanumerics and `-`, at most 63 characters.
    Label,
    /// DNS-1035 label: a DNS-1123 label that starts with a letter.
    Dns1035Label,
    /// Anything usable as a URL path segment: not `.` or `..`, no `/` or `%`.
    PathSegment,
    /// A path segment equal to `spec.version + "." + spec.group`.
    ApiService,
    /// A subdomain equal to `spec.names.plural + "." + spec.group`.
    CustomResourceDefinition,
    /// A subdomain of at most 52 characters.
    CronJob,
    /// An IP address in canonical form.
    IpAddress,
}

impl NameRule {
    /// The rule kube-apiserver applies to names of `kind` in `group`.
    pub fn of(group: &str, kind: &str) -> Self {
        match (group, kind) {
            ("", "Namespace") | ("apps", "StatefulSet") => Self::Label,
            ("", "Service") => Self::Dns1035Label,
            (
                "rbac.authorization.k8s.io",
                "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding",
            ) => Self::PathSegment,
            ("apiregistration.k8s.io", "APIService") => Self::ApiService,
            ("apiextensions.k8s.io", "CustomResourceDefinition") => Self::CustomResourceDefinition,
            ("batch", "CronJob") => Self::CronJob,
            ("networking.k8s.io", "IPAddress") => Self::IpAddress,
            _ => Self::Subdomain,
        }
    }
}

fn alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`
fn label_shaped(s: &str) -> bool {
    s.starts_with(alnum) && s.ends_with(alnum) && s.chars().all(|c| alnum(c) || c == '-')
}

fn label(name: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if name.len() > LABEL_MAX {
        problems.push(max_len(LABEL_MAX));
    }
    if !label_shaped(name) {
        problems.push(LABEL_MSG.into());
    }
    problems
}

fn dns1035_label(name: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if name.len() > LABEL_MAX {
        problems.push(max_len(LABEL_MAX));
    }
    if !(label_shaped(name) && name.starts_with(|c: char| c.is_ascii_lowercase())) {
        problems.push(DNS1035_MSG.into());
    }
    problems
}

fn subdomain(name: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if name.len() > SUBDOMAIN_MAX {
        problems.push(max_len(SUBDOMAIN_MAX));
    }
    if !name.split('.').all(label_shaped) {
        problems.push(SUBDOMAIN_MSG.into());
    }
    problems
}

fn path_segment(name: &str) -> Vec<String> {
    if name == "." || name == ".." {
        return vec![format!("may not be '{name}'")];
    }
    ["/", "%"]
        .iter()
        .filter(|bad| name.contains(*bad))
        .map(|bad| format!("may not contain '{bad}'"))
        .collect()
}

fn max_len(max: usize) -> String {
    format!("must be no more than {max} characters")
}

fn spec_str<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// What is wrong with `name` for an object of `rt` (empty when it is valid), in the API server's
/// words. `obj` is the object being created, for the kinds whose name follows from their spec.
pub fn name_problems(rt: &ResourceType, name: &str, obj: &Value) -> Vec<String> {
    match NameRule::of(&rt.group, &rt.kind) {
        NameRule::Subdomain => subdomain(name),
        NameRule::Label => label(name),
        NameRule::Dns1035Label => dns1035_label(name),
        NameRule::PathSegment => path_segment(name),
        NameRule::ApiService => {
            let problems = path_segment(name);
            if !problems.is_empty() {
                return problems;
            }
            let required = format!(
                "{}.{}",
                spec_str(obj, "/spec/version"),
                spec_str(obj, "/spec/group")
            );
            if name == required {
                vec![]
            } else {
                vec![format!(
                    "must be `spec.version+\".\"+spec.group`: \"{required}\""
                )]
            }
        }
        NameRule::CustomResourceDefinition => {
            let mut problems = subdomain(name);
            let required = format!(
                "{}.{}",
                spec_str(obj, "/spec/names/plural"),
                spec_str(obj, "/spec/group")
            );
            if name != required {
                problems.push("must be spec.names.plural+\".\"+spec.group".into());
            }
            problems
        }
        NameRule::CronJob => {
            let mut problems = subdomain(name);
            if name.len() > CRONJOB_MAX {
                problems.push(max_len(CRONJOB_MAX));
            }
            problems
        }
        NameRule::IpAddress => match name.parse::<std::net::IpAddr>() {
            Ok(ip) if ip.to_string() == name => vec![],
            _ => vec!["must be a canonical format IP address".into()],
        },
    }
}

/// Checks a name as the API server does, answering its `422 Invalid` when it is not valid.
pub fn name(rt: &ResourceType, name: &str, obj: &Value) -> Result<(), ApiError> {
    let problems = name_problems(rt, name, obj);
    if problems.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid_value(
        &rt.group,
        &rt.kind,
        name,
        "metadata.name",
        name,
        &problems,
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rt(group: &str, kind: &str) -> ResourceType {
        crate::builtin::builtin_resources()
            .into_iter()
            .find(|t| t.group == group && t.kind == kind)
            .unwrap_or_else(|| panic!("{kind}.{group} is a built-in resource"))
    }

    /// (group, kind, name, valid?) with an empty object.
    const CASES: &[(&str, &str, &str, bool)] = &[
        // Subdomains: ConfigMaps, Deployments, Secrets, ServiceAccounts, webhooks, ...
        ("", "ConfigMap", "kube-root-ca.crt", true),
        ("", "ConfigMap", "a", true),
        ("", "ConfigMap", "0", true),
        ("", "ConfigMap", "Upper", false),
        ("", "ConfigMap", "-lead", false),
        ("", "ConfigMap", "trail-", false),
        ("", "ConfigMap", "a..b", false),
        ("", "ConfigMap", "a.-b", false),
        ("", "ConfigMap", ".a", false),
        ("", "ConfigMap", "a_b", false),
        ("", "ConfigMap", "system:x", false),
        ("apps", "Deployment", "metrics.server", true),
        ("", "Secret", "sh.helm.release.v1.x.v1", true),
        ("", "ServiceAccount", "cert-manager-cainjector", true),
        (
            "admissionregistration.k8s.io",
            "ValidatingWebhookConfiguration",
            "cert-manager-webhook",
            true,
        ),
        ("policy", "PodDisruptionBudget", "api.v2", true),
        // Labels: Namespaces and StatefulSets.
        ("", "Namespace", "kube-system", true),
        ("", "Namespace", "0abc", true),
        ("", "Namespace", "a.b", false),
        ("", "Namespace", "Abc", false),
        ("apps", "StatefulSet", "alertmanager-main", true),
        ("apps", "StatefulSet", "alertmanager.main", false),
        // DNS-1035 labels: Services start with a letter.
        ("", "Service", "metrics-server", true),
        ("", "Service", "0abc", false),
        ("", "Service", "a.b", false),
        // Path segments: RBAC.
        (
            "rbac.authorization.k8s.io",
            "ClusterRole",
            "system:aggregated-metrics-reader",
            true,
        ),
        (
            "rbac.authorization.k8s.io",
            "ClusterRoleBinding",
            "system:auth-delegator:x",
            true,
        ),
        (
            "rbac.authorization.k8s.io",
            "Role",
            "Mixed_Case.ok@all",
            true,
        ),
        ("rbac.authorization.k8s.io", "RoleBinding", "..a", true),
        ("rbac.authorization.k8s.io", "ClusterRole", ".", false),
        ("rbac.authorization.k8s.io", "ClusterRole", "..", false),
        ("rbac.authorization.k8s.io", "Role", "a/b", false),
        ("rbac.authorization.k8s.io", "RoleBinding", "100%", false),
        // CronJobs: at most 52 characters.
        ("batch", "CronJob", "nightly-report", true),
        ("batch", "Job", "nightly-report-29012345", true),
        // IPAddresses: canonical IPs.
        ("networking.k8s.io", "IPAddress", "10.96.0.1", true),
        ("networking.k8s.io", "IPAddress", "2001:db8::1", true),
        ("networking.k8s.io", "IPAddress", "2001:DB8::1", false),
        ("networking.k8s.io", "IPAddress", "010.96.0.1", false),
    ];

    #[test]
    fn names_are_checked_with_the_rule_of_their_kind() {
        for &(group, kind, name, valid) in CASES {
            let problems = name_problems(&rt(group, kind), name, &json!({}));
            assert_eq!(
                problems.is_empty(),
                valid,
                "{kind}.{group} named {name:?}: {problems:?}"
            );
        }
    }

    #[test]
    fn length_limits_follow_the_rule() {
        let cases = [
            ("", "ConfigMap", 253, true),
            ("", "ConfigMap", 254, false),
            ("", "Namespace", 63, true),
            ("", "Namespace", 64, false),
            ("", "Service", 64, false),
            ("batch", "CronJob", 52, true),
            ("batch", "CronJob", 53, false),
            ("rbac.authorization.k8s.io", "ClusterRole", 300, true),
        ];
        for (group, kind, len, valid) in cases {
            let name = "a".repeat(len);
            let problems = name_problems(&rt(group, kind), &name, &json!({}));
            assert_eq!(
                problems.is_empty(),
                valid,
                "{kind} of {len} characters: {problems:?}"
            );
        }
        let long = name_problems(&rt("", "ConfigMap"), &"-".repeat(254), &json!({}));
        assert_eq!(long, vec![max_len(253), SUBDOMAIN_MSG.to_string()]);
    }

    #[test]
    fn crd_and_apiservice_names_follow_their_spec() {
        let crd = rt("apiextensions.k8s.io", "CustomResourceDefinition");
        let spec =
            json!({"spec": {"group": "monitoring.example.com", "names": {"plural": "probes"}}});
        assert!(name_problems(&crd, "probes.monitoring.example.com", &spec).is_empty());
        assert_eq!(
            name_problems(&crd, "probe.monitoring.example.com", &spec),
            vec!["must be spec.names.plural+\".\"+spec.group".to_string()]
        );
        let svc = rt("apiregistration.k8s.io", "APIService");
        let spec = json!({"spec": {"group": "metrics.k8s.io", "version": "v1beta1"}});
        assert!(name_problems(&svc, "v1beta1.metrics.k8s.io", &spec).is_empty());
        assert_eq!(
            name_problems(&svc, "metrics.k8s.io", &spec),
            vec!["must be `spec.version+\".\"+spec.group`: \"v1beta1.metrics.k8s.io\"".to_string()]
        );
        // The core group's APIService is `v1.`.
        let core = json!({"spec": {"group": "", "version": "v1"}});
        assert!(name_problems(&svc, "v1.", &core).is_empty());
        assert_eq!(
            name_problems(&svc, "a/b", &spec),
            vec!["may not contain '/'".to_string()]
        );
    }

    #[test]
    fn the_422_is_worded_as_the_api_server_words_it() {
        let err = name(&rt("", "Service"), "9lives", &json!({})).unwrap_err();
        assert_eq!(err.code, 422);
        assert_eq!(err.reason, "Invalid");
        assert_eq!(
            err.message,
            format!(
                "Service \"9lives\" is invalid: metadata.name: Invalid value: \"9lives\": {DNS1035_MSG}"
            )
        );
        let details = err.details.unwrap();
        assert_eq!(details["kind"], "Service");
        assert_eq!(details["group"], "");
        assert_eq!(details["causes"][0]["field"], "metadata.name");
        assert_eq!(details["causes"][0]["reason"], "FieldValueInvalid");
        let err = name(
            &rt("rbac.authorization.k8s.io", "ClusterRole"),
            "a/b%",
            &json!({}),
        )
        .unwrap_err();
        assert_eq!(
            err.message,
            "ClusterRole.rbac.authorization.k8s.io \"a/b%\" is invalid: [metadata.name: Invalid value: \"a/b%\": may not contain '/', metadata.name: Invalid value: \"a/b%\": may not contain '%']"
        );
        assert_eq!(err.details.unwrap()["causes"].as_array().unwrap().len(), 2);
    }
}
