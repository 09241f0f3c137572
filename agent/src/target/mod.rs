//! Where objects are applied. A [`Target`] is level-based: applying what an object already is
//! writes nothing, deleting an absent object changes nothing.
//!
//! Implementations: [`dir::DirTarget`] (one JSON file per object) and [`kube::KubeTarget`]
//! (server-side apply to a Kubernetes API server). Both pass the suite in `conformance`.
//!
//! The applier task owns its target (`&mut self` everywhere): a target's caches and watches are
//! state with one owner.

use std::collections::BTreeMap;
use std::future::Future;

use flotilla_common::cluster_state::DriftMode;
use flotilla_common::digest::Digest;
use flotilla_common::object::ObjectId;
use flotilla_common::status::AppHealth;

use crate::inventory::AppInventory;

#[cfg(any(test, feature = "testing"))]
pub mod conformance;
pub mod dir;
pub mod kube;

/// Whether an operation changed the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Something was written or removed.
    Changed,
    /// The target already was as asked.
    Unchanged,
}

/// What applying one object did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The object was written (created, changed, or drift corrected).
    Changed,
    /// The object already was as desired; nothing was written.
    Unchanged,
    /// The object drifted from what was applied and the app's drift mode is `report`: nothing
    /// was written. The fields that differ, e.g. `.spec.replicas`.
    Drifted(Vec<String>),
}

/// A live object that prune may delete.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LiveObject {
    /// Its uid, where the target has uids; deletes are conditional on it.
    pub uid: Option<String>,
}

/// One object to apply.
#[derive(Debug, Clone, Copy)]
pub struct ApplyRequest<'a> {
    /// The object.
    pub id: &'a ObjectId,
    /// Its canonical JSON, as signed.
    pub bytes: &'a [u8],
    /// Digest of `bytes`.
    pub digest: Digest,
    /// Digest the app last applied for this object; `Some(digest)` means this exact
    /// configuration was applied before, so any difference live is drift.
    pub previous: Option<Digest>,
    /// The app the object belongs to.
    pub app: &'a str,
    /// Take over fields other field managers own.
    pub force: bool,
    /// What to do about drift.
    pub drift: DriftMode,
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
pub trait Target: Send + 'static {
    /// Applies a batch, in order (the planner sorts CRDs, Namespaces and other cluster-scoped
    /// objects first); one result per request.
    fn apply(
        &mut self,
        batch: &[ApplyRequest<'_>],
    ) -> impl Future<Output = Vec<Result<Applied, TargetError>>> + Send;

    /// Removes object `id`; with `uid`, only if the live object still has that uid (one
    /// recreated since it was listed is left alone and reported `Unchanged`, as is an absent one).
    fn delete(
        &mut self,
        id: &ObjectId,
        uid: Option<&str>,
    ) -> impl Future<Output = Result<Change, TargetError>> + Send;

    /// Which of `ids` exist and carry Flotilla's ownership marks for `app` (where the target
    /// has marks: managed by Flotilla, belonging to `app`), from a complete, fresh listing, with
    /// the uid of each where the target has uids. Any doubt about completeness is an error:
    /// prune must not act on a partial view.
    fn list_live(
        &mut self,
        app: &str,
        ids: &[ObjectId],
    ) -> impl Future<Output = Result<BTreeMap<ObjectId, LiveObject>, TargetError>> + Send;

    /// Health of one app's objects, and why it is not healthy.
    fn health(&mut self, ids: &[ObjectId]) -> impl Future<Output = (AppHealth, String)> + Send;

    /// The inventory kept in the target itself, for an agent whose store has none.
    fn load_inventory(
        &mut self,
    ) -> impl Future<Output = Result<BTreeMap<String, AppInventory>, TargetError>> + Send;

    /// Makes the inventory kept in the target match `inventory` (every app; absent apps are
    /// forgotten). Writes nothing when it already matches.
    fn save_inventory(
        &mut self,
        inventory: &BTreeMap<String, AppInventory>,
    ) -> impl Future<Output = Result<(), TargetError>> + Send;

    /// Resolves when objects the target watches changed behind the agent's back (drift, or a
    /// controller updating status); never resolves for a target that cannot watch.
    fn changed(&mut self) -> impl Future<Output = ()> + Send;

    /// Stops background work (watches) and waits for it.
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send;
}
