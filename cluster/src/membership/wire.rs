//! SWIM's datagram wire format: one header, one body, then piggybacked updates.
//!
//! Every datagram is `postcard(Envelope) ‖ count: u8 ‖ postcard(Update) × count`.
//! The envelope carries the sender's identity (an implicit `Alive` of the
//! sender, SWIM §4.2 as refined by memberlist) and its metadata version; the
//! body is one of the protocol's message kinds (SWIM §3.1 ping / ack /
//! ping-req, Lifeguard §IV-A nack, push-pull digests and entries, metadata
//! chunks). [`MessageWriter`] appends updates only while the encoded datagram
//! stays within the byte budget, so **no datagram exceeds the budget whatever
//! the group size**: the size is checked on the real encoding, not estimated.
//! Decoding never panics: malformed input is an error value.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The protocol version in every header; datagrams of another version are rejected.
pub const PROTOCOL_VERSION: u8 = 1;

/// Buckets in a push-pull digest: members are hashed into this many buckets and
/// only buckets whose digests differ are exchanged.
pub const SYNC_BUCKETS: usize = 64;

/// The largest encoding of one [`Update`] (ids and counters as 10-byte varints,
/// an IPv6 address): 61 bytes, rounded up.
pub const UPDATE_SIZE_MAX_BYTES: usize = 80;

/// Most updates one datagram may carry (the count is one byte).
pub const UPDATES_PER_DATAGRAM_MAX: usize = 255;

/// A member's liveness state as seen by one observer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MemberState {
    /// Answers probes (or has not yet failed one).
    Alive,
    /// Failed a probe; still treated as alive until the suspicion times out.
    Suspect,
    /// Declared failed; a tombstone that refuses stale `Alive`s of its incarnation.
    Dead,
    /// Left gracefully; final for its generation.
    Left,
}

impl MemberState {
    /// Precedence at equal incarnation: a later state in this order wins.
    pub fn rank(self) -> u8 {
        match self {
            MemberState::Alive => 0,
            MemberState::Suspect => 1,
            MemberState::Dead => 2,
            MemberState::Left => 3,
        }
    }

    /// Whether the member counts as a live group member (probed, gossiped to).
    pub fn is_live(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }
}

/// One piggybacked membership update (a rumour), or one push-pull entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    /// The member the update is about.
    pub node: u64,
    /// The member's boot generation; a newer generation replaces the record.
    pub generation: u64,
    /// The member's incarnation within its generation; only it increments it.
    pub incarnation: u64,
    /// The state asserted.
    pub state: MemberState,
    /// Where the member listens.
    pub address: SocketAddr,
    /// Who asserts it: the accuser of a `Suspect` or `Dead`, the member itself otherwise.
    pub from: u64,
}

/// The fixed part of every datagram.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// [`PROTOCOL_VERSION`].
    pub version: u8,
    /// The sender.
    pub source: u64,
    /// The sender's generation.
    pub generation: u64,
    /// The sender's incarnation.
    pub incarnation: u64,
    /// The version of the sender's disseminated metadata blob.
    pub metadata_version: u64,
    /// A digest of the sender's metadata blob (tells apart equal versions).
    pub metadata_digest: u32,
}

/// The message kinds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A probe; `target` names the member meant (a misrouted ping is ignored).
    Ping {
        /// Echoed in the ack.
        sequence: u32,
        /// The member probed.
        target: u64,
    },
    /// The answer to a ping, or a relay forwarding the target's answer.
    Ack {
        /// The sequence of the ping (or ping-req) answered.
        sequence: u32,
    },
    /// Ask a relay to probe `target` on our behalf (SWIM §3.1).
    PingRequest {
        /// Echoed in the forwarded ack or nack.
        sequence: u32,
        /// The member to probe.
        target: u64,
        /// Where it listens.
        target_address: SocketAddr,
        /// Whether to send a nack when the target does not answer in time (Lifeguard).
        nack: bool,
    },
    /// A relay's report that the target did not answer it in time (Lifeguard §IV-A).
    Nack {
        /// The ping-req's sequence.
        sequence: u32,
    },
    /// Piggyback only: dissemination while updates are pending.
    Gossip,
    /// Push-pull, digest first: per-bucket digests of the sender's view.
    SyncDigest {
        /// Whether the receiver should answer with its own digest.
        reply: bool,
        /// Whether this is a join request (the receiver answers even if equal).
        join: bool,
        /// [`SYNC_BUCKETS`] digests.
        buckets: Vec<u32>,
    },
    /// Push-pull entries: the updates section holds view entries, not rumours.
    SyncEntries,
    /// Ask for the sender's metadata blob.
    MetadataRequest {
        /// The version wanted.
        version: u64,
        /// Its digest.
        digest: u32,
    },
    /// One chunk of a metadata blob.
    MetadataChunk {
        /// The blob's version.
        version: u64,
        /// The blob's digest.
        digest: u32,
        /// The blob's whole length.
        total_length: u32,
        /// Where this chunk starts.
        offset: u32,
        /// The chunk.
        bytes: Vec<u8>,
    },
}

