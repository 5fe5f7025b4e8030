//! The Node objects: what a kubelet registers (labels, capacity, conditions, addresses, system
//! info), registering them (or taking over those a previous run left), refreshing their
//! conditions' heartbeats, and deleting them on request.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::simulated::fleet::SimNode;
use crate::simulated::requests::RequestGate;
use crate::simulated::{SimConfig, SimError};

/// The annotation that marks a node as simulated.
pub const SIMULATED_ANNOTATION: &str = "shoal.dev/simulated";
/// The kubelet version the nodes report.
pub const KUBELET_VERSION: &str = shoal_common::KUBERNETES_VERSION;
/// The container runtime the nodes report.
pub const RUNTIME_VERSION: &str = "simulated://1.0";
/// The kubelet's port, as the nodes advertise it (nothing listens).
const KUBELET_PORT: i32 = 10250;

/// The node object a kubelet would register for `node` at `now`.
pub fn node_object(node: &SimNode, config: &SimConfig, now: Timestamp) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(node.name.clone()),
            labels: Some(node_labels(node, config)),
            annotations: Some(node_annotations()),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(node.pod_cidr.to_string()),
            pod_cidrs: Some(vec![node.pod_cidr.to_string()]),
            provider_id: Some(format!("simulated://{}", node.name)),
            taints: (!config.taints.is_empty()).then(|| config.taints.clone()),
            ..NodeSpec::default()
        }),
        status: Some(node_status(node, config, now, &[])),
    }
}

