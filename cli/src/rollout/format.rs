//! Rollouts as people read them: the `rollout list` table, the `rollout status` report and the
//! one-line summary of an action. Pure: views and `now` (Unix seconds) in, text out.

use comfy_table::{Table, presets::NOTHING};

use super::{Action, RolloutClusterView, RolloutStageView, RolloutView};

/// The first 12 characters of a release id or commit.
pub fn short(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    &id[..id.len().min(12)]
}

/// A duration in its two largest units, as in a table column: `45s`, `3m12s`, `2h5m`, `1d4h`.
pub fn compact(secs: i64) -> String {
    let s = secs.max(0);
    let (d, h, m, s) = (s / 86_400, s % 86_400 / 3_600, s % 3_600 / 60, s % 60);
    let two = |a: i64, ua: &str, b: i64, ub: &str| {
        if b == 0 {
            format!("{a}{ua}")
        } else {
            format!("{a}{ua}{b}{ub}")
        }
    };
    if d > 0 {
        two(d, "d", h, "h")
    } else if h > 0 {
        two(h, "h", m, "m")
    } else if m > 0 {
        two(m, "m", s, "s")
    } else {
        format!("{s}s")
    }
}

fn ago(now: i64, then: i64) -> String {
    if then == 0 {
        "-".into()
    } else {
        format!("{} ago", compact(now - then))
    }
}

