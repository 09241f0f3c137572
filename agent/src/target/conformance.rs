//! The behaviour every [`Target`] must show. Each implementation's tests run [`check`]; it is
//! public (behind the `testing` feature) so integration tests can run it against a cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use flotilla_common::cluster_state::{DriftMode, ObjectEntry};
use flotilla_common::object::ObjectId;
use flotilla_common::status::AppHealth;

use super::{Applied, ApplyRequest, Change, Target};
use crate::fixtures::{config_map_in, namespace};
use crate::inventory::AppInventory;

/// The app name the suite applies under.
pub const APP: &str = "conformance";

/// A request for `object`, applied before with `previous`.
pub fn request<'a>(
    object: &'a (ObjectEntry, Vec<u8>),
    previous: Option<&(ObjectEntry, Vec<u8>)>,
    drift: DriftMode,
) -> ApplyRequest<'a> {
    ApplyRequest {
        id: &object.0.id,
        bytes: &object.1,
        digest: object.0.digest,
        previous: previous.map(|p| p.0.digest),
        app: APP,
        force: false,
        drift,
    }
}

/// Applies one request and unwraps its result.
pub async fn apply_one<T: Target>(target: &mut T, request: ApplyRequest<'_>) -> Applied {
    let mut results = target.apply(&[request]).await;
    assert_eq!(results.len(), 1, "one result per request");
    results
        .pop()
        .unwrap()
        .unwrap_or_else(|e| panic!("apply failed: {e}"))
}

/// Runs the suite against a target that holds nothing of the suite yet. Objects go into
/// `namespace` (applied as a Namespace object first). `tamper` must change the `value` of the
/// ConfigMap it is given behind the target's back; `watches` says whether the target notices
/// changes by itself ([`Target::changed`] resolves), which the suite then waits for.
pub async fn check<T: Target>(
    target: &mut T,
    ns: &str,
    watches: bool,
    mut tamper: impl AsyncFnMut(&ObjectId),
) {
    let ns_obj = namespace(ns);
    let a = config_map_in(ns, "a", "1");
    let b = config_map_in(ns, "b", "2");
    let a2 = config_map_in(ns, "a", "changed");
    let ids = [a.0.id.clone(), b.0.id.clone()];
    let live = |set: &[&ObjectId]| set.iter().map(|id| (*id).clone()).collect::<BTreeSet<_>>();
    let correct = DriftMode::Correct;

    let listed = async |target: &mut T| -> BTreeSet<ObjectId> {
        target
            .list_live(APP, &ids)
            .await
            .unwrap()
            .into_keys()
            .collect()
    };
    assert_eq!(listed(target).await, BTreeSet::new());
    let results = target
        .apply(&[request(&ns_obj, None, correct), request(&a, None, correct)])
        .await;
    let results: Vec<Applied> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(results, [Applied::Changed, Applied::Changed]);
    assert_eq!(
        apply_one(target, request(&a, Some(&a), correct)).await,
        Applied::Unchanged,
        "applying what was applied before must write nothing"
    );
    assert_eq!(
        apply_one(target, request(&b, None, correct)).await,
        Applied::Changed
    );
    assert_eq!(listed(target).await, live(&[&a.0.id, &b.0.id]));

    assert_eq!(
        apply_one(target, request(&a2, Some(&a), correct)).await,
        Applied::Changed
    );
    assert_eq!(
        apply_one(target, request(&a2, Some(&a2), correct)).await,
        Applied::Unchanged
    );

    // Drift: reported without writing under `report`, corrected under `correct`.
    tamper(&a.0.id).await;
    if watches {
        tokio::time::timeout(Duration::from_secs(20), target.changed())
            .await
            .expect("the target notices a change made behind its back");
    }
    match apply_one(target, request(&a2, Some(&a2), DriftMode::Report)).await {
        Applied::Drifted(fields) => assert!(
            fields.iter().any(|f| f == ".data.value"),
            "the drift summary names the field: {fields:?}"
        ),
        other => panic!("expected drift, got {other:?}"),
    }
    assert!(
        matches!(
            apply_one(target, request(&a2, Some(&a2), DriftMode::Report)).await,
            Applied::Drifted(_)
        ),
        "reporting drift does not correct it"
    );
    assert_eq!(
        apply_one(target, request(&a2, Some(&a2), correct)).await,
        Applied::Changed
    );
    assert_eq!(
        apply_one(target, request(&a2, Some(&a2), correct)).await,
        Applied::Unchanged
    );

    assert_eq!(
        target.health(&ids).await,
        (AppHealth::Healthy, String::new())
    );

    // The inventory copy kept in the target.
    assert!(!target.load_inventory().await.unwrap().contains_key(APP));
    let mut inventory = AppInventory {
        prune: true,
        prune_protect: vec!["Namespace".into()],
        objects: Vec::new(),
    };
    inventory.insert(a2.0.id.clone(), a2.0.digest);
    inventory.insert(b.0.id.clone(), b.0.digest);
    let saved = BTreeMap::from([(APP.to_string(), inventory.clone())]);
    target.save_inventory(&saved).await.unwrap();
    target.save_inventory(&saved).await.unwrap();
    assert_eq!(
        target.load_inventory().await.unwrap().get(APP),
        Some(&inventory)
    );
    target.save_inventory(&BTreeMap::new()).await.unwrap();
    assert!(!target.load_inventory().await.unwrap().contains_key(APP));

    // Deletes carry the uid the listing gave, where the target has uids.
    let uids = target.list_live(APP, &ids).await.unwrap();
    let uid = |id: &ObjectId| uids[id].uid.clone();
    let (uid_a, uid_b) = (uid(&a.0.id), uid(&b.0.id));
    assert_eq!(
        target.delete(&a.0.id, uid_a.as_deref()).await.unwrap(),
        Change::Changed
    );
    assert_eq!(
        target.delete(&a.0.id, uid_a.as_deref()).await.unwrap(),
        Change::Unchanged
    );
    assert_eq!(listed(target).await, live(&[&b.0.id]));
    assert_eq!(
        target.delete(&b.0.id, uid_b.as_deref()).await.unwrap(),
        Change::Changed
    );
}
