//! The agent's configuration: parsed from the command line in one place, validated before
//! anything opens a file or a connection, then passed down as a typed [`AgentConfig`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use flotilla_common::capabilities::{Capabilities, validate_kube_version};
use flotilla_common::ids::validate_name;
use flotilla_common::limits::Limits;

use crate::capabilities::{DEFAULT_CAPABILITIES_INTERVAL, Overrides};
use crate::endpoints::HubAddress;
use crate::target::kube::{KubeSource, check_kubeconfig};

/// Default number of objects one apply may delete without the explicit override.
pub const DEFAULT_DELETION_BUDGET: u32 = 50;

/// Default window the deletion budget counts over (`--deletion-budget-window`).
pub const DEFAULT_DELETION_WINDOW: &str = "1h";

/// Default longest delay between retries of failed apps (`--retry-ceiling`).
pub const DEFAULT_RETRY_CEILING: &str = "5m";

/// Default number of unacknowledged status reports kept while the hub is unreachable.
pub const DEFAULT_OUTBOX_CAPACITY: usize = 100;

/// The `flotilla-agent` command line.
#[derive(Debug, Parser)]
#[command(name = "flotilla-agent", version, about = "Flotilla agent")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The agent's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register (once), then keep the cluster in line with its signed ClusterState.
    Run(RunArgs),
}

/// Flags of `flotilla-agent run`, as typed on the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Hub address, `https://HOST:PORT`; repeatable or comma-separated for a replicated hub.
    /// The agent uses one at a time, in order, and moves to the next when it fails; a host
    /// name with several addresses counts as one endpoint per address.
    #[arg(long, env = "FLOTILLA_HUB", value_delimiter = ',', required = true)]
    pub hub: Vec<String>,
    /// PEM file with the CA certificate that signed the hub's server certificate.
    #[arg(long)]
    pub ca: PathBuf,
    /// File holding the single-use bootstrap token; read only until the agent is registered.
    #[arg(long)]
    pub token_file: PathBuf,
    /// Directory of the agent's durable store (`agent.redb`).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Where objects are applied: `kube` (in-cluster, else $KUBECONFIG or ~/.kube/config),
    /// `kube:KUBECONFIG` (that file's current context), or `dir:PATH` (one JSON file per object).
    #[arg(long)]
    pub target: String,
    /// Name requested at registration (a DNS label); defaults to the host name.
    #[arg(long)]
    pub name: Option<String>,
    /// Most objects the agent may delete within the deletion budget window; more are withheld
    /// and the app reported failed.
    #[arg(long, default_value_t = DEFAULT_DELETION_BUDGET)]
    pub deletion_budget: u32,
    /// The window the deletion budget counts over, e.g. `1h`, `30m`; `0s` counts each apply
    /// pass alone. The count survives restarts.
    #[arg(long, default_value = DEFAULT_DELETION_WINDOW)]
    pub deletion_budget_window: String,
    /// Longest delay between retries of apps that failed to apply (they are retried from 1 s,
    /// doubling), e.g. `5m`.
    #[arg(long, default_value = DEFAULT_RETRY_CEILING)]
    pub retry_ceiling: String,
    /// Lets one run of the agent delete more objects than the deletion budget allows.
    #[arg(long)]
    pub override_deletion_budget: bool,
    /// Kubernetes version reported to the hub for templates (`cluster.kubeVersion`), e.g.
    /// `v1.32.4`, instead of the API server's; the only source for a directory target.
    #[arg(long)]
    pub kube_version: Option<String>,
    /// API versions reported to the hub (`cluster.apiVersions`): `v1`, `apps/v1`,
    /// `apps/v1/Deployment`; repeatable or comma-separated. Given, they replace the API server's.
    #[arg(long, value_delimiter = ',')]
    pub api_versions: Vec<String>,
    /// How often the API server's capabilities are read again; a reading equal to the last sends
    /// nothing to the hub.
    #[arg(long, default_value = DEFAULT_CAPABILITIES_INTERVAL)]
    pub capabilities_interval: String,
    /// Serve `/metrics`, `/healthz` and `/readyz` over plain HTTP on this address (`HOST:PORT`;
    /// port 0 picks one and writes it to `DATA_DIR/metrics.addr`). Absent: not served.
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where the agent applies objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// One canonical-JSON file per object in this directory.
    Dir(PathBuf),
    /// A Kubernetes cluster.
    Kube(KubeSource),
}

