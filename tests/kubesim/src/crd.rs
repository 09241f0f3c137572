//! CustomResourceDefinitions: registering their served versions as resources, and their status.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::fields::Part;
use crate::managed::{self, Writer};
use crate::resource::{ALL_VERBS, ResourceType, ScalePaths};
use crate::store::{Store, meta_mut, now};

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The resource types a CRD serves, one per served version.
pub fn types_of(crd: &Value) -> Vec<ResourceType> {
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let spec = &crd["spec"];
    let names = &spec["names"];
    let kind = names["kind"].as_str().unwrap_or_default().to_string();
    let plural = names["plural"].as_str().unwrap_or_default().to_string();
    let group = spec["group"].as_str().unwrap_or_default().to_string();
    if kind.is_empty() || plural.is_empty() || group.is_empty() {
        return Vec::new();
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    versions
        .iter()
        .filter(|v| v["served"].as_bool().unwrap_or(true))
        .filter_map(|v| v["name"].as_str().map(|n| (n, v)))
        .map(|(version, v)| ResourceType {
            group: group.clone(),
            version: version.to_string(),
            kind: kind.clone(),
            list_kind: names["listKind"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("{kind}List")),
            plural: plural.clone(),
            singular: names["singular"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| kind.to_ascii_lowercase()),
            namespaced: spec["scope"].as_str() != Some("Cluster"),
            short_names: strings(&names["shortNames"]),
            categories: strings(&names["categories"]),
            verbs: ALL_VERBS.iter().map(|s| s.to_string()).collect(),
            has_status: v.pointer("/subresources/status").is_some(),
            scale: v.pointer("/subresources/scale").map(|sc| ScalePaths {
                spec_replicas: sc["specReplicasPath"]
                    .as_str()
                    .unwrap_or(".spec.replicas")
                    .to_string(),
                status_replicas: sc["statusReplicasPath"]
                    .as_str()
                    .unwrap_or(".status.replicas")
                    .to_string(),
                label_selector: sc["labelSelectorPath"].as_str().map(str::to_string),
            }),
            crd: Some(name.to_string()),
        })
        .collect()
}

fn condition(existing: &Value, type_: &str, reason: &str, message: &str, now: &str) -> Value {
    let since = existing
        .as_array()
        .and_then(|cs| {
            cs.iter()
                .find(|c| c["type"] == type_ && c["status"] == "True")
        })
        .and_then(|c| c["lastTransitionTime"].as_str())
        .unwrap_or(now)
        .to_string();
    json!({"type": type_, "status": "True", "lastTransitionTime": since, "reason": reason, "message": message})
}

/// Registers a CRD's resources and marks it `NamesAccepted` and `Established`.
pub fn reconcile(store: &mut Store, rt: &Arc<ResourceType>, crd: &Value) {
    if crd.pointer("/metadata/deletionTimestamp").is_some() {
        return;
    }
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let types = types_of(crd);
    tracing::info!(crd = %name, versions = types.len(), "registering custom resource");
    store.registry.set_crd_types(&name, types);
    let now = now();
    let existing = &crd["status"]["conditions"];
    let mut names = crd["spec"]["names"].clone();
    if names.get("singular").is_none() {
        names["singular"] = json!(
            names["kind"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase()
        );
    }
    if names.get("listKind").is_none() {
        names["listKind"] = json!(format!(
            "{}List",
            names["kind"].as_str().unwrap_or_default()
        ));
    }
    let storage: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .map(|vs| {
            vs.iter()
                .filter(|v| v["storage"] == true)
                .map(|v| v["name"].clone())
                .collect()
        })
        .unwrap_or_default();
    let status = json!({
        "conditions": [
            condition(existing, "NamesAccepted", "NoConflicts", "no conflicts found", &now),
            condition(existing, "Established", "InitialNamesAccepted", "the initial names have been accepted", &now),
        ],
        "acceptedNames": names,
        "storedVersions": storage,
    });
    if crd.get("status") == Some(&status) {
        return;
    }
    let mut new = crd.clone();
    new["status"] = status;
    meta_mut(&mut new);
    let writer = Writer {
        manager: "kube-apiserver",
        api_version: &rt.api_version(),
        subresource: Some("status"),
        part: Part::Status,
        now: &now,
    };
    managed::record_update(Some(crd), &mut new, &writer);
    store.commit(rt, Some(crd.clone()), new, false);
}

/// Removes a deleted CRD's objects and resources.
pub fn unregister(store: &mut Store, crd: &Value) {
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if let (Some(group), Some(plural)) = (
        crd["spec"]["group"].as_str(),
        crd["spec"]["names"]["plural"].as_str(),
    ) {
        store.drop_resource(&(group.to_string(), plural.to_string()));
    }
    tracing::info!(crd = %name, "unregistering custom resource");
    store.registry.remove_crd_types(name);
}
