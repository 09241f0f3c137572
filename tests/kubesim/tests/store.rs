//! API semantics checked directly on the store: concurrency, generation, status, server-side
//! apply ownership, finalizers, garbage collection, CRDs and the event log.

use std::sync::Arc;

use flotilla_kubesim::builtin::builtin_resources;
use flotilla_kubesim::resource::{Registry, ResourceType};
use flotilla_kubesim::store::{EventKind, Store, WriteCtx};
use serde_json::{Value, json};

fn store() -> Store {
    let (tx, _rx) = tokio::sync::watch::channel(0);
    Store::new(Registry::new(builtin_resources()), tx)
}

fn rt(store: &Store, api_version: &str, kind: &str) -> Arc<ResourceType> {
    store.registry.by_kind(api_version, kind).unwrap()
}

fn rv(obj: &Value) -> &str {
    obj["metadata"]["resourceVersion"].as_str().unwrap()
}

fn apply(
    store: &mut Store,
    t: &Arc<ResourceType>,
    manager: &str,
    body: &Value,
    force: bool,
) -> Result<Value, flotilla_kubesim::ApiError> {
    let name = body["metadata"]["name"].as_str().unwrap();
    let ns = body["metadata"]["namespace"].as_str();
    store.apply(
        t,
        ns,
        name,
        body.to_string().as_bytes(),
        &WriteCtx::new(manager),
        force,
        false,
    )
}

#[test]
fn updates_check_resource_version_and_bump_generation_only_for_spec() {
    let mut s = store();
    let deploy = rt(&s, "apps/v1", "Deployment");
    let body = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 1}});
    let created = s
        .create(&deploy, Some("default"), body, &WriteCtx::new("test"))
        .unwrap();
    assert_eq!(created["metadata"]["generation"], 1);
    let live = s.get(&deploy, "default", "d").unwrap();
    assert_eq!(
        live["status"]["readyReplicas"], 1,
        "the simulated controller made it ready"
    );

    let mut stale = live.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    let err = s
        .update(
            &deploy,
            "default",
            "d",
            stale,
            &WriteCtx::new("test"),
            false,
        )
        .unwrap_err();
    assert_eq!((err.code, err.reason), (409, "Conflict"));

    let mut labelled = live.clone();
    labelled["metadata"]["labels"] = json!({"a": "b"});
    labelled["status"] = json!({"replicas": 99});
    let out = s
        .update(
            &deploy,
            "default",
            "d",
            labelled,
            &WriteCtx::new("test"),
            false,
        )
        .unwrap();
    assert_eq!(
        out["metadata"]["generation"], 1,
        "metadata changes keep the generation"
    );
    assert_eq!(
        out["status"]["replicas"], 1,
        "writes to the main resource keep status"
    );

    let mut scaled = s.get(&deploy, "default", "d").unwrap();
    scaled["spec"]["replicas"] = json!(3);
    let out = s
        .update(
            &deploy,
            "default",
            "d",
            scaled,
            &WriteCtx::new("test"),
            false,
        )
        .unwrap();
    assert_eq!(out["metadata"]["generation"], 2);
    let live = s.get(&deploy, "default", "d").unwrap();
    assert_eq!(
        (
            live["status"]["observedGeneration"].as_i64(),
            live["status"]["readyReplicas"].as_i64()
        ),
        (Some(2), Some(3))
    );

    let same = s.get(&deploy, "default", "d").unwrap();
    let before = s.resource_version();
    s.update(&deploy, "default", "d", same, &WriteCtx::new("test"), false)
        .unwrap();
    assert_eq!(
        s.resource_version(),
        before,
        "an update that changes nothing writes nothing"
    );

    let err = s
        .update(
            &deploy,
            "default",
            "missing",
            json!({"metadata": {"name": "missing"}}),
            &WriteCtx::new("t"),
            false,
        )
        .unwrap_err();
    assert_eq!(err.reason, "NotFound");
}

