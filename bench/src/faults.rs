//! `fault-run`: the randomized fault run of `tests/tests/e2e_replicas.rs`, longer: three hub replicas
//! behind fault proxies and N agents; each step kills the leader or a follower, partitions the
//! leader, or restores, in an order drawn from the seed, then commits and waits until every cluster
//! applied it. It reports the steps and the time each took only after the run ended with every
//! replica caught up and holding the same state.

use std::time::Instant;

use anyhow::ensure;
use flotilla_tests::replicated::fault_run;

use crate::failover::{config_map, fleet};

pub async fn fault_run_bench(seed: u64, steps: usize, agents: usize) -> anyhow::Result<()> {
    ensure!(steps >= 1 && agents >= 1, "at least one step and one agent");
    let mut hub = fleet(true, agents, "rollouts:\n  offlineAfter: 3s\n").await;
    let started = Instant::now();
    let taken = fault_run(&mut hub, seed, steps, |repo, round| {
        repo.write("apps/base/objects.yaml", &config_map(round));
    })
    .await;
    let elapsed = started.elapsed();
    println!(
        "fault run seed {seed}: {} steps ({} kills, {} partitions, {} restores) with {agents} agents in {:.1} s ({:.2} s per step); every commit converged, no agent accepted a version twice or out of order, every replica holds the same state",
        taken.len(),
        taken
            .iter()
            .filter(|s| matches!(
                s,
                flotilla_tests::replicated::FaultStep::KillLeader
                    | flotilla_tests::replicated::FaultStep::KillFollower
            ))
            .count(),
        taken
            .iter()
            .filter(|s| matches!(s, flotilla_tests::replicated::FaultStep::PartitionLeader))
            .count(),
        taken
            .iter()
            .filter(|s| matches!(s, flotilla_tests::replicated::FaultStep::Restore))
            .count(),
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() / taken.len() as f64
    );
    hub.shutdown().await;
    Ok(())
}
