//! The offer path, fed directly: what gRPC would deliver, minus the network.
//!
//! This is where a misbehaving hub is tested — forged or foreign signatures, a chain through a
//! forged header, withheld objects, announcements repeating a refused version — because the real
//! hub that `tests/hub_session.rs` runs the agent against cannot be made to produce them.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_common::cluster_state::{AppState, ClusterState, StateBody, StateHeader};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::apply::{ApplySettings, apply_held};
use crate::fixtures::{self, CLUSTER, NOW, app, config_map, hub_key, signed, signed_by};

use crate::target::dir::DirTarget;

/// Serves blobs from a map and remembers what was asked.
#[derive(Default)]
struct MapFetcher {
    blobs: BTreeMap<Digest, Vec<u8>>,
    asked: Vec<Digest>,
}

impl ObjectFetcher for MapFetcher {
    async fn fetch(&mut self, digests: Vec<Digest>) -> Result<Vec<(Digest, Vec<u8>)>, SyncError> {
        self.asked.extend(&digests);
        Ok(digests
            .iter()
            .filter_map(|d| self.blobs.get(d).map(|b| (*d, b.clone())))
            .collect())
    }
}

fn ctx() -> OfferContext {
    OfferContext {
        cluster_id: CLUSTER.into(),
        key: hub_key().verifying_key(),
        limits: Limits::default(),
    }
}

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(&dir.path().join("agent.redb"), 100).unwrap()
}

#[tokio::test]
async fn accepts_newer_states_fetching_only_missing_objects() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let (a, b, c) = (
        config_map("a", "1"),
        config_map("b", "2"),
        config_map("c", "3"),
    );
    let mut fetcher = MapFetcher {
        blobs: fixtures::blobs(&[&a, &b, &c]),
        ..MapFetcher::default()
    };

    let v1 = signed(1, None, vec![app("web", &[&a, &b])]);
    let outcome = offer(&ctx(), &store, v1.clone(), &[], &mut fetcher, NOW).await;
    assert_eq!(
        outcome.unwrap(),
        OfferOutcome::Accepted {
            version: 1,
            fetched: 2
        }
    );
    assert_eq!(store.held().unwrap().unwrap().signed, v1);
    assert_eq!(
        fetcher.asked.iter().collect::<BTreeSet<_>>(),
        [a.0.digest, b.0.digest].iter().collect()
    );

    // Version 2 shares a and b; only c crosses the (metered) link.
    fetcher.asked.clear();
    let v2 = signed(2, Some(v1.digest()), vec![app("web", &[&a, &b, &c])]);
    let outcome = offer(&ctx(), &store, v2.clone(), &[], &mut fetcher, NOW).await;
    assert_eq!(
        outcome.unwrap(),
        OfferOutcome::Accepted {
            version: 2,
            fetched: 1
        }
    );
    assert_eq!(fetcher.asked, vec![c.0.digest]);

    fetcher.asked.clear();
    let outcome = offer(&ctx(), &store, v2, &[], &mut fetcher, NOW).await;
    assert_eq!(outcome.unwrap(), OfferOutcome::AlreadyHeld);
    assert!(fetcher.asked.is_empty());
    assert!(
        store.outbox_after(0).unwrap().is_empty(),
        "acceptance alone reports nothing"
    );
}

/// One bad offer: what arrives, and which rejection it must meet.
struct Bad {
    name: &'static str,
    state: SignedClusterState,
    chain: Vec<SignedHeader>,
    blobs: BTreeMap<Digest, Vec<u8>>,
    now: i64,
    want: fn(&Rejection) -> bool,
}

