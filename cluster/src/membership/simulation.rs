//! `shoal-sim swim`: arguments and entry point.

/// Arguments of `shoal-sim swim`.
#[derive(Debug, clap::Args)]
pub struct SwimArgs {
    /// The seed of the run.
    #[arg(long)]
    pub seed: u64,
}

/// Runs one simulation and returns the process exit status.
pub fn run_swim(args: SwimArgs) -> i32 {
    eprintln!("shoal-sim swim: not built yet (seed {})", args.seed);
    2
}
