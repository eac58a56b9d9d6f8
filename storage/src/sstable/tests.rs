use super::*;
use crate::key::{ValueKind, internal_key, parse_internal_key};
use proptest::prelude::*;
use std::collections::BTreeMap;

type Model = BTreeMap<(Vec<u8>, std::cmp::Reverse<u64>), (ValueKind, Vec<u8>)>;

/// Writes a table of `(user key, sequence, kind, value)` entries.
fn write_table(path: &Path, entries: &Model, options: &TableOptions) -> TableSummary {
    let mut builder = TableBuilder::create(path, options).unwrap();
    for ((key, sequence), (kind, value)) in entries {
        builder
            .add(&internal_key(key, sequence.0, *kind), value)
            .unwrap();
    }
    builder.finish().unwrap()
}

fn model_get(model: &Model, key: &[u8], sequence_max: u64) -> Option<(ValueKind, Vec<u8>)> {
    model
        .range((key.to_vec(), std::cmp::Reverse(sequence_max))..)
        .next()
        .filter(|((found, _), _)| found.as_slice() == key)
        .map(|(_, entry)| entry.clone())
}

fn small_options(compression: Compression) -> TableOptions {
    TableOptions {
        block_size_bytes: 256,
        restart_interval: 4,
        bloom_bits_per_key: 10,
        compression,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn table_reads_match_a_sorted_map(
        entries in proptest::collection::btree_map(
            (proptest::collection::vec(0u8..6, 0..5), (1u64..20).prop_map(std::cmp::Reverse)),
            (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..40)),
            1..200,
        ),
        compress in 0u8..3,
        probes in proptest::collection::vec((proptest::collection::vec(0u8..6, 0..5), 0u64..22), 1..40),
        probes_for_seek in proptest::collection::vec((proptest::collection::vec(0u8..7, 0..6), 0u64..22), 1..40),
    ) {
        let model: Model = entries
            .into_iter()
            .map(|(key, (deletion, value))| {
                let kind = if deletion { ValueKind::Deletion } else { ValueKind::Value };
                (key, (kind, if deletion { Vec::new() } else { value }))
            })
            .collect();
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("t.sst");
        let compression = [Compression::None, Compression::Lz4, Compression::Snappy][usize::from(compress)];
        let summary = write_table(&path, &model, &small_options(compression));
        let table = Arc::new(Table::open(&path).unwrap());
        prop_assert_eq!(table.summary(), &summary);
        prop_assert_eq!(summary.entries as usize, model.len());

        for (key, sequence) in probes {
            prop_assert_eq!(table.get(&key, sequence).unwrap(), model_get(&model, &key, sequence));
        }

        // A full scan yields exactly the model, in order.
        let mut iterator = table.iter();
        iterator.seek_to_first().unwrap();
        let mut scanned = Vec::new();
        while iterator.valid() {
            let parsed = parse_internal_key(iterator.key()).unwrap();
            scanned.push(((parsed.user_key.to_vec(), std::cmp::Reverse(parsed.sequence)), (parsed.kind, iterator.value().to_vec())));
            iterator.next().unwrap();
        }
        let expected: Vec<_> = model.clone().into_iter().collect();
        prop_assert_eq!(scanned, expected);

        // Seek lands on the first entry at or after the target.
        for ((key, sequence), _) in model.iter().take(10) {
            let target = internal_key(key, sequence.0, ValueKind::Value);
            iterator.seek(&target).unwrap();
            prop_assert!(iterator.valid());
            let expected = internal_key(key, sequence.0, model[&(key.clone(), *sequence)].0);
            prop_assert_eq!(iterator.key(), expected.as_slice());
        }

        // Seeking anywhere, gaps included, lands where the model's range starts.
        for (key, sequence) in probes_for_seek {
            iterator.seek(&internal_key(&key, sequence, ValueKind::Value)).unwrap();
            match model.range((key, std::cmp::Reverse(sequence))..).next() {
                Some(((user_key, found_sequence), (kind, value))) => {
                    prop_assert!(iterator.valid());
                    let expected = internal_key(user_key, found_sequence.0, *kind);
                    prop_assert_eq!(iterator.key(), expected.as_slice());
                    prop_assert_eq!(iterator.value(), value.as_slice());
                }
                None => prop_assert!(!iterator.valid()),
            }
        }
    }
}

fn sample_model(count: u32) -> Model {
    (0..count)
        .map(|index| {
            (
                (
                    format!("key{index:06}").into_bytes(),
                    std::cmp::Reverse(u64::from(index) + 1),
                ),
                (
                    ValueKind::Value,
                    format!("value-{index}-{}", "x".repeat(20)).into_bytes(),
                ),
            )
        })
        .collect()
}

