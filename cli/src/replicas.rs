//! `flotilla hub status|add-replica|remove-replica`: the hub's replicas through the admin API.

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::admin_client::AdminClient;
use serde::Serialize;
use tonic::transport::Channel;

use crate::client::ClientError;
use crate::output::table;

/// One replica as `flotilla hub status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReplicaStatusView {
    /// Replica id.
    pub id: u64,
    /// Peer address.
    pub address: String,
    /// Whether it votes.
    pub voter: bool,
    /// leader, follower, learner, candidate, stopping or unreachable.
    pub role: String,
    /// Its Raft term.
    pub term: u64,
    /// Its last log index.
    pub last_log_index: u64,
    /// Its applied index.
    pub applied_index: u64,
    /// Entries the leader holds that it has not applied.
    pub lag: u64,
    /// Milliseconds since the answering replica last heard from it; `None` when unknown.
    pub last_contact_millis: Option<u64>,
    /// The leader it knows.
    pub leader: Option<u64>,
    /// Why it did not answer.
    pub error: String,
}

/// The hub's replicas, as one of them sees them.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HubStatusView {
    /// The replica that answered.
    pub answered_by: u64,
    /// Every member.
    pub replicas: Vec<ReplicaStatusView>,
}

/// A member of the replica set.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MemberView {
    /// Replica id.
    pub id: u64,
    /// Peer address.
    pub address: String,
    /// Whether it votes.
    pub voter: bool,
}

/// The replica set after a change.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReplicaSetView {
    /// The replica added (add-replica only).
    pub added: Option<u64>,
    /// Every member.
    pub members: Vec<MemberView>,
}

fn set_view(set: pb::ReplicaSet) -> ReplicaSetView {
    ReplicaSetView {
        added: (set.added != 0).then_some(set.added),
        members: set
            .members
            .into_iter()
            .map(|m| MemberView {
                id: m.id,
                address: m.address,
                voter: m.voter,
            })
            .collect(),
    }
}

/// `Admin.HubStatus`.
pub async fn status(client: &mut AdminClient<Channel>) -> Result<HubStatusView, ClientError> {
    let resp = client
        .hub_status(pb::HubStatusRequest {})
        .await?
        .into_inner();
    Ok(HubStatusView {
        answered_by: resp.answered_by,
        replicas: resp
            .replicas
            .into_iter()
            .map(|r| ReplicaStatusView {
                id: r.id,
                address: r.address,
                voter: r.voter,
                role: r.role,
                term: r.term,
                last_log_index: r.last_log_index,
                applied_index: r.applied_index,
                lag: r.lag,
                last_contact_millis: u64::try_from(r.last_contact_millis).ok(),
                leader: (r.leader != 0).then_some(r.leader),
                error: r.error,
            })
            .collect(),
    })
}

/// `Admin.AddReplica`.
pub async fn add(
    client: &mut AdminClient<Channel>,
    address: &str,
) -> Result<ReplicaSetView, ClientError> {
    let set = client
        .add_replica(pb::AddReplicaRequest {
            address: address.to_string(),
        })
        .await?
        .into_inner();
    Ok(set_view(set))
}

/// `Admin.RemoveReplica`.
pub async fn remove(
    client: &mut AdminClient<Channel>,
    id: u64,
) -> Result<ReplicaSetView, ClientError> {
    let set = client
        .remove_replica(pb::RemoveReplicaRequest { id })
        .await?
        .into_inner();
    Ok(set_view(set))
}

/// The `hub status` table.
pub fn status_table(status: &HubStatusView) -> String {
    let mut t = table(&[
        "ID",
        "ADDRESS",
        "ROLE",
        "VOTER",
        "TERM",
        "LAST LOG",
        "APPLIED",
        "LAG",
        "LAST CONTACT",
        "ERROR",
    ]);
    for r in &status.replicas {
        let mark = if r.id == status.answered_by { "*" } else { "" };
        t.add_row(vec![
            format!("{}{mark}", r.id),
            r.address.clone(),
            r.role.clone(),
            if r.voter { "yes" } else { "no" }.to_string(),
            r.term.to_string(),
            r.last_log_index.to_string(),
            r.applied_index.to_string(),
            r.lag.to_string(),
            match r.last_contact_millis {
                Some(_) if r.id == status.answered_by => "-".to_string(),
                Some(ms) => format!("{:.1}s ago", ms as f64 / 1000.0),
                None => "never".to_string(),
            },
            r.error.clone(),
        ]);
    }
    format!("{t}\n(* answered this call)")
}

/// One line per member after a change.
pub fn set_summary(set: &ReplicaSetView) -> String {
    set.members
        .iter()
        .map(|m| {
            format!(
                "replica {} at {} ({})",
                m.id,
                m.address,
                if m.voter { "voter" } else { "learner" }
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table_marks_the_answering_replica_and_unreachable_ones() {
        let view = HubStatusView {
            answered_by: 1,
            replicas: vec![
                ReplicaStatusView {
                    id: 1,
                    address: "a:1".into(),
                    voter: true,
                    role: "leader".into(),
                    term: 3,
                    last_log_index: 40,
                    applied_index: 40,
                    lag: 0,
                    last_contact_millis: Some(0),
                    leader: Some(1),
                    error: String::new(),
                },
                ReplicaStatusView {
                    id: 2,
                    address: "b:2".into(),
                    voter: true,
                    role: "unreachable".into(),
                    term: 0,
                    last_log_index: 0,
                    applied_index: 0,
                    lag: 12,
                    last_contact_millis: Some(2500),
                    leader: None,
                    error: "replica at b:2 did not answer".into(),
                },
            ],
        };
        let out = status_table(&view);
        assert!(out.contains("1*"), "{out}");
        assert!(out.contains("2.5s ago"), "{out}");
        assert!(out.contains("unreachable"), "{out}");
        assert!(out.contains("12"), "{out}");
    }
}
