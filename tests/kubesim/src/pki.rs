//! The simulator's throwaway CA and server certificate, and the rustls server configuration.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::StartError;

/// A CA certificate (PEM, for the kubeconfig) and a TLS server configuration signed by it.
pub struct ServerPki {
    /// The CA certificate clients trust, PEM-encoded.
    pub ca_pem: String,
    /// TLS configuration offering HTTP/2 and HTTP/1.1.
    pub tls: Arc<rustls::ServerConfig>,
}

/// Makes a fresh CA and a server certificate for `localhost` and `127.0.0.1`.
pub fn generate() -> Result<ServerPki, StartError> {
    let ca_key = KeyPair::generate().map_err(StartError::Certificate)?;
    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).map_err(StartError::Certificate)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kubesim-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(StartError::Certificate)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().map_err(StartError::Certificate)?;
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "kubernetes".to_string()])
            .map_err(StartError::Certificate)?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    let server_cert = params
        .signed_by(&server_key, &issuer)
        .map_err(StartError::Certificate)?;

    let chain = vec![CertificateDer::from(server_cert.der().to_vec())];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(StartError::Tls)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(StartError::Tls)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(ServerPki {
        ca_pem: ca_cert.pem(),
        tls: Arc::new(tls),
    })
}
