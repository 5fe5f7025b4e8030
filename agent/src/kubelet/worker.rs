//! One pod's worker: the only task that acts on that pod, so a pod is never synced twice at
//! once. Each sync reads the pod (from the watch) and its runtime state (from CRI), asks the
//! planner for the next step until there is none, carries each step out through CRI, and
//! writes the status when it changed. It wakes on watch events, on runtime changes the relist
//! noticed, on probe results, when a back-off ends, and every resync period (which is how
//! ConfigMap and Secret volume updates reach running pods).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::{ConfigMap, Container, ObjectReference, Pod, PodStatus, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::json;
use shoal_controllers::events::EventType;
use tokio::sync::Notify;

use crate::cri::{v1, CriError};
use crate::kubelet::containers::{container_config, sandbox_config};
use crate::kubelet::env::{environment, referenced, Lookups};
use crate::kubelet::plan::{plan, Action, KillReason, PlanInput};
use crate::kubelet::runtime::{instance_from, sandbox_from, PodRuntime, LABEL_POD_UID};
use crate::kubelet::status::{pod_status, StatusInput};
use crate::kubelet::{hostports, images, volumes, Shared};

/// How often a pod is synced even when nothing told its worker to.
const RESYNC: Duration = Duration::from_secs(10);
/// Steps carried out in one sync before the status is written in between.
const MAX_STEPS: usize = 32;

/// A worker's own memory between syncs.
#[derive(Default)]
struct Memory {
    /// Containers that cannot start: name → (reason, message).
    waiting: BTreeMap<String, (String, String)>,
    /// Image pull failures: container → (failures, retry not before, in ns).
    pull_failures: HashMap<String, (u32, i64)>,
    last_status: Option<PodStatus>,
    /// Container instance details already read (an exited instance never changes).
    details: HashMap<String, crate::kubelet::runtime::Instance>,
}

/// Runs the worker for pod `uid` until the pod is gone from both the API and the node.
pub async fn run(shared: Arc<Shared>, uid: String, notify: Arc<Notify>) {
    let mut memory = Memory::default();
    loop {
        let next = match sync(&shared, &uid, &mut memory).await {
            Ok(Some(next)) => next,
            Ok(None) => break,
            Err(err) => {
                tracing::warn!(pod = %uid, %err, "pod sync failed; retrying");
                Duration::from_secs(2)
            }
        };
        tokio::select! {
            () = notify.notified() => {}
            () = tokio::time::sleep(next) => {}
        }
    }
    shared.probes.forget_pod(&uid);
    shared.tokens.forget_pod(&uid);
    if shared.hostports.forget(&uid) {
        shared.sync_host_ports().await;
    }
    shared
        .workers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(&uid);
    volumes::remove_pod_dir(&shared.pod_dir(&uid));
    tracing::debug!(pod = %uid, "pod worker done");
}

