//! Writes shared by the loops: merge patches, UID-guarded deletes, status patches, creates in
//! slow-start batches and planned events. A write that fails because the cache was stale
//! (409 Conflict, 404 Not Found) is reported as [`Written::Stale`], not as an error.

use std::fmt::Debug;

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{is_stale, LoopError};
use crate::deployment::PlannedEvent;
use crate::events::{EventType, Recorder};
use crate::replicaset::slow_start_batches;

/// How a write went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Written {
    Done,
    /// The cache was behind: plan again once it has caught up.
    Stale,
}

fn outcome<T>(result: Result<T, kube::Error>) -> Result<Written, LoopError> {
    match result {
        Ok(_) => Ok(Written::Done),
        Err(e) if is_stale(&e) => Ok(Written::Stale),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn merge_patch<K>(
    api: &Api<K>,
    name: &str,
    patch: serde_json::Value,
) -> Result<Written, LoopError>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    outcome(
        api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await,
    )
}

/// Replaces `object`'s status with `status` through a merge patch: fields the observed status
/// has and the new one lacks are sent as `null`, since a merge patch keeps what it does not
/// mention.
pub(super) async fn patch_status<K, S>(
    api: &Api<K>,
    object: &K,
    status: &S,
) -> Result<Written, LoopError>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
    S: Serialize,
{
    let mut status = serde_json::to_value(status).map_err(|e| LoopError::Plan(e.to_string()))?;
    let observed = serde_json::to_value(object).map_err(|e| LoopError::Plan(e.to_string()))?;
    if let (Some(new), Some(old)) = (
        status.as_object_mut(),
        observed
            .get("status")
            .and_then(serde_json::Value::as_object),
    ) {
        for key in old.keys() {
            new.entry(key.clone()).or_insert(serde_json::Value::Null);
        }
    }
    let name = object.meta().name.clone().unwrap_or_default();
    outcome(
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await,
    )
}

pub(super) async fn delete<K>(
    api: &Api<K>,
    name: &str,
    uid: Option<&str>,
) -> Result<Written, LoopError>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let params = DeleteParams {
        preconditions: uid.map(|uid| Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    outcome(api.delete(name, &params).await)
}

pub(super) async fn create<K>(api: &Api<K>, object: &K) -> Result<Written, LoopError>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(Written::Done),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Written::Stale),
        Err(e) => Err(e.into()),
    }
}

/// Creates `objects` in slow-start batches (1, 2, 4, …), stopping at the first batch with a
/// failure; returns the names created and the first error.
pub(super) async fn create_all<K>(api: &Api<K>, objects: &[K]) -> (Vec<String>, Option<kube::Error>)
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    let params = PostParams::default();
    let mut created = Vec::new();
    let mut rest = objects;
    for size in slow_start_batches(objects.len()) {
        let (batch, later) = rest.split_at(size.min(rest.len()));
        rest = later;
        let mut failure = None;
        for result in futures::future::join_all(batch.iter().map(|o| api.create(&params, o))).await
        {
            match result {
                Ok(object) => created.push(object.meta().name.clone().unwrap_or_default()),
                Err(e) => failure = Some(e),
            }
        }
        if failure.is_some() {
            return (created, failure);
        }
    }
    (created, None)
}

/// The planners' event types (the workload and the batch planners each have one).
pub(super) trait Planned {
    fn parts(&self) -> (&str, &str, &str);
}

impl Planned for PlannedEvent {
    fn parts(&self) -> (&str, &str, &str) {
        (self.type_, self.reason, &self.message)
    }
}

impl Planned for crate::job::PlannedEvent {
    fn parts(&self) -> (&str, &str, &str) {
        (self.type_, &self.reason, &self.message)
    }
}

pub(super) fn record_planned<K, E>(recorder: &Recorder, object: &K, events: &[E])
where
    K: Resource<DynamicType = ()>,
    E: Planned,
{
    if events.is_empty() {
        return;
    }
    let regarding = object.object_ref(&());
    for event in events {
        let (type_, reason, message) = event.parts();
        let type_ = if type_ == "Warning" {
            EventType::Warning
        } else {
            EventType::Normal
        };
        recorder.record(regarding.clone(), type_, reason, message);
    }
}
