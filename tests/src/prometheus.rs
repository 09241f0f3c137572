//! The real Prometheus server (Debian's `prometheus` package) for tests: started on a loopback port
//! with a configuration the test writes, scraping the targets it is given every second, queried
//! through its HTTP API. And a test exporter whose metric values a test sets.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Whether the `prometheus` binary is here. Outside CI a test without it skips; CI (which installs
/// it) fails instead.
pub fn available() -> bool {
    if Command::new("prometheus").arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI needs Debian's prometheus package"
    );
    eprintln!("skipped: no prometheus binary");
    false
}

/// A running Prometheus; killed on drop.
pub struct Prometheus {
    /// Its HTTP API.
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus in `dir`, scraping each `(job, address)` every second.
    pub fn start(dir: &Path, targets: &[(&str, SocketAddr)]) -> Prometheus {
        std::fs::create_dir_all(dir).unwrap();
        let mut config = String::from("global:\n  scrape_interval: 1s\nscrape_configs:\n");
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", crate::replicated::free_port())
            .parse()
            .unwrap();
        let log = dir.join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start prometheus");
        Prometheus { addr, child, log }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of `query`'s one sample, if it has exactly one (and Prometheus answers).
    pub fn query(&self, query: &str) -> Option<f64> {
        let (status, _, body) = try_http(
            self.addr,
            "GET",
            &format!("/api/v1/query?query={}", encode(query)),
        )
        .ok()?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        match v["data"]["result"].as_array()?.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a PromQL query for a URL.
fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One HTTP/1.1 request; the status code, the headers and the body.
pub fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, head.to_string(), body.to_string()))
}

/// A test exporter: `/metrics` serves the gauges a test sets, in the Prometheus text format.
pub struct Exporter {
    /// Where it listens.
    pub addr: SocketAddr,
    values: Arc<Mutex<BTreeMap<String, f64>>>,
}

impl Exporter {
    /// Listens on a free loopback port.
    pub fn start() -> Exporter {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the exporter");
        let addr = listener.local_addr().unwrap();
        let values: Arc<Mutex<BTreeMap<String, f64>>> = Arc::default();
        let shared = values.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut reader = BufReader::new(&conn);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let body: String = shared
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(series, v)| format!("{series} {v}\n"))
                    .collect();
                let _ = (&conn).write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            }
        });
        Exporter { addr, values }
    }

    /// Sets `series` (a name with labels, `errors{cluster="a"}`) to `value`.
    pub fn set(&self, series: &str, value: f64) {
        self.values.lock().unwrap().insert(series.into(), value);
    }
}
