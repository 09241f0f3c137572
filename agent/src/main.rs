//! `flotilla-agent`: parses and validates the command line, sets up logging, and runs the
//! agent until SIGTERM or SIGINT.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use flotilla_agent::config::{
    AgentConfig, Cli, Command, LogFormat, name_from_hostname, read_hostname,
};
use flotilla_agent::error::error_chain;
use tokio_util::sync::CancellationToken;
use tracing::info;
use tracing_subscriber::EnvFilter;

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => info!("received SIGTERM"),
        _ = int.recv() => info!("received SIGINT"),
    }
    Ok(())
}

async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let agent = flotilla_agent::run(config, shutdown.clone());
    tokio::pin!(agent);
    let outcome = tokio::select! {
        result = &mut agent => result,
        signal = shutdown_signal() => {
            signal?;
            shutdown.cancel();
            agent.await
        }
    };
    // One line with every cause, each said once.
    outcome.map_err(|e| anyhow::anyhow!(error_chain(&e)))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Command::Run(args) = cli.command;
    let log_format = args.log_format;
    let default_name = name_from_hostname(&read_hostname().unwrap_or_default());
    let config = match AgentConfig::from_args(args, &default_name) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("flotilla-agent: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("flotilla-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
