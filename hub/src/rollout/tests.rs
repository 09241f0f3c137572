//! Table-style tests of the engine with simulated time: a fleet whose agents answer as the test says.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_common::labels::Labels;
use flotilla_common::status::AppHealth;

use super::*;
use crate::manifest::parse_manifest;
use flotilla_common::limits::Limits;

const NEW: &str = "release-new";
const OLD: &str = "release-old";

fn spec(rollout_yaml: &str) -> RolloutSpec {
    let text = format!("apps:\n  - name: web\n    path: web\n    rollout:\n{rollout_yaml}");
    parse_manifest(&text, &Limits::default())
        .unwrap()
        .apps
        .remove(0)
        .rollout
        .unwrap()
}

/// A simulated fleet: labels, contact, and what each agent reports.
struct Sim {
    clusters: BTreeMap<String, ClusterView>,
    /// ClusterState version counter per cluster (what the hub issued).
    versions: BTreeMap<String, u64>,
    now: i64,
}

impl Sim {
    fn new(clusters: &[(&str, &str)]) -> Sim {
        let mut map = BTreeMap::new();
        for (id, ring) in clusters {
            map.insert(
                id.to_string(),
                ClusterView {
                    id: id.to_string(),
                    labels: Labels::from([("ring".to_string(), ring.to_string())]),
                    last_contact: 1_000,
                    report: Some(AppReport {
                        version: 1,
                        release_id: OLD.into(),
                        failed: false,
                        health: AppHealth::Healthy,
                    }),
                },
            );
        }
        Sim {
            versions: map.keys().map(|k| (k.clone(), 1)).collect(),
            clusters: map,
            now: 1_000,
        }
    }

    fn fleet(&self) -> Vec<ClusterView> {
        self.clusters.values().cloned().collect()
    }

    /// Every cluster not taken offline (`last_contact` 0) is in contact now.
    fn touch(&mut self) {
        let now = self.now;
        for c in self.clusters.values_mut() {
            if c.last_contact > 0 {
                c.last_contact = now;
            }
        }
    }

    fn report(&mut self, id: &str, health: AppHealth) {
        let version = self.versions[id];
        let c = self.clusters.get_mut(id).unwrap();
        c.report = Some(AppReport {
            version,
            release_id: NEW.into(),
            failed: false,
            health,
        });
        c.last_contact = self.now;
    }
}

/// Steps the engine, applies its decisions, and issues a new ClusterState version to every cluster that
/// was assigned (as the controller does). Returns the decisions.
fn drive(r: &mut Rollout, policy: &Policy, sim: &mut Sim) -> Vec<Decision> {
    let (decisions, _) = step(r, policy, &sim.fleet(), sim.now);
    for d in &decisions {
        r.apply(d, sim.now);
        if let Decision::Assign { cluster } = d {
            let v = sim.versions.get_mut(cluster).unwrap();
            *v += 1;
            r.issued(cluster, *v);
        }
    }
    decisions
}

fn assigned(decisions: &[Decision]) -> Vec<&str> {
    decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Assign { cluster } => Some(cluster.as_str()),
            _ => None,
        })
        .collect()
}

fn policy(spec: RolloutSpec) -> Policy {
    Policy {
        spec,
        offline_after: Duration::from_secs(300),
    }
}

const THREE_STAGES: &str = "      stages:\n        - {name: canary, selector: {matchLabels: {ring: canary}}, maxUnavailable: 1, bake: 10m}\n        - {name: wave, selector: {matchLabels: {ring: wave}}, maxUnavailable: 50%}\n      failureBudget: 0\n      onFailure: rollback\n      progressDeadline: 15m\n";

fn fleet10() -> Sim {
    Sim::new(&[
        ("c0", "canary"),
        ("c1", "wave"),
        ("c2", "wave"),
        ("c3", "wave"),
        ("c4", "wave"),
        ("c5", "other"),
        ("c6", "other"),
        ("c7", "other"),
        ("c8", "other"),
        ("c9", "other"),
    ])
}

