//! The agent against a stand-in hub over real gRPC and (m)TLS on loopback, in one process:
//! registration, Watch → GetClusterState → FetchObjects → apply, status reports and acks,
//! rejection reporting, graceful shutdown, and restarting with no hub at all.
//!
//! The stand-in speaks the flotilla.v1 contract and nothing more; end-to-end tests against the
//! real hub live in `tests/`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use flotilla_agent::config::{AgentConfig, Backoff, LogFormat, RunArgs};
use flotilla_common::canonical::to_canonical_json;
use flotilla_common::cluster_state::{
    AppState, ClusterState, DriftMode, ObjectEntry, SignedClusterState, StateBody, StateHeader,
};
use flotilla_common::digest::Digest;
use flotilla_common::object::ObjectId;
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::agent_server::{Agent, AgentServer};
use flotilla_proto::v1::registration_server::{Registration, RegistrationServer};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, IsCa, Issuer, KeyPair,
    SanType,
};
use tokio::sync::{broadcast, watch};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

const CLUSTER: &str = "c-00000000000000aa";
const TOKEN: &str = "flt_good-bootstrap-token";
/// Generous: a loaded CI machine with two cores.
const DEADLINE: Duration = Duration::from_secs(30);

/// An app name and its objects, as `Hub::publish` takes them.
type AppObjects<'a> = (&'a str, Vec<&'a (ObjectEntry, Vec<u8>)>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// What the stand-in hub holds.
#[derive(Default)]
struct Published {
    states: BTreeMap<u64, SignedClusterState>,
    blobs: HashMap<Digest, Vec<u8>>,
}

#[derive(Clone)]
struct FakeHub {
    ca: Arc<Issuer<'static, KeyPair>>,
    published: Arc<Mutex<Published>>,
    latest: Arc<Mutex<Option<pb::Announce>>>,
    announce: broadcast::Sender<pb::Announce>,
    /// Versions asked for with GetClusterState, in order.
    gets: Arc<Mutex<Vec<u64>>>,
    reports: watch::Sender<Vec<pb::StatusReport>>,
}

#[tonic::async_trait]
impl Registration for FakeHub {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        assert!(
            request.peer_certs().is_none_or(|c| c.is_empty()),
            "registration presents no client certificate"
        );
        let req = request.into_inner();
        if req.bootstrap_token != TOKEN {
            return Err(Status::permission_denied(
                "bootstrap token is unknown, already used or expired",
            ));
        }
        let csr = CertificateSigningRequestParams::from_der(&req.csr_der.into())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://flotilla/cluster/{CLUSTER}")
                .try_into()
                .unwrap(),
        )];
        let cert = params.signed_by(&csr.public_key, &self.ca).unwrap();
        Ok(Response::new(pb::RegisterResponse {
            cluster_id: CLUSTER.into(),
            certificate_pem: cert.pem(),
            ca_pem: String::new(),
            signing_public_key: hub_key().verifying_key().to_bytes().to_vec(),
        }))
    }
}

fn require_client_cert<T>(request: &Request<T>) -> Result<(), Status> {
    match request.peer_certs() {
        Some(certs) if !certs.is_empty() => Ok(()),
        _ => Err(Status::unauthenticated("a cluster certificate is required")),
    }
}

