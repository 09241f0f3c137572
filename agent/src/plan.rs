//! The apply planner: a pure function from (desired apps, applied inventory, deletion budget)
//! to an [`ApplyPlan`]. No IO and no clock; the executor in `apply.rs` carries the plan out.
//!
//! The rules (DESIGN.md §8 invariant 3):
//! - an app writes every object of its desired set; the target skips unchanged ones;
//! - an app deletes only objects in its *own* inventory that left the desired set, only when
//!   `prune` is on, never Namespaces, PersistentVolumes, PersistentVolumeClaims or
//!   CustomResourceDefinitions (apiextensions.k8s.io) unless listed in the app's
//!   `prune_protect`, and never an object another app now wants (ownership moved);
//! - objects that leave an app but may not be deleted are *released*: forgotten, left in place;
//! - all deletions of one plan, plus those already made within the deletion window, stay within
//!   the deletion budget; over budget, every deletion of the plan is withheld (kept in the
//!   inventory for a later pass) and each app that had deletions is reported failed, while
//!   writes still happen;
//! - an app removed from the ClusterState is pruned by the same rules, under the prune settings
//!   it last had (the inventory records them only from signed states, never from the copy kept
//!   in the target);
//! - apps run in `depends_on` order; a cycle, an unknown dependency or an object claimed twice
//!   fails the app, and an app whose dependency did not get applied waits (pending);
//! - within an app, writes go CustomResourceDefinitions first, then Namespaces, then other
//!   cluster-scoped objects, then namespaced ones, so that what an object needs exists first;
//! - across apps, the CRDs and Namespaces of every app without `depends_on` are written *early*,
//!   before any app's other objects, so an app may use a namespace or kind another app declares
//!   (an app with `depends_on` keeps all its writes behind its dependencies).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use flotilla_common::cluster_state::{AppState, DriftMode, ObjectEntry};
use flotilla_common::object::ObjectId;
use flotilla_common::status::AppPhase;

use crate::inventory::AppInventory;

/// Kinds prune never deletes unless the app lists them in `prune_protect`: (group, kind).
const PROTECTED_KINDS: &[(&str, &str)] = &[
    ("", "Namespace"),
    ("", "PersistentVolume"),
    ("", "PersistentVolumeClaim"),
    ("apiextensions.k8s.io", "CustomResourceDefinition"),
];

/// What the planner is given.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    /// Apps of the accepted ClusterState.
    pub desired: &'a [AppState],
    /// What each app has applied so far.
    pub inventory: &'a BTreeMap<String, AppInventory>,
    /// Most deletions within one deletion window (or one plan, when the window is zero).
    pub deletion_budget: u32,
    /// The window the budget counts over; zero counts one plan alone.
    pub deletion_window: Duration,
    /// Deletions already made within the window that ends now.
    pub deleted_in_window: u32,
    /// Lifts the deletion budget.
    pub override_budget: bool,
}

/// The decisions for one apply pass, apps in the order they must run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyPlan {
    /// One entry per desired app, then one per removed app with an inventory.
    pub apps: Vec<AppPlan>,
}

/// What happens to one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPlan {
    /// App name.
    pub app: String,
    /// Commit of the desired release; empty for a removed app.
    pub commit: String,
    /// Apps that must be applied first.
    pub depends_on: Vec<String>,
    /// True when the app is no longer in the ClusterState.
    pub removed: bool,
    /// Prune setting to record with the app's inventory.
    pub prune: bool,
    /// Protected kinds to record with the app's inventory.
    pub prune_protect: Vec<String>,
    /// Whether server-side apply takes over other managers' fields.
    pub force: bool,
    /// What to do about drift.
    pub drift: DriftMode,
    /// What to do.
    pub step: AppStep,
}

/// Whether an app is worked on in this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppStep {
    /// Write, then delete.
    Apply(AppChanges),
    /// Nothing is done; the app is reported with this phase and message.
    Skip {
        /// `Failed` or `Pending`.
        phase: AppPhase,
        /// Why.
        message: String,
    },
}

