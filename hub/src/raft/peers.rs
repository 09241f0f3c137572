//! What replicas ask of each other beyond openraft's own RPCs, on the same mTLS peer channel:
//! a follower's store write proposed by the leader ([`propose_on_leader`]), a change of the replica
//! set ([`change_membership`]), a replica's own view of its Raft ([`ReplicaView`]) for `flotilla hub
//! status`, and agents' last contact with a follower ([`Contacts`]) for the leader's offline rule.
//!
//! Calls only the leader can take answer [`LeaderAnswer::NotLeader`] with the leader the callee
//! knows; [`PeerDialer::on_leader`] follows that hint a few hops, waiting briefly while no leader
//! is elected. Every type here travels as JSON inside the proto envelopes of `replication.proto`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::replication_client::ReplicationClient;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft, ServerState};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request};

use super::network::{MAX_MESSAGE_BYTES, ReplicaTls};
use super::{Applied, Proposal, ReplicaId, TypeConfig};

/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How many times a leader-only call follows a "not the leader" answer before giving up.
const LEADER_HOPS: usize = 5;

/// How long a leader-only call waits between tries while no leader is known.
const NO_LEADER_PAUSE: Duration = Duration::from_millis(300);

/// When agents last reached each replica, unix seconds by cluster id: the leader's rollouts count a
/// cluster offline only if no replica heard from it.
pub type ContactBook = Arc<Mutex<HashMap<String, i64>>>;

/// Merges `entries` into `book`, keeping the newest contact per cluster.
pub fn merge_contacts(book: &ContactBook, entries: &[(String, i64)]) {
    let mut book = book.lock().unwrap_or_else(|e| e.into_inner());
    for (cluster, at) in entries {
        let held = book.entry(cluster.clone()).or_insert(*at);
        *held = (*held).max(*at);
    }
}

/// A change of the replica set, asked of the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "change")]
pub enum MembershipChange {
    /// Adds replica `id`, reached at `address` on its peer listener: a learner first, a voter once
    /// its log caught up with the leader's.
    Add {
        /// The replica's id.
        id: ReplicaId,
        /// Its peer address (`replication.advertise`).
        address: String,
    },
    /// Removes replica `id` from the voters and the replica set.
    Remove {
        /// The replica's id.
        id: ReplicaId,
    },
}

/// The replica set: voters and learners with their peer addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Members {
    /// Voting replicas.
    pub voters: BTreeMap<ReplicaId, String>,
    /// Replicas that receive the log but do not vote (being added).
    pub learners: BTreeMap<ReplicaId, String>,
}

impl Members {
    /// The members in `raft`'s current membership.
    pub fn of(raft: &Raft<TypeConfig>) -> Self {
        Self::from_metrics(&raft.metrics().borrow())
    }

    fn from_metrics(m: &openraft::RaftMetrics<ReplicaId, BasicNode>) -> Self {
        let membership = m.membership_config.membership();
        let voters: BTreeSet<ReplicaId> = membership.voter_ids().collect();
        let mut members = Members::default();
        for (id, node) in membership.nodes() {
            let side = if voters.contains(id) {
                &mut members.voters
            } else {
                &mut members.learners
            };
            side.insert(*id, node.addr.clone());
        }
        members
    }

    /// Whether `id` is a voter or a learner.
    pub fn contains(&self, id: ReplicaId) -> bool {
        self.voters.contains_key(&id) || self.learners.contains_key(&id)
    }
}

/// One replica's own view of its Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaView {
    /// Its id.
    pub id: ReplicaId,
    /// leader, follower, learner, candidate or stopping.
    pub role: String,
    /// Its current term.
    pub term: u64,
    /// The leader it knows.
    pub leader: Option<ReplicaId>,
    /// The index of its last log entry.
    pub last_log_index: u64,
    /// The index of the last entry its store applied.
    pub applied_index: u64,
    /// The replica set it knows.
    pub members: Members,
    /// On the leader: the highest log index known to be on each replica.
    pub matched: BTreeMap<ReplicaId, u64>,
    /// On the leader: milliseconds since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
    /// Milliseconds since each other replica last answered this one's Raft RPCs (a leader sends
    /// heartbeats; a follower only calls others while it campaigns).
    pub heard_millis: BTreeMap<ReplicaId, u64>,
}

