//! The default run of the Jepsen-style checker (`shoal-bench check`): five
//! real `shoald` processes started by `scripts/cluster.sh`, load on sets and
//! registers, and a nemesis killing, pausing and — where this machine allows
//! network namespaces and nftables (root) — partitioning them. Nothing
//! acknowledged may be lost, and replicas must converge after healing.
//!
//! Needs `shoald` and `shoal` built beside `shoal-bench` (`cargo test
//! --workspace`, as `scripts/test.sh` runs, builds them). Longer runs:
//! `SHOAL_CHECK_SECONDS=1800` (see docs/testing.md).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn can_use_network_namespaces() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0");
    let nft = Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let ip = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .is_ok_and(|o| o.status.success());
    root && nft && ip
}

struct Cluster {
    dir: PathBuf,
    bin_dir: PathBuf,
}

impl Cluster {
    fn script(&self, arguments: &[&str]) -> std::process::Output {
        Command::new(repository().join("scripts/cluster.sh"))
            .args(arguments)
            .arg("--dir")
            .arg(&self.dir)
            .env("SHOAL_BIN_DIR", &self.bin_dir)
            .output()
            .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.script(&["wipe"]);
    }
}

fn bin_dir() -> PathBuf {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_shoal-bench"))
        .parent()
        .unwrap()
        .to_path_buf();
    for binary in ["shoald", "shoal"] {
        assert!(
            bin_dir.join(binary).exists(),
            "{} is missing: build the workspace first (cargo test --workspace builds it)",
            bin_dir.join(binary).display()
        );
    }
    bin_dir
}

