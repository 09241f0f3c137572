//! `raft-writes`: committed store writes per second on N replicas in this process — the real redb log
//! (fsync per append), the real state machine (the hub store, one redb commit per applied batch) and the
//! real mTLS peer channel on loopback. Each write is a `RecordReport` command, the hub's hot path, of a
//! cluster registered first. `--in-flight 1` proposes one write at a time; more lets openraft batch
//! appends and applies. Before reporting, every replica must have applied every write and hold the
//! last report.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use flotilla_common::status::StatusReport;
use flotilla_hub::config::TransportLimits;
use flotilla_hub::pki::CertificateAuthority;
use flotilla_hub::raft::network::{
    ReplicaNetwork, ReplicaTls, serve_replication, with_peer_channel_limits,
};
use flotilla_hub::raft::{LogStore, Proposal, TypeConfig};
use flotilla_hub::store::{
    Command, HubStore, Outcome, Registration, ReportEntry, TokenRecord, encode_command,
    open_state_machine,
};
use openraft::{BasicNode, Config, Raft};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

struct Replica {
    raft: Raft<TypeConfig>,
    store: HubStore,
}

pub async fn raft_writes(
    replicas: u64,
    writes: usize,
    in_flight: usize,
    batch: usize,
) -> anyhow::Result<()> {
    ensure!(
        replicas >= 1 && in_flight >= 1 && batch >= 1,
        "at least one replica, one write in flight and one report per entry"
    );
    let dir = tempfile::tempdir()?;
    let ca = CertificateAuthority::generate("flotilla bench ca")?;
    let config = Arc::new(
        with_peer_channel_limits(Config {
            cluster_name: "flotilla-bench".into(),
            heartbeat_interval: 100,
            election_timeout_min: 500,
            election_timeout_max: 1000,
            ..Default::default()
        })
        .validate()?,
    );
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let localhost: IpAddr = "127.0.0.1".parse()?;
    let mut nodes = BTreeMap::new();
    let mut fleet = Vec::new();
    for id in 1..=replicas {
        let issued = ca.issue_replica_cert(
            id,
            &["localhost".into()],
            &[localhost],
            Duration::from_secs(3600),
        )?;
        let tls = ReplicaTls {
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            ca_pem: ca.cert_pem(),
        };
        let at = dir.path().join(format!("replica-{id}"));
        std::fs::create_dir_all(&at)?;
        let (machine, store) = open_state_machine(&at.join("hub.redb"))?;
        let log = LogStore::open(&at.join("raft-log.redb"))?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        nodes.insert(id, BasicNode::new(listener.local_addr()?.to_string()));
        let raft = Raft::new(
            id,
            config.clone(),
            ReplicaNetwork::new(id, &tls),
            log,
            machine,
        )
        .await?;
        serve_replication(
            listener,
            raft.clone(),
            &tls,
            &TransportLimits::default(),
            stop.clone(),
            &tracker,
        )?;
        fleet.push(Replica { raft, store });
    }
    fleet[0].raft.initialize(nodes).await?;
    let leader = fleet[0]
        .raft
        .wait(Some(Duration::from_secs(30)))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await?
        .current_leader
        .context("no leader")?;
    let leader = &fleet[(leader - 1) as usize].raft;

    let propose = |command: Command| {
        let raft = leader.clone();
        async move {
            let answer = raft
                .client_write(Proposal(encode_command(&command)))
                .await?;
            Ok::<Outcome, anyhow::Error>(serde_json::from_slice(&answer.data.0)?)
        }
    };
    propose(Command::PutToken {
        hash: [1; 32],
        record: TokenRecord {
            labels: Default::default(),
            created_at: 0,
            expires_at: i64::MAX,
            used_by: None,
            name: None,
        },
    })
    .await?;
    let registered = propose(Command::Register(Registration {
        token_hash: [1; 32],
        now: 1,
        id: "c-00000000000000aa".into(),
        requested_name: "edge-1".into(),
        cert_expires_at: 0,
        capabilities: Default::default(),
    }))
    .await?;
    ensure!(matches!(registered, Outcome::Cluster(_)), "{registered:?}");

    let status = |seq: u64| StatusReport {
        seq,
        observed_at: seq as i64,
        applied_version: 1,
        apps: Vec::new(),
        rejection: None,
    };
    // One report per entry (`RecordReport`), or `batch` reports per entry as the hub's report
    // batcher writes them (`RecordReports`).
    let report = |first: u64, last: u64| {
        if batch == 1 {
            Command::RecordReport {
                cluster_id: "c-00000000000000aa".into(),
                report: status(first),
                received_at: first as i64,
            }
        } else {
            Command::RecordReports {
                reports: (first..=last)
                    .map(|seq| ReportEntry {
                        cluster_id: "c-00000000000000aa".into(),
                        report: status(seq),
                        received_at: seq as i64,
                    })
                    .collect(),
            }
        }
    };
    let started = Instant::now();
    let mut next = 1u64;
    let mut pending = tokio::task::JoinSet::new();
    while (next as usize) <= writes || !pending.is_empty() {
        while pending.len() < in_flight && (next as usize) <= writes {
            let last = (next + batch as u64 - 1).min(writes as u64);
            pending.spawn(propose(report(next, last)));
            next = last + 1;
        }
        if let Some(done) = pending.join_next().await {
            let outcome = done??;
            ensure!(
                matches!(outcome, Outcome::Report(Some(_)) | Outcome::Reports(_)),
                "{outcome:?}"
            );
        }
    }
    let elapsed = started.elapsed();
    let last = leader
        .metrics()
        .borrow()
        .last_applied
        .context("nothing applied")?;
    for (i, r) in fleet.iter().enumerate() {
        r.raft
            .wait(Some(Duration::from_secs(60)))
            .applied_index_at_least(Some(last.index), "every write applied")
            .await?;
        let seq = r.store.report("c-00000000000000aa")?.map(|r| r.seq);
        ensure!(
            seq == Some(writes as u64),
            "replica {} holds report {seq:?}",
            i + 1
        );
    }
    for r in &fleet {
        r.raft.shutdown().await?;
    }
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    println!(
        "raft-writes, {replicas} replica(s), {writes} status reports, {batch} per entry, {in_flight} entries in flight: {:.0} committed reports/s ({:.2} ms per report on average), every replica holds the last report",
        writes as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / writes as f64
    );
    Ok(())
}
