//! The node agent: a kubelet on containerd's CRI. [`containerd`] runs and supervises the
//! agent's own containerd, [`cri`] talks to it, [`images`] builds the pause image and imports
//! archives, [`registries`] reads `registries.yaml`, [`kubelet`] registers the Node and runs its
//! pods, [`overlay`] keeps the VXLAN overlay to the other nodes, [`pause`] is the sandbox process,
//! [`join`] and [`server_lb`] get a joining node its credentials and keep it talking to a live server. [`simulated`] holds kwok-style simulated nodes that
//! speak the kubelet's side of the API without running anything.

pub mod containerd;
pub mod cri;
pub mod images;
pub mod join;
pub mod kubelet;
pub mod node_agent;
pub mod overlay;
pub mod pause;
pub mod registries;
pub mod server_lb;
pub mod simulated;
