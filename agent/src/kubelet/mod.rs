//! The kubelet: registers this machine as a Node and keeps its Lease and status fresh, watches
//! the pods bound to it, and runs each through its own worker ([`worker`]) that drives
//! containerd over CRI. A relist every second (the kubelet's PLEG) notices what changed in the
//! runtime — a container that exited, something removed behind our back — and wakes the
//! worker of that pod; pods the runtime holds but the API no longer assigns here are removed.
//! On restart the agent adopts what runs: containers are found by their labels and a running
//! container whose spec is unchanged is left alone.
//!
//! Modules: `node` (the Node and its measurements), `plan` (what to do, pure), `status` (what
//! to report, pure), `containers` (CRI configs, pure), `env` and `volumes` (what containers
//! get), `images` (pull policy and credentials), `probes`, `runtime` (CRI state per pod),
//! `worker` (one pod's loop), `log_rotation` (the kubelet's container log manager),
//! `hostports` (pods' `hostPort`s in nftables).

pub mod containers;
pub mod env;
pub mod hostports;
pub mod images;
pub mod log_rotation;
pub mod logs;
pub mod node;
pub mod plan;
pub mod probes;
pub mod runtime;
pub mod server;
pub mod status;
pub mod tokens;
pub mod volumes;
pub mod worker;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use shoal_controllers::events::{EventType, Recorder};
use tokio::sync::{watch, Notify};

use crate::cri::Cri;
use crate::kubelet::containers::SandboxSettings;
use crate::kubelet::node::{NodeSettings, Pressure};
use crate::kubelet::probes::Probes;
use crate::kubelet::runtime::{LABEL_MANAGED, LABEL_POD_UID};
use crate::registries::Registries;

/// Whether the node's pod network is ready (an `Err` says why not).
pub type NetworkCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// How the kubelet is set up.
#[derive(Clone)]
pub struct KubeletSettings {
    pub node: NodeSettings,
    /// `<data-dir>/agent`.
    pub agent_dir: PathBuf,
    pub sandbox: SandboxSettings,
    /// Variables every container gets (the `kubernetes` Service's).
    pub service_env: Vec<(String, String)>,
    pub registries: Registries,
    /// The node API's port (0: any free one, advertised in the Node's status).
    pub kubelet_port: u16,
    /// The cluster CA, which signs the API server's client certificate.
    pub client_ca_pem: String,
    /// Extra reason the node is not ready (e.g. no pod network yet), checked each heartbeat.
    pub network_ready: NetworkCheck,
    /// When container logs rotate.
    pub log_limits: log_rotation::LogLimits,
    /// The whole pod network (`--cluster-cidr`).
    pub pod_networks: Vec<shoal_common::Cidr>,
    /// Turns true once the sandbox (pause) image is in the runtime: it is built while the node
    /// registers, and sandboxes wait for it.
    pub sandbox_image_ready: watch::Receiver<bool>,
}

impl std::fmt::Debug for KubeletSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletSettings")
            .field("node", &self.node)
            .field("agent_dir", &self.agent_dir)
            .finish_non_exhaustive()
    }
}

/// What the kubelet's tasks share.
pub struct Shared {
    pub client: kube::Client,
    pub cri: Cri,
    pub settings: KubeletSettings,
    pub probes: Probes,
    pods: RwLock<HashMap<String, Arc<Pod>>>,
    pod_ips: Mutex<HashMap<String, String>>,
    workers: Mutex<HashMap<String, Arc<Notify>>>,
    recorder: Recorder,
    pods_listed: AtomicBool,
    /// The machine's memory, for containers' `oom_score_adj`.
    pub memory_capacity: u64,
    /// ServiceAccount tokens of projected volumes.
    pub tokens: tokens::TokenCache,
    /// Pods' host ports.
    pub hostports: hostports::HostPorts,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// The pod with `uid`, as last seen by the watch.
    pub fn pod(&self, uid: &str) -> Option<Pod> {
        self.pods
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(uid)
            .map(|p| Pod::clone(p))
    }