impl ReplicaView {
    /// What `raft` reports of itself now, with when it last `heard` from the others.
    pub fn of(raft: &Raft<TypeConfig>, heard: &super::network::Heard) -> Self {
        let heard_millis = heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, at)| (*id, at.elapsed().as_millis() as u64))
            .collect();
        let m = raft.metrics().borrow().clone();
        let members = Members::from_metrics(&m);
        let role = match m.state {
            ServerState::Leader => "leader",
            ServerState::Candidate => "candidate",
            ServerState::Shutdown => "stopping",
            ServerState::Follower | ServerState::Learner if members.voters.contains_key(&m.id) => {
                "follower"
            }
            ServerState::Follower | ServerState::Learner => "learner",
        };
        let matched = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, log)| (*id, log.map(|l| l.index).unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        ReplicaView {
            id: m.id,
            role: role.to_string(),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            members,
            matched,
            millis_since_quorum_ack: m.millis_since_quorum_ack,
            heard_millis,
        }
    }
}

/// Agents' last contact with the replica that sends it (unix seconds by cluster id).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contacts {
    /// Cluster id and unix seconds.
    pub entries: Vec<(String, i64)>,
}

/// A proposal's answer from the leader: where it went in the log and what applying it answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Proposed {
    /// The log index of the entry.
    pub index: u64,
    /// The state machine's answer.
    pub applied: Applied,
}

/// The answer of a call only the leader takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "answer", content = "value")]
pub enum LeaderAnswer<T> {
    /// Done.
    Done(T),
    /// The callee does not lead; the leader it knows, if any.
    NotLeader {
        /// Its id.
        leader: Option<ReplicaId>,
        /// Its peer address.
        address: Option<String>,
    },
    /// The leader tried and failed; a sentence saying why.
    Failed(String),
}

/// The other replica `raft` knows as the leader, and its peer address when the membership has it;
/// `None` while no leader is known or this replica leads.
pub fn other_leader(raft: &Raft<TypeConfig>) -> Option<(ReplicaId, Option<String>)> {
    let m = raft.metrics();
    let m = m.borrow();
    let leader = m.current_leader.filter(|l| *l != m.id)?;
    let address = m
        .membership_config
        .membership()
        .get_node(&leader)
        .map(|n| n.addr.clone());
    Some((leader, address))
}

fn not_leader<T>(raft: &Raft<TypeConfig>) -> LeaderAnswer<T> {
    let (leader, address) = match other_leader(raft) {
        Some((l, a)) => (Some(l), a),
        None => (None, None),
    };
    LeaderAnswer::NotLeader { leader, address }
}

fn write_answer<T>(
    raft: &Raft<TypeConfig>,
    error: RaftError<ReplicaId, ClientWriteError<ReplicaId, BasicNode>>,
    what: &str,
) -> LeaderAnswer<T> {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => not_leader(raft),
        other => LeaderAnswer::Failed(format!("{what}: {other}")),
    }
}

/// Proposes a store command's bytes, unchanged, if `raft` leads; answers once applied.
pub async fn propose_here(raft: &Raft<TypeConfig>, bytes: Vec<u8>) -> LeaderAnswer<Proposed> {
    match raft.client_write(Proposal(bytes)).await {
        Ok(written) => LeaderAnswer::Done(Proposed {
            index: written.log_id.index,
            applied: written.data,
        }),
        Err(e) => write_answer(raft, e, "proposing a command"),
    }
}

