//! The admin gRPC client and the CLI's view of hub data. Proto types are
//! converted here, once, into the serializable structs the CLI prints.
//!
//! This is the one place the CLI connects. `--hub`/`FLOTILLA_HUB` may list several hub URLs,
//! comma-separated (the replicas of one hub): they are tried in order, and the first that
//! answers is used. A connection error or `Unavailable` moves on to the next; any other answer,
//! error or not, is the answer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::admin_client::AdminClient;
use serde::Serialize;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// Talking to the hub failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Admin bundle missing or unreadable.
    #[error("cannot read {path}: {source} (is --admin-dir the hub's admin bundle?)")]
    Bundle {
        /// File.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// Bad URL or TLS setup.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// Hub URL.
        url: String,
        /// Error.
        source: tonic::transport::Error,
    },
    /// The hub answered with an error.
    #[error("hub: {}", .0.message())]
    Rpc(#[from] tonic::Status),
    /// Several hubs were given and none answered.
    #[error("no hub answers: {0}")]
    NoHub(String),
}

impl ClientError {
    /// Whether the next hub should be tried: this one could not be reached or was unavailable.
    fn try_next(&self) -> bool {
        match self {
            ClientError::Connect { .. } => true,
            ClientError::Rpc(status) => status.code() == tonic::Code::Unavailable,
            _ => false,
        }
    }
}

/// The hub URLs of a `--hub` value: comma-separated, in order, blanks dropped.
pub fn hub_urls(hubs: &str) -> Vec<&str> {
    hubs.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// Goes through `hubs` in order until `attempt` gives an answer that is not "try the next".
async fn first_answer<T>(
    hubs: &str,
    mut attempt: impl AsyncFnMut(&str) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let urls = hub_urls(hubs);
    let mut failures: Vec<(String, ClientError)> = Vec::new();
    for url in &urls {
        match attempt(url).await {
            Err(e) if e.try_next() => failures.push((url.to_string(), e)),
            answer => return answer,
        }
    }
    if failures.len() <= 1 {
        return Err(failures.pop().map(|(_, e)| e).unwrap_or_else(|| {
            ClientError::Rpc(tonic::Status::invalid_argument("no hub URL given (--hub)"))
        }));
    }
    let described: Vec<String> = failures
        .iter()
        .map(|(url, e)| match e {
            // A status's source is itself: its message says it all.
            ClientError::Rpc(_) => format!("{url}: {e}"),
            _ => format!("{url}: {}", error_chain(e)),
        })
        .collect();
    Err(ClientError::NoHub(described.join("; ")))
}

/// `error: cause: cause`, for one line per hub.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    out
}

/// An admin client for the first of `hubs` (comma-separated URLs) that can be connected to.
pub async fn connect_admin(
    hubs: &str,
    admin_dir: &Path,
) -> Result<AdminClient<Channel>, ClientError> {
    first_answer(hubs, async |url| connect_one(url, admin_dir).await).await
}

/// Runs `call` against the first of `hubs` that answers it: a hub that cannot be connected to
/// or answers `Unavailable` passes the call to the next. For calls that are safe to repeat on
/// another replica (reads, and writes an unavailable replica did not take).
pub async fn with_admin<T>(
    hubs: &str,
    admin_dir: &Path,
    mut call: impl AsyncFnMut(&mut AdminClient<Channel>) -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    first_answer(hubs, async |url| {
        let mut client = connect_one(url, admin_dir).await?;
        call(&mut client).await
    })
    .await
}

