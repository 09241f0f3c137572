//! `meta.k8s.io/v1` Tables, which `kubectl get` asks for, with the columns the real API server
//! prints for the common kinds (`NAME READY UP-TO-DATE AVAILABLE AGE` for Deployments, ...);
//! other kinds get Name and Age, as custom resources without printer columns do upstream.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::resource::ResourceType;

/// Whether an Accept header asks for a Table.
pub fn wanted(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

/// Age as kubectl prints it (`42s`, `3m5s`, `17m`, `2h3m`, `5h`, `3d`).
pub fn human_age(age: Duration) -> String {
    let s = age.as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..600 => format!("{}m{}s", s / 60, s % 60),
        600..10800 => format!("{}m", s / 60),
        10800..28800 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        28800..172800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// One column: its definition and how a cell is computed from an object.
struct Column {
    name: &'static str,
    ty: &'static str,
    format: &'static str,
    priority: u8,
    cell: fn(&Value) -> Value,
}

const fn col(name: &'static str, cell: fn(&Value) -> Value) -> Column {
    Column {
        name,
        ty: "string",
        format: "",
        priority: 0,
        cell,
    }
}

const fn int(name: &'static str, cell: fn(&Value) -> Value) -> Column {
    Column {
        ty: "integer",
        ..col(name, cell)
    }
}

const fn wide(name: &'static str, cell: fn(&Value) -> Value) -> Column {
    Column {
        priority: 1,
        ..col(name, cell)
    }
}

const NAME: Column = Column {
    format: "name",
    ..col("Name", |o| o["metadata"]["name"].clone())
};
const AGE: Column = col("Age", |o| json!(age(o)));

fn age(obj: &Value) -> String {
    obj["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .map(|t| human_age(SystemTime::now().duration_since(t).unwrap_or_default()))
        .unwrap_or_else(|| "<unknown>".into())
}

fn num(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn text<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn or_none(s: String) -> Value {
    json!(if s.is_empty() { "<none>".into() } else { s })
}

fn len(obj: &Value, pointer: &str) -> usize {
    match obj.pointer(pointer) {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    }
}

/// `spec.replicas`, which defaults to 1.
fn desired(obj: &Value) -> i64 {
    obj.pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

fn containers(obj: &Value, pointer: &str, field: &str) -> Value {
    let names: Vec<&str> = obj
        .pointer(pointer)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c[field].as_str())
        .collect();
    or_none(names.join(","))
}

fn selector(map: &Value) -> String {
    map.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(",")
}

fn service_ports(obj: &Value) -> Value {
    let ports: Vec<String> = obj
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let protocol = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_i64() {
                Some(node) => format!("{}:{node}/{protocol}", p["port"]),
                None => format!("{}/{protocol}", p["port"]),
            }
        })
        .collect();
    or_none(ports.join(","))
}

fn external_ip(obj: &Value) -> Value {
    let ingress: Vec<&str> = obj
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| i["ip"].as_str().or_else(|| i["hostname"].as_str()))
        .collect();
    let external: Vec<&str> = obj
        .pointer("/spec/externalIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let all = [ingress, external].concat().join(",");
    match text(obj, "/spec/type") {
        "LoadBalancer" if all.is_empty() => json!("<pending>"),
        "ExternalName" => json!(text(obj, "/spec/externalName")),
        _ => or_none(all),
    }
}

fn pod_ready(obj: &Value) -> Value {
    let total = len(obj, "/spec/containers");
    let ready = obj
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|s| s["ready"] == json!(true))
        .count();
    json!(format!("{ready}/{total}"))
}

fn pod_status(obj: &Value) -> Value {
    if obj["metadata"]["deletionTimestamp"].is_string() {
        return json!("Terminating");
    }
    match text(obj, "/status/reason") {
        "" => match text(obj, "/status/phase") {
            "" => json!("Pending"),
            phase => json!(phase),
        },
        reason => json!(reason),
    }
}

fn pod_restarts(obj: &Value) -> Value {
    let restarts: i64 = obj
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|s| s["restartCount"].as_i64().unwrap_or(0))
        .sum();
    json!(restarts)
}

fn job_status(obj: &Value) -> Value {
    let conditions = obj.pointer("/status/conditions").and_then(Value::as_array);
    let holds = |ty: &str| {
        conditions
            .into_iter()
            .flatten()
            .any(|c| c["type"] == ty && c["status"] == "True")
    };
    json!(if holds("Complete") {
        "Complete"
    } else if holds("Failed") {
        "Failed"
    } else if obj["metadata"]["deletionTimestamp"].is_string() {
        "Terminating"
    } else if holds("Suspended") {
        "Suspended"
    } else {
        "Running"
    })
}