/// What went wrong in a sync.
#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error(transparent)]
    Cri(#[from] CriError),
    #[error("API: {0}")]
    Api(#[from] kube::Error),
}

fn now_nanos() -> i64 {
    i64::try_from(Timestamp::now().as_nanosecond()).unwrap_or(i64::MAX)
}

/// The runtime's view of pod `uid`.
async fn runtime_of(
    shared: &Shared,
    uid: &str,
    memory: &mut Memory,
) -> Result<PodRuntime, CriError> {
    let cri = &shared.cri;
    let mut runtime = PodRuntime::default();
    for sandbox in cri.list_pod_sandboxes_of(LABEL_POD_UID, uid).await? {
        let status = if sandbox.state == v1::PodSandboxState::SandboxReady as i32 {
            cri.pod_sandbox_status(&sandbox.id).await.ok()
        } else {
            None
        };
        runtime
            .sandboxes
            .push(sandbox_from(&sandbox, status.as_ref()));
    }
    for container in cri.list_containers_of(LABEL_POD_UID, uid).await? {
        let known = memory
            .details
            .get(&container.id)
            .filter(|d| d.state == crate::kubelet::runtime::state_of(container.state));
        let instance = match known {
            Some(instance) => instance.clone(),
            None => match cri.container_status(&container.id).await {
                Ok(status) => {
                    let instance = instance_from(
                        &status,
                        &container.annotations,
                        &container.labels,
                        &container.pod_sandbox_id,
                    );
                    memory
                        .details
                        .insert(container.id.clone(), instance.clone());
                    instance
                }
                Err(err) if err.is_not_found() => continue,
                Err(err) => return Err(err),
            },
        };
        runtime.instances.push(instance);
    }
    let live: std::collections::HashSet<&str> =
        runtime.instances.iter().map(|i| i.id.as_str()).collect();
    memory.details.retain(|id, _| live.contains(id.as_str()));
    Ok(runtime)
}

/// One sync. Returns when to sync again, or `None` when the worker is done.
async fn sync(
    shared: &Arc<Shared>,
    uid: &str,
    memory: &mut Memory,
) -> Result<Option<Duration>, SyncError> {
    let pod = shared.pod(uid);
    let mut runtime = runtime_of(shared, uid, memory).await?;
    note_sandbox(shared, uid, pod.as_ref(), &runtime).await;
    let Some(pod) = pod else {
        // Not (or no longer) ours in the API: everything of it goes.
        return orphan(shared, uid, runtime).await;
    };
    adopt_running(shared, &pod, &runtime);
    let mut wake = RESYNC;
    for _ in 0..MAX_STEPS {
        let input = PlanInput {
            now: now_nanos(),
            liveness_failed: shared.probes.liveness_failed(uid),
            startup_failed: shared.probes.startup_failed(uid),
        };
        let step = plan(&pod, &runtime, &input);
        memory.waiting.retain(|name, (reason, _)| {
            reason != "CrashLoopBackOff" || step.backing_off.iter().any(|(n, ..)| n == name)
        });
        for (name, due, delay) in &step.backing_off {
            let message = format!(
                "back-off {}s restarting failed container={name} pod={}_{}({uid})",
                delay.as_secs(),
                pod.metadata.name.as_deref().unwrap_or_default(),
                pod.metadata.namespace.as_deref().unwrap_or_default()
            );
            if memory
                .waiting
                .get(name)
                .is_none_or(|(r, _)| r != "CrashLoopBackOff")
            {
                shared.event(
                    &pod,
                    EventType::Warning,
                    "BackOff",
                    &format!(
                        "Back-off restarting failed container {name} in pod {}",
                        pod.metadata.name.as_deref().unwrap_or_default()
                    ),
                );
            }
            memory
                .waiting
                .insert(name.clone(), ("CrashLoopBackOff".into(), message));
            let wait = Duration::from_nanos(u64::try_from(due - now_nanos()).unwrap_or(0));
            wake = wake.min(wait.max(Duration::from_millis(50)));
        }
        if step.actions.is_empty() {
            break;
        }
        let mut progressed = false;
        for action in step.actions {
            let began = std::time::Instant::now();
            let outcome = execute(shared, &pod, &runtime, &action, memory).await;
            tracing::debug!(pod = %pod_name(&pod), ?action, ms = began.elapsed().as_millis(), "step");
            match outcome {
                Ok(Outcome::Done) => progressed = true,
                Ok(Outcome::Waiting(retry)) => wake = wake.min(retry),
                Ok(Outcome::PodRemoved) => return Ok(None),
                Err(err) => {
                    tracing::warn!(pod = %pod_name(&pod), ?action, %err, "step failed");
                    wake = wake.min(Duration::from_secs(2));
                }
            }
        }
        runtime = runtime_of(shared, uid, memory).await?;
        // A new sandbox's host ports lead to it before its containers are reported running.
        note_sandbox(shared, uid, Some(&pod), &runtime).await;
        if !progressed {
            break;
        }
    }
    // The status first: a pod that just started is reported Running without waiting for the
    // refresh (which re-reads what the start has just written).
    write_status(shared, &pod, &runtime, memory).await?;
    refresh_volumes(shared, &pod, &runtime).await;
    Ok(Some(wake))
}

/// Records the pod's sandbox address (its ready sandbox's, if any) and, for a pod with host
/// ports, brings the host ports table in step (a no-op when nothing changed).
async fn note_sandbox(shared: &Arc<Shared>, uid: &str, pod: Option<&Pod>, runtime: &PodRuntime) {
    let ip = runtime
        .latest_sandbox()
        .filter(|s| s.ready)
        .and_then(|s| s.ip.clone());
    if pod.is_some_and(hostports::wants_host_ports) {
        shared
            .hostports
            .report(uid, ip.as_deref().and_then(|ip| ip.parse().ok()));
        shared.sync_host_ports().await;
    }
    shared.set_pod_ip(uid, ip);
}

/// Probes running containers this agent did not start (it was restarted and adopted them).
fn adopt_running(shared: &Arc<Shared>, pod: &Pod, runtime: &PodRuntime) {
    let Some(spec) = pod.spec.as_ref() else {
        return;
    };
    for container in &spec.containers {
        if let Some(instance) = runtime.latest(&container.name) {
            let running = instance.state == crate::kubelet::runtime::State::Running;
            if running && !shared.probes.is_watching(&instance.id) {
                shared.probes.watch(shared, pod, container, &instance.id);
            }
        }
    }
}

/// Rewrites ConfigMap, Secret, downward-API and projected volumes of a running pod when their
/// sources changed (each write is an atomic switch, and only when the content differs): how
/// updates reach running containers, on every sync including the periodic one.
async fn refresh_volumes(shared: &Shared, pod: &Pod, runtime: &PodRuntime) {
    let projects_files = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .is_some_and(|volumes| {
            volumes.iter().any(|v| {
                v.config_map.is_some()
                    || v.secret.is_some()
                    || v.downward_api.is_some()
                    || v.projected.is_some()
            })
        });
    let running = runtime
        .instances
        .iter()
        .any(|i| i.state == crate::kubelet::runtime::State::Running);
    if !projects_files || !running || pod.metadata.deletion_timestamp.is_some() {
        return;
    }
    let lookups = lookups(shared, pod, runtime).await;
    let pod_dir = shared.pod_dir(pod.metadata.uid.as_deref().unwrap_or_default());
    if let Err(err) = volumes::prepare(pod, &pod_dir, &lookups) {
        tracing::debug!(pod = %pod_name(pod), %err, "refreshing volumes");
    }
}

fn pod_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Stops and removes what the runtime holds of a pod the API no longer has for this node.
async fn orphan(
    shared: &Arc<Shared>,
    uid: &str,
    runtime: PodRuntime,
) -> Result<Option<Duration>, SyncError> {
    if runtime.sandboxes.is_empty() && runtime.instances.is_empty() {
        return Ok(None);
    }
    for instance in &runtime.instances {
        if matches!(
            instance.state,
            crate::kubelet::runtime::State::Running | crate::kubelet::runtime::State::Unknown
        ) {
            shared
                .cri
                .stop_container(&instance.id, 0)
                .await
                .or_else(ignore_not_found)?;
        }
        shared
            .cri
            .remove_container(&instance.id)
            .await
            .or_else(ignore_not_found)?;
    }
    for sandbox in &runtime.sandboxes {
        shared
            .cri
            .stop_pod_sandbox(&sandbox.id)
            .await
            .or_else(ignore_not_found)?;
        shared
            .cri
            .remove_pod_sandbox(&sandbox.id)
            .await
            .or_else(ignore_not_found)?;
    }
    tracing::info!(pod = %uid, "removed a pod that is no longer assigned to this node");
    Ok(None)
}

fn ignore_not_found(err: CriError) -> Result<(), CriError> {
    if err.is_not_found() {
        Ok(())
    } else {
        Err(err)
    }
}

enum Outcome {
    Done,
    Waiting(Duration),
    PodRemoved,
}

async fn execute(
    shared: &Arc<Shared>,
    pod: &Pod,
    runtime: &PodRuntime,
    action: &Action,
    memory: &mut Memory,
) -> Result<Outcome, SyncError> {
    let cri = &shared.cri;
    match action {
        Action::CreateSandbox { attempt } => {
            let mut image = shared.settings.sandbox_image_ready.clone();
            if image.wait_for(|ready| *ready).await.is_err() {
                // The agent is stopping: its pause image was never made.
                return Ok(Outcome::Waiting(Duration::from_secs(2)));
            }
            let config = sandbox_config(pod, *attempt, &shared.settings.sandbox);
            std::fs::create_dir_all(&config.log_directory).ok();
            match cri.run_pod_sandbox(config, runtime_handler(pod)).await {
                Ok(_) => Ok(Outcome::Done),
                Err(err) => {
                    shared.event(
                        pod,
                        EventType::Warning,
                        "FailedCreatePodSandBox",
                        &format!("Failed to create pod sandbox: {err}"),
                    );
                    Err(err.into())
                }
            }
        }
        Action::StartContainer {
            name,
            restart_count,
            ..
        } => {
            let Some(container) = find_container(pod, name) else {
                return Ok(Outcome::Done);
            };
            let Some(sandbox) = runtime.latest_sandbox() else {
                return Ok(Outcome::Done);
            };
            start_container(shared, pod, container, sandbox, *restart_count, memory).await
        }
        Action::KillContainer {
            id,
            name,
            grace_seconds,
            reason,
        } => {
            let message = match reason {
                KillReason::LivenessFailed => {
                    format!("Container {name} failed liveness probe, will be restarted")
                }
                KillReason::StartupFailed => {
                    format!("Container {name} failed startup probe, will be restarted")
                }
                KillReason::SpecChanged => {
                    format!("Container {name} definition changed, will be restarted")
                }
                _ => format!("Stopping container {name}"),
            };
            shared.event(pod, EventType::Normal, "Killing", &message);
            if let Some(container) = find_container(pod, name) {
                let pod_ip = shared.pod_ip(pod);
                pre_stop(shared, container, id, *grace_seconds, &pod_ip).await;
            }
            shared.probes.forget_container(id);
            cri.stop_container(id, *grace_seconds)
                .await
                .or_else(ignore_not_found)?;
            Ok(Outcome::Done)
        }
        Action::RemoveContainer { id } => {
            cri.remove_container(id).await.or_else(ignore_not_found)?;
            Ok(Outcome::Done)
        }
        Action::StopSandbox { id } => {
            cri.stop_pod_sandbox(id).await.or_else(ignore_not_found)?;
            Ok(Outcome::Done)
        }
        Action::RemoveSandbox { id } => {
            cri.remove_pod_sandbox(id).await.or_else(ignore_not_found)?;
            Ok(Outcome::Done)
        }
        Action::DeletePodObject => {
            let api: Api<Pod> = Api::namespaced(
                shared.client.clone(),
                pod.metadata.namespace.as_deref().unwrap_or("default"),
            );
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: pod.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api
                .delete(pod.metadata.name.as_deref().unwrap_or_default(), &params)
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(err) => return Err(err.into()),
            }
            volumes::remove_pod_dir(
                &shared.pod_dir(pod.metadata.uid.as_deref().unwrap_or_default()),
            );
            Ok(Outcome::PodRemoved)
        }
    }
}

