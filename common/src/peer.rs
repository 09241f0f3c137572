//! Who a client certificate names: the single `spiffe://flotilla/...` URI SAN
//! that the hub writes into every certificate it issues.
//!
//! Reading it does not verify the chain: call it only on a certificate the TLS
//! layer has already verified against the CA, which is what makes the URI
//! trustworthy.

use x509_parser::certificate::X509Certificate;
use x509_parser::error::X509Error;
use x509_parser::extensions::GeneralName;

use crate::ids::{NameError, validate_name};

/// URI SAN prefix of a cluster's client certificate.
pub const CLUSTER_URI_PREFIX: &str = "spiffe://flotilla/cluster/";
/// URI SAN prefix of an admin's client certificate.
pub const ADMIN_URI_PREFIX: &str = "spiffe://flotilla/admin/";
/// URI SAN prefix of a hub replica's certificate (server and client on the peer channel).
pub const REPLICA_URI_PREFIX: &str = "spiffe://flotilla/replica/";

/// The identity a verified client certificate carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerIdentity {
    /// A registered cluster, by id.
    Cluster(String),
    /// An operator, by name.
    Admin(String),
    /// A hub replica, by its Raft node id.
    Replica(u64),
}

impl PeerIdentity {
    /// The identity's URI SAN, as it appears in the certificate.
    pub fn uri(&self) -> String {
        match self {
            PeerIdentity::Cluster(id) => format!("{CLUSTER_URI_PREFIX}{id}"),
            PeerIdentity::Admin(name) => format!("{ADMIN_URI_PREFIX}{name}"),
            PeerIdentity::Replica(id) => format!("{REPLICA_URI_PREFIX}{id}"),
        }
    }
}

impl std::fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerIdentity::Cluster(id) => write!(f, "cluster {id}"),
            PeerIdentity::Admin(name) => write!(f, "admin {name}"),
            PeerIdentity::Replica(id) => write!(f, "replica {id}"),
        }
    }
}

/// Why a certificate names no Flotilla identity.
#[derive(Debug, thiserror::Error)]
pub enum PeerIdentityError {
    /// The DER could not be parsed.
    #[error("the certificate could not be parsed")]
    InvalidCertificate(#[source] X509Error),
    /// No URI SAN at all.
    #[error("the certificate has no spiffe://flotilla/... URI SAN")]
    NoSpiffeId,
    /// More than one URI SAN: which one counts would depend on the reader.
    #[error("the certificate has {0} URI SANs; exactly one spiffe://flotilla/... is allowed")]
    MultipleUris(usize),
    /// A URI that is not a Flotilla identity.
    #[error(
        "the certificate's URI SAN {0:?} is none of spiffe://flotilla/cluster/<id>, spiffe://flotilla/admin/<name>, spiffe://flotilla/replica/<id>"
    )]
    ForeignUri(String),
    /// A replica URI whose id is not a canonical decimal u64.
    #[error(
        "the certificate's replica id {0:?} is not a decimal number between 1 and 18446744073709551615 without leading zeros"
    )]
    InvalidReplicaId(String),
    /// The id or name in the URI breaks the naming rules.
    #[error(transparent)]
    InvalidName(#[from] NameError),
}

/// Parses exactly one DER certificate; trailing bytes mean the input is not what we think.
pub fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, X509Error> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok((_, _)) => Err(X509Error::InvalidCertificate),
        Err(x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e)) => Err(e),
        Err(x509_parser::nom::Err::Incomplete(_)) => Err(X509Error::InvalidCertificate),
    }
}

/// Reads the identity from a DER certificate's single spiffe URI SAN.
pub fn peer_identity(cert_der: &[u8]) -> Result<PeerIdentity, PeerIdentityError> {
    let cert = parse_certificate(cert_der).map_err(PeerIdentityError::InvalidCertificate)?;
    let san = cert
        .subject_alternative_name()
        .map_err(PeerIdentityError::InvalidCertificate)?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    let uri = match uris.as_slice() {
        [] => return Err(PeerIdentityError::NoSpiffeId),
        [uri] => *uri,
        more => return Err(PeerIdentityError::MultipleUris(more.len())),
    };
    if let Some(id) = uri.strip_prefix(CLUSTER_URI_PREFIX) {
        validate_name("cluster id", id)?;
        Ok(PeerIdentity::Cluster(id.to_string()))
    } else if let Some(name) = uri.strip_prefix(ADMIN_URI_PREFIX) {
        validate_name("admin name", name)?;
        Ok(PeerIdentity::Admin(name.to_string()))
    } else if let Some(id) = uri.strip_prefix(REPLICA_URI_PREFIX) {
        parse_replica_id(id).map(PeerIdentity::Replica)
    } else {
        Err(PeerIdentityError::ForeignUri(uri.to_string()))
    }
}

/// A replica id as a certificate writes it: canonical decimal, so one id has exactly one URI.
/// Zero is refused: openraft ids here start at 1 and a zero usually means "unset".
fn parse_replica_id(text: &str) -> Result<u64, PeerIdentityError> {
    let invalid = || PeerIdentityError::InvalidReplicaId(text.to_string());
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || text.starts_with('0') {
        return Err(invalid());
    }
    text.parse().map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_ids_are_canonical_decimal() {
        let cases: &[(&str, Option<u64>)] = &[
            ("1", Some(1)),
            ("42", Some(42)),
            ("18446744073709551615", Some(u64::MAX)),
            ("", None),
            ("0", None),
            ("01", None),
            ("+1", None),
            ("-1", None),
            ("1a", None),
            ("1/2", None),
            (" 1", None),
            ("18446744073709551616", None),
        ];
        for (text, want) in cases {
            let got = parse_replica_id(text).ok();
            assert_eq!(got, *want, "{text:?}");
        }
    }

    #[test]
    fn identities_name_their_uri() {
        assert_eq!(
            PeerIdentity::Replica(7).uri(),
            "spiffe://flotilla/replica/7"
        );
        assert_eq!(
            PeerIdentity::Cluster("c-1".into()).uri(),
            "spiffe://flotilla/cluster/c-1"
        );
        assert_eq!(
            PeerIdentity::Admin("alice".into()).uri(),
            "spiffe://flotilla/admin/alice"
        );
        assert_eq!(PeerIdentity::Replica(7).to_string(), "replica 7");
    }
}
