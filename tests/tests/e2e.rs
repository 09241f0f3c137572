//! End-to-end: real hub and agent processes, a real Git repository, the
//! directory target. Each test builds its own fleet in a temporary directory.

use std::time::{Duration, Instant};

use flotilla_tests::fixture::{CONVERGE, Fleet, GitRepo, eventually};

const MANIFEST: &str = r#"apps:
  - name: base
    path: apps/base
    namespace: web
  - name: web
    path: apps/web
    namespace: web
    dependsOn: [base]
    values: {replicas: 2, greeting: hello}
    targets:
      - name: edge
        selector: {matchLabels: {tier: edge}}
        values: {replicas: 1}
      - name: rest
        selector: {}
"#;

const BASE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: web\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  color: blue\n";

const WEB: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  annotations:
    cluster: "{{ cluster.name }}"
    region: "{{ cluster.labels.region }}"
    greeting: "{{ values.greeting }}"
spec:
  replicas: {{ values.replicas }}
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: "web:1"}]
"#;

fn fill(repo: &GitRepo) {
    repo.write("flotilla.yaml", MANIFEST)
        .write("apps/base/objects.yaml", BASE)
        .write("apps/web/deployment.yaml.j2", WEB);
    repo.commit("initial");
}

const CM: &str = "core_v1_ConfigMap_web_settings";
const DEPLOY: &str = "apps_v1_Deployment_web_web";
const NS: &str = "core_v1_Namespace__cluster_web";

