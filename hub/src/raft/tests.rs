//! The log store and state machine against openraft's storage suite, restarts, snapshots and
//! damaged files, with a small key/value application.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite, log_id};
use openraft::{
    Entry, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder, StoredMembership, Vote,
};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use tempfile::TempDir;

use super::*;

/// The test application: one string table.
const KV: TableDefinition<&str, &str> = TableDefinition::new("kv");

/// Commands are `set <key> <value>` and `claim <key> <value>`; a claim writes `attempt-<key>`
/// first, then is refused if the key is taken, so a refusal has a write to discard.
struct Kv;

impl ReplicatedData for Kv {
    fn apply(
        &self,
        txn: &redb::WriteTransaction,
        _term: u64,
        command: &[u8],
    ) -> Result<Vec<u8>, ApplyError> {
        let command = String::from_utf8_lossy(command);
        let mut table = txn.open_table(KV)?;
        match command.split(' ').collect::<Vec<_>>()[..] {
            ["set", key, value] => {
                table.insert(key, value)?;
                Ok(b"ok".to_vec())
            }
            ["claim", key, value] => {
                table.insert(format!("attempt-{key}").as_str(), value)?;
                if table.get(key)?.is_some() {
                    return Err(ApplyError::Refused(format!("{key} is taken").into_bytes()));
                }
                table.insert(key, value)?;
                Ok(b"claimed".to_vec())
            }
            _ => Err(ApplyError::Refused(b"unknown command".to_vec())),
        }
    }

    fn dump(&self, txn: &redb::ReadTransaction, out: &mut dyn Write) -> std::io::Result<()> {
        let map = read_kv(txn).map_err(std::io::Error::other)?;
        serde_json::to_writer(out, &map).map_err(std::io::Error::other)
    }

    fn restore(&self, txn: &redb::WriteTransaction, dump: &mut dyn Read) -> std::io::Result<()> {
        let map: BTreeMap<String, String> =
            serde_json::from_reader(dump).map_err(std::io::Error::other)?;
        txn.delete_table(KV).map_err(std::io::Error::other)?;
        let mut table = txn.open_table(KV).map_err(std::io::Error::other)?;
        for (k, v) in &map {
            table
                .insert(k.as_str(), v.as_str())
                .map_err(std::io::Error::other)?;
        }
        Ok(())
    }
}

fn read_kv(txn: &redb::ReadTransaction) -> Result<BTreeMap<String, String>, redb::Error> {
    let table = match txn.open_table(KV) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(BTreeMap::new()),
        Err(e) => return Err(e.into()),
    };
    let mut map = BTreeMap::new();
    for item in table.iter()? {
        let (k, v) = item?;
        map.insert(k.value().to_string(), v.value().to_string());
    }
    Ok(map)
}

fn kv_of(sm: &StateMachineStore<Kv>) -> BTreeMap<String, String> {
    read_kv(&sm.database().begin_read().unwrap()).unwrap()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

struct Files {
    log: PathBuf,
    db: PathBuf,
}

fn files(dir: &Path) -> Files {
    Files {
        log: dir.join("raft-log.redb"),
        db: dir.join("hub.redb"),
    }
}

fn open(dir: &Path) -> (LogStore, StateMachineStore<Kv>) {
    let f = files(dir);
    (
        LogStore::open(&f.log).unwrap(),
        StateMachineStore::open(&f.db, Kv).unwrap(),
    )
}

fn normal(term: u64, index: u64, command: &str) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Normal(Proposal(command.as_bytes().to_vec())),
    }
}

fn membership(term: u64, index: u64, voters: &[u64]) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Membership(members(voters)),
    }
}

fn members(voters: &[u64]) -> Membership<ReplicaId, openraft::BasicNode> {
    Membership::new(vec![voters.iter().copied().collect::<BTreeSet<_>>()], None)
}

