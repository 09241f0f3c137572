//! The hub's certificate authority: issues server, admin, cluster and replica certificates and maps a
//! verified peer certificate back to the identity it was issued for.
//!
//! All X.509 encoding goes through rcgen and all decoding through x509-parser; nothing here
//! touches ASN.1 by hand.

use std::fmt;
use std::net::IpAddr;

use flotilla_common::ids::{NameError, validate_name};
use flotilla_common::peer::{
    ADMIN_URI_PREFIX, CLUSTER_URI_PREFIX, REPLICA_URI_PREFIX, parse_certificate,
};
pub use flotilla_common::peer::{PeerIdentity, PeerIdentityError};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use time::OffsetDateTime;

/// Backdating of not_before, so a peer whose clock lags a little accepts a fresh certificate.
const CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

/// Lifetime of a generated CA; rotating it means re-registering every cluster, so it is long.
const CA_VALIDITY: time::Duration = time::Duration::days(3650);

/// Why a certificate operation failed. Messages never include key material.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen could not generate a key or sign a certificate.
    #[error("{what} failed")]
    Crypto {
        /// The operation that failed, e.g. "signing the admin certificate".
        what: &'static str,
        /// The underlying rcgen error.
        #[source]
        source: rcgen::Error,
    },
    /// The CA common name is empty.
    #[error("the CA common name must not be empty")]
    EmptyCommonName,
    /// The CA certificate PEM could not be decoded or parsed.
    #[error("the CA certificate is not a PEM-encoded X.509 certificate: {reason}")]
    InvalidCaCert {
        /// What was wrong with it.
        reason: String,
    },
    /// The CA private key PEM could not be parsed.
    // No source: a PEM/base64 error can quote bytes of the secret key.
    #[error("the CA private key is not a PEM-encoded PKCS#8 key rcgen can use")]
    InvalidCaKey,
    /// The CA private key belongs to a different certificate.
    #[error("the CA private key does not match the CA certificate's public key")]
    CaKeyMismatch,
    /// The CA certificate lacks basicConstraints CA:true.
    #[error("the CA certificate is not a CA certificate (basicConstraints CA:true is missing)")]
    NotACa,
    /// The requested validity is zero or too large to represent.
    #[error("invalid certificate validity {0:?}: it must be positive and end before year 9999")]
    InvalidValidity(std::time::Duration),
    /// A server certificate was requested without any DNS name or IP address.
    #[error("a server certificate needs at least one DNS name or IP address")]
    NoServerNames,
    /// A DNS name cannot be put into a certificate.
    #[error("invalid DNS name {0:?}: certificates only carry ASCII names")]
    InvalidDnsName(String),
    /// Replica ids start at 1; 0 would be read back as no identity at all.
    #[error("a replica id must be at least 1")]
    InvalidReplicaId,
    /// A cluster id or admin name does not follow the naming rules.
    #[error(transparent)]
    InvalidName(#[from] NameError),
    /// The CSR could not be parsed or uses features we do not accept.
    #[error("the certificate signing request is malformed or unsupported")]
    MalformedCsr(#[source] rcgen::Error),
    /// The certificate a renewing caller presented does not parse.
    #[error("the client certificate presented for renewal is not a valid X.509 certificate")]
    InvalidPresentedCert,
    /// A renewal asked for a certificate for the key the caller already has.
    #[error(
        "a renewal needs a new key: the certificate signing request is for the key of the certificate presented"
    )]
    SameKey,
    /// The CSR's self-signature does not verify, so the requester may not hold the key.
    #[error("the certificate signing request's signature does not verify")]
    CsrSignature,
    /// The CSR carries a key other than ECDSA P-256.
    #[error("the certificate signing request's key is not ECDSA P-256")]
    UnsupportedCsrKey,
    /// A peer certificate names no Flotilla identity.
    #[error(transparent)]
    Identity(#[from] PeerIdentityError),
}

