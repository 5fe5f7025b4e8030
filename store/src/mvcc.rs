//! The deterministic heart of every backend: what a write command does to the state (checks,
//! revision bookkeeping, history, compaction) and how a range is read at a past revision.
//! Backends provide the storage through [`KvState`]; the logic here is pure.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::types::{
    ContinueToken, Event, EventKind, KeyValue, RangeRequest, RangeResponse, Revision,
};

/// A write, as it is replicated through the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Create {
        key: String,
        #[serde(with = "crate::types::bytes")]
        value: Vec<u8>,
    },
    Update {
        key: String,
        #[serde(with = "crate::types::bytes")]
        value: Vec<u8>,
        expected: Revision,
    },
    Put {
        key: String,
        #[serde(with = "crate::types::bytes")]
        value: Vec<u8>,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
    Compact {
        revision: Revision,
    },
    /// Several independent commands from concurrent clients carried by one Raft entry, so that
    /// one log append and one fsync serve them all. Each still gets its own revision and
    /// outcome, in order, as if proposed one by one.
    Batch(Vec<Command>),
    /// A command marked by the member that proposed it, so that member can recognise its own
    /// write when it applies it — also when it lost track of the proposal (the leader it went
    /// through died with the answer). Applies exactly as the command inside.
    Tagged {
        tag: u128,
        command: Box<Command>,
    },
}

impl Command {
    /// The tags this command carries and where their outcomes are: `None` for the whole
    /// command's outcome, `Some(i)` for the `i`-th outcome of a batch.
    pub fn tags(&self) -> Vec<(Option<usize>, u128)> {
        match self {
            Command::Tagged { tag, .. } => vec![(None, *tag)],
            Command::Batch(commands) => commands
                .iter()
                .enumerate()
                .filter_map(|(i, c)| match c {
                    Command::Tagged { tag, .. } => Some((Some(i), *tag)),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// What applying a [`Command`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Outcome {
    /// A successful create/update/put/delete, with its event.
    Written(Event),
    /// A compaction that ran (or had nothing to do).
    Compacted,
    /// The command was refused; nothing changed.
    Rejected(Rejection),
    /// The outcomes of a [`Command::Batch`], in order.
    Batch(Vec<Outcome>),
    /// A log entry that carries no command (Raft's blank and membership entries).
    #[default]
    Nothing,
}

/// Why a command changed nothing. Kept separate from [`StoreError`] so the replicated outcome
/// stays a closed, serializable set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    AlreadyExists {
        current: KeyValue,
    },
    Conflict {
        expected: Revision,
        current: Option<KeyValue>,
    },
    NotFound,
    FutureRevision {
        current: Revision,
    },
}

impl Rejection {
    pub fn into_error(self, key: &str, requested: Revision) -> StoreError {
        match self {
            Rejection::AlreadyExists { current } => StoreError::AlreadyExists {
                key: key.to_string(),
                current: Box::new(current),
            },
            Rejection::Conflict { expected, current } => StoreError::Conflict {
                key: key.to_string(),
                expected,
                current: current.map(Box::new),
            },
            Rejection::NotFound => StoreError::NotFound {
                key: key.to_string(),
            },
            Rejection::FutureRevision { current } => {
                StoreError::FutureRevision { requested, current }
            }
        }
    }
}

/// How much history a state machine keeps without being told to compact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// History older than this many revisions behind the head is dropped as writes happen.
    pub max_revisions: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_revisions: 100_000,
        }
    }
}

/// The storage a backend gives the MVCC logic. Writes may be buffered; they must become
/// visible to later calls on the same value (read-your-writes within one apply batch).
pub trait KvState {
    fn current(&self, key: &str) -> Result<Option<KeyValue>>;
    fn revision(&self) -> Revision;
    fn compacted(&self) -> Revision;
    /// Records a change: sets or removes the key's current value, appends the event to
    /// history, and advances the revision to the event's.
    fn record(&mut self, event: Event) -> Result<()>;
    /// Drops history up to and including `revision`, and remembers it as compacted.
    fn drop_history_through(&mut self, revision: Revision) -> Result<()>;
}