/// Changes the replica set if `raft` leads. Adding waits (up to `catch_up`) until the learner holds
/// the leader's log, then makes it a voter; adding a member again at the same address is done
/// already, at another address is refused. Removing the last voter is refused.
pub async fn change_membership(
    raft: &Raft<TypeConfig>,
    change: MembershipChange,
    catch_up: Duration,
) -> LeaderAnswer<Members> {
    if raft.metrics().borrow().state != ServerState::Leader {
        return not_leader(raft);
    }
    let members = Members::of(raft);
    match change {
        MembershipChange::Add { id, address } => {
            if let Some(held) = members.voters.get(&id) {
                return if *held == address {
                    LeaderAnswer::Done(members)
                } else {
                    LeaderAnswer::Failed(format!(
                        "replica {id} is already a voter at {held}; remove it (flotilla hub remove-replica {id}) before adding it at {address}"
                    ))
                };
            }
            if let Some((other, _)) = members
                .voters
                .iter()
                .chain(members.learners.iter())
                .find(|(other, at)| **other != id && **at == address)
            {
                return LeaderAnswer::Failed(format!(
                    "{address} is the address of replica {other}, not of replica {id}"
                ));
            }
            let added = tokio::time::timeout(
                catch_up,
                raft.add_learner(id, BasicNode::new(address.clone()), true),
            )
            .await;
            match added {
                Err(_) => {
                    return LeaderAnswer::Failed(format!(
                        "replica {id} at {address} is a learner now but did not catch up with the leader's log within {catch_up:?}; it stays a learner (check that the leader can reach {address}), and adding it again makes it a voter once it caught up"
                    ));
                }
                Ok(Err(e)) => return write_answer(raft, e, &format!("adding replica {id}")),
                Ok(Ok(_)) => {}
            }
            let voters = BTreeSet::from([id]);
            match raft
                .change_membership(ChangeMembers::AddVoterIds(voters), false)
                .await
            {
                Ok(_) => LeaderAnswer::Done(Members::of(raft)),
                Err(e) => write_answer(raft, e, &format!("making replica {id} a voter")),
            }
        }
        MembershipChange::Remove { id } => {
            if !members.contains(id) {
                return LeaderAnswer::Failed(format!(
                    "replica {id} is not a member; the members are {}",
                    describe(&members)
                ));
            }
            if members.voters.len() == 1 && members.voters.contains_key(&id) {
                return LeaderAnswer::Failed(format!(
                    "replica {id} is the only voter; a hub cannot remove its last replica"
                ));
            }
            let change = if members.voters.contains_key(&id) {
                ChangeMembers::RemoveVoters(BTreeSet::from([id]))
            } else {
                ChangeMembers::RemoveNodes(BTreeSet::from([id]))
            };
            match raft.change_membership(change, false).await {
                Ok(_) => LeaderAnswer::Done(Members::of(raft)),
                Err(e) => write_answer(raft, e, &format!("removing replica {id}")),
            }
        }
    }
}

/// "1 at a:1, 2 at b:2 (voters); 3 at c:3 (learner)".
pub fn describe(members: &Members) -> String {
    let list = |side: &BTreeMap<ReplicaId, String>| {
        side.iter()
            .map(|(id, at)| format!("{id} at {at}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if members.learners.is_empty() {
        format!("{} (voters)", list(&members.voters))
    } else {
        format!(
            "{} (voters); {} (learners)",
            list(&members.voters),
            list(&members.learners)
        )
    }
}

/// Why a call to another replica failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerCallError {
    /// The replica could not be reached or did not answer in time.
    #[error("replica at {address} did not answer: {detail}")]
    Unreachable {
        /// Its peer address.
        address: String,
        /// What happened.
        detail: String,
    },
    /// The replica answered with an error.
    #[error("replica at {address} refused the call: {detail}")]
    Refused {
        /// Its peer address.
        address: String,
        /// Its message.
        detail: String,
    },
    /// No leader answered within the hops and waits allowed.
    #[error("no replica leads the hub now ({0}); try again once a leader is elected")]
    NoLeader(String),
    /// The leader tried and failed.
    #[error("{0}")]
    Failed(String),
}

/// Dials other replicas on the peer channel as this replica, one cached channel per address.
#[derive(Clone)]
pub struct PeerDialer {
    tls: ClientTlsConfig,
    clients: Arc<Mutex<HashMap<String, ReplicationClient<Channel>>>>,
    source: Option<std::net::IpAddr>,
}

impl std::fmt::Debug for PeerDialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerDialer").finish_non_exhaustive()
    }
}