/// An mTLS channel to one hub with the operator's admin certificate.
async fn connect_one(hub: &str, admin_dir: &Path) -> Result<AdminClient<Channel>, ClientError> {
    let read = |name: &str| {
        let path = admin_dir.join(name);
        std::fs::read(&path).map_err(|source| ClientError::Bundle { path, source })
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")?))
        .identity(Identity::from_pem(
            read("admin.pem")?,
            read("admin-key.pem")?,
        ));
    let connect = |source| ClientError::Connect {
        url: hub.to_string(),
        source,
    };
    let channel = Channel::from_shared(hub.to_string())
        .map_err(|e| {
            ClientError::Rpc(tonic::Status::invalid_argument(format!(
                "bad hub URL {hub:?}: {e}"
            )))
        })?
        .tls_config(tls)
        .map_err(connect)?
        .connect()
        .await
        .map_err(connect)?;
    // The hub's default transport.maxSendMessageBytes and maxRecvMessageBytes.
    Ok(AdminClient::new(channel)
        .max_decoding_message_size(16 * 1024 * 1024)
        .max_encoding_message_size(4 * 1024 * 1024))
}

/// A registered cluster as the CLI shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClusterView {
    /// Cluster id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Unix seconds.
    pub registered_at: i64,
    /// Unix seconds of the last contact; 0 for never.
    pub last_contact: i64,
    /// Newest ClusterState version issued.
    pub desired_version: u64,
    /// Version the agent reports applied.
    pub applied_version: u64,
    /// Why the agent refused the newest state, if it did.
    pub rejection: String,
    /// Unix seconds when the cluster's newest certificate expires; 0 if unknown.
    pub cert_expires_at: i64,
    /// Unix seconds of the last renewal; 0 if never renewed.
    pub renewed_at: i64,
    /// The newest problem: a rejected state or the first failed app.
    pub last_error: String,
    /// What the cluster's agent reported its API server offers.
    pub capabilities: CapabilitiesView,
}

/// A cluster's capabilities as the CLI shows them.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CapabilitiesView {
    /// The API server's version, e.g. `v1.32.4`; empty when none was reported.
    pub kube_version: String,
    /// Served group-versions and `group/version/Kind` entries, sorted.
    pub api_versions: Vec<String>,
}

/// A source as the CLI shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SourceView {
    /// Name.
    pub name: String,
    /// URL.
    pub url: String,
    /// Branch.
    pub branch: String,
    /// Newest fetched commit.
    pub fetched_commit: String,
    /// Commit in force.
    pub rendered_commit: String,
    /// Why the newest commit is not in force.
    pub error: String,
    /// Unix seconds.
    pub last_fetch: i64,
}

/// One app on one cluster: desired vs applied.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AppView {
    /// App.
    pub app: String,
    /// Commit the hub wants.
    pub desired_commit: String,
    /// Version that carries it.
    pub desired_version: u64,
    /// Commit the agent applied.
    pub applied_commit: String,
    /// Version the agent applied.
    pub applied_version: u64,
    /// pending | applied | failed (empty before the first report).
    pub phase: String,
    /// Detail.
    pub message: String,
    /// unknown | progressing | healthy | degraded | failed (empty before the first report).
    pub health: String,
    /// Why the app is not healthy.
    pub health_reason: String,
    /// The flotilla.yaml the app is declared in.
    pub origin: String,
}

/// One cluster and its apps.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClusterStatusView {
    /// The cluster.
    #[serde(flatten)]
    pub cluster: ClusterView,
    /// Its apps.
    pub apps: Vec<AppView>,
}

/// Everything `flotilla status` shows.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StatusView {
    /// Sources.
    pub sources: Vec<SourceView>,
    /// Clusters.
    pub clusters: Vec<ClusterStatusView>,
    /// Notification targets and their delivery.
    pub notification_targets: Vec<NotificationTargetView>,
}

/// A notification target and where its delivery stands.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NotificationTargetView {
    /// Name in hub.yaml.
    pub name: String,
    /// webhook | slack.
    #[serde(rename = "type")]
    pub kind: String,
    /// Sequence number of the last event it was given or skipped.
    pub delivered_seq: u64,
    /// Events after it.
    pub queued: u64,
    /// Unix seconds since it has been down; 0 while up.
    pub down_since: i64,
}

