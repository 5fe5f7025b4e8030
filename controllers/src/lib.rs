//! Shoal's controllers, after kube-controller-manager's: the decision logic of each one, the
//! loops that run it over the kube-rs client, and the leader election that makes only one
//! server run them.
//!
//! Every decision is pure: a function takes the observed objects and `now` and returns a
//! typed plan (objects to create, scale, patch or delete; status to write; when to sync
//! again). No clock, no IO, no client: the loops that watch the API, call these planners and
//! execute their plans stay thin.
//!
//! Modules:
//! - [`selector`]: label selector matching.
//! - [`owner`]: ownerReferences and the adopt/release decision.
//! - [`pod_state`]: pod active/ready/available and the scale-down order.
//! - [`replicaset`]: the ReplicaSet controller's plan.
//! - [`deployment`]: the Deployment controller's plan.
//! - [`revision`]: ControllerRevision helpers shared by DaemonSets and StatefulSets.
//! - [`daemonset`]: the DaemonSet controller's plan.
//! - [`statefulset`]: the StatefulSet controller's plan.
//! - [`job`]: the Job controller's plan (and the TTL-after-finished deletion).
//! - [`cronjob`]: the CronJob controller's plan and its cron schedule parser.
//! - [`endpoints`]: the Endpoints controller's plan.
//! - [`endpointslice`]: the EndpointSlice controller's plan.
//! - [`node_lifecycle`]: node health, condition taints, taint-based eviction and pod GC.
//! - [`garbage`]: the garbage collector's plan over ownerReferences.
//! - [`service_account`]: the `default` ServiceAccount of every namespace.
//! - [`service_lb`]: LoadBalancer Services get the ready nodes' addresses (k3s's ServiceLB).
//! - [`root_ca`]: the `kube-root-ca.crt` ConfigMap of every namespace.
//! - [`leader`]: leader election over a coordination.k8s.io Lease.
//! - [`events`]: recording core/v1 Events.
//! - [`run`]: the loops — shared watch caches, one kube-runtime Controller per kind, plan
//!   execution.

pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod endpointslice;
pub mod events;
pub mod garbage;
pub mod job;
pub mod leader;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod owner;
pub mod pod_state;
pub mod replicaset;
pub mod revision;
pub mod root_ca;
pub mod run;
pub mod selector;
pub mod service_account;
pub mod service_lb;
pub mod statefulset;
pub mod taints;
mod time;

#[cfg(test)]
mod testing;
