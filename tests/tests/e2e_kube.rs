//! End-to-end on Kubernetes: the real hub and agent binaries, each agent
//! applying to its own Kubernetes API simulator (kubesim) with the `kube`
//! target.

use std::time::Duration;

use flotilla_kubesim::KubeSim;
use flotilla_tests::fixture::{CONVERGE, Fleet, GitRepo, eventually};
use serde_json::json;

const MANIFEST: &str = r#"apps:
  - name: base
    path: apps/base
    namespace: web
  - name: web
    path: apps/web
    namespace: web
    dependsOn: [base]
    values: {replicas: 2}
"#;

const BASE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: web\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  color: blue\n";

const WEB: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  annotations: {cluster: "{{ cluster.name }}"}
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

fn color(sim: &KubeSim) -> Option<String> {
    sim.get("v1", "ConfigMap", "web", "settings")
        .and_then(|cm| cm["data"]["color"].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_converge_simulated_clusters_correct_drift_and_prune() {
    let mut fleet = Fleet::start(fill).await;
    let sims: Vec<KubeSim> = ["one", "two"]
        .iter()
        .map(|n| KubeSim::start(&fleet.dir.path().join(format!("{n}-kube"))).unwrap())
        .collect();
    fleet
        .add_kube_agent("one", "tier=core", sims[0].kubeconfig_path())
        .await;
    fleet
        .add_kube_agent("two", "tier=edge", sims[1].kubeconfig_path())
        .await;
    let first = fleet.repo.git(&["rev-parse", "HEAD"]);
    fleet.wait_converged(&first).await;

    for (sim, name) in sims.iter().zip(["one", "two"]) {
        assert_eq!(color(sim).as_deref(), Some("blue"));
        let deploy = sim
            .get("apps/v1", "Deployment", "web", "web")
            .expect("deployment applied");
        assert_eq!(deploy["metadata"]["annotations"]["cluster"], name);
        assert_eq!(
            deploy["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "flotilla"
        );
        let managers: Vec<&str> = deploy["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|m| m["manager"].as_str())
            .collect();
        assert!(managers.contains(&"flotilla"), "{managers:?}");
    }
    // The simulator makes workloads ready, so every app ends healthy.
    fleet
        .wait_status("every app healthy", CONVERGE, |s| {
            s.clusters
                .iter()
                .all(|c| c.apps.iter().all(|a| a.health == "healthy"))
        })
        .await;

    // Drift behind the agent's back is corrected (drift: correct is the default).
    sims[0]
        .patch_as(
            "intruder",
            "v1",
            "ConfigMap",
            "web",
            "settings",
            &json!({"data": {"color": "red"}}),
        )
        .unwrap();
    eventually("drift corrected", CONVERGE, || {
        color(&sims[0]).as_deref() == Some("blue")
    })
    .await;

    // A change reaches both clusters; an object that left Git is pruned.
    fleet.repo.write(
        "apps/base/objects.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: web\n",
    );
    fleet.repo.write(
        "apps/web/deployment.yaml.j2",
        &WEB.replace("web:1", "web:2"),
    );
    let second = fleet.repo.commit("web v2, no settings");
    fleet.wait_converged(&second).await;
    for sim in &sims {
        eventually("settings pruned", Duration::from_secs(30), || {
            color(sim).is_none()
        })
        .await;
        let deploy = sim.get("apps/v1", "Deployment", "web", "web").unwrap();
        assert_eq!(
            deploy["spec"]["template"]["spec"]["containers"][0]["image"],
            "web:2"
        );
        assert!(
            sim.get("v1", "Namespace", "", "web").is_some(),
            "namespaces are never pruned"
        );
    }
    fleet.shutdown().await;
    for sim in sims {
        sim.shutdown().await;
    }
}

const PROBE_MANIFEST: &str =
    "apps:\n  - name: probe\n    path: apps/probe\n    namespace: default\n";

/// Branches on a kind that only a CRD of a later commit brings.
const PROBE: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: probe
data:
  kube: "{{ cluster.kubeVersion or 'none' }}"
  widgets: "{{ 'yes' if 'example.com/v1/Widget' in cluster.apiVersions else 'no' }}"
"#;

const WIDGET_CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  names: {kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
"#;

fn probe(sim: &KubeSim) -> Option<serde_json::Value> {
    sim.get("v1", "ConfigMap", "default", "probe")
        .map(|cm| cm["data"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_capabilities_reach_the_hub_and_a_new_crd_re_renders() {
    let mut fleet = Fleet::start(|repo| {
        repo.write("flotilla.yaml", PROBE_MANIFEST)
            .write("apps/probe/cm.yaml.j2", PROBE);
        repo.commit("probe");
    })
    .await;
    let sim = KubeSim::start(&fleet.dir.path().join("kube")).unwrap();
    fleet
        .add_agent_with_args(
            "one",
            "tier=core",
            Some(sim.kubeconfig_path()),
            &["--capabilities-interval", "1s"],
        )
        .await;
    let first = fleet.repo.git(&["rev-parse", "HEAD"]);
    fleet.wait_converged(&first).await;
    assert_eq!(
        probe(&sim),
        Some(json!({"kube": "v1.33.0-kubesim", "widgets": "no"}))
    );
    let caps = &fleet.cli_json(&["cluster", "get", "one"])[0]["capabilities"];
    assert_eq!(caps["kube_version"], "v1.33.0-kubesim");
    let served: Vec<&str> = caps["api_versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for entry in ["v1", "v1/ConfigMap", "apps/v1", "apps/v1/Deployment"] {
        assert!(served.contains(&entry), "{entry} missing from {served:?}");
    }
    assert!(!served.iter().any(|e| e.starts_with("example.com")));

    // A commit installs the CRD; the agent's next reading finds it, the hub learns it and
    // re-renders the probe, which no commit changed.
    fleet
        .repo
        .write(
            "flotilla.yaml",
            &format!("{PROBE_MANIFEST}  - name: crds\n    path: apps/crds\n"),
        )
        .write("apps/crds/widget.yaml", WIDGET_CRD);
    let second = fleet.repo.commit("widgets CRD");
    fleet.wait_converged(&second).await;
    eventually("the probe re-rendered for the new kind", CONVERGE, || {
        probe(&sim).is_some_and(|d| d["widgets"] == "yes")
    })
    .await;
    let caps = &fleet.cli_json(&["cluster", "get", "one"])[0]["capabilities"];
    let served: Vec<&str> = caps["api_versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(served.contains(&"example.com/v1"), "{served:?}");
    assert!(served.contains(&"example.com/v1/Widget"), "{served:?}");
    fleet.shutdown().await;
    sim.shutdown().await;
}
