//! Git repositories and fleets for tests.

use std::path::Path;
use std::time::Duration;

use flotilla_cli::client::{self, StatusView};
use flotilla_cli::fleet::{Binaries, LocalAgent, LocalHub, wait_for};
use flotilla_common::labels::parse_labels;
pub use flotilla_testkit::GitRepo;

/// A hub plus agents in one temporary directory, all real processes.
pub struct Fleet {
    /// Temporary directory holding everything.
    pub dir: tempfile::TempDir,
    /// Binaries under test.
    pub bins: Binaries,
    /// The hub.
    pub hub: LocalHub,
    /// Agents, in the order added.
    pub agents: Vec<LocalAgent>,
    /// The Git source.
    pub repo: GitRepo,
}

/// Default deadline for convergence in tests: generous for a loaded 2-core CI machine.
pub const CONVERGE: Duration = Duration::from_secs(90);

impl Fleet {
    /// Creates a repo (filled by `fill`), a hub polling it every 200 ms, and starts the hub.
    pub async fn start(fill: impl FnOnce(&GitRepo)) -> Self {
        Self::start_with_interval(fill, Duration::from_millis(200)).await
    }

    /// Like [`Fleet::start`] with another source poll interval.
    pub async fn start_with_interval(fill: impl FnOnce(&GitRepo), interval: Duration) -> Self {
        Self::start_with_config(fill, interval, "").await
    }

    /// Like [`Fleet::start_with_interval`], with more hub.yaml lines.
    pub async fn start_with_config(
        fill: impl FnOnce(&GitRepo),
        interval: Duration,
        extra_config: &str,
    ) -> Self {
        Self::start_with_env(fill, interval, extra_config, Vec::new()).await
    }

    /// Like [`Fleet::start_with_config`], with environment variables for the hub process.
    pub async fn start_with_env(
        fill: impl FnOnce(&GitRepo),
        interval: Duration,
        extra_config: &str,
        env: Vec<(String, String)>,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("flotilla-e2e-")
            .tempdir()
            .expect("tempdir");
        let bins = Binaries::locate().expect("binaries built (cargo build --workspace --bins)");
        let repo = GitRepo::init(&dir.path().join("repo"));
        fill(&repo);
        let config = format!(
            "listen: 127.0.0.1:0\nsources:\n  - name: main\n    url: {}\n    branch: main\n    interval: {}ms\n{extra_config}",
            repo.url(),
            interval.as_millis()
        );
        let mut hub = LocalHub::init(&bins, dir.path(), &config)
            .await
            .expect("hub init");
        hub.env = env;
        hub.start().await.expect("hub start");
        Fleet {
            dir,
            bins,
            hub,
            agents: Vec::new(),
            repo,
        }
    }

    /// Creates a token with `labels` and starts an agent registering as `name`.
    pub async fn add_agent(&mut self, name: &str, labels: &str) -> usize {
        self.add_agent_with_args(name, labels, None, &[]).await
    }

    /// Like [`Fleet::add_agent`], applying to the Kubernetes cluster of `kubeconfig`.
    pub async fn add_kube_agent(&mut self, name: &str, labels: &str, kubeconfig: &Path) -> usize {
        self.add_agent_with_args(name, labels, Some(kubeconfig), &[])
            .await
    }

    /// Like [`Fleet::add_agent`] (or [`Fleet::add_kube_agent`] with `kubeconfig`), with more
    /// `flotilla-agent run` flags.
    pub async fn add_agent_with_args(
        &mut self,
        name: &str,
        labels: &str,
        kubeconfig: Option<&Path>,
        args: &[&str],
    ) -> usize {
        self.add_agent_with_hubs(name, labels, kubeconfig, &[self.hub.url()], args)
            .await
    }

    /// Like [`Fleet::add_agent_with_args`], with the agent's `--hub` URLs in order (e.g. a
    /// closed port or a [`crate::forwarder::Forwarder`] before the hub itself).
    pub async fn add_agent_with_hubs(
        &mut self,
        name: &str,
        labels: &str,
        kubeconfig: Option<&Path>,
        hubs: &[String],
        args: &[&str],
    ) -> usize {
        let token = self.token(labels, Duration::from_secs(600)).await;
        let mut agent = LocalAgent::new(&self.bins, self.dir.path(), name, &token, &self.hub)
            .expect("agent dir");
        agent.set_hub_urls(hubs.to_vec());
        if let Some(k) = kubeconfig {
            agent.use_kubernetes(k.to_path_buf());
        }
        agent.extra_args = args.iter().map(|a| a.to_string()).collect();
        agent.start().expect("agent start");
        self.agents.push(agent);
        self.agents.len() - 1
    }

