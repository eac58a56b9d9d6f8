use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn small_options() -> Options {
    Options {
        memtable_size_bytes: 16 << 10,
        level0_compaction_trigger: 2,
        level0_slowdown_trigger: 6,
        level0_stop_trigger: 10,
        level1_size_bytes: 64 << 10,
        level_size_multiplier: 4,
        level_count: 4,
        table_size_bytes: 32 << 10,
        block_size_bytes: 1024,
        wal_preallocate_bytes: 64 << 10,
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

#[test]
fn put_get_delete_and_reopen() {
    let directory = tempfile::tempdir().unwrap();
    let db = Db::open(directory.path(), small_options()).unwrap();
    db.put(b"a", b"1", &WriteOptions::default()).unwrap();
    db.put(b"b", b"2", &WriteOptions { sync: true }).unwrap();
    db.delete(b"a", &WriteOptions::default()).unwrap();
    assert_eq!(db.get(b"a").unwrap(), None);
    assert_eq!(db.get(b"b").unwrap(), Some(b"2".to_vec()));
    db.close().unwrap();
    let db = Db::open(directory.path(), small_options()).unwrap();
    assert_eq!(db.get(b"a").unwrap(), None);
    assert_eq!(db.get(b"b").unwrap(), Some(b"2".to_vec()));
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let _db = Db::open(directory.path(), small_options()).unwrap();
    assert!(matches!(
        Db::open(directory.path(), small_options()),
        Err(Error::Locked { .. })
    ));
}

#[test]
fn oversized_keys_and_values_are_refused_and_nothing_is_written() {
    let directory = tempfile::tempdir().unwrap();
    let options = Options {
        key_size_max_bytes: 8,
        value_size_max_bytes: 16,
        ..small_options()
    };
    let db = Db::open(directory.path(), options).unwrap();
    assert!(matches!(
        db.put(b"a-key-too-long", b"v", &WriteOptions::default()),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        db.put(b"k", &[0u8; 17], &WriteOptions::default()),
        Err(Error::InvalidArgument(_))
    ));
    assert!(collect(&db).is_empty());
}

#[test]
fn a_snapshot_keeps_its_view_through_writes_flushes_and_compactions() {
    let directory = tempfile::tempdir().unwrap();
    let db = Db::open(directory.path(), small_options()).unwrap();
    for index in 0..500u32 {
        db.put(&index.to_be_bytes(), b"old", &WriteOptions::default())
            .unwrap();
    }
    let snapshot = db.snapshot();
    for index in 0..500u32 {
        if index % 2 == 0 {
            db.delete(&index.to_be_bytes(), &WriteOptions::default())
                .unwrap();
        } else {
            db.put(&index.to_be_bytes(), b"new", &WriteOptions::default())
                .unwrap();
        }
    }
    db.compact().unwrap();
    for index in 0..500u32 {
        assert_eq!(
            db.get_snapshot(&index.to_be_bytes(), &snapshot).unwrap(),
            Some(b"old".to_vec())
        );
        let now = db.get(&index.to_be_bytes()).unwrap();
        assert_eq!(now, (index % 2 == 1).then(|| b"new".to_vec()));
    }
    drop(snapshot);
    db.compact().unwrap();
    assert_eq!(collect(&db).len(), 250);
}

#[test]
fn overwrites_and_deletes_shrink_to_live_data_after_full_compaction() {
    let directory = tempfile::tempdir().unwrap();
    let db = Db::open(directory.path(), small_options()).unwrap();
    let value = vec![7u8; 100];
    for round in 0..5 {
        for index in 0..2000u32 {
            db.put(&index.to_be_bytes(), &value, &WriteOptions::default())
                .unwrap();
        }
        if round == 4 {
            for index in 1000..2000u32 {
                db.delete(&index.to_be_bytes(), &WriteOptions::default())
                    .unwrap();
            }
        }
    }
    db.compact().unwrap();
    let stats = db.stats();
    assert_eq!(stats.level_tables[0], 0, "{stats:?}");
    assert_eq!(collect(&db).len(), 1000);
    // 1000 live keys of ~108 bytes, compressed: far below the 5 rounds written.
    assert!(
        db.size_on_disk_bytes() < 2000 * 108,
        "{} bytes",
        db.size_on_disk_bytes()
    );
}

#[test]
fn a_failed_log_write_fails_the_write_and_leaves_the_database_read_only_until_reopened() {
    let directory = tempfile::tempdir().unwrap();
    let db = Db::open(directory.path(), small_options()).unwrap();
    db.put(b"before", b"1", &WriteOptions { sync: true })
        .unwrap();
    db.inner
        .fail_next_append
        .store(true, AtomicOrdering::Release);
    let failed = db.put(b"during", b"2", &WriteOptions::default());
    assert!(matches!(failed, Err(Error::Io { .. })), "{failed:?}");
    assert!(matches!(
        db.put(b"after", b"3", &WriteOptions::default()),
        Err(Error::ReadOnly { .. })
    ));
    // Reads still work and see exactly what was acknowledged.
    assert_eq!(db.get(b"before").unwrap(), Some(b"1".to_vec()));
    assert_eq!(db.get(b"during").unwrap(), None);
    drop(db);
    let db = Db::open(directory.path(), small_options()).unwrap();
    assert_eq!(db.get(b"before").unwrap(), Some(b"1".to_vec()));
    assert_eq!(db.get(b"during").unwrap(), None);
    db.put(b"after", b"3", &WriteOptions::default()).unwrap();
}

#[derive(Debug, Clone)]
enum Operation {
    Put(Vec<u8>, Vec<u8>, bool),
    Delete(Vec<u8>, bool),
    Batch(Vec<(Vec<u8>, Option<Vec<u8>>)>),
    Get(Vec<u8>),
    Scan(Vec<u8>, Vec<u8>),
    Flush,
    Compact,
    Reopen,
    MachineCrash,
}

fn random_key(rng: &mut StdRng) -> Vec<u8> {
    format!("key{:04}", rng.random_range(0..300u32)).into_bytes()
}

fn random_operation(rng: &mut StdRng) -> Operation {
    match rng.random_range(0..1000u32) {
        0..450 => Operation::Put(
            random_key(rng),
            vec![rng.random::<u8>(); rng.random_range(0..200)],
            rng.random_bool(0.05),
        ),
        450..600 => Operation::Delete(random_key(rng), rng.random_bool(0.05)),
        600..680 => Operation::Batch(
            (0..rng.random_range(1..5))
                .map(|_| {
                    let key = random_key(rng);
                    (
                        key,
                        rng.random_bool(0.7).then(|| vec![rng.random::<u8>(); 30]),
                    )
                })
                .collect(),
        ),
        680..880 => Operation::Get(random_key(rng)),
        880..930 => {
            let (a, b) = (random_key(rng), random_key(rng));
            Operation::Scan(a.clone().min(b.clone()), a.max(b))
        }
        930..960 => Operation::Flush,
        960..975 => Operation::Compact,
        975..990 => Operation::Reopen,
        _ => Operation::MachineCrash,
    }
}

/// Random operations checked against a map. After a machine crash, each key
/// may hold any value it had since the last durable write (the log lost the
/// rest, but flushes may have kept some of it); the model then adopts what
/// the database holds.
fn run_model(seed: u64, operations: usize) {
    let directory = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut db = Some(Db::open(directory.path(), small_options()).unwrap());
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    // Values each key has had since the last synced write (None = absent).
    let mut since_sync: BTreeMap<Vec<u8>, Vec<Option<Vec<u8>>>> = BTreeMap::new();
    let write = |model: &mut BTreeMap<Vec<u8>, Vec<u8>>,
                 since_sync: &mut BTreeMap<Vec<u8>, Vec<Option<Vec<u8>>>>,
                 key: &[u8],
                 value: Option<Vec<u8>>| {
        let before = model.get(key).cloned();
        since_sync
            .entry(key.to_vec())
            .or_insert_with(|| vec![before])
            .push(value.clone());
        match value {
            Some(value) => model.insert(key.to_vec(), value),
            None => model.remove(key),
        };
    };
    for step in 0..operations {
        let operation = random_operation(&mut rng);
        let context = format!("seed {seed} step {step}: {operation:?}");
        let current = db.as_ref().expect("open");
        match operation {
            Operation::Put(key, value, sync) => {
                current
                    .put(&key, &value, &WriteOptions { sync })
                    .expect(&context);
                write(&mut model, &mut since_sync, &key, Some(value));
                if sync {
                    since_sync.clear();
                }
            }
            Operation::Delete(key, sync) => {
                current
                    .delete(&key, &WriteOptions { sync })
                    .expect(&context);
                write(&mut model, &mut since_sync, &key, None);
                if sync {
                    since_sync.clear();
                }
            }
            Operation::Batch(entries) => {
                let mut batch = WriteBatch::new();
                for (key, value) in &entries {
                    match value {
                        Some(value) => batch.put(key, value),
                        None => batch.delete(key),
                    }
                }
                current
                    .write(&batch, &WriteOptions::default())
                    .expect(&context);
                for (key, value) in entries {
                    write(&mut model, &mut since_sync, &key, value);
                }
            }
            Operation::Get(key) => {
                assert_eq!(
                    current.get(&key).expect(&context),
                    model.get(&key).cloned(),
                    "{context}"
                );
            }
            Operation::Scan(start, end) => {
                let expected: Vec<_> = model
                    .range(start.clone()..end.clone())
                    .map(|(key, value)| (key.clone(), value.clone()))
                    .collect();
                assert_eq!(
                    current.scan(&start, &end, usize::MAX).expect(&context),
                    expected,
                    "{context}"
                );
            }
            Operation::Flush => {
                current.flush().expect(&context);
                // A flush makes everything before it durable.
                since_sync.clear();
            }
            Operation::Compact => {
                current.compact().expect(&context);
                since_sync.clear();
                assert_eq!(collect(current), model, "{context}");
            }
            Operation::Reopen => {
                db.take().expect("open").close().expect(&context);
                let reopened = Db::open(directory.path(), small_options()).expect(&context);
                assert_eq!(collect(&reopened), model, "{context}");
                db = Some(reopened);
                since_sync.clear();
            }
            Operation::MachineCrash => {
                db.take().expect("open").simulate_machine_crash();
                let reopened = Db::open(directory.path(), small_options()).expect(&context);
                let recovered = collect(&reopened);
                let keys: std::collections::BTreeSet<Vec<u8>> =
                    model.keys().chain(recovered.keys()).cloned().collect();
                for key in keys {
                    let found = recovered.get(&key).cloned();
                    match since_sync.get(&key) {
                        Some(allowed) => assert!(
                            allowed.contains(&found),
                            "{context}: key {key:?} recovered as {found:?}, allowed {allowed:?}"
                        ),
                        None => assert_eq!(
                            found,
                            model.get(&key).cloned(),
                            "{context}: key {key:?} lost a durable write"
                        ),
                    }
                }
                model = recovered;
                since_sync.clear();
                db = Some(reopened);
            }
        }
    }
}

#[test]
fn random_operations_match_a_model_across_flushes_compactions_reopens_and_crashes() {
    let seeds: u64 = std::env::var("SHOAL_STORAGE_MODEL_SEEDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(8);
    for seed in 0..seeds {
        run_model(seed, 1500);
    }
}

/// Two writers can find the memtable full at once; the second reaches the
/// switch after the first made it. It must see that nothing is left to
/// switch rather than wait, holding the writer lock, for the flush of the
/// memtable just frozen (a bug that stopped every writer for a whole flush).
#[test]
fn a_switch_with_nothing_left_to_switch_does_not_wait_for_the_flush() {
    let directory = tempfile::tempdir().unwrap();
    let options = Options {
        max_immutable_memtables: 1,
        ..small_options()
    };
    let db = Db::open(directory.path(), options).unwrap();
    // The flush can build its table but not record it: the frozen memtable
    // stays in place while the guard is held.
    let manifest = db
        .inner
        .manifest
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let value = vec![7u8; 100];
    let mut index = 0u32;
    while db.inner.lock_state().imms.is_empty() {
        db.put(
            format!("key{index:06}").as_bytes(),
            &value,
            &WriteOptions::default(),
        )
        .unwrap();
        index += 1;
    }
    // The frozen memtable fills the only slot; the new one is nearly empty.
    let inner = Arc::clone(&db.inner);
    let (done, finished) = std::sync::mpsc::channel();
    let switcher = std::thread::spawn(move || {
        let result = inner.switch_memtable(false);
        let _ = done.send(result.is_ok());
    });
    // A switch that waits for the flush never ends while the guard is held.
    let answered = finished.recv_timeout(Duration::from_secs(10));
    drop(manifest);
    switcher.join().unwrap();
    assert_eq!(answered, Ok(true), "the switch waited for the flush");
    db.flush().unwrap();
    assert_eq!(
        db.get(b"key000000").unwrap().as_deref(),
        Some(value.as_slice())
    );
}

/// Writes that reached a memtable frozen before the flush thread synced its
/// log, then a synced write (or an interval sync) in the next log, then a
/// machine crash: the earlier writes must survive. A crash must never keep a
/// later write and lose an earlier one; before the fix, only the current log
/// was fsynced and the frozen one's writes were lost.
#[test]
fn a_sync_after_a_memtable_switch_makes_the_frozen_log_durable_first() {
    for interval in [false, true] {
        let directory = tempfile::tempdir().unwrap();
        let options = Options {
            sync_mode: if interval {
                SyncMode::Interval(Duration::from_millis(5))
            } else {
                SyncMode::Never
            },
            ..small_options()
        };
        let db = Db::open(directory.path(), options.clone()).unwrap();
        db.hold_flushes(true);
        let key = |index: usize| format!("early{index:05}").into_bytes();
        let mut written = 0;
        while db.inner.lock_state().imms.is_empty() {
            db.put(&key(written), &[7u8; 100], &WriteOptions::default())
                .unwrap();
            written += 1;
        }
        db.put(b"late", b"synced", &WriteOptions { sync: !interval })
            .unwrap();
        if interval {
            // Wait for an interval sync that covers the late write.
            let log = db.inner.current_wal.load(AtomicOrdering::Acquire);
            let offset = db.inner.appended.load(AtomicOrdering::Acquire);
            let started = Instant::now();
            while db.inner.sync.lock().unwrap().synced < (log, offset) {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "no interval sync"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        db.simulate_machine_crash();
        let reopened = Db::open(directory.path(), options).unwrap();
        assert_eq!(
            reopened.get(b"late").unwrap(),
            Some(b"synced".to_vec()),
            "interval {interval}"
        );
        for index in 0..written {
            assert_eq!(
                reopened.get(&key(index)).unwrap(),
                Some(vec![7u8; 100]),
                "interval {interval}: early write {index} of {written} lost while a later one was kept"
            );
        }
    }
}
