//! The node's own API (the kubelet's port, 10250 by default) over TLS: a serving certificate
//! the agent makes for itself (Kubernetes' API server does not verify kubelet certificates
//! unless told to), and client certificates required, verified against the cluster CA, so
//! only the API server reaches it. Serves `/healthz` and `/containerLogs/{ns}/{pod}/{container}`
//! (what `kubectl logs` becomes), following a log as it grows when asked.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::jiff::Timestamp;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::kubelet::logs::{self, LogOptions};
use crate::kubelet::runtime::{instance_from, PodRuntime, State as RunState, LABEL_POD_UID};
use crate::kubelet::Shared;

/// What stops the node API from starting.
#[derive(Debug, thiserror::Error)]
pub enum NodeApiError {
    #[error("node API TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// TLS for the node API: a fresh self-signed serving certificate, client certificates from
/// the cluster CA required.
pub fn tls_config(
    node_name: &str,
    node_ip: std::net::IpAddr,
    ca_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, NodeApiError> {
    let tls = |e: &dyn std::fmt::Display| NodeApiError::Tls(e.to_string());
    let mut params =
        rcgen::CertificateParams::new(vec![node_name.to_string()]).map_err(|e| tls(&e))?;
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress(node_ip));
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("{node_name}@shoal-agent"),
    );
    let key = rcgen::KeyPair::generate().map_err(|e| tls(&e))?;
    let cert = params.self_signed(&key).map_err(|e| tls(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(ca.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| tls(&e))?;
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).map_err(|e| tls(&e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert.der().clone()], key)
        .map_err(|e| tls(&e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Binds the node API; returns the listener and the port it got.
pub async fn bind(port: u16) -> Result<(TcpListener, u16), NodeApiError> {
    let addr = format!("0.0.0.0:{port}");
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| NodeApiError::Bind {
            addr: addr.clone(),
            source,
        })?;
    let port = listener
        .local_addr()
        .map_err(|source| NodeApiError::Bind { addr, source })?
        .port();
    Ok((listener, port))
}

/// Serves the node API on `listener` forever.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, shared: Arc<Shared>) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .with_state(shared);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let Ok(tls_stream) = acceptor.accept(stream).await else {
                tracing::debug!(%peer, "node API TLS handshake failed");
                return;
            };
            let service = hyper::service::service_fn(move |request| app.clone().oneshot(request));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(tls_stream), service)
                .await;
        });
    }
}

fn error(code: StatusCode, message: String) -> Response {
    (code, message).into_response()
}

/// The log file of the container's current (or previous) instance, and whether that
/// instance still runs.
async fn log_file(
    shared: &Shared,
    namespace: &str,
    pod: &str,
    container: &str,
    previous: bool,
) -> Result<(PathBuf, String, bool), Response> {
    let uid = shared.pod_uid(namespace, pod).ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} not found on this node"),
        )
    })?;
    let listed = shared
        .cri
        .list_containers_of(LABEL_POD_UID, &uid)
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut runtime = PodRuntime::default();
    let mut paths = std::collections::HashMap::new();
    for c in listed {
        if let Ok(status) = shared.cri.container_status(&c.id).await {
            paths.insert(c.id.clone(), status.log_path.clone());
            runtime.instances.push(instance_from(
                &status,
                &c.annotations,
                &c.labels,
                &c.pod_sandbox_id,
            ));
        }
    }
    let instance = if previous {
        runtime.previous(container)
    } else {
        runtime.latest(container)
    };
    let Some(instance) = instance else {
        let what = if previous {
            "previous terminated container"
        } else {
            "container"
        };
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("{what} \"{container}\" in pod \"{pod}\" not found"),
        ));
    };
    let path = paths.get(&instance.id).cloned().unwrap_or_default();
    Ok((
        PathBuf::from(path),
        instance.id.clone(),
        instance.state == RunState::Running,
    ))
}

async fn container_logs(
    State(shared): State<Arc<Shared>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let options =
        match LogOptions::from_query(query.as_deref().unwrap_or_default(), Timestamp::now()) {
            Ok(o) => o,
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        };
    let (path, id, running) =
        match log_file(&shared, &namespace, &pod, &container, options.previous).await {
            Ok(found) => found,
            Err(response) => return response,
        };
    let content = tokio::fs::read_to_string(&path).await.unwrap_or_default();
    let mut first = logs::render(&content, &options);
    if !options.follow || !running {
        return first.into_response();
    }
    // Follow: what is there (already cut to whole lines), then what is appended, until the
    // container stops or the client goes away.
    let complete = content.rfind('\n').map_or(0, |i| i + 1);
    let mut offset = complete as u64;
    let shared2 = Arc::clone(&shared);
    let stream = async_stream(move |sender| async move {
        if !first.is_empty()
            && sender
                .send(Ok(std::mem::take(&mut first).into_bytes()))
                .await
                .is_err()
        {
            return;
        }
        let follow = LogOptions {
            tail_lines: None,
            limit_bytes: None,
            ..options
        };
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let Ok(mut file) = tokio::fs::File::open(&path).await else {
                return;
            };
            if file.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
                return;
            }
            let mut more = String::new();
            let _ = file.read_to_string(&mut more).await;
            if let Some(end) = more.rfind('\n') {
                let chunk = &more[..=end];
                offset += chunk.len() as u64;
                let text = logs::render(chunk, &follow);
                if !text.is_empty() && sender.send(Ok(text.into_bytes())).await.is_err() {
                    return;
                }
            }
            let still = shared2
                .cri
                .container_status(&id)
                .await
                .map(|s| s.state == crate::cri::v1::ContainerState::ContainerRunning as i32);
            if !matches!(still, Ok(true)) {
                return;
            }
        }
    });
    Body::from_stream(stream).into_response()
}

type Chunk = Result<Vec<u8>, std::io::Error>;

/// A stream fed by a task through a channel (ends when the task does).
fn async_stream<F, Fut>(task: F) -> impl futures::Stream<Item = Chunk>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Chunk>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, mut receiver) = tokio::sync::mpsc::channel(16);
    tokio::spawn(task(sender));
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}
