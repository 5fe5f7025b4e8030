//! The sidecar-free mesh data plane hosted in the agent. Not built yet.
