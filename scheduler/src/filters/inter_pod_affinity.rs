//! InterPodAffinity (filter): the pod's required affinity (some matching pod in the node's
//! topology domain, for every term), its required anti-affinity (no matching pod there), and
//! the required anti-affinity of pods already running (the pod must not land in a domain of
//! a pod whose anti-affinity selects it).
//!
//! Only pods on known nodes count. The work is proportional to the pods the terms select
//! (found through the label index) and to the distinct anti-affinity terms of existing pods,
//! not to the number of pods in the cluster.

use std::collections::HashMap;

use super::FilterFailure;
use crate::affinity::AffinityTerm;
use crate::node_info::NodeInfo;
use crate::pod_info::PodInfo;
use crate::snapshot::{NodeId, Snapshot, TermRole};

pub const REASON_AFFINITY: &str = "node(s) didn't match pod affinity rules";
pub const REASON_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
pub const REASON_EXISTING_ANTI_AFFINITY: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";

/// Counts per topology key and value.
#[derive(Debug, Default)]
pub(crate) struct TopologyCounts(HashMap<String, HashMap<String, i64>>);

impl TopologyCounts {
    /// Adds `count` to the node's domain for `key`, if the node has that label.
    pub fn add(&mut self, node: &NodeInfo, key: &str, count: i64) {
        if let Some(value) = node.labels.get(key) {
            *self
                .0
                .entry(key.to_string())
                .or_default()
                .entry(value.clone())
                .or_default() += count;
        }
    }

    pub fn get(&self, key: &str, value: &str) -> i64 {
        self.0
            .get(key)
            .and_then(|values| values.get(value))
            .copied()
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when any of the node's labels is a domain with a positive count.
    pub fn any_positive_on(&self, node: &NodeInfo) -> bool {
        self.0.iter().any(|(key, values)| {
            node.labels
                .get(key)
                .and_then(|value| values.get(value))
                .is_some_and(|count| *count > 0)
        })
    }
}

/// The PreFilter state.
#[derive(Debug)]
pub(crate) struct InterPodAffinityState {
    /// Domains holding a pod whose required anti-affinity selects the incoming pod.
    existing_anti_affinity: TopologyCounts,
    /// Domains holding pods that match all of the incoming pod's required affinity terms.
    affinity: TopologyCounts,
    /// Domains holding pods matching one of the incoming pod's anti-affinity terms.
    anti_affinity: TopologyCounts,
    /// The pod matches its own affinity terms (lets the first of a group schedule).
    matches_own_affinity: bool,
}

impl InterPodAffinityState {
    /// `None` when neither the pod nor any existing pod has required (anti-)affinity terms.
    pub fn prepare(snapshot: &Snapshot, pod: &PodInfo) -> Option<Self> {
        let own_terms = pod.affinity.as_deref().filter(|terms| terms.has_required());
        let existing_terms = snapshot.has_term_role(|role| role == TermRole::RequiredAntiAffinity);
        if own_terms.is_none() && !existing_terms {
            return None;
        }
        let namespace_labels = snapshot.namespace_labels(&pod.namespace);
        let node_of = |id: NodeId| snapshot.node(id);

        let mut existing_anti_affinity = TopologyCounts::default();
        for (role, term, nodes) in snapshot.term_groups() {
            if role != TermRole::RequiredAntiAffinity
                || !term.matches(&pod.namespace, &pod.labels, namespace_labels)
            {
                continue;
            }
            for (&id, &count) in nodes {
                if let Some(node) = node_of(id) {
                    existing_anti_affinity.add(node, &term.topology_key, count);
                }
            }
        }

        let mut affinity = TopologyCounts::default();
        let mut anti_affinity = TopologyCounts::default();
        let mut matches_own_affinity = false;
        if let Some(terms) = own_terms {
            let required = &terms.required_affinity;
            if let Some((first, rest)) = required.split_first() {
                snapshot.for_each_pod_matching(first, |entry| {
                    let other = &entry.info;
                    let other_ns_labels = snapshot.namespace_labels(&other.namespace);
                    if !rest
                        .iter()
                        .all(|t| t.matches(&other.namespace, &other.labels, other_ns_labels))
                    {
                        return;
                    }
                    if let Some(node) = node_of(entry.node) {
                        for term in required {
                            affinity.add(node, &term.topology_key, 1);
                        }
                    }
                });
                matches_own_affinity = matches_all(required, pod, namespace_labels);
            }
            for term in &terms.required_anti_affinity {
                snapshot.for_each_pod_matching(term, |entry| {
                    if let Some(node) = node_of(entry.node) {
                        anti_affinity.add(node, &term.topology_key, 1);
                    }
                });
            }
        }
        Some(InterPodAffinityState {
            existing_anti_affinity,
            affinity,
            anti_affinity,
            matches_own_affinity,
        })
    }

