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
use flotilla_common::cluster_state::{AppState, ClusterState, ObjectEntry, StateBody, StateHeader};
use flotilla_common::digest::Digest;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{HubConfig, SourceConfig};
use crate::manifest::{AppSpec, load_manifest};
use crate::render::{ClusterInfo, RenderedApp, RepoTree, render_app};
use crate::source::{FetchAuth, GitMirror, read_tree};
use crate::store::{ClusterRecord, HubStore, NewState, SourceRecord, StoreError};

/// A new ClusterState version is ready for a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// Cluster.
    pub cluster_id: String,
    /// Version.
    pub version: u64,
    /// Header digest.
    pub digest: Digest,
}

/// Object bytes by digest, shared between clusters that render the same object.
type Blobs = Vec<(Digest, Arc<Vec<u8>>)>;

/// One source's render of one commit, for every cluster that rendered.
struct RenderedSource {
    commit: String,
    /// Per cluster: the apps it gets from this source, with their object bytes.
    per_cluster: BTreeMap<String, Vec<(AppState, Blobs)>>,
}

struct SourceRuntime {
    config: SourceConfig,
    record: SourceRecord,
    next_poll: Instant,
    rendered: Option<Arc<RenderedSource>>,
}

/// Handle to wake the controller (e.g. after a cluster registered).
#[derive(Clone)]
pub struct ControllerHandle {
    wake: mpsc::Sender<()>,
    announcements: broadcast::Sender<Announcement>,
}

impl ControllerHandle {
    /// Asks the controller to re-evaluate clusters now.
    pub fn clusters_changed(&self) {
        // A full channel already holds a pending wake-up, which is all we need.
        let _ = self.wake.try_send(());
    }

    /// Subscribes to new-version announcements.
    pub fn subscribe(&self) -> broadcast::Receiver<Announcement> {
        self.announcements.subscribe()
    }
}

