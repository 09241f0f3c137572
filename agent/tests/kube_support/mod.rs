//! What the Kubernetes target tests share: a cluster (the simulator, or a real one when
//! `FLOTILLA_TEST_KUBECONFIG` names its kubeconfig), a per-test namespace, a client whose
//! requests can be made to fail and are counted by verb, a store holding signed states, and
//! waiting on conditions with deadlines.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use flotilla_agent::apply::{ApplyOutcome, ApplySettings, apply_held};
use flotilla_agent::fixtures::{self, signed};
use flotilla_agent::store::{HeldState, Store};
use flotilla_agent::target::kube::{KubeOptions, KubeTarget};
use flotilla_common::cluster_state::{AppState, ObjectEntry};
use flotilla_common::status::AppStatus;
use flotilla_kubesim::KubeSim;
use http::{Method, Request, Response};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::client::{Body, ClientBuilder};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Default deadline for a condition.
pub const DEADLINE: Duration = Duration::from_secs(30);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which requests fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Fault {
    /// None.
    #[default]
    None,
    /// Every request: the API server is unreachable.
    Down,
    /// Every list (GET of a collection, not a watch).
    Lists,
}

/// Request counts by verb and the fault in force, shared with the client's request layer.
#[derive(Clone, Default)]
pub struct Wire {
    state: Arc<Mutex<(Fault, BTreeMap<String, u64>)>>,
}

impl Wire {
    /// Sets the fault in force.
    pub fn set(&self, fault: Fault) {
        self.state.lock().unwrap().0 = fault;
    }

    /// Requests seen of one verb.
    pub fn count(&self, verb: &str) -> u64 {
        self.state.lock().unwrap().1.get(verb).copied().unwrap_or(0)
    }

    /// Write requests seen (create, update, patch, delete).
    pub fn writes(&self) -> u64 {
        ["create", "update", "patch", "delete"]
            .iter()
            .map(|v| self.count(v))
            .sum()
    }

    /// Every request seen.
    pub fn total(&self) -> u64 {
        self.state.lock().unwrap().1.values().sum()
    }

    /// Zeroes the counts.
    pub fn reset(&self) {
        self.state.lock().unwrap().1.clear();
    }
}

/// The verb of a request, as the API server's audit log names it.
fn verb(method: &Method, uri: &http::Uri) -> &'static str {
    let query = uri.query().unwrap_or_default();
    let watch = query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1");
    match *method {
        Method::GET if watch => "watch",
        // Collections are what list requests ask for with a selector or a limit.
        Method::GET if query.contains("labelSelector") || query.contains("limit=") => "list",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "other",
    }
}

#[derive(Clone)]
struct WireService<S> {
    inner: S,
    wire: Wire,
}

impl<S, R> tower::Service<Request<Body>> for WireService<S>
where
    S: tower::Service<Request<Body>, Response = Response<R>, Error = BoxError>,
    S::Future: Send + 'static,
    R: 'static,
{
    type Response = Response<R>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<R>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let verb = verb(req.method(), req.uri());
        let fault = {
            let mut state = self.wire.state.lock().unwrap();
            *state.1.entry(verb.to_string()).or_default() += 1;
            state.0
        };
        let fail = match fault {
            Fault::None => false,
            Fault::Down => true,
            Fault::Lists => verb == "list",
        };
        if fail {
            return Box::pin(async move {
                Err::<Response<R>, BoxError>(format!("injected fault: {verb} refused").into())
            });
        }
        Box::pin(self.inner.call(req))
    }
}

struct WireLayer(Wire);

impl<S> tower::Layer<S> for WireLayer {
    type Service = WireService<S>;
    fn layer(&self, inner: S) -> WireService<S> {
        WireService {
            inner,
            wire: self.0.clone(),
        }
    }
}

/// A cluster for one test.
pub struct Cluster {
    sim: Option<KubeSim>,
    kubeconfig: std::path::PathBuf,
    /// The test's own client (assertions, changes behind the agent's back).
    pub client: Client,
    /// A namespace of this test's own, created.
    pub namespace: String,
    /// Where this test's agents keep their inventory.
    pub inventory_namespace: String,
    /// A suffix unique to this test run, for cluster-scoped names.
    pub unique: String,
    dir: tempfile::TempDir,
}

async fn config_from(path: &std::path::Path) -> Config {
    let kubeconfig = Kubeconfig::read_from(path).unwrap();
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap()
}

impl Cluster {
    /// The simulator, or the real cluster `FLOTILLA_TEST_KUBECONFIG` names.
    pub async fn start(test: &str) -> Cluster {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().unwrap();
        let (sim, kubeconfig) = match std::env::var_os("FLOTILLA_TEST_KUBECONFIG") {
            Some(path) => (None, std::path::PathBuf::from(path)),
            None => {
                let sim = KubeSim::start(&dir.path().join("sim")).unwrap();
                let path = sim.kubeconfig_path().to_path_buf();
                (Some(sim), path)
            }
        };
        let client = Client::try_from(config_from(&kubeconfig).await).unwrap();
        let unique = format!("{:08x}", rand::random::<u32>());
        let namespace = format!("t-{test}-{unique}");
        let cluster = Cluster {
            sim,
            kubeconfig,
            client,
            inventory_namespace: format!("{namespace}-inv"),
            namespace,
            unique,
            dir,
        };
        cluster
            .apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": cluster.namespace}}))
            .await;
        cluster
    }

    /// The simulator, when the test runs on it.
    pub fn sim(&self) -> Option<&KubeSim> {
        self.sim.as_ref()
    }

