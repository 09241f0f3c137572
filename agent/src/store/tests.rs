use std::os::unix::fs::PermissionsExt;

use flotilla_common::status::AppPhase;

use super::*;
use crate::fixtures::{self, app, config_map, signed};

fn held(signed: SignedClusterState) -> HeldState {
    let state = signed.decode_unverified().unwrap();
    HeldState::new(signed, state)
}

fn open(dir: &Path) -> Store {
    Store::open(&dir.join("data/agent.redb"), 3).unwrap()
}

fn status(app: &str, phase: AppPhase) -> AppStatus {
    AppStatus {
        app: app.into(),
        commit: "c".into(),
        version: 1,
        phase,
        message: String::new(),
        health: Default::default(),
        health_reason: String::new(),
    }
}

#[test]
fn file_is_private_and_everything_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let a = config_map("a", "1");
    let state = held(signed(1, None, vec![app("web", &[&a])]));
    {
        let store = open(dir.path());
        assert_eq!(store.identity().unwrap(), None);
        assert_eq!(store.held().unwrap(), None);
        assert_eq!(store.applied_version().unwrap(), 0);
        store.save_identity(&fixtures::identity()).unwrap();
        store.commit_state(&state, &fixtures::blobs(&[&a])).unwrap();
        let mut inv = AppInventory::default();
        inv.insert(a.0.id.clone(), a.0.digest);
        store
            .record_apply(&ApplyRecord {
                inventory: BTreeMap::from([("web".to_string(), Some(inv))]),
                completed_version: Some(1),
                observed_at: 5,
                apps: vec![status("web", AppPhase::Applied)],
                deleted: 0,
                forget_deletions_before: 0,
            })
            .unwrap();
    }
    let path = dir.path().join("data/agent.redb");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let dir_mode = std::fs::metadata(dir.path().join("data"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700, "{dir_mode:o}");

    let store = open(dir.path());
    assert_eq!(store.identity().unwrap(), Some(fixtures::identity()));
    assert_eq!(store.held().unwrap(), Some(state.clone()));
    assert_eq!(store.blob(&a.0.digest).unwrap(), Some(a.1.clone()));
    assert_eq!(store.applied_version().unwrap(), 1);
    assert_eq!(store.inventory().unwrap()["web"].objects.len(), 1);
    let outbox = store.outbox_after(0).unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].applied_version, 1);
    assert_eq!(outbox[0].apps, vec![status("web", AppPhase::Applied)]);
}

#[test]
fn a_state_and_its_blobs_commit_together_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = config_map("a", "1");
    let b = config_map("b", "2");
    let v1 = held(signed(1, None, vec![app("web", &[&a])]));
    store.commit_state(&v1, &fixtures::blobs(&[&a])).unwrap();

    // Version 2 needs b, which is not supplied: nothing of version 2 is stored.
    let v2 = held(signed(2, Some(v1.held.digest), vec![app("web", &[&a, &b])]));
    let c = config_map("c", "3");
    let err = store
        .commit_state(&v2, &fixtures::blobs(&[&c]))
        .unwrap_err();
    assert!(
        matches!(err, StoreError::MissingBlob(d) if d == b.0.digest),
        "{err}"
    );
    assert_eq!(store.held().unwrap(), Some(v1.clone()));
    assert_eq!(store.blob(&c.0.digest).unwrap(), None);
    assert_eq!(
        store
            .missing_blobs(&[a.0.digest, b.0.digest].into())
            .unwrap(),
        [b.0.digest].into()
    );

    // With b it commits; a is reused from the store, not re-supplied.
    store.commit_state(&v2, &fixtures::blobs(&[&b])).unwrap();
    assert_eq!(store.held().unwrap(), Some(v2.clone()));
    let snapshot = store.apply_snapshot().unwrap().unwrap();
    assert_eq!(snapshot.held, v2);
    assert_eq!(snapshot.blobs.len(), 2);

    // Version 3 drops a: its blob goes with the same commit.
    let v3 = held(signed(3, Some(v2.held.digest), vec![app("web", &[&b])]));
    store.commit_state(&v3, &BTreeMap::new()).unwrap();
    assert_eq!(store.blob(&a.0.digest).unwrap(), None);
    assert_eq!(store.blob(&b.0.digest).unwrap(), Some(b.1.clone()));
}

