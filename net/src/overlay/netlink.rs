//! The overlay's kernel state through rtnetlink: the uplink's MTU, the VXLAN device (created,
//! or recreated when its parameters differ), and the routes, neighbour and FDB entries on it
//! — read back as [`Entries`] and changed one [`Change`] at a time. Every change is
//! idempotent: adds replace, deleting what is already gone succeeds.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};
use shoal_common::Cidr;

use super::desired::{Change, Entries, FdbEntry, Mac, NeighEntry, RouteEntry};
use super::OverlayError;
use crate::cni::link::errno;

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const ENODEV: i32 = 19;
const EADDRNOTAVAIL: i32 = 99;

fn nl(context: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> OverlayError {
    let context = context.into();
    move |source| OverlayError::Netlink { context, source }
}

/// Accepts "no such entry" as success: the entry is gone either way.
fn gone_ok(result: Result<(), rtnetlink::Error>, context: String) -> Result<(), OverlayError> {
    match result {
        Err(e) if matches!(errno(&e), Some(ENOENT | ESRCH | ENODEV | EADDRNOTAVAIL)) => Ok(()),
        other => other.map_err(nl(context)),
    }
}

/// The interface the node's address lives on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    pub index: u32,
    pub mtu: u32,
}

/// The VXLAN device wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    /// The node's underlay address (the tunnel's source).
    pub local: IpAddr,
    pub uplink: u32,
    pub mtu: u32,
    pub mac: Mac,
    /// The node's pod CIDR; its network address goes on the device as a host address.
    pub subnet: Cidr,
}

/// The VXLAN device as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanLink {
    pub index: u32,
    pub mac: Mac,
}

/// A netlink connection in the calling thread's network namespace. Must be made inside a
/// tokio runtime (its connection task is spawned there).
#[derive(Debug, Clone)]
pub struct OverlayNetlink {
    handle: Handle,
}

#[derive(Debug, Default)]
struct LinkFacts {
    index: u32,
    mtu: u32,
    mac: Vec<u8>,
    kind: Option<InfoKind>,
    vxlan: Vec<InfoVxlan>,
}

