//! The store's typed errors: one enum every backend returns, so callers (the API server) can
//! map each case to a Kubernetes status without knowing which backend answered.

use crate::types::{KeyValue, Revision};

/// Everything a [`crate::Store`] operation can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The key is not one the store accepts (see [`crate::validate_key`]).
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },

    /// The value is larger than [`crate::MAX_VALUE_BYTES`].
    #[error("value for {key:?} is {size} bytes, more than the limit of {max} bytes")]
    ValueTooLarge {
        key: String,
        size: usize,
        max: usize,
    },

    /// `create` found the key already present.
    #[error("key {key:?} already exists")]
    AlreadyExists { key: String, current: Box<KeyValue> },

    /// A compare-and-swap found another `mod_revision` than the one expected.
    #[error("key {key:?} was modified: expected revision {expected}, found {}", current.as_ref().map_or(0, |kv| kv.mod_revision))]
    Conflict {
        key: String,
        expected: Revision,
        current: Option<Box<KeyValue>>,
    },

    /// The key does not exist (for update and delete).
    #[error("key {key:?} not found")]
    NotFound { key: String },

    /// The revision asked for has been compacted away: the caller must start again from a
    /// fresh read (Kubernetes answers this with 410 Gone / Expired).
    #[error("revision {requested} is too old: history is compacted up to revision {compacted}")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },

    /// The revision asked for is newer than anything the store has written.
    #[error("revision {requested} is in the future: the current revision is {current}")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },

    /// A continue token that this store did not produce, or that was mangled.
    #[error("invalid continue token: {0}")]
    InvalidContinue(String),

    /// The store cannot serve the request now (no leader, shutting down); retrying may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),

    /// No leader could be reached, or the leader could not confirm its leadership with a
    /// majority of the cluster, within the store's request timeout: this member is cut off
    /// (a minority side of a partition) or the cluster is electing. Retrying later may
    /// succeed. For a write the outcome is unknown: it may still be applied.
    #[error("no leader or no quorum: {0}")]
    NoQuorum(String),

    /// This server was removed from its cluster: it refuses to serve and to start again on
    /// the same data (which belongs to a cluster that no longer counts it as a member).
    #[error("this server was removed from the store cluster: {0}")]
    Removed(String),

    /// The disk holding the store is (nearly) full: writes that add data are refused until
    /// space is freed; reads, deletes and compactions still work.
    #[error("store disk full: {0}")]
    NoSpace(String),

    /// A membership change that cannot be made as asked (an unknown member, an id taken by
    /// another address, removing the last voter).
    #[error("store membership: {0}")]
    Membership(String),

    /// The data on disk cannot be trusted; the server must not start on it.
    #[error("store data is corrupt or unreadable: {0}")]
    Corrupt(String),

    /// An I/O failure underneath (disk full, permissions).
    #[error("store I/O error: {0}")]
    Io(String),
}

impl StoreError {
    /// True for errors where retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::NoQuorum(_))
    }
}

impl From<sled::Error> for StoreError {
    fn from(err: sled::Error) -> Self {
        match err {
            sled::Error::Corruption { .. } => StoreError::Corrupt(err.to_string()),
            sled::Error::Io(io) => StoreError::Io(io.to_string()),
            other => StoreError::Io(other.to_string()),
        }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
