//! The durable, replicated [`Store`]: openraft over sled. Writes are proposed through Raft and
//! acknowledged once the log entry is fsync'd on a majority (group-committed with concurrent
//! writes) and applied; reads are linearizable via Raft's read index.
//!
//! A store is one member of a store cluster. Without a [`PeerConfig`] it is a one-member
//! cluster, as every server was before replication. With one, it listens on its peer port for
//! the other members (mutual TLS with the configuration it is given: this crate knows no PKI)
//! and either starts a new cluster ([`Bootstrap::Init`]) or waits to be added by a member of
//! an existing one ([`Bootstrap::Join`], then [`RaftStore::add_member`] on any member). Every
//! member serves the whole [`Store`] API: writes and membership changes are forwarded to the
//! leader, linearizable reads ask the leader for a read index and then read locally, and
//! watches run from the member's own applied history.
//!
//! On disk, `<dir>/FORMAT` names the store's format, node id and cluster id (see
//! `identity.rs`), `<dir>/wal/` holds the Raft log and vote (write-ahead segments, `log.rs`),
//! `<dir>/db` is the sled database of the state machine, `<dir>/snapshot.bin` the latest Raft
//! snapshot, and `<dir>/REMOVED` marks a member its cluster removed.
//!
//! Store snapshots — files an operator keeps, unlike the Raft snapshot — are written by
//! [`RaftStore::save_snapshot`] while the store serves and restored by [`reset_cluster`],
//! which also makes a stopped member the only one of a new cluster after quorum loss
//! (`snapshots.rs`, `reset.rs`).

mod client;
mod cluster;
mod disk;
mod identity;
mod local;
mod log;
mod network;
mod outbox;
mod proposer;
mod reset;
mod server;
mod sm;
mod snapshots;
mod space;
mod trace;
mod wal;
mod wire;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use openraft::{BasicNode, Config, Raft, SnapshotPolicy};
use tokio::sync::watch as tokio_watch;

use crate::api::Store;
use crate::error::{Result, StoreError};
use crate::mvcc::{self, compacted, deleted, written, Command, Outcome, Retention};
use crate::types::{
    validate_key, validate_prefix, validate_value, KeyValue, RangeRequest, RangeResponse, Revision,
};
use crate::watch::{check_start, HistorySource, WatchStream};

use self::cluster::{Core, Limits};
use self::identity::{Identity, Parsed, FORMAT_FILE};
use self::local::LocalMember;

pub use self::client::NetworkFaults;
pub use self::cluster::{Member, Members};
pub use self::disk::DiskSync;
pub use self::log::LogStore;
pub use self::network::{PeerNetwork, SingleNodeNetwork};
pub use self::reset::{reset_cluster, ResetReport};
pub use self::sm::StateMachine;
pub use self::snapshots::{
    list_snapshots, read_snapshot_info, snapshot_value, validate_snapshot_name, Listed,
    SnapshotError, SnapshotHeader, SnapshotInfo,
};

openraft::declare_raft_types!(
    /// Shoal's Raft types: commands in, outcomes out, nodes addressed by `host:port`.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

const DB_DIR: &str = "db";
/// The sled tree of the state machine.
const STATE_TREE: &str = "state";

/// How a store with no cluster yet gets one. Ignored once the store belongs to a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bootstrap {
    /// Start a new cluster with this member as its only voter (`--cluster-init`; also what a
    /// store without a [`PeerConfig`] always does).
    #[default]
    Init,
    /// Start empty and wait to be added by a member of an existing cluster
    /// ([`RaftStore::add_member`] called on any member with this store's
    /// [`node_id`](RaftStore::node_id) and advertised address). Needs a [`PeerConfig`].
    Join,
}

/// The peer transport: where this member listens for the others and the mutual TLS both ways.
#[derive(Clone)]
pub struct PeerConfig {
    /// The address to listen on for other members (Raft and forwarded requests).
    pub listen: SocketAddr,
    /// TLS for connections from other members. It must verify client certificates (against
    /// the cluster's CA, or a CA only store members get); the store also refuses any
    /// connection whose client presented no certificate.
    pub tls_server: Arc<rustls::ServerConfig>,
    /// TLS for connections to other members: trusts the CA their certificates come from and
    /// presents this member's client certificate. The server name checked is the host part
    /// of the member's address (an IP address or DNS name).
    pub tls_client: Arc<rustls::ClientConfig>,
    /// Fault injection for partition tests; leave the default.
    pub faults: NetworkFaults,
}

