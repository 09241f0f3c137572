//! Reading capabilities through discovery, as the agent reports them to the hub: the version,
//! every served group-version and one `group/version/Kind` per resource, and a CRD showing up
//! in the next reading. On the simulator, or the cluster `FLOTILLA_TEST_KUBECONFIG` names.

mod kube_support;

use std::time::Duration;

use flotilla_agent::target::kube::capabilities::discover;
use flotilla_common::capabilities::Capabilities;
use kube_support::{Cluster, DEADLINE, until};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_lists_versions_kinds_and_a_new_crd() {
    let cluster = Cluster::start("caps").await;
    let (client, wire) = cluster.agent_client().await;
    let timeout = Duration::from_secs(5);

    let started = std::time::Instant::now();
    let first = discover(&client, timeout, &Capabilities::default())
        .await
        .unwrap();
    let requests = wire.total();
    eprintln!(
        "one reading: {requests} requests, {} entries, {:?}",
        first.api_versions.len(),
        started.elapsed()
    );
    assert_eq!(first.validate(), Ok(()), "within the hub's limits");
    let version = first.kube_version.clone().expect("gitVersion");
    if cluster.sim().is_some() {
        assert_eq!(version, "v1.33.0-kubesim");
    }
    for entry in [
        "v1",
        "v1/ConfigMap",
        "v1/Namespace",
        "apps/v1",
        "apps/v1/Deployment",
        "policy/v1/PodDisruptionBudget",
        "apiextensions.k8s.io/v1/CustomResourceDefinition",
    ] {
        assert!(first.api_versions.contains(entry), "{entry} missing");
    }
    assert!(
        !first.api_versions.iter().any(|e| e.ends_with("/Scale")),
        "subresources are not resources"
    );
    // Only reads, and one per group-version plus /version, /api and /apis.
    assert_eq!(wire.writes(), 0);
    let group_versions = first
        .api_versions
        .iter()
        .filter(|e| {
            !e.rsplit('/')
                .next()
                .unwrap()
                .starts_with(char::is_uppercase)
        })
        .count() as u64;
    assert_eq!(requests, group_versions + 3);

    let group = format!("g{}.flotilla.test", cluster.unique);
    let crd_name = format!("gadgets.{group}");
    cluster
        .apply(&json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": crd_name},
            "spec": {
                "group": group,
                "names": {"kind": "Gadget", "plural": "gadgets", "singular": "gadget", "listKind": "GadgetList"},
                "scope": "Namespaced",
                "versions": [{
                    "name": "v1alpha1", "served": true, "storage": true,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                }],
            },
        }))
        .await;
    let kind_entry = format!("{group}/v1alpha1/Gadget");
    let second = until("the CRD in discovery", DEADLINE, || {
        let (client, first, kind_entry) = (client.clone(), first.clone(), kind_entry.clone());
        async move {
            let caps = discover(&client, timeout, &first).await.ok()?;
            caps.api_versions.contains(&kind_entry).then_some(caps)
        }
    })
    .await;
    assert!(second.api_versions.contains(&format!("{group}/v1alpha1")));
    assert_eq!(
        second.api_versions.len(),
        first.api_versions.len() + 2,
        "the group-version and its kind, nothing else"
    );
    cluster
        .cleanup(&[(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            &crd_name,
        )])
        .await;
}
