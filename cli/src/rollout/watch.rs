//! `flotilla rollout watch`: polls an app's rollout until it ends, drawing one progress bar per
//! stage in a terminal and one line per change otherwise, and rides out a hub that is briefly
//! unreachable (a restart) with backoff. The renderers and the backoff are pure; `run` is the IO.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use flotilla_proto::v1::admin_client::AdminClient;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio::time::Instant;
use tonic::transport::Channel;

use super::format::{compact, phase_with_reason, short, stage_counts};
use super::{Outcome, RolloutError, RolloutStageView, RolloutView, unix_now};
use crate::client::{self, ClientError};

/// How long one poll (connecting included) may take before it counts as a failed try.
const POLL_TIMEOUT: Duration = Duration::from_secs(10);

/// A Unix time as `2026-12-01T10:04:12Z`.
fn rfc3339(secs: i64) -> String {
    u64::try_from(secs)
        .map(|s| {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(s))
                .to_string()
        })
        .unwrap_or_else(|_| secs.to_string())
}

/// A stage bar's message: its state, bake time left or the approval it waits for, and its
/// failed and deferred clusters.
pub fn stage_message(s: &RolloutStageView, app: &str, now: i64) -> String {
    let mut out = match s.state.as_str() {
        "awaiting-approval" => format!("waiting for approval (flotilla rollout approve {app})"),
        "baking" if s.bake_ends_at > 0 => {
            format!("baking, {} left", compact(s.bake_ends_at - now))
        }
        "progressing" if s.updating > 0 => format!("progressing, {} updating", s.updating),
        other => other.to_string(),
    };
    for (n, what) in [(s.failed, "failed"), (s.deferred, "deferred")] {
        if n > 0 {
            out.push_str(&format!(", {n} {what}"));
        }
    }
    out
}

/// The watch's output when it is not a terminal: a line whenever the rollout's summary changes,
/// and one for each cluster that turns failed or deferred. Lines depend only on the rollout (a
/// bake's end is printed as a time, not as a countdown), so an unchanged rollout prints nothing.
#[derive(Debug, Default)]
pub struct PlainWatch {
    last: Option<String>,
    clusters: BTreeMap<String, String>,
}

impl PlainWatch {
    /// The lines to print for this poll's `rollout`; empty when nothing changed.
    pub fn changes(&mut self, r: &RolloutView) -> Vec<String> {
        let mut out = Vec::new();
        let summary = summary_line(r);
        if self.last.as_deref() != Some(summary.as_str()) {
            out.push(summary.clone());
            self.last = Some(summary);
        }
        for c in &r.clusters {
            let before = self.clusters.insert(c.id.clone(), c.state.clone());
            if before.as_deref() == Some(c.state.as_str()) {
                continue;
            }
            let name = if c.name.is_empty() { &c.id } else { &c.name };
            match c.state.as_str() {
                "failed" if c.reason.is_empty() => {
                    out.push(format!("cluster {name} (stage {}) failed", c.stage))
                }
                "failed" => out.push(format!(
                    "cluster {name} (stage {}) failed: {}",
                    c.stage, c.reason
                )),
                "deferred" => out.push(format!(
                    "cluster {name} (stage {}) deferred: offline, it gets the release when it returns",
                    c.stage
                )),
                _ => {}
            }
        }
        out
    }
}

/// `web #7 progressing; stage 2/3 eu baking: 3/3 healthy, bake ends 2026-12-01T10:04:12Z; 4/8 healthy`.
fn summary_line(r: &RolloutView) -> String {
    let mut out = format!("{} #{} {}", r.app, r.id, phase_with_reason(r));
    if let Some((i, s)) = r.current_stage() {
        out.push_str(&format!(
            "; stage {}/{} {} {}: {}",
            i + 1,
            r.stages.len(),
            s.name,
            s.state,
            stage_counts(s)
        ));
        if s.state == "baking" && s.bake_ends_at > 0 {
            out.push_str(&format!(", bake ends {}", rfc3339(s.bake_ends_at)));
        }
        if s.state == "awaiting-approval" {
            out.push_str(&format!(" (flotilla rollout approve {})", r.app));
        }
    }
    let (healthy, total, _, _) = r.counts();
    out.push_str(&format!("; {healthy}/{total} healthy"));
    out
}

