//! Write-behind for the state machine's sled tree: applying a log entry changes memory only,
//! and a flusher thread writes what was applied to sled afterwards, as etcd applies to an
//! in-memory buffer and commits its bbolt backend in the background. sled 0.34 rolls its IO
//! buffer around every batch (two `pwrite`s and two `sync_file_range`s each), so a batch per
//! applied entry put that cost on every write's path; the flusher instead merges everything
//! applied since its last batch into one.
//!
//! This module owns the applied-but-unflushed writes (raw sled keys to a value or a removal):
//! `pending`, still collecting, and `flushing`, the batch being written. Readers see sled
//! with both laid over it ([`WriteBehind::read`]), so every applied write is visible at once.
//! The flusher writes each batch with one sled `apply_batch` and the batch carries the state
//! machine's own bookkeeping (its applied log id) with the data, so sled always holds a
//! consistent prefix of the applied entries: after a crash, Raft applies the rest again from
//! its log. Anything that needs sled itself to be complete — a durability point before the log
//! is purged, installing a snapshot, shutdown — waits for the flusher first
//! ([`WriteBehind::flush_blocking`]). A failed flush is kept: every later apply and read
//! fails with it.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;

use sled::IVec;

use crate::error::{Result, StoreError};

/// Raw sled keys to a new value, or `None` for a removal.
pub(super) type Writes = BTreeMap<IVec, Option<IVec>>;

/// Bytes of applied writes allowed to wait for the flusher before applying waits for it.
pub(super) const PENDING_LIMIT: usize = 64 * 1024 * 1024;
/// What a key costs beyond its bytes, for that limit (the map's node and the two handles).
const PER_KEY: usize = 64;

fn size(key: &IVec, value: &Option<IVec>) -> usize {
    key.len() + value.as_ref().map_or(0, |v| v.len()) + PER_KEY
}

/// The writes not in sled yet.
#[derive(Debug, Default)]
struct Overlay {
    /// Applied since the flusher last took a batch; newer than `flushing`.
    pending: Writes,
    pending_bytes: usize,
    /// The batch the flusher is writing; cleared only once sled holds it.
    flushing: Writes,
    /// Applies so far (each [`WriteBehind::apply`] counts one).
    applied: u64,
}

/// Coordination with the flusher thread.
#[derive(Debug, Default)]
struct Flow {
    /// The apply count the flusher has written out.
    flushed: u64,
    /// The apply count as last announced to the flusher.
    queued: u64,
    /// Why a flush failed; sticky.
    error: Option<String>,
    stop: bool,
    /// Tests hold the flusher to look at unflushed states.
    #[cfg(test)]
    held: bool,
}

/// What the state machine and its flusher share.
#[derive(Debug)]
pub(super) struct WriteBehind {
    tree: sled::Tree,
    overlay: RwLock<Overlay>,
    flow: Mutex<Flow>,
    /// The flusher waits on it for work.
    work: Condvar,
    /// Whoever waits for a flush waits on it.
    flushed: Condvar,
    /// The flushed apply count, for async waiters (backpressure in apply).
    flushed_tx: tokio::sync::watch::Sender<u64>,
    failed: AtomicBool,
}

/// Stops the flusher when the state machine goes: it writes what is pending, then ends.
#[derive(Debug)]
pub(super) struct Flusher {
    shared: Arc<WriteBehind>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shared.lock_flow().stop = true;
        self.shared.work.notify_all();
        if let Some(thread) = self.thread.take() {
            // Joined so that the database is closed once the state machine is gone (sled
            // keeps its lock while the thread holds the tree).
            let _ = thread.join();
        }
    }
}

/// A read of the tree as applied: sled under the unflushed writes. Applies wait while it is
/// held, so several reads through one view see one state.
pub(super) struct View<'a> {
    overlay: RwLockReadGuard<'a, Overlay>,
    tree: &'a sled::Tree,
}

impl WriteBehind {
    /// Write-behind for `tree`, with its flusher thread started.
    pub fn start(tree: sled::Tree) -> Result<(Arc<WriteBehind>, Flusher)> {
        let shared = Arc::new(WriteBehind {
            tree,
            overlay: RwLock::new(Overlay::default()),
            flow: Mutex::new(Flow::default()),
            work: Condvar::new(),
            flushed: Condvar::new(),
            flushed_tx: tokio::sync::watch::Sender::new(0),
            failed: AtomicBool::new(false),
        });
        let for_thread = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("sm-flush".into())
            .spawn(move || for_thread.run())
            .map_err(|e| StoreError::Io(format!("starting the state machine's flusher: {e}")))?;
        Ok((
            Arc::clone(&shared),
            Flusher {
                shared,
                thread: Some(thread),
            },
        ))
    }

