//! Component test (one process, real gRPC over mTLS on loopback): what each
//! kind of certificate can and cannot do against a running hub.

use std::time::Duration;

use flotilla_common::cluster_state::{ClusterState, SignedClusterState, StateBody, StateHeader};
use flotilla_common::digest::Digest;
use flotilla_hub::config::HubConfig;
use flotilla_hub::datadir::DataDir;
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::admin_client::AdminClient;
use flotilla_proto::v1::agent_client::AgentClient;
use flotilla_proto::v1::registration_client::RegistrationClient;
use flotilla_tests::fixture::GitRepo;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

async fn channel(url: &str, ca: &str, identity: Option<(&str, &str)>) -> Channel {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(url.to_string())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

struct Registered {
    id: String,
    cert: String,
    key: String,
}

async fn register(url: &str, ca: &str, admin: &mut AdminClient<Channel>, name: &str) -> Registered {
    let token = admin
        .create_token(pb::CreateTokenRequest {
            ttl_seconds: 60,
            labels: Default::default(),
            name: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let (key, csr) = flotilla_agent::identity::new_key_and_csr(name).unwrap();
    let mut reg = RegistrationClient::new(channel(url, ca, None).await);
    let resp = reg
        .register(pb::RegisterRequest {
            bootstrap_token: token,
            csr_der: csr,
            requested_name: name.into(),
            labels: Default::default(),
            capabilities: None,
        })
        .await
        .unwrap()
        .into_inner();
    Registered {
        id: resp.cluster_id,
        cert: resp.certificate_pem,
        key,
    }
}

async fn first_state(agent: &mut AgentClient<Channel>) -> (StateHeader, StateBody) {
    let state = wait_state(agent, 1).await;
    (state.header, state.body)
}

async fn fetch(agent: &mut AgentClient<Channel>, digest: Digest) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = agent
        .fetch_objects(pb::FetchObjectsRequest {
            digests: vec![digest.0.to_vec()],
        })
        .await?
        .into_inner();
    let blob = stream.message().await?.expect("one blob");
    Ok(blob.data)
}

/// A hub running in this process on a loopback port, with its admin bundle read.
struct TestHub {
    url: String,
    ca: String,
    admin_cert: String,
    admin_key: String,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<Result<(), flotilla_hub::server::HubError>>,
}

impl TestHub {
    /// Initialises a data directory under `dir` and runs a hub with `config` (hub.yaml text).
    async fn start(dir: &std::path::Path, config: &str) -> TestHub {
        let data = DataDir::new(dir.join("hub"));
        data.init().unwrap();
        let config = HubConfig::parse(config).unwrap();
        let shutdown = CancellationToken::new();
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(flotilla_hub::server::run(
            data.clone(),
            config,
            shutdown.clone(),
            move |a| {
                let _ = addr_tx.send(a);
            },
        ));
        let url = format!("https://{}", addr_rx.await.unwrap());
        let read = |f: &str| std::fs::read_to_string(data.admin_dir().join(f)).unwrap();
        TestHub {
            url,
            ca: read("ca.pem"),
            admin_cert: read("admin.pem"),
            admin_key: read("admin-key.pem"),
            shutdown,
            server,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_scope_every_call() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(&dir.path().join("repo"));
    repo.write("flotilla.yaml", "apps:\n  - name: app\n    path: app\n")
        .write(
            "app/cm.yaml.j2",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: who\ndata:\n  cluster: \"{{ cluster.name }}\"\n",
        );
    repo.commit("one");

    let hub = TestHub::start(
        dir.path(),
        &format!(
            "listen: 127.0.0.1:0\nsources:\n  - name: main\n    url: {}\n    interval: 100ms\n",
            repo.url()
        ),
    )
    .await;
    let TestHub {
        url,
        ca,
        admin_cert,
        admin_key,
        shutdown,
        server,
    } = hub;
    let admin_channel = channel(&url, &ca, Some((&admin_cert, &admin_key))).await;
    let mut admin = AdminClient::new(admin_channel.clone());

    let a = register(&url, &ca, &mut admin, "alpha").await;
    let b = register(&url, &ca, &mut admin, "beta").await;
    let mut agent_a = AgentClient::new(channel(&url, &ca, Some((&a.cert, &a.key))).await);
    let mut agent_b = AgentClient::new(channel(&url, &ca, Some((&b.cert, &b.key))).await);

    // Each cluster gets its own state, identified only by its certificate.
    let (header_a, body_a) = first_state(&mut agent_a).await;
    let (header_b, body_b) = first_state(&mut agent_b).await;
    assert_eq!(header_a.cluster_id, a.id);
    assert_eq!(header_b.cluster_id, b.id);
    let digest_a = body_a.apps[0].objects[0].digest;
    let digest_b = body_b.apps[0].objects[0].digest;
    assert_ne!(
        digest_a, digest_b,
        "per-cluster templates render different objects"
    );

    // Own objects: yes. Another cluster's: not found, as if unknown.
    let bytes = fetch(&mut agent_a, digest_a).await.unwrap();
    assert_eq!(Digest::of(&bytes), digest_a);
    let err = fetch(&mut agent_a, digest_b).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // A cluster certificate cannot administer; an admin certificate is no cluster.
    let mut admin_as_a = AdminClient::new(channel(&url, &ca, Some((&a.cert, &a.key))).await);
    let err = admin_as_a
        .list_clusters(pb::ListClustersRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = admin_as_a
        .label_cluster(pb::LabelClusterRequest {
            cluster: a.id.clone(),
            set: [("tier".to_string(), "payments".to_string())].into(),
            remove: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = admin_as_a
        .delete_cluster(pb::DeleteClusterRequest {
            cluster: b.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut agent_as_admin = AgentClient::new(admin_channel);
    let (_, csr) = flotilla_agent::identity::new_key_and_csr("admin").unwrap();
    let err = agent_as_admin
        .renew(pb::RenewRequest { csr_der: csr })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = agent_as_admin
        .get_cluster_state(pb::GetClusterStateRequest {
            version: 1,
            have_version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // No client certificate: only Registration answers.
    let mut anonymous = AgentClient::new(channel(&url, &ca, None).await);
    let err = anonymous
        .watch(pb::WatchRequest { have_version: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // Status reports are idempotent by seq and acknowledged once durable.
    let report = |seq| pb::StatusReport {
        seq,
        observed_at: 1,
        applied_version: seq,
        ..Default::default()
    };
    let outbound = tokio_stream::iter(vec![report(7), report(7), report(3)]);
    let mut acks = agent_a.report_status(outbound).await.unwrap().into_inner();
    let mut seen = Vec::new();
    while let Some(ack) = acks.message().await.unwrap() {
        seen.push(ack.seq);
    }
    assert_eq!(seen, [7, 7, 3]);
    let clusters = admin
        .list_clusters(pb::ListClustersRequest {})
        .await
        .unwrap()
        .into_inner()
        .clusters;
    let alpha = clusters.iter().find(|c| c.id == a.id).unwrap();
    assert_eq!(
        alpha.applied_version, 7,
        "an older seq does not overwrite a newer report"
    );

    shutdown.cancel();
    server.await.unwrap().unwrap();
}

/// The cluster's ClusterState `version`, decoded, once the hub has issued it.
async fn wait_state(agent: &mut AgentClient<Channel>, version: u64) -> ClusterState {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match agent
            .get_cluster_state(pb::GetClusterStateRequest {
                version,
                have_version: 0,
            })
            .await
        {
            Ok(resp) => {
                let s = resp.into_inner().state.unwrap();
                let signed = SignedClusterState {
                    header: s.header,
                    signature: s.signature,
                    body: s.body,
                };
                return signed.decode_unverified().unwrap();
            }
            Err(status) if status.code() == Code::NotFound => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "version {version} not issued within 60 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(status) => panic!("{status}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_skip_nothing_held_and_pruned_versions_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let repo = GitRepo::init(&dir.path().join("repo"));
    let cm = |v: u64| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\ndata:\n  v: \"{v}\"\n")
    };
    repo.write("flotilla.yaml", "apps:\n  - name: app\n    path: app\n")
        .write("app/cm.yaml", &cm(1));
    repo.commit("one");
    let hub = TestHub::start(dir.path(), &format!(
        "listen: 127.0.0.1:0\nsources:\n  - name: main\n    url: {}\n    interval: 100ms\nrpc: {{stateRetention: 2}}\n",
        repo.url()
    )).await;
    let TestHub {
        url,
        ca,
        admin_cert,
        admin_key,
        shutdown,
        server,
    } = hub;
    let mut admin = AdminClient::new(channel(&url, &ca, Some((&admin_cert, &admin_key))).await);
    let a = register(&url, &ca, &mut admin, "alpha").await;
    let mut agent = AgentClient::new(channel(&url, &ca, Some((&a.cert, &a.key))).await);

    let first = wait_state(&mut agent, 1).await.body.apps[0].objects[0].digest;
    for v in 2..=4 {
        repo.write("app/cm.yaml", &cm(v));
        repo.commit(&format!("v{v}"));
        wait_state(&mut agent, v).await;
    }
    let get = |have_version| pb::GetClusterStateRequest {
        version: 4,
        have_version,
    };
    // Holding nothing: no chain at all.
    let r = agent.get_cluster_state(get(0)).await.unwrap().into_inner();
    assert!(r.chain.is_empty() && !r.chain_unavailable, "{r:?}");
    // Holding version 2 (pruned itself, but 3 is kept): the one header between.
    let r = agent.get_cluster_state(get(2)).await.unwrap().into_inner();
    assert_eq!(r.chain.len(), 1);
    assert!(!r.chain_unavailable);
    // Holding version 1: version 2 is pruned, so the hub says the chain is unavailable.
    let r = agent.get_cluster_state(get(1)).await.unwrap().into_inner();
    assert!(r.chain.is_empty() && r.chain_unavailable, "{r:?}");
    // Version 1 and the object only it referenced are gone.
    let err = agent
        .get_cluster_state(pb::GetClusterStateRequest {
            version: 1,
            have_version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        fetch(&mut agent, first).await.unwrap_err().code(),
        Code::NotFound
    );

    shutdown.cancel();
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registering_agent_cannot_choose_its_labels() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(dir.path(), "listen: 127.0.0.1:0\n").await;
    let TestHub {
        url,
        ca,
        admin_cert,
        admin_key,
        shutdown,
        server,
    } = hub;
    let mut admin = AdminClient::new(channel(&url, &ca, Some((&admin_cert, &admin_key))).await);
    let token = admin
        .create_token(pb::CreateTokenRequest {
            ttl_seconds: 60,
            labels: [("env".to_string(), "dev".to_string())].into(),
            name: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let (_, csr) = flotilla_agent::identity::new_key_and_csr("edge").unwrap();
    let mut reg = RegistrationClient::new(channel(&url, &ca, None).await);
    let request = |labels: &[(&str, &str)]| pb::RegisterRequest {
        bootstrap_token: token.clone(),
        csr_der: csr.clone(),
        requested_name: "edge".into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        capabilities: None,
    };
    let err = reg
        .register(request(&[("tier", "payments")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("cannot choose its labels"),
        "{}",
        err.message()
    );
    assert!(err.message().contains("tier"), "{}", err.message());

    // The refusal did not use the token; the cluster gets the token's labels and no others.
    let id = reg
        .register(request(&[]))
        .await
        .unwrap()
        .into_inner()
        .cluster_id;
    let cluster = admin
        .get_cluster(pb::GetClusterRequest { cluster: id })
        .await
        .unwrap()
        .into_inner()
        .cluster
        .unwrap();
    assert_eq!(
        cluster.labels,
        [("env".to_string(), "dev".to_string())].into()
    );
    shutdown.cancel();
    server.await.unwrap().unwrap();
}
