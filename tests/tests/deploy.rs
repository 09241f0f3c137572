//! The kustomize bases in deploy/ render with the real kubectl and apply to
//! the Kubernetes simulator; the shipped hub.yaml is a valid hub config; the
//! agent's RBAC grants nothing that escalates, and the restricted overlay
//! (deploy/agent-restricted) names every resource and grants no subresource.

use std::path::{Path, PathBuf};
use std::process::Command;

use flotilla_kubesim::KubeSim;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn kubectl(home: &Path, kubeconfig: Option<&Path>, args: &[&str]) -> String {
    let mut cmd = Command::new("kubectl");
    cmd.env("HOME", home)
        .arg("--cache-dir")
        .arg(home.join("cache"));
    if let Some(k) = kubeconfig {
        cmd.arg("--kubeconfig").arg(k);
    }
    let out = cmd.args(args).output().expect("kubectl on PATH");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn documents(yaml: &str) -> Vec<serde_json::Value> {
    flotilla_common::yaml::parse_documents(yaml, &Default::default()).unwrap()
}

/// Rules the restricted overlay's ClusterRole holds; the closing note of issue 12 quotes it.
const RESTRICTED_CLUSTER_ROLE_RULES: usize = 7;

fn render(dir: &str) -> Vec<serde_json::Value> {
    let home = tempfile::tempdir().unwrap();
    let rendered = kubectl(
        home.path(),
        None,
        &["kustomize", repo_root().join(dir).to_str().unwrap()],
    );
    documents(&rendered)
}

fn strings(v: &serde_json::Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn agent_rbac_grants_no_escalation() {
    for dir in ["deploy/agent", "deploy/agent-restricted"] {
        let docs = render(dir);
        for role in docs
            .iter()
            .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
        {
            for rule in role["rules"].as_array().unwrap() {
                for verb in strings(&rule["verbs"]) {
                    assert!(
                        !["*", "escalate", "bind", "impersonate"].contains(&verb),
                        "{dir}: {} grants {verb}",
                        role["kind"]
                    );
                    if role["kind"] == "ClusterRole" {
                        assert_ne!(verb, "update", "{dir}: the ClusterRole grants update");
                    }
                }
            }
        }
        let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"],
            false
        );
    }
}

#[test]
fn agent_store_is_on_a_persistent_volume_claim() {
    for dir in ["deploy/agent", "deploy/agent-restricted"] {
        let docs = render(dir);
        let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
        assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate", "{dir}");
        let volumes = deployment["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap();
        let data = volumes.iter().find(|v| v["name"] == "data").unwrap();
        let claim = data["persistentVolumeClaim"]["claimName"]
            .as_str()
            .unwrap_or_else(|| panic!("{dir}: the data volume is not a PVC: {data}"));
        let pvc = docs
            .iter()
            .find(|d| d["kind"] == "PersistentVolumeClaim" && d["metadata"]["name"] == claim)
            .unwrap_or_else(|| panic!("{dir}: no PersistentVolumeClaim {claim}"));
        assert_eq!(pvc["metadata"]["namespace"], "flotilla-system");
        let mount = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "data")
            .unwrap();
        assert_eq!(mount["mountPath"], "/var/lib/flotilla-agent");
    }
}

/// Checks a rendered ClusterRole against the restricted policy; returns its rule count.
fn check_restricted(role: &serde_json::Value) -> usize {
    let rules = role["rules"].as_array().unwrap();
    for rule in rules {
        for field in ["apiGroups", "resources", "verbs"] {
            assert!(
                !strings(&rule[field]).contains(&"*"),
                "restricted ClusterRole has * in {field}: {rule}"
            );
        }
        for resource in strings(&rule["resources"]) {
            assert!(
                !resource.contains('/'),
                "restricted ClusterRole grants subresource {resource}"
            );
        }
        assert!(
            rule.get("nonResourceURLs").is_none(),
            "restricted ClusterRole grants non-resource URLs: {rule}"
        );
    }
    rules.len()
}

#[test]
fn restricted_rbac_lists_resources_and_grants_no_subresource_write() {
    let docs = render("deploy/agent-restricted");
    let role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole")
        .expect("a ClusterRole");
    let rules = check_restricted(role);
    println!("restricted agent ClusterRole: {rules} rules");
    assert_eq!(rules, RESTRICTED_CLUSTER_ROLE_RULES);
    // The namespaced Role grants no subresource either.
    let ns_role = docs.iter().find(|d| d["kind"] == "Role").unwrap();
    for rule in ns_role["rules"].as_array().unwrap() {
        for resource in strings(&rule["resources"]) {
            assert!(!resource.contains('/') && resource != "*", "{resource}");
        }
    }
    // The broad base really is broad (what its comment warns about).
    let broad = render("deploy/agent");
    let broad_role = broad.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    assert!(strings(&broad_role["rules"][0]["resources"]).contains(&"*"));
}

#[test]
fn shipped_hub_config_is_valid() {
    let text = std::fs::read_to_string(repo_root().join("deploy/hub/hub.yaml")).unwrap();
    flotilla_hub::config::HubConfig::parse(&text).unwrap();
}

/// The hub base is three replicas that can find and join each other: the StatefulSet's pod names,
/// its headless peers Service and the shipped hub.yaml's `replication.join` all agree, every pod
/// advertises its own name, the init container makes replica 1 start the hub and the others join,
/// a drain takes one replica at a time and no two share a node.
#[test]
fn hub_base_runs_three_replicas_that_join_each_other() {
    let docs = render("deploy/hub");
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let sts = find("StatefulSet", "flotilla-hub");
    let spec = &sts["spec"];
    assert_eq!(spec["replicas"], 3);
    assert_eq!(spec["podManagementPolicy"], "Parallel");
    let namespace = sts["metadata"]["namespace"].as_str().unwrap();
    let service_name = spec["serviceName"].as_str().unwrap();
    let pod_labels = &spec["template"]["metadata"]["labels"];

    let peers = find("Service", service_name);
    assert_eq!(peers["spec"]["clusterIP"], "None");
    assert_eq!(peers["spec"]["publishNotReadyAddresses"], true);
    assert_eq!(peers["spec"]["ports"][0]["port"], 7444);
    for (k, v) in peers["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&pod_labels[k], v, "the peers Service selects the hub pods");
    }

    let pdb = find("PodDisruptionBudget", "flotilla-hub");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        spec["selector"]["matchLabels"]
    );

    let pod = &spec["template"]["spec"];
    let anti =
        &pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(anti["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(
        anti["labelSelector"]["matchLabels"],
        spec["selector"]["matchLabels"]
    );

    let init = strings(&pod["initContainers"][0]["args"]);
    for flag in [
        "join",
        "--replica-id-from-hostname",
        "--first-starts-hub",
        "--if-missing",
    ] {
        assert!(
            init.contains(&flag),
            "init container args {init:?} lack {flag}"
        );
    }
    let hub = &pod["containers"][0];
    let advertise = format!("--advertise=$(POD_NAME).{service_name}.{namespace}.svc:7444");
    assert!(
        strings(&hub["args"]).contains(&advertise.as_str()),
        "{}",
        hub["args"]
    );
    assert_eq!(hub["env"][0]["name"], "POD_NAME");
    assert_eq!(
        hub["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );

    // The ConfigMap's hub.yaml is valid and lists exactly the three pods' peer addresses.
    let config = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .and_then(|c| c["data"]["hub.yaml"].as_str())
        .expect("hub.yaml in the ConfigMap");
    let config = flotilla_hub::config::HubConfig::parse(config).unwrap();
    let replication = config.replication.expect("replication configured");
    let name = sts["metadata"]["name"].as_str().unwrap();
    let expected: Vec<String> = (0..3)
        .map(|i| format!("{name}-{i}.{service_name}.{namespace}.svc:7444"))
        .collect();
    assert_eq!(replication.join, expected);
    assert_eq!(replication.listen.port(), 7444);
    // Readiness is the hub's own /readyz on the metrics listener hub.yaml opens, and Prometheus
    // finds that listener by annotation.
    let ready = &hub["readinessProbe"]["httpGet"];
    assert_eq!(ready["path"], "/readyz");
    let metrics_port = hub["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == ready["port"])
        .map(|p| p["containerPort"].as_u64().unwrap())
        .expect("the probe's port is declared");
    assert_eq!(
        config.metrics_listen.map(|a| a.port() as u64),
        Some(metrics_port)
    );
    let annotations = &spec["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], metrics_port.to_string());
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    let keys = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "keys")
        .expect("keys volume");
    assert_eq!(keys["secret"]["secretName"], "flotilla-hub-keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bases_apply_to_the_simulator() {
    let dir = tempfile::tempdir().unwrap();
    let sim = KubeSim::start(dir.path()).unwrap();
    let kubeconfig = sim.kubeconfig_path().to_path_buf();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let root = repo_root();
    // The restricted overlay last: it replaces the agent ClusterRole's rules.
    for base in ["deploy/hub", "deploy/agent", "deploy/agent-restricted"] {
        let path = root.join(base);
        let home = home.clone();
        let kubeconfig = kubeconfig.clone();
        tokio::task::spawn_blocking(move || {
            kubectl(
                &home,
                Some(&kubeconfig),
                &["apply", "--server-side", "-k", path.to_str().unwrap()],
            )
        })
        .await
        .unwrap();
    }
    let home2 = home.clone();
    let kc = kubeconfig.clone();
    let objects = tokio::task::spawn_blocking(move || {
        let sts = kubectl(
            &home2,
            Some(&kc),
            &[
                "get",
                "statefulset",
                "flotilla-hub",
                "-n",
                "flotilla-system",
                "-o",
                "json",
            ],
        );
        let role = kubectl(
            &home2,
            Some(&kc),
            &["get", "clusterrole", "flotilla-agent", "-o", "json"],
        );
        kubectl(
            &home2,
            Some(&kc),
            &[
                "wait",
                "--for=condition=Available",
                "deployment/flotilla-agent",
                "-n",
                "flotilla-system",
                "--timeout=30s",
            ],
        );
        (sts, role)
    })
    .await
    .unwrap();
    let sts: serde_json::Value = serde_json::from_str(&objects.0).unwrap();
    assert_eq!(sts["spec"]["replicas"], 3);
    assert_eq!(
        sts["metadata"]["labels"]["app.kubernetes.io/part-of"],
        "flotilla"
    );
    let role: serde_json::Value = serde_json::from_str(&objects.1).unwrap();
    assert_eq!(check_restricted(&role), RESTRICTED_CLUSTER_ROLE_RULES);
    sim.shutdown().await;
}

/// The agent serves its metrics where its pod's scrape annotations say.
#[test]
fn agent_metrics_are_served_where_the_annotations_point() {
    for base in ["deploy/agent", "deploy/agent-restricted"] {
        let docs = render(base);
        let deployment = docs
            .iter()
            .find(|d| d["kind"] == "Deployment")
            .expect("the agent Deployment");
        let template = &deployment["spec"]["template"];
        let port = template["metadata"]["annotations"]["prometheus.io/port"]
            .as_str()
            .expect("a scrape port annotation");
        let container = &template["spec"]["containers"][0];
        let flag = format!("--metrics-listen=0.0.0.0:{port}");
        assert!(
            strings(&container["args"]).contains(&flag.as_str()),
            "{base}: {}",
            container["args"]
        );
        assert_eq!(container["ports"][0]["containerPort"].to_string(), port);
    }
}
