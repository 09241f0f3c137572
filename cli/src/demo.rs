//! `flotilla demo`: an example repository, a hub and three agents on this
//! machine, converging on one commit and then on the next.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use flotilla_common::labels::parse_labels;

use crate::client::{self, StatusView};
use crate::fleet::{Binaries, LocalAgent, LocalHub};
use flotilla_kubesim::KubeSim;

/// Options of `flotilla demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Exit after the second convergence instead of waiting for Ctrl-C.
    pub once: bool,
    /// Where to put everything; a temporary directory (removed at exit) when absent.
    pub dir: Option<PathBuf>,
    /// How long to wait for each convergence.
    pub timeout: Duration,
    /// What the agents apply to.
    pub clusters: ClusterKind,
}

/// What the demo's agents apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClusterKind {
    /// A Kubernetes API simulator per cluster (kubesim), reachable with kubectl.
    Kube,
    /// A directory per cluster, one JSON file per object.
    Dir,
}

/// The demo's clusters: name and labels.
const CLUSTERS: &[(&str, &str)] = &[
    ("edge-1", "tier=edge,ring=canary,region=eu"),
    ("core-eu", "tier=core,ring=1,region=eu"),
    ("core-us", "tier=core,ring=1,region=us"),
];

const MANIFEST: &str = r#"# Apps this repository declares; see DESIGN.md section 5.
apps:
  - name: guestbook
    path: apps/guestbook
    namespace: guestbook
    targets:
      - name: edge
        selector: {matchLabels: {tier: edge}}
        patches:
          - target: {kind: Deployment, name: frontend}
            merge: {spec: {replicas: 1}}
      - name: everyone-else
        selector: {}
    # Each new release goes to the canary first, then to ring 1 one cluster at a time.
    rollout:
      stages:
        - {name: canary, selector: {matchLabels: {ring: canary}}}
        - {name: ring-1, selector: {matchLabels: {ring: "1"}}, maxUnavailable: 1}
  - name: site-config
    path: apps/site-config
    namespace: guestbook
    dependsOn: [guestbook]
    values: {greeting: hello}
"#;

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: guestbook\n";

fn deployment(replicas: u32, image: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: frontend
  labels: {{app: guestbook}}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: guestbook}}
  template:
    metadata:
      labels: {{app: guestbook}}
    spec:
      containers:
        - name: php-redis
          image: {image}
          ports: [{{containerPort: 80}}]
---
apiVersion: v1
kind: Service
metadata:
  name: frontend
spec:
  selector: {{app: guestbook}}
  ports: [{{port: 80}}]
"#
    )
}

const SITE_CONFIG: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: site-config
data:
  cluster: "{{ cluster.name }}"
  region: "{{ cluster.labels.region }}"
  greeting: "{{ values.greeting }}"
"#;

