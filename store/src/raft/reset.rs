//! Cluster reset, as k3s's `--cluster-reset` does for etcd: a stopped store becomes the only
//! member of a new cluster, keeping its own data or taking a snapshot file's instead. It is
//! how a server comes back after its cluster lost quorum for good.
//!
//! Keeping its own data, the member also applies every entry of its Raft log that it had not
//! applied, committed or not (etcd's `--force-new-cluster` does the same): a write the old
//! cluster acknowledged was committed, so it is in the log of every member of the majority
//! that committed it; this member may not have learned it was committed before the others
//! went. An entry that never was committed is a write whose client got no answer, or was told
//! its fate is unknown — taking it breaks no promise. (Entries of a stale leader that a later
//! one would have overwritten can only come after the last acknowledged one this member
//! holds, by Raft's log matching.)
//!
//! The reset store gets a new cluster id, not the old one: the other members, should they
//! come back, still count this one in their three-member cluster and would otherwise be
//! accepted as its peers — two of them are a majority of that old cluster, and their leader's
//! appends would overwrite the reset member's log. With a new id the transport refuses them
//! (they must be wiped and join again, as k3s asks of the other servers after a reset).
//! The node id stays, so does the address the member's membership records for it (its peer
//! port as the server advertised it); a store restored into an empty data dir takes
//! `RaftStoreConfig::advertise`.
//!
//! Nothing is lost along the way: the snapshot file is verified in full before anything is
//! touched; the new store is built beside the old one (`<dir>.reset-…`), synced, then swapped
//! in with one atomic exchange of the two directories; the old store is kept as
//! `<dir>.old-<time>` for the operator to remove. A crash before the exchange leaves the old
//! store in place, one after it the new one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{BasicNode, LogId, Membership, StoredMembership};

use super::disk::DiskSync;
use super::identity::{self, Identity, Parsed, FORMAT_FILE};
use super::sm::{self, StateMachine};
use super::snapshots::{now_unix, read_verified, SnapshotError, SnapshotInfo};
use super::{check_data_dir, is_locked, log, open_db, RaftStoreConfig, DB_DIR, STATE_TREE};
use crate::error::StoreError;
use crate::types::Revision;

/// What [`reset_cluster`] did.
#[derive(Debug, Clone)]
pub struct ResetReport {
    /// The store directory, now holding a one-member cluster.
    pub dir: PathBuf,
    pub node_id: u64,
    /// The new cluster's id.
    pub cluster_id: String,
    /// The member's peer address in the new membership.
    pub address: String,
    /// The store's revision (new writes continue after it).
    pub revision: Revision,
    /// The keys it holds.
    pub keys: u64,
    /// Entries of its own Raft log the member applied on the way (keeping its own data).
    pub applied_from_log: usize,
    /// The snapshot restored, if one was.
    pub restored: Option<SnapshotInfo>,
    /// Where the store that was there before now is.
    pub previous: Option<PathBuf>,
}

