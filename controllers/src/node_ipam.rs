//! Node IPAM: each Node gets a pod subnet per cluster CIDR (`spec.podCIDRs`, the primary
//! family's also as `spec.podCIDR`; a /24 for IPv4 and a /64 for IPv6 by default) carved from
//! the cluster CIDRs, as kube-controller-manager's range allocator does, dual-stack included.
//! Pure: given the nodes, which subnets each unassigned node gets. Subnets already assigned
//! are never moved, and a node that has any gets none added (Kubernetes' podCIDRs only go
//! from empty to set); the Nodes themselves are the allocator's state, so a restart or a new
//! leader recomputes the same free set.

use std::collections::BTreeSet;

use shoal_common::Cidr;

/// The subnet size per node for IPv4 clusters (Kubernetes' `--node-cidr-mask-size`).
pub const NODE_MASK_V4: u8 = 24;
/// The subnet size per node for IPv6 clusters.
pub const NODE_MASK_V6: u8 = 64;

/// A node as the allocator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRange {
    pub name: String,
    /// `spec.podCIDRs`, or `spec.podCIDR` alone when the list is missing.
    pub pod_cidrs: Vec<String>,
}

/// The node subnet size of `cluster`'s family (never larger than the cluster CIDR).
pub fn node_mask(cluster: &Cidr) -> u8 {
    if cluster.is_ipv4() {
        NODE_MASK_V4
    } else {
        NODE_MASK_V6
    }
    .max(cluster.prefix())
}

/// The free node subnets of one cluster CIDR, lowest first.
struct Slots {
    cluster: Cidr,
    mask: u8,
    block: u128,
    count: u128,
    used: BTreeSet<u128>,
    next: u128,
}

impl Slots {
    fn new(cluster: Cidr, nodes: &[NodeRange]) -> Self {
        let mask = node_mask(&cluster);
        let shift = u32::from(mask - cluster.prefix());
        let count: u128 = if shift >= 127 {
            u128::MAX
        } else {
            1u128 << shift
        };
        let block = (cluster.size() >> shift).max(1);
        let used = nodes
            .iter()
            .flat_map(|n| &n.pod_cidrs)
            .filter_map(|c| c.parse::<Cidr>().ok())
            .filter_map(|c| cluster.offset(c.addr()))
            .map(|offset| offset / block)
            .collect();
        Slots {
            cluster,
            mask,
            block,
            count,
            used,
            next: 0,
        }
    }

    fn take(&mut self) -> Option<Cidr> {
        while self.used.contains(&self.next) {
            self.next += 1;
        }
        if self.next >= self.count {
            return None;
        }
        let addr = self.cluster.nth(self.next * self.block)?;
        self.next += 1;
        format!("{addr}/{}", self.mask).parse().ok()
    }
}

/// Subnets for the nodes that have none — one of each cluster CIDR, in the clusters' order —
/// lowest free first, in the order given; a node for which any cluster CIDR is full gets
/// nothing, and nor do the nodes after it (Kubernetes reports CIDRNotAvailable).
pub fn assign(clusters: &[Cidr], nodes: &[NodeRange]) -> Vec<(String, Vec<Cidr>)> {
    let mut slots: Vec<Slots> = clusters.iter().map(|c| Slots::new(*c, nodes)).collect();
    let mut out = Vec::new();
    if slots.is_empty() {
        return out;
    }
    for node in nodes.iter().filter(|n| n.pod_cidrs.is_empty()) {
        let Some(cidrs) = slots
            .iter_mut()
            .map(Slots::take)
            .collect::<Option<Vec<_>>>()
        else {
            break;
        };
        out.push((node.name.clone(), cidrs));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: Option<&str>) -> NodeRange {
        NodeRange {
            name: name.into(),
            pod_cidrs: cidr.map(str::to_string).into_iter().collect(),
        }
    }

    fn one(cluster: &Cidr, nodes: &[NodeRange]) -> Vec<(String, Cidr)> {
        assign(std::slice::from_ref(cluster), nodes)
            .into_iter()
            .map(|(n, c)| (n, c[0]))
            .collect()
    }

    #[test]
    fn nodes_get_the_lowest_free_slash_24() {
        let cluster: Cidr = "10.42.0.0/16".parse().unwrap();
        let got = one(
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
        let got = one(
            &cluster,
            &[node("a", None), node("b", None), node("c", None)],
        );
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn ipv6_clusters_get_slash_64s() {
        let cluster: Cidr = "fd00:42::/56".parse().unwrap();
        let got = one(&cluster, &[node("a", None), node("b", None)]);
        assert_eq!(got[1].1.to_string(), "fd00:42:0:1::/64");
    }

    #[test]
    fn dual_stack_nodes_get_one_subnet_per_family() {
        let clusters: Vec<Cidr> = vec![
            "10.42.0.0/16".parse().unwrap(),
            "fd00:42::/56".parse().unwrap(),
        ];
        let existing = NodeRange {
            name: "a".into(),
            pod_cidrs: vec!["10.42.0.0/24".into(), "fd00:42::/64".into()],
        };
        // A node from before the cluster was dual-stack keeps what it has and holds its /24.
        let old = node("b", Some("10.42.1.0/24"));
        let got = assign(
            &clusters,
            &[existing, old, node("c", None), node("d", None)],
        );
        let got: Vec<(String, Vec<String>)> = got
            .into_iter()
            .map(|(n, c)| (n, c.iter().map(ToString::to_string).collect()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "c".into(),
                    vec!["10.42.2.0/24".into(), "fd00:42:0:1::/64".into()]
                ),
                (
                    "d".into(),
                    vec!["10.42.3.0/24".into(), "fd00:42:0:2::/64".into()]
                ),
            ]
        );
        // IPv6 first (an IPv6-primary cluster): the order of the clusters is kept.
        let v6_first = [clusters[1], clusters[0]];
        let got = assign(&v6_first, &[node("a", None)]);
        let want: Vec<Cidr> = vec![
            "fd00:42::/64".parse().unwrap(),
            "10.42.0.0/24".parse().unwrap(),
        ];
        assert_eq!(got[0].1, want);
    }

    #[test]
    fn one_full_family_assigns_nothing() {
        // Two /64s of IPv6 but 4 /24s of IPv4: the third node gets neither.
        let clusters: Vec<Cidr> = vec![
            "10.42.0.0/22".parse().unwrap(),
            "fd00:42::/63".parse().unwrap(),
        ];
        let got = assign(
            &clusters,
            &[node("a", None), node("b", None), node("c", None)],
        );
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|(_, c)| c.len() == 2));
        assert!(assign(&[], &[node("a", None)]).is_empty());
    }
}
