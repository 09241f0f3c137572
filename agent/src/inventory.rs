//! The applied inventory: per app, which objects this agent actually applied, with what digest
//! and under which prune settings. It is the only thing the agent ever deletes from.

use flotilla_common::digest::Digest;
use flotilla_common::object::ObjectId;
use serde::{Deserialize, Serialize};

/// One object an app applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedObject {
    /// Which object.
    #[serde(flatten)]
    pub id: ObjectId,
    /// Digest of the bytes applied.
    pub digest: Digest,
}

/// What one app has applied, and the prune settings it was applied with.
///
/// The settings are kept so that an app that disappears from the ClusterState is pruned
/// under the rules it last had.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AppInventory {
    /// Whether objects leaving the app are deleted.
    pub prune: bool,
    /// Protected kinds the app allows prune to delete (`Kind` or `group/Kind`).
    pub prune_protect: Vec<String>,
    /// Applied objects, sorted by id.
    pub objects: Vec<AppliedObject>,
}

impl AppInventory {
    /// The digest applied for `id`, if the app owns it.
    pub fn digest_of(&self, id: &ObjectId) -> Option<Digest> {
        self.objects
            .binary_search_by(|o| o.id.cmp(id))
            .ok()
            .map(|i| self.objects[i].digest)
    }

    /// Records `id` as applied with `digest`, keeping the list sorted.
    pub fn insert(&mut self, id: ObjectId, digest: Digest) {
        match self.objects.binary_search_by(|o| o.id.cmp(&id)) {
            Ok(i) => self.objects[i].digest = digest,
            Err(i) => self.objects.insert(i, AppliedObject { id, digest }),
        }
    }

    /// Forgets `id`.
    pub fn remove(&mut self, id: &ObjectId) {
        if let Ok(i) = self.objects.binary_search_by(|o| o.id.cmp(id)) {
            self.objects.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> ObjectId {
        ObjectId {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("default".into()),
            name: name.into(),
        }
    }

    #[test]
    fn insert_keeps_order_and_replaces() {
        let mut inv = AppInventory::default();
        inv.insert(id("b"), Digest::of(b"1"));
        inv.insert(id("a"), Digest::of(b"2"));
        inv.insert(id("b"), Digest::of(b"3"));
        let names: Vec<&str> = inv.objects.iter().map(|o| o.id.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(inv.digest_of(&id("b")), Some(Digest::of(b"3")));
        inv.remove(&id("a"));
        assert_eq!(inv.digest_of(&id("a")), None);
        let json = serde_json::to_string(&inv).unwrap();
        assert_eq!(serde_json::from_str::<AppInventory>(&json).unwrap(), inv);
    }
}
