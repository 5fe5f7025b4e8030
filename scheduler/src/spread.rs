//! Topology spread constraints as kube-scheduler reads them: a pod's own
//! `topologySpreadConstraints` (with `matchLabelKeys` merged into the selector and the
//! node-inclusion policy defaults), or — for a pod that declares none — the system default
//! soft constraints that spread a controller's replicas over hosts and zones.

use k8s_openapi::api::core::v1::{PodSpec, TopologySpreadConstraint};

use crate::selector::{Labels, Requirement, Selector};

pub const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";

/// Which existing pods a constraint counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SpreadSelector {
    /// Pods in the incoming pod's namespace matching the selector (an empty or missing
    /// selector counts none, as `countPodsMatchSelector` does).
    Labels(Selector),
    /// Pods with the same controller (system default spreading, see
    /// [`system_default_constraints`]).
    SameController(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpreadConstraint {
    pub max_skew: i64,
    pub topology_key: String,
    pub selector: SpreadSelector,
    pub min_domains: i64,
    /// `nodeAffinityPolicy: Honor` (the default): only nodes matching the pod's required node
    /// affinity count as domains.
    pub honor_node_affinity: bool,
    /// `nodeTaintsPolicy: Honor` (default Ignore): nodes with taints the pod does not
    /// tolerate do not count.
    pub honor_node_taints: bool,
}

impl SpreadConstraint {
    /// Whether the incoming pod itself matches the selector (`selfMatchNum`).
    pub fn matches_self(&self, labels: &Labels) -> bool {
        match &self.selector {
            SpreadSelector::Labels(selector) => selector.matches(labels),
            SpreadSelector::SameController(_) => true,
        }
    }
}

/// A pod's spread constraints split by `whenUnsatisfiable`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PodSpreadConstraints {
    /// `DoNotSchedule`: enforced by the filter.
    pub hard: Vec<SpreadConstraint>,
    /// `ScheduleAnyway`, or the system defaults: used by the score.
    pub soft: Vec<SpreadConstraint>,
    /// True when the pod declared constraints itself (then every topology key must be on a
    /// node for it to be scored, and no defaults apply).
    pub declared: bool,
}

impl PodSpreadConstraints {
    pub fn from_spec(
        labels: &Labels,
        spec: &PodSpec,
        controller: Option<&str>,
        notes: &mut Vec<String>,
    ) -> Self {
        let declared = spec
            .topology_spread_constraints
            .as_deref()
            .unwrap_or_default();
        if declared.is_empty() {
            return PodSpreadConstraints {
                hard: Vec::new(),
                soft: controller
                    .map(system_default_constraints)
                    .unwrap_or_default(),
                declared: false,
            };
        }
        let mut constraints = PodSpreadConstraints {
            declared: true,
            ..Default::default()
        };
        for constraint in declared {
            let parsed = parse_constraint(labels, constraint, notes);
            match constraint.when_unsatisfiable.as_str() {
                "DoNotSchedule" => constraints.hard.push(parsed),
                "ScheduleAnyway" => constraints.soft.push(parsed),
                other => notes.push(format!(
                    "topology spread constraint on {:?} has unknown whenUnsatisfiable {other:?}; ignored",
                    constraint.topology_key
                )),
            }
        }
        constraints
    }
}

fn parse_constraint(
    labels: &Labels,
    constraint: &TopologySpreadConstraint,
    notes: &mut Vec<String>,
) -> SpreadConstraint {
    let mut selector = Selector::from_label_selector(constraint.label_selector.as_ref())
        .unwrap_or_else(|error| {
            notes.push(format!(
                "topology spread label selector: {error}; matches nothing"
            ));
            Selector::Nothing
        });
    // mergeLabelSetWithSelector: the pod's values for matchLabelKeys, plus the selector's
    // requirements (a missing selector contributes none).
    let match_label_keys: Vec<Requirement> = constraint
        .match_label_keys
        .iter()
        .flatten()
        .filter_map(|key| labels.get(key).map(|value| Requirement::equals(key, value)))
        .collect();
    if !match_label_keys.is_empty() {
        let mut merged = Selector::everything();
        for requirement in match_label_keys
            .into_iter()
            .chain(selector.requirements().iter().cloned())
        {
            merged.and(requirement);
        }
        selector = merged;
    }
    SpreadConstraint {
        max_skew: i64::from(constraint.max_skew),
        topology_key: constraint.topology_key.clone(),
        selector: SpreadSelector::Labels(selector),
        min_domains: i64::from(constraint.min_domains.unwrap_or(1)),
        honor_node_affinity: constraint.node_affinity_policy.as_deref() != Some("Ignore"),
        honor_node_taints: constraint.node_taints_policy.as_deref() == Some("Honor"),
    }
}

