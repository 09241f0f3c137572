//! The repository's `flotilla.yaml` (DESIGN.md §5): which apps exist, how to render, target and roll them out.
//!
//! Parsing is pure and strict: unknown fields anywhere are errors naming the field,
//! and everything that can be checked without the tree (names, paths, selectors,
//! patches, durations) is checked here so a bad manifest fails before any render.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use flotilla_common::cluster_state::DriftMode;
use flotilla_common::ids::validate_name;
use flotilla_common::labels::LabelSelector;
use flotilla_common::limits::Limits;
use flotilla_common::yaml;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::render::tree::check_relative_path;
use crate::render::{RepoTree, TreeEntry};

/// Where the manifest lives in a Source.
pub const MANIFEST_PATH: &str = "flotilla.yaml";

/// A manifest that cannot be read or breaks a rule.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The commit has no `flotilla.yaml` at its root.
    #[error("{MANIFEST_PATH} not found at the repository root (commit {commit})")]
    Missing {
        /// The commit that was searched.
        commit: String,
    },
    /// `flotilla.yaml` is a symlink, a submodule or too large.
    #[error("{MANIFEST_PATH}: {problem}")]
    NotAFile {
        /// What it is instead.
        problem: String,
    },
    /// The YAML does not parse or does not fit the schema (unknown field, wrong type).
    #[error("{MANIFEST_PATH}: {message}")]
    Syntax {
        /// The parser's message, with line and column where known.
        message: String,
    },
    /// A field holds a value that is not allowed.
    #[error("{MANIFEST_PATH}: {field}: {message}")]
    Invalid {
        /// Where the field is, e.g. `apps[guestbook].targets[edge].path`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ManifestError {
    ManifestError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The parsed `flotilla.yaml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The apps this Source declares, in file order.
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
    /// App name, a DNS label unique in the manifest.
    pub name: String,
    /// Directory inside the repository, relative to its root (`.` for the root); empty for a chart from a
    /// chart repository (`helm.repo`).
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
    /// Helm values files, repository paths layered after the chart's `values.yaml` and before `values`.
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
    /// Another directory (from the repository root) to render for these clusters.
    #[serde(default)]
    pub path: Option<String>,
    /// Values deep-merged over the app's values.
    #[serde(default)]
    pub values: Map<String, Value>,
    /// Helm values files layered after the app's `values` (repository paths).
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

/// Staged rollout of a release across the targeted clusters.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub progress_deadline: Option<Duration>,
    /// How offline clusters are treated.
    #[serde(default)]
    pub offline: OfflinePolicy,
}

/// One rollout stage.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub bake: Option<Duration>,
    /// Whether the stage waits for a person.
    #[serde(default)]
    pub approval: Approval,
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Stop where it is and wait for a person.
    #[default]
    Pause,
    /// Put the previous release back on the clusters that got the new one.
    Rollback,
}

/// How offline clusters are treated by a rollout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OfflinePolicy {
    /// They get the release when they return and never block a stage.
    #[default]
    Defer,
}

/// Whether a stage starts by itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
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

/// Parses a duration such as `90s`, `10m` or `1h30m` (humantime syntax, as in the hub's configuration).
fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| {
        format!("invalid duration {s:?}: {e}; use a number and a unit, like 30s, 10m or 1h30m")
    })
}

/// Parses and validates the text of `flotilla.yaml`.
pub fn parse_manifest(text: &str, limits: &Limits) -> Result<Manifest, ManifestError> {
    let manifest: Manifest = yaml::parse_one(text, limits).map_err(|e| ManifestError::Syntax {
        message: e.to_string(),
    })?;
    validate(&manifest)?;
    Ok(manifest)
}

/// Reads and validates `flotilla.yaml` at the root of `tree`.
pub fn load_manifest(tree: &RepoTree, limits: &Limits) -> Result<Manifest, ManifestError> {
    let bytes = match tree.get(MANIFEST_PATH) {
        None => {
            return Err(ManifestError::Missing {
                commit: tree.commit.clone(),
            });
        }
        Some(TreeEntry::File(bytes)) => bytes,
        Some(TreeEntry::Symlink(_)) => {
            return Err(ManifestError::NotAFile {
                problem: "is a symlink; symlinks are never followed".into(),
            });
        }
        Some(TreeEntry::Submodule) => {
            return Err(ManifestError::NotAFile {
                problem: "is a submodule".into(),
            });
        }
        Some(TreeEntry::TooLarge(size)) => {
            return Err(ManifestError::NotAFile {
                problem: format!(
                    "{size} bytes is over the {} byte limit for one file",
                    limits.max_file_bytes
                ),
            });
        }
    };
    let text = std::str::from_utf8(bytes).map_err(|e| ManifestError::Syntax {
        message: format!("not UTF-8: {e}"),
    })?;
    parse_manifest(text, limits)
}

/// Checks an app or target path: relative, no `..`; `.` alone (or empty) is the repository root.
/// Returns the normalized path (`""` for the root, no trailing slash) or what is wrong with it.
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

fn path_error(field: String, path: &str, problem: &str) -> ManifestError {
    invalid(field, format!("path {path:?}: {problem}"))
}

fn validate(manifest: &Manifest) -> Result<(), ManifestError> {
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
    check_dependency_cycles(manifest)
}

fn validate_app(app: &AppSpec, at: &str) -> Result<(), ManifestError> {
    validate_helm(app, at)?;
    if app.repo_chart().is_none() && app.path.is_empty() {
        return Err(invalid(
            format!("{at}.path"),
            "path is required (`.` for the repository root) unless `helm.repo` names a chart repository",
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
        }
    }
    Ok(())
}

fn validate_values_file(file: &str, at: &str) -> Result<(), ManifestError> {
    let normalized = normalize_app_path(file).map_err(|m| path_error(at.to_string(), file, m))?;
    if normalized.is_empty() {
        return Err(invalid(
            at,
            "a values file must name a file, not the repository root",
        ));
    }
    Ok(())
}

fn validate_helm(app: &AppSpec, at: &str) -> Result<(), ManifestError> {
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

fn validate_object_selector(sel: &ObjectSelector, at: &str) -> Result<(), ManifestError> {
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

/// Rejects `dependsOn` cycles among the manifest's apps (dependencies on apps of other Sources are not checked here).
fn check_dependency_cycles(manifest: &Manifest) -> Result<(), ManifestError> {
    let deps: BTreeMap<&str, &[String]> = manifest
        .apps
        .iter()
        .map(|a| (a.name.as_str(), a.depends_on.as_slice()))
        .collect();
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    fn visit<'a>(
        app: &'a str,
        deps: &BTreeMap<&'a str, &'a [String]>,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Result<(), ManifestError> {
        match state.get(app) {
            Some(2) => return Ok(()),
            Some(1) => {
                path.push(app);
                let start = path.iter().position(|a| *a == app).unwrap_or(0);
                return Err(invalid(
                    format!("apps[{app}].dependsOn"),
                    format!("dependency cycle {}", path[start..].join(" -> ")),
                ));
            }
            _ => {}
        }
        state.insert(app, 1);
        path.push(app);
        for dep in deps.get(app).copied().unwrap_or_default() {
            if deps.contains_key(dep.as_str()) {
                visit(dep, deps, state, path)?;
            }
        }
        path.pop();
        state.insert(app, 2);
        Ok(())
    }
    for app in deps.keys() {
        visit(app, &deps, &mut state, &mut Vec::new())?;
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
}
