//! What the services enforce per caller: registration attempts per peer IP, status reports per
//! cluster, open streams per cluster, and the shape of a status report.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_common::status::StatusReport;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tonic::Status;

use crate::config::{HubConfig, RpcLimits};
use crate::listener::LogThrottle;

/// Keys a keyed limiter holds before it forgets the ones whose budget is full again.
const LIMITER_KEYS_BEFORE_SWEEP: usize = 10_000;

/// Appended to a free-text field the hub shortened.
const TRUNCATED: &str = " …[truncated by the hub]";

/// Longest app name or commit a report may carry (names are at most 63 bytes, commits 40 or 64).
const MAX_REPORT_ID_BYTES: usize = 256;

/// The kinds of long-lived streams a cluster's count is kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// Agent.Watch.
    Watch,
    /// Agent.FetchObjects.
    FetchObjects,
}

impl StreamKind {
    fn name(self) -> &'static str {
        match self {
            StreamKind::Watch => "Watch",
            StreamKind::FetchObjects => "FetchObjects",
        }
    }
}

/// Shared limit state of the services.
pub struct ApiLimits {
    /// The configured numbers.
    pub rpc: RpcLimits,
    registrations: DefaultKeyedRateLimiter<IpAddr>,
    reports: DefaultKeyedRateLimiter<String>,
    renewals: DefaultKeyedRateLimiter<String>,
    capability_reports: DefaultKeyedRateLimiter<String>,
    renew_min_interval: Duration,
    streams: Arc<Mutex<HashMap<(String, StreamKind), usize>>>,
    registration_log: Mutex<LogThrottle>,
}

fn quota(per_minute: u32, burst: u32) -> Quota {
    let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(per_minute).allow_burst(burst)
}

/// A stream slot held by one open stream; dropping it frees the slot.
pub struct StreamSlot {
    key: (String, StreamKind),
    streams: Arc<Mutex<HashMap<(String, StreamKind), usize>>>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut streams = self.streams.lock().expect("stream counts lock");
        if let Some(n) = streams.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                streams.remove(&self.key);
            }
        }
    }
}

impl ApiLimits {
    /// Limits from the validated configuration.
    pub fn new(config: &HubConfig) -> Self {
        Self::from_parts(config.rpc.clone(), config.renew_min_interval)
    }

