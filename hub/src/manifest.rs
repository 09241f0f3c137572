//! The repository's `flotilla.yaml` files (DESIGN.md §5): which apps exist, how to render, target and roll them out.
//!
//! Parsing is pure and strict: unknown fields anywhere are errors naming the file and the field,
//! and everything that can be checked without the tree (names, paths, selectors,
//! patches, durations) is checked here so a bad manifest fails before any render.
//!
//! Every `flotilla.yaml` in a commit is a manifest. Each declares apps whose paths are relative to its own
//! directory and cannot leave it; [`load_manifest`] merges them (files in path order, apps in file order)
//! into one [`Manifest`] whose paths are repository paths, so renderers never see where an app was declared
//! except through [`AppSpec::origin`]. App names are unique across the merged set, and `dependsOn` may
//! name an app of any file.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use flotilla_common::cluster_state::DriftMode;
use flotilla_common::ids::validate_name;
use flotilla_common::labels::LabelSelector;
use flotilla_common::limits::Limits;
use flotilla_common::yaml;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::render::tree::check_relative_path;
use crate::render::{RepoTree, TreeEntry};

/// The root manifest's repository path, and the name every manifest file has, in any directory.
pub const MANIFEST_PATH: &str = "flotilla.yaml";

/// Most manifest files one Source may hold; each is parsed on every render of a commit.
pub const MAX_MANIFEST_FILES: usize = 1_000;

/// Whether the repository path `path` names a manifest (a file called `flotilla.yaml`, at any depth).
pub fn is_manifest_file(path: &str) -> bool {
    path.rsplit('/').next() == Some(MANIFEST_PATH)
}

/// A manifest that cannot be read or breaks a rule; every message but `Missing` starts with the file's path.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The commit has no `flotilla.yaml` anywhere.
    #[error(
        "{MANIFEST_PATH} not found at the repository root or in any directory (commit {commit})"
    )]
    Missing {
        /// The commit that was searched.
        commit: String,
    },
    /// The commit holds more manifest files than [`MAX_MANIFEST_FILES`].
    #[error(
        "commit {commit} has {count} {MANIFEST_PATH} files, over the limit of {limit} per source"
    )]
    TooManyFiles {
        /// The commit that was searched.
        commit: String,
        /// How many it holds.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A `flotilla.yaml` is a symlink, a submodule or too large.
    #[error("{file}: {problem}")]
    NotAFile {
        /// Repository path of the file.
        file: String,
        /// What it is instead.
        problem: String,
    },
    /// The YAML does not parse or does not fit the schema (unknown field, wrong type).
    #[error("{file}: {message}")]
    Syntax {
        /// Repository path of the file.
        file: String,
        /// The parser's message, with line and column where known.
        message: String,
    },
    /// A field holds a value that is not allowed.
    #[error("{file}: {field}: {message}")]
    Invalid {
        /// Repository path of the file.
        file: String,
        /// Where the field is, e.g. `apps[guestbook].targets[edge].path`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// A field that breaks a rule, before it is known which file it is in.
#[derive(Debug)]
struct FieldError {
    field: String,
    message: String,
}

impl FieldError {
    fn in_file(self, file: &str) -> ManifestError {
        ManifestError::Invalid {
            file: file.to_string(),
            field: self.field,
            message: self.message,
        }
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// The parsed `flotilla.yaml`, or all of a commit's merged.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The apps this Source declares: files in path order, apps in file order.
    pub apps: Vec<AppSpec>,
}

/// How an app's directory becomes Kubernetes objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RenderMode {
    /// Kustomize if `kustomization.yaml`, helm if `Chart.yaml`, template if any template file, else raw.
    #[default]
    Auto,
    /// Plain YAML/JSON manifests.
    Raw,
    /// minijinja templates (`*.yaml.j2`, `*.yaml.tmpl`) plus plain manifests.
    Template,
    /// `kustomize build`.
    Kustomize,
    /// `helm template`.
    Helm,
}

/// One app of the manifest.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AppSpec {
    /// App name, a DNS label unique across all of the Source's manifests.
    pub name: String,
    /// Directory of the app, written relative to the declaring file's directory (`.` for that directory)
    /// and a repository path once loaded by [`load_manifest`]; empty for a chart from a chart repository
    /// (`helm.repo`).
    #[serde(default)]
    pub path: String,
    /// Default namespace for namespaced objects without one (`default` when absent).
    #[serde(default)]
    pub namespace: Option<String>,
    /// How to render.
    #[serde(default)]
    pub render: RenderMode,
    /// Helm options; with `repo`, the chart comes from a chart repository instead of `path`.
    #[serde(default)]
    pub helm: Option<HelmSpec>,
    /// kustomize options.
    #[serde(default)]
    pub kustomize: KustomizeSpec,
    /// Helm values files layered after the chart's `values.yaml` and before `values`; relative like `path`.
    #[serde(default)]
    pub values_files: Vec<String>,
    /// gitignore-style patterns relative to `path` that raw and template rendering skip.
    #[serde(default)]
    pub ignore: Vec<String>,
    /// Values for templates (`{{ values.x }}`), deep-merged under each target's values.
    #[serde(default)]
    pub values: Map<String, Value>,
    /// Targets in order; the first whose selector matches a cluster wins. Empty: every cluster, unmodified.
    #[serde(default)]
    pub targets: Vec<TargetSpec>,
    /// Apps that must be applied and healthy first on each cluster.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// What the agent does about drift.
    #[serde(default)]
    pub drift: DriftMode,
    /// Whether objects that leave the app are deleted.
    #[serde(default = "default_true")]
    pub prune: bool,
    /// Kinds (`Kind` for the core group, else `group/Kind`) that prune may delete although protected by default.
    #[serde(default)]
    pub prune_protect: Vec<String>,
    /// Whether server-side apply takes over fields owned by other field managers.
    #[serde(default)]
    pub force: bool,
    /// How a new release moves across the targeted clusters; `None` is every cluster at once.
    #[serde(default)]
    pub rollout: Option<RolloutSpec>,
    /// Repository path of the `flotilla.yaml` that declares the app (e.g. `teams/payments/flotilla.yaml`),
    /// set by the loader; never read from the file.
    #[serde(skip)]
    pub origin: String,
}

/// `helm:` of an app: a chart from a chart repository, named by the repository's URL, the chart and a version.
///
/// Credentials for a chart repository (`caFile`, `tokenFile`) are the hub operator's: they are set per
/// repository in hub.yaml (`chartRepositories`), never in a Git repository, whose authors could otherwise point
/// the hub at files it holds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HelmSpec {
    /// `https://` URL of the chart repository (the directory holding `index.yaml`).
    #[serde(default)]
    pub repo: Option<String>,
    /// Chart name in the repository's index.
    #[serde(default)]
    pub chart: Option<String>,
    /// An exact version (`1.2.3`) or a semver range (`6.x`, `^1.2`, `>=1.0.0 <2.0.0`).
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    #[doc(hidden)]
    pub ca_file: Option<Value>,
    #[serde(default)]
    #[doc(hidden)]
    pub token_file: Option<Value>,
}

