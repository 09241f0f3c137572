//! The hub's owner task for desired state: polls sources, renders each
//! commit for every cluster, and issues signed ClusterState versions.
//!
//! It alone writes ClusterStates, so versions are assigned without races.
//! Rendering is all-or-nothing per commit (invariant 2): if any app fails for
//! any cluster, the previous commit stays in force and the error is recorded
//! on the source, where `flotilla status` shows it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use flotilla_common::canonical::canonical_bytes;
use flotilla_common::cluster_state::{
    AppState, ChartRelease, ClusterState, ObjectEntry, StateBody, StateHeader,
};
use flotilla_common::digest::Digest;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{ChartRepoConfig, HubConfig, SourceConfig};
use crate::manifest::{AppSpec, load_manifest};
use crate::render::{
    ChartKey, ClusterInfo, FetchedChart, RenderEnv, RenderedApp, RepoTree, TargetPlan, Tools,
    plan_target, select_target,
};
use crate::source::charts::{ChartCache, ChartRepoAccess, ChartRequest};
use crate::source::{FetchAuth, GitMirror, read_tree};
use crate::store::{ClusterRecord, HubStore, NewState, Notice, SourceRecord, StoreError};

mod rollouts;

pub use rollouts::{RolloutAction, RolloutActionError, RolloutCommand};

/// Object bytes by digest, shared between clusters that render the same object.
pub(crate) type Blobs = Vec<(Digest, Arc<Vec<u8>>)>;

/// One app's render as a ClusterState entry and its object bytes, shared by every cluster that gets it.
pub(crate) type AppRender = Arc<(AppState, Blobs)>;

/// One source's render of one commit, for every cluster that rendered.
pub struct RenderedSource {
    commit: String,
    /// Per app whose every target planned: its fleet-wide Release id ([`crate::render::release_id`]).
    releases: BTreeMap<String, String>,
    /// Per app with a `rollout:` block: the block.
    rollout_specs: BTreeMap<String, crate::manifest::RolloutSpec>,
    /// Per cluster: the apps it gets from this source, with their object bytes.
    pub(crate) per_cluster: BTreeMap<String, Vec<AppRender>>,
    /// Some app takes its chart from a chart repository: every poll resolves its version again, since a
    /// newer chart matching the range is a new release even at the same commit.
    uses_chart_repos: bool,
    /// Per app of the manifest: whether it failed to render for some cluster (metrics by app).
    app_failed: BTreeMap<String, bool>,
}

/// Renders by the digest of their inputs ([`crate::render::TargetPlan::key`]): a render is a pure function
/// of them, so clusters and commits that agree on the inputs share one. Only renders used by the latest
/// render of the source are kept.
#[derive(Default)]
pub struct RenderMemo {
    entries: HashMap<Digest, AppRender>,
    /// Keys the renders since the last [`RenderMemo::keep_used`] used.
    used: std::collections::HashSet<Digest>,
}

impl RenderMemo {
    /// Drops every render the renders since the last call did not use.
    fn keep_used(&mut self) {
        let used = std::mem::take(&mut self.used);
        self.entries.retain(|k, _| used.contains(k));
    }

    /// Renders held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl RenderedSource {
    /// Clusters every app rendered for.
    pub fn clusters(&self) -> usize {
        self.per_cluster.len()
    }

    /// The commit it rendered.
    pub fn commit(&self) -> &str {
        &self.commit
    }

    /// The fleet-wide Release id of an app at this commit.
    pub fn release_of(&self, app: &str) -> Option<&str> {
        self.releases.get(app).map(String::as_str)
    }

    /// The ClusterState entries `cluster` gets from this source.
    pub fn apps_of(&self, cluster: &str) -> Option<Vec<&AppState>> {
        self.per_cluster
            .get(cluster)
            .map(|apps| apps.iter().map(|a| &a.0).collect())
    }
}

/// What one render of a source did, for logs and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RenderCounts {
    /// (cluster, app) pairs that got objects.
    pub assigned: usize,
    /// Distinct renders those needed.
    pub distinct: usize,
    /// Renders that actually ran (the rest came from the memo).
    pub ran: usize,
}

struct SourceRuntime {
    config: SourceConfig,
    record: SourceRecord,
    next_poll: Instant,
    rendered: Option<Arc<RenderedSource>>,
    /// Renders of older commits that rollouts still give some clusters, by commit.
    held: BTreeMap<String, Arc<RenderedSource>>,
    /// Older commits a render job tried since the last poll (a failed one is not retried in a loop).
    held_tried: std::collections::BTreeSet<String>,
    memo: Option<RenderMemo>,
    /// A job (fetch or render) for this source is running.
    busy: bool,
    /// Clusters changed: the commit in force must be rendered again.
    rerender: bool,
    /// The first poll since start has finished (fetched and rendered, or failed).
    settled: bool,
    /// A push webhook arrived while a job ran: fetch again as soon as it ends.
    hooked: bool,
}

impl SourceRuntime {
    /// Whether a render job already tried every one of these commits since the last poll.
    fn held_tried_all(&self, commits: &std::collections::BTreeSet<String>) -> bool {
        commits
            .iter()
            .all(|c| self.held.contains_key(c) || self.held_tried.contains(c))
    }
}

/// Handle to the running controller, for operators' rollout actions. It hears of registrations,
/// relabelled clusters and status reports from its store's notices, whichever replica took them.
#[derive(Clone)]
pub struct ControllerHandle {
    commands: mpsc::Sender<RolloutCommand>,
}