/// Applies one command. Deterministic: every replica that applies the same commands in the
/// same order ends in the same state with the same outcomes.
pub fn execute(
    state: &mut impl KvState,
    command: Command,
    retention: Retention,
) -> Result<Outcome> {
    let command = match command {
        Command::Batch(commands) => {
            return commands
                .into_iter()
                .map(|c| execute(state, c, retention))
                .collect::<Result<Vec<_>>>()
                .map(Outcome::Batch);
        }
        Command::Tagged { command, .. } => return execute(state, *command, retention),
        other => other,
    };
    let next = state.revision() + 1;
    let outcome = match command {
        Command::Create { key, value } => match state.current(&key)? {
            Some(current) => Outcome::Rejected(Rejection::AlreadyExists { current }),
            None => write_put(state, key, value, None, next)?,
        },
        Command::Update {
            key,
            value,
            expected,
        } => match state.current(&key)? {
            None => Outcome::Rejected(Rejection::NotFound),
            Some(current) if current.mod_revision != expected => {
                Outcome::Rejected(Rejection::Conflict {
                    expected,
                    current: Some(current),
                })
            }
            Some(current) => write_put(state, key, value, Some(current), next)?,
        },
        Command::Put { key, value } => {
            let prev = state.current(&key)?;
            write_put(state, key, value, prev, next)?
        }
        Command::Delete { key, expected } => match state.current(&key)? {
            None => Outcome::Rejected(Rejection::NotFound),
            Some(current) if expected.is_some_and(|e| e != current.mod_revision) => {
                Outcome::Rejected(Rejection::Conflict {
                    expected: expected.unwrap_or_default(),
                    current: Some(current),
                })
            }
            Some(current) => {
                let event = Event {
                    kind: EventKind::Delete,
                    kv: KeyValue {
                        key,
                        value: Vec::new(),
                        create_revision: 0,
                        mod_revision: next,
                        version: 0,
                    },
                    prev: Some(current),
                };
                state.record(event.clone())?;
                Outcome::Written(event)
            }
        },
        Command::Batch(_) | Command::Tagged { .. } => return Ok(Outcome::Nothing), // handled above
        Command::Compact { revision } => {
            if revision > state.revision() {
                return Ok(Outcome::Rejected(Rejection::FutureRevision {
                    current: state.revision(),
                }));
            }
            if revision > state.compacted() {
                state.drop_history_through(revision)?;
            }
            return Ok(Outcome::Compacted);
        }
    };
    // Count-based retention runs with every write so replicas compact at the same revisions.
    let floor = state.revision() - retention.max_revisions;
    if floor > state.compacted() {
        state.drop_history_through(floor)?;
    }
    Ok(outcome)
}

fn write_put(
    state: &mut impl KvState,
    key: String,
    value: Vec<u8>,
    prev: Option<KeyValue>,
    revision: Revision,
) -> Result<Outcome> {
    let (create_revision, version) = match &prev {
        Some(p) => (p.create_revision, p.version + 1),
        None => (revision, 1),
    };
    let event = Event {
        kind: EventKind::Put,
        kv: KeyValue {
            key,
            value,
            create_revision,
            mod_revision: revision,
            version,
        },
        prev,
    };
    state.record(event.clone())?;
    Ok(Outcome::Written(event))
}

/// Where a range read gets its data. Both calls must see one consistent state (the backend
/// holds off writes while a range is being read).
pub trait RangeSource {
    fn revision(&self) -> Revision;
    fn compacted(&self) -> Revision;
    /// Current key-values under `prefix` with keys strictly after `after` (if any), in key
    /// order, feeding each to `visit` until it returns `false`.
    fn scan_current(
        &self,
        prefix: &str,
        after: Option<&str>,
        visit: &mut dyn FnMut(KeyValue) -> bool,
    ) -> Result<()>;
    /// Events with revision greater than `after`, in revision order.
    fn events_after(&self, after: Revision) -> Result<Vec<Event>>;
}

