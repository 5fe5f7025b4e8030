//! Binds unscheduled pods to nodes; pure decision logic plus a thin kube-rs loop (issue: scheduler and controllers). Not built yet.
