//! What goes in and out of a [`Node`](crate::node::Node): client requests and
//! their responses, peer messages, and the outputs a shell must carry out.
//!
//! These are the wire types of Dynamo §4.5 (get / put with a context) and §4.6
//! (writes to a fallback carrying a hint naming the intended owner). All of
//! them derive serde and are encoded with postcard by the transport; the
//! simulator passes them as values. Invariant: every variant of [`Response`]
//! says what happened to the data — [`Response::Written`] means the write is on
//! at least the requested number of replicas at the requested durability;
//! [`RequestError`] variants say whether anything was stored.

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::id::NodeId;
use crate::siblings::KeyState;
use crate::version_vector::{Dot, VersionVector};

/// A client request's id, chosen by the shell, echoed in [`Output::Respond`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);

/// How many replicas must answer: a request's `r` or `w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Quorum {
    /// One replica.
    One,
    /// A majority of the replication factor: ⌊N/2⌋ + 1.
    Quorum,
    /// All `N` replicas.
    All,
    /// Exactly this many replicas, 1..=N.
    Count(u8),
}

impl std::str::FromStr for Quorum {
    type Err = String;

    /// Parses `one`, `quorum`, `all` or a count in 1..=255.
    fn from_str(text: &str) -> Result<Quorum, String> {
        match text {
            "one" => Ok(Quorum::One),
            "quorum" => Ok(Quorum::Quorum),
            "all" => Ok(Quorum::All),
            number => match number.parse::<u8>() {
                Ok(count) if count > 0 => Ok(Quorum::Count(count)),
                _ => Err(format!(
                    "expected one, quorum, all or a number from 1 to 255, got {number:?}"
                )),
            },
        }
    }
}

impl std::fmt::Display for Quorum {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Quorum::One => formatter.write_str("one"),
            Quorum::Quorum => formatter.write_str("quorum"),
            Quorum::All => formatter.write_str("all"),
            Quorum::Count(count) => write!(formatter, "{count}"),
        }
    }
}

/// Per-request read options; `None` takes the node's configured default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadOptions {
    /// How many replicas must answer.
    pub r: Option<Quorum>,
    /// Whether fallbacks holding hints count toward `r`.
    pub sloppy: Option<bool>,
    /// The request's deadline, from when the coordinator receives it.
    pub timeout: Option<Duration>,
}

/// Per-request write options; `None` takes the node's configured default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteOptions {
    /// How many replicas must acknowledge.
    pub w: Option<Quorum>,
    /// Whether fallbacks holding hints count toward `w`.
    pub sloppy: Option<bool>,
    /// Whether a replica counts only after its write is synced.
    pub durable: Option<bool>,
    /// The request's deadline, from when the coordinator receives it.
    pub timeout: Option<Duration>,
}

/// A client's request to any node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Read a key: all live siblings and the context that covers them.
    Get {
        /// The user key.
        key: Bytes,
        /// Consistency of this read.
        options: ReadOptions,
    },
    /// Write a value superseding exactly what `context` covers.
    Put {
        /// The user key.
        key: Bytes,
        /// The new value.
        value: Bytes,
        /// The context of the read this write is based on; empty for a blind write.
        context: VersionVector,
        /// Consistency of this write.
        options: WriteOptions,
    },
    /// Write a tombstone superseding exactly what `context` covers.
    Delete {
        /// The user key.
        key: Bytes,
        /// The context of the read this delete is based on.
        context: VersionVector,
        /// Consistency of this delete.
        options: WriteOptions,
    },
}

impl Request {
    /// The user key the request is about.
    pub fn key(&self) -> &Bytes {
        match self {
            Request::Get { key, .. } | Request::Put { key, .. } | Request::Delete { key, .. } => {
                key
            }
        }
    }
}

/// The result of a successful read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadResult {
    /// Live (non-tombstone) sibling values, in dot order.
    pub siblings: Vec<Bytes>,
    /// The merged clock of what was read; write back with it to supersede it.
    pub context: VersionVector,
    /// How many primaries' slots answered toward `r` (a fallback standing in
    /// for a primary under a sloppy quorum answers for its slot).
    pub answered: usize,
}

