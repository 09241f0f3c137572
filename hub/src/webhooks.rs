//! Git push webhooks (issue 16): `POST /hooks/sources/NAME` makes the leader fetch source NAME at
//! once instead of at its next poll; polling stays the fallback.
//!
//! One URL per source takes every scheme, told apart by its headers, each checked against the
//! secret in the source's `webhookSecretFile` (read at each request, never logged):
//! - GitHub: `X-Hub-Signature-256: sha256=HEX`, the HMAC-SHA256 of the body;
//! - Gitea and Forgejo: `X-Gitea-Signature` / `X-Forgejo-Signature: HEX`, the same HMAC;
//! - GitLab: `X-Gitlab-Token: SECRET`, the secret itself;
//! - anything else: `X-Flotilla-Signature: sha256=HEX`, the same HMAC as GitHub's.
//!
//! A delivery id (`X-GitHub-Delivery`, `X-Gitea-Delivery`, `X-Forgejo-Delivery`,
//! `X-Gitlab-Event-UUID`, `X-Flotilla-Delivery`) seen in the last [`REMEMBERED_DELIVERIES`] is a
//! replay. The webhook is recorded through the store (`record_source_hook`), so whichever replica
//! takes it, the leader's controller hears of it. Answers: 202 taken, 404 unknown source or one
//! without a webhook secret, 401 no or a wrong signature, 409 replay, 413 body over the limit, 429
//! over the rate, 405 not POST, 503 the store could not record it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::SourceConfig;
use crate::store::HubStore;

/// Largest webhook body read; GitHub caps its payloads at 25 MB, but a push payload is a few KiB.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Webhooks per minute the listener takes in all (a burst of as many); beyond: 429.
pub const PER_MINUTE: u32 = 120;

/// Delivery ids remembered to refuse replays.
pub const REMEMBERED_DELIVERIES: usize = 4096;

const MAX_CONNECTIONS: usize = 64;

/// HMAC-SHA256 of `message` under `key` (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// Equal without an early exit, so the time taken tells nothing of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a webhook was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No signature header of any known scheme.
    Unsigned,
    /// A signature that does not match the body and secret, named by its header.
    BadSignature(&'static str),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Unsigned => write!(
                f,
                "no signature: send X-Hub-Signature-256, X-Gitea-Signature, X-Forgejo-Signature, X-Gitlab-Token or X-Flotilla-Signature"
            ),
            Refusal::BadSignature(header) => {
                write!(f, "{header} does not match this source's webhook secret")
            }
        }
    }
}

/// Checks `body` against `secret` by whichever scheme `headers` use; the scheme's name on success.
pub fn verify(headers: &HeaderMap, body: &[u8], secret: &[u8]) -> Result<&'static str, Refusal> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let expected = || hmac_sha256(secret, body);
    let hex_matches =
        |hex_text: &str| hex::decode(hex_text.trim()).is_ok_and(|got| same(&got, &expected()));
    if let Some(sig) = header("x-hub-signature-256") {
        let ok = sig.strip_prefix("sha256=").is_some_and(hex_matches);
        return ok
            .then_some("github")
            .ok_or(Refusal::BadSignature("X-Hub-Signature-256"));
    }
    for (name, scheme, shown) in [
        ("x-gitea-signature", "gitea", "X-Gitea-Signature"),
        ("x-forgejo-signature", "forgejo", "X-Forgejo-Signature"),
    ] {
        if let Some(sig) = header(name) {
            return hex_matches(sig)
                .then_some(scheme)
                .ok_or(Refusal::BadSignature(shown));
        }
    }
    if let Some(token) = header("x-gitlab-token") {
        return same(token.as_bytes(), trim_secret(secret))
            .then_some("gitlab")
            .ok_or(Refusal::BadSignature("X-Gitlab-Token"));
    }
    if let Some(sig) = header("x-flotilla-signature") {
        let ok = sig.strip_prefix("sha256=").is_some_and(hex_matches);
        return ok
            .then_some("generic")
            .ok_or(Refusal::BadSignature("X-Flotilla-Signature"));
    }
    Err(Refusal::Unsigned)
}

