use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use flotilla_common::cluster_state::{AppState, DriftMode, ObjectEntry};
use flotilla_common::object::ObjectId;

use super::*;
use crate::fixtures::{self, app, config_map, signed};
use crate::retry::RetryPolicy;
use crate::store::HeldState;
use crate::target::conformance::{apply_one, request};
use crate::target::dir::DirTarget;
use crate::target::{Applied, LiveObject, TargetError};

struct Setup {
    _dir: tempfile::TempDir,
    store: Store,
    target: DirTarget,
    objects: std::path::PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("agent.redb"), 100).unwrap();
    let objects = dir.path().join("objects");
    let target = DirTarget::new(&objects).unwrap();
    Setup {
        _dir: dir,
        store,
        target,
        objects,
    }
}

/// Commits the next version (chained to the held one) with these apps and objects.
fn commit(store: &Store, apps: Vec<AppState>, objects: &[&(ObjectEntry, Vec<u8>)]) -> u64 {
    let held = store.held().unwrap();
    let version = held.as_ref().map_or(1, |h| h.held.version + 1);
    let signed = signed(version, held.map(|h| h.held.digest), apps);
    let state = signed.decode_unverified().unwrap();
    store
        .commit_state(&HeldState::new(signed, state), &fixtures::blobs(objects))
        .unwrap();
    version
}

const BUDGET: ApplySettings = ApplySettings {
    deletion_budget: 50,
    deletion_window: Duration::ZERO,
    override_budget: false,
};

async fn pass<T: Target + Clone>(
    store: &Store,
    target: &T,
    settings: ApplySettings,
) -> ApplyOutcome {
    apply_held(
        store,
        &mut target.clone(),
        settings,
        fixtures::NOW,
        &CancellationToken::new(),
    )
    .await
    .unwrap()
    .unwrap()
}

/// Names of the ConfigMaps in the target directory.
fn files(setup: &Setup) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(&setup.objects)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .map(|n| {
            n.trim_start_matches("core_v1_ConfigMap_default_")
                .trim_end_matches(".json")
                .to_string()
        })
        .collect();
    names.sort();
    names
}

fn phases(outcome: &ApplyOutcome) -> Vec<String> {
    outcome
        .apps
        .iter()
        .map(|a| format!("{} {} {}", a.app, a.phase.as_str(), a.message))
        .map(|s| s.trim_end().to_string())
        .collect()
}

#[tokio::test]
async fn applies_the_held_state_once_and_records_it() {
    let s = setup();
    assert_eq!(
        apply_held(
            &s.store,
            &mut s.target.clone(),
            BUDGET,
            0,
            &CancellationToken::new()
        )
        .await
        .unwrap(),
        None,
        "nothing held, nothing applied"
    );
    let (a, b) = (config_map("a", "1"), config_map("b", "2"));
    commit(&s.store, vec![app("web", &[&a, &b])], &[&a, &b]);

    let outcome = pass(&s.store, &s.target, BUDGET).await;
    assert!(outcome.complete);
    assert_eq!(
        (outcome.written, outcome.unchanged, outcome.deleted),
        (2, 0, 0)
    );
    assert_eq!(phases(&outcome), ["web applied"]);
    assert_eq!(files(&s), ["a", "b"]);
    assert_eq!(std::fs::read(s.target.path_of(&a.0.id)).unwrap(), a.1);
    assert_eq!(s.store.applied_version().unwrap(), 1);
    assert_eq!(s.store.inventory().unwrap()["web"].objects.len(), 2);
    let reports = s.store.outbox_after(0).unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].applied_version, 1);
    assert_eq!(reports[0].apps[0].commit, "web-commit");

    // Level-based: a second pass changes nothing.
    let again = pass(&s.store, &s.target, BUDGET).await;
    assert_eq!((again.written, again.unchanged, again.deleted), (0, 2, 0));
}

