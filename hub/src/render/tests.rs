//! Rendering tests: the data-driven cases in `hub/testdata/render/*.yaml`, then the few that need code.
//!
//! A case file holds a repository in memory (`files`, `symlinks`, `submodules`, with `flotilla.yaml` among the
//! files), the cluster to render for, the app to render (optional when there is one), and exactly one of
//! `expect` (the matched target and the full objects in order), `noTarget: true`, or `error` (substrings
//! that must all appear in the error message).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use flotilla_common::labels::Labels;
use flotilla_common::limits::Limits;
use serde::Deserialize;
use serde_json::Value;

use super::*;
use crate::manifest::{load_manifest, parse_manifest};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Case {
    #[serde(default)]
    files: BTreeMap<String, String>,
    #[serde(default)]
    symlinks: BTreeMap<String, String>,
    #[serde(default)]
    submodules: Vec<String>,
    #[serde(default)]
    too_large: BTreeMap<String, u64>,
    #[serde(default)]
    cluster: CaseCluster,
    #[serde(default)]
    app: Option<String>,
    #[serde(default)]
    expect: Option<Expect>,
    #[serde(default)]
    no_target: bool,
    #[serde(default)]
    error: Vec<String>,
    /// Substrings the render's notes must contain, one per note.
    #[serde(default)]
    notes: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CaseCluster {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    labels: Labels,
    #[serde(default)]
    kube_version: Option<String>,
    #[serde(default)]
    api_versions: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    #[serde(default)]
    target: String,
    objects: Vec<Value>,
}

impl Case {
    fn tree(&self) -> RepoTree {
        super::tree::fixture_tree(
            &self.files,
            &self.symlinks,
            &self.submodules,
            &self.too_large,
        )
    }

    fn cluster(&self) -> ClusterInfo {
        ClusterInfo {
            id: self
                .cluster
                .id
                .clone()
                .unwrap_or_else(|| "c-0000000000000001".into()),
            name: self
                .cluster
                .name
                .clone()
                .unwrap_or_else(|| "cluster-1".into()),
            labels: self.cluster.labels.clone(),
            capabilities: flotilla_common::capabilities::Capabilities {
                kube_version: self.cluster.kube_version.clone(),
                api_versions: self.cluster.api_versions.iter().cloned().collect(),
            },
        }
    }
}

/// The real tools: Helm's engine through the project's shim, kustomize from `kubectl kustomize`.
pub(super) fn test_tools() -> Tools {
    Tools {
        helm: Some(flotilla_testkit::helm()),
        ..Tools::discover()
    }
}

fn render_case(case: &Case, limits: &Limits) -> Result<Option<RenderedApp>, String> {
    let tree = case.tree();
    let manifest = load_manifest(&tree, limits).map_err(|e| e.to_string())?;
    let app = match &case.app {
        Some(name) => manifest
            .apps
            .iter()
            .find(|a| &a.name == name)
            .expect("case names an app of its manifest"),
        None => {
            assert_eq!(manifest.apps.len(), 1, "case must name the app to render");
            &manifest.apps[0]
        }
    };
    render_app(
        &tree,
        app,
        &case.cluster(),
        &RenderEnv::new(limits, &test_tools()),
    )
    .map_err(|e| e.to_string())
}

fn check_case(name: &str, case: &Case) -> Result<(), String> {
    let limits = Limits::default();
    let outcomes = [
        case.expect.is_some(),
        case.no_target,
        !case.error.is_empty(),
    ];
    if outcomes.iter().filter(|o| **o).count() != 1 {
        return Err("needs exactly one of expect, noTarget, error".into());
    }
    let got = render_case(case, &limits);
    if !case.error.is_empty() {
        return match got {
            Ok(r) => Err(format!("expected an error, rendered {r:?}")),
            Err(msg) => match case.error.iter().find(|want| !msg.contains(want.as_str())) {
                Some(missing) => Err(format!("error {msg:?} does not contain {missing:?}")),
                None => Ok(()),
            },
        };
    }
    let got = got.map_err(|e| format!("unexpected error: {e}"))?;
    if case.no_target {
        return match got {
            None => Ok(()),
            Some(r) => Err(format!("expected no target, got target {:?}", r.target)),
        };
    }
    let expect = case.expect.as_ref().expect("checked above");
    let got = got.ok_or("expected objects, no target matched")?;
    if got.target != expect.target {
        return Err(format!("target {:?}, want {:?}", got.target, expect.target));
    }
    let values: Vec<&Value> = got.objects.iter().map(|o| &o.value).collect();
    let want: Vec<&Value> = expect.objects.iter().collect();
    if values != want {
        return Err(format!(
            "objects differ\n got: {}\nwant: {}",
            serde_json::to_string_pretty(&values).unwrap(),
            serde_json::to_string_pretty(&want).unwrap()
        ));
    }
    for o in &got.objects {
        assert_eq!(
            o.value["metadata"]["name"],
            Value::String(o.id.name.clone()),
            "{name}: id matches value"
        );
    }
    // Invariant 7: a second render is byte-for-byte the same.
    let again = render_case(case, &limits)
        .map_err(|e| format!("second render failed: {e}"))?
        .unwrap();
    let bytes = |r: &RenderedApp| {
        r.objects
            .iter()
            .map(|o| o.canonical_bytes())
            .collect::<Vec<_>>()
    };
    if bytes(&again) != bytes(&got) {
        return Err("second render differs".into());
    }
    if got.notes.len() != case.notes.len()
        || got
            .notes
            .iter()
            .zip(&case.notes)
            .any(|(n, want)| !n.contains(want.as_str()))
    {
        return Err(format!("notes {:?}, want {:?}", got.notes, case.notes));
    }
    Ok(())
}

#[test]
fn data_driven_cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/render");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 20,
        "expected the render cases in {}",
        dir.display()
    );
    let mut failures = Vec::new();
    for path in &paths {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(path).unwrap();
        let result = serde_saphyr::from_str::<Case>(&text)
            .map_err(|e| format!("bad case file: {e}"))
            .and_then(|case| check_case(&name, &case));
        if let Err(e) = result {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        paths.len(),
        failures.join("\n\n")
    );
}

