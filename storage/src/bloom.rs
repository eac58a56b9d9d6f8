//! Bloom filters over user keys, one per SSTable, so a point read skips tables
//! that cannot hold its key (about 1 % false positives at 10 bits per key).
//!
//! Format: the bit array, then one byte holding the number of probes `k`.
//! Probes use double hashing (Kirsch and Mitzenmacher 2006) of XXH3-64:
//! `h1 + i·h2` over the low and high halves of the hash. Invariant: a key
//! added is always reported as possibly present.

/// Builds a filter from the hashes of the keys added.
#[derive(Debug, Default)]
pub struct BloomBuilder {
    hashes: Vec<u64>,
    bits_per_key: usize,
}

/// The hash a filter is built from and probed with.
pub fn bloom_hash(user_key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(user_key)
}

impl BloomBuilder {
    /// A builder giving each key `bits_per_key` bits.
    pub fn new(bits_per_key: usize) -> BloomBuilder {
        BloomBuilder {
            hashes: Vec::new(),
            bits_per_key: bits_per_key.max(1),
        }
    }

    /// Adds a user key (adding the same key twice is harmless).
    pub fn add(&mut self, user_key: &[u8]) {
        let hash = bloom_hash(user_key);
        if self.hashes.last() != Some(&hash) {
            self.hashes.push(hash);
        }
    }

    /// Encodes the filter.
    pub fn finish(&self) -> Vec<u8> {
        let probes = ((self.bits_per_key as f64) * std::f64::consts::LN_2).round() as usize;
        let probes = probes.clamp(1, 30);
        let bits = (self.hashes.len() * self.bits_per_key).max(64);
        let bytes = bits.div_ceil(8);
        let bits = bytes * 8;
        let mut filter = vec![0u8; bytes + 1];
        for hash in &self.hashes {
            let (mut h1, h2) = (*hash as u32, (*hash >> 32) as u32);
            for _ in 0..probes {
                let bit = h1 as usize % bits;
                filter[bit / 8] |= 1 << (bit % 8);
                h1 = h1.wrapping_add(h2);
            }
        }
        filter[bytes] = probes as u8;
        filter
    }
}

/// True unless the filter proves `user_key` was never added. A malformed
/// filter answers true (it can only cost a lookup, never hide data).
pub fn may_contain(filter: &[u8], user_key: &[u8]) -> bool {
    let Some((&probes, array)) = filter.split_last() else {
        return true;
    };
    if array.is_empty() || probes == 0 || probes > 30 {
        return true;
    }
    let bits = array.len() * 8;
    let hash = bloom_hash(user_key);
    let (mut h1, h2) = (hash as u32, (hash >> 32) as u32);
    for _ in 0..probes {
        let bit = h1 as usize % bits;
        if array[bit / 8] & (1 << (bit % 8)) == 0 {
            return false;
        }
        h1 = h1.wrapping_add(h2);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_keys_are_always_found_and_false_positives_are_about_one_percent() {
        let mut builder = BloomBuilder::new(10);
        for index in 0..20_000u32 {
            builder.add(format!("key{index:08}").as_bytes());
        }
        let filter = builder.finish();
        for index in 0..20_000u32 {
            assert!(may_contain(&filter, format!("key{index:08}").as_bytes()));
        }
        let false_positives = (0..100_000u32)
            .filter(|index| may_contain(&filter, format!("missing{index:08}").as_bytes()))
            .count();
        let rate = false_positives as f64 / 100_000.0;
        assert!(rate < 0.015, "false-positive rate {rate}");
    }

    #[test]
    fn a_malformed_filter_never_hides_a_key() {
        assert!(may_contain(&[], b"x"));
        assert!(may_contain(&[0], b"x"));
        assert!(may_contain(&[0, 0, 0, 200], b"x"));
    }
}