    pub fn check(&self, pod: &PodInfo, node: &NodeInfo) -> Result<(), FilterFailure> {
        if let Some(terms) = pod.affinity.as_deref() {
            if !self.satisfies_affinity(&terms.required_affinity, node) {
                return Err(FilterFailure::PodAffinity);
            }
            if !self.anti_affinity.is_empty() {
                for term in &terms.required_anti_affinity {
                    if let Some(value) = node.labels.get(&term.topology_key) {
                        if self.anti_affinity.get(&term.topology_key, value) > 0 {
                            return Err(FilterFailure::PodAntiAffinity);
                        }
                    }
                }
            }
        }
        if self.existing_anti_affinity.any_positive_on(node) {
            return Err(FilterFailure::ExistingPodsAntiAffinity);
        }
        Ok(())
    }

    /// Every term needs its topology label on the node and a matching pod in that domain —
    /// unless no pod anywhere matches and the pod matches its own terms (the first replica of
    /// a self-affine group).
    fn satisfies_affinity(&self, terms: &[AffinityTerm], node: &NodeInfo) -> bool {
        let mut pods_exist = true;
        for term in terms {
            match node.labels.get(&term.topology_key) {
                None => return false,
                Some(value) => {
                    if self.affinity.get(&term.topology_key, value) <= 0 {
                        pods_exist = false;
                    }
                }
            }
        }
        pods_exist || (self.affinity.is_empty() && self.matches_own_affinity)
    }
}

fn matches_all(
    terms: &[AffinityTerm],
    pod: &PodInfo,
    namespace_labels: &crate::selector::Labels,
) -> bool {
    terms
        .iter()
        .all(|term| term.matches(&pod.namespace, &pod.labels, namespace_labels))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::{pod, pod_info, ready_node};
    use k8s_openapi::api::core::v1::{Node, Pod};
    use serde_json::json;

    fn nodes() -> Vec<Node> {
        vec![
            ready_node("a1", "8", "16Gi", json!({"zone": "a"})),
            ready_node("a2", "8", "16Gi", json!({"zone": "a"})),
            ready_node("b1", "8", "16Gi", json!({"zone": "b"})),
            ready_node("nozone", "8", "16Gi", json!({})),
        ]
    }

    fn running(
        name: &str,
        node: &str,
        labels: serde_json::Value,
        affinity: serde_json::Value,
    ) -> Pod {
        pod(json!({"metadata": {"name": name, "labels": labels},
                   "spec": {"nodeName": node, "containers": [], "affinity": affinity}}))
    }

    fn incoming(labels: serde_json::Value, affinity: serde_json::Value) -> PodInfo {
        pod_info(
            json!({"metadata": {"name": "new", "labels": labels}, "spec": {"containers": [], "affinity": affinity}}),
        )
    }

    fn outcome(snapshot: &Snapshot, pod: &PodInfo) -> HashMap<String, Result<(), FilterFailure>> {
        let state = InterPodAffinityState::prepare(snapshot, pod);
        snapshot
            .visit_order()
            .iter()
            .map(|&id| {
                let node = snapshot.node(id).unwrap();
                let result = match &state {
                    Some(state) => state.check(pod, node),
                    None => Ok(()),
                };
                (node.name.clone(), result)
            })
            .collect()
    }

    fn required(kind: &str, key: &str, labels: serde_json::Value) -> serde_json::Value {
        json!({kind: {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": key, "labelSelector": {"matchLabels": labels}}
        ]}})
    }

    #[test]
    fn affinity_needs_a_matching_pod_in_the_domain() {
        let snapshot = Snapshot::from_objects(
            &nodes(),
            &[running("db", "a1", json!({"app": "db"}), json!(null))],
        );
        let pod = incoming(
            json!({"app": "web"}),
            required("podAffinity", "zone", json!({"app": "db"})),
        );
        let result = outcome(&snapshot, &pod);
        assert_eq!(result["a1"], Ok(()));
        assert_eq!(result["a2"], Ok(()), "same zone as the db pod");
        assert_eq!(result["b1"], Err(FilterFailure::PodAffinity));
        assert_eq!(
            result["nozone"],
            Err(FilterFailure::PodAffinity),
            "topology label missing"
        );
    }

    #[test]
    fn the_first_of_a_self_affine_group_may_go_anywhere_with_the_label() {
        let snapshot = Snapshot::from_objects(&nodes(), &[]);
        let pod = incoming(
            json!({"app": "web"}),
            required("podAffinity", "zone", json!({"app": "web"})),
        );
        let result = outcome(&snapshot, &pod);
        assert_eq!(result["a1"], Ok(()));
        assert_eq!(result["b1"], Ok(()));
        assert_eq!(result["nozone"], Err(FilterFailure::PodAffinity));
        // Not self-matching: nowhere.
        let other = incoming(
            json!({"app": "web"}),
            required("podAffinity", "zone", json!({"app": "db"})),
        );
        assert_eq!(
            outcome(&snapshot, &other)["a1"],
            Err(FilterFailure::PodAffinity)
        );
    }

