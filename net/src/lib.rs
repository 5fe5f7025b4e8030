//! Pod networking: the node's CNI plugin ([`cni`]). VXLAN overlay, nftables Service proxy and
//! cluster DNS come later (issue: networking).

pub mod cni;
pub mod dns;
