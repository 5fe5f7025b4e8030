//! The Job's pods: the tracking finalizer, what counts as a failure, when a pod finished
//! (for the failure backoff), the pods to create from the template, and the pod patches
//! the loop sends.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;

use crate::owner;
use crate::pod_state;

use super::{
    CONTROLLER_UID_LABEL, JOB_COMPLETION_INDEX_ANNOTATION, JOB_COMPLETION_INDEX_ENV,
    JOB_NAME_LABEL, JOB_TRACKING_FINALIZER, LEGACY_CONTROLLER_UID_LABEL, LEGACY_JOB_NAME_LABEL,
};

pub(crate) fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

pub(crate) fn uid(pod: &Pod) -> &str {
    pod.metadata.uid.as_deref().unwrap_or("")
}

pub(crate) fn name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or("")
}

pub(crate) fn has_tracking_finalizer(pod: &Pod) -> bool {
    pod.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == JOB_TRACKING_FINALIZER)
}

/// Deleted but not yet in a terminal phase (`controller.CountTerminatingPods`).
pub(crate) fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some() && !pod_state::is_terminal(pod)
}

/// `isPodFailed`: the Failed phase, or — unless only failed pods are replaced — deleted
/// before succeeding (an orphaned or evicted pod may never reach the Failed phase).
pub(crate) fn is_failed(pod: &Pod, only_replace_failed: bool) -> bool {
    if phase(pod) == "Failed" {
        return true;
    }
    if only_replace_failed {
        return false;
    }
    pod.metadata.deletion_timestamp.is_some() && phase(pod) != "Succeeded"
}

/// When the pod finished (`getFinishedTime`): the last container termination if every
/// container terminated, else when Ready turned False, else the deletion time less the
/// grace period, else the creation time.
pub(crate) fn finished_at(pod: &Pod) -> Option<Timestamp> {
    let status = pod.status.as_ref();
    let containers = status.and_then(|s| s.container_statuses.as_deref());
    if let Some(containers) = containers.filter(|c| !c.is_empty()) {
        let ends: Option<Vec<Timestamp>> = containers
            .iter()
            .map(|c| {
                c.state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .and_then(|t| t.finished_at.as_ref())
                    .map(|t| t.0)
            })
            .collect();
        if let Some(latest) = ends.and_then(|e| e.into_iter().max()) {
            return Some(latest);
        }
    }
    if let Some(condition) = pod_state::ready_condition(pod) {
        if condition.status == "False" {
            if let Some(time) = &condition.last_transition_time {
                return Some(time.0);
            }
        }
    }
    if let Some(deleted) = &pod.metadata.deletion_timestamp {
        let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(0);
        return Some(Timestamp::from_second(deleted.0.as_second() - grace).unwrap_or(deleted.0));
    }
    pod.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// The controller reference a Job puts on its pods.
pub fn controller_ref_for(job: &Job) -> OwnerReference {
    owner::controller_ref(
        "batch/v1",
        "Job",
        job.metadata.name.as_deref().unwrap_or_default(),
        job.metadata.uid.as_deref().unwrap_or_default(),
    )
}

/// The labels the API server adds to the template of a Job without `manualSelector`
/// (`generateSelector`), each only when the template does not set it already.
pub(crate) fn generated_labels(job: &Job) -> [(&'static str, String); 4] {
    let name = job.metadata.name.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    [
        (LEGACY_JOB_NAME_LABEL, name.clone()),
        (JOB_NAME_LABEL, name),
        (LEGACY_CONTROLLER_UID_LABEL, uid.clone()),
        (CONTROLLER_UID_LABEL, uid),
    ]
}

/// Kubernetes' generated names take 5 random characters after a prefix of at most this.
const MAX_GENERATED_NAME_LENGTH: usize = 58;

/// `<job>-<index>-`, the index part kept when the Job name is long
/// (`podGenerateNameWithIndex`).
fn generate_name_with_index(job_name: &str, index: i32) -> String {
    let suffix = format!("-{index}-");
    let prefix = format!("{job_name}{suffix}");
    if prefix.len() <= MAX_GENERATED_NAME_LENGTH {
        return prefix;
    }
    let keep = MAX_GENERATED_NAME_LENGTH - suffix.len();
    let mut cut = keep.min(job_name.len());
    while !job_name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &job_name[..cut])
}

/// `<job>-` (`getPodsPrefix`), or the bare name when the dash would make it invalid.
fn generate_name(job_name: &str) -> String {
    const MAX_NAME_LENGTH: usize = 253;
    if job_name.len() < MAX_NAME_LENGTH {
        format!("{job_name}-")
    } else {
        job_name.to_string()
    }
}

/// `JOB_COMPLETION_INDEX` read from the index label (`addCompletionIndexEnvVariable`),
/// unless the container defines it itself.
fn add_index_env(spec: &mut PodSpec) {
    let containers = spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut());
    for container in containers {
        let env = container.env.get_or_insert_with(Vec::new);
        if env.iter().any(|e| e.name == JOB_COMPLETION_INDEX_ENV) {
            continue;
        }
        env.push(EnvVar {
            name: JOB_COMPLETION_INDEX_ENV.to_string(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: format!("metadata.labels['{JOB_COMPLETION_INDEX_ANNOTATION}']"),
                }),
                ..EnvVarSource::default()
            }),
        });
    }
}

