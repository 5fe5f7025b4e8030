//! Label selectors as apimachinery evaluates them: requirements ANDed over a label map, with
//! the two special selectors kept apart — a missing selector selects nothing, an empty one
//! (`{}`) selects everything.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::NodeSelectorRequirement;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

pub(crate) type Labels = BTreeMap<String, String>;

/// Why a selector was rejected (the API server validates these, so seeing one means the
/// object bypassed validation; the scheduler then treats the selector as matching nothing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("unknown operator {operator:?} for key {key:?}")]
    UnknownOperator { key: String, operator: String },
    #[error("operator {operator} for key {key:?} needs at least one value")]
    MissingValues { key: String, operator: String },
    #[error("operator {operator} for key {key:?} takes no values")]
    UnexpectedValues { key: String, operator: String },
    #[error("operator {operator} for key {key:?} needs exactly one integer value")]
    NotOneInteger { key: String, operator: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    GreaterThan(i64),
    LessThan(i64),
}

/// One `key <operator> values` condition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Requirement {
    pub key: String,
    pub operator: Operator,
    /// Sorted and deduplicated, for In/NotIn; empty otherwise.
    pub values: Vec<String>,
}

impl Requirement {
    pub fn equals(key: &str, value: &str) -> Self {
        Requirement {
            key: key.to_string(),
            operator: Operator::In,
            values: vec![value.to_string()],
        }
    }

    pub fn not_equals(key: &str, value: &str) -> Self {
        Requirement {
            key: key.to_string(),
            operator: Operator::NotIn,
            values: vec![value.to_string()],
        }
    }

    /// Builds a requirement from the API's operator name. `allow_numeric` admits `Gt`/`Lt`,
    /// which node selectors have and label selectors do not.
    fn parse(
        key: &str,
        operator: &str,
        values: &[String],
        allow_numeric: bool,
    ) -> Result<Self, SelectorError> {
        let mut sorted = values.to_vec();
        sorted.sort();
        sorted.dedup();
        let named = |op: &str| (key.to_string(), op.to_string());
        let operator = match operator {
            "In" | "NotIn" => {
                if sorted.is_empty() {
                    let (key, operator) = named(operator);
                    return Err(SelectorError::MissingValues { key, operator });
                }
                if operator == "In" {
                    Operator::In
                } else {
                    Operator::NotIn
                }
            }
            "Exists" | "DoesNotExist" => {
                if !sorted.is_empty() {
                    let (key, operator) = named(operator);
                    return Err(SelectorError::UnexpectedValues { key, operator });
                }
                if operator == "Exists" {
                    Operator::Exists
                } else {
                    Operator::DoesNotExist
                }
            }
            "Gt" | "Lt" if allow_numeric => {
                let number = match values {
                    [only] => only.parse::<i64>().ok(),
                    _ => None,
                };
                let Some(number) = number else {
                    let (key, operator) = named(operator);
                    return Err(SelectorError::NotOneInteger { key, operator });
                };
                sorted.clear();
                if operator == "Gt" {
                    Operator::GreaterThan(number)
                } else {
                    Operator::LessThan(number)
                }
            }
            other => {
                let (key, operator) = named(other);
                return Err(SelectorError::UnknownOperator { key, operator });
            }
        };
        Ok(Requirement {
            key: key.to_string(),
            operator,
            values: sorted,
        })
    }

    /// A node selector requirement (`matchExpressions` of node affinity).
    pub fn from_node_selector(
        requirement: &NodeSelectorRequirement,
    ) -> Result<Self, SelectorError> {
        Self::parse(
            &requirement.key,
            &requirement.operator,
            requirement.values.as_deref().unwrap_or_default(),
            true,
        )
    }

    fn has_value(&self, value: &str) -> bool {
        self.values
            .binary_search_by(|candidate| candidate.as_str().cmp(value))
            .is_ok()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match &self.operator {
            Operator::In => value.is_some_and(|v| self.has_value(v)),
            Operator::NotIn => value.is_none_or(|v| !self.has_value(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan(bound) => value
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *bound),
            Operator::LessThan(bound) => value
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *bound),
        }
    }
}

/// A label selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Selector {
    /// Selects no object (a missing selector).
    Nothing,
    /// Selects objects matching every requirement; none selects everything.
    All(Vec<Requirement>),
}

impl Selector {
    pub fn everything() -> Self {
        Selector::All(Vec::new())
    }

