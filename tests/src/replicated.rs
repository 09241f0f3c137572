//! A replicated hub for tests: 3 (or 5) real `flotilla-hub` processes on loopback, each with its own
//! data directory and peer listener, plus agents given every replica's address. Replica 1 is made by
//! `init`, the others by `flotilla-hub join` with its keys; every replica but the last joins through
//! `replication.join`, the last through `flotilla hub add-replica`, so both ways are exercised.

use std::time::Duration;

use flotilla_cli::client::{self, StatusView};
use flotilla_cli::fleet::{Binaries, LocalAgent, LocalHub};
use flotilla_cli::replicas::HubStatusView;
use flotilla_common::labels::parse_labels;

use crate::fixture::{CONVERGE, GitRepo};

/// Hub replicas, agents and the Git source in one temporary directory.
pub struct ReplicatedHub {
    /// Temporary directory holding everything.
    pub dir: tempfile::TempDir,
    /// Binaries under test.
    pub bins: Binaries,
    /// Replica `i + 1` at index `i`.
    pub replicas: Vec<LocalHub>,
    /// Each replica's peer address (advertised), `127.0.0.1:PORT`.
    pub peers: Vec<String>,
    /// With [`ReplicatedHub::start_proxied`]: the fault proxy in front of each replica's peer
    /// listener (its advertised address), and the address each replica dials its peers from.
    pub proxies: Vec<(crate::forwarder::Forwarder, std::net::IpAddr)>,
    /// Agents, in the order added.
    pub agents: Vec<LocalAgent>,
    /// The Git source.
    pub repo: GitRepo,
}

/// A free loopback port (bound, then released for a process to bind).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Keeps the temporary directory (the replicas' logs and data) of a run that panicked when
/// `FLOTILLA_KEEP_FAILED` is set, and prints where it is.
impl Drop for ReplicatedHub {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("FLOTILLA_KEEP_FAILED").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "kept the failed run's directory: {}",
                self.dir.path().display()
            );
        }
    }
}

impl ReplicatedHub {
    /// Starts `n` replicas polling a repository filled by `fill` every 200 ms, with `extra_config`
    /// appended to every hub.yaml, and waits until every one is a voter and listens.
    pub async fn start(n: usize, fill: impl FnOnce(&GitRepo), extra_config: &str) -> Self {
        Self::start_with(n, fill, extra_config, "").await
    }

    /// [`ReplicatedHub::start`] with more `replication:` lines (each `  key: value`).
    pub async fn start_with(
        n: usize,
        fill: impl FnOnce(&GitRepo),
        extra_config: &str,
        replication_extra: &str,
    ) -> Self {
        Self::start_inner(
            n,
            fill,
            extra_config,
            replication_extra,
            false,
            "    interval: 200ms\n",
        )
        .await
    }

    /// [`ReplicatedHub::start_with`] where replica `i` listens for peers on `127.0.0.(10+i)` and
    /// dials from it, and advertises a fault proxy in front of that listener: a test cuts a replica
    /// off with `set_fault` on its proxy (what reaches it) and `set_fault_from` its address on
    /// the others' (what it sends).
    pub async fn start_proxied(
        n: usize,
        fill: impl FnOnce(&GitRepo),
        extra_config: &str,
        replication_extra: &str,
    ) -> Self {
        Self::start_inner(
            n,
            fill,
            extra_config,
            replication_extra,
            true,
            "    interval: 200ms\n",
        )
        .await
    }

    /// Cuts replica `id` off from the others on the peer channel, both ways.
    pub fn partition(&self, id: u64) {
        let (own, source) = &self.proxies[(id - 1) as usize];
        own.set_fault(crate::forwarder::Fault::Blackhole);
        for (i, (proxy, _)) in self.proxies.iter().enumerate() {
            if i as u64 + 1 != id {
                proxy.set_fault_from(*source, crate::forwarder::Fault::Blackhole);
            }
        }
    }

