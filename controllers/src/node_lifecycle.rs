//! Node health and what follows from it, after kube-controller-manager's
//! `pkg/controller/nodelifecycle` (node monitoring, condition taints, NoExecute tainting
//! with per-zone rate limits and disruption modes), `pkg/controller/tainteviction` (deleting
//! pods that do not tolerate a node's NoExecute taints) and `pkg/controller/podgc`.
//!
//! [`plan`] takes every node, the node Leases (namespace `kube-node-lease`), every pod and
//! `now`, and returns what to write, in this order:
//! 1. [`NodeStatusUpdate`]s: a node whose kubelet has neither renewed its Lease nor posted
//!    a Ready heartbeat within the grace period gets `Ready`, `MemoryPressure`,
//!    `DiskPressure` and `PIDPressure` set to `Unknown` (`NodeStatusUnknown`, "Kubelet
//!    stopped posting node status.").
//! 2. [`NodeTaintUpdate`]s: condition taints with effect NoSchedule (`not-ready`,
//!    `unreachable`, `memory-pressure`, `disk-pressure`, `pid-pressure`,
//!    `network-unavailable`) and `unschedulable` for a cordoned node; and the NoExecute
//!    taints `not-ready` (Ready False) or `unreachable` (Ready Unknown), added at most one
//!    per zone per `1 / eviction_rate` seconds and removed when the node is Ready again.
//! 3. [`PodReadyUpdate`]s: pods still reported Ready on a node that stopped being Ready
//!    (`MarkPodsNotReady`), so endpoints drop them.
//! 4. [`PodDeletion`]s: pods on a node with a NoExecute taint they do not tolerate (now) or
//!    tolerate for `tolerationSeconds` (when that has passed since the taint was added);
//!    pods bound to a node that no longer exists; terminating pods on a node that is not
//!    Ready and carries `node.kubernetes.io/out-of-service`; terminating pods never
//!    scheduled; and the oldest terminated pods past `terminated_pod_gc_threshold`.
//! 5. `requeue_after`: the next moment something above becomes due.
//!
//! The loop watches Nodes, Leases in `kube-node-lease` and Pods, and also runs the plan
//! periodically (Kubernetes monitors every 5s). It executes the steps in order and stops a
//! sync at the first failure, so pods are never evicted for a taint that was not written.
//!
//! Kubernetes keeps in memory when it last saw each heartbeat and when it started counting
//! each pod's toleration; a pure planner reads the timestamps themselves instead (the
//! Lease's `renewTime`, the condition's `lastHeartbeatTime`, the taint's `timeAdded`). That
//! trusts the kubelets' clocks to be roughly right, as the Lease-based leader election
//! already does.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, PodCondition, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::pod_state;
use crate::time::{duration_from_nanos, nanos, truncate_to_second};

pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
pub const TAINT_MEMORY_PRESSURE: &str = "node.kubernetes.io/memory-pressure";
pub const TAINT_DISK_PRESSURE: &str = "node.kubernetes.io/disk-pressure";
pub const TAINT_PID_PRESSURE: &str = "node.kubernetes.io/pid-pressure";
pub const TAINT_NETWORK_UNAVAILABLE: &str = "node.kubernetes.io/network-unavailable";
pub const TAINT_OUT_OF_SERVICE: &str = "node.kubernetes.io/out-of-service";
pub const NO_EXECUTE: &str = "NoExecute";
pub const NO_SCHEDULE: &str = "NoSchedule";
/// Nodes with this label do not count towards their zone's disruption state.
pub const EXCLUDE_DISRUPTION_LABEL: &str = "node.kubernetes.io/exclude-disruption";
/// The namespace of the kubelets' Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
const REGION_LABEL: &str = "topology.kubernetes.io/region";
const BETA_ZONE_LABEL: &str = "failure-domain.beta.kubernetes.io/zone";
const BETA_REGION_LABEL: &str = "failure-domain.beta.kubernetes.io/region";

/// The condition types the controller turns to `Unknown` for a silent node; it leaves
/// `NetworkUnavailable` alone, as that one is owned by the network plugin.
const MONITORED_CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// The knobs of kube-controller-manager's node lifecycle and pod GC controllers.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeLifecycleConfig {
    /// `--node-monitor-grace-period`: silence tolerated from a node that posted status.
    /// Kubernetes 1.32 raised the default from 40s to 50s.
    pub grace_period: Duration,
    /// Silence tolerated from a node that never posted a Ready condition.
    pub startup_grace_period: Duration,
    /// `--node-eviction-rate`: NoExecute taints added per second in a healthy zone (and,
    /// unless every zone is down, in a fully disrupted one).
    pub eviction_rate: f64,
    /// `--secondary-node-eviction-rate`: the rate in a partially disrupted zone larger than
    /// `large_cluster_threshold` nodes (smaller ones stop tainting).
    pub secondary_eviction_rate: f64,
    /// `--large-cluster-size-threshold`.
    pub large_cluster_threshold: usize,
    /// `--unhealthy-zone-threshold`: the share of not-Ready nodes (with at least three)
    /// that makes a zone partially disrupted.
    pub unhealthy_zone_threshold: f64,
    /// How long a pod bound to an unknown node is given before it counts as orphaned
    /// (PodGC's quarantine: the node may just not be in the cache yet).
    pub orphan_quarantine: Duration,
    /// `--terminated-pod-gc-threshold` (0 disables).
    pub terminated_pod_gc_threshold: usize,
}

impl Default for NodeLifecycleConfig {
    fn default() -> Self {
        NodeLifecycleConfig {
            grace_period: Duration::from_secs(50),
            startup_grace_period: Duration::from_secs(60),
            eviction_rate: 0.1,
            secondary_eviction_rate: 0.01,
            large_cluster_threshold: 50,
            unhealthy_zone_threshold: 0.55,
            orphan_quarantine: Duration::from_secs(40),
            terminated_pod_gc_threshold: 12500,
        }
    }
}

/// A node's new conditions. The loop writes them to the status subresource with
/// [`NodeStatusUpdate::merge_patch`] (which carries the observed `uid` and
/// `resourceVersion`, so a concurrent kubelet update wins and the next sync re-decides).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeStatusUpdate {
    pub name: String,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    /// The node's complete condition list after the change.
    pub conditions: Vec<NodeCondition>,
}

impl NodeStatusUpdate {
    pub fn merge_patch(&self) -> serde_json::Value {
        let mut patch = serde_json::json!({"status": {"conditions": self.conditions}});
        patch["metadata"] = precondition(self.uid.as_deref(), self.resource_version.as_deref());
        patch
    }
}

fn precondition(uid: Option<&str>, resource_version: Option<&str>) -> serde_json::Value {
    let mut metadata = serde_json::Map::new();
    if let Some(uid) = uid {
        metadata.insert("uid".into(), uid.into());
    }
    if let Some(version) = resource_version {
        metadata.insert("resourceVersion".into(), version.into());
    }
    serde_json::Value::Object(metadata)
}

/// Taints to add and remove on a node, as Kubernetes' `SwapNodeControllerTaint`: the loop
/// reads the node, applies [`NodeTaintUpdate::apply`] to its current taints and writes
/// them with that read's `resourceVersion`, retrying on conflict, so that taints others
/// changed meanwhile are kept.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeTaintUpdate {
    pub name: String,
    pub uid: Option<String>,
    /// Taints to add or replace (same key and effect), `timeAdded` set.
    pub add: Vec<Taint>,
    /// Taints to remove (by key and effect).
    pub remove: Vec<Taint>,
    /// The observed taints with the change applied.
    pub taints: Vec<Taint>,
}

