//! Metric-gated stages (issue 16) against the real Prometheus server: a canary stage's analysis
//! query reads a test exporter's error ratio for the canary cluster. While it is low, release v2
//! passes the canary and reaches every cluster; when it goes bad during v3's bake, the rollout rolls
//! back and no later stage ever gets v3. Then the bad inputs, measured against the same server: a
//! query Prometheus cannot parse fails, one with no series and an unreachable Prometheus are
//! inconclusive.

use std::time::Duration;

use flotilla_hub::analysis::{Outcome, Prometheus as Client, measure};
use flotilla_hub::config::AnalysisSettings;
use flotilla_hub::manifest::{AnalysisQuery, NoData};
use flotilla_tests::fixture::{CONVERGE, Fleet, eventually};
use flotilla_tests::prometheus::{self, Exporter, Prometheus};
use flotilla_tests::rollout::{events, poll_rollout, write_release};

const SERIES: &str = "canary_error_ratio{cluster=\"canary-1\"}";

fn manifest() -> String {
    "apps:\n  - name: web\n    path: web\n    namespace: web\n    rollout:\n      stages:\n        - name: canary\n          selector: {matchLabels: {ring: canary}}\n          bake: 6s\n          analysis:\n            interval: 1s\n            inconclusiveLimit: 10\n            queries:\n              - name: errors\n                query: 'max(canary_error_ratio{cluster=\"{{ cluster.name }}\"})'\n                max: 0.05\n        - {name: main, selector: {matchLabels: {ring: main}}, maxUnavailable: 2}\n      failureBudget: 0\n      onFailure: rollback\n      progressDeadline: 60s\n".into()
}

