//! The replicas' peer channel: openraft's AppendEntries, Vote and InstallSnapshot over tonic
//! with mutual TLS, each end presenting a `spiffe://flotilla/replica/<id>` certificate from
//! the hub CA (DESIGN.md §6, `Peer`).
//!
//! The server side ([`ReplicationService`], [`serve_replication`]) hands each RPC to the local
//! [`Raft`] and refuses every caller that is not a replica, or that speaks for another replica
//! than its certificate names. The client side ([`ReplicaNetwork`]) is openraft's network
//! factory: one lazily connected channel per target, per-RPC deadlines from openraft's
//! [`RPCOption`], and errors sorted so openraft backs off from a peer it cannot reach.
//!
//! Messages are serde_json of openraft's own types inside a proto envelope (see
//! `proto/flotilla/v1/replication.proto` for why); snapshot data travels beside the JSON as raw
//! bytes.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::replication_client::ReplicationClient;
use flotilla_proto::v1::replication_server::{Replication, ReplicationServer};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, Raft, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server};
use tonic::{Code, Request, Response, Status};
use tracing::error;

use super::peers::{self, ContactBook, Contacts, MembershipChange, ReplicaView, encode_reply};
use super::{Proposal, ReplicaId, TypeConfig};
use crate::config::TransportLimits;
use crate::listener::{TlsSetupError, accept_tls, peer_tls_config};
use crate::pki::PeerIdentity;

/// Largest message either end of the peer channel encodes or decodes. An AppendEntries batch
/// over it is refused before sending with openraft's `PayloadTooLarge`, so openraft retries
/// with fewer entries; a single entry over it can never be replicated, so the store must keep
/// its commands well below it (JSON writes each byte of a `Proposal` as up to four).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Snapshot chunk size configured into openraft (`snapshot_max_chunk_size`): a quarter of
/// [`MAX_MESSAGE_BYTES`], leaving room for the request's JSON beside the raw chunk.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 4 * 1024 * 1024;

/// Room kept under [`MAX_MESSAGE_BYTES`] for the proto and gRPC framing around the JSON.
const FRAMING_BYTES: usize = 1024;

/// How long connecting to a peer (TCP and TLS) may take before the attempt counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How often a replica pings each peer connection, and how long it waits for the answer before
/// it closes that connection. A connection a partition left open but dead (no RST ever arrived)
/// then ends in about 3 s and the next call dials afresh; without it every call on it times out
/// and openraft, which keeps one client per follower, never reconnects.
const PEER_PING_INTERVAL: Duration = Duration::from_secs(1);
const PEER_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Sets what openraft must agree on with the peer channel: the snapshot chunk size.
pub fn with_peer_channel_limits(mut config: openraft::Config) -> openraft::Config {
    config.snapshot_max_chunk_size = SNAPSHOT_CHUNK_BYTES;
    config
}

/// A replica's TLS material: its replica certificate and key, and the hub CA, the only root
/// either end of the peer channel trusts.
#[derive(Clone)]
pub struct ReplicaTls {
    /// The replica certificate, PEM (from `CertificateAuthority::issue_replica_cert`).
    pub cert_pem: String,
    /// Its private key, PEM; secret.
    pub key_pem: String,
    /// The hub CA certificate, PEM.
    pub ca_pem: String,
}

impl fmt::Debug for ReplicaTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaTls")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .field("ca_pem", &self.ca_pem)
            .finish()
    }
}

/// The Replication gRPC service: each RPC goes to the local Raft.
pub struct ReplicationService {
    raft: Raft<TypeConfig>,
    /// Where agents' contacts with the other replicas are merged.
    contacts: ContactBook,
    /// How long adding a replica waits for it to catch up.
    catch_up: Duration,
    /// When the other replicas last answered this one.
    heard: Heard,
}

/// How long adding a replica waits for its log to catch up before it is left a learner.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

impl ReplicationService {
    /// A service answering for `raft`.
    pub fn new(raft: Raft<TypeConfig>) -> Self {
        ReplicationService {
            raft,
            contacts: ContactBook::default(),
            catch_up: CATCH_UP_TIMEOUT,
            heard: Heard::default(),
        }
    }

    /// Reports in its status when the other replicas last answered this one (the network's).
    pub fn with_heard(mut self, heard: Heard) -> Self {
        self.heard = heard;
        self
    }

    /// Merges the contacts other replicas send into `contacts` (the API's, which the leader's
    /// controller reads).
    pub fn with_contacts(mut self, contacts: ContactBook) -> Self {
        self.contacts = contacts;
        self
    }