#[test]
fn every_bit_flip_is_an_error_or_the_right_answer() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("t.sst");
    let model = sample_model(60);
    write_table(&path, &model, &small_options(Compression::Lz4));
    let original = std::fs::read(&path).unwrap();
    let flipped_path = directory.path().join("flipped.sst");
    for position in 0..original.len() {
        let mut bytes = original.clone();
        bytes[position] ^= 1 << (position % 8);
        std::fs::write(&flipped_path, &bytes).unwrap();
        let table = match Table::open(&flipped_path) {
            Ok(table) => Arc::new(table),
            Err(Error::Corruption { path, .. }) => {
                assert_eq!(path, flipped_path);
                continue;
            }
            Err(other) => panic!("flip at {position}: unexpected {other}"),
        };
        for ((key, sequence), entry) in &model {
            match table.get(key, sequence.0) {
                Ok(Some(found)) => assert_eq!(&found, entry, "flip at {position}"),
                // The filter may be damaged into saying "absent" only if its
                // block checksum still passed, which a flip cannot do.
                Ok(None) => panic!("flip at {position} hid key {key:?}"),
                Err(Error::Corruption { .. }) => {}
                Err(other) => panic!("flip at {position}: unexpected {other}"),
            }
        }
    }
}

#[test]
fn every_truncation_is_refused_at_open() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("t.sst");
    write_table(&path, &sample_model(30), &small_options(Compression::None));
    let original = std::fs::read(&path).unwrap();
    let cut_path = directory.path().join("cut.sst");
    for length in 0..original.len() {
        std::fs::write(&cut_path, &original[..length]).unwrap();
        assert!(
            matches!(Table::open(&cut_path), Err(Error::Corruption { .. })),
            "truncated to {length}"
        );
    }
}

#[test]
fn compression_shrinks_compressible_values() {
    let directory = tempfile::tempdir().unwrap();
    let model = sample_model(2000);
    let raw = write_table(
        &directory.path().join("raw.sst"),
        &model,
        &TableOptions {
            compression: Compression::None,
            ..TableOptions::default()
        },
    );
    for compression in [Compression::Lz4, Compression::Snappy] {
        let name = format!("{compression:?}.sst");
        let compressed = write_table(
            &directory.path().join(name),
            &model,
            &TableOptions {
                compression,
                ..TableOptions::default()
            },
        );
        assert!(
            compressed.file_size_bytes < raw.file_size_bytes * 3 / 4,
            "{compression:?}: {} vs {}",
            compressed.file_size_bytes,
            raw.file_size_bytes
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn separators_fall_between_neighbouring_keys(
        first in (proptest::collection::vec(any::<u8>(), 0..12), 0u64..100, any::<bool>()),
        second in (proptest::collection::vec(any::<u8>(), 0..12), 0u64..100, any::<bool>()),
    ) {
        let encode = |(key, sequence, deletion): &(Vec<u8>, u64, bool)| {
            let kind = if *deletion { ValueKind::Deletion } else { ValueKind::Value };
            internal_key(key, *sequence, kind)
        };
        let (a, b) = (encode(&first), encode(&second));
        let (last, next) = match compare_internal_keys(&a, &b) {
            Ordering::Less => (a, b),
            Ordering::Greater => (b, a),
            Ordering::Equal => return Ok(()),
        };
        let separator = shortest_separator(&last, &next);
        prop_assert_ne!(compare_internal_keys(&separator, &last), Ordering::Less);
        prop_assert_eq!(compare_internal_keys(&separator, &next), Ordering::Less);
        prop_assert!(separator.len() <= last.len());
    }
}

#[test]
fn separators_shorten_decimal_keys() {
    let last = internal_key(b"0000000000123456", 0, ValueKind::Value);
    let next = internal_key(b"0000000000123789", 0, ValueKind::Value);
    let separator = shortest_separator(&last, &next);
    assert_eq!(crate::key::user_key(&separator), b"00000000001235");
}

/// A table written in format 1 (LZ4 blocks, whole last keys and fixed-width
/// handles in the index), as tables were before format 2: still readable.
#[test]
fn format_1_tables_are_still_read() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format1.sst");
    let table = Arc::new(Table::open(&path).unwrap());
    let model = sample_model(300);
    assert_eq!(table.summary().entries as usize, model.len());
    for ((key, sequence), entry) in &model {
        assert_eq!(table.get(key, sequence.0).unwrap().as_ref(), Some(entry));
    }
    let mut iterator = table.iter();
    iterator.seek_to_first().unwrap();
    let mut count = 0;
    while iterator.valid() {
        count += 1;
        iterator.next().unwrap();
    }
    assert_eq!(count, model.len());
}

#[test]
fn missing_keys_are_mostly_answered_by_the_filter() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("t.sst");
    write_table(&path, &sample_model(5000), &TableOptions::default());
    let table = Table::open(&path).unwrap();
    let passed = (0..10_000u32)
        .filter(|index| may_contain(&table.filter, format!("absent{index}").as_bytes()))
        .count();
    assert!(
        passed < 200,
        "{passed} of 10000 absent keys passed the filter"
    );
    assert_eq!(table.get(b"absent", SEQUENCE_MAX).unwrap(), None);
}
