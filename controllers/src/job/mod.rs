//! The Job controller's decisions (kube-controller-manager's `pkg/controller/job`, with
//! the 1.33 defaults: pod replacement policy, delayed terminal conditions, success policy
//! and the pod index label all on), plus the TTL-after-finished deletion.
//!
//! [`plan`] follows `syncJob`: claim pods (adopting orphans with the tracking finalizer),
//! count finished pods, decide whether the Job failed (`backoffLimit`, restarts under
//! `OnFailure`, `activeDeadlineSeconds`, `podFailurePolicy`) or succeeded
//! (`completions`, `successPolicy`), create or delete pods toward `parallelism` (after the
//! failure backoff), handle `suspend`, and track finished pods exactly once through the
//! `batch.kubernetes.io/job-tracking` finalizer and `status.uncountedTerminatedPods`:
//! a finished pod's UID is first written to the status, then its finalizer is removed,
//! then it moves into `succeeded`/`failed`. As in 1.33, a Job first gets the interim
//! `FailureTarget` or `SuccessCriteriaMet` condition and only gets `Failed` or `Complete`
//! once no pod is terminating and every finished pod is counted.
//!
//! Not implemented: `backoffLimitPerIndex`/`maxFailedIndexes` (such a Job is an error).
//! `podFailurePolicy` is honoured (FailJob, Ignore, Count).
//!
//! The loop must keep Kubernetes' expectations: after executing a plan it must not plan
//! again on a pod cache that has not yet seen its creates, deletes and finalizer removals
//! (or it passes the UIDs whose finalizer removal it has not observed to
//! [`plan_with_expectations`]) — a counted pod still showing the finalizer would be counted
//! twice. Statuses are written with the observed `resourceVersion`, so a plan made from a
//! stale Job conflicts instead of landing.

mod backoff;
mod failure_policy;
mod indexes;
mod pods;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::batch::v1::{
    Job, JobCondition, JobStatus, PodFailurePolicy, SuccessPolicy, UncountedTerminatedPods,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};

use crate::owner::{self, Claim};
use crate::pod_state;
use crate::replicaset::nonzero;
use crate::selector::{Selector, SelectorError};
use crate::time::{duration_from_nanos, nanos, nanos_plus_seconds, truncate_to_second};

pub use backoff::{DEFAULT_POD_FAILURE_BACKOFF, MAX_POD_FAILURE_BACKOFF};
pub use pods::{controller_ref_for, PodChange, PodPatch, PodToDelete};

use indexes::OrderedIntervals;

/// Keeps a finished pod around until the Job has counted it.
pub const JOB_TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";
/// A pod's completion index, as an annotation and (same key) a label.
pub const JOB_COMPLETION_INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";
/// The environment variable Indexed Job containers read their index from.
pub const JOB_COMPLETION_INDEX_ENV: &str = "JOB_COMPLETION_INDEX";
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
pub const LEGACY_JOB_NAME_LABEL: &str = "job-name";
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
pub const LEGACY_CONTROLLER_UID_LABEL: &str = "controller-uid";
/// `spec.managedBy` for Jobs this controller runs; any other value is left alone.
pub const JOB_CONTROLLER_NAME: &str = "kubernetes.io/job-controller";
/// Pods created or deleted per sync at most (`MaxPodCreateDeletePerSync`).
pub const MAX_POD_CREATE_DELETE_PER_SYNC: usize = 500;
/// UIDs added to `uncountedTerminatedPods` per sync at most (`MaxUncountedPods`).
pub const MAX_UNCOUNTED_PODS: usize = 500;
/// The shortest requeue Kubernetes uses for a Job (`syncJobBatchPeriod`).
pub const SYNC_JOB_BATCH_PERIOD: Duration = Duration::from_secs(1);

/// Condition types and reasons, as Kubernetes writes them.
pub mod conditions {
    pub const COMPLETE: &str = "Complete";
    pub const FAILED: &str = "Failed";
    pub const SUSPENDED: &str = "Suspended";
    pub const FAILURE_TARGET: &str = "FailureTarget";
    pub const SUCCESS_CRITERIA_MET: &str = "SuccessCriteriaMet";
    pub const REASON_BACKOFF_LIMIT_EXCEEDED: &str = "BackoffLimitExceeded";
    pub const REASON_DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
    pub const REASON_POD_FAILURE_POLICY: &str = "PodFailurePolicy";
    pub const REASON_SUCCESS_POLICY: &str = "SuccessPolicy";
    pub const REASON_COMPLETIONS_REACHED: &str = "CompletionsReached";
}

use conditions::*;

/// The Job cannot be reconciled as written; the loop reports it as an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("invalid selector: {0}")]
    Selector(#[from] SelectorError),
    #[error("spec.manualSelector is true but spec.selector is missing")]
    MissingSelector,
    #[error("an Indexed Job needs spec.completions")]
    IndexedWithoutCompletions,
    #[error("spec.backoffLimitPerIndex is not supported")]
    BackoffLimitPerIndexUnsupported,
}

/// An event Kubernetes would record on the Job (or CronJob).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEvent {
    /// `Normal` or `Warning`.
    pub type_: &'static str,
    pub reason: String,
    pub message: String,
}

