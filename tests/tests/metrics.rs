//! The hub's and the agent's `/metrics`, `/healthz` and `/readyz` (issue 16), scraped by a real
//! Prometheus server
//! (Debian's `prometheus` package; `.ci/run` installs it, and outside CI the test skips when it is
//! missing): a hub with one agent converges, Prometheus scrapes the hub every second, and the
//! values come back through Prometheus' HTTP query API.

use std::net::SocketAddr;
use std::time::Duration;

use flotilla_tests::fixture::GitRepo;
use flotilla_tests::prometheus::{self, Prometheus, try_http};
use flotilla_tests::replicated::ReplicatedHub;

const MANIFEST: &str = "apps:\n  - name: base\n    path: apps/base\n    namespace: web\n";
const BASE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: web\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  color: blue\n";

/// One HTTP/1.1 request; the status code, the headers and the body.
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    try_http(addr, method, path).unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_hub_and_the_agent_and_reads_their_values_back() {
    if !prometheus::available() {
        return;
    }
    let fill = |repo: &GitRepo| {
        repo.write("flotilla.yaml", MANIFEST)
            .write("apps/base/objects.yaml", BASE);
        repo.commit("initial");
    };
    let mut hub = ReplicatedHub::start(1, fill, "metrics:\n  listen: 127.0.0.1:0\n").await;
    // The agent applies to the Kubernetes API simulator, so its API requests are counted too.
    let sim = flotilla_kubesim::KubeSim::start(&hub.dir.path().join("kube")).expect("kubesim");
    hub.add_agent_with(
        "edge-1",
        "tier=edge",
        1,
        &["--metrics-listen", "127.0.0.1:0"],
        Some(sim.kubeconfig_path().to_path_buf()),
    )
    .await;
    let first = hub.repo.git(&["rev-parse", "HEAD"]);
    hub.wait_converged(&first).await;
    let addr_in = |dir: &std::path::Path| -> SocketAddr {
        std::fs::read_to_string(dir.join("metrics.addr"))
            .expect("metrics.addr")
            .trim()
            .parse()
            .expect("an address")
    };
    let metrics = addr_in(&hub.replicas[0].data_dir);
    let agent_metrics = addr_in(&hub.agents[0].data_dir);
    let (status, _, body) = http(agent_metrics, "GET", "/metrics");
    assert_eq!(status, 200);
    assert!(
        body.contains("flotilla_agent_cluster_states_accepted_total 1"),
        "{body}"
    );
    assert_eq!(http(agent_metrics, "GET", "/readyz").0, 200);

    // The endpoints themselves.
    let (status, head, body) = http(metrics, "GET", "/metrics");
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(
        body.contains("flotilla_hub_clusters{state=\"converged\"} 1"),
        "{body}"
    );
    assert_eq!(http(metrics, "GET", "/healthz").0, 200);
    assert_eq!(http(metrics, "GET", "/readyz").0, 200);
    assert_eq!(http(metrics, "GET", "/nothing").0, 404);
    assert_eq!(http(metrics, "POST", "/metrics").0, 405);

    // A real Prometheus scrapes it every second.
    let prom = Prometheus::start(
        &hub.dir.path().join("prometheus"),
        &[("flotilla-hub", metrics), ("flotilla-agent", agent_metrics)],
    );
    let wanted = [
        ("flotilla_hub_clusters{state=\"converged\"}", 1.0),
        ("flotilla_hub_watching_agents", 1.0),
        ("flotilla_hub_raft_is_leader", 1.0),
        ("flotilla_hub_cluster_health{health=\"healthy\"}", 1.0),
        ("up{job=\"flotilla-hub\"}", 1.0),
        ("up{job=\"flotilla-agent\"}", 1.0),
        ("flotilla_agent_cluster_states_accepted_total", 1.0),
        ("flotilla_agent_outbox_reports", 0.0),
    ];
    let end = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got: Vec<Option<f64>> = wanted.iter().map(|(q, _)| prom.query(q)).collect();
        let issued = prom.query("flotilla_hub_cluster_states_issued_total");
        let applied = prom.query("flotilla_agent_objects_applied_total");
        let app_renders = prom.query("flotilla_hub_app_renders_total{app=\"base\"}");
        let syncs = prom.query("flotilla_agent_sync_duration_seconds_count");
        let patches = prom.query("flotilla_agent_kube_api_requests_total{verb=\"patch\"}");
        let fetches =
            prom.query("flotilla_hub_source_fetch_duration_seconds_count{source=\"main\"}");
        let expiry = prom.query("flotilla_agent_certificate_expiry_timestamp_seconds - time()");
        if wanted.iter().zip(&got).all(|((_, w), g)| *g == Some(*w))
            && expiry.is_some_and(|s| s > 3600.0)
            && issued.is_some_and(|v| v >= 1.0)
            && applied.is_some_and(|v| v >= 1.0)
            && app_renders.is_some_and(|v| v >= 1.0)
            && syncs.is_some_and(|v| v >= 1.0)
            && patches.is_some_and(|v| v >= 1.0)
            && fetches.is_some_and(|v| v >= 1.0)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "Prometheus never reported {wanted:?}: got {got:?}, issued {issued:?}, fetches {fetches:?}, objects applied {applied:?}, renders of app base {app_renders:?}, syncs {syncs:?}, API patches {patches:?}, certificate expiry in {expiry:?} s; log:\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    hub.shutdown().await;
    sim.shutdown().await;
}
