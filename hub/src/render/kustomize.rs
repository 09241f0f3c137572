//! `render: kustomize`: the kustomization graph is read and checked here before kustomize ever runs, so
//! what kustomize may read is known exactly. That set of files is both what is exported from the git object
//! database into the render's private directory and what the render's input digest covers, so a commit
//! that changes none of them does not re-render the app.
//!
//! Refused, with the kustomization file named: remote bases and resources (URLs, `github.com/…`,
//! `git@…`, `?ref=`), exec and container plugins (`generators`/`transformers`/`validators` that are not
//! kustomize's builtins, KRM functions), Helm inflation unless the app enables it (and then only charts
//! vendored in the repository), absolute paths, and paths that leave the repository.

use std::collections::BTreeSet;

use flotilla_common::limits::Limits;
use flotilla_common::yaml;
use serde_json::Value;

use super::{RenderError, RepoTree, TreeEntry};
use crate::manifest::KustomizeSpec;

/// File names kustomize accepts for a kustomization, in its order of preference.
pub(crate) const KUSTOMIZATION_FILES: [&str; 3] =
    ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// Most kustomization files one app may reach.
const MAX_KUSTOMIZATIONS: usize = 1_000;

/// Everything one kustomization graph reads.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    /// Repository paths of every file kustomize may read.
    pub files: BTreeSet<String>,
    /// Kustomization directories, in visit order (the first is the app's).
    pub dirs: Vec<String>,
}

/// Walks the kustomization at `dir` and everything it references.
pub(crate) fn graph(
    tree: &RepoTree,
    dir: &str,
    options: &KustomizeSpec,
    limits: &Limits,
) -> Result<Graph, RenderError> {
    let mut graph = Graph::default();
    let mut stack = Vec::new();
    visit(tree, dir, options, limits, &mut graph, &mut stack)?;
    Ok(graph)
}

fn kerr(file: &str, problem: impl Into<String>) -> RenderError {
    RenderError::Kustomization {
        file: file.to_string(),
        problem: problem.into(),
    }
}