impl std::fmt::Debug for PeerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerConfig")
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

/// How to open a [`RaftStore`].
#[derive(Debug, Clone)]
pub struct RaftStoreConfig {
    /// Directory holding everything the store writes.
    pub dir: PathBuf,
    /// This member's Raft node id. Recorded in `FORMAT` when the store is created and read
    /// from there afterwards; `None` takes the recorded one, or for a new store 1 when it
    /// starts a cluster and a random id when it joins one. An id that differs from the
    /// recorded one is refused.
    pub node_id: Option<u64>,
    /// The address (`host:port` of the peer port) other members reach this one at; recorded in
    /// the membership when this member starts a cluster (when it joins, the caller of
    /// `add_member` names it).
    pub advertise: String,
    /// Count-based history retention, applied deterministically with every write.
    pub retention: Retention,
    /// Time-based retention: history older than this is compacted by the leader.
    pub history_ttl: Duration,
    /// How often the time-based compactor runs.
    pub compact_interval: Duration,
    /// Memory sled may use for its page cache.
    pub cache_bytes: u64,
    /// The peer transport; `None` is a one-member store.
    pub peer: Option<PeerConfig>,
    /// What a store without a cluster does.
    pub bootstrap: Bootstrap,
    /// How long a write or linearizable read waits for a leader and a quorum before it fails
    /// with [`StoreError::NoQuorum`] (with a peer transport; a one-member store has no
    /// peers to wait for).
    pub request_timeout: Duration,
    /// How long adding a member may take, its catching up included, and removing one.
    pub membership_timeout: Duration,
    /// A Raft snapshot is taken every this many log entries; the log before it is then
    /// dropped, except the last `logs_kept_after_snapshot` entries (a member lagging further
    /// behind is sent the snapshot).
    pub snapshot_every: u64,
    /// See `snapshot_every`.
    pub logs_kept_after_snapshot: u64,
    /// Free space kept in reserve on the file system holding `dir`: with less free, writes
    /// that add data fail with [`StoreError::NoSpace`] (reads, deletes and compactions go on)
    /// instead of running the disk full, which would stop Raft. `0` turns the check off.
    pub reserved_disk_bytes: u64,
}

impl RaftStoreConfig {
    /// Defaults for a one-member store in `dir`: 100,000 revisions or 5 minutes of history.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RaftStoreConfig {
            dir: dir.into(),
            node_id: None,
            advertise: "127.0.0.1:6444".into(),
            retention: Retention::default(),
            history_ttl: Duration::from_secs(300),
            compact_interval: Duration::from_secs(60),
            cache_bytes: 64 * 1024 * 1024,
            peer: None,
            bootstrap: Bootstrap::Init,
            request_timeout: Duration::from_secs(5),
            membership_timeout: Duration::from_secs(300),
            snapshot_every: 20_000,
            logs_kept_after_snapshot: 1_000,
            reserved_disk_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A member's Raft state at one moment (see [`RaftStore::raft_status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    pub node_id: u64,
    /// The member this one believes leads.
    pub leader: Option<u64>,
    pub term: u64,
    /// The last entry in this member's log.
    pub last_log_index: Option<u64>,
    /// The last entry applied to its state machine.
    pub applied_index: Option<u64>,
    /// The last entry its latest snapshot covers (built here or installed from the leader).
    pub snapshot_index: Option<u64>,
    /// The last entry dropped from its log (log compaction).
    pub purged_index: Option<u64>,
}

/// The replicated store. Cheap to clone.
#[derive(Clone)]
pub struct RaftStore {
    core: Arc<Core>,
    disk: Arc<DiskSync>,
    peer_addr: Option<SocketAddr>,
    stop: Arc<tokio_watch::Sender<bool>>,
}

impl std::fmt::Debug for RaftStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftStore")
            .field("node_id", &self.core.node_id())
            .finish_non_exhaustive()
    }
}

