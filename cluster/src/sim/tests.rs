//! Simulator runs inside the default test suite.
//!
//! `SHOAL_SIM_SEEDS` (default 300) and `SHOAL_SIM_OPS` (default 1,000) size the
//! many-seeds test; longer campaigns use `shoal-sim cluster --seeds A..B`.

use super::world::{Faults, Report, SimulationOptions, run};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

fn run_with(seed: u64, ops: usize, faults: Faults) -> Report {
    let options = SimulationOptions {
        ops,
        faults,
        ..SimulationOptions::new(seed)
    };
    run(options).expect("the options are valid")
}

fn assert_passed(report: &Report) {
    assert!(
        report.passed(),
        "seed {} failed: {:#?}",
        report.seed,
        report.violations
    );
}

#[test]
fn same_seed_gives_the_same_trace_hash() {
    let first = run_with(42, 200, Faults::all());
    let second = run_with(42, 200, Faults::all());
    assert_eq!(first.trace_hash, second.trace_hash);
    assert_eq!(first.events, second.events);
    assert_eq!(first.acked_writes, second.acked_writes);
    let other = run_with(43, 200, Faults::all());
    assert_ne!(first.trace_hash, other.trace_hash);
}

/// Anti-entropy alone converges every replica of every key after runs with
/// every fault — no repair reads — and a node whose store was wiped gets
/// back every acknowledged add another node still held.
#[test]
fn anti_entropy_alone_converges_every_replica_even_of_a_wiped_node() {
    let seeds = env_number("SHOAL_SIM_AE_SEEDS", 40);
    let mut keys_sent_after_wipes = 0;
    for seed in 0..seeds {
        let options = SimulationOptions {
            ops: 600,
            anti_entropy_only: true,
            wipe_at_drain: seed % 2 == 0,
            ..SimulationOptions::new(seed)
        };
        let report = run(options).expect("the options are valid");
        assert_passed(&report);
        assert!(report.converged, "seed {seed}");
        assert!(report.metrics.anti_entropy_rounds > 0, "seed {seed}");
        if seed % 2 == 0 {
            keys_sent_after_wipes += report.metrics.anti_entropy_keys_sent;
        }
    }
    // Hints refill a wiped node too; anti-entropy must have done its part.
    assert!(keys_sent_after_wipes > 0);
}

#[test]
fn last_writer_wins_runs_converge_and_keep_the_other_invariants() {
    for seed in 0..40 {
        let options = SimulationOptions {
            ops: 400,
            conflict_policy: crate::siblings::ConflictPolicy::Lww,
            ..SimulationOptions::new(seed)
        };
        let report = run(options).expect("the options are valid");
        assert_passed(&report);
        assert!(report.converged);
    }
}

#[test]
fn a_sample_of_seeds_replays_exactly() {
    for seed in (0..2000).step_by(100) {
        let first = run_with(seed, 150, Faults::all());
        let second = run_with(seed, 150, Faults::all());
        assert_eq!(first.trace_hash, second.trace_hash, "seed {seed}");
        assert_eq!(first.violations, second.violations, "seed {seed}");
    }
}

#[test]
fn a_run_without_faults_acknowledges_almost_everything_and_converges() {
    let report = run_with(7, 300, Faults::default());
    assert_passed(&report);
    assert!(report.converged);
    assert_eq!(report.failed_requests, 0, "{report:?}");
    assert!(report.acked_writes > 150, "{report:?}");
}

#[test]
fn many_seeds_with_all_faults_hold_every_invariant() {
    let seeds = env_number("SHOAL_SIM_SEEDS", 300);
    let ops = env_number("SHOAL_SIM_OPS", 1000) as usize;
    let mut failed = Vec::new();
    let mut totals = Report::default();
    for seed in 0..seeds {
        let report = run_with(seed, ops, Faults::all());
        if !report.passed() {
            failed.push((seed, report.violations.clone()));
        }
        totals.acked_writes += report.acked_writes;
        totals.machine_crashes += report.machine_crashes;
        totals.process_crashes += report.process_crashes;
        totals.partitions += report.partitions;
        totals.metrics.hints_replayed += report.metrics.hints_replayed;
        totals.metrics.hints_dropped_full += report.metrics.hints_dropped_full;
        totals.metrics.read_repairs += report.metrics.read_repairs;
        totals.metrics.quorum_failures += report.metrics.quorum_failures;
        totals.metrics.sibling_limit_rejections += report.metrics.sibling_limit_rejections;
        totals.strict_reads_checked += report.strict_reads_checked;
        totals.unsynced_writes_lost += report.unsynced_writes_lost;
        totals.metrics.tombstones_reaped += report.metrics.tombstones_reaped;
    }
    assert!(failed.is_empty(), "failing seeds: {failed:#?}");
    // The drain phase deletes every register key and waits out the grace:
    // tombstones are reaped (and the checks still hold after).
    assert!(
        totals.metrics.tombstones_reaped > 0,
        "no tombstone reaped in {seeds} seeds"
    );
    // The simulator must actually exercise what it claims to (TigerBeetle's
    // and FoundationDB's "sometimes" coverage): a run that injects nothing
    // would pass trivially. (Some of these are rare: at the default 300
    // seeds of 1,000 operations only a handful of seeds drop hints at the bound,
    // so smaller runs skip the check.)
    if seeds >= 300 && ops >= 1000 {
        assert!(totals.machine_crashes > 0, "{totals:?}");
        assert!(totals.process_crashes > 0, "{totals:?}");
        assert!(totals.partitions > 0, "{totals:?}");
        assert!(totals.metrics.hints_replayed > 0, "{totals:?}");
        assert!(totals.metrics.read_repairs > 0, "{totals:?}");
        assert!(totals.metrics.quorum_failures > 0, "{totals:?}");
        assert!(totals.metrics.hints_dropped_full > 0, "{totals:?}");
        assert!(totals.metrics.sibling_limit_rejections > 0, "{totals:?}");
        assert!(totals.strict_reads_checked > 0, "{totals:?}");
        // Whether a machine crash's loss of unsynced writes shows at the end
        // is no longer a coverage check: anti-entropy now restores such a
        // write from any replica that kept it (before it, ~1 in 100 seeds
        // showed one). That the crash drops exactly the unsynced writes is
        // `store::tests`' check.
    }
}

