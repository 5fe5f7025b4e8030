//! The Kubernetes-compatible REST API over the store. Only this crate knows the wire format.
//!
//! Built so far: the cluster's PKI ([`pki`]) — the CA the server generates on first start, its
//! serving certificate, the admin client certificate, the kubeconfig and the node join token —
//! and the HTTPS listener ([`server`]) with client-certificate authentication ([`auth`]),
//! `metav1.Status` errors ([`status`]), `/version` and the health endpoints ([`routes`]).

pub mod allocator;
pub mod auth;
pub mod convert;
pub mod crd;
pub mod defaults;
pub mod discovery;
pub mod in_process;
pub mod join;
pub mod managed_fields;
pub mod node_proxy;
pub mod objects;
pub mod openapi;
pub mod patch;
pub mod pki;
pub mod protobuf;
pub mod rest;
pub mod routes;
pub mod schema;
pub mod sealed_bootstrap;
pub mod selectors;
pub mod server;
pub mod service_account;
pub mod status;
pub mod table;
pub mod typed;
pub mod watch;
