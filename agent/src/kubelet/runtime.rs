//! What the runtime holds for a pod, in the kubelet's terms: its sandboxes and container
//! instances, found by the labels the kubelet puts on them (the same `io.kubernetes.*` labels
//! Kubernetes' kubelet uses, so `crictl` shows familiar names), with the details of each
//! container instance that the status needs.

use std::collections::HashMap;

use crate::cri::v1;

pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// Marks what this agent created, so it never touches containers others made in containerd.
pub const LABEL_MANAGED: &str = "io.shoal.managed";
pub const ANNOTATION_RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
pub const ANNOTATION_HASH: &str = "io.kubernetes.container.hash";
pub const ANNOTATION_GRACE: &str = "io.kubernetes.pod.terminationGracePeriod";

/// A sandbox's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    pub id: String,
    pub attempt: u32,
    pub ready: bool,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    pub ip: Option<String>,
    pub additional_ips: Vec<String>,
}

/// A container instance's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Created,
    Running,
    Exited,
    Unknown,
}

/// One instance (attempt) of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub name: String,
    pub sandbox_id: String,
    pub attempt: u32,
    pub restart_count: i32,
    pub state: State,
    pub hash: String,
    pub image: String,
    pub image_ref: String,
    /// Nanoseconds since the epoch (0 when not yet).
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
}

/// Everything the runtime has for one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRuntime {
    pub sandboxes: Vec<Sandbox>,
    pub instances: Vec<Instance>,
}

impl PodRuntime {
    /// The newest sandbox.
    pub fn latest_sandbox(&self) -> Option<&Sandbox> {
        self.sandboxes
            .iter()
            .max_by_key(|s| (s.attempt, s.created_at))
    }

    /// The newest instance of `name`.
    pub fn latest(&self, name: &str) -> Option<&Instance> {
        self.instances
            .iter()
            .filter(|i| i.name == name)
            .max_by_key(|i| (i.restart_count, i.created_at))
    }

    /// The instance before the newest one of `name` (for `lastState` and `logs --previous`).
    pub fn previous(&self, name: &str) -> Option<&Instance> {
        let latest = self.latest(name)?;
        self.instances
            .iter()
            .filter(|i| i.name == name && i.id != latest.id)
            .max_by_key(|i| (i.restart_count, i.created_at))
    }

    /// Whether anything of the pod still runs.
    pub fn anything_running(&self) -> bool {
        self.sandboxes.iter().any(|s| s.ready)
            || self
                .instances
                .iter()
                .any(|i| matches!(i.state, State::Running | State::Unknown))
    }
}

pub fn state_of(state: i32) -> State {
    match v1::ContainerState::try_from(state) {
        Ok(v1::ContainerState::ContainerCreated) => State::Created,
        Ok(v1::ContainerState::ContainerRunning) => State::Running,
        Ok(v1::ContainerState::ContainerExited) => State::Exited,
        _ => State::Unknown,
    }
}

/// A sandbox from its listing and (when ready) its status's addresses.
pub fn sandbox_from(sandbox: &v1::PodSandbox, status: Option<&v1::PodSandboxStatus>) -> Sandbox {
    let network = status.and_then(|s| s.network.as_ref());
    Sandbox {
        id: sandbox.id.clone(),
        attempt: sandbox.metadata.as_ref().map_or(0, |m| m.attempt),
        ready: sandbox.state == v1::PodSandboxState::SandboxReady as i32,
        created_at: sandbox.created_at,
        ip: network.map(|n| n.ip.clone()).filter(|ip| !ip.is_empty()),
        additional_ips: network
            .map(|n| n.additional_ips.iter().map(|ip| ip.ip.clone()).collect())
            .unwrap_or_default(),
    }
}

/// An instance from the runtime's detailed status of it.
pub fn instance_from(
    status: &v1::ContainerStatus,
    annotations: &HashMap<String, String>,
    labels: &HashMap<String, String>,
    sandbox_id: &str,
) -> Instance {
    Instance {
        id: status.id.clone(),
        name: labels
            .get(LABEL_CONTAINER_NAME)
            .cloned()
            .unwrap_or_default(),
        sandbox_id: sandbox_id.to_string(),
        attempt: status.metadata.as_ref().map_or(0, |m| m.attempt),
        restart_count: annotations
            .get(ANNOTATION_RESTART_COUNT)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        state: state_of(status.state),
        hash: annotations
            .get(ANNOTATION_HASH)
            .cloned()
            .unwrap_or_default(),
        image: status
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default(),
        image_ref: status.image_ref.clone(),
        created_at: status.created_at,
        started_at: status.started_at,
        finished_at: status.finished_at,
        exit_code: status.exit_code,
        reason: status.reason.clone(),
        message: status.message.clone(),
    }
}
