//! First contact: trade the bootstrap token and a CSR for a cluster certificate, once.
//!
//! Runs only when the store holds no identity. The token file is read here and nowhere else,
//! and the token is never logged. The hub endpoints are tried in order; one that cannot be
//! reached (or sheds the attempt) passes the turn to the next, and a full round of them failing
//! waits a jittered, growing backoff (the hub may still be starting). An answer from the hub
//! refusing the registration is final.

use std::path::Path;
use std::time::Instant;

use flotilla_common::capabilities::Capabilities;

use rand::SeedableRng;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tracing::{debug, info, warn};

use crate::channel::{ChannelError, registration_endpoint_to};
use crate::config::AgentConfig;
use crate::endpoints::{Rotation, describe_round, resolve};
use crate::error::error_chain as chain;
use crate::identity::{AgentIdentity, IdentityError, new_key_and_csr};
use crate::retry::RetryPolicy;
use crate::store::{Store, StoreError};
use crate::wire::{self, WireError};

/// Why registration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The token file could not be read.
    #[error("cannot read the bootstrap token file {path}: {source}")]
    TokenFile {
        /// The file.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The token file is empty.
    #[error("the bootstrap token file {0} is empty")]
    EmptyToken(String),
    /// The key or CSR could not be made.
    #[error("cannot create the agent's key: {0}")]
    Key(#[from] IdentityError),
    /// The endpoint could not be configured.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The hub answered and refused.
    #[error("the hub refused the registration ({code:?}): {message}")]
    Refused {
        /// gRPC status code.
        code: Code,
        /// The hub's message.
        message: String,
    },
    /// The hub's answer is unusable.
    #[error("the hub's registration answer is unusable: {0}")]
    BadResponse(#[from] WireError),
    /// The identity could not be stored.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn read_token(path: &Path) -> Result<String, RegistrationError> {
    let text = std::fs::read_to_string(path).map_err(|source| RegistrationError::TokenFile {
        path: path.display().to_string(),
        source,
    })?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(RegistrationError::EmptyToken(path.display().to_string()));
    }
    Ok(token)
}

/// Whether a failed Register call is worth repeating: only when the hub could not be reached
/// or shed the attempt (its per-address rate limit, which agents behind one NAT share).
fn is_unreachable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted
    )
}

/// Registers with the hub, telling it the cluster's `capabilities`, and stores the identity;
/// `None` if shut down first.
pub async fn register(
    config: &AgentConfig,
    store: &Store,
    capabilities: &Capabilities,
    shutdown: &CancellationToken,
) -> Result<Option<AgentIdentity>, RegistrationError> {
    let token = read_token(&config.token_file)?;
    let (key_pem, csr_der) = new_key_and_csr(&config.name)?;
    let policy = RetryPolicy {
        first: config.backoff.min,
        ceiling: config.backoff.max,
    };
    let mut rotation = Rotation::new(policy, resolve(&config.hubs).await);
    let mut rng = rand::rngs::StdRng::from_entropy();
    let (response, through) = loop {
        let candidate = rotation.current().clone();
        let endpoint = registration_endpoint_to(&candidate, &config.ca_pem)?;
        let attempt = async {
            let channel = endpoint.connect().await.map_err(|e| {
                tonic::Status::unavailable(format!("cannot connect: {}", chain(&e)))
            })?;
            crate::channel::registration_client(channel)
                .register(wire::register_request(
                    token.clone(),
                    csr_der.clone(),
                    &config.name,
                    capabilities,
                ))
                .await
        };
        let result = tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            result = attempt => result,
        };
        match result {
            Ok(response) => {
                let (n, of) = rotation.place();
                break (response.into_inner(), format!("{candidate} ({n} of {of})"));
            }
            Err(status) if is_unreachable(&status) => {
                debug!(hub = %candidate, "registration: hub unreachable or busy: {}", status.message());
                let step = rotation.failed(status.message().to_string(), Instant::now(), &mut rng);
                if let Some(round) = &step.round {
                    let wait = step.wait.unwrap_or_default();
                    // One warning per outage; later rounds repeat it.
                    if round.number == 1 {
                        warn!(retry_in = ?wait, "registration: no hub endpoint answers: {}", describe_round(round));
                    } else {
                        debug!(retry_in = ?wait, rounds = round.number, "registration: hub still unreachable: {}", describe_round(round));
                    }
                }
                if let Some(wait) = step.wait {
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                if step.wrapped {
                    rotation.replace(resolve(&config.hubs).await);
                }
            }
            Err(status) => {
                return Err(RegistrationError::Refused {
                    code: status.code(),
                    message: status.message().to_string(),
                });
            }
        }
    };
    let identity = wire::agent_identity(response, key_pem, &config.ca_pem)?;
    let saved = identity.clone();
    store
        .blocking(move |store| store.save_identity(&saved))
        .await?;
    info!(cluster_id = %identity.cluster_id, "registered with hub {through}");
    Ok(Some(identity))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_trimmed_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  secret-token\n").unwrap();
        assert_eq!(read_token(&path).unwrap(), "secret-token");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            read_token(&path),
            Err(RegistrationError::EmptyToken(_))
        ));
        let err = read_token(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn only_unreachable_or_shedding_hubs_are_retried() {
        assert!(is_unreachable(&tonic::Status::unavailable(
            "connection refused"
        )));
        assert!(is_unreachable(&tonic::Status::resource_exhausted(
            "over rpc.registrationsPerMinute"
        )));
        assert!(!is_unreachable(&tonic::Status::permission_denied(
            "token already used"
        )));
        assert!(!is_unreachable(&tonic::Status::invalid_argument("bad csr")));
        assert!(!is_unreachable(&tonic::Status::unauthenticated(
            "unknown token"
        )));
    }
}
