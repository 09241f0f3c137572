//! Which resource serves a group/version/kind, from the API server's discovery documents.
//!
//! One document per group-version, fetched on first use and cached. A kind the cached
//! document lacks triggers one refetch (a CRD may have been installed since), at most every
//! [`REFRESH_AFTER`]; applying a CRD drops its group's entries.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use flotilla_common::object::ObjectId;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;
use kube::Client;
use kube::core::ApiResource;

use super::error::{KubeError, call};

/// A cached document younger than this is not refetched for an unknown kind.
pub const REFRESH_AFTER: Duration = Duration::from_secs(2);

/// How to reach one kind.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Group, version, kind and plural.
    pub resource: ApiResource,
    /// Whether objects of the kind live in namespaces.
    pub namespaced: bool,
}

struct Entry {
    fetched: Instant,
    /// Kind → resource; `None` when the server does not serve the group-version at all.
    kinds: Option<HashMap<String, Resolved>>,
}

/// The discovery cache.
#[derive(Default)]
pub struct Discovery {
    entries: HashMap<String, Entry>,
}

impl Discovery {
    /// The resource serving `id`'s kind.
    pub async fn resolve(
        &mut self,
        client: &Client,
        id: &ObjectId,
        timeout: Duration,
    ) -> Result<Resolved, KubeError> {
        let api_version = id.api_version();
        let stale = self
            .entries
            .get(&api_version)
            .is_none_or(|e| e.fetched.elapsed() >= REFRESH_AFTER);
        if let Some(found) = self.lookup(&api_version, &id.kind) {
            return Ok(found);
        }
        if stale {
            let kinds = fetch(client, &id.group, &id.version, timeout).await?;
            self.entries.insert(
                api_version.clone(),
                Entry {
                    fetched: Instant::now(),
                    kinds,
                },
            );
            if let Some(found) = self.lookup(&api_version, &id.kind) {
                return Ok(found);
            }
        }
        Err(KubeError::UnknownKind {
            api_version,
            kind: id.kind.clone(),
        })
    }

    fn lookup(&self, api_version: &str, kind: &str) -> Option<Resolved> {
        self.entries
            .get(api_version)?
            .kinds
            .as_ref()?
            .get(kind)
            .cloned()
    }

    /// Forgets every version of `group` (after a CRD of that group changed).
    pub fn invalidate_group(&mut self, group: &str) {
        self.entries
            .retain(|api_version, _| api_version.rsplit_once('/').map_or("", |(g, _)| g) != group);
    }
}

async fn fetch(
    client: &Client,
    group: &str,
    version: &str,
    timeout: Duration,
) -> Result<Option<HashMap<String, Resolved>>, KubeError> {
    let api_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let list: Result<APIResourceList, KubeError> = if group.is_empty() {
        call(timeout, false, client.list_core_api_resources(&api_version)).await
    } else {
        call(
            timeout,
            false,
            client.list_api_group_resources(&api_version),
        )
        .await
    };
    let list = match list {
        Ok(list) => list,
        Err(e) if e.code() == Some(404) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut kinds = HashMap::new();
    for r in list.resources {
        // Subresources (`deployments/status`) share their parent's kind.
        if r.name.contains('/') {
            continue;
        }
        let resource = ApiResource {
            group: group.to_string(),
            version: version.to_string(),
            api_version: api_version.clone(),
            kind: r.kind.clone(),
            plural: r.name.clone(),
        };
        kinds.insert(
            r.kind,
            Resolved {
                resource,
                namespaced: r.namespaced,
            },
        );
    }
    Ok(Some(kinds))
}
