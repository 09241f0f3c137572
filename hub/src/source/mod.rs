//! Git IO with gix: a bare mirror per Source, fetched on demand, and whole-commit reads from the object
//! database into a [`RepoTree`]. Nothing here reads a working tree (invariant 1).
//!
//! Everything is blocking; the hub calls it from `spawn_blocking`. Credentials are handed to gix in
//! memory and never appear in errors: URLs in messages have their user info replaced.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use flotilla_common::limits::Limits;
use gix::bstr::ByteSlice;
use gix::error::ErrorExt;
use gix::objs::tree::EntryKind;

use crate::render::{RepoTree, TreeEntry};

pub mod charts;

/// Most bytes of file content one commit may hold for [`read_tree`].
pub const MAX_TREE_BYTES: u64 = 256 * 1024 * 1024;

/// Most entries (files, symlinks, submodules) one commit may hold for [`read_tree`].
pub const MAX_TREE_ENTRIES: usize = 500_000;

/// The HTTP basic-auth user name sent with a token; GitHub, GitLab and Gitea accept any user with a token.
pub const TOKEN_USER: &str = "x-access-token";

/// A failure to open, fetch or read a repository. Messages name the repository and never carry credentials.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The mirror directory cannot be opened or created.
    #[error("mirror {dir}: cannot open or create the bare repository: {message}")]
    Mirror {
        /// Mirror directory.
        dir: PathBuf,
        /// gix's message.
        message: String,
    },
    /// A repository to read cannot be opened.
    #[error("repository {dir}: cannot open: {message}")]
    Open {
        /// Repository directory.
        dir: PathBuf,
        /// gix's message.
        message: String,
    },
    /// A branch name that cannot be a git ref.
    #[error("invalid branch name {branch:?}")]
    BranchName {
        /// The rejected name.
        branch: String,
    },
    /// Connecting, negotiating or receiving the pack failed.
    #[error("fetch {url} into {dir}: {message}")]
    Fetch {
        /// Remote URL, user info removed.
        url: String,
        /// Mirror directory.
        dir: PathBuf,
        /// gix's message, credentials removed.
        message: String,
    },
    /// The time box ran out before the fetch finished; gix was interrupted.
    #[error("fetch {url}: did not finish within the fetch timeout of {}; it was stopped ({message})", humantime::format_duration(*timeout))]
    TimedOut {
        /// Remote URL, user info removed.
        url: String,
        /// The time box.
        timeout: Duration,
        /// gix's message for the interruption.
        message: String,
    },
    /// The remote sent a pack larger than the cap.
    #[error(
        "fetch {url}: the pack is larger than maxPackBytes ({limit} bytes): {received} bytes were received before the fetch was stopped"
    )]
    PackTooLarge {
        /// Remote URL, user info removed.
        url: String,
        /// The cap (`maxPackBytes`).
        limit: u64,
        /// Pack bytes received when the fetch stopped.
        received: u64,
    },
    /// Another fetch of the same mirror is running.
    #[error("fetch {url}: another fetch of mirror {dir} is still running")]
    Busy {
        /// Remote URL, user info removed.
        url: String,
        /// Mirror directory.
        dir: PathBuf,
    },
    /// The CA bundle to trust does not hold a usable certificate.
    #[error("fetch {url}: CA bundle {message}")]
    CaBundle {
        /// Remote URL, user info removed.
        url: String,
        /// What is wrong with the bundle.
        message: String,
    },
    /// The remote has no such branch.
    #[error("fetch {url}: branch {branch:?} does not exist on the remote")]
    BranchNotFound {
        /// Remote URL, user info removed.
        url: String,
        /// The branch asked for.
        branch: String,
    },
    /// A revision that does not resolve to a commit.
    #[error("repository {dir}: revision {rev:?} {problem}")]
    Revision {
        /// Repository directory.
        dir: PathBuf,
        /// The revision asked for.
        rev: String,
        /// What went wrong.
        problem: String,
    },
    /// Reading the commit's tree or a blob failed.
    #[error("repository {dir} at {commit}: {message}")]
    Read {
        /// Repository directory.
        dir: PathBuf,
        /// Commit being read.
        commit: String,
        /// What went wrong.
        message: String,
    },
    /// The commit's tree is bigger than [`MAX_TREE_BYTES`] or [`MAX_TREE_ENTRIES`].
    #[error("repository {dir} at {commit}: the tree holds more than {limit} {what}")]
    TreeTooLarge {
        /// Repository directory.
        dir: PathBuf,
        /// Commit being read.
        commit: String,
        /// The limit.
        limit: u64,
        /// `bytes` or `entries`.
        what: &'static str,
    },
}

/// A URL for display: its user info (`https://user:secret@host/…`) is replaced by `***`. Every place the hub
/// shows a source URL (status, logs, errors) goes through this.
#[derive(Debug, Clone, Copy)]
pub struct RedactedUrl<'a>(pub &'a str);