/// The object changes of one app.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AppChanges {
    /// Objects to write, in apply order ([`apply_rank`], then id).
    pub writes: Vec<ObjectEntry>,
    /// How many of the first `writes` (CRDs and Namespaces) go early, before any app's other
    /// objects.
    pub early: usize,
    /// Objects to delete, after every write succeeded.
    pub deletes: Vec<ObjectId>,
    /// Objects that should go but stay (over budget); they stay in the inventory.
    pub withheld: Vec<ObjectId>,
    /// Objects that left the app and are left in place and forgotten.
    pub released: Vec<ObjectId>,
    /// Set when the app must be reported failed even if every write succeeds.
    pub failure: Option<String>,
}

/// `Kind` for the core group, `group/Kind` otherwise: the form `prune_protect` uses.
pub fn kind_key(id: &ObjectId) -> String {
    if id.group.is_empty() {
        id.kind.clone()
    } else {
        format!("{}/{}", id.group, id.kind)
    }
}

/// Where an object goes in an app's apply order: CRDs (0), Namespaces (1), other cluster-scoped
/// objects (2), namespaced objects (3).
pub fn apply_rank(id: &ObjectId) -> u8 {
    match (id.group.as_str(), id.kind.as_str(), &id.namespace) {
        ("apiextensions.k8s.io", "CustomResourceDefinition", _) => 0,
        ("", "Namespace", _) => 1,
        (_, _, None) => 2,
        (_, _, Some(_)) => 3,
    }
}

/// Deletions in `log` ((unix second, count), as the store keeps it) within the `window` that
/// ends at `now`; zero when the window is zero (the budget then counts one plan alone).
pub fn deleted_in_window(log: &[(i64, u64)], now: i64, window: Duration) -> u32 {
    if window.is_zero() {
        return 0;
    }
    let window = i64::try_from(window.as_secs()).unwrap_or(i64::MAX);
    let since = now.saturating_sub(window);
    let total: u64 = log
        .iter()
        .filter(|(at, _)| *at > since)
        .map(|(_, n)| n)
        .sum();
    u32::try_from(total).unwrap_or(u32::MAX)
}

/// True when prune must not delete `id` for an app with this `prune_protect` list.
pub fn is_protected(id: &ObjectId, prune_protect: &[String]) -> bool {
    PROTECTED_KINDS
        .iter()
        .any(|(group, kind)| id.group == *group && id.kind == *kind)
        && !prune_protect.iter().any(|k| *k == kind_key(id))
}

/// Plans one apply pass.
pub fn plan(input: PlanInput<'_>) -> ApplyPlan {
    let apps: BTreeMap<&str, &AppState> =
        input.desired.iter().map(|a| (a.name.as_str(), a)).collect();
    let wanted: BTreeSet<&ObjectId> = input
        .desired
        .iter()
        .flat_map(|a| a.objects.iter().map(|o| &o.id))
        .collect();

    let mut failed = BTreeMap::new();
    let order = dependency_order(&apps, &mut failed);

    let mut ready: BTreeSet<&str> = BTreeSet::new();
    let mut plans: Vec<AppPlan> = Vec::new();
    for name in &order {
        let app = apps[name];
        let step = if let Some(message) = failed.get(name) {
            AppStep::Skip {
                phase: AppPhase::Failed,
                message: message.clone(),
            }
        } else if let Some(dep) = app.depends_on.iter().find(|d| !ready.contains(d.as_str())) {
            waiting_for(dep)
        } else {
            ready.insert(name);
            let owned = input.inventory.get(*name);
            let mut changes = changes(app, owned, &wanted);
            if app.depends_on.is_empty() {
                changes.early = changes
                    .writes
                    .iter()
                    .take_while(|w| apply_rank(&w.id) <= 1)
                    .count();
            }
            AppStep::Apply(changes)
        };
        plans.push(AppPlan {
            app: app.name.clone(),
            commit: app.commit.clone(),
            depends_on: app.depends_on.clone(),
            removed: false,
            prune: app.prune,
            prune_protect: app.prune_protect.clone(),
            force: app.force,
            drift: app.drift,
            step,
        });
    }
    for (name, owned) in input.inventory {
        if apps.contains_key(name.as_str()) {
            continue;
        }
        let mut changes = AppChanges::default();
        for object in &owned.objects {
            sort_leaving(
                &object.id,
                owned.prune,
                &owned.prune_protect,
                &wanted,
                &mut changes,
            );
        }
        plans.push(AppPlan {
            app: name.clone(),
            commit: String::new(),
            depends_on: Vec::new(),
            removed: true,
            prune: owned.prune,
            prune_protect: owned.prune_protect.clone(),
            force: false,
            drift: DriftMode::Correct,
            step: AppStep::Apply(changes),
        });
    }

    enforce_budget(&mut plans, &input);
    block_dependents_of_failures(&mut plans);
    ApplyPlan { apps: plans }
}

