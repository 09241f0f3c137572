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
        Command::Run {
            data_dir,
            config,
            listen,
        } => {
            let mut config = HubConfig::load(&config)?;
            if let Some(listen) = listen {
                config.listen = listen;
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
