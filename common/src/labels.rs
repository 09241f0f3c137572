//! Cluster labels and Kubernetes-style label selectors.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A cluster's labels; ordered so that everything derived from them is deterministic.
pub type Labels = BTreeMap<String, String>;

/// A label string that cannot be parsed or a label that breaks Kubernetes' rules.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LabelError {
    /// `k=v` expected.
    #[error("invalid label {0:?}: expected key=value")]
    Syntax(String),
    /// Key too long or with characters Kubernetes does not allow.
    #[error("invalid label key {0:?}")]
    Key(String),
    /// Value too long or with characters Kubernetes does not allow.
    #[error("invalid label value {0:?} for key {1:?}")]
    Value(String, String),
    /// The same key given twice.
    #[error("label key {0:?} given twice")]
    Duplicate(String),
}

/// Parses `k=v,k2=v2` (the CLI form) into labels. An empty string is no labels.
pub fn parse_labels(s: &str) -> Result<Labels, LabelError> {
    let mut labels = Labels::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| LabelError::Syntax(part.to_string()))?;
        let (k, v) = (k.trim(), v.trim());
        validate_label(k, v)?;
        if labels.insert(k.to_string(), v.to_string()).is_some() {
            return Err(LabelError::Duplicate(k.to_string()));
        }
    }
    Ok(labels)
}

/// Parses kubectl-style label changes: `k=v` sets a label, `k-` removes one.
/// Returns the labels to set and the keys to remove; a key may appear once.
pub fn parse_label_changes(changes: &[String]) -> Result<(Labels, Vec<String>), LabelError> {
    let mut set = Labels::new();
    let mut remove: Vec<String> = Vec::new();
    for change in changes.iter().flat_map(|c| c.split(',')).map(str::trim) {
        if change.is_empty() {
            continue;
        }
        let key = match change.split_once('=') {
            Some((k, v)) => {
                validate_label(k, v)?;
                k
            }
            None => {
                let k = change
                    .strip_suffix('-')
                    .ok_or_else(|| LabelError::Syntax(change.to_string()))?;
                validate_label(k, "")?;
                k
            }
        };
        if set.contains_key(key) || remove.iter().any(|r| r == key) {
            return Err(LabelError::Duplicate(key.to_string()));
        }
        match change.split_once('=') {
            Some((k, v)) => {
                set.insert(k.to_string(), v.to_string());
            }
            None => remove.push(key.to_string()),
        }
    }
    Ok((set, remove))
}

/// Formats labels as `k=v,k2=v2`.
pub fn format_labels(labels: &Labels) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn is_name_segment(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// Checks one label against Kubernetes' key and value syntax.
pub fn validate_label(key: &str, value: &str) -> Result<(), LabelError> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            let prefix_ok = !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(|seg| is_name_segment(seg, 63));
            if !prefix_ok {
                return Err(LabelError::Key(key.to_string()));
            }
            name
        }
        None => key,
    };
    if !is_name_segment(name, 63) {
        return Err(LabelError::Key(key.to_string()));
    }
    if !value.is_empty() && !is_name_segment(value, 63) {
        return Err(LabelError::Value(value.to_string(), key.to_string()));
    }
    Ok(())
}

/// A Kubernetes label selector. The empty selector matches every cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Every key must be present with exactly this value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Every requirement must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<SelectorRequirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SelectorRequirement {
    /// Label key.
    pub key: String,
    /// How the key is tested.
    pub operator: SelectorOperator,
    /// Values for `In` / `NotIn`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// The operators Kubernetes defines for label selectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SelectorOperator {
    /// The label's value is one of `values`.
    In,
    /// The label is absent or its value is none of `values`.
    NotIn,
    /// The key is present.
    Exists,
    /// The key is absent.
    DoesNotExist,
}

/// A selector that Kubernetes would reject.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    /// `In`/`NotIn` need values; `Exists`/`DoesNotExist` must have none.
    #[error("selector requirement on {key:?}: operator {operator:?} {problem}")]
    Values {
        /// The requirement's key.
        key: String,
        /// Its operator.
        operator: SelectorOperator,
        /// What is wrong.
        problem: &'static str,
    },
    /// A key or value with invalid syntax.
    #[error(transparent)]
    Label(#[from] LabelError),
}

