//! Label selectors as the controllers evaluate them: `metav1.LabelSelectorAsSelector`
//! semantics, where an absent selector selects nothing and an empty one selects everything.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// A selector the API would have rejected; the loop reports it (event/condition) and
/// does nothing else for the object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("{operator:?} is not a valid label selector operator")]
    UnknownOperator { operator: String },
    #[error("for 'in' and 'notin' operators, values set can't be empty (key {key:?})")]
    MissingValues { key: String },
    #[error("values set must be empty for 'exists' and 'doesnotexist' (key {key:?})")]
    UnexpectedValues { key: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals(key, value) => labels.get(key) == Some(value),
            Requirement::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
            // NotIn matches objects without the key, as in Kubernetes.
            Requirement::NotIn(key, values) => labels.get(key).is_none_or(|v| !values.contains(v)),
            Requirement::Exists(key) => labels.contains_key(key),
            Requirement::DoesNotExist(key) => !labels.contains_key(key),
        }
    }
}

/// A parsed label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// `None` for an absent selector, which matches no object; otherwise all requirements
    /// must hold, and no requirement at all matches every object.
    requirements: Option<Vec<Requirement>>,
}

impl Selector {
    /// Parses an API label selector (`None` selects nothing, `{}` selects everything).
    pub fn parse(selector: Option<&LabelSelector>) -> Result<Selector, SelectorError> {
        let Some(selector) = selector else {
            return Ok(Selector { requirements: None });
        };
        let mut requirements = Vec::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            requirements.push(Requirement::Equals(key.clone(), value.clone()));
        }
        for expression in selector.match_expressions.iter().flatten() {
            let key = expression.key.clone();
            let values = expression.values.clone().unwrap_or_default();
            let requirement = match expression.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(SelectorError::MissingValues { key })
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(SelectorError::UnexpectedValues { key })
                }
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => {
                    return Err(SelectorError::UnknownOperator {
                        operator: other.to_string(),
                    })
                }
            };
            requirements.push(requirement);
        }
        Ok(Selector {
            requirements: Some(requirements),
        })
    }

    /// True for a present selector without requirements (Kubernetes refuses to let a
    /// Deployment select every pod).
    pub fn is_everything(&self) -> bool {
        self.requirements.as_ref().is_some_and(Vec::is_empty)
    }

    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        let Some(requirements) = &self.requirements else {
            return false;
        };
        let empty = BTreeMap::new();
        let labels = labels.unwrap_or(&empty);
        requirements.iter().all(|r| r.matches(labels))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn selector(json: serde_json::Value) -> Result<Selector, SelectorError> {
        let parsed: LabelSelector = serde_json::from_value(json).unwrap();
        Selector::parse(Some(&parsed))
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn absent_selects_nothing_and_empty_selects_everything() {
        assert!(!Selector::parse(None).unwrap().matches(Some(&labels(&[]))));
        let everything = selector(serde_json::json!({})).unwrap();
        assert!(everything.is_everything());
        assert!(everything.matches(None));
    }

    #[test]
    fn match_labels_and_expressions_all_apply() {
        let s = selector(serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["fe", "be"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "env", "operator": "NotIn", "values": ["dev"]},
                {"key": "team", "operator": "Exists"}
            ]
        }))
        .unwrap();
        assert!(!s.is_everything());
        let good = labels(&[("app", "web"), ("tier", "fe"), ("team", "a")]);
        assert!(s.matches(Some(&good)));
        let mut wrong_tier = good.clone();
        wrong_tier.insert("tier".into(), "db".into());
        assert!(!s.matches(Some(&wrong_tier)));
        let mut canary = good.clone();
        canary.insert("canary".into(), "yes".into());
        assert!(!s.matches(Some(&canary)));
        let mut dev = good.clone();
        dev.insert("env".into(), "dev".into());
        assert!(!s.matches(Some(&dev)));
        let mut no_team = good;
        no_team.remove("team");
        assert!(!s.matches(Some(&no_team)));
    }

    #[test]
    fn invalid_expressions_are_errors() {
        let unknown = selector(serde_json::json!({
            "matchExpressions": [{"key": "a", "operator": "Near"}]
        }));
        assert_eq!(
            unknown,
            Err(SelectorError::UnknownOperator {
                operator: "Near".into()
            })
        );
        let missing = selector(serde_json::json!({
            "matchExpressions": [{"key": "a", "operator": "In", "values": []}]
        }));
        assert_eq!(
            missing,
            Err(SelectorError::MissingValues { key: "a".into() })
        );
        let unexpected = selector(serde_json::json!({
            "matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]
        }));
        assert_eq!(
            unexpected,
            Err(SelectorError::UnexpectedValues { key: "a".into() })
        );
    }
}
