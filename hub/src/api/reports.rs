//! Status reports are the hub's hot write path: every agent reports after every apply and on every
//! change of health. Each report must be committed before it is acknowledged (invariant 5), and a
//! commit is a Raft log entry with an fsync on a majority of replicas. [`ReportBatcher`] is the one
//! task that writes reports: it commits whatever arrived while the previous batch was being
//! committed as one [`Command::RecordReports`] entry (group commit), so an idle hub adds no delay
//! and a busy one pays one fsync for many reports.
//!
//! [`Command::RecordReports`]: crate::store::Command::RecordReports

use flotilla_common::status::StatusReport;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::store::{HubStore, RecordedReport, ReportEntry, StoreError};

/// Most reports in one batch.
pub const MAX_BATCH_REPORTS: usize = 512;

/// Most bytes of reports (as JSON) in one batch, well inside the peer channel's message limit once
/// the entry is encoded for replication.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Reports waiting for the batcher; beyond it, report streams wait (the agents' outboxes hold them).
const QUEUE: usize = 4096;

type Answer = oneshot::Sender<Result<Option<RecordedReport>, StoreError>>;

struct Pending {
    entry: ReportEntry,
    bytes: usize,
    answer: Answer,
}

/// Sends reports to the batching task.
#[derive(Clone)]
pub struct ReportBatcher {
    queue: mpsc::Sender<Pending>,
}

impl ReportBatcher {
    /// The batcher and its task, which writes through `store` until `shutdown`.
    pub fn new(
        store: HubStore,
        shutdown: CancellationToken,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (queue, inbox) = mpsc::channel(QUEUE);
        (ReportBatcher { queue }, run(store, inbox, shutdown))
    }

    /// Stores `report` in the next batch and answers once that batch is committed and applied.
    pub async fn record(
        &self,
        cluster_id: String,
        report: StatusReport,
        received_at: i64,
    ) -> Result<Option<RecordedReport>, StoreError> {
        let bytes = serde_json::to_vec(&report).map(|b| b.len()).unwrap_or(0);
        let (answer, answered) = oneshot::channel();
        let pending = Pending {
            entry: ReportEntry {
                cluster_id,
                report,
                received_at,
            },
            bytes,
            answer,
        };
        self.queue
            .send(pending)
            .await
            .map_err(|_| StoreError::Stopped)?;
        answered.await.map_err(|_| StoreError::Stopped)?
    }
}

/// Takes the first waiting report, then every other one already queued, up to the bounds.
fn take_batch(
    first: Pending,
    inbox: &mut mpsc::Receiver<Pending>,
    held: &mut Option<Pending>,
) -> Vec<Pending> {
    let mut bytes = first.bytes;
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH_REPORTS {
        let Ok(next) = inbox.try_recv() else { break };
        if bytes + next.bytes > MAX_BATCH_BYTES {
            *held = Some(next);
            break;
        }
        bytes += next.bytes;
        batch.push(next);
    }
    batch
}

async fn run(store: HubStore, mut inbox: mpsc::Receiver<Pending>, shutdown: CancellationToken) {
    let mut held: Option<Pending> = None;
    loop {
        let first = match held.take() {
            Some(p) => p,
            None => tokio::select! {
                _ = shutdown.cancelled() => return,
                next = inbox.recv() => match next {
                    Some(p) => p,
                    None => return,
                },
            },
        };
        let batch = take_batch(first, &mut inbox, &mut held);
        let (entries, answers): (Vec<ReportEntry>, Vec<Answer>) =
            batch.into_iter().map(|p| (p.entry, p.answer)).unzip();
        let writer = store.clone();
        // A write proposes through Raft and waits for it: off the async workers.
        let written = tokio::task::spawn_blocking(move || writer.record_reports(entries)).await;
        match written {
            Ok(Ok(recorded)) => {
                for (answer, r) in answers.into_iter().zip(recorded) {
                    let _ = answer.send(Ok(r));
                }
            }
            Ok(Err(e)) => {
                // Each stream answers its agent with the error; the agent resends from its outbox.
                for answer in answers {
                    let _ = answer.send(Err(e.clone_for_caller()));
                }
            }
            Err(join) => {
                for answer in answers {
                    let _ = answer.send(Err(StoreError::Replication(format!(
                        "the report batch's write failed: {join}"
                    ))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(
        bytes: usize,
    ) -> (
        Pending,
        oneshot::Receiver<Result<Option<RecordedReport>, StoreError>>,
    ) {
        let (answer, rx) = oneshot::channel();
        (
            Pending {
                entry: ReportEntry {
                    cluster_id: "c".into(),
                    report: StatusReport {
                        seq: 1,
                        observed_at: 0,
                        applied_version: 0,
                        apps: Vec::new(),
                        rejection: None,
                    },
                    received_at: 0,
                },
                bytes,
                answer,
            },
            rx,
        )
    }

    #[tokio::test]
    async fn a_batch_takes_what_is_queued_within_the_bounds() {
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let mut keep = Vec::new();
        for _ in 0..(MAX_BATCH_REPORTS + 10) {
            let (p, r) = pending(10);
            keep.push(r);
            tx.send(p).await.unwrap();
        }
        let mut held = None;
        let first = rx.recv().await.unwrap();
        let batch = take_batch(first, &mut rx, &mut held);
        assert_eq!(batch.len(), MAX_BATCH_REPORTS);
        assert!(held.is_none());
        let first = rx.recv().await.unwrap();
        assert_eq!(take_batch(first, &mut rx, &mut held).len(), 10);

        // Bytes bound: the report that would cross it waits for the next batch.
        for _ in 0..3 {
            let (p, r) = pending(MAX_BATCH_BYTES / 2);
            keep.push(r);
            tx.send(p).await.unwrap();
        }
        let first = rx.recv().await.unwrap();
        assert_eq!(take_batch(first, &mut rx, &mut held).len(), 2);
        assert!(held.is_some());
    }
}
