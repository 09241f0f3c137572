//! Alerts (issue 16): the leader delivers the events operators should hear of to the notification
//! targets of hub.yaml (`notifications.targets`): generic JSON webhooks and Slack-compatible incoming
//! webhooks, each with a filter and an optional HMAC-SHA256 signature.
//!
//! The event log is the queue. Each target has a cursor in the store (meta `notify/NAME`: the
//! sequence number of the last event it was given or skipped), so delivery is durable and
//! at-least-once: a new leader, or a restarted hub, goes on from the stored cursor, and an event
//! delivered just before a failover may be delivered again. Every delivery carries an idempotency key
//! (`X-Flotilla-Delivery`, also `id` in the body) that is the same for every attempt, so a receiver
//! can drop repeats.
//!
//! Each target has its own task: a target that is down holds only its own queue, never the controller
//! or the other targets. It retries the head of its queue with capped, jittered exponential backoff
//! ([`backoff`]); past `notifications.targetDownAfter` (1m) of failures it records a `notification-target-down` event (other
//! targets hear of it), and `notification-target-recovered` once a delivery succeeds again. The queue
//! is bounded by `notifications.queueLimit`: a target further behind than that skips its oldest
//! events, counts them in `flotilla_hub_notifications_dropped_total` and logs how many it dropped. A
//! target added to hub.yaml starts at the newest event (it is not sent the history).
//!
//! What goes out is the event as `flotilla events` shows it: its messages are written by the hub and
//! never carry a token, a webhook secret or a target's URL.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::{EventFilter, NotificationSettings, TargetConfig, TargetKind, TargetUrl};
use crate::events::{Event, EventLog, NewEvent, Severity};
use crate::metrics::{HubMetrics, TargetLabels};
use crate::store::{HubStore, Notice};

/// Event kinds a target gets when its filter names none.
pub const DEFAULT_ALERTS: &[&str] = &[
    "commit-in-force",
    "render-failed",
    "fetch-failed",
    "rollout-started",
    "rollout-stage-completed",
    "rollout-awaiting-approval",
    "rollout-halted",
    "rollout-rolled-back",
    "rollout-completed",
    "rollout-analysis-failed",
    "app-failed",
    "app-drift",
    "app-drift-corrected",
    "state-rejected",
    "cluster-offline",
    "certificate-expiring",
    "notification-target-down",
];

/// Meta key prefix of the targets' cursors.
pub const CURSOR_PREFIX: &str = "notify/";

/// Meta key prefix of when a target went down (unix seconds; 0 while up), for `flotilla status`.
pub const DOWN_PREFIX: &str = "notify-down/";

/// First and longest wait between two attempts at one delivery.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// See [`BACKOFF_FIRST`].
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);

/// Events read from the store at a time.
const BATCH: usize = 256;

/// How often a cursor is stored while a target works through a backlog.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
pub fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || name.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    if !name.ends_with(last) {
        return false;
    }
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// Whether a target with `filter` gets `event`: every list of the filter that is not empty must
/// match (an empty `events` list means [`DEFAULT_ALERTS`]); an event that names no app or no cluster
/// passes the app or cluster list.
pub fn matches(filter: &EventFilter, event: &NewEvent) -> bool {
    let kind = if filter.events.is_empty() {
        DEFAULT_ALERTS.contains(&event.kind.as_str())
    } else {
        filter.events.iter().any(|p| glob(p, &event.kind))
    };
    let named = |list: &[String], value: &str| {
        list.is_empty() || value.is_empty() || list.iter().any(|p| glob(p, value))
    };
    kind && named(&filter.apps, &event.app)
        && named(&filter.clusters, &event.cluster)
        && (filter.severities.is_empty() || filter.severities.contains(&event.severity))
}

/// The wait before attempt `attempt + 1` of a delivery (`attempt` failures so far, from 1): doubling
/// from [`BACKOFF_FIRST`] up to [`BACKOFF_CAP`], then scaled by `jitter` (from 0.5 to 1.0), so targets
/// that failed together do not retry together.
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let doubled = BACKOFF_FIRST.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    doubled.min(BACKOFF_CAP).mul_f64(jitter.clamp(0.5, 1.0))
}