/// Waits between tries while the hub is unreachable: from half a second, doubling up to five,
/// and no more tries once the hub has been failing for `budget`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    budget: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(5);

    /// Gives up once the hub has been failing for `budget`.
    pub fn new(budget: Duration) -> Self {
        Backoff {
            next: Self::FIRST,
            budget,
        }
    }

    /// The wait before the next try, the hub having failed for `failing_for`; `None`: give up.
    pub fn next_delay(&mut self, failing_for: Duration) -> Option<Duration> {
        let left = self
            .budget
            .checked_sub(failing_for)
            .filter(|d| !d.is_zero())?;
        let delay = self.next.min(left);
        self.next = (self.next * 2).min(Self::MAX);
        Some(delay)
    }
}

/// Live progress in a terminal: a header line and one bar per stage, on stderr.
struct StageBars {
    multi: MultiProgress,
    header: ProgressBar,
    stages: Vec<(String, ProgressBar)>,
}

impl StageBars {
    fn new() -> Self {
        let multi = MultiProgress::new();
        let header = multi.add(ProgressBar::new(0).with_style(
            ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
        ));
        StageBars {
            multi,
            header,
            stages: Vec::new(),
        }
    }

    fn update(&mut self, r: &RolloutView, now: i64) {
        let (healthy, total, _, _) = r.counts();
        self.header.set_message(format!(
            "{} #{} {} - release {} (commit {}), {healthy}/{total} healthy",
            r.app,
            r.id,
            phase_with_reason(r),
            short(&r.release),
            short(&r.release_commit)
        ));
        let names: Vec<&str> = r.stages.iter().map(|s| s.name.as_str()).collect();
        if names
            != self
                .stages
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
        {
            for (_, bar) in self.stages.drain(..) {
                bar.finish_and_clear();
                self.multi.remove(&bar);
            }
            let width = names.iter().map(|n| n.len()).max().unwrap_or(0);
            let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos:>4}/{len:<4} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            for name in names {
                let bar = self.multi.add(
                    ProgressBar::new(0)
                        .with_style(style.clone())
                        .with_prefix(format!("{name:<width$}")),
                );
                self.stages.push((name.to_string(), bar));
            }
        }
        for (s, (_, bar)) in r.stages.iter().zip(&self.stages) {
            bar.set_length(u64::from(s.total));
            bar.set_position(u64::from(s.healthy + s.failed + s.deferred));
            bar.set_message(stage_message(s, &r.app, now));
        }
    }

    fn finish(&self) {
        self.header.finish();
        for (_, bar) in &self.stages {
            bar.finish();
        }
    }
}

/// Where the watch draws.
enum Display {
    Plain(PlainWatch),
    Bars(StageBars),
}

impl Display {
    fn update(&mut self, r: &RolloutView, now: i64) {
        match self {
            Display::Plain(p) => {
                for line in p.changes(r) {
                    println!("{} {line}", rfc3339(now));
                }
            }
            Display::Bars(b) => b.update(r, now),
        }
    }

    /// A message about the watch itself (the hub unreachable), on stderr.
    fn notice(&self, message: &str) {
        match self {
            Display::Plain(_) => eprintln!("{message}"),
            Display::Bars(b) => {
                if b.multi.println(message).is_err() {
                    eprintln!("{message}");
                }
            }
        }
    }

    fn finish(&mut self, r: &RolloutView, now: i64) {
        self.update(r, now);
        if let Display::Bars(b) = self {
            b.finish();
            println!("rollout {} #{} {}", r.app, r.id, phase_with_reason(r));
        }
    }
}

/// What `flotilla rollout watch` was asked to do.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Hub URL.
    pub hub: String,
    /// The admin bundle.
    pub admin_dir: PathBuf,
    /// App whose rollout to follow.
    pub app: String,
    /// Time between polls.
    pub interval: Duration,
    /// How long the hub may stay unreachable before the watch gives up.
    pub retry_for: Duration,
    /// Print lines even in a terminal.
    pub plain: bool,
}

/// Where the watch reads the rollout from: the hub, or a script in the tests.
trait RolloutSource {
    /// The newest rollout of the app.
    async fn newest(&mut self) -> Result<RolloutView, RolloutError>;
    /// The app's rollouts as the hub lists them, ended ones included.
    async fn listed(&mut self) -> Result<Vec<RolloutView>, RolloutError>;
}

