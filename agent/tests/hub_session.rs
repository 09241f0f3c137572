//! The agent against the real hub, both in this process, over gRPC and (m)TLS on loopback, with
//! a Git repository made by the `git` binary as the hub's source: registration with a token and
//! no certificate, following commits (writes and prunes), restarts without the token file or
//! without the hub, status reports that wait for the hub, refused tokens, and a hub that comes up
//! after the agent.
//!
//! What only a misbehaving hub can send is tested against `sync::offer` and the Watch handling in
//! `agent/src/sync/tests.rs`: a forged or foreign signature and a chain through a forged header
//! (`bad_offers_store_nothing_apply_nothing_and_are_reported`), withheld objects
//! (`a_hub_that_withholds_objects_is_an_error_not_a_rejection`) and heartbeats repeating a
//! refused version (`announcements_of_the_held_or_the_refused_version_ask_the_hub_nothing`). A
//! hub whose signing key was replaced is in `tests/tests/e2e.rs`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_agent::config::{AgentConfig, Backoff, LogFormat, RunArgs};
use flotilla_agent::store::Store;
use flotilla_hub::config::HubConfig;
use flotilla_hub::datadir::DataDir;
use flotilla_hub::server::HubError;
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::admin_client::AdminClient;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Generous: a loaded CI machine with two cores.
const DEADLINE: Duration = Duration::from_secs(30);
/// How often a condition is looked at again.
const POLL: Duration = Duration::from_millis(20);

const MANIFEST: &str = "apps:\n  - name: web\n    path: web\n    namespace: demo\n";

/// A ConfigMap manifest for the repository.
fn config_map(name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: \"{value}\"\n"
    )
}

/// Waits until `probe` yields something, or fails naming `what` at the deadline.
async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// A loopback address nothing listens on (until someone binds it).
fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A Git repository in a temporary directory, driven with the `git` binary.
struct GitRepo {
    path: PathBuf,
}

impl GitRepo {
    /// A repository on branch `main` holding the manifest and these files, committed.
    fn init(path: &Path, files: &[(&str, &str)]) -> (GitRepo, String) {
        std::fs::create_dir_all(path).unwrap();
        let repo = GitRepo { path: path.into() };
        repo.git(&["init", "-q", "-b", "main"]);
        repo.write("flotilla.yaml", MANIFEST);
        for (rel, text) in files {
            repo.write(rel, text);
        }
        let commit = repo.commit("initial");
        (repo, commit)
    }

    fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.path)
            .args([
                "-c",
                "user.name=Test",
                "-c",
                "user.email=test@flotilla.invalid",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn write(&self, rel: &str, text: &str) -> &Self {
        let path = self.path.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        self
    }

    fn remove(&self, rel: &str) -> &Self {
        std::fs::remove_file(self.path.join(rel)).unwrap();
        self
    }

    /// Commits everything; returns the commit id.
    fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }
}

/// A hub's data directory and source, not running.
struct StoppedHub {
    data: DataDir,
    source: String,
    /// More hub.yaml lines.
    extra_config: String,
}

impl StoppedHub {
    /// A fresh data directory under `dir`, polling `repo`.
    fn init(dir: &Path, repo: &GitRepo) -> StoppedHub {
        let data = DataDir::new(dir.join("hub"));
        data.init().unwrap();
        StoppedHub {
            data,
            source: format!("file://{}", repo.path.display()),
            extra_config: String::new(),
        }
    }

    /// The same hub with more hub.yaml lines.
    fn with_config(mut self, lines: &str) -> StoppedHub {
        self.extra_config = lines.to_string();
        self
    }

