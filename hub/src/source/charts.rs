//! Helm chart repositories: resolving a chart and a version (or range) to one verified archive in a local
//! cache keyed by digest.
//!
//! [`ChartCache::resolve`] fetches `<repo>/index.yaml` (bounded by `max_index_bytes`, parsed with the hub's
//! YAML budgets, only `entries.<chart>[].{version,digest,urls}` read), picks the version as Helm does (the
//! entry whose version is exactly the requested string, otherwise the newest one the range matches;
//! prereleases only for comparators that name one; see [`version`]), and returns the archive
//! `<cache>/sha256-<hex>.tgz`. An archive already cached whose SHA-256 is the index's digest is not
//! downloaded again; otherwise it is downloaded (bounded by `max_chart_bytes`), its SHA-256 compared with the
//! index's digest, and only a match is written (temporary file, fsync, rename), so the cache never holds an
//! unverified archive. An entry without a digest is refused: the digest is what makes a render reproducible.
//! Only `https://` is spoken, for the repository and for archive URLs (relative ones resolve against the
//! repository URL); the token goes as `Authorization: Bearer` to the repository's own scheme, host and port
//! only: not to archive URLs elsewhere, and not across a redirect to another host (reqwest drops the header
//! there; a redirect to plain http is refused). One `timeout` bounds the whole resolve, both requests and
//! their bodies. Everything is blocking; the hub calls it from `spawn_blocking`. Errors name the repository
//! (user info redacted), chart, version or limit, never the token.

mod fetch;
pub mod version;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_common::limits::Limits;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use self::fetch::{Body, Fetcher, RepoUrl};
use self::version::VersionRange;
use super::redact_url;

/// Default of [`ChartRepoAccess::timeout`].
pub const DEFAULT_CHART_TIMEOUT: Duration = Duration::from_secs(60);

/// Default of [`ChartRepoAccess::max_index_bytes`]: 32 MiB.
pub const DEFAULT_MAX_INDEX_BYTES: u64 = 32 * 1024 * 1024;

/// Default of [`ChartRepoAccess::max_chart_bytes`]: 16 MiB.
pub const DEFAULT_MAX_CHART_BYTES: u64 = 16 * 1024 * 1024;

/// Most versions an error lists.
const LISTED_VERSIONS: usize = 10;

/// Operator-side settings for one chart repository (from hub.yaml, never from a Git repository).
#[derive(Clone)]
pub struct ChartRepoAccess {
    /// PEM bundle of CA certificates trusted in addition to the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Bearer token, sent only to the repository's own scheme, host and port.
    pub token: Option<String>,
    /// Bound of one whole resolve: connecting, both requests and reading their bodies.
    pub timeout: Duration,
    /// Largest `index.yaml` read.
    pub max_index_bytes: u64,
    /// Largest chart archive downloaded.
    pub max_chart_bytes: u64,
}

impl Default for ChartRepoAccess {
    fn default() -> Self {
        ChartRepoAccess {
            ca_pem: None,
            token: None,
            timeout: DEFAULT_CHART_TIMEOUT,
            max_index_bytes: DEFAULT_MAX_INDEX_BYTES,
            max_chart_bytes: DEFAULT_MAX_CHART_BYTES,
        }
    }
}

impl std::fmt::Debug for ChartRepoAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChartRepoAccess")
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("max_index_bytes", &self.max_index_bytes)
            .field("max_chart_bytes", &self.max_chart_bytes)
            .finish()
    }
}

/// Which chart to resolve, as an app names it.
#[derive(Debug, Clone, Copy)]
pub struct ChartRequest<'a> {
    /// Repository URL, with or without a trailing slash (`https://charts.example/stable`).
    pub repo_url: &'a str,
    /// Chart name, a key of the index's `entries`.
    pub chart: &'a str,
    /// An exact version (`1.2.3`) or a range (`6.x`, `^1.2`, `>=1.0.0 <2.0.0`, `~1.2`, `1.2 || 2.x`);
    /// empty is the newest release.
    pub version: &'a str,
}

