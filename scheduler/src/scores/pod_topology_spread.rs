//! PodTopologySpread (score): for the pod's `ScheduleAnyway` constraints — or, for a pod of a
//! ReplicaSet/StatefulSet that declares none, the system defaults (hosts, maxSkew 3; zones,
//! maxSkew 5) over pods of the same controller — nodes in domains with fewer matching pods
//! score higher. This is also what spreads a controller's replicas by default.
//!
//! Raw score per node: Σ over constraints of `count × ln(domains + 2) + maxSkew − 1`, then
//! normalized as `100 × (max + min − score) / max`.

use std::borrow::Cow;
use std::collections::HashMap;

use super::MAX_NODE_SCORE;
use crate::filters::pod_topology_spread::node_included;
use crate::node_info::NodeInfo;
use crate::pod_info::PodInfo;
use crate::snapshot::{NodeId, Snapshot};
use crate::spread::{SpreadConstraint, SpreadSelector, LABEL_HOSTNAME};

pub(crate) fn scores(snapshot: &Snapshot, pod: &PodInfo, feasible: &[NodeId]) -> Option<Vec<i64>> {
    let constraints = &pod.spread.soft;
    if constraints.is_empty() || feasible.is_empty() {
        return None;
    }
    // Declared constraints need every topology key on a node; system defaults do not.
    let require_all_keys = pod.spread.declared;
    let has_all_keys = |node: &NodeInfo| {
        constraints
            .iter()
            .all(|c| node.labels.contains_key(&c.topology_key))
    };
    // This runs for every replica of a controller over hundreds of nodes: keys are compared
    // and label values looked up once per node and constraint, and domains are counted under
    // borrowed names.
    let by_host: Vec<bool> = constraints
        .iter()
        .map(|c| c.topology_key == LABEL_HOSTNAME)
        .collect();
    let width = constraints.len();
    let mut ignored = vec![false; feasible.len()];
    let mut values: Vec<Option<&str>> = Vec::with_capacity(feasible.len() * width);
    let mut nodes: Vec<Option<&NodeInfo>> = Vec::with_capacity(feasible.len());
    for (k, &id) in feasible.iter().enumerate() {
        let node = snapshot.node(id);
        ignored[k] = require_all_keys && !node.is_some_and(&has_all_keys);
        nodes.push(node);
        values.extend(constraints.iter().map(|c| {
            node.and_then(|n| n.labels.get(&c.topology_key))
                .map(String::as_str)
        }));
    }
    let ignored_count = ignored.iter().filter(|&&i| i).count();

    // Domains of the scored nodes, per constraint (hostname domains are the nodes themselves).
    let mut domain_counts: Vec<HashMap<&str, i64>> = vec![HashMap::new(); width];
    for (k, node) in nodes.iter().enumerate() {
        if ignored[k] || node.is_none() {
            continue;
        }
        for (i, counts) in domain_counts.iter_mut().enumerate() {
            if !by_host[i] {
                counts
                    .entry(values[k * width + i].unwrap_or_default())
                    .or_insert(0);
            }
        }
    }
    let weights: Vec<f64> = domain_counts
        .iter()
        .enumerate()
        .map(|(i, domains)| {
            let size = if by_host[i] {
                feasible.len() - ignored_count
            } else {
                domains.len()
            };
            ((size + 2) as f64).ln()
        })
        .collect();

    // Matching pods per node, shared by constraints with the same selector.
    let mut per_node_cache: Vec<(&SpreadSelector, Cow<'_, HashMap<NodeId, i64>>)> = Vec::new();
    let mut per_node_index = Vec::with_capacity(width);
    for constraint in constraints {
        let position = per_node_cache
            .iter()
            .position(|(selector, _)| *selector == &constraint.selector);
        let position = position.unwrap_or_else(|| {
            let counts = snapshot.spread_matches_per_node(&pod.namespace, &constraint.selector);
            per_node_cache.push((&constraint.selector, counts));
            per_node_cache.len() - 1
        });
        per_node_index.push(position);
    }

    // Domain totals over every node that counts, as the PreScore does over all nodes.
    for (i, constraint) in constraints.iter().enumerate() {
        if by_host[i] {
            continue;
        }
        for (&id, &count) in per_node_cache[per_node_index[i]].1.iter() {
            let Some(node) = snapshot.node(id) else {
                continue;
            };
            if require_all_keys && !has_all_keys(node) {
                continue;
            }
            if !node_included(constraint, pod, node) {
                continue;
            }
            let value = node
                .labels
                .get(&constraint.topology_key)
                .map(String::as_str)
                .unwrap_or_default();
            if let Some(total) = domain_counts[i].get_mut(value) {
                *total += count;
            }
        }
    }

    let raw: Vec<Option<i64>> = feasible
        .iter()
        .enumerate()
        .map(|(k, &id)| {
            if ignored[k] {
                return None;
            }
            nodes[k]?;
            let mut score = 0.0;
            for (i, constraint) in constraints.iter().enumerate() {
                let Some(value) = values[k * width + i] else {
                    continue;
                };
                let count = if by_host[i] {
                    per_node_cache[per_node_index[i]]
                        .1
                        .get(&id)
                        .copied()
                        .unwrap_or(0)
                } else {
                    domain_counts[i].get(value).copied().unwrap_or(0)
                };
                score += score_for_count(count, constraint, weights[i]);
            }
            Some(score.round() as i64)
        })
        .collect();
    Some(normalize(&raw))
}

fn score_for_count(count: i64, constraint: &SpreadConstraint, weight: f64) -> f64 {
    count as f64 * weight + (constraint.max_skew - 1) as f64
}

/// Fewer matching pods is better: `100 × (max + min − score) / max`; ignored nodes get 0.
fn normalize(raw: &[Option<i64>]) -> Vec<i64> {
    let scored = raw.iter().flatten().copied();
    let min = scored.clone().min().unwrap_or(0);
    let max = scored.max().unwrap_or(0);
    raw.iter()
        .map(|score| match score {
            None => 0,
            Some(_) if max == 0 => MAX_NODE_SCORE,
            Some(score) => MAX_NODE_SCORE * (max + min - score) / max,
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::{pod, pod_info, ready_node};
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    fn replica(name: &str, node: &str, rs: &str) -> Pod {
        pod(
            json!({"metadata": {"name": name, "labels": {"app": "web"}, "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": rs, "controller": true}]},
            "spec": {"nodeName": node, "containers": []}}),
        )
    }

    fn zone_nodes() -> Vec<k8s_openapi::api::core::v1::Node> {
        let zone = |z: &str| json!({"topology.kubernetes.io/zone": z});
        vec![
            ready_node("a1", "4", "8Gi", zone("a")),
            ready_node("a2", "4", "8Gi", zone("a")),
            ready_node("b1", "4", "8Gi", zone("b")),
        ]
    }

    fn scores_by_name(snapshot: &Snapshot, pod: &PodInfo) -> Vec<(String, i64)> {
        let ids = snapshot.visit_order().to_vec();
        let scores = scores(snapshot, pod, &ids).unwrap();
        snapshot
            .node_names()
            .into_iter()
            .map(String::from)
            .zip(scores)
            .collect()
    }

    #[test]
    fn replicas_spread_over_hosts_and_zones_by_default() {
        let snapshot = Snapshot::from_objects(
            &zone_nodes(),
            &[
                replica("r1", "a1", "rs-1"),
                replica("r2", "a1", "rs-1"),
                replica("other", "b1", "rs-2"),
            ],
        );
        let new_replica = pod_info(serde_json::to_value(replica("r3", "", "rs-1")).unwrap());
        // Order a1, b1, a2. Weights: hosts ln(5), zones ln(4).
        // a1: 2·ln5 + 2 + 2·ln4 + 4 = 12.0 → 12; b1: 0 + 2 + 0 + 4 = 6; a2: 0 + 2 + 2·ln4 + 4 = 8.77 → 9.
        // Normalized: 100·(12+6−s)/12 → a1 50, b1 100, a2 75.
        assert_eq!(
            scores_by_name(&snapshot, &new_replica),
            vec![("a1".into(), 50), ("b1".into(), 100), ("a2".into(), 75)]
        );
    }

    #[test]
    fn pods_without_a_controller_or_constraints_are_not_scored() {
        let snapshot = Snapshot::from_objects(&zone_nodes(), &[]);
        let ids = snapshot.visit_order().to_vec();
        let loose = pod_info(json!({"metadata": {"name": "p"}, "spec": {"containers": []}}));
        assert_eq!(scores(&snapshot, &loose, &ids), None);
        let hard_only = pod_info(json!({"metadata": {"name": "p", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "rs", "controller": true}]},
            "spec": {"containers": [], "topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {}}]}}));
        assert_eq!(
            scores(&snapshot, &hard_only, &ids),
            None,
            "declared constraints replace the defaults"
        );
    }

    #[test]
    fn declared_soft_constraints_ignore_nodes_without_the_key() {
        let mut nodes = zone_nodes();
        nodes.push(ready_node("bare", "4", "8Gi", json!({})));
        let web = |name: &str, node: &str| {
            pod(
                json!({"metadata": {"name": name, "labels": {"app": "web"}}, "spec": {"nodeName": node, "containers": []}}),
            )
        };
        let snapshot = Snapshot::from_objects(&nodes, &[web("w1", "a1"), web("w2", "a2")]);
        let incoming = pod_info(
            json!({"metadata": {"name": "p", "labels": {"app": "web"}}, "spec": {"containers": [],
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": {"app": "web"}}}]}}),
        );
        // Domains a (2 pods) and b (0): weight ln(4). a: 2·1.386 = 2.77 → 3; b: 0.
        // Normalized: a 100·(3+0−3)/3 = 0, b 100; bare is ignored → 0.
        let by_name: HashMap<String, i64> =
            scores_by_name(&snapshot, &incoming).into_iter().collect();
        assert_eq!(by_name["a1"], 0);
        assert_eq!(by_name["a2"], 0);
        assert_eq!(by_name["b1"], 100);
        assert_eq!(by_name["bare"], 0);
    }

    #[test]
    fn normalize_maps_fewest_to_best() {
        assert_eq!(normalize(&[Some(0), Some(0)]), vec![100, 100]);
        assert_eq!(normalize(&[Some(4), Some(2), None]), vec![50, 100, 0]);
    }
}
