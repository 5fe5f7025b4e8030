//! Pod networking: the node's CNI plugin ([`cni`]) and the cluster DNS ([`dns`]). VXLAN
//! overlay and the nftables Service proxy come later (issue: networking).

pub mod cni;
pub mod dns;
