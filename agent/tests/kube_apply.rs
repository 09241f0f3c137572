//! Applying to a cluster: order (a CRD and its custom resource in one app), unknown kinds,
//! field-manager conflicts and `force`. On the simulator, or the cluster
//! `FLOTILLA_TEST_KUBECONFIG` names.

mod kube_support;

use flotilla_agent::fixtures::app;
use flotilla_agent::target::Target;
use flotilla_common::status::{AppHealth, AppPhase};
use kube_support::{BUDGET, Cluster, commit, config_map, object, pass, phases, store};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crd_and_its_custom_resource_apply_in_one_pass() {
    let cluster = Cluster::start("crd").await;
    let ns = cluster.namespace.clone();
    let group = format!("g{}.flotilla.test", cluster.unique);
    let crd_name = format!("widgets.{group}");
    let crd = object(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": crd_name},
        "spec": {
            "group": group,
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
            }],
        },
    }));
    let widget = object(json!({
        "apiVersion": format!("{group}/v1"),
        "kind": "Widget",
        "metadata": {"name": "w", "namespace": ns},
        "spec": {"size": 3},
    }));
    let other_ns = format!("{ns}-x");
    let namespace =
        object(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other_ns}}));
    let cm = config_map(&other_ns, "in-new-namespace", "1");
    let store = store(cluster.dir(), "agent");
    // The objects are listed CR first; the planner orders them.
    commit(
        &store,
        vec![app("platform", &[&widget, &cm, &namespace, &crd])],
        &[&widget, &cm, &namespace, &crd],
    );
    let shutdown = CancellationToken::new();
    let (mut target, _) = cluster.target(&shutdown).await;
    let outcome = pass(&store, &mut target, BUDGET).await;
    assert_eq!(phases(&outcome.apps), ["platform applied"]);
    assert!(outcome.complete);
    assert_eq!(outcome.written, 4);
    let live = cluster
        .get(&format!("{group}/v1"), "Widget", Some(&ns), "w")
        .await
        .expect("the custom resource exists");
    assert_eq!(live["spec"]["size"], 3);
    assert_eq!(
        live["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "flotilla"
    );
    assert_eq!(live["metadata"]["labels"]["flotilla.dev/app"], "platform");
    // Health comes from the watch cache, which may trail the pass by an event:
    // further passes re-observe it, and, being level-based, write nothing.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut health = outcome.apps[0].health;
    loop {
        let again = pass(&store, &mut target, BUDGET).await;
        assert_eq!((again.written, again.unchanged), (0, 4));
        if health == AppHealth::Healthy {
            break;
        }
        health = again.apps[0].health;
        assert!(
            std::time::Instant::now() < deadline,
            "app never became healthy: {health:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    target.shutdown().await;
    cluster
        .cleanup(&[
            (
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                &crd_name,
            ),
            ("v1", "Namespace", &other_ns),
        ])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kind_fails_only_its_app() {
    let cluster = Cluster::start("unknown").await;
    let ns = cluster.namespace.clone();
    let gizmo = object(json!({
        "apiVersion": "nowhere.flotilla.test/v1",
        "kind": "Gizmo",
        "metadata": {"name": "g", "namespace": ns},
    }));
    let fine = config_map(&ns, "fine", "1");
    let store = store(cluster.dir(), "agent");
    commit(
        &store,
        vec![app("broken", &[&gizmo]), app("web", &[&fine])],
        &[&gizmo, &fine],
    );
    let shutdown = CancellationToken::new();
    let (mut target, _) = cluster.target(&shutdown).await;
    let outcome = pass(&store, &mut target, BUDGET).await;
    assert!(!outcome.complete);
    assert!(!outcome.retry, "an unknown kind is not worth retrying");
    assert_eq!(
        phases(&outcome.apps),
        [
            "broken failed cannot apply nowhere.flotilla.test/v1/Gizmo ".to_string()
                + &ns
                + "/g: the cluster does not know kind Gizmo in nowhere.flotilla.test/v1 \
                   (is its CustomResourceDefinition installed?)",
            "web applied".to_string(),
        ]
    );
    assert_eq!(outcome.apps[0].health, AppHealth::Failed);
    assert!(
        cluster
            .get("v1", "ConfigMap", Some(&ns), "fine")
            .await
            .is_some()
    );
    target.shutdown().await;
    cluster.cleanup(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_is_reported_and_force_takes_ownership() {
    let cluster = Cluster::start("conflict").await;
    let ns = cluster.namespace.clone();
    // Another manager owns the field first.
    cluster
        .apply_as(
            "someone-else",
            &json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "shared", "namespace": ns}, "data": {"value": "theirs"}}),
            false,
        )
        .await
        .unwrap();
    let shared = config_map(&ns, "shared", "ours");
    let store = store(cluster.dir(), "agent");
    commit(&store, vec![app("web", &[&shared])], &[&shared]);
    let shutdown = CancellationToken::new();
    let (mut target, _) = cluster.target(&shutdown).await;
    let outcome = pass(&store, &mut target, BUDGET).await;
    assert_eq!(outcome.apps[0].phase, AppPhase::Failed);
    let message = &outcome.apps[0].message;
    assert!(
        message.contains("conflict")
            && message.contains("someone-else")
            && message.contains(".data.value"),
        "the conflict names the manager and the field: {message}"
    );
    assert!(message.contains("force: true"), "{message}");
    assert!(!outcome.retry);
    let live = cluster
        .get("v1", "ConfigMap", Some(&ns), "shared")
        .await
        .unwrap();
    assert_eq!(live["data"]["value"], "theirs");

    let mut forced = app("web", &[&shared]);
    forced.force = true;
    commit(&store, vec![forced], &[]);
    let outcome = pass(&store, &mut target, BUDGET).await;
    assert_eq!(phases(&outcome.apps), ["web applied"]);
    let live = cluster
        .get("v1", "ConfigMap", Some(&ns), "shared")
        .await
        .unwrap();
    assert_eq!(live["data"]["value"], "ours");
    target.shutdown().await;
    cluster.cleanup(&[]).await;
}