async fn three_clusters() -> Fleet {
    let mut fleet = Fleet::start(fill).await;
    fleet.add_agent("edge-1", "tier=edge,region=eu").await;
    fleet.add_agent("core-eu", "tier=core,region=eu").await;
    fleet.add_agent("core-us", "tier=core,region=us").await;
    fleet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_converges_and_follows_commits() {
    let fleet = three_clusters().await;
    let first = fleet.repo.git(&["rev-parse", "HEAD"]);
    let status = fleet.wait_converged(&first).await;
    assert_eq!(status.clusters.len(), 3);

    // Per-cluster rendering: targets, values and cluster labels.
    let edge = fleet.object(0, DEPLOY).expect("edge deployment");
    assert_eq!(edge["spec"]["replicas"], 1);
    assert_eq!(edge["metadata"]["annotations"]["cluster"], "edge-1");
    let us = fleet.object(2, DEPLOY).expect("us deployment");
    assert_eq!(us["spec"]["replicas"], 2);
    assert_eq!(us["metadata"]["annotations"]["region"], "us");
    assert_eq!(us["metadata"]["namespace"], "web");
    assert!(fleet.object(1, NS).is_some());
    assert_eq!(fleet.object(1, CM).unwrap()["data"]["color"], "blue");

    // A change reaches every cluster; a removed object is pruned.
    fleet
        .repo
        .write("apps/base/objects.yaml", &BASE.replace("blue", "green"));
    fleet.repo.write(
        "apps/web/deployment.yaml.j2",
        &WEB.replace("web:1", "web:2"),
    );
    let started = Instant::now();
    let second = fleet.repo.commit("web v2");
    fleet.wait_converged(&second).await;
    eprintln!("commit-to-applied on 3 agents: {:?}", started.elapsed());
    for i in 0..3 {
        assert_eq!(fleet.object(i, CM).unwrap()["data"]["color"], "green");
        assert_eq!(
            fleet.object(i, DEPLOY).unwrap()["spec"]["template"]["spec"]["containers"][0]["image"],
            "web:2"
        );
    }

    fleet.repo.write(
        "apps/base/objects.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: web\n",
    );
    let third = fleet.repo.commit("drop settings");
    fleet.wait_converged(&third).await;
    for i in 0..3 {
        assert!(
            fleet.object(i, CM).is_none(),
            "settings pruned on cluster {i}"
        );
        assert!(fleet.object(i, NS).is_some());
    }
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_commits_keep_the_previous_state_and_show_the_error() {
    let mut fleet = Fleet::start(fill).await;
    fleet.add_agent("one", "tier=core,region=eu").await;
    let good = fleet.repo.git(&["rev-parse", "HEAD"]);
    fleet.wait_converged(&good).await;
    let before = fleet.object(0, CM).unwrap();

    type BreakRepo = Box<dyn Fn(&GitRepo)>;
    let cases: Vec<(&str, BreakRepo, &str)> = vec![
        (
            "broken YAML",
            Box::new(|r: &GitRepo| {
                r.write(
                    "apps/base/objects.yaml",
                    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: [unclosed\n",
                );
            }),
            "apps/base/objects.yaml",
        ),
        (
            "unknown manifest field",
            Box::new(|r: &GitRepo| {
                r.write("apps/base/objects.yaml", BASE);
                r.write(
                    "flotilla.yaml",
                    &MANIFEST.replace(
                        "namespace: web\n  - name: web",
                        "namespace: web\n    colour: red\n  - name: web",
                    ),
                );
            }),
            "colour",
        ),
        (
            "symlink app path",
            Box::new(|r: &GitRepo| {
                r.write(
                    "flotilla.yaml",
                    &MANIFEST.replace("path: apps/base", "path: linked"),
                );
                r.symlink("linked", "/etc");
            }),
            "linked",
        ),
        (
            "dot-dot app path",
            Box::new(|r: &GitRepo| {
                r.write(
                    "flotilla.yaml",
                    &MANIFEST.replace("path: apps/base", "path: apps/../../outside"),
                );
            }),
            "..",
        ),
    ];
    for (what, break_it, needle) in cases {
        break_it(&fleet.repo);
        let bad = fleet.repo.commit(what);
        let status = fleet
            .wait_status(what, CONVERGE, |s| {
                s.sources[0].fetched_commit == bad && !s.sources[0].error.is_empty()
            })
            .await;
        let source = &status.sources[0];
        assert!(
            source.error.contains(needle),
            "{what}: error {:?} should name {needle:?}",
            source.error
        );
        assert_eq!(
            source.rendered_commit, good,
            "{what}: previous commit stays in force"
        );
        assert!(
            status.converged_at(&good),
            "{what}: clusters stay on the good commit"
        );
        assert_eq!(
            fleet.object(0, CM).unwrap(),
            before,
            "{what}: applied objects untouched"
        );
    }

    // Repair: the next good commit goes through and clears the error.
    std::fs::remove_file(fleet.repo.path.join("linked")).unwrap();
    fleet.repo.write("flotilla.yaml", MANIFEST);
    fleet
        .repo
        .write("apps/base/objects.yaml", &BASE.replace("blue", "red"));
    let fixed = fleet.repo.commit("fixed");
    let status = fleet.wait_converged(&fixed).await;
    assert!(status.sources[0].error.is_empty());
    assert_eq!(fleet.object(0, CM).unwrap()["data"]["color"], "red");
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_tokens_are_single_use_and_expire() {
    let mut fleet = Fleet::start(fill).await;
    let i = fleet.add_agent("first", "tier=core,region=eu").await;
    let good = fleet.repo.git(&["rev-parse", "HEAD"]);
    fleet.wait_converged(&good).await;

    // Reuse: a second agent with the same token file is refused and exits.
    let token = std::fs::read_to_string(&fleet.agents[i].token_file).unwrap();
    let mut reuse = flotilla_tests::fleet::LocalAgent::new(
        &fleet.bins,
        fleet.dir.path(),
        "second",
        &token,
        &fleet.hub,
    )
    .unwrap();
    reuse.start().unwrap();
    eventually("reused-token agent to exit", CONVERGE, || {
        reuse.exited().is_some()
    })
    .await;
    assert!(!reuse.exited().unwrap().success());
    let log = std::fs::read_to_string(&reuse.log_path).unwrap();
    assert!(
        log.contains("unknown, already used or expired"),
        "log: {log}"
    );

    // Expiry: a token with a 1 s TTL, used after it lapsed.
    let short = fleet
        .token("tier=core,region=eu", Duration::from_secs(1))
        .await;
    let issued = Instant::now();
    eventually("token to expire", Duration::from_secs(10), || {
        issued.elapsed() > Duration::from_millis(2100)
    })
    .await;
    let mut late = flotilla_tests::fleet::LocalAgent::new(
        &fleet.bins,
        fleet.dir.path(),
        "late",
        &short,
        &fleet.hub,
    )
    .unwrap();
    late.start().unwrap();
    eventually("expired-token agent to exit", CONVERGE, || {
        late.exited().is_some()
    })
    .await;
    assert!(!late.exited().unwrap().success());

    let status = fleet.status().await;
    let names: Vec<&str> = status
        .clusters
        .iter()
        .map(|c| c.cluster.name.as_str())
        .collect();
    assert_eq!(names, ["first"], "refused registrations create no cluster");
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_lose_no_registration_and_no_applied_state() {
    let mut fleet = Fleet::start(fill).await;
    fleet.add_agent("one", "tier=edge,region=eu").await;
    fleet.add_agent("two", "tier=core,region=us").await;
    let good = fleet.repo.git(&["rev-parse", "HEAD"]);
    let before = fleet.wait_converged(&good).await;
    let ids: Vec<String> = before
        .clusters
        .iter()
        .map(|c| c.cluster.id.clone())
        .collect();

    // Hub killed without warning, then restarted on the same address.
    fleet.hub.kill().await;
    // Meanwhile an agent restarts with the hub down: it keeps (and re-applies) its state from disk.
    fleet.agents[0].kill().await;
    std::fs::remove_file(fleet.agents[0].target_dir.join(format!("{CM}.json"))).unwrap();
    fleet.agents[0].start().unwrap();
    eventually("agent to restore its state with no hub", CONVERGE, || {
        fleet.object(0, CM).is_some()
    })
    .await;

    fleet.hub.start().await.unwrap();
    let after = fleet.wait_converged(&good).await;
    let ids_after: Vec<String> = after
        .clusters
        .iter()
        .map(|c| c.cluster.id.clone())
        .collect();
    assert_eq!(ids, ids_after, "registrations survive a hub crash");
    for (b, a) in before.clusters.iter().zip(&after.clusters) {
        assert_eq!(
            b.cluster.desired_version, a.cluster.desired_version,
            "no new version for the same commit"
        );
    }

    // And the restarted fleet still follows Git.
    fleet
        .repo
        .write("apps/base/objects.yaml", &BASE.replace("blue", "teal"));
    let next = fleet.repo.commit("teal");
    fleet.wait_converged(&next).await;
    assert_eq!(fleet.object(0, CM).unwrap()["data"]["color"], "teal");
    assert_eq!(fleet.object(1, CM).unwrap()["data"]["color"], "teal");
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_signed_with_another_key_is_rejected_and_reported() {
    let mut fleet = Fleet::start(fill).await;
    fleet.add_agent("one", "tier=core,region=eu").await;
    let good = fleet.repo.git(&["rev-parse", "HEAD"]);
    fleet.wait_converged(&good).await;
    let before = fleet.object(0, CM).unwrap();

    // The hub's signing key is replaced behind the agents' back (a compromised
    // or rebuilt hub): everything it signs now fails the pinned-key check.
    fleet.hub.stop().await;
    let key = fleet.hub.data_dir.join("pki/signing.key");
    std::fs::write(&key, "11".repeat(32)).unwrap();
    fleet.hub.start().await.unwrap();
    fleet
        .repo
        .write("apps/base/objects.yaml", &BASE.replace("blue", "evil"));
    let evil = fleet.repo.commit("evil");

    let status = fleet
        .wait_status("the rejection to be reported", CONVERGE, |s| {
            !s.clusters[0].cluster.rejection.is_empty()
        })
        .await;
    assert!(
        status.clusters[0].cluster.rejection.contains("signature"),
        "{:?}",
        status.clusters[0].cluster.rejection
    );
    assert!(!status.converged_at(&evil));
    assert_eq!(
        fleet.object(0, CM).unwrap(),
        before,
        "nothing from the forged state applied"
    );
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_any_log() {
    let dir = tempfile::tempdir().unwrap();
    let git_token = "canary-git-token-3f9a1c";
    let token_file = dir.path().join("git-token");
    std::fs::write(&token_file, git_token).unwrap();

    let mut fleet = Fleet::start(fill).await;
    // Reconfigure the source with a credential file and restart the hub.
    fleet.hub.stop().await;
    let config = std::fs::read_to_string(&fleet.hub.config_path).unwrap();
    std::fs::write(
        &fleet.hub.config_path,
        format!("{config}    tokenFile: {}\n", token_file.display()),
    )
    .unwrap();
    fleet.hub.start().await.unwrap();
    fleet.add_agent("one", "tier=core,region=eu").await;
    let good = fleet.repo.git(&["rev-parse", "HEAD"]);
    fleet.wait_converged(&good).await;
    // A refused registration logs too: make sure it does not log the token.
    let bogus = "flt_canaryBootstrapTokenThatIsNotValid";
    let mut bad = flotilla_tests::fleet::LocalAgent::new(
        &fleet.bins,
        fleet.dir.path(),
        "bad",
        bogus,
        &fleet.hub,
    )
    .unwrap();
    bad.start().unwrap();
    eventually("bad agent to exit", CONVERGE, || bad.exited().is_some()).await;

    let bootstrap = std::fs::read_to_string(&fleet.agents[0].token_file).unwrap();
    let signing = std::fs::read_to_string(fleet.hub.data_dir.join("pki/signing.key")).unwrap();
    let ca_key = std::fs::read_to_string(fleet.hub.data_dir.join("pki/ca-key.pem")).unwrap();
    let key_body: String = ca_key.lines().filter(|l| !l.starts_with("-----")).collect();
    let mut logs = fleet.all_logs();
    logs.push_str(&std::fs::read_to_string(&bad.log_path).unwrap());
    assert!(logs.len() > 200, "the processes logged something");
    for (what, secret) in [
        ("git token", git_token),
        ("bootstrap token", bootstrap.trim()),
        ("bogus bootstrap token", bogus),
        ("signing key", signing.trim()),
        ("CA key", &key_body[..40]),
    ] {
        assert!(!logs.contains(secret), "{what} appears in a log");
    }
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_relabel_describe_and_delete_clusters_with_the_cli() {
    let mut fleet = Fleet::start(fill).await;
    fleet
        .add_agent("core-eu", "tier=core,region=eu,owner=a")
        .await;
    let first = fleet.repo.git(&["rev-parse", "HEAD"]);
    fleet.wait_converged(&first).await;
    assert_eq!(fleet.object(0, DEPLOY).unwrap()["spec"]["replicas"], 2);

    // Relabelled into the edge target, the cluster gets the edge values without a commit.
    let labelled = fleet.cli_json(&["cluster", "label", "core-eu", "tier=edge", "owner-"]);
    assert_eq!(
        labelled["labels"],
        serde_json::json!({"tier": "edge", "region": "eu"})
    );
    eventually("the edge values applied", CONVERGE, || {
        fleet
            .object(0, DEPLOY)
            .is_some_and(|d| d["spec"]["replicas"] == 1)
    })
    .await;

    let described = fleet.cli_json(&["cluster", "describe", "core-eu"]);
    assert_eq!(described["name"], "core-eu");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let expires = described["cert_expires_at"].as_i64().unwrap();
    assert!(
        expires > now + 29 * 24 * 3600 && expires <= now + 30 * 24 * 3600 + 60,
        "certificates default to 30 days: {expires} vs now {now}"
    );
    assert!(
        described["apps"].as_array().unwrap().len() == 2,
        "{described}"
    );

    let deleted = fleet.cli_json(&["cluster", "delete", "core-eu"]);
    assert_eq!(deleted["name"], "core-eu");
    assert_eq!(fleet.cli_json(&["cluster", "get"]), serde_json::json!([]));
    // Nothing is deleted from the cluster because the hub let it go.
    assert_eq!(fleet.object(0, DEPLOY).unwrap()["spec"]["replicas"], 1);
    fleet.shutdown().await;
}

const PROBE_MANIFEST: &str = "apps:\n  - name: probe\n    path: apps/probe\n    namespace: web\n";

/// A template that branches on what the cluster's agent reported.
const PROBE: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: probe
data:
  kube: "{{ cluster.kubeVersion or 'none' }}"
  widgets: "{{ 'yes' if 'example.com/v1/Widget' in cluster.apiVersions else 'no' }}"
"#;

const PROBE_CM: &str = "core_v1_ConfigMap_web_probe";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_from_agent_flags_reach_templates_and_the_cli_and_follow_a_restart() {
    let mut fleet = Fleet::start(|repo| {
        repo.write("flotilla.yaml", PROBE_MANIFEST)
            .write("apps/probe/cm.yaml.j2", PROBE);
        repo.commit("probe");
    })
    .await;
    fleet
        .add_agent_with_args(
            "edge-1",
            "tier=edge",
            None,
            &[
                "--kube-version",
                "v1.31.2",
                "--api-versions",
                "v1,example.com/v1",
                "--api-versions",
                "example.com/v1/Widget",
            ],
        )
        .await;
    let commit = fleet.repo.git(&["rev-parse", "HEAD"]);
    fleet.wait_converged(&commit).await;
    // Registration carried them: the very first render saw them.
    let cm = fleet.object(0, PROBE_CM).unwrap();
    assert_eq!(
        cm["data"],
        serde_json::json!({"kube": "v1.31.2", "widgets": "yes"})
    );
    let got = fleet.cli_json(&["cluster", "get", "edge-1"]);
    assert_eq!(
        got[0]["capabilities"],
        serde_json::json!({
            "kube_version": "v1.31.2",
            "api_versions": ["example.com/v1", "example.com/v1/Widget", "v1"],
        })
    );
    let described = fleet.cli_text(&["cluster", "describe", "edge-1"]);
    assert!(
        described.contains("Kubernetes:         v1.31.2, 3 API versions"),
        "{described}"
    );

    // Restarted with other flags, the agent reports the change; the hub re-renders the same
    // commit and issues a new state with the other branch of the template.
    let desired = fleet.status().await.clusters[0].cluster.desired_version;
    fleet.agents[0].stop().await;
    fleet.agents[0].extra_args = vec!["--kube-version".into(), "v1.32.0".into()];
    fleet.agents[0].start().unwrap();
    eventually("the re-rendered probe", CONVERGE, || {
        fleet
            .object(0, PROBE_CM)
            .is_some_and(|cm| cm["data"]["widgets"] == "no" && cm["data"]["kube"] == "v1.32.0")
    })
    .await;
    let got = fleet.cli_json(&["cluster", "get", "edge-1"]);
    assert_eq!(
        got[0]["capabilities"],
        serde_json::json!({"kube_version": "v1.32.0", "api_versions": []})
    );
    let status = fleet.status().await;
    assert_eq!(status.clusters[0].cluster.desired_version, desired + 1);
    // One change, one report: the first start had nothing to add to the registration, and
    // the restart's report differed.
    let hub_log = std::fs::read_to_string(&fleet.hub.log_path).unwrap();
    assert_eq!(
        hub_log.matches("cluster capabilities changed").count(),
        1,
        "{hub_log}"
    );
    fleet.shutdown().await;
}
