//! What several Shoal crates share and that needs no I/O: the cluster's default addresses,
//! ports and paths (Kubernetes' and k3s's own), the small types that carry them, and how nodes
//! join (token, messages, the TLS verifier used before trust is established).

pub mod catalog;
mod cidr;
pub mod join;
pub mod quantity;
pub mod tls;

pub use catalog::ResourceDef;
pub use cidr::{Cidr, CidrError, CidrList};

/// Where a server or agent keeps its state.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/shoal";
/// The YAML file read for flags not given on the command line or in the environment.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/shoal/config.yaml";
/// The Kubernetes API port.
pub const DEFAULT_HTTPS_PORT: u16 = 6443;
/// The range pod IPs come from (each node gets a /24 of it; a dual-stack cluster's
/// `--cluster-cidr` adds an IPv6 range, of which each node gets a /64).
pub const DEFAULT_CLUSTER_CIDR: &str = "10.42.0.0/16";
/// The range Service cluster IPs come from.
pub const DEFAULT_SERVICE_CIDR: &str = "10.43.0.0/16";
/// The cluster DNS Service's address.
pub const DEFAULT_CLUSTER_DNS: &str = "10.43.0.10";
/// The cluster's DNS domain.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// The prefix of every environment variable that sets a flag (`SHOAL_DATA_DIR`, …).
pub const ENV_PREFIX: &str = "SHOAL_";

/// The version string `shoal version` reports, and the Kubernetes version the API speaks.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const KUBERNETES_VERSION: &str = "v1.33.0";
