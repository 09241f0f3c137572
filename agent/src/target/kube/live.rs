//! The live objects Flotilla owns, kept current by one watch per resource type.
//!
//! Each watch (kube-runtime's `watcher`: list, then watch, resuming and relisting with backoff)
//! selects `app.kubernetes.io/managed-by=flotilla` only and runs in its own tracked task that
//! forwards events over a channel. The cache itself has one owner, the target, which folds the
//! events in whenever it is used. Our own writes are recorded with the resourceVersion they
//! produced, so their echoes are not mistaken for changes made by someone else.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_common::object::ObjectId;
use futures_util::StreamExt;
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::discovery::Resolved;
use super::{APP_LABEL, MANAGED_SELECTOR};

/// Events buffered between the watch tasks and the cache.
const CHANNEL: usize = 1024;

/// A relisting that started before one of our writes may not contain it; writes younger than
/// this survive a listing that lacks them (the watch then delivers them).
const FRESH_WRITE: Duration = Duration::from_secs(10);

/// A watched resource type: group, version, kind as the desired objects name them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TypeKey {
    /// API group.
    pub group: String,
    /// Version.
    pub version: String,
    /// Kind.
    pub kind: String,
}

impl TypeKey {
    /// The type of `id`.
    pub fn of(id: &ObjectId) -> Self {
        TypeKey {
            group: id.group.clone(),
            version: id.version.clone(),
            kind: id.kind.clone(),
        }
    }

    fn id_of(&self, object: &Value) -> Option<ObjectId> {
        let meta = object.get("metadata")?;
        Some(ObjectId {
            group: self.group.clone(),
            version: self.version.clone(),
            kind: self.kind.clone(),
            namespace: meta
                .get("namespace")
                .and_then(Value::as_str)
                .map(str::to_string),
            name: meta.get("name")?.as_str()?.to_string(),
        })
    }
}

enum Msg {
    Init(TypeKey),
    InitApply(TypeKey, Value),
    InitDone(TypeKey),
    Apply(TypeKey, Value),
    Delete(TypeKey, Value),
    Error(TypeKey, String),
}

/// One live object.
#[derive(Debug, Clone)]
pub struct LiveObject {
    /// The object, without `managedFields`.
    pub value: Arc<Value>,
    /// Its resourceVersion.
    pub rv: String,
}

struct Watch {
    cancel: CancellationToken,
    synced: bool,
    /// The last attempt failed; the watch retries with backoff in the background.
    failing: bool,
    /// Objects listed since `Init`, until `InitDone` swaps them in.
    listing: Option<Vec<Value>>,
}

/// The cache and its watches.
pub struct LiveCache {
    objects: HashMap<ObjectId, LiveObject>,
    watches: HashMap<TypeKey, Watch>,
    /// resourceVersion our own last write of each object produced, and when.
    written: HashMap<ObjectId, (String, Instant)>,
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    /// Someone else changed an app's object since `changed` last returned.
    dirty: bool,
}

/// Parses a resourceVersion for ordering; etcd's are integers, others are treated as newer.
fn rv_number(rv: &str) -> Option<u64> {
    rv.parse().ok()
}

