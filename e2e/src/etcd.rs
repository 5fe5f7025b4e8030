//! Just enough of etcd for the benchmarks: a throwaway single-member etcd server run as a child
//! process on loopback ([`EtcdServer`]), a throwaway multi-member cluster of such processes
//! ([`EtcdCluster`]), and a client for its gRPC v3 API ([`EtcdClient`]) —
//! the API kube-apiserver uses — over tonic, with the few protobuf messages it needs written
//! by hand (no protoc, no build script).
//!
//! Field numbers follow etcd's `api/etcdserverpb/rpc.proto` and `api/mvccpb/kv.proto`. Prost
//! skips fields it does not know, so the response messages carry only what is read here.

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use tonic::client::Grpc;
use tonic::codec::{ProstCodec, Streaming};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

/// The protobuf messages of etcd's v3 API used here.
pub mod pb {
    /// `etcdserverpb.ResponseHeader`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResponseHeader {
        #[prost(uint64, tag = "1")]
        pub cluster_id: u64,
        #[prost(uint64, tag = "2")]
        pub member_id: u64,
        #[prost(int64, tag = "3")]
        pub revision: i64,
        #[prost(uint64, tag = "4")]
        pub raft_term: u64,
    }

    /// `mvccpb.KeyValue`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(int64, tag = "2")]
        pub create_revision: i64,
        #[prost(int64, tag = "3")]
        pub mod_revision: i64,
        #[prost(int64, tag = "4")]
        pub version: i64,
        #[prost(bytes = "vec", tag = "5")]
        pub value: Vec<u8>,
        #[prost(int64, tag = "6")]
        pub lease: i64,
    }

    /// `etcdserverpb.PutRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
        #[prost(int64, tag = "3")]
        pub lease: i64,
        #[prost(bool, tag = "4")]
        pub prev_kv: bool,
        #[prost(bool, tag = "5")]
        pub ignore_value: bool,
        #[prost(bool, tag = "6")]
        pub ignore_lease: bool,
    }

    /// `etcdserverpb.PutResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(message, optional, tag = "2")]
        pub prev_kv: Option<KeyValue>,
    }

    /// `etcdserverpb.RangeRequest`, first fields only (the rest default as etcd expects).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RangeRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub range_end: Vec<u8>,
        #[prost(int64, tag = "3")]
        pub limit: i64,
    }

    /// `etcdserverpb.RangeResponse`, header and count only.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RangeResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(int64, tag = "4")]
        pub count: i64,
    }

    /// `etcdserverpb.WatchRequest` (only the create variant of its `request_union`).
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WatchRequest {
        #[prost(oneof = "watch_request::RequestUnion", tags = "1")]
        pub request_union: Option<watch_request::RequestUnion>,
    }

    /// `etcdserverpb.WatchRequest.request_union`.
    pub mod watch_request {
        /// The request kinds a watch stream carries (cancel = 2 and progress = 3 are unused).
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum RequestUnion {
            #[prost(message, tag = "1")]
            CreateRequest(super::WatchCreateRequest),
        }
    }

    /// `etcdserverpb.WatchCreateRequest.FilterType`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum FilterType {
        NoPut = 0,
        NoDelete = 1,
    }

    /// `etcdserverpb.WatchCreateRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WatchCreateRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub range_end: Vec<u8>,
        #[prost(int64, tag = "3")]
        pub start_revision: i64,
        #[prost(bool, tag = "4")]
        pub progress_notify: bool,
        #[prost(enumeration = "FilterType", repeated, tag = "5")]
        pub filters: Vec<i32>,
        #[prost(bool, tag = "6")]
        pub prev_kv: bool,
        #[prost(int64, tag = "7")]
        pub watch_id: i64,
        #[prost(bool, tag = "8")]
        pub fragment: bool,
    }

    /// `etcdserverpb.WatchResponse`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WatchResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(int64, tag = "2")]
        pub watch_id: i64,
        #[prost(bool, tag = "3")]
        pub created: bool,
        #[prost(bool, tag = "4")]
        pub canceled: bool,
        #[prost(int64, tag = "5")]
        pub compact_revision: i64,
        #[prost(string, tag = "6")]
        pub cancel_reason: String,
        #[prost(bool, tag = "7")]
        pub fragment: bool,
        #[prost(message, repeated, tag = "11")]
        pub events: Vec<Event>,
    }

    /// `mvccpb.Event.EventType`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum EventType {
        Put = 0,
        Delete = 1,
    }

    /// `mvccpb.Event`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Event {
        #[prost(enumeration = "EventType", tag = "1")]
        pub r#type: i32,
        #[prost(message, optional, tag = "2")]
        pub kv: Option<KeyValue>,
        #[prost(message, optional, tag = "3")]
        pub prev_kv: Option<KeyValue>,
    }
}

