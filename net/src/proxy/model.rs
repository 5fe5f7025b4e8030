//! What the proxy should program for one Service, decided from the Service, its EndpointSlices
//! and this node, with no IO: one [`ServicePort`] per port of the Service, carrying its
//! addresses and the endpoints its ClusterIP traffic and its external (NodePort, externalIPs,
//! load-balancer) traffic go to.
//!
//! Endpoint choice follows kube-proxy (`pkg/proxy/topology.go`): ready endpoints; when a set
//! has none ready, the serving ones that are terminating (so connections drain to them);
//! `internalTrafficPolicy: Local` / `externalTrafficPolicy: Local` keep only endpoints on this
//! node.
//!
//! Dual-stack as kube-proxy does it (one proxier per family): a Service gets a
//! [`ServicePort`] per port *and family* of its ClusterIPs, each with that family's external
//! addresses and the endpoints of that family's EndpointSlices (`addressType`). A family's
//! ports know nothing of the other's: an IPv6 ClusterIP whose Service has only IPv4 endpoints
//! has none.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use super::ruleset::Family;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label an EndpointSlice names its Service with.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// kube-proxy's default ClientIP affinity timeout (three hours).
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

/// A Service's namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl ServiceName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceName {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The Service an object names: its own namespace and name.
    pub fn of_service(service: &Service) -> Option<Self> {
        Some(ServiceName::new(
            service.metadata.namespace.clone()?,
            service.metadata.name.clone()?,
        ))
    }

    /// The Service an EndpointSlice belongs to (by its `kubernetes.io/service-name` label).
    pub fn of_slice(slice: &EndpointSlice) -> Option<Self> {
        let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
        Some(ServiceName::new(
            slice.metadata.namespace.clone()?,
            name.clone(),
        ))
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A transport protocol a Service port uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    fn parse(s: Option<&str>) -> Option<Self> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// nftables' name for it.
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// A backend address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
}

/// Everything programmed for one port of one Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub service: ServiceName,
    /// The family of every address below.
    pub family: Family,
    /// The port's name, or its number when unnamed.
    pub port_name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub cluster_ips: Vec<IpAddr>,
    pub node_port: Option<u16>,
    /// `spec.externalIPs` and the load-balancer ingress addresses (reached on `port`).
    pub external_ips: Vec<IpAddr>,
    /// ClientIP affinity's timeout, when the Service asks for it.
    pub affinity_seconds: Option<u32>,
    /// Where ClusterIP traffic goes (sorted, no duplicates).
    pub internal: Vec<Endpoint>,
    /// Where NodePort and external-address traffic goes (sorted, no duplicates).
    pub external: Vec<Endpoint>,
    /// Whether the Service has usable endpoints anywhere (so that an empty `internal` or
    /// `external` under a Local policy drops rather than rejects, as kube-proxy does).
    pub any_endpoints: bool,
    /// `externalTrafficPolicy: Local`: external traffic keeps its source (no masquerade).
    pub external_local: bool,
    /// The addresses among its endpoints of pods that may run on this node (on it, or with
    /// no node named): the only ones that can reach themselves through the Service (hairpin).
    pub local_ips: Vec<IpAddr>,
}

impl ServicePort {
    /// A stable identity used for naming nft objects: `ns/name/proto/port-name`.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.service.namespace,
            self.service.name,
            self.protocol.nft(),
            self.port_name
        )
    }

    /// Whether traffic reaches it from outside the cluster network.
    pub fn has_external(&self) -> bool {
        self.node_port.is_some() || !self.external_ips.is_empty()
    }
}

/// What the model needs to know about this node and the proxy's configuration.
#[derive(Debug, Clone, Default)]
pub struct NodeContext {
    pub node_name: String,
    /// ClusterIPs answered on the node by something else (the built-in DNS server): Services
    /// holding one are left alone, even without endpoints.
    pub node_local_ips: BTreeSet<IpAddr>,
}

/// The whole desired state: every Service's ports, by Service.
pub type Model = BTreeMap<ServiceName, Vec<ServicePort>>;

