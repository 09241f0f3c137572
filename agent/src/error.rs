//! The error `run` returns: what stopped the agent.

use crate::channel::ChannelError;
use crate::registration::RegistrationError;
use crate::store::StoreError;
use crate::target::TargetError;

/// Why the agent stopped. Network trouble is retried inside and never ends up here.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The local store failed; the agent cannot keep its promises without it.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Registration failed for good (e.g. the token was refused).
    #[error(transparent)]
    Registration(#[from] RegistrationError),
    /// The target could not be set up.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// The connection to the hub could not be configured.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The metrics listener could not bind.
    #[error("cannot listen for metrics on {at}: {source}")]
    Listen {
        /// The address from `--metrics-listen`.
        at: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// An error and its sources on one line, each said once; transport errors hide the useful part
/// in the sources.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    text
}
