//! Node IPAM: each Node gets a pod subnet (`spec.podCIDR`/`podCIDRs`, a /24 for IPv4 by default)
//! carved from the cluster CIDR, as kube-controller-manager's range allocator does. Pure: given
//! the nodes, which subnet each unassigned node gets; subnets already assigned are never moved.

use std::collections::BTreeSet;
use std::net::IpAddr;

use shoal_common::Cidr;

/// The subnet size per node for IPv4 clusters (Kubernetes' `--node-cidr-mask-size`).
pub const NODE_MASK_V4: u8 = 24;
/// The subnet size per node for IPv6 clusters.
pub const NODE_MASK_V6: u8 = 64;

/// A node as the allocator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRange {
    pub name: String,
    pub pod_cidr: Option<String>,
}

/// Subnets for the nodes that have none, lowest free first, in the order given; nodes past
/// the cluster CIDR's capacity get nothing (Kubernetes reports CIDRNotAvailable).
pub fn assign(cluster: &Cidr, nodes: &[NodeRange]) -> Vec<(String, Cidr)> {
    let mask = if cluster.is_ipv4() {
        NODE_MASK_V4
    } else {
        NODE_MASK_V6
    }
    .max(cluster.prefix());
    let shift = u32::from(mask - cluster.prefix());
    let count: u128 = if shift >= 127 {
        u128::MAX
    } else {
        1u128 << shift
    };
    let block = cluster.size() >> shift;
    let used: BTreeSet<u128> = nodes
        .iter()
        .filter_map(|n| n.pod_cidr.as_deref())
        .filter_map(|c| c.parse::<Cidr>().ok())
        .filter_map(|c| cluster.offset(c.addr()))
        .map(|offset| offset / block.max(1))
        .collect();
    let mut next = 0u128;
    let mut out = Vec::new();
    for node in nodes.iter().filter(|n| n.pod_cidr.is_none()) {
        while used.contains(&next) {
            next += 1;
        }
        if next >= count {
            break;
        }
        let Some(addr) = cluster.nth(next * block) else {
            break;
        };
        if let Ok(cidr) = format!("{}/{mask}", addr_text(addr)).parse::<Cidr>() {
            out.push((node.name.clone(), cidr));
        }
        next += 1;
    }
    out
}

fn addr_text(addr: IpAddr) -> String {
    addr.to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: Option<&str>) -> NodeRange {
        NodeRange {
            name: name.into(),
            pod_cidr: cidr.map(str::to_string),
        }
    }

    #[test]
    fn nodes_get_the_lowest_free_slash_24() {
        let cluster: Cidr = "10.42.0.0/16".parse().unwrap();
        let got = assign(
            &cluster,
            &[
                node("a", Some("10.42.0.0/24")),
                node("b", None),
                node("c", Some("10.42.2.0/24")),
                node("d", None),
            ],
        );
        let got: Vec<(String, String)> = got.into_iter().map(|(n, c)| (n, c.to_string())).collect();
        assert_eq!(
            got,
            vec![
                ("b".into(), "10.42.1.0/24".into()),
                ("d".into(), "10.42.3.0/24".into())
            ]
        );
    }

    #[test]
    fn a_full_range_assigns_nothing_more() {
        let cluster: Cidr = "10.42.0.0/23".parse().unwrap();
        let got = assign(
            &cluster,
            &[node("a", None), node("b", None), node("c", None)],
        );
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn ipv6_clusters_get_slash_64s() {
        let cluster: Cidr = "fd00:42::/56".parse().unwrap();
        let got = assign(&cluster, &[node("a", None), node("b", None)]);
        assert_eq!(got[1].1.to_string(), "fd00:42:0:1::/64");
    }
}
