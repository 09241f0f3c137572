//! Simulated workload controllers: Deployments, StatefulSets and DaemonSets become ready (or stay
//! progressing, or fail) after each change; Jobs complete. The mode is a knob, global or per object.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::fields::Part;
use crate::managed::{self, Writer};
use crate::resource::ResourceType;
use crate::store::{Store, now};

/// How simulated workloads behave after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadMode {
    /// Become ready (Available, rollout complete; Jobs complete) right away.
    #[default]
    Ready,
    /// Roll out forever: never ready.
    Progressing,
    /// Fail: Progressing=False with ProgressDeadlineExceeded (Jobs: Failed).
    Failed,
}

/// One object, named by kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    /// Kind (`Deployment`, `StatefulSet`, `DaemonSet`, `Job`).
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// The global mode and per-object overrides.
#[derive(Debug, Clone, Default)]
pub struct WorkloadModes {
    default: WorkloadMode,
    overrides: BTreeMap<ObjectRef, WorkloadMode>,
}

impl WorkloadModes {
    /// The mode in force for one object.
    pub fn mode_for(&self, target: &ObjectRef) -> WorkloadMode {
        self.overrides.get(target).copied().unwrap_or(self.default)
    }
}

const WORKLOADS: [(&str, &str, &str); 4] = [
    ("apps", "deployments", "Deployment"),
    ("apps", "statefulsets", "StatefulSet"),
    ("apps", "daemonsets", "DaemonSet"),
    ("batch", "jobs", "Job"),
];

/// Sets the mode globally (`target: None`, clearing overrides) or for one object, and re-runs the
/// controllers so existing objects follow.
pub fn set_mode(store: &mut Store, target: Option<ObjectRef>, mode: WorkloadMode) {
    match target {
        Some(t) => {
            store.workload.overrides.insert(t, mode);
        }
        None => {
            store.workload.default = mode;
            store.workload.overrides.clear();
        }
    }
    for (group, plural, _) in WORKLOADS {
        let key = (group.to_string(), plural.to_string());
        let Some(rt) = store.type_for_key(&key) else {
            continue;
        };
        for obj in store.objects_of(&key) {
            reconcile(store, &rt, &obj);
        }
    }
}

fn field<'a>(obj: &'a Value, pointer: &str) -> Option<&'a Value> {
    obj.pointer(pointer)
}

