//! The loops around the planners: shared watch caches (one watch per kind, kube-runtime's
//! shared reflectors), one kube-runtime `Controller` per kind (so no object is reconciled by
//! two tasks at once), and the execution of each plan through the API. Everything here is
//! thin: what to do is decided by the planners; this module only reads caches and writes.

mod deployment;
mod endpoints;
mod exec;
pub mod expectations;
mod garbage;
mod jobs;
pub mod node_ipam;
mod nodes;
mod replicaset;
mod service_accounts;
mod sets;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
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
    pub nodes: Store<Node>,
    pub revisions: Store<ControllerRevision>,
    pub claims: Store<PersistentVolumeClaim>,
    pub jobs: Store<Job>,
    pub expectations: Expectations,
    pub removed_finalizers: jobs::RemovedFinalizers,
    pub replica_set_events: Recorder,
    pub deployment_events: Recorder,
    pub daemon_set_events: Recorder,
    pub stateful_set_events: Recorder,
    pub job_events: Recorder,
    pub cron_job_events: Recorder,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// Waits until every shared cache a planner reads has been listed once: a Controller only
/// waits for its own kind, and planning from an empty pod cache (say, right after becoming
/// leader) would create every pod again.
async fn caches_ready(context: &Context) -> Result<(), LoopError> {
    let not_ready = |_| LoopError::Plan("a watch cache stopped before it was filled".into());
    context.pods.wait_until_ready().await.map_err(not_ready)?;
    context
        .replica_sets
        .wait_until_ready()
        .await
        .map_err(not_ready)?;
    context.nodes.wait_until_ready().await.map_err(not_ready)?;
    context
        .revisions
        .wait_until_ready()
        .await
        .map_err(not_ready)?;
    context.claims.wait_until_ready().await.map_err(not_ready)?;
    context.jobs.wait_until_ready().await.map_err(not_ready)?;
    Ok(())
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

/// Subscribes to a shared cache (one subscriber per controller that needs its events).
fn subscribe<K>(
    writer: &reflector::store::Writer<K>,
) -> Result<reflector::ReflectHandle<K>, LoopError>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    writer
        .subscribe()
        .ok_or_else(|| LoopError::Plan("a shared cache cannot be subscribed to".into()))
}

/// Runs the controllers (ReplicaSet, Deployment, DaemonSet, StatefulSet, Endpoints and
/// EndpointSlices, node lifecycle, garbage collector, ServiceAccounts) until `drain` turns
/// true.
pub async fn run(client: kube::Client, drain: watch::Receiver<bool>) {
    if let Err(e) = run_controllers(client, drain).await {
        tracing::error!(error = %e, "controllers stopped");
    }
}

