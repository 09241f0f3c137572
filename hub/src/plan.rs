//! `flotilla plan` (issue 14): what a revision of an app would do, before anything is applied.
//!
//! Pure: the admin API reads the tree, the clusters and their ClusterStates and renders the app (IO, in
//! `api/plan.rs`); this module compares what each cluster gets now with what the revision renders, groups
//! the clusters into the rollout's stages in the order the rollout gives them the release, and writes the
//! unified object diff of one cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_common::cluster_state::ObjectEntry;
use flotilla_common::labels::Labels;
use flotilla_common::object::ObjectId;

use crate::manifest::{Approval, MaxUnavailable, RolloutSpec};
use crate::rollout::{REST_STAGE, max_unavailable, stage_of};

/// Name of the one stage of an app without `rollout:`: every targeted cluster at once.
pub const UNSTAGED: &str = "all";

/// Most bytes of diff text one plan returns; the rest is cut with a note.
pub const MAX_DIFF_BYTES: usize = 1024 * 1024;

/// What happens to one object of an app on one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    /// Only the revision has it.
    Added(&'a ObjectEntry),
    /// Both have it, with other bytes.
    Changed {
        /// What the cluster gets now.
        current: &'a ObjectEntry,
        /// What the revision renders.
        next: &'a ObjectEntry,
    },
    /// Only the cluster's current state has it: the revision prunes it.
    Removed(&'a ObjectEntry),
    /// Same id, same digest.
    Unchanged(&'a ObjectEntry),
}

impl Change<'_> {
    /// The object's id.
    pub fn id(&self) -> &ObjectId {
        match self {
            Change::Added(e) | Change::Removed(e) | Change::Unchanged(e) => &e.id,
            Change::Changed { next, .. } => &next.id,
        }
    }
}

/// Every object either side has, by id (sorted), and what happens to it.
pub fn compare<'a>(current: &'a [ObjectEntry], next: &'a [ObjectEntry]) -> Vec<Change<'a>> {
    let mut by_id: BTreeMap<&ObjectId, (Option<&ObjectEntry>, Option<&ObjectEntry>)> =
        BTreeMap::new();
    for e in current {
        by_id.entry(&e.id).or_default().0 = Some(e);
    }
    for e in next {
        by_id.entry(&e.id).or_default().1 = Some(e);
    }
    by_id
        .into_values()
        .filter_map(|sides| match sides {
            (Some(c), Some(n)) if c.digest == n.digest => Some(Change::Unchanged(n)),
            (Some(c), Some(n)) => Some(Change::Changed {
                current: c,
                next: n,
            }),
            (None, Some(n)) => Some(Change::Added(n)),
            (Some(c), None) => Some(Change::Removed(c)),
            (None, None) => None,
        })
        .collect()
}

/// How many objects a revision adds, changes, removes and leaves alone on one cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Only in the revision.
    pub added: u32,
    /// Other bytes.
    pub changed: u32,
    /// Only on the cluster now.
    pub removed: u32,
    /// The same.
    pub unchanged: u32,
}

impl Counts {
    /// Counts `changes`.
    pub fn of(changes: &[Change<'_>]) -> Counts {
        let mut c = Counts::default();
        for change in changes {
            match change {
                Change::Added(_) => c.added += 1,
                Change::Changed { .. } => c.changed += 1,
                Change::Removed(_) => c.removed += 1,
                Change::Unchanged(_) => c.unchanged += 1,
            }
        }
        c
    }
}

/// One targeted cluster, as the plan needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedCluster {
    /// Cluster id.
    pub id: String,
    /// Cluster name (orders the clusters of a stage).
    pub name: String,
    /// Labels (select the stage).
    pub labels: Labels,
    /// Unix seconds of the last contact with the hub; 0 for never.
    pub last_contact: i64,
    /// Object counts against what the cluster gets now, or why the app does not render for it.
    pub outcome: Result<Counts, String>,
}

