//! What the overlay should look like, computed from Node objects without any IO, and the
//! changes that take the kernel's state there.
//!
//! Every other node that has a pod CIDR and flannel's vxlan annotations becomes a [`Peer`]:
//! a route to its pod CIDR via its VTEP address (the CIDR's network address) on the VXLAN
//! device, a permanent neighbour entry giving that address the peer's VTEP MAC, and an FDB
//! entry sending frames for that MAC to the peer's public IP. [`plan`] compares the entries
//! with what the kernel holds on our device and lists the changes, removals first.
//!
//! A dual-stack node's IPv6 pod CIDR goes over its IPv6 VTEP when it publishes one
//! (flannel's `backend-v6-data`/`public-ipv6`, the `shoal-vxlan6` device); otherwise over its
//! IPv4 VTEP, whose VXLAN device carries IPv6 frames as well (the route and neighbour are
//! IPv6, the FDB entry the same IPv4 one) — so nodes with one IPv4 address each still connect
//! their IPv6 pods.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use k8s_openapi::api::core::v1::Node;
use serde::{Deserialize, Serialize};
use shoal_common::Cidr;

/// `flannel.alpha.coreos.com/backend-type`: always `vxlan` here.
pub const BACKEND_TYPE: &str = "flannel.alpha.coreos.com/backend-type";
/// The IPv4 VTEP's `{"VNI":1,"VtepMAC":"…"}`.
pub const BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
/// The IPv6 VTEP's backend data (dual-stack).
pub const BACKEND_V6_DATA: &str = "flannel.alpha.coreos.com/backend-v6-data";
/// The node's IPv4 underlay address, where VXLAN packets for its pods go.
pub const PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
/// The node's IPv6 underlay address (dual-stack).
pub const PUBLIC_IPV6: &str = "flannel.alpha.coreos.com/public-ipv6";
/// Set to `true`: subnets come from the Node's podCIDR (k3s publishes the same).
pub const KUBE_SUBNET_MANAGER: &str = "flannel.alpha.coreos.com/kube-subnet-manager";

/// A link-layer address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A stable, locally administered unicast MAC for `seed` (the node's name), so a VTEP
    /// recreated after a reboot keeps the MAC its peers already know.
    pub fn derived(seed: &str) -> Mac {
        // FNV-1a: tiny, stable across releases (unlike std's hasher), good enough to spread.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in seed.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        let b = hash.to_be_bytes();
        Mac([(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]])
    }

    /// The address as the kernel carries it, when it has six bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Mac> {
        <[u8; 6]>::try_from(bytes).ok().map(Mac)
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for Mac {
    type Err = String;

    fn from_str(s: &str) -> Result<Mac, String> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(|| format!("{s:?}: too short"))?;
            if part.len() != 2 {
                return Err(format!("{s:?}: not a MAC address"));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| format!("{s:?}: not hex"))?;
        }
        if parts.next().is_some() {
            return Err(format!("{s:?}: too long"));
        }
        Ok(Mac(out))
    }
}

/// flannel's `backend-data` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendData {
    #[serde(rename = "VNI")]
    pub vni: u32,
    #[serde(rename = "VtepMAC")]
    pub vtep_mac: String,
}

/// One VTEP of this node, for the annotations it publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalVtep {
    pub vni: u32,
    pub mac: Mac,
    pub public_ip: IpAddr,
}

/// The annotations a node publishes so its peers can reach its pods (flannel's, as k3s
/// writes them): one VTEP per address family.
pub fn annotations(vteps: &[LocalVtep]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert(BACKEND_TYPE.to_string(), "vxlan".to_string());
    out.insert(KUBE_SUBNET_MANAGER.to_string(), "true".to_string());
    for vtep in vteps {
        let (data_key, ip_key) = if vtep.public_ip.is_ipv4() {
            (BACKEND_DATA, PUBLIC_IP)
        } else {
            (BACKEND_V6_DATA, PUBLIC_IPV6)
        };
        let data = BackendData {
            vni: vtep.vni,
            vtep_mac: vtep.mac.to_string(),
        };
        // Serializing two plain fields cannot fail; an empty document would only make the
        // peers skip this node.
        out.insert(
            data_key.to_string(),
            serde_json::to_string(&data).unwrap_or_default(),
        );
        out.insert(ip_key.to_string(), vtep.public_ip.to_string());
    }
    out
}