impl PeerDialer {
    /// A dialer presenting `tls`'s replica certificate and trusting only the hub CA.
    pub fn new(tls: &ReplicaTls) -> Self {
        PeerDialer {
            tls: ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&tls.ca_pem))
                .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem)),
            clients: Arc::default(),
            source: None,
        }
    }

    /// Dials from `source`, as [`super::network::ReplicaNetwork::with_source`].
    pub fn with_source(mut self, source: Option<std::net::IpAddr>) -> Self {
        self.source = source;
        self
    }

    fn client(&self, address: &str) -> Result<ReplicationClient<Channel>, PeerCallError> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(address) {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(format!("https://{address}"))
            .and_then(|e| e.tls_config(self.tls.clone()))
            .map_err(|e| PeerCallError::Unreachable {
                address: address.to_string(),
                detail: format!("not a usable peer address: {e}"),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .local_address(self.source)
            .connect_lazy();
        let client = ReplicationClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        clients.insert(address.to_string(), client.clone());
        Ok(client)
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        address: &str,
        message: &Req,
        timeout: Duration,
        rpc: Rpc,
    ) -> Result<Resp, PeerCallError> {
        let mut client = self.client(address)?;
        let json = serde_json::to_vec(message).expect("peer messages always serialize");
        let mut request = Request::new(pb::RaftRequest { json });
        request.set_timeout(timeout);
        let call = async {
            match rpc {
                Rpc::Propose => client.propose(request).await,
                Rpc::ChangeMembership => client.change_membership(request).await,
                Rpc::Status => client.status(request).await,
                Rpc::Contacts => client.contacts(request).await,
            }
        };
        let unreachable = |detail: String| PeerCallError::Unreachable {
            address: address.to_string(),
            detail,
        };
        let reply = match tokio::time::timeout(timeout, call).await {
            Err(_) => return Err(unreachable(format!("no answer within {timeout:?}"))),
            Ok(Err(s)) if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded) => {
                return Err(unreachable(s.message().to_string()));
            }
            Ok(Err(s)) => {
                return Err(PeerCallError::Refused {
                    address: address.to_string(),
                    detail: s.message().to_string(),
                });
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        serde_json::from_slice(&reply.json).map_err(|e| PeerCallError::Refused {
            address: address.to_string(),
            detail: format!("its answer does not decode: {e}"),
        })
    }

    /// The view of the replica at `address`.
    pub async fn view(
        &self,
        address: &str,
        timeout: Duration,
    ) -> Result<ReplicaView, PeerCallError> {
        self.call(address, &(), timeout, Rpc::Status).await
    }

    /// Sends agents' contacts with this replica to the replica at `address`.
    pub async fn send_contacts(
        &self,
        address: &str,
        contacts: &Contacts,
        timeout: Duration,
    ) -> Result<(), PeerCallError> {
        self.call(address, contacts, timeout, Rpc::Contacts).await
    }

    /// Proposes a store command's bytes on the leader, starting from what `raft` knows of it.
    pub async fn propose_on_leader(
        &self,
        raft: &Raft<TypeConfig>,
        bytes: &[u8],
        timeout: Duration,
    ) -> Result<Proposed, PeerCallError> {
        let proposal = Proposal(bytes.to_vec());
        self.on_leader(raft, timeout, Rpc::Propose, &proposal).await
    }

    /// Asks the leader, found from what `raft` knows, to change the replica set.
    pub async fn change_membership_on_leader(
        &self,
        raft: &Raft<TypeConfig>,
        change: &MembershipChange,
        timeout: Duration,
    ) -> Result<Members, PeerCallError> {
        self.on_leader(raft, timeout, Rpc::ChangeMembership, change)
            .await
    }

    /// Asks the replica at `address` to change the replica set, following it to the leader.
    pub async fn change_membership_via(
        &self,
        address: &str,
        change: &MembershipChange,
        timeout: Duration,
    ) -> Result<Members, PeerCallError> {
        self.follow_leader(address.to_string(), timeout, Rpc::ChangeMembership, change)
            .await
    }

    /// Runs a leader-only call on the leader `raft` knows, following hints and waiting out an
    /// election within the hop limit.
    async fn on_leader<Req: Serialize, T: DeserializeOwned>(
        &self,
        raft: &Raft<TypeConfig>,
        timeout: Duration,
        rpc: Rpc,
        message: &Req,
    ) -> Result<T, PeerCallError> {
        let mut last = String::from("no leader is known");
        for _ in 0..LEADER_HOPS {
            match other_leader(raft) {
                Some((_, Some(address))) => {
                    return self.follow_leader(address, timeout, rpc, message).await;
                }
                _ => {
                    last = "no leader is elected".into();
                    tokio::time::sleep(NO_LEADER_PAUSE).await;
                }
            }
        }
        Err(PeerCallError::NoLeader(last))
    }

    async fn follow_leader<Req: Serialize, T: DeserializeOwned>(
        &self,
        mut address: String,
        timeout: Duration,
        rpc: Rpc,
        message: &Req,
    ) -> Result<T, PeerCallError> {
        let mut last = String::new();
        for _ in 0..LEADER_HOPS {
            let answer: LeaderAnswer<T> = self.call(&address, message, timeout, rpc).await?;
            match answer {
                LeaderAnswer::Done(value) => return Ok(value),
                LeaderAnswer::Failed(why) => return Err(PeerCallError::Failed(why)),
                LeaderAnswer::NotLeader {
                    address: Some(next),
                    ..
                } => {
                    last = format!("{address} named {next} as the leader");
                    address = next;
                }
                LeaderAnswer::NotLeader { address: None, .. } => {
                    last = format!("{address} knows no leader");
                    tokio::time::sleep(NO_LEADER_PAUSE).await;
                }
            }
        }
        Err(PeerCallError::NoLeader(last))
    }
}

/// The hub's own peer RPCs, for [`PeerDialer::call`].
#[derive(Debug, Clone, Copy)]
enum Rpc {
    Propose,
    ChangeMembership,
    Status,
    Contacts,
}

/// The JSON reply of a peer call; `LeaderAnswer` already carries refusals.
pub(super) fn encode_reply<T: Serialize>(value: &T) -> pb::RaftReply {
    pb::RaftReply {
        json: serde_json::to_vec(value).expect("peer answers always serialize"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contacts_merge_keeps_the_newest() {
        let book: ContactBook = Arc::default();
        merge_contacts(&book, &[("a".into(), 10), ("b".into(), 5)]);
        merge_contacts(&book, &[("a".into(), 7), ("b".into(), 9)]);
        let book = book.lock().unwrap();
        assert_eq!(book["a"], 10);
        assert_eq!(book["b"], 9);
    }

    #[test]
    fn members_describe_voters_and_learners() {
        let mut m = Members::default();
        m.voters.insert(1, "a:1".into());
        m.voters.insert(2, "b:2".into());
        assert_eq!(describe(&m), "1 at a:1, 2 at b:2 (voters)");
        m.learners.insert(3, "c:3".into());
        assert_eq!(
            describe(&m),
            "1 at a:1, 2 at b:2 (voters); 3 at c:3 (learners)"
        );
        assert!(m.contains(2) && !m.contains(4));
    }

    #[test]
    fn leader_answers_round_trip_as_json() {
        let answers: Vec<LeaderAnswer<Members>> = vec![
            LeaderAnswer::Done(Members::default()),
            LeaderAnswer::NotLeader {
                leader: Some(2),
                address: Some("b:2".into()),
            },
            LeaderAnswer::Failed("no".into()),
        ];
        for a in answers {
            let json = serde_json::to_vec(&a).unwrap();
            assert_eq!(
                serde_json::from_slice::<LeaderAnswer<Members>>(&json).unwrap(),
                a
            );
        }
    }
}