fn rv_of(value: &Value) -> String {
    value
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn has_app(value: &Value) -> bool {
    value
        .pointer("/metadata/labels")
        .and_then(|l| l.get(APP_LABEL))
        .is_some()
}

/// Drops what the cache never reads, to keep it small.
fn trim(mut value: Value) -> Value {
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    value
}

impl LiveCache {
    /// An empty cache; watch tasks stop when `shutdown` is cancelled.
    pub fn new(shutdown: &CancellationToken) -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL);
        LiveCache {
            objects: HashMap::new(),
            watches: HashMap::new(),
            written: HashMap::new(),
            tx,
            rx,
            tracker: TaskTracker::new(),
            cancel: shutdown.child_token(),
            dirty: false,
        }
    }

    /// Starts watching a type unless it is watched already.
    pub fn ensure(&mut self, client: &Client, key: &TypeKey, resolved: &Resolved) {
        if self.watches.contains_key(key) {
            return;
        }
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resolved.resource);
        let cancel = self.cancel.child_token();
        self.tracker
            .spawn(run_watch(api, key.clone(), self.tx.clone(), cancel.clone()));
        debug!(kind = %key.kind, group = %key.group, "watching");
        self.watches.insert(
            key.clone(),
            Watch {
                cancel,
                synced: false,
                failing: false,
                listing: None,
            },
        );
    }

    /// Whether the type's initial listing is in.
    pub fn synced(&self, key: &TypeKey) -> bool {
        self.watches.get(key).is_some_and(|w| w.synced)
    }

    /// Waits (folding events in) until every type in `keys` is synced, or failed to list (the
    /// caller then reads objects one by one), or `timeout` passes.
    pub async fn wait_synced(&mut self, keys: &BTreeSet<TypeKey>, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        self.drain();
        let settled = |w: Option<&Watch>| w.is_none_or(|w| w.synced || w.failing);
        while !keys.iter().all(|k| settled(self.watches.get(k))) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(msg)) => self.handle(msg),
                Ok(None) | Err(_) => return,
            }
        }
    }

    /// The cached object, if its type is synced and it exists.
    pub fn get(&self, id: &ObjectId) -> Option<&LiveObject> {
        self.objects.get(id)
    }

    /// The resourceVersion our last write of `id` produced.
    pub fn written_rv(&self, id: &ObjectId) -> Option<&str> {
        self.written.get(id).map(|(rv, _)| rv.as_str())
    }

    /// Records an object as our own write returned it.
    pub fn record_write(&mut self, id: &ObjectId, value: Value) {
        let rv = rv_of(&value);
        self.written
            .insert(id.clone(), (rv.clone(), Instant::now()));
        self.store(id.clone(), value, rv);
    }

    /// Records that an object was read (not written) as it is now.
    pub fn record_read(&mut self, id: &ObjectId, value: Value) {
        let rv = rv_of(&value);
        self.store(id.clone(), value, rv);
    }

    /// Forgets an object we deleted.
    pub fn remove(&mut self, id: &ObjectId) {
        self.objects.remove(id);
        self.written.remove(id);
    }

    fn store(&mut self, id: ObjectId, value: Value, rv: String) {
        if let Some(existing) = self.objects.get(&id)
            && let (Some(old), Some(new)) = (rv_number(&existing.rv), rv_number(&rv))
            && new < old
        {
            return;
        }
        self.objects.insert(
            id,
            LiveObject {
                value: Arc::new(trim(value)),
                rv,
            },
        );
    }

    /// Folds in every event that has arrived.
    pub fn drain(&mut self) {
        while let Ok(msg) = self.rx.try_recv() {
            self.handle(msg);
        }
    }

    /// Resolves once someone else changed one of the apps' objects.
    pub async fn changed(&mut self) {
        loop {
            self.drain();
            if std::mem::take(&mut self.dirty) {
                return;
            }
            // The cache holds a sender, so the channel never closes.
            if let Some(msg) = self.rx.recv().await {
                self.handle(msg);
            }
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Init(key) => {
                if let Some(w) = self.watches.get_mut(&key) {
                    w.listing = Some(Vec::new());
                }
            }
            Msg::InitApply(key, value) => {
                if let Some(list) = self.watches.get_mut(&key).and_then(|w| w.listing.as_mut()) {
                    list.push(value);
                }
            }
            Msg::InitDone(key) => self.swap_listing(&key),
            Msg::Apply(key, value) => {
                if !self.watches.contains_key(&key) {
                    return;
                }
                let Some(id) = key.id_of(&value) else { return };
                let rv = rv_of(&value);
                let ours = self.written_rv(&id) == Some(rv.as_str());
                // Seen already, or older than what is cached (a late echo of an earlier write).
                let known = self.objects.get(&id).is_some_and(|o| {
                    o.rv == rv
                        || matches!((rv_number(&o.rv), rv_number(&rv)), (Some(old), Some(new)) if new < old)
                });
                if has_app(&value) && !ours && !known {
                    self.dirty = true;
                }
                self.store(id, value, rv);
            }
            Msg::Delete(key, value) => {
                if !self.watches.contains_key(&key) {
                    return;
                }
                let Some(id) = key.id_of(&value) else { return };
                if self.objects.remove(&id).is_some() && has_app(&value) {
                    self.dirty = true;
                }
            }
            Msg::Error(key, error) => {
                if let Some(w) = self.watches.get_mut(&key) {
                    w.failing = true;
                }
                debug!(kind = %key.kind, group = %key.group, "watch interrupted, retrying: {error}");
            }
        }
    }

    /// Replaces a type's objects with a complete listing.
    fn swap_listing(&mut self, key: &TypeKey) {
        let Some(watch) = self.watches.get_mut(key) else {
            return;
        };
        let listing = watch.listing.take().unwrap_or_default();
        let relist = watch.synced;
        watch.synced = true;
        watch.failing = false;
        let mut seen = BTreeSet::new();
        for value in listing {
            let Some(id) = key.id_of(&value) else {
                continue;
            };
            let rv = rv_of(&value);
            let same = self.objects.get(&id).is_some_and(|o| o.rv == rv);
            if relist && !same && has_app(&value) && self.written_rv(&id) != Some(rv.as_str()) {
                self.dirty = true;
            }
            seen.insert(id.clone());
            self.store(id, value, rv);
        }
        let before = self.objects.len();
        let written = &self.written;
        self.objects.retain(|id, o| {
            TypeKey::of(id) != *key
                || seen.contains(id)
                || written
                    .get(id)
                    .is_some_and(|(rv, at)| *rv == o.rv && at.elapsed() < FRESH_WRITE)
        });
        if relist && self.objects.len() != before {
            self.dirty = true;
        }
    }

    /// Stops watching types not in `keep`, forgetting their objects.
    pub fn retain(&mut self, keep: &BTreeSet<TypeKey>) {
        let gone: Vec<TypeKey> = self
            .watches
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(w) = self.watches.remove(&key) {
                w.cancel.cancel();
                debug!(kind = %key.kind, group = %key.group, "stopped watching");
            }
            self.objects.retain(|id, _| TypeKey::of(id) != key);
            self.written.retain(|id, _| TypeKey::of(id) != key);
        }
    }

    /// Stops every watch and waits for the tasks to end.
    pub async fn shutdown(&mut self) {
        self.cancel.cancel();
        self.tracker.close();
        // Watch tasks may be blocked sending; dropping what is queued lets them see the cancel.
        while !self.tracker.is_empty() {
            self.drain();
            if tokio::time::timeout(Duration::from_millis(50), self.tracker.wait())
                .await
                .is_ok()
            {
                break;
            }
        }
    }
}

impl Drop for LiveCache {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn run_watch(
    api: Api<DynamicObject>,
    key: TypeKey,
    tx: mpsc::Sender<Msg>,
    cancel: CancellationToken,
) {
    let config = watcher::Config::default().labels(MANAGED_SELECTOR);
    let stream = watcher::watcher(api, config).default_backoff();
    futures_util::pin_mut!(stream);
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => return,
            next = stream.next() => next,
        };
        let Some(event) = next else { return };
        let value = |o: DynamicObject| serde_json::to_value(o).unwrap_or(Value::Null);
        let msg = match event {
            Ok(Event::Init) => Msg::Init(key.clone()),
            Ok(Event::InitApply(o)) => Msg::InitApply(key.clone(), value(o)),
            Ok(Event::InitDone) => Msg::InitDone(key.clone()),
            Ok(Event::Apply(o)) => Msg::Apply(key.clone(), value(o)),
            Ok(Event::Delete(o)) => Msg::Delete(key.clone(), value(o)),
            Err(e) => Msg::Error(key.clone(), crate::error::error_chain(&e)),
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            sent = tx.send(msg) => if sent.is_err() { return },
        }
    }
}
