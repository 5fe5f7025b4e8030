//! Test clusters and benchmark drivers: a server on a loopback port (`cluster`), multi-node labs
//! on one machine with a network namespace per node (`lab`), real kubectl (`kubectl`), test
//! images from busybox-static (`images`), and the `shoal-bench` drivers.

pub mod api_bench;
pub mod cluster;
pub mod control_bench;
pub mod dns_bench;
pub mod etcd;
pub mod history;
pub mod images;
pub mod kubectl;
pub mod lab;
pub mod lab_bench;
pub mod latency;
pub mod overlay_bench;
pub mod pod_bench;
pub mod process;
pub mod proxy_bench;
pub mod server;
pub mod store_ha_bench;
pub mod store_load;