impl fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetSpec::Dir(path) => write!(f, "dir:{}", path.display()),
            TargetSpec::Kube(KubeSource::Infer) => write!(f, "kube"),
            TargetSpec::Kube(KubeSource::Kubeconfig(path)) => write!(f, "kube:{}", path.display()),
        }
    }
}

impl FromStr for TargetSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const SUPPORTED: &str = "supported: kube, kube:KUBECONFIG, dir:PATH";
        match s.split_once(':') {
            _ if s == "kube" => Ok(TargetSpec::Kube(KubeSource::Infer)),
            Some(("kube", path)) if !path.is_empty() => Ok(TargetSpec::Kube(
                KubeSource::Kubeconfig(PathBuf::from(path)),
            )),
            Some(("kube", _)) => Err(
                "kube: needs a kubeconfig path, e.g. kube:/etc/flotilla/kubeconfig \
                 (or plain `kube` for in-cluster or $KUBECONFIG)"
                    .into(),
            ),
            Some(("dir", path)) if !path.is_empty() => Ok(TargetSpec::Dir(PathBuf::from(path))),
            Some(("dir", _)) => Err("dir: needs a path, e.g. dir:/var/lib/flotilla/objects".into()),
            Some((kind, _)) => Err(format!("unknown target kind {kind:?}; {SUPPORTED}")),
            None => Err(format!("{s:?} is not a target; {SUPPORTED}")),
        }
    }
}

/// Delays between reconnection attempts: jittered, exponential from `min` up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub min: Duration,
    /// Largest delay, jitter included.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(200),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// An endless sequence of delays; restart it (call again) after a success.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + use<> {
        use backon::BackoffBuilder;
        let max = self.max;
        backon::ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_jitter()
            .without_max_times()
            .build()
            .map(move |d| d.min(max))
    }
}

/// The agent's validated configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Hub URLs in the order they are tried; never empty.
    pub hubs: Vec<HubAddress>,
    /// CA certificate (PEM) that verifies the hub when registering.
    pub ca_pem: String,
    /// Bootstrap token file.
    pub token_file: PathBuf,
    /// Store directory.
    pub data_dir: PathBuf,
    /// Where objects go.
    pub target: TargetSpec,
    /// Name requested at registration.
    pub name: String,
    /// Most deletions per deletion window.
    pub deletion_budget: u32,
    /// The window the deletion budget counts over; zero counts each pass alone.
    pub deletion_window: Duration,
    /// Longest delay between retries of failed apps.
    pub retry_ceiling: Duration,
    /// Whether the deletion budget is lifted for this run.
    pub override_deletion_budget: bool,
    /// Limits applied to offered ClusterStates.
    pub limits: Limits,
    /// Reconnection delays for the hub streams and apply retries.
    pub backoff: Backoff,
    /// A Watch stream silent for this long is considered dead and reopened.
    pub watch_idle_timeout: Duration,
    /// Unacknowledged status reports kept; older ones are superseded and dropped.
    pub outbox_capacity: usize,
    /// `--kube-version` and `--api-versions`.
    pub capability_overrides: Overrides,
    /// Time between readings of the capabilities.
    pub capabilities_interval: Duration,
    /// Where the metrics and probes are served, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// A flag whose value cannot be used; the message names the flag.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {flag}: {reason}")]
pub struct ConfigError {
    /// The flag, e.g. `--target`.
    pub flag: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        reason: reason.into(),
    }
}

