//! PodTopologySpread (filter): for every `DoNotSchedule` constraint, placing the pod in the
//! node's domain must keep `matching pods there + self − global minimum ≤ maxSkew`.
//!
//! Domains are the topology values of nodes that carry every constraint's key and pass the
//! constraint's node-inclusion policies; the global minimum is 0 while there are fewer
//! domains than `minDomains`.

use std::collections::HashMap;

use super::FilterFailure;
use crate::node_info::NodeInfo;
use crate::pod_info::PodInfo;
use crate::snapshot::Snapshot;
use crate::spread::SpreadConstraint;
use crate::taints::{first_untolerated, Taint};

pub const REASON_SKEW: &str = "node(s) didn't match pod topology spread constraints";
pub const REASON_MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";

/// Whether `node` counts as part of a domain for `constraint` (`matchNodeInclusionPolicies`).
pub(crate) fn node_included(constraint: &SpreadConstraint, pod: &PodInfo, node: &NodeInfo) -> bool {
    if constraint.honor_node_affinity
        && !pod.required_node_affinity.matches(&node.name, &node.labels)
    {
        return false;
    }
    if constraint.honor_node_taints
        && first_untolerated(&node.taints, &pod.tolerations, Taint::forbids_scheduling).is_some()
    {
        return false;
    }
    true
}

#[derive(Debug)]
struct ConstraintState {
    /// Matching pods per domain value; every eligible domain is present, possibly with 0.
    per_domain: HashMap<String, i64>,
    global_minimum: i64,
}

/// The PreFilter state: counts per domain for each hard constraint.
#[derive(Debug)]
pub(crate) struct SpreadFilterState {
    constraints: Vec<ConstraintState>,
}

impl SpreadFilterState {
    /// `None` when the pod has no `DoNotSchedule` constraint.
    pub fn prepare(snapshot: &Snapshot, pod: &PodInfo) -> Option<Self> {
        let hard = &pod.spread.hard;
        if hard.is_empty() {
            return None;
        }
        let width = hard.len();
        // eligible[node * width + i]: the node is a domain member for constraint i.
        let mut eligible = vec![false; snapshot.node_slot_count() * width];
        let mut per_domain: Vec<HashMap<String, i64>> = vec![HashMap::new(); width];
        for &id in snapshot.visit_order() {
            let Some(node) = snapshot.node(id) else {
                continue;
            };
            if !hard
                .iter()
                .all(|c| node.labels.contains_key(&c.topology_key))
            {
                continue;
            }
            for (i, constraint) in hard.iter().enumerate() {
                if !node_included(constraint, pod, node) {
                    continue;
                }
                if let Some(value) = node.labels.get(&constraint.topology_key) {
                    per_domain[i].entry(value.clone()).or_insert(0);
                    eligible[id * width + i] = true;
                }
            }
        }
        let mut constraints = Vec::with_capacity(width);
        for (i, (constraint, mut domains)) in hard.iter().zip(per_domain).enumerate() {
            let counts = snapshot.spread_matches_per_node(&pod.namespace, &constraint.selector);
            for (&node_id, &count) in counts.iter() {
                if !eligible.get(node_id * width + i).copied().unwrap_or(false) {
                    continue;
                }
                let value = snapshot
                    .node(node_id)
                    .and_then(|node| node.labels.get(&constraint.topology_key));
                if let Some(total) = value.and_then(|value| domains.get_mut(value)) {
                    *total += count;
                }
            }
            let global_minimum = if (domains.len() as i64) < constraint.min_domains {
                0
            } else {
                domains.values().copied().min().unwrap_or(0)
            };
            constraints.push(ConstraintState {
                per_domain: domains,
                global_minimum,
            });
        }
        Some(SpreadFilterState { constraints })
    }

