//! Service ClusterIPs and NodePorts, allocated when a Service is written — as Kubernetes'
//! Service REST storage does, so the create response already carries them.
//!
//! Each allocation is a store key (`/registry/ranges/serviceips/<ip>`,
//! `/registry/ranges/servicenodeports/<port>`) created with create-if-absent, so two
//! concurrent creates can never get the same address and restarts lose nothing. [`plan`] is
//! the pure part: what a Service write needs (new addresses, addresses carried over from the
//! stored object, addresses to free). A repair pass frees allocations whose Service is gone
//! (a crash between allocating and storing, or a deletion path that did not free them).
//!
//! Dual-stack follows Kubernetes: `spec.ipFamilyPolicy` (`SingleStack` by default,
//! `PreferDualStack`, `RequireDualStack`) and `spec.ipFamilies` decide how many ClusterIPs a
//! Service gets and of which families (the cluster's primary family first unless the Service
//! names one), each from its family's service range; `spec.clusterIPs` lists them in that
//! order and `spec.clusterIP` is the first. On update, omitted values are carried over from
//! the stored object; the primary address never changes, a secondary one may be added
//! (upgrade to dual-stack) or dropped (back to `SingleStack`).

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
    /// The primary family's range (`--service-cidr`'s first).
    pub cluster_ips: Cidr,
    /// A dual-stack cluster's other family's range.
    pub secondary_cluster_ips: Option<Cidr>,
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
            secondary_cluster_ips: None,
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

impl ServiceRanges {
    /// The ranges, primary first.
    pub fn ranges(&self) -> impl Iterator<Item = Cidr> + '_ {
        std::iter::once(self.cluster_ips).chain(self.secondary_cluster_ips)
    }

    /// The range of a family (`"IPv4"`/`"IPv6"`), if the cluster has it.
    pub fn of_family(&self, family: &str) -> Option<Cidr> {
        self.ranges().find(|c| family_of_cidr(c) == family)
    }
}

fn family_of_cidr(cidr: &Cidr) -> &'static str {
    if cidr.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

