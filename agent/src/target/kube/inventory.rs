//! The inventory kept in the cluster: one ConfigMap per app, `flotilla-inventory-<app>` in the
//! inventory namespace (`flotilla-system` by default), so that an agent reinstalled with an
//! empty store adopts what the previous one applied instead of orphaning it.
//!
//! `data.objects` holds one line per object, `<digest> <apiVersion> <kind> <namespace|-> <name>`;
//! `data.prune` and `data.pruneProtect` the prune settings. The ConfigMaps are written with
//! server-side apply, only when their content changes; the namespace is created on demand.

use std::collections::BTreeMap;

use flotilla_common::digest::Digest;
use flotilla_common::object::ObjectId;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use tracing::{info, warn};

use super::error::{KubeError, call};
use super::{KubeOptions, MANAGED_BY, MANAGED_LABEL};
use crate::inventory::AppInventory;

/// Label naming the app a ConfigMap holds the inventory of.
pub const INVENTORY_LABEL: &str = "flotilla.dev/inventory-of";

/// The ConfigMap name for an app.
pub fn config_map_name(app: &str) -> String {
    format!("flotilla-inventory-{app}")
}

/// `data` of an app's inventory ConfigMap.
pub fn encode(inventory: &AppInventory) -> BTreeMap<String, String> {
    let mut objects = String::new();
    for o in &inventory.objects {
        let id = &o.id;
        objects.push_str(&format!(
            "{} {} {} {} {}\n",
            o.digest,
            id.api_version(),
            id.kind,
            id.namespace.as_deref().unwrap_or("-"),
            id.name
        ));
    }
    BTreeMap::from([
        ("objects".to_string(), objects),
        ("prune".to_string(), inventory.prune.to_string()),
        (
            "pruneProtect".to_string(),
            inventory.prune_protect.join(","),
        ),
    ])
}

/// Reads `data` back; `None` when it is not an inventory this agent wrote.
pub fn decode(data: &BTreeMap<String, String>) -> Option<AppInventory> {
    let mut inventory = AppInventory {
        prune: data.get("prune")?.parse().ok()?,
        prune_protect: data
            .get("pruneProtect")?
            .split(',')
            .filter(|k| !k.is_empty())
            .map(str::to_string)
            .collect(),
        objects: Vec::new(),
    };
    for line in data.get("objects")?.lines() {
        let mut parts = line.split(' ');
        let (Some(digest), Some(api_version), Some(kind), Some(namespace), Some(name), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), api_version.to_string()),
        };
        let id = ObjectId {
            group,
            version,
            kind: kind.to_string(),
            namespace: (namespace != "-").then(|| namespace.to_string()),
            name: name.to_string(),
        };
        inventory.insert(id, digest.parse::<Digest>().ok()?);
    }
    Some(inventory)
}

/// What this agent knows the cluster holds, so that unchanged inventories are not rewritten.
#[derive(Default)]
pub struct InventoryMirror {
    /// App → `data` last read or written; `None` until first read.
    known: Option<BTreeMap<String, BTreeMap<String, String>>>,
}

impl InventoryMirror {
    /// Reads every app's inventory from the cluster.
    pub async fn load(
        &mut self,
        client: &Client,
        options: &KubeOptions,
    ) -> Result<BTreeMap<String, AppInventory>, KubeError> {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &options.inventory_namespace);
        let params = ListParams::default().labels(INVENTORY_LABEL);
        let list = call(options.request_timeout, false, api.list(&params)).await?;
        let mut known = BTreeMap::new();
        let mut out = BTreeMap::new();
        for cm in list.items {
            let Some(app) = cm
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(INVENTORY_LABEL))
                .cloned()
            else {
                continue;
            };
            let data = cm.data.unwrap_or_default();
            match decode(&data) {
                Some(inventory) => {
                    out.insert(app.clone(), inventory);
                }
                None => warn!(app = %app, "ignoring an inventory ConfigMap that does not decode"),
            }
            known.insert(app, data);
        }
        self.known = Some(known);
        Ok(out)
    }

    /// Makes the cluster's inventories match `inventory`, writing only what changed.
    pub async fn save(
        &mut self,
        client: &Client,
        options: &KubeOptions,
        inventory: &BTreeMap<String, AppInventory>,
    ) -> Result<(), KubeError> {
        if self.known.is_none() {
            self.load(client, options).await?;
        }
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &options.inventory_namespace);
        for (app, inv) in inventory {
            let data = encode(inv);
            if self.known.as_ref().and_then(|k| k.get(app)) == Some(&data) {
                continue;
            }
            write(&api, client, options, app, &data).await?;
            self.known.get_or_insert_default().insert(app.clone(), data);
        }
        let gone: Vec<String> = self
            .known
            .iter()
            .flat_map(|k| k.keys())
            .filter(|app| !inventory.contains_key(*app))
            .cloned()
            .collect();
        for app in gone {
            let deleted = call(
                options.request_timeout,
                false,
                api.delete(&config_map_name(&app), &DeleteParams::default()),
            )
            .await;
            match deleted {
                Ok(_) => {}
                Err(e) if e.code() == Some(404) => {}
                Err(e) => return Err(e),
            }
            if let Some(known) = self.known.as_mut() {
                known.remove(&app);
            }
        }
        Ok(())
    }
}

async fn write(
    api: &Api<ConfigMap>,
    client: &Client,
    options: &KubeOptions,
    app: &str,
    data: &BTreeMap<String, String>,
) -> Result<(), KubeError> {
    let name = config_map_name(app);
    let cm = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": options.inventory_namespace,
            "labels": {MANAGED_LABEL: MANAGED_BY, INVENTORY_LABEL: app},
        },
        "data": data,
    });
    let params = PatchParams::apply(&options.field_manager).force();
    let apply = Patch::Apply(&cm);
    let patch = || api.patch(&name, &params, &apply);
    match call(options.request_timeout, false, patch()).await {
        Err(e) if e.code() == Some(404) => {
            // The namespace does not exist yet.
            let ns = json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": options.inventory_namespace, "labels": {MANAGED_LABEL: MANAGED_BY}},
            });
            let namespaces: Api<Namespace> = Api::all(client.clone());
            call(
                options.request_timeout,
                false,
                namespaces.patch(&options.inventory_namespace, &params, &Patch::Apply(&ns)),
            )
            .await?;
            info!(namespace = %options.inventory_namespace, "created the inventory namespace");
            call(options.request_timeout, false, patch())
                .await
                .map(drop)
        }
        other => other.map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventories_round_trip() {
        let mut inv = AppInventory {
            prune: true,
            prune_protect: vec![
                "Namespace".into(),
                "apiextensions.k8s.io/CustomResourceDefinition".into(),
            ],
            objects: Vec::new(),
        };
        inv.insert(
            ObjectId {
                group: "apps".into(),
                version: "v1".into(),
                kind: "Deployment".into(),
                namespace: Some("web".into()),
                name: "front".into(),
            },
            Digest::of(b"1"),
        );
        inv.insert(
            ObjectId {
                group: String::new(),
                version: "v1".into(),
                kind: "Namespace".into(),
                namespace: None,
                name: "web".into(),
            },
            Digest::of(b"2"),
        );
        let data = encode(&inv);
        assert_eq!(decode(&data), Some(inv));
        let empty = AppInventory::default();
        assert_eq!(decode(&encode(&empty)), Some(empty));
        let mut bad = data.clone();
        bad.insert("objects".into(), "not an inventory line\n".into());
        assert_eq!(decode(&bad), None);
    }
}