/// Writes the simulated controller's status for a workload object, if it is one.
pub fn reconcile(store: &mut Store, rt: &Arc<ResourceType>, obj: &Value) {
    let Some((_, _, kind)) = WORKLOADS
        .iter()
        .find(|(g, p, _)| *g == rt.group && *p == rt.plural)
    else {
        return;
    };
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        return;
    }
    let meta_str = |f: &str| {
        field(obj, &format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let target = ObjectRef {
        kind: kind.to_string(),
        namespace: meta_str("namespace"),
        name: meta_str("name"),
    };
    let mode = store.workload.mode_for(&target);
    let now = now();
    let status = match *kind {
        "Deployment" => deployment(obj, mode, &now),
        "StatefulSet" => stateful_set(obj, mode, &now),
        "DaemonSet" => daemon_set(obj, mode, &now),
        _ => job(obj, mode, &now),
    };
    if obj.get("status") == Some(&status) {
        return;
    }
    let mut new = obj.clone();
    new["status"] = status;
    let writer = Writer {
        manager: "kube-controller-manager",
        api_version: &rt.api_version(),
        subresource: Some("status"),
        part: Part::Status,
        now: &now,
    };
    managed::record_update(Some(obj), &mut new, &writer);
    store.commit(rt, Some(obj.clone()), new, false);
}

/// Drops zero counts, as the real API server omits them.
fn counts(pairs: &[(&str, i64)]) -> Map<String, Value> {
    pairs
        .iter()
        .filter(|(_, n)| *n != 0)
        .map(|(k, n)| (k.to_string(), json!(n)))
        .collect()
}

/// A condition, keeping its transition time when its status did not change.
fn condition(
    obj: &Value,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: &str,
) -> Value {
    let status = if status { "True" } else { "False" };
    let prev = field(obj, "/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_));
    let since = prev
        .filter(|c| c["status"] == status)
        .and_then(|c| c["lastTransitionTime"].as_str())
        .unwrap_or(now);
    let updated = prev
        .filter(|c| c["status"] == status && c["reason"] == reason)
        .and_then(|c| c["lastUpdateTime"].as_str())
        .unwrap_or(now);
    json!({"type": type_, "status": status, "lastUpdateTime": updated, "lastTransitionTime": since, "reason": reason, "message": message})
}

fn revision(obj: &Value, template: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    field(obj, template)
        .map(|t| t.to_string())
        .unwrap_or_default()
        .hash(&mut h);
    let name = field(obj, "/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    format!("{name}-{:010x}", h.finish() & 0xff_ffff_ffff)
}

fn generation(obj: &Value) -> i64 {
    field(obj, "/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

fn replicas(obj: &Value) -> i64 {
    field(obj, "/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

/// Available and Progressing conditions for a mode.
fn rollout_conditions(obj: &Value, mode: WorkloadMode, rs: &str, now: &str) -> Vec<Value> {
    match mode {
        WorkloadMode::Ready => vec![
            condition(
                obj,
                "Available",
                true,
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
                now,
            ),
            condition(
                obj,
                "Progressing",
                true,
                "NewReplicaSetAvailable",
                &format!("ReplicaSet \"{rs}\" has successfully progressed."),
                now,
            ),
        ],
        WorkloadMode::Progressing => vec![
            condition(
                obj,
                "Available",
                false,
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
                now,
            ),
            condition(
                obj,
                "Progressing",
                true,
                "ReplicaSetUpdated",
                &format!("ReplicaSet \"{rs}\" is progressing."),
                now,
            ),
        ],
        WorkloadMode::Failed => vec![
            condition(
                obj,
                "Available",
                false,
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
                now,
            ),
            condition(
                obj,
                "Progressing",
                false,
                "ProgressDeadlineExceeded",
                &format!("ReplicaSet \"{rs}\" has timed out progressing."),
                now,
            ),
        ],
    }
}

fn deployment(obj: &Value, mode: WorkloadMode, now: &str) -> Value {
    let r = replicas(obj);
    let ready = if mode == WorkloadMode::Ready { r } else { 0 };
    let mut status = counts(&[
        ("replicas", r),
        ("updatedReplicas", r),
        ("readyReplicas", ready),
        ("availableReplicas", ready),
        ("unavailableReplicas", r - ready),
    ]);
    status.insert("observedGeneration".into(), json!(generation(obj)));
    let rs = revision(obj, "/spec/template");
    status.insert(
        "conditions".into(),
        Value::Array(rollout_conditions(obj, mode, &rs, now)),
    );
    Value::Object(status)
}

fn stateful_set(obj: &Value, mode: WorkloadMode, now: &str) -> Value {
    let r = replicas(obj);
    let ready = if mode == WorkloadMode::Ready { r } else { 0 };
    let mut status = counts(&[
        ("replicas", r),
        ("readyReplicas", ready),
        ("currentReplicas", ready),
        ("updatedReplicas", r),
        ("availableReplicas", ready),
    ]);
    let rev = revision(obj, "/spec/template");
    status.insert("observedGeneration".into(), json!(generation(obj)));
    status.insert("updateRevision".into(), json!(rev));
    if mode == WorkloadMode::Ready {
        status.insert("currentRevision".into(), json!(rev));
    }
    status.insert("collisionCount".into(), json!(0));
    if mode != WorkloadMode::Ready {
        status.insert(
            "conditions".into(),
            Value::Array(rollout_conditions(obj, mode, &rev, now)),
        );
    }
    Value::Object(status)
}

fn daemon_set(obj: &Value, mode: WorkloadMode, now: &str) -> Value {
    let ready = if mode == WorkloadMode::Ready { 1 } else { 0 };
    let mut status = counts(&[
        ("currentNumberScheduled", 1),
        ("desiredNumberScheduled", 1),
        ("numberReady", ready),
        ("updatedNumberScheduled", 1),
        ("numberAvailable", ready),
        ("numberUnavailable", 1 - ready),
    ]);
    status.insert("numberMisscheduled".into(), json!(0));
    status.insert("observedGeneration".into(), json!(generation(obj)));
    if mode != WorkloadMode::Ready {
        let rev = revision(obj, "/spec/template");
        status.insert(
            "conditions".into(),
            Value::Array(rollout_conditions(obj, mode, &rev, now)),
        );
    }
    Value::Object(status)
}

fn job(obj: &Value, mode: WorkloadMode, now: &str) -> Value {
    let keep = |f: &str| {
        field(obj, &format!("/status/{f}"))
            .and_then(Value::as_str)
            .unwrap_or(now)
            .to_string()
    };
    let completions = field(obj, "/spec/completions")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let reached = "Reached expected number of succeeded pods";
    match mode {
        WorkloadMode::Ready => json!({
            "startTime": keep("startTime"), "completionTime": keep("completionTime"),
            "succeeded": completions, "ready": 0, "terminating": 0, "uncountedTerminatedPods": {},
            "conditions": [
                condition(obj, "SuccessCriteriaMet", true, "CompletionsReached", reached, now),
                condition(obj, "Complete", true, "CompletionsReached", reached, now),
            ],
        }),
        WorkloadMode::Progressing => {
            json!({"startTime": keep("startTime"), "active": 1, "ready": 0, "terminating": 0})
        }
        WorkloadMode::Failed => json!({
            "startTime": keep("startTime"), "failed": 1, "ready": 0, "terminating": 0, "uncountedTerminatedPods": {},
            "conditions": [
                condition(obj, "FailureTarget", true, "BackoffLimitExceeded", "Job has reached the specified backoff limit", now),
                condition(obj, "Failed", true, "BackoffLimitExceeded", "Job has reached the specified backoff limit", now),
            ],
        }),
    }
}
