//! Parsing YAML from untrusted repositories with budgets.
//!
//! serde-saphyr enforces depth, alias and event budgets while parsing, so a
//! "billion laughs" document fails in milliseconds instead of expanding.

use serde_json::Value;

use crate::limits::Limits;

/// YAML that could not be parsed or broke a budget.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct YamlError(String);

fn options(limits: &Limits) -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = limits.max_yaml_depth;
    budget.max_aliases = limits.max_yaml_aliases;
    budget.max_reader_input_bytes = Some(limits.max_file_bytes as usize);
    budget.max_total_scalar_bytes = (limits.max_file_bytes as usize).saturating_mul(2);
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.with_snippet = false;
    // Only `true`/`false` are booleans (YAML 1.2, as kustomize and Helm read it): `y` stays a string.
    options.strict_booleans = true;
    options
}

fn check_size(text: &str, limits: &Limits) -> Result<(), YamlError> {
    if text.len() as u64 > limits.max_file_bytes {
        return Err(YamlError(format!(
            "{} bytes is over the {} byte limit for one file",
            text.len(),
            limits.max_file_bytes
        )));
    }
    Ok(())
}

/// Parses every document of a multi-document YAML stream; empty documents are skipped.
pub fn parse_documents(text: &str, limits: &Limits) -> Result<Vec<Value>, YamlError> {
    check_size(text, limits)?;
    let docs: Vec<Value> = with_deep_stack(|| {
        serde_saphyr::from_multiple_with_options(text, options(limits))
            .map_err(|e| YamlError(e.to_string()))
    })?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Parses one YAML document into `T`, rejecting unknown fields where `T` does.
pub fn parse_one<T: serde::de::DeserializeOwned + Send>(
    text: &str,
    limits: &Limits,
) -> Result<T, YamlError> {
    check_size(text, limits)?;
    with_deep_stack(|| {
        serde_saphyr::from_str_with_options(text, options(limits))
            .map_err(|e| YamlError(e.to_string()))
    })
}

/// Deserialization recurses once per nesting level, and the depth budget is
/// only checked on the way down; a dedicated thread with a large stack keeps a
/// document at the depth limit from overflowing a small (test or tokio) stack.
fn with_deep_stack<T: Send>(
    f: impl FnOnce() -> Result<T, YamlError> + Send,
) -> Result<T, YamlError> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("yaml-parse".into())
            .stack_size(64 * 1024 * 1024)
            .spawn_scoped(scope, f)
            .map_err(|e| YamlError(format!("cannot start parser thread: {e}")))?
            .join()
            .unwrap_or_else(|_| Err(YamlError("YAML parser panicked".into())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document() {
        let docs = parse_documents("a: 1\n---\n---\nb: [x, y]\n", &Limits::default()).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1]["b"][1], "y");
    }

    #[test]
    fn billion_laughs_is_rejected_quickly() {
        let mut y = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for (i, c) in ('b'..='i').enumerate() {
            let prev = (b'a' + i as u8) as char;
            y.push_str(&format!(
                "{c}: &{c} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
            ));
        }
        let err = parse_documents(&y, &Limits::default()).unwrap_err();
        assert!(!err.to_string().is_empty());
    }

    #[test]
    fn too_deep_is_rejected() {
        let ok = format!("{}1{}", "[".repeat(95), "]".repeat(95));
        assert!(parse_documents(&ok, &Limits::default()).is_ok());
        let y = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(parse_documents(&y, &Limits::default()).is_err());
        let block: String = (0..150)
            .map(|i| format!("{}k:\n", "  ".repeat(i)))
            .collect();
        assert!(parse_documents(&block, &Limits::default()).is_err());
    }

    #[test]
    fn broken_yaml_has_error() {
        assert!(parse_documents("a: [1, 2\nb: {", &Limits::default()).is_err());
    }
}
