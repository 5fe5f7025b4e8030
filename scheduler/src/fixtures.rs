//! Test fixtures: pods and nodes written as JSON, as they would come from the API.
#![allow(clippy::unwrap_used)]

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{json, Value};

use crate::node_info::NodeInfo;
use crate::pod_info::PodInfo;

pub fn pod(value: Value) -> Pod {
    serde_json::from_value(value).unwrap()
}

pub fn node(value: Value) -> Node {
    serde_json::from_value(value).unwrap()
}

pub fn pod_info(value: Value) -> PodInfo {
    PodInfo::from_pod(&pod(value))
}

pub fn node_info(value: Value) -> NodeInfo {
    NodeInfo::from_node(&node(value))
}

/// A Ready node offering `cpu`, `memory` and 110 pods, labelled with `labels` plus its
/// hostname (as the kubelet labels nodes).
pub fn ready_node(name: &str, cpu: &str, memory: &str, labels: Value) -> Node {
    let mut labels = labels;
    if let Some(map) = labels.as_object_mut() {
        map.insert("kubernetes.io/hostname".into(), json!(name));
    }
    let resources = json!({"cpu": cpu, "memory": memory, "pods": "110"});
    node(json!({
        "metadata": {"name": name, "labels": labels},
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    }))
}

/// A pod in `default` requesting `cpu` and `memory`, not yet bound.
pub fn pending_pod(name: &str, cpu: &str, memory: &str) -> Pod {
    pod(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}
    }))
}

/// A pod in `default` requesting `cpu` and `memory`, bound to `node`.
pub fn bound_pod(name: &str, node: &str, cpu: &str, memory: &str) -> Pod {
    let mut pod = pending_pod(name, cpu, memory);
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some(node.to_string());
    }
    pod
}
