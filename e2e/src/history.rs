//! Checking a client-side history of single-key register operations for linearizability.
//!
//! Every write stores a value no other write stores, and every acknowledged operation reports
//! the store revision it saw (a Kubernetes object's `resourceVersion`: the revision of the
//! write that produced it). Revisions give the store's order of writes, so the check needs no
//! search: each operation is placed at the revision it wrote or read, and the history is
//! linearizable exactly when that placement respects real time — an operation that completed
//! before another was invoked is placed no later (strictly earlier when the later one is a
//! write, since a write makes a new revision). On top of that, a value appears at one revision
//! only (a write applied twice would show its value at a second revision), and a revision
//! holds one value.
//!
//! Writes whose outcome the client does not know (an error or a timeout) may or may not have
//! happened; they are placed where a read saw their value, and ignored when none did.

use std::collections::BTreeMap;
use std::time::Instant;

/// What an operation did, as far as the client knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A write acknowledged at `revision`.
    Written { revision: u64 },
    /// A write that failed or timed out: it may or may not have taken effect.
    Unknown,
    /// A read that saw `value` at `revision`.
    Read { value: String, revision: u64 },
}

/// One operation on one register, from invocation to completion.
#[derive(Debug, Clone)]
pub struct Operation {
    pub key: String,
    /// The value a write stored; empty for reads.
    pub written: String,
    pub invoked: Instant,
    pub completed: Instant,
    pub outcome: Outcome,
}

impl Operation {
    fn is_write(&self) -> bool {
        !matches!(self.outcome, Outcome::Read { .. })
    }
}

/// The violations found in `history` (empty when it is linearizable), one line each.
pub fn violations(history: &[Operation]) -> Vec<String> {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        by_key.entry(&op.key).or_default().push(op);
    }
    by_key
        .into_iter()
        .flat_map(|(key, ops)| register_violations(key, &ops))
        .collect()
}

fn register_violations(key: &str, ops: &[&Operation]) -> Vec<String> {
    let mut found = Vec::new();
    // Where each value was written, from acknowledgements and from what reads saw.
    let mut revision_of: BTreeMap<&str, u64> = BTreeMap::new();
    let mut value_at: BTreeMap<u64, &str> = BTreeMap::new();
    let mut place = |value: &str, revision: u64, found: &mut Vec<String>| {
        let value_key = ops
            .iter()
            .find(|op| op.is_write() && op.written == value)
            .map(|op| op.written.as_str());
        let Some(value) = value_key else {
            found.push(format!(
                "{key}: read {value:?} at revision {revision}, which no write stored"
            ));
            return;
        };
        if let Some(&earlier) = revision_of.get(value) {
            if earlier != revision {
                found.push(format!(
                    "{key}: {value:?} appears at revisions {earlier} and {revision} (applied twice?)"
                ));
            }
        } else {
            revision_of.insert(value, revision);
        }
        if let Some(&other) = value_at.get(&revision) {
            if other != value {
                found.push(format!(
                    "{key}: revision {revision} holds both {other:?} and {value:?}"
                ));
            }
        } else {
            value_at.insert(revision, value);
        }
    };
    for op in ops {
        if let Outcome::Written { revision } = op.outcome {
            place(&op.written, revision, &mut found);
        }
    }
    for op in ops {
        if let Outcome::Read { value, revision } = &op.outcome {
            place(value, *revision, &mut found);
        }
    }

    let position = |op: &Operation| match &op.outcome {
        Outcome::Written { revision } | Outcome::Read { revision, .. } => Some(*revision),
        Outcome::Unknown => revision_of.get(op.written.as_str()).copied(),
    };
    let placed: Vec<(&Operation, u64)> = ops
        .iter()
        .filter_map(|op| position(op).map(|at| (*op, at)))
        .collect();
    for &(before, at_before) in &placed {
        for &(after, at_after) in &placed {
            if before.completed >= after.invoked {
                continue;
            }
            let in_order = if after.is_write() {
                at_before < at_after
            } else {
                at_before <= at_after
            };
            if !in_order {
                found.push(format!(
                    "{key}: {} at revision {at_before} completed before {} at revision \
                     {at_after} was invoked",
                    describe(before),
                    describe(after)
                ));
            }
        }
    }
    found
}

