//! Watch fan-out shared by every backend: the backend publishes applied events to a
//! [`WatchHub`]; each watcher is a small task that reads what it has not yet delivered from the
//! hub's ring of recent events (or, when it has fallen behind the ring, from the backend's
//! durable history) and pushes it into its own bounded channel. A slow watcher only ever
//! slows itself.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use tokio::sync::{mpsc, watch};

use crate::error::{Result, StoreError};
use crate::types::{Event, Revision};

/// How many recent events the hub keeps in memory for watchers that are nearly caught up.
const RING_CAPACITY: usize = 4096;
/// Events per watcher buffered before the watcher task waits for its consumer.
const WATCHER_BUFFER: usize = 256;
/// Events read from durable history in one go by a lagging watcher.
const HISTORY_BATCH: usize = 1024;

/// Where a watcher that fell behind the ring reads older events.
pub trait HistorySource: Send + Sync + 'static {
    /// Up to `limit` events with revision greater than `after`, in order; `Compacted` if some of
    /// them are gone.
    fn events_after(&self, after: Revision, limit: usize) -> Result<Vec<Event>>;
}

/// The publish side of watch: one per backend.
#[derive(Debug)]
pub struct WatchHub {
    head: watch::Sender<Revision>,
    recent: RwLock<VecDeque<Arc<Event>>>,
}

impl WatchHub {
    /// A hub whose history starts after `revision`.
    pub fn new(revision: Revision) -> Self {
        WatchHub {
            head: watch::Sender::new(revision),
            recent: RwLock::new(VecDeque::with_capacity(RING_CAPACITY)),
        }
    }

    /// Makes applied events visible to watchers. Must be called in revision order.
    pub fn publish(&self, events: impl IntoIterator<Item = Event>) {
        let mut last = None;
        {
            let mut ring = self.recent.write().unwrap_or_else(|e| e.into_inner());
            for event in events {
                last = Some(event.revision());
                if ring.len() == RING_CAPACITY {
                    ring.pop_front();
                }
                ring.push_back(Arc::new(event));
            }
        }
        if let Some(revision) = last {
            self.head.send_replace(revision);
        }
    }

    /// Forgets the recent events and moves the head to `revision`: the store's state was
    /// replaced (a Raft snapshot installed) and its history now starts there. Watchers behind
    /// it read durable history next, which answers `Compacted`.
    pub fn reset(&self, revision: Revision) {
        self.recent
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.head.send_replace(revision);
    }

    /// The latest published revision.
    pub fn head(&self) -> Revision {
        *self.head.borrow()
    }

    /// Events after `after` from the ring, or `None` when the ring no longer reaches back that
    /// far (the watcher must read durable history).
    fn recent_after(&self, after: Revision) -> Option<Vec<Arc<Event>>> {
        let ring = self.recent.read().unwrap_or_else(|e| e.into_inner());
        let first = ring.front().map(|e| e.revision());
        match first {
            Some(first) if first > after + 1 => None,
            Some(first) => {
                let skip = usize::try_from((after + 1 - first).max(0)).unwrap_or(usize::MAX);
                Some(ring.iter().skip(skip).cloned().collect())
            }
            None if self.head() > after => None,
            None => Some(Vec::new()),
        }
    }

    /// Starts a watcher over `prefix` delivering events after `after`. The caller has checked
    /// that `after` is within retained history.
    pub fn subscribe(
        self: &Arc<Self>,
        history: Arc<dyn HistorySource>,
        prefix: String,
        after: Revision,
    ) -> WatchStream {
        let (tx, rx) = mpsc::channel(WATCHER_BUFFER);
        let hub = Arc::clone(self);
        tokio::spawn(async move {
            let mut head_rx = hub.head.subscribe();
            let mut delivered = after;
            loop {
                head_rx.borrow_and_update();
                let batch = match hub.recent_after(delivered) {
                    Some(batch) => batch,
                    None => match history.events_after(delivered, HISTORY_BATCH) {
                        Ok(events) => events.into_iter().map(Arc::new).collect(),
                        Err(err) => {
                            let _ = tx.send(Err(err)).await;
                            return;
                        }
                    },
                };
                let caught_up = batch.is_empty();
                for event in batch {
                    // The ring may hold events the history read already delivered.
                    if event.revision() <= delivered {
                        continue;
                    }
                    delivered = event.revision();
                    if event.kv.key.starts_with(&prefix) && tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                if caught_up {
                    tokio::select! {
                        changed = head_rx.changed() => if changed.is_err() { return },
                        () = tx.closed() => return,
                    }
                }
            }
        });
        WatchStream { rx }
    }
}

/// The receiving end of a watch: yields events in revision order; an `Err` (such as
/// [`StoreError::Compacted`]) is always the last item. Dropping it stops the watcher.
#[derive(Debug)]
pub struct WatchStream {
    rx: mpsc::Receiver<Result<Arc<Event>>>,
}

impl WatchStream {
    /// The next event, or `None` when the store shut down.
    pub async fn next(&mut self) -> Option<Result<Arc<Event>>> {
        self.rx.recv().await
    }
}

impl futures_core::Stream for WatchStream {
    type Item = Result<Arc<Event>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// Checks a watch's starting point against the retained history.
pub(crate) fn check_start(
    after: Option<Revision>,
    current: Revision,
    compacted: Revision,
) -> Result<Revision> {
    match after {
        None => Ok(current),
        Some(after) if after < compacted => Err(StoreError::Compacted {
            requested: after,
            compacted,
        }),
        Some(after) if after > current => Err(StoreError::FutureRevision {
            requested: after,
            current,
        }),
        Some(after) => Ok(after),
    }
}