/// The hub over mTLS, connected on first use and again after a failed try.
struct HubSource<'a> {
    opts: &'a WatchOptions,
    admin: Option<AdminClient<Channel>>,
}

impl HubSource<'_> {
    fn timed_out() -> RolloutError {
        RolloutError::Client(ClientError::Rpc(tonic::Status::deadline_exceeded(format!(
            "no answer within {}",
            compact(POLL_TIMEOUT.as_secs() as i64)
        ))))
    }

    async fn client(&mut self) -> Result<&mut AdminClient<Channel>, RolloutError> {
        let client = match self.admin.take() {
            Some(client) => client,
            None => client::connect_admin(&self.opts.hub, &self.opts.admin_dir).await?,
        };
        Ok(self.admin.insert(client))
    }
}

impl RolloutSource for HubSource<'_> {
    async fn newest(&mut self) -> Result<RolloutView, RolloutError> {
        let app = self.opts.app.clone();
        let attempt = async { super::get(self.client().await?, &app).await };
        let result = tokio::time::timeout(POLL_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err(Self::timed_out()));
        if result.as_ref().is_err_and(RolloutError::is_transient) {
            // A new channel for the next try: the hub may be back at a new connection.
            self.admin = None;
        }
        result
    }

    async fn listed(&mut self) -> Result<Vec<RolloutView>, RolloutError> {
        let app = self.opts.app.clone();
        let attempt = async { super::list(self.client().await?, &app).await };
        tokio::time::timeout(POLL_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err(Self::timed_out()))
    }
}

/// The rollout `watched` became once a newer one took its place: the hub's own record of it
/// when it still lists it, else `watched` marked superseded.
async fn superseded(
    source: &mut impl RolloutSource,
    watched: &RolloutView,
    newer: &RolloutView,
) -> RolloutView {
    if let Ok(rollouts) = source.listed().await
        && let Some(r) = rollouts.into_iter().find(|r| r.id == watched.id)
        && r.phase == "superseded"
    {
        return r;
    }
    RolloutView {
        phase: "superseded".into(),
        reason: format!(
            "superseded by rollout #{} (release {})",
            newer.id,
            short(&newer.release)
        ),
        ..watched.clone()
    }
}

/// Follows the newest rollout of `opts.app` until it completes, pauses, rolls back or is
/// superseded. Errors: no such rollout, the hub refusing, or the hub unreachable for longer
/// than `opts.retry_for`.
pub async fn run(opts: &WatchOptions) -> anyhow::Result<Outcome> {
    let mut display =
        if !opts.plain && std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
            Display::Bars(StageBars::new())
        } else {
            Display::Plain(PlainWatch::default())
        };
    let mut source = HubSource { opts, admin: None };
    follow(&mut source, &mut display, opts.interval, opts.retry_for).await
}

