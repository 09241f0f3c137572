//! The agent's own identity: its private key, the CSR it registers with, and what it can read
//! back from the client certificate the hub issued.
//!
//! The certificate is read with `flotilla_common::peer`, the same code the hub
//! uses to decide who a caller is.

use flotilla_common::ids::{NameError, validate_name};
use flotilla_common::peer::{PeerIdentity, PeerIdentityError, parse_certificate, peer_identity};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use x509_parser::error::{PEMError, X509Error};

/// Why creating or reading the agent's identity failed. Messages never include key material.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The requested cluster name or the certificate's cluster id breaks the naming rules.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// rcgen could not generate the key or the CSR.
    #[error("{what} failed")]
    Crypto {
        /// The operation that failed.
        what: &'static str,
        /// The underlying rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// The certificate text is not PEM.
    #[error("the certificate is not PEM-encoded")]
    InvalidPem(#[source] PEMError),
    /// The PEM block is something other than a certificate.
    #[error("expected a CERTIFICATE PEM block, found {0:?}")]
    NotACertificate(String),
    /// The certificate's DER could not be parsed.
    #[error("the certificate could not be parsed")]
    InvalidCertificate(#[source] X509Error),
    /// The certificate carries no URI SAN, so it names no cluster.
    #[error("the certificate has no spiffe://flotilla/cluster/<id> URI SAN")]
    NoClusterId,
    /// The certificate carries several URI SANs, so its identity is ambiguous.
    #[error(
        "the certificate has {0} URI SANs; exactly one spiffe://flotilla/cluster/<id> is allowed"
    )]
    MultipleUris(usize),
    /// The certificate's URI SAN is not a cluster identity.
    #[error("the certificate's URI SAN {0:?} is not spiffe://flotilla/cluster/<id>")]
    NotAClusterCert(String),
}

/// Everything registration gave the agent: who it is, how it proves it, whom it trusts.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentIdentity {
    /// Cluster id the hub assigned.
    pub cluster_id: String,
    /// Client certificate, PEM.
    pub cert_pem: String,
    /// PKCS#8 private key of the certificate, PEM; secret.
    pub key_pem: String,
    /// CA bundle that verifies the hub, PEM.
    pub ca_pem: String,
    /// Ed25519 key that signs this cluster's ClusterStates, pinned at registration.
    pub signing_public_key: [u8; 32],
    /// Unix seconds when the agent received `cert_pem`: renewal is scheduled from here, not
    /// from the certificate's not_before, which the hub backdates for clock skew.
    #[serde(default)]
    pub received_at: i64,
}

impl AgentIdentity {
    /// Unix seconds at which the certificate should be renewed: two thirds into the part of
    /// its lifetime that started when the agent received it.
    pub fn renew_at(&self) -> Result<i64, IdentityError> {
        let expires = cert_expiry(&self.cert_pem)?;
        let start = if self.received_at > 0 {
            self.received_at.min(expires)
        } else {
            cert_not_before(&self.cert_pem)?.min(expires)
        };
        Ok(start + (expires - start) * 2 / 3)
    }
}

impl std::fmt::Debug for AgentIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentIdentity")
            .field("cluster_id", &self.cluster_id)
            .field("signing_public_key", &hex::encode(self.signing_public_key))
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Generates a fresh P-256 key and a CSR for it; returns the PKCS#8 key PEM and the CSR DER.
///
/// The CSR's subject carries `requested_name` only as a hint: the hub ignores it and decides
/// the identity itself, so nothing else goes into the request.
pub fn new_key_and_csr(requested_name: &str) -> Result<(String, Vec<u8>), IdentityError> {
    validate_name("cluster name", requested_name)?;
    let key =
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| IdentityError::Crypto {
            what: "generating the agent key",
            source,
        })?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, requested_name);
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .map_err(|source| IdentityError::Crypto {
            what: "creating the certificate signing request",
            source,
        })?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

