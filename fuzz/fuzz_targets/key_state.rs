//! Any bytes as a stored key state: no panic; what decodes is valid and
//! re-encodes to a state that decodes equal.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_cluster::siblings::KeyState;

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = KeyState::decode(data) {
        assert!(state.validate().is_ok());
        assert_eq!(KeyState::decode(&state.encode()).ok(), Some(state));
    }
});
