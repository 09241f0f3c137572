//! Rendering: one app of one commit, for one cluster, into the Kubernetes objects that cluster receives.
//!
//! Pure: the input is a [`RepoTree`] read from the git object database, an
//! [`AppSpec`] and the cluster's identity and labels; there is no IO and no
//! clock, so the same inputs give byte-for-byte the same objects (invariant 7).
//! Any error renders nothing at all (invariant 2), and paths that are absolute,
//! contain `..` or pass through a symlink or submodule are refused (invariant 1).

mod customize;
mod documents;
mod external;
mod helm;
mod kustomize;
mod template;
pub mod tree;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use flotilla_common::capabilities::Capabilities;
use flotilla_common::digest::Digest;
use flotilla_common::labels::Labels;
use flotilla_common::limits::Limits;
use flotilla_common::object::KubeObject;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use crate::manifest::{AppSpec, RenderMode, TargetSpec, normalize_app_path};
pub use external::{DEFAULT_TOOL_TIMEOUT, KustomizeTool, Tools};
pub use tree::{RepoTree, TreeEntry, TreePathError};

/// The cluster a render is for, as templates see it (`cluster.id`, `cluster.name`, `cluster.labels`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// Cluster id.
    pub id: String,
    /// Cluster name.
    pub name: String,
    /// Cluster labels, which select the target.
    pub labels: Labels,
    /// What the cluster's API server offers, as its agent last reported.
    pub capabilities: Capabilities,
}

/// The objects one app gives one cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedApp {
    /// App name.
    pub app: String,
    /// Name of the target that matched; empty when the app has no targets.
    pub target: String,
    /// Objects sorted by id, default namespace filled in, excludes and patches applied.
    pub objects: Vec<KubeObject>,
    /// What the render left out or wants an operator to know (Helm hooks, for one).
    pub notes: Vec<String>,
    /// For a chart from a chart repository: the version and archive digest rendered.
    pub chart: Option<(String, String)>,
}