fn visit(
    tree: &RepoTree,
    dir: &str,
    options: &KustomizeSpec,
    limits: &Limits,
    graph: &mut Graph,
    stack: &mut Vec<String>,
) -> Result<(), RenderError> {
    if stack.iter().any(|d| d == dir) {
        let mut cycle = stack.clone();
        cycle.push(dir.to_string());
        return Err(kerr(
            &kustomization_file(tree, dir).unwrap_or_else(|| dir.to_string()),
            format!(
                "kustomizations reference each other in a cycle: {}",
                cycle.join(" -> ")
            ),
        ));
    }
    if graph.dirs.iter().any(|d| d == dir) {
        return Ok(());
    }
    if graph.dirs.len() >= MAX_KUSTOMIZATIONS {
        return Err(kerr(
            dir,
            format!("more than {MAX_KUSTOMIZATIONS} kustomizations in one app"),
        ));
    }
    let Some(file) = kustomization_file(tree, dir) else {
        return Err(kerr(
            &display(dir),
            "directory has no kustomization.yaml, kustomization.yml or Kustomization",
        ));
    };
    let text = read_text(tree, &file, limits)?;
    let doc: Value = yaml::parse_one(&text, limits).map_err(|e| RenderError::Parse {
        path: file.clone(),
        message: e.to_string(),
    })?;
    let Value::Object(k) = &doc else {
        return Err(kerr(&file, "a kustomization must be a mapping"));
    };
    graph.dirs.push(dir.to_string());
    graph.files.insert(file.clone());
    stack.push(dir.to_string());

    // Directories or files: resources and bases (deprecated) and components.
    for field in ["resources", "bases", "components"] {
        for (i, reference) in strings(k, field, &file)?.into_iter().enumerate() {
            let at = format!("{field}[{i}]");
            check_local(&file, &at, &reference)?;
            let path = resolve(&file, dir, &at, &reference)?;
            match tree.get(&path) {
                Some(TreeEntry::File(_) | TreeEntry::TooLarge(_)) => {
                    need_file(tree, &file, &at, &path, limits, graph)?
                }
                Some(TreeEntry::Symlink(_)) => {
                    return Err(kerr(
                        &file,
                        format!("{at}: {path} is a symlink; symlinks are never followed"),
                    ));
                }
                Some(TreeEntry::Submodule) => {
                    return Err(kerr(&file, format!("{at}: {path} is a submodule")));
                }
                None if tree.is_dir(&path) => visit(tree, &path, options, limits, graph, stack)?,
                None => {
                    return Err(kerr(
                        &file,
                        format!(
                            "{at}: {reference:?} ({}) does not exist in commit {}",
                            display(&path),
                            tree.commit
                        ),
                    ));
                }
            }
        }
    }

    // Files only.
    let mut file_refs: Vec<(String, String)> = Vec::new();
    for field in ["crds", "configurations", "patchesStrategicMerge"] {
        for (i, s) in strings(k, field, &file)?.into_iter().enumerate() {
            // A strategic merge patch may be written inline; only names of files are files.
            if field == "patchesStrategicMerge" && (s.contains('\n') || s.contains(": ")) {
                continue;
            }
            file_refs.push((format!("{field}[{i}]"), s));
        }
    }
    for field in ["patches", "patchesJson6902", "replacements"] {
        for (i, item) in items(k, field).enumerate() {
            if let Some(path) = item.get("path").and_then(Value::as_str) {
                file_refs.push((format!("{field}[{i}].path"), path.to_string()));
            }
        }
    }
    if let Some(path) = k
        .get("openapi")
        .and_then(|o| o.get("path"))
        .and_then(Value::as_str)
    {
        file_refs.push(("openapi.path".into(), path.to_string()));
    }
    for field in ["configMapGenerator", "secretGenerator"] {
        for (i, item) in items(k, field).enumerate() {
            for list in ["files", "envs"] {
                for (j, entry) in item
                    .get(list)
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let Some(entry) = entry.as_str() else {
                        continue;
                    };
                    // `files` entries may be `key=path`.
                    let path = entry.split_once('=').map(|(_, p)| p).unwrap_or(entry);
                    file_refs.push((format!("{field}[{i}].{list}[{j}]"), path.to_string()));
                }
            }
            if let Some(env) = item.get("env").and_then(Value::as_str) {
                file_refs.push((format!("{field}[{i}].env"), env.to_string()));
            }
        }
    }

    // Plugins: only kustomize's builtins, given as files or inline.
    for field in ["generators", "transformers", "validators"] {
        for (i, entry) in items(k, field).enumerate() {
            let at = format!("{field}[{i}]");
            match entry {
                Value::String(s)
                    if s.contains('\n') || s.trim_start().starts_with("apiVersion") =>
                {
                    check_plugin_text(&file, &at, s, limits)?
                }
                Value::String(s) => {
                    check_local(&file, &at, s)?;
                    let path = resolve(&file, dir, &at, s)?;
                    if tree.is_dir(&path) && tree.get(&path).is_none() {
                        visit(tree, &path, options, limits, graph, stack)?;
                    } else {
                        need_file(tree, &file, &at, &path, limits, graph)?;
                        let text = read_text(tree, &path, limits)?;
                        check_plugin_text(&path, &at, &text, limits)?;
                    }
                }
                Value::Object(_) => check_plugin(&file, &at, entry)?,
                _ => return Err(kerr(&file, format!("{at}: expected a path or a mapping"))),
            }
        }
    }

    // Helm inflation.
    let helm_fields = ["helmCharts", "helmChartInflationGenerator", "helmGlobals"];
    if helm_fields.iter().any(|f| k.contains_key(*f)) {
        if !options.enable_helm {
            return Err(kerr(
                &file,
                "inflates Helm charts (`helmCharts`), which this app does not allow; set `kustomize: {enableHelm: true}` on the app to let it use charts vendored in the repository",
            ));
        }
        let chart_home = k
            .get("helmGlobals")
            .and_then(|g| g.get("chartHome"))
            .and_then(Value::as_str)
            .unwrap_or("charts");
        check_local(&file, "helmGlobals.chartHome", chart_home)?;
        let home = resolve(&file, dir, "helmGlobals.chartHome", chart_home)?;
        for field in ["helmCharts", "helmChartInflationGenerator"] {
            for (i, chart) in items(k, field).enumerate() {
                let at = format!("{field}[{i}]");
                if chart
                    .get("repo")
                    .and_then(Value::as_str)
                    .is_some_and(|r| !r.is_empty())
                {
                    return Err(kerr(
                        &file,
                        format!(
                            "{at}: charts from a chart repository (`repo`) cannot be fetched by a render; vendor the chart under {} or make it a `helm:` app",
                            display(&home)
                        ),
                    ));
                }
                let name = chart
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| kerr(&file, format!("{at}: `name` is required")))?;
                check_local(&file, &format!("{at}.name"), name)?;
                let chart_dir = resolve(&file, &home, &format!("{at}.name"), name)?;
                if tree.get(&format!("{chart_dir}/Chart.yaml")).is_none() {
                    return Err(kerr(
                        &file,
                        format!("{at}: no chart {name:?} vendored at {chart_dir} (no Chart.yaml)"),
                    ));
                }
                graph
                    .files
                    .extend(super::helm::files_under(tree, &chart_dir, limits)?);
                for key in ["valuesFile", "additionalValuesFiles"] {
                    let values: Vec<&str> = match chart.get(key) {
                        Some(Value::String(s)) => vec![s.as_str()],
                        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
                        _ => Vec::new(),
                    };
                    for v in values {
                        file_refs.push((format!("{at}.{key}"), v.to_string()));
                    }
                }
            }
        }
    }

    for (at, reference) in file_refs {
        check_local(&file, &at, &reference)?;
        let path = resolve(&file, dir, &at, &reference)?;
        need_file(tree, &file, &at, &path, limits, graph)?;
    }
    stack.pop();
    Ok(())
}

