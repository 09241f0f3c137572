//! A TCP forwarder: a second address for a real server, that a test can take away.
//!
//! [`Forwarder::start`] listens on `127.0.0.1:0` and copies bytes both ways between each
//! accepted connection and `upstream`. [`Forwarder::stop`] closes the listener *and* every
//! connection open through it, so a client sees its streams break and new connections
//! refused, as when a hub replica goes away. TLS passes through untouched: a hub certificate
//! naming 127.0.0.1 verifies through the forwarder as well as directly.
//!
//! It is also a fault injector that a test controls while connections are open
//! ([`Forwarder::set_fault`] for every connection, [`Forwarder::set_fault_from`] for those from
//! one source address, as replicas that dial from their own loopback address are told apart):
//! - [`Fault::Delay`] holds every chunk that long before writing it on, in both directions;
//! - [`Fault::Blackhole`] keeps the connections open and reads what arrives, but forwards
//!   nothing either way: what a partition looks like to TCP, where the peer hangs until its own
//!   deadlines fire;
//! - [`Fault::Reset`] closes the connections with a TCP RST (and resets new ones at once);
//! - [`Fault::None`] heals: bytes flow again (a blackholed connection's dropped bytes stay lost,
//!   so TLS on it fails and the client reconnects, as after a real partition).
//!
//! Every task is tracked and ends on `stop`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the forwarder does to a connection's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Forward them.
    #[default]
    None,
    /// Forward each chunk after this long.
    Delay(Duration),
    /// Read and drop them; the connection stays open.
    Blackhole,
    /// Reset the connection.
    Reset,
}

/// The fault for every connection, and for those from given source addresses.
#[derive(Debug, Clone, Default)]
struct Faults {
    all: Fault,
    from: HashMap<IpAddr, Fault>,
}

impl Faults {
    fn of(&self, source: IpAddr) -> Fault {
        self.from.get(&source).copied().unwrap_or(self.all)
    }
}

/// A running forwarder from [`Forwarder::addr`] to an upstream address.
pub struct Forwarder {
    addr: SocketAddr,
    stop: CancellationToken,
    tasks: TaskTracker,
    accepted: Arc<AtomicUsize>,
    faults: watch::Sender<Faults>,
}