// Seeds that once failed, pinned with the parameters that showed the failure.
// The three below were bugs of the simulator's harness, not of the node; they
// are kept because each made a correct cluster look broken.

/// Nodes started one by one believed the not-yet-started ones dead forever,
/// so the final `r = all` repair read skipped a primary.
#[test]
fn found_by_sim_seed_297() {
    assert_passed(&run_with(297, 500, Faults::all()));
}

/// Strict reads and writes of one key drew their own `(r, w)` each, so a
/// read at `r = 1` could follow a write at `w = 1`: `r + w > n` did not hold.
#[test]
fn found_by_sim_seed_22() {
    assert_passed(&run_with(22, 60, Faults::all()));
}

/// The repair pass started while the (since replaced) liveness oracle's last
/// reports were in flight, so a coordinator still believed a restarted
/// primary dead. With SWIM the drain phase waits for every view to settle.
#[test]
fn found_by_sim_seed_11() {
    assert_passed(&run_with(11, 100, Faults::all()));
}

/// A bug of the coordinator: a primary that answered late and the fallback
/// holding a hint for it both counted toward `w`, so a write at `w = all`
/// was acknowledged with one primary's slot uncovered ("acknowledged by 3
/// replicas but only 2 nodes hold it"). Quorums now count primary slots.
#[test]
fn found_by_sim_seed_200() {
    assert_passed(&run_with(200, 1000, Faults::all()));
}

/// A bug of hinted handoff: a write merged into an old hint kept the old
/// hint's creation time, so the next replay round could drop it as expired
/// moments after the fallback had acknowledged it. A hint's age now counts
/// from its last update.
#[test]
fn found_by_sim_seed_10277() {
    assert_passed(&run_with(10277, 1000, Faults::all()));
}

/// A bug of the harness: a store failure injected during the workload stayed
/// armed into the repair pass and swallowed a read repair, so faults had not
/// really stopped when convergence was checked.
#[test]
fn found_by_sim_seed_11497() {
    assert_passed(&run_with(11497, 1000, Faults::all()));
}

/// A node whose start failed on a store error (its epoch write) stayed
/// unstarted until a message happened to arrive, holding hints it did not
/// know about; the new hint-accounting check caught it. A failed start is
/// now retried by a timer, and the check skips nodes not yet started.
#[test]
fn found_by_sim_seed_100005() {
    assert_passed(&run_with(100005, 1000, Faults::all()));
}

/// With SWIM in the simulator, a membership deadline a fraction of a
/// microsecond past the simulator's tick was rounded down, so the node was
/// woken just before it, forever: virtual time stopped at 9.76 s. Deadlines
/// are now rounded up to the next microsecond.
#[test]
fn found_by_sim_seed_1() {
    assert_passed(&run_with(1, 5000, Faults::all()));
}

/// Anti-entropy's periodic exchanges fell into step with the harness's
/// phase checks, so a message was always in flight when the repair pass
/// looked for quiet, and the run never ended. Exchanges are now jittered and
/// the harness treats them as background.
#[test]
fn found_by_sim_seed_390_anti_entropy() {
    let options = SimulationOptions {
        ops: 2000,
        anti_entropy_only: true,
        wipe_at_drain: true,
        ..SimulationOptions::new(390)
    };
    let report = run(options).expect("the options are valid");
    assert_passed(&report);
    assert!(report.converged);
}

