//! The control loops (Deployment, ReplicaSet, Endpoints, Node lifecycle, GC, …) over the kube-rs client (issue: scheduler and controllers). Not built yet.
