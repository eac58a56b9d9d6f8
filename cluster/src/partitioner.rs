//! The partitioner: a key's stable 64-bit hash and the fixed partition it
//! falls in (design.md §4; Dynamo §4.2 with Riak's fixed partitions).
//!
//! The hash is XXH3-64 with seed 0 over the key's bytes — a published,
//! frozen function, so every node, client and version agrees on it. The key
//! space is cut into `Q` equal ranges of the hash (Q a power of two, chosen
//! when the cluster is created and never changed): partition `p` holds the
//! keys whose hash `h` has `⌊h·Q / 2⁶⁴⌋ = p`, that is, the top `log2 Q` bits.

use crate::id::Partition;

/// Largest partition count a cluster may be created with.
pub const PARTITION_COUNT_MAX: u32 = 1 << 16;

/// The stable hash of a key: XXH3-64, seed 0.
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// Why a partition count was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The count is zero, not a power of two, or above [`PARTITION_COUNT_MAX`].
    #[error("partition count {0} must be a power of two between 1 and {PARTITION_COUNT_MAX}")]
    PartitionCount(u32),
}

/// Maps keys to one of a fixed number of partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partitioner {
    partition_count: u32,
}

impl Partitioner {
    /// A partitioner over `partition_count` partitions (a power of two).
    pub fn new(partition_count: u32) -> Result<Partitioner, ConfigError> {
        if !partition_count.is_power_of_two() || partition_count > PARTITION_COUNT_MAX {
            return Err(ConfigError::PartitionCount(partition_count));
        }
        Ok(Partitioner { partition_count })
    }

    /// The number of partitions.
    pub fn partition_count(&self) -> u32 {
        self.partition_count
    }

    /// The partition holding `key`.
    pub fn partition_of(&self, key: &[u8]) -> Partition {
        let scaled = (u128::from(key_hash(key)) * u128::from(self.partition_count)) >> 64;
        Partition(scaled as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_frozen() {
        // Changing these would move every key in every existing cluster.
        assert_eq!(key_hash(b""), 0x2d06800538d394c2);
        assert_eq!(key_hash(b"shoal"), key_hash(b"shoal"));
    }

    #[test]
    fn partition_is_the_top_bits_of_the_hash() {
        let partitioner = Partitioner::new(256).unwrap();
        for key in [&b"a"[..], b"b", b"user:42", b""] {
            assert_eq!(
                partitioner.partition_of(key).0 as u64,
                key_hash(key) >> 56,
                "key {key:?}"
            );
        }
        assert_eq!(
            Partitioner::new(1).unwrap().partition_of(b"x"),
            Partition(0)
        );
    }

    #[test]
    fn partition_counts_that_are_not_powers_of_two_are_refused() {
        assert!(Partitioner::new(0).is_err());
        assert!(Partitioner::new(100).is_err());
        assert!(Partitioner::new(1 << 17).is_err());
    }

    #[test]
    fn keys_spread_evenly_over_partitions() {
        let partitioner = Partitioner::new(64).unwrap();
        let mut counts = [0u32; 64];
        for index in 0..64_000u32 {
            counts[partitioner.partition_of(&index.to_be_bytes()).0 as usize] += 1;
        }
        for count in counts {
            assert!((800..1200).contains(&count), "count {count}");
        }
    }
}
