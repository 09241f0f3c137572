//! Test data: signed ClusterStates for a made-up cluster, and objects to put in them.
//! Compiled for unit tests and, with the `testing` feature, for integration tests.

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use flotilla_common::canonical::to_canonical_json;
use flotilla_common::cluster_state::{
    AppState, ClusterState, DriftMode, ObjectEntry, SignedClusterState, StateBody, StateHeader,
};
use flotilla_common::digest::Digest;
use flotilla_common::object::ObjectId;
use serde_json::json;

use crate::identity::AgentIdentity;

/// The cluster the tests' agent is.
pub const CLUSTER: &str = "c-0123456789abcdef";
/// The tests' clock.
pub const NOW: i64 = 1_800_000_000;

/// The hub's ClusterState signing key.
pub fn hub_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// An identity pinned to [`hub_key`]; the certificate fields are placeholders.
pub fn identity() -> AgentIdentity {
    AgentIdentity {
        cluster_id: CLUSTER.into(),
        cert_pem: "cert".into(),
        key_pem: "key".into(),
        ca_pem: "ca".into(),
        signing_public_key: hub_key().verifying_key().to_bytes(),
        received_at: NOW,
    }
}

/// A ConfigMap in `default` with one data entry; its entry and canonical bytes.
pub fn config_map(name: &str, value: &str) -> (ObjectEntry, Vec<u8>) {
    let bytes = to_canonical_json(&json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"},
        "data": {"value": value},
    }));
    let entry = ObjectEntry {
        id: ObjectId {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("default".into()),
            name: name.into(),
        },
        digest: Digest::of(&bytes),
        size: bytes.len() as u64,
    };
    (entry, bytes)
}

/// An app with pruning on, no dependencies, and these objects.
pub fn app(name: &str, objects: &[&(ObjectEntry, Vec<u8>)]) -> AppState {
    AppState {
        name: name.into(),
        source: "main".into(),
        commit: format!("{name}-commit"),
        release_id: "r".into(),
        depends_on: Vec::new(),
        drift: DriftMode::Correct,
        prune: true,
        prune_protect: Vec::new(),
        force: false,
        chart: None,
        origin: String::new(),
        objects: objects.iter().map(|(entry, _)| entry.clone()).collect(),
    }
}

/// Blobs of the given objects, by digest.
pub fn blobs(objects: &[&(ObjectEntry, Vec<u8>)]) -> BTreeMap<Digest, Vec<u8>> {
    objects
        .iter()
        .map(|(entry, bytes)| (entry.digest, bytes.clone()))
        .collect()
}

/// A ClusterState for `cluster`, signed by `key`.
pub fn signed_by(
    key: &SigningKey,
    cluster: &str,
    version: u64,
    prev: Option<Digest>,
    apps: Vec<AppState>,
) -> SignedClusterState {
    let header = StateHeader {
        cluster_id: cluster.into(),
        hub_epoch: 1,
        version,
        prev_digest: prev,
        issued_at: NOW - 10,
        expires_at: NOW + 3600,
        body_digest: Digest::of(b""),
    };
    ClusterState::sign(header, &StateBody { apps }, key).unwrap()
}

/// A ClusterState for [`CLUSTER`], signed by [`hub_key`].
pub fn signed(version: u64, prev: Option<Digest>, apps: Vec<AppState>) -> SignedClusterState {
    signed_by(&hub_key(), CLUSTER, version, prev, apps)
}

/// A ConfigMap in `namespace` with one data entry; its entry and canonical bytes.
pub fn config_map_in(namespace: &str, name: &str, value: &str) -> (ObjectEntry, Vec<u8>) {
    object(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"value": value},
    }))
}

/// Any object given as JSON; its entry (identity read from the object) and canonical bytes.
pub fn object(value: serde_json::Value) -> (ObjectEntry, Vec<u8>) {
    let bytes = to_canonical_json(&value);
    let api_version = value["apiVersion"].as_str().expect("apiVersion");
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), api_version.to_string()),
    };
    let entry = ObjectEntry {
        id: ObjectId {
            group,
            version,
            kind: value["kind"].as_str().expect("kind").into(),
            namespace: value["metadata"]["namespace"].as_str().map(str::to_string),
            name: value["metadata"]["name"].as_str().expect("name").into(),
        },
        digest: Digest::of(&bytes),
        size: bytes.len() as u64,
    };
    (entry, bytes)
}

/// A Namespace object.
pub fn namespace(name: &str) -> (ObjectEntry, Vec<u8>) {
    object(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
}
