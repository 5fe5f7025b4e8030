//! Which nodes a DaemonSet runs on (`NodeShouldRunDaemonPod`): the template's `nodeName`,
//! `nodeSelector` and required node affinity against the node's name and labels, and the
//! node's taints against the template's tolerations plus the ones Kubernetes adds to every
//! daemon pod (`AddOrUpdateDaemonPodTolerations`). Also where a daemon pod is headed
//! (`GetTargetNodeName`) and the node-name affinity that sends it there
//! (`ReplaceDaemonSetPodNodeNameNodeAffinity`).
//!
//! Taints are evaluated by [`crate::taints`], which the scheduler uses too: in particular a
//! node whose Ready condition is not True carries the `not-ready`/`unreachable` NoSchedule
//! taint the scheduler derives, so the controller never wants a pod where the scheduler
//! would not bind it. Node selector terms are evaluated here on the API types, as the
//! scheduler's `node_selector.rs` does on its parsed form.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodSpec,
    Toleration,
};

use crate::taints::{effective_taints, first_untolerated, Taint};
pub use crate::taints::{
    NO_EXECUTE, NO_SCHEDULE, TAINT_NOT_READY, TAINT_UNREACHABLE, TAINT_UNSCHEDULABLE,
};

pub const TAINT_DISK_PRESSURE: &str = "node.kubernetes.io/disk-pressure";
pub const TAINT_MEMORY_PRESSURE: &str = "node.kubernetes.io/memory-pressure";
pub const TAINT_PID_PRESSURE: &str = "node.kubernetes.io/pid-pressure";
pub const TAINT_NETWORK_UNAVAILABLE: &str = "node.kubernetes.io/network-unavailable";

/// The field a daemon pod's node affinity selects on.
const NODE_NAME_FIELD: &str = "metadata.name";

fn exists_toleration(key: &str, effect: &str) -> Toleration {
    Toleration {
        key: Some(key.to_string()),
        operator: Some("Exists".to_string()),
        effect: Some(effect.to_string()),
        ..Toleration::default()
    }
}

/// `Toleration.MatchToleration`: same key, operator, value and effect.
fn same_toleration(a: &Toleration, b: &Toleration) -> bool {
    a.key == b.key && a.operator == b.operator && a.value == b.value && a.effect == b.effect
}

/// `AddOrUpdateTolerationInPodSpec`: replaces a matching toleration (so a user's
/// `tolerationSeconds` on these keys is dropped: daemon pods are never evicted for them).
fn add_or_update_toleration(spec: &mut PodSpec, toleration: Toleration) {
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    let mut updated = false;
    for existing in tolerations.iter_mut() {
        if same_toleration(existing, &toleration) {
            *existing = toleration.clone();
            updated = true;
        }
    }
    if !updated {
        tolerations.push(toleration);
    }
}

/// `AddOrUpdateDaemonPodTolerations`: daemon pods survive a node going not-ready or
/// unreachable (NoExecute, no `tolerationSeconds`) and ignore the pressure, unschedulable
/// and (for host-network pods) network-unavailable NoSchedule taints.
pub fn add_daemon_tolerations(spec: &mut PodSpec) {
    add_or_update_toleration(spec, exists_toleration(TAINT_NOT_READY, NO_EXECUTE));
    add_or_update_toleration(spec, exists_toleration(TAINT_UNREACHABLE, NO_EXECUTE));
    add_or_update_toleration(spec, exists_toleration(TAINT_DISK_PRESSURE, NO_SCHEDULE));
    add_or_update_toleration(spec, exists_toleration(TAINT_MEMORY_PRESSURE, NO_SCHEDULE));
    add_or_update_toleration(spec, exists_toleration(TAINT_PID_PRESSURE, NO_SCHEDULE));
    add_or_update_toleration(spec, exists_toleration(TAINT_UNSCHEDULABLE, NO_SCHEDULE));
    if spec.host_network == Some(true) {
        add_or_update_toleration(
            spec,
            exists_toleration(TAINT_NETWORK_UNAVAILABLE, NO_SCHEDULE),
        );
    }
}

