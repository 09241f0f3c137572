//! Rollout records as the Admin API shows them (`flotilla rollout list|status|watch`).

use std::collections::BTreeMap;

use flotilla_common::labels::Labels;
use flotilla_proto::v1 as pb;

use crate::manifest::{Approval, MaxUnavailable, OnFailure};
use crate::rollout::{
    ClusterProgress, ClusterView, Phase, RolloutRecord, max_unavailable, warnings,
};

/// Name and labels per cluster id.
pub type Names = BTreeMap<String, (String, Labels)>;

/// A stage's analysis measurements: every query of its spec, per cluster where measured so.
fn analysis_rows(
    s: &crate::rollout::StageState,
    settings: Option<&crate::manifest::StageSpec>,
    names: &Names,
) -> Vec<pb::RolloutAnalysis> {
    let Some(analysis) = settings.and_then(|st| st.analysis.as_ref()) else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for q in &analysis.queries {
        let mut keys: Vec<(&String, Option<&str>)> = s
            .analysis
            .keys()
            .filter_map(|k| match k.split_once('@') {
                Some((name, cluster)) if name == q.name => Some((k, Some(cluster))),
                None if *k == q.name => Some((k, None)),
                _ => None,
            })
            .collect();
        keys.sort_by_key(|(_, c)| c.map(|id| names.get(id).map(|n| n.0.clone())));
        let row = |cluster: String, state: Option<&crate::rollout::QueryState>| {
            let last = state.and_then(|q| q.last.as_ref());
            pb::RolloutAnalysis {
                query: q.name.clone(),
                cluster,
                passes: state.map_or(0, |q| q.passes),
                failures: state.map_or(0, |q| q.failures),
                inconclusive_run: state.map_or(0, |q| q.inconclusive_run),
                last: last
                    .map(|m| m.outcome.as_str().to_string())
                    .unwrap_or_default(),
                last_at: last.map_or(0, |m| m.at),
                detail: last.map(|m| m.detail.clone()).unwrap_or_default(),
                failure_limit: analysis.failure_limit,
                inconclusive_limit: analysis.inconclusive_limit,
                interval_seconds: analysis.interval.as_secs(),
            }
        };
        if keys.is_empty() {
            rows.push(row(String::new(), None));
        }
        for (key, cluster) in keys {
            let name = cluster
                .map(|id| names.get(id).map_or(id.to_string(), |n| n.0.clone()))
                .unwrap_or_default();
            rows.push(row(name, s.analysis.get(key)));
        }
    }
    rows
}

/// A rollout record with every stage's state and counts and every cluster's progress.
pub fn rollout_message(record: &RolloutRecord, names: &Names, now: i64) -> pb::Rollout {
    let r = &record.rollout;
    let spec = record.spec.as_ref();
    let mut stages = Vec::new();
    let current = r.current_stage();
    let mut stage_of: BTreeMap<&str, &str> = BTreeMap::new();
    for (i, s) in r.stages.iter().enumerate() {
        let settings = spec.and_then(|sp| sp.stages.get(i));
        let bake = settings
            .and_then(|st| st.bake)
            .map(|b| b.as_secs())
            .unwrap_or(0);
        let manual = settings.is_some_and(|st| st.approval == Approval::Manual);
        let mut counts = [0u32; 5];
        for id in &s.clusters {
            stage_of.insert(id.as_str(), s.name.as_str());
            let slot = match r.clusters.get(id) {
                Some(ClusterProgress::Waiting) | None => 0,
                Some(ClusterProgress::Updating { .. }) => 1,
                Some(ClusterProgress::Healthy { .. }) => 2,
                Some(ClusterProgress::Failed { .. }) => 3,
                Some(ClusterProgress::Deferred) => 4,
            };
            counts[slot] += 1;
        }
        let state = if s.completed_at.is_some() {
            "completed"
        } else if s.started_at.is_none() {
            if manual && s.approved.is_none() && current == Some(i) && r.phase == Phase::Progressing
            {
                "awaiting-approval"
            } else {
                "pending"
            }
        } else if s.healthy_at.is_some() {
            "baking"
        } else {
            "progressing"
        };
        let size = s.clusters.len();
        stages.push(pb::RolloutStage {
            name: s.name.clone(),
            state: state.into(),
            started_at: s.started_at.unwrap_or(0),
            healthy_at: s.healthy_at.unwrap_or(0),
            bake_ends_at: match (s.healthy_at, bake) {
                (Some(h), b) if b > 0 => h + b as i64,
                _ => 0,
            },
            bake_seconds: bake,
            approval: if manual { "manual" } else { "auto" }.into(),
            approved_by: s.approved.as_ref().map(|a| a.0.clone()).unwrap_or_default(),
            approved_at: s.approved.as_ref().map(|a| a.1).unwrap_or(0),
            completed_at: s.completed_at.unwrap_or(0),
            max_unavailable: max_unavailable(
                settings
                    .map(|st| st.max_unavailable)
                    .unwrap_or(MaxUnavailable::Percent(25)),
                size,
            ) as u32,
            total: s.clusters.len() as u32,
            waiting: counts[0],
            updating: counts[1],
            healthy: counts[2],
            failed: counts[3],
            deferred: counts[4],
            analysis: analysis_rows(s, settings, names),
        });
    }
    let clusters = r
        .clusters
        .iter()
        .map(|(id, progress)| {
            let (state, since, version, reason) = match progress {
                ClusterProgress::Waiting => ("waiting", 0, 0, String::new()),
                ClusterProgress::Updating { since, version } => {
                    ("updating", *since, version.unwrap_or(0), String::new())
                }
                ClusterProgress::Healthy { since, version } => {
                    ("healthy", *since, *version, String::new())
                }
                ClusterProgress::Failed { reason } => ("failed", 0, 0, reason.clone()),
                ClusterProgress::Deferred => ("deferred", 0, 0, String::new()),
            };
            pb::RolloutCluster {
                id: id.clone(),
                name: names
                    .get(id)
                    .map(|n| n.0.clone())
                    .unwrap_or_else(|| format!("{id} (deleted)")),
                stage: stage_of.get(id.as_str()).copied().unwrap_or("").into(),
                state: state.into(),
                since,
                version,
                reason,
                release: r.release_for(id).to_string(),
            }
        })
        .collect();
    let fleet: Vec<ClusterView> = r
        .clusters
        .keys()
        .filter_map(|id| {
            names.get(id).map(|(_, labels)| ClusterView {
                id: id.clone(),
                labels: labels.clone(),
                last_contact: now,
                report: None,
            })
        })
        .collect();
    pb::Rollout {
        id: record.id,
        app: r.app.clone(),
        source: record.source.clone(),
        release: r.release.clone(),
        release_commit: record.commits.get(&r.release).cloned().unwrap_or_default(),
        previous: r.previous.clone(),
        previous_commit: record.commits.get(&r.previous).cloned().unwrap_or_default(),
        phase: r.phase.as_str().into(),
        reason: r.phase.reason(),
        started_at: r.started_at,
        ended_at: record.ended_at.unwrap_or(0),
        stages,
        clusters,
        warnings: spec.map(|s| warnings(s, &fleet)).unwrap_or_default(),
        failure_budget: spec.map(|s| s.failure_budget).unwrap_or(0),
        on_failure: match spec.map(|s| s.on_failure) {
            Some(OnFailure::Rollback) => "rollback",
            _ => "pause",
        }
        .into(),
    }
}
