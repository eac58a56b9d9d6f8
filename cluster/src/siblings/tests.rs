use super::*;
use crate::version_vector::tests::actor;
use proptest::prelude::*;
use std::collections::BTreeSet;

fn value(text: &str) -> SiblingValue {
    SiblingValue::Value(Bytes::copy_from_slice(text.as_bytes()))
}

fn dots(state: &KeyState) -> BTreeSet<Dot> {
    state.siblings.iter().map(|sibling| sibling.dot).collect()
}

#[test]
fn blind_write_lands_beside_existing_siblings() {
    let mut state = KeyState::new();
    state.coordinate_write(actor(1), &VersionVector::new(), value("a"), 1);
    state.coordinate_write(actor(1), &VersionVector::new(), value("b"), 2);
    assert_eq!(state.sibling_count(), 2);
}

#[test]
fn write_with_context_supersedes_exactly_what_was_read() {
    let mut state = KeyState::new();
    state.coordinate_write(actor(1), &VersionVector::new(), value("a"), 1);
    let context = state.context();
    let mut other = KeyState::new();
    other.coordinate_write(actor(2), &VersionVector::new(), value("concurrent"), 1);
    state.sync(&other);
    state.coordinate_write(actor(1), &context, value("b"), 2);
    let values: Vec<_> = state.values().cloned().collect();
    assert_eq!(
        values.len(),
        2,
        "the concurrent write was not read, so it stays"
    );
    assert!(values.contains(&Bytes::from_static(b"b")));
    assert!(values.contains(&Bytes::from_static(b"concurrent")));
}

#[test]
fn a_dot_is_never_one_the_context_already_covers() {
    // The replica lost its state (a disk wipe without an epoch change), but
    // the client still holds a context naming the replica's old dots.
    let mut before = KeyState::new();
    for _ in 0..3 {
        let context = before.context();
        before.coordinate_write(actor(1), &context, value("x"), 1);
    }
    let mut wiped = KeyState::new();
    let dot = wiped.coordinate_write(actor(1), &before.context(), value("y"), 2);
    assert!(!before.context().covers(&dot));
}

#[test]
fn delete_is_a_tombstone_sibling_that_hides_the_value() {
    let mut state = KeyState::new();
    state.coordinate_write(actor(1), &VersionVector::new(), value("a"), 1);
    let context = state.context();
    state.coordinate_write(actor(1), &context, SiblingValue::Tombstone, 2);
    assert!(state.is_deleted());
    assert_eq!(state.sibling_count(), 1);
}

#[test]
fn lww_keeps_the_highest_timestamp_and_sync_agrees() {
    let mut a = KeyState::new();
    a.coordinate_write(actor(1), &VersionVector::new(), value("old"), 10);
    let mut b = KeyState::new();
    b.coordinate_write(actor(2), &VersionVector::new(), value("new"), 20);
    let mut merged = a.clone();
    merged.sync(&b);
    merged.apply_policy(ConflictPolicy::Lww);
    assert_eq!(
        merged.values().cloned().collect::<Vec<_>>(),
        vec![Bytes::from_static(b"new")]
    );
    // A replica still holding the loser does not bring it back.
    let mut again = merged.clone();
    again.sync(&a);
    assert_eq!(again, merged);
}

#[test]
fn dominates_or_equals_is_false_when_the_other_has_a_newer_write() {
    let mut a = KeyState::new();
    a.coordinate_write(actor(1), &VersionVector::new(), value("a"), 1);
    let mut b = a.clone();
    let context = b.context();
    b.coordinate_write(actor(2), &context, value("b"), 2);
    assert!(b.dominates_or_equals(&a));
    assert!(!a.dominates_or_equals(&b));
}

#[test]
fn decode_rejects_corruption_truncation_and_oversize() {
    let mut state = KeyState::new();
    state.coordinate_write(actor(1), &VersionVector::new(), value("hello"), 1);
    let encoded = state.encode();
    assert_eq!(KeyState::decode(&encoded).unwrap(), state);

    let mut flipped = encoded.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    assert_eq!(KeyState::decode(&flipped), Err(DecodeError::Checksum));
    assert!(matches!(
        KeyState::decode(&encoded[..3]),
        Err(DecodeError::Truncated { .. })
    ));
    assert!(matches!(
        KeyState::decode_with_limit(&encoded, 4),
        Err(DecodeError::TooLarge { .. })
    ));
    let mut future = encoded.clone();
    future[0] = 99;
    assert_eq!(
        KeyState::decode(&future),
        Err(DecodeError::UnknownVersion(99))
    );
}

