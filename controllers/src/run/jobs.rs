//! Executes the Job and CronJob planners' decisions in their order, stopping at the first
//! failed write. The Job loop also remembers which pods' tracking finalizers it removed until
//! the cache shows it, so no finished pod is counted twice.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::exec::{self, Written};
use super::{in_namespace, is_stale, requeue, stale, waiting_on_pods, written, Context, LoopError};
use crate::cronjob;
use crate::events::EventType;
use crate::job::{self, PlannedEvent, PodChange, JOB_TRACKING_FINALIZER};

/// Pods (by UID) whose tracking finalizer a Job removed, until the cache shows it gone.
#[derive(Debug, Default)]
pub struct RemovedFinalizers {
    by_job: Mutex<HashMap<String, BTreeSet<String>>>,
}

impl RemovedFinalizers {
    fn remember(&self, job: &str, pod: String) {
        self.by_job
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(job.to_string())
            .or_default()
            .insert(pod);
    }

    /// The removals the cache (`pods`) does not show yet; forgets the others.
    fn pending(&self, job: &str, pods: &[Pod]) -> BTreeSet<String> {
        let mut by_job = self.by_job.lock().unwrap_or_else(|e| e.into_inner());
        let Some(removed) = by_job.get_mut(job) else {
            return BTreeSet::new();
        };
        removed.retain(|uid| {
            pods.iter().any(|p| {
                p.metadata.uid.as_deref() == Some(uid.as_str())
                    && p.finalizers().iter().any(|f| f == JOB_TRACKING_FINALIZER)
            })
        });
        let pending = removed.clone();
        if removed.is_empty() {
            by_job.remove(job);
        }
        pending
    }
}

