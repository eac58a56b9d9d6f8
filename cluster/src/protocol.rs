//! The wire vocabulary of the two QUIC protocols (design §7): what a client
//! asks a node under ALPN `shoal-client/1`, what the node answers, and the
//! frames peers exchange under `shoal-peer/1`. Pure types and their codecs;
//! the transport moves them.
//!
//! Every message travels as one [`Frame`] whose payload is postcard. The
//! peer protocol opens each unidirectional stream with a [`PeerHello`] frame
//! naming the sender, then carries [`Message`] frames; the client protocol
//! sends one [`ClientRequest`] frame per bidirectional stream and reads one
//! [`ClientResponse`] frame back. Invariants: decoding never panics and never
//! allocates beyond the frame it was given (the frame layer bounded it);
//! an unknown message type is an error, not a guess.

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::id::NodeId;
use crate::message::{Message, Request, RequestError, Response};
use crate::ring::{MemberEntry, MemberState};
use crate::siblings::KeyState;
use crate::transport::frame::{Frame, FrameError};

/// ALPN of the peer protocol (mutual TLS under the cluster CA).
pub const ALPN_PEER: &[u8] = b"shoal-peer/1";
/// ALPN of the client protocol.
pub const ALPN_CLIENT: &[u8] = b"shoal-client/1";

/// Frame type: the first frame of a peer stream, naming the sender.
pub const FRAME_PEER_HELLO: u8 = 1;
/// Frame type: one [`Message`] between peers.
pub const FRAME_PEER_MESSAGE: u8 = 2;
/// Frame type: a [`ClientRequest`].
pub const FRAME_CLIENT_REQUEST: u8 = 16;
/// Frame type: a [`ClientResponse`].
pub const FRAME_CLIENT_RESPONSE: u8 = 17;

/// Opens every peer stream: who is talking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHello {
    /// The sender's node id.
    pub node: NodeId,
    /// The sender's generation (boot epoch of its membership).
    pub generation: u64,
}

/// What a client may ask a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// A get, put or delete, coordinated (or forwarded) by the node.
    Kv(Request),
    /// Does nothing but pass through the node's event loop (for measuring
    /// the request path's floor); answered [`ClientResponse::Pong`].
    Ping,
    /// The node's view of the cluster.
    Status,
    /// The ring and the placement, for ring-aware routing.
    Ring,
    /// Make the node join the cluster that `seed` (`host:port`) belongs to.
    Join {
        /// A member's address.
        seed: String,
    },
    /// Mark `node` (the receiving node when `None`) as leaving the ring.
    Leave {
        /// The member that leaves.
        node: Option<NodeId>,
    },
    /// Remove `node` from the ring for good.
    Remove {
        /// The member to remove.
        node: NodeId,
    },
    /// This replica's local state of a key, for operators and tests.
    Inspect {
        /// The user key.
        key: Bytes,
    },
    /// Pause or resume the receiving node's background work (anti-entropy,
    /// the pulls of moving partitions it asks for and serves): an
    /// operator's brake, and the switch of `shoal-bench run
    /// --alternate-background`. Answered [`ClientResponse::Done`].
    Background {
        /// Pause when true, resume when false.
        paused: bool,
    },
    /// A get, put or delete as [`ClientRequest::Kv`], with how long this
    /// client waited for its previous key-value answer from this node:
    /// admission control judges background work by what clients see.
    KvReporting {
        /// The request.
        request: Request,
        /// The client's wait for its previous answer, in microseconds.
        previous_micros: u32,
    },
}

/// What a node answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientResponse {
    /// The answer to [`ClientRequest::Kv`].
    Kv(Response),
    /// The answer to [`ClientRequest::Ping`].
    Pong,
    /// The answer to [`ClientRequest::Status`].
    Status(NodeStatus),
    /// The answer to [`ClientRequest::Ring`].
    Ring(RingView),
    /// An admin change was made (join, leave, remove, background); what was done.
    Done(String),
    /// The answer to [`ClientRequest::Inspect`].
    Inspect(Inspection),
    /// The request failed; see the error for what happened to the data.
    Failed(RequestError),
}

/// One member as the answering node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// The member.
    pub node: NodeId,
    /// Where it listens.
    pub address: String,
    /// Its ownership state in the ring, if it is in the ring.
    pub ring_state: Option<MemberState>,
    /// `alive`, `suspect`, `dead` or `left`, as membership believes.
    pub liveness: String,
    /// How many partitions it is a primary of.
    pub primary_partitions: usize,
}

/// A node's view of itself and the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The answering node.
    pub node: NodeId,
    /// Where it listens.
    pub address: String,
    /// Its epoch for this start (None before it started on its store).
    pub epoch: Option<u32>,
    /// The ring version it holds.
    pub ring_version: u64,
    /// Every member it knows, itself included.
    pub members: Vec<MemberStatus>,
    /// Requests it coordinates or forwards right now.
    pub requests_in_flight: usize,
    /// Bytes of hints it holds for other nodes.
    pub hint_bytes: u64,
    /// Ownership moves under way, as this node knows them.
    pub moves: MovesStatus,
    /// Whether an operator paused this node's background work.
    pub background_paused: bool,
}

