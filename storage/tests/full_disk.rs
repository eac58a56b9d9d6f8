//! A real full disk: the database lives on a small tmpfs, is written until
//! the file system runs out of space, and must then
//! - fail writes with an error that says the disk is full (or, once a
//!   failure made it read-only, says so and why), never panic;
//! - still serve every acknowledged write;
//! - after the file system is given more room and the database reopened,
//!   hold every acknowledged write and accept new ones.
//!
//! Mounting needs root; without it the test says so and passes without
//! checking anything (CI runs as root).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use shoal_storage::{Db, Error, Options, WriteOptions};

fn options() -> Options {
    Options {
        memtable_size_bytes: 256 << 10,
        level0_compaction_trigger: 2,
        level1_size_bytes: 1 << 20,
        table_size_bytes: 256 << 10,
        wal_preallocate_bytes: 128 << 10,
        ..Options::default()
    }
}

fn mount(args: &[&str]) -> bool {
    Command::new("mount")
        .args(args)
        .status()
        .is_ok_and(|status| status.success())
}

struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

fn says_disk_full(error: &Error) -> bool {
    let text = error.to_string();
    text.contains("No space left on device") || text.contains("os error 28")
}

/// Whether the log or a table (written by the flush thread) meets the full
/// disk first varies; compressible values make it the log more often.
#[test]
fn a_full_disk_with_compressible_values_fails_writes_clearly_and_loses_nothing() {
    fill_the_disk(false);
}

#[test]
fn a_full_disk_with_incompressible_values_fails_writes_clearly_and_loses_nothing() {
    fill_the_disk(true);
}

fn fill_the_disk(incompressible: bool) {
    let scratch = tempfile::tempdir().unwrap();
    let mount_point = scratch.path().join("small");
    std::fs::create_dir(&mount_point).unwrap();
    let mount_text = mount_point.to_string_lossy().into_owned();
    if !mount(&["-t", "tmpfs", "-o", "size=3m", "tmpfs", &mount_text]) {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let _unmount = Unmount(&mount_point);
    let path = mount_point.join("db");

    let db = Db::open(&path, options()).unwrap();
    // Incompressible values, so tables fill the disk as fast as the log.
    let value_of = |i: u32| -> Vec<u8> {
        if !incompressible {
            return vec![(i % 251) as u8; 300];
        }
        let mut state = u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..300)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    };
    let mut acknowledged = 0u32;
    let first_error = loop {
        let key = format!("key{acknowledged:08}");
        match db.put(
            key.as_bytes(),
            &value_of(acknowledged),
            &WriteOptions::default(),
        ) {
            Ok(()) => acknowledged += 1,
            Err(error) => break error,
        }
        assert!(acknowledged < 1_000_000, "3 MiB never filled up");
    };
    eprintln!("{acknowledged} writes acknowledged; then: {first_error}");
    assert!(acknowledged > 1000, "only {acknowledged} writes fit");
    assert!(
        says_disk_full(&first_error),
        "the first failed write must say the disk is full: {first_error}"
    );
    // Later writes are refused and say why.
    let again = db
        .put(b"after", b"value", &WriteOptions::default())
        .unwrap_err();
    assert!(
        matches!(again, Error::ReadOnly { .. }) || says_disk_full(&again),
        "{again}"
    );
    // Every acknowledged write is still readable.
    for i in 0..acknowledged {
        let key = format!("key{i:08}");
        assert_eq!(db.get(key.as_bytes()).unwrap(), Some(value_of(i)), "{key}");
    }
    drop(db);

    // More room, reopen: everything acknowledged is there, and writes work.
    assert!(mount(&["-o", "remount,size=64m", &mount_text]));
    let db = Db::open(&path, options()).unwrap();
    for i in 0..acknowledged {
        let key = format!("key{i:08}");
        assert_eq!(db.get(key.as_bytes()).unwrap(), Some(value_of(i)), "{key}");
    }
    db.put(b"after", b"value", &WriteOptions { sync: true })
        .unwrap();
    assert_eq!(db.get(b"after").unwrap(), Some(b"value".to_vec()));
    db.close().unwrap();
}
