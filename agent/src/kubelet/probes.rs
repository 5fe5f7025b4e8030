//! Liveness, readiness and startup probes: one task per probe of a running container instance,
//! with Kubernetes' timing (`initialDelaySeconds`, `periodSeconds`, `timeoutSeconds`,
//! `successThreshold`, `failureThreshold`; liveness and readiness wait for the startup probe).
//! Handlers: `exec` (CRI ExecSync), `httpGet` (HTTP/1.1 from the node to the pod, 200–399 is
//! success), `tcpSocket` (a connection), `grpc` (the standard health service). Results land
//! here and wake the pod's worker when they change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, ContainerPort, HTTPGetAction, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use crate::kubelet::Shared;

#[derive(Debug, Clone, Default)]
struct ContainerProbes {
    container_id: String,
    ready: Option<bool>,
    started: Option<bool>,
    liveness_failed: bool,
    startup_failed: bool,
}

/// Probe results of every pod on the node, and the tasks producing them.
#[derive(Debug, Default)]
pub struct Probes {
    results: Mutex<HashMap<String, BTreeMap<String, ContainerProbes>>>,
    tasks: Mutex<HashMap<String, Vec<JoinHandle<()>>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Startup,
    Liveness,
    Readiness,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Probes {
    fn with<R>(&self, uid: &str, f: impl Fn(&BTreeMap<String, ContainerProbes>) -> R) -> R {
        let results = lock(&self.results);
        let empty = BTreeMap::new();
        f(results.get(uid).unwrap_or(&empty))
    }

    pub fn readiness(&self, uid: &str) -> BTreeMap<String, bool> {
        self.with(uid, |m| {
            m.iter()
                .filter_map(|(k, v)| v.ready.map(|r| (k.clone(), r)))
                .collect()
        })
    }

    pub fn started(&self, uid: &str) -> BTreeMap<String, bool> {
        self.with(uid, |m| {
            m.iter()
                .filter_map(|(k, v)| v.started.map(|r| (k.clone(), r)))
                .collect()
        })
    }

    pub fn liveness_failed(&self, uid: &str) -> BTreeSet<String> {
        self.with(uid, |m| {
            m.iter()
                .filter(|(_, v)| v.liveness_failed)
                .map(|(k, _)| k.clone())
                .collect()
        })
    }

    pub fn startup_failed(&self, uid: &str) -> BTreeSet<String> {
        self.with(uid, |m| {
            m.iter()
                .filter(|(_, v)| v.startup_failed)
                .map(|(k, _)| k.clone())
                .collect()
        })
    }

    /// Whether the instance's probes run (or it has none and was seen).
    pub fn is_watching(&self, container_id: &str) -> bool {
        lock(&self.results)
            .values()
            .any(|m| m.values().any(|c| c.container_id == container_id))
    }

    /// Stops probing a container instance and drops its results.
    pub fn forget_container(&self, container_id: &str) {
        if let Some(tasks) = lock(&self.tasks).remove(container_id) {
            tasks.iter().for_each(JoinHandle::abort);
        }
        for containers in lock(&self.results).values_mut() {
            containers.retain(|_, c| c.container_id != container_id);
        }
    }

    pub fn forget_pod(&self, uid: &str) {
        let ids: Vec<String> = self.with(uid, |m| {
            m.values().map(|c| c.container_id.clone()).collect()
        });
        for id in ids {
            self.forget_container(&id);
        }
        lock(&self.results).remove(uid);
    }

    /// Starts probing a container instance that just started.
    pub fn watch(
        &self,
        shared: &Arc<Shared>,
        pod: &Pod,
        container: &Container,
        container_id: &str,
    ) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let mut state = ContainerProbes {
            container_id: container_id.to_string(),
            ..ContainerProbes::default()
        };
        if container.startup_probe.is_some() {
            state.started = Some(false);
        }
        if container.readiness_probe.is_some() {
            state.ready = Some(false);
        }
        lock(&self.results)
            .entry(uid.clone())
            .or_default()
            .insert(container.name.clone(), state);
        let mut tasks = Vec::new();
        for (kind, probe) in [
            (Kind::Startup, &container.startup_probe),
            (Kind::Liveness, &container.liveness_probe),
            (Kind::Readiness, &container.readiness_probe),
        ] {
            let Some(probe) = probe.clone() else { continue };
            let target = Target {
                shared: Arc::clone(shared),
                uid: uid.clone(),
                name: container.name.clone(),
                container_id: container_id.to_string(),
                ports: container.ports.clone().unwrap_or_default(),
                has_startup: container.startup_probe.is_some(),
            };
            tasks.push(tokio::spawn(run_probe(target, kind, probe)));
        }
        if !tasks.is_empty() {
            lock(&self.tasks).insert(container_id.to_string(), tasks);
        }
    }

