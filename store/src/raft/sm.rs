//! The replicated state machine on sled. All of it lives in one tree so that applying a batch
//! of log entries is one atomic sled batch: `k<key>` holds current key-values, `h<revision>`
//! the history events, `m<name>` the machine's own bookkeeping (revision, compaction point,
//! last applied log id, membership). Readers share [`SmShared`] with the Raft-owned
//! [`StateMachine`]; a read lock keeps multi-key reads consistent with concurrent applies.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::oneshot;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::disk::DiskSync;
use super::TypeConfig;
use crate::error::{Result, StoreError};
use crate::mvcc::{self, KvState, Outcome, RangeSource, Retention};
use crate::types::{Event, EventKind, KeyValue, Revision};
use crate::watch::{HistorySource, WatchHub};

type NodeId = u64;
type StorageResult<T> = std::result::Result<T, StorageError<NodeId>>;
type Membership = StoredMembership<NodeId, BasicNode>;

const KV: u8 = b'k';
const HISTORY: u8 = b'h';
const META_REVISION: &[u8] = b"mrevision";
const META_COMPACTED: &[u8] = b"mcompacted";
const META_APPLIED: &[u8] = b"mapplied";
const META_MEMBERSHIP: &[u8] = b"mmembership";

fn kv_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(KV);
    k.extend_from_slice(key.as_bytes());
    k
}

fn history_key(revision: Revision) -> [u8; 9] {
    let mut k = [HISTORY; 9];
    k[1..].copy_from_slice(&(revision as u64).to_be_bytes());
    k
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    bincode::serialize(value).map_err(|e| StoreError::Io(format!("encoding: {e}")))
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    bincode::deserialize(bytes).map_err(|e| StoreError::Corrupt(format!("decoding: {e}")))
}

fn any(err: impl std::fmt::Display) -> AnyError {
    AnyError::error(err.to_string())
}

/// What readers and the state machine share.
#[derive(Debug)]
pub struct SmShared {
    tree: sled::Tree,
    revision: AtomicI64,
    compacted: AtomicI64,
    /// Held for writing while an applied batch lands, for reading while a range is scanned.
    apply_lock: RwLock<()>,
    /// Last applied log id and membership, changed together with the data under `apply_lock`.
    applied: Mutex<(Option<LogId<NodeId>>, Membership)>,
    pub(super) hub: Arc<WatchHub>,
    /// Members waiting to see their own tagged writes applied (see
    /// [`crate::mvcc::Command::Tagged`]).
    waiters: Mutex<HashMap<u128, oneshot::Sender<Outcome>>>,
}

impl SmShared {
    pub fn revision(&self) -> Revision {
        self.revision.load(Ordering::Acquire)
    }

    pub fn compacted(&self) -> Revision {
        self.compacted.load(Ordering::Acquire)
    }

    pub fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.tree.get(kv_key(key))?.map(|b| decode(&b)).transpose()
    }

    /// Runs `read` with applies held off, so it sees one revision.
    pub fn consistent<T>(&self, read: impl FnOnce(&dyn RangeSource) -> T) -> T {
        let _guard = self.apply_lock.read().unwrap_or_else(|e| e.into_inner());
        read(self)
    }

    /// Resolves with the outcome of the write tagged `tag` once this machine applies it.
    /// Dropping the receiver withdraws the wait (see [`SmShared::forget`]).
    pub(super) fn expect(&self, tag: u128) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tag, tx);
        rx
    }

    /// Stops waiting for `tag`.
    pub(super) fn forget(&self, tag: u128) {
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&tag);
    }

    /// The last applied log id and the membership applied with it (a committed one).
    pub(super) fn applied(&self) -> (Option<LogId<NodeId>>, Membership) {
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The current state at one revision, with the log position and membership it reflects:
    /// what a Raft snapshot and a store snapshot file hold. Applies wait while the keys are
    /// gathered, so only the stored bytes are taken then (cheap handles); decoding is left to
    /// whoever needs it.
    pub(super) fn capture(&self) -> Result<Captured> {
        let _guard = self.apply_lock.read().unwrap_or_else(|e| e.into_inner());
        let mut values = Vec::new();
        for item in self.tree.scan_prefix([KV]) {
            values.push(item?.1);
        }
        let (applied, membership) = self.applied();
        Ok(Captured {
            revision: self.revision(),
            values,
            applied,
            membership,
        })
    }
}