/// The kubelet's own labels, the zone, and the configured extra labels (which win).
fn node_labels(node: &SimNode, config: &SimConfig) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = [
        ("beta.kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("kubernetes.io/hostname", node.name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("node.kubernetes.io/instance-type", "simulated"),
        // kwok's convention, so `kubectl get nodes` shows a role and tests can select them.
        ("node-role.kubernetes.io/agent", ""),
        ("type", "simulated"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    if let Some(zone) = &node.zone {
        labels.insert("topology.kubernetes.io/zone".into(), zone.clone());
    }
    labels.extend(config.labels.clone());
    labels
}

fn node_annotations() -> BTreeMap<String, String> {
    [
        (SIMULATED_ANNOTATION, "true"),
        ("node.alpha.kubernetes.io/ttl", "0"),
        (
            "volumes.kubernetes.io/controller-managed-attach-detach",
            "true",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The node's full status at `now`; `previous` conditions keep their transition times where
/// their status is unchanged.
pub fn node_status(
    node: &SimNode,
    config: &SimConfig,
    now: Timestamp,
    previous: &[NodeCondition],
) -> NodeStatus {
    let resources: BTreeMap<String, Quantity> = [
        ("cpu", config.cpu.clone()),
        ("memory", config.memory.clone()),
        ("ephemeral-storage", config.ephemeral_storage.clone()),
        ("pods", config.pods.to_string()),
        ("hugepages-1Gi", "0".into()),
        ("hugepages-2Mi", "0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v)))
    .collect();
    NodeStatus {
        // Nothing is reserved for system daemons on a simulated node.
        allocatable: Some(resources.clone()),
        capacity: Some(resources),
        conditions: Some(node_conditions(now, previous)),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: node.internal_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: node.name.clone(),
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint { port: KUBELET_PORT }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: "amd64".into(),
            boot_id: format!("simulated-boot-{}", node.index),
            container_runtime_version: RUNTIME_VERSION.into(),
            kernel_version: "simulated".into(),
            kube_proxy_version: String::new(),
            kubelet_version: KUBELET_VERSION.into(),
            machine_id: format!("simulated-{}", node.name),
            operating_system: "linux".into(),
            os_image: "Shoal simulated node".into(),
            system_uuid: format!("simulated-{}", node.name),
            swap: None,
        }),
        ..NodeStatus::default()
    }
}

/// The four conditions a healthy kubelet reports, heartbeat `now`.
pub fn node_conditions(now: Timestamp, previous: &[NodeCondition]) -> Vec<NodeCondition> {
    [
        (
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        (
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        (
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        (
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
        ),
    ]
    .into_iter()
    .map(|(type_, status, reason, message)| {
        crate::kubelet::node::condition(type_, status, reason, message.into(), now, previous)
    })
    .collect()
}

/// Registers `node`, or takes over a node of that name left by a previous run (its labels,
/// annotations and status brought up to date). Returns the node as stored.
pub async fn register(
    api: &Api<Node>,
    gate: &RequestGate,
    node: &SimNode,
    config: &SimConfig,
) -> Result<Node, SimError> {
    let wanted = node_object(node, config, Timestamp::now());
    let params = PostParams::default();
    let created = gate
        .send(
            || format!("registering node {}", node.name),
            || api.create(&params, &wanted),
        )
        .await;
    match created {
        Ok(stored) if has_conditions(&stored) => Ok(stored),
        // A server that drops the status on create: set it as an update of its own.
        Ok(_) => refresh_status(api, gate, node, config, true).await,
        Err(e) if e.is_conflict() => {
            let metadata = Patch::Merge(json!({"metadata": {
                "labels": node_labels(node, config),
                "annotations": node_annotations(),
            }}));
            let params = PatchParams::default();
            gate.send(
                || format!("updating the labels of node {}", node.name),
                || api.patch(&node.name, &params, &metadata),
            )
            .await?;
            refresh_status(api, gate, node, config, true).await
        }
        Err(e) => Err(e),
    }
}

fn has_conditions(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| !c.is_empty())
}

/// Refreshes the node's conditions as the kubelet does: reads the node, then patches its
/// status with fresh heartbeats (transition times kept). `full` sends the whole status
/// (capacity, addresses, …), for a node registered by someone else or an earlier run.
pub async fn refresh_status(
    api: &Api<Node>,
    gate: &RequestGate,
    node: &SimNode,
    config: &SimConfig,
    full: bool,
) -> Result<Node, SimError> {
    let current = gate
        .send(
            || format!("reading node {}", node.name),
            || api.get(&node.name),
        )
        .await?;
    let previous = current
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let now = Timestamp::now();
    let patch = Patch::Strategic(if full {
        json!({"status": node_status(node, config, now, &previous)})
    } else {
        json!({"status": {"conditions": node_conditions(now, &previous)}})
    });
    let params = PatchParams::default();
    gate.send(
        || format!("updating the status of node {}", node.name),
        || api.patch_status(&node.name, &params, &patch),
    )
    .await
}

/// Deletes the node (its Lease goes with it by owner reference, and is deleted as well by the
/// caller in case no garbage collector runs).
pub async fn delete(api: &Api<Node>, gate: &RequestGate, name: &str) -> Result<(), SimError> {
    let params = DeleteParams::default();
    match gate
        .send(
            || format!("deleting node {name}"),
            || api.delete(name, &params),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulated::fleet::plan_fleet;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn third_node(config: &SimConfig) -> SimNode {
        plan_fleet(config).expect("plan").swap_remove(3)
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("time")
    }

    #[test]
    fn the_node_is_registered_as_a_kubelet_would() {
        let config = SimConfig {
            count: 5,
            labels: [("pool".to_string(), "big".to_string())].into(),
            taints: vec![crate::simulated::parse_taint("gpu=yes:NoSchedule").expect("taint")],
            ..SimConfig::default()
        };
        let node = node_object(&third_node(&config), &config, at(1_700_000_000));
        let value = serde_json::to_value(&node).expect("json");
        let labels = &value["metadata"]["labels"];
        assert_eq!(labels["kubernetes.io/hostname"], "sim-3");
        assert_eq!(labels["kubernetes.io/os"], "linux");
        assert_eq!(labels["kubernetes.io/arch"], "amd64");
        assert_eq!(labels["node.kubernetes.io/instance-type"], "simulated");
        assert_eq!(labels["type"], "simulated");
        assert_eq!(labels["topology.kubernetes.io/zone"], "zone-0");
        assert_eq!(labels["pool"], "big");
        assert_eq!(
            value["metadata"]["annotations"][SIMULATED_ANNOTATION],
            "true"
        );
        assert_eq!(value["spec"]["podCIDR"], "10.128.3.0/24");
        assert_eq!(value["spec"]["taints"][0]["key"], "gpu");

        let status = &value["status"];
        for field in ["capacity", "allocatable"] {
            assert_eq!(status[field]["cpu"], "32");
            assert_eq!(status[field]["memory"], "256Gi");
            assert_eq!(status[field]["pods"], "110");
            assert_eq!(status[field]["ephemeral-storage"], "100Gi");
        }
        let ready = status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .expect("Ready condition");
        assert_eq!(ready["status"], "True");
        assert_eq!(ready["reason"], "KubeletReady");
        assert_eq!(ready["message"], "kubelet is posting ready status");
        assert_eq!(ready["lastHeartbeatTime"], "2023-11-14T22:13:20Z");
        for pressure in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
            let condition = status["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == pressure))
                .expect("pressure condition");
            assert_eq!(condition["status"], "False", "{pressure}");
        }
        assert_eq!(
            status["addresses"],
            json!([{"type": "InternalIP", "address": "10.64.0.4"}, {"type": "Hostname", "address": "sim-3"}])
        );
        assert_eq!(status["nodeInfo"]["kubeletVersion"], "v1.33.0");
        assert_eq!(
            status["nodeInfo"]["containerRuntimeVersion"],
            "simulated://1.0"
        );
        assert_eq!(status["nodeInfo"]["operatingSystem"], "linux");
        assert_eq!(status["nodeInfo"]["architecture"], "amd64");
        assert_eq!(status["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);
    }

    #[test]
    fn heartbeats_advance_and_transitions_stay() {
        let first = node_conditions(at(100), &[]);
        let later = node_conditions(at(160), &first);
        for condition in &later {
            assert_eq!(condition.last_heartbeat_time, Some(Time(at(160))));
            assert_eq!(condition.last_transition_time, Some(Time(at(100))));
        }
        // A node marked NotReady by the node lifecycle controller transitions back.
        let mut unknown = first.clone();
        for condition in &mut unknown {
            condition.status = "Unknown".into();
        }
        let recovered = node_conditions(at(200), &unknown);
        assert!(recovered
            .iter()
            .all(|c| c.last_transition_time == Some(Time(at(200)))));
    }
}
