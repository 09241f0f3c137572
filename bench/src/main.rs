//! `flotilla-bench`: measures the real binaries on this machine.
//!
//! `latency`: a hub and N agents on loopback; each round commits a change to
//! the Git source and times (a) until every agent's target holds the new
//! object and (b) until the hub's status shows every cluster converged on
//! the commit. A round only counts after every cluster is verified on it.

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
    },
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

fn summary(name: &str, mut samples: Vec<Duration>) {
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Latency {
            agents,
            rounds,
            interval,
        } => latency(agents, rounds, interval)
            .await
            .context("latency benchmark"),
    }
}
