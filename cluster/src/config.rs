//! The cluster core's configuration: replication, quorum defaults, timeouts
//! and every limit that bounds memory or storage.
//!
//! Dynamo §4.5 calls the per-instance knobs `N`, `R` and `W`; here `N` is
//! [`Config::replication_factor`] and `R`, `W` are defaults that every request
//! may override. Invariant kept by [`Config::validate`]: every limit is
//! positive, the quorum defaults are satisfiable with `N` replicas, and the
//! partition count is a power of two — a `Node` is only ever built from a
//! configuration that passed it.

use std::time::Duration;

use crate::message::Quorum;
use crate::siblings::ConflictPolicy;

/// Why a configuration was rejected. Nothing was built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A value is outside the range the system can work with.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Everything a `Node` needs to know that is not learnt from its peers.
#[derive(Debug, Clone)]
pub struct Config {
    /// `N`: how many primaries hold each key.
    pub replication_factor: usize,
    /// `Q`: fixed number of partitions of the key space (a power of two).
    pub partition_count: u32,
    /// Read quorum when a request names none.
    pub read_quorum_default: Quorum,
    /// Write quorum when a request names none.
    pub write_quorum_default: Quorum,
    /// Whether fallbacks count toward quorums when a request does not say.
    pub sloppy_default: bool,
    /// Whether writes must be synced before they count when a request does not say.
    pub durable_default: bool,
    /// Deadline of a request when it names none.
    pub request_timeout: Duration,
    /// After this long without an answer from a primary, a write is also sent
    /// to a fallback as a hint for it (Dynamo §4.6 sloppy quorum).
    pub replica_answer_timeout: Duration,
    /// How the replicas resolve concurrent siblings.
    pub conflict_policy: ConflictPolicy,
    /// Most siblings a coordinated write may leave on a key; more is an error
    /// to the writer.
    pub sibling_count_max: usize,
    /// Longest accepted key.
    pub key_size_max_bytes: usize,
    /// Longest accepted value.
    pub value_size_max_bytes: usize,
    /// Largest accepted encoded context (version vector) in a request.
    pub context_size_max_bytes: usize,
    /// Largest stored key state this node accepts from a peer or produces.
    pub key_state_size_max_bytes: usize,
    /// Hint storage per target node; a hint that would exceed it is dropped and counted.
    pub hint_bytes_per_target_max: u64,
    /// Hints not updated for this long are dropped (counted); repair covers them.
    pub hint_age_max: Duration,
    /// How often hints for live targets are replayed.
    pub hint_replay_interval: Duration,
    /// Most hints sent to one target per replay round.
    pub hint_replay_batch_max: usize,
    /// Most requests this node coordinates or forwards at once; more are refused as busy.
    pub requests_in_flight_max: usize,
    /// Most outputs waiting to be polled; a shell must drain them. Over it,
    /// peer messages are shed (counted) rather than growing memory.
    pub output_queue_max: usize,
    /// How many recently seen forwarded request ids are remembered to drop duplicates.
    pub forwarded_ids_remembered_max: usize,
    /// Most cluster members a ring may hold.
    pub members_max: usize,
    /// How often this node starts an anti-entropy exchange (one partition,
    /// one peer); zero turns anti-entropy off.
    pub anti_entropy_interval: Duration,
    /// Partitions whose roots one anti-entropy round sends (each to one peer).
    pub anti_entropy_partitions_per_round: usize,
    /// Bytes of key states anti-entropy may send per second (a token bucket
    /// holding two messages' worth); zero for no limit.
    pub anti_entropy_bytes_per_second: u64,
    /// Whether foreground latency throttles background work below
    /// `anti_entropy_bytes_per_second` (`crate::admission`).
    pub admission_control: bool,
    /// How old a tombstone must be before it is reaped (once every primary
    /// holds it, nothing moves and every member has deleted its copies of
    /// partitions that moved away); zero keeps tombstones forever. Must
    /// exceed `hint_age_max`, so no hint of an older write can outlive it.
    /// A day by default.
    pub tombstone_grace: Duration,
    /// Keys looked at per reaping sweep step (one step a second).
    pub tombstone_reap_keys_per_round: usize,
    /// Most bytes of key states in one anti-entropy or pull message (and
    /// read from the store for one step). Each such message is merged in one
    /// turn of the node's loop, which every request behind it waits for.
    pub anti_entropy_bytes_max: usize,
    /// Most keys scanned per step when building a partition's tree (which
    /// also stops after `anti_entropy_bytes_max` bytes of states).
    pub anti_entropy_build_keys_max: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            replication_factor: 3,
            partition_count: 256,
            read_quorum_default: Quorum::Quorum,
            write_quorum_default: Quorum::Quorum,
            sloppy_default: true,
            durable_default: false,
            request_timeout: Duration::from_secs(2),
            replica_answer_timeout: Duration::from_millis(500),
            conflict_policy: ConflictPolicy::Siblings,
            sibling_count_max: 100,
            key_size_max_bytes: 1024,
            value_size_max_bytes: 1024 * 1024,
            context_size_max_bytes: 64 * 1024,
            key_state_size_max_bytes: 64 * 1024 * 1024,
            hint_bytes_per_target_max: 256 * 1024 * 1024,
            hint_age_max: Duration::from_secs(3 * 3600),
            hint_replay_interval: Duration::from_secs(1),
            hint_replay_batch_max: 64,
            requests_in_flight_max: 4096,
            output_queue_max: 65_536,
            forwarded_ids_remembered_max: 4096,
            members_max: 1024,
            anti_entropy_interval: Duration::from_millis(100),
            anti_entropy_partitions_per_round: 8,
            anti_entropy_bytes_per_second: 8 << 20,
            admission_control: true,
            tombstone_grace: Duration::from_secs(24 * 3600),
            tombstone_reap_keys_per_round: 256,
            anti_entropy_bytes_max: 256 << 10,
            anti_entropy_build_keys_max: 4096,
        }
    }
}

