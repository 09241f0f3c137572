//! What a cluster's API server offers, as its agent reports it: the Kubernetes version and the served
//! API group-versions. Helm charts (`.Capabilities`) and templates (`cluster.kubeVersion`,
//! `cluster.apiVersions`) may branch on them.
//!
//! The agent reads them from the cluster, which is not an operator, so the hub takes them only
//! through [`Capabilities::new`] or [`Capabilities::validate`]: bounded in count and length, and
//! in the shapes discovery produces (`v1`, `apps/v1`, `apps/v1/Deployment`, `v1/Pod`).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::names::{DNS_LABEL_MAX, DNS1123_SUBDOMAIN_MAX, NameRule, is_dns1123_subdomain};

/// Most entries in `apiVersions`. A cluster with every built-in API and a few hundred CRDs
/// reports around a thousand (group-versions plus one `group/version/Kind` per resource).
pub const MAX_API_VERSIONS: usize = 4_096;

/// Longest `apiVersions` entry: a DNS-1123 subdomain group, a DNS-1035 label version and a kind
/// of at most 63 characters, with their two slashes.
pub const MAX_API_VERSION_LEN: usize =
    DNS1123_SUBDOMAIN_MAX + 1 + DNS_LABEL_MAX + 1 + DNS_LABEL_MAX;

/// Longest `kubeVersion`; vendors' builds (`v1.29.4-eks-036c24b`, `v1.32.4-gke.100`) stay far below.
pub const MAX_KUBE_VERSION_LEN: usize = 64;

/// A cluster's capabilities; empty when its agent has not reported any (a directory target, an old agent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Capabilities {
    /// `gitVersion` of the API server, e.g. `v1.32.4`; `None` when unknown.
    pub kube_version: Option<String>,
    /// Served API group-versions (`v1`, `apps/v1`) and, where known, `group/version/Kind` entries
    /// (`apps/v1/Deployment`; core kinds as `v1/Pod`), as Helm's `.Capabilities.APIVersions` holds them.
    pub api_versions: BTreeSet<String>,
}

/// Capabilities outside the limits or shapes above. Messages are sentences naming the field and the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilitiesError {
    /// More than [`MAX_API_VERSIONS`] entries.
    #[error("apiVersions has {count} entries, over the limit of {MAX_API_VERSIONS}")]
    TooManyApiVersions {
        /// Entries given.
        count: usize,
    },
    /// An entry longer than [`MAX_API_VERSION_LEN`].
    #[error(
        "apiVersions entry {start:?}… is {len} characters long, over the limit of {MAX_API_VERSION_LEN}"
    )]
    ApiVersionTooLong {
        /// The entry's first characters.
        start: String,
        /// Its length in bytes.
        len: usize,
    },
    /// An entry that is not `version`, `group/version`, `version/Kind` or `group/version/Kind`.
    #[error(
        "apiVersions entry {entry:?} is not a version, group/version or group/version/Kind: {problem}"
    )]
    BadApiVersion {
        /// The entry.
        entry: String,
        /// Which part is wrong and what it must be.
        problem: String,
    },
    /// A `kubeVersion` longer than [`MAX_KUBE_VERSION_LEN`].
    #[error("kubeVersion is {len} characters long, over the limit of {MAX_KUBE_VERSION_LEN}")]
    KubeVersionTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A `kubeVersion` that is not `vMAJOR.MINOR.PATCH` with an optional build suffix.
    #[error(
        "kubeVersion {0:?} is not a Kubernetes version such as v1.32.4, v1.32.4-gke.100 or v1.30.2+k3s1"
    )]
    BadKubeVersion(String),
}

impl Capabilities {
    /// Checked capabilities from what an agent sent: at most [`MAX_API_VERSIONS`] entries
    /// (counted before duplicates are dropped), each of a valid shape, and a valid kube version.
    pub fn new(
        kube_version: Option<String>,
        api_versions: Vec<String>,
    ) -> Result<Self, CapabilitiesError> {
        if api_versions.len() > MAX_API_VERSIONS {
            return Err(CapabilitiesError::TooManyApiVersions {
                count: api_versions.len(),
            });
        }
        if let Some(v) = &kube_version {
            validate_kube_version(v)?;
        }
        for entry in &api_versions {
            validate_api_version(entry)?;
        }
        Ok(Capabilities {
            kube_version,
            api_versions: api_versions.into_iter().collect(),
        })
    }

