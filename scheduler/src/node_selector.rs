//! A pod's constraints on node labels and names: `spec.nodeSelector` and node affinity
//! (required terms ORed, expressions within a term ANDed, `matchFields` on `metadata.name`),
//! evaluated as component-helpers' `nodeaffinity` package does.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{NodeSelectorTerm as ApiTerm, PodSpec, PreferredSchedulingTerm};

use crate::selector::{Labels, Requirement, SelectorError};

const NODE_NAME_FIELD: &str = "metadata.name";

/// A `matchFields` requirement; only `metadata.name` with In/NotIn of one value exists.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NameRequirement {
    Is(String),
    IsNot(String),
}

/// One parsed node selector term. A term that failed to parse matches no node (the
/// "lazy error" behaviour kept for backwards compatibility), without spoiling other terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeSelectorTerm {
    labels: Option<Vec<Requirement>>,
    names: Option<Vec<NameRequirement>>,
    parse_error: Option<String>,
}

impl NodeSelectorTerm {
    /// Parses a term; `None` for an empty term, which selects nothing and is skipped.
    fn parse(term: &ApiTerm) -> Option<Self> {
        let expressions = term.match_expressions.as_deref().unwrap_or_default();
        let fields = term.match_fields.as_deref().unwrap_or_default();
        if expressions.is_empty() && fields.is_empty() {
            return None;
        }
        let mut parsed = NodeSelectorTerm {
            labels: None,
            names: None,
            parse_error: None,
        };
        if !expressions.is_empty() {
            let labels: Result<Vec<Requirement>, SelectorError> = expressions
                .iter()
                .map(Requirement::from_node_selector)
                .collect();
            match labels {
                Ok(labels) => parsed.labels = Some(labels),
                Err(error) => parsed.parse_error = Some(error.to_string()),
            }
        }
        if !fields.is_empty() {
            let mut names = Vec::new();
            for field in fields {
                let values = field.values.as_deref().unwrap_or_default();
                let requirement = match (field.key.as_str(), field.operator.as_str(), values) {
                    (NODE_NAME_FIELD, "In", [name]) => NameRequirement::Is(name.clone()),
                    (NODE_NAME_FIELD, "NotIn", [name]) => NameRequirement::IsNot(name.clone()),
                    _ => {
                        parsed.parse_error = Some(format!(
                            "unsupported field selector {} {} {:?}",
                            field.key, field.operator, values
                        ));
                        break;
                    }
                };
                names.push(requirement);
            }
            parsed.names = Some(names);
        }
        Some(parsed)
    }

    pub fn matches(&self, node_name: &str, labels: &Labels) -> bool {
        if self.parse_error.is_some() {
            return false;
        }
        if let Some(requirements) = &self.labels {
            if !requirements.iter().all(|r| r.matches(labels)) {
                return false;
            }
        }
        if let Some(names) = &self.names {
            let names_match = names.iter().all(|requirement| match requirement {
                NameRequirement::Is(name) => name == node_name,
                NameRequirement::IsNot(name) => name != node_name,
            });
            if !names_match {
                return false;
            }
        }
        true
    }
}

/// Which node names the required terms allow, before any node is looked at (the NodeAffinity
/// PreFilter): only terms whose every path goes through `metadata.name In` narrow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NodeNameRestriction {
    AnyNode,
    Only(BTreeSet<String>),
}

/// `spec.nodeSelector` plus the required node affinity terms.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RequiredNodeAffinity {
    node_selector: Vec<Requirement>,
    /// `None` when the pod has no required node affinity; `Some(empty)` when every term was
    /// empty, which matches no node.
    terms: Option<Vec<NodeSelectorTerm>>,
    restriction: Option<BTreeSet<String>>,
}

