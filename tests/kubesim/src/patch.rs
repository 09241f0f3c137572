//! PATCH bodies other than server-side apply: JSON patch, JSON merge patch, and an approximation
//! of strategic merge patch.
//!
//! Strategic merge patch is merge patch plus: lists named in [`fields::list_keys`] merge item by
//! item on their keys (`$patch: delete` removes an item, `$patch: replace` replaces the list or
//! map), `$deleteFromPrimitiveList/<field>` removes values, and `$setElementOrder/<field>` and
//! `$retainKeys` are accepted and ignored. Other lists are replaced, as for merge patch.

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::fields;

/// Which patch format a request body is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json` (RFC 6902).
    Json,
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchType {
    /// The patch type of a Content-Type header.
    pub fn from_content_type(content_type: &str) -> Result<Self, ApiError> {
        match content_type.split(';').next().unwrap_or_default().trim() {
            "application/json-patch+json" => Ok(Self::Json),
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/apply-patch+yaml"
            | "application/apply-patch+json"
            | "application/apply-patch+cbor" => Ok(Self::Apply),
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }
}

/// Applies a JSON, merge or strategic patch to an object.
pub fn apply_patch(
    existing: &Value,
    patch_type: PatchType,
    body: &[u8],
) -> Result<Value, ApiError> {
    let mut out = existing.clone();
    match patch_type {
        PatchType::Json => {
            let patch: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(&mut out, &patch).map_err(|e| {
                ApiError::invalid(
                    "",
                    "",
                    "patch",
                    &format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?;
        }
        PatchType::Merge => {
            let patch: Value = parse_json(body)?;
            json_patch::merge(&mut out, &patch);
        }
        PatchType::Strategic => {
            let patch: Value = parse_json(body)?;
            strategic_merge(&mut out, &patch, "");
        }
        PatchType::Apply => {
            return Err(ApiError::bad_request(
                "apply patches are served by server-side apply",
            ));
        }
    }
    Ok(out)
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))
}

/// Merges a strategic merge patch into `target` (the value of field `name`).
pub fn strategic_merge(target: &mut Value, patch: &Value, name: &str) {
    match patch {
        Value::Object(p) => {
            if p.get("$patch").and_then(Value::as_str) == Some("replace") {
                *target = Value::Object(without_directives(p));
                return;
            }
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if k.starts_with("$setElementOrder/") || k == "$retainKeys" || k == "$patch" {
                    continue;
                }
                if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
                    if let (Some(Value::Array(items)), Some(remove)) =
                        (t.get_mut(field), v.as_array())
                    {
                        items.retain(|i| !remove.contains(i));
                    }
                    continue;
                }
                match v {
                    Value::Null => {
                        t.remove(k);
                    }
                    Value::Object(_) => {
                        strategic_merge(t.entry(k.clone()).or_insert(Value::Null), v, k)
                    }
                    Value::Array(items) => {
                        merge_list(t.entry(k.clone()).or_insert(Value::Null), items, k)
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        other => {
            let _ = name;
            *target = other.clone();
        }
    }
}

fn without_directives(p: &Map<String, Value>) -> Map<String, Value> {
    p.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn merge_list(target: &mut Value, items: &[Value], name: &str) {
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *target = Value::Array(
            items
                .iter()
                .filter(|i| i.get("$patch").is_none())
                .cloned()
                .collect(),
        );
        return;
    }
    let live: Vec<Value> = target.as_array().cloned().unwrap_or_default();
    let plain: Vec<Value> = items
        .iter()
        .filter(|i| i.get("$patch").is_none())
        .cloned()
        .collect();
    let keyed = fields::list_keys(name, &plain).or_else(|| fields::list_keys(name, &live));
    let Some(keys) =
        keyed.filter(|_| !live.is_empty() || items.iter().any(|i| i.get("$patch").is_some()))
    else {
        *target = Value::Array(items.iter().map(strip_item).collect());
        return;
    };
    let mut out = live;
    for item in items {
        let key = fields::item_key(keys, item);
        let pos = out.iter().position(|l| fields::item_key(keys, l) == key);
        if item.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(i) = pos {
                out.remove(i);
            }
            continue;
        }
        match pos {
            Some(i) => strategic_merge(&mut out[i], item, name),
            None => out.push(strip_item(item)),
        }
    }
    *target = Value::Array(out);
}

fn strip_item(item: &Value) -> Value {
    let mut out = Value::Null;
    strategic_merge(&mut out, item, "");
    if item.is_object() { out } else { item.clone() }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let mut live = json!({"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}], "tolerations": [1]}});
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "a", "image": "x2"}, {"name": "b", "$patch": "delete"}],
            "tolerations": [2],
        }});
        strategic_merge(&mut live, &patch, "");
        assert_eq!(
            live,
            json!({"spec": {"containers": [{"name": "a", "image": "x2"}], "tolerations": [2]}})
        );
    }

    #[test]
    fn json_and_merge_patches() {
        let live = json!({"data": {"a": "1", "b": "2"}});
        let merged =
            apply_patch(&live, PatchType::Merge, br#"{"data":{"a":null,"c":"3"}}"#).unwrap();
        assert_eq!(merged, json!({"data": {"b": "2", "c": "3"}}));
        let patched = apply_patch(
            &live,
            PatchType::Json,
            br#"[{"op":"replace","path":"/data/a","value":"9"}]"#,
        )
        .unwrap();
        assert_eq!(patched["data"]["a"], "9");
        assert!(
            apply_patch(
                &live,
                PatchType::Json,
                br#"[{"op":"test","path":"/data/a","value":"0"}]"#
            )
            .is_err()
        );
    }
}