impl PlannedEvent {
    pub(crate) fn normal(reason: &str, message: impl Into<String>) -> PlannedEvent {
        PlannedEvent {
            type_: "Normal",
            reason: reason.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn warning(reason: &str, message: impl Into<String>) -> PlannedEvent {
        PlannedEvent {
            type_: "Warning",
            reason: reason.to_string(),
            message: message.into(),
        }
    }

    /// What the loop records for each pod it created (Kubernetes' `PodControl`).
    pub fn pod_created(pod_name: &str) -> PlannedEvent {
        PlannedEvent::normal("SuccessfulCreate", format!("Created pod: {pod_name}"))
    }

    /// What the loop records for each pod it deleted.
    pub fn pod_deleted(pod_name: &str) -> PlannedEvent {
        PlannedEvent::normal("SuccessfulDelete", format!("Deleted pod: {pod_name}"))
    }
}

/// An object to delete with a `uid` precondition and this propagation policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectToDelete {
    pub name: String,
    pub uid: String,
    /// `Foreground` (TTL-after-finished) or `Background` (CronJob history).
    pub propagation_policy: &'static str,
}

/// What one Job sync should do. The loop executes it in field order and stops at the first
/// failure (the next sync re-plans from what then exists):
/// 1. `adopt` / `release`: pod patches ([`PodPatch::strategic_merge_patch`]);
/// 2. `delete`: pods, each after removing its tracking finalizer when the entry says so;
/// 3. `create`: these pods (generateName), in [`crate::replicaset::slow_start_batches`],
///    stopping at the first failing batch; record [`PlannedEvent::pod_created`] per pod;
/// 4. `interim_status` (when set) through the status subresource — it carries the UIDs of
///    the pods about to lose their finalizer, so they are never counted twice;
/// 5. `remove_finalizers`: pod patches;
/// 6. `status` when `status_changed`;
/// 7. `delete_job` (TTL after finished): re-read the Job first and delete only if it
///    still says so;
/// 8. `events`, then sync again after `requeue_after` (if any).
#[derive(Debug, Clone, PartialEq)]
pub struct JobPlan {
    pub adopt: Vec<PodPatch>,
    pub release: Vec<PodPatch>,
    pub delete: Vec<PodToDelete>,
    pub create: Vec<Pod>,
    pub interim_status: Option<JobStatus>,
    pub remove_finalizers: Vec<PodPatch>,
    /// The status once every step succeeded.
    pub status: JobStatus,
    pub status_changed: bool,
    pub delete_job: Option<ObjectToDelete>,
    pub events: Vec<PlannedEvent>,
    pub requeue_after: Option<Duration>,
}

impl JobPlan {
    fn unchanged(status: JobStatus) -> JobPlan {
        JobPlan {
            adopt: Vec::new(),
            release: Vec::new(),
            delete: Vec::new(),
            create: Vec::new(),
            interim_status: None,
            remove_finalizers: Vec::new(),
            status,
            status_changed: false,
            delete_job: None,
            events: Vec::new(),
            requeue_after: None,
        }
    }

    /// True when the plan writes nothing.
    pub fn is_noop(&self) -> bool {
        self.adopt.is_empty()
            && self.release.is_empty()
            && self.delete.is_empty()
            && self.create.is_empty()
            && self.interim_status.is_none()
            && self.remove_finalizers.is_empty()
            && !self.status_changed
            && self.delete_job.is_none()
    }

    fn requeue(&mut self, after: Duration) {
        self.requeue_after = Some(self.requeue_after.map_or(after, |d| d.min(after)));
    }
}

/// The spec with batch/v1 defaults filled in.
#[derive(Debug, Clone)]
struct Params<'a> {
    parallelism: i32,
    completions: Option<i32>,
    backoff_limit: i32,
    indexed: bool,
    suspended: bool,
    active_deadline_seconds: Option<i64>,
    manual_selector: bool,
    /// `podReplacementPolicy: Failed` (the default with a pod failure policy): pods
    /// being deleted are neither failures nor replaced until they are gone.
    only_replace_failed: bool,
    pod_failure_policy: Option<&'a PodFailurePolicy>,
    success_policy: Option<&'a SuccessPolicy>,
    restart_on_failure: bool,
}

