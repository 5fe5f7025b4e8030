//! The pods on simulated nodes: one cluster-wide watch of bound pods (`spec.nodeName!=`, one
//! connection for all nodes rather than the kubelet's one per node), filtered to the fleet's
//! nodes, and for each pod the next step of [`lifecycle`] carried out at its time: admitted
//! and started after `pod_start_delay` (an address from the node's range), exited when due,
//! deleted for good once marked for deletion.
//!
//! Steps run as tasks of their own so a slow or delayed one never holds up the watch; each is
//! keyed by what it does, so the watch echoing a pod back (often a stale copy) never starts the
//! same step twice. A step that fails is retried from the pod as last seen.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;
use tokio::task::{AbortHandle, JoinSet};

use crate::simulated::fleet::SimNode;
use crate::simulated::ip_pool::PodIpPool;
use crate::simulated::lifecycle::{self, Step};
use crate::simulated::{pod_status, Shared, SimError};

/// How long a failed step waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// What a step task does; a pod has at most one task of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum StepKey {
    Start,
    Reject,
    /// The exit of the containers' run after `restarts` restarts.
    Exit {
        restarts: i32,
    },
    Finish,
}

/// How a step task ended.
#[derive(Debug)]
struct Outcome {
    uid: String,
    key: StepKey,
    done: bool,
}

/// A pod the simulator has seen on one of its nodes.
#[derive(Debug)]
struct Tracked {
    node: String,
    /// The pod as last seen (managed fields dropped).
    pod: Pod,
    /// The pod address taken from the node's range (not for host-network pods).
    ip: Option<IpAddr>,
    /// Whether it counts against the node's pod capacity.
    admitted: bool,
    /// Steps running (with the handle to stop them) or done.
    steps: HashMap<StepKey, Option<AbortHandle>>,
    warned: bool,
}

/// One node's pods.
#[derive(Debug)]
struct NodeSlot {
    node: SimNode,
    ips: PodIpPool,
    admitted: HashSet<String>,
}

/// The pod side of the simulated kubelets.
#[derive(Debug)]
pub struct PodRunner {
    shared: Arc<Shared>,
    nodes: HashMap<String, NodeSlot>,
    pods: HashMap<String, Tracked>,
    tasks: JoinSet<Outcome>,
    /// The pods listed since the watch (re)started, while it relists.
    relisted: Option<HashSet<String>>,
}

impl PodRunner {
    pub fn new(shared: Arc<Shared>, fleet: &[SimNode]) -> PodRunner {
        let nodes = fleet
            .iter()
            .map(|node| {
                let slot = NodeSlot {
                    node: node.clone(),
                    ips: PodIpPool::new(node.pod_cidr),
                    admitted: HashSet::new(),
                };
                (node.name.clone(), slot)
            })
            .collect();
        PodRunner {
            shared,
            nodes,
            pods: HashMap::new(),
            tasks: JoinSet::new(),
            relisted: None,
        }
    }

