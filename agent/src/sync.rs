//! Following the hub: Watch for announcements, fetch and verify each newer ClusterState and
//! its objects, and commit them to the store in one transaction before anything applies them.
//!
//! [`offer`] is the whole accept-or-reject decision, independent of gRPC, so tests drive it
//! directly. Any [`Rejection`] leaves the store as it was, keeps the held state running and
//! queues a status report naming the rejection. Losing the hub changes nothing locally.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use flotilla_common::cluster_state::{
    ObjectEntry, Rejection, SignedClusterState, SignedHeader, Verdict, verify_cluster_state,
    verify_cluster_state_without_chain, verify_object,
};
use flotilla_common::digest::Digest;
use flotilla_common::limits::Limits;
use flotilla_proto::v1::WatchRequest;
use flotilla_proto::v1::agent_client::AgentClient;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use crate::error::{AgentError, error_chain as chain};
use crate::link::HubHandle;
use crate::store::{HeldState, Store, StoreError, referenced_digests};
use crate::wire::{self, WireError};

/// Digests asked for in one FetchObjects call.
const FETCH_BATCH: usize = 1_000;

/// A Watch message, converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announcement {
    /// The newest version the hub has for this cluster.
    pub version: u64,
    /// Its header digest, if the hub sent a well-formed one.
    pub digest: Option<Digest>,
    /// A keep-alive repeating the current version.
    pub heartbeat: bool,
}

/// Why following the hub was interrupted; all but `Store` are retried after a backoff.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The local store failed: fatal.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A call to the hub failed.
    #[error("{call} failed: {status}")]
    Rpc {
        /// Which call.
        call: &'static str,
        /// The gRPC status.
        status: Box<tonic::Status>,
    },
    /// The hub sent a malformed message.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The hub did not send every object asked for.
    #[error("the hub did not send {0} of the objects asked for")]
    MissingObjects(usize),
    /// The hub sent more object bytes than any ClusterState may hold.
    #[error("the hub sent more objects than were asked for or the limits allow")]
    TooMuchData,
    /// The Watch stream stayed silent past the idle timeout.
    #[error("no announcement or heartbeat for {0:?}")]
    WatchIdle(Duration),
    /// The hub closed the Watch stream.
    #[error("the hub closed the Watch stream")]
    WatchEnded,
}

fn rpc(call: &'static str) -> impl FnOnce(tonic::Status) -> SyncError {
    move |status| SyncError::Rpc {
        call,
        status: Box::new(status),
    }
}

/// What the agent checks offers against: who it is and whom it trusts.
#[derive(Debug, Clone)]
pub struct OfferContext {
    /// Our cluster id.
    pub cluster_id: String,
    /// The signing key pinned at registration.
    pub key: VerifyingKey,
    /// Limits on states and objects.
    pub limits: Limits,
}

/// What became of an offered ClusterState.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OfferOutcome {
    /// Verified and durably stored, with this many newly fetched objects.
    Accepted {
        /// The version now held.
        version: u64,
        /// Objects fetched for it.
        fetched: usize,
    },
    /// The same version as held.
    AlreadyHeld,
    /// Refused; nothing was stored and a report was queued.
    Rejected(Rejection),
}

/// Fetches object bytes by digest (FetchObjects, or a test double).
pub trait ObjectFetcher {
    /// Returns what the source sent for `digests`, unchecked.
    fn fetch(
        &mut self,
        digests: Vec<Digest>,
    ) -> impl Future<Output = Result<Vec<(Digest, Vec<u8>)>, SyncError>> + Send;
}

/// Verifies an offered ClusterState, fetches and verifies its missing objects, and commits
/// state and objects in one transaction — or rejects it, storing nothing but the report.
pub async fn offer<F: ObjectFetcher>(
    ctx: &OfferContext,
    store: &Store,
    signed: SignedClusterState,
    chain: &[SignedHeader],
    fetcher: &mut F,
    now: i64,
) -> Result<OfferOutcome, SyncError> {
    offer_with_chain(ctx, store, signed, Some(chain), fetcher, now).await
}

