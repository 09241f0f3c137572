//! The rules the Kubernetes API server applies to object names, per kind, so a render fails with a clear
//! message instead of the agent's apply failing with the server's.
//!
//! From k8s.io/apimachinery `validation` and the per-kind `Validate*Name` functions of kubernetes
//! `pkg/apis/*/validation`: most kinds (custom resources included) need a DNS-1123 subdomain; Namespaces a
//! DNS-1123 label; Services a DNS-1035 label (a label that starts with a letter); the RBAC kinds only a
//! path segment name, which is why `system:aggregated-metrics-reader` is a valid ClusterRole.

use std::fmt;

/// Longest DNS-1123 subdomain.
pub const DNS1123_SUBDOMAIN_MAX: usize = 253;

/// Longest DNS-1123 or DNS-1035 label.
pub const DNS_LABEL_MAX: usize = 63;

/// The API group of the RBAC kinds.
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// A rule a name must satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// Lower-case alphanumerics, `-` and `.`, each dot-separated part starting and ending alphanumeric,
    /// at most 253 characters.
    Dns1123Subdomain,
    /// Lower-case alphanumerics and `-`, starting and ending alphanumeric, at most 63 characters.
    Dns1123Label,
    /// A DNS-1123 label that starts with a letter.
    Dns1035Label,
    /// Anything but empty, `.`, `..`, or a name containing `/` or `%`.
    PathSegment,
}

impl NameRule {
    /// The rule the API server applies to `metadata.name` of an object of this group and kind.
    pub fn for_kind(group: &str, kind: &str) -> NameRule {
        match (group, kind) {
            ("", "Namespace") => NameRule::Dns1123Label,
            ("", "Service") => NameRule::Dns1035Label,
            (RBAC_GROUP, "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding") => {
                NameRule::PathSegment
            }
            _ => NameRule::Dns1123Subdomain,
        }
    }

    /// True when `name` satisfies the rule.
    pub fn allows(self, name: &str) -> bool {
        match self {
            NameRule::Dns1123Subdomain => is_dns1123_subdomain(name),
            NameRule::Dns1123Label => is_dns1123_label(name),
            NameRule::Dns1035Label => {
                is_dns1123_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase())
            }
            NameRule::PathSegment => is_path_segment_name(name),
        }
    }
}

impl fmt::Display for NameRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameRule::Dns1123Subdomain => {
                "a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', each part starting and ending with a letter or digit, at most 253 characters)"
            }
            NameRule::Dns1123Label => {
                "a DNS-1123 label (lower-case letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)"
            }
            NameRule::Dns1035Label => {
                "a DNS-1035 label (lower-case letters, digits and '-', starting with a letter and ending with a letter or digit, at most 63 characters)"
            }
            NameRule::PathSegment => {
                "a path segment name (not empty, not '.' or '..', and without '/' or '%')"
            }
        })
    }
}

fn is_label_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
}

fn is_label_shape(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && b.iter().copied().all(is_label_char) && b[0] != b'-' && b[b.len() - 1] != b'-'
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns1123_label(s: &str) -> bool {
    s.len() <= DNS_LABEL_MAX && is_label_shape(s)
}

/// DNS-1123 labels joined by `.`, at most 253 characters in all (each part may be longer than 63, as
/// Kubernetes allows).
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= DNS1123_SUBDOMAIN_MAX && s.split('.').all(is_label_shape)
}

/// Kubernetes' `IsValidPathSegmentName`, plus not empty (every object needs a name).
pub fn is_path_segment_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '%'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_per_kind() {
        let cases = [
            ("", "Namespace", NameRule::Dns1123Label),
            ("", "Service", NameRule::Dns1035Label),
            ("", "ConfigMap", NameRule::Dns1123Subdomain),
            ("apps", "Deployment", NameRule::Dns1123Subdomain),
            (RBAC_GROUP, "Role", NameRule::PathSegment),
            (RBAC_GROUP, "ClusterRole", NameRule::PathSegment),
            (RBAC_GROUP, "RoleBinding", NameRule::PathSegment),
            (RBAC_GROUP, "ClusterRoleBinding", NameRule::PathSegment),
            // Same kind, another group: a custom resource, which gets the default.
            ("example.com", "Role", NameRule::Dns1123Subdomain),
            ("example.com", "Widget", NameRule::Dns1123Subdomain),
        ];
        for (group, kind, want) in cases {
            assert_eq!(NameRule::for_kind(group, kind), want, "{group}/{kind}");
        }
    }

    #[test]
    fn names_against_rules() {
        use NameRule::*;
        let long_label = "a".repeat(63);
        let too_long_label = "a".repeat(64);
        let long_subdomain = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        let too_long_subdomain = format!("{long_subdomain}e");
        // (name, subdomain, 1123 label, 1035 label, path segment)
        let cases: &[(&str, bool, bool, bool, bool)] = &[
            ("web", true, true, true, true),
            ("web-1", true, true, true, true),
            ("1web", true, true, false, true),
            ("a.b.c", true, false, false, true),
            ("web.", false, false, false, true),
            (".web", false, false, false, true),
            ("a..b", false, false, false, true),
            ("-web", false, false, false, true),
            ("web-", false, false, false, true),
            ("a.-b", false, false, false, true),
            ("Web", false, false, false, true),
            ("we_b", false, false, false, true),
            (
                "system:aggregated-metrics-reader",
                false,
                false,
                false,
                true,
            ),
            (
                "system:controller:job-controller",
                false,
                false,
                false,
                true,
            ),
            ("", false, false, false, false),
            (".", false, false, false, false),
            ("..", false, false, false, false),
            ("a/b", false, false, false, false),
            ("100%", false, false, false, false),
            (&long_label, true, true, true, true),
            (&too_long_label, true, false, false, true),
            (&long_subdomain, true, false, false, true),
            (&too_long_subdomain, false, false, false, true),
        ];
        for &(name, subdomain, label, label1035, segment) in cases {
            assert_eq!(
                Dns1123Subdomain.allows(name),
                subdomain,
                "subdomain {name:?}"
            );
            assert_eq!(Dns1123Label.allows(name), label, "1123 label {name:?}");
            assert_eq!(Dns1035Label.allows(name), label1035, "1035 label {name:?}");
            assert_eq!(PathSegment.allows(name), segment, "path segment {name:?}");
        }
        assert_eq!(long_subdomain.len(), 253);
    }
}
