//! The hub's configuration file (`hub.yaml`), parsed into typed structs and
//! validated before any port opens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use flotilla_common::ids::validate_name;
use flotilla_common::limits::Limits;
use serde::Deserialize;

use crate::source::{RedactedUrl, redact_url};

/// A configuration problem, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// Path.
        path: PathBuf,
        /// IO error.
        source: std::io::Error,
    },
    /// The YAML did not parse or has unknown fields.
    #[error("{path}: {message}")]
    Parse {
        /// Path.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// A field has an invalid value.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// Dotted field path.
        field: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_listen")]
    listen: String,
    #[serde(default = "default_server_names")]
    server_names: Vec<String>,
    #[serde(default = "default_state_ttl")]
    state_ttl: String,
    #[serde(default)]
    sources: Vec<RawSource>,
    #[serde(default)]
    limits: Limits,
    #[serde(default = "default_fetch_timeout")]
    fetch_timeout: String,
    #[serde(default = "default_max_pack_bytes")]
    max_pack_bytes: u64,
    #[serde(default = "default_cluster_cert_ttl")]
    cluster_cert_ttl: String,
    #[serde(default = "default_renew_min_interval")]
    renew_min_interval: String,
    #[serde(default)]
    transport: RawTransport,
    #[serde(default)]
    rpc: RawRpc,
    #[serde(default)]
    render: RawRender,
    #[serde(default)]
    chart_repositories: Vec<RawChartRepo>,
    #[serde(default = "default_event_retention")]
    event_retention: u64,
    #[serde(default)]
    rollouts: RawRollouts,
    #[serde(default)]
    replication: Option<RawReplication>,
    #[serde(default)]
    metrics: Option<RawMetrics>,
    #[serde(default)]
    webhooks: Option<RawMetrics>,
    #[serde(default)]
    notifications: RawNotifications,
    #[serde(default)]
    analysis: Option<RawAnalysis>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawNotifications {
    #[serde(default = "default_queue_limit")]
    queue_limit: u64,
    #[serde(default = "default_cluster_offline_after")]
    cluster_offline_after: String,
    #[serde(default = "default_certificate_warning")]
    certificate_expiry_warning: String,
    #[serde(default = "default_target_down_after")]
    target_down_after: String,
    #[serde(default)]
    targets: Vec<RawTarget>,
}

fn default_target_down_after() -> String {
    "1m".into()
}

impl Default for RawNotifications {
    fn default() -> Self {
        RawNotifications {
            queue_limit: default_queue_limit(),
            cluster_offline_after: default_cluster_offline_after(),
            certificate_expiry_warning: default_certificate_warning(),
            target_down_after: default_target_down_after(),
            targets: Vec::new(),
        }
    }
}

fn default_queue_limit() -> u64 {
    10_000
}

fn default_cluster_offline_after() -> String {
    "15m".into()
}

fn default_certificate_warning() -> String {
    "7d".into()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawTarget {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    url_file: Option<PathBuf>,
    #[serde(default)]
    secret_file: Option<PathBuf>,
    #[serde(default = "default_target_timeout")]
    timeout: String,
    #[serde(default)]
    filter: RawFilter,
}

fn default_target_timeout() -> String {
    "10s".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawFilter {
    #[serde(default)]
    events: Vec<String>,
    #[serde(default)]
    apps: Vec<String>,
    #[serde(default)]
    clusters: Vec<String>,
    #[serde(default)]
    severities: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawAnalysis {
    prometheus: String,
    #[serde(default = "default_target_timeout")]
    timeout: String,
    #[serde(default)]
    bearer_token_file: Option<PathBuf>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawMetrics {
    listen: String,
}

// `webhooks:` has the same shape as `metrics:`.

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawReplication {
    listen: String,
    advertise: String,
    #[serde(default)]
    join: Vec<String>,
    #[serde(default = "default_snapshot_every")]
    snapshot_every: u64,
}

fn default_snapshot_every() -> u64 {
    5000
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRollouts {
    #[serde(default = "default_offline_after")]
    offline_after: String,
}

impl Default for RawRollouts {
    fn default() -> Self {
        RawRollouts {
            offline_after: default_offline_after(),
        }
    }
}

fn default_offline_after() -> String {
    "5m".into()
}

/// How rollouts treat the fleet (`rollouts:` in hub.yaml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolloutSettings {
    /// A cluster not in contact for this long is offline: `offline: defer` stages do not wait for it.
    pub offline_after: Duration,
}

fn default_event_retention() -> u64 {
    crate::events::DEFAULT_EVENT_RETENTION
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawChartRepo {
    url: String,
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    timeout: Option<String>,
    max_index_bytes: Option<u64>,
    max_chart_bytes: Option<u64>,
}

/// A Helm chart repository apps may name in `helm.repo` (`chartRepositories:` in hub.yaml). Only listed
/// repositories are fetched from, with the operator's credentials; a Git repository cannot add one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChartRepoConfig {
    /// `https://` URL of the repository (no trailing slash), as apps must write it.
    pub url: String,
    /// File holding a bearer token (read at each fetch, never logged).
    pub token_file: Option<PathBuf>,
    /// PEM bundle of CA certificates trusted besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// Time box of one resolve (index and archive).
    pub timeout: Duration,
    /// Largest `index.yaml` accepted.
    pub max_index_bytes: u64,
    /// Largest chart archive accepted.
    pub max_chart_bytes: u64,
}

/// `render:` in hub.yaml.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
struct RawRender {
    timeout: String,
    parallelism: u64,
}

impl Default for RawRender {
    fn default() -> Self {
        let d = RenderSettings::default();
        RawRender {
            timeout: humantime::format_duration(d.timeout).to_string(),
            parallelism: d.parallelism as u64,
        }
    }
}

/// How external renders (helm, kustomize) run (`render:` in hub.yaml).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderSettings {
    /// Time box of one `helm template` or `kustomize build`.
    pub timeout: Duration,
    /// Renders run at once (default: the number of CPUs).
    pub parallelism: usize,
}

impl Default for RenderSettings {
    fn default() -> Self {
        RenderSettings {
            timeout: crate::render::DEFAULT_TOOL_TIMEOUT,
            parallelism: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        }
    }
}

/// `transport:` in hub.yaml; defaults in [`TransportLimits::default`].
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
struct RawTransport {
    tls_handshake_timeout: String,
    max_connections: u64,
    max_concurrent_streams: u64,
    request_timeout: String,
    max_recv_message_bytes: u64,
    max_send_message_bytes: u64,
}

impl Default for RawTransport {
    fn default() -> Self {
        let d = TransportLimits::default();
        RawTransport {
            tls_handshake_timeout: humantime::format_duration(d.tls_handshake_timeout).to_string(),
            max_connections: d.max_connections as u64,
            max_concurrent_streams: u64::from(d.max_concurrent_streams),
            request_timeout: humantime::format_duration(d.request_timeout).to_string(),
            max_recv_message_bytes: d.max_recv_message_bytes as u64,
            max_send_message_bytes: d.max_send_message_bytes as u64,
        }
    }
}

/// `rpc:` in hub.yaml; defaults in [`RpcLimits::default`].
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
struct RawRpc {
    registrations_per_minute: u64,
    registration_burst: u64,
    max_streams_per_cluster: u64,
    max_chain_headers: u64,
    state_retention: u64,
    reports_per_minute: u64,
    report_burst: u64,
    max_report_apps: u64,
    max_report_text_bytes: u64,
    capability_reports_per_minute: u64,
}

impl Default for RawRpc {
    fn default() -> Self {
        let d = RpcLimits::default();
        RawRpc {
            registrations_per_minute: u64::from(d.registrations_per_minute),
            registration_burst: u64::from(d.registration_burst),
            max_streams_per_cluster: d.max_streams_per_cluster as u64,
            max_chain_headers: d.max_chain_headers as u64,
            state_retention: d.state_retention,
            reports_per_minute: u64::from(d.reports_per_minute),
            report_burst: u64::from(d.report_burst),
            max_report_apps: d.max_report_apps as u64,
            max_report_text_bytes: d.max_report_text_bytes as u64,
            capability_reports_per_minute: u64::from(d.capability_reports_per_minute),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSource {
    name: String,
    url: String,
    #[serde(default = "default_branch")]
    branch: String,
    #[serde(default = "default_interval")]
    interval: String,
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    max_pack_bytes: Option<u64>,
    webhook_secret_file: Option<PathBuf>,
}

fn default_listen() -> String {
    "127.0.0.1:7443".into()
}
fn default_server_names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into()]
}
fn default_state_ttl() -> String {
    "7d".into()
}
fn default_fetch_timeout() -> String {
    "60s".into()
}
fn default_max_pack_bytes() -> u64 {
    crate::source::DEFAULT_MAX_PACK_BYTES
}
fn default_cluster_cert_ttl() -> String {
    "30d".into()
}
fn default_renew_min_interval() -> String {
    "1m".into()
}
fn default_branch() -> String {
    "main".into()
}
fn default_interval() -> String {
    "30s".into()
}

/// A Git source the hub polls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    /// Unique name.
    pub name: String,
    /// `file://`, a local path, or `https://`.
    pub url: String,
    /// Branch to track.
    pub branch: String,
    /// Poll interval.
    pub interval: Duration,
    /// File holding an access token for https sources (read at each fetch, never logged).
    pub token_file: Option<PathBuf>,
    /// PEM bundle of CA certificates an https source's server certificate may chain to, besides the
    /// system roots (read at each fetch, so a rotated CA needs no restart).
    pub ca_file: Option<PathBuf>,
    /// Most bytes of pack one fetch may receive (`maxPackBytes` of the source, else of the file).
    pub max_pack_bytes: u64,
    /// File holding the secret push webhooks for this source are signed with (read at each
    /// webhook, never logged); absent, the source takes no webhooks.
    pub webhook_secret_file: Option<PathBuf>,
}

/// Connection-level limits of the gRPC listener (`transport:` in hub.yaml).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportLimits {
    /// A connection that has not completed its TLS handshake by then is closed.
    pub tls_handshake_timeout: Duration,
    /// Connections open at once (handshaking or established); more are closed on accept.
    pub max_connections: usize,
    /// HTTP/2 streams one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// Server-side deadline of a unary call (streams are bounded by their own limits).
    pub request_timeout: Duration,
    /// Largest message the hub decodes, and so the largest its clients may send.
    pub max_recv_message_bytes: usize,
    /// Largest message the hub encodes, and so the least its clients must accept.
    pub max_send_message_bytes: usize,
}

impl Default for TransportLimits {
    fn default() -> Self {
        TransportLimits {
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_concurrent_streams: 64,
            request_timeout: Duration::from_secs(30),
            max_recv_message_bytes: 4 * 1024 * 1024,
            max_send_message_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Per-caller and per-cluster limits of the services (`rpc:` in hub.yaml).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcLimits {
    /// Registration attempts one peer IP may make per minute (sustained).
    pub registrations_per_minute: u32,
    /// Registration attempts one peer IP may make in a burst.
    pub registration_burst: u32,
    /// Watch and FetchObjects streams one cluster may have open at once (each kind).
    pub max_streams_per_cluster: usize,
    /// Most signed headers one GetClusterState answer carries; beyond it the agent re-syncs.
    pub max_chain_headers: usize,
    /// ClusterState versions kept per cluster; older ones and blobs only they reference are pruned.
    pub state_retention: u64,
    /// Status reports one cluster may deliver per minute (sustained); beyond it the hub reads more slowly.
    pub reports_per_minute: u32,
    /// Status reports one cluster may deliver in a burst.
    pub report_burst: u32,
    /// Most apps in one status report; a larger report is refused.
    pub max_report_apps: usize,
    /// Longest free-text field (message, health reason, rejection) kept from a report; longer ones are truncated.
    pub max_report_text_bytes: usize,
    /// ReportCapabilities calls one cluster may make per minute, also its burst; beyond it they are
    /// refused (ResourceExhausted). A change re-renders every source for the cluster, and agents
    /// report at start and when discovery changes, a few times an hour at most.
    pub capability_reports_per_minute: u32,
}

impl Default for RpcLimits {
    fn default() -> Self {
        RpcLimits {
            registrations_per_minute: 60,
            registration_burst: 10,
            max_streams_per_cluster: 4,
            max_chain_headers: 1_000,
            state_retention: 100,
            reports_per_minute: 120,
            report_burst: 20,
            max_report_apps: 10_000,
            max_report_text_bytes: 4_096,
            capability_reports_per_minute: 6,
        }
    }
}

/// The validated hub configuration.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// gRPC listen address; port 0 picks a free port (written to `<data-dir>/hub.addr`).
    pub listen: SocketAddr,
    /// DNS names and IPs in the server certificate.
    pub server_names: Vec<String>,
    /// How long a ClusterState is accepted as new after it is issued.
    pub state_ttl: Duration,
    /// Time box for one fetch.
    pub fetch_timeout: Duration,
    /// Default most bytes of pack one fetch may receive; a source's own `maxPackBytes` overrides it.
    pub max_pack_bytes: u64,
    /// Sources.
    pub sources: Vec<SourceConfig>,
    /// Limits.
    pub limits: Limits,
    /// Lifetime of the certificates issued to clusters at registration and renewal.
    pub cluster_cert_ttl: Duration,
    /// Shortest time between two renewals of one cluster's certificate.
    pub renew_min_interval: Duration,
    /// Listener limits.
    pub transport: TransportLimits,
    /// External renders.
    pub render: RenderSettings,
    /// Chart repositories apps may use.
    pub chart_repositories: Vec<ChartRepoConfig>,
    /// Events the hub keeps (`eventRetention`); older ones are dropped.
    pub event_retention: u64,
    /// Rollout settings.
    pub rollouts: RolloutSettings,
    /// Service limits.
    pub rpc: RpcLimits,
    /// The replicas' peer channel (`replication:`); absent, the hub is a one-node cluster that
    /// serves no peer listener.
    pub replication: Option<ReplicationConfig>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served over plain HTTP (`metrics.listen`);
    /// absent, they are not served.
    pub metrics_listen: Option<SocketAddr>,
    /// Where Git push webhooks are received over plain HTTP (`webhooks.listen`, behind the TLS
    /// of an ingress); absent, none are.
    pub webhooks_listen: Option<SocketAddr>,
    /// Alerts (`notifications:`).
    pub notifications: NotificationSettings,
    /// Where stages' `analysis:` queries go (`analysis:`); absent, a stage with analysis cannot pass.
    pub analysis: Option<AnalysisSettings>,
}

/// `analysis:` in hub.yaml: the Prometheus that stages' queries are evaluated against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalysisSettings {
    /// Base URL of the Prometheus HTTP API (`http(s)://host:port`, with a path prefix if any).
    pub prometheus: String,
    /// Time box of one query.
    pub timeout: Duration,
    /// File holding a bearer token sent with every query (read at each query, never logged).
    pub bearer_token_file: Option<PathBuf>,
    /// PEM bundle trusted besides the system roots (a private CA), checked at startup.
    pub ca_file: Option<PathBuf>,
}

/// `notifications:` in hub.yaml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationSettings {
    /// Most undelivered events one target may fall behind; beyond it the oldest are dropped.
    pub queue_limit: u64,
    /// A cluster not in contact for this long is reported offline (`cluster-offline`).
    pub cluster_offline_after: Duration,
    /// A cluster certificate this close to its expiry is reported (`certificate-expiring`).
    pub certificate_expiry_warning: Duration,
    /// A target failing this long is down: `notification-target-down` and its gauge at 0.
    pub target_down_after: Duration,
    /// Where alerts go.
    pub targets: Vec<TargetConfig>,
}

/// How a target takes an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// The event as a JSON object.
    Webhook,
    /// A Slack-compatible incoming webhook message.
    Slack,
}

/// One notification target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    /// Unique name (metrics label, cursor key).
    pub name: String,
    /// Payload shape.
    pub kind: TargetKind,
    /// The URL, inline; or read from `url_file` at start (a Slack URL is a secret).
    pub url: TargetUrl,
    /// HMAC-SHA256 key file for `X-Flotilla-Signature`.
    pub secret_file: Option<PathBuf>,
    /// Time box of one delivery.
    pub timeout: Duration,
    /// Which events it gets.
    pub filter: EventFilter,
}

/// Where a target's URL comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetUrl {
    /// Written in hub.yaml.
    Inline(String),
    /// Read from a file at start, never logged.
    File(PathBuf),
}

