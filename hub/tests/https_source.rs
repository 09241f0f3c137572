//! The https path of `GitMirror::fetch` against a real smart-HTTP Git server in this process: hyper over
//! rustls with a certificate from the hub's own CA, basic auth, and `git http-backend` run as a CGI process
//! per request. Covers the token, the per-source `caFile`, incremental fetches, the hub config path, the
//! fetch time box against a server that never finishes, the pack cap, and a redirect to another host.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
mod support;

use bytes::Bytes;
use flotilla_hub::config::HubConfig;
use flotilla_hub::controller::Controller;
use flotilla_hub::pki::CertificateAuthority;
use flotilla_hub::source::{FetchAuth, GitMirror, SourceError, TOKEN_USER, read_tree};
use flotilla_hub::store::HubStore;
use flotilla_testkit::{git, write};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use support::Body;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "flt-git-token-canary-7f3a9c";
const WRONG_TOKEN: &str = "flt-wrong-token-canary-1b2d";

/// A work repository and the bare repository `<root>/srv/fleet.git` the server exports.
struct Repos {
    work: PathBuf,
    project_root: PathBuf,
}

impl Repos {
    /// Makes both with one commit on `main`; returns them and that commit.
    fn create(root: &Path) -> (Repos, String) {
        let work = root.join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q"]);
        write(
            &work,
            "flotilla.yaml",
            "apps:\n  - {name: web, path: apps/web, namespace: web}\n",
        );
        write(
            &work,
            "apps/web/cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {version: one}\n",
        );
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "first"]);
        let project_root = root.join("srv");
        std::fs::create_dir_all(&project_root).unwrap();
        git(
            &project_root,
            &["clone", "-q", "--bare", work.to_str().unwrap(), "fleet.git"],
        );
        let first = git(&work, &["rev-parse", "HEAD"]);
        (Repos { work, project_root }, first)
    }

    /// Commits a change in the work repository and pushes it to the served one; returns the commit.
    fn push_commit(&self, version: &str) -> String {
        write(
            &self.work,
            "apps/web/cm.yaml",
            &format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata: {{version: {version}}}\n"
            ),
        );
        git(&self.work, &["commit", "-q", "-am", version]);
        let served = self.project_root.join("fleet.git");
        git(
            &self.work,
            &["push", "-q", served.to_str().unwrap(), "main"],
        );
        git(&self.work, &["rev-parse", "HEAD"])
    }
}

/// How the server answers.
#[derive(Clone, Default)]
enum Mode {
    /// As `git http-backend` does.
    #[default]
    Serve,
    /// Answers `git-upload-pack` POSTs with the headers and the first bytes of the pack, then never
    /// sends more and never ends the response.
    StallPack,
    /// Answers every request with a redirect to the same path under this base URL, before any auth.
    RedirectTo(String),
}

/// What the server saw, for assertions.
#[derive(Default)]
struct Seen {
    /// Requests that carried an `Authorization` header, right or wrong.
    with_authorization: usize,
    /// Requests refused with 401.
    unauthorized: usize,
    /// Requests served by `git http-backend`.
    served: usize,
    /// Bodies of `git-upload-pack` POSTs, in order.
    upload_pack_bodies: Vec<Bytes>,
}

struct ServerState {
    project_root: PathBuf,
    expected_authorization: String,
    mode: Mutex<Mode>,
    seen: Mutex<Seen>,
}

/// A smart-HTTP Git server over TLS on 127.0.0.1, stopped by [`GitServer::stop`] (or on drop).
struct GitServer {
    addr: SocketAddr,
    ca_pem: String,
    state: Arc<ServerState>,
    server: support::TlsServer,
}

