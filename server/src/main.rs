//! `shoald`: a Shoal node. `shoald [--config FILE] [flags]` runs one;
//! `shoald cert ...` makes development certificates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shoal_server::certificates::{self, Kind};
use shoal_server::config::NodeConfig;
use shoal_server::{RunOptions, run};

/// jemalloc, not glibc's malloc. perf showed a one-thread fill's 5.4 ms put
/// spend its first millisecond inside glibc's `realloc`. The likely cause
/// (inferred, not traced): the storage engine's flush thread frees whole
/// memtables, tens of thousands of B-tree nodes a writer allocated, and
/// under glibc those frees go back to the writer's arena, under its lock.
/// With jemalloc the worst put of six fills fell from 0.39–4.1 ms to
/// 0.28–0.98 ms (docs/bench.md, session 8).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(name = "shoald", about = "A Shoal node", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file; flags override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// This node's id (unique, never reused).
    #[arg(long)]
    node_id: Option<u64>,
    /// UDP address to listen on.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Members to join through, comma-separated.
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<SocketAddr>>,
    /// Local TCP address for Prometheus metrics.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Cluster CA certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// This node's certificate.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// This node's private key.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Enter the ring as joining (owning nothing until made active).
    #[arg(long)]
    join: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Development certificates.
    Cert {
        #[command(subcommand)]
        what: CertCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// A new CA: DIR/ca.pem and DIR/ca.key.
    Ca {
        /// Where to write.
        #[arg(long)]
        dir: PathBuf,
    },
    /// A node certificate signed by the CA in DIR: DIR/NAME.pem and DIR/NAME.key.
    Node {
        /// Where the CA is and the files go.
        #[arg(long)]
        dir: PathBuf,
        /// File name stem and common name.
        #[arg(long)]
        name: String,
        /// Extra DNS names or IP addresses.
        #[arg(long)]
        san: Vec<String>,
    },
    /// A client certificate signed by the CA in DIR.
    Client {
        /// Where the CA is and the files go.
        #[arg(long)]
        dir: PathBuf,
        /// File name stem and common name.
        #[arg(long)]
        name: String,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match execute(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shoald: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn execute(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::Cert { what }) = cli.command {
        let written = match what {
            CertCommand::Ca { dir } => certificates::make_ca(&dir)?,
            CertCommand::Node { dir, name, san } => {
                certificates::make_leaf(&dir, &name, Kind::Node, &san)?
            }
            CertCommand::Client { dir, name } => {
                certificates::make_leaf(&dir, &name, Kind::Client, &[])?
            }
        };
        println!("{} {}", written.0.display(), written.1.display());
        return Ok(());
    }
    let mut config = match &cli.config {
        Some(path) => NodeConfig::load(path)?,
        None => NodeConfig::default(),
    };
    if let Some(node_id) = cli.node_id {
        config.node_id = node_id;
    }
    if let Some(listen) = cli.listen {
        config.listen = listen;
    }
    if let Some(data_dir) = cli.data_dir {
        config.data_dir = data_dir;
    }
    if let Some(seeds) = cli.seeds {
        config.seeds = seeds;
    }
    if cli.metrics_listen.is_some() {
        config.metrics_listen = cli.metrics_listen;
    }
    if let Some(ca) = cli.ca {
        config.tls.ca = ca;
    }
    if let Some(cert) = cli.cert {
        config.tls.cert = cert;
    }
    if let Some(key) = cli.key {
        config.tls.key = key;
    }
    if config.node_id == 0 {
        anyhow::bail!(
            "a node id is required (node_id in the config or --node-id), and 0 is not one"
        );
    }
    run(
        config,
        RunOptions {
            join_as_joining: cli.join,
        },
    )
}
