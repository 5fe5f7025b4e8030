//! Deployment status: the counts summed from the ReplicaSets (`calculateStatus`), the
//! `Available` and `Progressing` conditions with Kubernetes' reasons and messages
//! (`syncRolloutStatus`, `checkPausedConditions`), when to check the progress deadline
//! again (`requeueStuckDeployment`), and the verdict `kubectl rollout status` draws.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::spec::Params;
use crate::replicaset::nonzero;
use crate::time::{duration_from_nanos, nanos, nanos_plus_seconds};

pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
pub const REPLICA_FAILURE: &str = "ReplicaFailure";

pub const MINIMUM_REPLICAS_AVAILABLE: &str = "MinimumReplicasAvailable";
pub const MINIMUM_REPLICAS_UNAVAILABLE: &str = "MinimumReplicasUnavailable";
pub const NEW_REPLICA_SET_CREATED: &str = "NewReplicaSetCreated";
pub const FOUND_NEW_REPLICA_SET: &str = "FoundNewReplicaSet";
pub const REPLICA_SET_UPDATED: &str = "ReplicaSetUpdated";
pub const NEW_REPLICA_SET_AVAILABLE: &str = "NewReplicaSetAvailable";
pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
pub const DEPLOYMENT_PAUSED: &str = "DeploymentPaused";
pub const DEPLOYMENT_RESUMED: &str = "DeploymentResumed";

pub fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: &Time,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message),
        last_update_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

pub fn get_condition<'a>(
    status: &'a DeploymentStatus,
    type_: &str,
) -> Option<&'a DeploymentCondition> {
    status
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

fn reason(condition: &DeploymentCondition) -> &str {
    condition.reason.as_deref().unwrap_or("")
}

/// `SetDeploymentCondition`: same status and reason is no change at all (not even the
/// message); same status keeps the transition time; the condition moves to the end.
pub fn set_condition(status: &mut DeploymentStatus, mut condition: DeploymentCondition) {
    if let Some(current) = get_condition(status, &condition.type_) {
        if current.status == condition.status && reason(current) == reason(&condition) {
            return;
        }
        if current.status == condition.status {
            condition.last_transition_time = current.last_transition_time.clone();
        }
    }
    remove_condition(status, &condition.type_.clone());
    status
        .conditions
        .get_or_insert_with(Vec::new)
        .push(condition);
}

pub fn remove_condition(status: &mut DeploymentStatus, type_: &str) {
    if let Some(conditions) = status.conditions.as_mut() {
        conditions.retain(|c| c.type_ != type_);
        if conditions.is_empty() {
            status.conditions = None;
        }
    }
}

/// The API omits zero counts and empty lists; compare statuses that way.
pub fn normalized(status: &DeploymentStatus) -> DeploymentStatus {
    DeploymentStatus {
        available_replicas: status.available_replicas.and_then(nonzero),
        collision_count: status.collision_count,
        conditions: status.conditions.clone().filter(|c| !c.is_empty()),
        observed_generation: status.observed_generation.and_then(nonzero),
        ready_replicas: status.ready_replicas.and_then(nonzero),
        replicas: status.replicas.and_then(nonzero),
        terminating_replicas: status.terminating_replicas.and_then(nonzero),
        unavailable_replicas: status.unavailable_replicas.and_then(nonzero),
        updated_replicas: status.updated_replicas.and_then(nonzero),
    }
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn sum(replica_sets: &[&ReplicaSet], field: impl Fn(&ReplicaSet) -> i32) -> i32 {
    replica_sets.iter().map(|rs| field(rs)).sum()
}

pub fn status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map_or(0, |s| s.replicas)
}

pub fn status_ready(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0)
}

pub fn status_available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

/// `calculateStatus`: counts from the ReplicaSets' own status (`replicas`, `updated`,
/// `ready`, `available`), the observed generation, and the `Available` condition
/// (available ≥ replicas − maxUnavailable). `current` carries the conditions so far.
pub fn calculate(
    d: &Deployment,
    params: &Params,
    all: &[&ReplicaSet],
    new_rs: Option<&ReplicaSet>,
    current: &DeploymentStatus,
    now: &Time,
) -> DeploymentStatus {
    let available = sum(all, status_available);
    let total_spec = sum(all, spec_replicas);
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(sum(all, status_replicas)),
        updated_replicas: Some(new_rs.map_or(0, status_replicas)),
        ready_replicas: Some(sum(all, status_ready)),
        available_replicas: Some(available),
        // More available than desired happens while scaling down: not negative.
        unavailable_replicas: Some((total_spec - available).max(0)),
        collision_count: current.collision_count,
        conditions: current.conditions.clone(),
        terminating_replicas: None,
    };
    let condition = if available >= params.min_available() {
        new_condition(
            AVAILABLE,
            "True",
            MINIMUM_REPLICAS_AVAILABLE,
            "Deployment has minimum availability.".into(),
            now,
        )
    } else {
        new_condition(
            AVAILABLE,
            "False",
            MINIMUM_REPLICAS_UNAVAILABLE,
            "Deployment does not have minimum availability.".into(),
            now,
        )
    };
    set_condition(&mut status, condition);
    status
}

