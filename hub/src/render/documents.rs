//! Which files of an app directory are read, and how plain YAML/JSON becomes documents.

use flotilla_common::limits::Limits;
use flotilla_common::yaml;
use gix::bstr::ByteSlice;
use gix::glob::{Pattern, pattern::Case, wildmatch};
use serde_json::Value;

use super::{RenderError, SourcedDoc, TreeEntry};
use crate::manifest::{RenderMode, is_manifest_file};
use crate::render::RepoTree;

/// What a file is to the renderer, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    /// `*.yaml`, `*.yml`, `*.json`.
    Manifest,
    /// `*.yaml.j2`, `*.yml.j2`, `*.yaml.tmpl`, `*.yml.tmpl`: rendered, output parsed as YAML.
    OutputTemplate,
    /// Any other `*.j2` / `*.tmpl`: available to `include`, `import` and `extends`.
    HelperTemplate,
    /// Everything else is not read.
    Other,
}

fn file_kind(name: &str) -> FileKind {
    const OUTPUT: [&str; 4] = [".yaml.j2", ".yml.j2", ".yaml.tmpl", ".yml.tmpl"];
    if OUTPUT.iter().any(|s| name.ends_with(s)) {
        FileKind::OutputTemplate
    } else if name.ends_with(".j2") || name.ends_with(".tmpl") {
        FileKind::HelperTemplate
    } else if name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json") {
        FileKind::Manifest
    } else {
        FileKind::Other
    }
}

/// gitignore-style patterns relative to the app directory; the last matching pattern wins, and a file
/// below an ignored directory is ignored whatever later patterns say, as in git.
pub(super) struct IgnoreRules(Vec<Pattern>);

impl IgnoreRules {
    /// Parses the app's `ignore` list.
    pub(super) fn new(patterns: &[String]) -> Self {
        IgnoreRules(
            patterns
                .iter()
                .flat_map(|p| {
                    gix::ignore::parse(p.as_bytes(), false).map(|(pattern, _, _)| pattern)
                })
                .collect(),
        )
    }

    /// True when the file at `rel` (relative to the app directory) is ignored.
    pub(super) fn is_ignored(&self, rel: &str) -> bool {
        if self.0.is_empty() {
            return false;
        }
        rel.match_indices('/')
            .any(|(i, _)| self.matches(&rel[..i], true))
            || self.matches(rel, false)
    }

    fn matches(&self, path: &str, is_dir: bool) -> bool {
        let basename_pos = path.rfind('/').map(|p| p + 1);
        let mut ignored = false;
        for pattern in &self.0 {
            if pattern.matches_repo_relative_path(
                path.as_bytes().as_bstr(),
                basename_pos,
                Some(is_dir),
                Case::Sensitive,
                wildmatch::Mode::NO_MATCH_SLASH_LITERAL,
            ) {
                ignored = !pattern.is_negative();
            }
        }
        ignored
    }
}

