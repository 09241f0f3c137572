//! A Kubernetes cluster as a target, through kube-rs.
//!
//! - **Apply** is server-side apply as field manager `flotilla`, with `force` when the app
//!   asks for it. Every object gets the labels `app.kubernetes.io/managed-by: flotilla` and
//!   `flotilla.dev/app: <app>`. A batch is applied in rank order (CRDs, Namespaces, other
//!   cluster-scoped, namespaced); a CRD that changed is waited for until `Established`.
//! - **No write without a change**: an object whose configuration was applied before (same
//!   digest) is compared with the live object first, from the watch cache when it is synced;
//!   it is written only when a field it sets differs (drift). Under `drift: report` drift is
//!   returned instead of written. Correcting drift applies with `force`: the fields were
//!   Flotilla's, and an edit by another client (e.g. `kubectl edit`) moved their ownership.
//! - **Kinds** resolve through discovery (`discovery.rs`); unknown kinds fail their object,
//!   not the batch.
//! - **Watches** (`live.rs`) cover every resource type in the inventory, selected by the
//!   managed-by label; they feed health, drift detection and [`Target::changed`].
//! - **Prune** lists afresh, by the managed-by and app labels, every type it deletes from; any
//!   error aborts it. Deletes carry the listed uid as a precondition, so an object recreated
//!   since the listing is left alone.
//! - **Inventory** is mirrored into ConfigMaps (`inventory.rs`).
//! - **Capabilities** (Kubernetes version, served group-versions and kinds) are read from
//!   discovery for the hub's renders (`capabilities.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use flotilla_common::cluster_state::DriftMode;
use flotilla_common::object::ObjectId;
use flotilla_common::status::AppHealth;
use futures_util::StreamExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use self::discovery::{Discovery, Resolved};
use self::error::{KubeError, call, is_secret};
use self::inventory::InventoryMirror;
use self::live::{LiveCache, TypeKey};
use super::{Applied, ApplyRequest, Change, LiveObject, Target, TargetError};
use crate::drift::differences;
use crate::health::{app_health, object_health};
use crate::inventory::AppInventory;
use crate::plan::apply_rank;

pub mod capabilities;
pub mod discovery;
pub mod error;
pub mod inventory;
pub mod live;