const SIMPLE_MANIFEST: &str = "apps:\n  - {name: web, path: apps/web}\n";

fn cluster(labels: &[(&str, &str)]) -> ClusterInfo {
    ClusterInfo {
        id: "c-0000000000000001".into(),
        name: "edge-1".into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        capabilities: Default::default(),
    }
}

fn render(tree: &RepoTree, limits: &Limits) -> Result<Option<RenderedApp>, RenderError> {
    let manifest = load_manifest(tree, limits).unwrap();
    render_app(
        tree,
        &manifest.apps[0],
        &cluster(&[]),
        &RenderEnv::new(limits, &Tools::discover()),
    )
}

#[test]
fn runaway_templates_run_out_of_fuel_quickly() {
    let loops = [
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}",
        "{% macro grow(s, n) %}{% if n > 0 %}{{ grow(s ~ s, n - 1) }}{% else %}{{ s }}{% endif %}{% endmacro %}{{ grow('x', 60) }}",
        "{% for i in range(100000000) %}x{% endfor %}",
    ];
    for body in loops {
        let tree = RepoTree::new("c")
            .with_file("flotilla.yaml", SIMPLE_MANIFEST)
            .with_file("apps/web/cm.yaml.j2", body);
        let start = Instant::now();
        let err = render(&tree, &Limits::default()).unwrap_err().to_string();
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{body}: took {:?}",
            start.elapsed()
        );
        assert!(err.contains("apps/web/cm.yaml.j2"), "{err}");
        assert!(
            err.contains("fuel") || err.contains("too many elements"),
            "{err}"
        );
    }
}