/// One row of a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRow {
    /// Cluster id.
    pub id: String,
    /// Cluster name.
    pub name: String,
    /// Object counts (zero when the render failed).
    pub counts: Counts,
    /// Not in contact for `offline_after`: the rollout would defer it.
    pub offline: bool,
    /// Why the app does not render for it.
    pub error: Option<String>,
}

/// One stage of the plan, clusters in the order the rollout gives them the release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagePlan {
    /// Stage name (`rest` for clusters no stage selects, `all` without `rollout:`).
    pub name: String,
    /// Clusters of the stage updating at once, at most.
    pub max_unavailable: u32,
    /// Seconds the stage must stay healthy before the next starts.
    pub bake_seconds: u64,
    /// Whether the stage waits for an approval.
    pub approval: Approval,
    /// Clusters by name.
    pub clusters: Vec<ClusterRow>,
}

/// Groups the targeted clusters into stages: the rollout's stages in order (a stage no cluster falls in is
/// kept, empty, so the plan shows the whole rollout), then `rest` when some cluster is in no stage; without
/// `rollout:` one stage `all`. Within a stage, clusters are ordered by name, as the rollout gives them the
/// release. A cluster is offline as the engine decides it: no contact for `offline_after` at `now`.
pub fn stages(
    rollout: Option<&RolloutSpec>,
    clusters: Vec<PlannedCluster>,
    now: i64,
    offline_after: Duration,
) -> Vec<StagePlan> {
    let offline_after = offline_after.as_secs() as i64;
    let row = |c: PlannedCluster| {
        let (counts, error) = match c.outcome {
            Ok(counts) => (counts, None),
            Err(e) => (Counts::default(), Some(e)),
        };
        ClusterRow {
            offline: now - c.last_contact >= offline_after,
            id: c.id,
            name: c.name,
            counts,
            error,
        }
    };
    let Some(spec) = rollout else {
        let mut rows: Vec<ClusterRow> = clusters.into_iter().map(row).collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        return vec![StagePlan {
            name: UNSTAGED.into(),
            max_unavailable: rows.len() as u32,
            bake_seconds: 0,
            approval: Approval::Auto,
            clusters: rows,
        }];
    };
    let mut members: Vec<Vec<ClusterRow>> = vec![Vec::new(); spec.stages.len() + 1];
    for c in clusters {
        let stage = stage_of(spec, &c.labels);
        members[stage].push(row(c));
    }
    let mut out = Vec::new();
    for (i, mut rows) in members.into_iter().enumerate() {
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        let (name, max, bake, approval) = match spec.stages.get(i) {
            Some(s) => (s.name.clone(), s.max_unavailable, s.bake, s.approval),
            None if rows.is_empty() => continue,
            // The engine's default for the implicit stage.
            None => (
                REST_STAGE.to_string(),
                MaxUnavailable::Percent(25),
                None,
                Approval::Auto,
            ),
        };
        out.push(StagePlan {
            name,
            max_unavailable: max_unavailable(max, rows.len()) as u32,
            bake_seconds: bake.map(|b| b.as_secs()).unwrap_or(0),
            approval,
            clusters: rows,
        });
    }
    out
}

/// An object's canonical JSON as YAML, as `flotilla render` prints objects.
pub fn object_yaml(value: &serde_json::Value) -> Result<String, String> {
    let mut text = serde_saphyr::to_string(value).map_err(|e| e.to_string())?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

/// The bytes of a stored or rendered object (canonical JSON) as YAML; a note when they cannot be read.
pub fn blob_yaml(bytes: Option<&[u8]>) -> String {
    match bytes {
        None => "# (the object's bytes are no longer stored on the hub)\n".into(),
        Some(bytes) => match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(value) => object_yaml(&value)
                .unwrap_or_else(|e| format!("# (cannot be shown as YAML: {e})\n")),
            Err(e) => format!("# (not JSON: {e})\n"),
        },
    }
}