/// Why an app could not be rendered. Messages name the repository path involved and never include object data.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The app's or target's directory is not a safe, existing directory of the tree.
    #[error("path {path:?}: {problem}")]
    Path {
        /// The path as written in the manifest.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A symlink inside the app's directory.
    #[error(
        "{path}: is a symlink; symlinks are never followed (remove it or list it in the app's `ignore`)"
    )]
    Symlink {
        /// Repository path of the symlink.
        path: String,
    },
    /// A submodule inside the app's directory.
    #[error(
        "{path}: is a submodule; submodules cannot be rendered (remove it or list it in the app's `ignore`)"
    )]
    Submodule {
        /// Repository path of the submodule.
        path: String,
    },
    /// A manifest or template file over the per-file limit.
    #[error("{path}: {size} bytes is over the {limit} byte limit for one file")]
    FileTooLarge {
        /// Repository path.
        path: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The directory has nothing to render.
    #[error(
        "{path}: no manifests (*.yaml, *.yml, *.json) or templates (*.yaml.j2, *.yaml.tmpl) to render"
    )]
    NoManifests {
        /// Repository path of the directory (`.` for the root).
        path: String,
    },
    /// A file that is not valid UTF-8, YAML or JSON.
    #[error("{path}: {message}")]
    Parse {
        /// Repository path of the file (for a template, the template).
        path: String,
        /// The parser's message, with line and column where known.
        message: String,
    },
    /// A template that fails to compile or render.
    #[error("{path}: template error: {message}")]
    Template {
        /// Repository path of the template.
        path: String,
        /// minijinja's message, with the template name and line.
        message: String,
    },
    /// A document that is not a valid Kubernetes object.
    #[error("{origin}: {problem}")]
    Object {
        /// File and document (and List item) it came from.
        origin: String,
        /// What is wrong.
        problem: String,
    },
    /// Two documents define the same object.
    #[error("{id} is defined twice: {first} and {second}")]
    Duplicate {
        /// The object.
        id: String,
        /// Where it was first defined.
        first: String,
        /// Where it was defined again.
        second: String,
    },
    /// A patch whose target matches no object.
    #[error("target {target:?} patch {index}: no object matches {selector}")]
    PatchNoMatch {
        /// Target name.
        target: String,
        /// Patch position in the target (from 0).
        index: usize,
        /// The patch's target, as kind/name.
        selector: String,
    },
    /// A JSON patch that cannot be applied.
    #[error("target {target:?} patch {index} on {object} ({origin}): {problem}")]
    Patch {
        /// Target name.
        target: String,
        /// Patch position in the target (from 0).
        index: usize,
        /// The object being patched.
        object: String,
        /// Where the object came from.
        origin: String,
        /// What failed.
        problem: String,
    },
    /// An object over the per-object limit.
    #[error("{origin}: object {id} is {size} bytes, over the {limit} byte limit")]
    ObjectTooLarge {
        /// Where it came from.
        origin: String,
        /// The object.
        id: String,
        /// Canonical JSON size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// More objects than one ClusterState may hold.
    #[error("app {app:?} renders {count} objects, over the limit of {limit}")]
    TooManyObjects {
        /// App name.
        app: String,
        /// Objects rendered.
        count: usize,
        /// The limit.
        limit: u64,
    },
    /// A kustomization that reaches the network, runs plugins, leaves the repository or misses a file.
    #[error("{file}: {problem}")]
    Kustomization {
        /// Repository path of the kustomization (or other) file.
        file: String,
        /// What is wrong.
        problem: String,
    },
    /// An external renderer is not installed.
    #[error("{tool} is not available: {hint}")]
    ToolMissing {
        /// `helm` or `kustomize`.
        tool: &'static str,
        /// What to install or set.
        hint: &'static str,
    },
    /// An external renderer failed; the message is the tool's own (Helm's names the template file and line).
    #[error("{tool} failed on {path}: {message}")]
    Tool {
        /// `helm` or `kustomize`.
        tool: &'static str,
        /// What was rendered.
        path: String,
        /// The tool's message.
        message: String,
    },
    /// An external renderer ran past its time box and was killed.
    #[error("{tool} on {path} did not finish within {} and was stopped", humantime::format_duration(*timeout))]
    ToolTimeout {
        /// `helm` or `kustomize`.
        tool: &'static str,
        /// What was rendered.
        path: String,
        /// The time box.
        timeout: std::time::Duration,
    },
    /// An external renderer printed more than a ClusterState may hold.
    #[error("{tool} on {path} printed more than {limit} bytes, the limit for one ClusterState")]
    ToolOutputTooLarge {
        /// `helm` or `kustomize`.
        tool: &'static str,
        /// What was rendered.
        path: String,
        /// The limit.
        limit: u64,
    },
    /// The render's private working directory could not be prepared.
    #[error("{what}: {message}")]
    Io {
        /// What was being done.
        what: String,
        /// The system's message.
        message: String,
    },
    /// A chart from a chart repository that the caller did not fetch for this render.
    #[error("app {app:?}: chart {chart} {version:?} from {repo} has not been fetched")]
    ChartNotFetched {
        /// App name.
        app: String,
        /// Repository URL.
        repo: String,
        /// Chart name.
        chart: String,
        /// Version or range.
        version: String,
    },
}

/// One parsed document and where it came from.
#[derive(Debug, Clone)]
pub(crate) struct SourcedDoc {
    /// `path (document n)`, with `item i` for List items.
    pub origin: String,
    /// The document.
    pub value: Value,
}

/// The first target whose selector matches `cluster`: `Some(None)` when the app has no targets (it targets
/// every cluster), `None` when targets exist and none matches.
pub fn select_target<'a>(
    app: &'a AppSpec,
    cluster: &ClusterInfo,
) -> Option<Option<&'a TargetSpec>> {
    if app.targets.is_empty() {
        return Some(None);
    }
    app.targets
        .iter()
        .find(|t| t.selector.matches(&cluster.labels))
        .map(Some)
}

/// A chart archive from a chart repository, fetched and verified by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedChart {
    /// The version the request resolved to.
    pub version: String,
    /// The archive's digest as the index gives it (`sha256:…`), verified.
    pub digest: String,
    /// Where the verified archive is.
    pub archive: PathBuf,
}

/// `(repo, chart, version as written)`: how a `helm:` app names a chart from a chart repository.
pub type ChartKey = (String, String, String);

static NO_CHARTS: BTreeMap<ChartKey, FetchedChart> = BTreeMap::new();

