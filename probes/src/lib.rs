//! The plain-HTTP listener the hub and the agent serve their Prometheus metrics and kubelet probes
//! on (issue 16): `GET /metrics` (OpenMetrics text), `GET /healthz` (the process answers) and
//! `GET /readyz` (the component's own readiness, with the reason when it is not ready).
//!
//! [`serve_http`] is the listener itself, which the hub's webhook receiver uses too.
//!
//! The component gives a [`Probes`] implementation; this crate owns the listener and its limits:
//! at most [`MAX_CONNECTIONS`] connections at once (more wait in the kernel's backlog), request
//! headers within 5 s, a connection at most 30 s, GET and HEAD only. Each answer is computed on a
//! blocking thread, since a scrape may read the component's store.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

/// How many scrapes and probes may be open at once.
pub const MAX_CONNECTIONS: usize = 32;

/// How long a client may take to send its request headers, and a whole connection may last.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// What a component exposes on the listener.
pub trait Probes: Send + Sync + 'static {
    /// The OpenMetrics text of every metric, gauges read now.
    fn metrics(&self) -> String;
    /// `Err(reason)` while the component should not receive traffic.
    fn ready(&self) -> Result<(), String>;
}

/// Serves `probes` on `listener` until `shutdown`, every task on `tracker`.
pub fn serve<P: Probes>(
    listener: TcpListener,
    probes: Arc<P>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    serve_http(
        listener,
        MAX_CONNECTIONS,
        move |req: Request<Incoming>| {
            let probes = probes.clone();
            let (method, path) = (req.method().clone(), req.uri().path().to_string());
            async move {
                tokio::task::spawn_blocking(move || answer(&method, &path, &*probes))
                    .await
                    .unwrap_or_else(|e| {
                        text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("the answer failed: {e}\n"),
                        )
                    })
            }
        },
        shutdown,
        tracker,
    );
}

/// Serves HTTP/1.1 on `listener` until `shutdown`, each request answered by `handle`: at most
/// `max_connections` connections at once (more wait in the kernel's backlog), request headers
/// within 5 s, a connection at most 30 s. The listeners beside the gRPC one (probes, webhooks)
/// share it.
pub fn serve_http<H, F>(
    listener: TcpListener,
    max_connections: usize,
    handle: H,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let tasks = tracker.clone();
    tracker.spawn(async move {
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return,
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            };
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        debug!(error = %e, "accepting an HTTP connection failed");
                        continue;
                    }
                },
            };
            let (handle, stop) = (handle.clone(), shutdown.clone());
            tasks.spawn(async move {
                let _permit = permit;
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let answer = handle(req);
                    async move { Ok::<_, std::convert::Infallible>(answer.await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn) => {}
                }
            });
        }
    });
}

/// A plain-text answer.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn answer<P: Probes>(method: &Method, path: &str, probes: &P) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match path {
        "/metrics" => {
            let mut r = text(StatusCode::OK, probes.metrics());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match probes.ready() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        other => text(
            StatusCode::NOT_FOUND,
            format!("no {other:?} here: /metrics, /healthz and /readyz are\n"),
        ),
    }
}

/// The OpenMetrics text of `registry`.
pub fn encode(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}
