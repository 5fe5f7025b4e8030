//! Stores whose disk fills up (a small tmpfs, so these tests need root): writes that add data
//! fail with a clear error while reads go on, and writes work again once space is freed; a
//! follower whose disk is full falls behind without stopping and catches up afterwards.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use shoal_store::{Bootstrap, RaftStore, RaftStoreConfig, RangeRequest, Store, StoreError};
use support::{eventually, free_port, open_member, Cluster, Tweak};
use tempfile::TempDir;

const RESERVE: u64 = 16 * 1024 * 1024;

/// A 64 MiB tmpfs on a temporary directory, unmounted on drop (also when the test fails).
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn new() -> Tmpfs {
        let root = std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
        assert!(
            root,
            "this test mounts a tmpfs to fill a disk and needs root: run it as root (CI does)"
        );
        let dir = TempDir::new().unwrap();
        mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("size=64m"),
        )
        .unwrap();
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn free(&self) -> u64 {
        let stat = nix::sys::statvfs::statvfs(self.path()).unwrap();
        #[allow(clippy::useless_conversion)]
        let free = u64::from(stat.blocks_available()) * u64::from(stat.fragment_size());
        free
    }

    /// Fills the file system until `left` bytes are free; returns the ballast file.
    fn fill_leaving(&self, left: u64) -> PathBuf {
        let ballast = self.path().join("ballast");
        let size = self.free().saturating_sub(left);
        std::fs::write(&ballast, vec![0u8; size as usize]).unwrap();
        ballast
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a member killed by the test may still hold files open.
        let _ = umount2(self.dir.path(), MntFlags::MNT_DETACH);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_and_recovers_when_space_returns() {
    let tmpfs = Tmpfs::new();
    let mut config = RaftStoreConfig::new(tmpfs.path().join("store"));
    config.reserved_disk_bytes = RESERVE;
    config.cache_bytes = 8 * 1024 * 1024;
    let store = RaftStore::open(config).await.unwrap();
    store.put("/a", b"1".to_vec()).await.unwrap();
    store.put("/b", b"2".to_vec()).await.unwrap();
    let mut watch = store.watch("/", None).await.unwrap();

    let ballast = tmpfs.fill_leaving(RESERVE / 2);
    let err = store.put("/c", vec![b'x'; 1024]).await.unwrap_err();
    match &err {
        StoreError::NoSpace(m) => assert!(m.contains("bytes free"), "{m}"),
        other => panic!("expected NoSpace, got {other:?}"),
    }
    assert!(err.to_string().contains("disk full"), "{err}");
    assert!(matches!(
        store.create("/c", b"x".to_vec()).await,
        Err(StoreError::NoSpace(_))
    ));
    // Reads go on, and so do deletes (they are how space comes back).
    assert_eq!(store.get("/a").await.unwrap().unwrap().value, b"1");
    assert_eq!(
        store
            .range(RangeRequest::prefix("/"))
            .await
            .unwrap()
            .kvs
            .len(),
        2
    );
    store.delete("/b", None).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.kv.key, "/b");

    std::fs::remove_file(ballast).unwrap();
    let kv = store.put("/c", vec![b'x'; 1024]).await.unwrap();
    assert_eq!(store.get("/c").await.unwrap().unwrap(), kv);
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_a_full_disk_falls_behind_and_catches_up() {
    let tmpfs = Tmpfs::new();
    let tweak: Tweak = Arc::new(|config| {
        config.reserved_disk_bytes = RESERVE;
        config.request_timeout = Duration::from_secs(2);
    });
    let cluster = Cluster::start_with(2, tweak.clone()).await;
    let full = open_member(
        &tmpfs.path().join("store"),
        &cluster.ca.member("on-tmpfs"),
        free_port(),
        Bootstrap::Join,
        None,
        &tweak,
    )
    .await
    .unwrap();
    let leader = cluster.leader().await;
    let leader_store = cluster.node(leader).store().clone();
    leader_store
        .add_member(full.id, full.addr.clone())
        .await
        .unwrap();
    leader_store.put("/before", b"1".to_vec()).await.unwrap();

    let ballast = tmpfs.fill_leaving(RESERVE / 2);
    // The other two go on without it.
    for i in 0..20 {
        leader_store
            .put(&format!("/during/{i}"), vec![b'x'; 512])
            .await
            .unwrap();
    }
    // It refuses writes itself, with the reason.
    let err = full.store().put("/mine", b"1".to_vec()).await.unwrap_err();
    assert!(matches!(&err, StoreError::NoSpace(_)), "{err}");
    // It turned the new entries away, yet is still a member following the leader: its Raft
    // did not stop.
    let status = full.store().raft_status();
    let leader_status = leader_store.raft_status();
    assert!(
        status.last_log_index < leader_status.last_log_index,
        "the full member stored the log anyway: {status:?} vs {leader_status:?}"
    );
    assert_eq!(status.leader, Some(leader), "{status:?}");

    std::fs::remove_file(ballast).unwrap();
    let theirs = leader_store.range(RangeRequest::prefix("/")).await.unwrap();
    let mine = eventually(Duration::from_secs(10), || async {
        let mine = full.store().range(RangeRequest::prefix("/")).await?;
        if mine.kvs == theirs.kvs {
            Ok(mine)
        } else {
            Err(StoreError::Unavailable(format!(
                "{} keys so far",
                mine.kvs.len()
            )))
        }
    })
    .await;
    assert_eq!(mine.kvs.len(), 21);
    full.store().put("/mine", b"1".to_vec()).await.unwrap();
}