    #[test]
    fn anti_affinity_avoids_domains_with_matching_pods() {
        let snapshot = Snapshot::from_objects(
            &nodes(),
            &[running("w1", "a1", json!({"app": "web"}), json!(null))],
        );
        let pod = incoming(
            json!({"app": "web"}),
            required(
                "podAntiAffinity",
                "kubernetes.io/hostname",
                json!({"app": "web"}),
            ),
        );
        let result = outcome(&snapshot, &pod);
        assert_eq!(result["a1"], Err(FilterFailure::PodAntiAffinity));
        assert_eq!(result["a2"], Ok(()));
        let by_zone = incoming(
            json!({"app": "web"}),
            required("podAntiAffinity", "zone", json!({"app": "web"})),
        );
        let result = outcome(&snapshot, &by_zone);
        assert_eq!(result["a2"], Err(FilterFailure::PodAntiAffinity));
        assert_eq!(result["b1"], Ok(()));
        assert_eq!(
            result["nozone"],
            Ok(()),
            "no zone label: no domain to collide in"
        );
    }

    #[test]
    fn existing_pods_anti_affinity_keeps_the_pod_away() {
        let snapshot = Snapshot::from_objects(
            &nodes(),
            &[running(
                "loner",
                "a1",
                json!({"app": "loner"}),
                required("podAntiAffinity", "zone", json!({"app": "web"})),
            )],
        );
        let pod = incoming(json!({"app": "web"}), json!(null));
        let result = outcome(&snapshot, &pod);
        assert_eq!(result["a1"], Err(FilterFailure::ExistingPodsAntiAffinity));
        assert_eq!(result["a2"], Err(FilterFailure::ExistingPodsAntiAffinity));
        assert_eq!(result["b1"], Ok(()));
        // A pod the term does not select is unaffected, and so is one in another namespace.
        assert_eq!(
            outcome(&snapshot, &incoming(json!({"app": "db"}), json!(null)))["a1"],
            Ok(())
        );
        let mut elsewhere = incoming(json!({"app": "web"}), json!(null));
        elsewhere.namespace = "other".into();
        assert_eq!(outcome(&snapshot, &elsewhere)["a1"], Ok(()));
    }

    #[test]
    fn affinity_terms_across_namespaces() {
        let mut db = running("db", "b1", json!({"app": "db"}), json!(null));
        db.metadata.namespace = Some("data".into());
        let mut snapshot = Snapshot::from_objects(&nodes(), &[db]);
        let listed = incoming(
            json!({}),
            json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": "zone", "namespaces": ["data"], "labelSelector": {"matchLabels": {"app": "db"}}}]}}),
        );
        assert_eq!(outcome(&snapshot, &listed)["b1"], Ok(()));
        assert_eq!(
            outcome(&snapshot, &listed)["a1"],
            Err(FilterFailure::PodAffinity)
        );

        let by_label = incoming(
            json!({}),
            json!({"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"topologyKey": "zone", "namespaceSelector": {"matchLabels": {"tier": "data"}}, "labelSelector": {"matchLabels": {"app": "db"}}}]}}),
        );
        assert_eq!(
            outcome(&snapshot, &by_label)["b1"],
            Err(FilterFailure::PodAffinity),
            "namespace labels unknown"
        );
        snapshot.upsert_namespace(
            &serde_json::from_value(
                json!({"metadata": {"name": "data", "labels": {"tier": "data"}}}),
            )
            .unwrap(),
        );
        assert_eq!(outcome(&snapshot, &by_label)["b1"], Ok(()));
    }

    #[test]
    fn failures_report_affinity_before_anti_affinity_before_existing() {
        let snapshot = Snapshot::from_objects(
            &nodes(),
            &[
                running("w1", "a1", json!({"app": "web"}), json!(null)),
                running(
                    "guard",
                    "a1",
                    json!({"app": "guard"}),
                    required(
                        "podAntiAffinity",
                        "kubernetes.io/hostname",
                        json!({"app": "web"}),
                    ),
                ),
            ],
        );
        let anti = incoming(
            json!({"app": "web"}),
            required(
                "podAntiAffinity",
                "kubernetes.io/hostname",
                json!({"app": "web"}),
            ),
        );
        assert_eq!(
            outcome(&snapshot, &anti)["a1"],
            Err(FilterFailure::PodAntiAffinity)
        );
        let plain = incoming(json!({"app": "web"}), json!(null));
        assert_eq!(
            outcome(&snapshot, &plain)["a1"],
            Err(FilterFailure::ExistingPodsAntiAffinity)
        );
        assert_eq!(outcome(&snapshot, &plain)["a2"], Ok(()));
    }
}