#[test]
fn renders_are_deterministic_across_insertion_order() {
    let files = [
        ("flotilla.yaml", SIMPLE_MANIFEST),
        (
            "apps/web/b.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\ndata: {z: '1', a: '2'}\n",
        ),
        (
            "apps/web/a.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a, labels: {y: '1', x: '2'}}\n",
        ),
        (
            "apps/web/c/t.yaml.j2",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: t}\ndata:\n{% for k, v in cluster.labels|items %}  {{ k }}: \"{{ v }}\"\n{% endfor %}",
        ),
    ];
    let mut forward = RepoTree::new("c");
    for (p, t) in files {
        forward = forward.with_file(p, t);
    }
    let mut backward = RepoTree::new("c");
    for (p, t) in files.iter().rev() {
        backward = backward.with_file(p, *t);
    }
    let manifest = load_manifest(&forward, &Limits::default()).unwrap();
    let c1 = cluster(&[("b", "2"), ("a", "1")]);
    let c2 = cluster(&[("a", "1"), ("b", "2")]);
    let r1 = render_app(
        &forward,
        &manifest.apps[0],
        &c1,
        &RenderEnv::new(&Limits::default(), &Tools::discover()),
    )
    .unwrap()
    .unwrap();
    let r2 = render_app(
        &backward,
        &manifest.apps[0],
        &c2,
        &RenderEnv::new(&Limits::default(), &Tools::discover()),
    )
    .unwrap()
    .unwrap();
    let bytes = |r: &RenderedApp| {
        r.objects
            .iter()
            .flat_map(|o| o.canonical_bytes())
            .collect::<Vec<u8>>()
    };
    assert_eq!(bytes(&r1), bytes(&r2));
    let names: Vec<_> = r1.objects.iter().map(|o| o.id.to_string()).collect();
    assert_eq!(
        names,
        [
            "v1/ConfigMap default/b",
            "v1/ConfigMap default/t",
            "apps/v1/Deployment default/a"
        ]
    );
    assert_eq!(
        r1.objects[1].value["data"],
        serde_json::json!({"a": "1", "b": "2"})
    );
}

#[test]
fn limits_are_enforced() {
    let tree = RepoTree::new("c")
        .with_file("flotilla.yaml", SIMPLE_MANIFEST)
        .with_file("apps/web/a.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n")
        .with_file("apps/web/big.yaml", format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: big}}\ndata: {{x: '{}'}}\n", "x".repeat(2000)));
    let small_objects = Limits {
        max_object_bytes: 1000,
        ..Limits::default()
    };
    let err = render(&tree, &small_objects).unwrap_err().to_string();
    assert!(
        err.contains("apps/web/big.yaml (document 1)") && err.contains("over the 1000 byte limit"),
        "{err}"
    );
    let few_objects = Limits {
        max_objects: 2,
        ..Limits::default()
    };
    let err = render(&tree, &few_objects).unwrap_err().to_string();
    assert!(
        err.contains("renders 3 objects, over the limit of 2"),
        "{err}"
    );
    let small_files = Limits {
        max_file_bytes: 1500,
        ..Limits::default()
    };
    let err = render(&tree, &small_files).unwrap_err().to_string();
    assert!(
        err.contains("apps/web/big.yaml") && err.contains("1500 byte limit"),
        "{err}"
    );
}