#[test]
fn stages_by_selector_with_an_implicit_last_stage() {
    let sim = fleet10();
    let s = spec(THREE_STAGES);
    let r = Rollout::new("web", NEW, OLD, &s, &sim.fleet(), sim.now);
    let names: Vec<&str> = r.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["canary", "wave", REST_STAGE]);
    assert_eq!(r.stages[0].clusters, ["c0"]);
    assert_eq!(r.stages[1].clusters, ["c1", "c2", "c3", "c4"]);
    assert_eq!(r.stages[2].clusters.len(), 5);
    assert!(warnings(&s, &sim.fleet()).is_empty());
    // Every cluster keeps the previous release until its stage reaches it.
    assert!(sim.clusters.keys().all(|c| r.release_for(c) == OLD));
}

#[test]
fn a_full_rollout_with_fenced_status_bake_and_max_unavailable() {
    let mut sim = fleet10();
    let p = policy(spec(THREE_STAGES));
    let mut r = Rollout::new("web", NEW, OLD, &p.spec, &sim.fleet(), sim.now);

    let d = drive(&mut r, &p, &mut sim);
    assert_eq!(assigned(&d), ["c0"]);
    assert_eq!(r.release_for("c0"), NEW);
    assert_eq!(r.release_for("c1"), OLD);

    // A stale report (healthy, but for the version before the release) promotes nothing.
    sim.clusters.get_mut("c0").unwrap().report = Some(AppReport {
        version: 1,
        release_id: NEW.into(),
        failed: false,
        health: AppHealth::Healthy,
    });
    assert!(drive(&mut r, &p, &mut sim).is_empty());
    // Healthy on the fenced version: the stage is healthy and bakes for 10 minutes.
    sim.report("c0", AppHealth::Healthy);
    let d = drive(&mut r, &p, &mut sim);
    assert!(d.contains(&Decision::StageHealthy { stage: 0 }), "{d:?}");
    let (none, wake) = step(&r, &p, &sim.fleet(), sim.now);
    assert!(none.is_empty());
    assert_eq!(wake, Wake::At(sim.now + 600));
    sim.now += 599;
    sim.touch();
    assert!(drive(&mut r, &p, &mut sim).is_empty());
    sim.now += 1;
    sim.touch();
    let d = drive(&mut r, &p, &mut sim);
    assert!(d.contains(&Decision::StageCompleted { stage: 0 }), "{d:?}");
    // wave: 4 clusters at 50% → two at a time.
    assert_eq!(assigned(&d), ["c1", "c2"]);
    sim.report("c1", AppHealth::Progressing);
    assert!(assigned(&drive(&mut r, &p, &mut sim)).is_empty());
    sim.report("c1", AppHealth::Healthy);
    assert_eq!(assigned(&drive(&mut r, &p, &mut sim)), ["c3"]);
    for c in ["c2", "c3"] {
        sim.report(c, AppHealth::Healthy);
    }
    assert_eq!(assigned(&drive(&mut r, &p, &mut sim)), ["c4"]);
    sim.report("c4", AppHealth::Healthy);
    // No bake on wave: straight to the implicit stage (25% of 5 → 1 at a time).
    let d = drive(&mut r, &p, &mut sim);
    assert!(d.contains(&Decision::StageCompleted { stage: 1 }), "{d:?}");
    assert_eq!(assigned(&d), ["c5"]);
    for c in ["c5", "c6", "c7", "c8", "c9"] {
        sim.report(c, AppHealth::Healthy);
        drive(&mut r, &p, &mut sim);
    }
    assert_eq!(r.phase, Phase::Completed);
    assert!(sim.clusters.keys().all(|c| r.release_for(c) == NEW));
}

#[test]
fn a_failing_canary_rolls_back_every_touched_cluster() {
    let mut sim = fleet10();
    let p = policy(spec(THREE_STAGES));
    let mut r = Rollout::new("web", NEW, OLD, &p.spec, &sim.fleet(), sim.now);
    drive(&mut r, &p, &mut sim);
    sim.report("c0", AppHealth::Degraded);
    // Degraded while updating is not yet failure; the progress deadline makes it one.
    assert!(drive(&mut r, &p, &mut sim).is_empty());
    sim.now += 15 * 60;
    sim.touch();
    let d = drive(&mut r, &p, &mut sim);
    assert!(
        matches!(&d[0], Decision::ClusterFailed { cluster, reason } if cluster == "c0" && reason.contains("progressDeadline")),
        "{d:?}"
    );
    let Some(Decision::RolledBack { clusters, reason }) = d.last() else {
        panic!("{d:?}")
    };
    assert_eq!(clusters, &["c0"]);
    assert!(reason.contains("over the failure budget of 0"), "{reason}");
    assert!(sim.clusters.keys().all(|c| r.release_for(c) == OLD));
    assert!(r.ended());
}

