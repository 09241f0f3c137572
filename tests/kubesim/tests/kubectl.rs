//! Fidelity tests: the real `kubectl` against the simulator, comparing what it reads back.

mod common;

use std::time::Duration;

use common::{Cluster, wait_until};
use serde_json::{Value, json};

const CONFIGMAP: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  labels: {app: web, tier: front}
data:
  key: value
  other: thing
";

const WIDGET_CRD: &str = include_str!("testdata/widget-crd.yaml");
const REAL_WORLD: &str = include_str!("testdata/real-world.yaml");

fn managers(obj: &Value) -> Vec<(String, String)> {
    obj["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["manager"].as_str().unwrap().to_string(),
                m["operation"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn deployment(name: &str, image: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: default}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers: [{{name: app, image: {image}, ports: [{{containerPort: 80}}]}}]
"
    )
}

#[test]
fn server_side_apply_then_get_json_round_trips() {
    let c = Cluster::start();
    let out = c.apply(&["--server-side"], CONFIGMAP);
    assert!(
        out.contains("configmap/settings serverside-applied"),
        "{out}"
    );
    let obj = c.get_json(&["configmap", "settings", "--show-managed-fields"]);
    assert_eq!(obj["data"], json!({"key": "value", "other": "thing"}));
    assert_eq!(
        obj["metadata"]["labels"],
        json!({"app": "web", "tier": "front"})
    );
    assert_eq!(obj["metadata"]["namespace"], "default");
    assert!(obj["metadata"]["uid"].as_str().unwrap().len() == 36);
    assert!(obj["metadata"]["creationTimestamp"].is_string());
    assert_eq!(
        managers(&obj),
        [("kubectl".to_string(), "Apply".to_string())]
    );
    assert_eq!(
        obj["metadata"]["managedFields"][0]["fieldsV1"],
        json!({"f:data": {"f:key": {}, "f:other": {}}, "f:metadata": {"f:labels": {"f:app": {}, "f:tier": {}}}})
    );
    let rv = obj["metadata"]["resourceVersion"].clone();

    // Applying the same configuration again is a no-op: no new resourceVersion.
    c.apply(&["--server-side"], CONFIGMAP);
    assert_eq!(
        c.get_json(&["configmap", "settings"])["metadata"]["resourceVersion"],
        rv
    );

    // Dropping a field from the applied configuration removes it.
    c.apply(
        &["--server-side"],
        &CONFIGMAP.replace("  other: thing\n", ""),
    );
    assert_eq!(
        c.get_json(&["configmap", "settings"])["data"],
        json!({"key": "value"})
    );
}

#[test]
fn api_resources_lists_core_kinds_and_crd_kinds() {
    let c = Cluster::start();
    let out = c.ok(&["api-resources"]);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let has = |name: &str, short: &str, version: &str, kind: &str| {
        rows.iter().any(|r| {
            r.first() == Some(&name)
                && r.contains(&short)
                && r.contains(&version)
                && r.last() == Some(&kind)
        })
    };
    assert!(has("configmaps", "cm", "v1", "ConfigMap"), "{out}");
    assert!(has("namespaces", "ns", "v1", "Namespace"), "{out}");
    assert!(
        has("deployments", "deploy", "apps/v1", "Deployment"),
        "{out}"
    );
    assert!(has("services", "svc", "v1", "Service"), "{out}");
    assert!(
        has("serviceaccounts", "sa", "v1", "ServiceAccount"),
        "{out}"
    );
    assert!(
        has(
            "networkpolicies",
            "netpol",
            "networking.k8s.io/v1",
            "NetworkPolicy"
        ),
        "{out}"
    );
    assert!(
        has(
            "apiservices",
            "false",
            "apiregistration.k8s.io/v1",
            "APIService"
        ),
        "{out}"
    );
    assert!(!out.contains("Widget"));

    c.apply(&["--server-side"], WIDGET_CRD);
    c.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/widgets.example.com",
        "--timeout=30s",
    ]);
    let out = c.ok(&["api-resources", "--api-group=example.com"]);
    assert!(
        out.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
            == ["widgets", "wd", "example.com/v1", "true", "Widget"]),
        "{out}"
    );
    let crd = c.get_json(&["crd", "widgets.example.com"]);
    let conditions: Vec<(&str, &str)> = crd["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["type"].as_str().unwrap(), c["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        conditions,
        [("NamesAccepted", "True"), ("Established", "True")]
    );
}

