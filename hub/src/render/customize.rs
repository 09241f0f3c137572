//! From documents to the final object set: identity and default namespace, target excludes and patches,
//! duplicate and size checks, and a deterministic order.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_common::limits::Limits;
use flotilla_common::object::{KubeObject, ObjectId, is_builtin_cluster_scoped};
use serde_json::Value;

use super::{RenderError, SourcedDoc};
use crate::manifest::{ObjectSelector, Patch, TargetSpec};

/// An object and the document it came from.
struct Placed {
    object: KubeObject,
    origin: String,
}

/// (group, kind) pairs that CustomResourceDefinitions among `docs` declare cluster-scoped.
fn crd_cluster_scoped(docs: &[SourcedDoc]) -> BTreeSet<(String, String)> {
    docs.iter()
        .filter(|d| {
            d.value.get("kind").and_then(Value::as_str) == Some("CustomResourceDefinition")
                && d.value
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .is_some_and(|v| v.starts_with("apiextensions.k8s.io/"))
                && d.value.pointer("/spec/scope").and_then(Value::as_str) == Some("Cluster")
        })
        .filter_map(|d| {
            let group = d.value.pointer("/spec/group")?.as_str()?;
            let kind = d.value.pointer("/spec/names/kind")?.as_str()?;
            Some((group.to_string(), kind.to_string()))
        })
        .collect()
}

fn selects(sel: &ObjectSelector, id: &ObjectId) -> bool {
    sel.kind == id.kind
        && sel.name == id.name
        && sel.group.as_ref().is_none_or(|g| *g == id.group)
        && sel.version.as_ref().is_none_or(|v| *v == id.version)
        && sel
            .namespace
            .as_ref()
            .is_none_or(|ns| Some(ns) == id.namespace.as_ref())
}

fn describe(sel: &ObjectSelector) -> String {
    let mut s = format!("kind {:?} name {:?}", sel.kind, sel.name);
    if let Some(g) = &sel.group {
        s.push_str(&format!(" group {g:?}"));
    }
    if let Some(v) = &sel.version {
        s.push_str(&format!(" version {v:?}"));
    }
    if let Some(ns) = &sel.namespace {
        s.push_str(&format!(" namespace {ns:?}"));
    }
    s
}

/// Identifies every document, applies the target's excludes and patches in order, and returns the objects
/// sorted by id. Duplicate ids, objects over the size limit and patches that match nothing are errors.
pub(super) fn finish(
    docs: Vec<SourcedDoc>,
    target: Option<&TargetSpec>,
    default_namespace: &str,
    limits: &Limits,
) -> Result<Vec<KubeObject>, RenderError> {
    let crd_scoped = crd_cluster_scoped(&docs);
    let scope = |group: &str, kind: &str| {
        is_builtin_cluster_scoped(group, kind)
            || crd_scoped.contains(&(group.to_string(), kind.to_string()))
    };
    let identify = |value: Value, origin: &str| {
        KubeObject::from_value(value, Some(default_namespace), scope).map_err(|e| {
            RenderError::Object {
                origin: origin.to_string(),
                problem: e.to_string(),
            }
        })
    };

    let mut placed = Vec::with_capacity(docs.len());
    for doc in docs {
        let object = identify(doc.value, &doc.origin)?;
        placed.push(Placed {
            object,
            origin: doc.origin,
        });
    }

    if let Some(target) = target {
        placed.retain(|p| !target.exclude.iter().any(|sel| selects(sel, &p.object.id)));
        for (index, patch) in target.patches.iter().enumerate() {
            let mut matched = false;
            for p in placed
                .iter_mut()
                .filter(|p| selects(&patch.target, &p.object.id))
            {
                matched = true;
                let mut value = std::mem::take(&mut p.object.value);
                match &patch.patch {
                    Patch::Merge(merge) => json_patch::merge(&mut value, merge),
                    Patch::Json(ops) => {
                        json_patch::patch(&mut value, ops).map_err(|e| RenderError::Patch {
                            target: target.name.clone(),
                            index,
                            object: p.object.id.to_string(),
                            origin: p.origin.clone(),
                            problem: e.to_string(),
                        })?
                    }
                }
                p.origin = format!(
                    "{} patched by target {:?} patch {index}",
                    p.origin, target.name
                );
                p.object = identify(value, &p.origin)?;
            }
            if !matched {
                return Err(RenderError::PatchNoMatch {
                    target: target.name.clone(),
                    index,
                    selector: describe(&patch.target),
                });
            }
        }
    }

    let mut by_id: BTreeMap<ObjectId, Placed> = BTreeMap::new();
    for p in placed {
        let size = p.object.canonical_bytes().len() as u64;
        if size > limits.max_object_bytes {
            return Err(RenderError::ObjectTooLarge {
                origin: p.origin,
                id: p.object.id.to_string(),
                size,
                limit: limits.max_object_bytes,
            });
        }
        if let Some(first) = by_id.get(&p.object.id) {
            return Err(RenderError::Duplicate {
                id: p.object.id.to_string(),
                first: first.origin.clone(),
                second: p.origin,
            });
        }
        by_id.insert(p.object.id.clone(), p);
    }
    Ok(by_id.into_values().map(|p| p.object).collect())
}
