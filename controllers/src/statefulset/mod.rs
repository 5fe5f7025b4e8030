//! The StatefulSet controller's decisions (kube-controller-manager's
//! `pkg/controller/statefulset`): pods with stable names `<set>-<ordinal>` (from
//! `spec.ordinals.start`), hostnames and claims `<template>-<set>-<ordinal>`, created in
//! ordinal order and removed highest first one at a time (`OrderedReady`) or all at once
//! (`Parallel`); rolled to a new revision highest ordinal first down to `partition`,
//! within `maxUnavailable` (`RollingUpdate`) or only when the user deletes pods
//! (`OnDelete`); revisions kept as ControllerRevisions; and the status
//! `kubectl rollout status sts` reads.
//!
//! [`plan`] follows `UpdateStatefulSet`: claim pods and revisions, find the current and
//! update revisions, process each replica in order (delete failed pods, create missing
//! claims and pods, wait for readiness in `OrderedReady`), then condemned pods (ordinals
//! past the end), then the rolling update, then history truncation and status. The
//! `MaxUnavailableStatefulSet` behaviour is the one followed (with its default of 1 it
//! rolls like the classic one-at-a-time update).
//!
//! `persistentVolumeClaimRetentionPolicy`: Kubernetes expresses it as ownerReferences on
//! the claims and lets the garbage collector delete them. Shoal has no garbage collector
//! yet, so the plan deletes claims itself: with `whenScaled: Delete` the claims of a
//! scaled-down ordinal once its pod is gone, with `whenDeleted: Delete` (set being deleted)
//! every claim of the set whose pod is gone. New claims still get the set's controller
//! reference under `whenDeleted: Delete`, as in Kubernetes.

mod identity;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::deployment::{scaled_value, IntOrPercentError, PlannedEvent};
use crate::owner::{self, Claim, OwnerRefChange};
use crate::pod_state;
use crate::replicaset::{nonzero, PodToDelete};
use crate::revision::{self, PodLabelPatch, RevisionNumberUpdate, RevisionToDelete};
use crate::selector::{Selector, SelectorError};
use crate::time::truncate_to_second;

pub use identity::{
    claim_name, claims_for, identity_labels, new_pod, parent_and_ordinal, pod_name,
};
pub use revision::CONTROLLER_REVISION_HASH_LABEL;

/// The label with the pod's name (a selector for a per-pod Service).
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label with the pod's ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// apps/v1 defaults.
pub const DEFAULT_REPLICAS: i32 = 1;
pub const DEFAULT_REVISION_HISTORY_LIMIT: i32 = 10;

/// Sync again this soon when a claim the next pod needs is still being deleted.
pub const CLAIM_DELETION_RETRY: Duration = Duration::from_secs(1);

/// The StatefulSet cannot be reconciled as written; the loop reports it as an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatefulSetError {
    #[error("stateful set has no spec")]
    MissingSpec,
    #[error("invalid selector: {0}")]
    Selector(#[from] SelectorError),
    #[error("unexpected stateful set update strategy type: {0}")]
    UnknownStrategy(String),
    #[error("unexpected pod management policy: {0}")]
    UnknownPodManagementPolicy(String),
    #[error("unexpected persistent volume claim retention policy: {0}")]
    UnknownRetentionPolicy(String),
    #[error(transparent)]
    IntOrPercent(#[from] IntOrPercentError),
}

/// A claim to delete (with a `uid` precondition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToDelete {
    pub name: String,
    pub uid: Option<String>,
}