/// The idempotency key of an event from the hub whose signing key's id is `hub`.
pub fn delivery_id(hub: &str, seq: u64) -> String {
    format!("flotilla-{hub}-{seq}")
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WebhookBody<'a> {
    id: &'a str,
    seq: u64,
    at: String,
    kind: &'a str,
    severity: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    source: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    app: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    cluster: &'a str,
    message: &'a str,
}

/// Escapes what Slack's mrkdwn treats as markup.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The body a target of `kind` is sent for `event`.
pub fn payload(kind: TargetKind, event: &Event, id: &str) -> Vec<u8> {
    let e = &event.event;
    let at = humantime::format_rfc3339_seconds(
        SystemTime::UNIX_EPOCH + Duration::from_secs(e.at.max(0) as u64),
    )
    .to_string();
    match kind {
        TargetKind::Webhook => serde_json::to_vec(&WebhookBody {
            id,
            seq: event.seq,
            at,
            kind: &e.kind,
            severity: e.severity.as_str(),
            source: &e.source,
            app: &e.app,
            cluster: &e.cluster,
            message: &e.message,
        }),
        TargetKind::Slack => {
            let mut subject = vec![format!("*{}*", e.kind)];
            for (what, value) in [
                ("source", &e.source),
                ("app", &e.app),
                ("cluster", &e.cluster),
            ] {
                if !value.is_empty() {
                    subject.push(format!("{what} `{}`", slack_escape(value)));
                }
            }
            let color = match e.severity {
                Severity::Info => "good",
                Severity::Warning => "warning",
                Severity::Error => "danger",
            };
            let text = format!(
                "[{}] {}: {}",
                e.severity.as_str(),
                subject.join(" · "),
                slack_escape(&e.message)
            );
            serde_json::to_vec(&serde_json::json!({
                "text": text,
                "attachments": [{
                    "color": color,
                    "footer": format!("flotilla event {} · {at}", event.seq),
                }],
            }))
        }
    }
    .expect("alert bodies always serialize")
}

/// Why one delivery failed.
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("the target answered {0}")]
    Status(u16),
    #[error("{0}")]
    Transport(String),
    #[error("{0}")]
    Config(String),
}

/// One target as its task holds it.
struct Target {
    config: TargetConfig,
    client: reqwest::Client,
    labels: TargetLabels,
}

impl Target {
    fn url(&self) -> Result<String, DeliveryError> {
        match &self.config.url {
            TargetUrl::Inline(url) => Ok(url.clone()),
            TargetUrl::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim().to_string())
                .map_err(|e| {
                    DeliveryError::Config(format!("cannot read urlFile {}: {e}", path.display()))
                }),
        }
    }

    fn secret(&self) -> Result<Option<Vec<u8>>, DeliveryError> {
        let Some(path) = &self.config.secret_file else {
            return Ok(None);
        };
        let bytes = std::fs::read(path).map_err(|e| {
            DeliveryError::Config(format!("cannot read secretFile {}: {e}", path.display()))
        })?;
        let trimmed = bytes.trim_ascii();
        if trimmed.is_empty() {
            return Err(DeliveryError::Config(format!(
                "secretFile {} is empty",
                path.display()
            )));
        }
        Ok(Some(trimmed.to_vec()))
    }

    /// One attempt at delivering `event`. The URL and the secret are read at each attempt (a rotated
    /// file is used at once) and appear in no error.
    async fn deliver(&self, event: &Event, id: &str) -> Result<(), DeliveryError> {
        let url = self.url()?;
        let secret = self.secret()?;
        let body = payload(self.config.kind, event, id);
        let mut request = self
            .client
            .post(&url)
            .header("content-type", "application/json")
            .header(
                "user-agent",
                concat!("flotilla-hub/", env!("CARGO_PKG_VERSION")),
            )
            .header("x-flotilla-event", event.event.kind.as_str())
            .header("x-flotilla-delivery", id)
            .header("idempotency-key", id);
        if let Some(secret) = secret {
            let mac = crate::webhooks::hmac_sha256(&secret, &body);
            request = request.header(
                "x-flotilla-signature",
                format!("sha256={}", hex::encode(mac)),
            );
        }
        let response = request.body(body).send().await.map_err(|e| {
            // reqwest's message names the URL; a Slack URL is a secret.
            let e = e.without_url();
            DeliveryError::Transport(if e.is_timeout() {
                format!("no answer within {:?}", self.config.timeout)
            } else {
                crate::source::chain(&e)
            })
        })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Status(status.as_u16()))
        }
    }
}