#[test]
fn billion_laughs_in_a_manifest_is_rejected_quickly() {
    let mut y = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (i, c) in ('b'..='i').enumerate() {
        let prev = (b'a' + i as u8) as char;
        y.push_str(&format!(
            "{c}: &{c} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
    }
    let tree = RepoTree::new("c")
        .with_file("flotilla.yaml", SIMPLE_MANIFEST)
        .with_file("apps/web/lol.yaml", y);
    let start = Instant::now();
    let err = render(&tree, &Limits::default()).unwrap_err().to_string();
    // Expanded, the document has 387 million nodes: minutes of work. The bound only tells a
    // budget that stopped early from one that did not; it is loose because a debug build on
    // a loaded 2-core CI machine takes seconds even for the early stop.
    assert!(start.elapsed() < Duration::from_secs(60));
    assert!(err.starts_with("apps/web/lol.yaml: "), "{err}");
}

#[test]
fn manifest_and_render_agree_on_paths() {
    // The manifest rejects unsafe paths before any render; render_app refuses them too for AppSpecs built in code.
    for bad in ["/abs", "a/../b", "..", "a//b"] {
        let text = format!("apps:\n  - {{name: web, path: {bad:?}}}\n");
        let err = parse_manifest(&text, &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("{bad:?}")), "{err}");
        let mut app = parse_manifest(SIMPLE_MANIFEST, &Limits::default())
            .unwrap()
            .apps
            .remove(0);
        app.path = bad.to_string();
        let tree = RepoTree::new("c").with_file("apps/web/a.yaml", "{}");
        let err = render_app(
            &tree,
            &app,
            &cluster(&[]),
            &RenderEnv::new(&Limits::default(), &Tools::discover()),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(&format!("{bad:?}")), "{err}");
    }
}

/// A render's input digest covers what it reads and nothing else: for kustomize, the files its
/// kustomization graph names; for Helm, the chart directory and the values files.
#[test]
fn input_digests_cover_exactly_what_a_render_reads() {
    let limits = Limits::default();
    let tools = Tools::default();
    let env = RenderEnv::new(&limits, &tools);
    let manifest = "apps:\n  - {name: k, path: overlay}\n  - {name: h, path: chart, valuesFiles: [values/h.yaml]}\n";
    let base = |extra: &[(&str, &str)]| {
        let mut t = RepoTree::new("c0")
            .with_file("flotilla.yaml", manifest)
            .with_file("base/kustomization.yaml", "resources: [cm.yaml]\n")
            .with_file("base/cm.yaml", "kind: ConfigMap\n")
            .with_file("base/README.md", "docs\n")
            .with_file("overlay/kustomization.yaml", "resources: [../base]\n")
            .with_file("chart/Chart.yaml", "name: h\n")
            .with_file("chart/templates/cm.yaml", "kind: ConfigMap\n")
            .with_file("values/h.yaml", "a: 1\n")
            .with_file("unrelated/x.yaml", "kind: X\n");
        for (p, c) in extra {
            t = t.with_file(p, *c);
        }
        t
    };
    let digests = |tree: &RepoTree| {
        let m = load_manifest(tree, &limits).unwrap();
        m.apps
            .iter()
            .map(|a| plan_target(tree, a, None, &env).unwrap().inputs())
            .collect::<Vec<_>>()
    };
    let before = digests(&base(&[]));
    // Files nobody reads.
    assert_eq!(
        digests(&base(&[
            ("base/README.md", "changed\n"),
            ("unrelated/x.yaml", "kind: Y\n")
        ])),
        before
    );
    // The base the overlay reads: only the kustomize app changes.
    let after = digests(&base(&[("base/cm.yaml", "kind: ConfigMap\nx: 1\n")]));
    assert_ne!(after[0], before[0]);
    assert_eq!(after[1], before[1]);
    // The chart's values file: only the Helm app changes.
    let after = digests(&base(&[("values/h.yaml", "a: 2\n")]));
    assert_eq!(after[0], before[0]);
    assert_ne!(after[1], before[1]);
}

#[test]
fn templates_branch_on_the_capabilities_the_agent_reported() {
    let template = r#"{% if "policy/v1/PodDisruptionBudget" in cluster.apiVersions %}apiVersion: policy/v1
{% else %}apiVersion: policy/v1beta1
{% endif %}kind: PodDisruptionBudget
metadata:
  name: web
  annotations:
    kube: "{{ cluster.kubeVersion or 'unknown' }}"
    served: "{{ cluster.apiVersions | length }}"
spec:
  minAvailable: 1
  selector: {matchLabels: {app: web}}
"#;
    let tree = RepoTree::new("c")
        .with_file("flotilla.yaml", SIMPLE_MANIFEST)
        .with_file("apps/web/pdb.yaml.j2", template);
    let limits = Limits::default();
    let manifest = load_manifest(&tree, &limits).unwrap();
    let render_for = |capabilities| {
        let info = ClusterInfo {
            capabilities,
            ..cluster(&[])
        };
        let rendered = render_app(
            &tree,
            &manifest.apps[0],
            &info,
            &RenderEnv::new(&limits, &Tools::default()),
        )
        .unwrap()
        .unwrap();
        rendered.objects[0].value.clone()
    };

    let unknown = render_for(Default::default());
    assert_eq!(unknown["apiVersion"], "policy/v1beta1");
    assert_eq!(unknown["metadata"]["annotations"]["kube"], "unknown");
    assert_eq!(unknown["metadata"]["annotations"]["served"], "0");

    let reported = flotilla_common::capabilities::Capabilities::new(
        Some("v1.32.4".into()),
        vec![
            "v1".into(),
            "policy/v1".into(),
            "policy/v1/PodDisruptionBudget".into(),
        ],
    )
    .unwrap();
    let modern = render_for(reported);
    assert_eq!(modern["apiVersion"], "policy/v1");
    assert_eq!(modern["metadata"]["annotations"]["kube"], "v1.32.4");
    assert_eq!(modern["metadata"]["annotations"]["served"], "3");
}
