//! TaintToleration: a node's NoSchedule and NoExecute taints must all be tolerated. The
//! reason names the first untolerated taint.

use super::FilterFailure;
use crate::node_info::NodeInfo;
use crate::pod_info::PodInfo;
use crate::taints::{first_untolerated, Taint};

/// `node(s) had untolerated taint {key: value}`.
pub fn reason(key: &str, value: &str) -> String {
    format!("node(s) had untolerated taint {{{key}: {value}}}")
}

/// [`check`] without building the failure (queueing hints ask this of every waiting pod).
pub(crate) fn tolerated(pod: &PodInfo, node: &NodeInfo) -> bool {
    first_untolerated(&node.taints, &pod.tolerations, Taint::forbids_scheduling).is_none()
}

pub(crate) fn check(pod: &PodInfo, node: &NodeInfo) -> Result<(), FilterFailure> {
    match first_untolerated(&node.taints, &pod.tolerations, Taint::forbids_scheduling) {
        None => Ok(()),
        Some(taint) => Err(FilterFailure::UntoleratedTaint {
            key: taint.key.clone(),
            value: taint.value.clone(),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::{node_info, pod_info};
    use serde_json::json;

    fn tainted(taints: serde_json::Value) -> NodeInfo {
        node_info(json!({
            "metadata": {"name": "n"},
            "spec": {"taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        }))
    }

    fn tolerating(tolerations: serde_json::Value) -> PodInfo {
        pod_info(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [], "tolerations": tolerations}}),
        )
    }

    #[test]
    fn reports_the_first_untolerated_hard_taint() {
        let node = tainted(json!([
            {"key": "soft", "effect": "PreferNoSchedule"},
            {"key": "dedicated", "value": "db", "effect": "NoSchedule"},
            {"key": "evict", "value": "x", "effect": "NoExecute"}
        ]));
        let failure = check(&tolerating(json!([])), &node).unwrap_err();
        assert_eq!(
            failure.reasons(),
            vec!["node(s) had untolerated taint {dedicated: db}"]
        );
        let failure = check(
            &tolerating(json!([{"key": "dedicated", "operator": "Equal", "value": "db"}])),
            &node,
        )
        .unwrap_err();
        assert_eq!(
            failure.reasons(),
            vec!["node(s) had untolerated taint {evict: x}"]
        );
        assert_eq!(
            check(&tolerating(json!([{"operator": "Exists"}])), &node),
            Ok(())
        );
    }

    #[test]
    fn prefer_no_schedule_never_filters() {
        let node = tainted(json!([{"key": "soft", "effect": "PreferNoSchedule"}]));
        assert_eq!(check(&tolerating(json!([])), &node), Ok(()));
    }

    #[test]
    fn not_ready_nodes_reject_through_their_taint() {
        let node = node_info(
            json!({"metadata": {"name": "n"}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        );
        // The API server's default tolerations (NoExecute, 300s) do not cover NoSchedule.
        let defaults = tolerating(json!([
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
        ]));
        let failure = check(&defaults, &node).unwrap_err();
        assert_eq!(
            failure.reasons(),
            vec!["node(s) had untolerated taint {node.kubernetes.io/not-ready: }"]
        );
        let daemon = tolerating(
            json!([{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoSchedule"}]),
        );
        assert_eq!(check(&daemon, &node), Ok(()));
    }
}
