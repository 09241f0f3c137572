//! `flotilla rollout …`: the CLI's view of the hub's staged rollouts, the Admin calls that read
//! and steer them, and how a watched rollout ends (its exit code). The wire types are converted
//! here, once, into views that print as JSON; `format` renders them for people and `watch`
//! follows one until it ends.

pub mod format;
pub mod watch;

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::admin_client::AdminClient;
use serde::Serialize;
use tonic::transport::Channel;

use crate::client::ClientError;

/// A rollout as the CLI shows it: the `Rollout` message, field for field.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RolloutView {
    /// Rollout id; a newer rollout of the same app has a higher one.
    pub id: u64,
    /// App.
    pub app: String,
    /// Source the app comes from.
    pub source: String,
    /// Release id being rolled out.
    pub release: String,
    /// Commit the release renders at.
    pub release_commit: String,
    /// Release the clusters had before.
    pub previous: String,
    /// Commit the previous release renders at.
    pub previous_commit: String,
    /// progressing | paused | rolled-back | completed | superseded.
    pub phase: String,
    /// Why it is paused, rolled back or superseded.
    pub reason: String,
    /// Unix seconds.
    pub started_at: i64,
    /// Unix seconds; 0 while it runs.
    pub ended_at: i64,
    /// Stages in order.
    pub stages: Vec<RolloutStageView>,
    /// Every cluster of the rollout.
    pub clusters: Vec<RolloutClusterView>,
    /// Problems with the rollout settings against the fleet.
    pub warnings: Vec<String>,
    /// Failed clusters tolerated before the rollout halts.
    pub failure_budget: u32,
    /// pause | rollback.
    pub on_failure: String,
}

/// One stage of a rollout.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RolloutStageView {
    /// Stage name.
    pub name: String,
    /// pending | awaiting-approval | progressing | baking | completed.
    pub state: String,
    /// Unix seconds; 0 before it starts.
    pub started_at: i64,
    /// Unix seconds every cluster was healthy; 0 before.
    pub healthy_at: i64,
    /// Unix seconds the bake ends; 0 before the stage is healthy or without bake.
    pub bake_ends_at: i64,
    /// Bake length.
    pub bake_seconds: u64,
    /// auto | manual.
    pub approval: String,
    /// Who approved the stage.
    pub approved_by: String,
    /// Unix seconds of the approval.
    pub approved_at: i64,
    /// Unix seconds; 0 before it completes.
    pub completed_at: i64,
    /// Clusters of the stage updating at once, at most.
    pub max_unavailable: u32,
    /// Clusters in the stage.
    pub total: u32,
    /// Clusters waiting for their turn.
    pub waiting: u32,
    /// Clusters given the release, not yet healthy.
    pub updating: u32,
    /// Clusters healthy on the release.
    pub healthy: u32,
    /// Clusters counted as failed.
    pub failed: u32,
    /// Clusters offline when their turn came.
    pub deferred: u32,
    /// Its analysis queries' measurements during this bake.
    pub analysis: Vec<RolloutAnalysisView>,
}

/// One analysis query of a stage, for one cluster or the stage.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RolloutAnalysisView {
    /// Query name.
    pub query: String,
    /// Cluster name for a per-cluster query; empty for the stage.
    pub cluster: String,
    /// Passing measurements.
    pub passes: u32,
    /// Failed measurements.
    pub failures: u32,
    /// Inconclusive measurements in a row, up to now.
    pub inconclusive_run: u32,
    /// pass | fail | inconclusive; empty before the first.
    pub last: String,
    /// Unix seconds of the last measurement.
    pub last_at: i64,
    /// What it found.
    pub detail: String,
    /// Failed measurements tolerated.
    pub failure_limit: u32,
    /// Inconclusive ones in a row that fail the stage.
    pub inconclusive_limit: u32,
    /// Between measurements.
    pub interval_seconds: u64,
}

impl From<pb::RolloutAnalysis> for RolloutAnalysisView {
    fn from(a: pb::RolloutAnalysis) -> Self {
        RolloutAnalysisView {
            query: a.query,
            cluster: a.cluster,
            passes: a.passes,
            failures: a.failures,
            inconclusive_run: a.inconclusive_run,
            last: a.last,
            last_at: a.last_at,
            detail: a.detail,
            failure_limit: a.failure_limit,
            inconclusive_limit: a.inconclusive_limit,
            interval_seconds: a.interval_seconds,
        }
    }
}

