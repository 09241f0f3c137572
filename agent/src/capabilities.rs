//! The cluster's capabilities for the hub's renders (`cluster.kubeVersion`, `cluster.apiVersions`).
//!
//! Read from the target — discovery on Kubernetes (`target::kube::capabilities`), nothing for a
//! directory — with `--kube-version` and `--api-versions` replacing what was read for their field.
//! They travel in the registration request, so a new cluster's first render sees them, and then
//! with `ReportCapabilities`: once at every start (the hub answers an unchanged report from a read,
//! and a hub restored from a backup learns them again) and whenever a reading differs from the
//! last one the hub answered. Readings repeat every `--capabilities-interval` (5 minutes by
//! default: CRDs come and go with releases, not seconds, and one reading is a few dozen small
//! GETs); a reading equal to the last sends nothing. When nothing can change (a directory target,
//! or both flags given) nothing is re-read.

use std::collections::BTreeSet;
use std::time::Duration;

use flotilla_common::capabilities::Capabilities;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tracing::{debug, info, warn};

use crate::error::AgentError;
use crate::wire;

/// Default time between readings (`--capabilities-interval`).
pub const DEFAULT_CAPABILITIES_INTERVAL: &str = "5m";

/// First delay after a failed reading or report; it doubles up to the interval.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// What `--kube-version` and `--api-versions` set; each replaces what discovery found for its field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--kube-version`.
    pub kube_version: Option<String>,
    /// `--api-versions`, when given at least once.
    pub api_versions: Option<BTreeSet<String>>,
}

impl Overrides {
    /// `discovered` with the flags' fields in place of its own.
    pub fn apply(&self, discovered: Capabilities) -> Capabilities {
        Capabilities {
            kube_version: self.kube_version.clone().or(discovered.kube_version),
            api_versions: self.api_versions.clone().unwrap_or(discovered.api_versions),
        }
    }

    /// Whether the flags set both fields, so discovery would change nothing.
    pub fn complete(&self) -> bool {
        self.kube_version.is_some() && self.api_versions.is_some()
    }
}

/// Where capabilities are discovered.
pub enum Probe {
    /// Nothing to discover: a directory target.
    None,
    /// A Kubernetes API server.
    Kube {
        /// The target's client.
        client: kube::Client,
        /// Deadline of each discovery request.
        timeout: Duration,
    },
    /// Readings a test sets, and how many were taken.
    #[cfg(test)]
    Scripted(
        std::sync::Arc<std::sync::Mutex<Result<Capabilities, String>>>,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ),
}

/// Reads capabilities, keeping the last discovery for the next.
pub struct CapabilityReader {
    probe: Probe,
    overrides: Overrides,
    discovered: Capabilities,
}

impl CapabilityReader {
    /// A reader of `probe` with `overrides` applied.
    pub fn new(probe: Probe, overrides: Overrides) -> Self {
        CapabilityReader {
            probe,
            overrides,
            discovered: Capabilities::default(),
        }
    }

    /// Whether every reading gives the same answer.
    pub fn is_static(&self) -> bool {
        matches!(self.probe, Probe::None) || self.overrides.complete()
    }

    /// One reading, not yet checked against the hub's limits. Fails with a message when
    /// discovery does.
    pub async fn read(&mut self) -> Result<Capabilities, String> {
        if !self.is_static() {
            self.discovered = match &self.probe {
                Probe::None => Capabilities::default(),
                Probe::Kube { client, timeout } => {
                    crate::target::kube::capabilities::discover(client, *timeout, &self.discovered)
                        .await
                        .map_err(|e| e.to_string())?
                }
                #[cfg(test)]
                Probe::Scripted(next, taken) => {
                    taken.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    next.lock().expect("scripted probe").clone()?
                }
            };
        }
        Ok(self.overrides.apply(self.discovered.clone()))
    }