    fn lock_flow(&self) -> MutexGuard<'_, Flow> {
        self.flow.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self) -> Result<()> {
        if !self.failed.load(Ordering::Acquire) {
            return Ok(());
        }
        let flow = self.lock_flow();
        Err(failure(flow.error.as_deref().unwrap_or("unknown error")))
    }

    /// Everything applied, for reading; fails once a flush has failed.
    pub fn read(&self) -> Result<View<'_>> {
        self.check()?;
        Ok(View {
            overlay: self.overlay.read().unwrap_or_else(|e| e.into_inner()),
            tree: &self.tree,
        })
    }

    /// Makes `writes` applied (visible to readers, queued for sled) and runs `publish` — the
    /// in-memory bookkeeping that goes with them — while no reader looks.
    pub fn apply(&self, writes: Writes, publish: impl FnOnce()) -> Result<()> {
        self.check()?;
        let applied = {
            let mut guard = self.overlay.write().unwrap_or_else(|e| e.into_inner());
            let overlay = &mut *guard;
            for (key, value) in writes {
                let added = size(&key, &value);
                if let Some(old) = overlay.pending.insert(key.clone(), value) {
                    overlay.pending_bytes -= size(&key, &old);
                }
                overlay.pending_bytes += added;
            }
            overlay.applied += 1;
            publish();
            overlay.applied
        };
        self.lock_flow().queued = applied;
        self.work.notify_one();
        Ok(())
    }

    /// Bytes applied and not yet taken by the flusher.
    pub fn pending_bytes(&self) -> usize {
        self.overlay
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .pending_bytes
    }

    /// Waits (asynchronously) until fewer than `limit` bytes are pending, or a flush failed.
    pub async fn wait_below(&self, limit: usize) -> Result<()> {
        let mut flushed = self.flushed_tx.subscribe();
        while self.pending_bytes() >= limit {
            self.check()?;
            if flushed.changed().await.is_err() {
                break;
            }
        }
        self.check()
    }

    /// Waits until sled holds everything applied before the call.
    pub fn flush_blocking(&self) -> Result<()> {
        let target = self
            .overlay
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .applied;
        let mut flow = self.lock_flow();
        flow.queued = flow.queued.max(target);
        self.work.notify_one();
        loop {
            if let Some(error) = &flow.error {
                return Err(failure(error));
            }
            if flow.flushed >= target {
                return Ok(());
            }
            flow = self.flushed.wait(flow).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Runs `write` on the tree itself with readers and applies held off, once sled holds
    /// everything applied (installing a snapshot rewrites the whole tree).
    pub fn exclusive<T>(&self, write: impl FnOnce(&sled::Tree) -> Result<T>) -> Result<T> {
        self.flush_blocking()?;
        let overlay = self.overlay.write().unwrap_or_else(|e| e.into_inner());
        // Nothing applies meanwhile (the caller is the state machine), so the flush left both
        // maps empty.
        debug_assert!(overlay.pending.is_empty() && overlay.flushing.is_empty());
        let result = write(&self.tree);
        drop(overlay);
        result
    }

    /// The flusher thread: takes what is pending, writes it as one sled batch, repeats.
    fn run(&self) {
        loop {
            {
                let mut flow = self.lock_flow();
                loop {
                    #[cfg(test)]
                    let held = flow.held && !flow.stop;
                    #[cfg(not(test))]
                    let held = false;
                    if flow.error.is_some() || (flow.stop && flow.flushed >= flow.queued) {
                        return;
                    }
                    if flow.queued > flow.flushed && !held {
                        break;
                    }
                    flow = self.work.wait(flow).unwrap_or_else(|e| e.into_inner());
                }
            }
            let (batch, applied) = {
                let mut overlay = self.overlay.write().unwrap_or_else(|e| e.into_inner());
                overlay.flushing = std::mem::take(&mut overlay.pending);
                overlay.pending_bytes = 0;
                let mut batch = sled::Batch::default();
                for (key, value) in &overlay.flushing {
                    match value {
                        Some(value) => batch.insert(key.clone(), value.clone()),
                        None => batch.remove(key.clone()),
                    }
                }
                (batch, overlay.applied)
            };
            let written = self.tree.apply_batch(batch);
            if let Err(e) = &written {
                tracing::error!(%e, "writing applied entries to the state machine's database");
                // Nothing more is written: sled's state after a failed batch is not known.
                self.fail(&e.to_string());
                return;
            }
            self.overlay
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .flushing
                .clear();
            self.lock_flow().flushed = applied;
            self.flushed.notify_all();
            self.flushed_tx.send_replace(applied);
        }
    }

    /// Holds (`true`) or releases the flusher, for tests of unflushed states.
    #[cfg(test)]
    pub fn hold(&self, held: bool) {
        self.lock_flow().held = held;
        self.work.notify_all();
    }

    /// Drops everything not flushed and stops the flusher, as a crash would.
    #[cfg(test)]
    pub fn crash(&self) {
        let mut overlay = self.overlay.write().unwrap_or_else(|e| e.into_inner());
        overlay.pending.clear();
        let mut flow = self.lock_flow();
        flow.queued = overlay.applied;
        flow.flushed = overlay.applied;
        flow.stop = true;
        drop(flow);
        self.work.notify_all();
    }

    /// Records a failed flush: everything from now on fails with `why`.
    fn fail(&self, why: &str) {
        let mut flow = self.lock_flow();
        flow.error = Some(why.into());
        self.failed.store(true, Ordering::Release);
        drop(flow);
        self.work.notify_all();
        self.flushed.notify_all();
        self.flushed_tx.send_modify(|_| {});
    }

    /// Fails the flusher as a full disk would (sled's error text is whatever the OS said).
    #[cfg(test)]
    pub fn fail_with(&self, why: &str) {
        self.fail(why);
    }
}

fn failure(why: &str) -> StoreError {
    StoreError::Io(format!(
        "writing applied entries to the state machine's database failed: {why}"
    ))
}

impl View<'_> {
    /// The applied value of `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<IVec>> {
        for layer in [&self.overlay.pending, &self.overlay.flushing] {
            if let Some(value) = layer.get(key) {
                return Ok(value.clone());
            }
        }
        Ok(self.tree.get(key)?)
    }

    /// Applied keys from `start` (inclusive) to `end` (exclusive; `None`: to the end) with
    /// their values, in key order, until `visit` returns `false`.
    pub fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &IVec) -> Result<bool>,
    ) -> Result<()> {
        let bounds: (Bound<&[u8]>, Bound<&[u8]>) = (
            Bound::Included(start),
            end.map_or(Bound::Unbounded, Bound::Excluded),
        );
        let layer = |writes: &Writes| {
            writes
                .range::<[u8], _>(bounds)
                .map(|(k, v)| Ok((k.clone(), v.clone())))
                .collect::<Vec<_>>()
        };
        let base = match end {
            Some(end) => self.tree.range(start..end),
            None => self.tree.range(start..),
        }
        .map(|item| item.map(|(k, v)| (k, Some(v))).map_err(StoreError::from));
        let overlay = Merge::new(
            layer(&self.overlay.pending).into_iter(),
            layer(&self.overlay.flushing).into_iter(),
        );
        for item in Merge::new(overlay, base) {
            let (key, value) = item?;
            if let Some(value) = value {
                if !visit(&key, &value)? {
                    break;
                }
            }
        }
        Ok(())
    }
}

