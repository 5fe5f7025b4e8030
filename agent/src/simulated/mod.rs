//! Simulated nodes, kwok-style: a thousand kubelets' worth of API traffic from one process, so
//! the control plane (scheduler, controllers) can be tested at scale on one machine. Each node
//! is registered and kept alive exactly as a kubelet does it, over the ordinary API (a kube-rs
//! client with a kubeconfig): a Node object, a Lease renewed every 10 s, conditions refreshed
//! every minute. Pods bound to the nodes are "run": marked Running and Ready with an address
//! from the node's range, completed when a Job's or annotated to ([`EXIT_AFTER_ANNOTATION`],
//! [`EXIT_CODE_ANNOTATION`]), and deleted for good once marked for deletion. No containers run.
//!
//! Modules: [`config`](SimConfig) what the nodes look like; `fleet` their names and ranges;
//! `node` and `lease` the two objects per node; `heartbeat` the renewals' timing; `lifecycle`
//! what to do with a pod, `pod_status` the statuses that says, `ip_pool` pod addresses and
//! `pods` the watch that drives them; `requests` the bound and retries every request goes
//! through.

mod config;
mod duration;
mod error;
mod fleet;
mod heartbeat;
mod ip_pool;
mod lease;
mod lifecycle;
mod node;
mod pod_status;
mod pods;
mod requests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use config::{parse_label, parse_taint, SimConfig, MAX_PODS_PER_NODE};
pub use duration::parse_duration;
pub use error::SimError;
pub use lease::NODE_LEASE_NAMESPACE;
pub use lifecycle::{EXIT_AFTER_ANNOTATION, EXIT_CODE_ANNOTATION};
pub use node::{KUBELET_VERSION, RUNTIME_VERSION, SIMULATED_ANNOTATION};

use crate::simulated::fleet::SimNode;
use crate::simulated::lease::NodeLease;
use crate::simulated::requests::RequestGate;

/// How often the simulator logs its request rate.
const REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// What the simulator's parts share.
struct Shared {
    client: kube::Client,
    config: SimConfig,
    gate: RequestGate,
    nodes: Api<Node>,
    failures: heartbeat::FailureTally,
}

/// A fleet of simulated nodes.
pub struct SimulatedNodes {
    client: kube::Client,
    config: SimConfig,
}

// kube::Client has no Debug of its own.
impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("gate", &self.gate)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SimulatedNodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedNodes")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SimulatedNodes {
    pub fn new(client: kube::Client, config: SimConfig) -> SimulatedNodes {
        SimulatedNodes { client, config }
    }

    /// Registers the nodes, then keeps them alive and runs their pods until `shutdown` turns
    /// true (or its sender goes). Fails if the configuration is invalid or a node cannot be
    /// registered.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), SimError> {
        self.config.validate()?;
        let fleet = fleet::plan_fleet(&self.config)?;
        let shared = Arc::new(Shared {
            nodes: Api::all(self.client.clone()),
            gate: RequestGate::new(self.config.max_in_flight),
            failures: heartbeat::FailureTally::default(),
            client: self.client,
            config: self.config,
        });

        let started = Instant::now();
        let leases = tokio::select! {
            registered = register_all(&shared, &fleet) => registered?,
            () = stopped(&mut shutdown) => return Ok(()),
        };
        tracing::info!(
            nodes = fleet.len(),
            seconds = started.elapsed().as_secs_f64(),
            requests = shared.gate.sent(),
            "simulated nodes registered"
        );

        let mut heartbeats = JoinSet::new();
        for (node, lease) in fleet.iter().cloned().zip(leases) {
            heartbeats.spawn(heartbeat::beat(Arc::clone(&shared), node, lease));
        }
        let result = tokio::select! {
            ran = pods::PodRunner::new(Arc::clone(&shared), &fleet).run() => ran,
            () = report_rates(&shared) => Ok(()),
            () = heartbeat::report_failures(&shared.failures, shared.config.lease_renew_interval) => Ok(()),
            () = stopped(&mut shutdown) => Ok(()),
        };
        heartbeats.shutdown().await;
        if shared.config.cleanup {
            remove_all(&shared, &fleet).await?;
            tracing::info!(nodes = fleet.len(), "simulated nodes removed");
        }
        result
    }
}

/// Resolves once shutdown is asked for.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Registers every node with its Lease, a bounded number at a time. (Owned nodes and a shared
/// handle per future: borrowed ones make the stream's future too general to be spawned.)
async fn register_all(shared: &Arc<Shared>, fleet: &[SimNode]) -> Result<Vec<NodeLease>, SimError> {
    let width = shared.config.max_in_flight.max(1);
    futures::stream::iter(fleet.to_vec())
        .map(|node| register_one(Arc::clone(shared), node))
        .buffered(width)
        .try_collect()
        .await
}

async fn register_one(shared: Arc<Shared>, node: SimNode) -> Result<NodeLease, SimError> {
    let stored = node::register(&shared.nodes, &shared.gate, &node, &shared.config).await?;
    let mut lease = NodeLease::new(
        shared.client.clone(),
        &node.name,
        stored.metadata.uid,
        shared.config.lease_duration_seconds,
    );
    lease.renew(&shared.gate).await?;
    Ok(lease)
}

/// Deletes every node and its Lease.
async fn remove_all(shared: &Arc<Shared>, fleet: &[SimNode]) -> Result<(), SimError> {
    let width = shared.config.max_in_flight.max(1);
    futures::stream::iter(fleet.to_vec())
        .map(|node| remove_one(Arc::clone(shared), node))
        .buffer_unordered(width)
        .try_collect()
        .await
}

async fn remove_one(shared: Arc<Shared>, node: SimNode) -> Result<(), SimError> {
    let lease = NodeLease::new(
        shared.client.clone(),
        &node.name,
        None,
        shared.config.lease_duration_seconds,
    );
    lease.delete(&shared.gate).await?;
    node::delete(&shared.nodes, &shared.gate, &node.name).await
}

/// Logs the request rate every [`REPORT_INTERVAL`]; never returns.
async fn report_rates(shared: &Shared) {
    let mut ticks = tokio::time::interval(REPORT_INTERVAL);
    ticks.tick().await;
    let mut last = shared.gate.sent();
    loop {
        ticks.tick().await;
        let sent = shared.gate.sent();
        tracing::info!(
            requests_per_second = (sent - last) as f64 / REPORT_INTERVAL.as_secs_f64(),
            requests = sent,
            "simulated nodes running"
        );
        last = sent;
    }
}