    /// Checks capabilities built in process (discovery, flags) against the same rules as [`Capabilities::new`].
    pub fn validate(&self) -> Result<(), CapabilitiesError> {
        if self.api_versions.len() > MAX_API_VERSIONS {
            return Err(CapabilitiesError::TooManyApiVersions {
                count: self.api_versions.len(),
            });
        }
        if let Some(v) = &self.kube_version {
            validate_kube_version(v)?;
        }
        self.api_versions
            .iter()
            .try_for_each(|e| validate_api_version(e))
    }

    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        self.kube_version.is_none() && self.api_versions.is_empty()
    }
}

/// `vMAJOR.MINOR.PATCH`, optionally followed by `-` or `+` and a build suffix of letters, digits,
/// `.`, `-` and `+`, at most [`MAX_KUBE_VERSION_LEN`] characters: what `/version` reports as `gitVersion`.
pub fn validate_kube_version(version: &str) -> Result<(), CapabilitiesError> {
    if version.len() > MAX_KUBE_VERSION_LEN {
        return Err(CapabilitiesError::KubeVersionTooLong { len: version.len() });
    }
    let bad = || CapabilitiesError::BadKubeVersion(version.to_string());
    let rest = version.strip_prefix('v').ok_or_else(bad)?;
    let (core, suffix) = match rest.find(['-', '+']) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let numbers: Vec<&str> = core.split('.').collect();
    let numeric = |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let suffix_ok = suffix.is_none_or(|s| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
    });
    if numbers.len() == 3 && numbers.iter().all(numeric) && suffix_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// One `apiVersions` entry: `version` (`v1`), `group/version` (`apps/v1`), `version/Kind` (a core
/// kind, `v1/Pod`) or `group/version/Kind` (`apps/v1/Deployment`). A two-part entry whose second
/// part starts with an upper-case letter is a core kind.
pub fn validate_api_version(entry: &str) -> Result<(), CapabilitiesError> {
    if entry.len() > MAX_API_VERSION_LEN {
        return Err(CapabilitiesError::ApiVersionTooLong {
            start: entry.chars().take(40).collect(),
            len: entry.len(),
        });
    }
    let parts: Vec<&str> = entry.split('/').collect();
    let checked = match parts.as_slice() {
        [version] => check_version(version),
        [version, kind] if kind.starts_with(|c: char| c.is_ascii_uppercase()) => {
            check_version(version).and_then(|()| check_kind(kind))
        }
        [group, version] => check_group(group).and_then(|()| check_version(version)),
        [group, version, kind] => check_group(group)
            .and_then(|()| check_version(version))
            .and_then(|()| check_kind(kind)),
        _ => Err("it has more than three '/'-separated parts".to_string()),
    };
    checked.map_err(|problem| CapabilitiesError::BadApiVersion {
        entry: entry.to_string(),
        problem,
    })
}

fn check_group(group: &str) -> Result<(), String> {
    if is_dns1123_subdomain(group) {
        Ok(())
    } else {
        Err(format!(
            "the group {group:?} is not {}",
            NameRule::Dns1123Subdomain
        ))
    }
}

/// API versions are DNS-1035 labels (`v1`, `v1beta1`), as the API server requires of CRD versions.
fn check_version(version: &str) -> Result<(), String> {
    if NameRule::Dns1035Label.allows(version) {
        Ok(())
    } else {
        Err(format!(
            "the version {version:?} is not {}",
            NameRule::Dns1035Label
        ))
    }
}