/// Reads one page of a range, at the latest revision or at a retained past one.
///
/// A past revision R is served from the current state corrected by history: for every key
/// changed after R, its state at R is the `prev` of its first change after R.
pub fn read_range(source: &dyn RangeSource, request: &RangeRequest) -> Result<RangeResponse> {
    let current = source.revision();
    let (at, after_key) = match &request.continue_from {
        Some(token) => {
            if request.revision.is_some_and(|r| r != token.revision) {
                return Err(StoreError::InvalidContinue(
                    "a continue token cannot be combined with another revision".into(),
                ));
            }
            if !token.after_key.starts_with(&request.prefix) {
                return Err(StoreError::InvalidContinue(
                    "token is for another prefix".into(),
                ));
            }
            (token.revision, Some(token.after_key.as_str()))
        }
        None => (request.revision.unwrap_or(current), None),
    };
    if at > current {
        return Err(StoreError::FutureRevision {
            requested: at,
            current,
        });
    }
    if at < source.compacted() {
        return Err(StoreError::Compacted {
            requested: at,
            compacted: source.compacted(),
        });
    }

    // Keys changed after `at` under the prefix, with their state at `at`.
    let mut changed: BTreeMap<String, Option<KeyValue>> = BTreeMap::new();
    if at < current {
        for event in source.events_after(at)? {
            if event.kv.key.starts_with(&request.prefix) && !changed.contains_key(&event.kv.key) {
                changed.insert(
                    event.kv.key.clone(),
                    event.prev.filter(|p| p.mod_revision <= at),
                );
            }
        }
    }

    let want = if request.limit == 0 {
        usize::MAX
    } else {
        request.limit.saturating_add(1)
    };
    let mut out: Vec<KeyValue> = Vec::new();
    // Past-state entries for keys that no longer exist (or exist differently) now, merged in
    // key order with the live scan.
    let lower = match after_key {
        Some(k) => Bound::Excluded(k.to_string()),
        None => Bound::Unbounded,
    };
    let mut restored = changed
        .range((lower, Bound::Unbounded))
        .filter_map(|(_, kv)| kv.clone())
        .peekable();
    source.scan_current(&request.prefix, after_key, &mut |kv| {
        while let Some(r) = restored.next_if(|r| r.key < kv.key) {
            out.push(r);
        }
        if !changed.contains_key(&kv.key) {
            out.push(kv);
        }
        out.len() < want
    })?;
    out.extend(restored);
    out.truncate(want);

    let next = if out.len() > request.limit && request.limit > 0 {
        out.truncate(request.limit);
        out.last().map(|kv| ContinueToken {
            revision: at,
            after_key: kv.key.clone(),
        })
    } else {
        None
    };
    Ok(RangeResponse {
        kvs: out,
        revision: at,
        next,
    })
}

/// Turns the outcome of a create/update/put into the caller's result.
pub(crate) fn written(outcome: Outcome, key: &str) -> Result<KeyValue> {
    match outcome {
        Outcome::Written(event) => Ok(event.kv),
        Outcome::Rejected(rejection) => Err(rejection.into_error(key, 0)),
        other => Err(StoreError::Unavailable(format!(
            "unexpected outcome {other:?}"
        ))),
    }
}

/// Turns the outcome of a delete into the caller's result.
pub(crate) fn deleted(outcome: Outcome, key: &str) -> Result<(KeyValue, Revision)> {
    match outcome {
        Outcome::Written(Event {
            prev: Some(prev),
            kv,
            ..
        }) => Ok((prev, kv.mod_revision)),
        Outcome::Rejected(rejection) => Err(rejection.into_error(key, 0)),
        other => Err(StoreError::Unavailable(format!(
            "unexpected outcome {other:?}"
        ))),
    }
}

