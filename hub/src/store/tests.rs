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

fn cluster(id: &str, name: &str, t: &TokenRecord) -> Result<ClusterRecord, RegisterError> {
    Ok(ClusterRecord {
        id: id.into(),
        name: name.into(),
        labels: t.labels.clone(),
        registered_at: 5,
        cert_expires_at: 0,
        renewed_at: 0,
    })
}

#[test]
fn token_is_single_use() {
    let (_d, s) = store();
    s.put_token(&[1; 32], &token(100)).unwrap();
    let c = s
        .register(&[1; 32], 10, |t| cluster("c-1", "a", t))
        .unwrap();
    assert_eq!(c.labels.get("env").map(String::as_str), Some("dev"));
    assert!(matches!(
        s.register(&[1; 32], 11, |t| cluster("c-2", "b", t)),
        Err(RegisterError::BadToken)
    ));
    assert_eq!(s.clusters().unwrap().len(), 1);
}

#[test]
fn expired_or_unknown_token_creates_nothing() {
    let (_d, s) = store();
    s.put_token(&[1; 32], &token(100)).unwrap();
    assert!(matches!(
        s.register(&[1; 32], 101, |t| cluster("c-1", "a", t)),
        Err(RegisterError::BadToken)
    ));
    assert!(matches!(
        s.register(&[2; 32], 1, |t| cluster("c-1", "a", t)),
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
    s.register(&[1; 32], 1, |t| cluster("c-1", "a", t)).unwrap();
    assert!(matches!(
        s.register(&[2; 32], 1, |t| cluster("c-2", "a", t)),
        Err(RegisterError::NameTaken(_))
    ));
    // The refused registration did not burn the token.
    s.register(&[2; 32], 1, |t| cluster("c-2", "b", t)).unwrap();
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
    s.register(&hash, 1, |t| cluster(id, name, t)).unwrap();
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
    assert!(s.record_report("c-1", &report(2)).unwrap());
    assert!(!s.record_report("c-1", &report(2)).unwrap());
    assert!(!s.record_report("c-1", &report(1)).unwrap());
    assert_eq!(s.report("c-1").unwrap().unwrap().seq, 2);
    assert!(s.record_report("c-1", &report(3)).unwrap());
    assert_eq!(s.report("c-1").unwrap().unwrap().applied_version, 3);
}

#[test]
fn a_pinned_name_refusal_keeps_the_token() {
    let (_d, s) = store();
    s.put_token(&[1; 32], &token(100)).unwrap();
    let err = s
        .register(&[1; 32], 1, |_| {
            Err(RegisterError::NamePinned {
                pinned: "edge-1".into(),
                requested: "other".into(),
            })
        })
        .unwrap_err();
    assert!(err.to_string().contains("\"edge-1\""), "{err}");
    s.register(&[1; 32], 1, |t| cluster("c-1", "edge-1", t))
        .unwrap();
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
    assert!(s.record_report("c-1", &report).unwrap());

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
    assert!(!s.record_report("c-1", &report).unwrap());
    assert!(s.report("c-1").unwrap().is_none());
    // Its name is free again.
    registered(&s, "c-3", "one");
    assert!(matches!(
        s.delete_cluster("c-1"),
        Err(ClusterUpdateError::NotFound(_))
    ));
}