fn git(repo: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args([
            "-c",
            "user.name=Flotilla Demo",
            "-c",
            "user.email=demo@flotilla.invalid",
        ])
        .args(args)
        .output()
        .context("running git (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn write(repo: &Path, path: &str, text: &str) -> anyhow::Result<()> {
    let full = repo.join(path);
    std::fs::create_dir_all(full.parent().expect("file in a directory"))?;
    std::fs::write(&full, text).with_context(|| format!("writing {}", full.display()))
}

/// Creates the example repository and returns its first commit.
fn create_repo(repo: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(repo)?;
    git(repo, &["init", "-q", "-b", "main"])?;
    write(repo, "flotilla.yaml", MANIFEST)?;
    write(repo, "apps/guestbook/namespace.yaml", NAMESPACE)?;
    write(
        repo,
        "apps/guestbook/frontend.yaml",
        &deployment(2, "gb-frontend:v4"),
    )?;
    write(
        repo,
        "apps/guestbook/README.md",
        "Not rendered: only YAML and JSON are.\n",
    )?;
    write(repo, "apps/site-config/config.yaml.j2", SITE_CONFIG)?;
    git(repo, &["add", "-A"])?;
    git(repo, &["commit", "-q", "-m", "guestbook v4"])?;
    git(repo, &["rev-parse", "HEAD"])
}

/// Commits the change the demo rolls out second.
fn commit_change(repo: &Path) -> anyhow::Result<String> {
    write(
        repo,
        "apps/guestbook/frontend.yaml",
        &deployment(3, "gb-frontend:v5"),
    )?;
    write(
        repo,
        "flotilla.yaml",
        &MANIFEST.replace("greeting: hello", "greeting: hello fleet"),
    )?;
    git(
        repo,
        &["commit", "-q", "-am", "guestbook v5, three replicas"],
    )?;
    git(repo, &["rev-parse", "HEAD"])
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

async fn wait_converged(
    hub: &LocalHub,
    commit: &str,
    timeout: Duration,
) -> anyhow::Result<StatusView> {
    let mut admin = client::connect_admin(&hub.url(), &hub.admin_dir()).await?;
    let end = tokio::time::Instant::now() + timeout;
    let mut last_line = String::new();
    loop {
        let status = client::status(&mut admin).await?;
        let done = status
            .clusters
            .iter()
            .filter(|c| {
                c.apps
                    .iter()
                    .all(|a| a.phase == "applied" && a.applied_commit == commit)
                    && !c.apps.is_empty()
            })
            .count();
        let line = format!(
            "  {done}/{} clusters applied {}",
            status.clusters.len(),
            short(commit)
        );
        if line != last_line {
            println!("{line}");
            last_line = line;
        }
        if status.converged_at(commit) {
            return Ok(status);
        }
        if let Some(err) = status.sources.iter().find(|s| !s.error.is_empty()) {
            println!("  source {}: {}", err.name, err.error);
        }
        if tokio::time::Instant::now() >= end {
            bail!(
                "clusters did not converge on {} within {:?}",
                short(commit),
                timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs the demo.
pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let bins = Binaries::locate()?;
    let temp;
    let dir = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("flotilla-demo-")
                .tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let mut fleet = DemoFleet::default();
    let result = run_in(&opts, &bins, &dir, &mut fleet).await;
    for agent in &mut fleet.agents {
        agent.stop().await;
    }
    if let Some(hub) = &mut fleet.hub {
        hub.stop().await;
    }
    for sim in fleet.clusters.drain(..) {
        sim.shutdown().await;
    }
    result
}

/// Everything the demo started, so it can all be stopped whatever happened.
#[derive(Default)]
struct DemoFleet {
    hub: Option<LocalHub>,
    agents: Vec<LocalAgent>,
    clusters: Vec<KubeSim>,
}

async fn run_in(
    opts: &DemoOptions,
    bins: &Binaries,
    dir: &Path,
    fleet: &mut DemoFleet,
) -> anyhow::Result<()> {
    let repo = dir.join("repo");
    let first = create_repo(&repo)?;
    println!(
        "created example repository {} at {}",
        repo.display(),
        short(&first)
    );

    let config = format!(
        "listen: 127.0.0.1:0\nsources:\n  - name: demo\n    url: file://{}\n    branch: main\n    interval: 1s\n",
        repo.display()
    );
    let hub = fleet.hub.insert(LocalHub::init(bins, dir, &config).await?);
    hub.start().await?;
    println!(
        "hub listening on {} (log: {})",
        hub.url(),
        hub.log_path.display()
    );

    let mut admin = client::connect_admin(&hub.url(), &hub.admin_dir()).await?;
    for (name, labels) in CLUSTERS {
        let labels = parse_labels(labels)?;
        let token =
            client::create_token(&mut admin, Duration::from_secs(600), &labels, None).await?;
        let mut agent = LocalAgent::new(bins, dir, name, &token.token, hub)?;
        let target = match opts.clusters {
            ClusterKind::Kube => {
                let sim = KubeSim::start(&dir.join(name).join("kube"))
                    .with_context(|| format!("starting the simulated cluster {name}"))?;
                let kubeconfig = sim.kubeconfig_path().to_path_buf();
                fleet.clusters.push(sim);
                agent.use_kubernetes(kubeconfig.clone());
                format!("simulated Kubernetes, kubeconfig {}", kubeconfig.display())
            }
            ClusterKind::Dir => format!("directory {}", agent.target_dir.display()),
        };
        agent.start()?;
        println!(
            "agent {name} started with labels {} ({target})",
            flotilla_common::labels::format_labels(&labels),
        );
        fleet.agents.push(agent);
    }

    println!(
        "waiting for {} clusters to converge on {}",
        CLUSTERS.len(),
        short(&first)
    );
    wait_converged(hub, &first, opts.timeout).await?;

    let second = commit_change(&repo)?;
    println!(
        "committed a change: {} (image v5, 3 replicas except on the edge, new greeting)",
        short(&second)
    );
    let status = wait_converged(hub, &second, opts.timeout).await?;

    println!();
    println!("What to look at:");
    for agent in fleet.agents.iter() {
        match &agent.kubeconfig {
            Some(kubeconfig) => println!(
                "  {}: kubectl --kubeconfig {} get deploy,svc,cm -n guestbook",
                agent.name,
                kubeconfig.display()
            ),
            None => println!(
                "  {}: objects in {}",
                agent.name,
                agent.target_dir.display()
            ),
        }
    }
    println!(
        "  status: flotilla status --hub {} --admin-dir {}",
        hub.url(),
        hub.admin_dir().display()
    );
    println!(
        "  rollout: flotilla rollout status guestbook --hub {} --admin-dir {}",
        hub.url(),
        hub.admin_dir().display()
    );
    println!(
        "  logs:   {} and <cluster>/agent.log under {}",
        hub.log_path.display(),
        dir.display()
    );
    if !opts.once {
        println!(
            "  commit to {} and watch the clusters follow; Ctrl-C stops everything",
            repo.display()
        );
    }
    println!(
        "converged {}/{} clusters at {}",
        status.clusters.len(),
        CLUSTERS.len(),
        second
    );
    if !opts.once {
        flotilla_hub::logging::shutdown_signal().await;
    }
    Ok(())
}