/// `kustomize:` of an app.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KustomizeSpec {
    /// Lets the kustomization inflate Helm charts vendored in the repository (`helmCharts:`), rendered
    /// with the hub's Helm; charts from remote repositories stay refused.
    #[serde(default)]
    pub enable_helm: bool,
}

/// A chart from a chart repository, as `helm:` names it once validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoChart<'a> {
    /// Repository URL.
    pub repo: &'a str,
    /// Chart name.
    pub chart: &'a str,
    /// Version or range.
    pub version: &'a str,
}

impl AppSpec {
    /// The chart repository chart this app renders, if `helm.repo` is set.
    pub fn repo_chart(&self) -> Option<RepoChart<'_>> {
        let helm = self.helm.as_ref()?;
        Some(RepoChart {
            repo: helm.repo.as_deref()?,
            chart: helm.chart.as_deref()?,
            version: helm.version.as_deref()?,
        })
    }
}

fn default_true() -> bool {
    true
}

/// One target of an app: which clusters, and what differs for them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetSpec {
    /// Target name, a DNS label unique in the app.
    pub name: String,
    /// Which clusters; required (`{}` matches every cluster).
    pub selector: LabelSelector,
    /// Another directory to render for these clusters, relative like the app's `path`.
    #[serde(default)]
    pub path: Option<String>,
    /// Values deep-merged over the app's values.
    #[serde(default)]
    pub values: Map<String, Value>,
    /// Helm values files layered after the app's `values`, relative like the app's `path`.
    #[serde(default)]
    pub values_files: Vec<String>,
    /// Objects these clusters must not get.
    #[serde(default)]
    pub exclude: Vec<ObjectSelector>,
    /// Patches applied in order.
    #[serde(default)]
    pub patches: Vec<PatchSpec>,
}

/// Aims at objects by kind and name; group, version and namespace narrow it when given.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectSelector {
    /// API group (`""` for the core group); any group when absent.
    #[serde(default)]
    pub group: Option<String>,
    /// API version; any version when absent.
    #[serde(default)]
    pub version: Option<String>,
    /// Kind.
    pub kind: String,
    /// metadata.name.
    pub name: String,
    /// Namespace after defaulting; any namespace when absent.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// One patch of a target.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawPatchSpec")]
pub struct PatchSpec {
    /// Which objects the patch applies to; it is an error if none matches.
    pub target: ObjectSelector,
    /// The patch itself.
    pub patch: Patch,
}

/// A patch document.
#[derive(Debug, Clone, PartialEq)]
pub enum Patch {
    /// RFC 7386 JSON merge patch.
    Merge(Value),
    /// RFC 6902 JSON patch.
    Json(json_patch::Patch),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPatchSpec {
    target: ObjectSelector,
    #[serde(default)]
    merge: Option<Value>,
    #[serde(default)]
    json: Option<json_patch::Patch>,
}

impl TryFrom<RawPatchSpec> for PatchSpec {
    type Error = String;

    fn try_from(raw: RawPatchSpec) -> Result<Self, String> {
        let patch = match (raw.merge, raw.json) {
            (Some(merge), None) => Patch::Merge(merge),
            (None, Some(json)) => Patch::Json(json),
            _ => return Err("a patch needs exactly one of `merge` or `json`".to_string()),
        };
        Ok(PatchSpec {
            target: raw.target,
            patch,
        })
    }
}

/// Staged rollout of a release across the targeted clusters. It serializes in the manifest's own format,
/// so a rollout stored by the hub keeps the settings it started with.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutSpec {
    /// Stages in order; a cluster belongs to the first stage whose selector matches it.
    pub stages: Vec<StageSpec>,
    /// Clusters that may fail before the rollout halts.
    #[serde(default)]
    pub failure_budget: u32,
    /// What happens when the budget is exceeded.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// A cluster not healthy this long after receiving the release counts as failed.
    #[serde(
        default,
        deserialize_with = "de_opt_duration",
        serialize_with = "ser_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub progress_deadline: Option<Duration>,
    /// How offline clusters are treated.
    #[serde(default)]
    pub offline: OfflinePolicy,
}

/// One rollout stage.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StageSpec {
    /// Stage name, a DNS label unique in the rollout.
    pub name: String,
    /// Which clusters belong to the stage.
    pub selector: LabelSelector,
    /// How many of the stage's clusters may be updating or unhealthy at once.
    #[serde(default)]
    pub max_unavailable: MaxUnavailable,
    /// How long the stage must stay healthy before the next one starts.
    #[serde(
        default,
        deserialize_with = "de_opt_duration",
        serialize_with = "ser_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub bake: Option<Duration>,
    /// Whether the stage waits for a person.
    #[serde(default)]
    pub approval: Approval,
    /// Prometheus queries that must pass during the bake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,
}

