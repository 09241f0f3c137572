//! A local HTTP/1.1 endpoint that takes alerts, for tests and benchmarks: it records every POST
//! (path, headers, body, arrival time) and answers 200, or 503 while it is told to be down.
//! Connections are kept alive, as a real webhook receiver keeps them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An `app-failed` event of app `web` on `cluster` about version `n`, now: what alert tests and the
/// alert benchmark record.
pub fn app_failed(cluster: &str, n: usize) -> flotilla_hub::events::NewEvent {
    flotilla_hub::events::NewEvent {
        app: "web".into(),
        ..flotilla_hub::events::NewEvent::cluster(
            flotilla_hub::controller::unix_now(),
            "app-failed",
            flotilla_hub::events::Severity::Error,
            cluster,
            format!("applying version {n} failed: namespace web not found"),
        )
    }
}

/// One request the sink took.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// When it arrived.
    pub at: Instant,
    /// Request path.
    pub path: String,
    /// Headers, names in lower case.
    pub headers: BTreeMap<String, String>,
    /// Body.
    pub body: Vec<u8>,
    /// Whether the sink was down (answered 503).
    pub refused: bool,
}

impl Delivery {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("an alert body is JSON")
    }
}

/// The sink; dropping it stops taking new connections.
pub struct Sink {
    /// Where it listens.
    pub addr: SocketAddr,
    down: Arc<AtomicBool>,
    taken: Arc<Mutex<Vec<Delivery>>>,
    stop: Arc<AtomicBool>,
}

impl Sink {
    /// Listens on a free loopback port.
    pub fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the alert sink");
        let addr = listener.local_addr().expect("sink address");
        let down = Arc::new(AtomicBool::new(false));
        let taken = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, t, s) = (down.clone(), taken.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (d, t, s) = (d.clone(), t.clone(), s.clone());
                std::thread::spawn(move || serve(conn, &d, &t, &s));
            }
        });
        Sink {
            addr,
            down,
            taken,
            stop,
        }
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers 503 from now on (`true`) or 200 again.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Every request so far.
    pub fn all(&self) -> Vec<Delivery> {
        self.taken.lock().unwrap().clone()
    }

    /// The requests answered 200.
    pub fn accepted(&self) -> Vec<Delivery> {
        self.all().into_iter().filter(|d| !d.refused).collect()
    }

    /// Waits up to `timeout` until `done` holds for the requests so far.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Delivery]) -> bool,
    ) -> Vec<Delivery> {
        let deadline = Instant::now() + timeout;
        loop {
            let all = self.all();
            if done(&all) {
                return all;
            }
            if Instant::now() > deadline {
                let seen: Vec<String> = all
                    .iter()
                    .map(|d| format!("{} {}", d.path, String::from_utf8_lossy(&d.body)))
                    .collect();
                panic!(
                    "the alert sink did not see {what}; it saw:\n{}",
                    seen.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the stop.
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(conn: TcpStream, down: &AtomicBool, taken: &Mutex<Vec<Delivery>>, stop: &AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || stop.load(Ordering::SeqCst) {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let refused = down.load(Ordering::SeqCst);
        taken.lock().unwrap().push(Delivery {
            at: Instant::now(),
            path,
            headers,
            body,
            refused,
        });
        let answer: &[u8] = if refused {
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        };
        if writer.write_all(answer).is_err() {
            return;
        }
    }
}
