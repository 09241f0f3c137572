//! Conversions between flotilla.v1 messages and domain types.

use flotilla_common::cluster_state::{SignedClusterState, SignedHeader};
use flotilla_common::status::{AppHealth, AppPhase, AppStatus, StatusReport};
use flotilla_proto::v1 as pb;
use tonic::Status;

pub fn signed_state(s: SignedClusterState) -> pb::SignedClusterState {
    pb::SignedClusterState {
        header: s.header,
        signature: s.signature,
        body: s.body,
    }
}

pub fn signed_header(h: SignedHeader) -> pb::SignedHeader {
    pb::SignedHeader {
        header: h.header,
        signature: h.signature,
    }
}

pub fn status_report(r: pb::StatusReport) -> Result<StatusReport, Status> {
    let apps = r
        .apps
        .into_iter()
        .map(|a| {
            Ok(AppStatus {
                phase: AppPhase::parse(&a.phase).ok_or_else(|| {
                    Status::invalid_argument(format!("unknown phase {:?}", a.phase))
                })?,
                app: a.app,
                commit: a.commit,
                version: a.version,
                message: a.message,
                health: AppHealth::parse(&a.health).ok_or_else(|| {
                    Status::invalid_argument(format!("unknown health {:?}", a.health))
                })?,
                health_reason: a.health_reason,
            })
        })
        .collect::<Result<Vec<_>, Status>>()?;
    Ok(StatusReport {
        seq: r.seq,
        observed_at: r.observed_at,
        applied_version: r.applied_version,
        apps,
        rejection: (!r.rejection.is_empty()).then_some(r.rejection),
    })
}
