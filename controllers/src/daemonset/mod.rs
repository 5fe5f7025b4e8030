//! The DaemonSet controller's decisions (kube-controller-manager's `pkg/controller/daemon`):
//! one pod on every eligible node, rolled to new templates by `RollingUpdate` (within
//! `maxUnavailable`, or surging up to `maxSurge`) or left for the user under `OnDelete`,
//! with the template history kept as ControllerRevisions, and the status
//! `kubectl rollout status ds` reads.
//!
//! [`plan`] follows `syncDaemonSet`: claim pods and revisions, construct the history (the
//! current revision is the template's hash), `manage` (create pods on nodes lacking one,
//! delete surplus, misplaced, failed and succeeded pods), then, when `manage` had nothing
//! to do, `rollingUpdate`, then clean up history and compute the status.
//!
//! As in Kubernetes a daemon pod is not bound by the controller: it is created with the
//! required node affinity `metadata.name In [<node>]` and the scheduler binds it.
//!
//! Failed pods are recreated with backoff. Kubernetes keeps that backoff in the
//! controller's memory; a pure planner has none, so the count of consecutive failures on a
//! node travels on the replacement pod ([`FAILURE_COUNT_ANNOTATION`]) and a failed pod is
//! deleted (and replaced, in the same plan) only once it has been failed for
//! `min(1s · 2^count, 15m)`. The count starts again after a pod that lived longer than
//! twice the longest delay, as Kubernetes' backoff entries expire.

mod node;
mod update;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::deployment::{compute_hash, scaled_value, IntOrPercentError, PlannedEvent};
use crate::owner::{self, Claim, OwnerRefChange};
use crate::pod_state;
use crate::replicaset::{nonzero, PodToDelete, BURST_REPLICAS};
use crate::revision::{self, PodLabelPatch, RevisionNumberUpdate, RevisionToDelete};
use crate::selector::{Selector, SelectorError};
use crate::time::{duration_from_nanos, nanos, truncate_to_second};

pub use node::{
    add_daemon_tolerations, fits_node_affinity, replace_node_name_affinity, should_run,
    target_node_name, NodeVerdict,
};
pub use revision::CONTROLLER_REVISION_HASH_LABEL;

/// The label carrying the template generation a pod was created from.
pub const POD_TEMPLATE_GENERATION_LABEL: &str = "pod-template-generation";

/// The annotation the API server keeps on a DaemonSet with the generation its template
/// last changed at (`deprecated.daemonset.template.generation`).
pub const TEMPLATE_GENERATION_ANNOTATION: &str = "deprecated.daemonset.template.generation";

/// Consecutive failed daemon pods on a node, carried by the replacement pod (see the module
/// docs).
pub const FAILURE_COUNT_ANNOTATION: &str = "daemonset.shoal.dev/failure-count";

/// Failed-pod backoff: first delay and cap (`failedPodsBackoff` in kube-controller-manager).
pub const FAILED_POD_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
pub const FAILED_POD_BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);

/// apps/v1 default for `revisionHistoryLimit`.
pub const DEFAULT_REVISION_HISTORY_LIMIT: i32 = 10;

/// Event reasons, as Kubernetes records them.
pub const SELECTING_ALL_REASON: &str = "SelectingAll";
pub const FAILED_DAEMON_POD_REASON: &str = "FailedDaemonPod";
pub const SUCCEEDED_DAEMON_POD_REASON: &str = "SucceededDaemonPod";

/// The DaemonSet cannot be reconciled as written; the loop reports it as an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DaemonSetError {
    #[error("daemon set has no spec")]
    MissingSpec,
    #[error("invalid selector: {0}")]
    Selector(#[from] SelectorError),
    #[error("unexpected daemon set update strategy type: {0}")]
    UnknownStrategy(String),
    #[error(transparent)]
    IntOrPercent(#[from] IntOrPercentError),
}

/// The update strategy, apps/v1 defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    RollingUpdate {
        max_unavailable: IntOrString,
        max_surge: IntOrString,
    },
    OnDelete,
}