impl Body {
    /// Whether the receiver answers this message directly to its sender.
    pub fn expects_reply(&self) -> bool {
        matches!(
            self,
            Body::Ping { .. }
                | Body::PingRequest { .. }
                | Body::SyncDigest { .. }
                | Body::MetadataRequest { .. }
        )
    }
}

#[derive(Serialize)]
struct EnvelopeRef<'a> {
    header: &'a Header,
    body: &'a Body,
}

#[derive(Deserialize)]
struct Envelope {
    header: Header,
    body: Body,
}

/// A decoded datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The sender's header.
    pub header: Header,
    /// The message.
    pub body: Body,
    /// Piggybacked updates (or push-pull entries).
    pub updates: Vec<Update>,
}

/// Why a datagram was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Longer than the datagram budget.
    #[error("datagram of {length} bytes exceeds the {maximum}-byte budget")]
    TooLong {
        /// Its length.
        length: usize,
        /// The budget.
        maximum: usize,
    },
    /// Not a valid encoding.
    #[error("malformed datagram: {0}")]
    Malformed(&'static str),
    /// Another protocol version.
    #[error("unsupported protocol version {0}")]
    Version(u8),
}

/// Decodes one datagram of at most `size_max_bytes`.
pub fn decode(bytes: &[u8], size_max_bytes: usize) -> Result<Datagram, DecodeError> {
    if bytes.len() > size_max_bytes {
        return Err(DecodeError::TooLong {
            length: bytes.len(),
            maximum: size_max_bytes,
        });
    }
    let (envelope, rest) = postcard::take_from_bytes::<Envelope>(bytes)
        .map_err(|_| DecodeError::Malformed("envelope"))?;
    if envelope.header.version != PROTOCOL_VERSION {
        return Err(DecodeError::Version(envelope.header.version));
    }
    if let Body::SyncDigest { buckets, .. } = &envelope.body
        && buckets.len() != SYNC_BUCKETS
    {
        return Err(DecodeError::Malformed("digest bucket count"));
    }
    let (&count, mut rest) = rest
        .split_first()
        .ok_or(DecodeError::Malformed("missing update count"))?;
    let mut updates = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let (update, tail) = postcard::take_from_bytes::<Update>(rest)
            .map_err(|_| DecodeError::Malformed("update"))?;
        updates.push(update);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(DecodeError::Malformed("trailing bytes"));
    }
    Ok(Datagram {
        header: envelope.header,
        body: envelope.body,
        updates,
    })
}

/// Builds one datagram, appending updates only while it fits the budget.
#[derive(Debug)]
pub struct MessageWriter {
    bytes: Vec<u8>,
    count_at: usize,
    count: u8,
    budget_bytes: usize,
}

impl MessageWriter {
    /// Starts a datagram; `None` if the header and body alone exceed the budget.
    pub fn new(header: &Header, body: &Body, budget_bytes: usize) -> Option<MessageWriter> {
        let envelope = EnvelopeRef { header, body };
        let mut bytes =
            postcard::to_extend(&envelope, Vec::with_capacity(256.min(budget_bytes))).ok()?;
        let count_at = bytes.len();
        bytes.push(0);
        if bytes.len() > budget_bytes {
            return None;
        }
        Some(MessageWriter {
            bytes,
            count_at,
            count: 0,
            budget_bytes,
        })
    }

    /// Appends `update` if it still fits; returns whether it did.
    pub fn try_push(&mut self, update: &Update) -> bool {
        if usize::from(self.count) >= UPDATES_PER_DATAGRAM_MAX {
            return false;
        }
        let mut scratch = [0u8; UPDATE_SIZE_MAX_BYTES];
        let Ok(encoded) = postcard::to_slice(update, &mut scratch) else {
            return false;
        };
        if self.bytes.len() + encoded.len() > self.budget_bytes {
            return false;
        }
        self.bytes.extend_from_slice(encoded);
        self.count += 1;
        true
    }

    /// How many updates were appended.
    pub fn count(&self) -> usize {
        usize::from(self.count)
    }

    /// The encoded datagram.
    pub fn finish(mut self) -> Vec<u8> {
        self.bytes[self.count_at] = self.count;
        self.bytes
    }
}