impl GitServer {
    async fn start(project_root: &Path, token: &str) -> GitServer {
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("{TOKEN_USER}:{token}"));
        let state = Arc::new(ServerState {
            project_root: project_root.to_path_buf(),
            expected_authorization: format!("Basic {credentials}"),
            mode: Mutex::new(Mode::Serve),
            seen: Mutex::new(Seen::default()),
        });
        let server = support::TlsServer::start("flotilla test git CA", state.clone(), handle).await;
        GitServer {
            addr: server.addr,
            ca_pem: server.ca_pem.clone(),
            state,
            server,
        }
    }

    fn url(&self) -> String {
        format!("https://{}/fleet.git", self.addr)
    }

    fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.state.seen.lock().unwrap())
    }

    /// Stops accepting, ends every open connection and waits until all of it is gone.
    async fn stop(self) {
        self.server.stop().await;
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

async fn handle(
    state: Arc<ServerState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let mode = state.mode.lock().unwrap().clone();
    if let Mode::RedirectTo(base) = &mode {
        let target = match req.uri().query() {
            Some(q) => format!("{base}{}?{q}", req.uri().path()),
            None => format!("{base}{}", req.uri().path()),
        };
        return Ok(Response::builder()
            .status(StatusCode::FOUND)
            .header(http::header::LOCATION, target)
            .body(full(Bytes::new()))
            .unwrap());
    }
    let authorization = req.headers().get(http::header::AUTHORIZATION);
    if authorization.is_some() {
        state.seen.lock().unwrap().with_authorization += 1;
    }
    let authorized =
        authorization.is_some_and(|v| v.as_bytes() == state.expected_authorization.as_bytes());
    if !authorized {
        state.seen.lock().unwrap().unauthorized += 1;
        return Ok(Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(http::header::WWW_AUTHENTICATE, "Basic realm=\"git\"")
            .body(full(Bytes::from_static(b"authentication required\n")))
            .unwrap());
    }
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return Ok(plain(StatusCode::BAD_REQUEST, format!("body: {e}"))),
    };
    {
        let mut seen = state.seen.lock().unwrap();
        seen.served += 1;
        if parts.uri.path().ends_with("/git-upload-pack") {
            seen.upload_pack_bodies.push(body.clone());
        }
    }
    let upload_pack = parts.uri.path().ends_with("/git-upload-pack");
    let response = match run_http_backend(&state.project_root, &parts, body).await {
        Ok(response) => response,
        Err(message) => return Ok(plain(StatusCode::INTERNAL_SERVER_ERROR, message)),
    };
    if !(upload_pack && matches!(mode, Mode::StallPack)) {
        return Ok(response.map(full));
    }
    let (head, body) = response.into_parts();
    let first = body.slice(..body.len().min(64));
    let never_ends = tokio_stream::StreamExt::chain(
        tokio_stream::iter([Ok::<_, Infallible>(Frame::data(first))]),
        tokio_stream::pending(),
    );
    Ok(Response::from_parts(
        head,
        StreamBody::new(never_ends).boxed(),
    ))
}

