//! The calling side of peer connections. One mutual-TLS connection per peer, opened on first
//! use and shared by every request to that peer: requests are multiplexed by id (see
//! `wire.rs`), so replication, heartbeats, votes and forwarded client requests travel side by
//! side and answers come back as they are ready. A connection that fails is dropped with
//! everything waiting on it, and the next request opens a new one.
//!
//! Every call has a deadline. A call that fails tells whether its request surely never left
//! ([`CallError::Unreachable`], safe to retry elsewhere) or may have been acted on
//! ([`CallError::Lost`], [`CallError::Timeout`]): forwarding relies on the difference.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::AbortHandle;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsConnector;

use super::local::LocalMember;
use super::outbox::{Outbox, SendError};
use super::wire::{
    encode_frame, read_frame, Rejection, Request, RequestFrame, Response, ResponseFrame,
};

type NodeId = u64;

/// Fault injection for partition tests: the peers whose traffic this member drops, in both
/// directions — requests to them are never sent (the caller waits out its deadline, as behind
/// a firewall that drops packets) and requests from them are never answered. Empty, and so
/// without effect, unless a test fills it. Cheap to clone; clones share one set.
#[derive(Debug, Clone, Default)]
pub struct NetworkFaults {
    dropped: Arc<RwLock<BTreeSet<NodeId>>>,
}

impl NetworkFaults {
    /// Drops all traffic with these peers (in addition to any dropped already).
    pub fn drop_traffic_with(&self, peers: impl IntoIterator<Item = NodeId>) {
        self.dropped
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(peers);
    }

    /// Lets all traffic through again.
    pub fn heal(&self) {
        self.dropped
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Whether traffic with `peer` is dropped.
    pub fn drops(&self, peer: NodeId) -> bool {
        self.dropped
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&peer)
    }
}

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum CallError {
    /// No connection could be made: the request was not sent.
    #[error("node {target} at {addr} is unreachable: {why}")]
    Unreachable {
        target: NodeId,
        addr: String,
        why: String,
    },
    /// The connection failed after the request may have been sent.
    #[error("the connection to node {target} failed before it answered")]
    Lost { target: NodeId },
    /// No answer before the deadline; the request may have been acted on.
    #[error("node {target} did not answer within {timeout:?}")]
    Timeout { target: NodeId, timeout: Duration },
    /// The peer refused the request before acting on it.
    #[error("node {target} refused the request: {rejection}")]
    Rejected {
        target: NodeId,
        rejection: Rejection,
    },
}

/// Connections to every peer this member talks to.
pub(crate) struct Peers {
    local: Arc<LocalMember>,
    connector: TlsConnector,
    faults: NetworkFaults,
    slots: Mutex<HashMap<NodeId, Arc<Slot>>>,
    /// Connection tasks run on the store's runtime, whoever makes the call that opens them.
    runtime: Handle,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("node_id", &self.local.node_id)
            .finish_non_exhaustive()
    }
}

/// One peer's connection, if open. The async lock makes concurrent callers share one
/// connection attempt instead of racing several.
#[derive(Debug, Default)]
struct Slot {
    connection: tokio::sync::Mutex<Option<Arc<Connection>>>,
}

impl Peers {
    pub fn new(
        local: Arc<LocalMember>,
        tls: Arc<rustls::ClientConfig>,
        faults: NetworkFaults,
        runtime: Handle,
    ) -> Peers {
        Peers {
            local,
            connector: TlsConnector::from(tls),
            faults,
            slots: Mutex::new(HashMap::new()),
            runtime,
        }
    }

    /// Sends `body` to `target` at `addr` and waits at most `timeout` for the answer.
    pub async fn call(
        &self,
        target: NodeId,
        addr: &str,
        body: Request,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        let deadline = Instant::now() + timeout;
        if self.faults.drops(target) {
            tokio::time::sleep_until(deadline).await;
            return Err(CallError::Timeout { target, timeout });
        }
        let connection = self.connection(target, addr, deadline).await?;
        let header = self.local.header();
        match connection.request(target, header, body, deadline).await {
            Err(CallError::Timeout { target, .. }) => Err(CallError::Timeout { target, timeout }),
            Ok(Response::Rejected(rejection)) => Err(CallError::Rejected { target, rejection }),
            other => other,
        }
    }

    async fn connection(
        &self,
        target: NodeId,
        addr: &str,
        deadline: Instant,
    ) -> Result<Arc<Connection>, CallError> {
        let unreachable = |why: String| CallError::Unreachable {
            target,
            addr: addr.to_string(),
            why,
        };
        let slot = Arc::clone(
            self.slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(target)
                .or_default(),
        );
        let mut current = timeout_at(deadline, slot.connection.lock())
            .await
            .map_err(|_| unreachable("timed out waiting for a connection attempt".into()))?;
        if let Some(connection) = &*current {
            if connection.alive() && connection.addr == addr {
                return Ok(Arc::clone(connection));
            }
        }
        *current = None;
        let connection = timeout_at(deadline, self.connect(addr))
            .await
            .map_err(|_| unreachable("timed out connecting".into()))?
            .map_err(unreachable)?;
        *current = Some(Arc::clone(&connection));
        Ok(connection)
    }

