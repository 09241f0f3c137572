//! Staged rollouts end to end with the real binaries: ten agents, each applying to its own Kubernetes API
//! simulator, in three stages. A release reaches the stages in order; a canary whose Deployment fails
//! halts the next release and rolls the canary back (the other clusters never see it); a bake survives a
//! hub restart from its recorded start; an approval gate waits for `approve`; an offline cluster neither
//! blocks its stage nor fails it, and catches up when it returns.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flotilla_kubesim::KubeSim;
use flotilla_kubesim::{ObjectRef, WorkloadMode};
use flotilla_proto::v1 as pb;
use flotilla_tests::fixture::{CONVERGE, Fleet, eventually};
use flotilla_tests::rollout::{
    events, get_rollout, manifest, poll_rollout, rings as ring_names, write_release,
};

fn version_on(sim: &KubeSim) -> Option<String> {
    sim.get("v1", "ConfigMap", "web", "web")
        .and_then(|cm| cm["data"]["version"].as_str().map(str::to_string))
}

async fn rollout(fleet: &Fleet) -> Option<pb::Rollout> {
    get_rollout(fleet).await
}

/// Waits until the app's rollout satisfies `check`; returns it.
async fn wait_rollout(
    fleet: &Fleet,
    what: &str,
    check: impl Fn(&pb::Rollout) -> bool,
) -> pb::Rollout {
    match poll_rollout(fleet, Duration::from_millis(100), CONVERGE, check).await {
        Ok(r) => r,
        Err(last) => panic!("timed out waiting for {what}; last rollout: {last:#?}"),
    }
}