impl LabelSelector {
    /// Checks the selector's syntax.
    pub fn validate(&self) -> Result<(), SelectorError> {
        for (k, v) in &self.match_labels {
            validate_label(k, v)?;
        }
        for req in &self.match_expressions {
            validate_label(&req.key, "")?;
            let needs_values =
                matches!(req.operator, SelectorOperator::In | SelectorOperator::NotIn);
            if needs_values && req.values.is_empty() {
                return Err(SelectorError::Values {
                    key: req.key.clone(),
                    operator: req.operator,
                    problem: "needs at least one value",
                });
            }
            if !needs_values && !req.values.is_empty() {
                return Err(SelectorError::Values {
                    key: req.key.clone(),
                    operator: req.operator,
                    problem: "takes no values",
                });
            }
        }
        Ok(())
    }

    /// True when `labels` satisfy every term of the selector.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|req| {
                let got = labels.get(&req.key);
                match req.operator {
                    SelectorOperator::In => got.is_some_and(|v| req.values.contains(v)),
                    SelectorOperator::NotIn => got.is_none_or(|v| !req.values.contains(v)),
                    SelectorOperator::Exists => got.is_some(),
                    SelectorOperator::DoesNotExist => got.is_none(),
                }
            })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_changes_set_and_remove() {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (set, remove) = parse_label_changes(&owned(&["tier=web", "ring-", "a=1,b=2"])).unwrap();
        assert_eq!(format_labels(&set), "a=1,b=2,tier=web");
        assert_eq!(remove, vec!["ring".to_string()]);
        for bad in [
            &["tier"][..],
            &["tier=a", "tier-"],
            &["tier=a", "tier=b"],
            &["-"],
            &["x=-a"],
        ] {
            assert!(parse_label_changes(&owned(bad)).is_err(), "{bad:?}");
        }
    }

    use super::*;

    fn labels(s: &str) -> Labels {
        parse_labels(s).unwrap()
    }

    #[test]
    fn parse_and_format() {
        let l = labels("env=dev, ring=canary,example.com/tier=edge");
        assert_eq!(l.len(), 3);
        assert_eq!(
            format_labels(&l),
            "env=dev,example.com/tier=edge,ring=canary"
        );
        assert_eq!(parse_labels("").unwrap(), Labels::new());
        assert!(matches!(parse_labels("a"), Err(LabelError::Syntax(_))));
        assert!(matches!(
            parse_labels("a=1,a=2"),
            Err(LabelError::Duplicate(_))
        ));
        assert!(matches!(parse_labels("-a=1"), Err(LabelError::Key(_))));
        assert!(matches!(parse_labels("a=b c"), Err(LabelError::Value(..))));
    }

    #[test]
    fn selector_table() {
        let yaml_cases: &[(&str, &str, bool)] = &[
            ("{}", "", true),
            ("{matchLabels: {tier: edge}}", "tier=edge,x=1", true),
            ("{matchLabels: {tier: edge}}", "tier=core", false),
            (
                "{matchExpressions: [{key: ring, operator: In, values: ['1','2']}]}",
                "ring=2",
                true,
            ),
            (
                "{matchExpressions: [{key: ring, operator: In, values: ['1']}]}",
                "",
                false,
            ),
            (
                "{matchExpressions: [{key: ring, operator: NotIn, values: ['1']}]}",
                "",
                true,
            ),
            (
                "{matchExpressions: [{key: ring, operator: NotIn, values: ['1']}]}",
                "ring=1",
                false,
            ),
            (
                "{matchExpressions: [{key: gpu, operator: Exists}]}",
                "gpu=",
                true,
            ),
            (
                "{matchExpressions: [{key: gpu, operator: DoesNotExist}]}",
                "gpu=a",
                false,
            ),
        ];
        for (sel, l, want) in yaml_cases {
            let sel: LabelSelector = serde_saphyr::from_str(sel).unwrap();
            sel.validate().unwrap();
            assert_eq!(sel.matches(&labels(l)), *want, "{sel:?} vs {l}");
        }
    }

    #[test]
    fn invalid_selectors() {
        let sel: LabelSelector =
            serde_saphyr::from_str("{matchExpressions: [{key: a, operator: In}]}").unwrap();
        assert!(sel.validate().is_err());
        let sel: LabelSelector =
            serde_saphyr::from_str("{matchExpressions: [{key: a, operator: Exists, values: [x]}]}")
                .unwrap();
        assert!(sel.validate().is_err());
        assert!(serde_saphyr::from_str::<LabelSelector>("{matchLabel: {}}").is_err());
    }
}