impl ControllerHandle {
    /// Asks the controller task, which alone changes rollouts, to do an operator's action.
    pub async fn rollout_action(
        &self,
        app: &str,
        action: RolloutAction,
        who: &str,
    ) -> Result<crate::rollout::RolloutRecord, RolloutActionError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let gone = || RolloutActionError::Unavailable("the hub is stopping".into());
        self.commands
            .send(RolloutCommand {
                app: app.to_string(),
                action,
                who: who.to_string(),
                reply,
            })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// The controller task's state.
pub struct Controller {
    metrics: crate::metrics::HubMetrics,
    store: HubStore,
    signing: Arc<SigningKey>,
    epoch: u64,
    state_ttl: Duration,
    fetch_timeout: Duration,
    limits: flotilla_common::limits::Limits,
    pub(crate) tools: Arc<Tools>,
    pub(crate) render_slots: Arc<RenderSlots>,
    events: Option<crate::events::EventLog>,
    stop: CancellationToken,
    chart_repos: Arc<Vec<ChartRepoConfig>>,
    pub(crate) chart_cache: PathBuf,
    mirrors_dir: PathBuf,
    sources: Vec<SourceRuntime>,
    /// What the store applied: reports, registrations and relabelled clusters, whichever replica
    /// took them.
    notices: broadcast::Receiver<Notice>,
    /// Each app's newest rollout record (its first Release's, when no rollout has run).
    rollouts: BTreeMap<String, crate::rollout::RolloutRecord>,
    next_rollout_id: u64,
    offline_after: Duration,
    /// Last contact per cluster id, shared with the API.
    contacts: Arc<std::sync::Mutex<HashMap<String, i64>>>,
    /// Unix seconds the controller started.
    started_at: i64,
    commands: mpsc::Receiver<RolloutCommand>,
    /// Unix seconds the running rollouts next need a look without an event.
    rollout_wake: Option<i64>,
    /// Where stages' analysis queries go (`analysis:` in hub.yaml).
    prometheus: Option<crate::analysis::Prometheus>,
    /// Analysis measurements under way: (app, rollout id, key).
    measuring: std::collections::BTreeSet<(String, u64, String)>,
    /// Analysis measurements to start.
    due: Vec<rollouts::MeasureJob>,
}

/// How long the controller gathers status reports before stepping rollouts on them.
const REPORT_BATCH: Duration = Duration::from_millis(50);

/// Current unix time in seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Controller {
    /// Builds the controller and its handle; call [`Controller::run`] in a tracked task.
    pub fn new(
        store: HubStore,
        signing: Arc<SigningKey>,
        epoch: u64,
        config: &HubConfig,
        mirrors_dir: PathBuf,
    ) -> Result<(Self, ControllerHandle), StoreError> {
        // Subscribed before anything is read, so nothing applied after the reads is missed.
        let notices = store.subscribe();
        let (commands_tx, commands) = mpsc::channel(16);
        let rollouts = store
            .latest_rollouts()?
            .into_iter()
            .map(|r| (r.rollout.app.clone(), r))
            .collect();
        let next_rollout_id = store.last_rollout_id()?;
        let mut sources = Vec::new();
        for s in &config.sources {
            sources.push(SourceRuntime {
                record: store.source(&s.name)?.unwrap_or_default(),
                config: s.clone(),
                next_poll: Instant::now(),
                rendered: None,
                held: BTreeMap::new(),
                held_tried: Default::default(),
                memo: Some(RenderMemo::default()),
                busy: false,
                rerender: true,
                settled: false,
                hooked: false,
            });
        }
        let handle = ControllerHandle {
            commands: commands_tx,
        };
        Ok((
            Controller {
                metrics: crate::metrics::HubMetrics::default(),
                store,
                signing,
                epoch,
                state_ttl: config.state_ttl,
                fetch_timeout: config.fetch_timeout,
                limits: config.limits.clone(),
                tools: Arc::new(Tools {
                    timeout: config.render.timeout,
                    ..Tools::discover()
                }),
                render_slots: Arc::new(RenderSlots::new(config.render.parallelism)),
                events: None,
                stop: CancellationToken::new(),
                chart_repos: Arc::new(config.chart_repositories.clone()),
                chart_cache: mirrors_dir.parent().unwrap_or(&mirrors_dir).join("charts"),
                mirrors_dir,
                sources,
                notices,
                rollouts,
                next_rollout_id,
                offline_after: config.rollouts.offline_after,
                contacts: Default::default(),
                started_at: unix_now(),
                commands,
                rollout_wake: None,
                prometheus: config.analysis.as_ref().and_then(|a| {
                    crate::analysis::Prometheus::new(a)
                        .map_err(|e| warn!(error = %e, "stage analysis has no Prometheus"))
                        .ok()
                }),
                measuring: Default::default(),
                due: Vec::new(),
            },
            handle,
        ))
    }

    /// Reads clusters' last contact from this map (the API's), for rollouts' offline rule.
    pub fn with_contacts(mut self, contacts: Arc<std::sync::Mutex<HashMap<String, i64>>>) -> Self {
        self.contacts = contacts;
        self
    }

    /// Counts fetches, renders and issued states in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::metrics::HubMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Records commits going into force and failed renders in `events`.
    pub fn with_events(mut self, events: crate::events::EventLog) -> Self {
        self.events = Some(events);
        self
    }

    /// Renders with `tools` and takes `slots`, shared with plans and with the controllers of this
    /// replica's later terms as leader, so all of them together keep to `render.parallelism`.
    pub fn with_shared_renders(mut self, tools: Arc<Tools>, slots: Arc<RenderSlots>) -> Self {
        self.tools = tools;
        self.render_slots = slots;
        self
    }

    /// Renders with these tools instead of the ones found on `PATH` (tests; an embedding program).
    pub fn with_tools(mut self, tools: Tools) -> Self {
        self.tools = Arc::new(tools);
        self
    }

