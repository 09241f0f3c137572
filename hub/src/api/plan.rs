//! `Admin.Plan`, the IO half of `flotilla plan`: finds the app's source, resolves the revision in its
//! mirror (fetching a branch or tag from the remote on demand), renders the app for the clusters it
//! targets and reads what they get now from their latest ClusterStates. The comparison, the stages and the
//! diff are `crate::plan`, pure. Everything here runs on one blocking thread per plan; at most
//! [`MAX_PLANS`] run at once, and their renders take the controller's render slots like any other.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flotilla_common::cluster_state::AppState;
use flotilla_common::digest::Digest;
use flotilla_common::limits::Limits;
use flotilla_proto::v1 as pb;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{ApiState, internal};
use crate::config::{ChartRepoConfig, HubConfig, SourceConfig};
use crate::controller::{
    RenderMemo, RenderSlots, cluster_info, read_credentials, render_for_clusters, resolve_charts,
    unix_now,
};
use crate::manifest::{AppSpec, Approval, load_manifest};
use crate::plan::{self, Change, Counts, DiffEntry, PlannedCluster};
use crate::render::{RenderEnv, RepoTree, Tools, plan_target, release_id, select_target};
use crate::source::{FetchAuth, GitMirror, SourceError, read_tree, redact_url};
use crate::store::{ClusterSnapshot, HubStore};

/// Plans computed at once; more wait, so operators cannot crowd out the controller's renders.
pub const MAX_PLANS: usize = 2;

/// What plans need besides the store: the sources and their mirrors, the render setup shared with the
/// controller, and the offline threshold.
pub struct PlanEnv {
    /// `<data dir>/mirrors`.
    pub mirrors_dir: PathBuf,
    /// Configured sources, in order (the first declaring an app wins).
    pub sources: Arc<Vec<SourceConfig>>,
    /// Time box of an on-demand fetch.
    pub fetch_timeout: Duration,
    /// Render limits.
    pub limits: Limits,
    /// External renderers (the controller's).
    pub tools: Arc<Tools>,
    /// Render slots (the controller's).
    pub slots: Arc<RenderSlots>,
    /// hub.yaml `chartRepositories`.
    pub chart_repos: Arc<Vec<ChartRepoConfig>>,
    /// The chart cache (the controller's).
    pub chart_cache: PathBuf,
    /// hub.yaml `rollouts.offlineAfter`.
    pub offline_after: Duration,
    /// Stops renders when the hub stops.
    pub stop: CancellationToken,
    running: Arc<Semaphore>,
}

impl PlanEnv {
    /// The plan setup for `config`, rendering with the controller's `tools`, `slots` and `chart_cache`.
    pub fn new(
        config: &HubConfig,
        mirrors_dir: PathBuf,
        tools: Arc<Tools>,
        slots: Arc<RenderSlots>,
        chart_cache: PathBuf,
        stop: CancellationToken,
    ) -> Self {
        PlanEnv {
            mirrors_dir,
            sources: Arc::new(config.sources.clone()),
            fetch_timeout: config.fetch_timeout,
            limits: config.limits.clone(),
            tools,
            slots,
            chart_repos: Arc::new(config.chart_repositories.clone()),
            chart_cache,
            offline_after: config.rollouts.offline_after,
            stop,
            running: Arc::new(Semaphore::new(MAX_PLANS)),
        }
    }
}

/// Why a plan could not be made; each maps to one status code.
enum PlanError {
    /// No such app, revision or cluster.
    NotFound(String),
    /// The source at that revision cannot be planned (its manifest, a chart, the tree).
    Precondition(String),
    /// The remote could not be reached.
    Unavailable(String),
    /// A bug or a store failure: logged, not shown.
    Internal(String),
}

impl From<PlanError> for Status {
    fn from(e: PlanError) -> Status {
        match e {
            PlanError::NotFound(m) => Status::not_found(m),
            PlanError::Precondition(m) => Status::failed_precondition(m),
            PlanError::Unavailable(m) => Status::unavailable(m),
            PlanError::Internal(m) => internal(m),
        }
    }
}

