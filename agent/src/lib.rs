//! The node agent: a kubelet on containerd's CRI (issue: node agent), not built yet; and
//! [`simulated`], kwok-style simulated nodes that speak the kubelet's side of the API.

pub mod simulated;