/// The state machine at one moment (see [`SmShared::capture`]).
#[derive(Debug)]
pub(super) struct Captured {
    pub revision: Revision,
    /// Every current key-value as stored: `encode(&KeyValue)`, in key order.
    values: Vec<sled::IVec>,
    pub applied: Option<LogId<NodeId>>,
    pub membership: Membership,
}

impl Captured {
    pub fn keys(&self) -> usize {
        self.values.len()
    }

    /// The encoded [`SnapshotData`], assembled from the stored bytes without decoding them:
    /// bincode writes a struct as its fields in order, an `i64` as 8 little-endian bytes and
    /// a `Vec` as its length (`u64`, little-endian) followed by its elements.
    pub fn payload(&self) -> Vec<u8> {
        let size = 16 + self.values.iter().map(|v| v.len()).sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(&self.revision.to_le_bytes());
        out.extend_from_slice(&(self.values.len() as u64).to_le_bytes());
        for value in &self.values {
            out.extend_from_slice(value);
        }
        out
    }
}

impl RangeSource for SmShared {
    fn revision(&self) -> Revision {
        SmShared::revision(self)
    }
    fn compacted(&self) -> Revision {
        SmShared::compacted(self)
    }
    fn scan_current(
        &self,
        prefix: &str,
        after: Option<&str>,
        visit: &mut dyn FnMut(KeyValue) -> bool,
    ) -> Result<()> {
        let start = match after {
            Some(key) => {
                let mut k = kv_key(key);
                k.push(0); // the smallest key strictly after `key`
                k
            }
            None => kv_key(prefix),
        };
        let full_prefix = kv_key(prefix);
        for item in self.tree.range(start..) {
            let (key, bytes) = item?;
            if !key.starts_with(&full_prefix) || !visit(decode(&bytes)?) {
                break;
            }
        }
        Ok(())
    }
    fn events_after(&self, after: Revision) -> Result<Vec<Event>> {
        HistorySource::events_after(self, after, usize::MAX)
    }
}

impl HistorySource for SmShared {
    fn events_after(&self, after: Revision, limit: usize) -> Result<Vec<Event>> {
        let mut out = Vec::new();
        for item in self
            .tree
            .range(history_key(after + 1)..history_key(Revision::MAX))
        {
            if out.len() >= limit {
                break;
            }
            let (_, bytes) = item?;
            out.push(decode(&bytes)?);
        }
        // Checked after reading: a compaction racing with the read may have removed some.
        let compacted = self.compacted();
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        Ok(out)
    }
}

/// One apply batch: reads see the batch's own writes, writes go into one sled batch.
struct Pending<'a> {
    shared: &'a SmShared,
    batch: sled::Batch,
    overlay: HashMap<String, Option<KeyValue>>,
    revision: Revision,
    compacted: Revision,
    events: Vec<Event>,
}

impl KvState for Pending<'_> {
    fn current(&self, key: &str) -> Result<Option<KeyValue>> {
        match self.overlay.get(key) {
            Some(kv) => Ok(kv.clone()),
            None => self.shared.get(key),
        }
    }
    fn revision(&self) -> Revision {
        self.revision
    }
    fn compacted(&self) -> Revision {
        self.compacted
    }
    fn record(&mut self, event: Event) -> Result<()> {
        let key = kv_key(&event.kv.key);
        match event.kind {
            EventKind::Put => {
                self.batch.insert(key, encode(&event.kv)?);
                self.overlay
                    .insert(event.kv.key.clone(), Some(event.kv.clone()));
            }
            EventKind::Delete => {
                self.batch.remove(key);
                self.overlay.insert(event.kv.key.clone(), None);
            }
        }
        self.revision = event.revision();
        self.batch
            .insert(&history_key(self.revision), encode(&event)?);
        self.events.push(event);
        Ok(())
    }
    fn drop_history_through(&mut self, revision: Revision) -> Result<()> {
        // Every revision has exactly one history entry, so the range is known without a scan.
        for r in (self.compacted + 1)..=revision {
            self.batch.remove(&history_key(r));
        }
        self.compacted = self.compacted.max(revision);
        Ok(())
    }
}

/// The snapshot payload: current state only; history starts at the snapshot's revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SnapshotData {
    pub revision: Revision,
    pub kvs: Vec<KeyValue>,
}

