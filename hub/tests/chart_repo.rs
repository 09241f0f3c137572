//! `ChartCache::resolve` against a Helm chart repository served over TLS in this process (hyper with a
//! certificate from the hub's own CA). The charts are packaged here with the `tar` binary and their digests
//! computed with sha2, as `helm package` and `helm repo index` would. Covers exact versions and ranges, a
//! version published later, the digest cache, digest mismatches, unknown charts and versions, the token
//! (required, sent only to the repository's host, not across a redirect), the CA file, the time box against a
//! silent server and a stalled body, size limits, http:// and relative archive URLs.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;

use bytes::Bytes;
use flotilla_common::limits::Limits;
use flotilla_hub::pki::CertificateAuthority;
use flotilla_hub::source::charts::{
    ChartCache, ChartError, ChartRepoAccess, ChartRequest, ResolvedChart,
};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use sha2::{Digest, Sha256};
use support::Body;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "flt-chart-token-canary-5e1d";
const WRONG_TOKEN: &str = "flt-wrong-chart-token-canary-77aa";

/// One request the server saw.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    authorization: Option<String>,
}

/// What the server serves and how.
#[derive(Default)]
struct Content {
    /// Path → body.
    files: HashMap<String, Bytes>,
    /// Path → absolute URL it redirects to (302).
    redirects: HashMap<String, String>,
    /// Paths answered with headers and a few bytes, then nothing, never ending.
    stalled: HashSet<String>,
    /// Paths answered with an endless body of unknown length.
    endless: HashSet<String>,
}

struct ServerState {
    /// `Authorization` required for every request, if any.
    required: Option<String>,
    content: Mutex<Content>,
    seen: Mutex<Vec<Seen>>,
}

/// A chart repository over TLS on 127.0.0.1, stopped by [`ChartServer::stop`] (or on drop).
struct ChartServer {
    addr: SocketAddr,
    ca_pem: String,
    state: Arc<ServerState>,
    server: support::TlsServer,
}

impl ChartServer {
    async fn start(token: Option<&str>) -> ChartServer {
        let state = Arc::new(ServerState {
            required: token.map(|t| format!("Bearer {t}")),
            content: Mutex::default(),
            seen: Mutex::default(),
        });
        let server =
            support::TlsServer::start("flotilla test chart CA", state.clone(), handle).await;
        ChartServer {
            addr: server.addr,
            ca_pem: server.ca_pem.clone(),
            state,
            server,
        }
    }

    /// `https://127.0.0.1:<port><path>`.
    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    fn content(&self, f: impl FnOnce(&mut Content)) {
        f(&mut self.state.content.lock().unwrap());
    }

    fn put(&self, path: &str, body: impl Into<Bytes>) {
        let body = body.into();
        self.content(|c| {
            c.files.insert(path.to_string(), body);
        });
    }

    /// Requests for `path` so far.
    fn hits(&self, path: &str) -> usize {
        self.seen().iter().filter(|s| s.path == path).count()
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    async fn stop(self) {
        self.server.stop().await;
    }
}

fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Full::new(body.into()).boxed())
        .unwrap()
}

async fn handle(
    state: Arc<ServerState>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let authorization = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    state.seen.lock().unwrap().push(Seen {
        path: path.clone(),
        authorization: authorization.clone(),
    });
    if let Some(required) = &state.required
        && authorization.as_ref() != Some(required)
    {
        return Ok(respond(StatusCode::UNAUTHORIZED, "token required\n"));
    }
    let content = state.content.lock().unwrap();
    if let Some(target) = content.redirects.get(&path) {
        return Ok(Response::builder()
            .status(StatusCode::FOUND)
            .header(http::header::LOCATION, target)
            .body(Full::new(Bytes::new()).boxed())
            .unwrap());
    }
    if content.endless.contains(&path) {
        let chunk = Bytes::from(vec![b'#'; 16 * 1024]);
        let frames = tokio_stream::iter(std::iter::repeat_with(move || {
            Ok(Frame::data(chunk.clone()))
        }));
        return Ok(Response::new(StreamBody::new(frames).boxed()));
    }
    let Some(body) = content.files.get(&path).cloned() else {
        return Ok(respond(StatusCode::NOT_FOUND, "not found\n"));
    };
    if content.stalled.contains(&path) {
        let first = body.slice(..body.len().min(16));
        let never_ends = tokio_stream::StreamExt::chain(
            tokio_stream::iter([Ok::<_, Infallible>(Frame::data(first))]),
            tokio_stream::pending(),
        );
        return Ok(Response::builder()
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(StreamBody::new(never_ends).boxed())
            .unwrap());
    }
    Ok(respond(StatusCode::OK, body))
}

