//! The hub as replica 1 of a one-node Raft cluster: a data directory written before the hub ran on
//! Raft opens with its data, and a restarted hub keeps its Raft log and applied index and serves the
//! same clusters. Each hub runs in the test process; reopening its files after it stopped also checks
//! that it left no store or log open behind.

use std::time::Duration;

use flotilla_common::cluster_state::{ClusterState, StateBody, StateHeader};
use flotilla_common::digest::Digest;
use flotilla_hub::config::HubConfig;
use flotilla_hub::datadir::DataDir;
use flotilla_hub::raft::{LogStore, ReplicaId};
use flotilla_hub::store::{HubStore, NewState, Registration, TokenRecord, open_state_machine};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::registration_client::RegistrationClient;
use openraft::LogId;
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftStateMachine};
use tokio_util::sync::CancellationToken;

#[path = "support/in_process_hub.rs"]
mod in_process_hub;

use in_process_hub::Hub;

/// What these tests ask of a hub besides the shared harness.
trait Clusters {
    async fn clusters(&self) -> Vec<pb::Cluster>;
}

impl Clusters for Hub {
    async fn clusters(&self) -> Vec<pb::Cluster> {
        let mut clusters = self
            .admin()
            .await
            .list_clusters(pb::ListClustersRequest {})
            .await
            .unwrap()
            .into_inner()
            .clusters;
        // Contact is the hub's memory of RPCs, not stored data.
        for c in &mut clusters {
            c.last_contact = 0;
        }
        clusters
    }
}

/// What a stopped hub's Raft files hold: the last log id, the last applied log id, and the log id of
/// the entry at `index` (if any).
struct RaftFiles {
    last_log: Option<LogId<ReplicaId>>,
    applied: Option<LogId<ReplicaId>>,
    entry: Option<LogId<ReplicaId>>,
}

async fn raft_files(data: &DataDir, index: u64) -> RaftFiles {
    let mut log = LogStore::open(&data.raft_log_path()).expect("the stopped hub closed its log");
    let state = log.get_log_state().await.unwrap();
    let entry = log.try_get_log_entries(index..=index).await.unwrap();
    let (mut machine, _store) =
        open_state_machine(&data.store_path()).expect("the stopped hub closed its store");
    let (applied, _membership) = machine.applied_state().await.unwrap();
    RaftFiles {
        last_log: state.last_log_id,
        applied,
        entry: entry.first().map(|e| e.log_id),
    }
}

