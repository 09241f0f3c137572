//! Starting and stopping a hub: keys, store, controller and the gRPC listener.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Server;
use tracing::info;

use crate::api::{ApiLimits, ApiState, PlanEnv, services};
use crate::config::HubConfig;
use crate::controller::Controller;
use crate::datadir::{DataDir, DataDirError};
use crate::listener::{TlsSetupError, accept_tls, server_tls_config};
use crate::pki::PkiError;
use crate::store::{HubStore, StoreError};

/// Server certificates are re-issued at every start; this bounds their life.
const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// The hub could not start or failed while running.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Data directory problem.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// Store problem.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Certificate problem.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// Listener or file IO.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Error.
        source: std::io::Error,
    },
    /// The server's TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// gRPC server failure.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Runs a hub until `shutdown` is cancelled. `on_listening` receives the bound address.
pub async fn run(
    data_dir: DataDir,
    config: HubConfig,
    shutdown: CancellationToken,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), HubError> {
    let keys = data_dir.load_keys()?;
    let store = HubStore::open(&data_dir.store_path())?.with_retention(config.rpc.state_retention);
    let epoch = match store.meta("hub_epoch")? {
        Some(e) => e,
        None => {
            store.set_meta("hub_epoch", 1)?;
            1
        }
    };
    let (dns, ips): (Vec<String>, Vec<String>) = config
        .server_names
        .iter()
        .cloned()
        .partition(|n| n.parse::<IpAddr>().is_err());
    let ips: Vec<IpAddr> = ips.iter().filter_map(|s| s.parse().ok()).collect();
    let server_cert = keys
        .ca
        .issue_server_cert(&dns, &ips, SERVER_CERT_VALIDITY)?;

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| HubError::Io {
            what: format!("cannot listen on {}", config.listen),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| HubError::Io {
        what: "reading listen address".into(),
        source,
    })?;
    std::fs::write(data_dir.addr_file(), addr.to_string()).map_err(|source| HubError::Io {
        what: format!("writing {}", data_dir.addr_file().display()),
        source,
    })?;

    let signing = Arc::new(keys.signing);
    let signing_public_key = signing.verifying_key().to_bytes();
    let events = crate::events::EventLog::new(store.clone(), config.event_retention);
    let (controller, handle) = Controller::new(
        store.clone(),
        signing,
        epoch,
        &config,
        data_dir.mirrors_dir(),
    )?;
    let last_contact = Arc::new(Mutex::new(HashMap::new()));
    let controller = controller
        .with_events(events.clone())
        .with_contacts(last_contact.clone());
    // Plans render with the controller's tools and render slots, so they share its bound on renders.
    let plan = Arc::new(PlanEnv::new(
        &config,
        data_dir.mirrors_dir(),
        controller.tools.clone(),
        controller.render_slots.clone(),
        controller.chart_cache.clone(),
        shutdown.clone(),
    ));
    let tracker = TaskTracker::new();
    tracker.spawn(controller.run(shutdown.clone()));

    let state = ApiState {
        store,
        ca: Arc::new(keys.ca),
        signing_public_key,
        controller: handle,
        last_contact,
        // Heartbeats are the contact of a connected agent: keep them well inside the offline threshold.
        heartbeat: (config.rollouts.offline_after / 3)
            .clamp(Duration::from_millis(500), Duration::from_secs(15)),
        sources: Arc::new(config.sources.clone()),
        cluster_cert_ttl: config.cluster_cert_ttl,
        revocations: Arc::new(tokio::sync::watch::Sender::new(0)),
        shutdown: shutdown.clone(),
        tasks: tracker.clone(),
        limits: Arc::new(ApiLimits::new(&config)),
        events,
        plan,
    };
    let tls = server_tls_config(
        &server_cert.cert_pem,
        &server_cert.key_pem,
        &state.ca.cert_pem(),
    )?;
    let (registration, agent, admin) = services(state, &config.transport);
    let incoming = accept_tls(listener, tls, &config.transport, shutdown.clone(), &tracker);
    info!(%addr, epoch, sources = config.sources.len(), "hub listening");
    on_listening(addr);
    let result = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .max_concurrent_streams(config.transport.max_concurrent_streams)
        // Bounds unary calls; a streaming call's future ends when its stream is returned.
        .timeout(config.transport.request_timeout)
        .add_service(registration)
        .add_service(agent)
        .add_service(admin)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
        .await;
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    info!("hub stopped");
    result.map_err(HubError::from)
}