#[test]
fn apply_tracks_ownership_across_managers_and_keyed_lists() {
    let mut s = store();
    let deploy = rt(&s, "apps/v1", "Deployment");
    let config = |containers: Value, replicas: Option<i64>| {
        let mut spec = json!({"template": {"spec": {"containers": containers}}});
        if let Some(r) = replicas {
            spec["replicas"] = json!(r);
        }
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "default"}, "spec": spec})
    };
    let app = json!([{"name": "app", "image": "app:1"}]);
    let created = apply(
        &mut s,
        &deploy,
        "flotilla",
        &config(app.clone(), Some(2)),
        false,
    )
    .unwrap();
    assert_eq!(created["spec"]["replicas"], 2);
    let rv0 = rv(&s.get(&deploy, "default", "d").unwrap()).to_string();
    apply(
        &mut s,
        &deploy,
        "flotilla",
        &config(app.clone(), Some(2)),
        false,
    )
    .unwrap();
    assert_eq!(
        rv(&s.get(&deploy, "default", "d").unwrap()),
        rv0,
        "identical apply is a no-op"
    );

    // Another manager adds a sidecar: both containers stay.
    let sidecar = json!([{"name": "sidecar", "image": "mesh:1"}]);
    apply(&mut s, &deploy, "mesh", &config(sidecar, None), false).unwrap();
    let names = |s: &Store| -> Vec<String> {
        s.get(&deploy, "default", "d").unwrap()["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&s), ["app", "sidecar"]);

    // The first manager stops applying replicas: the field goes (then defaults back to 1).
    apply(&mut s, &deploy, "flotilla", &config(app, None), false).unwrap();
    assert_eq!(
        s.get(&deploy, "default", "d").unwrap()["spec"]["replicas"],
        1
    );

    // Changing the sidecar's image as flotilla conflicts with mesh.
    let both = json!([{"name": "app", "image": "app:1"}, {"name": "sidecar", "image": "mesh:2"}]);
    let err = apply(
        &mut s,
        &deploy,
        "flotilla",
        &config(both.clone(), None),
        false,
    )
    .unwrap_err();
    assert_eq!(err.code, 409);
    assert_eq!(
        err.message,
        "Apply failed with 1 conflict: conflict with \"mesh\": .spec.template.spec.containers[name=\"sidecar\"].image"
    );
    apply(&mut s, &deploy, "flotilla", &config(both, None), true).unwrap();
    let live = s.get(&deploy, "default", "d").unwrap();
    assert_eq!(
        live["spec"]["template"]["spec"]["containers"][1]["image"],
        "mesh:2"
    );

    // The applied configuration must name the object; managedFields may not be sent.
    let mut bad = config(json!([]), None);
    bad["metadata"]["managedFields"] = json!([]);
    assert_eq!(
        apply(&mut s, &deploy, "x", &bad, false).unwrap_err().code,
        400
    );
}

#[test]
fn finalizers_hold_deletion_and_owner_references_cascade() {
    let mut s = store();
    let cm = rt(&s, "v1", "ConfigMap");
    let ctx = WriteCtx::new("test");
    let owner = s
        .create(
            &cm,
            Some("default"),
            json!({"metadata": {"name": "owner", "finalizers": ["x/y"]}}),
            &ctx,
        )
        .unwrap();
    let uid = owner["metadata"]["uid"].clone();
    s.create(&cm, Some("default"), json!({"metadata": {"name": "child", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}]}}), &ctx)
        .unwrap();
    let marked = s.delete(&cm, "default", "owner", &ctx).unwrap();
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    assert!(s.get(&cm, "default", "owner").is_ok());
    let mut released = s.get(&cm, "default", "owner").unwrap();
    released["metadata"]["finalizers"] = json!([]);
    s.update(&cm, "default", "owner", released, &ctx, false)
        .unwrap();
    assert_eq!(s.get(&cm, "default", "owner").unwrap_err().code, 404);
    assert_eq!(
        s.get(&cm, "default", "child").unwrap_err().code,
        404,
        "dependents are collected"
    );
    let kinds: Vec<EventKind> = s
        .events_since(&cm.storage_key(), 0)
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            EventKind::Added,
            EventKind::Added,
            EventKind::Modified,
            EventKind::Deleted,
            EventKind::Deleted
        ]
    );
}

