//! Taints and tolerations: which taints a node effectively carries (including the ones the
//! node lifecycle controller would add for a node that is not Ready) and whether a pod's
//! tolerations cover them. Shared by the scheduler (which depends on this crate) and the
//! DaemonSet controller, so both agree on where a pod may go.

use k8s_openapi::api::core::v1::{Node, Toleration as ApiToleration};

pub const NO_SCHEDULE: &str = "NoSchedule";
pub const PREFER_NO_SCHEDULE: &str = "PreferNoSchedule";
pub const NO_EXECUTE: &str = "NoExecute";

pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: String,
}

impl Taint {
    /// True for the effects the filter enforces (NoSchedule and NoExecute).
    pub fn forbids_scheduling(&self) -> bool {
        self.effect == NO_SCHEDULE || self.effect == NO_EXECUTE
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toleration {
    pub key: String,
    pub operator: String,
    pub value: String,
    pub effect: String,
}

impl Toleration {
    pub fn from_api(toleration: &ApiToleration) -> Self {
        Toleration {
            key: toleration.key.clone().unwrap_or_default(),
            operator: toleration.operator.clone().unwrap_or_default(),
            value: toleration.value.clone().unwrap_or_default(),
            effect: toleration.effect.clone().unwrap_or_default(),
        }
    }

    /// `Toleration.ToleratesTaint`: an empty effect matches every effect, an empty key (with
    /// `Exists`) every key; `Equal` (or no operator) also needs equal values.
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if !self.effect.is_empty() && self.effect != taint.effect {
            return false;
        }
        if !self.key.is_empty() && self.key != taint.key {
            return false;
        }
        match self.operator.as_str() {
            "" | "Equal" => self.value == taint.value,
            "Exists" => true,
            _ => false,
        }
    }
}

/// The first taint among `taints` that `keep` selects and no toleration covers.
pub fn first_untolerated<'t>(
    taints: &'t [Taint],
    tolerations: &[Toleration],
    keep: impl Fn(&Taint) -> bool,
) -> Option<&'t Taint> {
    taints
        .iter()
        .filter(|taint| keep(taint))
        .find(|taint| !tolerations.iter().any(|t| t.tolerates(taint)))
}

/// The node's taints plus the NoSchedule taint the node lifecycle controller puts on a node
/// whose Ready condition is not True: `not-ready` for False (or no Ready condition yet, as the
/// kubelet registers nodes), `unreachable` for Unknown. kube-scheduler only ever sees the
/// taints; Shoal has no lifecycle controller yet, so the scheduler derives them (and does
/// not add one the node already carries).
pub fn effective_taints(node: &Node) -> Vec<Taint> {
    let mut taints: Vec<Taint> = node
        .spec
        .as_ref()
        .and_then(|spec| spec.taints.as_ref())
        .into_iter()
        .flatten()
        .map(|taint| Taint {
            key: taint.key.clone(),
            value: taint.value.clone().unwrap_or_default(),
            effect: taint.effect.clone(),
        })
        .collect();

    let ready_status = node
        .status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .and_then(|conditions| conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|condition| condition.status.as_str());
    let derived_key = match ready_status {
        Some("True") => None,
        Some("Unknown") => Some(TAINT_UNREACHABLE),
        _ => Some(TAINT_NOT_READY),
    };
    if let Some(key) = derived_key {
        let already_there = taints
            .iter()
            .any(|taint| taint.key == key && taint.effect == NO_SCHEDULE);
        if !already_there {
            taints.push(Taint {
                key: key.to_string(),
                value: String::new(),
                effect: NO_SCHEDULE.to_string(),
            });
        }
    }
    taints
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(value: serde_json::Value) -> Node {
        serde_json::from_value(value).unwrap_or_default()
    }

    fn taint(key: &str, value: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.into(),
            effect: effect.into(),
        }
    }

    fn toleration(key: &str, operator: &str, value: &str, effect: &str) -> Toleration {
        Toleration {
            key: key.into(),
            operator: operator.into(),
            value: value.into(),
            effect: effect.into(),
        }
    }

    #[test]
    fn toleration_matching_rules() {
        let gpu = taint("gpu", "true", NO_SCHEDULE);
        assert!(toleration("gpu", "Equal", "true", NO_SCHEDULE).tolerates(&gpu));
        assert!(
            toleration("gpu", "", "true", "").tolerates(&gpu),
            "empty operator is Equal, empty effect matches all"
        );
        assert!(!toleration("gpu", "Equal", "false", NO_SCHEDULE).tolerates(&gpu));
        assert!(toleration("gpu", "Exists", "", NO_SCHEDULE).tolerates(&gpu));
        assert!(!toleration("gpu", "Exists", "", NO_EXECUTE).tolerates(&gpu));
        assert!(
            toleration("", "Exists", "", "").tolerates(&gpu),
            "empty key with Exists tolerates everything"
        );
        assert!(!toleration("other", "Exists", "", "").tolerates(&gpu));
        assert!(!toleration("gpu", "Gt", "true", "").tolerates(&gpu));
    }

    #[test]
    fn first_untolerated_skips_tolerated_and_filtered_taints() {
        let taints = vec![
            taint("soft", "", PREFER_NO_SCHEDULE),
            taint("a", "1", NO_SCHEDULE),
            taint("b", "2", NO_EXECUTE),
        ];
        let tolerations = vec![toleration("a", "Exists", "", "")];
        let found = first_untolerated(&taints, &tolerations, Taint::forbids_scheduling);
        assert_eq!(found, Some(&taints[2]));
        assert_eq!(
            first_untolerated(&taints[..2], &tolerations, Taint::forbids_scheduling),
            None
        );
    }

    #[test]
    fn not_ready_nodes_get_the_lifecycle_taint() {
        let ready = node(
            json!({"metadata": {"name": "n"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        );
        assert!(effective_taints(&ready).is_empty());

        let not_ready = node(
            json!({"metadata": {"name": "n"}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
        );
        assert_eq!(
            effective_taints(&not_ready),
            vec![taint(TAINT_NOT_READY, "", NO_SCHEDULE)]
        );

        let unknown = node(
            json!({"metadata": {"name": "n"}, "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}),
        );
        assert_eq!(
            effective_taints(&unknown),
            vec![taint(TAINT_UNREACHABLE, "", NO_SCHEDULE)]
        );

        let fresh = node(json!({"metadata": {"name": "n"}}));
        assert_eq!(
            effective_taints(&fresh),
            vec![taint(TAINT_NOT_READY, "", NO_SCHEDULE)]
        );

        let already = node(json!({
            "metadata": {"name": "n"},
            "spec": {"taints": [{"key": TAINT_NOT_READY, "effect": NO_SCHEDULE}, {"key": "x", "value": "y", "effect": NO_EXECUTE}]},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]}
        }));
        assert_eq!(
            effective_taints(&already),
            vec![
                taint(TAINT_NOT_READY, "", NO_SCHEDULE),
                taint("x", "y", NO_EXECUTE)
            ]
        );
    }
}
