//! `flotilla render` against a real repository: exactly the objects a cluster
//! with the given labels receives, read from the object database.

use std::path::Path;
use std::process::Command;

use flotilla_testkit::git;

fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    git(r, &["init", "-q", "-b", "main"]);
    std::fs::write(
        r.join("flotilla.yaml"),
        "apps:\n  - name: web\n    path: web\n    namespace: web\n    values: {replicas: 2}\n    targets:\n      - {name: edge, selector: {matchLabels: {tier: edge}}, values: {replicas: 1}}\n      - {name: core, selector: {matchLabels: {tier: core}}}\n",
    )
    .unwrap();
    std::fs::create_dir_all(r.join("web")).unwrap();
    std::fs::write(
        r.join("web/app.yaml.j2"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web\ndata:\n  replicas: \"{{ values.replicas }}\"\n  cluster: \"{{ cluster.name }}\"\n  kube: \"{{ cluster.kubeVersion or 'none' }}\"\n  policy: \"{{ 'policy/v1' if 'policy/v1' in cluster.apiVersions else 'policy/v1beta1' }}\"\n",
    )
    .unwrap();
    git(r, &["add", "-A"]);
    git(r, &["commit", "-q", "-m", "one"]);
    // Uncommitted garbage in the working tree must not matter.
    std::fs::write(r.join("web/app.yaml.j2"), "{{ broken").unwrap();
    dir
}

fn render(repo: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .arg("render")
        .arg("--repo")
        .arg(repo)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn yaml_and_json_show_the_same_objects() {
    let r = repo();
    let out = render(
        r.path(),
        &[
            "--app",
            "web",
            "--labels",
            "tier=edge",
            "--cluster-name",
            "shop-7",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(yaml.starts_with("---\n"), "{yaml}");
    assert!(
        yaml.contains("replicas: '1'") || yaml.contains("replicas: \"1\""),
        "{yaml}"
    );
    assert!(yaml.contains("shop-7"), "{yaml}");
    assert!(yaml.contains("namespace: web"), "{yaml}");

    let out = render(
        r.path(),
        &["--app", "web", "--labels", "tier=core", "-o", "json"],
    );
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["data"]["replicas"], "2");
    assert_eq!(list[0]["data"]["cluster"], "local");
}

#[test]
fn unknown_app_and_unmatched_labels_are_errors() {
    let r = repo();
    let out = render(r.path(), &["--app", "nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no app \"nope\""));
    let out = render(r.path(), &["--app", "web", "--labels", "tier=moon"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("matches labels tier=moon"));
}

#[test]
fn capability_flags_reach_templates_and_are_checked() {
    let r = repo();
    let plain = render(
        r.path(),
        &["--app", "web", "--labels", "tier=core", "-o", "json"],
    );
    assert!(plain.status.success());
    let list: serde_json::Value = serde_json::from_slice(&plain.stdout).unwrap();
    assert_eq!(list[0]["data"]["kube"], "none");
    assert_eq!(list[0]["data"]["policy"], "policy/v1beta1");

    let out = render(
        r.path(),
        &[
            "--app",
            "web",
            "--labels",
            "tier=core",
            "--kube-version",
            "v1.32.4",
            "--api-versions",
            "v1,apps/v1",
            "--api-versions",
            "policy/v1",
            "-o",
            "json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["data"]["kube"], "v1.32.4");
    assert_eq!(list[0]["data"]["policy"], "policy/v1");

    let out = render(r.path(), &["--app", "web", "--kube-version", "1.32"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid --kube-version or --api-versions")
            && err.contains("kubeVersion \"1.32\" is not a Kubernetes version"),
        "{err}"
    );
}
