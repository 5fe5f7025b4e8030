//! The Deployment controller's decisions (kube-controller-manager's
//! `pkg/controller/deployment`): which ReplicaSets belong to a Deployment, which one is
//! new, how to scale each for a RollingUpdate or Recreate rollout or a mid-rollout
//! resize, which old ones to delete, and the status, conditions and revision to write.
//!
//! [`plan`] follows `syncDeployment` step by step on working copies of the ReplicaSets
//! and returns the differences as a [`DeploymentPlan`]. Where Kubernetes writes the same
//! object several times in one sync, the plan carries the final value once.

mod hash;
mod history;
mod recreate;
mod rolling;
mod scale;
mod spec;
mod status;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};

use crate::owner::{self, Claim, OwnerRefChange};
use crate::selector::{Selector, SelectorError};
use crate::time::truncate_to_second;

pub use hash::{compute_hash, equal_ignore_hash, POD_TEMPLATE_HASH_LABEL};
pub use history::{
    DESIRED_REPLICAS_ANNOTATION, MAX_REPLICAS_ANNOTATION, REVISION_ANNOTATION,
    REVISION_HISTORY_ANNOTATION,
};
pub use spec::{resolve_fenceposts, scaled_value, IntOrPercentError, Params, Strategy};
pub use status::{kubectl_rollout_status, RolloutVerdict};

/// Condition types and reasons, as Kubernetes writes them.
pub mod reasons {
    pub use super::status::{
        AVAILABLE, DEPLOYMENT_PAUSED, DEPLOYMENT_RESUMED, FOUND_NEW_REPLICA_SET,
        MINIMUM_REPLICAS_AVAILABLE, MINIMUM_REPLICAS_UNAVAILABLE, NEW_REPLICA_SET_AVAILABLE,
        NEW_REPLICA_SET_CREATED, PROGRESSING, PROGRESS_DEADLINE_EXCEEDED, REPLICA_FAILURE,
        REPLICA_SET_UPDATED,
    };
}

/// The Deployment cannot be reconciled as written; the loop reports it as an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeploymentError {
    #[error("deployment has no spec")]
    MissingSpec,
    #[error("invalid selector: {0}")]
    Selector(#[from] SelectorError),
    #[error("unexpected deployment strategy type: {0}")]
    UnknownStrategy(String),
    #[error(transparent)]
    IntOrPercent(#[from] IntOrPercentError),
}

/// A change to an existing ReplicaSet: its replica count, `minReadySeconds` and the
/// annotations to set (only those that change; none are ever removed). The loop sends
/// [`ReplicaSetUpdate::merge_patch`], which carries the observed `uid` and
/// `resourceVersion` so a stale decision conflicts instead of landing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSetUpdate {
    pub name: String,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub replicas: i32,
    pub min_ready_seconds: i32,
    pub set_annotations: BTreeMap<String, String>,
}

impl ReplicaSetUpdate {
    /// The JSON merge patch (RFC 7386) performing the update.
    pub fn merge_patch(&self) -> serde_json::Value {
        let mut metadata = serde_json::Map::new();
        if let Some(uid) = &self.uid {
            metadata.insert("uid".into(), uid.clone().into());
        }
        if let Some(version) = &self.resource_version {
            metadata.insert("resourceVersion".into(), version.clone().into());
        }
        if !self.set_annotations.is_empty() {
            metadata.insert(
                "annotations".into(),
                serde_json::json!(self.set_annotations),
            );
        }
        serde_json::json!({
            "metadata": metadata,
            "spec": {"replicas": self.replicas, "minReadySeconds": self.min_ready_seconds},
        })
    }

    /// Applies the update to a local copy (tests and simulations).
    pub fn apply_to(&self, rs: &mut ReplicaSet) {
        let spec = rs.spec.get_or_insert_with(ReplicaSetSpec::default);
        spec.replicas = Some(self.replicas);
        spec.min_ready_seconds = Some(self.min_ready_seconds).filter(|s| *s != 0);
        if !self.set_annotations.is_empty() {
            let annotations = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
            annotations.extend(self.set_annotations.clone());
        }
    }
}