/// A freshly issued certificate together with its newly generated private key.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate, PEM-encoded.
    pub cert_pem: String,
    /// The PKCS#8 private key, PEM-encoded; secret.
    pub key_pem: String,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// The hub's certificate authority: a self-signed ECDSA P-256 CA certificate and its key.
pub struct CertificateAuthority {
    cert_pem: String,
    subject: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("subject", &self.subject)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl CertificateAuthority {
    /// Generates a new CA with a fresh P-256 key, valid for ten years from now.
    pub fn generate(common_name: &str) -> Result<Self, PkiError> {
        if common_name.trim().is_empty() {
            return Err(PkiError::EmptyCommonName);
        }
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| PkiError::Crypto {
                what: "generating the CA key",
                source,
            })?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(common_name);
        // Path length 0: this CA signs leaves only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + CA_VALIDITY;
        let cert = params
            .self_signed(&key)
            .map_err(|source| PkiError::Crypto {
                what: "self-signing the CA certificate",
                source,
            })?;
        Ok(Self {
            cert_pem: cert.pem(),
            subject: format!("CN={common_name}"),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate and PKCS#8 private key, both PEM-encoded.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|e| {
            PkiError::InvalidCaCert {
                reason: e.to_string(),
            }
        })?;
        if pem.label != "CERTIFICATE" {
            return Err(PkiError::InvalidCaCert {
                reason: format!("expected a CERTIFICATE PEM block, found {:?}", pem.label),
            });
        }
        let cert = parse_certificate(&pem.contents).map_err(|e| PkiError::InvalidCaCert {
            reason: e.to_string(),
        })?;
        if !cert.is_ca() {
            return Err(PkiError::NotACa);
        }
        let key = KeyPair::from_pem(key_pem).map_err(|_| PkiError::InvalidCaKey)?;
        // Without this check a mismatched pair would load fine and then issue certificates
        // that no peer can verify, which is much harder to diagnose.
        if &cert.public_key().subject_public_key.data[..] != key.der_bytes() {
            return Err(PkiError::CaKeyMismatch);
        }
        let subject = cert.subject().to_string();
        let issuer =
            Issuer::from_ca_cert_der(&pem.contents.as_slice().into(), key).map_err(|e| {
                PkiError::InvalidCaCert {
                    reason: e.to_string(),
                }
            })?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            subject,
            issuer,
        })
    }

    /// The CA certificate, PEM-encoded; this is the trust bundle handed to peers.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA private key as PKCS#8 PEM; secret, only for persisting the CA.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a TLS server certificate (with a new key) for the given DNS names and IPs.
    pub fn issue_server_cert(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        validity: std::time::Duration,
    ) -> Result<IssuedCert, PkiError> {
        let sans = server_sans(dns_names, ips)?;
        let (not_before, not_after) = validity_window(OffsetDateTime::now_utc(), validity)?;
        let common_name = dns_names
            .first()
            .cloned()
            .unwrap_or_else(|| ips[0].to_string());
        let params = leaf_params(
            &common_name,
            sans,
            &[ExtendedKeyUsagePurpose::ServerAuth],
            not_before,
            not_after,
        );
        self.issue_with_new_key(&params, "signing the server certificate")
    }

    /// Issues a hub replica's certificate (with a new key) for `spiffe://flotilla/replica/<id>`,
    /// usable both as the TLS server of its peer listener (so it carries `dns_names` and `ips`,
    /// at least one) and as the client identity it presents to the other replicas.
    pub fn issue_replica_cert(
        &self,
        id: u64,
        dns_names: &[String],
        ips: &[IpAddr],
        validity: std::time::Duration,
    ) -> Result<IssuedCert, PkiError> {
        if id == 0 {
            return Err(PkiError::InvalidReplicaId);
        }
        let mut sans = server_sans(dns_names, ips)?;
        sans.push(spiffe_san(REPLICA_URI_PREFIX, &id.to_string())?);
        let (not_before, not_after) = validity_window(OffsetDateTime::now_utc(), validity)?;
        let params = leaf_params(
            &format!("replica-{id}"),
            sans,
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            not_before,
            not_after,
        );
        self.issue_with_new_key(&params, "signing the replica certificate")
    }

    /// Issues an admin client certificate (with a new key) for `spiffe://flotilla/admin/<name>`.
    pub fn issue_admin_cert(
        &self,
        name: &str,
        validity: std::time::Duration,
    ) -> Result<IssuedCert, PkiError> {
        validate_name("admin name", name)?;
        let (not_before, not_after) = validity_window(OffsetDateTime::now_utc(), validity)?;
        let params = leaf_params(
            name,
            vec![spiffe_san(ADMIN_URI_PREFIX, name)?],
            &[ExtendedKeyUsagePurpose::ClientAuth],
            not_before,
            not_after,
        );
        self.issue_with_new_key(&params, "signing the admin certificate")
    }

    /// Signs a cluster's CSR, returning a PEM client certificate for `spiffe://flotilla/cluster/<id>`.
    ///
    /// Only the CSR's public key is used: its subject and SANs are chosen by the requester and
    /// therefore untrusted, so the identity comes solely from `cluster_id`.
    pub fn sign_cluster_csr(
        &self,
        csr_der: &[u8],
        cluster_id: &str,
        validity: std::time::Duration,
        now: OffsetDateTime,
    ) -> Result<String, PkiError> {
        self.sign_cluster_csr_unless_key(csr_der, cluster_id, validity, now, None)
    }

    /// Renews a cluster certificate: as [`Self::sign_cluster_csr`], but the CSR must be for
    /// another key than the one in `presented_der`, the certificate the caller connected with,
    /// so a stolen key cannot be kept alive by renewing it.
    pub fn renew_cluster_csr(
        &self,
        csr_der: &[u8],
        cluster_id: &str,
        validity: std::time::Duration,
        now: OffsetDateTime,
        presented_der: &[u8],
    ) -> Result<String, PkiError> {
        let presented =
            parse_certificate(presented_der).map_err(|_| PkiError::InvalidPresentedCert)?;
        let key = presented.public_key().subject_public_key.data.to_vec();
        self.sign_cluster_csr_unless_key(csr_der, cluster_id, validity, now, Some(&key))
    }

    fn sign_cluster_csr_unless_key(
        &self,
        csr_der: &[u8],
        cluster_id: &str,
        validity: std::time::Duration,
        now: OffsetDateTime,
        refused_key: Option<&[u8]>,
    ) -> Result<String, PkiError> {
        validate_name("cluster id", cluster_id)?;
        let (not_before, not_after) = validity_window(now, validity)?;
        // from_der verifies the CSR's self-signature, proving the requester holds the key.
        let csr =
            CertificateSigningRequestParams::from_der(&csr_der.into()).map_err(|e| match e {
                rcgen::Error::InvalidCertificationRequestSignature => PkiError::CsrSignature,
                other => PkiError::MalformedCsr(other),
            })?;
        // Agents generate P-256 keys; accepting only that keeps the key types we must trust small.
        if csr.public_key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(PkiError::UnsupportedCsrKey);
        }
        if refused_key.is_some_and(|k| k == csr.public_key.der_bytes()) {
            return Err(PkiError::SameKey);
        }
        let params = leaf_params(
            cluster_id,
            vec![spiffe_san(CLUSTER_URI_PREFIX, cluster_id)?],
            &[ExtendedKeyUsagePurpose::ClientAuth],
            not_before,
            not_after,
        );
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|source| PkiError::Crypto {
                what: "signing the cluster certificate",
                source,
            })?;
        Ok(cert.pem())
    }

    fn issue_with_new_key(
        &self,
        params: &CertificateParams,
        what: &'static str,
    ) -> Result<IssuedCert, PkiError> {
        let key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| PkiError::Crypto {
                what: "generating a certificate key",
                source,
            })?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| PkiError::Crypto { what, source })?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Reads the Flotilla identity from a verified DER client certificate (see [`flotilla_common::peer`]).