impl<'a> Params<'a> {
    fn of(job: &'a Job) -> Result<Params<'a>, JobError> {
        let spec = job.spec.as_ref();
        let get = |f: fn(&'a k8s_openapi::api::batch::v1::JobSpec) -> Option<i32>| spec.and_then(f);
        if spec.and_then(|s| s.backoff_limit_per_index).is_some() {
            return Err(JobError::BackoffLimitPerIndexUnsupported);
        }
        let parallelism = get(|s| s.parallelism);
        let mut completions = get(|s| s.completions);
        // SetDefaults_Job: neither set means one pod, run once.
        if parallelism.is_none() && completions.is_none() {
            completions = Some(1);
        }
        let indexed = spec.and_then(|s| s.completion_mode.as_deref()) == Some("Indexed");
        if indexed && completions.is_none() {
            return Err(JobError::IndexedWithoutCompletions);
        }
        let pod_failure_policy = spec.and_then(|s| s.pod_failure_policy.as_ref());
        let replacement = spec.and_then(|s| s.pod_replacement_policy.as_deref());
        Ok(Params {
            parallelism: parallelism.unwrap_or(1).max(0),
            completions: completions.map(|c| c.max(0)),
            backoff_limit: get(|s| s.backoff_limit).unwrap_or(6),
            indexed,
            suspended: spec.and_then(|s| s.suspend).unwrap_or(false),
            active_deadline_seconds: spec.and_then(|s| s.active_deadline_seconds),
            manual_selector: spec.and_then(|s| s.manual_selector).unwrap_or(false),
            only_replace_failed: replacement == Some("Failed") || pod_failure_policy.is_some(),
            pod_failure_policy,
            success_policy: spec.and_then(|s| s.success_policy.as_ref()),
            restart_on_failure: spec
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|s| s.restart_policy.as_deref())
                == Some("OnFailure"),
        })
    }

    /// The completion count of an Indexed Job (checked present in [`Params::of`]).
    fn index_count(&self) -> i32 {
        self.completions.unwrap_or(0)
    }
}

/// The Job's selector; without `manualSelector` and without a selector (the API server
/// normally generates one on create), the generated `batch.kubernetes.io/controller-uid`
/// selector.
fn selector_of(job: &Job, params: &Params<'_>) -> Result<Selector, JobError> {
    let given = job.spec.as_ref().and_then(|s| s.selector.as_ref());
    match given {
        Some(selector) => Ok(Selector::parse(Some(selector))?),
        None if params.manual_selector => Err(JobError::MissingSelector),
        None => {
            let generated = LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    CONTROLLER_UID_LABEL.to_string(),
                    job.metadata.uid.clone().unwrap_or_default(),
                )])),
                match_expressions: None,
            };
            Ok(Selector::parse(Some(&generated))?)
        }
    }
}

fn find_condition<'c>(conditions: &'c [JobCondition], type_: &str) -> Option<&'c JobCondition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn is_true(conditions: &[JobCondition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == "True")
}

fn conditions_of(job: &Job) -> &[JobCondition] {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or(&[])
}

/// `Complete` or `Failed` is True: nothing left to do but the TTL.
pub fn is_finished(job: &Job) -> bool {
    let conditions = conditions_of(job);
    is_true(conditions, COMPLETE) || is_true(conditions, FAILED)
}

fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &Time,
) -> JobCondition {
    let text = |s: &str| (!s.is_empty()).then(|| s.to_string());
    JobCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: text(reason),
        message: text(message),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

fn reason_of(c: &JobCondition) -> &str {
    c.reason.as_deref().unwrap_or("")
}

fn message_of(c: &JobCondition) -> &str {
    c.message.as_deref().unwrap_or("")
}

/// `ensureJobConditionStatus`: update the condition of that type if anything differs, or
/// append it unless it would be a new False condition. Returns whether anything changed.
fn ensure_condition(
    conditions: &mut Vec<JobCondition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &Time,
) -> bool {
    if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if existing.status != status
            || reason_of(existing) != reason
            || message_of(existing) != message
        {
            *existing = new_condition(type_, status, reason, message, now);
            return true;
        }
        return false;
    }
    if status != "False" {
        conditions.push(new_condition(type_, status, reason, message, now));
        return true;
    }
    false
}