    /// The tonic server for this service, with the peer channel's message limits.
    pub fn into_server(self) -> ReplicationServer<Self> {
        ReplicationServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// The replica id in the caller's verified certificate; any other identity is refused.
fn replica_caller<T>(request: &Request<T>) -> Result<ReplicaId, Status> {
    match crate::api::caller(request)? {
        PeerIdentity::Replica(id) => Ok(id),
        other @ (PeerIdentity::Cluster(_) | PeerIdentity::Admin(_)) => {
            Err(Status::permission_denied(format!(
                "the replication service needs a replica certificate; this one names {other}"
            )))
        }
    }
}

/// Refuses a message whose vote speaks for another replica than the certificate names, so one
/// replica's key cannot campaign or lead as another.
fn check_speaks_for_itself(caller: ReplicaId, vote: &Vote<ReplicaId>) -> Result<(), Status> {
    match vote.leader_id().voted_for() {
        Some(id) if id == caller => Ok(()),
        claimed => Err(Status::permission_denied(format!(
            "replica {caller} sent a message on behalf of {}",
            claimed.map_or_else(|| "no replica".to_string(), |id| format!("replica {id}"))
        ))),
    }
}

/// Requests up to this size are parsed on the async worker that received them.
const DECODE_INLINE_BYTES: usize = 64 * 1024;

fn decode<T: DeserializeOwned>(what: &str, json: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(json)
        .map_err(|e| Status::invalid_argument(format!("malformed {what}: {e}")))
}

/// The reply to a request the local Raft answered, an error included.
fn reply<T: Serialize, E: Serialize>(
    answer: &Result<T, E>,
) -> Result<Response<pb::RaftReply>, Status> {
    let json = serde_json::to_vec(answer).map_err(|e| {
        error!(error = %e, "encoding a Raft reply failed");
        Status::internal("encoding the Raft reply failed; see the replica's log")
    })?;
    Ok(Response::new(pb::RaftReply { json }))
}

#[tonic::async_trait]
impl Replication for ReplicationService {
    async fn append_entries(
        &self,
        request: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        let caller = replica_caller(&request)?;
        let json = request.into_inner().json;
        // A batch of entries is up to a few MiB of JSON: parsed off the async workers, which
        // serve agents meanwhile.
        let rpc: AppendEntriesRequest<TypeConfig> = if json.len() > DECODE_INLINE_BYTES {
            tokio::task::spawn_blocking(move || decode("AppendEntriesRequest", &json))
                .await
                .map_err(|e| {
                    Status::internal(format!("decoding AppendEntriesRequest failed: {e}"))
                })??
        } else {
            decode("AppendEntriesRequest", &json)?
        };
        check_speaks_for_itself(caller, &rpc.vote)?;
        reply(&self.raft.append_entries(rpc).await)
    }

    async fn vote(
        &self,
        request: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        let caller = replica_caller(&request)?;
        let rpc: VoteRequest<ReplicaId> = decode("VoteRequest", &request.get_ref().json)?;
        check_speaks_for_itself(caller, &rpc.vote)?;
        reply(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::SnapshotChunk>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        let caller = replica_caller(&request)?;
        let chunk = request.into_inner();
        let mut rpc: InstallSnapshotRequest<TypeConfig> =
            decode("InstallSnapshotRequest", &chunk.request_json)?;
        check_speaks_for_itself(caller, &rpc.vote)?;
        rpc.data = chunk.data;
        reply(&self.raft.install_snapshot(rpc).await)
    }

    async fn propose(
        &self,
        request: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        replica_caller(&request)?;
        let Proposal(bytes) = decode("proposal", &request.get_ref().json)?;
        Ok(Response::new(encode_reply(
            &peers::propose_here(&self.raft, bytes).await,
        )))
    }

    async fn change_membership(
        &self,
        request: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        let caller = replica_caller(&request)?;
        let change: MembershipChange = decode("membership change", &request.get_ref().json)?;
        tracing::info!(caller, ?change, "a replica asked to change the replica set");
        Ok(Response::new(encode_reply(
            &peers::change_membership(&self.raft, change, self.catch_up).await,
        )))
    }

    async fn status(
        &self,
        request: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        replica_caller(&request)?;
        Ok(Response::new(encode_reply(&ReplicaView::of(
            &self.raft,
            &self.heard,
        ))))
    }

    async fn contacts(
        &self,
        request: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        replica_caller(&request)?;
        let contacts: Contacts = decode("contacts", &request.get_ref().json)?;
        peers::merge_contacts(&self.contacts, &contacts.entries);
        Ok(Response::new(encode_reply(&())))
    }
}

/// Serves the Replication service for `raft` on `listener` with mutual TLS (the replica's own
/// certificate, client certificates from the hub CA required) and the hub's accept loop and
/// limits, in a task on `tracker` that ends when `shutdown` is cancelled.
pub fn serve_replication(
    listener: TcpListener,
    raft: Raft<TypeConfig>,
    tls: &ReplicaTls,
    limits: &TransportLimits,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<(), TlsSetupError> {
    serve_replication_service(
        listener,
        ReplicationService::new(raft),
        tls,
        limits,
        shutdown,
        tracker,
    )
}

/// [`serve_replication`] for a service set up by the caller.
pub fn serve_replication_service(
    listener: TcpListener,
    service: ReplicationService,
    tls: &ReplicaTls,
    limits: &TransportLimits,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Result<(), TlsSetupError> {
    let config = peer_tls_config(&tls.cert_pem, &tls.key_pem, &tls.ca_pem)?;
    let incoming = accept_tls(listener, config, limits, shutdown.clone(), tracker);
    let router = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .max_concurrent_streams(Some(limits.max_concurrent_streams))
        .timeout(limits.request_timeout)
        .add_service(service.into_server());
    tracker.spawn(async move {
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
            .await
        {
            error!(error = %e, "the replication listener stopped");
        }
    });
    Ok(())
}

/// When this replica last had an answer from each other replica (any RPC openraft made).
pub type Heard = Arc<std::sync::Mutex<std::collections::HashMap<ReplicaId, std::time::Instant>>>;

/// openraft's network factory for the peer channel: connects to other replicas as `id`.
#[derive(Clone)]
pub struct ReplicaNetwork {
    id: ReplicaId,
    tls: ClientTlsConfig,
    heard: Heard,
    source: Option<std::net::IpAddr>,
}

impl fmt::Debug for ReplicaNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaNetwork")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl ReplicaNetwork {
    /// A factory for replica `id`, presenting `tls`'s certificate and trusting only its CA.
    pub fn new(id: ReplicaId, tls: &ReplicaTls) -> Self {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&tls.ca_pem))
            .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
        ReplicaNetwork {
            id,
            tls,
            heard: Heard::default(),
            source: None,
        }
    }

    /// Dials peers from `source` (the address this replica listens for peers on, when it names
    /// one), so what the other replicas see of it is that address.
    pub fn with_source(mut self, source: Option<std::net::IpAddr>) -> Self {
        self.source = source;
        self
    }

    /// When each other replica last answered this one.
    pub fn heard(&self) -> Heard {
        self.heard.clone()
    }
}

impl RaftNetworkFactory<TypeConfig> for ReplicaNetwork {
    type Network = ReplicaConnection;

    async fn new_client(&mut self, target: ReplicaId, node: &BasicNode) -> ReplicaConnection {
        // Connecting is lazy: a peer that is down now costs nothing until openraft calls it.
        let client = Endpoint::from_shared(format!("https://{}", node.addr))
            .and_then(|e| e.tls_config(self.tls.clone()))
            .map(|e| {
                let channel = e
                    .connect_timeout(CONNECT_TIMEOUT)
                    .http2_keep_alive_interval(PEER_PING_INTERVAL)
                    .keep_alive_timeout(PEER_PING_TIMEOUT)
                    .keep_alive_while_idle(true)
                    .tcp_nodelay(true)
                    .local_address(self.source)
                    .connect_lazy();
                ReplicationClient::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES)
            })
            .map_err(|e| {
                Arc::new(PeerError(format!(
                    "replica {target}'s address {:?} is not usable: {e}",
                    node.addr
                )))
            });
        ReplicaConnection {
            from: self.id,
            target,
            node: node.clone(),
            client,
            heard: self.heard.clone(),
        }
    }
}

/// Why a call to a peer failed before or after it reached the peer's Raft.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct PeerError(String);

/// One replica's connection to another, as openraft uses it.
pub struct ReplicaConnection {
    from: ReplicaId,
    target: ReplicaId,
    node: BasicNode,
    client: Result<ReplicationClient<Channel>, Arc<PeerError>>,
    heard: Heard,
}

impl fmt::Debug for ReplicaConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaConnection")
            .field("from", &self.from)
            .field("target", &self.target)
            .field("addr", &self.node.addr)
            .finish()
    }
}

