//! minijinja templates: sandboxed, strict about undefined variables, and fuel-limited.

use flotilla_common::limits::Limits;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde_json::Value;

use super::RenderError;
use super::documents::AppFiles;

/// Work one template render may do. minijinja charges about one fuel per instruction and per
/// 64 bytes of data it creates, so this bounds both time and memory (about 128 MiB) of a runaway template.
pub(super) const TEMPLATE_FUEL: u64 = 2_000_000;

/// Renders every output template of `files` with `context`; returns (repository path, output) in path order.
pub(super) fn render_all(
    files: &AppFiles<'_>,
    context: &Value,
    limits: &Limits,
) -> Result<Vec<(String, String)>, RenderError> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(TEMPLATE_FUEL));
    // Output is YAML, never HTML: escaping would corrupt it.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    for (name, path, bytes) in &files.templates {
        let source = std::str::from_utf8(bytes).map_err(|e| RenderError::Parse {
            path: path.clone(),
            message: format!("not UTF-8: {e}"),
        })?;
        env.add_template_owned(name.clone(), source.to_string())
            .map_err(|e| template_error(path, &e))?;
    }
    let context = minijinja::Value::from(minijinja::value::Serde(context));
    let mut out = Vec::with_capacity(files.outputs.len());
    for (name, path) in &files.outputs {
        let template = env
            .get_template(name)
            .map_err(|e| template_error(path, &e))?;
        let text = template
            .render(context.clone())
            .map_err(|e| template_error(path, &e))?;
        if text.len() as u64 > limits.max_file_bytes {
            return Err(RenderError::FileTooLarge {
                path: path.clone(),
                size: text.len() as u64,
                limit: limits.max_file_bytes,
            });
        }
        out.push((path.clone(), text));
    }
    Ok(out)
}

fn template_error(path: &str, e: &minijinja::Error) -> RenderError {
    RenderError::Template {
        path: path.to_string(),
        message: e.to_string(),
    }
}

/// The parts of `cluster` the app's templates read (`cluster.name`, `cluster.labels.region`, or `cluster`
/// as a whole when a template takes it apart dynamically), so a render is shared by every cluster that
/// agrees on them.
pub(super) fn cluster_reads(
    files: &AppFiles<'_>,
) -> Result<std::collections::BTreeSet<String>, RenderError> {
    let mut env = Environment::new();
    let mut reads = std::collections::BTreeSet::new();
    for (name, path, bytes) in &files.templates {
        let source = std::str::from_utf8(bytes).map_err(|e| RenderError::Parse {
            path: path.clone(),
            message: format!("not UTF-8: {e}"),
        })?;
        // `debug()` prints the whole context.
        if source.contains("debug(") {
            reads.insert("cluster".to_string());
        }
        env.add_template_owned(name.clone(), source.to_string())
            .map_err(|e| template_error(path, &e))?;
    }
    for (name, path, _) in &files.templates {
        let template = env
            .get_template(name)
            .map_err(|e| template_error(path, &e))?;
        for var in template.undeclared_variables(true) {
            if var == "cluster" || var.starts_with("cluster.") {
                reads.insert(var);
            }
        }
    }
    Ok(reads)
}