impl Strategy {
    fn resolve(ds: &DaemonSet) -> Result<Strategy, DaemonSetError> {
        let strategy = ds.spec.as_ref().and_then(|s| s.update_strategy.as_ref());
        match strategy.and_then(|s| s.type_.as_deref()) {
            None | Some("RollingUpdate") => {
                let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
                let max_unavailable = rolling
                    .and_then(|r| r.max_unavailable.clone())
                    .unwrap_or(IntOrString::Int(1));
                let max_surge = rolling
                    .and_then(|r| r.max_surge.clone())
                    .unwrap_or(IntOrString::Int(0));
                // Reject a malformed percentage now rather than in the middle of a sync.
                scaled_value(&max_unavailable, 1, true)?;
                scaled_value(&max_surge, 1, true)?;
                Ok(Strategy::RollingUpdate {
                    max_unavailable,
                    max_surge,
                })
            }
            Some("OnDelete") => Ok(Strategy::OnDelete),
            Some(other) => Err(DaemonSetError::UnknownStrategy(other.to_string())),
        }
    }

    /// `SurgeCount` (rounded up; 0 for OnDelete).
    fn surge(&self, desired: i32) -> i32 {
        match self {
            Strategy::RollingUpdate { max_surge, .. } => {
                scaled_value(max_surge, desired, true).unwrap_or(0)
            }
            Strategy::OnDelete => 0,
        }
    }

    /// `UnavailableCount` (rounded up; 0 for OnDelete).
    fn unavailable(&self, desired: i32) -> i32 {
        match self {
            Strategy::RollingUpdate {
                max_unavailable, ..
            } => scaled_value(max_unavailable, desired, true).unwrap_or(0),
            Strategy::OnDelete => 0,
        }
    }

    /// `AllowsSurge`: a rolling update whose surge is not 0.
    fn allows_surge(&self) -> bool {
        self.surge(1) != 0
    }
}

/// What one DaemonSet sync should do. The loop executes it in field order and stops at the
/// first failure (the next sync re-plans from what then exists):
/// 1. `adopt_pods` / `release_pods`, `adopt_revisions` / `release_revisions`:
///    ownerReference patches;
/// 2. `create_revision` (fixed name: AlreadyExists means a stale cache, requeue; a real
///    hash collision is seen by the next plan, which bumps `collisionCount`), then
///    `update_revisions` (revision number bumps) and `relabel_pods` (pods of a duplicate
///    revision moved to the kept one);
/// 3. `delete_pods` (uid precondition), then `create_pods` in
///    [`crate::replicaset::slow_start_batches`], recording `SuccessfulDelete` /
///    `SuccessfulCreate` events as the ReplicaSet loop does; the loop keeps expectations
///    for both so it does not re-plan on a cache that has not seen them;
/// 4. `delete_revisions`;
/// 5. `status` when `status_changed`, through the status subresource;
/// 6. `events`, then sync again after `requeue_after` (if any).
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonSetPlan {
    pub adopt_pods: Vec<OwnerRefChange>,
    pub release_pods: Vec<OwnerRefChange>,
    pub adopt_revisions: Vec<OwnerRefChange>,
    pub release_revisions: Vec<OwnerRefChange>,
    pub create_revision: Option<ControllerRevision>,
    pub update_revisions: Vec<RevisionNumberUpdate>,
    pub relabel_pods: Vec<PodLabelPatch>,
    /// At most [`BURST_REPLICAS`].
    pub delete_pods: Vec<PodToDelete>,
    /// Complete pods (with `generateName`) pinned to their node by node affinity; at most
    /// [`BURST_REPLICAS`].
    pub create_pods: Vec<Pod>,
    pub delete_revisions: Vec<RevisionToDelete>,
    pub status: DaemonSetStatus,
    pub status_changed: bool,
    pub events: Vec<PlannedEvent>,
    pub requeue_after: Option<Duration>,
}

