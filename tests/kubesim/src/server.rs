//! The running simulator: the shared state, the TLS accept loop, and the [`KubeSim`] handle with
//! its knobs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::builtin::builtin_resources;
use crate::error::{ApiError, StartError};
use crate::knobs::RequestCounts;
use crate::patch::{self, PatchType};
use crate::resource::Registry;
use crate::store::{Filter, Store, WriteCtx};
use crate::workload::{self, ObjectRef, WorkloadMode};
use crate::{kubeconfig, pki};

/// How long shutdown waits for open connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// State shared by the connection tasks.
pub struct Shared {
    store: Mutex<Store>,
    /// Bearer token clients must present.
    pub token: String,
    /// Cancelled at shutdown.
    pub cancel: CancellationToken,
    /// Every task the server spawns.
    pub tracker: TaskTracker,
    /// Latest resourceVersion, for watches to wait on.
    pub rv: watch::Receiver<u64>,
    /// The listening address.
    pub addr: SocketAddr,
}

impl Shared {
    /// Locks the store (never held across an await).
    pub fn lock(&self) -> MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running Kubernetes API simulator.
pub struct KubeSim {
    shared: Arc<Shared>,
    kubeconfig: PathBuf,
    url: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl KubeSim {
    /// Starts a simulator on `127.0.0.1` with a random port and writes `dir/kubeconfig`.
    /// Uses the current Tokio runtime, or a private one when called outside a runtime.
    pub fn start(dir: &Path) -> Result<Self, StartError> {
        Self::start_on(dir, "127.0.0.1:0")
    }

    /// Starts a simulator listening on `listen` and writes `dir/kubeconfig`.
    pub fn start_on(dir: &Path, listen: &str) -> Result<Self, StartError> {
        let bind_err = |source| StartError::Bind {
            addr: listen.to_string(),
            source,
        };
        let std_listener = std::net::TcpListener::bind(listen).map_err(bind_err)?;
        std_listener.set_nonblocking(true).map_err(bind_err)?;
        let addr = std_listener.local_addr().map_err(bind_err)?;
        let pki = pki::generate()?;
        let token =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let url = format!("https://{addr}");
        std::fs::create_dir_all(dir).map_err(|source| StartError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig::render(&url, &pki.ca_pem, &token)).map_err(
            |source| StartError::Write {
                path: kubeconfig.clone(),
                source,
            },
        )?;

        let (rv_tx, rv_rx) = watch::channel(0);
        let store = Store::new(Registry::new(builtin_resources()), rv_tx);
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            token,
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            rv: rv_rx,
            addr,
        });
        let runtime = match tokio::runtime::Handle::try_current() {
            Ok(_) => None,
            Err(_) => Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("kubesim")
                    .enable_all()
                    .build()
                    .map_err(bind_err)?,
            ),
        };
        let _guard = runtime.as_ref().map(|rt| rt.enter());
        let listener = TcpListener::from_std(std_listener).map_err(bind_err)?;
        shared.tracker.spawn(accept_loop(
            listener,
            TlsAcceptor::from(pki.tls),
            shared.clone(),
        ));
        shared.tracker.spawn(namespace_controller(shared.clone()));
        tracing::info!(%url, kubeconfig = %kubeconfig.display(), "kubesim listening");
        Ok(Self {
            shared,
            kubeconfig,
            url,
            runtime,
        })
    }

    /// Path of the kubeconfig it wrote.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The bearer token the kubeconfig carries.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// Stops accepting, ends watches and waits (briefly) for connections to close.
    pub async fn shutdown(mut self) {
        self.shared.cancel.cancel();
        self.shared.tracker.close();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(SHUTDOWN_GRACE);
            return;
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, self.shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("kubesim connections still open after shutdown grace period");
        }
    }

    /// Requests served so far, by verb.
    pub fn request_counts(&self) -> RequestCounts {
        RequestCounts(self.shared.lock().counters.clone())
    }

    /// Zeroes the request counters.
    pub fn reset_request_counts(&self) {
        self.shared.lock().counters.clear();
    }

    /// Sets how every workload behaves (clearing per-object modes).
    pub fn set_workload_mode(&self, mode: WorkloadMode) {
        workload::set_mode(&mut self.shared.lock(), None, mode);
    }

    /// Sets how one workload object behaves.
    pub fn set_workload_mode_for(&self, target: ObjectRef, mode: WorkloadMode) {
        workload::set_mode(&mut self.shared.lock(), Some(target), mode);
    }

    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().resource_version()
    }

    /// One object by apiVersion, kind, namespace ("" for cluster-scoped) and name.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let store = self.shared.lock();
        let rt = store.registry.by_kind(api_version, kind)?;
        store.get(&rt, namespace, name).ok()
    }

    /// Every object of a kind, in all namespaces.
    pub fn list(&self, api_version: &str, kind: &str) -> Vec<Value> {
        let store = self.shared.lock();
        store
            .registry
            .by_kind(api_version, kind)
            .map(|rt| store.list(&rt, &Filter::default()).0)
            .unwrap_or_default()
    }

    /// Changes an object as field manager `manager` with a JSON merge patch: drift injection.
    /// (Out of process, a PATCH with `?fieldManager=` does the same.)
    pub fn patch_as(
        &self,
        manager: &str,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        merge_patch: &Value,
    ) -> Result<Value, ApiError> {
        let mut store = self.shared.lock();
        let rt = store
            .registry
            .by_kind(api_version, kind)
            .ok_or_else(ApiError::no_route)?;
        let existing = store.get(&rt, namespace, name)?;
        let patched = patch::apply_patch(
            &existing,
            PatchType::Merge,
            merge_patch.to_string().as_bytes(),
        )?;
        store.update(
            &rt,
            namespace,
            name,
            patched,
            &WriteCtx::new(manager),
            false,
        )
    }

    /// Deletes an object as if another client did.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let mut store = self.shared.lock();
        let rt = store
            .registry
            .by_kind(api_version, kind)
            .ok_or_else(ApiError::no_route)?;
        store.delete(&rt, namespace, name, &WriteCtx::new("kubesim"))
    }
}

impl Drop for KubeSim {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Runs the namespace controller while namespaces are terminating.
async fn namespace_controller(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut store = shared.lock();
        if store.has_terminating_namespaces() {
            store.reap_namespaces();
        }
    }
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let conn_shared = shared.clone();
        shared.tracker.spawn(async move {
            let shared = conn_shared;
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let svc_shared = shared.clone();
            let service = hyper::service::service_fn(move |req| {
                let shared = svc_shared.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(crate::handler::handle(shared, req).await)
                }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                _ = shared.cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
                }
            }
        });
    }
}