/// The files of one app directory that rendering reads, each under its repository path.
pub(super) struct AppFiles<'a> {
    /// Plain manifests, in path order.
    pub manifests: Vec<(String, &'a [u8])>,
    /// Templates whose output is rendered: (name relative to the app directory, repository path).
    pub outputs: Vec<(String, String)>,
    /// Every template, helpers included: (name relative to the app directory, repository path, source).
    pub templates: Vec<(String, String, &'a [u8])>,
    has_kustomization: bool,
    has_chart: bool,
}

impl<'a> AppFiles<'a> {
    /// Lists what rendering reads below `dir`, less `ignore`; any symlink or submodule left is an error.
    pub(super) fn collect(
        tree: &'a RepoTree,
        dir: &str,
        ignore: &[String],
        limits: &Limits,
    ) -> Result<Self, RenderError> {
        let rules = IgnoreRules::new(ignore);
        let mut files = AppFiles {
            manifests: Vec::new(),
            outputs: Vec::new(),
            templates: Vec::new(),
            has_kustomization: false,
            has_chart: false,
        };
        for (rel, entry) in tree.entries_under(dir) {
            let path = if dir.is_empty() {
                rel.to_string()
            } else {
                format!("{dir}/{rel}")
            };
            // Every `flotilla.yaml` is a manifest of the Source, at any depth, never an object.
            if is_manifest_file(&path) || rules.is_ignored(rel) {
                continue;
            }
            let kind = file_kind(rel.rsplit('/').next().unwrap_or(rel));
            let bytes = match entry {
                TreeEntry::Symlink(_) => return Err(RenderError::Symlink { path }),
                TreeEntry::Submodule => return Err(RenderError::Submodule { path }),
                TreeEntry::TooLarge(size) if kind != FileKind::Other => {
                    return Err(RenderError::FileTooLarge {
                        path,
                        size: *size,
                        limit: limits.max_file_bytes,
                    });
                }
                TreeEntry::TooLarge(_) => continue,
                TreeEntry::File(bytes) => bytes.as_slice(),
            };
            if bytes.len() as u64 > limits.max_file_bytes && kind != FileKind::Other {
                return Err(RenderError::FileTooLarge {
                    path,
                    size: bytes.len() as u64,
                    limit: limits.max_file_bytes,
                });
            }
            match rel {
                "kustomization.yaml" | "kustomization.yml" | "Kustomization" => {
                    files.has_kustomization = true
                }
                "Chart.yaml" => files.has_chart = true,
                _ => {}
            }
            match kind {
                FileKind::Manifest => files.manifests.push((path, bytes)),
                FileKind::OutputTemplate => {
                    files.outputs.push((rel.to_string(), path.clone()));
                    files.templates.push((rel.to_string(), path, bytes));
                }
                FileKind::HelperTemplate => files.templates.push((rel.to_string(), path, bytes)),
                FileKind::Other => {}
            }
        }
        Ok(files)
    }

    /// What `render: auto` picks for this directory.
    pub(super) fn detect_mode(&self) -> RenderMode {
        if self.has_kustomization {
            RenderMode::Kustomize
        } else if self.has_chart {
            RenderMode::Helm
        } else if !self.outputs.is_empty() {
            RenderMode::Template
        } else {
            RenderMode::Raw
        }
    }
}

/// Parses a plain manifest: JSON for `*.json`, multi-document YAML otherwise.
pub(super) fn parse_file(
    path: &str,
    bytes: &[u8],
    limits: &Limits,
) -> Result<Vec<SourcedDoc>, RenderError> {
    let text = std::str::from_utf8(bytes).map_err(|e| RenderError::Parse {
        path: path.to_string(),
        message: format!("not UTF-8: {e}"),
    })?;
    if path.ends_with(".json") {
        let value: Value = serde_json::from_str(text).map_err(|e| RenderError::Parse {
            path: path.to_string(),
            message: format!(
                "invalid JSON at line {} column {}: {}",
                e.line(),
                e.column(),
                json_problem(&e)
            ),
        })?;
        if depth(&value) > limits.max_yaml_depth {
            return Err(RenderError::Parse {
                path: path.to_string(),
                message: format!("nesting deeper than {} levels", limits.max_yaml_depth),
            });
        }
        let mut docs = Vec::new();
        if !value.is_null() {
            flatten(format!("{path} (document 1)"), value, &mut docs);
        }
        Ok(docs)
    } else {
        parse_yaml(path, text, limits)
    }
}

/// serde_json's message without its trailing position, which we print ourselves.
fn json_problem(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    }
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Parses multi-document YAML (a plain file or a template's output); empty documents are skipped.
pub(super) fn parse_yaml(
    path: &str,
    text: &str,
    limits: &Limits,
) -> Result<Vec<SourcedDoc>, RenderError> {
    let values = yaml::parse_documents(text, limits).map_err(|e| RenderError::Parse {
        path: path.to_string(),
        message: e.to_string(),
    })?;
    let mut docs = Vec::new();
    for (i, value) in values.into_iter().enumerate() {
        flatten(format!("{path} (document {})", i + 1), value, &mut docs);
    }
    Ok(docs)
}

/// `List` and `*List` kinds with an `items` array become their items (recursively); other documents pass through.
fn flatten(origin: String, value: Value, out: &mut Vec<SourcedDoc>) {
    let is_list = value
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k.ends_with("List"))
        && value.get("items").is_some_and(Value::is_array);
    if !is_list {
        out.push(SourcedDoc { origin, value });
        return;
    }
    let Value::Object(mut map) = value else {
        unreachable!("a List has fields")
    };
    let Some(Value::Array(items)) = map.remove("items") else {
        unreachable!("checked above")
    };
    for (i, item) in items.into_iter().enumerate() {
        flatten(format!("{origin} item {i}"), item, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignore_rules_follow_gitignore() {
        let rules = IgnoreRules::new(&[
            "overlays/".into(),
            "*.md".into(),
            "/top.yaml".into(),
            "!keep.md".into(),
            "# comment".into(),
        ]);
        let cases = [
            ("overlays/edge/a.yaml", true),
            ("x/overlays/a.yaml", true),
            ("overlays.yaml", false),
            ("README.md", true),
            ("docs/guide.md", true),
            ("keep.md", false),
            ("top.yaml", true),
            ("sub/top.yaml", false),
            ("deploy.yaml", false),
        ];
        for (path, want) in cases {
            assert_eq!(rules.is_ignored(path), want, "{path}");
        }
        assert!(!IgnoreRules::new(&[]).is_ignored("a.yaml"));
    }

    #[test]
    fn file_kinds() {
        let cases = [
            ("a.yaml", FileKind::Manifest),
            ("a.yml", FileKind::Manifest),
            ("a.json", FileKind::Manifest),
            ("a.yaml.j2", FileKind::OutputTemplate),
            ("a.yml.tmpl", FileKind::OutputTemplate),
            ("_helpers.j2", FileKind::HelperTemplate),
            ("README.md", FileKind::Other),
            ("yaml", FileKind::Other),
        ];
        for (name, want) in cases {
            assert_eq!(file_kind(name), want, "{name}");
        }
    }
}