impl DaemonSetPlan {
    fn empty(status: DaemonSetStatus) -> DaemonSetPlan {
        DaemonSetPlan {
            adopt_pods: Vec::new(),
            release_pods: Vec::new(),
            adopt_revisions: Vec::new(),
            release_revisions: Vec::new(),
            create_revision: None,
            update_revisions: Vec::new(),
            relabel_pods: Vec::new(),
            delete_pods: Vec::new(),
            create_pods: Vec::new(),
            delete_revisions: Vec::new(),
            status,
            status_changed: false,
            events: Vec::new(),
            requeue_after: None,
        }
    }

    /// True when the plan writes nothing.
    pub fn is_noop(&self) -> bool {
        self.adopt_pods.is_empty()
            && self.release_pods.is_empty()
            && self.adopt_revisions.is_empty()
            && self.release_revisions.is_empty()
            && self.create_revision.is_none()
            && self.update_revisions.is_empty()
            && self.relabel_pods.is_empty()
            && self.delete_pods.is_empty()
            && self.create_pods.is_empty()
            && self.delete_revisions.is_empty()
            && !self.status_changed
    }
}

/// The controller reference a DaemonSet puts on its pods and revisions.
pub fn controller_ref_for(ds: &DaemonSet) -> OwnerReference {
    owner::controller_ref(
        "apps/v1",
        "DaemonSet",
        ds.metadata.name.as_deref().unwrap_or_default(),
        ds.metadata.uid.as_deref().unwrap_or_default(),
    )
}

/// The generation new pods are labelled with: the API server's template-generation
/// annotation, or (Shoal's API server does not write it) `metadata.generation`, which only
/// ever names a generation whose template equals the current one.
pub fn template_generation(ds: &DaemonSet) -> Option<i64> {
    ds.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TEMPLATE_GENERATION_ANNOTATION))
        .and_then(|v| v.parse().ok())
        .or(ds.metadata.generation)
}

/// `IsPodUpdated`: the pod carries the current hash, or the current template generation.
pub fn is_pod_updated(pod: &Pod, hash: &str, generation: Option<i64>) -> bool {
    let labels = pod.metadata.labels.as_ref();
    let label = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
    let hash_matches = !hash.is_empty() && label(CONTROLLER_REVISION_HASH_LABEL) == Some(hash);
    let generation_matches = generation
        .is_some_and(|g| label(POD_TEMPLATE_GENERATION_LABEL) == Some(g.to_string().as_str()));
    hash_matches || generation_matches
}

/// The daemon pod for `node` (`CreatePodTemplate` + `GetPodFromTemplate`): the template
/// with the default tolerations, the generation and hash labels, `generateName: <ds>-`,
/// the controller reference and the node-name affinity. `failure_count` is recorded for the
/// failed-pod backoff when nonzero.
pub fn new_daemon_pod(ds: &DaemonSet, hash: &str, node: &str, failure_count: u32) -> Pod {
    let template = ds.spec.as_ref().map(|s| &s.template);
    let template_meta = template
        .and_then(|t| t.metadata.clone())
        .unwrap_or_default();
    let mut spec = template.and_then(|t| t.spec.clone()).unwrap_or_default();
    add_daemon_tolerations(&mut spec);
    spec.affinity = Some(replace_node_name_affinity(spec.affinity.take(), node));
    let mut labels = template_meta.labels.unwrap_or_default();
    if let Some(generation) = template_generation(ds) {
        labels.insert(
            POD_TEMPLATE_GENERATION_LABEL.to_string(),
            generation.to_string(),
        );
    }
    if !hash.is_empty() {
        labels.insert(CONTROLLER_REVISION_HASH_LABEL.to_string(), hash.to_string());
    }
    let mut annotations = template_meta.annotations.unwrap_or_default();
    if failure_count > 0 {
        annotations.insert(
            FAILURE_COUNT_ANNOTATION.to_string(),
            failure_count.to_string(),
        );
    }
    let name = ds.metadata.name.as_deref().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: ds.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations).filter(|a| !a.is_empty()),
            finalizers: template_meta.finalizers,
            owner_references: Some(vec![controller_ref_for(ds)]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    }
}