/// Starts three nodes in `scratch` on ports from `base` (offset by this
/// process's id, so parallel test runs do not collide).
fn three_nodes(scratch: &Path, bin_dir: PathBuf, base: u32) -> Cluster {
    let cluster = Cluster {
        dir: scratch.join("cluster"),
        bin_dir,
    };
    let base_port = (base + (std::process::id() % 2_000) * 10).to_string();
    let started = cluster.script(&["start", "--nodes", "3", "--base-port", &base_port]);
    assert!(
        started.status.success(),
        "cluster.sh start failed: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    cluster
}

/// Runs `shoal-bench check` with `arguments` where the nodes are; returns
/// its JSON summary and whether it exited 0.
fn run_check(cluster: &Cluster, arguments: &[String]) -> (serde_json::Value, bool) {
    let mut check = vec![
        "exec".to_string(),
        "--dir".into(),
        cluster.dir.display().to_string(),
        "--".to_string(),
        cluster.bin_dir.join("shoal-bench").display().to_string(),
        "check".into(),
        "--dir".into(),
        cluster.dir.display().to_string(),
        "--script".into(),
        repository()
            .join("scripts/cluster.sh")
            .display()
            .to_string(),
    ];
    check.extend(arguments.iter().cloned());
    let output = Command::new(repository().join("scripts/cluster.sh"))
        .args(&check)
        .env("SHOAL_BIN_DIR", &cluster.bin_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|error| {
            panic!(
                "no JSON summary ({error}); stdout: {stdout}; stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    eprintln!("check summary: {summary}");
    (summary, output.status.success())
}

/// Three nodes grow to five (two `cluster.sh add`) and shrink to four (a
/// `cluster.sh decommission`) while the workload runs and nodes are killed
/// and paused: every acknowledged write survives and the replicas converge.
#[test]
fn three_nodes_grow_to_five_and_shrink_to_four_under_load_losing_nothing() {
    let bin_dir = bin_dir();
    let seconds: u64 = std::env::var("SHOAL_CHECK_TOPOLOGY_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(40);
    let scratch = tempfile::tempdir().unwrap();
    let cluster = three_nodes(scratch.path(), bin_dir, 24_000);
    let history = scratch.path().join("history.jsonl");
    let arguments: Vec<String> = [
        "--duration",
        &seconds.to_string(),
        "--fault-interval",
        "4",
        "--faults",
        "kill,pause",
        "--topology",
        "add,add,decommission:1",
        "--history",
        &history.display().to_string(),
    ]
    .iter()
    .map(|text| text.to_string())
    .collect();
    let (summary, ok) = run_check(&cluster, &arguments);
    assert_eq!(
        summary["lost"], 0,
        "acknowledged writes were lost: {summary}"
    );
    assert_eq!(
        summary["converged"], true,
        "replicas did not converge: {summary}"
    );
    assert_eq!(
        summary["decommissioned"],
        serde_json::json!([1]),
        "{summary}"
    );
    assert!(
        summary["acked"].as_u64().unwrap() > 100,
        "too little load: {summary}"
    );
    assert!(ok, "the checker failed: {summary}");
    // The ring ends with four active members and node 1 removed.
    let ring = Command::new(cluster.bin_dir.join("shoal"))
        .args([
            "--config",
            &cluster.dir.join("client.toml").display().to_string(),
        ])
        .args(["ring", "--json"])
        .output()
        .unwrap();
    let ring: serde_json::Value = serde_json::from_slice(&ring.stdout).unwrap();
    let states: Vec<String> = ring["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|member| member[1]["state"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(
        states,
        ["Removed", "Active", "Active", "Active", "Active"],
        "{ring}"
    );
}

#[test]
fn five_nodes_lose_no_acknowledged_write_under_kills_pauses_and_partitions() {
    let bin_dir = bin_dir();
    let seconds: u64 = std::env::var("SHOAL_CHECK_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(90);
    let netns = can_use_network_namespaces();
    let scratch = tempfile::tempdir().unwrap();
    let cluster = Cluster {
        dir: scratch.path().join("cluster"),
        bin_dir: bin_dir.clone(),
    };
    // A base port unlikely to collide with other test runs on this machine.
    let base_port = 20_000 + (std::process::id() % 2_000) * 10;
    let mut start = vec!["start", "--nodes", "5"];
    let base = base_port.to_string();
    start.extend(["--base-port", &base]);
    if netns {
        start.push("--netns");
    }
    let started = cluster.script(&start);
    assert!(
        started.status.success(),
        "cluster.sh start failed: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    let history = scratch.path().join("history.jsonl");
    let faults = if netns {
        "kill,pause,partition,rolling"
    } else {
        "kill,pause,rolling"
    };
    let arguments: Vec<String> = [
        "--duration",
        &seconds.to_string(),
        "--fault-interval",
        "5",
        "--faults",
        faults,
        "--history",
        &history.display().to_string(),
    ]
    .iter()
    .map(|text| text.to_string())
    .collect();
    let (summary, ok) = run_check(&cluster, &arguments);
    assert_eq!(
        summary["lost"], 0,
        "acknowledged writes were lost: {summary}"
    );
    assert_eq!(
        summary["converged"], true,
        "replicas did not converge: {summary}"
    );
    assert!(
        summary["acked"].as_u64().unwrap() > 100,
        "too little load: {summary}"
    );
    assert!(
        summary["faults"].as_u64().unwrap() > 0,
        "no faults injected: {summary}"
    );
    assert!(
        summary["hint_bytes_peak_per_node"].as_u64().unwrap()
            <= summary["hint_bytes_bound_per_node"].as_u64().unwrap(),
        "hint storage over its bound: {summary}"
    );
    assert!(ok, "the checker failed: {summary}");
}

/// Starts `shoal-bench run` of YCSB b over 200 records at 200 ops/s, with
/// `extra` arguments; its stdout is piped.
fn small_load(bin_dir: &Path, config: &Path, extra: &[&str]) -> std::process::Child {
    Command::new(bin_dir.join("shoal-bench"))
        .args(["run", "--config"])
        .arg(config)
        .args(["--workload", "b", "--records", "200", "--rate", "200"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// `shoal-bench run --stop-file`: the run ends soon after the file appears,
/// long before its `--duration`, and reports what it did until then (the
/// membership benchmark measures the window of the changes this way).
#[test]
fn a_run_ends_when_its_stop_file_appears() {
    let scratch = tempfile::tempdir().unwrap();
    let cluster = three_nodes(scratch.path(), bin_dir(), 28_000);
    let stop = scratch.path().join("stop");
    let stop_file = stop.to_str().unwrap();
    let run = small_load(
        &cluster.bin_dir,
        &cluster.dir.join("client.toml"),
        &["--duration", "120", "--stop-file", stop_file],
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    let asked = std::time::Instant::now();
    std::fs::write(&stop, b"").unwrap();
    let output = run.wait_with_output().unwrap();
    let waited = asked.elapsed();
    assert!(output.status.success(), "the run failed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    assert!(
        waited < std::time::Duration::from_secs(10),
        "the run went on {waited:?} after the stop file appeared"
    );
    let seconds = summary["seconds"].as_f64().unwrap();
    assert!(
        seconds < 20.0,
        "the summary covers {seconds} s, not the window: {summary}"
    );
    assert!(
        summary["ops"].as_u64().unwrap() > 100,
        "too few operations: {summary}"
    );
    assert_eq!(summary["errors"], 0, "{summary}");
    // A fresh seed, given so that the run can be repeated (`--seed`).
    assert!(summary["seed"].as_u64().is_some(), "{summary}");
}

/// `shoal-bench run --alternate-background`: every member's background work
/// is paused and resumed in turns, both kinds of turn get their own
/// latencies, and the run leaves the cluster running its background work.
#[test]
fn alternating_turns_pause_every_member_and_leave_them_running() {
    let scratch = tempfile::tempdir().unwrap();
    let cluster = three_nodes(scratch.path(), bin_dir(), 24_000);
    let config = cluster.dir.join("client.toml");
    let paused_nodes = || -> Vec<bool> {
        let ring = Command::new(cluster.bin_dir.join("shoal"))
            .arg("--config")
            .arg(&config)
            .args(["ring", "--json"])
            .output()
            .unwrap();
        assert!(ring.status.success(), "shoal ring failed");
        let ring: serde_json::Value = serde_json::from_slice(&ring.stdout).unwrap();
        ring["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|member| {
                let address = member[1]["address"].as_str().unwrap();
                let status = Command::new(cluster.bin_dir.join("shoal"))
                    .arg("--config")
                    .arg(&config)
                    .args(["--nodes", address, "status", "--json"])
                    .output()
                    .unwrap();
                assert!(status.status.success(), "status of {address}");
                let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
                status["background_paused"].as_bool().unwrap()
            })
            .collect()
    };
    assert_eq!(paused_nodes(), vec![false; 3]);
    let run = small_load(
        &cluster.bin_dir,
        &config,
        &["--duration", "9", "--alternate-background", "3"],
    );
    // The second turn (3 s to 6 s) pauses every member.
    let mut seen_paused = false;
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(8) && !seen_paused {
        seen_paused = paused_nodes() == vec![true; 3];
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let output = run.wait_with_output().unwrap();
    assert!(output.status.success(), "the run failed");
    assert!(seen_paused, "no look saw every member paused");
    assert_eq!(
        paused_nodes(),
        vec![false; 3],
        "the run left a member paused"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap();
    assert_eq!(summary["background_toggle_failures"], 0, "{summary}");
    assert!(
        summary["background_turns"].as_u64().unwrap() >= 3,
        "{summary}"
    );
    for turn in ["background_running", "background_paused"] {
        let reads = summary[turn]["read"]["count"].as_u64().unwrap_or(0);
        assert!(reads > 100, "{turn}: {reads} reads: {summary}");
    }
    // Turn by turn, running first, each read in the turn it began in.
    let by_turn = summary["background_by_turn"]["turns"].as_array().unwrap();
    assert!(by_turn.len() >= 2, "{summary}");
    assert_eq!(by_turn[0][0], "running", "{summary}");
    assert_eq!(by_turn[1][0], "paused", "{summary}");
    for kind in ["running", "paused"] {
        let reads: u64 = by_turn
            .iter()
            .filter(|turn| turn[0] == kind)
            .map(|turn| turn[1].as_u64().unwrap())
            .sum();
        let pooled = summary[format!("background_{kind}")]["read"]["count"]
            .as_u64()
            .unwrap();
        assert_eq!(reads, pooled, "{kind} reads turn by turn: {summary}");
    }
    // Too few turns for a running turn between two paused ones.
    assert_eq!(
        summary["background_by_turn"]["read_p99_ratio"]["triples"], 0,
        "{summary}"
    );
    assert_eq!(summary["errors"], 0, "{summary}");
}
