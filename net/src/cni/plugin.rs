//! The commands: ADD, DEL, CHECK and VERSION over a parsed request and configuration.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use super::config::{self, NetConf, Subnet};
use super::error::CniError;
use super::ipam::{Allocated, Ipam};
use super::link::{Link, Netlink};
use super::netns;
use super::request::{Command, Request};
use super::result::{self, format_mac, CniResult, Interface, IpConfig, Route};

/// The host-side veth name of a container's interface: `veth` and 8 hex digits of a hash of
/// the container id and interface name (stable, so DEL finds what ADD made).
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a, 64 bits, folded to 32.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in container_id
        .bytes()
        .chain(std::iter::once(0))
        .chain(ifname.bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("veth{:08x}", (hash ^ (hash >> 32)) as u32)
}

/// Runs `request` with the network configuration `stdin`; returns what to print on success.
pub fn execute(request: &Request, stdin: &[u8]) -> Result<String, CniError> {
    if request.command == Command::Version {
        let version = config::peek_version(stdin).unwrap_or_else(|| config::CURRENT_VERSION.into());
        return Ok(result::version_json(&version));
    }
    let conf = NetConf::parse(stdin)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|source| CniError::Io {
            context: "starting the netlink runtime".into(),
            source,
        })?;
    runtime.block_on(async {
        match request.command {
            Command::Add => add(request, &conf)
                .await
                .map(|r| r.to_json(&conf.cni_version)),
            Command::Del => del(request, &conf).await.map(|()| String::new()),
            Command::Check => check(request, &conf).await.map(|()| String::new()),
            Command::Version => Ok(result::version_json(&conf.cni_version)),
        }
    })
}

fn netns_path(request: &Request) -> Result<&Path, CniError> {
    request
        .netns
        .as_deref()
        .ok_or_else(|| CniError::InvalidEnvironment("CNI_NETNS is not set".into()))
}

async fn add(request: &Request, conf: &NetConf) -> Result<CniResult, CniError> {
    let path = netns_path(request)?;
    let ns = netns::open(path)?;
    let host = Netlink::here()?;
    let gateways: Vec<(IpAddr, u8)> = conf
        .subnets
        .iter()
        .map(|s| (s.gateway(), s.prefix()))
        .collect();
    let bridge = host
        .ensure_bridge(&conf.bridge, conf.mtu, &gateways)
        .await?;
    let mut allocated = Vec::new();
    for subnet in &conf.subnets {
        match Ipam::new(&conf.data_dir, *subnet).allocate(&request.container_id, &request.ifname) {
            Ok(a) => allocated.push((*subnet, a)),
            Err(err) => {
                undo(conf, &host, None, &allocated).await;
                return Err(err.into());
            }
        }
    }
    let veth = host_veth_name(&request.container_id, &request.ifname);
    let addresses: Vec<(Subnet, IpAddr)> = allocated.iter().map(|(s, a)| (*s, a.ip)).collect();
    match wire(request, conf, &host, &bridge, &ns, path, &veth, &addresses).await {
        Ok(result) => Ok(result),
        Err(err) => {
            undo(conf, &host, Some(&veth), &allocated).await;
            Err(err)
        }
    }
}

/// Undoes only what a failed ADD made: a repeated ADD leaves the first one's addresses, and
/// its veth pair unless every address is new.
async fn undo(
    conf: &NetConf,
    host: &Netlink,
    veth: Option<&str>,
    allocated: &[(Subnet, Allocated)],
) {
    let fresh: Vec<IpAddr> = allocated
        .iter()
        .filter(|(_, a)| a.fresh)
        .map(|(_, a)| a.ip)
        .collect();
    if let Some(veth) = veth {
        if !allocated.is_empty() && fresh.len() == allocated.len() {
            let _ = host.delete(veth).await;
        }
    }
    if let Some((subnet, _)) = allocated.first() {
        let _ = Ipam::new(&conf.data_dir, *subnet).free(&fresh);
    }
}

