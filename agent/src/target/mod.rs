//! Where objects are applied. A [`Target`] is level-based: applying the bytes an object already
//! has changes nothing, deleting an absent object changes nothing.
//!
//! Implementations: [`dir::DirTarget`] (one JSON file per object); the Kubernetes target
//! implements the same trait and runs the same conformance suite.

use std::future::Future;

use flotilla_common::object::ObjectId;

#[cfg(test)]
pub(crate) mod conformance;
pub mod dir;

/// Whether an operation changed the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Something was written or removed.
    Changed,
    /// The target already was as asked.
    Unchanged,
}

/// An operation on the target failed. Messages name the object, never its contents.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {object}: {source}")]
pub struct TargetError {
    /// What was attempted ("apply", "delete", "list").
    pub op: &'static str,
    /// The object, as `ObjectId` displays it; empty for whole-target operations.
    pub object: String,
    /// Whether trying again later may succeed.
    pub transient: bool,
    /// The cause.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// A place objects are applied to, e.g. a directory or a Kubernetes cluster.
pub trait Target: Send + Sync + 'static {
    /// Makes object `id` exactly `bytes` (its canonical JSON).
    fn apply(
        &self,
        id: &ObjectId,
        bytes: &[u8],
    ) -> impl Future<Output = Result<Change, TargetError>> + Send;

    /// Removes object `id`.
    fn delete(&self, id: &ObjectId) -> impl Future<Output = Result<Change, TargetError>> + Send;

    /// Every object this target holds that Flotilla could have written, sorted.
    fn list_owned(&self) -> impl Future<Output = Result<Vec<ObjectId>, TargetError>> + Send;
}