/// Another node's pod CIDR of one address family, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer {
    pub node: String,
    /// The peer's pod CIDR.
    pub subnet: Cidr,
    /// The peer VTEP's address: the pod CIDR's network address.
    pub vtep_ip: IpAddr,
    pub vtep_mac: Mac,
    /// The peer's underlay address.
    pub public_ip: IpAddr,
}

/// The peers, and the nodes left out with why (for the log).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub peers: Vec<Peer>,
    pub ignored: Vec<(String, String)>,
}

impl Desired {
    /// The peers of one address family (the family of the pod CIDR).
    pub fn family(&self, ipv4: bool) -> impl Iterator<Item = &Peer> {
        self.peers
            .iter()
            .filter(move |p| p.subnet.is_ipv4() == ipv4)
    }

    /// The peers reached over an underlay of one family: what that family's VXLAN device
    /// holds (an IPv6 pod CIDR may ride on the IPv4 device).
    pub fn underlay(&self, ipv4: bool) -> impl Iterator<Item = &Peer> {
        self.peers
            .iter()
            .filter(move |p| p.public_ip.is_ipv4() == ipv4)
    }
}

/// The node's pod CIDRs: `spec.podCIDRs`, or `spec.podCIDR` when that list is empty.
fn pod_cidrs(node: &Node) -> Result<Vec<Cidr>, String> {
    let Some(spec) = &node.spec else {
        return Ok(Vec::new());
    };
    let texts: Vec<&String> = match &spec.pod_cidrs {
        Some(list) if !list.is_empty() => list.iter().collect(),
        _ => spec.pod_cidr.iter().collect(),
    };
    texts
        .into_iter()
        .map(|t| t.parse::<Cidr>().map_err(|e| e.to_string()))
        .collect()
}

/// The peer for `node`'s `subnet`, read from its annotations.
fn peer(
    node: &str,
    subnet: Cidr,
    notes: &BTreeMap<String, String>,
    vni: u32,
) -> Result<Peer, String> {
    // An IPv6 pod CIDR without an IPv6 VTEP rides on the IPv4 one.
    let (data_key, ip_key) = if subnet.is_ipv4() || !notes.contains_key(BACKEND_V6_DATA) {
        (BACKEND_DATA, PUBLIC_IP)
    } else {
        (BACKEND_V6_DATA, PUBLIC_IPV6)
    };
    let data = notes
        .get(data_key)
        .ok_or_else(|| format!("no {data_key} annotation"))?;
    let data: BackendData = serde_json::from_str(data).map_err(|e| format!("{data_key}: {e}"))?;
    if data.vni != vni {
        return Err(format!("{data_key}: VNI {} is not ours ({vni})", data.vni));
    }
    let vtep_mac: Mac = data.vtep_mac.parse()?;
    let public_ip: IpAddr = notes
        .get(ip_key)
        .ok_or_else(|| format!("no {ip_key} annotation"))?
        .parse()
        .map_err(|_| format!("{ip_key} is not an IP address"))?;
    if public_ip.is_ipv4() != (ip_key == PUBLIC_IP) {
        return Err(format!("{ip_key} {public_ip} is not of its family"));
    }
    Ok(Peer {
        node: node.to_string(),
        subnet,
        vtep_ip: subnet.addr(),
        vtep_mac,
        public_ip,
    })
}