impl StatusView {
    /// True when every cluster applied its newest state with every app applied
    /// at `commit`, and there is at least one cluster.
    pub fn converged_at(&self, commit: &str) -> bool {
        !self.clusters.is_empty()
            && self.clusters.iter().all(|c| {
                c.cluster.desired_version > 0
                    && c.cluster.applied_version == c.cluster.desired_version
                    && !c.apps.is_empty()
                    && c.apps.iter().all(|a| {
                        a.phase == "applied"
                            && a.applied_commit == commit
                            && a.desired_commit == commit
                    })
            })
    }
}

fn cluster_view(c: pb::Cluster) -> ClusterView {
    ClusterView {
        id: c.id,
        name: c.name,
        labels: c.labels.into_iter().collect(),
        registered_at: c.registered_at,
        last_contact: c.last_contact,
        desired_version: c.desired_version,
        applied_version: c.applied_version,
        rejection: c.rejection,
        cert_expires_at: c.cert_expires_at,
        renewed_at: c.renewed_at,
        last_error: c.last_error,
        capabilities: c
            .capabilities
            .map(|caps| CapabilitiesView {
                kube_version: caps.kube_version,
                api_versions: caps.api_versions,
            })
            .unwrap_or_default(),
    }
}

fn cluster_status_view(c: pb::ClusterStatus) -> ClusterStatusView {
    ClusterStatusView {
        cluster: cluster_view(c.cluster.unwrap_or_default()),
        apps: c
            .apps
            .into_iter()
            .map(|a| AppView {
                app: a.app,
                desired_commit: a.desired_commit,
                desired_version: a.desired_version,
                applied_commit: a.applied_commit,
                applied_version: a.applied_version,
                phase: a.phase,
                message: a.message,
                health: a.health,
                health_reason: a.health_reason,
                origin: a.origin,
            })
            .collect(),
    }
}

/// One cluster, by name or id, with its apps.
pub async fn cluster(
    client: &mut AdminClient<Channel>,
    name: &str,
) -> Result<ClusterStatusView, ClientError> {
    let resp = client
        .get_cluster(pb::GetClusterRequest {
            cluster: name.to_string(),
        })
        .await?
        .into_inner();
    Ok(cluster_status_view(resp))
}

/// Sets and removes labels of a cluster.
pub async fn label_cluster(
    client: &mut AdminClient<Channel>,
    name: &str,
    set: &BTreeMap<String, String>,
    remove: &[String],
) -> Result<ClusterView, ClientError> {
    let resp = client
        .label_cluster(pb::LabelClusterRequest {
            cluster: name.to_string(),
            set: set.clone().into_iter().collect(),
            remove: remove.to_vec(),
        })
        .await?
        .into_inner();
    Ok(cluster_view(resp))
}

/// A deleted cluster.
#[derive(Debug, Clone, Serialize)]
pub struct DeletedView {
    /// Its id.
    pub id: String,
    /// Its name, free to register again with a new token.
    pub name: String,
}

/// Deletes a cluster: its certificate is refused from then on.
pub async fn delete_cluster(
    client: &mut AdminClient<Channel>,
    name: &str,
) -> Result<DeletedView, ClientError> {
    let resp = client
        .delete_cluster(pb::DeleteClusterRequest {
            cluster: name.to_string(),
        })
        .await?
        .into_inner();
    Ok(DeletedView {
        id: resp.id,
        name: resp.name,
    })
}

/// One event of the hub's event log.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EventView {
    /// Sequence number.
    pub seq: u64,
    /// Unix seconds.
    pub at: i64,
    /// What happened.
    pub kind: String,
    /// info | warning | error.
    pub severity: String,
    /// Source, app and cluster it concerns (empty when none).
    pub source: String,
    /// App.
    pub app: String,
    /// Cluster.
    pub cluster: String,
    /// A sentence.
    pub message: String,
}

/// Which events to list or follow.
#[derive(Debug, Clone, Default)]
pub struct EventsQuery {
    /// Only events after this sequence number.
    pub after_seq: u64,
    /// Keep streaming new events.
    pub follow: bool,
    /// Only this app's.
    pub app: String,
    /// Only this cluster's.
    pub cluster: String,
    /// Most stored events (0: 100).
    pub limit: u32,
}

