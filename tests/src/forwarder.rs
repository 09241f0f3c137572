//! A TCP forwarder: a second address for a real server, that a test can take away.
//!
//! [`Forwarder::start`] listens on `127.0.0.1:0` and copies bytes both ways between each
//! accepted connection and `upstream`. [`Forwarder::stop`] closes the listener *and* every
//! connection open through it, so a client sees its streams break and new connections
//! refused, as when a hub replica goes away. TLS passes through untouched: a hub certificate
//! naming 127.0.0.1 verifies through the forwarder as well as directly.
//!
//! Fault tests extend it (delay, drop, blackhole) by changing what a connection task does
//! between its two sockets; every task is tracked and ends on `stop`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A running forwarder from [`Forwarder::addr`] to an upstream address.
pub struct Forwarder {
    addr: SocketAddr,
    stop: CancellationToken,
    tasks: TaskTracker,
    accepted: Arc<AtomicUsize>,
}

impl Forwarder {
    /// Listens on `127.0.0.1:0` and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (token, tracker, count) = (stop.clone(), tasks.clone(), Arc::clone(&accepted));
        tasks.spawn(async move {
            loop {
                let (inbound, _) = tokio::select! {
                    _ = token.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(_) => continue,
                    },
                };
                count.fetch_add(1, Ordering::SeqCst);
                let token = token.clone();
                tracker.spawn(async move {
                    let Ok(outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    pipe(inbound, outbound, token).await;
                });
            }
            // The listener drops here: new connections are refused.
        });
        Ok(Forwarder {
            addr,
            stop,
            tasks,
            accepted,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT` of the forwarder.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Stops listening and closes every forwarded connection; returns once all are closed.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Copies both ways until either side closes or `stop`; dropping the sockets closes both.
async fn pipe(mut inbound: TcpStream, mut outbound: TcpStream, stop: CancellationToken) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn forwards_bytes_and_stop_closes_open_connections_and_the_listener() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = echo.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = echo.accept().await.unwrap();
            let mut buf = [0u8; 64];
            loop {
                let n = socket.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                socket.write_all(&buf[..n]).await.unwrap();
            }
        });
        let forwarder = Forwarder::start(upstream).await.unwrap();
        let mut client = TcpStream::connect(forwarder.addr()).await.unwrap();
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert_eq!(forwarder.accepted(), 1);

        forwarder.stop().await;
        // The open connection is closed: the next read sees the end (or a reset).
        let n = client.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0);
        assert!(TcpStream::connect(forwarder.addr()).await.is_err());
        server.await.unwrap();
    }
}