fn pod_name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

fn to_delete(pod: &Pod) -> PodToDelete {
    PodToDelete {
        name: pod_name(pod),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
    }
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn is_bound(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
}

/// `podByCreationTimestampAndPhase`: bound pods first, then oldest, then by name.
fn by_creation_and_phase(a: &&Pod, b: &&Pod) -> std::cmp::Ordering {
    is_bound(b)
        .cmp(&is_bound(a))
        .then_with(|| {
            a.metadata
                .creation_timestamp
                .cmp(&b.metadata.creation_timestamp)
        })
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// When the pod became Failed, as well as the API tells: the latest container finish or
/// condition transition, else its start or creation.
fn failed_at(pod: &Pod) -> Option<i128> {
    let status = pod.status.as_ref()?;
    let finishes = status
        .container_statuses
        .iter()
        .chain(status.init_container_statuses.iter())
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref());
    let transitions = status
        .conditions
        .iter()
        .flatten()
        .filter_map(|c| c.last_transition_time.as_ref());
    finishes
        .chain(transitions)
        .map(nanos)
        .max()
        .or_else(|| status.start_time.as_ref().map(nanos))
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(nanos))
}

fn failure_count(pod: &Pod) -> u32 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(FAILURE_COUNT_ANNOTATION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// For a failed pod: `Ok(count for the replacement)` once its backoff has passed, or
/// `Err(time left)`.
fn failed_pod_backoff(pod: &Pod, now: &Time) -> Result<u32, Duration> {
    const NANOS: i128 = 1_000_000_000;
    let max = i128::from(u32::try_from(FAILED_POD_BACKOFF_MAX.as_secs()).unwrap_or(u32::MAX));
    let Some(failed) = failed_at(pod) else {
        return Ok(1);
    };
    let lived = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|created| failed - nanos(created))
        .unwrap_or(0);
    // A pod that ran for long failed afresh: its backoff entry would have expired.
    let count = if lived > 2 * max * NANOS {
        0
    } else {
        failure_count(pod)
    };
    let initial = i128::from(u32::try_from(FAILED_POD_BACKOFF_INITIAL.as_secs()).unwrap_or(1));
    let delay = (initial << count.min(30)).min(max) * NANOS;
    let left = failed + delay - nanos(now);
    if left > 0 {
        Err(duration_from_nanos(left))
    } else {
        Ok(count.saturating_add(1))
    }
}

fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The DaemonSet's current revision and what it takes to have it (`constructHistory`).
struct History {
    /// The current template's hash (the pods' `controller-revision-hash`).
    hash: String,
    /// Every owned revision that is not current, sorted.
    old: Vec<ControllerRevision>,
    create: Option<ControllerRevision>,
    update: Vec<RevisionNumberUpdate>,
    /// Duplicates of the current revision.
    delete: Vec<RevisionToDelete>,
    /// Hashes of the deleted duplicates (their pods are relabelled to `hash`).
    duplicate_hashes: Vec<String>,
}

fn revision_hash(revision: &ControllerRevision) -> String {
    revision
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(CONTROLLER_REVISION_HASH_LABEL))
        .cloned()
        .unwrap_or_else(|| revision.metadata.name.clone().unwrap_or_default())
}

