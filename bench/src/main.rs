//! `flotilla-bench`: measures the real binaries on this machine.
//!
//! `latency`: a hub and N agents on loopback; each round commits a change to
//! the Git source and times (a) until every agent's target holds the new
//! object and (b) until the hub's status shows every cluster converged on
//! the commit. A round only counts after every cluster is verified on it.
//!
//! `register-flood`: a hub serving N agents while clients hammer `Register` with bad tokens
//! from one address: how many attempts per second the hub sheds (ResourceExhausted) and how
//! long a commit then takes to converge on every agent.

mod alerts;
mod failover;
mod faults;
mod identity;
mod raft;
mod render;
mod rollout;
mod snapshot;
mod webhook;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use flotilla_tests::fixture::{Fleet, GitRepo};

#[derive(Parser)]
#[command(
    name = "flotilla-bench",
    about = "Benchmarks of the real Flotilla binaries"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Commit-to-applied latency.
    Latency {
        /// Agents (each a registered cluster with a directory target).
        #[arg(long, default_value_t = 3)]
        agents: usize,
        /// Measured commits.
        #[arg(long, default_value_t = 20)]
        rounds: usize,
        /// The hub's source poll interval.
        #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Bring each commit with a signed push webhook to a follower of three replicas whose
        /// source is polled hourly (the same as `webhook-latency`) instead of by polling.
        #[arg(long)]
        webhook: bool,
    },
    /// Alert delivery latency and throughput from the hub's notifier to a local webhook sink.
    Alerts {
        /// Events for the throughput run.
        #[arg(long, default_value_t = 2000)]
        events: usize,
        /// Events recorded per store transaction in the throughput run.
        #[arg(long, default_value_t = 50)]
        batch: usize,
        /// Events recorded one at a time for the latency figures.
        #[arg(long, default_value_t = 50)]
        samples: usize,
    },
    /// Commit-to-converged latency when a push webhook (to a follower of three replicas) triggers
    /// the fetch and the source is polled hourly.
    WebhookLatency {
        /// Agents.
        #[arg(long, default_value_t = 3)]
        agents: usize,
        /// Measured commits.
        #[arg(long, default_value_t = 20)]
        rounds: usize,
    },
    /// Committed store writes per second on N replicas in this process (real redb log with fsync,
    /// the hub store as state machine, mTLS peer channel), one at a time or several in flight.
    RaftWrites {
        /// Replicas (1, 3 or 5).
        #[arg(long, default_value_t = 3)]
        replicas: u64,
        /// Status reports written.
        #[arg(long, default_value_t = 2000)]
        writes: usize,
        /// Proposals in flight at once (openraft batches them).
        #[arg(long, default_value_t = 1)]
        in_flight: usize,
        /// Reports per log entry (the hub's report batcher puts what queued meanwhile in one).
        #[arg(long, default_value_t = 1)]
        batch: usize,
    },
    /// Three hub replicas and N agents: kill the leader (SIGKILL) and commit, K times; time to a new
    /// leader and to every cluster applying the commit.
    Failover {
        /// Leader kills.
        #[arg(long, default_value_t = 10)]
        kills: usize,
        /// Agents, spread over the replicas.
        #[arg(long, default_value_t = 6)]
        agents: usize,
    },
    /// The randomized fault run (kill, partition, restore in a seeded order, a commit after each
    /// step) on three hub replicas behind fault proxies.
    FaultRun {
        /// Seed of the order (print it to replay a failure).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Steps.
        #[arg(long, default_value_t = 30)]
        steps: usize,
        /// Agents, spread over the replicas.
        #[arg(long, default_value_t = 6)]
        agents: usize,
    },
    /// The Raft snapshot of a store of N clusters (generated states and reports): its size, and the
    /// time to build it and to install it on a fresh replica.
    Snapshot {
        /// Clusters.
        #[arg(long, default_value_t = 10_000)]
        clusters: usize,
    },
    /// The hub's /metrics text for a store of N clusters (generated states and reports): its size,
    /// and the time to read the cluster gauges and encode, over a number of scrapes.
    MetricsScrape {
        /// Clusters.
        #[arg(long, default_value_t = 1_000)]
        clusters: usize,
        /// Scrapes to time.
        #[arg(long, default_value_t = 20)]
        scrapes: usize,
    },
    /// The pure rollout engine over N simulated clusters in three stages: time per step.
    RolloutEngine {
        /// Clusters.
        #[arg(long, default_value_t = 10_000)]
        clusters: usize,
    },
    /// The real hub and N agents on simulated clusters in three stages with bake 0: commit to the rollout
    /// completed and to every cluster holding the release, and the time to roll back a failing canary.
    RolloutFleet {
        /// Agents (each with its own Kubernetes API simulator; at least 5).
        #[arg(long, default_value_t = 10)]
        agents: usize,
        /// Measured releases.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// The hub's renderer over N clusters in 3 targets for raw, template, kustomize and Helm apps,
    /// with and without memoization (real kubectl kustomize and Helm engine).
    Render {
        /// Clusters in the fleet.
        #[arg(long, default_value_t = 1000)]
        clusters: usize,
        /// Clusters rendered one by one without memoization.
        #[arg(long, default_value_t = 30)]
        sample: usize,
        /// Renders at once.
        #[arg(long, default_value_t = 2)]
        parallelism: usize,
    },
    /// N clusters registered with the real hub: time to renew every certificate at once,
    /// and time for `cluster delete` to end a live Watch stream.
    Identity {
        /// Registered clusters.
        #[arg(long, default_value_t = 100)]
        clusters: usize,
    },
    /// One agent with the Kubernetes target on a simulated cluster: time to
    /// apply a large app, resident memory, and API requests while idle.
    Kube {
        /// Objects in the app (one Namespace plus ConfigMaps).
        #[arg(long, default_value_t = 1000)]
        objects: usize,
        /// How long to count API requests after convergence.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        quiet: Duration,
    },
    /// Registration attempts shed per second while agents are served.
    RegisterFlood {
        /// Agents served during the flood.
        #[arg(long, default_value_t = 100)]
        agents: usize,
        /// Concurrent flooding clients (each its own TLS connection).
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// How long the flood lasts.
        #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
}

#[derive(Default)]
struct FloodCounts {
    shed: AtomicU64,
    refused: AtomicU64,
    other: AtomicU64,
}

async fn flood_client(url: String, ca: String, until: Instant, counts: Arc<FloodCounts>) {
    use flotilla_proto::v1 as pb;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    let Ok(endpoint) = Channel::from_shared(url) else {
        return;
    };
    let Ok(endpoint) =
        endpoint.tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
    else {
        return;
    };
    let mut client = pb::registration_client::RegistrationClient::new(endpoint.connect_lazy());
    while Instant::now() < until {
        let answer = client
            .register(pb::RegisterRequest {
                bootstrap_token: "flt_flood".into(),
                csr_der: vec![0; 64],
                requested_name: "flood".into(),
                labels: Default::default(),
                capabilities: None,
            })
            .await;
        let counter = match answer {
            Err(s) if s.code() == tonic::Code::ResourceExhausted => &counts.shed,
            Err(s) if s.code() == tonic::Code::PermissionDenied => &counts.refused,
            _ => &counts.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

async fn register_flood(agents: usize, clients: usize, duration: Duration) -> anyhow::Result<()> {
    let mut fleet = Fleet::start_with_interval(
        |repo: &GitRepo| {
            repo.write("flotilla.yaml", MANIFEST)
                .write("app/cm.yaml", &config_map(0));
            repo.commit("round 0");
        },
        Duration::from_millis(100),
    )
    .await;
    for i in 0..agents {
        fleet.add_agent(&format!("bench-{i}"), "tier=bench").await;
    }
    let first = fleet.repo.git(&["rev-parse", "HEAD"]);
    fleet.wait_converged(&first).await;

    let ca = std::fs::read_to_string(fleet.hub.ca_path()).context("reading the hub CA")?;
    let counts = Arc::new(FloodCounts::default());
    let start = Instant::now();
    let until = start + duration;
    let flooders: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(flood_client(
                fleet.hub.url(),
                ca.clone(),
                until,
                counts.clone(),
            ))
        })
        .collect();
    // While the flood runs, a commit must still reach every agent.
    fleet.repo.write("app/cm.yaml", &config_map(1));
    let commit_at = Instant::now();
    let commit = fleet.repo.commit("round 1");
    let status = fleet.wait_converged(&commit).await;
    let converged = commit_at.elapsed();
    if status.clusters.len() != agents || !status.converged_at(&commit) {
        bail!("hub does not show every cluster on {commit} during the flood");
    }
    let flooding_at_convergence = Instant::now() < until;
    for f in flooders {
        f.await.context("flood client")?;
    }
    let secs = start.elapsed().as_secs_f64();
    let shed = counts.shed.load(Ordering::Relaxed);
    let refused = counts.refused.load(Ordering::Relaxed);
    let other = counts.other.load(Ordering::Relaxed);
    println!("agents={agents} flood clients={clients} duration={duration:?} (one peer address)");
    println!(
        "registration attempts: {:.0}/s shed (ResourceExhausted), {:.1}/s checked and refused (bad token), {other} other",
        shed as f64 / secs,
        refused as f64 / secs,
    );
    println!(
        "commit -> converged on all {agents} agents during the flood: {converged:.1?}{}",
        if flooding_at_convergence {
            ""
        } else {
            " (the flood ended first)"
        }
    );
    fleet.shutdown().await;
    Ok(())
}

const MANIFEST: &str = "apps:\n  - name: bench\n    path: app\n    namespace: bench\n";

fn config_map(round: usize) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: round\ndata:\n  round: \"{round}\"\n"
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

pub(crate) fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "{name}: n={} min={:.1?} median={:.1?} p95={:.1?} max={:.1?} mean={:.1?}",
        samples.len(),
        samples[0],
        percentile(&samples, 0.5),
        percentile(&samples, 0.95),
        samples[samples.len() - 1],
        mean
    );
}

