//! Everything the scheduler reads from a pod, parsed once: identity, labels, requests, host
//! ports, tolerations, node affinity, inter-pod affinity and spread constraints. Used for the
//! pod being scheduled and for every pod already on a node.

use k8s_openapi::api::core::v1::{Pod, PodSpec};

use crate::affinity::PodAffinityTerms;
use crate::node_selector::{PreferredNodeAffinity, RequiredNodeAffinity};
use crate::resources::{pod_requests, PodRequests};
use crate::selector::Labels;
use crate::spread::PodSpreadConstraints;
use crate::taints::Toleration;

/// Controller kinds whose pods kube-scheduler spreads by default (it builds the default
/// selector from ReplicationControllers, ReplicaSets and StatefulSets, plus Services).
const SPREAD_BY_DEFAULT_KINDS: [&str; 3] = ["ReplicaSet", "ReplicationController", "StatefulSet"];

/// A host port a container binds, with kube-scheduler's defaults filled in (`0.0.0.0`, TCP).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct HostPort {
    pub ip: String,
    pub protocol: String,
    pub port: i32,
}

pub(crate) const BIND_ALL_IP: &str = "0.0.0.0";

#[derive(Debug, Clone, Default)]
pub(crate) struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// `deletionTimestamp` is set: such pods still use their node but no longer count for
    /// topology spreading.
    pub terminating: bool,
    pub node_name: Option<String>,
    pub requests: PodRequests,
    pub host_ports: Vec<HostPort>,
    /// UID of the controlling ReplicaSet/ReplicationController/StatefulSet.
    pub spread_controller: Option<String>,
    pub tolerations: Vec<Toleration>,
    pub required_node_affinity: RequiredNodeAffinity,
    pub preferred_node_affinity: PreferredNodeAffinity,
    pub affinity: Option<Box<PodAffinityTerms>>,
    pub spread: PodSpreadConstraints,
    /// Problems met while reading the pod (unparsable quantities, invalid selectors).
    pub notes: Vec<String>,
}

impl PodInfo {
    pub fn from_pod(pod: &Pod) -> Self {
        let default_spec = PodSpec::default();
        let spec = pod.spec.as_ref().unwrap_or(&default_spec);
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let mut notes = Vec::new();

        let spread_controller = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|owner| owner.controller == Some(true))
            .filter(|owner| SPREAD_BY_DEFAULT_KINDS.contains(&owner.kind.as_str()))
            .map(|owner| owner.uid.clone());

        let host_ports = spec
            .containers
            .iter()
            .flat_map(|container| container.ports.iter().flatten())
            .filter(|port| port.host_port.unwrap_or(0) > 0)
            .map(|port| HostPort {
                ip: port
                    .host_ip
                    .clone()
                    .filter(|ip| !ip.is_empty())
                    .unwrap_or_else(|| BIND_ALL_IP.to_string()),
                protocol: port
                    .protocol
                    .clone()
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "TCP".to_string()),
                port: port.host_port.unwrap_or(0),
            })
            .collect();

        let requests = pod_requests(spec, &mut notes);
        let affinity =
            PodAffinityTerms::from_spec(&namespace, &labels, spec, &mut notes).map(Box::new);
        let spread = PodSpreadConstraints::from_spec(
            &labels,
            spec,
            spread_controller.as_deref(),
            &mut notes,
        );

        PodInfo {
            name: pod.metadata.name.clone().unwrap_or_default(),
            terminating: pod.metadata.deletion_timestamp.is_some(),
            node_name: spec.node_name.clone().filter(|n| !n.is_empty()),
            requests,
            host_ports,
            spread_controller,
            tolerations: spec
                .tolerations
                .iter()
                .flatten()
                .map(Toleration::from_api)
                .collect(),
            required_node_affinity: RequiredNodeAffinity::from_spec(spec),
            preferred_node_affinity: PreferredNodeAffinity::from_spec(spec),
            affinity,
            spread,
            notes,
            namespace,
            labels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::pod;
    use serde_json::json;

    #[test]
    fn reads_identity_ports_and_controller() {
        let info = PodInfo::from_pod(&pod(json!({
            "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"},
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": "n", "uid": "not-a-controller"},
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "rs-1", "controller": true}
                ]},
            "spec": {"containers": [{"name": "c", "ports": [
                {"containerPort": 80, "hostPort": 8080},
                {"containerPort": 53, "hostPort": 53, "protocol": "UDP", "hostIP": "10.0.0.1"},
                {"containerPort": 9090}
            ]}]}
        })));
        assert_eq!(info.namespace, "shop");
        assert_eq!(info.name, "web-1");
        assert_eq!(info.spread_controller.as_deref(), Some("rs-1"));
        assert_eq!(
            info.host_ports,
            vec![
                HostPort {
                    ip: BIND_ALL_IP.into(),
                    protocol: "TCP".into(),
                    port: 8080
                },
                HostPort {
                    ip: "10.0.0.1".into(),
                    protocol: "UDP".into(),
                    port: 53
                },
            ]
        );
        assert!(info.affinity.is_none());
    }

    #[test]
    fn jobs_and_daemonsets_are_not_spread_by_default() {
        let info = PodInfo::from_pod(&pod(json!({
            "metadata": {"name": "j", "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "job-1", "controller": true}
            ]},
            "spec": {"containers": []}
        })));
        assert_eq!(info.namespace, "default");
        assert_eq!(info.spread_controller, None);
        assert!(info.spread.soft.is_empty());
    }
}
