//! End-to-end: a hub of three real replica processes (issue 15). Replicas join through
//! `replication.join` and through `flotilla hub add-replica`; agents are spread over the replicas,
//! so followers serve Watches from what they applied; the leader is killed with SIGKILL while a
//! commit lands, and the fleet converges through the new leader without any cluster seeing its
//! version go backwards or a version reused.

use std::time::Instant;

use flotilla_tests::fixture::{GitRepo, accepted_versions};
use flotilla_tests::replicated::{ReplicatedHub, fault_run, without_contact};

const MANIFEST: &str = "apps:\n  - name: base\n    path: apps/base\n    namespace: web\n";
const BASE: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  color: blue\n";

fn fill(repo: &GitRepo) {
    repo.write("flotilla.yaml", MANIFEST)
        .write("apps/base/objects.yaml", BASE);
    repo.commit("initial");
}

/// Commits the app's ConfigMap with `color`; returns the commit.
fn recolor(hub: &ReplicatedHub, color: &str) -> String {
    hub.repo
        .write("apps/base/objects.yaml", &BASE.replace("blue", color));
    hub.repo.commit(color)
}

/// Three replicas behind fault proxies (Watch heartbeats every second, so an agent on a cut-off
/// replica moves on soon) and an agent starting at each, converged on the first commit.
async fn proxied_fleet() -> ReplicatedHub {
    let mut hub =
        ReplicatedHub::start_proxied(3, fill, "rollouts:\n  offlineAfter: 3s\n", "").await;
    for i in 0..3 {
        hub.add_agent(&format!("edge-{}", i + 1), "tier=edge", i + 1)
            .await;
    }
    let first = hub.repo.git(&["rev-parse", "HEAD"]);
    hub.wait_converged(&first).await;
    hub
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
    let second = recolor(&hub, "green");
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
    let third = recolor(&hub, "red");
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
    let second = recolor(&hub, "green");
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
    let third = recolor(&hub, "red");
    hub.wait_converged(&third).await;
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_cannot_commit_and_the_majority_carries_on() {
    let hub = proxied_fleet().await;
    let old = hub.leader().await;
    let before = hub.clusters_on(old);

    hub.partition(old);
    let second = recolor(&hub, "green");
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
    let third = recolor(&hub, "red");
    hub.wait_converged(&third).await;
    hub.shutdown().await;
}

/// A cluster registered through the Registration API that streams status reports itself, as its
/// agent would, numbering them 1, 2, 3… with `applied_version` = `seq` so the hub's cluster list
/// shows the newest report it stored. It sends one report at a time and counts it acknowledged
/// only on the hub's ack (which a hub sends once the report is committed); a broken stream, an
/// Unavailable or no ack within 15 s moves it on to the next replica, where it carries on with the
/// report it had not seen acknowledged.
struct Reporter {
    name: String,
    acked: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

async fn registered_identity(hub: &ReplicatedHub, name: &str) -> tonic::transport::Identity {
    use flotilla_proto::v1 as pb;
    let mut admin = flotilla_cli::client::connect_admin(&hub.hub_arg(), &hub.admin_dir())
        .await
        .expect("admin client");
    let token = admin
        .create_token(pb::CreateTokenRequest {
            ttl_seconds: 60,
            labels: Default::default(),
            name: String::new(),
        })
        .await
        .expect("create a token")
        .into_inner()
        .token;
    let (key, csr) = flotilla_agent::identity::new_key_and_csr(name).expect("key");
    let ca = std::fs::read_to_string(hub.replicas[0].ca_path()).expect("CA");
    let channel = hub_channel(&hub.replicas[0].url(), &ca, None)
        .await
        .expect("connect to register");
    let registered = pb::registration_client::RegistrationClient::new(channel)
        .register(pb::RegisterRequest {
            bootstrap_token: token,
            csr_der: csr,
            requested_name: name.into(),
            labels: Default::default(),
            capabilities: None,
        })
        .await
        .expect("register")
        .into_inner();
    tonic::transport::Identity::from_pem(registered.certificate_pem, key)
}

async fn hub_channel(
    url: &str,
    ca: &str,
    identity: Option<tonic::transport::Identity>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca));
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    tonic::transport::Channel::from_shared(url.to_string())
        .expect("URL")
        .tls_config(tls)?
        .connect_timeout(std::time::Duration::from_secs(2))
        .connect()
        .await
}

