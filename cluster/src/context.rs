//! Context tokens: the opaque string a read returns and a write hands back,
//! carrying the clock of what the client saw (design.md §3). Writing with a
//! context supersedes exactly the siblings that context covers.
//!
//! Format: base64url (no padding) of `version byte ‖ CRC32 (LE) of payload ‖
//! postcard(VersionVector)`. The version byte lets the format change; the
//! checksum catches a token damaged in transit through an application. The
//! token is size-checked before anything is decoded. The empty string is
//! the empty context (a blind write).

use crate::version_vector::VersionVector;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const TOKEN_VERSION: u8 = 1;
const HEADER_BYTES: usize = 5;

/// Default largest token accepted, in characters.
pub const CONTEXT_SIZE_MAX_BYTES: usize = 64 * 1024;

/// Why a context token was refused. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    /// Longer than the limit.
    #[error("context token of {length} bytes exceeds the maximum of {maximum}")]
    TooLarge {
        /// Token length.
        length: usize,
        /// The limit.
        maximum: usize,
    },
    /// Not base64url, or too short to hold the header.
    #[error("context token is not valid base64url")]
    Encoding,
    /// Made by a newer format this build does not read.
    #[error("context token has unknown version {0}")]
    UnknownVersion(u8),
    /// Damaged: the checksum does not match.
    #[error("context token checksum mismatch (damaged token)")]
    Checksum,
    /// Well-formed envelope, malformed clock.
    #[error("context token is malformed: {0}")]
    Malformed(String),
}

/// Encodes a clock as a context token.
pub fn encode(clock: &VersionVector) -> String {
    if clock.is_empty() {
        return String::new();
    }
    let header = vec![TOKEN_VERSION, 0, 0, 0, 0];
    let mut bytes =
        postcard::to_extend(clock, header).expect("serializing plain data into a Vec cannot fail");
    let checksum = crc32fast::hash(&bytes[HEADER_BYTES..]);
    bytes[1..HEADER_BYTES].copy_from_slice(&checksum.to_le_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes a context token of at most `size_max_bytes` characters.
pub fn decode(token: &str, size_max_bytes: usize) -> Result<VersionVector, ContextError> {
    if token.len() > size_max_bytes {
        return Err(ContextError::TooLarge {
            length: token.len(),
            maximum: size_max_bytes,
        });
    }
    if token.is_empty() {
        return Ok(VersionVector::new());
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(token.trim())
        .map_err(|_| ContextError::Encoding)?;
    if bytes.len() < HEADER_BYTES {
        return Err(ContextError::Encoding);
    }
    if bytes[0] != TOKEN_VERSION {
        return Err(ContextError::UnknownVersion(bytes[0]));
    }
    let mut checksum = [0u8; 4];
    checksum.copy_from_slice(&bytes[1..HEADER_BYTES]);
    if crc32fast::hash(&bytes[HEADER_BYTES..]) != u32::from_le_bytes(checksum) {
        return Err(ContextError::Checksum);
    }
    postcard::from_bytes(&bytes[HEADER_BYTES..])
        .map_err(|error| ContextError::Malformed(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version_vector::tests::{actor, arbitrary_vector};
    use proptest::prelude::*;

    #[test]
    fn empty_context_is_the_empty_string() {
        assert_eq!(encode(&VersionVector::new()), "");
        assert!(decode("", 10).unwrap().is_empty());
    }

    #[test]
    fn damaged_tokens_are_refused() {
        let mut clock = VersionVector::new();
        clock.increment(actor(7));
        let token = encode(&clock);
        let mut damaged: Vec<char> = token.chars().collect();
        let last = damaged.len() - 1;
        damaged[last] = if damaged[last] == 'A' { 'B' } else { 'A' };
        let damaged: String = damaged.into_iter().collect();
        assert!(decode(&damaged, CONTEXT_SIZE_MAX_BYTES).is_err());
        assert_eq!(
            decode("!!!", CONTEXT_SIZE_MAX_BYTES),
            Err(ContextError::Encoding)
        );
        assert!(matches!(
            decode(&token, 3),
            Err(ContextError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn tokens_round_trip(clock in arbitrary_vector()) {
            prop_assert_eq!(decode(&encode(&clock), CONTEXT_SIZE_MAX_BYTES).unwrap(), clock);
        }

        #[test]
        fn arbitrary_strings_never_panic(token in "[A-Za-z0-9_-]{0,80}") {
            let _ = decode(&token, CONTEXT_SIZE_MAX_BYTES);
        }
    }
}