fn runtime_handler(pod: &Pod) -> String {
    // RuntimeClass handlers are not configured on our containerd; the default is runc.
    let _ = pod;
    String::new()
}

fn find_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == name)
}

/// Fetches the ConfigMaps and Secrets the pod refers to (missing ones are simply absent).
async fn lookups(shared: &Shared, pod: &Pod, runtime: &PodRuntime) -> Lookups {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let (config_maps, secrets) = referenced(pod);
    let cm_api: Api<ConfigMap> = Api::namespaced(shared.client.clone(), ns);
    let secret_api: Api<Secret> = Api::namespaced(shared.client.clone(), ns);
    let mut out = Lookups {
        service_env: shared.settings.service_env.clone(),
        node_ip: shared.settings.node.ip.to_string(),
        pod_ips: runtime
            .latest_sandbox()
            .and_then(|s| s.ip.clone())
            .into_iter()
            .collect(),
        ..Lookups::default()
    };
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
    {
        out.pod_ips = vec![out.node_ip.clone()];
    }
    let now = crate::kubelet::tokens::unix_now();
    // All at once: each is an API round trip on the way to starting a container.
    let tokens = join_all(crate::kubelet::tokens::sources(pod).into_iter().map(
        |source| async move {
            let token = shared.tokens.get(&shared.client, pod, source, now).await?;
            Some((crate::kubelet::tokens::source_key(source), token))
        },
    ));
    let config_maps = join_all(config_maps.into_iter().map(|name| {
        let api = cm_api.clone();
        async move { Some((name.clone(), api.get_opt(&name).await.ok()??)) }
    }));
    let secrets = join_all(secrets.into_iter().map(|name| {
        let api = secret_api.clone();
        async move { Some((name.clone(), api.get_opt(&name).await.ok()??)) }
    }));
    let (tokens, config_maps, secrets) = futures::join!(tokens, config_maps, secrets);
    out.tokens.extend(tokens.into_iter().flatten());
    out.config_maps.extend(config_maps.into_iter().flatten());
    out.secrets.extend(secrets.into_iter().flatten());
    out
}