/// A chart version pinned by digest, its archive verified in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedChart {
    /// Chart name.
    pub name: String,
    /// The version chosen, as the index writes it.
    pub version: String,
    /// `sha256:<hex>` of the archive, lower-case.
    pub digest: String,
    /// Where the archive was (or would be) downloaded from, user info redacted.
    pub url: String,
    /// The verified `.tgz` in the cache.
    pub archive: PathBuf,
}

/// A failure to resolve a chart. Messages name the repository, chart, version or limit, never the token.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    /// The repository or an archive URL does not parse.
    #[error("{what} {url:?} is not a valid URL: {message}")]
    InvalidUrl {
        /// `chart repository URL` or the archive it is for.
        what: String,
        /// The URL, user info redacted.
        url: String,
        /// The parser's reason.
        message: String,
    },
    /// A URL that is not `https://`.
    #[error(
        "{what} {url} is not https://; charts are fetched only over https (a chart over plain http could be changed on the way, and a token would travel in clear)"
    )]
    NotHttps {
        /// `chart repository URL` or which chart's archive URL.
        what: String,
        /// The URL, user info redacted.
        url: String,
    },
    /// The version text is neither a version nor a range.
    #[error(
        "chart {chart:?} from {repo}: version {version:?} is neither a version nor a range: {message}"
    )]
    InvalidVersion {
        /// Repository URL, user info redacted.
        repo: String,
        /// Chart name.
        chart: String,
        /// The version text.
        version: String,
        /// What is wrong with it.
        message: String,
    },
    /// The configured CA bundle holds no usable certificate.
    #[error("chart repository {repo}: the CA bundle (caFile) {message}")]
    CaBundle {
        /// Repository URL, user info redacted.
        repo: String,
        /// What is wrong with the bundle.
        message: String,
    },
    /// The HTTPS client could not be built.
    #[error("chart repository {repo}: cannot set up the HTTPS client: {message}")]
    Client {
        /// Repository URL, user info redacted.
        repo: String,
        /// reqwest's reason.
        message: String,
    },
    /// Connecting, TLS or reading failed.
    #[error("GET {url} failed: {message}")]
    Request {
        /// The URL asked for, user info redacted.
        url: String,
        /// The transport's reason, with a hint where the fix is in hub.yaml.
        message: String,
    },
    /// The resolve did not finish within the repository's timeout.
    #[error(
        "GET {url} did not finish within the chart repository's timeout of {} (the bound of one whole chart resolve); it was stopped",
        humantime::format_duration(*timeout)
    )]
    TimedOut {
        /// The URL being fetched when the time ran out, user info redacted.
        url: String,
        /// The bound.
        timeout: Duration,
    },
    /// The server answered with an error status.
    #[error("GET {url} answered {status}{hint}")]
    Status {
        /// The URL asked for, user info redacted.
        url: String,
        /// Status code and reason.
        status: String,
        /// What to check, with a leading space, or empty.
        hint: String,
    },
    /// A body over its limit; reading stopped there.
    #[error("{what} at {url} is larger than {setting} ({limit} bytes); it was not read further")]
    TooLarge {
        /// `index.yaml` or `the chart archive`.
        what: &'static str,
        /// The URL, user info redacted.
        url: String,
        /// `maxIndexBytes` or `maxChartBytes`.
        setting: &'static str,
        /// The limit.
        limit: u64,
    },
    /// The index is not YAML or not an index.
    #[error("index.yaml at {url} cannot be read: {message}")]
    Index {
        /// The index URL, user info redacted.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The index has no such chart.
    #[error("chart repository {repo} has no chart named {chart:?}")]
    UnknownChart {
        /// Repository URL, user info redacted.
        repo: String,
        /// Chart name.
        chart: String,
    },
    /// No version of the chart is the one asked for.
    #[error("chart {chart:?} in {repo} has no version matching {version:?}; {}", available_text(available, *total))]
    NoMatchingVersion {
        /// Repository URL, user info redacted.
        repo: String,
        /// Chart name.
        chart: String,
        /// The version or range asked for.
        version: String,
        /// Up to ten versions the index lists, newest first.
        available: Vec<String>,
        /// How many versions the index lists.
        total: usize,
    },
    /// The chosen entry has no digest.
    #[error(
        "chart {chart:?} {version} in {repo} has no digest in index.yaml; Flotilla pins charts by digest so a render is reproducible, so it is refused (an index written by `helm repo index` has digests)"
    )]
    NoDigest {
        /// Repository URL, user info redacted.
        repo: String,
        /// Chart name.
        chart: String,
        /// The version chosen.
        version: String,
    },
    /// The chosen entry's digest is not a SHA-256.
    #[error(
        "chart {chart:?} {version} in {repo} has digest {digest:?} in index.yaml, which is not a SHA-256 digest (64 hex digits, optionally after \"sha256:\")"
    )]
    InvalidDigest {
        /// Repository URL, user info redacted.
        repo: String,
        /// Chart name.
        chart: String,
        /// The version chosen.
        version: String,
        /// The digest as written (shortened).
        digest: String,
    },
    /// The chosen entry lists no archive URL.
    #[error("chart {chart:?} {version} in {repo} lists no download URL in index.yaml")]
    NoUrl {
        /// Repository URL, user info redacted.
        repo: String,
        /// Chart name.
        chart: String,
        /// The version chosen.
        version: String,
    },
    /// The archive is not the one the index describes.
    #[error(
        "the chart archive at {url} has digest sha256:{actual}, but index.yaml of {repo} says sha256:{expected}; it was not cached"
    )]
    DigestMismatch {
        /// Repository URL, user info redacted.
        repo: String,
        /// Archive URL, user info redacted.
        url: String,
        /// The index's digest (hex).
        expected: String,
        /// The downloaded archive's digest (hex).
        actual: String,
    },
    /// The cache directory or a file in it cannot be read or written.
    #[error("chart cache {}: {message}: {source}", path.display())]
    Cache {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        message: &'static str,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
}

