//! What the agent does between releases, driven by its watches: health transitions (with the
//! simulator's workload knobs), drift correction and drift reports, and no writes at all while
//! nothing drifts.

mod kube_support;

use std::sync::Arc;
use std::time::Duration;

use flotilla_agent::apply::Applier;
use flotilla_agent::config::Backoff;
use flotilla_agent::fixtures::app;
use flotilla_agent::store::Store;
use flotilla_common::cluster_state::DriftMode;
use flotilla_common::status::{AppHealth, AppPhase, AppStatus};
use flotilla_kubesim::WorkloadMode;
use kube_support::{BUDGET, Cluster, DEADLINE, Wire, commit, config_map, object, store, until};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long the steady-state test watches for writes. This is the one fixed
/// wait in the suite: it asserts that nothing happens, and an absence has no
/// condition to wait on.
const QUIET: Duration = Duration::from_secs(3);

struct Running {
    task: JoinHandle<Result<(), flotilla_agent::AgentError>>,
    held: watch::Sender<u64>,
    shutdown: CancellationToken,
    wire: Wire,
}

async fn run(cluster: &Cluster, store: &Store) -> Running {
    let shutdown = CancellationToken::new();
    let (target, wire) = cluster.target(&shutdown).await;
    let version = store.held().unwrap().map_or(0, |h| h.held.version);
    let (held, held_rx) = watch::channel(version);
    let applier = Applier {
        store: store.clone(),
        target,
        settings: BUDGET,
        backoff: Backoff {
            min: Duration::from_millis(50),
            max: Duration::from_millis(500),
        },
        retry: flotilla_agent::retry::RetryPolicy::default(),
        reporter: Arc::new(Notify::new()),
        metrics: Default::default(),
    };
    let task = tokio::spawn(applier.run(held_rx, shutdown.clone()));
    Running {
        task,
        held,
        shutdown,
        wire,
    }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// Waits until the named app's newest status passes `check`.
async fn app_status(
    store: &Store,
    name: &str,
    what: &str,
    check: impl Fn(&AppStatus) -> bool,
) -> AppStatus {
    until(what, DEADLINE, || async {
        store
            .last_statuses()
            .unwrap()
            .into_iter()
            .find(|a| a.app == name && check(a))
    })
    .await
}

fn deployment(ns: &str, name: &str) -> (flotilla_common::cluster_state::ObjectEntry, Vec<u8>) {
    object(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]},
            },
        },
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_workloads_and_gates_dependents() {
    let cluster = Cluster::start("health").await;
    if !cluster.workload_mode(WorkloadMode::Progressing) {
        // A real cluster runs real controllers; its workloads cannot be steered from here.
        cluster.cleanup(&[]).await;
        return;
    }
    let ns = cluster.namespace.clone();
    let web = deployment(&ns, "web");
    let after = config_map(&ns, "after", "1");
    let store = store(cluster.dir(), "agent");
    let mut dependent = app("after", &[&after]);
    dependent.depends_on = vec!["web".into()];
    commit(
        &store,
        vec![app("web", &[&web]), dependent],
        &[&web, &after],
    );
    let running = run(&cluster, &store).await;

    let status = app_status(&store, "web", "web progressing", |a| {
        a.health == AppHealth::Progressing
    })
    .await;
    assert_eq!(status.phase, AppPhase::Applied);
    assert!(
        status.health_reason.contains("Deployment"),
        "{}",
        status.health_reason
    );
    let waiting = app_status(&store, "after", "after waiting", |a| {
        a.phase == AppPhase::Pending
    })
    .await;
    assert_eq!(
        waiting.message,
        "waiting for dependency web to become healthy"
    );
    assert!(
        cluster
            .get("v1", "ConfigMap", Some(&ns), "after")
            .await
            .is_none()
    );

    cluster.workload_mode(WorkloadMode::Ready);
    app_status(&store, "web", "web healthy", |a| {
        a.health == AppHealth::Healthy
    })
    .await;
    app_status(&store, "after", "after applied", |a| {
        a.phase == AppPhase::Applied
    })
    .await;
    assert!(
        cluster
            .get("v1", "ConfigMap", Some(&ns), "after")
            .await
            .is_some()
    );

    cluster.workload_mode(WorkloadMode::Failed);
    let failed = app_status(&store, "web", "web failed", |a| {
        a.health == AppHealth::Failed
    })
    .await;
    assert!(
        failed.health_reason.contains("ProgressDeadlineExceeded"),
        "{}",
        failed.health_reason
    );
    running.stop().await;
    cluster.cleanup(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_corrected_or_reported_as_each_app_asks() {
    let cluster = Cluster::start("drift").await;
    let ns = cluster.namespace.clone();
    let fixed = config_map(&ns, "fixed", "desired");
    let watched = config_map(&ns, "watched", "desired");
    let store = store(cluster.dir(), "agent");
    let mut report = app("reported", &[&watched]);
    report.drift = DriftMode::Report;
    commit(
        &store,
        vec![app("corrected", &[&fixed]), report],
        &[&fixed, &watched],
    );
    let running = run(&cluster, &store).await;
    until("applied", DEADLINE, || async {
        (store.applied_version().unwrap() == 1).then_some(())
    })
    .await;

    let edit = json!({"data": {"value": "edited"}});
    cluster
        .patch_as("intruder", "v1", "ConfigMap", Some(&ns), "fixed", &edit)
        .await;
    cluster
        .patch_as("intruder", "v1", "ConfigMap", Some(&ns), "watched", &edit)
        .await;

    until("the drift corrected", Duration::from_secs(10), || async {
        let live = cluster.get("v1", "ConfigMap", Some(&ns), "fixed").await?;
        (live["data"]["value"] == "desired").then_some(())
    })
    .await;
    let status = app_status(&store, "reported", "the drift reported", |a| {
        !a.message.is_empty()
    })
    .await;
    assert_eq!(status.phase, AppPhase::Applied);
    assert_eq!(
        status.message,
        format!("drifted, not corrected (drift: report): v1/ConfigMap {ns}/watched: .data.value")
    );
    let live = cluster
        .get("v1", "ConfigMap", Some(&ns), "watched")
        .await
        .unwrap();
    assert_eq!(
        live["data"]["value"], "edited",
        "drift: report does not write"
    );
    running.stop().await;
    cluster.cleanup(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_written_while_nothing_drifts() {
    let cluster = Cluster::start("quiet").await;
    cluster.workload_mode(WorkloadMode::Ready);
    let ns = cluster.namespace.clone();
    let web = deployment(&ns, "web");
    let cms: Vec<_> = (0..20)
        .map(|i| config_map(&ns, &format!("cm-{i}"), "1"))
        .collect();
    let mut objects: Vec<_> = cms.iter().collect();
    objects.push(&web);
    let store = store(cluster.dir(), "agent");
    commit(&store, vec![app("web", &objects)], &objects);
    let running = run(&cluster, &store).await;
    app_status(&store, "web", "web healthy", |a| {
        a.health == AppHealth::Healthy
    })
    .await;

    // Converged: over a quiet period neither the agent nor the server sees a single write.
    if let Some(sim) = cluster.sim() {
        sim.reset_request_counts();
    }
    running.wire.reset();
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        running.wire.writes(),
        0,
        "agent writes while nothing drifted"
    );
    assert_eq!(cluster.server_writes().unwrap_or(0), 0, "server saw writes");
    assert_eq!(
        running.wire.count("list") + running.wire.count("get"),
        0,
        "no polling"
    );

    // A new version carrying the identical state re-applies without writing either.
    let version = commit(&store, vec![app("web", &objects)], &[]);
    running.held.send_replace(version);
    until("the new version applied", DEADLINE, || async {
        (store.applied_version().unwrap() == version).then_some(())
    })
    .await;
    assert_eq!(
        running.wire.writes(),
        0,
        "re-applying identical state wrote"
    );
    assert_eq!(cluster.server_writes().unwrap_or(0), 0);
    running.stop().await;
    cluster.cleanup(&[]).await;
}
