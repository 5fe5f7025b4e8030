//! NodeUnschedulable: a cordoned node (`spec.unschedulable`) takes only pods that tolerate
//! the `node.kubernetes.io/unschedulable:NoSchedule` taint.

use std::sync::LazyLock;

use super::FilterFailure;
use crate::node_info::NodeInfo;
use crate::pod_info::PodInfo;
use crate::taints::{Taint, NO_SCHEDULE, TAINT_UNSCHEDULABLE};

pub const REASON: &str = "node(s) were unschedulable";

pub(crate) fn check(pod: &PodInfo, node: &NodeInfo) -> Result<(), FilterFailure> {
    if !node.unschedulable {
        return Ok(());
    }
    // Built once: every cordoned node is checked for every pod that fits nowhere.
    static CORDON: LazyLock<Taint> = LazyLock::new(|| Taint {
        key: TAINT_UNSCHEDULABLE.to_string(),
        value: String::new(),
        effect: NO_SCHEDULE.to_string(),
    });
    if pod.tolerations.iter().any(|t| t.tolerates(&CORDON)) {
        Ok(())
    } else {
        Err(FilterFailure::NodeUnschedulable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{node_info, pod_info};
    use serde_json::json;

    #[test]
    fn cordoned_nodes_reject_pods_without_the_toleration() {
        let cordoned =
            node_info(json!({"metadata": {"name": "n"}, "spec": {"unschedulable": true}}));
        let open = node_info(json!({"metadata": {"name": "n"}}));
        let plain = pod_info(json!({"metadata": {"name": "p"}, "spec": {"containers": []}}));
        assert_eq!(
            check(&plain, &cordoned),
            Err(FilterFailure::NodeUnschedulable)
        );
        assert_eq!(check(&plain, &open), Ok(()));
        let tolerant = pod_info(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [], "tolerations": [
                {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}
            ]}}),
        );
        assert_eq!(check(&tolerant, &cordoned), Ok(()));
    }
}
