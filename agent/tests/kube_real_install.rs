//! A real-world install as one app: "observa" (tests/kubesim/tests/testdata/install, 129
//! objects with 0.7 MB of multi-version CRDs, their custom resources, `system:` RBAC names, an
//! APIService, webhooks, workloads, a `List` and a `ConfigMapList`) applied through the agent's
//! Kubernetes target, every object read back, and a second pass writing nothing. On the
//! simulator, or the cluster `FLOTILLA_TEST_KUBECONFIG` names (the install's names are made
//! unique per run; its webhooks select nothing and ignore failures, but its APIService has no
//! backend there, so discovery of that one group reports it unavailable until cleanup).

mod kube_support;

use flotilla_agent::fixtures::app;
use flotilla_common::limits::Limits;
use kube_support::{BUDGET, Cluster, commit, object, pass, phases, store};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const CRDS: &str = include_str!("../../tests/kubesim/tests/testdata/install/crds.yaml");
const INSTALL: &str = include_str!("../../tests/kubesim/tests/testdata/install/install.yaml");

/// The install's objects, with `List` kinds flattened into their items as the hub's renderer
/// flattens them (`hub/src/render/documents.rs`), and every name made unique to this run.
fn install(unique: &str) -> Vec<Value> {
    let text = format!("{CRDS}\n{INSTALL}").replace("observa", &format!("observa{unique}"));
    let mut out = Vec::new();
    for doc in flotilla_common::yaml::parse_documents(&text, &Limits::default()).unwrap() {
        if doc["kind"].as_str().unwrap().ends_with("List") {
            out.extend(doc["items"].as_array().unwrap().iter().cloned());
        } else {
            out.push(doc);
        }
    }
    out
}

/// Whether `live` holds everything `want` says (the server may add defaults and status).
fn contains(live: &Value, want: &Value, path: &str) -> Result<(), String> {
    match (live, want) {
        (Value::Object(l), Value::Object(w)) => w.iter().try_for_each(|(k, v)| {
            let at = format!("{path}.{k}");
            contains(l.get(k).ok_or_else(|| format!("{at} is missing"))?, v, &at)
        }),
        (Value::Array(l), Value::Array(w)) if l.len() == w.len() => l
            .iter()
            .zip(w)
            .enumerate()
            .try_for_each(|(i, (l, w))| contains(l, w, &format!("{path}[{i}]"))),
        _ if live == want => Ok(()),
        _ => Err(format!("{path} is {live}, applied {want}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_world_install_applies_as_one_app_and_reads_back() {
    let cluster = Cluster::start("install").await;
    let wanted = install(&cluster.unique);
    assert!(
        wanted.len() >= 100,
        "the install has {} objects",
        wanted.len()
    );
    let entries: Vec<_> = wanted.iter().cloned().map(object).collect();
    let refs: Vec<_> = entries.iter().collect();
    let store = store(cluster.dir(), "agent");
    commit(&store, vec![app("observa", &refs)], &refs);
    let shutdown = CancellationToken::new();
    let (mut target, _) = cluster.target(&shutdown).await;

    let outcome = pass(&store, &mut target, BUDGET).await;
    assert_eq!(phases(&outcome.apps), ["observa applied"]);
    assert!(outcome.complete, "{outcome:?}");
    assert_eq!(outcome.written, wanted.len());

    for want in &wanted {
        let api_version = want["apiVersion"].as_str().unwrap();
        let kind = want["kind"].as_str().unwrap();
        let ns = want["metadata"]["namespace"].as_str();
        let name = want["metadata"]["name"].as_str().unwrap();
        let what = format!("{kind} {}/{name}", ns.unwrap_or(""));
        let live = cluster
            .get(api_version, kind, ns, name)
            .await
            .unwrap_or_else(|| panic!("{what} was not applied"));
        let mut want = want.clone();
        // The API server turns stringData into data; the agent adds its own labels.
        want.as_object_mut().unwrap().remove("stringData");
        let labels = want["metadata"].as_object_mut().unwrap().remove("labels");
        if let Err(e) = contains(&live, &want, "") {
            panic!("{what}: {e}");
        }
        for (k, v) in labels
            .as_ref()
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            assert_eq!(&live["metadata"]["labels"][k], v, "{what}: label {k}");
        }
        assert_eq!(
            live["metadata"]["labels"]["flotilla.dev/app"], "observa",
            "{what}"
        );
    }

    // Level-based: the next pass finds everything as applied and writes nothing.
    let again = pass(&store, &mut target, BUDGET).await;
    assert_eq!(
        (again.written, again.unchanged),
        (0, wanted.len()),
        "{again:?}"
    );

    shutdown.cancel();
    let cluster_scoped: Vec<(String, String, String)> = wanted
        .iter()
        .filter(|o| o["metadata"]["namespace"].is_null())
        .map(|o| {
            let s = |v: &Value| v.as_str().unwrap().to_string();
            (
                s(&o["apiVersion"]),
                s(&o["kind"]),
                s(&o["metadata"]["name"]),
            )
        })
        .collect();
    let cluster_scoped: Vec<(&str, &str, &str)> = cluster_scoped
        .iter()
        .map(|(a, k, n)| (a.as_str(), k.as_str(), n.as_str()))
        .collect();
    cluster.cleanup(&cluster_scoped).await;
}