/// `constructHistory`, or `None` on a hash collision (the loop must bump the collision
/// count: another revision already has the name this template's revision needs).
fn construct_history(
    ds: &DaemonSet,
    owned: Vec<ControllerRevision>,
    namespace_revisions: &[ControllerRevision],
) -> Option<History> {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let patch = revision::template_patch(&template);
    let (mut current, old): (Vec<ControllerRevision>, Vec<ControllerRevision>) = owned
        .into_iter()
        .partition(|r| revision::data_matches(r, &patch));
    let next = revision::next_revision(&old);
    let mut history = History {
        hash: String::new(),
        old,
        create: None,
        update: Vec::new(),
        delete: Vec::new(),
        duplicate_hashes: Vec::new(),
    };
    if current.is_empty() {
        let collision_count = ds.status.as_ref().and_then(|s| s.collision_count);
        let hash = compute_hash(&template, collision_count);
        let name = revision::revision_name(ds.metadata.name.as_deref().unwrap_or(""), &hash);
        let existing = namespace_revisions.iter().find(|r| {
            r.metadata.namespace == ds.metadata.namespace
                && r.metadata.name.as_deref() == Some(&name)
        });
        match existing {
            Some(existing) if revision::data_matches(existing, &patch) => {
                history.hash = revision_hash(existing);
            }
            Some(_) => return None,
            None => {
                let labels = revision::revision_labels(
                    template.metadata.as_ref().and_then(|m| m.labels.as_ref()),
                    &hash,
                );
                history.create = Some(revision::new_revision(
                    &ds.metadata,
                    controller_ref_for(ds),
                    name,
                    labels,
                    ds.metadata.annotations.clone(),
                    patch,
                    next,
                ));
                history.hash = hash;
            }
        }
        return Some(history);
    }
    // `dedupCurHistories`: keep the highest revision (the last, sorted), drop the others.
    current.sort_by(revision::by_revision);
    let keep = current.pop()?;
    for duplicate in &current {
        history.delete.push(RevisionToDelete::of(duplicate));
        history.duplicate_hashes.push(revision_hash(duplicate));
    }
    if keep.revision < next {
        history.update.push(RevisionNumberUpdate::of(&keep, next));
    }
    history.hash = revision_hash(&keep);
    Some(history)
}

/// `cleanupHistory`: delete the oldest old revisions no pod uses until at most
/// `revisionHistoryLimit` old ones remain (live ones count against the limit too).
fn history_to_clean_up(
    ds: &DaemonSet,
    old: &[ControllerRevision],
    pods: &[&Pod],
) -> Vec<RevisionToDelete> {
    let limit = ds
        .spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .unwrap_or(DEFAULT_REVISION_HISTORY_LIMIT);
    let mut to_kill = old.len() as i64 - i64::from(limit);
    let live: Vec<&str> = pods
        .iter()
        .filter_map(|p| {
            p.metadata
                .labels
                .as_ref()?
                .get(CONTROLLER_REVISION_HASH_LABEL)
        })
        .map(String::as_str)
        .collect();
    let mut doomed = Vec::new();
    for revision in old {
        if to_kill <= 0 {
            break;
        }
        if live.contains(&revision_hash(revision).as_str()) {
            continue;
        }
        doomed.push(RevisionToDelete::of(revision));
        to_kill -= 1;
    }
    doomed
}

/// The working state of one sync.
struct Sync<'a> {
    ds: &'a DaemonSet,
    strategy: Strategy,
    min_ready_seconds: i32,
    now: Time,
    hash: String,
    generation: Option<i64>,
    /// The nodes, by name.
    nodes: BTreeMap<String, &'a Node>,
    /// Claimed pods by target node (pods without one are left alone).
    node_to_pods: BTreeMap<String, Vec<&'a Pod>>,
    create_on: Vec<(String, u32)>,
    delete: Vec<PodToDelete>,
    events: Vec<PlannedEvent>,
    requeue_after: Option<Duration>,
}

impl<'a> Sync<'a> {
    fn template_spec(&self) -> k8s_openapi::api::core::v1::PodSpec {
        self.ds
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .unwrap_or_default()
    }

    fn verdict(&self, node: &Node) -> NodeVerdict {
        should_run(&self.template_spec(), node)
    }

    fn is_available(&self, pod: &Pod) -> bool {
        pod_state::is_available(pod, self.min_ready_seconds, &self.now)
    }

    fn record(&mut self, type_: &'static str, reason: &'static str, message: String) {
        self.events.push(PlannedEvent {
            type_,
            reason,
            message,
        });
    }

    fn requeue(&mut self, after: Duration) {
        self.requeue_after = earliest(self.requeue_after, Some(after));
    }

