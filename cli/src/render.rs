//! `flotilla render`: exactly the objects a cluster with given labels would
//! receive, rendered from a local repository's object database with no hub.

use std::path::Path;

use flotilla_common::capabilities::Capabilities;
use flotilla_common::labels::Labels;
use flotilla_common::limits::Limits;
use flotilla_common::object::KubeObject;
use flotilla_hub::manifest::{AppSpec, MANIFEST_PATH, load_manifest};
use flotilla_hub::render::{ClusterInfo, RenderEnv, Tools, render_app};
use flotilla_hub::source::read_tree;

/// What `flotilla render` needs.
#[derive(Debug, Clone)]
pub struct RenderRequest<'a> {
    /// Repository (bare or not); only its object database is read.
    pub repo: &'a Path,
    /// Branch, tag or commit.
    pub rev: &'a str,
    /// One app, or every app when `None`.
    pub app: Option<&'a str>,
    /// The cluster's labels.
    pub labels: Labels,
    /// The cluster's name (templates see it as `cluster.name`).
    pub cluster_name: &'a str,
    /// What its API server offers (`cluster.kubeVersion`, `cluster.apiVersions`), as its agent would report.
    pub capabilities: Capabilities,
}

/// Rendering failed; the message names the file or app.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RenderCommandError(String);

/// Renders and returns the objects in ClusterState order (by app, then object id).
pub fn render(req: &RenderRequest<'_>) -> Result<Vec<KubeObject>, RenderCommandError> {
    let limits = Limits::default();
    let err = |e: &dyn std::fmt::Display| RenderCommandError(e.to_string());
    let tree = read_tree(req.repo, req.rev, &limits).map_err(|e| err(&e))?;
    let manifest = load_manifest(&tree, &limits).map_err(|e| err(&e))?;
    let apps: Vec<_> = match req.app {
        Some(name) => {
            let app = manifest
                .apps
                .iter()
                .find(|a| a.name == name)
                .ok_or_else(|| {
                    RenderCommandError(format!(
                        "no app {name:?} in the commit's {MANIFEST_PATH} files ({})",
                        apps_by_file(&manifest.apps)
                    ))
                })?;
            vec![app]
        }
        None => manifest.apps.iter().collect(),
    };
    let cluster = ClusterInfo {
        id: "c-local".into(),
        name: req.cluster_name.to_string(),
        labels: req.labels.clone(),
        capabilities: req.capabilities.clone(),
    };
    let tools = Tools::discover();
    let env = RenderEnv::new(&limits, &tools);
    let mut objects = Vec::new();
    for app in apps {
        let rendered = render_app(&tree, app, &cluster, &env).map_err(|e| {
            RenderCommandError(format!("app {:?} (from {}): {e}", app.name, app.origin))
        })?;
        if let Some(rendered) = rendered {
            for note in &rendered.notes {
                eprintln!("note: app {}: {note}", app.name);
            }
            objects.extend(rendered.objects);
        } else if req.app.is_some() {
            return Err(RenderCommandError(format!(
                "no target of app {:?} (from {}) matches labels {}",
                app.name,
                app.origin,
                flotilla_common::labels::format_labels(&req.labels)
            )));
        }
    }
    Ok(objects)
}

/// The apps grouped by the file that declares them: `flotilla.yaml: web; teams/db/flotilla.yaml: db, cache`.
fn apps_by_file(apps: &[AppSpec]) -> String {
    if apps.is_empty() {
        return "they declare no apps".to_string();
    }
    // Apps come file by file, so each file's apps are consecutive.
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for app in apps {
        match groups.last_mut() {
            Some((origin, names)) if *origin == app.origin => names.push(&app.name),
            _ => groups.push((&app.origin, vec![&app.name])),
        }
    }
    groups
        .iter()
        .map(|(origin, names)| format!("{origin}: {}", names.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `--kube-version` and `--api-versions`, checked as the hub checks what agents report.
pub fn capabilities(
    kube_version: Option<String>,
    api_versions: Vec<String>,
) -> Result<Capabilities, RenderCommandError> {
    Capabilities::new(kube_version, api_versions).map_err(|e| RenderCommandError(e.to_string()))
}

/// Multi-document YAML, one document per object.
pub fn to_yaml(objects: &[KubeObject]) -> Result<String, RenderCommandError> {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        // The hub's conversion, so `flotilla plan --diff` shows objects exactly as this prints them.
        out.push_str(&flotilla_hub::plan::object_yaml(&o.value).map_err(RenderCommandError)?);
    }
    Ok(out)
}

/// A JSON list of the objects.
pub fn to_json(objects: &[KubeObject]) -> String {
    let values: Vec<&serde_json::Value> = objects.iter().map(|o| &o.value).collect();
    serde_json::to_string_pretty(&values).expect("JSON values serialize")
}