    /// Heals every partition.
    pub fn heal(&self) {
        for (proxy, _) in &self.proxies {
            proxy.heal();
        }
    }

    /// [`ReplicatedHub::start`] with the source's own lines (each `    key: value`, its
    /// `interval` included) instead of a 200 ms poll.
    pub async fn start_with_source(
        n: usize,
        fill: impl FnOnce(&GitRepo),
        extra_config: &str,
        source_lines: &str,
    ) -> Self {
        Self::start_inner(n, fill, extra_config, "", false, source_lines).await
    }

    async fn start_inner(
        n: usize,
        fill: impl FnOnce(&GitRepo),
        extra_config: &str,
        replication_extra: &str,
        proxied: bool,
        source_lines: &str,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("flotilla-replicas-")
            .tempdir()
            .expect("tempdir");
        let bins = Binaries::locate().expect("binaries built (cargo build --workspace --bins)");
        let repo = GitRepo::init(&dir.path().join("repo"));
        fill(&repo);
        let mut proxies = Vec::new();
        let mut listens = Vec::new();
        for i in 0..n {
            if proxied {
                let ip: std::net::IpAddr = format!("127.0.0.{}", 10 + i + 1).parse().expect("ip");
                let l = std::net::TcpListener::bind((ip, 0)).expect("bind");
                let listen = l.local_addr().expect("addr");
                drop(l);
                let proxy = crate::forwarder::Forwarder::start(listen)
                    .await
                    .expect("proxy");
                listens.push(listen.to_string());
                proxies.push((proxy, ip));
            } else {
                listens.push(format!("127.0.0.1:{}", free_port()));
            }
        }
        let peers: Vec<String> = if proxied {
            proxies.iter().map(|(p, _)| p.addr().to_string()).collect()
        } else {
            listens.clone()
        };
        let config = |i: usize, join: &[String]| {
            let join = if join.is_empty() {
                String::new()
            } else {
                format!("\n  join: [{}]", join.join(", "))
            };
            format!(
                "listen: 127.0.0.1:0\nserverNames: [localhost, 127.0.0.1]\nsources:\n  - name: main\n    url: {}\n    branch: main\n{source_lines}replication:\n  listen: {listen}\n  advertise: {peer}{join}\n{replication_extra}\n{extra_config}",
                repo.url(),
                listen = listens[i],
                peer = peers[i],
            )
        };
        let mut first = LocalHub::init(&bins, dir.path(), &config(0, &[]))
            .await
            .expect("init replica 1");
        first.start().await.expect("start replica 1");
        let mut replicas = vec![first];
        for i in 1..n {
            // The last replica waits for an operator's add-replica; the others ask replica 1.
            let join = if i + 1 == n {
                Vec::new()
            } else {
                vec![peers[0].clone()]
            };
            let mut r = LocalHub::join(
                &bins,
                dir.path(),
                &format!("hub-{}", i + 1),
                &replicas[0],
                (i + 1) as u64,
                &config(i, &join),
            )
            .await
            .expect("join replica");
            r.launch().expect("launch replica");
            if !join.is_empty() {
                r.wait_listening(CONVERGE).await.expect("replica joined");
            }
            replicas.push(r);
        }
        let mut hub = ReplicatedHub {
            dir,
            bins,
            replicas,
            peers,
            proxies,
            agents: Vec::new(),
            repo,
        };
        if n > 1 {
            let last = hub.peers[n - 1].clone();
            let last_listen = listens[n - 1].clone();
            // The replica to add listens for peers as soon as its process is up.
            let reachable = flotilla_cli::fleet::wait_for(CONVERGE, || {
                std::net::TcpStream::connect(&last_listen).ok().map(|_| ())
            })
            .await;
            assert!(
                reachable.is_some(),
                "replica {n}'s peer listener {last} never came up"
            );
            let added = hub.cli_json(&["hub", "add-replica", &last]);
            assert_eq!(added["added"], serde_json::json!(n), "{added}");
            hub.replicas[n - 1]
                .wait_listening(CONVERGE)
                .await
                .expect("added replica listens");
        }
        hub.wait_hub_status("every replica a voter", |s| {
            s.replicas.len() == n && s.replicas.iter().all(|r| r.voter)
        })
        .await;
        hub
    }

