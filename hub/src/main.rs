//! `flotilla-hub`: initialize a data directory, or run the hub.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use flotilla_hub::config::HubConfig;
use flotilla_hub::datadir::DataDir;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "flotilla-hub",
    version,
    about = "Flotilla hub: renders Git into signed per-cluster state"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[derive(Subcommand)]
enum Command {
    /// Create the CA, the ClusterState signing key and the admin client bundle.
    Init {
        /// Data directory to create.
        #[arg(long)]
        data_dir: PathBuf,
        /// Succeed without changing anything when the directory is already initialized
        /// (for an init container that runs at every start).
        #[arg(long)]
        if_missing: bool,
    },
    /// Make the data directory of another replica of an existing hub: the hub CA and signing key
    /// copied from FROM, the replica id, and no Raft cluster of its own. Run it with
    /// `replication: {listen, advertise}` in hub.yaml, then `flotilla hub add-replica ADVERTISE`
    /// (or list the existing replicas under `replication.join`).
    Join {
        /// Data directory to create.
        #[arg(long)]
        data_dir: PathBuf,
        /// Another replica's data directory, or a directory holding its `ca.pem`, `ca-key.pem`,
        /// `signing.key` and `signing.pub` (a mounted Secret).
        #[arg(long)]
        from: PathBuf,
        /// This replica's id: unique in the hub, never one a removed replica had.
        #[arg(long, conflicts_with = "replica_id_from_hostname")]
        replica_id: Option<u64>,
        /// Take the id from the host name's trailing ordinal plus one (`hub-2` is replica 3), as
        /// a StatefulSet's pods are named.
        #[arg(long)]
        replica_id_from_hostname: bool,
        /// Succeed without changing anything when the directory was already made for this id.
        #[arg(long)]
        if_missing: bool,
        /// Replica 1 starts the hub (as `init` would, with FROM's keys) instead of waiting to be
        /// added; any other id joins. For a StatefulSet whose pods all run the same command. A
        /// replica 1 with no Raft state whose `replication.join` peers already form a hub joins
        /// that hub instead of starting a second one.
        #[arg(long)]
        first_starts_hub: bool,
    },
    /// Serve gRPC over mTLS and keep clusters on the state declared in Git.
    Run {
        /// Data directory made by `init`.
        #[arg(long)]
        data_dir: PathBuf,
        /// hub.yaml.
        #[arg(long)]
        config: PathBuf,
        /// Overrides `listen` from the config (use port 0 for any free port).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Overrides `replication.advertise` (`HOST:PORT` the other replicas dial), so replicas
        /// sharing one hub.yaml each advertise their own name.
        #[arg(long)]
        advertise: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    flotilla_hub::logging::init(&cli.log_format);
    match cli.command {
        Command::Init {
            data_dir,
            if_missing,
        } => {
            let dir = DataDir::new(&data_dir);
            if if_missing && dir.is_initialized() {
                println!(
                    "{} is already initialized; nothing changed",
                    data_dir.display()
                );
                return Ok(());
            }
            dir.init().context("init failed")?;
            println!("initialized {}", data_dir.display());
            println!("admin bundle: {}", dir.admin_dir().display());
            Ok(())
        }
        Command::Join {
            data_dir,
            from,
            replica_id,
            replica_id_from_hostname,
            if_missing,
            first_starts_hub,
        } => {
            let id = match (replica_id, replica_id_from_hostname) {
                (Some(id), _) => id,
                (None, true) => replica_id_from_hostname_now()?,
                (None, false) => {
                    anyhow::bail!(
                        "give the new replica's id: --replica-id N or --replica-id-from-hostname"
                    )
                }
            };
            anyhow::ensure!(
                id >= 1,
                "--replica-id must be at least 1; replica ids start at 1"
            );
            let dir = DataDir::new(&data_dir);
            let existed = dir.is_initialized();
            dir.join(&from, id, if_missing, first_starts_hub)
                .with_context(|| format!("join failed for {}", data_dir.display()))?;
            if existed {
                println!(
                    "{} is already replica {id}'s data directory; nothing changed",
                    data_dir.display()
                );
            } else if first_starts_hub && id == 1 {
                println!(
                    "made {} for replica 1, which starts the hub with these keys",
                    data_dir.display()
                );
            } else {
                println!(
                    "made {} for replica {id}; start it with `replication:` set, then add it with `flotilla hub add-replica ADVERTISE`",
                    data_dir.display()
                );
            }
            Ok(())
        }
        Command::Run {
            data_dir,
            config,
            listen,
            advertise,
        } => {
            let mut config = HubConfig::load(&config)?;
            if let Some(listen) = listen {
                config.listen = listen;
            }
            if let Some(advertise) = advertise {
                config.set_advertise(&advertise)?;
            }
            let shutdown = CancellationToken::new();
            let signal = shutdown.clone();
            tokio::spawn(async move {
                flotilla_hub::logging::shutdown_signal().await;
                signal.cancel();
            });
            flotilla_hub::server::run(DataDir::new(data_dir), config, shutdown, |_| {}).await?;
            Ok(())
        }
    }
}

/// Replica id from the host name's trailing `-N` (a StatefulSet pod's ordinal), plus one.
fn replica_id_from_hostname_now() -> anyhow::Result<u64> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::env::var("HOSTNAME"))
        .context("reading the host name")?;
    let name = name.trim();
    name.rsplit_once('-')
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .map(|ordinal| ordinal + 1)
        .with_context(|| {
            format!(
                "host name {name:?} does not end in -N (a StatefulSet ordinal); give --replica-id"
            )
        })
}
