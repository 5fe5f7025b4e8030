//! The [`Store`] trait: the one interface the rest of Shoal uses for cluster state, and the
//! contract every backend must keep. [`crate::conformance`] checks that contract.

use async_trait::async_trait;

use crate::error::Result;
use crate::types::{KeyValue, RangeRequest, RangeResponse, Revision};
use crate::watch::WatchStream;

/// A revisioned key-value store with compare-and-swap writes and watch (etcd's role).
///
/// # Contract
///
/// Every backend keeps all of these; the conformance suite checks each one.
///
/// - **Revisions.** Each successful write (create, update, put, delete) gets the next
///   cluster-wide revision, one higher than the previous write's. A failed write (a rejected
///   compare-and-swap, bad input) changes nothing and consumes no revision. `0` is the empty
///   store.
/// - **Per-key bookkeeping.** A key's `create_revision` is the revision of the write that
///   created it, `mod_revision` that of its last write, and `version` counts writes since
///   creation (1 after create). A deleted and re-created key starts again at version 1.
/// - **Compare-and-swap.** `create` fails with `AlreadyExists` if the key exists; `update`
///   fails with `NotFound` if it does not, and with `Conflict` (carrying the current value) if
///   its `mod_revision` is not the expected one; `delete` with an expected revision does the same.
///   A failed operation stores nothing.
/// - **Reads.** `get` and `range` are linearizable: they observe every write acknowledged
///   before they were called. A range is consistent at one revision, also across pages: every
///   page of a continued range is read at the first page's revision, so a write between pages
///   is not seen. Keys come in byte order.
/// - **Watch.** `watch(prefix, after)` delivers every change with a revision greater than
///   `after` to keys under `prefix`, each exactly once, in revision order, without gaps, until
///   the stream is dropped. `after` may be any revision not older than the compacted revision
///   and not newer than the current one; older gives `Compacted`. A watcher that falls so far
///   behind that history it still needs is compacted receives `Compacted` and the stream ends.
/// - **History.** Changes stay retrievable (for watch and for reads at a past revision) until
///   compacted; compaction keeps history bounded and is the only way it is lost.
/// - **Durability** (durable backends only). A write is acknowledged only once it would
///   survive the process being killed (`kill -9`) at any instant after the acknowledgement.
/// - **Input.** Keys must pass [`crate::validate_key`] and values [`crate::validate_value`];
///   anything else is rejected with a typed error before it reaches storage.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The key's current value, or `None`.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// One page of the keys under a prefix; see [`RangeRequest`].
    async fn range(&self, request: RangeRequest) -> Result<RangeResponse>;

    /// Creates a key that must not exist yet. Returns the stored key-value.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue>;

    /// Replaces a key's value if its `mod_revision` is `expected`. Returns the stored key-value.
    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<KeyValue>;

    /// Writes a key whatever its state (create or overwrite). Returns the stored key-value.
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<KeyValue>;

    /// Deletes a key, only if its `mod_revision` is `expected` when given. Returns the deleted
    /// key-value as it was, and the revision of the deletion.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(KeyValue, Revision)>;

    /// Streams the changes under `prefix` after revision `after` (see the contract above).
    /// `None` means "from now on".
    async fn watch(&self, prefix: &str, after: Option<Revision>) -> Result<WatchStream>;

    /// The latest revision, linearizably.
    async fn current_revision(&self) -> Result<Revision>;

    /// The revision up to which history has been dropped.
    async fn compacted_revision(&self) -> Result<Revision>;

    /// Drops history up to and including `revision` (which must not be in the future).
    /// Compacting an already compacted revision is a no-op.
    async fn compact(&self, revision: Revision) -> Result<()>;
}
