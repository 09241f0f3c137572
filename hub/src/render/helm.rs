//! `render: helm`: `helm template` on a chart from the repository (exported from the git object database
//! into the render's private directory, vendored subcharts under `charts/` included) or on a verified
//! archive from a chart repository.
//!
//! Release name = app name, namespace = the app's namespace. Values, later winning, deep-merged by Helm:
//! the chart's `values.yaml`, the app's `valuesFiles`, the app's `values`, the target's `valuesFiles`, the
//! target's `values`. CRDs under `crds/` are included (`--include-crds`). Hooks (`helm.sh/hook`) are left
//! out, as `helm template --no-hooks` users expect: Flotilla applies a desired state and has no install or
//! upgrade lifecycle to run hooks in; each render names what it left out in a note.

use std::path::Path;

use flotilla_common::capabilities::Capabilities;
use flotilla_common::limits::Limits;
use serde_json::Value;

use super::external::{self, ToolRun, Tools};
use super::{RenderError, RepoTree, SourcedDoc, TreeEntry, documents};

/// What one `helm template` run takes.
pub(crate) struct HelmRun<'a> {
    /// The app (release) name.
    pub release: &'a str,
    /// Release namespace.
    pub namespace: &'a str,
    /// Repository directory of the chart, or `None` for an archive.
    pub chart_dir: Option<&'a str>,
    /// A verified chart archive from a chart repository.
    pub archive: Option<&'a Path>,
    /// Values files (repository paths) and inline values, in layering order.
    pub values: Vec<ValuesLayer<'a>>,
    /// Passed as `--kube-version` / `--api-versions`.
    pub capabilities: &'a Capabilities,
    /// What is being rendered, for messages.
    pub subject: &'a str,
}

