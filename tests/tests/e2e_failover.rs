//! End-to-end: agents and the CLI given several hub addresses (issue 15, the client side of a
//! replicated hub). One real hub; a closed port and a [`Forwarder`] stand in for replicas that
//! are gone or go away.

use std::sync::Mutex;

use flotilla_tests::fixture::{CONVERGE, Fleet, GitRepo, accepted_versions, eventually};
use flotilla_tests::forwarder::Forwarder;

const MANIFEST: &str = "apps:\n  - name: base\n    path: apps/base\n    namespace: web\n";
const BASE: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  color: blue\n";
const CM: &str = "core_v1_ConfigMap_web_settings";

fn fill(repo: &GitRepo) {
    repo.write("flotilla.yaml", MANIFEST)
        .write("apps/base/objects.yaml", BASE);
    repo.commit("initial");
}

/// `https://127.0.0.1:PORT` where nothing listens (a port just released).
fn closed_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("https://{addr}")
}

fn agent_log(fleet: &Fleet, agent: usize) -> String {
    std::fs::read_to_string(&fleet.agents[agent].log_path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_address_is_skipped_by_registration_the_agent_and_the_cli() {
    let mut fleet = Fleet::start(fill).await;
    let (closed, hub) = (closed_url(), fleet.hub.url());
    fleet
        .add_agent_with_hubs(
            "edge-1",
            "tier=edge",
            None,
            &[closed.clone(), hub.clone()],
            &[],
        )
        .await;
    let first = fleet.repo.git(&["rev-parse", "HEAD"]);
    fleet.wait_converged(&first).await;
    assert_eq!(fleet.object(0, CM).unwrap()["data"]["color"], "blue");
    let log = agent_log(&fleet, 0);
    assert!(
        log.contains(&format!("registered with hub {hub} (2 of 2)")),
        "{log}"
    );
    assert!(
        log.contains(&format!("connected to hub {hub} (2 of 2)")),
        "{log}"
    );
    // A single failed endpoint before a working one is not an outage: no warning.
    assert!(!log.contains("no hub endpoint answers"), "{log}");

    // The CLI takes the same list and uses the first hub that answers.
    let out = fleet
        .cli_command()
        .env("FLOTILLA_HUB", format!("{closed},{hub}"))
        .args(["clusters", "-o", "json"])
        .output()
        .expect("run flotilla");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let clusters: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(clusters[0]["name"], "edge-1", "{clusters}");
    // With no hub answering, it says so for each.
    let out = fleet
        .cli_command()
        .env("FLOTILLA_HUB", format!("{closed},{}", closed_url()))
        .arg("clusters")
        .output()
        .expect("run flotilla");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no hub answers"), "{stderr}");
    assert!(stderr.contains(&closed), "{stderr}");
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_hub_address_goes_away_resumes_its_watch_at_the_next() {
    let mut fleet = Fleet::start(fill).await;
    let hub = fleet.hub.url();
    let forwarder = Forwarder::start(fleet.hub.addr.expect("hub started"))
        .await
        .expect("forwarder");
    fleet
        .add_agent_with_hubs(
            "edge-1",
            "tier=edge",
            None,
            &[forwarder.url(), hub.clone()],
            &[],
        )
        .await;
    let first = fleet.repo.git(&["rev-parse", "HEAD"]);
    let status = fleet.wait_converged(&first).await;
    let before = status.clusters[0].cluster.applied_version;
    let log = agent_log(&fleet, 0);
    assert!(
        log.contains(&format!("connected to hub {} (1 of 2)", forwarder.url())),
        "{log}"
    );
    assert!(!log.contains(&format!("connected to hub {hub}")), "{log}");
    assert!(forwarder.accepted() > 0);

    // The first address goes away with the connections through it; only the second reaches
    // the hub now.
    forwarder.stop().await;
    eventually("the switch to the direct address", CONVERGE, || {
        agent_log(&fleet, 0).contains(&format!("connected to hub {hub} (2 of 2)"))
    })
    .await;
    fleet
        .repo
        .write("apps/base/objects.yaml", &BASE.replace("blue", "green"));
    let second = fleet.repo.commit("green");
    let seen = Mutex::new(Vec::new());
    let status = fleet
        .wait_status("convergence through the direct address", CONVERGE, |s| {
            if let Some(c) = s.clusters.first() {
                seen.lock().unwrap().push(c.cluster.applied_version);
            }
            s.clusters.len() == 1 && s.converged_at(&second)
        })
        .await;
    assert_eq!(fleet.object(0, CM).unwrap()["data"]["color"], "green");
    let after = status.clusters[0].cluster.applied_version;
    assert!(after > before, "{before} -> {after}");
    let seen = seen.into_inner().unwrap();
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "applied versions went back: {seen:?}"
    );

    // The same identity, and the Watch resumed from the version held: nothing was accepted
    // twice, nothing registered again.
    let log = agent_log(&fleet, 0);
    assert_eq!(log.matches("registered with hub").count(), 1, "{log}");
    let accepted = accepted_versions(&log);
    assert!(
        accepted.windows(2).all(|w| w[0] < w[1]) && accepted.last() == Some(&after),
        "accepted {accepted:?}, applied {after}\n{log}"
    );
    fleet.shutdown().await;
}