/// What one StatefulSet sync should do. The loop executes it in field order and stops at
/// the first failure (the next sync re-plans from what then exists):
/// 1. `adopt_pods` / `release_pods` / `adopt_revisions`: ownerReference patches;
/// 2. `create_revision` (AlreadyExists means a stale cache: requeue), `update_revisions`;
/// 3. `create_claims` (AlreadyExists is fine: the claim is there), then `create_pods`
///    (complete, named objects; AlreadyExists means a stale cache), `relabel_pods`,
///    `delete_pods` (uid precondition), recording `SuccessfulCreate` / `SuccessfulDelete`
///    for each as Kubernetes' pod control does;
/// 4. `delete_claims`, `delete_revisions`;
/// 5. `status` when `status_changed`, through the status subresource;
/// 6. `events`, then sync again after `requeue_after` (if any).
#[derive(Debug, Clone, PartialEq)]
pub struct StatefulSetPlan {
    pub adopt_pods: Vec<OwnerRefChange>,
    pub release_pods: Vec<OwnerRefChange>,
    pub adopt_revisions: Vec<OwnerRefChange>,
    pub create_revision: Option<ControllerRevision>,
    pub update_revisions: Vec<RevisionNumberUpdate>,
    pub create_claims: Vec<PersistentVolumeClaim>,
    pub create_pods: Vec<Pod>,
    pub relabel_pods: Vec<PodLabelPatch>,
    pub delete_pods: Vec<PodToDelete>,
    pub delete_claims: Vec<ClaimToDelete>,
    pub delete_revisions: Vec<RevisionToDelete>,
    pub status: StatefulSetStatus,
    pub status_changed: bool,
    pub events: Vec<PlannedEvent>,
    pub requeue_after: Option<Duration>,
}

impl StatefulSetPlan {
    /// True when the plan writes nothing.
    pub fn is_noop(&self) -> bool {
        self.adopt_pods.is_empty()
            && self.release_pods.is_empty()
            && self.adopt_revisions.is_empty()
            && self.create_revision.is_none()
            && self.update_revisions.is_empty()
            && self.create_claims.is_empty()
            && self.create_pods.is_empty()
            && self.relabel_pods.is_empty()
            && self.delete_pods.is_empty()
            && self.delete_claims.is_empty()
            && self.delete_revisions.is_empty()
            && !self.status_changed
    }
}

