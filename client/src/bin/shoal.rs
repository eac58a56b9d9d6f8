//! `shoal`: the command-line client (see `../shared/interfaces.md`).
//!
//! Exit status: 0 on success, 1 when a request failed (one line on stderr),
//! 2 on a usage error.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::{Parser, Subcommand};
use shoal_client::{Client, ClientConfig, Context, Error, ReadOptions, WriteOptions};
use shoal_cluster::id::NodeId;
use shoal_cluster::message::Quorum;
use shoal_cluster::siblings::SiblingValue;

#[derive(Debug, Parser)]
#[command(name = "shoal", about = "The Shoal command-line client", version)]
struct Cli {
    /// Client configuration (default: $SHOAL_CONFIG, then ./.cluster/client.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Nodes to contact, overriding the configuration's.
    #[arg(long, global = true, value_delimiter = ',')]
    nodes: Option<Vec<SocketAddr>>,
    /// Request deadline in milliseconds.
    #[arg(long, global = true)]
    timeout_ms: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read a key.
    Get {
        key: String,
        /// Replicas that must answer: one, quorum, all or a number.
        #[arg(long)]
        r: Option<Quorum>,
        /// Only primaries count (no sloppy quorum).
        #[arg(long)]
        strict: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Print values as base64 (for binary values).
        #[arg(long)]
        base64: bool,
    },
    /// Write a value (`-` reads it from standard input).
    Put {
        key: String,
        value: String,
        /// The context of the read this write supersedes.
        #[arg(long)]
        context: Option<String>,
        /// Replicas that must acknowledge.
        #[arg(long)]
        w: Option<Quorum>,
        /// Count a replica only once its write is fsynced.
        #[arg(long)]
        durable: bool,
        /// Only primaries count (no sloppy quorum).
        #[arg(long)]
        strict: bool,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Delete what a context covers.
    Delete {
        key: String,
        #[arg(long)]
        context: Option<String>,
        #[arg(long)]
        w: Option<Quorum>,
        #[arg(long)]
        strict: bool,
    },
    /// A node's view of the cluster.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The ring and placement.
    Ring {
        #[arg(long)]
        json: bool,
    },
    /// Make the contacted node join the cluster ADDR belongs to.
    Join { address: SocketAddr },
    /// Mark NODE (or the contacted node) as leaving.
    Leave { node: Option<u64> },
    /// Remove NODE from the ring for good.
    Remove { node: u64 },
    /// Pause or resume background work (anti-entropy, data moves) on the
    /// contacted node, or with --all on every member of the ring.
    Background {
        action: BackgroundAction,
        /// Every member of the ring, not only the contacted node.
        #[arg(long)]
        all: bool,
    },
    /// One replica's local state of KEY.
    Inspect {
        key: String,
        #[arg(long)]
        node: SocketAddr,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BackgroundAction {
    Pause,
    Resume,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("shoal: cannot start: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(execute(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(reason)) => {
            eprintln!("shoal: {reason}");
            ExitCode::from(2)
        }
        Err(Failure::Request(error)) => {
            eprintln!("shoal: {error}");
            ExitCode::from(1)
        }
    }
}

enum Failure {
    Usage(String),
    Request(Error),
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        Failure::Request(error)
    }
}

fn config(cli: &Cli) -> Result<ClientConfig, Failure> {
    let path = cli
        .config
        .clone()
        .or_else(|| std::env::var_os("SHOAL_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("./.cluster/client.toml"));
    let mut config = ClientConfig::load(&path).map_err(|error| {
        Failure::Usage(format!(
            "{error} (start a cluster with scripts/cluster.sh start, or pass --config)"
        ))
    })?;
    if let Some(nodes) = &cli.nodes {
        config.nodes = nodes.clone();
    }
    if let Some(timeout_ms) = cli.timeout_ms {
        config.timeout = Duration::from_millis(timeout_ms.max(1));
    }
    Ok(config)
}

fn context(token: &Option<String>) -> Result<Context, Failure> {
    match token {
        None => Ok(Context::default()),
        Some(token) => {
            Context::from_token(token).map_err(|error| Failure::Usage(error.to_string()))
        }
    }
}

fn text(bytes: &[u8], base64: bool) -> String {
    if base64 {
        STANDARD.encode(bytes)
    } else {
        String::from_utf8_lossy(bytes).into_owned()
    }
}

async fn execute(cli: Cli) -> Result<(), Failure> {
    let config = config(&cli)?;
    let client = Client::connect(config).await?;
    match cli.command {
        Command::Get {
            key,
            r,
            strict,
            json,
            base64,
        } => {
            let options = ReadOptions {
                r,
                sloppy: strict.then_some(false),
                timeout: None,
            };
            let value = client.get(key.as_bytes(), &options).await?;
            if json {
                let siblings: Vec<String> =
                    value.siblings.iter().map(|v| text(v, base64)).collect();
                println!(
                    "{}",
                    serde_json::json!({
                        "key": key,
                        "found": value.found(),
                        "siblings": siblings,
                        "context": value.context.to_token(),
                    })
                );
            } else if value.found() {
                for sibling in &value.siblings {
                    println!("{}", text(sibling, base64));
                }
                eprintln!("context: {}", value.context.to_token());
            } else {
                eprintln!("not found");
            }
        }
        Command::Put {
            key,
            value,
            context: token,
            w,
            durable,
            strict,
            json,
        } => {
            let value = if value == "-" {
                let mut bytes = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut bytes)
                    .map_err(|error| Failure::Usage(format!("reading standard input: {error}")))?;
                bytes
            } else {
                value.into_bytes()
            };
            let options = WriteOptions {
                w,
                sloppy: strict.then_some(false),
                durable: durable.then_some(true),
                timeout: None,
            };
            let written = client
                .put(key.as_bytes(), &value, &context(&token)?, &options)
                .await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"key": key, "context": written.to_token()})
                );
            } else {
                println!("ok");
            }
        }
        Command::Delete {
            key,
            context: token,
            w,
            strict,
        } => {
            let options = WriteOptions {
                w,
                sloppy: strict.then_some(false),
                durable: None,
                timeout: None,
            };
            client
                .delete(key.as_bytes(), &context(&token)?, &options)
                .await?;
            println!("ok");
        }
        Command::Status { json } => {
            let status = client.status(None).await?;
            if json {
                let text = serde_json::to_string(&status)
                    .map_err(|error| Failure::Usage(error.to_string()))?;
                println!("{text}");
            } else {
                println!(
                    "node {} at {} (epoch {}), ring version {}, {} requests in flight, {} hint bytes",
                    status.node,
                    status.address,
                    status.epoch.map_or("-".into(), |epoch| epoch.to_string()),
                    status.ring_version,
                    status.requests_in_flight,
                    status.hint_bytes
                );
                if status.background_paused {
                    println!("background work paused here (shoal background resume)");
                }
                let moves = &status.moves;
                if moves.total > 0 {
                    println!(
                        "moving partitions (assignment {}): {} of {} moves done, {} pulls under way here",
                        moves.assignment_version, moves.done, moves.total, moves.pulling_here
                    );
                }
                println!(
                    "{:<8} {:<22} {:<9} {:<9} primaries",
                    "node", "address", "ring", "liveness"
                );
                for member in status.members {
                    println!(
                        "{:<8} {:<22} {:<9} {:<9} {}",
                        member.node.to_string(),
                        member.address,
                        member
                            .ring_state
                            .map_or("-".into(), |state| format!("{state:?}").to_lowercase()),
                        member.liveness,
                        member.primary_partitions
                    );
                }
            }
        }
        Command::Ring { json } => {
            let ring = client.ring().await?;
            if json {
                let text = serde_json::to_string(&ring)
                    .map_err(|error| Failure::Usage(error.to_string()))?;
                println!("{text}");
            } else {
                println!(
                    "ring version {}: {} partitions, {} replicas each",
                    ring.version, ring.partition_count, ring.replication_factor
                );
                for (node, entry) in &ring.members {
                    let owned = ring
                        .primaries
                        .iter()
                        .filter(|primaries| primaries.contains(node))
                        .count();
                    println!(
                        "{:<8} {:<22} {:<9} primary of {owned} partitions",
                        node.to_string(),
                        entry.address,
                        format!("{:?}", entry.state).to_lowercase()
                    );
                }
            }
        }
        Command::Join { address } => println!("{}", client.join(None, address).await?),
        Command::Leave { node } => println!("{}", client.leave(node.map(NodeId)).await?),
        Command::Remove { node } => println!("{}", client.remove(NodeId(node)).await?),
        Command::Background { action, all } => {
            let paused = matches!(action, BackgroundAction::Pause);
            if !all {
                println!("{}", client.set_background(None, paused).await?);
                return Ok(());
            }
            client.ring().await?;
            // Every member is asked, even after one fails; the first
            // failure is the command's.
            let mut failure = None;
            for (_, address) in client.member_addresses() {
                match client.set_background(Some(address), paused).await {
                    Ok(done) => println!("{done}"),
                    Err(error) => {
                        eprintln!("shoal: {address}: {error}");
                        failure.get_or_insert(error);
                    }
                }
            }
            if let Some(error) = failure {
                return Err(error.into());
            }
        }
        Command::Inspect { key, node, json } => {
            let inspection = client.inspect(node, key.as_bytes()).await?;
            let siblings: Vec<serde_json::Value> = inspection
                .state
                .siblings
                .iter()
                .map(|sibling| {
                    let value = match &sibling.value {
                        SiblingValue::Value(bytes) => serde_json::Value::String(text(bytes, false)),
                        SiblingValue::Tombstone => serde_json::Value::Null,
                    };
                    serde_json::json!({"dot": format!("{}:{}", sibling.dot.actor, sibling.dot.counter), "value": value})
                })
                .collect();
            let report = serde_json::json!({
                "node": inspection.node.0,
                "key": key,
                "partition": inspection.partition,
                "primary": inspection.primary,
                "siblings": siblings,
                "context": Context(inspection.state.clock.clone()).to_token(),
            });
            if json {
                println!("{report}");
            } else {
                println!(
                    "node {} partition {} ({}): {} siblings",
                    inspection.node,
                    inspection.partition,
                    if inspection.primary {
                        "primary"
                    } else {
                        "not a primary"
                    },
                    inspection.state.siblings.len()
                );
                for sibling in siblings {
                    println!("  {sibling}");
                }
            }
        }
    }
    Ok(())
}
