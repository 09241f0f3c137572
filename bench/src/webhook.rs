//! `webhook-latency`: commit → every cluster applied it, when a push webhook (GitHub-signed, sent
//! to a follower of three replicas) triggers the fetch and the source is polled only hourly. Each
//! round commits, posts the webhook and waits until the hub shows every cluster converged on the
//! commit; a round that does not converge fails the run. Compare `latency --interval`, where
//! polling alone brings the commit.

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::ensure;
use flotilla_tests::fixture::GitRepo;
use flotilla_tests::replicated::ReplicatedHub;
use flotilla_tests::webhook::{github_headers, post};

use crate::failover::config_map;

const MANIFEST: &str = "apps:\n  - name: base\n    path: apps/base\n    namespace: web\n";

pub async fn webhook_latency(agents: usize, rounds: usize) -> anyhow::Result<()> {
    ensure!(
        agents >= 1 && rounds >= 1,
        "at least one agent and one round"
    );
    let secrets = tempfile::tempdir()?;
    let secret_file = secrets.path().join("secret");
    std::fs::write(&secret_file, "bench-secret\n")?;
    let source = format!(
        "    interval: 1h\n    webhookSecretFile: {}\n",
        secret_file.display()
    );
    let fill = |repo: &GitRepo| {
        repo.write("flotilla.yaml", MANIFEST)
            .write("apps/base/objects.yaml", &config_map(0));
        repo.commit("round 0");
    };
    let mut hub =
        ReplicatedHub::start_with_source(3, fill, "webhooks:\n  listen: 127.0.0.1:0\n", &source)
            .await;
    for i in 0..agents {
        hub.add_agent(&format!("edge-{i}"), "tier=edge", i % 3 + 1)
            .await;
    }
    let first = hub.repo.git(&["rev-parse", "HEAD"]);
    hub.wait_converged(&first).await;
    let leader = hub.leader().await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let addr: SocketAddr = std::fs::read_to_string(
        hub.replicas[(follower - 1) as usize]
            .data_dir
            .join("webhooks.addr"),
    )?
    .trim()
    .parse()?;
    let mut samples = Vec::new();
    for round in 1..=rounds {
        hub.repo.write("apps/base/objects.yaml", &config_map(round));
        let start = Instant::now();
        let commit = hub.repo.commit(&format!("round {round}"));
        let body = format!(r#"{{"ref":"refs/heads/main","after":"{commit}"}}"#);
        let headers = github_headers(body.as_bytes(), b"bench-secret", &format!("round-{round}"));
        let (status, text) = post(addr, "/hooks/sources/main", &headers, body.as_bytes());
        ensure!(
            status == 202,
            "round {round}: the webhook got {status}: {text}"
        );
        hub.wait_converged(&commit).await;
        samples.push(start.elapsed());
    }
    println!(
        "agents={agents} rounds={rounds} replicas=3, webhook to replica {follower} (leader {leader}), source polled hourly"
    );
    crate::summary(
        "commit -> converged in hub status, by push webhook",
        samples,
    );
    hub.shutdown().await;
    Ok(())
}
