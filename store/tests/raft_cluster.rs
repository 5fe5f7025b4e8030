//! Replicated stores: three (or more) `RaftStore`s in this process talking mutual TLS over
//! loopback. The conformance suite on a follower and on the leader; joining and removal;
//! killing the leader under a steady write load; partitions; a member that needs a snapshot;
//! peers without the cluster's certificates.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_store::conformance::Fixture;
use shoal_store::{Bootstrap, RaftStore, RangeRequest, Store, StoreError};
use support::{
    client_config_without_certificate, eventually, free_port, open_member, open_member_with_tls,
    Cluster, TestCa, Tweak,
};

/// A three-member cluster whose store under test is one member.
struct ClusterFixture {
    cluster: Cluster,
    member: u64,
}

impl Fixture for ClusterFixture {
    type S = RaftStore;
    fn store(&self) -> &RaftStore {
        self.cluster.node(self.member).store()
    }
}

async fn follower_fixture() -> ClusterFixture {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let member = cluster.others(leader)[0];
    ClusterFixture { cluster, member }
}

async fn leader_fixture() -> ClusterFixture {
    let cluster = Cluster::start(3).await;
    let member = cluster.leader().await;
    ClusterFixture { cluster, member }
}

mod conformance_on_a_follower {
    shoal_store::conformance_tests!(super::follower_fixture());
}

mod conformance_on_the_leader {
    shoal_store::conformance_tests!(super::leader_fixture());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_and_every_member_serves() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let members = cluster.node(leader).store().members().await.unwrap();
    assert_eq!(members.leader, Some(leader));
    assert_eq!(members.members.len(), 3);
    assert!(members.members.iter().all(|m| m.voter), "{members:?}");
    for node in &cluster.nodes {
        assert_eq!(node.store().members().await.unwrap(), members);
        assert_eq!(
            node.store().cluster_id(),
            cluster.nodes[0].store().cluster_id()
        );
    }

    // A write through any member is seen at once by a read on any member, and by the
    // writer's own watch.
    for (i, writer) in cluster.nodes.iter().enumerate() {
        let key = format!("/serve/{i}");
        let mut watch = writer.store().watch("/serve/", None).await.unwrap();
        let kv = writer.store().create(&key, b"v".to_vec()).await.unwrap();
        for reader in &cluster.nodes {
            let got = reader.store().get(&key).await.unwrap().unwrap();
            assert_eq!(got.mod_revision, kv.mod_revision);
        }
        let event = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(event.kv.key, key);
    }
    let revisions: Vec<i64> = futures_revisions(&cluster).await;
    assert!(revisions.windows(2).all(|w| w[0] == w[1]), "{revisions:?}");
}