async fn start_container(
    shared: &Arc<Shared>,
    pod: &Pod,
    container: &Container,
    sandbox: &crate::kubelet::runtime::Sandbox,
    restart_count: i32,
    memory: &mut Memory,
) -> Result<Outcome, SyncError> {
    let name = container.name.clone();
    let now = now_nanos();
    if let Some((_, not_before)) = memory.pull_failures.get(&name) {
        if now < *not_before {
            let message = memory
                .waiting
                .get(&name)
                .map(|(_, m)| m.clone())
                .unwrap_or_default();
            memory
                .waiting
                .insert(name.clone(), ("ImagePullBackOff".into(), message));
            return Ok(Outcome::Waiting(Duration::from_nanos(
                u64::try_from(not_before - now).unwrap_or(0),
            )));
        }
    }
    let began = std::time::Instant::now();
    match images::ensure(shared, pod, container).await {
        Ok(()) => {
            memory.pull_failures.remove(&name);
        }
        Err(failure) => {
            let (count, _) = memory.pull_failures.get(&name).copied().unwrap_or((0, 0));
            let delay = crate::kubelet::plan::restart_delay(
                i32::try_from(count + 1).unwrap_or(i32::MAX),
                Duration::ZERO,
            );
            memory.pull_failures.insert(
                name.clone(),
                (
                    count + 1,
                    now + i64::try_from(delay.as_nanos()).unwrap_or(i64::MAX),
                ),
            );
            shared.event(pod, EventType::Warning, "Failed", &failure.message);
            memory
                .waiting
                .insert(name, (failure.reason.into(), failure.message));
            return Ok(Outcome::Waiting(delay.max(Duration::from_secs(1))));
        }
    }
    let image_checked = began.elapsed();
    let lookups = lookups(
        shared,
        pod,
        &PodRuntime {
            sandboxes: vec![sandbox.clone()],
            instances: vec![],
        },
    )
    .await;
    let looked_up = began.elapsed();
    let pod_dir = shared.pod_dir(pod.metadata.uid.as_deref().unwrap_or_default());
    let volumes = match volumes::prepare(pod, &pod_dir, &lookups) {
        Ok(v) => v,
        Err(err) => {
            shared.event(
                pod,
                EventType::Warning,
                "FailedMount",
                &format!("MountVolume.SetUp failed: {err}"),
            );
            memory
                .waiting
                .insert(name, ("ContainerCreating".into(), String::new()));
            return Ok(Outcome::Waiting(Duration::from_secs(2)));
        }
    };
    let env = match environment(pod, container, &lookups) {
        Ok(env) => env,
        Err(err) => {
            shared.event(pod, EventType::Warning, "Failed", &format!("Error: {err}"));
            memory
                .waiting
                .insert(name, ("CreateContainerConfigError".into(), err.to_string()));
            return Ok(Outcome::Waiting(Duration::from_secs(2)));
        }
    };
    let mut mounts = match volumes::mounts(container, &volumes) {
        Ok(m) => m,
        Err(err) => {
            memory
                .waiting
                .insert(name, ("CreateContainerConfigError".into(), err.to_string()));
            return Ok(Outcome::Waiting(Duration::from_secs(2)));
        }
    };
    mounts.extend(managed_files(shared, pod, &pod_dir, container, sandbox));
    let config = container_config(
        pod,
        container,
        restart_count,
        env,
        mounts,
        shared.memory_capacity,
    );
    let sandbox_config = sandbox_config(pod, sandbox.attempt, &shared.settings.sandbox);
    let log_dir = PathBuf::from(&sandbox_config.log_directory).join(&name);
    std::fs::create_dir_all(&log_dir).ok();
    let prepared = began.elapsed();
    let id = match shared
        .cri
        .create_container(&sandbox.id, config, sandbox_config)
        .await
    {
        Ok(id) => id,
        Err(err) => {
            shared.event(pod, EventType::Warning, "Failed", &format!("Error: {err}"));
            memory
                .waiting
                .insert(name, ("CreateContainerError".into(), err.to_string()));
            return Ok(Outcome::Waiting(Duration::from_secs(5)));
        }
    };
    shared.event(
        pod,
        EventType::Normal,
        "Created",
        &format!("Created container {name}"),
    );
    if let Err(err) = shared.cri.start_container(&id).await {
        shared.event(pod, EventType::Warning, "Failed", &format!("Error: {err}"));
        memory.waiting.remove(&name);
        // The runtime records the failed start as an exited instance; the planner restarts it.
        return Ok(Outcome::Done);
    }
    memory.waiting.remove(&name);
    // Where a start's time goes (image check, API lookups, volumes and config, CRI calls).
    tracing::debug!(
        pod = %pod_name(pod),
        container = %name,
        image_ms = image_checked.as_millis(),
        lookups_ms = (looked_up - image_checked).as_millis(),
        prepare_ms = (prepared - looked_up).as_millis(),
        create_start_ms = (began.elapsed() - prepared).as_millis(),
        "container started"
    );
    shared.event(
        pod,
        EventType::Normal,
        "Started",
        &format!("Started container {name}"),
    );
    shared.probes.watch(shared, pod, container, &id);
    Ok(Outcome::Done)
}