/// The leader's alert delivery: one task per target, for one term.
pub struct Notifier {
    /// The store, fenced to the leader's term (cursor writes of a deposed leader are refused).
    pub store: HubStore,
    /// Where `notification-target-down` and `-recovered` are recorded.
    pub events: EventLog,
    /// Delivery counters.
    pub metrics: HubMetrics,
    /// Settings from hub.yaml.
    pub settings: NotificationSettings,
    /// Hex id of the hub's signing key (the idempotency keys' prefix).
    pub hub_id: String,
}

impl Notifier {
    /// Starts a task per target on `tracker`; they stop with `stop`.
    pub fn start(self, tracker: &TaskTracker, stop: CancellationToken) {
        if self.settings.targets.is_empty() {
            return;
        }
        crate::source::install_crypto_provider();
        let shared = Arc::new(self);
        for config in shared.settings.targets.clone() {
            let client = reqwest::Client::builder()
                .timeout(config.timeout)
                .connect_timeout(config.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(2)
                .build();
            let client = match client {
                Ok(c) => c,
                Err(e) => {
                    warn!(target = %config.name, error = %crate::source::chain(&e), "notification target cannot be used");
                    continue;
                }
            };
            let labels = TargetLabels {
                target: config.name.clone(),
            };
            let target = Target {
                config,
                client,
                labels,
            };
            tracker.spawn(shared.clone().run(target, stop.clone()));
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&HubStore) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Result<T, String> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(&store)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{what}: {e}")),
            Err(e) => Err(format!("{what}: {e}")),
        }
    }

    async fn save(&self, name: &str, cursor: u64) -> Result<(), String> {
        let key = format!("{CURSOR_PREFIX}{name}");
        self.blocking("storing the cursor", move |s| s.set_meta(&key, cursor))
            .await
    }

    /// Where a target starts: its stored cursor, or the newest event for a target never run.
    async fn cursor(&self, name: &str) -> Result<u64, String> {
        let key = format!("{CURSOR_PREFIX}{name}");
        match self
            .blocking("reading the cursor", move |s| s.meta(&key))
            .await?
        {
            Some(c) => Ok(c),
            None => {
                let newest = self
                    .blocking("reading events", |s| s.last_event_seq())
                    .await?;
                self.save(name, newest).await?;
                Ok(newest)
            }
        }
    }