async fn follow(
    source: &mut impl RolloutSource,
    display: &mut Display,
    interval: Duration,
    retry_for: Duration,
) -> anyhow::Result<Outcome> {
    let mut failing: Option<(Instant, Backoff)> = None;
    let mut watched: Option<RolloutView> = None;
    loop {
        match source.newest().await {
            Ok(r) => {
                if let Some((since, _)) = failing.take() {
                    display.notice(&format!(
                        "hub reachable again after {}",
                        compact(since.elapsed().as_secs() as i64)
                    ));
                }
                if let Some(w) = &watched
                    && w.id != r.id
                {
                    let ended = superseded(source, w, &r).await;
                    display.finish(&ended, unix_now());
                    return Ok(Outcome::Superseded);
                }
                let outcome = Outcome::of(&r).map_err(anyhow::Error::msg)?;
                if let Some(outcome) = outcome {
                    display.finish(&r, unix_now());
                    return Ok(outcome);
                }
                display.update(&r, unix_now());
                watched = Some(r);
            }
            Err(e) if e.is_transient() => {
                let (since, backoff) =
                    failing.get_or_insert_with(|| (Instant::now(), Backoff::new(retry_for)));
                let failing_for = since.elapsed();
                let Some(delay) = backoff.next_delay(failing_for) else {
                    return Err(anyhow::Error::new(e).context(format!(
                        "hub unreachable for {}, giving up (--retry-for)",
                        compact(failing_for.as_secs() as i64)
                    )));
                };
                display.notice(&format!(
                    "hub unreachable ({e}); retrying in {:.1}s (unreachable for {:.0}s, giving up at {})",
                    delay.as_secs_f64(),
                    failing_for.as_secs_f64(),
                    compact(retry_for.as_secs() as i64)
                ));
                tokio::time::sleep(delay).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::format::tests::{NOW, progressing, stage};
    use flotilla_proto::v1 as pb;

    #[test]
    fn plain_lines_only_when_something_changed() {
        let mut plain = PlainWatch::default();
        let mut r: RolloutView = progressing().into();
        let first = plain.changes(&r);
        assert_eq!(
            first,
            [
                "web #7 progressing; stage 2/3 eu progressing: 1/3 healthy, 1 updating, 1 waiting; 2/8 healthy"
            ]
        );
        assert!(
            plain.changes(&r).is_empty(),
            "an unchanged rollout printed again"
        );
        assert!(plain.changes(&r.clone()).is_empty());

        r.stages[1] = stage("eu", "baking", [0, 0, 3, 0, 0]).into();
        r.stages[1].bake_seconds = 600;
        r.stages[1].bake_ends_at = NOW + 252;
        assert_eq!(
            plain.changes(&r),
            [
                "web #7 progressing; stage 2/3 eu baking: 3/3 healthy, bake ends 2026-12-01T10:04:12Z; 4/8 healthy"
            ]
        );
        assert!(plain.changes(&r).is_empty(), "a bake printed again");

        r.clusters[2].state = "failed".into();
        r.clusters[2].reason = "applying the release failed".into();
        assert_eq!(
            plain.changes(&r),
            ["cluster eu-2 (stage eu) failed: applying the release failed"],
            "a cluster failing is a change even when the stage counts are not yet"
        );
        assert!(plain.changes(&r).is_empty());

        r.phase = "paused".into();
        r.reason = "paused by admin".into();
        assert_eq!(
            plain.changes(&r),
            [
                "web #7 paused: paused by admin; stage 2/3 eu baking: 3/3 healthy, bake ends 2026-12-01T10:04:12Z; 4/8 healthy"
            ]
        );
    }

    #[test]
    fn plain_lines_name_approval_and_deferred_clusters() {
        let mut plain = PlainWatch::default();
        let mut r: RolloutView = progressing().into();
        r.stages[1] = stage("eu", "completed", [0, 0, 3, 0, 0]).into();
        r.stages[2].state = "awaiting-approval".into();
        r.clusters[4].state = "deferred".into();
        assert_eq!(
            plain.changes(&r),
            [
                "web #7 progressing; stage 3/3 us awaiting-approval: 0/4 healthy, 4 waiting (flotilla rollout approve web); 4/8 healthy",
                "cluster us-1 (stage us) deferred: offline, it gets the release when it returns",
            ]
        );
        assert!(plain.changes(&r).is_empty());
    }

    #[test]
    fn stage_messages() {
        let app = "web";
        let mut s: RolloutStageView = stage("eu", "progressing", [1, 2, 3, 1, 2]).into();
        assert_eq!(
            stage_message(&s, app, NOW),
            "progressing, 2 updating, 1 failed, 2 deferred"
        );
        s = stage("eu", "baking", [0, 0, 3, 0, 0]).into();
        s.bake_ends_at = NOW + 75;
        assert_eq!(stage_message(&s, app, NOW), "baking, 1m15s left");
        s.state = "awaiting-approval".into();
        assert_eq!(
            stage_message(&s, app, NOW),
            "waiting for approval (flotilla rollout approve web)"
        );
        s.state = "completed".into();
        assert_eq!(stage_message(&s, app, NOW), "completed");
    }

    /// Answers `newest` from a script, one entry per poll; the last one repeats.
    struct Scripted {
        polls: Vec<Result<RolloutView, RolloutError>>,
        listed: Vec<RolloutView>,
        calls: usize,
    }

    impl RolloutSource for Scripted {
        async fn newest(&mut self) -> Result<RolloutView, RolloutError> {
            self.calls += 1;
            if self.polls.len() > 1 {
                self.polls.remove(0)
            } else {
                match &self.polls[0] {
                    Ok(r) => Ok(r.clone()),
                    Err(_) => Err(unavailable()),
                }
            }
        }

        async fn listed(&mut self) -> Result<Vec<RolloutView>, RolloutError> {
            Ok(self.listed.clone())
        }
    }

    fn unavailable() -> RolloutError {
        RolloutError::Client(ClientError::Rpc(tonic::Status::unavailable(
            "connection refused",
        )))
    }

    fn with(f: impl FnOnce(&mut pb::Rollout)) -> RolloutView {
        let mut r = progressing();
        f(&mut r);
        r.into()
    }

    async fn follow_script(
        polls: Vec<Result<RolloutView, RolloutError>>,
        listed: Vec<RolloutView>,
    ) -> (anyhow::Result<Outcome>, usize) {
        let mut source = Scripted {
            polls,
            listed,
            calls: 0,
        };
        let mut display = Display::Plain(PlainWatch::default());
        let got = follow(
            &mut source,
            &mut display,
            Duration::from_secs(1),
            Duration::from_secs(60),
        )
        .await;
        (got, source.calls)
    }

    fn baking() -> RolloutView {
        with(|r| {
            r.stages[1] = stage("eu", "baking", [0, 0, 3, 0, 0]);
            r.stages[1].bake_ends_at = NOW + 300;
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_hub_restart_during_the_bake_is_ridden_out_until_completion() {
        let completed = with(|r| {
            r.phase = "completed".into();
            r.ended_at = NOW + 400;
            for s in &mut r.stages {
                s.state = "completed".into();
            }
        });
        let mut polls = vec![Ok(baking())];
        polls.extend((0..6).map(|_| Err(unavailable())));
        polls.extend([Ok(baking()), Ok(completed)]);
        let (got, calls) = follow_script(polls, vec![]).await;
        assert_eq!(got.unwrap(), Outcome::Completed);
        assert_eq!(calls, 9);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hub_gone_for_longer_than_retry_for_is_an_error() {
        let (got, calls) = follow_script(vec![Ok(baking()), Err(unavailable())], vec![]).await;
        let err = format!("{:#}", got.unwrap_err());
        assert!(err.contains("giving up"), "{err}");
        // 0.5 + 1 + 2 + 4, then 5 s apart until 60 s: about 15 tries, not one and not endless.
        assert!((10..30).contains(&calls), "{calls} tries");
    }

    #[tokio::test(start_paused = true)]
    async fn paused_rolled_back_and_missing_rollouts_end_the_watch() {
        let paused = with(|r| {
            r.phase = "paused".into();
            r.reason = "2 clusters failed, over the failure budget of 1".into();
        });
        let (got, _) = follow_script(vec![Ok(baking()), Ok(paused)], vec![]).await;
        assert_eq!(got.unwrap(), Outcome::Paused);

        let rolled_back = with(|r| {
            r.phase = "rolled-back".into();
            r.ended_at = NOW;
        });
        let (got, _) = follow_script(vec![Ok(rolled_back)], vec![]).await;
        assert_eq!(got.unwrap(), Outcome::RolledBack);

        let missing = RolloutError::from_status("web", None, tonic::Status::not_found(""));
        let (got, calls) = follow_script(vec![Err(missing), Ok(baking())], vec![]).await;
        assert_eq!(got.unwrap_err().to_string(), "no rollout for app web");
        assert_eq!(calls, 1, "a missing rollout is not retried");
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_rollout_of_the_app_supersedes_the_watched_one() {
        let newer = with(|r| r.id = 8);
        let (got, calls) = follow_script(vec![Ok(baking()), Ok(newer)], vec![]).await;
        assert_eq!(got.unwrap(), Outcome::Superseded);
        assert_eq!(calls, 2);
    }

    #[test]
    fn backoff_doubles_to_a_ceiling_and_gives_up_after_the_budget() {
        let mut b = Backoff::new(Duration::from_secs(20));
        let secs = Duration::from_secs;
        let got: Vec<Option<Duration>> = [0, 1, 2, 4, 8, 13, 19, 20, 30]
            .map(|t| b.next_delay(secs(t)))
            .to_vec();
        assert_eq!(
            got,
            [
                Some(Duration::from_millis(500)),
                Some(secs(1)),
                Some(secs(2)),
                Some(secs(4)),
                Some(secs(5)),
                Some(secs(5)),
                Some(secs(1)),
                None,
                None,
            ]
        );
        assert_eq!(
            Backoff::new(Duration::ZERO).next_delay(Duration::ZERO),
            None
        );
    }
}