#[tonic::async_trait]
impl Agent for FakeHub {
    type WatchStream = BoxStream<pb::Announce>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        require_client_cert(&request)?;
        let have = request.into_inner().have_version;
        // Subscribe before reading the latest, so nothing published in between is missed.
        let live = BroadcastStream::new(self.announce.subscribe()).filter_map(Result::ok);
        let latest = self.latest.lock().unwrap().clone();
        let initial = tokio_stream::iter(latest.filter(|a| a.version > have));
        Ok(Response::new(Box::pin(initial.chain(live).map(Ok))))
    }

    async fn get_cluster_state(
        &self,
        request: Request<pb::GetClusterStateRequest>,
    ) -> Result<Response<pb::GetClusterStateResponse>, Status> {
        require_client_cert(&request)?;
        let req = request.into_inner();
        self.gets.lock().unwrap().push(req.version);
        let published = self.published.lock().unwrap();
        let state = published
            .states
            .get(&req.version)
            .ok_or_else(|| Status::not_found("no such version"))?;
        let chain = published
            .states
            .range(req.have_version + 1..req.version)
            .map(|(_, s)| pb::SignedHeader {
                header: s.header.clone(),
                signature: s.signature.clone(),
            })
            .collect();
        Ok(Response::new(pb::GetClusterStateResponse {
            state: Some(pb::SignedClusterState {
                header: state.header.clone(),
                signature: state.signature.clone(),
                body: state.body.clone(),
            }),
            chain,
        }))
    }

    type FetchObjectsStream = BoxStream<pb::Blob>;

    async fn fetch_objects(
        &self,
        request: Request<pb::FetchObjectsRequest>,
    ) -> Result<Response<Self::FetchObjectsStream>, Status> {
        require_client_cert(&request)?;
        let published = self.published.lock().unwrap();
        let blobs: Vec<Result<pb::Blob, Status>> = request
            .into_inner()
            .digests
            .into_iter()
            .map(|d| {
                let digest = Digest::from_slice(&d).unwrap();
                let data = published.blobs.get(&digest).cloned().unwrap();
                Ok(pb::Blob { digest: d, data })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(blobs))))
    }

    type ReportStatusStream = BoxStream<pb::Ack>;

    async fn report_status(
        &self,
        request: Request<Streaming<pb::StatusReport>>,
    ) -> Result<Response<Self::ReportStatusStream>, Status> {
        require_client_cert(&request)?;
        let reports = self.reports.clone();
        let acks = request.into_inner().map(move |report| {
            let report = report?;
            let seq = report.seq;
            reports.send_modify(|all| all.push(report));
            Ok(pb::Ack { seq })
        });
        Ok(Response::new(Box::pin(acks)))
    }
}

fn hub_key() -> SigningKey {
    SigningKey::from_bytes(&[3; 32])
}

fn config_map(name: &str, value: &str) -> (ObjectEntry, Vec<u8>) {
    let bytes = to_canonical_json(&serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"},
        "data": {"value": value},
    }));
    let entry = ObjectEntry {
        id: ObjectId {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("default".into()),
            name: name.into(),
        },
        digest: Digest::of(&bytes),
        size: bytes.len() as u64,
    };
    (entry, bytes)
}

