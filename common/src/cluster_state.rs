//! The ClusterState: everything one cluster must run, signed by the hub (DESIGN.md §7).
//!
//! A ClusterState is sent as three byte strings: a canonical-JSON **header**
//! (`cluster_id, hub_epoch, version, prev_digest, issued_at, expires_at` and
//! the digest of the body), the Ed25519 **signature** of the header, and the
//! canonical-JSON **body** (the apps and their object lists). The signature
//! covers the body through its digest, and the version's digest — what
//! `prev_digest` chains to — is the SHA-256 of the header. Because headers are
//! small and self-contained, an agent that skipped versions verifies the hash
//! chain from the headers alone, without downloading the skipped bodies.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::canonical::canonical_bytes;
use crate::digest::Digest;
use crate::limits::Limits;
use crate::object::ObjectId;

/// Domain separation: a signature over a ClusterState header is never valid for anything else.
const SIGNING_CONTEXT: &[u8] = b"flotilla.v1.ClusterStateHeader\0";

/// How an app's drift is handled on the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DriftMode {
    /// Re-apply to undo changes made behind Flotilla's back.
    #[default]
    Correct,
    /// Only report them.
    Report,
}

/// One object of an app, by reference: its bytes travel separately and are checked against `digest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectEntry {
    /// Which object.
    #[serde(flatten)]
    pub id: ObjectId,
    /// SHA-256 of the object's canonical JSON.
    pub digest: Digest,
    /// Length of the canonical JSON.
    pub size: u64,
}

/// One app at one release, for one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppState {
    /// App name.
    pub name: String,
    /// Source name the app comes from.
    pub source: String,
    /// Commit the release was rendered from.
    pub commit: String,
    /// Release id (digest of the app's rendered object set).
    pub release_id: String,
    /// Apps that must be applied and healthy first.
    pub depends_on: Vec<String>,
    /// Drift handling.
    pub drift: DriftMode,
    /// Whether objects that leave the app are deleted.
    pub prune: bool,
    /// Kinds (`group/Kind`, core group written `Kind`) that prune may delete although protected by default.
    pub prune_protect: Vec<String>,
    /// Objects, sorted by id.
    pub objects: Vec<ObjectEntry>,
    /// Whether server-side apply takes over fields other field managers own. Left out of the
    /// encoding when false, so states signed before the field existed keep their bytes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// For a chart from a chart repository: which chart, version and archive the release was rendered
    /// from, so the render is reproducible. Left out of the encoding when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<ChartRelease>,
    /// The `flotilla.yaml` the app is declared in (repository path); empty in states signed before the
    /// field existed, and then left out of the encoding.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub origin: String,
}

/// A chart from a chart repository, as a release used it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChartRelease {
    /// Repository URL.
    pub repo: String,
    /// Chart name.
    pub name: String,
    /// The version the app's version or range resolved to.
    pub version: String,
    /// `sha256:…` of the archive, verified against the repository's index.
    pub digest: String,
}

/// The signed part of a ClusterState.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateHeader {
    /// The cluster this state is for.
    pub cluster_id: String,
    /// Hub epoch; a newer epoch may restart the hash chain.
    pub hub_epoch: u64,
    /// Strictly increasing per cluster.
    pub version: u64,
    /// Digest of the previous version's header; `None` for the first.
    pub prev_digest: Option<Digest>,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds after which an agent no longer accepts this state as new.
    pub expires_at: i64,
    /// Digest of the canonical body.
    pub body_digest: Digest,
}

/// The content of a ClusterState.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StateBody {
    /// Apps, sorted by name.
    pub apps: Vec<AppState>,
}

/// A ClusterState as decoded after verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterState {
    /// Header.
    pub header: StateHeader,
    /// Body.
    pub body: StateBody,
}

/// A ClusterState as stored and sent: exact bytes plus signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedClusterState {
    /// Canonical JSON of the header.
    pub header: Vec<u8>,
    /// Ed25519 signature of the header.
    pub signature: Vec<u8>,
    /// Canonical JSON of the body.
    pub body: Vec<u8>,
}

/// A header with its signature, used to verify the chain across skipped versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHeader {
    /// Canonical JSON of the header.
    pub header: Vec<u8>,
    /// Ed25519 signature of the header.
    pub signature: Vec<u8>,
}

/// The version an agent already holds, against which a new one is checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldVersion {
    /// Version held.
    pub version: u64,
    /// Its header digest.
    pub digest: Digest,
    /// Its hub epoch.
    pub hub_epoch: u64,
}

