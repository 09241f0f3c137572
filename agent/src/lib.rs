//! The Flotilla agent: registers once, follows its cluster's signed ClusterState, keeps it
//! durably on disk and applies it to a target, reporting status back.
//!
//! Data flow (DESIGN.md §3): `sync` watches the hub, verifies and commits new states to the
//! `store`; the `apply` task plans (`plan`, pure) and applies the held state to a `target`
//! (a directory, or a Kubernetes cluster through `target::kube`), observes `health` and reacts
//! to the target's watches (`drift`); every pass that changes something and every rejection
//! queues a report that `status` delivers; `capabilities` keeps the hub's copy of what the
//! cluster's API server offers. Proto types are converted in `wire` only.

#![warn(missing_docs)]

use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

pub mod apply;
pub mod capabilities;
pub mod channel;
pub mod config;
pub mod drift;
pub mod endpoints;
pub mod error;
pub mod health;
pub mod identity;
pub mod inventory;
mod link;
pub mod metrics;
pub mod plan;
pub mod registration;
pub mod renew;
pub mod retry;
pub mod status;
pub mod store;
pub mod sync;
pub mod target;
pub mod wire;

#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod fixtures;

pub use config::AgentConfig;
pub use error::AgentError;

use crate::apply::{Applier, ApplySettings};
use crate::capabilities::{CapabilityReader, CapabilityReporter, Probe};
use crate::config::TargetSpec;
use crate::identity::AgentIdentity;
use crate::link::HubLink;
use crate::renew::Renewer;
use crate::retry::RetryPolicy;
use crate::status::Reporter;
use crate::store::{Store, StoreError};
use crate::sync::{OfferContext, Syncer};
use crate::target::Target;
use crate::target::dir::DirTarget;
use crate::target::kube::{KubeOptions, KubeTarget};

/// Current time, unix seconds.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Runs the agent until `shutdown` is cancelled or something fatal happens.
///
/// Opens the store, registers if it holds no identity yet, then runs the applier, the hub
/// sync and the status reporter as tracked tasks, and waits for all of them to stop.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    let store = Store::open(&config.store_path(), config.outbox_capacity)?;
    let metrics = crate::metrics::AgentMetrics::new();
    let overrides = config.capability_overrides.clone();
    match &config.target {
        TargetSpec::Dir(path) => {
            let target = DirTarget::new(path)?;
            let reader = CapabilityReader::new(Probe::None, overrides);
            run_with(config, store, target, reader, metrics, shutdown).await
        }
        TargetSpec::Kube(source) => {
            let options = KubeOptions {
                api_requests: Some(metrics.api_requests.clone()),
                ..KubeOptions::default()
            };
            let timeout = options.request_timeout;
            let target = KubeTarget::connect(source, options, &shutdown).await?;
            let probe = Probe::Kube {
                client: target.client().clone(),
                timeout,
            };
            let reader = CapabilityReader::new(probe, overrides);
            run_with(config, store, target, reader, metrics, shutdown).await
        }
    }
}