/// Which events a target gets: every list that is not empty must match; an empty `events` means the
/// default alerting kinds ([`crate::notify::DEFAULT_ALERTS`]). Names may use `*` wildcards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Event kinds.
    pub events: Vec<String>,
    /// App names.
    pub apps: Vec<String>,
    /// Cluster names.
    pub clusters: Vec<String>,
    /// Severities.
    pub severities: Vec<crate::events::Severity>,
}

/// Where this replica serves the peer channel and the address the other replicas dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// The peer listener's bind address; port 0 picks a free port (only useful with a matching
    /// `advertise` in tests).
    pub listen: SocketAddr,
    /// `HOST:PORT` other replicas dial; its host goes into this replica's certificate and the
    /// address into the Raft membership.
    pub advertise: String,
    /// Peer addresses (`HOST:PORT`) of replicas already in the hub that this replica, made by
    /// `flotilla-hub join` and not yet a member, asks to add it; empty waits for `flotilla hub
    /// add-replica`.
    pub join: Vec<String>,
    /// A snapshot of the store is taken after this many log entries, and the log before it is
    /// purged but for the newest `min(1000, snapshotEvery)` entries: a replica further behind
    /// catches up by snapshot.
    pub snapshot_every: u64,
}

impl ReplicationConfig {
    /// The advertised host (DNS name or IP, without brackets).
    pub fn advertise_host(&self) -> &str {
        let (host, _) = self
            .advertise
            .rsplit_once(':')
            .expect("validated as HOST:PORT");
        host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// Checks that `advertise` (named `field` in errors) is `HOST:PORT`: a DNS name or IP address (IPv6
/// in brackets) and a port 1..=65535.
fn check_advertise(advertise: &str, field: &str) -> Result<(), ConfigError> {
    let not_host_port = || ConfigError::Invalid {
        field: field.to_string(),
        message: format!("{advertise:?} is not HOST:PORT with a port 1..=65535"),
    };
    let (host, port) = advertise.rsplit_once(':').ok_or_else(not_host_port)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = !host.is_empty()
        && (host.parse::<std::net::IpAddr>().is_ok()
            || host.split('.').all(|l| {
                !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            }));
    if !port_ok || !host_ok {
        return Err(not_host_port());
    }
    Ok(())
}

/// Checks `replication:` and builds it.
fn replication(raw: RawReplication) -> Result<ReplicationConfig, ConfigError> {
    let invalid = |field: &str, message: String| ConfigError::Invalid {
        field: format!("replication.{field}"),
        message,
    };
    let listen = raw
        .listen
        .parse()
        .map_err(|e| invalid("listen", format!("{:?}: {e}", raw.listen)))?;
    check_advertise(&raw.advertise, "replication.advertise")?;
    for (i, peer) in raw.join.iter().enumerate() {
        let ok = peer
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
        if !ok {
            return Err(invalid(
                &format!("join[{i}]"),
                format!("{peer:?} is not HOST:PORT with a port 1..=65535"),
            ));
        }
    }
    let snapshot_every = bounded(
        "replication.snapshotEvery",
        raw.snapshot_every,
        10,
        10_000_000,
    )?;
    Ok(ReplicationConfig {
        listen,
        advertise: raw.advertise,
        join: raw.join,
        snapshot_every,
    })
}

/// The socket address of an optional `{listen: HOST:PORT}` block, or an error naming `field`.
fn listen_address(field: &str, raw: Option<RawMetrics>) -> Result<Option<SocketAddr>, ConfigError> {
    raw.map(|m| {
        m.listen.parse().map_err(|e| ConfigError::Invalid {
            field: field.into(),
            message: format!("{:?} is not a socket address (HOST:PORT): {e}", m.listen),
        })
    })
    .transpose()
}

/// A whole number in `min..=max`, or an error naming the field and the range.
fn bounded(field: &str, value: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::Invalid {
            field: field.into(),
            message: format!("{value} is outside {min}..={max}"),
        });
    }
    Ok(value)
}

