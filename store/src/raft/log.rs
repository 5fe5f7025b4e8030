//! The Raft log: openraft's [`RaftLogStorage`] over write-ahead files of its own (`wal.rs`:
//! format and replay), apart from the sled database that holds the state machine — so that
//! making an append durable costs one `fdatasync` of the bytes just appended, as etcd's WAL
//! does, instead of sled's flush of everything it buffered (the state machine's writes
//! included) followed by a sync of its whole log file.
//!
//! Appends are written to the current segment at once (readable from then on) and made durable
//! by one flusher thread that serves every append waiting at the moment it runs — group
//! commit: one `fdatasync` acknowledges many writes. How the rest of openraft's contract is kept:
//! - `save_vote` and `truncate` write their record and return once it is synced.
//! - `purge` first syncs the state machine (sled), whose applied position must not fall behind
//!   a log that no longer holds the entries after it, then writes its record and, once that is
//!   synced, deletes the segments holding only purged entries. A crash before the deletion
//!   leaves segments that replay purges again.
//! - `save_committed` is a hint (restarts re-apply committed entries at once): its record rides
//!   with the next sync.
//!
//! A store made before this log existed keeps its log in sled's `raft_log`/`raft_meta` trees:
//! opening it copies them into a new write-ahead directory (built beside it and renamed into
//! place once synced), then drops them.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, OptionalSend, RaftLogId, StorageError, StorageIOError, Vote,
};

use super::disk::DiskSync;
use super::wal::{self, Location, Record, RecordRef, Replay, WalError, FRAME_HEADER};
use super::TypeConfig;
use crate::error::StoreError;

type NodeId = u64;
type StorageResult<T> = Result<T, StorageError<NodeId>>;

/// The write-ahead directory in a store's directory.
pub(super) const WAL_DIR: &str = "wal";
/// Decoded entries kept in memory, newest first, for replication and applying (which read
/// what was just appended) to skip reading and decoding the files.
const CACHE_BYTES: usize = 32 << 20;

// The log's trees in sled, before it had write-ahead files of its own.
const SLED_ENTRIES: &str = "raft_log";
const SLED_META: &str = "raft_meta";
const SLED_VOTE: &[u8] = b"vote";
const SLED_LAST_PURGED: &[u8] = b"last_purged";
const SLED_COMMITTED: &[u8] = b"committed";

/// The Raft log store. Cheap to clone: clones share the same files and flusher.
#[derive(Debug, Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// This member's node id: appends of entries it made as the leader it is are
    /// acknowledged before their sync (see [`LogStore::durable`]).
    node_id: NodeId,
    dir: PathBuf,
    state: Mutex<State>,
    flusher: std::sync::mpsc::Sender<Job>,
    /// The state machine's database: synced before a purge.
    sm_disk: Arc<DiskSync>,
    durable: tokio::sync::watch::Receiver<Option<LogId<NodeId>>>,
}

#[derive(Debug)]
struct State {
    /// Open segments by number; the last one is written to.
    segments: BTreeMap<u64, Arc<File>>,
    /// Where the next record goes in the last segment.
    end: u64,
    /// The size at which a segment is closed ([`wal::SEGMENT_BYTES`]; smaller in tests).
    segment_bytes: u64,
    /// The write-ahead directory, synced once after a segment is created.
    dir: Arc<File>,
    dir_unsynced: bool,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    purged: Option<LogId<NodeId>>,
    entries: BTreeMap<u64, Location>,
    cache: BTreeMap<u64, (Entry<TypeConfig>, usize)>,
    cache_bytes: usize,
    /// Set when a write or sync failed: what was acknowledged is unknown from then on, so
    /// nothing more is accepted.
    failed: Option<String>,
}

/// What the flusher makes durable, then reports.
struct Job {
    /// The log's last entry once this job's write is durable (the purge point when it has no
    /// entries).
    last: Option<LogId<NodeId>>,
    files: Vec<Arc<File>>,
    /// Synced with `fsync` (a directory whose entries changed), before `files`.
    dirs: Vec<Arc<File>>,
    /// Deleted once everything is synced (segments holding purged entries only).
    remove: Vec<PathBuf>,
    done: Done,
}

enum Done {
    /// Told already (a leader's own entries).
    Nobody,
    Append(LogFlushed<TypeConfig>),
    Wait(tokio::sync::oneshot::Sender<io::Result<()>>),
}

fn any(err: impl std::fmt::Display) -> AnyError {
    AnyError::error(err.to_string())
}

fn corrupt(err: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("Raft log: {err}"))
}

fn io_error(what: &str, path: &Path, err: io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {err}", path.display()))
}

impl LogStore {
    /// Opens the log in `<store_dir>/wal` (moving it there from `db` first if the store
    /// predates it) and starts the flusher; `sm_disk` syncs the state machine's database.
    /// `node_id` is this member's.
    pub fn open(
        store_dir: &Path,
        db: &sled::Db,
        sm_disk: Arc<DiskSync>,
        node_id: NodeId,
    ) -> Result<LogStore, StoreError> {
        Self::open_with(store_dir, db, sm_disk, node_id, wal::SEGMENT_BYTES)
    }