impl SnapshotData {
    /// What [`Captured::payload`] assembles without decoding (for tests of that).
    #[cfg(test)]
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        encode(self)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<SnapshotData> {
        decode(bytes)
    }
}

/// A batch that makes `tree` hold exactly `snapshot`'s state: every key at its revision, no
/// history before it (compacted up to it), no log position or membership.
fn snapshot_batch(tree: &sled::Tree, snapshot: &SnapshotData) -> Result<sled::Batch> {
    let mut batch = sled::Batch::default();
    for item in tree.iter() {
        batch.remove(item?.0);
    }
    for kv in &snapshot.kvs {
        batch.insert(kv_key(&kv.key), encode(kv)?);
    }
    batch.insert(META_REVISION, encode(&snapshot.revision)?);
    batch.insert(META_COMPACTED, encode(&snapshot.revision)?);
    Ok(batch)
}

/// Fills `tree` (a state machine not yet opened) with `snapshot`'s state.
pub(super) fn seed(tree: &sled::Tree, snapshot: &SnapshotData) -> Result<()> {
    tree.apply_batch(snapshot_batch(tree, snapshot)?)?;
    Ok(())
}

/// Copies a whole state machine (current keys, history, bookkeeping) from `from` into the
/// empty `to`.
pub(super) fn copy_state(from: &sled::Tree, to: &sled::Tree) -> Result<()> {
    const CHUNK: usize = 10_000;
    let mut batch = sled::Batch::default();
    let mut in_batch = 0;
    for item in from.iter() {
        let (key, value) = item?;
        batch.insert(key, value);
        in_batch += 1;
        if in_batch == CHUNK {
            to.apply_batch(std::mem::take(&mut batch))?;
            in_batch = 0;
        }
    }
    to.apply_batch(batch)?;
    Ok(())
}

/// The membership a state machine (not open) last applied.
pub(super) fn applied_membership(tree: &sled::Tree) -> Result<Membership> {
    Ok(tree
        .get(META_MEMBERSHIP)?
        .map(|b| decode(&b))
        .transpose()?
        .unwrap_or_default())
}

/// The revision of a state machine (not open).
pub(super) fn revision(tree: &sled::Tree) -> Result<Revision> {
    Ok(tree
        .get(META_REVISION)?
        .map(|b| decode(&b))
        .transpose()?
        .unwrap_or(0))
}

/// How many keys a state machine (not open) holds.
pub(super) fn key_count(tree: &sled::Tree) -> Result<u64> {
    let mut count = 0;
    for item in tree.scan_prefix([KV]) {
        item?;
        count += 1;
    }
    Ok(count)
}

/// Sets the log entry a state machine (not open) applied last and the membership applied
/// with it, keeping its data.
pub(super) fn set_log_position(
    tree: &sled::Tree,
    applied: Option<LogId<NodeId>>,
    membership: &Membership,
) -> Result<()> {
    let mut batch = sled::Batch::default();
    batch.insert(META_APPLIED, encode(&applied)?);
    batch.insert(META_MEMBERSHIP, encode(membership)?);
    tree.apply_batch(batch)?;
    Ok(())
}

/// A snapshot as kept on disk next to the database.
#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

/// The state machine Raft drives.
#[derive(Debug)]
pub struct StateMachine {
    shared: Arc<SmShared>,
    disk: Arc<DiskSync>,
    retention: Retention,
    snapshot_path: PathBuf,
    /// The log's last durable entry (see [`StateMachine::wait_for_log`]).
    log_durable: Option<tokio::sync::watch::Receiver<Option<LogId<NodeId>>>>,
}

impl StateMachine {
    /// Makes applying wait until the entries applied are durable in the log
    /// ([`super::LogStore::durable`]): the leader acknowledges its own appends before they
    /// are synced, and nothing may act on an entry before it is.
    pub fn wait_for_log(&mut self, durable: tokio::sync::watch::Receiver<Option<LogId<NodeId>>>) {
        self.log_durable = Some(durable);
    }

