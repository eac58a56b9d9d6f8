//! Internal keys: how a user key, the sequence number of the write that made
//! it, and the kind of that write (value or deletion) are laid out in the
//! memtable, the WAL and SSTables.
//!
//! An internal key is `user_key ‖ trailer`, where the trailer is 8 bytes,
//! big-endian, of `(sequence << 8) | kind`. Internal keys are ordered by user
//! key ascending (bytewise), then by sequence **descending**, so that a seek to
//! `(key, snapshot)` lands on the newest version visible at that snapshot.
//! Invariant: sequence numbers fit in 56 bits and are never reused.

use std::cmp::Ordering;

/// Size of the trailer appended to every user key.
pub const TRAILER_BYTES: usize = 8;

/// The largest sequence number; also the "see everything" snapshot.
pub const SEQUENCE_MAX: u64 = (1 << 56) - 1;

/// What a versioned entry records about its user key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ValueKind {
    /// The key was deleted; the entry has no value.
    Deletion = 0,
    /// The key was set to the entry's value.
    Value = 1,
}

impl ValueKind {
    /// Decodes a kind byte; `None` for bytes no writer produces.
    pub fn from_u8(byte: u8) -> Option<ValueKind> {
        match byte {
            0 => Some(ValueKind::Deletion),
            1 => Some(ValueKind::Value),
            _ => None,
        }
    }
}

/// Appends the internal key for `(user_key, sequence, kind)` to `out`.
pub fn encode_internal_key(out: &mut Vec<u8>, user_key: &[u8], sequence: u64, kind: ValueKind) {
    debug_assert!(sequence <= SEQUENCE_MAX);
    out.extend_from_slice(user_key);
    out.extend_from_slice(&((sequence << 8) | kind as u64).to_be_bytes());
}

/// Returns the internal key for `(user_key, sequence, kind)`.
pub fn internal_key(user_key: &[u8], sequence: u64, kind: ValueKind) -> Vec<u8> {
    let mut out = Vec::with_capacity(user_key.len() + TRAILER_BYTES);
    encode_internal_key(&mut out, user_key, sequence, kind);
    out
}

/// A borrowed, decoded internal key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedKey<'a> {
    /// The user's key.
    pub user_key: &'a [u8],
    /// The sequence number of the write.
    pub sequence: u64,
    /// Value or deletion.
    pub kind: ValueKind,
}

/// Splits an internal key; `None` if it is too short or its kind byte is unknown.
pub fn parse_internal_key(internal: &[u8]) -> Option<ParsedKey<'_>> {
    let split = internal.len().checked_sub(TRAILER_BYTES)?;
    let (user_key, trailer) = internal.split_at(split);
    let trailer = u64::from_be_bytes(trailer.try_into().ok()?);
    Some(ParsedKey {
        user_key,
        sequence: trailer >> 8,
        kind: ValueKind::from_u8((trailer & 0xff) as u8)?,
    })
}

/// The user-key part of an internal key (the whole slice if it is too short).
pub fn user_key(internal: &[u8]) -> &[u8] {
    &internal[..internal.len().saturating_sub(TRAILER_BYTES)]
}

/// Orders internal keys: user key ascending, then sequence descending.
/// Keys too short to hold a trailer sort by their bytes alone.
pub fn compare_internal_keys(a: &[u8], b: &[u8]) -> Ordering {
    if a.len() < TRAILER_BYTES || b.len() < TRAILER_BYTES {
        return a.cmp(b);
    }
    let (a_user, a_trailer) = a.split_at(a.len() - TRAILER_BYTES);
    let (b_user, b_trailer) = b.split_at(b.len() - TRAILER_BYTES);
    a_user.cmp(b_user).then_with(|| b_trailer.cmp(a_trailer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn newer_sequence_sorts_first_for_the_same_user_key() {
        let old = internal_key(b"k", 5, ValueKind::Value);
        let new = internal_key(b"k", 9, ValueKind::Deletion);
        assert_eq!(compare_internal_keys(&new, &old), Ordering::Less);
    }

    #[test]
    fn user_key_prefix_sorts_before_longer_key() {
        let short = internal_key(b"ab", 1, ValueKind::Value);
        let long = internal_key(b"abc", 100, ValueKind::Value);
        assert_eq!(compare_internal_keys(&short, &long), Ordering::Less);
    }

    proptest! {
        #[test]
        fn internal_key_round_trips(key in proptest::collection::vec(any::<u8>(), 0..64), sequence in 0..=SEQUENCE_MAX, deletion in any::<bool>()) {
            let kind = if deletion { ValueKind::Deletion } else { ValueKind::Value };
            let encoded = internal_key(&key, sequence, kind);
            let parsed = parse_internal_key(&encoded).unwrap();
            prop_assert_eq!(parsed.user_key, &key[..]);
            prop_assert_eq!(parsed.sequence, sequence);
            prop_assert_eq!(parsed.kind, kind);
        }

        #[test]
        fn order_matches_user_key_then_reverse_sequence(a in proptest::collection::vec(any::<u8>(), 0..8), b in proptest::collection::vec(any::<u8>(), 0..8), sa in 0..1000u64, sb in 0..1000u64) {
            let ka = internal_key(&a, sa, ValueKind::Value);
            let kb = internal_key(&b, sb, ValueKind::Value);
            let expected = a.cmp(&b).then(sb.cmp(&sa));
            prop_assert_eq!(compare_internal_keys(&ka, &kb), expected);
        }
    }
}