#[test]
fn a_cluster_that_turns_unhealthy_during_the_bake_fails_and_pause_holds_everything() {
    let mut sim = fleet10();
    let p = policy(spec(
        &THREE_STAGES.replace("onFailure: rollback", "onFailure: pause"),
    ));
    let mut r = Rollout::new("web", NEW, OLD, &p.spec, &sim.fleet(), sim.now);
    drive(&mut r, &p, &mut sim);
    sim.report("c0", AppHealth::Healthy);
    drive(&mut r, &p, &mut sim);
    sim.now += 60;
    sim.report("c0", AppHealth::Degraded);
    let d = drive(&mut r, &p, &mut sim);
    assert!(
        matches!(&d[0], Decision::ClusterFailed { reason, .. } if reason.contains("during the bake")),
        "{d:?}"
    );
    assert!(matches!(r.phase, Phase::Paused { .. }), "{:?}", r.phase);
    // Paused: nothing moves, c0 keeps the new release, the others the old.
    sim.now += 3600;
    sim.touch();
    assert!(drive(&mut r, &p, &mut sim).is_empty());
    assert_eq!(r.release_for("c0"), NEW);
    assert_eq!(r.release_for("c1"), OLD);
    // Resume after a fix: c0 is tried again.
    r.resume();
    assert_eq!(assigned(&drive(&mut r, &p, &mut sim)), ["c0"]);
}

#[test]
fn manual_approval_waits_and_records_who() {
    let mut sim = fleet10();
    let p = policy(spec(&THREE_STAGES.replace(
        "maxUnavailable: 50%}",
        "maxUnavailable: 50%, approval: manual}",
    )));
    let mut r = Rollout::new("web", NEW, OLD, &p.spec, &sim.fleet(), sim.now);
    drive(&mut r, &p, &mut sim);
    sim.report("c0", AppHealth::Healthy);
    drive(&mut r, &p, &mut sim);
    sim.now += 600;
    sim.touch();
    let d = drive(&mut r, &p, &mut sim);
    assert_eq!(d, [Decision::StageCompleted { stage: 0 }]);
    sim.now += 86_400;
    sim.touch();
    assert!(drive(&mut r, &p, &mut sim).is_empty(), "waits for approval");
    assert_eq!(r.awaiting_approval(&p.spec), Some(1));
    assert_eq!(r.approve(&p.spec, "admin@example", sim.now), Ok(1));
    assert_eq!(r.awaiting_approval(&p.spec), None);
    assert!(
        r.approve(&p.spec, "admin@example", sim.now).is_err(),
        "no second manual stage"
    );
    assert_eq!(
        r.stages[1].approved,
        Some(("admin@example".into(), sim.now))
    );
    assert_eq!(assigned(&drive(&mut r, &p, &mut sim)), ["c1", "c2"]);
}

#[test]
fn offline_clusters_are_deferred_and_catch_up_when_back() {
    let mut sim = fleet10();
    let p = policy(spec(THREE_STAGES));
    sim.clusters.get_mut("c0").unwrap().last_contact = 0; // offline for 1000 s
    let mut r = Rollout::new("web", NEW, OLD, &p.spec, &sim.fleet(), sim.now);
    let d = drive(&mut r, &p, &mut sim);
    assert!(
        d.contains(&Decision::ClusterDeferred {
            cluster: "c0".into()
        }),
        "{d:?}"
    );
    // The canary stage has only a deferred cluster: it does not block (and bakes from now).
    assert!(d.contains(&Decision::StageHealthy { stage: 0 }), "{d:?}");
    assert_eq!(r.release_for("c0"), OLD);
    // Back online: it gets the release it should have.
    sim.now += 60;
    sim.clusters.get_mut("c0").unwrap().last_contact = sim.now;
    assert_eq!(assigned(&drive(&mut r, &p, &mut sim)), ["c0"]);
    assert_eq!(r.release_for("c0"), NEW);
}

