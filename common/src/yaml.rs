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

/// The parser's budget for one file. Documents follow the objects a ClusterState may hold (DESIGN §9: a
/// file may hold every object of a state, and no more). Nodes and events keep serde-saphyr's defaults
/// (250,000 and 1,000,000): raising them with the document count lets an alias bomb run for seconds
/// before it is stopped, and a file of 10,000 small objects still fits.
fn budget(limits: &Limits) -> serde_saphyr::Budget {
    let mut budget = serde_saphyr::Budget::default();
    let max_objects = usize::try_from(limits.max_objects).unwrap_or(usize::MAX);
    budget.max_depth = limits.max_yaml_depth;
    budget.max_aliases = limits.max_yaml_aliases;
    budget.max_reader_input_bytes = Some(limits.max_file_bytes as usize);
    budget.max_total_scalar_bytes = (limits.max_file_bytes as usize).saturating_mul(2);
    budget.max_documents = max_objects;
    budget
}

/// The parser's message as a sentence: a broken budget names the limit and the value, never a Debug dump.
fn describe(error: &serde_saphyr::Error, limits: &Limits) -> String {
    use serde_saphyr::budget::BudgetBreach as B;
    let mut inner = error.without_snippet();
    while let serde_saphyr::Error::AliasError { error, .. } = inner {
        inner = error.without_snippet();
    }
    let serde_saphyr::Error::Budget { breach, location } = inner else {
        return error.to_string();
    };
    let b = budget(limits);
    let what = match breach {
        B::Documents { documents } => format!(
            "{documents} YAML documents is over the limit of {} for one file (the most objects one ClusterState holds)",
            b.max_documents
        ),
        B::Depth { depth } => format!(
            "nesting depth {depth} is over the limit of {} levels",
            b.max_depth
        ),
        B::Aliases { aliases } => format!(
            "{aliases} YAML aliases is over the limit of {} for one file",
            b.max_aliases
        ),
        B::Anchors { anchors } => format!(
            "{anchors} YAML anchors is over the limit of {} for one file",
            b.max_anchors
        ),
        B::AliasAnchorRatio { aliases, anchors } => format!(
            "{aliases} aliases of {anchors} anchors is over the limit of {} aliases per anchor",
            b.alias_anchor_ratio_multiplier
        ),
        B::Nodes { nodes } => format!(
            "{nodes} YAML nodes is over the limit of {} for one file",
            b.max_nodes
        ),
        B::Events { events } => format!(
            "{events} YAML parser events is over the limit of {} for one file",
            b.max_events
        ),
        B::ScalarBytes { total_scalar_bytes } => format!(
            "{total_scalar_bytes} bytes of scalar values is over the limit of {} for one file",
            b.max_total_scalar_bytes
        ),
        B::InputBytes { input_bytes } => format!(
            "{input_bytes} bytes is over the {} byte limit for one file",
            limits.max_file_bytes
        ),
        B::MergeKeys { merge_keys } => format!(
            "{merge_keys} merge keys is over the limit of {} for one file",
            b.max_merge_keys
        ),
        B::RecordedAnchorEvents {
            recorded_anchor_events,
        } => format!(
            "aliases replay {recorded_anchor_events} events, over the limit of {}",
            b.max_recorded_anchor_events
        ),
        B::RecordedAnchorBytes {
            recorded_anchor_bytes,
        } => format!(
            "aliases replay {recorded_anchor_bytes} bytes, over the limit of {}",
            b.max_recorded_anchor_bytes
        ),
        B::SequenceUnbalanced => "a collection is closed that was never opened".to_string(),
        _ => "the YAML is too large or too complex to parse within the hub's limits".to_string(),
    };
    if location.line() > 0 {
        format!("{what} (at line {})", location.line())
    } else {
        what
    }
}

fn options(limits: &Limits) -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget(limits));
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
            .map_err(|e| YamlError(describe(&e, limits)))
    })?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Parses one YAML document into `T`, rejecting unknown fields where `T` does.
pub fn parse_one<T: serde::de::DeserializeOwned + Send>(
    text: &str,
    limits: &Limits,
) -> Result<T, YamlError> {
    parse_one_with(text, limits, false)
}

/// Like [`parse_one`] for one large document an operator chose to read, such as a chart repository's
/// `index.yaml` (tens of thousands of entries): the node and event budgets grow with the input (a node
/// per 4 bytes, an event per byte, never below the defaults), while the depth, alias and anchor-replay
/// budgets that stop an alias bomb stay as they are.
pub fn parse_one_large<T: serde::de::DeserializeOwned + Send>(
    text: &str,
    limits: &Limits,
) -> Result<T, YamlError> {
    parse_one_with(text, limits, true)
}

fn parse_one_with<T: serde::de::DeserializeOwned + Send>(
    text: &str,
    limits: &Limits,
    scale_with_input: bool,
) -> Result<T, YamlError> {
    check_size(text, limits)?;
    with_deep_stack(|| {
        let mut options = options(limits);
        if scale_with_input && let Some(budget) = options.budget.as_mut() {
            budget.max_nodes = budget.max_nodes.max(text.len() / 4);
            budget.max_events = budget.max_events.max(text.len());
        }
        serde_saphyr::from_str_with_options(text, options)
            .map_err(|e| YamlError(describe(&e, limits)))
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
        let err = parse_documents(&y, &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("250001 YAML nodes is over the limit of 250000 for one file"),
            "{err}"
        );
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
    fn a_file_may_hold_as_many_documents_as_a_cluster_state_holds_objects() {
        assert_eq!(budget(&Limits::default()).max_documents, 10_000);
        // Above serde-saphyr's own default of 1,024 documents, cheaply.
        let limits = Limits {
            max_objects: 1_500,
            ..Limits::default()
        };
        let doc = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n";
        let stream = |n: usize| vec![doc; n].join("---\n");
        assert_eq!(
            parse_documents(&stream(1_500), &limits).unwrap().len(),
            1_500
        );
        let err = parse_documents(&stream(1_501), &limits)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("1501 YAML documents is over the limit of 1500 for one file"),
            "{err}"
        );
    }

    #[test]
    fn budget_errors_are_sentences_with_limit_and_value() {
        let small = Limits {
            max_objects: 3,
            max_yaml_depth: 5,
            max_yaml_aliases: 2,
            ..Limits::default()
        };
        let cases = [
            (
                "a: 1\n---\nb: 1\n---\nc: 1\n---\nd: 1\n",
                "4 YAML documents is over the limit of 3 for one file",
            ),
            (
                "[[[[[[[1]]]]]]]",
                "nesting depth 6 is over the limit of 5 levels",
            ),
            (
                "a: &x 1\nb: *x\nc: *x\nd: *x\n",
                "3 YAML aliases is over the limit of 2 for one file",
            ),
        ];
        for (text, want) in cases {
            let err = parse_documents(text, &small).unwrap_err().to_string();
            assert!(err.starts_with(want), "{text:?}: {err}");
            assert!(
                !err.contains('{') && !err.contains("budget breached"),
                "{err}"
            );
        }
    }

    #[test]
    fn broken_yaml_has_error() {
        assert!(parse_documents("a: [1, 2\nb: {", &Limits::default()).is_err());
    }
}