/// The pods to create: the template with the tracking finalizer, the controller
/// reference, the generated labels (when the selector is not manual) and, for each
/// completion index, its annotation, label, hostname and generateName. `indexes` is
/// `None` for a NonIndexed Job, which creates `count` identical pods.
pub(crate) fn pods_to_create(
    job: &Job,
    manual_selector: bool,
    indexes: Option<&[i32]>,
    count: usize,
) -> Vec<Pod> {
    let job_name = job.metadata.name.as_deref().unwrap_or("");
    let template = job.spec.as_ref().map(|s| &s.template);
    let template_meta = template
        .and_then(|t| t.metadata.clone())
        .unwrap_or_default();
    let mut spec = template.and_then(|t| t.spec.clone()).unwrap_or_default();
    let mut labels: BTreeMap<String, String> = template_meta.labels.unwrap_or_default();
    if !manual_selector {
        for (key, value) in generated_labels(job) {
            labels.entry(key.to_string()).or_insert(value);
        }
    }
    let mut finalizers = template_meta.finalizers.unwrap_or_default();
    if !finalizers.iter().any(|f| f == JOB_TRACKING_FINALIZER) {
        finalizers.push(JOB_TRACKING_FINALIZER.to_string());
    }
    if indexes.is_some() {
        add_index_env(&mut spec);
    }
    let base = Pod {
        metadata: ObjectMeta {
            generate_name: Some(generate_name(job_name)),
            namespace: job.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: template_meta.annotations,
            finalizers: Some(finalizers),
            owner_references: Some(vec![controller_ref_for(job)]),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    };
    let Some(indexes) = indexes else {
        return vec![base; count];
    };
    indexes
        .iter()
        .map(|&index| {
            let mut pod = base.clone();
            let text = index.to_string();
            pod.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(JOB_COMPLETION_INDEX_ANNOTATION.to_string(), text.clone());
            pod.metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(JOB_COMPLETION_INDEX_ANNOTATION.to_string(), text);
            pod.metadata.generate_name = Some(generate_name_with_index(job_name, index));
            if let Some(spec) = pod.spec.as_mut() {
                spec.hostname = Some(format!("{job_name}-{index}"));
            }
            pod
        })
        .collect()
}

/// A change to one pod's metadata.
#[derive(Debug, Clone, PartialEq)]
pub enum PodChange {
    /// Adoption: add the Job's controller reference and the tracking finalizer.
    Adopt(OwnerReference),
    /// Release: drop every reference to the Job (by UID) and the tracking finalizer.
    Release { owner_uid: String },
    /// The pod has been counted (or needs no counting): drop the tracking finalizer.
    RemoveTrackingFinalizer,
}

/// A pod patch. The loop sends [`PodPatch::strategic_merge_patch`] (what Kubernetes'
/// `PodControllerRefManager` and `removeTrackingFinalizerPatch` send); it names the pod's
/// `uid`, so a same-named replacement is never touched.
#[derive(Debug, Clone, PartialEq)]
pub struct PodPatch {
    pub name: String,
    pub uid: String,
    pub change: PodChange,
}

impl PodPatch {
    pub(crate) fn new(pod: &Pod, change: PodChange) -> PodPatch {
        PodPatch {
            name: name(pod).to_string(),
            uid: uid(pod).to_string(),
            change,
        }
    }

    /// The `application/strategic-merge-patch+json` body.
    pub fn strategic_merge_patch(&self) -> serde_json::Value {
        let metadata = match &self.change {
            PodChange::Adopt(reference) => serde_json::json!({
                "uid": self.uid,
                "ownerReferences": [reference],
                "finalizers": [JOB_TRACKING_FINALIZER],
            }),
            PodChange::Release { owner_uid } => serde_json::json!({
                "uid": self.uid,
                "ownerReferences": [{"$patch": "delete", "uid": owner_uid}],
                "$deleteFromPrimitiveList/finalizers": [JOB_TRACKING_FINALIZER],
            }),
            PodChange::RemoveTrackingFinalizer => serde_json::json!({
                "uid": self.uid,
                "$deleteFromPrimitiveList/finalizers": [JOB_TRACKING_FINALIZER],
            }),
        };
        serde_json::json!({ "metadata": metadata })
    }

    /// Applies the change to a local copy (tests and simulations).
    pub fn apply_to(&self, pod: &mut Pod) {
        let meta = &mut pod.metadata;
        match &self.change {
            PodChange::Adopt(reference) => {
                let references = meta.owner_references.get_or_insert_with(Vec::new);
                references.retain(|r| r.uid != reference.uid);
                references.push(reference.clone());
                let finalizers = meta.finalizers.get_or_insert_with(Vec::new);
                if !finalizers.iter().any(|f| f == JOB_TRACKING_FINALIZER) {
                    finalizers.push(JOB_TRACKING_FINALIZER.to_string());
                }
            }
            PodChange::Release { owner_uid } => {
                if let Some(references) = meta.owner_references.as_mut() {
                    references.retain(|r| &r.uid != owner_uid);
                }
                if let Some(finalizers) = meta.finalizers.as_mut() {
                    finalizers.retain(|f| f != JOB_TRACKING_FINALIZER);
                }
            }
            PodChange::RemoveTrackingFinalizer => {
                if let Some(finalizers) = meta.finalizers.as_mut() {
                    finalizers.retain(|f| f != JOB_TRACKING_FINALIZER);
                }
            }
        }
        if meta.owner_references.as_ref().is_some_and(Vec::is_empty) {
            meta.owner_references = None;
        }
        if meta.finalizers.as_ref().is_some_and(Vec::is_empty) {
            meta.finalizers = None;
        }
    }
}

/// A pod to delete, with a `uid` precondition. When `remove_tracking_finalizer_first`,
/// the loop first sends [`PodChange::RemoveTrackingFinalizer`]: pods removed to scale
/// down or suspend are not counted as failures (`deleteJobPods`); pods removed because
/// the Job finished keep the finalizer until they are counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodToDelete {
    pub name: String,
    pub uid: String,
    pub remove_tracking_finalizer_first: bool,
}