struct TempStores;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore<Kv>, TempDir> for TempStores {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore<Kv>), StorageError> {
        let dir = tempfile::tempdir().map_err(|e| {
            StorageError::from_io_error(
                openraft::ErrorSubject::Store,
                openraft::ErrorVerb::Write,
                e,
            )
        })?;
        let f = files(dir.path());
        let log = LogStore::open(&f.log).map_err(|e| {
            storage_error(openraft::ErrorSubject::Logs, openraft::ErrorVerb::Read, &e)
        })?;
        let sm = StateMachineStore::open(&f.db, Kv).map_err(|e| {
            storage_error(
                openraft::ErrorSubject::StateMachine,
                openraft::ErrorVerb::Read,
                &e,
            )
        })?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(TempStores).unwrap();
}

#[tokio::test]
async fn a_restart_keeps_vote_log_purge_point_applied_index_membership_and_data() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut log, mut sm) = open(dir.path());
        log.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        let entries = vec![
            membership(1, 1, &[1, 2, 3]),
            normal(1, 2, "set a 1"),
            normal(2, 3, "set b 2"),
            normal(2, 4, "set c 3"),
            normal(2, 5, "set d 4"),
        ];
        log.blocking_append(entries.clone()).await.unwrap();
        log.purge(log_id(1, 1, 2)).await.unwrap();
        sm.apply(entries[..4].to_vec()).await.unwrap();
    }
    let (mut log, mut sm) = open(dir.path());
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(Vote::new_committed(2, 1))
    );
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(2, 1, 5)));
    let kept = log.try_get_log_entries(0..10).await.unwrap();
    assert_eq!(
        kept.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    assert_eq!(kept[2], normal(2, 5, "set d 4"));
    let (applied, stored) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(2, 1, 4)));
    assert_eq!(
        stored,
        StoredMembership::new(Some(log_id(1, 1, 1)), members(&[1, 2, 3]))
    );
    assert_eq!(kv_of(&sm), map(&[("a", "1"), ("b", "2"), ("c", "3")]));
}

#[tokio::test]
async fn truncate_and_purge_leave_a_log_without_holes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _sm) = open(dir.path());
    let entries: Vec<_> = (1..=10).map(|i| normal(1, i, "set k v")).collect();
    log.blocking_append(entries).await.unwrap();
    log.truncate(log_id(1, 1, 8)).await.unwrap();
    log.purge(log_id(1, 1, 3)).await.unwrap();
    // A stale purge does not move the purge point back.
    log.purge(log_id(1, 1, 2)).await.unwrap();
    drop(log);
    let mut log = LogStore::open(&files(dir.path()).log).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 3)));
    assert_eq!(state.last_log_id, Some(log_id(1, 1, 7)));
    let indexes: Vec<_> = log
        .try_get_log_entries(..)
        .await
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect();
    assert_eq!(indexes, [4, 5, 6, 7]);
}

#[tokio::test]
async fn limited_reads_stop_at_the_byte_budget_but_return_one_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _sm) = open(dir.path());
    let big = format!("set k {}", "x".repeat(log_store::READ_BATCH_BYTES));
    log.blocking_append([
        normal(1, 1, &big),
        normal(1, 2, &big),
        normal(1, 3, "set a b"),
    ])
    .await
    .unwrap();
    let first = log.limited_get_log_entries(1, 4).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0], normal(1, 1, &big));
    assert_eq!(log.limited_get_log_entries(3, 4).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_refused_command_is_answered_and_its_writes_are_discarded_on_every_replica() {
    let batch = vec![
        normal(1, 1, "set a 1"),
        normal(1, 2, "claim a 2"),
        normal(1, 3, "claim b 3"),
        normal(1, 4, "bogus"),
        normal(1, 5, "set c 5"),
    ];
    let mut outcomes = Vec::new();
    for _replica in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm) = open(dir.path());
        let answers = sm.apply(batch.clone()).await.unwrap();
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied, Some(log_id(1, 1, 5)));
        outcomes.push((answers, kv_of(&sm)));
    }
    let (answers, data) = &outcomes[0];
    assert_eq!(
        answers,
        &[
            Applied(b"ok".to_vec()),
            Applied(b"a is taken".to_vec()),
            Applied(b"claimed".to_vec()),
            Applied(b"unknown command".to_vec()),
            Applied(b"ok".to_vec()),
        ]
    );
    // The refused claim of a wrote `attempt-a` before refusing; that write is gone.
    assert_eq!(
        data,
        &map(&[("a", "1"), ("attempt-b", "3"), ("b", "3"), ("c", "5")])
    );
    assert_eq!(outcomes[0], outcomes[1]);
}