/// A secret file's content without its trailing newline.
fn trim_secret(secret: &[u8]) -> &[u8] {
    let mut s = secret;
    while let [rest @ .., b'\n' | b'\r'] = s {
        s = rest;
    }
    s
}

/// The delivery id a webhook carries, if any.
fn delivery(headers: &HeaderMap) -> Option<String> {
    [
        "x-github-delivery",
        "x-gitea-delivery",
        "x-forgejo-delivery",
        "x-gitlab-event-uuid",
        "x-flotilla-delivery",
    ]
    .iter()
    .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
    .map(|v| v.chars().take(128).collect())
}

/// The newest delivery ids, oldest dropped first.
#[derive(Default)]
struct Deliveries {
    order: VecDeque<String>,
    seen: HashSet<String>,
}

impl Deliveries {
    /// False if `id` was seen already; else remembers it.
    fn first_time(&mut self, id: &str) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() == REMEMBERED_DELIVERIES
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.order.push_back(id.to_string());
        self.seen.insert(id.to_string());
        true
    }
}

struct Receiver {
    sources: HashMap<String, SourceConfig>,
    store: HubStore,
    deliveries: Mutex<Deliveries>,
    rate: governor::DefaultDirectRateLimiter,
}

/// Serves the webhook receiver on `listener` until `shutdown`.
pub fn serve(
    listener: TcpListener,
    sources: &[SourceConfig],
    store: HubStore,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    let per_minute = NonZeroU32::new(PER_MINUTE).expect("non-zero");
    let receiver = Arc::new(Receiver {
        sources: sources
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect(),
        store,
        deliveries: Mutex::default(),
        rate: governor::RateLimiter::direct(governor::Quota::per_minute(per_minute)),
    });
    flotilla_probes::serve_http(
        listener,
        MAX_CONNECTIONS,
        move |req: Request<Incoming>| {
            let receiver = receiver.clone();
            async move { receiver.take(req).await }
        },
        shutdown,
        tracker,
    );
}

fn answer(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    flotilla_probes::text(status, body + "\n")
}

