//! `rollout-engine`: the pure rollout engine over a simulated fleet of N clusters in three stages
//! (canary 1%, wave 10% with maxUnavailable 10%, the implicit rest at 25%). Every assigned cluster is
//! issued a version and reports healthy on it at once, so the figure is the engine's own cost per step.
//! Before reporting, it checks the rollout completed and every cluster is on the new Release.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::ensure;
use flotilla_common::labels::Labels;
use flotilla_common::limits::Limits;
use flotilla_common::status::AppHealth;
use flotilla_hub::manifest::parse_manifest;
use flotilla_hub::rollout::{AppReport, ClusterView, Decision, Phase, Policy, Rollout, step};

pub fn rollout_engine(clusters: usize) -> anyhow::Result<()> {
    let manifest = "apps:\n  - name: web\n    path: web\n    rollout:\n      stages:\n        - {name: canary, selector: {matchLabels: {ring: canary}}, maxUnavailable: 5}\n        - {name: wave, selector: {matchLabels: {ring: wave}}, maxUnavailable: 10%}\n      failureBudget: 5\n      progressDeadline: 15m\n";
    let spec = parse_manifest(manifest, &Limits::default())?
        .apps
        .remove(0)
        .rollout
        .expect("the manifest has a rollout");
    let policy = Policy {
        spec: spec.clone(),
        offline_after: Duration::from_secs(300),
    };
    let mut now = 1_000_000;
    let mut fleet: BTreeMap<String, ClusterView> = (0..clusters)
        .map(|i| {
            let ring = if i % 100 == 0 {
                "canary"
            } else if i % 10 == 0 {
                "wave"
            } else {
                "other"
            };
            let id = format!("c-{i:016x}");
            (
                id.clone(),
                ClusterView {
                    id,
                    labels: Labels::from([("ring".to_string(), ring.to_string())]),
                    last_contact: now,
                    report: None,
                },
            )
        })
        .collect();
    let mut rollout = Rollout::new(
        "web",
        "new",
        "old",
        &spec,
        &fleet.values().cloned().collect::<Vec<_>>(),
        now,
    );
    let mut versions: BTreeMap<String, u64> = fleet.keys().map(|k| (k.clone(), 1)).collect();
    let mut times = Vec::new();
    let mut decisions_total = 0;
    let started = Instant::now();
    for _ in 0..100_000 {
        let view: Vec<ClusterView> = fleet.values().cloned().collect();
        let t = Instant::now();
        let (decisions, _) = step(&rollout, &policy, &view, now);
        times.push(t.elapsed());
        if decisions.is_empty() {
            break;
        }
        decisions_total += decisions.len();
        for d in &decisions {
            rollout.apply(d, now);
            if let Decision::Assign { cluster } = d {
                let v = versions.get_mut(cluster).expect("known cluster");
                *v += 1;
                rollout.issued(cluster, *v);
                let c = fleet.get_mut(cluster).expect("known cluster");
                c.report = Some(AppReport {
                    version: *v,
                    release_id: "new".into(),
                    failed: false,
                    health: AppHealth::Healthy,
                });
            }
        }
        now += 1;
        for c in fleet.values_mut() {
            c.last_contact = now;
        }
    }
    let total = started.elapsed();
    ensure!(
        rollout.phase == Phase::Completed,
        "rollout ended {:?}",
        rollout.phase
    );
    ensure!(
        fleet.keys().all(|c| rollout.release_for(c) == "new"),
        "a cluster is not on the new release"
    );
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "rollout-engine, {clusters} clusters in 3 stages: {} steps, {decisions_total} decisions, every cluster on the new release",
        times.len()
    );
    println!(
        "  step: median {:.2} ms, p95 {:.2} ms, max {:.2} ms; whole rollout {:.0} ms (engine plus the simulated fleet)",
        ms(times[times.len() / 2]),
        ms(times[times.len() * 95 / 100]),
        ms(*times.last().expect("at least one step")),
        ms(total)
    );
    Ok(())
}