    /// Runs until `shutdown` is cancelled.
    ///
    /// Fetches and renders run as jobs, at most one per source, so a slow fetch or a long Helm render of
    /// one source never delays another source's polls or the issuing of states; the controller task alone
    /// applies their outcomes.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.stop = shutdown.clone();
        let mut jobs: JoinSet<JobDone> = JoinSet::new();
        // When the rollouts step on the reports gathered so far (see REPORT_BATCH).
        let mut reports_due: Option<Instant> = None;
        let mut measuring: JoinSet<rollouts::MeasureDone> = JoinSet::new();
        loop {
            for job in std::mem::take(&mut self.due) {
                let prometheus = self.prometheus.clone();
                measuring.spawn(job.run(prometheus));
            }
            let now = Instant::now();
            for i in 0..self.sources.len() {
                let src = &self.sources[i];
                if src.busy {
                    continue;
                }
                if src.next_poll <= now {
                    self.start_poll(i, &mut jobs);
                } else if src.rerender {
                    self.start_rerender(i, &mut jobs);
                }
            }
            if reports_due.is_none_or(|due| due <= now) {
                reports_due = None;
                self.advance().await;
            }
            let next = self
                .sources
                .iter()
                .filter(|s| !s.busy)
                .map(|s| s.next_poll)
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
            // Re-check expiry at least hourly even without sources.
            let mut next = next.min(Instant::now() + Duration::from_secs(3600));
            if let Some(at) = self.rollout_wake {
                let wait = (at - unix_now()).max(0) as u64;
                next = next.min(Instant::now() + Duration::from_secs(wait));
            }
            if let Some(due) = reports_due {
                next = next.min(due);
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // Jobs end by their own time boxes (fetch, render, query); wait so none outlives the hub.
                    while jobs.join_next().await.is_some() {}
                    while measuring.join_next().await.is_some() {}
                    return;
                }
                _ = tokio::time::sleep_until(next) => {}
                notice = self.notices.recv() => match notice {
                    Ok(Notice::Report { .. }) => {
                        // Reports come in bursts (a stage of clusters applying at once): take them
                        // as one step of the rollouts rather than one store scan each, without
                        // holding up jobs and commands meanwhile.
                        reports_due.get_or_insert_with(|| Instant::now() + REPORT_BATCH);
                    }
                    // A cluster registered, relabelled, deleted or with new capabilities: render
                    // again; a new state follows only if a cluster's objects change.
                    Ok(Notice::Clusters | Notice::Restored) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        for src in &mut self.sources {
                            src.rerender = true;
                        }
                        reports_due.get_or_insert_with(|| Instant::now() + REPORT_BATCH);
                    }
                    // A push webhook: fetch that source now rather than at its next poll (a
                    // fetch under way already sees the new commit or is followed by the next).
                    Ok(Notice::SourceHook { source }) => {
                        if let Some(src) = self.sources.iter_mut().find(|s| s.config.name == source) {
                            info!(source = %source, "push webhook: fetching now");
                            src.next_poll = Instant::now();
                            src.hooked = src.busy;
                        }
                    }
                    Ok(Notice::State { .. } | Notice::Events(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => {
                        warn!("the store's notices ended; the controller stops");
                        return;
                    }
                },
                Some(done) = jobs.join_next() => match done {
                    Ok(done) => self.finish_job(done).await,
                    Err(e) => warn!(error = %e, "a source job failed"),
                },
                Some(command) = self.commands.recv() => self.handle_command(command).await,
                Some(done) = measuring.join_next() => match done {
                    Ok(done) => self.record_measurement(done).await,
                    Err(e) => warn!(error = %e, "an analysis measurement failed"),
                },
            }
        }
    }

    /// Steps rollouts and issues states until neither has anything more to do: a decision changes which
    /// Release clusters get, and an issued state sets a fence a report may already pass.
    async fn advance(&mut self) {
        for _ in 0..8 {
            let decided = self.step_rollouts().await;
            let fenced = match self.issue_states().await {
                Ok(fenced) => fenced,
                Err(e) => {
                    warn!(error = %e, "issuing ClusterStates failed; will retry");
                    false
                }
            };
            if !decided && !fenced {
                break;
            }
        }
    }

    fn render_job(&mut self, i: usize, commit: String) -> RenderJob {
        let src = &mut self.sources[i];
        RenderJob {
            store: self.store.clone(),
            dir: self.mirrors_dir.join(&src.config.name),
            source: src.config.name.clone(),
            limits: self.limits.clone(),
            tools: self.tools.clone(),
            slots: self.render_slots.clone(),
            memo: src.memo.take().unwrap_or_default(),
            commit,
            extra: Vec::new(),
            stop: self.stop.clone(),
            chart_repos: self.chart_repos.clone(),
            chart_cache: self.chart_cache.clone(),
        }
    }

    /// Starts fetching source `i`, and rendering the fetched commit if it is new.
    fn start_poll(&mut self, i: usize, jobs: &mut JoinSet<JobDone>) {
        let src = &mut self.sources[i];
        src.busy = true;
        let cfg = src.config.clone();
        let in_force = src
            .rendered
            .as_ref()
            .filter(|r| !r.uses_chart_repos)
            .map(|r| r.commit.clone());
        let dir = self.mirrors_dir.join(&cfg.name);
        let timeout = self.fetch_timeout;
        let job = self.render_job(i, String::new());
        let labels = crate::metrics::SourceLabels {
            source: cfg.name.clone(),
        };
        let metrics = self.metrics.clone();
        jobs.spawn(async move {
            let started = std::time::Instant::now();
            let fetch = tokio::task::spawn_blocking(move || fetch_source(&cfg, &dir, timeout))
                .await
                .unwrap_or_else(|join| Err(format!("fetch task failed: {join}")));
            metrics
                .fetch_duration
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            if fetch.is_err() {
                metrics.fetch_errors.get_or_create(&labels).inc();
            }
            let render = match &fetch {
                Ok(commit) if in_force.as_deref() != Some(commit.as_str()) => {
                    let job = RenderJob {
                        commit: commit.clone(),
                        ..job
                    };
                    let (result, held, memo) = job.run().await;
                    (Some(result), commit.clone(), held, memo)
                }
                _ => (None, String::new(), Vec::new(), job.memo),
            };
            let (render, commit, held, memo) = render;
            JobDone {
                source: i,
                kind: JobKind::Poll { fetch },
                render,
                held,
                commit,
                memo,
            }
        });
    }

    /// Starts rendering the commit in force of source `i` again, for clusters that changed.
    fn start_rerender(&mut self, i: usize, jobs: &mut JoinSet<JobDone>) {
        self.sources[i].rerender = false;
        let commit = self.sources[i].record.rendered_commit.clone();
        if commit.is_empty() {
            return;
        }
        self.sources[i].busy = true;
        // With the renders of older commits that rollouts still give some clusters.
        let extra: Vec<String> = self
            .held_commits(i)
            .into_iter()
            .filter(|c| *c != commit)
            .collect();
        self.sources[i].held_tried.extend(extra.iter().cloned());
        let job = RenderJob {
            extra,
            ..self.render_job(i, commit.clone())
        };
        jobs.spawn(async move {
            let (result, held, memo) = job.run().await;
            JobDone {
                source: i,
                kind: JobKind::Rerender,
                render: Some(result),
                held,
                commit,
                memo,
            }
        });
    }

    /// Applies a finished job's outcome to the source and records it.
    async fn finish_job(&mut self, done: JobDone) {
        let i = done.source;
        let name = self.sources[i].config.name.clone();
        {
            let src = &mut self.sources[i];
            src.busy = false;
            src.memo = Some(done.memo);
            if matches!(done.kind, JobKind::Poll { .. }) {
                src.held_tried.clear();
            }
        }
        self.keep_held(i, done.held);
        let commit = done.commit;
        let error_before = self.sources[i].record.error.clone();
        let in_force_before = self.sources[i].record.rendered_commit.clone();
        match done.kind {
            JobKind::Poll { fetch } => {
                self.sources[i].settled = true;
                self.sources[i].next_poll = if std::mem::take(&mut self.sources[i].hooked) {
                    Instant::now()
                } else {
                    Instant::now() + self.sources[i].config.interval
                };
                self.sources[i].record.last_fetch = unix_now();
                match fetch {
                    Ok(fetched) => self.sources[i].record.fetched_commit = fetched,
                    Err(e) => {
                        warn!(source = %name, url = %crate::source::RedactedUrl(&self.sources[i].config.url), error = %e, "fetch failed; previous release stays in force");
                        self.sources[i].record.error = format!("fetch failed: {e}");
                    }
                }
                let labels = crate::metrics::SourceLabels {
                    source: name.clone(),
                };
                if let Some(result) = &done.render {
                    self.metrics.renders.get_or_create(&labels).inc();
                    if !matches!(result, Ok((_, errors)) if errors.is_empty()) {
                        self.metrics.render_errors.get_or_create(&labels).inc();
                    }
                    if let Ok((rendered, _)) = result {
                        for (app, failed) in &rendered.app_failed {
                            let labels = crate::metrics::AppLabels { app: app.clone() };
                            self.metrics.app_renders.get_or_create(&labels).inc();
                            if *failed {
                                self.metrics.app_render_errors.get_or_create(&labels).inc();
                            }
                        }
                    }
                }
                match done.render {
                    None => {}
                    Some(Ok((rendered, errors))) if errors.is_empty() => {
                        info!(source = %name, commit = %commit, clusters = rendered.per_cluster.len(), "rendered new commit");
                        let src = &mut self.sources[i];
                        // The commit in force until now may still be what rollouts give some clusters.
                        if let Some(old) = src.rendered.replace(Arc::new(rendered)) {
                            src.held.insert(old.commit.clone(), old);
                        }
                        src.record.rendered_commit = commit;
                        src.record.error.clear();
                    }
                    Some(Ok((_, errors))) => {
                        let msg = format!("commit {}: {}", short(&commit), errors.join("; "));
                        warn!(source = %name, error = %msg, "render failed; previous release stays in force");
                        self.sources[i].record.error = msg;
                    }
                    Some(Err(msg)) => {
                        let msg = format!("commit {}: {msg}", short(&commit));
                        warn!(source = %name, error = %msg, "render failed; previous release stays in force");
                        self.sources[i].record.error = msg;
                    }
                }
            }
            JobKind::Rerender => {
                // The commit in force may have moved on while this job ran; its result is then stale.
                if self.sources[i].record.rendered_commit == commit {
                    let previous = self.sources[i].rendered.clone();
                    match done.render {
                        Some(Ok((mut rendered, errors))) => {
                            // Clusters whose render failed keep what they had.
                            if let Some(prev) = &previous {
                                for (cluster, apps) in &prev.per_cluster {
                                    rendered
                                        .per_cluster
                                        .entry(cluster.clone())
                                        .or_insert_with(|| apps.clone());
                                }
                            }
                            if !errors.is_empty() {
                                self.sources[i].record.error = errors.join("; ");
                            }
                            self.sources[i].rendered = Some(Arc::new(rendered));
                        }
                        Some(Err(msg)) => {
                            warn!(source = %name, error = %msg, "re-render of the commit in force failed");
                            self.sources[i].record.error = msg;
                        }
                        None => {}
                    }
                }
            }
        }
        self.save_source(i).await;
        if let Some(log) = &self.events {
            let record = &self.sources[i].record;
            let now = unix_now();
            let mut events = Vec::new();
            if record.rendered_commit != in_force_before {
                events.push(crate::events::NewEvent::source(
                    now,
                    "commit-in-force",
                    crate::events::Severity::Info,
                    &name,
                    format!(
                        "commit {} is in force for {} clusters",
                        short(&record.rendered_commit),
                        self.sources[i]
                            .rendered
                            .as_ref()
                            .map(|r| r.per_cluster.len())
                            .unwrap_or(0)
                    ),
                ));
            }
            if !record.error.is_empty() && record.error != error_before {
                let kind = if record.error.starts_with("fetch failed") {
                    "fetch-failed"
                } else {
                    "render-failed"
                };
                events.push(crate::events::NewEvent::source(
                    now,
                    kind,
                    crate::events::Severity::Error,
                    &name,
                    format!("{}; the previous release stays in force", record.error),
                ));
            }
            log.record(events).await;
        }
        self.reconcile_rollouts(i).await;
        self.prune_held(i);
        self.advance().await;
    }

    async fn save_source(&self, i: usize) {
        let store = self.store.clone();
        let name = self.sources[i].config.name.clone();
        let record = self.sources[i].record.clone();
        match tokio::task::spawn_blocking(move || store.put_source(&name, &record)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "saving source status failed"),
            Err(e) => warn!(error = %e, "saving source status panicked"),
        }
    }

    /// Issues a new version for every cluster whose desired body changed or
    /// whose newest state is past half its lifetime. Returns whether it set a rollout fence (the version
    /// that carries a rollout's new Release to a cluster).
    async fn issue_states(&mut self) -> Result<bool, StoreError> {
        // Until every source's first poll since start has finished, what clusters should get is not
        // known yet.
        if self.sources.iter().any(|s| !s.settled) {
            return Ok(false);
        }
        // Nor while the render of a Release some rollout gives some clusters is missing (after a
        // restart, until it is rendered again).
        if (0..self.sources.len())
            .any(|i| !self.held_ready(i) && !self.sources[i].held_tried_all(&self.held_commits(i)))
        {
            return Ok(false);
        }
        // A source that had a release in force but is not rendered in memory
        // (e.g. its re-render failed after a restart) would vanish from the
        // bodies; hold everything rather than issue a partial state.
        if self
            .sources
            .iter()
            .any(|s| !s.record.rendered_commit.is_empty() && s.rendered.is_none())
        {
            return Ok(false);
        }
        let clusters = self.store.clusters()?;
        let now = unix_now();
        let ttl = self.state_ttl.as_secs() as i64;
        let mut batch = Vec::new();
        let mut fences: Vec<(String, String, u64)> = Vec::new();
        'clusters: for cluster in &clusters {
            // A cluster whose render failed at a commit in force gets no new
            // version: a state without that source's apps would be partial.
            if self
                .sources
                .iter()
                .filter_map(|s| s.rendered.as_ref())
                .any(|r| !r.per_cluster.contains_key(&cluster.id))
            {
                continue;
            }
            let mut apps: Vec<AppState> = Vec::new();
            let mut blobs: HashMap<Digest, Arc<Vec<u8>>> = HashMap::new();
            let mut awaiting: Vec<String> = Vec::new();
            for (i, src) in self.sources.iter().enumerate() {
                let Some(rendered) = &src.rendered else {
                    continue;
                };
                for entry in rendered.per_cluster.get(&cluster.id).into_iter().flatten() {
                    if apps.iter().any(|a| a.name == entry.0.name) {
                        continue; // first source wins; duplicates are reported at render time
                    }
                    // A rollout decides which Release of the app the cluster gets.
                    let chosen = match self.choose(i, &cluster.id, entry) {
                        rollouts::Choice::Use(chosen) => chosen,
                        rollouts::Choice::Skip => continue,
                        rollouts::Choice::Hold => continue 'clusters,
                    };
                    if self.awaits_fence(&entry.0.name, &cluster.id) {
                        awaiting.push(entry.0.name.clone());
                    }
                    let (app, app_blobs) = &**chosen;
                    apps.push(app.clone());
                    blobs.extend(app_blobs.iter().cloned());
                }
            }
            apps.sort_by(|a, b| a.name.cmp(&b.name));
            let body = StateBody { apps };
            let latest = self.store.latest_state(&cluster.id)?;
            let (version, prev_digest) = match &latest {
                Some((version, signed)) => {
                    let unchanged =
                        canonical_bytes(&body).ok().as_deref() == Some(signed.body.as_slice());
                    let fresh = signed
                        .decode_unverified()
                        .map(|s| s.header.expires_at - now > ttl / 2)
                        .unwrap_or(false);
                    if unchanged && fresh {
                        // The cluster already has the new Release (its render did not change).
                        fences.extend(
                            awaiting
                                .into_iter()
                                .map(|app| (app, cluster.id.clone(), *version)),
                        );
                        continue;
                    }
                    (version + 1, Some(signed.digest()))
                }
                None => (1, None),
            };
            let header = StateHeader {
                cluster_id: cluster.id.clone(),
                hub_epoch: self.epoch,
                version,
                prev_digest,
                issued_at: now,
                expires_at: now + ttl,
                body_digest: Digest::of(b""),
            };
            let signed = ClusterState::sign(header, &body, &self.signing).map_err(|e| {
                StoreError::Corrupt {
                    table: "states",
                    detail: e.to_string(),
                }
            })?;
            let needed: Blobs = body
                .apps
                .iter()
                .flat_map(|a| a.objects.iter())
                .filter_map(|o| blobs.get(&o.digest).map(|b| (o.digest, b.clone())))
                .collect();
            fences.extend(
                awaiting
                    .into_iter()
                    .map(|app| (app, cluster.id.clone(), version)),
            );
            batch.push(NewState {
                cluster_id: cluster.id.clone(),
                version,
                signed,
                blobs: needed,
            });
        }
        if batch.is_empty() && fences.is_empty() {
            return Ok(false);
        }
        let fenced = self.set_fences(&fences);
        let store = self.store.clone();
        let records = fenced.clone();
        let batch = tokio::task::spawn_blocking(move || {
            store
                .commit_states_and_rollouts(&batch, &records)
                .map(|_pruned| batch)
        })
        .await
        .map_err(|e| StoreError::Corrupt {
            table: "states",
            detail: e.to_string(),
        })??;
        let fenced_any = !fenced.is_empty();
        self.fences_stored(fenced);
        for state in batch {
            // Watches hear of it from the store of the replica they are on, once applied there.
            self.metrics.states_issued.inc();
            info!(cluster = %state.cluster_id, version = state.version, "issued ClusterState");
        }
        Ok(fenced_any)
    }
}

