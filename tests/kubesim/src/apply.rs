//! Server-side apply: field ownership per manager, conflicts, and removal of fields a manager
//! stopped applying.
//!
//! Approximations: lists are atomic except the keyed lists of [`fields::list_keys`]; there is no
//! schema, so `fieldValidation` is accepted but unknown fields are not reported; a manager never
//! conflicts with itself (the real server keys managers by name *and* operation); a value of
//! `null` in an applied configuration removes the field.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::error::ApiError;
use crate::fields::{self, FieldPath, FieldSet, Part};
use crate::managed::{self, ManagedEntry};
use crate::resource::ResourceType;
use crate::store::{Store, WriteCtx, check_type, meta_mut, new_uid};

/// Metadata the server owns; stripped from applied configurations.
const SERVER_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

/// Parses an apply body: JSON, or YAML.
fn parse(body: &[u8]) -> Result<Value, ApiError> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    let text =
        std::str::from_utf8(body).map_err(|_| ApiError::bad_request("apply patch is not UTF-8"))?;
    serde_saphyr::from_str::<Value>(text)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
}

/// How managers print in conflict messages (updaters carry their apiVersion, as upstream).
fn manager_display(e: &ManagedEntry) -> String {
    if e.operation == "Update" {
        format!("\"{}\" using {}", e.manager, e.api_version)
    } else {
        format!("\"{}\"", e.manager)
    }
}

fn conflict_error(conflicts: &[(String, FieldPath)]) -> ApiError {
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(m, p)| json!({"type": "FieldManagerConflict", "message": format!("conflict with {m}"), "field": fields::display_path(p)}))
        .collect();
    let message = if let [(m, p)] = conflicts {
        format!(
            "Apply failed with 1 conflict: conflict with {m}: {}",
            fields::display_path(p)
        )
    } else {
        let mut managers: Vec<&String> = conflicts.iter().map(|(m, _)| m).collect();
        managers.sort();
        managers.dedup();
        let mut lines = Vec::new();
        for m in managers {
            lines.push(format!("conflicts with {m}:"));
            lines.extend(
                conflicts
                    .iter()
                    .filter(|(cm, _)| cm == m)
                    .map(|(_, p)| format!("- {}", fields::display_path(p))),
            );
        }
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    };
    ApiError::apply_conflict(message, causes)
}

/// Merges an applied configuration into a live object.
fn merge(live: &mut Value, applied: &Value, name: &str) {
    match applied {
        Value::Object(a) => {
            if !live.is_object() {
                *live = json!({});
            }
            let l = live.as_object_mut().expect("object");
            for (k, v) in a {
                if v.is_null() {
                    l.remove(k);
                } else {
                    merge(l.entry(k.clone()).or_insert(Value::Null), v, k);
                }
            }
        }
        Value::Array(items) => match (fields::list_keys(name, items), live.as_array()) {
            (Some(keys), Some(l)) if fields::list_keys(name, l).is_some() || l.is_empty() => {
                // Live items keep their order; items new to the list are appended.
                let mut out = l.clone();
                for item in items {
                    let key = fields::item_key(keys, item);
                    match out.iter().position(|x| fields::item_key(keys, x) == key) {
                        Some(i) => merge(&mut out[i], item, name),
                        None => out.push(item.clone()),
                    }
                }
                *live = Value::Array(out);
            }
            _ => *live = applied.clone(),
        },
        _ => *live = applied.clone(),
    }
}

