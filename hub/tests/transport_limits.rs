//! The hub's listener and services under abuse: clients that never finish TLS, more
//! connections than the cap, oversized messages and registration floods, against a real hub
//! on loopback.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use flotilla_hub::config::HubConfig;
use flotilla_hub::datadir::DataDir;
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::registration_client::RegistrationClient;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

struct Hub {
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    ca_pem: String,
    shutdown: CancellationToken,
    server: JoinHandle<Result<(), flotilla_hub::server::HubError>>,
}

impl Hub {
    async fn start(extra_config: &str) -> Hub {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path().join("hub"));
        data.init().unwrap();
        let config = HubConfig::parse(&format!("listen: 127.0.0.1:0\n{extra_config}")).unwrap();
        let shutdown = CancellationToken::new();
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(flotilla_hub::server::run(
            data.clone(),
            config,
            shutdown.clone(),
            move |a| {
                let _ = addr_tx.send(a);
            },
        ));
        let addr = addr_rx.await.unwrap();
        let ca_pem = std::fs::read_to_string(data.admin_dir().join("ca.pem")).unwrap();
        Hub {
            _dir: dir,
            addr,
            ca_pem,
            shutdown,
            server,
        }
    }

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

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.server)
            .await
            .expect("the hub stops within 30 s")
            .unwrap()
            .unwrap();
    }
}

fn bad_registration(csr_bytes: usize) -> pb::RegisterRequest {
    pb::RegisterRequest {
        bootstrap_token: "flt_not-a-token".into(),
        csr_der: vec![0; csr_bytes],
        requested_name: "edge-1".into(),
        labels: Default::default(),
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
    let hub = Hub::start("transport: {tlsHandshakeTimeout: 300ms}\n").await;
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
    let hub = Hub::start("transport: {maxConnections: 2, tlsHandshakeTimeout: 60s}\n").await;
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
    let hub = Hub::start("transport: {maxRecvMessageBytes: 65536}\n").await;
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
    let hub = Hub::start("rpc: {registrationsPerMinute: 1, registrationBurst: 3}\n").await;
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
