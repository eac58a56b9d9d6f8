//! Crash test: a child process writes with `SyncMode::Always` and reports each
//! acknowledged write on stdout; the parent kills it with SIGKILL at a random
//! moment, reopens the database, and checks that every acknowledged write is
//! there (and every batch is all-or-nothing). The child is this same test
//! binary, re-run on the ignored `crash_child_writes_until_killed` test.
//!
//! `SHOAL_CRASH_KILLS` sets the number of kills (default 50).

use rand::{Rng, SeedableRng};
use shoal_storage::{Db, Options, SyncMode, WriteBatch, WriteOptions};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn options() -> Options {
    Options {
        sync_mode: SyncMode::Always,
        memtable_size_bytes: 32 << 10,
        level0_compaction_trigger: 2,
        level1_size_bytes: 128 << 10,
        level_size_multiplier: 4,
        table_size_bytes: 64 << 10,
        wal_preallocate_bytes: 256 << 10,
        ..Options::default()
    }
}

fn value_of(key: &str) -> Vec<u8> {
    format!("{key}-{}", key.len()).repeat(3).into_bytes()
}

#[test]
#[ignore = "the child process of crash_test_loses_no_acknowledged_write"]
fn crash_child_writes_until_killed() {
    let Ok(directory) = std::env::var("SHOAL_CRASH_DIR") else {
        return;
    };
    let round: u64 = std::env::var("SHOAL_CRASH_ROUND")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let db = Db::open(&directory, options()).expect("child opens the database");
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    for index in 0u64.. {
        let key = format!("r{round:04}-{index:08}");
        if index % 5 == 0 {
            // A batch of three: all or nothing.
            let mut batch = WriteBatch::new();
            for part in ["a", "b", "c"] {
                let part_key = format!("{key}{part}");
                batch.put(part_key.as_bytes(), &value_of(&part_key));
            }
            db.write(&batch, &WriteOptions::default())
                .expect("batch write");
            let _ = writeln!(out, "batch {key}");
        } else {
            db.put(key.as_bytes(), &value_of(&key), &WriteOptions::default())
                .expect("write");
            let _ = writeln!(out, "put {key}");
        }
        let _ = out.flush();
    }
}

#[test]
fn crash_test_loses_no_acknowledged_write() {
    let kills: u64 = std::env::var("SHOAL_CRASH_KILLS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(50);
    let directory = tempfile::tempdir().expect("temporary directory");
    let executable = std::env::current_exe().expect("test binary path");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let mut acknowledged_puts: BTreeSet<String> = BTreeSet::new();
    let mut acknowledged_batches: BTreeSet<String> = BTreeSet::new();
    let started = Instant::now();
    for round in 0..kills {
        let mut child = Command::new(&executable)
            .args([
                "--ignored",
                "--exact",
                "crash_child_writes_until_killed",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SHOAL_CRASH_DIR", directory.path())
            .env("SHOAL_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the child");
        let stdout = child.stdout.take().expect("child stdout");
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(line) => lines.push(line),
                    Err(_) => break,
                }
            }
            lines
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(20..150)));
        let exited_early = child.try_wait().expect("child status").is_some();
        child.kill().expect("SIGKILL the child");
        let _ = child.wait();
        let lines = reader.join().expect("reader thread");
        assert!(
            !exited_early,
            "round {round}: the child stopped by itself: {:?}",
            lines.last()
        );
        for line in lines {
            if let Some(key) = line.strip_prefix("put ") {
                acknowledged_puts.insert(key.to_string());
            } else if let Some(key) = line.strip_prefix("batch ") {
                acknowledged_batches.insert(key.to_string());
            }
        }

        // Reopen and check everything acknowledged so far.
        let db = Db::open(directory.path(), options())
            .unwrap_or_else(|error| panic!("round {round}: reopen failed: {error}"));
        for key in &acknowledged_puts {
            assert_eq!(
                db.get(key.as_bytes()).expect("read"),
                Some(value_of(key)),
                "round {round}: acknowledged put {key} lost"
            );
        }
        for key in &acknowledged_batches {
            for part in ["a", "b", "c"] {
                let part_key = format!("{key}{part}");
                assert_eq!(
                    db.get(part_key.as_bytes()).expect("read"),
                    Some(value_of(&part_key)),
                    "round {round}: acknowledged batch {key} lost part {part}"
                );
            }
        }
        // Batches are atomic even when not acknowledged.
        let mut iterator = db.iter(None);
        iterator.seek_to_first().expect("iterate");
        let mut parts: std::collections::BTreeMap<String, usize> = Default::default();
        while iterator.valid() {
            let key = String::from_utf8_lossy(iterator.key()).into_owned();
            assert_eq!(
                iterator.value(),
                value_of(&key).as_slice(),
                "round {round}: {key} corrupt"
            );
            if key.len() == "r0000-00000000".len() + 1 {
                *parts.entry(key[..key.len() - 1].to_string()).or_default() += 1;
            }
            iterator.next().expect("iterate");
        }
        for (batch, count) in parts {
            assert_eq!(count, 3, "round {round}: batch {batch} partly present");
        }
        db.close().expect("close");
    }
    println!(
        "crash test: {kills} kills, {} acknowledged puts and {} batches all present, {:.1} s",
        acknowledged_puts.len(),
        acknowledged_batches.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        acknowledged_puts.len() + acknowledged_batches.len() > kills as usize,
        "the children acknowledged too few writes for the test to mean anything"
    );
}
