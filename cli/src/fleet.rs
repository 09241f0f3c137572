//! Runs a hub and agents as local processes: the engine of `flotilla demo`
//! and of the end-to-end tests, so both exercise the real binaries the same way.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// Starting or stopping a local process failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A binary is missing.
    #[error(
        "{name} not found at {path}: build the workspace binaries first (cargo build --workspace --bins) or set FLOTILLA_BIN_DIR"
    )]
    MissingBinary {
        /// Binary name.
        name: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// File or process IO.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Error.
        source: std::io::Error,
    },
    /// A command exited with failure.
    #[error("{command} failed: {output}")]
    Command {
        /// The command.
        command: String,
        /// Its stderr.
        output: String,
    },
    /// A process did not come up in time.
    #[error("{what} did not start within {secs}s; see {log}")]
    Timeout {
        /// What.
        what: String,
        /// Deadline.
        secs: u64,
        /// Log file.
        log: String,
    },
    /// A process exited while we waited for it.
    #[error("{what} exited early ({status}); see {log}")]
    Exited {
        /// What.
        what: String,
        /// Exit status.
        status: String,
        /// Log file.
        log: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FleetError {
    let what = what.into();
    move |source| FleetError::Io { what, source }
}

/// Paths of the three binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// flotilla-hub.
    pub hub: PathBuf,
    /// flotilla-agent.
    pub agent: PathBuf,
    /// flotilla.
    pub cli: PathBuf,
}

impl Binaries {
    /// Finds the binaries in `$FLOTILLA_BIN_DIR`, else next to the running
    /// executable (or one level up, for test executables in `target/*/deps`).
    pub fn locate() -> Result<Self, FleetError> {
        let dir = match std::env::var_os("FLOTILLA_BIN_DIR") {
            Some(d) => PathBuf::from(d),
            None => {
                let exe = std::env::current_exe().map_err(io("locating the running executable"))?;
                let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
                if dir.ends_with("deps") {
                    dir.parent().map(Path::to_path_buf).unwrap_or(dir)
                } else {
                    dir
                }
            }
        };
        let find = |name: &'static str| {
            let path = dir.join(name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(FleetError::MissingBinary { name, path })
            }
        };
        Ok(Binaries {
            hub: find("flotilla-hub")?,
            agent: find("flotilla-agent")?,
            cli: find("flotilla")?,
        })
    }
}

fn log_file(path: &Path) -> Result<(Stdio, Stdio), FleetError> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io(format!("opening {}", path.display())))?;
    let g = f.try_clone().map_err(io("cloning log file handle"))?;
    Ok((Stdio::from(f), Stdio::from(g)))
}

/// Sends SIGTERM and waits up to `grace`, then SIGKILL.
async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

/// A child process that is stopped gracefully or killed, and killed if dropped.
#[derive(Default)]
struct Process(Option<Child>);