/// An RPC error before any answer from the remote Raft, whatever that RPC's remote error type.
type TransportError = RPCError<ReplicaId, BasicNode, std::convert::Infallible>;

impl ReplicaConnection {
    /// Sends one request with the RPC's deadline and decodes the remote Raft's answer.
    async fn call<Req, Resp, E, F, Fut>(
        &mut self,
        action: RPCTypes,
        ttl: Duration,
        message: Req,
        send: F,
    ) -> Result<Result<Resp, E>, TransportError>
    where
        Resp: DeserializeOwned,
        E: DeserializeOwned,
        F: FnOnce(ReplicationClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<pb::RaftReply>, Status>>,
    {
        let client = match &self.client {
            Ok(client) => client.clone(),
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(e.as_ref()))),
        };
        let mut request = Request::new(message);
        // The peer gives up at the same deadline instead of finishing work nobody waits for.
        request.set_timeout(ttl);
        let timeout = || {
            RPCError::Timeout(Timeout {
                action,
                id: self.from,
                target: self.target,
                timeout: ttl,
            })
        };
        let answer = match tokio::time::timeout(ttl, send(client, request)).await {
            Err(_) => return Err(timeout()),
            // tonic's own deadline (`set_timeout`) ends the call as Cancelled.
            Ok(Err(status))
                if matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled) =>
            {
                return Err(timeout());
            }
            Ok(Err(status)) => return Err(self.status_error(action, &status)),
            Ok(Ok(answer)) => answer.into_inner(),
        };
        self.heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.target, std::time::Instant::now());
        serde_json::from_slice(&answer.json).map_err(|e| {
            RPCError::Network(NetworkError::new(&PeerError(format!(
                "replica {} sent a malformed {action} reply: {e}",
                self.target
            ))))
        })
    }

    /// Unavailable means the call never got through (refused, reset, TLS failed, the peer
    /// stopping): openraft should back off. Anything else is the peer refusing this message.
    fn status_error(&self, action: RPCTypes, status: &Status) -> TransportError {
        let e = PeerError(format!(
            "{action} to replica {} at {}: {}: {}",
            self.target,
            self.node.addr,
            status.code(),
            status.message()
        ));
        match status.code() {
            Code::Unavailable => RPCError::Unreachable(Unreachable::new(&e)),
            // The connection broke under the call (tonic's "transport error").
            Code::Unknown if status.message().contains("transport error") => {
                RPCError::Unreachable(Unreachable::new(&e))
            }
            // The peer's HTTP/2 connection went away under the call (a replica stopping resets
            // its streams): tonic reports h2's error as Internal.
            Code::Internal if status.message().contains("h2 protocol error") => {
                RPCError::Unreachable(Unreachable::new(&e))
            }
            _ => RPCError::Network(NetworkError::new(&e)),
        }
    }

    fn remote<E: std::error::Error>(
        &self,
        e: RaftError<ReplicaId, E>,
    ) -> RPCError<ReplicaId, BasicNode, RaftError<ReplicaId, E>> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            self.node.clone(),
            e,
        ))
    }
}