/// [`offer`], where `chain` is `None` when the hub cannot give the headers between the held
/// version and the offered one (it pruned them, or there are too many): the state is then
/// checked without the hash-chain link, as on first sync, and never accepted if older.
pub async fn offer_with_chain<F: ObjectFetcher>(
    ctx: &OfferContext,
    store: &Store,
    signed: SignedClusterState,
    chain: Option<&[SignedHeader]>,
    fetcher: &mut F,
    now: i64,
) -> Result<OfferOutcome, SyncError> {
    let held = store.blocking(Store::held).await?.map(|h| h.held);
    let verdict = match chain {
        Some(chain) => verify_cluster_state(
            &signed,
            chain,
            &ctx.key,
            &ctx.cluster_id,
            held.as_ref(),
            now,
            &ctx.limits,
        ),
        None => verify_cluster_state_without_chain(
            &signed,
            &ctx.key,
            &ctx.cluster_id,
            held.as_ref(),
            now,
            &ctx.limits,
        ),
    };
    let state = match verdict {
        Ok(Verdict::AlreadyHeld) => return Ok(OfferOutcome::AlreadyHeld),
        Ok(Verdict::Accept(state)) => state,
        Err(rejection) => return reject(store, rejection, now).await,
    };
    let digests = referenced_digests(&state);
    let missing = store
        .blocking(move |store| store.missing_blobs(&digests))
        .await?;
    let mut entries: BTreeMap<Digest, Vec<&ObjectEntry>> = BTreeMap::new();
    for entry in state.body.apps.iter().flat_map(|a| &a.objects) {
        entries.entry(entry.digest).or_default().push(entry);
    }
    let asked = missing.len();
    let mut fetched: BTreeMap<Digest, Vec<u8>> = BTreeMap::new();
    let mut received_bytes = 0u64;
    for (digest, bytes) in fetcher.fetch(missing.iter().copied().collect()).await? {
        received_bytes += bytes.len() as u64;
        if received_bytes > ctx.limits.max_state_bytes {
            return Err(SyncError::TooMuchData);
        }
        // Objects nobody asked for are ignored, not trusted.
        if !missing.contains(&digest) {
            continue;
        }
        for entry in &entries[&digest] {
            if let Err(rejection) = verify_object(entry, &bytes, &ctx.limits) {
                return reject(store, rejection, now).await;
            }
        }
        fetched.insert(digest, bytes);
    }
    if fetched.len() < asked {
        return Err(SyncError::MissingObjects(asked - fetched.len()));
    }
    let version = state.header.version;
    let count = fetched.len();
    // Up to the state-size limit of fsync'd writes: keep it off the async worker threads.
    let store = store.clone();
    let held = HeldState::new(signed, state);
    tokio::task::spawn_blocking(move || store.commit_state(&held, &fetched))
        .await
        .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()))?;
    Ok(OfferOutcome::Accepted {
        version,
        fetched: count,
    })
}

async fn reject(store: &Store, rejection: Rejection, now: i64) -> Result<OfferOutcome, SyncError> {
    let reason = rejection.to_string();
    store
        .blocking(move |store| store.record_rejection(now, &reason))
        .await?;
    Ok(OfferOutcome::Rejected(rejection))
}

/// FetchObjects over gRPC, in batches, bounded by what was asked.
struct GrpcFetcher {
    client: AgentClient<Channel>,
}

impl ObjectFetcher for GrpcFetcher {
    async fn fetch(&mut self, digests: Vec<Digest>) -> Result<Vec<(Digest, Vec<u8>)>, SyncError> {
        let mut out = Vec::with_capacity(digests.len());
        for batch in digests.chunks(FETCH_BATCH) {
            let mut stream = self
                .client
                .fetch_objects(wire::fetch_request(batch))
                .await
                .map_err(rpc("FetchObjects"))?
                .into_inner();
            let mut received = 0;
            while let Some(blob) = stream.message().await.map_err(rpc("FetchObjects"))? {
                received += 1;
                if received > batch.len() {
                    return Err(SyncError::TooMuchData);
                }
                out.push(wire::blob(blob)?);
            }
        }
        Ok(out)
    }
}

/// The sync task: one Watch stream at a time; when it fails, the hub link moves to the next
/// endpoint (after its backoff) and the Watch reopens there from the version held.
pub(crate) struct Syncer {
    /// The hub link: the channel to use, and where failures are told.
    pub hub: HubHandle,
    /// The store.
    pub store: Store,
    /// Identity and trust.
    pub ctx: OfferContext,
    /// Told each newly committed version.
    pub held: watch::Sender<u64>,
    /// Woken when a rejection report is queued.
    pub reporter: Arc<Notify>,
    /// Watch silence that counts as a dead stream.
    pub idle_timeout: Duration,
    /// Counts accepted and refused ClusterStates.
    pub metrics: crate::metrics::AgentMetrics,
}

