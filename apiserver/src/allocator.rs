//! Service ClusterIPs and NodePorts, allocated when a Service is written — as Kubernetes'
//! Service REST storage does, so the create response already carries them.
//!
//! Each allocation is a store key (`/registry/ranges/serviceips/<ip>`,
//! `/registry/ranges/servicenodeports/<port>`) created with create-if-absent, so two
//! concurrent creates can never get the same address and restarts lose nothing. [`plan`] is
//! the pure part: what a Service write needs (new addresses, addresses carried over from the
//! stored object, addresses to free). A repair pass frees allocations whose Service is gone
//! (a crash between allocating and storing, or a deletion path that did not free them).

use std::net::IpAddr;
use std::ops::RangeInclusive;

use serde_json::{json, Value};
use shoal_common::Cidr;

use crate::objects::Invalid;

pub const IP_PREFIX: &str = "/registry/ranges/serviceips/";
pub const NODE_PORT_PREFIX: &str = "/registry/ranges/servicenodeports/";

/// The ranges Services get addresses from.
#[derive(Debug, Clone)]
pub struct ServiceRanges {
    pub cluster_ips: Cidr,
    pub node_ports: RangeInclusive<u16>,
    /// The cluster DNS address, reserved at start by the `kube-system/kube-dns` Service
    /// (`None`: no such Service, as in API-only tests).
    pub cluster_dns: Option<IpAddr>,
}

impl Default for ServiceRanges {
    fn default() -> Self {
        ServiceRanges {
            cluster_ips: shoal_common::DEFAULT_SERVICE_CIDR
                .parse()
                .expect("the default service CIDR is a valid literal"),
            node_ports: 30000..=32767,
            cluster_dns: None,
        }
    }
}

/// One reserved address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allocation {
    ClusterIp(IpAddr),
    NodePort(u16),
}

impl Allocation {
    pub fn key(&self) -> String {
        match self {
            Allocation::ClusterIp(ip) => format!("{IP_PREFIX}{ip}"),
            Allocation::NodePort(port) => format!("{NODE_PORT_PREFIX}{port}"),
        }
    }

    /// The allocation a store key stands for.
    pub fn from_key(key: &str) -> Option<Allocation> {
        if let Some(ip) = key.strip_prefix(IP_PREFIX) {
            return ip.parse().ok().map(Allocation::ClusterIp);
        }
        key.strip_prefix(NODE_PORT_PREFIX)?
            .parse()
            .ok()
            .map(Allocation::NodePort)
    }
}

/// A wanted address: any free one, or a given one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want<T> {
    Any,
    Exactly(T),
}

/// What one Service write needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// A ClusterIP to reserve (then written to `spec.clusterIP(s)`).
    pub cluster_ip: Option<Want<IpAddr>>,
    /// NodePorts to reserve, by index into `spec.ports`.
    pub node_ports: Vec<(usize, Want<u16>)>,
    /// Held by the stored object and no longer needed: free them once the write succeeded.
    pub release: Vec<Allocation>,
}

