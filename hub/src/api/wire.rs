//! Conversions between flotilla.v1 messages and domain types.

use flotilla_common::capabilities::Capabilities;
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

/// Capabilities an agent sent, checked against the limits (InvalidArgument naming the field and
/// limit); an absent message means none.
pub fn capabilities(c: Option<pb::Capabilities>) -> Result<Capabilities, Status> {
    let Some(c) = c else {
        return Ok(Capabilities::default());
    };
    let kube_version = (!c.kube_version.is_empty()).then_some(c.kube_version);
    Capabilities::new(kube_version, c.api_versions)
        .map_err(|e| Status::invalid_argument(format!("capabilities refused: {e}")))
}

/// Capabilities as the Admin service shows them.
pub fn capabilities_message(c: &Capabilities) -> pb::Capabilities {
    pb::Capabilities {
        kube_version: c.kube_version.clone().unwrap_or_default(),
        api_versions: c.api_versions.iter().cloned().collect(),
    }
}
