//! Drift: where a live object differs from what the agent applied. Pure.
//!
//! The comparison is a subset check, the way server-side apply sees an object: every field the
//! applied configuration sets must have the same value live; fields the configuration does not
//! set (defaults, other managers' fields, `status`) are not drift. Lists whose items all carry a
//! `name` are matched by name (containers, env, ports, volumes); other lists are compared item by
//! item and must have the same length.

use serde_json::{Map, Value};

/// Most differing fields listed in one summary.
pub const MAX_FIELDS: usize = 10;

/// Metadata fields the server owns or that are not part of an applied configuration.
const IGNORED_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// Paths (`.data.value`, `.spec.containers[name=web].image`) where `live` does not have what
/// `desired` sets, sorted, at most [`MAX_FIELDS`] plus a final "... and N more" entry.
pub fn differences(desired: &Value, live: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let (Some(d), Some(l)) = (desired.as_object(), live.as_object()) {
        for (key, value) in d {
            match key.as_str() {
                // The kind and version are the object's identity; status belongs to controllers.
                "apiVersion" | "kind" | "status" => {}
                "metadata" => {
                    let empty = Value::Object(Map::new());
                    let live_meta = l.get("metadata").unwrap_or(&empty);
                    if let (Some(dm), Some(lm)) = (value.as_object(), live_meta.as_object()) {
                        for (mk, mv) in dm {
                            if IGNORED_METADATA.contains(&mk.as_str()) {
                                continue;
                            }
                            compare(&format!(".metadata.{mk}"), mv, lm.get(mk), &mut out);
                        }
                    }
                }
                _ => compare(&format!(".{key}"), value, l.get(key), &mut out),
            }
        }
    } else if desired != live {
        out.push(".".into());
    }
    out.sort();
    if out.len() > MAX_FIELDS {
        let more = out.len() - MAX_FIELDS;
        out.truncate(MAX_FIELDS);
        out.push(format!("... and {more} more"));
    }
    out
}

fn compare(path: &str, desired: &Value, live: Option<&Value>, out: &mut Vec<String>) {
    let Some(live) = live else {
        // Applying `null` removes a field; a missing field is then as asked.
        if !desired.is_null() {
            out.push(path.to_string());
        }
        return;
    };
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => {
            for (k, v) in d {
                compare(&format!("{path}.{k}"), v, l.get(k), out);
            }
        }
        (Value::Array(d), Value::Array(l)) => {
            if let (Some(dn), Some(ln)) = (names(d), names(l)) {
                for (name, item) in dn {
                    let live_item = ln.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
                    compare(&format!("{path}[name={name}]"), item, live_item, out);
                }
            } else if d.len() != l.len() {
                out.push(path.to_string());
            } else {
                for (i, (dv, lv)) in d.iter().zip(l).enumerate() {
                    compare(&format!("{path}[{i}]"), dv, Some(lv), out);
                }
            }
        }
        (Value::Number(d), Value::Number(l)) => {
            if d.as_f64() != l.as_f64() {
                out.push(path.to_string());
            }
        }
        (d, l) => {
            if d != l {
                out.push(path.to_string());
            }
        }
    }
}

/// The items of a list keyed by their `name`, if every item has one.
fn names(items: &[Value]) -> Option<Vec<(&str, &Value)>> {
    if items.is_empty() {
        return None;
    }
    items
        .iter()
        .map(|item| Some((item.get("name")?.as_str()?, item)))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn subset_comparison_table() {
        let base = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"a": "1"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [
                {"name": "web", "image": "nginx:1", "args": ["-v"]},
            ]}}},
        });
        let cases: Vec<(&str, Value, Vec<&str>)> = vec![
            ("identical", base.clone(), vec![]),
            (
                "server additions are not drift",
                json!({
                    "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "web", "namespace": "default", "labels": {"a": "1", "b": "2"},
                        "uid": "u", "resourceVersion": "9", "managedFields": []},
                    "spec": {"replicas": 2, "strategy": {"type": "RollingUpdate"}, "template": {"spec": {"containers": [
                        {"name": "sidecar", "image": "envoy"},
                        {"name": "web", "image": "nginx:1", "args": ["-v"], "imagePullPolicy": "IfNotPresent"},
                    ]}}},
                    "status": {"replicas": 2},
                }),
                vec![],
            ),
            (
                "changed scalar and label",
                json!({
                    "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "web", "namespace": "default", "labels": {"a": "2"}},
                    "spec": {"replicas": 5, "template": {"spec": {"containers": [
                        {"name": "web", "image": "nginx:1", "args": ["-v"]},
                    ]}}},
                }),
                vec![".metadata.labels.a", ".spec.replicas"],
            ),
            (
                "keyed list item changed and atomic list grew",
                json!({
                    "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "web", "namespace": "default", "labels": {"a": "1"}},
                    "spec": {"replicas": 2, "template": {"spec": {"containers": [
                        {"name": "web", "image": "nginx:2", "args": ["-v", "-x"]},
                    ]}}},
                }),
                vec![
                    ".spec.template.spec.containers[name=web].args",
                    ".spec.template.spec.containers[name=web].image",
                ],
            ),
            (
                "removed field and removed item",
                json!({
                    "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": "web", "namespace": "default"},
                    "spec": {"template": {"spec": {"containers": [{"name": "other"}]}}},
                }),
                vec![
                    ".metadata.labels",
                    ".spec.replicas",
                    ".spec.template.spec.containers[name=web]",
                ],
            ),
        ];
        for (case, live, want) in cases {
            assert_eq!(differences(&base, &live), want, "{case}");
        }
    }

    #[test]
    fn numbers_compare_by_value_and_long_lists_are_cut() {
        assert!(differences(&json!({"spec": {"x": 1}}), &json!({"spec": {"x": 1.0}})).is_empty());
        let desired: Map<String, Value> = (0..15).map(|i| (format!("k{i:02}"), json!(i))).collect();
        let diffs = differences(
            &json!({"data": Value::Object(desired)}),
            &json!({"data": {}}),
        );
        assert_eq!(diffs.len(), MAX_FIELDS + 1);
        assert_eq!(diffs[MAX_FIELDS], "... and 5 more");
    }
}