fn available_text(available: &[String], total: usize) -> String {
    if available.is_empty() {
        return "the index lists no version of it".to_string();
    }
    let mut text = format!("available: {}", available.join(", "));
    if total > available.len() {
        text.push_str(&format!(" and {} more", total - available.len()));
    }
    text
}

/// The fields of `index.yaml` that resolving needs; everything else is ignored.
#[derive(Debug, Deserialize)]
struct IndexFile {
    #[serde(default)]
    entries: Option<std::collections::BTreeMap<String, Option<Vec<IndexEntry>>>>,
}

/// One version of a chart in the index.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct IndexEntry {
    version: String,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    urls: Option<Vec<String>>,
}

/// Parses `index.yaml` and returns the entries of `chart`, `None` when it lists no such chart.
///
/// The index is one YAML document, parsed with the hub's depth and alias budgets and sized by
/// `max_index_bytes` instead of the per-file limit.
fn parse_index(
    text: &str,
    chart: &str,
    limits: &Limits,
    max_index_bytes: u64,
) -> Result<Option<Vec<IndexEntry>>, String> {
    let limits = Limits {
        max_file_bytes: max_index_bytes,
        max_objects: 1,
        ..limits.clone()
    };
    let index: IndexFile =
        flotilla_common::yaml::parse_one_large(text, &limits).map_err(|e| e.to_string())?;
    Ok(index
        .entries
        .unwrap_or_default()
        .remove(chart)
        .map(Option::unwrap_or_default))
}