/// A ReplicaSet to delete (with a `uid` precondition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSetToDelete {
    pub name: String,
    pub uid: Option<String>,
}

/// An event Kubernetes would record on the Deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEvent {
    /// `Normal` or `Warning`.
    pub type_: &'static str,
    pub reason: &'static str,
    pub message: String,
}

/// What one Deployment sync should do. The loop executes it in field order and stops at
/// the first failure (the next sync re-plans from what then exists):
/// 1. `adopt` / `release`: ownerReference patches on ReplicaSets;
/// 2. `create`: the new ReplicaSet (fixed name, so AlreadyExists means a stale cache:
///    requeue; a real hash collision is detected by the next plan, which bumps
///    `collisionCount`);
/// 3. `update`: ReplicaSet scale/annotation changes, in order;
/// 4. `delete`: old ReplicaSets beyond the revision history limit;
/// 5. `deployment_annotations`: set on the Deployment's metadata (the revision;
///    Kubernetes writes these along with the status);
/// 6. `status` when `status_changed`, through the status subresource;
/// 7. `events`, then sync again after `requeue_after` (if any).
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentPlan {
    pub adopt: Vec<OwnerRefChange>,
    pub release: Vec<OwnerRefChange>,
    pub create: Option<ReplicaSet>,
    pub update: Vec<ReplicaSetUpdate>,
    pub delete: Vec<ReplicaSetToDelete>,
    pub deployment_annotations: BTreeMap<String, String>,
    pub status: DeploymentStatus,
    pub status_changed: bool,
    pub events: Vec<PlannedEvent>,
    pub requeue_after: Option<Duration>,
}

impl DeploymentPlan {
    /// True when the plan writes nothing.
    pub fn is_noop(&self) -> bool {
        self.adopt.is_empty()
            && self.release.is_empty()
            && self.create.is_none()
            && self.update.is_empty()
            && self.delete.is_empty()
            && self.deployment_annotations.is_empty()
            && !self.status_changed
    }
}

fn replicas_of(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn name_of(rs: &ReplicaSet) -> &str {
    rs.metadata.name.as_deref().unwrap_or("")
}

/// The working state of one sync: Kubernetes' in-memory objects between API calls.
struct Sync<'a> {
    d: &'a Deployment,
    params: Params,
    now: Time,
    /// The Deployment's ReplicaSets as the sync leaves them, oldest first.
    replica_sets: Vec<ReplicaSet>,
    /// How they were observed (the same positions; a created one has none).
    observed: Vec<Option<ReplicaSet>>,
    /// Position of the new ReplicaSet (template equal to the Deployment's).
    new_index: Option<usize>,
    /// Positions in the order Kubernetes first wrote them.
    touched: Vec<usize>,
    /// Every ReplicaSet of the namespace (to detect hash collisions).
    namespace_replica_sets: Vec<&'a ReplicaSet>,
    /// Pods controlled by one of the Deployment's ReplicaSets, by that ReplicaSet's UID.
    pods_by_owner: BTreeMap<String, Vec<&'a Pod>>,
    status: DeploymentStatus,
    annotations: BTreeMap<String, String>,
    delete: Vec<ReplicaSetToDelete>,
    events: Vec<PlannedEvent>,
    requeue_after: Option<Duration>,
}

/// Plans one sync of `d`, given every ReplicaSet and Pod of its namespace and `now`.
pub fn plan(
    d: &Deployment,
    replica_sets: &[ReplicaSet],
    pods: &[Pod],
    now: &Time,
) -> Result<DeploymentPlan, DeploymentError> {
    let pods: Vec<&Pod> = pods.iter().collect();
    plan_refs(d, replica_sets, &pods, now)
}

