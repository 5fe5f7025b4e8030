//! NodePorts: every host port the pod's containers ask for (hostPort, protocol, hostIP) must
//! be free on the node.

use super::FilterFailure;
use crate::pod_info::PodInfo;
use crate::snapshot::NodeUsage;

pub const REASON: &str = "node(s) didn't have free ports for the requested pod ports";

pub(crate) fn check(pod: &PodInfo, usage: &NodeUsage) -> Result<(), FilterFailure> {
    if pod.host_ports.iter().any(|port| usage.port_conflicts(port)) {
        Err(FilterFailure::NodePorts)
    } else {
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::{pod, pod_info, ready_node};
    use crate::snapshot::Snapshot;
    use serde_json::json;

    fn with_port(
        name: &str,
        node: Option<&str>,
        port: serde_json::Value,
    ) -> k8s_openapi::api::core::v1::Pod {
        pod(
            json!({"metadata": {"name": name}, "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [port]}]}}),
        )
    }

    #[test]
    fn taken_host_ports_reject_the_node() {
        let mut snapshot = Snapshot::new();
        snapshot.upsert_node(&ready_node("n1", "4", "8Gi", json!({})));
        snapshot.upsert_pod(&with_port(
            "web",
            Some("n1"),
            json!({"containerPort": 80, "hostPort": 8080}),
        ));
        let usage = &snapshot.slot(snapshot.visit_order()[0]).unwrap().usage;

        let same = pod_info(
            serde_json::to_value(with_port(
                "p",
                None,
                json!({"containerPort": 1, "hostPort": 8080}),
            ))
            .unwrap(),
        );
        assert_eq!(check(&same, usage), Err(FilterFailure::NodePorts));
        let udp = pod_info(
            serde_json::to_value(with_port(
                "p",
                None,
                json!({"containerPort": 1, "hostPort": 8080, "protocol": "UDP"}),
            ))
            .unwrap(),
        );
        assert_eq!(check(&udp, usage), Ok(()));
        let other = pod_info(
            serde_json::to_value(with_port(
                "p",
                None,
                json!({"containerPort": 1, "hostPort": 8081}),
            ))
            .unwrap(),
        );
        assert_eq!(check(&other, usage), Ok(()));
        let no_host_port = pod_info(
            serde_json::to_value(with_port("p", None, json!({"containerPort": 8080}))).unwrap(),
        );
        assert_eq!(check(&no_host_port, usage), Ok(()));
    }
}
