//! Manifest corruption: every single-bit flip in the used part of a closed
//! database's manifest makes `open` fail with `Corruption` naming the
//! manifest and the damaged record's offset — never a panic, never a
//! database that opens with tables missing or wrong.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use shoal_storage::{Db, Error, Options, WriteOptions};

fn options() -> Options {
    Options {
        memtable_size_bytes: 8 << 10,
        level0_compaction_trigger: 2,
        level1_size_bytes: 32 << 10,
        table_size_bytes: 16 << 10,
        block_size_bytes: 1024,
        wal_preallocate_bytes: 16 << 10,
        ..Options::default()
    }
}

fn collect(db: &Db) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut iterator = db.iter(None);
    iterator.seek_to_first().unwrap();
    let mut out = BTreeMap::new();
    while iterator.valid() {
        out.insert(iterator.key().to_vec(), iterator.value().to_vec());
        iterator.next().unwrap();
    }
    out
}

fn copy_directory(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn every_bit_flip_in_the_manifest_is_reported_as_corruption_of_that_file() {
    let scratch = tempfile::tempdir().unwrap();
    let base = scratch.path().join("base");
    let db = Db::open(&base, options()).unwrap();
    for i in 0..1500u32 {
        db.put(
            format!("key{i:06}").as_bytes(),
            &[b'v'; 50],
            &WriteOptions::default(),
        )
        .unwrap();
    }
    db.flush().unwrap();
    let expected = collect(&db);
    db.close().unwrap();
    let manifest = std::fs::read_to_string(base.join("CURRENT"))
        .unwrap()
        .trim()
        .to_string();
    let bytes = std::fs::read(base.join(&manifest)).unwrap();
    // The log is preallocated; only the part written holds records.
    let used = bytes
        .iter()
        .rposition(|byte| *byte != 0)
        .map_or(0, |p| p + 1);
    assert!(
        used > 100,
        "the manifest holds several edits ({used} bytes)"
    );

    for offset in 0..used {
        let trial = scratch.path().join("trial");
        copy_directory(&base, &trial);
        let mut corrupted = bytes.clone();
        corrupted[offset] ^= 1 << (offset % 8);
        std::fs::write(trial.join(&manifest), &corrupted).unwrap();
        match Db::open(&trial, options()) {
            Err(Error::Corruption {
                path, offset: at, ..
            }) => {
                assert!(path.ends_with(&manifest), "offset {offset}: names {path:?}");
                assert!(at <= offset as u64, "offset {offset}: reported at {at}");
            }
            Err(other) => panic!("offset {offset}: not a corruption error: {other:?}"),
            Ok(db) => {
                // A flip the checksums cannot see must not change the data.
                assert_eq!(collect(&db), expected, "offset {offset}: wrong data");
                db.close().unwrap();
            }
        }
        std::fs::remove_dir_all(&trial).unwrap();
    }
}
