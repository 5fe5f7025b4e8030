//! Executes the Deployment planner's decisions in its order — ReplicaSet ownership, the new
//! ReplicaSet, scaling, history cleanup, the Deployment's revision annotation, its status and
//! events — stopping at the first failed write (the next sync plans again from fresh state).

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::exec::{self, Written};
use super::{in_namespace, is_stale, requeue, Context, LoopError};
use crate::deployment;
use crate::events::EventType;

pub(super) async fn reconcile(
    d: Arc<Deployment>,
    context: Arc<Context>,
) -> Result<Action, LoopError> {
    super::caches_ready(&context).await?;
    let namespace = d.namespace().unwrap_or_default();
    let replica_sets = in_namespace(&context.replica_sets, &namespace);
    // Borrowed from the cache: copying every pod of a 10,000-replica Deployment each sync
    // cost more than the plan.
    let pods = context.pods.state();
    let pods: Vec<&Pod> = pods
        .iter()
        .map(|p| &**p)
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .collect();
    let now = Time(Timestamp::now());
    let plan = deployment::plan_refs(&d, &replica_sets, &pods, &now)
        .map_err(|e| LoopError::Plan(e.to_string()))?;
    if plan.is_noop() {
        record_events(&context, &d, &plan.events);
        return Ok(requeue(plan.requeue_after));
    }
    let rs_api: Api<ReplicaSet> = Api::namespaced(context.client.clone(), &namespace);
    let stale = || Ok(Action::requeue(std::time::Duration::from_millis(200)));
    for change in plan.adopt.iter().chain(&plan.release) {
        if let Err(e) = rs_api
            .patch(
                &change.name,
                &PatchParams::default(),
                &Patch::Merge(change.merge_patch()),
            )
            .await
        {
            return if is_stale(&e) { stale() } else { Err(e.into()) };
        }
    }
    if let Some(new) = &plan.create {
        match rs_api.create(&PostParams::default(), new).await {
            Ok(_) => {}
            // Somebody (an earlier sync) created it: plan again from the cache.
            Err(kube::Error::Api(e)) if e.code == 409 => return stale(),
            Err(e) => return Err(e.into()),
        }
    }
    for update in &plan.update {
        if let Err(e) = rs_api
            .patch(
                &update.name,
                &PatchParams::default(),
                &Patch::Merge(update.merge_patch()),
            )
            .await
        {
            return if is_stale(&e) { stale() } else { Err(e.into()) };
        }
    }
    for old in &plan.delete {
        let params = DeleteParams {
            preconditions: old.uid.clone().map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match rs_api.delete(&old.name, &params).await {
            Ok(_) => {}
            Err(e) if is_stale(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let deployment_api: Api<Deployment> = Api::namespaced(context.client.clone(), &namespace);
    if !plan.deployment_annotations.is_empty() {
        let patch = serde_json::json!({"metadata": {"annotations": plan.deployment_annotations}});
        if let Err(e) = deployment_api
            .patch(&d.name_any(), &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            return if is_stale(&e) { stale() } else { Err(e.into()) };
        }
    }
    if plan.status_changed
        && exec::patch_status(&deployment_api, d.as_ref(), &plan.status).await? == Written::Stale
    {
        return stale();
    }
    record_events(&context, &d, &plan.events);
    Ok(requeue(plan.requeue_after))
}

fn record_events(context: &Context, d: &Deployment, events: &[deployment::PlannedEvent]) {
    if events.is_empty() {
        return;
    }
    let regarding = d.object_ref(&());
    for event in events {
        let type_ = if event.type_ == "Warning" {
            EventType::Warning
        } else {
            EventType::Normal
        };
        context
            .deployment_events
            .record(regarding.clone(), type_, event.reason, &event.message);
    }
}
