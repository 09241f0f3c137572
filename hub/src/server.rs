//! Starting and stopping a hub replica: keys, the store as the Raft state machine, the peer
//! listener, the gRPC listener, and the controller, which runs only while this replica leads (one
//! controller per term, its writes fenced to that term).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers, Raft};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Server;
use tracing::{info, warn};

use crate::api::{ApiLimits, ApiState, LeaderSlot, PlanEnv, ReplicaHandle, services};
use crate::config::HubConfig;
use crate::controller::{Controller, RenderSlots};
use crate::datadir::HubKeys;
use crate::datadir::{DataDir, DataDirError};
use crate::listener::{TlsSetupError, accept_tls, server_tls_config};
use crate::pki::{CertificateAuthority, PkiError};
use crate::raft::network::{
    CATCH_UP_TIMEOUT, ReplicaNetwork, ReplicaTls, ReplicationService, serve_replication_service,
    with_peer_channel_limits,
};
use crate::raft::peers::{ContactBook, Contacts, Members, MembershipChange, PeerDialer};
use crate::raft::{LogStore, LogStoreError, ReplicaId, TypeConfig};
use crate::store::{HubStore, OpenError, StoreError, open_state_machine};

/// Server certificates are re-issued at every start; this bounds their life.
const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long a starting hub waits to lead its one-node cluster (an election timeout, at most).
const LEADER_WAIT: Duration = Duration::from_secs(30);

/// How often the leader sends heartbeats to the other replicas.
const HEARTBEAT_MILLIS: u64 = 100;

