//! The filters — kube-scheduler's Filter plugins — run in the default plugin order. The first
//! filter that rejects a node is the only one reported for it, as kube-scheduler stops at the
//! first failing plugin; one filter may give several reasons (e.g. "Insufficient cpu" and
//! "Insufficient memory").
//!
//! Volume plugins (VolumeRestrictions, NodeVolumeLimits, VolumeBinding, VolumeZone) and
//! DynamicResources are not implemented.

pub(crate) mod inter_pod_affinity;
pub(crate) mod node_affinity;
pub(crate) mod node_name;
pub(crate) mod node_ports;
pub(crate) mod node_resources_fit;
pub(crate) mod node_unschedulable;
pub(crate) mod pod_topology_spread;
pub(crate) mod taint_toleration;

use crate::node_info::NodeInfo;
use crate::pod_info::PodInfo;
use crate::snapshot::{NodeId, NodeUsage, Snapshot};

use inter_pod_affinity::InterPodAffinityState;
use pod_topology_spread::SpreadFilterState;

/// A filter, named as the kube-scheduler plugin it mirrors. Listed in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FilterKind {
    NodeUnschedulable,
    NodeName,
    TaintToleration,
    NodeAffinity,
    NodePorts,
    NodeResourcesFit,
    PodTopologySpread,
    InterPodAffinity,
}

impl FilterKind {
    /// Whether the filter reads only the node being checked and the pods on it (not other
    /// nodes, nor pods elsewhere in its topology domain).
    pub fn is_node_local(self) -> bool {
        !matches!(
            self,
            FilterKind::PodTopologySpread | FilterKind::InterPodAffinity
        )
    }

    /// The kube-scheduler plugin name.
    pub fn plugin_name(self) -> &'static str {
        match self {
            FilterKind::NodeUnschedulable => "NodeUnschedulable",
            FilterKind::NodeName => "NodeName",
            FilterKind::TaintToleration => "TaintToleration",
            FilterKind::NodeAffinity => "NodeAffinity",
            FilterKind::NodePorts => "NodePorts",
            FilterKind::NodeResourcesFit => "NodeResourcesFit",
            FilterKind::PodTopologySpread => "PodTopologySpread",
            FilterKind::InterPodAffinity => "InterPodAffinity",
        }
    }
}

/// Why a filter rejected a node; rendered into kube-scheduler's reason strings only when the
/// pod turns out unschedulable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum FilterFailure {
    NodeUnschedulable,
    NodeName,
    UntoleratedTaint {
        key: String,
        value: String,
    },
    NodeAffinity,
    NodePorts,
    /// "Too many pods", "Insufficient cpu", … one per short resource.
    InsufficientResources(Vec<String>),
    SpreadMissingLabel,
    SpreadSkew,
    PodAffinity,
    PodAntiAffinity,
    ExistingPodsAntiAffinity,
}

impl FilterFailure {
    pub fn filter(&self) -> FilterKind {
        match self {
            FilterFailure::NodeUnschedulable => FilterKind::NodeUnschedulable,
            FilterFailure::NodeName => FilterKind::NodeName,
            FilterFailure::UntoleratedTaint { .. } => FilterKind::TaintToleration,
            FilterFailure::NodeAffinity => FilterKind::NodeAffinity,
            FilterFailure::NodePorts => FilterKind::NodePorts,
            FilterFailure::InsufficientResources(_) => FilterKind::NodeResourcesFit,
            FilterFailure::SpreadMissingLabel | FilterFailure::SpreadSkew => {
                FilterKind::PodTopologySpread
            }
            FilterFailure::PodAffinity
            | FilterFailure::PodAntiAffinity
            | FilterFailure::ExistingPodsAntiAffinity => FilterKind::InterPodAffinity,
        }
    }

    /// kube-scheduler's reason strings, verbatim.
    pub fn reasons(&self) -> Vec<String> {
        let single = |reason: &str| vec![reason.to_string()];
        match self {
            FilterFailure::NodeUnschedulable => single(node_unschedulable::REASON),
            FilterFailure::NodeName => single(node_name::REASON),
            FilterFailure::UntoleratedTaint { key, value } => {
                vec![taint_toleration::reason(key, value)]
            }
            FilterFailure::NodeAffinity => single(node_affinity::REASON),
            FilterFailure::NodePorts => single(node_ports::REASON),
            FilterFailure::InsufficientResources(reasons) => reasons.clone(),
            FilterFailure::SpreadMissingLabel => single(pod_topology_spread::REASON_MISSING_LABEL),
            FilterFailure::SpreadSkew => single(pod_topology_spread::REASON_SKEW),
            FilterFailure::PodAffinity => single(inter_pod_affinity::REASON_AFFINITY),
            FilterFailure::PodAntiAffinity => single(inter_pod_affinity::REASON_ANTI_AFFINITY),
            FilterFailure::ExistingPodsAntiAffinity => {
                single(inter_pod_affinity::REASON_EXISTING_ANTI_AFFINITY)
            }
        }
    }
}