/// The lower-case hex of an index digest, written bare (as `helm repo index` does) or as `sha256:<hex>`.
fn digest_hex(digest: &str) -> Option<String> {
    let digest = digest.trim();
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

/// Chart archives by digest under a directory the hub owns: `<dir>/sha256-<hex>.tgz`, each written only after
/// its digest matched.
#[derive(Debug)]
pub struct ChartCache {
    dir: PathBuf,
    limits: Limits,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl ChartCache {
    /// Opens the cache in `dir`, creating it (mode 0700) when absent; `limits` are the hub's YAML budgets.
    pub fn open(dir: &Path, limits: &Limits) -> Result<ChartCache, ChartError> {
        crate::datadir::create_private_dir_all(dir).map_err(|source| ChartError::Cache {
            path: dir.to_path_buf(),
            message: "cannot create the directory",
            source,
        })?;
        Ok(ChartCache {
            dir: dir.to_path_buf(),
            limits: limits.clone(),
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Resolves `req` against its repository's index and returns the chosen version with its archive,
    /// downloading and verifying the archive unless the cache already holds it. Blocking; bounded by
    /// `access.timeout` as a whole.
    pub fn resolve(
        &self,
        req: &ChartRequest<'_>,
        access: &ChartRepoAccess,
    ) -> Result<ResolvedChart, ChartError> {
        let repo = RepoUrl::parse(req.repo_url)?;
        let range = VersionRange::parse(req.version).map_err(|e| ChartError::InvalidVersion {
            repo: repo.display.clone(),
            chart: req.chart.to_string(),
            version: req.version.to_string(),
            message: e.to_string(),
        })?;
        let fetcher = Fetcher::new(&repo, access)?;

        let index_url = repo.index_url();
        let index = fetcher.get(&index_url, Body::Index)?;
        let index_err = |message: String| ChartError::Index {
            url: redact_url(index_url.as_str()),
            message,
        };
        let text = String::from_utf8(index).map_err(|_| index_err("it is not UTF-8".into()))?;
        let entries = parse_index(&text, req.chart, &self.limits, access.max_index_bytes)
            .map_err(index_err)?
            .ok_or_else(|| ChartError::UnknownChart {
                repo: repo.display.clone(),
                chart: req.chart.to_string(),
            })?;
        let entry = version::select(
            entries.iter().map(|e| (e.version.as_str(), e)),
            req.version.trim(),
            &range,
        )
        .ok_or_else(|| {
            let listed = version::newest_first(entries.iter().map(|e| e.version.as_str()));
            ChartError::NoMatchingVersion {
                repo: repo.display.clone(),
                chart: req.chart.to_string(),
                version: req.version.to_string(),
                available: listed
                    .iter()
                    .take(LISTED_VERSIONS)
                    .map(|v| v.to_string())
                    .collect(),
                total: listed.len(),
            }
        })?;

        let digest = entry.digest.as_deref().filter(|d| !d.trim().is_empty());
        let Some(digest) = digest else {
            return Err(ChartError::NoDigest {
                repo: repo.display.clone(),
                chart: req.chart.to_string(),
                version: entry.version.clone(),
            });
        };
        let hex = digest_hex(digest).ok_or_else(|| ChartError::InvalidDigest {
            repo: repo.display.clone(),
            chart: req.chart.to_string(),
            version: entry.version.clone(),
            digest: digest.chars().take(80).collect(),
        })?;
        let reference = entry
            .urls
            .as_deref()
            .and_then(<[String]>::first)
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| ChartError::NoUrl {
                repo: repo.display.clone(),
                chart: req.chart.to_string(),
                version: entry.version.clone(),
            })?;
        let what = format!(
            "chart {:?} {} in {}: its archive URL",
            req.chart, entry.version, repo.display
        );
        let url = repo.resolve(reference.trim(), &what)?;
        let archive = self.dir.join(format!("sha256-{hex}.tgz"));
        let resolved = ResolvedChart {
            name: req.chart.to_string(),
            version: entry.version.clone(),
            digest: format!("sha256:{hex}"),
            url: redact_url(url.as_str()),
            archive: archive.clone(),
        };
        if self.cached_digest(&archive)?.as_deref() == Some(hex.as_str()) {
            return Ok(resolved);
        }
        let bytes = fetcher.get(&url, Body::Archive)?;
        let actual = sha256_hex(&bytes);
        if actual != hex {
            return Err(ChartError::DigestMismatch {
                repo: repo.display.clone(),
                url: redact_url(url.as_str()),
                expected: hex,
                actual,
            });
        }
        self.write_atomically(&archive, &bytes)?;
        Ok(resolved)
    }

    /// The SHA-256 of a cached archive, `None` when there is none.
    fn cached_digest(&self, path: &Path) -> Result<Option<String>, ChartError> {
        let mut file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ChartError::Cache {
                    path: path.to_path_buf(),
                    message: "cannot open the cached archive",
                    source,
                });
            }
        };
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher).map_err(|source| ChartError::Cache {
            path: path.to_path_buf(),
            message: "cannot read the cached archive",
            source,
        })?;
        Ok(Some(hex::encode(hasher.finalize())))
    }

    /// Writes `bytes` to `path` through a temporary file in the same directory: write, fsync, rename, fsync
    /// the directory; a reader sees the whole verified archive or none.
    fn write_atomically(&self, path: &Path, bytes: &[u8]) -> Result<(), ChartError> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("archive");
        let temp = self.dir.join(format!(
            ".{name}.tmp-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let cache_err = |path: &Path, message| {
            let path = path.to_path_buf();
            move |source| ChartError::Cache {
                path,
                message,
                source,
            }
        };
        let written = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)
                .map_err(cache_err(&temp, "cannot create a temporary file"))?;
            file.write_all(bytes)
                .map_err(cache_err(&temp, "cannot write the archive"))?;
            file.sync_all()
                .map_err(cache_err(&temp, "cannot sync the archive"))?;
            std::fs::rename(&temp, path)
                .map_err(cache_err(path, "cannot move the archive in place"))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written?;
        std::fs::File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(cache_err(&self.dir, "cannot sync the directory"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = r#"
apiVersion: v1
generated: "2026-11-30T10:00:00Z"
entries:
  podinfo:
    - apiVersion: v2
      name: podinfo
      version: 6.5.1
      appVersion: 6.5.1
      created: "2026-11-01T00:00:00Z"
      digest: 0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c
      urls: [podinfo-6.5.1.tgz]
      maintainers: [{name: someone, email: someone@example.invalid}]
      annotations: {category: demo}
    - name: podinfo
      version: 6.4.0
      digest: sha256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
      urls:
        - https://mirror.example/podinfo-6.4.0.tgz
        - https://other.example/podinfo-6.4.0.tgz
    - {name: podinfo, version: 1.0}
  empty: []
  nulled:
serverInfo: {contextPath: /charts}
"#;

    #[test]
    fn the_index_yields_the_chart_s_entries_and_ignores_the_rest() {
        let limits = Limits::default();
        let entries = parse_index(INDEX, "podinfo", &limits, DEFAULT_MAX_INDEX_BYTES)
            .unwrap()
            .unwrap();
        let versions: Vec<_> = entries.iter().map(|e| e.version.as_str()).collect();
        assert_eq!(
            versions,
            ["6.5.1", "6.4.0", "1.0"],
            "a plain 1.0 stays text"
        );
        assert_eq!(
            entries[1].urls.as_deref().unwrap()[0],
            "https://mirror.example/podinfo-6.4.0.tgz"
        );
        assert_eq!(entries[2].digest, None);
        assert_eq!(entries[2].urls, None);
        let parse = |chart| parse_index(INDEX, chart, &limits, DEFAULT_MAX_INDEX_BYTES).unwrap();
        assert_eq!(parse("empty"), Some(vec![]));
        assert_eq!(parse("nulled"), Some(vec![]));
        assert_eq!(parse("absent"), None);
        assert_eq!(
            parse_index("apiVersion: v1\n", "x", &limits, 1024).unwrap(),
            None
        );
    }

    /// Public repositories list tens of thousands of chart versions in one index.
    #[test]
    fn a_large_public_index_parses() {
        let mut text = String::from("apiVersion: v1\nentries:\n");
        for chart in 0..12 {
            text.push_str(&format!("  chart-{chart}:\n"));
            for v in 0..1_000 {
                text.push_str(&format!(
                    "    - apiVersion: v2\n      name: chart-{chart}\n      version: 1.{v}.0\n      appVersion: \"{v}\"\n      created: \"2026-12-01T00:00:00Z\"\n      description: A chart with a description of ordinary length for an index.\n      digest: {}\n      urls: [https://charts.example/chart-{chart}-1.{v}.0.tgz]\n      maintainers: [{{name: team, email: team@example.com}}]\n",
                    "a".repeat(64)
                ));
            }
        }
        assert!(text.len() > 4 << 20, "{} bytes", text.len());
        let entries = parse_index(
            &text,
            "chart-7",
            &Limits::default(),
            DEFAULT_MAX_INDEX_BYTES,
        )
        .unwrap()
        .unwrap();
        assert_eq!(entries.len(), 1_000);
    }

    #[test]
    fn a_broken_or_hostile_index_is_a_sentence() {
        let limits = Limits::default();
        let cases = [
            ("entries: [", ""),
            ("entries: {a: [{digest: x}]}", "version"),
            ("entries: 5", ""),
        ];
        for (text, want) in cases {
            let err = parse_index(text, "a", &limits, 1024).unwrap_err();
            assert!(
                err.contains(want) && !err.contains("Error {"),
                "{text:?}: {err}"
            );
        }
        // Deep nesting in a field nobody reads is still refused: the budget is the parser's.
        let deep = format!("generated: {}1{}", "[".repeat(150), "]".repeat(150));
        let err = parse_index(&deep, "a", &limits, 1 << 20).unwrap_err();
        assert!(err.contains("nesting depth"), "{err}");
        let err = parse_index(INDEX, "podinfo", &limits, 100).unwrap_err();
        assert!(err.contains("100 byte limit"), "{err}");
        let mut laughs = String::from("a: &a [x,x,x,x,x,x,x,x,x]\n");
        for (i, c) in ('b'..='i').enumerate() {
            let p = (b'a' + i as u8) as char;
            laughs.push_str(&format!(
                "{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
            ));
        }
        let started = std::time::Instant::now();
        let err = parse_index(&laughs, "a", &limits, 1 << 20).unwrap_err();
        assert!(err.contains("over the limit"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn digests_are_sha256_hex_bare_or_prefixed() {
        let hex = "0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c";
        let cases = [
            (hex.to_string(), Some(hex.to_string())),
            (format!("sha256:{hex}"), Some(hex.to_string())),
            (hex.to_uppercase(), Some(hex.to_string())),
            (format!(" {hex}\n"), Some(hex.to_string())),
            (format!("sha512:{hex}"), None),
            (hex[..63].to_string(), None),
            (format!("{}/", &hex[..63]), None),
            ("../../etc/passwd".to_string(), None),
            (String::new(), None),
        ];
        for (digest, want) in cases {
            assert_eq!(digest_hex(&digest), want, "{digest:?}");
        }
    }

    #[test]
    fn version_errors_list_the_newest_ten() {
        let err = ChartError::NoMatchingVersion {
            repo: "https://charts.example".into(),
            chart: "podinfo".into(),
            version: "9.x".into(),
            available: (0..10).rev().map(|i| format!("1.{i}.0")).collect(),
            total: 13,
        };
        assert_eq!(
            err.to_string(),
            "chart \"podinfo\" in https://charts.example has no version matching \"9.x\"; available: 1.9.0, 1.8.0, 1.7.0, 1.6.0, 1.5.0, 1.4.0, 1.3.0, 1.2.0, 1.1.0, 1.0.0 and 3 more"
        );
    }

    #[test]
    fn access_debug_never_shows_the_token() {
        let access = ChartRepoAccess {
            token: Some("tok-canary".into()),
            ..Default::default()
        };
        assert!(!format!("{access:?}").contains("tok-canary"));
    }
}
