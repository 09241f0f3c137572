//! `flotilla`: the operator CLI.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use flotilla_cli::output::{
    OutputFormat, clusters_table, describe_cluster, print_json, status_table,
};
use flotilla_cli::{client, demo, render, rollout};
use flotilla_common::labels::{parse_label_changes, parse_labels};

#[derive(Parser)]
#[command(name = "flotilla", version, about = "Operate a Flotilla fleet")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct HubArgs {
    /// Hub URL; several comma-separated (a replicated hub) are tried in order, and the first
    /// that answers is used.
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
    /// The hub's replicas: status, and adding or removing one.
    Hub {
        #[command(subcommand)]
        command: HubCommand,
    },
    /// Staged rollouts: list, status, watch, and approve, pause, resume or roll back.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
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
enum HubCommand {
    /// Each replica: id, peer address, role, term, last log index, applied index, lag and last
    /// contact, as the replica that answers sees them.
    Status {
        #[command(flatten)]
        hub: HubArgs,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Add the replica whose peer listener is at ADDRESS (made by `flotilla-hub join` and
    /// running): a learner until it caught up with the leader's log, then a voter.
    AddReplica {
        #[command(flatten)]
        hub: HubArgs,
        /// HOST:PORT, the new replica's `replication.advertise`.
        address: String,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Remove replica ID from the hub. Its id is never used again.
    RemoveReplica {
        #[command(flatten)]
        hub: HubArgs,
        /// Replica id.
        id: u64,
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

#[derive(Subcommand)]
enum RolloutCommand {
    /// Active and recently ended rollouts, newest first.
    List {
        #[command(flatten)]
        hub: HubArgs,
        /// Only this app's rollouts.
        #[arg(long, default_value = "")]
        app: String,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// The newest rollout of an app: release, phase, failure budget, each stage, and the clusters
    /// updating, failed or deferred.
    Status {
        #[command(flatten)]
        hub: HubArgs,
        /// App name.
        name: String,
        /// List every cluster, waiting and healthy ones too.
        #[arg(long)]
        clusters: bool,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "table")]
        output: OutputFormat,
    },
    /// Follow the newest rollout of an app until it ends: a bar per stage in a terminal, a line
    /// per change otherwise.
    #[command(after_help = rollout::EXIT_CODES)]
    Watch {
        #[command(flatten)]
        hub: HubArgs,
        /// App name.
        name: String,
        /// Time between polls.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// How long the hub may stay unreachable (a restart) before the watch gives up.
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        retry_for: Duration,
        /// One line per change even in a terminal.
        #[arg(long)]
        plain: bool,
    },
    /// Let the stage awaiting approval start.
    Approve(RolloutActionArgs),
    /// Hold the rollout: no cluster is given the release until `resume`.
    Pause(RolloutActionArgs),
    /// Go on after a pause (an operator's or the failure budget's).
    Resume(RolloutActionArgs),
    /// Give every cluster the rollout reached the previous release back.
    Rollback(RolloutActionArgs),
}

#[derive(clap::Args)]
struct RolloutActionArgs {
    #[command(flatten)]
    hub: HubArgs,
    /// App name.
    name: String,
    /// Output format (`json`: the rollout afterwards).
    #[arg(long, short, value_enum, default_value = "table")]
    output: OutputFormat,
}

/// Runs a `rollout` subcommand; `watch` exits with the code of how the rollout ended.
async fn rollout_command(command: RolloutCommand) -> anyhow::Result<()> {
    use rollout::Action;
    let (action, args) = match command {
        RolloutCommand::List { hub, app, output } => {
            let mut admin = client::connect_admin(&hub.hub, &hub.admin_dir).await?;
            let rollouts = rollout::list(&mut admin, &app).await?;
            match output {
                OutputFormat::Json => print_json(&rollouts),
                OutputFormat::Table => println!(
                    "{}",
                    rollout::format::list_table(&rollouts, rollout::unix_now())
                ),
            }
            return Ok(());
        }
        RolloutCommand::Status {
            hub,
            name,
            clusters,
            output,
        } => {
            let mut admin = client::connect_admin(&hub.hub, &hub.admin_dir).await?;
            let r = rollout::get(&mut admin, &name).await?;
            match output {
                OutputFormat::Json => print_json(&r),
                OutputFormat::Table => print!(
                    "{}",
                    rollout::format::status_text(&r, clusters, rollout::unix_now())
                ),
            }
            return Ok(());
        }
        RolloutCommand::Watch {
            hub,
            name,
            interval,
            retry_for,
            plain,
        } => {
            let outcome = rollout::watch::run(&rollout::watch::WatchOptions {
                hub: hub.hub,
                admin_dir: hub.admin_dir,
                app: name,
                interval,
                retry_for,
                plain,
            })
            .await?;
            std::io::Write::flush(&mut std::io::stdout())?;
            std::process::exit(outcome.exit_code());
        }
        RolloutCommand::Approve(args) => (Action::Approve, args),
        RolloutCommand::Pause(args) => (Action::Pause, args),
        RolloutCommand::Resume(args) => (Action::Resume, args),
        RolloutCommand::Rollback(args) => (Action::Rollback, args),
    };
    // A follower refuses an action as Unavailable before taking it: the next hub is asked.
    let r = rollout::act_on_any(&args.hub.hub, &args.hub.admin_dir, &args.name, action).await?;
    match args.output {
        OutputFormat::Json => print_json(&r),
        OutputFormat::Table => println!("{}", rollout::format::action_summary(action, &r)),
    }
    Ok(())
}

async fn hub_command(command: HubCommand) -> anyhow::Result<()> {
    use flotilla_cli::replicas;
    match command {
        HubCommand::Status { hub, output } => {
            let status = client::with_admin(&hub.hub, &hub.admin_dir, async |admin| {
                replicas::status(admin).await
            })
            .await?;
            match output {
                OutputFormat::Json => print_json(&status),
                OutputFormat::Table => println!("{}", replicas::status_table(&status)),
            }
        }
        HubCommand::AddReplica {
            hub,
            address,
            output,
        } => {
            let set = client::with_admin(&hub.hub, &hub.admin_dir, async |admin| {
                replicas::add(admin, &address).await
            })
            .await?;
            match output {
                OutputFormat::Json => print_json(&set),
                OutputFormat::Table => {
                    if let Some(id) = set.added {
                        println!("replica {id} at {address} added");
                    }
                    println!("{}", replicas::set_summary(&set));
                }
            }
        }
        HubCommand::RemoveReplica { hub, id, output } => {
            let set = client::with_admin(&hub.hub, &hub.admin_dir, async |admin| {
                replicas::remove(admin, id).await
            })
            .await?;
            match output {
                OutputFormat::Json => print_json(&set),
                OutputFormat::Table => {
                    println!("replica {id} removed");
                    println!("{}", replicas::set_summary(&set));
                }
            }
        }
    }
    Ok(())
}

async fn cluster_command(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Get { hub, name, output } => {
            let clusters = client::with_admin(&hub.hub, &hub.admin_dir, async |admin| {
                Ok(match &name {
                    Some(name) => vec![client::cluster(admin, name).await?.cluster],
                    None => client::clusters(admin).await?,
                })
            })
            .await?;
            match output {
                OutputFormat::Json => print_json(&clusters),
                OutputFormat::Table => println!("{}", clusters_table(&clusters)),
            }
        }
        ClusterCommand::Describe { hub, name, output } => {
            let cluster = client::with_admin(&hub.hub, &hub.admin_dir, async |admin| {
                client::cluster(admin, &name).await
            })
            .await?;
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
            let cluster = client::with_admin(&hub.hub, &hub.admin_dir, async |admin| {
                client::label_cluster(admin, &name, &set, &remove).await
            })
            .await?;
            match output {
                OutputFormat::Json => print_json(&cluster),
                OutputFormat::Table => println!("cluster/{} labeled", cluster.name),
            }
        }
        ClusterCommand::Delete { hub, name, output } => {
            let deleted = client::with_admin(&hub.hub, &hub.admin_dir, async |admin| {
                client::delete_cluster(admin, &name).await
            })
            .await?;
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
            let token = client::with_admin(&hub.hub, &hub.admin_dir, async |admin| {
                client::create_token(admin, ttl, &labels, name.as_deref()).await
            })
            .await?;
            match output {
                OutputFormat::Json => print_json(&token),
                OutputFormat::Table => println!("{}", token.token),
            }
        }
        Command::Cluster { command } => cluster_command(command).await?,
        Command::Clusters { hub, output } => {
            let clusters = client::with_admin(&hub.hub, &hub.admin_dir, async |admin| {
                client::clusters(admin).await
            })
            .await?;
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
        Command::Rollout { command } => rollout_command(command).await?,
        Command::Hub { command } => hub_command(command).await?,
        Command::Status { hub, output } => {
            let status = client::with_admin(&hub.hub, &hub.admin_dir, async |admin| {
                client::status(admin).await
            })
            .await?;
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
            let plan = client::with_admin(&hub.hub, &hub.admin_dir, async |admin| {
                client::plan(admin, &app, &rev, &diff).await
            })
            .await?;
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
