//! The Service proxy (kube-proxy's role) on nftables: one table of our own, `ip shoal-proxy`,
//! written whole at start (replacing what an earlier run left) and then changed incrementally,
//! one transaction per batch of changed Services.
//!
//! - [`model`] (pure): a Service, its EndpointSlices and this node → the ports to program and
//!   their endpoints.
//! - [`render`] (pure): the model → an nft script, whole or as the difference of two states.
//! - [`nft`]: runs `nft -f -`.
//! - [`run`]: the loop — watches of Services and EndpointSlices, debounced syncs that touch
//!   only the Services that changed.

pub mod model;
pub mod nft;
pub mod render;
pub mod run;

pub use run::{run, ProxyConfig};

/// The proxy's table (family `ip`).
pub const TABLE: &str = "shoal-proxy";