impl AgentConfig {
    /// Checks and converts the command-line flags; `default_name` is used when `--name` is absent.
    pub fn from_args(args: RunArgs, default_name: &str) -> Result<Self, ConfigError> {
        let hubs = hub_addresses(&args.hub)?;
        let ca_pem = std::fs::read_to_string(&args.ca)
            .map_err(|e| invalid("--ca", format!("cannot read {}: {e}", args.ca.display())))?;
        check_ca_pem(&ca_pem)
            .map_err(|reason| invalid("--ca", format!("{}: {reason}", args.ca.display())))?;
        if args.token_file.as_os_str().is_empty() {
            return Err(invalid("--token-file", "must not be empty"));
        }
        if args.data_dir.as_os_str().is_empty() {
            return Err(invalid("--data-dir", "must not be empty"));
        }
        let target: TargetSpec = args.target.parse().map_err(|e| invalid("--target", e))?;
        if let TargetSpec::Kube(KubeSource::Kubeconfig(path)) = &target {
            check_kubeconfig(path)
                .map_err(|e| invalid("--target", format!("kubeconfig {}: {e}", path.display())))?;
        }
        let deletion_window =
            parse_duration("--deletion-budget-window", &args.deletion_budget_window)?;
        let retry_ceiling = parse_duration("--retry-ceiling", &args.retry_ceiling)?;
        if retry_ceiling < crate::retry::DEFAULT_RETRY_FIRST {
            return Err(invalid(
                "--retry-ceiling",
                format!(
                    "{} is shorter than the first retry delay of 1s",
                    args.retry_ceiling
                ),
            ));
        }
        let name = args.name.unwrap_or_else(|| default_name.to_string());
        validate_name("cluster name", &name).map_err(|e| invalid("--name", e.to_string()))?;
        let capability_overrides = overrides(args.kube_version, args.api_versions)?;
        let capabilities_interval =
            parse_duration("--capabilities-interval", &args.capabilities_interval)?;
        if capabilities_interval < Duration::from_secs(1) {
            return Err(invalid(
                "--capabilities-interval",
                format!("{} is shorter than 1s", args.capabilities_interval),
            ));
        }
        Ok(AgentConfig {
            hubs,
            ca_pem,
            token_file: args.token_file,
            data_dir: args.data_dir,
            target,
            name,
            deletion_budget: args.deletion_budget,
            deletion_window,
            retry_ceiling,
            override_deletion_budget: args.override_deletion_budget,
            limits: Limits::default(),
            backoff: Backoff::default(),
            watch_idle_timeout: Duration::from_secs(60),
            outbox_capacity: DEFAULT_OUTBOX_CAPACITY,
            capability_overrides,
            capabilities_interval,
            metrics_listen: args.metrics_listen,
        })
    }

    /// The hub URLs, comma-separated, for logs.
    pub fn hub_list(&self) -> String {
        let urls: Vec<&str> = self.hubs.iter().map(|h| h.url.as_str()).collect();
        urls.join(",")
    }

    /// Path of the store file inside the data directory.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("agent.redb")
    }
}

/// `--kube-version` and `--api-versions`, checked against the limits the hub applies.
fn overrides(
    kube_version: Option<String>,
    api_versions: Vec<String>,
) -> Result<Overrides, ConfigError> {
    if let Some(v) = &kube_version {
        validate_kube_version(v).map_err(|e| invalid("--kube-version", e.to_string()))?;
    }
    let given = !api_versions.is_empty();
    let checked = Capabilities::new(None, api_versions)
        .map_err(|e| invalid("--api-versions", e.to_string()))?;
    Ok(Overrides {
        kube_version,
        api_versions: given.then_some(checked.api_versions),
    })
}

fn parse_duration(flag: &'static str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value).map_err(|e| {
        invalid(
            flag,
            format!("{value:?} is not a duration such as 30m or 1h: {e}"),
        )
    })
}

/// Checks that `pem` starts with a parseable X.509 certificate.
fn check_ca_pem(pem: &str) -> Result<(), String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|_| "holds no PEM certificate".to_string())?;
    if block.label != "CERTIFICATE" {
        return Err(format!(
            "expected a CERTIFICATE PEM block, found {:?}",
            block.label
        ));
    }
    x509_parser::parse_x509_certificate(&block.contents)
        .map_err(|e| format!("the certificate does not parse: {e}"))?;
    Ok(())
}

/// Every `--hub` checked, in order; a URL given twice is tried once.
fn hub_addresses(urls: &[String]) -> Result<Vec<HubAddress>, ConfigError> {
    let mut hubs: Vec<HubAddress> = Vec::new();
    for url in urls {
        let hub = HubAddress::parse(url.trim()).map_err(|e| invalid("--hub", e))?;
        if !hubs.contains(&hub) {
            hubs.push(hub);
        }
    }
    if hubs.is_empty() {
        return Err(invalid("--hub", "at least one hub URL is needed"));
    }
    Ok(hubs)
}