fn waiting_for(dep: &str) -> AppStep {
    AppStep::Skip {
        phase: AppPhase::Pending,
        message: format!("waiting for dependency {dep}"),
    }
}

/// Topological order (ties by name); apps in a cycle get a failure, apps downstream of a
/// cycle come last. Also records unknown dependencies and doubly-claimed objects.
fn dependency_order<'a>(
    apps: &BTreeMap<&'a str, &'a AppState>,
    failed: &mut BTreeMap<&'a str, String>,
) -> Vec<&'a str> {
    let mut owner: BTreeMap<&ObjectId, &str> = BTreeMap::new();
    for (name, app) in apps {
        for object in &app.objects {
            if let Some(first) = owner.get(&object.id) {
                let message = if first == name {
                    format!("object {} is listed twice", object.id)
                } else {
                    format!("object {} is also in app {first}", object.id)
                };
                failed.entry(name).or_insert(message);
            } else {
                owner.insert(&object.id, name);
            }
        }
        if let Some(dep) = app
            .depends_on
            .iter()
            .find(|d| !apps.contains_key(d.as_str()))
        {
            failed
                .entry(name)
                .or_insert(format!("depends on unknown app {dep}"));
        }
    }

    // Kahn's algorithm over the known dependencies.
    let mut waiting: BTreeMap<&str, usize> = apps
        .iter()
        .map(|(name, app)| {
            let known: BTreeSet<&str> = app
                .depends_on
                .iter()
                .map(String::as_str)
                .filter(|d| apps.contains_key(d))
                .collect();
            (*name, known.len())
        })
        .collect();
    let mut ready: BTreeSet<&str> = waiting
        .iter()
        .filter(|(_, n)| **n == 0)
        .map(|(name, _)| *name)
        .collect();
    let mut order = Vec::with_capacity(apps.len());
    while let Some(name) = ready.pop_first() {
        order.push(name);
        waiting.remove(name);
        for (other, app) in apps {
            let Some(count) = waiting.get_mut(other) else {
                continue;
            };
            let deps: BTreeSet<&str> = app.depends_on.iter().map(String::as_str).collect();
            if deps.contains(name) {
                *count -= 1;
                if *count == 0 {
                    ready.insert(other);
                }
            }
        }
    }

    // What is left is in a cycle or depends on one.
    let stuck: BTreeSet<&str> = waiting.keys().copied().collect();
    for name in &stuck {
        if let Some(cycle) = find_cycle(name, apps, &stuck) {
            failed
                .entry(name)
                .or_insert(format!("dependency cycle: {}", cycle.join(" -> ")));
        }
    }
    for name in &stuck {
        order.push(name);
    }
    order
}

