//! The Raft log on sled: entries keyed by big-endian index in their own tree, vote and purge
//! marks beside them. Appends are made durable by one flusher task that serves every append
//! waiting at the moment it runs — group commit: one fsync acknowledges many writes.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, OptionalSend, RaftLogId, StorageError, StorageIOError, Vote,
};

use super::disk::DiskSync;
use super::TypeConfig;

type NodeId = u64;
type StorageResult<T> = Result<T, StorageError<NodeId>>;

const ENTRIES_TREE: &str = "raft_log";
const VOTE: &[u8] = b"vote";
const LAST_PURGED: &[u8] = b"last_purged";
const COMMITTED: &[u8] = b"committed";

/// The Raft log store. Cheap to clone: clones share the same trees and flusher.
#[derive(Debug, Clone)]
pub struct LogStore {
    disk: Arc<DiskSync>,
    entries: sled::Tree,
    meta: sled::Tree,
    flusher: std::sync::mpsc::Sender<LogFlushed<TypeConfig>>,
}

fn any(err: impl std::fmt::Display) -> AnyError {
    AnyError::error(err.to_string())
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, AnyError> {
    bincode::deserialize(bytes).map_err(any)
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, AnyError> {
    bincode::serialize(value).map_err(any)
}

impl LogStore {
    /// Opens the log trees in `db` and starts the group-commit flusher.
    pub fn open(db: &sled::Db, disk: Arc<DiskSync>) -> Result<LogStore, sled::Error> {
        let entries = db.open_tree(ENTRIES_TREE)?;
        let meta = db.open_tree("raft_meta")?;
        let (flusher, rx) = std::sync::mpsc::channel();
        let disk_for_flusher = Arc::clone(&disk);
        std::thread::Builder::new()
            .name("store-log-sync".into())
            .spawn(move || flush_loop(&disk_for_flusher, &rx))
            .map_err(sled::Error::Io)?;
        Ok(LogStore {
            disk,
            entries,
            meta,
            flusher,
        })
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> StorageResult<Option<T>> {
        let bytes = self
            .meta
            .get(key)
            .map_err(|e| StorageIOError::read(any(e)))?;
        bytes
            .map(|b| decode(&b))
            .transpose()
            .map_err(|e| StorageIOError::read(e).into())
    }

    async fn write_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> StorageResult<()> {
        let bytes = encode(value).map_err(StorageIOError::write)?;
        self.meta
            .insert(key, bytes)
            .map_err(|e| StorageIOError::write(any(e)))?;
        self.disk
            .sync()
            .await
            .map_err(|e| StorageIOError::write(any(e)))?;
        Ok(())
    }
}

/// Completes appends in order, one sync for every append queued while the last sync ran.
/// A thread of its own rather than a task: the sync blocks, and a lone writer's latency is
/// the sync plus the hand-offs around it, so the fewer hand-offs the better. Ends when every
/// log store handle is dropped.
fn flush_loop(disk: &DiskSync, rx: &std::sync::mpsc::Receiver<LogFlushed<TypeConfig>>) {
    let mut waiting = Vec::new();
    while let Ok(first) = rx.recv() {
        waiting.push(first);
        waiting.extend(rx.try_iter());
        let result = disk.sync_blocking();
        for callback in waiting.drain(..) {
            let outcome = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            callback.log_io_completed(outcome);
        }
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// The entries of the log in `db` (not open as a [`LogStore`]) after index `after`, in order.
pub(super) fn entries_after(
    db: &sled::Db,
    after: Option<u64>,
) -> crate::Result<Vec<Entry<TypeConfig>>> {
    let entries = db.open_tree(ENTRIES_TREE)?;
    let range = match after {
        Some(index) => entries.range((Bound::Excluded(index_key(index)), Bound::Unbounded)),
        None => entries.iter(),
    };
    let mut out = Vec::new();
    for item in range {
        let (_, bytes) = item?;
        out.push(decode(&bytes).map_err(|e| {
            crate::StoreError::Corrupt(format!("a Raft log entry does not decode: {e}"))
        })?);
    }
    Ok(out)
}

/// Writes `entry` at its index into the log in `db` (not open as a [`LogStore`]): what a
/// member that logged an entry and stopped before applying it holds.
#[cfg(test)]
pub(super) fn write_entry(db: &sled::Db, entry: &Entry<TypeConfig>) -> crate::Result<()> {
    let entries = db.open_tree(ENTRIES_TREE)?;
    let bytes = encode(entry).map_err(|e| crate::StoreError::Io(format!("encoding: {e}")))?;
    entries.insert(index_key(entry.get_log_id().index), bytes)?;
    Ok(())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in self.entries.range::<[u8; 8], _>((start, end)) {
            let (_, bytes) = item.map_err(|e| StorageIOError::read_logs(any(e)))?;
            out.push(decode(&bytes).map_err(StorageIOError::read_logs)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.read_meta(LAST_PURGED)?;
        let last = self
            .entries
            .last()
            .map_err(|e| StorageIOError::read_logs(any(e)))?;
        let last_log_id = match last {
            Some((_, bytes)) => {
                let entry: Entry<TypeConfig> = decode(&bytes).map_err(StorageIOError::read_logs)?;
                Some(*entry.get_log_id())
            }
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.write_meta(VOTE, vote).await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.read_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Not flushed: it is a hint that lets a restart re-apply committed entries at once;
        // losing it only delays that until the next commit.
        let bytes = encode(&committed).map_err(StorageIOError::write)?;
        self.meta
            .insert(COMMITTED, bytes)
            .map_err(|e| StorageIOError::write(any(e)))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self
            .read_meta::<Option<LogId<NodeId>>>(COMMITTED)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = encode(&entry).map_err(StorageIOError::write_logs)?;
            batch.insert(&index_key(entry.get_log_id().index), bytes);
        }
        self.entries
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(any(e)))?;
        self.flusher
            .send(callback)
            .map_err(|_| StorageIOError::write_logs(AnyError::error("log flusher stopped")))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let mut batch = sled::Batch::default();
        for item in self.entries.range(index_key(log_id.index)..) {
            let (key, _) = item.map_err(|e| StorageIOError::write_logs(any(e)))?;
            batch.remove(key);
        }
        self.entries
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(any(e)))?;
        self.disk
            .sync()
            .await
            .map_err(|e| StorageIOError::write_logs(any(e)))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // Record the purge mark first: a crash between the two steps leaves entries that are
        // merely purged again, never a log whose start is unknown.
        self.write_meta(LAST_PURGED, &log_id).await?;
        let mut batch = sled::Batch::default();
        for item in self.entries.range(..=index_key(log_id.index)) {
            let (key, _) = item.map_err(|e| StorageIOError::write_logs(any(e)))?;
            batch.remove(key);
        }
        self.entries
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(any(e)))?;
        Ok(())
    }
}
