//! `shoal-sim`: the deterministic simulator's command line. Each subcommand's
//! arguments and run live beside the protocol it simulates.

use clap::Parser;

#[derive(Parser)]
#[command(name = "shoal-sim", about = "Shoal's deterministic simulator")]
enum Command {
    /// The cluster core (quorums, versioning, hinted handoff) under faults.
    Cluster(shoal_cluster::sim::cli::ClusterArgs),
    /// SWIM membership at scale.
    Swim(shoal_cluster::membership::simulation::SwimArgs),
}

fn main() {
    let code = match Command::parse() {
        Command::Cluster(args) => shoal_cluster::sim::cli::run_cluster(args),
        Command::Swim(args) => shoal_cluster::membership::simulation::run_swim(args),
    };
    std::process::exit(code);
}
