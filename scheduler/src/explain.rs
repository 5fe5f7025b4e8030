//! Why a pod could not be scheduled, worded exactly as kube-scheduler words it, and the
//! `PodScheduled` condition the loop writes to the pod.
//!
//! The message is kube-scheduler's `FitError`: `0/3 nodes are available: 1 Insufficient cpu,
//! 2 node(s) didn't match Pod's node affinity/selector.` — each node contributes the reasons of
//! the first filter that rejected it, identical reasons are counted, and the `"<count>
//! <reason>"` strings are sorted as plain strings (so `10 …` sorts before `2 …`, as in Go).
//!
//! kube-scheduler ≥ 1.28 appends ` preemption: 0/3 nodes are available: …` after trying
//! preemption. Shoal does not preempt, so that part is never added.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::PodCondition;

use crate::filters::{FilterFailure, FilterKind};

/// kube-scheduler's message when the cluster has no node at all.
pub const NO_NODES_AVAILABLE: &str = "no nodes available to schedule pods";
/// `PodScheduled` reason for pods no node fits.
pub const REASON_UNSCHEDULABLE: &str = "Unschedulable";
/// `PodScheduled` reason for pods held back by scheduling gates.
pub const REASON_SCHEDULING_GATED: &str = "SchedulingGated";
const SCHEDULING_GATED_MESSAGE: &str = "Scheduling is blocked due to non-empty scheduling gates";

/// A pod fits no node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Unschedulable {
    /// kube-scheduler's aggregated message.
    pub message: String,
    /// Nodes in the cluster when the decision was made.
    pub node_count: usize,
    /// Each reason with the number of nodes it was given for, in message order.
    pub reasons: Vec<(String, usize)>,
    /// The filters that rejected at least one node (kube-scheduler's "unschedulable
    /// plugins"): a loop can retry the pod when something relevant to them changes.
    pub failed_filters: BTreeSet<FilterKind>,
    /// Per node, the reasons it was rejected for ([`crate::Scheduler::schedule`] fills it;
    /// the scheduling loop, which never reads it, leaves it empty).
    pub node_reasons: BTreeMap<String, Vec<String>>,
    /// Problems met while reading the pod (e.g. an unparsable request, counted as 0).
    pub notes: Vec<String>,
}

/// Nodes ruled out before the filters ran, all for one reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExcludedNodes<'a> {
    pub names: Vec<String>,
    pub filter: FilterKind,
    pub reason: &'a str,
}

impl Unschedulable {
    /// The cluster has no node.
    pub(crate) fn no_nodes() -> Self {
        Unschedulable {
            message: NO_NODES_AVAILABLE.to_string(),
            node_count: 0,
            reasons: Vec::new(),
            failed_filters: BTreeSet::new(),
            node_reasons: BTreeMap::new(),
            notes: Vec::new(),
        }
    }

    /// A check before filtering ruled out every node at once with `reason`.
    pub(crate) fn before_filtering(node_count: usize, filter: FilterKind, reason: &str) -> Self {
        Unschedulable {
            message: format!("0/{node_count} nodes are available: {reason}."),
            node_count,
            reasons: vec![(reason.to_string(), node_count)],
            failed_filters: BTreeSet::from([filter]),
            node_reasons: BTreeMap::new(),
            notes: Vec::new(),
        }
    }

    /// Aggregates the per-node failures and the nodes excluded before filtering, with the
    /// reasons of each node by name.
    pub(crate) fn from_failures(
        node_count: usize,
        failures: Vec<(String, FilterFailure)>,
        excluded: Option<ExcludedNodes<'_>>,
    ) -> Self {
        let excluded_count = excluded
            .as_ref()
            .map(|e| (e.filter, e.reason, e.names.len()));
        let mut result = Self::summarize(
            node_count,
            failures.iter().map(|(_, failure)| failure),
            excluded_count,
        );
        for (node, failure) in failures {
            result.node_reasons.insert(node, failure.reasons());
        }
        if let Some(excluded) = excluded {
            for name in excluded.names {
                result
                    .node_reasons
                    .insert(name, vec![excluded.reason.to_string()]);
            }
        }
        result
    }

    /// Aggregates the per-node failures and `(filter, reason, count)` nodes excluded before
    /// filtering, without naming nodes: a pod that fits nowhere in a large cluster costs one
    /// rendering per distinct failure rather than one per node.
    pub(crate) fn summarize<'f>(
        node_count: usize,
        failures: impl IntoIterator<Item = &'f FilterFailure>,
        excluded: Option<(FilterKind, &str, usize)>,
    ) -> Self {
        // Neighbouring nodes mostly fail alike: count runs before hashing.
        let mut distinct: HashMap<&FilterFailure, usize> = HashMap::new();
        let mut run: Option<(&FilterFailure, usize)> = None;
        for failure in failures {
            match &mut run {
                Some((same, count)) if *same == failure => *count += 1,
                _ => {
                    if let Some((previous, count)) = run.replace((failure, 1)) {
                        *distinct.entry(previous).or_default() += count;
                    }
                }
            }
        }
        if let Some((previous, count)) = run {
            *distinct.entry(previous).or_default() += count;
        }
        let mut histogram: HashMap<String, usize> = HashMap::new();
        let mut failed_filters = BTreeSet::new();
        for (failure, count) in distinct {
            failed_filters.insert(failure.filter());
            for reason in failure.reasons() {
                *histogram.entry(reason).or_default() += count;
            }
        }
        if let Some((filter, reason, count)) = excluded.filter(|&(_, _, count)| count > 0) {
            failed_filters.insert(filter);
            *histogram.entry(reason.to_string()).or_default() += count;
        }
        let mut counted: Vec<(String, (String, usize))> = histogram
            .into_iter()
            .map(|(reason, count)| (format!("{count} {reason}"), (reason, count)))
            .collect();
        counted.sort();
        let joined = counted
            .iter()
            .map(|(text, _)| text.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let message = if joined.is_empty() {
            format!("0/{node_count} nodes are available.")
        } else {
            format!("0/{node_count} nodes are available: {joined}.")
        };
        Unschedulable {
            message,
            node_count,
            reasons: counted.into_iter().map(|(_, pair)| pair).collect(),
            failed_filters,
            node_reasons: BTreeMap::new(),
            notes: Vec::new(),
        }
    }

    /// The condition to write to the pod's status: `PodScheduled=False`, reason
    /// `Unschedulable`, with the message. `lastTransitionTime` is left for the writer to set.
    pub fn pod_scheduled_condition(&self) -> PodCondition {
        PodCondition {
            type_: "PodScheduled".to_string(),
            status: "False".to_string(),
            reason: Some(REASON_UNSCHEDULABLE.to_string()),
            message: Some(self.message.clone()),
            ..Default::default()
        }
    }
}

