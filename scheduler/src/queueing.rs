//! Queueing hints — kube-scheduler's `QueueingHintFn`s over the `UnschedulablePlugins` of a
//! pod: which changes in the cluster can make a pod that fit nowhere fit somewhere. For every
//! unschedulable pod the loop keeps the filters that rejected a node in its last attempt; on
//! each [`ClusterEvent`] each of those filters answers [`QueueingHint::Queue`] or
//! [`QueueingHint::Skip`], and the pod goes back to the queue only on a `Queue`.
//!
//! A change confined to one node (a node added or updated, a pod removed from it) can make
//! the node-local filters pass only on that node. So when only node-local filters ask for a
//! retry, the pod is retried only if it now passes all of them there — kube-scheduler's
//! `preCheckForNode`, which it runs for node events when hints are off. Without it, a node
//! uncordoned while its `unschedulable` taint is still on would retry every pending pod
//! (NodeUnschedulable says Queue) only for each to fail on TaintToleration. What the
//! pre-check finds is what that retry would have learnt: the node now rejects the pod for
//! another filter, which joins the pod's rejecting filters, so that the change that lifts it
//! (here, the taint's removal) is heard.
//!
//! Why no retry is lost: for every node, some filter the pod is remembered as rejected by
//! still fails there. A node passing every node-local filter after a change therefore had
//! a remembered filter turn from failing to passing, and each node-local hint answers
//! `Queue` for every change that can do that (for the filters reading only the node, by
//! evaluating the filter on the node before and after).

use std::collections::BTreeSet;

use crate::filters::{
    first_node_local_rejection, node_affinity, node_name, node_unschedulable, taint_toleration,
    FilterKind,
};
use crate::node_info::NodeInfo;
use crate::pod_info::PodInfo;
use crate::resources::{Allocatable, ResourceAmounts};
use crate::snapshot::Snapshot;
use crate::spread::SpreadSelector;

/// What a filter says about retrying a pod it rejected after a cluster event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueingHint {
    Queue,
    Skip,
}

use QueueingHint::{Queue, Skip};

fn queue_if(condition: bool) -> QueueingHint {
    if condition {
        Queue
    } else {
        Skip
    }
}