/// A chart archive as `helm package` lays it out, made with `tar czf`; returns its bytes.
fn package(work: &Path, name: &str, version: &str) -> Vec<u8> {
    let root = work.join(format!("pkg-{name}-{version}"));
    let chart = root.join(name);
    std::fs::create_dir_all(chart.join("templates")).unwrap();
    std::fs::write(
        chart.join("Chart.yaml"),
        format!("apiVersion: v2\nname: {name}\nversion: {version}\n"),
    )
    .unwrap();
    std::fs::write(chart.join("values.yaml"), "replicas: 1\n").unwrap();
    std::fs::write(
        chart.join("templates/configmap.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\ndata:\n  replicas: \"{{ .Values.replicas }}\"\n",
    )
    .unwrap();
    let archive = root.join("chart.tgz");
    let status = std::process::Command::new("tar")
        .arg("czf")
        .arg(&archive)
        .arg("-C")
        .arg(&root)
        .arg(name)
        .status()
        .unwrap();
    assert!(status.success(), "tar failed");
    std::fs::read(archive).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One entry of `index.yaml`; `digest: None` leaves the field out.
struct Entry<'a> {
    name: &'a str,
    version: &'a str,
    digest: Option<String>,
    url: String,
}

fn index_yaml(entries: &[Entry<'_>]) -> String {
    let mut by_name: Vec<(&str, Vec<&Entry<'_>>)> = Vec::new();
    for entry in entries {
        match by_name.iter_mut().find(|(n, _)| *n == entry.name) {
            Some((_, list)) => list.push(entry),
            None => by_name.push((entry.name, vec![entry])),
        }
    }
    let mut out = String::from("apiVersion: v1\nentries:\n");
    for (name, list) in by_name {
        out.push_str(&format!("  {name}:\n"));
        for e in list {
            out.push_str(&format!(
                "    - apiVersion: v2\n      name: {}\n      version: {}\n      created: \"2026-12-01T00:00:00Z\"\n      urls:\n        - {}\n",
                e.name, e.version, e.url
            ));
            if let Some(digest) = &e.digest {
                out.push_str(&format!("      digest: {digest}\n"));
            }
        }
    }
    out.push_str("generated: \"2026-12-01T00:00:00Z\"\n");
    out
}

/// A repository at `/charts` on `server`: packages each `(name, version)`, serves it at
/// `/charts/<name>-<version>.tgz` (listed with a relative URL) and returns the archives by version.
fn publish(server: &ChartServer, work: &Path, charts: &[(&str, &str)]) -> HashMap<String, Vec<u8>> {
    let mut archives = HashMap::new();
    let mut entries = Vec::new();
    for (name, version) in charts {
        let bytes = package(work, name, version);
        let file = format!("{name}-{version}.tgz");
        server.put(&format!("/charts/{file}"), bytes.clone());
        entries.push(Entry {
            name,
            version,
            digest: Some(sha256_hex(&bytes)),
            url: file,
        });
        archives.insert(version.to_string(), bytes);
    }
    server.put("/charts/index.yaml", index_yaml(&entries));
    archives
}

fn access(server: &ChartServer, token: Option<&str>) -> ChartRepoAccess {
    ChartRepoAccess {
        ca_pem: Some(server.ca_pem.clone().into_bytes()),
        token: token.map(str::to_string),
        timeout: Duration::from_secs(20),
        ..ChartRepoAccess::default()
    }
}

/// Resolves on a blocking thread, as the hub does; returns the outcome and how long it took.
async fn resolve(
    cache: &Arc<ChartCache>,
    repo: &str,
    chart: &str,
    version: &str,
    access: &ChartRepoAccess,
) -> (Result<ResolvedChart, ChartError>, Duration) {
    let (cache, repo, chart, version, access) = (
        cache.clone(),
        repo.to_string(),
        chart.to_string(),
        version.to_string(),
        access.clone(),
    );
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let request = ChartRequest {
            repo_url: &repo,
            chart: &chart,
            version: &version,
        };
        let result = cache.resolve(&request, &access);
        (result, started.elapsed())
    })
    .await
    .unwrap()
}

fn open_cache(dir: &Path) -> Arc<ChartCache> {
    Arc::new(ChartCache::open(dir, &Limits::default()).unwrap())
}

/// Files in the cache directory, sorted.
fn cached_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn exact_versions_and_ranges_resolve_and_cached_archives_are_not_downloaded_again() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ChartServer::start(None).await;
    let archives = publish(
        &server,
        tmp.path(),
        &[
            ("podinfo", "6.4.0"),
            ("podinfo", "6.5.1"),
            ("podinfo", "6.6.0-rc.1"),
            ("podinfo", "7.0.0"),
            ("redis", "18.1.0"),
        ],
    );
    let cache_dir = tmp.path().join("cache/charts");
    let cache = open_cache(&cache_dir);
    assert_eq!(
        std::fs::metadata(&cache_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let access = access(&server, None);
    let repo = server.url("/charts");

    let (exact, _) = resolve(&cache, &repo, "podinfo", "6.4.0", &access).await;
    let exact = exact.unwrap();
    let want = &archives["6.4.0"];
    assert_eq!(exact.name, "podinfo");
    assert_eq!(exact.version, "6.4.0");
    assert_eq!(exact.digest, format!("sha256:{}", sha256_hex(want)));
    assert_eq!(exact.url, server.url("/charts/podinfo-6.4.0.tgz"));
    assert_eq!(
        exact.archive,
        cache_dir.join(format!("sha256-{}.tgz", sha256_hex(want)))
    );
    assert_eq!(&std::fs::read(&exact.archive).unwrap(), want);
    assert_eq!(
        std::fs::metadata(&exact.archive)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // A range takes the newest release it matches (not the prerelease, not 7.x); a trailing slash is fine.
    let (ranged, _) = resolve(&cache, &format!("{repo}/"), "podinfo", "6.x", &access).await;
    let ranged = ranged.unwrap();
    assert_eq!(ranged.version, "6.5.1");
    assert_eq!(&std::fs::read(&ranged.archive).unwrap(), &archives["6.5.1"]);
    for (range, want) in [
        ("^6.4", "6.5.1"),
        (">=6.0.0 <7.0.0", "6.5.1"),
        ("~6.4", "6.4.0"),
        ("6.4 || 7.x", "7.0.0"),
        (">=6.6.0-0 <7.0.0-0", "6.6.0-rc.1"),
        ("", "7.0.0"),
    ] {
        let (got, _) = resolve(&cache, &repo, "podinfo", range, &access).await;
        assert_eq!(got.unwrap().version, want, "{range:?}");
    }
    let downloads = server.hits("/charts/podinfo-6.5.1.tgz");
    assert_eq!(
        downloads, 1,
        "6.5.1 is downloaded once, then read from the cache"
    );

    // Cached: the index is asked again (it may list a newer version), the archive is not.
    let index_before = server.hits("/charts/index.yaml");
    let (again, _) = resolve(&cache, &repo, "podinfo", "6.x", &access).await;
    assert_eq!(again.unwrap(), ranged);
    assert_eq!(server.hits("/charts/index.yaml"), index_before + 1);
    assert_eq!(server.hits("/charts/podinfo-6.5.1.tgz"), 1);

    // A cached file that no longer matches its digest is replaced by a verified download.
    std::fs::write(&ranged.archive, b"corrupted").unwrap();
    let (repaired, _) = resolve(&cache, &repo, "podinfo", "6.x", &access).await;
    assert_eq!(
        &std::fs::read(&repaired.unwrap().archive).unwrap(),
        &archives["6.5.1"]
    );
    assert_eq!(server.hits("/charts/podinfo-6.5.1.tgz"), 2);

    // A version published later is what the next resolve of the range picks.
    publish(
        &server,
        tmp.path(),
        &[
            ("podinfo", "6.4.0"),
            ("podinfo", "6.5.1"),
            ("podinfo", "6.6.0"),
            ("podinfo", "7.0.0"),
        ],
    );
    let (newer, _) = resolve(&cache, &repo, "podinfo", "6.x", &access).await;
    let newer = newer.unwrap();
    assert_eq!(newer.version, "6.6.0");
    assert_ne!(newer.digest, ranged.digest);
    assert!(
        cached_files(&cache_dir)
            .iter()
            .all(|f| f.starts_with("sha256-")),
        "no temporary file left: {:?}",
        cached_files(&cache_dir)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn archive_urls_may_be_relative_absolute_or_prefixed_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ChartServer::start(None).await;
    let nested = package(tmp.path(), "nested", "1.0.0");
    let rooted = package(tmp.path(), "rooted", "1.0.0");
    let absolute = package(tmp.path(), "absolute", "1.0.0");
    server.put("/charts/files/nested-1.0.0.tgz", nested.clone());
    server.put("/elsewhere/rooted-1.0.0.tgz", rooted.clone());
    server.put("/cdn/absolute-1.0.0.tgz", absolute.clone());
    let entries = [
        Entry {
            name: "nested",
            version: "1.0.0",
            digest: Some(format!("sha256:{}", sha256_hex(&nested))),
            url: "files/nested-1.0.0.tgz".into(),
        },
        Entry {
            name: "rooted",
            version: "1.0.0",
            digest: Some(sha256_hex(&rooted).to_uppercase()),
            url: "/elsewhere/rooted-1.0.0.tgz".into(),
        },
        Entry {
            name: "absolute",
            version: "1.0.0",
            digest: Some(sha256_hex(&absolute)),
            url: server.url("/cdn/absolute-1.0.0.tgz"),
        },
    ];
    server.put("/charts/index.yaml", index_yaml(&entries));
    let cache = open_cache(&tmp.path().join("cache"));
    let access = access(&server, None);
    for (chart, bytes, url) in [
        ("nested", &nested, "/charts/files/nested-1.0.0.tgz"),
        ("rooted", &rooted, "/elsewhere/rooted-1.0.0.tgz"),
        ("absolute", &absolute, "/cdn/absolute-1.0.0.tgz"),
    ] {
        let (got, _) = resolve(&cache, &server.url("/charts"), chart, "1.0.0", &access).await;
        let got = got.unwrap_or_else(|e| panic!("{chart}: {e}"));
        assert_eq!(got.url, server.url(url));
        assert_eq!(got.digest, format!("sha256:{}", sha256_hex(bytes)));
        assert_eq!(&std::fs::read(&got.archive).unwrap(), bytes);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_digest_mismatch_is_refused_and_nothing_is_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ChartServer::start(None).await;
    let real = package(tmp.path(), "podinfo", "6.5.1");
    let claimed = sha256_hex(b"some other archive");
    server.put("/charts/podinfo-6.5.1.tgz", real.clone());
    server.put(
        "/charts/index.yaml",
        index_yaml(&[Entry {
            name: "podinfo",
            version: "6.5.1",
            digest: Some(claimed.clone()),
            url: "podinfo-6.5.1.tgz".into(),
        }]),
    );
    let cache_dir = tmp.path().join("cache");
    let cache = open_cache(&cache_dir);
    let (result, _) = resolve(
        &cache,
        &server.url("/charts"),
        "podinfo",
        "6.5.1",
        &access(&server, None),
    )
    .await;
    let err = result.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ChartError::DigestMismatch { .. }), "{msg}");
    assert!(
        msg.contains(&server.url("/charts/podinfo-6.5.1.tgz"))
            && msg.contains(&format!("says sha256:{claimed}"))
            && msg.contains(&format!("has digest sha256:{}", sha256_hex(&real)))
            && msg.contains("not cached"),
        "{msg}"
    );
    assert_eq!(cached_files(&cache_dir), Vec::<String>::new());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_charts_versions_and_missing_digests_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ChartServer::start(None).await;
    let versions: Vec<String> = (0..12).map(|i| format!("1.{i}.0")).collect();
    let charts: Vec<(&str, &str)> = versions.iter().map(|v| ("podinfo", v.as_str())).collect();
    publish(&server, tmp.path(), &charts);
    let cache = open_cache(&tmp.path().join("cache"));
    let access = access(&server, None);
    let repo = server.url("/charts");

    let (result, _) = resolve(&cache, &repo, "podinfo", "2.x", &access).await;
    let msg = result.unwrap_err().to_string();
    assert_eq!(
        msg,
        format!(
            "chart \"podinfo\" in {repo} has no version matching \"2.x\"; available: 1.11.0, 1.10.0, 1.9.0, 1.8.0, 1.7.0, 1.6.0, 1.5.0, 1.4.0, 1.3.0, 1.2.0 and 2 more"
        )
    );
    let (result, _) = resolve(&cache, &repo, "podinfo", "1.2.3.4", &access).await;
    let msg = result.unwrap_err().to_string();
    assert!(
        msg.contains("version \"1.2.3.4\" is neither a version nor a range") && msg.contains(&repo),
        "{msg}"
    );
    let (result, _) = resolve(&cache, &repo, "nginx", "1.x", &access).await;
    let err = result.unwrap_err();
    assert!(matches!(err, ChartError::UnknownChart { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!("chart repository {repo} has no chart named \"nginx\"")
    );

    // An entry without a digest is refused, whatever its archive.
    server.put(
        "/charts/index.yaml",
        index_yaml(&[Entry {
            name: "podinfo",
            version: "1.0.0",
            digest: None,
            url: "podinfo-1.0.0.tgz".into(),
        }]),
    );
    let (result, _) = resolve(&cache, &repo, "podinfo", "1.0.0", &access).await;
    let err = result.unwrap_err();
    assert!(matches!(err, ChartError::NoDigest { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("chart \"podinfo\" 1.0.0 in {repo} has no digest")),
        "{err}"
    );

    // A repository without index.yaml.
    let (result, _) = resolve(&cache, &server.url("/nothing"), "podinfo", "1.x", &access).await;
    let msg = result.unwrap_err().to_string();
    assert!(
        msg.contains(&format!(
            "GET {}/index.yaml answered 404 Not Found",
            server.url("/nothing")
        )) && msg.contains("a Helm chart repository"),
        "{msg}"
    );
    assert_eq!(server.hits("/charts/podinfo-1.0.0.tgz"), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_is_required_and_sent_only_to_the_repository_s_host() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ChartServer::start(Some(TOKEN)).await;
    let archives = publish(&server, tmp.path(), &[("podinfo", "6.5.1")]);
    let cache = open_cache(&tmp.path().join("cache"));
    let repo = server.url("/charts");

    let cases = [
        (
            None,
            "requires authentication and has no token; set its tokenFile",
        ),
        (Some(WRONG_TOKEN), "token was not accepted"),
    ];
    for (token, want) in cases {
        let (result, _) = resolve(&cache, &repo, "podinfo", "6.x", &access(&server, token)).await;
        let err = result.unwrap_err();
        let msg = format!("{err} {err:?}");
        assert!(matches!(err, ChartError::Status { .. }), "{msg}");
        assert!(
            msg.contains("401 Unauthorized") && msg.contains(want),
            "{msg}"
        );
        assert!(msg.contains(&server.url("/charts/index.yaml")), "{msg}");
        assert!(
            !msg.contains(TOKEN) && !msg.contains(WRONG_TOKEN),
            "token leaked: {msg}"
        );
    }
    let (result, _) = resolve(
        &cache,
        &repo,
        "podinfo",
        "6.x",
        &access(&server, Some(TOKEN)),
    )
    .await;
    let got = result.unwrap();
    assert_eq!(&std::fs::read(&got.archive).unwrap(), &archives["6.5.1"]);
    let sent: Vec<_> = server
        .seen()
        .into_iter()
        .filter_map(|s| s.authorization)
        .collect();
    assert!(sent.contains(&format!("Bearer {TOKEN}")), "{sent:?}");

    // An archive on another host, listed directly or reached by a redirect, gets no token.
    let elsewhere = ChartServer::start(None).await;
    let other = package(tmp.path(), "other", "1.0.0");
    let moved = package(tmp.path(), "moved", "1.0.0");
    elsewhere.put("/cdn/other-1.0.0.tgz", other.clone());
    elsewhere.put("/cdn/moved-1.0.0.tgz", moved.clone());
    server.content(|c| {
        c.redirects.insert(
            "/charts/moved-1.0.0.tgz".into(),
            elsewhere.url("/cdn/moved-1.0.0.tgz"),
        );
    });
    server.put(
        "/charts/index.yaml",
        index_yaml(&[
            Entry {
                name: "other",
                version: "1.0.0",
                digest: Some(sha256_hex(&other)),
                url: elsewhere.url("/cdn/other-1.0.0.tgz"),
            },
            Entry {
                name: "moved",
                version: "1.0.0",
                digest: Some(sha256_hex(&moved)),
                url: "moved-1.0.0.tgz".into(),
            },
        ]),
    );
    let mut trusted = access(&server, Some(TOKEN));
    trusted.ca_pem = Some(format!("{}{}", server.ca_pem, elsewhere.ca_pem).into_bytes());
    for chart in ["other", "moved"] {
        let (result, _) = resolve(&cache, &repo, chart, "1.0.0", &trusted).await;
        result.unwrap_or_else(|e| panic!("{chart}: {e}"));
    }
    assert_eq!(
        server.hits("/charts/moved-1.0.0.tgz"),
        1,
        "the redirect was not taken, so the test proves nothing"
    );
    assert_eq!(elsewhere.hits("/cdn/moved-1.0.0.tgz"), 1);
    assert_eq!(elsewhere.hits("/cdn/other-1.0.0.tgz"), 1);
    let leaked: Vec<_> = elsewhere
        .seen()
        .into_iter()
        .filter(|s| s.authorization.is_some())
        .collect();
    assert!(
        leaked.is_empty(),
        "another host received credentials: {leaked:?}"
    );

    // A redirect to another host that wants a token fails, and says why it got none.
    let guarded = ChartServer::start(Some(TOKEN)).await;
    let locked = package(tmp.path(), "locked", "1.0.0");
    guarded.put("/locked-1.0.0.tgz", locked.clone());
    server.content(|c| {
        c.redirects.insert(
            "/charts/locked-1.0.0.tgz".into(),
            guarded.url("/locked-1.0.0.tgz"),
        );
    });
    server.put(
        "/charts/index.yaml",
        index_yaml(&[Entry {
            name: "locked",
            version: "1.0.0",
            digest: Some(sha256_hex(&locked)),
            url: "locked-1.0.0.tgz".into(),
        }]),
    );
    trusted.ca_pem = Some(format!("{}{}", server.ca_pem, guarded.ca_pem).into_bytes());
    let (result, _) = resolve(&cache, &repo, "locked", "1.0.0", &trusted).await;
    let msg = result.unwrap_err().to_string();
    assert!(
        msg.contains(&format!(
            "GET {}/locked-1.0.0.tgz answered 401 Unauthorized from {}, which is not the chart repository's host and so does not get its token",
            repo,
            guarded.url("/locked-1.0.0.tgz")
        )),
        "{msg}"
    );
    assert!(
        guarded.seen().iter().all(|s| s.authorization.is_none()),
        "the redirected request carried credentials"
    );
    assert!(!guarded.seen().is_empty());
    guarded.stop().await;
    elsewhere.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_certificate_must_come_from_a_trusted_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ChartServer::start(None).await;
    publish(&server, tmp.path(), &[("podinfo", "6.5.1")]);
    let cache = open_cache(&tmp.path().join("cache"));
    let repo = server.url("/charts");
    let other_ca = CertificateAuthority::generate("someone else").unwrap();
    for ca_pem in [None, Some(other_ca.cert_pem())] {
        let access = ChartRepoAccess {
            ca_pem: ca_pem.map(String::into_bytes),
            token: Some(TOKEN.into()),
            ..ChartRepoAccess::default()
        };
        let (result, _) = resolve(&cache, &repo, "podinfo", "6.x", &access).await;
        let err = result.unwrap_err();
        let msg = format!("{err} {err:?}");
        assert!(matches!(err, ChartError::Request { .. }), "{msg}");
        assert!(msg.contains(&server.url("/charts/index.yaml")), "{msg}");
        assert!(
            msg.contains("certificate") && msg.contains("caFile"),
            "no hint: {msg}"
        );
        assert!(!msg.contains(TOKEN), "token leaked: {msg}");
    }
    assert!(
        server.seen().is_empty(),
        "a request crossed an untrusted connection"
    );

    let access = ChartRepoAccess {
        ca_pem: Some(b"not a pem".to_vec()),
        ..ChartRepoAccess::default()
    };
    let (result, _) = resolve(&cache, &repo, "podinfo", "6.x", &access).await;
    let err = result.unwrap_err();
    assert!(matches!(err, ChartError::CaBundle { .. }), "{err}");
    assert!(err.to_string().contains(&repo), "{err}");
    server.stop().await;
}

/// Accepts TCP connections and never says anything on them, until stopped.
async fn silent_server() -> (SocketAddr, CancellationToken, JoinHandle<()>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut held = Vec::new();
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    accepted = listener.accept() => {
                        if let Ok((tcp, _)) = accepted {
                            held.push(tcp);
                        }
                    }
                }
            }
        }
    });
    (addr, stop, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_never_answers_or_stalls_is_cut_off_at_the_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = open_cache(&tmp.path().join("cache"));
    let timeout = Duration::from_secs(1);
    // Slack for a loaded machine; reqwest's own default would be 30 s.
    let bound = timeout + Duration::from_millis(1500);

    let (addr, stop, task) = silent_server().await;
    let access = ChartRepoAccess {
        timeout,
        ..ChartRepoAccess::default()
    };
    let repo = format!("https://{addr}/charts");
    let (result, took) = resolve(&cache, &repo, "podinfo", "6.x", &access).await;
    let err = result.unwrap_err();
    let msg = err.to_string();
    eprintln!("silent server cut off after {took:?} (timeout {timeout:?})");
    assert!(matches!(err, ChartError::TimedOut { .. }), "{msg}");
    assert!(
        msg.contains(&format!("GET {repo}/index.yaml did not finish within"))
            && msg.contains("timeout of 1s"),
        "{msg}"
    );
    assert!(took >= timeout && took < bound, "took {took:?}");
    stop.cancel();
    task.await.unwrap();

    // Headers and a few bytes, then nothing: the body is inside the same bound.
    let server = ChartServer::start(None).await;
    publish(&server, tmp.path(), &[("podinfo", "6.5.1")]);
    let access = ChartRepoAccess {
        timeout,
        ..access_for(&server)
    };
    for path in ["/charts/index.yaml", "/charts/podinfo-6.5.1.tgz"] {
        server.content(|c| {
            c.stalled.clear();
            c.stalled.insert(path.to_string());
        });
        let (result, took) =
            resolve(&cache, &server.url("/charts"), "podinfo", "6.x", &access).await;
        let err = result.unwrap_err();
        eprintln!("stalled {path} cut off after {took:?}");
        assert!(matches!(err, ChartError::TimedOut { .. }), "{path}: {err}");
        assert!(err.to_string().contains(&server.url(path)), "{err}");
        assert!(took >= timeout && took < bound, "{path}: took {took:?}");
    }
    assert!(cached_files(&tmp.path().join("cache")).is_empty());
    server.stop().await;
}

fn access_for(server: &ChartServer) -> ChartRepoAccess {
    access(server, None)
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_over_their_limits_are_cut_off() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ChartServer::start(None).await;
    let archives = publish(&server, tmp.path(), &[("podinfo", "6.5.1")]);
    let cache_dir = tmp.path().join("cache");
    let cache = open_cache(&cache_dir);
    let repo = server.url("/charts");

    let small_index = ChartRepoAccess {
        max_index_bytes: 64,
        ..access_for(&server)
    };
    let (result, _) = resolve(&cache, &repo, "podinfo", "6.x", &small_index).await;
    let msg = result.unwrap_err().to_string();
    assert_eq!(
        msg,
        format!(
            "index.yaml at {repo}/index.yaml is larger than maxIndexBytes (64 bytes); it was not read further"
        )
    );

    // An endless index of unknown length: reading stops at the limit, at once.
    server.content(|c| {
        c.endless.insert("/charts/index.yaml".into());
    });
    let (result, took) = resolve(&cache, &repo, "podinfo", "6.x", &access_for(&server)).await;
    let msg = result.unwrap_err().to_string();
    assert!(
        msg.contains("larger than maxIndexBytes (33554432 bytes)"),
        "{msg}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    server.content(|c| c.endless.clear());

    let small_chart = ChartRepoAccess {
        max_chart_bytes: archives["6.5.1"].len() as u64 - 1,
        ..access_for(&server)
    };
    let (result, _) = resolve(&cache, &repo, "podinfo", "6.x", &small_chart).await;
    let msg = result.unwrap_err().to_string();
    assert!(
        msg.contains(&format!(
            "the chart archive at {repo}/podinfo-6.5.1.tgz is larger than maxChartBytes"
        )),
        "{msg}"
    );
    assert!(cached_files(&cache_dir).is_empty());
    let exact_fit = ChartRepoAccess {
        max_chart_bytes: archives["6.5.1"].len() as u64,
        ..access_for(&server)
    };
    let (result, _) = resolve(&cache, &repo, "podinfo", "6.x", &exact_fit).await;
    result.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_is_refused_for_the_repository_archives_and_redirects() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ChartServer::start(None).await;
    let cache = open_cache(&tmp.path().join("cache"));
    let access = access_for(&server);

    let plain = format!("http://user:s3cret@{}/charts", server.addr);
    let (result, _) = resolve(&cache, &plain, "podinfo", "6.x", &access).await;
    let err = result.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ChartError::NotHttps { .. }), "{msg}");
    assert!(
        msg.contains(&format!(
            "chart repository URL http://***@{}/charts is not https://",
            server.addr
        )),
        "{msg}"
    );
    assert!(!msg.contains("s3cret"), "{msg}");

    let archive = package(tmp.path(), "podinfo", "6.5.1");
    server.put("/charts/podinfo-6.5.1.tgz", archive.clone());
    server.content(|c| {
        c.redirects.insert(
            "/charts/redirected.tgz".into(),
            format!("http://{}/charts/podinfo-6.5.1.tgz", server.addr),
        );
    });
    let entry = |url: String| Entry {
        name: "podinfo",
        version: "6.5.1",
        digest: Some(sha256_hex(&archive)),
        url,
    };
    server.put(
        "/charts/index.yaml",
        index_yaml(&[entry(format!(
            "http://{}/charts/podinfo-6.5.1.tgz",
            server.addr
        ))]),
    );
    let repo = server.url("/charts");
    let (result, _) = resolve(&cache, &repo, "podinfo", "6.x", &access).await;
    let err = result.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ChartError::NotHttps { .. }), "{msg}");
    assert!(
        msg.contains(&format!(
            "chart \"podinfo\" 6.5.1 in {repo}: its archive URL"
        )) && msg.contains(&format!(
            "http://{}/charts/podinfo-6.5.1.tgz is not https://",
            server.addr
        )),
        "{msg}"
    );

    server.put(
        "/charts/index.yaml",
        index_yaml(&[entry("redirected.tgz".into())]),
    );
    let (result, _) = resolve(&cache, &repo, "podinfo", "6.x", &access).await;
    let err = result.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ChartError::Request { .. }), "{msg}");
    assert!(
        msg.contains(&format!(
            "it redirects to http://{}/charts/podinfo-6.5.1.tgz, which is not https://, and such a redirect is refused",
            server.addr
        )),
        "{msg}"
    );
    assert_eq!(server.hits("/charts/redirected.tgz"), 1);
    assert_eq!(
        server.hits("/charts/podinfo-6.5.1.tgz"),
        0,
        "the plain-http target was fetched"
    );
    server.stop().await;
}