/// Makes the stopped store in `config.dir` a one-member cluster (see the module docs): from
/// its own data with `from` `None`, else from the snapshot file `from`, which may also fill a
/// data dir holding no store yet.
///
/// Refused, with nothing changed: a snapshot that is damaged ([`SnapshotError::Corrupt`]) or
/// not a Shoal store snapshot ([`SnapshotError::Foreign`]); a store a running server holds
/// ([`SnapshotError::Locked`]); no store and no snapshot ([`SnapshotError::NoStore`]); a
/// damaged store to keep the data of ([`StoreError::Corrupt`]); a `config.node_id` other than
/// the store's.
pub fn reset_cluster(
    config: &RaftStoreConfig,
    from: Option<&Path>,
) -> Result<ResetReport, SnapshotError> {
    let restored = from.map(read_verified).transpose()?;
    let dir = config.dir.as_path();
    let has_store = dir.join(FORMAT_FILE).exists() || dir.join(DB_DIR).exists();
    if !has_store && restored.is_none() {
        return Err(SnapshotError::NoStore {
            dir: dir.to_path_buf(),
        });
    }

    // What the store there now says about itself. Restoring over a damaged store is allowed
    // (that may be why it is restored); keeping the data of one is not.
    let found = if has_store {
        match check_data_dir(dir) {
            Ok(found) => found,
            Err(err) if restored.is_some() => {
                tracing::warn!(%err, "restoring over a damaged store");
                None
            }
            Err(err) => return Err(err.into()),
        }
    } else {
        None
    };
    let node_id = node_id(config, found.as_ref())?;
    // Held until the new store is in place: no server may open the old one meanwhile.
    let old_db = if dir.join(DB_DIR).exists() {
        match open_db(dir, config.cache_bytes) {
            Ok(db) => Some(db),
            Err(e) if is_locked(&e) => {
                return Err(SnapshotError::Locked {
                    dir: dir.to_path_buf(),
                })
            }
            Err(e) if restored.is_some() => {
                tracing::warn!(error = %e, "restoring over a store whose database does not open");
                None
            }
            Err(e) => {
                return Err(StoreError::Corrupt(format!(
                    "cannot open the database in {}: {e}",
                    dir.display()
                ))
                .into())
            }
        }
    } else {
        None
    };

    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty());
    let (parent, stem) = match (parent, dir.file_name()) {
        (Some(parent), Some(stem)) => (parent, stem.to_string_lossy().into_owned()),
        _ => {
            return Err(SnapshotError::io(
                "resetting",
                dir,
                "the store directory needs a parent directory",
            ))
        }
    };
    std::fs::create_dir_all(parent).map_err(|e| SnapshotError::io("creating", parent, e))?;
    let now = now_unix();
    let staging =
        Staging::create(parent.join(format!("{stem}{RESET_INFIX}{now}-{}", std::process::id())))?;

    let built = build(
        config,
        &staging.path,
        node_id,
        restored.as_ref().map(|(_, data)| data),
        old_db.as_ref(),
    )?;
    let cluster_id =
        identity::new_cluster_id().map_err(|e| SnapshotError::io("making an id", dir, e))?;
    identity::write(
        &staging.path,
        &Identity {
            node_id,
            cluster_id: Some(cluster_id.clone()),
        },
    )
    .map_err(|e| SnapshotError::io("writing", &staging.path.join(FORMAT_FILE), e))?;

    let backup = free_name(parent, &format!("{stem}.old-{now}"));
    let previous = staging.replace(dir, &backup)?;
    drop(old_db);
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| SnapshotError::io("syncing", parent, e))?;
    Ok(ResetReport {
        dir: dir.to_path_buf(),
        node_id,
        cluster_id,
        address: built.address,
        revision: built.revision,
        keys: built.keys,
        applied_from_log: built.applied_from_log,
        restored: restored.map(|(info, _)| info),
        previous,
    })
}

/// The node id the reset store keeps: the store's own, else the configured one, else 1.
fn node_id(config: &RaftStoreConfig, found: Option<&Parsed>) -> Result<u64, SnapshotError> {
    let recorded = found.map(|parsed| match parsed {
        Parsed::V1 => 1,
        Parsed::V2(identity) => identity.node_id,
    });
    let id = match (recorded, config.node_id) {
        (Some(recorded), Some(wanted)) if recorded != wanted => {
            return Err(StoreError::Membership(format!(
                "the store in {} is node {recorded}, not node {wanted}",
                config.dir.display()
            ))
            .into())
        }
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => 1,
    };
    if id == 0 {
        return Err(StoreError::Membership("node id 0 is not allowed".into()).into());
    }
    Ok(id)
}

/// What [`build`] made.
struct Built {
    address: String,
    revision: Revision,
    keys: u64,
    applied_from_log: usize,
}

