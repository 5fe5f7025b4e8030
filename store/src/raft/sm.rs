//! The replicated state machine on sled. All of it lives in one tree so that what a batch of
//! log entries changed lands in one atomic sled batch: `k<key>` holds current key-values,
//! `h<revision>` the history events, `m<name>` the machine's own bookkeeping (revision,
//! compaction point, last applied log id, membership). Applying computes each command's
//! outcome, resolves the writers waiting for it and publishes its events to watchers in memory;
//! the sled batch is written behind, by a flusher thread (`writebehind.rs`). Readers share
//! [`SmShared`] with the Raft-owned [`StateMachine`] and see sled with the unflushed writes laid
//! over it; a read lock keeps multi-key reads consistent with concurrent applies.

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::disk::DiskSync;
use super::writebehind::{Flusher, View, WriteBehind, Writes, PENDING_LIMIT};
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
    /// The tree, and the applied writes not yet in it.
    pub(super) behind: Arc<WriteBehind>,
    revision: AtomicI64,
    compacted: AtomicI64,
    /// Last applied log id and membership, changed together with the data (while readers of
    /// the write-behind are held off).
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
        self.behind
            .read()?
            .get(&kv_key(key))?
            .map(|b| decode(&b))
            .transpose()
    }

    /// Runs `read` with applies held off, so it sees one revision.
    pub fn consistent<T>(&self, read: impl FnOnce(&dyn RangeSource) -> Result<T>) -> Result<T> {
        let view = self.behind.read()?;
        read(&Reading {
            shared: self,
            view: &view,
        })
    }

    /// Waits until sled itself holds everything applied (see [`WriteBehind::flush_blocking`]).
    pub(super) fn flush_blocking(&self) -> Result<()> {
        self.behind.flush_blocking()
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
        let view = self.behind.read()?;
        let mut values = Vec::new();
        view.range(&[KV], Some(&[KV + 1]), &mut |_, value| {
            values.push(value.clone());
            Ok(true)
        })?;
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

/// Reads at one revision (see [`SmShared::consistent`]).
struct Reading<'a> {
    shared: &'a SmShared,
    view: &'a View<'a>,
}

impl RangeSource for Reading<'_> {
    fn revision(&self) -> Revision {
        self.shared.revision()
    }
    fn compacted(&self) -> Revision {
        self.shared.compacted()
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
        self.view.range(&start, None, &mut |key, bytes| {
            Ok(key.starts_with(&full_prefix) && visit(decode(bytes)?))
        })
    }
    fn events_after(&self, after: Revision) -> Result<Vec<Event>> {
        events_after(self.shared, self.view, after, usize::MAX)
    }
}

impl HistorySource for SmShared {
    fn events_after(&self, after: Revision, limit: usize) -> Result<Vec<Event>> {
        events_after(self, &self.behind.read()?, after, limit)
    }
}

fn events_after(
    shared: &SmShared,
    view: &View<'_>,
    after: Revision,
    limit: usize,
) -> Result<Vec<Event>> {
    let mut out = Vec::new();
    view.range(
        &history_key(after + 1),
        Some(&history_key(Revision::MAX)),
        &mut |_, bytes| {
            if out.len() >= limit {
                return Ok(false);
            }
            out.push(decode(bytes)?);
            Ok(true)
        },
    )?;
    // Checked after reading: a compaction racing with the read may have removed some.
    let compacted = shared.compacted();
    if after < compacted {
        return Err(StoreError::Compacted {
            requested: after,
            compacted,
        });
    }
    Ok(out)
}