/// Checks the data directory before anything is opened, so a damaged one stops the server
/// instead of being silently replaced by an empty store. Returns what `FORMAT` says, or
/// `None` for a new store.
fn check_data_dir(dir: &Path) -> Result<Option<Parsed>> {
    let corrupt = |why: String| Err(StoreError::Corrupt(format!("{}: {why}", dir.display())));
    let format_path = dir.join(FORMAT_FILE);
    let db_path = dir.join(DB_DIR);
    match (format_path.exists(), db_path.exists()) {
        (false, false) => {
            if let Some(left) = reset::interrupted_reset(dir) {
                return corrupt(format!(
                    "the store directory is missing and an interrupted cluster reset left {}; \
                     run the reset again",
                    left.display()
                ));
            }
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Io(format!("creating {}: {e}", dir.display())))?;
            Ok(None)
        }
        (false, true) => corrupt(format!(
            "{DB_DIR}/ exists but {FORMAT_FILE} is missing; this is not a complete Shoal store"
        )),
        (true, false) => corrupt(format!(
            "{FORMAT_FILE} exists but the database {DB_DIR}/ is missing; refusing to start empty"
        )),
        (true, true) => {
            let text = std::fs::read_to_string(&format_path).map_err(|e| {
                StoreError::Corrupt(format!("reading {}: {e}", format_path.display()))
            })?;
            let parsed = match identity::parse(&text) {
                Ok(parsed) => parsed,
                Err(why) => return corrupt(format!("{FORMAT_FILE}: {why}")),
            };
            if !db_path.is_dir() {
                return corrupt(format!("{DB_DIR} is not a directory"));
            }
            Ok(Some(parsed))
        }
    }
}

/// Opens the sled database of the store in `dir`.
fn open_db(dir: &Path, cache_bytes: u64) -> std::result::Result<sled::Db, sled::Error> {
    sled::Config::new()
        .path(dir.join(DB_DIR))
        .cache_capacity(cache_bytes)
        .mode(sled::Mode::HighThroughput)
        .open()
}

/// Whether opening the database failed because another process has it open (sled holds an
/// exclusive `flock` on it for as long as it runs). sled 0.34 reports that as an error of kind
/// `Other` whose text wraps the `WouldBlock` one: only the text tells.
fn is_locked(err: &sled::Error) -> bool {
    matches!(err, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock
        || io.to_string().contains("could not acquire lock"))
}

/// This store's identity, and whether `FORMAT` must be (re)written.
fn resolve_identity(config: &RaftStoreConfig, found: Option<Parsed>) -> Result<(Identity, bool)> {
    let io = |e: std::io::Error| StoreError::Io(format!("making an id: {e}"));
    let joining = config.peer.is_some() && config.bootstrap == Bootstrap::Join;
    let (identity, write) = match found {
        None => {
            let node_id = match config.node_id {
                Some(id) => id,
                None if joining => identity::new_node_id().map_err(io)?,
                None => 1,
            };
            let cluster_id = if joining {
                None
            } else {
                Some(identity::new_cluster_id().map_err(io)?)
            };
            (
                Identity {
                    node_id,
                    cluster_id,
                },
                true,
            )
        }
        Some(Parsed::V1) => (
            Identity {
                node_id: 1,
                cluster_id: Some(identity::new_cluster_id().map_err(io)?),
            },
            true,
        ),
        Some(Parsed::V2(identity)) => (identity, false),
    };
    if identity.node_id == 0 {
        return Err(StoreError::Membership("node id 0 is not allowed".into()));
    }
    if let Some(wanted) = config.node_id {
        if wanted != identity.node_id {
            return Err(StoreError::Membership(format!(
                "the store in {} is node {}, not node {wanted}",
                config.dir.display(),
                identity.node_id
            )));
        }
    }
    Ok((identity, write))
}