    /// The uid of the pod `namespace/name` bound here.
    pub fn pod_uid(&self, namespace: &str, name: &str) -> Option<String> {
        let pods = self
            .pods
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pods.iter()
            .find(|(_, p)| {
                p.metadata.namespace.as_deref() == Some(namespace)
                    && p.metadata.name.as_deref() == Some(name)
            })
            .map(|(uid, _)| uid.clone())
    }

    /// The directory holding a pod's volumes and managed files.
    pub fn pod_dir(&self, uid: &str) -> PathBuf {
        self.settings.agent_dir.join("pods").join(uid)
    }

    /// The pod's address: the node's for host-network pods, else its sandbox's.
    pub fn pod_ip(&self, pod: &Pod) -> String {
        if pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false)
        {
            return self.settings.node.ip.to_string();
        }
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        lock(&self.pod_ips)
            .get(uid)
            .cloned()
            .or_else(|| pod.status.as_ref().and_then(|s| s.pod_ip.clone()))
            .unwrap_or_default()
    }

    pub(crate) fn set_pod_ip(&self, uid: &str, ip: Option<String>) {
        let mut ips = lock(&self.pod_ips);
        match ip {
            Some(ip) => {
                ips.insert(uid.to_string(), ip);
            }
            None => {
                ips.remove(uid);
            }
        }
    }

    /// Brings the host ports table in step with the pods, once the pod watch has listed them
    /// (before that, what an earlier agent wrote stays).
    pub(crate) async fn sync_host_ports(&self) {
        if !self.pods_listed.load(Ordering::Acquire) {
            return;
        }
        let desired = {
            let pods = self
                .pods
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.hostports
                .desired(pods.iter().map(|(uid, pod)| (uid, pod.as_ref())))
        };
        self.hostports.apply(desired).await;
    }

    /// Records an Event about `pod`.
    pub fn event(&self, pod: &Pod, type_: EventType, reason: &str, message: &str) {
        self.recorder
            .record(worker::reference(pod), type_, reason, message);
    }

    /// Records a warning about the pod with `uid`, if it is known.
    pub fn event_for_uid(&self, uid: &str, reason: &str, message: &str) {
        if let Some(pod) = self.pod(uid) {
            self.event(&pod, EventType::Warning, reason, message);
        }
    }

    /// Wakes the worker of pod `uid`, starting one if there is none.
    pub fn wake(self: &Arc<Self>, uid: &str) {
        let notify = {
            let mut workers = lock(&self.workers);
            if let Some(notify) = workers.get(uid) {
                Arc::clone(notify)
            } else {
                let notify = Arc::new(Notify::new());
                workers.insert(uid.to_string(), Arc::clone(&notify));
                tokio::spawn(worker::run(
                    Arc::clone(self),
                    uid.to_string(),
                    Arc::clone(&notify),
                ));
                notify
            }
        };
        notify.notify_one();
    }
}

