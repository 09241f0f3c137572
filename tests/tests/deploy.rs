//! The kustomize bases in deploy/ render with the real kubectl and apply to
//! the Kubernetes simulator; the shipped hub.yaml is a valid hub config; the
//! agent's RBAC grants nothing that escalates.

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

#[test]
fn agent_rbac_grants_no_escalation() {
    let home = tempfile::tempdir().unwrap();
    let root = repo_root();
    let rendered = kubectl(
        home.path(),
        None,
        &["kustomize", root.join("deploy/agent").to_str().unwrap()],
    );
    let docs = documents(&rendered);
    let role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole")
        .expect("a ClusterRole");
    for rule in role["rules"].as_array().unwrap() {
        for verb in rule["verbs"].as_array().unwrap() {
            let verb = verb.as_str().unwrap();
            assert!(
                !["*", "update", "escalate", "bind", "impersonate"].contains(&verb),
                "agent ClusterRole grants {verb}"
            );
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

#[test]
fn shipped_hub_config_is_valid() {
    let text = std::fs::read_to_string(repo_root().join("deploy/hub/hub.yaml")).unwrap();
    flotilla_hub::config::HubConfig::parse(&text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bases_apply_to_the_simulator() {
    let dir = tempfile::tempdir().unwrap();
    let sim = KubeSim::start(dir.path()).unwrap();
    let kubeconfig = sim.kubeconfig_path().to_path_buf();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let root = repo_root();
    for base in ["deploy/hub", "deploy/agent"] {
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
    assert_eq!(sts["spec"]["replicas"], 1);
    assert_eq!(
        sts["metadata"]["labels"]["app.kubernetes.io/part-of"],
        "flotilla"
    );
    let role: serde_json::Value = serde_json::from_str(&objects.1).unwrap();
    assert!(role["rules"].as_array().is_some_and(|r| !r.is_empty()));
    sim.shutdown().await;
}