/// `etcdserverpb.StatusRequest` (empty) and `etcdserverpb.StatusResponse`, the fields read.
pub mod status {
    /// `etcdserverpb.StatusRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatusRequest {}

    /// `etcdserverpb.StatusResponse`: the header names the answering member, `leader` the
    /// member it believes leads.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatusResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<super::pb::ResponseHeader>,
        #[prost(uint64, tag = "4")]
        pub leader: u64,
    }
}

/// The end of the key range holding every key that starts with `prefix` (etcd's `WithPrefix`).
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff (or the prefix was empty): "\0" means "to the end of the keyspace".
    vec![0]
}

/// A client of one etcd server's KV and Watch services. Clones share the underlying HTTP/2
/// connection(s) of the tonic [`Channel`], as etcd's Go client shares its gRPC connection.
#[derive(Debug, Clone)]
pub struct EtcdClient {
    grpc: Grpc<Channel>,
}

impl EtcdClient {
    /// Opens one HTTP/2 connection to `url` (e.g. `http://127.0.0.1:2379`).
    pub async fn connect(url: &str) -> Result<EtcdClient> {
        let channel = Endpoint::from_shared(url.to_string())
            .with_context(|| format!("bad etcd url {url}"))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to etcd at {url}"))?;
        Ok(EtcdClient {
            grpc: Grpc::new(channel),
        })
    }

    /// One unary gRPC call on `path`.
    async fn unary<Req, Resp>(
        &mut self,
        path: &'static str,
        request: Req,
        what: &'static str,
    ) -> Result<Resp>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc.ready().await.context("etcd channel not ready")?;
        let response = self
            .grpc
            .unary(
                tonic::Request::new(request),
                PathAndQuery::from_static(path),
                ProstCodec::<Req, Resp>::default(),
            )
            .await
            .context(what)?;
        Ok(response.into_inner())
    }

    /// `KV/Put` of `value` at `key`.
    pub async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<pb::PutResponse> {
        let request = pb::PutRequest {
            key,
            value,
            ..Default::default()
        };
        self.unary("/etcdserverpb.KV/Put", request, "etcd Put")
            .await
    }

    /// `KV/Range` over one key (linearizable): used to wait until the server serves.
    pub async fn get(&mut self, key: Vec<u8>) -> Result<pb::RangeResponse> {
        let request = pb::RangeRequest {
            key,
            ..Default::default()
        };
        self.unary("/etcdserverpb.KV/Range", request, "etcd Range")
            .await
    }

    /// `Maintenance/Status`: this member's id and the leader it knows.
    pub async fn status(&mut self) -> Result<status::StatusResponse> {
        self.unary(
            "/etcdserverpb.Maintenance/Status",
            status::StatusRequest {},
            "etcd Status",
        )
        .await
    }

    /// Opens a `Watch/Watch` bidirectional stream fed by `requests`.
    ///
    /// etcd sends the response headers only with its first message, so the caller must have
    /// queued at least one create request in `requests` before awaiting this.
    pub async fn watch<S>(&mut self, requests: S) -> Result<Streaming<pb::WatchResponse>>
    where
        S: tonic::codegen::tokio_stream::Stream<Item = pb::WatchRequest> + Send + 'static,
    {
        self.grpc.ready().await.context("etcd channel not ready")?;
        let response = self
            .grpc
            .streaming(
                tonic::Request::new(requests),
                PathAndQuery::from_static("/etcdserverpb.Watch/Watch"),
                ProstCodec::<pb::WatchRequest, pb::WatchResponse>::default(),
            )
            .await
            .context("opening etcd Watch stream")?;
        Ok(response.into_inner())
    }
}

/// A free TCP port on loopback (free when asked; etcd binds it moments later).
fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// A single-member etcd server run as a child process, with its data directory in a fresh
/// temporary directory. Dropping it kills the process and removes the directory.
#[derive(Debug)]
pub struct EtcdServer {
    child: Child,
    client_url: String,
    log_path: PathBuf,
    // Dropped after `drop` has killed the child.
    dir: tempfile::TempDir,
}

