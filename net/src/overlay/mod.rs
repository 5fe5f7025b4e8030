//! The pod network between nodes: a VXLAN overlay laid out as flannel's vxlan backend does
//! (VNI 1, UDP 8472, one VTEP per node whose address is its pod CIDR's network address),
//! programmed from Node objects, plus forwarding and masquerade of pod traffic that leaves
//! the cluster.
//!
//! Each node publishes its VTEP in flannel's annotations ([`desired::annotations`]); every
//! node turns the others' annotations into a route, a neighbour and an FDB entry per peer
//! ([`desired::desired`], pure) and applies the difference to the kernel
//! ([`desired::plan`], then [`netlink`]). Anything else on our device is removed, so a
//! restart reconciles entries of nodes that went away meanwhile. [`masq`] owns the
//! forwarding sysctls and the `inet shoal-masq` nftables table. IPv4 and IPv6 each get their
//! own device, as flannel's `flannel.1`/`flannel-v6.1`, when the node has both a pod CIDR and
//! an address of the family; a dual-stack node with only an IPv4 address carries its IPv6
//! pods over the IPv4 device.
//!
//! The device is `shoal-vxlan` (`shoal-vxlan6`), not `flannel.1`: the wire format and the
//! annotations are flannel's, but a host that also runs flannel must not have its device
//! taken over.

pub mod desired;
pub mod masq;
pub mod netlink;

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;
use shoal_common::Cidr;

use desired::{Desired, Entries, LocalVtep, Mac};
use netlink::{OverlayNetlink, VxlanSpec};

/// The IPv4 VTEP device.
pub const DEVICE_V4: &str = "shoal-vxlan";
/// The IPv6 VTEP device.
pub const DEVICE_V6: &str = "shoal-vxlan6";
/// flannel's VNI.
pub const VNI: u32 = 1;
/// flannel's (and the Linux kernel's) VXLAN port.
pub const VXLAN_PORT: u16 = 8472;

/// Why the overlay could not be set up or updated.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("netlink: {context}: {source}")]
    Netlink {
        context: String,
        source: rtnetlink::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("nft -f - failed: {0}")]
    Nft(String),
    #[error("{0}")]
    Invalid(String),
}

/// What the overlay on one node is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayConfig {
    pub node_name: String,
    /// The node's underlay addresses (one per family used).
    pub node_ips: Vec<IpAddr>,
    /// The node's pod CIDRs.
    pub pod_cidrs: Vec<Cidr>,
    /// The whole pod network (`--cluster-cidr`), for masquerade.
    pub cluster_cidrs: Vec<Cidr>,
}

#[derive(Debug, Clone)]
struct Device {
    ipv4: bool,
    index: u32,
    vtep: LocalVtep,
}

/// The overlay on this node: its VXLAN devices and how to bring their entries up to date.
#[derive(Debug, Clone)]
pub struct Overlay {
    netlink: OverlayNetlink,
    node_name: String,
    devices: Vec<Device>,
    mtu: u32,
}

/// What one [`Overlay::sync`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub peers: usize,
    /// The changes made, in order.
    pub changes: Vec<desired::Change>,
    /// Nodes left out, with why.
    pub ignored: Vec<(String, String)>,
}

impl Overlay {
    /// Brings the node's side up, in the calling thread's network namespace (inside a tokio
    /// runtime): forwarding, the masquerade table, and a VXLAN device per family (MTU from
    /// the uplink holding the node address of that family).
    pub async fn setup(config: &OverlayConfig) -> Result<Overlay, OverlayError> {
        masq::enable_forwarding(&config.cluster_cidrs)?;
        masq::nft(&masq::ruleset(&config.cluster_cidrs)).await?;
        let netlink = OverlayNetlink::here()?;
        let mut devices = Vec::new();
        let mut mtu = u32::MAX;
        let has_ip = |ipv4: bool| config.node_ips.iter().any(|ip| ip.is_ipv4() == ipv4);
        for subnet in &config.pod_cidrs {
            let ipv4 = subnet.is_ipv4();
            // An IPv6 pod CIDR without an IPv6 node address rides on the IPv4 device.
            if !ipv4 && !has_ip(false) && has_ip(true) {
                if !config.pod_cidrs.iter().any(Cidr::is_ipv4) {
                    return Err(OverlayError::Invalid(format!(
                        "the pod CIDR {subnet} needs an IPv6 node address, or an IPv4 pod CIDR to ride with"
                    )));
                }
                continue;
            }
            let local = config
                .node_ips
                .iter()
                .copied()
                .find(|ip| ip.is_ipv4() == ipv4)
                .ok_or_else(|| {
                    OverlayError::Invalid(format!(
                        "the pod CIDR {subnet} needs a node address of its family"
                    ))
                })?;
            let uplink = netlink.uplink(local).await?;
            let device_mtu = desired::overlay_mtu(uplink.mtu, !ipv4);
            let name = if ipv4 { DEVICE_V4 } else { DEVICE_V6 };
            let mac = Mac::derived(&format!("{}/{name}", config.node_name));
            let link = netlink
                .ensure_vxlan(&VxlanSpec {
                    name: name.to_string(),
                    vni: VNI,
                    port: VXLAN_PORT,
                    local,
                    uplink: uplink.index,
                    mtu: device_mtu,
                    mac,
                    subnet: *subnet,
                })
                .await?;
            mtu = mtu.min(device_mtu);
            devices.push(Device {
                ipv4,
                index: link.index,
                vtep: LocalVtep {
                    vni: VNI,
                    mac: link.mac,
                    public_ip: local,
                },
            });
        }
        if devices.is_empty() {
            return Err(OverlayError::Invalid("the node has no pod CIDR".into()));
        }
        Ok(Overlay {
            netlink,
            node_name: config.node_name.clone(),
            devices,
            mtu,
        })
    }

    /// The MTU pods get: the smallest of the devices'.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// The annotations this node publishes on its Node.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        let vteps: Vec<LocalVtep> = self.devices.iter().map(|d| d.vtep.clone()).collect();
        desired::annotations(&vteps)
    }

    /// Brings every device's entries in line with `nodes`.
    pub async fn sync(&self, nodes: &[Node]) -> Result<SyncReport, OverlayError> {
        let wanted = desired::desired(&self.node_name, nodes, VNI);
        let changes = self.apply(&wanted).await?;
        Ok(SyncReport {
            peers: wanted.peers.len(),
            changes,
            ignored: wanted.ignored,
        })
    }

    /// Brings every device's entries in line with `wanted`; returns the changes it made.
    pub async fn apply(&self, wanted: &Desired) -> Result<Vec<desired::Change>, OverlayError> {
        let mut done = Vec::new();
        for device in &self.devices {
            let current = self.netlink.current(device.index, device.ipv4).await?;
            let target = Entries::for_peers(wanted.underlay(device.ipv4));
            for change in desired::plan(&current, &target) {
                self.netlink.apply(device.index, &change).await?;
                done.push(change);
            }
        }
        Ok(done)
    }

    /// Removes what [`Overlay::setup`] made: the devices (and with them their entries) and
    /// the masquerade table. Forwarding stays on (other things may rely on it).
    pub async fn teardown() -> Result<(), OverlayError> {
        let netlink = OverlayNetlink::here()?;
        netlink.delete_link(DEVICE_V4).await?;
        netlink.delete_link(DEVICE_V6).await?;
        masq::nft(&masq::removal()).await
    }
}
