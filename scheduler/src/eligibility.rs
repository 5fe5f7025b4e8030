//! Which pods a scheduler should try to place at all.

use k8s_openapi::api::core::v1::Pod;

/// The scheduler name pods get when they name none.
pub const DEFAULT_SCHEDULER_NAME: &str = "default-scheduler";

/// True for a pod this scheduler (`scheduler_name`) should place: no `spec.nodeName` yet,
/// addressed to this scheduler (an unset `schedulerName` means the default one), not being
/// deleted, not finished (Succeeded/Failed) and not held back by scheduling gates (see
/// [`is_scheduling_gated`]; such pods wait with a `SchedulingGated` condition instead).
pub fn needs_scheduling(pod: &Pod, scheduler_name: &str) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let unbound = spec.node_name.as_deref().unwrap_or_default().is_empty();
    let ours = spec
        .scheduler_name
        .as_deref()
        .filter(|name| !name.is_empty())
        .unwrap_or(DEFAULT_SCHEDULER_NAME)
        == scheduler_name;
    let deleting = pod.metadata.deletion_timestamp.is_some();
    let finished = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    unbound && ours && !deleting && !finished && !is_scheduling_gated(pod)
}

/// True when the pod has `spec.schedulingGates`: kube-scheduler leaves it pending until they
/// are all removed.
pub fn is_scheduling_gated(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|spec| spec.scheduling_gates.as_ref())
        .is_some_and(|gates| !gates.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::pod;
    use serde_json::json;

    fn with(
        metadata: serde_json::Value,
        spec: serde_json::Value,
        status: serde_json::Value,
    ) -> Pod {
        let mut metadata = metadata;
        metadata["name"] = json!("p");
        let mut spec = spec;
        spec["containers"] = json!([]);
        pod(json!({"metadata": metadata, "spec": spec, "status": status}))
    }

    #[test]
    fn pending_pods_for_this_scheduler_need_scheduling() {
        let pending = with(json!({}), json!({}), json!({"phase": "Pending"}));
        assert!(needs_scheduling(&pending, DEFAULT_SCHEDULER_NAME));
        assert!(!needs_scheduling(&pending, "other-scheduler"));
        let named = with(
            json!({}),
            json!({"schedulerName": "default-scheduler"}),
            json!({}),
        );
        assert!(needs_scheduling(&named, DEFAULT_SCHEDULER_NAME));
        let custom = with(json!({}), json!({"schedulerName": "custom"}), json!({}));
        assert!(!needs_scheduling(&custom, DEFAULT_SCHEDULER_NAME));
        assert!(needs_scheduling(&custom, "custom"));
    }

    #[test]
    fn bound_deleting_finished_and_gated_pods_do_not() {
        let bound = with(json!({}), json!({"nodeName": "n1"}), json!({}));
        assert!(!needs_scheduling(&bound, DEFAULT_SCHEDULER_NAME));
        let deleting = with(
            json!({"deletionTimestamp": "2024-01-01T00:00:00Z"}),
            json!({}),
            json!({}),
        );
        assert!(!needs_scheduling(&deleting, DEFAULT_SCHEDULER_NAME));
        for phase in ["Succeeded", "Failed"] {
            let done = with(json!({}), json!({}), json!({"phase": phase}));
            assert!(!needs_scheduling(&done, DEFAULT_SCHEDULER_NAME), "{phase}");
        }
        let gated = with(
            json!({}),
            json!({"schedulingGates": [{"name": "wait"}]}),
            json!({}),
        );
        assert!(is_scheduling_gated(&gated));
        assert!(!needs_scheduling(&gated, DEFAULT_SCHEDULER_NAME));
        let ungated = with(json!({}), json!({"schedulingGates": []}), json!({}));
        assert!(!is_scheduling_gated(&ungated));
        assert!(needs_scheduling(&ungated, DEFAULT_SCHEDULER_NAME));
    }
}