/// One endpoint of a slice with what selection needs.
struct Candidate {
    endpoint: Endpoint,
    ready: bool,
    serving_terminating: bool,
    local: bool,
    /// On this node or on none named.
    maybe_local: bool,
}

/// The ports the proxy programs for `service`, given the EndpointSlices that name it: for each
/// family of its ClusterIPs (IPv4 first), one per port. Empty for Services the proxy does not
/// handle (ExternalName, headless, or holding a node-local ClusterIP).
pub fn service_ports<'a>(
    service: &Service,
    slices: impl IntoIterator<Item = &'a EndpointSlice> + Clone,
    node: &NodeContext,
) -> Vec<ServicePort> {
    let Some(name) = ServiceName::of_service(service) else {
        return Vec::new();
    };
    let Some(spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let mut cluster_ips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    cluster_ips.sort();
    cluster_ips.dedup();
    if cluster_ips.is_empty()
        || cluster_ips
            .iter()
            .any(|ip| node.node_local_ips.contains(ip))
    {
        return Vec::new();
    }
    let with_node_ports = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
    let mut external_ips: Vec<IpAddr> = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    if spec.type_.as_deref() == Some("LoadBalancer") {
        external_ips.extend(
            service
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.as_deref()?.parse::<IpAddr>().ok()),
        );
    }
    external_ips.sort();
    external_ips.dedup();
    let affinity_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_SECONDS)
    });
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");

    let mut ports = Vec::new();
    for family in Family::ALL {
        let of_family = |ips: &[IpAddr]| -> Vec<IpAddr> {
            ips.iter()
                .filter(|ip| Family::of(ip) == family)
                .copied()
                .collect()
        };
        let cluster_ips = of_family(&cluster_ips);
        if cluster_ips.is_empty() {
            continue;
        }
        let external_ips = of_family(&external_ips);
        for port in spec.ports.iter().flatten() {
            let Some(protocol) = Protocol::parse(port.protocol.as_deref()) else {
                continue;
            };
            let Ok(number) = u16::try_from(port.port) else {
                continue;
            };
            let candidates =
                candidates(slices.clone(), family, port.name.as_deref(), protocol, node);
            let cluster = select(&candidates, false);
            let local = select(&candidates, true);
            let mut service_port = ServicePort {
                service: name.clone(),
                family,
                port_name: port
                    .name
                    .clone()
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| number.to_string()),
                protocol,
                port: number,
                cluster_ips: cluster_ips.clone(),
                node_port: port
                    .node_port
                    .filter(|_| with_node_ports)
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p != 0),
                external_ips: external_ips.clone(),
                affinity_seconds,
                internal: if internal_local {
                    local.clone()
                } else {
                    cluster.clone()
                },
                external: Vec::new(),
                any_endpoints: !cluster.is_empty(),
                local_ips: {
                    let chosen: BTreeSet<IpAddr> =
                        cluster.iter().chain(&local).map(|e| e.ip).collect();
                    let mut ips: Vec<IpAddr> = candidates
                        .iter()
                        .filter(|c| c.maybe_local && chosen.contains(&c.endpoint.ip))
                        .map(|c| c.endpoint.ip)
                        .collect();
                    ips.sort();
                    ips.dedup();
                    ips
                },
                external_local,
            };
            if service_port.has_external() {
                service_port.external = if external_local { local } else { cluster };
            }
            ports.push(service_port);
        }
    }
    ports
}

