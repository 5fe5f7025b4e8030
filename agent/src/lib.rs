//! The node agent: a kubelet on containerd's CRI (issue: node agent). Not built yet.