/// A change in the cluster, with the scheduler's view of the object before and after. The
/// snapshot passed along with it already shows the change.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ClusterEvent<'a> {
    NodeAdded(&'a NodeInfo),
    /// Something the scheduler reads changed (a heartbeat is not an event).
    NodeUpdated {
        old: &'a NodeInfo,
        new: &'a NodeInfo,
    },
    NodeRemoved(&'a NodeInfo),
    /// A pod was bound to a node (seen bound by the watch).
    AssignedPodAdded(&'a PodInfo),
    /// A bound pod's labels or requests changed.
    AssignedPodUpdated {
        old: &'a PodInfo,
        new: &'a PodInfo,
    },
    /// A pod left its node: deleted, finished, or an assumed binding that failed.
    AssignedPodRemoved(&'a PodInfo),
    /// A namespace's labels changed (pod affinity `namespaceSelector`s read them).
    NamespaceChanged,
}

impl ClusterEvent<'_> {
    /// The one node the change is confined to, as far as the node-local filters go.
    fn node_name(&self) -> Option<&str> {
        match self {
            ClusterEvent::NodeAdded(node) | ClusterEvent::NodeUpdated { new: node, .. } => {
                Some(&node.name)
            }
            ClusterEvent::AssignedPodAdded(pod)
            | ClusterEvent::AssignedPodUpdated { new: pod, .. }
            | ClusterEvent::AssignedPodRemoved(pod) => pod.node_name.as_deref(),
            ClusterEvent::NodeRemoved(_) | ClusterEvent::NamespaceChanged => None,
        }
    }

    /// Whether a node-local filter can answer `Queue` at all: if not, only pods rejected by
    /// PodTopologySpread or InterPodAffinity need asking (bound pods arrive by the thousand).
    pub fn concerns_node_local_filters(&self) -> bool {
        match self {
            ClusterEvent::NodeAdded(_)
            | ClusterEvent::NodeUpdated { .. }
            | ClusterEvent::AssignedPodRemoved(_) => true,
            ClusterEvent::AssignedPodUpdated { old, new } => {
                shrank(&old.requests.requested, &new.requests.requested)
            }
            ClusterEvent::NodeRemoved(_)
            | ClusterEvent::AssignedPodAdded(_)
            | ClusterEvent::NamespaceChanged => false,
        }
    }
}

/// What to do with an unschedulable pod after a cluster event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Requeue {
    /// Try it again.
    Yes,
    /// The change cannot help it.
    No,
    /// A filter that rejected it passes on the changed node now, but this one rejects it
    /// there: keep the pod waiting, rejected by this filter too.
    RejectedBy(FilterKind),
}

/// Whether `pod`, rejected in its last attempt by `rejected` (the filters that failed a
/// node), should be tried again after `event`.
pub(crate) fn should_requeue(
    snapshot: &Snapshot,
    pod: &PodInfo,
    rejected: &BTreeSet<FilterKind>,
    event: &ClusterEvent<'_>,
) -> Requeue {
    if rejected.is_empty() {
        // No filter failed: there was no node at all.
        return if matches!(event, ClusterEvent::NodeAdded(_)) {
            Requeue::Yes
        } else {
            Requeue::No
        };
    }
    let mut node_local = false;
    for &filter in rejected {
        if hint(snapshot, filter, pod, event) == Queue {
            if !filter.is_node_local() {
                return Requeue::Yes;
            }
            node_local = true;
        }
    }
    if !node_local {
        return Requeue::No;
    }
    let Some((node, usage)) = event
        .node_name()
        .and_then(|name| snapshot.node_with_usage(name))
    else {
        return Requeue::No;
    };
    match first_node_local_rejection(pod, node, usage) {
        None => Requeue::Yes,
        Some(filter) if rejected.contains(&filter) => Requeue::No,
        Some(filter) => Requeue::RejectedBy(filter),
    }
}

/// One filter's hint for a pod it rejected.
pub(crate) fn hint(
    snapshot: &Snapshot,
    filter: FilterKind,
    pod: &PodInfo,
    event: &ClusterEvent<'_>,
) -> QueueingHint {
    match filter {
        FilterKind::NodeUnschedulable => node_turned(pod, event, |pod, node| {
            node_unschedulable::check(pod, node).is_ok()
        }),
        FilterKind::NodeName => match event {
            ClusterEvent::NodeAdded(node) => queue_if(node_name::check(pod, node).is_ok()),
            _ => Skip,
        },
        FilterKind::TaintToleration => node_turned(pod, event, taint_toleration::tolerated),
        FilterKind::NodeAffinity => node_turned(pod, event, |pod, node| {
            node_affinity::check(pod, node).is_ok()
        }),
        FilterKind::NodePorts => match event {
            ClusterEvent::NodeAdded(_) => Queue,
            ClusterEvent::AssignedPodRemoved(gone) => queue_if(pod.host_ports.iter().any(|want| {
                gone.host_ports
                    .iter()
                    .any(|had| had.port == want.port && had.protocol == want.protocol)
            })),
            _ => Skip,
        },
        FilterKind::NodeResourcesFit => match event {
            ClusterEvent::NodeAdded(_) | ClusterEvent::AssignedPodRemoved(_) => Queue,
            ClusterEvent::NodeUpdated { old, new } => {
                queue_if(grew(&old.allocatable, &new.allocatable))
            }
            ClusterEvent::AssignedPodUpdated { old, new } => {
                queue_if(shrank(&old.requests.requested, &new.requests.requested))
            }
            _ => Skip,
        },
        FilterKind::PodTopologySpread => spread_hint(pod, event),
        FilterKind::InterPodAffinity => affinity_hint(snapshot, pod, event),
    }
}

/// For filters that read only the node object: `Queue` when a new node passes, or an updated
/// node passes now and did not before.
fn node_turned(
    pod: &PodInfo,
    event: &ClusterEvent<'_>,
    passes: impl Fn(&PodInfo, &NodeInfo) -> bool,
) -> QueueingHint {
    match event {
        ClusterEvent::NodeAdded(node) => queue_if(passes(pod, node)),
        ClusterEvent::NodeUpdated { old, new } => queue_if(!passes(pod, old) && passes(pod, new)),
        _ => Skip,
    }
}

/// Whether any allocatable resource (or the pod count) went up.
fn grew(old: &Allocatable, new: &Allocatable) -> bool {
    new.pods > old.pods || shrank(&new.resources, &old.resources)
}

/// Whether any amount in `new` is below `old`'s.
fn shrank(old: &ResourceAmounts, new: &ResourceAmounts) -> bool {
    new.milli_cpu < old.milli_cpu
        || new.memory < old.memory
        || new.ephemeral_storage < old.ephemeral_storage
        || old
            .scalar
            .iter()
            .any(|(name, amount)| new.scalar(name) < *amount)
}

/// PodTopologySpread: node changes that can add, remove or move a topology domain; pods
/// that its constraints count coming or going.
fn spread_hint(pod: &PodInfo, event: &ClusterEvent<'_>) -> QueueingHint {
    let constraints = &pod.spread.hard;
    let has_keys = |node: &NodeInfo| {
        constraints
            .iter()
            .all(|c| node.labels.contains_key(&c.topology_key))
    };
    let counted = |other: &PodInfo| {
        other.namespace == pod.namespace
            && constraints.iter().any(|c| match &c.selector {
                SpreadSelector::Labels(selector) => selector.matches(&other.labels),
                SpreadSelector::SameController(uid) => {
                    other.spread_controller.as_deref() == Some(uid.as_str())
                }
            })
    };
    match event {
        ClusterEvent::NodeAdded(node) | ClusterEvent::NodeRemoved(node) => queue_if(has_keys(node)),
        // Any label may matter: the pod's node affinity decides which nodes are domains.
        ClusterEvent::NodeUpdated { old, new } => queue_if(
            (has_keys(old) || has_keys(new))
                && (old.labels != new.labels || old.taints != new.taints),
        ),
        ClusterEvent::AssignedPodAdded(other) | ClusterEvent::AssignedPodRemoved(other) => {
            queue_if(counted(other))
        }
        ClusterEvent::AssignedPodUpdated { old, new } => {
            queue_if(old.labels != new.labels && (counted(old) || counted(new)))
        }
        ClusterEvent::NamespaceChanged => Skip,
    }
}

/// InterPodAffinity: a pod arriving that the pod's affinity wants, a pod leaving that its
/// anti-affinity (or the leaving pod's own) kept it away from, topology or namespace labels.
fn affinity_hint(snapshot: &Snapshot, pod: &PodInfo, event: &ClusterEvent<'_>) -> QueueingHint {
    let none = Default::default();
    let terms = pod.affinity.as_deref().unwrap_or(&none);
    let matched_by = |terms: &[crate::affinity::AffinityTerm], other: &PodInfo| {
        let namespace_labels = snapshot.namespace_labels(&other.namespace);
        terms
            .iter()
            .any(|term| term.matches(&other.namespace, &other.labels, namespace_labels))
    };
    match event {
        ClusterEvent::NodeAdded(_) => Queue,
        ClusterEvent::NodeUpdated { old, new } => queue_if(old.labels != new.labels),
        ClusterEvent::NodeRemoved(_) => Skip,
        ClusterEvent::AssignedPodAdded(other) => {
            queue_if(matched_by(&terms.required_affinity, other))
        }
        ClusterEvent::AssignedPodUpdated { old, new } => queue_if(
            old.labels != new.labels
                && [old, new].iter().any(|p| {
                    matched_by(&terms.required_affinity, p)
                        || matched_by(&terms.required_anti_affinity, p)
                }),
        ),
        ClusterEvent::AssignedPodRemoved(other) => queue_if(
            matched_by(&terms.required_anti_affinity, other)
                || other.affinity.as_ref().is_some_and(|theirs| {
                    let namespace_labels = snapshot.namespace_labels(&pod.namespace);
                    theirs
                        .required_anti_affinity
                        .iter()
                        .any(|term| term.matches(&pod.namespace, &pod.labels, namespace_labels))
                }),
        ),
        ClusterEvent::NamespaceChanged => queue_if(
            terms
                .required_affinity
                .iter()
                .chain(&terms.required_anti_affinity)
                .any(|term| term.selects_namespaces_by_label()),
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! Each hint against a real rejection: the pod is scheduled, fails, the cluster changes,
    //! and the hint's answer is checked against what scheduling the pod again gives.

    use super::*;
    use crate::fixtures::{bound_pod, pending_pod, pod, ready_node};
    use crate::scheduler::{Scheduler, SchedulerConfig};
    use k8s_openapi::api::core::v1::{Node, Pod};
    use serde_json::{json, Value};

    /// A cluster, one pending pod, and what the scheduler said about it.
    struct Case {
        snapshot: Snapshot,
        pod: PodInfo,
        rejected: BTreeSet<FilterKind>,
    }

    impl Case {
        /// Schedules `pod` on `nodes` with `bound` pods; it must not fit.
        fn rejected(nodes: &[Node], bound: &[Pod], pod: &Pod) -> Self {
            let snapshot = Snapshot::from_objects(nodes, bound);
            let info = PodInfo::from_pod(pod);
            let error = scheduler()
                .schedule_info(&snapshot, &info, false)
                .unwrap_err();
            Case {
                snapshot,
                pod: info,
                rejected: error.failed_filters,
            }
        }

        /// Applies a node change and returns the verdict.
        fn node_changed(&mut self, node: &Node) -> Requeue {
            let (upsert, old) = self.snapshot.replace_node(node);
            assert!(upsert.changed, "not a change the scheduler reads");
            let name = node.metadata.name.clone().unwrap();
            let new = self.snapshot.node_with_usage(&name).unwrap().0.clone();
            let event = match &old {
                Some(old) => ClusterEvent::NodeUpdated { old, new: &new },
                None => ClusterEvent::NodeAdded(&new),
            };
            self.verdict(&event)
        }

        fn pod_removed(&mut self, namespace: &str, name: &str) -> Requeue {
            let gone = self.snapshot.take_pod(namespace, name).unwrap();
            self.verdict(&ClusterEvent::AssignedPodRemoved(&gone))
        }

        fn pod_added(&mut self, pod: &Pod) -> Requeue {
            self.snapshot.upsert_pod(pod);
            let info = PodInfo::from_pod(pod);
            self.verdict(&ClusterEvent::AssignedPodAdded(&info))
        }

        /// The verdict, checked against a real attempt: `Yes` only if the pod fits now,
        /// and a pod left waiting must really not fit.
        fn verdict(&mut self, event: &ClusterEvent<'_>) -> Requeue {
            let verdict = should_requeue(&self.snapshot, &self.pod, &self.rejected, event);
            let fits = scheduler()
                .schedule_info(&self.snapshot, &self.pod, false)
                .is_ok();
            if verdict != Requeue::Yes {
                assert!(!fits, "{event:?} was skipped but the pod fits now");
            }
            if let Requeue::RejectedBy(filter) = verdict {
                self.rejected.insert(filter);
            }
            verdict
        }
    }

    fn scheduler() -> Scheduler {
        Scheduler::new(SchedulerConfig::default())
    }

    fn with_spec(node: Node, spec: Value) -> Node {
        let mut node = node;
        node.spec = Some(serde_json::from_value(spec).unwrap());
        node
    }

    fn cordoned(name: &str) -> Node {
        with_spec(
            ready_node(name, "4", "8Gi", json!({})),
            json!({"unschedulable": true, "taints": [
                {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]}),
        )
    }

    #[test]
    fn an_uncordon_counts_once_the_unschedulable_taint_is_gone() {
        let mut case = Case::rejected(
            &[cordoned("n1"), cordoned("n2")],
            &[],
            &pending_pod("p", "1", "1Gi"),
        );
        assert_eq!(
            case.rejected,
            BTreeSet::from([FilterKind::NodeUnschedulable])
        );
        // Uncordoned, the node lifecycle controller has not removed the taint yet.
        let uncordoned = with_spec(
            ready_node("n1", "4", "8Gi", json!({})),
            json!({"taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]}),
        );
        assert_eq!(
            case.node_changed(&uncordoned),
            Requeue::RejectedBy(FilterKind::TaintToleration)
        );
        assert_eq!(
            case.node_changed(&ready_node("n1", "4", "8Gi", json!({}))),
            Requeue::Yes
        );
    }

    #[test]
    fn node_unschedulable_queues_only_when_a_node_opens() {
        let mut case = Case::rejected(&[cordoned("n1")], &[], &pending_pod("p", "1", "1Gi"));
        let relabelled = with_spec(
            ready_node("n1", "4", "8Gi", json!({"x": "y"})),
            json!({"unschedulable": true, "taints": [
                {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]}),
        );
        assert_eq!(case.node_changed(&relabelled), Requeue::No);
        assert_eq!(
            case.node_changed(&cordoned("n2")),
            Requeue::No,
            "a new cordoned node"
        );
        assert_eq!(
            case.node_changed(&ready_node("n3", "4", "8Gi", json!({}))),
            Requeue::Yes,
            "a new open node"
        );
    }

    #[test]
    fn taint_toleration_queues_when_a_taint_it_cannot_tolerate_goes() {
        let tainted = |name: &str, key: &str| {
            with_spec(
                ready_node(name, "4", "8Gi", json!({})),
                json!({"taints": [{"key": key, "effect": "NoSchedule"}]}),
            )
        };
        let mut case = Case::rejected(&[tainted("n1", "a")], &[], &pending_pod("p", "1", "1Gi"));
        assert_eq!(case.rejected, BTreeSet::from([FilterKind::TaintToleration]));
        assert_eq!(case.node_changed(&tainted("n1", "b")), Requeue::No);
        assert_eq!(case.node_changed(&tainted("n2", "c")), Requeue::No);
        let soft = with_spec(
            ready_node("n1", "4", "8Gi", json!({})),
            json!({"taints": [{"key": "b", "effect": "PreferNoSchedule"}]}),
        );
        assert_eq!(case.node_changed(&soft), Requeue::Yes);
    }

    #[test]
    fn node_affinity_queues_when_a_node_comes_to_match() {
        let picky = pod(
            json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {
            "nodeSelector": {"disk": "ssd"}, "containers": [{"name": "c"}]}}),
        );
        let mut case = Case::rejected(
            &[ready_node("n1", "4", "8Gi", json!({"disk": "hdd"}))],
            &[],
            &picky,
        );
        assert_eq!(case.rejected, BTreeSet::from([FilterKind::NodeAffinity]));
        assert_eq!(
            case.node_changed(&ready_node(
                "n1",
                "4",
                "8Gi",
                json!({"disk": "hdd", "x": "1"})
            )),
            Requeue::No
        );
        assert_eq!(
            case.node_changed(&ready_node("n2", "4", "8Gi", json!({"disk": "nvme"}))),
            Requeue::No
        );
        assert_eq!(
            case.node_changed(&ready_node("n1", "4", "8Gi", json!({"disk": "ssd"}))),
            Requeue::Yes
        );
    }

    #[test]
    fn node_resources_fit_queues_for_room_made_or_added() {
        let mut case = Case::rejected(
            &[ready_node("n1", "2", "8Gi", json!({}))],
            &[
                bound_pod("a", "n1", "1", "1Gi"),
                bound_pod("b", "n1", "500m", "1Gi"),
            ],
            &pending_pod("p", "1", "1Gi"),
        );
        assert_eq!(
            case.rejected,
            BTreeSet::from([FilterKind::NodeResourcesFit])
        );
        assert_eq!(
            case.node_changed(&ready_node("n1", "2", "8Gi", json!({"x": "1"}))),
            Requeue::No,
            "a label does not make room"
        );
        assert_eq!(
            case.node_changed(&ready_node("n2", "500m", "8Gi", json!({}))),
            Requeue::No,
            "a new node too small"
        );
        assert_eq!(case.pod_removed("default", "b"), Requeue::Yes);
        assert_eq!(
            case.pod_added(&bound_pod("c", "n1", "800m", "1Gi")),
            Requeue::No
        );
        assert_eq!(
            case.node_changed(&ready_node("n1", "3", "8Gi", json!({}))),
            Requeue::Yes,
            "allocatable grew"
        );
    }

    #[test]
    fn node_ports_queue_when_the_port_is_freed() {
        let with_port = |name: &str, node: Option<&str>, port: i32| {
            pod(
                json!({"metadata": {"name": name, "namespace": "default"}, "spec": {
                "nodeName": node, "containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": port}]}]}}),
            )
        };
        let mut case = Case::rejected(
            &[ready_node("n1", "4", "8Gi", json!({}))],
            &[
                with_port("a", Some("n1"), 8080),
                bound_pod("b", "n1", "100m", "1Gi"),
            ],
            &with_port("p", None, 8080),
        );
        assert_eq!(case.rejected, BTreeSet::from([FilterKind::NodePorts]));
        assert_eq!(case.pod_removed("default", "b"), Requeue::No);
        assert_eq!(case.pod_removed("default", "a"), Requeue::Yes);
    }

    #[test]
    fn a_pod_with_no_node_waits_for_one() {
        let mut case = Case::rejected(&[], &[], &pending_pod("p", "1", "1Gi"));
        assert!(case.rejected.is_empty());
        assert_eq!(
            case.node_changed(&ready_node("n1", "4", "8Gi", json!({}))),
            Requeue::Yes
        );
    }

    #[test]
    fn node_name_queues_for_the_named_node() {
        let pinned = pod(
            json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchFields": [
                    {"key": "metadata.name", "operator": "In", "values": ["n2"]}]}]}}},
            "containers": [{"name": "c"}]}}),
        );
        let mut case = Case::rejected(&[ready_node("n1", "4", "8Gi", json!({}))], &[], &pinned);
        assert_eq!(
            case.node_changed(&ready_node("n3", "4", "8Gi", json!({}))),
            Requeue::No
        );
        assert_eq!(
            case.node_changed(&ready_node("n2", "4", "8Gi", json!({}))),
            Requeue::Yes
        );
        // NodeName itself: an unbound pod never names a node, so only the hint is checked.
        let info = PodInfo::from_pod(&pending_pod("p", "1", "1Gi"));
        let n = crate::fixtures::node_info(json!({"metadata": {"name": "n"}}));
        let snapshot = Snapshot::new();
        assert_eq!(
            hint(
                &snapshot,
                FilterKind::NodeName,
                &info,
                &ClusterEvent::NodeAdded(&n)
            ),
            Queue
        );
        assert_eq!(
            hint(
                &snapshot,
                FilterKind::NodeName,
                &info,
                &ClusterEvent::NodeUpdated { old: &n, new: &n }
            ),
            Skip
        );
    }

    fn spread_pod(name: &str, node: Option<&str>) -> Pod {
        pod(
            json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}}, "spec": {
            "nodeName": node,
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
                "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}],
            "containers": [{"name": "c", "resources": {"requests": {"cpu": "100m"}}}]}}),
        )
    }

    #[test]
    fn pod_topology_spread_queues_for_counted_pods_and_domains() {
        // Zone b's only node is full, so the pod may not go to zone a either (skew 3).
        let mut case = Case::rejected(
            &[
                ready_node("a1", "4", "8Gi", json!({"zone": "a"})),
                ready_node("b1", "1", "8Gi", json!({"zone": "b"})),
            ],
            &[
                spread_pod("w1", Some("a1")),
                spread_pod("w2", Some("a1")),
                bound_pod("big", "b1", "1", "1Gi"),
                bound_pod("other", "a1", "100m", "1Gi"),
            ],
            &spread_pod("p", None),
        );
        assert_eq!(
            case.rejected,
            BTreeSet::from([FilterKind::NodeResourcesFit, FilterKind::PodTopologySpread])
        );
        assert_eq!(
            case.pod_added(&bound_pod("other2", "a1", "100m", "1Gi")),
            Requeue::No,
            "not counted by the constraint"
        );
        assert_eq!(case.pod_added(&spread_pod("w3", Some("a1"))), Requeue::Yes);
        // A node without the topology key is no domain.
        let info = PodInfo::from_pod(&spread_pod("p", None));
        let keyless = crate::fixtures::node_info(json!({"metadata": {"name": "x"}}));
        let zoned_info =
            crate::fixtures::node_info(json!({"metadata": {"name": "x", "labels": {"zone": "c"}}}));
        let snapshot = Snapshot::new();
        let spread =
            |event: ClusterEvent<'_>| hint(&snapshot, FilterKind::PodTopologySpread, &info, &event);
        assert_eq!(spread(ClusterEvent::NodeAdded(&keyless)), Skip);
        assert_eq!(spread(ClusterEvent::NodeAdded(&zoned_info)), Queue);
        assert_eq!(spread(ClusterEvent::NodeRemoved(&zoned_info)), Queue);
        let labelled = ClusterEvent::NodeUpdated {
            old: &keyless,
            new: &zoned_info,
        };
        assert_eq!(spread(labelled), Queue);
    }

    fn anti_affine(name: &str, node: Option<&str>) -> Pod {
        pod(
            json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": "db"}}, "spec": {
            "nodeName": node,
            "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "db"}}}]}},
            "containers": [{"name": "c"}]}}),
        )
    }

    #[test]
    fn inter_pod_anti_affinity_queues_when_the_blocking_pod_goes() {
        let mut case = Case::rejected(
            &[ready_node("n1", "4", "8Gi", json!({}))],
            &[
                anti_affine("db1", Some("n1")),
                bound_pod("x", "n1", "100m", "1Gi"),
            ],
            &anti_affine("db2", None),
        );
        assert_eq!(
            case.rejected,
            BTreeSet::from([FilterKind::InterPodAffinity])
        );
        assert_eq!(case.pod_removed("default", "x"), Requeue::No);
        assert_eq!(
            case.pod_added(&bound_pod("y", "n1", "100m", "1Gi")),
            Requeue::No
        );
        assert_eq!(case.pod_removed("default", "db1"), Requeue::Yes);
    }

    #[test]
    fn inter_pod_affinity_queues_when_the_wanted_pod_arrives() {
        let follower = pod(
            json!({"metadata": {"name": "f", "namespace": "default"}, "spec": {
            "affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "cache"}}}]}},
            "containers": [{"name": "c"}]}}),
        );
        let cache = |name: &str| {
            pod(
                json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": "cache"}},
                "spec": {"nodeName": "n1", "containers": [{"name": "c"}]}}),
            )
        };
        let mut case = Case::rejected(
            &[ready_node("n1", "4", "8Gi", json!({}))],
            &[bound_pod("x", "n1", "100m", "1Gi")],
            &follower,
        );
        assert_eq!(
            case.rejected,
            BTreeSet::from([FilterKind::InterPodAffinity])
        );
        assert_eq!(
            case.pod_added(&bound_pod("y", "n1", "100m", "1Gi")),
            Requeue::No
        );
        assert_eq!(case.pod_removed("default", "x"), Requeue::No);
        assert_eq!(case.pod_added(&cache("c1")), Requeue::Yes);
        let info = PodInfo::from_pod(&follower);
        let snapshot = Snapshot::new();
        assert_eq!(
            hint(
                &snapshot,
                FilterKind::InterPodAffinity,
                &info,
                &ClusterEvent::NamespaceChanged
            ),
            Skip,
            "its terms name their namespaces"
        );
    }

    #[test]
    fn only_events_a_node_local_filter_can_hear_reach_pods_rejected_by_them_alone() {
        let info = PodInfo::from_pod(&pending_pod("p", "1", "1Gi"));
        let n = crate::fixtures::node_info(json!({"metadata": {"name": "n"}}));
        assert!(ClusterEvent::NodeAdded(&n).concerns_node_local_filters());
        assert!(ClusterEvent::AssignedPodRemoved(&info).concerns_node_local_filters());
        assert!(!ClusterEvent::AssignedPodAdded(&info).concerns_node_local_filters());
        assert!(!ClusterEvent::NamespaceChanged.concerns_node_local_filters());
        let smaller = PodInfo::from_pod(&pending_pod("p", "500m", "1Gi"));
        assert!(ClusterEvent::AssignedPodUpdated {
            old: &info,
            new: &smaller
        }
        .concerns_node_local_filters());
        assert!(!ClusterEvent::AssignedPodUpdated {
            old: &smaller,
            new: &info
        }
        .concerns_node_local_filters());
    }
}