/// The label every object Flotilla applies carries, with value [`MANAGED_BY`].
pub const MANAGED_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_LABEL`].
pub const MANAGED_BY: &str = "flotilla";
/// Label selector for objects Flotilla applied.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=flotilla";
/// The label naming the app an object belongs to.
pub const APP_LABEL: &str = "flotilla.dev/app";

/// Where the cluster's address and credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeSource {
    /// In-cluster service account, else `$KUBECONFIG` or `~/.kube/config`.
    Infer,
    /// This kubeconfig file, its current context.
    Kubeconfig(PathBuf),
}

/// Tunables of the Kubernetes target.
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// Server-side apply field manager.
    pub field_manager: String,
    /// Namespace of the inventory ConfigMaps.
    pub inventory_namespace: String,
    /// Deadline of one API request.
    pub request_timeout: Duration,
    /// How long a CRD may take to become established.
    pub crd_timeout: Duration,
    /// Writes in flight at once.
    pub concurrency: usize,
    /// Where every request to the API server is counted by verb, if anywhere.
    pub api_requests: Option<crate::metrics::ApiRequests>,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            field_manager: "flotilla".into(),
            inventory_namespace: "flotilla-system".into(),
            request_timeout: Duration::from_secs(30),
            crd_timeout: Duration::from_secs(60),
            concurrency: 16,
            api_requests: None,
        }
    }
}

/// Reads and checks a kubeconfig file before anything starts.
pub fn check_kubeconfig(path: &std::path::Path) -> Result<(), String> {
    let config = Kubeconfig::read_from(path).map_err(|e| crate::error::error_chain(&e))?;
    let context = config
        .current_context
        .as_deref()
        .ok_or("it names no current-context")?;
    if !config.contexts.iter().any(|c| c.name == context) {
        return Err(format!("its current-context {context:?} is not defined"));
    }
    Ok(())
}

/// A Kubernetes cluster.
pub struct KubeTarget {
    client: Client,
    options: KubeOptions,
    discovery: Discovery,
    live: LiveCache,
    inventory: InventoryMirror,
}

/// What to do with one request, decided before any write.
enum Decision {
    Done(Applied),
    Write {
        desired: Value,
        resolved: Resolved,
        /// Take fields from other managers: the app asked, or this corrects drift of fields
        /// Flotilla applied before (an edit by another client moved their ownership).
        force: bool,
    },
}

impl KubeTarget {
    /// Builds a client from `source`; nothing is contacted yet.
    pub async fn connect(
        source: &KubeSource,
        options: KubeOptions,
        shutdown: &CancellationToken,
    ) -> Result<Self, TargetError> {
        let fail = |e: String| TargetError {
            op: "connect to",
            object: "the Kubernetes API server".into(),
            transient: false,
            source: e.into(),
        };
        let mut config = match source {
            KubeSource::Infer => Config::infer()
                .await
                .map_err(|e| fail(crate::error::error_chain(&e)))?,
            KubeSource::Kubeconfig(path) => {
                let kubeconfig =
                    Kubeconfig::read_from(path).map_err(|e| fail(crate::error::error_chain(&e)))?;
                Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| fail(crate::error::error_chain(&e)))?
            }
        };
        config.connect_timeout = Some(options.request_timeout.min(Duration::from_secs(10)));
        let builder = kube::client::ClientBuilder::try_from(config)
            .map_err(|e| fail(crate::error::error_chain(&e)))?;
        let client = match options.api_requests.clone() {
            Some(counter) => builder
                .with_layer(&tower::util::MapRequestLayer::new(
                    move |req: http::Request<kube::client::Body>| {
                        let verb = crate::metrics::verb(req.method().as_str(), req.uri().query());
                        counter
                            .get_or_create(&crate::metrics::VerbLabels { verb: verb.into() })
                            .inc();
                        req
                    },
                ))
                .build(),
            None => builder.build(),
        };
        Ok(Self::new(client, options, shutdown))
    }

    /// Uses an existing client.
    pub fn new(client: Client, options: KubeOptions, shutdown: &CancellationToken) -> Self {
        KubeTarget {
            client,
            options,
            discovery: Discovery::default(),
            live: LiveCache::new(shutdown),
            inventory: InventoryMirror::default(),
        }
    }

    /// The client, for tests that inspect the cluster.
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn resolve(&mut self, id: &ObjectId) -> Result<Resolved, KubeError> {
        let resolved = self
            .discovery
            .resolve(&self.client, id, self.options.request_timeout)
            .await?;
        if resolved.namespaced != id.namespace.is_some() {
            return Err(KubeError::Invalid(if resolved.namespaced {
                format!(
                    "kind {} is namespaced but the object has no namespace",
                    id.kind
                )
            } else {
                format!(
                    "kind {} is cluster-scoped but the object names a namespace",
                    id.kind
                )
            }));
        }
        Ok(resolved)
    }

    fn api(&self, id: &ObjectId, resolved: &Resolved) -> Api<DynamicObject> {
        match &id.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resolved.resource),
            None => Api::all_with(self.client.clone(), &resolved.resource),
        }
    }

    /// The live object: from the cache when its type is synced, else read.
    async fn live_object(
        &mut self,
        id: &ObjectId,
        resolved: &Resolved,
    ) -> Result<Option<(Value, String)>, KubeError> {
        if let Some(live) = self.live.get(id) {
            return Ok(Some(((*live.value).clone(), live.rv.clone())));
        }
        if self.live.synced(&TypeKey::of(id)) {
            return Ok(None);
        }
        let api = self.api(id, resolved);
        match call(
            self.options.request_timeout,
            is_secret(id),
            api.get_opt(&id.name),
        )
        .await?
        {
            Some(obj) => {
                let value = serde_json::to_value(obj).unwrap_or(Value::Null);
                self.live.record_read(id, value.clone());
                let rv = value
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                Ok(Some((value, rv)))
            }
            None => Ok(None),
        }
    }

    /// Decides whether a request needs a write.
    async fn decide(&mut self, req: &ApplyRequest<'_>) -> Result<Decision, KubeError> {
        let resolved = self.resolve(req.id).await?;
        let key = TypeKey::of(req.id);
        self.live.ensure(&self.client, &key, &resolved);
        let desired = desired_object(req)?;
        let applied_before = req.previous == Some(req.digest);
        if !applied_before {
            let force = req.force;
            return Ok(Decision::Write {
                desired,
                resolved,
                force,
            });
        }
        let Some((live, rv)) = self.live_object(req.id, &resolved).await? else {
            if req.drift == DriftMode::Report {
                return Ok(Decision::Done(Applied::Drifted(vec![
                    "the object was deleted".into(),
                ])));
            }
            info!(object = %req.id, app = req.app, "correcting drift: the object was deleted");
            return Ok(Decision::Write {
                desired,
                resolved,
                force: true,
            });
        };
        if self.live.written_rv(req.id) == Some(rv.as_str()) {
            return Ok(Decision::Done(Applied::Unchanged));
        }
        let fields = differences(&desired, &live);
        if fields.is_empty() {
            return Ok(Decision::Done(Applied::Unchanged));
        }
        if req.drift == DriftMode::Report {
            return Ok(Decision::Done(Applied::Drifted(fields)));
        }
        info!(object = %req.id, app = req.app, fields = %fields.join(", "), "correcting drift");
        Ok(Decision::Write {
            desired,
            resolved,
            force: true,
        })
    }

    /// Applies the requests of one rank: decisions one by one, writes concurrently.
    async fn apply_rank(
        &mut self,
        batch: &[ApplyRequest<'_>],
    ) -> Vec<Result<Applied, TargetError>> {
        let mut results: Vec<Option<Result<Applied, TargetError>>> =
            Vec::with_capacity(batch.len());
        let mut writes = Vec::new();
        // Deciding needs the live objects: a new watch lists them once, before any write of
        // this batch, so that the listing can never be older than our own writes.
        let mut keys = BTreeSet::new();
        for req in batch {
            let key = TypeKey::of(req.id);
            if !keys.contains(&key)
                && let Ok(resolved) = self.resolve(req.id).await
            {
                self.live.ensure(&self.client, &key, &resolved);
                keys.insert(key);
            }
        }
        self.live
            .wait_synced(&keys, self.options.request_timeout)
            .await;
        for (i, req) in batch.iter().enumerate() {
            match self.decide(req).await {
                Ok(Decision::Done(applied)) => results.push(Some(Ok(applied))),
                Ok(Decision::Write {
                    desired,
                    resolved,
                    force,
                }) => {
                    results.push(None);
                    writes.push((i, desired, resolved, force));
                }
                Err(e) => {
                    let transient = e.transient();
                    results.push(Some(Err(e.into_target("apply", req.id.to_string()))));
                    if transient {
                        break;
                    }
                }
            }
        }
        let field_manager = self.options.field_manager.clone();
        let timeout = self.options.request_timeout;
        let calls = writes.into_iter().map(|(i, desired, resolved, force)| {
            let req = batch[i];
            let api = self.api(req.id, &resolved);
            let mut params = PatchParams::apply(&field_manager);
            params.force = force;
            async move {
                let result = call(
                    timeout,
                    is_secret(req.id),
                    api.patch(&req.id.name, &params, &Patch::Apply(&desired)),
                )
                .await;
                (i, result)
            }
        });
        let done: Vec<(usize, Result<DynamicObject, KubeError>)> =
            futures_util::stream::iter(calls)
                .buffer_unordered(self.options.concurrency.max(1))
                .collect()
                .await;
        let mut crds = Vec::new();
        for (i, result) in done {
            let req = &batch[i];
            results[i] = Some(match result {
                Ok(obj) => {
                    let value = serde_json::to_value(obj).unwrap_or(Value::Null);
                    self.live.record_write(req.id, value.clone());
                    if is_crd(req.id) {
                        crds.push((req.id.clone(), value));
                    }
                    Ok(Applied::Changed)
                }
                Err(e) => {
                    if let KubeError::Api { code: 404, .. } = e {
                        // The resource itself went away (a CRD was removed): rediscover.
                        self.discovery.invalidate_group(&req.id.group);
                    }
                    Err(e.into_target("apply", req.id.to_string()))
                }
            });
        }
        for (id, value) in crds {
            if let Err(e) = self.wait_established(&id, &value).await {
                let i = batch.iter().position(|r| *r.id == id).unwrap_or_default();
                results[i] = Some(Err(e.into_target("apply", id.to_string())));
            }
        }
        let skipped =
            || KubeError::Unavailable("not attempted after an earlier error in the batch".into());
        results
            .into_iter()
            .zip(batch)
            .map(|(r, req)| {
                r.unwrap_or_else(|| Err(skipped().into_target("apply", req.id.to_string())))
            })
            .collect()
    }

    /// Waits until a CRD is established, then forgets what discovery knew of its group.
    async fn wait_established(&mut self, id: &ObjectId, applied: &Value) -> Result<(), KubeError> {
        let group = applied
            .pointer("/spec/group")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let resolved = self.resolve(id).await?;
        let api = self.api(id, &resolved);
        let deadline = tokio::time::Instant::now() + self.options.crd_timeout;
        let mut delay = Duration::from_millis(20);
        let mut current = applied.clone();
        loop {
            if object_health(&current) == crate::health::ObjectHealth::Healthy {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(KubeError::NotReady(format!(
                    "CustomResourceDefinition {} is not established after {:?}",
                    id.name, self.options.crd_timeout
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
            if let Some(obj) =
                call(self.options.request_timeout, false, api.get_opt(&id.name)).await?
            {
                current = serde_json::to_value(obj).unwrap_or(Value::Null);
            }
        }
        self.discovery.invalidate_group(&group);
        debug!(crd = %id.name, "established");
        Ok(())
    }
}

fn is_crd(id: &ObjectId) -> bool {
    id.group == "apiextensions.k8s.io" && id.kind == "CustomResourceDefinition"
}

/// The applied configuration: the object as signed, plus Flotilla's two labels.
fn desired_object(req: &ApplyRequest<'_>) -> Result<Value, KubeError> {
    let mut value: Value = serde_json::from_slice(req.bytes)
        .map_err(|e| KubeError::Invalid(format!("the object is not JSON: {e}")))?;
    let meta = value
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| KubeError::Invalid("the object has no metadata".into()))?;
    let labels = meta
        .entry("labels")
        .or_insert_with(|| Value::Object(Default::default()));
    let labels = labels
        .as_object_mut()
        .ok_or_else(|| KubeError::Invalid("metadata.labels is not a mapping".into()))?;
    labels.insert(MANAGED_LABEL.into(), MANAGED_BY.into());
    labels.insert(APP_LABEL.into(), req.app.into());
    Ok(value)
}

impl Target for KubeTarget {
    async fn apply(&mut self, batch: &[ApplyRequest<'_>]) -> Vec<Result<Applied, TargetError>> {
        self.live.drain();
        let mut results = Vec::with_capacity(batch.len());
        let mut start = 0;
        while start < batch.len() {
            let rank = apply_rank(batch[start].id);
            let end = batch[start..]
                .iter()
                .position(|r| apply_rank(r.id) != rank)
                .map_or(batch.len(), |n| start + n);
            let group = self.apply_rank(&batch[start..end]).await;
            let unavailable = group.iter().any(|r| r.as_ref().is_err_and(|e| e.transient));
            results.extend(group);
            start = end;
            if unavailable {
                // The rest would fail the same way; the pass is retried with backoff.
                for req in &batch[start..] {
                    let e = KubeError::Unavailable("not attempted after an earlier error".into());
                    results.push(Err(e.into_target("apply", req.id.to_string())));
                }
                break;
            }
        }
        results
    }

    async fn delete(&mut self, id: &ObjectId, uid: Option<&str>) -> Result<Change, TargetError> {
        let resolved = match self.resolve(id).await {
            Ok(resolved) => resolved,
            // No such kind any more, so no such object.
            Err(KubeError::UnknownKind { .. }) => return Ok(Change::Unchanged),
            Err(e) => return Err(e.into_target("delete", id.to_string())),
        };
        let api = self.api(id, &resolved);
        let mut params = DeleteParams::background();
        if let Some(uid) = uid {
            params = params.preconditions(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            });
        }
        let result = call(
            self.options.request_timeout,
            is_secret(id),
            api.delete(&id.name, &params),
        )
        .await;
        match result {
            Ok(_) => {
                self.live.remove(id);
                Ok(Change::Changed)
            }
            Err(e) if e.code() == Some(404) => {
                self.live.remove(id);
                Ok(Change::Unchanged)
            }
            // The uid precondition failed: this is another object of the same name, made
            // since the listing; it is not ours to delete.
            Err(e) if uid.is_some() && e.code() == Some(409) => {
                info!(object = %id, "not deleted: recreated since it was listed");
                Ok(Change::Unchanged)
            }
            Err(e) => Err(e.into_target("delete", id.to_string())),
        }
    }

    async fn list_live(
        &mut self,
        app: &str,
        ids: &[ObjectId],
    ) -> Result<BTreeMap<ObjectId, LiveObject>, TargetError> {
        let wanted: BTreeSet<&ObjectId> = ids.iter().collect();
        let types: BTreeMap<TypeKey, &ObjectId> =
            ids.iter().map(|id| (TypeKey::of(id), id)).collect();
        let mut live = BTreeMap::new();
        for (key, example) in types {
            let what = format!("{}/{} objects", example.api_version(), key.kind);
            let resolved = match self.resolve(example).await {
                Ok(resolved) => resolved,
                Err(KubeError::UnknownKind { .. }) => continue,
                Err(KubeError::Invalid(_)) => continue,
                Err(e) => return Err(e.into_target("list", what)),
            };
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resolved.resource);
            let selector = format!("{MANAGED_SELECTOR},{APP_LABEL}={app}");
            let params = ListParams::default().labels(&selector);
            let list = call(self.options.request_timeout, false, api.list(&params))
                .await
                .map_err(|e| e.into_target("list", what.clone()))?;
            for obj in list.items {
                // Checked here as well as by the selector: only what the live labels say is
                // this app's, and Flotilla's, may be deleted.
                let labels = obj.metadata.labels.as_ref();
                let label = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
                if label(MANAGED_LABEL) != Some(MANAGED_BY) || label(APP_LABEL) != Some(app) {
                    continue;
                }
                let id = ObjectId {
                    group: key.group.clone(),
                    version: key.version.clone(),
                    kind: key.kind.clone(),
                    namespace: obj.metadata.namespace.clone(),
                    name: obj.metadata.name.clone().unwrap_or_default(),
                };
                if wanted.contains(&id) {
                    live.insert(
                        id,
                        LiveObject {
                            uid: obj.metadata.uid.clone(),
                        },
                    );
                }
            }
        }
        Ok(live)
    }

    async fn health(&mut self, ids: &[ObjectId]) -> (AppHealth, String) {
        self.live.drain();
        let mut healths = Vec::with_capacity(ids.len());
        let mut unknown: HashMap<&ObjectId, String> = HashMap::new();
        for id in ids {
            let resolved = match self.resolve(id).await {
                Ok(resolved) => resolved,
                Err(e) => {
                    unknown.insert(id, e.to_string());
                    continue;
                }
            };
            self.live.ensure(&self.client, &TypeKey::of(id), &resolved);
            match self.live_object(id, &resolved).await {
                Ok(live) => healths.push((id, live.map(|(v, _)| object_health(&v)))),
                Err(e) => {
                    unknown.insert(id, e.to_string());
                }
            }
        }
        if let Some((id, why)) = unknown.into_iter().next() {
            return (AppHealth::Unknown, format!("cannot observe {id}: {why}"));
        }
        app_health(healths)
    }

    async fn load_inventory(&mut self) -> Result<BTreeMap<String, AppInventory>, TargetError> {
        self.inventory
            .load(&self.client, &self.options)
            .await
            .map_err(|e| e.into_target("read", "the inventory ConfigMaps".into()))
    }

    async fn save_inventory(
        &mut self,
        inventory: &BTreeMap<String, AppInventory>,
    ) -> Result<(), TargetError> {
        // Watch exactly the types something is applied of.
        let types: BTreeSet<TypeKey> = inventory
            .values()
            .flat_map(|inv| inv.objects.iter().map(|o| TypeKey::of(&o.id)))
            .collect();
        self.live.retain(&types);
        self.inventory
            .save(&self.client, &self.options, inventory)
            .await
            .map_err(|e| e.into_target("write", "the inventory ConfigMaps".into()))
    }

    async fn changed(&mut self) {
        self.live.changed().await
    }

    async fn shutdown(&mut self) {
        self.live.shutdown().await
    }
}