/// Builds the new store's database in `staging`: the state (the snapshot's, or the old
/// store's with its log applied) as a one-member cluster of `node_id` has it.
fn build(
    config: &RaftStoreConfig,
    staging: &Path,
    node_id: u64,
    snapshot: Option<&sm::SnapshotData>,
    old_db: Option<&sled::Db>,
) -> Result<Built, SnapshotError> {
    let db_path = staging.join(DB_DIR);
    let db = open_db(staging, config.cache_bytes)
        .map_err(|e| SnapshotError::io("creating", &db_path, e))?;
    let tree = db.open_tree(STATE_TREE).map_err(StoreError::from)?;
    let disk =
        DiskSync::open(&db, &db_path).map_err(|e| SnapshotError::io("opening", &db_path, e))?;
    let old_state = old_db
        .map(|db| db.open_tree(STATE_TREE))
        .transpose()
        .map_err(StoreError::from)?;
    let (recorded, applied_from_log) = match (snapshot, &old_state, old_db) {
        (Some(snapshot), _, _) => {
            sm::seed(&tree, snapshot)?;
            // The address this member had in the cluster it leaves, if there is one to read.
            let recorded = match &old_state {
                Some(old) => sm::applied_membership(old).ok(),
                None => None,
            };
            (recorded, 0)
        }
        (None, Some(old_state), Some(old_db)) => {
            sm::copy_state(old_state, &tree)?;
            let mut machine =
                StateMachine::open(tree.clone(), Arc::clone(&disk), staging, config.retention)?;
            let applied = machine.shared().applied().0.map(|id| id.index);
            let tail = log::entries_after(&config.dir, old_db, applied)?;
            let count = tail.len();
            machine.apply_entries(tail)?;
            (Some(machine.shared().applied().1), count)
        }
        (None, _, _) => {
            return Err(StoreError::Corrupt(format!(
                "no database in {} to keep the data of",
                config.dir.display()
            ))
            .into())
        }
    };
    let address = recorded
        .and_then(|m| m.membership().get_node(&node_id).map(|n| n.addr.clone()))
        .unwrap_or_else(|| config.advertise.clone());
    let revision = sm::revision(&tree)?;
    let keys = sm::key_count(&tree)?;
    // The state is what the new cluster's first log entry — the membership naming this member
    // alone, at the very first log id, as `Raft::initialize` writes it — has been applied to;
    // the log itself starts empty. On start openraft purges the log up to that entry and
    // builds a Raft snapshot of the state, so a member added later is sent the state (a
    // log from index 0 would not carry it).
    let first = LogId::default();
    let membership = StoredMembership::new(
        Some(first),
        Membership::new(
            vec![BTreeSet::from([node_id])],
            BTreeMap::from([(node_id, BasicNode::new(&address))]),
        ),
    );
    sm::set_log_position(&tree, Some(first), &membership)?;
    log::create(staging)?;
    disk.sync_blocking()
        .map_err(|e| SnapshotError::io("syncing", &db_path, e))?;
    Ok(Built {
        address,
        revision,
        keys,
        applied_from_log,
    })
}

/// How the directory a reset is built in is named: `<store dir name>.reset-<time>-<pid>`.
const RESET_INFIX: &str = ".reset-";

