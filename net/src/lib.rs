//! Pod networking: the node's CNI plugin ([`cni`]) and the network between nodes
//! ([`overlay`]: VXLAN, forwarding, masquerade). The nftables Service proxy and cluster DNS
//! come later (issue: networking).

pub mod cni;
pub mod overlay;