async fn futures_revisions(cluster: &Cluster) -> Vec<i64> {
    let mut out = Vec::new();
    for node in cluster.nodes.iter().filter(|n| n.alive()) {
        out.push(node.store().current_revision().await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarts_and_catches_up() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let follower = cluster.others(leader)[0];
    let dir = cluster.node(follower).dir.clone();
    let addr = cluster.node(follower).addr.clone();
    cluster.node_mut(follower).stop().await;

    let writer = cluster.node(leader).store().clone();
    for i in 0..20 {
        writer
            .put(&format!("/restart/{i}"), vec![b'x'; 100])
            .await
            .unwrap();
    }
    let port: u16 = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let cert = cluster.ca.member("restarted");
    // Restarting with the configuration for a new cluster changes nothing: the store knows
    // its cluster.
    let node = open_member(&dir, &cert, port, Bootstrap::Init, None, &cluster.tweak)
        .await
        .unwrap();
    assert_eq!(node.id, follower);
    node.store()
        .wait_ready(Duration::from_secs(10))
        .await
        .unwrap();
    let page = node
        .store()
        .range(RangeRequest::prefix("/restart/"))
        .await
        .unwrap();
    assert_eq!(page.kvs.len(), 20);
}

/// Kills the leader while writers keep writing through the other members: a new leader takes
/// over quickly, every acknowledged write is there afterwards, and none is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_load_loses_nothing() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let survivors = cluster.others(leader);

    #[derive(Default)]
    struct Log {
        acked: Vec<(String, i64, Instant)>,
        failed: Vec<(String, String)>,
    }
    let log = Arc::new(Mutex::new(Log::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let store = cluster.node(survivors[w % survivors.len()]).store().clone();
        let (log, stop) = (Arc::clone(&log), Arc::clone(&stop));
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("/load/{w}/{i}");
                // `put` would silently apply twice what `create` would refuse: a duplicate
                // shows as version 2.
                match store.put(&key, key.as_bytes().to_vec()).await {
                    Ok(kv) => {
                        log.lock()
                            .unwrap()
                            .acked
                            .push((key, kv.mod_revision, Instant::now()))
                    }
                    Err(err) => log.lock().unwrap().failed.push((key, err.to_string())),
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed_at = Instant::now();
    cluster.node_mut(leader).kill();
    let new_leader = cluster
        .leader_among(&survivors, Duration::from_secs(10))
        .await;
    let elected_after = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }

    let log = std::mem::take(&mut *log.lock().unwrap());
    let before = log.acked.iter().filter(|a| a.2 < killed_at).count();
    let after = log.acked.len() - before;
    assert!(after > 50, "only {after} writes after the kill");
    // The longest time without any acknowledged write: the failover as clients see it.
    let mut times: Vec<Instant> = log.acked.iter().map(|a| a.2).collect();
    times.sort();
    let gap = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    println!(
        "leader {leader} killed: node {new_leader} elected after {elected_after:?}; writes \
         stopped for at most {gap:?}; {} writes acknowledged ({before} before the kill), {} failed",
        log.acked.len(),
        log.failed.len()
    );
    assert!(before > 50, "only {before} writes before the kill");
    assert!(gap < Duration::from_secs(3), "writes stopped for {gap:?}");
    for (key, why) in &log.failed {
        assert!(why.contains("no leader or no quorum"), "{key}: {why}");
    }

    // Every acknowledged write is there, exactly once, on both survivors.
    let mut revisions = std::collections::BTreeSet::new();
    for (_, revision, _) in log.acked.iter() {
        assert!(
            revisions.insert(*revision),
            "revision {revision} acknowledged twice"
        );
    }
    for id in &survivors {
        let page = cluster
            .node(*id)
            .store()
            .range(RangeRequest::prefix("/load/"))
            .await
            .unwrap();
        let stored: BTreeMap<&str, &shoal_store::KeyValue> =
            page.kvs.iter().map(|kv| (kv.key.as_str(), kv)).collect();
        for (key, revision, _) in log.acked.iter() {
            let kv = stored
                .get(key.as_str())
                .unwrap_or_else(|| panic!("acknowledged {key} lost on node {id}"));
            assert_eq!(kv.mod_revision, *revision, "{key}");
        }
        for kv in &page.kvs {
            assert_eq!(kv.version, 1, "{} was applied {} times", kv.key, kv.version);
            assert_eq!(kv.value, kv.key.as_bytes());
        }
    }
}

/// Cuts the leader off: its side stops accepting writes and linearizable reads within the
/// request timeout, the majority elects a leader and goes on, and after healing everyone
/// converges on the majority's history (the cut-off leader's write never happened).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_stops_and_the_majority_continues() {
    let tweak: Tweak = Arc::new(|config| config.request_timeout = Duration::from_secs(2));
    let cluster = Cluster::start_with(3, tweak).await;
    let old = cluster.leader().await;
    let majority = cluster.others(old);
    cluster
        .node(old)
        .store()
        .put("/part/before", b"1".to_vec())
        .await
        .unwrap();

    cluster.partition(&[old]);
    let minority = cluster.node(old).store().clone();
    let started = Instant::now();
    let write = minority.put("/part/minority", b"lost".to_vec()).await;
    let took = started.elapsed();
    assert!(matches!(&write, Err(StoreError::NoQuorum(_))), "{write:?}");
    assert!(
        took < Duration::from_secs(4),
        "the write failed only after {took:?}"
    );
    let read = minority.get("/part/before").await;
    assert!(matches!(&read, Err(StoreError::NoQuorum(_))), "{read:?}");

    // The majority goes on, through either of its members.
    let new = cluster
        .leader_among(&majority, Duration::from_secs(10))
        .await;
    assert_ne!(new, old);
    for (i, id) in majority.iter().enumerate() {
        let store = cluster.node(*id).store().clone();
        let key = format!("/part/majority/{i}");
        eventually(Duration::from_secs(5), || store.put(&key, b"kept".to_vec())).await;
    }
    // A member of the majority that forwards to the leader reads its own writes.
    let via_follower = cluster
        .node(*majority.iter().find(|id| **id != new).unwrap())
        .store()
        .clone();
    assert!(via_follower
        .get("/part/majority/0")
        .await
        .unwrap()
        .is_some());

    cluster.heal();
    let leader = cluster.leader().await;
    assert!(
        majority.contains(&leader),
        "node {leader} leads after healing"
    );
    for node in &cluster.nodes {
        let store = node.store().clone();
        let page = eventually(Duration::from_secs(10), || {
            store.range(RangeRequest::prefix("/part/"))
        })
        .await;
        let keys: Vec<&str> = page.kvs.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(
            keys,
            ["/part/before", "/part/majority/0", "/part/majority/1"],
            "on node {}",
            node.id
        );
    }
    let revisions = futures_revisions(&cluster).await;
    assert!(revisions.windows(2).all(|w| w[0] == w[1]), "{revisions:?}");
}

/// A member added after the log it would need was compacted gets the leader's snapshot and
/// ends with the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_gets_a_snapshot_of_a_compacted_log() {
    let tweak: Tweak = Arc::new(|config| {
        config.snapshot_every = 50;
        config.logs_kept_after_snapshot = 10;
    });
    let mut cluster = Cluster::start_with(3, tweak).await;
    let leader = cluster.leader().await;
    let writer = cluster.node(leader).store().clone();
    for i in 0..300 {
        writer
            .put(
                &format!("/snap/{:03}", i % 120),
                format!("{i}").into_bytes(),
            )
            .await
            .unwrap();
    }
    let purged = eventually(Duration::from_secs(10), || async {
        match writer.raft_status().purged_index {
            Some(index) if index > 100 => Ok(index),
            other => Err(other),
        }
    })
    .await;

    let node = cluster.join().await;
    let status = node.store().raft_status();
    assert!(
        status.snapshot_index.is_some_and(|i| i >= purged),
        "the new member has no snapshot covering the purged log: {status:?}"
    );
    let mine = node
        .store()
        .range(RangeRequest::prefix("/snap/"))
        .await
        .unwrap();
    let theirs = writer.range(RangeRequest::prefix("/snap/")).await.unwrap();
    assert_eq!(mine.kvs.len(), 120);
    assert_eq!(mine, theirs);
    // It also keeps up with later writes, and its watches start from its snapshot.
    let mut watch = node.store().watch("/snap/", None).await.unwrap();
    writer.put("/snap/after", b"x".to_vec()).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.kv.key, "/snap/after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_refuses_to_serve_and_to_open() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let others = cluster.others(leader);
    let (gone, via) = (others[0], others[1]);

    // Removed through a follower (forwarded to the leader).
    cluster.node(via).store().remove_member(gone).await.unwrap();
    let members = cluster.node(via).store().members().await.unwrap();
    assert!(members.members.iter().all(|m| m.id != gone), "{members:?}");
    let removed = cluster.node(gone).store().clone();
    let err = eventually(Duration::from_secs(5), || async {
        match removed.get("/k").await {
            Err(err @ StoreError::Removed(_)) => Ok(err),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(err.to_string().contains("was removed"), "{err}");
    // The other two go on.
    cluster
        .node(via)
        .store()
        .put("/after-removal", b"1".to_vec())
        .await
        .unwrap();

    let dir = cluster.node(gone).dir.clone();
    cluster.node_mut(gone).stop().await;
    let cert = cluster.ca.member("again");
    let reopened = open_member(
        &dir,
        &cert,
        free_port(),
        Bootstrap::Join,
        None,
        &cluster.tweak,
    )
    .await;
    match reopened {
        Err(StoreError::Removed(message)) => {
            assert!(message.contains("remove"), "{message}");
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("a removed member opened its store again"),
    }

    // Removing the leader: it steps down, the remaining member... cannot lead alone a
    // two-member cluster without it, so the survivor keeps the cluster going.
    let last_two = [leader, via];
    cluster
        .node(via)
        .store()
        .remove_member(leader)
        .await
        .unwrap();
    let survivor = cluster.node(via).store().clone();
    eventually(Duration::from_secs(10), || {
        survivor.put("/only-one", b"1".to_vec())
    })
    .await;
    assert_eq!(cluster.node(via).store().leader(), Some(via));
    let old_leader = cluster.node(leader).store().clone();
    let err = eventually(Duration::from_secs(5), || async {
        match old_leader.get("/k").await {
            Err(err @ StoreError::Removed(_)) => Ok(err),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(matches!(err, StoreError::Removed(_)));
    let last = survivor.remove_member(via).await;
    assert!(
        matches!(&last, Err(StoreError::Membership(m)) if m.contains("last voter")),
        "{last:?} (members were {last_two:?})"
    );
}

/// A member removed while it was cut off learns it when it is back: the first member it asks
/// for a vote tells it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_while_cut_off_learns_it_when_back() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader().await;
    let gone = cluster.others(leader)[0];
    cluster.partition(&[gone]);
    cluster
        .node(leader)
        .store()
        .remove_member(gone)
        .await
        .unwrap();
    // While cut off it campaigns in vain.
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.heal();
    let removed = cluster.node(gone).store().clone();
    eventually(Duration::from_secs(10), || async {
        match removed.current_revision().await {
            Err(StoreError::Removed(_)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(cluster.node(gone).dir.join("REMOVED").exists());
    // Its campaign did not disturb the others.
    let store = cluster.node(leader).store().clone();
    eventually(Duration::from_secs(5), || {
        store.put("/still", b"ok".to_vec())
    })
    .await;
}

/// A server whose certificate comes from another CA cannot be added: the members refuse its
/// connections and it refuses theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_a_foreign_certificate_is_refused() {
    let tweak: Tweak = Arc::new(|config| config.membership_timeout = Duration::from_secs(3));
    let cluster = Cluster::start_with(2, tweak.clone()).await;
    let foreign_ca = TestCa::new("someone else's CA");
    let cert = foreign_ca.member("intruder");
    let dir = cluster.member_dir(9);
    let intruder = open_member(&dir, &cert, free_port(), Bootstrap::Join, None, &tweak)
        .await
        .unwrap();
    let err = cluster.nodes[0]
        .store()
        .add_member(intruder.id, intruder.addr.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Membership(m) if m.contains("certificate")),
        "{err}"
    );
    assert!(
        intruder.store().cluster_id().is_none(),
        "the intruder learned the cluster id"
    );
    // The cluster is unharmed: the stuck learner does not count towards quorums.
    cluster.nodes[1]
        .store()
        .put("/fine", b"1".to_vec())
        .await
        .unwrap();
}

/// A member whose TLS configuration lets clients without a certificate through the handshake
/// still refuses them: a peer that cannot present one cannot forward anything to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_a_client_certificate_is_refused() {
    let tweak: Tweak = Arc::new(|config| config.request_timeout = Duration::from_secs(2));
    let ca = TestCa::new("test store CA");
    let dir = tempfile::TempDir::new().unwrap();
    let lenient = ca.member("lenient");
    let leader = open_member_with_tls(
        &dir.path().join("a"),
        (lenient.server_config(true), lenient.client_config()),
        free_port(),
        Bootstrap::Init,
        None,
        &tweak,
    )
    .await
    .unwrap();
    let certless = ca.member("certless");
    let joiner = open_member_with_tls(
        &dir.path().join("b"),
        (
            certless.server_config(false),
            client_config_without_certificate(&certless),
        ),
        free_port(),
        Bootstrap::Join,
        None,
        &tweak,
    )
    .await
    .unwrap();
    // The leader can reach the joiner (it has a certificate), so the joiner gets the log...
    leader
        .store()
        .add_member(joiner.id, joiner.addr.clone())
        .await
        .unwrap();
    leader.store().put("/k", b"v".to_vec()).await.unwrap();
    // ...but nothing the joiner sends is accepted.
    let write = joiner.store().put("/k2", b"v".to_vec()).await;
    assert!(matches!(&write, Err(StoreError::NoQuorum(_))), "{write:?}");
    let read = joiner.store().get("/k").await;
    assert!(matches!(&read, Err(StoreError::NoQuorum(_))), "{read:?}");
    assert_eq!(leader.store().get("/k2").await.unwrap(), None);
}
