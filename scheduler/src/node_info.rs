//! Everything the scheduler reads from a node, parsed once per node update: labels,
//! effective taints, cordon, allocatable resources and the zone used to interleave nodes.

use k8s_openapi::api::core::v1::Node;

use crate::resources::{node_allocatable, Allocatable};
use crate::selector::Labels;
use crate::taints::{effective_taints, Taint};

const LABEL_REGION: &str = "topology.kubernetes.io/region";
const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
const LABEL_REGION_BETA: &str = "failure-domain.beta.kubernetes.io/region";
const LABEL_ZONE_BETA: &str = "failure-domain.beta.kubernetes.io/zone";

/// Equal infos schedule alike: a node update that leaves its info equal (a status heartbeat)
/// cannot make a pod fit, so it need not send unschedulable pods back to the queue.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct NodeInfo {
    pub name: String,
    pub labels: Labels,
    /// Spec taints plus the not-ready/unreachable taint a lifecycle controller would add.
    pub taints: Vec<Taint>,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    pub allocatable: Allocatable,
    /// Region and zone (`GetZoneKey`), for the order nodes are visited in.
    pub zone_key: String,
    pub notes: Vec<String>,
}

impl NodeInfo {
    pub fn from_node(node: &Node) -> Self {
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let mut notes = Vec::new();
        let allocatable = node_allocatable(node.status.as_ref(), &mut notes);
        let label = |stable: &str, beta: &str| {
            labels
                .get(stable)
                .or_else(|| labels.get(beta))
                .cloned()
                .unwrap_or_default()
        };
        let region = label(LABEL_REGION, LABEL_REGION_BETA);
        let zone = label(LABEL_ZONE, LABEL_ZONE_BETA);
        let zone_key = if region.is_empty() && zone.is_empty() {
            String::new()
        } else {
            format!("{region}:\x00:{zone}")
        };
        NodeInfo {
            name: node.metadata.name.clone().unwrap_or_default(),
            taints: effective_taints(node),
            unschedulable: node
                .spec
                .as_ref()
                .and_then(|spec| spec.unschedulable)
                .unwrap_or(false),
            allocatable,
            zone_key,
            notes,
            labels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::node;
    use serde_json::json;

    #[test]
    fn reads_allocatable_cordon_and_zone() {
        let info = NodeInfo::from_node(&node(json!({
            "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z1", "topology.kubernetes.io/region": "r"}},
            "spec": {"unschedulable": true},
            "status": {
                "capacity": {"cpu": "8", "memory": "32Gi", "pods": "250"},
                "allocatable": {"cpu": "3500m", "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi", "example.com/gpu": "2"},
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        })));
        assert_eq!(info.name, "n1");
        assert!(info.unschedulable);
        assert_eq!(info.allocatable.resources.milli_cpu, 3500);
        assert_eq!(info.allocatable.resources.memory, 16 << 30);
        assert_eq!(info.allocatable.resources.ephemeral_storage, 100 << 30);
        assert_eq!(info.allocatable.resources.scalar("example.com/gpu"), 2);
        assert_eq!(info.allocatable.pods, 110);
        assert_eq!(info.zone_key, "r:\u{0}:z1");
        assert!(info.taints.is_empty());
        assert!(info.notes.is_empty());
    }

    #[test]
    fn capacity_stands_in_when_allocatable_is_missing() {
        let info = NodeInfo::from_node(&node(json!({
            "metadata": {"name": "n1"},
            "status": {"capacity": {"cpu": "2", "pods": "10"}}
        })));
        assert_eq!(info.allocatable.resources.milli_cpu, 2000);
        assert_eq!(info.allocatable.pods, 10);
        assert_eq!(info.zone_key, "");
    }
}
