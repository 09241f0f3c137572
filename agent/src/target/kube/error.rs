//! What went wrong talking to the API server, and whether trying again may help.
//!
//! Transient: no answer (connection refused or reset, timeout), 429, 5xx and 409s that are not
//! field-manager conflicts (a stale resourceVersion). Permanent: every other 4xx, reported with
//! the server's reason. A server-side apply conflict is permanent for the pass and names the
//! other manager and field, as the API server's message does.

use std::time::Duration;

use flotilla_common::object::ObjectId;

use crate::target::TargetError;

/// A failed call to the API server.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// A field this apply sets is owned by another field manager.
    #[error("{message} (set force: true on the app to take ownership)")]
    Conflict {
        /// The API server's message: which manager owns which field.
        message: String,
    },
    /// The API server refused the request.
    #[error("the API server answered {code} {reason}: {message}")]
    Api {
        /// HTTP status.
        code: u16,
        /// Machine-readable reason.
        reason: String,
        /// The server's message (withheld for Secrets, which it could quote).
        message: String,
    },
    /// No answer: connection refused or reset, TLS failure, malformed response.
    #[error("the API server is unavailable: {0}")]
    Unavailable(String),
    /// No answer in time.
    #[error("the API server did not answer within {0:?}")]
    Timeout(Duration),
    /// The cluster serves no such kind.
    #[error(
        "the cluster does not know kind {kind} in {api_version} \
         (is its CustomResourceDefinition installed?)"
    )]
    UnknownKind {
        /// `group/version`.
        api_version: String,
        /// Kind.
        kind: String,
    },
    /// The object cannot be sent as it is.
    #[error("{0}")]
    Invalid(String),
    /// Waiting for a condition ran out of time.
    #[error("{0}")]
    NotReady(String),
}

impl KubeError {
    /// Whether trying again later may succeed.
    pub fn transient(&self) -> bool {
        match self {
            KubeError::Unavailable(_) | KubeError::Timeout(_) | KubeError::NotReady(_) => true,
            KubeError::Api { code, .. } => *code == 409 || *code == 429 || *code >= 500,
            KubeError::Conflict { .. } | KubeError::UnknownKind { .. } | KubeError::Invalid(_) => {
                false
            }
        }
    }

    /// The HTTP status of a refusal.
    pub fn code(&self) -> Option<u16> {
        match self {
            KubeError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// A `TargetError` for `op` on `object`.
    pub fn into_target(self, op: &'static str, object: String) -> TargetError {
        TargetError {
            op,
            object,
            transient: self.transient(),
            source: Box::new(self),
        }
    }
}

/// Classifies a kube client error. `secret` withholds the server's message, which can quote
/// the object's data.
pub fn classify(error: kube::Error, secret: bool) -> KubeError {
    match error {
        kube::Error::Api(status) => {
            let message = if secret {
                "(message withheld: the object is a Secret)".to_string()
            } else {
                status.message.clone()
            };
            let conflict = status.code == 409
                && (status.message.starts_with("Apply failed with")
                    || status.details.as_ref().is_some_and(|d| {
                        d.causes
                            .iter()
                            .any(|c| c.reason.as_str() == "FieldManagerConflict")
                    }));
            if conflict {
                KubeError::Conflict { message }
            } else {
                KubeError::Api {
                    code: status.code,
                    reason: status.reason.clone(),
                    message,
                }
            }
        }
        kube::Error::BuildRequest(e) => {
            KubeError::Invalid(format!("cannot build the request: {e}"))
        }
        // Everything else means no usable answer came back.
        other => KubeError::Unavailable(crate::error::error_chain(&other)),
    }
}

/// Runs one API call with a deadline, classifying its error.
pub async fn call<T>(
    timeout: Duration,
    secret: bool,
    fut: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, KubeError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(classify(e, secret)),
        Err(_) => Err(KubeError::Timeout(timeout)),
    }
}

/// True for objects whose API errors may quote confidential data.
pub fn is_secret(id: &ObjectId) -> bool {
    id.group.is_empty() && id.kind == "Secret"
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    fn api(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(Status::failure(message, reason).with_code(code).boxed())
    }

    #[test]
    fn errors_decide_retries() {
        let cases: Vec<(kube::Error, bool, &str)> = vec![
            (
                api(
                    409,
                    "Conflict",
                    "Apply failed with 1 conflict: conflict with \"intruder\": .data.value",
                ),
                false,
                "Apply failed with 1 conflict: conflict with \"intruder\": .data.value (set force: true",
            ),
            (
                api(409, "Conflict", "the object has been modified"),
                true,
                "the API server answered 409",
            ),
            (
                api(429, "TooManyRequests", "slow down"),
                true,
                "the API server answered 429",
            ),
            (
                api(503, "ServiceUnavailable", "etcd"),
                true,
                "the API server answered 503",
            ),
            (
                api(422, "Invalid", "spec.x: bad"),
                false,
                "the API server answered 422 Invalid: spec.x: bad",
            ),
            (
                api(403, "Forbidden", "no"),
                false,
                "the API server answered 403",
            ),
        ];
        for (error, transient, text) in cases {
            let e = classify(error, false);
            assert_eq!(e.transient(), transient, "{e}");
            assert!(e.to_string().starts_with(text), "{e}");
        }
        assert!(KubeError::Timeout(Duration::from_secs(1)).transient());
        let secret = classify(api(422, "Invalid", "data.password: s3cret is bad"), true);
        assert!(!secret.to_string().contains("s3cret"), "{secret}");
    }
}