/// One `matchExpressions` requirement against node labels (`In`, `NotIn`, `Exists`,
/// `DoesNotExist`, `Gt`, `Lt`); `None` when it is malformed.
fn label_requirement_matches(
    requirement: &NodeSelectorRequirement,
    labels: &BTreeMap<String, String>,
) -> Option<bool> {
    let values = requirement.values.as_deref().unwrap_or_default();
    let value = labels.get(&requirement.key);
    let integer = |text: &str| text.parse::<i64>().ok();
    match requirement.operator.as_str() {
        "In" if !values.is_empty() => Some(value.is_some_and(|v| values.contains(v))),
        "NotIn" if !values.is_empty() => Some(value.is_none_or(|v| !values.contains(v))),
        "Exists" if values.is_empty() => Some(value.is_some()),
        "DoesNotExist" if values.is_empty() => Some(value.is_none()),
        "Gt" | "Lt" if values.len() == 1 => {
            let bound = integer(&values[0])?;
            Some(value.and_then(|v| integer(v)).is_some_and(|v| {
                if requirement.operator == "Gt" {
                    v > bound
                } else {
                    v < bound
                }
            }))
        }
        _ => None,
    }
}

/// One `matchFields` requirement: only `metadata.name` `In`/`NotIn` one value exists.
fn field_requirement_matches(
    requirement: &NodeSelectorRequirement,
    node_name: &str,
) -> Option<bool> {
    let values = requirement.values.as_deref().unwrap_or_default();
    match (
        requirement.key.as_str(),
        requirement.operator.as_str(),
        values,
    ) {
        (NODE_NAME_FIELD, "In", [name]) => Some(name == node_name),
        (NODE_NAME_FIELD, "NotIn", [name]) => Some(name != node_name),
        _ => None,
    }
}

/// A term matches when all its requirements hold; an empty or malformed term matches no
/// node (the "lazy error" behaviour: other terms still count).
fn term_matches(
    term: &NodeSelectorTerm,
    node_name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    expressions
        .iter()
        .all(|r| label_requirement_matches(r, labels) == Some(true))
        && fields
            .iter()
            .all(|r| field_requirement_matches(r, node_name) == Some(true))
}

fn node_name(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or("")
}

/// `spec.nodeSelector` and the required node affinity terms (ORed) both match the node.
pub fn fits_node_affinity(spec: &PodSpec, node: &Node) -> bool {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    if !selector_ok {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        None => true,
        Some(selector) => selector
            .node_selector_terms
            .iter()
            .any(|term| term_matches(term, node_name(node), labels)),
    }
}

/// The template's pod spec as the daemon pod for `node` would have it (`NewPod`).
pub fn daemon_pod_spec(template_spec: &PodSpec, node: &str) -> PodSpec {
    let mut spec = template_spec.clone();
    spec.node_name = Some(node.to_string());
    add_daemon_tolerations(&mut spec);
    spec
}

/// What `NodeShouldRunDaemonPod` says about one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeVerdict {
    /// A daemon pod should be started here if none runs.
    pub should_run: bool,
    /// A daemon pod already here may stay (tainted NoSchedule but not NoExecute keeps it).
    pub should_continue_running: bool,
}

/// `NodeShouldRunDaemonPod` for the DaemonSet's template pod spec.
pub fn should_run(template_spec: &PodSpec, node: &Node) -> NodeVerdict {
    let never = NodeVerdict {
        should_run: false,
        should_continue_running: false,
    };
    let name = node_name(node);
    if template_spec
        .node_name
        .as_deref()
        .is_some_and(|n| !n.is_empty() && n != name)
    {
        return never;
    }
    let spec = daemon_pod_spec(template_spec, name);
    if !fits_node_affinity(&spec, node) {
        return never;
    }
    let taints = effective_taints(node);
    let tolerations: Vec<crate::taints::Toleration> = spec
        .tolerations
        .iter()
        .flatten()
        .map(crate::taints::Toleration::from_api)
        .collect();
    if first_untolerated(&taints, &tolerations, Taint::forbids_scheduling).is_some() {
        let evicting = |taint: &Taint| taint.effect == NO_EXECUTE;
        return NodeVerdict {
            should_run: false,
            should_continue_running: first_untolerated(&taints, &tolerations, evicting).is_none(),
        };
    }
    NodeVerdict {
        should_run: true,
        should_continue_running: true,
    }
}