fn transport_limits(raw: RawTransport) -> Result<TransportLimits, ConfigError> {
    const MIB: u64 = 1024 * 1024;
    let f = |name: &str| format!("transport.{name}");
    Ok(TransportLimits {
        tls_handshake_timeout: duration(&f("tlsHandshakeTimeout"), &raw.tls_handshake_timeout)?,
        max_connections: bounded(&f("maxConnections"), raw.max_connections, 1, 1_000_000)? as usize,
        max_concurrent_streams: bounded(
            &f("maxConcurrentStreams"),
            raw.max_concurrent_streams,
            1,
            10_000,
        )? as u32,
        request_timeout: duration(&f("requestTimeout"), &raw.request_timeout)?,
        // A request carries at most 20,000 digests (about 700 KiB) or one status report.
        max_recv_message_bytes: bounded(
            &f("maxRecvMessageBytes"),
            raw.max_recv_message_bytes,
            1024,
            256 * MIB,
        )? as usize,
        max_send_message_bytes: bounded(
            &f("maxSendMessageBytes"),
            raw.max_send_message_bytes,
            1024,
            256 * MIB,
        )? as usize,
    })
}

fn rpc_limits(raw: RawRpc) -> Result<RpcLimits, ConfigError> {
    let f = |name: &str| format!("rpc.{name}");
    let small = |name: &str, v: u64| bounded(&f(name), v, 1, 1_000_000).map(|v| v as u32);
    Ok(RpcLimits {
        registrations_per_minute: small("registrationsPerMinute", raw.registrations_per_minute)?,
        registration_burst: small("registrationBurst", raw.registration_burst)?,
        max_streams_per_cluster: small("maxStreamsPerCluster", raw.max_streams_per_cluster)?
            as usize,
        max_chain_headers: small("maxChainHeaders", raw.max_chain_headers)? as usize,
        state_retention: bounded(&f("stateRetention"), raw.state_retention, 1, u64::MAX)?,
        reports_per_minute: small("reportsPerMinute", raw.reports_per_minute)?,
        report_burst: small("reportBurst", raw.report_burst)?,
        max_report_apps: small("maxReportApps", raw.max_report_apps)? as usize,
        // Room for the truncation marker.
        max_report_text_bytes: bounded(
            &f("maxReportTextBytes"),
            raw.max_report_text_bytes,
            64,
            1024 * 1024,
        )? as usize,
        capability_reports_per_minute: small(
            "capabilityReportsPerMinute",
            raw.capability_reports_per_minute,
        )?,
    })
}