    fn open_with(
        store_dir: &Path,
        db: &sled::Db,
        sm_disk: Arc<DiskSync>,
        node_id: NodeId,
        segment_bytes: u64,
    ) -> Result<LogStore, StoreError> {
        let dir = store_dir.join(WAL_DIR);
        if !dir.exists() {
            let trees = db.tree_names();
            let has = |name: &str| trees.iter().any(|t| t.as_ref() == name.as_bytes());
            // A store whose log was in sled always has the meta tree; one without it that
            // holds a state machine lost its log directory.
            if !has(SLED_META) && has(super::STATE_TREE) {
                return Err(corrupt(format!(
                    "{} is missing while the state machine beside it is not",
                    dir.display()
                )));
            }
            migrate_from_sled(store_dir, db)?;
        }
        // The trees a migration copied; left behind only when it stopped after the rename.
        for tree in [SLED_ENTRIES, SLED_META] {
            db.drop_tree(tree)?;
        }
        let state = open_state(&dir, segment_bytes)?;
        let (durable_tx, durable) = tokio::sync::watch::channel(state.last_log_id());
        let (flusher, jobs) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("store-log-sync".into())
            .spawn(move || flush_loop(&jobs, &durable_tx))
            .map_err(|e| StoreError::Io(format!("starting the log flusher: {e}")))?;
        Ok(LogStore {
            shared: Arc::new(Shared {
                node_id,
                dir,
                state: Mutex::new(state),
                flusher,
                sm_disk,
                durable,
            }),
        })
    }

    /// The last entry of the log known to be on stable storage (the purge point when the log
    /// has no entries), as it changes; closed if the log fails.
    ///
    /// The leader's own appends are acknowledged to openraft as soon as they are written, so
    /// that replication to the followers runs while the leader syncs (as etcd's leader writes
    /// its WAL in parallel with sending): openraft 0.9 waits for an append's acknowledgement
    /// before it sends the entries to anyone. openraft then counts the leader's copy in the
    /// commit quorum before it is durable, so whatever acts on a commit must first wait for
    /// the leader's sync — the state machine before applying and the transport before telling
    /// followers the commit index (`sm.rs`, `network.rs`). That way every entry applied
    /// anywhere is durable on a majority, the leader included, as an entry committed the
    /// usual way is.
    pub fn durable(&self) -> tokio::sync::watch::Receiver<Option<LogId<NodeId>>> {
        self.shared.durable.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `bytes` (framed records) to the log and queues their sync; `done` hears of it.
    /// `last` is the log's last entry once they are durable.
    fn write(
        &self,
        state: &mut State,
        bytes: &[u8],
        last: Option<LogId<NodeId>>,
        done: Done,
        remove: Vec<PathBuf>,
    ) -> io::Result<()> {
        if let Some(why) = &state.failed {
            return Err(io::Error::other(format!("the log failed earlier: {why}")));
        }
        let file = state.write_bytes(&self.shared.dir, bytes)?;
        let dirs = if std::mem::take(&mut state.dir_unsynced) {
            vec![Arc::clone(&state.dir)]
        } else {
            Vec::new()
        };
        self.shared
            .flusher
            .send(Job {
                last,
                files: vec![file],
                dirs,
                remove,
                done,
            })
            .map_err(|_| io::Error::other("the log flusher stopped"))
    }

    /// Applies `update` to the state and writes `record` under one lock (a segment started
    /// meanwhile heads with the updated state), then waits until the record is durable and
    /// `remove` deleted.
    async fn write_synced(
        &self,
        record: RecordRef<'_>,
        update: impl FnOnce(&mut State),
        remove: Vec<PathBuf>,
    ) -> io::Result<()> {
        let mut bytes = Vec::new();
        wal::push_frame(&mut bytes, &record).map_err(io::Error::other)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut state = self.lock();
            update(&mut state);
            let last = state.last_log_id();
            self.write(&mut state, &bytes, last, Done::Wait(tx), remove)?;
        }
        let result = rx
            .await
            .map_err(|_| io::Error::other("the log flusher stopped"))?;
        if let Err(err) = &result {
            self.fail(err);
        }
        result
    }

