//! Object and app health, in the spirit of kstatus: a pure function of the live object.
//!
//! Rules, first match wins:
//! - an object being deleted is progressing;
//! - `status.observedGeneration` behind `metadata.generation` is progressing (the controller
//!   has not seen the newest spec);
//! - a `Stalled=True` condition, or `Progressing=False` with reason `ProgressDeadlineExceeded`,
//!   is failed;
//! - Deployment, StatefulSet, DaemonSet: progressing until the rollout is complete; a complete
//!   rollout with replicas unavailable is degraded;
//! - Job: `Complete=True` is healthy, `Failed=True` is failed, anything else progressing;
//! - CustomResourceDefinition: healthy once `Established=True`;
//! - PersistentVolumeClaim: healthy once `Bound`;
//! - any object with a `Ready` condition: healthy when it is `True`, progressing otherwise;
//! - everything else is healthy once it exists.
//!
//! An app is as healthy as its least healthy object: failed, then degraded, then progressing.

use flotilla_common::object::ObjectId;
use flotilla_common::status::AppHealth;
use serde_json::Value;

/// The health of one live object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectHealth {
    /// Reached its desired state.
    Healthy,
    /// Getting there; why not yet.
    Progressing(String),
    /// Had reached it and lost it; why.
    Degraded(String),
    /// Will not get there without a change; why.
    Failed(String),
}

impl ObjectHealth {
    /// Severity for aggregation: higher is worse.
    fn rank(&self) -> u8 {
        match self {
            ObjectHealth::Healthy => 0,
            ObjectHealth::Progressing(_) => 1,
            ObjectHealth::Degraded(_) => 2,
            ObjectHealth::Failed(_) => 3,
        }
    }

    /// The app-level health this object's health maps to.
    pub fn app_health(&self) -> AppHealth {
        match self {
            ObjectHealth::Healthy => AppHealth::Healthy,
            ObjectHealth::Progressing(_) => AppHealth::Progressing,
            ObjectHealth::Degraded(_) => AppHealth::Degraded,
            ObjectHealth::Failed(_) => AppHealth::Failed,
        }
    }

    fn reason(&self) -> &str {
        match self {
            ObjectHealth::Healthy => "",
            ObjectHealth::Progressing(r) | ObjectHealth::Degraded(r) | ObjectHealth::Failed(r) => r,
        }
    }
}

fn int(obj: &Value, pointer: &str) -> Option<i64> {
    obj.pointer(pointer).and_then(Value::as_i64)
}

fn str_at<'a>(obj: &'a Value, pointer: &str) -> Option<&'a str> {
    obj.pointer(pointer).and_then(Value::as_str)
}

/// The condition of this type, if the object has one.
fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
}

fn is_true(c: Option<&Value>) -> bool {
    c.and_then(|c| c.get("status")).and_then(Value::as_str) == Some("True")
}

fn is_false(c: Option<&Value>) -> bool {
    c.and_then(|c| c.get("status")).and_then(Value::as_str) == Some("False")
}

/// `reason: message` of a condition, or a fallback.
fn explain(c: Option<&Value>, fallback: &str) -> String {
    let reason = c.and_then(|c| c.get("reason")).and_then(Value::as_str);
    let message = c.and_then(|c| c.get("message")).and_then(Value::as_str);
    match (reason, message) {
        (Some(r), Some(m)) if !m.is_empty() => format!("{r}: {m}"),
        (Some(r), _) => r.to_string(),
        (None, Some(m)) if !m.is_empty() => m.to_string(),
        _ => fallback.to_string(),
    }
}

/// The health of one live object.
pub fn object_health(obj: &Value) -> ObjectHealth {
    use ObjectHealth::*;
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        return Progressing("being deleted".into());
    }
    let generation = int(obj, "/metadata/generation");
    let observed = int(obj, "/status/observedGeneration");
    if let (Some(g), Some(o)) = (generation, observed)
        && o < g
    {
        return Progressing(format!(
            "waiting for the controller to observe generation {g}"
        ));
    }
    let stalled = condition(obj, "Stalled");
    if is_true(stalled) {
        return Failed(explain(stalled, "stalled"));
    }
    let progressing = condition(obj, "Progressing");
    if is_false(progressing)
        && progressing
            .and_then(|c| c.get("reason"))
            .and_then(Value::as_str)
            == Some("ProgressDeadlineExceeded")
    {
        return Failed(explain(progressing, "progress deadline exceeded"));
    }
    let api_version = str_at(obj, "/apiVersion").unwrap_or_default();
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let kind = str_at(obj, "/kind").unwrap_or_default();
    match (group, kind) {
        ("apps", "Deployment") => deployment(obj, generation.is_some() && observed.is_none()),
        ("apps", "StatefulSet") => stateful_set(obj, generation.is_some() && observed.is_none()),
        ("apps", "DaemonSet") => daemon_set(obj, generation.is_some() && observed.is_none()),
        ("batch", "Job") => job(obj),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            let established = condition(obj, "Established");
            if is_true(established) {
                Healthy
            } else {
                Progressing(explain(established, "not established yet"))
            }
        }
        ("", "PersistentVolumeClaim") => match str_at(obj, "/status/phase") {
            Some("Bound") => Healthy,
            Some("Lost") => Failed("the claim lost its volume".into()),
            Some(phase) => Progressing(format!("phase {phase}")),
            None => Progressing("not bound yet".into()),
        },
        _ => match condition(obj, "Ready") {
            Some(ready) if is_true(Some(ready)) => Healthy,
            Some(ready) => Progressing(explain(Some(ready), "not ready")),
            None => Healthy,
        },
    }
}