/// Why a ClusterState (or one of its objects) was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Rejection {
    /// Bytes that do not decode.
    #[error("malformed ClusterState: {0}")]
    Malformed(String),
    /// Signature does not verify with the pinned key.
    #[error("ClusterState signature does not verify with the pinned hub key")]
    BadSignature,
    /// Meant for another cluster.
    #[error("ClusterState is for cluster {got}, not {want}")]
    WrongCluster {
        /// Cluster id in the state.
        got: String,
        /// Our cluster id.
        want: String,
    },
    /// Older than what is held.
    #[error("ClusterState version {offered} is older than held version {held}")]
    Stale {
        /// Offered version.
        offered: u64,
        /// Held version.
        held: u64,
    },
    /// Same version, different content: a forked history.
    #[error("ClusterState version {0} differs from the held state with the same version")]
    Forked(u64),
    /// From an older hub epoch than the held one.
    #[error("ClusterState hub epoch {offered} is older than held epoch {held}")]
    StaleEpoch {
        /// Offered epoch.
        offered: u64,
        /// Held epoch.
        held: u64,
    },
    /// `prev_digest` does not link to the held version.
    #[error("ClusterState version {version} does not chain to held version {held}")]
    BrokenChain {
        /// Version whose link broke.
        version: u64,
        /// Held version.
        held: u64,
    },
    /// Past `expires_at`.
    #[error("ClusterState version {version} expired at {expires_at} (now {now})")]
    Expired {
        /// Version.
        version: u64,
        /// Expiry, unix seconds.
        expires_at: i64,
        /// Now, unix seconds.
        now: i64,
    },
    /// Body digest in the header does not match the body.
    #[error("ClusterState body does not match its digest")]
    BodyDigest,
    /// A limit from DESIGN.md §9 was exceeded.
    #[error("ClusterState over limit: {0}")]
    Limit(String),
    /// An object's bytes do not hash to the digest the state names.
    #[error("object {object} does not match digest {digest}")]
    ObjectDigest {
        /// Object.
        object: String,
        /// Expected digest.
        digest: Digest,
    },
}