/// What a render may use besides the tree: limits, the external tools, and charts fetched for it.
#[derive(Debug, Clone, Copy)]
pub struct RenderEnv<'a> {
    /// Size and count limits.
    pub limits: &'a Limits,
    /// `helm` and kustomize, and their time box.
    pub tools: &'a Tools,
    /// Charts from chart repositories, by how apps name them.
    pub charts: &'a BTreeMap<ChartKey, FetchedChart>,
}

impl<'a> RenderEnv<'a> {
    /// An environment without fetched charts.
    pub fn new(limits: &'a Limits, tools: &'a Tools) -> Self {
        RenderEnv {
            limits,
            tools,
            charts: &NO_CHARTS,
        }
    }
}

/// Which parts of the cluster a render reads, and so which clusters can share it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reads {
    /// None: every cluster the target selects gets the same objects.
    Nothing,
    /// The capabilities (Helm charts that mention `.Capabilities`).
    Capabilities,
    /// These `cluster…` paths of the template context.
    Template(BTreeSet<String>),
}

/// One app's render for one target, prepared from the tree before any cluster is considered: the mode, the
/// files it reads and the digest of all its inputs. [`TargetPlan::key`] then says, per cluster, which
/// render the cluster gets, so clusters that agree on what the render reads share one.
pub struct TargetPlan<'a> {
    app: &'a AppSpec,
    target: Option<&'a TargetSpec>,
    dir: String,
    mode: RenderMode,
    files: Option<documents::AppFiles<'a>>,
    kustomize: Option<kustomize::Graph>,
    chart: Option<&'a FetchedChart>,
    inputs: Digest,
    reads: Reads,
}