    /// `https://` addresses of the replicas that listen, in replica order.
    pub fn urls(&self) -> Vec<String> {
        self.replicas
            .iter()
            .filter(|r| r.addr.is_some())
            .map(LocalHub::url)
            .collect()
    }

    /// Every replica's address, comma-separated, for `--hub` / `FLOTILLA_HUB`.
    pub fn hub_arg(&self) -> String {
        self.urls().join(",")
    }

    /// The operator's admin bundle (made by `init` on replica 1).
    pub fn admin_dir(&self) -> std::path::PathBuf {
        self.replicas[0].admin_dir()
    }

    /// Runs the real `flotilla` binary against every replica with `-o json`.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        self.cli_json_via(&self.hub_arg(), args)
    }

    /// Runs the real `flotilla` binary with `-o json` against `hubs` (comma-separated URLs).
    fn cli_json_via(&self, hubs: &str, args: &[&str]) -> serde_json::Value {
        let out = std::process::Command::new(&self.bins.cli)
            .args(args)
            .args(["-o", "json"])
            .env("FLOTILLA_HUB", hubs)
            .env("FLOTILLA_ADMIN_DIR", self.admin_dir())
            .output()
            .expect("run flotilla");
        assert!(
            out.status.success(),
            "flotilla {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }

    /// `flotilla hub status` through the admin API, from the first replica that answers.
    pub async fn hub_status(&self) -> Option<HubStatusView> {
        client::with_admin(&self.hub_arg(), &self.admin_dir(), async |admin| {
            flotilla_cli::replicas::status(admin).await
        })
        .await
        .ok()
    }

    /// Waits until `check` holds for the hub status.
    pub async fn wait_hub_status(
        &self,
        what: &str,
        check: impl Fn(&HubStatusView) -> bool,
    ) -> HubStatusView {
        let end = tokio::time::Instant::now() + CONVERGE;
        let mut last = None;
        loop {
            if let Some(status) = self.hub_status().await {
                if check(&status) {
                    return status;
                }
                last = Some(status);
            }
            if tokio::time::Instant::now() >= end {
                panic!("timed out waiting for {what}; last hub status: {last:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The leader's replica id, once one replica says it leads and the others that answer agree.
    pub async fn leader(&self) -> u64 {
        let status = self
            .wait_hub_status("a leader", |s| {
                let leaders: Vec<u64> = s
                    .replicas
                    .iter()
                    .filter(|r| r.role == "leader")
                    .map(|r| r.id)
                    .collect();
                leaders.len() == 1
                    && s.replicas
                        .iter()
                        .filter(|r| r.role == "follower")
                        .all(|r| r.leader == Some(leaders[0]))
            })
            .await;
        status
            .replicas
            .iter()
            .find(|r| r.role == "leader")
            .map(|r| r.id)
            .expect("a leader")
    }

    /// Starts an agent registering as `name` with `labels`, given every replica's address starting
    /// with replica `first` (1-based), so agents spread over the replicas.
    pub async fn add_agent(&mut self, name: &str, labels: &str, first: usize) -> usize {
        self.add_agent_with(name, labels, first, &[], None).await
    }

    /// [`ReplicatedHub::add_agent`] with more `flotilla-agent run` flags, applying to the
    /// Kubernetes API of `kubeconfig` when one is given.
    pub async fn add_agent_with(
        &mut self,
        name: &str,
        labels: &str,
        first: usize,
        extra_args: &[&str],
        kubeconfig: Option<std::path::PathBuf>,
    ) -> usize {
        let token = client::with_admin(&self.hub_arg(), &self.admin_dir(), async |admin| {
            client::create_token(
                admin,
                Duration::from_secs(600),
                &parse_labels(labels).expect("labels"),
                None,
            )
            .await
        })
        .await
        .expect("create token")
        .token;
        let mut agent =
            LocalAgent::new(&self.bins, self.dir.path(), name, &token, &self.replicas[0])
                .expect("agent dir");
        let mut urls = self.urls();
        let shift = (first - 1) % urls.len();
        urls.rotate_left(shift);
        agent.set_hub_urls(urls);
        agent.extra_args = extra_args.iter().map(|a| a.to_string()).collect();
        if let Some(kubeconfig) = kubeconfig {
            agent.use_kubernetes(kubeconfig);
        }
        agent.start().expect("agent start");
        self.agents.push(agent);
        self.agents.len() - 1
    }

    /// The fleet status from the first replica that answers.
    pub async fn status(&self) -> Option<StatusView> {
        client::with_admin(&self.hub_arg(), &self.admin_dir(), async |admin| {
            client::status(admin).await
        })
        .await
        .ok()
    }

    /// Waits until every agent's cluster applied `commit`, as replica `id` alone reports it.
    pub async fn wait_converged_on(&self, id: u64, commit: &str) -> StatusView {
        let url = self.replicas[(id - 1) as usize].url();
        self.wait_converged_via(&url, &format!(" at replica {id}"), commit)
            .await
    }

    /// Waits until every agent's cluster applied `commit`.
    pub async fn wait_converged(&self, commit: &str) -> StatusView {
        self.wait_converged_via(&self.hub_arg(), "", commit).await
    }

    /// Waits until every agent's cluster applied `commit`, as the first of `hubs` that answers
    /// reports it.
    async fn wait_converged_via(&self, hubs: &str, at: &str, commit: &str) -> StatusView {
        let n = self.agents.len();
        let end = tokio::time::Instant::now() + CONVERGE;
        let mut last = None;
        loop {
            let status = client::with_admin(hubs, &self.admin_dir(), async |admin| {
                client::status(admin).await
            })
            .await;
            if let Ok(s) = status {
                if s.clusters.len() == n && s.converged_at(commit) {
                    return s;
                }
                last = Some(s);
            }
            if tokio::time::Instant::now() >= end {
                panic!(
                    "timed out waiting for {n} clusters on {commit}{at}; last status: {}\n{}",
                    serde_json::to_string_pretty(&last).unwrap_or_default(),
                    self.agent_log_tails()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The replica that replica `id` alone says leads, once it says one does (within the deadline).
    pub async fn leader_seen_by(&self, id: u64) -> u64 {
        let url = self.replicas[(id - 1) as usize].url();
        let end = tokio::time::Instant::now() + CONVERGE;
        loop {
            let status = client::with_admin(&url, &self.admin_dir(), async |admin| {
                flotilla_cli::replicas::status(admin).await
            })
            .await;
            if let Ok(s) = status
                && let Some(leader) = s.replicas.iter().find(|r| r.role == "leader")
            {
                return leader.id;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "replica {id} saw no leader within {CONVERGE:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last 30 lines of each agent's log, for a failure message.
    fn agent_log_tails(&self) -> String {
        let mut out = String::new();
        for a in &self.agents {
            let log = std::fs::read_to_string(&a.log_path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            out.push_str(&format!("--- agent {} ---\n{tail}\n", a.name));
        }
        out
    }

    /// Every log line the processes wrote.
    pub fn all_logs(&self) -> String {
        let mut out = String::new();
        for r in &self.replicas {
            out.push_str(&std::fs::read_to_string(&r.log_path).unwrap_or_default());
        }
        for a in &self.agents {
            out.push_str(&std::fs::read_to_string(&a.log_path).unwrap_or_default());
        }
        out
    }

    /// Creates `n` bootstrap tokens: `n` store writes (log entries) and nothing else.
    pub async fn write_tokens(&self, n: usize) {
        for _ in 0..n {
            client::with_admin(&self.hub_arg(), &self.admin_dir(), async |admin| {
                client::create_token(admin, Duration::from_secs(60), &Default::default(), None)
                    .await
            })
            .await
            .expect("create token");
        }
    }

    /// `flotilla clusters -o json` against replica `id` alone.
    pub fn clusters_on(&self, id: u64) -> serde_json::Value {
        self.cli_json_via(&self.replicas[(id - 1) as usize].url(), &["clusters"])
    }

    /// Rebuilds replica `id` from the others, as an operator does after its data was damaged or
    /// lost: `flotilla hub remove-replica`, its data directory deleted and made again by
    /// `flotilla-hub join` from another replica's keys, started on the same addresses, and added
    /// back (by its own `replication.join`, or else by `flotilla hub add-replica`); returns once
    /// it is a voter again and caught up.
    pub async fn rebuild(&mut self, id: u64) {
        let i = (id - 1) as usize;
        self.replicas[i].stop().await;
        let removed = self.cli_json(&["hub", "remove-replica", &id.to_string()]);
        let members = removed["members"].as_array().cloned().unwrap_or_default();
        assert!(members.iter().all(|m| m["id"] != id), "{removed}");
        let old = &self.replicas[i];
        let config = std::fs::read_to_string(&old.config_path).expect("the replica's hub.yaml");
        let name = old
            .data_dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("data directory name")
            .to_string();
        std::fs::remove_dir_all(&old.data_dir).expect("delete the replica's data");
        let from = &self.replicas[if i == 0 { 1 } else { 0 }];
        let mut rebuilt = LocalHub::join(&self.bins, self.dir.path(), &name, from, id, &config)
            .await
            .expect("join the rebuilt replica");
        rebuilt.addr = old.addr;
        rebuilt.launch().expect("launch the rebuilt replica");
        if !config.contains("\n  join: ") {
            let peer = self.peers[i].clone();
            let reachable = flotilla_cli::fleet::wait_for(CONVERGE, || {
                std::net::TcpStream::connect(&peer).ok().map(|_| ())
            })
            .await;
            assert!(
                reachable.is_some(),
                "replica {id}'s peer listener never came up"
            );
            let added = self.cli_json(&["hub", "add-replica", &peer]);
            assert_eq!(added["added"], serde_json::json!(id), "{added}");
        }
        rebuilt
            .wait_listening(CONVERGE)
            .await
            .expect("the rebuilt replica listens");
        self.replicas[i] = rebuilt;
        let n = self.replicas.len();
        self.wait_hub_status("the rebuilt replica a voter and caught up", |s| {
            s.replicas.len() == n
                && s.replicas
                    .iter()
                    .all(|r| r.voter && (r.role == "leader" || r.role == "follower") && r.lag == 0)
        })
        .await;
    }

    /// Undoes a fault of [`fault_run`]: restarts a killed replica or heals a partition.
    async fn restore(&mut self, faulted: Option<(u64, bool)>) {
        match faulted {
            Some((id, true)) => {
                self.replicas[(id - 1) as usize]
                    .start()
                    .await
                    .expect("restart a killed replica");
            }
            Some((_, false)) => self.heal(),
            None => {}
        }
    }

    /// Stops every process.
    pub async fn shutdown(mut self) {
        for a in &mut self.agents {
            a.stop().await;
        }
        for r in &mut self.replicas {
            r.stop().await;
        }
        // A replica killed or cut off is an outage the others handle: it may log warnings, never
        // an error (STYLE: tests fail on unexpected ERROR logs) — but openraft's own, which it logs
        // at ERROR for every peer it cannot reach or that answers late (a late batch of entries
        // comes back as "payload too large", to be resent smaller), and then retries.
        let logs = self.all_logs();
        let errors: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains(" ERROR "))
            .filter(|l| {
                !(l.contains(" openraft::")
                    && (l.contains("Unreachable node")
                        || l.contains("timeout after")
                        || l.contains("payload too large")))
            })
            .collect();
        assert!(
            errors.is_empty(),
            "unexpected ERROR log lines:\n{}",
            errors.join("\n")
        );
    }
}

/// One step of [`fault_run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultStep {
    /// SIGKILL the leader.
    KillLeader,
    /// SIGKILL a follower.
    KillFollower,
    /// Cut the leader off on the peer channel.
    PartitionLeader,
    /// Restart the killed replica, or heal the partition.
    Restore,
}

/// splitmix64: a seeded sequence, so a failing run can be replayed from its seed.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `flotilla clusters -o json` output without `last_contact`, which is the serving replica's memory,
/// not replicated state.
pub fn without_contact(v: &serde_json::Value) -> serde_json::Value {
    let mut v = v.clone();
    for c in v.as_array_mut().into_iter().flatten() {
        c.as_object_mut().map(|o| o.remove("last_contact"));
    }
    v
}

/// A randomized fault run on a hub started with [`ReplicatedHub::start_proxied`] and agents: `steps`
/// times, in an order drawn from `seed`, kill the leader or a follower, partition the leader, or
/// restore what was faulted (at most one replica faulted at once, so a majority stays), then commit
/// a change and check that every agent applies it and that no agent ever accepted a version twice
/// or out of order. At the end everything is restored and every replica must hold the same state.
/// `change(round)` writes the repository's change for a round. Returns the steps taken.
pub async fn fault_run(
    hub: &mut ReplicatedHub,
    seed: u64,
    steps: usize,
    change: impl Fn(&GitRepo, usize),
) -> Vec<FaultStep> {
    let mut random = seed;
    let mut taken = Vec::new();
    // The replica faulted now, and whether it is down (killed) or partitioned.
    let mut faulted: Option<(u64, bool)> = None;
    let n = hub.replicas.len() as u64;
    for round in 1..=steps {
        let step = match faulted {
            Some(_) => FaultStep::Restore,
            None => match next_random(&mut random) % 3 {
                0 => FaultStep::KillLeader,
                1 => FaultStep::KillFollower,
                _ => FaultStep::PartitionLeader,
            },
        };
        let leader = hub.leader().await;
        match step {
            FaultStep::KillLeader => {
                hub.replicas[(leader - 1) as usize].kill().await;
                faulted = Some((leader, true));
            }
            FaultStep::KillFollower => {
                let others: Vec<u64> = (1..=n).filter(|id| *id != leader).collect();
                let id = others[(next_random(&mut random) % others.len() as u64) as usize];
                hub.replicas[(id - 1) as usize].kill().await;
                faulted = Some((id, true));
            }
            FaultStep::PartitionLeader => {
                hub.partition(leader);
                faulted = Some((leader, false));
            }
            FaultStep::Restore => hub.restore(faulted.take()).await,
        }
        println!("fault run seed {seed} step {round}: {step:?} (leader was {leader})");
        taken.push(step);
        change(&hub.repo, round);
        let commit = hub.repo.commit(&format!("fault run step {round}"));
        let healthy = (1..=n)
            .find(|id| faulted.is_none_or(|(f, _)| f != *id))
            .expect("a healthy replica");
        hub.wait_converged_on(healthy, &commit).await;
        for a in &hub.agents {
            let log = std::fs::read_to_string(&a.log_path).unwrap_or_default();
            let accepted = crate::fixture::accepted_versions(&log);
            assert!(
                accepted.windows(2).all(|w| w[0] < w[1]),
                "seed {seed} step {round}: agent {} accepted {accepted:?}",
                a.name
            );
        }
    }
    hub.restore(faulted).await;
    hub.wait_hub_status("every replica back and caught up", |s| {
        s.replicas.len() as u64 == n
            && s.replicas.iter().filter(|r| r.role == "leader").count() == 1
            && s.replicas
                .iter()
                .all(|r| (r.role == "leader" || r.role == "follower") && r.lag == 0)
    })
    .await;
    let first = without_contact(&hub.clusters_on(1));
    for id in 2..=n {
        assert_eq!(
            without_contact(&hub.clusters_on(id)),
            first,
            "seed {seed}: replica {id} holds another state than replica 1"
        );
    }
    taken
}
