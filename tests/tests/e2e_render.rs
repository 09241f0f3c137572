//! End to end with the external renderers: the real hub binary renders a kustomize overlay (with
//! `kubectl kustomize`) and a Helm chart (Helm's engine through tools/helm) for two clusters in different
//! targets, each agent applies its objects to its own Kubernetes API simulator; a broken chart keeps the
//! previous release in force with Helm's message on the source.

use std::time::Duration;

use flotilla_kubesim::KubeSim;
use flotilla_tests::fixture::{CONVERGE, Fleet, GitRepo, eventually};

const MANIFEST: &str = r#"apps:
  - name: shop
    path: overlays/prod
    namespace: shop
    targets:
      - {name: edge, selector: {matchLabels: {tier: edge}}, path: overlays/edge}
      - {name: rest, selector: {}}
  - name: cache
    path: charts/cache
    namespace: shop
    dependsOn: [shop]
    values: {size: 64}
    targets:
      - {name: edge, selector: {matchLabels: {tier: edge}}, values: {size: 8}}
      - {name: rest, selector: {}}
"#;

fn fill(repo: &GitRepo) {
    repo.write("flotilla.yaml", MANIFEST)
        .write(
            "base/kustomization.yaml",
            "resources: [namespace.yaml, settings.yaml]\n",
        )
        .write(
            "base/namespace.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
        )
        .write(
            "base/settings.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {tier: base}\n",
        )
        .write(
            "overlays/prod/kustomization.yaml",
            "resources: [../../base]\nconfigMapGenerator:\n  - {name: flags, literals: [mode=prod]}\n",
        )
        .write(
            "overlays/edge/kustomization.yaml",
            "resources: [../../base]\nconfigMapGenerator:\n  - {name: flags, literals: [mode=edge]}\npatches:\n  - target: {kind: ConfigMap, name: settings}\n    patch: |-\n      - {op: replace, path: /data/tier, value: edge}\n",
        )
        .write(
            "charts/cache/Chart.yaml",
            "apiVersion: v2\nname: cache\nversion: 0.3.0\n",
        )
        .write("charts/cache/values.yaml", "size: 1\n")
        .write(
            "charts/cache/templates/cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-size\ndata:\n  size: {{ .Values.size | quote }}\n",
        );
    repo.commit("shop and cache");
}

