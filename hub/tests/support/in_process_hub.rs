//! A real hub (`flotilla_hub::server::run`) in the test process, on 127.0.0.1:0, with clients that
//! present the admin bundle or any identity. Included by path by the tests that need it; each uses
//! a part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use flotilla_hub::config::HubConfig;
use flotilla_hub::datadir::DataDir;
use flotilla_proto::v1::admin_client::AdminClient;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

pub struct Hub {
    /// A temporary data directory the hub owns, when it made its own.
    _dir: Option<tempfile::TempDir>,
    pub data: DataDir,
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub admin_dir: std::path::PathBuf,
    pub shutdown: CancellationToken,
    pub server: JoinHandle<Result<(), flotilla_hub::server::HubError>>,
}

impl Hub {
    /// A hub on a fresh data directory of its own, with more hub.yaml lines.
    pub async fn start_fresh(extra_config: &str) -> Hub {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path().join("hub"));
        data.init().unwrap();
        let config = HubConfig::parse(&format!("listen: 127.0.0.1:0\n{extra_config}")).unwrap();
        Hub {
            _dir: Some(dir),
            ..Hub::start_with(&data, config).await
        }
    }

    /// A hub on `data` with the default configuration.
    pub async fn start(data: &DataDir) -> Hub {
        Hub::start_with(data, HubConfig::parse("listen: 127.0.0.1:0\n").unwrap()).await
    }

    /// A hub on `data` with `config`.
    pub async fn start_with(data: &DataDir, config: HubConfig) -> Hub {
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
        let addr = addr_rx.await.expect("the hub starts");
        Hub {
            _dir: None,
            data: data.clone(),
            addr,
            ca_pem: std::fs::read_to_string(data.admin_dir().join("ca.pem")).unwrap(),
            admin_dir: data.admin_dir(),
            shutdown,
            server,
        }
    }

    /// A channel presenting `identity` (certificate and key PEM), or none.
    pub async fn channel(&self, identity: Option<(&str, &str)>) -> Channel {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Channel::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// An Admin client with the hub's admin bundle.
    pub async fn admin(&self) -> AdminClient<Channel> {
        let read = |f: &str| std::fs::read_to_string(self.admin_dir.join(f)).unwrap();
        let (cert, key) = (read("admin.pem"), read("admin-key.pem"));
        AdminClient::new(self.channel(Some((&cert, &key))).await)
    }

    /// Stops the hub and waits (at most 30 s) until it has.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.server)
            .await
            .expect("the hub stops within 30 s")
            .unwrap()
            .unwrap();
    }
}