impl Config {
    /// Checks that the configuration can be run; see the module invariant.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |reason: String| Err(ConfigError::Invalid(reason));
        if self.replication_factor == 0 || self.replication_factor > 255 {
            return invalid(format!(
                "replication_factor must be 1..=255, got {}",
                self.replication_factor
            ));
        }
        if !self.partition_count.is_power_of_two() || self.partition_count > 65_536 {
            return invalid(format!(
                "partition_count must be a power of two in 1..=65536, got {}",
                self.partition_count
            ));
        }
        for (name, quorum) in [
            ("read_quorum_default", self.read_quorum_default),
            ("write_quorum_default", self.write_quorum_default),
        ] {
            if let Err(reason) = quorum.required(self.replication_factor) {
                return invalid(format!("{name}: {reason}"));
            }
        }
        let positive = [
            ("sibling_count_max", self.sibling_count_max),
            ("key_size_max_bytes", self.key_size_max_bytes),
            ("value_size_max_bytes", self.value_size_max_bytes),
            ("context_size_max_bytes", self.context_size_max_bytes),
            ("key_state_size_max_bytes", self.key_state_size_max_bytes),
            ("hint_replay_batch_max", self.hint_replay_batch_max),
            ("anti_entropy_bytes_max", self.anti_entropy_bytes_max),
            (
                "anti_entropy_partitions_per_round",
                self.anti_entropy_partitions_per_round,
            ),
            (
                "anti_entropy_build_keys_max",
                self.anti_entropy_build_keys_max,
            ),
            ("requests_in_flight_max", self.requests_in_flight_max),
            ("output_queue_max", self.output_queue_max),
            (
                "forwarded_ids_remembered_max",
                self.forwarded_ids_remembered_max,
            ),
            ("members_max", self.members_max),
            (
                "tombstone_reap_keys_per_round",
                self.tombstone_reap_keys_per_round,
            ),
        ];
        for (name, value) in positive {
            if value == 0 {
                return invalid(format!("{name} must be positive"));
            }
        }
        if !self.tombstone_grace.is_zero() && self.tombstone_grace <= self.hint_age_max {
            return invalid(format!(
                "tombstone_grace ({:?}) must exceed hint_age_max ({:?}), or be zero to keep tombstones",
                self.tombstone_grace, self.hint_age_max
            ));
        }
        if self.hint_bytes_per_target_max == 0 {
            return invalid("hint_bytes_per_target_max must be positive".into());
        }
        for (name, duration) in [
            ("request_timeout", self.request_timeout),
            ("replica_answer_timeout", self.replica_answer_timeout),
            ("hint_age_max", self.hint_age_max),
            ("hint_replay_interval", self.hint_replay_interval),
        ] {
            if duration.is_zero() {
                return invalid(format!("{name} must be positive"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_configuration_is_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn partition_count_must_be_a_power_of_two() {
        let config = Config {
            partition_count: 100,
            ..Config::default()
        };
        assert!(config.validate().is_err());
    }

    #[test]
    fn quorum_default_larger_than_replication_factor_is_rejected() {
        let config = Config {
            write_quorum_default: Quorum::Count(4),
            ..Config::default()
        };
        assert!(config.validate().is_err());
    }
}