/// The status as the API returns it, to compare: zero counters, empty lists and empty
/// strings are omitted.
fn normalized(status: &JobStatus) -> JobStatus {
    let uncounted = status.uncounted_terminated_pods.as_ref().and_then(|u| {
        let succeeded = u.succeeded.clone().filter(|v| !v.is_empty());
        let failed = u.failed.clone().filter(|v| !v.is_empty());
        (succeeded.is_some() || failed.is_some())
            .then_some(UncountedTerminatedPods { succeeded, failed })
    });
    JobStatus {
        active: status.active.and_then(nonzero),
        completed_indexes: status.completed_indexes.clone().filter(|s| !s.is_empty()),
        completion_time: status.completion_time.clone(),
        conditions: status.conditions.clone().filter(|c| !c.is_empty()),
        failed: status.failed.and_then(nonzero),
        failed_indexes: status.failed_indexes.clone(),
        ready: status.ready.and_then(nonzero),
        start_time: status.start_time.clone(),
        succeeded: status.succeeded.and_then(nonzero),
        terminating: status.terminating.and_then(nonzero),
        uncounted_terminated_pods: uncounted,
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Plans one sync of `job` given the pods of its namespace (pods that stopped matching
/// still carry a controller reference to release).
pub fn plan(job: &Job, pods: &[Pod], now: &Time) -> Result<JobPlan, JobError> {
    plan_with_expectations(job, pods, now, &BTreeSet::new())
}

/// [`plan`] for a loop that removed tracking finalizers its pod cache does not show yet:
/// the pods with these UIDs are taken as already counted (Kubernetes'
/// `finalizerExpectations`).
pub fn plan_with_expectations(
    job: &Job,
    pods: &[Pod],
    now: &Time,
    finalizers_removed: &BTreeSet<String>,
) -> Result<JobPlan, JobError> {
    let now = truncate_to_second(now);
    let observed = job.status.clone().unwrap_or_default();
    let mut plan = JobPlan::unchanged(observed.clone());
    let spec = job.spec.as_ref();
    if spec
        .and_then(|s| s.managed_by.as_deref())
        .is_some_and(|m| m != JOB_CONTROLLER_NAME)
    {
        return Ok(plan);
    }
    if is_finished(job) {
        plan_finished(job, pods, &now, &mut plan);
        return Ok(plan);
    }
    let mode = spec.and_then(|s| s.completion_mode.as_deref());
    if !matches!(mode, None | Some("NonIndexed") | Some("Indexed")) {
        plan.events.push(PlannedEvent::warning(
            "UnknownCompletionMode",
            "Skipped Job sync because completion mode is unknown",
        ));
        return Ok(plan);
    }
    let params = Params::of(job)?;
    let selector = selector_of(job, &params)?;
    let sync = Sync {
        job,
        params,
        now,
        expected: finalizers_removed,
        observed,
        plan,
    };
    Ok(sync.run(&selector, pods))
}

/// One sync in progress: `syncJob`'s in-memory state.
struct Sync<'a> {
    job: &'a Job,
    params: Params<'a>,
    now: Time,
    expected: &'a BTreeSet<String>,
    observed: JobStatus,
    plan: JobPlan,
}

/// Counts that change as the sync decides (`syncJobCtx`).
#[derive(Debug, Default)]
struct Counts {
    active: usize,
    ready: usize,
    terminating: usize,
    succeeded: i32,
    failed: i32,
}

impl<'a> Sync<'a> {
    fn job_uid(&self) -> &str {
        self.job.metadata.uid.as_deref().unwrap_or("")
    }

    /// Counted already, or being uncounted: skipped by the tracking (`getValidPodsWithFilter`).
    fn tracked(&self, pod: &Pod) -> bool {
        pods::has_tracking_finalizer(pod) && !self.expected.contains(pods::uid(pod))
    }

    /// Claims pods like `getPodsForJob`: the Job's own, plus adopted orphans (which get
    /// the tracking finalizer with the adoption, so they count from now on).
    fn claim(&mut self, selector: &Selector, all: &[Pod]) -> Vec<Pod> {
        let mut owned = Vec::new();
        for pod in all
            .iter()
            .filter(|p| p.metadata.namespace == self.job.metadata.namespace)
        {
            let matches = selector.matches(pod.metadata.labels.as_ref());
            match owner::claim(&self.job.metadata, &pod.metadata, matches) {
                Claim::Owned => owned.push(pod.clone()),
                Claim::Adopt => {
                    let patch = PodPatch::new(pod, PodChange::Adopt(controller_ref_for(self.job)));
                    let mut adopted = pod.clone();
                    patch.apply_to(&mut adopted);
                    self.plan.adopt.push(patch);
                    owned.push(adopted);
                }
                Claim::Release => self.plan.release.push(PodPatch::new(
                    pod,
                    PodChange::Release {
                        owner_uid: self.job_uid().to_string(),
                    },
                )),
                Claim::Ignore => {}
            }
        }
        owned
    }

    fn run(mut self, selector: &Selector, all: &[Pod]) -> JobPlan {
        let owned = self.claim(selector, all);
        let params = self.params.clone();
        let active_pods: Vec<&Pod> = owned.iter().filter(|p| pod_state::is_active(p)).collect();
        let uncounted = self
            .observed
            .uncounted_terminated_pods
            .clone()
            .unwrap_or_default();
        let uncounted_succeeded: BTreeSet<String> = uncounted
            .succeeded
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let uncounted_failed: BTreeSet<String> = uncounted
            .failed
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let completions = params.index_count();
        let index_ok = |p: &Pod| !params.indexed || indexes::valid_index(p, completions).is_some();

        // Finished pods not yet in the status (`getNewFinishedPods`).
        let new_succeeded = owned
            .iter()
            .filter(|p| self.tracked(p) && !uncounted_succeeded.contains(pods::uid(p)))
            .filter(|p| index_ok(p) && pods::phase(p) == "Succeeded")
            .count();
        let new_failed: Vec<&Pod> = owned
            .iter()
            .filter(|p| self.tracked(p) && !uncounted_failed.contains(pods::uid(p)))
            .filter(|p| index_ok(p) && pods::is_failed(p, params.only_replace_failed))
            .collect();
        let new_failed_counted = new_failed
            .iter()
            .filter(|p| failure_policy::match_pod(params.pod_failure_policy, p).count_failed)
            .count();
        let mut counts = Counts {
            active: active_pods.len(),
            ready: active_pods
                .iter()
                .filter(|p| pod_state::is_ready(p))
                .count(),
            terminating: owned.iter().filter(|p| pods::is_terminating(p)).count(),
            succeeded: self.observed.succeeded.unwrap_or(0)
                + count(new_succeeded)
                + count(uncounted_succeeded.len()),
            failed: self.observed.failed.unwrap_or(0)
                + count(new_failed_counted)
                + count(uncounted_failed.len()),
        };

        let mut status = self.observed.clone();
        // The first start; a Job created suspended starts when resumed.
        if status.start_time.is_none() && !params.suspended {
            status.start_time = Some(self.now.clone());
        }
        let mut conditions = status.conditions.take().unwrap_or_default();

        // Has the Job already met a terminal criterion?
        let mut finished: Option<JobCondition> = conditions
            .iter()
            .find(|c| c.type_ == SUCCESS_CRITERIA_MET && c.status == "True")
            .cloned();
        if finished.is_none() {
            // The pod failure policy is only evaluated until success criteria are met.
            if let Some(target) = conditions
                .iter()
                .find(|c| c.type_ == FAILURE_TARGET && c.status == "True")
            {
                finished = Some(new_condition(
                    FAILED,
                    "True",
                    reason_of(target),
                    message_of(target),
                    &self.now,
                ));
            } else if let Some(message) = owned
                .iter()
                .filter(|p| pods::is_failed(p, params.only_replace_failed))
                .find_map(|p| {
                    failure_policy::match_pod(params.pod_failure_policy, p).fail_job_message
                })
            {
                finished = Some(new_condition(
                    FAILURE_TARGET,
                    "True",
                    REASON_POD_FAILURE_POLICY,
                    &message,
                    &self.now,
                ));
            }
        }
        if finished.is_none() {
            if counts.failed > params.backoff_limit || self.past_backoff_limit_on_failure(&owned) {
                finished = Some(new_condition(
                    FAILURE_TARGET,
                    "True",
                    REASON_BACKOFF_LIMIT_EXCEEDED,
                    "Job has reached the specified backoff limit",
                    &self.now,
                ));
            } else if let Some(left) = self.active_deadline_left(&status) {
                if left.is_zero() {
                    finished = Some(new_condition(
                        FAILURE_TARGET,
                        "True",
                        REASON_DEADLINE_EXCEEDED,
                        "Job was active longer than specified deadline",
                        &self.now,
                    ));
                } else {
                    self.plan.requeue(left);
                }
            }
        }

        // Indexed Jobs count succeeded indexes, not pods.
        let mut prev_succeeded_indexes = OrderedIntervals::default();
        let mut succeeded_indexes = OrderedIntervals::default();
        if params.indexed {
            prev_succeeded_indexes = OrderedIntervals::parse(
                self.observed.completed_indexes.as_deref().unwrap_or(""),
                completions,
            );
            succeeded_indexes = prev_succeeded_indexes.with_indexes(
                owned
                    .iter()
                    .filter(|p| pods::phase(p) == "Succeeded" && pods::has_tracking_finalizer(p))
                    .filter_map(|p| indexes::valid_index(p, completions)),
            );
            counts.succeeded = succeeded_indexes.total();
            if finished.is_none() {
                if let Some(message) = indexes::match_success_policy(
                    params.success_policy,
                    completions,
                    &succeeded_indexes,
                ) {
                    finished = Some(new_condition(
                        SUCCESS_CRITERIA_MET,
                        "True",
                        REASON_SUCCESS_POLICY,
                        &message,
                        &self.now,
                    ));
                }
            }
        }

        if finished.is_some() {
            // The Job is done: every active pod goes, keeping its finalizer so the pod is
            // counted (as failed, unless the Job succeeded) once it is gone.
            for pod in &active_pods {
                self.plan.delete.push(PodToDelete::new(pod, false));
            }
            counts.ready -= active_pods
                .iter()
                .filter(|p| pod_state::is_ready(p))
                .count();
            counts.terminating += active_pods.len();
            counts.active = 0;
        } else {
            let manage = self.job.metadata.deletion_timestamp.is_none();
            if manage {
                self.manage(&owned, &active_pods, &succeeded_indexes, &mut counts);
            }
            let complete = match params.completions {
                // A work queue: done once any pod succeeded and none is left running.
                None => counts.succeeded > 0 && counts.active == 0,
                Some(completions) => counts.succeeded >= completions && counts.active == 0,
            };
            if complete {
                finished = Some(new_condition(
                    SUCCESS_CRITERIA_MET,
                    "True",
                    REASON_COMPLETIONS_REACHED,
                    "Reached expected number of succeeded pods",
                    &self.now,
                ));
            } else if manage {
                if params.suspended {
                    if ensure_condition(
                        &mut conditions,
                        SUSPENDED,
                        "True",
                        "JobSuspended",
                        "Job suspended",
                        &self.now,
                    ) {
                        self.plan
                            .events
                            .push(PlannedEvent::normal("Suspended", "Job suspended"));
                    }
                } else if ensure_condition(
                    &mut conditions,
                    SUSPENDED,
                    "False",
                    "JobResumed",
                    "Job resumed",
                    &self.now,
                ) {
                    self.plan
                        .events
                        .push(PlannedEvent::normal("Resumed", "Job resumed"));
                    // activeDeadlineSeconds counts continuous activity: it restarts.
                    status.start_time = Some(self.now.clone());
                }
            }
        }

        status.active = Some(count(counts.active));
        status.ready = Some(count(counts.ready));
        status.terminating = Some(count(counts.terminating));
        status.conditions = Some(conditions);
        self.track(
            status,
            &owned,
            finished,
            &counts,
            &prev_succeeded_indexes,
            succeeded_indexes,
            (&uncounted_succeeded, &uncounted_failed),
        );
        self.plan
    }

    /// `pastBackoffLimitOnFailure`: with `restartPolicy: OnFailure` failures are container
    /// restarts of running or pending pods.
    fn past_backoff_limit_on_failure(&self, owned: &[Pod]) -> bool {
        if !self.params.restart_on_failure {
            return false;
        }
        let restarts: i64 = owned
            .iter()
            .filter(|p| matches!(pods::phase(p), "Running" | "Pending"))
            .filter_map(|p| p.status.as_ref())
            .flat_map(|s| {
                s.init_container_statuses
                    .iter()
                    .flatten()
                    .chain(s.container_statuses.iter().flatten())
            })
            .map(|c| i64::from(c.restart_count))
            .sum();
        if self.params.backoff_limit == 0 {
            restarts > 0
        } else {
            restarts >= i64::from(self.params.backoff_limit)
        }
    }

    /// Time left before `activeDeadlineSeconds` (zero once exceeded); `None` when no
    /// deadline applies (none set, not started, or suspended).
    fn active_deadline_left(&self, status: &JobStatus) -> Option<Duration> {
        let seconds = self.params.active_deadline_seconds?;
        let start = status.start_time.as_ref()?;
        if self.params.suspended {
            return None;
        }
        let deadline = nanos_plus_seconds(start, seconds);
        Some(duration_from_nanos(deadline - nanos(&self.now)))
    }

    /// Pods to delete, most expendable first (`activePodsForRemoval`): for an Indexed Job
    /// duplicates and invalid indexes always, then by Kubernetes' deletion order.
    fn pods_for_removal<'p>(&self, active: &[&'p Pod], at_least: usize) -> Vec<&'p Pod> {
        let (mut remove, mut keep) = if self.params.indexed {
            indexes::split_duplicates(active, self.params.index_count())
        } else {
            (Vec::new(), active.to_vec())
        };
        if remove.len() < at_least {
            pod_state::sort_for_deletion(&mut keep);
            let more = (at_least - remove.len()).min(keep.len());
            remove.extend(keep.into_iter().take(more));
        }
        remove
    }

    /// `manageJob`: delete pods when suspended or above the wanted count, else create the
    /// missing ones unless the failure backoff says to wait.
    fn manage(
        &mut self,
        owned: &[Pod],
        active: &[&Pod],
        succeeded_indexes: &OrderedIntervals,
        counts: &mut Counts,
    ) {
        let params = self.params.clone();
        let delete_pods = |this: &mut Self, doomed: Vec<&Pod>, counts: &mut Counts| {
            for pod in doomed {
                this.plan.delete.push(PodToDelete::new(pod, true));
                counts.active -= 1;
                counts.terminating += 1;
                if pod_state::is_ready(pod) {
                    counts.ready -= 1;
                }
            }
        };
        if params.suspended {
            let doomed = self.pods_for_removal(active, active.len());
            delete_pods(self, doomed, counts);
            return;
        }
        let active_count = i64::try_from(active.len()).unwrap_or(i64::MAX);
        let want = match params.completions {
            // A work queue keeps whatever runs once one pod succeeded.
            None if counts.succeeded > 0 => active_count,
            None => i64::from(params.parallelism),
            Some(completions) => (i64::from(completions) - i64::from(counts.succeeded))
                .min(i64::from(params.parallelism))
                .max(0),
        };
        let surplus = usize::try_from((active_count - want).max(0)).unwrap_or(0);
        let mut doomed = self.pods_for_removal(active, surplus);
        doomed.truncate(MAX_POD_CREATE_DELETE_PER_SYNC);
        if !doomed.is_empty() {
            // One sync deletes or creates, never both.
            delete_pods(self, doomed, counts);
            return;
        }
        // Pods still terminating block their replacements when only failed pods are
        // replaced.
        let terminating = if params.only_replace_failed {
            i64::try_from(counts.terminating).unwrap_or(0)
        } else {
            0
        };
        let missing = want - terminating - active_count;
        if missing <= 0 {
            return;
        }
        let record = backoff::record(owned, params.only_replace_failed);
        let wait = backoff::remaining(&record, &self.now);
        if !wait.is_zero() {
            // Kubernetes also reports 0 active pods while backing off; the real count is
            // kept here.
            self.plan.requeue(wait.max(SYNC_JOB_BATCH_PERIOD));
            return;
        }
        let missing = usize::try_from(missing)
            .unwrap_or(0)
            .min(MAX_POD_CREATE_DELETE_PER_SYNC);
        let created = if params.indexed {
            let mut non_pending =
                succeeded_indexes.with_indexes(indexes::indexes_of(active.iter().copied()));
            if params.only_replace_failed {
                non_pending = non_pending.with_indexes(indexes::indexes_of(
                    owned.iter().filter(|p| pods::is_terminating(p)),
                ));
            }
            let pending = indexes::first_pending(&non_pending, missing, params.index_count());
            pods::pods_to_create(self.job, params.manual_selector, Some(&pending), 0)
        } else {
            pods::pods_to_create(self.job, params.manual_selector, None, missing)
        };
        counts.active += created.len();
        self.plan.create = created;
    }

    /// `trackJobStatusAndRemoveFinalizers`: record finished pods in
    /// `uncountedTerminatedPods` (or `completedIndexes`), remove their finalizers, move
    /// them into the counters, and set the terminal condition once nothing is pending.
    #[allow(clippy::too_many_arguments)]
    fn track(
        &mut self,
        mut status: JobStatus,
        owned: &[Pod],
        mut finished: Option<JobCondition>,
        counts: &Counts,
        prev_succeeded_indexes: &OrderedIntervals,
        mut succeeded_indexes: OrderedIntervals,
        (uncounted_succeeded, uncounted_failed): (&BTreeSet<String>, &BTreeSet<String>),
    ) {
        let params = self.params.clone();
        let completions = params.index_count();
        let mut with_finalizer: BTreeSet<String> = owned
            .iter()
            .filter(|p| self.tracked(p))
            .map(|p| pods::uid(p).to_string())
            .collect();
        let mut uncounted = status.uncounted_terminated_pods.take().unwrap_or_default();
        let mut list_succeeded = uncounted.succeeded.take().unwrap_or_default();
        let mut list_failed = uncounted.failed.take().unwrap_or_default();
        move_counted(
            &mut status,
            &mut list_succeeded,
            &mut list_failed,
            &with_finalizer,
        );

        let mut order: Vec<&Pod> = owned.iter().collect();
        if params.indexed {
            // Completed indexes are introduced in order.
            order.sort_by_key(|p| indexes::completion_index(p).unwrap_or(-1));
        }
        let failed_condition = finished
            .as_ref()
            .is_some_and(|c| c.type_ != SUCCESS_CRITERIA_MET);
        let job_deleting = self.job.metadata.deletion_timestamp.is_some();
        let mut to_remove: Vec<&Pod> = Vec::new();
        let mut new_indexes: Vec<i32> = Vec::new();
        let mut reached_max = false;
        for pod in order {
            if !self.tracked(pod) {
                continue;
            }
            let uid = pods::uid(pod).to_string();
            let failed = pods::is_failed(pod, params.only_replace_failed);
            let succeeded = pods::phase(pod) == "Succeeded";
            // A running pod keeps its finalizer until the Job is done with it.
            if !(job_deleting || finished.is_some() || succeeded || failed) {
                continue;
            }
            to_remove.push(pod);
            if succeeded && !uncounted_failed.contains(&uid) {
                if params.indexed {
                    if let Some(index) = indexes::valid_index(pod, completions) {
                        if !prev_succeeded_indexes.has(index) {
                            new_indexes.push(index);
                        }
                    }
                } else if !uncounted_succeeded.contains(&uid) {
                    list_succeeded.push(uid);
                }
            } else if failed || failed_condition {
                // Once the Job failed, every unfinished pod counts as failed.
                let index_ok = !params.indexed || indexes::valid_index(pod, completions).is_some();
                if !uncounted_failed.contains(&uid)
                    && index_ok
                    && failure_policy::match_pod(params.pod_failure_policy, pod).count_failed
                {
                    list_failed.push(uid);
                }
            }
            if new_indexes.len() + list_succeeded.len() + list_failed.len() >= MAX_UNCOUNTED_PODS {
                // Keep the status small; the rest waits for the next sync.
                reached_max = true;
                break;
            }
        }
        if params.indexed {
            succeeded_indexes = succeeded_indexes.with_indexes(new_indexes);
            let text = succeeded_indexes.to_string();
            status.completed_indexes = (!text.is_empty()).then_some(text);
            status.succeeded = Some(succeeded_indexes.total());
        }
        let mut conditions = status.conditions.take().unwrap_or_default();
        if let Some(condition) = finished.take() {
            finished = Some(match condition.type_.as_str() {
                FAILURE_TARGET => {
                    // Recorded before the pods may go, then Failed once they are gone.
                    let failed = new_condition(
                        FAILED,
                        "True",
                        reason_of(&condition),
                        message_of(&condition),
                        &self.now,
                    );
                    conditions.push(condition);
                    failed
                }
                SUCCESS_CRITERIA_MET => {
                    let complete = new_condition(
                        COMPLETE,
                        "True",
                        reason_of(&condition),
                        message_of(&condition),
                        &self.now,
                    );
                    if !is_true(&conditions, SUCCESS_CRITERIA_MET) {
                        conditions.push(condition);
                    }
                    complete
                }
                _ => condition,
            });
        }
        status.conditions = Some(conditions);
        status.uncounted_terminated_pods = Some(UncountedTerminatedPods {
            succeeded: Some(list_succeeded.clone()).filter(|l| !l.is_empty()),
            failed: Some(list_failed.clone()).filter(|l| !l.is_empty()),
        });
        let interim = status.clone();

        // From here on the finalizer removals are assumed to succeed.
        for pod in &to_remove {
            with_finalizer.remove(pods::uid(pod));
            self.plan
                .remove_finalizers
                .push(PodPatch::new(pod, PodChange::RemoveTrackingFinalizer));
        }
        move_counted(
            &mut status,
            &mut list_succeeded,
            &mut list_failed,
            &with_finalizer,
        );
        status.uncounted_terminated_pods = Some(UncountedTerminatedPods {
            succeeded: Some(list_succeeded.clone()).filter(|l| !l.is_empty()),
            failed: Some(list_failed.clone()).filter(|l| !l.is_empty()),
        });
        if reached_max {
            self.plan.requeue(SYNC_JOB_BATCH_PERIOD);
        } else if let Some(condition) = finished {
            // `enactJobFinished`: only with every pod counted and none terminating.
            let all_counted = list_succeeded.is_empty() && list_failed.is_empty();
            if all_counted && counts.terminating == 0 {
                let mut conditions = status.conditions.take().unwrap_or_default();
                ensure_condition(
                    &mut conditions,
                    &condition.type_,
                    &condition.status,
                    reason_of(&condition),
                    message_of(&condition),
                    &self.now,
                );
                status.conditions = Some(conditions);
                if condition.type_ == COMPLETE {
                    status.completion_time = Some(self.now.clone());
                    let succeeded = status.succeeded.unwrap_or(0);
                    if params.completions.is_some_and(|c| succeeded > c) {
                        self.plan.events.push(PlannedEvent::warning(
                            "TooManySucceededPods",
                            "Too many succeeded pods running after completion count reached",
                        ));
                    }
                    self.plan
                        .events
                        .push(PlannedEvent::normal("Completed", "Job completed"));
                } else {
                    self.plan.events.push(PlannedEvent::warning(
                        reason_of(&condition),
                        message_of(&condition),
                    ));
                }
                self.plan_ttl(&status);
            }
        }

        let observed = normalized(&self.observed);
        if !self.plan.remove_finalizers.is_empty() && normalized(&interim) != observed {
            self.plan.interim_status = Some(interim);
        }
        self.plan.status_changed = normalized(&status) != observed;
        self.plan.status = status;
    }

    /// A Job that finishes in this sync with a TTL is looked at again when it expires.
    fn plan_ttl(&mut self, status: &JobStatus) {
        let mut finished = self.job.clone();
        finished.status = Some(status.clone());
        plan_ttl(&finished, &self.now, &mut self.plan);
    }
}

