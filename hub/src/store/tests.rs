use super::*;
use flotilla_common::status::{AppPhase, AppStatus};

fn store() -> (tempfile::TempDir, HubStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = HubStore::open(&dir.path().join("hub.redb")).unwrap();
    (dir, store)
}

fn token(expires_at: i64) -> TokenRecord {
    TokenRecord {
        labels: [("env".to_string(), "dev".to_string())].into(),
        created_at: 0,
        expires_at,
        used_by: None,
        name: None,
    }
}

fn reg(hash: &[u8; 32], now: i64, id: &str, name: &str) -> Registration {
    Registration {
        token_hash: *hash,
        now,
        id: id.into(),
        requested_name: name.into(),
        cert_expires_at: 0,
        capabilities: Default::default(),
    }
}

#[test]
fn token_is_single_use() {
    let (_d, s) = store();
    s.put_token(&[1; 32], &token(100)).unwrap();
    let c = s.register(reg(&[1; 32], 10, "c-1", "a")).unwrap();
    assert_eq!(c.labels.get("env").map(String::as_str), Some("dev"));
    assert!(matches!(
        s.register(reg(&[1; 32], 11, "c-2", "b")),
        Err(RegisterError::BadToken)
    ));
    assert_eq!(s.clusters().unwrap().len(), 1);
}

#[test]
fn expired_or_unknown_token_creates_nothing() {
    let (_d, s) = store();
    s.put_token(&[1; 32], &token(100)).unwrap();
    assert!(matches!(
        s.register(reg(&[1; 32], 101, "c-1", "a")),
        Err(RegisterError::BadToken)
    ));
    assert!(matches!(
        s.register(reg(&[2; 32], 1, "c-1", "a")),
        Err(RegisterError::BadToken)
    ));
    assert!(s.clusters().unwrap().is_empty());
    assert_eq!(s.sweep_tokens(200).unwrap(), 1);
}

#[test]
fn duplicate_name_is_refused_and_token_kept() {
    let (_d, s) = store();
    s.put_token(&[1; 32], &token(100)).unwrap();
    s.put_token(&[2; 32], &token(100)).unwrap();
    s.register(reg(&[1; 32], 1, "c-1", "a")).unwrap();
    assert!(matches!(
        s.register(reg(&[2; 32], 1, "c-2", "a")),
        Err(RegisterError::NameTaken(_))
    ));
    // The refused registration did not burn the token.
    s.register(reg(&[2; 32], 1, "c-2", "b")).unwrap();
}

fn signed(tag: u8) -> SignedClusterState {
    SignedClusterState {
        header: vec![tag; 3],
        signature: vec![tag; 64],
        body: vec![tag; 10],
    }
}

/// Registers a cluster through a fresh token, as the API does.
fn registered(s: &HubStore, id: &str, name: &str) {
    let hash = Digest::of(id.as_bytes()).0;
    s.put_token(&hash, &token(i64::MAX)).unwrap();
    s.register(reg(&hash, 1, id, name)).unwrap();
}

#[test]
fn states_blobs_and_access_index() {
    let (dir, s) = store();
    registered(&s, "c-1", "one");
    registered(&s, "c-2", "two");
    let d1 = Digest::of(b"one");
    let d2 = Digest::of(b"two");
    s.commit_states(&[
        NewState {
            cluster_id: "c-1".into(),
            version: 1,
            signed: signed(1),
            blobs: vec![(d1, Arc::new(b"one".to_vec()))],
        },
        NewState {
            cluster_id: "c-2".into(),
            version: 1,
            signed: signed(2),
            blobs: vec![(d2, Arc::new(b"two".to_vec()))],
        },
    ])
    .unwrap();
    s.commit_states(&[NewState {
        cluster_id: "c-1".into(),
        version: 2,
        signed: signed(3),
        blobs: vec![],
    }])
    .unwrap();
    s.commit_states(&[NewState {
        cluster_id: "c-1".into(),
        version: 3,
        signed: signed(4),
        blobs: vec![],
    }])
    .unwrap();

    assert_eq!(s.latest_state("c-1").unwrap().unwrap(), (3, signed(4)));
    assert_eq!(s.state("c-1", 1).unwrap().unwrap(), signed(1));
    assert_eq!(
        s.headers_between("c-1", 1, 3).unwrap(),
        vec![signed(3).signed_header()]
    );
    assert!(s.headers_between("c-1", 2, 3).unwrap().is_empty());
    assert!(s.latest_state("c-9").unwrap().is_none());

    assert_eq!(s.blob_for_cluster("c-1", &d1).unwrap().unwrap(), b"one");
    assert!(
        s.blob_for_cluster("c-1", &d2).unwrap().is_none(),
        "c-1 must not read c-2's blob"
    );
    assert!(s.blob_for_cluster("c-2", &d1).unwrap().is_none());

    drop(s);
    let s = HubStore::open(&dir.path().join("hub.redb")).unwrap();
    assert_eq!(
        s.latest_state("c-1").unwrap().unwrap().0,
        3,
        "survives reopen"
    );
}

