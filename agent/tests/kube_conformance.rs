//! The Kubernetes target passes the same conformance suite as the directory target, on the
//! simulator (or the cluster `FLOTILLA_TEST_KUBECONFIG` names).

mod kube_support;

use flotilla_agent::target::conformance;
use flotilla_common::object::ObjectId;
use kube_support::Cluster;
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_target_passes_the_target_conformance_suite() {
    let cluster = Cluster::start("conformance").await;
    let shutdown = CancellationToken::new();
    let (mut target, _) = cluster.target(&shutdown).await;
    // The suite applies its own Namespace object, so it gets a fresh name.
    let ns = format!("{}-suite", cluster.namespace);
    let tamper = async |id: &ObjectId| {
        cluster
            .patch_as(
                "intruder",
                "v1",
                "ConfigMap",
                id.namespace.as_deref(),
                &id.name,
                &json!({"data": {"value": "tampered"}}),
            )
            .await;
    };
    conformance::check(&mut target, &ns, true, tamper).await;
    use flotilla_agent::target::Target;
    target.shutdown().await;
    cluster.cleanup(&[("v1", "Namespace", &ns)]).await;
}