/// `analysis:` of a stage: Prometheus queries evaluated every `interval` while the stage bakes. The
/// stage completes only once its bake is over and the newest measurement of every query passed; a
/// query failing more than `failureLimit` times, or inconclusive `inconclusiveLimit` times in a row,
/// fails the stage, which follows the rollout's `onFailure`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnalysisSpec {
    /// Time between two measurements of a query (the first comes one interval into the bake).
    #[serde(
        default = "default_analysis_interval",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub interval: Duration,
    /// Failed measurements of one query tolerated; one more fails the stage.
    #[serde(default)]
    pub failure_limit: u32,
    /// Inconclusive measurements in a row (Prometheus unreachable, an error, no data) that fail the stage.
    #[serde(default = "default_inconclusive_limit")]
    pub inconclusive_limit: u32,
    /// The queries.
    pub queries: Vec<AnalysisQuery>,
}

fn default_analysis_interval() -> Duration {
    Duration::from_secs(30)
}

fn default_inconclusive_limit() -> u32 {
    3
}

/// One query of a stage's analysis: PromQL, a template over `cluster` (`name`, `id`, `labels`),
/// `app` (`name`) and `stage` (`name`). A query that names `cluster` is measured for each cluster of
/// the stage, one that does not once for the stage. Every series it returns must be within `min` and
/// `max`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AnalysisQuery {
    /// A DNS label unique in the analysis.
    pub name: String,
    /// PromQL template.
    pub query: String,
    /// Largest passing value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Smallest passing value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// What a result with no series is.
    #[serde(default)]
    pub no_data: NoData,
}

/// What a query that returns no series counts as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NoData {
    /// Neither pass nor fail: the stage does not complete on it, and `inconclusiveLimit` in a row fail it.
    #[default]
    Inconclusive,
    /// A failed measurement.
    Fail,
    /// A passing measurement (for queries that return series only when something is wrong).
    Pass,
}

/// `maxUnavailable`: a count or a percentage of the stage's clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxUnavailable {
    /// At most this many clusters.
    Count(u32),
    /// At most this percentage (1-100), rounded down but never below one cluster.
    Percent(u32),
}

impl Default for MaxUnavailable {
    fn default() -> Self {
        MaxUnavailable::Count(1)
    }
}

impl Serialize for MaxUnavailable {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MaxUnavailable::Count(n) => s.serialize_u32(*n),
            MaxUnavailable::Percent(p) => s.serialize_str(&format!("{p}%")),
        }
    }
}

impl<'de> Deserialize<'de> for MaxUnavailable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        let err = || {
            serde::de::Error::custom(
                "maxUnavailable must be a count of at least 1 or a percentage like \"25%\" (1%-100%)",
            )
        };
        match Raw::deserialize(d)? {
            Raw::Int(n) if (1..=u64::from(u32::MAX)).contains(&n) => {
                Ok(MaxUnavailable::Count(n as u32))
            }
            Raw::Str(s) => {
                let n: u32 = s
                    .strip_suffix('%')
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(err)?;
                if (1..=100).contains(&n) {
                    Ok(MaxUnavailable::Percent(n))
                } else {
                    Err(err())
                }
            }
            Raw::Int(_) => Err(err()),
        }
    }
}

/// What a halted rollout does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Stop where it is and wait for a person.
    #[default]
    Pause,
    /// Put the previous release back on the clusters that got the new one.
    Rollback,
}

/// How offline clusters are treated by a rollout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OfflinePolicy {
    /// They get the release when they return and never block a stage.
    #[default]
    Defer,
}

/// Whether a stage starts by itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    /// When the previous stage has baked.
    #[default]
    Auto,
    /// Only after an explicit approval.
    Manual,
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}s", d.as_secs()))
}

/// Parses a duration such as `90s`, `10m` or `1h30m` (humantime syntax, as in the hub's configuration).
fn ser_opt_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&format!("{}s", d.as_secs())),
        None => s.serialize_none(),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| {
        format!("invalid duration {s:?}: {e}; use a number and a unit, like 30s, 10m or 1h30m")
    })
}

/// Parses and validates the text of the root `flotilla.yaml` on its own (errors name `flotilla.yaml`).
pub fn parse_manifest(text: &str, limits: &Limits) -> Result<Manifest, ManifestError> {
    let manifest = parse_file(MANIFEST_PATH, text, limits)?;
    check_dependency_cycles(&manifest.apps)?;
    Ok(manifest)
}

/// Parses and validates one manifest file, its paths still relative to its directory.
fn parse_file(file: &str, text: &str, limits: &Limits) -> Result<Manifest, ManifestError> {
    let mut manifest: Manifest =
        yaml::parse_one(text, limits).map_err(|e| ManifestError::Syntax {
            file: file.to_string(),
            message: e.to_string(),
        })?;
    validate(&manifest).map_err(|e| e.in_file(file))?;
    for app in &mut manifest.apps {
        app.origin = file.to_string();
    }
    Ok(manifest)
}

