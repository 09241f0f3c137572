//! The agent's one connection to the hub: which endpoint the hub tasks use, and when to move.
//!
//! [`HubLink`] is the single owner of that choice. It publishes a lazily connecting mTLS
//! channel to one endpoint at a time, each with a generation number. The tasks that hold
//! streams (sync's Watch, the reporter's ReportStatus) tell it through their [`HubHandle`]
//! when a stream opened (healthy) or when a call or stream failed; the first failure of a
//! generation moves every task to the next endpoint ([`Rotation`]), later reports about an
//! old generation are ignored. A renewed certificate republishes the same endpoint with the
//! new identity. The tasks only pick up the current channel for their next call, so a switch
//! keeps nothing but the endpoint: the Watch resumes from the version in the store and the
//! outbox is resent, as after any reconnection.

use std::time::{Duration, Instant};

use rand::SeedableRng;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use crate::channel::agent_channel_to;
use crate::config::Backoff;
use crate::endpoints::{Candidate, HubAddress, Rotation, describe_round, resolve};
use crate::error::AgentError;
use crate::identity::AgentIdentity;
use crate::retry::RetryPolicy;

/// How long a task with a [`HubHandle::fixed`] channel waits after a failure.
const FIXED_RETRY: Duration = Duration::from_millis(50);

/// The channel in use and its generation.
#[derive(Debug, Clone)]
pub(crate) struct Current {
    /// mTLS channel to the current endpoint.
    pub channel: Channel,
    /// Increases with every channel published.
    pub generation: u64,
}

/// What a task tells the link about a generation.
#[derive(Debug)]
enum Signal {
    Healthy(u64),
    Failed(u64, String),
}

/// A task's view of the link: the current channel, and where to report how it fares.
#[derive(Debug, Clone)]
pub(crate) struct HubHandle {
    current: watch::Receiver<Current>,
    signals: Option<mpsc::UnboundedSender<Signal>>,
}

impl HubHandle {
    /// A handle on one channel that never changes; after a failure the task retries it
    /// after a short pause. For tests of a single task.
    #[cfg(test)]
    pub(crate) fn fixed(channel: Channel) -> Self {
        HubHandle {
            current: watch::channel(Current {
                channel,
                generation: 1,
            })
            .1,
            signals: None,
        }
    }

    /// The channel to use for the next call, with its generation.
    pub(crate) fn current(&self) -> Current {
        self.current.borrow().clone()
    }

    /// The channel to use for the next call.
    pub(crate) fn channel(&self) -> Channel {
        self.current.borrow().channel.clone()
    }

    /// A stream on `generation` opened: the endpoint works.
    pub(crate) fn healthy(&self, generation: u64) {
        if let Some(tx) = &self.signals {
            let _ = tx.send(Signal::Healthy(generation));
        }
    }

    /// A call or stream on `generation` failed with `error`.
    pub(crate) fn failed(&self, generation: u64, error: String) {
        if let Some(tx) = &self.signals {
            let _ = tx.send(Signal::Failed(generation, error));
        }
    }

    /// Waits until a channel newer than `generation` is published (the link moved on, after
    /// its backoff if a full round failed); false if the link is gone.
    pub(crate) async fn next(&mut self, generation: u64) -> bool {
        if self.signals.is_none() {
            tokio::time::sleep(FIXED_RETRY).await;
            return true;
        }
        self.current
            .wait_for(|c| c.generation > generation)
            .await
            .is_ok()
    }
}

/// The task that owns the choice of endpoint.
pub(crate) struct HubLink {
    hubs: Vec<HubAddress>,
    identity: watch::Receiver<AgentIdentity>,
    rotation: Rotation<Candidate>,
    published: watch::Sender<Current>,
    signals: mpsc::UnboundedReceiver<Signal>,
}

impl HubLink {
    /// Resolves `hubs`, publishes a channel to the first endpoint and returns the link with
    /// the handle the tasks clone. `identity` carries renewed certificates.
    pub(crate) async fn start(
        hubs: Vec<HubAddress>,
        identity: watch::Receiver<AgentIdentity>,
        backoff: Backoff,
    ) -> Result<(HubLink, HubHandle), AgentError> {
        let policy = RetryPolicy {
            first: backoff.min,
            ceiling: backoff.max,
        };
        let rotation = Rotation::new(policy, resolve(&hubs).await);
        let channel = agent_channel_to(rotation.current(), &identity.borrow())?;
        let (published, current) = watch::channel(Current {
            channel,
            generation: 1,
        });
        let (tx, signals) = mpsc::unbounded_channel();
        let link = HubLink {
            hubs,
            identity,
            rotation,
            published,
            signals,
        };
        let handle = HubHandle {
            current,
            signals: Some(tx),
        };
        Ok((link, handle))
    }

    fn generation(&self) -> u64 {
        self.published.borrow().generation
    }

    /// Publishes a new channel to the current endpoint with the current identity.
    fn publish(&mut self) -> Result<(), AgentError> {
        let channel = agent_channel_to(self.rotation.current(), &self.identity.borrow())?;
        let generation = self.generation() + 1;
        self.published.send_replace(Current {
            channel,
            generation,
        });
        Ok(())
    }

    /// Runs until shutdown or until every handle is gone.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let mut rng = rand::rngs::StdRng::from_entropy();
        let mut renewals = true;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                changed = self.identity.changed(), if renewals => match changed {
                    Ok(()) => self.publish()?,
                    Err(_) => renewals = false,
                },
                signal = self.signals.recv() => match signal {
                    None => return Ok(()),
                    Some(Signal::Healthy(generation)) if generation == self.generation() => {
                        if self.rotation.healthy(Instant::now()) {
                            let (n, of) = self.rotation.place();
                            info!("connected to hub {} ({n} of {of})", self.rotation.current());
                        }
                    }
                    // Reports about older generations come from streams the link already
                    // moved away from (another task's failure, or a renewal): ignored.
                    Some(Signal::Failed(generation, error)) if generation == self.generation() => {
                        debug!(endpoint = %self.rotation.current(), "hub endpoint failed: {error}");
                        let step = self.rotation.failed(error, Instant::now(), &mut rng);
                        if let Some(round) = &step.round {
                            let wait = step.wait.unwrap_or_default();
                            // One warning per outage; later rounds repeat it.
                            if round.number == 1 {
                                warn!(retry_in = ?wait, "no hub endpoint answers: {}", describe_round(round));
                            } else {
                                debug!(retry_in = ?wait, rounds = round.number, "hub still unreachable: {}", describe_round(round));
                            }
                        }
                        if let Some(wait) = step.wait {
                            tokio::select! {
                                _ = shutdown.cancelled() => return Ok(()),
                                _ = tokio::time::sleep(wait) => {}
                            }
                        }
                        if step.wrapped {
                            let fresh = resolve(&self.hubs).await;
                            self.rotation.replace(fresh);
                        }
                        self.publish()?;
                    }
                    Some(_) => {}
                },
            }
        }
    }
}