    /// Writes `entries` (readable from then on) and queues their sync; `done` hears of it.
    fn append_entries(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
        done: Done,
    ) -> Result<(), StoreError> {
        let mut bytes = Vec::new();
        let mut framed = Vec::new();
        for entry in entries {
            let start = bytes.len() as u64;
            let len = wal::push_frame(&mut bytes, &RecordRef::Entry(&entry))?;
            framed.push((entry, start, len));
        }
        let mut state = self.lock();
        super::trace::mark(
            "log.append",
            framed.last().map_or(0, |(e, ..)| e.get_log_id().index),
        );
        let last = match framed.last() {
            Some((entry, ..)) => Some(*entry.get_log_id()),
            None => state.last_log_id(),
        };
        let own = leaders_own(
            state.vote.as_ref(),
            self.shared.node_id,
            framed.iter().map(|(e, ..)| e.get_log_id()),
        );
        let (done, told_now) = match done {
            Done::Append(callback) if own => (Done::Nobody, Some(callback)),
            done => (done, None),
        };
        if let Err(err) = self.write(&mut state, &bytes, last, done, Vec::new()) {
            state.failed.get_or_insert_with(|| err.to_string());
            return Err(StoreError::Io(format!("appending to the Raft log: {err}")));
        }
        // The frames landed at the end of the segment now last (the next one, if they did not
        // fit in the one before).
        let segment = state.segments.last_key_value().map_or(0, |(n, _)| *n);
        let base = state.end - bytes.len() as u64;
        for (entry, start, len) in framed {
            let index = entry.get_log_id().index;
            let location = Location {
                log_id: *entry.get_log_id(),
                segment,
                offset: base + start,
                len,
            };
            state.forget_from(index);
            state.entries.insert(index, location);
            state.cache_insert(index, entry, len as usize);
        }
        drop(state);
        if let Some(callback) = told_now {
            callback.log_io_completed(Ok(()));
        }
        Ok(())
    }

    /// A write failed: nothing more is accepted.
    fn fail(&self, err: &io::Error) {
        self.lock().failed.get_or_insert_with(|| err.to_string());
    }
}

impl State {
    /// Appends `bytes` to the current segment, starting the next one first when it is full;
    /// returns the segment written to.
    fn write_bytes(&mut self, dir: &Path, bytes: &[u8]) -> io::Result<Arc<File>> {
        if self.end > 0 && self.end + bytes.len() as u64 > self.segment_bytes {
            self.start_segment(dir)?;
        }
        let (_, file) = self
            .segments
            .last_key_value()
            .ok_or_else(|| io::Error::other("no log segment"))?;
        let file = Arc::clone(file);
        if let Err(err) = file.write_all_at(bytes, self.end) {
            self.failed.get_or_insert_with(|| err.to_string());
            return Err(err);
        }
        self.end += bytes.len() as u64;
        Ok(file)
    }

    /// Closes the current segment and starts the next, headed by the vote, purge point and
    /// commit hint so that dropping older segments never loses them.
    fn start_segment(&mut self, dir: &Path) -> io::Result<()> {
        let number = self.segments.last_key_value().map_or(1, |(n, _)| n + 1);
        let path = dir.join(wal::segment_name(number));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let head = segment_head(self.vote.as_ref(), self.purged.as_ref(), &self.committed)
            .map_err(io::Error::other)?;
        file.write_all_at(&head, 0)?;
        self.segments.insert(number, Arc::new(file));
        self.end = head.len() as u64;
        self.dir_unsynced = true;
        Ok(())
    }

    fn last_log_id(&self) -> Option<LogId<NodeId>> {
        self.entries
            .last_key_value()
            .map(|(_, l)| l.log_id)
            .or(self.purged)
    }

    fn cache_insert(&mut self, index: u64, entry: Entry<TypeConfig>, bytes: usize) {
        self.cache_bytes += bytes;
        if let Some((_, old)) = self.cache.insert(index, (entry, bytes)) {
            self.cache_bytes -= old;
        }
        while self.cache_bytes > CACHE_BYTES {
            let Some((_, (_, bytes))) = self.cache.pop_first() else {
                break;
            };
            self.cache_bytes -= bytes;
        }
    }

    /// Drops entries from `since` on (`since` and later) or up to `upto` (inclusive).
    fn forget_from(&mut self, since: u64) {
        self.entries.split_off(&since);
        for (_, (_, bytes)) in self.cache.split_off(&since) {
            self.cache_bytes -= bytes;
        }
    }

    fn forget_upto(&mut self, upto: u64) {
        self.entries = self.entries.split_off(&(upto + 1));
        let kept = self.cache.split_off(&(upto + 1));
        for (_, (_, bytes)) in std::mem::replace(&mut self.cache, kept) {
            self.cache_bytes -= bytes;
        }
    }
}

/// Whether entries with these ids are the leader's own: made by this member (`node_id`) as
/// the leader of the vote it holds. A term has one leader, and only it makes entries of that
/// term under its id, so no other member's entries — nor this member's from an earlier term,
/// sent back by a later leader — pass.
fn leaders_own<'a>(
    vote: Option<&Vote<NodeId>>,
    node_id: NodeId,
    mut ids: impl Iterator<Item = &'a LogId<NodeId>>,
) -> bool {
    vote.is_some_and(|vote| {
        let leader = vote.leader_id();
        leader.node_id == node_id && ids.all(|id| id.leader_id == *leader)
    })
}

/// The records at the head of a new segment.
fn segment_head(
    vote: Option<&Vote<NodeId>>,
    purged: Option<&LogId<NodeId>>,
    committed: &Option<LogId<NodeId>>,
) -> Result<Vec<u8>, WalError> {
    let mut head = Vec::new();
    if let Some(vote) = vote {
        wal::push_frame(&mut head, &RecordRef::Vote(vote))?;
    }
    if let Some(purged) = purged {
        wal::push_frame(&mut head, &RecordRef::Purged(purged))?;
    }
    wal::push_frame(&mut head, &RecordRef::Committed(committed))?;
    Ok(head)
}

