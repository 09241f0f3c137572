//! What the API server offers, read as `helm template --api-versions` lists it: `/version`'s
//! `gitVersion`, every served group-version (core `v1` included) and one `group/version/Kind`
//! entry per served resource (`apps/v1/Deployment`, core kinds as `v1/Pod`), subresources left out.
//!
//! One reading is `/version`, `/api`, `/apis` and one resource list per group-version (plain
//! discovery, which every API server and kubesim serve; 8 lists in flight). A group-version whose
//! list cannot be read (an aggregated API whose backend is down answers 503) keeps the kinds the
//! previous reading found for it, so a flapping metrics server does not make the capabilities,
//! and the renders that read them, flap too; a 404 means it is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use flotilla_common::capabilities::Capabilities;
use futures_util::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;
use kube::Client;
use tracing::debug;

use super::error::{KubeError, call};

/// Resource lists fetched at once.
const LISTS_IN_FLIGHT: usize = 8;

/// What became of one group-version's resource list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    /// The kinds of its resources (not subresources).
    Kinds(BTreeSet<String>),
    /// The server no longer serves it (404 since `/apis` listed it).
    Gone,
    /// It could not be read this time.
    Failed,
}

/// Reads the API server's capabilities; `previous` is the last reading, whose kinds stand in
/// for group-versions whose list fails now. Fails only when `/version`, `/api` or `/apis` does.
pub async fn discover(
    client: &Client,
    timeout: Duration,
    previous: &Capabilities,
) -> Result<Capabilities, KubeError> {
    let version = call(timeout, false, client.apiserver_version()).await?;
    let core = call(timeout, false, client.list_core_api_versions()).await?;
    let groups = call(timeout, false, client.list_api_groups()).await?;
    let mut group_versions: Vec<String> = core.versions;
    for group in groups.groups {
        group_versions.extend(group.versions.into_iter().map(|v| v.group_version));
    }
    let lists: Vec<(String, Listed)> = futures_util::stream::iter(group_versions)
        .map(|gv| async move {
            let list: Result<APIResourceList, KubeError> = if gv.contains('/') {
                call(timeout, false, client.list_api_group_resources(&gv)).await
            } else {
                call(timeout, false, client.list_core_api_resources(&gv)).await
            };
            let listed = match list {
                Ok(list) => Listed::Kinds(
                    list.resources
                        .into_iter()
                        .filter(|r| !r.name.contains('/'))
                        .map(|r| r.kind)
                        .collect(),
                ),
                Err(e) if e.code() == Some(404) => Listed::Gone,
                Err(e) => {
                    debug!(group_version = %gv, error = %e, "discovery: resource list unreadable; keeping the previous kinds");
                    Listed::Failed
                }
            };
            (gv, listed)
        })
        .buffered(LISTS_IN_FLIGHT)
        .collect()
        .await;
    Ok(capabilities_from(
        Some(version.git_version),
        lists,
        previous,
    ))
}

/// The capabilities of one reading (pure): every listed group-version that is not gone, its kinds,
/// and for a failed one the kinds `previous` had under it.
pub fn capabilities_from(
    kube_version: Option<String>,
    lists: Vec<(String, Listed)>,
    previous: &Capabilities,
) -> Capabilities {
    let mut previous_kinds: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for entry in &previous.api_versions {
        if let Some((gv, kind)) = entry.rsplit_once('/')
            && kind.starts_with(|c: char| c.is_ascii_uppercase())
        {
            previous_kinds.entry(gv).or_default().push(kind);
        }
    }
    let mut api_versions = BTreeSet::new();
    for (gv, listed) in lists {
        let kinds: Vec<String> = match listed {
            Listed::Gone => continue,
            Listed::Kinds(kinds) => kinds.into_iter().collect(),
            Listed::Failed => previous_kinds
                .get(gv.as_str())
                .into_iter()
                .flatten()
                .map(|k| k.to_string())
                .collect(),
        };
        for kind in kinds {
            api_versions.insert(format!("{gv}/{kind}"));
        }
        api_versions.insert(gv);
    }
    Capabilities {
        kube_version: kube_version.filter(|v| !v.is_empty()),
        api_versions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(names: &[&str]) -> Listed {
        Listed::Kinds(names.iter().map(|s| s.to_string()).collect())
    }

    fn set(entries: &[&str]) -> BTreeSet<String> {
        entries.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn group_versions_and_their_kinds_as_helm_lists_them() {
        let caps = capabilities_from(
            Some("v1.32.4".into()),
            vec![
                ("v1".into(), kinds(&["Pod", "ConfigMap"])),
                ("apps/v1".into(), kinds(&["Deployment"])),
                ("gone.example.com/v1".into(), Listed::Gone),
                ("empty.example.com/v1".into(), kinds(&[])),
            ],
            &Capabilities::default(),
        );
        assert_eq!(caps.kube_version.as_deref(), Some("v1.32.4"));
        assert_eq!(
            caps.api_versions,
            set(&[
                "apps/v1",
                "apps/v1/Deployment",
                "empty.example.com/v1",
                "v1",
                "v1/ConfigMap",
                "v1/Pod",
            ])
        );
        assert_eq!(caps.validate(), Ok(()));
    }

    #[test]
    fn an_unreadable_list_keeps_the_previous_kinds_of_that_group_version_only() {
        let previous = Capabilities {
            kube_version: Some("v1.32.4".into()),
            api_versions: set(&[
                "metrics.k8s.io/v1beta1",
                "metrics.k8s.io/v1beta1/NodeMetrics",
                "metrics.k8s.io/v1beta1/PodMetrics",
                "apps/v1",
                "apps/v1/Deployment",
                "apps/v1/StatefulSet",
            ]),
        };
        let caps = capabilities_from(
            Some("v1.32.5".into()),
            vec![
                ("metrics.k8s.io/v1beta1".into(), Listed::Failed),
                ("apps/v1".into(), kinds(&["Deployment"])),
                ("new.example.com/v1".into(), Listed::Failed),
            ],
            &previous,
        );
        assert_eq!(caps.kube_version.as_deref(), Some("v1.32.5"));
        assert_eq!(
            caps.api_versions,
            set(&[
                "apps/v1",
                "apps/v1/Deployment",
                "metrics.k8s.io/v1beta1",
                "metrics.k8s.io/v1beta1/NodeMetrics",
                "metrics.k8s.io/v1beta1/PodMetrics",
                "new.example.com/v1",
            ])
        );
        // An empty gitVersion is no version.
        assert_eq!(
            capabilities_from(Some(String::new()), vec![], &previous).kube_version,
            None
        );
    }
}
