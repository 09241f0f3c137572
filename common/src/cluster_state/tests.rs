use ed25519_dalek::SigningKey;

use super::*;
use crate::digest::Digest;

const NOW: i64 = 1_800_000_000;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn body(commit: &str) -> StateBody {
    let object = br#"{"apiVersion":"v1","kind":"ConfigMap"}"#;
    StateBody {
        apps: vec![AppState {
            name: "web".into(),
            source: "main".into(),
            commit: commit.into(),
            release_id: "r1".into(),
            depends_on: vec![],
            drift: DriftMode::Correct,
            prune: true,
            prune_protect: vec![],
            force: false,
            chart: None,
            origin: String::new(),
            objects: vec![ObjectEntry {
                id: ObjectId {
                    group: String::new(),
                    version: "v1".into(),
                    kind: "ConfigMap".into(),
                    namespace: Some("default".into()),
                    name: "cm".into(),
                },
                digest: Digest::of(object),
                size: object.len() as u64,
            }],
        }],
    }
}

fn header(cluster: &str, version: u64, prev: Option<Digest>) -> StateHeader {
    StateHeader {
        cluster_id: cluster.into(),
        hub_epoch: 1,
        version,
        prev_digest: prev,
        issued_at: NOW - 10,
        expires_at: NOW + 3600,
        body_digest: Digest::of(b""),
    }
}

/// Versions 1..=n for cluster `c-a`, each chained to the one before.
fn history(n: u64) -> Vec<SignedClusterState> {
    let mut out: Vec<SignedClusterState> = Vec::new();
    for v in 1..=n {
        let prev = out.last().map(|s| s.digest());
        out.push(
            ClusterState::sign(
                header("c-a", v, prev),
                &body(&format!("commit{v}")),
                &key(1),
            )
            .unwrap(),
        );
    }
    out
}

fn held(s: &SignedClusterState) -> HeldVersion {
    let h = s.decode_unverified().unwrap().header;
    HeldVersion {
        version: h.version,
        digest: s.digest(),
        hub_epoch: h.hub_epoch,
    }
}

fn verify(
    offered: &SignedClusterState,
    chain: &[SignedHeader],
    held: Option<&HeldVersion>,
) -> Result<Verdict, Rejection> {
    verify_cluster_state(
        offered,
        chain,
        &key(1).verifying_key(),
        "c-a",
        held,
        NOW,
        &Limits::default(),
    )
}

