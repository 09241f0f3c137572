//! Delivering the status outbox: the reporter task streams queued reports over
//! `ReportStatus` and deletes each one only when the hub acknowledges its seq.
//!
//! Reports are queued durably by the applier and the syncer (see `Store::record_apply` and
//! `Store::record_rejection`), which then wake the reporter. Each new stream resends every
//! queued report; the hub handles `(cluster, seq)` idempotently, so a report whose ack was lost
//! is simply acknowledged again.

use std::sync::Arc;

use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tracing::debug;

use crate::error::{AgentError, error_chain as chain};
use crate::link::HubHandle;
use crate::store::{Store, StoreError};
use crate::wire;

/// Why a ReportStatus stream ended; all but `Store` are retried after a backoff.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The local store failed: fatal.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The call failed.
    #[error("ReportStatus failed: {0}")]
    Rpc(Box<tonic::Status>),
    /// The hub closed the stream.
    #[error("the hub closed the ReportStatus stream")]
    Closed,
}

/// The reporter task.
pub(crate) struct Reporter {
    /// The hub link: the channel to use, and where failures are told.
    pub hub: HubHandle,
    /// The store holding the outbox.
    pub store: Store,
    /// Woken whenever a report is queued.
    pub wake: Arc<Notify>,
}

impl Reporter {
    /// Runs until shutdown; returns only store failures as errors.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) -> Result<(), AgentError> {
        loop {
            let current = self.hub.current();
            let result = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                result = self.session(current.channel, current.generation) => result,
            };
            let error = match result {
                Err(ReportError::Store(e)) => return Err(e.into()),
                Err(e) => e,
                Ok(()) => ReportError::Closed,
            };
            // The link logs the switch and, once per outage, the failed round; the outbox keeps
            // every unacknowledged report for the next stream, wherever it goes.
            debug!("status reporting interrupted: {}", chain(&error));
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

    /// Sends everything queued after `sent`; returns the new high-water mark.
    async fn send_queued(
        &self,
        tx: &mpsc::UnboundedSender<flotilla_proto::v1::StatusReport>,
        sent: u64,
    ) -> Result<u64, ReportError> {
        let queued = self
            .store
            .blocking(move |store| store.outbox_after(sent))
            .await?;
        let mut sent = sent;
        for report in queued {
            sent = report.seq;
            if tx.send(wire::status_report(&report)).is_err() {
                return Err(ReportError::Closed);
            }
        }
        Ok(sent)
    }

