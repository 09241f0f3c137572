//! Errors: start-up failures, and API errors that become Kubernetes `Status` bodies.

use http::StatusCode;
use serde_json::{Value, json};

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Generating the CA or the server certificate failed.
    #[error("generating certificates")]
    Certificate(#[source] rcgen::Error),
    /// The TLS configuration was refused by rustls.
    #[error("building the TLS configuration")]
    Tls(#[source] rustls::Error),
    /// Binding the listening socket failed.
    #[error("binding {addr}")]
    Bind {
        /// The address we tried to bind.
        addr: String,
        /// The underlying IO error.
        #[source]
        source: std::io::Error,
    },
    /// Writing the kubeconfig (or the directory holding it) failed.
    #[error("writing {path}")]
    Write {
        /// The path we tried to write.
        path: std::path::PathBuf,
        /// The underlying IO error.
        #[source]
        source: std::io::Error,
    },
}

/// An error answered to an API client as a `kind: Status` body.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Machine-readable reason (`NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, ...).
    pub reason: &'static str,
    /// Human-readable message, as the real API server words it.
    pub message: String,
    /// The `details` object (name, group, kind, causes), if any.
    pub details: Option<Value>,
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: String) -> Self {
        Self {
            code: code.as_u16(),
            reason,
            message,
            details: None,
        }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// `404 NotFound` for an object.
    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        let what = qualified(group, plural);
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{what} \"{name}\" not found"),
        )
        .with_details(json!({"name": name, "group": group, "kind": plural}))
    }

    /// `404 NotFound` for a path the server does not serve.
    pub fn no_route() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource".into(),
        )
        .with_details(json!({}))
    }

    /// `409 AlreadyExists`.
    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        let what = qualified(group, plural);
        Self::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{what} \"{name}\" already exists"),
        )
        .with_details(json!({"name": name, "group": group, "kind": plural}))
    }

    /// `409 Conflict` for a stale resourceVersion.
    pub fn stale(group: &str, plural: &str, name: &str) -> Self {
        let what = qualified(group, plural);
        Self::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {what} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        )
        .with_details(json!({"name": name, "group": group, "kind": plural}))
    }

    /// `409 Conflict` for a server-side apply field conflict.
    pub fn apply_conflict(message: String, causes: Vec<Value>) -> Self {
        Self::new(StatusCode::CONFLICT, "Conflict", message).with_details(json!({"causes": causes}))
    }

    /// `422 Invalid` with one cause.
    pub fn invalid(kind: &str, name: &str, field: &str, detail: &str) -> Self {
        let cause = format!("{field}: {detail}");
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{kind} \"{name}\" is invalid: {cause}"),
        )
        .with_details(json!({
            "name": name, "kind": kind,
            "causes": [{"reason": "FieldValueInvalid", "message": detail, "field": field}],
        }))
    }

    /// `422 Invalid` with one `FieldValueInvalid` cause per message, worded as the API server
    /// words them: `Kind.group "name" is invalid: field: Invalid value: "value": message`, and a
    /// bracketed, comma-separated list when there are several.
    pub fn invalid_value(
        group: &str,
        kind: &str,
        name: &str,
        field: &str,
        value: &str,
        messages: &[String],
    ) -> Self {
        let qualified_kind = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        let bodies: Vec<String> = messages
            .iter()
            .map(|m| format!("Invalid value: {}: {m}", go_quote(value)))
            .collect();
        let full: Vec<String> = bodies.iter().map(|b| format!("{field}: {b}")).collect();
        let aggregate = match full.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let causes: Vec<Value> = bodies
            .iter()
            .map(|b| json!({"reason": "FieldValueInvalid", "message": b, "field": field}))
            .collect();
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!(
                "{qualified_kind} {} is invalid: {aggregate}",
                go_quote(name)
            ),
        )
        .with_details(json!({"name": name, "group": group, "kind": kind, "causes": causes}))
    }

    /// `400 BadRequest`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message.into())
    }

    /// `401 Unauthorized`.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized".into(),
        )
    }

    /// `403 Forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message.into())
    }

    /// `405 MethodNotAllowed`.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource".into(),
        )
    }

    /// `410 Expired` for a watch from a resourceVersion older than the event log.
    pub fn expired(requested: u64, oldest: u64) -> Self {
        Self::new(
            StatusCode::GONE,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// `415 UnsupportedMediaType`.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {content_type:?})"
            ),
        )
    }

    /// `415 UnsupportedMediaType` for a protobuf body of a kind the simulator does not decode.
    pub fn unsupported_protobuf(kind: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "kubesim does not decode protobuf bodies of kind {kind}; send JSON instead (kubectl apply -f or create -f)"
            ),
        )
    }

    /// The `kind: Status` body.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

/// `plural.group` for group resources, `plural` for core ones, as API messages print them.
fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

/// A string quoted as Go's `%q` prints it (the API server's messages use it for values).
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
