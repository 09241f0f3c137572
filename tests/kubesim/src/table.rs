//! `meta.k8s.io/v1` Tables, which `kubectl get` asks for: a Name and an Age column.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

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

fn row(obj: &Value, include: &str) -> Value {
    let meta = &obj["metadata"];
    let age = meta["creationTimestamp"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .map(|t| human_age(SystemTime::now().duration_since(t).unwrap_or_default()))
        .unwrap_or_else(|| "<unknown>".into());
    let mut row = json!({"cells": [meta["name"], age]});
    match include {
        "None" => {}
        "Object" => row["object"] = obj.clone(),
        _ => {
            row["object"] = json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta})
        }
    }
    row
}

/// A Table of objects; `include` is the `includeObject` parameter.
pub fn table(items: &[Value], resource_version: u64, include: &str) -> Value {
    json!({
        "kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version.to_string()},
        "columnDefinitions": [
            {"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0},
            {"name": "Age", "type": "string", "format": "", "description": "CreationTimestamp is when the object was created.", "priority": 0},
        ],
        "rows": items.iter().map(|o| row(o, include)).collect::<Vec<_>>(),
    })
}