    fn update(&self, target: &Target, f: impl FnOnce(&mut ContainerProbes)) -> bool {
        let mut results = lock(&self.results);
        let Some(state) = results
            .get_mut(&target.uid)
            .and_then(|m| m.get_mut(&target.name))
        else {
            return false;
        };
        if state.container_id != target.container_id {
            return false;
        }
        let before = format!("{state:?}");
        f(state);
        before != format!("{state:?}")
    }

    fn is_started(&self, target: &Target) -> bool {
        self.with(&target.uid, |m| {
            m.get(&target.name).and_then(|c| c.started).unwrap_or(true)
        })
    }
}

struct Target {
    shared: Arc<Shared>,
    uid: String,
    name: String,
    container_id: String,
    ports: Vec<ContainerPort>,
    has_startup: bool,
}

impl Target {
    /// The pod's address now: probes may start in the sync that created the sandbox, before
    /// its address was recorded.
    fn pod_ip(&self) -> String {
        self.shared
            .pod(&self.uid)
            .map(|pod| self.shared.pod_ip(&pod))
            .unwrap_or_default()
    }
}

fn seconds(value: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(u64::try_from(value.unwrap_or(default).max(0)).unwrap_or(0))
}

async fn run_probe(target: Target, kind: Kind, probe: Probe) {
    let period = seconds(probe.period_seconds, 10).max(Duration::from_secs(1));
    let timeout = seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1));
    let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
    let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
    tokio::time::sleep(seconds(probe.initial_delay_seconds, 0)).await;
    let probes = &target.shared.probes;
    let (mut successes, mut failures) = (0, 0);
    loop {
        if kind != Kind::Startup && target.has_startup && !probes.is_started(&target) {
            tokio::time::sleep(period).await;
            continue;
        }
        let outcome = check(&target, &probe, timeout).await;
        let changed = match outcome {
            Ok(()) => {
                successes += 1;
                failures = 0;
                if successes >= success_threshold {
                    probes.update(&target, |s| match kind {
                        Kind::Startup => s.started = Some(true),
                        Kind::Readiness => s.ready = Some(true),
                        Kind::Liveness => s.liveness_failed = false,
                    })
                } else {
                    false
                }
            }
            Err(message) => {
                failures += 1;
                successes = 0;
                tracing::debug!(pod = %target.uid, container = %target.name, ?kind, %message, "probe failed");
                if failures >= failure_threshold {
                    let kind_name = match kind {
                        Kind::Startup => "Startup",
                        Kind::Liveness => "Liveness",
                        Kind::Readiness => "Readiness",
                    };
                    target.shared.event_for_uid(
                        &target.uid,
                        "Unhealthy",
                        &format!("{kind_name} probe failed: {message}"),
                    );
                    probes.update(&target, |s| match kind {
                        Kind::Startup => s.startup_failed = true,
                        Kind::Readiness => s.ready = Some(false),
                        Kind::Liveness => s.liveness_failed = true,
                    })
                } else {
                    false
                }
            }
        };
        if changed {
            target.shared.wake(&target.uid);
        }
        // A startup probe stops once it succeeded; liveness failure ends this instance.
        if kind == Kind::Startup && probes.is_started(&target) {
            return;
        }
        tokio::time::sleep(period).await;
    }
}

async fn check(target: &Target, probe: &Probe, timeout: Duration) -> Result<(), String> {
    if let Some(exec) = &probe.exec {
        let cmd = exec.command.clone().unwrap_or_default();
        let secs = i64::try_from(timeout.as_secs()).unwrap_or(1);
        let response = target
            .shared
            .cri
            .exec_sync(&target.container_id, cmd, secs)
            .await
            .map_err(|e| e.to_string())?;
        return if response.exit_code == 0 {
            Ok(())
        } else {
            Err(format!(
                "command exited with {}: {}",
                response.exit_code,
                String::from_utf8_lossy(&response.stdout).trim()
            ))
        };
    }
    if let Some(http) = &probe.http_get {
        return tokio::time::timeout(timeout, http_get(http, &target.pod_ip(), &target.ports))
            .await
            .unwrap_or_else(|_| {
                Err(
                    "context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
                        .into(),
                )
            });
    }
    if let Some(tcp) = &probe.tcp_socket {
        let host = tcp
            .host
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| target.pod_ip());
        let port = resolve_port(&tcp.port, &target.ports)?;
        return match tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("dial tcp {host}:{port}: {e}")),
            Err(_) => Err(format!("dial tcp {host}:{port}: i/o timeout")),
        };
    }
    if let Some(grpc) = &probe.grpc {
        let port = u16::try_from(grpc.port).map_err(|_| format!("invalid port {}", grpc.port))?;
        return tokio::time::timeout(
            timeout,
            grpc_health(
                &target.pod_ip(),
                port,
                grpc.service.clone().unwrap_or_default(),
            ),
        )
        .await
        .unwrap_or_else(|_| Err("timeout: health rpc did not complete within the timeout".into()));
    }
    Err("probe has no handler".into())
}

fn resolve_port(port: &IntOrString, ports: &[ContainerPort]) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .or_else(|| name.parse().ok())
            .ok_or_else(|| format!("port {name:?} not found")),
    }
}