#[allow(clippy::too_many_arguments)]
async fn wire(
    request: &Request,
    conf: &NetConf,
    host: &Netlink,
    bridge: &Link,
    ns: &File,
    path: &Path,
    veth: &str,
    addresses: &[(Subnet, IpAddr)],
) -> Result<CniResult, CniError> {
    let ifname = request.ifname.as_str();
    let container = Netlink::in_netns(ns, path)?;
    match (host.link(veth).await?, container.link(ifname).await?) {
        // A repeated ADD: the pair is there; (re)apply its settings below.
        (Some(_), Some(_)) => {}
        (host_side, None) => {
            if host_side.is_some() {
                host.delete(veth).await?;
            }
            host.create_veth(veth, ifname, conf.mtu, bridge.index, ns)
                .await?;
        }
        (None, Some(_)) => {
            return Err(CniError::InvalidConfig(format!(
                "interface {ifname} already exists in {}",
                path.display()
            )))
        }
    }
    let host_link = host.link(veth).await?.ok_or_else(|| missing(veth))?;
    if conf.hairpin_mode {
        host.set_hairpin(host_link.index, true, veth).await?;
    }
    host.set_up(host_link.index, veth).await?;

    let cont_link = container
        .link(ifname)
        .await?
        .ok_or_else(|| missing(ifname))?;
    for (subnet, ip) in addresses {
        container
            .add_address(cont_link.index, *ip, subnet.prefix(), ifname)
            .await?;
    }
    container.set_up(cont_link.index, ifname).await?;
    if let Some(lo) = container.link("lo").await? {
        container.set_up(lo.index, "lo").await?;
    }
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    for (subnet, ip) in addresses {
        let gateway = subnet.gateway();
        container
            .add_default_route(cont_link.index, gateway)
            .await?;
        ips.push(IpConfig {
            address: *ip,
            prefix: subnet.prefix(),
            gateway,
            interface: 1,
        });
        routes.push(Route {
            dst: if subnet.is_ipv4() {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            },
            prefix: 0,
            gw: gateway,
        });
    }

    Ok(CniResult {
        interfaces: vec![
            Interface {
                name: veth.to_string(),
                mac: format_mac(&host_link.mac),
                sandbox: None,
            },
            Interface {
                name: ifname.to_string(),
                mac: format_mac(&cont_link.mac),
                sandbox: Some(path.display().to_string()),
            },
        ],
        ips,
        routes,
    })
}

fn missing(name: &str) -> CniError {
    CniError::Netlink {
        context: format!("link {name} vanished while being set up"),
        source: rtnetlink::Error::RequestFailed,
    }
}

/// DEL: deletes the veth pair (through its host side, so a namespace already gone does not
/// matter), then releases the address. Anything already gone is not an error.
async fn del(request: &Request, conf: &NetConf) -> Result<(), CniError> {
    let host = Netlink::here()?;
    host.delete(&host_veth_name(&request.container_id, &request.ifname))
        .await?;
    // One release frees the container's addresses of every family (they share the directory).
    if let Some(subnet) = conf.subnets.first() {
        Ipam::new(&conf.data_dir, *subnet).release(&request.container_id, &request.ifname)?;
    }
    Ok(())
}

/// CHECK: the container's interface exists, holds the address allocated to it, and its
/// host side is still there.
async fn check(request: &Request, conf: &NetConf) -> Result<(), CniError> {
    if conf.cni_version.starts_with("0.3.") {
        return Err(CniError::IncompatibleVersion(conf.cni_version.clone()));
    }
    let ifname = request.ifname.as_str();
    let path = netns_path(request)?;
    let container = Netlink::in_netns(&netns::open(path)?, path)?;
    let link = container
        .link(ifname)
        .await?
        .ok_or_else(|| CniError::Check(format!("{ifname} is missing from {}", path.display())))?;
    let held = container.addresses(link.index).await?;
    for subnet in &conf.subnets {
        let ip = Ipam::new(&conf.data_dir, *subnet)
            .find(&request.container_id, ifname)?
            .ok_or_else(|| {
                CniError::Check(format!(
                    "no address of {subnet} is allocated to {} {ifname}",
                    request.container_id
                ))
            })?;
        if !held.contains(&(ip, subnet.prefix())) {
            return Err(CniError::Check(format!(
                "{ifname} does not hold {ip}/{}",
                subnet.prefix()
            )));
        }
    }
    let veth = host_veth_name(&request.container_id, ifname);
    if Netlink::here()?.link(&veth).await?.is_none() {
        return Err(CniError::Check(format!("host interface {veth} is missing")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_stable_short_and_distinct() {
        let a = host_veth_name("0123456789abcdef", "eth0");
        assert_eq!(a, host_veth_name("0123456789abcdef", "eth0"));
        assert_eq!(a.len(), 12);
        assert!(a.starts_with("veth") && a[4..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, host_veth_name("0123456789abcdef", "net1"));
        assert_ne!(a, host_veth_name("0123456789abcdee", "eth0"));
    }

    #[test]
    fn version_needs_no_valid_configuration() {
        let req = Request::from_lookup(|k| (k == "CNI_COMMAND").then(|| "VERSION".to_string()))
            .expect("request");
        let out = execute(&req, br#"{"cniVersion":"0.3.1"}"#).expect("version");
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(v["cniVersion"], "0.3.1");
        let out = execute(&req, b"").expect("version");
        assert!(out.contains("\"1.0.0\""));
    }
}
