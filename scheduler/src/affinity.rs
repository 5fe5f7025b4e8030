//! Inter-pod affinity terms: which pods a term selects (label selector, namespaces,
//! namespace selector) and over which topology (`topologyKey`).
//!
//! `matchLabelKeys` / `mismatchLabelKeys` are folded into the label selector here, as
//! kube-apiserver does when it admits a pod (Shoal's API server does not).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{PodAffinityTerm, PodSpec, WeightedPodAffinityTerm};

use crate::selector::{Labels, Requirement, Selector};

/// One parsed affinity or anti-affinity term. Equal terms (same selector, namespaces and key)
/// compare equal so the snapshot can group the terms of many replicas into one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct AffinityTerm {
    /// Namespaces named by the term; the owning pod's own when it names none and has no
    /// namespace selector.
    pub namespaces: BTreeSet<String>,
    /// `namespaceSelector`: missing selects no namespace, `{}` all of them.
    pub namespace_selector: Selector,
    pub selector: Selector,
    pub topology_key: String,
}

impl AffinityTerm {
    /// Parses a term of a pod in `namespace` with `labels`; an invalid selector becomes a
    /// select-nothing one and is noted.
    pub fn parse(
        namespace: &str,
        labels: &Labels,
        term: &PodAffinityTerm,
        notes: &mut Vec<String>,
    ) -> Self {
        let mut selector = Selector::from_label_selector(term.label_selector.as_ref())
            .unwrap_or_else(|error| {
                notes.push(format!(
                    "pod affinity term label selector: {error}; matches nothing"
                ));
                Selector::Nothing
            });
        for key in term.match_label_keys.iter().flatten() {
            if let Some(value) = labels.get(key) {
                selector.and(Requirement::equals(key, value));
            }
        }
        for key in term.mismatch_label_keys.iter().flatten() {
            if let Some(value) = labels.get(key) {
                selector.and(Requirement::not_equals(key, value));
            }
        }
        let namespace_selector = Selector::from_label_selector(term.namespace_selector.as_ref())
            .unwrap_or_else(|error| {
                notes.push(format!(
                    "pod affinity term namespace selector: {error}; matches nothing"
                ));
                Selector::Nothing
            });
        let listed = term.namespaces.as_deref().unwrap_or_default();
        let namespaces = if listed.is_empty() && term.namespace_selector.is_none() {
            BTreeSet::from([namespace.to_string()])
        } else {
            listed.iter().cloned().collect()
        };
        AffinityTerm {
            namespaces,
            namespace_selector,
            selector,
            topology_key: term.topology_key.clone(),
        }
    }

    /// Whether the term selects a pod in `namespace` with `labels`; `namespace_labels` are the
    /// labels of that namespace (empty when unknown).
    pub fn matches(&self, namespace: &str, labels: &Labels, namespace_labels: &Labels) -> bool {
        (self.namespaces.contains(namespace) || self.namespace_selector.matches(namespace_labels))
            && self.selector.matches(labels)
    }

    /// True when the term can reach namespaces beyond the ones it lists.
    pub fn selects_namespaces_by_label(&self) -> bool {
        self.namespace_selector != Selector::Nothing
    }
}

/// A preferred term with its weight.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct WeightedTerm {
    pub weight: i64,
    pub term: AffinityTerm,
}

/// All inter-pod affinity terms of one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PodAffinityTerms {
    pub required_affinity: Vec<AffinityTerm>,
    pub required_anti_affinity: Vec<AffinityTerm>,
    pub preferred_affinity: Vec<WeightedTerm>,
    pub preferred_anti_affinity: Vec<WeightedTerm>,
}