/// Syncs every job waiting at the moment it runs, in one round, then reports to all of them.
/// A thread of its own rather than a task: the sync blocks, and a lone writer's latency is
/// the sync plus the hand-offs around it, so the fewer hand-offs the better. Ends when every
/// log store handle is dropped.
/// After a failed sync it stops: what reached the disk is unknown, so nothing more may be
/// acknowledged, and the closed `durable` tells those waiting on it.
fn flush_loop(
    jobs: &std::sync::mpsc::Receiver<Job>,
    durable: &tokio::sync::watch::Sender<Option<LogId<NodeId>>>,
) {
    let mut round: Vec<Job> = Vec::new();
    while let Ok(first) = jobs.recv() {
        round.push(first);
        round.extend(jobs.try_iter());
        let traced = round.last().and_then(|j| j.last).map_or(0, |l| l.index);
        super::trace::mark("log.sync", traced);
        let result = sync_round(&round);
        super::trace::mark("log.synced", traced);
        if result.is_ok() {
            if let Some(job) = round.last() {
                // The last job's, not the highest: a truncation moves the end back.
                durable.send_replace(job.last);
            }
        }
        for job in round.drain(..) {
            let outcome = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            match job.done {
                Done::Nobody => {}
                Done::Append(callback) => callback.log_io_completed(outcome),
                Done::Wait(tx) => {
                    let _ = tx.send(outcome);
                }
            }
        }
        if let Err(err) = result {
            tracing::error!(%err, "syncing the Raft log failed; the log accepts nothing more");
            return;
        }
    }
}

fn sync_round(round: &[Job]) -> io::Result<()> {
    let mut dirs: Vec<&Arc<File>> = Vec::new();
    let mut files: Vec<&Arc<File>> = Vec::new();
    for job in round {
        for dir in &job.dirs {
            if !dirs.iter().any(|d| Arc::ptr_eq(d, dir)) {
                dirs.push(dir);
            }
        }
        for file in &job.files {
            if !files.iter().any(|f| Arc::ptr_eq(f, file)) {
                files.push(file);
            }
        }
    }
    for file in files {
        file.sync_data()?;
    }
    for dir in dirs {
        dir.sync_all()?;
    }
    for job in round {
        for path in &job.remove {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // Left behind, it is only replayed and purged again.
                Err(e) => {
                    tracing::warn!(path = %path.display(), %e, "removing a purged log segment")
                }
            }
        }
    }
    Ok(())
}

/// Replays the log in `dir`, cutting off a torn tail, and opens its segments.
fn open_state(dir: &Path, segment_bytes: u64) -> Result<State, StoreError> {
    let dir_file = File::open(dir).map_err(|e| io_error("opening", dir, e))?;
    let numbers = wal::list_segments(dir).map_err(|e| io_error("listing", dir, e))?;
    let mut replay = Replay::default();
    let mut segments = BTreeMap::new();
    let mut end = 0;
    let last = numbers.last().copied();
    for number in numbers {
        let path = dir.join(wal::segment_name(number));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_error("opening", &path, e))?;
        let scan = replay_segment(&mut replay, &path, number)?;
        if scan.torn {
            if Some(number) != last {
                return Err(corrupt(format!(
                    "{} is damaged at byte {} and is not the newest segment",
                    path.display(),
                    scan.end
                )));
            }
            tracing::warn!(path = %path.display(), at = scan.end, "cutting off a torn end of the Raft log");
            file.set_len(scan.end)
                .and_then(|()| file.sync_all())
                .map_err(|e| io_error("truncating", &path, e))?;
        }
        // What a previous run wrote but had not synced when it stopped may still be only in
        // the page cache: it counts as logged from now on (openraft relies on it; so does
        // `LogStore::durable`), so it must be on disk first.
        file.sync_data()
            .map_err(|e| io_error("syncing", &path, e))?;
        end = scan.end;
        segments.insert(number, Arc::new(file));
    }
    replay.check().map_err(corrupt)?;
    let Replay {
        vote,
        committed,
        purged,
        entries,
    } = replay;
    let mut state = State {
        segments,
        end,
        segment_bytes,
        dir: Arc::new(dir_file),
        dir_unsynced: false,
        vote,
        committed,
        purged,
        entries,
        cache: BTreeMap::new(),
        cache_bytes: 0,
        failed: None,
    };
    if state.segments.is_empty() {
        state
            .start_segment(dir)
            .and_then(|()| {
                let (_, file) = state
                    .segments
                    .last_key_value()
                    .ok_or_else(|| io::Error::other("no log segment"))?;
                file.sync_data()?;
                state.dir.sync_all()
            })
            .map_err(|e| io_error("creating a segment in", dir, e))?;
        state.dir_unsynced = false;
    }
    Ok(state)
}