/// One render of a source's commit, run away from the controller task.
struct RenderJob {
    store: HubStore,
    dir: PathBuf,
    source: String,
    limits: flotilla_common::limits::Limits,
    tools: Arc<Tools>,
    slots: Arc<RenderSlots>,
    memo: RenderMemo,
    commit: String,
    /// Older commits to render too, for rollouts that still give them to some clusters.
    extra: Vec<String>,
    /// Stops starting renders once the hub shuts down.
    stop: CancellationToken,
    chart_repos: Arc<Vec<ChartRepoConfig>>,
    chart_cache: PathBuf,
}

type RenderResult = Result<(RenderedSource, Vec<String>), String>;

/// Renders of older commits a job made, by commit.
type HeldRenders = Vec<(String, Result<RenderedSource, String>)>;

impl RenderJob {
    /// Reads the tree at the commit and renders every app for every cluster; gives the memo back.
    async fn run(self) -> (RenderResult, HeldRenders, RenderMemo) {
        let RenderJob {
            store,
            dir,
            source,
            limits,
            tools,
            slots,
            mut memo,
            commit,
            extra,
            stop,
            chart_repos,
            chart_cache,
        } = self;
        let outcome = tokio::task::spawn_blocking(move || {
            let clusters = store.clusters().map_err(|e| e.to_string());
            let mut render = |commit: &str| -> RenderResult {
                let clusters = clusters.as_ref().map_err(Clone::clone)?;
                let tree = read_tree(&dir, commit, &limits).map_err(|e| e.to_string())?;
                let manifest = load_manifest(&tree, &limits).map_err(|e| e.to_string())?;
                let charts = resolve_charts(&manifest.apps, &chart_repos, &chart_cache, &limits)?;
                let env = RenderEnv {
                    limits: &limits,
                    tools: &tools,
                    charts: &charts,
                };
                let (rendered, errors, counts) = render_commit(
                    &tree,
                    &manifest.apps,
                    clusters,
                    &source,
                    &env,
                    &mut memo,
                    &slots,
                    &stop,
                );
                info!(source = %source, commit = %commit, assigned = counts.assigned, distinct = counts.distinct, ran = counts.ran, "rendered");
                Ok((rendered, errors))
            };
            let result = render(&commit);
            let held: HeldRenders = extra
                .iter()
                .map(|c| (c.clone(), render(c).map(|(rendered, _)| rendered)))
                .collect();
            memo.keep_used();
            (result, held, memo)
        })
        .await;
        match outcome {
            Ok(done) => done,
            Err(e) => (
                Err(format!("render task failed: {e}")),
                Vec::new(),
                RenderMemo::default(),
            ),
        }
    }
}