/// Carries a transport error over to an RPC's own error type.
fn widen<E: std::error::Error>(e: TransportError) -> RPCError<ReplicaId, BasicNode, E> {
    match e {
        RPCError::Timeout(e) => RPCError::Timeout(e),
        RPCError::Unreachable(e) => RPCError::Unreachable(e),
        RPCError::PayloadTooLarge(e) => RPCError::PayloadTooLarge(e),
        RPCError::Network(e) => RPCError::Network(e),
        RPCError::RemoteError(e) => match e.source {},
    }
}

fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>, NetworkError> {
    serde_json::to_vec(value)
        .map_err(|e| NetworkError::new(&PeerError(format!("encoding {what} failed: {e}"))))
}

impl RaftNetwork<TypeConfig> for ReplicaConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        AppendEntriesResponse<ReplicaId>,
        RPCError<ReplicaId, BasicNode, RaftError<ReplicaId>>,
    > {
        let json = encode("AppendEntriesRequest", &rpc).map_err(RPCError::Network)?;
        if json.len() + FRAMING_BYTES > MAX_MESSAGE_BYTES {
            let entries = rpc.entries.len() as u64;
            if entries > 1 {
                return Err(PayloadTooLarge::new_entries_hint(entries / 2).into());
            }
            return Err(RPCError::Network(NetworkError::new(&PeerError(format!(
                "a log entry of {} bytes (as JSON) is over the peer channel's limit of {MAX_MESSAGE_BYTES} bytes",
                json.len()
            )))));
        }
        // A batch that does not make it within the deadline (a follower far behind, a slow disk)
        // is retried at once at half the size (openraft's PayloadTooLarge hint), down to one
        // entry, so the follower catches up in pieces instead of timing out on the same batch for
        // ever. openraft times the whole call with the same deadline: answer a little before it.
        let entries = rpc.entries.len() as u64;
        let ttl = if entries > 1 {
            option.hard_ttl().mul_f64(0.8)
        } else {
            option.hard_ttl()
        };
        let answer: Result<_, RaftError<ReplicaId>> = match self
            .call(
                RPCTypes::AppendEntries,
                ttl,
                pb::RaftRequest { json },
                |mut c, r| async move { c.append_entries(r).await },
            )
            .await
        {
            Err(RPCError::Timeout(_)) if entries > 1 => {
                return Err(PayloadTooLarge::new_entries_hint(entries / 2).into());
            }
            other => other.map_err(widen)?,
        };
        answer.map_err(|e| self.remote(e))
    }

    async fn install_snapshot(
        &mut self,
        mut rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<ReplicaId>,
        RPCError<ReplicaId, BasicNode, RaftError<ReplicaId, InstallSnapshotError>>,
    > {
        let data = std::mem::take(&mut rpc.data);
        let request_json = encode("InstallSnapshotRequest", &rpc).map_err(RPCError::Network)?;
        if request_json.len() + data.len() + FRAMING_BYTES > MAX_MESSAGE_BYTES {
            // openraft cuts chunks by `snapshot_max_chunk_size`; see with_peer_channel_limits.
            return Err(RPCError::Network(NetworkError::new(&PeerError(format!(
                "a snapshot chunk of {} bytes is over the peer channel's limit of {MAX_MESSAGE_BYTES} bytes",
                data.len()
            )))));
        }
        let answer: Result<_, RaftError<ReplicaId, InstallSnapshotError>> = self
            .call(
                RPCTypes::InstallSnapshot,
                option.hard_ttl(),
                pb::SnapshotChunk { request_json, data },
                |mut c, r| async move { c.install_snapshot(r).await },
            )
            .await
            .map_err(widen)?;
        answer.map_err(|e| self.remote(e))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<ReplicaId>,
        option: RPCOption,
    ) -> Result<VoteResponse<ReplicaId>, RPCError<ReplicaId, BasicNode, RaftError<ReplicaId>>> {
        let json = encode("VoteRequest", &rpc).map_err(RPCError::Network)?;
        let answer: Result<_, RaftError<ReplicaId>> = self
            .call(
                RPCTypes::Vote,
                option.hard_ttl(),
                pb::RaftRequest { json },
                |mut c, r| async move { c.vote(r).await },
            )
            .await
            .map_err(widen)?;
        answer.map_err(|e| self.remote(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_must_speak_for_the_replica_that_sent_it() {
        let mine = Vote::new(3, 2);
        assert!(check_speaks_for_itself(2, &mine).is_ok());
        let err = check_speaks_for_itself(1, &mine).unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert_eq!(
            err.message(),
            "replica 1 sent a message on behalf of replica 2"
        );
    }

    #[test]
    fn unavailable_is_unreachable_and_other_refusals_are_network_errors() {
        let conn = ReplicaConnection {
            from: 1,
            target: 2,
            node: BasicNode::new("127.0.0.1:1"),
            client: Err(Arc::new(PeerError("unused".into()))),
            heard: Heard::default(),
        };
        let cases = [
            (Status::unavailable("connection refused"), "Unreachable"),
            (Status::unknown("transport error"), "Unreachable"),
            (
                Status::internal("h2 protocol error: http2 error"),
                "Unreachable",
            ),
            (Status::permission_denied("not a replica"), "Network"),
            (Status::invalid_argument("malformed"), "Network"),
            (Status::resource_exhausted("too big"), "Network"),
            (Status::internal("boom"), "Network"),
        ];
        for (status, want) in cases {
            let got = conn.status_error(RPCTypes::AppendEntries, &status);
            let kind = match &got {
                RPCError::Unreachable(_) => "Unreachable",
                RPCError::Network(_) => "Network",
                other => panic!("{status:?} became {other:?}"),
            };
            assert_eq!(kind, want, "{status:?}");
            assert!(
                got.to_string().contains("replica 2 at 127.0.0.1:1"),
                "{got}"
            );
        }
    }

    #[test]
    fn snapshot_chunks_fit_in_a_message() {
        const { assert!(SNAPSHOT_CHUNK_BYTES as usize + 64 * 1024 <= MAX_MESSAGE_BYTES) };
        let config = with_peer_channel_limits(openraft::Config::default());
        assert_eq!(config.snapshot_max_chunk_size, SNAPSHOT_CHUNK_BYTES);
        config.validate().unwrap();
    }
}