/// Reads, validates and merges every `flotilla.yaml` of `tree`, with app paths rebased to repository paths.
pub fn load_manifest(tree: &RepoTree, limits: &Limits) -> Result<Manifest, ManifestError> {
    let files: Vec<(&str, &TreeEntry)> = tree
        .entries()
        .filter(|(path, _)| is_manifest_file(path))
        .collect();
    if files.is_empty() {
        return Err(ManifestError::Missing {
            commit: tree.commit.clone(),
        });
    }
    if files.len() > MAX_MANIFEST_FILES {
        return Err(ManifestError::TooManyFiles {
            commit: tree.commit.clone(),
            count: files.len(),
            limit: MAX_MANIFEST_FILES,
        });
    }
    let mut apps: Vec<AppSpec> = Vec::new();
    // App name -> index in `apps`, whose `origin` is where the name was first declared.
    let mut declared: BTreeMap<String, usize> = BTreeMap::new();
    for (file, entry) in files {
        let text = manifest_text(file, entry, limits)?;
        let dir = file.rsplit_once('/').map_or("", |(dir, _)| dir);
        for (i, mut app) in parse_file(file, text, limits)?.apps.into_iter().enumerate() {
            if let Some(&first) = declared.get(&app.name) {
                return Err(invalid(
                    format!("apps[{i}].name"),
                    format!(
                        "app name {:?} is already declared in {}; app names are unique across a source's {MANIFEST_PATH} files",
                        app.name, apps[first].origin
                    ),
                )
                .in_file(file));
            }
            rebase_app(&mut app, dir).map_err(|e| e.in_file(file))?;
            declared.insert(app.name.clone(), apps.len());
            apps.push(app);
        }
    }
    check_dependency_cycles(&apps)?;
    Ok(Manifest { apps })
}

/// The text of the manifest file at `file`, or why it cannot be read.
fn manifest_text<'a>(
    file: &str,
    entry: &'a TreeEntry,
    limits: &Limits,
) -> Result<&'a str, ManifestError> {
    let not_a_file = |problem: String| ManifestError::NotAFile {
        file: file.to_string(),
        problem,
    };
    let bytes = match entry {
        TreeEntry::File(bytes) => bytes,
        TreeEntry::Symlink(_) => {
            return Err(not_a_file(
                "is a symlink; symlinks are never followed".into(),
            ));
        }
        TreeEntry::Submodule => return Err(not_a_file("is a submodule".into())),
        TreeEntry::TooLarge(size) => {
            return Err(not_a_file(format!(
                "{size} bytes is over the {} byte limit for one file",
                limits.max_file_bytes
            )));
        }
    };
    std::str::from_utf8(bytes).map_err(|e| ManifestError::Syntax {
        file: file.to_string(),
        message: format!("not UTF-8: {e}"),
    })
}

/// Turns the paths of an app declared in directory `dir` into repository paths. The root manifest's
/// paths (`dir` empty) are kept exactly as written.
fn rebase_app(app: &mut AppSpec, dir: &str) -> Result<(), FieldError> {
    if dir.is_empty() {
        return Ok(());
    }
    let at = format!("apps[{}]", app.name);
    if !app.path.is_empty() {
        app.path = rebase_path(dir, &app.path, || format!("{at}.path"))?;
    }
    for (j, file) in app.values_files.iter_mut().enumerate() {
        *file = rebase_path(dir, file, || format!("{at}.valuesFiles[{j}]"))?;
    }
    for target in &mut app.targets {
        let tat = format!("{at}.targets[{}]", target.name);
        if let Some(path) = &mut target.path {
            *path = rebase_path(dir, path, || format!("{tat}.path"))?;
        }
        for (j, file) in target.values_files.iter_mut().enumerate() {
            *file = rebase_path(dir, file, || format!("{tat}.valuesFiles[{j}]"))?;
        }
    }
    Ok(())
}

/// `path`, relative to directory `dir`, as a repository path; `..` stays refused, so it cannot leave `dir`.
fn rebase_path(
    dir: &str,
    path: &str,
    field: impl FnOnce() -> String,
) -> Result<String, FieldError> {
    let rel = normalize_app_path(path).map_err(|m| path_error(field(), path, m))?;
    Ok(if rel.is_empty() {
        dir.to_string()
    } else {
        format!("{dir}/{rel}")
    })
}

/// Checks an app or target path: relative, no `..`; `.` alone (or empty) is the directory it is relative to
/// (the manifest's, or the repository root once loaded). Returns the normalized path (`""` for that directory,
/// no trailing slash) or what is wrong with it.
pub fn normalize_app_path(path: &str) -> Result<String, &'static str> {
    if path.starts_with('/') {
        return Err("absolute paths are not allowed");
    }
    let trimmed = path.trim_end_matches('/');
    let trimmed = trimmed.strip_prefix("./").unwrap_or(trimmed);
    if trimmed.is_empty() || trimmed == "." {
        return Ok(String::new());
    }
    check_relative_path(trimmed)?;
    Ok(trimmed.to_string())
}

fn path_error(field: String, path: &str, problem: &str) -> FieldError {
    invalid(field, format!("path {path:?}: {problem}"))
}

/// Checks one file's apps; dependency cycles are checked over the merged set.
fn validate(manifest: &Manifest) -> Result<(), FieldError> {
    let mut names = BTreeSet::new();
    for (i, app) in manifest.apps.iter().enumerate() {
        let at = format!("apps[{i}]");
        validate_name("app name", &app.name)
            .map_err(|e| invalid(format!("{at}.name"), e.to_string()))?;
        if !names.insert(app.name.as_str()) {
            return Err(invalid(
                format!("{at}.name"),
                format!("app name {:?} is used twice", app.name),
            ));
        }
        validate_app(app, &format!("apps[{}]", app.name))?;
    }
    Ok(())
}

