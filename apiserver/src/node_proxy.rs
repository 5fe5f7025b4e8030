//! Requests the API server passes on to a node's own API (the kubelet's port): `pods/log` now
//! (exec, attach and port-forward next). The node is found from the pod's `spec.nodeName`, its
//! InternalIP and advertised kubelet port; the connection is TLS with the API server's client
//! certificate and, as in Kubernetes without `--kubelet-certificate-authority`, without
//! verifying the node's self-made serving certificate.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use shoal_common::tls::AnyServerCertificate;

use crate::status::ApiError;

/// TLS for calls to nodes, presenting `cert_pem`/`key_pem`.
pub fn client_config(cert_pem: &str, key_pem: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCertificate(provider)))
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(config))
}

fn bad_request(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
}

/// The query parameters `pods/log` passes on to the node.
const LOG_PARAMETERS: [&str; 7] = [
    "follow",
    "previous",
    "timestamps",
    "tailLines",
    "sinceSeconds",
    "sinceTime",
    "limitBytes",
];

/// Which container of `pod` a `pods/log` request means (Kubernetes' rules and messages).
pub fn log_container(pod: &Value, requested: Option<&str>) -> Result<String, ApiError> {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let names = |path: &str| -> Vec<String> {
        pod.pointer(path)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    };
    let containers = names("/spec/containers");
    let init = names("/spec/initContainers");
    match requested {
        Some(c) if containers.iter().chain(&init).any(|n| n == c) => Ok(c.to_string()),
        Some(c) => Err(bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => Err(bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            containers.join(" ")
        ))),
    }
}

/// Where a node's API is: `InternalIP:port`.
pub fn node_address(node: &Value) -> Option<String> {
    let ip = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)?
        .iter()
        .find(|a| a["type"] == "InternalIP")?["address"]
        .as_str()?
        .to_string();
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .unwrap_or(10250);
    Some(if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    })
}

/// The error for a node that cannot be reached, as kube-apiserver answers it.
fn unavailable(message: String) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        message,
    )
}

/// A TLS connection to the node's kubelet endpoint at `address`.
async fn dial(
    tls: Arc<rustls::ClientConfig>,
    address: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ApiError> {
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| unavailable(format!("dial tcp {address}: {e}")))?;
    let server_name = ServerName::try_from("kubelet").map_err(|e| unavailable(e.to_string()))?;
    tokio_rustls::TlsConnector::from(tls)
        .connect(server_name, tcp)
        .await
        .map_err(|e| unavailable(format!("node {address}: TLS: {e}")))
}

/// Streams `GET https://{address}{path_and_query}` from the node back to the client.
pub async fn get(
    tls: Arc<rustls::ClientConfig>,
    address: &str,
    path_and_query: &str,
) -> Result<Response, ApiError> {
    let stream = dial(tls, address).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unavailable(format!("node {address}: {e}")))?;
    tokio::spawn(connection);
    let request = Request::get(path_and_query)
        .header("host", address)
        .body(Body::empty())
        .map_err(|e| unavailable(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| unavailable(format!("node {address}: {e}")))?;
    let (parts, body) = response.into_parts();
    if !parts.status.is_success() {
        use http_body_util::BodyExt;
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let message = String::from_utf8_lossy(&bytes).trim().to_string();
        let reason = if parts.status == StatusCode::NOT_FOUND {
            "NotFound"
        } else {
            "BadRequest"
        };
        return Err(ApiError::new(parts.status, reason, message));
    }
    let mut out = Body::new(body).into_response();
    *out.status_mut() = StatusCode::OK;
    out.headers_mut()
        .insert("content-type", "text/plain".parse().expect("static header"));
    Ok(out)
}

/// Headers of an upgrade request (WebSocket or SPDY) that the node must see.
fn is_upgrade_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(
        name.as_str(),
        "connection" | "upgrade" | "x-stream-protocol-version"
    ) || name.starts_with("sec-websocket-")
}

