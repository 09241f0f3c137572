//! `kubesim`: runs the Kubernetes API simulator until SIGTERM or SIGINT.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use flotilla_kubesim::KubeSim;
use tokio::signal::unix::{SignalKind, signal};

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "kubesim",
    about = "A Kubernetes API simulator that kubectl accepts"
)]
struct Args {
    /// Directory to write the kubeconfig into.
    #[arg(long)]
    dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let sim = KubeSim::start_on(&args.dir, &args.listen).context("starting kubesim")?;
    println!("{}", sim.kubeconfig_path().display());
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
    sim.shutdown().await;
    Ok(())
}