#[test]
fn reports_are_idempotent_by_seq() {
    let (_d, s) = store();
    registered(&s, "c-1", "one");
    let report = |seq| StatusReport {
        seq,
        observed_at: 1,
        applied_version: seq,
        apps: vec![AppStatus {
            app: "a".into(),
            commit: "c".into(),
            version: seq,
            phase: AppPhase::Applied,
            message: String::new(),
            health: Default::default(),
            health_reason: String::new(),
        }],
        rejection: None,
    };
    assert!(s.record_report("c-1", &report(2), 100).unwrap());
    assert!(!s.record_report("c-1", &report(2), 100).unwrap());
    assert!(!s.record_report("c-1", &report(1), 100).unwrap());
    assert_eq!(s.report("c-1").unwrap().unwrap().seq, 2);
    assert!(s.record_report("c-1", &report(3), 100).unwrap());
    assert_eq!(s.report("c-1").unwrap().unwrap().applied_version, 3);
}

#[test]
fn a_pinned_name_refusal_keeps_the_token() {
    let (_d, s) = store();
    s.put_token(
        &[1; 32],
        &TokenRecord {
            name: Some("edge-1".into()),
            ..token(100)
        },
    )
    .unwrap();
    let err = s.register(reg(&[1; 32], 1, "c-1", "other")).unwrap_err();
    assert!(err.to_string().contains("\"edge-1\""), "{err}");
    assert!(matches!(err, RegisterError::NamePinned { .. }), "{err}");
    let c = s.register(reg(&[1; 32], 1, "c-1", "edge-1")).unwrap();
    assert_eq!(c.name, "edge-1");
}

#[test]
fn labels_are_set_and_removed_by_name_or_id() {
    let (_d, s) = store();
    registered(&s, "c-1", "one");
    let set: Labels = [("tier".to_string(), "web".to_string())].into();
    let c = s.label_cluster("one", &set, &["env".to_string()]).unwrap();
    assert_eq!(c.labels, set);
    assert_eq!(s.find_cluster("c-1").unwrap().unwrap().labels, set);
    assert!(matches!(
        s.label_cluster("nope", &set, &[]),
        Err(ClusterUpdateError::NotFound(_))
    ));
}