/// The result of a successful write or delete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteResult {
    /// The dot that names this write.
    pub dot: Dot,
    /// The coordinator's clock for the key after the write (covers `dot`).
    pub context: VersionVector,
    /// How many primaries' slots acknowledged toward `w` (a fallback holding
    /// a hint for a primary under a sloppy quorum covers its slot).
    pub acks: usize,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RequestError {
    /// Too few replicas answered before the deadline. For a write, the
    /// replicas that did acknowledge keep it (it may still spread): the
    /// outcome is unknown to the client, not "not written".
    #[error("quorum not reached: {acks} of {required} replicas answered")]
    QuorumNotReached {
        /// Replicas whose answers counted.
        acks: usize,
        /// Replicas that had to answer.
        required: usize,
    },
    /// The request is malformed or over a limit; nothing was stored.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The write would leave more siblings than allowed; nothing was stored.
    /// Read, resolve the siblings, and write back with the context.
    #[error("too many siblings: {count} (max {max})")]
    TooManySiblings {
        /// Siblings the write would have left.
        count: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The node has too many requests in flight; nothing was stored. Retry later.
    #[error("busy: too many requests in flight")]
    Busy,
    /// The node cannot serve yet or any more (no ring, store failure at start,
    /// no primary reachable); nothing was stored.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The coordinator's local store failed; nothing was acknowledged.
    #[error("store failure: {0}")]
    StoreFailed(String),
}

/// The answer to a client [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// A read succeeded.
    Value(ReadResult),
    /// A put or delete reached its write quorum.
    Written(WriteResult),
    /// The request failed; see the error for what happened to the data.
    Failed(RequestError),
}

/// Whether a replica stored what it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaOutcome {
    /// Stored at the requested durability (as data, or as a hint).
    Stored,
    /// Not stored (store failure, over a limit, hint storage full).
    Refused,
}

/// A message between two nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// A client request passed on by a node that is not a primary of the key (one hop).
    Forward {
        /// The forwarder's id for the request, echoed in the reply.
        forward_id: u64,
        /// The client's request.
        request: Request,
    },
    /// The coordinator's answer to a [`Message::Forward`].
    ForwardReply {
        /// The forwarder's id for the request.
        forward_id: u64,
        /// The answer to pass to the client.
        response: Response,
    },
    /// Store this key state: as data, or, with `hint_for`, as a hint for that node.
    Replicate {
        /// The coordinator's operation id, echoed in the acknowledgement.
        operation: u64,
        /// The user key.
        key: Bytes,
        /// The coordinator's key state after the write.
        state: KeyState,
        /// Acknowledge only after a synced write.
        durable: bool,
        /// The primary this copy stands in for, when sent to a fallback.
        hint_for: Option<NodeId>,
    },
    /// Answer to [`Message::Replicate`].
    ReplicateAck {
        /// The coordinator's operation id.
        operation: u64,
        /// Whether the state was stored.
        outcome: ReplicaOutcome,
    },
    /// Send your state of a key (or, with `hint_for`, your hint for that node).
    Read {
        /// The coordinator's operation id, echoed in the reply.
        operation: u64,
        /// The user key.
        key: Bytes,
        /// The primary this read stands in for, when sent to a fallback.
        hint_for: Option<NodeId>,
    },
    /// Answer to [`Message::Read`]; `None` when the replica could not read.
    ReadReply {
        /// The coordinator's operation id.
        operation: u64,
        /// The replica's state (empty when it holds nothing for the key).
        state: Option<KeyState>,
    },
    /// Read repair: merge this state into yours. Not acknowledged.
    Repair {
        /// The user key.
        key: Bytes,
        /// The merged state the coordinator read.
        state: KeyState,
    },
    /// Hinted handoff: a hint held for you; merge it durably and acknowledge.
    HintReplay {
        /// The user key.
        key: Bytes,
        /// The hinted state.
        state: KeyState,
        /// Identifies the hint's exact content, echoed in the acknowledgement.
        hint_digest: u64,
    },
    /// The replayed hint is stored; the fallback may delete it if unchanged.
    HintAck {
        /// The user key.
        key: Bytes,
        /// The digest from [`Message::HintReplay`].
        hint_digest: u64,
    },
    /// Anti-entropy: the root of the sender's tree of a partition both hold.
    AeRoot {
        /// The partition.
        partition: u32,
        /// The root hash.
        root: u64,
    },
    /// Anti-entropy: the roots differ; here are the receiver's leaves.
    AeLeaves {
        /// The partition.
        partition: u32,
        /// One hash per bucket ([`crate::anti_entropy::BUCKETS`]).
        leaves: Vec<u64>,
    },
    /// Anti-entropy, from the exchange's initiator: the digests of its
    /// stored states of the differing buckets whose user keys lie in
    /// `[from, until)` (`until: None`: to the partition's end). Ranges run in
    /// the partition's stored order, bucket then key
    /// ([`crate::anti_entropy::position`]; the empty key is the partition's
    /// start). The exchange walks the differing buckets in such ranges, each
    /// within the configured size.
    AeDigests {
        /// The partition.
        partition: u32,
        /// The buckets the keys were taken from.
        buckets: Vec<u16>,
        /// The first user key of the range.
        from: Bytes,
        /// The end of the range, exclusive.
        until: Option<Bytes>,
        /// User key and the digest of its encoded state.
        digests: Vec<(Bytes, u64)>,
    },
    /// Anti-entropy: stored key states of the buckets in `[from, until)` to
    /// merge. With `answer`, the responder's reply to [`Message::AeDigests`]:
    /// its states that differ from the digests, the keys it `wanted`, and an
    /// `until` that may end the range earlier (to stay within size; the
    /// initiator goes on from there). Without, the initiator's states of the
    /// wanted keys.
    AeStates {
        /// The partition.
        partition: u32,
        /// The buckets the states were taken from.
        buckets: Vec<u16>,
        /// The first user key of the range.
        from: Bytes,
        /// The end of the range, exclusive.
        until: Option<Bytes>,
        /// User key and encoded key state.
        states: Vec<(Bytes, Bytes)>,
        /// Keys whose state the responder wants from the initiator.
        wanted: Vec<Bytes>,
        /// Set on the responder's answer.
        answer: bool,
    },
    /// A new owner of `partition` asks a committed primary for its states
    /// of the keys from `from` on (ownership move of assignment `version`).
    PullStates {
        /// The partition.
        partition: u32,
        /// The assignment version the move belongs to.
        version: u64,
        /// The first user key wanted.
        from: Bytes,
        /// Answer with digests of the states, not the states.
        digests: bool,
    },
    /// The answer: the states of `[from, until)` (`until: None`: to the
    /// partition's end; in the stored order, as for
    /// [`Message::AeDigests`]), cut where the configured size says.
    PullReply {
        /// The partition.
        partition: u32,
        /// The version asked for.
        version: u64,
        /// The first user key of the range.
        from: Bytes,
        /// The end of the range, exclusive.
        until: Option<Bytes>,
        /// User key and encoded key state (or its 8-byte digest).
        states: Vec<(Bytes, Bytes)>,
        /// Whether `states` carries digests.
        digests: bool,
    },
    /// A new owner asks for the states of keys whose digests differed.
    PullKeys {
        /// The partition.
        partition: u32,
        /// The assignment version the move belongs to.
        version: u64,
        /// The user keys (at most `anti_entropy_bytes_max` bytes of them).
        keys: Vec<Bytes>,
    },
    /// The partition's first primary asks whether this replica holds the
    /// tombstone state with this digest (tombstone reaping).
    ReapQuery {
        /// The user key.
        key: Bytes,
        /// Digest of the tombstone state.
        digest: u64,
    },
    /// The answer to a `ReapQuery`.
    ReapAnswer {
        /// The user key.
        key: Bytes,
        /// The digest asked about.
        digest: u64,
        /// Whether this replica holds exactly that state.
        same: bool,
    },
    /// Every primary holds the tombstone: delete it if it is still that state.
    Reap {
        /// The user key.
        key: Bytes,
        /// Digest of the tombstone state.
        digest: u64,
    },
    /// The answer: the states of those keys this node holds.
    PullKeysReply {
        /// The partition.
        partition: u32,
        /// The version asked for.
        version: u64,
        /// User key and encoded key state.
        states: Vec<(Bytes, Bytes)>,
    },
}