    /// Limits from the `rpc:` numbers and `renewMinInterval`.
    pub fn from_parts(rpc: RpcLimits, renew_min_interval: Duration) -> Self {
        // One renewal per interval, no burst; the configuration refuses a zero interval.
        let renewal_quota = Quota::with_period(renew_min_interval)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX));
        ApiLimits {
            renewals: RateLimiter::keyed(renewal_quota),
            renew_min_interval,
            registrations: RateLimiter::keyed(quota(
                rpc.registrations_per_minute,
                rpc.registration_burst,
            )),
            reports: RateLimiter::keyed(quota(rpc.reports_per_minute, rpc.report_burst)),
            capability_reports: RateLimiter::keyed(quota(
                rpc.capability_reports_per_minute,
                rpc.capability_reports_per_minute,
            )),
            streams: Arc::new(Mutex::new(HashMap::new())),
            registration_log: Mutex::new(LogThrottle::new(Duration::from_secs(1))),
            rpc,
        }
    }

    /// Admits one registration attempt from `ip`, or refuses it with ResourceExhausted.
    pub fn admit_registration(&self, ip: IpAddr) -> Result<(), Status> {
        if self.registrations.len() > LIMITER_KEYS_BEFORE_SWEEP {
            self.registrations.retain_recent();
        }
        self.registrations.check_key(&ip).map_err(|_| {
            Status::resource_exhausted(format!(
                "too many registration attempts from {ip}: at most {} per minute (rpc.registrationsPerMinute); retry later",
                self.rpc.registrations_per_minute
            ))
        })
    }

    /// Admits one certificate renewal of `cluster`, or refuses it with ResourceExhausted.
    pub fn admit_renewal(&self, cluster: &str) -> Result<(), Status> {
        if self.renewals.len() > LIMITER_KEYS_BEFORE_SWEEP {
            self.renewals.retain_recent();
        }
        self.renewals.check_key(&cluster.to_string()).map_err(|_| {
            Status::resource_exhausted(format!(
                "this cluster renewed its certificate within the last {}s; renewals are allowed once per renewMinInterval",
                self.renew_min_interval.as_secs()
            ))
        })
    }

    /// Admits one ReportCapabilities call of `cluster`, or refuses it with ResourceExhausted.
    pub fn admit_capability_report(&self, cluster: &str) -> Result<(), Status> {
        if self.capability_reports.len() > LIMITER_KEYS_BEFORE_SWEEP {
            self.capability_reports.retain_recent();
        }
        self.capability_reports
            .check_key(&cluster.to_string())
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "this cluster reported its capabilities more than {} times in the last minute (rpc.capabilityReportsPerMinute); retry later",
                    self.rpc.capability_reports_per_minute
                ))
            })
    }

    /// Whether a refused registration may be logged now, and how many refusals were not.
    pub fn registration_log(&self) -> Option<u64> {
        self.registration_log
            .lock()
            .expect("registration log lock")
            .allow(Instant::now())
    }

    /// Waits until `cluster` may deliver one more status report.
    pub async fn report_turn(&self, cluster: &str) {
        let key = cluster.to_string();
        loop {
            if self.reports.len() > LIMITER_KEYS_BEFORE_SWEEP {
                self.reports.retain_recent();
            }
            match self.reports.check_key(&key) {
                Ok(()) => return,
                Err(not_until) => {
                    let wait = not_until.wait_time_from(DefaultClock::default().now());
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Takes one of `cluster`'s slots for a stream of `kind`, or refuses with ResourceExhausted.
    pub fn open_stream(&self, cluster: &str, kind: StreamKind) -> Result<StreamSlot, Status> {
        let key = (cluster.to_string(), kind);
        let mut streams = self.streams.lock().expect("stream counts lock");
        let open = streams.entry(key.clone()).or_insert(0);
        if *open >= self.rpc.max_streams_per_cluster {
            return Err(Status::resource_exhausted(format!(
                "cluster {cluster} already has {open} {} streams open, the most rpc.maxStreamsPerCluster allows",
                kind.name()
            )));
        }
        *open += 1;
        Ok(StreamSlot {
            key,
            streams: self.streams.clone(),
        })
    }

    /// Checks a report's entry count and identifiers and shortens its free text to the limits.
    pub fn bound_report(&self, mut report: StatusReport) -> Result<StatusReport, Status> {
        if report.apps.len() > self.rpc.max_report_apps {
            return Err(Status::invalid_argument(format!(
                "status report has {} apps, over the limit of {} (rpc.maxReportApps)",
                report.apps.len(),
                self.rpc.max_report_apps
            )));
        }
        let max = self.rpc.max_report_text_bytes;
        for app in &mut report.apps {
            for (field, value) in [("app", &app.app), ("commit", &app.commit)] {
                if value.len() > MAX_REPORT_ID_BYTES {
                    return Err(Status::invalid_argument(format!(
                        "status report field {field} is {} bytes, over the limit of {MAX_REPORT_ID_BYTES}",
                        value.len()
                    )));
                }
            }
            truncate(&mut app.message, max);
            truncate(&mut app.health_reason, max);
        }
        if let Some(rejection) = &mut report.rejection {
            truncate(rejection, max);
        }
        Ok(report)
    }
}

/// Shortens `text` to at most `max` bytes, on a character boundary, ending with the marker.
fn truncate(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max.saturating_sub(TRUNCATED.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(TRUNCATED);
}

#[cfg(test)]
mod tests {
    use flotilla_common::status::{AppHealth, AppPhase, AppStatus};

    use super::*;

    fn limits() -> ApiLimits {
        ApiLimits::from_parts(
            RpcLimits {
                max_report_apps: 2,
                max_report_text_bytes: 64,
                max_streams_per_cluster: 2,
                registrations_per_minute: 1,
                registration_burst: 2,
                ..RpcLimits::default()
            },
            Duration::from_secs(60),
        )
    }

    fn app(name: &str, message: &str) -> AppStatus {
        AppStatus {
            app: name.into(),
            commit: "c".repeat(40),
            version: 1,
            phase: AppPhase::parse("failed").unwrap(),
            message: message.into(),
            health: AppHealth::default(),
            health_reason: String::new(),
        }
    }

    fn report(apps: Vec<AppStatus>, rejection: Option<String>) -> StatusReport {
        StatusReport {
            seq: 1,
            observed_at: 0,
            applied_version: 0,
            apps,
            rejection,
        }
    }

    #[test]
    fn long_text_is_truncated_with_a_marker_on_a_char_boundary() {
        let l = limits();
        let long = "é".repeat(100);
        let r = l
            .bound_report(report(vec![app("a", &long)], Some("x".repeat(65))))
            .unwrap();
        let m = &r.apps[0].message;
        assert!(m.len() <= 64 && m.ends_with(TRUNCATED), "{m}");
        assert!(m.starts_with("é"));
        let rej = r.rejection.unwrap();
        assert!(rej.len() <= 64 && rej.ends_with(TRUNCATED), "{rej}");
        let short = l
            .bound_report(report(vec![app("a", "fine")], None))
            .unwrap();
        assert_eq!(short.apps[0].message, "fine");
    }

    #[test]
    fn too_many_apps_or_long_names_are_refused_naming_the_limit() {
        let l = limits();
        let err = l
            .bound_report(report(vec![app("a", ""), app("b", ""), app("c", "")], None))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("rpc.maxReportApps"), "{err:?}");
        let err = l
            .bound_report(report(vec![app(&"n".repeat(300), "")], None))
            .unwrap_err();
        assert!(err.message().contains("field app is 300 bytes"), "{err:?}");
    }

    #[test]
    fn stream_slots_are_counted_per_cluster_and_kind_and_freed_on_drop() {
        let l = limits();
        let a = l.open_stream("c-1", StreamKind::Watch).unwrap();
        let _b = l.open_stream("c-1", StreamKind::Watch).unwrap();
        let err = l.open_stream("c-1", StreamKind::Watch).err().unwrap();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(
            err.message().contains("rpc.maxStreamsPerCluster"),
            "{err:?}"
        );
        let _other_kind = l.open_stream("c-1", StreamKind::FetchObjects).unwrap();
        let _other_cluster = l.open_stream("c-2", StreamKind::Watch).unwrap();
        drop(a);
        l.open_stream("c-1", StreamKind::Watch).unwrap();
    }

    #[test]
    fn registrations_beyond_the_burst_are_refused_per_ip() {
        let l = limits();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        l.admit_registration(a).unwrap();
        l.admit_registration(a).unwrap();
        let err = l.admit_registration(a).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(
            err.message().contains("rpc.registrationsPerMinute"),
            "{err:?}"
        );
        l.admit_registration(b).unwrap();
    }
}
