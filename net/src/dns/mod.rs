//! Cluster DNS, built in (NodeLocal-DNSCache style: no DNS pods). Every node's agent puts the
//! cluster DNS address on a dummy interface (`shoal-dns`, [`iface`]) and serves port 53 on it
//! over UDP and TCP ([`server`]) from an [`records::Index`] of the cluster's Services and
//! EndpointSlices, kept current by watches ([`run`]); names outside the cluster domain go to
//! the node's own resolvers ([`forward`]). Pods reach the address through their default route
//! (bridge gateway, then the node's local delivery).

pub mod cache;
pub mod forward;
pub mod iface;
pub mod records;
pub mod run;
pub mod server;

use std::net::SocketAddr;

pub use records::{Index, Outcome, ZoneConfig};
pub use run::{run, DnsSettings};

/// Why the node's DNS service stopped.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error(transparent)]
    Interface(#[from] iface::InterfaceError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the watch on {0} ended")]
    WatchEnded(&'static str),
}
