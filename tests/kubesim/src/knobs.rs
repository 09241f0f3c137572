//! Test knobs over HTTP, under `/kubesim/`, for out-of-process tests:
//!
//! - `GET /kubesim/requests` → request counts by verb; `DELETE /kubesim/requests` resets them.
//! - `PUT /kubesim/workload` with `{"mode": "ready"|"progressing"|"failed"}` sets the global mode;
//!   adding `"target": {"kind", "namespace", "name"}` sets it for one object.
//!
//! Drift is injected with ordinary API writes under another field manager, e.g.
//! `kubectl patch --field-manager=intruder` or a PATCH with `?fieldManager=intruder`.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::ApiError;
use crate::http::{Body, bytes_response, json_response};
use crate::server::Shared;
use crate::workload::{self, ObjectRef, WorkloadMode};

/// API requests served, by verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestCounts(pub BTreeMap<String, u64>);

impl RequestCounts {
    /// Requests of one verb.
    pub fn get(&self, verb: &str) -> u64 {
        self.0.get(verb).copied().unwrap_or(0)
    }

    /// Write requests: create, update, patch and delete.
    pub fn writes(&self) -> u64 {
        ["create", "update", "patch", "delete"]
            .iter()
            .map(|v| self.get(v))
            .sum()
    }

    /// All requests.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// Body of `PUT /kubesim/workload`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadRequest {
    /// The mode to set.
    pub mode: WorkloadMode,
    /// One object, or every workload when absent.
    #[serde(default)]
    pub target: Option<ObjectRef>,
}

/// Serves `/kubesim/{rest}`.
pub fn handle(
    shared: &Arc<Shared>,
    method: &Method,
    rest: &str,
    body: &Bytes,
) -> Result<Response<Body>, ApiError> {
    match (method, rest.trim_end_matches('/')) {
        (&Method::GET, "requests") => {
            let counts = RequestCounts(shared.lock().counters.clone());
            Ok(json_response(StatusCode::OK, &json!(counts)))
        }
        (&Method::DELETE, "requests") | (&Method::POST, "requests/reset") => {
            shared.lock().counters.clear();
            Ok(bytes_response(
                StatusCode::OK,
                "application/json",
                Bytes::from_static(b"{}"),
            ))
        }
        (&Method::PUT | &Method::POST, "workload") => {
            let req: WorkloadRequest = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("workload knob: {e}")))?;
            tracing::info!(mode = ?req.mode, target = ?req.target, "workload mode set");
            workload::set_mode(&mut shared.lock(), req.target, req.mode);
            Ok(json_response(StatusCode::OK, &json!({"mode": req.mode})))
        }
        _ => Err(ApiError::no_route()),
    }
}