pub fn peer_identity(cert_der: &[u8]) -> Result<PeerIdentity, PkiError> {
    Ok(flotilla_common::peer::peer_identity(cert_der)?)
}

/// The DNS and IP SANs of a certificate a TLS server presents; at least one is required.
fn server_sans(dns_names: &[String], ips: &[IpAddr]) -> Result<Vec<SanType>, PkiError> {
    if dns_names.is_empty() && ips.is_empty() {
        return Err(PkiError::NoServerNames);
    }
    let mut sans = Vec::with_capacity(dns_names.len() + ips.len() + 1);
    for name in dns_names {
        let ia5 = Ia5String::try_from(name.as_str())
            .map_err(|_| PkiError::InvalidDnsName(name.clone()))?;
        sans.push(SanType::DnsName(ia5));
    }
    sans.extend(ips.iter().copied().map(SanType::IpAddress));
    Ok(sans)
}

fn common_name_dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn spiffe_san(prefix: &str, name: &str) -> Result<SanType, PkiError> {
    let uri = format!("{prefix}{name}");
    let ia5 =
        Ia5String::try_from(uri.as_str()).map_err(|_| PkiError::InvalidDnsName(uri.clone()))?;
    Ok(SanType::URI(ia5))
}

fn leaf_params(
    common_name: &str,
    subject_alt_names: Vec<SanType>,
    usages: &[ExtendedKeyUsagePurpose],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name_dn(common_name);
    params.subject_alt_names = subject_alt_names;
    // Explicit CA:false so no verifier can mistake a leaf for an issuer.
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages.to_vec();
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

fn validity_window(
    now: OffsetDateTime,
    validity: std::time::Duration,
) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    let invalid = || PkiError::InvalidValidity(validity);
    if validity.is_zero() {
        return Err(invalid());
    }
    let span = time::Duration::try_from(validity).map_err(|_| invalid())?;
    let not_after = now.checked_add(span).ok_or_else(invalid)?;
    // GeneralizedTime in certificates stops at year 9999.
    if not_after.year() > 9999 {
        return Err(invalid());
    }
    Ok((now - CLOCK_SKEW, not_after))
}