#[tokio::test]
async fn bad_offers_store_nothing_apply_nothing_and_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let target = DirTarget::new(dir.path().join("objects")).unwrap();
    let (a, c) = (config_map("a", "1"), config_map("c", "3"));
    let v1 = signed(1, None, vec![app("web", &[&a])]);
    let mut fetcher = MapFetcher {
        blobs: fixtures::blobs(&[&a]),
        ..MapFetcher::default()
    };
    offer(&ctx(), &store, v1.clone(), &[], &mut fetcher, NOW)
        .await
        .unwrap();
    let v2 = signed(2, Some(v1.digest()), vec![app("web", &[&a])]);
    offer(&ctx(), &store, v2.clone(), &[], &mut fetcher, NOW)
        .await
        .unwrap();
    let settings = ApplySettings {
        deletion_budget: 50,
        deletion_window: std::time::Duration::ZERO,
        override_budget: false,
    };
    apply_held(
        &store,
        &mut target.clone(),
        settings,
        NOW,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    let acked: Vec<u64> = store
        .outbox_after(0)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    for seq in acked {
        store.ack(seq).unwrap();
    }

    // A good v3 would add object c and drop a.
    let next_apps = || vec![app("web", &[&c])];
    let good_blobs = fixtures::blobs(&[&c]);
    let mut forged = signed(3, Some(v2.digest()), next_apps());
    forged.signature[5] ^= 0x40;
    let mut tampered_body = signed(3, Some(v2.digest()), next_apps());
    tampered_body.body = signed(3, Some(v2.digest()), vec![app("evil", &[&c])]).body;
    let mut bad_bytes = good_blobs.clone();
    bad_bytes.insert(c.0.digest, b"{\"kind\":\"Secret\"}".to_vec());
    let other_key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let far_past = {
        let header = StateHeader {
            cluster_id: CLUSTER.into(),
            hub_epoch: 1,
            version: 3,
            prev_digest: Some(v2.digest()),
            issued_at: NOW - 7200,
            expires_at: NOW - 3600,
            body_digest: Digest::of(b""),
        };
        ClusterState::sign(header, &StateBody { apps: next_apps() }, &hub_key()).unwrap()
    };
    let skipped = signed(3, Some(v2.digest()), next_apps());
    let through_forged = signed(4, Some(forged.digest()), next_apps());
    let forged_link = forged.signed_header();
    let cases = vec![
        Bad {
            name: "forged signature",
            state: forged,
            chain: vec![],
            blobs: good_blobs.clone(),
            now: NOW,
            want: |r| *r == Rejection::BadSignature,
        },
        Bad {
            name: "signed with another key",
            state: signed_by(&other_key, CLUSTER, 3, Some(v2.digest()), next_apps()),
            chain: vec![],
            blobs: good_blobs.clone(),
            now: NOW,
            want: |r| *r == Rejection::BadSignature,
        },
        Bad {
            name: "another cluster's state",
            state: signed_by(
                &hub_key(),
                "c-someoneelse",
                3,
                Some(v2.digest()),
                next_apps(),
            ),
            chain: vec![],
            blobs: good_blobs.clone(),
            now: NOW,
            want: |r| matches!(r, Rejection::WrongCluster { .. }),
        },
        Bad {
            name: "stale version",
            state: v1.clone(),
            chain: vec![],
            blobs: good_blobs.clone(),
            now: NOW,
            want: |r| {
                *r == Rejection::Stale {
                    offered: 1,
                    held: 2,
                }
            },
        },
        Bad {
            name: "same version, other content",
            state: signed(2, Some(v1.digest()), next_apps()),
            chain: vec![],
            blobs: good_blobs.clone(),
            now: NOW,
            want: |r| *r == Rejection::Forked(2),
        },
        Bad {
            name: "broken hash chain",
            state: signed(4, Some(skipped.digest()), next_apps()),
            chain: vec![],
            blobs: good_blobs.clone(),
            now: NOW,
            want: |r| {
                matches!(
                    r,
                    Rejection::BrokenChain {
                        version: 4,
                        held: 2
                    }
                )
            },
        },
        Bad {
            name: "well signed, but chained through a forged header",
            state: through_forged,
            chain: vec![forged_link],
            blobs: good_blobs.clone(),
            now: NOW,
            want: |r| *r == Rejection::BadSignature,
        },
        Bad {
            name: "expired",
            state: far_past,
            chain: vec![],
            blobs: good_blobs.clone(),
            now: NOW,
            want: |r| matches!(r, Rejection::Expired { version: 3, .. }),
        },
        Bad {
            name: "body swapped under a valid header",
            state: tampered_body,
            chain: vec![],
            blobs: good_blobs.clone(),
            now: NOW,
            want: |r| *r == Rejection::BodyDigest,
        },
        Bad {
            name: "object bytes that do not match their digest",
            state: signed(3, Some(v2.digest()), next_apps()),
            chain: vec![],
            blobs: bad_bytes,
            now: NOW,
            want: |r| matches!(r, Rejection::ObjectDigest { .. }),
        },
    ];

    let held_before = store.held().unwrap();
    let files_before = target.list_all().await.unwrap();
    let mut seen_seqs = BTreeSet::new();
    for case in cases {
        let mut fetcher = MapFetcher {
            blobs: case.blobs,
            ..MapFetcher::default()
        };
        let outcome = offer(
            &ctx(),
            &store,
            case.state,
            &case.chain,
            &mut fetcher,
            case.now,
        )
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let OfferOutcome::Rejected(rejection) = outcome else {
            panic!("{}: not rejected: {outcome:?}", case.name);
        };
        assert!((case.want)(&rejection), "{}: {rejection:?}", case.name);

        // Nothing new stored: same held state, no blob of the refused state kept.
        assert_eq!(store.held().unwrap(), held_before, "{}", case.name);
        assert_eq!(store.blob(&c.0.digest).unwrap(), None, "{}", case.name);
        // The refusal is queued for the hub, with the apps still running as they were.
        let reports = store.outbox_after(0).unwrap();
        let report = reports.last().unwrap();
        assert!(seen_seqs.insert(report.seq), "{}: a new report", case.name);
        assert_eq!(
            report.rejection.as_deref(),
            Some(rejection.to_string().as_str())
        );
        assert_eq!(report.applied_version, 2, "{}", case.name);
        assert_eq!(report.apps.len(), 1, "{}", case.name);
        // Nothing applied: an apply pass still converges on version 2.
        let outcome = apply_held(
            &store,
            &mut target.clone(),
            settings,
            NOW,
            &CancellationToken::new(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            (outcome.version, outcome.written, outcome.deleted),
            (2, 0, 0)
        );
        assert_eq!(
            target.list_all().await.unwrap(),
            files_before,
            "{}",
            case.name
        );
    }

    // The good version 3 is still accepted afterwards, and a skipped version chains through
    // the signed headers between.
    let v3 = signed(3, Some(v2.digest()), next_apps());
    let v4 = signed(4, Some(v3.digest()), next_apps());
    let mut fetcher = MapFetcher {
        blobs: fixtures::blobs(&[&c]),
        ..MapFetcher::default()
    };
    let outcome = offer(&ctx(), &store, v4, &[v3.signed_header()], &mut fetcher, NOW).await;
    assert_eq!(
        outcome.unwrap(),
        OfferOutcome::Accepted {
            version: 4,
            fetched: 1
        }
    );
}

#[tokio::test]
async fn a_hub_that_withholds_objects_is_an_error_not_a_rejection() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let a = config_map("a", "1");
    let mut fetcher = MapFetcher::default();
    let err = offer(
        &ctx(),
        &store,
        signed(1, None, vec![app("web", &[&a])]),
        &[],
        &mut fetcher,
        NOW,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, SyncError::MissingObjects(1)), "{err}");
    assert_eq!(store.held().unwrap(), None);
    assert!(store.outbox_after(0).unwrap().is_empty());
}

