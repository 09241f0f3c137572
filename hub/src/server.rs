//! Starting and stopping a hub: keys, the store as replica 1 of a one-node Raft cluster, controller
//! and the gRPC listener.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers, Raft};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Server;
use tracing::{info, warn};

use crate::api::{ApiLimits, ApiState, PlanEnv, services};
use crate::config::HubConfig;
use crate::controller::Controller;
use crate::datadir::HubKeys;
use crate::datadir::{DataDir, DataDirError};
use crate::listener::{TlsSetupError, accept_tls, server_tls_config};
use crate::pki::{CertificateAuthority, PkiError};
use crate::raft::network::{
    ReplicaNetwork, ReplicaTls, serve_replication, with_peer_channel_limits,
};
use crate::raft::{LogStore, LogStoreError, ReplicaId, TypeConfig};
use crate::store::{HubStore, OpenError, StoreError, open_state_machine};

/// Server certificates are re-issued at every start; this bounds their life.
const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long a starting hub waits to lead its one-node cluster (an election timeout, at most).
const LEADER_WAIT: Duration = Duration::from_secs(30);

/// How long a stopping hub waits for Raft's last tasks to close the store.
const STORE_RELEASE_WAIT: Duration = Duration::from_secs(10);

/// The hub could not start or failed while running.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Data directory problem.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// Store problem.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store could not open as the Raft state machine.
    #[error(transparent)]
    StateMachine(#[from] OpenError),
    /// The Raft log could not open.
    #[error(transparent)]
    RaftLog(#[from] LogStoreError),
    /// Raft did not start.
    #[error("raft: {0}")]
    Raft(String),
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
    let (dns, ips): (Vec<String>, Vec<String>) = config
        .server_names
        .iter()
        .cloned()
        .partition(|n| n.parse::<IpAddr>().is_err());
    let ips: Vec<IpAddr> = ips.iter().filter_map(|s| s.parse().ok()).collect();
    let peers = PeerListener::new();
    let (raft, store, database) =
        start_replica(&data_dir, &keys.ca, &config, (&dns, &ips), &peers).await?;
    let result = serve(
        data_dir,
        config,
        keys,
        store,
        (dns, ips),
        shutdown,
        on_listening,
    )
    .await;
    // Last, after every task that writes through it ended: the Raft never outlives the hub.
    peers.stop().await;
    stop_replica(&raft, database).await;
    info!("hub stopped");
    result
}

/// Stops the Raft, waits until its state machine let go of the store and closes the store here, so
/// a hub started next on the same data directory (a restart in the same process) can open it.
async fn stop_replica(raft: &Raft<TypeConfig>, database: Arc<redb::Database>) {
    if let Err(e) = raft.shutdown().await {
        warn!(error = %e, "raft did not stop cleanly");
    }
    // openraft's shutdown joins its core task, not the state machine worker (nor a snapshot being
    // built), which still hold the store for a moment; nothing signals their end but the drop. The
    // last holder closes the file (flush, unlock), so this handle waits to be the last and closes it
    // itself rather than return while another thread is still closing it.
    let deadline = tokio::time::Instant::now() + STORE_RELEASE_WAIT;
    let mut database = database;
    let database = loop {
        match Arc::try_unwrap(database) {
            Ok(database) => break database,
            Err(shared) if tokio::time::Instant::now() >= deadline => {
                warn!(
                    holders = Arc::strong_count(&shared) - 1,
                    "the store is still open {STORE_RELEASE_WAIT:?} after Raft stopped; a hub started on this data directory in this process cannot open it until it closes"
                );
                return;
            }
            Err(shared) => database = shared,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    match tokio::task::spawn_blocking(move || database.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "closing the store"),
        Err(e) => warn!(error = %e, "closing the store"),
    }
}

/// The peer listener's task and its stop signal (nothing runs in it without `replication:`).
struct PeerListener {
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl PeerListener {
    fn new() -> Self {
        PeerListener {
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// Stops accepting peer RPCs and waits for the listener's tasks to end.
    async fn stop(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Opens the store as the Raft state machine and the Raft log, starts this hub's Raft as the data
/// directory's replica, serves the peer channel when `replication:` is set, initializes the
/// one-node cluster on first start and waits until this replica leads it; returns the Raft, the
/// store writing through it and the store's database, for closing it when the Raft stopped.
async fn start_replica(
    data_dir: &DataDir,
    ca: &CertificateAuthority,
    config: &HubConfig,
    (dns, ips): (&[String], &[IpAddr]),
    peers: &PeerListener,
) -> Result<(Raft<TypeConfig>, HubStore, Arc<redb::Database>), HubError> {
    let id: ReplicaId = data_dir.replica_id()?;
    let (machine, store) = open_state_machine(&data_dir.store_path())?;
    let database = machine.database().clone();
    let log = LogStore::open(&data_dir.raft_log_path())?;
    let (mut dns, mut ips) = (dns.to_vec(), ips.to_vec());
    if let Some(replication) = &config.replication {
        // The other replicas check this certificate against the address they dial.
        let host = replication.advertise_host();
        match host.parse::<IpAddr>() {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) if !dns.iter().any(|d| d == host) => dns.push(host.to_string()),
            Err(_) => {}
        }
    }
    let cert = ca.issue_replica_cert(id, &dns, &ips, SERVER_CERT_VALIDITY)?;
    let tls = ReplicaTls {
        cert_pem: cert.cert_pem,
        key_pem: cert.key_pem,
        ca_pem: ca.cert_pem(),
    };
    let raft_config = with_peer_channel_limits(openraft::Config {
        cluster_name: "flotilla".into(),
        ..Default::default()
    })
    .validate()
    .map_err(|e| HubError::Raft(format!("configuration: {e}")))?;
    let raft = Raft::new(
        id,
        Arc::new(raft_config),
        ReplicaNetwork::new(id, &tls),
        log,
        machine,
    )
    .await
    .map_err(|e| HubError::Raft(format!("starting replica {id}: {e}")))?;
    let led = async {
        if let Some(replication) = &config.replication {
            let listener = TcpListener::bind(replication.listen)
                .await
                .map_err(|source| HubError::Io {
                    what: format!("cannot listen for replicas on {}", replication.listen),
                    source,
                })?;
            serve_replication(
                listener,
                raft.clone(),
                &tls,
                &config.transport,
                peers.shutdown.clone(),
                &peers.tasks,
            )?;
            info!(replica = id, listen = %replication.listen, advertise = %replication.advertise, "serving the peer channel");
        }
        let advertise = config.replication.as_ref().map(|r| r.advertise.as_str());
        lead_one_node_cluster(&raft, id, advertise).await
    };
    if let Err(e) = led.await {
        drop(store);
        peers.stop().await;
        stop_replica(&raft, database).await;
        return Err(e);
    }
    let store = store.with_proposer(raft.clone(), tokio::runtime::Handle::current());
    Ok((raft, store, database))
}

/// Initializes the one-node membership on first start, waits until this replica leads it, and
/// makes the membership's address of this replica the advertised one (through Raft) when it
/// changed.
async fn lead_one_node_cluster(
    raft: &Raft<TypeConfig>,
    id: ReplicaId,
    advertise: Option<&str>,
) -> Result<(), HubError> {
    let fatal = |e: openraft::error::Fatal<ReplicaId>| HubError::Raft(e.to_string());
    if !raft.is_initialized().await.map_err(fatal)? {
        // Without `replication:` nobody dials this replica: its address stays empty until set.
        let node = advertise.map(BasicNode::new).unwrap_or_default();
        let members = BTreeMap::from([(id, node)]);
        raft.initialize(members)
            .await
            .map_err(|e| HubError::Raft(format!("initializing the one-node cluster: {e}")))?;
        info!(replica = id, "initialized a one-node Raft cluster");
    }
    let metrics = raft
        .wait(Some(LEADER_WAIT))
        .current_leader(id, "this replica leads its one-node cluster")
        .await
        .map_err(|e| {
            HubError::Raft(format!(
                "replica {id} did not become the leader of its one-node cluster: {e}"
            ))
        })?;
    info!(
        replica = id,
        term = metrics.current_term,
        last_log_index = metrics.last_log_index.unwrap_or_default(),
        last_applied_index = metrics.last_applied.map(|l| l.index).unwrap_or_default(),
        "raft replica leads its one-node cluster"
    );
    let recorded = metrics
        .membership_config
        .membership()
        .get_node(&id)
        .map(|n| n.addr.clone());
    if let Some(advertise) = advertise
        && recorded.as_deref() != Some(advertise)
    {
        let nodes = BTreeMap::from([(id, BasicNode::new(advertise))]);
        raft.change_membership(ChangeMembers::SetNodes(nodes), true)
            .await
            .map_err(|e| {
                HubError::Raft(format!(
                    "recording replica {id}'s advertised address {advertise}: {e}"
                ))
            })?;
        info!(replica = id, from = ?recorded, to = advertise, "recorded this replica's new peer address");
    }
    Ok(())
}

/// Serves the hub on `store` until `shutdown` is cancelled and every task it started has ended.
async fn serve(
    data_dir: DataDir,
    config: HubConfig,
    keys: HubKeys,
    store: HubStore,
    (dns, ips): (Vec<String>, Vec<IpAddr>),
    shutdown: CancellationToken,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), HubError> {
    let store = store.with_retention(config.rpc.state_retention);
    let epoch = match store.meta("hub_epoch")? {
        Some(e) => e,
        None => {
            // A write proposes through Raft and waits for it: off the async workers.
            let writer = store.clone();
            tokio::task::spawn_blocking(move || writer.set_meta("hub_epoch", 1))
                .await
                .map_err(|e| HubError::Raft(format!("writing the hub epoch: {e}")))??;
            1
        }
    };
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
    result.map_err(HubError::from)
}