    /// Follows the pods until the watch ends (it does not while the API answers); dropping
    /// the future stops every step in flight.
    pub async fn run(mut self) -> Result<(), SimError> {
        let api: Api<Pod> = Api::all(self.shared.client.clone());
        let config = watcher::Config::default().fields("spec.nodeName!=");
        let events = watcher(api, config).default_backoff();
        let mut events = std::pin::pin!(events);
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(event)) => self.on_event(event),
                    Some(Err(error)) => tracing::warn!(%error, "pod watch failed; retrying"),
                    None => return Err(SimError::WatchEnded),
                },
                Some(finished) = self.tasks.join_next() => match finished {
                    Ok(outcome) => self.on_outcome(outcome),
                    Err(error) if error.is_cancelled() => {}
                    Err(error) => tracing::error!(%error, "a pod step task failed"),
                },
            }
        }
    }

    fn on_event(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => self.relisted = Some(HashSet::new()),
            watcher::Event::InitApply(pod) => {
                if let (Some(seen), Some(uid)) = (self.relisted.as_mut(), pod.metadata.uid.as_ref())
                {
                    seen.insert(uid.clone());
                }
                self.reconcile(pod);
            }
            watcher::Event::InitDone => {
                // Pods not listed again were deleted while the watch was down.
                if let Some(seen) = self.relisted.take() {
                    let gone: Vec<String> = self
                        .pods
                        .keys()
                        .filter(|uid| !seen.contains(*uid))
                        .cloned()
                        .collect();
                    for uid in gone {
                        self.forget(&uid);
                    }
                }
            }
            watcher::Event::Apply(pod) => self.reconcile(pod),
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid.as_ref() {
                    self.forget(uid);
                }
            }
        }
    }

    fn on_outcome(&mut self, outcome: Outcome) {
        let Some(tracked) = self.pods.get_mut(&outcome.uid) else {
            return;
        };
        if outcome.done {
            tracked.steps.insert(outcome.key, None);
        } else {
            tracked.steps.remove(&outcome.key);
            let pod = tracked.pod.clone();
            self.reconcile(pod);
        }
    }

    /// Decides and launches `pod`'s next step, if it is on one of our nodes.
    fn reconcile(&mut self, mut pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let Some(node_name) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            return;
        };
        let Some(slot) = self.nodes.get_mut(&node_name) else {
            return;
        };
        pod.metadata.managed_fields = None;
        let tracked = self.pods.entry(uid.clone()).or_insert_with(|| Tracked {
            node: node_name.clone(),
            pod: pod.clone(),
            ip: None,
            admitted: false,
            steps: HashMap::new(),
            warned: false,
        });
        tracked.pod = pod.clone();
        adopt_if_running(slot, tracked, &uid);

        let config = &self.shared.config;
        let exit = lifecycle::exit_plan(&pod, config.complete_after).unwrap_or_else(|problem| {
            if !tracked.warned {
                tracked.warned = true;
                tracing::warn!(pod = %pod_name(&pod), %problem, "ignoring the simulation annotations");
            }
            None
        });
        let step = lifecycle::next_step(&pod, exit);
        let now = Timestamp::now();
        match step {
            Step::Finish => {
                if !tracked.steps.contains_key(&StepKey::Finish) {
                    stop_steps(tracked);
                    let task = finish(Arc::clone(&self.shared), pod, uid.clone());
                    launch(&mut self.tasks, tracked, StepKey::Finish, task);
                }
            }
            Step::Ended => {
                stop_steps(tracked);
                release(slot, tracked, &uid);
            }
            Step::Start => {
                if tracked.steps.contains_key(&StepKey::Start)
                    || tracked.steps.contains_key(&StepKey::Reject)
                {
                    return;
                }
                let host_ip = slot.node.internal_ip;
                match admit(slot, tracked, &uid, config.pods, is_host_network(&pod)) {
                    Ok(pod_ip) => {
                        let status = move |pod: &Pod| {
                            pod_status::running_status(pod, host_ip, pod_ip, Timestamp::now())
                        };
                        let task = patch_status(
                            Arc::clone(&self.shared),
                            pod,
                            uid.clone(),
                            StepKey::Start,
                            config.pod_start_delay,
                            status,
                        );
                        launch(&mut self.tasks, tracked, StepKey::Start, task);
                    }
                    Err(message) => {
                        tracing::info!(pod = %pod_name(&pod), node = %node_name, %message, "rejecting pod");
                        let status =
                            move |_: &Pod| pod_status::rejected_status("OutOfpods", &message);
                        let task = patch_status(
                            Arc::clone(&self.shared),
                            pod,
                            uid.clone(),
                            StepKey::Reject,
                            Duration::ZERO,
                            status,
                        );
                        launch(&mut self.tasks, tracked, StepKey::Reject, task);
                    }
                }
            }
            Step::Exit {
                due,
                code,
                restart,
                restarts,
            } => {
                let key = StepKey::Exit { restarts };
                if tracked.steps.contains_key(&key) {
                    return;
                }
                let wait = Duration::try_from(due.duration_since(now)).unwrap_or(Duration::ZERO);
                let status = move |pod: &Pod| {
                    if restart {
                        pod_status::restarted_status(pod, code, Timestamp::now())
                    } else {
                        pod_status::exited_status(pod, code, Timestamp::now())
                    }
                };
                let task = patch_status(
                    Arc::clone(&self.shared),
                    pod,
                    uid.clone(),
                    key,
                    wait,
                    status,
                );
                launch(&mut self.tasks, tracked, key, task);
            }
            Step::Steady => {}
        }
    }

    /// The pod is gone: stop its steps and free what it held.
    fn forget(&mut self, uid: &str) {
        if let Some(mut tracked) = self.pods.remove(uid) {
            stop_steps(&mut tracked);
            if let Some(slot) = self.nodes.get_mut(&tracked.node) {
                release(slot, &mut tracked, uid);
            }
        }
    }
}