/// The endpoints of `family`'s `slices` serving the Service port named `port_name`
/// (Kubernetes matches a slice's port to a Service port by name and protocol).
fn candidates<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    family: Family,
    port_name: Option<&str>,
    protocol: Protocol,
    node: &NodeContext,
) -> Vec<Candidate> {
    let wanted = port_name.unwrap_or("");
    let mut out = Vec::new();
    for slice in slices {
        let address_type = match family {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        };
        if slice.address_type != address_type {
            continue;
        }
        let Some(target) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == wanted
                && Protocol::parse(p.protocol.as_deref()) == Some(protocol)
        }) else {
            continue;
        };
        let Some(port) = target.port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let Some(ip) = endpoint
                .addresses
                .first()
                .and_then(|a| a.parse::<IpAddr>().ok())
                .filter(|ip| Family::of(ip) == family)
            else {
                continue;
            };
            let conditions = endpoint.conditions.as_ref();
            // Kubernetes: a missing `ready` means ready; a missing `serving` means `ready`.
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            out.push(Candidate {
                endpoint: Endpoint { ip, port },
                ready: ready && !terminating,
                serving_terminating: serving && terminating,
                local: endpoint.node_name.as_deref() == Some(node.node_name.as_str()),
                maybe_local: endpoint
                    .node_name
                    .as_deref()
                    .is_none_or(|n| n == node.node_name),
            });
        }
    }
    out
}

