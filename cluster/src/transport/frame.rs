//! Frames: the unit every stream of the peer and client protocols carries.
//!
//! A frame is a fixed 16-byte header followed by an opaque payload (design §7):
//!
//! ```text
//! version u8 | message_type u8 | flags u16 (big-endian) | request_id u64 (BE) | payload_length u32 (BE) | payload
//! ```
//!
//! The payload is the postcard encoding of a message owned by another module;
//! this layer only moves bytes and the message-type byte. Invariants:
//! - The decoder checks `payload_length` against `frame_size_max_bytes` before
//!   it reserves or copies anything, so a peer cannot make us allocate more
//!   than the configured maximum per frame.
//! - Every malformed input (unknown version, oversized length) is a typed
//!   [`FrameError`], never a panic; a short input is simply "need more bytes".
//! - `encode` followed by `decode` yields the same frame (property-tested).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The protocol version this build speaks; a frame with another version is rejected.
pub const FRAME_VERSION: u8 = 1;

/// Size of the fixed header that precedes every payload.
pub const FRAME_HEADER_SIZE_BYTES: usize = 16;

/// One frame: a typed, request-id-tagged, opaque payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The kind of message in `payload`; its meaning belongs to the message layer.
    pub message_type: u8,
    /// Bits for the message layer (for example "this is a response"); carried as is.
    pub flags: u16,
    /// Pairs a response with its request on a multiplexed stream.
    pub request_id: u64,
    /// The encoded message.
    pub payload: Bytes,
}

/// Why bytes could not be turned into a frame or a frame into bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header names a version this build does not speak; nothing was consumed.
    #[error("unknown frame version {version}, expected {FRAME_VERSION}")]
    UnknownVersion {
        /// The version byte that was received.
        version: u8,
    },
    /// The header announces a payload larger than the configured maximum;
    /// nothing was consumed or allocated. The stream cannot be resynchronised.
    #[error("frame payload of {length_bytes} bytes exceeds the maximum of {max_bytes}")]
    Oversized {
        /// The announced payload length.
        length_bytes: u64,
        /// The configured `frame_size_max_bytes`.
        max_bytes: u32,
    },
    /// The input ended in the middle of a frame (only reported by
    /// [`decode_complete`], where no more bytes can come).
    #[error("input ended after {available_bytes} bytes, in the middle of a frame")]
    Short {
        /// How many bytes were available.
        available_bytes: usize,
    },
}

impl Frame {
    /// Builds a frame with no flags.
    pub fn new(message_type: u8, request_id: u64, payload: impl Into<Bytes>) -> Frame {
        Frame {
            message_type,
            flags: 0,
            request_id,
            payload: payload.into(),
        }
    }

    /// Total encoded size: header plus payload.
    pub fn encoded_len_bytes(&self) -> usize {
        FRAME_HEADER_SIZE_BYTES + self.payload.len()
    }

    /// Appends the encoding of this frame to `out`. Fails with
    /// [`FrameError::Oversized`] (and writes nothing) if the payload exceeds
    /// `frame_size_max_bytes`, so we never send what the peer must reject.
    pub fn encode(&self, frame_size_max_bytes: u32, out: &mut BytesMut) -> Result<(), FrameError> {
        let length_bytes = self.payload.len() as u64;
        if length_bytes > u64::from(frame_size_max_bytes) {
            return Err(FrameError::Oversized {
                length_bytes,
                max_bytes: frame_size_max_bytes,
            });
        }
        out.reserve(self.encoded_len_bytes());
        out.put_u8(FRAME_VERSION);
        out.put_u8(self.message_type);
        out.put_u16(self.flags);
        out.put_u64(self.request_id);
        // Cannot truncate: checked against a u32 maximum above.
        out.put_u32(self.payload.len() as u32);
        out.put_slice(&self.payload);
        Ok(())
    }
}

/// The parsed fixed header, available before the payload has arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// See [`Frame::message_type`].
    pub message_type: u8,
    /// See [`Frame::flags`].
    pub flags: u16,
    /// See [`Frame::request_id`].
    pub request_id: u64,
    /// Payload length, already checked against the maximum.
    pub payload_length_bytes: u32,
}

