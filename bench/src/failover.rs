//! `failover`: a hub of three real replica processes and N agents spread over them (each agent's
//! `--hub` list starts at another replica). Each round kills the leader with SIGKILL, commits a
//! change at once, and measures the time from the kill to a new leader and to every cluster applying
//! the new commit; then restarts the killed replica and waits until every replica caught up before
//! the next round. It reports only after every cluster converged in every round.

use std::time::{Duration, Instant};

use anyhow::ensure;
use flotilla_tests::fixture::GitRepo;
use flotilla_tests::replicated::ReplicatedHub;

const MANIFEST: &str = "apps:\n  - name: base\n    path: apps/base\n    namespace: web\n";

/// The one object of the benchmarks' app, changed each round.
pub(crate) fn config_map(round: usize) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  round: \"{round}\"\n"
    )
}

/// Three replicas (behind fault proxies if `proxied`) with the benchmarks' app, `extra_config` in
/// every hub.yaml, and `agents` agents spread over them, every one converged on the first commit.
pub(crate) async fn fleet(proxied: bool, agents: usize, extra_config: &str) -> ReplicatedHub {
    let fill = |repo: &GitRepo| {
        repo.write("flotilla.yaml", MANIFEST)
            .write("apps/base/objects.yaml", &config_map(0));
        repo.commit("round 0");
    };
    let mut hub = if proxied {
        ReplicatedHub::start_proxied(3, fill, extra_config, "").await
    } else {
        ReplicatedHub::start(3, fill, extra_config).await
    };
    for i in 0..agents {
        hub.add_agent(&format!("edge-{i}"), "tier=edge", i % 3 + 1)
            .await;
    }
    let first = hub.repo.git(&["rev-parse", "HEAD"]);
    hub.wait_converged(&first).await;
    hub
}

fn summary(name: &str, mut samples: Vec<Duration>) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "{name}: median {:.0} ms, min {:.0} ms, max {:.0} ms over {} kills",
        ms(samples[samples.len() / 2]),
        ms(samples[0]),
        ms(samples[samples.len() - 1]),
        samples.len()
    )
}

pub async fn failover(kills: usize, agents: usize) -> anyhow::Result<()> {
    ensure!(kills >= 1 && agents >= 1, "at least one kill and one agent");
    let mut hub = fleet(false, agents, "").await;
    let (mut elected, mut converged) = (Vec::new(), Vec::new());
    for round in 1..=kills {
        let leader = hub.leader().await;
        let killed = Instant::now();
        hub.replicas[(leader - 1) as usize].kill().await;
        hub.repo.write("apps/base/objects.yaml", &config_map(round));
        let commit = hub.repo.commit(&format!("round {round}"));
        // The first new leader the two survivors agree on.
        let new_leader = loop {
            let next = hub.leader().await;
            if next != leader {
                break next;
            }
        };
        elected.push(killed.elapsed());
        hub.wait_converged(&commit).await;
        converged.push(killed.elapsed());
        println!(
            "kill {round}: leader {leader} -> {new_leader}: elected {:.0} ms, {agents} clusters on the new commit {:.0} ms",
            elected[round - 1].as_secs_f64() * 1000.0,
            converged[round - 1].as_secs_f64() * 1000.0
        );
        hub.replicas[(leader - 1) as usize].start().await?;
        hub.wait_hub_status("every replica caught up", |s| {
            s.replicas.len() == 3
                && s.replicas
                    .iter()
                    .all(|r| (r.role == "leader" || r.role == "follower") && r.lag == 0)
        })
        .await;
    }
    println!("{}", summary("kill -> new leader", elected));
    println!(
        "{}",
        summary(
            &format!("kill -> {agents} clusters applied the next commit"),
            converged
        )
    );
    hub.shutdown().await;
    Ok(())
}
