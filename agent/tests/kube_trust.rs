//! What the agent trusts on a cluster: only its signed state. A forged inventory ConfigMap
//! deletes nothing; deletes are conditional on the uid listed; and failed apps heal by
//! themselves once what they lacked appears, without a new ClusterState.

mod kube_support;

use std::sync::Arc;
use std::time::Duration;

use flotilla_agent::apply::Applier;
use flotilla_agent::config::Backoff;
use flotilla_agent::fixtures::app;
use flotilla_agent::inventory::AppInventory;
use flotilla_agent::retry::RetryPolicy;
use flotilla_agent::target::kube::inventory::{INVENTORY_LABEL, config_map_name, encode};
use flotilla_agent::target::{Change, Target};
use flotilla_common::digest::Digest;
use flotilla_common::object::ObjectId;
use flotilla_common::status::AppPhase;
use kube_support::{
    BUDGET, Cluster, DEADLINE, commit, config_map, object, pass, phases, store, until,
};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

const MANAGED: &str = "app.kubernetes.io/managed-by";
const APP: &str = "flotilla.dev/app";

fn id(kind: &str, namespace: Option<&str>, name: &str) -> ObjectId {
    ObjectId {
        group: String::new(),
        version: "v1".into(),
        kind: kind.into(),
        namespace: namespace.map(str::to_string),
        name: name.into(),
    }
}

/// A ConfigMap made by someone else, with these labels.
fn victim(ns: &str, name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "namespace": ns, "labels": labels},
           "data": {"precious": "yes"}})
}