#[test]
fn outbox_assigns_seqs_acks_one_and_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let record = |apps| ApplyRecord {
        inventory: BTreeMap::new(),
        completed_version: None,
        observed_at: 9,
        apps,
        deleted: 0,
        forget_deletions_before: 0,
    };
    assert_eq!(
        store
            .record_apply(&record(vec![status("web", AppPhase::Failed)]))
            .unwrap(),
        1
    );
    assert_eq!(store.record_rejection(10, "bad signature").unwrap(), 2);
    let reports = store.outbox_after(0).unwrap();
    assert_eq!(reports.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
    // A rejection report repeats the newest app statuses.
    assert_eq!(reports[1].apps, vec![status("web", AppPhase::Failed)]);
    assert_eq!(reports[1].rejection.as_deref(), Some("bad signature"));
    assert_eq!(reports[0].rejection, None);

    assert!(store.ack(1).unwrap());
    assert!(
        !store.ack(1).unwrap(),
        "a second ack of the same seq is a no-op"
    );
    assert!(!store.ack(77).unwrap());
    assert_eq!(
        store
            .outbox_after(0)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        [2]
    );
    assert_eq!(store.outbox_after(2).unwrap(), vec![]);

    // Capacity 3: the oldest unacknowledged reports are superseded.
    for _ in 0..4 {
        store.record_rejection(11, "stale").unwrap();
    }
    let seqs: Vec<u64> = store
        .outbox_after(0)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, [4, 5, 6]);

    // Seqs keep increasing across reopening, even after everything was acknowledged.
    for seq in seqs {
        store.ack(seq).unwrap();
    }
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.record_rejection(12, "x").unwrap(), 7);
}

#[test]
fn record_apply_updates_and_forgets_inventories() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = config_map("a", "1");
    let mut inv = AppInventory::default();
    inv.insert(a.0.id.clone(), a.0.digest);
    let record = |inventory, completed_version| ApplyRecord {
        inventory,
        completed_version,
        observed_at: 1,
        apps: vec![],
        deleted: 0,
        forget_deletions_before: 0,
    };
    store
        .record_apply(&record(
            BTreeMap::from([
                ("old".to_string(), Some(inv.clone())),
                ("web".to_string(), Some(inv)),
            ]),
            Some(4),
        ))
        .unwrap();
    store
        .record_apply(&record(BTreeMap::from([("old".to_string(), None)]), None))
        .unwrap();
    let inventory = store.inventory().unwrap();
    assert_eq!(inventory.keys().collect::<Vec<_>>(), ["web"]);
    // An incomplete pass leaves the applied version where it was.
    assert_eq!(store.applied_version().unwrap(), 4);
    assert_eq!(store.outbox_after(1).unwrap()[0].applied_version, 4);
}

#[test]
fn the_deletion_log_survives_reopening_and_forgets_what_left_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let a = config_map("a", "1");
    let record = |observed_at, deleted, forget_deletions_before| ApplyRecord {
        inventory: BTreeMap::new(),
        completed_version: None,
        observed_at,
        apps: vec![],
        deleted,
        forget_deletions_before,
    };
    {
        let store = open(dir.path());
        store
            .commit_state(
                &held(signed(1, None, vec![app("web", &[&a])])),
                &fixtures::blobs(&[&a]),
            )
            .unwrap();
        store.record_apply(&record(100, 3, 0)).unwrap();
        store.record_apply(&record(100, 2, 0)).unwrap();
        store.record_apply(&record(150, 0, 0)).unwrap();
        store.record_apply(&record(200, 4, 0)).unwrap();
    }
    let store = open(dir.path());
    let log = |store: &Store| store.apply_snapshot().unwrap().unwrap().deletions;
    assert_eq!(
        log(&store),
        [(100, 5), (200, 4)],
        "same second adds up; zero is not logged"
    );
    store.record_apply(&record(260, 1, 101)).unwrap();
    assert_eq!(log(&store), [(200, 4), (260, 1)]);
}
