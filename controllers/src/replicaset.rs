//! The ReplicaSet controller's decisions (kube-controller-manager's
//! `pkg/controller/replicaset`): which pods it owns (adopting matching orphans, releasing
//! owned pods that stopped matching), how many pods to create or which to delete to reach
//! `spec.replicas`, and the status to write.
//!
//! The loop around [`plan`] must also keep Kubernetes' "expectations": after executing a
//! plan it must not act on a cache that has not yet seen those creates and deletes, or it
//! would create or delete the same pods twice.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

use crate::owner::{self, Claim, OwnerRefChange};
use crate::pod_state;
use crate::selector::{Selector, SelectorError};
use crate::time::truncate_to_second;

/// At most this many pods are created or deleted per sync (kube-controller-manager's
/// `BurstReplicas`); the rest wait for the next sync.
pub const BURST_REPLICAS: usize = 500;

/// Creates go out in batches of 1, 2, 4, … so a failing quota or webhook costs one
/// request, not hundreds (`controller.SlowStartInitialBatchSize`).
pub const SLOW_START_INITIAL_BATCH_SIZE: usize = 1;

/// The condition type the loop sets when creating or deleting pods failed.
pub const REPLICA_FAILURE: &str = "ReplicaFailure";

/// The batch sizes `slowStartBatch` would use for `count` creates: the loop sends one
/// batch concurrently and stops at the first batch with an error.
pub fn slow_start_batches(count: usize) -> Vec<usize> {
    let mut batches = Vec::new();
    let mut remaining = count;
    let mut size = SLOW_START_INITIAL_BATCH_SIZE.max(1);
    while remaining > 0 {
        let batch = size.min(remaining);
        batches.push(batch);
        remaining -= batch;
        size *= 2;
    }
    batches
}

/// The ReplicaSet cannot be reconciled as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaSetError {
    #[error("invalid selector: {0}")]
    Selector(#[from] SelectorError),
}

/// A pod to delete; the loop deletes with a `uid` precondition so a same-named
/// replacement is never hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodToDelete {
    pub name: String,
    pub uid: String,
}

/// What one ReplicaSet sync should do, in this order: adopt and release pods, create
/// `create` copies of `pod_to_create` (in [`slow_start_batches`]) or delete `delete`,
/// then write `status` if `status_changed` (or [`ReplicaSetPlan::status_after_failure`]
/// when a create or delete failed), and sync again after `requeue_after`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaSetPlan {
    pub adopt: Vec<OwnerRefChange>,
    pub release: Vec<OwnerRefChange>,
    /// Number of pods to create (at most [`BURST_REPLICAS`]).
    pub create: usize,
    /// The pod to create `create` times (set whenever `create > 0`).
    pub pod_to_create: Option<Pod>,
    /// Pods to delete, most expendable first (at most [`BURST_REPLICAS`]).
    pub delete: Vec<PodToDelete>,
    /// The status as of this sync, assuming the creates and deletes succeed.
    pub status: ReplicaSetStatus,
    /// `status` differs from what the ReplicaSet reports now.
    pub status_changed: bool,
    /// Sync again then: the earliest moment a ready pod becomes available.
    pub requeue_after: Option<Duration>,
    observed_failure: Option<ReplicaSetCondition>,
    /// Active owned pods minus desired replicas, to name a failure.
    surplus: i64,
}

impl ReplicaSetPlan {
    /// True when the plan writes nothing (adoption, pods or status).
    pub fn is_noop(&self) -> bool {
        self.adopt.is_empty()
            && self.release.is_empty()
            && self.create == 0
            && self.delete.is_empty()
            && !self.status_changed
    }

    /// The status to write when creating or deleting pods failed with `message`: a
    /// `ReplicaFailure` condition (`FailedCreate`/`FailedDelete`), kept as it was if one
    /// is already reported, as Kubernetes does.
    pub fn status_after_failure(&self, message: &str, now: &Time) -> ReplicaSetStatus {
        let mut status = self.status.clone();
        let condition = self.observed_failure.clone().unwrap_or_else(|| {
            let reason = match self.surplus {
                s if s < 0 => "FailedCreate",
                s if s > 0 => "FailedDelete",
                _ => "",
            };
            ReplicaSetCondition {
                type_: REPLICA_FAILURE.to_string(),
                status: "True".to_string(),
                reason: Some(reason.to_string()),
                message: Some(message.to_string()),
                last_transition_time: Some(truncate_to_second(now)),
            }
        });
        let mut conditions = status.conditions.take().unwrap_or_default();
        conditions.retain(|c| c.type_ != REPLICA_FAILURE);
        conditions.push(condition);
        status.conditions = Some(conditions);
        status
    }
}

