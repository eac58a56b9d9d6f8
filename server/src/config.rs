//! `shoald`'s configuration: a TOML file, then command-line flags on top.
//!
//! Every field has a default, so a minimal file names only the node's id,
//! address, data directory and TLS files. Unknown fields are an error (a
//! typo must not silently fall back to a default). [`NodeConfig::validate`]
//! checks the whole before anything starts, and the cluster core's own
//! configuration is derived from it ([`NodeConfig::cluster_config`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use shoal_cluster::config::Config as ClusterConfig;
use shoal_cluster::message::Quorum;
use shoal_cluster::siblings::ConflictPolicy;
use shoal_cluster::transport::tls::{TlsFiles, TransportLimits};

/// The node's default for `background_message_bytes_max`: a quarter of the
/// cluster core's (which the simulator keeps). Measured with
/// `scripts/bench-moves.sh` (docs/bench.md, session 10): with 64 KiB steps
/// a membership change's read p99 was 1.04 × its quiet windows' on average
/// over four runs, against 1.22 × with 256 KiB.
pub const BACKGROUND_MESSAGE_BYTES_DEFAULT: usize = 64 << 10;

/// The whole node configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id, unique in the cluster and never reused.
    pub node_id: u64,
    /// UDP address the QUIC endpoint binds; peers and clients use it.
    pub listen: SocketAddr,
    /// Where the node keeps its data.
    pub data_dir: PathBuf,
    /// Addresses of members to join through (empty for the first node).
    pub seeds: Vec<SocketAddr>,
    /// Local TCP address of the Prometheus metrics endpoint (none when unset).
    pub metrics_listen: Option<SocketAddr>,
    /// TLS files and client authentication.
    pub tls: TlsSection,
    /// Replication and request defaults.
    pub cluster: ClusterSection,
    /// Sizes and counts that bound memory.
    pub limits: LimitsSection,
    /// Storage engine settings.
    pub storage: StorageSection,
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// The cluster CA certificate.
    pub ca: PathBuf,
    /// This node's certificate.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
    /// Refuse clients that present no certificate from the CA.
    pub require_client_certificates: bool,
    /// The name node certificates carry (`shoald cert` uses `shoal`).
    pub server_name: String,
}

/// `[cluster]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// `N`.
    pub replication_factor: usize,
    /// `Q`, fixed when the cluster is created.
    pub partition_count: u32,
    /// Default `r`: `one`, `quorum`, `all` or a number.
    pub read_quorum: String,
    /// Default `w`.
    pub write_quorum: String,
    /// Whether fallbacks count toward quorums by default.
    pub sloppy: bool,
    /// Whether writes count only once synced by default.
    pub durable: bool,
    /// Default request deadline.
    pub request_timeout_ms: u64,
    /// `siblings` or `lww`.
    pub conflict_policy: String,
    /// SWIM protocol period.
    pub protocol_period_ms: u64,
    /// Bytes per second background work (anti-entropy, partition moves)
    /// may use at most; zero for no limit.
    pub background_bytes_per_second: u64,
    /// Largest message of background work (an anti-entropy or pull step's
    /// key states): a step reads, encodes and sends this much in one turn of
    /// the node's event loop, which requests queued behind it wait for.
    /// 64 KiB by default ([`BACKGROUND_MESSAGE_BYTES_DEFAULT`]).
    pub background_message_bytes_max: usize,
    /// Whether foreground latency throttles background work below that.
    pub admission_control: bool,
    /// Seconds after which a tombstone every primary holds is reaped (a day
    /// by default; it must exceed the hint age); 0 keeps tombstones (see
    /// `Config::tombstone_grace`).
    pub tombstone_grace_secs: u64,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// Longest key.
    pub key_size_max_bytes: usize,
    /// Longest value.
    pub value_size_max_bytes: usize,
    /// Most siblings a write may leave.
    pub sibling_count_max: usize,
    /// Largest stored key state (all siblings together).
    pub key_state_size_max_bytes: usize,
    /// Largest frame on any stream.
    pub frame_size_max_bytes: u32,
    /// Requests coordinated or forwarded at once; more get `busy`.
    pub requests_in_flight_max: usize,
    /// Concurrent request streams per client connection.
    pub streams_per_connection_max: u32,
    /// Connections accepted at once.
    pub connections_max: usize,
    /// Items waiting for the event loop; over it clients get `busy`.
    pub inbound_queue_max: usize,
    /// Messages queued per peer before new ones are dropped.
    pub peer_queue_max: usize,
    /// Hint bytes kept per unreachable node.
    pub hint_bytes_per_target_max: u64,
    /// A connection silent this long is closed.
    pub idle_timeout_ms: u64,
}

