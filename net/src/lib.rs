//! Pod networking: the node's CNI plugin ([`cni`]), the network between nodes ([`overlay`]:
//! VXLAN, forwarding, masquerade), the nftables Service proxy ([`proxy`]), pods' host ports
//! ([`hostport`]) and the cluster DNS ([`dns`]).

pub mod cni;
pub mod dns;
pub mod hostport;
pub mod overlay;
pub mod proxy;