#[tokio::test]
async fn a_snapshot_built_on_one_replica_installs_on_a_fresh_one_and_survives_its_restart() {
    let leader_dir = tempfile::tempdir().unwrap();
    let (_log, mut leader) = open(leader_dir.path());
    leader
        .apply([
            membership(1, 1, &[1, 2]),
            normal(1, 2, "set a 1"),
            normal(1, 3, "set b 2"),
        ])
        .await
        .unwrap();
    let built = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(built.meta.last_log_id, Some(log_id(1, 1, 3)));
    // Applied after the build: not in the snapshot.
    leader.apply([normal(1, 4, "set c 3")]).await.unwrap();

    let follower_dir = tempfile::tempdir().unwrap();
    {
        let (_log, mut follower) = open(follower_dir.path());
        follower.apply([normal(1, 1, "set stale x")]).await.unwrap();
        let mut received = follower.begin_receiving_snapshot().await.unwrap();
        received
            .get_mut()
            .extend_from_slice(built.snapshot.get_ref());
        follower
            .install_snapshot(&built.meta, received)
            .await
            .unwrap();
        assert_eq!(kv_of(&follower), map(&[("a", "1"), ("b", "2")]));
    }
    let (_log, mut follower) = open(follower_dir.path());
    assert_eq!(kv_of(&follower), map(&[("a", "1"), ("b", "2")]));
    let (applied, stored) = follower.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 1, 3)));
    assert_eq!(stored, built.meta.last_membership);
    let current = follower.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, built.meta);
    assert_eq!(current.snapshot.get_ref(), built.snapshot.get_ref());
}

#[tokio::test]
async fn an_install_a_crash_interrupted_is_finished_when_the_store_opens() {
    let leader_dir = tempfile::tempdir().unwrap();
    let (_log, mut leader) = open(leader_dir.path());
    leader.apply([normal(1, 1, "set a 1")]).await.unwrap();
    let built = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();

    // The snapshot file was renamed into place, then the restore's commit never happened.
    let follower_dir = tempfile::tempdir().unwrap();
    drop(open(follower_dir.path()));
    std::fs::write(
        follower_dir.path().join("hub.redb.snapshot"),
        built.snapshot.get_ref(),
    )
    .unwrap();
    let (_log, mut follower) = open(follower_dir.path());
    assert_eq!(kv_of(&follower), map(&[("a", "1")]));
    assert_eq!(
        follower.applied_state().await.unwrap().0,
        Some(log_id(1, 1, 1))
    );
}

#[tokio::test]
async fn a_damaged_snapshot_is_refused_by_install_and_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open(dir.path());
    sm.apply([normal(1, 1, "set a 1")]).await.unwrap();
    let built = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let mut damaged = built.snapshot.get_ref().clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 1;

    let other = tempfile::tempdir().unwrap();
    let (_log, mut fresh) = open(other.path());
    let err = fresh
        .install_snapshot(&built.meta, Box::new(std::io::Cursor::new(damaged.clone())))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("checksum does not match"), "{err}");
    assert_eq!(kv_of(&fresh), BTreeMap::new());

    drop(sm);
    let snapshot_path = dir.path().join("hub.redb.snapshot");
    std::fs::write(&snapshot_path, &damaged).unwrap();
    let err = StateMachineStore::open(&files(dir.path()).db, Kv)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(&snapshot_path.display().to_string()), "{err}");
    assert!(err.contains("checksum does not match"), "{err}");
}