fn age(now: i64, then: i64) -> String {
    if then == 0 {
        "-".into()
    } else {
        compact(now - then)
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// `eu 2/3`: the current stage and where it stands among the stages.
pub fn stage_position(r: &RolloutView) -> String {
    match r.current_stage() {
        Some((i, s)) => format!("{} {}/{}", s.name, i + 1, r.stages.len()),
        None => "-".into(),
    }
}

/// The phase, with its reason when it has one: `paused: 2 clusters failed, ...`.
pub fn phase_with_reason(r: &RolloutView) -> String {
    if r.reason.is_empty() {
        r.phase.clone()
    } else {
        format!("{}: {}", r.phase, r.reason)
    }
}

/// `flotilla rollout list`: one row per rollout.
pub fn list_table(rollouts: &[RolloutView], now: i64) -> String {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(vec![
        "APP", "PHASE", "STAGE", "PROGRESS", "FAILED", "DEFERRED", "STARTED", "RELEASE", "REASON",
    ]);
    for r in rollouts {
        let (healthy, total, failed, deferred) = r.counts();
        t.add_row(vec![
            r.app.clone(),
            r.phase.clone(),
            stage_position(r),
            format!("{healthy}/{total}"),
            failed.to_string(),
            deferred.to_string(),
            age(now, r.started_at),
            short(&r.release).to_string(),
            r.reason.clone(),
        ]);
    }
    t.to_string()
}

/// `12/20 healthy, 1 updating, 2 failed, 3 deferred, 4 waiting`, zero counts left out.
pub(crate) fn stage_counts(s: &RolloutStageView) -> String {
    let mut out = format!("{}/{} healthy", s.healthy, s.total);
    for (n, what) in [
        (s.updating, "updating"),
        (s.failed, "failed"),
        (s.deferred, "deferred"),
        (s.waiting, "waiting"),
    ] {
        if n > 0 {
            out.push_str(&format!(", {n} {what}"));
        }
    }
    out
}

/// `errors on edge-1: pass (3 passed, 0 failed of 1 allowed): value 0.01 is at most 0.05, 12s ago`.
fn analysis_line(a: &super::RolloutAnalysisView, now: i64) -> String {
    let on = if a.cluster.is_empty() {
        String::new()
    } else {
        format!(" on {}", a.cluster)
    };
    if a.last.is_empty() {
        return format!(
            "{}{on}: not measured yet (every {}s during the bake)",
            a.query, a.interval_seconds
        );
    }
    let run = if a.inconclusive_run > 0 {
        format!(
            ", {} of {} inconclusive in a row",
            a.inconclusive_run, a.inconclusive_limit
        )
    } else {
        String::new()
    };
    format!(
        "{}{on}: {} ({} passed, {} failed of {} allowed{run}): {}, {}",
        a.query,
        a.last,
        a.passes,
        a.failures,
        a.failure_limit,
        a.detail,
        ago(now, a.last_at)
    )
}

fn bake(s: &RolloutStageView, now: i64) -> String {
    if s.bake_seconds == 0 {
        return "none".into();
    }
    let length = compact(i64::try_from(s.bake_seconds).unwrap_or(i64::MAX));
    match s.state.as_str() {
        "baking" if s.bake_ends_at > 0 => {
            format!("{length}, {} left", compact(s.bake_ends_at - now))
        }
        "completed" => format!("{length}, done"),
        _ => length,
    }
}

fn approval(s: &RolloutStageView, app: &str, now: i64) -> String {
    if s.approval != "manual" {
        return or_dash(&s.approval);
    }
    if !s.approved_by.is_empty() {
        format!(
            "manual, approved by {} {}",
            s.approved_by,
            ago(now, s.approved_at)
        )
    } else if s.state == "awaiting-approval" {
        format!("manual, waiting for approval (flotilla rollout approve {app})")
    } else {
        "manual".into()
    }
}

fn clusters_table(clusters: &[&RolloutClusterView], now: i64) -> String {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(vec![
        "CLUSTER", "STAGE", "STATE", "SINCE", "VERSION", "RELEASE", "REASON",
    ]);
    for c in clusters {
        t.add_row(vec![
            if c.name.is_empty() { &c.id } else { &c.name }.clone(),
            c.stage.clone(),
            c.state.clone(),
            ago(now, c.since),
            if c.version == 0 {
                "-".into()
            } else {
                c.version.to_string()
            },
            or_dash(short(&c.release)),
            c.reason.clone(),
        ]);
    }
    // comfy-table pads each cell by one space: one more indents the table under its heading.
    t.to_string().lines().map(|l| format!(" {l}\n")).collect()
}

/// `flotilla rollout status`: the rollout, its stages, the clusters worth a look (every cluster
/// with `all_clusters`), and its warnings.
pub fn status_text(r: &RolloutView, all_clusters: bool, now: i64) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<17}{v}\n"));
    line("App:", format!("{} (rollout #{})", r.app, r.id));
    line("Source:", or_dash(&r.source));
    let at = |release: &str, commit: &str| match (release.is_empty(), commit.is_empty()) {
        (true, _) => "<none>".to_string(),
        (false, true) => short(release).to_string(),
        (false, false) => format!("{} at commit {}", short(release), short(commit)),
    };
    line("Release:", at(&r.release, &r.release_commit));
    line("Previous:", at(&r.previous, &r.previous_commit));
    line("Phase:", phase_with_reason(r));
    line("Started:", ago(now, r.started_at));
    line("Ended:", ago(now, r.ended_at));
    let (healthy, total, failed, _) = r.counts();
    line(
        "Failure budget:",
        format!(
            "{failed} failed of {} allowed, on failure: {}",
            r.failure_budget,
            or_dash(&r.on_failure)
        ),
    );
    line("Progress:", format!("{healthy}/{total} clusters healthy"));
    let n = r.stages.len();
    for (i, s) in r.stages.iter().enumerate() {
        out.push_str(&format!("Stage {}/{n} {}: {}\n", i + 1, s.name, s.state));
        let mut field = |k: &str, v: String| out.push_str(&format!("  {k:<17}{v}\n"));
        field("Clusters:", stage_counts(s));
        field("Max unavailable:", s.max_unavailable.to_string());
        field("Bake:", bake(s, now));
        field("Approval:", approval(s, &r.app, now));
        for a in &s.analysis {
            field("Analysis:", analysis_line(a, now));
        }
    }
    let shown: Vec<&RolloutClusterView> = r
        .clusters
        .iter()
        .filter(|c| all_clusters || !matches!(c.state.as_str(), "waiting" | "healthy"))
        .collect();
    if shown.is_empty() {
        out.push_str(if all_clusters {
            "Clusters:        <none>\n"
        } else {
            "Clusters:        none updating, failed or deferred (--clusters lists all)\n"
        });
    } else {
        out.push_str(if all_clusters {
            "Clusters:\n"
        } else {
            "Clusters (updating, failed, deferred; --clusters lists all):\n"
        });
        out.push_str(&clusters_table(&shown, now));
    }
    if !r.warnings.is_empty() {
        out.push_str("Warnings:\n");
        for w in &r.warnings {
            out.push_str(&format!("  - {w}\n"));
        }
    }
    out
}

