//! The durable, replicated [`Store`]: openraft over sled. One server is a one-member Raft
//! cluster; writes are proposed through Raft and acknowledged once the log entry is fsync'd
//! (group-committed with concurrent writes) and applied; reads are linearizable via Raft's
//! read-index on the leader.
//!
//! On disk, `<dir>/FORMAT` names the store's format and cluster id, `<dir>/db` is the sled
//! database (Raft log, vote, state machine), `<dir>/snapshot.bin` the latest Raft snapshot.

mod disk;
mod log;
mod network;
mod proposer;
mod sm;

use std::collections::{BTreeMap, VecDeque};
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

pub use self::disk::DiskSync;
pub use self::log::LogStore;
pub use self::network::SingleNodeNetwork;
pub use self::sm::StateMachine;

openraft::declare_raft_types!(
    /// Shoal's Raft types: commands in, outcomes out, nodes addressed by URL.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

const FORMAT_FILE: &str = "FORMAT";
const FORMAT_VERSION: &str = "shoal-store 1";
const DB_DIR: &str = "db";

/// How to open a [`RaftStore`].
#[derive(Debug, Clone)]
pub struct RaftStoreConfig {
    /// Directory holding everything the store writes.
    pub dir: PathBuf,
    /// This server's Raft node id.
    pub node_id: u64,
    /// The address other servers would reach this one at (recorded in the membership).
    pub advertise: String,
    /// Count-based history retention, applied deterministically with every write.
    pub retention: Retention,
    /// Time-based retention: history older than this is compacted by the leader.
    pub history_ttl: Duration,
    /// How often the time-based compactor runs.
    pub compact_interval: Duration,
    /// Memory sled may use for its page cache.
    pub cache_bytes: u64,
}

impl RaftStoreConfig {
    /// Defaults for a store in `dir`: node 1, 100,000 revisions or 5 minutes of history.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RaftStoreConfig {
            dir: dir.into(),
            node_id: 1,
            advertise: "127.0.0.1:6444".into(),
            retention: Retention::default(),
            history_ttl: Duration::from_secs(300),
            compact_interval: Duration::from_secs(60),
            cache_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The replicated store. Cheap to clone.
#[derive(Clone)]
pub struct RaftStore {
    raft: Raft<TypeConfig>,
    shared: Arc<sm::SmShared>,
    proposer: proposer::Proposer,
    disk: Arc<DiskSync>,
    node_id: u64,
    stop: Arc<tokio_watch::Sender<bool>>,
}

impl std::fmt::Debug for RaftStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftStore")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// Checks the data directory before anything is opened, so a damaged one stops the server
/// instead of being silently replaced by an empty store. Returns whether the store is new.
fn check_data_dir(dir: &Path) -> Result<bool> {
    let corrupt = |why: String| Err(StoreError::Corrupt(format!("{}: {why}", dir.display())));
    let format_path = dir.join(FORMAT_FILE);
    let db_path = dir.join(DB_DIR);
    match (format_path.exists(), db_path.exists()) {
        (false, false) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Io(format!("creating {}: {e}", dir.display())))?;
            Ok(true)
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
            if text.trim() != FORMAT_VERSION {
                return corrupt(format!("unknown store format {:?}", text.trim()));
            }
            if !db_path.is_dir() {
                return corrupt(format!("{DB_DIR} is not a directory"));
            }
            Ok(false)
        }
    }
}