/// The certificate's not_after as Unix seconds, for scheduling renewal.
pub fn cert_expiry(cert_pem: &str) -> Result<i64, IdentityError> {
    let der = certificate_der(cert_pem)?;
    let cert = parse_certificate(&der).map_err(IdentityError::InvalidCertificate)?;
    Ok(cert.validity().not_after.timestamp())
}

/// The certificate's not_before as Unix seconds.
pub fn cert_not_before(cert_pem: &str) -> Result<i64, IdentityError> {
    let der = certificate_der(cert_pem)?;
    let cert = parse_certificate(&der).map_err(IdentityError::InvalidCertificate)?;
    Ok(cert.validity().not_before.timestamp())
}

/// The raw public key (subjectPublicKey bits) a certificate certifies.
pub fn cert_public_key(cert_pem: &str) -> Result<Vec<u8>, IdentityError> {
    let der = certificate_der(cert_pem)?;
    let cert = parse_certificate(&der).map_err(IdentityError::InvalidCertificate)?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

/// The raw public key of a PKCS#8 private key PEM.
pub fn key_public_key(key_pem: &str) -> Result<Vec<u8>, IdentityError> {
    use rcgen::PublicKeyData as _;
    let key = KeyPair::from_pem(key_pem).map_err(|source| IdentityError::Crypto {
        what: "reading the agent key",
        source,
    })?;
    Ok(key.der_bytes().to_vec())
}

/// The cluster id named by the certificate's single `spiffe://flotilla/cluster/<id>` URI SAN.
pub fn cert_cluster_id(cert_pem: &str) -> Result<String, IdentityError> {
    let der = certificate_der(cert_pem)?;
    match peer_identity(&der) {
        Ok(PeerIdentity::Cluster(id)) => Ok(id),
        Ok(other @ (PeerIdentity::Admin(_) | PeerIdentity::Replica(_))) => {
            Err(IdentityError::NotAClusterCert(other.uri()))
        }
        Err(PeerIdentityError::NoSpiffeId) => Err(IdentityError::NoClusterId),
        Err(PeerIdentityError::ForeignUri(uri)) => Err(IdentityError::NotAClusterCert(uri)),
        Err(PeerIdentityError::InvalidReplicaId(id)) => Err(IdentityError::NotAClusterCert(
            format!("{}{id}", flotilla_common::peer::REPLICA_URI_PREFIX),
        )),
        Err(PeerIdentityError::MultipleUris(n)) => Err(IdentityError::MultipleUris(n)),
        Err(PeerIdentityError::InvalidName(e)) => Err(IdentityError::InvalidName(e)),
        Err(PeerIdentityError::InvalidCertificate(e)) => Err(IdentityError::InvalidCertificate(e)),
    }
}

/// Decodes the first PEM block, which must be a certificate.
fn certificate_der(cert_pem: &str) -> Result<Vec<u8>, IdentityError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|e| match e {
        x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => {
            IdentityError::InvalidPem(e)
        }
        x509_parser::nom::Err::Incomplete(_) => IdentityError::InvalidPem(PEMError::IncompletePEM),
    })?;
    if pem.label != "CERTIFICATE" {
        return Err(IdentityError::NotACertificate(pem.label));
    }
    Ok(pem.contents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::string::Ia5String;
    use rcgen::{
        BasicConstraints, CertificateSigningRequestParams, ExtendedKeyUsagePurpose, IsCa, Issuer,
        PublicKeyData, SanType,
    };
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::prelude::FromDer;

    /// A stand-in for the hub's CA, so these tests need nothing from the hub crate.
    fn test_ca() -> Issuer<'static, KeyPair> {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        Issuer::new(params, KeyPair::generate().unwrap())
    }

    /// Issues a certificate for `key` with the given URI SANs, expiring on 2030-01-15.
    fn issue(key: &impl PublicKeyData, uris: &[&str]) -> String {
        let mut params = CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI(Ia5String::try_from(*u).unwrap()))
            .collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_after = rcgen::date_time_ymd(2030, 1, 15);
        params.signed_by(key, &test_ca()).unwrap().pem()
    }

    #[test]
    fn csr_is_a_verified_p256_request_for_the_returned_key() {
        let (key_pem, csr_der) = new_key_and_csr("edge-1").unwrap();
        let key = KeyPair::from_pem(&key_pem).unwrap();
        assert_eq!(key.algorithm(), &PKCS_ECDSA_P256_SHA256);

        let (rest, csr) = X509CertificationRequest::from_der(&csr_der).unwrap();
        assert!(rest.is_empty());
        csr.verify_signature().unwrap();
        let info = &csr.certification_request_info;
        assert_eq!(info.subject.to_string(), "CN=edge-1");
        assert_eq!(
            &info.subject_pki.subject_public_key.data[..],
            key.der_bytes()
        );
        assert!(csr.requested_extensions().is_none());

        // The hub parses CSRs with exactly this call; it must accept ours.
        let parsed = CertificateSigningRequestParams::from_der(&csr_der.as_slice().into()).unwrap();
        assert_eq!(parsed.public_key.der_bytes(), key.der_bytes());
    }

    #[test]
    fn every_call_makes_a_new_key() {
        let (a, _) = new_key_and_csr("edge-1").unwrap();
        let (b, _) = new_key_and_csr("edge-1").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn requested_name_is_validated() {
        for bad in ["", "Edge", "edge_1", "-edge", &"a".repeat(64)] {
            let err = new_key_and_csr(bad).unwrap_err();
            assert!(
                matches!(err, IdentityError::InvalidName(_)),
                "{bad:?}: {err:?}"
            );
        }
    }

    #[test]
    fn reads_cluster_id_and_expiry_from_an_issued_cert() {
        let (key_pem, _) = new_key_and_csr("edge-1").unwrap();
        let key = KeyPair::from_pem(&key_pem).unwrap();
        let cert = issue(&key, &["spiffe://flotilla/cluster/c-0123456789abcdef"]);
        assert_eq!(cert_cluster_id(&cert).unwrap(), "c-0123456789abcdef");
        // 2030-01-15T00:00:00Z
        assert_eq!(cert_expiry(&cert).unwrap(), 1_894_665_600);
    }

    #[test]
    fn cluster_id_needs_exactly_one_cluster_uri() {
        let key = KeyPair::generate().unwrap();
        let cases: &[(&[&str], &str)] = &[
            (&[], "NoClusterId"),
            (
                &["spiffe://flotilla/cluster/a", "spiffe://flotilla/cluster/b"],
                "MultipleUris",
            ),
            (&["spiffe://flotilla/admin/alice"], "NotAClusterCert"),
            (&["spiffe://other/cluster/a"], "NotAClusterCert"),
            (&["spiffe://flotilla/cluster/"], "InvalidName"),
            (&["spiffe://flotilla/cluster/A/b"], "InvalidName"),
        ];
        for (uris, want) in cases {
            let cert = issue(&key, uris);
            let got = format!("{:?}", cert_cluster_id(&cert).unwrap_err());
            assert!(got.starts_with(want), "{uris:?}: got {got}, want {want}");
        }
    }

    #[test]
    fn non_certificates_are_rejected() {
        let (key_pem, _) = new_key_and_csr("edge-1").unwrap();
        assert!(matches!(
            cert_expiry(&key_pem),
            Err(IdentityError::NotACertificate(label)) if label == "PRIVATE KEY"
        ));
        assert!(matches!(
            cert_cluster_id("no pem here"),
            Err(IdentityError::InvalidPem(_))
        ));
        let junk = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            cert_expiry(junk),
            Err(IdentityError::InvalidCertificate(_))
        ));
    }
}