fn pdb_field(obj: &Value, field: &str) -> Value {
    match &obj["spec"][field] {
        Value::Null => json!("N/A"),
        Value::String(s) => json!(s),
        v => json!(v.to_string()),
    }
}

/// The columns kube-apiserver prints for `kind` in `group`.
fn columns(group: &str, kind: &str) -> Vec<Column> {
    match (group, kind) {
        ("apps", "Deployment") => vec![
            NAME,
            col("Ready", |o| {
                json!(format!(
                    "{}/{}",
                    num(o, "/status/readyReplicas"),
                    desired(o)
                ))
            }),
            int("Up-to-date", |o| json!(num(o, "/status/updatedReplicas"))),
            int("Available", |o| json!(num(o, "/status/availableReplicas"))),
            AGE,
            wide("Containers", |o| {
                containers(o, "/spec/template/spec/containers", "name")
            }),
            wide("Images", |o| {
                containers(o, "/spec/template/spec/containers", "image")
            }),
            wide("Selector", |o| {
                or_none(selector(&o["spec"]["selector"]["matchLabels"]))
            }),
        ],
        ("apps", "StatefulSet") => vec![
            NAME,
            col("Ready", |o| {
                json!(format!(
                    "{}/{}",
                    num(o, "/status/readyReplicas"),
                    desired(o)
                ))
            }),
            AGE,
            wide("Containers", |o| {
                containers(o, "/spec/template/spec/containers", "name")
            }),
            wide("Images", |o| {
                containers(o, "/spec/template/spec/containers", "image")
            }),
        ],
        ("apps", "DaemonSet") => vec![
            NAME,
            int("Desired", |o| {
                json!(num(o, "/status/desiredNumberScheduled"))
            }),
            int("Current", |o| {
                json!(num(o, "/status/currentNumberScheduled"))
            }),
            int("Ready", |o| json!(num(o, "/status/numberReady"))),
            int("Up-to-date", |o| {
                json!(num(o, "/status/updatedNumberScheduled"))
            }),
            int("Available", |o| json!(num(o, "/status/numberAvailable"))),
            col("Node Selector", |o| {
                or_none(selector(&o["spec"]["template"]["spec"]["nodeSelector"]))
            }),
            AGE,
            wide("Containers", |o| {
                containers(o, "/spec/template/spec/containers", "name")
            }),
            wide("Images", |o| {
                containers(o, "/spec/template/spec/containers", "image")
            }),
        ],
        ("apps", "ReplicaSet") => vec![
            NAME,
            int("Desired", |o| json!(desired(o))),
            int("Current", |o| json!(num(o, "/status/replicas"))),
            int("Ready", |o| json!(num(o, "/status/readyReplicas"))),
            AGE,
        ],
        ("batch", "Job") => vec![
            NAME,
            col("Status", job_status),
            col("Completions", |o| {
                let want = o
                    .pointer("/spec/completions")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                json!(format!("{}/{want}", num(o, "/status/succeeded")))
            }),
            AGE,
        ],
        ("batch", "CronJob") => vec![
            NAME,
            col("Schedule", |o| json!(text(o, "/spec/schedule"))),
            col("Timezone", |o| or_none(text(o, "/spec/timeZone").into())),
            col("Suspend", |o| {
                json!(if o["spec"]["suspend"] == json!(true) {
                    "True"
                } else {
                    "False"
                })
            }),
            int("Active", |o| json!(len(o, "/status/active"))),
            col("Last Schedule", |o| {
                match humantime::parse_rfc3339(text(o, "/status/lastScheduleTime")) {
                    Ok(t) => json!(human_age(
                        SystemTime::now().duration_since(t).unwrap_or_default()
                    )),
                    Err(_) => json!("<none>"),
                }
            }),
            AGE,
        ],
        ("", "Pod") => vec![
            NAME,
            col("Ready", pod_ready),
            col("Status", pod_status),
            int("Restarts", pod_restarts),
            AGE,
            wide("IP", |o| or_none(text(o, "/status/podIP").into())),
            wide("Node", |o| or_none(text(o, "/spec/nodeName").into())),
        ],
        ("", "Service") => vec![
            NAME,
            col("Type", |o| json!(text(o, "/spec/type"))),
            col("Cluster-IP", |o| or_none(text(o, "/spec/clusterIP").into())),
            col("External-IP", external_ip),
            col("Port(s)", service_ports),
            AGE,
            wide("Selector", |o| or_none(selector(&o["spec"]["selector"]))),
        ],
        ("", "ConfigMap") => vec![
            NAME,
            int("Data", |o| json!(len(o, "/data") + len(o, "/binaryData"))),
            AGE,
        ],
        ("", "Secret") => vec![
            NAME,
            col("Type", |o| json!(text(o, "/type"))),
            int("Data", |o| json!(len(o, "/data"))),
            AGE,
        ],
        ("", "Namespace") => vec![
            NAME,
            col("Status", |o| json!(text(o, "/status/phase"))),
            AGE,
        ],
        ("", "ServiceAccount") => vec![NAME, int("Secrets", |o| json!(len(o, "/secrets"))), AGE],
        ("", "PersistentVolumeClaim") => vec![
            NAME,
            col("Status", |o| json!(text(o, "/status/phase"))),
            col("Volume", |o| json!(text(o, "/spec/volumeName"))),
            AGE,
        ],
        ("networking.k8s.io", "Ingress") => vec![
            NAME,
            col("Class", |o| {
                or_none(text(o, "/spec/ingressClassName").into())
            }),
            col("Hosts", |o| {
                let hosts: Vec<&str> = o
                    .pointer("/spec/rules")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r["host"].as_str())
                    .collect();
                json!(if hosts.is_empty() {
                    "*".into()
                } else {
                    hosts.join(",")
                })
            }),
            col("Address", |o| {
                or_none(
                    o.pointer("/status/loadBalancer/ingress/0/ip")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .into(),
                )
            }),
            col("Ports", |o| {
                json!(if len(o, "/spec/tls") > 0 {
                    "80, 443"
                } else {
                    "80"
                })
            }),
            AGE,
        ],
        ("networking.k8s.io", "NetworkPolicy") => vec![
            NAME,
            col("Pod-Selector", |o| {
                let s = selector(&o["spec"]["podSelector"]["matchLabels"]);
                json!(if s.is_empty() { "<none>".into() } else { s })
            }),
            AGE,
        ],
        ("policy", "PodDisruptionBudget") => vec![
            NAME,
            col("Min Available", |o| pdb_field(o, "minAvailable")),
            col("Max Unavailable", |o| pdb_field(o, "maxUnavailable")),
            int("Allowed Disruptions", |o| {
                json!(num(o, "/status/disruptionsAllowed"))
            }),
            AGE,
        ],
        ("rbac.authorization.k8s.io", "ClusterRole" | "Role") => vec![
            NAME,
            Column {
                format: "date",
                ..col("Created At", |o| o["metadata"]["creationTimestamp"].clone())
            },
        ],
        ("rbac.authorization.k8s.io", "ClusterRoleBinding" | "RoleBinding") => vec![
            NAME,
            col("Role", |o| {
                json!(format!(
                    "{}/{}",
                    text(o, "/roleRef/kind"),
                    text(o, "/roleRef/name")
                ))
            }),
            AGE,
        ],
        ("apiextensions.k8s.io", "CustomResourceDefinition") => vec![
            NAME,
            Column {
                format: "date",
                ..col("Created At", |o| o["metadata"]["creationTimestamp"].clone())
            },
        ],
        ("apiregistration.k8s.io", "APIService") => vec![
            NAME,
            col("Service", |o| {
                match (
                    text(o, "/spec/service/namespace"),
                    text(o, "/spec/service/name"),
                ) {
                    (_, "") => json!("Local"),
                    (ns, name) => json!(format!("{ns}/{name}")),
                }
            }),
            col("Available", |o| {
                let available = o
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .find(|c| c["type"] == "Available")
                    .and_then(|c| c["status"].as_str())
                    .unwrap_or("Unknown");
                json!(available)
            }),
            AGE,
        ],
        _ => vec![NAME, AGE],
    }
}

fn description(name: &str) -> &'static str {
    match name {
        "Name" => "Name must be unique within a namespace.",
        "Age" => "CreationTimestamp is when the object was created.",
        _ => "",
    }
}

fn row(obj: &Value, columns: &[Column], include: &str) -> Value {
    let cells: Vec<Value> = columns.iter().map(|c| (c.cell)(obj)).collect();
    let mut row = json!({"cells": cells});
    match include {
        "None" => {}
        "Object" => row["object"] = obj.clone(),
        _ => {
            row["object"] = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]})
        }
    }
    row
}

/// A Table of objects of `rt`; `include` is the `includeObject` parameter.
pub fn table(rt: &ResourceType, items: &[Value], resource_version: u64, include: &str) -> Value {
    let columns = columns(&rt.group, &rt.kind);
    let definitions: Vec<Value> = columns
        .iter()
        .map(|c| {
            json!({"name": c.name, "type": c.ty, "format": c.format, "description": description(c.name), "priority": c.priority})
        })
        .collect();
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version.to_string()},
        "columnDefinitions": definitions,
        "rows": items.iter().map(|o| row(o, &columns, include)).collect::<Vec<_>>(),
    })
}