/// Parses and validates a header from the first [`FRAME_HEADER_SIZE_BYTES`]
/// of `bytes`; `Ok(None)` if fewer bytes are available. Consumes nothing.
pub fn decode_header(
    bytes: &[u8],
    frame_size_max_bytes: u32,
) -> Result<Option<FrameHeader>, FrameError> {
    let Some(mut header) = bytes.get(..FRAME_HEADER_SIZE_BYTES) else {
        // A wrong version is reported as soon as its byte is here.
        if let Some(&version) = bytes.first()
            && version != FRAME_VERSION
        {
            return Err(FrameError::UnknownVersion { version });
        }
        return Ok(None);
    };
    let version = header.get_u8();
    if version != FRAME_VERSION {
        return Err(FrameError::UnknownVersion { version });
    }
    let message_type = header.get_u8();
    let flags = header.get_u16();
    let request_id = header.get_u64();
    let payload_length_bytes = header.get_u32();
    if payload_length_bytes > frame_size_max_bytes {
        return Err(FrameError::Oversized {
            length_bytes: u64::from(payload_length_bytes),
            max_bytes: frame_size_max_bytes,
        });
    }
    Ok(Some(FrameHeader {
        message_type,
        flags,
        request_id,
        payload_length_bytes,
    }))
}

/// Incremental decoding: takes one whole frame off the front of `buffer`.
///
/// Returns `Ok(None)` when `buffer` holds only part of a frame (nothing is
/// consumed; the caller reads more and calls again) and an error, consuming
/// nothing, when the header is invalid. The payload is split off `buffer`
/// without copying.
pub fn decode(
    buffer: &mut BytesMut,
    frame_size_max_bytes: u32,
) -> Result<Option<Frame>, FrameError> {
    let Some(header) = decode_header(buffer, frame_size_max_bytes)? else {
        return Ok(None);
    };
    let total_bytes = FRAME_HEADER_SIZE_BYTES + header.payload_length_bytes as usize;
    if buffer.len() < total_bytes {
        // The length is bounded by the maximum, so reserving is safe; it
        // saves reallocations while the rest of a large frame arrives.
        buffer.reserve(total_bytes - buffer.len());
        return Ok(None);
    }
    buffer.advance(FRAME_HEADER_SIZE_BYTES);
    let payload = buffer
        .split_to(header.payload_length_bytes as usize)
        .freeze();
    Ok(Some(Frame {
        message_type: header.message_type,
        flags: header.flags,
        request_id: header.request_id,
        payload,
    }))
}