/// `GetTargetNodeName`: the bound node, or the single `metadata.name In` value of the
/// first node-name term of the required affinity for a pod not yet bound.
pub fn target_node_name(spec: Option<&PodSpec>) -> Option<String> {
    let spec = spec?;
    if let Some(name) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        return Some(name.to_string());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    for term in terms {
        for field in term.match_fields.iter().flatten() {
            if field.key == NODE_NAME_FIELD && field.operator == "In" {
                return match field.values.as_deref() {
                    Some([name]) => Some(name.clone()),
                    _ => None,
                };
            }
        }
    }
    None
}

/// `ReplaceDaemonSetPodNodeNameNodeAffinity`: the required node affinity becomes the one
/// term `metadata.name In [node]` (the controller already checked the node satisfies the
/// template's own terms); preferred terms and pod (anti-)affinity are kept.
pub fn replace_node_name_affinity(affinity: Option<Affinity>, node: &str) -> Affinity {
    let selector = NodeSelector {
        node_selector_terms: vec![NodeSelectorTerm {
            match_fields: Some(vec![NodeSelectorRequirement {
                key: NODE_NAME_FIELD.to_string(),
                operator: "In".to_string(),
                values: Some(vec![node.to_string()]),
            }]),
            match_expressions: None,
        }],
    };
    let mut affinity = affinity.unwrap_or_default();
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution = Some(selector);
    affinity
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn node(json: serde_json::Value) -> Node {
        serde_json::from_value(json).unwrap()
    }

    fn ready_node(name: &str, labels: serde_json::Value, taints: serde_json::Value) -> Node {
        node(serde_json::json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        }))
    }

    fn spec(json: serde_json::Value) -> PodSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn default_tolerations_replace_matching_ones_and_cover_host_network() {
        let mut s = spec(serde_json::json!({"containers": [], "tolerations": [
            {"key": TAINT_NOT_READY, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "dedicated", "operator": "Equal", "value": "x", "effect": "NoSchedule"}
        ]}));
        add_daemon_tolerations(&mut s);
        let tolerations = s.tolerations.as_ref().unwrap();
        assert_eq!(tolerations.len(), 7);
        assert_eq!(tolerations[0].toleration_seconds, None, "infinite now");
        assert_eq!(tolerations[1].key.as_deref(), Some("dedicated"));
        assert!(!tolerations
            .iter()
            .any(|t| t.key.as_deref() == Some(TAINT_NETWORK_UNAVAILABLE)));
        let mut host = spec(serde_json::json!({"containers": [], "hostNetwork": true}));
        add_daemon_tolerations(&mut host);
        assert!(host
            .tolerations
            .unwrap()
            .iter()
            .any(|t| t.key.as_deref() == Some(TAINT_NETWORK_UNAVAILABLE)));
    }

    #[test]
    fn taints_decide_run_and_continue() {
        let plain = spec(serde_json::json!({"containers": []}));
        let open = ready_node("a", serde_json::json!({}), serde_json::json!([]));
        assert_eq!(
            should_run(&plain, &open),
            NodeVerdict {
                should_run: true,
                should_continue_running: true
            }
        );
        let no_schedule = ready_node(
            "b",
            serde_json::json!({}),
            serde_json::json!([{"key": "gpu", "effect": "NoSchedule"}]),
        );
        assert_eq!(
            should_run(&plain, &no_schedule),
            NodeVerdict {
                should_run: false,
                should_continue_running: true
            }
        );
        let no_execute = ready_node(
            "c",
            serde_json::json!({}),
            serde_json::json!([{"key": "gpu", "effect": "NoExecute"}]),
        );
        assert!(!should_run(&plain, &no_execute).should_continue_running);
        let tolerant = spec(serde_json::json!({"containers": [],
            "tolerations": [{"key": "gpu", "operator": "Exists"}]}));
        assert!(should_run(&tolerant, &no_execute).should_run);
        // Pressure and unschedulable taints are tolerated by every daemon pod.
        let pressured = ready_node(
            "d",
            serde_json::json!({}),
            serde_json::json!([{"key": TAINT_MEMORY_PRESSURE, "effect": "NoSchedule"},
                               {"key": TAINT_UNSCHEDULABLE, "effect": "NoSchedule"}]),
        );
        assert!(should_run(&plain, &pressured).should_run);
        // A node that is not Ready: no new pod, but running ones stay.
        let not_ready = node(serde_json::json!({"metadata": {"name": "e"},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]}}));
        assert_eq!(
            should_run(&plain, &not_ready),
            NodeVerdict {
                should_run: false,
                should_continue_running: true
            }
        );
    }

    #[test]
    fn node_selector_affinity_and_node_name() {
        let linux = ready_node(
            "a",
            serde_json::json!({"os": "linux", "cores": "8"}),
            serde_json::json!([]),
        );
        let selecting =
            spec(serde_json::json!({"containers": [], "nodeSelector": {"os": "linux"}}));
        assert!(should_run(&selecting, &linux).should_run);
        let windows =
            spec(serde_json::json!({"containers": [], "nodeSelector": {"os": "windows"}}));
        assert!(!should_run(&windows, &linux).should_continue_running);
        let affinity = |terms: serde_json::Value| {
            spec(
                serde_json::json!({"containers": [], "affinity": {"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}}),
            )
        };
        assert!(
            should_run(
                &affinity(serde_json::json!([
                    {"matchExpressions": [{"key": "os", "operator": "In", "values": ["bsd"]}]},
                    {"matchExpressions": [{"key": "cores", "operator": "Gt", "values": ["4"]}]}
                ])),
                &linux
            )
            .should_run
        );
        assert!(
            !should_run(
                &affinity(serde_json::json!([
                    {"matchExpressions": [{"key": "cores", "operator": "Lt", "values": ["4"]}]}
                ])),
                &linux
            )
            .should_run
        );
        assert!(!should_run(&affinity(serde_json::json!([{}])), &linux).should_run);
        assert!(
            should_run(
                &affinity(serde_json::json!([
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a"]}]}
                ])),
                &linux
            )
            .should_run
        );
        let pinned = spec(serde_json::json!({"containers": [], "nodeName": "z"}));
        assert!(!should_run(&pinned, &linux).should_continue_running);
    }

    #[test]
    fn node_name_affinity_targets_the_node() {
        let existing: Affinity = serde_json::from_value(serde_json::json!({
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "os", "operator": "In", "values": ["linux"]}]}
                ]},
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 1, "preference": {"matchExpressions": [{"key": "ssd", "operator": "Exists"}]}}
                ]
            }
        }))
        .unwrap();
        let replaced = replace_node_name_affinity(Some(existing), "n2");
        let node_affinity = replaced.node_affinity.as_ref().unwrap();
        assert_eq!(
            node_affinity
                .preferred_during_scheduling_ignored_during_execution
                .as_ref()
                .unwrap()
                .len(),
            1
        );
        let spec = PodSpec {
            affinity: Some(replaced),
            ..PodSpec::default()
        };
        assert_eq!(target_node_name(Some(&spec)).as_deref(), Some("n2"));
        let bound = PodSpec {
            node_name: Some("n3".into()),
            ..spec.clone()
        };
        assert_eq!(target_node_name(Some(&bound)).as_deref(), Some("n3"));
        assert_eq!(target_node_name(Some(&PodSpec::default())), None);
    }
}
