//! The Container Runtime Interface (CRI v1) client: containerd's CRI plugin reached over its
//! unix socket with tonic. `runtime.v1.rs` is generated from `api.proto` (Kubernetes' cri-api)
//! by `scripts/gen-cri.sh` and committed, so building needs no protoc.
//!
//! [`Cri`] is cheap to clone (one HTTP/2 connection shared by every clone) and hides the two
//! gRPC services behind the calls the kubelet makes; errors keep the gRPC status so callers
//! can tell "not found" from a broken runtime.

#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod v1 {
    include!("runtime.v1.rs");
}

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};
use v1::image_service_client::ImageServiceClient;
use v1::runtime_service_client::RuntimeServiceClient;

/// What went wrong talking to the runtime.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("cannot connect to the container runtime at {path}: {source}")]
    Connect {
        path: PathBuf,
        source: tonic::transport::Error,
    },
    #[error("container runtime at {0} did not become ready in time")]
    NotReady(PathBuf),
    #[error("{call}: {status}")]
    Call {
        call: &'static str,
        status: Box<Status>,
    },
}

impl CriError {
    /// Whether the runtime said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, CriError::Call { status, .. } if status.code() == Code::NotFound)
    }
}

/// A connection to a CRI runtime (containerd).
#[derive(Clone)]
pub struct Cri {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    socket: PathBuf,
}

impl std::fmt::Debug for Cri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cri").field("socket", &self.socket).finish()
    }
}

/// Calls through tonic and keeps the call's name on failure.
macro_rules! call {
    ($client:expr, $method:ident, $request:expr) => {
        $client
            .clone()
            .$method($request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| CriError::Call {
                call: stringify!($method),
                status: Box::new(status),
            })
    };
}