type Item = Result<(IVec, Option<IVec>)>;

/// Two key-ordered streams as one; on a key both have, the first's entry wins (a newer layer
/// over an older one). Removals (`None`) are passed on, for the layer below to be hidden.
struct Merge<A: Iterator<Item = Item>, B: Iterator<Item = Item>> {
    newer: std::iter::Peekable<A>,
    older: std::iter::Peekable<B>,
}

impl<A: Iterator<Item = Item>, B: Iterator<Item = Item>> Merge<A, B> {
    fn new(newer: A, older: B) -> Self {
        Merge {
            newer: newer.peekable(),
            older: older.peekable(),
        }
    }
}

impl<A: Iterator<Item = Item>, B: Iterator<Item = Item>> Iterator for Merge<A, B> {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        use std::cmp::Ordering::*;
        let order = match (self.newer.peek(), self.older.peek()) {
            (None, None) => return None,
            (Some(_), None) | (Some(Err(_)), _) => Less,
            (None, Some(_)) | (_, Some(Err(_))) => Greater,
            (Some(Ok((a, _))), Some(Ok((b, _)))) => a.cmp(b),
        };
        match order {
            Less => self.newer.next(),
            Greater => self.older.next(),
            Equal => {
                self.older.next();
                self.newer.next()
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn layer(items: &[(&str, Option<&str>)]) -> Vec<Item> {
        items
            .iter()
            .map(|(k, v)| Ok((IVec::from(*k), v.map(IVec::from))))
            .collect()
    }

    fn merged(newer: &[(&str, Option<&str>)], older: &[(&str, Option<&str>)]) -> Vec<String> {
        Merge::new(layer(newer).into_iter(), layer(older).into_iter())
            .map(|item| {
                let (k, v) = item.unwrap();
                let v = v.map_or("-".to_string(), |v| String::from_utf8_lossy(&v).into());
                format!("{}={v}", String::from_utf8_lossy(&k))
            })
            .collect()
    }

    #[test]
    fn the_newer_layer_wins_and_removals_pass_through() {
        assert_eq!(
            merged(
                &[("a", Some("2")), ("c", None), ("e", Some("5"))],
                &[
                    ("a", Some("1")),
                    ("b", Some("1")),
                    ("c", Some("1")),
                    ("f", Some("1"))
                ],
            ),
            ["a=2", "b=1", "c=-", "e=5", "f=1"]
        );
        assert_eq!(merged(&[], &[("x", Some("1"))]), ["x=1"]);
        assert_eq!(merged(&[("x", None)], &[]), ["x=-"]);
    }

    #[test]
    fn an_error_is_passed_on_first() {
        let newer = vec![Ok((IVec::from("b"), None))];
        let older = vec![Err(StoreError::Io("broken".into()))];
        let mut merge = Merge::new(newer.into_iter(), older.into_iter());
        assert!(merge.next().unwrap().is_err());
    }

    fn tree(dir: &tempfile::TempDir) -> sled::Tree {
        sled::open(dir.path().join("db"))
            .unwrap()
            .open_tree("t")
            .unwrap()
    }

    fn writes(items: &[(&str, Option<&str>)]) -> Writes {
        items
            .iter()
            .map(|(k, v)| (IVec::from(*k), v.map(IVec::from)))
            .collect()
    }

    fn visible(wb: &WriteBehind) -> Vec<String> {
        let mut out = Vec::new();
        wb.read()
            .unwrap()
            .range(b"", None, &mut |k, v| {
                out.push(format!(
                    "{}={}",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(v)
                ));
                Ok(true)
            })
            .unwrap();
        out
    }

    #[test]
    fn reads_see_applied_writes_before_and_after_they_are_flushed() {
        let dir = tempfile::TempDir::new().unwrap();
        let tree = tree(&dir);
        tree.insert("a", "0").unwrap();
        tree.insert("b", "0").unwrap();
        let (wb, flusher) = WriteBehind::start(tree.clone()).unwrap();
        wb.hold(true);
        wb.apply(writes(&[("a", Some("1")), ("c", Some("1"))]), || {})
            .unwrap();
        wb.apply(writes(&[("b", None), ("c", Some("2"))]), || {})
            .unwrap();
        assert_eq!(visible(&wb), ["a=1", "c=2"]);
        assert_eq!(wb.read().unwrap().get(b"c").unwrap(), Some(IVec::from("2")));
        assert_eq!(wb.read().unwrap().get(b"b").unwrap(), None);
        // Not in sled yet.
        assert_eq!(tree.get("a").unwrap(), Some(IVec::from("0")));
        assert!(wb.pending_bytes() > 0);

        wb.hold(false);
        wb.flush_blocking().unwrap();
        assert_eq!(tree.get("a").unwrap(), Some(IVec::from("1")));
        assert_eq!(tree.get("b").unwrap(), None);
        assert_eq!(tree.get("c").unwrap(), Some(IVec::from("2")));
        assert_eq!(wb.pending_bytes(), 0);
        assert_eq!(visible(&wb), ["a=1", "c=2"]);
        drop(flusher);
    }

    #[test]
    fn dropping_the_flusher_writes_what_is_pending() {
        let dir = tempfile::TempDir::new().unwrap();
        let tree = tree(&dir);
        let (wb, flusher) = WriteBehind::start(tree.clone()).unwrap();
        wb.hold(true);
        wb.apply(writes(&[("k", Some("v"))]), || {}).unwrap();
        drop(flusher);
        assert_eq!(tree.get("k").unwrap(), Some(IVec::from("v")));
    }

    #[test]
    fn a_failed_flush_fails_what_follows() {
        let dir = tempfile::TempDir::new().unwrap();
        let (wb, _flusher) = WriteBehind::start(tree(&dir)).unwrap();
        wb.hold(true);
        wb.apply(writes(&[("k", Some("v"))]), || {}).unwrap();
        wb.fail_with("No space left on device");
        let message = |r: Result<()>| r.unwrap_err().to_string();
        assert!(message(wb.flush_blocking()).contains("No space left on device"));
        assert!(message(wb.apply(writes(&[("j", Some("v"))]), || {})).contains("No space"));
        assert!(message(wb.read().map(|_| ())).contains("No space"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(rt.block_on(wb.wait_below(0)).is_err());
    }
}