#[tokio::test]
async fn a_snapshot_over_the_limit_fails_with_the_limit_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, sm) = open(dir.path());
    let mut sm = sm.with_snapshot_limit(200);
    sm.apply([normal(1, 1, &format!("set a {}", "x".repeat(300)))])
        .await
        .unwrap();
    let err = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("over the limit of 200 bytes"),
        "{err}"
    );
    assert!(sm.get_current_snapshot().await.unwrap().is_none());
}

/// Overwrites the middle of `path`, or cuts it to half its length.
fn damage(path: &Path, truncate: bool) {
    let mut bytes = std::fs::read(path).unwrap();
    if truncate {
        bytes.truncate(bytes.len() / 2);
    } else {
        let start = bytes.len() / 4;
        for b in &mut bytes[start..start * 3] {
            *b = 0xA5;
        }
    }
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn a_damaged_database_file_is_refused_at_open_naming_the_file() {
    for truncate in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut log, mut sm) = open(dir.path());
            let entries: Vec<_> = (1..=50)
                .map(|i| normal(1, i, &format!("set k{i} {}", "v".repeat(200))))
                .collect();
            log.blocking_append(entries.clone()).await.unwrap();
            sm.apply(entries).await.unwrap();
        }
        let f = files(dir.path());
        damage(&f.log, truncate);
        damage(&f.db, truncate);
        let err = LogStore::open(&f.log)
            .err()
            .expect("a damaged log opened")
            .to_string();
        assert!(err.contains(&f.log.display().to_string()), "{err}");
        assert!(err.contains("corrupted"), "{err}");
        let err = StateMachineStore::open(&f.db, Kv)
            .err()
            .expect("a damaged database opened")
            .to_string();
        assert!(err.contains(&f.db.display().to_string()), "{err}");
        assert!(err.contains("corrupted"), "{err}");
    }
}

#[tokio::test]
async fn a_log_with_a_hole_is_refused_at_open_naming_the_file_and_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = files(dir.path()).log;
    {
        let mut log = LogStore::open(&path).unwrap();
        let entries: Vec<_> = (1..=5).map(|i| normal(1, i, "set k v")).collect();
        log.blocking_append(entries).await.unwrap();
    }
    {
        // What no openraft call does: drop an entry from the middle.
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TableDefinition::<u64, &[u8]>::new("raft_log"))
            .unwrap()
            .remove(3)
            .unwrap();
        txn.commit().unwrap();
    }
    let err = LogStore::open(&path).err().unwrap().to_string();
    assert_eq!(
        err,
        format!(
            "raft log {} is corrupt: table raft_log holds 4 entries from index 1 to 5, so it is missing 1",
            path.display()
        )
    );
}

#[test]
fn proposals_and_outcomes_cross_the_peer_channel_as_base64() {
    let bytes: Vec<u8> = (0..=255).collect();
    let json = serde_json::to_string(&crate::raft::Proposal(bytes.clone())).unwrap();
    // One string, a third over the raw size, not an array of numbers.
    assert!(
        json.starts_with('"') && json.len() < bytes.len() * 3 / 2,
        "{json}"
    );
    let back: crate::raft::Proposal = serde_json::from_str(&json).unwrap();
    assert_eq!(back.0, bytes);
    let applied = crate::raft::Applied(bytes.clone());
    let back: crate::raft::Applied =
        serde_json::from_slice(&serde_json::to_vec(&applied).unwrap()).unwrap();
    assert_eq!(back, applied);
    let err = serde_json::from_str::<crate::raft::Proposal>("\"not base64!\"").unwrap_err();
    assert!(err.to_string().contains("not base64"), "{err}");
}