/// What went wrong starting the kubelet.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("registering node {name}: {source}")]
    Register { name: String, source: kube::Error },
    #[error(transparent)]
    Cri(#[from] crate::cri::CriError),
    #[error(transparent)]
    NodeApi(#[from] server::NodeApiError),
}

/// The node status heartbeat and Lease renewal period (the kubelet's defaults).
const HEARTBEAT: Duration = Duration::from_secs(10);
/// The relist period.
const RELIST: Duration = Duration::from_secs(1);
const LEASE_DURATION_SECONDS: i32 = 40;

/// Runs the kubelet until `shutdown`.
pub async fn run(
    client: kube::Client,
    cri: Cri,
    settings: KubeletSettings,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), KubeletError> {
    let version = cri.wait_ready(Duration::from_secs(60)).await?;
    let mut settings = settings;
    settings.node.runtime_version =
        format!("{}://{}", version.runtime_name, version.runtime_version);
    let tls = server::tls_config(
        &settings.node.name,
        settings.node.ip,
        &settings.client_ca_pem,
    )?;
    let (listener, port) = server::bind(settings.kubelet_port).await?;
    settings.node.kubelet_port = port;
    let agent_dir_for_machine = settings.agent_dir.clone();
    let settings_pod_networks = settings.pod_networks.clone();
    let shared = Arc::new(Shared {
        recorder: Recorder::new(client.clone(), "kubelet"),
        client,
        cri,
        settings,
        probes: Probes::default(),
        pods: RwLock::new(HashMap::new()),
        pod_ips: Mutex::new(HashMap::new()),
        workers: Mutex::new(HashMap::new()),
        pods_listed: AtomicBool::new(false),
        memory_capacity: node::read_machine(&agent_dir_for_machine).memory_bytes,
        tokens: tokens::TokenCache::default(),
        hostports: hostports::HostPorts::new(shoal_net::hostport::TableConfig {
            bridge: shoal_net::cni::config::DEFAULT_BRIDGE.to_string(),
            pod_networks: settings_pod_networks,
        }),
    });
    register(&shared).await?;
    tracing::info!(node = %shared.settings.node.name, "node registered");
    let tasks = [
        tokio::spawn(server::serve(listener, tls, Arc::clone(&shared))),
        tokio::spawn(heartbeat(Arc::clone(&shared))),
        tokio::spawn(watch_pods(Arc::clone(&shared))),
        tokio::spawn(relist(Arc::clone(&shared))),
        tokio::spawn(log_rotation::run(
            Arc::clone(&shared),
            shared.settings.log_limits,
            Duration::from_secs(10),
        )),
    ];
    let _ = shutdown.wait_for(|stop| *stop).await;
    for task in tasks {
        task.abort();
    }
    Ok(())
}

async fn register(shared: &Shared) -> Result<(), KubeletError> {
    let name = shared.settings.node.name.clone();
    let err = |source| KubeletError::Register {
        name: name.clone(),
        source,
    };
    let nodes: Api<Node> = Api::all(shared.client.clone());
    let machine = node::read_machine(&shared.settings.agent_dir);
    let wanted = node::node_object(&shared.settings.node, &machine);
    match nodes.get_opt(&name).await.map_err(err)? {
        None => {
            nodes
                .create(&PostParams::default(), &wanted)
                .await
                .map_err(err)?;
        }
        Some(_) => {
            let patch = json!({"metadata": {"labels": wanted.metadata.labels, "annotations": wanted.metadata.annotations}});
            nodes
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(err)?;
        }
    }
    post_status(shared, &nodes, &machine)
        .await
        .map(drop)
        .map_err(err)
}

async fn post_status(
    shared: &Shared,
    nodes: &Api<Node>,
    machine: &node::MachineInfo,
) -> Result<bool, kube::Error> {
    let name = &shared.settings.node.name;
    let previous = nodes
        .get_opt(name)
        .await?
        .and_then(|n| n.status)
        .and_then(|s| s.conditions)
        .unwrap_or_default();
    let pressure: Pressure = node::read_pressure(&shared.settings.agent_dir);
    let ready = runtime_ready(shared)
        .await
        .and_then(|()| (shared.settings.network_ready)());
    let is_ready = ready.is_ok();
    let status = node::node_status(
        &shared.settings.node,
        machine,
        &pressure,
        ready,
        Timestamp::now(),
        &previous,
    );
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await
        .map(|_| is_ready)
}

async fn runtime_ready(shared: &Shared) -> Result<(), String> {
    let status = shared
        .cri
        .status()
        .await
        .map_err(|e| format!("container runtime is down: {e}"))?;
    let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
    let get = |t: &str| conditions.iter().find(|c| c.r#type == t);
    match get("RuntimeReady") {
        Some(c) if c.status => Ok(()),
        Some(c) => Err(format!(
            "container runtime not ready: {}: {}",
            c.reason, c.message
        )),
        None => Err("container runtime status unknown".into()),
    }
}

/// Renews the Lease and refreshes the node's status every [`HEARTBEAT`].
async fn heartbeat(shared: Arc<Shared>) {
    let name = shared.settings.node.name.clone();
    let leases: Api<Lease> = Api::namespaced(shared.client.clone(), "kube-node-lease");
    let nodes: Api<Node> = Api::all(shared.client.clone());
    let machine = node::read_machine(&shared.settings.agent_dir);
    loop {
        let now = Timestamp::now();
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": name,
                "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                "renewTime": k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(now),
            },
        });
        let renewed = leases
            .patch(
                &name,
                &PatchParams::apply("kubelet").force(),
                &Patch::Apply(&lease),
            )
            .await;
        if let Err(err) = renewed {
            tracing::warn!(%err, "renewing the node lease");
        }
        let ready = match post_status(&shared, &nodes, &machine).await {
            Ok(ready) => ready,
            Err(err) => {
                tracing::warn!(%err, "posting node status");
                true // nothing to wait for early: the next heartbeat retries
            }
        };
        if ready {
            tokio::time::sleep(HEARTBEAT).await;
        } else {
            // A node coming up reports Ready as soon as its pod network is configured, not a
            // heartbeat later: the check is local and cheap.
            let deadline = tokio::time::Instant::now() + HEARTBEAT;
            while tokio::time::Instant::now() < deadline
                && (shared.settings.network_ready)().is_err()
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Keeps the pods bound to this node and wakes their workers.
async fn watch_pods(shared: Arc<Shared>) {
    let pods: Api<Pod> = Api::all(shared.client.clone());
    let config =
        watcher::Config::default().fields(&format!("spec.nodeName={}", shared.settings.node.name));
    let mut stream = watcher(pods, config).boxed();
    let mut listing: HashSet<String> = HashSet::new();
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                tracing::warn!(%err, "watching pods");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        match event {
            watcher::Event::Init => listing.clear(),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                listing.insert(uid.clone());
                shared
                    .pods
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(uid.clone(), Arc::new(pod));
                shared.wake(&uid);
            }
            watcher::Event::Delete(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                shared
                    .pods
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&uid);
                shared.wake(&uid);
            }
            watcher::Event::InitDone => {
                let gone: Vec<String> = {
                    let mut map = shared
                        .pods
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let gone: Vec<String> = map
                        .keys()
                        .filter(|uid| !listing.contains(*uid))
                        .cloned()
                        .collect();
                    for uid in &gone {
                        map.remove(uid);
                    }
                    gone
                };
                for uid in gone {
                    shared.wake(&uid);
                }
                shared.pods_listed.store(true, Ordering::Release);
                // The first complete listing replaces what an earlier agent left.
                let shared = Arc::clone(&shared);
                tokio::spawn(async move { shared.sync_host_ports().await });
            }
        }
    }
}