    /// Creates a bootstrap token.
    pub async fn token(&self, labels: &str, ttl: Duration) -> String {
        let mut admin = client::connect_admin(&self.hub.url(), &self.hub.admin_dir())
            .await
            .expect("admin connect");
        client::create_token(
            &mut admin,
            ttl,
            &parse_labels(labels).expect("labels"),
            None,
        )
        .await
        .expect("create token")
        .token
    }

    /// The hub's status view.
    pub async fn status(&self) -> StatusView {
        let mut admin = client::connect_admin(&self.hub.url(), &self.hub.admin_dir())
            .await
            .expect("admin connect");
        client::status(&mut admin).await.expect("status")
    }

    /// Waits until `check` holds for the status, or panics after `deadline` with the last status.
    pub async fn wait_status(
        &self,
        what: &str,
        deadline: Duration,
        check: impl Fn(&StatusView) -> bool,
    ) -> StatusView {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            let status = self.status().await;
            if check(&status) {
                return status;
            }
            if tokio::time::Instant::now() >= end {
                panic!(
                    "timed out waiting for {what}; last status: {}",
                    serde_json::to_string_pretty(&status).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every cluster applied `commit`.
    pub async fn wait_converged(&self, commit: &str) -> StatusView {
        let n = self.agents.len();
        self.wait_status(&format!("{n} clusters on {commit}"), CONVERGE, |s| {
            s.clusters.len() == n && s.converged_at(commit)
        })
        .await
    }

    /// Reads one object file from an agent's directory target.
    pub fn object(&self, agent: usize, file_key: &str) -> Option<serde_json::Value> {
        let path = self.agents[agent]
            .target_dir
            .join(format!("{file_key}.json"));
        let bytes = std::fs::read(path).ok()?;
        Some(serde_json::from_slice(&bytes).expect("object file is JSON"))
    }

    /// The real `flotilla` binary, pointed at the hub and its admin bundle.
    pub fn cli_command(&self) -> std::process::Command {
        let mut command = std::process::Command::new(&self.bins.cli);
        command
            .env("FLOTILLA_HUB", self.hub.url())
            .env("FLOTILLA_ADMIN_DIR", self.hub.admin_dir());
        command
    }

    /// Runs the real `flotilla` binary against the hub with `-o json`; returns its parsed output.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli_text(&[args, &["-o", "json"]].concat());
        serde_json::from_str(&out).expect("JSON output")
    }

    /// Runs the real `flotilla` binary against the hub; returns its standard output.
    pub fn cli_text(&self, args: &[&str]) -> String {
        let out = self
            .cli_command()
            .args(args)
            .output()
            .expect("run flotilla");
        assert!(
            out.status.success(),
            "flotilla {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// Every log line the fleet's processes wrote.
    pub fn all_logs(&self) -> String {
        let mut out = std::fs::read_to_string(&self.hub.log_path).unwrap_or_default();
        for a in &self.agents {
            out.push_str(&std::fs::read_to_string(&a.log_path).unwrap_or_default());
        }
        out
    }

    /// Stops every process.
    pub async fn shutdown(mut self) {
        for a in &mut self.agents {
            a.stop().await;
        }
        self.hub.stop().await;
        // Logged errors are handled errors someone must look at; a passing
        // test leaves none behind (STYLE: tests fail on unexpected ERROR logs).
        let logs = self.all_logs();
        let errors: Vec<&str> = logs.lines().filter(|l| l.contains(" ERROR ")).collect();
        assert!(
            errors.is_empty(),
            "unexpected ERROR log lines:\n{}",
            errors.join("\n")
        );
    }
}

/// The versions an agent logged as accepted, in order.
pub fn accepted_versions(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| l.split("accepted version=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Polls a file-system condition until it holds.
pub async fn eventually(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    if wait_for(deadline, || check().then_some(())).await.is_none() {
        panic!("timed out after {deadline:?} waiting for {what}");
    }
}