struct Hub {
    addr: SocketAddr,
    ca_pem: String,
    hub: FakeHub,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl Hub {
    async fn start() -> Hub {
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let ca_key = KeyPair::generate().unwrap();
        let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
        let ca = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let mut server_params = CertificateParams::new(vec!["localhost".into()]).unwrap();
        server_params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let server_pem = server_params.signed_by(&server_key, &ca).unwrap().pem();

        let hub = FakeHub {
            ca: Arc::new(ca),
            published: Arc::default(),
            latest: Arc::default(),
            announce: broadcast::channel(16).0,
            gets: Arc::default(),
            reports: watch::channel(Vec::new()).0,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(server_pem, server_key.serialize_pem()))
            .client_ca_root(Certificate::from_pem(&ca_pem))
            .client_auth_optional(true);
        let stop = CancellationToken::new();
        let server = Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(RegistrationServer::new(hub.clone()))
            .add_service(AgentServer::new(hub.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            );
        let server = tokio::spawn(async move { server.await.unwrap() });
        Hub {
            addr,
            ca_pem,
            hub,
            stop,
            server,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// Publishes the next version with these apps, signed by `key`, and announces it.
    fn publish(&self, key: &SigningKey, apps: Vec<AppObjects<'_>>) -> u64 {
        let mut published = self.hub.published.lock().unwrap();
        let (version, prev) = match published.states.last_key_value() {
            Some((v, s)) => (v + 1, Some(s.digest())),
            None => (1, None),
        };
        let mut body = StateBody::default();
        for (name, objects) in apps {
            for (entry, bytes) in &objects {
                published.blobs.insert(entry.digest, bytes.clone());
            }
            body.apps.push(AppState {
                name: name.into(),
                source: "main".into(),
                commit: format!("commit-{version}"),
                release_id: "r".into(),
                depends_on: vec![],
                drift: DriftMode::Correct,
                prune: true,
                prune_protect: vec![],
                objects: objects.iter().map(|(e, _)| e.clone()).collect(),
            });
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let header = StateHeader {
            cluster_id: CLUSTER.into(),
            hub_epoch: 1,
            version,
            prev_digest: prev,
            issued_at: now,
            expires_at: now + 3600,
            body_digest: Digest::of(b""),
        };
        let signed = ClusterState::sign(header, &body, key).unwrap();
        let announce = pb::Announce {
            version,
            digest: signed.digest().0.to_vec(),
            heartbeat: false,
        };
        published.states.insert(version, signed);
        drop(published);
        *self.hub.latest.lock().unwrap() = Some(announce.clone());
        let _ = self.hub.announce.send(announce);
        version
    }

    /// Sends a keep-alive repeating `version`, without a digest, as the real hub does.
    fn heartbeat(&self, version: u64) {
        let _ = self.hub.announce.send(pb::Announce {
            version,
            digest: Vec::new(),
            heartbeat: true,
        });
    }

    /// Waits until a received report satisfies `check`.
    async fn report(
        &self,
        what: &str,
        check: impl Fn(&pb::StatusReport) -> bool,
    ) -> pb::StatusReport {
        let mut rx = self.hub.reports.subscribe();
        tokio::time::timeout(DEADLINE, rx.wait_for(|all| all.iter().any(&check)))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap()
            .iter()
            .find(|r| check(r))
            .cloned()
            .unwrap()
    }

    async fn stop(self) {
        self.stop.cancel();
        self.server.await.unwrap();
    }
}

struct TestAgent {
    dir: PathBuf,
    token_file: PathBuf,
    ca_file: PathBuf,
    objects: PathBuf,
}

impl TestAgent {
    fn new(dir: &Path, ca_pem: &str, token: &str) -> TestAgent {
        let agent = TestAgent {
            dir: dir.join("agent"),
            token_file: dir.join("token"),
            ca_file: dir.join("ca.pem"),
            objects: dir.join("objects"),
        };
        std::fs::write(&agent.token_file, format!("{token}\n")).unwrap();
        std::fs::write(&agent.ca_file, ca_pem).unwrap();
        agent
    }

    fn config(&self, hub: &str) -> AgentConfig {
        let args = RunArgs {
            hub: hub.into(),
            ca: self.ca_file.clone(),
            token_file: self.token_file.clone(),
            data_dir: self.dir.clone(),
            target: format!("dir:{}", self.objects.display()),
            name: Some("edge-1".into()),
            deletion_budget: 50,
            override_deletion_budget: false,
            log_format: LogFormat::Text,
        };
        let mut config = AgentConfig::from_args(args, "unused").unwrap();
        config.backoff = Backoff {
            min: Duration::from_millis(20),
            max: Duration::from_millis(200),
        };
        config
    }

    fn start(&self, hub: &str) -> Running {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(flotilla_agent::run(self.config(hub), shutdown.clone()));
        Running { shutdown, task }
    }

    fn object(&self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(
            self.objects
                .join(format!("core_v1_ConfigMap_default_{name}.json")),
        )
        .ok()
    }

    /// Polls the target directory (the only thing to watch here) until `check` holds.
    async fn wait_for_object(&self, name: &str, want: bool) {
        tokio::time::timeout(DEADLINE, async {
            while self.object(name).is_some() != want {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for object {name} present={want}"));
    }
}

struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), flotilla_agent::AgentError>>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the agent stops promptly on shutdown")
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_follows_reports_and_survives_restarts_without_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start().await;
    let agent = TestAgent::new(dir.path(), &hub.ca_pem, TOKEN);
    let running = agent.start(&hub.url());

    let (a, b, c) = (
        config_map("a", "1"),
        config_map("b", "2"),
        config_map("c", "3"),
    );
    let v1 = hub.publish(&hub_key(), vec![("web", vec![&a, &b])]);
    let report = hub
        .report("version 1 applied", |r| r.applied_version == v1)
        .await;
    assert_eq!(report.apps.len(), 1);
    assert_eq!(
        (report.apps[0].phase.as_str(), report.apps[0].version),
        ("applied", v1)
    );
    assert_eq!(agent.object("a").unwrap(), a.1);
    assert_eq!(agent.object("b").unwrap(), b.1);

    // Registered: the token file is never needed again.
    std::fs::remove_file(&agent.token_file).unwrap();
    let v2 = hub.publish(&hub_key(), vec![("web", vec![&a, &c])]);
    hub.report("version 2 applied", |r| r.applied_version == v2)
        .await;
    assert!(agent.object("b").is_none(), "b left the app and is pruned");
    assert_eq!(agent.object("c").unwrap(), c.1);

    // A state signed by another key is refused, reported, and changes nothing.
    let evil = SigningKey::from_bytes(&[66; 32]);
    let x = config_map("x", "evil");
    let v3 = hub.publish(&evil, vec![("web", vec![&x])]);
    let report = hub
        .report("the rejection", |r| !r.rejection.is_empty())
        .await;
    assert!(
        report.rejection.contains("signature"),
        "{}",
        report.rejection
    );
    assert_eq!(report.applied_version, v2);
    assert!(agent.object("x").is_none());
    assert_eq!(agent.object("a").unwrap(), a.1);

    // Heartbeats repeating the refused version do not fetch it again. Version 4 is signed
    // properly but chains through the forged 3, so it is refused too; by the time that is
    // reported, the heartbeat before it has been handled.
    hub.heartbeat(v3);
    let v4 = hub.publish(&hub_key(), vec![("web", vec![&a, &c])]);
    let mut reports = hub.hub.reports.subscribe();
    tokio::time::timeout(
        DEADLINE,
        reports.wait_for(|all| all.iter().filter(|r| !r.rejection.is_empty()).count() == 2),
    )
    .await
    .expect("version 4 refused")
    .unwrap();
    assert_eq!(*hub.hub.gets.lock().unwrap(), [v1, v2, v3, v4]);
    assert_eq!(agent.object("a").unwrap(), a.1);
    running.stop().await;

    // With the hub gone, a restarted agent restores its state from disk and deletes nothing.
    let url = hub.url();
    hub.stop().await;
    std::fs::remove_file(agent.objects.join("core_v1_ConfigMap_default_a.json")).unwrap();
    let running = agent.start(&url);
    agent.wait_for_object("a", true).await;
    assert_eq!(agent.object("c").unwrap(), c.1);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_stops_the_agent_with_the_hubs_message() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start().await;
    let agent = TestAgent::new(dir.path(), &hub.ca_pem, "flt_wrong-token");
    let result = tokio::time::timeout(
        DEADLINE,
        flotilla_agent::run(agent.config(&hub.url()), CancellationToken::new()),
    )
    .await
    .expect("registration fails promptly");
    let err = result.unwrap_err();
    let text = flotilla_agent::error::error_chain(&err);
    assert!(text.contains("unknown, already used or expired"), "{text}");
    assert!(
        !text.contains("flt_wrong-token"),
        "the token is not in the error: {text}"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_waits_for_a_hub_that_is_not_up_yet_and_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    drop(listener);
    let hub = Hub::start().await;
    let agent = TestAgent::new(dir.path(), &hub.ca_pem, TOKEN);
    let running = agent.start(&url);
    // Shutdown during the retries ends the agent cleanly, unregistered.
    running.stop().await;
    let store = flotilla_agent::store::Store::open(&agent.dir.join("agent.redb"), 10).unwrap();
    assert_eq!(store.identity().unwrap(), None);
    hub.stop().await;
}