/// Folds the records of one segment into `replay`.
fn replay_segment(replay: &mut Replay, path: &Path, number: u64) -> Result<wal::Scan, StoreError> {
    let bytes = std::fs::read(path).map_err(|e| io_error("reading", path, e))?;
    let scan = wal::scan(&bytes);
    for &(offset, len) in &scan.frames {
        let start = offset as usize + FRAME_HEADER;
        let record = wal::decode_payload(&bytes[start..start + len as usize])
            .map_err(|e| corrupt(format!("{} at byte {offset}: {e}", path.display())))?;
        let location = Location {
            log_id: LogId::default(),
            segment: number,
            offset,
            len,
        };
        replay
            .apply(record, location)
            .map_err(|e| corrupt(format!("{} at byte {offset}: {e}", path.display())))?;
    }
    Ok(scan)
}

/// Reads the entry whose frame is at `location` in `file`.
fn read_entry(file: &File, location: &Location) -> Result<Entry<TypeConfig>, StoreError> {
    let mut payload = vec![0u8; location.len as usize];
    file.read_exact_at(&mut payload, location.offset + FRAME_HEADER as u64)
        .map_err(|e| StoreError::Io(format!("reading a Raft log entry: {e}")))?;
    match wal::decode_payload(&payload).map_err(corrupt)? {
        Record::Entry(entry) if entry.log_id == location.log_id => Ok(entry),
        _ => Err(corrupt(format!(
            "no entry {} where the log put it",
            location.log_id
        ))),
    }
}

/// Copies the log of a store made before the write-ahead files from `db`'s trees into
/// `<store_dir>/wal`: built in `wal.new`, synced, then renamed into place.
fn migrate_from_sled(store_dir: &Path, db: &sled::Db) -> Result<(), StoreError> {
    let building = store_dir.join(format!("{WAL_DIR}.new"));
    let fail = |what: &str, path: &Path, e: io::Error| io_error(what, path, e);
    match std::fs::remove_dir_all(&building) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("removing", &building, e)),
    }
    std::fs::create_dir(&building).map_err(|e| fail("creating", &building, e))?;
    let meta = db.open_tree(SLED_META)?;
    let read_meta = |key: &[u8]| -> Result<Option<sled::IVec>, StoreError> { Ok(meta.get(key)?) };
    let decode_err = |e: bincode::Error| corrupt(format!("a log record in sled: {e}"));
    let vote: Option<Vote<NodeId>> = read_meta(SLED_VOTE)?
        .map(|b| bincode::deserialize(&b).map_err(decode_err))
        .transpose()?;
    let purged: Option<LogId<NodeId>> = read_meta(SLED_LAST_PURGED)?
        .map(|b| bincode::deserialize(&b).map_err(decode_err))
        .transpose()?;
    let committed: Option<LogId<NodeId>> = read_meta(SLED_COMMITTED)?
        .map(|b| bincode::deserialize::<Option<LogId<NodeId>>>(&b).map_err(decode_err))
        .transpose()?
        .flatten();
    let mut bytes =
        segment_head(vote.as_ref(), purged.as_ref(), &committed).map_err(StoreError::from)?;
    for entry in sled_entries_after(db, None)? {
        wal::push_frame(&mut bytes, &RecordRef::Entry(&entry)).map_err(StoreError::from)?;
    }
    let path = building.join(wal::segment_name(1));
    std::fs::write(&path, &bytes)
        .and_then(|()| File::open(&path)?.sync_all())
        .and_then(|()| File::open(&building)?.sync_all())
        .map_err(|e| fail("writing", &path, e))?;
    let dir = store_dir.join(WAL_DIR);
    std::fs::rename(&building, &dir)
        .and_then(|()| File::open(store_dir)?.sync_all())
        .map_err(|e| fail("renaming into", &dir, e))?;
    Ok(())
}

impl From<WalError> for StoreError {
    fn from(err: WalError) -> Self {
        match err {
            WalError::Encode(why) => StoreError::Io(why),
            WalError::Corrupt(why) => corrupt(why),
        }
    }
}

/// Makes an empty log in `store_dir` (a store being built that is not open).
pub(super) fn create(store_dir: &Path) -> crate::Result<()> {
    let dir = store_dir.join(WAL_DIR);
    std::fs::create_dir(&dir).map_err(|e| io_error("creating", &dir, e))?;
    let head = segment_head(None, None, &None)?;
    let path = dir.join(wal::segment_name(1));
    std::fs::write(&path, head)
        .and_then(|()| File::open(&path)?.sync_all())
        .and_then(|()| File::open(&dir)?.sync_all())
        .and_then(|()| File::open(store_dir)?.sync_all())
        .map_err(|e| io_error("writing", &path, e))
}