/// One HTTP GET as the kubelet sends it; 200–399 is success.
pub async fn http_get(
    http: &HTTPGetAction,
    pod_ip: &str,
    ports: &[ContainerPort],
) -> Result<(), String> {
    let https = http.scheme.as_deref() == Some("HTTPS");
    let scheme = if https { "https" } else { "http" };
    let host = http
        .host
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| pod_ip.to_string());
    let port = resolve_port(&http.port, ports)?;
    let path = http
        .path
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".into());
    let url = format!("{scheme}://{host}:{port}{path}");
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("Get \"{url}\": dial tcp {host}:{port}: {e}"))?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/{}\r\nAccept: */*\r\nConnection: close\r\n",
        shoal_common::KUBERNETES_VERSION.trim_start_matches('v').rsplit_once('.').map_or("1.33", |(major_minor, _)| major_minor)
    );
    for header in http.http_headers.iter().flatten() {
        request.push_str(&format!("{}: {}\r\n", header.name, header.value));
    }
    request.push_str("\r\n");
    let code = if https {
        // As the kubelet: HTTPS probes do not verify the container's certificate.
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("Get \"{url}\": {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(probe_tls()?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("Get \"{url}\": {e}"))?;
        status_code(tls, &request).await?
    } else {
        status_code(tcp, &request).await?
    };
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

/// TLS for HTTPS probes: any certificate, as the kubelet's `InsecureSkipVerify`.
fn probe_tls() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifier = shoal_common::tls::AnyServerCertificate(Arc::clone(&provider));
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

/// Sends `request` and reads the status code of the answer.
async fn status_code<S>(mut stream: S, request: &str) -> Result<u16, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = vec![0u8; 1024];
    let n = stream.read(&mut head).await.map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "malformed HTTP response".to_string())
}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// `grpc.health.v1.Health/Check`; SERVING (1) is success.
async fn grpc_health(host: &str, port: u16, service: String) -> Result<(), String> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{host}:{port}"))
        .map_err(|e| e.to_string())?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("failed to connect service {host}:{port}: {e}"))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| e.to_string())?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check");
    let codec: tonic::codec::ProstCodec<HealthCheckRequest, HealthCheckResponse> =
        tonic::codec::ProstCodec::default();
    let response = grpc
        .unary(
            tonic::Request::new(HealthCheckRequest { service }),
            path,
            codec,
        )
        .await
        .map_err(|status| format!("health rpc failed: {}", status.message()))?;
    match response.into_inner().status {
        1 => Ok(()),
        other => Err(format!(
            "service unhealthy (responded with {})",
            if other == 2 { "NOT_SERVING" } else { "UNKNOWN" }
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn serve_once(status: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let n = socket.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /healthz HTTP/1.1\r\n"));
            socket
                .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                .await
                .unwrap();
        });
        port
    }

    fn action(port: i32, path: &str) -> HTTPGetAction {
        HTTPGetAction {
            port: IntOrString::Int(port),
            path: Some(path.into()),
            ..HTTPGetAction::default()
        }
    }

    #[tokio::test]
    async fn http_probes_accept_2xx_and_3xx_only() {
        let ok = serve_once("200 OK").await;
        assert_eq!(
            http_get(&action(ok.into(), "/healthz"), "127.0.0.1", &[]).await,
            Ok(())
        );
        let redirect = serve_once("302 Found").await;
        assert_eq!(
            http_get(&action(redirect.into(), "/healthz"), "127.0.0.1", &[]).await,
            Ok(())
        );
        let bad = serve_once("503 Service Unavailable").await;
        assert_eq!(
            http_get(&action(bad.into(), "/healthz"), "127.0.0.1", &[]).await,
            Err("HTTP probe failed with statuscode: 503".into())
        );
    }

    #[tokio::test]
    async fn https_probes_skip_certificate_checks_as_the_kubelets_do() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["nobody.invalid".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(socket).await.unwrap();
            let mut buf = [0u8; 1024];
            let n = tls.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /secure HTTP/1.1\r\n"));
            tls.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
            tls.shutdown().await.unwrap();
        });
        let mut probe = action(port.into(), "/secure");
        probe.scheme = Some("HTTPS".into());
        assert_eq!(http_get(&probe, "127.0.0.1", &[]).await, Ok(()));
        // Nobody listening: a failure, with the URL.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let mut probe = action(port.into(), "/secure");
        probe.scheme = Some("HTTPS".into());
        let err = http_get(&probe, "127.0.0.1", &[]).await.unwrap_err();
        assert!(
            err.starts_with(&format!("Get \"https://127.0.0.1:{port}/secure\"")),
            "{err}"
        );
    }

    #[test]
    fn named_ports_resolve_from_the_container() {
        let ports = vec![ContainerPort {
            name: Some("http".into()),
            container_port: 8080,
            ..ContainerPort::default()
        }];
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &ports),
            Ok(8080)
        );
        assert!(resolve_port(&IntOrString::String("nope".into()), &ports).is_err());
    }
}