impl RaftStore {
    /// Opens (or creates) the store in `config.dir`.
    ///
    /// A store that is (or becomes) the only voter of its cluster is serving when this
    /// returns: it leads, with everything committed applied. A member of a larger cluster, or
    /// one waiting to join, returns as soon as it runs and listens; its requests wait for a
    /// leader and a quorum (see [`RaftStore::wait_ready`]).
    ///
    /// Fails with [`StoreError::Removed`] if this member was removed from its cluster, and
    /// with [`StoreError::Corrupt`] if the data directory is damaged.
    pub async fn open(config: RaftStoreConfig) -> Result<RaftStore> {
        let found = check_data_dir(&config.dir)?;
        if let Some(why) = identity::read_removed(&config.dir)
            .map_err(|e| StoreError::Io(format!("reading {}: {e}", identity::REMOVED_FILE)))?
        {
            return Err(StoreError::Removed(identity::removed_message(
                &config.dir,
                &why,
            )));
        }
        if config.peer.is_none() && config.bootstrap == Bootstrap::Join {
            return Err(StoreError::Membership(
                "joining a cluster needs a peer transport (PeerConfig)".into(),
            ));
        }
        let (mut identity, mut write_identity) = resolve_identity(&config, found)?;
        let db = open_db(&config.dir, config.cache_bytes).map_err(|e| {
            if is_locked(&e) {
                StoreError::Io(format!(
                    "{} is locked by another running process",
                    config.dir.display()
                ))
            } else {
                StoreError::Corrupt(format!(
                    "cannot open the database in {}: {e}",
                    config.dir.display()
                ))
            }
        })?;

        let disk = DiskSync::open(&db, &config.dir.join(DB_DIR))
            .map_err(|e| StoreError::Corrupt(format!("opening the database files: {e}")))?;
        let log_store = LogStore::open(&config.dir, &db, Arc::clone(&disk), identity.node_id)?;
        let log_durable = log_store.durable();
        let mut state_machine = StateMachine::open(
            db.open_tree(STATE_TREE)?,
            Arc::clone(&disk),
            &config.dir,
            config.retention,
        )?;
        state_machine.wait_for_log(log_durable.clone());
        let shared = state_machine.shared();
        // A member that never joined may be told to start a cluster after all.
        let never_joined = shared.applied().1.log_id().is_none();
        if identity.cluster_id.is_none() && never_joined && config.bootstrap == Bootstrap::Init {
            identity.cluster_id = Some(
                identity::new_cluster_id()
                    .map_err(|e| StoreError::Io(format!("making an id: {e}")))?,
            );
            write_identity = true;
        }
        if write_identity {
            identity::write(&config.dir, &identity)
                .map_err(|e| StoreError::Io(format!("writing {FORMAT_FILE}: {e}")))?;
        }
        let node_id = identity.node_id;
        let local = Arc::new(LocalMember::new(config.dir.clone(), identity));

        let raft_config = Config {
            cluster_name: "shoal".into(),
            heartbeat_interval: 150,
            election_timeout_min: 300,
            election_timeout_max: 600,
            // Appends are bounded in entries (each entry is a batch of writes of up to a few
            // MiB) so that one append fits its deadline; snapshot chunks get more time.
            max_payload_entries: 64,
            install_snapshot_timeout: 10_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every.max(1)),
            max_in_snapshot_log_to_keep: config.logs_kept_after_snapshot,
            // A member further behind than the kept log gets the snapshot.
            replication_lag_threshold: config.snapshot_every.max(1)
                + config.logs_kept_after_snapshot,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StoreError::Io(format!("raft config: {e}")))?;
        let raft_config = Arc::new(raft_config);

        let peers = config.peer.as_ref().map(|peer| {
            Arc::new(client::Peers::new(
                Arc::clone(&local),
                Arc::clone(&peer.tls_client),
                peer.faults.clone(),
                tokio::runtime::Handle::current(),
            ))
        });
        let raft = match &peers {
            None => {
                Raft::new(
                    node_id,
                    raft_config,
                    SingleNodeNetwork,
                    log_store,
                    state_machine,
                )
                .await
            }
            Some(peers) => {
                Raft::new(
                    node_id,
                    raft_config,
                    PeerNetwork::new(Arc::clone(peers), Arc::clone(&local), log_durable),
                    log_store,
                    state_machine,
                )
                .await
            }
        }
        .map_err(|e| StoreError::Unavailable(format!("starting raft: {e}")))?;
        local.set_raft(raft.clone());

        let (stop, stop_rx) = tokio_watch::channel(false);
        let core = Arc::new(Core {
            proposer: proposer::Proposer::start(raft.clone()),
            raft: raft.clone(),
            shared,
            local,
            peers,
            limits: Limits {
                request: config.request_timeout,
                membership: config.membership_timeout,
            },
            membership_lock: tokio::sync::Mutex::new(()),
            space: space::DiskSpace::new(config.dir.clone(), config.reserved_disk_bytes),
            tag_prefix: identity::random_u64()
                .map_err(|e| StoreError::Io(format!("making an id: {e}")))?,
            tag_count: std::sync::atomic::AtomicU64::new(0),
        });