fn describe(op: &Operation) -> String {
    match &op.outcome {
        Outcome::Read { value, .. } => format!("a read of {value:?}"),
        Outcome::Written { .. } => format!("the write of {:?}", op.written),
        Outcome::Unknown => format!("the unacknowledged write of {:?}", op.written),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An operation on key "r" from `from` to `to` milliseconds after `base`.
    fn op(base: Instant, from: u64, to: u64, written: &str, outcome: Outcome) -> Operation {
        Operation {
            key: "r".into(),
            written: written.into(),
            invoked: base + Duration::from_millis(from),
            completed: base + Duration::from_millis(to),
            outcome,
        }
    }

    fn write(base: Instant, from: u64, to: u64, value: &str, revision: u64) -> Operation {
        op(base, from, to, value, Outcome::Written { revision })
    }

    fn read(base: Instant, from: u64, to: u64, value: &str, revision: u64) -> Operation {
        let outcome = Outcome::Read {
            value: value.into(),
            revision,
        };
        op(base, from, to, "", outcome)
    }

    #[test]
    fn a_sequential_history_with_overlapping_reads_is_linearizable() {
        let t = Instant::now();
        let history = vec![
            write(t, 0, 10, "a", 5),
            read(t, 11, 20, "a", 5),
            write(t, 15, 30, "b", 9),
            // Overlaps the write of b: may see either.
            read(t, 16, 25, "a", 5),
            read(t, 17, 26, "b", 9),
            read(t, 31, 40, "b", 9),
        ];
        assert_eq!(violations(&history), Vec::<String>::new());
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_caught() {
        let t = Instant::now();
        let history = vec![
            write(t, 0, 10, "a", 5),
            write(t, 11, 20, "b", 9),
            read(t, 21, 30, "a", 5),
        ];
        let found = violations(&history);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("the write of \"b\""), "{found:?}");
    }

    #[test]
    fn reads_going_back_in_time_are_caught() {
        let t = Instant::now();
        let history = vec![
            write(t, 0, 10, "a", 5),
            write(t, 11, 50, "b", 9),
            read(t, 12, 20, "b", 9),
            read(t, 21, 30, "a", 5),
        ];
        assert_eq!(violations(&history).len(), 1);
    }

    #[test]
    fn a_read_of_a_write_not_yet_invoked_is_caught() {
        let t = Instant::now();
        let history = vec![
            write(t, 0, 10, "a", 5),
            read(t, 11, 20, "b", 9),
            write(t, 21, 30, "b", 9),
        ];
        assert_eq!(violations(&history).len(), 1);
    }

    #[test]
    fn a_write_applied_twice_is_caught() {
        let t = Instant::now();
        let history = vec![
            write(t, 0, 10, "a", 5),
            write(t, 11, 20, "b", 9),
            read(t, 21, 30, "a", 12),
        ];
        let found = violations(&history);
        assert!(
            found.iter().any(|v| v.contains("applied twice")),
            "{found:?}"
        );
    }

    #[test]
    fn unacknowledged_writes_are_placed_where_reads_saw_them_or_ignored() {
        let t = Instant::now();
        let history = vec![
            write(t, 0, 10, "a", 5),
            op(t, 11, 20, "lost", Outcome::Unknown),
            op(t, 21, 30, "kept", Outcome::Unknown),
            read(t, 31, 40, "kept", 7),
            write(t, 41, 50, "c", 11),
            read(t, 51, 60, "c", 11),
        ];
        assert_eq!(violations(&history), Vec::<String>::new());

        // An unacknowledged write seen after a later acknowledged one (and a read of it)
        // took its place.
        let mut bad = history.clone();
        bad.push(read(t, 61, 70, "kept", 7));
        assert_eq!(violations(&bad).len(), 2, "{:?}", violations(&bad));
    }

    #[test]
    fn a_value_nobody_wrote_is_caught() {
        let t = Instant::now();
        let history = vec![write(t, 0, 10, "a", 5), read(t, 11, 20, "zz", 6)];
        assert_eq!(violations(&history).len(), 1);
    }

    #[test]
    fn registers_are_checked_separately() {
        let t = Instant::now();
        let mut other = write(t, 11, 20, "x", 3);
        other.key = "s".into();
        let history = vec![write(t, 0, 10, "a", 5), other];
        assert_eq!(violations(&history), Vec::<String>::new());
    }
}
