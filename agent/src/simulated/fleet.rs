//! Which nodes the simulator runs: each node's name, zone, pod range and address, derived from
//! its index alone, so a restarted simulator (or a second one with another prefix) lays out
//! the same nodes the same way.

use std::net::IpAddr;

use shoal_common::Cidr;

use crate::simulated::{SimConfig, SimError};

/// One simulated node's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimNode {
    /// Position in the fleet (0-based); also the node name's suffix.
    pub index: usize,
    pub name: String,
    /// The `topology.kubernetes.io/zone` value, if zones are simulated.
    pub zone: Option<String>,
    /// The node's own /24 for pod addresses (`spec.podCIDR`).
    pub pod_cidr: Cidr,
    /// The node's `InternalIP`.
    pub internal_ip: IpAddr,
}

/// The nodes `config` describes, in index order (`config` is expected to be validated).
pub fn plan_fleet(config: &SimConfig) -> Result<Vec<SimNode>, SimError> {
    (0..config.count)
        .map(|index| plan_node(config, index))
        .collect()
}

fn plan_node(config: &SimConfig, index: usize) -> Result<SimNode, SimError> {
    let name = format!("{}{index}", config.name_prefix);
    let out_of_range = |what: &str, cidr: &Cidr| {
        SimError::Config(format!("{what} {cidr} has no room for node {name}"))
    };
    let node_range_size = 1u128 << 8;
    let pod_network = config
        .pod_cidr
        .nth(index as u128 * node_range_size)
        .ok_or_else(|| out_of_range("pod CIDR", &config.pod_cidr))?;
    let pod_cidr = format!("{pod_network}/24")
        .parse()
        .map_err(|e| SimError::Config(format!("{e}")))?;
    let internal_ip = config
        .node_ip_cidr
        .nth(index as u128 + 1)
        .ok_or_else(|| out_of_range("node IP CIDR", &config.node_ip_cidr))?;
    let zone = (config.zones > 0).then(|| format!("zone-{}", index % config.zones));
    Ok(SimNode {
        index,
        name,
        zone,
        pod_cidr,
        internal_ip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_get_distinct_ranges_addresses_and_round_robin_zones() {
        let config = SimConfig {
            count: 1000,
            ..SimConfig::default()
        };
        let fleet = plan_fleet(&config).expect("plan");
        assert_eq!(fleet.len(), 1000);
        let third = &fleet[3];
        assert_eq!(third.name, "sim-3");
        assert_eq!(third.zone.as_deref(), Some("zone-0"));
        assert_eq!(third.pod_cidr.to_string(), "10.128.3.0/24");
        assert_eq!(third.internal_ip.to_string(), "10.64.0.4");
        assert_eq!(fleet[4].zone.as_deref(), Some("zone-1"));
        assert_eq!(fleet[999].pod_cidr.to_string(), "10.131.231.0/24");
        assert_eq!(fleet[999].internal_ip.to_string(), "10.64.3.232");

        let ranges: std::collections::HashSet<_> = fleet.iter().map(|n| n.pod_cidr).collect();
        let addresses: std::collections::HashSet<_> = fleet.iter().map(|n| n.internal_ip).collect();
        assert_eq!((ranges.len(), addresses.len()), (1000, 1000));
    }

    #[test]
    fn zero_zones_leaves_the_zone_out() {
        let config = SimConfig {
            count: 2,
            zones: 0,
            ..SimConfig::default()
        };
        let fleet = plan_fleet(&config).expect("plan");
        assert!(fleet.iter().all(|n| n.zone.is_none()));
    }
}
