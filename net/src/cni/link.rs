//! Netlink operations on links, addresses and routes (rtnetlink), each idempotent where a
//! repeated ADD needs it: an existing bridge, address or route is accepted as it is.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::error::CniError;
use super::netns;

/// The bridge's own link-local address on a dual-stack node (no pod takes it: theirs are
/// derived from their MAC addresses).
pub const BRIDGE_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

const EEXIST: i32 = 17;
const ENODEV: i32 = 19;

/// What the plugin needs to know of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub mac: Vec<u8>,
    pub kind: Option<InfoKind>,
}

pub(crate) fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => Some(-msg.raw_code()),
        _ => None,
    }
}

fn nl_err(context: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> CniError {
    let context = context.into();
    move |source| CniError::Netlink { context, source }
}

/// Accepts "already exists" as success.
fn exists_ok(result: Result<(), rtnetlink::Error>, context: &str) -> Result<(), CniError> {
    match result {
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        other => other.map_err(nl_err(context)),
    }
}

/// A netlink connection into one network namespace. Must be made and used inside a tokio
/// runtime (its connection task is spawned on it).
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// A connection in the calling thread's namespace.
    pub fn here() -> Result<Netlink, CniError> {
        Self::connect(rtnetlink::new_connection())
    }

    /// A connection in the namespace `netns` (opened from `path`).
    pub fn in_netns(netns: &File, path: &Path) -> Result<Netlink, CniError> {
        Self::connect(netns::within(netns, path, rtnetlink::new_connection)?)
    }

    fn connect(
        conn: std::io::Result<(
            rtnetlink::proto::Connection<netlink_packet_route::RouteNetlinkMessage>,
            Handle,
            impl Sized,
        )>,
    ) -> Result<Netlink, CniError> {
        let (conn, handle, _) = conn.map_err(|source| CniError::Io {
            context: "opening a netlink socket".into(),
            source,
        })?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// The link named `name`, if there is one.
    pub async fn link(&self, name: &str) -> Result<Option<Link>, CniError> {
        let mut links = self.handle.link().get().match_name(name).execute();
        let msg = match links.try_next().await {
            Ok(Some(msg)) => msg,
            Ok(None) => return Ok(None),
            Err(e) if errno(&e) == Some(ENODEV) => return Ok(None),
            Err(e) => return Err(nl_err(format!("looking up link {name}"))(e)),
        };
        let mut link = Link {
            index: msg.header.index,
            mac: Vec::new(),
            kind: None,
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::Address(mac) => link.mac = mac,
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            link.kind = Some(kind);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(Some(link))
    }

    async fn require(&self, name: &str) -> Result<Link, CniError> {
        self.link(name).await?.ok_or_else(|| CniError::Netlink {
            context: format!("link {name}"),
            source: rtnetlink::Error::RequestFailed,
        })
    }

    /// Makes sure the bridge `name` exists, holds each `gateway/prefix` (one per family)
    /// and is up.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        mtu: Option<u32>,
        gateways: &[(IpAddr, u8)],
    ) -> Result<Link, CniError> {
        let mut bridge = LinkBridge::new(name);
        if let Some(mtu) = mtu {
            bridge = bridge.mtu(mtu);
        }
        exists_ok(
            self.handle.link().add(bridge.build()).execute().await,
            &format!("creating bridge {name}"),
        )?;
        let link = self.require(name).await?;
        if link.kind != Some(InfoKind::Bridge) {
            return Err(CniError::InvalidConfig(format!(
                "link {name} exists and is not a bridge"
            )));
        }
        // A link-local address usable at once: the one the kernel makes for the bridge stays
        // tentative for a second or two after its first port comes up (also with accept_dad
        // off), and meanwhile the node sends no neighbour solicitation for traffic it routes
        // to a pod (from another node, through a Service), which is then dropped.
        if gateways.iter().any(|(gateway, _)| gateway.is_ipv6()) {
            self.add_address(link.index, IpAddr::V6(BRIDGE_LINK_LOCAL), 64, name)
                .await?;
        }
        for (gateway, prefix) in gateways {
            self.add_address(link.index, *gateway, *prefix, name)
                .await?;
        }
        self.set_up(link.index, name).await?;
        Ok(link)
    }

    /// Creates the veth pair `host`–`peer`: `host` here, attached to the bridge
    /// `bridge_index`; `peer` created directly inside `peer_netns` under its final name.
    pub async fn create_veth(
        &self,
        host: &str,
        peer: &str,
        mtu: Option<u32>,
        bridge_index: u32,
        peer_netns: &File,
    ) -> Result<(), CniError> {
        let mut peer_msg = LinkUnspec::new_with_name(peer).setns_by_fd(peer_netns.as_raw_fd());
        let mut veth = LinkVeth::new(host, peer).controller(bridge_index);
        if let Some(mtu) = mtu {
            peer_msg = peer_msg.mtu(mtu);
            veth = veth.mtu(mtu);
        }
        let veth = veth.set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())));
        self.handle
            .link()
            .add(veth.build())
            .execute()
            .await
            .map_err(nl_err(format!("creating veth pair {host}/{peer}")))
    }

    /// Sets the bridge port `index`'s hairpin mode (traffic may leave by the port it came in,
    /// so a pod can reach itself through a Service).
    pub async fn set_hairpin(&self, index: u32, on: bool, name: &str) -> Result<(), CniError> {
        self.handle
            .link()
            .set_port(LinkBridgePort::new(index).hairpin(on).build())
            .execute()
            .await
            .map_err(nl_err(format!("setting hairpin mode on {name}")))
    }

    pub async fn set_up(&self, index: u32, name: &str) -> Result<(), CniError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl_err(format!("setting {name} up")))
    }

    /// Adds `ip/prefix` to link `index`; an address already there is fine. IPv6 addresses
    /// skip duplicate address detection (IPAM made them unique), so they are usable at once
    /// instead of tentative for a second or two.
    pub async fn add_address(
        &self,
        index: u32,
        ip: IpAddr,
        prefix: u8,
        name: &str,
    ) -> Result<(), CniError> {
        let mut request = self.handle.address().add(index, ip, prefix);
        if ip.is_ipv6() {
            request.message_mut().header.flags = AddressHeaderFlags::Nodad;
        }
        exists_ok(
            request.execute().await,
            &format!("adding {ip}/{prefix} to {name}"),
        )
    }

    /// The addresses on link `index`, with their prefix lengths.
    pub async fn addresses(&self, index: u32) -> Result<Vec<(IpAddr, u8)>, CniError> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("listing addresses"))?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                let prefix = m.header.prefix_len;
                let mut address = None;
                for attr in m.attributes {
                    match attr {
                        AddressAttribute::Local(ip) => address = Some(ip),
                        AddressAttribute::Address(ip) if address.is_none() => address = Some(ip),
                        _ => {}
                    }
                }
                address.map(|ip| (ip, prefix))
            })
            .collect())
    }

    /// Adds the default route of `gateway`'s family via `gateway` out of link `index`; one
    /// already there is fine.
    pub async fn add_default_route(&self, index: u32, gateway: IpAddr) -> Result<(), CniError> {
        let route = match gateway {
            IpAddr::V4(v4) => RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(v4)
                .output_interface(index)
                .build(),
            IpAddr::V6(v6) => RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(v6)
                .output_interface(index)
                .build(),
        };
        exists_ok(
            self.handle.route().add(route).execute().await,
            &format!("adding the default route via {gateway}"),
        )
    }

    /// Deletes the link `name`; returns whether it was there.
    pub async fn delete(&self, name: &str) -> Result<bool, CniError> {
        let Some(link) = self.link(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(false),
            Err(e) => Err(nl_err(format!("deleting link {name}"))(e)),
        }
    }
}