/// `/etc/hosts` (for pods on the pod network) and `/dev/termination-log`, as the kubelet
/// provides them.
fn managed_files(
    shared: &Shared,
    pod: &Pod,
    pod_dir: &std::path::Path,
    container: &Container,
    sandbox: &crate::kubelet::runtime::Sandbox,
) -> Vec<v1::Mount> {
    let mut mounts = Vec::new();
    let spec = pod.spec.clone().unwrap_or_default();
    let mounted = |path: &str| {
        container
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path == path)
    };
    if !spec.host_network.unwrap_or(false) && !mounted("/etc/hosts") {
        let hostname = spec
            .hostname
            .clone()
            .unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default());
        let fqdn = spec.subdomain.as_ref().map(|sub| {
            format!(
                "{hostname}.{sub}.{}.svc.{}",
                pod.metadata.namespace.as_deref().unwrap_or("default"),
                shared.settings.sandbox.cluster_domain
            )
        });
        let mut hosts = String::from("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n");
        if let Some(ip) = &sandbox.ip {
            match &fqdn {
                Some(fqdn) => hosts.push_str(&format!("{ip}\t{fqdn}\t{hostname}\n")),
                None => hosts.push_str(&format!("{ip}\t{hostname}\n")),
            }
        }
        for alias in spec.host_aliases.iter().flatten() {
            hosts.push_str(&format!(
                "# Entries added by HostAliases.\n{}\t{}\n",
                alias.ip,
                alias.hostnames.clone().unwrap_or_default().join("\t")
            ));
        }
        let path = pod_dir.join("etc-hosts");
        if std::fs::create_dir_all(pod_dir).is_ok() && std::fs::write(&path, hosts).is_ok() {
            mounts.push(v1::Mount {
                container_path: "/etc/hosts".into(),
                host_path: path.display().to_string(),
                ..v1::Mount::default()
            });
        }
    }
    let termination = container
        .termination_message_path
        .clone()
        .unwrap_or_else(|| "/dev/termination-log".into());
    if !mounted(&termination) {
        let dir = pod_dir.join("containers").join(&container.name);
        let path = dir.join(format!("{:x}", now_nanos()));
        if std::fs::create_dir_all(&dir).is_ok() && std::fs::write(&path, b"").is_ok() {
            mounts.push(v1::Mount {
                container_path: termination,
                host_path: path.display().to_string(),
                ..v1::Mount::default()
            });
        }
    }
    mounts
}

