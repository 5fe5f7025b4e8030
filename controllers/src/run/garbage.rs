//! The garbage collector loop: watches every kind that carries ownerReferences in practice
//! (and the Nodes that own the node Leases), runs [`crate::garbage::plan`] over all of them
//! and executes the plan: owner-reference patches, then deletions (each dangling owner
//! confirmed gone with a live GET first, as the planner asks), then finalizer removals.
//!
//! The watches are this loop's own, over `DynamicObject`s: the GC must see deletions, which
//! the shared caches' subscriptions do not report, and it only keeps metadata (each object's
//! body is dropped as it arrives). The API server answers `as=PartialObjectMetadata` with
//! full objects, so kube's `metadata_watcher` would save nothing on the wire: full watches,
//! metadata kept.
//!
//! A pass runs after a change that matters to the GC — an object appearing with owners or
//! being deleted, its owners, finalizers or deletion timestamp changing, an object going
//! away, a relist — at most every [`MIN_INTERVAL`]; and every [`RESYNC_PERIOD`] regardless,
//! and sooner after a pass that could not finish. Status updates (heartbeats, pod phases)
//! do not trigger passes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Node, PersistentVolumeClaim, Pod, Secret, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions,
    PropagationPolicy,
};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::exec::Written;
use super::{is_stale, LoopError};
use crate::garbage::{self, GcObject, GcPlan, GroupKind, ObjectKey, Propagation};

/// Changes are batched: at most one change-triggered pass per this interval.
const MIN_INTERVAL: Duration = Duration::from_millis(500);
/// A full pass runs at least this often (retries anything a pass left undone).
const RESYNC_PERIOD: Duration = Duration::from_secs(30);
/// After a pass that could not finish (a conflict, an owner the cache has not seen yet).
const RETRY: Duration = Duration::from_secs(1);

/// One watched kind.
#[derive(Clone)]
struct Kind {
    resource: ApiResource,
    namespaced: bool,
}

impl Kind {
    fn of<K: kube::Resource<DynamicType = ()>>(namespaced: bool) -> Kind {
        Kind {
            resource: ApiResource::erase::<K>(&()),
            namespaced,
        }
    }

    fn group_kind(&self) -> GroupKind {
        GroupKind::new(&self.resource.group, &self.resource.kind)
    }
}

/// The kinds the collector watches: the workloads and what they own, Services and their
/// slices, what users commonly hang off them, and Nodes with their Leases.
fn watched_kinds() -> Vec<Kind> {
    vec![
        Kind::of::<Pod>(true),
        Kind::of::<ReplicaSet>(true),
        Kind::of::<Deployment>(true),
        Kind::of::<DaemonSet>(true),
        Kind::of::<StatefulSet>(true),
        Kind::of::<ControllerRevision>(true),
        Kind::of::<Job>(true),
        Kind::of::<CronJob>(true),
        Kind::of::<Service>(true),
        Kind::of::<Endpoints>(true),
        Kind::of::<EndpointSlice>(true),
        Kind::of::<ConfigMap>(true),
        Kind::of::<Secret>(true),
        Kind::of::<PersistentVolumeClaim>(true),
        Kind::of::<Lease>(true),
        Kind::of::<Node>(false),
    ]
}

struct Collector {
    client: kube::Client,
    kinds: Vec<(Kind, Store<DynamicObject>)>,
    watched: BTreeSet<GroupKind>,
}

/// Runs the loop until `drain` turns true.
pub(super) async fn run(client: kube::Client, mut drain: watch::Receiver<bool>) {
    let changed = Arc::new(Notify::new());
    let mut kinds = Vec::new();
    let mut watches = Vec::new();
    for kind in watched_kinds() {
        let (store, handle) = watch_kind(&client, &kind, Arc::clone(&changed));
        kinds.push((kind, store));
        watches.push(handle);
    }
    let collector = Collector {
        client: client.clone(),
        watched: kinds.iter().map(|(k, _)| k.group_kind()).collect(),
        kinds,
    };
    tokio::select! {
        _ = drain.wait_for(|d| *d) => {}
        _ = collect(&collector, &changed) => {}
    }
    for handle in watches {
        handle.abort();
    }
}

/// Keeps a metadata-only cache of one kind, signalling changes that matter to the GC.
fn watch_kind(
    client: &kube::Client,
    kind: &Kind,
    changed: Arc<Notify>,
) -> (Store<DynamicObject>, tokio::task::JoinHandle<()>) {
    let writer = reflector::store::Writer::new(kind.resource.clone());
    let store = writer.as_reader();
    let before = store.clone();
    let resource = kind.resource.clone();
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.resource);
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .map_ok(|event| {
            event.modify(|object| {
                // Only the metadata matters here; the body would cost memory for nothing.
                object.data = serde_json::Value::Null;
            })
        })
        .map_ok(move |event| {
            let matters = match &event {
                watcher::Event::Apply(object) => {
                    let old = before.get(&ObjectRef::from_obj_with(object, resource.clone()));
                    matters_to_gc(old.as_deref().map(|o| &o.metadata), &object.metadata)
                }
                watcher::Event::Delete(_) | watcher::Event::InitDone => true,
                watcher::Event::Init | watcher::Event::InitApply(_) => false,
            };
            if matters {
                changed.notify_one();
            }
            event
        })
        .reflect(writer);
    let handle = tokio::spawn(stream.for_each(|event| async move {
        if let Err(e) = event {
            tracing::warn!(error = %e, "watch");
        }
    }));
    (store, handle)
}