/// `rollout-fleet`: the real hub and `agents` real agents, each applying to its own Kubernetes API
/// simulator, in the three stages of [`flotilla_tests::rollout::manifest`] with bake 0. Each round commits
/// a release and times commit → the rollout completed and commit → every simulated cluster holding it.
/// Then the canary's Deployment fails on the next release: commit → rolled back, and rolled back → every
/// touched cluster on the previous release again.
pub async fn rollout_fleet(agents: usize, rounds: usize) -> anyhow::Result<()> {
    use flotilla_kubesim::{KubeSim, ObjectRef, WorkloadMode};
    use flotilla_tests::fixture::Fleet;
    use flotilla_tests::rollout::{manifest, poll_rollout, rings, write_release};

    ensure!(
        agents >= 5,
        "at least 5 agents (one canary, three early, one main)"
    );
    let deadline = Duration::from_secs(300);
    let mut fleet = Fleet::start_with_config(
        |repo| {
            write_release(repo, "r0", &manifest("", false));
            repo.commit("r0");
        },
        Duration::from_millis(100),
        "rollouts: {offlineAfter: 30s}\n",
    )
    .await;
    let mut sims = Vec::new();
    for (name, ring) in rings(agents) {
        let sim = KubeSim::start(&fleet.dir.path().join(format!("{name}-kube")))?;
        fleet
            .add_kube_agent(&name, &format!("ring={ring}"), sim.kubeconfig_path())
            .await;
        sims.push(sim);
    }
    wait_all(&sims, "r0", deadline).await?;
    let mut completed = Vec::new();
    let mut applied = Vec::new();
    for round in 1..=rounds {
        let v = format!("r{round}");
        write_release(&fleet.repo, &v, &manifest("", false));
        let started = Instant::now();
        let commit = fleet.repo.commit(&v);
        let done = poll_rollout(&fleet, Duration::from_millis(20), deadline, |r| {
            r.release_commit == commit && r.phase == "completed"
        })
        .await
        .map_err(|last| anyhow::anyhow!("round {round} did not complete: {last:?}"))?;
        completed.push(started.elapsed());
        ensure!(
            done.clusters.len() == agents && done.clusters.iter().all(|c| c.state == "healthy"),
            "round {round}: not every cluster healthy: {done:?}"
        );
        wait_all(&sims, &v, deadline).await?;
        applied.push(started.elapsed());
    }
    // A release the canary fails on: halted by the budget of 0 and rolled back.
    let good = format!("r{rounds}");
    sims[0].set_workload_mode_for(
        ObjectRef {
            kind: "Deployment".into(),
            namespace: "web".into(),
            name: "web".into(),
        },
        WorkloadMode::Failed,
    );
    write_release(&fleet.repo, "bad", &manifest("", false));
    let started = Instant::now();
    let commit = fleet.repo.commit("bad");
    let halted = poll_rollout(&fleet, Duration::from_millis(10), deadline, |r| {
        r.release_commit == commit && r.phase == "rolled-back"
    })
    .await
    .map_err(|last| anyhow::anyhow!("the bad release was not rolled back: {last:?}"))?;
    let to_rollback = started.elapsed();
    let rolled_back = Instant::now();
    wait_all(&sims, &good, deadline).await?;
    let back = rolled_back.elapsed();
    let touched = halted
        .clusters
        .iter()
        .filter(|c| c.state != "waiting")
        .count();
    fleet.shutdown().await;

    let secs = |d: &Duration| d.as_secs_f64();
    let summary = |xs: &mut Vec<Duration>| {
        xs.sort();
        format!(
            "median {:.2} s, min {:.2} s, max {:.2} s",
            secs(&xs[xs.len() / 2]),
            secs(&xs[0]),
            secs(xs.last().expect("a round"))
        )
    };
    println!(
        "rollout-fleet, {agents} agents on simulated clusters, 3 stages (canary 1, early 3 by 2, main {} by 50%), bake 0, {rounds} rounds, every cluster verified on every release",
        agents - 4
    );
    println!("  commit -> rollout completed: {}", summary(&mut completed));
    println!(
        "  commit -> every cluster holds the release: {}",
        summary(&mut applied)
    );
    println!(
        "  canary failing: commit -> rolled back {:.2} s; rolled back -> the {touched} touched cluster(s) on the previous release {:.2} s (polled every 10 ms); the other {} never got it",
        secs(&to_rollback),
        secs(&back),
        agents - touched
    );
    Ok(())
}

fn version_on(sim: &flotilla_kubesim::KubeSim) -> Option<String> {
    sim.get("v1", "ConfigMap", "web", "web")
        .and_then(|cm| cm["data"]["version"].as_str().map(str::to_string))
}

/// Waits until every simulated cluster holds release `v` (polling every 10 ms).
async fn wait_all(
    sims: &[flotilla_kubesim::KubeSim],
    v: &str,
    deadline: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while !sims.iter().all(|s| version_on(s).as_deref() == Some(v)) {
        ensure!(
            started.elapsed() < deadline,
            "not every cluster reached {v}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
