//! The node lifecycle loop: runs [`crate::node_lifecycle::plan`] over every node, node Lease
//! and pod, and executes the plan in its order — node conditions, taints, pods marked not
//! ready, pod deletions — stopping at the first write that fails or finds the cache stale
//! (pods must never be evicted for a taint that was not written).
//!
//! It is not a per-object Controller: the decisions span nodes and zones (rate limits,
//! disruption modes). It plans every [`MONITOR_PERIOD`] (kube-controller-manager's
//! `--node-monitor-period`), when the plan asks to be run again (a toleration running out, a
//! grace period ending), and on node or pod changes — at most every [`MIN_INTERVAL`], as
//! heartbeats change nodes all the time. Lease changes do not trigger it: a renewal only
//! pushes a deadline further, and deadlines are the periodic run's business.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::cache::Subscription;
use super::exec::Written;
use super::{is_stale, LoopError};
use crate::events::{EventType, Recorder};
use crate::node_lifecycle::{
    self, NodeLifecycleConfig, NodeLifecyclePlan, NodeTaintUpdate, PodDeletion, PodReadyUpdate,
    NODE_LEASE_NAMESPACE,
};

/// kube-controller-manager's `--node-monitor-period`.
pub const MONITOR_PERIOD: Duration = Duration::from_secs(5);
/// Changes are batched: at most one change-triggered plan per this interval.
const MIN_INTERVAL: Duration = Duration::from_millis(500);
/// A taint write is retried this many times on conflicts (`SwapNodeControllerTaint`).
const TAINT_ATTEMPTS: usize = 5;

struct Lifecycle {
    client: kube::Client,
    config: NodeLifecycleConfig,
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: Store<Pod>,
    node_events: Recorder,
    eviction_events: Recorder,
}

/// Runs the loop until `drain` turns true. `pods` and `nodes` are subscriptions to the
/// shared caches (drained here, only as change signals).
pub(super) async fn run(
    client: kube::Client,
    config: NodeLifecycleConfig,
    pods: Subscription<Pod>,
    nodes: Subscription<Node>,
    mut drain: watch::Receiver<bool>,
) {
    let (leases, lease_writer) = reflector::store();
    let lease_api: Api<Lease> = Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE);
    let lease_watch = tokio::spawn(
        watcher(lease_api, watcher::Config::default())
            .default_backoff()
            .reflect(lease_writer)
            .for_each(|event| async move {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "watch");
                }
            }),
    );
    let lifecycle = Lifecycle {
        client: client.clone(),
        config,
        nodes: nodes.reader(),
        leases,
        pods: pods.reader(),
        node_events: Recorder::new(client.clone(), "node-controller"),
        eviction_events: Recorder::new(client.clone(), "taint-eviction-controller"),
    };
    // Read both in a task of their own, whatever the loop is doing: the changes are only a
    // signal to plan again (the plan reads the caches).
    let changed = Arc::new(Notify::new());
    let signal = Arc::clone(&changed);
    let changes = tokio::spawn(
        futures::stream::select(pods.map(|_| ()), nodes.map(|_| ())).for_each(move |()| {
            signal.notify_one();
            async {}
        }),
    );
    tokio::select! {
        _ = drain.wait_for(|d| *d) => {}
        _ = monitor(&lifecycle, &changed) => {}
    }
    lease_watch.abort();
    changes.abort();
}

async fn monitor(lifecycle: &Lifecycle, changed: &Notify) {
    // Planning over an empty cache would be wrong: without Leases every node looks silent.
    for ready in [
        lifecycle.nodes.wait_until_ready().await,
        lifecycle.leases.wait_until_ready().await,
        lifecycle.pods.wait_until_ready().await,
    ] {
        if ready.is_err() {
            return;
        }
    }
    let mut last_run = Instant::now();
    let mut due = Instant::now();
    loop {
        tokio::select! {
            () = changed.notified() => {
                due = due.min((last_run + MIN_INTERVAL).max(Instant::now()));
                continue;
            }
            () = tokio::time::sleep_until(due) => {}
        }
        last_run = Instant::now();
        let plan = plan(lifecycle);
        let mut next = last_run + MONITOR_PERIOD;
        if let Some(after) = plan.requeue_after {
            next = next.min(last_run + after.max(MIN_INTERVAL));
        }
        match execute(lifecycle, &plan).await {
            Ok(Written::Done) => {}
            // The cache was behind: plan again once it has caught up.
            Ok(Written::Stale) => next = next.min(last_run + MIN_INTERVAL),
            Err(e) => {
                tracing::warn!(error = %e, "node lifecycle sync failed");
                next = next.min(last_run + Duration::from_secs(1));
            }
        }
        due = next;
    }
}