impl Receiver {
    async fn take(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::POST {
            return answer(StatusCode::METHOD_NOT_ALLOWED, "webhooks are POSTed".into());
        }
        let path = req.uri().path().to_string();
        let Some(name) = path.strip_prefix("/hooks/sources/") else {
            return answer(
                StatusCode::NOT_FOUND,
                format!("no {path:?} here: POST /hooks/sources/NAME"),
            );
        };
        let Some(source) = self.sources.get(name) else {
            return answer(StatusCode::NOT_FOUND, format!("no source named {name:?}"));
        };
        let Some(secret_file) = &source.webhook_secret_file else {
            return answer(
                StatusCode::NOT_FOUND,
                format!("source {name:?} takes no webhooks (no webhookSecretFile)"),
            );
        };
        if self.rate.check().is_err() {
            return answer(
                StatusCode::TOO_MANY_REQUESTS,
                format!("over {PER_MINUTE} webhooks a minute; polling continues"),
            );
        }
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return answer(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is over {MAX_BODY_BYTES} bytes"),
                );
            }
        };
        let secret = match std::fs::read(secret_file) {
            Ok(s) => s,
            Err(e) => {
                warn!(source = %name, file = %secret_file.display(), error = %e, "reading the webhook secret failed");
                return answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the hub cannot read source {name:?}'s webhook secret file"),
                );
            }
        };
        let scheme = match verify(&parts.headers, &body, trim_secret(&secret)) {
            Ok(scheme) => scheme,
            Err(refusal) => {
                debug!(source = %name, reason = %refusal, "webhook refused");
                return answer(StatusCode::UNAUTHORIZED, refusal.to_string());
            }
        };
        if let Some(id) = delivery(&parts.headers) {
            let first = self
                .deliveries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .first_time(&id);
            if !first {
                return answer(
                    StatusCode::CONFLICT,
                    format!("delivery {id:?} was taken already"),
                );
            }
        }
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let store = self.store.clone();
        let source_name = name.to_string();
        let recorded =
            tokio::task::spawn_blocking(move || store.record_source_hook(&source_name, at)).await;
        match recorded {
            Ok(Ok(())) => {
                info!(source = %name, scheme, "push webhook taken; the leader fetches now");
                answer(StatusCode::ACCEPTED, format!("fetching source {name:?}"))
            }
            Ok(Err(e)) => {
                warn!(source = %name, error = %e, "recording a push webhook failed");
                answer(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the hub could not record it ({e}); polling continues"),
                )
            }
            Err(e) => answer(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("recording it failed: {e}"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// The example in GitHub's documentation on validating webhook deliveries: a payload, its
    /// secret and the X-Hub-Signature-256 GitHub sends for them.
    #[test]
    fn githubs_documented_delivery_verifies() {
        let sig =
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".to_string();
        let h = headers(&[("x-hub-signature-256", sig)]);
        assert_eq!(
            verify(&h, b"Hello, World!", b"It's a Secret to Everybody"),
            Ok("github")
        );
    }

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn every_scheme_is_checked_against_the_body_and_secret() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let mac = hex::encode(hmac_sha256(b"s3cret", body));
        let wrong = hex::encode(hmac_sha256(b"other", body));
        let cases = [
            ("x-hub-signature-256", format!("sha256={mac}"), "github"),
            ("x-gitea-signature", mac.clone(), "gitea"),
            ("x-forgejo-signature", mac.clone(), "forgejo"),
            ("x-gitlab-token", "s3cret".to_string(), "gitlab"),
            ("x-flotilla-signature", format!("sha256={mac}"), "generic"),
        ];
        for (header, value, scheme) in cases {
            assert_eq!(
                verify(&headers(&[(header, value)]), body, b"s3cret"),
                Ok(scheme)
            );
        }
        for (header, value) in [
            ("x-hub-signature-256", format!("sha256={wrong}")),
            ("x-hub-signature-256", mac.clone()),
            ("x-gitea-signature", wrong.clone()),
            ("x-gitlab-token", "s3cre".to_string()),
            ("x-flotilla-signature", format!("sha256={wrong}")),
        ] {
            assert!(matches!(
                verify(&headers(&[(header, value)]), body, b"s3cret"),
                Err(Refusal::BadSignature(_))
            ));
        }
        // The right signature over another body fails too.
        assert!(
            verify(
                &headers(&[("x-hub-signature-256", format!("sha256={mac}"))]),
                b"{}",
                b"s3cret"
            )
            .is_err()
        );
        assert_eq!(
            verify(&HeaderMap::new(), body, b"s3cret"),
            Err(Refusal::Unsigned)
        );
    }

    #[test]
    fn a_delivery_is_taken_once_and_the_oldest_are_forgotten() {
        let mut d = Deliveries::default();
        assert!(d.first_time("a"));
        assert!(!d.first_time("a"));
        for i in 0..REMEMBERED_DELIVERIES {
            assert!(d.first_time(&i.to_string()));
        }
        assert!(
            d.first_time("a"),
            "forgotten after {REMEMBERED_DELIVERIES} newer"
        );
        assert_eq!(d.order.len(), REMEMBERED_DELIVERIES);
    }

    #[test]
    fn a_secret_file_newline_is_not_part_of_the_secret() {
        assert_eq!(trim_secret(b"s3cret\n"), b"s3cret");
        assert_eq!(trim_secret(b"s3cret\r\n"), b"s3cret");
    }
}