/// An inventory ConfigMap written by an attacker, not by an agent.
fn forged(cluster: &Cluster, app: &str, prune_protect: &[&str], ids: &[ObjectId]) -> Value {
    let mut inventory = AppInventory {
        prune: true,
        prune_protect: prune_protect.iter().map(|k| k.to_string()).collect(),
        objects: Vec::new(),
    };
    for id in ids {
        inventory.insert(id.clone(), Digest::of(b"forged"));
    }
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": config_map_name(app), "namespace": cluster.inventory_namespace,
                        "labels": {MANAGED: "flotilla", INVENTORY_LABEL: app}},
           "data": encode(&inventory)})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_inventory_config_map_deletes_nothing() {
    let cluster = Cluster::start("forged").await;
    let ns = cluster.namespace.clone();
    let victim_ns = format!("victim-{}", cluster.unique);
    // Worst case: the victims even carry Flotilla's labels, as an attacker might set them.
    cluster
        .apply(&json!({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": victim_ns, "labels": {MANAGED: "flotilla", APP: "web"}}}))
        .await;
    let victims = [
        ("other-app", json!({MANAGED: "flotilla", APP: "db"})),
        ("unlabelled", json!({})),
        ("not-managed", json!({APP: "web"})),
        ("ghost-victim", json!({MANAGED: "flotilla", APP: "ghost"})),
        ("keep-old", json!({MANAGED: "flotilla", APP: "keep"})),
    ];
    for (name, labels) in &victims {
        cluster.apply(&victim(&ns, name, labels.clone())).await;
    }
    let cm = |name: &str| id("ConfigMap", Some(&ns), name);
    cluster
        .apply(&json!({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": cluster.inventory_namespace}}))
        .await;
    // "web" is in the signed state with prune on; the forgery also tries to unprotect Namespaces.
    let web_ids = [
        id("Namespace", None, &victim_ns),
        cm("other-app"),
        cm("unlabelled"),
        cm("not-managed"),
    ];
    cluster
        .apply(&forged(&cluster, "web", &["Namespace"], &web_ids))
        .await;
    // "ghost" is in no signed state at all.
    cluster
        .apply(&forged(&cluster, "ghost", &[], &[cm("ghost-victim")]))
        .await;
    // "keep" is signed with prune off; the forgery says prune on.
    cluster
        .apply(&forged(&cluster, "keep", &[], &[cm("keep-old")]))
        .await;

    let a = config_map(&ns, "a", "1");
    let k = config_map(&ns, "k", "1");
    let mut keep = app("keep", &[&k]);
    keep.prune = false;
    let agent = store(cluster.dir(), "agent");
    commit(&agent, vec![app("web", &[&a]), keep], &[&a, &k]);
    let shutdown = CancellationToken::new();
    let (mut target, wire) = cluster.target(&shutdown).await;
    let outcome = pass(&agent, &mut target, BUDGET).await;
    assert!(outcome.complete, "{:?}", phases(&outcome.apps));
    assert_eq!(outcome.deleted, 0);
    // The one delete request is the mirror dropping the ghost's inventory ConfigMap: the
    // inventory namespace mirrors what the agent holds, and the ghost is no app of it.
    assert_eq!(wire.count("delete"), 1);
    assert!(
        cluster
            .get(
                "v1",
                "ConfigMap",
                Some(&cluster.inventory_namespace),
                &config_map_name("ghost")
            )
            .await
            .is_none()
    );
    assert!(
        cluster
            .get("v1", "Namespace", None, &victim_ns)
            .await
            .is_some()
    );
    for (name, _) in &victims {
        assert!(
            cluster
                .get("v1", "ConfigMap", Some(&ns), name)
                .await
                .is_some(),
            "{name} must survive a forged inventory"
        );
    }
    // What the agent recorded: signed apps only, signed prune settings, and only its objects.
    let inventory = agent.inventory().unwrap();
    assert_eq!(
        inventory.keys().collect::<Vec<_>>(),
        ["keep", "web"],
        "the ghost app is not adopted"
    );
    assert!(inventory["web"].prune && inventory["web"].prune_protect.is_empty());
    assert!(!inventory["keep"].prune);
    let names = |app: &str| -> Vec<String> {
        inventory[app]
            .objects
            .iter()
            .map(|o| o.id.name.clone())
            .collect()
    };
    assert_eq!(names("web"), ["a"]);
    assert_eq!(names("keep"), ["k"]);

    // A later state that drops every object still deletes only what the agent applied.
    commit(&agent, vec![app("web", &[])], &[]);
    let outcome = pass(&agent, &mut target, BUDGET).await;
    assert_eq!(outcome.deleted, 1, "{:?}", phases(&outcome.apps));
    assert!(
        cluster
            .get("v1", "ConfigMap", Some(&ns), "a")
            .await
            .is_none()
    );
    assert!(
        cluster
            .get("v1", "ConfigMap", Some(&ns), "k")
            .await
            .is_some(),
        "keep: prune off"
    );
    for (name, _) in &victims {
        assert!(
            cluster
                .get("v1", "ConfigMap", Some(&ns), name)
                .await
                .is_some(),
            "{name}"
        );
    }
    target.shutdown().await;
    cluster.cleanup(&[("v1", "Namespace", &victim_ns)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_are_conditional_on_the_listed_uid_and_the_app_label() {
    let cluster = Cluster::start("uid").await;
    let ns = cluster.namespace.clone();
    let labels = json!({MANAGED: "flotilla", APP: "web"});
    cluster.apply(&victim(&ns, "c", labels.clone())).await;
    let c = id("ConfigMap", Some(&ns), "c");
    let shutdown = CancellationToken::new();
    let (mut target, _) = cluster.target(&shutdown).await;

    let live = target
        .list_live("web", std::slice::from_ref(&c))
        .await
        .unwrap();
    let old_uid = live[&c].uid.clone().expect("the listing gives uids");
    assert!(
        target
            .list_live("db", std::slice::from_ref(&c))
            .await
            .unwrap()
            .is_empty(),
        "another app's listing does not show it"
    );

    // Recreated between the listing and the delete: a different object, left alone.
    let client = cluster.client.clone();
    let api: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::namespaced(client, &ns);
    api.delete("c", &Default::default()).await.unwrap();
    cluster.apply(&victim(&ns, "c", labels)).await;
    let now = cluster
        .get("v1", "ConfigMap", Some(&ns), "c")
        .await
        .unwrap();
    let new_uid = now["metadata"]["uid"].as_str().unwrap().to_string();
    assert_ne!(new_uid, old_uid);
    assert_eq!(
        target.delete(&c, Some(&old_uid)).await.unwrap(),
        Change::Unchanged
    );
    assert!(
        cluster
            .get("v1", "ConfigMap", Some(&ns), "c")
            .await
            .is_some()
    );
    assert_eq!(
        target.delete(&c, Some(&new_uid)).await.unwrap(),
        Change::Changed
    );
    assert!(
        cluster
            .get("v1", "ConfigMap", Some(&ns), "c")
            .await
            .is_none()
    );
    target.shutdown().await;
    cluster.cleanup(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_declared_by_another_app_is_created_first() {
    let cluster = Cluster::start("order").await;
    let shared = format!("{}-shared", cluster.namespace);
    let namespace =
        object(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": shared}}));
    let config = config_map(&shared, "config", "1");
    let agent = store(cluster.dir(), "agent");
    // By name, "a-web" comes first; its namespace is declared by "z-platform".
    commit(
        &agent,
        vec![app("a-web", &[&config]), app("z-platform", &[&namespace])],
        &[&config, &namespace],
    );
    let shutdown = CancellationToken::new();
    let (mut target, _) = cluster.target(&shutdown).await;
    let outcome = pass(&agent, &mut target, BUDGET).await;
    assert!(outcome.complete, "{:?}", phases(&outcome.apps));
    assert_eq!(
        phases(&outcome.apps),
        ["a-web applied", "z-platform applied"]
    );
    assert!(
        cluster
            .get("v1", "ConfigMap", Some(&shared), "config")
            .await
            .is_some()
    );
    target.shutdown().await;
    cluster.cleanup(&[("v1", "Namespace", &shared)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_app_heals_when_its_namespace_appears_without_a_new_state() {
    let cluster = Cluster::start("heal").await;
    let later = format!("{}-later", cluster.namespace);
    let config = config_map(&later, "config", "1");
    let agent = store(cluster.dir(), "agent");
    let version = commit(&agent, vec![app("web", &[&config])], &[&config]);
    let shutdown = CancellationToken::new();
    let (target, _) = cluster.target(&shutdown).await;
    let (_held_tx, held_rx) = watch::channel(version);
    let applier = Applier {
        store: agent.clone(),
        target,
        settings: BUDGET,
        backoff: Backoff::default(),
        retry: RetryPolicy {
            first: Duration::from_millis(200),
            ceiling: Duration::from_secs(1),
        },
        reporter: Arc::new(Notify::new()),
        metrics: Default::default(),
    };
    let task = tokio::spawn(applier.run(held_rx, shutdown.clone()));
    let failed = until("the app to fail", DEADLINE, || async {
        let apps = agent.last_statuses().unwrap();
        (apps.first().map(|a| a.phase) == Some(AppPhase::Failed)).then_some(apps)
    })
    .await;
    assert!(
        failed[0].message.contains("not found"),
        "{}",
        failed[0].message
    );

    // Someone creates the namespace; no new ClusterState arrives.
    cluster
        .apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": later}}))
        .await;
    until("the version applied", DEADLINE, || async {
        (agent.applied_version().unwrap() == version).then_some(())
    })
    .await;
    assert_eq!(phases(&agent.last_statuses().unwrap()), ["web applied"]);
    assert!(
        cluster
            .get("v1", "ConfigMap", Some(&later), "config")
            .await
            .is_some()
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
    cluster.cleanup(&[("v1", "Namespace", &later)]).await;
}