/// The entries of the log of a store in `store_dir` that is not open (`db` its database,
/// for a store made before the write-ahead files) after index `after`, in order.
pub(super) fn entries_after(
    store_dir: &Path,
    db: &sled::Db,
    after: Option<u64>,
) -> crate::Result<Vec<Entry<TypeConfig>>> {
    let dir = store_dir.join(WAL_DIR);
    if !dir.exists() {
        return sled_entries_after(db, after);
    }
    let mut replay = Replay::default();
    let numbers = wal::list_segments(&dir).map_err(|e| io_error("listing", &dir, e))?;
    let last = numbers.last().copied();
    for number in numbers {
        let path = dir.join(wal::segment_name(number));
        let scan = replay_segment(&mut replay, &path, number)?;
        if scan.torn && Some(number) != last {
            return Err(corrupt(format!("{} is damaged", path.display())));
        }
    }
    replay.check().map_err(corrupt)?;
    let mut out = Vec::new();
    let start = after.map_or(Bound::Unbounded, Bound::Excluded);
    for location in replay
        .entries
        .range((start, Bound::Unbounded))
        .map(|(_, l)| l)
    {
        let path = dir.join(wal::segment_name(location.segment));
        let file = File::open(&path).map_err(|e| io_error("opening", &path, e))?;
        out.push(read_entry(&file, location)?);
    }
    Ok(out)
}

/// The entries in the sled tree a log was kept in before the write-ahead files.
fn sled_entries_after(db: &sled::Db, after: Option<u64>) -> crate::Result<Vec<Entry<TypeConfig>>> {
    let entries = db.open_tree(SLED_ENTRIES)?;
    let range = match after {
        Some(index) => entries.range((Bound::Excluded(index.to_be_bytes()), Bound::Unbounded)),
        None => entries.iter(),
    };
    let mut out = Vec::new();
    for item in range {
        let (_, bytes) = item?;
        out.push(
            bincode::deserialize(&bytes)
                .map_err(|e| corrupt(format!("an entry in sled does not decode: {e}")))?,
        );
    }
    Ok(out)
}

/// Appends `entry` to the log of the store in `store_dir` (not open): what a member that
/// logged an entry and stopped before applying it holds.
#[cfg(test)]
pub(super) fn write_entry(store_dir: &Path, entry: &Entry<TypeConfig>) -> crate::Result<()> {
    let dir = store_dir.join(WAL_DIR);
    let last = wal::list_segments(&dir)
        .map_err(|e| io_error("listing", &dir, e))?
        .pop()
        .ok_or_else(|| corrupt("no segment"))?;
    let mut bytes = Vec::new();
    wal::push_frame(&mut bytes, &RecordRef::Entry(entry))?;
    let path = dir.join(wal::segment_name(last));
    let mut file = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| io_error("opening", &path, e))?;
    io::Write::write_all(&mut file, &bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error("writing", &path, e))
}

/// A sled-kept log with these entries and vote, as a store made before the write-ahead files
/// has it.
#[cfg(test)]
pub(super) fn write_sled_log(
    db: &sled::Db,
    entries: &[Entry<TypeConfig>],
    vote: &Vote<NodeId>,
) -> crate::Result<()> {
    let tree = db.open_tree(SLED_ENTRIES)?;
    for entry in entries {
        let bytes = bincode::serialize(entry).map_err(|e| StoreError::Io(e.to_string()))?;
        tree.insert(entry.get_log_id().index.to_be_bytes(), bytes)?;
    }
    let meta = db.open_tree(SLED_META)?;
    meta.insert(
        SLED_VOTE,
        bincode::serialize(vote).map_err(|e| StoreError::Io(e.to_string()))?,
    )?;
    db.flush()?;
    Ok(())
}