impl std::fmt::Display for RedactedUrl<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = self.0;
        let Some(scheme_end) = url.find("://") else {
            return f.write_str(url);
        };
        let authority_start = scheme_end + 3;
        let authority_end = url[authority_start..]
            .find(['/', '?', '#'])
            .map_or(url.len(), |i| authority_start + i);
        match url[authority_start..authority_end].rfind('@') {
            Some(at) => write!(
                f,
                "{}***@{}",
                &url[..authority_start],
                &url[authority_start + at + 1..]
            ),
            None => f.write_str(url),
        }
    }
}

/// [`RedactedUrl`] as a string.
pub fn redact_url(url: &str) -> String {
    RedactedUrl(url).to_string()
}

/// What a fetch presents to, and trusts from, an `https://` remote; `file://` remotes ignore it.
#[derive(Clone, Copy, Default)]
pub struct FetchAuth<'a> {
    /// Access token, sent as the HTTP basic-auth password of user [`TOKEN_USER`].
    pub token: Option<&'a str>,
    /// PEM bundle of CA certificates trusted in addition to the system's roots (a private CA).
    pub ca_pem: Option<&'a [u8]>,
}

impl FetchAuth<'_> {
    /// No token, system roots only.
    pub const NONE: FetchAuth<'static> = FetchAuth {
        token: None,
        ca_pem: None,
    };
}

impl std::fmt::Debug for FetchAuth<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchAuth")
            .field("token", &self.token.map(|_| "<redacted>"))
            .field("ca_pem", &self.ca_pem.map(<[u8]>::len))
            .finish()
    }
}

/// Default for [`GitMirror::with_max_pack_bytes`] and hub.yaml's `maxPackBytes`: 1 GiB.
pub const DEFAULT_MAX_PACK_BYTES: u64 = 1 << 30;

/// Default for [`GitMirror::with_timeout`] and hub.yaml's `fetchTimeout`.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// The file in a mirror directory whose OS lock a fetch holds, so two fetches of one mirror never run at once
/// (in this process or another); the OS drops the lock when the holder exits, so it never goes stale.
pub const FETCH_LOCK_FILE: &str = "flotilla-fetch.lock";

/// A bare repository under a directory the hub owns, mirroring one remote URL.
///
/// A fetch holds the lock on [`FETCH_LOCK_FILE`] from start to end, and ends by its time box (see
/// [`GitMirror::fetch`]), so fetches of one mirror never overlap.
#[derive(Debug)]
pub struct GitMirror {
    dir: PathBuf,
    url: String,
    timeout: Duration,
    max_pack_bytes: u64,
}

fn open_isolated(dir: &Path) -> Result<gix::Repository, gix::Error> {
    // Isolated: no system or user git config, no environment overrides, so no credential helper,
    // askpass prompt or `insteadOf` rewrite of the operator's shell can change what the hub fetches.
    gix::open_opts(dir, gix::open::Options::isolated())
}

/// What a fetch learned about why it stopped, beyond gix's own message.
struct FetchWatch {
    /// Set by the timer or by the pack meter; gix polls it while negotiating and receiving.
    interrupt: AtomicBool,
    /// The time box ran out.
    timed_out: AtomicBool,
    /// Pack bytes received so far.
    pack_bytes: AtomicU64,
    /// Pack bytes allowed.
    max_pack_bytes: u64,
    /// The pack went over `max_pack_bytes`.
    pack_too_large: AtomicBool,
}

impl FetchWatch {
    fn count_pack_bytes(&self, n: usize) {
        let total = self.pack_bytes.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
        if total > self.max_pack_bytes {
            self.pack_too_large.store(true, Ordering::SeqCst);
            self.interrupt.store(true, Ordering::SeqCst);
        }
    }
}

/// The progress gix reports to during a fetch: it discards everything except the bytes of the pack being read,
/// which it counts against the cap (gix's `read pack` task, id `BWRB`, increments once per read).
struct PackMeter {
    watch: Arc<FetchWatch>,
    id: gix::progress::Id,
    counter: gix::progress::StepShared,
}

/// The progress id gix-pack gives the bytes it reads from a received pack.
const READ_PACK_BYTES: gix::progress::Id = *b"BWRB";

impl PackMeter {
    fn new(watch: Arc<FetchWatch>, id: gix::progress::Id) -> Self {
        PackMeter {
            watch,
            id,
            counter: Default::default(),
        }
    }
}

impl gix::progress::Count for PackMeter {
    fn set(&self, step: gix::progress::Step) {
        let before = self.counter.swap(step, Ordering::SeqCst);
        if self.id == READ_PACK_BYTES && step > before {
            self.watch.count_pack_bytes(step - before);
        }
    }

    fn step(&self) -> gix::progress::Step {
        self.counter.load(Ordering::SeqCst)
    }

    fn inc_by(&self, step: gix::progress::Step) {
        self.counter.fetch_add(step, Ordering::SeqCst);
        if self.id == READ_PACK_BYTES {
            self.watch.count_pack_bytes(step);
        }
    }

    fn counter(&self) -> gix::progress::StepShared {
        self.counter.clone()
    }
}

impl gix::progress::Progress for PackMeter {
    fn init(&mut self, _max: Option<gix::progress::Step>, _unit: Option<gix::progress::Unit>) {}

    fn set_name(&mut self, _name: String) {}