enum JobKind {
    Poll { fetch: Result<String, String> },
    Rerender,
}

struct JobDone {
    source: usize,
    kind: JobKind,
    render: Option<RenderResult>,
    held: HeldRenders,
    commit: String,
    memo: RenderMemo,
}

/// Resolves every chart the apps take from chart repositories to a verified archive in the cache
/// (blocking: index and archive downloads). Any failure fails the whole render, so the previous release
/// stays in force.
pub(crate) fn resolve_charts(
    apps: &[AppSpec],
    repos: &[ChartRepoConfig],
    cache_dir: &std::path::Path,
    limits: &flotilla_common::limits::Limits,
) -> Result<BTreeMap<ChartKey, FetchedChart>, String> {
    let mut charts = BTreeMap::new();
    let mut cache = None;
    for app in apps {
        let Some(chart) = app.repo_chart() else {
            continue;
        };
        let key: ChartKey = (
            chart.repo.to_string(),
            chart.chart.to_string(),
            chart.version.to_string(),
        );
        if charts.contains_key(&key) {
            continue;
        }
        let url = chart.repo.trim_end_matches('/');
        let Some(repo) = repos.iter().find(|r| r.url == url) else {
            let listed: Vec<&str> = repos.iter().map(|r| r.url.as_str()).collect();
            return Err(format!(
                "app {} (from {}): chart repository {url} is not one of the hub's chartRepositories ({}); an operator must list it in hub.yaml",
                app.name,
                app.origin,
                if listed.is_empty() {
                    "none are listed".to_string()
                } else {
                    listed.join(", ")
                }
            ));
        };
        let (token, ca_pem) =
            read_credentials(repo.token_file.as_deref(), repo.ca_file.as_deref())?;
        let access = ChartRepoAccess {
            ca_pem,
            token,
            timeout: repo.timeout,
            max_index_bytes: repo.max_index_bytes,
            max_chart_bytes: repo.max_chart_bytes,
        };
        if cache.is_none() {
            cache = Some(ChartCache::open(cache_dir, limits).map_err(|e| e.to_string())?);
        }
        let resolved = cache
            .as_ref()
            .expect("opened above")
            .resolve(
                &ChartRequest {
                    repo_url: url,
                    chart: chart.chart,
                    version: chart.version,
                },
                &access,
            )
            .map_err(|e| format!("app {} (from {}): {e}", app.name, app.origin))?;
        charts.insert(
            key,
            FetchedChart {
                version: resolved.version,
                digest: resolved.digest,
                archive: resolved.archive,
            },
        );
    }
    Ok(charts)
}

