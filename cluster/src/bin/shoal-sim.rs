//! `shoal-sim`: the deterministic simulator's command line.

fn main() {
    eprintln!("shoal-sim: no scenario is built yet");
    std::process::exit(2);
}