#[test]
fn relabelled_and_deleted_clusters_mid_rollout() {
    let mut sim = fleet10();
    let p = policy(spec(THREE_STAGES));
    let mut r = Rollout::new("web", NEW, OLD, &p.spec, &sim.fleet(), sim.now);
    drive(&mut r, &p, &mut sim);
    // c5 becomes a wave cluster before wave starts; c1 is deleted.
    sim.clusters.get_mut("c5").unwrap().labels =
        Labels::from([("ring".to_string(), "wave".to_string())]);
    sim.clusters.remove("c1");
    sim.report("c0", AppHealth::Healthy);
    drive(&mut r, &p, &mut sim);
    sim.now += 600;
    sim.touch();
    let d = drive(&mut r, &p, &mut sim);
    let Some(Decision::StageStarted { clusters, .. }) = d
        .iter()
        .find(|d| matches!(d, Decision::StageStarted { stage: 1, .. }))
    else {
        panic!("{d:?}")
    };
    assert_eq!(clusters, &["c2", "c3", "c4", "c5"]);
}

#[test]
fn a_restarted_hub_resumes_the_bake_from_the_recorded_time() {
    let mut sim = fleet10();
    let p = policy(spec(THREE_STAGES));
    let mut r = Rollout::new("web", NEW, OLD, &p.spec, &sim.fleet(), sim.now);
    drive(&mut r, &p, &mut sim);
    sim.report("c0", AppHealth::Healthy);
    drive(&mut r, &p, &mut sim);
    let bake_started = sim.now;
    // The hub stops 5 minutes into the bake and comes back: the state round-trips through its store.
    let stored = serde_json::to_vec(&r).unwrap();
    let mut r: Rollout = serde_json::from_slice(&stored).unwrap();
    sim.now += 300;
    sim.touch();
    let (d, wake) = step(&r, &p, &sim.fleet(), sim.now);
    assert!(d.is_empty());
    assert_eq!(wake, Wake::At(bake_started + 600));
    sim.now = bake_started + 600;
    sim.touch();
    assert!(drive(&mut r, &p, &mut sim).contains(&Decision::StageCompleted { stage: 0 }));
}

#[test]
fn warnings_for_selectors_and_budgets() {
    let sim = fleet10();
    let s = spec(
        "      stages:\n        - {name: moon, selector: {matchLabels: {ring: moon}}}\n        - {name: all, selector: {}}\n        - {name: late, selector: {matchLabels: {ring: canary}}}\n      failureBudget: 10\n",
    );
    let w = warnings(&s, &sim.fleet());
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(
        w[0].contains("\"moon\": selector ring=moon matches no cluster"),
        "{w:?}"
    );
    assert!(
        w[1].contains("\"late\": every cluster its selector matches is in an earlier stage"),
        "{w:?}"
    );
    assert!(
        w[2].contains("failureBudget 10 is not smaller than the 10 targeted clusters"),
        "{w:?}"
    );
}

#[test]
fn max_unavailable_counts_and_percentages() {
    assert_eq!(max_unavailable(MaxUnavailable::Count(3), 10), 3);
    assert_eq!(max_unavailable(MaxUnavailable::Percent(10), 10), 1);
    assert_eq!(max_unavailable(MaxUnavailable::Percent(10), 5), 1);
    assert_eq!(max_unavailable(MaxUnavailable::Percent(25), 100), 25);
    assert_eq!(max_unavailable(MaxUnavailable::Percent(100), 7), 7);
}