#[test]
fn crds_register_resources_and_dry_run_stores_nothing() {
    let mut s = store();
    let crd = rt(&s, "apiextensions.k8s.io/v1", "CustomResourceDefinition");
    let ctx = WriteCtx::new("test");
    let def = json!({"metadata": {"name": "gadgets.example.com"}, "spec": {
        "group": "example.com", "scope": "Cluster", "names": {"plural": "gadgets", "kind": "Gadget"},
        "versions": [{"name": "v1beta1", "served": true, "storage": false}, {"name": "v1", "served": true, "storage": true}],
    }});
    s.create(&crd, None, def, &ctx).unwrap();
    let established = s.get(&crd, "", "gadgets.example.com").unwrap();
    assert_eq!(
        established["status"]["conditions"][1]["type"],
        "Established"
    );
    assert_eq!(established["status"]["storedVersions"], json!(["v1"]));
    let gadget = rt(&s, "example.com/v1", "Gadget");
    assert!(!gadget.namespaced);
    assert_eq!(
        s.registry
            .by_kind("example.com/v1beta1", "Gadget")
            .unwrap()
            .singular,
        "gadget"
    );

    let dry = WriteCtx {
        dry_run: true,
        ..WriteCtx::new("test")
    };
    s.create(&gadget, None, json!({"metadata": {"name": "g"}}), &dry)
        .unwrap();
    assert_eq!(s.get(&gadget, "", "g").unwrap_err().code, 404);
    s.create(&gadget, None, json!({"metadata": {"name": "g"}}), &ctx)
        .unwrap();
    let old_version = rt(&s, "example.com/v1beta1", "Gadget");
    assert_eq!(
        s.get(&old_version, "", "g").unwrap()["apiVersion"],
        "example.com/v1beta1"
    );

    s.delete(&crd, "", "gadgets.example.com", &ctx).unwrap();
    assert!(s.registry.by_kind("example.com/v1", "Gadget").is_none());
    assert_eq!(
        s.objects_of(&("example.com".to_string(), "gadgets".to_string()))
            .len(),
        0
    );
}

#[test]
fn namespaces_refuse_content_while_terminating_and_names_are_validated() {
    let mut s = store();
    let ns = rt(&s, "v1", "Namespace");
    let cm = rt(&s, "v1", "ConfigMap");
    let ctx = WriteCtx::new("test");
    let err = s
        .create(
            &cm,
            Some("nowhere"),
            json!({"metadata": {"name": "a"}}),
            &ctx,
        )
        .unwrap_err();
    assert_eq!(
        (err.code, err.message.as_str()),
        (404, "namespaces \"nowhere\" not found")
    );
    s.create(&ns, None, json!({"metadata": {"name": "t"}}), &ctx)
        .unwrap();
    assert_eq!(
        s.get(&ns, "", "t").unwrap()["metadata"]["labels"]["kubernetes.io/metadata.name"],
        "t"
    );
    s.create(&cm, Some("t"), json!({"metadata": {"name": "a"}}), &ctx)
        .unwrap();
    s.delete(&ns, "", "t", &ctx).unwrap();
    let err = s
        .create(&cm, Some("t"), json!({"metadata": {"name": "b"}}), &ctx)
        .unwrap_err();
    assert_eq!(err.code, 403);
    let err = s
        .create(&ns, None, json!({"metadata": {"name": "Not.Valid"}}), &ctx)
        .unwrap_err();
    assert_eq!((err.code, err.reason), (422, "Invalid"));
    let err = s
        .create(&cm, Some("default"), json!({"metadata": {}}), &ctx)
        .unwrap_err();
    assert_eq!(err.reason, "Invalid");
    let generated = s
        .create(
            &cm,
            Some("default"),
            json!({"metadata": {"generateName": "gen-"}}),
            &ctx,
        )
        .unwrap();
    assert!(
        generated["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("gen-")
    );
}
