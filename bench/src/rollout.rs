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
