//! Executes the DaemonSet and StatefulSet planners' decisions in their order, stopping at the
//! first failed write (the next sync plans again from fresh state).

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::exec::{self, Written};
use super::{in_namespace, requeue, stale, waiting_on_pods, written, Context, LoopError};
use crate::events::EventType;
use crate::{daemonset, statefulset};

pub(super) async fn reconcile_daemon_set(
    ds: Arc<DaemonSet>,
    context: Arc<Context>,
) -> Result<Action, LoopError> {
    super::caches_ready(&context).await?;
    let namespace = ds.namespace().unwrap_or_default();
    let owner = ds.uid().unwrap_or_default();
    let pods = in_namespace(&context.pods, &namespace);
    if waiting_on_pods(&context, &owner, &pods) {
        return stale();
    }
    let nodes: Vec<_> = context
        .nodes
        .state()
        .iter()
        .map(|n| (**n).clone())
        .collect();
    let revisions = in_namespace(&context.revisions, &namespace);
    let now = Time(Timestamp::now());
    let plan = daemonset::plan(&ds, &nodes, &pods, &revisions, &now)
        .map_err(|e| LoopError::Plan(e.to_string()))?;
    let pod_api: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);
    let revision_api: Api<ControllerRevision> = Api::namespaced(context.client.clone(), &namespace);
    for change in plan.adopt_pods.iter().chain(&plan.release_pods) {
        written!(exec::merge_patch(
            &pod_api,
            &change.name,
            change.merge_patch()
        ));
    }
    for change in plan.adopt_revisions.iter().chain(&plan.release_revisions) {
        written!(exec::merge_patch(
            &revision_api,
            &change.name,
            change.merge_patch()
        ));
    }
    if let Some(revision) = &plan.create_revision {
        written!(exec::create(&revision_api, revision));
    }
    for update in &plan.update_revisions {
        written!(exec::merge_patch(
            &revision_api,
            &update.name,
            update.merge_patch()
        ));
    }
    for relabel in &plan.relabel_pods {
        written!(exec::merge_patch(
            &pod_api,
            &relabel.name,
            relabel.merge_patch()
        ));
    }
    let regarding = ds.object_ref(&());
    for doomed in &plan.delete_pods {
        if exec::delete(&pod_api, &doomed.name, Some(&doomed.uid)).await? == Written::Done {
            context.expectations.deleted(&owner, doomed.uid.clone());
            context.daemon_set_events.record(
                regarding.clone(),
                EventType::Normal,
                "SuccessfulDelete",
                &format!("Deleted pod: {}", doomed.name),
            );
        }
    }
    let (created, failure) = exec::create_all(&pod_api, &plan.create_pods).await;
    for name in created {
        context
            .expectations
            .created(&owner, format!("{namespace}/{name}"));
        context.daemon_set_events.record(
            regarding.clone(),
            EventType::Normal,
            "SuccessfulCreate",
            &format!("Created pod: {name}"),
        );
    }
    if let Some(e) = failure {
        context.daemon_set_events.record(
            regarding,
            EventType::Warning,
            "FailedCreate",
            &e.to_string(),
        );
        return Err(e.into());
    }
    for old in &plan.delete_revisions {
        exec::delete(&revision_api, &old.name, old.uid.as_deref()).await?;
    }
    if plan.status_changed {
        let api: Api<DaemonSet> = Api::namespaced(context.client.clone(), &namespace);
        written!(exec::patch_status(&api, ds.as_ref(), &plan.status));
    }
    exec::record_planned(&context.daemon_set_events, ds.as_ref(), &plan.events);
    Ok(requeue(plan.requeue_after))
}

pub(super) async fn reconcile_stateful_set(
    set: Arc<StatefulSet>,
    context: Arc<Context>,
) -> Result<Action, LoopError> {
    super::caches_ready(&context).await?;
    let namespace = set.namespace().unwrap_or_default();
    let owner = set.uid().unwrap_or_default();
    let pods = in_namespace(&context.pods, &namespace);
    if waiting_on_pods(&context, &owner, &pods) {
        return stale();
    }
    let claims = in_namespace(&context.claims, &namespace);
    let revisions = in_namespace(&context.revisions, &namespace);
    let now = Time(Timestamp::now());
    let plan = statefulset::plan(&set, &pods, &claims, &revisions, &now)
        .map_err(|e| LoopError::Plan(e.to_string()))?;
    let pod_api: Api<Pod> = Api::namespaced(context.client.clone(), &namespace);
    let claim_api: Api<PersistentVolumeClaim> = Api::namespaced(context.client.clone(), &namespace);
    let revision_api: Api<ControllerRevision> = Api::namespaced(context.client.clone(), &namespace);
    for change in plan.adopt_pods.iter().chain(&plan.release_pods) {
        written!(exec::merge_patch(
            &pod_api,
            &change.name,
            change.merge_patch()
        ));
    }
    for change in &plan.adopt_revisions {
        written!(exec::merge_patch(
            &revision_api,
            &change.name,
            change.merge_patch()
        ));
    }
    if let Some(revision) = &plan.create_revision {
        written!(exec::create(&revision_api, revision));
    }
    for update in &plan.update_revisions {
        written!(exec::merge_patch(
            &revision_api,
            &update.name,
            update.merge_patch()
        ));
    }
    for claim in &plan.create_claims {
        // An existing claim is fine: claims outlive their pods.
        exec::create(&claim_api, claim).await?;
    }
    let regarding = set.object_ref(&());
    for pod in &plan.create_pods {
        let name = pod.name_any();
        match exec::create(&pod_api, pod).await {
            Ok(Written::Done) => {
                context
                    .expectations
                    .created(&owner, format!("{namespace}/{name}"));
                context.stateful_set_events.record(
                    regarding.clone(),
                    EventType::Normal,
                    "SuccessfulCreate",
                    &format!(
                        "create Pod {name} in StatefulSet {} successful",
                        set.name_any()
                    ),
                );
            }
            Ok(Written::Stale) => return stale(),
            Err(e) => {
                context.stateful_set_events.record(
                    regarding.clone(),
                    EventType::Warning,
                    "FailedCreate",
                    &format!(
                        "create Pod {name} in StatefulSet {} failed error: {e}",
                        set.name_any()
                    ),
                );
                return Err(e);
            }
        }
    }
    for relabel in &plan.relabel_pods {
        written!(exec::merge_patch(
            &pod_api,
            &relabel.name,
            relabel.merge_patch()
        ));
    }
    for doomed in &plan.delete_pods {
        if exec::delete(&pod_api, &doomed.name, Some(&doomed.uid)).await? == Written::Done {
            context.expectations.deleted(&owner, doomed.uid.clone());
            context.stateful_set_events.record(
                regarding.clone(),
                EventType::Normal,
                "SuccessfulDelete",
                &format!(
                    "delete Pod {} in StatefulSet {} successful",
                    doomed.name,
                    set.name_any()
                ),
            );
        }
    }
    for claim in &plan.delete_claims {
        exec::delete(&claim_api, &claim.name, claim.uid.as_deref()).await?;
    }
    for old in &plan.delete_revisions {
        exec::delete(&revision_api, &old.name, old.uid.as_deref()).await?;
    }
    if plan.status_changed {
        let api: Api<StatefulSet> = Api::namespaced(context.client.clone(), &namespace);
        written!(exec::patch_status(&api, set.as_ref(), &plan.status));
    }
    exec::record_planned(&context.stateful_set_events, set.as_ref(), &plan.events);
    Ok(requeue(plan.requeue_after))
}
