//! A key's replica state: its causal past (a version vector) and its
//! *siblings*, the concurrent versions no replica has yet seen ordered, each
//! tagged with the dot of the write that made it. This is the dotted version
//! vector set of Preguiça et al. as Riak 2.x uses it (design.md §3).
//!
//! Rules:
//! - A coordinated write at actor `X` with client context `C` issues
//!   `counter = max(clock[X], C[X]) + 1`, keeps the siblings whose dots `C`
//!   does not cover, adds the new sibling, and sets
//!   `clock = clock ⊔ C ⊔ {X: counter}`. A blind write (empty context) covers
//!   nothing, so it lands beside the existing siblings and never overwrites.
//! - `sync` merges two replica states: a sibling survives if the other side
//!   holds the same dot or the other side's clock does not cover it; clocks join.
//!
//! Invariants kept by every operation: siblings are sorted by dot and no dot
//! appears twice; every sibling's dot is covered by the clock. `sync` is
//! commutative, associative and idempotent (property-tested below), so
//! replicas that exchange state in any order converge.

use crate::id::Actor;
use crate::version_vector::{Dot, VersionVector};
use bytes::Bytes;
use std::cmp::Ordering;

/// The payload of one sibling.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum SiblingValue {
    /// A value written by a put.
    Value(Bytes),
    /// A deletion marker, kept until every replica has it.
    Tombstone,
}

/// One concurrent version of a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Sibling {
    /// The write that made this sibling.
    pub dot: Dot,
    /// Its value or tombstone.
    pub value: SiblingValue,
    /// Hybrid-logical-clock timestamp of the write, used only by the `lww` policy.
    pub timestamp: u64,
}

/// How a replica resolves concurrent siblings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ConflictPolicy {
    /// Keep every concurrent sibling; the application resolves them.
    Siblings,
    /// Keep only the sibling with the highest `(timestamp, actor, counter)`.
    Lww,
}

/// A key's replica state: its clock and its live siblings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct KeyState {
    /// The key's causal past: every write this replica has seen.
    pub clock: VersionVector,
    /// Concurrent versions, sorted by dot, no dot twice.
    pub siblings: Vec<Sibling>,
}

/// Why stored or received key-state bytes could not be decoded. Nothing was built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input is longer than the configured maximum.
    #[error("key state of {length} bytes exceeds the maximum of {maximum}")]
    TooLarge {
        /// Input length.
        length: usize,
        /// The limit.
        maximum: usize,
    },
    /// The input is shorter than the envelope header.
    #[error("key state truncated: {length} bytes")]
    Truncated {
        /// Input length.
        length: usize,
    },
    /// The envelope names a format version this build does not read.
    #[error("unknown key state format version {0}")]
    UnknownVersion(u8),
    /// The checksum does not match the payload.
    #[error("key state checksum mismatch")]
    Checksum,
    /// The payload is not a well-formed key state.
    #[error("malformed key state: {0}")]
    Malformed(String),
}

/// Format version byte of the stored encoding.
const ENCODING_VERSION: u8 = 1;
/// Envelope header: version byte and CRC32 of the payload.
const HEADER_BYTES: usize = 5;
/// Largest encoded key state `decode` accepts (siblings × values are bounded
/// well below this by configuration).
pub const ENCODED_SIZE_MAX_BYTES: usize = 256 << 20;

impl KeyState {
    /// The state of a key never written.
    pub fn new() -> KeyState {
        KeyState::default()
    }

    /// Applies a write coordinated by `actor` with the client's `context`, and
    /// returns the dot it issued. Siblings covered by the context are
    /// superseded; the rest remain beside the new one.
    pub fn coordinate_write(
        &mut self,
        actor: Actor,
        context: &VersionVector,
        value: SiblingValue,
        timestamp: u64,
    ) -> Dot {
        // Taking the context's entry too means a dot is never one the client
        // has already seen, even if this replica lost state it once had. An
        // actor's first write to a key starts its counter at the write's
        // timestamp (microseconds): a key whose tombstone was reaped has
        // forgotten its clock, and counting from 1 again could reissue a dot
        // that an old context still covers; the timestamp has moved past
        // every counter of the key's previous life by the grace period.
        let seen = self.clock.get(&actor).max(context.get(&actor));
        let counter = if seen == 0 {
            timestamp.max(1)
        } else {
            seen + 1
        };
        let dot = Dot { actor, counter };
        self.siblings
            .retain(|sibling| !context.covers(&sibling.dot));
        self.clock.join(context);
        self.clock.witness(dot);
        let sibling = Sibling {
            dot,
            value,
            timestamp,
        };
        let position = self
            .siblings
            .binary_search_by(|existing| existing.dot.cmp(&dot))
            .unwrap_or_else(|position| position);
        self.siblings.insert(position, sibling);
        dot
    }

    /// Merges another replica's state of the same key into this one.
    pub fn sync(&mut self, other: &KeyState) {
        let mut merged = Vec::with_capacity(self.siblings.len().max(other.siblings.len()));
        let (mut left, mut right) = (
            self.siblings.iter().peekable(),
            other.siblings.iter().peekable(),
        );
        loop {
            let next = match (left.peek(), right.peek()) {
                (None, None) => break,
                (Some(_), None) => Side::Left,
                (None, Some(_)) => Side::Right,
                (Some(a), Some(b)) => match a.dot.cmp(&b.dot) {
                    Ordering::Less => Side::Left,
                    Ordering::Greater => Side::Right,
                    Ordering::Equal => Side::Both,
                },
            };
            match next {
                Side::Both => {
                    let (Some(a), Some(b)) = (left.next(), right.next()) else {
                        break;
                    };
                    // Both hold the dot. Dots are unique, so the values agree
                    // unless a peer lied; pick deterministically to stay commutative.
                    merged.push(if sibling_order(a, b) == Ordering::Less {
                        b.clone()
                    } else {
                        a.clone()
                    });
                }
                Side::Left => {
                    if let Some(a) = left.next()
                        && !other.clock.covers(&a.dot)
                    {
                        merged.push(a.clone());
                    }
                }
                Side::Right => {
                    if let Some(b) = right.next()
                        && !self.clock.covers(&b.dot)
                    {
                        merged.push(b.clone());
                    }
                }
            }
        }
        self.siblings = merged;
        self.clock.join(&other.clock);
    }