#[test]
fn capabilities_are_stored_only_when_they_change_and_old_records_still_read() {
    let (_d, s) = store();
    // A record as hubs wrote it before capabilities (and before renewals).
    let old = r#"{"id":"c-old","name":"old","labels":{"env":"dev"},"registered_at":5}"#;
    let txn = s.db.begin_write().unwrap();
    txn.open_table(CLUSTERS)
        .unwrap()
        .insert("c-old", old.as_bytes())
        .unwrap();
    txn.commit().unwrap();
    let record = s.cluster("c-old").unwrap().unwrap();
    assert!(record.capabilities.is_empty());
    assert_eq!(record.labels.get("env").map(String::as_str), Some("dev"));

    let caps = Capabilities::new(
        Some("v1.32.4".into()),
        vec!["v1".into(), "apps/v1".into(), "apps/v1/Deployment".into()],
    )
    .unwrap();
    assert!(s.set_capabilities("old", &caps).is_err(), "by id only");
    assert!(s.set_capabilities("c-old", &caps).unwrap());
    assert!(!s.set_capabilities("c-old", &caps).unwrap(), "unchanged");
    assert_eq!(s.cluster("c-old").unwrap().unwrap().capabilities, caps);
    let raw: serde_json::Value = {
        let txn = s.db.begin_read().unwrap();
        let table = txn.open_table(CLUSTERS).unwrap();
        serde_json::from_slice(table.get("c-old").unwrap().unwrap().value()).unwrap()
    };
    assert_eq!(
        raw["capabilities"],
        serde_json::json!({"kubeVersion": "v1.32.4", "apiVersions": ["apps/v1", "apps/v1/Deployment", "v1"]})
    );
    // Back to none: the key is left out again, as in records that never had any.
    assert!(
        s.set_capabilities("c-old", &Capabilities::default())
            .unwrap()
    );
    let txn = s.db.begin_read().unwrap();
    let table = txn.open_table(CLUSTERS).unwrap();
    let raw = std::str::from_utf8(table.get("c-old").unwrap().unwrap().value())
        .unwrap()
        .to_string();
    assert!(!raw.contains("capabilities"), "{raw}");
    assert!(matches!(
        s.set_capabilities("c-nope", &caps),
        Err(ClusterUpdateError::NotFound(_))
    ));
}

#[test]
fn deleting_a_cluster_removes_its_states_index_and_report_only() {
    let (_d, s) = store();
    registered(&s, "c-1", "one");
    registered(&s, "c-2", "two");
    let shared = Digest::of(b"shared");
    for (id, version) in [("c-1", 1), ("c-1", 2), ("c-2", 1)] {
        s.commit_states(&[NewState {
            cluster_id: id.into(),
            version,
            signed: signed(version as u8),
            blobs: vec![(shared, Arc::new(b"shared".to_vec()))],
        }])
        .unwrap();
    }
    let report = StatusReport {
        seq: 1,
        observed_at: 1,
        applied_version: 1,
        apps: vec![],
        rejection: None,
    };
    assert!(s.record_report("c-1", &report, 7).unwrap());

    let gone = s.delete_cluster("one").unwrap();
    assert_eq!(gone.id, "c-1");
    assert!(s.find_cluster("c-1").unwrap().is_none());
    assert!(s.latest_state("c-1").unwrap().is_none());
    assert!(s.report("c-1").unwrap().is_none());
    assert!(s.blob_for_cluster("c-1", &shared).unwrap().is_none());
    // The other cluster keeps everything, including the blob both referenced.
    assert_eq!(s.latest_state("c-2").unwrap().unwrap().0, 1);
    assert!(s.blob_for_cluster("c-2", &shared).unwrap().is_some());
    // Late writes for the deleted cluster are dropped, not resurrected.
    s.commit_states(&[NewState {
        cluster_id: "c-1".into(),
        version: 3,
        signed: signed(3),
        blobs: vec![(shared, Arc::new(b"shared".to_vec()))],
    }])
    .unwrap();
    assert!(s.latest_state("c-1").unwrap().is_none());
    assert!(!s.record_report("c-1", &report, 7).unwrap());
    assert!(s.report("c-1").unwrap().is_none());
    // Its name is free again.
    registered(&s, "c-3", "one");
    assert!(matches!(
        s.delete_cluster("c-1"),
        Err(ClusterUpdateError::NotFound(_))
    ));
}

