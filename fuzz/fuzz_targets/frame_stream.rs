//! Any byte stream fed to the incremental frame decoder, in arbitrary
//! chunks: no panic, no frame larger than the limit, and a frame that
//! decodes re-encodes to the same bytes.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use shoal_cluster::transport::frame;

fuzz_target!(|data: &[u8]| {
    let maximum = 4096;
    let mut buffer = BytesMut::new();
    for chunk in data.chunks(7) {
        buffer.extend_from_slice(chunk);
        loop {
            match frame::decode(&mut buffer, maximum) {
                Ok(Some(decoded)) => {
                    assert!(decoded.payload.len() <= maximum as usize);
                    let mut out = BytesMut::new();
                    decoded.encode(maximum, &mut out).expect("a decoded frame re-encodes");
                    assert_eq!(frame::decode_complete(&out, maximum).ok(), Some(decoded));
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = frame::decode_complete(data, maximum);
});
