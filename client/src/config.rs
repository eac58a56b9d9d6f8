//! The client's configuration: node addresses, TLS files and defaults, read
//! from TOML (`scripts/cluster.sh` writes one to `DIR/client.toml`).
//!
//! ```toml
//! nodes = ["127.0.0.1:7101", "127.0.0.1:7102"]
//! timeout_ms = 2000
//! [tls]
//! ca = "/path/ca.pem"
//! cert = "/path/client.pem"   # optional: for nodes that require client certificates
//! key = "/path/client.key"
//! server_name = "shoal"
//! ```
//!
//! Relative paths are taken relative to the file's directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use shoal_cluster::transport::tls::TlsFiles;

use crate::Error;

/// How to reach and talk to a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Nodes to contact first (any member will do; the ring names the rest).
    pub nodes: Vec<SocketAddr>,
    /// The cluster CA certificate.
    pub ca: PathBuf,
    /// A client certificate and key, if the nodes require one.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name the node certificates carry.
    pub server_name: String,
    /// Default request deadline.
    pub timeout: Duration,
    /// Largest frame accepted from a node.
    pub frame_size_max_bytes: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    nodes: Vec<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    tls: TlsFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    ca: PathBuf,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
    #[serde(default)]
    server_name: Option<String>,
}

impl ClientConfig {
    /// A configuration for `nodes` trusting the CA in `ca`.
    pub fn new(nodes: Vec<SocketAddr>, ca: PathBuf) -> ClientConfig {
        ClientConfig {
            nodes,
            ca,
            identity: None,
            server_name: "shoal".into(),
            timeout: Duration::from_secs(2),
            frame_size_max_bytes: 16 << 20,
        }
    }

    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<ClientConfig, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| Error::Config(format!("cannot read {}: {error}", path.display())))?;
        let file: File = toml::from_str(&text)
            .map_err(|error| Error::Config(format!("{}: {error}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |file: PathBuf| {
            if file.is_relative() {
                base.join(file)
            } else {
                file
            }
        };
        let mut nodes = Vec::new();
        for node in &file.nodes {
            nodes.push(node.parse().map_err(|error| {
                Error::Config(format!("{}: node {node:?}: {error}", path.display()))
            })?);
        }
        let identity = match (file.tls.cert, file.tls.key) {
            (Some(cert), Some(key)) => Some((resolve(cert), resolve(key))),
            (None, None) => None,
            _ => {
                return Err(Error::Config(format!(
                    "{}: tls.cert and tls.key go together",
                    path.display()
                )));
            }
        };
        let mut config = ClientConfig::new(nodes, resolve(file.tls.ca));
        config.identity = identity;
        if let Some(server_name) = file.tls.server_name {
            config.server_name = server_name;
        }
        if let Some(timeout_ms) = file.timeout_ms {
            config.timeout = Duration::from_millis(timeout_ms.max(1));
        }
        Ok(config)
    }

    /// The TLS files in the transport's terms.
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            ca: self.ca.clone(),
            certificate: self.identity.as_ref().map(|(cert, _)| cert.clone()),
            key: self.identity.as_ref().map(|(_, key)| key.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_with_relative_paths_resolves_them_beside_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        std::fs::write(
            &path,
            "nodes = [\"127.0.0.1:7101\"]\ntimeout_ms = 500\n[tls]\nca = \"certs/ca.pem\"\n",
        )
        .unwrap();
        let config = ClientConfig::load(&path).unwrap();
        assert_eq!(config.nodes, vec!["127.0.0.1:7101".parse().unwrap()]);
        assert_eq!(config.ca, dir.path().join("certs/ca.pem"));
        assert_eq!(config.timeout, Duration::from_millis(500));
        assert!(config.identity.is_none());
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        std::fs::write(&path, "nodes = [\"nowhere\"]\n[tls]\nca = \"ca.pem\"\n").unwrap();
        assert!(
            ClientConfig::load(&path)
                .unwrap_err()
                .to_string()
                .contains("nowhere")
        );
        std::fs::write(
            &path,
            "nodes = []\n[tls]\nca = \"ca.pem\"\ncert = \"c.pem\"\n",
        )
        .unwrap();
        assert!(
            ClientConfig::load(&path)
                .unwrap_err()
                .to_string()
                .contains("together")
        );
        assert!(ClientConfig::load(&dir.path().join("missing.toml")).is_err());
    }
}