#[tokio::test]
async fn prunes_only_what_it_applied() {
    let s = setup();
    let (a, b) = (config_map("a", "1"), config_map("b", "2"));
    commit(&s.store, vec![app("web", &[&a, &b])], &[&a, &b]);
    pass(&s.store, &s.target, BUDGET).await;
    // Someone else's object in the same place.
    let foreign = config_map("foreign", "x");
    apply_one(
        &mut s.target.clone(),
        request(&foreign, None, DriftMode::Correct),
    )
    .await;

    commit(&s.store, vec![app("web", &[&a])], &[]);
    let outcome = pass(&s.store, &s.target, BUDGET).await;
    assert_eq!((outcome.written, outcome.deleted), (0, 1));
    assert_eq!(files(&s), ["a", "foreign"]);
    assert_eq!(s.store.applied_version().unwrap(), 2);

    // An app that disappears is pruned and forgotten.
    let c = config_map("c", "3");
    commit(
        &s.store,
        vec![app("web", &[&a]), app("extra", &[&c])],
        &[&c],
    );
    pass(&s.store, &s.target, BUDGET).await;
    assert_eq!(files(&s), ["a", "c", "foreign"]);
    commit(&s.store, vec![app("web", &[&a])], &[]);
    let outcome = pass(&s.store, &s.target, BUDGET).await;
    assert!(outcome.complete);
    assert_eq!(phases(&outcome), ["web applied"]);
    assert_eq!(files(&s), ["a", "foreign"]);
    assert_eq!(
        s.store.inventory().unwrap().keys().collect::<Vec<_>>(),
        ["web"]
    );
}

#[tokio::test]
async fn over_budget_writes_but_withholds_deletions_until_overridden() {
    let s = setup();
    let objs: Vec<_> = ["a", "b", "c"].iter().map(|n| config_map(n, "1")).collect();
    let refs: Vec<_> = objs.iter().collect();
    commit(&s.store, vec![app("web", &refs)], &refs);
    pass(&s.store, &s.target, BUDGET).await;

    let d = config_map("d", "4");
    commit(&s.store, vec![app("web", &[&d])], &[&d]);
    let tight = ApplySettings {
        deletion_budget: 2,
        ..BUDGET
    };
    let outcome = pass(&s.store, &s.target, tight).await;
    assert!(!outcome.complete);
    assert!(
        !outcome.retry,
        "waiting will not make the deletions fit the budget"
    );
    assert_eq!((outcome.written, outcome.deleted), (1, 0));
    assert_eq!(files(&s), ["a", "b", "c", "d"]);
    assert_eq!(outcome.apps[0].phase, AppPhase::Failed);
    assert!(
        outcome.apps[0].message.contains("deletion budget of 2"),
        "{}",
        outcome.apps[0].message
    );
    assert_eq!(s.store.applied_version().unwrap(), 1);
    // The withheld objects stay owned, so a later apply can still delete them.
    assert_eq!(s.store.inventory().unwrap()["web"].objects.len(), 4);

    let outcome = pass(
        &s.store,
        &s.target,
        ApplySettings {
            override_budget: true,
            ..tight
        },
    )
    .await;
    assert!(outcome.complete);
    assert_eq!(outcome.deleted, 3);
    assert_eq!(files(&s), ["d"]);
    assert_eq!(s.store.applied_version().unwrap(), 2);
}

