//! Field paths and field sets as server-side apply tracks them, and their `fieldsV1` encoding.
//!
//! A path is a list of elements: `f:<field>` for a map field, `k:<json>` for an item of a keyed
//! list (see [`list_keys`]). A set holds the leaf fields and list items a manager owns, exactly the
//! members `fieldsV1` encodes (`{}` for a leaf, `"."` for an item owned together with its fields).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

/// One path to a field or list item.
pub type FieldPath = Vec<String>;

/// A set of owned paths.
pub type FieldSet = BTreeSet<FieldPath>;

/// Metadata fields the server manages; they are never owned by a field manager.
const SERVER_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

/// Which part of an object a write addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Everything but `status` (the main resource of a type with a status subresource).
    Main,
    /// Only `status` (the `status` subresource).
    Status,
    /// Everything (types without a status subresource).
    Whole,
}

/// Keys of the lists merged per item (associative lists); every other list is atomic.
///
/// This approximates the OpenAPI `x-kubernetes-list-map-keys` by field name, which covers the
/// lists workloads use (containers, env, ports, volumes, conditions, ...).
pub fn list_keys(field: &str, items: &[Value]) -> Option<&'static [&'static str]> {
    let keys: &'static [&'static str] = match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => &["name"],
        "volumeMounts" => &["mountPath"],
        "volumeDevices" => &["devicePath"],
        "conditions" => &["type"],
        "hostAliases" => &["ip"],
        "ownerReferences" => &["uid"],
        "ports" if items.iter().all(|i| i.get("containerPort").is_some()) => {
            &["containerPort", "protocol"]
        }
        "ports"
            if items
                .iter()
                .all(|i| i.get("port").is_some_and(Value::is_number)) =>
        {
            &["port", "protocol"]
        }
        _ => return None,
    };
    if items.is_empty() || !items.iter().all(|i| i.get(keys[0]).is_some()) {
        return None;
    }
    let distinct: BTreeSet<String> = items.iter().map(|i| item_key(keys, i)).collect();
    (distinct.len() == items.len()).then_some(keys)
}

/// The key of a list item as canonical JSON (`{"name":"x"}`); a missing `protocol` defaults to TCP.
pub fn item_key(keys: &[&str], item: &Value) -> String {
    let mut key = Map::new();
    for k in keys {
        match item.get(*k) {
            Some(v) => {
                key.insert(k.to_string(), v.clone());
            }
            None if *k == "protocol" => {
                key.insert(k.to_string(), Value::String("TCP".into()));
            }
            None => {}
        }
    }
    Value::Object(key).to_string()
}

/// The paths an object (or an applied configuration) sets, restricted to `part`.
pub fn object_fields(obj: &Value, part: Part) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(map) = obj.as_object() else {
        return out;
    };
    let mut path = Vec::new();
    for (k, v) in map {
        let keep = match k.as_str() {
            "apiVersion" | "kind" => false,
            "status" => part != Part::Main,
            _ => part != Part::Status,
        };
        if !keep {
            continue;
        }
        path.push(format!("f:{k}"));
        if k == "metadata" {
            if let Some(meta) = v.as_object() {
                for (mk, mv) in meta
                    .iter()
                    .filter(|(mk, _)| !SERVER_METADATA.contains(&mk.as_str()))
                {
                    path.push(format!("f:{mk}"));
                    collect_value(mk, mv, &mut path, &mut out);
                    path.pop();
                }
            }
        } else {
            collect_value(k, v, &mut path, &mut out);
        }
        path.pop();
    }
    out
}

fn collect_value(name: &str, value: &Value, path: &mut FieldPath, out: &mut FieldSet) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                path.push(format!("f:{k}"));
                collect_value(k, v, path, out);
                path.pop();
            }
        }
        Value::Array(items) => match list_keys(name, items) {
            Some(keys) => {
                for item in items {
                    path.push(format!("k:{}", item_key(keys, item)));
                    out.insert(path.clone());
                    if let Some(fields) = item.as_object() {
                        for (k, v) in fields {
                            path.push(format!("f:{k}"));
                            collect_value(k, v, path, out);
                            path.pop();
                        }
                    }
                    path.pop();
                }
            }
            None => {
                out.insert(path.clone());
            }
        },
        _ => {
            out.insert(path.clone());
        }
    }
}

/// Whether a list item matches a `k:` path element.
fn item_matches(key_json: &str, item: &Value) -> bool {
    let Ok(Value::Object(key)) = serde_json::from_str::<Value>(key_json) else {
        return false;
    };
    key.iter().all(|(k, v)| match item.get(k) {
        Some(actual) => actual == v,
        None => k == "protocol" && v == "TCP",
    })
}

