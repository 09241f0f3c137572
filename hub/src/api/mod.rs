//! The hub's gRPC services (DESIGN.md §6). Proto types stay in this module;
//! `wire` converts them to domain types once.

mod admin;
mod agent;
mod limits;
mod plan;
mod registration;
mod replicas;
mod reports;
mod rollouts;
mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use flotilla_proto::v1::admin_server::AdminServer;
use flotilla_proto::v1::agent_server::AgentServer;
use flotilla_proto::v1::registration_server::RegistrationServer;
use tonic::{Request, Status};

use crate::controller::ControllerHandle;
use crate::pki::{CertificateAuthority, PeerIdentity, peer_identity};
use crate::store::HubStore;

pub(crate) use admin::last_error;
pub use limits::ApiLimits;
pub use plan::{MAX_PLANS, PlanEnv};
pub use reports::ReportBatcher;

/// Shared state of the gRPC services.
#[derive(Clone)]
pub struct ApiState {
    /// The store.
    pub store: HubStore,
    /// Notification targets of hub.yaml (`flotilla status` shows their delivery).
    pub notification_targets: Arc<Vec<crate::config::TargetConfig>>,
    /// The CA (signs cluster certificates at registration).
    pub ca: Arc<CertificateAuthority>,
    /// Ed25519 public key agents pin.
    pub signing_public_key: [u8; 32],
    /// The controller of this replica's current term as leader; `None` while it follows.
    pub controller: LeaderSlot,
    /// This replica's Raft and its dialer for the others.
    pub replica: ReplicaHandle,
    /// Commits status reports in batches.
    pub reports: ReportBatcher,
    /// Last RPC per cluster, unix seconds (in memory: contact is frequent and
    /// loses nothing important on restart; reports carry durable timestamps).
    pub last_contact: Arc<Mutex<HashMap<String, i64>>>,
    /// Interval between Watch heartbeats.
    pub heartbeat: std::time::Duration,
    /// Configured sources, for status.
    pub sources: Arc<Vec<crate::config::SourceConfig>>,
    /// Lifetime of cluster certificates.
    pub cluster_cert_ttl: std::time::Duration,
    /// Cancelled when the hub stops: open streams end, so a graceful stop does not wait for
    /// agents to hang up.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The tasks that feed streams; the hub waits for them before it returns.
    pub tasks: tokio_util::task::TaskTracker,
    /// The event log.
    pub events: crate::events::EventLog,
    /// Per-caller limits and their counters.
    pub limits: Arc<ApiLimits>,
    /// Prometheus metrics.
    pub metrics: crate::metrics::HubMetrics,
    /// What `Admin.Plan` reads and renders with.
    pub plan: Arc<PlanEnv>,
}

/// The controller of the term this replica leads, if it leads.
pub type LeaderSlot = Arc<tokio::sync::watch::Sender<Option<ControllerHandle>>>;

/// A replica's Raft and the dialer it reaches the other replicas with.
#[derive(Clone)]
pub struct ReplicaHandle {
    /// The Raft.
    pub raft: openraft::Raft<crate::raft::TypeConfig>,
    /// Dials other replicas' peer listeners.
    pub dialer: crate::raft::peers::PeerDialer,
    /// When the other replicas last answered this one.
    pub heard: crate::raft::network::Heard,
}

/// How long a leader may go without a quorum's acknowledgement before it stops serving agents: a
/// few election timeouts, after which the majority has surely elected another.
const CUT_OFF_AFTER_MILLIS: u64 = 3000;

impl ApiState {
    /// Why this replica should not serve agents now, if it should not: it knows no leader (an
    /// election, or it is cut off from the majority), or it leads but no majority acknowledged it
    /// for a while (a partitioned leader, whose state no longer moves). Agents then move on to
    /// another replica.
    pub fn cut_off(&self) -> Option<String> {
        let metrics = self.replica.raft.metrics();
        let m = metrics.borrow();
        let voters = m.membership_config.membership().voter_ids().count();
        match m.current_leader {
            None => Some(format!(
                "hub replica {} knows no leader (an election is running, or it is cut off from the other replicas)",
                m.id
            )),
            Some(l) if l == m.id && voters > 1 => {
                // openraft reports its quorum acknowledgement only when other metrics change, so
                // count the voters that answered this leader's RPCs lately, itself included.
                let heard = self.replica.heard.lock().unwrap_or_else(|e| e.into_inner());
                let recent = m
                    .membership_config
                    .membership()
                    .voter_ids()
                    .filter(|v| {
                        *v == m.id
                            || heard.get(v).is_some_and(|at| {
                                at.elapsed()
                                    <= std::time::Duration::from_millis(CUT_OFF_AFTER_MILLIS)
                            })
                    })
                    .count();
                (recent * 2 <= voters).then(|| {
                    format!(
                        "hub replica {} leads but only {recent} of {voters} replicas answered it in the last {CUT_OFF_AFTER_MILLIS} ms; it is cut off from the majority",
                        m.id
                    )
                })
            }
            Some(_) => None,
        }
    }

