//! `shoal-bench`: load generator and engine micro-benchmarks.

fn main() {
    eprintln!("shoal-bench: no workload is built yet");
    std::process::exit(2);
}