impl Process {
    fn set(&mut self, child: Child) {
        self.0 = Some(child);
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    fn pid(&self) -> Option<u32> {
        self.0.as_ref().and_then(Child::id)
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.0.take() {
            terminate(&mut child, Duration::from_secs(10)).await;
        }
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill().await;
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or `deadline` passes.
pub async fn wait_for<T>(deadline: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if tokio::time::Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `flotilla-hub` process with its own data directory.
pub struct LocalHub {
    bins: Binaries,
    /// Data directory.
    pub data_dir: PathBuf,
    /// hub.yaml.
    pub config_path: PathBuf,
    /// Combined stdout/stderr of every run.
    pub log_path: PathBuf,
    /// Address of the current (or last) run.
    pub addr: Option<SocketAddr>,
    /// Environment variables set for the hub process (e.g. `FLOTILLA_HELM`).
    pub env: Vec<(String, String)>,
    child: Process,
}

impl LocalHub {
    /// Runs `flotilla-hub init` in `dir/hub` and writes `config` as its hub.yaml.
    pub async fn init(bins: &Binaries, dir: &Path, config: &str) -> Result<Self, FleetError> {
        Self::made_by(bins, dir, "hub", &["init"], config).await
    }

    /// Runs `flotilla-hub join` in `dir/<name>` for replica `id` with `from`'s keys, and writes
    /// `config` as `dir/<name>.yaml`: another replica of `from`'s hub.
    pub async fn join(
        bins: &Binaries,
        dir: &Path,
        name: &str,
        from: &LocalHub,
        id: u64,
        config: &str,
    ) -> Result<Self, FleetError> {
        let from = from.data_dir.display().to_string();
        let id = id.to_string();
        let args = ["join", "--from", from.as_str(), "--replica-id", id.as_str()];
        Self::made_by(bins, dir, name, &args, config).await
    }

    async fn made_by(
        bins: &Binaries,
        dir: &Path,
        name: &str,
        args: &[&str],
        config: &str,
    ) -> Result<Self, FleetError> {
        let data_dir = dir.join(name);
        let out = Command::new(&bins.hub)
            .args(args)
            .arg("--data-dir")
            .arg(&data_dir)
            .output()
            .await
            .map_err(io(format!("running flotilla-hub {}", args[0])))?;
        if !out.status.success() {
            return Err(FleetError::Command {
                command: format!("flotilla-hub {}", args.join(" ")),
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let config_path = dir.join(format!("{name}.yaml"));
        std::fs::write(&config_path, config).map_err(io("writing hub.yaml"))?;
        Ok(LocalHub {
            bins: bins.clone(),
            log_path: dir.join(format!("{name}.log")),
            data_dir,
            config_path,
            addr: None,
            env: Vec::new(),
            child: Process::default(),
        })
    }

    /// Starts the hub and waits until it listens; on a restart it listens on the same address as
    /// before.
    pub async fn start(&mut self) -> Result<SocketAddr, FleetError> {
        self.launch()?;
        self.wait_listening(Duration::from_secs(30)).await
    }

    /// Starts the hub process without waiting (a replica waiting to be added listens only once it
    /// was); [`LocalHub::wait_listening`] waits.
    pub fn launch(&mut self) -> Result<(), FleetError> {
        let addr_file = self.data_dir.join("hub.addr");
        let _ = std::fs::remove_file(&addr_file);
        let listen = self
            .addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "127.0.0.1:0".into());
        let (out, err) = log_file(&self.log_path)?;
        let child = Command::new(&self.bins.hub)
            .arg("run")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--config")
            .arg(&self.config_path)
            .arg("--listen")
            .arg(&listen)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(io("starting flotilla-hub"))?;
        self.child.set(child);
        Ok(())
    }

    /// Waits up to `deadline` until the launched hub wrote its listen address.
    pub async fn wait_listening(&mut self, deadline: Duration) -> Result<SocketAddr, FleetError> {
        let addr_file = self.data_dir.join("hub.addr");
        let end = tokio::time::Instant::now() + deadline;
        let addr = loop {
            if let Some(addr) = std::fs::read_to_string(&addr_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break addr;
            }
            if let Some(status) = self.child.exited() {
                return Err(FleetError::Exited {
                    what: "flotilla-hub".into(),
                    status: status.to_string(),
                    log: self.log_path.display().to_string(),
                });
            }
            if tokio::time::Instant::now() >= end {
                return Err(FleetError::Timeout {
                    what: "flotilla-hub".into(),
                    secs: deadline.as_secs(),
                    log: self.log_path.display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        self.addr = Some(addr);
        Ok(addr)
    }

    /// Whether the hub process has ended, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.exited()
    }

    /// `https://127.0.0.1:PORT` of the running hub.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr.expect("hub started"))
    }

    /// The admin client bundle.
    pub fn admin_dir(&self) -> PathBuf {
        self.data_dir.join("admin")
    }

    /// The CA certificate agents pin.
    pub fn ca_path(&self) -> PathBuf {
        self.admin_dir().join("ca.pem")
    }

    /// Stops gracefully (SIGTERM, then SIGKILL after 10 s).
    pub async fn stop(&mut self) {
        self.child.stop().await;
    }

    /// Kills without warning (SIGKILL).
    pub async fn kill(&mut self) {
        self.child.kill().await;
    }
}

/// A `flotilla-agent` process with a directory target, or a Kubernetes target
/// after [`LocalAgent::use_kubernetes`].
pub struct LocalAgent {
    bins: Binaries,
    /// Cluster name it registers as.
    pub name: String,
    /// Agent data directory.
    pub data_dir: PathBuf,
    /// Directory the objects are written to (directory target).
    pub target_dir: PathBuf,
    /// Kubeconfig of the cluster to apply to, instead of the directory.
    pub kubeconfig: Option<PathBuf>,
    /// Bootstrap token file.
    pub token_file: PathBuf,
    /// Combined stdout/stderr of every run.
    pub log_path: PathBuf,
    /// More `flotilla-agent run` flags, e.g. `--kube-version v1.32.4`, used from the next start.
    pub extra_args: Vec<String>,
    /// Hub URLs, each passed as `--hub`, in order.
    hub_urls: Vec<String>,
    ca_path: PathBuf,
    child: Process,
}

impl LocalAgent {
    /// Prepares `dir/<name>` with the token file; [`LocalAgent::start`] starts it.
    pub fn new(
        bins: &Binaries,
        dir: &Path,
        name: &str,
        token: &str,
        hub: &LocalHub,
    ) -> Result<Self, FleetError> {
        let root = dir.join(name);
        std::fs::create_dir_all(&root).map_err(io(format!("creating {}", root.display())))?;
        let token_file = root.join("token");
        flotilla_hub::datadir::write_private(&token_file, token.as_bytes()).map_err(|e| {
            FleetError::Io {
                what: "writing token file".into(),
                source: std::io::Error::other(e.to_string()),
            }
        })?;
        Ok(LocalAgent {
            bins: bins.clone(),
            name: name.into(),
            data_dir: root.join("data"),
            target_dir: root.join("cluster"),
            kubeconfig: None,
            token_file,
            log_path: root.join("agent.log"),
            extra_args: Vec::new(),
            hub_urls: vec![hub.url()],
            ca_path: hub.ca_path(),
            child: Process::default(),
        })
    }

    /// Applies to the Kubernetes cluster of `kubeconfig` instead of a directory.
    pub fn use_kubernetes(&mut self, kubeconfig: PathBuf) {
        self.kubeconfig = Some(kubeconfig);
    }

    fn target_arg(&self) -> String {
        match &self.kubeconfig {
            Some(k) => format!("kube:{}", k.display()),
            None => format!("dir:{}", self.target_dir.display()),
        }
    }

    /// Points the agent at another hub URL (e.g. through a proxy).
    pub fn set_hub_url(&mut self, url: String) {
        self.hub_urls = vec![url];
    }

    /// Points the agent at several hub URLs, tried in this order (a replicated hub, or the
    /// same hub at several addresses).
    pub fn set_hub_urls(&mut self, urls: Vec<String>) {
        self.hub_urls = urls;
    }

    /// Starts the agent process.
    pub fn start(&mut self) -> Result<(), FleetError> {
        let (out, err) = log_file(&self.log_path)?;
        let hubs = self.hub_urls.iter().flat_map(|url| ["--hub", url.as_str()]);
        let child = Command::new(&self.bins.agent)
            .arg("run")
            .args(hubs)
            .arg("--ca")
            .arg(&self.ca_path)
            .arg("--token-file")
            .arg(&self.token_file)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--target")
            .arg(self.target_arg())
            .arg("--name")
            .arg(&self.name)
            .args(&self.extra_args)
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(io("starting flotilla-agent"))?;
        self.child.set(child);
        Ok(())
    }

    /// Exit status if the process has ended.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.exited()
    }

    /// Process id while running (for resource measurements).
    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }

    /// Stops gracefully.
    pub async fn stop(&mut self) {
        self.child.stop().await;
    }

    /// Kills without warning.
    pub async fn kill(&mut self) {
        self.child.kill().await;
    }
}
