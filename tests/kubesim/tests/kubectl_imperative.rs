//! kubectl's imperative commands: protobuf bodies for simple kinds, the scale subresource,
//! annotations and restarts through patches, and access reviews.

mod common;

use common::Cluster;
use serde_json::json;

#[test]
fn imperative_create_commands_send_protobuf_the_simulator_decodes() {
    let c = Cluster::start();
    c.ok(&["create", "namespace", "team"]);
    c.ok(&[
        "-n",
        "team",
        "create",
        "configmap",
        "c1",
        "--from-literal=a=b",
        "--from-literal=c=d",
    ]);
    c.ok(&[
        "-n",
        "team",
        "create",
        "secret",
        "generic",
        "s1",
        "--from-literal=pw=hunter2",
    ]);
    c.ok(&["-n", "team", "create", "serviceaccount", "bot"]);
    c.ok(&[
        "-n",
        "team",
        "create",
        "role",
        "r",
        "--verb=get",
        "--resource=pods",
    ]);
    c.ok(&[
        "-n",
        "team",
        "create",
        "rolebinding",
        "rb",
        "--role=r",
        "--serviceaccount=team:bot",
    ]);
    c.ok(&[
        "create",
        "clusterrole",
        "cr",
        "--verb=list",
        "--resource=nodes",
    ]);
    assert_eq!(
        c.get_json(&["-n", "team", "cm", "c1"])["data"],
        json!({"a": "b", "c": "d"})
    );
    assert_eq!(
        c.get_json(&["-n", "team", "secret", "s1"])["data"],
        json!({"pw": "aHVudGVyMg=="})
    );
    let rb = c.get_json(&["-n", "team", "rolebinding", "rb"]);
    assert_eq!(
        rb["subjects"],
        json!([{"kind": "ServiceAccount", "name": "bot", "namespace": "team"}])
    );
    assert_eq!(
        rb["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"})
    );
    let role = c.get_json(&["-n", "team", "role", "r"]);
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}])
    );
    assert_eq!(c.ok(&["auth", "can-i", "create", "pods"]).trim(), "yes");
    // Kinds the simulator does not decode from protobuf get a clear 415.
    let err = c.fails_with(&["create", "deployment", "d", "--image=nginx"], "");
    assert!(
        err.contains("does not decode protobuf bodies of kind Deployment"),
        "{err}"
    );
}

#[test]
fn scale_restart_and_annotate_go_through_subresources_and_patches() {
    let c = Cluster::start();
    c.apply(
        &[],
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: a, image: nginx}]}\n",
    );
    c.ok(&["scale", "deployment", "web", "--replicas=4"]);
    let d = c.get_json(&["deployment", "web"]);
    assert_eq!(
        (
            d["spec"]["replicas"].as_i64(),
            d["status"]["readyReplicas"].as_i64()
        ),
        (Some(4), Some(4))
    );
    let scale: serde_json::Value = serde_json::from_str(&c.ok(&[
        "get",
        "--raw",
        "/apis/apps/v1/namespaces/default/deployments/web/scale",
    ]))
    .unwrap();
    assert_eq!(
        (scale["kind"].as_str(), scale["status"]["selector"].as_str()),
        (Some("Scale"), Some("app=web"))
    );
    c.ok(&["rollout", "restart", "deployment", "web"]);
    let d = c.get_json(&["deployment", "web"]);
    assert!(
        d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string()
    );
    assert_eq!(d["metadata"]["generation"], 3);
    c.ok(&["annotate", "deployment", "web", "owner=team-a"]);
    c.ok(&["label", "deployment", "web", "tier=front"]);
    let d = c.get_json(&["deployment", "web"]);
    assert_eq!(
        (
            d["metadata"]["annotations"]["owner"].as_str(),
            d["metadata"]["labels"]["tier"].as_str()
        ),
        (Some("team-a"), Some("front"))
    );
    assert_eq!(
        d["metadata"]["generation"], 3,
        "metadata changes do not bump generation"
    );
    c.ok(&["rollout", "status", "deployment/web", "--timeout=30s"]);
}
