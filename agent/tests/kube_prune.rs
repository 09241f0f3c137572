//! Pruning on a cluster: within the deletion budget, never protected kinds, adoption of the
//! in-cluster inventory by a reinstalled agent, and no deletion while the API server fails.

mod kube_support;

use std::sync::Arc;
use std::time::Duration;

use flotilla_agent::apply::{Applier, ApplySettings};
use flotilla_agent::config::Backoff;
use flotilla_agent::fixtures::app;
use flotilla_agent::target::Target;
use flotilla_common::status::AppPhase;
use kube_support::{
    BUDGET, Cluster, DEADLINE, Fault, commit, config_map, object, pass, phases, store, until,
};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prunes_within_the_budget_and_keeps_protected_kinds() {
    let cluster = Cluster::start("prune").await;
    let ns = cluster.namespace.clone();
    let extra_ns = format!("{ns}-extra");
    let namespace =
        object(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": extra_ns}}));
    let [a, b, c, d] = ["a", "b", "c", "d"].map(|n| config_map(&ns, n, "1"));
    let store = store(cluster.dir(), "agent");
    commit(
        &store,
        vec![app("web", &[&namespace, &a, &b, &c])],
        &[&namespace, &a, &b, &c],
    );
    let shutdown = CancellationToken::new();
    let (mut target, _) = cluster.target(&shutdown).await;
    assert!(pass(&store, &mut target, BUDGET).await.complete);

    // b and the Namespace leave the app: b is deleted, the Namespace is released and stays.
    commit(&store, vec![app("web", &[&a, &c])], &[]);
    let outcome = pass(&store, &mut target, BUDGET).await;
    assert!(outcome.complete);
    assert_eq!(outcome.deleted, 1);
    assert!(
        cluster
            .get("v1", "ConfigMap", Some(&ns), "b")
            .await
            .is_none()
    );
    assert!(
        cluster
            .get("v1", "Namespace", None, &extra_ns)
            .await
            .is_some()
    );

    // Over budget: nothing is deleted until the override.
    commit(&store, vec![app("web", &[&d])], &[&d]);
    let tight = ApplySettings {
        deletion_budget: 1,
        ..BUDGET
    };
    let outcome = pass(&store, &mut target, tight).await;
    assert_eq!(outcome.apps[0].phase, AppPhase::Failed);
    assert!(
        outcome.apps[0].message.contains("deletion budget of 1"),
        "{}",
        outcome.apps[0].message
    );
    assert!(
        cluster
            .get("v1", "ConfigMap", Some(&ns), "a")
            .await
            .is_some()
    );
    assert!(
        cluster
            .get("v1", "ConfigMap", Some(&ns), "d")
            .await
            .is_some()
    );
    let outcome = pass(
        &store,
        &mut target,
        ApplySettings {
            override_budget: true,
            ..tight
        },
    )
    .await;
    assert!(outcome.complete);
    assert_eq!(outcome.deleted, 2);
    assert!(
        cluster
            .get("v1", "ConfigMap", Some(&ns), "a")
            .await
            .is_none()
    );
    target.shutdown().await;
    cluster.cleanup(&[("v1", "Namespace", &extra_ns)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reinstalled_agent_adopts_the_inventory_kept_in_the_cluster() {
    let cluster = Cluster::start("adopt").await;
    let ns = cluster.namespace.clone();
    let [a, b] = ["a", "b"].map(|n| config_map(&ns, n, "1"));
    let first = store(cluster.dir(), "first");
    commit(&first, vec![app("web", &[&a, &b])], &[&a, &b]);
    let shutdown = CancellationToken::new();
    let (mut target, _) = cluster.target(&shutdown).await;
    assert!(pass(&first, &mut target, BUDGET).await.complete);
    target.shutdown().await;
    let inventory = cluster
        .get(
            "v1",
            "ConfigMap",
            Some(&cluster.inventory_namespace),
            "flotilla-inventory-web",
        )
        .await
        .expect("the inventory is kept in the cluster");
    assert_eq!(
        inventory["data"]["objects"]
            .as_str()
            .unwrap()
            .lines()
            .count(),
        2
    );

    // A new agent with an empty store, and a state without b.
    let second = store(cluster.dir(), "second");
    commit(&second, vec![app("web", &[&a])], &[&a]);
    let (mut target, wire) = cluster.target(&shutdown).await;
    let outcome = pass(&second, &mut target, BUDGET).await;
    assert!(outcome.complete);
    assert_eq!(
        (outcome.written, outcome.unchanged, outcome.deleted),
        (0, 1, 1),
        "adopted: a is not rewritten, b is pruned, not orphaned"
    );
    assert_eq!(
        wire.count("patch"),
        1,
        "only the inventory ConfigMap is written"
    );
    assert!(
        cluster
            .get("v1", "ConfigMap", Some(&ns), "b")
            .await
            .is_none()
    );
    assert_eq!(second.inventory().unwrap()["web"].objects.len(), 1);
    target.shutdown().await;
    cluster.cleanup(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_are_retried_and_nothing_is_pruned_from_an_incomplete_listing() {
    let cluster = Cluster::start("errors").await;
    let ns = cluster.namespace.clone();
    let [a, b, c] = ["a", "b", "c"].map(|n| config_map(&ns, n, "1"));
    let store = store(cluster.dir(), "agent");
    commit(&store, vec![app("web", &[&a, &b])], &[&a, &b]);
    let shutdown = CancellationToken::new();

    // Lists fail: the writes of the new state happen, the deletion of b does not.
    let (mut target, wire) = cluster.target(&shutdown).await;
    assert!(pass(&store, &mut target, BUDGET).await.complete);
    target.shutdown().await;
    let (mut target, wire2) = cluster.target(&shutdown).await;
    drop(wire);
    wire2.set(Fault::Lists);
    commit(&store, vec![app("web", &[&a, &c])], &[&c]);
    let outcome = pass(&store, &mut target, BUDGET).await;
    assert!(!outcome.complete && outcome.retry);
    assert_eq!((outcome.written, outcome.deleted), (1, 0));
    assert!(
        outcome.apps[0]
            .message
            .starts_with("deletions withheld: the list of live objects is incomplete"),
        "{}",
        outcome.apps[0].message
    );
    assert!(
        cluster
            .get("v1", "ConfigMap", Some(&ns), "b")
            .await
            .is_some()
    );
    assert!(
        cluster
            .get("v1", "ConfigMap", Some(&ns), "c")
            .await
            .is_some()
    );
    target.shutdown().await;

    // The API server is down, then comes back: the applier retries with backoff and finishes.
    let (target, wire) = cluster.target(&shutdown).await;
    wire.set(Fault::Down);
    let reporter = Arc::new(Notify::new());
    let version = store.held().unwrap().unwrap().held.version;
    let (_held_tx, held_rx) = watch::channel(version);
    let applier = Applier {
        store: store.clone(),
        target,
        settings: BUDGET,
        backoff: Backoff {
            min: Duration::from_millis(50),
            max: Duration::from_millis(400),
        },
        retry: flotilla_agent::retry::RetryPolicy::default(),
        reporter: Arc::clone(&reporter),
        metrics: Default::default(),
    };
    let task = tokio::spawn(applier.run(held_rx, shutdown.clone()));
    let failed = until("a failed pass", DEADLINE, || async {
        let apps = store.last_statuses().unwrap();
        (apps.first().map(|a| a.phase) == Some(AppPhase::Failed)).then_some(apps)
    })
    .await;
    assert!(
        failed[0].message.contains("injected fault"),
        "{}",
        failed[0].message
    );
    until("a retry", DEADLINE, || async {
        (wire.total() >= 3).then_some(())
    })
    .await;
    assert!(
        cluster
            .get("v1", "ConfigMap", Some(&ns), "b")
            .await
            .is_some(),
        "no deletion while down"
    );
    wire.set(Fault::None);
    until("the version applied", DEADLINE, || async {
        (store.applied_version().unwrap() == version).then_some(())
    })
    .await;
    assert_eq!(phases(&store.last_statuses().unwrap()), ["web applied"]);
    assert!(
        cluster
            .get("v1", "ConfigMap", Some(&ns), "b")
            .await
            .is_none()
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
    cluster.cleanup(&[]).await;
}