    async fn run(self: Arc<Self>, target: Target, stop: CancellationToken) {
        let name = target.config.name.clone();
        let mut notices = self.store.subscribe();
        let mut cursor = loop {
            match self.cursor(&name).await {
                Ok(c) => break c,
                Err(e) => {
                    warn!(target = %name, error = %e, "notification target waits for the store");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(BACKOFF_FIRST) => {}
                    }
                }
            }
        };
        let m = &self.metrics;
        m.notification_target_up
            .get_or_create(&target.labels)
            .set(1);
        let mut saved = cursor;
        let mut last_save = Instant::now();
        // Down when an earlier leader left it: the first success here says it recovered.
        let key = format!("{DOWN_PREFIX}{name}");
        let down_before = self
            .blocking("reading the target's state", move |s| s.meta(&key))
            .await
            .ok()
            .flatten()
            .is_some_and(|since| since > 0);
        let mut failing_since: Option<Instant> = down_before.then(Instant::now);
        let mut reported_down = down_before;
        if down_before {
            m.notification_target_up
                .get_or_create(&target.labels)
                .set(0);
        }
        let mut attempt = 0u32;
        info!(target = %name, cursor, "notification target delivers events after its cursor");
        'outer: loop {
            if stop.is_cancelled() {
                break;
            }
            let newest = match self
                .blocking("reading events", |s| s.last_event_seq())
                .await
            {
                Ok(n) => n,
                Err(e) => {
                    warn!(target = %name, error = %e, "notification target cannot read events");
                    0
                }
            };
            m.notification_queue
                .get_or_create(&target.labels)
                .set(newest.saturating_sub(cursor) as i64);
            if newest.saturating_sub(cursor) > self.settings.queue_limit {
                let to = newest - self.settings.queue_limit;
                let dropped = to - cursor;
                m.notifications_dropped
                    .get_or_create(&target.labels)
                    .inc_by(dropped);
                warn!(
                    target = %name,
                    dropped,
                    limit = self.settings.queue_limit,
                    "notification target is more than notifications.queueLimit events behind: its oldest events are dropped"
                );
                cursor = to;
            }
            let after = cursor;
            let batch = match self
                .blocking("reading events", move |s| s.events_after(after, BATCH))
                .await
            {
                Ok(b) => b,
                Err(e) => {
                    warn!(target = %name, error = %e, "notification target cannot read events");
                    Vec::new()
                }
            };
            if let Some(first) = batch.first()
                && first.seq > cursor + 1
            {
                // Retention dropped them before this target was given them.
                let gap = first.seq - cursor - 1;
                m.notifications_dropped
                    .get_or_create(&target.labels)
                    .inc_by(gap);
                warn!(target = %name, dropped = gap, "events were dropped by eventRetention before this notification target got them");
                cursor = first.seq - 1;
            }
            if batch.is_empty() {
                if saved != cursor {
                    if let Err(e) = self.save(&name, cursor).await {
                        debug!(target = %name, error = %e, "storing the notification cursor failed");
                    } else {
                        saved = cursor;
                    }
                }
                // Until new events (or a restored snapshot, or a missed notice), or a look every 5 s.
                let tick = tokio::time::sleep(Duration::from_secs(5));
                tokio::pin!(tick);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break 'outer,
                        notice = notices.recv() => match notice {
                            Ok(Notice::Events(_) | Notice::Restored) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                            Ok(_) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => break 'outer,
                        },
                        _ = &mut tick => break,
                    }
                }
                continue;
            }
            for event in batch {
                if !matches(&target.config.filter, &event.event) {
                    cursor = event.seq;
                    continue;
                }
                let id = delivery_id(&self.hub_id, event.seq);
                let result = tokio::select! {
                    _ = stop.cancelled() => break 'outer,
                    r = target.deliver(&event, &id) => r,
                };
                match result {
                    Ok(()) => {
                        m.notifications_sent.get_or_create(&target.labels).inc();
                        let age = SystemTime::now()
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .map(|d| d.as_secs_f64() - event.event.at as f64)
                            .unwrap_or(0.0);
                        m.notification_delay
                            .get_or_create(&target.labels)
                            .observe(age.max(0.0));
                        cursor = event.seq;
                        attempt = 0;
                        if failing_since.take().is_some() {
                            m.notification_target_up
                                .get_or_create(&target.labels)
                                .set(1);
                            if reported_down {
                                reported_down = false;
                                info!(target = %name, "notification target is delivering again");
                                self.set_down(&name, 0).await;
                                self.target_event(
                                    "notification-target-recovered",
                                    Severity::Info,
                                    format!("notification target {name} takes alerts again"),
                                )
                                .await;
                            }
                        }
                    }
                    Err(e) => {
                        attempt += 1;
                        m.notification_failures.get_or_create(&target.labels).inc();
                        let since = *failing_since.get_or_insert_with(Instant::now);
                        if !reported_down && since.elapsed() >= self.settings.target_down_after {
                            reported_down = true;
                            m.notification_target_up
                                .get_or_create(&target.labels)
                                .set(0);
                            warn!(target = %name, error = %e, attempts = attempt, "notification target is down; its alerts queue up");
                            let since_unix =
                                crate::controller::unix_now() - since.elapsed().as_secs() as i64;
                            self.set_down(&name, since_unix.max(1) as u64).await;
                            self.target_event(
                                "notification-target-down",
                                Severity::Error,
                                format!(
                                    "notification target {name} has failed for {}s ({attempt} attempts, last: {e}); its alerts queue up, at most {}",
                                    since.elapsed().as_secs(),
                                    self.settings.queue_limit
                                ),
                            )
                            .await;
                        } else {
                            debug!(target = %name, error = %e, attempt, "delivering an alert failed; it is retried");
                        }
                        let wait = backoff(attempt, rand::random::<f64>() * 0.5 + 0.5);
                        tokio::select! {
                            _ = stop.cancelled() => break 'outer,
                            _ = tokio::time::sleep(wait) => {}
                        }
                        // Read again: the queue may have grown past its limit meanwhile.
                        continue 'outer;
                    }
                }
                if last_save.elapsed() >= SAVE_EVERY {
                    last_save = Instant::now();
                    match self.save(&name, cursor).await {
                        Ok(()) => saved = cursor,
                        Err(e) => {
                            debug!(target = %name, error = %e, "storing the notification cursor failed")
                        }
                    }
                }
            }
        }
        if saved != cursor {
            // Best effort on the way out; what is not stored is delivered again (at least once).
            let _ = self.save(&name, cursor).await;
        }
    }

    /// Records when the target went down (0: up again); a failed write is said again at the next
    /// transition, and status shows the older value meanwhile.
    async fn set_down(&self, name: &str, since: u64) {
        let key = format!("{DOWN_PREFIX}{name}");
        if let Err(e) = self
            .blocking("recording the target's state", move |s| {
                s.set_meta(&key, since)
            })
            .await
        {
            debug!(target = %name, error = %e, "recording a notification target's state failed");
        }
    }

    async fn target_event(&self, kind: &str, severity: Severity, message: String) {
        let event = NewEvent::cluster(crate::controller::unix_now(), kind, severity, "", message);
        self.events.record(vec![event]).await;
    }
}

