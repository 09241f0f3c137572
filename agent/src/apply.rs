//! Carrying out apply plans: the applier task owns the target and applies the held
//! ClusterState — read from disk, never from the network (invariant 4).
//!
//! A pass reads one consistent snapshot (held state, inventory, blobs), plans it (`plan.rs`),
//! writes and deletes through the [`Target`], then records the new inventory, the applied
//! version and a status report in one transaction. A version counts as applied only when every
//! app ended `applied`; a pass that hit a transient target error is retried with backoff.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use flotilla_common::status::{AppPhase, AppStatus};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Backoff;
use crate::error::AgentError;
use crate::inventory::AppInventory;
use crate::plan::{AppChanges, AppPlan, AppStep, PlanInput, plan};
use crate::store::{ApplyRecord, ApplySnapshot, Store, StoreError};
use crate::target::{Change, Target};

/// Settings of the apply passes.
#[derive(Debug, Clone, Copy)]
pub struct ApplySettings {
    /// Most deletions per pass.
    pub deletion_budget: u32,
    /// Lifts the budget.
    pub override_budget: bool,
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
    /// Objects deleted.
    pub deleted: usize,
    /// Every app ended applied.
    pub complete: bool,
    /// A transient error happened; another pass may succeed.
    pub retry: bool,
    /// Shutdown interrupted the pass.
    pub interrupted: bool,
}

/// Applies the held ClusterState once; `None` when nothing is held.
pub async fn apply_held<T: Target>(
    store: &Store,
    target: &T,
    settings: ApplySettings,
    now: i64,
    shutdown: &CancellationToken,
) -> Result<Option<ApplyOutcome>, StoreError> {
    let Some(snapshot) = store.apply_snapshot()? else {
        return Ok(None);
    };
    let version = snapshot.held.held.version;
    let plan = plan(PlanInput {
        desired: &snapshot.held.state.body.apps,
        inventory: &snapshot.inventory,
        deletion_budget: settings.deletion_budget,
        override_budget: settings.override_budget,
    });
    let mut pass = Pass {
        snapshot: &snapshot,
        target,
        shutdown,
        outcome: ApplyOutcome {
            version,
            apps: Vec::new(),
            written: 0,
            unchanged: 0,
            deleted: 0,
            complete: true,
            retry: false,
            interrupted: false,
        },
        inventory: BTreeMap::new(),
        not_ready: BTreeSet::new(),
    };
    for app in &plan.apps {
        pass.run_app(app).await;
    }
    let Pass {
        mut outcome,
        inventory,
        ..
    } = pass;
    outcome.complete &= !outcome.interrupted;
    store.record_apply(&ApplyRecord {
        inventory,
        completed_version: outcome.complete.then_some(version),
        observed_at: now,
        apps: outcome.apps.clone(),
    })?;
    Ok(Some(outcome))
}

struct Pass<'a, T> {
    snapshot: &'a ApplySnapshot,
    target: &'a T,
    shutdown: &'a CancellationToken,
    outcome: ApplyOutcome,
    inventory: BTreeMap<String, Option<AppInventory>>,
    not_ready: BTreeSet<String>,
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

