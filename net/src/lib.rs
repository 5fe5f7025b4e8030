//! Pod networking: the node's CNI plugin ([`cni`]), the network between nodes ([`overlay`]:
//! VXLAN, forwarding, masquerade) and the cluster DNS ([`dns`]). The nftables Service proxy
//! comes later (issue: networking).

pub mod cni;
pub mod dns;
pub mod overlay;
