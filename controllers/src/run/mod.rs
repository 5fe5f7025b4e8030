//! The loops around the planners: shared watch caches (one watch per kind, kube-runtime's
//! shared reflectors), one kube-runtime `Controller` per kind (so no object is reconciled by
//! two tasks at once), and the execution of each plan through the API. Everything here is
//! thin: what to do is decided by the planners; this module only reads caches and writes.

mod deployment;
pub mod expectations;
mod replicaset;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Resource;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::events::Recorder;
use expectations::Expectations;

/// Events a slow controller may lag behind a shared watch before the watch waits for it.
const SUBSCRIBER_BUFFER: usize = 4096;

/// Why a reconcile failed; the object is retried after a delay.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("API request failed: {0}")]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Plan(String),
}

/// What every loop shares: the client, the caches and the expectations.
pub struct Context {
    pub client: kube::Client,
    pub pods: Store<Pod>,
    pub replica_sets: Store<ReplicaSet>,
    pub deployments: Store<Deployment>,
    pub expectations: Expectations,
    pub replica_set_events: Recorder,
    pub deployment_events: Recorder,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// The objects of one namespace in a cache, cloned for a planner.
fn in_namespace<K>(store: &Store<K>, namespace: &str) -> Vec<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store
        .state()
        .iter()
        .filter(|o| o.meta().namespace.as_deref() == Some(namespace))
        .map(|o| (**o).clone())
        .collect()
}

/// Resolves when `drain` turns true (or its sender is gone).
async fn drained(mut drain: watch::Receiver<bool>) {
    let _ = drain.wait_for(|d| *d).await;
}

/// Keeps a shared cache of all `K` filled from one watch, fanning events out to subscribers.
fn drive<K>(
    client: &kube::Client,
    writer: reflector::store::Writer<K>,
) -> tokio::task::JoinHandle<()>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let api: Api<K> = Api::all(client.clone());
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect_shared(writer);
    tokio::spawn(async move {
        stream
            .for_each(|event| async move {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "watch");
                }
            })
            .await;
    })
}

/// Runs the ReplicaSet and Deployment controllers until `drain` turns true.
pub async fn run(client: kube::Client, drain: watch::Receiver<bool>) {
    let (pods, pod_writer) = reflector::store_shared::<Pod>(SUBSCRIBER_BUFFER);
    let (replica_sets, rs_writer) = reflector::store_shared::<ReplicaSet>(SUBSCRIBER_BUFFER);
    let (deployments, deployment_writer) = reflector::store_shared::<Deployment>(SUBSCRIBER_BUFFER);
    let subscriptions = (
        pod_writer.subscribe(),
        rs_writer.subscribe(),
        rs_writer.subscribe(),
        deployment_writer.subscribe(),
    );
    let (
        Some(pods_for_rs),
        Some(rs_for_rs),
        Some(rs_for_deployments),
        Some(deployments_for_deployments),
    ) = subscriptions
    else {
        tracing::error!("shared caches cannot be subscribed to");
        return;
    };
    let drivers = [
        drive(&client, pod_writer),
        drive(&client, rs_writer),
        drive(&client, deployment_writer),
    ];
    let context = Arc::new(Context {
        replica_set_events: Recorder::new(client.clone(), "replicaset-controller"),
        deployment_events: Recorder::new(client.clone(), "deployment-controller"),
        client,
        pods,
        replica_sets: replica_sets.clone(),
        deployments: deployments.clone(),
        expectations: Expectations::default(),
    });
    let rs_loop = kube::runtime::Controller::for_shared_stream(rs_for_rs, replica_sets)
        .owns_shared_stream(pods_for_rs)
        .graceful_shutdown_on(drained(drain.clone()))
        .run(replicaset::reconcile, retry_later, Arc::clone(&context))
        .for_each(|_| async {});
    let deployment_loop =
        kube::runtime::Controller::for_shared_stream(deployments_for_deployments, deployments)
            .owns_shared_stream(rs_for_deployments)
            .graceful_shutdown_on(drained(drain))
            .run(deployment::reconcile, retry_later, Arc::clone(&context))
            .for_each(|_| async {});
    futures::join!(rs_loop, deployment_loop);
    for driver in drivers {
        driver.abort();
    }
}

fn retry_later<K>(
    _object: Arc<K>,
    error: &LoopError,
    _context: Arc<Context>,
) -> kube::runtime::controller::Action {
    tracing::debug!(%error, "reconcile failed; retrying");
    kube::runtime::controller::Action::requeue(Duration::from_secs(2))
}

/// Whether a failed write means "the cache was stale, sync again" rather than an error.
fn is_stale(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(e) if e.code == 409 || e.code == 404)
}