/// Reads a token file (trimmed) and a CA bundle, each when configured; read at every use so rotated
/// files need no restart. Blocking.
pub(crate) fn read_credentials(
    token_file: Option<&std::path::Path>,
    ca_file: Option<&std::path::Path>,
) -> Result<(Option<String>, Option<Vec<u8>>), String> {
    let token = match token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let ca_pem = match ca_file {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?,
        ),
        None => None,
    };
    Ok((token, ca_pem))
}

/// Fetches `cfg`'s branch into its mirror; returns the commit. Blocking.
fn fetch_source(
    cfg: &SourceConfig,
    dir: &std::path::Path,
    timeout: Duration,
) -> Result<String, String> {
    let (token, ca_pem) = read_credentials(cfg.token_file.as_deref(), cfg.ca_file.as_deref())?;
    let auth = FetchAuth {
        token: token.as_deref(),
        ca_pem: ca_pem.as_deref(),
    };
    // The mirror's own time box interrupts gix, so this task always ends and the next poll never
    // overlaps it; no tokio timeout that would leave it running.
    let mirror = GitMirror::open_or_init(dir, &cfg.url)
        .map_err(|e| e.to_string())?
        .with_timeout(timeout)
        .with_max_pack_bytes(cfg.max_pack_bytes);
    mirror.fetch(&cfg.branch, auth).map_err(|e| e.to_string())
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// Renders every app for every cluster: each app's targets are planned once, clusters that agree on a
/// render's inputs share it, and only renders missing from `memo` run, as many at a time as `slots`
/// allows across every source's render. No IO
/// except the external renderers' runs (see `render::external`).
#[allow(clippy::too_many_arguments)]
pub fn render_for_clusters(
    tree: &RepoTree,
    apps: &[AppSpec],
    clusters: &[ClusterRecord],
    source: &str,
    env: &RenderEnv<'_>,
    memo: &mut RenderMemo,
    slots: &RenderSlots,
    stop: &CancellationToken,
) -> (RenderedSource, Vec<String>, RenderCounts) {
    let out = render_commit(tree, apps, clusters, source, env, memo, slots, stop);
    memo.keep_used();
    out
}

/// [`render_for_clusters`] without dropping what the render did not use from the memo, for a job that
/// renders several commits.
#[allow(clippy::too_many_arguments)]
fn render_commit(
    tree: &RepoTree,
    apps: &[AppSpec],
    clusters: &[ClusterRecord],
    source: &str,
    env: &RenderEnv<'_>,
    memo: &mut RenderMemo,
    slots: &RenderSlots,
    stop: &CancellationToken,
) -> (RenderedSource, Vec<String>, RenderCounts) {
    let infos: Vec<ClusterInfo> = clusters.iter().map(cluster_info).collect();
    // Per app: its plans, one per target (or one for an app without targets).
    let mut plans: Vec<Vec<Result<TargetPlan<'_>, String>>> = Vec::new();
    for app in apps {
        let targets: Vec<Option<&crate::manifest::TargetSpec>> = if app.targets.is_empty() {
            vec![None]
        } else {
            app.targets.iter().map(Some).collect()
        };
        plans.push(
            targets
                .into_iter()
                .map(|t| plan_target(tree, app, t, env).map_err(|e| e.to_string()))
                .collect(),
        );
    }
    let mut releases = BTreeMap::new();
    let mut rollout_specs = BTreeMap::new();
    for (a, app) in apps.iter().enumerate() {
        let planned: Option<Vec<&TargetPlan<'_>>> =
            plans[a].iter().map(|p| p.as_ref().ok()).collect();
        if let Some(planned) = planned {
            releases.insert(app.name.clone(), crate::render::release_id(app, &planned));
        }
        if let Some(spec) = &app.rollout {
            rollout_specs.insert(app.name.clone(), spec.clone());
        }
    }
    // Which render each (cluster, app) gets, and one cluster to render each distinct key for.
    let mut wanted: BTreeMap<Digest, (usize, usize, usize)> = BTreeMap::new();
    let mut assignment: Vec<Vec<Result<Option<Digest>, String>>> = Vec::new();
    for (c, info) in infos.iter().enumerate() {
        let mut row = Vec::with_capacity(apps.len());
        for (a, app) in apps.iter().enumerate() {
            let t = match select_target(app, info) {
                None => {
                    row.push(Ok(None));
                    continue;
                }
                Some(None) => 0,
                Some(Some(target)) => app
                    .targets
                    .iter()
                    .position(|x| std::ptr::eq(x, target))
                    .expect("the target is the app's"),
            };
            match &plans[a][t] {
                Ok(plan) => {
                    let key = plan.key(info);
                    wanted.entry(key).or_insert((a, t, c));
                    row.push(Ok(Some(key)));
                }
                Err(e) => row.push(Err(e.clone())),
            }
        }
        assignment.push(row);
    }
    let missing: Vec<(Digest, (usize, usize, usize))> = wanted
        .iter()
        .filter(|(k, _)| !memo.entries.contains_key(*k))
        .map(|(k, v)| (*k, *v))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::with_capacity(missing.len()));
    std::thread::scope(|scope| {
        for _ in 0..slots.max.clamp(1, missing.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((key, (a, t, c))) = missing.get(n) else {
                        return;
                    };
                    if stop.is_cancelled() {
                        let outcome = Err("the hub is shutting down".to_string());
                        results
                            .lock()
                            .expect("a render thread panicked")
                            .push((*key, outcome));
                        continue;
                    }
                    let plan = plans[*a][*t]
                        .as_ref()
                        .expect("only planned targets are wanted");
                    let _slot = slots.acquire();
                    let outcome = plan
                        .render(tree, &infos[*c], env)
                        .map(|rendered| {
                            for note in &rendered.notes {
                                info!(source = %source, app = %apps[*a].name, "{note}");
                            }
                            Arc::new(app_state(&apps[*a], source, &tree.commit, rendered))
                        })
                        .map_err(|e| e.to_string());
                    results
                        .lock()
                        .expect("a render thread panicked")
                        .push((*key, outcome));
                }
            });
        }
    });
    let mut fresh: HashMap<Digest, Result<AppRender, String>> = results
        .into_inner()
        .expect("a render thread panicked")
        .into_iter()
        .collect();
    let counts = RenderCounts {
        assigned: assignment
            .iter()
            .flatten()
            .filter(|r| matches!(r, Ok(Some(_))))
            .count(),
        distinct: wanted.len(),
        ran: missing.len(),
    };
    // Every render this commit uses, once: memo hits rendered at an earlier commit that did not touch
    // their inputs are the same objects and release, now at this commit.
    let mut current: HashMap<Digest, Result<AppRender, String>> = HashMap::new();
    for key in wanted.keys() {
        let render = match memo.entries.get(key) {
            Some(hit) => Ok(hit.clone()),
            None => fresh
                .remove(key)
                .unwrap_or_else(|| Err("render missing".to_string())),
        };
        let render = render.map(|r| {
            if r.0.commit == tree.commit {
                r
            } else {
                let (mut state, blobs) = (*r).clone();
                state.commit = tree.commit.clone();
                Arc::new((state, blobs))
            }
        });
        current.insert(*key, render);
    }
    let mut per_cluster = BTreeMap::new();
    let mut errors = Vec::new();
    let mut app_failed: BTreeMap<String, bool> =
        apps.iter().map(|a| (a.name.clone(), false)).collect();
    for (c, row) in assignment.into_iter().enumerate() {
        let mut out = Vec::new();
        let mut failed = false;
        for (a, slot) in row.into_iter().enumerate() {
            let outcome = match slot {
                Ok(None) => continue,
                Ok(Some(key)) => current
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| Err("render missing".to_string())),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(render) => out.push(render),
                Err(e) => {
                    failed = true;
                    app_failed.insert(apps[a].name.clone(), true);
                    errors.push(format!(
                        "app {} for cluster {}: {e}",
                        apps[a].name, infos[c].name
                    ));
                }
            }
        }
        if !failed {
            per_cluster.insert(infos[c].id.clone(), out);
        }
    }
    // Keep what this render used (memo hits and new renders); `keep_used` drops the rest.
    for (key, render) in current {
        if let Ok(render) = render {
            memo.used.insert(key);
            memo.entries.insert(key, render);
        }
    }
    (
        RenderedSource {
            commit: tree.commit.clone(),
            releases,
            rollout_specs,
            per_cluster,
            uses_chart_repos: apps.iter().any(|a| a.repo_chart().is_some()),
            app_failed,
        },
        errors,
        counts,
    )
}

