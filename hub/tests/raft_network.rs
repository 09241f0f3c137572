//! The replicas' peer channel with real parts: openraft nodes in one process, each with its own
//! replica certificate, its own mTLS listener on 127.0.0.1:0 and `ReplicaNetwork` as its network,
//! over an in-memory store. Every wait is on a condition with a deadline.

#[path = "raft_network/memstore.rs"]
mod memstore;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use flotilla_hub::config::TransportLimits;
use flotilla_hub::pki::{CertificateAuthority, IssuedCert};
use flotilla_hub::raft::network::{
    ReplicaNetwork, ReplicaTls, serve_replication, with_peer_channel_limits,
};
use flotilla_hub::raft::{Proposal, ReplicaId, TypeConfig};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::replication_client::ReplicationClient;
use memstore::{MemLog, MemStateMachine};
use openraft::raft::VoteRequest;
use openraft::{BasicNode, Config, Raft, SnapshotPolicy, Vote};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const HOUR: Duration = Duration::from_secs(3600);
/// Generous: two cores run every test of the crate at once.
const WAIT: Duration = Duration::from_secs(30);

struct Replica<SM> {
    id: ReplicaId,
    addr: SocketAddr,
    raft: Raft<TypeConfig>,
    state: SM,
    /// Stops this replica's listener alone.
    stop: CancellationToken,
}

/// Makes a replica's log and state machine.
type Storage<LS, SM> = Box<dyn Fn(ReplicaId) -> (LS, SM) + Send + Sync>;

/// Replicas sharing one test CA; every task they start is on `tracker`.
struct Fleet<LS, SM> {
    ca: CertificateAuthority,
    config: Arc<Config>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    replicas: BTreeMap<ReplicaId, Replica<SM>>,
    storage: Storage<LS, SM>,
    /// Log index of the newest write the fleet made.
    written: u64,
}

/// Replicas on the in-memory store.
type MemFleet = Fleet<MemLog, MemStateMachine>;

impl MemFleet {
    fn new(config: Config) -> MemFleet {
        Fleet::with_storage(
            config,
            Box::new(|_| (MemLog::default(), MemStateMachine::default())),
        )
    }

    /// Starts replicas 1..=n on the in-memory store and initializes them as one cluster.
    async fn cluster(config: Config, n: u64) -> MemFleet {
        let mut fleet = MemFleet::new(config);
        fleet.start_all(n).await;
        fleet
    }
}