    /// Loads the machine from `tree`; `dir` holds the current snapshot file.
    pub fn open(
        tree: sled::Tree,
        disk: Arc<DiskSync>,
        dir: &Path,
        retention: Retention,
    ) -> Result<StateMachine> {
        let read = |key: &[u8]| -> Result<Option<sled::IVec>> { Ok(tree.get(key)?) };
        let revision: Revision = read(META_REVISION)?
            .map(|b| decode(&b))
            .transpose()?
            .unwrap_or(0);
        let compacted: Revision = read(META_COMPACTED)?
            .map(|b| decode(&b))
            .transpose()?
            .unwrap_or(0);
        let last_applied: Option<LogId<NodeId>> = read(META_APPLIED)?
            .map(|b| decode(&b))
            .transpose()?
            .flatten();
        let membership: Membership = read(META_MEMBERSHIP)?
            .map(|b| decode(&b))
            .transpose()?
            .unwrap_or_default();
        let shared = Arc::new(SmShared {
            tree,
            revision: AtomicI64::new(revision),
            compacted: AtomicI64::new(compacted),
            apply_lock: RwLock::new(()),
            applied: Mutex::new((last_applied, membership)),
            hub: Arc::new(WatchHub::new(revision)),
            waiters: Mutex::new(HashMap::new()),
        });
        Ok(StateMachine {
            shared,
            disk,
            retention,
            snapshot_path: dir.join("snapshot.bin"),
            log_durable: None,
        })
    }

    pub fn shared(&self) -> Arc<SmShared> {
        Arc::clone(&self.shared)
    }

    pub(super) fn apply_entries(
        &mut self,
        entries: Vec<Entry<TypeConfig>>,
    ) -> Result<Vec<Outcome>> {
        let shared = &*self.shared;
        let (mut last_applied, mut membership) = shared.applied();
        let mut pending = Pending {
            shared,
            batch: sled::Batch::default(),
            overlay: HashMap::new(),
            revision: shared.revision(),
            compacted: shared.compacted(),
            events: Vec::new(),
        };
        let mut outcomes = Vec::with_capacity(entries.len());
        let mut applied_tags = Vec::new();
        let mut membership_changed = false;
        for entry in entries {
            last_applied = Some(entry.log_id);
            let outcome = match entry.payload {
                EntryPayload::Blank => Outcome::Nothing,
                EntryPayload::Normal(command) => {
                    let tags = command.tags();
                    let outcome = mvcc::execute(&mut pending, command, self.retention)?;
                    for (position, tag) in tags {
                        let tagged = match (position, &outcome) {
                            (None, outcome) => Some(outcome),
                            (Some(i), Outcome::Batch(outcomes)) => outcomes.get(i),
                            (Some(_), _) => None,
                        };
                        if let Some(tagged) = tagged {
                            applied_tags.push((tag, tagged.clone()));
                        }
                    }
                    outcome
                }
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(entry.log_id), m);
                    membership_changed = true;
                    Outcome::Nothing
                }
            };
            outcomes.push(outcome);
        }
        let Pending {
            mut batch,
            revision,
            compacted,
            events,
            ..
        } = pending;
        // Only what changed: every key of a sled batch costs, and the usual batch is one
        // write's two keys (its value and its history event) plus these.
        batch.insert(META_REVISION, encode(&revision)?);
        if compacted != shared.compacted() {
            batch.insert(META_COMPACTED, encode(&compacted)?);
        }
        batch.insert(META_APPLIED, encode(&last_applied)?);
        if membership_changed {
            batch.insert(META_MEMBERSHIP, encode(&membership)?);
        }
        {
            let _guard = shared.apply_lock.write().unwrap_or_else(|e| e.into_inner());
            shared.tree.apply_batch(batch)?;
            shared.revision.store(revision, Ordering::Release);
            shared.compacted.store(compacted, Ordering::Release);
            *shared.applied.lock().unwrap_or_else(|e| e.into_inner()) = (last_applied, membership);
        }
        shared.hub.publish(events);
        if !applied_tags.is_empty() {
            let mut waiters = shared.waiters.lock().unwrap_or_else(|e| e.into_inner());
            for (tag, outcome) in applied_tags {
                if let Some(waiter) = waiters.remove(&tag) {
                    let _ = waiter.send(outcome);
                }
            }
        }
        Ok(outcomes)
    }
}