#[test]
fn a_new_release_supersedes_the_rollout_from_the_first_stage() {
    let mut sim = fleet10();
    let p = policy(spec(THREE_STAGES));
    let mut r = Rollout::new("web", NEW, OLD, &p.spec, &sim.fleet(), sim.now);
    drive(&mut r, &p, &mut sim);
    assert_eq!(r.release_for("c0"), NEW);
    let mut next = r.supersede("release-newer", &p.spec, &sim.fleet(), sim.now);
    // c0 keeps the superseded release until the canary stage gives it the newer one; the rest keep OLD.
    assert_eq!(next.release_for("c0"), NEW);
    assert_eq!(next.release_for("c1"), OLD);
    let (d, _) = step(&next, &p, &sim.fleet(), sim.now);
    for x in &d {
        next.apply(x, sim.now);
    }
    assert_eq!(assigned(&d), ["c0"]);
    assert_eq!(next.release_for("c0"), "release-newer");
    // A rollback of the newer release gives each touched cluster what it had before it.
    next.apply(
        &Decision::RolledBack {
            reason: "test".into(),
            clusters: vec!["c0".into()],
        },
        sim.now,
    );
    assert_eq!(next.release_for("c0"), NEW);
    assert_eq!(next.release_for("c1"), OLD);
}

#[test]
fn an_operator_pause_holds_and_resume_continues() {
    let mut sim = fleet10();
    let p = policy(spec(THREE_STAGES));
    let mut r = Rollout::new("web", NEW, OLD, &p.spec, &sim.fleet(), sim.now);
    r.pause("change freeze");
    assert!(drive(&mut r, &p, &mut sim).is_empty());
    assert_eq!(
        r.phase,
        Phase::Paused {
            reason: "change freeze".into()
        }
    );
    r.resume();
    assert_eq!(assigned(&drive(&mut r, &p, &mut sim)), ["c0"]);
}

#[test]
fn a_cluster_not_healthy_by_the_progress_deadline_fails() {
    let mut sim = fleet10();
    let p = policy(spec(
        "      stages:\n        - {name: canary, selector: {matchLabels: {ring: canary}}}\n      failureBudget: 0\n      onFailure: pause\n      progressDeadline: 5m\n",
    ));
    let mut r = Rollout::new("web", NEW, OLD, &p.spec, &sim.fleet(), sim.now);
    assert_eq!(assigned(&drive(&mut r, &p, &mut sim)), ["c0"]);
    // Progressing on the new release is not healthy; the engine asks to be woken at the deadline.
    sim.report("c0", AppHealth::Progressing);
    let (d, wake) = step(&r, &p, &sim.fleet(), sim.now + 60);
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(wake, Wake::At(sim.now + 300));
    sim.now += 300;
    sim.touch();
    let d = drive(&mut r, &p, &mut sim);
    assert!(
        matches!(&d[0], Decision::ClusterFailed { cluster, reason } if cluster == "c0" && reason.contains("progressDeadline")),
        "{d:?}"
    );
    assert!(matches!(d[1], Decision::Halted { .. }), "{d:?}");
    // Paused where it is: c0 keeps the new release, nobody else gets it.
    assert_eq!(r.release_for("c0"), NEW);
    assert_eq!(r.release_for("c1"), OLD);
}

#[test]
fn a_stale_report_from_before_the_release_never_counts() {
    let mut sim = fleet10();
    let p = policy(spec(THREE_STAGES));
    let mut r = Rollout::new("web", NEW, OLD, &p.spec, &sim.fleet(), sim.now);
    drive(&mut r, &p, &mut sim);
    // A healthy report naming the new release but about the version before the one that carried it
    // (an agent that had not seen the new state yet): not healthy.
    let c0 = sim.clusters.get_mut("c0").unwrap();
    c0.report = Some(AppReport {
        version: 1,
        release_id: NEW.into(),
        failed: false,
        health: AppHealth::Healthy,
    });
    assert!(drive(&mut r, &p, &mut sim).is_empty());
    // Nor one about the new version that names another release.
    c0_report(&mut sim, 2, OLD);
    assert!(drive(&mut r, &p, &mut sim).is_empty());
    c0_report(&mut sim, 2, NEW);
    assert_eq!(
        drive(&mut r, &p, &mut sim)[0],
        Decision::ClusterHealthy {
            cluster: "c0".into()
        }
    );
}

