//! The one place proto (flotilla.v1) types are converted to and from the agent's domain types.
//! Client code in `registration`, `sync` and `status` calls the hub with proto messages and
//! hands them here straight away.

use ed25519_dalek::VerifyingKey;
use flotilla_common::capabilities::Capabilities;
use flotilla_common::cluster_state::{SignedClusterState, SignedHeader};
use flotilla_common::digest::Digest;
use flotilla_common::status::StatusReport;
use flotilla_proto::v1 as pb;

use crate::identity::{
    AgentIdentity, IdentityError, cert_cluster_id, cert_public_key, key_public_key,
};
use crate::sync::Announcement;

/// A hub message that does not carry what the contract promises.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A required field was absent.
    #[error("the hub's {message} has no {field}")]
    Missing {
        /// Message type.
        message: &'static str,
        /// Field.
        field: &'static str,
    },
    /// A digest was not 32 bytes.
    #[error("the hub sent a digest of {0} bytes, not 32")]
    Digest(usize),
    /// The signing key is not a 32-byte Ed25519 public key.
    #[error("the hub's signing public key is not a valid 32-byte Ed25519 key")]
    SigningKey,
    /// The issued certificate is unusable.
    #[error("the hub's certificate is unusable: {0}")]
    Certificate(#[source] IdentityError),
    /// The certificate names another cluster than the response.
    #[error("the hub assigned cluster id {assigned} but the certificate names {certified}")]
    ClusterIdMismatch {
        /// `cluster_id` of the response.
        assigned: String,
        /// Cluster id in the certificate's URI SAN.
        certified: String,
    },
    /// A renewed certificate certifies another key than the one the agent asked for.
    #[error("the hub's renewed certificate is for another key than the agent's new one")]
    RenewedKeyMismatch,
}

/// The registration request; the token travels only in it.
pub fn register_request(
    token: String,
    csr_der: Vec<u8>,
    name: &str,
    capabilities: &Capabilities,
) -> pb::RegisterRequest {
    pb::RegisterRequest {
        bootstrap_token: token,
        csr_der,
        requested_name: name.to_string(),
        labels: Default::default(),
        capabilities: Some(capabilities_message(capabilities)),
    }
}

fn capabilities_message(c: &Capabilities) -> pb::Capabilities {
    pb::Capabilities {
        kube_version: c.kube_version.clone().unwrap_or_default(),
        api_versions: c.api_versions.iter().cloned().collect(),
    }
}

/// A ReportCapabilities request.
pub fn report_capabilities(capabilities: &Capabilities) -> pb::ReportCapabilitiesRequest {
    pb::ReportCapabilitiesRequest {
        capabilities: Some(capabilities_message(capabilities)),
    }
}

/// Checks a registration response and combines it with the key the CSR was made from.
///
/// `fallback_ca_pem` (the CA the hub was verified with) is used if the hub sends no bundle.
pub fn agent_identity(
    response: pb::RegisterResponse,
    key_pem: String,
    fallback_ca_pem: &str,
) -> Result<AgentIdentity, WireError> {
    let signing_public_key: [u8; 32] = response
        .signing_public_key
        .as_slice()
        .try_into()
        .map_err(|_| WireError::SigningKey)?;
    VerifyingKey::from_bytes(&signing_public_key).map_err(|_| WireError::SigningKey)?;
    let certified = cert_cluster_id(&response.certificate_pem).map_err(WireError::Certificate)?;
    if certified != response.cluster_id {
        return Err(WireError::ClusterIdMismatch {
            assigned: response.cluster_id,
            certified,
        });
    }
    let ca_pem = if response.ca_pem.trim().is_empty() {
        fallback_ca_pem.to_string()
    } else {
        response.ca_pem
    };
    Ok(AgentIdentity {
        cluster_id: response.cluster_id,
        cert_pem: response.certificate_pem,
        key_pem,
        ca_pem,
        signing_public_key,
        received_at: crate::unix_now(),
    })
}

