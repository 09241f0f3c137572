use serde_json::{Value, json};

use super::*;

fn cond(type_: &str, status: &str, reason: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": ""})
}

fn deploy(generation: i64, status: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "generation": generation},
        "spec": {"replicas": 2},
        "status": status,
    })
}

/// (case, object, expected health as "state: reason" with the reason's start).
fn cases() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        (
            "configmap exists",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}),
            "healthy",
        ),
        (
            "being deleted",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "deletionTimestamp": "2024-01-01T00:00:00Z"}}),
            "progressing: being deleted",
        ),
        (
            "deployment not yet observed",
            deploy(1, json!({})),
            "progressing: waiting for the controller to observe the deployment",
        ),
        (
            "deployment old generation",
            deploy(
                3,
                json!({"observedGeneration": 2, "updatedReplicas": 2, "replicas": 2, "availableReplicas": 2}),
            ),
            "progressing: waiting for the controller to observe generation 3",
        ),
        (
            "deployment rolling out",
            deploy(
                1,
                json!({"observedGeneration": 1, "updatedReplicas": 1, "replicas": 2, "availableReplicas": 1,
                "conditions": [cond("Progressing", "True", "ReplicaSetUpdated")]}),
            ),
            "progressing: 1 of 2 replicas updated",
        ),
        (
            "deployment updated, not available",
            deploy(
                1,
                json!({"observedGeneration": 1, "updatedReplicas": 2, "replicas": 2, "availableReplicas": 0,
                "conditions": [cond("Available", "False", "MinimumReplicasUnavailable"), cond("Progressing", "True", "ReplicaSetUpdated")]}),
            ),
            "progressing: 0 of 2 replicas available",
        ),
        (
            "deployment available",
            deploy(
                1,
                json!({"observedGeneration": 1, "updatedReplicas": 2, "replicas": 2, "availableReplicas": 2,
                "conditions": [cond("Available", "True", "MinimumReplicasAvailable"), cond("Progressing", "True", "NewReplicaSetAvailable")]}),
            ),
            "healthy",
        ),
        (
            "deployment lost replicas after completing",
            deploy(
                1,
                json!({"observedGeneration": 1, "updatedReplicas": 2, "replicas": 2, "availableReplicas": 1,
                "conditions": [cond("Available", "True", "MinimumReplicasAvailable"), cond("Progressing", "True", "NewReplicaSetAvailable")]}),
            ),
            "degraded: 1 of 2 replicas available",
        ),
        (
            "deployment past its deadline",
            deploy(
                1,
                json!({"observedGeneration": 1, "updatedReplicas": 2, "replicas": 2,
                "conditions": [cond("Progressing", "False", "ProgressDeadlineExceeded")]}),
            ),
            "failed: ProgressDeadlineExceeded",
        ),
        (
            "statefulset rolling",
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "generation": 1},
                "spec": {"replicas": 3},
                "status": {"observedGeneration": 1, "replicas": 3, "readyReplicas": 3, "updatedReplicas": 3,
                    "currentRevision": "db-1", "updateRevision": "db-2"}}),
            "progressing: waiting for the rollout to finish",
        ),
        (
            "statefulset not ready",
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "generation": 1},
                "spec": {"replicas": 3},
                "status": {"observedGeneration": 1, "replicas": 3, "readyReplicas": 1, "updatedReplicas": 3,
                    "currentRevision": "db-2", "updateRevision": "db-2"}}),
            "progressing: 1 of 3 replicas ready",
        ),
        (
            "statefulset done",
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "generation": 1},
                "spec": {"replicas": 3},
                "status": {"observedGeneration": 1, "replicas": 3, "readyReplicas": 3, "updatedReplicas": 3,
                    "currentRevision": "db-2", "updateRevision": "db-2"}}),
            "healthy",
        ),
        (
            "daemonset rolling",
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent", "generation": 2},
                "status": {"observedGeneration": 2, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberAvailable": 2}}),
            "progressing: 2 of 3 pods available",
        ),
        (
            "daemonset done",
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent", "generation": 2},
                "status": {"observedGeneration": 2, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberAvailable": 3}}),
            "healthy",
        ),
        (
            "job running",
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "status": {"active": 1}}),
            "progressing: job running (1 active)",
        ),
        (
            "job complete",
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
                "status": {"conditions": [cond("Complete", "True", "CompletionsReached")]}}),
            "healthy",
        ),
        (
            "job failed",
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
                "status": {"conditions": [cond("Failed", "True", "BackoffLimitExceeded")]}}),
            "failed: BackoffLimitExceeded",
        ),
        (
            "crd not established",
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "w.example.com"}}),
            "progressing: not established yet",
        ),
        (
            "crd established",
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "w.example.com"},
                "status": {"conditions": [cond("Established", "True", "InitialNamesAccepted")]}}),
            "healthy",
        ),
        (
            "pvc pending",
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"}, "status": {"phase": "Pending"}}),
            "progressing: phase Pending",
        ),
        (
            "custom resource not ready",
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "generation": 1},
                "status": {"observedGeneration": 1, "conditions": [cond("Ready", "False", "Reconciling")]}}),
            "progressing: Reconciling",
        ),
        (
            "custom resource ready",
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "generation": 1},
                "status": {"observedGeneration": 1, "conditions": [cond("Ready", "True", "Done")]}}),
            "healthy",
        ),
        (
            "custom resource stalled",
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
                "status": {"conditions": [cond("Ready", "False", "Broken"), cond("Stalled", "True", "InvalidSpec")]}}),
            "failed: InvalidSpec",
        ),
        (
            "custom resource without status",
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w", "generation": 4}}),
            "healthy",
        ),
    ]
}

