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

/// The identity a verified client certificate carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerIdentity {
    /// A registered cluster, by id.
    Cluster(String),
    /// An operator, by name.
    Admin(String),
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
        "the certificate's URI SAN {0:?} is neither spiffe://flotilla/cluster/<id> nor spiffe://flotilla/admin/<name>"
    )]
    ForeignUri(String),
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
    } else {
        Err(PeerIdentityError::ForeignUri(uri.to_string()))
    }
}