impl Forwarder {
    /// Listens on `127.0.0.1:0` and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let accepted = Arc::new(AtomicUsize::new(0));
        let faults = watch::Sender::new(Faults::default());
        let (token, tracker, count) = (stop.clone(), tasks.clone(), Arc::clone(&accepted));
        let watching = faults.subscribe();
        tasks.spawn(async move {
            loop {
                let (inbound, peer) = tokio::select! {
                    _ = token.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(_) => continue,
                    },
                };
                count.fetch_add(1, Ordering::SeqCst);
                let token = token.clone();
                let faults = watching.clone();
                tracker.spawn(async move {
                    if faults.borrow().of(peer.ip()) == Fault::Reset {
                        reset(inbound);
                        return;
                    }
                    let Ok(outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    pipe(inbound, outbound, peer.ip(), faults, token).await;
                });
            }
            // The listener drops here: new connections are refused.
        });
        Ok(Forwarder {
            addr,
            stop,
            tasks,
            accepted,
            faults,
        })
    }

    /// Applies `fault` to every connection, open and new, but those with a fault of their own.
    pub fn set_fault(&self, fault: Fault) {
        self.faults.send_modify(|f| f.all = fault);
    }

    /// Applies `fault` to the connections from `source` (the peer's IP address), open and new.
    pub fn set_fault_from(&self, source: IpAddr, fault: Fault) {
        self.faults.send_modify(|f| {
            f.from.insert(source, fault);
        });
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.faults.send_replace(Faults::default());
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

/// Closes `socket` with a TCP RST rather than a FIN.
fn reset(socket: TcpStream) {
    let _ = socket.set_zero_linger();
    drop(socket);
}

/// Copies both ways, under the fault for `source` as it changes, until either side closes, a
/// reset, or `stop`; dropping the sockets closes both.
async fn pipe(
    inbound: TcpStream,
    outbound: TcpStream,
    source: IpAddr,
    faults: watch::Receiver<Faults>,
    stop: CancellationToken,
) {
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let reset_now = CancellationToken::new();
    let up = tokio::spawn(copy_with_faults(
        in_read,
        out_write,
        source,
        faults.clone(),
        reset_now.clone(),
    ));
    let down = tokio::spawn(copy_with_faults(
        out_read,
        in_write,
        source,
        faults.clone(),
        reset_now.clone(),
    ));
    let mut watching = faults;
    let wait_reset = async {
        loop {
            if watching.borrow_and_update().of(source) == Fault::Reset {
                return;
            }
            if watching.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    let (up_abort, down_abort) = (up.abort_handle(), down.abort_handle());
    let reset_requested = tokio::select! {
        _ = stop.cancelled() => false,
        _ = wait_reset => true,
        _ = async { let _ = up.await; let _ = down.await; } => false,
    };
    if reset_requested {
        reset_now.cancel();
    }
    up_abort.abort();
    down_abort.abort();
}

/// One direction of [`pipe`]; returns when its source closes or on a reset (closing its writer
/// with an RST).
async fn copy_with_faults(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    source: IpAddr,
    faults: watch::Receiver<Faults>,
    reset_now: CancellationToken,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            _ = reset_now.cancelled() => {
                // SO_LINGER 0: the socket sends an RST when its last half drops.
                let _ = to.as_ref().set_zero_linger();
                return;
            }
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
        };
        let fault = faults.borrow().of(source);
        match fault {
            Fault::None => {}
            Fault::Blackhole => continue,
            Fault::Delay(d) => tokio::time::sleep(d).await,
            Fault::Reset => {
                let _ = to.as_ref().set_zero_linger();
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
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

    /// An echo server on loopback; returns its address.
    async fn echo_server() -> SocketAddr {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if socket.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(client: &mut TcpStream, within: Duration) -> Option<Duration> {
        let started = std::time::Instant::now();
        client.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        match tokio::time::timeout(within, client.read_exact(&mut buf)).await {
            Ok(Ok(_)) if &buf == b"ping" => Some(started.elapsed()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn delay_holds_each_chunk_and_blackhole_forwards_nothing_until_healed() {
        let forwarder = Forwarder::start(echo_server().await).await.unwrap();
        let mut client = TcpStream::connect(forwarder.addr()).await.unwrap();
        assert!(
            round_trip(&mut client, Duration::from_secs(5))
                .await
                .is_some()
        );

        forwarder.set_fault(Fault::Delay(Duration::from_millis(150)));
        let took = round_trip(&mut client, Duration::from_secs(5))
            .await
            .unwrap();
        // Both directions are held.
        assert!(took >= Duration::from_millis(300), "{took:?}");

        forwarder.set_fault(Fault::Blackhole);
        assert!(
            round_trip(&mut client, Duration::from_millis(300))
                .await
                .is_none()
        );
        // New connections are accepted and hang too.
        let mut other = TcpStream::connect(forwarder.addr()).await.unwrap();
        assert!(
            round_trip(&mut other, Duration::from_millis(300))
                .await
                .is_none()
        );

        forwarder.heal();
        let mut fresh = TcpStream::connect(forwarder.addr()).await.unwrap();
        assert!(
            round_trip(&mut fresh, Duration::from_secs(5))
                .await
                .is_some()
        );
        forwarder.stop().await;
    }

    #[tokio::test]
    async fn reset_closes_open_connections_and_refuses_new_ones_with_an_rst() {
        let forwarder = Forwarder::start(echo_server().await).await.unwrap();
        let mut client = TcpStream::connect(forwarder.addr()).await.unwrap();
        assert!(
            round_trip(&mut client, Duration::from_secs(5))
                .await
                .is_some()
        );
        forwarder.set_fault(Fault::Reset);
        let mut buf = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("the reset arrives promptly");
        assert!(
            matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
                || matches!(read, Ok(0)),
            "{read:?}"
        );
        let mut next = TcpStream::connect(forwarder.addr()).await.unwrap();
        let read = tokio::time::timeout(Duration::from_secs(5), next.read(&mut buf))
            .await
            .expect("a new connection is reset promptly");
        assert!(read.is_err() || matches!(read, Ok(0)), "{read:?}");
        forwarder.stop().await;
    }

    #[tokio::test]
    async fn a_fault_from_one_source_leaves_the_others_alone() {
        let forwarder = Forwarder::start(echo_server().await).await.unwrap();
        let dial_from = |ip: &str| {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
            socket.connect(forwarder.addr())
        };
        let mut a = dial_from("127.0.0.21").await.unwrap();
        let mut b = dial_from("127.0.0.22").await.unwrap();
        forwarder.set_fault_from("127.0.0.21".parse().unwrap(), Fault::Blackhole);
        assert!(
            round_trip(&mut a, Duration::from_millis(300))
                .await
                .is_none()
        );
        assert!(round_trip(&mut b, Duration::from_secs(5)).await.is_some());
        forwarder.heal();
        let mut a = dial_from("127.0.0.21").await.unwrap();
        assert!(round_trip(&mut a, Duration::from_secs(5)).await.is_some());
        forwarder.stop().await;
    }
}
