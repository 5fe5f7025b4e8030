//! NodeResourcesFit: the pod's effective requests must fit in what the node's allocatable
//! leaves after the requests of the pods already there, and the node must take one more pod.
//! Each short resource is its own reason.

use super::FilterFailure;
use crate::node_info::NodeInfo;
use crate::pod_info::PodInfo;
use crate::snapshot::NodeUsage;

pub const REASON_TOO_MANY_PODS: &str = "Too many pods";

/// `Insufficient <resource>`.
pub fn insufficient(resource: &str) -> String {
    format!("Insufficient {resource}")
}

pub(crate) fn check(
    pod: &PodInfo,
    node: &NodeInfo,
    usage: &NodeUsage,
) -> Result<(), FilterFailure> {
    let mut reasons = Vec::new();
    if usage.pod_count + 1 > node.allocatable.pods {
        reasons.push(REASON_TOO_MANY_PODS.to_string());
    }
    let wanted = &pod.requests.requested;
    if wanted.is_zero() {
        return if reasons.is_empty() {
            Ok(())
        } else {
            Err(FilterFailure::InsufficientResources(reasons))
        };
    }
    let offered = &node.allocatable.resources;
    let used = &usage.requested;
    let short = |want: i64, have: i64, taken: i64| want > 0 && want > have - taken;
    if short(wanted.milli_cpu, offered.milli_cpu, used.milli_cpu) {
        reasons.push(insufficient("cpu"));
    }
    if short(wanted.memory, offered.memory, used.memory) {
        reasons.push(insufficient("memory"));
    }
    if short(
        wanted.ephemeral_storage,
        offered.ephemeral_storage,
        used.ephemeral_storage,
    ) {
        reasons.push(insufficient("ephemeral-storage"));
    }
    for (name, amount) in &wanted.scalar {
        if short(*amount, offered.scalar(name), used.scalar(name)) {
            reasons.push(insufficient(name));
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(FilterFailure::InsufficientResources(reasons))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::{bound_pod, pod_info, ready_node};
    use crate::snapshot::Snapshot;
    use serde_json::json;

    fn requesting(requests: serde_json::Value) -> PodInfo {
        pod_info(json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "c", "resources": {"requests": requests}}
        ]}}))
    }

    fn reasons(result: Result<(), FilterFailure>) -> Vec<String> {
        match result {
            Ok(()) => Vec::new(),
            Err(failure) => failure.reasons(),
        }
    }

    #[test]
    fn requests_must_fit_in_what_is_left() {
        let mut node = ready_node("n1", "2", "4Gi", json!({}));
        node.status
            .as_mut()
            .unwrap()
            .allocatable
            .as_mut()
            .unwrap()
            .insert(
                "example.com/gpu".into(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("1".into()),
            );
        let mut snapshot = Snapshot::new();
        snapshot.upsert_node(&node);
        snapshot.upsert_pod(&bound_pod("busy", "n1", "1500m", "1Gi"));
        let id = snapshot.visit_order()[0];
        let (info, usage) = (
            snapshot.node(id).unwrap(),
            &snapshot.slot(id).unwrap().usage,
        );

        assert!(reasons(check(
            &requesting(json!({"cpu": "500m", "memory": "3Gi"})),
            info,
            usage
        ))
        .is_empty());
        assert_eq!(
            reasons(check(&requesting(json!({"cpu": "501m"})), info, usage)),
            vec!["Insufficient cpu"]
        );
        assert_eq!(
            reasons(check(
                &requesting(json!({"cpu": "1", "memory": "4Gi", "example.com/gpu": "2"})),
                info,
                usage
            )),
            vec![
                "Insufficient cpu",
                "Insufficient memory",
                "Insufficient example.com/gpu"
            ]
        );
        assert_eq!(
            reasons(check(
                &requesting(json!({"ephemeral-storage": "1Gi"})),
                info,
                usage
            )),
            vec!["Insufficient ephemeral-storage"]
        );
        assert!(reasons(check(
            &requesting(json!({"example.com/gpu": "1"})),
            info,
            usage
        ))
        .is_empty());
    }

    #[test]
    fn pod_count_is_checked_even_for_best_effort_pods() {
        let mut snapshot = Snapshot::new();
        let mut node = ready_node("n1", "2", "4Gi", json!({}));
        node.status
            .as_mut()
            .unwrap()
            .allocatable
            .as_mut()
            .unwrap()
            .insert(
                "pods".into(),
                k8s_openapi::apimachinery::pkg::api::resource::Quantity("1".into()),
            );
        snapshot.upsert_node(&node);
        let id = snapshot.visit_order()[0];
        let best_effort =
            pod_info(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}));
        let check_now = |snapshot: &Snapshot| {
            reasons(check(
                &best_effort,
                snapshot.node(id).unwrap(),
                &snapshot.slot(id).unwrap().usage,
            ))
        };
        assert!(check_now(&snapshot).is_empty());
        snapshot.upsert_pod(&bound_pod("first", "n1", "0", "0"));
        assert_eq!(check_now(&snapshot), vec!["Too many pods"]);
    }
}
