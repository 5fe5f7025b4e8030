//! The Service proxy (kube-proxy's role) on nftables: two tables of our own, `ip shoal-proxy`
//! and `ip6 shoal-proxy`, written whole at start (replacing what an earlier run left) and then
//! changed incrementally, one kernel transaction per batch of changed Services.
//!
//! - [`model`] (pure): a Service, its EndpointSlices and this node → the ports to program and
//!   their endpoints, per address family.
//! - [`render`] (pure): the model → a [`ruleset::Transaction`], whole or as the difference of
//!   two states.
//! - [`ruleset`] (pure): the typed vocabulary of the tables, printable as an nft script.
//! - [`wire`] (pure): a transaction as nf_tables netlink messages.
//! - [`netlink`]: sends them (one batch, one transaction) and reads the kernel's answers.
//! - [`nft`]: runs the `nft` binary (listing and checking tables; tests and benchmarks).
//! - [`run`]: the loop — watches of Services and EndpointSlices, debounced syncs that touch
//!   only the Services that changed.

pub mod model;
pub mod netlink;
pub mod nft;
pub mod render;
pub mod ruleset;
pub mod run;
pub mod sock_lb;
pub mod wire;

pub use run::{run, ProxyConfig};

/// The proxy's tables' name (families `ip` and `ip6`).
pub const TABLE: &str = "shoal-proxy";