fn signed_state(
    data: &DataDir,
    cluster_id: &str,
) -> flotilla_common::cluster_state::SignedClusterState {
    let keys = data.load_keys().unwrap();
    let now = 1_800_000_000;
    let header = StateHeader {
        cluster_id: cluster_id.into(),
        hub_epoch: 1,
        version: 1,
        prev_digest: None,
        issued_at: now,
        expires_at: now + 7 * 24 * 3600,
        body_digest: Digest::of(b""),
    };
    ClusterState::sign(header, &StateBody::default(), &keys.signing).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_from_before_raft_opens_with_its_clusters_and_states() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::new(dir.path().join("hub"));
    data.init().unwrap();
    // Written as the hub wrote its store before it ran on Raft: directly, no Raft files.
    let signed = signed_state(&data, "c-00000000000000aa");
    {
        let store = HubStore::open(&data.store_path()).unwrap();
        store.set_meta("hub_epoch", 1).unwrap();
        store
            .put_token(
                &[7; 32],
                &TokenRecord {
                    labels: [("tier".to_string(), "edge".to_string())].into(),
                    created_at: 0,
                    expires_at: i64::MAX,
                    used_by: None,
                    name: None,
                },
            )
            .unwrap();
        store
            .register(Registration {
                token_hash: [7; 32],
                now: 1,
                id: "c-00000000000000aa".into(),
                requested_name: "edge-1".into(),
                cert_expires_at: 0,
                capabilities: Default::default(),
            })
            .unwrap();
        store
            .commit_states(&[NewState {
                cluster_id: "c-00000000000000aa".into(),
                version: 1,
                signed: signed.clone(),
                blobs: vec![],
            }])
            .unwrap();
    }
    assert!(!data.raft_log_path().exists());

    let hub = Hub::start(&data).await;
    let clusters = hub.clusters().await;
    assert_eq!(clusters.len(), 1, "{clusters:?}");
    assert_eq!(clusters[0].id, "c-00000000000000aa");
    assert_eq!(clusters[0].name, "edge-1");
    assert_eq!(
        clusters[0].labels.get("tier").map(String::as_str),
        Some("edge")
    );
    assert!(clusters[0].desired_version >= 1, "{clusters:?}");
    // Writes go on through Raft, onto the same data.
    let labelled = hub
        .admin()
        .await
        .label_cluster(pb::LabelClusterRequest {
            cluster: "edge-1".into(),
            set: [("ring".to_string(), "canary".to_string())].into(),
            remove: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(labelled.labels.len(), 2);
    hub.stop().await;

    let files = raft_files(&data, 0).await;
    assert!(files.applied.is_some(), "the hub applied its Raft entries");
    let (_, store) = open_state_machine(&data.store_path()).unwrap();
    assert_eq!(store.state("c-00000000000000aa", 1).unwrap(), Some(signed));
    let cluster = store.find_cluster("edge-1").unwrap().unwrap();
    assert_eq!(
        cluster.labels.get("ring").map(String::as_str),
        Some("canary")
    );
    assert!(
        !store.token_usable(&[7; 32], 0).unwrap(),
        "the token stays used"
    );
    assert_eq!(store.meta("hub_epoch").unwrap(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_hub_keeps_its_raft_log_and_applied_index_and_serves_the_same_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::new(dir.path().join("hub"));
    data.init().unwrap();

    let hub = Hub::start(&data).await;
    let token = hub
        .admin()
        .await
        .create_token(pb::CreateTokenRequest {
            ttl_seconds: 600,
            labels: [("tier".to_string(), "edge".to_string())].into(),
            name: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec();
    RegistrationClient::new(hub.channel(None).await)
        .register(pb::RegisterRequest {
            bootstrap_token: token,
            csr_der: csr,
            requested_name: "edge-1".into(),
            labels: Default::default(),
            capabilities: None,
        })
        .await
        .unwrap();
    // The controller gives the new cluster its first (empty) state: wait for it, so the restarted
    // hub is compared with a settled one.
    let served = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let clusters = hub.clusters().await;
            if clusters.iter().all(|c| c.desired_version == 1) {
                return clusters;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the new cluster gets its first state");
    assert_eq!(served.len(), 1);
    hub.stop().await;
    let logged = raft_files(&data, 0).await;
    let applied = logged.applied.expect("the writes were applied");
    assert_eq!(
        logged.last_log,
        Some(applied),
        "everything logged was applied"
    );
    let before = raft_files(&data, applied.index).await;
    assert_eq!(before.entry, Some(applied));
    assert!(
        applied.index >= 3,
        "membership, epoch, token, registration: {applied}"
    );

    let hub = Hub::start(&data).await;
    assert_eq!(hub.clusters().await, served);
    hub.stop().await;
    let after = raft_files(&data, applied.index).await;
    assert_eq!(
        after.entry,
        Some(applied),
        "the log is the same log, not a new cluster's"
    );
    let reapplied = after.applied.unwrap();
    assert!(reapplied >= applied, "{reapplied} after {applied}");
    assert!(reapplied.leader_id.term >= applied.leader_id.term);
    let (_, store) = open_state_machine(&data.store_path()).unwrap();
    assert_eq!(store.clusters().unwrap().len(), 1);
}

/// A hub whose store or Raft log is damaged refuses to start, naming the file, and never serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_truncated_store_or_log_is_refused_at_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::new(dir.path().join("hub"));
    data.init().unwrap();
    // One run writes both files.
    let hub = Hub::start(&data).await;
    hub.shutdown.cancel();
    hub.server.await.unwrap().unwrap();
    let files = [data.store_path(), data.raft_log_path()];
    for path in &files {
        let original = std::fs::read(path).unwrap();
        let mut damaged = original.clone();
        for b in damaged.iter_mut().skip(original.len() / 3).take(4096) {
            *b ^= 0xa5;
        }
        let cases = [
            ("damaged", damaged),
            ("truncated", original[..original.len() / 2].to_vec()),
        ];
        for (what, bytes) in cases {
            std::fs::write(path, &bytes).unwrap();
            let (listening_tx, mut listening_rx) = tokio::sync::oneshot::channel();
            let run = flotilla_hub::server::run(
                data.clone(),
                HubConfig::parse("listen: 127.0.0.1:0\n").unwrap(),
                CancellationToken::new(),
                move |a| {
                    let _ = listening_tx.send(a);
                },
            );
            let err = tokio::time::timeout(Duration::from_secs(60), run)
                .await
                .unwrap_or_else(|_| panic!("a hub on a {what} {} kept running", path.display()))
                .expect_err("a damaged file must not start");
            assert!(
                listening_rx.try_recv().is_err(),
                "a hub on a {what} file listened"
            );
            let message = err.to_string();
            assert!(
                message.contains(&path.display().to_string()),
                "{what} {}: {message}",
                path.display()
            );
            assert!(!message.contains("{ "), "not a Debug dump: {message}");
        }
        std::fs::write(path, &original).unwrap();
    }
    // With both files back, the hub starts again.
    let hub = Hub::start(&data).await;
    hub.shutdown.cancel();
    hub.server.await.unwrap().unwrap();
}

/// A port free a moment ago, for a peer listener whose advertised address must be known first.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The address the stopped hub's applied membership records for replica 1.
async fn recorded_address(data: &DataDir) -> Option<String> {
    let (mut machine, _store) = open_state_machine(&data.store_path()).unwrap();
    let (_applied, membership) = machine.applied_state().await.unwrap();
    membership.membership().get_node(&1).map(|n| n.addr.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replication_set_the_hub_serves_the_peer_channel_and_records_its_advertised_address() {
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::new(dir.path().join("hub"));
    data.init().unwrap();
    assert_eq!(data.replica_id().unwrap(), 1);
    let config = |port: u16| {
        HubConfig::parse(&format!(
            "listen: 127.0.0.1:0\nreplication: {{listen: 127.0.0.1:{port}, advertise: 127.0.0.1:{port}}}\n"
        ))
        .unwrap()
    };
    let first = free_port();
    let hub = Hub::start_with(&data, config(first)).await;
    tokio::net::TcpStream::connect(("127.0.0.1", first))
        .await
        .expect("the peer listener accepts");
    hub.stop().await;
    assert_eq!(
        recorded_address(&data).await.as_deref(),
        Some(format!("127.0.0.1:{first}").as_str())
    );

    // Moved: the restarted replica records its new address through Raft.
    let second = free_port();
    let hub = Hub::start_with(&data, config(second)).await;
    assert_eq!(hub.clusters().await, vec![]);
    hub.stop().await;
    assert_eq!(
        recorded_address(&data).await.as_deref(),
        Some(format!("127.0.0.1:{second}").as_str())
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", second))
            .await
            .is_err(),
        "the stopped hub's peer listener is closed"
    );
}
