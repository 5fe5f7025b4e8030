//! Store snapshots and cluster reset: a snapshot taken under a write load is the store at one
//! revision; restoring it gives back exactly that (keys, revisions, watches from there); a
//! damaged, foreign or misplaced snapshot changes nothing; a member left alone by its
//! cluster is reset and serves alone with every acknowledged write.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shoal_store::{
    list_snapshots, reset_cluster, Bootstrap, KeyValue, Listed, RaftStore, RaftStoreConfig,
    RangeRequest, Revision, SnapshotError, Store, StoreError,
};
use support::{free_port, open_member, Cluster};
use tempfile::TempDir;

async fn open(dir: &Path) -> RaftStore {
    open_with(RaftStoreConfig::new(dir)).await
}

/// Opens, retrying while a store just closed still holds the database lock.
async fn open_with(config: RaftStoreConfig) -> RaftStore {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match RaftStore::open(config.clone()).await {
            Err(StoreError::Io(m))
                if m.contains("locked") && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other.expect("open store"),
        }
    }
}

/// Every key, at `revision` (or the latest).
async fn all_keys(store: &RaftStore, revision: Option<Revision>) -> Vec<KeyValue> {
    store
        .range(RangeRequest {
            prefix: "/".into(),
            revision,
            ..Default::default()
        })
        .await
        .unwrap()
        .kvs
}

/// `reset_cluster` off the async threads.
async fn reset(
    config: RaftStoreConfig,
    from: Option<&Path>,
) -> Result<shoal_store::ResetReport, SnapshotError> {
    let from = from.map(Path::to_path_buf);
    tokio::task::spawn_blocking(move || reset_cluster(&config, from.as_deref()))
        .await
        .unwrap()
}