#[tokio::test]
async fn the_deletion_budget_counts_over_a_window_that_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.redb");
    let target = DirTarget::new(dir.path().join("objects")).unwrap();
    let windowed = ApplySettings {
        deletion_budget: 3,
        deletion_window: Duration::from_secs(3600),
        ..BUDGET
    };
    let at = |store: Store, now: i64| {
        let mut target = target.clone();
        async move {
            apply_held(
                &store,
                &mut target,
                windowed,
                now,
                &CancellationToken::new(),
            )
            .await
            .unwrap()
            .unwrap()
        }
    };
    let names = || async {
        let ids = target.list_all().await.unwrap();
        ids.into_iter().map(|id| id.name).collect::<Vec<_>>()
    };
    let objects: Vec<_> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|n| config_map(n, "1"))
        .collect();
    let refs: Vec<_> = objects.iter().collect();
    let store = Store::open(&path, 100).unwrap();
    commit(&store, vec![app("web", &refs)], &refs);
    assert!(at(store.clone(), fixtures::NOW).await.complete);

    // Two deletions: within the budget of 3.
    commit(&store, vec![app("web", &refs[2..])], &[]);
    let outcome = at(store.clone(), fixtures::NOW + 10).await;
    assert_eq!((outcome.complete, outcome.deleted), (true, 2));

    // The agent restarts; two more deletions would make four within the hour.
    drop(store);
    let store = Store::open(&path, 100).unwrap();
    commit(&store, vec![app("web", &refs[4..])], &[]);
    let outcome = at(store.clone(), fixtures::NOW + 20).await;
    assert_eq!((outcome.complete, outcome.deleted), (false, 0));
    assert_eq!(outcome.apps[0].phase, AppPhase::Failed);
    assert_eq!(
        outcome.apps[0].message,
        "2 deletions exceed the deletion budget of 3 per 1h: 2 already made in the last 1h; \
         withheld 2 of this app's deletions until the window allows them (or restart the \
         agent with --override-deletion-budget)"
    );
    assert_eq!(names().await, ["c", "d", "e"], "withheld objects stay");
    assert_eq!(store.inventory().unwrap()["web"].objects.len(), 3);

    // Once the first deletions have left the window, the withheld ones go.
    let outcome = at(store.clone(), fixtures::NOW + 10 + 3600).await;
    assert_eq!((outcome.complete, outcome.deleted), (true, 2));
    assert_eq!(names().await, ["e"]);
}

/// A directory target whose applies of objects named "bad" fail (transiently) while `fail_bad`
/// is set, and whose listing fails while `fail_list` is set.
#[derive(Clone)]
struct Faulty {
    inner: DirTarget,
    fail_bad: Arc<AtomicBool>,
    fail_list: Arc<AtomicBool>,
}