/// Counts a pod that already runs (started by an earlier run of the simulator) against its
/// node and holds its address.
fn adopt_if_running(slot: &mut NodeSlot, tracked: &mut Tracked, uid: &str) {
    let status = tracked.pod.status.as_ref();
    if tracked.admitted || status.and_then(|s| s.phase.as_deref()) != Some("Running") {
        return;
    }
    tracked.admitted = true;
    slot.admitted.insert(uid.to_string());
    let pod_ip = status
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse::<IpAddr>().ok());
    if let Some(ip) = pod_ip {
        if slot.ips.reserve(ip) {
            tracked.ip = Some(ip);
        }
    }
    // Its start is done; do not start it again.
    tracked.steps.insert(StepKey::Start, None);
}

/// Admits a pod to its node as the kubelet's admission does (by pod count) and gives it an
/// address: its node's for a host-network pod, else one from the node's range.
fn admit(
    slot: &mut NodeSlot,
    tracked: &mut Tracked,
    uid: &str,
    max_pods: u32,
    host_network: bool,
) -> Result<IpAddr, String> {
    if !tracked.admitted {
        let used = slot.admitted.len();
        if used >= max_pods as usize {
            return Err(format!(
                "Pod was rejected: Node didn't have enough resource: pods, requested: 1, used: {used}, capacity: {max_pods}"
            ));
        }
    }
    if host_network {
        tracked.admitted = true;
        slot.admitted.insert(uid.to_string());
        return Ok(slot.node.internal_ip);
    }
    let ip = match tracked.ip {
        Some(ip) => ip,
        None => slot
            .ips
            .allocate()
            .ok_or_else(|| "Pod was rejected: no pod address left on the node".to_string())?,
    };
    tracked.ip = Some(ip);
    tracked.admitted = true;
    slot.admitted.insert(uid.to_string());
    Ok(ip)
}

/// Frees the pod's address and its place on the node.
fn release(slot: &mut NodeSlot, tracked: &mut Tracked, uid: &str) {
    if let Some(ip) = tracked.ip.take() {
        slot.ips.release(ip);
    }
    tracked.admitted = false;
    slot.admitted.remove(uid);
}

/// Stops every step still running (a pod being deleted has no use for its start).
fn stop_steps(tracked: &mut Tracked) {
    for handle in tracked.steps.values().flatten() {
        handle.abort();
    }
    tracked.steps.retain(|_, handle| handle.is_none());
}

fn launch(
    tasks: &mut JoinSet<Outcome>,
    tracked: &mut Tracked,
    key: StepKey,
    task: impl std::future::Future<Output = Outcome> + Send + 'static,
) {
    let handle = tasks.spawn(task);
    tracked.steps.insert(key, Some(handle));
}

fn is_host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

fn pod_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

fn pods_in(shared: &Shared, pod: &Pod) -> Api<Pod> {
    Api::namespaced(
        shared.client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    )
}

/// After `wait`, patches the pod's status to `status(pod)`.
async fn patch_status(
    shared: Arc<Shared>,
    pod: Pod,
    uid: String,
    key: StepKey,
    wait: Duration,
    status: impl Fn(&Pod) -> PodStatus + Send + 'static,
) -> Outcome {
    tokio::time::sleep(wait).await;
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api = pods_in(&shared, &pod);
    let patch = Patch::Strategic(json!({"status": status(&pod)}));
    let params = PatchParams::default();
    let sent = shared
        .gate
        .send(
            || format!("updating the status of pod {}", pod_name(&pod)),
            || api.patch_status(&name, &params, &patch),
        )
        .await;
    let done = match sent {
        Ok(_) => true,
        // Deleted meanwhile: nothing left to do.
        Err(e) if e.is_not_found() => true,
        Err(error) => {
            tracing::warn!(%error, "pod status update failed; will retry");
            tokio::time::sleep(RETRY_AFTER).await;
            false
        }
    };
    Outcome { uid, key, done }
}