impl NodeTaintUpdate {
    /// The change applied to `current`: removals, then additions replacing a taint with
    /// the same key and effect in place or appended.
    pub fn apply(&self, current: &[Taint]) -> Vec<Taint> {
        apply_taint_change(current, &self.add, &self.remove)
    }
}

fn same_taint(a: &Taint, b: &Taint) -> bool {
    a.key == b.key && a.effect == b.effect
}

fn apply_taint_change(current: &[Taint], add: &[Taint], remove: &[Taint]) -> Vec<Taint> {
    let mut taints: Vec<Taint> = current
        .iter()
        .filter(|t| !remove.iter().any(|r| same_taint(r, t)))
        .cloned()
        .collect();
    for taint in add {
        match taints.iter_mut().find(|t| same_taint(t, taint)) {
            Some(slot) => *slot = taint.clone(),
            None => taints.push(taint.clone()),
        }
    }
    taints
}

/// A pod whose Ready condition the controller sets to False (its node stopped being
/// Ready). The loop writes `conditions` to the status subresource with
/// [`PodReadyUpdate::merge_patch`] and records a `NodeNotReady` warning event on the pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodReadyUpdate {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub conditions: Vec<PodCondition>,
}

impl PodReadyUpdate {
    pub fn merge_patch(&self) -> serde_json::Value {
        let mut patch = serde_json::json!({"status": {"conditions": self.conditions}});
        patch["metadata"] = precondition(self.uid.as_deref(), self.resource_version.as_deref());
        patch
    }
}

/// Why a pod is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeletionCause {
    /// A NoExecute taint it does not tolerate (any more).
    TaintEviction,
    /// Bound to a node that no longer exists (PodGC).
    OrphanedNode,
    /// Terminating on a node that is not Ready and marked out of service (PodGC).
    OutOfService,
    /// Terminating without ever being scheduled (PodGC).
    UnscheduledTerminating,
    /// One of the oldest terminated pods past the threshold (PodGC).
    TerminatedOverThreshold,
}

/// An event to record on the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEvent {
    pub type_: String,
    pub reason: String,
    pub message: String,
}

/// A pod to delete. The loop, in order: if `disruption_condition` is set or `mark_failed`,
/// patches the pod's status (adding the condition; phase `Failed` when `mark_failed`);
/// deletes it with a `uid` precondition and `grace_period_seconds` (`Some(0)` forces, as
/// PodGC does; `None` uses the pod's own); records `event` if any.
#[derive(Debug, Clone, PartialEq)]
pub struct PodDeletion {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub cause: DeletionCause,
    pub grace_period_seconds: Option<i64>,
    pub disruption_condition: Option<PodCondition>,
    pub mark_failed: bool,
    pub event: Option<PodEvent>,
}

/// What one node lifecycle sync writes; see the module docs for the order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeLifecyclePlan {
    pub node_status: Vec<NodeStatusUpdate>,
    pub node_taints: Vec<NodeTaintUpdate>,
    pub pods_not_ready: Vec<PodReadyUpdate>,
    pub pod_deletions: Vec<PodDeletion>,
    /// Plan again then, even if nothing changes.
    pub requeue_after: Option<Duration>,
}

impl NodeLifecyclePlan {
    /// True when the plan writes nothing.
    pub fn is_noop(&self) -> bool {
        self.node_status.is_empty()
            && self.node_taints.is_empty()
            && self.pods_not_ready.is_empty()
            && self.pod_deletions.is_empty()
    }
}

fn taint(key: &str, effect: &str, now: &Time) -> Taint {
    Taint {
        key: key.to_string(),
        effect: effect.to_string(),
        value: None,
        time_added: Some(now.clone()),
    }
}

/// `nodeConditionToTaintKeyStatusMap`: which condition status means which NoSchedule taint.
fn condition_taint(type_: &str, status: &str) -> Option<&'static str> {
    match (type_, status) {
        ("Ready", "False") => Some(TAINT_NOT_READY),
        ("Ready", "Unknown") => Some(TAINT_UNREACHABLE),
        ("MemoryPressure", "True") => Some(TAINT_MEMORY_PRESSURE),
        ("DiskPressure", "True") => Some(TAINT_DISK_PRESSURE),
        ("NetworkUnavailable", "True") => Some(TAINT_NETWORK_UNAVAILABLE),
        ("PIDPressure", "True") => Some(TAINT_PID_PRESSURE),
        _ => None,
    }
}

fn is_condition_taint_key(key: &str) -> bool {
    [
        TAINT_NOT_READY,
        TAINT_UNREACHABLE,
        TAINT_MEMORY_PRESSURE,
        TAINT_DISK_PRESSURE,
        TAINT_NETWORK_UNAVAILABLE,
        TAINT_PID_PRESSURE,
    ]
    .contains(&key)
}

/// `nodetopology.GetZoneKey`: region and zone (GA labels, else the beta ones).
fn zone_key(node: &Node) -> String {
    let labels = node.metadata.labels.as_ref();
    let get = |ga: &str, beta: &str| {
        labels
            .and_then(|l| l.get(ga).or_else(|| l.get(beta)))
            .cloned()
            .unwrap_or_default()
    };
    let region = get(REGION_LABEL, BETA_REGION_LABEL);
    let zone = get(ZONE_LABEL, BETA_ZONE_LABEL);
    if region.is_empty() && zone.is_empty() {
        String::new()
    } else {
        format!("{region}:\u{0}:{zone}")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ZoneState {
    Normal,
    PartialDisruption,
    FullDisruption,
}

/// Earliest of several optional deadlines, as a duration from now.
#[derive(Default)]
struct Requeue(Option<Duration>);

impl Requeue {
    fn at(&mut self, deadline_nanos: i128, now: &Time) {
        let after = duration_from_nanos(deadline_nanos - nanos(now));
        self.0 = Some(self.0.map_or(after, |d| d.min(after)));
    }
}

fn duration_nanos(d: Duration) -> i128 {
    i128::try_from(d.as_nanos()).unwrap_or(i128::MAX / 4)
}

/// One node as this sync sees it.
struct NodeView<'a> {
    node: &'a Node,
    name: String,
    conditions: Vec<NodeCondition>,
    zone: String,
    excluded: bool,
}

impl NodeView<'_> {
    fn ready(&self) -> Option<&NodeCondition> {
        self.conditions.iter().find(|c| c.type_ == "Ready")
    }
    fn ready_status(&self) -> Option<&str> {
        self.ready().map(|c| c.status.as_str())
    }
    fn taints(&self) -> &[Taint] {
        self.node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or(&[])
    }
}

