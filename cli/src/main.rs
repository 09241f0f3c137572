//! `flotilla`: the operator CLI.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use flotilla_cli::output::{
    OutputFormat, clusters_table, describe_cluster, print_json, status_table,
};
use flotilla_cli::{client, demo, render};
use flotilla_common::labels::{parse_label_changes, parse_labels};

#[derive(Parser)]
#[command(name = "flotilla", version, about = "Operate a Flotilla fleet")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct HubArgs {
    /// Hub URL.
    #[arg(long, env = "FLOTILLA_HUB", default_value = "https://127.0.0.1:7443")]
    hub: String,
    /// Directory with ca.pem, admin.pem and admin-key.pem (the hub's `admin/` bundle).
    #[arg(long, env = "FLOTILLA_ADMIN_DIR")]
    admin_dir: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Bootstrap tokens for registering clusters.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Show, label and delete registered clusters.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// List registered clusters (the same as `cluster get`).
    Clusters {
        #[command(flatten)]
        hub: HubArgs,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Sources, and per cluster and app: desired commit, applied version, state, last contact, error.
    Status {
        #[command(flatten)]
        hub: HubArgs,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// The hub's events: commits in force, failed renders, registrations, labels, deletions, apps that
    /// fail, drift or turn unhealthy. `--follow` keeps printing new ones.
    Events {
        #[command(flatten)]
        hub: HubArgs,
        /// Keep printing events as they happen.
        #[arg(long, short)]
        follow: bool,
        /// Only this app's events.
        #[arg(long, default_value = "")]
        app: String,
        /// Only this cluster's events (name).
        #[arg(long, default_value = "")]
        cluster: String,
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        since_seq: u64,
        /// Most stored events shown before following.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Output format (`json`: one JSON object per line).
        #[arg(long, short, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Preview a revision of an app before anything is applied: its rollout stages in order and, per
    /// cluster, the objects it adds, changes and removes against what the cluster gets now.
    Plan {
        #[command(flatten)]
        hub: HubArgs,
        /// App name.
        #[arg(long)]
        app: String,
        /// Commit (full or abbreviated), branch or tag of the app's source (default: its newest fetched
        /// commit); a branch or tag the hub has not fetched is fetched on demand.
        #[arg(long, default_value = "")]
        rev: String,
        /// Also print the unified object diff for this cluster (name or id).
        #[arg(long, default_value = "")]
        diff: String,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Print the objects a cluster with these labels would receive, with no hub.
    Render {
        /// Repository path; only its object database is read.
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        /// Branch, tag or commit.
        #[arg(long, default_value = "HEAD")]
        rev: String,
        /// App to render, from any `flotilla.yaml` of the commit (all apps when omitted).
        #[arg(long)]
        app: Option<String>,
        /// Cluster labels, `k=v,k2=v2`.
        #[arg(long, default_value = "")]
        labels: String,
        /// Cluster name, as templates see it.
        #[arg(long, default_value = "local")]
        cluster_name: String,
        /// Kubernetes version templates see as `cluster.kubeVersion`, e.g. `v1.32.4` (default: none).
        #[arg(long)]
        kube_version: Option<String>,
        /// API versions templates see in `cluster.apiVersions`: `v1`, `apps/v1`,
        /// `apps/v1/Deployment`; repeatable or comma-separated (default: none).
        #[arg(long, value_delimiter = ',')]
        api_versions: Vec<String>,
        /// `yaml` (multi-document) or `json` (a list).
        #[arg(long, short, default_value = "yaml", value_parser = ["yaml", "json"])]
        output: String,
    },
    /// Run a hub, three agents and an example repository on this machine.
    Demo {
        /// Exit 0 once every cluster converged on the latest commit, instead of waiting for Ctrl-C.
        #[arg(long)]
        once: bool,
        /// Keep everything in this directory (default: a temporary directory, removed at exit).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// How long to wait for each convergence.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// What the agents apply to: a simulated Kubernetes cluster each, or a directory each.
        #[arg(long, value_enum, default_value = "kube")]
        clusters: demo::ClusterKind,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a single-use bootstrap token; the secret is printed once.
    Create {
        #[command(flatten)]
        hub: HubArgs,
        /// How long the token stays valid.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Labels the registering cluster gets, `k=v,k2=v2`.
        #[arg(long, default_value = "")]
        labels: String,
        /// The name the registering cluster gets; an agent asking for another name is refused.
        #[arg(long)]
        name: Option<String>,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "table")]
        output: OutputFormat,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// One cluster as a table row, or every cluster when no name is given.
    Get {
        #[command(flatten)]
        hub: HubArgs,
        /// Cluster name or id.
        name: Option<String>,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Everything the hub knows about one cluster: labels, certificate, contact, versions, apps.
    Describe {
        #[command(flatten)]
        hub: HubArgs,
        /// Cluster name or id.
        name: String,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Set (`k=v`) and remove (`k-`) labels; the hub re-targets the cluster at once.
    Label {
        #[command(flatten)]
        hub: HubArgs,
        /// Cluster name or id.
        name: String,
        /// `k=v` to set, `k-` to remove.
        #[arg(required = true)]
        changes: Vec<String>,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Delete a cluster: its certificate is refused and its streams end; its name can be
    /// registered again only with a new token.
    Delete {
        #[command(flatten)]
        hub: HubArgs,
        /// Cluster name or id.
        name: String,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "table")]
        output: OutputFormat,
    },
}

async fn cluster_command(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Get { hub, name, output } => {
            let mut admin = client::connect_admin(&hub.hub, &hub.admin_dir).await?;
            let clusters = match name {
                Some(name) => vec![client::cluster(&mut admin, &name).await?.cluster],
                None => client::clusters(&mut admin).await?,
            };
            match output {
                OutputFormat::Json => print_json(&clusters),
                OutputFormat::Table => println!("{}", clusters_table(&clusters)),
            }
        }
        ClusterCommand::Describe { hub, name, output } => {
            let mut admin = client::connect_admin(&hub.hub, &hub.admin_dir).await?;
            let cluster = client::cluster(&mut admin, &name).await?;
            match output {
                OutputFormat::Json => print_json(&cluster),
                OutputFormat::Table => print!("{}", describe_cluster(&cluster)),
            }
        }
        ClusterCommand::Label {
            hub,
            name,
            changes,
            output,
        } => {
            let (set, remove) = parse_label_changes(&changes)?;
            let mut admin = client::connect_admin(&hub.hub, &hub.admin_dir).await?;
            let cluster = client::label_cluster(&mut admin, &name, &set, &remove).await?;
            match output {
                OutputFormat::Json => print_json(&cluster),
                OutputFormat::Table => println!("cluster/{} labeled", cluster.name),
            }
        }
        ClusterCommand::Delete { hub, name, output } => {
            let mut admin = client::connect_admin(&hub.hub, &hub.admin_dir).await?;
            let deleted = client::delete_cluster(&mut admin, &name).await?;
            match output {
                OutputFormat::Json => print_json(&deleted),
                OutputFormat::Table => {
                    println!("cluster/{} ({}) deleted", deleted.name, deleted.id)
                }
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Token {
            command:
                TokenCommand::Create {
                    hub,
                    ttl,
                    labels,
                    name,
                    output,
                },
        } => {
            let labels = parse_labels(&labels)?;
            let mut admin = client::connect_admin(&hub.hub, &hub.admin_dir).await?;
            let token = client::create_token(&mut admin, ttl, &labels, name.as_deref()).await?;
            match output {
                OutputFormat::Json => print_json(&token),
                OutputFormat::Table => println!("{}", token.token),
            }
        }
        Command::Cluster { command } => cluster_command(command).await?,
        Command::Clusters { hub, output } => {
            let mut admin = client::connect_admin(&hub.hub, &hub.admin_dir).await?;
            let clusters = client::clusters(&mut admin).await?;
            match output {
                OutputFormat::Json => print_json(&clusters),
                OutputFormat::Table => println!("{}", clusters_table(&clusters)),
            }
        }
        Command::Events {
            hub,
            follow,
            app,
            cluster,
            since_seq,
            limit,
            output,
        } => {
            let mut admin = client::connect_admin(&hub.hub, &hub.admin_dir).await?;
            let query = client::EventsQuery {
                after_seq: since_seq,
                follow,
                app,
                cluster,
                limit,
            };
            client::events(&mut admin, query, |e| match output {
                OutputFormat::Json => {
                    println!("{}", serde_json::to_string(&e).expect("events serialize"))
                }
                OutputFormat::Table => println!("{}", flotilla_cli::output::event_line(&e)),
            })
            .await?;
        }
        Command::Status { hub, output } => {
            let mut admin = client::connect_admin(&hub.hub, &hub.admin_dir).await?;
            let status = client::status(&mut admin).await?;
            match output {
                OutputFormat::Json => print_json(&status),
                OutputFormat::Table => println!("{}", status_table(&status)),
            }
        }
        Command::Plan {
            hub,
            app,
            rev,
            diff,
            output,
        } => {
            let mut admin = client::connect_admin(&hub.hub, &hub.admin_dir).await?;
            let plan = client::plan(&mut admin, &app, &rev, &diff).await?;
            match output {
                OutputFormat::Json => print_json(&plan),
                OutputFormat::Table => print!("{}", flotilla_cli::plan::plan_text(&plan)),
            }
        }
        Command::Render {
            repo,
            rev,
            app,
            labels,
            cluster_name,
            kube_version,
            api_versions,
            output,
        } => {
            let request = render::RenderRequest {
                repo: &repo,
                rev: &rev,
                app: app.as_deref(),
                labels: parse_labels(&labels)?,
                cluster_name: &cluster_name,
                capabilities: render::capabilities(kube_version, api_versions)
                    .context("invalid --kube-version or --api-versions")?,
            };
            let objects = render::render(&request).context("render failed")?;
            if output == "json" {
                println!("{}", render::to_json(&objects));
            } else {
                print!("{}", render::to_yaml(&objects)?);
            }
        }
        Command::Demo {
            once,
            dir,
            timeout,
            clusters,
        } => {
            demo::run(demo::DemoOptions {
                once,
                dir,
                timeout,
                clusters,
            })
            .await?;
        }
    }
    Ok(())
}