#[test]
fn crd_then_custom_resource_then_crd_removal() {
    let c = Cluster::start();
    c.apply(&["--server-side"], WIDGET_CRD);
    c.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/widgets.example.com",
        "--timeout=30s",
    ]);
    let widget =
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n";
    assert!(
        c.apply(&[], widget)
            .contains("widget.example.com/w1 created")
    );
    assert!(
        c.apply(&[], &widget.replace("size: 3", "size: 4"))
            .contains("configured")
    );
    let obj = c.get_json(&["wd", "w1"]);
    assert_eq!(obj["spec"], json!({"size": 4}));
    assert_eq!(obj["metadata"]["generation"], 2);
    assert_eq!(
        c.ok(&["get", "widgets", "-o", "name"]).trim(),
        "widget.example.com/w1"
    );

    // Status subresource: the main resource ignores status, /status changes only status.
    c.ok(&[
        "patch",
        "widget",
        "w1",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Ignored"}}"#,
    ]);
    assert!(c.get_json(&["widget", "w1"]).get("status").is_none());
    c.ok(&[
        "patch",
        "widget",
        "w1",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Ready"},"spec":{"size":9}}"#,
    ]);
    let obj = c.get_json(&["widget", "w1"]);
    assert_eq!(
        (
            obj["status"]["phase"].as_str(),
            obj["spec"]["size"].as_i64()
        ),
        (Some("Ready"), Some(4))
    );
    assert_eq!(
        obj["metadata"]["generation"], 2,
        "status writes do not bump generation"
    );

    c.ok(&["delete", "crd", "widgets.example.com"]);
    // kubectl's discovery cache may still know the type; either way the objects are gone.
    let err = c.fails_with(&["get", "widgets"], "");
    assert!(
        err.contains("NotFound") || err.contains("doesn't have a resource type"),
        "{err}"
    );
    assert!(c.sim.list("example.com/v1", "Widget").is_empty());
}

