//! NodeAffinity: the node must match the pod's `nodeSelector` and required node affinity.
//! (The name restriction from `matchFields` is applied before filtering, in the scheduler.)

use super::FilterFailure;
use crate::node_info::NodeInfo;
use crate::pod_info::PodInfo;

pub const REASON: &str = "node(s) didn't match Pod's node affinity/selector";
/// The PreFilter's message when the terms' `metadata.name` sets leave no node at all.
pub const REASON_CONFLICT: &str = "pod affinity terms conflict";
/// Reported for nodes the `metadata.name` terms exclude before filtering.
pub const REASON_NOT_SELECTED: &str = "node(s) didn't satisfy plugin(s) [NodeAffinity]";

pub(crate) fn check(pod: &PodInfo, node: &NodeInfo) -> Result<(), FilterFailure> {
    let affinity = &pod.required_node_affinity;
    if !affinity.is_constrained() || affinity.matches(&node.name, &node.labels) {
        Ok(())
    } else {
        Err(FilterFailure::NodeAffinity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{node_info, pod_info};
    use serde_json::json;

    #[test]
    fn node_selector_and_affinity_must_both_match() {
        let pod = pod_info(json!({"metadata": {"name": "p"}, "spec": {
            "containers": [],
            "nodeSelector": {"disk": "ssd"},
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}]}
            ]}}}
        }}));
        let node = |labels: serde_json::Value| {
            node_info(json!({"metadata": {"name": "n", "labels": labels}}))
        };
        assert_eq!(
            check(&pod, &node(json!({"disk": "ssd", "zone": "b"}))),
            Ok(())
        );
        assert_eq!(
            check(&pod, &node(json!({"disk": "ssd", "zone": "c"}))),
            Err(FilterFailure::NodeAffinity)
        );
        assert_eq!(
            check(&pod, &node(json!({"disk": "hdd", "zone": "a"}))),
            Err(FilterFailure::NodeAffinity)
        );
        assert_eq!(
            FilterFailure::NodeAffinity.reasons(),
            vec!["node(s) didn't match Pod's node affinity/selector"]
        );
    }
}