fn stage<'a>(r: &'a pb::Rollout, name: &str) -> &'a pb::RolloutStage {
    r.stages.iter().find(|s| s.name == name).expect("stage")
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_roll_out_by_stage_halt_roll_back_bake_through_a_restart_and_wait_for_approval() {
    let mut fleet = Fleet::start_with_config(
        |repo| {
            write_release(repo, "v1", &manifest("", false));
            repo.commit("v1");
        },
        Duration::from_millis(200),
        "rollouts: {offlineAfter: 3s}\n",
    )
    .await;
    let rings = ring_names(10);
    let mut sims = BTreeMap::new();
    for (name, ring) in &rings {
        let sim = KubeSim::start(&fleet.dir.path().join(format!("{name}-kube"))).unwrap();
        fleet
            .add_kube_agent(name, &format!("ring={ring}"), sim.kubeconfig_path())
            .await;
        sims.insert(name.clone(), sim);
    }
    let v1 = fleet.repo.git(&["rev-parse", "HEAD"]);
    // The app's first release has nothing to protect: it goes everywhere at once.
    fleet.wait_converged(&v1).await;
    assert!(
        rollout(&fleet).await.is_none(),
        "the first release is not staged"
    );

    // v2 rolls out stage by stage (no bake): canary, then early, then main.
    write_release(&fleet.repo, "v2", &manifest("", false));
    let started = Instant::now();
    let v2 = fleet.repo.commit("v2");
    let done = wait_rollout(&fleet, "v2 completed", |r| {
        r.release_commit == v2 && r.phase == "completed"
    })
    .await;
    let elapsed = started.elapsed();
    eprintln!(
        "figure: commit -> last stage complete, 10 agents, 3 stages, bake 0: {:.2}s",
        elapsed.as_secs_f64()
    );
    assert_eq!(done.clusters.len(), 10);
    assert!(
        done.clusters.iter().all(|c| c.state == "healthy"),
        "{done:#?}"
    );
    let names: Vec<&str> = done.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["canary", "early", "main"]);
    for (a, b) in done.stages.iter().zip(done.stages.iter().skip(1)) {
        assert!(
            a.completed_at <= b.started_at,
            "{} before {}: {done:#?}",
            a.name,
            b.name
        );
    }
    fleet.wait_converged(&v2).await;
    // Events show the order: no early or main cluster was given v2 before the canary stage completed.
    let log = events(&fleet);
    let position = |pred: &dyn Fn(&serde_json::Value) -> bool| log.iter().position(pred);
    let canary_done = position(&|e| {
        e["kind"] == "rollout-stage-completed" && e["message"].as_str().unwrap().contains("canary")
    })
    .expect("canary completed event");
    let first_early = position(&|e| {
        e["kind"] == "rollout-cluster-updating"
            && e["cluster"].as_str().unwrap().starts_with("early-")
    })
    .expect("an early cluster updating");
    assert!(canary_done < first_early, "{log:#?}");

    // v3: the canary's Deployment fails there. The budget of 0 is spent by the canary: the rollout rolls
    // it back to v2 with a new, higher version, and no other cluster ever sees v3.
    sims["canary-1"].set_workload_mode_for(
        ObjectRef {
            kind: "Deployment".into(),
            namespace: "web".into(),
            name: "web".into(),
        },
        WorkloadMode::Failed,
    );
    write_release(&fleet.repo, "v3", &manifest("", false));
    let v3 = fleet.repo.commit("v3");
    let halted = wait_rollout(&fleet, "v3 rolled back", |r| {
        r.release_commit == v3 && r.phase == "rolled-back"
    })
    .await;
    let rolled_back_at = Instant::now();
    assert!(halted.reason.contains("failure budget"), "{halted:#?}");
    // `rollout watch` of a rolled-back rollout ends at once with its exit code.
    let watch = fleet
        .cli_command()
        .args(["rollout", "watch", "web", "--plain"])
        .output()
        .unwrap();
    assert_eq!(watch.status.code(), Some(4), "{watch:?}");
    let canary = halted
        .clusters
        .iter()
        .find(|c| c.name == "canary-1")
        .unwrap();
    assert_eq!(canary.state, "failed", "{halted:#?}");
    assert_eq!(
        canary.release, halted.previous,
        "the canary gets the previous release back"
    );
    let touched: Vec<&str> = halted
        .clusters
        .iter()
        .filter(|c| c.state != "waiting")
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(touched, ["canary-1"], "{halted:#?}");
    eventually("the canary back on v2", CONVERGE, || {
        version_on(&sims["canary-1"]).as_deref() == Some("v2")
    })
    .await;
    eprintln!(
        "figure: rollback decision -> every touched cluster on the previous release: {:.2}s",
        rolled_back_at.elapsed().as_secs_f64()
    );
    let status = fleet.status().await;
    let canary_row = status
        .clusters
        .iter()
        .find(|c| c.cluster.name == "canary-1")
        .unwrap();
    assert!(
        canary_row.cluster.desired_version > canary.version,
        "the rollback is a newer version ({}) than the one that carried v3 ({})",
        canary_row.cluster.desired_version,
        canary.version
    );
    for (name, sim) in &sims {
        assert_eq!(version_on(sim).as_deref(), Some("v2"), "{name}");
    }
    sims["canary-1"].set_workload_mode(WorkloadMode::Ready);

    // v4: the canary bakes for 6s, the early stage waits for an approval, and main-6 is offline.
    let main6 = rings.iter().position(|(n, _)| n == "main-6").unwrap();
    fleet.agents[main6].stop().await;
    write_release(&fleet.repo, "v4", &manifest("6s", true));
    let v4 = fleet.repo.commit("v4");
    wait_rollout(&fleet, "the v4 rollout", |r| r.release_commit == v4).await;
    // An operator follows it with `rollout watch` through the hub restart below, to its end.
    let watcher = fleet
        .cli_command()
        .args(["rollout", "watch", "web", "--plain", "--interval", "200ms"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let baking = wait_rollout(&fleet, "the canary baking v4", |r| {
        r.release_commit == v4 && stage(r, "canary").state == "baking"
    })
    .await;
    let healthy_at = stage(&baking, "canary").healthy_at;
    // The hub restarts half way through the bake (times are whole seconds): it resumes from the
    // recorded start, not from zero.
    eventually("half of the bake", CONVERGE, || {
        unix_now() >= healthy_at + 3
    })
    .await;
    fleet.hub.stop().await;
    fleet.hub.start().await.expect("hub restart");
    let restarted_at = unix_now();
    let waiting = wait_rollout(&fleet, "the early stage awaiting approval", |r| {
        r.release_commit == v4 && stage(r, "early").state == "awaiting-approval"
    })
    .await;
    let canary_stage = stage(&waiting, "canary");
    assert_eq!(
        canary_stage.healthy_at, healthy_at,
        "the bake start survives the restart"
    );
    assert!(
        canary_stage.completed_at >= healthy_at + 6,
        "{canary_stage:?}"
    );
    assert!(
        canary_stage.completed_at < restarted_at + 6,
        "the bake did not start again after the restart: {canary_stage:?}, restarted at {restarted_at}"
    );
    // Nothing moves past the gate without an approval.
    for i in 1..=3 {
        assert_eq!(
            version_on(&sims[&format!("early-{i}")]).as_deref(),
            Some("v2")
        );
    }
    let approved = fleet.cli_json(&["rollout", "approve", "web"]);
    let early = approved["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "early")
        .unwrap()
        .clone();
    assert_eq!(early["approved_by"], "admin", "{approved}");
    assert!(early["approved_at"].as_i64().unwrap() > 0, "{approved}");
    let again = fleet
        .cli_command()
        .args(["rollout", "approve", "web"])
        .output()
        .unwrap();
    assert!(!again.status.success());
    let message = String::from_utf8_lossy(&again.stderr);
    assert!(
        message.contains("no stage of the rollout waits for an approval"),
        "{message}"
    );

    // main-6 is offline: deferred, it does not hold the rollout back, and catches up when it returns.
    let finished = wait_rollout(&fleet, "v4 completed", |r| {
        r.release_commit == v4 && r.phase == "completed"
    })
    .await;
    let main6_progress = finished
        .clusters
        .iter()
        .find(|c| c.name == "main-6")
        .unwrap();
    assert_eq!(main6_progress.state, "deferred", "{finished:#?}");
    assert_eq!(stage(&finished, "main").deferred, 1);
    for (name, sim) in &sims {
        if name != "main-6" {
            assert_eq!(version_on(sim).as_deref(), Some("v4"), "{name}");
        }
    }
    assert_eq!(version_on(&sims["main-6"]).as_deref(), Some("v2"));
    let watched = tokio::task::spawn_blocking(move || watcher.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let lines = String::from_utf8_lossy(&watched.stdout);
    assert_eq!(
        watched.status.code(),
        Some(0),
        "watch ends with the completed rollout: {lines}\n{}",
        String::from_utf8_lossy(&watched.stderr)
    );
    assert!(lines.contains("completed"), "{lines}");
    let list = fleet.cli_text(&["rollout", "list"]);
    assert!(
        list.contains("rolled-back") && list.contains("completed"),
        "{list}"
    );
    fleet.agents[main6].start().expect("agent restart");
    eventually("main-6 caught up with v4", CONVERGE, || {
        version_on(&sims["main-6"]).as_deref() == Some("v4")
    })
    .await;
    fleet.wait_converged(&v4).await;

    let kinds: Vec<String> = events(&fleet)
        .iter()
        .filter_map(|e| e["kind"].as_str().map(str::to_string))
        .collect();
    for want in [
        "rollout-started",
        "rollout-stage-started",
        "rollout-cluster-updating",
        "rollout-cluster-healthy",
        "rollout-cluster-failed",
        "rollout-rolled-back",
        "rollout-stage-healthy",
        "rollout-awaiting-approval",
        "rollout-approved",
        "rollout-cluster-deferred",
        "rollout-completed",
    ] {
        assert!(
            kinds.iter().any(|k| k == want),
            "{want} missing from {kinds:?}"
        );
    }
    fleet.shutdown().await;
}