impl Message {
    /// Whether the message is background work (anti-entropy, moves, hinted
    /// handoff, reaping) rather than part of a client request. The transport
    /// sends the two kinds on separate streams, the client's first, so that
    /// a request's messages never queue behind a partition's states.
    pub fn is_background(&self) -> bool {
        match self {
            Message::Forward { .. }
            | Message::ForwardReply { .. }
            | Message::Replicate { .. }
            | Message::ReplicateAck { .. }
            | Message::Read { .. }
            | Message::ReadReply { .. }
            | Message::Repair { .. } => false,
            Message::HintReplay { .. }
            | Message::HintAck { .. }
            | Message::AeRoot { .. }
            | Message::AeLeaves { .. }
            | Message::AeDigests { .. }
            | Message::AeStates { .. }
            | Message::PullStates { .. }
            | Message::PullReply { .. }
            | Message::PullKeys { .. }
            | Message::PullKeysReply { .. }
            | Message::ReapQuery { .. }
            | Message::ReapAnswer { .. }
            | Message::Reap { .. } => true,
        }
    }
}

/// Something the shell must do for the node.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send a message to a peer (best effort; the protocol tolerates loss).
    Send {
        /// The peer.
        to: NodeId,
        /// The message.
        message: Message,
    },
    /// Answer a client request.
    Respond {
        /// The request being answered.
        id: RequestId,
        /// The answer.
        response: Response,
    },
    /// The node changed the ring (a move finished, its progress mark, a
    /// commit): merge it into the shell's ring, persist and gossip it, and
    /// hand the merge back through `handle_ring`.
    Ring(crate::ring::Ring),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Actor;
    use crate::siblings::SiblingValue;

    fn messages() -> Vec<Message> {
        let actor = Actor {
            node: NodeId(3),
            epoch: 2,
        };
        let mut state = KeyState::default();
        let dot = state.coordinate_write(
            actor,
            &VersionVector::default(),
            SiblingValue::Value(Bytes::from_static(b"value")),
            7,
        );
        let key = Bytes::from_static(b"key");
        let request = Request::Put {
            key: key.clone(),
            value: Bytes::from_static(b"value"),
            context: state.context(),
            options: WriteOptions {
                w: Some(Quorum::Count(2)),
                sloppy: Some(false),
                durable: Some(true),
                timeout: Some(Duration::from_millis(250)),
            },
        };
        vec![
            Message::Forward {
                forward_id: 9,
                request,
            },
            Message::ForwardReply {
                forward_id: 9,
                response: Response::Written(WriteResult {
                    dot,
                    context: state.context(),
                    acks: 2,
                }),
            },
            Message::ForwardReply {
                forward_id: 10,
                response: Response::Failed(RequestError::QuorumNotReached {
                    acks: 1,
                    required: 2,
                }),
            },
            Message::Replicate {
                operation: 1 << 40,
                key: key.clone(),
                state: state.clone(),
                durable: true,
                hint_for: Some(NodeId(5)),
            },
            Message::ReplicateAck {
                operation: 1,
                outcome: ReplicaOutcome::Refused,
            },
            Message::Read {
                operation: 2,
                key: key.clone(),
                hint_for: None,
            },
            Message::ReadReply {
                operation: 2,
                state: Some(state.clone()),
            },
            Message::ReadReply {
                operation: 3,
                state: None,
            },
            Message::Repair {
                key: key.clone(),
                state: state.clone(),
            },
            Message::HintReplay {
                key: key.clone(),
                state,
                hint_digest: u64::MAX,
            },
            Message::HintAck {
                key: key.clone(),
                hint_digest: 0,
            },
            Message::AeRoot {
                partition: 7,
                root: u64::MAX,
            },
            Message::AeLeaves {
                partition: 7,
                leaves: vec![1; crate::anti_entropy::BUCKETS],
            },
            Message::AeDigests {
                partition: 7,
                buckets: vec![0, 255],
                from: Bytes::new(),
                until: None,
                digests: vec![(key.clone(), 42)],
            },
            Message::AeStates {
                partition: 7,
                buckets: vec![0, 255],
                from: Bytes::new(),
                until: Some(key.clone()),
                states: vec![(key.clone(), Bytes::from_static(b"state"))],
                wanted: vec![key.clone()],
                answer: true,
            },
            Message::PullStates {
                partition: 7,
                version: 3,
                from: key.clone(),
                digests: true,
            },
            Message::PullReply {
                partition: 7,
                version: 3,
                from: Bytes::new(),
                until: None,
                states: vec![(key.clone(), Bytes::from_static(b"state"))],
                digests: false,
            },
            Message::PullKeys {
                partition: 7,
                version: 3,
                keys: vec![key.clone()],
            },
            Message::ReapQuery {
                key: key.clone(),
                digest: 9,
            },
            Message::ReapAnswer {
                key: key.clone(),
                digest: 9,
                same: true,
            },
            Message::Reap {
                key: key.clone(),
                digest: 9,
            },
            Message::PullKeysReply {
                partition: 7,
                version: 3,
                states: vec![(key, Bytes::from_static(b"state"))],
            },
        ]
    }

    #[test]
    fn quorums_parse_from_their_names_and_counts() {
        for quorum in [Quorum::One, Quorum::Quorum, Quorum::All, Quorum::Count(2)] {
            assert_eq!(quorum.to_string().parse::<Quorum>(), Ok(quorum));
        }
        assert!("0".parse::<Quorum>().is_err());
        assert!("most".parse::<Quorum>().is_err());
        assert!("256".parse::<Quorum>().is_err());
    }

    #[test]
    fn every_message_round_trips_through_postcard() {
        for message in messages() {
            let bytes = postcard::to_allocvec(&message).unwrap();
            let decoded: Message = postcard::from_bytes(&bytes).unwrap();
            assert_eq!(decoded, message);
        }
    }

    #[test]
    fn truncated_or_corrupted_messages_decode_to_errors_not_panics() {
        for message in messages() {
            let bytes = postcard::to_allocvec(&message).unwrap();
            for cut in 0..bytes.len() {
                let _ = postcard::from_bytes::<Message>(&bytes[..cut]);
            }
            for position in 0..bytes.len() {
                let mut corrupted = bytes.clone();
                corrupted[position] ^= 0xa5;
                let _ = postcard::from_bytes::<Message>(&corrupted);
            }
        }
        assert!(postcard::from_bytes::<Message>(&[0xff, 0xff, 0xff]).is_err());
    }
}