/// One cluster of a rollout.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RolloutClusterView {
    /// Cluster id.
    pub id: String,
    /// Cluster name.
    pub name: String,
    /// Its stage.
    pub stage: String,
    /// waiting | updating | healthy | failed | deferred.
    pub state: String,
    /// Unix seconds it entered that state (updating, healthy); 0 otherwise.
    pub since: i64,
    /// ClusterState version carrying the release to it; 0 before it is issued.
    pub version: u64,
    /// Why it failed.
    pub reason: String,
    /// The release it is given now.
    pub release: String,
}

impl From<pb::Rollout> for RolloutView {
    fn from(r: pb::Rollout) -> Self {
        RolloutView {
            id: r.id,
            app: r.app,
            source: r.source,
            release: r.release,
            release_commit: r.release_commit,
            previous: r.previous,
            previous_commit: r.previous_commit,
            phase: r.phase,
            reason: r.reason,
            started_at: r.started_at,
            ended_at: r.ended_at,
            stages: r.stages.into_iter().map(Into::into).collect(),
            clusters: r.clusters.into_iter().map(Into::into).collect(),
            warnings: r.warnings,
            failure_budget: r.failure_budget,
            on_failure: r.on_failure,
        }
    }
}

impl From<pb::RolloutStage> for RolloutStageView {
    fn from(s: pb::RolloutStage) -> Self {
        RolloutStageView {
            name: s.name,
            state: s.state,
            started_at: s.started_at,
            healthy_at: s.healthy_at,
            bake_ends_at: s.bake_ends_at,
            bake_seconds: s.bake_seconds,
            approval: s.approval,
            approved_by: s.approved_by,
            approved_at: s.approved_at,
            completed_at: s.completed_at,
            max_unavailable: s.max_unavailable,
            total: s.total,
            waiting: s.waiting,
            updating: s.updating,
            healthy: s.healthy,
            failed: s.failed,
            deferred: s.deferred,
            analysis: s.analysis.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<pb::RolloutCluster> for RolloutClusterView {
    fn from(c: pb::RolloutCluster) -> Self {
        RolloutClusterView {
            id: c.id,
            name: c.name,
            stage: c.stage,
            state: c.state,
            since: c.since,
            version: c.version,
            reason: c.reason,
            release: c.release,
        }
    }
}

impl RolloutView {
    /// The stage the rollout is at, with its index: the first one not completed, else the last.
    pub fn current_stage(&self) -> Option<(usize, &RolloutStageView)> {
        self.stages
            .iter()
            .enumerate()
            .find(|(_, s)| s.state != "completed")
            .or_else(|| self.stages.iter().enumerate().next_back())
    }

    /// Clusters of every stage, by state: (healthy, total, failed, deferred).
    pub fn counts(&self) -> (u32, u32, u32, u32) {
        self.stages.iter().fold((0, 0, 0, 0), |(h, t, f, d), s| {
            (h + s.healthy, t + s.total, f + s.failed, d + s.deferred)
        })
    }
}

/// An operator's action on an app's active rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Let the stage awaiting approval start.
    Approve,
    /// Hold the rollout where it is.
    Pause,
    /// Go on after a pause.
    Resume,
    /// Give every touched cluster the previous release back.
    Rollback,
}

impl Action {
    /// The `RolloutActionRequest.action` value.
    pub fn as_wire(self) -> &'static str {
        match self {
            Action::Approve => "approve",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Rollback => "rollback",
        }
    }

    /// What the action did, for the one-line summary.
    pub fn done(self) -> &'static str {
        match self {
            Action::Approve => "approved",
            Action::Pause => "paused",
            Action::Resume => "resumed",
            Action::Rollback => "rolled back",
        }
    }
}