impl Faulty {
    fn new(inner: DirTarget) -> Self {
        Faulty {
            inner,
            fail_bad: Arc::new(AtomicBool::new(true)),
            fail_list: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Target for Faulty {
    async fn apply(&mut self, batch: &[ApplyRequest<'_>]) -> Vec<Result<Applied, TargetError>> {
        let mut out = Vec::new();
        for req in batch {
            if req.id.name == "bad" && self.fail_bad.load(Ordering::SeqCst) {
                out.push(Err(TargetError {
                    op: "apply",
                    object: req.id.to_string(),
                    transient: true,
                    source: "connection reset".into(),
                }));
            } else {
                out.extend(self.inner.apply(std::slice::from_ref(req)).await);
            }
        }
        out
    }
    async fn delete(&mut self, id: &ObjectId, uid: Option<&str>) -> Result<Change, TargetError> {
        self.inner.delete(id, uid).await
    }
    async fn list_live(
        &mut self,
        app: &str,
        ids: &[ObjectId],
    ) -> Result<BTreeMap<ObjectId, LiveObject>, TargetError> {
        if self.fail_list.load(Ordering::SeqCst) {
            return Err(TargetError {
                op: "list",
                object: "v1/ConfigMap objects".into(),
                transient: true,
                source: "connection refused".into(),
            });
        }
        self.inner.list_live(app, ids).await
    }
    async fn health(&mut self, ids: &[ObjectId]) -> (AppHealth, String) {
        self.inner.health(ids).await
    }
    async fn load_inventory(&mut self) -> Result<BTreeMap<String, AppInventory>, TargetError> {
        self.inner.load_inventory().await
    }
    async fn save_inventory(
        &mut self,
        inventory: &BTreeMap<String, AppInventory>,
    ) -> Result<(), TargetError> {
        self.inner.save_inventory(inventory).await
    }
    async fn changed(&mut self) {
        self.inner.changed().await
    }
    async fn shutdown(&mut self) {}
}

#[tokio::test]
async fn a_failed_app_holds_back_its_dependents_and_is_retried() {
    let s = setup();
    let (bad, good, top) = (
        config_map("bad", "1"),
        config_map("good", "2"),
        config_map("top", "3"),
    );
    let mut dependent = app("top", &[&top]);
    dependent.depends_on = vec!["base".into()];
    commit(
        &s.store,
        vec![app("base", &[&bad, &good]), dependent],
        &[&bad, &good, &top],
    );
    let flaky = Faulty::new(s.target.clone());
    let outcome = pass(&s.store, &flaky, BUDGET).await;
    assert!(!outcome.complete);
    assert!(outcome.retry);
    assert_eq!(
        phases(&outcome),
        [
            "base failed cannot apply v1/ConfigMap default/bad: connection reset",
            "top pending waiting for dependency base",
        ]
    );
    assert_eq!(files(&s), ["good"]);
    let inventory = s.store.inventory().unwrap();
    let owned: Vec<&str> = inventory["base"]
        .objects
        .iter()
        .map(|o| o.id.name.as_str())
        .collect();
    assert_eq!(owned, ["good"], "only what was really applied is owned");
    assert!(!inventory.contains_key("top"));
    assert_eq!(s.store.applied_version().unwrap(), 0);

    // Once the target works again the same state completes.
    let outcome = pass(&s.store, &s.target, BUDGET).await;
    assert!(outcome.complete);
    assert_eq!(files(&s), ["bad", "good", "top"]);
}

#[tokio::test]
async fn the_stored_state_is_reapplied_at_startup_without_any_hub() {
    let s = setup();
    let a = config_map("a", "1");
    let version = commit(&s.store, vec![app("web", &[&a])], &[&a]);
    pass(&s.store, &s.target, BUDGET).await;
    assert_eq!(s.store.applied_version().unwrap(), version);
    // While the agent was down, someone removed an object.
    std::fs::remove_file(s.target.path_of(&a.0.id)).unwrap();

    let reporter = Arc::new(Notify::new());
    let (_held_tx, held_rx) = watch::channel(version);
    let shutdown = CancellationToken::new();
    let applier = Applier {
        store: s.store.clone(),
        target: s.target.clone(),
        settings: BUDGET,
        backoff: Backoff::default(),
        retry: RetryPolicy::default(),
        reporter: Arc::clone(&reporter),
        metrics: Default::default(),
    };
    let task = tokio::spawn(applier.run(held_rx, shutdown.clone()));
    tokio::time::timeout(Duration::from_secs(10), reporter.notified())
        .await
        .expect("the applier reports its pass");
    assert_eq!(s.store.outbox_after(0).unwrap().len(), 2);
    assert_eq!(files(&s), ["a"]);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_new_version_wakes_the_applier_and_transient_failures_are_retried() {
    let s = setup();
    let reporter = Arc::new(Notify::new());
    let (held_tx, held_rx) = watch::channel(0);
    let shutdown = CancellationToken::new();
    let healing = Faulty::new(s.target.clone());
    let applier = Applier {
        store: s.store.clone(),
        target: healing.clone(),
        settings: BUDGET,
        backoff: Backoff {
            min: Duration::from_millis(5),
            max: Duration::from_millis(20),
        },
        retry: RetryPolicy::default(),
        reporter: Arc::clone(&reporter),
        metrics: Default::default(),
    };
    let task = tokio::spawn(applier.run(held_rx, shutdown.clone()));

    let bad = config_map("bad", "1");
    let version = commit(&s.store, vec![app("web", &[&bad])], &[&bad]);
    held_tx.send_replace(version);
    tokio::time::timeout(Duration::from_secs(10), reporter.notified())
        .await
        .expect("first pass");
    assert_eq!(s.store.applied_version().unwrap(), 0);
    healing.fail_bad.store(false, Ordering::SeqCst);
    // Retries keep reporting until one completes.
    tokio::time::timeout(Duration::from_secs(10), async {
        while s.store.applied_version().unwrap() != version {
            reporter.notified().await;
        }
    })
    .await
    .expect("a retry completes the version");
    assert_eq!(files(&s), ["bad"]);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_interrupts_a_pass_without_calling_it_failed() {
    let s = setup();
    let a = config_map("a", "1");
    commit(&s.store, vec![app("web", &[&a])], &[&a]);
    let cancelled = CancellationToken::new();
    cancelled.cancel();
    let outcome = apply_held(
        &s.store,
        &mut s.target.clone(),
        BUDGET,
        fixtures::NOW,
        &cancelled,
    )
    .await
    .unwrap()
    .unwrap();
    assert!(outcome.interrupted && !outcome.complete);
    assert_eq!(
        phases(&outcome),
        ["web pending apply interrupted by shutdown"]
    );
    assert_eq!(outcome.written, 0);
    assert_eq!(s.store.applied_version().unwrap(), 0);
}

#[tokio::test]
async fn no_deletion_while_the_live_listing_is_incomplete() {
    let s = setup();
    let (a, b) = (config_map("a", "1"), config_map("b", "2"));
    commit(&s.store, vec![app("web", &[&a, &b])], &[&a, &b]);
    pass(&s.store, &s.target, BUDGET).await;
    commit(&s.store, vec![app("web", &[&a])], &[]);
    let faulty = Faulty::new(s.target.clone());
    faulty.fail_list.store(true, Ordering::SeqCst);
    let outcome = pass(&s.store, &faulty, BUDGET).await;
    assert!(!outcome.complete && outcome.retry);
    assert_eq!(outcome.deleted, 0);
    assert_eq!(files(&s), ["a", "b"]);
    assert!(
        outcome.apps[0].message.starts_with(
            "deletions withheld: the list of live objects is incomplete: cannot list v1/ConfigMap objects"
        ),
        "{}",
        outcome.apps[0].message
    );
    assert_eq!(
        s.store.inventory().unwrap()["web"].objects.len(),
        2,
        "the withheld deletion stays owned"
    );
    faulty.fail_list.store(false, Ordering::SeqCst);
    let outcome = pass(&s.store, &faulty, BUDGET).await;
    assert!(outcome.complete);
    assert_eq!(files(&s), ["a"]);
}

#[tokio::test]
async fn an_agent_with_an_empty_store_adopts_the_inventory_kept_in_the_target() {
    let s = setup();
    let (a, b) = (config_map("a", "1"), config_map("b", "2"));
    commit(&s.store, vec![app("web", &[&a, &b])], &[&a, &b]);
    pass(&s.store, &s.target, BUDGET).await;

    // Reinstalled: a new store, the same target; the new state drops b.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("agent.redb"), 100).unwrap();
    commit(&store, vec![app("web", &[&a])], &[&a]);
    let outcome = pass(&store, &s.target, BUDGET).await;
    assert!(outcome.complete);
    assert_eq!(
        (outcome.written, outcome.unchanged, outcome.deleted),
        (0, 1, 1),
        "adopted objects are neither rewritten nor orphaned"
    );
    assert_eq!(files(&s), ["a"]);
    assert_eq!(store.inventory().unwrap()["web"].objects.len(), 1);
}

#[tokio::test]
async fn adoption_takes_apps_and_prune_settings_from_the_signed_state_only() {
    let s = setup();
    let (a, b, c) = (
        config_map("a", "1"),
        config_map("b", "2"),
        config_map("c", "3"),
    );
    // An earlier agent applied a, b and c, under two apps that both had prune on.
    commit(
        &s.store,
        vec![app("web", &[&a, &b]), app("old", &[&c])],
        &[&a, &b, &c],
    );
    assert!(pass(&s.store, &s.target, BUDGET).await.complete);
    assert_eq!(files(&s), ["a", "b", "c"]);

    // Reinstalled with a state that has no "old" app and "web" with prune off: the copy in the
    // target says prune on for both, but only the signed state is policy.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("agent.redb"), 100).unwrap();
    let mut web = app("web", &[&a]);
    web.prune = false;
    commit(&store, vec![web], &[&a]);
    let outcome = pass(&store, &s.target, BUDGET).await;
    assert!(outcome.complete);
    assert_eq!(outcome.deleted, 0);
    assert_eq!(
        files(&s),
        ["a", "b", "c"],
        "b released, c not adopted: nothing deleted"
    );
    let inventory = store.inventory().unwrap();
    assert_eq!(inventory.keys().collect::<Vec<_>>(), ["web"]);
    assert!(!inventory["web"].prune, "the signed setting is recorded");

    // Even after "web" leaves the state, it is pruned under the signed setting: nothing goes.
    commit(&store, vec![], &[]);
    let outcome = pass(&store, &s.target, BUDGET).await;
    assert_eq!(outcome.deleted, 0);
    assert_eq!(files(&s), ["a", "b", "c"]);
}

#[tokio::test]
async fn passes_woken_by_the_target_report_only_changes() {
    let s = setup();
    let a = config_map("a", "1");
    commit(&s.store, vec![app("web", &[&a])], &[&a]);
    pass(&s.store, &s.target, BUDGET).await;
    let quiet = apply_held_with(
        &s.store,
        &mut s.target.clone(),
        BUDGET,
        fixtures::NOW,
        &CancellationToken::new(),
        ReportPolicy::IfChanged,
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!quiet.reported);
    assert_eq!(s.store.outbox_after(0).unwrap().len(), 1);
    assert_eq!(quiet.apps[0].health, AppHealth::Healthy);
}

#[tokio::test]
async fn reported_drift_is_left_alone_and_named_in_the_message() {
    let s = setup();
    let a = config_map("a", "1");
    let mut web = app("web", &[&a]);
    web.drift = DriftMode::Report;
    commit(&s.store, vec![web], &[&a]);
    pass(&s.store, &s.target, BUDGET).await;
    let path = s.target.path_of(&a.0.id);
    let edited = br#"{"apiVersion":"v1","data":{"value":"edited"},"kind":"ConfigMap","metadata":{"name":"a","namespace":"default"}}"#;
    std::fs::write(&path, edited).unwrap();
    let outcome = pass(&s.store, &s.target, BUDGET).await;
    assert_eq!((outcome.written, outcome.drifted), (0, 1));
    assert_eq!(outcome.apps[0].phase, AppPhase::Applied);
    assert_eq!(
        outcome.apps[0].message,
        "drifted, not corrected (drift: report): v1/ConfigMap default/a: .data.value"
    );
    assert_eq!(std::fs::read(&path).unwrap(), edited);
}

#[tokio::test]
async fn corrected_drift_is_written_back_counted_and_named_once() {
    let s = setup();
    let a = config_map("a", "1");
    let web = app("web", &[&a]);
    assert_eq!(web.drift, DriftMode::Correct, "correct is the default");
    commit(&s.store, vec![web], &[&a]);
    let first = pass(&s.store, &s.target, BUDGET).await;
    assert_eq!(
        (first.written, first.corrected),
        (1, 0),
        "a first write is no correction"
    );
    assert_eq!(first.apps[0].message, "");
    let path = s.target.path_of(&a.0.id);
    let applied = std::fs::read(&path).unwrap();
    std::fs::write(&path, br#"{"apiVersion":"v1","data":{"value":"edited"},"kind":"ConfigMap","metadata":{"name":"a","namespace":"default"}}"#).unwrap();
    let outcome = pass(&s.store, &s.target, BUDGET).await;
    assert_eq!((outcome.written, outcome.corrected), (1, 1));
    assert_eq!(
        outcome.apps[0].message,
        "corrected drift (drift: correct) of v1/ConfigMap default/a"
    );
    assert_eq!(std::fs::read(&path).unwrap(), applied);
    let quiet = pass(&s.store, &s.target, BUDGET).await;
    assert_eq!((quiet.written, quiet.corrected), (0, 0));
    assert_eq!(quiet.apps[0].message, "", "said once");
}