fn plan(lifecycle: &Lifecycle) -> NodeLifecyclePlan {
    // Borrowed from the caches' shared objects: copying 20,000 pods each sync was a fifth of
    // the server's time while a large Deployment rolled out.
    let (nodes, leases, pods) = (
        lifecycle.nodes.state(),
        lifecycle.leases.state(),
        lifecycle.pods.state(),
    );
    let nodes: Vec<&Node> = nodes.iter().map(|n| &**n).collect();
    let leases: Vec<&Lease> = leases.iter().map(|l| &**l).collect();
    let pods: Vec<&Pod> = pods.iter().map(|p| &**p).collect();
    let now = Time(Timestamp::now());
    node_lifecycle::plan_refs(&nodes, &leases, &pods, &now, &lifecycle.config)
}

/// Executes the plan in its order; `Stale` when a write found the cache behind (the rest is
/// left for the next sync).
async fn execute(lifecycle: &Lifecycle, plan: &NodeLifecyclePlan) -> Result<Written, LoopError> {
    let client = &lifecycle.client;
    let nodes: Api<Node> = Api::all(client.clone());
    for update in &plan.node_status {
        let written = outcome(
            nodes
                .patch_status(
                    &update.name,
                    &PatchParams::default(),
                    &Patch::Merge(update.merge_patch()),
                )
                .await,
        )?;
        if written == Written::Stale {
            return Ok(Written::Stale);
        }
        tracing::info!(node = %update.name, "node stopped posting status: conditions Unknown");
    }
    for update in &plan.node_taints {
        if swap_taints(&nodes, update).await? == Written::Stale {
            return Ok(Written::Stale);
        }
    }
    let mut result = Written::Done;
    for update in &plan.pods_not_ready {
        // A pod that changed meanwhile is re-planned; it does not hold up the others.
        if mark_not_ready(lifecycle, update).await? == Written::Stale {
            result = Written::Stale;
        }
    }
    for deletion in &plan.pod_deletions {
        if delete_pod(lifecycle, deletion).await? == Written::Stale {
            result = Written::Stale;
        }
    }
    Ok(result)
}

fn outcome<T>(result: Result<T, kube::Error>) -> Result<Written, LoopError> {
    match result {
        Ok(_) => Ok(Written::Done),
        Err(e) if is_stale(&e) => Ok(Written::Stale),
        Err(e) => Err(e.into()),
    }
}

/// `SwapNodeControllerTaint`: re-reads the node, applies the change to its current taints
/// and writes them over that read's resourceVersion, retrying on conflict, so taints
/// others changed meanwhile are kept.
async fn swap_taints(nodes: &Api<Node>, update: &NodeTaintUpdate) -> Result<Written, LoopError> {
    for _ in 0..TAINT_ATTEMPTS {
        let Some(node) = nodes.get_opt(&update.name).await? else {
            return Ok(Written::Stale);
        };
        if update.uid.is_some() && node.metadata.uid != update.uid {
            return Ok(Written::Stale); // another node of the same name
        }
        let current = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let taints = update.apply(&current);
        if taints == current {
            return Ok(Written::Done);
        }
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": node.metadata.resource_version},
            "spec": {"taints": taints},
        });
        match outcome(
            nodes
                .patch(&update.name, &PatchParams::default(), &Patch::Merge(patch))
                .await,
        )? {
            Written::Done => {
                let added: Vec<&str> = update.add.iter().map(|t| t.key.as_str()).collect();
                let removed: Vec<&str> = update.remove.iter().map(|t| t.key.as_str()).collect();
                tracing::info!(node = %update.name, ?added, ?removed, "node taints");
                return Ok(Written::Done);
            }
            Written::Stale => continue,
        }
    }
    Ok(Written::Stale)
}