/// `DeploymentComplete`: every replica updated and available, and the spec observed.
pub fn is_complete(d: &Deployment, params: &Params, status: &DeploymentStatus) -> bool {
    let replicas = params.replicas;
    status.updated_replicas.unwrap_or(0) == replicas
        && status.replicas.unwrap_or(0) == replicas
        && status.available_replicas.unwrap_or(0) == replicas
        && status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// `DeploymentProgressing`: more updated, fewer old, more ready or more available pods
/// than the previous status said.
fn is_progressing(old: &DeploymentStatus, new: &DeploymentStatus) -> bool {
    let get = |v: Option<i32>| v.unwrap_or(0);
    let old_old = get(old.replicas) - get(old.updated_replicas);
    let new_old = get(new.replicas) - get(new.updated_replicas);
    get(new.updated_replicas) > get(old.updated_replicas)
        || new_old < old_old
        || get(new.ready_replicas) > get(old.ready_replicas)
        || get(new.available_replicas) > get(old.available_replicas)
}

/// `DeploymentTimedOut`: the Progressing condition was last updated more than the
/// deadline ago (strictly), unless the rollout already finished.
fn is_timed_out(params: &Params, status: &DeploymentStatus, now: &Time) -> bool {
    let Some(deadline) = params.progress_deadline_seconds else {
        return false;
    };
    let Some(condition) = get_condition(status, PROGRESSING) else {
        return false;
    };
    match reason(condition) {
        NEW_REPLICA_SET_AVAILABLE => false,
        PROGRESS_DEADLINE_EXCEEDED => true,
        _ => condition
            .last_update_time
            .as_ref()
            .is_none_or(|from| nanos_plus_seconds(from, i64::from(deadline)) < nanos(now)),
    }
}

fn subject(d: &Deployment, new_rs: Option<&ReplicaSet>) -> String {
    match new_rs {
        Some(rs) => format!("ReplicaSet {:?}", rs.metadata.name.as_deref().unwrap_or("")),
        None => format!("Deployment {:?}", d.metadata.name.as_deref().unwrap_or("")),
    }
}

fn replica_failure(condition: &ReplicaSetCondition) -> DeploymentCondition {
    DeploymentCondition {
        type_: condition.type_.clone(),
        status: condition.status.clone(),
        reason: condition.reason.clone(),
        message: condition.message.clone(),
        last_transition_time: condition.last_transition_time.clone(),
        last_update_time: condition.last_transition_time.clone(),
    }
}

/// `syncRolloutStatus`: [`calculate`], then the Progressing condition (dropped without a
/// deadline; `NewReplicaSetAvailable` when complete, `ReplicaSetUpdated` on progress,
/// `ProgressDeadlineExceeded` past the deadline) and the new (else any) ReplicaSet's
/// `ReplicaFailure` condition. `current` is the status so far (`d.Status` in
/// Kubernetes, which earlier steps of the same sync may have touched).
pub fn rollout_status(
    d: &Deployment,
    params: &Params,
    all: &[&ReplicaSet],
    new_rs: Option<&ReplicaSet>,
    current: &DeploymentStatus,
    now: &Time,
) -> DeploymentStatus {
    let mut status = calculate(d, params, all, new_rs, current, now);
    if params.progress_deadline_seconds.is_none() {
        remove_condition(&mut status, PROGRESSING);
    }
    let current_progressing = get_condition(current, PROGRESSING);
    let already_complete = status.replicas == status.updated_replicas
        && current_progressing.is_some_and(|c| reason(c) == NEW_REPLICA_SET_AVAILABLE);
    if params.progress_deadline_seconds.is_some() && !already_complete {
        if is_complete(d, params, &status) {
            let message = format!("{} has successfully progressed.", subject(d, new_rs));
            let condition =
                new_condition(PROGRESSING, "True", NEW_REPLICA_SET_AVAILABLE, message, now);
            set_condition(&mut status, condition);
        } else if is_progressing(current, &status) {
            let message = format!("{} is progressing.", subject(d, new_rs));
            let mut condition =
                new_condition(PROGRESSING, "True", REPLICA_SET_UPDATED, message, now);
            // Progress refreshes lastUpdateTime even with an unchanged reason (which
            // set_condition would ignore); a True condition keeps its transition time.
            if let Some(current) = current_progressing {
                if current.status == "True" {
                    condition.last_transition_time = current.last_transition_time.clone();
                }
                remove_condition(&mut status, PROGRESSING);
            }
            set_condition(&mut status, condition);
        } else if is_timed_out(params, &status, now) {
            let message = format!("{} has timed out progressing.", subject(d, new_rs));
            let condition = new_condition(
                PROGRESSING,
                "False",
                PROGRESS_DEADLINE_EXCEEDED,
                message,
                now,
            );
            set_condition(&mut status, condition);
        }
    }

    let failures_of = |rs: &ReplicaSet| -> Vec<DeploymentCondition> {
        let conditions = rs.status.as_ref().and_then(|s| s.conditions.as_ref());
        conditions
            .into_iter()
            .flatten()
            .filter(|c| c.type_ == REPLICA_FAILURE)
            .map(replica_failure)
            .collect()
    };
    let mut failures = new_rs.map(failures_of).unwrap_or_default();
    if failures.is_empty() {
        failures = all.iter().flat_map(|rs| failures_of(rs)).collect();
    }
    match failures.into_iter().next() {
        Some(failure) => set_condition(&mut status, failure),
        None => remove_condition(&mut status, REPLICA_FAILURE),
    }
    status
}

/// `checkPausedConditions`: with a deadline, a paused Deployment reports Progressing
/// Unknown/`DeploymentPaused` and a resumed one `DeploymentResumed`, so time spent paused
/// never counts against the deadline. A reported timeout is left alone.
pub fn apply_paused_condition(params: &Params, status: &mut DeploymentStatus, now: &Time) {
    if params.progress_deadline_seconds.is_none() {
        return;
    }
    let current = get_condition(status, PROGRESSING);
    if current.is_some_and(|c| reason(c) == PROGRESS_DEADLINE_EXCEEDED) {
        return;
    }
    let paused_reported = current.is_some_and(|c| reason(c) == DEPLOYMENT_PAUSED);
    if params.paused && !paused_reported {
        let condition = new_condition(
            PROGRESSING,
            "Unknown",
            DEPLOYMENT_PAUSED,
            "Deployment is paused".into(),
            now,
        );
        set_condition(status, condition);
    } else if !params.paused && paused_reported {
        let condition = new_condition(
            PROGRESSING,
            "Unknown",
            DEPLOYMENT_RESUMED,
            "Deployment is resumed".into(),
            now,
        );
        set_condition(status, condition);
    }
}

/// `requeueStuckDeployment`: while a rollout with a deadline is neither complete nor
/// timed out, check again when the deadline would pass (plus a second, because the
/// timeout test is strict and times are kept to the second).
pub fn progress_check_after(
    d: &Deployment,
    params: &Params,
    status: &DeploymentStatus,
    now: &Time,
) -> Option<Duration> {
    let deadline = params.progress_deadline_seconds?;
    let condition = get_condition(status, PROGRESSING)?;
    if is_complete(d, params, status) || reason(condition) == PROGRESS_DEADLINE_EXCEEDED {
        return None;
    }
    let Some(last_update) = condition.last_update_time.as_ref() else {
        return Some(Duration::ZERO);
    };
    let remaining = nanos_plus_seconds(last_update, i64::from(deadline)) - nanos(now);
    if remaining < 1_000_000_000 {
        return Some(Duration::ZERO);
    }
    Some(duration_from_nanos(remaining) + Duration::from_secs(1))
}

/// What `kubectl rollout status` concludes from a Deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutVerdict {
    /// Still rolling out; the message is kubectl's.
    Waiting(String),
    /// `deployment "<name>" successfully rolled out`.
    Complete(String),
    /// `deployment "<name>" exceeded its progress deadline`.
    Failed(String),
}