/// A rollout call failed.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The app has no rollout (or no such app).
    #[error("no rollout for app {app}")]
    NotFound {
        /// App asked for.
        app: String,
    },
    /// The hub refused the action in the rollout's present state.
    #[error("cannot {action} the rollout of {app}: {message}")]
    Refused {
        /// App.
        app: String,
        /// approve | pause | resume | rollback.
        action: &'static str,
        /// The hub's explanation, e.g. nothing to approve.
        message: String,
    },
    /// The hub predates rollouts.
    #[error("this hub does not serve rollouts (it answered: {0})")]
    Unsupported(String),
    /// Anything else: bundle, connection, or another hub error.
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl RolloutError {
    /// Maps a hub answer to what it means for a rollout of `app`.
    pub fn from_status(app: &str, action: Option<Action>, status: tonic::Status) -> Self {
        use tonic::Code;
        match (status.code(), action) {
            (Code::NotFound, _) => RolloutError::NotFound {
                app: app.to_string(),
            },
            (Code::FailedPrecondition | Code::InvalidArgument, Some(action)) => {
                RolloutError::Refused {
                    app: app.to_string(),
                    action: action.as_wire(),
                    message: status.message().to_string(),
                }
            }
            (Code::Unimplemented, _) => RolloutError::Unsupported(status.message().to_string()),
            _ => RolloutError::Client(ClientError::Rpc(status)),
        }
    }

    /// Whether trying again later may succeed: the hub unreachable, restarting or too slow.
    pub fn is_transient(&self) -> bool {
        use tonic::Code;
        match self {
            RolloutError::Client(ClientError::Connect { .. }) => true,
            RolloutError::Client(ClientError::Rpc(s)) => matches!(
                s.code(),
                Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Cancelled
                    | Code::Aborted
                    | Code::Unknown
            ),
            _ => false,
        }
    }
}

/// Rollouts of every app (or of `app`): active ones and recent ended ones, newest first.
pub async fn list(
    client: &mut AdminClient<Channel>,
    app: &str,
) -> Result<Vec<RolloutView>, RolloutError> {
    let resp = client
        .list_rollouts(pb::ListRolloutsRequest {
            app: app.to_string(),
        })
        .await
        .map_err(|s| RolloutError::from_status(app, None, s))?
        .into_inner();
    Ok(resp.rollouts.into_iter().map(Into::into).collect())
}

/// The newest rollout of `app`, every stage and cluster included.
pub async fn get(
    client: &mut AdminClient<Channel>,
    app: &str,
) -> Result<RolloutView, RolloutError> {
    let resp = client
        .get_rollout(pb::GetRolloutRequest {
            app: app.to_string(),
        })
        .await
        .map_err(|s| RolloutError::from_status(app, None, s))?
        .into_inner();
    Ok(resp.into())
}

/// Applies `action` to the active rollout of `app` on the first of `hubs` that takes it, and returns the
/// rollout as it is afterwards: a follower answers Unavailable before acting, and
/// the next hub is asked.
pub async fn act_on_any(
    hubs: &str,
    admin_dir: &std::path::Path,
    app: &str,
    action: Action,
) -> Result<RolloutView, RolloutError> {
    let request = pb::RolloutActionRequest {
        app: app.to_string(),
        action: action.as_wire().to_string(),
    };
    match crate::client::with_admin(hubs, admin_dir, async |client| {
        Ok(client.rollout_action(request.clone()).await?.into_inner())
    })
    .await
    {
        Ok(resp) => Ok(resp.into()),
        Err(ClientError::Rpc(status)) => Err(RolloutError::from_status(app, Some(action), status)),
        Err(other) => Err(RolloutError::Client(other)),
    }
}

/// How a watched rollout ended, and the exit code of `flotilla rollout watch` for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every stage completed: exit 0.
    Completed,
    /// Halted by the failure budget (`onFailure: pause`) or by an operator: exit 3.
    Paused,
    /// Rolled back (`onFailure: rollback` or an operator): exit 4.
    RolledBack,
    /// A newer rollout of the app replaced it: exit 5.
    Superseded,
}

/// `flotilla rollout watch` exit codes, as `--help` and the README list them. 1 is any error
/// (no such rollout, the hub unreachable for longer than `--retry-for`), 2 a usage error.
pub const EXIT_CODES: &str = "Exit codes: 0 completed, 1 error (no rollout, hub unreachable \
     for longer than --retry-for), 2 usage error, 3 paused (failure budget exhausted or an \
     operator paused it), 4 rolled back, 5 superseded by a newer rollout.";

