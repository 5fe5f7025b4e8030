//! Host ports: a container's `ports[].hostPort` reachable on the node's addresses, the way the
//! CNI `portmap` plugin does it — DNAT in nftables — in a table of our own, `ip shoal-hostport`,
//! so neither the Service proxy's table nor the host's firewall is touched.
//!
//! - [`mappings`] (pure): the pods on this node with their addresses → the host ports to map,
//!   one per (host address, protocol, port): the first pod claiming a port keeps it (the
//!   scheduler keeps two pods from claiming one; a race must not break the whole table).
//! - [`ruleset`] (pure): the mappings → the whole table as one `nft -f -` transaction that
//!   replaces whatever an earlier run left, so applying it is also the reconciliation at start.
//! - [`apply`]: runs it through [`crate::proxy::nft::Nft`].
//!
//! The table: `host-ip-ports` (`hostIP . protocol . port`) and `any-ip-ports` (`protocol .
//! port`, for a hostPort without `hostIP`, on every local address) are maps to the pod's
//! address and container port, looked up in nat `prerouting` (traffic arriving at the node)
//! and `output` (the node's own processes) at priority −101, one step before the Service
//! proxy's DNAT, as portmap's chain comes first. Loopback destinations are left alone: DNAT
//! from 127.0.0.0/8 would need `route_localnet`, which portmap sets only when asked to.
//! Connections from a pod DNATed back onto the pod bridge (a pod reaching its own or a
//! neighbour's host port) are masqueraded in `postrouting` (priority 101, after the proxy's
//! own masquerade, which takes its connections first), or the reply would be bridged straight
//! back with the wrong source. They are told by their source (the pod network) and output
//! device, not their input device: with `br_netfilter`, a connection DNATed back onto its
//! bridge is bridged, and postrouting then sees no input device. Anything else keeps its
//! client's address, as with portmap. IPv4 only, like the proxy.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;
use shoal_common::Cidr;

use crate::proxy::nft::{Nft, NftError};

/// The host ports' table (family `ip`).
pub const TABLE: &str = "shoal-hostport";

/// A host port's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Kubernetes' name (`TCP` when unset); `None` for anything else.
    pub fn from_kubernetes(name: Option<&str>) -> Option<Protocol> {
        match name.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// Where a host port is opened: on one address of the node, or on all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostKey {
    /// `hostIP`; `None` when unset or `0.0.0.0` (every local address).
    pub host_ip: Option<Ipv4Addr>,
    pub protocol: Protocol,
    pub host_port: u16,
}

/// Where the host port leads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub pod_ip: Ipv4Addr,
    pub container_port: u16,
    /// `namespace/name` of the pod, for logs.
    pub pod: String,
}

/// The host ports of the pods on this node: each pod with its sandbox's address (`None`
/// while it has none ready, then it maps nothing). Host-network pods listen on the node
/// themselves and are skipped, as are IPv6 addresses and ports out of range. Pods are taken
/// oldest first, so the pod that claimed a port first keeps it.
pub fn mappings<'a>(
    pods: impl IntoIterator<Item = (&'a Pod, Option<Ipv4Addr>)>,
) -> BTreeMap<HostKey, Target> {
    let mut pods: Vec<(&Pod, Ipv4Addr)> = pods
        .into_iter()
        .filter_map(|(pod, ip)| Some((pod, ip?)))
        .filter(|(pod, _)| {
            !pod.spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false)
        })
        .collect();
    let age = |pod: &Pod| {
        (
            pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
            pod.metadata.namespace.clone(),
            pod.metadata.name.clone(),
        )
    };
    pods.sort_by_key(|(pod, _)| age(pod));
    let mut out = BTreeMap::new();
    for (pod, pod_ip) in pods {
        let name = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        );
        let ports = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten());
        for port in ports {
            let (Some(host_port), Ok(container_port)) = (
                port.host_port
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|p| *p > 0),
                u16::try_from(port.container_port),
            ) else {
                continue;
            };
            let Some(protocol) = Protocol::from_kubernetes(port.protocol.as_deref()) else {
                continue;
            };
            let host_ip = match port.host_ip.as_deref().filter(|ip| !ip.is_empty()) {
                None => None,
                Some(text) => match text.parse::<Ipv4Addr>() {
                    Ok(ip) if ip.is_unspecified() => None,
                    Ok(ip) => Some(ip),
                    // An IPv6 (or malformed) hostIP: not served by this IPv4 table.
                    Err(_) => continue,
                },
            };
            let key = HostKey {
                host_ip,
                protocol,
                host_port,
            };
            out.entry(key).or_insert_with(|| Target {
                pod_ip,
                container_port,
                pod: name.clone(),
            });
        }
    }
    out
}

