//! Fidelity with kube-rs, the client the agent uses: typed and dynamic APIs, server-side apply,
//! conflicts, watchers, discovery of CRDs, and kube-runtime's wait conditions.

use std::time::Duration;

use flotilla_kubesim::KubeSim;
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::Discovery;
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

async fn client(sim: &KubeSim) -> kube::Client {
    let kubeconfig = Kubeconfig::read_from(sim.kubeconfig_path()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_applies_lists_watches_and_sees_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let sim = KubeSim::start(dir.path()).unwrap();
    let client = client(&sim).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "labels": {"app": "x"}}, "data": {"k": "v"}});
    let applied = cms
        .patch("a", &PatchParams::apply("flotilla"), &Patch::Apply(&cm))
        .await
        .unwrap();
    assert_eq!(applied.data.unwrap()["k"], "v");
    let again = cms
        .patch("a", &PatchParams::apply("flotilla"), &Patch::Apply(&cm))
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version,
        applied.metadata.resource_version
    );
    let fields = again.metadata.managed_fields.unwrap();
    assert_eq!(
        (fields[0].manager.as_deref(), fields[0].operation.as_deref()),
        (Some("flotilla"), Some("Apply"))
    );

    let listed = cms
        .list(&ListParams::default().labels("app=x"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert!(listed.metadata.resource_version.is_some());

    let drift = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "drifted"}});
    let err = cms
        .patch("a", &PatchParams::apply("intruder"), &Patch::Apply(&drift))
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(status) => {
            assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
            assert!(
                status
                    .message
                    .contains("conflict with \"flotilla\": .data.k"),
                "{}",
                status.message
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    cms.patch(
        "a",
        &PatchParams::apply("intruder").force(),
        &Patch::Apply(&drift),
    )
    .await
    .unwrap();

    // A watcher sees the current object, then later changes.
    let mut events = watcher(cms.clone(), watcher::Config::default().labels("app=x"))
        .applied_objects()
        .boxed();
    let first = tokio::time::timeout(Duration::from_secs(10), events.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.data.unwrap()["k"], "drifted");
    cms.patch(
        "a",
        &PatchParams::apply("flotilla").force(),
        &Patch::Apply(&cm),
    )
    .await
    .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), events.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.data.unwrap()["k"], "v");

    // Streaming lists (sendInitialEvents) work too.
    let streaming = watcher::Config::default().streaming_lists();
    let mut events = watcher(cms.clone(), streaming).applied_objects().boxed();
    let first = tokio::time::timeout(Duration::from_secs(10), events.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.metadata.name.as_deref(), Some("a"));

    cms.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(cms.get_opt("a").await.unwrap().is_none());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_discovers_crds_and_waits_for_conditions() {
    let dir = tempfile::tempdir().unwrap();
    let sim = KubeSim::start(dir.path()).unwrap();
    let client = client(&sim).await;

    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]},
    }))
    .unwrap();
    crds.create(&PostParams::default(), &crd).await.unwrap();
    let established = await_condition(
        crds.clone(),
        "widgets.example.com",
        conditions::is_crd_established(),
    );
    tokio::time::timeout(Duration::from_secs(10), established)
        .await
        .unwrap()
        .unwrap();

    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let (resource, caps) = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .find(|(r, _)| r.kind == "Widget")
        .expect("discovery finds the CRD's kind");
    assert_eq!(
        (resource.plural.as_str(), caps.scope),
        ("widgets", kube::discovery::Scope::Namespaced)
    );
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &resource);
    let w = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 1}});
    widgets
        .patch("w", &PatchParams::apply("flotilla"), &Patch::Apply(&w))
        .await
        .unwrap();
    assert_eq!(widgets.get("w").await.unwrap().data["spec"]["size"], 1);

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "nginx"}]}}}});
    deployments
        .patch("web", &PatchParams::apply("flotilla"), &Patch::Apply(&d))
        .await
        .unwrap();
    let done = await_condition(
        deployments.clone(),
        "web",
        conditions::is_deployment_completed(),
    );
    tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .unwrap()
        .unwrap();
    let counts = sim.request_counts();
    assert_eq!(counts.get("patch"), 2, "{counts:?}");
    sim.shutdown().await;
}