/// [`plan`] over borrowed pods: the controller plans over its cache's shared pods without
/// copying a large Deployment's every pod each sync.
pub fn plan_refs(
    d: &Deployment,
    replica_sets: &[ReplicaSet],
    pods: &[&Pod],
    now: &Time,
) -> Result<DeploymentPlan, DeploymentError> {
    let now = truncate_to_second(now);
    let params = Params::resolve(d)?;
    let selector_spec: Option<&LabelSelector> = d.spec.as_ref().map(|s| &s.selector);
    let selector = Selector::parse(selector_spec)?;
    let observed_status = d.status.clone().unwrap_or_default();

    if selector.is_everything() {
        return Ok(selecting_all(d, observed_status));
    }

    let namespace = &d.metadata.namespace;
    let in_namespace: Vec<&ReplicaSet> = replica_sets
        .iter()
        .filter(|rs| &rs.metadata.namespace == namespace)
        .collect();
    let mut adopt = Vec::new();
    let mut release = Vec::new();
    let mut owned: Vec<ReplicaSet> = Vec::new();
    let reference = owner::controller_ref(
        "apps/v1",
        "Deployment",
        d.metadata.name.as_deref().unwrap_or(""),
        d.metadata.uid.as_deref().unwrap_or(""),
    );
    for rs in &in_namespace {
        let matches = selector.matches(rs.metadata.labels.as_ref());
        match owner::claim(&d.metadata, &rs.metadata, matches) {
            Claim::Owned => owned.push((*rs).clone()),
            Claim::Adopt => {
                let change = OwnerRefChange::adopt(&rs.metadata, reference.clone());
                let mut adopted = (*rs).clone();
                change.apply_to(&mut adopted.metadata);
                adopt.push(change);
                owned.push(adopted);
            }
            Claim::Release => release.push(OwnerRefChange::release(
                &rs.metadata,
                d.metadata.uid.as_deref().unwrap_or(""),
            )),
            Claim::Ignore => {}
        }
    }
    owned.sort_by(history::by_creation);

    let owned_uids: BTreeSet<&str> = owned
        .iter()
        .filter_map(|rs| rs.metadata.uid.as_deref())
        .collect();
    let mut pods_by_owner: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for pod in pods
        .iter()
        .copied()
        .filter(|p| &p.metadata.namespace == namespace)
    {
        if !selector.matches(pod.metadata.labels.as_ref()) {
            continue;
        }
        if let Some(controller) = owner::controller_of(&pod.metadata) {
            if owned_uids.contains(controller.uid.as_str()) {
                pods_by_owner
                    .entry(controller.uid.clone())
                    .or_default()
                    .push(pod);
            }
        }
    }

    let mut sync = Sync {
        d,
        params,
        now,
        observed: owned.iter().cloned().map(Some).collect(),
        replica_sets: owned,
        new_index: None,
        touched: Vec::new(),
        namespace_replica_sets: in_namespace,
        pods_by_owner,
        status: observed_status.clone(),
        annotations: d.metadata.annotations.clone().unwrap_or_default(),
        delete: Vec::new(),
        events: Vec::new(),
        requeue_after: None,
    };
    sync.run();
    Ok(sync.into_plan(adopt, release, &observed_status))
}

/// A Deployment selecting every pod is refused (`SelectingAll`): only the observed
/// generation moves.
fn selecting_all(d: &Deployment, observed: DeploymentStatus) -> DeploymentPlan {
    let mut status = observed.clone();
    let generation = d.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        status.observed_generation = Some(generation);
    }
    DeploymentPlan {
        adopt: Vec::new(),
        release: Vec::new(),
        create: None,
        update: Vec::new(),
        delete: Vec::new(),
        deployment_annotations: BTreeMap::new(),
        status_changed: status::normalized(&status) != status::normalized(&observed),
        status,
        events: vec![PlannedEvent {
            type_: "Warning",
            reason: "SelectingAll",
            message: "This deployment is selecting all pods. A non-empty selector is required."
                .into(),
        }],
        requeue_after: None,
    }
}

