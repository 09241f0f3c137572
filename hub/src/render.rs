//! Rendering: one app of one commit, for one cluster, into the Kubernetes objects that cluster receives.
//!
//! Pure: the input is a [`RepoTree`] read from the git object database, an
//! [`AppSpec`] and the cluster's identity and labels; there is no IO and no
//! clock, so the same inputs give byte-for-byte the same objects (invariant 7).
//! Any error renders nothing at all (invariant 2), and paths that are absolute,
//! contain `..` or pass through a symlink or submodule are refused (invariant 1).

mod customize;
mod documents;
mod template;
pub mod tree;

#[cfg(test)]
mod tests;

use flotilla_common::capabilities::Capabilities;
use flotilla_common::labels::Labels;
use flotilla_common::limits::Limits;
use flotilla_common::object::KubeObject;
use serde_json::{Map, Value};

use crate::manifest::{AppSpec, RenderMode, TargetSpec, normalize_app_path};
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
    /// A render mode this build cannot run yet.
    #[error("app {app:?} at {path:?}: render mode {mode:?} is not supported yet")]
    Unsupported {
        /// App name.
        app: String,
        /// Directory rendered.
        path: String,
        /// `kustomize` or `helm`.
        mode: &'static str,
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

/// Renders `app` from `tree` for `cluster`: `Ok(None)` when none of its targets selects the cluster.
pub fn render_app(
    tree: &RepoTree,
    app: &AppSpec,
    cluster: &ClusterInfo,
    limits: &Limits,
) -> Result<Option<RenderedApp>, RenderError> {
    let Some(target) = select_target(app, cluster) else {
        return Ok(None);
    };
    let written = target.and_then(|t| t.path.as_deref()).unwrap_or(&app.path);
    let dir = resolve_dir(tree, written)?;
    let files = documents::AppFiles::collect(tree, &dir, &app.ignore, limits)?;

    let mode = match app.render {
        RenderMode::Auto => files.detect_mode(),
        mode => mode,
    };
    let unsupported = |mode| RenderError::Unsupported {
        app: app.name.clone(),
        path: display_dir(&dir),
        mode,
    };
    let mut docs = Vec::new();
    match mode {
        RenderMode::Kustomize => return Err(unsupported("kustomize")),
        RenderMode::Helm => return Err(unsupported("helm")),
        RenderMode::Auto | RenderMode::Raw => {
            if files.manifests.is_empty() {
                return Err(RenderError::NoManifests {
                    path: display_dir(&dir),
                });
            }
        }
        RenderMode::Template => {
            if files.manifests.is_empty() && files.outputs.is_empty() {
                return Err(RenderError::NoManifests {
                    path: display_dir(&dir),
                });
            }
            let context = template_context(app, target, cluster);
            for (path, text) in template::render_all(&files, &context, limits)? {
                // Line numbers in YAML errors refer to the output, not the template.
                docs.extend(documents::parse_yaml(
                    &format!("{path} (rendered)"),
                    &text,
                    limits,
                )?);
            }
        }
    }
    for (path, bytes) in &files.manifests {
        docs.extend(documents::parse_file(path, bytes, limits)?);
    }
    let default_namespace = app.namespace.as_deref().unwrap_or("default");
    let objects = customize::finish(docs, target, default_namespace, limits)?;
    if objects.len() as u64 > limits.max_objects {
        return Err(RenderError::TooManyObjects {
            app: app.name.clone(),
            count: objects.len(),
            limit: limits.max_objects,
        });
    }
    Ok(Some(RenderedApp {
        app: app.name.clone(),
        target: target.map(|t| t.name.clone()).unwrap_or_default(),
        objects,
    }))
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
    let labels: Map<String, Value> = cluster
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let caps = &cluster.capabilities;
    serde_json::json!({
        "values": values,
        "cluster": {
            "id": cluster.id, "name": cluster.name, "labels": labels,
            // As the agent reported them: none and an empty list when it reported nothing.
            "kubeVersion": caps.kube_version, "apiVersions": caps.api_versions,
        },
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