const HOST_IP_PORTS: &str = "host-ip-ports";
const ANY_IP_PORTS: &str = "any-ip-ports";

/// Where the node's pods are: what the masquerade rule needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableConfig {
    /// The pod bridge.
    pub bridge: String,
    /// The pod network (`--cluster-cidr`; IPv6 entries are ignored).
    pub pod_networks: Vec<Cidr>,
}

/// The transaction replacing `ip shoal-hostport` with the table for `mappings`.
pub fn ruleset(mappings: &BTreeMap<HostKey, Target>, config: &TableConfig) -> String {
    let mut host_ip = Vec::new();
    let mut any_ip = Vec::new();
    for (key, target) in mappings {
        let to = format!("{} . {}", target.pod_ip, target.container_port);
        let proto = key.protocol.nft();
        match key.host_ip {
            Some(ip) => host_ip.push(format!("{ip} . {proto} . {} : {to}", key.host_port)),
            None => any_ip.push(format!("{proto} . {} : {to}", key.host_port)),
        }
    }
    let elements = |list: &[String]| {
        if list.is_empty() {
            String::new()
        } else {
            format!("\t\telements = {{ {} }}\n", list.join(", "))
        }
    };
    let bridge = &config.bridge;
    let masquerade: String = config
        .pod_networks
        .iter()
        .filter(|c| c.is_ipv4())
        .map(|net| format!("\t\tct status dnat ip saddr {net} oifname \"{bridge}\" masquerade\n"))
        .collect();
    let mut out = String::new();
    // Declaring the table first makes the delete succeed when it does not exist yet; the
    // whole script is one transaction, so the rules are never missing in between.
    let _ = write!(
        out,
        "table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tmap {HOST_IP_PORTS} {{\n\
         \t\ttype ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service\n\
         {host}\
         \t}}\n\
         \tmap {ANY_IP_PORTS} {{\n\
         \t\ttype inet_proto . inet_service : ipv4_addr . inet_service\n\
         {any}\
         \t}}\n\
         \tchain hostports {{\n\
         \t\tip daddr 127.0.0.0/8 return\n\
         \t\tmeta l4proto {{ tcp, udp, sctp }} dnat ip to ip daddr . meta l4proto . th dport map @{HOST_IP_PORTS}\n\
         \t\tfib daddr type local meta l4proto {{ tcp, udp, sctp }} dnat ip to meta l4proto . th dport map @{ANY_IP_PORTS}\n\
         \t}}\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority -101; policy accept;\n\
         \t\tjump hostports\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype nat hook output priority -101; policy accept;\n\
         \t\tjump hostports\n\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority 101; policy accept;\n\
         {masquerade}\
         \t}}\n\
         }}\n",
        host = elements(&host_ip),
        any = elements(&any_ip),
    );
    out
}

/// The transaction removing the table (and nothing else).
pub fn removal() -> String {
    format!("table ip {TABLE}\ndelete table ip {TABLE}\n")
}