    /// `podsShouldBeOnNode` for one node.
    fn pods_should_be_on_node(&mut self, node: &Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let verdict = self.verdict(node);
        let pods = self.node_to_pods.get(&name).cloned();
        match pods {
            None if verdict.should_run => self.create_on.push((name, 0)),
            Some(pods) if verdict.should_continue_running => {
                let namespace = self.ds.metadata.namespace.clone().unwrap_or_default();
                let mut running: Vec<&Pod> = Vec::new();
                let mut replacement_count = 0;
                for pod in pods {
                    if pod.metadata.deletion_timestamp.is_some() {
                        continue;
                    }
                    match phase(pod) {
                        "Failed" => match failed_pod_backoff(pod, &self.now) {
                            Err(left) => self.requeue(left),
                            Ok(count) => {
                                replacement_count = replacement_count.max(count);
                                self.record(
                                    "Warning",
                                    FAILED_DAEMON_POD_REASON,
                                    format!(
                                        "Found failed daemon pod {namespace}/{} on node {name}, will try to kill it",
                                        pod_name(pod)
                                    ),
                                );
                                self.delete.push(to_delete(pod));
                            }
                        },
                        "Succeeded" => {
                            self.record(
                                "Normal",
                                SUCCEEDED_DAEMON_POD_REASON,
                                format!(
                                    "Found succeeded daemon pod {namespace}/{} on node {name}, will try to delete it",
                                    pod_name(pod)
                                ),
                            );
                            self.delete.push(to_delete(pod));
                        }
                        _ => running.push(pod),
                    }
                }
                // Kubernetes creates the replacement on the next sync, once the deleted pod
                // is gone; here it is created now so it can carry the failure count.
                if running.is_empty() && verdict.should_run && replacement_count > 0 {
                    self.create_on.push((name.clone(), replacement_count));
                }
                running.sort_by(by_creation_and_phase);
                if !self.strategy.allows_surge() {
                    // Keep the oldest; delete the rest.
                    for pod in running.iter().skip(1) {
                        self.delete.push(to_delete(pod));
                    }
                    return;
                }
                if running.len() <= 1 {
                    if running.is_empty() && verdict.should_run && replacement_count == 0 {
                        self.create_on.push((name, 0));
                    }
                    return;
                }
                // Surging: keep the oldest new and oldest old pod, and the old one only
                // while it is ready and the new one is not yet available.
                let mut oldest_new: Option<&Pod> = None;
                let mut oldest_old: Option<&Pod> = None;
                for pod in running {
                    let is_new = pod
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(CONTROLLER_REVISION_HASH_LABEL))
                        == Some(&self.hash);
                    let slot = if is_new {
                        &mut oldest_new
                    } else {
                        &mut oldest_old
                    };
                    if slot.is_none() {
                        *slot = Some(pod);
                    } else {
                        self.delete.push(to_delete(pod));
                    }
                }
                if let (Some(new), Some(old)) = (oldest_new, oldest_old) {
                    if !pod_state::is_ready(old) || self.is_available(new) {
                        self.delete.push(to_delete(old));
                    }
                }
            }
            Some(pods) if !verdict.should_continue_running => {
                for pod in pods {
                    if pod.metadata.deletion_timestamp.is_none() {
                        self.delete.push(to_delete(pod));
                    }
                }
            }
            _ => {}
        }
    }

    /// `manage`: every node, then unbound pods aimed at nodes that no longer exist (no pod
    /// garbage collector would ever remove those).
    fn manage(&mut self) {
        let nodes: Vec<&Node> = self.nodes.values().copied().collect();
        for node in nodes {
            self.pods_should_be_on_node(node);
        }
        let orphaned: Vec<PodToDelete> = self
            .node_to_pods
            .iter()
            .filter(|(name, _)| !self.nodes.contains_key(*name))
            .flat_map(|(_, pods)| pods.iter())
            .filter(|pod| !is_bound(pod))
            .map(|pod| to_delete(pod))
            .collect();
        self.delete.extend(orphaned);
    }

    /// `updateDaemonSetStatus`'s counts over the pods as observed.
    fn status(&self, observed: &DaemonSetStatus) -> DaemonSetStatus {
        let mut desired = 0;
        let mut current = 0;
        let mut misscheduled = 0;
        let mut ready = 0;
        let mut updated = 0;
        let mut available = 0;
        for (name, node) in &self.nodes {
            let verdict = self.verdict(node);
            let mut pods = self.node_to_pods.get(name).cloned().unwrap_or_default();
            let scheduled = !pods.is_empty();
            if !verdict.should_run {
                if scheduled {
                    misscheduled += 1;
                }
                continue;
            }
            desired += 1;
            if !scheduled {
                continue;
            }
            current += 1;
            pods.sort_by(by_creation_and_phase);
            let pod = pods[0];
            if pod_state::is_ready(pod) {
                ready += 1;
                if self.is_available(pod) {
                    available += 1;
                }
            }
            if is_pod_updated(pod, &self.hash, self.generation) {
                updated += 1;
            }
        }
        DaemonSetStatus {
            collision_count: observed.collision_count,
            conditions: observed.conditions.clone(),
            current_number_scheduled: current,
            desired_number_scheduled: desired,
            number_available: Some(available),
            number_misscheduled: misscheduled,
            number_ready: ready,
            number_unavailable: Some(desired - available),
            observed_generation: self.ds.metadata.generation,
            updated_number_scheduled: Some(updated),
        }
    }

    /// Readiness turning into availability needs another look.
    fn requeue_for_availability(&mut self) {
        let next = self
            .node_to_pods
            .values()
            .flatten()
            .filter_map(|p| pod_state::time_until_available(p, self.min_ready_seconds, &self.now))
            .min();
        self.requeue_after = earliest(self.requeue_after, next);
    }
}