    async fn session(&self, channel: Channel, generation: u64) -> Result<(), ReportError> {
        let (tx, rx) = mpsc::unbounded_channel();
        // Queue what is pending before the call, so a hub that answers only after the first
        // message is served. The outbox is bounded, so the channel is too.
        let mut sent = self.send_queued(&tx, 0).await?;
        let mut acks = crate::channel::agent_client(channel)
            .report_status(UnboundedReceiverStream::new(rx))
            .await
            .map_err(|s| ReportError::Rpc(Box::new(s)))?
            .into_inner();
        self.hub.healthy(generation);
        loop {
            sent = self.send_queued(&tx, sent).await?;
            tokio::select! {
                // notify_one keeps a permit, so a report queued since send_queued is not missed.
                _ = self.wake.notified() => {}
                ack = acks.message() => {
                    let Some(ack) = ack.map_err(|s| ReportError::Rpc(Box::new(s)))? else {
                        return Err(ReportError::Closed);
                    };
                    let seq = wire::ack_seq(&ack);
                    self.store.blocking(move |store| store.ack(seq)).await?;
                    debug!(seq, "status report acknowledged");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::time::Duration;

    use flotilla_proto::v1 as pb;
    use flotilla_proto::v1::agent_server::{Agent, AgentServer};
    use tokio_stream::Stream;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::transport::{Endpoint, Server};
    use tonic::{Request, Response, Status, Streaming};

    use super::*;

    type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

    /// Acks every report, except that the first time it sees a seq in `drop_once` it ends
    /// the stream instead. Records the seqs each stream carried.
    #[derive(Clone, Default)]
    struct Hub {
        drop_once: Arc<Mutex<BTreeSet<u64>>>,
        streams: Arc<Mutex<Vec<Vec<u64>>>>,
        received: Arc<Notify>,
    }

    #[tonic::async_trait]
    impl Agent for Hub {
        type WatchStream = BoxStream<pb::Announce>;
        type FetchObjectsStream = BoxStream<pb::Blob>;
        type ReportStatusStream = BoxStream<pb::Ack>;

        async fn watch(
            &self,
            _: Request<pb::WatchRequest>,
        ) -> Result<Response<Self::WatchStream>, Status> {
            Err(Status::unimplemented("watch"))
        }
        async fn get_cluster_state(
            &self,
            _: Request<pb::GetClusterStateRequest>,
        ) -> Result<Response<pb::GetClusterStateResponse>, Status> {
            Err(Status::unimplemented("get"))
        }
        async fn fetch_objects(
            &self,
            _: Request<pb::FetchObjectsRequest>,
        ) -> Result<Response<Self::FetchObjectsStream>, Status> {
            Err(Status::unimplemented("fetch"))
        }
        async fn renew(
            &self,
            _: Request<pb::RenewRequest>,
        ) -> Result<Response<pb::RenewResponse>, Status> {
            Err(Status::unimplemented("renew"))
        }
        async fn report_capabilities(
            &self,
            _: Request<pb::ReportCapabilitiesRequest>,
        ) -> Result<Response<pb::ReportCapabilitiesResponse>, Status> {
            Err(Status::unimplemented("capabilities"))
        }
        async fn report_status(
            &self,
            request: Request<Streaming<pb::StatusReport>>,
        ) -> Result<Response<Self::ReportStatusStream>, Status> {
            let mut inbound = request.into_inner();
            let (tx, rx) = mpsc::channel(16);
            let hub = self.clone();
            let index = {
                let mut streams = hub.streams.lock().unwrap();
                streams.push(Vec::new());
                streams.len() - 1
            };
            tokio::spawn(async move {
                while let Ok(Some(report)) = inbound.message().await {
                    hub.streams.lock().unwrap()[index].push(report.seq);
                    hub.received.notify_one();
                    if hub.drop_once.lock().unwrap().remove(&report.seq) {
                        return;
                    }
                    if tx.send(Ok(pb::Ack { seq: report.seq })).await.is_err() {
                        return;
                    }
                }
            });
            Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
        }
    }

    async fn until(what: &str, mut check: impl FnMut() -> bool, wake: &Notify) {
        tokio::time::timeout(Duration::from_secs(20), async {
            while !check() {
                // Woken by the hub on every report; the short timeout covers acks, which
                // only the store sees.
                let _ = tokio::time::timeout(Duration::from_millis(20), wake.notified()).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delivers_the_outbox_and_drops_only_acknowledged_reports() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("agent.redb"), 100).unwrap();
        for reason in ["one", "two", "three"] {
            store.record_rejection(1, reason).unwrap();
        }
        let hub = Hub::default();
        hub.drop_once.lock().unwrap().insert(2);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(
            Server::builder()
                .add_service(AgentServer::new(hub.clone()))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stop.clone().cancelled_owned(),
                ),
        );
        let wake = Arc::new(Notify::new());
        let reporter = Reporter {
            hub: HubHandle::fixed(
                Endpoint::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect_lazy(),
            ),
            store: store.clone(),
            wake: Arc::clone(&wake),
        };
        let task = tokio::spawn(reporter.run(stop.clone()));
        let streams = || hub.streams.lock().unwrap().clone();

        // The first stream ends at seq 2, unacknowledged; 1 was acknowledged, so the next
        // stream resends 2 and 3 only.
        until(
            "a second stream",
            || streams().len() == 2 && streams()[1].len() == 2,
            &hub.received,
        )
        .await;
        assert_eq!(streams()[0][..2], [1, 2]);
        assert_eq!(streams()[1], [2, 3]);
        until(
            "every ack stored",
            || store.outbox_after(0).unwrap().is_empty(),
            &hub.received,
        )
        .await;

        // A new report wakes the reporter and goes out on the open stream.
        let seq = store.record_rejection(2, "four").unwrap();
        wake.notify_one();
        until("the new report", || streams()[1].len() == 3, &hub.received).await;
        assert_eq!(streams()[1][2], seq);
        until(
            "its ack",
            || store.outbox_after(0).unwrap().is_empty(),
            &hub.received,
        )
        .await;
        assert_eq!(
            streams().len(),
            2,
            "no reconnect while the stream is healthy"
        );

        stop.cancel();
        task.await.unwrap().unwrap();
        server.await.unwrap().unwrap();
    }
}
