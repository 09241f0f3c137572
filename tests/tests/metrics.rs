//! The hub's and the agent's `/metrics`, `/healthz` and `/readyz` (issue 16), scraped by a real
//! Prometheus server
//! (Debian's `prometheus` package; `.ci/run` installs it, and outside CI the test skips when it is
//! missing): a hub with one agent converges, Prometheus scrapes the hub every second, and the
//! values come back through Prometheus' HTTP query API.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use flotilla_tests::fixture::GitRepo;
use flotilla_tests::replicated::{ReplicatedHub, free_port};

const MANIFEST: &str = "apps:\n  - name: base\n    path: apps/base\n    namespace: web\n";
const BASE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: web\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  color: blue\n";

/// One HTTP/1.1 request; the status code, the headers and the body.
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
    try_http(addr, method, path).unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"))
}

fn try_http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, head.to_string(), body.to_string()))
}

/// Percent-encodes a PromQL query for a URL.
fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of `query`'s one sample through Prometheus' API, if it has exactly one.
fn query(prometheus: SocketAddr, query: &str) -> Option<f64> {
    // Not listening yet counts as no answer.
    let (status, _, body) = try_http(
        prometheus,
        "GET",
        &format!("/api/v1/query?query={}", encode(query)),
    )
    .ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    match v["data"]["result"].as_array()?.as_slice() {
        [one] => one["value"][1].as_str()?.parse().ok(),
        _ => None,
    }
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_hub_and_the_agent_and_reads_their_values_back() {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI needs Debian's prometheus package"
        );
        eprintln!("skipped: no prometheus binary");
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
    let dir = hub.dir.path().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: flotilla-hub\n    static_configs:\n      - targets: ['{metrics}']\n  - job_name: flotilla-agent\n    static_configs:\n      - targets: ['{agent_metrics}']\n"
        ),
    )
    .unwrap();
    let web: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );
    let wanted = [
        ("flotilla_hub_clusters{state=\"converged\"}", 1.0),
        ("flotilla_hub_watching_agents", 1.0),
        ("flotilla_hub_raft_is_leader", 1.0),
        ("up{job=\"flotilla-hub\"}", 1.0),
        ("up{job=\"flotilla-agent\"}", 1.0),
        ("flotilla_agent_cluster_states_accepted_total", 1.0),
        ("flotilla_agent_outbox_reports", 0.0),
    ];
    let end = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got: Vec<Option<f64>> = wanted.iter().map(|(q, _)| query(web, q)).collect();
        let issued = query(web, "flotilla_hub_cluster_states_issued_total");
        let applied = query(web, "flotilla_agent_objects_applied_total");
        let patches = query(
            web,
            "flotilla_agent_kube_api_requests_total{verb=\"patch\"}",
        );
        let fetches = query(
            web,
            "flotilla_hub_source_fetch_duration_seconds_count{source=\"main\"}",
        );
        let expiry = query(
            web,
            "flotilla_agent_certificate_expiry_timestamp_seconds - time()",
        );
        if wanted.iter().zip(&got).all(|((_, w), g)| *g == Some(*w))
            && expiry.is_some_and(|s| s > 3600.0)
            && issued.is_some_and(|v| v >= 1.0)
            && applied.is_some_and(|v| v >= 1.0)
            && patches.is_some_and(|v| v >= 1.0)
            && fetches.is_some_and(|v| v >= 1.0)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "Prometheus never reported {wanted:?}: got {got:?}, issued {issued:?}, fetches {fetches:?}, objects applied {applied:?}, API patches {patches:?}, certificate expiry in {expiry:?} s; log:\n{}",
            std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    hub.shutdown().await;
    sim.shutdown().await;
}
