//! The engine's error type. Corruption (bytes on disk that fail a check) is kept
//! apart from I/O failures, so that callers can tell "the disk said no" from
//! "the disk returned something we never wrote".

use std::path::PathBuf;

/// Everything that can go wrong inside the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system I/O call failed; the engine state is unchanged unless
    /// the variant's context says otherwise.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file or directory the call was made on.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Bytes on disk failed a checksum, a magic number or a structural check.
    /// Nothing was returned to the caller from the damaged region.
    #[error("corruption in {path} at offset {offset}: {reason}")]
    Corruption {
        /// The damaged file.
        path: PathBuf,
        /// The byte offset of the damaged record or block.
        offset: u64,
        /// What check failed.
        reason: String,
    },
    /// Another process (or another handle in this one) holds the directory lock.
    #[error("database directory {path} is locked by another process")]
    Locked {
        /// The database directory.
        path: PathBuf,
    },
    /// An earlier write or sync failed; the engine refuses writes until it is
    /// reopened so that no acknowledged write can depend on lost bytes.
    #[error("database is read-only after an earlier write failure: {reason}")]
    ReadOnly {
        /// The failure that made the engine read-only.
        reason: String,
    },
    /// The caller passed something the engine does not accept (an oversized key,
    /// a bad option). Nothing was written.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The database has been closed.
    #[error("database is closed")]
    Closed,
}

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Builds a corruption error naming the file and offset.
    pub fn corruption(path: impl Into<PathBuf>, offset: u64, reason: impl Into<String>) -> Error {
        Error::Corruption {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }
}