    fn name(&self) -> Option<String> {
        None
    }

    fn id(&self) -> gix::progress::Id {
        self.id
    }

    fn message(&self, _level: gix::progress::MessageLevel, _message: String) {}
}

impl gix::progress::NestedProgress for PackMeter {
    type SubProgress = PackMeter;

    fn add_child(&mut self, _name: impl Into<String>) -> Self::SubProgress {
        PackMeter::new(self.watch.clone(), gix::progress::UNKNOWN)
    }

    fn add_child_with_id(
        &mut self,
        _name: impl Into<String>,
        id: gix::progress::Id,
    ) -> Self::SubProgress {
        PackMeter::new(self.watch.clone(), id)
    }
}

/// Scheme, lower-case host and port (the scheme's default when none is written) of a URL, or `None` when
/// it does not parse or has no host: what must match for a credential to be sent.
fn authority(url: &[u8]) -> Option<(String, String, Option<u16>)> {
    let url = gix::url::parse(url.as_bstr()).ok()?;
    let host = url.host()?.to_ascii_lowercase();
    Some((url.scheme.as_str().to_string(), host, url.port_or_default()))
}

impl GitMirror {
    /// Opens the bare repository in `dir`, creating it (and `dir`, mode 0700) when absent.
    pub fn open_or_init(dir: &Path, url: &str) -> Result<Self, SourceError> {
        let mirror_err = |message: String| SourceError::Mirror {
            dir: dir.to_path_buf(),
            message,
        };
        let exists = dir.join("HEAD").exists() || dir.join(".git").exists();
        if !exists {
            crate::datadir::create_private_dir_all(dir).map_err(|e| mirror_err(e.to_string()))?;
            gix::ThreadSafeRepository::init_opts(
                dir,
                gix::create::Kind::Bare,
                gix::create::Options::default(),
                gix::open::Options::isolated(),
            )
            .map_err(|e| mirror_err(chain(&e)))?;
        }
        let repo = open_isolated(dir).map_err(|e| mirror_err(chain(&e)))?;
        if !repo.is_bare() {
            return Err(mirror_err("exists but is not a bare repository".into()));
        }
        Ok(GitMirror {
            dir: dir.to_path_buf(),
            url: url.to_string(),
            timeout: DEFAULT_FETCH_TIMEOUT,
            max_pack_bytes: DEFAULT_MAX_PACK_BYTES,
        })
    }

    /// Sets the time box of each fetch (default [`DEFAULT_FETCH_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the most pack bytes one fetch may receive (default [`DEFAULT_MAX_PACK_BYTES`]).
    pub fn with_max_pack_bytes(mut self, max_pack_bytes: u64) -> Self {
        self.max_pack_bytes = max_pack_bytes;
        self
    }

    /// The mirror's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The remote URL with user info removed, for logs and status.
    pub fn display_url(&self) -> String {
        redact_url(&self.url)
    }

    /// Fetches `refs/heads/<branch>` from the remote into the mirror's `refs/heads/<branch>` and returns the
    /// commit id (hex), presenting `auth.token` and trusting `auth.ca_pem` over https.
    ///
    /// The fetch is time-boxed: a timer sets gix's interrupt flag when the time box ends (gix checks it
    /// while negotiating and between reads of the pack), and over HTTP every request carries the same
    /// timeout, so a server that stops sending cannot hold a read open. It stops the same way once the pack
    /// exceeds the mirror's cap. A second fetch of the same mirror while one runs fails with
    /// [`SourceError::Busy`] instead of waiting.
    pub fn fetch(&self, branch: &str, auth: FetchAuth<'_>) -> Result<String, SourceError> {
        self.fetch_ref("refs/heads", branch, auth)
    }

    /// Fetches `refs/tags/<tag>` into the mirror's `refs/tags/<tag>` and returns the commit it names (hex),
    /// with the same time box, pack cap and lock as [`GitMirror::fetch`]; a tag the remote does not have is
    /// [`SourceError::BranchNotFound`], an impossible name [`SourceError::BranchName`].
    pub fn fetch_tag(&self, tag: &str, auth: FetchAuth<'_>) -> Result<String, SourceError> {
        self.fetch_ref("refs/tags", tag, auth)
    }

