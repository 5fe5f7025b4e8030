//! The node's host ports ([`shoal_net::hostport`]) kept in step with its pods: pod workers
//! report each sandbox address of a pod that asks for host ports, and the table is rewritten
//! whenever what it should hold changed. Nothing is written before the pod watch has listed
//! this node's pods once; that first write replaces whatever an earlier agent left (pods
//! deleted while it was down lose their ports). Until its worker has looked at the runtime,
//! a listed pod keeps the address its status reports, so the ports of running pods survive an
//! agent restart.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Pod;
use shoal_net::hostport::{self, HostKey, TableConfig, Target};
use shoal_net::proxy::nft::Nft;

/// The host ports' state on this node.
#[derive(Debug)]
pub struct HostPorts {
    table: TableConfig,
    /// Sandbox address per pod uid, as its worker last saw it (`None`: no ready sandbox).
    reported: Mutex<HashMap<String, Option<Ipv4Addr>>>,
    /// What the table holds (`None` before the first write).
    applied: tokio::sync::Mutex<Option<BTreeMap<HostKey, Target>>>,
}

/// Whether `pod` asks for any host port.
pub fn wants_host_ports(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .any(|p| p.host_port.is_some_and(|h| h > 0))
}

/// The address a pod's ports lead to: its worker's report, else (not synced since this agent
/// started) its reported status.
fn address(pod: &Pod, reported: Option<&Option<Ipv4Addr>>) -> Option<Ipv4Addr> {
    match reported {
        Some(ip) => *ip,
        None => pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok()),
    }
}

impl HostPorts {
    pub fn new(table: TableConfig) -> HostPorts {
        HostPorts {
            table,
            reported: Mutex::new(HashMap::new()),
            applied: tokio::sync::Mutex::new(None),
        }
    }

    /// Records the sandbox address of pod `uid` (`None`: gone or not ready); true when it
    /// changed.
    pub fn report(&self, uid: &str, ip: Option<Ipv4Addr>) -> bool {
        let mut reported = self
            .reported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        reported.insert(uid.to_string(), ip) != Some(ip)
    }

    /// Forgets pod `uid` (its worker is done); true when it was known.
    pub fn forget(&self, uid: &str) -> bool {
        self.reported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(uid)
            .is_some()
    }

    /// What the table should hold for `pods` (uid → pod, the watch's view).
    pub fn desired<'a>(
        &self,
        pods: impl IntoIterator<Item = (&'a String, &'a Pod)>,
    ) -> BTreeMap<HostKey, Target> {
        let reported = self
            .reported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        hostport::mappings(
            pods.into_iter()
                .filter(|(_, pod)| wants_host_ports(pod))
                .map(|(uid, pod)| (pod, address(pod, reported.get(uid)))),
        )
    }

    /// Writes the table when `desired` differs from what it holds. A failure is logged and
    /// leaves the record as it was, so the next call tries again.
    pub async fn apply(&self, desired: BTreeMap<HostKey, Target>) {
        let mut applied = self.applied.lock().await;
        if applied.as_ref() == Some(&desired) {
            return;
        }
        let table = self.table.clone();
        let wanted = desired.clone();
        let result =
            tokio::task::spawn_blocking(move || hostport::apply(&Nft::default(), &wanted, &table))
                .await;
        match result {
            Ok(Ok(())) => {
                tracing::debug!(ports = desired.len(), "host ports written");
                *applied = Some(desired);
            }
            Ok(Err(err)) => tracing::warn!(%err, "writing the host ports table"),
            Err(err) => tracing::warn!(%err, "writing the host ports table"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pod(name: &str, host_port: Option<i32>, status_ip: Option<&str>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": name},
            "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 80, "hostPort": host_port}]}]},
            "status": {"podIP": status_ip},
        }))
        .unwrap()
    }

    #[test]
    fn workers_reports_win_over_the_status_address() {
        let ports = HostPorts::new(TableConfig {
            bridge: "shoal0".into(),
            pod_networks: vec![],
        });
        let a = pod("a", Some(8080), Some("10.42.0.5"));
        let b = pod("b", Some(8081), Some("10.42.0.6"));
        let plain = pod("c", None, Some("10.42.0.7"));
        let pods: BTreeMap<String, Pod> = [a, b, plain]
            .into_iter()
            .map(|p| (p.metadata.uid.clone().unwrap(), p))
            .collect();
        // Just started: the listed pods keep the addresses of their status.
        let before = ports.desired(&pods);
        assert_eq!(before.len(), 2);
        assert!(before.values().any(|t| t.pod_ip.to_string() == "10.42.0.5"));

        // a's worker found a new sandbox; b's found none ready.
        assert!(ports.report("a", Some("10.42.0.9".parse().unwrap())));
        assert!(!ports.report("a", Some("10.42.0.9".parse().unwrap())));
        assert!(ports.report("b", None));
        let after = ports.desired(&pods);
        assert_eq!(after.len(), 1);
        assert_eq!(
            after.values().next().unwrap().pod_ip.to_string(),
            "10.42.0.9"
        );
        assert!(ports.forget("a"));
        assert!(!ports.forget("a"));
    }

    #[test]
    fn only_pods_with_host_ports_want_them() {
        assert!(wants_host_ports(&pod("a", Some(80), None)));
        assert!(!wants_host_ports(&pod("a", None, None)));
        assert!(!wants_host_ports(&pod("a", Some(0), None)));
    }
}