/// The condition kube-scheduler writes for a pod with scheduling gates:
/// `PodScheduled=False`, reason `SchedulingGated`.
pub fn scheduling_gated_condition() -> PodCondition {
    PodCondition {
        type_: "PodScheduled".to_string(),
        status: "False".to_string(),
        reason: Some(REASON_SCHEDULING_GATED.to_string()),
        message: Some(SCHEDULING_GATED_MESSAGE.to_string()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failures(list: &[(&str, FilterFailure)]) -> Vec<(String, FilterFailure)> {
        list.iter()
            .map(|(node, failure)| (node.to_string(), failure.clone()))
            .collect()
    }

    #[test]
    fn counts_and_sorts_reasons_like_kube_scheduler() {
        let result = Unschedulable::from_failures(
            3,
            failures(&[
                (
                    "n1",
                    FilterFailure::InsufficientResources(vec!["Insufficient cpu".into()]),
                ),
                ("n2", FilterFailure::NodeAffinity),
                ("n3", FilterFailure::NodeAffinity),
            ]),
            None,
        );
        assert_eq!(
            result.message,
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector."
        );
        assert_eq!(result.to_string(), result.message);
        assert_eq!(
            result.failed_filters,
            BTreeSet::from([FilterKind::NodeAffinity, FilterKind::NodeResourcesFit])
        );
        assert_eq!(
            result.node_reasons["n2"],
            vec!["node(s) didn't match Pod's node affinity/selector"]
        );
    }

    #[test]
    fn one_node_may_give_several_reasons_and_counts_sort_as_strings() {
        let mut list = vec![(
            "n0".to_string(),
            FilterFailure::InsufficientResources(vec![
                "Insufficient cpu".into(),
                "Insufficient memory".into(),
            ]),
        )];
        for i in 1..=10 {
            list.push((
                format!("t{i}"),
                FilterFailure::UntoleratedTaint {
                    key: "k".into(),
                    value: "v".into(),
                },
            ));
        }
        list.push((
            "m".to_string(),
            FilterFailure::InsufficientResources(vec!["Insufficient memory".into()]),
        ));
        let result = Unschedulable::from_failures(12, list, None);
        assert_eq!(
            result.message,
            "0/12 nodes are available: 1 Insufficient cpu, 10 node(s) had untolerated taint {k: v}, 2 Insufficient memory."
        );
        assert_eq!(
            result.reasons,
            vec![
                ("Insufficient cpu".to_string(), 1),
                ("node(s) had untolerated taint {k: v}".to_string(), 10),
                ("Insufficient memory".to_string(), 2)
            ]
        );
    }

    #[test]
    fn nodes_excluded_before_filtering_are_counted() {
        let result = Unschedulable::from_failures(
            3,
            failures(&[("n1", FilterFailure::NodeUnschedulable)]),
            Some(ExcludedNodes {
                names: vec!["n2".into(), "n3".into()],
                filter: FilterKind::NodeAffinity,
                reason: "node(s) didn't satisfy plugin(s) [NodeAffinity]",
            }),
        );
        assert_eq!(
            result.message,
            "0/3 nodes are available: 1 node(s) were unschedulable, 2 node(s) didn't satisfy plugin(s) [NodeAffinity]."
        );
        assert_eq!(result.node_reasons.len(), 3);
        assert_eq!(
            result.node_reasons["n3"],
            vec!["node(s) didn't satisfy plugin(s) [NodeAffinity]"]
        );
    }

    #[test]
    fn conditions_carry_reason_and_message() {
        let result = Unschedulable::before_filtering(
            2,
            FilterKind::NodeAffinity,
            "pod affinity terms conflict",
        );
        assert_eq!(
            result.message,
            "0/2 nodes are available: pod affinity terms conflict."
        );
        let condition = result.pod_scheduled_condition();
        assert_eq!(condition.type_, "PodScheduled");
        assert_eq!(condition.status, "False");
        assert_eq!(condition.reason.as_deref(), Some("Unschedulable"));
        assert_eq!(condition.message.as_deref(), Some(result.message.as_str()));
        assert_eq!(
            Unschedulable::no_nodes().message,
            "no nodes available to schedule pods"
        );
        let gated = scheduling_gated_condition();
        assert_eq!(gated.reason.as_deref(), Some("SchedulingGated"));
    }
}
