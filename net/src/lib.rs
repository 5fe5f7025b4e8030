//! Pod networking: the node's CNI plugin ([`cni`]), the network between nodes ([`overlay`]:
//! VXLAN, forwarding, masquerade), the nftables Service proxy ([`proxy`]) and the cluster DNS
//! ([`dns`]).

pub mod cni;
pub mod dns;
pub mod overlay;
pub mod proxy;