/// `tryUpdateNodeHealth`: the node's conditions after this sync, and whether they changed.
fn node_health(
    node: &Node,
    lease: Option<&Lease>,
    now: &Time,
    config: &NodeLifecycleConfig,
    requeue: &mut Requeue,
) -> (Vec<NodeCondition>, bool) {
    let mut conditions = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let ready = conditions.iter().find(|c| c.type_ == "Ready");
    let grace = if ready.is_some() {
        config.grace_period
    } else {
        config.startup_grace_period
    };
    let lease_renewed = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0.as_nanosecond());
    let heartbeat = ready
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(nanos);
    let created = node.metadata.creation_timestamp.as_ref().map(nanos);
    // The latest sign of life; a node that never posted Ready counts from its creation.
    let probe = [
        lease_renewed,
        heartbeat,
        ready.is_none().then_some(created).flatten(),
    ]
    .into_iter()
    .flatten()
    .max()
    .or(created);
    let Some(probe) = probe else {
        return (conditions, false);
    };
    let deadline = probe + duration_nanos(grace);
    if nanos(now) <= deadline {
        // Kubernetes requires `now` strictly after the deadline; times are whole seconds.
        requeue.at(deadline + 1_000_000_000, now);
        return (conditions, false);
    }
    let mut changed = false;
    for type_ in MONITORED_CONDITIONS {
        match conditions.iter_mut().find(|c| c.type_ == type_) {
            None => {
                conditions.push(NodeCondition {
                    type_: type_.to_string(),
                    status: "Unknown".to_string(),
                    reason: Some("NodeStatusNeverUpdated".to_string()),
                    message: Some("Kubelet never posted node status.".to_string()),
                    last_heartbeat_time: node.metadata.creation_timestamp.clone(),
                    last_transition_time: Some(now.clone()),
                });
                changed = true;
            }
            Some(condition) if condition.status != "Unknown" => {
                condition.status = "Unknown".to_string();
                condition.reason = Some("NodeStatusUnknown".to_string());
                condition.message = Some("Kubelet stopped posting node status.".to_string());
                condition.last_transition_time = Some(now.clone());
                changed = true;
            }
            Some(_) => {}
        }
    }
    (conditions, changed)
}

/// `ComputeZoneState` over the zone's Ready conditions (`None` counts as not Ready).
fn zone_state(ready: &[Option<&str>], threshold: f64) -> ZoneState {
    let ready_count = ready.iter().filter(|s| **s == Some("True")).count();
    let not_ready = ready.len() - ready_count;
    if ready_count == 0 && not_ready > 0 {
        ZoneState::FullDisruption
    } else if not_ready > 2 && (not_ready as f64) / (ready.len() as f64) >= threshold {
        ZoneState::PartialDisruption
    } else {
        ZoneState::Normal
    }
}

/// `setLimiterInZone`: the tainting rate for a zone of `size` nodes in `state`.
fn zone_rate(state: ZoneState, size: usize, config: &NodeLifecycleConfig) -> f64 {
    match state {
        ZoneState::Normal | ZoneState::FullDisruption => config.eviction_rate,
        ZoneState::PartialDisruption if size > config.large_cluster_threshold => {
            config.secondary_eviction_rate
        }
        ZoneState::PartialDisruption => 0.0,
    }
}

fn is_controller_no_execute(t: &Taint) -> bool {
    t.effect == NO_EXECUTE && (t.key == TAINT_NOT_READY || t.key == TAINT_UNREACHABLE)
}

/// Plans one node lifecycle sync. `leases` are the Leases of `kube-node-lease` (one per
/// node, named after it); `pods` are all pods.
pub fn plan(
    nodes: &[Node],
    leases: &[Lease],
    pods: &[Pod],
    now: &Time,
    config: &NodeLifecycleConfig,
) -> NodeLifecyclePlan {
    let nodes: Vec<&Node> = nodes.iter().collect();
    let leases: Vec<&Lease> = leases.iter().collect();
    let pods: Vec<&Pod> = pods.iter().collect();
    plan_refs(&nodes, &leases, &pods, now, config)
}