/// `cleanUncountedPodsWithoutFinalizers`: uncounted pods whose finalizer is gone are
/// counted.
fn move_counted(
    status: &mut JobStatus,
    succeeded: &mut Vec<String>,
    failed: &mut Vec<String>,
    with_finalizer: &BTreeSet<String>,
) {
    let before = succeeded.len();
    succeeded.retain(|uid| with_finalizer.contains(uid));
    if succeeded.len() != before {
        status.succeeded = Some(status.succeeded.unwrap_or(0) + count(before - succeeded.len()));
    }
    let before = failed.len();
    failed.retain(|uid| with_finalizer.contains(uid));
    if failed.len() != before {
        status.failed = Some(status.failed.unwrap_or(0) + count(before - failed.len()));
    }
}

/// When the Job finished: the transition time of its True `Complete` or `Failed`.
fn finish_time(job: &Job) -> Option<&Time> {
    conditions_of(job)
        .iter()
        .find(|c| (c.type_ == COMPLETE || c.type_ == FAILED) && c.status == "True")?
        .last_transition_time
        .as_ref()
}

/// The TTL-after-finished controller: delete the Job (foreground, so its pods go first)
/// once `ttlSecondsAfterFinished` passed since it finished, else look again then.
fn plan_ttl(job: &Job, now: &Time, plan: &mut JobPlan) {
    let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
        return;
    };
    if job.metadata.deletion_timestamp.is_some() {
        return;
    }
    let Some(finished) = finish_time(job) else {
        return;
    };
    let expire = nanos_plus_seconds(finished, i64::from(ttl));
    if expire <= nanos(now) {
        plan.delete_job = Some(ObjectToDelete {
            name: job.metadata.name.clone().unwrap_or_default(),
            uid: job.metadata.uid.clone().unwrap_or_default(),
            propagation_policy: "Foreground",
        });
    } else {
        plan.requeue(duration_from_nanos(expire - nanos(now)));
    }
}

