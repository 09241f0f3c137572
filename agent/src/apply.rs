//! Carrying out apply plans: the applier task owns the target and applies the held
//! ClusterState — read from disk, never from the network (invariant 4).
//!
//! A pass reads one consistent snapshot (held state, inventory, blobs), plans it (`plan.rs`),
//! writes and deletes through the [`Target`], observes each app's health, then records the new
//! inventory, the applied version and a status report in one transaction, and mirrors the
//! inventory into the target (so a reinstalled agent adopts instead of orphaning). A version
//! counts as applied only when every app ended `applied`; a pass that hit a transient target
//! error is retried with backoff.
//!
//! Only the signed state is policy. The inventory copy kept in the target is a hint for
//! adoption: an agent with an empty store adopts it only for apps of its held state, and under
//! the prune settings of that state, never those written in the copy.
//!
//! Writes go in two phases: first the CRDs and Namespaces the plan marks early (of every app
//! without dependencies), then each app's other objects and deletions, in dependency order.
//!
//! Deletions happen only after every write of the app succeeded and only for objects a fresh,
//! complete listing shows live *and labelled as this app's*; each delete is conditional on the
//! uid listed. When the listing fails, no deletion happens in that pass. Deletions are logged in
//! the store, so the deletion budget counts over a window that survives restarts.
//!
//! Failed apps are retried by themselves with capped exponential backoff ([`RetryPolicy`]), so
//! a namespace created later, a webhook back up or RBAC granted afterwards heals without a new
//! ClusterState.
//! An app whose objects are not healthy yet holds back the apps that depend on it; the target's
//! watches wake the applier when something changes, and such passes report only changes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_common::cluster_state::ObjectEntry;
use flotilla_common::object::ObjectId;
use flotilla_common::status::{AppHealth, AppPhase, AppStatus};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Backoff;
use crate::error::{AgentError, error_chain};
use crate::inventory::AppInventory;
use crate::plan::{AppChanges, AppPlan, AppStep, PlanInput, deleted_in_window, plan};
use crate::retry::{RetryPolicy, RetryState};
use crate::store::{ApplyRecord, ApplySnapshot, Store, StoreError};
use crate::target::{Applied, ApplyRequest, Change, Target};

/// Objects handed to the target at once; shutdown is checked between batches.
const BATCH: usize = 250;

/// How long the applier lets watch events settle before a pass they triggered.
const SETTLE: Duration = Duration::from_millis(200);

/// Settings of the apply passes.
#[derive(Debug, Clone, Copy)]
pub struct ApplySettings {
    /// Most deletions per deletion window (per pass when the window is zero).
    pub deletion_budget: u32,
    /// The window the budget counts deletions over.
    pub deletion_window: Duration,
    /// Lifts the budget.
    pub override_budget: bool,
}

/// When a pass queues a status report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportPolicy {
    /// Every pass reports (start, new version, retry).
    Always,
    /// Only a pass that changed the inventory, the applied version or an app's status reports
    /// (passes woken by the target's watches).
    IfChanged,
}

/// What one pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Version applied.
    pub version: u64,
    /// Status per app, as reported.
    pub apps: Vec<AppStatus>,
    /// Objects the target changed.
    pub written: usize,
    /// Objects the target already had.
    pub unchanged: usize,
    /// Objects that drifted and were left as they are (`drift: report`).
    pub drifted: usize,
    /// Objects that drifted and were written back (`drift: correct`).
    pub corrected: usize,
    /// Objects deleted.
    pub deleted: usize,
    /// Every app ended applied.
    pub complete: bool,
    /// A transient error happened; another pass may succeed.
    pub retry: bool,
    /// Shutdown interrupted the pass.
    pub interrupted: bool,
    /// A status report was queued.
    pub reported: bool,
}

/// Applies the held state once, reporting every pass; `None` when nothing is held.
pub async fn apply_held<T: Target>(
    store: &Store,
    target: &mut T,
    settings: ApplySettings,
    now: i64,
    shutdown: &CancellationToken,
) -> Result<Option<ApplyOutcome>, StoreError> {
    apply_held_with(store, target, settings, now, shutdown, ReportPolicy::Always).await
}

