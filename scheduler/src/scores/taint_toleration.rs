//! TaintToleration (score): fewer untolerated `PreferNoSchedule` taints score higher. Only
//! tolerations with no effect or `PreferNoSchedule` count here.

use super::default_normalize;
use crate::pod_info::PodInfo;
use crate::snapshot::{NodeId, Snapshot};
use crate::taints::{Toleration, PREFER_NO_SCHEDULE};

pub(crate) fn scores(snapshot: &Snapshot, pod: &PodInfo, feasible: &[NodeId]) -> Option<Vec<i64>> {
    let tolerations: Vec<&Toleration> = pod
        .tolerations
        .iter()
        .filter(|t| t.effect.is_empty() || t.effect == PREFER_NO_SCHEDULE)
        .collect();
    let mut counts: Vec<i64> = feasible
        .iter()
        .map(|&id| {
            snapshot.node(id).map_or(0, |node| {
                node.taints
                    .iter()
                    .filter(|taint| taint.effect == PREFER_NO_SCHEDULE)
                    .filter(|taint| !tolerations.iter().any(|t| t.tolerates(taint)))
                    .count() as i64
            })
        })
        .collect();
    default_normalize(&mut counts, true);
    Some(counts)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::{pod_info, ready_node};
    use serde_json::json;

    #[test]
    fn fewer_untolerated_soft_taints_score_higher() {
        let with_taints = |name: &str, taints: serde_json::Value| {
            let mut node = ready_node(name, "1", "1Gi", json!({}));
            node.spec = Some(serde_json::from_value(json!({"taints": taints})).unwrap());
            node
        };
        let snapshot = Snapshot::from_objects(
            &[
                with_taints("clean", json!([])),
                with_taints(
                    "one",
                    json!([{"key": "a", "effect": "PreferNoSchedule"}, {"key": "hard", "effect": "NoSchedule"}]),
                ),
                with_taints(
                    "two",
                    json!([{"key": "a", "effect": "PreferNoSchedule"}, {"key": "b", "effect": "PreferNoSchedule"}]),
                ),
            ],
            &[],
        );
        let ids = snapshot.visit_order().to_vec();
        let plain = pod_info(json!({"metadata": {"name": "p"}, "spec": {"containers": []}}));
        assert_eq!(scores(&snapshot, &plain, &ids).unwrap(), vec![100, 50, 0]);
        let tolerates_a = pod_info(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [], "tolerations": [
                {"key": "a", "operator": "Exists", "effect": "PreferNoSchedule"},
                {"key": "b", "operator": "Exists", "effect": "NoSchedule"}
            ]}}),
        );
        // b's toleration is for NoSchedule only, so it does not count here.
        assert_eq!(
            scores(&snapshot, &tolerates_a, &ids).unwrap(),
            vec![100, 100, 0]
        );
    }
}