/// The peers of node `me` among `nodes`, for VXLAN network `vni`. Nodes without a pod CIDR,
/// without the vxlan annotations, or being deleted are left out; so is a pod CIDR another node
/// (first by name) already claims, since one route can only lead to one node.
pub fn desired(me: &str, nodes: &[Node], vni: u32) -> Desired {
    let mut sorted: Vec<&Node> = nodes.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut out = Desired::default();
    let mut claimed: BTreeSet<Cidr> = BTreeSet::new();
    for node in sorted {
        let Some(name) = node.metadata.name.as_deref() else {
            continue;
        };
        if name == me {
            continue;
        }
        let mut ignore = |why: String| out.ignored.push((name.to_string(), why));
        if node.metadata.deletion_timestamp.is_some() {
            ignore("being deleted".into());
            continue;
        }
        let cidrs = match pod_cidrs(node) {
            Ok(c) if c.is_empty() => {
                ignore("no pod CIDR yet".into());
                continue;
            }
            Ok(c) => c,
            Err(e) => {
                ignore(e);
                continue;
            }
        };
        let empty = BTreeMap::new();
        let notes = node.metadata.annotations.as_ref().unwrap_or(&empty);
        if notes.get(BACKEND_TYPE).map(String::as_str) != Some("vxlan") {
            ignore(format!("{BACKEND_TYPE} is not vxlan"));
            continue;
        }
        for subnet in cidrs {
            match peer(name, subnet, notes, vni) {
                Ok(p) if claimed.insert(subnet) => out.peers.push(p),
                Ok(_) => ignore(format!("{subnet} is already another node's")),
                Err(e) => ignore(e),
            }
        }
    }
    out
}

/// A route to a peer's pod CIDR via its VTEP address, on the VXLAN device (`onlink`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteEntry {
    pub dst: Cidr,
    pub via: IpAddr,
}

/// A permanent neighbour entry: the peer VTEP's address and MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NeighEntry {
    pub ip: IpAddr,
    pub mac: Mac,
}

/// A forwarding-database entry: frames for `mac` go to the underlay address `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    pub mac: Mac,
    pub dst: IpAddr,
}

/// Entries on one VXLAN device: what the kernel holds, or what it should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entries {
    pub routes: BTreeSet<RouteEntry>,
    pub neighbours: BTreeSet<NeighEntry>,
    pub fdb: BTreeSet<FdbEntry>,
}

impl Entries {
    /// The entries the peers need.
    pub fn for_peers<'a>(peers: impl IntoIterator<Item = &'a Peer>) -> Entries {
        let mut out = Entries::default();
        for p in peers {
            out.routes.insert(RouteEntry {
                dst: p.subnet,
                via: p.vtep_ip,
            });
            out.neighbours.insert(NeighEntry {
                ip: p.vtep_ip,
                mac: p.vtep_mac,
            });
            out.fdb.insert(FdbEntry {
                mac: p.vtep_mac,
                dst: p.public_ip,
            });
        }
        out
    }
}

/// One change to the kernel's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    DelRoute(RouteEntry),
    DelNeigh(NeighEntry),
    DelFdb(FdbEntry),
    AddFdb(FdbEntry),
    AddNeigh(NeighEntry),
    AddRoute(RouteEntry),
}

/// The changes that take `current` to `wanted`. Removals come first (routes, neighbours, FDB
/// entries: nothing is ever routed to a half-removed peer), then additions in the opposite
/// order, so a route only appears once the neighbour and FDB entries it needs are there. A
/// changed entry is removed and added again (the kernel keys neighbours by address and FDB
/// entries by MAC, and an FDB delete names the old destination).
pub fn plan(current: &Entries, wanted: &Entries) -> Vec<Change> {
    fn missing<'a, T: Ord + Copy>(
        from: &'a BTreeSet<T>,
        there: &'a BTreeSet<T>,
        change: fn(T) -> Change,
    ) -> impl Iterator<Item = Change> + 'a {
        from.difference(there).map(move |e| change(*e))
    }
    let (c, w) = (current, wanted);
    missing(&c.routes, &w.routes, Change::DelRoute)
        .chain(missing(&c.neighbours, &w.neighbours, Change::DelNeigh))
        .chain(missing(&c.fdb, &w.fdb, Change::DelFdb))
        .chain(missing(&w.fdb, &c.fdb, Change::AddFdb))
        .chain(missing(&w.neighbours, &c.neighbours, Change::AddNeigh))
        .chain(missing(&w.routes, &c.routes, Change::AddRoute))
        .collect()
}

/// VXLAN's encapsulation overhead over an IPv4 underlay: outer IPv4 (20) + UDP (8) + VXLAN
/// (8) + inner Ethernet (14) headers.
pub const OVERHEAD_V4: u32 = 50;
/// The same over an IPv6 underlay (a 40-byte outer header).
pub const OVERHEAD_V6: u32 = 70;

