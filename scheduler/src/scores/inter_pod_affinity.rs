//! InterPodAffinity (score): preferred pod affinity pulls toward domains with matching pods,
//! preferred anti-affinity pushes away, weighted per term; existing pods' terms that select
//! the incoming pod count too (their required affinity with weight 1, the
//! `hardPodAffinityWeight` default). Scores are min-max scaled to 0–100.

use std::collections::HashMap;

use super::MAX_NODE_SCORE;
use crate::pod_info::PodInfo;
use crate::snapshot::{NodeId, Snapshot, TermRole};

/// kube-scheduler's default `hardPodAffinityWeight`.
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

/// topology key → value → accumulated weight.
type TopologyScores = HashMap<String, HashMap<String, i64>>;

pub(crate) fn scores(snapshot: &Snapshot, pod: &PodInfo, feasible: &[NodeId]) -> Option<Vec<i64>> {
    let own = pod
        .affinity
        .as_deref()
        .filter(|terms| terms.has_preferred());
    let existing = snapshot.has_term_role(|role| role != TermRole::RequiredAntiAffinity);
    if own.is_none() && !existing {
        return None;
    }
    let mut topology: TopologyScores = HashMap::new();
    let mut add = |node: NodeId, key: &str, amount: i64| {
        let Some(node) = snapshot.node(node) else {
            return;
        };
        // Pods on nodes without labels are skipped, as processExistingPod does.
        if node.labels.is_empty() {
            return;
        }
        if let Some(value) = node.labels.get(key) {
            *topology
                .entry(key.to_string())
                .or_default()
                .entry(value.clone())
                .or_default() += amount;
        }
    };

    // The incoming pod's preferences about existing pods.
    if let Some(terms) = own {
        for (weighted, sign) in terms
            .preferred_affinity
            .iter()
            .map(|t| (t, 1))
            .chain(terms.preferred_anti_affinity.iter().map(|t| (t, -1)))
        {
            snapshot.for_each_pod_matching(&weighted.term, |entry| {
                add(
                    entry.node,
                    &weighted.term.topology_key,
                    sign * weighted.weight,
                );
            });
        }
    }

    // Existing pods' terms that select the incoming pod.
    let namespace_labels = snapshot.namespace_labels(&pod.namespace);
    for (role, term, nodes) in snapshot.term_groups() {
        let per_pod = match role {
            TermRole::RequiredAffinity => HARD_POD_AFFINITY_WEIGHT,
            TermRole::PreferredAffinity(weight) => weight,
            TermRole::PreferredAntiAffinity(weight) => -weight,
            TermRole::RequiredAntiAffinity => continue,
        };
        if !term.matches(&pod.namespace, &pod.labels, namespace_labels) {
            continue;
        }
        for (&node, &count) in nodes {
            add(node, &term.topology_key, per_pod * count);
        }
    }

    if topology.is_empty() {
        return None;
    }
    let raw: Vec<i64> = feasible
        .iter()
        .map(|&id| {
            snapshot.node(id).map_or(0, |node| {
                topology
                    .iter()
                    .filter_map(|(key, values)| node.labels.get(key).and_then(|v| values.get(v)))
                    .sum()
            })
        })
        .collect();
    let min = raw.iter().copied().min().unwrap_or(0);
    let max = raw.iter().copied().max().unwrap_or(0);
    let spread = max - min;
    Some(
        raw.iter()
            .map(|&score| {
                if spread > 0 {
                    (MAX_NODE_SCORE as f64 * ((score - min) as f64 / spread as f64)) as i64
                } else {
                    0
                }
            })
            .collect(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::{pod, pod_info, ready_node};
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    fn snapshot_with(pods: &[Pod]) -> (Snapshot, Vec<NodeId>) {
        let zone = |z: &str| json!({"zone": z});
        let snapshot = Snapshot::from_objects(
            &[
                ready_node("a1", "4", "8Gi", zone("a")),
                ready_node("b1", "4", "8Gi", zone("b")),
                ready_node("c1", "4", "8Gi", zone("c")),
            ],
            pods,
        );
        assert_eq!(snapshot.node_names(), vec!["a1", "b1", "c1"]);
        let ids = snapshot.visit_order().to_vec();
        (snapshot, ids)
    }

    fn running(
        name: &str,
        node: &str,
        labels: serde_json::Value,
        affinity: serde_json::Value,
    ) -> Pod {
        pod(
            json!({"metadata": {"name": name, "labels": labels}, "spec": {"nodeName": node, "containers": [], "affinity": affinity}}),
        )
    }

    fn preferred(kind: &str, weight: i32, labels: serde_json::Value) -> serde_json::Value {
        json!({kind: {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": weight, "podAffinityTerm": {"topologyKey": "zone", "labelSelector": {"matchLabels": labels}}}]}})
    }

    #[test]
    fn preferred_affinity_and_anti_affinity_of_the_incoming_pod() {
        let (snapshot, ids) = snapshot_with(&[
            running("db", "a1", json!({"app": "db"}), json!(null)),
            running("cache", "b1", json!({"app": "cache"}), json!(null)),
        ]);
        let mut affinity = preferred("podAffinity", 10, json!({"app": "db"}));
        affinity["podAntiAffinity"] =
            preferred("podAntiAffinity", 5, json!({"app": "cache"}))["podAntiAffinity"].clone();
        let pod = pod_info(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [], "affinity": affinity}}),
        );
        // Raw: a 10, b −5, c 0 → min-max: a 100, b 0, c 33.
        assert_eq!(scores(&snapshot, &pod, &ids).unwrap(), vec![100, 0, 33]);
    }

    #[test]
    fn existing_pods_terms_attract_or_repel_the_incoming_pod() {
        let (snapshot, ids) = snapshot_with(&[
            running(
                "friend",
                "a1",
                json!({}),
                preferred("podAffinity", 7, json!({"app": "web"})),
            ),
            running(
                "hater",
                "b1",
                json!({}),
                preferred("podAntiAffinity", 3, json!({"app": "web"})),
            ),
            running(
                "needy",
                "c1",
                json!({}),
                json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": "zone", "labelSelector": {"matchLabels": {"app": "web"}}}]}}),
            ),
        ]);
        let web = pod_info(
            json!({"metadata": {"name": "p", "labels": {"app": "web"}}, "spec": {"containers": []}}),
        );
        // Raw: a 7, b −3, c 1 → a 100, b 0, c 40.
        assert_eq!(scores(&snapshot, &web, &ids).unwrap(), vec![100, 0, 40]);
        let other = pod_info(
            json!({"metadata": {"name": "p", "labels": {"app": "db"}}, "spec": {"containers": []}}),
        );
        assert_eq!(scores(&snapshot, &other, &ids), None, "no term selects it");
    }

    #[test]
    fn nothing_to_score_without_affinity_anywhere() {
        let (snapshot, ids) =
            snapshot_with(&[running("db", "a1", json!({"app": "db"}), json!(null))]);
        let pod = pod_info(json!({"metadata": {"name": "p"}, "spec": {"containers": []}}));
        assert_eq!(scores(&snapshot, &pod, &ids), None);
    }
}