/// `[storage]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSection {
    /// `always`, `interval` or `never` (writes asked to be durable are
    /// synced whatever this says).
    pub sync: String,
    /// The interval of `interval`.
    pub sync_interval_ms: u64,
    /// Memtable size before it is flushed.
    pub memtable_size_bytes: usize,
}

impl Default for NodeConfig {
    fn default() -> NodeConfig {
        NodeConfig {
            node_id: 0,
            listen: SocketAddr::from(([127, 0, 0, 1], 7101)),
            data_dir: PathBuf::from("./data"),
            seeds: Vec::new(),
            metrics_listen: None,
            tls: TlsSection::default(),
            cluster: ClusterSection::default(),
            limits: LimitsSection::default(),
            storage: StorageSection::default(),
        }
    }
}

impl Default for TlsSection {
    fn default() -> TlsSection {
        TlsSection {
            ca: PathBuf::from("ca.pem"),
            cert: PathBuf::from("node.pem"),
            key: PathBuf::from("node.key"),
            require_client_certificates: false,
            server_name: "shoal".into(),
        }
    }
}

impl Default for ClusterSection {
    fn default() -> ClusterSection {
        ClusterSection {
            replication_factor: 3,
            partition_count: 256,
            read_quorum: "quorum".into(),
            write_quorum: "quorum".into(),
            sloppy: true,
            durable: false,
            request_timeout_ms: 2000,
            conflict_policy: "siblings".into(),
            protocol_period_ms: 1000,
            background_bytes_per_second: 8 << 20,
            background_message_bytes_max: BACKGROUND_MESSAGE_BYTES_DEFAULT,
            admission_control: true,
            tombstone_grace_secs: 24 * 3600,
        }
    }
}

impl Default for LimitsSection {
    fn default() -> LimitsSection {
        LimitsSection {
            key_size_max_bytes: 1024,
            value_size_max_bytes: 1 << 20,
            sibling_count_max: 100,
            key_state_size_max_bytes: 8 << 20,
            frame_size_max_bytes: 16 << 20,
            requests_in_flight_max: 4096,
            streams_per_connection_max: 256,
            connections_max: 1024,
            inbound_queue_max: 8192,
            peer_queue_max: 4096,
            hint_bytes_per_target_max: 256 << 20,
            idle_timeout_ms: 10_000,
        }
    }
}

impl Default for StorageSection {
    fn default() -> StorageSection {
        StorageSection {
            sync: "interval".into(),
            sync_interval_ms: 100,
            memtable_size_bytes: 64 << 20,
        }
    }
}