    /// What to register with: a valid reading, or else only what the flags say (logged).
    pub async fn for_registration(&mut self) -> (Capabilities, bool) {
        match self.read().await.map(|c| c.validate().map(|()| c)) {
            Ok(Ok(c)) => (c, true),
            Ok(Err(e)) => {
                warn!("registering without the cluster's capabilities: {e}");
                (self.overrides.apply(Capabilities::default()), false)
            }
            Err(e) => {
                warn!(
                    "registering without the cluster's capabilities, which are reported once they can be read: {e}"
                );
                (self.overrides.apply(Capabilities::default()), false)
            }
        }
    }
}

/// How one round of reading and reporting ended.
enum Round {
    /// The hub holds the reading, or refused it for good; nothing to do until it changes.
    Settled,
    /// The hub does not know ReportCapabilities.
    Unsupported,
    /// Try again soon.
    Failed(String),
}

/// The task that keeps the hub's copy of the capabilities current.
pub(crate) struct CapabilityReporter {
    /// The hub link; reports go to the endpoint the streams use.
    pub hub: crate::link::HubHandle,
    /// Reads the capabilities.
    pub reader: CapabilityReader,
    /// Time between readings.
    pub interval: Duration,
    /// The last reading the hub answered (held or refused); set from registration.
    pub answered: Option<Capabilities>,
}

impl CapabilityReporter {
    /// Runs until shutdown or until nothing is left to report; never fails the agent.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let mut failures = 0u32;
        let mut wait = if self.answered.is_some() {
            self.interval
        } else {
            Duration::ZERO
        };
        loop {
            if failures == 0 && self.reader.is_static() && self.answered.is_some() {
                return Ok(());
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
            let round = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                round = self.round() => round,
            };
            match round {
                Round::Settled => failures = 0,
                Round::Unsupported => {
                    info!(
                        "the hub does not take capability reports (it predates them); templates there see none"
                    );
                    return Ok(());
                }
                Round::Failed(reason) => {
                    failures += 1;
                    if failures == 1 {
                        warn!("capabilities not reported, retrying: {reason}");
                    } else {
                        debug!(failures, "capabilities still not reported: {reason}");
                    }
                }
            }
            wait = retry_delay(failures, self.interval);
        }
    }

    async fn round(&mut self) -> Round {
        let capabilities = match self.reader.read().await {
            Ok(c) => c,
            Err(reason) => return Round::Failed(reason),
        };
        if self.answered.as_ref() == Some(&capabilities) {
            return Round::Settled;
        }
        if let Err(e) = capabilities.validate() {
            warn!("the cluster's capabilities are not reported: {e}");
            self.answered = Some(capabilities);
            return Round::Settled;
        }
        let answer = crate::channel::agent_client(self.hub.channel())
            .report_capabilities(wire::report_capabilities(&capabilities))
            .await;
        match answer {
            Ok(response) => {
                let (kube_version, api_versions) = (
                    capabilities.kube_version.clone().unwrap_or_default(),
                    capabilities.api_versions.len(),
                );
                if response.into_inner().changed {
                    info!(kube_version, api_versions, "capabilities reported");
                } else {
                    debug!(
                        kube_version,
                        api_versions, "the hub already had these capabilities"
                    );
                }
                self.answered = Some(capabilities);
                Round::Settled
            }
            Err(status) if status.code() == Code::Unimplemented => Round::Unsupported,
            Err(status)
                if matches!(
                    status.code(),
                    Code::InvalidArgument | Code::PermissionDenied | Code::FailedPrecondition
                ) =>
            {
                warn!(
                    "the hub refused the cluster's capabilities ({:?}): {}",
                    status.code(),
                    status.message()
                );
                self.answered = Some(capabilities);
                Round::Settled
            }
            Err(status) => {
                Round::Failed(format!("ReportCapabilities failed: {}", status.message()))
            }
        }
    }
}

/// The wait before the next round: the interval after success, else 1 s doubling up to it.
fn retry_delay(failures: u32, interval: Duration) -> Duration {
    if failures == 0 {
        return interval;
    }
    FIRST_RETRY
        .saturating_mul(1 << (failures - 1).min(16))
        .min(interval)
}

#[cfg(test)]
mod tests;