fn data(sim: &KubeSim, name: &str, key: &str) -> Option<String> {
    sim.get("v1", "ConfigMap", "shop", name)
        .and_then(|cm| cm["data"][key].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kustomize_and_helm_apps_reach_clusters_by_target() {
    let helm = flotilla_testkit::helm();
    let mut fleet = Fleet::start_with_env(
        fill,
        Duration::from_millis(200),
        "",
        vec![("FLOTILLA_HELM".into(), helm.display().to_string())],
    )
    .await;
    let sims: Vec<KubeSim> = ["edge", "core"]
        .iter()
        .map(|n| KubeSim::start(&fleet.dir.path().join(format!("{n}-kube"))).unwrap())
        .collect();
    fleet
        .add_kube_agent("edge-1", "tier=edge", sims[0].kubeconfig_path())
        .await;
    fleet
        .add_kube_agent("core-1", "tier=core", sims[1].kubeconfig_path())
        .await;
    let first = fleet.repo.git(&["rev-parse", "HEAD"]);
    let status = fleet.wait_converged(&first).await;
    // Status names the flotilla.yaml each app comes from.
    assert!(
        status
            .clusters
            .iter()
            .flat_map(|c| c.apps.iter())
            .all(|a| a.origin == "flotilla.yaml"),
        "{status:?}"
    );

    // kustomize: the overlay per target, the generated ConfigMap under its hashed name.
    assert_eq!(data(&sims[0], "settings", "tier").as_deref(), Some("edge"));
    assert_eq!(data(&sims[1], "settings", "tier").as_deref(), Some("base"));
    for (sim, mode) in sims.iter().zip(["edge", "prod"]) {
        let flags = sim
            .list("v1", "ConfigMap")
            .into_iter()
            .find(|cm| {
                cm["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("flags-"))
            })
            .expect("the generated ConfigMap");
        assert_eq!(flags["data"]["mode"], mode);
    }
    // Helm: target values over app values over the chart's.
    assert_eq!(data(&sims[0], "cache-size", "size").as_deref(), Some("8"));
    assert_eq!(data(&sims[1], "cache-size", "size").as_deref(), Some("64"));

    // A template error in the chart: the commit does not go into force, Helm's message names the file.
    fleet.repo.write(
        "charts/cache/templates/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Values.nope.deeper }}\n",
    );
    fleet.repo.commit("broken chart");
    fleet
        .wait_status("the render error on the source", CONVERGE, |s| {
            s.sources
                .iter()
                .any(|src| src.error.contains("cache/templates/cm.yaml:4"))
        })
        .await;
    let status = fleet.status().await;
    let source = &status.sources[0];
    assert_eq!(source.rendered_commit, first, "{source:?}");
    assert_eq!(data(&sims[0], "cache-size", "size").as_deref(), Some("8"));

    // A fix goes through.
    fleet.repo.write(
        "charts/cache/templates/cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-size\ndata:\n  size: {{ .Values.size | quote }}\n  fixed: \"yes\"\n",
    );
    // The fix also adds a Deployment, which core-1's cluster never makes available.
    fleet.repo.write(
        "charts/cache/templates/deploy.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: cache}\nspec:\n  selector: {matchLabels: {app: cache}}\n  template:\n    metadata: {labels: {app: cache}}\n    spec: {containers: [{name: cache, image: \"cache:1\"}]}\n",
    );
    sims[1].set_workload_mode(flotilla_kubesim::workload::WorkloadMode::Failed);
    let fixed = fleet.repo.commit("fixed chart");
    fleet.wait_converged(&fixed).await;
    eventually("the fix applied", CONVERGE, || {
        data(&sims[1], "cache-size", "fixed").as_deref() == Some("yes")
    })
    .await;

    // The event log has every change, in order; `--follow` streams new ones.
    let lines = fleet.cli_text(&["events", "-o", "json"]);
    let events: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    for want in ["cluster-registered", "commit-in-force", "render-failed"] {
        assert!(kinds.contains(&want), "{want} missing from {kinds:?}");
    }
    let failed = events
        .iter()
        .find(|e| e["kind"] == "render-failed")
        .unwrap();
    assert_eq!(failed["severity"], "error");
    assert_eq!(failed["source"], "main");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("cache/templates/cm.yaml:4"),
        "{failed}"
    );
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let only_core = fleet.cli_text(&["events", "--cluster", "core-1", "-o", "json"]);
    assert!(
        only_core
            .lines()
            .all(|l| l.contains("\"cluster\":\"core-1\"")),
        "{only_core}"
    );

    // The failing workload on core-1 is an event of that cluster and app.
    let mut unhealthy = None;
    eventually("an app-unhealthy event for core-1", CONVERGE, || {
        let text = fleet.cli_text(&[
            "events",
            "--cluster",
            "core-1",
            "--app",
            "cache",
            "-o",
            "json",
        ]);
        unhealthy = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|e| e["kind"] == "app-unhealthy");
        unhealthy.is_some()
    })
    .await;
    let unhealthy = unhealthy.unwrap();
    assert_eq!(unhealthy["severity"], "warning");
    assert!(
        unhealthy["message"]
            .as_str()
            .unwrap()
            .starts_with("failed: "),
        "{unhealthy}"
    );

    let mut follower = tokio::process::Command::from(fleet.cli_command())
        .args(["events", "--follow", "-o", "json", "--since-seq"])
        .arg(seqs.last().unwrap().to_string())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(follower.stdout.take().unwrap());
    fleet.cli_text(&["cluster", "label", "edge-1", "zone=a"]);
    let mut line = String::new();
    let read = tokio::time::timeout(CONVERGE, async {
        use tokio::io::AsyncBufReadExt;
        loop {
            line.clear();
            assert!(
                out.read_line(&mut line).await.unwrap() > 0,
                "follower ended"
            );
            if line.contains("cluster-labelled") {
                return line.clone();
            }
        }
    })
    .await
    .expect("the label event streamed to the follower");
    assert!(read.contains("\"cluster\":\"edge-1\""), "{read}");
    follower.kill().await.unwrap();

    assert!(
        !fleet.all_logs().contains(" ERROR "),
        "an ERROR line in the logs"
    );
    fleet.shutdown().await;
}
