//! Completion indexes of Indexed Jobs (`indexed_job_utils.go`): the compressed interval
//! form of `status.completedIndexes` ("1,3-5,7"), which indexes still need a pod, and
//! which active pods are duplicates or out of range.

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::api::core::v1::Pod;

use crate::pod_state;

use super::JOB_COMPLETION_INDEX_ANNOTATION;

/// One closed interval of indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Interval {
    pub first: i32,
    pub last: i32,
}

/// Sorted, non-overlapping, non-adjacent intervals (`orderedIntervals`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OrderedIntervals(pub Vec<Interval>);

impl OrderedIntervals {
    /// Parses `status.completedIndexes` the way Kubernetes does: corrupt pieces are
    /// skipped, indexes at or past `completions` are dropped.
    pub fn parse(text: &str, completions: i32) -> OrderedIntervals {
        let mut result: Vec<Interval> = Vec::new();
        if text.is_empty() {
            return OrderedIntervals(result);
        }
        for piece in text.split(',') {
            let mut limits = piece.split('-');
            let Some(Ok(first)) = limits.next().map(str::parse::<i32>) else {
                continue;
            };
            if first >= completions {
                break;
            }
            let last = match limits.next() {
                Some(text) => match text.parse::<i32>() {
                    Ok(last) => last.min(completions - 1),
                    Err(_) => continue,
                },
                None => first,
            };
            let interval = Interval { first, last };
            match result.last_mut() {
                Some(previous) if previous.last == first - 1 => previous.last = last,
                _ => result.push(interval),
            }
        }
        OrderedIntervals(result)
    }

    /// Merges in more intervals (`merge`).
    pub fn merge(&self, other: &OrderedIntervals) -> OrderedIntervals {
        let mut all: Vec<Interval> = self.0.iter().chain(other.0.iter()).copied().collect();
        all.sort_by_key(|i| i.first);
        let mut result: Vec<Interval> = Vec::new();
        for interval in all {
            match result.last_mut() {
                Some(previous) if interval.first <= previous.last + 1 => {
                    previous.last = previous.last.max(interval.last);
                }
                _ => result.push(interval),
            }
        }
        OrderedIntervals(result)
    }

    /// Adds single indexes (`withOrderedIndexes`).
    pub fn with_indexes(&self, indexes: impl IntoIterator<Item = i32>) -> OrderedIntervals {
        let singles = indexes
            .into_iter()
            .map(|i| Interval { first: i, last: i })
            .collect();
        self.merge(&OrderedIntervals(singles))
    }

    /// How many indexes the intervals hold.
    pub fn total(&self) -> i32 {
        self.0.iter().map(|i| i.last - i.first + 1).sum()
    }

    pub fn has(&self, index: i32) -> bool {
        self.0.iter().any(|i| i.first <= index && index <= i.last)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Kubernetes writes a pair of adjacent indexes as "3,4" and longer runs as "3-5".
impl fmt::Display for OrderedIntervals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, interval) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}", interval.first)?;
            if interval.last == interval.first + 1 {
                write!(f, ",{}", interval.last)?;
            } else if interval.last > interval.first {
                write!(f, "-{}", interval.last)?;
            }
        }
        Ok(())
    }
}

/// The pod's completion index (`getCompletionIndex`): `None` when missing, unparsable or
/// negative.
pub(crate) fn completion_index(pod: &Pod) -> Option<i32> {
    let value = pod
        .metadata
        .annotations
        .as_ref()?
        .get(JOB_COMPLETION_INDEX_ANNOTATION)?;
    value.parse::<i32>().ok().filter(|i| *i >= 0)
}

/// A completion index inside `[0, completions)`.
pub(crate) fn valid_index(pod: &Pod, completions: i32) -> Option<i32> {
    completion_index(pod).filter(|i| *i < completions)
}

/// The first `count` indexes below `completions` not covered by `non_pending`
/// (`firstPendingIndexes`).
pub(crate) fn first_pending(
    non_pending: &OrderedIntervals,
    count: usize,
    completions: i32,
) -> Vec<i32> {
    let mut result = Vec::new();
    let mut candidate = 0;
    for interval in &non_pending.0 {
        while candidate < completions && result.len() < count && candidate < interval.first {
            result.push(candidate);
            candidate += 1;
        }
        if candidate < interval.last + 1 {
            candidate = interval.last + 1;
        }
    }
    while candidate < completions && result.len() < count {
        result.push(candidate);
        candidate += 1;
    }
    result
}

