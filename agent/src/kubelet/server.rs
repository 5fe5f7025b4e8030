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
        .route(
            "/exec/{namespace}/{pod}/{container}",
            axum::routing::any(exec),
        )
        .route(
            "/attach/{namespace}/{pod}/{container}",
            axum::routing::any(attach),
        )
        .route(
            "/portForward/{namespace}/{pod}",
            axum::routing::any(port_forward),
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

/// The exec/attach flags and command of a query (`command` repeats, flags are `1`/`true`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StreamQuery {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

pub fn stream_query(query: &str) -> StreamQuery {
    let mut out = StreamQuery::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = logs::percent_decode(value);
        let flag = matches!(value.as_str(), "1" | "true");
        match key {
            "command" => out.command.push(value),
            "input" | "stdin" => out.stdin = flag,
            "output" | "stdout" => out.stdout = flag,
            "error" | "stderr" => out.stderr = flag,
            "tty" => out.tty = flag,
            _ => {}
        }
    }
    out
}

/// The running instance of `container` in pod `namespace/pod`.
async fn running_container(
    shared: &Shared,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Result<String, Response> {
    match log_file(shared, namespace, pod, container, false).await? {
        (_, id, true) => Ok(id),
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            format!("container {container} is not running"),
        )),
    }
}

async fn exec(
    State(shared): State<Arc<Shared>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    request: axum::extract::Request,
) -> Response {
    stream_to_container(&shared, &namespace, &pod, &container, request, false).await
}

async fn attach(
    State(shared): State<Arc<Shared>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    request: axum::extract::Request,
) -> Response {
    stream_to_container(&shared, &namespace, &pod, &container, request, true).await
}

/// Exec in (or attach to) a running container: the CRI call that names a streaming URL, then
/// the client's upgrade relayed to it.
async fn stream_to_container(
    shared: &Shared,
    namespace: &str,
    pod: &str,
    container: &str,
    request: axum::extract::Request,
    attach: bool,
) -> Response {
    let query = stream_query(request.uri().query().unwrap_or_default());
    let container_id = match running_container(shared, namespace, pod, container).await {
        Ok(id) => id,
        Err(response) => return response,
    };
    // With a TTY, stderr is merged into stdout.
    let stderr = query.stderr && !query.tty;
    let url = if attach {
        let request = crate::cri::v1::AttachRequest {
            container_id,
            stdin: query.stdin,
            tty: query.tty,
            stdout: query.stdout,
            stderr,
        };
        shared.cri.attach(request).await
    } else {
        let request = crate::cri::v1::ExecRequest {
            container_id,
            cmd: query.command,
            tty: query.tty,
            stdin: query.stdin,
            stdout: query.stdout,
            stderr,
        };
        shared.cri.exec(request).await
    };
    match url {
        Ok(url) => relay(&url, request).await,
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

async fn port_forward(
    State(shared): State<Arc<Shared>>,
    Path((namespace, pod)): Path<(String, String)>,
    request: axum::extract::Request,
) -> Response {
    let Some(uid) = shared.pod_uid(&namespace, &pod) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} not found on this node"),
        );
    };
    let sandboxes = shared
        .cri
        .list_pod_sandboxes_of(LABEL_POD_UID, &uid)
        .await
        .unwrap_or_default();
    let Some(sandbox) = sandboxes
        .iter()
        .filter(|s| s.state == crate::cri::v1::PodSandboxState::SandboxReady as i32)
        .max_by_key(|s| s.created_at)
    else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("pod {pod} has no running sandbox"),
        );
    };
    let cri_request = crate::cri::v1::PortForwardRequest {
        pod_sandbox_id: sandbox.id.clone(),
        port: vec![],
    };
    match shared.cri.port_forward(cri_request).await {
        Ok(url) => relay(&url, request).await,
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

/// Passes the client's upgrade request on to the runtime's streaming server at `url` (plain
/// HTTP on loopback) and relays bytes both ways once both sides switched protocols.
async fn relay(url: &str, mut request: axum::extract::Request) -> Response {
    let Some(rest) = url.strip_prefix("http://") else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unexpected streaming URL {url}"),
        );
    };
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let client_side = hyper::upgrade::on(&mut request);
    let Ok(tcp) = tokio::net::TcpStream::connect(authority).await else {
        return error(
            StatusCode::BAD_GATEWAY,
            format!("cannot reach the runtime's streaming server at {authority}"),
        );
    };
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await
    else {
        return error(
            StatusCode::BAD_GATEWAY,
            "streaming server handshake failed".into(),
        );
    };
    tokio::spawn(connection.with_upgrades());
    let mut outgoing = axum::http::Request::builder()
        .method(request.method())
        .uri(path)
        .header("host", authority);
    for (name, value) in request.headers() {
        let lower = name.as_str().to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "connection" | "upgrade" | "x-stream-protocol-version"
        ) || lower.starts_with("sec-websocket-")
        {
            outgoing = outgoing.header(name, value);
        }
    }
    let Ok(outgoing) = outgoing.body(Body::empty()) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "bad request".into());
    };
    let mut response = match sender.send_request(outgoing).await {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_GATEWAY, e.to_string()),
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = response.status();
        use http_body_util::BodyExt;
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return error(status, String::from_utf8_lossy(&bytes).into_owned());
    }
    let runtime_side = hyper::upgrade::on(&mut response);
    tokio::spawn(async move {
        let (Ok(client), Ok(runtime)) = tokio::join!(client_side, runtime_side) else {
            return;
        };
        let _ =
            tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(runtime))
                .await;
    });
    let mut out = Response::new(Body::empty());
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (name, value) in response.headers() {
        out.headers_mut().append(name, value.clone());
    }
    out
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
