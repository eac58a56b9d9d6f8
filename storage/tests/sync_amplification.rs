//! A small durable write costs about a page of I/O, not a megabyte.
//!
//! Since Linux 6.16 ext4 caches files in large folios, sized by the writes
//! that create them, and writes a dirty folio back whole. The log was
//! zero-filled a megabyte per `pwrite`, so its page cache was made of 1 MiB
//! folios, and every fsync after a small append wrote 1 MiB: measured on
//! this project's machine (6.18), 10 MB/s per node at 100 updates/s, and
//! the disk's work on a VM is CPU time stolen from every process. The test
//! counts the bytes this process dirtied (`write_bytes` of /proc/self/io,
//! charged a whole folio at a time) over durable puts of 1 KiB. On kernels
//! or file systems with small folios it passes either way; on this machine
//! it failed before the fix (1,024 KiB per put).
//!
//! Its own test binary: `write_bytes` counts the whole process.

#![allow(clippy::unwrap_used)]

use shoal_storage::{Db, Options, SyncMode, WriteOptions};

fn write_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))
        .and_then(|value| value.trim().parse().ok())
}

#[test]
fn a_small_durable_put_writes_about_a_page() {
    let Some(start) = write_bytes() else {
        eprintln!("no /proc/self/io here: nothing to measure");
        return;
    };
    let directory = tempfile::tempdir().unwrap();
    let options = Options {
        sync_mode: SyncMode::Never,
        ..Options::default()
    };
    let db = Db::open(directory.path(), options).unwrap();
    let opened = write_bytes().unwrap();
    const PUTS: u64 = 50;
    let value = vec![b'v'; 1024];
    for index in 0..PUTS {
        let key = format!("key{index:04}");
        db.put(key.as_bytes(), &value, &WriteOptions { sync: true })
            .unwrap();
    }
    let per_put = (write_bytes().unwrap() - opened) / PUTS;
    eprintln!(
        "opening wrote {} KiB; each durable 1 KiB put {} KiB",
        (opened - start) >> 10,
        per_put >> 10
    );
    // A put fills part of one or two pages; a few more for file-system
    // metadata would still pass. A megabyte folio would not.
    assert!(
        per_put <= 32 << 10,
        "each durable 1 KiB put dirtied {per_put} bytes"
    );
    db.close().unwrap();
}
