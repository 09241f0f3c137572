//! End to end: `flotilla plan` against a real hub and agents. A commit on a branch the hub does not track
//! is planned before anything is applied: its stages in rollout order, per cluster the objects it adds and
//! changes against the cluster's latest ClusterState, and one cluster's unified diff; a manifest with an
//! impossible rollout setting and one whose settings do not fit the fleet are explained, not planned
//! silently.

use flotilla_tests::fixture::{Fleet, GitRepo};

const ROLLOUT: &str = r#"    rollout:
      stages:
        - {name: canary, selector: {matchLabels: {ring: canary}}, maxUnavailable: 1, bake: 10m, approval: manual}
        - {name: wave-1, selector: {matchLabels: {ring: "1"}}, maxUnavailable: 50%}
"#;

fn manifest(rollout: &str) -> String {
    format!("apps:\n  - name: shop\n    path: apps/shop\n    namespace: shop\n{rollout}")
}

const SETTINGS: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: prod, size: \"1\"}\n";
const FLAGS: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: flags}\ndata: {beta: \"off\"}\n";

fn fill(repo: &GitRepo) {
    repo.write("flotilla.yaml", &manifest(ROLLOUT))
        .write("apps/shop/settings.yaml", SETTINGS)
        .write("apps/shop/flags.yaml", FLAGS);
    repo.commit("shop");
}

/// Commits `files` on a new branch `name` started from `main`, and goes back to `main`.
fn branch(repo: &GitRepo, name: &str, files: &[(&str, &str)]) -> String {
    repo.git(&["checkout", "-q", "-b", name, "main"]);
    for (path, text) in files {
        repo.write(path, text);
    }
    let commit = repo.commit(name);
    repo.git(&["checkout", "-q", "main"]);
    commit
}

/// Runs `flotilla plan` expecting it to fail; returns its standard error.
fn plan_error(fleet: &Fleet, args: &[&str]) -> String {
    let out = fleet
        .cli_command()
        .args(["plan", "--app", "shop"])
        .args(args)
        .output()
        .expect("run flotilla");
    assert!(
        !out.status.success(),
        "flotilla plan {args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn layout(plan: &serde_json::Value) -> Vec<(String, Vec<String>)> {
    plan["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["clusters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c["name"].as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

fn counts(cluster: &serde_json::Value) -> [u64; 4] {
    ["added", "changed", "removed", "unchanged"].map(|k| cluster[k].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_previews_a_branch_by_stage_and_cluster_before_it_is_applied() {
    let mut fleet = Fleet::start(fill).await;
    // Added out of name order: the plan orders each stage by name.
    fleet.add_agent("w1-b", "ring=1").await;
    fleet.add_agent("can-1", "ring=canary").await;
    fleet.add_agent("w1-a", "ring=1").await;
    fleet.add_agent("lab", "ring=lab").await;
    let main = fleet.repo.git(&["rev-parse", "HEAD"]);
    fleet.wait_converged(&main).await;

    // The commit in force against itself: nothing changes anywhere.
    let now = fleet.cli_json(&["plan", "--app", "shop"]);
    assert_eq!(now["commit"], main.as_str());
    for stage in now["stages"].as_array().unwrap() {
        for c in stage["clusters"].as_array().unwrap() {
            assert_eq!(counts(c), [0, 0, 0, 2], "{c}");
        }
    }

    // A feature branch the hub does not track: one object changed, one added.
    let feature = branch(
        &fleet.repo,
        "feature",
        &[
            (
                "apps/shop/settings.yaml",
                &SETTINGS.replace("prod", "canary"),
            ),
            (
                "apps/shop/extra.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra}\ndata: {k: v}\n",
            ),
        ],
    );
    let plan = fleet.cli_json(&["plan", "--app", "shop", "--rev", "feature"]);
    assert_eq!(plan["app"], "shop");
    assert_eq!(plan["source"], "main");
    assert_eq!(plan["commit"], feature.as_str());
    assert_eq!(plan["staged"], true);
    assert!(
        plan["release"].as_str().unwrap().starts_with("sha256:"),
        "{plan}"
    );
    assert_ne!(plan["release"], now["release"]);
    assert_eq!(plan["warnings"], serde_json::json!([]));
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        layout(&plan),
        [
            ("canary".to_string(), s(&["can-1"])),
            ("wave-1".to_string(), s(&["w1-a", "w1-b"])),
            ("rest".to_string(), s(&["lab"])),
        ]
    );
    let stages = plan["stages"].as_array().unwrap();
    assert_eq!(stages[0]["max_unavailable"], 1);
    assert_eq!(stages[0]["bake_seconds"], 600);
    assert_eq!(stages[0]["approval"], "manual");
    assert_eq!(stages[1]["approval"], "auto");
    for stage in stages {
        for c in stage["clusters"].as_array().unwrap() {
            assert_eq!(counts(c), [1, 1, 0, 1], "{c}");
            assert_eq!(c["offline"], false, "{c}");
            assert_eq!(c["error"], "", "{c}");
        }
    }
    // Nothing was applied: every cluster still runs main.
    let status = fleet.status().await;
    assert!(status.converged_at(&main));

    // An abbreviated commit id resolves to the same commit.
    let short = fleet.cli_json(&["plan", "--app", "shop", "--rev", &feature[..10]]);
    assert_eq!(short["commit"], feature.as_str());
    // So does a tag the hub never fetched (annotated: peeled to its commit).
    fleet
        .repo
        .git(&["tag", "-a", "v2.0.0", "-m", "release", &feature]);
    let tagged = fleet.cli_json(&["plan", "--app", "shop", "--rev", "v2.0.0"]);
    assert_eq!(tagged["commit"], feature.as_str());

    // The table and one cluster's diff.
    let text = fleet.cli_text(&[
        "plan", "--app", "shop", "--rev", "feature", "--diff", "w1-a",
    ]);
    assert!(
        text.contains("stage 1/3 canary: maxUnavailable 1, bake 10m, approval manual"),
        "{text}"
    );
    assert!(
        text.contains("--- ConfigMap shop/settings (w1-a ClusterState v"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "+++ ConfigMap shop/settings (feature @ {})",
            &feature[..12]
        )),
        "{text}"
    );
    assert!(
        text.contains("\n-  mode: prod\n+  mode: canary\n"),
        "{text}"
    );
    assert!(
        text.contains("+++ ConfigMap shop/extra (feature @ "),
        "{text}"
    );
    assert!(
        !text.contains("shop/flags"),
        "unchanged objects are not in the diff: {text}"
    );

    // A manifest that cannot mean anything names the file and the field.
    branch(
        &fleet.repo,
        "zero",
        &[(
            "flotilla.yaml",
            &manifest(&ROLLOUT.replace("maxUnavailable: 1,", "maxUnavailable: 0,")),
        )],
    );
    let err = plan_error(&fleet, &["--rev", "zero"]);
    assert!(err.contains("flotilla.yaml"), "{err}");
    assert!(err.contains("maxUnavailable"), "{err}");

    // Settings that do not fit the fleet plan, with warnings.
    branch(
        &fleet.repo,
        "misfit",
        &[(
            "flotilla.yaml",
            &manifest(&format!(
                "{ROLLOUT}        - {{name: ghost, selector: {{matchLabels: {{ring: nowhere}}}}}}\n      failureBudget: 10\n"
            )),
        )],
    );
    let misfit = fleet.cli_json(&["plan", "--app", "shop", "--rev", "misfit"]);
    let warnings = misfit["warnings"].to_string();
    assert!(
        warnings.contains("stage \\\"ghost\\\": selector ring=nowhere matches no cluster"),
        "{warnings}"
    );
    assert!(
        warnings.contains("failureBudget 10 is not smaller than the 4 targeted clusters"),
        "{warnings}"
    );
    assert_eq!(
        layout(&misfit)
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["canary", "wave-1", "ghost", "rest"]
    );

    // A revision that is nowhere.
    let err = plan_error(&fleet, &["--rev", "no-such-branch"]);
    assert!(
        err.contains("\"no-such-branch\" is not a commit, branch or tag of source main"),
        "{err}"
    );
    let err = plan_error(&fleet, &["--rev", "feature", "--diff", "nobody"]);
    assert!(err.contains("no cluster named \"nobody\""), "{err}");

    fleet.shutdown().await;
}