    /// The running controller, or Unavailable naming the leader when this replica follows: `what`
    /// (e.g. "rollout actions") only the leader's controller takes.
    pub fn leader_controller(&self, what: &str) -> Result<ControllerHandle, Status> {
        if let Some(handle) = self.controller.borrow().clone() {
            return Ok(handle);
        }
        let id = self.replica.raft.metrics().borrow().id;
        let leader = match crate::raft::peers::other_leader(&self.replica.raft) {
            Some((l, _)) => format!("replica {l}"),
            None => "a leader, once one is elected,".to_string(),
        };
        Err(Status::unavailable(format!(
            "hub replica {id} does not lead the hub; {what} are taken by {leader}: give the CLI every hub address (--hub A,B,C or FLOTILLA_HUB) and it moves on to the next"
        )))
    }
}

/// The three services, ready to add to a tonic router.
pub fn services(
    state: ApiState,
    transport: &crate::config::TransportLimits,
) -> (
    RegistrationServer<registration::RegistrationService>,
    AgentServer<agent::AgentService>,
    AdminServer<admin::AdminService>,
) {
    (
        RegistrationServer::new(registration::RegistrationService(state.clone()))
            .max_decoding_message_size(transport.max_recv_message_bytes)
            .max_encoding_message_size(transport.max_send_message_bytes),
        AgentServer::new(agent::AgentService(state.clone()))
            .max_decoding_message_size(transport.max_recv_message_bytes)
            .max_encoding_message_size(transport.max_send_message_bytes),
        AdminServer::new(admin::AdminService(state))
            .max_decoding_message_size(transport.max_recv_message_bytes)
            .max_encoding_message_size(transport.max_send_message_bytes),
    )
}

/// The verified identity in the caller's client certificate.
pub(crate) fn caller<T>(request: &Request<T>) -> Result<PeerIdentity, Status> {
    let certs = request
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    peer_identity(leaf.as_ref()).map_err(|e| Status::permission_denied(e.to_string()))
}

fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "internal error serving a request");
    Status::internal("internal error; see the hub log")
}

/// A failed store write as the caller sees it: a replica that is not the leader, or a hub shutting
/// down, is Unavailable with the reason (the caller retries, elsewhere or later; nothing to log);
/// anything else is internal.
fn store_error(e: crate::store::StoreError) -> Status {
    use crate::store::StoreError;
    match e {
        StoreError::NotLeader { .. }
        | StoreError::Stopped
        | StoreError::Forwarding(_)
        | StoreError::NotCommitted(_)
        | StoreError::Deposed { .. } => Status::unavailable(e.to_string()),
        other => internal(other),
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::store_error;
    use crate::store::StoreError;

    #[test]
    fn a_write_a_replica_cannot_make_is_unavailable_with_the_reason() {
        let not_leader = store_error(StoreError::NotLeader {
            leader: Some(2),
            address: Some("10.0.0.2:7444".into()),
        });
        assert_eq!(not_leader.code(), Code::Unavailable);
        assert!(
            not_leader
                .message()
                .contains("not the leader; the leader is replica 2 at 10.0.0.2:7444"),
            "{not_leader:?}"
        );
        let electing = store_error(StoreError::NotLeader {
            leader: None,
            address: None,
        });
        assert!(
            electing.message().contains("no leader is elected yet"),
            "{electing:?}"
        );
        let stopping = store_error(StoreError::Stopped);
        assert_eq!(stopping.code(), Code::Unavailable);
        assert!(stopping.message().contains("shutting down"), "{stopping:?}");
        let failed = store_error(StoreError::Replication("disk full".into()));
        assert_eq!(failed.code(), Code::Internal);
        assert!(
            !failed.message().contains("disk full"),
            "details stay in the log"
        );
    }
}