impl OverlayNetlink {
    pub fn here() -> Result<OverlayNetlink, OverlayError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| OverlayError::Io {
            context: "opening a netlink socket".into(),
            source,
        })?;
        tokio::spawn(conn);
        Ok(OverlayNetlink { handle })
    }

    async fn link_facts(
        &self,
        request: rtnetlink::LinkGetRequest,
        what: &str,
    ) -> Result<Option<LinkFacts>, OverlayError> {
        let msg = match request.execute().try_next().await {
            Ok(Some(msg)) => msg,
            Ok(None) => return Ok(None),
            Err(e) if errno(&e) == Some(ENODEV) => return Ok(None),
            Err(e) => return Err(nl(format!("looking up link {what}"))(e)),
        };
        let mut facts = LinkFacts {
            index: msg.header.index,
            ..LinkFacts::default()
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::Mtu(mtu) => facts.mtu = mtu,
                LinkAttribute::Address(mac) => facts.mac = mac,
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(kind) => facts.kind = Some(kind),
                            LinkInfo::Data(InfoData::Vxlan(data)) => facts.vxlan = data,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(Some(facts))
    }

    /// The link holding the address `ip` (the node's IP) and its MTU.
    pub async fn uplink(&self, ip: IpAddr) -> Result<Uplink, OverlayError> {
        let addresses = self.addresses(None).await?;
        let index = addresses
            .iter()
            .find(|(_, addr, _)| *addr == ip)
            .map(|(msg, _, _)| msg.header.index)
            .ok_or_else(|| {
                OverlayError::Invalid(format!("no interface holds the node address {ip}"))
            })?;
        let facts = self
            .link_facts(
                self.handle.link().get().match_index(index),
                &index.to_string(),
            )
            .await?
            .ok_or_else(|| OverlayError::Invalid(format!("link {index} vanished")))?;
        Ok(Uplink {
            index,
            mtu: facts.mtu,
        })
    }

    /// Addresses (of link `index`, or all), with their prefix lengths.
    async fn addresses(
        &self,
        index: Option<u32>,
    ) -> Result<Vec<(AddressMessage, IpAddr, u8)>, OverlayError> {
        let mut request = self.handle.address().get();
        if let Some(index) = index {
            request = request.set_link_index_filter(index);
        }
        let msgs: Vec<AddressMessage> = request
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing addresses"))?;
        Ok(msgs
            .into_iter()
            .filter(|m| index.is_none_or(|i| m.header.index == i))
            .filter_map(|m| {
                let prefix = m.header.prefix_len;
                let mut local = None;
                let mut address = None;
                for attr in &m.attributes {
                    match attr {
                        AddressAttribute::Local(ip) => local = Some(*ip),
                        AddressAttribute::Address(ip) => address = Some(*ip),
                        _ => {}
                    }
                }
                local.or(address).map(|ip| (m, ip, prefix))
            })
            .collect())
    }

    /// Makes the VXLAN device match `spec`: created when missing, recreated when its VNI,
    /// port, local address, uplink or kind differ, then MTU, MAC, the subnet's address (and no
    /// other) and up.
    pub async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<VxlanLink, OverlayError> {
        let name = spec.name.as_str();
        let existing = self
            .link_facts(self.handle.link().get().match_name(name), name)
            .await?;
        if let Some(facts) = &existing {
            if !vxlan_matches(facts, spec) {
                gone_ok(
                    self.handle.link().del(facts.index).execute().await,
                    format!("deleting {name}"),
                )?;
            }
        }
        let facts = match existing.filter(|f| vxlan_matches(f, spec)) {
            Some(facts) => facts,
            None => {
                let mut link = LinkVxlan::new(name, spec.vni)
                    .dev(spec.uplink)
                    .port(spec.port)
                    .learning(false)
                    .mtu(spec.mtu)
                    .address(spec.mac.0.to_vec());
                link = match spec.local {
                    IpAddr::V4(v4) => link.local(v4),
                    IpAddr::V6(v6) => link.local6(v6),
                };
                self.handle
                    .link()
                    .add(link.build())
                    .execute()
                    .await
                    .map_err(nl(format!("creating VXLAN device {name}")))?;
                self.link_facts(self.handle.link().get().match_name(name), name)
                    .await?
                    .ok_or_else(|| OverlayError::Invalid(format!("{name} vanished")))?
            }
        };
        let mut set = LinkUnspec::new_with_index(facts.index).up();
        if facts.mtu != spec.mtu {
            set = set.mtu(spec.mtu);
        }
        if facts.mac != spec.mac.0 {
            set = set.address(spec.mac.0.to_vec());
        }
        self.handle
            .link()
            .set(set.build())
            .execute()
            .await
            .map_err(nl(format!("setting {name} up")))?;

        let host_prefix = if spec.subnet.is_ipv4() { 32 } else { 128 };
        let wanted = spec.subnet.addr();
        let mut present = false;
        for (msg, ip, prefix) in self.addresses(Some(facts.index)).await? {
            if ip == wanted && prefix == host_prefix {
                present = true;
            } else if !ip.is_ipv6() || !is_link_local(ip) {
                gone_ok(
                    self.handle.address().del(msg).execute().await,
                    format!("removing {ip}/{prefix} from {name}"),
                )?;
            }
        }
        if !present {
            let mut add = self.handle.address().add(facts.index, wanted, host_prefix);
            // Duplicate address detection would hold an IPv6 VTEP address tentative (unusable
            // as a source) for a second or more; the address is this node's by construction.
            add.message_mut().header.flags |= AddressHeaderFlags::Nodad;
            add.execute()
                .await
                .map_err(nl(format!("adding {wanted}/{host_prefix} to {name}")))?;
        }
        Ok(VxlanLink {
            index: facts.index,
            mac: spec.mac,
        })
    }

    /// Deletes the link `name`, if there is one.
    pub async fn delete_link(&self, name: &str) -> Result<(), OverlayError> {
        let Some(facts) = self
            .link_facts(self.handle.link().get().match_name(name), name)
            .await?
        else {
            return Ok(());
        };
        gone_ok(
            self.handle.link().del(facts.index).execute().await,
            format!("deleting {name}"),
        )
    }

    /// The routes, neighbours and FDB entries on the device `index` whose underlay is of one
    /// address family (`ipv4`). Routes and neighbours of both families are read: the IPv4
    /// device carries a dual-stack node's IPv6 pods too.
    pub async fn current(&self, index: u32, ipv4: bool) -> Result<Entries, OverlayError> {
        let mut out = Entries::default();
        for query in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ] {
            let routes: Vec<RouteMessage> = self
                .handle
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await
                .map_err(nl("listing routes"))?;
            out.routes
                .extend(routes.iter().filter_map(|r| route_entry(r, index)));
        }

        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let neighbours = self.neighbours(family).await?;
            out.neighbours.extend(
                neighbours
                    .iter()
                    .filter(|n| {
                        n.header.ifindex == index && n.header.state == NeighbourState::Permanent
                    })
                    .filter_map(|n| {
                        let (ip, mac) = neighbour_fields(n);
                        Some(NeighEntry { ip: ip?, mac: mac? })
                    }),
            );
        }

        let fdb = self.neighbours(AddressFamily::Bridge).await?;
        out.fdb = fdb
            .iter()
            .filter(|n| n.header.ifindex == index)
            .filter_map(|n| {
                let (dst, mac) = neighbour_fields(n);
                let (dst, mac) = (dst?, mac?);
                (!mac.is_zero() && dst.is_ipv4() == ipv4).then_some(FdbEntry { mac, dst })
            })
            .collect();
        Ok(out)
    }

    /// Every neighbour entry of `family` (`Bridge`: the forwarding databases).
    async fn neighbours(
        &self,
        family: AddressFamily,
    ) -> Result<Vec<NeighbourMessage>, OverlayError> {
        self.handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute()
            .try_collect()
            .await
            .map_err(nl(format!("listing {family:?} neighbours")))
    }

    /// Makes one change on the device `index`.
    pub async fn apply(&self, index: u32, change: &Change) -> Result<(), OverlayError> {
        let neigh = self.handle.neighbours();
        match *change {
            Change::AddRoute(r) => self
                .handle
                .route()
                .add(route_message(index, r)?)
                .replace()
                .execute()
                .await
                .map_err(nl(format!("adding route {} via {}", r.dst, r.via))),
            Change::DelRoute(r) => gone_ok(
                self.handle
                    .route()
                    .del(route_message(index, r)?)
                    .execute()
                    .await,
                format!("deleting route {} via {}", r.dst, r.via),
            ),
            Change::AddNeigh(n) => neigh
                .add(index, n.ip)
                .link_layer_address(&n.mac.0)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(nl(format!("adding neighbour {} lladdr {}", n.ip, n.mac))),
            Change::DelNeigh(n) => {
                let mut msg = NeighbourMessage::default();
                msg.header.family = match n.ip {
                    IpAddr::V4(_) => AddressFamily::Inet,
                    IpAddr::V6(_) => AddressFamily::Inet6,
                };
                msg.header.ifindex = index;
                msg.attributes
                    .push(NeighbourAttribute::Destination(neighbour_address(n.ip)));
                gone_ok(
                    neigh.del(msg).execute().await,
                    format!("deleting neighbour {}", n.ip),
                )
            }
            Change::AddFdb(f) => neigh
                .add_bridge(index, &f.mac.0)
                .destination(f.dst)
                .flags(NeighbourFlags::Own)
                .replace()
                .execute()
                .await
                .map_err(nl(format!("adding FDB entry {} dst {}", f.mac, f.dst))),
            Change::DelFdb(f) => {
                let mut msg = NeighbourMessage::default();
                msg.header.family = AddressFamily::Bridge;
                msg.header.ifindex = index;
                msg.header.flags = NeighbourFlags::Own;
                msg.header.state = NeighbourState::Permanent;
                msg.attributes
                    .push(NeighbourAttribute::LinkLayerAddress(f.mac.0.to_vec()));
                msg.attributes
                    .push(NeighbourAttribute::Destination(neighbour_address(f.dst)));
                gone_ok(
                    neigh.del(msg).execute().await,
                    format!("deleting FDB entry {} dst {}", f.mac, f.dst),
                )
            }
        }
    }
}