/// The MTU of the VXLAN device and of the pods: the uplink's minus the encapsulation, so an
/// encapsulated full-size pod packet still fits the uplink unfragmented.
pub fn overlay_mtu(uplink_mtu: u32, underlay_ipv6: bool) -> u32 {
    let overhead = if underlay_ipv6 {
        OVERHEAD_V6
    } else {
        OVERHEAD_V4
    };
    uplink_mtu.saturating_sub(overhead).max(MIN_MTU)
}

/// Below this IPv4 forbids; a tiny uplink gets a working if fragmenting overlay.
const MIN_MTU: u32 = 576;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn node(name: &str, cidrs: &[&str], mac: &str, ip: &str) -> Node {
        let ip: IpAddr = ip.parse().unwrap();
        let notes = annotations(&[LocalVtep {
            vni: 1,
            mac: mac.parse().unwrap(),
            public_ip: ip,
        }]);
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some(notes),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidrs.first().map(|c| c.to_string()),
                pod_cidrs: Some(cidrs.iter().map(|c| c.to_string()).collect()),
                ..NodeSpec::default()
            }),
            status: None,
        }
    }

    fn peer_of(name: &str, subnet: &str, mac: &str, ip: &str) -> Peer {
        Peer {
            node: name.into(),
            subnet: cidr(subnet),
            vtep_ip: cidr(subnet).addr(),
            vtep_mac: mac.parse().unwrap(),
            public_ip: ip.parse().unwrap(),
        }
    }

    const MAC_B: &str = "0a:00:00:00:00:0b";
    const MAC_C: &str = "0a:00:00:00:00:0c";

    #[test]
    fn annotations_are_flannels() {
        let notes = annotations(&[LocalVtep {
            vni: 1,
            mac: MAC_B.parse().unwrap(),
            public_ip: "192.168.1.2".parse().unwrap(),
        }]);
        assert_eq!(notes[BACKEND_TYPE], "vxlan");
        assert_eq!(notes[KUBE_SUBNET_MANAGER], "true");
        assert_eq!(notes[PUBLIC_IP], "192.168.1.2");
        assert_eq!(
            notes[BACKEND_DATA],
            r#"{"VNI":1,"VtepMAC":"0a:00:00:00:00:0b"}"#
        );
        assert!(!notes.contains_key(BACKEND_V6_DATA));
    }

    #[test]
    fn other_nodes_become_peers_and_self_is_excluded() {
        let nodes = vec![
            node("a", &["10.42.0.0/24"], "0a:00:00:00:00:0a", "192.168.1.1"),
            node("b", &["10.42.1.0/24"], MAC_B, "192.168.1.2"),
            node("c", &["10.42.2.0/24"], MAC_C, "192.168.1.3"),
        ];
        let d = desired("a", &nodes, 1);
        assert_eq!(
            d.peers,
            vec![
                peer_of("b", "10.42.1.0/24", MAC_B, "192.168.1.2"),
                peer_of("c", "10.42.2.0/24", MAC_C, "192.168.1.3"),
            ]
        );
        assert!(d.ignored.is_empty());
        let e = Entries::for_peers(&d.peers);
        assert!(e.routes.contains(&RouteEntry {
            dst: cidr("10.42.1.0/24"),
            via: "10.42.1.0".parse().unwrap()
        }));
        assert!(e.neighbours.contains(&NeighEntry {
            ip: "10.42.2.0".parse().unwrap(),
            mac: MAC_C.parse().unwrap()
        }));
        assert!(e.fdb.contains(&FdbEntry {
            mac: MAC_B.parse().unwrap(),
            dst: "192.168.1.2".parse().unwrap()
        }));
    }

    #[test]
    fn nodes_without_cidr_or_annotations_are_ignored() {
        let mut bare = node("b", &[], MAC_B, "192.168.1.2");
        bare.spec = None;
        let mut unannotated = node("c", &["10.42.2.0/24"], MAC_C, "192.168.1.3");
        unannotated.metadata.annotations = None;
        let mut host_gw = node("d", &["10.42.3.0/24"], MAC_C, "192.168.1.4");
        if let Some(a) = host_gw.metadata.annotations.as_mut() {
            a.insert(BACKEND_TYPE.into(), "host-gw".into());
        }
        let mut other_vni = node("e", &["10.42.4.0/24"], MAC_C, "192.168.1.5");
        if let Some(a) = other_vni.metadata.annotations.as_mut() {
            a.insert(
                BACKEND_DATA.into(),
                r#"{"VNI":2,"VtepMAC":"0a:00:00:00:00:0e"}"#.into(),
            );
        }
        let mut bad_mac = node("f", &["10.42.5.0/24"], MAC_C, "192.168.1.6");
        if let Some(a) = bad_mac.metadata.annotations.as_mut() {
            a.insert(BACKEND_DATA.into(), r#"{"VNI":1,"VtepMAC":"zz"}"#.into());
        }
        let mut leaving = node("g", &["10.42.6.0/24"], MAC_C, "192.168.1.7");
        leaving.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let d = desired(
            "a",
            &[bare, unannotated, host_gw, other_vni, bad_mac, leaving],
            1,
        );
        assert!(d.peers.is_empty(), "{:?}", d.peers);
        let names: Vec<&str> = d.ignored.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["b", "c", "d", "e", "f", "g"]);
    }

    #[test]
    fn a_subnet_claimed_twice_goes_to_the_first_node_by_name() {
        let nodes = vec![
            node("z", &["10.42.1.0/24"], MAC_C, "192.168.1.3"),
            node("b", &["10.42.1.0/24"], MAC_B, "192.168.1.2"),
        ];
        let d = desired("a", &nodes, 1);
        assert_eq!(
            d.peers,
            vec![peer_of("b", "10.42.1.0/24", MAC_B, "192.168.1.2")]
        );
        assert_eq!(d.ignored.len(), 1);
        assert_eq!(d.ignored[0].0, "z");
    }

    #[test]
    fn ipv6_cidrs_are_accepted_with_v6_annotations() {
        let mut dual = node(
            "b",
            &["10.42.1.0/24", "fd00:42:0:1::/64"],
            MAC_B,
            "192.168.1.2",
        );
        if let Some(a) = dual.metadata.annotations.as_mut() {
            a.extend(annotations(&[LocalVtep {
                vni: 1,
                mac: MAC_C.parse().unwrap(),
                public_ip: "fd99::2".parse().unwrap(),
            }]));
        }
        let d = desired("a", &[dual.clone()], 1);
        assert_eq!(d.peers.len(), 2, "{:?}", d.ignored);
        let v6: Vec<&Peer> = d.family(false).collect();
        assert_eq!(v6, [&peer_of("b", "fd00:42:0:1::/64", MAC_C, "fd99::2")]);
        assert_eq!(d.family(true).count(), 1);

        assert_eq!(d.underlay(false).count(), 1);

        // Without the v6 VTEP's annotations, the IPv6 half rides on the IPv4 VTEP: an IPv6
        // route and neighbour, and the IPv4 FDB entry both halves share.
        if let Some(a) = dual.metadata.annotations.as_mut() {
            a.remove(BACKEND_V6_DATA);
        }
        let d = desired("a", &[dual], 1);
        assert!(d.ignored.is_empty(), "{:?}", d.ignored);
        let v6: Vec<&Peer> = d.family(false).collect();
        assert_eq!(
            v6,
            [&peer_of("b", "fd00:42:0:1::/64", MAC_B, "192.168.1.2")]
        );
        assert_eq!(d.underlay(true).count(), 2);
        assert_eq!(d.underlay(false).count(), 0);
        let entries = Entries::for_peers(d.underlay(true));
        assert_eq!(entries.routes.len(), 2);
        assert_eq!(entries.neighbours.len(), 2);
        assert_eq!(entries.fdb.len(), 1, "{:?}", entries.fdb);
    }

    #[test]
    fn pod_cidr_alone_is_used_when_the_list_is_empty() {
        let mut n = node("b", &["10.42.1.0/24"], MAC_B, "192.168.1.2");
        if let Some(spec) = n.spec.as_mut() {
            spec.pod_cidrs = None;
        }
        assert_eq!(desired("a", &[n], 1).peers.len(), 1);
    }

    #[test]
    fn plan_adds_new_peers_in_dependency_order() {
        let wanted = Entries::for_peers(&[peer_of("b", "10.42.1.0/24", MAC_B, "192.168.1.2")]);
        let changes = plan(&Entries::default(), &wanted);
        assert!(matches!(
            changes.as_slice(),
            [Change::AddFdb(_), Change::AddNeigh(_), Change::AddRoute(_)]
        ));
        assert!(
            plan(&wanted, &wanted).is_empty(),
            "applying twice changes nothing"
        );
    }

    #[test]
    fn plan_removes_a_departed_node_route_first() {
        let b = peer_of("b", "10.42.1.0/24", MAC_B, "192.168.1.2");
        let c = peer_of("c", "10.42.2.0/24", MAC_C, "192.168.1.3");
        let current = Entries::for_peers(&[b.clone(), c]);
        let changes = plan(&current, &Entries::for_peers(&[b]));
        assert_eq!(
            changes,
            vec![
                Change::DelRoute(RouteEntry {
                    dst: cidr("10.42.2.0/24"),
                    via: "10.42.2.0".parse().unwrap()
                }),
                Change::DelNeigh(NeighEntry {
                    ip: "10.42.2.0".parse().unwrap(),
                    mac: MAC_C.parse().unwrap()
                }),
                Change::DelFdb(FdbEntry {
                    mac: MAC_C.parse().unwrap(),
                    dst: "192.168.1.3".parse().unwrap()
                }),
            ]
        );
    }

    #[test]
    fn plan_replaces_a_changed_mac_or_ip() {
        let old = peer_of("b", "10.42.1.0/24", MAC_B, "192.168.1.2");
        let new_mac = peer_of("b", "10.42.1.0/24", MAC_C, "192.168.1.2");
        let changes = plan(
            &Entries::for_peers(std::slice::from_ref(&old)),
            &Entries::for_peers(&[new_mac]),
        );
        // The route is unchanged; the neighbour and FDB entry move to the new MAC.
        assert_eq!(changes.len(), 4, "{changes:?}");
        assert!(matches!(changes[0], Change::DelNeigh(n) if n.mac == MAC_B.parse().unwrap()));
        assert!(matches!(changes[1], Change::DelFdb(_)));
        assert!(matches!(changes[2], Change::AddFdb(f) if f.mac == MAC_C.parse().unwrap()));
        assert!(matches!(changes[3], Change::AddNeigh(_)));

        let new_ip = peer_of("b", "10.42.1.0/24", MAC_B, "192.168.1.9");
        let changes = plan(&Entries::for_peers(&[old]), &Entries::for_peers(&[new_ip]));
        assert_eq!(
            changes,
            vec![
                Change::DelFdb(FdbEntry {
                    mac: MAC_B.parse().unwrap(),
                    dst: "192.168.1.2".parse().unwrap()
                }),
                Change::AddFdb(FdbEntry {
                    mac: MAC_B.parse().unwrap(),
                    dst: "192.168.1.9".parse().unwrap()
                }),
            ]
        );
    }

    #[test]
    fn macs_parse_print_and_derive() {
        let m: Mac = "0A:1b:2c:3d:4e:5f".parse().unwrap();
        assert_eq!(m.to_string(), "0a:1b:2c:3d:4e:5f");
        assert!("0a:1b:2c:3d:4e".parse::<Mac>().is_err());
        assert!("0a:1b:2c:3d:4e:5f:00".parse::<Mac>().is_err());
        assert!("0a-1b-2c-3d-4e-5f".parse::<Mac>().is_err());
        let d = Mac::derived("node-1");
        assert_eq!(d, Mac::derived("node-1"), "stable");
        assert_ne!(d, Mac::derived("node-2"));
        assert_eq!(d.0[0] & 0x03, 0x02, "locally administered unicast");
    }

    #[test]
    fn mtu_leaves_room_for_the_encapsulation() {
        assert_eq!(overlay_mtu(1500, false), 1450);
        assert_eq!(overlay_mtu(9001, false), 8951);
        assert_eq!(overlay_mtu(1500, true), 1430);
        assert_eq!(overlay_mtu(100, false), 576);
    }
}
