//! NodeName: a pod that names its node (`spec.nodeName`) fits only that node. Such pods are
//! never handed to the scheduler (see [`crate::needs_scheduling`]); the filter is kept so
//! the chain matches kube-scheduler's.

use super::FilterFailure;
use crate::node_info::NodeInfo;
use crate::pod_info::PodInfo;

pub const REASON: &str = "node(s) didn't match the requested node name";

pub(crate) fn check(pod: &PodInfo, node: &NodeInfo) -> Result<(), FilterFailure> {
    match &pod.node_name {
        Some(name) if *name != node.name => Err(FilterFailure::NodeName),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{node_info, pod_info};
    use serde_json::json;

    #[test]
    fn only_the_named_node_fits() {
        let pinned = pod_info(
            json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "containers": []}}),
        );
        let free = pod_info(json!({"metadata": {"name": "p"}, "spec": {"containers": []}}));
        let n1 = node_info(json!({"metadata": {"name": "n1"}}));
        let n2 = node_info(json!({"metadata": {"name": "n2"}}));
        assert_eq!(check(&pinned, &n1), Ok(()));
        assert_eq!(check(&pinned, &n2), Err(FilterFailure::NodeName));
        assert_eq!(check(&free, &n2), Ok(()));
    }
}
