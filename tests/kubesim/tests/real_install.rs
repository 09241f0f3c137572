//! A real-world install, "observa" (testdata/install: a monitoring and certificate stack of 129
//! objects with 0.7 MB of multi-version CRDs, custom resources, `system:` RBAC names, an
//! APIService, webhooks, a `List` and a `ConfigMapList`), applied with the real
//! `kubectl apply --server-side` and read back; and the API server's name rules as kubectl
//! sees them.

mod common;

use common::Cluster;
use serde_json::Value;

const CRDS: &str = include_str!("testdata/install/crds.yaml");
const INSTALL: &str = include_str!("testdata/install/install.yaml");

/// The documents of a generated manifest (one JSON document per line), with `List` and
/// `*List` kinds flattened into their items, as kubectl flattens them.
fn objects(manifest: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for line in manifest.lines() {
        if line.starts_with('#') || line == "---" {
            continue;
        }
        let doc: Value = serde_json::from_str(line).expect("a generated document is JSON");
        if doc["kind"].as_str().unwrap().ends_with("List") {
            out.extend(doc["items"].as_array().unwrap().iter().cloned());
        } else {
            out.push(doc);
        }
    }
    out
}

/// Whether `live` holds everything `want` says (the server may add defaults and status).
fn contains(live: &Value, want: &Value, path: &str) -> Result<(), String> {
    match (live, want) {
        (Value::Object(l), Value::Object(w)) => {
            for (k, v) in w {
                let at = format!("{path}.{k}");
                contains(l.get(k).ok_or_else(|| format!("{at} is missing"))?, v, &at)?;
            }
            Ok(())
        }
        (Value::Array(l), Value::Array(w)) if l.len() == w.len() => l
            .iter()
            .zip(w)
            .enumerate()
            .try_for_each(|(i, (l, w))| contains(l, w, &format!("{path}[{i}]"))),
        _ if live == want => Ok(()),
        _ => Err(format!("{path} is {live}, applied {want}")),
    }
}

fn id(obj: &Value) -> String {
    format!(
        "{} {}/{}",
        obj["kind"].as_str().unwrap(),
        obj["metadata"]["namespace"].as_str().unwrap_or(""),
        obj["metadata"]["name"].as_str().unwrap()
    )
}

#[test]
fn kubectl_server_side_applies_a_real_world_install_and_reads_every_object_back() {
    let c = Cluster::start();
    let crds = c.write("install/crds.yaml", CRDS);
    let install = c.write("install/install.yaml", INSTALL);
    let wanted: Vec<Value> = [objects(CRDS), objects(INSTALL)].concat();
    assert!(
        wanted.len() >= 100,
        "the install has {} objects",
        wanted.len()
    );

    // As such stacks are installed: CRDs first, then everything else.
    let out = c.ok(&["apply", "--server-side", "-f", &crds]);
    assert_eq!(out.lines().count(), 7, "{out}");
    c.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "-f",
        &crds,
    ]);
    let out = c.ok(&["apply", "--server-side", "-f", &install]);
    assert_eq!(
        out.lines()
            .filter(|l| l.ends_with("serverside-applied"))
            .count(),
        wanted.len() - 7,
        "{out}"
    );

    // kubectl reads every object back (`get -f` flattens the Lists as apply did).
    let live = c.get_json(&["--show-managed-fields", "-f", &crds, "-f", &install]);
    let live = live["items"].as_array().unwrap();
    assert_eq!(live.len(), wanted.len());
    for (live, want) in live.iter().zip(&wanted) {
        assert_eq!(id(live), id(want));
        let mut want = want.clone();
        // The API server turns stringData into data.
        want.as_object_mut().unwrap().remove("stringData");
        want["metadata"].as_object_mut().unwrap().remove("labels");
        if let Err(e) = contains(live, &want, "") {
            panic!("{}: {e}", id(live));
        }
        for (k, v) in want["metadata"]["labels"].as_object().into_iter().flatten() {
            assert_eq!(&live["metadata"]["labels"][k], v, "{}", id(live));
        }
        let managers: Vec<&str> = live["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["operation"] == "Apply")
            .map(|m| m["manager"].as_str().unwrap())
            .collect();
        assert_eq!(managers, ["kubectl"], "{}", id(live));
    }

    // Re-applying changes nothing.
    let rv = c.sim.resource_version();
    c.ok(&["apply", "--server-side", "-f", &crds, "-f", &install]);
    assert_eq!(c.sim.resource_version(), rv, "a no-op re-apply wrote");

    // The custom resources are served through their CRDs' storage versions and categories.
    let names = c.ok(&["get", "observa", "-A", "-o", "name"]);
    assert_eq!(
        names.lines().count(),
        1 + 1 + 10 + 12 + 1 + 1 + 6,
        "{names}"
    );
}