/// Packages a chart with the real `helm package` (Helm's engine through tools/helm).
fn helm_package(work: &Path, name: &str, version: &str) -> Vec<u8> {
    let dir = work.join(format!("src-{name}-{version}")).join(name);
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(
        dir.join("Chart.yaml"),
        format!("apiVersion: v2\nname: {name}\nversion: {version}\n"),
    )
    .unwrap();
    std::fs::write(dir.join("values.yaml"), "replicas: 1\n").unwrap();
    std::fs::write(
        dir.join("templates/configmap.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\ndata:\n  version: {{ .Chart.Version | quote }}\n  replicas: {{ .Values.replicas | quote }}\n",
    )
    .unwrap();
    let out_dir = work.join("packaged");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = std::process::Command::new(flotilla_testkit::helm())
        .arg("package")
        .arg(&dir)
        .arg("-d")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(out_dir.join(format!("{name}-{version}.tgz"))).unwrap()
}

/// Serves `charts` (name, version, digest override) at `/charts` with relative URLs.
fn publish_packaged(server: &ChartServer, work: &Path, charts: &[(&str, &str, Option<&str>)]) {
    let mut entries = Vec::new();
    for (name, version, digest) in charts {
        let bytes = helm_package(work, name, version);
        let file = format!("{name}-{version}.tgz");
        entries.push(Entry {
            name,
            version,
            digest: Some(
                digest
                    .map(str::to_string)
                    .unwrap_or_else(|| sha256_hex(&bytes)),
            ),
            url: file.clone(),
        });
        server.put(&format!("/charts/{file}"), bytes);
    }
    server.put("/charts/index.yaml", index_yaml(&entries));
}

/// The hub's controller with a chart repository app: the range resolves to the newest chart, a chart
/// published later is a new release at the same commit, and an unknown version or an archive whose
/// digest does not match the index keeps the previous release in force with the error on the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_renders_repository_charts_and_keeps_the_last_good_release() {
    use flotilla_common::labels::Labels;
    use flotilla_hub::config::HubConfig;
    use flotilla_hub::controller::Controller;
    use flotilla_hub::render::Tools;
    use flotilla_hub::store::{HubStore, TokenRecord};

    let server = ChartServer::start(None).await;
    let tmp = tempfile::tempdir().unwrap();
    publish_packaged(&server, tmp.path(), &[("podinfo", "6.5.1", None)]);
    let ca_file = tmp.path().join("chart-ca.pem");
    std::fs::write(&ca_file, &server.ca_pem).unwrap();

    let repo = tmp.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    flotilla_testkit::git(&repo, &["init", "-q", "-b", "main"]);
    let manifest = |version: &str| {
        format!(
            "apps:\n  - name: podinfo\n    namespace: web\n    helm: {{repo: \"{}\", chart: podinfo, version: \"{version}\"}}\n    values: {{replicas: 3}}\n",
            server.url("/charts")
        )
    };
    flotilla_testkit::write(&repo, "flotilla.yaml", &manifest("6.x"));
    flotilla_testkit::git(&repo, &["add", "-A"]);
    flotilla_testkit::git(&repo, &["commit", "-qm", "podinfo 6.x"]);
    let first_commit = flotilla_testkit::git(&repo, &["rev-parse", "HEAD"]);

    let store = HubStore::open(&tmp.path().join("hub.redb")).unwrap();
    let hash = [7u8; 32];
    store
        .put_token(
            &hash,
            &TokenRecord {
                labels: Labels::new(),
                created_at: 0,
                expires_at: i64::MAX,
                used_by: None,
                name: None,
            },
        )
        .unwrap();
    let cluster = store
        .register(flotilla_hub::store::Registration {
            token_hash: hash,
            now: 1,
            id: "c-00000000000000aa".into(),
            requested_name: "edge-1".into(),
            cert_expires_at: 0,
            capabilities: Default::default(),
        })
        .unwrap();
    let config = HubConfig::parse(&format!(
        "sources: [{{name: main, url: \"file://{}\", interval: 100ms}}]\nchartRepositories: [{{url: \"{}\", caFile: \"{}\"}}]\n",
        repo.display(),
        server.url("/charts"),
        ca_file.display()
    ))
    .unwrap();
    let signing = Arc::new(ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]));
    let (controller, _handle) = Controller::new(
        store.clone(),
        signing,
        1,
        &config,
        tmp.path().join("mirrors"),
    )
    .unwrap();
    let controller = controller.with_tools(Tools {
        helm: Some(flotilla_testkit::helm()),
        ..Tools::default()
    });
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(controller.run(shutdown.clone()));

    let chart_of = |store: &HubStore| {
        let (_, signed) = store.latest_state(&cluster.id).unwrap()?;
        let body: flotilla_common::cluster_state::StateBody =
            serde_json::from_slice(&signed.body).ok()?;
        body.apps.into_iter().find_map(|a| a.chart)
    };
    let wait_chart = |version: &'static str| {
        let store = store.clone();
        support::wait_for(Duration::from_secs(60), move || {
            chart_of(&store).filter(|chart| chart.version == version)
        })
    };
    let chart = wait_chart("6.5.1").await;
    assert!(chart.digest.starts_with("sha256:"), "{chart:?}");
    assert_eq!(chart.name, "podinfo");

    // A newer chart matching the range is a new release, with no new commit.
    publish_packaged(
        &server,
        tmp.path(),
        &[("podinfo", "6.5.1", None), ("podinfo", "6.5.2", None)],
    );
    wait_chart("6.5.2").await;

    let wait_error = |want: &'static str| {
        let store = store.clone();
        support::wait_for(Duration::from_secs(60), move || {
            let record = store.source("main").unwrap().unwrap_or_default();
            record.error.contains(want).then_some(record)
        })
    };

    // An unknown version: the commit does not go into force; the cluster keeps 6.5.2.
    flotilla_testkit::write(&repo, "flotilla.yaml", &manifest("9.9.9"));
    flotilla_testkit::git(&repo, &["commit", "-qam", "podinfo 9.9.9"]);
    let record = wait_error("9.9.9").await;
    assert!(record.error.contains("app podinfo"), "{}", record.error);
    assert_eq!(
        record.rendered_commit,
        first_commit,
        "{record:?}\n{}",
        flotilla_testkit::git(&repo, &["log", "--format=%H %s"])
    );
    assert_eq!(chart_of(&store).unwrap().version, "6.5.2");

    // Back to the range, but the index now lists a 6.5.3 whose archive does not match its digest.
    publish_packaged(
        &server,
        tmp.path(),
        &[
            ("podinfo", "6.5.2", None),
            ("podinfo", "6.5.3", Some(&"0".repeat(64))),
        ],
    );
    flotilla_testkit::write(&repo, "flotilla.yaml", &manifest("6.x"));
    flotilla_testkit::git(&repo, &["commit", "-qam", "podinfo 6.x again"]);
    let record = wait_error("digest").await;
    assert_eq!(record.rendered_commit, first_commit);
    assert_eq!(chart_of(&store).unwrap().version, "6.5.2");

    shutdown.cancel();
    task.await.unwrap();
    server.stop().await;
}