impl Store {
    /// `PATCH` with `application/apply-patch+yaml`.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        rt: &Arc<ResourceType>,
        ns: Option<&str>,
        name: &str,
        body: &[u8],
        ctx: &WriteCtx,
        force: bool,
        status: bool,
    ) -> Result<Value, ApiError> {
        let mut applied = parse(body)?;
        if applied
            .get("apiVersion")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(ApiError::bad_request(
                "apiVersion must be set in the applied configuration",
            ));
        }
        if applied
            .get("kind")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(ApiError::bad_request(
                "kind must be set in the applied configuration",
            ));
        }
        check_type(rt, &applied)?;
        let applied_name = applied
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if applied_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({applied_name}) does not match the name on the URL ({name})"
            )));
        }
        if applied.pointer("/metadata/managedFields").is_some() {
            return Err(ApiError::bad_request("metadata.managedFields must be nil"));
        }
        let ns = self.check_namespace(rt, ns, &applied).or_else(|e| {
            // Applying to an existing object in a terminating namespace is allowed.
            if e.code == 403 {
                Ok(ns.unwrap_or_default().to_string())
            } else {
                Err(e)
            }
        })?;
        let api_version = applied["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let precondition_rv = applied
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        let meta = meta_mut(&mut applied);
        for k in SERVER_METADATA {
            meta.remove(*k);
        }
        if rt.namespaced {
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        let part = if status {
            Part::Status
        } else if rt.has_status {
            Part::Main
        } else {
            Part::Whole
        };
        if let Some(map) = applied.as_object_mut() {
            match part {
                Part::Main => {
                    map.remove("status");
                }
                Part::Status => map.retain(|k, _| {
                    matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status")
                }),
                Part::Whole => {}
            }
        }
        let applied_set = fields::object_fields(&applied, part);
        let subresource = status.then_some("status");
        let own_entry = |fields: FieldSet| ManagedEntry {
            manager: ctx.manager.clone(),
            operation: "Apply".into(),
            api_version: api_version.clone(),
            time: ctx.now.clone(),
            subresource: subresource.map(str::to_string),
            fields,
        };

        let Some(live) = self.get(rt, &ns, name).ok().map(|mut l| {
            l["apiVersion"] = json!(api_version);
            l
        }) else {
            if status {
                return Err(ApiError::not_found(&rt.group, &rt.plural, name));
            }
            if rt.namespaced {
                self.check_namespace(rt, Some(&ns), &applied)?;
            }
            crate::validate::name(rt, name, &applied)?;
            let mut obj = applied;
            self.defaults(rt, &mut obj);
            let meta = meta_mut(&mut obj);
            meta.insert("uid".into(), json!(new_uid()));
            meta.insert("creationTimestamp".into(), json!(ctx.now));
            managed::write(&mut obj, &[own_entry(applied_set)]);
            tracing::debug!(kind = %rt.kind, %ns, name, manager = %ctx.manager, "apply created");
            return Ok(self.commit(rt, None, obj, ctx.dry_run));
        };
        if let Some(rv) = precondition_rv
            && Some(rv.as_str())
                != live
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
        {
            return Err(ApiError::stale(&rt.group, &rt.plural, name));
        }

        let mut entries = managed::read(&live);
        let mine = entries.iter().position(|e| {
            e.manager == ctx.manager
                && e.operation == "Apply"
                && e.subresource.as_deref() == subresource
        });
        let previous = mine.map(|i| entries[i].fields.clone()).unwrap_or_default();

        let mut conflicts = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            if e.manager == ctx.manager {
                continue;
            }
            for p in applied_set.intersection(&e.fields) {
                let is_item = p.last().is_some_and(|x| x.starts_with("k:"));
                if !is_item && fields::get_path(&live, p) != fields::get_path(&applied, p) {
                    conflicts.push((i, p.clone()));
                }
            }
        }
        if !conflicts.is_empty() {
            if !force {
                let named: Vec<(String, FieldPath)> = conflicts
                    .iter()
                    .map(|(i, p)| (manager_display(&entries[*i]), p.clone()))
                    .collect();
                return Err(conflict_error(&named));
            }
            for (i, p) in &conflicts {
                entries[*i].fields.remove(p);
            }
        }

        let others: FieldSet = entries
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != mine)
            .flat_map(|(_, e)| e.fields.iter().cloned())
            .collect();
        let mut new = live.clone();
        for p in previous.difference(&applied_set) {
            let shared = others.iter().any(|o| o.starts_with(p));
            if !shared {
                fields::remove_path(&mut new, p);
            }
        }
        merge(&mut new, &applied, "");
        match mine {
            Some(i)
                if entries[i].fields == applied_set && entries[i].api_version == api_version => {}
            Some(i) => entries[i] = own_entry(applied_set),
            None => entries.push(own_entry(applied_set)),
        }
        managed::write(&mut new, &entries);
        Ok(self.commit(rt, Some(live), new, ctx.dry_run))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::merge;

    #[test]
    fn merge_keeps_other_items_of_keyed_lists() {
        let mut live = json!({"spec": {"containers": [{"name": "a", "image": "1"}, {"name": "sidecar", "image": "s"}]}});
        merge(
            &mut live,
            &json!({"spec": {"containers": [{"name": "a", "image": "2"}]}}),
            "",
        );
        assert_eq!(
            live["spec"]["containers"],
            json!([{"name": "a", "image": "2"}, {"name": "sidecar", "image": "s"}])
        );
        merge(
            &mut live,
            &json!({"spec": {"containers": [{"name": "new"}, {"name": "a"}]}}),
            "",
        );
        let names: Vec<&str> = live["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "sidecar", "new"]);
    }
}