/// A finished Job: no pod is created or deleted any more; the tracking finalizers left on
/// its pods go (`cleanupPodFinalizers`), and the TTL runs.
fn plan_finished(job: &Job, pods: &[Pod], now: &Time, plan: &mut JobPlan) {
    let uid = job.metadata.uid.as_deref().unwrap_or("");
    for pod in pods {
        if pod.metadata.namespace == job.metadata.namespace
            && owner::is_controlled_by(&pod.metadata, uid)
            && pods::has_tracking_finalizer(pod)
        {
            plan.remove_finalizers
                .push(PodPatch::new(pod, PodChange::RemoveTrackingFinalizer));
        }
    }
    plan_ttl(job, now, plan);
}

/// Tracking finalizers to remove from pods no running Job will count (Kubernetes'
/// orphan-pod worker): pods without a controller, and pods whose controlling Job is gone
/// or finished. `jobs` are the Jobs of the pods' namespaces.
pub fn orphan_finalizer_removals(pods: &[Pod], jobs: &[Job]) -> Vec<PodPatch> {
    pods.iter()
        .filter(|pod| pods::has_tracking_finalizer(pod))
        .filter(|pod| match owner::controller_of(&pod.metadata) {
            None => true,
            Some(reference) if reference.kind != "Job" || reference.api_version != "batch/v1" => {
                false
            }
            Some(reference) => match jobs.iter().find(|j| {
                j.metadata.uid.as_deref() == Some(reference.uid.as_str())
                    && j.metadata.namespace == pod.metadata.namespace
            }) {
                None => true,
                Some(job) => {
                    let external = job
                        .spec
                        .as_ref()
                        .and_then(|s| s.managed_by.as_deref())
                        .is_some_and(|m| m != JOB_CONTROLLER_NAME);
                    !external && is_finished(job)
                }
            },
        })
        .map(|pod| PodPatch::new(pod, PodChange::RemoveTrackingFinalizer))
        .collect()
}