/// Streams events to `each` until the stream ends (at once without `follow`).
pub async fn events(
    client: &mut AdminClient<Channel>,
    query: EventsQuery,
    mut each: impl FnMut(EventView),
) -> Result<(), ClientError> {
    let mut stream = client
        .events(pb::EventsRequest {
            after_seq: query.after_seq,
            follow: query.follow,
            app: query.app,
            cluster: query.cluster,
            limit: query.limit,
        })
        .await?
        .into_inner();
    while let Some(e) = stream.message().await? {
        each(EventView {
            seq: e.seq,
            at: e.at,
            kind: e.kind,
            severity: e.severity,
            source: e.source,
            app: e.app,
            cluster: e.cluster,
            message: e.message,
        });
    }
    Ok(())
}

/// Lists clusters.
pub async fn clusters(client: &mut AdminClient<Channel>) -> Result<Vec<ClusterView>, ClientError> {
    let resp = client
        .list_clusters(pb::ListClustersRequest {})
        .await?
        .into_inner();
    Ok(resp.clusters.into_iter().map(cluster_view).collect())
}

/// Fetches sources and per-cluster app status.
pub async fn status(client: &mut AdminClient<Channel>) -> Result<StatusView, ClientError> {
    let resp = client
        .get_status(pb::GetStatusRequest {})
        .await?
        .into_inner();
    Ok(StatusView {
        sources: resp
            .sources
            .into_iter()
            .map(|s| SourceView {
                name: s.name,
                url: s.url,
                branch: s.branch,
                fetched_commit: s.fetched_commit,
                rendered_commit: s.rendered_commit,
                error: s.error,
                last_fetch: s.last_fetch,
            })
            .collect(),
        clusters: resp.clusters.into_iter().map(cluster_status_view).collect(),
        notification_targets: resp
            .notification_targets
            .into_iter()
            .map(|t| NotificationTargetView {
                name: t.name,
                kind: t.r#type,
                delivered_seq: t.delivered_seq,
                queued: t.queued,
                down_since: t.down_since,
            })
            .collect(),
    })
}

/// A created bootstrap token.
#[derive(Debug, Clone, Serialize)]
pub struct TokenView {
    /// The secret; shown once.
    pub token: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Creates a single-use bootstrap token.
pub async fn create_token(
    client: &mut AdminClient<Channel>,
    ttl: std::time::Duration,
    labels: &BTreeMap<String, String>,
    name: Option<&str>,
) -> Result<TokenView, ClientError> {
    let resp = client
        .create_token(pb::CreateTokenRequest {
            ttl_seconds: ttl.as_secs(),
            labels: labels.clone().into_iter().collect(),
            name: name.unwrap_or_default().to_string(),
        })
        .await?
        .into_inner();
    Ok(TokenView {
        token: resp.token,
        expires_at: resp.expires_at,
    })
}

/// What `flotilla plan` shows: a revision of an app, its stages and per-cluster object changes.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PlanView {
    /// App.
    pub app: String,
    /// Source that declares it.
    pub source: String,
    /// Commit the revision resolved to.
    pub commit: String,
    /// Fleet-wide release id at that commit.
    pub release: String,
    /// Whether the app has a `rollout:` block (else one stage, `all`).
    pub staged: bool,
    /// Stages in rollout order.
    pub stages: Vec<PlanStageView>,
    /// Problems with the rollout settings against the fleet.
    pub warnings: Vec<String>,
    /// Unified object diff of the cluster asked for; empty when none was.
    pub diff: String,
}

/// One stage of a plan.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PlanStageView {
    /// Stage name.
    pub name: String,
    /// Clusters updating at once, at most.
    pub max_unavailable: u32,
    /// Seconds the stage stays healthy before the next.
    pub bake_seconds: u64,
    /// auto | manual.
    pub approval: String,
    /// Clusters in the order they get the release.
    pub clusters: Vec<PlanClusterView>,
}

