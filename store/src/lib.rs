//! Shoal's store: the source of truth for all cluster state, in etcd's role.
//!
//! A revisioned key-value store with compare-and-swap writes, consistent paginated ranges and
//! watch over a bounded history. [`Store`] is the interface and its rustdoc is the contract;
//! [`RaftStore`] is the durable, Raft-replicated backend (openraft over sled) and [`MemStore`]
//! the in-memory one for tests. Both run the same MVCC logic ([`mvcc`]) and pass the same
//! conformance suite ([`conformance`]).
//!
//! A [`RaftStore`] is one member of a store cluster: alone (no [`PeerConfig`]) or with others
//! over mutual TLS, any member serving the whole [`Store`] API (see the `raft` module's docs on
//! [`RaftStore::open`], [`RaftStore::add_member`] and [`RaftStore::remove_member`]).
//!
//! This crate knows nothing of HTTP, Kubernetes objects or PKI: keys are strings, values bytes,
//! and peers are authenticated by the rustls configurations the caller builds.

mod api;
pub mod conformance;
mod error;
mod mem;
pub mod mvcc;
mod raft;
mod types;
mod watch;

pub use api::Store;
pub use error::{Result, StoreError};
pub use mem::{MemState, MemStore};
pub use mvcc::Retention;
pub use raft::{
    list_snapshots, read_snapshot_info, reset_cluster, snapshot_value, validate_snapshot_name,
    Bootstrap, Listed, Member, Members, NetworkFaults, PeerConfig, RaftStatus, RaftStore,
    RaftStoreConfig, ResetReport, SnapshotError, SnapshotHeader, SnapshotInfo, TypeConfig,
};
pub use types::{
    validate_key, validate_prefix, validate_value, ContinueToken, Event, EventKind, KeyValue,
    RangeRequest, RangeResponse, Revision, MAX_KEY_BYTES, MAX_VALUE_BYTES,
};
pub use watch::WatchStream;

/// Raft storage pieces, exposed so openraft's own storage test suite can run against them.
pub mod raft_storage {
    pub use crate::raft::{DiskSync, LogStore, StateMachine};
}