/// A directory a reset was being built in when it stopped, left beside the store directory
/// `dir` that is missing: its store must not start empty as if new. `None` when `dir`
/// exists or nothing was left.
pub(super) fn interrupted_reset(dir: &Path) -> Option<PathBuf> {
    if dir.exists() {
        return None;
    }
    let prefix = format!("{}{RESET_INFIX}", dir.file_name()?.to_string_lossy());
    std::fs::read_dir(dir.parent()?)
        .ok()?
        .flatten()
        .find(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .map(|entry| entry.path())
}

/// `base` in `parent`, or `base-2`, `base-3`… if taken.
fn free_name(parent: &Path, base: &str) -> PathBuf {
    let mut path = parent.join(base);
    let mut n = 2;
    while path.exists() {
        path = parent.join(format!("{base}-{n}"));
        n += 1;
    }
    path
}

/// The directory the new store is built in; removed unless it was swapped in.
struct Staging {
    path: PathBuf,
    armed: bool,
}

impl Staging {
    fn create(path: PathBuf) -> Result<Staging, SnapshotError> {
        std::fs::create_dir(&path).map_err(|e| SnapshotError::io("creating", &path, e))?;
        Ok(Staging { path, armed: true })
    }

    /// Puts the new store in place of `dir`, moving the old one (if any) to `backup`, and
    /// returns where the old one went.
    fn replace(mut self, dir: &Path, backup: &Path) -> Result<Option<PathBuf>, SnapshotError> {
        let failed =
            |e: std::io::Error| SnapshotError::io("putting the new store in place at", dir, e);
        if !dir.exists() {
            std::fs::rename(&self.path, dir).map_err(failed)?;
            self.armed = false;
            return Ok(None);
        }
        match exchange(&self.path, dir) {
            Ok(()) => {
                // From here the staging directory holds the old store: never remove it.
                self.armed = false;
                std::fs::rename(&self.path, backup).map_err(|e| {
                    SnapshotError::io(
                        "moving the old store (it is in place) out of",
                        &self.path,
                        e,
                    )
                })?;
            }
            Err(e) if exchange_unsupported(&e) => {
                // Two renames: a crash between them leaves no store directory, which
                // `interrupted_reset` makes the next start refuse.
                std::fs::rename(dir, backup).map_err(failed)?;
                if let Err(e) = std::fs::rename(&self.path, dir) {
                    let _ = std::fs::rename(backup, dir);
                    return Err(failed(e));
                }
                self.armed = false;
            }
            Err(e) => return Err(failed(e)),
        }
        Ok(Some(backup.to_path_buf()))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Swaps two directories atomically.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    renameat2(AT_FDCWD, a, AT_FDCWD, b, RenameFlags::RENAME_EXCHANGE).map_err(std::io::Error::from)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// Whether the file system (or platform) cannot exchange directories atomically.
fn exchange_unsupported(err: &std::io::Error) -> bool {
    err.kind() == std::io::ErrorKind::Unsupported
        || matches!(err.raw_os_error(), Some(code) if code == nix::libc::EINVAL || code == nix::libc::ENOSYS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::mvcc::Command;
    use crate::{RaftStore, Store};
    use openraft::{Entry, EntryPayload};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_logged_but_not_applied_are_kept() {
        let parent = tempfile::TempDir::new().unwrap();
        let dir = parent.path().join("store");
        let store = RaftStore::open(RaftStoreConfig::new(&dir)).await.unwrap();
        let applied = store.put("/applied", b"1".to_vec()).await.unwrap();
        store.shutdown().await.unwrap();
        drop(store);
        // A write this member logged but never learned was committed, as a follower left
        // alone may hold.
        {
            let db = open_db(&dir, 1 << 20).unwrap();
            let last = log::entries_after(&dir, &db, None)
                .unwrap()
                .pop()
                .unwrap()
                .log_id;
            let entry = Entry::<super::super::TypeConfig> {
                log_id: LogId::new(last.leader_id, last.index + 1),
                payload: EntryPayload::Normal(Command::Put {
                    key: "/logged".into(),
                    value: b"2".to_vec(),
                }),
            };
            log::write_entry(&dir, &entry).unwrap();
            db.flush().unwrap();
        }
        let report = reset_cluster(&RaftStoreConfig::new(&dir), None).unwrap();
        assert_eq!(report.applied_from_log, 1);
        assert_eq!(report.revision, applied.mod_revision + 1);
        let store = RaftStore::open(RaftStoreConfig::new(&dir)).await.unwrap();
        let logged = store.get("/logged").await.unwrap().unwrap();
        assert_eq!(logged.mod_revision, applied.mod_revision + 1);
        assert_eq!(store.get("/applied").await.unwrap().unwrap(), applied);
        store.shutdown().await.unwrap();
    }

    #[test]
    fn a_missing_store_dir_with_a_reset_left_beside_it_is_noticed() {
        let parent = tempfile::TempDir::new().unwrap();
        let dir = parent.path().join("store");
        assert_eq!(interrupted_reset(&dir), None);
        let left = parent.path().join("store.reset-1700000000-42");
        std::fs::create_dir(&left).unwrap();
        assert_eq!(interrupted_reset(&dir), Some(left));
        std::fs::create_dir(&dir).unwrap();
        assert_eq!(interrupted_reset(&dir), None);
    }

    #[test]
    fn the_node_id_is_the_stores_own() {
        let mut config = RaftStoreConfig::new("/nonexistent/store");
        let v2 = Parsed::V2(Identity {
            node_id: 9,
            cluster_id: None,
        });
        assert_eq!(node_id(&config, Some(&v2)).unwrap(), 9);
        assert_eq!(node_id(&config, Some(&Parsed::V1)).unwrap(), 1);
        assert_eq!(node_id(&config, None).unwrap(), 1);
        config.node_id = Some(4);
        assert_eq!(node_id(&config, None).unwrap(), 4);
        assert!(node_id(&config, Some(&v2)).is_err());
        config.node_id = Some(0);
        assert!(node_id(&config, None).is_err());
    }

    #[test]
    fn directories_are_exchanged_or_the_failure_says_why() {
        let parent = tempfile::TempDir::new().unwrap();
        let (a, b) = (parent.path().join("a"), parent.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(a.join("x"), "a").unwrap();
        match exchange(&a, &b) {
            Ok(()) => {
                assert_eq!(std::fs::read_to_string(b.join("x")).unwrap(), "a");
                assert!(!a.join("x").exists());
            }
            Err(e) => assert!(exchange_unsupported(&e), "{e}"),
        }
    }
}