/// A random 127-bit serial: unpredictable serials keep issued certificates from colliding
/// and from being guessable, as the CA/Browser Forum requires for public CAs.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive INTEGER without a padding byte.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use x509_parser::certificate::X509Certificate;
    use x509_parser::extensions::GeneralName;

    const HOUR: Duration = Duration::from_secs(3600);

    fn der_of(cert_pem: &str) -> Vec<u8> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).unwrap();
        assert_eq!(pem.label, "CERTIFICATE");
        pem.contents
    }

    /// Asserts that `cert_der` is signed by the CA whose certificate is `ca_pem`.
    fn assert_signed_by(cert_der: &[u8], ca_pem: &str) {
        let ca_der = der_of(ca_pem);
        let ca = parse_certificate(&ca_der).unwrap();
        let cert = parse_certificate(cert_der).unwrap();
        cert.verify_signature(Some(ca.public_key()))
            .expect("certificate signature verifies against the CA key");
        assert_eq!(cert.issuer(), ca.subject());
    }

    fn uris(cert: &X509Certificate<'_>) -> Vec<String> {
        cert.subject_alternative_name()
            .unwrap()
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::URI(u) => Some(u.to_string()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A CSR built the way an agent builds one, plus hostile extras the hub must ignore.
    fn hostile_csr(key: &KeyPair) -> Vec<u8> {
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn("admin");
        params.subject_alt_names = vec![
            SanType::URI(Ia5String::try_from("spiffe://flotilla/admin/root").unwrap()),
            SanType::URI(Ia5String::try_from("spiffe://flotilla/cluster/victim").unwrap()),
            SanType::DnsName(Ia5String::try_from("hub.example").unwrap()),
        ];
        params.serialize_request(key).unwrap().der().to_vec()
    }

    /// Issues a client cert with arbitrary URI SANs straight through rcgen, bypassing our checks.
    fn cert_with_uris(ca: &CertificateAuthority, uris: &[&str]) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let sans = uris
            .iter()
            .map(|u| SanType::URI(Ia5String::try_from(*u).unwrap()))
            .collect();
        let now = OffsetDateTime::now_utc();
        let params = leaf_params(
            "x",
            sans,
            &[ExtendedKeyUsagePurpose::ClientAuth],
            now,
            now + time::Duration::HOUR,
        );
        params.signed_by(&key, &ca.issuer).unwrap().der().to_vec()
    }

    #[test]
    fn generated_ca_is_a_p256_ca_with_the_given_name() {
        let ca = CertificateAuthority::generate("flotilla test ca").unwrap();
        let der = der_of(&ca.cert_pem());
        let cert = parse_certificate(&der).unwrap();
        assert!(cert.is_ca());
        assert_eq!(cert.subject().to_string(), "CN=flotilla test ca");
        assert_eq!(cert.issuer(), cert.subject());
        cert.verify_signature(None).unwrap();
        assert_eq!(
            KeyPair::from_pem(&ca.key_pem()).unwrap().algorithm(),
            &PKCS_ECDSA_P256_SHA256
        );
        assert!(matches!(
            CertificateAuthority::generate(" "),
            Err(PkiError::EmptyCommonName)
        ));
    }

    #[test]
    fn ca_round_trips_through_pem_and_keeps_signing() {
        let ca = CertificateAuthority::generate("flotilla").unwrap();
        let loaded = CertificateAuthority::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert_eq!(loaded.key_pem(), ca.key_pem());
        assert_eq!(loaded.subject, "CN=flotilla");

        // Certificates from the reloaded CA chain to the original CA certificate.
        let admin = loaded.issue_admin_cert("alice", HOUR).unwrap();
        assert_signed_by(&der_of(&admin.cert_pem), &ca.cert_pem());
    }

    #[test]
    fn from_pem_rejects_bad_inputs() {
        let ca = CertificateAuthority::generate("flotilla").unwrap();
        let other = CertificateAuthority::generate("other").unwrap();
        let leaf = ca.issue_admin_cert("alice", HOUR).unwrap();

        let err = CertificateAuthority::from_pem(&ca.cert_pem(), &other.key_pem()).unwrap_err();
        assert!(matches!(err, PkiError::CaKeyMismatch), "{err:?}");

        let err = CertificateAuthority::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap_err();
        assert!(matches!(err, PkiError::NotACa), "{err:?}");

        let err = CertificateAuthority::from_pem("not pem", &ca.key_pem()).unwrap_err();
        assert!(matches!(err, PkiError::InvalidCaCert { .. }), "{err:?}");

        let err = CertificateAuthority::from_pem(&ca.key_pem(), &ca.key_pem()).unwrap_err();
        assert!(matches!(err, PkiError::InvalidCaCert { .. }), "{err:?}");

        let garbage_key = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n";
        let err = CertificateAuthority::from_pem(&ca.cert_pem(), garbage_key).unwrap_err();
        assert!(matches!(err, PkiError::InvalidCaKey), "{err:?}");
        assert!(!err.to_string().contains("c2VjcmV0"));
    }

    #[test]
    fn debug_output_never_contains_private_keys() {
        let ca = CertificateAuthority::generate("flotilla").unwrap();
        let issued = ca.issue_admin_cert("alice", HOUR).unwrap();
        let ca_debug = format!("{ca:?}");
        let issued_debug = format!("{issued:?}");
        assert!(ca_debug.contains("CN=flotilla"));
        assert!(issued_debug.contains("BEGIN CERTIFICATE"));
        for (debug, key) in [(&ca_debug, ca.key_pem()), (&issued_debug, issued.key_pem)] {
            assert!(!debug.contains("PRIVATE KEY"), "{debug}");
            let body = key.lines().nth(1).unwrap();
            assert!(!debug.contains(body), "{debug}");
        }
    }

    #[test]
    fn cluster_csr_gets_only_the_hub_chosen_identity() {
        let ca = CertificateAuthority::generate("flotilla").unwrap();
        let agent_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = hostile_csr(&agent_key);
        let now = OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap();

        let cert_pem = ca
            .sign_cluster_csr(&csr, "c-0123456789abcdef", HOUR, now)
            .unwrap();
        let der = der_of(&cert_pem);
        assert_signed_by(&der, &ca.cert_pem());
        assert_eq!(
            peer_identity(&der).unwrap(),
            PeerIdentity::Cluster("c-0123456789abcdef".into())
        );

        let cert = parse_certificate(&der).unwrap();
        assert_eq!(cert.subject().to_string(), "CN=c-0123456789abcdef");
        assert_eq!(
            uris(&cert),
            ["spiffe://flotilla/cluster/c-0123456789abcdef"]
        );
        let names = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        assert_eq!(names.len(), 1, "requested SANs leaked: {names:?}");
        // The certificate is for the requester's key, so only the requester can use it.
        assert_eq!(
            &cert.public_key().subject_public_key.data[..],
            agent_key.der_bytes()
        );
        assert_eq!(cert.validity().not_before.timestamp(), 1_750_000_000 - 300);
        assert_eq!(cert.validity().not_after.timestamp(), 1_750_000_000 + 3600);
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(!cert.is_ca());
    }

    #[test]
    fn cluster_certs_get_distinct_random_serials() {
        let ca = CertificateAuthority::generate("flotilla").unwrap();
        let key = KeyPair::generate().unwrap();
        let csr = hostile_csr(&key);
        let now = OffsetDateTime::now_utc();
        let a = der_of(&ca.sign_cluster_csr(&csr, "c-1", HOUR, now).unwrap());
        let b = der_of(&ca.sign_cluster_csr(&csr, "c-1", HOUR, now).unwrap());
        let serial_a = parse_certificate(&a).unwrap().raw_serial().to_vec();
        let serial_b = parse_certificate(&b).unwrap().raw_serial().to_vec();
        assert_ne!(serial_a, serial_b);
        assert!(serial_a.len() >= 15, "serial too short: {serial_a:?}");
    }

    #[test]
    fn bad_csrs_are_rejected() {
        let ca = CertificateAuthority::generate("flotilla").unwrap();
        let now = OffsetDateTime::now_utc();

        let err = ca
            .sign_cluster_csr(b"definitely not a CSR", "c-1", HOUR, now)
            .unwrap_err();
        assert!(matches!(err, PkiError::MalformedCsr(_)), "{err:?}");

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut csr = hostile_csr(&key);
        // The DER ends with the ECDSA signature's s value; flipping its last byte keeps the
        // encoding valid but breaks the signature.
        *csr.last_mut().unwrap() ^= 0x01;
        let err = ca.sign_cluster_csr(&csr, "c-1", HOUR, now).unwrap_err();
        assert!(matches!(err, PkiError::CsrSignature), "{err:?}");

        let ed_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let err = ca
            .sign_cluster_csr(&hostile_csr(&ed_key), "c-1", HOUR, now)
            .unwrap_err();
        assert!(matches!(err, PkiError::UnsupportedCsrKey), "{err:?}");
    }

    #[test]
    fn sign_cluster_csr_validates_id_and_validity() {
        let ca = CertificateAuthority::generate("flotilla").unwrap();
        let csr = hostile_csr(&KeyPair::generate().unwrap());
        let now = OffsetDateTime::now_utc();
        for bad in ["", "Upper", "a/b", "-a", &"a".repeat(64)] {
            let err = ca.sign_cluster_csr(&csr, bad, HOUR, now).unwrap_err();
            assert!(matches!(err, PkiError::InvalidName(_)), "{bad:?}: {err:?}");
        }
        for bad in [Duration::ZERO, Duration::MAX] {
            let err = ca.sign_cluster_csr(&csr, "c-1", bad, now).unwrap_err();
            assert!(matches!(err, PkiError::InvalidValidity(_)), "{err:?}");
        }
    }

    #[test]
    fn admin_cert_maps_to_admin_identity() {
        let ca = CertificateAuthority::generate("flotilla").unwrap();
        let issued = ca.issue_admin_cert("alice", HOUR).unwrap();
        let der = der_of(&issued.cert_pem);
        assert_signed_by(&der, &ca.cert_pem());
        assert_eq!(
            peer_identity(&der).unwrap(),
            PeerIdentity::Admin("alice".into())
        );
        let cert = parse_certificate(&der).unwrap();
        let key = KeyPair::from_pem(&issued.key_pem).unwrap();
        assert_eq!(
            &cert.public_key().subject_public_key.data[..],
            key.der_bytes()
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(matches!(
            ca.issue_admin_cert("Alice", HOUR),
            Err(PkiError::InvalidName(_))
        ));
    }

    #[test]
    fn server_cert_carries_requested_names_and_no_identity() {
        let ca = CertificateAuthority::generate("flotilla").unwrap();
        let dns = vec!["hub.example".to_string(), "localhost".to_string()];
        let ips: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        let issued = ca.issue_server_cert(&dns, &ips, HOUR).unwrap();
        let der = der_of(&issued.cert_pem);
        assert_signed_by(&der, &ca.cert_pem());

        let cert = parse_certificate(&der).unwrap();
        let names: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "DNSName(hub.example)",
                "DNSName(localhost)",
                "IPAddress(7f:00:00:01)",
                "IPAddress(00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:01)"
            ]
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        // A server certificate must never pass as a client identity.
        assert!(matches!(
            peer_identity(&der),
            Err(PkiError::Identity(PeerIdentityError::NoSpiffeId))
        ));

        assert!(matches!(
            ca.issue_server_cert(&[], &[], HOUR),
            Err(PkiError::NoServerNames)
        ));
        assert!(matches!(
            ca.issue_server_cert(&["hüb.example".to_string()], &[], HOUR),
            Err(PkiError::InvalidDnsName(_))
        ));
    }

    #[test]
    fn replica_cert_is_server_and_client_with_the_replica_identity() {
        let ca = CertificateAuthority::generate("flotilla").unwrap();
        let dns = vec!["hub-1.hub".to_string()];
        let ips: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap()];
        let issued = ca.issue_replica_cert(3, &dns, &ips, HOUR).unwrap();
        let der = der_of(&issued.cert_pem);
        assert_signed_by(&der, &ca.cert_pem());
        assert_eq!(peer_identity(&der).unwrap(), PeerIdentity::Replica(3));

        let cert = parse_certificate(&der).unwrap();
        assert_eq!(cert.subject().to_string(), "CN=replica-3");
        assert_eq!(uris(&cert), ["spiffe://flotilla/replica/3"]);
        let names: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            names,
            [
                "DNSName(hub-1.hub)",
                "IPAddress(7f:00:00:01)",
                "URI(spiffe://flotilla/replica/3)"
            ]
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!cert.is_ca());
        let key = KeyPair::from_pem(&issued.key_pem).unwrap();
        assert_eq!(
            &cert.public_key().subject_public_key.data[..],
            key.der_bytes()
        );
    }

    #[test]
    fn replica_cert_refuses_bad_requests() {
        let ca = CertificateAuthority::generate("flotilla").unwrap();
        let localhost = ["localhost".to_string()];
        let err = ca.issue_replica_cert(0, &localhost, &[], HOUR).unwrap_err();
        assert!(matches!(err, PkiError::InvalidReplicaId), "{err:?}");
        let err = ca.issue_replica_cert(1, &[], &[], HOUR).unwrap_err();
        assert!(matches!(err, PkiError::NoServerNames), "{err:?}");
        let err = ca
            .issue_replica_cert(1, &["hüb".to_string()], &[], HOUR)
            .unwrap_err();
        assert!(matches!(err, PkiError::InvalidDnsName(_)), "{err:?}");
        let err = ca
            .issue_replica_cert(1, &localhost, &[], Duration::ZERO)
            .unwrap_err();
        assert!(matches!(err, PkiError::InvalidValidity(_)), "{err:?}");
        let max = ca
            .issue_replica_cert(u64::MAX, &localhost, &[], HOUR)
            .unwrap();
        assert_eq!(
            peer_identity(&der_of(&max.cert_pem)).unwrap(),
            PeerIdentity::Replica(u64::MAX)
        );
    }

    #[test]
    fn peer_identity_rejects_anything_but_one_flotilla_uri() {
        let ca = CertificateAuthority::generate("flotilla").unwrap();
        let cases: &[(&[&str], &str)] = &[
            (&[], "NoSpiffeId"),
            (
                &["spiffe://flotilla/cluster/a", "spiffe://flotilla/admin/b"],
                "MultipleUris",
            ),
            (
                &["spiffe://flotilla/cluster/a", "https://example.com"],
                "MultipleUris",
            ),
            (&["spiffe://other/cluster/a"], "ForeignUri"),
            (&["spiffe://flotilla/node/a"], "ForeignUri"),
            (&["https://flotilla/cluster/a"], "ForeignUri"),
            (&["spiffe://flotilla/cluster/"], "InvalidName"),
            (&["spiffe://flotilla/cluster/A"], "InvalidName"),
            (&["spiffe://flotilla/cluster/a/b"], "InvalidName"),
            (&["spiffe://flotilla/admin/a?x=1"], "InvalidName"),
            (&["spiffe://flotilla/replica/0"], "InvalidReplicaId"),
            (&["spiffe://flotilla/replica/007"], "InvalidReplicaId"),
            (&["spiffe://flotilla/replica/x"], "InvalidReplicaId"),
            (&["spiffe://flotilla/replica/"], "InvalidReplicaId"),
            (&["spiffe://flotilla/replica/1/2"], "InvalidReplicaId"),
            (
                &["spiffe://flotilla/replica/1", "spiffe://flotilla/admin/b"],
                "MultipleUris",
            ),
        ];
        for (uris, want) in cases {
            let der = cert_with_uris(&ca, uris);
            let err = peer_identity(&der).unwrap_err();
            let got = format!("{err:?}");
            assert!(got.contains(want), "{uris:?}: got {got}, want {want}");
        }

        let replica = cert_with_uris(&ca, &["spiffe://flotilla/replica/12"]);
        assert_eq!(peer_identity(&replica).unwrap(), PeerIdentity::Replica(12));

        let ok = cert_with_uris(&ca, &["spiffe://flotilla/cluster/edge-1"]);
        assert_eq!(
            peer_identity(&ok).unwrap(),
            PeerIdentity::Cluster("edge-1".into())
        );
        assert!(matches!(
            peer_identity(b"garbage"),
            Err(PkiError::Identity(PeerIdentityError::InvalidCertificate(_)))
        ));
        let mut trailing = ok.clone();
        trailing.push(0);
        assert!(matches!(
            peer_identity(&trailing),
            Err(PkiError::Identity(PeerIdentityError::InvalidCertificate(_)))
        ));
    }
}
