//! TLS channels to the hub: server-verified only for registration, mutual TLS afterwards.

use std::time::Duration;

use flotilla_proto::v1::agent_client::AgentClient;
use flotilla_proto::v1::registration_client::RegistrationClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::endpoints::Candidate;
use crate::identity::AgentIdentity;

/// How long establishing a TCP+TLS connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings keep idle streams alive through NATs and detect dead links.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message the agent decodes: the hub's default `transport.maxSendMessageBytes`, room
/// for a ClusterState at the object-count limit with its chain, or one object at the size limit.
pub const MAX_RECV_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Largest message the agent encodes: the hub's default `transport.maxRecvMessageBytes`.
pub const MAX_SEND_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

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

/// The endpoint for one resolved address of a hub: connects to that address and verifies the
/// hub's certificate against the URL's host name, which is also the request's authority.
fn candidate_endpoint(
    candidate: &Candidate,
    tls: ClientTlsConfig,
) -> Result<Endpoint, ChannelError> {
    let hub = &candidate.hub;
    match &candidate.addr {
        Ok(addr) => {
            let endpoint = endpoint(
                &format!("https://{addr}"),
                tls.domain_name(hub.host.clone()),
            )?;
            // The URL was checked as a URI when the configuration was read.
            Ok(match hub.url.parse() {
                Ok(origin) => endpoint.origin(origin),
                Err(_) => endpoint,
            })
        }
        // Not resolved ahead: the connection resolves the URL itself.
        Err(_) => endpoint(&hub.url, tls),
    }
}

/// The endpoint for `Registration.Register` at `candidate`: verifies the hub with `ca_pem`,
/// presents no client certificate.
pub fn registration_endpoint_to(
    candidate: &Candidate,
    ca_pem: &str,
) -> Result<Endpoint, ChannelError> {
    candidate_endpoint(
        candidate,
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)),
    )
}

/// A lazily connecting mTLS channel to `candidate` with the agent's certificate.
pub fn agent_channel_to(
    candidate: &Candidate,
    identity: &AgentIdentity,
) -> Result<Channel, ChannelError> {
    Ok(candidate_endpoint(candidate, agent_tls(identity))?.connect_lazy())
}

fn agent_tls(identity: &AgentIdentity) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&identity.ca_pem))
        .identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem))
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
    Ok(endpoint(hub, agent_tls(identity))?.connect_lazy())
}

/// An Agent-service client with the agent's message-size limits.
pub fn agent_client(channel: Channel) -> AgentClient<Channel> {
    AgentClient::new(channel)
        .max_decoding_message_size(MAX_RECV_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_SEND_MESSAGE_BYTES)
}

/// A Registration-service client with the agent's message-size limits.
pub fn registration_client(channel: Channel) -> RegistrationClient<Channel> {
    RegistrationClient::new(channel)
        .max_decoding_message_size(MAX_RECV_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_SEND_MESSAGE_BYTES)
}
