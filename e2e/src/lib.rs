//! Multi-node test clusters on one machine (one network namespace per node) and benchmark drivers. The cluster harness comes with the e2e issue.

pub mod api_bench;
pub mod cluster;
pub mod control_bench;
pub mod etcd;
pub mod images;
pub mod latency;
pub mod pod_bench;
pub mod server;