/// Per-task memory that outlives one stream.
#[derive(Default)]
struct SyncMemory {
    /// The last refused version and its header digest, so announcements and heartbeats
    /// repeating it are not fetched (and reported) again.
    rejected: Option<(u64, Digest)>,
}

impl Syncer {
    /// Runs until shutdown; returns only store failures as errors.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let mut memory = SyncMemory::default();
        loop {
            let current = self.hub.current();
            let result = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                result = self.session(current.channel, current.generation, &mut memory) => result,
            };
            let error = match result {
                Err(SyncError::Store(e)) => return Err(e.into()),
                Err(e) => e,
                Ok(()) => SyncError::WatchEnded,
            };
            // The link logs the switch and, once per outage, the failed round.
            debug!("hub Watch interrupted: {}", chain(&error));
            self.hub.failed(current.generation, chain(&error));
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                moved = self.hub.next(current.generation) => if !moved {
                    shutdown.cancelled().await;
                    return Ok(());
                },
            }
        }
    }

    async fn session(
        &self,
        channel: Channel,
        generation: u64,
        memory: &mut SyncMemory,
    ) -> Result<(), SyncError> {
        let mut client = crate::channel::agent_client(channel);
        // Read at every (re)connection, whichever endpoint: the Watch resumes from what is held.
        let have_version = self
            .store
            .blocking(Store::held)
            .await?
            .map_or(0, |h| h.held.version);
        let mut stream = client
            .watch(WatchRequest { have_version })
            .await
            .map_err(rpc("Watch"))?
            .into_inner();
        debug!(have_version, "Watch opened");
        self.hub.healthy(generation);
        loop {
            let message = tokio::time::timeout(self.idle_timeout, stream.message())
                .await
                .map_err(|_| SyncError::WatchIdle(self.idle_timeout))?
                .map_err(rpc("Watch"))?;
            let Some(announce) = message else {
                return Err(SyncError::WatchEnded);
            };
            self.on_announcement(&mut client, wire::announcement(announce), memory)
                .await?;
        }
    }

    async fn on_announcement(
        &self,
        client: &mut AgentClient<Channel>,
        announced: Announcement,
        memory: &mut SyncMemory,
    ) -> Result<(), SyncError> {
        let held = self.store.blocking(Store::held).await?.map(|h| h.held);
        if let Some(held) = &held
            && held.version == announced.version
            && announced.digest.is_none_or(|d| d == held.digest)
        {
            return Ok(());
        }
        if let Some((version, digest)) = memory.rejected
            && version == announced.version
            && announced.digest.is_none_or(|d| d == digest)
        {
            return Ok(());
        }
        let have_version = held.as_ref().map_or(0, |h| h.version);
        let started = std::time::Instant::now();
        let response = client
            .get_cluster_state(wire::cluster_state_request(announced.version, have_version))
            .await
            .map_err(rpc("GetClusterState"))?
            .into_inner();
        let (signed, chain) = wire::cluster_state_response(response)?;
        let offered_digest = signed.digest();
        let mut fetcher = GrpcFetcher {
            client: client.clone(),
        };
        let now = crate::unix_now();
        let chained = chain.is_some();
        let outcome = offer_with_chain(
            &self.ctx,
            &self.store,
            signed,
            chain.as_deref(),
            &mut fetcher,
            now,
        )
        .await?;
        self.metrics
            .sync_duration
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            OfferOutcome::Accepted { version, fetched } => {
                memory.rejected = None;
                if !chained {
                    warn!(
                        "accepted version={version} without the hash chain from held version={have_version}: the hub no longer holds the versions between"
                    );
                }
                self.metrics.states_accepted.inc();
                info!("accepted version={version} fetched_objects={fetched}");
                self.held.send_replace(version);
            }
            OfferOutcome::AlreadyHeld => {}
            OfferOutcome::Rejected(rejection) => {
                self.metrics.states_rejected.inc();
                warn!(
                    "rejected ClusterState version={}: {rejection}",
                    announced.version
                );
                memory.rejected = Some((announced.version, offered_digest));
                self.reporter.notify_one();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
