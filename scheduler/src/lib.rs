//! Shoal's scheduler: the pure decision logic of kube-scheduler's default profile — a
//! [`Snapshot`] of nodes and their pods, the filters, the scores and the explanation for pods
//! that fit nowhere. No I/O and no async: the loop around it (watch nodes and pods, bind
//! through the `binding` subresource) feeds the snapshot and acts on the decisions.
//!
//! How a loop uses it:
//!
//! ```no_run
//! use shoal_scheduler::{needs_scheduling, Scheduler, SchedulerConfig, Snapshot, DEFAULT_SCHEDULER_NAME};
//! # let (nodes, bound_pods, pending): (Vec<k8s_openapi::api::core::v1::Node>, Vec<k8s_openapi::api::core::v1::Pod>, Vec<k8s_openapi::api::core::v1::Pod>) = Default::default();
//! let mut snapshot = Snapshot::from_objects(&nodes, &bound_pods);
//! // On watch events: snapshot.upsert_node / remove_node / upsert_pod / remove_pod /
//! // upsert_namespace.
//! let mut scheduler = Scheduler::new(SchedulerConfig::default());
//! for pod in pending.iter().filter(|p| needs_scheduling(p, DEFAULT_SCHEDULER_NAME)) {
//!     match scheduler.schedule(&snapshot, pod) {
//!         Ok(placement) => {
//!             snapshot.assume(pod, &placement.node_name);
//!             // POST pods/{name}/binding; on failure:
//!             // snapshot.remove_pod(namespace, name) and retry later.
//!         }
//!         Err(unschedulable) => {
//!             let _condition = unschedulable.pod_scheduled_condition();
//!             // Write it to the pod's status; retry when nodes or pods change.
//!         }
//!     }
//! }
//! ```

mod affinity;
mod eligibility;
mod explain;
mod filters;
mod node_info;
mod node_selector;
mod pod_index;
mod pod_info;
pub mod quantity;
mod resources;
mod scheduler;
mod scores;
mod selector;
mod snapshot;
mod spread;
mod taints;

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
pub use snapshot::{NodeUsageSummary, Snapshot};
