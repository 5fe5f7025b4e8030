//! This member as the rest of the store sees it: its node id, the cluster id (learned on
//! joining), and whether it was removed. Shared by the transport (which stamps every request
//! with it and checks every request against it), the Raft network and the store.

use std::path::PathBuf;
use std::sync::{OnceLock, RwLock};

use openraft::Raft;
use tokio::sync::watch;

use super::identity::{self, Identity};
use super::wire::Header;
use super::TypeConfig;
use crate::error::{Result, StoreError};

type NodeId = u64;

/// This member's identity and fate.
pub(crate) struct LocalMember {
    pub node_id: NodeId,
    dir: PathBuf,
    cluster_id: RwLock<Option<String>>,
    /// `Some(why)` once this member knows it was removed.
    removed: watch::Sender<Option<String>>,
    /// Set once Raft is built (the network that needs this exists before Raft does).
    raft: OnceLock<Raft<TypeConfig>>,
}

impl std::fmt::Debug for LocalMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalMember")
            .field("node_id", &self.node_id)
            .field("cluster_id", &self.cluster_id())
            .finish_non_exhaustive()
    }
}

impl LocalMember {
    pub fn new(dir: PathBuf, identity: Identity) -> LocalMember {
        LocalMember {
            node_id: identity.node_id,
            dir,
            cluster_id: RwLock::new(identity.cluster_id),
            removed: watch::Sender::new(None),
            raft: OnceLock::new(),
        }
    }

    pub fn set_raft(&self, raft: Raft<TypeConfig>) {
        let _ = self.raft.set(raft);
    }

    pub fn cluster_id(&self) -> Option<String> {
        self.cluster_id
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// What every request this member sends carries.
    pub fn header(&self) -> Header {
        Header {
            from: self.node_id,
            cluster: self.cluster_id(),
            membership: self
                .raft
                .get()
                .and_then(|raft| *raft.metrics().borrow().membership_config.log_id()),
        }
    }

    /// Checks a peer's cluster id against ours. A member still waiting to join takes the first
    /// one it sees (only members holding a certificate of the cluster's CA get this far) and
    /// records it in `FORMAT`.
    pub fn check_cluster(&self, theirs: Option<&str>) -> std::result::Result<(), (String, String)> {
        let Some(theirs) = theirs else {
            // A member waiting to join sends no id; it only ever asks to be told it was removed
            // or forwards requests, which the receiver's own checks cover.
            return Ok(());
        };
        if let Some(ours) = self.cluster_id() {
            return if ours == theirs {
                Ok(())
            } else {
                Err((ours, theirs.to_string()))
            };
        }
        let mut slot = self.cluster_id.write().unwrap_or_else(|e| e.into_inner());
        match &*slot {
            Some(ours) if ours != theirs => return Err((ours.clone(), theirs.to_string())),
            Some(_) => return Ok(()),
            None => {}
        }
        if !identity::valid_cluster_id(theirs) {
            return Err(("(none yet)".into(), theirs.to_string()));
        }
        let identity = Identity {
            node_id: self.node_id,
            cluster_id: Some(theirs.to_string()),
        };
        if let Err(err) = identity::write(&self.dir, &identity) {
            // Not fatal: the id is learned again from the next message after a restart.
            tracing::warn!(%err, "recording the store's cluster id");
        }
        tracing::info!(cluster = theirs, "joined store cluster");
        *slot = Some(theirs.to_string());
        Ok(())
    }

    /// The error every request gets once this member was removed.
    pub fn removed_error(&self) -> Option<StoreError> {
        self.removed.borrow().clone().map(StoreError::Removed)
    }

    /// Resolves once this member learns it was removed, with the error it then gives.
    pub async fn removed(&self) -> StoreError {
        let mut receiver = self.removed.subscribe();
        loop {
            if let Some(why) = receiver.borrow_and_update().clone() {
                return StoreError::Removed(why);
            }
            if receiver.changed().await.is_err() {
                // The sender lives as long as this member: unreachable, but never a busy loop.
                std::future::pending::<()>().await;
            }
        }
    }

    pub fn check_not_removed(&self) -> Result<()> {
        match self.removed_error() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Records for good that this member was removed, and stops its Raft so it neither votes
    /// nor campaigns again. Idempotent.
    pub fn mark_removed(&self, why: &str) {
        let first = self.removed.send_if_modified(|slot| {
            if slot.is_some() {
                return false;
            }
            *slot = Some(identity::removed_message(&self.dir, why));
            true
        });
        if !first {
            return;
        }
        tracing::warn!(node = self.node_id, why, "this store member was removed");
        if let Err(err) = identity::write_removed(&self.dir, why) {
            tracing::error!(%err, "recording that this store member was removed");
        }
        if let Some(raft) = self.raft.get() {
            let raft = raft.clone();
            tokio::spawn(async move {
                let _ = raft.shutdown().await;
            });
        }
    }
}