/// Ready endpoints, or, when none is ready, the serving terminating ones; `local_only` keeps
/// this node's.
fn select(candidates: &[Candidate], local_only: bool) -> Vec<Endpoint> {
    let scope = || candidates.iter().filter(|c| !local_only || c.local);
    let mut chosen: Vec<Endpoint> = scope().filter(|c| c.ready).map(|c| c.endpoint).collect();
    if chosen.is_empty() {
        chosen = scope()
            .filter(|c| c.serving_terminating)
            .map(|c| c.endpoint)
            .collect();
    }
    chosen.sort();
    chosen.dedup();
    chosen
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn service(value: serde_json::Value) -> Service {
        serde_json::from_value(value).unwrap()
    }

    pub(crate) fn slice(value: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(value).unwrap()
    }

    pub(crate) fn node() -> NodeContext {
        NodeContext {
            node_name: "n1".into(),
            node_local_ips: ["10.43.0.10".parse().unwrap()].into(),
        }
    }

    pub(crate) fn web() -> Service {
        service(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.43.0.20", "clusterIPs": ["10.43.0.20"],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
        }))
    }

    /// A slice of `web` with (ip, node, ready, serving, terminating) endpoints.
    pub(crate) fn web_slice(endpoints: &[(&str, &str, bool, bool, bool)]) -> EndpointSlice {
        let endpoints: Vec<_> = endpoints
            .iter()
            .map(|(ip, node, ready, serving, terminating)| {
                json!({"addresses": [ip], "nodeName": node,
                       "conditions": {"ready": ready, "serving": serving, "terminating": terminating}})
            })
            .collect();
        slice(json!({
            "metadata": {"namespace": "default", "name": "web-abc",
                         "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
    }

    fn ep(ip: &str, port: u16) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port,
        }
    }

    #[test]
    fn ready_endpoints_only() {
        let s = web_slice(&[
            ("10.42.0.5", "n1", true, true, false),
            ("10.42.0.6", "n2", false, false, false),
            ("10.42.0.7", "n2", true, true, false),
        ]);
        let ports = service_ports(&web(), [&s], &node());
        assert_eq!(ports.len(), 1);
        let p = &ports[0];
        assert_eq!(p.key(), "default/web/tcp/http");
        assert_eq!(p.port, 80);
        assert_eq!(p.cluster_ips, vec!["10.43.0.20".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            p.internal,
            vec![ep("10.42.0.5", 8080), ep("10.42.0.7", 8080)]
        );
        assert!(p.external.is_empty(), "no NodePort, no external IPs");
        assert!(p.any_endpoints);
        assert_eq!(
            p.local_ips,
            vec!["10.42.0.5".parse::<IpAddr>().unwrap()],
            "this node's chosen endpoints"
        );
    }

    #[test]
    fn terminating_serving_endpoints_only_when_none_ready() {
        let draining = web_slice(&[
            ("10.42.0.5", "n1", false, true, true),
            ("10.42.0.6", "n1", false, false, true),
        ]);
        let p = &service_ports(&web(), [&draining], &node())[0];
        assert_eq!(p.internal, vec![ep("10.42.0.5", 8080)]);

        let mixed = web_slice(&[
            ("10.42.0.5", "n1", false, true, true),
            ("10.42.0.7", "n1", true, true, false),
        ]);
        let p = &service_ports(&web(), [&mixed], &node())[0];
        assert_eq!(p.internal, vec![ep("10.42.0.7", 8080)]);
    }

    #[test]
    fn no_slices_means_no_endpoints() {
        let p = &service_ports(&web(), [], &node())[0];
        assert!(p.internal.is_empty());
        assert!(!p.any_endpoints);
    }

    #[test]
    fn endpoints_merged_across_slices_without_duplicates() {
        let a = web_slice(&[("10.42.0.5", "n1", true, true, false)]);
        let b = web_slice(&[
            ("10.42.0.5", "n1", true, true, false),
            ("10.42.0.9", "n1", true, true, false),
        ]);
        let p = &service_ports(&web(), [&a, &b], &node())[0];
        assert_eq!(
            p.internal,
            vec![ep("10.42.0.5", 8080), ep("10.42.0.9", 8080)]
        );
    }

    #[test]
    fn slice_port_matched_by_name_and_protocol() {
        let udp = slice(json!({
            "metadata": {"namespace": "default", "name": "web-udp",
                         "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.42.0.5"]}],
            "ports": [{"name": "http", "port": 8080, "protocol": "UDP"}]
        }));
        let p = &service_ports(&web(), [&udp], &node())[0];
        assert!(p.internal.is_empty());
    }

    #[test]
    fn node_local_cluster_ip_left_alone() {
        let dns = service(json!({
            "metadata": {"namespace": "kube-system", "name": "kube-dns"},
            "spec": {"clusterIP": "10.43.0.10",
                     "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}
        }));
        assert!(service_ports(&dns, [], &node()).is_empty());
    }

    #[test]
    fn headless_and_external_name_skipped() {
        let headless = service(json!({
            "metadata": {"namespace": "default", "name": "h"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80}]}
        }));
        assert!(service_ports(&headless, [], &node()).is_empty());
        let external = service(json!({
            "metadata": {"namespace": "default", "name": "e"},
            "spec": {"type": "ExternalName", "externalName": "example.com"}
        }));
        assert!(service_ports(&external, [], &node()).is_empty());
    }

    #[test]
    fn node_port_external_ips_and_load_balancer_ingress() {
        let lb = service(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.43.0.20",
                     "externalIPs": ["192.0.2.7"],
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}, {"hostname": "x"}]}}
        }));
        let s = web_slice(&[("10.42.0.5", "n2", true, true, false)]);
        let p = &service_ports(&lb, [&s], &node())[0];
        assert_eq!(p.node_port, Some(30080));
        assert_eq!(
            p.external_ips,
            vec![
                "192.0.2.1".parse::<IpAddr>().unwrap(),
                "192.0.2.7".parse().unwrap()
            ]
        );
        assert_eq!(p.external, vec![ep("10.42.0.5", 8080)]);
        assert!(!p.external_local);

        // A ClusterIP Service ignores a stray nodePort.
        let cluster = service(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "10.43.0.20",
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}
        }));
        assert_eq!(service_ports(&cluster, [&s], &node())[0].node_port, None);
    }

    #[test]
    fn traffic_policies_local_keep_this_nodes_endpoints() {
        let local = service(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"type": "NodePort", "clusterIP": "10.43.0.20",
                     "internalTrafficPolicy": "Local", "externalTrafficPolicy": "Local",
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}
        }));
        let s = web_slice(&[
            ("10.42.0.5", "n1", true, true, false),
            ("10.42.1.5", "n2", true, true, false),
        ]);
        let p = &service_ports(&local, [&s], &node())[0];
        assert_eq!(p.internal, vec![ep("10.42.0.5", 8080)]);
        assert_eq!(p.external, vec![ep("10.42.0.5", 8080)]);
        assert!(p.external_local);

        let remote_only = web_slice(&[("10.42.1.5", "n2", true, true, false)]);
        let p = &service_ports(&local, [&remote_only], &node())[0];
        assert!(p.internal.is_empty() && p.external.is_empty());
        assert!(
            p.any_endpoints,
            "endpoints exist elsewhere: drop, not reject"
        );
    }

    #[test]
    fn client_ip_affinity_timeout() {
        let mut svc = web();
        let spec = svc.spec.as_mut().unwrap();
        spec.session_affinity = Some("ClientIP".into());
        assert_eq!(
            service_ports(&svc, [], &node())[0].affinity_seconds,
            Some(DEFAULT_AFFINITY_SECONDS)
        );
        let spec = svc.spec.as_mut().unwrap();
        spec.session_affinity_config =
            serde_json::from_value(json!({"clientIP": {"timeoutSeconds": 60}})).unwrap();
        assert_eq!(
            service_ports(&svc, [], &node())[0].affinity_seconds,
            Some(60)
        );
        assert_eq!(service_ports(&web(), [], &node())[0].affinity_seconds, None);
    }

    #[test]
    fn dual_stack_ports_per_family() {
        let svc = service(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"type": "NodePort", "clusterIP": "10.43.0.20",
                     "clusterIPs": ["10.43.0.20", "fd43::20"],
                     "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack",
                     "externalIPs": ["192.0.2.7", "2001:db8::7"],
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}
        }));
        let v4 = web_slice(&[("10.42.0.5", "n1", true, true, false)]);
        let v6 = slice(json!({
            "metadata": {"namespace": "default", "name": "web-v6",
                         "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv6",
            "endpoints": [{"addresses": ["fd42::5"], "nodeName": "n1"},
                          {"addresses": ["10.42.0.9"], "nodeName": "n1"}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }));
        let ports = service_ports(&svc, [&v4, &v6], &node());
        assert_eq!(ports.len(), 2);
        let (p4, p6) = (&ports[0], &ports[1]);
        assert_eq!(p4.family, Family::V4);
        assert_eq!(
            p4.cluster_ips,
            vec!["10.43.0.20".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            p4.external_ips,
            vec!["192.0.2.7".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(p4.internal, vec![ep("10.42.0.5", 8080)]);
        assert_eq!(p6.family, Family::V6);
        assert_eq!(p6.cluster_ips, vec!["fd43::20".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            p6.external_ips,
            vec!["2001:db8::7".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            p6.internal,
            vec![ep("fd42::5", 8080)],
            "only IPv6 slices, only IPv6 addresses"
        );
        assert_eq!(
            p6.node_port,
            Some(30080),
            "a NodePort answers on both families"
        );
        assert_eq!(p4.key(), p6.key());

        // IPv6 single-stack: one port, with no endpoints when only IPv4 slices exist.
        let only6 = service(json!({
            "metadata": {"namespace": "default", "name": "web"},
            "spec": {"clusterIP": "fd43::21", "clusterIPs": ["fd43::21"],
                     "ports": [{"name": "http", "port": 80}]}
        }));
        let ports = service_ports(&only6, [&v4], &node());
        assert_eq!(ports.len(), 1);
        assert!(ports[0].internal.is_empty() && !ports[0].any_endpoints);
    }

    #[test]
    fn unnamed_port_named_by_number() {
        let svc = service(json!({
            "metadata": {"namespace": "default", "name": "plain"},
            "spec": {"clusterIP": "10.43.0.21", "ports": [{"port": 53, "protocol": "UDP"}]}
        }));
        let s = slice(json!({
            "metadata": {"namespace": "default", "name": "plain-x",
                         "labels": {SERVICE_NAME_LABEL: "plain"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.42.0.8"]}],
            "ports": [{"port": 5353, "protocol": "UDP"}]
        }));
        let p = &service_ports(&svc, [&s], &node())[0];
        assert_eq!(p.key(), "default/plain/udp/53");
        assert_eq!(p.internal, vec![ep("10.42.0.8", 5353)]);
    }
}
