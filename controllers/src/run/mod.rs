//! The loops around the planners: shared watch caches (one watch per kind, see `cache`),
//! one kube-runtime `Controller` per kind (so no object is reconciled by
//! two tasks at once), and the execution of each plan through the API. Everything here is
//! thin: what to do is decided by the planners; this module only reads caches and writes.

mod cache;
mod deployment;
mod endpoints;
mod exec;
pub mod expectations;
mod garbage;
mod jobs;
pub mod node_ipam;
mod nodes;
mod replicaset;
pub mod root_ca;
mod service_accounts;
pub mod service_lb;
mod sets;

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::Resource;
use tokio::sync::watch;

use crate::events::Recorder;
use crate::node_lifecycle::NodeLifecycleConfig;
use cache::SharedCache;
use expectations::Expectations;

/// Why a reconcile failed; the object is retried after a delay.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("API request failed: {0}")]
    Api(#[from] kube::Error),
    #[error("{0}")]
    Plan(String),
    #[error("the {0} loop ended unexpectedly")]
    Ended(&'static str),
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

/// The objects of one namespace in a cache, shared with it: a planner reads them through
/// `Borrow`, and a namespace of 10,000 pods is not copied on every sync.
fn shared_in_namespace<K>(store: &Store<K>, namespace: &str) -> Vec<Arc<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let mut objects = store.state();
    objects.retain(|o| o.meta().namespace.as_deref() == Some(namespace));
    objects
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

/// Watch events taken in one go, at most, by [`with_ready`].
const MAX_BURST: usize = 4096;

/// `first` (what a wait on `stream` gave) and whatever else `stream` has ready right now, at
/// most [`MAX_BURST`] in all: a burst of watch events taken as one change by a loop whose pass
/// reads every object. `None` is the stream's end.
fn with_ready<S: futures::Stream + Unpin>(
    first: Option<S::Item>,
    stream: &mut S,
) -> impl Iterator<Item = Option<S::Item>> + '_ {
    std::iter::once(first)
        .chain(std::iter::from_fn(|| stream.next().now_or_never()))
        .take(MAX_BURST)
}

/// Resolves when `drain` turns true (or its sender is gone).
async fn drained(mut drain: watch::Receiver<bool>) {
    let _ = drain.wait_for(|d| *d).await;
}

/// Runs the controllers (ReplicaSet, Deployment, DaemonSet, StatefulSet, Job, CronJob,
/// Endpoints and EndpointSlices, node lifecycle, garbage collector, ServiceAccounts) until
/// `drain` turns true. If one loop ends before that (it should not: a watch cache stopped, a
/// bug), it is logged, the others are stopped and this returns early, so that the caller
/// (the leader elector) starts the whole set again on fresh caches instead of running on
/// with a loop silently missing.
pub async fn run(
    client: kube::Client,
    node_lifecycle: NodeLifecycleConfig,
    drain: watch::Receiver<bool>,
) {
    if let Err(e) = run_controllers(client, node_lifecycle, drain).await {
        tracing::error!(error = %e, "controllers stopped");
    }
}

/// The loops' own drain: turns true when the caller drains, or when a loop ended early.
struct Supervisor {
    outer: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
}

impl Supervisor {
    fn new(outer: watch::Receiver<bool>) -> Self {
        let (stop, _) = watch::channel(*outer.borrow());
        Supervisor { outer, stop }
    }

    /// The drain signal to hand to a loop.
    fn drain(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Forwards the caller's drain to the loops; resolves when it does.
    async fn forward(&self) {
        let mut outer = self.outer.clone();
        let _ = outer.wait_for(|d| *d).await;
        self.stop.send_replace(true);
    }

    /// Runs one loop; if it ends while nobody asked it to, says so and stops the others.
    /// Returns the name of a loop that ended early.
    async fn watch_over(
        &self,
        name: &'static str,
        work: impl std::future::Future<Output = ()>,
    ) -> Option<&'static str> {
        work.await;
        // Asked to: the caller drained, or another loop ended first.
        if *self.outer.borrow() || *self.stop.borrow() {
            return None;
        }
        tracing::error!(
            controller = name,
            "a control loop ended unexpectedly; stopping the others to restart them all"
        );
        self.stop.send_replace(true);
        Some(name)
    }
}

async fn run_controllers(
    client: kube::Client,
    node_lifecycle: NodeLifecycleConfig,
    drain: watch::Receiver<bool>,
) -> Result<(), LoopError> {
    let supervisor = Supervisor::new(drain);
    let mut pod_cache = SharedCache::<Pod>::new();
    let mut rs_cache = SharedCache::<ReplicaSet>::new();
    let mut deployment_cache = SharedCache::<Deployment>::new();
    let mut ds_cache = SharedCache::<DaemonSet>::new();
    let mut sts_cache = SharedCache::<StatefulSet>::new();
    let mut node_cache = SharedCache::<Node>::new();
    let revision_cache = SharedCache::<ControllerRevision>::new();
    let claim_cache = SharedCache::<PersistentVolumeClaim>::new();
    let mut job_cache = SharedCache::<Job>::new();
    let mut cron_job_cache = SharedCache::<CronJob>::new();
    let pods_for_rs = pod_cache.subscribe();
    let pods_for_ds = pod_cache.subscribe();
    let pods_for_sts = pod_cache.subscribe();
    let pods_for_jobs = pod_cache.subscribe();
    let pods_for_endpoints = pod_cache.subscribe();
    let pods_for_nodes = pod_cache.subscribe();
    let rs_for_rs = rs_cache.subscribe();
    let rs_for_deployments = rs_cache.subscribe();
    let deployments_for_deployments = deployment_cache.subscribe();
    let ds_for_ds = ds_cache.subscribe();
    let sts_for_sts = sts_cache.subscribe();
    let nodes_for_ds = node_cache.subscribe();
    let nodes_for_endpoints = node_cache.subscribe();
    let nodes_for_nodes = node_cache.subscribe();
    let jobs_for_jobs = job_cache.subscribe();
    let jobs_for_cron_jobs = job_cache.subscribe();
    let cron_jobs_for_cron_jobs = cron_job_cache.subscribe();
    let (replica_sets, deployments, daemon_sets, stateful_sets, job_store, cron_jobs) = (
        rs_cache.store(),
        deployment_cache.store(),
        ds_cache.store(),
        sts_cache.store(),
        job_cache.store(),
        cron_job_cache.store(),
    );
    let context = Arc::new(Context {
        replica_set_events: Recorder::new(client.clone(), "replicaset-controller"),
        deployment_events: Recorder::new(client.clone(), "deployment-controller"),
        daemon_set_events: Recorder::new(client.clone(), "daemonset-controller"),
        stateful_set_events: Recorder::new(client.clone(), "statefulset-controller"),
        job_events: Recorder::new(client.clone(), "job-controller"),
        cron_job_events: Recorder::new(client.clone(), "cronjob-controller"),
        client: client.clone(),
        pods: pod_cache.store(),
        replica_sets: replica_sets.clone(),
        deployments: deployments.clone(),
        nodes: node_cache.store(),
        revisions: revision_cache.store(),
        claims: claim_cache.store(),
        jobs: job_store.clone(),
        expectations: Expectations::default(),
        removed_finalizers: jobs::RemovedFinalizers::default(),
    });
    let drivers = [
        pod_cache.drive(&client),
        rs_cache.drive(&client),
        deployment_cache.drive(&client),
        ds_cache.drive(&client),
        sts_cache.drive(&client),
        node_cache.drive(&client),
        revision_cache.drive(&client),
        claim_cache.drive(&client),
        job_cache.drive(&client),
        cron_job_cache.drive(&client),
    ];
    let rs_loop = kube::runtime::Controller::for_shared_stream(rs_for_rs, replica_sets)
        .owns_shared_stream(pods_for_rs)
        .graceful_shutdown_on(drained(supervisor.drain()))
        .run(replicaset::reconcile, retry_later, Arc::clone(&context))
        .for_each(|_| async {});
    let deployment_loop =
        kube::runtime::Controller::for_shared_stream(deployments_for_deployments, deployments)
            .owns_shared_stream(rs_for_deployments)
            .graceful_shutdown_on(drained(supervisor.drain()))
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
        .graceful_shutdown_on(drained(supervisor.drain()))
        .run(
            sets::reconcile_daemon_set,
            retry_later,
            Arc::clone(&context),
        )
        .for_each(|_| async {});
    let sts_loop = kube::runtime::Controller::for_shared_stream(sts_for_sts, stateful_sets)
        .owns_shared_stream(pods_for_sts)
        .graceful_shutdown_on(drained(supervisor.drain()))
        .run(
            sets::reconcile_stateful_set,
            retry_later,
            Arc::clone(&context),
        )
        .for_each(|_| async {});
    let job_loop = kube::runtime::Controller::for_shared_stream(jobs_for_jobs, job_store)
        .owns_shared_stream(pods_for_jobs)
        .graceful_shutdown_on(drained(supervisor.drain()))
        .run(jobs::reconcile_job, retry_later, Arc::clone(&context))
        .for_each(|_| async {});
    let cron_job_loop =
        kube::runtime::Controller::for_shared_stream(cron_jobs_for_cron_jobs, cron_jobs)
            .owns_shared_stream(jobs_for_cron_jobs)
            .graceful_shutdown_on(drained(supervisor.drain()))
            .run(jobs::reconcile_cron_job, retry_later, Arc::clone(&context))
            .for_each(|_| async {});
    let s = &supervisor;
    let ended = futures::future::join_all([
        s.watch_over("replicaset", rs_loop).boxed(),
        s.watch_over("deployment", deployment_loop).boxed(),
        s.watch_over("daemonset", ds_loop).boxed(),
        s.watch_over("statefulset", sts_loop).boxed(),
        s.watch_over("job", job_loop).boxed(),
        s.watch_over("cronjob", cron_job_loop).boxed(),
        s.watch_over(
            "endpoints",
            endpoints::run(
                client.clone(),
                pods_for_endpoints,
                nodes_for_endpoints,
                s.drain(),
            ),
        )
        .boxed(),
        s.watch_over(
            "node-lifecycle",
            nodes::run(
                client.clone(),
                node_lifecycle,
                pods_for_nodes,
                nodes_for_nodes,
                s.drain(),
            ),
        )
        .boxed(),
        s.watch_over("garbage-collector", garbage::run(client.clone(), s.drain()))
            .boxed(),
        s.watch_over(
            "serviceaccount",
            service_accounts::run(client.clone(), s.drain()),
        )
        .boxed(),
    ]);
    futures::pin_mut!(ended);
    let ended = tokio::select! {
        ended = &mut ended => ended,
        // The caller drained: the loops see it through their own drain and finish.
        () = supervisor.forward() => ended.await,
    };
    for driver in drivers {
        driver.abort();
    }
    match ended.into_iter().flatten().next() {
        Some(name) => Err(LoopError::Ended(name)),
        None => Ok(()),
    }
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
fn waiting_on_pods<P: std::borrow::Borrow<Pod>>(
    context: &Context,
    owner: &str,
    pods: &[P],
) -> bool {
    !context.expectations.satisfied(
        owner,
        |key| {
            let (ns, name) = key.split_once('/').unwrap_or(("", key));
            context
                .pods
                .get(&ObjectRef::<Pod>::new(name).within(ns))
                .is_some()
        },
        |uid| {
            pods.iter()
                .any(|p| p.borrow().metadata.uid.as_deref() == Some(uid))
        },
    )
}

/// Whether a failed write means "the cache was stale, sync again" rather than an error.
fn is_stale(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(e) if e.code == 409 || e.code == 404)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One loop ending on its own stops the others (so the set is restarted as a whole); a
    /// drain asked for by the caller is not reported as an early end.
    #[tokio::test]
    async fn a_loop_that_ends_early_stops_the_others_and_is_reported() {
        let (_outer_tx, outer) = watch::channel(false);
        let supervisor = Supervisor::new(outer);
        let other = drained(supervisor.drain());
        let (early, other) = futures::join!(
            supervisor.watch_over("early", async {}),
            supervisor.watch_over("other", other),
        );
        assert_eq!(early, Some("early"));
        assert_eq!(other, None, "stopped, not ended on its own");

        let (outer_tx, outer) = watch::channel(false);
        let supervisor = Supervisor::new(outer);
        let work = supervisor.watch_over("drained", drained(supervisor.drain()));
        let (ended, ()) = futures::join!(work, async {
            outer_tx.send_replace(true);
            supervisor.forward().await;
        });
        assert_eq!(ended, None);
    }
}
