//! `Registration.Register`: a single-use bootstrap token and a CSR become a cluster certificate.

use std::net::{IpAddr, Ipv4Addr};

use flotilla_common::ids::{cluster_id_from, validate_name};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::registration_server::Registration;
use rand::RngCore;
use sha2::{Digest as _, Sha256};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::{ApiState, internal, store_error, wire};
use crate::controller::unix_now;
use crate::store::{RegisterError, Registration as NewCluster};

/// The Registration service.
pub struct RegistrationService(pub ApiState);

/// SHA-256 of a bootstrap token: tokens are stored and looked up only by hash.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Abuse limits of Register, kept apart from the registration itself.
impl RegistrationService {
    /// Refuses a caller over its per-IP attempt rate (`rpc.registrationsPerMinute`).
    fn admit<T>(&self, request: &Request<T>) -> Result<(), Status> {
        // Every hub connection is TCP; a missing address shares one budget.
        let ip = request
            .remote_addr()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        self.0.limits.admit_registration(ip).inspect_err(|_| {
            if let Some(suppressed) = self.0.limits.registration_log() {
                warn!(%ip, suppressed, "registration refused: over rpc.registrationsPerMinute");
            }
        })
    }

    /// Checks the token in a read transaction, so a bad token never waits for or takes the
    /// store's write lock; the write transaction checks it again.
    async fn check_token(&self, hash: [u8; 32]) -> Result<(), Status> {
        let store = self.0.store.clone();
        let usable = tokio::task::spawn_blocking(move || store.token_usable(&hash, unix_now()))
            .await
            .map_err(internal)?
            .map_err(internal)?;
        if usable {
            Ok(())
        } else {
            Err(self.bad_token())
        }
    }

    /// The answer to a bad token, logged at most once a second with a count of the rest.
    fn bad_token(&self) -> Status {
        if let Some(suppressed) = self.0.limits.registration_log() {
            warn!(suppressed, "registration refused: bad bootstrap token");
        }
        Status::permission_denied(RegisterError::BadToken.to_string())
    }
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        self.admit(&request)?;
        let req = request.into_inner();
        validate_name("cluster name", &req.requested_name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Labels decide which apps and Secrets a cluster receives, so only operators set
        // them (invariant 9): through the token, then `flotilla cluster label`.
        if !req.labels.is_empty() {
            let keys: Vec<&str> = req.labels.keys().map(String::as_str).collect();
            return Err(Status::invalid_argument(format!(
                "a registering agent cannot choose its labels (it asked for {}); labels come from the bootstrap token (flotilla token create --labels) and from flotilla cluster label",
                keys.join(", ")
            )));
        }
        // Checked before the token, so refused capabilities do not use it up.
        let capabilities = wire::capabilities(req.capabilities)?;
        let hash = token_hash(&req.bootstrap_token);
        self.check_token(hash).await?;
        let mut random = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut random);
        let id = cluster_id_from(random);

        // Sign before consuming the token: a bad CSR must not burn it.
        let now = time::OffsetDateTime::now_utc();
        let ttl = self.0.cluster_cert_ttl;
        let cert = self
            .0
            .ca
            .sign_cluster_csr(&req.csr_der, &id, ttl, now)
            .map_err(|e| Status::invalid_argument(format!("CSR refused: {e}")))?;
        let cert_expires_at = now.unix_timestamp() + ttl.as_secs() as i64;

        let store = self.0.store.clone();
        let registration = NewCluster {
            token_hash: hash,
            now: unix_now(),
            id,
            requested_name: req.requested_name.clone(),
            cert_expires_at,
            capabilities,
        };
        let result = tokio::task::spawn_blocking(move || store.register(registration))
            .await
            .map_err(internal)?;
        let cluster = match result {
            Ok(c) => c,
            Err(RegisterError::BadToken) => return Err(self.bad_token()),
            Err(e @ RegisterError::NameTaken(_)) => {
                return Err(Status::already_exists(e.to_string()));
            }
            Err(e @ RegisterError::NamePinned { .. }) => {
                return Err(Status::permission_denied(e.to_string()));
            }
            Err(RegisterError::Store(e)) => return Err(store_error(e)),
        };
        info!(
            cluster = %cluster.id,
            name = %cluster.name,
            kube_version = cluster.capabilities.kube_version.as_deref().unwrap_or(""),
            api_versions = cluster.capabilities.api_versions.len(),
            "cluster registered"
        );
        self.0
            .events
            .record(vec![crate::events::NewEvent::cluster(
                unix_now(),
                "cluster-registered",
                crate::events::Severity::Info,
                &cluster.name,
                format!(
                    "cluster {} registered with labels {}",
                    cluster.id,
                    flotilla_common::labels::format_labels(&cluster.labels)
                ),
            )])
            .await;
        Ok(Response::new(pb::RegisterResponse {
            cluster_id: cluster.id,
            certificate_pem: cert,
            ca_pem: self.0.ca.cert_pem(),
            signing_public_key: self.0.signing_public_key.to_vec(),
        }))
    }
}