        let mut peer_addr = None;
        if let Some(peer) = &config.peer {
            let listener = tokio::net::TcpListener::bind(peer.listen)
                .await
                .map_err(|e| {
                    StoreError::Io(format!(
                        "listening on the store peer port {}: {e}",
                        peer.listen
                    ))
                })?;
            peer_addr = listener.local_addr().ok();
            tokio::spawn(server::serve(
                listener,
                tokio_rustls::TlsAcceptor::from(Arc::clone(&peer.tls_server)),
                Arc::clone(&core),
                peer.faults.clone(),
                stop_rx.clone(),
            ));
        }

        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| StoreError::Unavailable(format!("raft: {e}")))?;
        if !initialized && config.bootstrap == Bootstrap::Init {
            let members = BTreeMap::from([(node_id, BasicNode::new(&config.advertise))]);
            raft.initialize(members)
                .await
                .map_err(|e| StoreError::Unavailable(format!("initializing raft: {e}")))?;
        }

        let store = RaftStore {
            core,
            disk,
            peer_addr,
            stop: Arc::new(stop),
        };
        // Metrics show the stored membership shortly after Raft starts (at once when it was
        // just initialized here).
        let sole_voter = if initialized {
            let metrics = raft
                .wait(Some(Duration::from_secs(5)))
                .metrics(
                    |m| m.membership_config.log_id().is_some(),
                    "stored membership loaded",
                )
                .await
                .map_err(|e| StoreError::Unavailable(format!("starting raft: {e}")))?;
            let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
            voters == [node_id]
        } else {
            config.bootstrap == Bootstrap::Init
        };
        if sole_voter {
            raft.wait(Some(Duration::from_secs(30)))
                .current_leader(node_id, "store leader")
                .await
                .map_err(|e| StoreError::Unavailable(format!("no raft leader: {e}")))?;
            // Waits for the leader's first-term blank entry so that everything logged before
            // a restart is applied before the first request is served.
            store.core.linearize().await?;
        }
        tokio::spawn(compact_by_age(
            store.clone(),
            config.history_ttl,
            config.compact_interval,
            stop_rx,
        ));
        Ok(store)
    }

    async fn linearize(&self) -> Result<()> {
        self.core.linearize().await
    }

    async fn propose(&self, command: Command) -> Result<Outcome> {
        self.core.propose(command).await
    }

    /// Stops Raft and flushes everything to disk. Other clones stop working.
    pub async fn shutdown(&self) -> Result<()> {
        self.stop.send_replace(true);
        let stopped = self.core.raft.shutdown().await;
        if self.core.local.removed_error().is_none() {
            stopped.map_err(|e| StoreError::Unavailable(format!("raft shutdown: {e}")))?;
        }
        self.disk
            .sync()
            .await
            .map_err(|e| StoreError::Io(format!("flushing the store: {e}")))?;
        Ok(())
    }

    /// This member's Raft node id (what [`RaftStore::add_member`] is given for it).
    pub fn node_id(&self) -> u64 {
        self.core.node_id()
    }

    /// The id of the cluster this member belongs to (`None` while it waits to join).
    pub fn cluster_id(&self) -> Option<String> {
        self.core.local.cluster_id()
    }

    /// The address the peer port listens on (with a [`PeerConfig`]).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    /// The index of the last entry in the Raft log (writes are batched, so it grows slower
    /// than the revision under concurrent load).
    pub fn last_log_index(&self) -> u64 {
        self.core
            .raft
            .metrics()
            .borrow()
            .last_log_index
            .unwrap_or(0)
    }

    /// Where this member's Raft stands, from its own metrics (no network).
    pub fn raft_status(&self) -> RaftStatus {
        let metrics = self.core.raft.metrics().borrow().clone();
        RaftStatus {
            node_id: self.core.node_id(),
            leader: metrics.current_leader,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index,
            applied_index: metrics.last_applied.map(|id| id.index),
            snapshot_index: metrics.snapshot.map(|id| id.index),
            purged_index: metrics.purged.map(|id| id.index),
        }
    }

    /// Whether this member currently leads the store cluster (as far as it knows: a leader cut
    /// off from the others believes so until it hears otherwise).
    pub fn is_leader(&self) -> bool {
        self.core.is_leader()
    }

    /// The member this one believes leads, if any.
    pub fn leader(&self) -> Option<u64> {
        self.core.raft.metrics().borrow().current_leader
    }

    /// Adds member `id`, reachable at `addr` (`host:port` of its peer port), to the cluster:
    /// first as a learner that receives the log (or a snapshot, when the log it needs was
    /// compacted), then — once it has caught up — as a voter. Returns when it votes. Callable
    /// on any member (forwarded to the leader). Adding a member that is already a voter at
    /// the same address does nothing; a known id at another address is refused.
    ///
    /// The new member must be running ([`Bootstrap::Join`]) with a certificate the others
    /// accept, or this fails after [`RaftStoreConfig::membership_timeout`] with it left a
    /// learner (adding it again resumes).
    pub async fn add_member(&self, id: u64, addr: impl Into<String>) -> Result<()> {
        self.core.add_member(id, addr.into()).await
    }

    /// Removes member `id` (voter or learner) from the cluster. Callable on any member
    /// (forwarded to the leader), also for the leader itself, which then steps down. The
    /// removed member is told, and from then on refuses to serve or to open its store again
    /// ([`StoreError::Removed`]); one that was unreachable learns it when it next contacts
    /// the others.
    pub async fn remove_member(&self, id: u64) -> Result<()> {
        self.core.remove_member(id).await
    }

    /// Resolves once this member learns it was removed from its cluster (by
    /// [`RaftStore::remove_member`] anywhere), with the error every request now gets: a server
    /// stops then, as its data can no longer serve.
    pub async fn removed(&self) -> StoreError {
        self.core.local.removed().await
    }

    /// The members and who leads, as the leader sees them (forwarded to the leader).
    pub async fn members(&self) -> Result<Members> {
        self.core.members().await
    }

    /// Waits until this member can serve a linearizable read — a leader is known, reachable
    /// and backed by a quorum, and this member has caught up with it — or fails with the last
    /// error after `timeout`. For a member that just joined, or the first start of a cluster
    /// member after a restart.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let err = match self.core.linearize().await {
                Ok(()) => return Ok(()),
                Err(err @ (StoreError::Removed(_) | StoreError::Corrupt(_))) => return Err(err),
                Err(err) => err,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(err);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The leader's time-based compaction (what kube-apiserver's compactor does against etcd):