    fn fetch_ref(
        &self,
        namespace: &str,
        branch: &str,
        auth: FetchAuth<'_>,
    ) -> Result<String, SourceError> {
        let remote_ref = format!("{namespace}/{branch}");
        let valid = !branch.is_empty()
            && !branch.starts_with('-')
            && !branch.contains(['*', ':', '?', '[', '\\', ' '])
            && gix::refs::FullName::try_from(remote_ref.as_str()).is_ok();
        if !valid {
            return Err(SourceError::BranchName {
                branch: branch.to_string(),
            });
        }
        let _lock = self.lock()?;
        let watch = Arc::new(FetchWatch {
            interrupt: AtomicBool::new(false),
            timed_out: AtomicBool::new(false),
            pack_bytes: AtomicU64::new(0),
            max_pack_bytes: self.max_pack_bytes,
            pack_too_large: AtomicBool::new(false),
        });
        let result = std::thread::scope(|scope| {
            let (done, wait) = std::sync::mpsc::channel::<()>();
            let timer_watch = watch.clone();
            let timeout = self.timeout;
            // The timer ends with the fetch: dropping `done` wakes it, and the scope joins it.
            scope.spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(timeout)
                {
                    timer_watch.timed_out.store(true, Ordering::SeqCst);
                    timer_watch.interrupt.store(true, Ordering::SeqCst);
                }
            });
            let result = self.fetch_watched(&remote_ref, branch, auth, &watch);
            drop(done);
            result
        });
        match result {
            Ok(commit) => Ok(commit),
            Err(_) if watch.pack_too_large.load(Ordering::SeqCst) => {
                Err(SourceError::PackTooLarge {
                    url: self.display_url(),
                    limit: self.max_pack_bytes,
                    received: watch.pack_bytes.load(Ordering::SeqCst),
                })
            }
            Err(e) if watch.timed_out.load(Ordering::SeqCst) => Err(SourceError::TimedOut {
                url: self.display_url(),
                timeout: self.timeout,
                message: match e {
                    SourceError::Fetch { message, .. } => message,
                    other => other.to_string(),
                },
            }),
            Err(e) => Err(e),
        }
    }

    /// Takes the mirror's fetch lock without waiting.
    fn lock(&self) -> Result<std::fs::File, SourceError> {
        let path = self.dir.join(FETCH_LOCK_FILE);
        let mirror_err = |message: String| SourceError::Mirror {
            dir: self.dir.clone(),
            message,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| mirror_err(format!("cannot open {}: {e}", path.display())))?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => Err(SourceError::Busy {
                url: self.display_url(),
                dir: self.dir.clone(),
            }),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(mirror_err(format!("cannot lock {}: {e}", path.display())))
            }
        }
    }

    fn fetch_watched(
        &self,
        remote_ref: &str,
        branch: &str,
        auth: FetchAuth<'_>,
        watch: &Arc<FetchWatch>,
    ) -> Result<String, SourceError> {
        let token = auth.token;
        let fetch_err = |e: &dyn std::error::Error| SourceError::Fetch {
            url: self.display_url(),
            dir: self.dir.clone(),
            message: explain(scrub(&chain(e), &self.url, token)),
        };
        let ca_certs = auth
            .ca_pem
            .map(parse_ca_bundle)
            .transpose()
            .map_err(|message| SourceError::CaBundle {
                url: self.display_url(),
                message,
            })?;
        let repo = open_isolated(&self.dir).map_err(|e| SourceError::Mirror {
            dir: self.dir.clone(),
            message: chain(&e),
        })?;
        let refspec = format!("+{remote_ref}:{remote_ref}");
        let remote = repo
            .remote_at(self.url.as_str())
            .map_err(|e| fetch_err(&e))?
            .with_fetch_tags(gix::remote::fetch::Tags::None)
            .with_refspecs([refspec.as_str()], gix::remote::Direction::Fetch)
            .map_err(|e| fetch_err(&e))?;
        install_crypto_provider();
        let transport_options =
            http_options(&repo, &self.url, ca_certs.unwrap_or_default(), self.timeout)
                .map_err(|e| fetch_err(&e))?;
        let token = token.map(str::to_string);
        let source_authority = authority(self.url.as_bytes());
        let display_url = self.display_url();
        let mut connection = remote
            .connect(gix::remote::Direction::Fetch)
            .map_err(|e| fetch_err(&e))?
            .with_credentials(move |action| match action {
                gix::credentials::helper::Action::Get(ctx) => {
                    // The context names the URL that asked, which is another host after a redirect; the
                    // token belongs to the source's own host only.
                    let asking = ctx.url.as_ref().and_then(|u| authority(u.as_ref()));
                    if asking.is_none() || asking != source_authority {
                        let asking = ctx
                            .url
                            .as_ref()
                            .map(|u| redact_url(&u.to_str_lossy()))
                            .unwrap_or_default();
                        return Err(gix::error::Message::new(format!(
                            "{asking} asks for credentials but is not the source's host ({display_url}); the token is sent only to the source's own host"
                        ))
                        .raise());
                    }
                    match &token {
                        Some(token) => Ok(Some(gix::credentials::protocol::Outcome {
                            identity: gix::sec::identity::Account {
                                username: TOKEN_USER.to_string(),
                                password: token.clone(),
                                oauth_refresh_token: None,
                            },
                            next: ctx.into(),
                        })),
                        // gix's own message for "no credentials" blames a credential helper we do not use.
                        None => Err(gix::error::message(
                            "the server requires authentication and the source has no token (set its tokenFile)",
                        )
                        .raise()),
                    }
                }
                // Nothing is stored or erased: credentials live only in memory, per fetch.
                _ => Ok(None),
            });
        if let Some(options) = transport_options {
            connection = connection.with_transport_options(options);
        }
        let mut progress = PackMeter::new(watch.clone(), gix::progress::UNKNOWN);
        let prepare = connection
            .prepare_fetch(&mut progress, Default::default())
            .map_err(|e| fetch_err(&e))?;
        let advertised = prepare.ref_map().remote_refs.iter().find_map(|r| {
            let (name, target, peeled) = r.unpack();
            (name == remote_ref.as_bytes().as_bstr())
                .then(|| peeled.or(target).map(ToOwned::to_owned))
                .flatten()
        });
        let Some(commit) = advertised else {
            return Err(SourceError::BranchNotFound {
                url: self.display_url(),
                branch: branch.to_string(),
            });
        };
        if watch.interrupt.load(Ordering::SeqCst) {
            return Err(SourceError::Fetch {
                url: self.display_url(),
                dir: self.dir.clone(),
                message: "interrupted before the pack was requested".into(),
            });
        }
        prepare
            .receive(progress, &watch.interrupt)
            .map_err(|e| fetch_err(&e))?;
        // The pack is in and the ref is updated; make sure the commit really is readable.
        let repo = open_isolated(&self.dir).map_err(|e| fetch_err(&e))?;
        repo.find_commit(commit).map_err(|e| fetch_err(&e))?;
        Ok(commit.to_hex().to_string())
    }
}

