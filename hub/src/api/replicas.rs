//! `Admin.AddReplica`, `RemoveReplica` and `HubStatus`: the replica set, changed through the leader
//! (any replica takes the call there over the peer channel) and seen from every replica.

use std::time::Duration;

use flotilla_proto::v1 as pb;
use tonic::Status;

use super::ApiState;
use crate::raft::ReplicaId;
use crate::raft::network::CATCH_UP_TIMEOUT;
use crate::raft::peers::{
    self, LeaderAnswer, Members, MembershipChange, PeerCallError, ReplicaView,
};

/// How long the replica to add may take to say who it is.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `HubStatus` waits for each other replica's view.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

fn members_message(members: &Members, added: ReplicaId) -> pb::ReplicaSet {
    let side = |m: &std::collections::BTreeMap<ReplicaId, String>, voter: bool| {
        m.iter()
            .map(move |(id, address)| pb::ReplicaMember {
                id: *id,
                address: address.clone(),
                voter,
            })
            .collect::<Vec<_>>()
    };
    let mut list = side(&members.voters, true);
    list.extend(side(&members.learners, false));
    list.sort_by_key(|m| m.id);
    pb::ReplicaSet {
        members: list,
        added,
    }
}

fn call_error(e: PeerCallError) -> Status {
    match e {
        PeerCallError::Failed(why) => Status::failed_precondition(why),
        PeerCallError::Refused { .. } => Status::failed_precondition(e.to_string()),
        PeerCallError::Unreachable { .. } | PeerCallError::NoLeader(_) => {
            Status::unavailable(e.to_string())
        }
    }
}

/// Runs `change` on the leader: here if this replica leads, else on the leader over the peer channel
/// (also when this replica was deposed meanwhile).
async fn change(state: &ApiState, change: MembershipChange) -> Result<Members, Status> {
    let raft = &state.replica.raft;
    if raft.metrics().borrow().state == openraft::ServerState::Leader {
        match peers::change_membership(raft, change.clone(), CATCH_UP_TIMEOUT).await {
            LeaderAnswer::Done(members) => return Ok(members),
            LeaderAnswer::Failed(why) => return Err(Status::failed_precondition(why)),
            LeaderAnswer::NotLeader { .. } => {}
        }
    }
    state
        .replica
        .dialer
        .change_membership_on_leader(raft, &change, CATCH_UP_TIMEOUT + PROBE_TIMEOUT)
        .await
        .map_err(call_error)
}

fn valid_address(address: &str) -> Result<(), Status> {
    let ok = address
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "replica address {address:?} is not HOST:PORT (the new replica's replication.advertise)"
        )))
    }
}

/// Adds the replica at `address`: asks it who it is, refuses one that leads a hub of its own, then
/// has the leader add it as a learner and make it a voter once caught up.
pub async fn add(state: &ApiState, address: &str) -> Result<pb::ReplicaSet, Status> {
    valid_address(address)?;
    let view = state
        .replica
        .dialer
        .view(address, PROBE_TIMEOUT)
        .await
        .map_err(|e| {
            Status::unavailable(format!(
                "cannot reach the replica to add: {e} (is it running with replication.listen reachable at {address}?)"
            ))
        })?;
    let ours = Members::of(&state.replica.raft);
    if !ours.contains(view.id) && !view.members.voters.is_empty() {
        return Err(Status::failed_precondition(format!(
            "the replica at {address} (replica {}) already belongs to a hub of its own, with voters {}; a replica to add must be made by `flotilla-hub join` and not yet be a member anywhere",
            view.id,
            peers::describe(&view.members)
        )));
    }
    let members = change(
        state,
        MembershipChange::Add {
            id: view.id,
            address: address.to_string(),
        },
    )
    .await?;
    Ok(members_message(&members, view.id))
}

/// Removes replica `id`.
pub async fn remove(state: &ApiState, id: ReplicaId) -> Result<pb::ReplicaSet, Status> {
    let members = change(state, MembershipChange::Remove { id }).await?;
    Ok(members_message(&members, 0))
}

/// Every member as this replica knows the set, each with its own view where it answers.
pub async fn status(state: &ApiState) -> pb::HubStatusResponse {
    let raft = &state.replica.raft;
    let local = ReplicaView::of(raft, &state.replica.heard);
    let mut all: Vec<(ReplicaId, String, bool)> = local
        .members
        .voters
        .iter()
        .map(|(id, a)| (*id, a.clone(), true))
        .chain(
            local
                .members
                .learners
                .iter()
                .map(|(id, a)| (*id, a.clone(), false)),
        )
        .collect();
    all.sort_by_key(|(id, _, _)| *id);
    let mut asks = tokio::task::JoinSet::new();
    for (i, (id, address, _)) in all.iter().enumerate() {
        let dialer = state.replica.dialer.clone();
        let local = local.clone();
        let (id, address) = (*id, address.clone());
        asks.spawn(async move {
            let view = if id == local.id {
                Ok(local)
            } else {
                dialer.view(&address, STATUS_TIMEOUT).await
            };
            (i, view)
        });
    }
    let mut views: Vec<Result<ReplicaView, PeerCallError>> = all
        .iter()
        .map(|(_, address, _)| {
            Err(PeerCallError::Unreachable {
                address: address.clone(),
                detail: "not asked".into(),
            })
        })
        .collect();
    while let Some(done) = asks.join_next().await {
        if let Ok((i, view)) = done {
            views[i] = view;
        }
    }
    // The leader's view, with the highest term among those claiming it.
    let leader = views
        .iter()
        .filter_map(|v| v.as_ref().ok())
        .filter(|v| v.role == "leader")
        .max_by_key(|v| v.term)
        .cloned();
    let replicas = all
        .into_iter()
        .zip(views)
        .map(|((id, address, voter), view)| {
            let heard = |v: &ReplicaView| v.heard_millis.get(&id).map(|m| *m as i64);
            let last_contact_millis = if id == local.id {
                0
            } else {
                leader
                    .as_ref()
                    .filter(|l| l.id != id)
                    .and_then(heard)
                    .or_else(|| heard(&local))
                    .unwrap_or(-1)
            };
            match view {
                Ok(v) => pb::ReplicaStatus {
                    id,
                    address,
                    voter,
                    role: v.role.clone(),
                    term: v.term,
                    last_log_index: v.last_log_index,
                    applied_index: v.applied_index,
                    lag: leader
                        .as_ref()
                        .map(|l| l.last_log_index.saturating_sub(v.applied_index))
                        .unwrap_or(0),
                    last_contact_millis,
                    error: String::new(),
                    leader: v.leader.unwrap_or(0),
                },
                Err(e) => pb::ReplicaStatus {
                    id,
                    address,
                    voter,
                    role: "unreachable".into(),
                    lag: leader
                        .as_ref()
                        .map(|l| {
                            l.last_log_index
                                .saturating_sub(l.matched.get(&id).copied().unwrap_or(0))
                        })
                        .unwrap_or(0),
                    last_contact_millis,
                    error: e.to_string(),
                    ..Default::default()
                },
            }
        })
        .collect();
    pb::HubStatusResponse {
        answered_by: local.id,
        replicas,
    }
}