/// Deletes the pod for good, as the kubelet does once its containers stopped (grace period 0,
/// only this very pod, not a new one of the same name).
async fn finish(shared: Arc<Shared>, pod: Pod, uid: String) -> Outcome {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api = pods_in(&shared, &pod);
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let deleted = shared
        .gate
        .send(
            || format!("deleting pod {}", pod_name(&pod)),
            || api.delete(&name, &params),
        )
        .await;
    let done = match deleted {
        Ok(_) => true,
        // Gone already, or the name now belongs to another pod.
        Err(e) if e.is_not_found() || e.is_conflict() => true,
        Err(error) => {
            tracing::warn!(%error, "pod deletion failed; will retry");
            tokio::time::sleep(RETRY_AFTER).await;
            false
        }
    };
    Outcome {
        uid,
        key: StepKey::Finish,
        done,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulated::fleet::plan_fleet;
    use crate::simulated::SimConfig;

    fn slot() -> NodeSlot {
        let config = SimConfig {
            count: 4,
            ..SimConfig::default()
        };
        let node = plan_fleet(&config).expect("plan").swap_remove(3);
        NodeSlot {
            ips: PodIpPool::new(node.pod_cidr),
            node,
            admitted: HashSet::new(),
        }
    }

    fn tracked(pod: serde_json::Value) -> Tracked {
        Tracked {
            node: "sim-3".into(),
            pod: serde_json::from_value(pod).expect("pod"),
            ip: None,
            admitted: false,
            steps: HashMap::new(),
            warned: false,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn pods_are_admitted_up_to_the_nodes_capacity() {
        let mut slot = slot();
        let mut first = tracked(serde_json::json!({"metadata": {"name": "a"}}));
        assert_eq!(
            admit(&mut slot, &mut first, "a", 2, false),
            Ok(ip("10.128.3.2"))
        );
        // Admitting again (a retried start) keeps the pod's address.
        assert_eq!(
            admit(&mut slot, &mut first, "a", 2, false),
            Ok(ip("10.128.3.2"))
        );
        let mut host = tracked(serde_json::json!({"metadata": {"name": "h"}}));
        assert_eq!(
            admit(&mut slot, &mut host, "h", 2, true),
            Ok(ip("10.64.0.4"))
        );
        let mut third = tracked(serde_json::json!({"metadata": {"name": "c"}}));
        let refused = admit(&mut slot, &mut third, "c", 2, false);
        assert!(
            matches!(&refused, Err(m) if m.contains("pods, requested: 1, used: 2, capacity: 2")),
            "{refused:?}"
        );
        // An ended pod frees its place and its address.
        release(&mut slot, &mut first, "a");
        assert_eq!(
            admit(&mut slot, &mut third, "c", 2, false),
            Ok(ip("10.128.3.3"))
        );
        assert!(first.ip.is_none() && !first.admitted);
    }

    #[test]
    fn a_pod_running_before_a_restart_keeps_its_address() {
        let mut slot = slot();
        let mut running = tracked(serde_json::json!({
            "metadata": {"name": "r"},
            "status": {"phase": "Running", "podIP": "10.128.3.2"},
        }));
        adopt_if_running(&mut slot, &mut running, "r");
        assert_eq!(running.ip, Some(ip("10.128.3.2")));
        assert!(running.admitted && slot.admitted.contains("r"));
        assert!(
            matches!(running.steps.get(&StepKey::Start), Some(None)),
            "not started again"
        );
        let mut next = tracked(serde_json::json!({"metadata": {"name": "n"}}));
        assert_eq!(
            admit(&mut slot, &mut next, "n", 110, false),
            Ok(ip("10.128.3.3"))
        );
    }
}