/// Decodes exactly one frame that must fill `bytes` completely (a datagram or
/// a finished stream). Trailing bytes after the frame are reported as
/// [`FrameError::Short`] of the next frame's header.
pub fn decode_complete(bytes: &[u8], frame_size_max_bytes: u32) -> Result<Frame, FrameError> {
    let mut buffer = BytesMut::from(bytes);
    match decode(&mut buffer, frame_size_max_bytes)? {
        Some(frame) if buffer.is_empty() => Ok(frame),
        Some(_) => Err(FrameError::Short {
            available_bytes: buffer.len(),
        }),
        None => Err(FrameError::Short {
            available_bytes: bytes.len(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: u32 = 1 << 20;

    fn encoded(frame: &Frame) -> BytesMut {
        let mut out = BytesMut::new();
        frame
            .encode(MAX, &mut out)
            .expect("payload under the maximum");
        out
    }

    #[test]
    fn header_layout_is_sixteen_big_endian_bytes() {
        let bytes = encoded(&Frame {
            message_type: 7,
            flags: 0x0102,
            request_id: 0x0304_0506_0708_090a,
            payload: Bytes::from_static(b"xy"),
        });
        assert_eq!(
            &bytes[..],
            &[1, 7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0, 0, 0, 2, b'x', b'y']
        );
    }

    #[test]
    fn oversized_length_is_rejected_before_the_payload_arrives() {
        let mut buffer = encoded(&Frame::new(1, 9, vec![0u8; 100]));
        buffer.truncate(FRAME_HEADER_SIZE_BYTES);
        let capacity_before = buffer.capacity();
        assert_eq!(
            decode(&mut buffer, 99),
            Err(FrameError::Oversized {
                length_bytes: 100,
                max_bytes: 99
            })
        );
        assert_eq!(buffer.len(), FRAME_HEADER_SIZE_BYTES, "nothing consumed");
        assert_eq!(buffer.capacity(), capacity_before, "nothing allocated");
    }

    #[test]
    fn huge_announced_length_allocates_nothing() {
        let mut header = BytesMut::new();
        header.put_u8(FRAME_VERSION);
        header.put_u8(0);
        header.put_u16(0);
        header.put_u64(0);
        header.put_u32(u32::MAX);
        assert!(matches!(
            decode(&mut header, MAX),
            Err(FrameError::Oversized { .. })
        ));
    }

    #[test]
    fn encode_refuses_an_oversized_payload_and_writes_nothing() {
        let mut out = BytesMut::new();
        let result = Frame::new(1, 1, vec![0u8; 11]).encode(10, &mut out);
        assert!(matches!(
            result,
            Err(FrameError::Oversized {
                length_bytes: 11,
                ..
            })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn unknown_version_is_rejected_from_its_first_byte() {
        let mut buffer = BytesMut::from(&[2u8][..]);
        assert_eq!(
            decode(&mut buffer, MAX),
            Err(FrameError::UnknownVersion { version: 2 })
        );
    }

    #[test]
    fn partial_frame_waits_for_more_bytes_without_consuming() {
        let whole = encoded(&Frame::new(3, 42, b"hello".to_vec()));
        for cut in 0..whole.len() {
            let mut buffer = BytesMut::from(&whole[..cut]);
            assert_eq!(decode(&mut buffer, MAX), Ok(None), "cut at {cut}");
            assert_eq!(buffer.len(), cut);
        }
    }

    #[test]
    fn decode_complete_reports_short_and_trailing_input() {
        let whole = encoded(&Frame::new(3, 42, b"hello".to_vec()));
        assert_eq!(
            decode_complete(&whole[..5], MAX),
            Err(FrameError::Short { available_bytes: 5 })
        );
        let mut with_tail = whole.to_vec();
        with_tail.push(1);
        assert_eq!(
            decode_complete(&with_tail, MAX),
            Err(FrameError::Short { available_bytes: 1 })
        );
        assert_eq!(
            decode_complete(&whole, MAX).map(|frame| frame.request_id),
            Ok(42)
        );
    }

    fn arbitrary_frame() -> impl Strategy<Value = Frame> {
        (
            any::<u8>(),
            any::<u16>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(message_type, flags, request_id, payload)| Frame {
                message_type,
                flags,
                request_id,
                payload: payload.into(),
            })
    }

    proptest! {
        #[test]
        fn frames_round_trip_through_any_chunking(
            frames in proptest::collection::vec(arbitrary_frame(), 0..8),
            chunk_size in 1usize..64,
        ) {
            let mut wire = BytesMut::new();
            for frame in &frames {
                frame.encode(MAX, &mut wire).expect("payload under the maximum");
            }
            let mut buffer = BytesMut::new();
            let mut decoded = Vec::new();
            for chunk in wire.chunks(chunk_size) {
                buffer.extend_from_slice(chunk);
                while let Some(frame) = decode(&mut buffer, MAX).expect("valid frames") {
                    decoded.push(frame);
                }
            }
            prop_assert!(buffer.is_empty());
            prop_assert_eq!(decoded, frames);
        }

        #[test]
        fn random_bytes_never_panic_and_never_overrun_the_maximum(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            max in 0u32..64,
        ) {
            let mut buffer = BytesMut::from(&bytes[..]);
            loop {
                let before = buffer.len();
                match decode(&mut buffer, max) {
                    Ok(Some(frame)) => {
                        prop_assert!(frame.payload.len() <= max as usize);
                        prop_assert!(buffer.len() < before);
                    }
                    Ok(None) | Err(_) => {
                        prop_assert_eq!(buffer.len(), before);
                        break;
                    }
                }
            }
            let _ = decode_complete(&bytes, max);
        }
    }
}
