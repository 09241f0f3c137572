//! The `Agent` service. The caller's cluster id comes only from its verified
//! client certificate, and every read is limited to that cluster (invariant 6).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use flotilla_common::digest::Digest;
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::agent_server::Agent;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info};

use super::limits::StreamKind;
use super::{ApiState, caller, internal, store_error, wire};
use crate::controller::unix_now;
use crate::pki::PeerIdentity;
use crate::store::Notice;

/// Most digests one FetchObjects call may ask for.
const MAX_DIGESTS_PER_FETCH: usize = 20_000;

/// Blobs one FetchObjects read transaction gathers before they are sent: a stream holds a
/// blocking thread only for one such read, never while it waits for a slow client.
const FETCH_CHUNK_BLOBS: usize = 64;
const FETCH_CHUNK_BYTES: u64 = 4 * 1024 * 1024;

/// The Agent service.
pub struct AgentService(pub ApiState);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl AgentService {
    /// Authenticates the caller as a registered cluster and records contact.
    fn cluster<T>(&self, request: &Request<T>) -> Result<String, Status> {
        let id = match caller(request)? {
            PeerIdentity::Cluster(id) => id,
            other @ (PeerIdentity::Admin(_) | PeerIdentity::Replica(_)) => {
                return Err(Status::permission_denied(format!(
                    "a cluster certificate is required; this one names {other}"
                )));
            }
        };
        if self.0.store.cluster(&id).map_err(internal)?.is_none() {
            return Err(Status::permission_denied(format!(
                "cluster {id} is not registered"
            )));
        }
        self.0
            .last_contact
            .lock()
            .expect("last_contact lock")
            .insert(id.clone(), unix_now());
        Ok(id)
    }

    /// Resolves with the status to end a stream with when `cluster` is deleted (checked now
    /// and after every deletion) or the hub stops.
    fn stream_end(&self, cluster: String) -> impl Future<Output = Status> + Send + 'static {
        // Deleted on any replica, the deletion reaches this one's store as a notice.
        let mut notices = self.0.store.subscribe();
        let store = self.0.store.clone();
        let shutdown = self.0.shutdown.clone();
        let deleted = async move {
            loop {
                if let Ok(None) = store.cluster(&cluster) {
                    return;
                }
                loop {
                    match notices.recv().await {
                        Ok(Notice::Clusters | Notice::Restored)
                        | Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                    }
                }
            }
        };
        async move {
            tokio::select! {
                _ = deleted => Status::permission_denied(
                    "this cluster was deleted by an operator; its certificate is no longer accepted",
                ),
                _ = shutdown.cancelled() => Status::unavailable("the hub is shutting down"),
            }
        }
    }

    /// Ends `stream` as soon as its cluster is deleted or the hub stops.
    fn until_deleted<T: Send + 'static>(
        &self,
        cluster: &str,
        stream: BoxStream<T>,
    ) -> BoxStream<T> {
        Box::pin(UntilDeleted {
            inner: stream,
            end: Box::pin(self.stream_end(cluster.to_string())),
            done: false,
        })
    }

    fn latest(&self, cluster: &str) -> Result<Option<pb::Announce>, Status> {
        Ok(self
            .0
            .store
            .latest_state(cluster)
            .map_err(internal)?
            .map(|(version, s)| pb::Announce {
                version,
                digest: s.digest().0.to_vec(),
                heartbeat: false,
            }))
    }
}