/// kubectl's `DeploymentStatusViewer`: the observed generation must be current, no
/// ProgressDeadlineExceeded, all replicas updated, no old replicas left and every
/// updated replica available.
pub fn kubectl_rollout_status(d: &Deployment) -> RolloutVerdict {
    let name = d.metadata.name.as_deref().unwrap_or("");
    let status = d.status.clone().unwrap_or_default();
    let get = |v: Option<i32>| v.unwrap_or(0);
    if d.metadata.generation.unwrap_or(0) > status.observed_generation.unwrap_or(0) {
        return RolloutVerdict::Waiting(
            "Waiting for deployment spec update to be observed...".into(),
        );
    }
    if get_condition(&status, PROGRESSING).is_some_and(|c| reason(c) == PROGRESS_DEADLINE_EXCEEDED)
    {
        return RolloutVerdict::Failed(format!(
            "deployment {name:?} exceeded its progress deadline"
        ));
    }
    let (replicas, updated) = (get(status.replicas), get(status.updated_replicas));
    let available = get(status.available_replicas);
    if let Some(desired) = d.spec.as_ref().and_then(|s| s.replicas) {
        if updated < desired {
            return RolloutVerdict::Waiting(format!(
                "Waiting for deployment {name:?} rollout to finish: {updated} out of {desired} new replicas have been updated..."
            ));
        }
    }
    if replicas > updated {
        return RolloutVerdict::Waiting(format!(
            "Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...",
            replicas - updated
        ));
    }
    if available < updated {
        return RolloutVerdict::Waiting(format!(
            "Waiting for deployment {name:?} rollout to finish: {available} of {updated} updated replicas are available..."
        ));
    }
    RolloutVerdict::Complete(format!("deployment {name:?} successfully rolled out"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::{at, deployment, time};

    fn status_with(conditions: serde_json::Value) -> DeploymentStatus {
        serde_json::from_value(serde_json::json!({ "conditions": conditions })).unwrap()
    }

    #[test]
    fn set_condition_keeps_times_and_ignores_same_reason() {
        let mut status = status_with(serde_json::json!([
            {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated", "message": "old",
             "lastUpdateTime": at(10), "lastTransitionTime": at(5)},
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
             "lastUpdateTime": at(1), "lastTransitionTime": at(1)}
        ]));
        let same_reason = new_condition(
            PROGRESSING,
            "True",
            REPLICA_SET_UPDATED,
            "new".into(),
            &time(50),
        );
        set_condition(&mut status, same_reason);
        let c = get_condition(&status, PROGRESSING).unwrap();
        assert_eq!(c.message.as_deref(), Some("old"));

        let complete = new_condition(
            PROGRESSING,
            "True",
            NEW_REPLICA_SET_AVAILABLE,
            "done".into(),
            &time(60),
        );
        set_condition(&mut status, complete);
        let c = get_condition(&status, PROGRESSING).unwrap();
        assert_eq!(c.last_transition_time, Some(time(5)));
        assert_eq!(c.last_update_time, Some(time(60)));
        // Replaced conditions move to the end, as in Kubernetes.
        assert_eq!(
            status.conditions.as_ref().unwrap().last().unwrap().type_,
            PROGRESSING
        );

        let failed = new_condition(
            PROGRESSING,
            "False",
            PROGRESS_DEADLINE_EXCEEDED,
            "x".into(),
            &time(70),
        );
        set_condition(&mut status, failed);
        assert_eq!(
            get_condition(&status, PROGRESSING)
                .unwrap()
                .last_transition_time,
            Some(time(70))
        );
        remove_condition(&mut status, PROGRESSING);
        assert!(get_condition(&status, PROGRESSING).is_none());
    }

    fn web(generation: i64, observed: i64, status: serde_json::Value) -> Deployment {
        let mut status = status;
        status["observedGeneration"] = observed.into();
        deployment(serde_json::json!({
            "metadata": {"name": "web", "generation": generation},
            "spec": {"replicas": 3, "selector": {}, "template": {}},
            "status": status
        }))
    }

    #[test]
    fn kubectl_rollout_status_verdicts() {
        let verdict = |d: &Deployment| kubectl_rollout_status(d);
        assert_eq!(
            verdict(&web(
                2,
                1,
                serde_json::json!({"replicas": 3, "updatedReplicas": 3, "availableReplicas": 3})
            )),
            RolloutVerdict::Waiting("Waiting for deployment spec update to be observed...".into())
        );
        assert_eq!(
            verdict(&web(2, 2, serde_json::json!({"replicas": 4, "updatedReplicas": 1}))),
            RolloutVerdict::Waiting(
                "Waiting for deployment \"web\" rollout to finish: 1 out of 3 new replicas have been updated...".into()
            )
        );
        assert_eq!(
            verdict(&web(2, 2, serde_json::json!({"replicas": 4, "updatedReplicas": 3}))),
            RolloutVerdict::Waiting(
                "Waiting for deployment \"web\" rollout to finish: 1 old replicas are pending termination...".into()
            )
        );
        assert_eq!(
            verdict(&web(2, 2, serde_json::json!({"replicas": 3, "updatedReplicas": 3, "availableReplicas": 2}))),
            RolloutVerdict::Waiting(
                "Waiting for deployment \"web\" rollout to finish: 2 of 3 updated replicas are available...".into()
            )
        );
        assert_eq!(
            verdict(&web(
                2,
                2,
                serde_json::json!({"replicas": 3, "updatedReplicas": 3, "availableReplicas": 3})
            )),
            RolloutVerdict::Complete("deployment \"web\" successfully rolled out".into())
        );
        assert_eq!(
            verdict(&web(
                2,
                2,
                serde_json::json!({"replicas": 3, "updatedReplicas": 1, "conditions": [
                    {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
                ]})
            )),
            RolloutVerdict::Failed("deployment \"web\" exceeded its progress deadline".into())
        );
    }
}
