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

/// Two teams' `flotilla.yaml` files and no root one: paths are relative to each file, a nested file's
/// directory is part of the enclosing app without its `flotilla.yaml`, and errors name the files.
#[test]
fn every_flotilla_yaml_counts_and_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    let write = |path: &str, text: &str| {
        let path = r.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    let cm =
        |name: &str| format!("{{apiVersion: v1, kind: ConfigMap, metadata: {{name: {name}}}}}\n");
    git(r, &["init", "-q", "-b", "main"]);
    write(
        "teams/payments/flotilla.yaml",
        "apps:\n  - {name: payments, path: ., namespace: payments}\n",
    );
    write("teams/payments/cm.yaml", &cm("payments"));
    write(
        "teams/payments/db/flotilla.yaml",
        "apps:\n  - {name: payments-db, path: .}\n",
    );
    write("teams/payments/db/cm.yaml", &cm("payments-db"));
    write(
        "teams/search/flotilla.yaml",
        "apps:\n  - name: search\n    path: app\n    targets:\n      - {name: edge, selector: {matchLabels: {tier: edge}}, path: edge}\n",
    );
    write("teams/search/app/cm.yaml", &cm("search"));
    write("teams/search/edge/cm.yaml", &cm("search-edge"));
    git(r, &["add", "-A"]);
    git(r, &["commit", "-q", "-m", "teams"]);

    let names = |out: &std::process::Output| -> Vec<String> {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .map(|o| {
                let m = &o["metadata"];
                format!(
                    "{}/{}",
                    m["namespace"].as_str().unwrap(),
                    m["name"].as_str().unwrap()
                )
            })
            .collect()
    };
    let out = render(r, &["--app", "payments", "-o", "json"]);
    assert_eq!(names(&out), ["payments/payments", "payments/payments-db"]);
    // Files in path order (`teams/payments/db/flotilla.yaml` sorts before `teams/payments/flotilla.yaml`),
    // apps in file order.
    let out = render(r, &["--labels", "tier=edge", "-o", "json"]);
    assert_eq!(
        names(&out),
        [
            "default/payments-db",
            "payments/payments",
            "payments/payments-db",
            "default/search-edge"
        ]
    );

    let out = render(r, &["--app", "nope"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no app \"nope\"")
            && stderr.contains("teams/payments/db/flotilla.yaml: payments-db; teams/payments/flotilla.yaml: payments; teams/search/flotilla.yaml: search"),
        "{stderr}"
    );
    let out = render(r, &["--app", "search", "--labels", "tier=core"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no target of app \"search\" (from teams/search/flotilla.yaml)"),
        "{stderr}"
    );

    write("teams/search/edge/cm.yaml", "{kind: ConfigMap}\n");
    git(r, &["commit", "-q", "-am", "broken object"]);
    let out = render(r, &["--labels", "tier=edge"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "app \"search\" (from teams/search/flotilla.yaml): teams/search/edge/cm.yaml"
        ),
        "{stderr}"
    );

    write(
        "teams/search/flotilla.yaml",
        "apps:\n  - {name: payments, path: ../payments}\n",
    );
    git(r, &["commit", "-q", "-am", "escape"]);
    let out = render(r, &["--app", "search"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("teams/search/flotilla.yaml: apps[payments].path")
            && stderr.contains("'..' components are not allowed"),
        "{stderr}"
    );
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