impl<T: Target> Pass<'_, T> {
    async fn run_app(&mut self, app: &AppPlan) {
        let version = self.outcome.version;
        let status = |phase, message: String| AppStatus {
            app: app.app.clone(),
            commit: app.commit.clone(),
            version,
            phase,
            message,
        };
        let changes = match &app.step {
            AppStep::Skip { phase, message } => {
                self.not_ready.insert(app.app.clone());
                self.outcome.complete = false;
                self.outcome.apps.push(status(*phase, message.clone()));
                return;
            }
            AppStep::Apply(changes) => changes,
        };
        // A dependency that failed while applying holds this app back too.
        if let Some(dep) = app.depends_on.iter().find(|d| self.not_ready.contains(*d)) {
            self.not_ready.insert(app.app.clone());
            self.outcome.complete = false;
            let message = format!("waiting for dependency {dep}");
            self.outcome.apps.push(status(AppPhase::Pending, message));
            return;
        }
        let mut inventory = self
            .snapshot
            .inventory
            .get(&app.app)
            .cloned()
            .unwrap_or_default();
        let failures = self.change_objects(changes, &mut inventory).await;
        inventory.prune = app.prune;
        inventory.prune_protect = app.prune_protect.clone();
        if self.outcome.interrupted {
            // Not a failure: the next start applies the held state again.
            self.not_ready.insert(app.app.clone());
            self.outcome.complete = false;
            self.inventory.insert(app.app.clone(), Some(inventory));
            let message = "apply interrupted by shutdown".to_string();
            self.outcome.apps.push(status(AppPhase::Pending, message));
            return;
        }
        let message = failures.message().or_else(|| changes.failure.clone());
        if failures.transient {
            self.outcome.retry = true;
        }
        if message.is_some() {
            self.not_ready.insert(app.app.clone());
            self.outcome.complete = false;
        }
        let keep = !app.removed || !inventory.objects.is_empty();
        self.inventory
            .insert(app.app.clone(), keep.then_some(inventory));
        match message {
            Some(message) => {
                warn!(app = %app.app, version = self.outcome.version, "app failed: {message}");
                self.outcome.apps.push(status(AppPhase::Failed, message));
            }
            // A removed app that is fully pruned is simply gone.
            None if app.removed => {}
            None => self
                .outcome
                .apps
                .push(status(AppPhase::Applied, String::new())),
        }
    }

    /// Writes, then (only if every write succeeded) deletes; updates `inventory` to match.
    async fn change_objects(
        &mut self,
        changes: &AppChanges,
        inventory: &mut AppInventory,
    ) -> Failures {
        let mut failures = Failures::default();
        for id in &changes.released {
            inventory.remove(id);
        }
        for entry in &changes.writes {
            if self.shutdown.is_cancelled() {
                self.outcome.interrupted = true;
                failures.add("interrupted by shutdown".into(), true);
                return failures;
            }
            let Some(bytes) = self.snapshot.blobs.get(&entry.digest) else {
                failures.add(
                    format!("object {} is missing from the local store", entry.id),
                    false,
                );
                continue;
            };
            match self.target.apply(&entry.id, bytes).await {
                Ok(change) => {
                    inventory.insert(entry.id.clone(), entry.digest);
                    match change {
                        Change::Changed => self.outcome.written += 1,
                        Change::Unchanged => self.outcome.unchanged += 1,
                    }
                }
                Err(e) => failures.add(e.to_string(), e.transient),
            }
        }
        if failures.count > 0 {
            return failures;
        }
        for id in &changes.deletes {
            if self.shutdown.is_cancelled() {
                self.outcome.interrupted = true;
                failures.add("interrupted by shutdown".into(), true);
                return failures;
            }
            match self.target.delete(id).await {
                Ok(change) => {
                    inventory.remove(id);
                    if change == Change::Changed {
                        self.outcome.deleted += 1;
                    }
                }
                Err(e) => failures.add(e.to_string(), e.transient),
            }
        }
        failures
    }
}

/// The applier task: applies the held state at startup (no hub needed), then whenever `held`
/// announces a newly committed version, and again after transient failures.
pub(crate) struct Applier<T> {
    /// The store.
    pub store: Store,
    /// The target; this task is its only user.
    pub target: T,
    /// Budget settings.
    pub settings: ApplySettings,
    /// Retry delays after transient failures.
    pub backoff: Backoff,
    /// Woken after each recorded pass.
    pub reporter: Arc<Notify>,
}

impl<T: Target> Applier<T> {
    /// Runs until shutdown.
    pub(crate) async fn run(
        self,
        mut held: watch::Receiver<u64>,
        shutdown: CancellationToken,
    ) -> Result<(), AgentError> {
        let mut delays = self.backoff.delays();
        let mut retry_in = None;
        // Level-based: whatever is held is applied again at startup, from disk alone, which
        // also finishes an apply that a crash interrupted and undoes drift from the downtime.
        let mut due = self.store.held()?.is_some();
        loop {
            if due {
                retry_in = None;
                if let Some(outcome) = self.pass(&shutdown).await? {
                    if outcome.retry && !outcome.interrupted {
                        retry_in = delays.next();
                    } else {
                        delays = self.backoff.delays();
                    }
                }
            }
            let retry = async {
                match retry_in {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => std::future::pending().await,
                }
            };
            due = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                changed = held.changed() => changed.is_ok(),
                _ = retry => true,
            };
            if !due {
                // The syncer is gone, so only shutdown is left to wait for.
                shutdown.cancelled().await;
                return Ok(());
            }
        }
    }

    async fn pass(&self, shutdown: &CancellationToken) -> Result<Option<ApplyOutcome>, StoreError> {
        let outcome = apply_held(
            &self.store,
            &self.target,
            self.settings,
            crate::unix_now(),
            shutdown,
        )
        .await?;
        let Some(outcome) = outcome else {
            return Ok(None);
        };
        self.reporter.notify_one();
        let apps = outcome.apps.len();
        let (version, written, deleted, unchanged) = (
            outcome.version,
            outcome.written,
            outcome.deleted,
            outcome.unchanged,
        );
        if outcome.complete {
            info!(
                "applied version={version} apps={apps} written={written} deleted={deleted} \
                 unchanged={unchanged}"
            );
        } else {
            let count = |phase| outcome.apps.iter().filter(|a| a.phase == phase).count();
            warn!(
                "apply of version={version} incomplete: failed={} pending={} written={written} \
                 deleted={deleted} retry={}",
                count(AppPhase::Failed),
                count(AppPhase::Pending),
                outcome.retry && !outcome.interrupted
            );
        }
        Ok(Some(outcome))
    }
}

#[cfg(test)]
mod tests;
