//! Shoal's scheduler: the pure decision logic of kube-scheduler's default profile — a
//! [`Snapshot`] of nodes and their pods, the filters, the scores and the explanation for pods
//! that fit nowhere. The decision modules do no I/O and are not async; [`runner`] is the loop
//! around them (watch nodes, pods and namespaces; bind through the `binding` subresource),
//! which feeds the snapshot and acts on the decisions.
//!
//! How a loop uses it:
//!
//! ```no_run
//! use shoal_scheduler::{needs_scheduling, Scheduler, SchedulerConfig, Snapshot, DEFAULT_SCHEDULER_NAME};
//! # let (nodes, bound_pods, pending): (Vec<k8s_openapi::api::core::v1::Node>, Vec<k8s_openapi::api::core::v1::Pod>, Vec<k8s_openapi::api::core::v1::Pod>) = Default::default();
//! let mut snapshot = Snapshot::from_objects(&nodes, &bound_pods);
//! // On watch events: upsert_node / remove_node, upsert_pod / remove_pod,
//! // upsert_namespace / remove_namespace.
//! let mut scheduler = Scheduler::new(SchedulerConfig::default());
//! for pod in pending.iter().filter(|p| needs_scheduling(p, DEFAULT_SCHEDULER_NAME)) {
//!     match scheduler.schedule(&snapshot, pod) {
//!         Ok(placement) => {
//!             snapshot.assume(pod, &placement.node_name);
//!             // POST pods/{name}/binding; if that fails:
//!             // snapshot.remove_pod(namespace, name) and retry the pod later.
//!         }
//!         Err(unschedulable) => {
//!             let _condition = unschedulable.pod_scheduled_condition();
//!             // Write it to the pod's status; retry when nodes or pods change
//!             // (`unschedulable.failed_filters` says which kinds of change can help).
//!         }
//!     }
//! }
//! ```
//!
//! Filters, in kube-scheduler's order: NodeUnschedulable, NodeName, TaintToleration,
//! NodeAffinity, NodePorts, NodeResourcesFit, PodTopologySpread, InterPodAffinity. Scores:
//! TaintToleration ×3, NodeAffinity ×2, NodeResourcesFit (LeastAllocated) ×1,
//! PodTopologySpread ×2 (including default spreading of a controller's replicas),
//! InterPodAffinity ×2, NodeResourcesBalancedAllocation ×1.
//!
//! Where it knowingly differs from kube-scheduler:
//! - No preemption and no nominated nodes; messages never carry the ` preemption: …` suffix.
//! - Not implemented: volume plugins (VolumeRestrictions, NodeVolumeLimits, VolumeBinding,
//!   VolumeZone), DynamicResources, ImageLocality, scheduling profiles and extenders.
//! - A node whose Ready condition is not True gets the `node.kubernetes.io/not-ready`
//!   (False or missing) or `unreachable` (Unknown) NoSchedule taint derived here, since Shoal
//!   has no node lifecycle controller to add it; a node carrying it already is left alone.
//! - Admission-time defaulting Shoal's API server does not do is done here: container
//!   requests default to limits; pod affinity `matchLabelKeys`/`mismatchLabelKeys` are
//!   folded into the label selector.
//! - Default spreading counts pods with the same controller (ReplicaSet,
//!   ReplicationController, StatefulSet) instead of pods matching the owners' and Services'
//!   label selectors.
//! - Namespace labels (for `namespaceSelector`) are only those fed through
//!   [`Snapshot::upsert_namespace`]; other namespaces have none.
//! - A node with no `status.allocatable` at all is read from `status.capacity`.
//! - Quantities are converted per container before summing (a fractional byte rounds up per
//!   container); unparsable or negative quantities count as 0 and are reported as notes
//!   (the API server would have rejected them).
//! - Unschedulable pods are retried on kube-scheduler's queueing hints (`queueing`), with
//!   the hints of PodTopologySpread and InterPodAffinity coarser than upstream's (any label
//!   or taint change of a node with the topology keys, any pod a constraint counts), and a
//!   change on one node is also pre-checked against the node-local filters there
//!   (kube-scheduler's `preCheckForNode`, which upstream applies only with hints off). An
//!   idle loop takes pods still backing off (upstream's `SchedulerPopFromBackoffQ`). Pods
//!   that fit nowhere are flushed back every 60 s rather than after 5 minutes each.
//! - Filters run on one thread; with more than 100 nodes the sampled nodes
//!   (`percentageOfNodesToScore`) can differ from kube-scheduler's parallel search, and ties
//!   are broken by a seeded generator instead of `math/rand`.

mod affinity;
mod eligibility;
mod explain;
mod filters;
mod node_info;
mod node_selector;
mod pod_index;
mod pod_info;
mod queueing;
pub use shoal_common::quantity;
mod resources;
pub mod runner;
mod scheduler;
mod scores;
mod selector;
mod snapshot;
mod spread;
// Shared with the DaemonSet controller, whose crate this one depends on.
pub(crate) use shoal_controllers::taints;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod tests;

pub use eligibility::{is_scheduling_gated, needs_scheduling, DEFAULT_SCHEDULER_NAME};
pub use explain::{
    scheduling_gated_condition, Unschedulable, NO_NODES_AVAILABLE, REASON_SCHEDULING_GATED,
    REASON_UNSCHEDULABLE,
};
pub use filters::FilterKind;
pub use quantity::QuantityError;
pub use scheduler::{Placement, Scheduler, SchedulerConfig};
pub use snapshot::{NodeUpsert, NodeUsageSummary, Snapshot};