impl Cri {
    /// Connects lazily to the unix socket at `socket` (the first call dials).
    pub fn connect(socket: &Path) -> Result<Cri, CriError> {
        let path = socket.to_path_buf();
        let dial = path.clone();
        // The URI is a placeholder: every connection goes to the unix socket.
        let channel = Endpoint::from_static("http://cri.invalid")
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(120))
            .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let dial = dial.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(dial).await?,
                    ))
                }
            }));
        Ok(Cri {
            runtime: RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20),
            images: ImageServiceClient::new(channel).max_decoding_message_size(64 << 20),
            socket: path,
        })
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Waits until the runtime answers `Version` and reports RuntimeReady.
    pub async fn wait_ready(&self, within: Duration) -> Result<v1::VersionResponse, CriError> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(version) = self.version().await {
                if let Ok(status) = self.status().await {
                    let ready = status.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.r#type == "RuntimeReady" && c.status)
                    });
                    if ready {
                        return Ok(version);
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CriError::NotReady(self.socket.clone()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn version(&self) -> Result<v1::VersionResponse, CriError> {
        call!(self.runtime, version, v1::VersionRequest::default())
    }

    pub async fn status(&self) -> Result<v1::StatusResponse, CriError> {
        call!(self.runtime, status, v1::StatusRequest { verbose: false })
    }

    pub async fn run_pod_sandbox(
        &self,
        config: v1::PodSandboxConfig,
        runtime_handler: String,
    ) -> Result<String, CriError> {
        let request = v1::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler,
        };
        Ok(call!(self.runtime, run_pod_sandbox, request)?.pod_sandbox_id)
    }

    pub async fn stop_pod_sandbox(&self, pod_sandbox_id: &str) -> Result<(), CriError> {
        let request = v1::StopPodSandboxRequest {
            pod_sandbox_id: pod_sandbox_id.into(),
        };
        call!(self.runtime, stop_pod_sandbox, request).map(drop)
    }

    pub async fn remove_pod_sandbox(&self, pod_sandbox_id: &str) -> Result<(), CriError> {
        let request = v1::RemovePodSandboxRequest {
            pod_sandbox_id: pod_sandbox_id.into(),
        };
        call!(self.runtime, remove_pod_sandbox, request).map(drop)
    }

    pub async fn pod_sandbox_status(
        &self,
        pod_sandbox_id: &str,
    ) -> Result<v1::PodSandboxStatus, CriError> {
        let request = v1::PodSandboxStatusRequest {
            pod_sandbox_id: pod_sandbox_id.into(),
            verbose: false,
        };
        Ok(call!(self.runtime, pod_sandbox_status, request)?
            .status
            .unwrap_or_default())
    }

    pub async fn list_pod_sandboxes(&self) -> Result<Vec<v1::PodSandbox>, CriError> {
        let request = v1::ListPodSandboxRequest { filter: None };
        Ok(call!(self.runtime, list_pod_sandbox, request)?.items)
    }

    /// The sandboxes labelled `key=value`.
    pub async fn list_pod_sandboxes_of(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<v1::PodSandbox>, CriError> {
        let request = v1::ListPodSandboxRequest {
            filter: Some(v1::PodSandboxFilter {
                label_selector: [(key.to_string(), value.to_string())].into(),
                ..v1::PodSandboxFilter::default()
            }),
        };
        Ok(call!(self.runtime, list_pod_sandbox, request)?.items)
    }

    /// The containers labelled `key=value`.
    pub async fn list_containers_of(
        &self,
        key: &str,
        value: &str,
    ) -> Result<Vec<v1::Container>, CriError> {
        let request = v1::ListContainersRequest {
            filter: Some(v1::ContainerFilter {
                label_selector: [(key.to_string(), value.to_string())].into(),
                ..v1::ContainerFilter::default()
            }),
        };
        Ok(call!(self.runtime, list_containers, request)?.containers)
    }

    pub async fn create_container(
        &self,
        pod_sandbox_id: &str,
        config: v1::ContainerConfig,
        sandbox_config: v1::PodSandboxConfig,
    ) -> Result<String, CriError> {
        let request = v1::CreateContainerRequest {
            pod_sandbox_id: pod_sandbox_id.into(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        };
        Ok(call!(self.runtime, create_container, request)?.container_id)
    }

    pub async fn start_container(&self, container_id: &str) -> Result<(), CriError> {
        let request = v1::StartContainerRequest {
            container_id: container_id.into(),
        };
        call!(self.runtime, start_container, request).map(drop)
    }

    /// Stops a container: its stop signal, then SIGKILL after `timeout_seconds`.
    pub async fn stop_container(
        &self,
        container_id: &str,
        timeout_seconds: i64,
    ) -> Result<(), CriError> {
        let request = v1::StopContainerRequest {
            container_id: container_id.into(),
            timeout: timeout_seconds,
        };
        call!(self.runtime, stop_container, request).map(drop)
    }

    pub async fn remove_container(&self, container_id: &str) -> Result<(), CriError> {
        let request = v1::RemoveContainerRequest {
            container_id: container_id.into(),
        };
        call!(self.runtime, remove_container, request).map(drop)
    }

    pub async fn list_containers(&self) -> Result<Vec<v1::Container>, CriError> {
        let request = v1::ListContainersRequest { filter: None };
        Ok(call!(self.runtime, list_containers, request)?.containers)
    }

    pub async fn container_status(
        &self,
        container_id: &str,
    ) -> Result<v1::ContainerStatus, CriError> {
        let request = v1::ContainerStatusRequest {
            container_id: container_id.into(),
            verbose: false,
        };
        Ok(call!(self.runtime, container_status, request)?
            .status
            .unwrap_or_default())
    }

    /// Runs `cmd` in a container and waits (at most `timeout_seconds`, 0 for no limit).
    pub async fn exec_sync(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        timeout_seconds: i64,
    ) -> Result<v1::ExecSyncResponse, CriError> {
        let request = v1::ExecSyncRequest {
            container_id: container_id.into(),
            cmd,
            timeout: timeout_seconds,
        };
        call!(self.runtime, exec_sync, request)
    }

    /// Asks for a streaming URL for an interactive exec.
    pub async fn exec(&self, request: v1::ExecRequest) -> Result<String, CriError> {
        Ok(call!(self.runtime, exec, request)?.url)
    }

    /// Asks for a streaming URL to attach to a container's console.
    pub async fn attach(&self, request: v1::AttachRequest) -> Result<String, CriError> {
        Ok(call!(self.runtime, attach, request)?.url)
    }

    /// Asks for a streaming URL for a port forward.
    pub async fn port_forward(&self, request: v1::PortForwardRequest) -> Result<String, CriError> {
        Ok(call!(self.runtime, port_forward, request)?.url)
    }

    pub async fn reopen_container_log(&self, container_id: &str) -> Result<(), CriError> {
        let request = v1::ReopenContainerLogRequest {
            container_id: container_id.into(),
        };
        call!(self.runtime, reopen_container_log, request).map(drop)
    }

    /// The image's id when present on the node, `None` when it is not.
    pub async fn image_status(&self, image: &str) -> Result<Option<v1::Image>, CriError> {
        let request = v1::ImageStatusRequest {
            image: Some(v1::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        };
        Ok(call!(self.images, image_status, request)?.image)
    }

    /// Pulls `image`, with registry credentials when given; returns the image reference.
    pub async fn pull_image(
        &self,
        image: &str,
        auth: Option<v1::AuthConfig>,
        sandbox_config: Option<v1::PodSandboxConfig>,
    ) -> Result<String, CriError> {
        let request = v1::PullImageRequest {
            image: Some(v1::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            auth,
            sandbox_config,
        };
        Ok(call!(self.images, pull_image, request)?.image_ref)
    }

    pub async fn list_images(&self) -> Result<Vec<v1::Image>, CriError> {
        let request = v1::ListImagesRequest { filter: None };
        Ok(call!(self.images, list_images, request)?.images)
    }
}