/// Replaces the table with the one for `mappings` (blocking: runs `nft`).
pub fn apply(
    nft: &Nft,
    mappings: &BTreeMap<HostKey, Target>,
    config: &TableConfig,
) -> Result<(), NftError> {
    nft.apply(&ruleset(mappings, config))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pod(name: &str, created: &str, ports: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
            "spec": {"containers": [{"name": "app", "ports": ports}]},
        }))
        .unwrap()
    }

    const T0: &str = "2026-01-01T00:00:00Z";

    /// A pod with a host port on every address and a UDP one on 192.0.2.1.
    fn web() -> Pod {
        pod(
            "web",
            T0,
            serde_json::json!([
                {"containerPort": 80, "hostPort": 8080},
                {"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "192.0.2.1"},
            ]),
        )
    }

    fn config() -> TableConfig {
        TableConfig {
            bridge: "shoal0".into(),
            pod_networks: vec![
                "10.42.0.0/16".parse().unwrap(),
                "fd00:42::/56".parse().unwrap(),
            ],
        }
    }
    const T1: &str = "2026-01-01T00:00:01Z";

    #[test]
    fn host_ports_map_to_the_pods_address_and_container_port() {
        let web = pod(
            "web",
            T0,
            serde_json::json!([
                {"containerPort": 80, "hostPort": 8080},
                {"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "192.0.2.1"},
                {"containerPort": 9090},
                {"containerPort": 7070, "hostPort": 7070, "hostIP": "0.0.0.0", "protocol": "SCTP"},
            ]),
        );
        let ip: Ipv4Addr = "10.42.0.7".parse().unwrap();
        let got = mappings([(&web, Some(ip))]);
        let target = |port| Target {
            pod_ip: ip,
            container_port: port,
            pod: "default/web".into(),
        };
        let expected = BTreeMap::from([
            (
                HostKey {
                    host_ip: None,
                    protocol: Protocol::Tcp,
                    host_port: 8080,
                },
                target(80),
            ),
            (
                HostKey {
                    host_ip: Some("192.0.2.1".parse().unwrap()),
                    protocol: Protocol::Udp,
                    host_port: 5353,
                },
                target(53),
            ),
            (
                HostKey {
                    host_ip: None,
                    protocol: Protocol::Sctp,
                    host_port: 7070,
                },
                target(7070),
            ),
        ]);
        assert_eq!(got, expected);
    }

    #[test]
    fn pods_without_an_address_host_network_pods_and_ipv6_host_ips_map_nothing() {
        let waiting = pod(
            "a",
            T0,
            serde_json::json!([{"containerPort": 80, "hostPort": 80}]),
        );
        let mut host = pod(
            "b",
            T0,
            serde_json::json!([{"containerPort": 81, "hostPort": 81}]),
        );
        host.spec.as_mut().unwrap().host_network = Some(true);
        let v6 = pod(
            "c",
            T0,
            serde_json::json!([{"containerPort": 82, "hostPort": 82, "hostIP": "::1"}]),
        );
        let ip = Some("10.42.0.9".parse().unwrap());
        assert!(mappings([(&waiting, None), (&host, ip), (&v6, ip)]).is_empty());
    }

    #[test]
    fn the_older_pod_keeps_a_contested_port() {
        let ports = serde_json::json!([{"containerPort": 80, "hostPort": 8080}]);
        let old = pod("old", T0, ports.clone());
        let new = pod("new", T1, ports);
        let got = mappings([
            (&new, Some("10.42.0.2".parse().unwrap())),
            (&old, Some("10.42.0.1".parse().unwrap())),
        ]);
        assert_eq!(got.len(), 1);
        assert_eq!(got.values().next().unwrap().pod, "default/old");
    }

    #[test]
    fn the_ruleset_replaces_only_our_table() {
        let web = web();
        let script = ruleset(
            &mappings([(&web, Some("10.42.0.7".parse().unwrap()))]),
            &config(),
        );
        assert!(script.starts_with(
            "table ip shoal-hostport\ndelete table ip shoal-hostport\ntable ip shoal-hostport {"
        ));
        assert!(script.contains("elements = { 192.0.2.1 . udp . 5353 : 10.42.0.7 . 53 }"));
        assert!(script.contains("elements = { tcp . 8080 : 10.42.0.7 . 80 }"));
        assert!(
            script.contains("ct status dnat ip saddr 10.42.0.0/16 oifname \"shoal0\" masquerade")
        );
        assert!(!script.contains("fd00"), "{script}");
        for line in script.lines() {
            if let Some(rest) = line.trim().strip_prefix("table ") {
                assert!(rest.starts_with("ip shoal-hostport"), "{line}");
            }
        }
        // Nothing mapped: the maps are declared without elements (nft refuses `{ }`).
        let empty = ruleset(&BTreeMap::new(), &config());
        assert!(!empty.contains("elements"), "{empty}");
        assert_eq!(
            removal(),
            "table ip shoal-hostport\ndelete table ip shoal-hostport\n"
        );
    }

    #[test]
    fn the_ruleset_is_accepted_by_the_kernel() {
        crate::proxy::nft::tests::assert_root();
        let web = web();
        let nft = Nft::default();
        nft.check(&ruleset(
            &mappings([(&web, Some("10.42.0.7".parse().unwrap()))]),
            &config(),
        ))
        .unwrap();
        nft.check(&ruleset(&BTreeMap::new(), &config())).unwrap();
    }
}