#[tokio::test]
async fn unrequested_objects_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let a = config_map("a", "1");
    let junk = config_map("junk", "x");
    struct Extra(Vec<(Digest, Vec<u8>)>);
    impl ObjectFetcher for Extra {
        async fn fetch(&mut self, _: Vec<Digest>) -> Result<Vec<(Digest, Vec<u8>)>, SyncError> {
            Ok(self.0.clone())
        }
    }
    let mut fetcher = Extra(vec![
        (junk.0.digest, junk.1.clone()),
        (a.0.digest, a.1.clone()),
    ]);
    let apps: Vec<AppState> = vec![app("web", &[&a])];
    let outcome = offer(
        &ctx(),
        &store,
        signed(1, None, apps),
        &[],
        &mut fetcher,
        NOW,
    )
    .await;
    assert_eq!(
        outcome.unwrap(),
        OfferOutcome::Accepted {
            version: 1,
            fetched: 1
        }
    );
    assert_eq!(store.blob(&junk.0.digest).unwrap(), None);
}

/// A channel to a port nobody listens on: any call through it fails at once, so a test sees
/// whether a call was made by whether it got an error.
fn unreachable_hub() -> Channel {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect_lazy()
}

/// The hub's heartbeats repeat its newest version even after the agent refused it; asking for
/// that state again would fetch and report the same refusal on every heartbeat.
#[tokio::test]
async fn announcements_of_the_held_or_the_refused_version_ask_the_hub_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let a = config_map("a", "1");
    let mut fetcher = MapFetcher {
        blobs: fixtures::blobs(&[&a]),
        ..MapFetcher::default()
    };
    let v1 = signed(1, None, vec![app("web", &[&a])]);
    offer(&ctx(), &store, v1.clone(), &[], &mut fetcher, NOW)
        .await
        .unwrap();
    let other_key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let refused = signed_by(&other_key, CLUSTER, 2, Some(v1.digest()), vec![]);
    let outcome = offer(&ctx(), &store, refused.clone(), &[], &mut fetcher, NOW).await;
    assert_eq!(
        outcome.unwrap(),
        OfferOutcome::Rejected(Rejection::BadSignature)
    );

    let syncer = Syncer {
        hub: crate::link::HubHandle::fixed(unreachable_hub()),
        store: store.clone(),
        ctx: ctx(),
        held: watch::channel(1).0,
        reporter: Arc::new(Notify::new()),
        idle_timeout: Duration::from_secs(60),
        metrics: Default::default(),
    };
    let mut client = AgentClient::new(syncer.hub.channel());
    // As `on_announcement` leaves it after refusing version 2.
    let mut memory = SyncMemory {
        rejected: Some((2, refused.digest())),
    };
    let announce = |version, digest: Option<Digest>, heartbeat| Announcement {
        version,
        digest,
        heartbeat,
    };
    let (asks, skips) = (true, false);
    let cases = [
        (
            "heartbeat at the held version",
            announce(1, None, true),
            skips,
        ),
        (
            "the held version again",
            announce(1, Some(v1.digest()), false),
            skips,
        ),
        (
            "heartbeat at the refused version",
            announce(2, None, true),
            skips,
        ),
        (
            "the refused version again",
            announce(2, Some(refused.digest()), false),
            skips,
        ),
        (
            "held version number, other digest",
            announce(1, Some(refused.digest()), false),
            asks,
        ),
        (
            "refused version number, other digest",
            announce(2, Some(v1.digest()), false),
            asks,
        ),
        ("a newer version", announce(3, None, false), asks),
    ];
    for (case, announced, want_call) in cases {
        let result = tokio::time::timeout(
            Duration::from_secs(30),
            syncer.on_announcement(&mut client, announced, &mut memory),
        )
        .await
        .unwrap_or_else(|_| panic!("{case}: timed out"));
        match (want_call, result) {
            (false, Ok(())) => {}
            (true, Err(SyncError::Rpc { call, .. })) => assert_eq!(call, "GetClusterState"),
            (_, result) => panic!("{case}: {result:?}"),
        }
        assert_eq!(memory.rejected, Some((2, refused.digest())), "{case}");
    }
    assert_eq!(store.held().unwrap().unwrap().signed, v1);
}

