//! Figures for the Kubernetes target, against a running `kubesim` (or any cluster):
//! time to apply an app of N objects, API requests in steady state, and this process's
//! resident memory idle and while applying. Runs the agent's applier and Kubernetes target
//! exactly as `flotilla-agent` does, minus the hub connection (the state is signed locally).
//!
//! ```text
//! cargo run --release -p flotilla-agent --features testing --example kube_figures -- \
//!     KUBECONFIG [OBJECTS=1000] [STEADY_SECS=60]
//! ```
//! The request counts come from kubesim's `/kubesim/requests` knob.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_agent::apply::{Applier, ApplySettings};
use flotilla_agent::config::Backoff;
use flotilla_agent::fixtures::{self, app};
use flotilla_agent::store::{HeldState, Store};
use flotilla_agent::target::kube::{KubeOptions, KubeSource, KubeTarget};
use flotilla_common::status::{AppHealth, AppPhase};
use serde_json::Value;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn requests(client: &kube::Client) -> Value {
    let req = http::Request::get("/kubesim/requests")
        .body(vec![])
        .unwrap();
    client.request::<Value>(req).await.unwrap_or(Value::Null)
}

async fn reset(client: &kube::Client) {
    let req = http::Request::delete("/kubesim/requests")
        .body(vec![])
        .unwrap();
    let _ = client.request_text(req).await;
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let kubeconfig = args
        .next()
        .expect("usage: kube_figures KUBECONFIG [OBJECTS] [STEADY_SECS]");
    let n: usize = args.next().map_or(1000, |s| s.parse().unwrap());
    let steady: u64 = args.next().map_or(60, |s| s.parse().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("agent.redb"), 100).unwrap();

    let ns = format!("figures-{:08x}", rand::random::<u32>());
    let mut objects = vec![fixtures::namespace(&ns)];
    for i in 0..n - 1 {
        objects.push(fixtures::config_map_in(
            &ns,
            &format!("cm-{i:04}"),
            &format!("value {i}"),
        ));
    }
    let refs: Vec<_> = objects.iter().collect();
    let signed = fixtures::signed(1, None, vec![app("figures", &refs)]);
    let state = signed.decode_unverified().unwrap();
    store
        .commit_state(&HeldState::new(signed, state), &fixtures::blobs(&refs))
        .unwrap();

    let shutdown = CancellationToken::new();
    let source = KubeSource::Kubeconfig(kubeconfig.into());
    let target = KubeTarget::connect(&source, KubeOptions::default(), &shutdown)
        .await
        .unwrap();
    let probe = target.client().clone();
    reset(&probe).await;
    let rss_before = rss_kib();
    let (_held_tx, held_rx) = watch::channel(1);
    let applier = Applier {
        store: store.clone(),
        target,
        settings: ApplySettings {
            deletion_budget: 50,
            deletion_window: Duration::ZERO,
            override_budget: false,
        },
        backoff: Backoff::default(),
        retry: flotilla_agent::retry::RetryPolicy::default(),
        reporter: Arc::new(Notify::new()),
        metrics: Default::default(),
    };
    let started = Instant::now();
    let task = tokio::spawn(applier.run(held_rx, shutdown.clone()));
    let mut peak = rss_before;
    loop {
        peak = peak.max(rss_kib());
        let done = store.applied_version().unwrap() == 1
            && store
                .last_statuses()
                .unwrap()
                .iter()
                .all(|a| a.phase == AppPhase::Applied && a.health == AppHealth::Healthy);
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    println!(
        "applied {n} objects in {took:.2?} (peak RSS while applying {} KiB, before {rss_before} KiB)",
        peak
    );
    println!("requests during the apply: {}", requests(&probe).await);

    // Let the post-apply echoes settle, then count a steady-state window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    reset(&probe).await;
    tokio::time::sleep(Duration::from_secs(steady)).await;
    let counts = requests(&probe).await;
    let total: u64 = counts
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    println!(
        "steady state over {steady}s: {counts} = {:.2} requests/minute; idle RSS {} KiB",
        total as f64 * 60.0 / steady as f64,
        rss_kib()
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
