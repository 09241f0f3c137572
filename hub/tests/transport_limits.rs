//! The hub's listener and services under abuse: clients that never finish TLS, more
//! connections than the cap, oversized messages, registration floods and capabilities over the
//! limits, against a real hub on loopback.

use std::time::{Duration, Instant};

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::admin_client::AdminClient;
use flotilla_proto::v1::agent_client::AgentClient;
use flotilla_proto::v1::registration_client::RegistrationClient;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

#[path = "support/in_process_hub.rs"]
mod in_process_hub;

use in_process_hub::Hub;

/// What these tests ask of a hub besides the shared harness.
trait HubClients {
    async fn registration(&self) -> Result<RegistrationClient<Channel>, tonic::transport::Error>;
}

impl HubClients for Hub {
    async fn registration(&self) -> Result<RegistrationClient<Channel>, tonic::transport::Error> {
        let channel = Channel::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem)))
            .unwrap()
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        Ok(RegistrationClient::new(channel).max_encoding_message_size(64 * 1024 * 1024))
    }
}

fn bad_registration(csr_bytes: usize) -> pb::RegisterRequest {
    pb::RegisterRequest {
        bootstrap_token: "flt_not-a-token".into(),
        csr_der: vec![0; csr_bytes],
        requested_name: "edge-1".into(),
        labels: Default::default(),
        capabilities: None,
    }
}

