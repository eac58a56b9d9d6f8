//! A small write made durable costs about a page of I/O, not a megabyte.
//!
//! Since Linux 6.16 ext4 caches files in large folios, sized by the writes
//! that create them. The log was zero-filled a megabyte per `pwrite`, so
//! its page cache was made of 1 MiB folios. A record copied into the
//! mapped log dirties the whole folio it lands in (a mapping's writes are
//! tracked per folio), and the next sync wrote that megabyte: measured on
//! this project's machine (6.18), 30 MB/s of disk writes for a 3-node
//! cluster at 150 updates/s, against 0.8 MB/s once the log is filled a page
//! at a time. The test counts the bytes this process dirtied (`write_bytes`
//! of /proc/self/io) over pairs of a 1 KiB put through the map and a small
//! durable put that syncs it. On kernels or file systems with small folios
//! it passes either way; on this machine it failed before the fix (1,024
//! KiB per pair).
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
fn a_small_put_and_its_sync_write_about_a_page() {
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
        db.put(key.as_bytes(), &value, &WriteOptions { sync: false })
            .unwrap();
        db.put(b"marker", b"synced", &WriteOptions { sync: true })
            .unwrap();
    }
    let per_put = (write_bytes().unwrap() - opened) / PUTS;
    eprintln!(
        "opening wrote {} KiB; each 1 KiB put and sync {} KiB",
        (opened - start) >> 10,
        per_put >> 10
    );
    // A pair fills part of one or two pages; a few more for file-system
    // metadata would still pass. A megabyte folio would not.
    assert!(
        per_put <= 32 << 10,
        "each 1 KiB put and its sync dirtied {per_put} bytes"
    );
    db.close().unwrap();
}