    /// `LabelSelectorAsSelector`: `None` selects nothing, `{}` everything.
    pub fn from_label_selector(selector: Option<&LabelSelector>) -> Result<Self, SelectorError> {
        let Some(selector) = selector else {
            return Ok(Selector::Nothing);
        };
        let mut requirements = Vec::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            requirements.push(Requirement::equals(key, value));
        }
        for expression in selector.match_expressions.iter().flatten() {
            requirements.push(Requirement::parse(
                &expression.key,
                &expression.operator,
                expression.values.as_deref().unwrap_or_default(),
                false,
            )?);
        }
        requirements.sort();
        requirements.dedup();
        Ok(Selector::All(requirements))
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        match self {
            Selector::Nothing => false,
            Selector::All(requirements) => requirements.iter().all(|r| r.matches(labels)),
        }
    }

    /// apimachinery's `Selector.Empty()`: true only for the select-everything selector.
    pub fn is_everything(&self) -> bool {
        matches!(self, Selector::All(requirements) if requirements.is_empty())
    }

    /// Adds a requirement (a select-nothing selector stays one).
    pub fn and(&mut self, requirement: Requirement) {
        if let Selector::All(requirements) = self {
            if !requirements.contains(&requirement) {
                requirements.push(requirement);
                requirements.sort();
            }
        }
    }

    pub fn requirements(&self) -> &[Requirement] {
        match self {
            Selector::Nothing => &[],
            Selector::All(requirements) => requirements,
        }
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

    fn selector(value: serde_json::Value) -> Result<Selector, SelectorError> {
        let parsed: LabelSelector = serde_json::from_value(value).unwrap();
        Selector::from_label_selector(Some(&parsed))
    }

    #[test]
    fn missing_selects_nothing_and_empty_selects_everything() {
        let any = labels(&[("app", "web")]);
        assert!(!Selector::from_label_selector(None).unwrap().matches(&any));
        let everything = selector(json!({})).unwrap();
        assert!(everything.matches(&any));
        assert!(everything.matches(&Labels::new()));
        assert!(everything.is_everything());
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let s = selector(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["front", "edge"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "env", "operator": "NotIn", "values": ["prod"]},
                {"key": "team", "operator": "Exists"}
            ]
        }))
        .unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "edge"), ("team", "a")])));
        assert!(s.matches(&labels(&[
            ("app", "web"),
            ("tier", "front"),
            ("team", "a"),
            ("env", "dev")
        ])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "back"), ("team", "a")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "edge")])));
        assert!(!s.matches(&labels(&[
            ("app", "web"),
            ("tier", "edge"),
            ("team", "a"),
            ("canary", "1")
        ])));
        assert!(!s.matches(&labels(&[
            ("app", "web"),
            ("tier", "edge"),
            ("team", "a"),
            ("env", "prod")
        ])));
        assert!(!s.matches(&labels(&[("app", "db"), ("tier", "edge"), ("team", "a")])));
    }

    #[test]
    fn invalid_selectors_are_errors() {
        assert!(matches!(
            selector(json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]})),
            Err(SelectorError::MissingValues { .. })
        ));
        assert!(matches!(
            selector(
                json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]})
            ),
            Err(SelectorError::UnexpectedValues { .. })
        ));
        // Gt/Lt exist only in node selectors.
        assert!(matches!(
            selector(
                json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]})
            ),
            Err(SelectorError::UnknownOperator { .. })
        ));
    }

    #[test]
    fn numeric_node_selector_operators() {
        let requirement = |op: &str, values: &[&str]| {
            let values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
            Requirement::from_node_selector(&NodeSelectorRequirement {
                key: "cores".into(),
                operator: op.into(),
                values: Some(values),
            })
        };
        let gt = requirement("Gt", &["4"]).unwrap();
        assert!(gt.matches(&labels(&[("cores", "8")])));
        assert!(!gt.matches(&labels(&[("cores", "4")])));
        assert!(!gt.matches(&labels(&[("cores", "many")])));
        assert!(!gt.matches(&Labels::new()));
        let lt = requirement("Lt", &["4"]).unwrap();
        assert!(lt.matches(&labels(&[("cores", "-2")])));
        assert!(!lt.matches(&labels(&[("cores", "4")])));
        assert!(matches!(
            requirement("Gt", &["x"]),
            Err(SelectorError::NotOneInteger { .. })
        ));
        assert!(matches!(
            requirement("Lt", &["1", "2"]),
            Err(SelectorError::NotOneInteger { .. })
        ));
    }

    #[test]
    fn and_narrows_but_nothing_stays_nothing() {
        let mut s = Selector::everything();
        s.and(Requirement::equals("app", "web"));
        assert!(s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("app", "db")])));
        let mut nothing = Selector::Nothing;
        nothing.and(Requirement::equals("app", "web"));
        assert_eq!(nothing, Selector::Nothing);
        let mut not = Selector::everything();
        not.and(Requirement::not_equals("app", "web"));
        assert!(not.matches(&Labels::new()));
        assert!(!not.matches(&labels(&[("app", "web")])));
    }
}