/// Reads until the peer closes; returns how long that took, or panics after `deadline`.
async fn closed_within(stream: &mut TcpStream, deadline: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((start + deadline).into(), stream.read(&mut buf)).await {
            Err(_) => panic!("the hub kept the connection open for {deadline:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_handshakes_is_dropped_after_the_timeout() {
    let hub = Hub::start_fresh("transport: {tlsHandshakeTimeout: 300ms}\n").await;
    let mut silent = TcpStream::connect(hub.addr).await.unwrap();
    let took = closed_within(&mut silent, Duration::from_secs(20)).await;
    assert!(
        took >= Duration::from_millis(250),
        "closed after {took:?}, before the timeout"
    );
    // A client that does speak TLS is served as before.
    let err = hub
        .registration()
        .await
        .unwrap()
        .register(bad_registration(10))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_at_once() {
    // The handshake timeout is long, so only the cap can close the third connection quickly.
    let hub = Hub::start_fresh("transport: {maxConnections: 2, tlsHandshakeTimeout: 60s}\n").await;
    let first = TcpStream::connect(hub.addr).await.unwrap();
    let second = TcpStream::connect(hub.addr).await.unwrap();
    let mut third = TcpStream::connect(hub.addr).await.unwrap();
    // Well inside the 60 s handshake timeout: the cap closed it.
    closed_within(&mut third, Duration::from_secs(10)).await;
    // Closing the silent ones frees their slots; a real client then gets in.
    drop(first);
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = match hub.registration().await {
            Ok(mut client) => client.register(bad_registration(10)).await.err(),
            Err(_) => None,
        };
        if let Some(status) = &answer
            && status.code() == Code::PermissionDenied
        {
            break;
        }
        assert!(Instant::now() < deadline, "no slot freed: {answer:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_refused_naming_the_limit() {
    let hub = Hub::start_fresh("transport: {maxRecvMessageBytes: 65536}\n").await;
    let mut client = hub.registration().await.unwrap();
    let err = client.register(bad_registration(70_000)).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{err:?}"
    );
    assert!(err.message().contains("65536"), "{err:?}");
    // Under the limit the call reaches the service.
    let err = client.register(bad_registration(60_000)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_attempts_beyond_the_rate_are_shed() {
    let hub = Hub::start_fresh("rpc: {registrationsPerMinute: 1, registrationBurst: 3}\n").await;
    let mut client = hub.registration().await.unwrap();
    for attempt in 0..3 {
        let err = client.register(bad_registration(10)).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::PermissionDenied,
            "attempt {attempt}: {err:?}"
        );
    }
    let err = client.register(bad_registration(10)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("rpc.registrationsPerMinute"),
        "{err:?}"
    );
    hub.stop().await;
}

fn capabilities(kube_version: &str, api_versions: &[String]) -> Option<pb::Capabilities> {
    Some(pb::Capabilities {
        kube_version: kube_version.into(),
        api_versions: api_versions.to_vec(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_over_the_limits_are_refused_naming_the_limit() {
    let hub = Hub::start_fresh("rpc: {capabilityReportsPerMinute: 3}\n").await;
    let mut admin = hub.admin().await;
    let token = admin
        .create_token(pb::CreateTokenRequest {
            ttl_seconds: 600,
            labels: Default::default(),
            name: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .der()
        .to_vec();
    let register = |capabilities| pb::RegisterRequest {
        bootstrap_token: token.clone(),
        csr_der: csr.clone(),
        requested_name: "edge-1".into(),
        labels: Default::default(),
        capabilities,
    };
    let mut registration = hub.registration().await.unwrap();
    let too_many: Vec<String> = (0..4_097).map(|i| format!("g{i}.example.com/v1")).collect();
    let refusals = [
        (
            capabilities("v1.32.4", &too_many),
            "capabilities refused: apiVersions has 4097 entries, over the limit of 4096",
        ),
        (
            capabilities("latest", &[]),
            "kubeVersion \"latest\" is not a Kubernetes version",
        ),
        (
            capabilities("", &["apps/v1/Deploy ment".into()]),
            "apiVersions entry \"apps/v1/Deploy ment\" is not a version, group/version or group/version/Kind",
        ),
    ];
    for (caps, message) in refusals {
        let err = registration.register(register(caps)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(message), "{err:?}");
    }

    // Refused capabilities did not use the token up.
    let served = [
        "v1".to_string(),
        "apps/v1".into(),
        "apps/v1/Deployment".into(),
    ];
    let registered = registration
        .register(register(capabilities("v1.32.4", &served)))
        .await
        .unwrap()
        .into_inner();
    let listed = admin
        .list_clusters(pb::ListClustersRequest {})
        .await
        .unwrap()
        .into_inner()
        .clusters;
    let shown = listed[0].capabilities.clone().unwrap();
    assert_eq!(shown.kube_version, "v1.32.4");
    assert_eq!(shown.api_versions, ["apps/v1", "apps/v1/Deployment", "v1"]);

    // Reports: refused when over the limits (the stored ones stay), taken when valid.
    let key_pem = key.serialize_pem();
    let mut agent = AgentClient::new(
        hub.channel(Some((&registered.certificate_pem, &key_pem)))
            .await,
    );
    let report = |caps| pb::ReportCapabilitiesRequest { capabilities: caps };
    let err = agent
        .report_capabilities(report(capabilities("v1.32.4", &too_many)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("over the limit of 4096"), "{err:?}");
    let newer = ["v1".to_string(), "apps/v1".into()];
    let changed = |r: Result<tonic::Response<pb::ReportCapabilitiesResponse>, tonic::Status>| {
        r.unwrap().into_inner().changed
    };
    assert!(changed(
        agent
            .report_capabilities(report(capabilities("v1.33.1", &newer)))
            .await
    ));
    assert!(!changed(
        agent
            .report_capabilities(report(capabilities("v1.33.1", &newer)))
            .await
    ));
    let cluster = admin
        .get_cluster(pb::GetClusterRequest {
            cluster: "edge-1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .cluster
        .unwrap();
    assert_eq!(
        cluster.capabilities.unwrap().api_versions,
        ["apps/v1", "v1"]
    );

    // Three calls a minute (every call counts, refused or not): the fourth is shed.
    let err = agent
        .report_capabilities(report(capabilities("v1.33.1", &newer)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("rpc.capabilityReportsPerMinute"),
        "{err:?}"
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_certificate_is_neither_a_cluster_nor_an_admin() {
    let hub = Hub::start_fresh("").await;
    let ca = hub.data.load_keys().unwrap().ca;
    let replica = ca
        .issue_replica_cert(
            2,
            &["localhost".to_string()],
            &[],
            Duration::from_secs(3600),
        )
        .unwrap();
    let channel = hub
        .channel(Some((&replica.cert_pem, &replica.key_pem)))
        .await;

    let err = AdminClient::new(channel.clone())
        .list_clusters(pb::ListClustersRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("replica 2"), "{err:?}");

    let err = AgentClient::new(channel)
        .get_cluster_state(pb::GetClusterStateRequest {
            version: 1,
            have_version: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("replica 2"), "{err:?}");
    hub.stop().await;
}
