//! A Git server's side of a push webhook, for tests and benchmarks: one HTTP/1.1 POST to the hub's
//! webhook listener, signed as GitHub signs it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// POSTs `body` to `path` with `headers`; the status code and the answer's body (trimmed).
pub fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the webhook listener");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("send the request head");
    // A refused oversized body may close the connection before all of it is written.
    let _ = s.write_all(body);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let text = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, text.trim().to_string())
}

/// GitHub's headers for a push delivery of `body` signed with `secret`.
pub fn github_headers(body: &[u8], secret: &[u8], delivery: &str) -> Vec<(&'static str, String)> {
    let mac = flotilla_hub::webhooks::hmac_sha256(secret, body);
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        ("X-Hub-Signature-256", format!("sha256={hex}")),
        ("X-GitHub-Event", "push".into()),
        ("X-GitHub-Delivery", delivery.into()),
    ]
}