    /// Runs the hub in a task, listening on `listen`, and connects an admin client.
    async fn start(self, listen: SocketAddr) -> Hub {
        let config = HubConfig::parse(&format!(
            "listen: {listen}\nsources:\n  - name: main\n    url: {}\n    interval: 50ms\n{}",
            self.source, self.extra_config
        ))
        .unwrap();
        let shutdown = CancellationToken::new();
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(flotilla_hub::server::run(
            self.data.clone(),
            config,
            shutdown.clone(),
            move |addr| {
                let _ = addr_tx.send(addr);
            },
        ));
        let started = tokio::time::timeout(DEADLINE, addr_rx).await;
        let Ok(Ok(addr)) = started else {
            task.abort();
            panic!("the hub did not start: {:?}", task.await);
        };
        let admin = self.data.admin_dir();
        let read = |file: &str| std::fs::read_to_string(admin.join(file)).unwrap();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.pem")))
            .identity(Identity::from_pem(read("admin.pem"), read("admin-key.pem")));
        let channel = Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        Hub {
            stopped: self,
            addr,
            admin: AdminClient::new(channel),
            shutdown,
            task,
        }
    }
}

/// A hub running in this process.
struct Hub {
    stopped: StoppedHub,
    addr: SocketAddr,
    admin: AdminClient<Channel>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), HubError>>,
}

impl Hub {
    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The CA certificate agents trust the hub by.
    fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.stopped.data.admin_dir().join("ca.pem")).unwrap()
    }

    async fn token(&self) -> String {
        self.token_for("").await
    }

    /// A token that pins the cluster's name (none when empty).
    async fn token_for(&self, name: &str) -> String {
        let request = pb::CreateTokenRequest {
            ttl_seconds: 600,
            labels: Default::default(),
            name: name.into(),
        };
        let response = self.admin.clone().create_token(request).await.unwrap();
        response.into_inner().token
    }

    async fn clusters(&self) -> Vec<pb::Cluster> {
        let mut admin = self.admin.clone();
        let response = admin.list_clusters(pb::ListClustersRequest {}).await;
        response.unwrap().into_inner().clusters
    }

    /// Waits until the hub's status of its one cluster satisfies `check`. (A status is not read
    /// in one transaction: its report-derived fields may disagree until the next read.)
    async fn wait_status(
        &self,
        what: &str,
        check: impl Fn(&pb::Cluster, &[pb::AppRow]) -> bool,
    ) -> (pb::Cluster, Vec<pb::AppRow>) {
        eventually(what, async || {
            let mut admin = self.admin.clone();
            let status = admin.get_status(pb::GetStatusRequest {}).await;
            let mut clusters = status.unwrap().into_inner().clusters;
            assert!(clusters.len() <= 1, "one cluster: {clusters:?}");
            let status = clusters.pop()?;
            let cluster = status.cluster.unwrap();
            check(&cluster, &status.apps).then_some((cluster, status.apps))
        })
        .await
    }

    /// Waits until the agent has reported `commit` applied, in the newest version.
    async fn converged(&self, commit: &str) -> pb::Cluster {
        let what = format!("{commit} applied");
        let (cluster, _) = self
            .wait_status(&what, |cluster, apps| {
                cluster.applied_version == cluster.desired_version
                    && !apps.is_empty()
                    && apps.iter().all(|app| {
                        app.desired_commit == commit
                            && app.applied_commit == commit
                            && app.phase == "applied"
                    })
            })
            .await;
        cluster
    }

    /// Stops the hub; returns what it needs to start again.
    async fn stop(self) -> StoppedHub {
        let Hub {
            stopped,
            admin,
            shutdown,
            task,
            ..
        } = self;
        drop(admin);
        shutdown.cancel();
        tokio::time::timeout(DEADLINE, task)
            .await
            .expect("the hub stops promptly")
            .unwrap()
            .unwrap();
        stopped
    }
}

/// An agent's files: data directory, token, CA and the directory target.
struct TestAgent {
    name: String,
    dir: PathBuf,
    token_file: PathBuf,
    ca_file: PathBuf,
    objects: PathBuf,
}

