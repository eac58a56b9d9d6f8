//! The dialing side of the client protocol: one request on its own
//! bidirectional stream, one response back (see [`crate::protocol`]).
//!
//! Invariant: the response is read with a bound (the frame limit), so a node
//! that misbehaves cannot make a client allocate without limit.

use bytes::BytesMut;

use crate::protocol::{
    self, ClientRequest, ClientResponse, FRAME_CLIENT_REQUEST, FRAME_CLIENT_RESPONSE,
};
use crate::transport::describe;
use crate::transport::frame::{self, FRAME_HEADER_SIZE_BYTES};

/// Why a call got no response. Whether the request took effect is unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The connection failed before the request left: it was not sent.
    #[error("not sent: {0}")]
    NotSent(String),
    /// The connection or stream failed after the request may have left.
    #[error("connection: {0}")]
    Connection(String),
    /// The node answered something that is not a valid response.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// Sends `request` on a new stream of `connection` and reads the response.
pub async fn call(
    connection: &quinn::Connection,
    request_id: u64,
    request: &ClientRequest,
    frame_size_max_bytes: u32,
) -> Result<ClientResponse, CallError> {
    let mut out = BytesMut::new();
    protocol::encode_frame(
        FRAME_CLIENT_REQUEST,
        request_id,
        request,
        frame_size_max_bytes,
        &mut out,
    )
    .map_err(|error| CallError::Protocol(error.to_string()))?;
    let (mut send, mut receive) = connection
        .open_bi()
        .await
        .map_err(|error| CallError::NotSent(error.to_string()))?;
    send.write_all(&out)
        .await
        .map_err(|error| CallError::Connection(describe(&error)))?;
    send.finish()
        .map_err(|error| CallError::Connection(describe(&error)))?;
    let limit = FRAME_HEADER_SIZE_BYTES + frame_size_max_bytes as usize;
    let bytes = receive
        .read_to_end(limit)
        .await
        .map_err(|error| match error {
            quinn::ReadToEndError::TooLong => {
                CallError::Protocol(format!("response longer than {limit} bytes"))
            }
            other => CallError::Connection(describe(&other)),
        })?;
    let frame = frame::decode_complete(&bytes, frame_size_max_bytes)
        .map_err(|error| CallError::Protocol(error.to_string()))?;
    protocol::decode_frame(&frame, FRAME_CLIENT_RESPONSE)
        .map_err(|error| CallError::Protocol(error.to_string()))
}
