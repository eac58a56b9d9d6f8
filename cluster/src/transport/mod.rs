//! The transport: the only module of `shoal-cluster` that does IO.
//!
//! Design §7: one QUIC endpoint per node serves peers (`shoal-peer/1`) and
//! clients (`shoal-client/1`); requests travel as frames on streams, SWIM on
//! datagrams.
//! - [`frame`]: the pure, length-checked frame codec every stream carries.
//! - [`tls`]: rustls and quinn settings: mutual TLS for peers, explicit
//!   windows, stream counts and datagram buffers.
//! - [`endpoint`]: the node's endpoint: the peer pool (one long-lived
//!   connection per pair with a foreground and a background stream, batched
//!   writes, reconnect with backoff) and the
//!   client service, both feeding one bounded queue into the node's loop.
//! - [`call`]: the client's side of one request on its own stream;
//!   [`channel`]: many requests multiplexed on one long-lived stream.

pub mod call;
pub mod channel;
pub mod endpoint;
pub mod frame;
pub mod tls;

/// `error` and its causes, outermost first: quinn's stream errors print only
/// "connection lost" and keep why (timed out, reset, closed by the peer) as
/// their source.
pub fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let more = inner.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn a_lost_connection_says_why() {
        let error = quinn::ReadError::ConnectionLost(quinn::ConnectionError::TimedOut);
        assert_eq!(describe(&error), "connection lost: timed out");
        let error = quinn::ReadError::ConnectionLost(quinn::ConnectionError::Reset);
        assert_eq!(describe(&error), "connection lost: reset by peer");
        let error = quinn::ConnectionError::TimedOut;
        assert_eq!(describe(&error), "timed out");
        // A cause already in the text ("read error: {0}") is not repeated.
        let error = quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(
            quinn::ConnectionError::TimedOut,
        ));
        assert_eq!(describe(&error), "read error: connection lost: timed out");
    }
}