#[test]
fn lists_apply_with_kubectl_server_side_and_client_side() {
    let c = Cluster::start();
    let config_maps = r#"{"apiVersion": "v1", "kind": "ConfigMapList", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "default"}, "data": {"k": "1"}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "namespace": "default"}}]}"#;
    let mixed = r#"{"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "c", "namespace": "default"}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "system:c"}, "rules": []},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "c", "namespace": "default"},
         "spec": {"selector": {"matchLabels": {"app": "c"}}, "template": {"metadata": {"labels": {"app": "c"}}, "spec": {"containers": [{"name": "c", "image": "c"}]}}}}]}"#;
    // kubectl validates List kinds against /openapi/v2 (the v3 documents have no List paths):
    // it asks for protobuf and needs a media type Go's mime parser accepts.
    let out = c.run_with(&["apply", "--server-side", "-f", "-", "-v=6"], config_maps);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("/openapi/v2"),
        "kubectl did not fall back to v2: {log}"
    );
    c.apply(&["--server-side"], mixed);
    assert_eq!(
        c.sim.get("v1", "ConfigMap", "default", "a").unwrap()["data"]["k"],
        "1"
    );
    assert!(
        c.sim
            .get(
                "rbac.authorization.k8s.io/v1",
                "ClusterRole",
                "",
                "system:c"
            )
            .is_some()
    );
    let client_side = config_maps
        .replace("\"a\"", "\"d\"")
        .replace("\"b\"", "\"e\"");
    c.apply(&[], &client_side);
    assert!(c.sim.get("v1", "ConfigMap", "default", "e").is_some());
}

#[test]
fn invalid_names_are_refused_with_the_api_servers_messages() {
    let c = Cluster::start();
    for (yaml, message) in [
        (
            r#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name", "namespace": "default"}}"#,
            r#"ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"#,
        ),
        (
            r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "1st", "namespace": "default"}, "spec": {"ports": [{"port": 80}]}}"#,
            r#"Service "1st" is invalid: metadata.name: Invalid value: "1st": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character"#,
        ),
        (
            r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a.b"}}"#,
            r#"Namespace "a.b" is invalid: metadata.name: Invalid value: "a.b": a lowercase RFC 1123 label must consist of"#,
        ),
        (
            r#"{"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "gadgets.example.com"},
              "spec": {"group": "example.com", "scope": "Namespaced", "names": {"plural": "widgets", "kind": "Widget"},
                       "versions": [{"name": "v1", "served": true, "storage": true, "schema": {"openAPIV3Schema": {"type": "object"}}}]}}"#,
            r#"The CustomResourceDefinition "gadgets.example.com" is invalid: metadata.name: Invalid value: "gadgets.example.com": must be spec.names.plural+"."+spec.group"#,
        ),
        (
            r#"{"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": "metrics.example.com"},
              "spec": {"group": "metrics.example.com", "version": "v1beta1", "groupPriorityMinimum": 100, "versionPriority": 100}}"#,
            r#"The APIService "metrics.example.com" is invalid: metadata.name: Invalid value: "metrics.example.com": must be `spec.version+"."+spec.group`: "v1beta1.metrics.example.com""#,
        ),
    ] {
        for flags in [&["--server-side"][..], &[][..]] {
            let mut args = vec!["apply", "-f", "-"];
            args.extend_from_slice(flags);
            let err = c.fails_with(&args, yaml);
            assert!(
                err.contains(message),
                "kubectl apply {flags:?}:\n{err}\nwanted: {message}"
            );
        }
    }
    // kubectl itself refuses names that are not path segments (`..`, `a/b`, `100%`) before
    // sending them; the unit tests of `validate` cover the server's answer to those.
    // The raw Status, as clients decode it.
    let err = c.fails_with(&["create", "configmap", "UPPER", "-o", "json"], "");
    assert!(err.contains(r#"ConfigMap "UPPER" is invalid"#), "{err}");
}