/// Turns the outcome of a compaction into the caller's result.
pub(crate) fn compacted(outcome: Outcome, revision: Revision) -> Result<()> {
    match outcome {
        Outcome::Compacted => Ok(()),
        Outcome::Rejected(rejection) => Err(rejection.into_error("", revision)),
        other => Err(StoreError::Unavailable(format!(
            "unexpected outcome {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::MemState;

    fn put(state: &mut MemState, key: &str, value: &str) -> Outcome {
        execute(
            state,
            Command::Put {
                key: key.into(),
                value: value.into(),
            },
            Retention::default(),
        )
        .expect("put")
    }

    #[test]
    fn past_revisions_are_reconstructed_from_history() {
        let mut state = MemState::default();
        put(&mut state, "/a/1", "one"); // rev 1
        put(&mut state, "/a/2", "two"); // rev 2
        put(&mut state, "/a/1", "uno"); // rev 3
        execute(
            &mut state,
            Command::Delete {
                key: "/a/2".into(),
                expected: None,
            },
            Retention::default(),
        )
        .expect("delete"); // rev 4
        put(&mut state, "/a/3", "three"); // rev 5

        let at = |rev| {
            let request = RangeRequest {
                revision: Some(rev),
                ..RangeRequest::prefix("/a/")
            };
            read_range(&state, &request)
                .expect("range")
                .kvs
                .into_iter()
                .map(|kv| format!("{}={}", kv.key, String::from_utf8_lossy(&kv.value)))
                .collect::<Vec<_>>()
        };
        assert_eq!(at(0), Vec::<String>::new());
        assert_eq!(at(2), ["/a/1=one", "/a/2=two"]);
        assert_eq!(at(3), ["/a/1=uno", "/a/2=two"]);
        assert_eq!(at(4), ["/a/1=uno"]);
        assert_eq!(at(5), ["/a/1=uno", "/a/3=three"]);
    }

    #[test]
    fn a_batch_applies_each_command_in_order_with_its_own_outcome() {
        let mut state = MemState::default();
        let batch = Command::Batch(vec![
            Command::Create {
                key: "/b/1".into(),
                value: b"a".to_vec(),
            },
            Command::Create {
                key: "/b/1".into(),
                value: b"again".to_vec(),
            },
            Command::Update {
                key: "/b/1".into(),
                value: b"b".to_vec(),
                expected: 1,
            },
            Command::Delete {
                key: "/b/2".into(),
                expected: None,
            },
        ]);
        let Outcome::Batch(outcomes) =
            execute(&mut state, batch, Retention::default()).expect("batch")
        else {
            panic!("not a batch outcome");
        };
        assert!(matches!(&outcomes[0], Outcome::Written(e) if e.revision() == 1));
        assert!(matches!(
            &outcomes[1],
            Outcome::Rejected(Rejection::AlreadyExists { .. })
        ));
        assert!(
            matches!(&outcomes[2], Outcome::Written(e) if e.revision() == 2 && e.kv.version == 2)
        );
        assert!(matches!(
            &outcomes[3],
            Outcome::Rejected(Rejection::NotFound)
        ));
        assert_eq!(KvState::revision(&state), 2);
    }

    #[test]
    fn a_tagged_command_applies_as_the_command_inside_and_names_its_outcome() {
        let put = |key: &str| Command::Put {
            key: key.into(),
            value: b"v".to_vec(),
        };
        let tagged = |tag, key: &str| Command::Tagged {
            tag,
            command: Box::new(put(key)),
        };
        let mut plain = MemState::default();
        let mut marked = MemState::default();
        let batch = Command::Batch(vec![put("/t/1"), tagged(7, "/t/2"), tagged(9, "/t/1")]);
        assert_eq!(batch.tags(), vec![(Some(1), 7), (Some(2), 9)]);
        assert_eq!(tagged(5, "/t/3").tags(), vec![(None, 5)]);
        assert!(put("/t/3").tags().is_empty());
        let with_tags = execute(&mut marked, batch, Retention::default()).expect("batch");
        let without = execute(
            &mut plain,
            Command::Batch(vec![put("/t/1"), put("/t/2"), put("/t/1")]),
            Retention::default(),
        )
        .expect("batch");
        assert_eq!(with_tags, without);
        assert_eq!(KvState::revision(&marked), 3);
        assert_eq!(
            marked.current("/t/1").expect("read"),
            plain.current("/t/1").expect("read")
        );
    }

    #[test]
    fn count_retention_compacts_deterministically() {
        let mut state = MemState::default();
        let retention = Retention { max_revisions: 3 };
        for i in 0..10 {
            execute(
                &mut state,
                Command::Put {
                    key: format!("/k/{i}"),
                    value: vec![],
                },
                retention,
            )
            .expect("put");
        }
        assert_eq!(KvState::revision(&state), 10);
        assert_eq!(KvState::compacted(&state), 7);
        assert_eq!(state.events_after(7).expect("events").len(), 3);
    }
}