/// Applies the held state once under `policy`; `None` when nothing is held.
pub async fn apply_held_with<T: Target>(
    store: &Store,
    target: &mut T,
    settings: ApplySettings,
    now: i64,
    shutdown: &CancellationToken,
    policy: ReportPolicy,
) -> Result<Option<ApplyOutcome>, StoreError> {
    let Some(snapshot) = store.blocking(Store::apply_snapshot).await? else {
        return Ok(None);
    };
    let version = snapshot.held.held.version;
    let mut outcome = ApplyOutcome {
        version,
        apps: Vec::new(),
        written: 0,
        unchanged: 0,
        drifted: 0,
        corrected: 0,
        deleted: 0,
        complete: true,
        retry: false,
        interrupted: false,
        reported: false,
    };
    // An agent whose store has no inventory (new, or reinstalled) adopts the copy kept in the
    // target, so that it neither orphans nor double-owns what an earlier agent applied.
    let mut base = snapshot.inventory.clone();
    if base.is_empty() {
        match target.load_inventory().await {
            Ok(found) => {
                base = adoptable(found, &snapshot.held.state.body.apps);
                if !base.is_empty() {
                    info!(
                        apps = base.len(),
                        "adopted the inventory kept in the target"
                    );
                }
            }
            Err(e) => {
                let message = format!(
                    "cannot read the inventory kept in the target: {}",
                    error_chain(&e)
                );
                warn!("{message}; nothing is applied until it can be read");
                outcome.complete = false;
                outcome.retry = true;
                for app in &snapshot.held.state.body.apps {
                    outcome.apps.push(pending(
                        app.name.clone(),
                        app.commit.clone(),
                        version,
                        &message,
                    ));
                }
                outcome.reported = record(
                    store,
                    &snapshot,
                    &outcome,
                    BTreeMap::new(),
                    (now, settings),
                    policy,
                )
                .await?;
                return Ok(Some(outcome));
            }
        }
    }
    let plan = plan(PlanInput {
        desired: &snapshot.held.state.body.apps,
        inventory: &base,
        deletion_budget: settings.deletion_budget,
        deletion_window: settings.deletion_window,
        deleted_in_window: deleted_in_window(&snapshot.deletions, now, settings.deletion_window),
        override_budget: settings.override_budget,
    });
    let mut pass = Pass {
        snapshot: &snapshot,
        base: &base,
        target,
        shutdown,
        outcome,
        inventory: BTreeMap::new(),
        not_ready: BTreeMap::new(),
        started: BTreeMap::new(),
    };
    // First the CRDs and Namespaces every independent app declares, so that any app's objects
    // find their kind and namespace; then each app in dependency order.
    for app in &plan.apps {
        if !pass.run_early(app).await {
            break;
        }
    }
    for app in &plan.apps {
        pass.run_app(app).await;
    }
    let Pass {
        mut outcome,
        mut inventory,
        target,
        ..
    } = pass;
    outcome.complete &= !outcome.interrupted;
    // Adopted apps that this pass did not touch still need recording in the store.
    for (app, inv) in &base {
        if !snapshot.inventory.contains_key(app) && !inventory.contains_key(app) {
            inventory.insert(app.clone(), Some(inv.clone()));
        }
    }
    let mut full = base.clone();
    for (app, inv) in &inventory {
        match inv {
            Some(inv) => full.insert(app.clone(), inv.clone()),
            None => full.remove(app),
        };
    }
    if !outcome.interrupted
        && let Err(e) = target.save_inventory(&full).await
    {
        warn!(
            "cannot update the inventory kept in the target: {}",
            error_chain(&e)
        );
        outcome.retry = true;
    }
    outcome.reported = record(
        store,
        &snapshot,
        &outcome,
        inventory,
        (now, settings),
        policy,
    )
    .await?;
    Ok(Some(outcome))
}

/// The part of the inventory found in the target that may be adopted: apps of the held state
/// only, under that state's prune settings. The copy in the target is unsigned (anyone who can
/// write a ConfigMap can forge it), so it may name objects, never policy.
pub fn adoptable(
    found: BTreeMap<String, AppInventory>,
    desired: &[flotilla_common::cluster_state::AppState],
) -> BTreeMap<String, AppInventory> {
    let mut out = BTreeMap::new();
    for (name, mut inventory) in found {
        let Some(app) = desired.iter().find(|a| a.name == name) else {
            warn!(app = %name, "ignoring the target's inventory of an app the held state does not have");
            continue;
        };
        inventory.prune = app.prune;
        inventory.prune_protect = app.prune_protect.clone();
        out.insert(name, inventory);
    }
    out
}

