//! TLS channels to the hub: server-verified only for registration, mutual TLS afterwards.

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::identity::AgentIdentity;

/// How long establishing a TCP+TLS connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings keep idle streams alive through NATs and detect dead links.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A channel could not be configured.
#[derive(Debug, thiserror::Error)]
#[error("cannot configure the connection to {hub}: {source}")]
pub struct ChannelError {
    /// Hub URL.
    pub hub: String,
    /// The tonic error.
    #[source]
    pub source: tonic::transport::Error,
}

fn endpoint(hub: &str, tls: ClientTlsConfig) -> Result<Endpoint, ChannelError> {
    let err = |source| ChannelError {
        hub: hub.to_string(),
        source,
    };
    Ok(Endpoint::from_shared(hub.to_string())
        .map_err(err)?
        .tls_config(tls)
        .map_err(err)?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// The endpoint for `Registration.Register`: verifies the hub with `ca_pem`, presents no
/// client certificate.
pub fn registration_endpoint(hub: &str, ca_pem: &str) -> Result<Endpoint, ChannelError> {
    endpoint(
        hub,
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)),
    )
}

/// A lazily connecting mTLS channel with the agent's certificate; it reconnects by itself.
pub fn agent_channel(hub: &str, identity: &AgentIdentity) -> Result<Channel, ChannelError> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&identity.ca_pem))
        .identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem));
    Ok(endpoint(hub, tls)?.connect_lazy())
}