/// The kustomization file of `dir`, if it has one.
pub(crate) fn kustomization_file(tree: &RepoTree, dir: &str) -> Option<String> {
    KUSTOMIZATION_FILES.iter().find_map(|name| {
        let path = join(dir, name);
        tree.get(&path).map(|_| path)
    })
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn display(dir: &str) -> String {
    if dir.is_empty() {
        ".".into()
    } else {
        dir.into()
    }
}

fn strings(
    k: &serde_json::Map<String, Value>,
    field: &str,
    file: &str,
) -> Result<Vec<String>, RenderError> {
    match k.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| kerr(file, format!("{field}[{i}]: expected a string")))
            })
            .collect(),
        Some(_) => Err(kerr(file, format!("{field}: expected a list"))),
    }
}

fn items<'a>(
    k: &'a serde_json::Map<String, Value>,
    field: &str,
) -> impl Iterator<Item = &'a Value> + use<'a> {
    k.get(field)
        .and_then(Value::as_array)
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
}

/// Refuses references that would make kustomize reach the network or the hub's own files.
fn check_local(file: &str, at: &str, reference: &str) -> Result<(), RenderError> {
    let r = reference.trim();
    let remote = r.contains("://")
        || r.starts_with("git@")
        || r.starts_with("github.com/")
        || r.starts_with("gitlab.com/")
        || r.starts_with("bitbucket.org/")
        || r.contains("?ref=")
        || r.contains("?version=")
        || r.contains("//") && !r.starts_with('/');
    if remote {
        return Err(kerr(
            file,
            format!(
                "{at}: {reference:?} is a remote base or resource; a render has no network, so everything it reads must be in the repository"
            ),
        ));
    }
    if r.starts_with('/') || r.starts_with('~') {
        return Err(kerr(
            file,
            format!(
                "{at}: {reference:?} is an absolute path; paths are relative to the kustomization"
            ),
        ));
    }
    Ok(())
}

