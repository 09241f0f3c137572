//! End-to-end: a hub of three real replica processes (issue 15). Replicas join through
//! `replication.join` and through `flotilla hub add-replica`; agents are spread over the replicas,
//! so followers serve Watches from what they applied; the leader is killed with SIGKILL while a
//! commit lands, and the fleet converges through the new leader without any cluster seeing its
//! version go backwards or a version reused.

use std::time::Instant;

use flotilla_tests::fixture::{GitRepo, accepted_versions};
use flotilla_tests::replicated::{ReplicatedHub, without_contact};

const MANIFEST: &str = "apps:\n  - name: base\n    path: apps/base\n    namespace: web\n";
const BASE: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  color: blue\n";

fn fill(repo: &GitRepo) {
    repo.write("flotilla.yaml", MANIFEST)
        .write("apps/base/objects.yaml", BASE);
    repo.commit("initial");
}

fn agent_log(hub: &ReplicatedHub, agent: usize) -> String {
    std::fs::read_to_string(&hub.agents[agent].log_path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_serve_agents_and_survive_the_leaders_kill() {
    let mut hub = ReplicatedHub::start(3, fill, "").await;
    let status = hub.hub_status().await.expect("hub status");
    assert_eq!(status.replicas.len(), 3, "{status:#?}");
    let leader = hub.leader().await;
    // The real CLI shows the same replicas.
    let shown = hub.cli_json(&["hub", "status"]);
    assert_eq!(
        shown["replicas"].as_array().map(Vec::len),
        Some(3),
        "{shown}"
    );

    for i in 0..3 {
        hub.add_agent(&format!("edge-{}", i + 1), "tier=edge", i + 1)
            .await;
    }
    let first = hub.repo.git(&["rev-parse", "HEAD"]);
    hub.wait_converged(&first).await;
    // Each agent talks to the replica its list starts with: two of them to followers.
    for (i, agent) in hub.agents.iter().enumerate() {
        let log = std::fs::read_to_string(&agent.log_path).unwrap_or_default();
        let url = hub.replicas[i].url();
        assert!(log.contains(&format!("connected to hub {url}")), "{log}");
    }

    // Every replica's store holds the same fleet: each answers with every cluster.
    for id in 1..=3 {
        let clusters = hub.clusters_on(id);
        assert_eq!(clusters.as_array().map(Vec::len), Some(3), "{clusters}");
    }

    // Kill the leader, then commit: a new leader must render and issue it.
    let killed = Instant::now();
    hub.replicas[(leader - 1) as usize].kill().await;
    hub.repo
        .write("apps/base/objects.yaml", &BASE.replace("blue", "green"));
    let second = hub.repo.commit("green");
    hub.wait_converged(&second).await;
    let took = killed.elapsed();
    let new_leader = hub.leader().await;
    assert_ne!(new_leader, leader);
    println!(
        "leader {leader} killed -> {} clusters on the next commit through leader {new_leader}: {:.2}s",
        hub.agents.len(),
        took.as_secs_f64()
    );

    // No cluster ever saw a version go backwards or accepted one twice.
    for i in 0..hub.agents.len() {
        let log = agent_log(&hub, i);
        let versions = accepted_versions(&log);
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "agent {i} accepted {versions:?}\n{log}"
        );
        assert!(!log.contains("Forked"), "{log}");
        assert_eq!(log.matches("registered with hub").count(), 1, "{log}");
    }

    // The killed replica comes back as a follower and catches up.
    hub.replicas[(leader - 1) as usize]
        .start()
        .await
        .expect("restart the old leader");
    let status = hub
        .wait_hub_status("the old leader back and caught up", |s| {
            s.replicas
                .iter()
                .all(|r| r.role == "leader" || r.role == "follower")
                && s.replicas.iter().all(|r| r.lag == 0)
        })
        .await;
    let back = status
        .replicas
        .iter()
        .find(|r| r.id == leader)
        .expect("old leader listed");
    assert_eq!(back.role, "follower", "{status:#?}");

    // Removing a replica leaves two voters; the hub still converges on a new commit.
    let removed = hub.cli_json(&["hub", "remove-replica", &leader.to_string()]);
    let members = removed["members"].as_array().cloned().unwrap_or_default();
    assert_eq!(members.len(), 2, "{removed}");
    assert!(members.iter().all(|m| m["id"] != leader), "{removed}");
    hub.replicas[(leader - 1) as usize].stop().await;
    hub.repo
        .write("apps/base/objects.yaml", &BASE.replace("blue", "red"));
    let third = hub.repo.commit("red");
    hub.wait_converged(&third).await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_purged_log_catches_up_by_snapshot_and_a_full_restart_keeps_the_state()
 {
    // A snapshot every 10 entries, and the log purged behind it but for the newest 10.
    let mut hub = ReplicatedHub::start_with(3, fill, "", "  snapshotEvery: 10").await;
    hub.add_agent("edge-1", "tier=edge", 1).await;
    let first = hub.repo.git(&["rev-parse", "HEAD"]);
    hub.wait_converged(&first).await;
    let leader = hub.leader().await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let f = (follower - 1) as usize;
    hub.replicas[f].stop().await;

    // While it is down: 60 writes, a new cluster and a new commit, far past the kept log.
    hub.write_tokens(60).await;
    hub.add_agent("edge-2", "tier=edge", leader as usize).await;
    hub.repo
        .write("apps/base/objects.yaml", &BASE.replace("blue", "green"));
    let second = hub.repo.commit("green");
    hub.wait_converged(&second).await;

    hub.replicas[f].start().await.expect("restart the follower");
    hub.wait_hub_status("the follower caught up", |s| {
        s.replicas
            .iter()
            .all(|r| (r.role == "leader" || r.role == "follower") && r.lag == 0)
    })
    .await;
    let log = std::fs::read_to_string(&hub.replicas[f].log_path).unwrap_or_default();
    assert!(
        log.contains("installed a snapshot from the leader"),
        "replica {follower} did not catch up by snapshot:\n{log}"
    );
    // It serves what it missed.
    let names = |v: &serde_json::Value| {
        let mut n: Vec<String> = v
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["name"].as_str().unwrap_or_default().to_string())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&hub.clusters_on(follower)), ["edge-1", "edge-2"]);
    let before: Vec<serde_json::Value> = (1..=3).map(|id| hub.clusters_on(id)).collect();

    // Every replica stopped, then all started together: the same state, and the hub goes on.
    for r in &mut hub.replicas {
        r.stop().await;
    }
    for r in &mut hub.replicas {
        r.launch().expect("launch");
    }
    for r in &mut hub.replicas {
        r.wait_listening(flotilla_tests::fixture::CONVERGE)
            .await
            .expect("replica back");
    }
    hub.leader().await;
    for id in 1..=3u64 {
        let after = hub.clusters_on(id);
        assert_eq!(
            without_contact(&after),
            without_contact(&before[(id - 1) as usize]),
            "replica {id}"
        );
    }
    hub.repo
        .write("apps/base/objects.yaml", &BASE.replace("blue", "red"));
    let third = hub.repo.commit("red");
    hub.wait_converged(&third).await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_cannot_commit_and_the_majority_carries_on() {
    // Watch heartbeats every second, so an agent on a cut-off replica moves on soon.
    let mut hub =
        ReplicatedHub::start_proxied(3, fill, "rollouts:\n  offlineAfter: 3s\n", "").await;
    for i in 0..3 {
        hub.add_agent(&format!("edge-{}", i + 1), "tier=edge", i + 1)
            .await;
    }
    let first = hub.repo.git(&["rev-parse", "HEAD"]);
    hub.wait_converged(&first).await;
    let old = hub.leader().await;
    let before = hub.clusters_on(old);

    hub.partition(old);
    hub.repo
        .write("apps/base/objects.yaml", &BASE.replace("blue", "green"));
    let second = hub.repo.commit("green");
    // The majority elects a leader of its own and every agent, the one that watched the old
    // leader included, gets the commit through it.
    let others: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
    let new = hub.leader_seen_by(others[0]).await;
    assert_ne!(new, old);
    hub.wait_converged_on(new, &second).await;
    // The cut-off leader committed nothing: its store still holds what it had.
    assert_eq!(
        without_contact(&hub.clusters_on(old)),
        without_contact(&before)
    );

    // Healed, the old leader steps down, follows, and gets what the majority committed.
    hub.heal();
    let status = hub
        .wait_hub_status("the old leader a follower again and caught up", |s| {
            s.replicas.iter().filter(|r| r.role == "leader").count() == 1
                && s.replicas.iter().all(|r| r.lag == 0)
                && s.replicas
                    .iter()
                    .any(|r| r.id == old && r.role == "follower")
        })
        .await;
    let leader = status
        .replicas
        .iter()
        .find(|r| r.role == "leader")
        .map(|r| r.id)
        .expect("leader");
    assert_eq!(
        without_contact(&hub.clusters_on(old)),
        without_contact(&hub.clusters_on(leader))
    );
    for i in 0..hub.agents.len() {
        let log = agent_log(&hub, i);
        let versions = accepted_versions(&log);
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "agent {i} accepted {versions:?}"
        );
    }
    hub.repo
        .write("apps/base/objects.yaml", &BASE.replace("blue", "red"));
    let third = hub.repo.commit("red");
    hub.wait_converged(&third).await;
    hub.shutdown().await;
}