/// it samples the revision every `interval` and compacts to the newest sample older than `ttl`.
async fn compact_by_age(
    store: RaftStore,
    ttl: Duration,
    interval: Duration,
    mut stop: tokio_watch::Receiver<bool>,
) {
    let mut samples: VecDeque<(Instant, Revision)> = VecDeque::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let now = Instant::now();
        samples.push_back((now, store.core.shared.revision()));
        let mut target = None;
        while let Some(&(at, revision)) = samples.front() {
            if now.duration_since(at) < ttl {
                break;
            }
            target = Some(revision);
            samples.pop_front();
        }
        if let Some(revision) = target {
            if store.is_leader() && revision > store.core.shared.compacted() {
                match store.compact(revision).await {
                    Ok(()) => tracing::debug!(revision, "compacted store history"),
                    Err(err) => tracing::warn!(%err, revision, "history compaction failed"),
                }
            }
        }
    }
}

#[async_trait]
impl Store for RaftStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        validate_key(key)?;
        self.linearize().await?;
        self.core.shared.get(key)
    }

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse> {
        validate_prefix(&request.prefix)?;
        self.linearize().await?;
        self.core
            .shared
            .consistent(|source| mvcc::read_range(source, &request))
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        validate_key(key)?;
        validate_value(key, &value)?;
        written(
            self.propose(Command::Create {
                key: key.into(),
                value,
            })
            .await?,
            key,
        )
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<KeyValue> {
        validate_key(key)?;
        validate_value(key, &value)?;
        written(
            self.propose(Command::Update {
                key: key.into(),
                value,
                expected,
            })
            .await?,
            key,
        )
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<KeyValue> {
        validate_key(key)?;
        validate_value(key, &value)?;
        written(
            self.propose(Command::Put {
                key: key.into(),
                value,
            })
            .await?,
            key,
        )
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(KeyValue, Revision)> {
        validate_key(key)?;
        deleted(
            self.propose(Command::Delete {
                key: key.into(),
                expected,
            })
            .await?,
            key,
        )
    }

    async fn watch(&self, prefix: &str, after: Option<Revision>) -> Result<WatchStream> {
        validate_prefix(prefix)?;
        if after.is_none() {
            self.linearize().await?;
        }
        let start = check_start(
            after,
            self.core.shared.revision(),
            self.core.shared.compacted(),
        )?;
        let history: Arc<dyn HistorySource> = self.core.shared.clone();
        Ok(self
            .core
            .shared
            .hub
            .subscribe(history, prefix.to_string(), start))
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.linearize().await?;
        Ok(self.core.shared.revision())
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        Ok(self.core.shared.compacted())
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        compacted(self.propose(Command::Compact { revision }).await?, revision)
    }
}