/// The controller reference a StatefulSet puts on its pods, claims and revisions.
pub fn controller_ref_for(set: &StatefulSet) -> OwnerReference {
    owner::controller_ref(
        "apps/v1",
        "StatefulSet",
        set.metadata.name.as_deref().unwrap_or_default(),
        set.metadata.uid.as_deref().unwrap_or_default(),
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Strategy {
    RollingUpdate {
        partition: i32,
        max_unavailable: IntOrString,
    },
    OnDelete,
}

/// The spec with apps/v1 defaults applied.
#[derive(Debug, Clone)]
struct Params {
    replicas: i32,
    start: i32,
    parallel: bool,
    strategy: Strategy,
    min_ready_seconds: i32,
    revision_history_limit: i32,
    delete_claims_when_scaled: bool,
    delete_claims_when_deleted: bool,
}

fn retention_deletes(value: Option<&str>) -> Result<bool, StatefulSetError> {
    match value {
        None | Some("Retain") => Ok(false),
        Some("Delete") => Ok(true),
        Some(other) => Err(StatefulSetError::UnknownRetentionPolicy(other.to_string())),
    }
}

impl Params {
    fn resolve(set: &StatefulSet) -> Result<Params, StatefulSetError> {
        let spec = set.spec.as_ref().ok_or(StatefulSetError::MissingSpec)?;
        let strategy_spec = spec.update_strategy.as_ref();
        let strategy = match strategy_spec.and_then(|s| s.type_.as_deref()) {
            None | Some("RollingUpdate") => {
                let rolling = strategy_spec.and_then(|s| s.rolling_update.as_ref());
                let max_unavailable = rolling
                    .and_then(|r| r.max_unavailable.clone())
                    .unwrap_or(IntOrString::Int(1));
                scaled_value(&max_unavailable, 1, false)?;
                Strategy::RollingUpdate {
                    partition: rolling.and_then(|r| r.partition).unwrap_or(0),
                    max_unavailable,
                }
            }
            Some("OnDelete") => Strategy::OnDelete,
            Some(other) => return Err(StatefulSetError::UnknownStrategy(other.to_string())),
        };
        let parallel = match spec.pod_management_policy.as_deref() {
            None | Some("OrderedReady") => false,
            Some("Parallel") => true,
            Some(other) => {
                return Err(StatefulSetError::UnknownPodManagementPolicy(
                    other.to_string(),
                ))
            }
        };
        let retention = spec.persistent_volume_claim_retention_policy.as_ref();
        Ok(Params {
            replicas: spec.replicas.unwrap_or(DEFAULT_REPLICAS).max(0),
            start: spec.ordinals.as_ref().and_then(|o| o.start).unwrap_or(0),
            parallel,
            strategy,
            min_ready_seconds: spec.min_ready_seconds.unwrap_or(0),
            revision_history_limit: spec
                .revision_history_limit
                .unwrap_or(DEFAULT_REVISION_HISTORY_LIMIT),
            delete_claims_when_scaled: retention_deletes(
                retention.and_then(|r| r.when_scaled.as_deref()),
            )?,
            delete_claims_when_deleted: retention_deletes(
                retention.and_then(|r| r.when_deleted.as_deref()),
            )?,
        })
    }

    fn end(&self) -> i32 {
        self.start + self.replicas - 1
    }

    fn in_range(&self, ordinal: i32) -> bool {
        ordinal >= self.start && ordinal <= self.end()
    }

    /// `getStatefulSetMaxUnavailable`: rounded down, at least 1.
    fn max_unavailable(&self) -> i32 {
        match &self.strategy {
            Strategy::RollingUpdate {
                max_unavailable, ..
            } => scaled_value(max_unavailable, self.replicas, false)
                .unwrap_or(1)
                .max(1),
            Strategy::OnDelete => 1,
        }
    }
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// `isRunningAndReady`.
fn is_running_and_ready(pod: &Pod) -> bool {
    phase(pod) == "Running" && pod_state::is_ready(pod)
}

fn pod_revision(pod: &Pod) -> &str {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(CONTROLLER_REVISION_HASH_LABEL))
        .map(String::as_str)
        .unwrap_or("")
}

fn name_of(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The current and update revisions (`getStatefulSetRevisions`) and the writes they take.
struct Revisions {
    current: ControllerRevision,
    update: ControllerRevision,
    collision_count: i32,
    create: Option<ControllerRevision>,
    renumber: Vec<RevisionNumberUpdate>,
}

fn resolve_revisions(
    set: &StatefulSet,
    owned: &[ControllerRevision],
    namespace_revisions: &[ControllerRevision],
) -> Revisions {
    let template = set
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let patch = revision::template_patch(&template);
    let next = revision::next_revision(owned);
    let mut collision_count = set
        .status
        .as_ref()
        .and_then(|s| s.collision_count)
        .unwrap_or(0);
    let equal: Vec<&ControllerRevision> = owned
        .iter()
        .filter(|r| revision::data_matches(r, &patch))
        .collect();
    let mut create = None;
    let mut renumber = Vec::new();
    let update = match (equal.last(), owned.last()) {
        // The newest revision already holds this template: nothing changed.
        (Some(_), Some(newest)) if revision::data_matches(newest, &patch) => newest.clone(),
        // An older revision holds it: a rollback, which makes that revision the newest.
        (Some(found), _) => {
            renumber.push(RevisionNumberUpdate::of(found, next));
            let mut found = (*found).clone();
            found.revision = next;
            found
        }
        // A new template: `CreateControllerRevision`, probing names past collisions.
        (None, _) => loop {
            let hash = revision::hash_data(&patch, Some(collision_count));
            let name = revision::revision_name(set.metadata.name.as_deref().unwrap_or(""), &hash);
            let taken = namespace_revisions.iter().find(|r| {
                r.metadata.namespace == set.metadata.namespace
                    && r.metadata.name.as_deref() == Some(&name)
            });
            match taken {
                Some(existing) if revision::data_matches(existing, &patch) => {
                    break existing.clone()
                }
                Some(_) => collision_count = collision_count.saturating_add(1),
                None => {
                    let labels = revision::revision_labels(
                        template.metadata.as_ref().and_then(|m| m.labels.as_ref()),
                        &hash,
                    );
                    let new = revision::new_revision(
                        &set.metadata,
                        controller_ref_for(set),
                        name,
                        labels,
                        set.metadata.annotations.clone(),
                        patch.clone(),
                        next,
                    );
                    create = Some(new.clone());
                    break new;
                }
            }
        },
    };
    let current_name = set.status.as_ref().and_then(|s| s.current_revision.clone());
    let current = owned
        .iter()
        .find(|r| r.metadata.name.is_some() && r.metadata.name == current_name)
        .cloned()
        .unwrap_or_else(|| update.clone());
    Revisions {
        current,
        update,
        collision_count,
        create,
        renumber,
    }
}

/// `isUnavailable`: not available, or terminating (a pod not yet created is unavailable).
fn is_unavailable(pod: Option<&Pod>, min_ready_seconds: i32, now: &Time) -> bool {
    pod.is_none_or(|p| !pod_state::is_available(p, min_ready_seconds, now) || is_terminating(p))
}

/// One sync's working state.
struct Sync<'a> {
    set: &'a StatefulSet,
    params: Params,
    now: Time,
    current: ControllerRevision,
    update: ControllerRevision,
    /// The in-range pods by index (`ordinal - start`); `None` where one must be created.
    replicas: Vec<Option<&'a Pod>>,
    /// Members past the end, highest ordinal first.
    condemned: Vec<(i32, &'a Pod)>,
    claims: &'a [&'a PersistentVolumeClaim],
    status: StatefulSetStatus,
    create_claims: Vec<PersistentVolumeClaim>,
    create_pods: Vec<Pod>,
    relabel_pods: Vec<PodLabelPatch>,
    delete_pods: Vec<PodToDelete>,
    events: Vec<PlannedEvent>,
    requeue_after: Option<Duration>,
}

impl<'a> Sync<'a> {
    fn set_name(&self) -> &str {
        self.set.metadata.name.as_deref().unwrap_or_default()
    }

    fn available(&self, pod: &Pod) -> bool {
        pod_state::is_available(pod, self.params.min_ready_seconds, &self.now)
    }

    fn delete(&mut self, pod: &Pod) {
        self.delete_pods.push(PodToDelete {
            name: name_of(pod),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
        });
    }

    fn requeue(&mut self, after: Option<Duration>) {
        self.requeue_after = earliest(self.requeue_after, after);
    }

    /// The template a pod at `ordinal` gets (`newVersionedStatefulSetPod`): the current
    /// revision's below the partition, the update revision's otherwise.
    fn versioned_pod(&self, ordinal: i32) -> Pod {
        let below_partition = match &self.params.strategy {
            Strategy::RollingUpdate { partition, .. } => ordinal < self.params.start + partition,
            Strategy::OnDelete => false,
        };
        let revision = if below_partition {
            &self.current
        } else {
            &self.update
        };
        let template: PodTemplateSpec = revision::template_of(revision).unwrap_or_else(|| {
            self.set
                .spec
                .as_ref()
                .map(|s| s.template.clone())
                .unwrap_or_default()
        });
        new_pod(
            self.set,
            &template,
            ordinal,
            revision.metadata.name.as_deref().unwrap_or_default(),
        )
    }

    fn existing_claim(&self, name: &str) -> Option<&'a PersistentVolumeClaim> {
        self.claims
            .iter()
            .copied()
            .find(|c| c.metadata.name.as_deref() == Some(name))
    }

    /// Plans the claims the pod at `ordinal` lacks; false when one of them is still being
    /// deleted (the pod must wait for it to go and be recreated).
    fn ensure_claims(&mut self, ordinal: i32) -> bool {
        let wanted = claims_for(self.set, ordinal, self.params.delete_claims_when_deleted);
        let mut ready = true;
        for claim in wanted {
            let name = claim.metadata.name.clone().unwrap_or_default();
            match self.existing_claim(&name) {
                Some(existing) if existing.metadata.deletion_timestamp.is_some() => {
                    ready = false;
                }
                Some(_) => {}
                None => {
                    if !self
                        .create_claims
                        .iter()
                        .any(|c| c.metadata.name.as_deref() == Some(&name))
                    {
                        self.create_claims.push(claim);
                    }
                }
            }
        }
        if !ready {
            self.requeue(Some(CLAIM_DELETION_RETRY));
        }
        ready
    }

    /// `processReplica` for index `index`; true when an OrderedReady set must stop here.
    fn process_replica(&mut self, index: usize) -> bool {
        let ordinal = self.params.start + i32::try_from(index).unwrap_or(i32::MAX);
        let monotonic = !self.params.parallel;
        let Some(pod) = self.replicas[index] else {
            if !self.ensure_claims(ordinal) {
                return true;
            }
            let pod = self.versioned_pod(ordinal);
            self.create_pods.push(pod);
            // OrderedReady creates one pod and waits for it.
            return monotonic;
        };
        // A failed (or, evicted, succeeded) pod is deleted; the next sync recreates it
        // once it is gone.
        if matches!(phase(pod), "Failed" | "Succeeded") {
            if !is_terminating(pod) {
                self.events.push(PlannedEvent {
                    type_: "Warning",
                    reason: "RecreatingFailedPod",
                    message: format!(
                        "StatefulSet {}/{} is recreating failed Pod {}",
                        self.set.metadata.namespace.as_deref().unwrap_or_default(),
                        self.set_name(),
                        name_of(pod)
                    ),
                });
                self.delete(pod);
            }
            return true;
        }
        if phase(pod) == "Pending" {
            self.ensure_claims(ordinal);
        }
        if monotonic {
            if is_terminating(pod) || !is_running_and_ready(pod) {
                return true;
            }
            if !self.available(pod) {
                let wait =
                    pod_state::time_until_available(pod, self.params.min_ready_seconds, &self.now);
                self.requeue(wait);
                return true;
            }
        }
        // Enforce the identity labels (`identityMatches`/`UpdateStatefulPod`).
        let wanted = identity_labels(self.set_name(), ordinal);
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let missing: std::collections::BTreeMap<String, String> = wanted
            .into_iter()
            .filter(|(k, v)| labels.get(k) != Some(v))
            .collect();
        if !missing.is_empty() && !is_terminating(pod) {
            self.relabel_pods.push(PodLabelPatch {
                name: name_of(pod),
                uid: pod.metadata.uid.clone(),
                resource_version: pod.metadata.resource_version.clone(),
                set_labels: missing,
            });
        }
        false
    }

    /// `processCondemned` for the `i`-th condemned pod; true when OrderedReady must stop.
    fn process_condemned(&mut self, i: usize, first_unhealthy: Option<&str>) -> bool {
        let (_, pod) = self.condemned[i];
        let monotonic = !self.params.parallel;
        if is_terminating(pod) {
            return monotonic;
        }
        let is_first_unhealthy = first_unhealthy == pod.metadata.name.as_deref();
        if monotonic && !is_first_unhealthy && (!is_running_and_ready(pod) || !self.available(pod))
        {
            return true;
        }
        self.delete(pod);
        monotonic
    }

    /// `updateStatus` over the replicas and condemned pods as observed.
    fn count_status(&mut self) {
        let (mut replicas, mut ready, mut available, mut current, mut updated) = (0, 0, 0, 0, 0);
        let pods: Vec<&Pod> = self
            .replicas
            .iter()
            .flatten()
            .copied()
            .chain(self.condemned.iter().map(|(_, p)| *p))
            .collect();
        let current_name = self.current.metadata.name.clone().unwrap_or_default();
        let update_name = self.update.metadata.name.clone().unwrap_or_default();
        for pod in pods {
            let created = !phase(pod).is_empty();
            if created {
                replicas += 1;
            }
            if is_running_and_ready(pod) {
                ready += 1;
                if self.available(pod) {
                    available += 1;
                }
            }
            if created && !is_terminating(pod) {
                if pod_revision(pod) == current_name {
                    current += 1;
                }
                if pod_revision(pod) == update_name {
                    updated += 1;
                }
            }
        }
        self.status.replicas = replicas;
        self.status.ready_replicas = Some(ready);
        self.status.available_replicas = Some(available);
        self.status.current_replicas = Some(current);
        self.status.updated_replicas = Some(updated);
    }

    /// `updateStatefulSet` from the replica loop on.
    fn run(&mut self) {
        // The first unhealthy pod: among replicas first, then condemned from the lowest.
        let min_ready = self.params.min_ready_seconds;
        let first_unhealthy: Option<String> = self
            .replicas
            .iter()
            .copied()
            .chain(self.condemned.iter().rev().map(|(_, p)| Some(*p)))
            .find(|p| is_unavailable(*p, min_ready, &self.now))
            .map(|p| p.and_then(|p| p.metadata.name.clone()).unwrap_or_default());
        self.count_status();
        if self.set.metadata.deletion_timestamp.is_some() {
            return;
        }
        let monotonic = !self.params.parallel;
        for index in 0..self.replicas.len() {
            if self.process_replica(index) && monotonic {
                return;
            }
        }
        for i in 0..self.condemned.len() {
            if self.process_condemned(i, first_unhealthy.as_deref()) && monotonic {
                return;
            }
        }
        let Strategy::RollingUpdate { partition, .. } = self.params.strategy else {
            return;
        };
        // `updateStatefulSetAfterInvariantEstablished`: keep at most maxUnavailable of the
        // replicas unavailable, deleting outdated pods from the highest ordinal down to
        // the partition.
        let max_unavailable = self.params.max_unavailable();
        let unavailable = self
            .replicas
            .iter()
            .filter(|p| is_unavailable(**p, min_ready, &self.now))
            .count();
        let unavailable = i32::try_from(unavailable).unwrap_or(i32::MAX);
        if unavailable > max_unavailable {
            return;
        }
        let mut budget = max_unavailable - unavailable;
        let update_name = self.update.metadata.name.clone().unwrap_or_default();
        let lowest = usize::try_from(partition.max(0)).unwrap_or(0);
        for index in (lowest..self.replicas.len()).rev() {
            if budget <= 0 {
                break;
            }
            let Some(pod) = self.replicas[index] else {
                continue;
            };
            if pod_revision(pod) != update_name && !is_terminating(pod) {
                self.delete(pod);
                budget -= 1;
                let current = self.status.current_replicas.unwrap_or(0);
                self.status.current_replicas = Some(current - 1);
            }
        }
    }

    /// Readiness turning into availability needs another look.
    fn requeue_for_availability(&mut self) {
        let next = self
            .replicas
            .iter()
            .flatten()
            .chain(self.condemned.iter().map(|(_, p)| p))
            .filter_map(|p| {
                pod_state::time_until_available(p, self.params.min_ready_seconds, &self.now)
            })
            .min();
        self.requeue(next);
    }
}

fn normalized(status: &StatefulSetStatus) -> StatefulSetStatus {
    StatefulSetStatus {
        available_replicas: status.available_replicas.and_then(nonzero),
        collision_count: status.collision_count.and_then(nonzero),
        conditions: status.conditions.clone().filter(|c| !c.is_empty()),
        current_replicas: status.current_replicas.and_then(nonzero),
        current_revision: status.current_revision.clone().filter(|r| !r.is_empty()),
        observed_generation: status.observed_generation.and_then(nonzero),
        ready_replicas: status.ready_replicas.and_then(nonzero),
        replicas: status.replicas,
        update_revision: status.update_revision.clone().filter(|r| !r.is_empty()),
        updated_replicas: status.updated_replicas.and_then(nonzero),
    }
}

/// Claims to delete under the retention policy (see the module docs): the set's claims
/// (by name and labels) whose pod is gone, for ordinals scaled away (`whenScaled: Delete`)
/// or any ordinal of a set being deleted (`whenDeleted: Delete`).
fn claims_to_delete(
    set: &StatefulSet,
    params: &Params,
    claims: &[&PersistentVolumeClaim],
    pods: &[Pod],
) -> Vec<ClaimToDelete> {
    let set_name = set.metadata.name.as_deref().unwrap_or_default();
    let deleting = set.metadata.deletion_timestamp.is_some();
    let match_labels = set
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    let pod_names: BTreeSet<&str> = pods
        .iter()
        .filter(|p| p.metadata.namespace == set.metadata.namespace)
        .filter_map(|p| p.metadata.name.as_deref())
        .collect();
    claims
        .iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .filter(|c| {
            let labels = c.metadata.labels.clone().unwrap_or_default();
            match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .filter_map(|c| {
            let ordinal = identity::claim_ordinal(set, c)?;
            let doomed = (deleting && params.delete_claims_when_deleted)
                || (!params.in_range(ordinal) && params.delete_claims_when_scaled);
            let pod_gone = !pod_names.contains(pod_name(set_name, ordinal).as_str());
            (doomed && pod_gone).then(|| ClaimToDelete {
                name: c.metadata.name.clone().unwrap_or_default(),
                uid: c.metadata.uid.clone(),
            })
        })
        .collect()
}

/// Plans one sync of `set` given the pods, PersistentVolumeClaims and ControllerRevisions
/// of its namespace (pods that stopped matching still carry a controller reference to
/// release, and revision names collide namespace-wide) and `now`.
pub fn plan(
    set: &StatefulSet,
    pods: &[Pod],
    pvcs: &[PersistentVolumeClaim],
    revisions: &[ControllerRevision],
    now: &Time,
) -> Result<StatefulSetPlan, StatefulSetError> {
    let now = truncate_to_second(now);
    let spec = set.spec.as_ref().ok_or(StatefulSetError::MissingSpec)?;
    let selector = Selector::parse(Some(&spec.selector))?;
    let params = Params::resolve(set)?;
    let set_name = set.metadata.name.as_deref().unwrap_or_default();
    let reference = controller_ref_for(set);
    let owner_uid = set.metadata.uid.as_deref().unwrap_or_default();

    // Pods: members (by name) of this set, claimed by the selector.
    let mut adopt_pods = Vec::new();
    let mut release_pods = Vec::new();
    let mut owned: Vec<(i32, &Pod)> = Vec::new();
    for pod in pods
        .iter()
        .filter(|p| p.metadata.namespace == set.metadata.namespace)
    {
        let Some(ordinal) = identity::member_ordinal(set_name, pod) else {
            continue;
        };
        let matches = selector.matches(pod.metadata.labels.as_ref());
        match owner::claim(&set.metadata, &pod.metadata, matches) {
            Claim::Owned => owned.push((ordinal, pod)),
            Claim::Adopt => {
                adopt_pods.push(OwnerRefChange::adopt(&pod.metadata, reference.clone()));
                owned.push((ordinal, pod));
            }
            Claim::Release => release_pods.push(OwnerRefChange::release(&pod.metadata, owner_uid)),
            Claim::Ignore => {}
        }
    }

    // Revisions: owned ones plus adopted orphans (Kubernetes only adopts here).
    let mut owned_revisions = Vec::new();
    let mut adopt_revisions = Vec::new();
    for revision in revisions
        .iter()
        .filter(|r| r.metadata.namespace == set.metadata.namespace)
    {
        if owner::is_controlled_by(&revision.metadata, owner_uid) {
            owned_revisions.push(revision.clone());
        } else if owner::controller_of(&revision.metadata).is_none()
            && selector.matches(revision.metadata.labels.as_ref())
            && revision.metadata.deletion_timestamp.is_none()
            && set.metadata.deletion_timestamp.is_none()
        {
            let change = OwnerRefChange::adopt(&revision.metadata, reference.clone());
            let mut adopted = revision.clone();
            change.apply_to(&mut adopted.metadata);
            adopt_revisions.push(change);
            owned_revisions.push(adopted);
        }
    }
    owned_revisions.sort_by(revision::by_revision);
    let resolved = resolve_revisions(set, &owned_revisions, revisions);

    let size = usize::try_from(params.replicas).unwrap_or(0);
    let mut replicas: Vec<Option<&Pod>> = vec![None; size];
    let mut condemned: Vec<(i32, &Pod)> = Vec::new();
    for (ordinal, pod) in &owned {
        if params.in_range(*ordinal) {
            let index = usize::try_from(ordinal - params.start).unwrap_or(0);
            replicas[index] = Some(pod);
        } else {
            condemned.push((*ordinal, pod));
        }
    }
    condemned.sort_by_key(|(ordinal, _)| std::cmp::Reverse(*ordinal));

    let claims: Vec<&PersistentVolumeClaim> = pvcs
        .iter()
        .filter(|c| c.metadata.namespace == set.metadata.namespace)
        .collect();
    let observed = set.status.clone().unwrap_or_default();
    let mut sync = Sync {
        set,
        params: params.clone(),
        now,
        current: resolved.current.clone(),
        update: resolved.update.clone(),
        replicas,
        condemned,
        claims: &claims,
        status: StatefulSetStatus {
            observed_generation: set.metadata.generation,
            current_revision: resolved.current.metadata.name.clone(),
            update_revision: resolved.update.metadata.name.clone(),
            collision_count: Some(resolved.collision_count),
            ..StatefulSetStatus::default()
        },
        create_claims: Vec::new(),
        create_pods: Vec::new(),
        relabel_pods: Vec::new(),
        delete_pods: Vec::new(),
        events: Vec::new(),
        requeue_after: None,
    };
    sync.run();
    sync.requeue_for_availability();

    // `completeRollingUpdate`: every replica updated and ready makes the update current.
    let mut status = sync.status.clone();
    if matches!(params.strategy, Strategy::RollingUpdate { .. })
        && status.updated_replicas.unwrap_or(0) == params.replicas
        && status.ready_replicas.unwrap_or(0) == params.replicas
        && status.replicas == params.replicas
    {
        status.current_replicas = status.updated_replicas;
        status.current_revision = status.update_revision.clone();
    }
    let status = normalized(&status);

    // `truncateHistory`: revisions neither current, update, nor used by a pod go, oldest
    // first, beyond revisionHistoryLimit.
    let mut live: BTreeSet<String> = owned
        .iter()
        .map(|(_, p)| pod_revision(p).to_string())
        .collect();
    live.extend(resolved.current.metadata.name.clone());
    live.extend(resolved.update.metadata.name.clone());
    let history: Vec<&ControllerRevision> = owned_revisions.iter().collect();
    let delete_revisions = if params.revision_history_limit < 0 {
        Vec::new()
    } else {
        revision::history_to_truncate(&history, params.revision_history_limit, |r| {
            r.metadata.name.as_ref().is_some_and(|n| live.contains(n))
        })
        .into_iter()
        .map(RevisionToDelete::of)
        .collect()
    };

    let status_changed = status != normalized(&observed);
    Ok(StatefulSetPlan {
        adopt_pods,
        release_pods,
        adopt_revisions,
        create_revision: resolved.create,
        update_revisions: resolved.renumber,
        create_claims: sync.create_claims,
        create_pods: sync.create_pods,
        relabel_pods: sync.relabel_pods,
        delete_pods: sync.delete_pods,
        delete_claims: claims_to_delete(set, &params, &claims, pods),
        delete_revisions,
        status,
        status_changed,
        events: sync.events,
        requeue_after: sync.requeue_after,
    })
}