#[test]
fn apply_k_of_a_kustomize_directory() {
    let c = Cluster::start();
    c.write("base/kustomization.yaml", "resources: [deployment.yaml, service.yaml]\nconfigMapGenerator:\n- name: web-config\n  literals: [MODE=prod, LEVEL=3]\nlabels:\n- pairs: {app.kubernetes.io/part-of: shop}\n");
    c.write(
        "base/deployment.yaml",
        &deployment("web", "nginx:1.27").replace(
            "ports: [{containerPort: 80}]",
            "ports: [{containerPort: 80}], envFrom: [{configMapRef: {name: web-config}}]",
        ),
    );
    c.write("base/service.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 80}]\n");
    let base = c.dir.path().join("base");
    let base = base.to_str().unwrap();
    let out = c.ok(&["apply", "-k", base]);
    assert!(
        out.contains("deployment.apps/web created") && out.contains("service/web created"),
        "{out}"
    );
    let cms = c.get_json(&["configmaps", "-l", "app.kubernetes.io/part-of=shop"]);
    let cm_name = cms["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(cm_name.starts_with("web-config-"), "{cm_name}");
    assert_eq!(
        cms["items"][0]["data"],
        json!({"MODE": "prod", "LEVEL": "3"})
    );
    let deploy = c.get_json(&["deployment", "web"]);
    assert_eq!(
        deploy["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"],
        cm_name
    );
    let svc = c.get_json(&["service", "web"]);
    assert_eq!(svc["spec"]["ports"][0]["protocol"], "TCP");
    let again = c.ok(&["apply", "-k", base]);
    assert!(again.lines().all(|l| l.ends_with("unchanged")), "{again}");
    let ssa = c.ok(&["apply", "--server-side", "-k", base]);
    assert!(
        ssa.contains("deployment.apps/web serverside-applied"),
        "{ssa}"
    );
}

#[test]
fn wait_for_available_and_rollout_status_and_workload_knobs() {
    let c = Cluster::start();
    c.apply(&[], &deployment("x", "nginx:1"));
    c.ok(&[
        "wait",
        "--for=condition=Available",
        "deployment/x",
        "--timeout=30s",
    ]);
    let out = c.ok(&["rollout", "status", "deployment/x", "--timeout=30s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    let status = c.get_json(&["deployment", "x"])["status"].clone();
    assert_eq!(
        (
            status["readyReplicas"].as_i64(),
            status["observedGeneration"].as_i64()
        ),
        (Some(2), Some(1))
    );

    // The HTTP knob (as an out-of-process test would use it) makes new rollouts fail.
    c.ok_with(
        &["replace", "--raw", "/kubesim/workload", "-f", "-"],
        r#"{"mode":"failed"}"#,
    );
    c.apply(&[], &deployment("x", "nginx:2"));
    c.ok(&[
        "wait",
        "--for=condition=Progressing=False",
        "deployment/x",
        "--timeout=30s",
    ]);
    let cond = c.get_json(&["deployment", "x"])["status"]["conditions"][1].clone();
    assert_eq!(cond["reason"], "ProgressDeadlineExceeded");
    let err = c.fails_with(&["rollout", "status", "deployment/x", "--timeout=5s"], "");
    assert!(err.contains("exceeded its progress deadline"), "{err}");

    // Per-object mode through the Rust API.
    c.sim
        .set_workload_mode(flotilla_kubesim::WorkloadMode::Ready);
    c.ok(&[
        "wait",
        "--for=condition=Available",
        "deployment/x",
        "--timeout=30s",
    ]);
    let target = flotilla_kubesim::ObjectRef {
        kind: "Deployment".into(),
        namespace: "default".into(),
        name: "x".into(),
    };
    c.sim
        .set_workload_mode_for(target, flotilla_kubesim::WorkloadMode::Progressing);
    c.ok(&[
        "wait",
        "--for=condition=Available=False",
        "deployment/x",
        "--timeout=30s",
    ]);
}

#[test]
fn delete_an_object_and_a_namespace_with_cascade() {
    let c = Cluster::start();
    c.apply(
        &[],
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n",
    );
    c.apply(
        &[],
        &format!("{CONFIGMAP}---\n{}", deployment("web", "nginx"))
            .replace("namespace: default", "namespace: team")
            .replace("name: settings", "name: settings\n  namespace: team"),
    );
    assert_eq!(
        c.get_json(&["cm", "-n", "team"])["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let out = c.ok(&["delete", "configmap", "settings", "-n", "team"]);
    assert!(out.contains("configmap \"settings\" deleted"), "{out}");
    let err = c.fails_with(&["get", "configmap", "settings", "-n", "team"], "");
    assert!(
        err.contains("Error from server (NotFound): configmaps \"settings\" not found"),
        "{err}"
    );

    // A finalizer holds an object (and its namespace) until it is removed.
    c.apply(&[], "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: held, namespace: team, finalizers: [example.com/hold]}\n");
    c.ok(&["delete", "namespace", "team", "--wait=false"]);
    assert_eq!(
        c.get_json(&["namespace", "team"])["status"]["phase"],
        "Terminating"
    );
    wait_until(
        "namespace contents deleted",
        Duration::from_secs(10),
        || c.sim.list("apps/v1", "Deployment").is_empty(),
    );
    let held = c.get_json(&["configmap", "held", "-n", "team"]);
    assert!(held["metadata"]["deletionTimestamp"].is_string());
    let err = c.fails_with(
        &["apply", "-f", "-"],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: late, namespace: team}\n",
    );
    assert!(err.contains("because it is being terminated"), "{err}");
    c.ok(&[
        "patch",
        "configmap",
        "held",
        "-n",
        "team",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ]);
    let err = c.fails_with(&["get", "namespace", "team"], "");
    assert!(err.contains("namespaces \"team\" not found"), "{err}");

    // `kubectl delete` of a namespace waits for it to go away.
    c.apply(&[], "apiVersion: v1\nkind: Namespace\nmetadata: {name: gone}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: gone}\nstringData: {a: b}\n");
    c.ok(&["delete", "namespace", "gone", "--timeout=30s"]);
    assert!(c.sim.get("v1", "Secret", "gone", "s").is_none());
}

#[test]
fn server_side_apply_conflicts_between_managers_and_force() {
    let c = Cluster::start();
    c.apply(&["--server-side", "--field-manager=alice"], CONFIGMAP);
    let changed = CONFIGMAP.replace("key: value", "key: bob-was-here");
    let err = c.fails_with(
        &["apply", "--server-side", "--field-manager=bob", "-f", "-"],
        &changed,
    );
    assert!(
        err.contains("Apply failed with 1 conflict: conflict with \"alice\": .data.key"),
        "{err}"
    );
    assert_eq!(c.get_json(&["cm", "settings"])["data"]["key"], "value");

    // Same values are shared, not conflicting.
    c.apply(&["--server-side", "--field-manager=carol"], CONFIGMAP);

    c.apply(
        &["--server-side", "--field-manager=bob", "--force-conflicts"],
        &changed,
    );
    let obj = c.get_json(&["cm", "settings", "--show-managed-fields"]);
    assert_eq!(obj["data"]["key"], "bob-was-here");
    let owners_of_key: Vec<&str> = obj["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["fieldsV1"]["f:data"].get("f:key").is_some())
        .map(|m| m["manager"].as_str().unwrap())
        .collect();
    assert_eq!(owners_of_key, ["bob"]);

    // An update by another manager (drift) conflicts with the applier, naming it as an updater.
    c.ok(&[
        "patch",
        "cm",
        "settings",
        "--field-manager=intruder",
        "--type=merge",
        "-p",
        r#"{"data":{"other":"drifted"}}"#,
    ]);
    let err = c.fails_with(
        &["apply", "--server-side", "--field-manager=alice", "-f", "-"],
        CONFIGMAP,
    );
    assert!(
        err.contains("Apply failed with 2 conflicts: conflicts with \"bob\":\n- .data.key\n"),
        "{err}"
    );
    assert!(
        err.contains("conflicts with \"intruder\" using v1:\n- .data.other"),
        "{err}"
    );
}

#[test]
fn real_world_manifests_apply_and_become_healthy() {
    let c = Cluster::start();
    let path = c.write("real-world.yaml", REAL_WORLD);
    let out = c.ok(&["apply", "--server-side", "-f", &path]);
    assert_eq!(
        out.lines().count(),
        REAL_WORLD.matches("\nkind: ").count(),
        "{out}"
    );
    for (kind, name) in [
        ("serviceaccount", "api"),
        ("role", "api-reader"),
        ("rolebinding", "api-reader"),
        ("networkpolicy", "api-ingress"),
        ("poddisruptionbudget", "api"),
        ("horizontalpodautoscaler", "api"),
        ("ingress", "api"),
        ("statefulset", "db"),
        ("daemonset", "log-agent"),
        ("cronjob", "nightly-report"),
    ] {
        let obj = c.get_json(&["-n", "shop", kind, name]);
        assert_eq!(obj["metadata"]["name"], name, "{kind}");
    }
    c.get_json(&["clusterrole", "shop-node-reader"]);
    c.get_json(&["clusterrolebinding", "shop-node-reader"]);
    let hpa = c.get_json(&["-n", "shop", "hpa.v2.autoscaling", "api"]);
    assert_eq!(
        hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        70
    );
    let ing = c.get_json(&["-n", "shop", "ingress", "api"]);
    assert_eq!(
        ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"]["name"],
        "http"
    );
    for what in ["deployment/api", "statefulset/db", "daemonset/log-agent"] {
        let out = c.ok(&["-n", "shop", "rollout", "status", what, "--timeout=30s"]);
        assert!(
            out.contains("rolled out") || out.contains("partitioned roll out complete"),
            "{what}: {out}"
        );
    }
    c.ok(&[
        "-n",
        "shop",
        "wait",
        "--for=condition=Complete",
        "job/migrate",
        "--timeout=30s",
    ]);
    let all = c.ok(&["-n", "shop", "get", "all", "-o", "name"]);
    for name in [
        "service/api",
        "deployment.apps/api",
        "statefulset.apps/db",
        "daemonset.apps/log-agent",
        "cronjob.batch/nightly-report",
        "job.batch/migrate",
    ] {
        assert!(
            all.lines().any(|l| l == name),
            "{name} missing from `get all`: {all}"
        );
    }
    // Client-side apply of the same set afterwards: every object is configured or unchanged.
    let out = c.ok(&["apply", "-f", &path]);
    assert!(!out.contains("created"), "{out}");
    let out = c.ok(&["delete", "-f", &path, "--timeout=60s", "--ignore-not-found"]);
    assert!(out.contains("namespace \"shop\" deleted"), "{out}");
    assert!(c.sim.list("apps/v1", "StatefulSet").is_empty());
}

#[test]
fn list_selectors_and_watch_from_a_resource_version() {
    let c = Cluster::start();
    for (name, app) in [("a", "web"), ("b", "api"), ("c", "db")] {
        c.apply(&[], &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, labels: {{app: {app}}}}}\n"));
    }
    c.apply(
        &[],
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: nolabel}\n",
    );
    let names = |args: &[&str]| -> Vec<String> {
        let mut full = vec!["get", "configmaps", "-o", "name"];
        full.extend_from_slice(args);
        c.ok(&full)
            .lines()
            .map(|l| l.trim_start_matches("configmap/").to_string())
            .collect()
    };
    assert_eq!(names(&["-l", "app=web"]), ["a"]);
    assert_eq!(names(&["-l", "app!=web"]), ["b", "c", "nolabel"]);
    assert_eq!(names(&["-l", "app in (web,db)"]), ["a", "c"]);
    assert_eq!(names(&["-l", "app notin (web,db)"]), ["b", "nolabel"]);
    assert_eq!(names(&["-l", "app"]), ["a", "b", "c"]);
    assert_eq!(names(&["-l", "!app"]), ["nolabel"]);
    assert_eq!(names(&["--field-selector", "metadata.name=b"]), ["b"]);
    let all_ns = c.ok(&[
        "get",
        "configmaps",
        "-A",
        "--field-selector",
        "metadata.namespace=default",
        "-o",
        "name",
    ]);
    assert_eq!(all_ns.lines().count(), 4);

    let list: Value =
        serde_json::from_str(&c.ok(&["get", "--raw", "/api/v1/namespaces/default/configmaps"]))
            .unwrap();
    let rv: u64 = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    c.ok(&["label", "configmap", "a", "tier=front"]);
    c.ok(&["label", "configmap", "b", "app=web", "--overwrite"]);
    c.ok(&["delete", "configmap", "a"]);
    let watch = |selector: &str| -> Vec<(String, String)> {
        let url = format!(
            "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=1{selector}"
        );
        c.ok(&["get", "--raw", &url])
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .map(|e| {
                (
                    e["type"].as_str().unwrap().to_string(),
                    e["object"]["metadata"]["name"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                )
            })
            .collect()
    };
    let pair = |t: &str, n: &str| (t.to_string(), n.to_string());
    assert_eq!(
        watch(""),
        [
            pair("MODIFIED", "a"),
            pair("MODIFIED", "b"),
            pair("DELETED", "a")
        ]
    );
    // Objects moving into a selector appear as ADDED.
    assert_eq!(
        watch("&labelSelector=app%3Dweb"),
        [
            pair("MODIFIED", "a"),
            pair("ADDED", "b"),
            pair("DELETED", "a")
        ]
    );
    let expired = c.ok(&[
        "get",
        "--raw",
        "/api/v1/configmaps?watch=1&resourceVersion=0&timeoutSeconds=1",
    ]);
    assert_eq!(
        expired.lines().count(),
        3,
        "resourceVersion=0 starts with the current objects: {expired}"
    );
}

#[test]
fn errors_are_kubernetes_shaped_and_requests_are_counted() {
    let c = Cluster::start();
    let err = c.fails_with(&["get", "configmap", "nope"], "");
    assert!(
        err.contains("Error from server (NotFound): configmaps \"nope\" not found"),
        "{err}"
    );
    c.apply(&[], CONFIGMAP);
    let err = c.fails_with(&["create", "-f", "-"], CONFIGMAP);
    assert!(
        err.contains("Error from server (AlreadyExists)")
            && err.contains("\"settings\" already exists"),
        "{err}"
    );
    let err = c.fails_with(
        &["apply", "-f", "-"],
        &CONFIGMAP.replace("name: settings", "name: Bad_Name"),
    );
    assert!(
        err.contains("is invalid") && err.contains("metadata.name"),
        "{err}"
    );
    let obj = c.get_json(&["cm", "settings"]);
    let mut stale = obj.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    let err = c.fails_with(&["replace", "-f", "-"], &stale.to_string());
    assert!(err.contains("the object has been modified"), "{err}");

    let counted = CONFIGMAP.replace("name: settings", "name: counted");
    c.apply(&["--server-side"], &counted);
    c.ok(&["delete", "--raw", "/kubesim/requests"]);
    c.apply(&["--server-side"], &counted);
    c.apply(&["--server-side"], &counted);
    let counts: Value =
        serde_json::from_str(&c.ok(&["get", "--raw", "/kubesim/requests"])).unwrap();
    assert_eq!(
        counts,
        json!({"patch": 2}),
        "kubectl's server-side apply is one PATCH: {counts}"
    );
    assert_eq!(c.sim.request_counts().writes(), 2);
    c.sim.reset_request_counts();
    c.ok(&["get", "cm"]);
    assert_eq!(c.sim.request_counts().get("list"), 1);
    assert_eq!(c.sim.request_counts().writes(), 0);
}

#[test]
fn drift_injected_through_the_rust_api_shows_in_managed_fields() {
    let c = Cluster::start();
    c.apply(&["--server-side", "--field-manager=flotilla"], CONFIGMAP);
    let before = c.sim.resource_version();
    c.sim
        .patch_as(
            "intruder",
            "v1",
            "ConfigMap",
            "default",
            "settings",
            &json!({"data": {"key": "drifted"}}),
        )
        .unwrap();
    assert!(c.sim.resource_version() > before);
    let obj = c.get_json(&["cm", "settings", "--show-managed-fields"]);
    assert_eq!(obj["data"]["key"], "drifted");
    assert!(managers(&obj).contains(&("intruder".to_string(), "Update".to_string())));
    c.apply(
        &[
            "--server-side",
            "--field-manager=flotilla",
            "--force-conflicts",
        ],
        CONFIGMAP,
    );
    wait_until("drift corrected", Duration::from_secs(5), || {
        c.sim.get("v1", "ConfigMap", "default", "settings").unwrap()["data"]["key"] == "value"
    });
}
