//! Resource scores over cpu and memory (weight 1 each, kube-scheduler's defaults):
//! NodeResourcesFit's LeastAllocated (emptier nodes score higher; requests with the
//! best-effort defaults) and NodeResourcesBalancedAllocation (nodes whose cpu and memory
//! fractions stay close score higher; actual requests, skipped for best-effort pods).

use super::MAX_NODE_SCORE;
use crate::pod_info::PodInfo;
use crate::snapshot::{NodeId, Snapshot};

/// `(capacity − requested) × 100 / capacity`, 0 when over capacity.
fn least_requested(requested: i64, capacity: i64) -> i64 {
    if capacity == 0 || requested > capacity {
        return 0;
    }
    (capacity - requested) * MAX_NODE_SCORE / capacity
}

pub(crate) fn least_allocated_scores(
    snapshot: &Snapshot,
    pod: &PodInfo,
    feasible: &[NodeId],
) -> Option<Vec<i64>> {
    Some(
        feasible
            .iter()
            .map(|&id| {
                let Some(slot) = snapshot.slot(id) else {
                    return 0;
                };
                let Some(node) = &slot.info else { return 0 };
                let allocatable = &node.allocatable.resources;
                let resources = [
                    (
                        slot.usage.non_zero_milli_cpu + pod.requests.non_zero_milli_cpu,
                        allocatable.milli_cpu,
                    ),
                    (
                        slot.usage.non_zero_memory + pod.requests.non_zero_memory,
                        allocatable.memory,
                    ),
                ];
                let mut total = 0;
                let mut weights = 0;
                for (requested, capacity) in resources {
                    if capacity == 0 {
                        continue;
                    }
                    total += least_requested(requested, capacity);
                    weights += 1;
                }
                if weights == 0 {
                    0
                } else {
                    total / weights
                }
            })
            .collect(),
    )
}

pub(crate) fn balanced_allocation_scores(
    snapshot: &Snapshot,
    pod: &PodInfo,
    feasible: &[NodeId],
) -> Option<Vec<i64>> {
    let wanted = &pod.requests.requested;
    // Skipped for best-effort pods (kubernetes#129138): balancing on zero requests would
    // pile them onto one node.
    if wanted.milli_cpu == 0 && wanted.memory == 0 {
        return None;
    }
    Some(
        feasible
            .iter()
            .map(|&id| {
                let Some(slot) = snapshot.slot(id) else {
                    return 0;
                };
                let Some(node) = &slot.info else { return 0 };
                let allocatable = &node.allocatable.resources;
                let used = &slot.usage.requested;
                let mut fractions = Vec::with_capacity(2);
                for (requested, capacity) in [
                    (used.milli_cpu + wanted.milli_cpu, allocatable.milli_cpu),
                    (used.memory + wanted.memory, allocatable.memory),
                ] {
                    if capacity == 0 {
                        continue;
                    }
                    fractions.push((requested as f64 / capacity as f64).min(1.0));
                }
                let deviation = match fractions.as_slice() {
                    [a, b] => ((a - b) / 2.0).abs(),
                    _ => 0.0,
                };
                ((1.0 - deviation) * MAX_NODE_SCORE as f64) as i64
            })
            .collect(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::{bound_pod, pod_info, ready_node};
    use serde_json::json;

    fn requesting(cpu: &str, memory: &str) -> PodInfo {
        pod_info(json!({"metadata": {"name": "p"}, "spec": {"containers": [
            {"name": "c", "resources": {"requests": {"cpu": cpu, "memory": memory}}}
        ]}}))
    }

    fn setup() -> (Snapshot, Vec<NodeId>) {
        let snapshot = Snapshot::from_objects(
            &[
                ready_node("empty", "4", "8Gi", json!({})),
                ready_node("half", "4", "8Gi", json!({})),
            ],
            &[bound_pod("x", "half", "2", "4Gi")],
        );
        let ids = snapshot.visit_order().to_vec();
        assert_eq!(snapshot.node_names(), vec!["empty", "half"]);
        (snapshot, ids)
    }

    #[test]
    fn least_allocated_prefers_emptier_nodes() {
        let (snapshot, ids) = setup();
        let scores = least_allocated_scores(&snapshot, &requesting("1", "2Gi"), &ids).unwrap();
        // empty: cpu (4000-1000)*100/4000 = 75, memory 75 → 75; half: 25 and 25 → 25.
        assert_eq!(scores, vec![75, 25]);
    }

    #[test]
    fn least_allocated_uses_defaults_for_best_effort_pods() {
        let (snapshot, ids) = setup();
        let best_effort =
            pod_info(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}));
        let scores = least_allocated_scores(&snapshot, &best_effort, &ids).unwrap();
        // empty: cpu (4000-100)*100/4000 = 97, memory (8Gi-200Mi)*100/8Gi = 97.
        assert_eq!(scores, vec![97, 47]);
    }

    #[test]
    fn balanced_allocation_prefers_even_fractions() {
        let (snapshot, ids) = setup();
        // empty: cpu 3/4, memory 1/8 → |0.75-0.125|/2 = 0.3125 → 68.
        // half: cpu 5/4 → capped at 1, memory 5/8 → 0.1875 → 81.
        let scores = balanced_allocation_scores(&snapshot, &requesting("3", "1Gi"), &ids).unwrap();
        assert_eq!(scores, vec![68, 81]);
        let best_effort =
            pod_info(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}));
        assert_eq!(
            balanced_allocation_scores(&snapshot, &best_effort, &ids),
            None
        );
    }
}