/// The filters that read only the node and the pods on it, in order; the first failure
/// wins. A change on one node can make a pod pass these only on that node.
pub(crate) fn check_node_local(
    pod: &PodInfo,
    node: &NodeInfo,
    usage: &NodeUsage,
) -> Result<(), FilterFailure> {
    node_unschedulable::check(pod, node)?;
    node_name::check(pod, node)?;
    taint_toleration::check(pod, node)?;
    node_affinity::check(pod, node)?;
    node_ports::check(pod, usage)?;
    node_resources_fit::check(pod, node, usage)
}

/// The first node-local filter that rejects the pod on the node, as [`check_node_local`]
/// finds it but without building the failure's reasons: queueing hints ask this of every
/// waiting pod for every node that changes.
pub(crate) fn first_node_local_rejection(
    pod: &PodInfo,
    node: &NodeInfo,
    usage: &NodeUsage,
) -> Option<FilterKind> {
    if node_unschedulable::check(pod, node).is_err() {
        Some(FilterKind::NodeUnschedulable)
    } else if node_name::check(pod, node).is_err() {
        Some(FilterKind::NodeName)
    } else if !taint_toleration::tolerated(pod, node) {
        Some(FilterKind::TaintToleration)
    } else if node_affinity::check(pod, node).is_err() {
        Some(FilterKind::NodeAffinity)
    } else if node_ports::check(pod, usage).is_err() {
        Some(FilterKind::NodePorts)
    } else if node_resources_fit::check(pod, node, usage).is_err() {
        Some(FilterKind::NodeResourcesFit)
    } else {
        None
    }
}

/// What the filters precompute once per pod (kube-scheduler's PreFilter state).
#[derive(Debug)]
pub(crate) struct Filters<'a> {
    snapshot: &'a Snapshot,
    pod: &'a PodInfo,
    spread: Option<SpreadFilterState>,
    inter_pod_affinity: Option<InterPodAffinityState>,
}

impl<'a> Filters<'a> {
    pub fn prepare(snapshot: &'a Snapshot, pod: &'a PodInfo) -> Self {
        Filters {
            snapshot,
            pod,
            spread: SpreadFilterState::prepare(snapshot, pod),
            inter_pod_affinity: InterPodAffinityState::prepare(snapshot, pod),
        }
    }

    /// Runs every filter on node `id` in order; the first failure wins.
    pub fn check(&self, id: NodeId) -> Result<(), FilterFailure> {
        let Some(slot) = self.snapshot.slot(id) else {
            return Err(FilterFailure::NodeName);
        };
        let Some(node) = slot.info.as_ref() else {
            return Err(FilterFailure::NodeName);
        };
        let pod = self.pod;
        check_node_local(pod, node, &slot.usage)?;
        if let Some(spread) = &self.spread {
            spread.check(pod, node)?;
        }
        if let Some(inter_pod_affinity) = &self.inter_pod_affinity {
            inter_pod_affinity.check(pod, node)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::{bound_pod, node, pod, ready_node};
    use serde_json::json;

    #[test]
    fn the_quick_node_local_check_names_the_filter_the_full_one_reports() {
        let mut snapshot = Snapshot::new();
        let nodes = [
            ready_node("open", "4", "8Gi", json!({"disk": "ssd"})),
            ready_node("small", "1", "8Gi", json!({"disk": "ssd"})),
            ready_node("hdd", "4", "8Gi", json!({"disk": "hdd"})),
            node(json!({"metadata": {"name": "cordoned"}, "spec": {"unschedulable": true}})),
            node(json!({"metadata": {"name": "tainted"}, "spec": {"taints": [
                {"key": "k", "effect": "NoSchedule"}]}})),
            ready_node("ports", "4", "8Gi", json!({"disk": "ssd"})),
        ];
        for n in &nodes {
            snapshot.upsert_node(n);
        }
        snapshot.upsert_pod(&bound_pod("busy", "small", "900m", "1Gi"));
        snapshot.upsert_pod(&pod(json!({"metadata": {"name": "web"}, "spec": {
            "nodeName": "ports", "containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 80}]}]}})));
        let pending = PodInfo::from_pod(&pod(json!({"metadata": {"name": "p"}, "spec": {
            "nodeSelector": {"disk": "ssd"},
            "containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": 80}],
                "resources": {"requests": {"cpu": "500m"}}}]}})));
        let mut seen = Vec::new();
        for n in &nodes {
            let name = n.metadata.name.as_deref().unwrap();
            let (info, usage) = snapshot.node_with_usage(name).unwrap();
            let quick = first_node_local_rejection(&pending, info, usage);
            let full = check_node_local(&pending, info, usage)
                .err()
                .map(|f| f.filter());
            assert_eq!(quick, full, "{name}");
            seen.push(quick);
        }
        assert_eq!(
            seen,
            [
                None,
                Some(FilterKind::NodeResourcesFit),
                Some(FilterKind::NodeAffinity),
                Some(FilterKind::NodeUnschedulable),
                Some(FilterKind::TaintToleration),
                Some(FilterKind::NodePorts),
            ]
        );
    }
}