fn c0_report(sim: &mut Sim, version: u64, release: &str) {
    sim.clusters.get_mut("c0").unwrap().report = Some(AppReport {
        version,
        release_id: release.into(),
        failed: false,
        health: AppHealth::Healthy,
    });
}

#[test]
fn an_operator_rollback_and_the_next_release_after_an_ended_rollout() {
    let mut sim = fleet10();
    let p = policy(spec(THREE_STAGES));
    let mut r = Rollout::new("web", NEW, OLD, &p.spec, &sim.fleet(), sim.now);
    drive(&mut r, &p, &mut sim);
    let d = r.rollback("rolled back by admin").unwrap();
    assert_eq!(
        d,
        Decision::RolledBack {
            reason: "rolled back by admin".into(),
            clusters: vec!["c0".into()],
        }
    );
    r.apply(&d, sim.now);
    assert!(r.ended());
    assert_eq!(r.release_for("c0"), OLD);
    assert!(r.rollback("again").is_err());
    assert!(r.approve(&p.spec, "admin", sim.now).is_err());
    // After a rollback the next release replaces the one from before it.
    let next = r.supersede("third", &p.spec, &sim.fleet(), sim.now);
    assert_eq!(next.previous, OLD);
    assert!(next.kept.is_empty());
    // After a completed rollout it replaces the completed one.
    r.phase = Phase::Completed;
    let next = r.supersede("third", &p.spec, &sim.fleet(), sim.now);
    assert_eq!(next.previous, NEW);
    assert!(next.kept.is_empty(), "{:?}", next.kept);
}

#[test]
fn a_record_holds_the_commits_of_the_releases_clusters_get() {
    let mut record = RolloutRecord::initial(1, "web", "main", OLD, "c-old", 5);
    assert!(record.is_initial());
    assert_eq!(
        record.commits_in_use().into_iter().collect::<Vec<_>>(),
        ["c-old"]
    );
    let sim = fleet10();
    let p = policy(spec(THREE_STAGES));
    record.spec = Some(p.spec.clone());
    record.rollout = Rollout::new("web", NEW, OLD, &p.spec, &sim.fleet(), sim.now);
    record.commits.insert(NEW.into(), "c-new".into());
    assert_eq!(
        record.commits_in_use().into_iter().collect::<Vec<_>>(),
        ["c-new", "c-old"]
    );
    record.rollout.phase = Phase::Completed;
    assert_eq!(
        record.commits_in_use().into_iter().collect::<Vec<_>>(),
        ["c-new"]
    );
}

const ANALYSED: &str = "      stages:\n        - name: canary\n          selector: {matchLabels: {ring: canary}}\n          bake: 60s\n          analysis:\n            interval: 20s\n            failureLimit: 1\n            inconclusiveLimit: 2\n            queries:\n              - {name: errors, query: 'rate(errors{cluster=\"{{ cluster.name }}\"}[1m])', max: 0.05}\n              - {name: slo, query: 'avg(slo{app=\"{{ app.name }}\"})', min: 0.99}\n        - {name: wave, selector: {matchLabels: {ring: wave}}}\n      onFailure: rollback\n";

fn measured(stage: usize, key: &str, outcome: Outcome) -> Decision {
    Decision::Measured {
        stage,
        key: key.into(),
        outcome,
        detail: format!("{} of {key}", outcome.as_str()),
    }
}

/// A canary of c0 and c1, healthy on the Release: its bake (and analysis) starts at `sim.now`.
fn analysed_canary() -> (Sim, Policy, Rollout) {
    let mut sim = Sim::new(&[("c0", "canary"), ("c1", "canary"), ("c2", "wave")]);
    let p = policy(spec(ANALYSED));
    let mut r = Rollout::new("web", NEW, OLD, &p.spec, &sim.fleet(), sim.now);
    assert_eq!(assigned(&drive(&mut r, &p, &mut sim)), ["c0"]);
    sim.report("c0", AppHealth::Healthy);
    assert_eq!(assigned(&drive(&mut r, &p, &mut sim)), ["c1"]);
    sim.report("c1", AppHealth::Healthy);
    let d = drive(&mut r, &p, &mut sim);
    assert!(d.contains(&Decision::StageHealthy { stage: 0 }), "{d:?}");
    (sim, p, r)
}