/// Makes the state machine hold `data`, the snapshot `meta` describes.
fn install(shared: &SmShared, meta: &SnapshotMeta<NodeId, BasicNode>, data: &[u8]) -> Result<()> {
    let snapshot: SnapshotData = decode(data)?;
    let mut batch = snapshot_batch(&shared.tree, &snapshot)?;
    batch.insert(META_APPLIED, encode(&meta.last_log_id)?);
    batch.insert(META_MEMBERSHIP, encode(&meta.last_membership)?);
    {
        let _guard = shared.apply_lock.write().unwrap_or_else(|e| e.into_inner());
        shared.tree.apply_batch(batch)?;
        shared.revision.store(snapshot.revision, Ordering::Release);
        shared.compacted.store(snapshot.revision, Ordering::Release);
        *shared.applied.lock().unwrap_or_else(|e| e.into_inner()) =
            (meta.last_log_id, meta.last_membership.clone());
    }
    // The history before the snapshot is gone: watchers that still need it must get
    // `Compacted` from the history read rather than a gap.
    shared.hub.reset(snapshot.revision);
    Ok(())
}

/// Writes the snapshot file atomically: temp file, fsync, rename, fsync of the directory.
fn save_snapshot(path: &Path, snapshot: &StoredSnapshot) -> std::io::Result<()> {
    use std::io::Write;
    let bytes = bincode::serialize(snapshot).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn load_snapshot(path: &Path) -> std::io::Result<Option<StoredSnapshot>> {
    match std::fs::read(path) {
        Ok(bytes) => bincode::deserialize(&bytes)
            .map(Some)
            .map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Builds snapshots from the shared state.
#[derive(Debug)]
pub struct SnapshotBuilder {
    shared: Arc<SmShared>,
    path: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        // On the blocking pool, not a runtime worker: the whole state is read, then a file
        // written and synced.
        let (shared, path) = (Arc::clone(&self.shared), self.path.clone());
        tokio::task::spawn_blocking(move || build_snapshot_blocking(&shared, &path))
            .await
            .map_err(|e| StorageIOError::read_state_machine(any(e)))?
    }
}

fn build_snapshot_blocking(shared: &SmShared, path: &Path) -> StorageResult<Snapshot<TypeConfig>> {
    let captured = shared
        .capture()
        .map_err(|e| StorageIOError::read_state_machine(any(e)))?;
    let bytes = captured.payload();
    let (revision, last_applied, membership) =
        (captured.revision, captured.applied, captured.membership);
    let snapshot_id = match last_applied {
        Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, revision),
        None => format!("0-0-{revision}"),
    };
    let meta = SnapshotMeta {
        last_log_id: last_applied,
        last_membership: membership,
        snapshot_id,
    };
    let stored = StoredSnapshot {
        meta: meta.clone(),
        data: bytes,
    };
    save_snapshot(path, &stored)
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), any(e)))?;
    Ok(Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(stored.data)),
    })
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> StorageResult<(Option<LogId<NodeId>>, Membership)> {
        Ok(self.shared.applied())
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Outcome>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let traced = entries.last().map_or(0, |e| e.log_id.index);
        super::trace::mark("sm.apply", traced);
        if let (Some(durable), Some(last)) = (&mut self.log_durable, entries.last()) {
            let index = last.log_id.index;
            durable
                .wait_for(|d| d.is_some_and(|d| d.index >= index))
                .await
                .map_err(|_| {
                    StorageIOError::write_state_machine(AnyError::error(
                        "the Raft log failed before the entries to apply were durable",
                    ))
                })?;
        }
        super::trace::mark("sm.durable", traced);
        let applied = self.apply_entries(entries);
        super::trace::mark("sm.applied", traced);
        applied.map_err(|e| StorageIOError::write_state_machine(any(e)).into())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared(),
            path: self.snapshot_path.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        // On the blocking pool, not a runtime worker: the whole state is rewritten, then a
        // file written and synced.
        let (shared, disk, path) = (
            Arc::clone(&self.shared),
            Arc::clone(&self.disk),
            self.snapshot_path.clone(),
        );
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || {
            install(&shared, &meta, &data)
                .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), any(e)))?;
            // The installed state must be on disk before Raft purges the log it replaces.
            disk.sync_blocking()
                .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), any(e)))?;
            let signature = meta.signature();
            save_snapshot(&path, &StoredSnapshot { meta, data })
                .map_err(|e| StorageIOError::write_snapshot(Some(signature), any(e)))?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, any(e)))?
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let stored = load_snapshot(&self.snapshot_path)
            .map_err(|e| StorageIOError::read_snapshot(None, any(e)))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::*;
    use crate::mvcc::Command;

    fn entry(index: u64, command: Command) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(command),
        }
    }

    fn tagged(tag: u128, key: &str) -> Command {
        Command::Tagged {
            tag,
            command: Box::new(Command::Put {
                key: key.into(),
                value: b"v".to_vec(),
            }),
        }
    }

    fn kv(key: &str, value: Vec<u8>, revision: Revision) -> KeyValue {
        KeyValue {
            key: key.into(),
            value,
            create_revision: revision,
            mod_revision: revision,
            version: 1,
        }
    }

    #[test]
    fn a_capture_encodes_as_the_snapshot_data_it_holds() {
        let dir = tempfile::TempDir::new().unwrap();
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .open()
            .unwrap();
        let tree = db.open_tree("state").unwrap();
        // In key order, as the tree returns them; a value large enough for a sled blob.
        let data = SnapshotData {
            revision: 9,
            kvs: vec![
                kv("/a", b"1".to_vec(), 2),
                kv("/b", vec![0, 255, 10, 13], 5),
                kv("/c/big", vec![7; 300 * 1024], 9),
            ],
        };
        seed(&tree, &data).unwrap();
        let disk = DiskSync::open(&db, &dir.path().join("db")).unwrap();
        let machine = StateMachine::open(tree, disk, dir.path(), Retention::default()).unwrap();
        let captured = machine.shared().capture().unwrap();
        assert_eq!(captured.revision, 9);
        assert_eq!(captured.keys(), 3);
        assert_eq!(captured.payload(), data.to_bytes().unwrap());
        assert_eq!(SnapshotData::from_bytes(&captured.payload()).unwrap(), data);
    }

    /// A machine on tree `tree` of a database in `dir`.
    fn machine(dir: &tempfile::TempDir, tree: &str) -> StateMachine {
        let path = dir.path().join("db");
        let db = sled::open(&path).unwrap();
        let disk = DiskSync::open(&db, &path).unwrap();
        StateMachine::open(
            db.open_tree(tree).unwrap(),
            disk,
            dir.path(),
            Retention::default(),
        )
        .unwrap()
    }

    #[test]
    fn applying_a_tagged_write_hands_its_outcome_to_whoever_waits_for_it() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut sm = machine(&dir, "state");
        let shared = sm.shared();
        let mut alone = shared.expect(1);
        let mut in_batch = shared.expect(2);
        let mut withdrawn = shared.expect(3);
        shared.forget(3);
        let mut never = shared.expect(4);

        sm.apply_entries(vec![
            entry(1, tagged(1, "/a")),
            entry(
                2,
                Command::Batch(vec![
                    Command::Put {
                        key: "/b".into(),
                        value: b"v".to_vec(),
                    },
                    tagged(2, "/c"),
                    tagged(3, "/d"),
                ]),
            ),
        ])
        .unwrap();

        let revision = |outcome: Outcome| match outcome {
            Outcome::Written(event) => event.revision(),
            other => panic!("{other:?}"),
        };
        assert_eq!(revision(alone.try_recv().unwrap()), 1);
        assert_eq!(revision(in_batch.try_recv().unwrap()), 3);
        assert!(withdrawn.try_recv().is_err());
        assert!(matches!(
            never.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        assert_eq!(shared.revision(), 4);
    }

    #[tokio::test]
    async fn entries_are_applied_only_once_durable_in_the_log() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut sm = machine(&dir, "state");
        let (durable, durable_rx) =
            tokio::sync::watch::channel(Some(LogId::new(CommittedLeaderId::new(1, 1), 1)));
        sm.wait_for_log(durable_rx);
        let shared = sm.shared();
        let put = |key: &str| Command::Put {
            key: key.into(),
            value: b"v".to_vec(),
        };
        let applying = tokio::spawn(async move {
            sm.apply(vec![entry(1, put("/a")), entry(2, put("/b"))])
                .await
                .map(|outcomes| outcomes.len())
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !applying.is_finished(),
            "applied before entry 2 was durable"
        );
        assert_eq!(shared.revision(), 0);
        durable.send_replace(Some(LogId::new(CommittedLeaderId::new(1, 1), 2)));
        assert_eq!(applying.await.unwrap().unwrap(), 2);
        assert_eq!(shared.revision(), 2);

        // A log that failed never lets them through.
        let dir = tempfile::TempDir::new().unwrap();
        let mut sm = machine(&dir, "state");
        let (durable, durable_rx) = tokio::sync::watch::channel(None);
        sm.wait_for_log(durable_rx);
        drop(durable);
        assert!(sm.apply(vec![entry(1, put("/a"))]).await.is_err());
    }
}