#[tokio::test]
async fn without_a_chain_a_newer_state_is_accepted_and_an_older_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let a = config_map("a", "1");
    let mut fetcher = MapFetcher {
        blobs: fixtures::blobs(&[&a]),
        ..MapFetcher::default()
    };
    let v1 = signed(1, None, vec![app("web", &[&a])]);
    offer(&ctx(), &store, v1.clone(), &[], &mut fetcher, NOW)
        .await
        .unwrap();
    let v2 = signed(2, Some(v1.digest()), vec![app("web", &[&a])]);
    let v3 = signed(3, Some(v2.digest()), vec![app("web", &[&a])]);
    let v9 = signed(9, Some(Digest::of(b"pruned v8")), vec![app("web", &[&a])]);
    // With a chain the hub no longer holds, version 9 cannot link to version 1...
    assert!(matches!(
        offer(&ctx(), &store, v9.clone(), &[], &mut fetcher, NOW)
            .await
            .unwrap(),
        OfferOutcome::Rejected(Rejection::BrokenChain { .. })
    ));
    // ...and when the hub says so, it is accepted on its own checks.
    assert_eq!(
        offer_with_chain(&ctx(), &store, v9.clone(), None, &mut fetcher, NOW)
            .await
            .unwrap(),
        OfferOutcome::Accepted {
            version: 9,
            fetched: 0
        }
    );
    assert_eq!(store.held().unwrap().unwrap().signed, v9);
    // An older state stays refused without a chain.
    assert!(matches!(
        offer_with_chain(&ctx(), &store, v3, None, &mut fetcher, NOW)
            .await
            .unwrap(),
        OfferOutcome::Rejected(Rejection::Stale { .. })
    ));
}