fn store_err(e: crate::store::StoreError) -> PlanError {
    PlanError::Internal(e.to_string())
}

/// Answers `Admin.Plan`.
pub async fn plan(state: &ApiState, req: pb::PlanRequest) -> Result<pb::PlanResponse, Status> {
    if req.app.is_empty() {
        return Err(Status::invalid_argument("app is required"));
    }
    let env = state.plan.clone();
    let permit = env
        .running
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| Status::unavailable("the hub is shutting down"))?;
    let contacts = state
        .last_contact
        .lock()
        .expect("last_contact lock")
        .clone();
    let store = state.store.clone();
    // The permit lives as long as the work, even if the caller gives up.
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        compute(&env, &store, &req, &contacts, unix_now())
    })
    .await
    .map_err(internal)?
    .map_err(Status::from)
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// The whole plan. Blocking.
fn compute(
    env: &PlanEnv,
    store: &HubStore,
    req: &pb::PlanRequest,
    contacts: &HashMap<String, i64>,
    now: i64,
) -> Result<pb::PlanResponse, PlanError> {
    let (source, tree, app) = locate(env, store, &req.app, &req.rev)?;
    let charts = resolve_charts(
        std::slice::from_ref(&app),
        &env.chart_repos,
        &env.chart_cache,
        &env.limits,
    )
    .map_err(PlanError::Precondition)?;
    let renv = RenderEnv {
        limits: &env.limits,
        tools: &env.tools,
        charts: &charts,
    };
    let mut warnings = Vec::new();

    // The fleet-wide release, over every target's plan as the controller computes it.
    let targets: Vec<Option<&crate::manifest::TargetSpec>> = if app.targets.is_empty() {
        vec![None]
    } else {
        app.targets.iter().map(Some).collect()
    };
    let plans: Result<Vec<_>, String> = targets
        .into_iter()
        .map(|t| plan_target(&tree, &app, t, &renv).map_err(|e| e.to_string()))
        .collect();
    let release = match &plans {
        Ok(plans) => release_id(&app, &plans.iter().collect::<Vec<_>>()),
        Err(e) => {
            warnings.push(format!("no release id: {e}"));
            String::new()
        }
    };
    drop(plans);

    let snapshots = store.cluster_snapshots().map_err(store_err)?;
    let targeted: Vec<&ClusterSnapshot> = snapshots
        .iter()
        .filter(|s| select_target(&app, &cluster_info(&s.cluster)).is_some())
        .collect();
    let records: Vec<_> = targeted.iter().map(|s| s.cluster.clone()).collect();
    let (rendered, errors, _) = render_for_clusters(
        &tree,
        std::slice::from_ref(&app),
        &records,
        &source.name,
        &renv,
        &mut RenderMemo::default(),
        &env.slots,
        &env.stop,
    );
    // Per cluster: the app's render, or why it failed.
    let next_of = |snap: &ClusterSnapshot| -> Result<crate::controller::AppRender, String> {
        if let Some(render) = rendered
            .per_cluster
            .get(&snap.cluster.id)
            .and_then(|apps| apps.first())
        {
            return Ok(render.clone());
        }
        let prefix = format!("app {} for cluster {}: ", app.name, snap.cluster.name);
        Err(errors
            .iter()
            .find_map(|e| e.strip_prefix(&prefix))
            .unwrap_or("the app did not render")
            .to_string())
    };
    let last_contact = |snap: &ClusterSnapshot| {
        contacts
            .get(&snap.cluster.id)
            .copied()
            .unwrap_or(0)
            .max(snap.reported_at)
    };

    let mut planned = Vec::new();
    for snap in &targeted {
        let (_, current) = current_app(snap, &app.name);
        let outcome = next_of(snap).map(|next| {
            let current = current
                .as_ref()
                .map(|a| a.objects.as_slice())
                .unwrap_or(&[]);
            Counts::of(&plan::compare(current, &next.0.objects))
        });
        planned.push(PlannedCluster {
            id: snap.cluster.id.clone(),
            name: snap.cluster.name.clone(),
            labels: snap.cluster.labels.clone(),
            last_contact: last_contact(snap),
            outcome,
        });
    }
    if targeted.is_empty() {
        warnings.push(format!(
            "no registered cluster is targeted by app {}",
            app.name
        ));
    }
    if let Some(spec) = &app.rollout {
        let fleet: Vec<crate::rollout::ClusterView> = targeted
            .iter()
            .map(|s| crate::rollout::ClusterView {
                id: s.cluster.id.clone(),
                labels: s.cluster.labels.clone(),
                last_contact: last_contact(s),
                report: None,
            })
            .collect();
        warnings.extend(crate::rollout::warnings(spec, &fleet));
    }
    let dropped: Vec<&str> = snapshots
        .iter()
        .filter(|s| !targeted.iter().any(|t| t.cluster.id == s.cluster.id))
        .filter(|s| current_app(s, &app.name).1.is_some())
        .map(|s| s.cluster.name.as_str())
        .collect();
    if !dropped.is_empty() {
        warnings.push(format!(
            "no target selects {} any more: the app's objects would be removed there",
            dropped.join(", ")
        ));
    }
    let stages = plan::stages(app.rollout.as_ref(), planned, now, env.offline_after);

    let next_label = if req.rev.is_empty() || tree.commit.starts_with(&req.rev) {
        short(&tree.commit).to_string()
    } else {
        format!("{} @ {}", req.rev, short(&tree.commit))
    };
    let diff = if req.diff_cluster.is_empty() {
        String::new()
    } else {
        let snap = snapshots
            .iter()
            .find(|s| s.cluster.name == req.diff_cluster)
            .or_else(|| snapshots.iter().find(|s| s.cluster.id == req.diff_cluster))
            .ok_or_else(|| {
                PlanError::NotFound(format!(
                    "no cluster named {:?} (or with that id) is registered",
                    req.diff_cluster
                ))
            })?;
        // A cluster no target selects any more loses every object of the app.
        let next = if targeted.iter().any(|t| t.cluster.id == snap.cluster.id) {
            next_of(snap).map(Some)
        } else {
            Ok(None)
        };
        match next {
            Err(e) => format!(
                "# app {} does not render for cluster {}: {e}\n",
                app.name, snap.cluster.name
            ),
            Ok(next) => object_diff(store, snap, &app.name, next, &next_label)?,
        }
    };

    Ok(pb::PlanResponse {
        app: app.name.clone(),
        source: source.name.clone(),
        commit: tree.commit.clone(),
        release,
        staged: app.rollout.is_some(),
        stages: stages.into_iter().map(stage_message).collect(),
        warnings,
        diff,
    })
}