impl<LS, SM> Fleet<LS, SM>
where
    LS: openraft::storage::RaftLogStorage<TypeConfig>,
    SM: openraft::storage::RaftStateMachine<TypeConfig> + Clone,
{
    fn with_storage(config: Config, storage: Storage<LS, SM>) -> Self {
        Fleet {
            ca: CertificateAuthority::generate("flotilla test ca").unwrap(),
            config: Arc::new(with_peer_channel_limits(config).validate().unwrap()),
            tracker: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            replicas: BTreeMap::new(),
            storage,
            written: 0,
        }
    }

    /// Starts replicas 1..=n and initializes them as one cluster.
    async fn start_all(&mut self, n: u64) {
        for id in 1..=n {
            self.start(id).await;
        }
        let members: BTreeMap<ReplicaId, BasicNode> =
            (1..=n).map(|id| (id, self.node(id))).collect();
        self.replicas[&1].raft.initialize(members).await.unwrap();
    }

    fn replica_tls(&self, id: ReplicaId) -> ReplicaTls {
        let localhost: IpAddr = "127.0.0.1".parse().unwrap();
        let issued = self
            .ca
            .issue_replica_cert(id, &["localhost".to_string()], &[localhost], HOUR)
            .unwrap();
        ReplicaTls {
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            ca_pem: self.ca.cert_pem(),
        }
    }

    async fn start(&mut self, id: ReplicaId) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = self.replica_tls(id);
        let (log, state) = (self.storage)(id);
        let raft = Raft::new(
            id,
            self.config.clone(),
            ReplicaNetwork::new(id, &tls),
            log,
            state.clone(),
        )
        .await
        .unwrap();
        let stop = self.shutdown.child_token();
        serve_replication(
            listener,
            raft.clone(),
            &tls,
            &TransportLimits::default(),
            stop.clone(),
            &self.tracker,
        )
        .unwrap();
        self.replicas.insert(
            id,
            Replica {
                id,
                addr,
                raft,
                state,
                stop,
            },
        );
    }

    fn node(&self, id: ReplicaId) -> BasicNode {
        BasicNode::new(self.replicas[&id].addr.to_string())
    }

    /// Waits until every running replica names the same leader, other than `not`, and returns it.
    async fn leader(&self, not: Option<ReplicaId>) -> ReplicaId {
        let first = self.replicas.values().next().unwrap();
        let leader = first
            .raft
            .wait(Some(WAIT))
            .metrics(
                |m| m.current_leader.is_some() && m.current_leader != not,
                "a leader is elected",
            )
            .await
            .unwrap()
            .current_leader
            .unwrap();
        for r in self.replicas.values() {
            r.raft
                .wait(Some(WAIT))
                .current_leader(leader, "every replica follows the leader")
                .await
                .unwrap();
        }
        leader
    }

    /// Writes through `leader` and waits until every running replica applied it; returns the answer.
    async fn propose(&mut self, leader: ReplicaId, bytes: &[u8]) -> Vec<u8> {
        let written = self.replicas[&leader]
            .raft
            .client_write(Proposal(bytes.to_vec()))
            .await
            .unwrap();
        self.written = self.written.max(written.log_id.index);
        for r in self.replicas.values() {
            r.raft
                .wait(Some(WAIT))
                .applied_index_at_least(Some(written.log_id.index), "the write is applied")
                .await
                .unwrap();
        }
        written.data.0
    }

    /// Writes through `leader` and waits until every running replica applied it.
    async fn write(&mut self, leader: ReplicaId, bytes: &[u8]) {
        let written = self.replicas[&leader]
            .raft
            .client_write(Proposal(bytes.to_vec()))
            .await
            .unwrap();
        self.written = self.written.max(written.log_id.index);
        assert_eq!(
            written.data.0, bytes,
            "the leader answers with what it applied"
        );
        for r in self.replicas.values() {
            r.raft
                .wait(Some(WAIT))
                .applied_index_at_least(Some(written.log_id.index), "the write is applied")
                .await
                .unwrap();
        }
    }

    /// Waits until `leader` purged its log up to `purged` at least, then adds replica `id` as a
    /// learner and waits until it applied everything the leader had: it can only catch up from a
    /// snapshot.
    async fn join_after_purge(&mut self, leader: ReplicaId, id: ReplicaId, purged: u64) {
        self.replicas[&leader]
            .raft
            .wait(Some(WAIT))
            .metrics(
                |m| m.purged.is_some_and(|p| p.index >= purged),
                "the leader purged its log behind a snapshot",
            )
            .await
            .unwrap();
        self.start(id).await;
        let learner = self.node(id);
        self.replicas[&leader]
            .raft
            .add_learner(id, learner, true)
            .await
            .unwrap();
        // The newest write's index from its answer: the leader's metrics may lag behind it.
        let newest = self.written;
        self.replicas[&id]
            .raft
            .wait(Some(WAIT))
            .applied_index_at_least(Some(newest), "the learner caught up")
            .await
            .unwrap();
    }

    /// Stops one replica: its listener and its Raft.
    async fn stop(&mut self, id: ReplicaId) {
        let replica = self.replicas.remove(&id).unwrap();
        replica.stop.cancel();
        replica.raft.shutdown().await.unwrap();
    }

    async fn shut_down(mut self) {
        let ids: Vec<ReplicaId> = self.replicas.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
        self.shutdown.cancel();
        self.tracker.close();
        tokio::time::timeout(WAIT, self.tracker.wait())
            .await
            .expect("every listener task ends");
    }
}