/// An entry a read found: in the cache, or where to read it from.
type Found = Result<Entry<TypeConfig>, (Arc<File>, Location)>;

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        // Cached entries are cloned under the lock; the others are read after it is released.
        let mut found: Vec<Found> = Vec::new();
        {
            let state = self.lock();
            for (index, location) in state.entries.range(range) {
                match state.cache.get(index) {
                    Some((entry, _)) => found.push(Ok(entry.clone())),
                    None => {
                        let file = state.segments.get(&location.segment).ok_or_else(|| {
                            StorageIOError::read_logs(AnyError::error(format!(
                                "log segment {} is gone",
                                location.segment
                            )))
                        })?;
                        found.push(Err((Arc::clone(file), *location)));
                    }
                }
            }
        }
        found
            .into_iter()
            .map(|item| match item {
                Ok(entry) => Ok(entry),
                Err((file, location)) => read_entry(&file, &location)
                    .map_err(|e| StorageIOError::read_logs(any(e)).into()),
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let state = self.lock();
        Ok(LogState {
            last_purged_log_id: state.purged,
            last_log_id: state.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.write_synced(
            RecordRef::Vote(vote),
            |state| state.vote = Some(*vote),
            Vec::new(),
        )
        .await
        .map_err(|e| StorageIOError::write_vote(any(e)).into())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Not synced: it is a hint that lets a restart re-apply committed entries at once;
        // losing it only delays that until the next commit. It rides with the next sync.
        let mut bytes = Vec::new();
        wal::push_frame(&mut bytes, &RecordRef::Committed(&committed))
            .map_err(|e| StorageIOError::write(any(e)))?;
        let mut state = self.lock();
        if state.failed.is_none() {
            state
                .write_bytes(&self.shared.dir, &bytes)
                .map_err(|e| StorageIOError::write(any(e)))?;
        }
        state.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.append_entries(entries, Done::Append(callback))
            .map_err(|e| StorageIOError::write_logs(any(e)).into())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.write_synced(
            RecordRef::Truncated {
                since: log_id.index,
            },
            |state| state.forget_from(log_id.index),
            Vec::new(),
        )
        .await
        .map_err(|e| StorageIOError::write_logs(any(e)))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        // The state machine must keep what the purged entries did: its applied position may
        // not fall back behind the log's start after a crash.
        self.shared
            .sm_disk
            .sync()
            .await
            .map_err(|e| StorageIOError::write_logs(any(e)))?;
        let remove = {
            let mut state = self.lock();
            state.forget_upto(log_id.index);
            state.purged = Some(log_id);
            // Segments before the one holding the first kept entry hold purged entries only.
            let current = state.segments.last_key_value().map_or(0, |(n, _)| *n);
            let keep_from = state
                .entries
                .first_key_value()
                .map_or(current, |(_, l)| l.segment);
            let dropped: Vec<u64> = state.segments.range(..keep_from).map(|(n, _)| *n).collect();
            for number in &dropped {
                state.segments.remove(number);
            }
            dropped
                .into_iter()
                .map(|n| self.shared.dir.join(wal::segment_name(n)))
                .collect()
        };
        self.write_synced(RecordRef::Purged(&log_id), |_| {}, remove)
            .await
            .map_err(|e| StorageIOError::write_logs(any(e)))?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::wal::tests::{entry, log_id};
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
        db: sled::Db,
        disk: Arc<DiskSync>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::TempDir::new().unwrap();
            let path = dir.path().join("db");
            let db = sled::open(&path).unwrap();
            let disk = DiskSync::open(&db, &path).unwrap();
            Fixture { dir, db, disk }
        }

        /// A log closing segments at 1 KiB, so a few entries span several.
        fn open(&self) -> LogStore {
            LogStore::open_with(self.dir.path(), &self.db, Arc::clone(&self.disk), 1, 1024).unwrap()
        }

        fn segments(&self) -> Vec<u64> {
            wal::list_segments(&self.dir.path().join(WAL_DIR)).unwrap()
        }
    }

    async fn append(log: &LogStore, entries: Vec<Entry<TypeConfig>>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        log.append_entries(entries, Done::Wait(tx)).unwrap();
        rx.await.unwrap().unwrap();
    }

    async fn logged(log: &mut LogStore) -> Vec<(u64, u64)> {
        log.try_get_log_entries(..)
            .await
            .unwrap()
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect()
    }

    #[tokio::test]
    async fn the_log_survives_reopening_across_segments_truncations_and_purges() {
        let fixture = Fixture::new();
        let mut log = fixture.open();
        for i in 1..=40 {
            append(&log, vec![entry(1, i)]).await;
        }
        log.truncate(log_id(1, 30)).await.unwrap();
        append(&log, (30..=35).map(|i| entry(2, i)).collect()).await;
        log.save_vote(&Vote::new(2, 1)).await.unwrap();
        log.save_committed(Some(log_id(2, 33))).await.unwrap();
        let before_purge = fixture.segments();
        assert!(before_purge.len() > 5, "{before_purge:?}");
        log.purge(log_id(1, 20)).await.unwrap();
        let after_purge = fixture.segments();
        assert!(
            after_purge.len() < before_purge.len() && after_purge[0] > before_purge[0],
            "purged segments stay: {before_purge:?} then {after_purge:?}"
        );
        let expected: Vec<(u64, u64)> = (21..30)
            .map(|i| (1, i))
            .chain((30..=35).map(|i| (2, i)))
            .collect();
        assert_eq!(logged(&mut log).await, expected);
        drop(log);

        let mut log = fixture.open();
        assert_eq!(logged(&mut log).await, expected);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 20)));
        assert_eq!(state.last_log_id, Some(log_id(2, 35)));
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
        // The hint was written without a sync of its own; the reopened store still has it
        // (same machine, no power loss).
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 33)));
        // Reading entries no longer in the cache goes to the files.
        log.lock().cache.clear();
        assert_eq!(logged(&mut log).await, expected);
    }

    #[tokio::test]
    async fn a_purge_past_the_end_keeps_its_point_for_the_next_entries() {
        let fixture = Fixture::new();
        let mut log = fixture.open();
        append(&log, (1..=5).map(|i| entry(1, i)).collect()).await;
        log.purge(log_id(3, 100)).await.unwrap();
        append(&log, vec![entry(3, 101)]).await;
        drop(log);
        let mut log = fixture.open();
        assert_eq!(logged(&mut log).await, [(3, 101)]);
        assert_eq!(
            log.get_log_state().await.unwrap().last_purged_log_id,
            Some(log_id(3, 100))
        );
    }

    #[tokio::test]
    async fn a_torn_end_is_cut_off_and_written_over() {
        let fixture = Fixture::new();
        let log = fixture.open();
        append(&log, (1..=3).map(|i| entry(1, i)).collect()).await;
        drop(log);
        let last = *fixture.segments().last().unwrap();
        let path = fixture
            .dir
            .path()
            .join(WAL_DIR)
            .join(wal::segment_name(last));
        let whole = std::fs::metadata(&path).unwrap().len();
        // Half a frame, as a crash in the middle of a write leaves.
        let mut torn = Vec::new();
        wal::push_frame(&mut torn, &RecordRef::Entry(&entry(1, 4))).unwrap();
        torn.truncate(torn.len() / 2);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        io::Write::write_all(&mut file, &torn).unwrap();
        drop(file);

        let log = fixture.open();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        append(&log, vec![entry(1, 4)]).await;
        drop(log);
        let mut log = fixture.open();
        assert_eq!(logged(&mut log).await, [(1, 1), (1, 2), (1, 3), (1, 4)]);
    }

    #[tokio::test]
    async fn damage_before_the_newest_segment_is_refused() {
        let fixture = Fixture::new();
        let log = fixture.open();
        append(&log, (1..=30).map(|i| entry(1, i)).collect()).await;
        drop(log);
        let first = fixture.segments()[0];
        let path = fixture
            .dir
            .path()
            .join(WAL_DIR)
            .join(wal::segment_name(first));
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let err = LogStore::open_with(
            fixture.dir.path(),
            &fixture.db,
            Arc::clone(&fixture.disk),
            1,
            1024,
        )
        .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    }

    #[test]
    fn only_the_leaders_own_entries_are_acknowledged_before_their_sync() {
        let term2_by_1 = [log_id(2, 5), log_id(2, 6)];
        assert!(leaders_own(Some(&Vote::new(2, 1)), 1, term2_by_1.iter()));
        assert!(leaders_own(
            Some(&Vote::new_committed(2, 1)),
            1,
            term2_by_1.iter()
        ));
        // A follower of node 1.
        assert!(!leaders_own(
            Some(&Vote::new_committed(2, 1)),
            2,
            term2_by_1.iter()
        ));
        // Node 1's entries of term 2 sent back to it by the leader of term 3.
        assert!(!leaders_own(
            Some(&Vote::new_committed(3, 2)),
            1,
            term2_by_1.iter()
        ));
        assert!(!leaders_own(
            Some(&Vote::new_committed(3, 1)),
            1,
            term2_by_1.iter()
        ));
        let mixed = [log_id(1, 4), log_id(2, 5)];
        assert!(!leaders_own(Some(&Vote::new(2, 1)), 1, mixed.iter()));
        assert!(!leaders_own(None, 1, term2_by_1.iter()));
    }

    #[tokio::test]
    async fn durable_follows_syncs_and_truncations() {
        let fixture = Fixture::new();
        let mut log = fixture.open();
        let durable = log.durable();
        assert_eq!(*durable.borrow(), None);
        append(&log, (1..=5).map(|i| entry(1, i)).collect()).await;
        assert_eq!(*durable.borrow(), Some(log_id(1, 5)));
        log.truncate(log_id(1, 4)).await.unwrap();
        assert_eq!(*durable.borrow(), Some(log_id(1, 3)));
        log.purge(log_id(1, 9)).await.unwrap();
        assert_eq!(*durable.borrow(), Some(log_id(1, 9)));
        drop(log);
        assert_eq!(*fixture.open().durable().borrow(), Some(log_id(1, 9)));
    }

    #[tokio::test]
    async fn a_missing_log_beside_a_state_machine_is_refused() {
        let fixture = Fixture::new();
        fixture.db.open_tree(super::super::STATE_TREE).unwrap();
        let err = LogStore::open(
            fixture.dir.path(),
            &fixture.db,
            Arc::clone(&fixture.disk),
            1,
        )
        .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
        assert!(!fixture.dir.path().join(WAL_DIR).exists());
    }

    #[tokio::test]
    async fn a_log_kept_in_sled_moves_into_the_write_ahead_files() {
        let fixture = Fixture::new();
        let entries: Vec<_> = (1..=4).map(|i| entry(1, i)).collect();
        write_sled_log(&fixture.db, &entries, &Vote::new(1, 1)).unwrap();
        let mut log = fixture.open();
        assert_eq!(logged(&mut log).await, [(1, 1), (1, 2), (1, 3), (1, 4)]);
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(1, 1)));
        assert!(!fixture
            .db
            .tree_names()
            .iter()
            .any(|name| name.as_ref() == SLED_ENTRIES.as_bytes()));
        assert!(!fixture.dir.path().join("wal.new").exists());
        // What a store not open reads (a cluster reset) agrees.
        let read = entries_after(fixture.dir.path(), &fixture.db, Some(2)).unwrap();
        assert_eq!(
            read.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            [3, 4]
        );
    }
}