/// With the anti-entropy byte budget exactly used up, the node scheduled its
/// waiting range steps at the same instant, over and over: the run hung at
/// one virtual instant. The wait is now until the budget is positive, and at
/// least a millisecond.
#[test]
fn found_by_sim_seed_66_anti_entropy_budget() {
    let options = SimulationOptions {
        ops: 2000,
        anti_entropy_only: true,
        wipe_at_drain: true,
        ..SimulationOptions::new(66)
    };
    let report = run(options).expect("the options are valid");
    assert_passed(&report);
    assert!(report.converged);
}

fn topology_options(seed: u64, ops: usize) -> SimulationOptions {
    SimulationOptions {
        nodes: 3,
        ops,
        topology: true,
        ..SimulationOptions::new(seed)
    }
}

/// Two nodes join and a founder leaves (3 → 5 → 4) while clients run and
/// every fault is injected; partitions move, nothing acknowledged is lost,
/// strict reads stay fresh, and the replicas converge.
#[test]
fn membership_changes_under_faults_lose_nothing() {
    let seeds = env_number("SHOAL_SIM_TOPOLOGY_SEEDS", 40);
    let (mut moved, mut records) = (0, 0);
    for seed in 0..seeds {
        let report = run(topology_options(seed, 2000)).expect("the options are valid");
        assert_passed(&report);
        assert_eq!((report.joins, report.leaves), (2, 1), "seed {seed}");
        assert_eq!(report.lost_writes, 0, "seed {seed}");
        moved += report.metrics.moves_completed;
        records += report.metrics.move_records;
    }
    assert!(moved > 0, "no partition moved in {seeds} seeds");
    // Moves finished close together are recorded in one ring change.
    assert!(
        records * 2 < moved,
        "{moved} moves took {records} ring changes"
    );
}

/// The second join and the leave asked at the same instant at different
/// nodes, shortly after the first join (often while its partitions still
/// move): the ring merges the changes, and nothing acknowledged is lost.
#[test]
fn concurrent_membership_changes_at_different_nodes_lose_nothing() {
    let seeds = env_number("SHOAL_SIM_TOPOLOGY_SEEDS", 40);
    for seed in 0..seeds {
        let options = SimulationOptions {
            concurrent_changes: true,
            ..topology_options(seed, 2000)
        };
        let report = run(options).expect("the options are valid");
        assert_passed(&report);
        assert_eq!((report.joins, report.leaves), (2, 1), "seed {seed}");
        assert_eq!(report.lost_writes, 0, "seed {seed}");
    }
}

/// After the drain's deletes are reaped on every member, the first joiner
/// leaves again: partitions move back to founders that owned them before
/// the join and deleted their copies since. No deleted key comes back, and
/// nothing acknowledged is lost. (A sweep that kept the register keys'
/// copies, tried as a mutation, failed seeds 0–19 of this setting.)
#[test]
fn partitions_moving_back_after_a_reap_bring_no_deleted_key_back() {
    let seeds = env_number("SHOAL_SIM_TOPOLOGY_SEEDS", 40);
    for seed in 0..seeds {
        let options = SimulationOptions {
            move_back: true,
            ..topology_options(seed, 2000)
        };
        let deleted = options.register_keys as u64;
        let report = run(options).expect("the options are valid");
        assert_passed(&report);
        assert_eq!((report.joins, report.leaves), (2, 2), "seed {seed}");
        assert_eq!(
            report.reaped_before_move_back,
            Some(deleted),
            "seed {seed}: every deleted key was reaped before the move back"
        );
        assert!(
            report.replicas_returned > 0,
            "seed {seed}: no partition moved back to a former owner"
        );
        assert_eq!(report.lost_writes, 0, "seed {seed}");
    }
}

/// A bug of the moves: reads switched to the new owners partition by
/// partition, so a node that restarted with an older ring, on which some
/// partitions had switched, read from owners that a later change no longer
/// wrote to — a strict read missed an acknowledged strict write. Reads now
/// switch only once every move is done, and a new change waits for the
/// commit of a finished one.
#[test]
fn found_by_sim_seed_245_topology() {
    assert_passed(&run(topology_options(245, 5000)).expect("the options are valid"));
}

/// A bug of the harness's stand-in for `shoald`: a removed node stopped
/// before it had started on its store, so before its hints were loaded, and
/// hints for other nodes were left behind.
#[test]
fn found_by_sim_seed_241_topology() {
    assert_passed(&run(topology_options(241, 5000)).expect("the options are valid"));
}

/// A bug of the pulls: when the durable write that closes a partition's pull
/// failed (an injected disk error), the pull was already marked finished, so
/// the move was never recorded and the change never committed. The last
/// range is now asked again.
#[test]
fn found_by_sim_seed_17_topology() {
    assert_passed(&run(topology_options(17, 2000)).expect("the options are valid"));
}

/// A bug of the digest pulls: a source refused `PullKeys` asking for more
/// keys than its scan chunk, though one range of digests (cut by bytes, not
/// keys) can name more; the move never finished. The bound is now on the
/// keys' bytes.
#[test]
fn found_by_sim_seed_139_topology() {
    assert_passed(&run(topology_options(139, 2000)).expect("the options are valid"));
}