fn pending(app: String, commit: String, version: u64, message: &str) -> AppStatus {
    AppStatus {
        app,
        commit,
        version,
        phase: AppPhase::Pending,
        message: message.to_string(),
        health: AppHealth::Progressing,
        health_reason: message.to_string(),
    }
}

/// Records the pass (inventory, applied version, deletions, report) unless `policy` says a
/// pass that changed nothing stays quiet; returns whether a report was queued.
async fn record(
    store: &Store,
    snapshot: &ApplySnapshot,
    outcome: &ApplyOutcome,
    inventory: BTreeMap<String, Option<AppInventory>>,
    (now, settings): (i64, ApplySettings),
    policy: ReportPolicy,
) -> Result<bool, StoreError> {
    let completed_version = outcome.complete.then_some(outcome.version);
    if policy == ReportPolicy::IfChanged && outcome.deleted == 0 {
        let inventory_same = inventory
            .iter()
            .all(|(app, inv)| snapshot.inventory.get(app) == inv.as_ref());
        let version_same = completed_version.is_none_or(|v| v == snapshot.applied_version);
        if inventory_same
            && version_same
            && store.blocking(Store::last_statuses).await? == outcome.apps
        {
            return Ok(false);
        }
    }
    let window = i64::try_from(settings.deletion_window.as_secs()).unwrap_or(i64::MAX);
    let record = ApplyRecord {
        inventory,
        completed_version,
        observed_at: now,
        apps: outcome.apps.clone(),
        deleted: outcome.deleted as u64,
        forget_deletions_before: now.saturating_sub(window),
    };
    store
        .blocking(move |store| store.record_apply(&record))
        .await?;
    Ok(true)
}

struct Pass<'a, T> {
    snapshot: &'a ApplySnapshot,
    /// The inventory the plan was made from (the store's, or the adopted one).
    base: &'a BTreeMap<String, AppInventory>,
    target: &'a mut T,
    shutdown: &'a CancellationToken,
    outcome: ApplyOutcome,
    inventory: BTreeMap<String, Option<AppInventory>>,
    /// Apps dependents must wait for, and why.
    not_ready: BTreeMap<String, String>,
    /// Apps whose early writes ran: their inventory and results so far.
    started: BTreeMap<String, (AppInventory, Written)>,
}

/// Failures of one app's objects: the first message, how many, and whether any is transient.
#[derive(Default)]
struct Failures {
    first: Option<String>,
    count: usize,
    transient: bool,
}

impl Failures {
    fn add(&mut self, message: String, transient: bool) {
        self.first.get_or_insert(message);
        self.count += 1;
        self.transient |= transient;
    }

    fn message(&self) -> Option<String> {
        let first = self.first.as_ref()?;
        Some(match self.count {
            1 => first.clone(),
            n => format!("{first} (and {} more errors)", n - 1),
        })
    }
}

/// What writing one app's objects produced besides failures.
#[derive(Default)]
struct Written {
    failures: Failures,
    /// Drifted objects left alone, with the fields that differ.
    drifted: Vec<(ObjectId, Vec<String>)>,
    /// Objects applied before with the same digest that the target wrote again: drift corrected.
    corrected: Vec<ObjectId>,
}