/// [`plan`] over borrowed objects: the controller plans over its caches' shared objects
/// without copying every node and pod each sync.
pub fn plan_refs(
    nodes: &[&Node],
    leases: &[&Lease],
    pods: &[&Pod],
    now: &Time,
    config: &NodeLifecycleConfig,
) -> NodeLifecyclePlan {
    let now = truncate_to_second(now);
    let mut result = NodeLifecyclePlan::default();
    let mut requeue = Requeue::default();
    let leases: BTreeMap<&str, &Lease> = leases
        .iter()
        .copied()
        .filter(|l| {
            l.metadata
                .namespace
                .as_deref()
                .unwrap_or(NODE_LEASE_NAMESPACE)
                == NODE_LEASE_NAMESPACE
        })
        .filter_map(|l| Some((l.metadata.name.as_deref()?, l)))
        .collect();

    // 1. Health.
    let mut views: Vec<NodeView<'_>> = Vec::new();
    for &node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        let (conditions, changed) = node_health(
            node,
            leases.get(name.as_str()).copied(),
            &now,
            config,
            &mut requeue,
        );
        if changed {
            result.node_status.push(NodeStatusUpdate {
                name: name.clone(),
                uid: node.metadata.uid.clone(),
                resource_version: node.metadata.resource_version.clone(),
                conditions: conditions.clone(),
            });
        }
        let excluded = node
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(EXCLUDE_DISRUPTION_LABEL));
        views.push(NodeView {
            node,
            name,
            conditions,
            zone: zone_key(node),
            excluded,
        });
    }

    // 2. Zone states (`handleDisruption`).
    let mut zones: BTreeMap<&str, Vec<Option<&str>>> = BTreeMap::new();
    for view in views.iter().filter(|v| !v.excluded) {
        zones
            .entry(view.zone.as_str())
            .or_default()
            .push(view.ready_status());
    }
    let zone_states: BTreeMap<&str, (ZoneState, usize)> = zones
        .iter()
        .map(|(zone, ready)| {
            (
                *zone,
                (
                    zone_state(ready, config.unhealthy_zone_threshold),
                    ready.len(),
                ),
            )
        })
        .collect();
    // Every zone down looks like the control plane's own network trouble: Kubernetes
    // stops NoExecute tainting and lifts the taints it set.
    let all_disrupted = !zone_states.is_empty()
        && zone_states
            .values()
            .all(|(s, _)| *s == ZoneState::FullDisruption);

    // 3. Taints: the desired list per node, NoExecute candidates waiting for the limiter.
    let mut desired: Vec<Vec<Taint>> = Vec::new();
    let mut waiting: BTreeMap<&str, Vec<(i128, usize, &'static str)>> = BTreeMap::new();
    for (index, view) in views.iter().enumerate() {
        let observed = view.taints();
        // TaintNodesByCondition: NoSchedule taints mirror the conditions and cordon.
        let mut wanted: BTreeSet<&str> = view
            .conditions
            .iter()
            .filter_map(|c| condition_taint(&c.type_, &c.status))
            .collect();
        if view
            .node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
        {
            wanted.insert(TAINT_UNSCHEDULABLE);
        }
        let mut taints: Vec<Taint> = observed
            .iter()
            .filter(|t| {
                let ours = t.effect == NO_SCHEDULE
                    && (t.key == TAINT_UNSCHEDULABLE || is_condition_taint_key(&t.key));
                !ours || wanted.contains(t.key.as_str())
            })
            .cloned()
            .collect();
        for key in wanted {
            if !taints
                .iter()
                .any(|t| t.key == key && t.effect == NO_SCHEDULE)
            {
                taints.push(taint(key, NO_SCHEDULE, &now));
            }
        }

        // Taint-based eviction: NoExecute mirrors Ready, rate-limited when added afresh.
        let has = |key: &str, taints: &[Taint]| {
            taints
                .iter()
                .any(|t| t.key == key && t.effect == NO_EXECUTE)
        };
        let swap = |taints: &mut Vec<Taint>, add: &str, remove: &str| {
            *taints = apply_taint_change(
                taints,
                &[taint(add, NO_EXECUTE, &now)],
                &[taint(remove, NO_EXECUTE, &now)],
            );
        };
        match (all_disrupted, view.ready_status()) {
            (true, _) | (false, Some("True")) => taints.retain(|t| !is_controller_no_execute(t)),
            (false, Some("False")) => {
                if has(TAINT_UNREACHABLE, &taints) {
                    swap(&mut taints, TAINT_NOT_READY, TAINT_UNREACHABLE);
                } else if !has(TAINT_NOT_READY, &taints) {
                    let since = view.ready().and_then(|c| c.last_transition_time.as_ref());
                    waiting.entry(view.zone.as_str()).or_default().push((
                        since.map(nanos).unwrap_or(0),
                        index,
                        TAINT_NOT_READY,
                    ));
                }
            }
            (false, Some(_)) => {
                if has(TAINT_NOT_READY, &taints) {
                    swap(&mut taints, TAINT_UNREACHABLE, TAINT_NOT_READY);
                } else if !has(TAINT_UNREACHABLE, &taints) {
                    let since = view.ready().and_then(|c| c.last_transition_time.as_ref());
                    waiting.entry(view.zone.as_str()).or_default().push((
                        since.map(nanos).unwrap_or(0),
                        index,
                        TAINT_UNREACHABLE,
                    ));
                }
            }
            // No Ready condition yet: still within the startup grace period.
            (false, None) => {}
        }
        desired.push(taints);
    }

    // The per-zone limiter: a token bucket of one, refilled at the zone's rate. Its last
    // use is read off the newest controller NoExecute taint in the zone.
    for (zone, mut candidates) in waiting {
        let (state, size) = zone_states
            .get(zone)
            .copied()
            .unwrap_or((ZoneState::Normal, 0));
        let rate = zone_rate(state, size, config);
        if rate <= 0.0 {
            continue;
        }
        let interval = duration_nanos(Duration::from_secs_f64(1.0 / rate));
        let last = views
            .iter()
            .filter(|v| v.zone == zone)
            .flat_map(|v| v.taints().iter())
            .filter(|t| is_controller_no_execute(t))
            .filter_map(|t| t.time_added.as_ref().map(nanos))
            .max();
        candidates.sort();
        let next_slot = last.map_or(i128::MIN, |l| l + interval);
        if nanos(&now) >= next_slot {
            let (_, index, key) = candidates[0];
            if let Some(taints) = desired.get_mut(index) {
                let opposite = if key == TAINT_NOT_READY {
                    TAINT_UNREACHABLE
                } else {
                    TAINT_NOT_READY
                };
                *taints = apply_taint_change(
                    taints,
                    &[taint(key, NO_EXECUTE, &now)],
                    &[taint(opposite, NO_EXECUTE, &now)],
                );
            }
            if candidates.len() > 1 {
                requeue.at(nanos(&now) + interval, &now);
            }
        } else {
            requeue.at(next_slot, &now);
        }
    }

    for (view, taints) in views.iter().zip(&desired) {
        let observed = view.taints();
        let add: Vec<Taint> = taints
            .iter()
            .filter(|t| !observed.iter().any(|o| same_taint(o, t)))
            .cloned()
            .collect();
        let remove: Vec<Taint> = observed
            .iter()
            .filter(|o| !taints.iter().any(|t| same_taint(o, t)))
            .cloned()
            .collect();
        if !add.is_empty() || !remove.is_empty() {
            result.node_taints.push(NodeTaintUpdate {
                name: view.name.clone(),
                uid: view.node.metadata.uid.clone(),
                add,
                remove,
                taints: taints.clone(),
            });
        }
    }

    let by_name: BTreeMap<&str, (&NodeView<'_>, &[Taint])> = views
        .iter()
        .zip(&desired)
        .map(|(v, t)| (v.name.as_str(), (v, t.as_slice())))
        .collect();

    // 4. MarkPodsNotReady.
    for &pod in pods {
        let Some((view, _)) = pod_node(pod).and_then(|n| by_name.get(n)) else {
            continue;
        };
        if let Some(update) = mark_not_ready(pod, view, &now) {
            result.pods_not_ready.push(update);
        }
    }

    // 5. Deletions: PodGC first (forced), then taint eviction; one deletion per pod.
    let mut deleted: BTreeSet<(String, String)> = BTreeSet::new();
    let mut delete = |result: &mut NodeLifecyclePlan, deletion: PodDeletion| {
        if deleted.insert((deletion.namespace.clone(), deletion.name.clone())) {
            result.pod_deletions.push(deletion);
        }
    };
    for &pod in pods {
        let terminating = pod.metadata.deletion_timestamp.is_some();
        match pod_node(pod) {
            None if terminating => delete(
                &mut result,
                gc_deletion(pod, DeletionCause::UnscheduledTerminating, None),
            ),
            None => {}
            Some(node) => match by_name.get(node) {
                None => {
                    let bound = bound_time(pod).unwrap_or_else(|| nanos(&now));
                    let quarantine_over = bound + duration_nanos(config.orphan_quarantine);
                    if nanos(&now) >= quarantine_over {
                        delete(
                            &mut result,
                            gc_deletion(
                                pod,
                                DeletionCause::OrphanedNode,
                                Some(disruption_condition(
                                    "DeletionByPodGC",
                                    "PodGC: node no longer exists",
                                    &now,
                                )),
                            ),
                        );
                    } else {
                        requeue.at(quarantine_over, &now);
                    }
                }
                Some((view, taints)) => {
                    let out_of_service = view.ready_status() != Some("True")
                        && taints.iter().any(|t| t.key == TAINT_OUT_OF_SERVICE);
                    if terminating && out_of_service {
                        delete(
                            &mut result,
                            gc_deletion(
                                pod,
                                DeletionCause::OutOfService,
                                Some(disruption_condition(
                                    "DeletionByPodGC",
                                    "PodGC: node is out-of-service",
                                    &now,
                                )),
                            ),
                        );
                    } else if !terminating {
                        if let Some(deletion) = taint_eviction(pod, taints, &now, &mut requeue) {
                            delete(&mut result, deletion);
                        }
                    }
                }
            },
        }
    }
    if config.terminated_pod_gc_threshold > 0 {
        let mut terminated: Vec<&Pod> = pods
            .iter()
            .copied()
            .filter(|p| pod_state::is_terminal(p))
            .collect();
        if terminated.len() > config.terminated_pod_gc_threshold {
            // Evicted pods first, then the oldest (`byEvictionAndCreationTimestamp`).
            terminated.sort_by_key(|p| {
                let evicted = p.status.as_ref().is_some_and(|s| {
                    s.phase.as_deref() == Some("Failed") && s.reason.as_deref() == Some("Evicted")
                });
                (
                    !evicted,
                    p.metadata.creation_timestamp.as_ref().map(nanos),
                    p.metadata.name.clone(),
                )
            });
            let excess = terminated.len() - config.terminated_pod_gc_threshold;
            for pod in terminated.into_iter().take(excess) {
                delete(
                    &mut result,
                    gc_deletion(pod, DeletionCause::TerminatedOverThreshold, None),
                );
            }
        }
    }

    result.requeue_after = requeue.0;
    result
}

fn pod_node(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// When the pod landed on its node: its PodScheduled transition, else its creation.
fn bound_time(pod: &Pod) -> Option<i128> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| {
            c.iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "True")
        })
        .and_then(|c| c.last_transition_time.as_ref())
        .or(pod.metadata.creation_timestamp.as_ref())
        .map(nanos)
}

fn disruption_condition(reason: &str, message: &str, now: &Time) -> PodCondition {
    PodCondition {
        type_: "DisruptionTarget".to_string(),
        status: "True".to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_transition_time: Some(now.clone()),
        ..PodCondition::default()
    }
}