#[test]
fn a_stage_with_analysis_completes_only_on_passing_measurements() {
    let (mut sim, p, mut r) = analysed_canary();
    // Per-cluster for the query that names the cluster, once for the stage for the other.
    let keys: Vec<String> = analysis_keys(&r, &p.spec, 0)
        .into_iter()
        .map(|k| k.key)
        .collect();
    assert_eq!(keys, ["errors@c0", "errors@c1", "slo"]);
    assert!(
        due_measurements(&r, &p.spec, sim.now).is_empty(),
        "the first comes an interval in"
    );
    let (_, wake) = step(&r, &p, &sim.fleet(), sim.now);
    assert_eq!(wake, Wake::At(sim.now + 20));
    sim.now += 20;
    sim.touch();
    assert_eq!(due_measurements(&r, &p.spec, sim.now).len(), 3);
    for k in &keys {
        r.apply(&measured(0, k, Outcome::Pass), sim.now);
    }
    assert!(due_measurements(&r, &p.spec, sim.now).is_empty());
    // Bake not over: nothing.
    assert!(drive(&mut r, &p, &mut sim).is_empty());
    sim.now += 40;
    sim.touch();
    // Bake over, but the newest measurement of slo is inconclusive: the stage does not pass.
    r.apply(&measured(0, "slo", Outcome::Inconclusive), sim.now);
    let (d, wake) = step(&r, &p, &sim.fleet(), sim.now);
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(
        wake,
        Wake::At(sim.now + 1),
        "measurements of errors are overdue"
    );
    r.apply(&measured(0, "slo", Outcome::Pass), sim.now);
    let d = drive(&mut r, &p, &mut sim);
    assert!(d.contains(&Decision::StageCompleted { stage: 0 }), "{d:?}");
    assert_eq!(assigned(&d), ["c2"]);
    assert_eq!(r.stages[0].analysis["slo"].passes, 2);
    assert_eq!(r.stages[0].analysis["slo"].inconclusive_run, 0);
}

#[test]
fn failing_or_inconclusive_analysis_fails_the_stage_by_on_failure() {
    let (mut sim, p, mut r) = analysed_canary();
    sim.now += 20;
    sim.touch();
    // One failure is within failureLimit 1; the second rolls back every touched cluster.
    r.apply(&measured(0, "errors@c1", Outcome::Fail), sim.now);
    assert!(drive(&mut r, &p, &mut sim).is_empty());
    r.apply(&measured(0, "errors@c1", Outcome::Fail), sim.now);
    let d = drive(&mut r, &p, &mut sim);
    let Some(Decision::RolledBack { reason, clusters }) = d.first() else {
        panic!("{d:?}");
    };
    assert_eq!(clusters, &["c0", "c1"]);
    assert_eq!(
        reason,
        "stage canary failed its analysis: query errors on cluster c1 failed 2 times (failureLimit 1): fail of errors@c1"
    );
    assert_eq!(r.release_for("c1"), OLD);

    // Inconclusive twice in a row (inconclusiveLimit 2) fails it too; a pass between resets the run.
    let (mut sim, mut p, mut r) = analysed_canary();
    p.spec.on_failure = crate::manifest::OnFailure::Pause;
    for o in [Outcome::Inconclusive, Outcome::Pass, Outcome::Inconclusive] {
        sim.now += 20;
        r.apply(&measured(0, "slo", o), sim.now);
    }
    sim.touch();
    assert!(drive(&mut r, &p, &mut sim).is_empty());
    r.apply(&measured(0, "slo", Outcome::Inconclusive), sim.now);
    let d = drive(&mut r, &p, &mut sim);
    assert!(
        matches!(&d[..], [Decision::Halted { reason }] if reason.contains("query slo was inconclusive 2 times in a row")),
        "{d:?}"
    );
    // Resuming starts the stage's bake and analysis over.
    r.resume();
    assert!(r.stages[0].analysis.is_empty());
    let d = drive(&mut r, &p, &mut sim);
    assert!(d.contains(&Decision::StageHealthy { stage: 0 }), "{d:?}");
}
