//! `shoal-sim cluster`: arguments and entry point.

/// Arguments of `shoal-sim cluster`.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// The seed of the run.
    #[arg(long)]
    pub seed: u64,
}

/// Runs one simulation and returns the process exit status.
pub fn run_cluster(args: ClusterArgs) -> i32 {
    eprintln!("shoal-sim cluster: not built yet (seed {})", args.seed);
    2
}
