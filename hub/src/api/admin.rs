//! The `Admin` service, for callers with an admin certificate.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use flotilla_common::ids::validate_name;
use flotilla_common::labels::{Labels, validate_label};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::admin_server::Admin;
use rand::RngCore;
use tonic::{Request, Response, Status};
use tracing::info;

use super::registration::token_hash;
use super::{ApiState, caller, internal, store_error, wire};
use crate::controller::{RolloutAction, RolloutActionError, unix_now};
use crate::events::Event;
use crate::pki::PeerIdentity;
use crate::store::{ClusterSnapshot, ClusterUpdateError, Notice, TokenRecord};

/// Name and labels of every cluster, for rollout messages.
fn rollout_names(
    store: &crate::store::HubStore,
) -> Result<super::rollouts::Names, crate::store::StoreError> {
    Ok(store
        .clusters()?
        .into_iter()
        .map(|c| (c.id, (c.name, c.labels)))
        .collect())
}

fn event_message(e: Event) -> pb::Event {
    pb::Event {
        seq: e.seq,
        at: e.event.at,
        kind: e.event.kind,
        severity: e.event.severity.as_str().to_string(),
        source: e.event.source,
        app: e.event.app,
        cluster: e.event.cluster,
        message: e.event.message,
    }
}

/// Longest a bootstrap token may live.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The Admin service.
pub struct AdminService(pub ApiState);

impl AdminService {
    fn admin<T>(&self, request: &Request<T>) -> Result<String, Status> {
        match caller(request)? {
            PeerIdentity::Admin(name) => Ok(name),
            other @ (PeerIdentity::Cluster(_) | PeerIdentity::Replica(_)) => {
                Err(Status::permission_denied(format!(
                    "an admin certificate is required; this one names {other}"
                )))
            }
        }
    }

    fn cluster_message(&self, snap: &ClusterSnapshot) -> pb::Cluster {
        let c = &snap.cluster;
        let report = snap.report.as_ref();
        let contact = self
            .0
            .last_contact
            .lock()
            .expect("last_contact lock")
            .get(&c.id)
            .copied()
            .unwrap_or(0);
        pb::Cluster {
            id: c.id.clone(),
            name: c.name.clone(),
            labels: c.labels.clone().into_iter().collect(),
            registered_at: c.registered_at,
            last_contact: contact.max(snap.reported_at),
            desired_version: snap.latest.as_ref().map(|(v, _)| *v).unwrap_or(0),
            applied_version: report.map(|r| r.applied_version).unwrap_or(0),
            rejection: report.and_then(|r| r.rejection.clone()).unwrap_or_default(),
            cert_expires_at: c.cert_expires_at,
            renewed_at: c.renewed_at,
            last_error: report.map(last_error).unwrap_or_default(),
            capabilities: Some(wire::capabilities_message(&c.capabilities)),
        }
    }

    /// The cluster with its app rows, as `GetStatus` shows every cluster.
    fn cluster_status(&self, snap: ClusterSnapshot) -> pb::ClusterStatus {
        let cluster = self.cluster_message(&snap);
        let desired = snap
            .latest
            .as_ref()
            .and_then(|(_, s)| s.decode_unverified().ok());
        let report = snap.report;
        let mut rows: BTreeMap<String, pb::AppRow> = BTreeMap::new();
        if let Some(state) = &desired {
            for app in &state.body.apps {
                rows.insert(
                    app.name.clone(),
                    pb::AppRow {
                        app: app.name.clone(),
                        desired_commit: app.commit.clone(),
                        desired_version: state.header.version,
                        origin: app.origin.clone(),
                        ..Default::default()
                    },
                );
            }
        }
        for app in report.iter().flat_map(|r| r.apps.iter()) {
            let row = rows.entry(app.app.clone()).or_insert_with(|| pb::AppRow {
                app: app.app.clone(),
                ..Default::default()
            });
            row.applied_commit = app.commit.clone();
            row.applied_version = app.version;
            row.phase = app.phase.as_str().to_string();
            row.message = app.message.clone();
            row.health = app.health.as_str().to_string();
            row.health_reason = app.health_reason.clone();
        }
        pb::ClusterStatus {
            cluster: Some(cluster),
            apps: rows.into_values().collect(),
        }
    }
}

/// The newest problem a report shows: a rejected ClusterState, else the first failed app.
pub(crate) fn last_error(report: &flotilla_common::status::StatusReport) -> String {
    if let Some(rejection) = &report.rejection {
        return format!("ClusterState rejected: {rejection}");
    }
    report
        .apps
        .iter()
        .find(|a| a.phase == flotilla_common::status::AppPhase::Failed)
        .map(|a| format!("app {}: {}", a.app, a.message))
        .unwrap_or_default()
}