impl TestAgent {
    fn new(dir: &Path, name: &str, ca_pem: &str, token: &str) -> TestAgent {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let agent = TestAgent {
            name: name.into(),
            dir: dir.join("data"),
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
            hub: vec![hub.into()],
            ca: self.ca_file.clone(),
            token_file: self.token_file.clone(),
            data_dir: self.dir.clone(),
            target: format!("dir:{}", self.objects.display()),
            name: Some(self.name.clone()),
            deletion_budget: 50,
            deletion_budget_window: "1h".into(),
            retry_ceiling: "5m".into(),
            override_deletion_budget: false,
            kube_version: None,
            api_versions: Vec::new(),
            capabilities_interval: "5m".into(),
            metrics_listen: None,
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
        self.run(self.config(hub))
    }

    fn run(&self, config: AgentConfig) -> Running {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(flotilla_agent::run(config, shutdown.clone()));
        Running { shutdown, task }
    }

    fn object_file(&self, name: &str) -> PathBuf {
        self.objects
            .join(format!("core_v1_ConfigMap_demo_{name}.json"))
    }

    /// The `value` of ConfigMap `name` in the target, if it is there.
    fn value(&self, name: &str) -> Option<String> {
        let bytes = std::fs::read(self.object_file(name)).ok()?;
        let object: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        Some(object["data"]["value"].as_str().unwrap().to_string())
    }

    /// The target's ConfigMap values, by name.
    fn values(&self, names: &[&str]) -> Vec<Option<String>> {
        names.iter().map(|n| self.value(n)).collect()
    }

    /// The cluster id the agent stored at registration; only while it is not running.
    fn registered_as(&self) -> Option<String> {
        self.identity().map(|identity| identity.cluster_id)
    }

    /// The identity the agent stored; only while it is not running.
    fn identity(&self) -> Option<flotilla_agent::identity::AgentIdentity> {
        let store = Store::open(&self.dir.join("agent.redb"), 10).unwrap();
        store.identity().unwrap()
    }
}

fn some(values: &[&str]) -> Vec<Option<String>> {
    values.iter().map(|v| Some(v.to_string())).collect()
}

struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), flotilla_agent::AgentError>>,
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
async fn registers_with_a_token_alone_then_follows_commits_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, first) = GitRepo::init(
        &dir.path().join("repo"),
        &[
            ("web/a.yaml", &config_map("a", "1")),
            ("web/b.yaml", &config_map("b", "2")),
        ],
    );
    let hub = StoppedHub::init(dir.path(), &repo).start(free_addr()).await;
    let agent = TestAgent::new(dir.path(), "edge-1", &hub.ca_pem(), &hub.token().await);
    let running = agent.start(&hub.url());

    // A fresh agent has no certificate: the token alone registers it.
    let cluster = hub.converged(&first).await;
    assert_eq!(cluster.name, "edge-1");
    assert_eq!(agent.values(&["a", "b"]), some(&["1", "2"]));

    // Registered, it never needs the token file again; b left Git, so it is pruned.
    std::fs::remove_file(&agent.token_file).unwrap();
    let second = repo
        .remove("web/b.yaml")
        .write("web/c.yaml", &config_map("c", "3"))
        .commit("b out, c in");
    hub.converged(&second).await;
    assert_eq!(
        agent.values(&["a", "b", "c"]),
        [Some("1".into()), None, Some("3".into())]
    );

    // Nor after a restart.
    running.stop().await;
    let running = agent.start(&hub.url());
    let third = repo
        .write("web/a.yaml", &config_map("a", "4"))
        .commit("a = 4");
    let after = hub.converged(&third).await;
    assert_eq!(agent.values(&["a", "c"]), some(&["4", "3"]));
    assert_eq!(after.id, cluster.id, "the same registration");
    assert_eq!(hub.clusters().await.len(), 1);

    running.stop().await;
    hub.stop().await;
    assert_eq!(agent.registered_as(), Some(cluster.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_with_the_hub_down_the_agent_applies_from_disk_and_reports_later() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, first) = GitRepo::init(
        &dir.path().join("repo"),
        &[
            ("web/a.yaml", &config_map("a", "1")),
            ("web/b.yaml", &config_map("b", "2")),
            ("web/c.yaml", &config_map("c", "3")),
        ],
    );
    let hub = StoppedHub::init(dir.path(), &repo).start(free_addr()).await;
    let agent = TestAgent::new(dir.path(), "edge-1", &hub.ca_pem(), &hub.token().await);
    let mut config = agent.config(&hub.url());
    config.deletion_budget = 1;
    let running = agent.run(config.clone());
    let before = hub.converged(&first).await;

    // Two deletions against a budget of one: both withheld, the app reported failed.
    let second = repo
        .remove("web/b.yaml")
        .remove("web/c.yaml")
        .commit("b and c out");
    let (withheld, apps) = hub
        .wait_status("the deletions withheld", |cluster, apps| {
            cluster.desired_version > before.desired_version
                && apps.len() == 1
                && apps[0].desired_commit == second
                && apps[0].phase == "failed"
        })
        .await;
    assert!(
        apps[0].message.contains("deletion budget"),
        "{}",
        apps[0].message
    );
    assert_eq!(withheld.applied_version, before.applied_version);
    assert_eq!(agent.values(&["a", "b", "c"]), some(&["1", "2", "3"]));

    // With the hub down, the agent restarts with the override: it applies what it holds on disk,
    // restoring a drifted object and carrying out the deletions.
    running.stop().await;
    let addr = hub.addr;
    let stopped = hub.stop().await;
    std::fs::remove_file(agent.object_file("a")).unwrap();
    config.override_deletion_budget = true;
    let running = agent.run(config);
    eventually("the held state applied without the hub", async || {
        (agent.values(&["a", "b", "c"]) == [Some("1".into()), None, None]).then_some(())
    })
    .await;

    // The report of that pass waited in the outbox; the hub has it once it is back.
    let hub = stopped.start(addr).await;
    let after = hub.converged(&second).await;
    assert_eq!(after.applied_version, withheld.desired_version);

    running.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_stops_the_agent_with_the_hubs_message() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, first) = GitRepo::init(
        &dir.path().join("repo"),
        &[("web/a.yaml", &config_map("a", "1"))],
    );
    let hub = StoppedHub::init(dir.path(), &repo).start(free_addr()).await;
    let used = hub.token().await;
    let first_agent = TestAgent::new(dir.path(), "first", &hub.ca_pem(), &used);
    let running = first_agent.start(&hub.url());
    hub.converged(&first).await;
    running.stop().await;

    let unknown = format!("flt_{}", "A".repeat(43));
    for (name, token) in [("unknown", &unknown), ("reused", &used)] {
        let agent = TestAgent::new(dir.path(), name, &hub.ca_pem(), token);
        let result = tokio::time::timeout(
            DEADLINE,
            flotilla_agent::run(agent.config(&hub.url()), CancellationToken::new()),
        )
        .await
        .expect("registration fails promptly");
        let text = flotilla_agent::error::error_chain(&result.unwrap_err());
        assert!(
            text.contains("unknown, already used or expired"),
            "{name}: {text}"
        );
        assert!(
            !text.contains(token.as_str()),
            "{name}: the token is in {text}"
        );
        assert_eq!(agent.registered_as(), None, "{name}");
    }
    assert_eq!(hub.clusters().await.len(), 1);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_waits_for_a_hub_that_is_not_up_yet_and_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, first) = GitRepo::init(
        &dir.path().join("repo"),
        &[("web/a.yaml", &config_map("a", "1"))],
    );
    // Tokens are durable: make one, then take the hub down.
    let hub = StoppedHub::init(dir.path(), &repo).start(free_addr()).await;
    let agent = TestAgent::new(dir.path(), "edge-1", &hub.ca_pem(), &hub.token().await);
    let stopped = hub.stop().await;
    let addr = free_addr();
    let url = format!("https://{addr}");
    let store_file = agent.dir.join("agent.redb");

    // Shutdown while registration retries ends the agent cleanly, unregistered.
    let running = agent.start(&url);
    eventually("the agent to start", async || {
        store_file.exists().then_some(())
    })
    .await;
    running.stop().await;
    assert_eq!(agent.registered_as(), None);

    // Started before the hub, it registers once the hub listens.
    let running = agent.start(&url);
    let hub = stopped.start(addr).await;
    let cluster = hub.converged(&first).await;
    assert_eq!(agent.value("a").as_deref(), Some("1"));
    running.stop().await;
    hub.stop().await;
    assert_eq!(agent.registered_as(), Some(cluster.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_renewed_before_they_expire_and_new_connections_use_them() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, first) = GitRepo::init(
        &dir.path().join("repo"),
        &[("web/a.yaml", &config_map("a", "1"))],
    );
    // Certificates live 3 s, so an agent that did not renew would be locked out within 3 s.
    let hub = StoppedHub::init(dir.path(), &repo)
        .with_config("clusterCertTtl: 3s\nrenewMinInterval: 1s\n")
        .start(free_addr())
        .await;
    let agent = TestAgent::new(dir.path(), "edge-1", &hub.ca_pem(), &hub.token().await);
    let running = agent.start(&hub.url());
    let registered = hub.converged(&first).await;
    assert!(registered.cert_expires_at > 0);

    // Three renewals, each a new certificate with a later expiry, outliving the first one.
    let mut expiries = vec![registered.cert_expires_at];
    let started = Instant::now();
    while expiries.len() < 4 {
        let cluster = eventually("a renewal", async || {
            let c = hub.clusters().await.pop()?;
            (c.cert_expires_at > *expiries.last().unwrap()).then_some(c)
        })
        .await;
        assert!(cluster.renewed_at > 0);
        expiries.push(cluster.cert_expires_at);
    }
    println!("3 renewals of a 3 s certificate in {:?}", started.elapsed());

    // The agent still follows commits, and after a hub restart it reconnects with the newest
    // certificate: the one it registered with has expired by now.
    let second = repo
        .write("web/a.yaml", &config_map("a", "2"))
        .commit("a = 2");
    hub.converged(&second).await;
    let addr = hub.addr;
    let hub = hub.stop().await.start(addr).await;
    let third = repo
        .write("web/a.yaml", &config_map("a", "3"))
        .commit("a = 3");
    hub.converged(&third).await;
    assert_eq!(agent.value("a").as_deref(), Some("3"));
    running.stop().await;
    hub.stop().await;

    // The renewed identity is durable and still this cluster.
    let identity = agent.identity().unwrap();
    assert_eq!(identity.cluster_id, registered.id);
    let expiry = flotilla_agent::identity::cert_expiry(&identity.cert_pem).unwrap();
    assert!(
        expiry >= expiries[3],
        "stored {expiry}, hub saw {expiries:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_needs_a_new_key_and_is_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, first) = GitRepo::init(
        &dir.path().join("repo"),
        &[("web/a.yaml", &config_map("a", "1"))],
    );
    let hub = StoppedHub::init(dir.path(), &repo).start(free_addr()).await;
    let agent = TestAgent::new(dir.path(), "edge-1", &hub.ca_pem(), &hub.token().await);
    let running = agent.start(&hub.url());
    hub.converged(&first).await;
    running.stop().await;
    let identity = agent.identity().unwrap();
    let channel = flotilla_agent::channel::agent_channel(&hub.url(), &identity).unwrap();
    let mut client = pb::agent_client::AgentClient::new(channel);

    // A CSR for the key the caller already holds is refused.
    let key = rcgen::KeyPair::from_pem(&identity.key_pem).unwrap();
    let same = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec();
    let err = client
        .renew(pb::RenewRequest { csr_der: same })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("new key"), "{}", err.message());

    // The refused attempt counted: the default limit is one renewal a minute.
    let (_, fresh) = flotilla_agent::identity::new_key_and_csr("edge-1").unwrap();
    let err = client
        .renew(pb::RenewRequest { csr_der: fresh })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("renewMinInterval"),
        "{}",
        err.message()
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_cluster_is_cut_off_at_once_and_its_name_needs_a_new_token() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, first) = GitRepo::init(
        &dir.path().join("repo"),
        &[("web/a.yaml", &config_map("a", "1"))],
    );
    let hub = StoppedHub::init(dir.path(), &repo).start(free_addr()).await;
    let agent = TestAgent::new(dir.path(), "edge-1", &hub.ca_pem(), &hub.token().await);
    let running = agent.start(&hub.url());
    let cluster = hub.converged(&first).await;
    running.stop().await;

    // A live Watch with the cluster's own certificate.
    let identity = agent.identity().unwrap();
    let channel = flotilla_agent::channel::agent_channel(&hub.url(), &identity).unwrap();
    let mut client = pb::agent_client::AgentClient::new(channel);
    let mut watch = client
        .watch(pb::WatchRequest { have_version: 0 })
        .await
        .unwrap()
        .into_inner();
    let announced = watch.message().await.unwrap().unwrap();
    assert_eq!(announced.version, cluster.desired_version);

    let mut admin = hub.admin.clone();
    let deleted_at = Instant::now();
    let deleted = admin
        .delete_cluster(pb::DeleteClusterRequest {
            cluster: "edge-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.id, cluster.id);
    let ended = loop {
        match watch.message().await {
            Ok(Some(a)) if a.heartbeat => continue,
            other => break other,
        }
    };
    let took = deleted_at.elapsed();
    println!("cluster delete ended a live Watch stream in {took:?}");
    let status = ended.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");

    // Its certificate is refused for every call from now on.
    let err = client
        .get_cluster_state(pb::GetClusterStateRequest {
            version: cluster.desired_version,
            have_version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(hub.clusters().await.is_empty());
    let err = admin
        .get_cluster(pb::GetClusterRequest {
            cluster: "edge-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("edge-1"), "{}", err.message());

    // The name is free, but only through a new token; one pinned to it refuses other names.
    let pinned = hub.token_for("edge-1").await;
    let wrong = TestAgent::new(dir.path(), "edge-2", &hub.ca_pem(), &pinned);
    let result = tokio::time::timeout(
        DEADLINE,
        flotilla_agent::run(wrong.config(&hub.url()), CancellationToken::new()),
    )
    .await
    .expect("a refused registration ends promptly");
    let text = flotilla_agent::error::error_chain(&result.unwrap_err());
    assert!(text.contains("for the cluster named \"edge-1\""), "{text}");
    let again = TestAgent::new(&dir.path().join("again"), "edge-1", &hub.ca_pem(), &pinned);
    let running = again.start(&hub.url());
    let back = hub.converged(&first).await;
    assert_eq!(back.name, "edge-1");
    assert_ne!(back.id, cluster.id, "a new registration");
    running.stop().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_set_by_an_operator_retarget_the_cluster_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (repo, _) = GitRepo::init(
        &dir.path().join("repo"),
        &[("web/a.yaml", &config_map("a", "1"))],
    );
    let targeted = repo
        .write(
            "flotilla.yaml",
            "apps:\n  - name: web\n    path: web\n    namespace: demo\n    targets:\n      - {name: web-tier, selector: {matchLabels: {tier: web}}}\n",
        )
        .commit("only tier=web");
    let hub = StoppedHub::init(dir.path(), &repo).start(free_addr()).await;
    let agent = TestAgent::new(dir.path(), "edge-1", &hub.ca_pem(), &hub.token().await);
    let running = agent.start(&hub.url());
    // Unlabelled, the cluster gets a state without the app.
    let (cluster, apps) = hub
        .wait_status("an empty state applied", |c, _| {
            c.desired_version > 0 && c.applied_version == c.desired_version
        })
        .await;
    assert!(apps.is_empty(), "{apps:?}");
    assert_eq!(agent.value("a"), None);

    let mut admin = hub.admin.clone();
    let labelled = admin
        .label_cluster(pb::LabelClusterRequest {
            cluster: cluster.name.clone(),
            set: [("tier".to_string(), "web".to_string())].into(),
            remove: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(labelled.labels.get("tier").map(String::as_str), Some("web"));
    hub.converged(&targeted).await;
    assert_eq!(agent.value("a").as_deref(), Some("1"));

    // Removing the label takes the app away again (and prunes it).
    admin
        .label_cluster(pb::LabelClusterRequest {
            cluster: cluster.id.clone(),
            set: Default::default(),
            remove: vec!["tier".into()],
        })
        .await
        .unwrap();
    eventually("the app pruned", async || {
        agent.value("a").is_none().then_some(())
    })
    .await;
    let err = admin
        .label_cluster(pb::LabelClusterRequest {
            cluster: "nope".into(),
            set: Default::default(),
            remove: vec!["tier".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    running.stop().await;
    hub.stop().await;
}