/// Parses a PEM bundle into the certificates reqwest adds to its roots; an empty bundle is an error, since
/// it would silently trust nothing more than the defaults.
pub(crate) fn parse_ca_bundle(pem: &[u8]) -> Result<Vec<reqwest::Certificate>, String> {
    let certs = reqwest::Certificate::from_pem_bundle(pem)
        .map_err(|e| format!("cannot be parsed: {}", chain(&e)))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

/// HTTP transport options for `url` (from the isolated repository config) whose reqwest client trusts
/// `certs` besides the system roots and bounds every request by `timeout` (reqwest's blocking client would
/// otherwise cut each request at its own default of 30 s, whatever the hub's time box); `None` for non-HTTP
/// URLs.
fn http_options(
    repo: &gix::Repository,
    url: &str,
    certs: Vec<reqwest::Certificate>,
    timeout: Duration,
) -> Result<Option<Box<dyn std::any::Any>>, gix::Error> {
    use gix::protocol::transport::client::blocking_io::http;
    let Some(options) = repo.transport_options(url, None)? else {
        return Ok(None);
    };
    let Ok(mut options) = options.downcast::<http::Options>() else {
        return Ok(None);
    };
    let backend = http::reqwest::Options {
        configure_client: Some(Box::new(move |builder| {
            Ok(certs
                .iter()
                .cloned()
                .fold(
                    builder,
                    reqwest::blocking::ClientBuilder::add_root_certificate,
                )
                .timeout(timeout))
        })),
        configure_request: None,
    };
    options.backend = Some(Arc::new(std::sync::Mutex::new(backend)));
    Ok(Some(options))
}

/// Adds a hint to messages whose cause an operator fixes in hub.yaml.
fn explain(message: String) -> String {
    // rustls's wording for a chain that ends at no trusted root.
    if message.contains("UnknownIssuer") {
        format!(
            "{message} (the server's certificate is not signed by a trusted CA; set the source's caFile to the CA that issued it)"
        )
    } else {
        message
    }
}

/// The HTTP transport's TLS needs a process-wide rustls provider; use ring, as the rest of the hub does.
/// If the process already chose one, that one stays.
pub(crate) fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// An error and its sources on one line, `outer: inner: …`, without repeats.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// Removes the URL's user info and the token from a message.
fn scrub(message: &str, url: &str, token: Option<&str>) -> String {
    let mut message = message.replace(url, &redact_url(url));
    if let Some(token) = token.filter(|t| !t.is_empty()) {
        message = message.replace(token, "***");
    }
    message
}

/// Reads the whole tree of commit `rev` (a branch, tag, full or short commit id) from the object database of
/// the repository at `repo_dir` (bare or not; a working tree is never read).
///
/// Files over `limits.max_file_bytes` are recorded as [`TreeEntry::TooLarge`], so only a render that needs
/// one fails; a tree over [`MAX_TREE_BYTES`] or [`MAX_TREE_ENTRIES`] is an error.
pub fn read_tree(repo_dir: &Path, rev: &str, limits: &Limits) -> Result<RepoTree, SourceError> {
    read_tree_within(repo_dir, rev, limits, MAX_TREE_BYTES)
}

fn read_tree_within(
    repo_dir: &Path,
    rev: &str,
    limits: &Limits,
    max_bytes: u64,
) -> Result<RepoTree, SourceError> {
    let dir = repo_dir.to_path_buf();
    let repo = open_isolated(repo_dir).map_err(|e| SourceError::Open {
        dir: dir.clone(),
        message: chain(&e),
    })?;
    let rev_err = |problem: String| SourceError::Revision {
        dir: dir.clone(),
        rev: rev.to_string(),
        problem,
    };
    if rev.is_empty() || rev.starts_with('-') {
        return Err(rev_err("is not a valid revision".into()));
    }
    let id = repo
        .rev_parse_single(rev)
        .map_err(|e| rev_err(format!("not found: {}", chain(&e))))?;
    let commit = id
        .object()
        .map_err(|e| rev_err(format!("cannot be read: {}", chain(&e))))?
        .peel_to_commit()
        .map_err(|_| rev_err("does not name a commit".into()))?;
    let commit_hex = commit.id.to_hex().to_string();
    let read_err = |message: String| SourceError::Read {
        dir: dir.clone(),
        commit: commit_hex.clone(),
        message,
    };
    let tree = commit.tree().map_err(|e| read_err(chain(&e)))?;
    let mut recorder = gix::traverse::tree::Recorder::default();
    tree.traverse()
        .breadthfirst(&mut recorder)
        .map_err(|e| read_err(format!("cannot walk the tree: {}", chain(&e))))?;

    let mut out = RepoTree::new(commit_hex.clone());
    let mut total: u64 = 0;
    let too_large = |limit: u64, what| SourceError::TreeTooLarge {
        dir: dir.clone(),
        commit: commit_hex.clone(),
        limit,
        what,
    };
    for record in recorder.records {
        let kind = record.mode.kind();
        if kind == EntryKind::Tree {
            continue;
        }
        if out.len() >= MAX_TREE_ENTRIES {
            return Err(too_large(MAX_TREE_ENTRIES as u64, "entries"));
        }
        let path = record
            .filepath
            .to_str()
            .map_err(|_| read_err(format!("path {:?} is not UTF-8", record.filepath)))?
            .to_string();
        let entry = match kind {
            EntryKind::Commit => TreeEntry::Submodule,
            EntryKind::Blob | EntryKind::BlobExecutable | EntryKind::Link => {
                let size = repo
                    .find_header(record.oid)
                    .map_err(|e| read_err(format!("{path}: {}", chain(&e))))?
                    .size();
                if size > limits.max_file_bytes && kind != EntryKind::Link {
                    TreeEntry::TooLarge(size)
                } else {
                    total += size;
                    if total > max_bytes {
                        return Err(too_large(max_bytes, "bytes"));
                    }
                    let blob = repo
                        .find_blob(record.oid)
                        .map_err(|e| read_err(format!("{path}: {}", chain(&e))))?;
                    if kind == EntryKind::Link {
                        let target = blob.data.to_str().map_err(|_| {
                            read_err(format!("{path}: symlink target is not UTF-8"))
                        })?;
                        TreeEntry::Symlink(target.to_string())
                    } else {
                        TreeEntry::File(blob.data.clone())
                    }
                }
            }
            EntryKind::Tree => unreachable!("skipped above"),
        };
        out.insert(path, entry)
            .map_err(|e| read_err(e.to_string()))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::manifest::load_manifest;
    use crate::render::{ClusterInfo, render_app};

    use flotilla_testkit::{git, write};

    const MANIFEST: &str = "apps:\n  - {name: web, path: apps/web, namespace: web}\n  - {name: linked, path: apps/linked}\n";
    const CM: &str =
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {version: one}\n";

    /// A work repository with a manifest, an app, a symlink, a submodule entry and tag `v1`; returns the first commit.
    fn work_repo(root: &Path) -> (PathBuf, String) {
        let work = root.join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q"]);
        write(&work, "flotilla.yaml", MANIFEST);
        write(&work, "apps/web/cm.yaml", CM);
        write(&work, "apps/real/cm.yaml", CM);
        std::os::unix::fs::symlink("real", work.join("apps/linked")).unwrap();
        std::os::unix::fs::symlink("../../flotilla.yaml", work.join("apps/web-link.yaml")).unwrap();
        git(&work, &["add", "-A"]);
        git(
            &work,
            &[
                "update-index",
                "--add",
                "--cacheinfo",
                "160000,1234567890123456789012345678901234567890,vendor/lib",
            ],
        );
        git(&work, &["commit", "-q", "-m", "first"]);
        git(&work, &["tag", "-a", "v1", "-m", "release one"]);
        let commit = git(&work, &["rev-parse", "HEAD"]);
        (work, commit)
    }

    fn file_url(path: &Path) -> String {
        format!("file://{}", path.display())
    }

    #[test]
    fn mirror_fetches_and_reads_commits_incrementally() {
        let tmp = tempfile::tempdir().unwrap();
        let (work, first) = work_repo(tmp.path());
        let mirror_dir = tmp.path().join("mirrors/web");
        let mirror = GitMirror::open_or_init(&mirror_dir, &file_url(&work)).unwrap();
        assert_eq!(mirror.fetch("main", FetchAuth::NONE).unwrap(), first);

        let limits = Limits::default();
        let tree = read_tree(&mirror_dir, &first, &limits).unwrap();
        assert_eq!(tree.commit, first);
        assert_eq!(
            tree.get("apps/web/cm.yaml"),
            Some(&TreeEntry::File(CM.as_bytes().to_vec()))
        );
        assert_eq!(
            tree.get("apps/linked"),
            Some(&TreeEntry::Symlink("real".into()))
        );
        assert_eq!(
            tree.get("apps/web-link.yaml"),
            Some(&TreeEntry::Symlink("../../flotilla.yaml".into()))
        );
        assert_eq!(tree.get("vendor/lib"), Some(&TreeEntry::Submodule));
        assert_eq!(tree.len(), 6);

        // A second commit arrives with a second fetch into the same mirror.
        write(&work, "apps/web/cm.yaml", &CM.replace("one", "two"));
        write(
            &work,
            "apps/web/extra.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra}\n",
        );
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "second"]);
        let second = git(&work, &["rev-parse", "HEAD"]);
        let reopened = GitMirror::open_or_init(&mirror_dir, &file_url(&work)).unwrap();
        assert_eq!(reopened.fetch("main", FetchAuth::NONE).unwrap(), second);
        assert_eq!(
            reopened.fetch("main", FetchAuth::NONE).unwrap(),
            second,
            "a fetch with nothing new is fine"
        );
        let tree2 = read_tree(&mirror_dir, "main", &limits).unwrap();
        assert_eq!(tree2.commit, second);
        assert_eq!(
            tree2.get("apps/web/cm.yaml"),
            Some(&TreeEntry::File(CM.replace("one", "two").into_bytes()))
        );
        assert!(tree2.get("apps/web/extra.yaml").is_some());
        // The old commit is still readable, unchanged.
        assert_eq!(read_tree(&mirror_dir, &first, &limits).unwrap(), tree);

        // End to end: the mirror's tree renders, and the app behind a symlink is refused (invariant 1).
        let manifest = load_manifest(&tree2, &limits).unwrap();
        let cluster = ClusterInfo {
            id: "c-1".into(),
            name: "one".into(),
            labels: Default::default(),
            capabilities: Default::default(),
        };
        let web = render_app(
            &tree2,
            &manifest.apps[0],
            &cluster,
            &crate::render::RenderEnv::new(&limits, &crate::render::Tools::default()),
        )
        .unwrap()
        .unwrap();
        let ids: Vec<_> = web.objects.iter().map(|o| o.id.to_string()).collect();
        assert_eq!(ids, ["v1/ConfigMap web/extra", "v1/ConfigMap web/settings"]);
        let err = render_app(
            &tree2,
            &manifest.apps[1],
            &cluster,
            &crate::render::RenderEnv::new(&limits, &crate::render::Tools::default()),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("\"apps/linked\" is a symlink"), "{err}");
    }

    #[test]
    fn plain_local_paths_work_as_urls() {
        let tmp = tempfile::tempdir().unwrap();
        let (work, first) = work_repo(tmp.path());
        let mirror =
            GitMirror::open_or_init(&tmp.path().join("m"), work.to_str().unwrap()).unwrap();
        assert_eq!(mirror.fetch("main", FetchAuth::NONE).unwrap(), first);
        assert!(mirror.dir().join("HEAD").exists());
    }

    #[test]
    fn missing_and_invalid_branches_are_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let (work, _) = work_repo(tmp.path());
        let mirror = GitMirror::open_or_init(&tmp.path().join("m"), &file_url(&work)).unwrap();
        let err = mirror.fetch("release", FetchAuth::NONE).unwrap_err();
        assert!(matches!(err, SourceError::BranchNotFound { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("branch \"release\" does not exist"),
            "{err}"
        );
        for bad in ["", "a..b", "-x", "a:b", "x*", "a b", "a/"] {
            let err = mirror.fetch(bad, FetchAuth::NONE).unwrap_err();
            assert!(
                matches!(err, SourceError::BranchName { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn fetch_from_a_missing_repository_names_it() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nowhere");
        let mirror = GitMirror::open_or_init(&tmp.path().join("m"), &file_url(&missing)).unwrap();
        let err = mirror
            .fetch("main", FetchAuth::NONE)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("nowhere") && err.contains(&tmp.path().join("m").display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn read_tree_resolves_branches_tags_and_short_ids() {
        let tmp = tempfile::tempdir().unwrap();
        let (work, first) = work_repo(tmp.path());
        write(&work, "later.yaml", "x: 1\n");
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "later"]);
        let head = git(&work, &["rev-parse", "HEAD"]);
        let limits = Limits::default();
        let cases = [
            ("main", &head),
            ("HEAD", &head),
            ("refs/heads/main", &head),
            ("v1", &first),
            (&first[..7], &first),
            (&first[..], &first),
            ("HEAD~1", &first),
        ];
        for (rev, want) in cases {
            assert_eq!(
                &read_tree(&work, rev, &limits).unwrap().commit,
                want,
                "{rev}"
            );
        }
        for bad in ["nope", "", "-h", "0000000"] {
            let err = read_tree(&work, bad, &limits).unwrap_err();
            assert!(matches!(err, SourceError::Revision { .. }), "{bad}: {err}");
            assert!(
                err.to_string().contains(&work.display().to_string()),
                "{err}"
            );
        }
        let blob = format!("{head}:later.yaml");
        let err = read_tree(&work, &blob, &limits).unwrap_err().to_string();
        assert!(err.contains("does not name a commit"), "{err}");
        let err = read_tree(&tmp.path().join("not-a-repo"), "main", &limits)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not-a-repo"), "{err}");
    }

    #[test]
    fn read_tree_never_reads_the_working_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let (work, first) = work_repo(tmp.path());
        let committed = read_tree(&work, "HEAD", &Limits::default()).unwrap();
        write(&work, "apps/web/cm.yaml", "garbage: [");
        write(&work, "apps/web/untracked.yaml", "kind: Secret\n");
        std::fs::remove_file(work.join("flotilla.yaml")).unwrap();
        git(&work, &["add", "apps/web/untracked.yaml"]);
        let again = read_tree(&work, "HEAD", &Limits::default()).unwrap();
        assert_eq!(again, committed);
        assert_eq!(again.commit, first);
        assert!(again.get("apps/web/untracked.yaml").is_none());
        assert_eq!(
            again.get("apps/web/cm.yaml"),
            Some(&TreeEntry::File(CM.as_bytes().to_vec()))
        );
    }

    #[test]
    fn read_tree_bounds_file_and_total_size() {
        let tmp = tempfile::tempdir().unwrap();
        let (work, _) = work_repo(tmp.path());
        write(&work, "big.bin", &"x".repeat(5000));
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-q", "-m", "big"]);
        let small = Limits {
            max_file_bytes: 1000,
            ..Limits::default()
        };
        let tree = read_tree(&work, "main", &small).unwrap();
        assert_eq!(tree.get("big.bin"), Some(&TreeEntry::TooLarge(5000)));
        assert!(matches!(
            tree.get("flotilla.yaml"),
            Some(TreeEntry::File(_))
        ));
        let err = read_tree_within(&work, "main", &Limits::default(), 4000).unwrap_err();
        assert!(
            matches!(err, SourceError::TreeTooLarge { what: "bytes", .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains(&work.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn open_or_init_refuses_a_non_bare_repository() {
        let tmp = tempfile::tempdir().unwrap();
        let (work, _) = work_repo(tmp.path());
        let err = GitMirror::open_or_init(&work, "file:///x")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not a bare repository") && err.contains(&work.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn credentials_never_appear_in_errors() {
        let tmp = tempfile::tempdir().unwrap();
        for url in [
            "https://user:s3cret@127.0.0.1:1/repo.git",
            "http://user:s3cret@127.0.0.1:1/repo.git",
        ] {
            let mirror = GitMirror::open_or_init(&tmp.path().join("m"), url).unwrap();
            let auth = FetchAuth {
                token: Some("t0ken-value"),
                ca_pem: None,
            };
            let err = mirror.fetch("main", auth).unwrap_err();
            let msg = format!("{err} {err:?}");
            assert!(matches!(err, SourceError::Fetch { .. }), "{msg}");
            assert!(
                !msg.contains("s3cret") && !msg.contains("t0ken-value"),
                "{msg}"
            );
            assert!(msg.contains("***@127.0.0.1:1"), "{msg}");
        }
    }

    #[test]
    fn a_pack_over_the_cap_stops_the_fetch_and_names_limit_and_size() {
        let tmp = tempfile::tempdir().unwrap();
        let (work, first) = work_repo(tmp.path());
        let mirror = GitMirror::open_or_init(&tmp.path().join("m"), &file_url(&work))
            .unwrap()
            .with_max_pack_bytes(100);
        let err = mirror.fetch("main", FetchAuth::NONE).unwrap_err();
        let SourceError::PackTooLarge {
            limit, received, ..
        } = err
        else {
            panic!("not a pack-size error: {err}");
        };
        assert_eq!(limit, 100);
        assert!(received > 100, "{received}");
        let msg = err.to_string();
        assert!(
            msg.contains("maxPackBytes (100 bytes)")
                && msg.contains(&format!("{received} bytes were received"))
                && msg.contains(&work.display().to_string()),
            "{msg}"
        );
        // Nothing half-fetched stays behind to confuse the next fetch, which a larger cap lets through.
        let mirror = mirror.with_max_pack_bytes(DEFAULT_MAX_PACK_BYTES);
        assert_eq!(mirror.fetch("main", FetchAuth::NONE).unwrap(), first);
    }

    #[test]
    fn a_second_fetch_of_a_mirror_is_refused_while_one_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let (work, first) = work_repo(tmp.path());
        let dir = tmp.path().join("m");
        let mirror = GitMirror::open_or_init(&dir, &file_url(&work)).unwrap();
        // Another process (or another GitMirror on the same directory) holding the lock.
        let held = std::fs::File::create(dir.join(FETCH_LOCK_FILE)).unwrap();
        held.lock().unwrap();
        let err = mirror.fetch("main", FetchAuth::NONE).unwrap_err();
        assert!(matches!(err, SourceError::Busy { .. }), "{err}");
        assert!(err.to_string().contains("still running"), "{err}");
        drop(held);
        assert_eq!(mirror.fetch("main", FetchAuth::NONE).unwrap(), first);
    }

    #[test]
    fn redacting_urls() {
        let cases = [
            ("https://host/repo.git", "https://host/repo.git"),
            ("https://user:pw@host/repo.git", "https://***@host/repo.git"),
            ("https://tok@host", "https://***@host"),
            ("https://host/a@b", "https://host/a@b"),
            ("ssh://git@host:22/repo", "ssh://***@host:22/repo"),
            ("/srv/git/repo", "/srv/git/repo"),
            ("https://u:p@host?x=a@b", "https://***@host?x=a@b"),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }
}