fn pod_key(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

/// PodGC's `markFailedAndDeletePodWithCondition`: phase Failed unless already terminal,
/// the condition if any, then a forced delete.
fn gc_deletion(pod: &Pod, cause: DeletionCause, condition: Option<PodCondition>) -> PodDeletion {
    let (namespace, name) = pod_key(pod);
    PodDeletion {
        namespace,
        name,
        uid: pod.metadata.uid.clone(),
        cause,
        grace_period_seconds: Some(0),
        disruption_condition: condition,
        mark_failed: !pod_state::is_terminal(pod),
        event: None,
    }
}

/// `MarkPodsNotReady`, level-triggered: a pod reported Ready since before its node stopped
/// being Ready gets Ready False. (Kubernetes acts on the node's transition; comparing the
/// two transition times does the same without memory, and leaves alone a pod the kubelet
/// reported Ready again afterwards.)
fn mark_not_ready(pod: &Pod, view: &NodeView<'_>, now: &Time) -> Option<PodReadyUpdate> {
    let node_ready = view.ready()?;
    if node_ready.status == "True" {
        return None;
    }
    let pod_ready = pod_state::ready_condition(pod).filter(|c| c.status == "True")?;
    let node_since = node_ready.last_transition_time.as_ref().map(nanos);
    let pod_since = pod_ready.last_transition_time.as_ref().map(nanos);
    if let (Some(node_since), Some(pod_since)) = (node_since, pod_since) {
        if pod_since > node_since {
            return None;
        }
    }
    let mut conditions = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    for condition in conditions.iter_mut().filter(|c| c.type_ == "Ready") {
        condition.status = "False".to_string();
        condition.last_transition_time = Some(now.clone());
    }
    let (namespace, name) = pod_key(pod);
    Some(PodReadyUpdate {
        namespace,
        name,
        uid: pod.metadata.uid.clone(),
        resource_version: pod.metadata.resource_version.clone(),
        conditions,
    })
}

/// `Toleration.ToleratesTaint`.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or("");
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("") {
        "" | "Equal" => {
            toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        "Exists" => true,
        _ => false,
    }
}

/// The taint manager's `processPodOnNode` for a pod on a node with `taints` (as written by
/// this plan): delete now when a NoExecute taint is not tolerated; when all are, the
/// shortest `tolerationSeconds` among the tolerations used counts from when the pod was
/// first exposed to the taints (the oldest taint's `timeAdded`, or the pod's binding if it
/// came later); no `tolerationSeconds` means forever.
fn taint_eviction(
    pod: &Pod,
    taints: &[Taint],
    now: &Time,
    requeue: &mut Requeue,
) -> Option<PodDeletion> {
    let no_execute: Vec<&Taint> = taints.iter().filter(|t| t.effect == NO_EXECUTE).collect();
    if no_execute.is_empty() {
        return None;
    }
    let tolerations: &[Toleration] = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or(&[]);
    let mut min_seconds: Option<i64> = None;
    let mut all_tolerated = true;
    for taint in &no_execute {
        // `GetMatchingTolerations` takes the first toleration matching each taint.
        match tolerations.iter().find(|t| tolerates(t, taint)) {
            None => {
                all_tolerated = false;
                break;
            }
            Some(toleration) => {
                if let Some(seconds) = toleration.toleration_seconds {
                    let seconds = seconds.max(0);
                    min_seconds = Some(min_seconds.map_or(seconds, |m| m.min(seconds)));
                }
            }
        }
    }
    let due = if !all_tolerated {
        true
    } else {
        let seconds = min_seconds?;
        let exposed = no_execute
            .iter()
            .filter_map(|t| t.time_added.as_ref().map(nanos))
            .min();
        let start = match (exposed, bound_time(pod)) {
            (Some(e), Some(b)) => e.max(b),
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => nanos(now),
        };
        let deadline = start + i128::from(seconds) * 1_000_000_000;
        if nanos(now) >= deadline {
            true
        } else {
            requeue.at(deadline, now);
            false
        }
    };
    if !due {
        return None;
    }
    let (namespace, name) = pod_key(pod);
    Some(PodDeletion {
        event: Some(PodEvent {
            type_: "Normal".to_string(),
            reason: "TaintManagerEviction".to_string(),
            message: format!("Marking for deletion Pod {namespace}/{name}"),
        }),
        namespace,
        name,
        uid: pod.metadata.uid.clone(),
        cause: DeletionCause::TaintEviction,
        grace_period_seconds: None,
        disruption_condition: Some(disruption_condition(
            "DeletionByTaintManager",
            "Taint manager: deleting due to NoExecute taint",
            now,
        )),
        mark_failed: false,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::{at, lease, node, pod, time};

    /// A node in `zone` whose Ready condition is `ready` since `since`, last heartbeat at
    /// `heartbeat`, with `taints`.
    fn a_node(
        name: &str,
        ready: &str,
        since: i64,
        heartbeat: i64,
        taints: serde_json::Value,
    ) -> Node {
        node(serde_json::json!({
            "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": "5",
                "creationTimestamp": at(0),
                "labels": {"topology.kubernetes.io/zone": "z1"}},
            "spec": {"taints": taints},
            "status": {"conditions": [
                {"type": "Ready", "status": ready, "reason": "KubeletReady",
                 "lastHeartbeatTime": at(heartbeat), "lastTransitionTime": at(since)},
                {"type": "MemoryPressure", "status": "False",
                 "lastHeartbeatTime": at(heartbeat), "lastTransitionTime": at(0)},
                {"type": "DiskPressure", "status": "False",
                 "lastHeartbeatTime": at(heartbeat), "lastTransitionTime": at(0)},
                {"type": "PIDPressure", "status": "False",
                 "lastHeartbeatTime": at(heartbeat), "lastTransitionTime": at(0)},
                {"type": "NetworkUnavailable", "status": "False",
                 "lastHeartbeatTime": at(heartbeat), "lastTransitionTime": at(0)}
            ]}
        }))
    }

    fn healthy(name: &str, now: i64) -> Node {
        a_node(name, "True", 0, now, serde_json::json!([]))
    }

    fn node_lease(name: &str, renewed: i64) -> Lease {
        lease(serde_json::json!({
            "metadata": {"name": name, "namespace": NODE_LEASE_NAMESPACE},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40,
                "renewTime": format!("{}", k8s_openapi::jiff::Timestamp::from_second(renewed).unwrap())}
        }))
    }

    /// A running, ready pod bound to `node` at `bound`, with `tolerations`.
    fn pod_on(name: &str, node: &str, bound: i64, tolerations: serde_json::Value) -> Pod {
        pod(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                "resourceVersion": "9", "creationTimestamp": at(bound - 1)},
            "spec": {"nodeName": node, "containers": [], "tolerations": tolerations},
            "status": {"phase": "Running", "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": at(bound)},
                {"type": "Ready", "status": "True", "lastTransitionTime": at(bound + 1)}
            ]}
        }))
    }

    /// The tolerations the DefaultTolerationSeconds admission plugin adds (300s).
    fn default_tolerations(seconds: i64) -> serde_json::Value {
        serde_json::json!([
            {"key": TAINT_NOT_READY, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds},
            {"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}
        ])
    }

    fn keys(update: &NodeTaintUpdate) -> Vec<(String, String)> {
        update
            .taints
            .iter()
            .map(|t| (t.key.clone(), t.effect.clone()))
            .collect()
    }

    fn pair(key: &str, effect: &str) -> (String, String) {
        (key.to_string(), effect.to_string())
    }

    fn config() -> NodeLifecycleConfig {
        NodeLifecycleConfig::default()
    }

    #[test]
    fn expired_lease_turns_conditions_unknown_taints_and_evicts() {
        let now = 100;
        let nodes = vec![
            healthy("n1", now),
            healthy("n3", now),
            // Last heartbeat long ago, but the Lease keeps it alive.
            a_node("n4", "True", 0, 10, serde_json::json!([])),
            a_node(
                "n2",
                "True",
                0,
                40,
                serde_json::json!([{"key": "team", "value": "a", "effect": "NoSchedule"}]),
            ),
        ];
        let leases = vec![
            node_lease("n1", now),
            node_lease("n2", 45),
            node_lease("n3", now),
            node_lease("n4", 99),
        ];
        let pods = vec![
            pod_on("intolerant", "n2", 20, serde_json::json!([])),
            pod_on("patient", "n2", 20, default_tolerations(300)),
            pod_on("elsewhere", "n1", 20, serde_json::json!([])),
        ];
        let plan = plan(&nodes, &leases, &pods, &time(now), &config());

        assert_eq!(plan.node_status.len(), 1);
        let status = &plan.node_status[0];
        assert_eq!(status.name, "n2");
        assert_eq!(status.resource_version.as_deref(), Some("5"));
        for type_ in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
            let c = status.conditions.iter().find(|c| c.type_ == type_).unwrap();
            assert_eq!(c.status, "Unknown", "{type_}");
            assert_eq!(c.reason.as_deref(), Some("NodeStatusUnknown"));
            assert_eq!(
                c.message.as_deref(),
                Some("Kubelet stopped posting node status.")
            );
            assert_eq!(c.last_transition_time, Some(time(now)));
            assert_eq!(c.last_heartbeat_time, Some(time(40)));
        }
        let network = status
            .conditions
            .iter()
            .find(|c| c.type_ == "NetworkUnavailable")
            .unwrap();
        assert_eq!(network.status, "False");

        assert_eq!(plan.node_taints.len(), 1);
        let taints = &plan.node_taints[0];
        assert_eq!(taints.name, "n2");
        assert_eq!(
            keys(taints),
            [
                pair("team", NO_SCHEDULE),
                pair(TAINT_UNREACHABLE, NO_SCHEDULE),
                pair(TAINT_UNREACHABLE, NO_EXECUTE)
            ]
        );
        assert!(taints.add.iter().all(|t| t.time_added == Some(time(now))));
        assert!(taints.remove.is_empty());

        // The pod without tolerations goes now; the tolerating one in 300s.
        assert_eq!(plan.pod_deletions.len(), 1);
        let deletion = &plan.pod_deletions[0];
        assert_eq!(deletion.name, "intolerant");
        assert_eq!(deletion.cause, DeletionCause::TaintEviction);
        assert_eq!(deletion.grace_period_seconds, None);
        let event = deletion.event.as_ref().unwrap();
        assert_eq!(event.reason, "TaintManagerEviction");
        assert_eq!(event.message, "Marking for deletion Pod default/intolerant");
        let condition = deletion.disruption_condition.as_ref().unwrap();
        assert_eq!(condition.type_, "DisruptionTarget");
        assert_eq!(condition.reason.as_deref(), Some("DeletionByTaintManager"));

        // Both pods on n2 were Ready before the node went silent: marked not ready.
        let not_ready: Vec<&str> = plan
            .pods_not_ready
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(not_ready, ["intolerant", "patient"]);
        let ready = plan.pods_not_ready[1]
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "False");
        // Next: n4's grace (Lease renewed at 99, +50s, +1s past the boundary).
        assert_eq!(plan.requeue_after, Some(Duration::from_secs(50)));
    }

    #[test]
    fn within_grace_nothing_happens_and_the_boundary_is_requeued() {
        let nodes = vec![
            healthy("n1", 100),
            a_node("n2", "True", 0, 60, serde_json::json!([])),
        ];
        let leases = vec![node_lease("n1", 100), node_lease("n2", 60)];
        // n2: last seen at 60, grace 50 → still fine at 110 (not strictly past).
        let plan = plan(&nodes, &leases, &[], &time(110), &config());
        assert!(plan.is_noop(), "{plan:?}");
        assert_eq!(plan.requeue_after, Some(Duration::from_secs(1)));
        let later = super::plan(&nodes, &leases, &[], &time(111), &config());
        assert_eq!(later.node_status.len(), 1);
    }

    #[test]
    fn toleration_seconds_count_from_the_taint_and_requeue_exactly() {
        let unreachable = serde_json::json!([
            {"key": TAINT_UNREACHABLE, "effect": "NoSchedule", "timeAdded": at(200)},
            {"key": TAINT_UNREACHABLE, "effect": "NoExecute", "timeAdded": at(200)}
        ]);
        let down = a_node("n2", "Unknown", 200, 100, unreachable);
        let nodes = vec![healthy("n1", 220), healthy("n3", 220), down];
        let leases = vec![node_lease("n1", 220), node_lease("n3", 220)];
        let pods = vec![
            pod_on("early", "n2", 10, default_tolerations(60)),
            // Bound after the taint: its count starts at its binding.
            pod_on("late", "n2", 230, default_tolerations(60)),
            pod_on(
                "forever",
                "n2",
                10,
                serde_json::json!([
                    {"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}
                ]),
            ),
            pod_on(
                "everything",
                "n2",
                10,
                serde_json::json!([{"operator": "Exists"}]),
            ),
            pod_on("zero", "n2", 10, default_tolerations(0)),
        ];
        let at_220 = plan(&nodes, &leases, &pods, &time(220), &config());
        let names = |p: &NodeLifecyclePlan| -> Vec<String> {
            p.pod_deletions.iter().map(|d| d.name.clone()).collect()
        };
        assert_eq!(names(&at_220), ["zero"]);
        assert!(at_220.node_taints.is_empty());
        // early is due at 200 + 60.
        assert_eq!(at_220.requeue_after, Some(Duration::from_secs(40)));

        let leases = vec![node_lease("n1", 260), node_lease("n3", 260)];
        let nodes = vec![healthy("n1", 260), healthy("n3", 260), nodes[2].clone()];
        let at_260 = plan(&nodes, &leases, &pods, &time(260), &config());
        assert_eq!(names(&at_260), ["early", "zero"]);
        // late is due at 230 + 60.
        assert_eq!(at_260.requeue_after, Some(Duration::from_secs(30)));

        // A pod already terminating is left to finish.
        let mut terminating = pods[0].clone();
        terminating.metadata.deletion_timestamp = Some(time(250));
        let skip = plan(&nodes, &leases, &[terminating], &time(260), &config());
        assert!(skip.pod_deletions.is_empty());
    }

    #[test]
    fn recovered_node_loses_its_taints_and_keeps_others() {
        let tainted = serde_json::json!([
            {"key": "dedicated", "value": "gpu", "effect": "NoExecute"},
            {"key": TAINT_UNREACHABLE, "effect": "NoSchedule", "timeAdded": at(50)},
            {"key": TAINT_UNREACHABLE, "effect": "NoExecute", "timeAdded": at(50)}
        ]);
        let back = a_node("n2", "True", 95, 100, tainted);
        let nodes = vec![healthy("n1", 100), back];
        let leases = vec![node_lease("n1", 100), node_lease("n2", 100)];
        let pods = vec![pod_on(
            "gpu-job",
            "n2",
            96,
            serde_json::json!([
                {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoExecute"}
            ]),
        )];
        let plan = plan(&nodes, &leases, &pods, &time(100), &config());
        assert!(plan.node_status.is_empty());
        assert_eq!(plan.node_taints.len(), 1);
        let update = &plan.node_taints[0];
        assert_eq!(keys(update), [pair("dedicated", NO_EXECUTE)]);
        assert_eq!(update.remove.len(), 2);
        assert!(update.add.is_empty());
        assert!(plan.pod_deletions.is_empty());
        assert!(plan.pods_not_ready.is_empty());

        // apply() works on the node as re-read: a taint added meanwhile survives.
        let mut current = nodes[1].spec.clone().unwrap().taints.unwrap();
        current.push(taint("other", NO_SCHEDULE, &time(99)));
        let applied: Vec<String> = update.apply(&current).into_iter().map(|t| t.key).collect();
        assert_eq!(applied, ["dedicated", "other"]);
    }

    #[test]
    fn not_ready_node_gets_not_ready_taints_and_swaps_from_unreachable_at_once() {
        let nodes = vec![
            healthy("n1", 100),
            healthy("n3", 100),
            a_node("n2", "False", 90, 100, serde_json::json!([])),
        ];
        let leases = vec![
            node_lease("n1", 100),
            node_lease("n2", 100),
            node_lease("n3", 100),
        ];
        let plan = plan(&nodes, &leases, &[], &time(100), &config());
        assert!(plan.node_status.is_empty());
        assert_eq!(
            keys(&plan.node_taints[0]),
            [
                pair(TAINT_NOT_READY, NO_SCHEDULE),
                pair(TAINT_NOT_READY, NO_EXECUTE)
            ]
        );

        // Already unreachable-tainted (and the zone's limiter just used): swapped anyway.
        let swapped = a_node(
            "n2",
            "False",
            90,
            100,
            serde_json::json!([
                {"key": TAINT_UNREACHABLE, "effect": "NoSchedule", "timeAdded": at(99)},
                {"key": TAINT_UNREACHABLE, "effect": "NoExecute", "timeAdded": at(99)}
            ]),
        );
        let nodes = vec![healthy("n1", 100), healthy("n3", 100), swapped];
        let plan = super::plan(&nodes, &leases, &[], &time(100), &config());
        let update = &plan.node_taints[0];
        assert_eq!(
            keys(update),
            [
                pair(TAINT_NOT_READY, NO_SCHEDULE),
                pair(TAINT_NOT_READY, NO_EXECUTE)
            ]
        );
        assert_eq!(update.remove.len(), 2);
    }

    #[test]
    fn cordoned_node_gets_the_unschedulable_taint_until_uncordoned() {
        let mut cordoned = healthy("n1", 100);
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        let leases = vec![node_lease("n1", 100)];
        let plan = plan(
            std::slice::from_ref(&cordoned),
            &leases,
            &[],
            &time(100),
            &config(),
        );
        assert_eq!(
            keys(&plan.node_taints[0]),
            [pair(TAINT_UNSCHEDULABLE, NO_SCHEDULE)]
        );
        assert_eq!(plan.node_taints[0].add[0].time_added, Some(time(100)));

        cordoned.spec.as_mut().unwrap().taints = Some(plan.node_taints[0].taints.clone());
        assert!(super::plan(
            std::slice::from_ref(&cordoned),
            &leases,
            &[],
            &time(101),
            &config()
        )
        .is_noop());

        cordoned.spec.as_mut().unwrap().unschedulable = None;
        let uncordon = super::plan(&[cordoned], &leases, &[], &time(102), &config());
        assert!(uncordon.node_taints[0].taints.is_empty());
    }

    #[test]
    fn no_execute_tainting_is_rate_limited_per_zone() {
        let mut nodes: Vec<Node> = (1..=5).map(|i| healthy(&format!("ok{i}"), 100)).collect();
        nodes.push(a_node("late", "Unknown", 95, 10, serde_json::json!([])));
        nodes.push(a_node("early", "Unknown", 90, 10, serde_json::json!([])));
        let leases: Vec<Lease> = (1..=5)
            .map(|i| node_lease(&format!("ok{i}"), 100))
            .collect();
        let plan = plan(&nodes, &leases, &[], &time(100), &config());
        let by_node: BTreeMap<&str, Vec<(String, String)>> = plan
            .node_taints
            .iter()
            .map(|u| (u.name.as_str(), keys(u)))
            .collect();
        // Both get NoSchedule; only the earlier one NoExecute, the next in 1/0.1 = 10s.
        assert_eq!(
            by_node["early"],
            [
                pair(TAINT_UNREACHABLE, NO_SCHEDULE),
                pair(TAINT_UNREACHABLE, NO_EXECUTE)
            ]
        );
        assert_eq!(by_node["late"], [pair(TAINT_UNREACHABLE, NO_SCHEDULE)]);
        assert_eq!(plan.requeue_after, Some(Duration::from_secs(10)));

        // 4s after the first taint the limiter is still empty: 6s to go.
        let with_first = |time_added: i64| {
            let mut nodes = nodes.clone();
            let early = nodes
                .iter_mut()
                .find(|n| n.metadata.name.as_deref() == Some("early"))
                .unwrap();
            early.spec.as_mut().unwrap().taints = Some(vec![
                taint(TAINT_UNREACHABLE, NO_SCHEDULE, &time(time_added)),
                taint(TAINT_UNREACHABLE, NO_EXECUTE, &time(time_added)),
            ]);
            nodes
        };
        let waiting = super::plan(&with_first(96), &leases, &[], &time(100), &config());
        let late = waiting
            .node_taints
            .iter()
            .find(|u| u.name == "late")
            .unwrap();
        assert_eq!(keys(late), [pair(TAINT_UNREACHABLE, NO_SCHEDULE)]);
        assert_eq!(waiting.requeue_after, Some(Duration::from_secs(6)));
        let go = super::plan(&with_first(90), &leases, &[], &time(100), &config());
        let late = go.node_taints.iter().find(|u| u.name == "late").unwrap();
        assert!(keys(late).contains(&pair(TAINT_UNREACHABLE, NO_EXECUTE)));
    }

    #[test]
    fn disruption_modes_hold_back_no_execute_taints() {
        // Every node of every zone down: no NoExecute taints, and those set are lifted.
        let tainted = serde_json::json!([
            {"key": TAINT_UNREACHABLE, "effect": "NoSchedule", "timeAdded": at(50)},
            {"key": TAINT_UNREACHABLE, "effect": "NoExecute", "timeAdded": at(50)}
        ]);
        let nodes = vec![
            a_node("n1", "Unknown", 50, 10, tainted),
            a_node("n2", "True", 0, 10, serde_json::json!([])),
        ];
        let pods = vec![pod_on("p", "n2", 5, serde_json::json!([]))];
        let plan = plan(&nodes, &[], &pods, &time(100), &config());
        let by_node: BTreeMap<&str, Vec<(String, String)>> = plan
            .node_taints
            .iter()
            .map(|u| (u.name.as_str(), keys(u)))
            .collect();
        assert_eq!(by_node["n1"], [pair(TAINT_UNREACHABLE, NO_SCHEDULE)]);
        assert_eq!(by_node["n2"], [pair(TAINT_UNREACHABLE, NO_SCHEDULE)]);
        assert!(plan.pod_deletions.is_empty());

        // A small zone mostly down (3 of 4) is partially disrupted: tainting stops.
        let mut nodes: Vec<Node> = (1..=3)
            .map(|i| {
                a_node(
                    &format!("down{i}"),
                    "Unknown",
                    50,
                    10,
                    serde_json::json!([]),
                )
            })
            .collect();
        nodes.push(healthy("up", 100));
        let leases = vec![node_lease("up", 100)];
        let plan = super::plan(&nodes, &leases, &[], &time(100), &config());
        assert!(plan
            .node_taints
            .iter()
            .all(|u| u.taints.iter().all(|t| t.effect != NO_EXECUTE)));
    }

    #[test]
    fn node_that_never_posted_status_gets_startup_grace() {
        let fresh = node(serde_json::json!({
            "metadata": {"name": "new", "uid": "uid-new", "creationTimestamp": at(30)}
        }));
        let others = vec![healthy("n1", 100), healthy("n3", 100), fresh];
        let leases = vec![node_lease("n1", 100), node_lease("n3", 100)];
        let early = plan(&others, &leases, &[], &time(80), &config());
        assert!(early.is_noop());
        // 30 + 60 + 1.
        assert_eq!(early.requeue_after, Some(Duration::from_secs(11)));
        let late = plan(&others, &leases, &[], &time(100), &config());
        let status = &late.node_status[0];
        assert_eq!(status.conditions.len(), 4);
        let ready = &status.conditions[0];
        assert_eq!(
            (ready.type_.as_str(), ready.status.as_str()),
            ("Ready", "Unknown")
        );
        assert_eq!(ready.reason.as_deref(), Some("NodeStatusNeverUpdated"));
        assert_eq!(
            ready.message.as_deref(),
            Some("Kubelet never posted node status.")
        );
        assert_eq!(ready.last_heartbeat_time, Some(time(30)));
        assert!(keys(&late.node_taints[0]).contains(&pair(TAINT_UNREACHABLE, NO_EXECUTE)));
    }

    #[test]
    fn pod_gc_force_deletes_orphans_out_of_service_unscheduled_and_excess_terminated() {
        let out_of_service = a_node(
            "oos",
            "Unknown",
            50,
            10,
            serde_json::json!([
                {"key": TAINT_UNREACHABLE, "effect": "NoSchedule", "timeAdded": at(50)},
                {"key": TAINT_UNREACHABLE, "effect": "NoExecute", "timeAdded": at(50)},
                {"key": TAINT_OUT_OF_SERVICE, "value": "nodeshutdown", "effect": "NoExecute"}
            ]),
        );
        let nodes = vec![healthy("n1", 100), healthy("n3", 100), out_of_service];
        let leases = vec![node_lease("n1", 100), node_lease("n3", 100)];
        let mut stuck = pod_on(
            "stuck",
            "oos",
            5,
            serde_json::json!([{"operator": "Exists"}]),
        );
        stuck.metadata.deletion_timestamp = Some(time(60));
        let mut unscheduled = pod(serde_json::json!({
            "metadata": {"name": "unscheduled", "namespace": "default", "uid": "u"},
            "spec": {"containers": []}
        }));
        unscheduled.metadata.deletion_timestamp = Some(time(90));
        let terminated = |name: &str, created: i64, reason: Option<&str>| {
            let mut p = pod_on(name, "n1", created + 1, serde_json::json!([]));
            let status = p.status.as_mut().unwrap();
            status.phase = Some("Failed".into());
            status.reason = reason.map(str::to_string);
            p
        };
        let pods = vec![
            pod_on("orphan", "vanished", 10, serde_json::json!([])),
            pod_on("new-orphan", "vanished", 80, serde_json::json!([])),
            stuck,
            unscheduled,
            pod_on(
                "waiting",
                "oos",
                5,
                serde_json::json!([{"operator": "Exists"}]),
            ),
            terminated("old", 1, None),
            terminated("evicted", 50, Some("Evicted")),
            terminated("newer", 20, None),
        ];
        let config = NodeLifecycleConfig {
            terminated_pod_gc_threshold: 1,
            ..config()
        };
        let plan = plan(&nodes, &leases, &pods, &time(100), &config);
        let deletions: Vec<(&str, DeletionCause)> = plan
            .pod_deletions
            .iter()
            .map(|d| (d.name.as_str(), d.cause))
            .collect();
        assert_eq!(
            deletions,
            [
                ("orphan", DeletionCause::OrphanedNode),
                ("stuck", DeletionCause::OutOfService),
                ("unscheduled", DeletionCause::UnscheduledTerminating),
                ("evicted", DeletionCause::TerminatedOverThreshold),
                ("old", DeletionCause::TerminatedOverThreshold),
            ]
        );
        let orphan = &plan.pod_deletions[0];
        assert_eq!(orphan.grace_period_seconds, Some(0));
        assert!(orphan.mark_failed);
        assert_eq!(
            orphan
                .disruption_condition
                .as_ref()
                .unwrap()
                .reason
                .as_deref(),
            Some("DeletionByPodGC")
        );
        assert!(!plan.pod_deletions[3].mark_failed);
        // new-orphan's node may just be missing from the cache: quarantined until 80 + 40.
        assert_eq!(plan.requeue_after, Some(Duration::from_secs(20)));
    }

    #[test]
    fn pods_that_turned_ready_after_the_node_failed_are_left_alone() {
        let nodes = vec![
            healthy("n1", 100),
            healthy("n3", 100),
            a_node(
                "n2",
                "False",
                50,
                100,
                serde_json::json!([
                    {"key": TAINT_NOT_READY, "effect": "NoSchedule", "timeAdded": at(50)},
                    {"key": TAINT_NOT_READY, "effect": "NoExecute", "timeAdded": at(50)}
                ]),
            ),
        ];
        let leases = vec![
            node_lease("n1", 100),
            node_lease("n2", 100),
            node_lease("n3", 100),
        ];
        let tolerant = serde_json::json!([{"operator": "Exists"}]);
        let pods = vec![
            pod_on("stale", "n2", 10, tolerant.clone()),
            pod_on("fresh", "n2", 70, tolerant),
        ];
        let plan = plan(&nodes, &leases, &pods, &time(100), &config());
        let names: Vec<&str> = plan
            .pods_not_ready
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, ["stale"]);
        let patch = plan.pods_not_ready[0].merge_patch();
        assert_eq!(patch["metadata"]["resourceVersion"], "9");
        assert_eq!(patch["status"]["conditions"][1]["status"], "False");
    }

    #[test]
    fn tolerations_match_like_kubernetes() {
        let t = |json: serde_json::Value| -> Toleration { serde_json::from_value(json).unwrap() };
        let unreachable = taint(TAINT_UNREACHABLE, NO_EXECUTE, &time(0));
        let valued = Taint {
            value: Some("gpu".into()),
            ..taint("dedicated", NO_EXECUTE, &time(0))
        };
        assert!(tolerates(
            &t(serde_json::json!({"operator": "Exists"})),
            &unreachable
        ));
        assert!(tolerates(
            &t(serde_json::json!({"key": TAINT_UNREACHABLE, "operator": "Exists"})),
            &unreachable
        ));
        assert!(!tolerates(
            &t(
                serde_json::json!({"key": TAINT_UNREACHABLE, "operator": "Exists", "effect": "NoSchedule"})
            ),
            &unreachable
        ));
        assert!(tolerates(
            &t(serde_json::json!({"key": "dedicated", "value": "gpu"})),
            &valued
        ));
        assert!(!tolerates(
            &t(serde_json::json!({"key": "dedicated", "value": "cpu"})),
            &valued
        ));
        assert!(!tolerates(
            &t(serde_json::json!({"key": "dedicated", "operator": "Lt", "value": "gpu"})),
            &valued
        ));
    }
}