/// Longest lifetime a cluster certificate may be given: a year, as kubelet client
/// certificates are; renewal makes long ones unnecessary.
const MAX_CLUSTER_CERT_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

fn duration(field: &str, value: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(value).map_err(|e| ConfigError::Invalid {
        field: field.into(),
        message: format!("{value:?}: {e}"),
    })?;
    if d.is_zero() {
        return Err(ConfigError::Invalid {
            field: field.into(),
            message: "must be greater than zero".into(),
        });
    }
    Ok(d)
}

fn http_url(field: &str, url: &str) -> Result<(), ConfigError> {
    let lower = url.to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) || url.len() < 10 {
        return Err(ConfigError::Invalid {
            field: field.into(),
            message: format!("{} is not an http:// or https:// URL", RedactedUrl(url)),
        });
    }
    Ok(())
}

fn analysis(raw: RawAnalysis) -> Result<AnalysisSettings, ConfigError> {
    http_url("analysis.prometheus", &raw.prometheus)?;
    if raw.bearer_token_file.is_some() && raw.prometheus.to_ascii_lowercase().starts_with("http://")
    {
        return Err(ConfigError::Invalid {
            field: "analysis.bearerTokenFile".into(),
            message: format!(
                "the token would go in clear text to {}; use an https:// URL",
                RedactedUrl(&raw.prometheus)
            ),
        });
    }
    if let Some(path) = &raw.ca_file {
        check_ca_file(path).map_err(|message| ConfigError::Invalid {
            field: "analysis.caFile".into(),
            message: format!("{}: {message}", path.display()),
        })?;
    }
    Ok(AnalysisSettings {
        prometheus: raw.prometheus.trim_end_matches('/').to_string(),
        timeout: duration("analysis.timeout", &raw.timeout)?,
        bearer_token_file: raw.bearer_token_file,
        ca_file: raw.ca_file,
    })
}