/// What `rollout approve|pause|resume|rollback` prints: the action and where the rollout is now.
pub fn action_summary(action: Action, r: &RolloutView) -> String {
    let phase = if r.reason.is_empty() {
        r.phase.clone()
    } else {
        format!("{} ({})", r.phase, r.reason)
    };
    let stage = match r.current_stage() {
        Some((i, s)) => format!(
            ", stage {}/{} {} {}",
            i + 1,
            r.stages.len(),
            s.name,
            s.state
        ),
        None => String::new(),
    };
    format!(
        "rollout {} #{} {}; now {phase}{stage}",
        r.app,
        r.id,
        action.done()
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flotilla_proto::v1 as pb;

    /// 2026-12-01T10:00:00Z, the tests' `now`.
    pub(crate) const NOW: i64 = 1_796_119_200;

    pub(crate) fn stage(name: &str, state: &str, counts: [u32; 5]) -> pb::RolloutStage {
        let [waiting, updating, healthy, failed, deferred] = counts;
        pb::RolloutStage {
            name: name.into(),
            state: state.into(),
            approval: "auto".into(),
            max_unavailable: 1,
            total: counts.iter().sum(),
            waiting,
            updating,
            healthy,
            failed,
            deferred,
            ..Default::default()
        }
    }

    fn cluster(name: &str, stage: &str, state: &str) -> pb::RolloutCluster {
        pb::RolloutCluster {
            id: format!("id-{name}"),
            name: name.into(),
            stage: stage.into(),
            state: state.into(),
            release: "rel0123456789abcdef".into(),
            ..Default::default()
        }
    }

    /// A web rollout in stage 2 of 3: canary done, eu updating one of three, us pending.
    pub(crate) fn progressing() -> pb::Rollout {
        let mut eu_1 = cluster("eu-1", "eu", "healthy");
        eu_1.since = NOW - 90;
        eu_1.version = 12;
        let mut eu_2 = cluster("eu-2", "eu", "updating");
        eu_2.since = NOW - 30;
        eu_2.version = 13;
        pb::Rollout {
            id: 7,
            app: "web".into(),
            source: "platform".into(),
            release: "rel0123456789abcdef".into(),
            release_commit: "c0ffee0123456789".into(),
            previous: "prev0123456789abcd".into(),
            previous_commit: "deadbeef01234567".into(),
            phase: "progressing".into(),
            started_at: NOW - 754,
            stages: vec![
                {
                    let mut s = stage("canary", "completed", [0, 0, 1, 0, 0]);
                    s.bake_seconds = 300;
                    s
                },
                stage("eu", "progressing", [1, 1, 1, 0, 0]),
                stage("us", "pending", [4, 0, 0, 0, 0]),
            ],
            clusters: vec![
                cluster("canary-1", "canary", "healthy"),
                eu_1,
                eu_2,
                cluster("eu-3", "eu", "waiting"),
                cluster("us-1", "us", "waiting"),
            ],
            failure_budget: 1,
            on_failure: "pause".into(),
            ..Default::default()
        }
    }

    fn view(r: pb::Rollout) -> RolloutView {
        r.into()
    }

    fn lines(s: &str) -> Vec<String> {
        s.lines().map(|l| l.trim_end().to_string()).collect()
    }

    #[test]
    fn ids_are_shown_by_their_first_twelve_hex_digits() {
        assert_eq!(short("sha256:8f332a9c1d0e4b5a6978"), "8f332a9c1d0e");
        assert_eq!(short("0123456789abcdef"), "0123456789ab");
        assert_eq!(short("abc"), "abc");
    }

    #[test]
    fn compact_durations() {
        for (secs, want) in [
            (0, "0s"),
            (45, "45s"),
            (60, "1m"),
            (192, "3m12s"),
            (3_600, "1h"),
            (7_500, "2h5m"),
            (100_800, "1d4h"),
            (-5, "0s"),
        ] {
            assert_eq!(compact(secs), want, "{secs}");
        }
    }

    #[test]
    fn list_shows_stage_position_progress_and_reason() {
        let mut paused = progressing();
        paused.app = "api".into();
        paused.phase = "paused".into();
        paused.reason = "paused by admin".into();
        paused.started_at = NOW - 7_500;
        paused.stages[1].failed = 1;
        paused.stages[1].deferred = 2;
        paused.stages[1].total += 3;
        let table = list_table(&[view(progressing()), view(paused)], NOW);
        let got = lines(&table);
        assert_eq!(got.len(), 3, "{table}");
        let cols = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            cols(&got[0]),
            [
                "APP", "PHASE", "STAGE", "PROGRESS", "FAILED", "DEFERRED", "STARTED", "RELEASE",
                "REASON"
            ]
        );
        assert_eq!(
            cols(&got[1]),
            [
                "web",
                "progressing",
                "eu",
                "2/3",
                "2/8",
                "0",
                "0",
                "12m34s",
                "rel012345678"
            ]
        );
        assert_eq!(
            cols(&got[2]),
            [
                "api",
                "paused",
                "eu",
                "2/3",
                "2/11",
                "1",
                "2",
                "2h5m",
                "rel012345678",
                "paused",
                "by",
                "admin"
            ]
        );
    }

    #[test]
    fn status_of_a_progressing_rollout() {
        let got = status_text(&view(progressing()), false, NOW);
        let want = "\
App:             web (rollout #7)
Source:          platform
Release:         rel012345678 at commit c0ffee012345
Previous:        prev01234567 at commit deadbeef0123
Phase:           progressing
Started:         12m34s ago
Ended:           -
Failure budget:  0 failed of 1 allowed, on failure: pause
Progress:        2/8 clusters healthy
Stage 1/3 canary: completed
  Clusters:        1/1 healthy
  Max unavailable: 1
  Bake:            5m, done
  Approval:        auto
Stage 2/3 eu: progressing
  Clusters:        1/3 healthy, 1 updating, 1 waiting
  Max unavailable: 1
  Bake:            none
  Approval:        auto
Stage 3/3 us: pending
  Clusters:        0/4 healthy, 4 waiting
  Max unavailable: 1
  Bake:            none
  Approval:        auto
Clusters (updating, failed, deferred; --clusters lists all):
  CLUSTER  STAGE  STATE     SINCE    VERSION  RELEASE       REASON
  eu-2     eu     updating  30s ago  13       rel012345678
";
        assert_eq!(lines(&got), lines(want), "{got}");
    }

    #[test]
    fn status_with_all_clusters_lists_waiting_and_healthy_too() {
        let got = status_text(&view(progressing()), true, NOW);
        for name in ["canary-1", "eu-1", "eu-2", "eu-3", "us-1"] {
            assert!(
                got.lines().any(|l| l.trim_start().starts_with(name)),
                "{name} missing:\n{got}"
            );
        }
        let without = status_text(&view(progressing()), false, NOW);
        assert!(!without.contains("eu-1"), "{without}");
    }

    #[test]
    fn status_while_baking_shows_time_left() {
        let mut r = progressing();
        r.stages[1] = stage("eu", "baking", [0, 0, 3, 0, 0]);
        r.stages[1].bake_seconds = 600;
        r.stages[1].healthy_at = NOW - 348;
        r.stages[1].bake_ends_at = NOW + 252;
        let got = status_text(&view(r), false, NOW);
        assert!(got.contains("Stage 2/3 eu: baking\n"), "{got}");
        assert!(
            got.contains("  Bake:            10m, 4m12s left\n"),
            "{got}"
        );
    }

    #[test]
    fn status_awaiting_approval_says_how_and_then_who_approved() {
        let mut r = progressing();
        r.stages[1] = stage("eu", "completed", [0, 0, 3, 0, 0]);
        r.stages[2].state = "awaiting-approval".into();
        r.stages[2].approval = "manual".into();
        let got = status_text(&view(r.clone()), false, NOW);
        assert!(got.contains("Stage 3/3 us: awaiting-approval\n"), "{got}");
        assert!(
            got.contains(
                "  Approval:        manual, waiting for approval (flotilla rollout approve web)\n"
            ),
            "{got}"
        );
        r.stages[2].state = "progressing".into();
        r.stages[2].approved_by = "ops-admin".into();
        r.stages[2].approved_at = NOW - 360;
        let got = status_text(&view(r), false, NOW);
        assert!(
            got.contains("  Approval:        manual, approved by ops-admin 6m ago\n"),
            "{got}"
        );
    }

    #[test]
    fn status_paused_by_the_failure_budget_shows_reason_and_failed_clusters() {
        let mut r = progressing();
        r.phase = "paused".into();
        r.reason = "2 clusters failed, over the failure budget of 1".into();
        r.stages[1] = stage("eu", "progressing", [0, 0, 1, 2, 0]);
        for c in &mut r.clusters[1..4] {
            c.state = "failed".into();
            c.since = 0;
            c.reason = "applying the release failed".into();
        }
        r.clusters[1].state = "healthy".into();
        r.clusters[1].reason.clear();
        r.clusters.push(cluster("us-9", "us", "deferred"));
        r.warnings = vec!["stage \"apac\" has no clusters".into()];
        let got = status_text(&view(r), false, NOW);
        let want_tail = "\
Clusters (updating, failed, deferred; --clusters lists all):
  CLUSTER  STAGE  STATE     SINCE  VERSION  RELEASE       REASON
  eu-2     eu     failed    -      13       rel012345678  applying the release failed
  eu-3     eu     failed    -      -        rel012345678  applying the release failed
  us-9     us     deferred  -      -        rel012345678
Warnings:
  - stage \"apac\" has no clusters
";
        assert!(
            got.contains(
                "Phase:           paused: 2 clusters failed, over the failure budget of 1\n"
            ),
            "{got}"
        );
        assert!(
            got.contains("Failure budget:  2 failed of 1 allowed, on failure: pause\n"),
            "{got}"
        );
        let tail: Vec<String> = lines(&got).into_iter().rev().take(7).rev().collect();
        assert_eq!(tail, lines(want_tail), "{got}");
    }

    #[test]
    fn status_rolled_back_shows_the_end_and_the_previous_release() {
        let mut r = progressing();
        r.phase = "rolled-back".into();
        r.reason = "2 clusters failed, over the failure budget of 1".into();
        r.on_failure = "rollback".into();
        r.ended_at = NOW - 60;
        let got = status_text(&view(r.clone()), false, NOW);
        assert!(
            got.contains("Phase:           rolled-back: 2 clusters failed"),
            "{got}"
        );
        assert!(got.contains("Ended:           1m ago\n"), "{got}");
        assert!(got.contains("on failure: rollback\n"), "{got}");
        r.previous.clear();
        r.previous_commit.clear();
        let got = status_text(&view(r), false, NOW);
        assert!(got.contains("Previous:        <none>\n"), "{got}");
    }

    /// The `rollout status` example in README.md is this formatter's output, kept so by this test.
    #[test]
    fn readme_status_example_is_real_output() {
        let readme = include_str!("../../../README.md");
        let start = readme
            .find("$ flotilla rollout status web\n")
            .expect("README has the rollout status example")
            + "$ flotilla rollout status web\n".len();
        let example = &readme[start..start + readme[start..].find("```").unwrap()];
        let mut r = progressing();
        r.release = "3f2a9c1d0e4b5a6978".into();
        r.release_commit = "8c1e2f3a4b5c6d7e".into();
        r.previous = "a1b2c3d4e5f60718".into();
        r.previous_commit = "7d6e5f4a3b2c1d0e".into();
        r.stages[1] = stage("eu", "baking", [0, 0, 3, 1, 0]);
        r.stages[1].max_unavailable = 2;
        r.stages[1].bake_seconds = 600;
        r.stages[1].bake_ends_at = NOW + 252;
        r.stages[2] = stage("us", "pending", [3, 0, 0, 0, 0]);
        r.stages[2].approval = "manual".into();
        let mut failed = cluster("eu-4", "eu", "failed");
        failed.release = r.release.clone();
        failed.version = 13;
        failed.reason = "applying the release failed".into();
        r.clusters = vec![cluster("canary-1", "canary", "healthy"), failed];
        let got = status_text(&view(r), false, NOW);
        assert_eq!(lines(&got), lines(example), "{got}");
    }

    #[test]
    fn action_summaries() {
        let r = view(progressing());
        assert_eq!(
            action_summary(Action::Approve, &r),
            "rollout web #7 approved; now progressing, stage 2/3 eu progressing"
        );
        let mut paused = r.clone();
        paused.phase = "paused".into();
        paused.reason = "paused by admin".into();
        assert_eq!(
            action_summary(Action::Pause, &paused),
            "rollout web #7 paused; now paused (paused by admin), stage 2/3 eu progressing"
        );
    }

    #[test]
    fn analysis_lines_name_the_query_cluster_outcome_and_counts() {
        let a = super::super::RolloutAnalysisView {
            query: "errors".into(),
            cluster: "canary-1".into(),
            passes: 3,
            failures: 1,
            inconclusive_run: 0,
            last: "fail".into(),
            last_at: 1_000,
            detail: "value 0.5 is not at most 0.05".into(),
            failure_limit: 0,
            inconclusive_limit: 3,
            interval_seconds: 30,
        };
        assert_eq!(
            analysis_line(&a, 1_012),
            "errors on canary-1: fail (3 passed, 1 failed of 0 allowed): value 0.5 is not at most 0.05, 12s ago"
        );
        let waiting = super::super::RolloutAnalysisView {
            query: "slo".into(),
            interval_seconds: 30,
            ..Default::default()
        };
        assert_eq!(
            analysis_line(&waiting, 1_012),
            "slo: not measured yet (every 30s during the bake)"
        );
        let unsure = super::super::RolloutAnalysisView {
            last: "inconclusive".into(),
            inconclusive_run: 2,
            inconclusive_limit: 3,
            last_at: 1_000,
            detail: "Prometheus at http://prom:9090 cannot be reached: connection refused".into(),
            ..waiting
        };
        assert_eq!(
            analysis_line(&unsure, 1_012),
            "slo: inconclusive (0 passed, 0 failed of 0 allowed, 2 of 3 inconclusive in a row): Prometheus at http://prom:9090 cannot be reached: connection refused, 12s ago"
        );
    }
}