fn validate_app(app: &AppSpec, at: &str) -> Result<(), FieldError> {
    validate_helm(app, at)?;
    if app.repo_chart().is_none() && app.path.is_empty() {
        return Err(invalid(
            format!("{at}.path"),
            "path is required (`.` for the directory of the flotilla.yaml) unless `helm.repo` names a chart repository",
        ));
    }
    normalize_app_path(&app.path).map_err(|m| path_error(format!("{at}.path"), &app.path, m))?;
    for (j, file) in app.values_files.iter().enumerate() {
        validate_values_file(file, &format!("{at}.valuesFiles[{j}]"))?;
    }
    if let Some(ns) = &app.namespace {
        validate_name("namespace", ns)
            .map_err(|e| invalid(format!("{at}.namespace"), e.to_string()))?;
    }
    for pattern in &app.ignore {
        if pattern.trim().is_empty() || pattern.contains('\n') {
            return Err(invalid(
                format!("{at}.ignore"),
                format!("pattern {pattern:?} is empty or spans lines"),
            ));
        }
    }
    for dep in &app.depends_on {
        validate_name("app name", dep)
            .map_err(|e| invalid(format!("{at}.dependsOn"), e.to_string()))?;
        if dep == &app.name {
            return Err(invalid(
                format!("{at}.dependsOn"),
                "an app cannot depend on itself",
            ));
        }
    }
    for kind in &app.prune_protect {
        let ok =
            !kind.is_empty() && kind.split('/').count() <= 2 && !kind.split('/').any(str::is_empty);
        if !ok {
            return Err(invalid(
                format!("{at}.pruneProtect"),
                format!("{kind:?} is not `Kind` or `group/Kind`"),
            ));
        }
    }
    let mut target_names = BTreeSet::new();
    for target in &app.targets {
        let tat = format!("{at}.targets[{}]", target.name);
        validate_name("target name", &target.name)
            .map_err(|e| invalid(format!("{tat}.name"), e.to_string()))?;
        if !target_names.insert(target.name.as_str()) {
            return Err(invalid(
                format!("{tat}.name"),
                format!("target name {:?} is used twice", target.name),
            ));
        }
        target
            .selector
            .validate()
            .map_err(|e| invalid(format!("{tat}.selector"), e.to_string()))?;
        if let Some(path) = &target.path {
            if app.repo_chart().is_some() {
                return Err(invalid(
                    format!("{tat}.path"),
                    "an app whose chart comes from a chart repository has no directory to replace",
                ));
            }
            normalize_app_path(path).map_err(|m| path_error(format!("{tat}.path"), path, m))?;
        }
        for (j, file) in target.values_files.iter().enumerate() {
            validate_values_file(file, &format!("{tat}.valuesFiles[{j}]"))?;
        }
        for (j, sel) in target.exclude.iter().enumerate() {
            validate_object_selector(sel, &format!("{tat}.exclude[{j}]"))?;
        }
        for (j, patch) in target.patches.iter().enumerate() {
            let pat = format!("{tat}.patches[{j}]");
            validate_object_selector(&patch.target, &format!("{pat}.target"))?;
            if let Patch::Merge(v) = &patch.patch
                && !v.is_object()
            {
                return Err(invalid(
                    format!("{pat}.merge"),
                    "a merge patch must be a mapping",
                ));
            }
        }
    }
    if let Some(rollout) = &app.rollout {
        if rollout.stages.is_empty() {
            return Err(invalid(
                format!("{at}.rollout.stages"),
                "a rollout needs at least one stage",
            ));
        }
        let mut stage_names = BTreeSet::new();
        for stage in &rollout.stages {
            let sat = format!("{at}.rollout.stages[{}]", stage.name);
            validate_name("stage name", &stage.name)
                .map_err(|e| invalid(format!("{sat}.name"), e.to_string()))?;
            if !stage_names.insert(stage.name.as_str()) {
                return Err(invalid(
                    format!("{sat}.name"),
                    format!("stage name {:?} is used twice", stage.name),
                ));
            }
            stage
                .selector
                .validate()
                .map_err(|e| invalid(format!("{sat}.selector"), e.to_string()))?;
            if let Some(analysis) = &stage.analysis {
                validate_analysis(analysis, &format!("{sat}.analysis"))?;
            }
        }
    }
    Ok(())
}

fn validate_analysis(analysis: &AnalysisSpec, at: &str) -> Result<(), FieldError> {
    if analysis.queries.is_empty() {
        return Err(invalid(
            format!("{at}.queries"),
            "an analysis needs at least one query",
        ));
    }
    if analysis.inconclusive_limit == 0 {
        return Err(invalid(
            format!("{at}.inconclusiveLimit"),
            "must be at least 1 (one inconclusive measurement fails the stage)",
        ));
    }
    if analysis.interval < Duration::from_secs(1) {
        return Err(invalid(format!("{at}.interval"), "must be at least 1s"));
    }
    let mut names = BTreeSet::new();
    for q in &analysis.queries {
        let qat = format!("{at}.queries[{}]", q.name);
        validate_name("query name", &q.name)
            .map_err(|e| invalid(format!("{qat}.name"), e.to_string()))?;
        if !names.insert(q.name.as_str()) {
            return Err(invalid(
                format!("{qat}.name"),
                format!("query name {:?} is used twice", q.name),
            ));
        }
        if q.query.trim().is_empty() {
            return Err(invalid(format!("{qat}.query"), "must not be empty"));
        }
        crate::analysis::check_template(&q.query)
            .map_err(|e| invalid(format!("{qat}.query"), e))?;
        match (q.min, q.max) {
            (None, None) => {
                return Err(invalid(
                    qat.clone(),
                    "a query needs a threshold: max, min or both",
                ));
            }
            (Some(min), Some(max)) if min > max => {
                return Err(invalid(
                    format!("{qat}.min"),
                    format!("min {min} is above max {max}"),
                ));
            }
            _ => {}
        }
        if q.min.is_some_and(|v| !v.is_finite()) || q.max.is_some_and(|v| !v.is_finite()) {
            return Err(invalid(qat.clone(), "thresholds must be finite numbers"));
        }
    }
    Ok(())
}

fn validate_values_file(file: &str, at: &str) -> Result<(), FieldError> {
    let normalized = normalize_app_path(file).map_err(|m| path_error(at.to_string(), file, m))?;
    if normalized.is_empty() {
        return Err(invalid(at, "a values file must name a file, not `.`"));
    }
    Ok(())
}