#[test]
fn decode_rejects_a_sibling_its_clock_does_not_cover() {
    let state = KeyState {
        clock: VersionVector::new(),
        siblings: vec![Sibling {
            dot: Dot {
                actor: actor(1),
                counter: 1,
            },
            value: value("x"),
            timestamp: 0,
        }],
    };
    assert!(matches!(
        KeyState::decode(&state.encode()),
        Err(DecodeError::Malformed(_))
    ));
}

/// One step of a replicated history over three replicas.
#[derive(Debug, Clone)]
enum Step {
    /// Replica `at` coordinates a write whose context is the state the client
    /// read from replica `read_from` `staleness` steps ago (or blind).
    Write {
        at: usize,
        read_from: usize,
        blind: bool,
        delete: bool,
    },
    /// Replica `into` syncs replica `from`'s state.
    Sync { into: usize, from: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (
            0..3usize,
            0..3usize,
            any::<bool>(),
            prop::bool::weighted(0.15)
        )
            .prop_map(|(at, read_from, blind, delete)| Step::Write {
                at,
                read_from,
                blind,
                delete
            }),
        (0..3usize, 0..3usize).prop_map(|(into, from)| Step::Sync { into, from }),
    ]
}

/// Replays a history; returns the replicas and, for every write, its dot and
/// the context it was written with.
fn replay(steps: &[Step]) -> (Vec<KeyState>, Vec<(Dot, VersionVector)>) {
    let mut replicas = vec![KeyState::new(); 3];
    let mut writes = Vec::new();
    for (index, step) in steps.iter().enumerate() {
        match step {
            Step::Write {
                at,
                read_from,
                blind,
                delete,
            } => {
                let context = if *blind {
                    VersionVector::new()
                } else {
                    replicas[*read_from].context()
                };
                let payload = if *delete {
                    SiblingValue::Tombstone
                } else {
                    value(&format!("w{index}"))
                };
                let dot = replicas[*at].coordinate_write(
                    actor(*at as u64),
                    &context,
                    payload,
                    index as u64,
                );
                writes.push((dot, context));
            }
            Step::Sync { into, from } => {
                let source = replicas[*from].clone();
                replicas[*into].sync(&source);
            }
        }
    }
    (replicas, writes)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn sync_is_commutative_associative_and_idempotent(steps in proptest::collection::vec(step(), 0..30)) {
        let (replicas, _) = replay(&steps);
        let (a, b, c) = (&replicas[0], &replicas[1], &replicas[2]);

        let mut ab = a.clone();
        ab.sync(b);
        let mut ba = b.clone();
        ba.sync(a);
        prop_assert_eq!(&ab, &ba);

        let mut ab_c = ab.clone();
        ab_c.sync(c);
        let mut bc = b.clone();
        bc.sync(c);
        let mut a_bc = a.clone();
        a_bc.sync(&bc);
        prop_assert_eq!(&ab_c, &a_bc);

        let mut aa = a.clone();
        aa.sync(a);
        prop_assert_eq!(&aa, a);
        prop_assert!(ab_c.validate().is_ok());
    }

    #[test]
    fn no_write_covered_by_nobodys_context_is_ever_dropped(steps in proptest::collection::vec(step(), 0..40)) {
        let (replicas, writes) = replay(&steps);
        let mut merged = KeyState::new();
        for replica in &replicas {
            merged.sync(replica);
        }
        let surviving = dots(&merged);
        for (dot, _) in &writes {
            let superseded = writes.iter().any(|(_, context)| context.covers(dot));
            prop_assert_eq!(
                surviving.contains(dot),
                !superseded,
                "dot {:?}: superseded={}", dot, superseded
            );
        }
    }

    #[test]
    fn dominates_or_equals_matches_sync_leaving_the_state_unchanged(steps in proptest::collection::vec(step(), 0..30)) {
        let (replicas, _) = replay(&steps);
        for a in &replicas {
            for b in &replicas {
                let mut merged = a.clone();
                merged.sync(b);
                prop_assert_eq!(a.dominates_or_equals(b), &merged == a);
            }
        }
    }

    #[test]
    fn encoding_round_trips(steps in proptest::collection::vec(step(), 0..30)) {
        let (replicas, _) = replay(&steps);
        for replica in &replicas {
            prop_assert_eq!(&KeyState::decode(&replica.encode()).unwrap(), replica);
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256), fix_header in any::<bool>()) {
        let mut bytes = bytes;
        if fix_header && bytes.len() >= HEADER_BYTES {
            // Give the fuzzed payload a valid envelope so postcard sees it.
            bytes[0] = ENCODING_VERSION;
            let checksum = crc32fast::hash(&bytes[HEADER_BYTES..]);
            bytes[1..HEADER_BYTES].copy_from_slice(&checksum.to_le_bytes());
        }
        if let Ok(state) = KeyState::decode(&bytes) {
            prop_assert!(state.validate().is_ok());
        }
    }
}