/// Writers that keep creating and updating keys until stopped; returns how many writes each
/// made.
fn start_writers(
    store: &RaftStore,
    writers: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<usize>> {
    (0..writers)
        .map(|w| {
            let store = store.clone();
            let stop = Arc::clone(stop);
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    // New keys, and rewrites of a few hot ones.
                    store
                        .put(&format!("/load/{w}/{n}"), vec![b'x'; 64])
                        .await
                        .unwrap();
                    store
                        .put(&format!("/hot/{w}"), n.to_string().into_bytes())
                        .await
                        .unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_taken_while_writing_restores_to_exactly_its_revision() {
    let data = TempDir::new().unwrap();
    let dir = data.path().join("store");
    let snapshots = data.path().join("snapshots");
    let store = open(&dir).await;
    for i in 0..50 {
        store
            .put(&format!("/before/{i}"), b"v".to_vec())
            .await
            .unwrap();
    }
    store.delete("/before/7", None).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_writers(&store, 4, &stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at_save = store.current_revision().await.unwrap();
    let info = store.save_snapshot(&snapshots, "under-load").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut writes = 0;
    for writer in writers {
        writes += writer.await.unwrap();
    }
    let after_load = store.current_revision().await.unwrap();
    assert!(
        info.header.revision >= at_save && info.header.revision < after_load,
        "the snapshot (revision {}) was taken during the load ({at_save}..{after_load}, {writes} writes)",
        info.header.revision
    );
    let expected = all_keys(&store, Some(info.header.revision)).await;
    assert_eq!(info.header.keys, expected.len() as u64);
    assert_eq!(info.header.cluster_id, store.cluster_id());
    assert_eq!(info.header.node_id, store.node_id());

    // Writes after the snapshot, then the store stops and is restored from it.
    store.put("/after/1", b"later".to_vec()).await.unwrap();
    let everything = all_keys(&store, None).await;
    let old_cluster = store.cluster_id();
    store.shutdown().await.unwrap();
    drop(store);
    let report = reset(RaftStoreConfig::new(&dir), Some(&info.path))
        .await
        .unwrap();
    assert_eq!(report.revision, info.header.revision);
    assert_eq!(report.keys, info.header.keys);
    assert_eq!(report.node_id, 1);

    let restored = open(&dir).await;
    assert_eq!(all_keys(&restored, None).await, expected);
    assert_eq!(
        restored.current_revision().await.unwrap(),
        info.header.revision
    );
    assert!(restored.get("/after/1").await.unwrap().is_none());
    assert_ne!(restored.cluster_id(), old_cluster);
    // Watches start at the snapshot's revision; history before it is compacted away.
    assert!(matches!(
        restored.watch("/", Some(info.header.revision - 1)).await,
        Err(StoreError::Compacted { .. })
    ));
    let mut watch = restored
        .watch("/", Some(info.header.revision))
        .await
        .unwrap();
    let kv = restored.create("/after/2", b"new".to_vec()).await.unwrap();
    assert_eq!(kv.mod_revision, info.header.revision + 1);
    let event = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.kv.key, "/after/2");
    // An update of a restored key compares against its restored revision.
    let hot = restored.get("/hot/0").await.unwrap().unwrap();
    restored
        .update("/hot/0", b"again".to_vec(), hot.mod_revision)
        .await
        .unwrap();
    restored.shutdown().await.unwrap();
    drop(restored);

    // Nothing was lost: the store as it was before the restore is kept aside.
    let previous = report.previous.unwrap();
    let before = open(&previous).await;
    assert_eq!(all_keys(&before, None).await, everything);
    before.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_from_its_own_data_keeps_keys_revisions_and_history() {
    let data = TempDir::new().unwrap();
    let dir = data.path().join("store");
    let store = open(&dir).await;
    let first = store.put("/a", b"1".to_vec()).await.unwrap();
    store.put("/a", b"2".to_vec()).await.unwrap();
    store.put("/b", b"1".to_vec()).await.unwrap();
    store.delete("/b", None).await.unwrap();
    let expected = all_keys(&store, None).await;
    let revision = store.current_revision().await.unwrap();
    let (node, cluster) = (store.node_id(), store.cluster_id());
    store.shutdown().await.unwrap();
    drop(store);

    let report = reset(RaftStoreConfig::new(&dir), None).await.unwrap();
    assert_eq!((report.revision, report.keys), (revision, 1));
    let store = open(&dir).await;
    assert_eq!(store.node_id(), node);
    assert_ne!(store.cluster_id(), cluster);
    assert_eq!(Some(report.cluster_id.clone()), store.cluster_id());
    assert_eq!(all_keys(&store, None).await, expected);
    assert_eq!(store.current_revision().await.unwrap(), revision);
    // History was kept: a past revision still reads, a watch replays from the first write.
    assert_eq!(all_keys(&store, Some(first.mod_revision)).await.len(), 1);
    let mut watch = store.watch("/", Some(0)).await.unwrap();
    let event = watch.next().await.unwrap().unwrap();
    assert_eq!(event.revision(), first.mod_revision);
    // A watcher holds the database open.
    drop(watch);
    let members = store.members().await.unwrap();
    assert_eq!(members.members.len(), 1);
    assert_eq!(members.leader, Some(node));
    let written = store.put("/c", b"1".to_vec()).await.unwrap();
    store.shutdown().await.unwrap();
    drop(store);

    // Later restarts are ordinary ones.
    let store = open(&dir).await;
    assert_eq!(store.get("/c").await.unwrap(), Some(written));
    assert_eq!(store.get("/a").await.unwrap().unwrap().value, b"2");
    assert_eq!(Some(report.cluster_id), store.cluster_id());
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_foreign_or_misplaced_snapshot_changes_nothing() {
    let data = TempDir::new().unwrap();
    let dir = data.path().join("store");
    let snapshots = data.path().join("snapshots");
    let store = open(&dir).await;
    store.put("/keep", b"me".to_vec()).await.unwrap();
    let info = store.save_snapshot(&snapshots, "good").await.unwrap();
    store.put("/later", b"too".to_vec()).await.unwrap();

    // Refused while the store runs.
    let err = reset(RaftStoreConfig::new(&dir), Some(&info.path))
        .await
        .unwrap_err();
    assert!(matches!(err, SnapshotError::Locked { .. }), "{err}");
    let err = reset(RaftStoreConfig::new(&dir), None).await.unwrap_err();
    assert!(matches!(err, SnapshotError::Locked { .. }), "{err}");
    // As is a second server on it.
    match RaftStore::open(RaftStoreConfig::new(&dir)).await {
        Err(StoreError::Io(m)) => assert!(m.contains("locked by another running process"), "{m}"),
        other => panic!("a second open of a running store: {other:?}"),
    }
    let cluster = store.cluster_id();
    store.shutdown().await.unwrap();
    drop(store);

    let good = std::fs::read(&info.path).unwrap();
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    let cases: [(&str, Vec<u8>); 4] = [
        ("flipped", flipped),
        ("truncated", good[..good.len() - 10].to_vec()),
        ("foreign", b"{\"apiVersion\": \"v1\"}".to_vec()),
        ("empty", Vec::new()),
    ];
    for (name, bytes) in cases {
        let path = data.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = reset(RaftStoreConfig::new(&dir), Some(&path))
            .await
            .unwrap_err();
        match name {
            "foreign" | "empty" => assert!(matches!(err, SnapshotError::Foreign { .. }), "{err}"),
            _ => assert!(
                matches!(err, SnapshotError::Corrupt { .. }),
                "{name}: {err}"
            ),
        }
        assert!(err.to_string().contains(name), "{err}");
    }
    let missing = reset(RaftStoreConfig::new(&dir), Some(&data.path().join("nope")))
        .await
        .unwrap_err();
    assert!(matches!(missing, SnapshotError::Io { .. }), "{missing}");
    // A data dir without a store has nothing to reset from its own data.
    let empty = data.path().join("empty-store");
    let err = reset(RaftStoreConfig::new(&empty), None).await.unwrap_err();
    assert!(matches!(err, SnapshotError::NoStore { .. }), "{err}");
    assert!(!empty.exists());

    // The store is as it was, and nothing was left beside it.
    let store = open(&dir).await;
    assert_eq!(store.cluster_id(), cluster);
    assert!(store.get("/later").await.unwrap().is_some());
    store.shutdown().await.unwrap();
    drop(store);
    let mut beside: Vec<String> = std::fs::read_dir(data.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("store"))
        .collect();
    beside.sort();
    assert_eq!(beside, ["store"]);

    // The good snapshot restores into a data dir that never had a store.
    let fresh = data.path().join("fresh").join("store");
    let report = reset(RaftStoreConfig::new(&fresh), Some(&info.path))
        .await
        .unwrap();
    assert_eq!(report.previous, None);
    let store = open(&fresh).await;
    assert_eq!(store.get("/keep").await.unwrap().unwrap().value, b"me");
    assert!(store.get("/later").await.unwrap().is_none());
    store.shutdown().await.unwrap();

    let listed = list_snapshots(&snapshots).unwrap();
    assert!(
        matches!(&listed[..], [Listed::Snapshot(s)] if s.name == "good"),
        "{listed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_left_alone_is_reset_and_serves_every_acknowledged_write() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let others = cluster.others(leader);
    let (survivor, lost) = (others[0], others[1]);

    // A snapshot on a follower, through the leader's read index.
    let snapshots = TempDir::new().unwrap();
    cluster
        .node(survivor)
        .store()
        .put("/early", b"v".to_vec())
        .await
        .unwrap();
    let info = cluster
        .node(survivor)
        .store()
        .save_snapshot(snapshots.path(), "follower")
        .await
        .unwrap();
    assert_eq!(info.header.node_id, survivor);
    assert_eq!(info.header.keys, 1);

    // One follower is cut off: every write acknowledged from now on is in the survivor's log.
    cluster.partition(&[lost]);
    let writer = cluster.node(leader).store().clone();
    let acknowledged: Vec<KeyValue> = cluster
        .node(leader)
        .on_runtime(async move {
            let mut acknowledged = Vec::new();
            let writes: Vec<_> = (0..200)
                .map(|i| {
                    let writer = writer.clone();
                    tokio::spawn(async move {
                        writer.put(&format!("/acked/{i}"), vec![b'v'; 100]).await
                    })
                })
                .collect();
            for write in writes {
                acknowledged.push(write.await.unwrap().unwrap());
            }
            acknowledged
        })
        .await;
    // The leader and the cut-off member go for good; the survivor is stopped.
    cluster.node_mut(leader).kill();
    cluster.node_mut(lost).kill();
    let survivor_node = cluster.node_mut(survivor);
    let (dir, addr) = (survivor_node.dir.clone(), survivor_node.addr.clone());
    let old_cluster = survivor_node.store().cluster_id();
    survivor_node.stop().await;

    let mut config = RaftStoreConfig::new(&dir);
    config.node_id = Some(survivor);
    let report = reset(config, None).await.unwrap();
    assert_eq!(report.node_id, survivor);
    assert_eq!(report.address, addr, "the member keeps its address");

    // It serves alone — as a member with a peer transport, even when told to join — with
    // every acknowledged write.
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let cert = cluster.ca.member("survivor");
    let node = open_member(
        &dir,
        &cert,
        port,
        Bootstrap::Join,
        Some(survivor),
        &cluster.tweak,
    )
    .await
    .unwrap();
    let store = node.store().clone();
    let acknowledged = node
        .on_runtime(async move {
            store.wait_ready(Duration::from_secs(30)).await.unwrap();
            assert_ne!(store.cluster_id(), old_cluster);
            let members = store.members().await.unwrap();
            assert_eq!(members.leader, Some(survivor));
            assert_eq!(members.members.len(), 1);
            for kv in &acknowledged {
                let got = store.get(&kv.key).await.unwrap();
                assert_eq!(got.as_ref(), Some(kv), "acknowledged write of {}", kv.key);
            }
            assert!(store.get("/early").await.unwrap().is_some());
            let revision = store.current_revision().await.unwrap();
            let newest = acknowledged.iter().map(|kv| kv.mod_revision).max().unwrap();
            assert!(revision >= newest, "{revision} < {newest}");
            let kv = store.put("/after-reset", b"v".to_vec()).await.unwrap();
            assert_eq!(kv.mod_revision, revision + 1);
            acknowledged
        })
        .await;

    // A new member of the new cluster gets everything, the data from before the reset too.
    let joiner_dir = TempDir::new().unwrap();
    let joiner = open_member(
        joiner_dir.path(),
        &cluster.ca.member("joiner"),
        free_port(),
        Bootstrap::Join,
        None,
        &cluster.tweak,
    )
    .await
    .unwrap();
    let (store, id, joiner_addr) = (node.store().clone(), joiner.id, joiner.addr.clone());
    node.on_runtime(async move { store.add_member(id, joiner_addr).await })
        .await
        .unwrap();
    let store = joiner.store().clone();
    joiner
        .on_runtime(async move {
            store.wait_ready(Duration::from_secs(30)).await.unwrap();
            for kv in &acknowledged {
                let got = store.get(&kv.key).await.unwrap();
                assert_eq!(got.as_ref(), Some(kv), "{} on the new member", kv.key);
            }
            assert!(store.get("/early").await.unwrap().is_some());
            assert!(store.get("/after-reset").await.unwrap().is_some());
        })
        .await;
    let (mut node, mut joiner) = (node, joiner);
    joiner.stop().await;
    node.stop().await;
}
