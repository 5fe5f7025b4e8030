//! The replicated store: the conformance suite, openraft's storage suite against our log and
//! state machine, restarts, a corrupt data dir, and kill -9 in the middle of a write load.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use shoal_store::conformance::{self, Fixture};
use shoal_store::{RaftStore, RaftStoreConfig, Store, StoreError};
use tempfile::TempDir;

struct RaftFixture {
    _dir: TempDir,
    store: RaftStore,
}

impl Fixture for RaftFixture {
    type S = RaftStore;
    fn store(&self) -> &RaftStore {
        &self.store
    }
    async fn close(self) {
        self.store.shutdown().await.expect("shutdown");
    }
}

async fn open(dir: &std::path::Path) -> RaftStore {
    RaftStore::open(RaftStoreConfig::new(dir))
        .await
        .expect("open store")
}

async fn fresh() -> RaftFixture {
    let dir = TempDir::new().expect("tempdir");
    let store = open(dir.path()).await;
    RaftFixture { _dir: dir, store }
}

mod conformance_raft {
    shoal_store::conformance_tests!(super::fresh());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_restart_keeps_everything() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(dir.path()).await;
    // The closure borrows the path: the directory must outlive the reopened store.
    let path = dir.path().to_path_buf();
    conformance::acknowledged_writes_survive_reopen(store, |store| async move {
        store.shutdown().await.expect("shutdown");
        drop(store);
        open(&path).await
    })
    .await;
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_data_dir_stops_the_store() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(dir.path()).await;
    store.put("/k", b"v".to_vec()).await.expect("put");
    store.shutdown().await.expect("shutdown");
    drop(store);

    // The database directory vanished: refuse to start empty.
    let db = dir.path().join("db");
    let moved = dir.path().join("db.moved");
    std::fs::rename(&db, &moved).expect("move db");
    let err = RaftStore::open(RaftStoreConfig::new(dir.path()))
        .await
        .expect_err("must refuse");
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("missing")),
        "{err}"
    );

    // The database is garbage.
    std::fs::create_dir(&db).expect("mkdir");
    for entry in std::fs::read_dir(&moved).expect("read db") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("type").is_file() {
            let len = entry.metadata().expect("meta").len() as usize;
            std::fs::write(db.join(entry.file_name()), vec![0xA5; len.max(64)]).expect("write");
        }
    }
    let err = RaftStore::open(RaftStoreConfig::new(dir.path()))
        .await
        .expect_err("must refuse");
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");

    // An unknown format marker.
    std::fs::remove_dir_all(&db).expect("rm");
    std::fs::rename(&moved, &db).expect("restore");
    std::fs::write(dir.path().join("FORMAT"), "something else\n").expect("write");
    let err = RaftStore::open(RaftStoreConfig::new(dir.path()))
        .await
        .expect_err("must refuse");
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("format")),
        "{err}"
    );

    // Put right, it opens with its data.
    std::fs::write(dir.path().join("FORMAT"), "shoal-store 1\n").expect("write");
    let store = open(dir.path()).await;
    assert_eq!(
        store.get("/k").await.expect("get").expect("kept").value,
        b"v"
    );
}

/// Runs in a child process (see `kill_9_loses_no_acknowledged_write`): writes as fast as it can
/// from 16 concurrent clients and prints each acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child_writer() {
    let Ok(dir) = std::env::var("SHOAL_CRASH_CHILD_DIR") else {
        return;
    };
    let round = std::env::var("SHOAL_CRASH_ROUND").unwrap_or_default();
    let store = open(std::path::Path::new(&dir)).await;
    println!("READY");
    let mut tasks = Vec::new();
    for client in 0..16 {
        let store = store.clone();
        let round = round.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let key = format!("/crash/{round}/{client}/{i}");
                let kv = store.create(&key, vec![b'x'; 512]).await.expect("create");
                println!("ACK {key} {}", kv.mod_revision);
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_write() {
    let dir = TempDir::new().expect("tempdir");
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SHOAL_CRASH_CHILD_DIR", dir.path())
            .env("SHOAL_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            let mut acked = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("ACK ") {
                    let (key, rev) = rest.split_once(' ').expect("ack line");
                    acked.push((key.to_string(), rev.parse::<i64>().expect("revision")));
                }
            }
            acked
        });
        // Let it write for a while, then kill it without warning.
        std::thread::sleep(Duration::from_millis(1500 + 500 * round));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        let acked = reader.join().expect("reader");
        assert!(
            acked.len() > 100,
            "round {round}: only {} writes acknowledged",
            acked.len()
        );

        let store = open(dir.path()).await;
        for (key, revision) in &acked {
            let kv = store.get(key).await.expect("get");
            let kv = kv.unwrap_or_else(|| panic!("round {round}: acknowledged {key} was lost"));
            assert_eq!(kv.mod_revision, *revision, "{key}");
        }
        let max = acked.iter().map(|(_, r)| *r).max().unwrap_or(0);
        assert!(store.current_revision().await.expect("revision") >= max);
        store.shutdown().await.expect("shutdown");
    }
}

mod openraft_suite {
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::StorageError;
    use shoal_store::raft_storage::{DiskSync, LogStore, StateMachine};
    use shoal_store::{Retention, TypeConfig};
    use tempfile::TempDir;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
        async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
            let dir = TempDir::new().expect("tempdir");
            let path = dir.path().join("db");
            let db = sled::open(&path).expect("sled");
            let disk = DiskSync::open(&db, &path).expect("disk sync");
            let log = LogStore::open(dir.path(), &db, disk.clone(), 1).expect("log store");
            let tree = db.open_tree("state").expect("tree");
            let sm = StateMachine::open(tree, disk, dir.path(), Retention::default())
                .expect("state machine");
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn openraft_storage_suite() {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_max_level(tracing::Level::INFO)
            .try_init();
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        // The log store's flusher is a tokio task: run the suite inside the runtime.
        let _guard = rt.enter();
        Suite::test_all(Builder).expect("openraft storage suite");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_log_entries() {
    let fixture = fresh().await;
    let store = &fixture.store;
    let log_before = store.last_log_index();
    let rev_before = store.current_revision().await.expect("revision");
    let mut tasks = Vec::new();
    for i in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .create(&format!("/batch/{i}"), vec![b'v'; 1024])
                .await
                .expect("create")
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let revisions = store.current_revision().await.expect("revision") - rev_before;
    let entries = store.last_log_index() - log_before;
    assert_eq!(revisions, 64);
    // 64 writes arriving together must not cost 64 log appends (and fsyncs).
    assert!(
        entries < 32,
        "64 concurrent writes took {entries} log entries"
    );
    fixture.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_older_than_the_ttl_is_compacted() {
    let dir = TempDir::new().expect("tempdir");
    let mut config = RaftStoreConfig::new(dir.path());
    config.history_ttl = Duration::from_millis(300);
    config.compact_interval = Duration::from_millis(100);
    let store = RaftStore::open(config).await.expect("open");
    let first = store.put("/ttl/k", b"1".to_vec()).await.expect("put");
    store.put("/ttl/k", b"2".to_vec()).await.expect("put");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.compacted_revision().await.expect("compacted") < first.mod_revision + 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "history was never compacted by age"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(matches!(
        store.watch("/ttl/", Some(first.mod_revision - 1)).await,
        Err(StoreError::Compacted { .. })
    ));
    // Compaction drops history, never current values.
    assert_eq!(
        store.get("/ttl/k").await.expect("get").expect("kept").value,
        b"2"
    );
}
