//! Architecture invariants of `shoal-cluster`, checked on the source tree:
//! the protocol cores are sans-IO (only `transport` may import tokio or quinn
//! or read the clock; the simulators' command-line entry points may read the
//! wall clock to report their own speed), and the crate does not depend on
//! `shoal-storage`.

use std::path::{Path, PathBuf};

fn rust_files(directory: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(directory).expect("source directory is readable") {
        let path = entry.expect("directory entry is readable").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            out.push(path);
        }
    }
}

/// Files allowed to read the wall clock: the simulators' entry points time the
/// run, and the cluster simulator takes one `Instant` as the origin of its
/// virtual time (every later instant is that origin plus a virtual offset).
const WALL_CLOCK_READERS: &[&str] = &[
    "sim/cli.rs",
    "sim/world.rs",
    "membership/simulation.rs",
    "bin/shoal-sim.rs",
];

#[test]
fn only_the_transport_does_io_or_reads_the_clock() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&source, &mut files);
    assert!(files.len() > 10, "found the sources");
    let mut offences = Vec::new();
    for file in &files {
        let relative = file
            .strip_prefix(&source)
            .expect("under src")
            .to_string_lossy()
            .replace('\\', "/");
        if relative.starts_with("transport/") || relative == "transport.rs" {
            continue;
        }
        if relative.ends_with("tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("source is readable");
        // Test modules sit at the bottom of a file; they may use real time.
        let production = text.split("#[cfg(test)]").next().unwrap_or("");
        for (number, line) in production.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let io = [
                "tokio::",
                "quinn::",
                "quinn_proto::",
                "UdpSocket",
                "TcpStream",
                "TcpListener",
                "std::thread::spawn",
            ]
            .iter()
            .any(|needle| code.contains(needle));
            let clock = ["Instant::now", "SystemTime::now"]
                .iter()
                .any(|needle| code.contains(needle));
            if io || (clock && !WALL_CLOCK_READERS.contains(&relative.as_str())) {
                offences.push(format!("{relative}:{}: {}", number + 1, line.trim()));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "IO or clock outside transport:\n{}",
        offences.join("\n")
    );
}

#[test]
fn cluster_does_not_depend_on_storage() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .expect("manifest is readable");
    assert!(!manifest.contains("shoal-storage"));
}