fn update_error(e: ClusterUpdateError) -> Status {
    match e {
        ClusterUpdateError::NotFound(_) => Status::not_found(e.to_string()),
        ClusterUpdateError::Store(e) => store_error(e),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let admin = self.admin(&request)?;
        let req = request.into_inner();
        let ttl = Duration::from_secs(req.ttl_seconds);
        if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
            return Err(Status::invalid_argument(format!(
                "ttl must be between 1s and {}s",
                MAX_TOKEN_TTL.as_secs()
            )));
        }
        let labels: Labels = req.labels.into_iter().collect();
        for (k, v) in &labels {
            validate_label(k, v).map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        let name = match req.name.as_str() {
            "" => None,
            name => {
                validate_name("cluster name", name)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                if self.0.store.find_cluster(name).map_err(internal)?.is_some() {
                    return Err(Status::already_exists(format!(
                        "a cluster named {name:?} is already registered; delete it first (flotilla cluster delete {name})"
                    )));
                }
                Some(name.to_string())
            }
        };
        // 256 random bits; only the hash is stored.
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let token = format!(
            "flt_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        );
        let now = unix_now();
        let record = TokenRecord {
            labels,
            created_at: now,
            expires_at: now + ttl.as_secs() as i64,
            used_by: None,
            name: name.clone(),
        };
        let store = self.0.store.clone();
        let hash = token_hash(&token);
        let expires_at = record.expires_at;
        tokio::task::spawn_blocking(move || {
            store.sweep_tokens(now)?;
            store.put_token(&hash, &record)
        })
        .await
        .map_err(internal)?
        .map_err(store_error)?;
        info!(admin = %admin, expires_at, name = name.as_deref().unwrap_or(""), "bootstrap token created");
        Ok(Response::new(pb::CreateTokenResponse { token, expires_at }))
    }

    async fn list_clusters(
        &self,
        request: Request<pb::ListClustersRequest>,
    ) -> Result<Response<pb::ListClustersResponse>, Status> {
        self.admin(&request)?;
        let clusters = self
            .0
            .store
            .cluster_snapshots()
            .map_err(internal)?
            .iter()
            .map(|snap| self.cluster_message(snap))
            .collect();
        Ok(Response::new(pb::ListClustersResponse { clusters }))
    }

    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        self.admin(&request)?;
        let mut sources = Vec::new();
        for s in self.0.sources.iter() {
            let record = self
                .0
                .store
                .source(&s.name)
                .map_err(internal)?
                .unwrap_or_default();
            sources.push(pb::SourceStatus {
                name: s.name.clone(),
                url: crate::source::redact_url(&s.url),
                branch: s.branch.clone(),
                fetched_commit: record.fetched_commit,
                rendered_commit: record.rendered_commit,
                error: record.error,
                last_fetch: record.last_fetch,
            });
        }
        let clusters = self
            .0
            .store
            .cluster_snapshots()
            .map_err(internal)?
            .into_iter()
            .map(|snap| self.cluster_status(snap))
            .collect();
        let newest = self.0.store.last_event_seq().map_err(internal)?;
        let mut notification_targets = Vec::new();
        for t in self.0.notification_targets.iter() {
            let meta = |prefix: &str| self.0.store.meta(&format!("{prefix}{}", t.name));
            let delivered = meta(crate::notify::CURSOR_PREFIX).map_err(internal)?;
            notification_targets.push(pb::NotificationTargetStatus {
                name: t.name.clone(),
                r#type: match t.kind {
                    crate::config::TargetKind::Webhook => "webhook",
                    crate::config::TargetKind::Slack => "slack",
                }
                .into(),
                delivered_seq: delivered.unwrap_or(newest),
                queued: newest.saturating_sub(delivered.unwrap_or(newest)),
                down_since: meta(crate::notify::DOWN_PREFIX)
                    .map_err(internal)?
                    .unwrap_or(0) as i64,
            });
        }
        Ok(Response::new(pb::GetStatusResponse {
            sources,
            clusters,
            notification_targets,
        }))
    }

    async fn get_cluster(
        &self,
        request: Request<pb::GetClusterRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        self.admin(&request)?;
        let name = request.into_inner().cluster;
        let snap = self
            .0
            .store
            .cluster_snapshot(&name)
            .map_err(internal)?
            .ok_or_else(|| update_error(ClusterUpdateError::NotFound(name)))?;
        Ok(Response::new(self.cluster_status(snap)))
    }

    async fn label_cluster(
        &self,
        request: Request<pb::LabelClusterRequest>,
    ) -> Result<Response<pb::Cluster>, Status> {
        let admin = self.admin(&request)?;
        let req = request.into_inner();
        let set: Labels = req.set.into_iter().collect();
        for (k, v) in &set {
            validate_label(k, v).map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        if let Some(key) = req.remove.iter().find(|k| set.contains_key(*k)) {
            return Err(Status::invalid_argument(format!(
                "label {key:?} is both set and removed"
            )));
        }
        let store = self.0.store.clone();
        let (name, remove) = (req.cluster, req.remove);
        let record = tokio::task::spawn_blocking(move || store.label_cluster(&name, &set, &remove))
            .await
            .map_err(internal)?
            .map_err(update_error)?;
        info!(admin = %admin, cluster = %record.id, name = %record.name, "cluster labels changed");
        self.0
            .events
            .record(vec![crate::events::NewEvent::cluster(
                unix_now(),
                "cluster-labelled",
                crate::events::Severity::Info,
                &record.name,
                format!(
                    "{admin} set the labels to {}",
                    flotilla_common::labels::format_labels(&record.labels)
                ),
            )])
            .await;
        // The leader's controller re-targets when the change reaches its store: a new
        // ClusterState follows if the cluster's apps change.
        let snap = self
            .0
            .store
            .cluster_snapshot(&record.id)
            .map_err(internal)?
            .ok_or_else(|| update_error(ClusterUpdateError::NotFound(record.id.clone())))?;
        Ok(Response::new(self.cluster_message(&snap)))
    }

    type EventsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::Event, Status>> + Send + 'static>,
    >;

    async fn list_rollouts(
        &self,
        request: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<pb::ListRolloutsResponse>, Status> {
        self.admin(&request)?;
        let app = request.into_inner().app;
        let store = self.0.store.clone();
        let (records, names) = tokio::task::spawn_blocking(move || {
            let records = store.rollouts((!app.is_empty()).then_some(app.as_str()))?;
            Ok::<_, crate::store::StoreError>((records, rollout_names(&store)?))
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        let now = unix_now();
        Ok(Response::new(pb::ListRolloutsResponse {
            rollouts: records
                .iter()
                .filter(|r| !r.is_initial())
                .take(100)
                .map(|r| super::rollouts::rollout_message(r, &names, now))
                .collect(),
        }))
    }

    async fn get_rollout(
        &self,
        request: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        self.admin(&request)?;
        let app = request.into_inner().app;
        let store = self.0.store.clone();
        let wanted = app.clone();
        let (record, names) = tokio::task::spawn_blocking(move || {
            let record = store
                .rollouts(Some(&wanted))?
                .into_iter()
                .find(|r| !r.is_initial());
            Ok::<_, crate::store::StoreError>((record, rollout_names(&store)?))
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        let record = record.ok_or_else(|| {
            Status::not_found(format!(
                "app {app:?} has no rollout (an app rolls out in stages once it has a rollout: block and a release after its first)"
            ))
        })?;
        Ok(Response::new(super::rollouts::rollout_message(
            &record,
            &names,
            unix_now(),
        )))
    }

    async fn rollout_action(
        &self,
        request: Request<pb::RolloutActionRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let who = self.admin(&request)?;
        let req = request.into_inner();
        let action = RolloutAction::parse(&req.action).ok_or_else(|| {
            Status::invalid_argument(format!(
                "unknown rollout action {:?}: expected approve, pause, resume or rollback",
                req.action
            ))
        })?;
        let record = self
            .0
            .leader_controller("rollout actions")?
            .rollout_action(&req.app, action, &who)
            .await
            .map_err(|e| match e {
                RolloutActionError::NotFound(_) => Status::not_found(e.to_string()),
                RolloutActionError::Refused(_) => Status::failed_precondition(e.to_string()),
                RolloutActionError::Unavailable(_) => Status::unavailable(e.to_string()),
            })?;
        info!(app = %req.app, action = %req.action, by = %who, "rollout action");
        let store = self.0.store.clone();
        let names = tokio::task::spawn_blocking(move || rollout_names(&store))
            .await
            .map_err(internal)?
            .map_err(internal)?;
        Ok(Response::new(super::rollouts::rollout_message(
            &record,
            &names,
            unix_now(),
        )))
    }

    async fn add_replica(
        &self,
        request: Request<pb::AddReplicaRequest>,
    ) -> Result<Response<pb::ReplicaSet>, Status> {
        let who = self.admin(&request)?;
        let address = request.into_inner().address;
        let set = super::replicas::add(&self.0, &address).await?;
        info!(admin = %who, replica = set.added, %address, "replica added to the hub");
        Ok(Response::new(set))
    }

    async fn remove_replica(
        &self,
        request: Request<pb::RemoveReplicaRequest>,
    ) -> Result<Response<pb::ReplicaSet>, Status> {
        let who = self.admin(&request)?;
        let id = request.into_inner().id;
        let set = super::replicas::remove(&self.0, id).await?;
        info!(admin = %who, replica = id, "replica removed from the hub");
        Ok(Response::new(set))
    }

    async fn hub_status(
        &self,
        request: Request<pb::HubStatusRequest>,
    ) -> Result<Response<pb::HubStatusResponse>, Status> {
        self.admin(&request)?;
        Ok(Response::new(super::replicas::status(&self.0).await))
    }

    async fn plan(
        &self,
        request: Request<pb::PlanRequest>,
    ) -> Result<Response<pb::PlanResponse>, Status> {
        self.admin(&request)?;
        super::plan::plan(&self.0, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn events(
        &self,
        request: Request<pb::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        self.admin(&request)?;
        let req = request.into_inner();
        let limit = match req.limit {
            0 => 100,
            n => n.min(10_000) as usize,
        };
        let wanted = move |e: &Event| {
            (req.app.is_empty() || e.event.app == req.app)
                && (req.cluster.is_empty() || e.event.cluster == req.cluster)
        };
        // Subscribe before reading what is stored so nothing recorded in between is missed.
        let mut live = self.0.store.subscribe();
        let store = self.0.store.clone();
        let after = req.after_seq;
        let stored = tokio::task::spawn_blocking(move || store.events_after(after, usize::MAX))
            .await
            .map_err(internal)?
            .map_err(internal)?;
        let mut backlog: Vec<Event> = stored.into_iter().filter(|e| wanted(e)).collect();
        let skip = backlog.len().saturating_sub(limit);
        backlog.drain(..skip);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let shutdown = self.0.shutdown.clone();
        let store = self.0.store.clone();
        let follow = req.follow;
        self.0.tasks.spawn(async move {
            let mut last = after;
            for e in backlog {
                last = e.seq;
                if tx.send(Ok(event_message(e))).await.is_err() {
                    return;
                }
            }
            if !follow {
                return;
            }
            loop {
                let next: Vec<Event> = tokio::select! {
                    _ = tx.closed() => return,
                    _ = shutdown.cancelled() => return,
                    msg = live.recv() => match msg {
                        Ok(Notice::Events(events)) => events,
                        Ok(Notice::State { .. } | Notice::Report { .. } | Notice::Clusters | Notice::SourceHook { .. }) => continue,
                        // Fell behind, or a snapshot replaced the store: what was missed is in it.
                        Ok(Notice::Restored) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            let store = store.clone();
                            match tokio::task::spawn_blocking(move || store.events_after(last, usize::MAX)).await {
                                Ok(Ok(events)) => events,
                                _ => return,
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                };
                for e in next {
                    if e.seq <= last {
                        continue;
                    }
                    last = e.seq;
                    if wanted(&e) && tx.send(Ok(event_message(e))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn delete_cluster(
        &self,
        request: Request<pb::DeleteClusterRequest>,
    ) -> Result<Response<pb::DeleteClusterResponse>, Status> {
        let admin = self.admin(&request)?;
        let name = request.into_inner().cluster;
        let store = self.0.store.clone();
        let record = tokio::task::spawn_blocking(move || store.delete_cluster(&name))
            .await
            .map_err(internal)?
            .map_err(update_error)?;
        // Open streams of the cluster re-check it and end.
        self.0
            .last_contact
            .lock()
            .expect("last_contact lock")
            .remove(&record.id);
        info!(admin = %admin, cluster = %record.id, name = %record.name, "cluster deleted; its certificate is refused from now on");
        self.0
            .events
            .record(vec![crate::events::NewEvent::cluster(
                unix_now(),
                "cluster-deleted",
                crate::events::Severity::Warning,
                &record.name,
                format!("{admin} deleted the cluster; its certificate is refused from now on"),
            )])
            .await;
        Ok(Response::new(pb::DeleteClusterResponse {
            id: record.id,
            name: record.name,
        }))
    }
}