/// One cluster of a plan.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PlanClusterView {
    /// Cluster id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Objects only the revision has.
    pub added: u32,
    /// Objects with other bytes.
    pub changed: u32,
    /// Objects the revision removes.
    pub removed: u32,
    /// Objects that stay as they are.
    pub unchanged: u32,
    /// Out of contact: the rollout would defer it.
    pub offline: bool,
    /// Why the app does not render for it.
    pub error: String,
}

/// Plans `app` at `rev` (empty: the newest fetched commit), with the diff of `diff_cluster` if given.
pub async fn plan(
    client: &mut AdminClient<Channel>,
    app: &str,
    rev: &str,
    diff_cluster: &str,
) -> Result<PlanView, ClientError> {
    let resp = client
        .plan(pb::PlanRequest {
            app: app.to_string(),
            rev: rev.to_string(),
            diff_cluster: diff_cluster.to_string(),
        })
        .await?
        .into_inner();
    Ok(PlanView {
        app: resp.app,
        source: resp.source,
        commit: resp.commit,
        release: resp.release,
        staged: resp.staged,
        stages: resp
            .stages
            .into_iter()
            .map(|s| PlanStageView {
                name: s.name,
                max_unavailable: s.max_unavailable,
                bake_seconds: s.bake_seconds,
                approval: s.approval,
                clusters: s
                    .clusters
                    .into_iter()
                    .map(|c| PlanClusterView {
                        id: c.id,
                        name: c.name,
                        added: c.added,
                        changed: c.changed,
                        removed: c.removed,
                        unchanged: c.unchanged,
                        offline: c.offline,
                        error: c.error,
                    })
                    .collect(),
            })
            .collect(),
        warnings: resp.warnings,
        diff: resp.diff,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_lists_are_split_in_order() {
        assert_eq!(
            hub_urls(" https://a:1, ,https://b:2,"),
            ["https://a:1", "https://b:2"]
        );
        assert_eq!(hub_urls("https://a:1"), ["https://a:1"]);
    }

    #[tokio::test]
    async fn unreachable_and_unavailable_hubs_pass_the_call_on_and_other_answers_stand() {
        let tried = std::sync::Mutex::new(Vec::new());
        let answer = first_answer(
            "https://a:1,https://b:2,https://c:3,https://d:4",
            async |url| {
                tried.lock().unwrap().push(url.to_string());
                match url {
                    "https://a:1" => Err(ClientError::Rpc(tonic::Status::unavailable("starting"))),
                    "https://b:2" => Err(ClientError::Rpc(tonic::Status::not_found(
                        "no such cluster",
                    ))),
                    _ => Ok(url.to_string()),
                }
            },
        )
        .await;
        assert!(matches!(answer, Err(ClientError::Rpc(s)) if s.code() == tonic::Code::NotFound));
        assert_eq!(*tried.lock().unwrap(), ["https://a:1", "https://b:2"]);

        let answer = first_answer("https://a:1,https://b:2", async |url| {
            if url == "https://a:1" {
                Err(ClientError::Rpc(tonic::Status::unavailable("down")))
            } else {
                Ok(url.to_string())
            }
        })
        .await;
        assert_eq!(answer.unwrap(), "https://b:2");

        let none: Result<(), _> = first_answer("https://a:1,https://b:2", async |_| {
            Err(ClientError::Rpc(tonic::Status::unavailable("down")))
        })
        .await;
        let message = none.unwrap_err().to_string();
        assert!(
            message.starts_with("no hub answers: https://a:1: hub: down; https://b:2"),
            "{message}"
        );
        // One hub keeps its own error, as before.
        let one: Result<(), _> = first_answer("https://a:1", async |_| {
            Err(ClientError::Rpc(tonic::Status::unavailable("down")))
        })
        .await;
        assert_eq!(one.unwrap_err().to_string(), "hub: down");
    }
}