/// The set of indexes carried by `pods`.
pub(crate) fn indexes_of<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> BTreeSet<i32> {
    pods.into_iter().filter_map(completion_index).collect()
}

/// Active pods an Indexed Job must delete whatever its counts (`appendDuplicated
/// IndexPodsForRemoval`): pods without an index or with one past `completions`, and all but
/// one pod of each repeated index (the one kept is the last in deletion order). Returns
/// `(remove, keep)`.
pub(crate) fn split_duplicates<'a>(
    active: &[&'a Pod],
    completions: i32,
) -> (Vec<&'a Pod>, Vec<&'a Pod>) {
    let mut remove = Vec::new();
    let mut keep = Vec::new();
    let mut by_index: std::collections::BTreeMap<i32, Vec<&'a Pod>> = Default::default();
    for pod in active {
        match completion_index(pod) {
            Some(index) if index < completions => by_index.entry(index).or_default().push(pod),
            _ => remove.push(*pod),
        }
    }
    for (_, mut group) in by_index {
        pod_state::sort_for_deletion(&mut group);
        if let Some(last) = group.pop() {
            remove.extend(group);
            keep.push(last);
        }
    }
    (remove, keep)
}

/// `spec.successPolicy` for an Indexed Job (`matchSuccessPolicy`): the message of the
/// first rule the succeeded indexes satisfy — all of the rule's `succeededIndexes`, or at
/// least `succeededCount` of them (or of all indexes when the rule names none).
pub(crate) fn match_success_policy(
    policy: Option<&k8s_openapi::api::batch::v1::SuccessPolicy>,
    completions: i32,
    succeeded: &OrderedIntervals,
) -> Option<String> {
    let policy = policy?;
    if succeeded.is_empty() {
        return None;
    }
    for (index, rule) in policy.rules.iter().enumerate() {
        let matched = match (&rule.succeeded_indexes, rule.succeeded_count) {
            (Some(text), count) => {
                let required = OrderedIntervals::parse(text, completions);
                // A rule whose indexes do not parse (or all lie past completions) is skipped.
                if required.is_empty() {
                    continue;
                }
                let contained = required
                    .0
                    .iter()
                    .flat_map(|r| {
                        succeeded
                            .0
                            .iter()
                            .map(move |s| (r.last.min(s.last) - r.first.max(s.first) + 1).max(0))
                    })
                    .sum::<i32>();
                contained == required.total() || count.is_some_and(|c| contained >= c)
            }
            (None, Some(count)) => succeeded.total() >= count,
            (None, None) => false,
        };
        if matched {
            return Some(format!("Matched rules at index {index}"));
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn intervals(text: &str, completions: i32) -> OrderedIntervals {
        OrderedIntervals::parse(text, completions)
    }

    #[test]
    fn parse_and_format_round_trip() {
        assert_eq!(intervals("", 10).to_string(), "");
        assert_eq!(intervals("0-2,5,7-9", 10).to_string(), "0-2,5,7-9");
        assert_eq!(intervals("0-2,5,7-9", 10).total(), 7);
        // Adjacent pieces merge; pairs print with a comma.
        assert_eq!(intervals("1,2,3", 10).to_string(), "1-3");
        assert_eq!(intervals("4,5", 10).to_string(), "4,5");
        // Past completions is cut; corrupt pieces are skipped.
        assert_eq!(intervals("1,x,3-12", 5).to_string(), "1,3,4");
        assert_eq!(intervals("7", 5).to_string(), "");
        assert!(intervals("2-4", 10).has(3));
        assert!(!intervals("2-4", 10).has(5));
    }

    #[test]
    fn merging_single_indexes() {
        let base = intervals("0,4-5", 10);
        assert_eq!(base.with_indexes([1, 3, 8]).to_string(), "0,1,3-5,8");
        assert_eq!(base.with_indexes([2, 1, 3]).to_string(), "0-5");
        assert_eq!(base.with_indexes([]).to_string(), "0,4,5");
    }

    #[test]
    fn first_pending_skips_covered_indexes() {
        let covered = intervals("0,2-3", 10);
        assert_eq!(first_pending(&covered, 3, 10), [1, 4, 5]);
        assert_eq!(first_pending(&covered, 10, 6), [1, 4, 5]);
        assert_eq!(first_pending(&OrderedIntervals::default(), 2, 10), [0, 1]);
        assert_eq!(
            first_pending(&intervals("0-9", 10), 2, 10),
            Vec::<i32>::new()
        );
    }
}