impl PodToDelete {
    pub(crate) fn new(pod: &Pod, remove_tracking_finalizer_first: bool) -> PodToDelete {
        PodToDelete {
            name: name(pod).to_string(),
            uid: uid(pod).to_string(),
            remove_tracking_finalizer_first,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn long_job_names_keep_the_index_in_generated_names() {
        assert_eq!(generate_name_with_index("pi", 3), "pi-3-");
        let long = "a".repeat(70);
        let name = generate_name_with_index(&long, 12);
        assert_eq!(name.len(), MAX_GENERATED_NAME_LENGTH);
        assert!(name.ends_with("-12-"));
        assert_eq!(generate_name("pi"), "pi-");
    }

    #[test]
    fn patches_match_what_kubernetes_sends() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "p-uid", "finalizers": ["other", JOB_TRACKING_FINALIZER],
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "j",
                    "uid": "j-uid", "controller": true}]}
        }))
        .unwrap();
        let release = PodPatch::new(
            &pod,
            PodChange::Release {
                owner_uid: "j-uid".into(),
            },
        );
        assert_eq!(
            release.strategic_merge_patch(),
            serde_json::json!({"metadata": {"uid": "p-uid",
                "ownerReferences": [{"$patch": "delete", "uid": "j-uid"}],
                "$deleteFromPrimitiveList/finalizers": [JOB_TRACKING_FINALIZER]}})
        );
        let mut released = pod.clone();
        release.apply_to(&mut released);
        assert_eq!(released.metadata.owner_references, None);
        assert_eq!(
            released.metadata.finalizers,
            Some(vec!["other".to_string()])
        );

        let adopt = PodPatch::new(
            &released,
            PodChange::Adopt(owner::controller_ref("batch/v1", "Job", "k", "k-uid")),
        );
        let patch = adopt.strategic_merge_patch();
        assert_eq!(patch["metadata"]["ownerReferences"][0]["uid"], "k-uid");
        assert_eq!(patch["metadata"]["finalizers"][0], JOB_TRACKING_FINALIZER);
        adopt.apply_to(&mut released);
        assert!(has_tracking_finalizer(&released));
        assert!(owner::is_controlled_by(&released.metadata, "k-uid"));
    }

    #[test]
    fn finish_time_lookups_in_order() {
        let pod = |status: serde_json::Value, meta: serde_json::Value| -> Pod {
            let mut json = serde_json::json!({"metadata": meta, "status": status});
            json["metadata"]["creationTimestamp"] = "1970-01-01T00:00:05Z".into();
            serde_json::from_value(json).unwrap()
        };
        let containers = pod(
            serde_json::json!({"containerStatuses": [
                {"name": "a", "image": "", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 1, "finishedAt": "1970-01-01T00:01:00Z"}}},
                {"name": "b", "image": "", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 0, "finishedAt": "1970-01-01T00:02:00Z"}}}
            ], "conditions": [{"type": "Ready", "status": "False",
                "lastTransitionTime": "1970-01-01T00:03:00Z"}]}),
            serde_json::json!({}),
        );
        assert_eq!(finished_at(&containers).unwrap().as_second(), 120);
        let ready_false = pod(
            serde_json::json!({"containerStatuses": [
                {"name": "a", "image": "", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"running": {}}}
            ], "conditions": [{"type": "Ready", "status": "False",
                "lastTransitionTime": "1970-01-01T00:03:00Z"}]}),
            serde_json::json!({}),
        );
        assert_eq!(finished_at(&ready_false).unwrap().as_second(), 180);
        let deleted = pod(
            serde_json::json!({}),
            serde_json::json!({"deletionTimestamp": "1970-01-01T00:04:00Z",
                "deletionGracePeriodSeconds": 30}),
        );
        assert_eq!(finished_at(&deleted).unwrap().as_second(), 210);
        let created = pod(serde_json::json!({}), serde_json::json!({}));
        assert_eq!(finished_at(&created).unwrap().as_second(), 5);
    }
}
