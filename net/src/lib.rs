//! Pod networking: the node's CNI plugin ([`cni`]) and the nftables Service proxy
//! ([`proxy`]). VXLAN overlay and cluster DNS come later (issue: networking).

pub mod cni;
pub mod proxy;