fn validate_helm(app: &AppSpec, at: &str) -> Result<(), FieldError> {
    let Some(helm) = &app.helm else {
        if app.render != RenderMode::Helm
            && app.render != RenderMode::Auto
            && !app.values_files.is_empty()
        {
            return Err(invalid(
                format!("{at}.valuesFiles"),
                "values files are for Helm charts; templates take `values`",
            ));
        }
        return Ok(());
    };
    let hat = format!("{at}.helm");
    for (field, present) in [
        ("caFile", helm.ca_file.is_some()),
        ("tokenFile", helm.token_file.is_some()),
    ] {
        if present {
            return Err(invalid(
                format!("{hat}.{field}"),
                "chart repository credentials are set by the hub operator in hub.yaml `chartRepositories`, never in a Git repository",
            ));
        }
    }
    if !matches!(app.render, RenderMode::Auto | RenderMode::Helm) {
        return Err(invalid(
            format!("{at}.render"),
            "an app with `helm:` renders with helm (`render: helm` or `auto`)",
        ));
    }
    match (&helm.repo, &helm.chart, &helm.version) {
        (None, None, None) => Ok(()),
        (Some(repo), Some(chart), Some(version)) => {
            if !repo.starts_with("https://") {
                return Err(invalid(
                    format!("{hat}.repo"),
                    format!(
                        "{repo:?} is not an https:// URL; chart repositories are fetched over HTTPS only"
                    ),
                ));
            }
            if !app.path.is_empty() {
                return Err(invalid(
                    format!("{at}.path"),
                    "an app takes its chart either from `path` or from `helm.repo`, not both",
                ));
            }
            validate_name("chart name", chart)
                .map_err(|e| invalid(format!("{hat}.chart"), e.to_string()))?;
            if version.trim().is_empty() || version.len() > 128 {
                return Err(invalid(
                    format!("{hat}.version"),
                    "a version or semver range of 1 to 128 characters is required",
                ));
            }
            Ok(())
        }
        _ => Err(invalid(
            hat,
            "a chart from a chart repository needs all of `repo`, `chart` and `version`",
        )),
    }
}

fn validate_object_selector(sel: &ObjectSelector, at: &str) -> Result<(), FieldError> {
    if sel.kind.is_empty() {
        return Err(invalid(format!("{at}.kind"), "kind is empty"));
    }
    if sel.name.is_empty() {
        return Err(invalid(format!("{at}.name"), "name is empty"));
    }
    if let Some(ns) = &sel.namespace {
        validate_name("namespace", ns)
            .map_err(|e| invalid(format!("{at}.namespace"), e.to_string()))?;
    }
    Ok(())
}