/// kube-scheduler's system default constraints (`maxSkew` 3 over hosts, 5 over zones, both
/// ScheduleAnyway), whose selector is the one of the Service/ReplicaSet/StatefulSet owning
/// the pod. Shoal approximates "pods that selector picks" by "pods with the same controller
/// owner", which is what that selector means for workloads without hand-made overlaps.
pub(crate) fn system_default_constraints(controller_uid: &str) -> Vec<SpreadConstraint> {
    [(3, LABEL_HOSTNAME), (5, LABEL_ZONE)]
        .into_iter()
        .map(|(max_skew, key)| SpreadConstraint {
            max_skew,
            topology_key: key.to_string(),
            selector: SpreadSelector::SameController(controller_uid.to_string()),
            min_domains: 1,
            honor_node_affinity: true,
            honor_node_taints: false,
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::pod;
    use serde_json::json;

    fn constraints_of(spec: serde_json::Value, controller: Option<&str>) -> PodSpreadConstraints {
        let pod = pod(
            json!({"metadata": {"name": "p", "labels": {"app": "web", "hash": "h1"}}, "spec": spec}),
        );
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let mut notes = Vec::new();
        PodSpreadConstraints::from_spec(&labels, pod.spec.as_ref().unwrap(), controller, &mut notes)
    }

    #[test]
    fn declared_constraints_split_by_when_unsatisfiable_with_policy_defaults() {
        let c = constraints_of(
            json!({"containers": [], "topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}, "minDomains": 3},
                {"maxSkew": 2, "topologyKey": "host", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {}, "nodeAffinityPolicy": "Ignore", "nodeTaintsPolicy": "Honor"}
            ]}),
            Some("rs-uid"),
        );
        assert!(c.declared);
        assert_eq!(c.hard.len(), 1);
        assert_eq!(c.soft.len(), 1, "declared constraints replace the defaults");
        assert_eq!(c.hard[0].min_domains, 3);
        assert!(c.hard[0].honor_node_affinity && !c.hard[0].honor_node_taints);
        assert!(!c.soft[0].honor_node_affinity && c.soft[0].honor_node_taints);
    }

    #[test]
    fn match_label_keys_narrow_the_selector() {
        let c = constraints_of(
            json!({"containers": [], "topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule",
                 "labelSelector": {"matchLabels": {"app": "web"}}, "matchLabelKeys": ["hash"]}
            ]}),
            None,
        );
        let SpreadSelector::Labels(selector) = &c.hard[0].selector else {
            panic!("label selector expected");
        };
        let labels = |hash: &str| {
            Labels::from([
                ("app".to_string(), "web".to_string()),
                ("hash".to_string(), hash.to_string()),
            ])
        };
        assert!(selector.matches(&labels("h1")));
        assert!(!selector.matches(&labels("h2")));
    }

    #[test]
    fn controller_pods_without_constraints_get_system_defaults() {
        let c = constraints_of(json!({"containers": []}), Some("rs-uid"));
        assert!(!c.declared);
        assert!(c.hard.is_empty());
        assert_eq!(c.soft, system_default_constraints("rs-uid"));
        assert_eq!(c.soft[0].topology_key, LABEL_HOSTNAME);
        assert_eq!(c.soft[0].max_skew, 3);
        assert_eq!(c.soft[1].topology_key, LABEL_ZONE);
        assert_eq!(c.soft[1].max_skew, 5);
        assert!(constraints_of(json!({"containers": []}), None)
            .soft
            .is_empty());
    }
}
