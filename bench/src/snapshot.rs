//! `snapshot`: the Raft snapshot of a hub store holding N clusters, each registered through a token,
//! with a ClusterState (header, signature, a 1 KiB body, two objects shared by every cluster and one
//! of its own) and a status report — the states generated, not rendered. It builds the snapshot on
//! the state machine that applied them, installs it on a fresh one, and reports the snapshot's size
//! and both times. Before reporting, the fresh store must list N clusters, each with its state and
//! report.

use std::sync::Arc;
use std::time::Instant;

use anyhow::ensure;
use flotilla_common::cluster_state::SignedClusterState;
use flotilla_common::digest::Digest;
use flotilla_common::status::{AppPhase, AppStatus, StatusReport};
use flotilla_hub::raft::{Proposal, TypeConfig};
use flotilla_hub::store::{
    Command, NewState, Registration, ReportEntry, TokenRecord, encode_command, open_state_machine,
};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

/// Commands each generated cluster takes: a token, a registration, a state and a report.
const COMMANDS_PER_CLUSTER: usize = 4;

/// Commands applied per batch (one state machine transaction).
const BATCH: usize = 200;

fn entry(index: u64, command: &Command) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal(encode_command(command))),
    }
}

/// A state machine in `dir` that applied what `clusters` generated clusters leave in the store,
/// and the store over it.
pub(crate) async fn generated_store(
    dir: &std::path::Path,
    clusters: usize,
) -> anyhow::Result<(
    flotilla_hub::raft::StateMachineStore<flotilla_hub::store::StoreCommands>,
    flotilla_hub::store::HubStore,
)> {
    let (mut leader, store) = open_state_machine(&dir.join("leader.redb"))?;
    let shared: Vec<(Digest, Arc<Vec<u8>>)> = [b'a', b'b']
        .iter()
        .map(|t| {
            let bytes = vec![*t; 2048];
            (Digest::of(&bytes), Arc::new(bytes))
        })
        .collect();
    let mut commands = Vec::new();
    for i in 0..clusters {
        let id = format!("c-{i:016x}");
        let hash = Digest::of(id.as_bytes()).0;
        commands.push(Command::PutToken {
            hash,
            record: TokenRecord {
                labels: [("ring".to_string(), format!("r{}", i % 10))].into(),
                created_at: 1,
                expires_at: i64::MAX,
                used_by: None,
                name: None,
            },
        });
        commands.push(Command::Register(Registration {
            token_hash: hash,
            now: 2,
            id: id.clone(),
            requested_name: format!("edge-{i}"),
            cert_expires_at: 3,
            capabilities: Default::default(),
        }));
        let own = format!("{{\"kind\":\"ConfigMap\",\"cluster\":\"{id}\"}}").repeat(20);
        let own = own.into_bytes();
        let mut blobs = shared.clone();
        blobs.push((Digest::of(&own), Arc::new(own)));
        commands.push(Command::CommitStates {
            states: vec![NewState {
                cluster_id: id.clone(),
                version: 1,
                signed: SignedClusterState {
                    header: vec![b'h'; 200],
                    signature: vec![b's'; 64],
                    body: vec![b'b'; 1024],
                },
                blobs,
            }],
            rollouts: Vec::new(),
            retention: 100,
        });
        commands.push(Command::RecordReports {
            reports: vec![ReportEntry {
                cluster_id: id,
                report: StatusReport {
                    seq: 1,
                    observed_at: 4,
                    applied_version: 1,
                    apps: vec![AppStatus {
                        app: "web".into(),
                        commit: "0123456789abcdef0123456789abcdef01234567".into(),
                        version: 1,
                        phase: AppPhase::Applied,
                        message: String::new(),
                        health: Default::default(),
                        health_reason: String::new(),
                    }],
                    rejection: None,
                },
                received_at: 5,
            }],
        });
    }
    let mut index = 0;
    for chunk in commands.chunks(BATCH) {
        let entries: Vec<_> = chunk
            .iter()
            .map(|c| {
                index += 1;
                entry(index, c)
            })
            .collect();
        leader.apply(entries).await?;
    }
    Ok((leader, store))
}

pub async fn snapshot(clusters: usize) -> anyhow::Result<()> {
    ensure!(clusters >= 1, "at least one cluster");
    let dir = tempfile::tempdir()?;
    let (mut leader, _) = generated_store(dir.path(), clusters).await?;

    let started = Instant::now();
    let built = leader.get_snapshot_builder().await.build_snapshot().await?;
    let build_time = started.elapsed();
    let bytes = built.snapshot.get_ref().len();

    let (mut follower, follower_store) = open_state_machine(&dir.path().join("follower.redb"))?;
    let started = Instant::now();
    let mut received = follower.begin_receiving_snapshot().await?;
    received
        .get_mut()
        .extend_from_slice(built.snapshot.get_ref());
    follower.install_snapshot(&built.meta, received).await?;
    let install_time = started.elapsed();

    let listed = follower_store.clusters()?;
    ensure!(
        listed.len() == clusters,
        "the installed store lists {} clusters, not {clusters}",
        listed.len()
    );
    for c in &listed {
        ensure!(
            follower_store.latest_state(&c.id)?.is_some()
                && follower_store.report(&c.id)?.is_some(),
            "cluster {} lost its state or report in the snapshot",
            c.id
        );
    }
    println!(
        "{clusters} clusters ({} commands): snapshot {:.1} MiB ({} bytes), built in {:.0} ms, installed in {:.0} ms; the installed store lists every cluster with its state and report",
        clusters * COMMANDS_PER_CLUSTER,
        bytes as f64 / (1024.0 * 1024.0),
        bytes,
        build_time.as_secs_f64() * 1000.0,
        install_time.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// `metrics-scrape`: the hub's `/metrics` text over a store of `clusters` generated clusters, each
/// converged on its one state. Before reporting, the text must count every cluster as converged.
pub async fn metrics_scrape(clusters: usize, scrapes: usize) -> anyhow::Result<()> {
    ensure!(
        clusters >= 1 && scrapes >= 1,
        "at least one cluster and one scrape"
    );
    let dir = tempfile::tempdir()?;
    let (_machine, store) = generated_store(dir.path(), clusters).await?;
    let metrics = flotilla_hub::metrics::HubMetrics::new();
    let mut times = Vec::new();
    let mut text = String::new();
    for _ in 0..scrapes {
        let started = Instant::now();
        metrics.count_clusters(&store);
        text = metrics.encode();
        times.push(started.elapsed());
    }
    let converged = format!("flotilla_hub_clusters{{state=\"converged\"}} {clusters}\n");
    ensure!(
        text.contains(&converged),
        "the scrape does not count {clusters} converged clusters:\n{text}"
    );
    times.sort();
    println!(
        "metrics scrape of a hub with {clusters} clusters: {} bytes, {} series lines; median {:.1} ms, max {:.1} ms over {scrapes} scrapes",
        text.len(),
        text.lines().filter(|l| !l.starts_with('#')).count(),
        times[times.len() / 2].as_secs_f64() * 1000.0,
        times[times.len() - 1].as_secs_f64() * 1000.0,
    );
    Ok(())
}