fn version(cluster: &str, v: u64, blobs: &[&'static [u8]]) -> NewState {
    NewState {
        cluster_id: cluster.into(),
        version: v,
        signed: signed(v as u8),
        blobs: blobs
            .iter()
            .map(|b| (Digest::of(b), Arc::new(b.to_vec())))
            .collect(),
    }
}

#[test]
fn retention_prunes_old_versions_and_the_blobs_only_they_referenced() {
    let (_d, s) = store();
    let s = s.with_retention(2);
    registered(&s, "c-1", "one");
    registered(&s, "c-2", "two");
    let [old, shared, new]: [&'static [u8]; 3] = [b"old", b"shared", b"new"];
    s.commit_states(&[
        version("c-1", 1, &[old, shared]),
        version("c-2", 1, &[shared]),
    ])
    .unwrap();
    s.commit_states(&[version("c-1", 2, &[shared])]).unwrap();
    assert!(
        s.has_blob(&Digest::of(old)).unwrap(),
        "version 1 is still retained"
    );
    let pruned = s.commit_states(&[version("c-1", 3, &[new])]).unwrap();
    assert_eq!(pruned.versions, 1);
    assert_eq!(pruned.blobs, 1, "only `old` lost its last reference");
    assert!(s.state("c-1", 1).unwrap().is_none());
    assert!(s.state("c-1", 2).unwrap().is_some());
    assert!(!s.has_blob(&Digest::of(old)).unwrap());
    assert!(
        s.blob_for_cluster("c-1", &Digest::of(old))
            .unwrap()
            .is_none()
    );
    // `shared` is still referenced by c-1 version 2 and by c-2.
    assert!(
        s.blob_for_cluster("c-1", &Digest::of(shared))
            .unwrap()
            .is_some()
    );
    let pruned = s.commit_states(&[version("c-1", 4, &[new])]).unwrap();
    assert_eq!(
        pruned,
        Pruned {
            versions: 1,
            blobs: 0
        },
        "c-2 still holds `shared`"
    );
    assert!(
        s.blob_for_cluster("c-1", &Digest::of(shared))
            .unwrap()
            .is_none(),
        "the (cluster, digest) index entry goes with c-1's last reference"
    );
    assert!(
        s.blob_for_cluster("c-2", &Digest::of(shared))
            .unwrap()
            .is_some()
    );
    assert!(
        s.state("c-2", 1).unwrap().is_some(),
        "c-2 has only one version"
    );
}

#[test]
fn chains_come_from_headers_and_are_refused_when_pruned_or_too_long() {
    let (_d, s) = store();
    let s = s.with_retention(3);
    registered(&s, "c-1", "one");
    registered(&s, "c-2", "two");
    for v in 1..=5 {
        s.commit_states(&[version("c-1", v, &[])]).unwrap();
    }
    // Versions 3, 4 and 5 are retained.
    assert_eq!(
        s.chain_between("c-1", 2, 5, 10).unwrap(),
        Some(vec![signed(3).signed_header(), signed(4).signed_header()])
    );
    assert_eq!(s.chain_between("c-1", 4, 5, 10).unwrap(), Some(vec![]));
    assert_eq!(
        s.chain_between("c-1", 1, 5, 10).unwrap(),
        None,
        "version 2 was pruned"
    );
    assert_eq!(
        s.chain_between("c-1", 2, 5, 1).unwrap(),
        None,
        "over the cap"
    );
    assert_eq!(
        s.chain_between("c-1", 2, 9, 10).unwrap(),
        None,
        "6..8 never existed"
    );
}

#[test]
fn last_report_time_is_the_hubs_clock() {
    let (_d, s) = store();
    registered(&s, "c-1", "one");
    s.put_token(&[1; 32], &token(100)).unwrap();
    s.register(reg(&[1; 32], 1, "c-1", "a")).unwrap();
    let report = StatusReport {
        seq: 1,
        observed_at: 99_999_999,
        applied_version: 0,
        apps: vec![],
        rejection: None,
    };
    s.record_report("c-1", &report, 500).unwrap();
    let snaps = s.cluster_snapshots().unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].reported_at, 500, "not the agent's observed_at");
}

#[test]
fn token_usable_reads_without_consuming() {
    let (_d, s) = store();
    s.put_token(&[1; 32], &token(100)).unwrap();
    assert!(s.token_usable(&[1; 32], 10).unwrap());
    assert!(
        s.token_usable(&[1; 32], 10).unwrap(),
        "a read consumes nothing"
    );
    assert!(!s.token_usable(&[1; 32], 101).unwrap(), "expired");
    assert!(!s.token_usable(&[2; 32], 10).unwrap(), "unknown");
    s.register(reg(&[1; 32], 10, "c-1", "a")).unwrap();
    assert!(!s.token_usable(&[1; 32], 10).unwrap(), "used");
}

