//! Printing data as tables for people or JSON for programs.

use comfy_table::{Table, presets::NOTHING};
use serde::Serialize;

use crate::client::{CapabilitiesView, ClusterStatusView, ClusterView, StatusView};

/// How a command prints data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns.
    Table,
    /// JSON.
    Json,
}

/// Prints `value` as pretty JSON.
pub fn print_json<T: Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("views serialize")
    );
}

pub(crate) fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(header.to_vec());
    t
}

fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

fn ago(now: i64, then: i64) -> String {
    if then == 0 {
        "never".into()
    } else {
        format!("{}s ago", (now - then).max(0))
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Renders the cluster list as a table.
pub fn clusters_table(clusters: &[ClusterView]) -> String {
    let now = now();
    let mut t = table(&[
        "NAME",
        "ID",
        "LABELS",
        "DESIRED",
        "APPLIED",
        "LAST CONTACT",
        "REJECTION",
    ]);
    for c in clusters {
        t.add_row(vec![
            c.name.clone(),
            c.id.clone(),
            flotilla_common::labels::format_labels(&c.labels),
            c.desired_version.to_string(),
            c.applied_version.to_string(),
            ago(now, c.last_contact),
            c.rejection.clone(),
        ]);
    }
    t.to_string()
}

/// When a certificate expires, relative to now.
fn expiry(now: i64, at: i64) -> String {
    match at {
        0 => "unknown".into(),
        at if at <= now => format!(
            "expired {}s ago (the agent must be re-enrolled with a new token)",
            now - at
        ),
        at => format!(
            "in {}",
            humantime::format_duration(std::time::Duration::from_secs((at - now) as u64))
        ),
    }
}

/// Renders one cluster as `flotilla cluster describe` shows it: key/value lines, then its apps.
pub fn describe_cluster(view: &ClusterStatusView) -> String {
    let now = now();
    let c = &view.cluster;
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<20}{v}\n"));
    line("Name:", c.name.clone());
    line("ID:", c.id.clone());
    line(
        "Labels:",
        if c.labels.is_empty() {
            "<none>".into()
        } else {
            flotilla_common::labels::format_labels(&c.labels)
        },
    );
    line("Registered:", ago(now, c.registered_at));
    line("Certificate expires:", expiry(now, c.cert_expires_at));
    line("Last renewal:", ago(now, c.renewed_at));
    line("Last contact:", ago(now, c.last_contact));
    line("Kubernetes:", kubernetes(&c.capabilities));
    line("Desired version:", c.desired_version.to_string());
    line("Applied version:", c.applied_version.to_string());
    line(
        "Last error:",
        if c.last_error.is_empty() {
            "<none>".into()
        } else {
            c.last_error.clone()
        },
    );
    out.push_str("Apps:\n");
    let mut apps = table(&[
        "  APP", "FROM", "DESIRED", "APPLIED", "STATE", "HEALTH", "MESSAGE",
    ]);
    for a in &view.apps {
        apps.add_row(vec![
            format!("  {}", a.app),
            if a.origin.is_empty() {
                "-".to_string()
            } else {
                a.origin.clone()
            },
            short(&a.desired_commit).to_string(),
            short(&a.applied_commit).to_string(),
            or_unknown(&a.phase),
            or_unknown(&a.health),
            if a.message.is_empty() {
                a.health_reason.clone()
            } else {
                a.message.clone()
            },
        ]);
    }
    out.push_str(&apps.to_string());
    out.push('\n');
    out
}

/// The reported version and how many API versions: the full list is in `-o json`.
fn kubernetes(caps: &CapabilitiesView) -> String {
    match (caps.kube_version.as_str(), caps.api_versions.len()) {
        ("", 0) => "<none reported>".into(),
        ("", n) => format!("unknown version, {n} API versions"),
        (v, n) => format!("{v}, {n} API versions"),
    }
}

fn or_unknown(s: &str) -> String {
    if s.is_empty() {
        "unknown".into()
    } else {
        s.to_string()
    }
}

/// Renders sources and per-app status as tables.
pub fn status_table(status: &StatusView) -> String {
    let now = now();
    let mut sources = table(&[
        "SOURCE",
        "BRANCH",
        "FETCHED",
        "IN FORCE",
        "LAST FETCH",
        "ERROR",
    ]);
    for s in &status.sources {
        sources.add_row(vec![
            s.name.clone(),
            s.branch.clone(),
            short(&s.fetched_commit).to_string(),
            short(&s.rendered_commit).to_string(),
            ago(now, s.last_fetch),
            s.error.clone(),
        ]);
    }
    let mut apps = table(&[
        "CLUSTER",
        "APP",
        "DESIRED",
        "VERSION",
        "APPLIED",
        "VERSION",
        "STATE",
        "HEALTH",
        "LAST CONTACT",
        "MESSAGE",
    ]);
    for c in &status.clusters {
        let message_for = |m: &str| {
            if c.cluster.rejection.is_empty() {
                m.to_string()
            } else {
                format!("{m} [rejected newest state: {}]", c.cluster.rejection)
            }
        };
        if c.apps.is_empty() {
            apps.add_row(vec![
                c.cluster.name.clone(),
                "-".into(),
                "".into(),
                c.cluster.desired_version.to_string(),
                "".into(),
                c.cluster.applied_version.to_string(),
                "".into(),
                "".into(),
                ago(now, c.cluster.last_contact),
                message_for(""),
            ]);
        }
        for a in &c.apps {
            apps.add_row(vec![
                c.cluster.name.clone(),
                a.app.clone(),
                short(&a.desired_commit).to_string(),
                a.desired_version.to_string(),
                short(&a.applied_commit).to_string(),
                a.applied_version.to_string(),
                if a.phase.is_empty() {
                    "unknown".into()
                } else {
                    a.phase.clone()
                },
                if a.health.is_empty() {
                    "unknown".into()
                } else {
                    a.health.clone()
                },
                ago(now, c.cluster.last_contact),
                message_for(&match (a.message.is_empty(), a.health_reason.is_empty()) {
                    (_, true) => a.message.clone(),
                    (true, false) => a.health_reason.clone(),
                    (false, false) => format!("{}; {}", a.message, a.health_reason),
                }),
            ]);
        }
    }
    if status.notification_targets.is_empty() {
        return format!("{sources}\n\n{apps}");
    }
    let mut targets = table(&[
        "NOTIFICATION TARGET",
        "TYPE",
        "STATE",
        "QUEUED",
        "DELIVERED THROUGH",
    ]);
    for t in &status.notification_targets {
        targets.add_row(vec![
            t.name.clone(),
            t.kind.clone(),
            if t.down_since > 0 {
                format!("down since {}", ago(now, t.down_since))
            } else {
                "up".into()
            },
            t.queued.to_string(),
            format!("event {}", t.delivered_seq),
        ]);
    }
    format!("{sources}\n\n{apps}\n\n{targets}")
}

/// One event as a line: `seq time severity kind scope: message`.
pub fn event_line(e: &crate::client::EventView) -> String {
    let when = u64::try_from(e.at)
        .map(|s| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(s),
            )
            .to_string()
        })
        .unwrap_or_else(|_| e.at.to_string());
    let scope: Vec<String> = [
        ("source", &e.source),
        ("app", &e.app),
        ("cluster", &e.cluster),
    ]
    .iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| format!("{k}={v}"))
    .collect();
    format!(
        "{:>5} {when} {:<7} {:<18} {}: {}",
        e.seq,
        e.severity,
        e.kind,
        scope.join(" "),
        e.message
    )
}
