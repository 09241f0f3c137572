//! Certificate renewal: a new key and a new certificate at two thirds of the certificate's
//! lifetime, over the current mTLS channel, without dropping the streams that are open.
//!
//! The new identity is durable in the store before any connection uses it, and connections
//! opened afterwards use it: open streams keep their already-authenticated connections
//! (TLS checks a certificate only at the handshake), so a Watch survives a renewal. An agent
//! whose certificate expired (it was offline through the renewal window) cannot renew: it
//! keeps enforcing its stored state and says once that it must be re-enrolled.

use std::time::Duration;

use flotilla_proto::v1 as pb;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Backoff;
use crate::error::{AgentError, error_chain as chain};
use crate::identity::{AgentIdentity, IdentityError, cert_expiry, new_key_and_csr};
use crate::link::HubHandle;
use crate::store::Store;
use crate::wire::{self, WireError};

/// Why one renewal attempt failed; every kind is retried.
#[derive(Debug, thiserror::Error)]
enum RenewError {
    #[error("cannot create a new key: {0}")]
    Key(#[from] IdentityError),
    #[error("Renew failed: {}", .0.message())]
    Rpc(Box<tonic::Status>),
    #[error("the hub's answer is unusable: {0}")]
    Answer(#[from] WireError),
}

/// Seconds from `now` until `at`, never negative.
fn until(now: i64, at: i64) -> Duration {
    Duration::from_secs(at.saturating_sub(now).max(0) as u64)
}

/// The renewal task.
pub(crate) struct Renewer {
    /// The hub link, for the Renew call.
    pub hub: HubHandle,
    /// The store that keeps the identity.
    pub store: Store,
    /// The identity in use.
    pub identity: AgentIdentity,
    /// Where a renewed identity is published; the hub link builds new channels with it.
    pub identities: watch::Sender<AgentIdentity>,
    /// Delays between failed attempts.
    pub backoff: Backoff,
}

impl Renewer {
    /// Renews before each certificate's renewal time until shutdown.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) -> Result<(), AgentError> {
        loop {
            let now = crate::unix_now();
            let (renew_at, expires) = match (
                self.identity.renew_at(),
                cert_expiry(&self.identity.cert_pem),
            ) {
                (Ok(r), Ok(e)) => (r, e),
                (Err(e), _) | (_, Err(e)) => {
                    error!(
                        "the agent's certificate cannot be read, so it cannot be renewed: {}",
                        chain(&e)
                    );
                    shutdown.cancelled().await;
                    return Ok(());
                }
            };
            if expires <= now {
                error!(
                    cluster_id = %self.identity.cluster_id,
                    expired_at = expires,
                    "the agent's certificate expired while the hub could not be reached; it keeps enforcing its stored state, but it must be re-enrolled with a new bootstrap token (flotilla token create --name ...) before it can receive anything new"
                );
                shutdown.cancelled().await;
                return Ok(());
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(until(now, renew_at)) => {}
            }
            if !self.renew_with_retries(expires, &shutdown).await? {
                return Ok(());
            }
        }
    }

    /// Tries until one renewal succeeds (true), the certificate expires (true: the loop then
    /// reports it) or shutdown (false).
    async fn renew_with_retries(
        &mut self,
        expires: i64,
        shutdown: &CancellationToken,
    ) -> Result<bool, AgentError> {
        let mut delays = self.backoff.delays();
        let mut failures = 0u32;
        loop {
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return Ok(false),
                attempt = self.renew_once() => attempt,
            };
            match attempt {
                Ok(identity) => {
                    // Durable first: a crash after this point restarts with the new identity.
                    let saved = identity.clone();
                    self.store
                        .blocking(move |store| store.save_identity(&saved))
                        .await?;
                    self.identities.send_replace(identity.clone());
                    info!(
                        expires_at = cert_expiry(&identity.cert_pem).unwrap_or_default(),
                        "certificate renewed"
                    );
                    self.identity = identity;
                    return Ok(true);
                }
                Err(e) => {
                    failures += 1;
                    let delay = delays.next().unwrap_or(self.backoff.max);
                    if failures == 1 {
                        warn!(retry_in = ?delay, "certificate renewal failed: {}", chain(&e));
                    }
                    if crate::unix_now() >= expires {
                        return Ok(true);
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(false),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    async fn renew_once(&self) -> Result<AgentIdentity, RenewError> {
        let (key_pem, csr_der) = new_key_and_csr(&self.identity.cluster_id)?;
        let response = crate::channel::agent_client(self.hub.channel())
            .renew(pb::RenewRequest { csr_der })
            .await
            .map_err(|s| RenewError::Rpc(Box::new(s)))?
            .into_inner();
        Ok(wire::renewed_identity(response, &self.identity, key_pem)?)
    }
}
