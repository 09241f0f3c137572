//! The `scale` subresource: an `autoscaling/v1` Scale view of a workload's replicas, which
//! `kubectl scale` and autoscalers read and write.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::patch::{self, PatchType};
use crate::resource::{ResourceType, ScalePaths};
use crate::store::{Store, WriteCtx};

fn pointer(path: &str) -> String {
    path.replace('.', "/")
}

fn paths(rt: &ResourceType) -> Result<&ScalePaths, ApiError> {
    rt.scale.as_ref().ok_or_else(ApiError::no_route)
}

/// The Scale of an object.
pub fn to_scale(rt: &ResourceType, obj: &Value) -> Result<Value, ApiError> {
    let p = paths(rt)?;
    let meta = &obj["metadata"];
    let mut scale = json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": obj.pointer(&pointer(&p.spec_replicas)).cloned().unwrap_or(json!(0))},
        "status": {"replicas": obj.pointer(&pointer(&p.status_replicas)).cloned().unwrap_or(json!(0))},
    });
    let selector = p
        .label_selector
        .as_ref()
        .and_then(|s| obj.pointer(&pointer(s)))
        .cloned();
    let selector = selector.or_else(|| {
        obj.pointer("/spec/selector/matchLabels")
            .map(match_labels_string)
    });
    if let Some(sel) = selector {
        scale["status"]["selector"] = sel;
    }
    Ok(scale)
}

fn match_labels_string(labels: &Value) -> Value {
    let pairs: Vec<String> = labels
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    json!(pairs.join(","))
}

/// GET, PUT or PATCH of `.../{name}/scale`.
pub fn handle(
    store: &mut Store,
    rt: &Arc<ResourceType>,
    ns: &str,
    name: &str,
    change: Option<(Option<PatchType>, &[u8])>,
    ctx: &WriteCtx,
) -> Result<Value, ApiError> {
    let existing = store.get(rt, ns, name)?;
    let current = to_scale(rt, &existing)?;
    let Some((patch_type, body)) = change else {
        return Ok(current);
    };
    let wanted = match patch_type {
        None => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("decoding Scale: {e}")))?,
        Some(PatchType::Apply) => {
            return Err(ApiError::unsupported_media_type(
                "application/apply-patch+yaml",
            ));
        }
        Some(pt) => patch::apply_patch(&current, pt, body)?,
    };
    let rv = wanted
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !rv.is_empty()
        && Some(rv)
            != existing
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
    {
        return Err(ApiError::stale(&rt.group, &rt.plural, name));
    }
    let replicas = wanted
        .pointer("/spec/replicas")
        .cloned()
        .unwrap_or(json!(0));
    let mut updated = existing.clone();
    let spec_pointer = pointer(&paths(rt)?.spec_replicas);
    match updated.pointer_mut(&spec_pointer) {
        Some(slot) => *slot = replicas,
        None => {
            let (parent, field) = spec_pointer.rsplit_once('/').unwrap_or(("", "replicas"));
            if let Some(Value::Object(m)) = updated.pointer_mut(parent) {
                m.insert(field.to_string(), replicas);
            }
        }
    }
    let out = store.update(rt, ns, name, updated, ctx, false)?;
    to_scale(rt, &store.get(rt, ns, name).unwrap_or(out))
}
