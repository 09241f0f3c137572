//! The in-memory object store: objects by resource, the global resourceVersion, the event log
//! watches read from, and the writes every verb ends in.
//!
//! The store sits behind one `std::sync::Mutex` that is never held across an `.await`; every
//! operation is a short synchronous critical section (see `lib.rs`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::error::ApiError;
use crate::fields::Part;
use crate::managed::{self, Writer};
use crate::resource::{Registry, ResourceType};
use crate::selector::{FieldSelector, LabelSelector};
use crate::workload::WorkloadModes;

/// How many events the log keeps; watches from older resourceVersions get `410 Expired`.
const MAX_EVENTS: usize = 100_000;

/// How long a terminating namespace keeps its contents before the simulated namespace controller
/// deletes them; like the real controller, this is not instantaneous, so clients deleting a
/// namespace and then its objects (`kubectl delete -f`) find them still there.
pub const NAMESPACE_FINALIZE_DELAY: std::time::Duration = std::time::Duration::from_millis(300);

/// Objects of one resource (all versions), by `(namespace, name)`; namespace is "" when cluster-scoped.
type Objects = BTreeMap<(String, String), Value>;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

impl EventKind {
    /// The watch event `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One entry of the event log.
#[derive(Debug, Clone)]
pub struct Event {
    /// resourceVersion of the change.
    pub rv: u64,
    /// `(group, plural)` of the object.
    pub key: (String, String),
    /// Namespace of the object ("" for cluster-scoped).
    pub namespace: String,
    /// What happened.
    pub kind: EventKind,
    /// The object after the change (for deletes: as deleted).
    pub object: Arc<Value>,
    /// The object before the change, for modifications.
    pub prev: Option<Arc<Value>>,
}

/// Who writes and how: the field manager, dry run, the time.
#[derive(Debug, Clone)]
pub struct WriteCtx {
    /// Field manager.
    pub manager: String,
    /// `dryRun=All`: compute the result, store nothing.
    pub dry_run: bool,
    /// Current time, RFC 3339.
    pub now: String,
}

impl WriteCtx {
    /// A context for the given manager at the current time.
    pub fn new(manager: impl Into<String>) -> Self {
        Self {
            manager: manager.into(),
            dry_run: false,
            now: now(),
        }
    }
}

/// The current time as Kubernetes prints it.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// A random RFC 4122 version 4 UUID.
pub fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        8 | (b[8] & 3),
        &hex[17..20],
        &hex[20..32]
    )
}

/// Which objects a list or watch wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Namespace, or all namespaces.
    pub namespace: Option<String>,
    /// Label selector.
    pub labels: LabelSelector,
    /// Field selector.
    pub fields: FieldSelector,
}

impl Filter {
    /// Whether an object passes.
    pub fn matches(&self, namespace: &str, obj: &Value) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
            && self.labels.matches(obj)
            && self.fields.matches(obj)
    }
}

/// The state of the simulated cluster.
pub struct Store {
    pub(crate) rv: u64,
    /// Served resource types.
    pub registry: Registry,
    pub(crate) objects: HashMap<(String, String), Objects>,
    events: VecDeque<Event>,
    oldest_rv: u64,
    notify: watch::Sender<u64>,
    /// Workload behaviour knobs.
    pub workload: WorkloadModes,
    /// Requests served, by verb.
    pub counters: BTreeMap<String, u64>,
    pub(crate) terminating: HashMap<String, std::time::Instant>,
}

pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> &'a str {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// `metadata` of an object as a mutable map, created if missing.
pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

/// The object without metadata and status: what `generation` tracks.
fn spec_part(obj: &Value) -> Map<String, Value> {
    let mut m = obj.as_object().cloned().unwrap_or_default();
    for k in ["metadata", "status", "apiVersion", "kind"] {
        m.remove(k);
    }
    m
}

