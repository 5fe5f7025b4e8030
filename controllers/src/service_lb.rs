//! ServiceLB (k3s's built-in load balancer): a `type: LoadBalancer` Service gets the addresses
//! of the cluster's ready nodes as its `status.loadBalancer.ingress`, and every node's Service
//! proxy answers the Service's port on those addresses, so a lab can reach it from outside.
//! Pure: given a Service and the nodes, the ingress it should show and whether to write it.

use k8s_openapi::api::core::v1::{LoadBalancerIngress, Node, Service};

/// The addresses ServiceLB advertises: each ready, schedulable-or-not node's ExternalIP, or
/// its InternalIP when it has none (k3s's choice), sorted and without duplicates.
pub fn node_addresses<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Vec<String> {
    let mut out: Vec<String> = nodes
        .into_iter()
        .filter(|n| is_ready(n))
        .filter_map(|n| {
            let addresses = n.status.as_ref()?.addresses.as_ref()?;
            let of = |kind: &str| {
                addresses
                    .iter()
                    .filter(|a| a.type_ == kind)
                    .map(|a| a.address.clone())
                    .collect::<Vec<_>>()
            };
            let external = of("ExternalIP");
            Some(if external.is_empty() {
                of("InternalIP")
            } else {
                external
            })
        })
        .flatten()
        .collect();
    out.sort();
    out.dedup();
    out
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The ingress `service` should show: the node addresses for a LoadBalancer Service that no
/// other implementation claims (no `loadBalancerClass`), nothing otherwise.
pub fn desired_ingress(service: &Service, addresses: &[String]) -> Vec<LoadBalancerIngress> {
    let Some(spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    if spec.type_.as_deref() != Some("LoadBalancer") || spec.load_balancer_class.is_some() {
        return Vec::new();
    }
    addresses
        .iter()
        .map(|ip| LoadBalancerIngress {
            ip: Some(ip.clone()),
            ip_mode: Some("VIP".into()),
            ..LoadBalancerIngress::default()
        })
        .collect()
}

/// The ingress to write, when it differs from what the Service shows. A Service that stopped
/// being a LoadBalancer has its ingress cleared; one with a `loadBalancerClass` is left to
/// its controller.
pub fn plan(service: &Service, addresses: &[String]) -> Option<Vec<LoadBalancerIngress>> {
    let claimed = service
        .spec
        .as_ref()
        .is_some_and(|s| s.load_balancer_class.is_some());
    if claimed {
        return None;
    }
    let current = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default();
    let desired = desired_ingress(service, addresses);
    (current != desired).then_some(desired)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::node;
    use serde_json::json;

    fn service(value: serde_json::Value) -> Service {
        serde_json::from_value(value).unwrap()
    }

    fn nodes() -> Vec<Node> {
        vec![
            node(json!({"metadata": {"name": "a"}, "status": {
                "conditions": [{"type": "Ready", "status": "True"}],
                "addresses": [{"type": "InternalIP", "address": "192.0.2.2"},
                              {"type": "Hostname", "address": "a"}]}})),
            node(json!({"metadata": {"name": "b"}, "status": {
                "conditions": [{"type": "Ready", "status": "True"}],
                "addresses": [{"type": "InternalIP", "address": "10.0.0.3"},
                              {"type": "ExternalIP", "address": "198.51.100.3"}]}})),
            node(json!({"metadata": {"name": "c"}, "status": {
                "conditions": [{"type": "Ready", "status": "False"}],
                "addresses": [{"type": "InternalIP", "address": "192.0.2.4"}]}})),
        ]
    }

    #[test]
    fn ready_nodes_external_address_first() {
        assert_eq!(node_addresses(&nodes()), vec!["192.0.2.2", "198.51.100.3"]);
    }

    #[test]
    fn load_balancer_gets_node_addresses_once() {
        let addresses = node_addresses(&nodes());
        let mut lb = service(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}
        }));
        let ingress = plan(&lb, &addresses).unwrap();
        assert_eq!(
            ingress
                .iter()
                .map(|i| i.ip.clone().unwrap())
                .collect::<Vec<_>>(),
            addresses
        );
        lb.status = serde_json::from_value(json!({"loadBalancer": {"ingress": ingress}})).unwrap();
        assert_eq!(plan(&lb, &addresses), None, "already written");
    }

    #[test]
    fn other_types_cleared_and_classes_left_alone() {
        let was_lb = service(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"type": "ClusterIP"},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.2"}]}}
        }));
        assert_eq!(plan(&was_lb, &["192.0.2.2".into()]), Some(Vec::new()));
        let plain = service(json!({"metadata": {"name": "x"}, "spec": {"type": "ClusterIP"}}));
        assert_eq!(plan(&plain, &["192.0.2.2".into()]), None);
        let classed = service(json!({
            "metadata": {"name": "x"},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": "example.com/lb"}
        }));
        assert_eq!(plan(&classed, &["192.0.2.2".into()]), None);
    }
}
