//! An HTTPS server on 127.0.0.1 for the hub's integration tests (a Git server, a chart repository):
//! a certificate from the hub's own CA, HTTP/1.1 and HTTP/2, and a handler the test gives. Stopped by
//! [`TlsServer::stop`], which ends every open connection, or on drop.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_hub::pki::CertificateAuthority;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Response bodies of the test servers.
pub type Body = BoxBody<Bytes, Infallible>;

/// A running server.
pub struct TlsServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The CA that issued its certificate, PEM.
    pub ca_pem: String,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl TlsServer {
    /// Starts serving `handle(state, request)` with a certificate for 127.0.0.1 from a new CA.
    pub async fn start<S, F, Fut>(ca_name: &str, state: Arc<S>, handle: F) -> TlsServer
    where
        S: Send + Sync + 'static,
        F: Fn(Arc<S>, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
    {
        let ca = CertificateAuthority::generate(ca_name).unwrap();
        let issued = ca
            .issue_server_cert(
                &[],
                &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
                Duration::from_secs(3600),
            )
            .unwrap();
        let certs = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(accept_loop(
            listener,
            acceptor,
            state,
            handle,
            shutdown.clone(),
        ));
        TlsServer {
            addr,
            ca_pem: ca.cert_pem(),
            shutdown,
            task: Some(task),
        }
    }

    /// Stops accepting, ends every open connection and waits until all of it is gone.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn accept_loop<S, F, Fut>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<S>,
    handle: F,
    shutdown: CancellationToken,
) where
    S: Send + Sync + 'static,
    F: Fn(Arc<S>, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let connections = TaskTracker::new();
    loop {
        let tcp = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(_) => continue,
            },
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        let handle = handle.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let serve = async {
                // A client that does not trust the certificate aborts the handshake; nothing to serve.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |req| handle(state.clone(), req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            };
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = serve => {}
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// Polls `probe` until it gives a value, failing the test after `limit`.
pub async fn wait_for<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
