//! The agent's client-side load balancer for the API, as k3s's agents have one: the node's API
//! client dials `127.0.0.1:<port>`, and each connection is relayed as plain TCP (TLS stays end
//! to end, so the client still verifies the server against the cluster CA; every server's
//! certificate names 127.0.0.1) to the first server that accepts it, starting with the one that
//! worked last. The list starts with `--server` and the servers remembered from the last run,
//! then follows the `default/kubernetes` endpoints, so agents move to another server on their
//! own when one dies, and learn servers that join later.
//!
//! [`ordered_servers`] is the pure part: which servers to try, in which order.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Endpoints;
use tokio::net::{TcpListener, TcpStream};

/// How long one server may take to accept a connection before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the server list is refreshed from the `kubernetes` endpoints.
const REFRESH_EVERY: Duration = Duration::from_secs(10);
/// Where the list is remembered, under the agent's directory.
pub const SERVERS_FILE: &str = "servers.json";

/// Why the balancer could not start.
#[derive(Debug, thiserror::Error)]
pub enum BalancerError {
    #[error("listening on 127.0.0.1 for the API load balancer: {0}")]
    Listen(std::io::Error),
}

/// The servers to try, in order: the one that worked last (if still listed), then `--server`,
/// then the rest as the endpoints list them. Duplicates are dropped.
pub fn ordered_servers(
    preferred: Option<&str>,
    configured: &str,
    discovered: &[String],
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let known = |s: &str| s == configured || discovered.iter().any(|d| d == s);
    if let Some(p) = preferred.filter(|p| known(p)) {
        out.push(p.to_string());
    }
    for s in std::iter::once(configured).chain(discovered.iter().map(String::as_str)) {
        if !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    }
    out
}

/// `host:port` of each server in the `kubernetes` Endpoints.
pub fn servers_of(endpoints: &Endpoints) -> Vec<String> {
    let mut out = Vec::new();
    for subset in endpoints.subsets.iter().flatten() {
        let port = subset
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref().is_none_or(|n| n == "https"))
            .map(|p| p.port);
        let Some(port) = port else { continue };
        for address in subset.addresses.iter().flatten() {
            let host = if address.ip.contains(':') {
                format!("[{}]", address.ip)
            } else {
                address.ip.clone()
            };
            out.push(format!("{host}:{port}"));
        }
    }
    out.sort();
    out
}