impl Outcome {
    /// How `rollout` stands: `None` while it progresses (awaiting approval included).
    /// A phase this CLI does not know is an ending only once the hub set `ended_at`.
    pub fn of(rollout: &RolloutView) -> Result<Option<Outcome>, String> {
        match rollout.phase.as_str() {
            "progressing" => Ok(None),
            "completed" => Ok(Some(Outcome::Completed)),
            "paused" => Ok(Some(Outcome::Paused)),
            "rolled-back" => Ok(Some(Outcome::RolledBack)),
            "superseded" => Ok(Some(Outcome::Superseded)),
            other if rollout.ended_at != 0 => Err(format!(
                "rollout of {} ended in a phase this CLI does not know: {other:?}",
                rollout.app
            )),
            _ => Ok(None),
        }
    }

    /// The process exit code.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Completed => 0,
            Outcome::Paused => 3,
            Outcome::RolledBack => 4,
            Outcome::Superseded => 5,
        }
    }
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_phase(phase: &str, ended_at: i64) -> RolloutView {
        RolloutView {
            app: "web".into(),
            phase: phase.into(),
            ended_at,
            ..Default::default()
        }
    }

    #[test]
    fn outcomes_and_exit_codes() {
        let cases = [
            ("progressing", 0, Ok(None), None),
            ("completed", 100, Ok(Some(Outcome::Completed)), Some(0)),
            ("paused", 0, Ok(Some(Outcome::Paused)), Some(3)),
            ("rolled-back", 100, Ok(Some(Outcome::RolledBack)), Some(4)),
            ("superseded", 100, Ok(Some(Outcome::Superseded)), Some(5)),
            ("rebalancing", 0, Ok(None), None),
        ];
        for (phase, ended, want, code) in cases {
            let got = Outcome::of(&with_phase(phase, ended));
            assert_eq!(got, want, "{phase}");
            assert_eq!(got.unwrap().map(Outcome::exit_code), code, "{phase}");
        }
        let err = Outcome::of(&with_phase("rebalancing", 100)).unwrap_err();
        assert!(err.contains("rebalancing"), "{err}");
    }

    #[test]
    fn exit_codes_are_distinct_and_clear_of_error_and_usage() {
        let codes: Vec<i32> = [
            Outcome::Completed,
            Outcome::Paused,
            Outcome::RolledBack,
            Outcome::Superseded,
        ]
        .map(Outcome::exit_code)
        .to_vec();
        let mut unique = codes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), codes.len());
        assert!(!codes.contains(&1) && !codes.contains(&2), "{codes:?}");
        for code in &codes[1..] {
            assert!(
                EXIT_CODES.contains(&format!("{code} ")),
                "{code} not documented"
            );
        }
    }

    #[test]
    fn hub_answers_map_to_clear_errors() {
        let not_found = RolloutError::from_status("web", None, tonic::Status::not_found("x"));
        assert_eq!(not_found.to_string(), "no rollout for app web");
        let refused = RolloutError::from_status(
            "web",
            Some(Action::Approve),
            tonic::Status::failed_precondition("no stage is awaiting approval"),
        );
        assert_eq!(
            refused.to_string(),
            "cannot approve the rollout of web: no stage is awaiting approval"
        );
        assert!(!refused.is_transient());
        let old_hub = RolloutError::from_status("web", None, tonic::Status::unimplemented(""));
        assert!(matches!(old_hub, RolloutError::Unsupported(_)));
        let down = RolloutError::from_status("web", None, tonic::Status::unavailable("gone"));
        assert!(down.is_transient());
        let denied = RolloutError::from_status("web", None, tonic::Status::permission_denied("no"));
        assert!(!denied.is_transient());
    }

    #[test]
    fn current_stage_is_the_first_not_completed_else_the_last() {
        let stage = |name: &str, state: &str| RolloutStageView {
            name: name.into(),
            state: state.into(),
            ..Default::default()
        };
        let mut r = RolloutView {
            stages: vec![
                stage("canary", "completed"),
                stage("eu", "baking"),
                stage("us", "pending"),
            ],
            ..Default::default()
        };
        assert_eq!(
            r.current_stage().map(|(i, s)| (i, s.name.as_str())),
            Some((1, "eu"))
        );
        for s in &mut r.stages {
            s.state = "completed".into();
        }
        assert_eq!(r.current_stage().map(|(i, _)| i), Some(2));
        r.stages.clear();
        assert!(r.current_stage().is_none());
    }
}