    /// Applies a conflict policy: with [`ConflictPolicy::Lww`] only the sibling
    /// with the highest `(timestamp, actor, counter)` remains; the clock keeps
    /// covering the dropped ones, so `sync` drops them everywhere.
    pub fn apply_policy(&mut self, policy: ConflictPolicy) {
        if policy == ConflictPolicy::Siblings || self.siblings.len() <= 1 {
            return;
        }
        if let Some(winner) = self
            .siblings
            .iter()
            .max_by(|a, b| {
                (a.timestamp, a.dot.actor, a.dot.counter).cmp(&(
                    b.timestamp,
                    b.dot.actor,
                    b.dot.counter,
                ))
            })
            .cloned()
        {
            self.siblings = vec![winner];
        }
    }

    /// The context a reader gets: the clock, covering every sibling returned.
    pub fn context(&self) -> VersionVector {
        self.clock.clone()
    }

    /// The live values (tombstones left out), in dot order.
    pub fn values(&self) -> impl Iterator<Item = &Bytes> {
        self.siblings
            .iter()
            .filter_map(|sibling| match &sibling.value {
                SiblingValue::Value(value) => Some(value),
                SiblingValue::Tombstone => None,
            })
    }

    /// True when no live value remains (never written, or only tombstones).
    pub fn is_deleted(&self) -> bool {
        self.values().next().is_none()
    }

    /// Number of siblings, tombstones included.
    pub fn sibling_count(&self) -> usize {
        self.siblings.len()
    }

    /// True when `other` holds nothing `self` lacks: syncing `other` into
    /// `self` would leave `self` unchanged. Read repair skips such replicas.
    pub fn dominates_or_equals(&self, other: &KeyState) -> bool {
        self.clock.descends(&other.clock)
            && self.siblings.iter().all(|sibling| {
                !other.clock.covers(&sibling.dot)
                    || other
                        .siblings
                        .binary_search_by(|theirs| theirs.dot.cmp(&sibling.dot))
                        .is_ok()
            })
    }

    /// The stored and wire encoding: version byte, CRC32 of the payload
    /// (little-endian), then the postcard payload.
    pub fn encode(&self) -> Vec<u8> {
        let header = vec![ENCODING_VERSION, 0, 0, 0, 0];
        let mut out = postcard::to_extend(self, header)
            .expect("serializing plain data into a Vec cannot fail");
        let checksum = crc32fast::hash(&out[HEADER_BYTES..]);
        out[1..HEADER_BYTES].copy_from_slice(&checksum.to_le_bytes());
        out
    }

    /// Decodes bytes made by [`KeyState::encode`], checking size, version,
    /// checksum and the structural invariants. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<KeyState, DecodeError> {
        KeyState::decode_with_limit(bytes, ENCODED_SIZE_MAX_BYTES)
    }

    /// [`KeyState::decode`] with an explicit size limit.
    pub fn decode_with_limit(bytes: &[u8], maximum: usize) -> Result<KeyState, DecodeError> {
        if bytes.len() > maximum {
            return Err(DecodeError::TooLarge {
                length: bytes.len(),
                maximum,
            });
        }
        if bytes.len() < HEADER_BYTES {
            return Err(DecodeError::Truncated {
                length: bytes.len(),
            });
        }
        if bytes[0] != ENCODING_VERSION {
            return Err(DecodeError::UnknownVersion(bytes[0]));
        }
        let mut checksum = [0u8; 4];
        checksum.copy_from_slice(&bytes[1..HEADER_BYTES]);
        let payload = &bytes[HEADER_BYTES..];
        if crc32fast::hash(payload) != u32::from_le_bytes(checksum) {
            return Err(DecodeError::Checksum);
        }
        let state: KeyState = postcard::from_bytes(payload)
            .map_err(|error| DecodeError::Malformed(error.to_string()))?;
        state.validate()?;
        Ok(state)
    }

    /// Checks the invariants a well-formed state keeps.
    pub fn validate(&self) -> Result<(), DecodeError> {
        for pair in self.siblings.windows(2) {
            if pair[0].dot >= pair[1].dot {
                return Err(DecodeError::Malformed(
                    "siblings not sorted by dot or a dot repeated".into(),
                ));
            }
        }
        if let Some(sibling) = self
            .siblings
            .iter()
            .find(|sibling| !self.clock.covers(&sibling.dot))
        {
            return Err(DecodeError::Malformed(format!(
                "sibling dot {}:{} not covered by the clock",
                sibling.dot.actor, sibling.dot.counter
            )));
        }
        Ok(())
    }
}

enum Side {
    Left,
    Right,
    Both,
}

/// A total order on siblings with the same dot, so a merge of conflicting
/// copies (only a faulty peer makes them) is still deterministic.
fn sibling_order(a: &Sibling, b: &Sibling) -> Ordering {
    let rank = |value: &SiblingValue| match value {
        SiblingValue::Tombstone => (0u8, Bytes::new()),
        SiblingValue::Value(bytes) => (1u8, bytes.clone()),
    };
    (a.timestamp, rank(&a.value)).cmp(&(b.timestamp, rank(&b.value)))
}

#[cfg(test)]
mod tests;