fn write_format(dir: &Path) -> Result<()> {
    use std::io::Write;
    let io = |e: std::io::Error| StoreError::Io(format!("writing {FORMAT_FILE}: {e}"));
    let mut file = std::fs::File::create(dir.join(FORMAT_FILE)).map_err(io)?;
    file.write_all(format!("{FORMAT_VERSION}\n").as_bytes())
        .map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

impl RaftStore {
    /// Opens (or creates) the store in `config.dir` and waits until it can serve: this node is
    /// the leader of its one-member cluster, with everything committed applied.
    pub async fn open(config: RaftStoreConfig) -> Result<RaftStore> {
        let fresh = check_data_dir(&config.dir)?;
        let db = sled::Config::new()
            .path(config.dir.join(DB_DIR))
            .cache_capacity(config.cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                    StoreError::Io(format!(
                        "{} is locked by another running process",
                        config.dir.display()
                    ))
                }
                other => StoreError::Corrupt(format!(
                    "cannot open the database in {}: {other}",
                    config.dir.display()
                )),
            })?;
        if fresh {
            write_format(&config.dir)?;
        }

        let disk = DiskSync::open(&db, &config.dir.join(DB_DIR))
            .map_err(|e| StoreError::Corrupt(format!("opening the database files: {e}")))?;
        let log_store = LogStore::open(&db, Arc::clone(&disk))?;
        let state_machine = StateMachine::open(
            db.open_tree("state")?,
            Arc::clone(&disk),
            &config.dir,
            config.retention,
        )?;
        let shared = state_machine.shared();

        let raft_config = Config {
            cluster_name: "shoal".into(),
            heartbeat_interval: 150,
            election_timeout_min: 300,
            election_timeout_max: 600,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(20_000),
            max_in_snapshot_log_to_keep: 1_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StoreError::Io(format!("raft config: {e}")))?;
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            SingleNodeNetwork,
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| StoreError::Unavailable(format!("starting raft: {e}")))?;

        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| StoreError::Unavailable(format!("raft: {e}")))?;
        if !initialized {
            let members = BTreeMap::from([(config.node_id, BasicNode::new(&config.advertise))]);
            raft.initialize(members)
                .await
                .map_err(|e| StoreError::Unavailable(format!("initializing raft: {e}")))?;
        }
        raft.wait(Some(Duration::from_secs(30)))
            .current_leader(config.node_id, "store leader")
            .await
            .map_err(|e| StoreError::Unavailable(format!("no raft leader: {e}")))?;

        let (stop, stop_rx) = tokio_watch::channel(false);
        let store = RaftStore {
            proposer: proposer::Proposer::start(raft.clone()),
            raft,
            shared,
            disk,
            node_id: config.node_id,
            stop: Arc::new(stop),
        };
        // Waits for the leader's first-term blank entry so that everything logged before a
        // restart is applied before the first request is served.
        store.linearize().await?;
        tokio::spawn(compact_by_age(
            store.clone(),
            config.history_ttl,
            config.compact_interval,
            stop_rx,
        ));
        Ok(store)
    }

    async fn linearize(&self) -> Result<()> {
        self.raft
            .ensure_linearizable()
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Unavailable(format!("linearizable read: {e}")))
    }

    async fn propose(&self, command: Command) -> Result<Outcome> {
        self.proposer.propose(command).await
    }

    /// Stops Raft and flushes everything to disk. Other clones stop working.
    pub async fn shutdown(&self) -> Result<()> {
        self.stop.send_replace(true);
        self.raft
            .shutdown()
            .await
            .map_err(|e| StoreError::Unavailable(format!("raft shutdown: {e}")))?;
        self.disk
            .sync()
            .await
            .map_err(|e| StoreError::Io(format!("flushing the store: {e}")))?;
        Ok(())
    }

    /// The index of the last entry in the Raft log (writes are batched, so it grows slower
    /// than the revision under concurrent load).
    pub fn last_log_index(&self) -> u64 {
        self.raft.metrics().borrow().last_log_index.unwrap_or(0)
    }

    /// Whether this server currently leads the Raft cluster.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.node_id)
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
        samples.push_back((now, store.shared.revision()));
        let mut target = None;
        while let Some(&(at, revision)) = samples.front() {
            if now.duration_since(at) < ttl {
                break;
            }
            target = Some(revision);
            samples.pop_front();
        }
        if let Some(revision) = target {
            if store.is_leader() && revision > store.shared.compacted() {
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
        self.shared.get(key)
    }

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse> {
        validate_prefix(&request.prefix)?;
        self.linearize().await?;
        self.shared
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
        let start = check_start(after, self.shared.revision(), self.shared.compacted())?;
        let history: Arc<dyn HistorySource> = self.shared.clone();
        Ok(self
            .shared
            .hub
            .subscribe(history, prefix.to_string(), start))
    }

    async fn current_revision(&self) -> Result<Revision> {
        self.linearize().await?;
        Ok(self.shared.revision())
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        Ok(self.shared.compacted())
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        compacted(self.propose(Command::Compact { revision }).await?, revision)
    }
}