/// One apply batch: reads see the batch's own writes, writes are collected for the
/// write-behind.
struct Pending<'a> {
    shared: &'a SmShared,
    writes: Writes,
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
                self.writes
                    .insert(key.into(), Some(encode(&event.kv)?.into()));
                self.overlay
                    .insert(event.kv.key.clone(), Some(event.kv.clone()));
            }
            EventKind::Delete => {
                self.writes.insert(key.into(), None);
                self.overlay.insert(event.kv.key.clone(), None);
            }
        }
        self.revision = event.revision();
        self.writes.insert(
            history_key(self.revision).as_slice().into(),
            Some(encode(&event)?.into()),
        );
        self.events.push(event);
        Ok(())
    }
    fn drop_history_through(&mut self, revision: Revision) -> Result<()> {
        // Every revision has exactly one history entry, so the range is known without a scan.
        for r in (self.compacted + 1)..=revision {
            self.writes.insert(history_key(r).as_slice().into(), None);
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
    /// Stops the flusher (after it wrote everything) when the machine goes.
    _flusher: Flusher,
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
        let (behind, flusher) = WriteBehind::start(tree)?;
        // Whatever makes the database durable must write out what was applied first.
        disk.write_first(&behind);
        let shared = Arc::new(SmShared {
            behind,
            revision: AtomicI64::new(revision),
            compacted: AtomicI64::new(compacted),
            applied: Mutex::new((last_applied, membership)),
            hub: Arc::new(WatchHub::new(revision)),
            waiters: Mutex::new(HashMap::new()),
        });
        Ok(StateMachine {
            shared,
            _flusher: flusher,
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
            writes: Writes::new(),
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
            mut writes,
            revision,
            compacted,
            events,
            ..
        } = pending;
        // The log position goes with the data it describes (the flusher writes both in one
        // sled batch), so sled is always a consistent prefix of the log.
        let mut meta = |key: &[u8], value: Vec<u8>| writes.insert(key.into(), Some(value.into()));
        meta(META_REVISION, encode(&revision)?);
        if compacted != shared.compacted() {
            meta(META_COMPACTED, encode(&compacted)?);
        }
        meta(META_APPLIED, encode(&last_applied)?);
        if membership_changed {
            meta(META_MEMBERSHIP, encode(&membership)?);
        }
        shared.behind.apply(writes, || {
            shared.revision.store(revision, Ordering::Release);
            shared.compacted.store(compacted, Ordering::Release);
            *shared.applied.lock().unwrap_or_else(|e| e.into_inner()) = (last_applied, membership);
        })?;
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
    // The whole tree is replaced: what was applied before must be in it first, or the
    // flusher would write it over the snapshot later.
    shared.behind.exclusive(|tree| {
        let mut batch = snapshot_batch(tree, &snapshot)?;
        batch.insert(META_APPLIED, encode(&meta.last_log_id)?);
        batch.insert(META_MEMBERSHIP, encode(&meta.last_membership)?);
        tree.apply_batch(batch)?;
        shared.revision.store(snapshot.revision, Ordering::Release);
        shared.compacted.store(snapshot.revision, Ordering::Release);
        *shared.applied.lock().unwrap_or_else(|e| e.into_inner()) =
            (meta.last_log_id, meta.last_membership.clone());
        Ok(())
    })?;
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
        // Bounded memory: a flusher far behind holds applying back.
        self.shared
            .behind
            .wait_below(PENDING_LIMIT)
            .await
            .map_err(|e| StorageIOError::write_state_machine(any(e)))?;
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

    fn create(key: &str) -> Command {
        Command::Create {
            key: key.into(),
            value: b"v".to_vec(),
        }
    }

    #[test]
    fn an_outcome_sees_earlier_writes_not_yet_flushed() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut sm = machine(&dir, "state");
        let shared = sm.shared();
        shared.behind.hold(true);
        sm.apply_entries(vec![entry(1, create("/a")), entry(2, create("/b"))])
            .unwrap();
        // Separate applies: the second sees the first only through the write-behind.
        let outcomes = sm
            .apply_entries(vec![
                entry(3, create("/a")),
                entry(
                    4,
                    Command::Update {
                        key: "/b".into(),
                        value: b"w".to_vec(),
                        expected: 2,
                    },
                ),
                entry(
                    5,
                    Command::Delete {
                        key: "/a".into(),
                        expected: Some(1),
                    },
                ),
            ])
            .unwrap();
        assert!(matches!(&outcomes[0], Outcome::Rejected(_)), "{outcomes:?}");
        assert!(matches!(&outcomes[1], Outcome::Written(e) if e.revision() == 3));
        assert!(matches!(&outcomes[2], Outcome::Written(e) if e.revision() == 4));
        let outcomes = sm.apply_entries(vec![entry(6, create("/a"))]).unwrap();
        assert!(matches!(&outcomes[0], Outcome::Written(e) if e.kv.create_revision == 5));
        shared.behind.hold(false);
    }

    #[test]
    fn reads_see_every_applied_write_before_it_is_flushed() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut sm = machine(&dir, "state");
        let shared = sm.shared();
        sm.apply_entries(vec![entry(1, create("/k/flushed"))])
            .unwrap();
        shared.flush_blocking().unwrap();
        shared.behind.hold(true);
        sm.apply_entries(vec![
            entry(2, create("/k/new")),
            entry(
                3,
                Command::Delete {
                    key: "/k/flushed".into(),
                    expected: None,
                },
            ),
        ])
        .unwrap();
        assert_eq!(shared.get("/k/new").unwrap().unwrap().mod_revision, 2);
        assert_eq!(shared.get("/k/flushed").unwrap(), None);
        let listed = shared
            .consistent(|source| {
                mvcc::read_range(
                    source,
                    &crate::types::RangeRequest {
                        prefix: "/k/".into(),
                        ..Default::default()
                    },
                )
            })
            .unwrap();
        let keys: Vec<_> = listed.kvs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["/k/new"]);
        assert_eq!(listed.revision, 3);
        let events = HistorySource::events_after(&*shared, 0, 10).unwrap();
        let revisions: Vec<_> = events.iter().map(Event::revision).collect();
        assert_eq!(revisions, [1, 2, 3]);
        let captured = shared.capture().unwrap();
        assert_eq!((captured.revision, captured.keys()), (3, 1));
        assert_eq!(captured.applied.map(|id| id.index), Some(3));
        shared.behind.hold(false);
    }

    #[test]
    fn a_restart_after_unflushed_applies_resumes_from_the_last_flushed_entry() {
        let dir = tempfile::TempDir::new().unwrap();
        {
            let mut sm = machine(&dir, "state");
            sm.apply_entries(vec![entry(1, create("/a"))]).unwrap();
            sm.shared().flush_blocking().unwrap();
            sm.shared().behind.hold(true);
            sm.apply_entries(vec![entry(2, create("/b"))]).unwrap();
            sm.shared().behind.crash();
        }
        let mut sm = machine(&dir, "state");
        let shared = sm.shared();
        // sled holds entry 1 with its position: Raft applies entry 2 again from its log.
        assert_eq!(shared.applied().0.map(|id| id.index), Some(1));
        assert_eq!(shared.revision(), 1);
        assert_eq!(shared.get("/b").unwrap(), None);
        let outcomes = sm.apply_entries(vec![entry(2, create("/b"))]).unwrap();
        assert!(matches!(&outcomes[0], Outcome::Written(e) if e.revision() == 2));
    }

    #[test]
    fn a_failed_flush_fails_later_applies_and_reads() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut sm = machine(&dir, "state");
        let shared = sm.shared();
        shared.behind.hold(true);
        sm.apply_entries(vec![entry(1, create("/a"))]).unwrap();
        shared.behind.fail_with("No space left on device");
        let err = sm
            .apply_entries(vec![entry(2, create("/b"))])
            .unwrap_err()
            .to_string();
        assert!(err.contains("No space left on device"), "{err}");
        assert!(shared.get("/a").is_err());
        assert!(shared.capture().is_err());
        assert!(HistorySource::events_after(&*shared, 0, 10).is_err());
        assert!(shared.consistent(|_| Ok(())).is_err());
        assert!(shared.flush_blocking().is_err());
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