impl<T: Target> Pass<'_, T> {
    /// Writes the app's early objects (CRDs, Namespaces); false when the target is unavailable
    /// or shutting down, so that the early phase stops.
    async fn run_early(&mut self, app: &AppPlan) -> bool {
        let AppStep::Apply(changes) = &app.step else {
            return true;
        };
        if changes.early == 0 {
            return true;
        }
        let mut inventory = self.base.get(&app.app).cloned().unwrap_or_default();
        let mut written = Written::default();
        self.write_entries(
            app,
            &changes.writes[..changes.early],
            &mut inventory,
            &mut written,
        )
        .await;
        let go_on = !written.failures.transient && !self.outcome.interrupted;
        self.started.insert(app.app.clone(), (inventory, written));
        go_on
    }

    async fn run_app(&mut self, app: &AppPlan) {
        let version = self.outcome.version;
        let status = |phase, message: String, health, health_reason: String| AppStatus {
            app: app.app.clone(),
            commit: app.commit.clone(),
            version,
            phase,
            message,
            health,
            health_reason,
        };
        let changes = match &app.step {
            AppStep::Skip { phase, message } => {
                self.not_ready.insert(
                    app.app.clone(),
                    format!("waiting for dependency {}", app.app),
                );
                self.outcome.complete = false;
                let health = match phase {
                    AppPhase::Failed => AppHealth::Failed,
                    _ => AppHealth::Progressing,
                };
                self.outcome
                    .apps
                    .push(status(*phase, message.clone(), health, message.clone()));
                return;
            }
            AppStep::Apply(changes) => changes,
        };
        // A dependency that failed, waits, or is not healthy yet holds this app back too.
        if let Some(why) = app.depends_on.iter().find_map(|d| self.not_ready.get(d)) {
            let why = why.clone();
            self.not_ready.insert(
                app.app.clone(),
                format!("waiting for dependency {}", app.app),
            );
            self.outcome.complete = false;
            self.outcome.apps.push(status(
                AppPhase::Pending,
                why.clone(),
                AppHealth::Progressing,
                why,
            ));
            return;
        }
        let (mut inventory, mut written, rest) = match self.started.remove(&app.app) {
            Some((inventory, written)) => (inventory, written, &changes.writes[changes.early..]),
            None => (
                self.base.get(&app.app).cloned().unwrap_or_default(),
                Written::default(),
                &changes.writes[..],
            ),
        };
        self.change_objects(app, changes, rest, &mut inventory, &mut written)
            .await;
        inventory.prune = app.prune;
        inventory.prune_protect = app.prune_protect.clone();
        if self.outcome.interrupted {
            // Not a failure: the next start applies the held state again.
            self.not_ready.insert(
                app.app.clone(),
                format!("waiting for dependency {}", app.app),
            );
            self.outcome.complete = false;
            self.inventory.insert(app.app.clone(), Some(inventory));
            let message = "apply interrupted by shutdown".to_string();
            self.outcome.apps.push(status(
                AppPhase::Pending,
                message.clone(),
                AppHealth::Progressing,
                message,
            ));
            return;
        }
        let failures = &written.failures;
        let message = failures.message().or_else(|| changes.failure.clone());
        if failures.transient {
            self.outcome.retry = true;
        }
        if message.is_some() {
            self.not_ready.insert(
                app.app.clone(),
                format!("waiting for dependency {}", app.app),
            );
            self.outcome.complete = false;
        }
        let keep = !app.removed || !inventory.objects.is_empty();
        self.inventory
            .insert(app.app.clone(), keep.then_some(inventory));
        match message {
            Some(message) => {
                warn!(app = %app.app, version, "app failed: {message}");
                self.outcome.apps.push(status(
                    AppPhase::Failed,
                    message.clone(),
                    AppHealth::Failed,
                    message,
                ));
            }
            // A removed app that is fully pruned is simply gone.
            None if app.removed => {}
            None => {
                let ids: Vec<ObjectId> = changes.writes.iter().map(|w| w.id.clone()).collect();
                let (health, reason) = self.target.health(&ids).await;
                if health != AppHealth::Healthy {
                    self.not_ready.insert(
                        app.app.clone(),
                        format!("waiting for dependency {} to become healthy", app.app),
                    );
                }
                let message = drift_message(&written.drifted, &written.corrected);
                self.outcome
                    .apps
                    .push(status(AppPhase::Applied, message, health, reason));
            }
        }
    }

    /// Writes `entries` (those of the app's writes not written yet), then (only if every write
    /// succeeded) deletes what a fresh listing shows live and the app's; updates `inventory`.
    async fn change_objects(
        &mut self,
        app: &AppPlan,
        changes: &AppChanges,
        entries: &[ObjectEntry],
        inventory: &mut AppInventory,
        written: &mut Written,
    ) {
        for id in &changes.released {
            inventory.remove(id);
        }
        // An unavailable target or a shutdown in the early phase: the rest waits for a retry.
        if written.failures.transient {
            return;
        }
        self.write_entries(app, entries, inventory, written).await;
        let failures = &mut written.failures;
        if failures.count > 0 || changes.deletes.is_empty() {
            return;
        }
        let live = match self.target.list_live(&app.app, &changes.deletes).await {
            Ok(live) => live,
            Err(e) => {
                let message = format!(
                    "deletions withheld: the list of live objects is incomplete: {}",
                    error_chain(&e)
                );
                warn!(app = %app.app, "{message}");
                failures.add(message, true);
                return;
            }
        };
        for id in &changes.deletes {
            if self.shutdown.is_cancelled() {
                self.outcome.interrupted = true;
                failures.add("interrupted by shutdown".into(), true);
                return;
            }
            let Some(object) = live.get(id) else {
                debug!(app = %app.app, object = %id, "not live as this app's; forgotten");
                inventory.remove(id);
                continue;
            };
            match self.target.delete(id, object.uid.as_deref()).await {
                Ok(change) => {
                    inventory.remove(id);
                    if change == Change::Changed {
                        self.outcome.deleted += 1;
                    }
                }
                Err(e) => failures.add(e.to_string(), e.transient),
            }
        }
    }

    /// Writes `entries` in batches, recording each success in `inventory`.
    async fn write_entries(
        &mut self,
        app: &AppPlan,
        entries: &[ObjectEntry],
        inventory: &mut AppInventory,
        written: &mut Written,
    ) {
        let mut requests = Vec::with_capacity(entries.len());
        for entry in entries {
            match self.snapshot.blobs.get(&entry.digest) {
                Some(bytes) => requests.push(ApplyRequest {
                    id: &entry.id,
                    bytes,
                    digest: entry.digest,
                    previous: inventory.digest_of(&entry.id),
                    app: &app.app,
                    force: app.force,
                    drift: app.drift,
                }),
                None => written.failures.add(
                    format!("object {} is missing from the local store", entry.id),
                    false,
                ),
            }
        }
        for batch in requests.chunks(BATCH) {
            if self.shutdown.is_cancelled() {
                self.outcome.interrupted = true;
                written.failures.add("interrupted by shutdown".into(), true);
                return;
            }
            let results = self.target.apply(batch).await;
            for (request, result) in batch.iter().zip(results) {
                match result {
                    Ok(applied) => {
                        inventory.insert(request.id.clone(), request.digest);
                        match applied {
                            Applied::Changed if request.previous == Some(request.digest) => {
                                self.outcome.written += 1;
                                self.outcome.corrected += 1;
                                written.corrected.push(request.id.clone());
                            }
                            Applied::Changed => self.outcome.written += 1,
                            Applied::Unchanged => self.outcome.unchanged += 1,
                            Applied::Drifted(fields) => {
                                self.outcome.drifted += 1;
                                written.drifted.push((request.id.clone(), fields));
                            }
                        }
                    }
                    Err(e) => written.failures.add(e.to_string(), e.transient),
                }
            }
            // An unavailable API server fails the rest the same way: stop and retry later.
            if written.failures.transient {
                return;
            }
        }
    }
}

