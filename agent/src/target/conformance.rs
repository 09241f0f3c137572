//! The behaviour every [`Target`] must show; each implementation's tests run [`check`].

use super::{Change, Target};
use crate::fixtures::config_map;

/// Runs the suite against an empty target.
pub(crate) async fn check<T: Target>(target: &T) {
    let (a, a_bytes) = config_map("a", "1");
    let (b, b_bytes) = config_map("b", "2");
    let (_, a2_bytes) = config_map("a", "changed");
    assert_eq!(target.list_owned().await.unwrap(), vec![]);

    assert_eq!(
        target.apply(&a.id, &a_bytes).await.unwrap(),
        Change::Changed
    );
    assert_eq!(
        target.apply(&a.id, &a_bytes).await.unwrap(),
        Change::Unchanged,
        "applying the same bytes twice must write nothing the second time"
    );
    assert_eq!(
        target.apply(&b.id, &b_bytes).await.unwrap(),
        Change::Changed
    );
    assert_eq!(
        target.list_owned().await.unwrap(),
        vec![a.id.clone(), b.id.clone()]
    );

    assert_eq!(
        target.apply(&a.id, &a2_bytes).await.unwrap(),
        Change::Changed
    );
    assert_eq!(
        target.apply(&a.id, &a2_bytes).await.unwrap(),
        Change::Unchanged
    );

    assert_eq!(target.delete(&a.id).await.unwrap(), Change::Changed);
    assert_eq!(target.delete(&a.id).await.unwrap(), Change::Unchanged);
    assert_eq!(target.list_owned().await.unwrap(), vec![b.id.clone()]);
}