fn spec_str<'a>(service: &'a Value, field: &str) -> &'a str {
    service
        .pointer(&format!("/spec/{field}"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn service_type(service: &Value) -> &str {
    match spec_str(service, "type") {
        "" => "ClusterIP",
        other => other,
    }
}

fn has_node_ports(service: &Value) -> bool {
    matches!(service_type(service), "NodePort" | "LoadBalancer")
}

/// The addresses a stored Service holds.
pub fn held(service: &Value) -> Vec<Allocation> {
    let mut held = Vec::new();
    if service_type(service) != "ExternalName" {
        if let Ok(ip) = spec_str(service, "clusterIP").parse() {
            held.push(Allocation::ClusterIp(ip));
        }
    }
    for port in ports(service) {
        if let Some(node_port) = node_port_of(port) {
            held.push(Allocation::NodePort(node_port));
        }
    }
    held
}

fn ports(service: &Value) -> &[Value] {
    service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn node_port_of(port: &Value) -> Option<u16> {
    port.get("nodePort")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
}

fn port_identity(port: &Value) -> (Option<u64>, &str) {
    (
        port.get("port").and_then(Value::as_u64),
        port.get("protocol")
            .and_then(Value::as_str)
            .unwrap_or("TCP"),
    )
}

/// Works out what writing `new` over `old` (None on create) needs, carrying over addresses
/// the stored object already holds (clients may omit them on update, as Kubernetes allows),
/// and checking requested ones against the ranges. `new` must already be defaulted.
pub fn plan(old: Option<&Value>, new: &mut Value, ranges: &ServiceRanges) -> Result<Plan, Invalid> {
    let mut plan = Plan::default();
    let old_held = old.map(held).unwrap_or_default();
    let old_ip = old_held.iter().find_map(|a| match a {
        Allocation::ClusterIp(ip) => Some(*ip),
        Allocation::NodePort(_) => None,
    });
    let mut keep: Vec<Allocation> = Vec::new();

    if service_type(new) == "ExternalName" {
        if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
    } else {
        let requested = spec_str(new, "clusterIP").to_string();
        match (requested.as_str(), old_ip) {
            ("None", _) => set_cluster_ip(new, "None"),
            ("", Some(ip)) => {
                set_cluster_ip(new, &ip.to_string());
                keep.push(Allocation::ClusterIp(ip));
            }
            ("", None) => plan.cluster_ip = Some(Want::Any),
            (text, old_ip) => {
                let ip: IpAddr = text.parse().map_err(|_| Invalid {
                    field: "spec.clusterIPs".into(),
                    message: format!(
                        "Invalid value: []string{{{text:?}}}: must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
                    ),
                })?;
                match old_ip {
                    Some(old_ip) if old_ip == ip => keep.push(Allocation::ClusterIp(ip)),
                    Some(_) => {
                        return Err(Invalid {
                            field: "spec.clusterIPs[0]".into(),
                            message: format!("Invalid value: {text:?}: may not change once set"),
                        })
                    }
                    None => {
                        if !ranges.cluster_ips.contains(ip) {
                            return Err(Invalid {
                                field: "spec.clusterIPs".into(),
                                message: format!(
                                    "Invalid value: []string{{{text:?}}}: failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}",
                                    ranges.cluster_ips
                                ),
                            });
                        }
                        plan.cluster_ip = Some(Want::Exactly(ip));
                    }
                }
                set_cluster_ip(new, text);
            }
        }
    }

    let old_ports: Vec<(Option<u64>, String, u16)> = old
        .map(|o| {
            ports(o)
                .iter()
                .filter_map(|p| {
                    let (port, protocol) = port_identity(p);
                    node_port_of(p).map(|n| (port, protocol.to_string(), n))
                })
                .collect()
        })
        .unwrap_or_default();
    let wants_node_ports = has_node_ports(new);
    if let Some(list) = new.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
        for (index, port) in list.iter_mut().enumerate() {
            let Some(port) = port.as_object_mut() else {
                continue;
            };
            if !wants_node_ports {
                port.remove("nodePort");
                continue;
            }
            let value = Value::Object(port.clone());
            let (number, protocol) = port_identity(&value);
            let old_node_port = old_ports
                .iter()
                .find(|(p, proto, _)| *p == number && proto == protocol)
                .map(|(_, _, n)| *n);
            match (node_port_of(&value), old_node_port) {
                (Some(requested), _) if old_ports.iter().any(|(_, _, n)| *n == requested) => {
                    keep.push(Allocation::NodePort(requested));
                }
                (Some(requested), _) => {
                    if !ranges.node_ports.contains(&requested) {
                        return Err(Invalid {
                            field: format!("spec.ports[{index}].nodePort"),
                            message: format!(
                                "Invalid value: {requested}: provided port is not in the valid range. The range of valid ports is {}-{}",
                                ranges.node_ports.start(),
                                ranges.node_ports.end()
                            ),
                        });
                    }
                    plan.node_ports.push((index, Want::Exactly(requested)));
                }
                (None, Some(carried)) => {
                    port.insert("nodePort".into(), json!(carried));
                    keep.push(Allocation::NodePort(carried));
                }
                (None, None) => plan.node_ports.push((index, Want::Any)),
            }
        }
    }
    plan.release = old_held.into_iter().filter(|a| !keep.contains(a)).collect();
    Ok(plan)
}

fn set_cluster_ip(service: &mut Value, ip: &str) {
    if let Some(spec) = service.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("clusterIP".into(), json!(ip));
        spec.insert("clusterIPs".into(), json!([ip]));
        if ip != "None" {
            let family = if ip.contains(':') { "IPv6" } else { "IPv4" };
            spec.entry("ipFamilies").or_insert_with(|| json!([family]));
            spec.entry("ipFamilyPolicy")
                .or_insert_with(|| json!("SingleStack"));
        }
    }
}

/// Writes reserved addresses into the Service.
pub fn record(service: &mut Value, plan: &Plan, ip: Option<IpAddr>, node_ports: &[(usize, u16)]) {
    if let (Some(_), Some(ip)) = (plan.cluster_ip, ip) {
        set_cluster_ip(service, &ip.to_string());
    }
    if let Some(list) = service
        .pointer_mut("/spec/ports")
        .and_then(Value::as_array_mut)
    {
        for (index, port) in node_ports {
            if let Some(port_object) = list.get_mut(*index).and_then(Value::as_object_mut) {
                port_object.insert("nodePort".into(), json!(port));
            }
        }
    }
}

/// Candidate offsets for a dynamic ClusterIP, starting at `seed`: the upper band first (the
/// lower one is kept for addresses users choose, like the DNS Service's `.10`, as Kubernetes
/// does), then the lower band. Never the network address, the first address (the `kubernetes`
/// Service's) or an IPv4 broadcast address.
pub fn ip_candidates(cidr: &Cidr, seed: u64) -> impl Iterator<Item = u128> {
    let size = cidr.size().min(1 << 20);
    let last = if cidr.is_ipv4() { size - 1 } else { size };
    let band = (size / 16).clamp(16, 256).min(last);
    let upper = last.saturating_sub(band).max(1);
    let start = u128::from(seed) % upper;
    let upper_band = (0..upper).map(move |i| band + (start + i) % upper);
    let lower_band = 2..band;
    upper_band
        .chain(lower_band)
        .filter(move |o| *o >= 2 && *o < last)
}

/// Candidate dynamic NodePorts starting at `seed`, each once.
pub fn node_port_candidates(range: &RangeInclusive<u16>, seed: u64) -> impl Iterator<Item = u16> {
    let start = *range.start();
    let count = u64::from(range.end().saturating_sub(start)) + 1;
    let first = seed % count;
    (0..count).filter_map(move |i| u16::try_from(u64::from(start) + (first + i) % count).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(spec: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "default"}, "spec": spec})
    }

    #[test]
    fn a_new_service_asks_for_any_address() {
        let mut svc = service(json!({"type": "ClusterIP", "ports": [{"port": 80}]}));
        let plan = plan(None, &mut svc, &ServiceRanges::default()).expect("plan");
        assert_eq!(plan.cluster_ip, Some(Want::Any));
        assert!(plan.node_ports.is_empty() && plan.release.is_empty());
    }

    #[test]
    fn a_chosen_address_must_lie_in_the_range() {
        let mut svc = service(json!({"clusterIP": "10.43.0.10"}));
        let plan = plan(None, &mut svc, &ServiceRanges::default()).expect("plan");
        assert_eq!(
            plan.cluster_ip,
            Some(Want::Exactly("10.43.0.10".parse().expect("ip")))
        );
        assert_eq!(svc["spec"]["clusterIPs"], json!(["10.43.0.10"]));
        let mut outside = service(json!({"clusterIP": "10.44.0.10"}));
        let err = super::plan(None, &mut outside, &ServiceRanges::default()).expect_err("outside");
        assert!(
            err.message.contains("not in the valid range"),
            "{}",
            err.message
        );
        let mut garbage = service(json!({"clusterIP": "ten"}));
        assert!(super::plan(None, &mut garbage, &ServiceRanges::default()).is_err());
    }

    #[test]
    fn updates_keep_addresses_and_may_not_change_them() {
        let old = service(json!({"type": "NodePort", "clusterIP": "10.43.5.5",
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}));
        // A client that omits the allocated values keeps them.
        let mut new =
            service(json!({"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP"}]}));
        let plan = plan(Some(&old), &mut new, &ServiceRanges::default()).expect("plan");
        assert_eq!(plan, Plan::default());
        assert_eq!(new["spec"]["clusterIP"], "10.43.5.5");
        assert_eq!(new["spec"]["ports"][0]["nodePort"], 30080);
        let mut changed = service(json!({"clusterIP": "10.43.5.6"}));
        let err = super::plan(Some(&old), &mut changed, &ServiceRanges::default())
            .expect_err("immutable");
        assert!(err.message.contains("may not change once set"));
    }

    #[test]
    fn leaving_node_port_frees_the_ports_and_external_name_frees_the_ip() {
        let old = service(json!({"type": "NodePort", "clusterIP": "10.43.5.5",
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}));
        let mut cluster_ip = service(
            json!({"type": "ClusterIP", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}),
        );
        let plan = plan(Some(&old), &mut cluster_ip, &ServiceRanges::default()).expect("plan");
        assert_eq!(plan.release, vec![Allocation::NodePort(30080)]);
        assert!(cluster_ip["spec"]["ports"][0].get("nodePort").is_none());
        let mut external = service(json!({"type": "ExternalName", "externalName": "example.com"}));
        let plan = super::plan(Some(&old), &mut external, &ServiceRanges::default()).expect("plan");
        assert_eq!(
            plan.release,
            vec![
                Allocation::ClusterIp("10.43.5.5".parse().expect("ip")),
                Allocation::NodePort(30080)
            ]
        );
    }

    #[test]
    fn node_ports_are_asked_for_per_port_and_checked() {
        let mut svc = service(
            json!({"type": "NodePort", "ports": [{"port": 80}, {"port": 443, "nodePort": 30443}]}),
        );
        let plan = plan(None, &mut svc, &ServiceRanges::default()).expect("plan");
        assert_eq!(
            plan.node_ports,
            vec![(0, Want::Any), (1, Want::Exactly(30443))]
        );
        let mut low = service(json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}));
        let err = super::plan(None, &mut low, &ServiceRanges::default()).expect_err("range");
        assert_eq!(err.field, "spec.ports[0].nodePort");
        assert!(err.message.contains("30000-32767"));
    }

    #[test]
    fn headless_services_get_no_address() {
        let mut svc = service(json!({"clusterIP": "None"}));
        let plan = plan(None, &mut svc, &ServiceRanges::default()).expect("plan");
        assert_eq!(plan, Plan::default());
        assert_eq!(svc["spec"]["clusterIPs"], json!(["None"]));
    }

    #[test]
    fn dynamic_candidates_skip_reserved_addresses_and_cover_the_range() {
        let cidr: Cidr = "10.43.0.0/24".parse().expect("cidr");
        let all: Vec<u128> = ip_candidates(&cidr, 12345).collect();
        assert!(!all.contains(&0) && !all.contains(&1) && !all.contains(&255));
        assert_eq!(all.len(), 253, "every usable address once");
        assert!(all[0] >= 16, "the upper band comes first");
        let ports: Vec<u16> = node_port_candidates(&(30000..=30009), 7).collect();
        assert_eq!(ports.len(), 10);
        assert_eq!(ports[0], 30007);
    }

    #[test]
    fn keys_round_trip() {
        for a in [
            Allocation::ClusterIp("10.43.0.1".parse().expect("ip")),
            Allocation::NodePort(30000),
        ] {
            assert_eq!(Allocation::from_key(&a.key()), Some(a));
        }
    }

    #[tokio::test]
    async fn repair_frees_orphans_and_restores_missing_keys(
    ) -> Result<(), Box<dyn std::error::Error>> {
        use std::sync::Arc;
        let store = Arc::new(shoal_store::MemStore::new(Default::default()));
        let api = crate::rest::Api::new(store.clone(), "127.0.0.1:6443".into());
        use shoal_store::Store;
        // An allocation nobody holds (a crash between reserving and storing), old enough.
        store
            .create(
                &format!("{IP_PREFIX}10.43.9.9"),
                br#"{"service":"default/gone","time":0}"#.to_vec(),
            )
            .await?;
        // A fresh one is left alone: its Service may be being created right now.
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        store
            .create(
                &format!("{NODE_PORT_PREFIX}30001"),
                format!(r#"{{"time":{now}}}"#).into_bytes(),
            )
            .await?;
        // A stored Service whose key is missing (say, restored from a backup).
        let service = json!({"metadata": {"name": "kept", "namespace": "default"},
                             "spec": {"type": "ClusterIP", "clusterIP": "10.43.7.7"}});
        store
            .create(
                "/registry/core/services/default/kept",
                serde_json::to_vec(&service)?,
            )
            .await?;
        let (freed, restored) = api
            .repair_service_allocations(std::time::Duration::from_secs(60))
            .await?;
        assert_eq!((freed, restored), (1, 1));
        assert!(store.get(&format!("{IP_PREFIX}10.43.9.9")).await?.is_none());
        assert!(store
            .get(&format!("{NODE_PORT_PREFIX}30001"))
            .await?
            .is_some());
        assert!(store.get(&format!("{IP_PREFIX}10.43.7.7")).await?.is_some());
        Ok(())
    }
}
