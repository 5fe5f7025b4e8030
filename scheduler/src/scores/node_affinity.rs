//! NodeAffinity (score): the sum of the weights of the preferred node affinity terms a node
//! matches, scaled so the best node scores 100.

use super::default_normalize;
use crate::pod_info::PodInfo;
use crate::snapshot::{NodeId, Snapshot};

pub(crate) fn scores(snapshot: &Snapshot, pod: &PodInfo, feasible: &[NodeId]) -> Option<Vec<i64>> {
    if pod.preferred_node_affinity.is_empty() {
        return None;
    }
    let mut raw: Vec<i64> = feasible
        .iter()
        .map(|&id| {
            snapshot.node(id).map_or(0, |node| {
                pod.preferred_node_affinity.score(&node.name, &node.labels)
            })
        })
        .collect();
    default_normalize(&mut raw, false);
    Some(raw)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::{pod_info, ready_node};
    use serde_json::json;

    #[test]
    fn matching_preferences_score_by_weight() {
        let snapshot = Snapshot::from_objects(
            &[
                ready_node("both", "1", "1Gi", json!({"disk": "ssd", "zone": "a"})),
                ready_node("ssd", "1", "1Gi", json!({"disk": "ssd"})),
                ready_node("none", "1", "1Gi", json!({})),
                ready_node("zone", "1", "1Gi", json!({"zone": "a"})),
            ],
            &[],
        );
        let ids = snapshot.visit_order().to_vec();
        let pod = pod_info(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [], "affinity": {"nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 60, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}},
                {"weight": 20, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}}
            ]}}}}),
        );
        assert_eq!(snapshot.node_names(), vec!["both", "none", "ssd", "zone"]);
        assert_eq!(scores(&snapshot, &pod, &ids).unwrap(), vec![100, 0, 75, 25]);
        let plain = pod_info(json!({"metadata": {"name": "p"}, "spec": {"containers": []}}));
        assert_eq!(scores(&snapshot, &plain, &ids), None);
    }
}
