//! Joining a cluster from the outside (the exchange is described in `shoal_common::join`):
//! [`JoinClient`] fetches the CA, checks it against the token and then talks to the server
//! verified, as agents and joining servers both need. [`join`] is the agent's half: ask for a
//! node client certificate for this node's own key, and keep the result under `<data-dir>/agent` — `client-kubelet.key` (made
//! once, never sent), `client-kubelet.crt`, `server-ca.crt` and `kubelet.kubeconfig`, which
//! the agent's API client is built from (and which `kubectl --kubeconfig` can use to see what
//! the node sees).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use shoal_common::join::{
    parse_join_token, JoinToken, NodeCredentials, NodeCredentialsRequest, CACERTS_PATH, JOIN_USER,
    NODE_CREDENTIALS_PATH,
};
use shoal_common::tls::AnyServerCertificate;

const CLIENT_KEY: &str = "client-kubelet.key";
const CLIENT_CERT: &str = "client-kubelet.crt";
const SERVER_CA: &str = "server-ca.crt";
/// The kubeconfig the agent's API client uses.
pub const KUBECONFIG: &str = "kubelet.kubeconfig";

/// Why joining failed. [`JoinError::is_retryable`] tells a server that is not up yet from a
/// refusal that waiting will not change.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("--server {url:?} is not an https:// URL with a host: {reason}")]
    BadUrl { url: String, reason: String },
    #[error(transparent)]
    BadToken(#[from] shoal_common::join::TokenError),
    #[error("cannot reach the server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the server at {url} rejected the join token")]
    Rejected { url: String },
    #[error("the server at {url} presents a CA that does not match the token's hash (wrong server or wrong token)")]
    CaMismatch { url: String },
    #[error("the server at {url} answered {status}: {message}")]
    Server {
        url: String,
        status: u16,
        message: String,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("node key: {0}")]
    Key(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the agent kubeconfig: {0}")]
    Kubeconfig(String),
}

impl JoinError {
    /// Whether trying again later may succeed (the server is down or restarting).
    pub fn is_retryable(&self) -> bool {
        match self {
            JoinError::Unreachable { .. } => true,
            JoinError::Server { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// A joined node: its API client configuration and what it learned of the cluster.
#[derive(Debug)]
pub struct Joined {
    pub client: kube::Config,
    pub credentials: NodeCredentials,
    pub kubeconfig: PathBuf,
}

/// A verified line to a cluster's server for joining it: the CA was fetched and checked
/// against the token, and later calls verify the server against it and present the token's
/// secret with HTTP Basic. Agents use it for their certificate, servers for the cluster's
/// keys and their store membership.
#[derive(Debug, Clone)]
pub struct JoinClient {
    target: Target,
    token: JoinToken,
    ca_pem: String,
    verified: Arc<rustls::ClientConfig>,
}

impl JoinClient {
    /// Fetches the CA of the server at `server_url` (`https://HOST:6443`) and checks it
    /// against `token`.
    pub async fn connect(server_url: &str, token: &str) -> Result<JoinClient, JoinError> {
        let token = parse_join_token(token)?;
        let target = Target::parse(server_url)?;
        let (status, body) = target
            .request(unverified_tls()?, "GET", CACERTS_PATH, None, None)
            .await?;
        if status != 200 {
            return Err(target.server_error(status, &body));
        }
        let ca_pem = String::from_utf8_lossy(&body).to_string();
        check_ca(&token, &ca_pem, &target.url)?;
        let verified = verified_tls(&ca_pem)?;
        Ok(JoinClient {
            target,
            token,
            ca_pem,
            verified,
        })
    }

    /// The server's normalised URL.
    pub fn url(&self) -> &str {
        &self.target.url
    }

    /// The cluster CA (PEM), as checked against the token.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Whether `ca_pem` is the CA this client checked (a server's answer repeating it must).
    pub fn check_ca(&self, ca_pem: &str) -> Result<(), JoinError> {
        check_ca(&self.token, ca_pem, &self.target.url)
    }

    /// One call as `user` with the token's secret; the body of a 2xx answer. A 401/403 is
    /// [`JoinError::Rejected`], any other failure [`JoinError::Server`].
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        user: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, JoinError> {
        let authorization = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{}", self.token.secret))
        );
        let (status, answer) = self
            .target
            .request(
                Arc::clone(&self.verified),
                method,
                path,
                Some(&authorization),
                body,
            )
            .await?;
        match status {
            200..=299 => Ok(answer),
            401 | 403 => Err(JoinError::Rejected {
                url: self.target.url.clone(),
            }),
            _ => Err(self.target.server_error(status, &answer)),
        }
    }
}

/// Joins the cluster at `server_url` (`https://HOST:6443`) as `node_name`.
pub async fn join(
    server_url: &str,
    token: &str,
    node_name: &str,
    agent_dir: &Path,
) -> Result<Joined, JoinError> {
    let server = JoinClient::connect(server_url, token).await?;
    let key = load_or_create_key(agent_dir)?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)?
        .pem()?;
    let request = serde_json::to_vec(&NodeCredentialsRequest {
        node_name: node_name.to_string(),
        csr,
    })
    .map_err(|e| JoinError::Kubeconfig(e.to_string()))?;
    let body = server
        .call("POST", NODE_CREDENTIALS_PATH, JOIN_USER, Some(request))
        .await?;
    let credentials: NodeCredentials =
        serde_json::from_slice(&body).map_err(|e| JoinError::Server {
            url: server.url().to_string(),
            status: 200,
            message: format!("an answer that is not node credentials: {e}"),
        })?;
    server.check_ca(&credentials.ca_cert)?;

    let key_pem = key.serialize_pem();
    write(
        &agent_dir.join(CLIENT_CERT),
        &credentials.client_cert,
        0o644,
    )?;
    write(&agent_dir.join(SERVER_CA), &credentials.ca_cert, 0o644)?;
    let kubeconfig_text = shoal_common::join::kubeconfig(
        server.url(),
        &credentials.ca_cert,
        &credentials.client_cert,
        &key_pem,
    );
    let kubeconfig = agent_dir.join(KUBECONFIG);
    write(&kubeconfig, &kubeconfig_text, 0o600)?;
    let parsed = kube::config::Kubeconfig::from_yaml(&kubeconfig_text)
        .map_err(|e| JoinError::Kubeconfig(e.to_string()))?;
    let client = kube::Config::from_custom_kubeconfig(parsed, &Default::default())
        .await
        .map_err(|e| JoinError::Kubeconfig(e.to_string()))?;
    Ok(Joined {
        client,
        credentials,
        kubeconfig,
    })
}

/// Without a hash in the token the first CA seen is trusted, as k3s does with a bare token.
fn check_ca(token: &JoinToken, ca_pem: &str, url: &str) -> Result<(), JoinError> {
    if !token.trusts(ca_pem) {
        return Err(JoinError::CaMismatch {
            url: url.to_string(),
        });
    }
    if token.ca_hash.is_none() {
        tracing::warn!(
            "the join token pins no CA; trusting the one {url} presents (use the full K10… token from the server's data dir to avoid this)"
        );
    }
    Ok(())
}

fn load_or_create_key(agent_dir: &Path) -> Result<rcgen::KeyPair, JoinError> {
    let path = agent_dir.join(CLIENT_KEY);
    if let Ok(pem) = std::fs::read_to_string(&path) {
        if let Ok(key) = rcgen::KeyPair::from_pem(&pem) {
            return Ok(key);
        }
        tracing::warn!(path = %path.display(), "the node key is unreadable; making a new one");
    }
    let key = rcgen::KeyPair::generate()?;
    write(&path, &key.serialize_pem(), 0o600)?;
    Ok(key)
}

/// Writes through a temporary file, created with `mode` so a key is never readable by others,
/// and renamed over `path` so a crash leaves the old file or the new one.
fn write(path: &Path, contents: &str, mode: u32) -> Result<(), JoinError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| JoinError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// For fetching the CA only: what it returns is checked against the token afterwards.
fn unverified_tls() -> Result<Arc<rustls::ClientConfig>, JoinError> {
    let provider = provider();
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| JoinError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCertificate(provider)))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn verified_tls(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, JoinError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| JoinError::Tls(format!("the cluster CA: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| JoinError::Tls(format!("the cluster CA: {e}")))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| JoinError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The server as `--server` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// Normalised: `https://host:port`.
    url: String,
    host: String,
    port: u16,
}

impl Target {
    fn parse(url: &str) -> Result<Target, JoinError> {
        let bad = |reason: &str| JoinError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("the scheme must be https"));
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        if !matches!(uri.path(), "" | "/") {
            return Err(bad("a server URL has no path"));
        }
        let port = uri.port_u16().unwrap_or(shoal_common::DEFAULT_HTTPS_PORT);
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let url = if host.contains(':') {
            format!("https://[{host}]:{port}")
        } else {
            format!("https://{host}:{port}")
        };
        Ok(Target { url, host, port })
    }

    fn server_error(&self, status: u16, body: &[u8]) -> JoinError {
        let message = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
        JoinError::Server {
            url: self.url.clone(),
            status,
            message,
        }
    }

    /// One HTTP/1.1 request over a fresh TLS connection; the answer's status and body.
    async fn request(
        &self,
        tls: Arc<rustls::ClientConfig>,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Bytes), JoinError> {
        let unreachable = |reason: String| JoinError::Unreachable {
            url: self.url.clone(),
            reason,
        };
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let name = ServerName::try_from(self.host.clone())
            .map_err(|e| JoinError::Tls(format!("server name {:?}: {e}", self.host)))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| match e.kind() {
                // A certificate the pinned CA did not sign is not going to change by waiting.
                std::io::ErrorKind::InvalidData => JoinError::Tls(format!("{}: {e}", self.url)),
                _ => unreachable(format!("TLS: {e}")),
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(connection);
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, format!("{}:{}", self.host, self.port))
            .header(http::header::USER_AGENT, "shoal-agent");
        if let Some(authorization) = authorization {
            request = request.header(http::header::AUTHORIZATION, authorization);
        }
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| unreachable(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        Ok((status, body))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_are_normalised_or_refused_with_a_reason() {
        let t = Target::parse("https://10.0.0.1:6443").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("10.0.0.1", 6443));
        let t = Target::parse("https://server.lan").unwrap();
        assert_eq!(t.url, "https://server.lan:6443");
        let t = Target::parse("https://[fd00::1]:7443/").unwrap();
        assert_eq!(
            (t.host.as_str(), t.url.as_str()),
            ("fd00::1", "https://[fd00::1]:7443")
        );
        for (bad, why) in [
            ("http://10.0.0.1:6443", "https"),
            ("10.0.0.1:6443", "https"),
            ("https://10.0.0.1:6443/api", "path"),
            ("not a url", "URL"),
        ] {
            let err = Target::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn only_unreachable_servers_and_server_errors_are_worth_waiting_for() {
        let url = "https://s:6443".to_string();
        assert!(JoinError::Unreachable {
            url: url.clone(),
            reason: "refused".into()
        }
        .is_retryable());
        assert!(JoinError::Server {
            url: url.clone(),
            status: 503,
            message: String::new()
        }
        .is_retryable());
        assert!(!JoinError::Rejected { url: url.clone() }.is_retryable());
        assert!(!JoinError::CaMismatch { url }.is_retryable());
    }

    #[test]
    fn the_node_key_is_made_once_and_kept_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::TempDir::new().unwrap();
        let first = load_or_create_key(dir.path()).unwrap();
        let again = load_or_create_key(dir.path()).unwrap();
        assert_eq!(first.serialize_pem(), again.serialize_pem());
        let mode = std::fs::metadata(dir.path().join(CLIENT_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