#[test]
fn first_state_is_accepted() {
    let h = history(1);
    match verify(&h[0], &[], None).unwrap() {
        Verdict::Accept(state) => {
            assert_eq!(state.header.version, 1);
            assert_eq!(state.body, body("commit1"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn next_version_chains() {
    let h = history(2);
    assert!(matches!(
        verify(&h[1], &[], Some(&held(&h[0]))).unwrap(),
        Verdict::Accept(_)
    ));
}

#[test]
fn skipped_versions_chain_through_headers() {
    let h = history(4);
    let chain = [h[1].signed_header(), h[2].signed_header()];
    assert!(matches!(
        verify(&h[3], &chain, Some(&held(&h[0]))).unwrap(),
        Verdict::Accept(_)
    ));
    // Without the intermediate headers the link cannot be checked.
    assert_eq!(
        verify(&h[3], &[], Some(&held(&h[0]))).unwrap_err(),
        Rejection::BrokenChain {
            version: 4,
            held: 1
        }
    );
    // A chain with a gap is refused.
    assert!(matches!(
        verify(&h[3], &chain[1..], Some(&held(&h[0]))).unwrap_err(),
        Rejection::BrokenChain { .. }
    ));
}

#[test]
fn same_version_same_digest_is_already_held() {
    let h = history(1);
    assert_eq!(
        verify(&h[0], &[], Some(&held(&h[0]))).unwrap(),
        Verdict::AlreadyHeld
    );
}

#[test]
fn same_version_other_content_is_a_fork() {
    let h = history(1);
    let other = ClusterState::sign(header("c-a", 1, None), &body("other"), &key(1)).unwrap();
    assert_eq!(
        verify(&other, &[], Some(&held(&h[0]))).unwrap_err(),
        Rejection::Forked(1)
    );
}

#[test]
fn older_version_is_stale() {
    let h = history(2);
    assert_eq!(
        verify(&h[0], &[], Some(&held(&h[1]))).unwrap_err(),
        Rejection::Stale {
            offered: 1,
            held: 2
        }
    );
}

#[test]
fn bad_signature_and_wrong_key() {
    let h = history(1);
    let mut forged = h[0].clone();
    forged.signature[0] ^= 1;
    assert_eq!(
        verify(&forged, &[], None).unwrap_err(),
        Rejection::BadSignature
    );

    let other_key = ClusterState::sign(header("c-a", 1, None), &body("x"), &key(2)).unwrap();
    assert_eq!(
        verify(&other_key, &[], None).unwrap_err(),
        Rejection::BadSignature
    );

    let mut tampered_header = h[0].clone();
    let text = String::from_utf8(tampered_header.header.clone()).unwrap();
    tampered_header.header = text.replace("\"version\":1", "\"version\":9").into_bytes();
    assert_eq!(
        verify(&tampered_header, &[], None).unwrap_err(),
        Rejection::BadSignature
    );
}

#[test]
fn another_clusters_state_is_refused() {
    let s = ClusterState::sign(header("c-b", 1, None), &body("x"), &key(1)).unwrap();
    assert_eq!(
        verify(&s, &[], None).unwrap_err(),
        Rejection::WrongCluster {
            got: "c-b".into(),
            want: "c-a".into()
        }
    );
}

#[test]
fn tampered_body_is_refused() {
    let mut s = history(1).remove(0);
    s.body = serde_json::to_vec(&body("evil")).unwrap();
    assert_eq!(verify(&s, &[], None).unwrap_err(), Rejection::BodyDigest);
}

#[test]
fn expired_state_is_refused_as_new() {
    let mut h = header("c-a", 1, None);
    h.expires_at = NOW - 1;
    let s = ClusterState::sign(h, &body("x"), &key(1)).unwrap();
    assert!(matches!(
        verify(&s, &[], None).unwrap_err(),
        Rejection::Expired { .. }
    ));
}

#[test]
fn newer_epoch_restarts_the_chain_older_is_refused() {
    let h = history(2);
    let mut newer = header("c-a", 5, None);
    newer.hub_epoch = 2;
    let s = ClusterState::sign(newer, &body("x"), &key(1)).unwrap();
    assert!(matches!(
        verify(&s, &[], Some(&held(&h[1]))).unwrap(),
        Verdict::Accept(_)
    ));

    let mut held_newer = held(&h[1]);
    held_newer.hub_epoch = 3;
    assert_eq!(
        verify(&s, &[], Some(&held_newer)).unwrap_err(),
        Rejection::StaleEpoch {
            offered: 2,
            held: 3
        }
    );
}

#[test]
fn object_limits_and_digests() {
    let b = body("x");
    let entry = &b.apps[0].objects[0];
    let bytes = br#"{"apiVersion":"v1","kind":"ConfigMap"}"#;
    verify_object(entry, bytes, &Limits::default()).unwrap();
    assert!(matches!(
        verify_object(entry, b"{}", &Limits::default()).unwrap_err(),
        Rejection::ObjectDigest { .. }
    ));
    let tight = Limits {
        max_object_bytes: 4,
        ..Limits::default()
    };
    assert!(matches!(
        verify_object(entry, bytes, &tight).unwrap_err(),
        Rejection::Limit(_)
    ));

    let s = history(1).remove(0);
    let too_few = Limits {
        max_objects: 0,
        ..Limits::default()
    };
    assert!(matches!(
        verify_cluster_state(&s, &[], &key(1).verifying_key(), "c-a", None, NOW, &too_few)
            .unwrap_err(),
        Rejection::Limit(_)
    ));
}

#[test]
fn signing_is_deterministic() {
    let a = ClusterState::sign(header("c-a", 1, None), &body("x"), &key(1)).unwrap();
    let b = ClusterState::sign(header("c-a", 1, None), &body("x"), &key(1)).unwrap();
    assert_eq!(a, b);
}

fn verify_unchained(
    offered: &SignedClusterState,
    held: Option<&HeldVersion>,
) -> Result<Verdict, Rejection> {
    verify_cluster_state_without_chain(
        offered,
        &key(1).verifying_key(),
        "c-a",
        held,
        NOW,
        &Limits::default(),
    )
}

#[test]
fn without_a_chain_a_newer_state_is_accepted_but_nothing_older_or_forged() {
    let h = history(4);
    // The hub pruned versions 2 and 3: version 4 is accepted on its own checks.
    assert!(matches!(
        verify_unchained(&h[3], Some(&held(&h[0]))).unwrap(),
        Verdict::Accept(_)
    ));
    assert_eq!(
        verify_unchained(&h[0], Some(&held(&h[3]))).unwrap_err(),
        Rejection::Stale {
            offered: 1,
            held: 4
        }
    );
    assert_eq!(
        verify_unchained(&h[3], Some(&held(&h[3]))).unwrap(),
        Verdict::AlreadyHeld
    );
    // The next version skips nothing, so it must still link to the held one.
    let unlinked = ClusterState::sign(header("c-a", 2, None), &body("x"), &key(1)).unwrap();
    assert_eq!(
        verify_unchained(&unlinked, Some(&held(&h[0]))).unwrap_err(),
        Rejection::BrokenChain {
            version: 2,
            held: 1
        }
    );
    let forged = ClusterState::sign(header("c-a", 9, None), &body("x"), &key(2)).unwrap();
    assert_eq!(
        verify_unchained(&forged, Some(&held(&h[0]))).unwrap_err(),
        Rejection::BadSignature
    );
    let mut older_epoch = header("c-a", 9, None);
    older_epoch.hub_epoch = 0;
    let older_epoch = ClusterState::sign(older_epoch, &body("x"), &key(1)).unwrap();
    assert!(matches!(
        verify_unchained(&older_epoch, Some(&held(&h[0]))).unwrap_err(),
        Rejection::StaleEpoch { .. }
    ));
}