fn vxlan_matches(facts: &LinkFacts, spec: &VxlanSpec) -> bool {
    if facts.kind != Some(InfoKind::Vxlan) {
        return false;
    }
    let mut id = None;
    let mut port = None;
    let mut local = None;
    let mut link = None;
    let mut learning = None;
    for info in &facts.vxlan {
        match info {
            InfoVxlan::Id(v) => id = Some(*v),
            InfoVxlan::Port(v) => port = Some(*v),
            InfoVxlan::Local(v) => local = Some(IpAddr::V4(*v)),
            InfoVxlan::Local6(v) => local = Some(IpAddr::V6(*v)),
            InfoVxlan::Link(v) => link = Some(*v),
            InfoVxlan::Learning(v) => learning = Some(*v),
            _ => {}
        }
    }
    id == Some(spec.vni)
        && port == Some(spec.port)
        && local == Some(spec.local)
        && link == Some(spec.uplink)
        && learning == Some(false)
}

fn is_link_local(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

fn neighbour_fields(n: &NeighbourMessage) -> (Option<IpAddr>, Option<Mac>) {
    let mut ip = None;
    let mut mac = None;
    for attr in &n.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                ip = Some(IpAddr::V4(*v4));
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                ip = Some(IpAddr::V6(*v6));
            }
            // FDB entries (family AF_BRIDGE) carry their destination as raw bytes.
            NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
                ip = match bytes.len() {
                    4 => <[u8; 4]>::try_from(bytes.as_slice()).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(bytes.as_slice())
                        .ok()
                        .map(IpAddr::from),
                    _ => None,
                };
            }
            NeighbourAttribute::LinkLayerAddress(bytes) => mac = Mac::from_slice(bytes),
            _ => {}
        }
    }
    (ip, mac)
}