/// Kinds are what the API server accepts of a CRD's kind: a DNS-1035 label once lower-cased.
fn check_kind(kind: &str) -> Result<(), String> {
    if NameRule::Dns1035Label.allows(&kind.to_ascii_lowercase()) && kind.is_ascii() {
        Ok(())
    } else {
        Err(format!(
            "the kind {kind:?} is not a kind name (a letter, then letters, digits or '-', ending with a letter or digit, at most {DNS_LABEL_MAX} characters)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_versions_as_api_servers_report_them() {
        for good in [
            "v1.32.4",
            "v1.33.0-kubesim",
            "v1.32.4-gke.100",
            "v1.29.4-eks-036c24b",
            "v1.30.2+k3s1",
            "v1.28.3+rke2r1",
        ] {
            assert_eq!(validate_kube_version(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "1.32.4",
            "v1.32",
            "v1.32.4.5",
            "v1..4",
            "v1.32.4-",
            "v1.32.x",
            "v1.32.4 ",
            "V1.32.4",
            "v1.32.4-ü",
        ] {
            let err = validate_kube_version(bad).unwrap_err();
            assert_eq!(err, CapabilitiesError::BadKubeVersion(bad.into()), "{bad}");
            assert!(err.to_string().contains("such as v1.32.4"), "{err}");
        }
        let long = format!("v1.32.4-{}", "a".repeat(60));
        assert_eq!(
            validate_kube_version(&long).unwrap_err().to_string(),
            "kubeVersion is 68 characters long, over the limit of 64"
        );
    }

    #[test]
    fn api_version_entries_in_the_shapes_discovery_gives() {
        let max_group = format!("{}.{}", "a".repeat(126), "b".repeat(126));
        let longest = format!("{max_group}/v{}/K{}", "1".repeat(62), "x".repeat(62));
        assert_eq!(longest.len(), MAX_API_VERSION_LEN);
        for good in [
            "v1",
            "apps/v1",
            "apps/v1/Deployment",
            "v1/Pod",
            "v1/ConfigMap",
            "autoscaling/v2",
            "flowcontrol.apiserver.k8s.io/v1beta3/PriorityLevelConfiguration",
            "monitoring.coreos.com/v1/ServiceMonitor",
            "example.com/v1alpha1/my-kind",
            &longest,
        ] {
            assert_eq!(validate_api_version(good), Ok(()), "{good}");
        }
        let cases: &[(&str, &str)] = &[
            ("", "the version \"\""),
            ("V1", "the version \"V1\""),
            ("Apps/v1", "the group \"Apps\""),
            ("apps/v1/", "the kind \"\""),
            ("/v1/Pod", "the group \"\""),
            ("apps//Deployment", "the version \"\""),
            ("apps/v1/Deploy ment", "the kind \"Deploy ment\""),
            ("apps/v1/1Deployment", "the kind \"1Deployment\""),
            ("v1/Pod-", "the kind \"Pod-\""),
            ("a/b/c/d", "more than three"),
            ("apps/v1\n", "the version \"v1\\n\""),
            ("apps/v1/Dé", "the kind \"Dé\""),
        ];
        for (entry, problem) in cases {
            let err = validate_api_version(entry).unwrap_err();
            let text = err.to_string();
            assert!(
                text.starts_with(&format!("apiVersions entry {entry:?} is not a version")),
                "{text}"
            );
            assert!(text.contains(problem), "{entry:?}: {text}");
        }
        let long = format!("{}/v1", "a".repeat(400));
        assert_eq!(
            validate_api_version(&long).unwrap_err().to_string(),
            format!(
                "apiVersions entry \"{}\"… is 403 characters long, over the limit of 381",
                "a".repeat(40)
            )
        );
    }

    #[test]
    fn new_counts_entries_before_duplicates_are_dropped() {
        let caps = Capabilities::new(
            Some("v1.32.4".into()),
            vec!["v1".into(), "apps/v1".into(), "v1".into()],
        )
        .unwrap();
        assert_eq!(caps.api_versions.len(), 2);
        assert_eq!(caps.validate(), Ok(()));

        let many = vec!["v1".to_string(); MAX_API_VERSIONS + 1];
        assert_eq!(
            Capabilities::new(None, many).unwrap_err().to_string(),
            "apiVersions has 4097 entries, over the limit of 4096"
        );
        let at_limit: Vec<String> = (0..MAX_API_VERSIONS)
            .map(|i| format!("g{i}.example.com/v1"))
            .collect();
        assert!(Capabilities::new(None, at_limit).is_ok());
        assert!(Capabilities::new(Some("1.32".into()), vec![]).is_err());
        assert!(Capabilities::new(None, vec!["apps/v1".into(), "bad/".into()]).is_err());
        assert!(Capabilities::new(None, vec![]).unwrap().is_empty());
    }

    #[test]
    fn validate_applies_the_same_limits() {
        let mut caps = Capabilities {
            kube_version: Some("v1.32.4".into()),
            api_versions: (0..=MAX_API_VERSIONS).map(|i| format!("g{i}/v1")).collect(),
        };
        assert!(matches!(
            caps.validate(),
            Err(CapabilitiesError::TooManyApiVersions { count: 4097 })
        ));
        caps.api_versions = ["v1".to_string(), "apps/v1/Deployment".into()].into();
        assert_eq!(caps.validate(), Ok(()));
        caps.kube_version = Some("latest".into());
        assert!(matches!(
            caps.validate(),
            Err(CapabilitiesError::BadKubeVersion(_))
        ));
    }

    #[test]
    fn serialized_form_is_camel_case_and_empty_decodes_from_nothing() {
        let caps = Capabilities::new(Some("v1.32.4".into()), vec!["v1".into()]).unwrap();
        assert_eq!(
            serde_json::to_value(&caps).unwrap(),
            serde_json::json!({"kubeVersion": "v1.32.4", "apiVersions": ["v1"]})
        );
        let empty: Capabilities = serde_json::from_str("{}").unwrap();
        assert!(empty.is_empty());
    }
}
