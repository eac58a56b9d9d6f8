//! Any bytes as a gossiped ring: no panic; a ring that decodes merges
//! idempotently.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_cluster::ring::Ring;

fuzz_target!(|data: &[u8]| {
    if let Ok(ring) = Ring::decode(data) {
        let mut merged = ring.clone();
        assert!(!merged.merge(&ring), "merging a ring into itself changes nothing");
        assert_eq!(merged, ring);
    }
});