/// One layer of values.
pub(crate) enum ValuesLayer<'a> {
    /// A values file in the repository.
    File(&'a str),
    /// Values written in `flotilla.yaml`.
    Inline(&'a serde_json::Map<String, Value>),
}

/// Renders the chart; returns its documents and a note for each hook left out.
pub(crate) fn render(
    tree: &RepoTree,
    run: &HelmRun<'_>,
    tools: &Tools,
    limits: &Limits,
) -> Result<(Vec<SourcedDoc>, Vec<String>), RenderError> {
    let helm = tools.helm()?;
    let work = tools.work_dir()?;
    let io = |what: String| {
        move |e: std::io::Error| RenderError::Io {
            what,
            message: e.to_string(),
        }
    };
    let chart_path = match (run.chart_dir, run.archive) {
        (Some(dir), _) => {
            let dest = work.path().join("chart");
            export_dir(tree, dir, &dest, limits)?;
            dest
        }
        (None, Some(archive)) => archive.to_path_buf(),
        (None, None) => unreachable!("a helm render has a chart directory or an archive"),
    };
    let mut args = vec![
        "template".to_string(),
        run.release.to_string(),
        chart_path.display().to_string(),
        "--namespace".into(),
        run.namespace.to_string(),
        "--include-crds".into(),
    ];
    for (i, layer) in run.values.iter().enumerate() {
        let path = work.path().join(format!("values-{i}.yaml"));
        let bytes = match layer {
            ValuesLayer::File(repo_path) => match tree.get(repo_path) {
                Some(TreeEntry::File(bytes)) => bytes.clone(),
                Some(TreeEntry::Symlink(_)) => {
                    return Err(RenderError::Symlink {
                        path: repo_path.to_string(),
                    });
                }
                Some(TreeEntry::TooLarge(size)) => {
                    return Err(RenderError::FileTooLarge {
                        path: repo_path.to_string(),
                        size: *size,
                        limit: limits.max_file_bytes,
                    });
                }
                Some(TreeEntry::Submodule) | None => {
                    return Err(RenderError::Path {
                        path: repo_path.to_string(),
                        problem: format!("values file not found in commit {}", tree.commit),
                    });
                }
            },
            // JSON is YAML.
            ValuesLayer::Inline(map) => serde_json::to_vec(map).expect("values serialize"),
        };
        std::fs::write(&path, bytes).map_err(io(format!("cannot write {}", path.display())))?;
        args.push("--values".into());
        args.push(path.display().to_string());
    }
    if let Some(version) = &run.capabilities.kube_version {
        args.push("--kube-version".into());
        args.push(version.clone());
    }
    for api in &run.capabilities.api_versions {
        args.push("--api-versions".into());
        args.push(api.clone());
    }
    let out = external::run(ToolRun {
        tool: "helm",
        subject: run.subject,
        program: helm,
        args,
        dir: work.path(),
        max_output: limits.max_state_bytes,
        timeout: tools.timeout,
    })?;
    let text = String::from_utf8(out).map_err(|e| RenderError::Tool {
        tool: "helm",
        path: run.subject.to_string(),
        message: format!("printed output that is not UTF-8: {e}"),
    })?;
    let mut docs = Vec::new();
    for (source, chunk) in sections(&text) {
        let origin = format!("{}: {source}", run.subject);
        docs.extend(documents::parse_yaml(&origin, chunk, limits)?);
    }
    let mut notes = Vec::new();
    docs.retain(|doc| {
        let hook = doc
            .value
            .pointer("/metadata/annotations/helm.sh~1hook")
            .and_then(Value::as_str);
        match hook {
            Some(hook) => {
                let kind = doc.value.get("kind").and_then(Value::as_str).unwrap_or("?");
                let name = doc
                    .value
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("?");
                notes.push(format!(
                    "left out Helm hook {kind}/{name} ({hook}) from {}; hooks do not run under Flotilla",
                    doc.origin
                ));
                false
            }
            None => true,
        }
    });
    Ok((docs, notes))
}

/// Helm refuses a chart whose `Chart.yaml` `kubeVersion:` constraint the cluster's version does not meet
/// (with Helm's message); the check is made here too, so every `helm` gives the same answer.
pub(crate) fn check_kube_version(
    tree: &RepoTree,
    dir: &str,
    kube: &str,
    subject: &str,
    limits: &Limits,
) -> Result<(), RenderError> {
    use crate::source::charts::version::{VersionRange, parse_version};
    let path = if dir.is_empty() {
        "Chart.yaml".to_string()
    } else {
        format!("{dir}/Chart.yaml")
    };
    let Some(TreeEntry::File(bytes)) = tree.get(&path) else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(bytes);
    let chart: Value =
        flotilla_common::yaml::parse_one(&text, limits).map_err(|e| RenderError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
    let Some(constraint) = chart.get("kubeVersion").and_then(Value::as_str) else {
        return Ok(());
    };
    let tool_err = |message: String| RenderError::Tool {
        tool: "helm",
        path: subject.to_string(),
        message,
    };
    let range = VersionRange::parse(constraint).map_err(|e| {
        tool_err(format!(
            "{path}: kubeVersion {constraint:?} is not a version constraint: {e}"
        ))
    })?;
    let compatible = parse_version(kube).is_some_and(|v| range.matches(&v));
    if !compatible {
        return Err(tool_err(format!(
            "chart requires kubeVersion: {constraint} which is incompatible with Kubernetes {kube}"
        )));
    }
    Ok(())
}

/// `helm template` output split at its `# Source: PATH` comments: (path, text) in output order.
fn sections(text: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut source = "(helm template)";
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if let Some(path) = line.strip_prefix("# Source: ") {
            out.push((source, &text[start..offset]));
            source = path.trim_end();
            start = offset + line.len();
        }
        offset += line.len();
    }
    out.push((source, &text[start..]));
    out.into_iter()
        .map(|(s, chunk)| (s, chunk.trim_end().trim_end_matches("---").trim_end()))
        .filter(|(_, chunk)| !chunk.trim().is_empty())
        .collect()
}

/// Writes the files below `dir` to `dest`, private to the hub; symlinks and submodules are refused, as in
/// every other renderer, so the chart cannot point outside the repository.
pub(crate) fn export_dir(
    tree: &RepoTree,
    dir: &str,
    dest: &Path,
    limits: &Limits,
) -> Result<(), RenderError> {
    let files = files_under(tree, dir, limits)?;
    export_files(tree, files.iter().map(String::as_str), dir, dest)
}

/// Repository paths of every file below `dir`; a symlink, a submodule or a file over the limit is an
/// error naming it, as in every other renderer, so nothing a tool reads can point outside the repository.
pub(crate) fn files_under(
    tree: &RepoTree,
    dir: &str,
    limits: &Limits,
) -> Result<Vec<String>, RenderError> {
    let mut files = Vec::new();
    for (rel, entry) in tree.entries_under(dir) {
        let path = if dir.is_empty() {
            rel.to_string()
        } else {
            format!("{dir}/{rel}")
        };
        match entry {
            TreeEntry::File(_) => files.push(path),
            TreeEntry::TooLarge(size) => {
                return Err(RenderError::FileTooLarge {
                    path,
                    size: *size,
                    limit: limits.max_file_bytes,
                });
            }
            TreeEntry::Symlink(_) => return Err(RenderError::Symlink { path }),
            TreeEntry::Submodule => return Err(RenderError::Submodule { path }),
        }
    }
    Ok(files)
}

/// Writes the given repository files below `dest`, paths taken relative to `base`.
pub(crate) fn export_files<'p>(
    tree: &RepoTree,
    files: impl Iterator<Item = &'p str>,
    base: &str,
    dest: &Path,
) -> Result<(), RenderError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |path: &Path, e: std::io::Error| RenderError::Io {
        what: format!("cannot write {}", path.display()),
        message: e.to_string(),
    };
    for path in files {
        let Some(TreeEntry::File(bytes)) = tree.get(path) else {
            continue;
        };
        let rel = if base.is_empty() {
            path
        } else {
            path.strip_prefix(base)
                .and_then(|p| p.strip_prefix('/'))
                .unwrap_or(path)
        };
        let target = dest.join(rel);
        if let Some(parent) = target.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| io(parent, e))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&target)
            .map_err(|e| io(&target, e))?;
        std::io::Write::write_all(&mut file, bytes).map_err(|e| io(&target, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::sections;

    #[test]
    fn output_splits_at_source_comments() {
        let text = "---\n# Source: c/crds/a.yaml\nkind: A\n---\n# Source: c/templates/b.yaml\nkind: B\n---\nkind: C\n";
        let s = sections(text);
        assert_eq!(
            s,
            [
                ("c/crds/a.yaml", "kind: A"),
                ("c/templates/b.yaml", "kind: B\n---\nkind: C")
            ]
        );
    }
}
