//! The hub's TLS listener: accepts TCP connections up to a cap, completes each TLS handshake
//! within a deadline in a task of its own, and hands finished connections to tonic.
//!
//! tonic's built-in TLS acceptor has neither a handshake deadline nor a connection cap, so a
//! client that opens TCP and never speaks TLS would hold a socket forever. Connections beyond
//! `maxConnections` (handshaking or established) are closed as soon as they are accepted.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, warn};

use crate::config::TransportLimits;

/// The TLS material could not be turned into a server configuration.
#[derive(Debug, thiserror::Error)]
#[error("server TLS configuration: {0}")]
pub struct TlsSetupError(String);

/// A rustls server configuration for the hub: its certificate, client certificates optional
/// (Registration has none; every other service checks the peer certificate itself) but
/// verified against the hub CA when presented, and HTTP/2 only.
pub fn server_tls_config(
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    tls_config(cert_pem, key_pem, ca_pem, ClientCertificates::Optional)
}

/// A rustls server configuration for the replicas' peer listener: as [`server_tls_config`],
/// but a client certificate from the hub CA is required, so a connection without one never
/// reaches the service.
pub fn peer_tls_config(
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    tls_config(cert_pem, key_pem, ca_pem, ClientCertificates::Required)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientCertificates {
    Optional,
    Required,
}

fn tls_config(
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
    client_certificates: ClientCertificates,
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let err = |what: &str, e: &dyn std::fmt::Display| TlsSetupError(format!("{what}: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err("server certificate", &e))?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| err("server key", &e))?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let ca = ca.map_err(|e| err("CA certificate", &e))?;
        roots.add(ca).map_err(|e| err("CA certificate", &e))?;
    }
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if client_certificates == ClientCertificates::Optional {
        verifier = verifier.allow_unauthenticated();
    }
    let verifier = verifier.build().map_err(|e| err("client verifier", &e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err("protocol versions", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| err("server certificate", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A TCP connection that holds one of the listener's connection slots until it is dropped.
pub struct CappedTcp {
    inner: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl Connected for CappedTcp {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for CappedTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Connections whose handshake finished, for `serve_with_incoming`.
pub type Incoming = ReceiverStream<Result<TlsStream<CappedTcp>, io::Error>>;

/// Logs at most one warning per interval and counts the rest, so a flood of refusals costs
/// one line per interval rather than one per refusal.
#[derive(Debug)]
pub struct LogThrottle {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    /// A throttle letting one line through per `interval`.
    pub fn new(interval: Duration) -> Self {
        LogThrottle {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when a line may be logged now, `n` being how many were suppressed since the
    /// last one; `None` when this one is suppressed.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Starts accepting on `listener` in a task on `tracker`; stops when `shutdown` is cancelled.
pub fn accept_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: &TransportLimits,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> Incoming {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let acceptor = TlsAcceptor::from(tls);
    let handshake_timeout = limits.tls_handshake_timeout;
    let max_connections = limits.max_connections;
    let handshakes = tracker.clone();
    tracker.spawn(async move {
        let mut refusals = LogThrottle::new(Duration::from_secs(1));
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and the like: back off briefly rather than spin.
                        warn!(error = %e, "accepting a connection failed");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        }
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                if let Some(suppressed) = refusals.allow(Instant::now()) {
                    warn!(%peer, max_connections, suppressed, "connection refused: transport.maxConnections reached");
                }
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let shutdown = shutdown.clone();
            handshakes.spawn(async move {
                let capped = CappedTcp {
                    inner: stream,
                    _slot: slot,
                };
                let done = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    done = tokio::time::timeout(handshake_timeout, acceptor.accept(capped)) => done,
                };
                match done {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%peer, timeout = ?handshake_timeout, "TLS handshake timed out; connection closed"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_one_line_through_per_interval_and_counts_the_rest() {
        let mut t = LogThrottle::new(Duration::from_secs(1));
        let start = Instant::now();
        assert_eq!(t.allow(start), Some(0));
        assert_eq!(t.allow(start + Duration::from_millis(10)), None);
        assert_eq!(t.allow(start + Duration::from_millis(999)), None);
        assert_eq!(t.allow(start + Duration::from_millis(1000)), Some(2));
        assert_eq!(t.allow(start + Duration::from_millis(1500)), None);
        assert_eq!(t.allow(start + Duration::from_millis(2500)), Some(1));
    }
}