/// Runs the container's preStop hook, within the grace period.
async fn pre_stop(
    shared: &Shared,
    container: &Container,
    id: &str,
    grace_seconds: i64,
    pod_ip: &str,
) {
    let Some(handler) = container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
    else {
        return;
    };
    let timeout = Duration::from_secs(u64::try_from(grace_seconds.max(1)).unwrap_or(1));
    if let Some(exec) = &handler.exec {
        let cmd = exec.command.clone().unwrap_or_default();
        let _ = tokio::time::timeout(timeout, shared.cri.exec_sync(id, cmd, grace_seconds.max(1)))
            .await;
    } else if let Some(sleep) = &handler.sleep {
        tokio::time::sleep(
            Duration::from_secs(u64::try_from(sleep.seconds).unwrap_or(0)).min(timeout),
        )
        .await;
    } else if let Some(http) = &handler.http_get {
        let _ = tokio::time::timeout(
            timeout,
            crate::kubelet::probes::http_get(
                http,
                pod_ip,
                container.ports.as_deref().unwrap_or_default(),
            ),
        )
        .await;
    }
}

async fn write_status(
    shared: &Shared,
    pod: &Pod,
    runtime: &PodRuntime,
    memory: &mut Memory,
) -> Result<(), SyncError> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let input = StatusInput {
        now: Timestamp::now(),
        node_ip: shared.settings.node.ip.to_string(),
        ready: shared.probes.readiness(uid),
        started: shared.probes.started(uid),
        waiting: memory.waiting.clone(),
        has_readiness_probe: pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .filter(|c| c.readiness_probe.is_some())
            .map(|c| c.name.clone())
            .collect(),
    };
    let status = pod_status(pod, runtime, &input);
    let unchanged = |a: &PodStatus, b: &PodStatus| {
        // Heartbeat-free comparison: the status carries no times that move by themselves.
        serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
    };
    if memory
        .last_status
        .as_ref()
        .is_some_and(|last| unchanged(last, &status))
        || pod
            .status
            .as_ref()
            .is_some_and(|current| unchanged(current, &status))
    {
        memory.last_status = Some(status);
        return Ok(());
    }
    let api: Api<Pod> = Api::namespaced(
        shared.client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    );
    let patch = json!({"status": status});
    match api
        .patch_status(
            pod.metadata.name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => {
            memory.last_status = Some(status);
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// The pod as an event's subject.
pub fn reference(pod: &Pod) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: pod.metadata.name.clone(),
        namespace: pod.metadata.namespace.clone(),
        uid: pod.metadata.uid.clone(),
        resource_version: pod.metadata.resource_version.clone(),
        ..ObjectReference::default()
    }
}