/// Encoding failed; only possible with non-JSON-representable values.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode ClusterState: {0}")]
pub struct EncodeError(#[from] serde_json::Error);

impl ClusterState {
    /// Signs the header (after filling in the body digest) and returns the bytes to store and ship.
    pub fn sign(
        mut header: StateHeader,
        body: &StateBody,
        key: &SigningKey,
    ) -> Result<SignedClusterState, EncodeError> {
        let body = canonical_bytes(body)?;
        header.body_digest = Digest::of(&body);
        let header = canonical_bytes(&header)?;
        let signature = key.sign(&signing_input(&header)).to_bytes().to_vec();
        Ok(SignedClusterState {
            header,
            signature,
            body,
        })
    }
}

fn signing_input(header: &[u8]) -> Vec<u8> {
    let mut input = Vec::with_capacity(SIGNING_CONTEXT.len() + header.len());
    input.extend_from_slice(SIGNING_CONTEXT);
    input.extend_from_slice(header);
    input
}

impl SignedClusterState {
    /// The version's digest: SHA-256 of the header bytes.
    pub fn digest(&self) -> Digest {
        Digest::of(&self.header)
    }

    /// The header and signature alone.
    pub fn signed_header(&self) -> SignedHeader {
        SignedHeader {
            header: self.header.clone(),
            signature: self.signature.clone(),
        }
    }

    /// Decodes without verifying: only for the hub's own store and for display.
    pub fn decode_unverified(&self) -> Result<ClusterState, Rejection> {
        Ok(ClusterState {
            header: decode(&self.header)?,
            body: decode(&self.body)?,
        })
    }
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Rejection> {
    serde_json::from_slice(bytes).map_err(|e| Rejection::Malformed(e.to_string()))
}

fn verify_header(
    signed: &SignedHeader,
    key: &VerifyingKey,
    cluster_id: &str,
) -> Result<StateHeader, Rejection> {
    let signature =
        Signature::from_slice(&signed.signature).map_err(|_| Rejection::BadSignature)?;
    key.verify(&signing_input(&signed.header), &signature)
        .map_err(|_| Rejection::BadSignature)?;
    let header: StateHeader = decode(&signed.header)?;
    if header.cluster_id != cluster_id {
        return Err(Rejection::WrongCluster {
            got: header.cluster_id,
            want: cluster_id.to_string(),
        });
    }
    Ok(header)
}

/// What verification concluded about an offered ClusterState.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A newer state, verified: store it, then fetch and check its objects.
    Accept(ClusterState),
    /// Exactly the held version again: nothing to do.
    AlreadyHeld,
}

/// Everything the agent checks before it stores a ClusterState (DESIGN.md §7),
/// except object bytes, which arrive later and go through [`verify_object`].
///
/// `chain` holds the signed headers of versions between the held one and the
/// offered one, oldest first; it may be empty when nothing was skipped.
pub fn verify_cluster_state(
    offered: &SignedClusterState,
    chain: &[SignedHeader],
    key: &VerifyingKey,
    cluster_id: &str,
    held: Option<&HeldVersion>,
    now: i64,
    limits: &Limits,
) -> Result<Verdict, Rejection> {
    verify(offered, Some(chain), key, cluster_id, held, now, limits)
}

/// [`verify_cluster_state`] for when the hub cannot give the chain from the held version
/// (it pruned those versions or there are too many): every check but the hash-chain link,
/// which is what a newly registered agent, holding nothing, does too. Versions older than
/// the held one and older epochs are still refused, and a state that directly follows the
/// held one (no version skipped) must still link to it.
pub fn verify_cluster_state_without_chain(
    offered: &SignedClusterState,
    key: &VerifyingKey,
    cluster_id: &str,
    held: Option<&HeldVersion>,
    now: i64,
    limits: &Limits,
) -> Result<Verdict, Rejection> {
    verify(offered, None, key, cluster_id, held, now, limits)
}

fn verify(
    offered: &SignedClusterState,
    chain: Option<&[SignedHeader]>,
    key: &VerifyingKey,
    cluster_id: &str,
    held: Option<&HeldVersion>,
    now: i64,
    limits: &Limits,
) -> Result<Verdict, Rejection> {
    let header = verify_header(&offered.signed_header(), key, cluster_id)?;
    let digest = offered.digest();
    if let Some(held) = held {
        if header.version == held.version {
            return if digest == held.digest {
                Ok(Verdict::AlreadyHeld)
            } else {
                Err(Rejection::Forked(header.version))
            };
        }
        if header.version < held.version {
            return Err(Rejection::Stale {
                offered: header.version,
                held: held.version,
            });
        }
        if header.hub_epoch < held.hub_epoch {
            return Err(Rejection::StaleEpoch {
                offered: header.hub_epoch,
                held: held.hub_epoch,
            });
        }
        if header.hub_epoch == held.hub_epoch {
            match chain {
                Some(chain) => verify_chain(&header, chain, key, cluster_id, held)?,
                None if header.version == held.version + 1 => {
                    verify_chain(&header, &[], key, cluster_id, held)?
                }
                None => {}
            }
        }
    }
    if now > header.expires_at {
        return Err(Rejection::Expired {
            version: header.version,
            expires_at: header.expires_at,
            now,
        });
    }
    if Digest::of(&offered.body) != header.body_digest {
        return Err(Rejection::BodyDigest);
    }
    let body: StateBody = decode(&offered.body)?;
    check_limits(&body, limits)?;
    Ok(Verdict::Accept(ClusterState { header, body }))
}

fn verify_chain(
    offered: &StateHeader,
    chain: &[SignedHeader],
    key: &VerifyingKey,
    cluster_id: &str,
    held: &HeldVersion,
) -> Result<(), Rejection> {
    let broken = || Rejection::BrokenChain {
        version: offered.version,
        held: held.version,
    };
    let mut prev_version = held.version;
    let mut prev_digest = held.digest;
    for link in chain {
        let header = verify_header(link, key, cluster_id)?;
        if header.version <= prev_version
            || header.version >= offered.version
            || header.prev_digest != Some(prev_digest)
        {
            return Err(broken());
        }
        prev_version = header.version;
        prev_digest = Digest::of(&link.header);
    }
    if offered.prev_digest != Some(prev_digest) {
        return Err(broken());
    }
    Ok(())
}

fn check_limits(body: &StateBody, limits: &Limits) -> Result<(), Rejection> {
    let mut count = 0u64;
    let mut bytes = 0u64;
    for app in &body.apps {
        for object in &app.objects {
            count += 1;
            bytes += object.size;
            if object.size > limits.max_object_bytes {
                return Err(Rejection::Limit(format!(
                    "object {} is {} bytes, over the {} byte limit",
                    object.id, object.size, limits.max_object_bytes
                )));
            }
        }
    }
    if count > limits.max_objects {
        return Err(Rejection::Limit(format!(
            "{count} objects, over the limit of {}",
            limits.max_objects
        )));
    }
    if bytes > limits.max_state_bytes {
        return Err(Rejection::Limit(format!(
            "{bytes} bytes of objects, over the limit of {}",
            limits.max_state_bytes
        )));
    }
    Ok(())
}

/// Checks one object's bytes against its entry in a verified ClusterState.
pub fn verify_object(entry: &ObjectEntry, bytes: &[u8], limits: &Limits) -> Result<(), Rejection> {
    if bytes.len() as u64 > limits.max_object_bytes {
        return Err(Rejection::Limit(format!(
            "object {} is {} bytes, over the {} byte limit",
            entry.id,
            bytes.len(),
            limits.max_object_bytes
        )));
    }
    if Digest::of(bytes) != entry.digest || bytes.len() as u64 != entry.size {
        return Err(Rejection::ObjectDigest {
            object: entry.id.to_string(),
            digest: entry.digest,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