/// A DNS-label version of a host name, for the default `--name`; `agent` when nothing usable remains.
pub fn name_from_hostname(hostname: &str) -> String {
    let first = hostname.trim().split('.').next().unwrap_or_default();
    let mut name: String = first
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(63)
        .collect();
    name = name.trim_matches('-').to_string();
    if name.is_empty() {
        "agent".to_string()
    } else {
        name
    }
}

/// The host name from the kernel, if it can be read.
pub fn read_hostname() -> Option<String> {
    std::fs::read_to_string(Path::new("/proc/sys/kernel/hostname")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `run` with working defaults for every required flag, replaced by `flags`.
    fn args(dir: &Path, flags: &[(&str, &str)]) -> Result<AgentConfig, ConfigError> {
        let ca = dir.join("ca.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::default()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&ca, cert.pem()).unwrap();
        std::fs::write(dir.join("not-a-cert.pem"), key.serialize_pem()).unwrap();
        std::fs::write(
            dir.join("junk.pem"),
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let mut values: Vec<(String, String)> = vec![
            ("--hub".into(), "https://127.0.0.1:7443".into()),
            ("--ca".into(), ca.display().to_string()),
            (
                "--token-file".into(),
                dir.join("token").display().to_string(),
            ),
            ("--data-dir".into(), dir.join("data").display().to_string()),
            ("--target".into(), "dir:/tmp/objects".into()),
        ];
        for (flag, value) in flags {
            match values.iter_mut().find(|(f, _)| f == flag) {
                Some(slot) => slot.1 = value.to_string(),
                None => values.push((flag.to_string(), value.to_string())),
            }
        }
        let mut argv = vec!["flotilla-agent".to_string(), "run".into()];
        argv.extend(values.into_iter().flat_map(|(f, v)| [f, v]));
        let Command::Run(run) = Cli::try_parse_from(argv).unwrap().command;
        AgentConfig::from_args(run, "host-1")
    }

    #[test]
    fn good_flags_become_a_config() {
        let dir = tempfile::tempdir().unwrap();
        let config = args(dir.path(), &[]).unwrap();
        assert_eq!(config.target, TargetSpec::Dir("/tmp/objects".into()));
        assert_eq!(config.name, "host-1");
        assert_eq!(config.deletion_budget, DEFAULT_DELETION_BUDGET);
        assert_eq!(config.deletion_window, Duration::from_secs(3600));
        assert_eq!(config.retry_ceiling, Duration::from_secs(300));
        let tuned = args(
            dir.path(),
            &[
                ("--deletion-budget-window", "0s"),
                ("--retry-ceiling", "30s"),
            ],
        )
        .unwrap();
        assert_eq!(tuned.deletion_window, Duration::ZERO);
        assert_eq!(tuned.retry_ceiling, Duration::from_secs(30));
        assert!(!config.override_deletion_budget);
        assert!(config.store_path().ends_with("data/agent.redb"));
        assert_eq!(config.capability_overrides, Overrides::default());
        assert_eq!(config.capabilities_interval, Duration::from_secs(300));
    }

    #[test]
    fn capability_flags_are_checked_and_comma_separated_lists_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let config = args(
            dir.path(),
            &[
                ("--kube-version", "v1.30.2+k3s1"),
                ("--api-versions", "v1,apps/v1/Deployment"),
                ("--capabilities-interval", "30s"),
            ],
        )
        .unwrap();
        let overrides = config.capability_overrides;
        assert_eq!(overrides.kube_version.as_deref(), Some("v1.30.2+k3s1"));
        assert_eq!(
            overrides.api_versions,
            Some(["apps/v1/Deployment".to_string(), "v1".into()].into())
        );
        assert_eq!(config.capabilities_interval, Duration::from_secs(30));
        let err = args(dir.path(), &[("--api-versions", "apps/v1/Deploy ment")]).unwrap_err();
        assert!(
            err.to_string().contains("the kind \"Deploy ment\""),
            "{err}"
        );
    }

    #[test]
    fn kube_targets_are_checked_before_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = args(dir.path(), &[("--target", "kube")]).unwrap();
        assert_eq!(config.target, TargetSpec::Kube(KubeSource::Infer));
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n\
             users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n\
             current-context: x\n",
        )
        .unwrap();
        let spec = format!("kube:{}", kubeconfig.display());
        let config = args(dir.path(), &[("--target", &spec)]).unwrap();
        assert_eq!(
            config.target,
            TargetSpec::Kube(KubeSource::Kubeconfig(kubeconfig.clone()))
        );
        assert_eq!(config.target.to_string(), spec);
        std::fs::write(
            &kubeconfig,
            "apiVersion: v1\nkind: Config\ncurrent-context: nope\n",
        )
        .unwrap();
        let err = args(dir.path(), &[("--target", &spec)]).unwrap_err();
        assert!(err.to_string().contains("current-context"), "{err}");
    }

    #[test]
    fn bad_flags_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let cases: &[(&str, &str)] = &[
            ("--target", "kube:/nonexistent/kubeconfig"),
            ("--target", "kube:"),
            ("--target", "ftp:x"),
            ("--target", "dir:"),
            ("--target", "/tmp/x"),
            ("--name", "Bad_Name"),
            ("--hub", "http://h:1"),
            ("--hub", "https://h:1/path"),
            ("--hub", "https://h:1,ftp://h:2"),
            ("--hub", ""),
            ("--ca", "/nonexistent/ca.pem"),
            ("--ca", "not-a-cert.pem"),
            ("--ca", "junk.pem"),
            ("--deletion-budget-window", "an hour"),
            ("--deletion-budget-window", "3 fortnights"),
            ("--retry-ceiling", "5"),
            ("--retry-ceiling", "500ms"),
            ("--kube-version", "1.32"),
            ("--api-versions", "Apps/v1"),
            ("--api-versions", "v1,,apps/v1"),
            ("--capabilities-interval", "100ms"),
            ("--capabilities-interval", "often"),
        ];
        for (flag, value) in cases {
            let value = if value.ends_with(".pem") && !value.starts_with('/') {
                dir.path().join(value).display().to_string()
            } else {
                value.to_string()
            };
            let err = args(dir.path(), &[(flag, &value)]).unwrap_err();
            assert_eq!(err.flag, *flag, "{flag} {value}: {err}");
            assert!(err.to_string().starts_with(&format!("invalid {flag}:")));
        }
    }

    #[test]
    fn several_hubs_are_kept_in_order_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let config = args(
            dir.path(),
            &[(
                "--hub",
                "https://hub-b.example:7443,https://hub-a.example:7443/,https://hub-b.example:7443",
            )],
        )
        .unwrap();
        let urls: Vec<&str> = config.hubs.iter().map(|h| h.url.as_str()).collect();
        assert_eq!(
            urls,
            ["https://hub-b.example:7443", "https://hub-a.example:7443"]
        );
        assert_eq!(config.hubs[1].host, "hub-a.example");
        assert_eq!(
            config.hub_list(),
            "https://hub-b.example:7443,https://hub-a.example:7443"
        );
        // Repeated flags add up, in the order given.
        let Command::Run(run) = Cli::try_parse_from([
            "flotilla-agent",
            "run",
            "--hub",
            "https://a:1",
            "--hub",
            "https://b:2,https://c:3",
            "--ca",
            "x",
            "--token-file",
            "t",
            "--data-dir",
            "d",
            "--target",
            "dir:/x",
        ])
        .unwrap()
        .command;
        assert_eq!(run.hub, ["https://a:1", "https://b:2", "https://c:3"]);
    }

    #[test]
    fn host_names_become_dns_labels() {
        for (host, want) in [
            ("edge-1\n", "edge-1"),
            ("Shop_42.example.com", "shop-42"),
            ("---", "agent"),
            ("", "agent"),
        ] {
            assert_eq!(name_from_hostname(host), want, "{host:?}");
        }
    }

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        let backoff = Backoff {
            min: Duration::from_millis(10),
            max: Duration::from_millis(80),
        };
        let delays: Vec<Duration> = backoff.delays().take(20).collect();
        assert_eq!(delays.len(), 20);
        assert!(delays[0] >= backoff.min && delays[0] <= backoff.min * 2);
        assert!(delays.iter().all(|d| *d <= backoff.max));
        assert!(delays[10..].iter().all(|d| *d >= backoff.max / 2));
    }
}