async fn latency(agents: usize, rounds: usize, interval: Duration) -> anyhow::Result<()> {
    let mut fleet = Fleet::start_with_interval(
        |repo: &GitRepo| {
            repo.write("flotilla.yaml", MANIFEST)
                .write("app/cm.yaml", &config_map(0));
            repo.commit("round 0");
        },
        interval,
    )
    .await;
    for i in 0..agents {
        fleet.add_agent(&format!("bench-{i}"), "tier=bench").await;
    }
    let first = fleet.repo.git(&["rev-parse", "HEAD"]);
    fleet.wait_converged(&first).await;

    let key = "core_v1_ConfigMap_bench_round";
    let mut applied = Vec::new();
    let mut reported = Vec::new();
    for round in 1..=rounds {
        fleet.repo.write("app/cm.yaml", &config_map(round));
        let start = Instant::now();
        let commit = fleet.repo.commit(&format!("round {round}"));
        let want = round.to_string();
        let deadline = start + Duration::from_secs(60);
        loop {
            let done = (0..agents).all(|i| {
                fleet
                    .object(i, key)
                    .is_some_and(|o| o["data"]["round"] == serde_json::Value::String(want.clone()))
            });
            if done {
                break;
            }
            if Instant::now() > deadline {
                bail!("round {round}: not applied everywhere within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        applied.push(start.elapsed());
        let status = fleet.wait_converged(&commit).await;
        reported.push(start.elapsed());
        if status.clusters.len() != agents || !status.converged_at(&commit) {
            bail!("round {round}: hub does not show every cluster on {commit}");
        }
    }
    println!("agents={agents} rounds={rounds} poll-interval={interval:?}");
    summary("commit -> applied on every agent", applied);
    summary("commit -> converged in hub status", reported);
    fleet.shutdown().await;
    Ok(())
}

/// Resident set size of a process in KiB, from /proc.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn kube(objects: usize, quiet: Duration) -> anyhow::Result<()> {
    let configmaps = objects.saturating_sub(1);
    let mut fleet = Fleet::start_with_interval(
        |repo: &GitRepo| {
            repo.write("flotilla.yaml", "apps:\n  - name: big\n    path: app\n    namespace: big\n");
            let mut yaml = String::from("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: big\n");
            for i in 0..configmaps {
                yaml.push_str(&format!(
                    "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i:05}\ndata:\n  index: \"{i}\"\n"
                ));
            }
            repo.write("app/objects.yaml", &yaml);
            repo.commit("big app");
        },
        Duration::from_millis(100),
    )
    .await;
    let sim = flotilla_kubesim::KubeSim::start(&fleet.dir.path().join("kube"))?;
    let commit = fleet.repo.git(&["rev-parse", "HEAD"]);
    let start = Instant::now();
    fleet
        .add_kube_agent("big", "tier=bench", sim.kubeconfig_path())
        .await;
    let pid = fleet.agents[0].pid().context("agent pid")?;
    let mut peak_rss = 0;
    let deadline = start + Duration::from_secs(120);
    let applied = loop {
        peak_rss = peak_rss.max(rss_kib(pid).unwrap_or(0));
        let live = sim
            .list("v1", "ConfigMap")
            .iter()
            .filter(|c| c["metadata"]["namespace"] == "big")
            .count();
        if live == configmaps {
            break start.elapsed();
        }
        if Instant::now() > deadline {
            bail!("only {live} of {configmaps} ConfigMaps applied within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let status = fleet.wait_converged(&commit).await;
    let reported = start.elapsed();
    if !status.converged_at(&commit) {
        bail!("hub does not show the cluster converged on {commit}");
    }
    // Let the agent finish its post-apply observation before counting.
    fleet
        .wait_status("app healthy", Duration::from_secs(60), |s| {
            s.clusters
                .iter()
                .all(|c| c.apps.iter().all(|a| a.health == "healthy"))
        })
        .await;
    sim.reset_request_counts();
    let quiet_start = Instant::now();
    while quiet_start.elapsed() < quiet {
        peak_rss = peak_rss.max(rss_kib(pid).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let counts = sim.request_counts();
    let idle_rss = rss_kib(pid).unwrap_or(0);
    let minutes = quiet.as_secs_f64() / 60.0;
    println!(
        "objects={objects} (1 Namespace + {configmaps} ConfigMaps), agent --target kube on kubesim"
    );
    println!("agent start -> all objects live on the cluster: {applied:.1?}");
    println!("agent start -> converged in hub status: {reported:.1?}");
    println!("agent RSS: peak {peak_rss} KiB, idle after {quiet:?} {idle_rss} KiB");
    println!(
        "API requests while idle for {quiet:?}: {} total ({:.2}/min), {} writes",
        counts.total(),
        counts.total() as f64 / minutes,
        counts.writes()
    );
    fleet.shutdown().await;
    sim.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Identity { clusters } => identity::identity(clusters)
            .await
            .context("identity benchmark"),
        Command::RaftWrites {
            replicas,
            writes,
            in_flight,
            batch,
        } => raft::raft_writes(replicas, writes, in_flight, batch)
            .await
            .context("raft-writes benchmark"),
        Command::FaultRun {
            seed,
            steps,
            agents,
        } => faults::fault_run_bench(seed, steps, agents)
            .await
            .context("fault-run benchmark"),
        Command::MetricsScrape { clusters, scrapes } => snapshot::metrics_scrape(clusters, scrapes)
            .await
            .context("metrics-scrape benchmark"),
        Command::Snapshot { clusters } => snapshot::snapshot(clusters)
            .await
            .context("snapshot benchmark"),
        Command::Failover { kills, agents } => failover::failover(kills, agents)
            .await
            .context("failover benchmark"),
        Command::RolloutFleet { agents, rounds } => rollout::rollout_fleet(agents, rounds)
            .await
            .context("rollout-fleet benchmark"),
        Command::RolloutEngine { clusters } => {
            rollout::rollout_engine(clusters).context("rollout-engine benchmark")
        }
        Command::Render {
            clusters,
            sample,
            parallelism,
        } => render::render(clusters, sample, parallelism).context("render benchmark"),
        Command::Kube { objects, quiet } => kube(objects, quiet).await.context("kube benchmark"),
        Command::RegisterFlood {
            agents,
            clients,
            duration,
        } => register_flood(agents, clients, duration)
            .await
            .context("register-flood benchmark"),
        Command::Alerts {
            events,
            batch,
            samples,
        } => alerts::alerts(events, batch, samples)
            .await
            .context("alerts benchmark"),
        Command::WebhookLatency { agents, rounds } => webhook::webhook_latency(agents, rounds)
            .await
            .context("webhook-latency benchmark"),
        Command::Latency {
            agents,
            rounds,
            webhook: true,
            ..
        } => webhook::webhook_latency(agents, rounds)
            .await
            .context("latency benchmark with push webhooks"),
        Command::Latency {
            agents,
            rounds,
            interval,
            webhook: false,
        } => latency(agents, rounds, interval)
            .await
            .context("latency benchmark"),
    }
}
