//! The Kubernetes-compatible REST API over the store. Only this crate knows the wire format.
//!
//! Built so far: the cluster's PKI ([`pki`]) — the CA the server generates on first start, its
//! serving certificate, the admin client certificate, the kubeconfig and the node join token.

pub mod pki;