fn route_address(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A main-table unicast route out of `index` through a gateway, as a [`RouteEntry`].
fn route_entry(r: &RouteMessage, index: u32) -> Option<RouteEntry> {
    if r.header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(r.header.table);
    let mut oif = None;
    let mut dst = None;
    let mut via = None;
    for attr in &r.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Destination(a) => dst = route_address(a),
            RouteAttribute::Gateway(a) => via = route_address(a),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || oif != Some(index) {
        return None;
    }
    let dst: Cidr = format!("{}/{}", dst?, r.header.destination_prefix_length)
        .parse()
        .ok()?;
    Some(RouteEntry { dst, via: via? })
}

fn route_message(index: u32, r: RouteEntry) -> Result<RouteMessage, OverlayError> {
    let invalid = |e: &dyn std::fmt::Display| {
        OverlayError::Invalid(format!("route {} via {}: {e}", r.dst, r.via))
    };
    Ok(RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(r.dst.addr(), r.dst.prefix())
        .map_err(|e| invalid(&e))?
        .gateway(r.via)
        .map_err(|e| invalid(&e))?
        .output_interface(index)
        .onlink()
        .build())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec() -> VxlanSpec {
        VxlanSpec {
            name: "shoal-vxlan".into(),
            vni: 1,
            port: 8472,
            local: "192.168.1.1".parse().unwrap(),
            uplink: 2,
            mtu: 1450,
            mac: Mac([2, 0, 0, 0, 0, 1]),
            subnet: "10.42.1.0/24".parse().unwrap(),
        }
    }

    fn facts(vxlan: Vec<InfoVxlan>) -> LinkFacts {
        LinkFacts {
            index: 5,
            mtu: 1500,
            mac: vec![2, 0, 0, 0, 0, 9],
            kind: Some(InfoKind::Vxlan),
            vxlan,
        }
    }

    fn as_created() -> Vec<InfoVxlan> {
        vec![
            InfoVxlan::Id(1),
            InfoVxlan::Link(2),
            InfoVxlan::Local(Ipv4Addr::new(192, 168, 1, 1)),
            InfoVxlan::Learning(false),
            InfoVxlan::Port(8472),
        ]
    }

    #[test]
    fn a_device_is_kept_only_when_its_tunnel_parameters_match() {
        // MTU and MAC differ, which a plain set fixes; the tunnel itself matches.
        assert!(vxlan_matches(&facts(as_created()), &spec()));
        for (i, changed) in [
            InfoVxlan::Id(2),
            InfoVxlan::Link(3),
            InfoVxlan::Local(Ipv4Addr::new(192, 168, 1, 2)),
            InfoVxlan::Learning(true),
            InfoVxlan::Port(4789),
        ]
        .into_iter()
        .enumerate()
        {
            let mut info = as_created();
            info[i] = changed;
            assert!(!vxlan_matches(&facts(info), &spec()), "{i}");
        }
        let mut bridge = facts(as_created());
        bridge.kind = Some(InfoKind::Bridge);
        assert!(!vxlan_matches(&bridge, &spec()));
    }

    #[test]
    fn routes_read_back_as_they_were_written() {
        for (dst, via) in [
            ("10.42.2.0/24", "10.42.2.0"),
            ("fd00:42:2::/64", "fd00:42:2::"),
        ] {
            let entry = RouteEntry {
                dst: dst.parse().unwrap(),
                via: via.parse().unwrap(),
            };
            let mut msg = route_message(7, entry).unwrap();
            assert_eq!(route_entry(&msg, 7), Some(entry));
            assert_eq!(route_entry(&msg, 8), None, "another device's route");
            msg.header.table = 200;
            assert_eq!(route_entry(&msg, 7), None, "another table's route");
        }
        let mismatched = RouteEntry {
            dst: "10.42.2.0/24".parse().unwrap(),
            via: "fd00::1".parse().unwrap(),
        };
        // An IPv4 route via an IPv6 gateway is valid netlink (RTA_VIA), but never ours.
        assert!(route_message(7, mismatched)
            .map(|m| route_entry(&m, 7).is_none())
            .unwrap_or(true));
    }

    #[test]
    fn fdb_destinations_come_as_raw_bytes() {
        let mut msg = NeighbourMessage::default();
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Other(
                vec![192, 168, 1, 2],
            )));
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 1]));
        assert_eq!(
            neighbour_fields(&msg),
            (
                Some("192.168.1.2".parse().unwrap()),
                Some(Mac([2, 0, 0, 0, 0, 1]))
            )
        );
    }
}