/// Meta key prefixes of what the fleet watch said (so a new leader does not say it again).
const OFFLINE_PREFIX: &str = "alerted-offline/";
const CERT_PREFIX: &str = "alerted-cert/";

/// The leader's fleet watch: records `cluster-offline`, `cluster-online` and `certificate-expiring`
/// ([`crate::events::fleet_events`]) from the agents' last contacts with any replica, checking a few
/// times per `clusterOfflineAfter`.
pub async fn watch_fleet(
    store: HubStore,
    events: EventLog,
    contacts: crate::raft::peers::ContactBook,
    settings: NotificationSettings,
    stop: CancellationToken,
) {
    let started = crate::controller::unix_now();
    let offline_after = settings.cluster_offline_after.as_secs() as i64;
    let warning = settings.certificate_expiry_warning.as_secs() as i64;
    let every =
        (settings.cluster_offline_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
    let mut alerted: Option<crate::events::Alerted> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let reader = store.clone();
        // What was said is read from the store once per term, then kept here.
        let first = alerted.is_none();
        let read = tokio::task::spawn_blocking(move || {
            let fleet = reader.cluster_reports()?;
            let mut known = crate::events::Alerted::default();
            for (c, _, _) in fleet.iter().filter(|_| first) {
                if reader.meta(&format!("{OFFLINE_PREFIX}{}", c.id))? == Some(1) {
                    known.offline.insert(c.id.clone());
                }
                if let Some(at) = reader.meta(&format!("{CERT_PREFIX}{}", c.id))? {
                    known.certificate.insert(c.id.clone(), at as i64);
                }
            }
            Ok::<_, crate::store::StoreError>((fleet, known))
        })
        .await;
        let (fleet, known) = match read {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                warn!(error = %e, "the fleet watch cannot read the clusters; it tries again");
                continue;
            }
            Err(e) => {
                warn!(error = %e, "the fleet watch's read panicked");
                continue;
            }
        };
        let book = contacts.lock().expect("contacts lock").clone();
        let view: Vec<crate::events::Contact> = fleet
            .iter()
            .map(|(c, _, reported_at)| crate::events::Contact {
                id: c.id.clone(),
                name: c.name.clone(),
                // The hub being down says nothing about the clusters: count from the watch's start.
                last_contact: book
                    .get(&c.id)
                    .copied()
                    .unwrap_or(0)
                    .max(*reported_at)
                    .max(started),
                cert_expires_at: c.cert_expires_at,
            })
            .collect();
        let before = alerted.take().unwrap_or(known);
        let mut after = before.clone();
        let new = crate::events::fleet_events(
            &view,
            offline_after,
            warning,
            &mut after,
            crate::controller::unix_now(),
        );
        if new.is_empty() {
            alerted = Some(after);
            continue;
        }
        let mut writes: Vec<(String, u64)> = Vec::new();
        for id in after.offline.difference(&before.offline) {
            writes.push((format!("{OFFLINE_PREFIX}{id}"), 1));
        }
        for id in before.offline.difference(&after.offline) {
            writes.push((format!("{OFFLINE_PREFIX}{id}"), 0));
        }
        for (id, at) in &after.certificate {
            if before.certificate.get(id) != Some(at) {
                writes.push((format!("{CERT_PREFIX}{id}"), *at as u64));
            }
        }
        let writer = store.clone();
        let stored = tokio::task::spawn_blocking(move || {
            writes
                .iter()
                .try_for_each(|(key, value)| writer.set_meta(key, *value))
        })
        .await;
        match stored {
            Ok(Ok(())) => {
                events.record(new).await;
                alerted = Some(after);
            }
            // Said next time: nothing is lost, and nothing is said twice by this leader.
            Ok(Err(e)) => debug!(error = %e, "the fleet watch could not record what it found"),
            Err(e) => debug!(error = %e, "the fleet watch's write panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, app: &str, cluster: &str, severity: Severity) -> NewEvent {
        NewEvent {
            app: app.into(),
            ..NewEvent::cluster(1_700_000_000, kind, severity, cluster, "m".into())
        }
    }

    #[test]
    fn globs_match_runs_of_characters() {
        assert!(glob("rollout-*", "rollout-halted"));
        assert!(glob("*", ""));
        assert!(glob("edge-*-eu", "edge-7-eu"));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(!glob("a*b*c", "aXcYb"));
        assert!(!glob("edge-*", "core-1"));
        assert!(!glob("ab*ba", "aba"));
        assert!(glob("web", "web"));
        assert!(!glob("web", "webs"));
    }

    #[test]
    fn filters_default_to_the_alerting_kinds_and_narrow_by_every_list() {
        let all = EventFilter::default();
        assert!(matches(
            &all,
            &event("rollout-halted", "web", "", Severity::Error)
        ));
        assert!(!matches(
            &all,
            &event("rollout-cluster-healthy", "web", "e1", Severity::Info)
        ));
        let f = EventFilter {
            events: vec!["rollout-*".into(), "app-failed".into()],
            apps: vec!["web".into()],
            clusters: vec!["edge-*".into()],
            severities: vec![Severity::Error, Severity::Warning],
        };
        assert!(matches(
            &f,
            &event("rollout-halted", "web", "", Severity::Error)
        ));
        assert!(matches(
            &f,
            &event("app-failed", "web", "edge-1", Severity::Error)
        ));
        assert!(!matches(
            &f,
            &event("app-failed", "web", "core-1", Severity::Error)
        ));
        assert!(!matches(
            &f,
            &event("app-failed", "api", "edge-1", Severity::Error)
        ));
        assert!(!matches(
            &f,
            &event("rollout-started", "web", "", Severity::Info)
        ));
        assert!(!matches(
            &f,
            &event("commit-in-force", "", "", Severity::Error)
        ));
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter() {
        assert_eq!(backoff(1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(2, 1.0), Duration::from_secs(2));
        assert_eq!(backoff(5, 1.0), Duration::from_secs(16));
        assert_eq!(backoff(30, 1.0), BACKOFF_CAP);
        assert_eq!(backoff(3, 0.5), Duration::from_secs(2));
        assert_eq!(
            backoff(3, 0.1),
            Duration::from_secs(2),
            "jitter is at least one half"
        );
    }

    #[test]
    fn payloads_carry_the_event_and_its_key() {
        let e = Event {
            seq: 7,
            event: event("app-failed", "web", "edge-1", Severity::Error),
        };
        let id = delivery_id("ab12", 7);
        let body: serde_json::Value =
            serde_json::from_slice(&payload(TargetKind::Webhook, &e, &id)).unwrap();
        assert_eq!(body["id"], "flotilla-ab12-7");
        assert_eq!(body["seq"], 7);
        assert_eq!(body["kind"], "app-failed");
        assert_eq!(body["severity"], "error");
        assert_eq!(body["cluster"], "edge-1");
        assert_eq!(body["at"], "2023-11-14T22:13:20Z");
        assert!(body.get("source").is_none(), "empty fields are left out");
        let mut slack = e.clone();
        slack.event.message = "<script> & more".into();
        let body: serde_json::Value =
            serde_json::from_slice(&payload(TargetKind::Slack, &slack, &id)).unwrap();
        let text = body["text"].as_str().unwrap();
        assert!(
            text.starts_with(
                "[error] *app-failed* · app `web` · cluster `edge-1`: &lt;script&gt; &amp; more"
            ),
            "{text}"
        );
        assert_eq!(body["attachments"][0]["color"], "danger");
    }
}