/// The value at a path, if present.
pub fn get_path<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for elem in path {
        cur = if let Some(field) = elem.strip_prefix("f:") {
            cur.as_object()?.get(field)?
        } else if let Some(key) = elem.strip_prefix("k:") {
            cur.as_array()?.iter().find(|i| item_matches(key, i))?
        } else {
            return None;
        };
    }
    Some(cur)
}

/// Removes the field or list item at a path; maps left empty by the removal go too.
pub fn remove_path(obj: &mut Value, path: &[String]) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    let Some(parent) = get_path_mut(obj, parent_path) else {
        return;
    };
    if let Some(field) = last.strip_prefix("f:") {
        if let Some(map) = parent.as_object_mut() {
            map.remove(field);
        }
    } else if let Some(key) = last.strip_prefix("k:")
        && let Some(items) = parent.as_array_mut()
    {
        items.retain(|i| !item_matches(key, i));
    }
    let parent_empty = parent.as_object().is_some_and(Map::is_empty);
    let prunable = !parent_path.is_empty() && parent_path != ["f:metadata"];
    if parent_empty && prunable && parent_path.last().is_some_and(|e| e.starts_with("f:")) {
        remove_path(obj, parent_path);
    }
}

fn get_path_mut<'a>(obj: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let mut cur = obj;
    for elem in path {
        cur = if let Some(field) = elem.strip_prefix("f:") {
            cur.as_object_mut()?.get_mut(field)?
        } else if let Some(key) = elem.strip_prefix("k:") {
            cur.as_array_mut()?
                .iter_mut()
                .find(|i| item_matches(key, i))?
        } else {
            return None;
        };
    }
    Some(cur)
}

/// A path as API messages print it: `.spec.containers[name="app"].image`.
pub fn display_path(path: &[String]) -> String {
    let mut out = String::new();
    for elem in path {
        if let Some(field) = elem.strip_prefix("f:") {
            out.push('.');
            out.push_str(field);
        } else if let Some(key) = elem.strip_prefix("k:") {
            let parts: Vec<String> = match serde_json::from_str::<Value>(key) {
                Ok(Value::Object(m)) => m.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                _ => vec![key.to_string()],
            };
            out.push_str(&format!("[{}]", parts.join(",")));
        }
    }
    out
}

#[derive(Default)]
struct Node {
    owned: bool,
    children: BTreeMap<String, Node>,
}

/// Encodes a set as `fieldsV1`.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Node::default();
    for path in set {
        let mut node = &mut root;
        for elem in path {
            node = node.children.entry(elem.clone()).or_default();
        }
        node.owned = true;
    }
    fn encode(node: &Node) -> Value {
        let mut map = Map::new();
        if node.owned && !node.children.is_empty() {
            map.insert(".".into(), Value::Object(Map::new()));
        }
        for (k, child) in &node.children {
            map.insert(k.clone(), encode(child));
        }
        Value::Object(map)
    }
    encode(&root)
}

/// Decodes `fieldsV1` into a set.
pub fn from_fields_v1(value: &Value) -> FieldSet {
    fn decode(value: &Value, path: &mut FieldPath, out: &mut FieldSet) {
        let Some(map) = value.as_object() else { return };
        for (k, child) in map {
            if k == "." {
                out.insert(path.clone());
                continue;
            }
            path.push(k.clone());
            if child.as_object().is_some_and(Map::is_empty) {
                out.insert(path.clone());
            } else {
                decode(child, path, out);
            }
            path.pop();
        }
    }
    let mut out = FieldSet::new();
    decode(value, &mut Vec::new(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn fields_v1_round_trips_with_keyed_lists() {
        let obj = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "x", "labels": {"app": "x"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [
                {"name": "app", "image": "nginx", "ports": [{"containerPort": 80}]}
            ]}}},
            "status": {"replicas": 2},
        });
        let set = object_fields(&obj, Part::Main);
        let encoded = to_fields_v1(&set);
        assert_eq!(
            encoded,
            json!({
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                    "k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:name": {}, "f:ports": {
                        "k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}
                    }}
                }}}},
            })
        );
        assert_eq!(from_fields_v1(&encoded), set);
    }

    #[test]
    fn paths_resolve_display_and_remove() {
        let mut obj = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b"}]}, "data": {"k": "v"}});
        let path: FieldPath = vec![
            "f:spec".into(),
            "f:containers".into(),
            "k:{\"name\":\"a\"}".into(),
            "f:image".into(),
        ];
        assert_eq!(get_path(&obj, &path), Some(&json!("x")));
        assert_eq!(display_path(&path), ".spec.containers[name=\"a\"].image");
        remove_path(&mut obj, &path[..3]);
        assert_eq!(obj["spec"]["containers"], json!([{"name": "b"}]));
        remove_path(&mut obj, &["f:data".to_string(), "f:k".to_string()]);
        assert!(obj.get("data").is_none(), "emptied maps are removed: {obj}");
    }
}