impl PodAffinityTerms {
    /// Parses the pod's terms; `None` when it declares neither pod affinity nor anti-affinity.
    pub fn from_spec(
        namespace: &str,
        labels: &Labels,
        spec: &PodSpec,
        notes: &mut Vec<String>,
    ) -> Option<Self> {
        let affinity = spec.affinity.as_ref()?;
        if affinity.pod_affinity.is_none() && affinity.pod_anti_affinity.is_none() {
            return None;
        }
        let mut required = |terms: Option<&Vec<PodAffinityTerm>>| -> Vec<AffinityTerm> {
            terms
                .into_iter()
                .flatten()
                .map(|term| AffinityTerm::parse(namespace, labels, term, notes))
                .collect()
        };
        let required_affinity = required(affinity.pod_affinity.as_ref().and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        }));
        let required_anti_affinity = required(affinity.pod_anti_affinity.as_ref().and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        }));
        let mut preferred = |terms: Option<&Vec<WeightedPodAffinityTerm>>| -> Vec<WeightedTerm> {
            terms
                .into_iter()
                .flatten()
                .map(|weighted| WeightedTerm {
                    weight: i64::from(weighted.weight),
                    term: AffinityTerm::parse(
                        namespace,
                        labels,
                        &weighted.pod_affinity_term,
                        notes,
                    ),
                })
                .collect()
        };
        let preferred_affinity = preferred(affinity.pod_affinity.as_ref().and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        }));
        let preferred_anti_affinity =
            preferred(affinity.pod_anti_affinity.as_ref().and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            }));
        Some(PodAffinityTerms {
            required_affinity,
            required_anti_affinity,
            preferred_affinity,
            preferred_anti_affinity,
        })
    }

    pub fn has_required(&self) -> bool {
        !self.required_affinity.is_empty() || !self.required_anti_affinity.is_empty()
    }

    pub fn has_preferred(&self) -> bool {
        !self.preferred_affinity.is_empty() || !self.preferred_anti_affinity.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn term(value: serde_json::Value, owner_labels: &Labels) -> AffinityTerm {
        let parsed: PodAffinityTerm = serde_json::from_value(value).unwrap();
        let mut notes = Vec::new();
        let term = AffinityTerm::parse("team-a", owner_labels, &parsed, &mut notes);
        assert!(notes.is_empty(), "{notes:?}");
        term
    }

    #[test]
    fn namespaces_default_to_the_owners() {
        let t = term(
            json!({"topologyKey": "zone", "labelSelector": {"matchLabels": {"app": "db"}}}),
            &Labels::new(),
        );
        let db = labels(&[("app", "db")]);
        assert!(t.matches("team-a", &db, &Labels::new()));
        assert!(!t.matches("team-b", &db, &Labels::new()));
        assert!(!t.matches("team-a", &labels(&[("app", "web")]), &Labels::new()));
    }

    #[test]
    fn listed_namespaces_replace_the_owners() {
        let t = term(
            json!({"topologyKey": "zone", "namespaces": ["team-b"], "labelSelector": {}}),
            &Labels::new(),
        );
        assert!(!t.matches("team-a", &Labels::new(), &Labels::new()));
        assert!(t.matches("team-b", &Labels::new(), &Labels::new()));
    }

    #[test]
    fn namespace_selector_matches_namespace_labels() {
        let all = term(
            json!({"topologyKey": "zone", "namespaceSelector": {}, "labelSelector": {}}),
            &Labels::new(),
        );
        assert!(all.matches("anything", &Labels::new(), &Labels::new()));
        assert!(all.selects_namespaces_by_label());
        let prod = term(
            json!({"topologyKey": "zone", "namespaceSelector": {"matchLabels": {"env": "prod"}}, "labelSelector": {}}),
            &Labels::new(),
        );
        assert!(prod.matches("x", &Labels::new(), &labels(&[("env", "prod")])));
        assert!(
            !prod.matches("team-a", &Labels::new(), &Labels::new()),
            "own namespace is not implied"
        );
    }

    #[test]
    fn missing_label_selector_matches_no_pod() {
        let t = term(json!({"topologyKey": "zone"}), &Labels::new());
        assert!(!t.matches("team-a", &Labels::new(), &Labels::new()));
    }

    #[test]
    fn match_label_keys_fold_into_the_selector() {
        let owner = labels(&[("app", "web"), ("pod-template-hash", "abc")]);
        let t = term(
            json!({"topologyKey": "zone", "labelSelector": {"matchLabels": {"app": "web"}},
                   "matchLabelKeys": ["pod-template-hash", "absent"], "mismatchLabelKeys": []}),
            &owner,
        );
        assert!(t.matches("team-a", &owner, &Labels::new()));
        assert!(!t.matches(
            "team-a",
            &labels(&[("app", "web"), ("pod-template-hash", "old")]),
            &Labels::new()
        ));

        let other_tenants = term(
            json!({"topologyKey": "zone", "labelSelector": {}, "mismatchLabelKeys": ["tenant"]}),
            &labels(&[("tenant", "t1")]),
        );
        assert!(!other_tenants.matches("team-a", &labels(&[("tenant", "t1")]), &Labels::new()));
        assert!(other_tenants.matches("team-a", &labels(&[("tenant", "t2")]), &Labels::new()));
    }
}
