//! Any string as a context token: no panic; what decodes re-encodes to a
//! token that decodes equal.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_cluster::context;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(clock) = context::decode(token, 64 << 10) {
        assert_eq!(context::decode(&context::encode(&clock), 64 << 10).ok(), Some(clock));
    }
});