/// The servers remembered in `agent_dir` from the last run (`host:port`).
pub fn remembered_servers(agent_dir: &Path) -> Vec<String> {
    std::fs::read(agent_dir.join(SERVERS_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

#[derive(Debug, Default)]
struct State {
    discovered: Vec<String>,
    preferred: Option<String>,
}

/// A running balancer. Dropping it does not stop it; it ends with the process (or the
/// runtime), as the agent's API client needs it to the last moment.
#[derive(Debug, Clone)]
pub struct ServerBalancer {
    configured: String,
    state: Arc<Mutex<State>>,
    state_file: PathBuf,
    local: std::net::SocketAddr,
}

impl ServerBalancer {
    /// Listens on an ephemeral loopback port and relays to `configured` (`host:port` from
    /// `--server`) and the servers remembered in `agent_dir`.
    pub async fn start(configured: &str, agent_dir: &Path) -> Result<Self, BalancerError> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(BalancerError::Listen)?;
        let local = listener.local_addr().map_err(BalancerError::Listen)?;
        let state_file = agent_dir.join(SERVERS_FILE);
        let remembered = remembered_servers(agent_dir);
        let balancer = ServerBalancer {
            configured: configured.to_string(),
            state: Arc::new(Mutex::new(State {
                discovered: remembered,
                preferred: None,
            })),
            state_file,
            local,
        };
        let relay = balancer.clone();
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((client, _)) => {
                        let relay = relay.clone();
                        tokio::spawn(async move { relay.relay(client).await });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "API load balancer accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(balancer)
    }

    /// The URL the node's API client uses.
    pub fn local_url(&self) -> String {
        format!("https://{}", self.local)
    }

    /// The servers this balancer would try now, in order.
    pub fn servers(&self) -> Vec<String> {
        let state = self.lock();
        ordered_servers(
            state.preferred.as_deref(),
            &self.configured,
            &state.discovered,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the discovered servers (an empty list is ignored: it is never the truth for a
    /// running cluster) and remembers them for the next start.
    pub fn set_discovered(&self, servers: Vec<String>) {
        if servers.is_empty() {
            return;
        }
        let changed = {
            let mut state = self.lock();
            let changed = state.discovered != servers;
            state.discovered = servers.clone();
            changed
        };
        if changed {
            tracing::info!(?servers, "API servers");
            if let Ok(bytes) = serde_json::to_vec(&servers) {
                if let Err(e) = std::fs::write(&self.state_file, bytes) {
                    tracing::warn!(error = %e, path = %self.state_file.display(), "remembering the API servers");
                }
            }
        }
    }

    async fn relay(&self, mut client: TcpStream) {
        for server in self.servers() {
            let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&server));
            match connect.await {
                Ok(Ok(mut upstream)) => {
                    let switched = {
                        let mut state = self.lock();
                        let switched = state.preferred.as_deref() != Some(server.as_str());
                        state.preferred = Some(server.clone());
                        switched
                    };
                    if switched {
                        tracing::info!(server = %server, "API load balancer now uses this server");
                    }
                    let _ = client.set_nodelay(true);
                    let _ = upstream.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    return;
                }
                Ok(Err(e)) => tracing::debug!(server = %server, error = %e, "API server refused"),
                Err(_) => tracing::debug!(server = %server, "API server did not answer"),
            }
        }
        tracing::warn!("no API server is reachable");
    }

    /// Follows the `kubernetes` endpoints through `client` (which goes through this balancer)
    /// until `stop`.
    pub async fn follow(self, client: kube::Client, mut stop: tokio::sync::watch::Receiver<bool>) {
        let api: kube::Api<Endpoints> = kube::Api::namespaced(client, "default");
        loop {
            match api.get_opt("kubernetes").await {
                Ok(Some(endpoints)) => self.set_discovered(servers_of(&endpoints)),
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "reading the kubernetes endpoints"),
            }
            tokio::select! {
                _ = tokio::time::sleep(REFRESH_EVERY) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_last_working_server_comes_first_then_the_configured_one() {
        let discovered = strings(&["10.0.0.1:6443", "10.0.0.2:6443", "10.0.0.3:6443"]);
        assert_eq!(
            ordered_servers(None, "10.0.0.2:6443", &discovered),
            strings(&["10.0.0.2:6443", "10.0.0.1:6443", "10.0.0.3:6443"])
        );
        assert_eq!(
            ordered_servers(Some("10.0.0.3:6443"), "10.0.0.2:6443", &discovered),
            strings(&["10.0.0.3:6443", "10.0.0.2:6443", "10.0.0.1:6443"])
        );
        // A preferred server that left the cluster is not tried first any more.
        assert_eq!(
            ordered_servers(Some("10.0.0.9:6443"), "10.0.0.2:6443", &discovered)[0],
            "10.0.0.2:6443"
        );
    }

    #[test]
    fn endpoints_become_host_port_pairs() {
        let endpoints: Endpoints = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kubernetes"},
            "subsets": [{"addresses": [{"ip": "10.0.0.2"}, {"ip": "fd00::1"}],
                         "ports": [{"name": "https", "port": 6443}]}]
        }))
        .unwrap();
        assert_eq!(
            servers_of(&endpoints),
            strings(&["10.0.0.2:6443", "[fd00::1]:6443"])
        );
    }

    async fn echo_server(tag: u8) -> (String, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut byte = [0u8; 1];
                    while stream.read_exact(&mut byte).await.is_ok() {
                        if stream.write_all(&[tag, byte[0]]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (address, task)
    }

    async fn ask(url: &str) -> Option<u8> {
        let address = url.trim_start_matches("https://");
        let mut stream = TcpStream::connect(address).await.ok()?;
        stream.write_all(&[42]).await.ok()?;
        let mut answer = [0u8; 2];
        stream.read_exact(&mut answer).await.ok()?;
        (answer[1] == 42).then_some(answer[0])
    }

    /// Real sockets: connections go to the configured server, move to a discovered one when it
    /// dies, and the list is remembered for the next start.
    #[tokio::test]
    async fn fails_over_to_the_next_server_and_remembers_the_list() {
        let dir = tempfile::TempDir::new().unwrap();
        let (first, first_task) = echo_server(1).await;
        let (second, _second_task) = echo_server(2).await;
        let balancer = ServerBalancer::start(&first, dir.path()).await.unwrap();
        assert_eq!(ask(&balancer.local_url()).await, Some(1));
        balancer.set_discovered(vec![first.clone(), second.clone()]);
        first_task.abort();
        let _ = first_task.await;
        // The listener is gone with the task: the next connection goes to the second server.
        assert_eq!(ask(&balancer.local_url()).await, Some(2));
        assert_eq!(
            balancer.servers()[0],
            second,
            "the working server is preferred"
        );

        let again = ServerBalancer::start(&first, dir.path()).await.unwrap();
        assert_eq!(again.servers(), vec![first, second]);
    }
}