impl EtcdServer {
    /// Starts `binary` with its data directory in a new temporary directory under `base`.
    /// It is not yet serving: call [`EtcdServer::wait_ready`].
    pub fn start(binary: &Path, base: &Path) -> Result<EtcdServer> {
        let dir = tempfile::Builder::new()
            .prefix("shoal-bench-etcd-")
            .tempdir_in(base)
            .with_context(|| format!("creating a temporary directory in {}", base.display()))?;
        let data_dir = dir.path().join("data");
        let log_path = dir.path().join("etcd.log");
        let client_port = free_port()?;
        let mut peer_port = free_port()?;
        while peer_port == client_port {
            peer_port = free_port()?;
        }
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let member = MemberSpec {
            name: "default",
            client_url: &client_url,
            peer_url: &peer_url,
            initial_cluster: &format!("default={peer_url}"),
        };
        let child = spawn_member(binary, &data_dir, &member, &log_path)?;
        Ok(EtcdServer {
            child,
            client_url,
            log_path,
            dir,
        })
    }

    /// The URL clients reach the server at.
    pub fn client_url(&self) -> &str {
        &self.client_url
    }

    /// The temporary directory holding the data directory and the server's log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits until the server answers a linearizable read, for at most `timeout`.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last_error = None;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().context("checking on etcd")? {
                bail!(
                    "etcd exited early ({status}); its log:\n{}",
                    self.log_tail()
                );
            }
            let attempt = async {
                let mut client = EtcdClient::connect(&self.client_url).await?;
                client.get(b"/bench/ready".to_vec()).await
            };
            match tokio::time::timeout(Duration::from_secs(2), attempt).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(err)) => last_error = Some(format!("{err:#}")),
                Err(_) => last_error = Some("timed out".into()),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "etcd did not serve {} within {timeout:?} (last error: {}); its log:\n{}",
            self.client_url,
            last_error.unwrap_or_default(),
            self.log_tail()
        )
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path)
    }
}

/// One member's names and addresses, as `etcd` takes them on its command line.
struct MemberSpec<'a> {
    name: &'a str,
    client_url: &'a str,
    peer_url: &'a str,
    /// `name=peer_url,…` of every member.
    initial_cluster: &'a str,
}