/// Passes an upgrade request (`pods/exec`, `attach`, `portforward`: WebSocket or SPDY) on to
/// the node at `address`, and once both sides switched protocols, relays bytes both ways.
pub async fn upgrade(
    tls: Arc<rustls::ClientConfig>,
    address: &str,
    path_and_query: &str,
    mut request: Request<Body>,
) -> Result<Response, ApiError> {
    let client_side = hyper::upgrade::on(&mut request);
    let stream = dial(tls, address).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unavailable(format!("node {address}: {e}")))?;
    tokio::spawn(connection.with_upgrades());
    let mut outgoing = Request::builder()
        .method(request.method())
        .uri(path_and_query)
        .header("host", address);
    for (name, value) in request.headers() {
        if is_upgrade_header(name.as_str()) {
            outgoing = outgoing.header(name, value);
        }
    }
    let outgoing = outgoing
        .body(Body::empty())
        .map_err(|e| unavailable(e.to_string()))?;
    let mut response = sender
        .send_request(outgoing)
        .await
        .map_err(|e| unavailable(format!("node {address}: {e}")))?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        use http_body_util::BodyExt;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let message = String::from_utf8_lossy(&bytes).trim().to_string();
        return Err(ApiError::new(status, "BadRequest", message));
    }
    let node_side = hyper::upgrade::on(&mut response);
    tokio::spawn(async move {
        let (Ok(client), Ok(node)) = tokio::join!(client_side, node_side) else {
            return;
        };
        let _ =
            tokio::io::copy_bidirectional(&mut TokioIo::new(client), &mut TokioIo::new(node)).await;
    });
    let mut out = Response::new(Body::empty());
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (name, value) in response.headers() {
        out.headers_mut().append(name, value.clone());
    }
    Ok(out)
}

/// The node path and query for a `pods/log` request.
pub fn log_path(
    namespace: &str,
    pod: &str,
    container: &str,
    query: &HashMap<String, String>,
) -> String {
    let mut path = format!("/containerLogs/{namespace}/{pod}/{container}");
    let mut first = true;
    for key in LOG_PARAMETERS {
        if let Some(value) = query.get(key) {
            path.push(if first { '?' } else { '&' });
            first = false;
            path.push_str(key);
            path.push('=');
            path.push_str(
                &value
                    .replace('%', "%25")
                    .replace('&', "%26")
                    .replace(':', "%3A")
                    .replace('+', "%2B"),
            );
        }
    }
    path
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_container_is_chosen_as_kubernetes_chooses_it() {
        let one = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}});
        assert_eq!(log_container(&one, None).unwrap(), "a");
        let two = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}], "initContainers": [{"name": "i"}]}});
        assert_eq!(
            log_container(&two, None).unwrap_err().message,
            "a container name must be specified for pod p, choose one of: [a b]"
        );
        assert_eq!(log_container(&two, Some("i")).unwrap(), "i");
        assert_eq!(
            log_container(&two, Some("z")).unwrap_err().message,
            "container z is not valid for pod p"
        );
    }

    #[test]
    fn nodes_are_reached_at_their_internal_ip_and_kubelet_port() {
        let node = json!({"status": {"addresses": [{"type": "Hostname", "address": "n"}, {"type": "InternalIP", "address": "10.0.0.2"}],
                                     "daemonEndpoints": {"kubeletEndpoint": {"Port": 40000}}}});
        assert_eq!(node_address(&node).as_deref(), Some("10.0.0.2:40000"));
        let query: HashMap<String, String> = [
            ("follow".to_string(), "true".to_string()),
            ("sinceTime".to_string(), "2026-01-01T00:00:00Z".to_string()),
            ("pretty".to_string(), "1".to_string()),
        ]
        .into();
        assert_eq!(
            log_path("ns", "p", "c", &query),
            "/containerLogs/ns/p/c?follow=true&sinceTime=2026-01-01T00%3A00%3A00Z"
        );
    }
}
