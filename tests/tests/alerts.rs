//! Alerts (issue 16): the hub's notification targets get the events of their filters, signed, in
//! order, at least once, through a target's outage (retried, bounded, reported) and through the loss
//! of the leader; no secret is ever in an alert.

use std::time::Duration;

use flotilla_hub::config::HubConfig;
use flotilla_hub::events::{EventLog, NewEvent, Severity};
use flotilla_hub::metrics::HubMetrics;
use flotilla_hub::notify::Notifier;
use flotilla_hub::store::HubStore;
use flotilla_hub::webhooks::hmac_sha256;
use flotilla_tests::fixture::GitRepo;
use flotilla_tests::replicated::ReplicatedHub;
use flotilla_tests::sink::{Delivery, Sink, app_failed};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const HMAC_CANARY: &str = "canary-hmac-secret-3141";
const URL_CANARY: &str = "canary-url-token-2718";

fn kinds(d: &[Delivery]) -> Vec<String> {
    d.iter()
        .map(|d| d.json()["kind"].as_str().unwrap_or("").to_string())
        .collect()
}

fn check_signature(d: &Delivery) {
    let mac = hex(&hmac_sha256(HMAC_CANARY.as_bytes(), &d.body));
    assert_eq!(
        d.headers.get("x-flotilla-signature").map(String::as_str),
        Some(format!("sha256={mac}").as_str()),
        "signature of {}",
        String::from_utf8_lossy(&d.body)
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn no_canary(deliveries: &[Delivery]) {
    for d in deliveries {
        let text = String::from_utf8_lossy(&d.body);
        let headers = format!("{:?}", d.headers);
        for canary in [HMAC_CANARY, URL_CANARY] {
            assert!(!text.contains(canary), "{canary} in an alert: {text}");
            assert!(!headers.contains(canary), "{canary} in a header: {headers}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_get_their_events_signed_retried_bounded_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    std::fs::write(dir.path().join("hmac"), format!("{HMAC_CANARY}\n")).unwrap();
    // A Slack URL is a secret: from a file, never in an alert, an event or a log.
    std::fs::write(
        dir.path().join("slack-url"),
        sink.url(&format!("/services/T0/B0/{URL_CANARY}")),
    )
    .unwrap();
    let config = HubConfig::parse(&format!(
        "notifications:\n  queueLimit: 5\n  targetDownAfter: 1s\n  targets:\n    - name: ops\n      type: webhook\n      url: {}\n      secretFile: {}\n      timeout: 2s\n    - name: chat\n      type: slack\n      urlFile: {}\n      filter:\n        events: ['app-*']\n        clusters: ['edge-*']\n",
        sink.url("/ops"),
        dir.path().join("hmac").display(),
        dir.path().join("slack-url").display(),
    ))
    .expect("hub.yaml parses");
    let store = HubStore::open(&dir.path().join("hub.redb")).unwrap();
    let log = EventLog::new(store.clone(), 1000);
    // History before a target's first start is not sent.
    log.record_blocking(vec![app_failed("edge-0", 0)]);
    let metrics = HubMetrics::new();
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    Notifier {
        store: store.clone(),
        events: log.clone(),
        metrics: metrics.clone(),
        settings: config.notifications.clone(),
        hub_id: "0a1b2c".into(),
    }
    .start(&tracker, stop.clone());
    for name in ["ops", "chat"] {
        wait(&format!("the {name} cursor"), || {
            store.meta(&format!("notify/{name}")).unwrap() == Some(1)
        })
        .await;
    }

    log.record_blocking(vec![
        NewEvent::source(
            flotilla_hub::controller::unix_now(),
            "commit-in-force",
            Severity::Info,
            "main",
            "commit 1234abcd is in force on 2 clusters".into(),
        ),
        app_failed("edge-1", 1),
        app_failed("core-1", 1),
        // Not an alerting kind: no target without an explicit filter gets it.
        NewEvent::cluster(
            flotilla_hub::controller::unix_now(),
            "rollout-cluster-healthy",
            Severity::Info,
            "edge-1",
            "healthy on release abc".into(),
        ),
    ]);
    let all = sink
        .wait_for(Duration::from_secs(20), "4 alerts", |d| d.len() >= 4)
        .await;
    let ops: Vec<Delivery> = all.iter().filter(|d| d.path == "/ops").cloned().collect();
    let chat: Vec<Delivery> = all.iter().filter(|d| d.path != "/ops").cloned().collect();
    assert_eq!(
        kinds(&ops),
        ["commit-in-force", "app-failed", "app-failed"],
        "in order"
    );
    for (d, seq) in ops.iter().zip(2u64..) {
        check_signature(d);
        let body = d.json();
        let id = format!("flotilla-0a1b2c-{seq}");
        assert_eq!(body["id"], id.as_str());
        assert_eq!(body["seq"], seq);
        assert_eq!(d.headers["x-flotilla-delivery"], id);
        assert_eq!(d.headers["idempotency-key"], id);
        assert_eq!(d.headers["content-type"], "application/json");
    }
    assert_eq!(ops[1].json()["cluster"], "edge-1");
    assert_eq!(ops[2].json()["cluster"], "core-1");
    assert_eq!(
        chat.len(),
        1,
        "the chat target's filter takes edge app events only"
    );
    let text = chat[0].json()["text"].as_str().unwrap().to_string();
    assert!(
        text.starts_with(
            "[error] *app-failed* · app `web` · cluster `edge-1`: applying version 1 failed"
        ),
        "{text}"
    );
    assert!(!chat[0].headers.contains_key("x-flotilla-signature"));

    // The sink goes down: the head of each queue is retried with backoff, the target is reported
    // down, and beyond queueLimit the oldest events are dropped.
    sink.set_down(true);
    log.record_blocking((2..10).map(|n| app_failed("edge-1", n)).collect());
    wait("a notification-target-down event", || {
        store.events_after(0, 1000).unwrap().iter().any(|e| {
            e.event.kind == "notification-target-down" && e.event.message.contains("target ops ")
        })
    })
    .await;
    let down = store
        .events_after(0, 1000)
        .unwrap()
        .into_iter()
        .find(|e| {
            e.event.kind == "notification-target-down" && e.event.message.contains("target ops ")
        })
        .unwrap();
    assert!(
        down.event.message.contains("the target answered 503"),
        "{}",
        down.event.message
    );
    let text = metrics.encode();
    assert!(
        text.contains("flotilla_hub_notification_target_up{target=\"ops\"} 0"),
        "{text}"
    );
    let refused = sink.all().iter().filter(|d| d.refused).count();
    assert!(refused >= 2, "retried: {refused} refused attempts");
    sink.set_down(false);
    let seen = sink.all().len();
    let all = sink
        .wait_for(Duration::from_secs(20), "the queue delivered", |d| {
            d[seen..].iter().any(|d| {
                d.path == "/ops"
                    && !d.refused
                    && d.json()["message"]
                        .as_str()
                        .unwrap_or("")
                        .contains("version 9")
            })
        })
        .await;
    let after: Vec<Delivery> = all[seen..]
        .iter()
        .filter(|d| d.path == "/ops" && !d.refused)
        .cloned()
        .collect();
    // 8 failures and the down event queued behind a limit of 5: the oldest were dropped.
    let messages: Vec<String> = after
        .iter()
        .map(|d| d.json()["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        messages.iter().any(|m| m.contains("version 9 failed"))
            && !messages.iter().any(|m| m.contains("version 2 failed")),
        "{messages:?}"
    );
    let text = metrics.encode();
    let dropped: u64 = text
        .lines()
        .find(|l| l.starts_with("flotilla_hub_notifications_dropped_total{target=\"ops\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(dropped >= 3, "dropped {dropped}:\n{text}");
    wait("a notification-target-recovered event", || {
        store
            .events_after(0, 1000)
            .unwrap()
            .iter()
            .any(|e| e.event.kind == "notification-target-recovered")
    })
    .await;
    no_canary(&sink.all());
    for e in store.events_after(0, 1000).unwrap() {
        assert!(!e.event.message.contains(URL_CANARY), "{}", e.event.message);
        assert!(
            !e.event.message.contains(HMAC_CANARY),
            "{}",
            e.event.message
        );
    }
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    // Its cursor is stored: a new leader goes on from there.
    assert!(store.meta("notify/ops").unwrap().unwrap() >= 13);
}

async fn wait(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const MANIFEST: &str = "apps:\n  - name: base\n    path: apps/base\n    namespace: web\n";
const BASE: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  color: blue\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_queued_when_the_leader_dies_is_delivered_by_the_next_leader() {
    let sink = Sink::start();
    let secrets = tempfile::tempdir().unwrap();
    let hmac = secrets.path().join("hmac");
    std::fs::write(&hmac, HMAC_CANARY).unwrap();
    let extra = format!(
        "notifications:\n  targets:\n    - name: ops\n      type: webhook\n      url: {}\n      secretFile: {}\n",
        sink.url("/ops"),
        hmac.display()
    );
    let fill = |repo: &GitRepo| {
        repo.write("flotilla.yaml", MANIFEST)
            .write("apps/base/objects.yaml", BASE);
        repo.commit("initial");
    };
    let mut hub = ReplicatedHub::start(3, fill, &extra).await;
    hub.add_agent("edge-1", "tier=edge", 1).await;
    let first = hub.repo.git(&["rev-parse", "HEAD"]);
    hub.wait_converged(&first).await;
    sink.wait_for(Duration::from_secs(30), "the first commit-in-force", |d| {
        d.iter()
            .any(|d| !d.refused && d.json()["kind"] == "commit-in-force")
    })
    .await;

    // The target is down while a new commit lands; the leader dies with the alert undelivered.
    sink.set_down(true);
    hub.repo
        .write("apps/base/objects.yaml", &BASE.replace("blue", "green"));
    let second = hub.repo.commit("green");
    hub.wait_converged(&second).await;
    let short = &second[..12];
    sink.wait_for(
        Duration::from_secs(30),
        "a refused attempt at the second commit's alert",
        |d| {
            d.iter()
                .any(|d| d.refused && d.json()["message"].as_str().unwrap_or("").contains(short))
        },
    )
    .await;
    let leader = hub.leader().await;
    hub.replicas[(leader - 1) as usize].kill().await;
    sink.set_down(false);
    let all = sink
        .wait_for(
            Duration::from_secs(60),
            "the second commit's alert from the next leader",
            |d| {
                d.iter().any(|d| {
                    !d.refused
                        && d.json()["kind"] == "commit-in-force"
                        && d.json()["message"].as_str().unwrap_or("").contains(short)
                })
            },
        )
        .await;
    let delivered: Vec<&Delivery> = all.iter().filter(|d| !d.refused).collect();
    for d in &delivered {
        check_signature(d);
    }
    // At least once: a repeat carries the same key, so a receiver can drop it.
    let mut by_id = std::collections::BTreeMap::<String, Vec<u8>>::new();
    for d in &delivered {
        let id = d.headers["x-flotilla-delivery"].clone();
        if let Some(body) = by_id.insert(id.clone(), d.body.clone()) {
            assert_eq!(body, d.body, "a repeat of {id} differs");
        }
    }
    no_canary(&all);
    assert!(
        !hub.all_logs().contains(HMAC_CANARY),
        "the HMAC secret is in a log"
    );
    hub.replicas[(leader - 1) as usize].start().await.unwrap();
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_clusters_expiring_certificates_and_corrected_drift_alert() {
    let sink = Sink::start();
    // Certificates last 30 days: every one is within a 400-day warning, so each is reported once.
    // `dead` answers nothing: it is reported down in `flotilla status`.
    let extra = format!(
        "notifications:\n  clusterOfflineAfter: 3s\n  certificateExpiryWarning: 400d\n  targetDownAfter: 1s\n  targets:\n    - name: ops\n      type: webhook\n      url: {}\n      filter:\n        events: [cluster-*, certificate-expiring, app-drift-corrected]\n    - name: dead\n      type: slack\n      url: http://127.0.0.1:{}/services/x\n      timeout: 1s\n",
        sink.url("/ops"),
        flotilla_tests::replicated::free_port()
    );
    let mut fleet = flotilla_tests::fixture::Fleet::start_with_config(
        |repo: &GitRepo| {
            repo.write("flotilla.yaml", MANIFEST)
                .write("apps/base/objects.yaml", BASE);
            repo.commit("initial");
        },
        Duration::from_millis(200),
        &extra,
    )
    .await;
    fleet.add_agent("edge-1", "tier=edge").await;
    let first = fleet.repo.git(&["rev-parse", "HEAD"]);
    fleet.wait_converged(&first).await;
    let kind = |d: &Delivery, k: &str| d.json()["kind"] == k && d.json()["cluster"] == "edge-1";
    let got = sink
        .wait_for(Duration::from_secs(30), "certificate-expiring", |d| {
            d.iter().any(|d| kind(d, "certificate-expiring"))
        })
        .await;
    let cert = got
        .iter()
        .find(|d| kind(d, "certificate-expiring"))
        .unwrap();
    assert!(
        cert.json()["message"]
            .as_str()
            .unwrap()
            .starts_with("the cluster's certificate expires in 29days 23h"),
        "{}",
        cert.json()
    );
    flotilla_tests::fixture::eventually(
        "the dead target reported down",
        Duration::from_secs(30),
        || {
            let status = fleet.cli_json(&["status"]);
            let targets = status["notification_targets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let state = |name: &str| targets.iter().find(|t| t["name"] == name).cloned();
            state("dead").is_some_and(|t| {
                t["down_since"].as_i64() > Some(0)
                    && t["queued"].as_u64() >= Some(1)
                    && t["type"] == "slack"
            }) && state("ops").is_some_and(|t| t["down_since"] == 0)
        },
    )
    .await;
    let text = fleet.cli_text(&["status"]);
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("dead") && l.contains("down since")),
        "{text}"
    );
    // Connected, with heartbeats well inside the 3 s: not offline.
    assert!(
        !sink.all().iter().any(|d| kind(d, "cluster-offline")),
        "a connected cluster was reported offline"
    );

    // The agent goes away; its object is edited behind its back meanwhile.
    fleet.agents[0].kill().await;
    let file = fleet.agents[0]
        .target_dir
        .join("core_v1_ConfigMap_web_settings.json");
    let applied = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, applied.replace("blue", "edited")).unwrap();
    sink.wait_for(Duration::from_secs(30), "cluster-offline", |d| {
        d.iter().any(|d| kind(d, "cluster-offline"))
    })
    .await;
    // Back: online again, and the drift it wrote back is an alert.
    fleet.agents[0].start().unwrap();
    let got = sink
        .wait_for(
            Duration::from_secs(30),
            "cluster-online and app-drift-corrected",
            |d| {
                d.iter().any(|d| kind(d, "cluster-online"))
                    && d.iter().any(|d| kind(d, "app-drift-corrected"))
            },
        )
        .await;
    let drift = got.iter().find(|d| kind(d, "app-drift-corrected")).unwrap();
    assert_eq!(
        drift.json()["message"],
        "corrected drift (drift: correct) of v1/ConfigMap web/settings"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), applied);
    let once = |k: &str| sink.all().iter().filter(|d| kind(d, k)).count();
    assert_eq!(once("certificate-expiring"), 1, "said once per certificate");
    assert_eq!(once("cluster-offline"), 1);
    fleet.shutdown().await;
}