fn desired_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn min_ready_seconds(rs: &ReplicaSet) -> i32 {
    rs.spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0)
}

/// The controller reference a ReplicaSet puts on its pods.
pub fn controller_ref_for(rs: &ReplicaSet) -> OwnerReference {
    owner::controller_ref(
        "apps/v1",
        "ReplicaSet",
        rs.metadata.name.as_deref().unwrap_or_default(),
        rs.metadata.uid.as_deref().unwrap_or_default(),
    )
}

/// `<name>-`, unless that would make an invalid name (longer than 253 characters).
fn generate_name_prefix(name: &str) -> String {
    const MAX_NAME_LENGTH: usize = 253;
    if name.len() < MAX_NAME_LENGTH {
        format!("{name}-")
    } else {
        name.to_string()
    }
}

/// The pod the ReplicaSet creates (`controller.GetPodFromTemplate`): the template's
/// labels, annotations, finalizers and spec, `generateName: <rs-name>-`, the namespace
/// and the controller reference.
pub fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template = rs.spec.as_ref().and_then(|s| s.template.as_ref());
    let template_meta = template
        .and_then(|t| t.metadata.clone())
        .unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name_prefix(
                rs.metadata.name.as_deref().unwrap_or(""),
            )),
            namespace: rs.metadata.namespace.clone(),
            labels: template_meta.labels,
            annotations: template_meta.annotations,
            finalizers: template_meta.finalizers,
            owner_references: Some(vec![controller_ref_for(rs)]),
            ..ObjectMeta::default()
        },
        spec: Some(template.and_then(|t| t.spec.clone()).unwrap_or_default()),
        status: None,
    }
}

