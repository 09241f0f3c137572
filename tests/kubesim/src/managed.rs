//! `metadata.managedFields`: who owns which fields, and how ordinary writes move ownership.

use serde_json::{Value, json};

use crate::fields::{self, FieldSet, Part};

/// One managedFields entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagedEntry {
    /// Field manager name.
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// apiVersion the manager wrote with.
    pub api_version: String,
    /// When the entry's field set last changed.
    pub time: String,
    /// `status` for entries made through the status subresource.
    pub subresource: Option<String>,
    /// Fields owned.
    pub fields: FieldSet,
}

impl ManagedEntry {
    fn same_owner(&self, manager: &str, operation: &str, subresource: Option<&str>) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.as_deref() == subresource
    }
}

/// The entries of an object's managedFields.
pub fn read(obj: &Value) -> Vec<ManagedEntry> {
    let Some(entries) = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    entries
        .iter()
        .map(|e| ManagedEntry {
            manager: e["manager"].as_str().unwrap_or_default().to_string(),
            operation: e["operation"].as_str().unwrap_or("Update").to_string(),
            api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
            time: e["time"].as_str().unwrap_or_default().to_string(),
            subresource: e["subresource"].as_str().map(str::to_string),
            fields: fields::from_fields_v1(&e["fieldsV1"]),
        })
        .collect()
}

/// Writes entries back into `metadata.managedFields`, dropping empty ones.
pub fn write(obj: &mut Value, entries: &[ManagedEntry]) {
    let encoded: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": fields::to_fields_v1(&e.fields),
            });
            if let Some(sub) = &e.subresource {
                v["subresource"] = json!(sub);
            }
            v
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if encoded.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(encoded));
        }
    }
}

/// Who made a write, and through which part of the object.
#[derive(Debug, Clone)]
pub struct Writer<'a> {
    /// Field manager.
    pub manager: &'a str,
    /// apiVersion of the request.
    pub api_version: &'a str,
    /// `Some("status")` for the status subresource.
    pub subresource: Option<&'a str>,
    /// Which part of the object the write may change.
    pub part: Part,
    /// Current time (RFC 3339).
    pub now: &'a str,
}

/// Updates ownership after a non-apply write (create, update, patch): the writer takes the fields
/// it changed, other managers lose them, and removed fields leave every set.
pub fn record_update(old: Option<&Value>, new: &mut Value, writer: &Writer<'_>) {
    // A request that sets managedFields replaces them (kubectl's client-side to server-side apply
    // migration does this); otherwise ownership continues from the stored object.
    let provided = new
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    let mut entries = if provided {
        read(new)
    } else {
        old.map(read).unwrap_or_default()
    };
    let new_set = fields::object_fields(new, writer.part);
    let (changed, removed) = match old {
        None => (new_set.clone(), FieldSet::new()),
        Some(old) => {
            let old_set = fields::object_fields(old, writer.part);
            let changed: FieldSet = new_set
                .iter()
                .filter(|p| {
                    let is_item = p.last().is_some_and(|e| e.starts_with("k:"));
                    let before = fields::get_path(old, p);
                    if is_item {
                        before.is_none()
                    } else {
                        before != fields::get_path(new, p)
                    }
                })
                .cloned()
                .collect();
            (changed, old_set.difference(&new_set).cloned().collect())
        }
    };
    if changed.is_empty() && removed.is_empty() {
        write(new, &entries);
        return;
    }
    for e in &mut entries {
        e.fields
            .retain(|p| !changed.contains(p) && !removed.contains(p));
    }
    let own = entries
        .iter_mut()
        .find(|e| e.same_owner(writer.manager, "Update", writer.subresource));
    match own {
        Some(e) => {
            e.fields.extend(changed);
            e.time = writer.now.to_string();
            e.api_version = writer.api_version.to_string();
        }
        None => entries.push(ManagedEntry {
            manager: writer.manager.to_string(),
            operation: "Update".into(),
            api_version: writer.api_version.to_string(),
            time: writer.now.to_string(),
            subresource: writer.subresource.map(str::to_string),
            fields: changed,
        }),
    }
    write(new, &entries);
}

/// The manager name for a request without `fieldManager`: the user agent's program name.
pub fn default_manager(user_agent: Option<&str>) -> String {
    user_agent
        .and_then(|ua| ua.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .to_string()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn writer<'a>(manager: &'a str) -> Writer<'a> {
        Writer {
            manager,
            api_version: "v1",
            subresource: None,
            part: Part::Whole,
            now: "2025-01-01T00:00:00Z",
        }
    }

    #[test]
    fn updates_move_ownership_of_changed_fields() {
        let mut v1 = json!({"metadata": {"name": "a"}, "data": {"x": "1", "y": "2"}});
        record_update(None, &mut v1, &writer("alice"));
        let mut v2 = json!({"metadata": {"name": "a", "managedFields": v1["metadata"]["managedFields"]}, "data": {"x": "9", "y": "2"}});
        record_update(Some(&v1), &mut v2, &writer("bob"));
        let entries = read(&v2);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].manager, "alice");
        assert_eq!(entries[0].fields.len(), 1, "alice keeps only data.y");
        assert_eq!(
            entries[1].fields.iter().next().unwrap(),
            &vec!["f:data".to_string(), "f:x".to_string()]
        );
    }
}