fn plain(status: StatusCode, message: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(full(message))
        .unwrap()
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Serves one request with `git http-backend` as a CGI process: request metadata in the environment,
/// body on stdin, CGI headers and body on stdout.
async fn run_http_backend(
    project_root: &Path,
    parts: &http::request::Parts,
    body: Bytes,
) -> Result<Response<Bytes>, String> {
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", project_root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or_default())
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("CONTENT_TYPE", header(&parts.headers, "content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env(
            "HTTP_CONTENT_ENCODING",
            header(&parts.headers, "content-encoding"),
        )
        .env("GIT_PROTOCOL", header(&parts.headers, "git-protocol"))
        .env("REMOTE_USER", TOKEN_USER)
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("git http-backend: {e}"))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // Feed stdin while reading stdout, so neither pipe can fill up and stall the other side.
    let feed = async move {
        let _ = stdin.write_all(&body).await;
    };
    let ((), output) = tokio::join!(feed, child.wait_with_output());
    let output = output.map_err(|e| format!("git http-backend: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "git http-backend exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    parse_cgi(&output.stdout)
}

/// Splits CGI output into a response: `Status:` sets the status, other header lines are copied.
fn parse_cgi(out: &[u8]) -> Result<Response<Bytes>, String> {
    let (head_len, sep_len) = match out.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (i, 4),
        None => match out.windows(2).position(|w| w == b"\n\n") {
            Some(i) => (i, 2),
            None => return Err("CGI output has no header block".into()),
        },
    };
    let head = std::str::from_utf8(&out[..head_len]).map_err(|e| format!("CGI headers: {e}"))?;
    let mut response = Response::builder().status(StatusCode::OK);
    for line in head.lines().filter(|l| !l.trim().is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("CGI header line {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or_default();
            response = response.status(
                code.parse::<u16>()
                    .map_err(|e| format!("CGI status {value:?}: {e}"))?,
            );
        } else {
            response = response.header(name.trim(), value);
        }
    }
    response
        .body(Bytes::copy_from_slice(&out[head_len + sep_len..]))
        .map_err(|e| format!("CGI response: {e}"))
}

/// Fetches on a blocking thread, as the hub does; returns the outcome and how long it took.
async fn timed_fetch(
    mirror: &Arc<GitMirror>,
    token: Option<&str>,
    ca_pem: Option<&str>,
) -> (Result<String, SourceError>, Duration) {
    let start = std::time::Instant::now();
    let result = fetch(mirror, token, ca_pem).await;
    (result, start.elapsed())
}

/// Fetches on a blocking thread, as the hub does.
async fn fetch(
    mirror: &Arc<GitMirror>,
    token: Option<&str>,
    ca_pem: Option<&str>,
) -> Result<String, SourceError> {
    let mirror = mirror.clone();
    let token = token.map(str::to_string);
    let ca_pem = ca_pem.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let auth = FetchAuth {
            token: token.as_deref(),
            ca_pem: ca_pem.as_deref().map(str::as_bytes),
        };
        mirror.fetch("main", auth)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn fetches_with_token_and_ca_file_then_incrementally() {
    let tmp = tempfile::tempdir().unwrap();
    let (repos, first) = Repos::create(tmp.path());
    let server = GitServer::start(&repos.project_root, TOKEN).await;
    let mirror_dir = tmp.path().join("mirror");
    let mirror = Arc::new(GitMirror::open_or_init(&mirror_dir, &server.url()).unwrap());

    let got = fetch(&mirror, Some(TOKEN), Some(&server.ca_pem))
        .await
        .unwrap();
    assert_eq!(got, first);
    let tree = read_tree(&mirror_dir, &first, &Default::default()).unwrap();
    assert!(tree.get("apps/web/cm.yaml").is_some());
    assert!(
        server.seen(|s| s.unauthorized) > 0,
        "the token is sent only after the server asks for it"
    );

    let second = repos.push_commit("two");
    let bodies_before = server.seen(|s| s.upload_pack_bodies.len());
    let got = fetch(&mirror, Some(TOKEN), Some(&server.ca_pem))
        .await
        .unwrap();
    assert_eq!(got, second);
    let tree = read_tree(&mirror_dir, "main", &Default::default()).unwrap();
    assert_eq!(tree.commit, second);
    // Incremental: the negotiation told the server which commit the mirror already has.
    let have = format!("have {first}");
    let negotiated = server.seen(|s| {
        s.upload_pack_bodies[bodies_before..]
            .iter()
            .any(|b| String::from_utf8_lossy(b).contains(&have))
    });
    assert!(negotiated, "the second fetch did not offer {have}");

    // Nothing new: same answer.
    let got = fetch(&mirror, Some(TOKEN), Some(&server.ca_pem))
        .await
        .unwrap();
    assert_eq!(got, second);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_or_missing_token_is_refused_without_leaking_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (repos, _) = Repos::create(tmp.path());
    let server = GitServer::start(&repos.project_root, TOKEN).await;
    let mirror = Arc::new(GitMirror::open_or_init(&tmp.path().join("m"), &server.url()).unwrap());

    let cases = [
        (
            Some(WRONG_TOKEN),
            "were not accepted by the remote: Received HTTP status 401",
        ),
        (None, "requires authentication and the source has no token"),
    ];
    for (token, want) in cases {
        let err = fetch(&mirror, token, Some(&server.ca_pem))
            .await
            .unwrap_err();
        let msg = format!("{err} {err:?}");
        assert!(matches!(err, SourceError::Fetch { .. }), "{msg}");
        assert!(
            !msg.contains(WRONG_TOKEN) && !msg.contains(TOKEN),
            "token leaked: {msg}"
        );
        assert!(msg.contains(&server.addr.to_string()), "{msg}");
        assert!(
            msg.contains(want),
            "not a clear authentication error: {msg}"
        );
    }
    assert_eq!(
        server.seen(|s| s.served),
        0,
        "nothing is served without the token"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_ca_file_the_server_certificate_is_not_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let (repos, _) = Repos::create(tmp.path());
    let server = GitServer::start(&repos.project_root, TOKEN).await;
    let mirror = Arc::new(GitMirror::open_or_init(&tmp.path().join("m"), &server.url()).unwrap());

    let err = fetch(&mirror, Some(TOKEN), None).await.unwrap_err();
    let msg = format!("{err} {err:?}");
    assert!(matches!(err, SourceError::Fetch { .. }), "{msg}");
    assert!(msg.contains("certificate"), "{msg}");
    assert!(msg.contains("caFile"), "no hint at the fix: {msg}");
    assert!(!msg.contains(TOKEN), "token leaked: {msg}");
    assert_eq!(
        server.seen(|s| s.unauthorized + s.served),
        0,
        "no request crosses an untrusted connection"
    );

    // A CA bundle from another CA does not help either.
    let other = CertificateAuthority::generate("someone else").unwrap();
    let err = fetch(&mirror, Some(TOKEN), Some(&other.cert_pem()))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("certificate"), "{err}");

    // A bundle without a certificate is refused before connecting.
    let err = fetch(&mirror, Some(TOKEN), Some("not a pem"))
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::CaBundle { .. }), "{err}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hub_config_with_token_file_and_ca_file_fetches_over_https() {
    let tmp = tempfile::tempdir().unwrap();
    let (repos, first) = Repos::create(tmp.path());
    let server = GitServer::start(&repos.project_root, TOKEN).await;
    let token_file = tmp.path().join("git-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let ca_file = tmp.path().join("git-ca.pem");
    std::fs::write(&ca_file, &server.ca_pem).unwrap();
    let config_path = tmp.path().join("hub.yaml");
    std::fs::write(
        &config_path,
        format!(
            "listen: 127.0.0.1:0\nsources:\n  - name: fleet\n    url: {}\n    interval: 1h\n    tokenFile: {}\n    caFile: {}\n",
            server.url(),
            token_file.display(),
            ca_file.display()
        ),
    )
    .unwrap();
    let config = HubConfig::load(&config_path).unwrap();
    assert_eq!(
        config.sources[0].ca_file.as_deref(),
        Some(ca_file.as_path())
    );

    let store = HubStore::open(&tmp.path().join("hub.redb")).unwrap();
    let signing = Arc::new(ed25519_dalek::SigningKey::from_bytes(&[7; 32]));
    let (controller, _handle) = Controller::new(
        store.clone(),
        signing,
        1,
        &config,
        tmp.path().join("mirrors"),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(controller.run(shutdown.clone()));

    let record = support::wait_for(Duration::from_secs(30), || {
        store
            .source("fleet")
            .unwrap()
            .filter(|r| r.rendered_commit == first)
    })
    .await;
    assert_eq!(record.fetched_commit, first);
    assert_eq!(record.error, "");
    shutdown.cancel();
    task.await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_never_finishes_is_cut_off_at_the_timeout_and_the_next_fetch_works() {
    let tmp = tempfile::tempdir().unwrap();
    let (repos, first) = Repos::create(tmp.path());
    let server = GitServer::start(&repos.project_root, TOKEN).await;
    let timeout = Duration::from_secs(2);
    let mirror = Arc::new(
        GitMirror::open_or_init(&tmp.path().join("m"), &server.url())
            .unwrap()
            .with_timeout(timeout),
    );
    server.set_mode(Mode::StallPack);
    let (result, took) = timed_fetch(&mirror, Some(TOKEN), Some(&server.ca_pem)).await;
    let err = result.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, SourceError::TimedOut { .. }), "{msg}");
    assert!(
        msg.contains("did not finish within the fetch timeout of 2s")
            && msg.contains(&server.url()),
        "{msg}"
    );
    assert!(
        server.seen(|s| s.upload_pack_bodies.len()) > 0,
        "the fetch never reached the pack"
    );
    eprintln!("stalled fetch stopped after {took:?} (time box {timeout:?})");
    // Interrupted at the time box, not at some later library default; slack for a loaded machine.
    assert!(
        took >= timeout && took < timeout + Duration::from_millis(1500),
        "the fetch took {took:?} with a time box of {timeout:?}"
    );
    // The blocking fetch really ended: the mirror is free and the next fetch completes.
    server.set_mode(Mode::Serve);
    let (result, _) = timed_fetch(&mirror, Some(TOKEN), Some(&server.ca_pem)).await;
    assert_eq!(result.unwrap(), first);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pack_over_the_cap_fails_naming_the_limit_and_the_size() {
    let tmp = tempfile::tempdir().unwrap();
    let (repos, first) = Repos::create(tmp.path());
    let server = GitServer::start(&repos.project_root, TOKEN).await;
    let dir = tmp.path().join("m");
    let capped = Arc::new(
        GitMirror::open_or_init(&dir, &server.url())
            .unwrap()
            .with_max_pack_bytes(64),
    );
    let err = fetch(&capped, Some(TOKEN), Some(&server.ca_pem))
        .await
        .unwrap_err();
    let msg = err.to_string();
    let SourceError::PackTooLarge {
        limit, received, ..
    } = err
    else {
        panic!("not a pack-size error: {msg}");
    };
    assert_eq!(limit, 64);
    assert!(received > 64, "{msg}");
    assert!(
        msg.contains(&server.url())
            && msg.contains("maxPackBytes (64 bytes)")
            && msg.contains(&format!("{received} bytes")),
        "{msg}"
    );
    let open = Arc::new(GitMirror::open_or_init(&dir, &server.url()).unwrap());
    assert_eq!(
        fetch(&open, Some(TOKEN), Some(&server.ca_pem))
            .await
            .unwrap(),
        first
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_to_another_host_gets_no_token() {
    let tmp = tempfile::tempdir().unwrap();
    let (repos, _) = Repos::create(tmp.path());
    // Same address, other port: another host as Git credentials see it (host and port).
    let elsewhere = GitServer::start(&repos.project_root, TOKEN).await;
    let source = GitServer::start(&repos.project_root, TOKEN).await;
    source.set_mode(Mode::RedirectTo(format!("https://{}", elsewhere.addr)));
    let trusted = format!("{}{}", source.ca_pem, elsewhere.ca_pem);
    let mirror = Arc::new(GitMirror::open_or_init(&tmp.path().join("m"), &source.url()).unwrap());

    let err = fetch(&mirror, Some(TOKEN), Some(&trusted))
        .await
        .unwrap_err();
    let msg = format!("{err} {err:?}");
    assert!(
        msg.contains(&format!(
            "https://{}/fleet.git asks for credentials but is not the source's host ({})",
            elsewhere.addr,
            source.url()
        )),
        "{msg}"
    );
    assert!(!msg.contains(TOKEN), "token leaked: {msg}");
    assert!(
        elsewhere.seen(|s| s.unauthorized) > 0,
        "the redirect was not followed, so the test proves nothing"
    );
    assert_eq!(
        elsewhere.seen(|s| s.with_authorization),
        0,
        "the other host received credentials"
    );
    elsewhere.stop().await;
    source.stop().await;
}