fn family_of(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// What one Service write needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// ClusterIPs to reserve: the index in `spec.clusterIPs` each goes to, and the range of
    /// its family.
    pub cluster_ips: Vec<(usize, Cidr, Want<IpAddr>)>,
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

/// The ClusterIPs a Service names: `spec.clusterIPs`, or `spec.clusterIP` alone when the
/// list is missing (as Kubernetes reads a client that predates the list).
fn cluster_ip_texts(service: &Value) -> Vec<String> {
    let listed: Vec<String> = service
        .pointer("/spec/clusterIPs")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    if !listed.is_empty() {
        return listed;
    }
    match spec_str(service, "clusterIP") {
        "" => Vec::new(),
        one => vec![one.to_string()],
    }
}

/// The addresses a stored Service holds.
pub fn held(service: &Value) -> Vec<Allocation> {
    let mut held = Vec::new();
    if service_type(service) != "ExternalName" {
        for text in cluster_ip_texts(service) {
            if let Ok(ip) = text.parse() {
                held.push(Allocation::ClusterIp(ip));
            }
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
    let mut keep: Vec<Allocation> = Vec::new();

    if service_type(new) == "ExternalName" {
        if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
    } else {
        plan_cluster_ips(old, new, ranges, &mut plan, &mut keep)?;
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

fn spec_strings(service: &Value, field: &str) -> Vec<String> {
    service
        .pointer(&format!("/spec/{field}"))
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn invalid_ip(text: &str) -> Invalid {
    Invalid {
        field: "spec.clusterIPs".into(),
        message: format!(
            "Invalid value: []string{{{text:?}}}: must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
        ),
    }
}

/// The ClusterIP half of [`plan`]: which families the Service gets (its policy and families,
/// carried over from `old` when omitted), and for each an address carried over, asked for or
/// to be found. Writes `clusterIP(s)`, `ipFamilies` and `ipFamilyPolicy`; addresses still to
/// be found are left empty for [`record`].
fn plan_cluster_ips(
    old: Option<&Value>,
    new: &mut Value,
    ranges: &ServiceRanges,
    plan: &mut Plan,
    keep: &mut Vec<Allocation>,
) -> Result<(), Invalid> {
    let old_ips: Vec<IpAddr> = old
        .filter(|o| service_type(o) != "ExternalName")
        .map(cluster_ip_texts)
        .unwrap_or_default()
        .iter()
        .filter_map(|t| t.parse().ok())
        .collect();
    let mut requested = cluster_ip_texts(new);
    let single = spec_str(new, "clusterIP");
    if !single.is_empty() && requested.first().map(String::as_str) != Some(single) {
        return Err(Invalid {
            field: "spec.clusterIPs[0]".into(),
            message: format!(
                "Invalid value: {:?}: must match `clusterIP` when both are specified",
                requested.first().cloned().unwrap_or_default()
            ),
        });
    }
    let old_headless = old.is_some_and(|o| spec_str(o, "clusterIP") == "None");
    if requested.first().map(String::as_str) == Some("None")
        || (requested.is_empty() && old_headless)
    {
        set_headless(new);
        return Ok(());
    }
    // Omitted on update: what the stored object has (Kubernetes' patchAllocatedValues).
    let mut policy = spec_str(new, "ipFamilyPolicy").to_string();
    let mut families = spec_strings(new, "ipFamilies");
    if let Some(old) = old.filter(|_| !old_ips.is_empty()) {
        if requested.is_empty() {
            requested = old_ips.iter().map(ToString::to_string).collect();
        }
        if policy.is_empty() {
            policy = spec_str(old, "ipFamilyPolicy").to_string();
        }
        if families.is_empty() {
            families = spec_strings(old, "ipFamilies");
        }
    }
    let dual_stack = ranges.secondary_cluster_ips.is_some();
    let policy = match policy.as_str() {
        "" | "SingleStack" => "SingleStack",
        "PreferDualStack" => "PreferDualStack",
        "RequireDualStack" if dual_stack => "RequireDualStack",
        "RequireDualStack" => {
            return Err(Invalid {
                field: "spec.ipFamilyPolicy".into(),
                message: "Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services".into(),
            })
        }
        other => {
            return Err(Invalid {
                field: "spec.ipFamilyPolicy".into(),
                message: format!(
                    "Unsupported value: {other:?}: supported values: \"SingleStack\", \"PreferDualStack\", \"RequireDualStack\""
                ),
            })
        }
    };
    let requested_ips: Vec<IpAddr> = requested
        .iter()
        .map(|t| t.parse().map_err(|_| invalid_ip(t)))
        .collect::<Result<_, _>>()?;
    // A downgrade to SingleStack drops the secondary family the stored object had.
    if policy == "SingleStack" && old.is_some() && spec_str(new, "ipFamilyPolicy") == policy {
        families.truncate(1);
        requested.truncate(1);
    }
    let requested_ips = &requested_ips[..requested.len().min(requested_ips.len())];
    if requested_ips.len() > 2 || families.len() > 2 {
        return Err(Invalid {
            field: "spec.ipFamilies".into(),
            message: "Too many: may have at most 2 IP families".into(),
        });
    }
    // Families follow the addresses asked for, then the families named.
    for (i, ip) in requested_ips.iter().enumerate() {
        match families.get(i) {
            Some(f) if f != family_of(*ip) => {
                return Err(Invalid {
                    field: format!("spec.clusterIPs[{i}]"),
                    message: format!(
                    "Invalid value: {:?}: expected an {f} value as indicated by `ipFamilies[{i}]`",
                    ip.to_string()
                ),
                })
            }
            Some(_) => {}
            None => families.push(family_of(*ip).to_string()),
        }
    }
    for (i, family) in families.iter().enumerate() {
        if family != "IPv4" && family != "IPv6" {
            return Err(Invalid {
                field: format!("spec.ipFamilies[{i}]"),
                message: format!(
                    "Unsupported value: {family:?}: supported values: \"IPv4\", \"IPv6\""
                ),
            });
        }
    }
    if families.len() == 2 && families[0] == families[1] {
        return Err(Invalid {
            field: "spec.ipFamilies[1]".into(),
            message: format!("Duplicate value: {:?}", families[1]),
        });
    }
    if families.len() == 2 && policy == "SingleStack" {
        return Err(Invalid {
            field: "spec.ipFamilyPolicy".into(),
            message: "Invalid value: \"SingleStack\": must be RequireDualStack or PreferDualStack when multiple IP families are specified".into(),
        });
    }
    if families.is_empty() {
        families.push(family_of_cidr(&ranges.cluster_ips).to_string());
    }
    if policy != "SingleStack" && families.len() == 1 {
        if let Some(other) = ranges.ranges().find(|c| family_of_cidr(c) != families[0]) {
            families.push(family_of_cidr(&other).to_string());
        }
    }
    if let Some(first) = old_ips.first() {
        if families[0] != family_of(*first) {
            return Err(Invalid {
                field: "spec.ipFamilies[0]".into(),
                message: format!("Invalid value: {:?}: may not change once set", families[0]),
            });
        }
    }
    let mut texts = Vec::new();
    for (i, family) in families.iter().enumerate() {
        let Some(range) = ranges.of_family(family) else {
            // PreferDualStack of a family the cluster lacks was never added above.
            return Err(Invalid {
                field: format!("spec.ipFamilies[{i}]"),
                message: format!("Invalid value: {family:?}: not configured on this cluster"),
            });
        };
        let carried = old_ips.iter().copied().find(|ip| family_of(*ip) == family);
        match (requested_ips.get(i).copied(), carried) {
            (Some(ip), Some(had)) if ip != had => {
                return Err(Invalid {
                    field: format!("spec.clusterIPs[{i}]"),
                    message: format!(
                        "Invalid value: {:?}: may not change once set",
                        ip.to_string()
                    ),
                })
            }
            (_, Some(had)) => {
                keep.push(Allocation::ClusterIp(had));
                texts.push(had.to_string());
            }
            (Some(ip), None) => {
                if !range.contains(ip) {
                    return Err(Invalid {
                        field: "spec.clusterIPs".into(),
                        message: format!(
                            "Invalid value: []string{{{:?}}}: failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {range}",
                            ip.to_string()
                        ),
                    });
                }
                plan.cluster_ips.push((i, range, Want::Exactly(ip)));
                texts.push(ip.to_string());
            }
            (None, None) => {
                plan.cluster_ips.push((i, range, Want::Any));
                texts.push(String::new());
            }
        }
    }
    if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("clusterIP".into(), json!(texts[0]));
        spec.insert("clusterIPs".into(), json!(texts));
        spec.insert("ipFamilies".into(), json!(families));
        spec.insert("ipFamilyPolicy".into(), json!(policy));
    }
    Ok(())
}

/// Makes the Service headless.
fn set_headless(service: &mut Value) {
    if let Some(spec) = service.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("clusterIP".into(), json!("None"));
        spec.insert("clusterIPs".into(), json!(["None"]));
    }
}

/// Writes reserved addresses into the Service: `ips` by their index in `spec.clusterIPs`
/// (the first is also `spec.clusterIP`).
pub fn record(service: &mut Value, ips: &[(usize, IpAddr)], node_ports: &[(usize, u16)]) {
    for (index, ip) in ips {
        if let Some(slot) = service.pointer_mut(&format!("/spec/clusterIPs/{index}")) {
            *slot = json!(ip.to_string());
        }
        if *index == 0 {
            if let Some(spec) = service.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("clusterIP".into(), json!(ip.to_string()));
            }
        }
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
        let range = ServiceRanges::default().cluster_ips;
        assert_eq!(plan.cluster_ips, vec![(0, range, Want::Any)]);
        assert_eq!(svc["spec"]["ipFamilies"], json!(["IPv4"]));
        assert_eq!(svc["spec"]["ipFamilyPolicy"], "SingleStack");
        assert!(plan.node_ports.is_empty() && plan.release.is_empty());
    }

    #[test]
    fn a_chosen_address_must_lie_in_the_range() {
        let mut svc = service(json!({"clusterIP": "10.43.0.10"}));
        let plan = plan(None, &mut svc, &ServiceRanges::default()).expect("plan");
        assert_eq!(
            plan.cluster_ips,
            vec![(
                0,
                ServiceRanges::default().cluster_ips,
                Want::Exactly("10.43.0.10".parse().expect("ip"))
            )]
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

    fn dual() -> ServiceRanges {
        ServiceRanges {
            secondary_cluster_ips: Some("fd00:43::/112".parse().expect("cidr")),
            ..ServiceRanges::default()
        }
    }

    fn v4() -> Cidr {
        ServiceRanges::default().cluster_ips
    }

    fn v6() -> Cidr {
        "fd00:43::/112".parse().expect("cidr")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn dual_stack_policies_ask_for_one_address_per_family() {
        // SingleStack (the default) stays single on a dual-stack cluster.
        let mut single = service(json!({"ports": [{"port": 80}]}));
        let p = plan(None, &mut single, &dual()).expect("plan");
        assert_eq!(p.cluster_ips, vec![(0, v4(), Want::Any)]);
        // PreferDualStack and RequireDualStack: the primary family first, then the other.
        for policy in ["PreferDualStack", "RequireDualStack"] {
            let mut svc = service(json!({"ipFamilyPolicy": policy}));
            let p = plan(None, &mut svc, &dual()).expect("plan");
            assert_eq!(
                p.cluster_ips,
                vec![(0, v4(), Want::Any), (1, v6(), Want::Any)]
            );
            assert_eq!(svc["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
            assert_eq!(svc["spec"]["ipFamilyPolicy"], policy);
            record(
                &mut svc,
                &[(0, ip("10.43.9.9")), (1, ip("fd00:43::99"))],
                &[],
            );
            assert_eq!(svc["spec"]["clusterIP"], "10.43.9.9");
            assert_eq!(
                svc["spec"]["clusterIPs"],
                json!(["10.43.9.9", "fd00:43::99"])
            );
        }
        // IPv6 first when the Service says so; a chosen address of either family.
        let mut svc = service(
            json!({"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv6"],
                                     "clusterIPs": ["fd00:43::10"]}),
        );
        let p = plan(None, &mut svc, &dual()).expect("plan");
        assert_eq!(
            p.cluster_ips,
            vec![
                (0, v6(), Want::Exactly(ip("fd00:43::10"))),
                (1, v4(), Want::Any)
            ]
        );
        assert_eq!(svc["spec"]["clusterIP"], "fd00:43::10");
        assert_eq!(svc["spec"]["ipFamilies"], json!(["IPv6", "IPv4"]));
        // An IPv6-only Service on a dual-stack cluster.
        let mut svc = service(json!({"ipFamilies": ["IPv6"]}));
        let p = plan(None, &mut svc, &dual()).expect("plan");
        assert_eq!(p.cluster_ips, vec![(0, v6(), Want::Any)]);
        // PreferDualStack on a single-stack cluster is single.
        let mut svc = service(json!({"ipFamilyPolicy": "PreferDualStack"}));
        let p = plan(None, &mut svc, &ServiceRanges::default()).expect("plan");
        assert_eq!(p.cluster_ips, vec![(0, v4(), Want::Any)]);
        assert_eq!(svc["spec"]["ipFamilies"], json!(["IPv4"]));
    }

    #[test]
    fn dual_stack_requests_are_checked() {
        for (spec, ranges, field, needle) in [
            (
                json!({"ipFamilyPolicy": "RequireDualStack"}),
                ServiceRanges::default(),
                "spec.ipFamilyPolicy",
                "not configured for dual-stack",
            ),
            (
                json!({"ipFamilyPolicy": "Sometimes"}),
                dual(),
                "spec.ipFamilyPolicy",
                "Unsupported value",
            ),
            (
                json!({"ipFamilies": ["IPv4", "IPv6"]}),
                dual(),
                "spec.ipFamilyPolicy",
                "must be RequireDualStack or PreferDualStack",
            ),
            (
                json!({"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv4", "IPv4"]}),
                dual(),
                "spec.ipFamilies[1]",
                "Duplicate",
            ),
            (
                json!({"ipFamilies": ["IPv6"]}),
                ServiceRanges::default(),
                "spec.ipFamilies[0]",
                "not configured on this cluster",
            ),
            (
                json!({"ipFamilies": ["IPv4"], "clusterIPs": ["fd00:43::5"]}),
                dual(),
                "spec.clusterIPs[0]",
                "expected an IPv4 value",
            ),
            (
                json!({"ipFamilyPolicy": "PreferDualStack", "clusterIPs": ["10.43.0.5", "fd00:44::5"]}),
                dual(),
                "spec.clusterIPs",
                "not in the valid range",
            ),
            (
                json!({"clusterIP": "10.43.0.6", "clusterIPs": ["10.43.0.5"]}),
                dual(),
                "spec.clusterIPs[0]",
                "must match",
            ),
        ] {
            let mut svc = service(spec.clone());
            let err = plan(None, &mut svc, &ranges).expect_err(&spec.to_string());
            assert_eq!(err.field, field, "{spec}: {}", err.message);
            assert!(err.message.contains(needle), "{spec}: {}", err.message);
        }
    }

    #[test]
    fn dual_stack_updates_carry_add_and_drop_the_secondary_address() {
        let old = service(
            json!({"clusterIP": "10.43.5.5", "clusterIPs": ["10.43.5.5"],
            "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack"}),
        );
        // An update that omits everything keeps it single.
        let mut same = service(json!({}));
        assert_eq!(
            plan(Some(&old), &mut same, &dual()).expect("plan"),
            Plan::default()
        );
        assert_eq!(same["spec"]["clusterIPs"], json!(["10.43.5.5"]));
        // Upgrading asks for the IPv6 address only.
        let mut up = service(json!({"ipFamilyPolicy": "PreferDualStack"}));
        let p = plan(Some(&old), &mut up, &dual()).expect("plan");
        assert_eq!(p.cluster_ips, vec![(1, v6(), Want::Any)]);
        assert!(p.release.is_empty());
        assert_eq!(up["spec"]["clusterIPs"], json!(["10.43.5.5", ""]));
        record(&mut up, &[(1, ip("fd00:43::7"))], &[]);
        assert_eq!(up["spec"]["clusterIPs"], json!(["10.43.5.5", "fd00:43::7"]));
        assert_eq!(up["spec"]["clusterIP"], "10.43.5.5");
        // The dual-stack Service keeps both when a client omits them.
        let mut kept = service(json!({}));
        let p = plan(Some(&up), &mut kept, &dual()).expect("plan");
        assert_eq!(p, Plan::default());
        assert_eq!(
            kept["spec"]["clusterIPs"],
            json!(["10.43.5.5", "fd00:43::7"])
        );
        assert_eq!(kept["spec"]["ipFamilyPolicy"], "PreferDualStack");
        // Back to SingleStack frees the secondary address.
        let mut down = service(json!({"ipFamilyPolicy": "SingleStack"}));
        let p = plan(Some(&up), &mut down, &dual()).expect("plan");
        assert_eq!(p.release, vec![Allocation::ClusterIp(ip("fd00:43::7"))]);
        assert_eq!(down["spec"]["clusterIPs"], json!(["10.43.5.5"]));
        assert_eq!(down["spec"]["ipFamilies"], json!(["IPv4"]));
        // The primary family never changes: the carried address is not of the family named.
        let mut flip = service(json!({"ipFamilies": ["IPv6"], "ipFamilyPolicy": "SingleStack"}));
        let err = plan(Some(&old), &mut flip, &dual()).expect_err("flip");
        assert_eq!(err.field, "spec.clusterIPs[0]");
        assert!(
            err.message.contains("expected an IPv6 value"),
            "{}",
            err.message
        );
        // Both addresses are held, and freed with the Service.
        assert_eq!(
            held(&up),
            vec![
                Allocation::ClusterIp(ip("10.43.5.5")),
                Allocation::ClusterIp(ip("fd00:43::7"))
            ]
        );
        // An update of a headless Service that omits clusterIP stays headless.
        let headless = service(json!({"clusterIP": "None", "clusterIPs": ["None"]}));
        let mut again = service(json!({}));
        assert_eq!(
            plan(Some(&headless), &mut again, &dual()).expect("plan"),
            Plan::default()
        );
        assert_eq!(again["spec"]["clusterIP"], "None");
    }

    #[test]
    fn ipv6_candidates_stay_inside_a_slash_112() {
        let all: Vec<u128> = ip_candidates(&v6(), 99).collect();
        assert!(!all.contains(&0) && !all.contains(&1));
        assert!(all.iter().all(|o| *o < 65_536));
        assert!(v6().nth(all[0]).is_some());
    }
}