/// Prepares `app`'s render for `target` (`None` when the app has no targets).
pub fn plan_target<'a>(
    tree: &'a RepoTree,
    app: &'a AppSpec,
    target: Option<&'a TargetSpec>,
    env: &RenderEnv<'a>,
) -> Result<TargetPlan<'a>, RenderError> {
    let limits = env.limits;
    let mut hash = Sha256::new();
    let mut add = |label: &str, bytes: &[u8]| {
        hash.update((label.len() as u64).to_le_bytes());
        hash.update(label.as_bytes());
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    // The app's and target's settings: this digest lives only in the hub's memory, so `Debug` is an exact
    // enough encoding of them.
    // `rollout:` says how a release moves across the fleet, not what it renders.
    let settings = AppSpec {
        rollout: None,
        ..app.clone()
    };
    add("app", format!("{settings:?}").as_bytes());
    add("target", format!("{target:?}").as_bytes());
    let mut plan = TargetPlan {
        app,
        target,
        dir: String::new(),
        mode: RenderMode::Helm,
        files: None,
        kustomize: None,
        chart: None,
        inputs: Digest([0; 32]),
        reads: Reads::Nothing,
    };
    if let Some(chart) = app.repo_chart() {
        let key = (
            chart.repo.to_string(),
            chart.chart.to_string(),
            chart.version.to_string(),
        );
        let fetched = env
            .charts
            .get(&key)
            .ok_or_else(|| RenderError::ChartNotFetched {
                app: app.name.clone(),
                repo: chart.repo.to_string(),
                chart: chart.chart.to_string(),
                version: chart.version.to_string(),
            })?;
        add("chart", fetched.digest.as_bytes());
        plan.chart = Some(fetched);
        plan.reads = Reads::Capabilities;
    } else {
        let written = target.and_then(|t| t.path.as_deref()).unwrap_or(&app.path);
        plan.dir = resolve_dir(tree, written)?;
        let files = documents::AppFiles::collect(tree, &plan.dir, &app.ignore, limits)?;
        plan.mode = match app.render {
            RenderMode::Auto => files.detect_mode(),
            mode => mode,
        };
        match plan.mode {
            RenderMode::Kustomize => {
                let graph = kustomize::graph(tree, &plan.dir, &app.kustomize, limits)?;
                for path in &graph.files {
                    if let Some(TreeEntry::File(bytes)) = tree.get(path) {
                        add(path, bytes);
                    }
                }
                plan.kustomize = Some(graph);
            }
            RenderMode::Helm => {
                let mut mentions_capabilities = false;
                for (rel, entry) in tree.entries_under(&plan.dir) {
                    if let TreeEntry::File(bytes) = entry {
                        add(rel, bytes);
                        // `.Capabilities` in templates, and a `kubeVersion:` constraint in a Chart.yaml
                        // that Helm checks against `--kube-version`.
                        mentions_capabilities |=
                            contains(bytes, b"Capabilities") || contains(bytes, b"kubeVersion");
                    }
                }
                if mentions_capabilities {
                    plan.reads = Reads::Capabilities;
                }
            }
            RenderMode::Auto | RenderMode::Raw | RenderMode::Template => {
                for (path, bytes) in &files.manifests {
                    add(path, bytes);
                }
                if plan.mode == RenderMode::Template {
                    for (_, path, bytes) in &files.templates {
                        add(path, bytes);
                    }
                    plan.reads = Reads::Template(template::cluster_reads(&files)?);
                }
                plan.files = Some(files);
            }
        }
    }
    if plan.mode == RenderMode::Helm {
        for file in values_files(app, target) {
            match tree.get(&file) {
                Some(TreeEntry::File(bytes)) => add(&file, bytes),
                _ => add(&file, b"(missing)"),
            }
        }
    }
    add("mode", format!("{:?}", plan.mode).as_bytes());
    plan.inputs = Digest(hash.finalize().into());
    Ok(plan)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The app's and the target's values files, as repository paths, in layering order.
fn values_files(app: &AppSpec, target: Option<&TargetSpec>) -> Vec<String> {
    app.values_files
        .iter()
        .chain(target.into_iter().flat_map(|t| t.values_files.iter()))
        .filter_map(|f| normalize_app_path(f).ok())
        .collect()
}

/// The fleet-wide Release id of an app: a digest of everything its targets render from (files, settings,
/// charts), so a commit that leaves the app's inputs alone keeps its release, and the id does not depend on
/// which clusters the fleet has. Each cluster's own render of it has its own id ([`AppState::release_id`]).
///
/// [`AppState::release_id`]: flotilla_common::cluster_state::AppState::release_id
pub fn release_id(app: &AppSpec, plans: &[&TargetPlan<'_>]) -> String {
    let mut hash = Sha256::new();
    hash.update((app.name.len() as u64).to_le_bytes());
    hash.update(app.name.as_bytes());
    for plan in plans {
        hash.update(plan.inputs.0);
    }
    Digest(hash.finalize().into()).to_string()
}

impl<'a> TargetPlan<'a> {
    /// The digest of everything the render reads: files, settings and chart.
    pub fn inputs(&self) -> Digest {
        self.inputs
    }

    /// How the app renders.
    pub fn mode(&self) -> RenderMode {
        self.mode
    }

    /// The render `cluster` gets: equal keys, equal objects.
    pub fn key(&self, cluster: &ClusterInfo) -> Digest {
        let mut hash = Sha256::new();
        hash.update(self.inputs.0);
        match &self.reads {
            Reads::Nothing => {}
            Reads::Capabilities => {
                hash.update(format!("{:?}", cluster.capabilities).as_bytes());
            }
            Reads::Template(paths) => {
                let context = cluster_context(cluster);
                for path in paths {
                    let mut at = &context;
                    for part in path.split('.').skip(1) {
                        at = at.get(part).unwrap_or(&Value::Null);
                    }
                    hash.update((path.len() as u64).to_le_bytes());
                    hash.update(path.as_bytes());
                    let value = serde_json::to_vec(at).expect("JSON values serialize");
                    hash.update((value.len() as u64).to_le_bytes());
                    hash.update(value);
                }
            }
        }
        Digest(hash.finalize().into())
    }

    /// Renders for `cluster`; every cluster with the same [`key`](Self::key) gets the same result.
    pub fn render(
        &self,
        tree: &RepoTree,
        cluster: &ClusterInfo,
        env: &RenderEnv<'_>,
    ) -> Result<RenderedApp, RenderError> {
        let app = self.app;
        let limits = env.limits;
        let namespace = app.namespace.as_deref().unwrap_or("default");
        let mut docs = Vec::new();
        let mut notes = Vec::new();
        match self.mode {
            RenderMode::Kustomize => {
                let graph = self
                    .kustomize
                    .as_ref()
                    .expect("kustomize apps have a graph");
                docs = run_kustomize(tree, &self.dir, graph, env)?;
            }
            RenderMode::Helm => {
                let mut layers = Vec::new();
                let app_files: Vec<String> = values_files(app, None);
                let target_files: Vec<String> = self
                    .target
                    .map(|t| {
                        t.values_files
                            .iter()
                            .filter_map(|f| normalize_app_path(f).ok())
                            .collect()
                    })
                    .unwrap_or_default();
                layers.extend(app_files.iter().map(|f| helm::ValuesLayer::File(f)));
                layers.push(helm::ValuesLayer::Inline(&app.values));
                layers.extend(target_files.iter().map(|f| helm::ValuesLayer::File(f)));
                if let Some(t) = self.target {
                    layers.push(helm::ValuesLayer::Inline(&t.values));
                }
                let subject = match (self.chart, app.repo_chart()) {
                    (Some(fetched), Some(c)) => {
                        format!("chart {} {} from {}", c.chart, fetched.version, c.repo)
                    }
                    _ => format!("chart {}", display_dir(&self.dir)),
                };
                if self.chart.is_none()
                    && let Some(kube) = &cluster.capabilities.kube_version
                {
                    helm::check_kube_version(tree, &self.dir, kube, &subject, limits)?;
                }
                let run = helm::HelmRun {
                    release: &app.name,
                    namespace,
                    chart_dir: self.chart.is_none().then_some(self.dir.as_str()),
                    archive: self.chart.map(|c| c.archive.as_path()),
                    values: layers,
                    capabilities: &cluster.capabilities,
                    subject: &subject,
                };
                let (rendered, hook_notes) = helm::render(tree, &run, env.tools, limits)?;
                docs = rendered;
                notes = hook_notes;
            }
            RenderMode::Auto | RenderMode::Raw | RenderMode::Template => {
                let files = self
                    .files
                    .as_ref()
                    .expect("builtin renders have their files");
                if self.mode == RenderMode::Template {
                    if files.manifests.is_empty() && files.outputs.is_empty() {
                        return Err(RenderError::NoManifests {
                            path: display_dir(&self.dir),
                        });
                    }
                    let context = template_context(app, self.target, cluster);
                    for (path, text) in template::render_all(files, &context, limits)? {
                        // Line numbers in YAML errors refer to the output, not the template.
                        docs.extend(documents::parse_yaml(
                            &format!("{path} (rendered)"),
                            &text,
                            limits,
                        )?);
                    }
                } else if files.manifests.is_empty() {
                    return Err(RenderError::NoManifests {
                        path: display_dir(&self.dir),
                    });
                }
                for (path, bytes) in &files.manifests {
                    docs.extend(documents::parse_file(path, bytes, limits)?);
                }
            }
        }
        let objects = customize::finish(docs, self.target, namespace, limits)?;
        if objects.len() as u64 > limits.max_objects {
            return Err(RenderError::TooManyObjects {
                app: app.name.clone(),
                count: objects.len(),
                limit: limits.max_objects,
            });
        }
        Ok(RenderedApp {
            app: app.name.clone(),
            target: self.target.map(|t| t.name.clone()).unwrap_or_default(),
            objects,
            notes,
            chart: self.chart.map(|c| (c.version.clone(), c.digest.clone())),
        })
    }
}

/// Exports what the kustomization graph reads and runs kustomize on the app's directory.
fn run_kustomize(
    tree: &RepoTree,
    dir: &str,
    graph: &kustomize::Graph,
    env: &RenderEnv<'_>,
) -> Result<Vec<SourcedDoc>, RenderError> {
    let tool = env.tools.kustomize()?;
    let work = env.tools.work_dir()?;
    let root = work.path().join("repo");
    helm::export_files(tree, graph.files.iter().map(String::as_str), "", &root)?;
    let target = root.join(dir);
    let mut args = Vec::new();
    let program = match tool {
        KustomizeTool::Kustomize(path) => {
            args.push("build".to_string());
            path
        }
        KustomizeTool::Kubectl(path) => {
            args.push("kustomize".to_string());
            path
        }
    };
    args.push(target.display().to_string());
    if graph_uses_helm(tree, graph) {
        let helm = env.tools.helm()?;
        args.push("--enable-helm".into());
        args.push(format!("--helm-command={}", helm.display()));
    }
    let subject = display_dir(dir);
    let out = external::run(external::ToolRun {
        tool: "kustomize",
        subject: &subject,
        program,
        args,
        dir: work.path(),
        max_output: env.limits.max_state_bytes,
        timeout: env.tools.timeout,
    })?;
    let text = String::from_utf8(out).map_err(|e| RenderError::Tool {
        tool: "kustomize",
        path: subject.clone(),
        message: format!("printed output that is not UTF-8: {e}"),
    })?;
    documents::parse_yaml(&format!("{subject} (kustomize build)"), &text, env.limits)
}

fn graph_uses_helm(tree: &RepoTree, graph: &kustomize::Graph) -> bool {
    graph.dirs.iter().any(|dir| {
        kustomize::kustomization_file(tree, dir)
            .and_then(|f| match tree.get(&f) {
                Some(TreeEntry::File(bytes)) => Some(contains(bytes, b"helmChart")),
                _ => None,
            })
            .unwrap_or(false)
    })
}

/// Renders `app` from `tree` for `cluster`: `Ok(None)` when none of its targets selects the cluster.
pub fn render_app(
    tree: &RepoTree,
    app: &AppSpec,
    cluster: &ClusterInfo,
    env: &RenderEnv<'_>,
) -> Result<Option<RenderedApp>, RenderError> {
    let Some(target) = select_target(app, cluster) else {
        return Ok(None);
    };
    let plan = plan_target(tree, app, target, env)?;
    plan.render(tree, cluster, env).map(Some)
}

/// Invariant 1: a relative path of real directories only. Returns the normalized directory (`""` for the root).
fn resolve_dir(tree: &RepoTree, written: &str) -> Result<String, RenderError> {
    let path_err = |problem: String| RenderError::Path {
        path: written.to_string(),
        problem,
    };
    let dir = normalize_app_path(written).map_err(|m| path_err(m.to_string()))?;
    if dir.is_empty() {
        return Ok(dir);
    }
    let mut prefix = String::new();
    for component in dir.split('/') {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(component);
        match tree.get(&prefix) {
            None => {}
            Some(TreeEntry::Symlink(_)) => {
                return Err(path_err(format!(
                    "{prefix:?} is a symlink; symlinks are never followed"
                )));
            }
            Some(TreeEntry::Submodule) => {
                return Err(path_err(format!(
                    "{prefix:?} is a submodule; submodules cannot be rendered"
                )));
            }
            Some(TreeEntry::File(_) | TreeEntry::TooLarge(_)) => {
                return Err(path_err(format!("{prefix:?} is a file, not a directory")));
            }
        }
    }
    if !tree.is_dir(&dir) {
        return Err(path_err(format!(
            "no such directory in commit {}",
            tree.commit
        )));
    }
    Ok(dir)
}

fn display_dir(dir: &str) -> String {
    if dir.is_empty() {
        ".".to_string()
    } else {
        dir.to_string()
    }
}

/// `values` (app values deep-merged with target values) and `cluster` for templates.
fn template_context(app: &AppSpec, target: Option<&TargetSpec>, cluster: &ClusterInfo) -> Value {
    let mut values = Value::Object(app.values.clone());
    if let Some(t) = target {
        deep_merge(&mut values, &Value::Object(t.values.clone()));
    }
    serde_json::json!({
        "values": values,
        "cluster": cluster_context(cluster),
    })
}

/// `cluster` as templates see it.
fn cluster_context(cluster: &ClusterInfo) -> Value {
    let labels: Map<String, Value> = cluster
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let caps = &cluster.capabilities;
    serde_json::json!({
        "id": cluster.id, "name": cluster.name, "labels": labels,
        // As the agent reported them: none and an empty list when it reported nothing.
        "kubeVersion": caps.kube_version, "apiVersions": caps.api_versions,
    })
}

/// Mappings merge key by key; anything else in `over` replaces what is in `base`.
fn deep_merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (k, v) in over {
                match base.get_mut(k) {
                    Some(existing) => deep_merge(existing, v),
                    None => {
                        base.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (base, over) => *base = over.clone(),
    }
}