/// How many renders may run at once across all sources (`render.parallelism`): a counting semaphore the
/// blocking render threads wait on.
pub struct RenderSlots {
    max: usize,
    used: std::sync::Mutex<usize>,
    freed: std::sync::Condvar,
}

impl RenderSlots {
    /// `max` renders at once (at least one).
    pub fn new(max: usize) -> Self {
        RenderSlots {
            max: max.max(1),
            used: std::sync::Mutex::new(0),
            freed: std::sync::Condvar::new(),
        }
    }

    /// Waits for a free slot; it is given back when the guard drops.
    fn acquire(&self) -> SlotGuard<'_> {
        let mut used = self.used.lock().expect("render slots poisoned");
        while *used >= self.max {
            used = self.freed.wait(used).expect("render slots poisoned");
        }
        *used += 1;
        SlotGuard(self)
    }
}

struct SlotGuard<'a>(&'a RenderSlots);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.used.lock().expect("render slots poisoned") -= 1;
        self.0.freed.notify_one();
    }
}

/// The cluster as a render sees it.
pub fn cluster_info(cluster: &ClusterRecord) -> ClusterInfo {
    ClusterInfo {
        id: cluster.id.clone(),
        name: cluster.name.clone(),
        labels: cluster.labels.clone(),
        capabilities: cluster.capabilities.clone(),
    }
}

/// Builds an app's ClusterState entry and its blobs from a render.
fn app_state(
    app: &AppSpec,
    source: &str,
    commit: &str,
    rendered: RenderedApp,
) -> (AppState, Blobs) {
    let mut objects = Vec::with_capacity(rendered.objects.len());
    let mut blobs = Vec::with_capacity(rendered.objects.len());
    for object in rendered.objects {
        let bytes = object.canonical_bytes();
        let digest = Digest::of(&bytes);
        objects.push(ObjectEntry {
            id: object.id,
            digest,
            size: bytes.len() as u64,
        });
        blobs.push((digest, Arc::new(bytes)));
    }
    let chart = match (app.repo_chart(), rendered.chart) {
        (Some(c), Some((version, digest))) => Some(ChartRelease {
            repo: c.repo.to_string(),
            name: c.chart.to_string(),
            version,
            digest,
        }),
        _ => None,
    };
    // The release is what the cluster gets, not the commit it came from: a commit that does not change
    // an app's objects keeps its release id.
    let release_id = Digest::of(
        &canonical_bytes(&(&app.name, &objects, &chart)).expect("object entries serialize"),
    )
    .to_string();
    (
        AppState {
            name: app.name.clone(),
            source: source.to_string(),
            commit: commit.to_string(),
            release_id,
            depends_on: app.depends_on.clone(),
            drift: app.drift,
            prune: app.prune,
            prune_protect: app.prune_protect.clone(),
            force: app.force,
            chart,
            origin: app.origin.clone(),
            objects,
        },
        blobs,
    )
}