/// Rejects `dependsOn` cycles among `apps`, which may come from several files (dependencies on apps of
/// other Sources are not checked here). The error is in the file of the app where the cycle closes.
fn check_dependency_cycles(apps: &[AppSpec]) -> Result<(), ManifestError> {
    let by_name: BTreeMap<&str, &AppSpec> = apps.iter().map(|a| (a.name.as_str(), a)).collect();
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    fn visit<'a>(
        app: &'a str,
        by_name: &BTreeMap<&'a str, &'a AppSpec>,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Result<(), ManifestError> {
        match state.get(app) {
            Some(2) => return Ok(()),
            Some(1) => {
                path.push(app);
                let start = path.iter().position(|a| *a == app).unwrap_or(0);
                let cycle = &path[start..];
                let mut message = format!("dependency cycle {}", cycle.join(" -> "));
                let origin = |name: &str| by_name.get(name).map_or("", |a| a.origin.as_str());
                let files: BTreeSet<&str> = cycle.iter().map(|a| origin(a)).collect();
                if files.len() > 1 {
                    let wheres: Vec<String> = cycle[..cycle.len() - 1]
                        .iter()
                        .map(|a| format!("{a} in {}", origin(a)))
                        .collect();
                    message.push_str(&format!(" ({})", wheres.join(", ")));
                }
                return Err(invalid(format!("apps[{app}].dependsOn"), message).in_file(origin(app)));
            }
            _ => {}
        }
        state.insert(app, 1);
        path.push(app);
        let deps = by_name
            .get(app)
            .map_or(&[][..], |a| a.depends_on.as_slice());
        for dep in deps {
            if by_name.contains_key(dep.as_str()) {
                visit(dep, by_name, state, path)?;
            }
        }
        path.pop();
        state.insert(app, 2);
        Ok(())
    }
    for app in by_name.keys() {
        visit(app, &by_name, &mut state, &mut Vec::new())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn case_files(kind: &str) -> Vec<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/manifest")
            .join(kind);
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        paths.sort();
        paths
    }

    #[test]
    fn valid_manifests_parse() {
        let paths = case_files("valid");
        assert!(paths.len() >= 3);
        for path in paths {
            let text = std::fs::read_to_string(&path).unwrap();
            if let Err(e) = parse_manifest(&text, &Limits::default()) {
                panic!("{}: {e}", path.display());
            }
        }
    }

    /// Each file in `invalid/` starts with `# error: a | b`: substrings that must all appear in the error.
    #[test]
    fn invalid_manifests_fail_with_the_field_named() {
        let paths = case_files("invalid");
        assert!(paths.len() >= 30);
        let mut failures = Vec::new();
        for path in &paths {
            let text = std::fs::read_to_string(path).unwrap();
            let wants: Vec<&str> = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# error: "))
                .expect("first line is `# error: …`")
                .split(" | ")
                .collect();
            let name = path.file_name().unwrap().to_string_lossy();
            match parse_manifest(&text, &Limits::default()) {
                Ok(_) => failures.push(format!("{name}: parsed")),
                Err(e) => {
                    let msg = e.to_string();
                    for want in wants {
                        if !msg.contains(want) {
                            failures.push(format!("{name}: {msg:?} does not contain {want:?}"));
                        }
                    }
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn design_example_fields() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/manifest/valid/design-example.yaml");
        let m =
            parse_manifest(&std::fs::read_to_string(path).unwrap(), &Limits::default()).unwrap();
        let app = &m.apps[0];
        assert_eq!(app.name, "guestbook");
        assert_eq!(app.namespace.as_deref(), Some("guestbook"));
        assert_eq!(app.render, RenderMode::Auto);
        assert_eq!(app.ignore, ["overlays/", "*.md"]);
        assert_eq!(app.values["replicas"], 2);
        assert_eq!(app.depends_on, ["platform-crds"]);
        assert_eq!(app.drift, DriftMode::Correct);
        assert!(app.prune);
        assert!(!app.force);
        let edge = &app.targets[0];
        assert_eq!(edge.path.as_deref(), Some("apps/guestbook/overlays/edge"));
        assert_eq!(edge.selector.match_labels["tier"], "edge");
        assert_eq!(edge.exclude[0].kind, "HorizontalPodAutoscaler");
        assert!(
            matches!(&edge.patches[0].patch, Patch::Merge(v) if v["spec"]["template"]["spec"]["nodeSelector"]["edge"] == "true")
        );
        assert!(matches!(&edge.patches[1].patch, Patch::Json(ops) if ops.len() == 1));
        assert_eq!(app.targets[1].selector, LabelSelector::default());
        let rollout = app.rollout.as_ref().unwrap();
        assert_eq!(rollout.stages.len(), 3);
        assert_eq!(rollout.stages[0].max_unavailable, MaxUnavailable::Count(1));
        assert_eq!(rollout.stages[0].bake, Some(Duration::from_secs(600)));
        assert_eq!(
            rollout.stages[1].max_unavailable,
            MaxUnavailable::Percent(10)
        );
        assert_eq!(rollout.stages[1].approval, Approval::Manual);
        assert_eq!(rollout.stages[2].bake, None);
        assert_eq!(rollout.stages[2].approval, Approval::Auto);
        assert_eq!(rollout.failure_budget, 2);
        assert_eq!(rollout.on_failure, OnFailure::Rollback);
        assert_eq!(rollout.progress_deadline, Some(Duration::from_secs(900)));
        assert_eq!(rollout.offline, OfflinePolicy::Defer);
    }

    #[test]
    fn defaults() {
        let m =
            parse_manifest("apps: [{name: web, path: ./apps/web/}]", &Limits::default()).unwrap();
        let app = &m.apps[0];
        assert_eq!(normalize_app_path(&app.path).unwrap(), "apps/web");
        assert_eq!(app.namespace, None);
        assert_eq!(app.render, RenderMode::Auto);
        assert!(app.prune && !app.force && app.targets.is_empty() && app.rollout.is_none());
        assert_eq!(app.drift, DriftMode::Correct);
    }

    #[test]
    fn durations() {
        let ok = [
            ("0s", 0),
            ("30s", 30),
            ("10m", 600),
            ("1h30m", 5400),
            ("1d", 86_400),
            ("2h 5s", 7205),
        ];
        for (s, secs) in ok {
            assert_eq!(parse_duration(s).unwrap(), Duration::from_secs(secs), "{s}");
        }
        for bad in ["", "10", "m", "1x", "-1s", "ten minutes"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_rollout_settings_are_refused_naming_the_field() {
        let app = |rollout: &str| {
            format!("apps:\n  - name: web\n    path: web\n    rollout:\n      {rollout}\n")
        };
        let stage = |extra: &str| {
            app(&format!(
                "stages: [{{name: canary, selector: {{matchLabels: {{ring: canary}}}}{extra}}}]"
            ))
        };
        let cases = [
            (
                stage(", maxUnavailable: 0"),
                "maxUnavailable must be a count of at least 1",
            ),
            (stage(", maxUnavailable: \"150%\""), "(1%-100%)"),
            (stage(", maxUnavailable: \"0%\""), "(1%-100%)"),
            (stage(", bake: -5m"), "invalid duration \"-5m\""),
            (stage(", bake: soon"), "invalid duration \"soon\""),
            (
                app("stages: [{name: canary, selector: {}}]\n      progressDeadline: 10"),
                "invalid duration \"10\"",
            ),
            (app("stages: []"), "a rollout needs at least one stage"),
            (
                stage(", approval: sometimes"),
                "expected one of auto, manual",
            ),
            (
                stage(", analysis: {queries: []}"),
                "an analysis needs at least one query",
            ),
            (
                stage(", analysis: {queries: [{name: e, query: up}]}"),
                "a query needs a threshold: max, min or both",
            ),
            (
                stage(", analysis: {queries: [{name: e, query: up, min: 2, max: 1}]}"),
                "min 2 is above max 1",
            ),
            (
                stage(
                    ", analysis: {queries: [{name: e, query: 'up{a=\"{{ cluster.name \"}', max: 1}]}",
                ),
                "the query template does not parse",
            ),
            (
                stage(", analysis: {interval: 0s, queries: [{name: e, query: up, max: 1}]}"),
                "must be at least 1s",
            ),
            (
                stage(
                    ", analysis: {inconclusiveLimit: 0, queries: [{name: e, query: up, max: 1}]}",
                ),
                "inconclusiveLimit: must be at least 1",
            ),
            (
                stage(", analysis: {queries: [{name: e, query: up, max: 1, noData: maybe}]}"),
                "expected one of inconclusive, fail, pass",
            ),
        ];
        for (text, want) in cases {
            let err = parse_manifest(&text, &Limits::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text}: {err}");
            assert!(err.contains("flotilla.yaml"), "the file is named: {err}");
        }
    }

    #[test]
    fn rollout_settings_round_trip_through_their_stored_form() {
        let text = "apps:\n  - name: web\n    path: web\n    rollout:\n      stages:\n        - {name: canary, selector: {matchLabels: {ring: canary}}, maxUnavailable: 2, bake: 90s, approval: manual}\n        - {name: wave, selector: {}, maxUnavailable: 25%}\n      failureBudget: 3\n      onFailure: rollback\n      progressDeadline: 15m\n";
        let spec = parse_manifest(text, &Limits::default()).unwrap().apps[0]
            .rollout
            .clone()
            .unwrap();
        let stored = serde_json::to_string(&spec).unwrap();
        let back: RolloutSpec = serde_json::from_str(&stored).unwrap();
        assert_eq!(back, spec, "{stored}");
    }

    #[test]
    fn load_from_tree() {
        let limits = Limits::default();
        let err = load_manifest(&RepoTree::new("abc"), &limits)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("flotilla.yaml not found") && err.contains("abc"),
            "{err}"
        );
        let tree = RepoTree::new("abc").with_symlink("flotilla.yaml", "other.yaml");
        let err = load_manifest(&tree, &limits).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
        let tree =
            RepoTree::new("abc").with_file("flotilla.yaml", "apps: [{name: web, path: web}]\n");
        assert_eq!(load_manifest(&tree, &limits).unwrap().apps[0].name, "web");
        let tree = RepoTree::new("abc").with_file("flotilla.yaml", vec![0xff, 0xfe]);
        assert!(
            load_manifest(&tree, &limits)
                .unwrap_err()
                .to_string()
                .contains("UTF-8")
        );
    }

    /// A repository of several manifest files (`hub/testdata/manifest/trees/*.yaml`): the files, and either
    /// the merged apps expected in order (paths as `load_manifest` returns them) or substrings of the error.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct TreeCase {
        #[serde(default)]
        files: BTreeMap<String, String>,
        #[serde(default)]
        symlinks: BTreeMap<String, String>,
        #[serde(default)]
        submodules: Vec<String>,
        #[serde(default)]
        too_large: BTreeMap<String, u64>,
        #[serde(default)]
        expect: Option<Vec<ExpectApp>>,
        #[serde(default)]
        error: Vec<String>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct ExpectApp {
        name: String,
        origin: String,
        path: String,
        #[serde(default)]
        values_files: Vec<String>,
        #[serde(default)]
        depends_on: Vec<String>,
        #[serde(default)]
        targets: Vec<ExpectTarget>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct ExpectTarget {
        name: String,
        #[serde(default)]
        path: Option<String>,
        #[serde(default)]
        values_files: Vec<String>,
    }

    impl TreeCase {
        fn tree(&self) -> RepoTree {
            crate::render::tree::fixture_tree(
                &self.files,
                &self.symlinks,
                &self.submodules,
                &self.too_large,
            )
        }
    }

    fn observed(app: &AppSpec) -> ExpectApp {
        ExpectApp {
            name: app.name.clone(),
            origin: app.origin.clone(),
            path: app.path.clone(),
            values_files: app.values_files.clone(),
            depends_on: app.depends_on.clone(),
            targets: app
                .targets
                .iter()
                .map(|t| ExpectTarget {
                    name: t.name.clone(),
                    path: t.path.clone(),
                    values_files: t.values_files.clone(),
                })
                .collect(),
        }
    }

    fn check_tree_case(case: &TreeCase) -> Result<(), String> {
        match (&case.expect, case.error.is_empty()) {
            (Some(want), true) => {
                let got = load_manifest(&case.tree(), &Limits::default())
                    .map_err(|e| format!("unexpected error: {e}"))?;
                let got: Vec<ExpectApp> = got.apps.iter().map(observed).collect();
                if &got != want {
                    return Err(format!("apps differ\n got: {got:?}\nwant: {want:?}"));
                }
                Ok(())
            }
            (None, false) => match load_manifest(&case.tree(), &Limits::default()) {
                Ok(m) => Err(format!("expected an error, loaded {:?}", m.apps)),
                Err(e) => {
                    let msg = e.to_string();
                    match case.error.iter().find(|w| !msg.contains(w.as_str())) {
                        Some(missing) => Err(format!("{msg:?} does not contain {missing:?}")),
                        None => Ok(()),
                    }
                }
            },
            _ => Err("needs exactly one of expect, error".into()),
        }
    }

    #[test]
    fn manifests_in_every_directory_merge() {
        let paths = case_files("trees");
        assert!(paths.len() >= 15);
        let mut failures = Vec::new();
        for path in &paths {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let text = std::fs::read_to_string(path).unwrap();
            let result = serde_saphyr::from_str::<TreeCase>(&text)
                .map_err(|e| format!("bad case file: {e}"))
                .and_then(|case| check_tree_case(&case));
            if let Err(e) = result {
                failures.push(format!("{name}: {e}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn manifest_files_are_bounded() {
        let file = |i: usize| format!("apps/a{i:04}/{MANIFEST_PATH}");
        let mut tree = RepoTree::new("abc");
        for i in 0..MAX_MANIFEST_FILES {
            tree = tree.with_file(&file(i), format!("apps: [{{name: a{i}, path: .}}]"));
        }
        let manifest = load_manifest(&tree, &Limits::default()).unwrap();
        assert_eq!(manifest.apps.len(), MAX_MANIFEST_FILES);
        assert_eq!(manifest.apps[7].path, "apps/a0007");
        let tree = tree.with_file(&file(MAX_MANIFEST_FILES), "apps: []");
        let err = load_manifest(&tree, &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("1001 flotilla.yaml files") && err.contains("limit of 1000"),
            "{err}"
        );
    }

    #[test]
    fn manifest_file_names() {
        for yes in ["flotilla.yaml", "a/flotilla.yaml", "a/b/c/flotilla.yaml"] {
            assert!(is_manifest_file(yes), "{yes}");
        }
        for no in [
            "flotilla.yml",
            "a/notflotilla.yaml",
            "flotilla.yaml/x",
            "a/flotilla.yaml.j2",
        ] {
            assert!(!is_manifest_file(no), "{no}");
        }
    }
}