#[tonic::async_trait]
impl Agent for AgentService {
    type WatchStream = BoxStream<pb::Announce>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let cluster = self.cluster(&request)?;
        if let Some(why) = self.0.cut_off() {
            return Err(Status::unavailable(why));
        }
        let slot = self.0.limits.open_stream(&cluster, StreamKind::Watch)?;
        let have = request.into_inner().have_version;
        // Subscribe before reading the latest version so nothing applied in between is missed. A
        // version is announced once this replica applied it, leader or follower.
        let mut announcements = self.0.store.subscribe();
        let initial = self.latest(&cluster)?;
        let (tx, rx) = mpsc::channel(16);
        let response = self.until_deleted(&cluster, Box::pin(ReceiverStream::new(rx)));
        let this = AgentService(self.0.clone());
        let heartbeat = self.0.heartbeat;
        let shutdown = self.0.shutdown.clone();
        let watching = self.0.metrics.watching();
        self.0.tasks.spawn(async move {
            let (_slot, _watching) = (slot, watching);
            let mut current = initial.clone().map(|a| a.version).unwrap_or(0);
            if let Some(a) = initial
                && a.version > have
                && tx.send(Ok(a)).await.is_err()
            {
                return;
            }
            let mut ticker = tokio::time::interval(heartbeat);
            ticker.tick().await;
            loop {
                let next = tokio::select! {
                    _ = tx.closed() => return,
                    _ = shutdown.cancelled() => return,
                    _ = ticker.tick() => {
                        // A replica cut off from the majority no longer sees new versions: end the
                        // stream so the agent moves on to another replica.
                        if let Some(why) = this.0.cut_off() {
                            let _ = tx.send(Err(Status::unavailable(why))).await;
                            return;
                        }
                        this.0.last_contact.lock().expect("last_contact lock").insert(cluster.clone(), unix_now());
                        Some(pb::Announce { version: current, digest: Vec::new(), heartbeat: true })
                    }
                    msg = announcements.recv() => match msg {
                        Ok(Notice::State { cluster_id, version, digest }) if cluster_id == cluster => Some(pb::Announce {
                            version,
                            digest: digest.0.to_vec(),
                            heartbeat: false,
                        }),
                        Ok(Notice::Restored) | Err(broadcast::error::RecvError::Lagged(_)) => match this.latest(&cluster) {
                            Ok(a) => a.filter(|a| a.version > current),
                            Err(e) => { let _ = tx.send(Err(e)).await; return; }
                        },
                        Ok(_) => None,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                };
                if let Some(a) = next {
                    if !a.heartbeat {
                        current = current.max(a.version);
                    }
                    if tx.send(Ok(a)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(response))
    }

    async fn get_cluster_state(
        &self,
        request: Request<pb::GetClusterStateRequest>,
    ) -> Result<Response<pb::GetClusterStateResponse>, Status> {
        let cluster = self.cluster(&request)?;
        let req = request.into_inner();
        let store = self.0.store.clone();
        let max_chain = self.0.limits.rpc.max_chain_headers;
        let (state, chain) = tokio::task::spawn_blocking(move || {
            let Some(state) = store.state(&cluster, req.version)? else {
                return Ok((None, None));
            };
            // An agent holding nothing has nothing to link to: it verifies the state alone.
            let chain = if req.have_version == 0 {
                Some(Vec::new())
            } else {
                store.chain_between(&cluster, req.have_version, req.version, max_chain)?
            };
            Ok::<_, crate::store::StoreError>((Some(state), chain))
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        let state = state.ok_or_else(|| {
            Status::not_found(format!(
                "no ClusterState version {} for this cluster",
                req.version
            ))
        })?;
        let chain_unavailable = chain.is_none();
        Ok(Response::new(pb::GetClusterStateResponse {
            state: Some(wire::signed_state(state)),
            chain: chain
                .unwrap_or_default()
                .into_iter()
                .map(wire::signed_header)
                .collect(),
            chain_unavailable,
        }))
    }

    type FetchObjectsStream = BoxStream<pb::Blob>;

    async fn fetch_objects(
        &self,
        request: Request<pb::FetchObjectsRequest>,
    ) -> Result<Response<Self::FetchObjectsStream>, Status> {
        let cluster = self.cluster(&request)?;
        let digests = request.into_inner().digests;
        if digests.len() > MAX_DIGESTS_PER_FETCH {
            return Err(Status::invalid_argument(format!(
                "{} digests requested; at most {MAX_DIGESTS_PER_FETCH} per call",
                digests.len()
            )));
        }
        let digests = digests
            .iter()
            .map(|d| Digest::from_slice(d).map_err(|e| Status::invalid_argument(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let slot = self
            .0
            .limits
            .open_stream(&cluster, StreamKind::FetchObjects)?;
        let store = self.0.store.clone();
        let shutdown = self.0.shutdown.clone();
        let (tx, rx) = mpsc::channel(FETCH_CHUNK_BLOBS);
        let response = self.until_deleted(&cluster, Box::pin(ReceiverStream::new(rx)));
        self.0.tasks.spawn(async move {
            let _slot = slot;
            let digests = std::sync::Arc::new(digests);
            let mut next = 0;
            while next < digests.len() {
                let (store, cluster, digests_ref) =
                    (store.clone(), cluster.clone(), digests.clone());
                let read = tokio::task::spawn_blocking(move || {
                    store.blobs_for_cluster(
                        &cluster,
                        &digests_ref[next..],
                        FETCH_CHUNK_BLOBS,
                        FETCH_CHUNK_BYTES,
                    )
                });
                let chunk = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    chunk = read => chunk,
                };
                let chunk = match chunk {
                    Ok(Ok(chunk)) => chunk,
                    Ok(Err(e)) => {
                        let _ = tx.send(Err(internal(e))).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(internal(e))).await;
                        return;
                    }
                };
                for (digest, data) in chunk {
                    next += 1;
                    let item = match data {
                        Some(data) => Ok(pb::Blob {
                            digest: digest.0.to_vec(),
                            data,
                        }),
                        // Unknown and not-yours look the same to the caller.
                        None => Err(Status::not_found(format!(
                            "object {digest} is not in any of this cluster's states"
                        ))),
                    };
                    let stop = item.is_err();
                    let sent = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        sent = tx.send(item) => sent,
                    };
                    if sent.is_err() || stop {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(response))
    }

    type ReportStatusStream = BoxStream<pb::Ack>;

    async fn report_status(
        &self,
        request: Request<Streaming<pb::StatusReport>>,
    ) -> Result<Response<Self::ReportStatusStream>, Status> {
        let cluster = self.cluster(&request)?;
        let mut inbound = request.into_inner();
        let state = self.0.clone();
        let (tx, rx) = mpsc::channel(16);
        let response = self.until_deleted(&cluster, Box::pin(ReceiverStream::new(rx)));
        self.0.tasks.spawn(async move {
            loop {
                // Beyond the cluster's report rate the hub reads more slowly; the agent's
                // outbox waits for acks, so nothing is lost and nothing is refused.
                let message = tokio::select! {
                    _ = state.shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    message = async {
                        state.limits.report_turn(&cluster).await;
                        inbound.message().await
                    } => message,
                };
                let report = match message {
                    Ok(Some(r)) => {
                        state.metrics.reports_received.inc();
                        r
                    }
                    Ok(None) => return,
                    Err(e) => {
                        debug!(cluster = %cluster, error = %e, "status stream ended");
                        return;
                    }
                };
                let report = match wire::status_report(report)
                    .and_then(|r| state.limits.bound_report(r))
                {
                    Ok(r) => r,
                    Err(status) => {
                        debug!(cluster = %cluster, error = %status.message(), "status report refused");
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                // A replica cut off from the majority cannot commit it: send the agent elsewhere.
                if let Some(why) = state.cut_off() {
                    let _ = tx.send(Err(Status::unavailable(why))).await;
                    return;
                }
                let seq = report.seq;
                let cluster_id = cluster.clone();
                // Contact is the hub's clock, never the agent's observed_at.
                let received_at = unix_now();
                state
                    .last_contact
                    .lock()
                    .expect("last_contact lock")
                    .insert(cluster.clone(), received_at);
                // Ack only after the report is durable (invariant 5): committed in the next batch.
                let saved = state
                    .reports
                    .record(cluster_id, report.clone(), received_at)
                    .await;
                // Rollouts move on reports: the leader's controller hears of this one from its store
                // once applied there.
                let ack = match saved {
                    Ok(recorded) => {
                        if let Some(r) = recorded.filter(|r| r.fresh) {
                            state
                                .events
                                .record(crate::events::report_events(
                                    &r.cluster_name,
                                    r.previous.as_ref(),
                                    &report,
                                    received_at,
                                ))
                                .await;
                        }
                        Ok(pb::Ack { seq })
                    }
                    Err(e) => Err(store_error(e)),
                };
                let stop = ack.is_err();
                if tx.send(ack).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(response))
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let cluster = self.cluster(&request)?;
        let presented = request
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| c.as_ref().to_vec()))
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        self.0.limits.admit_renewal(&cluster)?;
        let ttl = self.0.cluster_cert_ttl;
        let now = time::OffsetDateTime::now_utc();
        let csr = request.into_inner().csr_der;
        let cert = self
            .0
            .ca
            .renew_cluster_csr(&csr, &cluster, ttl, now, &presented)
            .map_err(|e| Status::invalid_argument(format!("renewal refused: {e}")))?;
        let expires_at = now.unix_timestamp() + ttl.as_secs() as i64;
        let store = self.0.store.clone();
        let id = cluster.clone();
        tokio::task::spawn_blocking(move || store.record_renewal(&id, expires_at, unix_now()))
            .await
            .map_err(internal)?
            .map_err(|e| match e {
                crate::store::ClusterUpdateError::NotFound(_) => {
                    Status::permission_denied(format!("cluster {cluster} is not registered"))
                }
                crate::store::ClusterUpdateError::Store(e) => store_error(e),
            })?;
        info!(cluster = %cluster, expires_at, "cluster certificate renewed");
        Ok(Response::new(pb::RenewResponse {
            certificate_pem: cert,
            ca_pem: self.0.ca.cert_pem(),
            expires_at,
        }))
    }

    async fn report_capabilities(
        &self,
        request: Request<pb::ReportCapabilitiesRequest>,
    ) -> Result<Response<pb::ReportCapabilitiesResponse>, Status> {
        let cluster = self.cluster(&request)?;
        self.0.limits.admit_capability_report(&cluster)?;
        let capabilities = wire::capabilities(request.into_inner().capabilities).inspect_err(
            |s| debug!(cluster = %cluster, error = %s.message(), "capabilities refused"),
        )?;
        let store = self.0.store.clone();
        let (id, stored) = (cluster.clone(), capabilities.clone());
        let changed = tokio::task::spawn_blocking(move || store.set_capabilities(&id, &stored))
            .await
            .map_err(internal)?
            .map_err(|e| match e {
                crate::store::ClusterUpdateError::NotFound(_) => {
                    Status::permission_denied(format!("cluster {cluster} is not registered"))
                }
                crate::store::ClusterUpdateError::Store(e) => store_error(e),
            })?;
        if changed {
            info!(
                cluster = %cluster,
                kube_version = capabilities.kube_version.as_deref().unwrap_or(""),
                api_versions = capabilities.api_versions.len(),
                "cluster capabilities changed; re-rendering"
            );
            // Templates may branch on them: the leader's controller renders again when it hears
            // of the change; a new state follows only if the cluster's objects change.
        }
        Ok(Response::new(pb::ReportCapabilitiesResponse { changed }))
    }
}

/// A response stream that ends with an error once its cluster is deleted or the hub stops.
struct UntilDeleted<T> {
    inner: BoxStream<T>,
    end: Pin<Box<dyn Future<Output = Status> + Send>>,
    done: bool,
}

impl<T> Stream for UntilDeleted<T> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(status) = this.end.as_mut().poll(cx) {
            this.done = true;
            return Poll::Ready(Some(Err(status)));
        }
        let next = this.inner.as_mut().poll_next(cx);
        if let Poll::Ready(None) = next {
            this.done = true;
        }
        next
    }
}
