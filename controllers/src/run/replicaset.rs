//! Executes the ReplicaSet planner's decisions: ownership patches, pod creates in slow-start
//! batches, pod deletes with UID preconditions, and the status.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::exec;
use super::{is_stale, requeue, shared_in_namespace, Context, LoopError};
use crate::events::EventType;
use crate::replicaset::{self, slow_start_batches};

pub(super) async fn reconcile(
    rs: Arc<ReplicaSet>,
    context: Arc<Context>,
) -> Result<Action, LoopError> {
    super::caches_ready(&context).await?;
    let namespace = rs.namespace().unwrap_or_default();
    let owner = rs.uid().unwrap_or_default();
    let pods = shared_in_namespace(&context.pods, &namespace);
    if super::waiting_on_pods(&context, &owner, &pods) {
        return super::stale();
    }
    let now = Time(Timestamp::now());
    let plan = replicaset::plan(&rs, &pods, &now).map_err(|e| LoopError::Plan(e.to_string()))?;
    if plan.is_noop() {
        return Ok(requeue(plan.requeue_after));
    }
    let pod_api: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);
    for change in plan.adopt.iter().chain(&plan.release) {
        match pod_api
            .patch(
                &change.name,
                &PatchParams::default(),
                &Patch::Merge(change.merge_patch()),
            )
            .await
        {
            Ok(_) => {}
            Err(e) if is_stale(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let regarding = rs.object_ref(&());
    let mut failure = None;
    if let (true, Some(template)) = (plan.create > 0, plan.pod_to_create.as_ref()) {
        let params = PostParams::default();
        'batches: for batch in slow_start_batches(plan.create) {
            let creates = (0..batch).map(|_| pod_api.create(&params, template));
            for result in futures::future::join_all(creates).await {
                match result {
                    Ok(pod) => {
                        let name = pod.name_any();
                        context
                            .expectations
                            .created(&owner, format!("{namespace}/{name}"));
                        context.replica_set_events.record(
                            regarding.clone(),
                            EventType::Normal,
                            "SuccessfulCreate",
                            &format!("Created pod: {name}"),
                        );
                    }
                    Err(e) => failure = Some(e),
                }
            }
            if failure.is_some() {
                break 'batches;
            }
        }
    }
    for doomed in &plan.delete {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(doomed.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pod_api.delete(&doomed.name, &params).await {
            Ok(_) => {
                context.expectations.deleted(&owner, doomed.uid.clone());
                context.replica_set_events.record(
                    regarding.clone(),
                    EventType::Normal,
                    "SuccessfulDelete",
                    &format!("Deleted pod: {}", doomed.name),
                );
            }
            Err(e) if is_stale(&e) => {}
            Err(e) => failure = Some(e),
        }
    }
    let status = match &failure {
        Some(e) => {
            let message = e.to_string();
            context.replica_set_events.record(
                regarding,
                EventType::Warning,
                if plan.create > 0 {
                    "FailedCreate"
                } else {
                    "FailedDelete"
                },
                &message,
            );
            Some(plan.status_after_failure(&message, &now))
        }
        None => plan.status_changed.then(|| plan.status.clone()),
    };
    if let Some(status) = status {
        let rs_api: Api<ReplicaSet> = Api::namespaced(context.client.clone(), &namespace);
        exec::patch_status(&rs_api, rs.as_ref(), &status).await?;
    }
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(requeue(plan.requeue_after)),
    }
}