/// The cluster's latest ClusterState version and its entry for `app`.
fn current_app(snap: &ClusterSnapshot, app: &str) -> (u64, Option<AppState>) {
    match &snap.latest {
        None => (0, None),
        Some((version, signed)) => (
            *version,
            signed
                .decode_unverified()
                .ok()
                .and_then(|s| s.body.apps.into_iter().find(|a| a.name == app)),
        ),
    }
}

/// The unified diff between what `snap` gets now and `next` (nothing: every object removed).
fn object_diff(
    store: &HubStore,
    snap: &ClusterSnapshot,
    app: &str,
    next: Option<crate::controller::AppRender>,
    next_label: &str,
) -> Result<String, PlanError> {
    let (version, current) = current_app(snap, app);
    let current_label = if version == 0 {
        format!("{}, no ClusterState yet", snap.cluster.name)
    } else {
        format!("{} ClusterState v{version}", snap.cluster.name)
    };
    let current_objects = current
        .as_ref()
        .map(|a| a.objects.as_slice())
        .unwrap_or(&[]);
    let next_objects = next.as_ref().map(|n| n.0.objects.as_slice()).unwrap_or(&[]);
    let new_bytes: HashMap<Digest, &Arc<Vec<u8>>> = next
        .as_ref()
        .map(|n| n.1.iter().map(|(d, b)| (*d, b)).collect())
        .unwrap_or_default();
    let stored = |digest: &Digest| -> Result<String, PlanError> {
        let bytes = store
            .blob_for_cluster(&snap.cluster.id, digest)
            .map_err(store_err)?;
        Ok(plan::blob_yaml(bytes.as_deref()))
    };
    let rendered = |digest: &Digest| plan::blob_yaml(new_bytes.get(digest).map(|b| b.as_slice()));
    let mut entries = Vec::new();
    for change in plan::compare(current_objects, next_objects) {
        let (current, next) = match change {
            Change::Unchanged(_) => continue,
            Change::Added(n) => (None, Some(rendered(&n.digest))),
            Change::Removed(c) => (Some(stored(&c.digest)?), None),
            Change::Changed { current, next } => {
                (Some(stored(&current.digest)?), Some(rendered(&next.digest)))
            }
        };
        entries.push(DiffEntry {
            id: change.id().clone(),
            current,
            next,
        });
    }
    if entries.is_empty() {
        return Ok(format!(
            "# no object of app {app} changes on cluster {} ({current_label} vs {next_label})\n",
            snap.cluster.name
        ));
    }
    Ok(plan::unified_diff(
        &entries,
        &current_label,
        next_label,
        plan::MAX_DIFF_BYTES,
    ))
}

