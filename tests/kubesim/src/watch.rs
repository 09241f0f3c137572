//! WATCH: a chunked stream of `{"type", "object"}` lines read from the store's event log.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::ApiError;
use crate::http::{Body, Query};
use crate::resource::ResourceType;
use crate::server::Shared;
use crate::store::{Event, EventKind, Filter, Store};

/// The longest a watch stays open, as the API server's `--min-request-timeout` default.
const MAX_TIMEOUT_SECS: u64 = 1800;

fn line(kind: &str, object: &Value) -> Bytes {
    Bytes::from(format!("{}\n", json!({"type": kind, "object": object})))
}

/// What a watcher with this filter sees of an event; objects moving in or out of a selector
/// appear as ADDED or DELETED, as upstream.
fn translate(rt: &ResourceType, filter: &Filter, event: &Event) -> Option<(&'static str, Value)> {
    let now = filter.matches(&event.namespace, &event.object);
    let before = event
        .prev
        .as_ref()
        .is_some_and(|p| filter.matches(&event.namespace, p));
    let kind = match (event.kind, before, now) {
        (EventKind::Added, _, true) => "ADDED",
        (EventKind::Modified, true, true) => "MODIFIED",
        (EventKind::Modified, false, true) => "ADDED",
        (EventKind::Modified, true, false) => "DELETED",
        (EventKind::Deleted, _, true) => "DELETED",
        _ => return None,
    };
    Some((kind, Store::present(rt, &event.object)))
}

/// Starts a watch and returns its streaming response.
pub fn watch(
    shared: &Arc<Shared>,
    rt: Arc<ResourceType>,
    filter: Filter,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let rv_param = query.get("resourceVersion").unwrap_or_default();
    let send_initial = query.flag("sendInitialEvents");
    let bookmarks = query.flag("allowWatchBookmarks");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse().ok())
        .unwrap_or(MAX_TIMEOUT_SECS)
        .min(MAX_TIMEOUT_SECS);
    let (initial, start, expired) = {
        let store = shared.lock();
        if rv_param.is_empty() || rv_param == "0" || send_initial {
            let (items, rv) = store.list(&rt, &filter);
            (items, rv, None)
        } else {
            let n: u64 = rv_param.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid resourceVersion {rv_param:?}"))
            })?;
            let expired = (n < store.oldest_watchable())
                .then(|| ApiError::expired(n, store.oldest_watchable()));
            (Vec::new(), n, expired)
        }
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let task_shared = shared.clone();
    shared.tracker.spawn(async move {
        let shared = task_shared;
        if let Some(err) = expired {
            let _ = tx.send(line("ERROR", &err.to_status())).await;
            return;
        }
        for obj in &initial {
            if tx.send(line("ADDED", obj)).await.is_err() {
                return;
            }
        }
        if send_initial && bookmarks {
            let mark = json!({
                "kind": rt.kind, "apiVersion": rt.api_version(),
                "metadata": {"resourceVersion": start.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}},
            });
            if tx.send(line("BOOKMARK", &mark)).await.is_err() {
                return;
            }
        }
        let key = rt.storage_key();
        let mut changes = shared.rv.clone();
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut cursor = start;
        loop {
            changes.borrow_and_update();
            let (events, latest) = {
                let store = shared.lock();
                (store.events_since(&key, cursor), store.resource_version())
            };
            cursor = cursor.max(latest);
            for event in &events {
                if let Some((kind, obj)) = translate(&rt, &filter, event)
                    && tx.send(line(kind, &obj)).await.is_err()
                {
                    return;
                }
            }
            tokio::select! {
                _ = shared.cancel.cancelled() => return,
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
        }
    });
    let stream = ReceiverStream::new(rx).map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b)));
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header("Cache-Control", "no-cache, private")
        .body(StreamBody::new(stream).boxed())
        .expect("valid response"))
}