fn fast_config() -> Config {
    Config {
        cluster_name: "flotilla-test".into(),
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        ..Default::default()
    }
}

fn proposals(items: &[&str]) -> Vec<Vec<u8>> {
    items.iter().map(|s| s.as_bytes().to_vec()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_replicate_and_elect_a_new_leader_when_the_leader_stops() {
    let mut fleet = MemFleet::cluster(fast_config(), 3).await;
    let leader = fleet.leader(None).await;
    fleet.write(leader, b"one").await;
    fleet.write(leader, b"two").await;
    for r in fleet.replicas.values() {
        assert_eq!(
            r.state.applied(),
            proposals(&["one", "two"]),
            "replica {}",
            r.id
        );
    }

    fleet.stop(leader).await;
    let next = fleet.leader(Some(leader)).await;
    assert_ne!(next, leader);
    fleet.write(next, b"three").await;
    for r in fleet.replicas.values() {
        assert_eq!(
            r.state.applied(),
            proposals(&["one", "two", "three"]),
            "replica {}",
            r.id
        );
    }
    fleet.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_added_after_the_log_was_purged_catches_up_from_a_snapshot() {
    let config = Config {
        snapshot_policy: SnapshotPolicy::LogsSinceLast(3),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..fast_config()
    };
    let mut fleet = MemFleet::cluster(config, 3).await;
    let leader = fleet.leader(None).await;
    let items = ["a", "b", "c", "d", "e"];
    for item in items {
        fleet.write(leader, item.as_bytes()).await;
    }
    fleet.join_after_purge(leader, 4, 3).await;
    let new = &fleet.replicas[&4].state;
    assert!(new.snapshots_installed() >= 1, "no snapshot was sent");
    assert_eq!(new.applied(), proposals(&items));
    fleet.shut_down().await;
}

/// A Replication client presenting `identity` (certificate and key PEM), or none.
async fn client(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<&IssuedCert>,
) -> Result<ReplicationClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
    }
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(ReplicationClient::new(channel))
}

fn vote_request(candidate: ReplicaId) -> pb::RaftRequest {
    let rpc = VoteRequest::<ReplicaId>::new(Vote::new(1, candidate), None);
    pb::RaftRequest {
        json: serde_json::to_vec(&rpc).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replication_listener_serves_only_replicas_speaking_for_themselves() {
    let mut fleet = MemFleet::new(fast_config());
    fleet.start(1).await;
    let addr = fleet.replicas[&1].addr;
    let ca_pem = fleet.ca.cert_pem();

    let admin = fleet.ca.issue_admin_cert("alice", HOUR).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap();
    let cluster = IssuedCert {
        cert_pem: fleet
            .ca
            .sign_cluster_csr(csr.der(), "edge-1", HOUR, time::OffsetDateTime::now_utc())
            .unwrap(),
        key_pem: key.serialize_pem(),
    };
    for (identity, named) in [(&admin, "admin alice"), (&cluster, "cluster edge-1")] {
        let mut c = client(addr, &ca_pem, Some(identity)).await.unwrap();
        let err = c.vote(vote_request(2)).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{named}: {err:?}");
        assert!(
            err.message().contains("needs a replica certificate") && err.message().contains(named),
            "{err:?}"
        );
        let err = c
            .append_entries(pb::RaftRequest {
                json: b"{}".to_vec(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{named}: {err:?}");
        let err = c
            .install_snapshot(pb::SnapshotChunk::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{named}: {err:?}");
    }

    // No client certificate: the handshake itself fails, the service never sees the call.
    let refused = match client(addr, &ca_pem, None).await {
        Err(_) => true,
        Ok(mut c) => c.vote(vote_request(2)).await.is_err(),
    };
    assert!(refused, "a client without a certificate was served");

    // A certificate from another CA is not trusted.
    let other = CertificateAuthority::generate("other ca").unwrap();
    let foreign = other
        .issue_replica_cert(2, &["localhost".to_string()], &[], HOUR)
        .unwrap();
    let refused = match client(addr, &ca_pem, Some(&foreign)).await {
        Err(_) => true,
        Ok(mut c) => c.vote(vote_request(2)).await.is_err(),
    };
    assert!(refused, "a replica certificate from another CA was served");

    // A replica may not campaign as another; speaking for itself, it reaches Raft.
    let tls = fleet.replica_tls(2);
    let replica2 = IssuedCert {
        cert_pem: tls.cert_pem,
        key_pem: tls.key_pem,
    };
    let mut c = client(addr, &ca_pem, Some(&replica2)).await.unwrap();
    let err = c.vote(vote_request(3)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message()
            .contains("replica 2 sent a message on behalf of replica 3"),
        "{err:?}"
    );
    let err = c
        .vote(pb::RaftRequest {
            json: b"not json".to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let reply = c.vote(vote_request(2)).await.unwrap().into_inner();
    let answer: Result<
        openraft::raft::VoteResponse<ReplicaId>,
        openraft::error::RaftError<ReplicaId>,
    > = serde_json::from_slice(&reply.json).unwrap();
    assert!(answer.is_ok(), "{answer:?}");
    fleet.shut_down().await;
}

/// Replicas on the real storage: the redb log and the hub store as the state machine.
type StoreFleet = Fleet<
    flotilla_hub::raft::LogStore,
    flotilla_hub::raft::StateMachineStore<flotilla_hub::store::StoreCommands>,
>;

fn store_fleet(config: Config, dir: &std::path::Path) -> StoreFleet {
    let dir = dir.to_path_buf();
    Fleet::with_storage(
        config,
        Box::new(move |id| {
            let at = dir.join(format!("replica-{id}"));
            std::fs::create_dir_all(&at).unwrap();
            let (machine, _store) =
                flotilla_hub::store::open_state_machine(&at.join("hub.redb")).unwrap();
            (
                flotilla_hub::raft::LogStore::open(&at.join("raft-log.redb")).unwrap(),
                machine,
            )
        }),
    )
}

/// The hub store of a running replica, read from its applied state.
fn store_of(fleet: &StoreFleet, id: ReplicaId) -> flotilla_hub::store::HubStore {
    flotilla_hub::store::HubStore::from_database(fleet.replicas[&id].state.database().clone())
        .unwrap()
}

async fn command(
    fleet: &mut StoreFleet,
    leader: ReplicaId,
    command: &flotilla_hub::store::Command,
) -> flotilla_hub::store::Outcome {
    let answer = fleet
        .propose(leader, &flotilla_hub::store::encode_command(command))
        .await;
    serde_json::from_slice(&answer).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_commands_replicate_survive_a_leader_loss_and_reach_a_new_replica_by_snapshot() {
    use flotilla_hub::store::{Command, Outcome, Refusal, Registration, TokenRecord};
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        snapshot_policy: SnapshotPolicy::LogsSinceLast(4),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..fast_config()
    };
    let mut fleet = store_fleet(config, dir.path());
    fleet.start_all(3).await;
    let leader = fleet.leader(None).await;

    let token = TokenRecord {
        labels: [("tier".to_string(), "edge".to_string())].into(),
        created_at: 1,
        expires_at: i64::MAX,
        used_by: None,
        name: None,
    };
    let register = |id: &str, name: &str| {
        Command::Register(Registration {
            token_hash: [7; 32],
            now: 10,
            id: id.into(),
            requested_name: name.into(),
            cert_expires_at: 100,
            capabilities: Default::default(),
        })
    };
    assert_eq!(
        command(
            &mut fleet,
            leader,
            &Command::PutToken {
                hash: [7; 32],
                record: token
            }
        )
        .await,
        Outcome::Done
    );
    assert!(matches!(
        command(&mut fleet, leader, &register("c-1", "edge-1")).await,
        Outcome::Cluster(_)
    ));
    // The token is single-use on every replica: the second registration is refused by all alike.
    assert_eq!(
        command(&mut fleet, leader, &register("c-2", "edge-2")).await,
        Outcome::Refused(Refusal::BadToken)
    );
    let clusters = store_of(&fleet, leader).clusters().unwrap();
    assert_eq!(clusters.len(), 1);
    for id in [1, 2, 3] {
        assert_eq!(
            store_of(&fleet, id).clusters().unwrap(),
            clusters,
            "replica {id}"
        );
    }

    // The leader goes; the other two elect a new one and the store goes on from the same state.
    fleet.stop(leader).await;
    let next = fleet.leader(Some(leader)).await;
    let relabelled = command(
        &mut fleet,
        next,
        &Command::LabelCluster {
            cluster: "edge-1".into(),
            set: [("ring".to_string(), "canary".to_string())].into(),
            remove: vec![],
        },
    )
    .await;
    let Outcome::Cluster(record) = relabelled else {
        panic!("{relabelled:?}");
    };
    assert_eq!(record.labels.len(), 2);
    for _ in 0..4 {
        command(
            &mut fleet,
            next,
            &Command::SetMeta {
                key: "hub_epoch".into(),
                value: 2,
            },
        )
        .await;
    }
    // A new replica joins after the purge: it can only catch up from a snapshot of the store.
    fleet.join_after_purge(next, 4, 1).await;
    let joined = store_of(&fleet, 4);
    assert_eq!(joined.clusters().unwrap(), vec![record]);
    assert_eq!(joined.meta("hub_epoch").unwrap(), Some(2));
    assert!(
        !joined.token_usable(&[7; 32], 0).unwrap(),
        "the token stays used"
    );
    fleet.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_writes_through_the_leader_and_a_follower_or_a_stopped_replica_says_why_not() {
    use flotilla_hub::store::{HubStore, StoreError};
    let dir = tempfile::tempdir().unwrap();
    let mut fleet = store_fleet(fast_config(), dir.path());
    fleet.start_all(3).await;
    let leader = fleet.leader(None).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let proposing = |id: ReplicaId| {
        store_of(&fleet, id).with_proposer(
            fleet.replicas[&id].raft.clone(),
            tokio::runtime::Handle::current(),
        )
    };
    let (on_leader, on_follower) = (proposing(leader), proposing(follower));
    // Writes block on Raft, so they run off the async workers, as the hub's do.
    let blocking = |store: HubStore, value: u64| {
        tokio::task::spawn_blocking(move || store.set_meta("hub_epoch", value))
    };

    blocking(on_leader.clone(), 7).await.unwrap().unwrap();
    // The leader answered once it applied the write; the follower shows it once it applied it too
    // (the leader's metrics may not show the new index yet when the answer arrives, so wait on the
    // follower's own state).
    let end = tokio::time::Instant::now() + WAIT;
    while on_follower.meta("hub_epoch").unwrap() != Some(7) {
        assert!(
            tokio::time::Instant::now() < end,
            "the follower never applied the write: reads are its applied state"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let refused = blocking(on_follower, 8).await.unwrap().unwrap_err();
    let leader_addr = fleet.replicas[&leader].addr.to_string();
    match &refused {
        StoreError::NotLeader {
            leader: Some(named),
            address: Some(addr),
        } => assert_eq!((*named, addr.as_str()), (leader, leader_addr.as_str())),
        other => panic!("{other:?}"),
    }
    assert!(
        refused
            .to_string()
            .contains(&format!("the leader is replica {leader} at {leader_addr}")),
        "{refused}"
    );

    fleet.stop(leader).await;
    let stopped = blocking(on_leader, 9).await.unwrap().unwrap_err();
    assert!(matches!(stopped, StoreError::Stopped), "{stopped:?}");
    assert!(stopped.to_string().contains("shutting down"), "{stopped}");
    fleet.shut_down().await;
}