    async fn connect(&self, addr: &str) -> Result<Arc<Connection>, String> {
        let name = server_name(addr)?;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting: {e}"))?;
        tcp.set_nodelay(true)
            .map_err(|e| format!("setting TCP_NODELAY: {e}"))?;
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        Ok(Connection::start(addr.to_string(), tls, &self.runtime))
    }
}

/// The name the peer's certificate must carry: the host part of `host:port` (an IP address or
/// a DNS name; IPv6 in brackets).
pub(crate) fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = if let Some(rest) = addr.strip_prefix('[') {
        rest.split_once(']').map(|(host, _)| host)
    } else {
        addr.rsplit_once(':').map(|(host, _)| host)
    }
    .filter(|host| !host.is_empty())
    .ok_or_else(|| format!("{addr:?} is not host:port"))?;
    ServerName::try_from(host.to_string()).map_err(|e| format!("{host:?} as a TLS name: {e}"))
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Response>>>>;

/// The sending half of a peer connection, whatever the stream.
pub(crate) type PeerWriter = Box<dyn AsyncWrite + Unpin + Send>;

/// An open connection: callers write their requests themselves (`outbox.rs`), a reader task
/// hands each answer to whoever waits for its id.
#[derive(Debug)]
struct Connection {
    addr: String,
    out: Arc<Outbox<PeerWriter>>,
    pending: Pending,
    next_id: AtomicU64,
    alive: Arc<AtomicBool>,
    reader: AbortHandle,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
        self.out.close();
    }
}

/// Marks a connection dead and fails everything waiting on it (their senders drop).
fn close(alive: &AtomicBool, pending: &Pending) {
    alive.store(false, Ordering::SeqCst);
    pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

impl Connection {
    fn start<S>(addr: String, stream: S, runtime: &Handle) -> Arc<Connection>
    where
        S: tokio::io::AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut reader, writer) = tokio::io::split(stream);
        let out = Outbox::new(Box::new(writer) as PeerWriter);
        let pending: Pending = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let read_task = {
            let (alive, pending, out) =
                (Arc::clone(&alive), Arc::clone(&pending), Arc::clone(&out));
            runtime.spawn(async move {
                loop {
                    let frame = tokio::select! {
                        frame = read_frame::<_, ResponseFrame>(&mut reader) => frame,
                        // A write failed: the stream is unusable.
                        () = out.closed() => break,
                    };
                    match frame {
                        Ok(Some(frame)) => {
                            let waiter = pending
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .remove(&frame.id);
                            // No waiter: it gave up at its deadline.
                            if let Some(waiter) = waiter {
                                let _ = waiter.send(frame.body);
                            }
                        }
                        Ok(None) => break,
                        Err(err) => {
                            tracing::debug!(%err, "peer connection read failed");
                            break;
                        }
                    }
                }
                close(&alive, &pending);
                out.close();
            })
        };
        Arc::new(Connection {
            addr,
            out,
            pending,
            next_id: AtomicU64::new(1),
            alive,
            reader: read_task.abort_handle(),
        })
    }

    fn alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    async fn request(
        &self,
        target: NodeId,
        header: super::wire::Header,
        body: Request,
        deadline: Instant,
    ) -> Result<Response, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let kind = body.kind();
        let frame = encode_frame(&RequestFrame { id, header, body }).map_err(|e| {
            CallError::Unreachable {
                target,
                addr: self.addr.clone(),
                why: format!("{kind}: {e}"),
            }
        })?;
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        // Checked after registering: a connection closing concurrently either sees the entry
        // (and fails it) or is seen dead here.
        let unsent = || CallError::Unreachable {
            target,
            addr: self.addr.clone(),
            why: "the connection closed".into(),
        };
        if !self.alive() {
            self.forget(id);
            return Err(unsent());
        }
        match self.out.send(frame).await {
            Ok(()) => {}
            Err(SendError::Closed) => {
                self.forget(id);
                return Err(unsent());
            }
            // Perhaps sent: the answer is unknown.
            Err(SendError::Failed(_)) => {
                self.forget(id);
                return Err(CallError::Lost { target });
            }
        }
        match timeout_at(deadline, rx).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(CallError::Lost { target }),
            Err(_) => {
                self.forget(id);
                Err(CallError::Timeout {
                    target,
                    timeout: Duration::ZERO,
                })
            }
        }
    }

    fn forget(&self, id: u64) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_host_part() {
        assert_eq!(
            server_name("10.0.0.1:6444").unwrap(),
            ServerName::try_from("10.0.0.1").unwrap()
        );
        assert_eq!(
            server_name("[fd00::1]:6444").unwrap(),
            ServerName::try_from("fd00::1").unwrap()
        );
        assert_eq!(
            server_name("server-1.example:6444").unwrap(),
            ServerName::try_from("server-1.example").unwrap()
        );
        for bad in ["nohost", ":6444", "[::1", "bad name:1"] {
            assert!(server_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn faults_are_shared_by_clones() {
        let faults = NetworkFaults::default();
        let clone = faults.clone();
        assert!(!faults.drops(2));
        clone.drop_traffic_with([2, 3]);
        assert!(faults.drops(2) && faults.drops(3) && !faults.drops(1));
        faults.heal();
        assert!(!clone.drops(2));
    }
}