fn notifications(raw: RawNotifications) -> Result<NotificationSettings, ConfigError> {
    if raw.queue_limit == 0 {
        return Err(ConfigError::Invalid {
            field: "notifications.queueLimit".into(),
            message: "must be greater than zero".into(),
        });
    }
    let mut targets: Vec<TargetConfig> = Vec::new();
    for (i, t) in raw.targets.into_iter().enumerate() {
        let field = |f: &str| format!("notifications.targets[{i}].{f}");
        validate_name("target name", &t.name).map_err(|e| ConfigError::Invalid {
            field: field("name"),
            message: e.to_string(),
        })?;
        if targets.iter().any(|o| o.name == t.name) {
            return Err(ConfigError::Invalid {
                field: field("name"),
                message: format!("{:?} is used twice", t.name),
            });
        }
        let kind = match t.kind.as_str() {
            "webhook" => TargetKind::Webhook,
            "slack" => TargetKind::Slack,
            other => {
                return Err(ConfigError::Invalid {
                    field: field("type"),
                    message: format!("{other:?} is not webhook or slack"),
                });
            }
        };
        let url = match (t.url, t.url_file) {
            (Some(url), None) => {
                http_url(&field("url"), &url)?;
                TargetUrl::Inline(url)
            }
            (None, Some(path)) => TargetUrl::File(path),
            _ => {
                return Err(ConfigError::Invalid {
                    field: field("url"),
                    message: "give exactly one of url and urlFile".into(),
                });
            }
        };
        let mut severities = Vec::new();
        for s in &t.filter.severities {
            severities.push(match s.as_str() {
                "info" => crate::events::Severity::Info,
                "warning" => crate::events::Severity::Warning,
                "error" => crate::events::Severity::Error,
                other => {
                    return Err(ConfigError::Invalid {
                        field: field("filter.severities"),
                        message: format!("{other:?} is not info, warning or error"),
                    });
                }
            });
        }
        targets.push(TargetConfig {
            name: t.name,
            kind,
            url,
            secret_file: t.secret_file,
            timeout: duration(&field("timeout"), &t.timeout)?,
            filter: EventFilter {
                events: t.filter.events,
                apps: t.filter.apps,
                clusters: t.filter.clusters,
                severities,
            },
        });
    }
    Ok(NotificationSettings {
        queue_limit: raw.queue_limit,
        cluster_offline_after: duration(
            "notifications.clusterOfflineAfter",
            &raw.cluster_offline_after,
        )?,
        certificate_expiry_warning: duration(
            "notifications.certificateExpiryWarning",
            &raw.certificate_expiry_warning,
        )?,
        target_down_after: duration("notifications.targetDownAfter", &raw.target_down_after)?,
        targets,
    })
}

/// Checks that a CA bundle file can be read and holds only PEM certificates, at least one.
fn check_ca_file(path: &std::path::Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut count = 0;
    for pem in x509_parser::pem::Pem::iter_from_buffer(&bytes) {
        let pem = pem.map_err(|e| format!("not a PEM file: {e}"))?;
        if pem.label != "CERTIFICATE" {
            return Err(format!(
                "holds a {:?} PEM block; only CERTIFICATE blocks belong in a CA bundle",
                pem.label
            ));
        }
        pem.parse_x509()
            .map_err(|e| format!("certificate {} does not parse: {e}", count + 1))?;
        count += 1;
    }
    if count == 0 {
        return Err("holds no PEM certificate".into());
    }
    Ok(())
}

impl HubConfig {
    /// Replaces `replication.advertise` (from `flotilla-hub run --advertise`, so replicas sharing
    /// one hub.yaml, a StatefulSet's ConfigMap, each advertise their own pod's name).
    pub fn set_advertise(&mut self, advertise: &str) -> Result<(), ConfigError> {
        let Some(replication) = self.replication.as_mut() else {
            return Err(ConfigError::Invalid {
                field: "--advertise".into(),
                message: "needs `replication:` in hub.yaml (at least its listen address)".into(),
            });
        };
        check_advertise(advertise, "--advertise")?;
        replication.advertise = advertise.to_string();
        Ok(())
    }