fn show(h: &ObjectHealth) -> String {
    match h {
        ObjectHealth::Healthy => "healthy".into(),
        ObjectHealth::Progressing(r) => format!("progressing: {r}"),
        ObjectHealth::Degraded(r) => format!("degraded: {r}"),
        ObjectHealth::Failed(r) => format!("failed: {r}"),
    }
}

#[test]
fn object_health_table() {
    for (case, obj, want) in cases() {
        let got = show(&object_health(&obj));
        assert!(got.starts_with(want), "{case}: got {got:?}, want {want:?}");
    }
}

fn id(kind: &str, name: &str) -> ObjectId {
    ObjectId {
        group: String::new(),
        version: "v1".into(),
        kind: kind.into(),
        namespace: Some("default".into()),
        name: name.into(),
    }
}

#[test]
fn app_health_is_the_worst_object() {
    let (a, b, c) = (id("ConfigMap", "a"), id("Deployment", "b"), id("Job", "c"));
    type Case<'a> = (
        Vec<(&'a ObjectId, Option<ObjectHealth>)>,
        AppHealth,
        &'static str,
    );
    let table: Vec<Case> = vec![
        (vec![], AppHealth::Healthy, ""),
        (
            vec![(&a, Some(ObjectHealth::Healthy))],
            AppHealth::Healthy,
            "",
        ),
        (
            vec![(&a, Some(ObjectHealth::Healthy)), (&b, None)],
            AppHealth::Progressing,
            "Deployment default/b: does not exist yet",
        ),
        (
            vec![
                (&a, Some(ObjectHealth::Progressing("x".into()))),
                (
                    &b,
                    Some(ObjectHealth::Degraded("1 of 2 replicas available".into())),
                ),
                (&c, Some(ObjectHealth::Progressing("y".into()))),
            ],
            AppHealth::Degraded,
            "Deployment default/b: 1 of 2 replicas available (and 2 more not healthy)",
        ),
        (
            vec![
                (&b, Some(ObjectHealth::Degraded("d".into()))),
                (
                    &c,
                    Some(ObjectHealth::Failed("BackoffLimitExceeded".into())),
                ),
            ],
            AppHealth::Failed,
            "Job default/c: BackoffLimitExceeded (and 1 more not healthy)",
        ),
    ];
    for (objects, health, reason) in table {
        assert_eq!(app_health(objects), (health, reason.to_string()));
    }
}