/// A path `start -> … -> start` through dependencies among `within`, if there is one.
fn find_cycle<'a>(
    start: &'a str,
    apps: &BTreeMap<&'a str, &'a AppState>,
    within: &BTreeSet<&'a str>,
) -> Option<Vec<&'a str>> {
    let mut path = vec![start];
    let mut seen = BTreeSet::new();
    fn walk<'a>(
        at: &'a str,
        start: &'a str,
        apps: &BTreeMap<&'a str, &'a AppState>,
        within: &BTreeSet<&'a str>,
        path: &mut Vec<&'a str>,
        seen: &mut BTreeSet<&'a str>,
    ) -> bool {
        for dep in &apps[at].depends_on {
            let Some(dep) = within.get(dep.as_str()).copied() else {
                continue;
            };
            if dep == start {
                path.push(dep);
                return true;
            }
            if seen.insert(dep) {
                path.push(dep);
                if walk(dep, start, apps, within, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    walk(start, start, apps, within, &mut path, &mut seen).then_some(path)
}

fn changes(
    app: &AppState,
    owned: Option<&AppInventory>,
    wanted: &BTreeSet<&ObjectId>,
) -> AppChanges {
    let mut writes = app.objects.clone();
    writes.sort_by(|a, b| (apply_rank(&a.id), &a.id).cmp(&(apply_rank(&b.id), &b.id)));
    let mut changes = AppChanges {
        writes,
        ..AppChanges::default()
    };
    let desired: BTreeSet<&ObjectId> = app.objects.iter().map(|o| &o.id).collect();
    for object in owned.map(|o| o.objects.as_slice()).unwrap_or_default() {
        if !desired.contains(&object.id) {
            sort_leaving(
                &object.id,
                app.prune,
                &app.prune_protect,
                wanted,
                &mut changes,
            );
        }
    }
    changes
}

/// Decides whether an object that left its app is deleted or released.
fn sort_leaving(
    id: &ObjectId,
    prune: bool,
    prune_protect: &[String],
    wanted: &BTreeSet<&ObjectId>,
    changes: &mut AppChanges,
) {
    if prune && !wanted.contains(id) && !is_protected(id, prune_protect) {
        changes.deletes.push(id.clone());
    } else {
        changes.released.push(id.clone());
    }
}

fn enforce_budget(plans: &mut [AppPlan], input: &PlanInput<'_>) {
    let total: usize = plans
        .iter()
        .map(|p| match &p.step {
            AppStep::Apply(c) => c.deletes.len(),
            AppStep::Skip { .. } => 0,
        })
        .sum();
    let budget = input.deletion_budget;
    let windowed = !input.deletion_window.is_zero();
    let used = if windowed {
        input.deleted_in_window as usize
    } else {
        0
    };
    if input.override_budget || total == 0 || used + total <= budget as usize {
        return;
    }
    let why = if windowed {
        let window = humantime::format_duration(input.deletion_window);
        format!(
            "{total} deletions exceed the deletion budget of {budget} per {window}: \
             {used} already made in the last {window}"
        )
    } else {
        format!("{total} deletions exceed the deletion budget of {budget}")
    };
    for plan in plans {
        if let AppStep::Apply(changes) = &mut plan.step
            && !changes.deletes.is_empty()
        {
            let withheld = changes.deletes.len();
            changes.failure = Some(if windowed {
                format!(
                    "{why}; withheld {withheld} of this app's deletions until the window \
                     allows them (or restart the agent with --override-deletion-budget)"
                )
            } else {
                format!(
                    "{why}; withheld {withheld} of this app's deletions (restart the agent \
                     with --override-deletion-budget to allow them)"
                )
            });
            changes.withheld = std::mem::take(&mut changes.deletes);
        }
    }
}

/// An app whose dependency failed or waits does not run this pass.
fn block_dependents_of_failures(plans: &mut [AppPlan]) {
    let mut not_ready: BTreeSet<String> = BTreeSet::new();
    for plan in plans.iter_mut() {
        if matches!(plan.step, AppStep::Apply(_))
            && let Some(dep) = plan.depends_on.iter().find(|d| not_ready.contains(*d))
        {
            plan.step = waiting_for(dep);
        }
        let ready = matches!(&plan.step, AppStep::Apply(c) if c.failure.is_none());
        if !ready {
            not_ready.insert(plan.app.clone());
        }
    }
}

#[cfg(test)]
mod tests;