    /// A client for an agent, counting (and failing, on demand) its requests.
    pub async fn agent_client(&self) -> (Client, Wire) {
        let wire = Wire::default();
        let config = config_from(&self.kubeconfig).await;
        let client = ClientBuilder::try_from(config)
            .unwrap()
            .with_layer(&WireLayer(wire.clone()))
            .build();
        (client, wire)
    }

    /// Options for an agent of this test.
    pub fn options(&self) -> KubeOptions {
        KubeOptions {
            inventory_namespace: self.inventory_namespace.clone(),
            request_timeout: Duration::from_secs(5),
            crd_timeout: Duration::from_secs(20),
            ..KubeOptions::default()
        }
    }

    /// A Kubernetes target for an agent of this test, with its request counter.
    pub async fn target(&self, shutdown: &CancellationToken) -> (KubeTarget, Wire) {
        let (client, wire) = self.agent_client().await;
        (KubeTarget::new(client, self.options(), shutdown), wire)
    }

    /// Write requests the API server received, when the test runs on the simulator.
    pub fn server_writes(&self) -> Option<u64> {
        self.sim.as_ref().map(|s| s.request_counts().writes())
    }

    fn api(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Api<DynamicObject> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &ar),
            None => Api::all_with(self.client.clone(), &ar),
        }
    }

    /// Server-side applies `object` as field manager `test`.
    pub async fn apply(&self, object: &Value) {
        self.apply_as("test", object, true).await.unwrap();
    }

    /// Server-side applies `object` as `manager`.
    pub async fn apply_as(
        &self,
        manager: &str,
        object: &Value,
        force: bool,
    ) -> Result<(), kube::Error> {
        let api = self.api(
            object["apiVersion"].as_str().unwrap(),
            object["kind"].as_str().unwrap(),
            object["metadata"]["namespace"].as_str(),
        );
        let mut params = PatchParams::apply(manager);
        params.force = force;
        api.patch(
            object["metadata"]["name"].as_str().unwrap(),
            &params,
            &Patch::Apply(object),
        )
        .await
        .map(drop)
    }

    /// Merge-patches an object as field manager `manager`: a change behind the agent's back.
    pub async fn patch_as(
        &self,
        manager: &str,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
        patch: &Value,
    ) {
        let api = self.api(api_version, kind, ns);
        let params = PatchParams {
            field_manager: Some(manager.into()),
            ..Default::default()
        };
        api.patch(name, &params, &Patch::Merge(patch))
            .await
            .unwrap();
    }

    /// One object, if it exists.
    pub async fn get(
        &self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let api = self.api(api_version, kind, ns);
        api.get_opt(name)
            .await
            .unwrap()
            .map(|o| serde_json::to_value(o).unwrap())
    }

    /// Sets how simulated workloads behave; `false` on a real cluster (the test then skips
    /// what needs the knob).
    pub fn workload_mode(&self, mode: flotilla_kubesim::WorkloadMode) -> bool {
        match &self.sim {
            Some(sim) => {
                sim.set_workload_mode(mode);
                true
            }
            None => false,
        }
    }

    /// Deletes what the test made: its namespaces and `cluster_scoped` objects.
    pub async fn cleanup(self, cluster_scoped: &[(&str, &str, &str)]) {
        for (api_version, kind, name) in cluster_scoped {
            let _ = self
                .api(api_version, kind, None)
                .delete(name, &DeleteParams::default())
                .await;
        }
        for ns in [&self.namespace, &self.inventory_namespace] {
            let _ = self
                .api("v1", "Namespace", None)
                .delete(ns, &DeleteParams::default())
                .await;
        }
        if let Some(sim) = self.sim {
            sim.shutdown().await;
        }
    }

    /// A directory for this test's agent stores.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// An agent store in `dir`.
pub fn store(dir: &std::path::Path, name: &str) -> Store {
    Store::open(&dir.join(name).join("agent.redb"), 100).unwrap()
}

/// Commits the next version (chained to the held one) with these apps and objects.
pub fn commit(store: &Store, apps: Vec<AppState>, objects: &[&(ObjectEntry, Vec<u8>)]) -> u64 {
    let held = store.held().unwrap();
    let version = held.as_ref().map_or(1, |h| h.held.version + 1);
    let signed = signed(version, held.map(|h| h.held.digest), apps);
    let state = signed.decode_unverified().unwrap();
    store
        .commit_state(&HeldState::new(signed, state), &fixtures::blobs(objects))
        .unwrap();
    version
}

/// The default deletion budget.
pub const BUDGET: ApplySettings = ApplySettings {
    deletion_budget: 50,
    deletion_window: Duration::ZERO,
    override_budget: false,
};

/// One apply pass.
pub async fn pass(store: &Store, target: &mut KubeTarget, settings: ApplySettings) -> ApplyOutcome {
    apply_held(
        store,
        target,
        settings,
        fixtures::NOW,
        &CancellationToken::new(),
    )
    .await
    .unwrap()
    .unwrap()
}

/// `app phase message` per app.
pub fn phases(apps: &[AppStatus]) -> Vec<String> {
    apps.iter()
        .map(|a| {
            format!("{} {} {}", a.app, a.phase.as_str(), a.message)
                .trim_end()
                .to_string()
        })
        .collect()
}

/// Polls `check` every 20 ms until it returns `Some`, panicking after `deadline`.
pub async fn until<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let stop = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= stop {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An object as JSON, its entry and bytes.
pub fn object(value: Value) -> (ObjectEntry, Vec<u8>) {
    fixtures::object(value)
}

/// A ConfigMap in `ns`.
pub fn config_map(ns: &str, name: &str, value: &str) -> (ObjectEntry, Vec<u8>) {
    fixtures::config_map_in(ns, name, value)
}