impl Reporter {
    async fn start(
        hub: &ReplicatedHub,
        name: &str,
        first: usize,
        stop: tokio_util::sync::CancellationToken,
    ) -> Self {
        use flotilla_proto::v1 as pb;
        use std::sync::atomic::Ordering;
        let identity = registered_identity(hub, name).await;
        let ca = std::fs::read_to_string(hub.replicas[0].ca_path()).expect("CA");
        let urls: Vec<String> = hub.urls();
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = acked.clone();
        let task = tokio::spawn(async move {
            let mut at = first;
            while !stop.is_cancelled() {
                let url = &urls[at % urls.len()];
                at += 1;
                let Ok(channel) = hub_channel(url, &ca, Some(identity.clone())).await else {
                    // A pause before the next replica, as an agent backs off.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                };
                let (tx, rx) = tokio::sync::mpsc::channel(1);
                let mut client = pb::agent_client::AgentClient::new(channel);
                let outbound = tokio_stream::wrappers::ReceiverStream::new(rx);
                let Ok(answer) = client.report_status(outbound).await else {
                    continue;
                };
                let mut acks = answer.into_inner();
                while !stop.is_cancelled() {
                    let seq = counter.load(Ordering::SeqCst) + 1;
                    let report = pb::StatusReport {
                        seq,
                        observed_at: seq as i64,
                        applied_version: seq,
                        ..Default::default()
                    };
                    if tx.send(report).await.is_err() {
                        break;
                    }
                    let ack =
                        tokio::time::timeout(std::time::Duration::from_secs(15), acks.message());
                    match ack.await {
                        Ok(Ok(Some(ack))) if ack.seq == seq => counter.store(seq, Ordering::SeqCst),
                        _ => break,
                    }
                }
            }
        });
        Reporter {
            name: name.to_string(),
            acked,
            task,
        }
    }

    fn acked(&self) -> u64 {
        self.acked.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Waits until every reporter had `n` more reports acknowledged than in `from`.
async fn wait_acked(reporters: &[Reporter], from: &[u64], n: u64) {
    let done = flotilla_cli::fleet::wait_for(flotilla_tests::fixture::CONVERGE, || {
        reporters
            .iter()
            .zip(from)
            .all(|(r, f)| r.acked() >= f + n)
            .then_some(())
    })
    .await;
    let acked: Vec<u64> = reporters.iter().map(Reporter::acked).collect();
    assert!(
        done.is_some(),
        "reporters acknowledged {acked:?}, wanted {n} more than {from:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_status_report_is_lost_when_the_leader_is_killed() {
    let mut hub = ReplicatedHub::start(3, fill, "").await;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut reporters = Vec::new();
    // One reporter starting on each replica: the leader's reports are committed there, the
    // followers' are forwarded to it.
    for i in 0..3 {
        reporters.push(Reporter::start(&hub, &format!("probe-{}", i + 1), i, stop.clone()).await);
    }
    let zero = vec![0; reporters.len()];
    wait_acked(&reporters, &zero, 20).await;

    let leader = hub.leader().await;
    let at_kill: Vec<u64> = reporters.iter().map(Reporter::acked).collect();
    hub.replicas[(leader - 1) as usize].kill().await;
    // Every reporter, the one on the killed leader included, gets reports acknowledged again.
    wait_acked(&reporters, &at_kill, 20).await;
    stop.cancel();
    let mut acked = Vec::new();
    for mut r in reporters {
        (&mut r.task).await.expect("reporter");
        acked.push((r.name.clone(), r.acked()));
    }

    println!("reports acknowledged before the kill: {at_kill:?}; in all: {acked:?}");
    // The killed replica back: every replica holds, for every cluster, the last report it
    // acknowledged (or the one after, sent but not yet acknowledged when the reporter stopped).
    hub.replicas[(leader - 1) as usize]
        .start()
        .await
        .expect("restart the killed leader");
    hub.wait_hub_status("every replica caught up", |s| {
        s.replicas
            .iter()
            .all(|r| (r.role == "leader" || r.role == "follower") && r.lag == 0)
    })
    .await;
    for id in 1..=3 {
        let clusters = hub.clusters_on(id);
        for (name, last) in &acked {
            let stored = clusters
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["name"] == name.as_str())
                .and_then(|c| c["applied_version"].as_u64())
                .unwrap_or_default();
            assert!(
                stored == *last || stored == last + 1,
                "replica {id} holds report {stored} of {name}, which had {last} acknowledged: {clusters}"
            );
        }
    }
    hub.shutdown().await;
}

/// Overwrites the middle half of `path` (redb then fails its checksums on open).
fn damage(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).expect("read");
    let quarter = bytes.len() / 4;
    bytes[quarter..3 * quarter].fill(0xA5);
    std::fs::write(path, bytes).expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_replica_refuses_to_start_and_is_rebuilt_from_the_others() {
    let mut hub = ReplicatedHub::start(3, fill, "").await;
    let leader = hub.leader().await;
    hub.add_agent("edge-1", "tier=edge", leader as usize).await;
    let first = hub.repo.git(&["rev-parse", "HEAD"]);
    hub.wait_converged(&first).await;

    // A follower's store is damaged while it is down: it refuses to start, naming the file.
    let damaged = (1..=3).find(|id| *id != leader).expect("a follower");
    let r = (damaged - 1) as usize;
    hub.replicas[r].stop().await;
    let store = hub.replicas[r].data_dir.join("hub.redb");
    damage(&store);
    hub.replicas[r].launch().expect("launch");
    let refused = hub.replicas[r]
        .wait_listening(flotilla_tests::fixture::CONVERGE)
        .await;
    assert!(refused.is_err(), "a replica with a damaged store started");
    let log = std::fs::read_to_string(&hub.replicas[r].log_path).unwrap_or_default();
    assert!(
        log.contains(&store.display().to_string()) && log.contains("corrupted"),
        "{log}"
    );

    // The other two carry on.
    let second = recolor(&hub, "green");
    hub.wait_converged(&second).await;

    // Removed, wiped and added again, it catches up from the others and serves the same state.
    hub.rebuild(damaged).await;
    let leader = hub.leader().await;
    assert_eq!(
        without_contact(&hub.clusters_on(damaged)),
        without_contact(&hub.clusters_on(leader))
    );
    let third = recolor(&hub, "red");
    hub.wait_converged(&third).await;
    hub.shutdown().await;
}

/// The randomized fault run, briefly: four steps (two faults and their restores) drawn from a
/// seed, `FLOTILLA_FAULT_SEED` or else the clock, printed to replay a failure
/// (`FLOTILLA_FAULT_SEED=S cargo test … fault_run`, or longer with `flotilla-bench fault-run
/// --seed S --steps N`). After every step a commit converges, no agent accepts a version twice or
/// out of order; at the end every replica is back, caught up and holds the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_fault_run_keeps_the_fleet_converging() {
    let seed = std::env::var("FLOTILLA_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default()
        });
    println!("fault run seed {seed} (FLOTILLA_FAULT_SEED={seed} replays it)");
    let mut hub = proxied_fleet().await;
    let steps = fault_run(&mut hub, seed, 4, |repo, round| {
        repo.write(
            "apps/base/objects.yaml",
            &BASE.replace("blue", &format!("round-{round}")),
        );
    })
    .await;
    assert_eq!(steps.len(), 4);
    hub.shutdown().await;
}
