//! `identity`: the real hub binary and N clusters registered over gRPC: how long renewing
//! every cluster's certificate at once takes, and how long `cluster delete` takes to end a
//! live Watch stream. Every renewed certificate is checked to name its cluster and the hub
//! is checked to have recorded every renewal before a figure is printed.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use flotilla_agent::identity::{cert_cluster_id, cert_expiry, new_key_and_csr};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::admin_client::AdminClient;
use flotilla_proto::v1::agent_client::AgentClient;
use flotilla_proto::v1::registration_client::RegistrationClient;
use flotilla_tests::fixture::{Fleet, GitRepo};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::summary;

struct Registered {
    id: String,
    cert: String,
    key: String,
}

async fn channel(url: &str, ca: &str, identity: Option<(&str, &str)>) -> anyhow::Result<Channel> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Ok(Channel::from_shared(url.to_string())?
        .tls_config(tls)?
        .connect()
        .await?)
}

fn read(dir: &Path, file: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(dir.join(file)).with_context(|| format!("reading {file}"))
}

/// Runs the benchmark with `clusters` clusters.
pub async fn identity(clusters: usize) -> anyhow::Result<()> {
    // Registration is rate-limited per address and every cluster here registers from
    // 127.0.0.1; this bench measures renewal and deletion, so that limit is raised.
    let fleet = Fleet::start_with_config(
        |repo: &GitRepo| {
            repo.write(
                "flotilla.yaml",
                "apps:\n  - name: bench\n    path: app\n    namespace: bench\n",
            )
            .write(
                "app/cm.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bench\ndata:\n  a: \"1\"\n",
            );
            repo.commit("bench");
        },
        Duration::from_millis(200),
        "rpc: {registrationsPerMinute: 100000, registrationBurst: 10000}\n",
    )
    .await;
    let url = fleet.hub.url();
    let admin_dir = fleet.hub.admin_dir();
    let ca = read(&admin_dir, "ca.pem")?;
    let admin_channel = channel(
        &url,
        &ca,
        Some((
            &read(&admin_dir, "admin.pem")?,
            &read(&admin_dir, "admin-key.pem")?,
        )),
    )
    .await?;
    let mut admin = AdminClient::new(admin_channel);

    let mut registered = Vec::with_capacity(clusters);
    let mut registrations = Vec::with_capacity(clusters);
    let mut registration = RegistrationClient::new(channel(&url, &ca, None).await?);
    for i in 0..clusters {
        let name = format!("edge-{i}");
        let token = admin
            .create_token(pb::CreateTokenRequest {
                ttl_seconds: 600,
                labels: Default::default(),
                name: name.clone(),
            })
            .await?
            .into_inner()
            .token;
        let (key, csr_der) = new_key_and_csr(&name)?;
        let started = Instant::now();
        let response = registration
            .register(pb::RegisterRequest {
                bootstrap_token: token,
                csr_der,
                requested_name: name,
                labels: Default::default(),
                capabilities: None,
            })
            .await?
            .into_inner();
        registrations.push(started.elapsed());
        registered.push(Registered {
            id: response.cluster_id,
            cert: response.certificate_pem,
            key,
        });
    }
    summary("register (one at a time)", registrations);

    // Every cluster connected on its own mTLS connection, then all renew at once.
    let mut clients = Vec::with_capacity(clusters);
    for r in &registered {
        clients.push(AgentClient::new(
            channel(&url, &ca, Some((&r.cert, &r.key))).await?,
        ));
    }
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for (i, client) in clients.iter().enumerate() {
        let mut client = client.clone();
        let id = registered[i].id.clone();
        calls.spawn(async move {
            let (key, csr_der) = new_key_and_csr(&id)?;
            let call = Instant::now();
            let response = client
                .renew(pb::RenewRequest { csr_der })
                .await?
                .into_inner();
            let took = call.elapsed();
            ensure!(
                cert_cluster_id(&response.certificate_pem)? == id,
                "renewed certificate names another cluster"
            );
            anyhow::Ok((i, took, response.certificate_pem, key))
        });
    }
    let mut per_call = Vec::with_capacity(clusters);
    while let Some(done) = calls.join_next().await {
        let (i, took, cert, key) = done??;
        ensure!(cert_expiry(&cert)? >= cert_expiry(&registered[i].cert)?);
        registered[i].cert = cert;
        registered[i].key = key;
        per_call.push(took);
    }
    let all = started.elapsed();
    let listed = admin
        .list_clusters(pb::ListClustersRequest {})
        .await?
        .into_inner()
        .clusters;
    let renewed = listed.iter().filter(|c| c.renewed_at > 0).count();
    if renewed != clusters {
        bail!("the hub recorded {renewed} of {clusters} renewals");
    }
    println!("renew {clusters} clusters concurrently: {all:.1?} in all");
    summary("renew (per call, concurrent)", per_call);

    // A live Watch per cluster with its renewed certificate; delete each and time the end.
    let mut ends = Vec::with_capacity(clusters);
    for r in &registered {
        let mut client = AgentClient::new(channel(&url, &ca, Some((&r.cert, &r.key))).await?);
        let mut watch = client
            .watch(pb::WatchRequest { have_version: 0 })
            .await?
            .into_inner();
        let first = watch.message().await?.context("watch ended early")?;
        ensure!(
            first.version > 0,
            "cluster {} has no ClusterState yet",
            r.id
        );
        let started = Instant::now();
        admin
            .delete_cluster(pb::DeleteClusterRequest {
                cluster: r.id.clone(),
            })
            .await?;
        let status = loop {
            match watch.message().await {
                Ok(Some(a)) if a.heartbeat => continue,
                Ok(other) => bail!("the Watch went on after delete: {other:?}"),
                Err(status) => break status,
            }
        };
        ends.push(started.elapsed());
        ensure!(
            status.code() == tonic::Code::PermissionDenied,
            "the Watch ended with {status}"
        );
    }
    summary("cluster delete -> live Watch ended", ends);
    fleet.shutdown().await;
    Ok(())
}