fn version_on(fleet: &Fleet, agent: usize) -> Option<String> {
    let path = fleet.agents[agent]
        .target_dir
        .join("core_v1_ConfigMap_web_web.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["data"]["version"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_whose_metric_goes_bad_during_its_bake_rolls_back() {
    if !prometheus::available() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let exporter = Exporter::start();
    exporter.set(SERIES, 0.01);
    let prom = Prometheus::start(&work.path().join("prometheus"), &[("app", exporter.addr)]);
    eventually("Prometheus has the canary's error ratio", CONVERGE, || {
        prom.query(SERIES).is_some()
    })
    .await;

    let mut fleet = Fleet::start_with_config(
        |repo| {
            write_release(repo, "v1", &manifest());
            repo.commit("v1");
        },
        Duration::from_millis(200),
        &format!("analysis:\n  prometheus: {}\n  timeout: 2s\n", prom.url()),
    )
    .await;
    fleet.add_agent("canary-1", "ring=canary").await;
    fleet.add_agent("main-1", "ring=main").await;
    fleet.add_agent("main-2", "ring=main").await;
    let v1 = fleet.repo.git(&["rev-parse", "HEAD"]);
    fleet.wait_converged(&v1).await;

    // Healthy metric: v2 passes the canary's analysis and reaches every cluster.
    write_release(&fleet.repo, "v2", &manifest());
    let v2 = fleet.repo.commit("v2");
    let done = poll_rollout(&fleet, Duration::from_millis(200), CONVERGE, |r| {
        r.release_commit == v2 && r.phase != "progressing"
    })
    .await
    .unwrap_or_else(|last| panic!("v2 did not end: {last:#?}"));
    assert_eq!(done.phase, "completed", "{done:#?}");
    fleet.wait_converged(&v2).await;
    let passes = events(&fleet)
        .iter()
        .filter(|e| e["kind"] == "rollout-analysis-failed")
        .count();
    assert_eq!(passes, 0, "no measurement of v2 failed");

    // v3: the error ratio goes bad once the canary bakes.
    write_release(&fleet.repo, "v3", &manifest());
    let v3 = fleet.repo.commit("v3");
    let bakes = |fleet: &Fleet| {
        events(fleet).iter().any(|e| {
            e["kind"] == "rollout-stage-healthy"
                && e["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("stage canary is healthy on release")
        })
    };
    let healthy_before = events(&fleet)
        .iter()
        .filter(|e| e["kind"] == "rollout-stage-healthy")
        .count();
    eventually("v3's canary bakes", CONVERGE, || {
        bakes(&fleet)
            && events(&fleet)
                .iter()
                .filter(|e| e["kind"] == "rollout-stage-healthy")
                .count()
                > healthy_before
    })
    .await;
    assert_eq!(version_on(&fleet, 0).as_deref(), Some("v3"));
    exporter.set(SERIES, 0.5);
    let ended = poll_rollout(&fleet, Duration::from_millis(200), CONVERGE, |r| {
        r.release_commit == v3 && r.phase != "progressing"
    })
    .await
    .unwrap_or_else(|last| panic!("v3 did not end: {last:#?}"));
    assert_eq!(ended.phase, "rolled-back", "{ended:#?}");
    let log = events(&fleet);
    let failed = log
        .iter()
        .find(|e| e["kind"] == "rollout-analysis-failed")
        .expect("a rollout-analysis-failed event");
    let message = failed["message"].as_str().unwrap();
    assert!(
        message.contains(
            "analysis query errors of stage canary on cluster canary-1 failed: value 0.5"
        ) && message.contains("is not at most 0.05"),
        "{message}"
    );
    let rolled = log
        .iter()
        .find(|e| e["kind"] == "rollout-rolled-back")
        .expect("a rollout-rolled-back event");
    assert!(
        rolled["message"]
            .as_str()
            .unwrap()
            .contains("stage canary failed its analysis: query errors on cluster"),
        "{rolled}"
    );
    // `rollout status` shows the measurements that decided it.
    let status = fleet.cli_text(&["rollout", "status", "web"]);
    assert!(
        status.contains("  Analysis:        errors on canary-1: fail ("),
        "{status}"
    );
    let json = fleet.cli_json(&["rollout", "status", "web"]);
    let row = &json["stages"][0]["analysis"][0];
    assert_eq!(row["query"], "errors", "{json}");
    assert_eq!(row["cluster"], "canary-1");
    assert_eq!(row["last"], "fail");
    assert_eq!(row["failures"], 1, "{row}");

    // The canary is back on v2; the main stage never saw v3.
    eventually("the canary back on v2", CONVERGE, || {
        version_on(&fleet, 0).as_deref() == Some("v2")
    })
    .await;
    assert_eq!(version_on(&fleet, 1).as_deref(), Some("v2"));
    assert_eq!(version_on(&fleet, 2).as_deref(), Some("v2"));
    assert!(
        !log.iter().any(|e| e["kind"] == "rollout-cluster-updating"
            && e["cluster"] != "canary-1"
            && e["message"]
                .as_str()
                .unwrap_or("")
                .contains(&ended.release[..12.min(ended.release.len())])),
        "no main cluster was given v3"
    );

    // Bad inputs against the same server.
    let settings = AnalysisSettings {
        prometheus: prom.url(),
        timeout: Duration::from_secs(2),
        bearer_token_file: None,
        ca_file: None,
    };
    let client = Client::new(&settings).unwrap();
    let q = |query: &str| AnalysisQuery {
        name: "q".into(),
        query: query.into(),
        min: None,
        max: Some(1.0),
        no_data: NoData::Inconclusive,
    };
    let (o, d) = measure(Some(&client), "sum(rate(x[1m]", &q("")).await;
    assert_eq!(o, Outcome::Fail, "{d}");
    assert!(d.starts_with("Prometheus refuses the query: "), "{d}");
    assert!(d.contains("parse error"), "{d}");
    let (o, d) = measure(Some(&client), "no_such_metric_at_all", &q("")).await;
    assert_eq!(
        (o, d.as_str()),
        (
            Outcome::Inconclusive,
            "the query returned no series (noData: inconclusive)"
        )
    );
    let (o, d) = measure(Some(&client), SERIES, &q("")).await;
    assert_eq!(o, Outcome::Pass, "{d}");
    let gone = AnalysisSettings {
        prometheus: format!(
            "http://127.0.0.1:{}",
            flotilla_tests::replicated::free_port()
        ),
        ..settings.clone()
    };
    // A token file that cannot be read: inconclusive, naming the file, and nothing is sent.
    let unreadable = AnalysisSettings {
        bearer_token_file: Some(work.path().join("no-such-token")),
        ..settings.clone()
    };
    let (o, d) = measure(Some(&Client::new(&unreadable).unwrap()), SERIES, &q("")).await;
    assert_eq!(o, Outcome::Inconclusive);
    assert!(
        d.starts_with("cannot read analysis.bearerTokenFile "),
        "{d}"
    );
    let (o, d) = measure(Some(&Client::new(&gone).unwrap()), SERIES, &q("")).await;
    assert_eq!(o, Outcome::Inconclusive);
    assert!(d.contains("cannot be reached"), "{d}");
    let (o, d) = measure(None, SERIES, &q("")).await;
    assert_eq!(
        (o, d.as_str()),
        (
            Outcome::Inconclusive,
            "no Prometheus is configured (analysis.prometheus in hub.yaml)"
        )
    );
    fleet.shutdown().await;
}