/// Whether an object's change can change the GC's decisions: it is new with owners or
/// being deleted, or its identity, owners, finalizers or deletion changed.
fn matters_to_gc(old: Option<&ObjectMeta>, new: &ObjectMeta) -> bool {
    let Some(old) = old else {
        return new.owner_references.as_ref().is_some_and(|r| !r.is_empty())
            || new.deletion_timestamp.is_some();
    };
    old.uid != new.uid
        || old.owner_references != new.owner_references
        || old.finalizers != new.finalizers
        || old.deletion_timestamp != new.deletion_timestamp
}

async fn collect(collector: &Collector, changed: &Notify) {
    // Planning over a partial picture would collect dependents whose owners are not
    // listed yet (the live GET would save them, at the cost of a request each).
    for (_, store) in &collector.kinds {
        if store.wait_until_ready().await.is_err() {
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
        due = last_run
            + match pass(collector).await {
                Ok(Written::Done) => RESYNC_PERIOD,
                Ok(Written::Stale) => RETRY,
                Err(e) => {
                    tracing::warn!(error = %e, "garbage collection pass failed");
                    RETRY * 2
                }
            };
    }
}

/// Every cached object as the planner sees it.
fn snapshot(collector: &Collector) -> Vec<GcObject> {
    let mut objects = Vec::new();
    for (kind, store) in &collector.kinds {
        for object in store.state() {
            objects.push(GcObject::from_meta(
                &kind.resource.api_version,
                &kind.resource.kind,
                &object.metadata,
            ));
        }
    }
    objects
}

/// One pass; `Stale` when something was left for the next one.
async fn pass(collector: &Collector) -> Result<Written, LoopError> {
    let plan = garbage::plan(&snapshot(collector), &collector.watched)
        .map_err(|e| LoopError::Plan(e.to_string()))?;
    if plan.is_noop() {
        return Ok(Written::Done);
    }
    execute(collector, &plan).await
}

async fn execute(collector: &Collector, plan: &GcPlan) -> Result<Written, LoopError> {
    let mut result = Written::Done;
    for patch in &plan.owner_ref_patches {
        let api = collector.api(&patch.object)?;
        let written = outcome(
            api.patch(
                &patch.object.name,
                &PatchParams::default(),
                &Patch::Merge(patch.change.merge_patch()),
            )
            .await,
        )?;
        if written == Written::Stale {
            result = Written::Stale;
        } else {
            tracing::info!(object = %describe(&patch.object), reasons = ?patch.reasons, "owner references updated");
        }
    }
    for deletion in &plan.deletions {
        match collector
            .owners_gone(&deletion.object, &deletion.absent_owners)
            .await?
        {
            Owners::Gone => {}
            Owners::Present => {
                // The cache lags an owner that exists: try again once it has caught up.
                result = Written::Stale;
                continue;
            }
            // Retrying would not change anything.
            Owners::Unresolvable => continue,
        }
        let api = collector.api(&deletion.object)?;
        let params = DeleteParams {
            propagation_policy: Some(match deletion.propagation {
                Propagation::Background => PropagationPolicy::Background,
                Propagation::Foreground => PropagationPolicy::Foreground,
                Propagation::Orphan => PropagationPolicy::Orphan,
            }),
            preconditions: Some(Preconditions {
                uid: Some(deletion.object.uid.clone()),
                resource_version: deletion.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        match outcome(api.delete(&deletion.object.name, &params).await)? {
            Written::Done => tracing::info!(
                object = %describe(&deletion.object),
                propagation = deletion.propagation.as_str(),
                "garbage collected"
            ),
            Written::Stale => result = Written::Stale,
        }
    }
    // An orphaning owner's finalizer must not go before every dependent was released.
    if result == Written::Stale {
        return Ok(result);
    }
    for removal in &plan.finalizer_removals {
        let api = collector.api(&removal.object)?;
        if outcome(
            api.patch(
                &removal.object.name,
                &PatchParams::default(),
                &Patch::Merge(removal.merge_patch()),
            )
            .await,
        )? == Written::Stale
        {
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

fn describe(key: &ObjectKey) -> String {
    match &key.namespace {
        Some(ns) => format!("{} {ns}/{}", key.kind, key.name),
        None => format!("{} {}", key.kind, key.name),
    }
}

/// What a live read says about the owners the cache found absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owners {
    /// All gone: the dependent may be collected.
    Gone,
    /// One exists: the cache is behind.
    Present,
    /// One cannot be looked up from where the dependent is.
    Unresolvable,
}

impl Collector {
    fn kind(&self, group_kind: &GroupKind) -> Option<&Kind> {
        self.kinds
            .iter()
            .map(|(k, _)| k)
            .find(|k| k.group_kind() == *group_kind)
    }

    /// The API of the object's kind, in its namespace.
    fn api(&self, key: &ObjectKey) -> Result<Api<DynamicObject>, LoopError> {
        let group_kind = GroupKind::from_api_version(&key.api_version, &key.kind);
        let kind = self
            .kind(&group_kind)
            .ok_or_else(|| LoopError::Plan(format!("{} is not a watched kind", key.kind)))?;
        Ok(match (&key.namespace, kind.namespaced) {
            (Some(ns), true) => Api::namespaced_with(self.client.clone(), ns, &kind.resource),
            _ => Api::all_with(self.client.clone(), &kind.resource),
        })
    }

    /// Whether every owner is really gone: a live GET finds nothing with its name and UID
    /// where the dependent can see it (Kubernetes' `isDangling`).
    async fn owners_gone(
        &self,
        dependent: &ObjectKey,
        owners: &[OwnerReference],
    ) -> Result<Owners, LoopError> {
        for owner in owners {
            let group_kind = GroupKind::from_api_version(&owner.api_version, &owner.kind);
            let Some(kind) = self.kind(&group_kind) else {
                // Not watched: never collected on a guess.
                return Ok(Owners::Unresolvable);
            };
            let api: Api<DynamicObject> = match (&dependent.namespace, kind.namespaced) {
                (Some(ns), true) => Api::namespaced_with(self.client.clone(), ns, &kind.resource),
                // A cluster-scoped object naming a namespaced owner: Kubernetes leaves it.
                (None, true) => return Ok(Owners::Unresolvable),
                (_, false) => Api::all_with(self.client.clone(), &kind.resource),
            };
            if let Some(found) = api.get_opt(&owner.name).await? {
                if found.metadata.uid.as_deref() == Some(owner.uid.as_str()) {
                    return Ok(Owners::Present);
                }
            }
        }
        Ok(Owners::Gone)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::time;

    fn meta(json: serde_json::Value) -> ObjectMeta {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn only_owner_finalizer_and_deletion_changes_matter() {
        let owned = meta(
            serde_json::json!({"name": "a", "uid": "u1", "resourceVersion": "1",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "o1"}]}),
        );
        let plain = meta(serde_json::json!({"name": "b", "uid": "u2", "resourceVersion": "1"}));
        assert!(matters_to_gc(None, &owned), "a new dependent");
        assert!(!matters_to_gc(None, &plain), "a new object without owners");

        // A status update: only the resourceVersion moved.
        let mut heartbeat = owned.clone();
        heartbeat.resource_version = Some("2".into());
        heartbeat.labels = Some([("a".to_string(), "b".to_string())].into());
        assert!(!matters_to_gc(Some(&owned), &heartbeat));

        let mut released = owned.clone();
        released.owner_references = None;
        assert!(matters_to_gc(Some(&owned), &released));
        let mut finalized = plain.clone();
        finalized.finalizers = Some(vec!["foregroundDeletion".into()]);
        assert!(matters_to_gc(Some(&plain), &finalized));
        let mut deleting = plain.clone();
        deleting.deletion_timestamp = Some(time(5));
        assert!(matters_to_gc(Some(&plain), &deleting));
        assert!(matters_to_gc(None, &deleting));
        let mut recreated = plain.clone();
        recreated.uid = Some("u3".into());
        assert!(matters_to_gc(Some(&plain), &recreated));
    }

    #[test]
    fn every_kind_the_controllers_own_is_watched() {
        let kinds: BTreeSet<GroupKind> = watched_kinds().iter().map(Kind::group_kind).collect();
        for (group, kind) in [
            ("", "Pod"),
            ("apps", "ReplicaSet"),
            ("apps", "Deployment"),
            ("apps", "ControllerRevision"),
            ("batch", "Job"),
            ("batch", "CronJob"),
            ("", "Service"),
            ("discovery.k8s.io", "EndpointSlice"),
            ("", "PersistentVolumeClaim"),
            ("coordination.k8s.io", "Lease"),
            ("", "Node"),
        ] {
            assert!(kinds.contains(&GroupKind::new(group, kind)), "{kind}");
        }
        let node = watched_kinds()
            .into_iter()
            .find(|k| k.resource.kind == "Node")
            .unwrap();
        assert!(!node.namespaced);
        assert_eq!(node.resource.api_version, "v1");
    }
}