async fn patch_pod(api: &Api<Pod>, patch: &job::PodPatch) -> Result<Written, LoopError> {
    match api
        .patch(
            &patch.name,
            &PatchParams::default(),
            &Patch::Strategic(patch.strategic_merge_patch()),
        )
        .await
    {
        Ok(_) => Ok(Written::Done),
        Err(e) if is_stale(&e) => Ok(Written::Stale),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn reconcile_job(
    job: Arc<Job>,
    context: Arc<Context>,
) -> Result<Action, LoopError> {
    super::caches_ready(&context).await?;
    let namespace = job.namespace().unwrap_or_default();
    let owner = job.uid().unwrap_or_default();
    let pods = in_namespace(&context.pods, &namespace);
    if waiting_on_pods(&context, &owner, &pods) {
        return stale();
    }
    let removed = context.removed_finalizers.pending(&owner, &pods);
    let now = Time(Timestamp::now());
    let plan = job::plan_with_expectations(&job, &pods, &now, &removed)
        .map_err(|e| LoopError::Plan(e.to_string()))?;
    if plan.is_noop() {
        exec::record_planned(&context.job_events, job.as_ref(), &plan.events);
        return Ok(requeue(plan.requeue_after));
    }
    let pod_api: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);
    let job_api: Api<Job> = Api::namespaced(context.client.clone(), &namespace);
    for patch in plan.adopt.iter().chain(&plan.release) {
        written!(patch_pod(&pod_api, patch));
    }
    for doomed in &plan.delete {
        if doomed.remove_tracking_finalizer_first {
            let patch = job::PodPatch {
                name: doomed.name.clone(),
                uid: doomed.uid.clone(),
                change: PodChange::RemoveTrackingFinalizer,
            };
            written!(patch_pod(&pod_api, &patch));
            context
                .removed_finalizers
                .remember(&owner, doomed.uid.clone());
        }
        if exec::delete(&pod_api, &doomed.name, Some(&doomed.uid)).await? == Written::Done {
            context.expectations.deleted(&owner, doomed.uid.clone());
            exec::record_planned(
                &context.job_events,
                job.as_ref(),
                &[PlannedEvent::pod_deleted(&doomed.name)],
            );
        }
    }
    let (created, failure) = exec::create_all(&pod_api, &plan.create).await;
    for name in created {
        context
            .expectations
            .created(&owner, format!("{namespace}/{name}"));
        exec::record_planned(
            &context.job_events,
            job.as_ref(),
            &[PlannedEvent::pod_created(&name)],
        );
    }
    if let Some(e) = failure {
        context.job_events.record(
            job.object_ref(&()),
            EventType::Warning,
            "FailedCreate",
            &e.to_string(),
        );
        return Err(e.into());
    }
    if let Some(interim) = &plan.interim_status {
        written!(exec::patch_status(&job_api, job.as_ref(), interim));
    }
    for patch in &plan.remove_finalizers {
        written!(patch_pod(&pod_api, patch));
        context
            .removed_finalizers
            .remember(&owner, patch.uid.clone());
    }
    if plan.status_changed {
        written!(exec::patch_status(&job_api, job.as_ref(), &plan.status));
    }
    if let Some(expired) = &plan.delete_job {
        // Re-read: the TTL may have been changed since the cache saw the Job.
        if let Ok(Some(live)) = job_api.get_opt(&expired.name).await {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(expired.uid.clone()),
                    resource_version: None,
                }),
                propagation_policy: Some(propagation(expired.propagation_policy)),
                ..DeleteParams::default()
            };
            if live.uid().as_deref() == Some(expired.uid.as_str()) {
                match job_api.delete(&expired.name, &params).await {
                    Ok(_) => {}
                    Err(e) if is_stale(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    exec::record_planned(&context.job_events, job.as_ref(), &plan.events);
    Ok(requeue(plan.requeue_after))
}

fn propagation(policy: &str) -> kube::api::PropagationPolicy {
    match policy {
        "Foreground" => kube::api::PropagationPolicy::Foreground,
        "Orphan" => kube::api::PropagationPolicy::Orphan,
        _ => kube::api::PropagationPolicy::Background,
    }
}

pub(super) async fn reconcile_cron_job(
    cron_job: Arc<CronJob>,
    context: Arc<Context>,
) -> Result<Action, LoopError> {
    super::caches_ready(&context).await?;
    let namespace = cron_job.namespace().unwrap_or_default();
    let jobs = in_namespace(&context.jobs, &namespace);
    let now = Time(Timestamp::now());
    let plan = match cronjob::plan(&cron_job, &jobs, &now) {
        Ok(plan) => plan,
        Err(e) => {
            // A schedule that cannot be read waits for the user to change it.
            context.cron_job_events.record(
                cron_job.object_ref(&()),
                EventType::Warning,
                e.reason(),
                &e.to_string(),
            );
            return Ok(Action::await_change());
        }
    };
    let job_api: Api<Job> = Api::namespaced(context.client.clone(), &namespace);
    let cron_api: Api<CronJob> = Api::namespaced(context.client.clone(), &namespace);
    for old in &plan.delete {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(old.uid.clone()),
                resource_version: None,
            }),
            propagation_policy: Some(propagation(old.propagation_policy)),
            ..DeleteParams::default()
        };
        match job_api.delete(&old.name, &params).await {
            Ok(_) => {}
            Err(e) if is_stale(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut status = plan.status_changed.then(|| plan.status.clone());
    if let Some(new_job) = &plan.create {
        let created = match job_api.create(&PostParams::default(), new_job).await {
            Ok(created) => Some(created),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                // Already created by an earlier sync: count it if it is ours.
                job_api.get_opt(&new_job.name_any()).await?.filter(|j| {
                    j.owner_references()
                        .iter()
                        .any(|r| Some(&r.uid) == cron_job.metadata.uid.as_ref())
                })
            }
            Err(e) => {
                context.cron_job_events.record(
                    cron_job.object_ref(&()),
                    EventType::Warning,
                    "FailedCreate",
                    &format!("Error creating job: {e}"),
                );
                if let Some(status) = &status {
                    exec::patch_status(&cron_api, cron_job.as_ref(), status).await?;
                }
                return Err(e.into());
            }
        };
        if let Some(created) = created {
            status = Some(plan.status_after_create(&created));
            exec::record_planned(
                &context.cron_job_events,
                cron_job.as_ref(),
                &[cronjob::CronJobPlan::created_event(&created)],
            );
        }
    }
    if let Some(status) = &status {
        written!(exec::patch_status(&cron_api, cron_job.as_ref(), status));
    }
    exec::record_planned(&context.cron_job_events, cron_job.as_ref(), &plan.events);
    Ok(requeue(plan.requeue_after))
}