fn normalized(status: &DaemonSetStatus) -> DaemonSetStatus {
    DaemonSetStatus {
        collision_count: status.collision_count.and_then(nonzero),
        conditions: status.conditions.clone().filter(|c| !c.is_empty()),
        number_available: status.number_available.and_then(nonzero),
        number_unavailable: status.number_unavailable.and_then(nonzero),
        observed_generation: status.observed_generation.and_then(nonzero),
        updated_number_scheduled: status.updated_number_scheduled.and_then(nonzero),
        ..status.clone()
    }
}

/// Plans one sync of `ds` given every node, the pods and ControllerRevisions of its
/// namespace (pods that stopped matching still carry a controller reference to release,
/// and revision names collide namespace-wide) and `now`.
pub fn plan(
    ds: &DaemonSet,
    nodes: &[Node],
    pods: &[Pod],
    revisions: &[ControllerRevision],
    now: &Time,
) -> Result<DaemonSetPlan, DaemonSetError> {
    let now = truncate_to_second(now);
    let spec = ds.spec.as_ref().ok_or(DaemonSetError::MissingSpec)?;
    let selector = Selector::parse(Some(&spec.selector))?;
    let strategy = Strategy::resolve(ds)?;
    let observed = ds.status.clone().unwrap_or_default();

    if selector.is_everything() {
        let mut plan = DaemonSetPlan::empty(observed);
        plan.events.push(PlannedEvent {
            type_: "Warning",
            reason: SELECTING_ALL_REASON,
            message: "This daemon set is selecting all pods. A non-empty selector is required."
                .into(),
        });
        return Ok(plan);
    }
    // A DaemonSet being deleted: its history may already be gone, so Kubernetes does not
    // even compute status; the garbage collector removes the pods.
    if ds.metadata.deletion_timestamp.is_some() {
        return Ok(DaemonSetPlan::empty(observed));
    }

    let reference = controller_ref_for(ds);
    let owner_uid = ds.metadata.uid.as_deref().unwrap_or_default();
    let mut adopt_pods = Vec::new();
    let mut release_pods = Vec::new();
    let mut owned: Vec<&Pod> = Vec::new();
    for pod in pods
        .iter()
        .filter(|p| p.metadata.namespace == ds.metadata.namespace)
    {
        let matches = selector.matches(pod.metadata.labels.as_ref());
        match owner::claim(&ds.metadata, &pod.metadata, matches) {
            Claim::Owned => owned.push(pod),
            Claim::Adopt => {
                adopt_pods.push(OwnerRefChange::adopt(&pod.metadata, reference.clone()));
                owned.push(pod);
            }
            Claim::Release => release_pods.push(OwnerRefChange::release(&pod.metadata, owner_uid)),
            Claim::Ignore => {}
        }
    }
    let claimed = revision::claim_revisions(&ds.metadata, &reference, &selector, revisions);

    let Some(history) = construct_history(ds, claimed.owned, revisions) else {
        // `snapshot` found another revision under our name: bump the collision count (a
        // new hash next time) and stop, as Kubernetes does.
        let mut status = observed.clone();
        status.collision_count = Some(observed.collision_count.unwrap_or(0).saturating_add(1));
        let mut plan = DaemonSetPlan::empty(status);
        plan.adopt_pods = adopt_pods;
        plan.release_pods = release_pods;
        plan.adopt_revisions = claimed.adopt;
        plan.release_revisions = claimed.release;
        plan.status_changed = true;
        plan.requeue_after = Some(Duration::ZERO);
        return Ok(plan);
    };

    let relabel_pods: Vec<PodLabelPatch> = owned
        .iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(CONTROLLER_REVISION_HASH_LABEL))
                .is_some_and(|h| history.duplicate_hashes.contains(h))
        })
        .map(|p| PodLabelPatch {
            name: pod_name(p),
            uid: p.metadata.uid.clone(),
            resource_version: p.metadata.resource_version.clone(),
            set_labels: [(
                CONTROLLER_REVISION_HASH_LABEL.to_string(),
                history.hash.clone(),
            )]
            .into(),
        })
        .collect();

    let mut node_to_pods: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for pod in &owned {
        if let Some(node) = target_node_name(pod.spec.as_ref()) {
            node_to_pods.entry(node).or_default().push(pod);
        }
    }
    let mut sync = Sync {
        ds,
        strategy,
        min_ready_seconds: spec.min_ready_seconds.unwrap_or(0),
        now,
        hash: history.hash.clone(),
        generation: template_generation(ds),
        nodes: nodes
            .iter()
            .map(|n| (n.metadata.name.clone().unwrap_or_default(), n))
            .collect(),
        node_to_pods,
        create_on: Vec::new(),
        delete: Vec::new(),
        events: Vec::new(),
        requeue_after: None,
    };
    sync.manage();
    // Kubernetes rolls only once the creates and deletes of `manage` have been observed
    // (its expectations): never both in one sync.
    if sync.create_on.is_empty() && sync.delete.is_empty() {
        if let Strategy::RollingUpdate { .. } = sync.strategy {
            sync.rolling_update();
        }
    }

    let status = normalized(&sync.status(&observed));
    sync.requeue_for_availability();
    let mut delete_revisions = history.delete.clone();
    delete_revisions.extend(history_to_clean_up(ds, &history.old, &owned));

    sync.delete.truncate(BURST_REPLICAS);
    sync.create_on.truncate(BURST_REPLICAS);
    let create_pods = sync
        .create_on
        .iter()
        .map(|(node, count)| new_daemon_pod(ds, &sync.hash, node, *count))
        .collect();
    let status_changed = status != normalized(&observed);
    Ok(DaemonSetPlan {
        adopt_pods,
        release_pods,
        adopt_revisions: claimed.adopt,
        release_revisions: claimed.release,
        create_revision: history.create,
        update_revisions: history.update,
        relabel_pods,
        delete_pods: sync.delete,
        create_pods,
        delete_revisions,
        status,
        status_changed,
        events: sync.events,
        requeue_after: sync.requeue_after,
    })
}