fn deployment(obj: &Value, unobserved: bool) -> ObjectHealth {
    use ObjectHealth::*;
    if unobserved {
        return Progressing("waiting for the controller to observe the deployment".into());
    }
    let want = int(obj, "/spec/replicas").unwrap_or(1);
    let updated = int(obj, "/status/updatedReplicas").unwrap_or(0);
    let replicas = int(obj, "/status/replicas").unwrap_or(0);
    let available = int(obj, "/status/availableReplicas").unwrap_or(0);
    if updated < want {
        return Progressing(format!("{updated} of {want} replicas updated"));
    }
    if replicas > updated {
        return Progressing(format!(
            "{} old replicas pending termination",
            replicas - updated
        ));
    }
    let complete = condition(obj, "Progressing")
        .and_then(|c| c.get("reason"))
        .and_then(Value::as_str)
        == Some("NewReplicaSetAvailable");
    let available_cond = condition(obj, "Available");
    if available < want || is_false(available_cond) {
        let why = format!("{available} of {want} replicas available");
        return if complete {
            Degraded(why)
        } else {
            Progressing(why)
        };
    }
    Healthy
}

fn stateful_set(obj: &Value, unobserved: bool) -> ObjectHealth {
    use ObjectHealth::*;
    if unobserved {
        return Progressing("waiting for the controller to observe the statefulset".into());
    }
    let want = int(obj, "/spec/replicas").unwrap_or(1);
    let ready = int(obj, "/status/readyReplicas").unwrap_or(0);
    let updated = int(obj, "/status/updatedReplicas").unwrap_or(0);
    let rolling =
        str_at(obj, "/spec/updateStrategy/type").unwrap_or("RollingUpdate") == "RollingUpdate";
    if rolling {
        let partition = int(obj, "/spec/updateStrategy/rollingUpdate/partition").unwrap_or(0);
        if updated < want - partition {
            return Progressing(format!(
                "{updated} of {} replicas updated",
                want - partition
            ));
        }
        if partition == 0 {
            let current = str_at(obj, "/status/currentRevision");
            let update = str_at(obj, "/status/updateRevision");
            if update.is_some() && current != update {
                return Progressing("waiting for the rollout to finish".into());
            }
        }
    }
    if ready < want {
        return Progressing(format!("{ready} of {want} replicas ready"));
    }
    Healthy
}

fn daemon_set(obj: &Value, unobserved: bool) -> ObjectHealth {
    use ObjectHealth::*;
    if unobserved {
        return Progressing("waiting for the controller to observe the daemonset".into());
    }
    let desired = int(obj, "/status/desiredNumberScheduled").unwrap_or(0);
    let updated = int(obj, "/status/updatedNumberScheduled").unwrap_or(0);
    let available = int(obj, "/status/numberAvailable").unwrap_or(0);
    if updated < desired {
        return Progressing(format!("{updated} of {desired} pods updated"));
    }
    if available < desired {
        return Progressing(format!("{available} of {desired} pods available"));
    }
    Healthy
}

fn job(obj: &Value) -> ObjectHealth {
    use ObjectHealth::*;
    let complete = condition(obj, "Complete");
    let failed = condition(obj, "Failed");
    if is_true(failed) {
        return Failed(explain(failed, "job failed"));
    }
    if is_true(complete) {
        return Healthy;
    }
    let active = int(obj, "/status/active").unwrap_or(0);
    Progressing(format!("job running ({active} active)"))
}

/// Combines the health of an app's objects; `objects` pairs each id with its health, or `None`
/// when the object does not exist.
pub fn app_health<'a>(
    objects: impl IntoIterator<Item = (&'a ObjectId, Option<ObjectHealth>)>,
) -> (AppHealth, String) {
    let mut worst: Option<(&ObjectId, ObjectHealth)> = None;
    let mut others = 0usize;
    for (id, health) in objects {
        let health =
            health.unwrap_or_else(|| ObjectHealth::Progressing("does not exist yet".into()));
        if health == ObjectHealth::Healthy {
            continue;
        }
        match &worst {
            Some((_, w)) if w.rank() >= health.rank() => others += 1,
            Some(_) => {
                others += 1;
                worst = Some((id, health));
            }
            None => worst = Some((id, health)),
        }
    }
    match worst {
        None => (AppHealth::Healthy, String::new()),
        Some((id, health)) => {
            let name = match &id.namespace {
                Some(ns) => format!("{} {ns}/{}", id.kind, id.name),
                None => format!("{} {}", id.kind, id.name),
            };
            let more = match others {
                0 => String::new(),
                n => format!(" (and {n} more not healthy)"),
            };
            (
                health.app_health(),
                format!("{name}: {}{more}", health.reason()),
            )
        }
    }
}

#[cfg(test)]
mod tests;