/// `reference` relative to `dir`, as a repository path; an error if it climbs above the root.
fn resolve(file: &str, dir: &str, at: &str, reference: &str) -> Result<String, RenderError> {
    let mut parts: Vec<&str> = if dir.is_empty() {
        Vec::new()
    } else {
        dir.split('/').collect()
    };
    for component in reference.trim().split('/') {
        match component {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(kerr(
                        file,
                        format!("{at}: {reference:?} reaches outside the repository"),
                    ));
                }
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

fn need_file(
    tree: &RepoTree,
    file: &str,
    at: &str,
    path: &str,
    limits: &Limits,
    graph: &mut Graph,
) -> Result<(), RenderError> {
    match tree.get(path) {
        Some(TreeEntry::File(bytes)) => {
            if bytes.len() as u64 > limits.max_file_bytes {
                return Err(RenderError::FileTooLarge {
                    path: path.to_string(),
                    size: bytes.len() as u64,
                    limit: limits.max_file_bytes,
                });
            }
            graph.files.insert(path.to_string());
            Ok(())
        }
        Some(TreeEntry::TooLarge(size)) => Err(RenderError::FileTooLarge {
            path: path.to_string(),
            size: *size,
            limit: limits.max_file_bytes,
        }),
        Some(TreeEntry::Symlink(_)) => Err(kerr(
            file,
            format!("{at}: {path} is a symlink; symlinks are never followed"),
        )),
        Some(TreeEntry::Submodule) => Err(kerr(file, format!("{at}: {path} is a submodule"))),
        None => Err(kerr(
            file,
            format!("{at}: {path} does not exist in commit {}", tree.commit),
        )),
    }
}

fn read_text(tree: &RepoTree, path: &str, limits: &Limits) -> Result<String, RenderError> {
    match tree.get(path) {
        Some(TreeEntry::File(bytes)) if bytes.len() as u64 <= limits.max_file_bytes => {
            String::from_utf8(bytes.clone()).map_err(|e| RenderError::Parse {
                path: path.to_string(),
                message: format!("not UTF-8: {e}"),
            })
        }
        Some(TreeEntry::File(bytes)) => Err(RenderError::FileTooLarge {
            path: path.to_string(),
            size: bytes.len() as u64,
            limit: limits.max_file_bytes,
        }),
        Some(TreeEntry::TooLarge(size)) => Err(RenderError::FileTooLarge {
            path: path.to_string(),
            size: *size,
            limit: limits.max_file_bytes,
        }),
        Some(TreeEntry::Symlink(_)) => Err(RenderError::Symlink {
            path: path.to_string(),
        }),
        Some(TreeEntry::Submodule) => Err(RenderError::Submodule {
            path: path.to_string(),
        }),
        None => Err(kerr(path, "does not exist")),
    }
}

fn check_plugin_text(file: &str, at: &str, text: &str, limits: &Limits) -> Result<(), RenderError> {
    let docs = yaml::parse_documents(text, limits).map_err(|e| RenderError::Parse {
        path: file.to_string(),
        message: e.to_string(),
    })?;
    for doc in &docs {
        check_plugin(file, at, doc)?;
    }
    Ok(())
}

/// A plugin configuration is allowed only when it names one of kustomize's builtin plugins.
fn check_plugin(file: &str, at: &str, config: &Value) -> Result<(), RenderError> {
    let annotations = config
        .pointer("/metadata/annotations")
        .and_then(Value::as_object);
    let function = annotations.is_some_and(|a| {
        a.contains_key("config.kubernetes.io/function") || a.contains_key("config.k8s.io/function")
    });
    if function {
        return Err(kerr(
            file,
            format!(
                "{at}: is an exec or container KRM function (config.kubernetes.io/function); renders run no plugins"
            ),
        ));
    }
    let api_version = config
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    if api_version != "builtin" {
        let kind = config.get("kind").and_then(Value::as_str).unwrap_or("?");
        return Err(kerr(
            file,
            format!(
                "{at}: plugin {api_version}/{kind} is not one of kustomize's builtins (apiVersion: builtin); renders run no plugins"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> RepoTree {
        let mut t = RepoTree::new("c0ffee");
        for (p, c) in files {
            t = t.with_file(p, *c);
        }
        t
    }

    fn err(files: &[(&str, &str)], dir: &str) -> String {
        graph(
            &tree(files),
            dir,
            &KustomizeSpec::default(),
            &Limits::default(),
        )
        .unwrap_err()
        .to_string()
    }

    #[test]
    fn overlay_reads_its_base_components_and_generator_files() {
        let t = tree(&[
            ("base/kustomization.yaml", "resources: [deploy.yaml]\n"),
            ("base/deploy.yaml", "kind: X\n"),
            ("base/unrelated.md", "x"),
            (
                "components/tls/kustomization.yaml",
                "kind: Component\nresources: [cert.yaml]\n",
            ),
            ("components/tls/cert.yaml", "kind: X\n"),
            (
                "overlays/prod/kustomization.yaml",
                "resources: [../../base]\ncomponents: [../../components/tls]\npatches:\n  - path: patch.yaml\nconfigMapGenerator:\n  - name: cfg\n    files: [app.properties, key=other.txt]\n",
            ),
            ("overlays/prod/patch.yaml", "kind: X\n"),
            ("overlays/prod/app.properties", "a=b\n"),
            ("overlays/prod/other.txt", "x\n"),
            (
                "overlays/dev/kustomization.yaml",
                "resources: [../../base]\n",
            ),
        ]);
        let g = graph(
            &t,
            "overlays/prod",
            &KustomizeSpec::default(),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(g.dirs, ["overlays/prod", "base", "components/tls"]);
        let files: Vec<&str> = g.files.iter().map(String::as_str).collect();
        assert_eq!(
            files,
            [
                "base/deploy.yaml",
                "base/kustomization.yaml",
                "components/tls/cert.yaml",
                "components/tls/kustomization.yaml",
                "overlays/prod/app.properties",
                "overlays/prod/kustomization.yaml",
                "overlays/prod/other.txt",
                "overlays/prod/patch.yaml",
            ]
        );
    }

    /// (files, app directory, substrings of the error).
    type RefusalCase<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a [&'a str]);

    #[test]
    fn refusals_name_the_file_and_the_reference() {
        let cases: &[RefusalCase<'_>] = &[
            (
                &[(
                    "a/kustomization.yaml",
                    "resources: [\"https://github.com/org/repo//base?ref=v1\"]\n",
                )],
                "a",
                &["a/kustomization.yaml", "resources[0]", "remote base"],
            ),
            (
                &[(
                    "a/kustomization.yaml",
                    "resources: [github.com/org/repo/base]\n",
                )],
                "a",
                &["remote base"],
            ),
            (
                &[("a/kustomization.yaml", "resources: [../missing]\n")],
                "a",
                &[
                    "a/kustomization.yaml",
                    "resources[0]",
                    "\"../missing\"",
                    "does not exist",
                ],
            ),
            (
                &[("a/kustomization.yaml", "resources: [../../etc]\n")],
                "a",
                &["reaches outside the repository"],
            ),
            (
                &[("a/kustomization.yaml", "resources: [/etc/passwd]\n")],
                "a",
                &["absolute path"],
            ),
            (
                &[
                    ("a/kustomization.yaml", "generators: [gen.yaml]\n"),
                    (
                        "a/gen.yaml",
                        "apiVersion: example.com/v1\nkind: Exec\nmetadata:\n  name: x\n  annotations:\n    config.kubernetes.io/function: |\n      exec: {path: /bin/sh}\n",
                    ),
                ],
                "a",
                &["a/gen.yaml", "KRM function"],
            ),
            (
                &[
                    ("a/kustomization.yaml", "transformers: [t.yaml]\n"),
                    (
                        "a/t.yaml",
                        "apiVersion: someteam.example.com/v1\nkind: ChartInflator\n",
                    ),
                ],
                "a",
                &["not one of kustomize's builtins"],
            ),
            (
                &[("a/kustomization.yaml", "helmCharts:\n  - name: web\n")],
                "a",
                &["a/kustomization.yaml", "enableHelm"],
            ),
            (
                &[
                    ("a/kustomization.yaml", "resources: [../b]\n"),
                    ("b/kustomization.yaml", "resources: [../a]\n"),
                ],
                "a",
                &["cycle", "a -> b -> a"],
            ),
            (
                &[("a/x.yaml", "kind: X\n")],
                "a",
                &["no kustomization.yaml"],
            ),
        ];
        for (files, dir, wants) in cases {
            let msg = err(files, dir);
            for want in *wants {
                assert!(msg.contains(want), "{msg:?} lacks {want:?}");
            }
        }
    }

    #[test]
    fn helm_inflation_needs_the_option_and_a_vendored_chart() {
        let files = [
            (
                "a/kustomization.yaml",
                "helmCharts:\n  - name: web\n    valuesFile: values.yaml\n",
            ),
            ("a/values.yaml", "x: 1\n"),
            ("a/charts/web/Chart.yaml", "name: web\n"),
            ("a/charts/web/templates/cm.yaml", "kind: X\n"),
        ];
        let on = KustomizeSpec { enable_helm: true };
        let g = graph(&tree(&files), "a", &on, &Limits::default()).unwrap();
        assert!(g.files.contains("a/charts/web/templates/cm.yaml"));
        assert!(g.files.contains("a/values.yaml"));
        let remote = [(
            "a/kustomization.yaml",
            "helmCharts:\n  - name: web\n    repo: https://charts.example\n",
        )];
        let msg = graph(&tree(&remote), "a", &on, &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("cannot be fetched by a render"), "{msg}");
    }
}