/// A Renew answer: the new certificate, which must name this cluster and certify `key_pem`,
/// and the CA bundle (the old one when the hub sends none).
pub fn renewed_identity(
    response: pb::RenewResponse,
    current: &AgentIdentity,
    key_pem: String,
) -> Result<AgentIdentity, WireError> {
    let certified = cert_cluster_id(&response.certificate_pem).map_err(WireError::Certificate)?;
    if certified != current.cluster_id {
        return Err(WireError::ClusterIdMismatch {
            assigned: current.cluster_id.clone(),
            certified,
        });
    }
    let certified_key =
        cert_public_key(&response.certificate_pem).map_err(WireError::Certificate)?;
    if key_public_key(&key_pem).map_err(WireError::Certificate)? != certified_key {
        return Err(WireError::RenewedKeyMismatch);
    }
    Ok(AgentIdentity {
        cluster_id: current.cluster_id.clone(),
        cert_pem: response.certificate_pem,
        key_pem,
        ca_pem: if response.ca_pem.trim().is_empty() {
            current.ca_pem.clone()
        } else {
            response.ca_pem
        },
        signing_public_key: current.signing_public_key,
        received_at: crate::unix_now(),
    })
}

/// A Watch message; an empty or malformed digest becomes `None`.
pub fn announcement(announce: pb::Announce) -> Announcement {
    Announcement {
        version: announce.version,
        digest: Digest::from_slice(&announce.digest).ok(),
        heartbeat: announce.heartbeat,
    }
}

/// The GetClusterState request for `version`, given the version held.
pub fn cluster_state_request(version: u64, have_version: u64) -> pb::GetClusterStateRequest {
    pb::GetClusterStateRequest {
        version,
        have_version,
    }
}

/// The offered state and the chain of headers since the held version.
/// The state and its chain; `None` for the chain when the hub says it cannot give it in full.
pub fn cluster_state_response(
    response: pb::GetClusterStateResponse,
) -> Result<(SignedClusterState, Option<Vec<SignedHeader>>), WireError> {
    let state = response.state.ok_or(WireError::Missing {
        message: "GetClusterStateResponse",
        field: "state",
    })?;
    let chain = response
        .chain
        .into_iter()
        .map(|h| SignedHeader {
            header: h.header,
            signature: h.signature,
        })
        .collect();
    Ok((
        SignedClusterState {
            header: state.header,
            signature: state.signature,
            body: state.body,
        },
        (!response.chain_unavailable).then_some(chain),
    ))
}

/// A FetchObjects request.
pub fn fetch_request(digests: &[Digest]) -> pb::FetchObjectsRequest {
    pb::FetchObjectsRequest {
        digests: digests.iter().map(|d| d.0.to_vec()).collect(),
    }
}

/// One fetched object; its bytes are not checked here but against the ClusterState.
pub fn blob(blob: pb::Blob) -> Result<(Digest, Vec<u8>), WireError> {
    let digest =
        Digest::from_slice(&blob.digest).map_err(|_| WireError::Digest(blob.digest.len()))?;
    Ok((digest, blob.data))
}

/// A status report as sent.
pub fn status_report(report: &StatusReport) -> pb::StatusReport {
    pb::StatusReport {
        seq: report.seq,
        observed_at: report.observed_at,
        applied_version: report.applied_version,
        apps: report
            .apps
            .iter()
            .map(|a| pb::AppStatus {
                app: a.app.clone(),
                commit: a.commit.clone(),
                version: a.version,
                phase: a.phase.as_str().to_string(),
                message: a.message.clone(),
                health: a.health.as_str().to_string(),
                health_reason: a.health_reason.clone(),
            })
            .collect(),
        rejection: report.rejection.clone().unwrap_or_default(),
    }
}

/// The seq an Ack acknowledges.
pub fn ack_seq(ack: &pb::Ack) -> u64 {
    ack.seq
}

#[cfg(test)]
mod tests {
    use flotilla_common::status::{AppHealth, AppPhase, AppStatus};

    use super::*;
    use crate::fixtures;

    #[test]
    fn status_report_maps_every_field() {
        let report = StatusReport {
            seq: 7,
            observed_at: 11,
            applied_version: 3,
            apps: vec![AppStatus {
                app: "web".into(),
                commit: "abc".into(),
                version: 4,
                phase: AppPhase::Failed,
                message: "boom".into(),
                health: AppHealth::Degraded,
                health_reason: "Deployment web: 1 of 2 available".into(),
            }],
            rejection: Some("stale".into()),
        };
        let pb = status_report(&report);
        assert_eq!((pb.seq, pb.observed_at, pb.applied_version), (7, 11, 3));
        assert_eq!(pb.rejection, "stale");
        let app = &pb.apps[0];
        assert_eq!(
            (
                app.app.as_str(),
                app.commit.as_str(),
                app.version,
                app.phase.as_str(),
                app.message.as_str()
            ),
            ("web", "abc", 4, "failed", "boom")
        );
        assert_eq!(
            (app.health.as_str(), app.health_reason.as_str()),
            ("degraded", "Deployment web: 1 of 2 available")
        );
        assert_eq!(
            status_report(&StatusReport {
                rejection: None,
                ..report
            })
            .rejection,
            ""
        );
    }