/// Why a configuration was refused. Nothing was started.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its place.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl NodeConfig {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: error.to_string(),
        })
    }

    /// Checks everything that can be checked before starting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |reason: String| Err(ConfigError::Invalid(reason));
        if self.listen.ip().is_unspecified() {
            return invalid(format!(
                "listen must be a specific address peers can reach, not {}",
                self.listen
            ));
        }
        if self.limits.value_size_max_bytes >= self.limits.key_state_size_max_bytes {
            return invalid("value_size_max_bytes must be below key_state_size_max_bytes".into());
        }
        if self.limits.key_state_size_max_bytes + (64 << 10)
            > self.limits.frame_size_max_bytes as usize
        {
            return invalid(
                "frame_size_max_bytes must exceed key_state_size_max_bytes by 64 KiB".into(),
            );
        }
        for (name, value) in [
            (
                "streams_per_connection_max",
                self.limits.streams_per_connection_max as usize,
            ),
            ("connections_max", self.limits.connections_max),
            ("inbound_queue_max", self.limits.inbound_queue_max),
            ("peer_queue_max", self.limits.peer_queue_max),
            ("idle_timeout_ms", self.limits.idle_timeout_ms as usize),
            (
                "protocol_period_ms",
                self.cluster.protocol_period_ms as usize,
            ),
            (
                "background_message_bytes_max",
                self.cluster.background_message_bytes_max,
            ),
            (
                "request_timeout_ms",
                self.cluster.request_timeout_ms as usize,
            ),
        ] {
            if value == 0 {
                return invalid(format!("{name} must be positive"));
            }
        }
        self.sync_mode()?;
        self.cluster_config()?
            .validate()
            .map_err(|error| ConfigError::Invalid(error.to_string()))
    }

    /// The cluster core's configuration.
    pub fn cluster_config(&self) -> Result<ClusterConfig, ConfigError> {
        let quorum = |name: &str, text: &str| {
            text.parse::<Quorum>()
                .map_err(|error| ConfigError::Invalid(format!("{name}: {error}")))
        };
        let conflict_policy = match self.cluster.conflict_policy.as_str() {
            "siblings" => ConflictPolicy::Siblings,
            "lww" => ConflictPolicy::Lww,
            other => {
                return Err(ConfigError::Invalid(format!(
                    "conflict_policy must be siblings or lww, got {other:?}"
                )));
            }
        };
        Ok(ClusterConfig {
            replication_factor: self.cluster.replication_factor,
            partition_count: self.cluster.partition_count,
            read_quorum_default: quorum("read_quorum", &self.cluster.read_quorum)?,
            write_quorum_default: quorum("write_quorum", &self.cluster.write_quorum)?,
            sloppy_default: self.cluster.sloppy,
            durable_default: self.cluster.durable,
            request_timeout: Duration::from_millis(self.cluster.request_timeout_ms),
            conflict_policy,
            sibling_count_max: self.limits.sibling_count_max,
            key_size_max_bytes: self.limits.key_size_max_bytes,
            value_size_max_bytes: self.limits.value_size_max_bytes,
            key_state_size_max_bytes: self.limits.key_state_size_max_bytes,
            hint_bytes_per_target_max: self.limits.hint_bytes_per_target_max,
            requests_in_flight_max: self.limits.requests_in_flight_max,
            anti_entropy_bytes_per_second: self.cluster.background_bytes_per_second,
            anti_entropy_bytes_max: self.cluster.background_message_bytes_max,
            admission_control: self.cluster.admission_control,
            tombstone_grace: Duration::from_secs(self.cluster.tombstone_grace_secs),
            ..ClusterConfig::default()
        })
    }

    /// The storage engine's sync mode.
    pub fn sync_mode(&self) -> Result<shoal_storage::SyncMode, ConfigError> {
        match self.storage.sync.as_str() {
            "always" => Ok(shoal_storage::SyncMode::Always),
            "never" => Ok(shoal_storage::SyncMode::Never),
            "interval" if self.storage.sync_interval_ms > 0 => {
                Ok(shoal_storage::SyncMode::Interval(Duration::from_millis(
                    self.storage.sync_interval_ms,
                )))
            }
            other => Err(ConfigError::Invalid(format!(
                "storage.sync must be always, interval (with sync_interval_ms > 0) or never, got {other:?}"
            ))),
        }
    }

    /// The TLS files of the node.
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            ca: self.tls.ca.clone(),
            certificate: Some(self.tls.cert.clone()),
            key: Some(self.tls.key.clone()),
        }
    }

    /// The per-connection QUIC bounds.
    pub fn transport_limits(&self) -> TransportLimits {
        TransportLimits {
            bidi_streams_max: self.limits.streams_per_connection_max,
            idle_timeout: Duration::from_millis(self.limits.idle_timeout_ms),
            keep_alive_interval: Duration::from_millis(self.limits.idle_timeout_ms / 4),
            stream_receive_window_bytes: self.limits.frame_size_max_bytes.min(8 << 20),
            ..TransportLimits::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        NodeConfig::default().validate().unwrap();
    }

    #[test]
    fn a_minimal_file_parses_and_unknown_fields_are_refused() {
        let config: NodeConfig = toml::from_str(
            "node_id = 3\nlisten = \"127.0.0.1:7003\"\ndata_dir = \"/tmp/x\"\n[cluster]\nwrite_quorum = \"all\"\n",
        )
        .unwrap();
        assert_eq!(config.node_id, 3);
        assert_eq!(
            config.cluster_config().unwrap().write_quorum_default,
            Quorum::All
        );
        assert!(toml::from_str::<NodeConfig>("node_idd = 3\n").is_err());
    }

    #[test]
    fn out_of_range_values_are_refused_with_their_name() {
        let mut config = NodeConfig::default();
        config.cluster.read_quorum = "most".into();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("read_quorum"), "{error}");

        let mut config = NodeConfig::default();
        config.storage.sync = "sometimes".into();
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("storage.sync")
        );

        let config = NodeConfig {
            listen: "0.0.0.0:7000".parse().unwrap(),
            ..NodeConfig::default()
        };
        assert!(config.validate().is_err());

        let mut config = NodeConfig::default();
        config.cluster.background_message_bytes_max = 0;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("background_message_bytes_max")
        );
        config.cluster.background_message_bytes_max = 65536;
        assert_eq!(
            config.cluster_config().unwrap().anti_entropy_bytes_max,
            65536
        );

        let mut config = NodeConfig::default();
        config.cluster.partition_count = 100;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("partition_count")
        );
    }
}