impl RequiredNodeAffinity {
    pub fn from_spec(spec: &PodSpec) -> Self {
        let node_selector = spec
            .node_selector
            .iter()
            .flatten()
            .map(|(key, value)| Requirement::equals(key, value))
            .collect();
        let required = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|na| {
                na.required_during_scheduling_ignored_during_execution
                    .as_ref()
            });
        let terms = required.map(|selector| {
            selector
                .node_selector_terms
                .iter()
                .filter_map(NodeSelectorTerm::parse)
                .collect()
        });
        let restriction =
            required.and_then(|selector| name_restriction(&selector.node_selector_terms));
        RequiredNodeAffinity {
            node_selector,
            terms,
            restriction,
        }
    }

    /// True when the pod constrains nodes at all (otherwise the filter is skipped).
    pub fn is_constrained(&self) -> bool {
        !self.node_selector.is_empty() || self.terms.is_some()
    }

    pub fn matches(&self, node_name: &str, labels: &Labels) -> bool {
        if !self.node_selector.iter().all(|r| r.matches(labels)) {
            return false;
        }
        match &self.terms {
            None => true,
            Some(terms) => terms.iter().any(|term| term.matches(node_name, labels)),
        }
    }

    pub fn name_restriction(&self) -> NodeNameRestriction {
        match &self.restriction {
            None => NodeNameRestriction::AnyNode,
            Some(names) => NodeNameRestriction::Only(names.clone()),
        }
    }
}

/// The NodeAffinity PreFilter's reading of the terms: the union over terms of the
/// intersection of each term's `metadata.name In` values; any term without one allows every
/// node. `None` means no restriction.
fn name_restriction(terms: &[ApiTerm]) -> Option<BTreeSet<String>> {
    if terms.is_empty() {
        return None;
    }
    let mut union = BTreeSet::new();
    for term in terms {
        let mut term_names: Option<BTreeSet<String>> = None;
        for field in term.match_fields.iter().flatten() {
            if field.key == NODE_NAME_FIELD && field.operator == "In" {
                let values: BTreeSet<String> = field.values.iter().flatten().cloned().collect();
                term_names = Some(match term_names {
                    None => values,
                    Some(previous) => previous.intersection(&values).cloned().collect(),
                });
            }
        }
        union.extend(term_names?);
    }
    Some(union)
}

/// The preferred node affinity terms with their weights.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PreferredNodeAffinity {
    terms: Vec<(i64, NodeSelectorTerm)>,
}

impl PreferredNodeAffinity {
    pub fn from_terms(terms: &[PreferredSchedulingTerm]) -> Self {
        PreferredNodeAffinity {
            terms: terms
                .iter()
                .filter(|term| term.weight != 0)
                .filter_map(|term| {
                    NodeSelectorTerm::parse(&term.preference).map(|t| (i64::from(term.weight), t))
                })
                .collect(),
        }
    }