async fn run_controllers(
    client: kube::Client,
    drain: watch::Receiver<bool>,
) -> Result<(), LoopError> {
    let (pods, pod_writer) = reflector::store_shared::<Pod>(SUBSCRIBER_BUFFER);
    let (replica_sets, rs_writer) = reflector::store_shared::<ReplicaSet>(SUBSCRIBER_BUFFER);
    let (deployments, deployment_writer) = reflector::store_shared::<Deployment>(SUBSCRIBER_BUFFER);
    let (daemon_sets, ds_writer) = reflector::store_shared::<DaemonSet>(SUBSCRIBER_BUFFER);
    let (stateful_sets, sts_writer) = reflector::store_shared::<StatefulSet>(SUBSCRIBER_BUFFER);
    let (nodes, node_writer) = reflector::store_shared::<Node>(SUBSCRIBER_BUFFER);
    let (revisions, revision_writer) =
        reflector::store_shared::<ControllerRevision>(SUBSCRIBER_BUFFER);
    let (claims, claim_writer) =
        reflector::store_shared::<PersistentVolumeClaim>(SUBSCRIBER_BUFFER);
    let (job_store, job_writer) = reflector::store_shared::<Job>(SUBSCRIBER_BUFFER);
    let (cron_jobs, cron_job_writer) = reflector::store_shared::<CronJob>(SUBSCRIBER_BUFFER);
    let pods_for_rs = subscribe(&pod_writer)?;
    let pods_for_ds = subscribe(&pod_writer)?;
    let pods_for_sts = subscribe(&pod_writer)?;
    let rs_for_rs = subscribe(&rs_writer)?;
    let rs_for_deployments = subscribe(&rs_writer)?;
    let deployments_for_deployments = subscribe(&deployment_writer)?;
    let ds_for_ds = subscribe(&ds_writer)?;
    let sts_for_sts = subscribe(&sts_writer)?;
    let nodes_for_ds = subscribe(&node_writer)?;
    let pods_for_jobs = subscribe(&pod_writer)?;
    let jobs_for_jobs = subscribe(&job_writer)?;
    let jobs_for_cron_jobs = subscribe(&job_writer)?;
    let cron_jobs_for_cron_jobs = subscribe(&cron_job_writer)?;
    // Endpoints/EndpointSlices, node lifecycle, garbage collector, ServiceAccounts.
    let more_loops = futures::future::join4(
        endpoints::run(
            client.clone(),
            subscribe(&pod_writer)?,
            subscribe(&node_writer)?,
            drain.clone(),
        ),
        nodes::run(
            client.clone(),
            subscribe(&pod_writer)?,
            subscribe(&node_writer)?,
            drain.clone(),
        ),
        garbage::run(client.clone(), drain.clone()),
        service_accounts::run(client.clone(), drain.clone()),
    );
    let drivers = [
        drive(&client, pod_writer),
        drive(&client, rs_writer),
        drive(&client, deployment_writer),
        drive(&client, ds_writer),
        drive(&client, sts_writer),
        drive(&client, node_writer),
        drive(&client, revision_writer),
        drive(&client, claim_writer),
        drive(&client, job_writer),
        drive(&client, cron_job_writer),
    ];
    let context = Arc::new(Context {
        replica_set_events: Recorder::new(client.clone(), "replicaset-controller"),
        deployment_events: Recorder::new(client.clone(), "deployment-controller"),
        daemon_set_events: Recorder::new(client.clone(), "daemonset-controller"),
        stateful_set_events: Recorder::new(client.clone(), "statefulset-controller"),
        job_events: Recorder::new(client.clone(), "job-controller"),
        cron_job_events: Recorder::new(client.clone(), "cronjob-controller"),
        client,
        pods,
        replica_sets: replica_sets.clone(),
        deployments: deployments.clone(),
        nodes,
        revisions,
        claims,
        jobs: job_store.clone(),
        expectations: Expectations::default(),
        removed_finalizers: jobs::RemovedFinalizers::default(),
    });
    let rs_loop = kube::runtime::Controller::for_shared_stream(rs_for_rs, replica_sets)
        .owns_shared_stream(pods_for_rs)
        .graceful_shutdown_on(drained(drain.clone()))
        .run(replicaset::reconcile, retry_later, Arc::clone(&context))
        .for_each(|_| async {});
    let deployment_loop =
        kube::runtime::Controller::for_shared_stream(deployments_for_deployments, deployments)
            .owns_shared_stream(rs_for_deployments)
            .graceful_shutdown_on(drained(drain.clone()))
            .run(deployment::reconcile, retry_later, Arc::clone(&context))
            .for_each(|_| async {});
    // Any node change may change where daemons must run: resync every DaemonSet.
    let all_daemon_sets = daemon_sets.clone();
    let ds_loop = kube::runtime::Controller::for_shared_stream(ds_for_ds, daemon_sets)
        .owns_shared_stream(pods_for_ds)
        .watches_shared_stream(nodes_for_ds, move |_node| {
            all_daemon_sets
                .state()
                .iter()
                .map(|ds| ObjectRef::from_obj(ds.as_ref()))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(drained(drain.clone()))
        .run(
            sets::reconcile_daemon_set,
            retry_later,
            Arc::clone(&context),
        )
        .for_each(|_| async {});
    let sts_loop = kube::runtime::Controller::for_shared_stream(sts_for_sts, stateful_sets)
        .owns_shared_stream(pods_for_sts)
        .graceful_shutdown_on(drained(drain.clone()))
        .run(
            sets::reconcile_stateful_set,
            retry_later,
            Arc::clone(&context),
        )
        .for_each(|_| async {});
    let job_loop = kube::runtime::Controller::for_shared_stream(jobs_for_jobs, job_store)
        .owns_shared_stream(pods_for_jobs)
        .graceful_shutdown_on(drained(drain.clone()))
        .run(jobs::reconcile_job, retry_later, Arc::clone(&context))
        .for_each(|_| async {});
    let cron_job_loop =
        kube::runtime::Controller::for_shared_stream(cron_jobs_for_cron_jobs, cron_jobs)
            .owns_shared_stream(jobs_for_cron_jobs)
            .graceful_shutdown_on(drained(drain.clone()))
            .run(jobs::reconcile_cron_job, retry_later, Arc::clone(&context))
            .for_each(|_| async {});
    futures::join!(
        rs_loop,
        deployment_loop,
        ds_loop,
        sts_loop,
        job_loop,
        cron_job_loop,
        more_loops
    );
    for driver in drivers {
        driver.abort();
    }
    Ok(())
}

fn requeue(after: Option<Duration>) -> kube::runtime::controller::Action {
    match after {
        Some(after) => kube::runtime::controller::Action::requeue(after),
        None => kube::runtime::controller::Action::await_change(),
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

/// "Plan again shortly": the cache was behind a write this loop made or saw.
fn stale() -> Result<kube::runtime::controller::Action, LoopError> {
    Ok(kube::runtime::controller::Action::requeue(
        Duration::from_millis(200),
    ))
}

/// Stops the sync when a write found the cache stale.
macro_rules! written {
    ($write:expr) => {
        if $write.await? == super::exec::Written::Stale {
            return super::stale();
        }
    };
}
pub(crate) use written;

/// Whether `owner` still waits for the pod cache to show its own creates and deletes.
fn waiting_on_pods(context: &Context, owner: &str, pods: &[Pod]) -> bool {
    !context.expectations.satisfied(
        owner,
        |key| {
            let (ns, name) = key.split_once('/').unwrap_or(("", key));
            context
                .pods
                .get(&ObjectRef::<Pod>::new(name).within(ns))
                .is_some()
        },
        |uid| pods.iter().any(|p| p.metadata.uid.as_deref() == Some(uid)),
    )
}

/// Whether a failed write means "the cache was stale, sync again" rather than an error.
fn is_stale(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(e) if e.code == 409 || e.code == 404)
}
