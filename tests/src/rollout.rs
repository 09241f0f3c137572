//! A staged app for rollout tests and benchmarks: `web` (a Namespace, a ConfigMap naming the release's
//! version, a Deployment) in three stages selected by the `ring` label — `canary` (one at a time),
//! `early` (two at a time) and `main` (half at a time) — with a failure budget of 0 and rollback.

use std::time::Duration;

use flotilla_proto::v1 as pb;

use crate::fixture::{Fleet, GitRepo};

/// The app's `flotilla.yaml`; `bake` (e.g. `6s`, empty for none) is the canary's bake, and `manual_early`
/// puts an approval gate before the early stage.
pub fn manifest(bake: &str, manual_early: bool) -> String {
    let bake = if bake.is_empty() {
        String::new()
    } else {
        format!(", bake: {bake}")
    };
    let approval = if manual_early {
        ", approval: manual"
    } else {
        ""
    };
    format!(
        "apps:\n  - name: web\n    path: web\n    namespace: web\n    rollout:\n      stages:\n        - {{name: canary, selector: {{matchLabels: {{ring: canary}}}}, maxUnavailable: 1{bake}}}\n        - {{name: early, selector: {{matchLabels: {{ring: early}}}}, maxUnavailable: 2{approval}}}\n        - {{name: main, selector: {{matchLabels: {{ring: main}}}}, maxUnavailable: \"50%\"}}\n      failureBudget: 0\n      onFailure: rollback\n      progressDeadline: 60s\n"
    )
}

/// Writes release `version` of the app (not committed).
pub fn write_release(repo: &GitRepo, version: &str, manifest: &str) {
    repo.write("flotilla.yaml", manifest)
        .write(
            "web/namespace.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: web}\n",
        )
        .write(
            "web/config.yaml",
            &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: web}}\ndata: {{version: {version}}}\n"),
        )
        .write(
            "web/deploy.yaml",
            &format!("apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec: {{containers: [{{name: web, image: \"web:{version}\"}}]}}\n"),
        );
}

/// Cluster names and rings: one canary, three early, `n - 4` main (n at least 5).
pub fn rings(n: usize) -> Vec<(String, &'static str)> {
    std::iter::once(("canary-1".to_string(), "canary"))
        .chain((1..=3).map(|i| (format!("early-{i}"), "early")))
        .chain((1..=n.saturating_sub(4)).map(|i| (format!("main-{i}"), "main")))
        .collect()
}

/// The app's newest rollout, or `None` (none yet, or the hub is not answering).
pub async fn get_rollout(fleet: &Fleet) -> Option<pb::Rollout> {
    let mut admin = flotilla_cli::client::connect_admin(&fleet.hub.url(), &fleet.hub.admin_dir())
        .await
        .ok()?;
    admin
        .get_rollout(pb::GetRolloutRequest { app: "web".into() })
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Polls the app's rollout every `every` until `check` holds; `None` after `deadline`.
pub async fn poll_rollout(
    fleet: &Fleet,
    every: Duration,
    deadline: Duration,
    check: impl Fn(&pb::Rollout) -> bool,
) -> Result<pb::Rollout, Option<pb::Rollout>> {
    let end = tokio::time::Instant::now() + deadline;
    let mut last = None;
    loop {
        if let Some(r) = get_rollout(fleet).await {
            if check(&r) {
                return Ok(r);
            }
            last = Some(r);
        }
        if tokio::time::Instant::now() >= end {
            return Err(last);
        }
        tokio::time::sleep(every).await;
    }
}

/// The app's events, oldest first, as `flotilla events --app web -o json` prints them.
pub fn events(fleet: &Fleet) -> Vec<serde_json::Value> {
    fleet
        .cli_text(&["events", "--app", "web", "--limit", "1000", "-o", "json"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("event JSON"))
        .collect()
}