    pub fn from_spec(spec: &PodSpec) -> Self {
        let terms = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|na| {
                na.preferred_during_scheduling_ignored_during_execution
                    .as_deref()
            })
            .unwrap_or_default();
        Self::from_terms(terms)
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Sum of the weights of the terms the node matches.
    pub fn score(&self, node_name: &str, labels: &Labels) -> i64 {
        self.terms
            .iter()
            .filter(|(_, term)| term.matches(node_name, labels))
            .map(|(weight, _)| weight)
            .sum()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::pod;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn required(spec: serde_json::Value) -> RequiredNodeAffinity {
        let pod = pod(json!({"metadata": {"name": "p"}, "spec": spec}));
        RequiredNodeAffinity::from_spec(pod.spec.as_ref().unwrap())
    }

    fn affinity(terms: serde_json::Value) -> RequiredNodeAffinity {
        required(json!({"containers": [], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}
        }}}))
    }

    #[test]
    fn node_selector_needs_every_label() {
        let r = required(json!({"containers": [], "nodeSelector": {"disk": "ssd", "zone": "a"}}));
        assert!(r.is_constrained());
        assert!(r.matches("n", &labels(&[("disk", "ssd"), ("zone", "a"), ("x", "y")])));
        assert!(!r.matches("n", &labels(&[("disk", "ssd")])));
        assert!(!r.matches("n", &labels(&[("disk", "hdd"), ("zone", "a")])));
        assert!(!required(json!({"containers": []})).is_constrained());
    }

    #[test]
    fn terms_are_ored_and_expressions_anded() {
        let r = affinity(json!([
            {"matchExpressions": [
                {"key": "disk", "operator": "In", "values": ["ssd"]},
                {"key": "cores", "operator": "Gt", "values": ["4"]}
            ]},
            {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}
        ]));
        assert!(r.matches("n", &labels(&[("disk", "ssd"), ("cores", "8")])));
        assert!(!r.matches("n", &labels(&[("disk", "ssd"), ("cores", "2")])));
        assert!(r.matches("n", &labels(&[("gpu", "")])));
        assert!(!r.matches("n", &labels(&[])));
    }

    #[test]
    fn empty_and_invalid_terms_match_nothing() {
        assert!(!affinity(json!([{}])).matches("n", &labels(&[])));
        assert!(!affinity(json!([])).matches("n", &labels(&[])));
        let r = affinity(json!([
            {"matchExpressions": [{"key": "a", "operator": "Bogus"}]},
            {"matchExpressions": [{"key": "b", "operator": "Exists"}]}
        ]));
        assert!(!r.matches("n", &labels(&[("a", "1")])));
        assert!(
            r.matches("n", &labels(&[("b", "1")])),
            "a bad term does not spoil the others"
        );
    }

    #[test]
    fn match_fields_select_node_names() {
        let r = affinity(
            json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]),
        );
        assert!(r.matches("n1", &labels(&[])));
        assert!(!r.matches("n2", &labels(&[])));
        assert_eq!(
            r.name_restriction(),
            NodeNameRestriction::Only(BTreeSet::from(["n1".to_string()]))
        );
        let not = affinity(
            json!([{"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]}]),
        );
        assert!(!not.matches("n1", &labels(&[])));
        assert!(not.matches("n2", &labels(&[])));
        assert_eq!(not.name_restriction(), NodeNameRestriction::AnyNode);
    }

    #[test]
    fn name_restriction_unions_terms_and_intersects_within_a_term() {
        let r = affinity(json!([
            {"matchFields": [
                {"key": "metadata.name", "operator": "In", "values": ["a", "b"]},
                {"key": "metadata.name", "operator": "In", "values": ["b", "c"]}
            ]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["d"]}]}
        ]));
        assert_eq!(
            r.name_restriction(),
            NodeNameRestriction::Only(BTreeSet::from(["b".to_string(), "d".to_string()]))
        );
        let conflict = affinity(json!([{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": ["a"]},
            {"key": "metadata.name", "operator": "In", "values": ["b"]}
        ]}]));
        assert_eq!(
            conflict.name_restriction(),
            NodeNameRestriction::Only(BTreeSet::new())
        );
        let open = affinity(json!([
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a"]}]},
            {"matchExpressions": [{"key": "x", "operator": "Exists"}]}
        ]));
        assert_eq!(open.name_restriction(), NodeNameRestriction::AnyNode);
    }

    #[test]
    fn preferred_terms_sum_weights() {
        let pod = pod(
            json!({"metadata": {"name": "p"}, "spec": {"containers": [], "affinity": {"nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 5, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}},
                    {"weight": 2, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}},
                    {"weight": 9, "preference": {}}
                ]
            }}}}),
        );
        let preferred = PreferredNodeAffinity::from_spec(pod.spec.as_ref().unwrap());
        assert_eq!(
            preferred.score("n", &labels(&[("disk", "ssd"), ("zone", "a")])),
            7
        );
        assert_eq!(preferred.score("n", &labels(&[("zone", "a")])), 2);
        assert_eq!(preferred.score("n", &labels(&[])), 0);
    }
}