/// A follower that hears no heartbeat for a random time in this range campaigns.
const ELECTION_TIMEOUT_MILLIS: (u64, u64) = (500, 1000);

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
    let replica = start_replica(
        &data_dir,
        &keys.ca,
        &config,
        (&dns, &ips),
        &peers,
        &shutdown,
    )
    .await?;
    let Replica {
        raft,
        store,
        database,
        dialer,
        contacts,
        heard,
    } = replica;
    let handle = ReplicaHandle {
        raft: raft.clone(),
        dialer,
        heard,
    };
    let result = serve(
        data_dir,
        config,
        keys,
        (store, handle, contacts),
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

/// A started replica: its Raft, the store writing through it, the store's database (closed when
/// the Raft stopped), the dialer for other replicas and the agents' contacts, which other replicas
/// add to.
struct Replica {
    raft: Raft<TypeConfig>,
    store: HubStore,
    database: Arc<redb::Database>,
    dialer: PeerDialer,
    contacts: ContactBook,
    heard: crate::raft::network::Heard,
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
/// directory's replica and serves the peer channel when `replication:` is set. A directory made by
/// `init` starts a one-node cluster on first start and waits to lead it while it is alone; one made
/// by `join` waits until it is added (asking the `replication.join` peers, if any). Either then
/// waits until a leader is known and the membership that names it is applied.
async fn start_replica(
    data_dir: &DataDir,
    ca: &CertificateAuthority,
    config: &HubConfig,
    (dns, ips): (&[String], &[IpAddr]),
    peers: &PeerListener,
    shutdown: &CancellationToken,
) -> Result<Replica, HubError> {
    let id: ReplicaId = data_dir.replica_id()?;
    if !data_dir.bootstraps() && config.replication.is_none() {
        return Err(HubError::Raft(format!(
            "{} was made by `flotilla-hub join`, so it joins a hub of several replicas: hub.yaml needs `replication: {{listen, advertise}}` so the other replicas can reach it",
            data_dir.root().display()
        )));
    }
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
    let mut raft_config = openraft::Config {
        cluster_name: "flotilla".into(),
        // Slower than openraft's defaults (50 ms, 150–300 ms), so a loaded or distant peer does not
        // cost an election; the election timeout is 5–10 heartbeats (docs/BENCHMARKS.md, failover).
        heartbeat_interval: HEARTBEAT_MILLIS,
        election_timeout_min: ELECTION_TIMEOUT_MILLIS.0,
        election_timeout_max: ELECTION_TIMEOUT_MILLIS.1,
        ..Default::default()
    };
    if let Some(replication) = &config.replication {
        let every = replication.snapshot_every;
        raft_config.snapshot_policy = openraft::SnapshotPolicy::LogsSinceLast(every);
        raft_config.max_in_snapshot_log_to_keep = every.min(1000);
        // A follower further behind than the log kept gets the snapshot instead.
        raft_config.replication_lag_threshold = every.min(1000) + every;
    }
    let raft_config = with_peer_channel_limits(raft_config)
        .validate()
        .map_err(|e| HubError::Raft(format!("configuration: {e}")))?;
    // Peers are dialed from the address peers are served on, when it names one.
    let source = config
        .replication
        .as_ref()
        .map(|r| r.listen.ip())
        .filter(|ip| !ip.is_unspecified());
    let network = ReplicaNetwork::new(id, &tls).with_source(source);
    let heard = network.heard();
    let raft = Raft::new(id, Arc::new(raft_config), network, log, machine)
        .await
        .map_err(|e| HubError::Raft(format!("starting replica {id}: {e}")))?;
    let dialer = PeerDialer::new(&tls).with_source(source);
    let contacts = ContactBook::default();
    let led = async {
        if let Some(replication) = &config.replication {
            let listener = TcpListener::bind(replication.listen)
                .await
                .map_err(|source| HubError::Io {
                    what: format!("cannot listen for replicas on {}", replication.listen),
                    source,
                })?;
            serve_replication_service(
                listener,
                ReplicationService::new(raft.clone())
                    .with_contacts(contacts.clone())
                    .with_heard(heard.clone()),
                &tls,
                &config.transport,
                peers.shutdown.clone(),
                &peers.tasks,
            )?;
            info!(replica = id, listen = %replication.listen, advertise = %replication.advertise, "serving the peer channel");
        }
        let advertise = config.replication.as_ref().map(|r| r.advertise.as_str());
        let fatal = |e: openraft::error::Fatal<ReplicaId>| HubError::Raft(e.to_string());
        if !raft.is_initialized().await.map_err(fatal)? {
            let joins_instead = match &config.replication {
                Some(replication) if data_dir.bootstraps() => {
                    existing_hub(id, replication, &dialer).await?
                }
                _ => false,
            };
            if joins_instead {
                data_dir.mark_joined().map_err(HubError::DataDir)?;
            }
            if data_dir.bootstraps() {
                initialize_one_node_cluster(&raft, id, advertise).await?;
            } else {
                let replication = config.replication.as_ref().expect("checked above");
                wait_until_added(&raft, id, replication, &dialer, shutdown).await?;
            }
        }
        let members = Members::of(&raft);
        if members.voters.len() == 1 && members.voters.contains_key(&id) {
            lead_one_node_cluster(&raft, id, advertise).await
        } else {
            wait_for_leader(&raft, id, shutdown).await
        }
    };
    if let Err(e) = led.await {
        drop(store);
        peers.stop().await;
        stop_replica(&raft, database).await;
        return Err(e);
    }
    let store = store
        .with_proposer(raft.clone(), tokio::runtime::Handle::current())
        .forwarding(dialer.clone());
    Ok(Replica {
        raft,
        store,
        database,
        dialer,
        contacts,
        heard,
    })
}

/// Before a replica with no Raft state starts a hub of its own (replica 1 of a StatefulSet whose
/// volume was lost, say): whether one of its `replication.join` peers already belongs to a hub.
/// Starting a second one would split the fleet, so it joins that hub instead (`true`) — unless
/// that hub still counts this replica as a member, whose log and vote it no longer has: then it
/// refuses to start until an operator removed it. Peers that do not answer (not started yet) do
/// not count.
async fn existing_hub(
    id: ReplicaId,
    replication: &crate::config::ReplicationConfig,
    dialer: &PeerDialer,
) -> Result<bool, HubError> {
    for peer in replication
        .join
        .iter()
        .filter(|p| **p != replication.advertise)
    {
        let Ok(view) = dialer.view(peer, Duration::from_secs(2)).await else {
            continue;
        };
        if view.members.voters.is_empty() {
            continue;
        }
        if view.members.contains(id) {
            return Err(HubError::Raft(format!(
                "replica {id} has no Raft state, but the hub of the replica at {peer} still \
                 counts it as a member ({}); it will not start a second hub nor rejoin with an \
                 empty log. Remove it with `flotilla hub remove-replica {id}`: at its next start it \
                 joins that hub again",
                crate::raft::peers::describe(&view.members)
            )));
        }
        warn!(replica = id, via = %peer, members = %crate::raft::peers::describe(&view.members), "this replica has no Raft state and its peers already form a hub: joining it instead of starting another");
        return Ok(true);
    }
    Ok(false)
}

/// How often a joining replica asks its `replication.join` peers to add it.
const JOIN_RETRY: Duration = Duration::from_secs(5);

/// How often a replica waiting to be added or for a leader says so.
const WAITING_NOTE: Duration = Duration::from_secs(30);

/// Waits until this replica is in the membership: asks each `replication.join` peer in turn to add
/// it (the peer takes it to the leader), or, without any, waits for an operator's `flotilla hub
/// add-replica`.
async fn wait_until_added(
    raft: &Raft<TypeConfig>,
    id: ReplicaId,
    replication: &crate::config::ReplicationConfig,
    dialer: &PeerDialer,
    shutdown: &CancellationToken,
) -> Result<(), HubError> {
    let stopped = || HubError::Raft(format!("replica {id} stopped before it was added to a hub"));
    let mut metrics = raft.metrics();
    let mut next_note = tokio::time::Instant::now();
    let change = MembershipChange::Add {
        id,
        address: replication.advertise.clone(),
    };
    loop {
        if Members::of(raft).contains(id) {
            info!(replica = id, "this replica was added to the hub");
            return Ok(());
        }
        // A shared hub.yaml (a StatefulSet's) lists every replica, this one included.
        for peer in replication
            .join
            .iter()
            .filter(|p| **p != replication.advertise)
        {
            let asked = tokio::select! {
                _ = shutdown.cancelled() => return Err(stopped()),
                asked = dialer.change_membership_via(peer, &change, CATCH_UP_TIMEOUT + Duration::from_secs(10)) => asked,
            };
            match asked {
                Ok(members) => {
                    info!(replica = id, via = %peer, members = %crate::raft::peers::describe(&members), "asked to be added to the hub; added");
                    break;
                }
                Err(e) => {
                    warn!(replica = id, via = %peer, error = %e, "asking to be added to the hub failed; will ask again")
                }
            }
        }
        if tokio::time::Instant::now() >= next_note {
            if replication.join.is_empty() {
                info!(replica = id, advertise = %replication.advertise, "waiting to be added: run `flotilla hub add-replica {}` against the hub", replication.advertise);
            } else {
                info!(replica = id, "waiting to be added to the hub");
            }
            next_note = tokio::time::Instant::now() + WAITING_NOTE;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(stopped()),
            changed = metrics.changed() => if changed.is_err() { return Err(stopped()) },
            _ = tokio::time::sleep(JOIN_RETRY) => {}
        }
    }
}

/// Waits until a leader is known and this replica applied the membership in force, so it serves
/// agents from the hub's state rather than from an empty or far-behind store.
async fn wait_for_leader(
    raft: &Raft<TypeConfig>,
    id: ReplicaId,
    shutdown: &CancellationToken,
) -> Result<(), HubError> {
    let mut metrics = raft.metrics();
    let mut next_note = tokio::time::Instant::now() + WAITING_NOTE;
    loop {
        {
            let m = metrics.borrow_and_update();
            let membership_index = m.membership_config.log_id().map(|l| l.index);
            let applied = m.last_applied.map(|l| l.index);
            if let Some(leader) = m.current_leader
                && applied >= membership_index
            {
                info!(
                    replica = id,
                    leader,
                    term = m.current_term,
                    applied_index = applied.unwrap_or_default(),
                    "raft replica follows the hub's leader"
                );
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= next_note {
            info!(replica = id, members = %crate::raft::peers::describe(&Members::of(raft)), "waiting for a leader: a majority of the voters must be up and reach each other");
            next_note = tokio::time::Instant::now() + WAITING_NOTE;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(HubError::Raft(format!("replica {id} stopped before a leader was elected"))),
            changed = metrics.changed() => if changed.is_err() {
                return Err(HubError::Raft(format!("replica {id}'s Raft stopped")));
            },
            _ = tokio::time::sleep(WAITING_NOTE) => {}
        }
    }
}

/// Initializes the one-node membership of a replica made by `init`.
async fn initialize_one_node_cluster(
    raft: &Raft<TypeConfig>,
    id: ReplicaId,
    advertise: Option<&str>,
) -> Result<(), HubError> {
    // Without `replication:` nobody dials this replica: its address stays empty until set.
    let node = advertise.map(BasicNode::new).unwrap_or_default();
    let members = BTreeMap::from([(id, node)]);
    raft.initialize(members)
        .await
        .map_err(|e| HubError::Raft(format!("initializing the one-node cluster: {e}")))?;
    info!(replica = id, "initialized a one-node Raft cluster");
    Ok(())
}

/// Waits until this replica leads the cluster it is the only voter of, and makes the membership's
/// address of this replica the advertised one (through Raft) when it changed.
async fn lead_one_node_cluster(
    raft: &Raft<TypeConfig>,
    id: ReplicaId,
    advertise: Option<&str>,
) -> Result<(), HubError> {
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
    (store, replica, contacts): (HubStore, ReplicaHandle, ContactBook),
    (dns, ips): (Vec<String>, Vec<IpAddr>),
    shutdown: CancellationToken,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), HubError> {
    let store = store.with_retention(config.rpc.state_retention);
    let epoch = match store.meta("hub_epoch")? {
        Some(e) => e,
        None => {
            // A write proposes through Raft (a follower's goes to the leader) and waits for it: off
            // the async workers. Every replica writes the same value, so a race is harmless.
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
    // One set of render tools and slots for plans and for every term's controller on this replica.
    let tools = Arc::new(crate::render::Tools {
        timeout: config.render.timeout,
        ..crate::render::Tools::discover()
    });
    let render_slots = Arc::new(RenderSlots::new(config.render.parallelism));
    let plan = Arc::new(PlanEnv::new(
        &config,
        data_dir.mirrors_dir(),
        tools.clone(),
        render_slots.clone(),
        data_dir.root().join("charts"),
        shutdown.clone(),
    ));
    let tracker = TaskTracker::new();
    let leader_slot: LeaderSlot = Arc::new(tokio::sync::watch::Sender::new(None));
    // Well inside both offline thresholds (rollouts' and alerts'), so a connected agent is never
    // taken for offline.
    let heartbeat = (config
        .rollouts
        .offline_after
        .min(config.notifications.cluster_offline_after)
        / 3)
    .clamp(Duration::from_millis(500), Duration::from_secs(15));
    let metrics = crate::metrics::HubMetrics::new();
    tracker.spawn(count_leader_changes(
        replica.raft.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    let leading = Leading {
        metrics: metrics.clone(),
        raft: replica.raft.clone(),
        store: store.clone(),
        signing,
        epoch,
        config: config.clone(),
        mirrors_dir: data_dir.mirrors_dir(),
        events: events.clone(),
        contacts: contacts.clone(),
        tools,
        render_slots,
        slot: leader_slot.clone(),
    };
    tracker.spawn(leading.run(shutdown.clone()));
    tracker.spawn(send_contacts(
        replica.clone(),
        contacts.clone(),
        heartbeat,
        shutdown.clone(),
    ));

    let (reports, batching) = crate::api::ReportBatcher::new(store.clone(), shutdown.clone());
    tracker.spawn(batching);
    let state = ApiState {
        notification_targets: Arc::new(config.notifications.targets.clone()),
        reports,
        store,
        ca: Arc::new(keys.ca),
        signing_public_key,
        controller: leader_slot,
        replica,
        last_contact: contacts,
        // Heartbeats are the contact of a connected agent: keep them well inside the offline threshold.
        heartbeat,
        sources: Arc::new(config.sources.clone()),
        cluster_cert_ttl: config.cluster_cert_ttl,
        shutdown: shutdown.clone(),
        tasks: tracker.clone(),
        limits: Arc::new(ApiLimits::new(&config)),
        events,
        plan,
        metrics: metrics.clone(),
    };
    if let Some(at) = config.metrics_listen {
        let listener = bind_beside(at, "metrics", &data_dir.root().join("metrics.addr")).await?;
        let probes = crate::metrics::HubProbes {
            state: state.clone(),
            metrics,
        };
        flotilla_probes::serve(listener, Arc::new(probes), shutdown.clone(), &tracker);
    }
    if let Some(at) = config.webhooks_listen {
        let listener = bind_beside(at, "webhooks", &data_dir.root().join("webhooks.addr")).await?;
        crate::webhooks::serve(
            listener,
            &config.sources,
            state.store.clone(),
            shutdown.clone(),
            &tracker,
        );
    }
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

/// Binds a plain-HTTP listener beside the gRPC one (`what`: metrics, webhooks) and writes the
/// address it got to `file`, for tests and scripts that asked for port 0.
async fn bind_beside(
    at: std::net::SocketAddr,
    what: &str,
    file: &std::path::Path,
) -> Result<TcpListener, HubError> {
    let listener = TcpListener::bind(at).await.map_err(|source| HubError::Io {
        what: format!("cannot listen for {what} on {at}"),
        source,
    })?;
    let bound = listener.local_addr().map_err(|source| HubError::Io {
        what: format!("reading the {what} listen address"),
        source,
    })?;
    std::fs::write(file, bound.to_string()).map_err(|source| HubError::Io {
        what: format!("writing {}", file.display()),
        source,
    })?;
    info!(addr = %bound, "serving {what} over plain HTTP");
    Ok(listener)
}

/// Counts the changes of leader this replica sees (an election won by anyone, this one included).
async fn count_leader_changes(
    raft: Raft<TypeConfig>,
    metrics: crate::metrics::HubMetrics,
    shutdown: CancellationToken,
) {
    let mut watch = raft.metrics();
    let mut leader = watch.borrow().current_leader;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = watch.changed() => if changed.is_err() { return },
        }
        let now = watch.borrow().current_leader;
        if now.is_some() && now != leader {
            metrics.leader_changes.inc();
        }
        leader = now;
    }
}

/// What the controller of each term this replica leads is made from.
struct Leading {
    metrics: crate::metrics::HubMetrics,
    raft: Raft<TypeConfig>,
    store: HubStore,
    signing: Arc<ed25519_dalek::SigningKey>,
    epoch: u64,
    config: HubConfig,
    mirrors_dir: std::path::PathBuf,
    events: crate::events::EventLog,
    contacts: ContactBook,
    tools: Arc<crate::render::Tools>,
    render_slots: Arc<RenderSlots>,
    slot: LeaderSlot,
}

/// How long a replica waits before trying again to start a controller that failed to start.
const CONTROLLER_RETRY: Duration = Duration::from_secs(1);

impl Leading {
    /// Runs a controller for each term this replica leads, from the moment every entry of earlier
    /// terms is applied here until the term ends; its writes are fenced to the term, so a deposed
    /// controller cannot issue a version even before it hears that it was deposed.
    async fn run(self, shutdown: CancellationToken) {
        let id = self.raft.metrics().borrow().id;
        let mut metrics = self.raft.metrics();
        loop {
            let term = loop {
                {
                    let m = metrics.borrow_and_update();
                    if m.state == openraft::ServerState::Leader && m.current_leader == Some(id) {
                        break m.current_term;
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = metrics.changed() => if changed.is_err() { return },
                }
            };
            // The term's first entry applied: the store holds everything earlier leaders committed,
            // so this controller starts from their last decision.
            let caught_up = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.raft.ensure_linearizable() => r,
            };
            if let Err(e) = caught_up {
                info!(replica = id, term, error = %e, "lost the lead before catching up; not starting the controller");
                continue;
            }
            let store = self.store.clone().fenced_to(term);
            let started = Controller::new(
                store,
                self.signing.clone(),
                self.epoch,
                &self.config,
                self.mirrors_dir.clone(),
            );
            let (controller, handle) = match started {
                Ok(pair) => pair,
                Err(e) => {
                    warn!(replica = id, term, error = %e, "the controller did not start; trying again");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(CONTROLLER_RETRY) => continue,
                    }
                }
            };
            let controller = controller
                .with_events(self.events.clone())
                .with_contacts(self.contacts.clone())
                .with_shared_renders(self.tools.clone(), self.render_slots.clone())
                .with_metrics(self.metrics.clone());
            let stop = shutdown.child_token();
            let tasks = TaskTracker::new();
            tasks.spawn(controller.run(stop.clone()));
            // Alert delivery and the fleet watch: tracked apart, so the controller ending ends the term.
            let alerts = TaskTracker::new();
            crate::notify::Notifier {
                store: self.store.clone().fenced_to(term),
                events: self.events.clone(),
                metrics: self.metrics.clone(),
                settings: self.config.notifications.clone(),
                hub_id: hex::encode(&self.signing.verifying_key().to_bytes()[..6]),
            }
            .start(&alerts, stop.clone());
            alerts.spawn(crate::notify::watch_fleet(
                self.store.clone().fenced_to(term),
                self.events.clone(),
                self.contacts.clone(),
                self.config.notifications.clone(),
                stop.clone(),
            ));
            alerts.close();
            tasks.close();
            self.slot.send_replace(Some(handle));
            info!(
                replica = id,
                term, "this replica leads the hub: its controller runs"
            );
            loop {
                {
                    let m = metrics.borrow_and_update();
                    if m.state != openraft::ServerState::Leader || m.current_term != term {
                        break;
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tasks.wait() => break,
                    changed = metrics.changed() => if changed.is_err() { break },
                }
            }
            self.slot.send_replace(None);
            stop.cancel();
            tasks.wait().await;
            alerts.wait().await;
            if shutdown.is_cancelled() {
                return;
            }
            info!(
                replica = id,
                term, "this replica no longer leads the term; its controller stopped"
            );
        }
    }
}

/// Sends the leader, every `every`, when agents last reached this replica, so the leader's rollouts
/// do not count a cluster offline because it is connected to a follower.
async fn send_contacts(
    replica: ReplicaHandle,
    contacts: ContactBook,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Entries at or after this time were not sent yet (unix seconds; contacts have that grain).
    let mut sent_up_to = i64::MIN;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let Some((_, Some(address))) = crate::raft::peers::other_leader(&replica.raft) else {
            continue;
        };
        let entries: Vec<(String, i64)> = contacts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, at)| **at >= sent_up_to)
            .map(|(c, at)| (c.clone(), *at))
            .collect();
        if entries.is_empty() {
            continue;
        }
        let newest = entries
            .iter()
            .map(|(_, at)| *at)
            .max()
            .unwrap_or(sent_up_to);
        match replica
            .dialer
            .send_contacts(&address, &Contacts { entries }, every)
            .await
        {
            // The newest second may still gain entries: send it again next time.
            Ok(()) => sent_up_to = newest,
            Err(e) => {
                tracing::debug!(error = %e, "sending agents' contacts to the leader failed; will send them again")
            }
        }
    }
}