/// Progress of the partition moves of the current assignment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovesStatus {
    /// The assignment version the moves belong to.
    pub assignment_version: u64,
    /// Moves (a partition to a new owner) of that assignment.
    pub total: usize,
    /// Of which finished (the new owner holds the partition).
    pub done: usize,
    /// Moves to the answering node still pulling, and from how many sources.
    pub pulling_here: u64,
}

/// The ring and its placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingView {
    /// The ring's version.
    pub version: u64,
    /// `Q`, the number of partitions.
    pub partition_count: u32,
    /// `N`, the number of primaries per partition.
    pub replication_factor: u32,
    /// Every member of the ring with its entry.
    pub members: Vec<(NodeId, MemberEntry)>,
    /// For each partition, its primaries in order (empty without owners).
    pub primaries: Vec<Vec<NodeId>>,
    /// Members the answering node believes down (suspect, dead or left):
    /// clients send to them last.
    pub down: Vec<NodeId>,
}

/// One replica's local state of a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inspection {
    /// The replica.
    pub node: NodeId,
    /// The key's partition.
    pub partition: u32,
    /// Whether the replica is a primary of that partition.
    pub primary: bool,
    /// Its stored state (empty when it holds nothing).
    pub state: KeyState,
}

/// Why a frame could not be turned into a message. The frame is dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The frame layer rejected the bytes.
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    /// The frame's type is not the one expected here.
    #[error("unexpected frame type {0}")]
    UnexpectedType(u8),
    /// The payload is not a well-formed message.
    #[error("malformed payload: {0}")]
    Malformed(String),
}

/// Encodes `value` as a frame of `message_type` and appends it to `out`.
pub fn encode_frame<T: Serialize>(
    message_type: u8,
    request_id: u64,
    value: &T,
    frame_size_max_bytes: u32,
    out: &mut BytesMut,
) -> Result<(), ProtocolError> {
    let payload = postcard::to_allocvec(value)
        .map_err(|error| ProtocolError::Malformed(error.to_string()))?;
    Frame::new(message_type, request_id, payload).encode(frame_size_max_bytes, out)?;
    Ok(())
}

/// Decodes the payload of `frame`, which must be of `message_type`.
pub fn decode_frame<T: for<'de> Deserialize<'de>>(
    frame: &Frame,
    message_type: u8,
) -> Result<T, ProtocolError> {
    if frame.message_type != message_type {
        return Err(ProtocolError::UnexpectedType(frame.message_type));
    }
    postcard::from_bytes(&frame.payload)
        .map_err(|error| ProtocolError::Malformed(error.to_string()))
}

/// Decodes a peer [`Message`] frame.
pub fn decode_peer_message(frame: &Frame) -> Result<Message, ProtocolError> {
    decode_frame(frame, FRAME_PEER_MESSAGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::ReadOptions;
    use crate::transport::frame;

    #[test]
    fn client_requests_round_trip_through_frames() {
        let requests = vec![
            ClientRequest::Kv(Request::Get {
                key: Bytes::from_static(b"k"),
                options: ReadOptions::default(),
            }),
            ClientRequest::KvReporting {
                request: Request::Get {
                    key: Bytes::from_static(b"k"),
                    options: ReadOptions::default(),
                },
                previous_micros: 3_141,
            },
            ClientRequest::Status,
            ClientRequest::Ring,
            ClientRequest::Join {
                seed: "127.0.0.1:7101".into(),
            },
            ClientRequest::Leave { node: None },
            ClientRequest::Remove { node: NodeId(4) },
            ClientRequest::Inspect {
                key: Bytes::from_static(b"k"),
            },
        ];
        for request in requests {
            let mut out = BytesMut::new();
            encode_frame(FRAME_CLIENT_REQUEST, 7, &request, 1 << 20, &mut out).unwrap();
            let decoded_frame = frame::decode_complete(&out, 1 << 20).unwrap();
            assert_eq!(decoded_frame.request_id, 7);
            let decoded: ClientRequest =
                decode_frame(&decoded_frame, FRAME_CLIENT_REQUEST).unwrap();
            assert_eq!(decoded, request);
        }
    }

    #[test]
    fn a_frame_of_the_wrong_type_is_rejected() {
        let mut out = BytesMut::new();
        encode_frame(
            FRAME_CLIENT_REQUEST,
            1,
            &ClientRequest::Status,
            1024,
            &mut out,
        )
        .unwrap();
        let decoded_frame = frame::decode_complete(&out, 1024).unwrap();
        assert_eq!(
            decode_peer_message(&decoded_frame),
            Err(ProtocolError::UnexpectedType(FRAME_CLIENT_REQUEST))
        );
    }

    #[test]
    fn garbage_payloads_are_errors_not_panics() {
        for length in 0..64usize {
            let payload: Vec<u8> = (0..length).map(|i| (i * 37 + 11) as u8).collect();
            let frame = Frame::new(FRAME_CLIENT_RESPONSE, 1, payload);
            let _ = decode_frame::<ClientResponse>(&frame, FRAME_CLIENT_RESPONSE);
            let frame = Frame::new(FRAME_PEER_MESSAGE, 1, frame.payload.clone());
            let _ = decode_peer_message(&frame);
        }
    }
}
