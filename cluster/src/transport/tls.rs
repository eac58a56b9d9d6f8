//! TLS and QUIC settings for both protocols (design §7).
//!
//! One server configuration serves peers and clients, told apart by ALPN.
//! A presented client certificate must chain to the cluster CA or the
//! handshake fails; anonymous clients are accepted only when the node does
//! not require client certificates, and a `shoal-peer/1` connection without a
//! certificate is closed right after the handshake (see
//! [`crate::transport::endpoint`]), so no peer traffic is ever read from it.
//! Every window, stream count and datagram buffer is set here explicitly
//! rather than left at quinn's defaults, so a peer cannot make a node buffer
//! more than these bounds per connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::protocol::{ALPN_CLIENT, ALPN_PEER};

/// Why TLS material could not be loaded or configured. Nothing was built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the material.
    #[error("tls configuration: {0}")]
    Config(String),
}

/// The files a node or client needs: the cluster CA and, optionally, its own
/// certificate chain and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA certificate (PEM).
    pub ca: PathBuf,
    /// This party's certificate chain (PEM), if it has one.
    pub certificate: Option<PathBuf>,
    /// This party's private key (PEM), if it has one.
    pub key: Option<PathBuf>,
}

/// Bounds on what one connection may make the other side hold.
#[derive(Debug, Clone)]
pub struct TransportLimits {
    /// Bidirectional streams (client requests) a peer may have open at once.
    pub bidi_streams_max: u32,
    /// Unidirectional streams a peer may have open at once.
    pub uni_streams_max: u32,
    /// Receive window of one stream.
    pub stream_receive_window_bytes: u32,
    /// Receive window of the whole connection.
    pub connection_receive_window_bytes: u32,
    /// Send window of the whole connection.
    pub send_window_bytes: u64,
    /// Datagrams buffered on receipt before the oldest are dropped.
    pub datagram_receive_buffer_bytes: usize,
    /// Datagrams buffered for sending before the oldest are dropped.
    pub datagram_send_buffer_bytes: usize,
    /// A connection silent this long is closed.
    pub idle_timeout: Duration,
    /// Keep-alive interval on idle connections (below `idle_timeout`).
    pub keep_alive_interval: Duration,
}

impl Default for TransportLimits {
    fn default() -> TransportLimits {
        TransportLimits {
            bidi_streams_max: 256,
            uni_streams_max: 16,
            stream_receive_window_bytes: 4 << 20,
            connection_receive_window_bytes: 16 << 20,
            send_window_bytes: 16 << 20,
            datagram_receive_buffer_bytes: 256 << 10,
            datagram_send_buffer_bytes: 256 << 10,
            idle_timeout: Duration::from_secs(10),
            keep_alive_interval: Duration::from_secs(2),
        }
    }
}

impl TransportLimits {
    /// The quinn transport configuration with these bounds.
    pub fn transport_config(&self) -> Result<quinn::TransportConfig, TlsError> {
        let mut config = quinn::TransportConfig::default();
        config
            .max_concurrent_bidi_streams(self.bidi_streams_max.into())
            .max_concurrent_uni_streams(self.uni_streams_max.into())
            .stream_receive_window(self.stream_receive_window_bytes.into())
            .receive_window(self.connection_receive_window_bytes.into())
            .send_window(self.send_window_bytes)
            .datagram_receive_buffer_size(Some(self.datagram_receive_buffer_bytes))
            .datagram_send_buffer_size(self.datagram_send_buffer_bytes)
            .keep_alive_interval(Some(self.keep_alive_interval))
            // Loopback and LANs carry 1,400-byte packets; starting there lets
            // a full SWIM datagram fit before path MTU discovery has run.
            .initial_mtu(1400);
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .map_err(|error| TlsError::Config(format!("idle timeout: {error}")))?;
        config.max_idle_timeout(Some(idle));
        Ok(config)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads every certificate of a PEM file.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certificates = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Pem {
            path: path.to_path_buf(),
            what: format!("bad PEM: {error}"),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "no certificate found".into(),
        });
    }
    Ok(certificates)
}

/// Loads the first private key of a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    match rustls_pemfile::private_key(&mut bytes.as_slice()) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "no private key found".into(),
        }),
        Err(error) => Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: format!("bad PEM: {error}"),
        }),
    }
}

fn roots(ca: &Path) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in load_certificates(ca)? {
        roots.add(certificate).map_err(|error| TlsError::Pem {
            path: ca.to_path_buf(),
            what: format!("not a usable CA certificate: {error}"),
        })?;
    }
    Ok(Arc::new(roots))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn own_identity(
    files: &TlsFiles,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, TlsError> {
    match (&files.certificate, &files.key) {
        (Some(certificate), Some(key)) => Ok(Some((
            load_certificates(certificate)?,
            load_private_key(key)?,
        ))),
        (None, None) => Ok(None),
        _ => Err(TlsError::Config(
            "a certificate needs its key and a key its certificate".into(),
        )),
    }
}

/// The node's server side: both ALPNs, client certificates verified against
/// the CA when presented and required when `require_client_certificates`.
pub fn server_config(
    files: &TlsFiles,
    require_client_certificates: bool,
    limits: &TransportLimits,
) -> Result<quinn::ServerConfig, TlsError> {
    let Some((chain, key)) = own_identity(files)? else {
        return Err(TlsError::Config(
            "a node needs a certificate and key".into(),
        ));
    };
    let builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(&files.ca)?, provider());
    let verifier = if require_client_certificates {
        builder
    } else {
        builder.allow_unauthenticated()
    }
    .build()
    .map_err(|error| TlsError::Config(error.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| TlsError::Config(error.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|error| TlsError::Config(error.to_string()))?;
    tls.alpn_protocols = vec![ALPN_PEER.to_vec(), ALPN_CLIENT.to_vec()];
    let crypto =
        QuicServerConfig::try_from(tls).map_err(|error| TlsError::Config(error.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(limits.transport_config()?));
    Ok(config)
}

/// The dialing side of `alpn`: verifies the node against the CA and
/// presents this party's certificate when it has one (peers always do).
pub fn client_config(
    files: &TlsFiles,
    alpn: &[u8],
    limits: &TransportLimits,
) -> Result<quinn::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| TlsError::Config(error.to_string()))?
        .with_root_certificates(roots(&files.ca)?);
    let mut tls = match own_identity(files)? {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|error| TlsError::Config(error.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto =
        QuicClientConfig::try_from(tls).map_err(|error| TlsError::Config(error.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(limits.transport_config()?));
    Ok(config)
}

/// The ALPN a finished handshake agreed on.
pub fn negotiated_alpn(connection: &quinn::Connection) -> Option<Vec<u8>> {
    connection
        .handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

/// Whether the other side presented a certificate (already verified against
/// the CA by the handshake).
pub fn presented_certificate(connection: &quinn::Connection) -> bool {
    connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .is_some_and(|chain| !chain.is_empty())
}