/// One object's two sides for the diff, as YAML; `None` where that side does not have it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffEntry {
    /// The object.
    pub id: ObjectId,
    /// What the cluster gets now.
    pub current: Option<String>,
    /// What the revision renders.
    pub next: Option<String>,
}

/// `Kind namespace/name` (or `Kind name` when cluster-scoped), with the group when it has one.
pub fn describe(id: &ObjectId) -> String {
    let kind = if id.group.is_empty() {
        id.kind.clone()
    } else {
        format!("{}.{}", id.kind, id.group)
    };
    match &id.namespace {
        Some(ns) => format!("{kind} {ns}/{}", id.name),
        None => format!("{kind} {}", id.name),
    }
}

/// The unified diff of every entry, in order, each headed by the object and the two sides (`current` and
/// `next` name them, e.g. `edge-1 ClusterState v3` and `feature @ 1a2b3c4d5e6f`); at most `max_bytes`,
/// then a note saying how many objects were left out.
pub fn unified_diff(entries: &[DiffEntry], current: &str, next: &str, max_bytes: usize) -> String {
    let mut out = String::new();
    for (i, e) in entries.iter().enumerate() {
        let what = describe(&e.id);
        let old = e.current.as_deref().unwrap_or("");
        let new = e.next.as_deref().unwrap_or("");
        let old_head = match e.current {
            Some(_) => format!("{what} ({current})"),
            None => format!("{what} (not in {current})"),
        };
        let new_head = match e.next {
            Some(_) => format!("{what} ({next})"),
            None => format!("{what} (removed in {next})"),
        };
        let text = similar::TextDiff::from_lines(old, new)
            .unified_diff()
            .context_radius(3)
            .header(&old_head, &new_head)
            .to_string();
        if out.len() + text.len() > max_bytes {
            let left = entries.len() - i;
            out.push_str(&format!(
                "# diff truncated at {max_bytes} bytes: {left} more object{} not shown\n",
                if left == 1 { "" } else { "s" }
            ));
            break;
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use flotilla_common::digest::Digest;

    use super::*;
    use crate::manifest::StageSpec;

    fn entry(name: &str, bytes: &str) -> ObjectEntry {
        ObjectEntry {
            id: ObjectId {
                group: String::new(),
                version: "v1".into(),
                kind: "ConfigMap".into(),
                namespace: Some("shop".into()),
                name: name.into(),
            },
            digest: Digest::of(bytes.as_bytes()),
            size: bytes.len() as u64,
        }
    }

    #[test]
    fn compare_matches_objects_by_id_and_digest() {
        let current = vec![entry("a", "1"), entry("b", "1"), entry("c", "1")];
        let next = vec![entry("d", "1"), entry("b", "2"), entry("a", "1")];
        let changes = compare(&current, &next);
        let names: Vec<(&str, &str)> = changes
            .iter()
            .map(|c| {
                let kind = match c {
                    Change::Added(_) => "added",
                    Change::Changed { .. } => "changed",
                    Change::Removed(_) => "removed",
                    Change::Unchanged(_) => "unchanged",
                };
                (c.id().name.as_str(), kind)
            })
            .collect();
        assert_eq!(
            names,
            [
                ("a", "unchanged"),
                ("b", "changed"),
                ("c", "removed"),
                ("d", "added")
            ]
        );
        assert_eq!(
            Counts::of(&changes),
            Counts {
                added: 1,
                changed: 1,
                removed: 1,
                unchanged: 1
            }
        );
        // A cluster that does not have the app yet gets everything as added.
        assert_eq!(Counts::of(&compare(&[], &next)).added, 3);
    }

    fn cluster(name: &str, ring: Option<&str>, last_contact: i64) -> PlannedCluster {
        PlannedCluster {
            id: format!("c-{name}"),
            name: name.into(),
            labels: ring
                .map(|r| Labels::from([("ring".to_string(), r.to_string())]))
                .unwrap_or_default(),
            last_contact,
            outcome: Ok(Counts::default()),
        }
    }

    fn stage(name: &str, ring: &str, max: MaxUnavailable, bake: u64) -> StageSpec {
        StageSpec {
            name: name.into(),
            selector: flotilla_common::labels::LabelSelector {
                match_labels: Labels::from([("ring".to_string(), ring.to_string())]),
                match_expressions: Vec::new(),
            },
            max_unavailable: max,
            bake: (bake > 0).then(|| Duration::from_secs(bake)),
            approval: if bake > 0 {
                Approval::Manual
            } else {
                Approval::Auto
            },
            analysis: None,
        }
    }

    fn spec(stages: Vec<StageSpec>) -> RolloutSpec {
        RolloutSpec {
            stages,
            failure_budget: 0,
            on_failure: Default::default(),
            progress_deadline: None,
            offline: Default::default(),
        }
    }

    fn layout(plan: &[StagePlan]) -> Vec<(String, u32, Vec<String>)> {
        plan.iter()
            .map(|s| {
                (
                    s.name.clone(),
                    s.max_unavailable,
                    s.clusters.iter().map(|c| c.name.clone()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn clusters_fall_in_stages_in_order_then_rest_ordered_by_name() {
        let spec = spec(vec![
            stage("canary", "canary", MaxUnavailable::Count(1), 600),
            stage("wave-1", "1", MaxUnavailable::Percent(50), 0),
            stage("empty", "nobody", MaxUnavailable::Count(2), 0),
        ]);
        let now = 1_000;
        let fleet = vec![
            cluster("w1-b", Some("1"), now),
            cluster("zz", None, now),
            cluster("w1-a", Some("1"), now),
            cluster("can", Some("canary"), now),
            cluster("w1-c", Some("1"), now),
            cluster("aa", Some("other"), now),
        ];
        let plan = stages(Some(&spec), fleet, now, Duration::from_secs(300));
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            layout(&plan),
            [
                ("canary".to_string(), 1, s(&["can"])),
                // 50% of 3, rounded down.
                ("wave-1".to_string(), 1, s(&["w1-a", "w1-b", "w1-c"])),
                ("empty".to_string(), 2, s(&[])),
                // 25% of 2, never below one.
                ("rest".to_string(), 1, s(&["aa", "zz"])),
            ]
        );
        assert_eq!(plan[0].bake_seconds, 600);
        assert_eq!(plan[0].approval, Approval::Manual);
        assert_eq!(plan[1].approval, Approval::Auto);

        // No cluster left over: no `rest`.
        let plan = stages(
            Some(&spec),
            vec![cluster("can", Some("canary"), now)],
            now,
            Duration::from_secs(300),
        );
        assert_eq!(
            plan.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["canary", "wave-1", "empty"]
        );
    }

    #[test]
    fn an_app_without_rollout_is_one_stage_of_every_cluster_at_once() {
        let now = 1_000;
        let plan = stages(
            None,
            vec![
                cluster("b", Some("1"), now),
                cluster("a", None, now),
                cluster("c", Some("canary"), now),
            ],
            now,
            Duration::from_secs(300),
        );
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].name, UNSTAGED);
        assert_eq!(plan[0].max_unavailable, 3);
        assert_eq!(
            plan[0]
                .clusters
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn offline_and_failed_clusters_are_marked() {
        let now = 10_000;
        let mut failed = cluster("broken", None, now);
        failed.outcome = Err("templates/x.yaml.j2: undefined value".into());
        let mut counted = cluster("fine", None, now - 299);
        counted.outcome = Ok(Counts {
            added: 2,
            changed: 1,
            removed: 0,
            unchanged: 5,
        });
        let plan = stages(
            None,
            vec![
                failed,
                counted,
                cluster("gone", None, now - 300),
                cluster("never", None, 0),
            ],
            now,
            Duration::from_secs(300),
        );
        let rows = &plan[0].clusters;
        let by = |n: &str| rows.iter().find(|r| r.name == n).unwrap();
        assert!(!by("fine").offline);
        assert_eq!(by("fine").counts.added, 2);
        // The engine's rule: online only while `now - last_contact < offline_after`.
        assert!(by("gone").offline);
        assert!(by("never").offline);
        assert_eq!(
            by("broken").error.as_deref(),
            Some("templates/x.yaml.j2: undefined value")
        );
        assert_eq!(by("broken").counts, Counts::default());
    }

    fn diff_entry(name: &str, current: Option<&str>, next: Option<&str>) -> DiffEntry {
        DiffEntry {
            id: entry(name, "").id,
            current: current.map(str::to_string),
            next: next.map(str::to_string),
        }
    }

    #[test]
    fn the_diff_heads_each_object_with_both_sides() {
        let current = object_yaml(&serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "shop"},
            "data": {"mode": "prod", "size": "1"}
        }))
        .unwrap();
        let next = object_yaml(&serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "shop"},
            "data": {"mode": "canary", "size": "1"}
        }))
        .unwrap();
        let entries = vec![
            diff_entry("settings", Some(&current), Some(&next)),
            diff_entry("fresh", None, Some("a: 1\n")),
            diff_entry("old", Some("b: 2\n"), None),
        ];
        let diff = unified_diff(
            &entries,
            "edge-1 ClusterState v3",
            "feature @ 1a2b3c",
            MAX_DIFF_BYTES,
        );
        assert!(
            diff.contains("--- ConfigMap shop/settings (edge-1 ClusterState v3)\n+++ ConfigMap shop/settings (feature @ 1a2b3c)\n"),
            "{diff}"
        );
        assert!(
            diff.contains("@@ -1,6 +1,6 @@\n apiVersion: v1\n data:\n-  mode: prod\n+  mode: canary\n   size: \"1\"\n"),
            "{diff}"
        );
        assert!(
            diff.contains("--- ConfigMap shop/fresh (not in edge-1 ClusterState v3)\n+++ ConfigMap shop/fresh (feature @ 1a2b3c)\n@@ -0,0 +1 @@\n+a: 1\n"),
            "{diff}"
        );
        assert!(
            diff.contains(
                "+++ ConfigMap shop/old (removed in feature @ 1a2b3c)\n@@ -1 +0,0 @@\n-b: 2\n"
            ),
            "{diff}"
        );
        assert!(!diff.contains("truncated"), "{diff}");
    }

    #[test]
    fn a_diff_over_the_limit_is_cut_between_objects_with_a_note() {
        let big = "x: 1\n".repeat(100);
        let entries: Vec<DiffEntry> = (0..10)
            .map(|i| diff_entry(&format!("o{i}"), None, Some(&big)))
            .collect();
        let one = unified_diff(&entries[..1], "now", "next", MAX_DIFF_BYTES).len();
        let diff = unified_diff(&entries, "now", "next", one * 3 + 10);
        assert!(diff.len() <= one * 3 + 200, "{}", diff.len());
        assert!(diff.contains("ConfigMap shop/o2 "), "{diff}");
        assert!(!diff.contains("ConfigMap shop/o3 "), "{diff}");
        let note = format!(
            "# diff truncated at {} bytes: 7 more objects not shown\n",
            one * 3 + 10
        );
        assert!(diff.ends_with(&note), "{diff}");
    }

    #[test]
    fn blobs_become_yaml_or_a_note() {
        let yaml = blob_yaml(Some(br#"{"kind":"ConfigMap","data":{"k":"v"}}"#));
        assert!(yaml.contains("kind: ConfigMap\n"), "{yaml}");
        assert!(yaml.contains("  k: v\n"), "{yaml}");
        assert!(blob_yaml(None).contains("no longer stored"));
        assert!(blob_yaml(Some(b"{nope")).starts_with("# (not JSON"));
    }
}