async fn run_with<T: Target>(
    config: AgentConfig,
    store: Store,
    target: T,
    mut capabilities: CapabilityReader,
    metrics: crate::metrics::AgentMetrics,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let (identity, answered) = match store.blocking(Store::identity).await? {
        Some(identity) => (identity, None),
        None => {
            let (registered, read) = capabilities.for_registration().await;
            match registration::register(&config, &store, &registered, &shutdown).await? {
                // A reading that failed is reported by the capabilities task once it works.
                Some(identity) => (identity, read.then_some(registered)),
                None => return Ok(()),
            }
        }
    };
    let key = pinned_key(&identity)?;
    info!(
        cluster_id = %identity.cluster_id,
        hubs = %config.hub_list(),
        target = %config.target,
        "agent starting"
    );

    let held_version = store
        .blocking(Store::held)
        .await?
        .map_or(0, |h| h.held.version);
    let (held_tx, held_rx) = watch::channel(held_version);
    let reporter_wake = Arc::new(Notify::new());
    let (identities, identity_rx) = watch::channel(identity.clone());
    let (link, hub) = HubLink::start(config.hubs.clone(), identity_rx, config.backoff).await?;

    let tasks = TaskTracker::new();
    if let Some(at) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(at)
            .await
            .map_err(|source| AgentError::Listen { at, source })?;
        if let Ok(bound) = listener.local_addr() {
            info!(addr = %bound, "serving /metrics, /healthz and /readyz");
            // For tests and scripts that asked for port 0.
            let _ = std::fs::write(config.data_dir.join("metrics.addr"), bound.to_string());
        }
        let probes = crate::metrics::AgentProbes {
            store: store.clone(),
            metrics: metrics.clone(),
        };
        flotilla_probes::serve(listener, Arc::new(probes), shutdown.clone(), &tasks);
    }
    let calls = store.clone();
    let stop = shutdown.child_token();
    let (fatal_tx, mut fatal_rx) = mpsc::channel::<AgentError>(3);
    spawn(&tasks, &fatal_tx, "hub link", link.run(stop.clone()));
    // The applier starts first and needs neither the hub nor a valid certificate.
    spawn(
        &tasks,
        &fatal_tx,
        "apply",
        Applier {
            store: store.clone(),
            target,
            settings: ApplySettings {
                deletion_budget: config.deletion_budget,
                deletion_window: config.deletion_window,
                override_budget: config.override_deletion_budget,
            },
            backoff: config.backoff,
            retry: RetryPolicy {
                ceiling: config.retry_ceiling,
                ..RetryPolicy::default()
            },
            reporter: Arc::clone(&reporter_wake),
            metrics: metrics.clone(),
        }
        .run(held_rx, stop.clone()),
    );
    spawn(
        &tasks,
        &fatal_tx,
        "sync",
        Syncer {
            hub: hub.clone(),
            store: store.clone(),
            ctx: OfferContext {
                cluster_id: identity.cluster_id.clone(),
                key,
                limits: config.limits.clone(),
            },
            held: held_tx,
            reporter: Arc::clone(&reporter_wake),
            idle_timeout: config.watch_idle_timeout,
            metrics: metrics.clone(),
        }
        .run(stop.clone()),
    );
    spawn(
        &tasks,
        &fatal_tx,
        "status",
        Reporter {
            hub: hub.clone(),
            store: store.clone(),
            wake: reporter_wake,
        }
        .run(stop.clone()),
    );
    spawn(
        &tasks,
        &fatal_tx,
        "capabilities",
        CapabilityReporter {
            hub: hub.clone(),
            reader: capabilities,
            interval: config.capabilities_interval,
            answered,
        }
        .run(stop.clone()),
    );
    spawn(
        &tasks,
        &fatal_tx,
        "renew",
        Renewer {
            hub,
            store,
            identity,
            identities,
            backoff: config.backoff,
        }
        .run(stop.clone()),
    );
    drop(fatal_tx);
    tasks.close();

    let result = tokio::select! {
        _ = shutdown.cancelled() => {
            info!("shutting down");
            Ok(())
        }
        Some(e) = fatal_rx.recv() => Err(e),
    };
    stop.cancel();
    tasks.wait().await;
    // A call on the blocking pool whose task was cancelled still holds the store open.
    calls.wait_for_calls().await;
    info!("agent stopped");
    result
}

/// Spawns a tracked task; a task that fails reports its error so `run` can stop the others.
fn spawn(
    tasks: &TaskTracker,
    fatal: &mpsc::Sender<AgentError>,
    name: &'static str,
    task: impl Future<Output = Result<(), AgentError>> + Send + 'static,
) {
    let fatal = fatal.clone();
    tasks.spawn(async move {
        if let Err(e) = task.await {
            // Logged once, by whoever handles the error `run` returns.
            tracing::debug!(task = name, "task failed");
            let _ = fatal.send(e).await;
        }
    });
}

fn pinned_key(identity: &AgentIdentity) -> Result<VerifyingKey, AgentError> {
    VerifyingKey::from_bytes(&identity.signing_public_key).map_err(|_| {
        AgentError::Store(StoreError::Corrupt {
            what: "identity",
            reason: "the pinned signing key is not a valid Ed25519 key".into(),
        })
    })
}
