//! The control loops (Deployment, ReplicaSet, Endpoints, Node lifecycle, GC, …) over the kube-rs
//! client, and the leader election that makes only one server run them.

pub mod leader;