#[test]
fn events_are_numbered_kept_within_retention_and_survive_reopening() {
    use crate::events::{NewEvent, Severity};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.redb");
    let s = HubStore::open(&path).unwrap();
    let event = |i: i64| {
        NewEvent::cluster(
            i,
            "cluster-registered",
            Severity::Info,
            "c",
            format!("#{i}"),
        )
    };
    let stored = s.append_events(&[event(1), event(2)], 3).unwrap();
    assert_eq!(stored.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    s.append_events(&[event(3), event(4), event(5)], 3).unwrap();
    let kept: Vec<u64> = s
        .events_after(0, 100)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(kept, [3, 4, 5], "only the newest 3 are kept");
    assert_eq!(s.events_after(4, 100).unwrap()[0].event.message, "#5");
    drop(s);
    // Numbering continues after a restart; nothing reuses a sequence number.
    let s = HubStore::open(&path).unwrap();
    let next = s.append_events(&[event(6)], 3).unwrap();
    assert_eq!(next[0].seq, 6);
}

#[test]
fn rollouts_keep_each_apps_newest_and_a_bounded_history_across_reopen() {
    use crate::rollout::RolloutRecord;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.redb");
    let s = HubStore::open(&path).unwrap();
    assert_eq!(s.last_rollout_id().unwrap(), 0);
    let record = |id: u64, app: &str| {
        RolloutRecord::initial(
            id,
            app,
            "main",
            &format!("r{id}"),
            &format!("c{id}"),
            id as i64,
        )
    };
    // `web` gets many releases; `api` one, long ago.
    s.put_rollouts(&[record(1, "api")]).unwrap();
    for id in 2..(ROLLOUT_HISTORY as u64 + 50) {
        s.put_rollouts(&[record(id, "web")]).unwrap();
    }
    // An older record stored late (an update of a superseded rollout) does not become the newest.
    let last = ROLLOUT_HISTORY as u64 + 49;
    s.put_rollouts(&[record(last - 5, "web")]).unwrap();
    drop(s);
    let s = HubStore::open(&path).unwrap();
    assert_eq!(s.last_rollout_id().unwrap(), last);
    let latest: Vec<(String, u64)> = s
        .latest_rollouts()
        .unwrap()
        .into_iter()
        .map(|r| (r.rollout.app, r.id))
        .collect();
    assert_eq!(latest, [("api".to_string(), 1), ("web".to_string(), last)]);
    let all = s.rollouts(None).unwrap();
    assert_eq!(all.len(), ROLLOUT_HISTORY + 2, "history is bounded");
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    assert_eq!(all.last().unwrap().id, 1, "each app's newest is kept");
    assert!(s.rollouts(Some("api")).unwrap().len() == 1);
}

/// Every kind of write, as the commands a replica would receive (one of each, plus refusals).
fn every_command() -> Vec<Command> {
    let report = StatusReport {
        seq: 1,
        observed_at: 5,
        applied_version: 1,
        apps: vec![AppStatus {
            app: "web".into(),
            commit: "abc".into(),
            version: 1,
            phase: AppPhase::Applied,
            message: String::new(),
            health: Default::default(),
            health_reason: String::new(),
        }],
        rejection: None,
    };
    vec![
        Command::SetMeta {
            key: "hub_epoch".into(),
            value: 3,
        },
        Command::PutToken {
            hash: [1; 32],
            record: token(100),
        },
        Command::PutToken {
            hash: [2; 32],
            record: token(1),
        },
        Command::Register(reg(&[1; 32], 10, "c-1", "edge-1")),
        // Refused: the token is used, then the name is taken.
        Command::Register(reg(&[1; 32], 10, "c-2", "edge-2")),
        Command::SweepTokens { now: 50 },
        Command::CommitStates {
            states: vec![NewState {
                cluster_id: "c-1".into(),
                version: 1,
                signed: signed(1),
                blobs: vec![(Digest::of(b"one"), Arc::new(b"one".to_vec()))],
            }],
            rollouts: vec![crate::rollout::RolloutRecord::initial(
                1, "web", "main", "r1", "abc", 10,
            )],
            retention: 5,
        },
        Command::RecordReport {
            cluster_id: "c-1".into(),
            report: report.clone(),
            received_at: 11,
        },
        // Dropped: no such cluster.
        Command::RecordReport {
            cluster_id: "c-9".into(),
            report,
            received_at: 11,
        },
        Command::AppendEvents {
            events: vec![crate::events::NewEvent::cluster(
                12,
                "cluster-registered",
                crate::events::Severity::Info,
                "edge-1",
                "registered".into(),
            )],
            retention: 10,
        },
        Command::LabelCluster {
            cluster: "edge-1".into(),
            set: [("tier".to_string(), "edge".to_string())].into(),
            remove: vec!["env".into()],
        },
        Command::RecordRenewal {
            cluster: "c-1".into(),
            cert_expires_at: 99,
            now: 13,
        },
        Command::SetCapabilities {
            cluster: "c-1".into(),
            capabilities: Default::default(),
        },
        Command::PutSource {
            name: "main".into(),
            record: SourceRecord {
                fetched_commit: "abc".into(),
                rendered_commit: "abc".into(),
                error: String::new(),
                last_fetch: 14,
            },
        },
        Command::PutRollouts {
            rollouts: vec![crate::rollout::RolloutRecord::initial(
                2, "api", "main", "r2", "abc", 15,
            )],
        },
        Command::DeleteCluster {
            cluster: "nope".into(),
        },
    ]
}

#[test]
fn commands_round_trip_and_apply_identically_on_two_stores() {
    let (_a, first) = store();
    let (_b, second) = store();
    let mut outcomes = Vec::new();
    for command in every_command() {
        // What a replica receives is the serialized command, not the value the proposer built.
        let bytes = serde_json::to_vec(&command).unwrap();
        let received: Command = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(received, command);
        let a = first.execute(&command).unwrap();
        let b = second.execute(&received).unwrap();
        assert_eq!(a, b, "{command:?}");
        // And the proposer receives the outcome serialized.
        let answer = serde_json::to_vec(&a).unwrap();
        assert_eq!(serde_json::from_slice::<Outcome>(&answer).unwrap(), a);
        outcomes.push(a);
    }
    assert!(matches!(outcomes[3], Outcome::Cluster(_)));
    assert_eq!(outcomes[4], Outcome::Refused(Refusal::BadToken));
    assert_eq!(outcomes[5], Outcome::Swept(1));
    assert_eq!(outcomes[8], Outcome::Report(None));
    assert_eq!(
        outcomes.last().unwrap(),
        &Outcome::Refused(Refusal::NotFound {
            cluster: "nope".into()
        })
    );
    // The same state on both.
    assert_eq!(first.clusters().unwrap(), second.clusters().unwrap());
    assert_eq!(
        first.latest_state("c-1").unwrap(),
        second.latest_state("c-1").unwrap()
    );
    assert_eq!(first.report("c-1").unwrap(), second.report("c-1").unwrap());
    assert_eq!(
        first.events_after(0, 10).unwrap(),
        second.events_after(0, 10).unwrap()
    );
    assert_eq!(
        first.rollouts(None).unwrap(),
        second.rollouts(None).unwrap()
    );
    assert_eq!(
        first.source("main").unwrap(),
        second.source("main").unwrap()
    );
    assert_eq!(first.meta("hub_epoch").unwrap(), Some(3));
    let c = &first.clusters().unwrap()[0];
    assert_eq!(c.labels.get("tier").map(String::as_str), Some("edge"));
    assert_eq!(
        (c.cert_expires_at, c.renewed_at, c.registered_at),
        (99, 13, 10)
    );
}

#[test]
fn a_refused_command_writes_nothing() {
    let (_d, s) = store();
    s.put_token(
        &[1; 32],
        &TokenRecord {
            name: Some("edge-1".into()),
            ..token(100)
        },
    )
    .unwrap();
    // Pinned to another name: refused, and the token is still usable.
    assert_eq!(
        s.execute(&Command::Register(reg(&[1; 32], 1, "c-1", "other")))
            .unwrap(),
        Outcome::Refused(Refusal::NamePinned {
            pinned: "edge-1".into(),
            requested: "other".into()
        })
    );
    assert!(s.token_usable(&[1; 32], 1).unwrap());
    assert!(s.clusters().unwrap().is_empty());
}

/// Every read of a store that a replica serves, for comparing two stores.
fn everything(s: &HubStore) -> String {
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        s.clusters().unwrap(),
        s.latest_state("c-1").unwrap(),
        s.headers_between("c-1", 0, 100).unwrap(),
        s.blob_for_cluster("c-1", &Digest::of(b"one")).unwrap(),
        s.report("c-1").unwrap(),
        s.cluster_reports().unwrap(),
        s.events_after(0, 100).unwrap(),
        s.rollouts(None).unwrap(),
        s.latest_rollouts().unwrap(),
        s.source("main").unwrap(),
        (
            s.meta("hub_epoch").unwrap(),
            s.token_usable(&[1; 32], 0).unwrap()
        ),
    )
}