/// Starts one etcd member of a new cluster, logging to `log_path`.
fn spawn_member(
    binary: &Path,
    data_dir: &Path,
    member: &MemberSpec<'_>,
    log_path: &Path,
) -> Result<Child> {
    let log = std::fs::File::create(log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    Command::new(binary)
        .arg("--name")
        .arg(member.name)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen-client-urls")
        .arg(member.client_url)
        .arg("--advertise-client-urls")
        .arg(member.client_url)
        .arg("--listen-peer-urls")
        .arg(member.peer_url)
        .arg("--initial-advertise-peer-urls")
        .arg(member.peer_url)
        .arg("--initial-cluster")
        .arg(member.initial_cluster)
        .arg("--initial-cluster-state")
        .arg("new")
        .arg("--quota-backend-bytes")
        .arg("8589934592")
        .arg("--logger")
        .arg("zap")
        .arg("--log-outputs")
        .arg("stderr")
        .arg("--log-level")
        .arg("warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log file handle")?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

/// The last lines of a log file, for error messages.
fn log_tail(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let _ = file.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A multi-member etcd cluster on loopback, one child process per member, all data in one
/// fresh temporary directory. Dropping it kills every member and removes the directory.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<ClusterMember>,
    // Dropped after `drop` has killed the children.
    dir: tempfile::TempDir,
}

#[derive(Debug)]
struct ClusterMember {
    child: Option<Child>,
    client_url: String,
    log_path: PathBuf,
}

impl EtcdCluster {
    /// Starts `size` members of a new cluster under `base`; call [`EtcdCluster::wait_ready`].
    pub fn start(binary: &Path, base: &Path, size: usize) -> Result<EtcdCluster> {
        let dir = tempfile::Builder::new()
            .prefix("shoal-bench-etcd-cluster-")
            .tempdir_in(base)
            .with_context(|| format!("creating a temporary directory in {}", base.display()))?;
        let mut ports: Vec<u16> = Vec::with_capacity(2 * size);
        while ports.len() < 2 * size {
            let port = free_port()?;
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let urls: Vec<(String, String)> = ports
            .chunks(2)
            .map(|p| {
                (
                    format!("http://127.0.0.1:{}", p[0]),
                    format!("http://127.0.0.1:{}", p[1]),
                )
            })
            .collect();
        let initial_cluster = urls
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}={peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members: Vec::with_capacity(size),
            dir,
        };
        for (i, (client_url, peer_url)) in urls.iter().enumerate() {
            let name = format!("m{i}");
            let log_path = cluster.dir.path().join(format!("{name}.log"));
            let member = MemberSpec {
                name: &name,
                client_url,
                peer_url,
                initial_cluster: &initial_cluster,
            };
            let data_dir = cluster.dir.path().join(&name);
            let child = spawn_member(binary, &data_dir, &member, &log_path)?;
            cluster.members.push(ClusterMember {
                child: Some(child),
                client_url: client_url.clone(),
                log_path,
            });
        }
        Ok(cluster)
    }

    /// The URL clients reach member `index` at.
    pub fn client_url(&self, index: usize) -> Option<&str> {
        self.members.get(index).map(|m| m.client_url.as_str())
    }

    /// The temporary directory holding the members' data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits until every live member answers a linearizable read, for at most `timeout`.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for index in 0..self.members.len() {
            loop {
                let member = &mut self.members[index];
                let Some(child) = member.child.as_mut() else {
                    break;
                };
                if let Some(status) = child.try_wait().context("checking on etcd")? {
                    bail!(
                        "etcd member {index} exited early ({status}); its log:\n{}",
                        log_tail(&member.log_path)
                    );
                }
                let url = member.client_url.clone();
                let attempt = async {
                    let mut client = EtcdClient::connect(&url).await?;
                    client.get(b"/bench/ready".to_vec()).await
                };
                match tokio::time::timeout(Duration::from_secs(2), attempt).await {
                    Ok(Ok(_)) => break,
                    Ok(Err(err)) if Instant::now() >= deadline => {
                        bail!("etcd member {index} did not serve within {timeout:?}: {err:#}")
                    }
                    Err(_) if Instant::now() >= deadline => {
                        bail!("etcd member {index} did not serve within {timeout:?}")
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
        Ok(())
    }

    /// The index of the member the live members agree leads.
    pub async fn leader(&self) -> Result<usize> {
        let mut ids = Vec::with_capacity(self.members.len());
        let mut leaders = Vec::new();
        for member in &self.members {
            if member.child.is_none() {
                ids.push(None);
                continue;
            }
            let mut client = EtcdClient::connect(&member.client_url).await?;
            let status = client.status().await?;
            ids.push(status.header.map(|h| h.member_id));
            leaders.push(status.leader);
        }
        let leader = leaders
            .first()
            .copied()
            .filter(|first| *first != 0 && leaders.iter().all(|l| l == first))
            .ok_or_else(|| anyhow::anyhow!("etcd members disagree on the leader: {leaders:?}"))?;
        ids.iter()
            .position(|id| *id == Some(leader))
            .ok_or_else(|| anyhow::anyhow!("etcd's leader {leader:x} is not a live member"))
    }

    /// Kills member `index` (SIGKILL), as a crash would.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members.get_mut(index).and_then(|m| m.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last lines of every member's log.
    pub fn log_tails(&self) -> String {
        self.members
            .iter()
            .enumerate()
            .map(|(i, m)| format!("-- member {i}:\n{}", log_tail(&m.log_path)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `etcd --version`'s first line's version, e.g. `3.4.23`.
pub fn version(binary: &Path) -> Result<String> {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text
        .lines()
        .find_map(|line| line.strip_prefix("etcd Version:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| text.trim().to_string());
    let go = text
        .lines()
        .find_map(|line| line.strip_prefix("Go Version:"))
        .map(|v| format!(" ({})", v.trim()))
        .unwrap_or_default();
    Ok(format!("{version}{go}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_range_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b""), vec![0]);
    }

    #[test]
    fn put_request_wire_format() {
        let request = pb::PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        };
        // Field 1 (bytes) "k", field 2 (bytes) "v"; defaults are not encoded.
        assert_eq!(request.encode_to_vec(), vec![0x0a, 1, b'k', 0x12, 1, b'v']);
    }
}