impl Store {
    /// A store serving the given types, with the standard namespaces.
    pub fn new(registry: Registry, notify: watch::Sender<u64>) -> Self {
        let mut store = Self {
            rv: 1,
            registry,
            objects: HashMap::new(),
            events: VecDeque::new(),
            oldest_rv: 1,
            notify,
            workload: WorkloadModes::default(),
            counters: BTreeMap::new(),
            terminating: HashMap::new(),
        };
        let ns_type = store
            .registry
            .by_kind("v1", "Namespace")
            .expect("Namespace is built in");
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            store
                .create(&ns_type, None, obj, &WriteCtx::new("kube-apiserver"))
                .expect("standard namespace");
        }
        store
    }

    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// The oldest resourceVersion a watch may start from.
    pub fn oldest_watchable(&self) -> u64 {
        self.oldest_rv
    }

    /// Events after `rv` for one resource.
    pub fn events_since(&self, key: &(String, String), rv: u64) -> Vec<Event> {
        let start = self.events.partition_point(|e| e.rv <= rv);
        self.events
            .range(start..)
            .filter(|e| &e.key == key)
            .cloned()
            .collect()
    }

    /// An object as served at `rt`'s version.
    pub fn present(rt: &ResourceType, obj: &Value) -> Value {
        let mut out = obj.clone();
        out["apiVersion"] = json!(rt.api_version());
        out["kind"] = json!(rt.kind);
        out
    }

    pub(crate) fn raw(&self, rt: &ResourceType, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&rt.storage_key())?
            .get(&(ns.to_string(), name.to_string()))
    }

    /// One object.
    pub fn get(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<Value, ApiError> {
        self.raw(rt, ns, name)
            .map(|o| Self::present(rt, o))
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))
    }

    /// Objects passing a filter, and the resourceVersion of the list.
    pub fn list(&self, rt: &ResourceType, filter: &Filter) -> (Vec<Value>, u64) {
        let items = self
            .objects
            .get(&rt.storage_key())
            .map(|objs| {
                objs.iter()
                    .filter(|((ns, _), o)| filter.matches(ns, o))
                    .map(|(_, o)| Self::present(rt, o))
                    .collect()
            })
            .unwrap_or_default();
        (items, self.rv)
    }

    pub(crate) fn namespace_state(&self, ns: &str) -> Option<bool> {
        let key = (String::new(), "namespaces".to_string());
        let obj = self
            .objects
            .get(&key)?
            .get(&(String::new(), ns.to_string()))?;
        Some(obj.pointer("/metadata/deletionTimestamp").is_some())
    }

    /// Creates an object (POST).
    pub fn create(
        &mut self,
        rt: &Arc<ResourceType>,
        ns: Option<&str>,
        mut obj: Value,
        ctx: &WriteCtx,
    ) -> Result<Value, ApiError> {
        check_type(rt, &obj)?;
        let ns = self.check_namespace(rt, ns, &obj)?;
        let meta = meta_mut(&mut obj);
        if meta_str_map(meta, "name").is_empty() {
            let prefix = meta_str_map(meta, "generateName").to_string();
            if prefix.is_empty() {
                return Err(ApiError::invalid(
                    &rt.kind,
                    "",
                    "metadata.name",
                    "Required value: name or generateName is required",
                ));
            }
            let suffix: String = (0..5)
                .map(|_| (b'a' + rand::random::<u8>() % 26) as char)
                .collect();
            meta.insert("name".into(), json!(format!("{prefix}{suffix}")));
        }
        let name = meta_str_map(meta, "name").to_string();
        crate::validate::name(rt, &name, &obj)?;
        if self.raw(rt, &ns, &name).is_some() {
            return Err(ApiError::already_exists(&rt.group, &rt.plural, &name));
        }
        let meta = meta_mut(&mut obj);
        for k in [
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "managedFields",
            "selfLink",
        ] {
            meta.remove(k);
        }
        if rt.namespaced {
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), json!(new_uid()));
        meta.insert("creationTimestamp".into(), json!(ctx.now));
        if rt.has_status
            && let Some(m) = obj.as_object_mut()
        {
            m.remove("status");
        }
        self.defaults(rt, &mut obj);
        let writer = Writer {
            manager: &ctx.manager,
            api_version: &rt.api_version(),
            subresource: None,
            part: if rt.has_status {
                Part::Main
            } else {
                Part::Whole
            },
            now: &ctx.now,
        };
        managed::record_update(None, &mut obj, &writer);
        Ok(self.commit(rt, None, obj, ctx.dry_run))
    }

    /// Values the real API server fills in on create.
    pub(crate) fn defaults(&self, rt: &ResourceType, obj: &mut Value) {
        if rt.group.is_empty() && rt.kind == "Namespace" {
            let name = meta_str(obj, "name").to_string();
            let meta = meta_mut(obj);
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            labels["kubernetes.io/metadata.name"] = json!(name);
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
            obj["status"] = json!({"phase": "Active"});
        }
    }

    /// The namespace an object of `rt` goes into, checking it exists and is not terminating.
    pub fn check_namespace(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        obj: &Value,
    ) -> Result<String, ApiError> {
        if !rt.namespaced {
            return Ok(String::new());
        }
        let url_ns = ns.unwrap_or_default();
        let body_ns = meta_str(obj, "namespace");
        if !body_ns.is_empty() && body_ns != url_ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        match self.namespace_state(url_ns) {
            None => Err(ApiError::not_found("", "namespaces", url_ns)),
            Some(true) => Err(ApiError::forbidden(format!(
                "{} \"{}\" is forbidden: unable to create new content in namespace {url_ns} because it is being terminated",
                rt.plural,
                meta_str(obj, "name")
            ))),
            Some(false) => Ok(url_ns.to_string()),
        }
    }

    /// Replaces an object (PUT, and the end of every non-apply patch).
    pub fn update(
        &mut self,
        rt: &Arc<ResourceType>,
        ns: &str,
        name: &str,
        body: Value,
        ctx: &WriteCtx,
        status: bool,
    ) -> Result<Value, ApiError> {
        check_type(rt, &body)?;
        let existing = self
            .raw(rt, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        let body_name = meta_str(&body, "name");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let body_rv = meta_str(&body, "resourceVersion");
        if !body_rv.is_empty() && body_rv != meta_str(&existing, "resourceVersion") {
            return Err(ApiError::stale(&rt.group, &rt.plural, name));
        }
        let part = if status {
            Part::Status
        } else if rt.has_status {
            Part::Main
        } else {
            Part::Whole
        };
        let mut new = if status {
            let mut new = existing.clone();
            new["status"] = body.get("status").cloned().unwrap_or(Value::Null);
            if new["status"].is_null()
                && let Some(m) = new.as_object_mut()
            {
                m.remove("status");
            }
            new
        } else {
            let mut new = body;
            let old_meta = existing["metadata"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let meta = meta_mut(&mut new);
            let provided = meta
                .get("managedFields")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty());
            let keep: &[&str] = if provided { &[] } else { &["managedFields"] };
            for k in [
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "resourceVersion",
                "name",
                "namespace",
            ]
            .iter()
            .chain(keep)
            {
                match old_meta.get(*k) {
                    Some(v) => meta.insert(k.to_string(), v.clone()),
                    None => meta.remove(*k),
                };
            }
            if rt.has_status
                && let Some(m) = new.as_object_mut()
            {
                match existing.get("status") {
                    Some(s) => m.insert("status".into(), s.clone()),
                    None => m.remove("status"),
                };
            }
            new
        };
        let writer = Writer {
            manager: &ctx.manager,
            api_version: &rt.api_version(),
            subresource: status.then_some("status"),
            part,
            now: &ctx.now,
        };
        managed::record_update(Some(&existing), &mut new, &writer);
        Ok(self.commit(rt, Some(existing), new, ctx.dry_run))
    }

    /// Stores a new version of an object: generation, resourceVersion, event, controllers.
    /// A write that changes nothing returns the stored object untouched.
    pub fn commit(
        &mut self,
        rt: &Arc<ResourceType>,
        old: Option<Value>,
        mut new: Value,
        dry_run: bool,
    ) -> Value {
        if let Some(old) = old
            .as_ref()
            .filter(|_| rt.group.is_empty() && rt.kind == "Service")
        {
            // Allocated values survive updates that leave them out, as upstream.
            for field in ["clusterIP", "clusterIPs"] {
                if let Some(v) = old.pointer(&format!("/spec/{field}"))
                    && new.pointer(&format!("/spec/{field}")).is_none()
                    && new.get("spec").is_some_and(Value::is_object)
                {
                    new["spec"][field] = v.clone();
                }
            }
        }
        crate::defaults::apply(rt, &mut new);
        let generation = match &old {
            None => 1,
            Some(old) => {
                let g = old
                    .pointer("/metadata/generation")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                if spec_part(old) != spec_part(&new) {
                    g + 1
                } else {
                    g
                }
            }
        };
        meta_mut(&mut new).insert("generation".into(), json!(generation));
        if let Some(old) = &old {
            let mut cmp = new.clone();
            meta_mut(&mut cmp).insert(
                "resourceVersion".into(),
                old["metadata"]["resourceVersion"].clone(),
            );
            cmp["apiVersion"] = old["apiVersion"].clone();
            if &cmp == old {
                return Self::present(rt, old);
            }
        }
        if dry_run {
            return Self::present(rt, &new);
        }
        let ns = meta_str(&new, "namespace").to_string();
        let name = meta_str(&new, "name").to_string();
        let finalizers_empty = new
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        if new.pointer("/metadata/deletionTimestamp").is_some()
            && finalizers_empty
            && rt.kind != "Namespace"
        {
            self.remove(rt, &ns, &name, Some(new.clone()));
            return Self::present(rt, &new);
        }
        self.rv += 1;
        meta_mut(&mut new).insert("resourceVersion".into(), json!(self.rv.to_string()));
        let key = rt.storage_key();
        self.objects
            .entry(key.clone())
            .or_default()
            .insert((ns.clone(), name), new.clone());
        let kind = if old.is_some() {
            EventKind::Modified
        } else {
            EventKind::Added
        };
        self.push_event(Event {
            rv: self.rv,
            key,
            namespace: ns,
            kind,
            object: Arc::new(new.clone()),
            prev: old.map(Arc::new),
        });
        self.react(rt, &new);
        Self::present(rt, &new)
    }

    pub(crate) fn push_event(&mut self, event: Event) {
        self.events.push_back(event);
        while self.events.len() > MAX_EVENTS {
            if let Some(e) = self.events.pop_front() {
                self.oldest_rv = e.rv;
            }
        }
        self.notify.send_replace(self.rv);
    }

    /// Runs the simulated controllers on an object that just changed.
    fn react(&mut self, rt: &Arc<ResourceType>, obj: &Value) {
        if rt.group == "apiextensions.k8s.io" && rt.kind == "CustomResourceDefinition" {
            crate::crd::reconcile(self, rt, obj);
        }
        if rt.group.is_empty()
            && rt.kind == "Namespace"
            && obj.pointer("/metadata/deletionTimestamp").is_some()
        {
            self.finish_namespace(meta_str(obj, "name"));
        }
        crate::workload::reconcile(self, rt, obj);
    }

    /// A served type for a storage key (any version).
    pub fn type_for_key(&self, key: &(String, String)) -> Option<Arc<ResourceType>> {
        self.registry
            .all()
            .iter()
            .find(|t| &t.storage_key() == key)
            .cloned()
    }

    /// Raw stored objects of a resource, for controllers.
    pub fn objects_of(&self, key: &(String, String)) -> Vec<Value> {
        self.objects
            .get(key)
            .map(|o| o.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Counts one request of a verb.
    pub fn count(&mut self, verb: &str) {
        *self.counters.entry(verb.to_string()).or_default() += 1;
    }
}

fn meta_str_map<'a>(meta: &'a Map<String, Value>, field: &str) -> &'a str {
    meta.get(field).and_then(Value::as_str).unwrap_or_default()
}

/// Checks a body's apiVersion and kind against the resource it was sent to.
pub fn check_type(rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the request body is not a JSON object",
        ));
    }
    let kind = obj.get("kind").and_then(Value::as_str).unwrap_or(&rt.kind);
    let api_version = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    if kind != rt.kind || (!api_version.is_empty() && group != rt.group) {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({api_version}) does not match the expected API version ({})",
            rt.api_version()
        )));
    }
    Ok(())
}