/// The controller task's state.
pub struct Controller {
    store: HubStore,
    signing: Arc<SigningKey>,
    epoch: u64,
    state_ttl: Duration,
    fetch_timeout: Duration,
    limits: flotilla_common::limits::Limits,
    mirrors_dir: PathBuf,
    sources: Vec<SourceRuntime>,
    wake: mpsc::Receiver<()>,
    announcements: broadcast::Sender<Announcement>,
    clusters_dirty: bool,
}

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
        let (wake_tx, wake) = mpsc::channel(1);
        let (announcements, _) = broadcast::channel(1024);
        let mut sources = Vec::new();
        for s in &config.sources {
            sources.push(SourceRuntime {
                record: store.source(&s.name)?.unwrap_or_default(),
                config: s.clone(),
                next_poll: Instant::now(),
                rendered: None,
            });
        }
        let handle = ControllerHandle {
            wake: wake_tx,
            announcements: announcements.clone(),
        };
        Ok((
            Controller {
                store,
                signing,
                epoch,
                state_ttl: config.state_ttl,
                fetch_timeout: config.fetch_timeout,
                limits: config.limits.clone(),
                mirrors_dir,
                sources,
                wake,
                announcements,
                clusters_dirty: true,
            },
            handle,
        ))
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let now = Instant::now();
            for i in 0..self.sources.len() {
                if self.sources[i].next_poll <= now {
                    self.poll_source(i).await;
                    self.sources[i].next_poll = Instant::now() + self.sources[i].config.interval;
                }
            }
            if self.clusters_dirty {
                self.clusters_dirty = false;
                for i in 0..self.sources.len() {
                    self.rerender_in_force(i).await;
                }
            }
            if let Err(e) = self.issue_states().await {
                warn!(error = %e, "issuing ClusterStates failed; will retry");
            }
            let next = self
                .sources
                .iter()
                .map(|s| s.next_poll)
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
            // Re-check expiry at least hourly even without sources.
            let next = next.min(Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(next) => {}
                Some(()) = self.wake.recv() => { self.clusters_dirty = true; }
            }
        }
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

    /// Fetches one source; renders a new commit; records the outcome.
    async fn poll_source(&mut self, i: usize) {
        let cfg = self.sources[i].config.clone();
        let dir = self.mirrors_dir.join(&cfg.name);
        let timeout = self.fetch_timeout;
        let fetch = tokio::task::spawn_blocking(move || -> Result<String, String> {
            let token = match &cfg.token_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?
                        .trim()
                        .to_string(),
                ),
                None => None,
            };
            let ca_pem = match &cfg.ca_file {
                Some(path) => Some(
                    std::fs::read(path)
                        .map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?,
                ),
                None => None,
            };
            let auth = FetchAuth {
                token: token.as_deref(),
                ca_pem: ca_pem.as_deref(),
            };
            // The mirror's own time box interrupts gix, so this task always ends and the next poll never
            // overlaps it; no tokio timeout that would leave it running.
            let mirror = GitMirror::open_or_init(&dir, &cfg.url)
                .map_err(|e| e.to_string())?
                .with_timeout(timeout)
                .with_max_pack_bytes(cfg.max_pack_bytes);
            mirror.fetch(&cfg.branch, auth).map_err(|e| e.to_string())
        });
        let outcome = match fetch.await {
            Ok(result) => result,
            Err(join) => Err(format!("fetch task failed: {join}")),
        };
        self.sources[i].record.last_fetch = unix_now();
        match outcome {
            Ok(commit) => {
                let src = &mut self.sources[i];
                src.record.fetched_commit = commit.clone();
                let in_force = src.rendered.as_ref().map(|r| r.commit.clone());
                if in_force.as_deref() != Some(commit.as_str()) {
                    self.render_new_commit(i, commit).await;
                }
            }
            Err(e) => {
                warn!(source = %self.sources[i].config.name, url = %crate::source::RedactedUrl(&self.sources[i].config.url), error = %e, "fetch failed; previous release stays in force");
                self.sources[i].record.error = format!("fetch failed: {e}");
            }
        }
        self.save_source(i).await;
    }

    /// Renders `commit` for all clusters; it goes into force only if every render succeeded.
    async fn render_new_commit(&mut self, i: usize, commit: String) {
        let name = self.sources[i].config.name.clone();
        match self.render(i, commit.clone()).await {
            Ok((rendered, errors)) if errors.is_empty() => {
                info!(source = %name, commit = %commit, clusters = rendered.per_cluster.len(), "rendered new commit");
                let src = &mut self.sources[i];
                src.rendered = Some(Arc::new(rendered));
                src.record.rendered_commit = commit;
                src.record.error.clear();
            }
            Ok((_, errors)) => {
                let msg = format!("commit {}: {}", short(&commit), errors.join("; "));
                warn!(source = %name, error = %msg, "render failed; previous release stays in force");
                self.sources[i].record.error = msg;
            }
            Err(msg) => {
                let msg = format!("commit {}: {msg}", short(&commit));
                warn!(source = %name, error = %msg, "render failed; previous release stays in force");
                self.sources[i].record.error = msg;
            }
        }
    }

    /// Renders the commit in force again, for clusters that changed; clusters
    /// whose render fails keep what they had.
    async fn rerender_in_force(&mut self, i: usize) {
        let commit = self.sources[i].record.rendered_commit.clone();
        if commit.is_empty() {
            return;
        }
        let previous = self.sources[i].rendered.clone();
        match self.render(i, commit.clone()).await {
            Ok((mut rendered, errors)) => {
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
            Err(msg) => {
                warn!(source = %self.sources[i].config.name, error = %msg, "re-render of the commit in force failed");
                self.sources[i].record.error = msg;
            }
        }
        self.save_source(i).await;
    }

    /// Reads the tree at `commit` and renders every app for every cluster.
    /// Returns the successful renders and one message per failed (cluster, app).
    async fn render(
        &self,
        i: usize,
        commit: String,
    ) -> Result<(RenderedSource, Vec<String>), String> {
        let store = self.store.clone();
        let source_name = self.sources[i].config.name.clone();
        let dir = self.mirrors_dir.join(&source_name);
        let limits = self.limits.clone();
        tokio::task::spawn_blocking(move || {
            let clusters = store.clusters().map_err(|e| e.to_string())?;
            let tree = read_tree(&dir, &commit, &limits).map_err(|e| e.to_string())?;
            let manifest = load_manifest(&tree, &limits).map_err(|e| e.to_string())?;
            Ok(render_for_clusters(
                &tree,
                &manifest.apps,
                &clusters,
                &source_name,
                &limits,
            ))
        })
        .await
        .map_err(|e| format!("render task failed: {e}"))?
    }

    /// Issues a new version for every cluster whose desired body changed or
    /// whose newest state is past half its lifetime.
    async fn issue_states(&mut self) -> Result<(), StoreError> {
        // A source that had a release in force but is not rendered in memory
        // (e.g. its re-render failed after a restart) would vanish from the
        // bodies; hold everything rather than issue a partial state.
        if self
            .sources
            .iter()
            .any(|s| !s.record.rendered_commit.is_empty() && s.rendered.is_none())
        {
            return Ok(());
        }
        let clusters = self.store.clusters()?;
        let now = unix_now();
        let ttl = self.state_ttl.as_secs() as i64;
        let mut batch = Vec::new();
        for cluster in &clusters {
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
            for src in &self.sources {
                let Some(rendered) = &src.rendered else {
                    continue;
                };
                for (app, app_blobs) in rendered.per_cluster.get(&cluster.id).into_iter().flatten()
                {
                    if apps.iter().any(|a| a.name == app.name) {
                        continue; // first source wins; duplicates are reported at render time
                    }
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
            batch.push(NewState {
                cluster_id: cluster.id.clone(),
                version,
                signed,
                blobs: needed,
            });
        }
        if batch.is_empty() {
            return Ok(());
        }
        let store = self.store.clone();
        let batch =
            tokio::task::spawn_blocking(move || store.commit_states(&batch).map(|_pruned| batch))
                .await
                .map_err(|e| StoreError::Corrupt {
                    table: "states",
                    detail: e.to_string(),
                })??;
        for state in batch {
            info!(cluster = %state.cluster_id, version = state.version, "issued ClusterState");
            let _ = self.announcements.send(Announcement {
                cluster_id: state.cluster_id,
                version: state.version,
                digest: state.signed.digest(),
            });
        }
        Ok(())
    }
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// Renders every app for every cluster (pure; no IO).
fn render_for_clusters(
    tree: &RepoTree,
    apps: &[AppSpec],
    clusters: &[ClusterRecord],
    source: &str,
    limits: &flotilla_common::limits::Limits,
) -> (RenderedSource, Vec<String>) {
    let mut per_cluster = BTreeMap::new();
    let mut errors = Vec::new();
    for cluster in clusters {
        let info = ClusterInfo {
            id: cluster.id.clone(),
            name: cluster.name.clone(),
            labels: cluster.labels.clone(),
            capabilities: cluster.capabilities.clone(),
        };
        let mut out = Vec::new();
        let mut failed = false;
        for app in apps {
            match render_app(tree, app, &info, limits) {
                Ok(Some(rendered)) => out.push(app_state(app, source, &tree.commit, rendered)),
                Ok(None) => {}
                Err(e) => {
                    failed = true;
                    errors.push(format!(
                        "app {} for cluster {}: {e}",
                        app.name, cluster.name
                    ));
                }
            }
        }
        if !failed {
            per_cluster.insert(cluster.id.clone(), out);
        }
    }
    (
        RenderedSource {
            commit: tree.commit.clone(),
            per_cluster,
        },
        errors,
    )
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
    let release_id = Digest::of(
        &canonical_bytes(&(&app.name, commit, &objects)).expect("object entries serialize"),
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
            objects,
        },
        blobs,
    )
}