fn pod_reference(namespace: &str, name: &str, uid: Option<&str>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".to_string()),
        kind: Some("Pod".to_string()),
        namespace: Some(namespace.to_string()),
        name: Some(name.to_string()),
        uid: uid.map(str::to_string),
        ..ObjectReference::default()
    }
}

async fn mark_not_ready(
    lifecycle: &Lifecycle,
    update: &PodReadyUpdate,
) -> Result<Written, LoopError> {
    let pods: Api<Pod> = Api::namespaced(lifecycle.client.clone(), &update.namespace);
    let written = outcome(
        pods.patch_status(
            &update.name,
            &PatchParams::default(),
            &Patch::Merge(update.merge_patch()),
        )
        .await,
    )?;
    if written == Written::Done {
        lifecycle.node_events.record(
            pod_reference(&update.namespace, &update.name, update.uid.as_deref()),
            EventType::Warning,
            "NodeNotReady",
            "Node is not ready",
        );
    }
    Ok(written)
}

/// The status patch a deletion asks for first: the condition merged in by type (a
/// strategic merge patch, so conditions others wrote meanwhile stay) and phase `Failed`.
fn deletion_status_patch(deletion: &PodDeletion) -> Option<serde_json::Value> {
    if deletion.disruption_condition.is_none() && !deletion.mark_failed {
        return None;
    }
    let mut status = serde_json::Map::new();
    if let Some(condition) = &deletion.disruption_condition {
        status.insert("conditions".into(), serde_json::json!([condition]));
    }
    if deletion.mark_failed {
        status.insert("phase".into(), "Failed".into());
    }
    Some(serde_json::json!({ "status": status }))
}

async fn delete_pod(lifecycle: &Lifecycle, deletion: &PodDeletion) -> Result<Written, LoopError> {
    let pods: Api<Pod> = Api::namespaced(lifecycle.client.clone(), &deletion.namespace);
    if let Some(patch) = deletion_status_patch(deletion) {
        if outcome(
            pods.patch_status(
                &deletion.name,
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await,
        )? == Written::Stale
        {
            return Ok(Written::Stale);
        }
    }
    let params = DeleteParams {
        grace_period_seconds: deletion
            .grace_period_seconds
            .map(|g| u32::try_from(g.max(0)).unwrap_or(u32::MAX)),
        preconditions: deletion.uid.clone().map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let written = outcome(pods.delete(&deletion.name, &params).await)?;
    if written == Written::Done {
        tracing::info!(
            namespace = %deletion.namespace,
            pod = %deletion.name,
            cause = ?deletion.cause,
            "deleted pod"
        );
        if let Some(event) = &deletion.event {
            let type_ = if event.type_ == "Warning" {
                EventType::Warning
            } else {
                EventType::Normal
            };
            lifecycle.eviction_events.record(
                pod_reference(&deletion.namespace, &deletion.name, deletion.uid.as_deref()),
                type_,
                &event.reason,
                &event.message,
            );
        }
    }
    Ok(written)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::node_lifecycle::DeletionCause;

    fn deletion(condition: bool, mark_failed: bool) -> PodDeletion {
        PodDeletion {
            namespace: "shop".into(),
            name: "web-1".into(),
            uid: Some("u1".into()),
            cause: DeletionCause::TaintEviction,
            grace_period_seconds: None,
            disruption_condition: condition.then(|| {
                serde_json::from_value(serde_json::json!({
                    "type": "DisruptionTarget", "status": "True",
                    "reason": "DeletionByTaintManager"
                }))
                .unwrap()
            }),
            mark_failed,
            event: None,
        }
    }

    #[test]
    fn deletions_patch_only_what_they_ask_for() {
        assert_eq!(deletion_status_patch(&deletion(false, false)), None);
        assert_eq!(
            deletion_status_patch(&deletion(true, false)).unwrap(),
            serde_json::json!({"status": {"conditions": [
                {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager"}
            ]}})
        );
        assert_eq!(
            deletion_status_patch(&deletion(true, true)).unwrap()["status"]["phase"],
            "Failed"
        );
        assert_eq!(
            deletion_status_patch(&deletion(false, true)).unwrap(),
            serde_json::json!({"status": {"phase": "Failed"}})
        );
    }
}
