//! An in-memory [`Store`]: the same MVCC logic as the replicated store without disk or Raft.
//! For tests of everything above the store, and as the conformance suite's reference.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use crate::api::Store;
use crate::error::{Result, StoreError};
use crate::mvcc::{
    self, compacted, deleted, written, Command, KvState, Outcome, RangeSource, Retention,
};
use crate::types::{
    validate_key, validate_prefix, validate_value, Event, EventKind, KeyValue, RangeRequest,
    RangeResponse, Revision,
};
use crate::watch::{check_start, HistorySource, WatchHub, WatchStream};

/// The whole state of an in-memory store.
#[derive(Debug, Default)]
pub struct MemState {
    current: BTreeMap<String, KeyValue>,
    history: VecDeque<Event>,
    revision: Revision,
    compacted: Revision,
}

impl KvState for MemState {
    fn current(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.current.get(key).cloned())
    }
    fn revision(&self) -> Revision {
        self.revision
    }
    fn compacted(&self) -> Revision {
        self.compacted
    }
    fn record(&mut self, event: Event) -> Result<()> {
        match event.kind {
            EventKind::Put => self.current.insert(event.kv.key.clone(), event.kv.clone()),
            EventKind::Delete => self.current.remove(&event.kv.key),
        };
        self.revision = event.revision();
        self.history.push_back(event);
        Ok(())
    }
    fn drop_history_through(&mut self, revision: Revision) -> Result<()> {
        while self
            .history
            .front()
            .is_some_and(|e| e.revision() <= revision)
        {
            self.history.pop_front();
        }
        self.compacted = self.compacted.max(revision);
        Ok(())
    }
}

impl RangeSource for MemState {
    fn revision(&self) -> Revision {
        self.revision
    }
    fn compacted(&self) -> Revision {
        self.compacted
    }
    fn scan_current(
        &self,
        prefix: &str,
        after: Option<&str>,
        visit: &mut dyn FnMut(KeyValue) -> bool,
    ) -> Result<()> {
        let lower = match after {
            Some(key) => Bound::Excluded(key),
            None => Bound::Included(prefix),
        };
        for (key, kv) in self.current.range::<str, _>((lower, Bound::Unbounded)) {
            if !key.starts_with(prefix) || !visit(kv.clone()) {
                break;
            }
        }
        Ok(())
    }
    fn events_after(&self, after: Revision) -> Result<Vec<Event>> {
        self.events_after_limited(after, usize::MAX)
    }
}

impl MemState {
    fn events_after_limited(&self, after: Revision, limit: usize) -> Result<Vec<Event>> {
        if after < self.compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted: self.compacted,
            });
        }
        let skip = self.history.partition_point(|e| e.revision() <= after);
        Ok(self
            .history
            .iter()
            .skip(skip)
            .take(limit)
            .cloned()
            .collect())
    }
}

/// The in-memory store.
#[derive(Debug, Clone)]
pub struct MemStore {
    inner: Arc<MemInner>,
}

#[derive(Debug)]
struct MemInner {
    state: Mutex<MemState>,
    hub: Arc<WatchHub>,
    retention: Retention,
}

impl HistorySource for MemInner {
    fn events_after(&self, after: Revision, limit: usize) -> Result<Vec<Event>> {
        lock(&self.state).events_after_limited(after, limit)
    }
}

fn lock(state: &Mutex<MemState>) -> MutexGuard<'_, MemState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new(Retention::default())
    }
}

impl MemStore {
    pub fn new(retention: Retention) -> Self {
        MemStore {
            inner: Arc::new(MemInner {
                state: Mutex::new(MemState::default()),
                hub: Arc::new(WatchHub::new(0)),
                retention,
            }),
        }
    }

    fn apply(&self, command: Command) -> Result<Outcome> {
        let mut state = lock(&self.inner.state);
        let outcome = mvcc::execute(&mut *state, command, self.inner.retention)?;
        if let Outcome::Written(event) = &outcome {
            // Published under the lock so watchers see events in revision order.
            self.inner.hub.publish([event.clone()]);
        }
        Ok(outcome)
    }
}

#[async_trait]
impl Store for MemStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        validate_key(key)?;
        lock(&self.inner.state).current(key)
    }

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse> {
        validate_prefix(&request.prefix)?;
        mvcc::read_range(&*lock(&self.inner.state), &request)
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        validate_key(key)?;
        validate_value(key, &value)?;
        written(
            self.apply(Command::Create {
                key: key.into(),
                value,
            })?,
            key,
        )
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<KeyValue> {
        validate_key(key)?;
        validate_value(key, &value)?;
        written(
            self.apply(Command::Update {
                key: key.into(),
                value,
                expected,
            })?,
            key,
        )
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        validate_key(key)?;
        validate_value(key, &value)?;
        written(
            self.apply(Command::Put {
                key: key.into(),
                value,
            })?,
            key,
        )
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(KeyValue, Revision)> {
        validate_key(key)?;
        deleted(
            self.apply(Command::Delete {
                key: key.into(),
                expected,
            })?,
            key,
        )
    }

    async fn watch(&self, prefix: &str, after: Option<Revision>) -> Result<WatchStream> {
        validate_prefix(prefix)?;
        let after = {
            let state = lock(&self.inner.state);
            check_start(after, state.revision, state.compacted)?
        };
        let history: Arc<dyn HistorySource> = self.inner.clone();
        Ok(self.inner.hub.subscribe(history, prefix.to_string(), after))
    }

    async fn current_revision(&self) -> Result<Revision> {
        Ok(lock(&self.inner.state).revision)
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        Ok(lock(&self.inner.state).compacted)
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        compacted(self.apply(Command::Compact { revision })?, revision)
    }
}