    /// Reads and validates a config file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.into(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig =
            flotilla_common::yaml::parse_one(text, &Limits::default()).map_err(|e| {
                ConfigError::Parse {
                    path: PathBuf::from("hub.yaml"),
                    message: e.to_string(),
                }
            })?;
        let listen = raw.listen.parse().map_err(|e| ConfigError::Invalid {
            field: "listen".into(),
            message: format!("{:?}: {e}", raw.listen),
        })?;
        if raw.server_names.is_empty() {
            return Err(ConfigError::Invalid {
                field: "serverNames".into(),
                message: "at least one name is needed".into(),
            });
        }
        if raw.max_pack_bytes == 0 {
            return Err(ConfigError::Invalid {
                field: "maxPackBytes".into(),
                message: "must be greater than zero".into(),
            });
        }
        let mut sources = Vec::new();
        for (i, s) in raw.sources.into_iter().enumerate() {
            let field = |f: &str| format!("sources[{i}].{f}");
            validate_name("source name", &s.name).map_err(|e| ConfigError::Invalid {
                field: field("name"),
                message: e.to_string(),
            })?;
            if sources.iter().any(|o: &SourceConfig| o.name == s.name) {
                return Err(ConfigError::Invalid {
                    field: field("name"),
                    message: format!("{:?} is used twice", s.name),
                });
            }
            if s.url.is_empty() {
                return Err(ConfigError::Invalid {
                    field: field("url"),
                    message: "must not be empty".into(),
                });
            }
            let plain_http = s
                .url
                .get(..7)
                .is_some_and(|p| p.eq_ignore_ascii_case("http://"));
            if plain_http && s.token_file.is_some() {
                return Err(ConfigError::Invalid {
                    field: field("tokenFile"),
                    message: format!(
                        "source {:?} would send its token in clear text to {}; use an https:// URL",
                        s.name,
                        RedactedUrl(&s.url)
                    ),
                });
            }
            if plain_http && redact_url(&s.url) != s.url {
                return Err(ConfigError::Invalid {
                    field: field("url"),
                    message: format!(
                        "source {:?}: {} carries credentials over plain http; use https:// and a tokenFile",
                        s.name,
                        RedactedUrl(&s.url)
                    ),
                });
            }
            if s.max_pack_bytes == Some(0) {
                return Err(ConfigError::Invalid {
                    field: field("maxPackBytes"),
                    message: "must be greater than zero".into(),
                });
            }
            if s.branch.is_empty() || s.branch.contains("..") || s.branch.starts_with('-') {
                return Err(ConfigError::Invalid {
                    field: field("branch"),
                    message: format!("{:?} is not a valid branch name", s.branch),
                });
            }
            if let Some(path) = &s.ca_file {
                check_ca_file(path).map_err(|message| ConfigError::Invalid {
                    field: field("caFile"),
                    message: format!("{}: {message}", path.display()),
                })?;
            }
            sources.push(SourceConfig {
                interval: duration(&field("interval"), &s.interval)?,
                name: s.name,
                url: s.url,
                branch: s.branch,
                token_file: s.token_file,
                ca_file: s.ca_file,
                max_pack_bytes: s.max_pack_bytes.unwrap_or(raw.max_pack_bytes),
                webhook_secret_file: s.webhook_secret_file,
            });
        }
        let cluster_cert_ttl = duration("clusterCertTtl", &raw.cluster_cert_ttl)?;
        if cluster_cert_ttl > MAX_CLUSTER_CERT_TTL {
            return Err(ConfigError::Invalid {
                field: "clusterCertTtl".into(),
                message: format!("{:?} is longer than the allowed 366d", raw.cluster_cert_ttl),
            });
        }
        let mut chart_repositories: Vec<ChartRepoConfig> = Vec::new();
        for (i, r) in raw.chart_repositories.into_iter().enumerate() {
            let field = |f: &str| format!("chartRepositories[{i}].{f}");
            let url = r.url.trim_end_matches('/').to_string();
            if !url.starts_with("https://") {
                return Err(ConfigError::Invalid {
                    field: field("url"),
                    message: format!("{:?} is not an https:// URL", r.url),
                });
            }
            if chart_repositories.iter().any(|c| c.url == url) {
                return Err(ConfigError::Invalid {
                    field: field("url"),
                    message: format!("{url} is listed twice"),
                });
            }
            if let Some(path) = &r.ca_file {
                check_ca_file(path).map_err(|message| ConfigError::Invalid {
                    field: field("caFile"),
                    message: format!("{}: {message}", path.display()),
                })?;
            }
            let defaults = crate::source::charts::ChartRepoAccess::default();
            chart_repositories.push(ChartRepoConfig {
                url,
                token_file: r.token_file,
                ca_file: r.ca_file,
                timeout: match &r.timeout {
                    Some(t) => duration(&field("timeout"), t)?,
                    None => defaults.timeout,
                },
                max_index_bytes: r.max_index_bytes.unwrap_or(defaults.max_index_bytes),
                max_chart_bytes: r.max_chart_bytes.unwrap_or(defaults.max_chart_bytes),
            });
        }
        if raw.event_retention == 0 {
            return Err(ConfigError::Invalid {
                field: "eventRetention".into(),
                message: "at least one event must be kept".into(),
            });
        }
        Ok(HubConfig {
            notifications: notifications(raw.notifications)?,
            analysis: raw.analysis.map(analysis).transpose()?,
            replication: raw.replication.map(replication).transpose()?,
            metrics_listen: listen_address("metrics.listen", raw.metrics)?,
            webhooks_listen: listen_address("webhooks.listen", raw.webhooks)?,
            event_retention: raw.event_retention,
            rollouts: RolloutSettings {
                offline_after: duration("rollouts.offlineAfter", &raw.rollouts.offline_after)?,
            },
            chart_repositories,
            cluster_cert_ttl,
            renew_min_interval: duration("renewMinInterval", &raw.renew_min_interval)?,
            listen,
            server_names: raw.server_names,
            state_ttl: duration("stateTtl", &raw.state_ttl)?,
            fetch_timeout: duration("fetchTimeout", &raw.fetch_timeout)?,
            max_pack_bytes: raw.max_pack_bytes,
            sources,
            limits: raw.limits,
            transport: transport_limits(raw.transport)?,
            rpc: rpc_limits(raw.rpc)?,
            render: RenderSettings {
                timeout: duration("render.timeout", &raw.render.timeout)?,
                parallelism: match raw.render.parallelism {
                    n @ 1..=256 => n as usize,
                    n => {
                        return Err(ConfigError::Invalid {
                            field: "render.parallelism".into(),
                            message: format!("{n} is not between 1 and 256"),
                        });
                    }
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_and_analysis_are_checked() {
        let c = HubConfig::parse(
            "notifications:\n  targets:\n    - {name: ops, type: webhook, url: 'https://alerts.example/x', filter: {severities: [error]}}\n    - {name: chat, type: slack, urlFile: /etc/flotilla/slack}\nanalysis: {prometheus: 'http://prometheus:9090/'}\n",
        )
        .unwrap();
        let n = &c.notifications;
        assert_eq!((n.queue_limit, n.targets.len()), (10_000, 2));
        assert_eq!(n.cluster_offline_after, Duration::from_secs(900));
        assert_eq!(
            n.targets[0].filter.severities,
            [crate::events::Severity::Error]
        );
        assert_eq!(
            n.targets[1].url,
            TargetUrl::File("/etc/flotilla/slack".into())
        );
        let a = c.analysis.unwrap();
        assert_eq!(a.prometheus, "http://prometheus:9090");
        assert_eq!(a.timeout, Duration::from_secs(10));
        for (text, want) in [
            (
                "notifications: {targets: [{name: a, type: email, url: 'https://x.example'}]}",
                "notifications.targets[0].type: \"email\" is not webhook or slack",
            ),
            (
                "notifications: {targets: [{name: a, type: slack}]}",
                "notifications.targets[0].url: give exactly one of url and urlFile",
            ),
            (
                "notifications: {targets: [{name: a, type: webhook, url: 'ftp://x.example/a'}]}",
                "is not an http:// or https:// URL",
            ),
            (
                "notifications: {targets: [{name: a, type: webhook, url: 'https://x.example', filter: {severities: [fatal]}}]}",
                "\"fatal\" is not info, warning or error",
            ),
            (
                "notifications: {targets: [{name: a, type: webhook, url: 'https://x.example'}, {name: a, type: slack, url: 'https://y.example'}]}",
                "\"a\" is used twice",
            ),
            ("notifications: {queueLimit: 0}", "notifications.queueLimit"),
            (
                "analysis: {prometheus: 'http://prom:9090', bearerTokenFile: /t}",
                "analysis.bearerTokenFile: the token would go in clear text",
            ),
            ("analysis: {prometheus: prom:9090}", "analysis.prometheus"),
        ] {
            let e = HubConfig::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn replication_is_optional_and_checked() {
        assert_eq!(HubConfig::parse("{}").unwrap().replication, None);
        let c = HubConfig::parse(
            "replication: {listen: 0.0.0.0:7444, advertise: hub-1.example.internal:7444}\n",
        )
        .unwrap();
        let r = c.replication.unwrap();
        assert_eq!(r.listen, "0.0.0.0:7444".parse().unwrap());
        assert_eq!(r.advertise_host(), "hub-1.example.internal");
        let v6 =
            HubConfig::parse("replication: {listen: '[::]:7444', advertise: '[fd00::5]:7444'}")
                .unwrap();
        assert_eq!(v6.replication.unwrap().advertise_host(), "fd00::5");
        let cases = [
            (
                "replication: {listen: nowhere, advertise: a:1}",
                "replication.listen",
            ),
            (
                "replication: {listen: 0.0.0.0:1, advertise: a}",
                "replication.advertise",
            ),
            (
                "replication: {listen: 0.0.0.0:1, advertise: 'a:0'}",
                "replication.advertise",
            ),
            (
                "replication: {listen: 0.0.0.0:1, advertise: ':7444'}",
                "replication.advertise",
            ),
            (
                "replication: {listen: 0.0.0.0:1, advertise: 'a b:7444'}",
                "replication.advertise",
            ),
        ];
        for (text, want) in cases {
            match HubConfig::parse(text) {
                Err(ConfigError::Invalid { field, .. }) => assert_eq!(field, want, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(
            HubConfig::parse("replication: {listen: 0.0.0.0:1}"),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn full_config() {
        let c = HubConfig::parse(
            "listen: 127.0.0.1:0\nstateTtl: 1h\nsources:\n  - {name: main, url: file:///r, interval: 2s}\n",
        )
        .unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.state_ttl, Duration::from_secs(3600));
        assert_eq!(c.sources[0].branch, "main");
        assert_eq!(c.sources[0].interval, Duration::from_secs(2));
        assert_eq!(c.transport, TransportLimits::default());
        assert_eq!(c.rpc, RpcLimits::default());
    }

    #[test]
    fn limits_are_read() {
        let c = HubConfig::parse(
            "transport: {tlsHandshakeTimeout: 2s, maxConnections: 5, requestTimeout: 1m}\nrpc: {stateRetention: 3, maxChainHeaders: 7, capabilityReportsPerMinute: 2}\n",
        )
        .unwrap();
        assert_eq!(c.transport.tls_handshake_timeout, Duration::from_secs(2));
        assert_eq!(c.transport.max_connections, 5);
        assert_eq!(c.transport.request_timeout, Duration::from_secs(60));
        assert_eq!(
            c.transport.max_send_message_bytes,
            TransportLimits::default().max_send_message_bytes
        );
        assert_eq!(c.rpc.state_retention, 3);
        assert_eq!(c.rpc.max_chain_headers, 7);
        let o = HubConfig::parse("rollouts: {offlineAfter: 90s}\n").unwrap();
        assert_eq!(o.rollouts.offline_after, Duration::from_secs(90));
        assert_eq!(
            HubConfig::parse("").unwrap().rollouts.offline_after,
            Duration::from_secs(300)
        );
        let r = HubConfig::parse("render: {timeout: 2m, parallelism: 4}\nchartRepositories: [{url: 'https://charts.example/stable/', timeout: 5s}]\n").unwrap();
        assert_eq!(r.chart_repositories[0].url, "https://charts.example/stable");
        assert_eq!(r.chart_repositories[0].timeout, Duration::from_secs(5));
        assert_eq!(r.render.timeout, Duration::from_secs(120));
        assert_eq!(r.render.parallelism, 4);
        assert_eq!(c.rpc.capability_reports_per_minute, 2);
        assert_eq!(
            HubConfig::parse("{}")
                .unwrap()
                .rpc
                .capability_reports_per_minute,
            6
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("listen: nope", "listen"),
            ("render: {parallelism: 0}", "render.parallelism"),
            (
                "chartRepositories: [{url: 'http://charts.example'}]",
                "chartRepositories[0].url",
            ),
            ("render: {timeout: soon}", "render.timeout"),
            ("rollouts: {offlineAfter: -5m}", "rollouts.offlineAfter"),
            (
                "sources: [{name: a, url: x, interval: 0s}]",
                "sources[0].interval",
            ),
            ("sources: [{name: A, url: x}]", "sources[0].name"),
            (
                "sources: [{name: a, url: x}, {name: a, url: y}]",
                "sources[1].name",
            ),
            (
                "sources: [{name: a, url: x, branch: '-x'}]",
                "sources[0].branch",
            ),
            ("stateTtl: forever", "stateTtl"),
            (
                "transport: {tlsHandshakeTimeout: 0s}",
                "transport.tlsHandshakeTimeout",
            ),
            ("transport: {maxConnections: 0}", "transport.maxConnections"),
            (
                "rpc: {capabilityReportsPerMinute: 0}",
                "rpc.capabilityReportsPerMinute",
            ),
            (
                "transport: {maxRecvMessageBytes: 10}",
                "transport.maxRecvMessageBytes",
            ),
            ("rpc: {stateRetention: 0}", "rpc.stateRetention"),
            ("rpc: {maxReportTextBytes: 1}", "rpc.maxReportTextBytes"),
            ("maxPackBytes: 0", "maxPackBytes"),
            (
                "sources: [{name: a, url: 'https://h/r', maxPackBytes: 0}]",
                "sources[0].maxPackBytes",
            ),
        ];
        for (text, field) in cases {
            let err = HubConfig::parse(text).unwrap_err().to_string();
            assert!(err.contains(field), "{text}: {err}");
        }
        let err = HubConfig::parse("sources: [{name: a, url: x, colour: red}]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn max_pack_bytes_defaults_and_overrides() {
        let c = HubConfig::parse(
            "maxPackBytes: 5000\nsources:\n  - {name: a, url: 'https://h/a'}\n  - {name: b, url: 'https://h/b', maxPackBytes: 7}\n",
        )
        .unwrap();
        assert_eq!(c.max_pack_bytes, 5000);
        assert_eq!(c.sources[0].max_pack_bytes, 5000);
        assert_eq!(c.sources[1].max_pack_bytes, 7);
        let c = HubConfig::parse("sources: [{name: a, url: 'https://h/a'}]").unwrap();
        assert_eq!(c.sources[0].max_pack_bytes, 1 << 30);
    }

    #[test]
    fn no_credentials_over_plain_http() {
        let cases = [
            (
                "sources: [{name: web, url: 'http://git.example/r.git', tokenFile: /t}]",
                "invalid sources[0].tokenFile: source \"web\" would send its token in clear text to http://git.example/r.git",
            ),
            (
                "sources: [{name: web, url: 'HTTP://git.example/r.git', tokenFile: /t}]",
                "invalid sources[0].tokenFile",
            ),
            (
                "sources: [{name: web, url: 'http://bob:hunter2@git.example/r.git'}]",
                "invalid sources[0].url: source \"web\": http://***@git.example/r.git carries credentials",
            ),
        ];
        for (text, want) in cases {
            let err = HubConfig::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        for ok in [
            "sources: [{name: web, url: 'https://git.example/r.git', tokenFile: /t}]",
            "sources: [{name: web, url: 'http://git.example/r.git'}]",
        ] {
            HubConfig::parse(ok).unwrap();
        }
    }

    #[test]
    fn ca_file_must_hold_certificates() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = crate::pki::CertificateAuthority::generate("test").unwrap();
        let files = [
            ("good.pem", format!("# private CA\n{}", ca.cert_pem())),
            ("two.pem", format!("{}{}", ca.cert_pem(), ca.cert_pem())),
            ("empty.pem", String::new()),
            ("key.pem", format!("{}{}", ca.cert_pem(), ca.key_pem())),
            (
                "garbage.pem",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            ),
        ];
        for (name, text) in &files {
            std::fs::write(tmp.path().join(name), text).unwrap();
        }
        let config = |file: &str| {
            let path = tmp.path().join(file);
            HubConfig::parse(&format!(
                "sources:\n  - {{name: a, url: https://git.example/r.git}}\n  - {{name: b, url: https://git.example/s.git, caFile: {}}}\n",
                path.display()
            ))
        };
        for good in ["good.pem", "two.pem"] {
            let c = config(good).unwrap();
            assert_eq!(c.sources[0].ca_file, None);
            assert_eq!(c.sources[1].ca_file, Some(tmp.path().join(good)));
        }
        let cases = [
            ("missing.pem", "cannot read"),
            ("empty.pem", "holds no PEM certificate"),
            ("key.pem", "\"PRIVATE KEY\" PEM block"),
            ("garbage.pem", "certificate 1 does not parse"),
        ];
        for (file, want) in cases {
            let err = config(file).unwrap_err().to_string();
            assert!(
                err.contains("invalid sources[1].caFile")
                    && err.contains(file)
                    && err.contains(want),
                "{file}: {err}"
            );
        }
    }
}