fn pod_name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// Template labels all present on the pod (`fullyLabeledReplicas`).
fn fully_labeled(pod: &Pod, template_labels: &BTreeMap<String, String>) -> bool {
    let labels = pod.metadata.labels.as_ref();
    template_labels
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The API omits zero counts; compare and write them the same way.
pub(crate) fn nonzero<T: Default + PartialEq>(value: T) -> Option<T> {
    (value != T::default()).then_some(value)
}

fn normalized(status: &ReplicaSetStatus) -> ReplicaSetStatus {
    ReplicaSetStatus {
        replicas: status.replicas,
        fully_labeled_replicas: status.fully_labeled_replicas.and_then(nonzero),
        ready_replicas: status.ready_replicas.and_then(nonzero),
        available_replicas: status.available_replicas.and_then(nonzero),
        observed_generation: status.observed_generation.and_then(nonzero),
        terminating_replicas: status.terminating_replicas.and_then(nonzero),
        conditions: status.conditions.clone().filter(|c| !c.is_empty()),
    }
}

/// Plans one sync of `rs` given the pods of its namespace (the loop passes the whole
/// namespace: pods that stopped matching still carry a controller reference to release).
/// The pods are borrowed (`Pod`, `&Pod` or the cache's `Arc<Pod>`): nothing is copied.
pub fn plan<P: Borrow<Pod>>(
    rs: &ReplicaSet,
    pods: &[P],
    now: &Time,
) -> Result<ReplicaSetPlan, ReplicaSetError> {
    let now = truncate_to_second(now);
    let spec = rs.spec.as_ref();
    let selector = Selector::parse(spec.map(|s| &s.selector))?;
    let min_ready = min_ready_seconds(rs);
    let desired = desired_replicas(rs).max(0);

    // Inactive pods are neither claimed nor counted (FilterActivePods before claimPods).
    let candidates = pods.iter().map(Borrow::borrow).filter(|p: &&Pod| {
        p.metadata.namespace == rs.metadata.namespace && pod_state::is_active(p)
    });
    let mut owned: Vec<&Pod> = Vec::new();
    let mut adopt = Vec::new();
    let mut release = Vec::new();
    for pod in candidates {
        let matches = selector.matches(pod.metadata.labels.as_ref());
        match owner::claim(&rs.metadata, &pod.metadata, matches) {
            Claim::Owned => owned.push(pod),
            Claim::Adopt => {
                adopt.push(OwnerRefChange::adopt(&pod.metadata, controller_ref_for(rs)));
                owned.push(pod);
            }
            Claim::Release => release.push(OwnerRefChange::release(
                &pod.metadata,
                rs.metadata.uid.as_deref().unwrap_or_default(),
            )),
            Claim::Ignore => {}
        }
    }

    let surplus = owned.len() as i64 - i64::from(desired);
    let mut create = 0;
    let mut delete = Vec::new();
    // A ReplicaSet being deleted only reports status; the garbage collector removes pods.
    if rs.metadata.deletion_timestamp.is_none() {
        if surplus < 0 {
            create = usize::try_from(-surplus)
                .unwrap_or(usize::MAX)
                .min(BURST_REPLICAS);
        } else if surplus > 0 {
            let count = usize::try_from(surplus)
                .unwrap_or(usize::MAX)
                .min(BURST_REPLICAS);
            // Kubernetes ranks against the pods of every ReplicaSet with the same owner;
            // only this ReplicaSet's pods are known here.
            delete = pod_state::choose_pods_to_delete(&owned, &owned, count)
                .into_iter()
                .map(|p| PodToDelete {
                    name: pod_name(p),
                    uid: p.metadata.uid.clone().unwrap_or_default(),
                })
                .collect();
        }
    }

    let template_labels = spec
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully_labeled_count = owned
        .iter()
        .filter(|p| fully_labeled(p, &template_labels))
        .count();
    let ready_count = owned.iter().filter(|p| pod_state::is_ready(p)).count();
    let available_count = owned
        .iter()
        .filter(|p| pod_state::is_available(p, min_ready, &now))
        .count();

    let observed = rs.status.clone().unwrap_or_default();
    let observed_failure = observed
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == REPLICA_FAILURE)
        .cloned();
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let conditions: Vec<ReplicaSetCondition> = observed
        .conditions
        .iter()
        .flatten()
        .filter(|c| c.type_ != REPLICA_FAILURE)
        .cloned()
        .collect();
    let status = normalized(&ReplicaSetStatus {
        replicas: count(owned.len()),
        fully_labeled_replicas: Some(count(fully_labeled_count)),
        ready_replicas: Some(count(ready_count)),
        available_replicas: Some(count(available_count)),
        observed_generation: rs.metadata.generation,
        terminating_replicas: None,
        conditions: Some(conditions),
    });
    let status_changed = status != normalized(&observed);

    let requeue_after = owned
        .iter()
        .filter_map(|p| pod_state::time_until_available(p, min_ready, &now))
        .min();

    Ok(ReplicaSetPlan {
        adopt,
        release,
        create,
        pod_to_create: (create > 0).then(|| pod_from_template(rs)),
        delete,
        status,
        status_changed,
        requeue_after,
        observed_failure,
        surplus,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::{at, pod, replica_set, time};

    fn web_rs(replicas: i32, min_ready_seconds: i32) -> ReplicaSet {
        replica_set(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "default", "uid": "rs-uid", "generation": 3},
            "spec": {
                "replicas": replicas,
                "minReadySeconds": min_ready_seconds,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web", "tier": "fe"}, "annotations": {"a": "b"}},
                    "spec": {"containers": [{"name": "c", "image": "nginx"}]}
                }
            }
        }))
    }

    /// A running pod owned by the ReplicaSet, ready since `ready_at` (or not ready).
    fn owned_pod(name: &str, created: i64, ready_at: Option<i64>) -> Pod {
        let conditions = match ready_at {
            Some(t) => {
                serde_json::json!([{"type": "Ready", "status": "True", "lastTransitionTime": at(t)}])
            }
            None => serde_json::json!([{"type": "Ready", "status": "False"}]),
        };
        pod(serde_json::json!({
            "metadata": {
                "name": name, "namespace": "default", "uid": format!("uid-{name}"),
                "creationTimestamp": at(created),
                "labels": {"app": "web", "tier": "fe"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc",
                    "uid": "rs-uid", "controller": true, "blockOwnerDeletion": true}]
            },
            "spec": {"nodeName": "n1", "containers": []},
            "status": {"phase": "Running", "conditions": conditions}
        }))
    }

    #[test]
    fn scales_up_with_pods_from_the_template() {
        let rs = web_rs(3, 0);
        let pods = vec![owned_pod("web-abc-1", 10, Some(20))];
        let plan = plan(&rs, &pods, &time(100)).unwrap();
        assert_eq!(plan.create, 2);
        assert!(plan.delete.is_empty());
        let template = plan.pod_to_create.unwrap();
        assert_eq!(template.metadata.generate_name.as_deref(), Some("web-abc-"));
        assert_eq!(template.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(template.metadata.labels.unwrap()["tier"], "fe");
        assert_eq!(template.metadata.annotations.unwrap()["a"], "b");
        let reference = &template.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (reference.kind.as_str(), reference.uid.as_str()),
            ("ReplicaSet", "rs-uid")
        );
        assert_eq!(reference.controller, Some(true));
        assert_eq!(
            template.spec.unwrap().containers[0].image.as_deref(),
            Some("nginx")
        );
        assert_eq!(plan.status.replicas, 1);
        assert_eq!(plan.status.observed_generation, Some(3));
    }

    #[test]
    fn creates_and_deletes_are_capped_by_the_burst() {
        let plan = plan::<Pod>(&web_rs(2000, 0), &[], &time(100)).unwrap();
        assert_eq!(plan.create, BURST_REPLICAS);
        assert_eq!(slow_start_batches(10), [1, 2, 4, 3]);
        assert_eq!(slow_start_batches(0), Vec::<usize>::new());
        assert_eq!(
            slow_start_batches(BURST_REPLICAS).iter().sum::<usize>(),
            BURST_REPLICAS
        );
    }

    #[test]
    fn scales_down_deleting_the_most_expendable_pods() {
        let rs = web_rs(2, 0);
        let pods = vec![
            owned_pod("ready-long", 1, Some(10)),
            owned_pod("not-ready", 1, None),
            owned_pod("ready-recently", 1, Some(50)),
            owned_pod("ready-mid", 1, Some(30)),
        ];
        let plan = plan(&rs, &pods, &time(100)).unwrap();
        assert_eq!(plan.create, 0);
        let names: Vec<&str> = plan.delete.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["not-ready", "ready-recently"]);
        assert_eq!(plan.delete[0].uid, "uid-not-ready");
        // Status is what was observed before the deletes (as in Kubernetes).
        assert_eq!(plan.status.replicas, 4);
        assert_eq!(plan.status.ready_replicas, Some(3));
    }

    #[test]
    fn adopts_matching_orphans_and_releases_non_matching_owned_pods() {
        let rs = web_rs(2, 0);
        let mut orphan = owned_pod("orphan", 1, Some(10));
        orphan.metadata.owner_references = None;
        let mut relabeled = owned_pod("relabeled", 1, Some(10));
        relabeled.metadata.labels = Some([("app".to_string(), "debug".to_string())].into());
        let mut someone_elses = owned_pod("foreign", 1, Some(10));
        someone_elses.metadata.owner_references.as_mut().unwrap()[0].uid = "other".into();
        let mut deleting_orphan = owned_pod("deleting-orphan", 1, Some(10));
        deleting_orphan.metadata.owner_references = None;
        deleting_orphan.metadata.deletion_timestamp = Some(time(90));
        let mut other_namespace = owned_pod("elsewhere", 1, Some(10));
        other_namespace.metadata.owner_references = None;
        other_namespace.metadata.namespace = Some("other".into());
        let pods = vec![
            owned_pod("mine", 1, Some(10)),
            orphan,
            relabeled,
            someone_elses,
            deleting_orphan,
            other_namespace,
        ];
        let plan = plan(&rs, &pods, &time(100)).unwrap();
        assert_eq!(plan.adopt.len(), 1);
        assert_eq!(plan.adopt[0].name, "orphan");
        assert_eq!(plan.adopt[0].owner_references[0].uid, "rs-uid");
        assert_eq!(plan.release.len(), 1);
        assert_eq!(plan.release[0].name, "relabeled");
        assert!(plan.release[0].owner_references.is_empty());
        // mine + orphan make the two replicas: nothing to create or delete.
        assert_eq!((plan.create, plan.delete.len()), (0, 0));
        assert_eq!(plan.status.replicas, 2);
    }

    #[test]
    fn terminal_and_terminating_pods_are_not_counted() {
        let rs = web_rs(2, 0);
        let mut failed = owned_pod("failed", 1, None);
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        let mut terminating = owned_pod("terminating", 1, Some(10));
        terminating.metadata.deletion_timestamp = Some(time(95));
        let pods = vec![owned_pod("ok", 1, Some(10)), failed, terminating];
        let plan = plan(&rs, &pods, &time(100)).unwrap();
        assert_eq!(plan.create, 1);
        assert_eq!(plan.status.replicas, 1);
    }

    #[test]
    fn status_counts_respect_min_ready_seconds_and_requeue_for_availability() {
        let rs = web_rs(4, 30);
        let mut partly_labeled = owned_pod("partly-labeled", 1, Some(10));
        partly_labeled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove("tier");
        let pods = vec![
            owned_pod("available", 1, Some(10)),
            owned_pod("ready-not-yet-available", 1, Some(90)),
            owned_pod("not-ready", 1, None),
            partly_labeled,
        ];
        let plan = plan(&rs, &pods, &time(100)).unwrap();
        assert_eq!(plan.status.replicas, 4);
        assert_eq!(plan.status.fully_labeled_replicas, Some(3));
        assert_eq!(plan.status.ready_replicas, Some(3));
        assert_eq!(plan.status.available_replicas, Some(2));
        // Ready at 90 + 30s → available once 120 has passed: requeue at 121.
        assert_eq!(plan.requeue_after, Some(Duration::from_secs(21)));
        assert!(plan.status_changed);
    }

    #[test]
    fn unchanged_state_plans_nothing() {
        let mut rs = web_rs(2, 0);
        let pods = vec![owned_pod("a", 1, Some(10)), owned_pod("b", 2, Some(10))];
        let first = plan(&rs, &pods, &time(100)).unwrap();
        assert!(first.status_changed);
        rs.status = Some(first.status.clone());
        let second = plan(&rs, &pods, &time(200)).unwrap();
        assert!(second.is_noop(), "{second:?}");
        assert_eq!(second.requeue_after, None);
    }

    #[test]
    fn replica_failure_is_set_by_the_hook_and_cleared_by_a_clean_sync() {
        let rs = web_rs(3, 0);
        let plan = plan::<Pod>(&rs, &[], &time(100)).unwrap();
        let failed =
            plan.status_after_failure("pods \"web-abc-x\" is forbidden: quota", &time(100));
        let condition = failed
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == REPLICA_FAILURE)
            .unwrap();
        assert_eq!(condition.reason.as_deref(), Some("FailedCreate"));
        assert_eq!(condition.status, "True");
        assert!(condition.message.as_ref().unwrap().contains("quota"));

        let mut failing = rs.clone();
        failing.status = Some(failed.clone());
        let again = super::plan::<Pod>(&failing, &[], &time(130)).unwrap();
        // A clean plan drops the condition; a second failure keeps the first one's time.
        assert!(again.status.conditions.is_none());
        let still = again.status_after_failure("other", &time(130));
        let kept = still
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == REPLICA_FAILURE)
            .unwrap();
        assert_eq!(kept.last_transition_time, Some(time(100)));
        assert!(kept.message.unwrap().contains("quota"));
    }

    #[test]
    fn deleting_replica_set_only_reports_status() {
        let mut rs = web_rs(0, 0);
        rs.metadata.deletion_timestamp = Some(time(50));
        let pods = vec![owned_pod("a", 1, Some(10))];
        let plan = plan(&rs, &pods, &time(100)).unwrap();
        assert!(plan.delete.is_empty());
        assert_eq!(plan.status.replicas, 1);
    }

    #[test]
    fn invalid_selector_is_an_error() {
        let mut rs = web_rs(1, 0);
        rs.spec.as_mut().unwrap().selector = serde_json::from_value(serde_json::json!({
            "matchExpressions": [{"key": "app", "operator": "Around"}]
        }))
        .unwrap();
        assert!(matches!(
            plan::<Pod>(&rs, &[], &time(1)),
            Err(ReplicaSetError::Selector(_))
        ));
    }
}