fn stage_message(s: plan::StagePlan) -> pb::PlanStage {
    pb::PlanStage {
        name: s.name,
        max_unavailable: s.max_unavailable,
        bake_seconds: s.bake_seconds,
        approval: match s.approval {
            Approval::Auto => "auto",
            Approval::Manual => "manual",
        }
        .to_string(),
        clusters: s
            .clusters
            .into_iter()
            .map(|c| pb::PlanCluster {
                id: c.id,
                name: c.name,
                added: c.counts.added,
                changed: c.counts.changed,
                removed: c.counts.removed,
                unchanged: c.counts.unchanged,
                offline: c.offline,
                error: c.error.unwrap_or_default(),
            })
            .collect(),
    }
}

/// The app's source (the first configured source declaring it), its tree at `rev` and the app.
fn locate(
    env: &PlanEnv,
    store: &HubStore,
    app: &str,
    rev: &str,
) -> Result<(SourceConfig, RepoTree, AppSpec), PlanError> {
    let names = || {
        env.sources
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let source = match env.sources.as_slice() {
        [] => {
            return Err(PlanError::Precondition(
                "the hub has no sources in hub.yaml".into(),
            ));
        }
        [only] => only.clone(),
        many => {
            // Which source declares the app now; failing that, which declares it at `rev`.
            let declares = |cfg: &SourceConfig, rev: &str| {
                resolve(env, store, cfg, rev)
                    .ok()
                    .and_then(|tree| load_manifest(&tree, &env.limits).ok())
                    .is_some_and(|m| m.apps.iter().any(|a| a.name == app))
            };
            let found = many
                .iter()
                .find(|s| declares(s, ""))
                .or_else(|| {
                    (!rev.is_empty())
                        .then(|| many.iter().find(|s| declares(s, rev)))
                        .flatten()
                })
                .ok_or_else(|| {
                    PlanError::NotFound(format!(
                        "no source ({}) declares app {app:?}{}",
                        names(),
                        if rev.is_empty() {
                            String::new()
                        } else {
                            format!(" at its newest commit or at {rev:?}")
                        }
                    ))
                })?;
            found.clone()
        }
    };
    let tree = resolve(env, store, &source, rev)?;
    let at = format!("source {} at commit {}", source.name, short(&tree.commit));
    let manifest = load_manifest(&tree, &env.limits)
        .map_err(|e| PlanError::Precondition(format!("{at}: {e}")))?;
    let spec = manifest
        .apps
        .into_iter()
        .find(|a| a.name == app)
        .ok_or_else(|| PlanError::NotFound(format!("{at} declares no app {app:?}")))?;
    Ok((source, tree, spec))
}

/// The tree of `rev` in `cfg`'s mirror: empty for the newest fetched commit; a commit id, the tracked branch
/// or anything else the mirror holds as they are; another branch or a tag fetched from the remote first,
/// so the plan sees what the remote has now.
fn resolve(
    env: &PlanEnv,
    store: &HubStore,
    cfg: &SourceConfig,
    rev: &str,
) -> Result<RepoTree, PlanError> {
    let dir = env.mirrors_dir.join(&cfg.name);
    let read = |rev: &str| match read_tree(&dir, rev, &env.limits) {
        Ok(tree) => Ok(Some(tree)),
        // Not in the mirror (or no mirror yet).
        Err(SourceError::Revision { .. } | SourceError::Open { .. }) => Ok(None),
        Err(e) => Err(PlanError::Precondition(format!("source {}: {e}", cfg.name))),
    };
    if rev.is_empty() {
        let fetched = store
            .source(&cfg.name)
            .map_err(store_err)?
            .unwrap_or_default()
            .fetched_commit;
        if fetched.is_empty() {
            return Err(PlanError::Precondition(format!(
                "source {} has not been fetched yet; wait for its first poll or name a revision",
                cfg.name
            )));
        }
        return read(&fetched)?.ok_or_else(|| {
            PlanError::Internal(format!(
                "source {}: fetched commit {fetched} is not in the mirror",
                cfg.name
            ))
        });
    }
    let commit_like = (4..=40).contains(&rev.len()) && rev.bytes().all(|b| b.is_ascii_hexdigit());
    if (commit_like || rev == cfg.branch)
        && let Some(tree) = read(rev)?
    {
        return Ok(tree);
    }
    if let Some(commit) = fetch_named(env, cfg, rev)?
        && let Some(tree) = read(&commit)?
    {
        return Ok(tree);
    }
    read(rev)?.ok_or_else(|| {
        PlanError::NotFound(format!(
            "revision {rev:?} is not a commit, branch or tag of source {} ({})",
            cfg.name,
            redact_url(&cfg.url)
        ))
    })
}

/// Fetches `name` as a branch, else as a tag, from `cfg`'s remote into its mirror, with the source's
/// credentials, time box and pack cap; `None` when the remote has neither.
fn fetch_named(env: &PlanEnv, cfg: &SourceConfig, name: &str) -> Result<Option<String>, PlanError> {
    let unavailable =
        |e: &dyn std::fmt::Display| PlanError::Unavailable(format!("source {}: {e}", cfg.name));
    let (token, ca_pem) = read_credentials(cfg.token_file.as_deref(), cfg.ca_file.as_deref())
        .map_err(|e| PlanError::Precondition(format!("source {}: {e}", cfg.name)))?;
    let auth = FetchAuth {
        token: token.as_deref(),
        ca_pem: ca_pem.as_deref(),
    };
    let mirror = GitMirror::open_or_init(&env.mirrors_dir.join(&cfg.name), &cfg.url)
        .map_err(|e| unavailable(&e))?
        .with_timeout(env.fetch_timeout)
        .with_max_pack_bytes(cfg.max_pack_bytes);
    for tag in [false, true] {
        // The controller's poll may hold the mirror's lock; it ends within its own time box.
        let deadline = std::time::Instant::now() + env.fetch_timeout;
        loop {
            let fetched = if tag {
                mirror.fetch_tag(name, auth)
            } else {
                mirror.fetch(name, auth)
            };
            match fetched {
                Ok(commit) => return Ok(Some(commit)),
                Err(SourceError::BranchNotFound { .. } | SourceError::BranchName { .. }) => break,
                Err(SourceError::Busy { .. })
                    if std::time::Instant::now() < deadline && !env.stop.is_cancelled() =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(unavailable(&e)),
            }
        }
    }
    Ok(None)
}