impl Sync<'_> {
    /// `syncDeployment` after listing.
    fn run(&mut self) {
        // Kubernetes re-finds the new ReplicaSet in every step; finding it once up front
        // (syncing its annotations and the revision) is the same, done once.
        self.sync_existing_new_replica_set();
        if self.d.metadata.deletion_timestamp.is_some() {
            self.status = self.calculate_status();
            return;
        }
        status::apply_paused_condition(&self.params, &mut self.status, &self.now);
        if self.params.paused || self.is_scaling_event() {
            self.sync_scale();
            return;
        }
        match self.params.strategy {
            Strategy::RollingUpdate => self.rollout_rolling(),
            Strategy::Recreate => self.rollout_recreate(),
        }
    }

    fn old_indices(&self) -> Vec<usize> {
        (0..self.replica_sets.len())
            .filter(|i| Some(*i) != self.new_index)
            .collect()
    }

    fn new_rs(&self) -> Option<&ReplicaSet> {
        self.new_index.map(|i| &self.replica_sets[i])
    }

    fn replicas(&self, index: usize) -> i32 {
        replicas_of(&self.replica_sets[index])
    }

    fn touch(&mut self, index: usize) {
        if !self.touched.contains(&index) {
            self.touched.push(index);
        }
    }

    fn record(&mut self, type_: &'static str, reason: &'static str, message: String) {
        self.events.push(PlannedEvent {
            type_,
            reason,
            message,
        });
    }

    /// Next revision: one past every old ReplicaSet's.
    fn next_revision(&self) -> i64 {
        let old = self.old_indices();
        history::max_revision(old.iter().map(|i| &self.replica_sets[*i])) + 1
    }

    fn set_deployment_revision(&mut self, revision: &str) {
        if self
            .annotations
            .get(REVISION_ANNOTATION)
            .map(String::as_str)
            != Some(revision)
        {
            self.annotations
                .insert(REVISION_ANNOTATION.to_string(), revision.to_string());
        }
    }

    /// `getNewReplicaSet` for an existing new ReplicaSet: sync its annotations (a
    /// rollback raises its revision) and `minReadySeconds`, copy its revision to the
    /// Deployment, and note `FoundNewReplicaSet` if no Progressing condition exists yet.
    fn sync_existing_new_replica_set(&mut self) {
        let template = self.d.spec.as_ref().map(|s| &s.template);
        self.new_index = template.and_then(|template| {
            self.replica_sets.iter().position(|rs| {
                rs.spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| equal_ignore_hash(t, template))
            })
        });
        let Some(index) = self.new_index else {
            return;
        };
        let revision = self.next_revision();
        let (replicas, max_total) = (self.params.replicas, self.params.max_total());
        let rs = &mut self.replica_sets[index];
        let annotations_changed = history::set_new_replica_set_annotations(
            self.d, rs, revision, true, replicas, max_total,
        );
        let spec = rs.spec.get_or_insert_with(ReplicaSetSpec::default);
        let min_ready_changed =
            spec.min_ready_seconds.unwrap_or(0) != self.params.min_ready_seconds;
        if annotations_changed || min_ready_changed {
            spec.min_ready_seconds = Some(self.params.min_ready_seconds);
            self.touch(index);
        }
        let rs = &self.replica_sets[index];
        let rs_revision = history::annotation_value(rs, REVISION_ANNOTATION)
            .unwrap_or_default()
            .to_string();
        let name = name_of(rs).to_string();
        self.set_deployment_revision(&rs_revision);
        if self.params.progress_deadline_seconds.is_some()
            && status::get_condition(&self.status, status::PROGRESSING).is_none()
        {
            let condition = status::new_condition(
                status::PROGRESSING,
                "True",
                status::FOUND_NEW_REPLICA_SET,
                format!("Found new replica set {name:?}"),
                &self.now,
            );
            status::set_condition(&mut self.status, condition);
        }
    }

    /// `getNewReplicaSet` with `createIfNotExisted`: builds the new ReplicaSet
    /// `<deployment>-<hash>` unless one exists. False when a different ReplicaSet already
    /// has that name: the collision count goes up (a new hash next time) and the sync
    /// stops there, as in Kubernetes.
    fn ensure_new_replica_set(&mut self) -> bool {
        if self.new_index.is_some() {
            return true;
        }
        let d = self.d;
        let Some(spec) = d.spec.as_ref() else {
            return false;
        };
        let hash = compute_hash(&spec.template, self.status.collision_count);
        let name = format!("{}-{hash}", d.metadata.name.as_deref().unwrap_or(""));
        if self
            .namespace_replica_sets
            .iter()
            .any(|rs| rs.metadata.name.as_deref() == Some(&name))
        {
            let count = self.status.collision_count.unwrap_or(0);
            self.status.collision_count = Some(count.saturating_add(1));
            self.requeue_after = Some(Duration::ZERO);
            return false;
        }

        let mut template = spec.template.clone();
        let template_meta = template.metadata.get_or_insert_with(ObjectMeta::default);
        let labels = template_meta.labels.get_or_insert_with(BTreeMap::new);
        labels.insert(POD_TEMPLATE_HASH_LABEL.to_string(), hash.clone());
        let labels = labels.clone();
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH_LABEL.to_string(), hash);
        let mut new_rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: d.metadata.namespace.clone(),
                labels: Some(labels),
                owner_references: Some(vec![owner::controller_ref(
                    "apps/v1",
                    "Deployment",
                    d.metadata.name.as_deref().unwrap_or(""),
                    d.metadata.uid.as_deref().unwrap_or(""),
                )]),
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: Some(self.params.min_ready_seconds),
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let revision = self.next_revision();
        self.replica_sets.push(new_rs.clone());
        self.observed.push(None);
        let index = self.replica_sets.len() - 1;
        let count = self.new_replicas_count(index);
        if let Some(spec) = new_rs.spec.as_mut() {
            spec.replicas = Some(count);
        }
        history::set_new_replica_set_annotations(
            d,
            &mut new_rs,
            revision,
            false,
            self.params.replicas,
            self.params.max_total(),
        );
        self.replica_sets[index] = new_rs;
        self.new_index = Some(index);
        self.touch(index);
        if count > 0 {
            self.record(
                "Normal",
                "ScalingReplicaSet",
                format!("Scaled up replica set {name} to {count}"),
            );
        }
        self.set_deployment_revision(&revision.to_string());
        if self.params.progress_deadline_seconds.is_some() {
            let condition = status::new_condition(
                status::PROGRESSING,
                "True",
                status::NEW_REPLICA_SET_CREATED,
                format!("Created new replica set {name:?}"),
                &self.now,
            );
            status::set_condition(&mut self.status, condition);
        }
        true
    }

    /// `NewRSNewReplicas`: Recreate goes straight to `replicas`; RollingUpdate grows
    /// the new ReplicaSet only into room under `replicas + maxSurge` across all.
    fn new_replicas_count(&self, new_index: usize) -> i32 {
        let current = self.replicas(new_index);
        match self.params.strategy {
            Strategy::Recreate => self.params.replicas,
            Strategy::RollingUpdate => {
                let total: i32 = (0..self.replica_sets.len()).map(|i| self.replicas(i)).sum();
                let max_total = self.params.max_total();
                if total >= max_total {
                    return current;
                }
                let room = (max_total - total).min(self.params.replicas - current);
                current + room
            }
        }
    }

    /// `scaleReplicaSet`: sets the size and the desired/max annotations when either is
    /// off; true if the size changed.
    fn scale_replica_set(&mut self, index: usize, new_scale: i32) -> bool {
        let (desired, max) = (self.params.replicas, self.params.max_total());
        let old_scale = self.replicas(index);
        let rs = &mut self.replica_sets[index];
        let size_changed = old_scale != new_scale;
        if !size_changed && !history::replicas_annotations_need_update(rs, desired, max) {
            return false;
        }
        rs.spec.get_or_insert_with(ReplicaSetSpec::default).replicas = Some(new_scale);
        history::set_replicas_annotations(rs, desired, max);
        let name = name_of(rs).to_string();
        self.touch(index);
        if size_changed {
            let direction = if old_scale < new_scale { "up" } else { "down" };
            self.record(
                "Normal",
                "ScalingReplicaSet",
                format!("Scaled {direction} replica set {name} from {old_scale} to {new_scale}"),
            );
        }
        size_changed
    }

    /// `scaleReplicaSetAndRecordEvent`: only when the size differs.
    fn scale_if_needed(&mut self, index: usize, new_scale: i32) -> bool {
        if self.replicas(index) == new_scale {
            return false;
        }
        self.scale_replica_set(index, new_scale)
    }

    /// `isScalingEvent`: an active ReplicaSet whose `desired-replicas` annotation differs
    /// from `spec.replicas`.
    fn is_scaling_event(&self) -> bool {
        self.replica_sets
            .iter()
            .filter(|rs| replicas_of(rs) > 0)
            .any(|rs| {
                history::int_annotation(rs, DESIRED_REPLICAS_ANNOTATION)
                    .is_some_and(|desired| desired != self.params.replicas)
            })
    }

    fn all_refs(&self) -> Vec<&ReplicaSet> {
        self.replica_sets.iter().collect()
    }

    /// `syncDeploymentStatus`'s status (`calculateStatus`).
    fn calculate_status(&self) -> DeploymentStatus {
        let all = self.all_refs();
        status::calculate(
            self.d,
            &self.params,
            &all,
            self.new_rs(),
            &self.status,
            &self.now,
        )
    }

    /// `syncRolloutStatus`, and `requeueStuckDeployment`'s timer.
    fn finish_rollout(&mut self) {
        let all = self.all_refs();
        let new_rs = self.new_rs();
        let status =
            status::rollout_status(self.d, &self.params, &all, new_rs, &self.status, &self.now);
        let check = status::progress_check_after(self.d, &self.params, &status, &self.now);
        self.status = status;
        self.requeue_after = earliest(self.requeue_after, check);
    }

    /// `cleanupDeployment` over the old ReplicaSets as observed at the start of the sync.
    fn clean_up_history(&mut self) {
        let Some(limit) = self.params.revision_history_limit else {
            return;
        };
        let old: Vec<&ReplicaSet> = self
            .old_indices()
            .into_iter()
            .filter_map(|i| self.observed[i].as_ref())
            .collect();
        let doomed: Vec<ReplicaSetToDelete> = history::replica_sets_to_clean_up(&old, limit)
            .into_iter()
            .map(|rs| ReplicaSetToDelete {
                name: name_of(rs).to_string(),
                uid: rs.metadata.uid.clone(),
            })
            .collect();
        self.delete.extend(doomed);
    }

    fn into_plan(
        self,
        adopt: Vec<OwnerRefChange>,
        release: Vec<OwnerRefChange>,
        observed_status: &DeploymentStatus,
    ) -> DeploymentPlan {
        let mut create = None;
        let mut update = Vec::new();
        for index in self.touched {
            let rs = &self.replica_sets[index];
            let Some(before) = &self.observed[index] else {
                create = Some(rs.clone());
                continue;
            };
            let before_annotations = before.metadata.annotations.clone().unwrap_or_default();
            let set_annotations: BTreeMap<String, String> = rs
                .metadata
                .annotations
                .iter()
                .flatten()
                .filter(|(k, v)| before_annotations.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let min_ready = |rs: &ReplicaSet| {
                rs.spec
                    .as_ref()
                    .and_then(|s| s.min_ready_seconds)
                    .unwrap_or(0)
            };
            let unchanged = set_annotations.is_empty()
                && replicas_of(rs) == replicas_of(before)
                && min_ready(rs) == min_ready(before);
            if unchanged {
                continue;
            }
            update.push(ReplicaSetUpdate {
                name: name_of(rs).to_string(),
                uid: rs.metadata.uid.clone(),
                resource_version: rs.metadata.resource_version.clone(),
                replicas: replicas_of(rs),
                min_ready_seconds: min_ready(rs),
                set_annotations,
            });
        }
        let observed_annotations = self.d.metadata.annotations.clone().unwrap_or_default();
        let deployment_annotations = self
            .annotations
            .into_iter()
            .filter(|(k, v)| observed_annotations.get(k) != Some(v))
            .collect();
        let status = status::normalized(&self.status);
        DeploymentPlan {
            adopt,
            release,
            create,
            update,
            delete: self.delete,
            deployment_annotations,
            status_changed: status != status::normalized(observed_status),
            status,
            events: self.events,
            requeue_after: self.requeue_after,
        }
    }
}

fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