#[test]
fn a_snapshot_restores_the_whole_store_and_a_damaged_one_changes_nothing() {
    let (_a, original) = store();
    for command in every_command() {
        original.execute(&command).unwrap();
    }
    let mut snapshot = Vec::new();
    original.dump(&mut snapshot).unwrap();

    // A replica that had other state gets exactly the original's.
    let (_b, replica) = store();
    registered(&replica, "c-7", "stale");
    replica.restore(&mut snapshot.as_slice()).unwrap();
    assert_eq!(everything(&replica), everything(&original));
    assert!(replica.find_cluster("stale").unwrap().is_none());
    // And it keeps working from there: the same next command gives the same outcome on both.
    let next = Command::RecordRenewal {
        cluster: "c-1".into(),
        cert_expires_at: 500,
        now: 20,
    };
    assert_eq!(
        replica.execute(&next).unwrap(),
        original.execute(&next).unwrap()
    );

    // Damaged, truncated, or not a snapshot at all: refused, and the replica is untouched.
    let before = everything(&replica);
    let mut flipped = snapshot.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x55;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (flipped, ""),
        (snapshot[..snapshot.len() - 10].to_vec(), ""),
        (b"not a snapshot".to_vec(), "FLOTSNAP1"),
        ([snapshot.as_slice(), b"x"].concat(), "bytes follow"),
    ];
    for (bytes, want) in cases {
        let err = replica
            .restore(&mut bytes.as_slice())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("invalid snapshot: "), "{err}");
        assert!(err.contains(want), "{err}");
        assert_eq!(everything(&replica), before);
    }
}