/// Every [`RELIST`], wakes the workers of pods whose runtime state changed, and cleans up
/// pods the runtime holds that the API does not assign here.
async fn relist(shared: Arc<Shared>) {
    let mut last: HashMap<String, Vec<(String, i32)>> = HashMap::new();
    loop {
        tokio::time::sleep(RELIST).await;
        let (Ok(sandboxes), Ok(containers)) = (
            shared.cri.list_pod_sandboxes().await,
            shared.cri.list_containers().await,
        ) else {
            continue;
        };
        let mut now: HashMap<String, Vec<(String, i32)>> = HashMap::new();
        for sandbox in &sandboxes {
            if sandbox.labels.get(LABEL_MANAGED).map(String::as_str) != Some("true") {
                continue;
            }
            if let Some(uid) = sandbox.labels.get(LABEL_POD_UID) {
                now.entry(uid.clone())
                    .or_default()
                    .push((sandbox.id.clone(), sandbox.state));
            }
        }
        for container in &containers {
            if container.labels.get(LABEL_MANAGED).map(String::as_str) != Some("true") {
                continue;
            }
            if let Some(uid) = container.labels.get(LABEL_POD_UID) {
                now.entry(uid.clone())
                    .or_default()
                    .push((container.id.clone(), container.state));
            }
        }
        for entries in now.values_mut() {
            entries.sort();
        }
        let listed = shared.pods_listed.load(Ordering::Acquire);
        for (uid, entries) in &now {
            if last.get(uid) != Some(entries) {
                let known = shared.pod(uid).is_some();
                if known || listed {
                    shared.wake(uid);
                }
            }
        }
        for uid in last.keys() {
            if !now.contains_key(uid) && shared.pod(uid).is_some() {
                shared.wake(uid);
            }
        }
        last = now;
    }
}
