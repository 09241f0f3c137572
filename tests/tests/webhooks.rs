//! Git push webhooks (issue 16), end to end on three real hub replicas: with the source polled
//! only hourly, a commit reaches every cluster because a signed webhook, sent to a follower, made
//! the leader fetch at once. Unsigned, wrongly signed, replayed, oversized and misaddressed
//! webhooks are refused with their status codes.

use std::net::SocketAddr;
use std::time::Instant;

use flotilla_hub::webhooks::MAX_BODY_BYTES;
use flotilla_tests::fixture::GitRepo;
use flotilla_tests::replicated::ReplicatedHub;
use flotilla_tests::webhook::{github_headers as github, post};

const MANIFEST: &str = "apps:\n  - name: base\n    path: apps/base\n    namespace: web\n";
const BASE: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  color: blue\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_push_webhook_to_any_replica_makes_the_leader_fetch_at_once() {
    let secrets = tempfile::tempdir().unwrap();
    let secret_file = secrets.path().join("webhook-secret");
    std::fs::write(&secret_file, "s3cret-for-tests\n").unwrap();
    let secret = b"s3cret-for-tests";
    let fill = |repo: &GitRepo| {
        repo.write("flotilla.yaml", MANIFEST)
            .write("apps/base/objects.yaml", BASE);
        repo.commit("initial");
    };
    // Polled hourly: only a webhook brings a new commit within the test.
    let source = format!(
        "    interval: 1h\n    webhookSecretFile: {}\n",
        secret_file.display()
    );
    let mut hub =
        ReplicatedHub::start_with_source(3, fill, "webhooks:\n  listen: 127.0.0.1:0\n", &source)
            .await;
    hub.add_agent("edge-1", "tier=edge", 1).await;
    let first = hub.repo.git(&["rev-parse", "HEAD"]);
    hub.wait_converged(&first).await;

    let leader = hub.leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let addr: SocketAddr = std::fs::read_to_string(
        hub.replicas[(follower - 1) as usize]
            .data_dir
            .join("webhooks.addr"),
    )
    .expect("webhooks.addr")
    .trim()
    .parse()
    .unwrap();

    hub.repo
        .write("apps/base/objects.yaml", &BASE.replace("blue", "green"));
    let second = hub.repo.commit("green");
    let payload = format!(r#"{{"ref":"refs/heads/main","after":"{second}"}}"#);
    let body = payload.as_bytes();

    // Refused, and nothing fetched for them.
    let path = "/hooks/sources/main";
    let (status, text) = post(addr, path, &[], body);
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("no signature"), "{text}");
    let (status, text) = post(addr, path, &github(body, b"wrong", "d-0"), body);
    assert_eq!(status, 401, "{text}");
    assert!(
        text.contains("X-Hub-Signature-256 does not match"),
        "{text}"
    );
    let (status, text) = post(
        addr,
        "/hooks/sources/nope",
        &github(body, secret, "d-1"),
        body,
    );
    assert_eq!(status, 404, "{text}");
    let big = vec![b' '; MAX_BODY_BYTES + 1];
    let (status, _) = post(addr, path, &github(&big, secret, "d-2"), &big);
    assert_eq!(status, 413);
    assert!(!secret_in(&hub), "the secret is in a log");

    // Signed: taken, and the commit reaches the cluster long before the next poll.
    let sent = Instant::now();
    let (status, text) = post(addr, path, &github(body, secret, "d-3"), body);
    assert_eq!(status, 202, "{text}");
    hub.wait_converged(&second).await;
    println!(
        "push webhook to replica {follower} (leader {leader}) -> 1 cluster applied the commit: {:.2}s",
        sent.elapsed().as_secs_f64()
    );
    // The same delivery again is a replay.
    let (status, text) = post(addr, path, &github(body, secret, "d-3"), body);
    assert_eq!(status, 409, "{text}");
    assert!(!secret_in(&hub), "the secret is in a log");
    hub.shutdown().await;
}

fn secret_in(hub: &ReplicatedHub) -> bool {
    hub.replicas.iter().any(|r| {
        std::fs::read_to_string(&r.log_path)
            .unwrap_or_default()
            .contains("s3cret-for-tests")
    })
}