/// The app message for drift that was reported and left alone, or else for drift that was
/// corrected; empty when there is none.
fn drift_message(drifted: &[(ObjectId, Vec<String>)], corrected: &[ObjectId]) -> String {
    if drifted.is_empty() {
        if corrected.is_empty() {
            return String::new();
        }
        let names: Vec<String> = corrected.iter().take(5).map(|id| id.to_string()).collect();
        let more = match corrected.len() {
            n if n > 5 => format!(" and {} more objects", n - 5),
            _ => String::new(),
        };
        return format!(
            "{}{}{more}",
            flotilla_common::status::DRIFT_CORRECTED_PREFIX,
            names.join(", ")
        );
    }
    let parts: Vec<String> = drifted
        .iter()
        .take(5)
        .map(|(id, fields)| format!("{id}: {}", fields.join(", ")))
        .collect();
    let more = match drifted.len() {
        n if n > 5 => format!("; and {} more objects", n - 5),
        _ => String::new(),
    };
    format!(
        "drifted, not corrected (drift: report): {}{more}",
        parts.join("; ")
    )
}

/// The applier task: applies the held state at startup (no hub needed), then whenever `held`
/// announces a newly committed version, and again after transient failures.
pub struct Applier<T> {
    /// The store.
    pub store: Store,
    /// The target; this task is its only user.
    pub target: T,
    /// Budget settings.
    pub settings: ApplySettings,
    /// Retry delays after transient failures.
    pub backoff: Backoff,
    /// Retry delays after apps failed for other reasons.
    pub retry: RetryPolicy,
    /// Woken after each recorded pass.
    pub reporter: Arc<Notify>,
    /// Counts passes and the objects they wrote and deleted.
    pub metrics: crate::metrics::AgentMetrics,
}