#[cfg(test)]
mod tests {
    use flotilla_common::labels::Labels;
    use flotilla_common::limits::Limits;

    use super::*;
    use crate::manifest::parse_manifest;

    fn fleet(n: usize) -> Vec<ClusterRecord> {
        (0..n)
            .map(|i| {
                let tier = ["edge", "core", "lab"][i % 3];
                ClusterRecord {
                    id: format!("c-{i:016x}"),
                    name: format!("cluster-{i}"),
                    labels: Labels::from([("tier".to_string(), tier.to_string())]),
                    registered_at: 0,
                    cert_expires_at: 0,
                    renewed_at: 0,
                    capabilities: Default::default(),
                }
            })
            .collect()
    }

    const MANIFEST: &str = r#"
apps:
  - name: web
    path: web
    targets:
      - {name: edge, selector: {matchLabels: {tier: edge}}, patches: [{target: {kind: ConfigMap, name: web}, merge: {data: {tier: edge}}}]}
      - {name: core, selector: {matchLabels: {tier: core}}, patches: [{target: {kind: ConfigMap, name: web}, merge: {data: {tier: core}}}]}
      - {name: rest, selector: {}}
  - name: per-tier
    path: tiered
  - name: per-cluster
    path: named
"#;

    fn tree(commit: &str, web_data: &str) -> RepoTree {
        RepoTree::new(commit)
            .with_file("flotilla.yaml", MANIFEST)
            .with_file(
                "web/cm.yaml",
                format!("{{apiVersion: v1, kind: ConfigMap, metadata: {{name: web}}, data: {{v: \"{web_data}\"}}}}"),
            )
            .with_file(
                "tiered/cm.yaml.j2",
                "{apiVersion: v1, kind: ConfigMap, metadata: {name: tiered}, data: {tier: '{{ cluster.labels.tier }}'}}",
            )
            .with_file(
                "named/cm.yaml.j2",
                "{apiVersion: v1, kind: ConfigMap, metadata: {name: named}, data: {name: '{{ cluster.name }}'}}",
            )
    }

    #[test]
    fn clusters_share_renders_and_untouched_apps_keep_their_release() {
        let limits = Limits::default();
        let tools = Tools::default();
        let env = RenderEnv::new(&limits, &tools);
        let clusters = fleet(300);
        let mut memo = RenderMemo::default();
        let t1 = tree("1111111111111111111111111111111111111111", "one");
        let apps = parse_manifest(MANIFEST, &limits).unwrap().apps;
        let (first, errors, counts) = render_for_clusters(
            &t1,
            &apps,
            &clusters,
            "src",
            &env,
            &mut memo,
            &RenderSlots::new(2),
            &CancellationToken::new(),
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(first.clusters(), 300);
        // web: 3 targets; per-tier: 3 tiers; per-cluster: 300 names.
        assert_eq!(
            counts,
            RenderCounts {
                assigned: 900,
                distinct: 306,
                ran: 306
            }
        );
        let edge = first.apps_of(&clusters[0].id).unwrap();
        let web = edge.iter().find(|a| a.name == "web").unwrap();

        // The same commit again: everything from the memo.
        let (_, _, again) = render_for_clusters(
            &t1,
            &apps,
            &clusters,
            "src",
            &env,
            &mut memo,
            &RenderSlots::new(2),
            &CancellationToken::new(),
        );
        assert_eq!(again.ran, 0);

        // A commit that changes only `web`: only its three renders run; the other apps keep their objects
        // and release id, now at the new commit.
        let t2 = tree("2222222222222222222222222222222222222222", "two");
        let (second, errors, counts) = render_for_clusters(
            &t2,
            &apps,
            &clusters,
            "src",
            &env,
            &mut memo,
            &RenderSlots::new(2),
            &CancellationToken::new(),
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(counts.ran, 3);
        let edge2 = second.apps_of(&clusters[0].id).unwrap();
        let web2 = edge2.iter().find(|a| a.name == "web").unwrap();
        assert_ne!(web.release_id, web2.release_id);
        assert_eq!(web2.commit, t2.commit);
        for name in ["per-tier", "per-cluster"] {
            let before = edge.iter().find(|a| a.name == name).unwrap();
            let after = edge2.iter().find(|a| a.name == name).unwrap();
            assert_eq!(before.release_id, after.release_id, "{name}");
            assert_eq!(before.objects, after.objects, "{name}");
            assert_eq!(after.commit, t2.commit);
        }
        // Only what the latest render used is kept.
        assert_eq!(memo.len(), 306);
    }

    #[test]
    fn a_failed_render_is_reported_per_cluster_and_not_memoized() {
        let limits = Limits::default();
        let tools = Tools::default();
        let env = RenderEnv::new(&limits, &tools);
        let clusters = fleet(3);
        let manifest = "apps: [{name: bad, path: bad}]";
        let apps = parse_manifest(manifest, &limits).unwrap().apps;
        let t = RepoTree::new("3333333333333333333333333333333333333333")
            .with_file("flotilla.yaml", manifest)
            .with_file("bad/x.yaml.j2", "{{ nope.nope }}");
        let mut memo = RenderMemo::default();
        let (rendered, errors, counts) = render_for_clusters(
            &t,
            &apps,
            &clusters,
            "src",
            &env,
            &mut memo,
            &RenderSlots::new(2),
            &CancellationToken::new(),
        );
        assert_eq!(rendered.clusters(), 0);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].contains("app bad for cluster cluster-0"),
            "{}",
            errors[0]
        );
        assert_eq!(counts.ran, 1);
        assert!(memo.is_empty());
    }

    #[test]
    fn render_slots_bound_renders_across_threads() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let slots = RenderSlots::new(2);
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..6 {
                scope.spawn(|| {
                    for _ in 0..20 {
                        let _slot = slots.acquire();
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::yield_now();
                        running.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });
        let most = most.load(Ordering::SeqCst);
        assert!((1..=2).contains(&most), "{most} renders ran at once");
    }
}
