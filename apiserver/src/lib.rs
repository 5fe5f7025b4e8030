//! The Kubernetes-compatible REST API over the store (issue: API server). Not built yet: only this crate knows the wire format.