    pub fn check(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), FilterFailure> {
        for (constraint, state) in pod.spread.hard.iter().zip(&self.constraints) {
            let Some(value) = node.labels.get(&constraint.topology_key) else {
                return Err(FilterFailure::SpreadMissingLabel);
            };
            let matching = state.per_domain.get(value).copied().unwrap_or(0);
            let self_match = i64::from(constraint.matches_self(&pod.labels));
            if matching + self_match - state.global_minimum > constraint.max_skew {
                return Err(FilterFailure::SpreadSkew);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::{pod, pod_info, ready_node};
    use serde_json::json;

    fn zone_node(name: &str, zone: Option<&str>) -> k8s_openapi::api::core::v1::Node {
        match zone {
            Some(zone) => ready_node(name, "8", "16Gi", json!({"zone": zone})),
            None => ready_node(name, "8", "16Gi", json!({})),
        }
    }

    fn web(name: &str, node: &str) -> k8s_openapi::api::core::v1::Pod {
        pod(
            json!({"metadata": {"name": name, "labels": {"app": "web"}}, "spec": {"nodeName": node, "containers": []}}),
        )
    }

    fn incoming(constraint: serde_json::Value, extra_spec: serde_json::Value) -> PodInfo {
        let mut spec = json!({"containers": [], "topologySpreadConstraints": [constraint]});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
            spec.extend(extra.clone());
        }
        pod_info(json!({"metadata": {"name": "new", "labels": {"app": "web"}}, "spec": spec}))
    }

    fn zone_constraint(max_skew: i32) -> serde_json::Value {
        json!({"maxSkew": max_skew, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
               "labelSelector": {"matchLabels": {"app": "web"}}})
    }

    fn results(snapshot: &Snapshot, pod: &PodInfo) -> Vec<(String, Result<(), FilterFailure>)> {
        let state = SpreadFilterState::prepare(snapshot, pod).unwrap();
        snapshot
            .visit_order()
            .iter()
            .map(|&id| {
                let node = snapshot.node(id).unwrap();
                (node.name.clone(), state.check(pod, node))
            })
            .collect()
    }

    #[test]
    fn skew_is_measured_against_the_emptiest_zone() {
        // zone a: 2 web pods, zone b: 1, zone c: 0.
        let snapshot = Snapshot::from_objects(
            &[
                zone_node("a1", Some("a")),
                zone_node("b1", Some("b")),
                zone_node("c1", Some("c")),
                zone_node("x", None),
            ],
            &[web("w1", "a1"), web("w2", "a1"), web("w3", "b1")],
        );
        let outcome = results(&snapshot, &incoming(zone_constraint(1), json!({})));
        let by_node: HashMap<_, _> = outcome.into_iter().collect();
        assert_eq!(by_node["a1"], Err(FilterFailure::SpreadSkew));
        assert_eq!(
            by_node["b1"],
            Err(FilterFailure::SpreadSkew),
            "1 + 1 - 0 > 1"
        );
        assert_eq!(by_node["c1"], Ok(()));
        assert_eq!(by_node["x"], Err(FilterFailure::SpreadMissingLabel));

        let lenient = results(&snapshot, &incoming(zone_constraint(2), json!({})));
        let by_node: HashMap<_, _> = lenient.into_iter().collect();
        assert_eq!(by_node["b1"], Ok(()));
        assert_eq!(by_node["a1"], Err(FilterFailure::SpreadSkew));
    }

    #[test]
    fn pods_elsewhere_or_terminating_do_not_count() {
        let mut terminating = web("w2", "a1");
        terminating.metadata.deletion_timestamp =
            Some(serde_json::from_value(json!("2024-01-01T00:00:00Z")).unwrap());
        let mut other_namespace = web("w3", "a1");
        other_namespace.metadata.namespace = Some("other".into());
        let snapshot = Snapshot::from_objects(
            &[zone_node("a1", Some("a")), zone_node("b1", Some("b"))],
            &[web("w1", "a1"), terminating, other_namespace],
        );
        let by_node: HashMap<_, _> = results(&snapshot, &incoming(zone_constraint(1), json!({})))
            .into_iter()
            .collect();
        assert_eq!(
            by_node["a1"],
            Err(FilterFailure::SpreadSkew),
            "1 + 1 - 0 > 1"
        );
        assert_eq!(by_node["b1"], Ok(()));
        let one_more = Snapshot::from_objects(
            &[zone_node("a1", Some("a")), zone_node("b1", Some("b"))],
            &[web("w1", "a1"), web("w9", "b1")],
        );
        let by_node: HashMap<_, _> = results(&one_more, &incoming(zone_constraint(1), json!({})))
            .into_iter()
            .collect();
        assert_eq!(by_node["a1"], Ok(()), "1 + 1 - 1 ≤ 1");
    }

    #[test]
    fn min_domains_forces_a_zero_minimum() {
        let snapshot = Snapshot::from_objects(
            &[zone_node("a1", Some("a")), zone_node("b1", Some("b"))],
            &[web("w1", "a1"), web("w2", "b1")],
        );
        let mut constraint = zone_constraint(1);
        constraint["minDomains"] = json!(3);
        let by_node: HashMap<_, _> = results(&snapshot, &incoming(constraint, json!({})))
            .into_iter()
            .collect();
        assert_eq!(
            by_node["a1"],
            Err(FilterFailure::SpreadSkew),
            "only 2 of 3 domains: minimum is 0"
        );
        assert_eq!(by_node["b1"], Err(FilterFailure::SpreadSkew));
    }

    #[test]
    fn node_affinity_policy_decides_which_domains_count() {
        // Zone c is empty but excluded by the pod's node selector, so it does not pull the
        // minimum down unless the policy says Ignore.
        let snapshot = Snapshot::from_objects(
            &[
                ready_node("a1", "8", "16Gi", json!({"zone": "a", "pool": "web"})),
                ready_node("b1", "8", "16Gi", json!({"zone": "b", "pool": "web"})),
                ready_node("c1", "8", "16Gi", json!({"zone": "c", "pool": "batch"})),
            ],
            &[web("w1", "a1"), web("w2", "b1")],
        );
        let selector = json!({"nodeSelector": {"pool": "web"}});
        let by_node: HashMap<_, _> =
            results(&snapshot, &incoming(zone_constraint(1), selector.clone()))
                .into_iter()
                .collect();
        assert_eq!(by_node["a1"], Ok(()), "minimum over a and b is 1");
        let mut ignore = zone_constraint(1);
        ignore["nodeAffinityPolicy"] = json!("Ignore");
        let by_node: HashMap<_, _> = results(&snapshot, &incoming(ignore, selector))
            .into_iter()
            .collect();
        assert_eq!(
            by_node["a1"],
            Err(FilterFailure::SpreadSkew),
            "zone c counts: minimum 0"
        );
    }

    #[test]
    fn node_taints_policy_honor_drops_tainted_domains() {
        let mut tainted = ready_node("c1", "8", "16Gi", json!({"zone": "c"}));
        tainted.spec = Some(
            serde_json::from_value(json!({"taints": [{"key": "k", "effect": "NoSchedule"}]}))
                .unwrap(),
        );
        let snapshot = Snapshot::from_objects(
            &[
                zone_node("a1", Some("a")),
                zone_node("b1", Some("b")),
                tainted,
            ],
            &[web("w1", "a1"), web("w2", "b1")],
        );
        let by_node: HashMap<_, _> = results(&snapshot, &incoming(zone_constraint(1), json!({})))
            .into_iter()
            .collect();
        assert_eq!(
            by_node["a1"],
            Err(FilterFailure::SpreadSkew),
            "taints ignored by default: zone c counts"
        );
        let mut honor = zone_constraint(1);
        honor["nodeTaintsPolicy"] = json!("Honor");
        let by_node: HashMap<_, _> = results(&snapshot, &incoming(honor, json!({})))
            .into_iter()
            .collect();
        assert_eq!(by_node["a1"], Ok(()));
    }

    #[test]
    fn an_unmatched_selector_still_counts_self_but_never_others() {
        // An empty selector counts no existing pod but matches the pod itself.
        let snapshot = Snapshot::from_objects(
            &[zone_node("a1", Some("a")), zone_node("b1", Some("b"))],
            &[web("w1", "a1"), web("w2", "a1")],
        );
        let constraint = json!({"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {}});
        let by_node: HashMap<_, _> = results(&snapshot, &incoming(constraint, json!({})))
            .into_iter()
            .collect();
        assert_eq!(by_node["a1"], Ok(()));
    }
}
