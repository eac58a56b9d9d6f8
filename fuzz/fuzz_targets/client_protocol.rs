//! Any frame payload as a client request or response: no panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal_cluster::protocol::{self, ClientRequest, ClientResponse, PeerHello};
use shoal_cluster::transport::frame::Frame;

fuzz_target!(|data: &[u8]| {
    let request = Frame::new(protocol::FRAME_CLIENT_REQUEST, 1, data.to_vec());
    let _ = protocol::decode_frame::<ClientRequest>(&request, protocol::FRAME_CLIENT_REQUEST);
    let response = Frame::new(protocol::FRAME_CLIENT_RESPONSE, 1, data.to_vec());
    let _ = protocol::decode_frame::<ClientResponse>(&response, protocol::FRAME_CLIENT_RESPONSE);
    let hello = Frame::new(protocol::FRAME_PEER_HELLO, 0, data.to_vec());
    let _ = protocol::decode_frame::<PeerHello>(&hello, protocol::FRAME_PEER_HELLO);
});