#[test]
fn a_snapshot_carries_every_table_of_the_store() {
    use redb::TableHandle;
    let (_d, s) = store();
    let txn = s.db.begin_read().unwrap();
    let stored: std::collections::BTreeSet<String> = txn
        .list_tables()
        .unwrap()
        .map(|t| t.name().to_string())
        .collect();
    assert_eq!(stored, snapshot::table_names());
}

fn seq_report(seq: u64) -> StatusReport {
    StatusReport {
        seq,
        observed_at: 1,
        applied_version: seq,
        apps: Vec::new(),
        rejection: None,
    }
}

#[test]
fn a_report_batch_answers_each_report_as_one_by_one_would() {
    let (_a, batched) = store();
    let (_b, single) = store();
    for s in [&batched, &single] {
        registered(s, "c-1", "one");
        registered(s, "c-2", "two");
    }
    let entries = [
        ("c-1", 2),
        ("c-2", 1),
        ("c-1", 1), // older than the one before it in the same batch
        ("c-9", 1), // no such cluster
        ("c-1", 3),
    ];
    let mut notices = batched.subscribe();
    let answers = batched
        .record_reports(
            entries
                .iter()
                .map(|(c, seq)| ReportEntry {
                    cluster_id: c.to_string(),
                    report: seq_report(*seq),
                    received_at: 100,
                })
                .collect(),
        )
        .unwrap();
    let one_by_one: Vec<_> = entries
        .iter()
        .map(|(c, seq)| {
            single
                .record_report_with_previous(c, &seq_report(*seq), 100)
                .unwrap()
        })
        .collect();
    assert_eq!(answers, one_by_one);
    assert_eq!(
        answers
            .iter()
            .map(|a| a.as_ref().map(|r| r.fresh))
            .collect::<Vec<_>>(),
        vec![Some(true), Some(true), Some(false), None, Some(true)]
    );
    assert_eq!(batched.report("c-1").unwrap().unwrap().seq, 3);
    // One notice per report of a known cluster, after the commit.
    let mut heard = Vec::new();
    while let Ok(n) = notices.try_recv() {
        heard.push(n);
    }
    assert_eq!(
        heard,
        ["c-1", "c-2", "c-1", "c-1"]
            .iter()
            .map(|c| Notice::Report {
                cluster_id: c.to_string()
            })
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_version_is_never_reused_or_lowered_and_a_refusal_writes_nothing() {
    let (_d, s) = store();
    registered(&s, "c-1", "one");
    registered(&s, "c-2", "two");
    s.commit_states(&[version("c-1", 1, &[b"a"]), version("c-1", 2, &[b"b"])])
        .unwrap();
    for stale in [2, 1] {
        let err = s
            .commit_states(&[version("c-2", 1, &[b"x"]), version("c-1", stale, &[b"c"])])
            .unwrap_err();
        assert!(
            matches!(err, StoreError::StaleVersion { ref cluster, version, latest: 2 } if cluster == "c-1" && version == stale),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "hub store: refused ClusterState version {stale} for cluster c-1: version 2 is already stored, and a version is never reused or lowered"
            )
        );
    }
    // Nothing of the refused commands was written, c-2's state included.
    assert!(s.latest_state("c-2").unwrap().is_none());
    assert!(!s.has_blob(&Digest::of(b"x")).unwrap());
    // Within one command, versions of a cluster must rise too.
    let err = s
        .commit_states(&[version("c-2", 2, &[]), version("c-2", 2, &[])])
        .unwrap_err();
    assert!(matches!(err, StoreError::StaleVersion { .. }), "{err}");
    s.commit_states(&[version("c-1", 3, &[])]).unwrap();
    assert_eq!(s.latest_state("c-1").unwrap().unwrap().0, 3);
}

#[test]
fn a_fenced_command_applies_only_in_its_term() {
    let (_d, s) = store();
    let fenced = Command::Fenced {
        term: 4,
        inner: Box::new(Command::SetMeta {
            key: "k".into(),
            value: 1,
        }),
    };
    // Round trip, as the log carries it.
    let bytes = serde_json::to_vec(&fenced).unwrap();
    assert_eq!(serde_json::from_slice::<Command>(&bytes).unwrap(), fenced);
    let txn = s.db.begin_write().unwrap();
    assert_eq!(
        command::apply(&txn, Some(5), &fenced).unwrap(),
        Outcome::Refused(Refusal::Deposed {
            term: 4,
            entry_term: 5
        })
    );
    assert_eq!(
        command::apply(&txn, Some(4), &fenced).unwrap(),
        Outcome::Done
    );
    txn.commit().unwrap();
    assert_eq!(s.meta("k").unwrap(), Some(1));
    // A store fenced to a term wraps its writes; outside Raft they apply.
    let fenced_store = s.clone().fenced_to(9);
    fenced_store.set_meta("k", 2).unwrap();
    assert_eq!(s.meta("k").unwrap(), Some(2));
}

#[test]
fn notices_follow_committed_writes() {
    let (_d, s) = store();
    registered(&s, "c-1", "one");
    let mut notices = s.subscribe();
    s.commit_states(&[version("c-1", 1, &[])]).unwrap();
    match notices.try_recv() {
        Ok(Notice::State {
            cluster_id,
            version,
            ..
        }) => assert_eq!((cluster_id.as_str(), version), ("c-1", 1)),
        other => panic!("{other:?}"),
    }
    s.label_cluster("c-1", &[("a".to_string(), "b".to_string())].into(), &[])
        .unwrap();
    assert_eq!(notices.try_recv().unwrap(), Notice::Clusters);
    // A refused write announces nothing.
    let _ = s.commit_states(&[version("c-1", 1, &[])]);
    assert!(notices.try_recv().is_err());
}