    #[test]
    fn capabilities_travel_as_sorted_lists_with_an_empty_version_for_none() {
        let caps =
            Capabilities::new(Some("v1.32.4".into()), vec!["v1".into(), "apps/v1".into()]).unwrap();
        let request = register_request("t".into(), vec![1], "edge-1", &caps);
        let sent = request.capabilities.unwrap();
        assert_eq!(sent.kube_version, "v1.32.4");
        assert_eq!(sent.api_versions, ["apps/v1", "v1"]);
        let none = report_capabilities(&Capabilities::default())
            .capabilities
            .unwrap();
        assert_eq!(
            (none.kube_version.as_str(), none.api_versions.len()),
            ("", 0)
        );
    }

    #[test]
    fn states_blobs_and_announcements_convert() {
        let signed = fixtures::signed(1, None, vec![]);
        let response = pb::GetClusterStateResponse {
            state: Some(pb::SignedClusterState {
                header: signed.header.clone(),
                signature: signed.signature.clone(),
                body: signed.body.clone(),
            }),
            chain: vec![pb::SignedHeader {
                header: b"h".to_vec(),
                signature: b"s".to_vec(),
            }],
            chain_unavailable: false,
        };
        let (state, chain) = cluster_state_response(response.clone()).unwrap();
        assert_eq!(state, signed);
        assert_eq!(chain.unwrap()[0].header, b"h");
        let unavailable = pb::GetClusterStateResponse {
            chain: vec![],
            chain_unavailable: true,
            ..response
        };
        assert_eq!(cluster_state_response(unavailable).unwrap().1, None);
        assert!(matches!(
            cluster_state_response(pb::GetClusterStateResponse::default()),
            Err(WireError::Missing { field: "state", .. })
        ));

        let d = Digest::of(b"x");
        assert_eq!(fetch_request(&[d]).digests, vec![d.0.to_vec()]);
        assert_eq!(
            blob(pb::Blob {
                digest: d.0.to_vec(),
                data: b"x".to_vec()
            })
            .unwrap(),
            (d, b"x".to_vec())
        );
        assert!(matches!(
            blob(pb::Blob {
                digest: vec![1, 2],
                data: vec![]
            }),
            Err(WireError::Digest(2))
        ));

        let a = announcement(pb::Announce {
            version: 4,
            digest: vec![],
            heartbeat: true,
        });
        assert_eq!((a.version, a.digest, a.heartbeat), (4, None, true));
    }

    #[test]
    fn registration_response_is_checked() {
        let response = pb::RegisterResponse {
            cluster_id: fixtures::CLUSTER.into(),
            certificate_pem: "not a certificate".into(),
            ca_pem: String::new(),
            signing_public_key: vec![0; 31],
        };
        assert!(matches!(
            agent_identity(response.clone(), "key".into(), "ca"),
            Err(WireError::SigningKey)
        ));
        let response = pb::RegisterResponse {
            signing_public_key: fixtures::hub_key().verifying_key().to_bytes().to_vec(),
            ..response
        };
        assert!(matches!(
            agent_identity(response.clone(), "key".into(), "ca"),
            Err(WireError::Certificate(_))
        ));

        let cert = cluster_cert(fixtures::CLUSTER);
        let identity = agent_identity(
            pb::RegisterResponse {
                certificate_pem: cert.clone(),
                ..response.clone()
            },
            "key".into(),
            "ca",
        )
        .unwrap();
        assert_eq!(identity.cluster_id, fixtures::CLUSTER);
        assert_eq!(
            identity.ca_pem, "ca",
            "an empty bundle falls back to the --ca certificate"
        );
        assert_eq!(
            identity.signing_public_key,
            fixtures::hub_key().verifying_key().to_bytes()
        );

        let other = pb::RegisterResponse {
            certificate_pem: cluster_cert("c-other"),
            ..response
        };
        assert!(matches!(
            agent_identity(other, "key".into(), "ca"),
            Err(WireError::ClusterIdMismatch { .. })
        ));
    }

    /// A self-signed certificate with the cluster's URI SAN.
    fn cluster_cert(cluster: &str) -> String {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(
            format!("spiffe://flotilla/cluster/{cluster}")
                .try_into()
                .unwrap(),
        )];
        params
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap()
            .pem()
    }
}