impl<T: Target> Applier<T> {
    /// Runs until shutdown, then stops the target's background work.
    pub async fn run(
        mut self,
        held: watch::Receiver<u64>,
        shutdown: CancellationToken,
    ) -> Result<(), AgentError> {
        let result = self.run_passes(held, &shutdown).await;
        self.target.shutdown().await;
        result
    }

    async fn run_passes(
        &mut self,
        mut held: watch::Receiver<u64>,
        shutdown: &CancellationToken,
    ) -> Result<(), AgentError> {
        let mut delays = self.backoff.delays();
        let mut failed_retries = RetryState::default();
        let mut retry_in = None;
        // Transient retries report every pass; retries of failed apps only report changes.
        let mut retry_policy = ReportPolicy::Always;
        // Level-based: whatever is held is applied again at startup, from disk alone, which
        // also finishes an apply that a crash interrupted and undoes drift from the downtime.
        let holds = self.store.blocking(Store::held).await?.is_some();
        let mut due = holds.then_some(ReportPolicy::Always);
        let mut syncer_gone = false;
        loop {
            if let Some(policy) = due {
                retry_in = None;
                if let Some(outcome) = self.pass(shutdown, policy).await? {
                    let failed = outcome.apps.iter().any(|a| a.phase == AppPhase::Failed);
                    if outcome.interrupted {
                        // Shutting down: nothing to schedule.
                    } else if outcome.retry {
                        retry_in = delays.next();
                        retry_policy = ReportPolicy::Always;
                    } else if failed {
                        delays = self.backoff.delays();
                        let delay = failed_retries.next(&self.retry);
                        debug!("failed apps are retried in {delay:?}");
                        retry_in = Some(delay);
                        retry_policy = ReportPolicy::IfChanged;
                    } else {
                        delays = self.backoff.delays();
                        failed_retries.reset();
                    }
                }
            }
            let retry = async {
                match retry_in {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => std::future::pending().await,
                }
            };
            let new_version = async {
                if syncer_gone {
                    std::future::pending::<()>().await;
                }
                held.changed().await
            };
            due = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                changed = new_version => match changed {
                    Ok(()) => {
                        failed_retries.reset();
                        Some(ReportPolicy::Always)
                    }
                    Err(_) => {
                        // The syncer is gone; the held state can no longer change.
                        syncer_gone = true;
                        None
                    }
                },
                _ = retry => Some(retry_policy),
                _ = self.target.changed() => {
                    // Let a burst of events (a rollout, a multi-object edit) settle first.
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(SETTLE) => {}
                    }
                    // A pending transient retry stays due: it reports regardless.
                    Some(if retry_in.is_some() { retry_policy } else { ReportPolicy::IfChanged })
                }
            };
        }
    }

    async fn pass(
        &mut self,
        shutdown: &CancellationToken,
        policy: ReportPolicy,
    ) -> Result<Option<ApplyOutcome>, StoreError> {
        let started = std::time::Instant::now();
        let outcome = apply_held_with(
            &self.store,
            &mut self.target,
            self.settings,
            crate::unix_now(),
            shutdown,
            policy,
        )
        .await?;
        let Some(outcome) = outcome else {
            return Ok(None);
        };
        self.metrics
            .record_pass(&outcome, started.elapsed().as_secs_f64());
        if outcome.reported {
            self.reporter.notify_one();
        }
        let apps = outcome.apps.len();
        let (version, written, deleted, unchanged, drifted) = (
            outcome.version,
            outcome.written,
            outcome.deleted,
            outcome.unchanged,
            outcome.drifted,
        );
        if !outcome.reported {
            debug!("re-observed version={version}: nothing changed");
        } else if outcome.complete {
            info!(
                "applied version={version} apps={apps} written={written} deleted={deleted} \
                 unchanged={unchanged} drifted={drifted}"
            );
        } else {
            let count = |phase| outcome.apps.iter().filter(|a| a.phase == phase).count();
            let failed = count(AppPhase::Failed);
            warn!(
                "apply of version={version} incomplete: failed={failed} pending={} \
                 written={written} deleted={deleted} retry={}",
                count(AppPhase::Pending),
                (outcome.retry || failed > 0) && !outcome.interrupted
            );
        }
        Ok(Some(outcome))
    }
}

#[cfg(test)]
mod tests;
