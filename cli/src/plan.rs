//! `flotilla plan` as text: one header line per stage, a row per cluster, the warnings, the diff.

use comfy_table::{Table, presets::NOTHING};

use crate::client::{PlanClusterView, PlanView};

fn note(c: &PlanClusterView) -> String {
    let mut notes = Vec::new();
    if c.offline {
        notes.push("deferred (offline)".to_string());
    }
    if !c.error.is_empty() {
        notes.push(format!("render failed: {}", c.error));
    }
    notes.join("; ")
}

fn bake(seconds: u64) -> String {
    if seconds == 0 {
        "none".into()
    } else {
        humantime::format_duration(std::time::Duration::from_secs(seconds)).to_string()
    }
}

/// The plan for people.
pub fn plan_text(plan: &PlanView) -> String {
    let mut out = format!(
        "app {} from source {} at {} (release {})\n",
        plan.app,
        plan.source,
        &plan.commit[..plan.commit.len().min(12)],
        if plan.release.is_empty() {
            "unknown"
        } else {
            &plan.release[..plan.release.len().min(19)]
        }
    );
    if !plan.staged {
        out.push_str("no rollout: block: every targeted cluster gets the release at once\n");
    }
    for (i, stage) in plan.stages.iter().enumerate() {
        out.push_str(&format!(
            "\nstage {}/{} {}: maxUnavailable {}, bake {}, approval {}\n",
            i + 1,
            plan.stages.len(),
            stage.name,
            stage.max_unavailable,
            bake(stage.bake_seconds),
            stage.approval
        ));
        if stage.clusters.is_empty() {
            out.push_str("  (no cluster)\n");
            continue;
        }
        let mut t = Table::new();
        t.load_preset(NOTHING);
        t.set_header(vec![
            "CLUSTER",
            "ADDED",
            "CHANGED",
            "REMOVED",
            "UNCHANGED",
            "NOTE",
        ]);
        for c in &stage.clusters {
            t.add_row(vec![
                c.name.clone(),
                c.added.to_string(),
                c.changed.to_string(),
                c.removed.to_string(),
                c.unchanged.to_string(),
                note(c),
            ]);
        }
        out.push_str(&t.to_string());
        out.push('\n');
    }
    if !plan.warnings.is_empty() {
        out.push_str("\nwarnings:\n");
        for w in &plan.warnings {
            out.push_str(&format!("  - {w}\n"));
        }
    }
    if !plan.diff.is_empty() {
        out.push('\n');
        out.push_str(&plan.diff);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::PlanStageView;

    #[test]
    fn stages_rows_notes_warnings_and_diff() {
        let cluster = |name: &str, offline: bool, error: &str| PlanClusterView {
            id: format!("c-{name}"),
            name: name.into(),
            added: 1,
            changed: 2,
            removed: 0,
            unchanged: 7,
            offline,
            error: error.into(),
        };
        let plan = PlanView {
            app: "shop".into(),
            source: "main".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            release: "sha256:0123456789abcdef".into(),
            staged: true,
            stages: vec![
                PlanStageView {
                    name: "canary".into(),
                    max_unavailable: 1,
                    bake_seconds: 600,
                    approval: "manual".into(),
                    clusters: vec![
                        cluster("edge-1", true, ""),
                        cluster("edge-2", false, "boom"),
                    ],
                },
                PlanStageView {
                    name: "empty".into(),
                    max_unavailable: 1,
                    bake_seconds: 0,
                    approval: "auto".into(),
                    clusters: vec![],
                },
            ],
            warnings: vec!["stage \"empty\": selector ring=x matches no cluster".into()],
            diff: "--- a\n+++ b\n".into(),
        };
        let text = plan_text(&plan);
        assert!(
            text.starts_with("app shop from source main at 0123456789ab"),
            "{text}"
        );
        assert!(
            text.contains("stage 1/2 canary: maxUnavailable 1, bake 10m, approval manual\n"),
            "{text}"
        );
        let row = text.lines().find(|l| l.contains("edge-1")).unwrap();
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            ["edge-1", "1", "2", "0", "7", "deferred", "(offline)"]
        );
        assert!(text.contains("render failed: boom"), "{text}");
        assert!(
            text.contains(
                "stage 2/2 empty: maxUnavailable 1, bake none, approval auto\n  (no cluster)\n"
            ),
            "{text}"
        );
        assert!(text.contains("warnings:\n  - stage \"empty\""), "{text}");
        assert!(text.ends_with("--- a\n+++ b\n"), "{text}");
    }
}
