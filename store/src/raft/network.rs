//! Raft's transport, as openraft sees it. [`SingleNodeNetwork`] is a one-member cluster's: there
//! are no peers, so every RPC reports the target unreachable. [`PeerNetwork`] sends append
//! entries, vote and install snapshot over the peer connections of `client.rs` (mutual TLS),
//! each with the deadline openraft gives it. The store's Raft code path is the same either way.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, LogId};

use super::client::{CallError, Peers};
use super::local::LocalMember;
use super::wire::{Rejection, Request, Response};
use super::TypeConfig;

type NodeId = u64;

/// How long openraft waits before trying an unreachable peer again. Short: a restarted member
/// should be caught up soon after it is back.
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(200);

/// Hands out [`NoPeer`] connections.
#[derive(Debug, Clone, Default)]
pub struct SingleNodeNetwork;

/// A connection to a peer that a single-member cluster does not have.
#[derive(Debug)]
pub struct NoPeer {
    target: NodeId,
}

impl NoPeer {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, E> {
        let err = std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            format!(
                "node {} is not reachable: this server runs a one-member cluster",
                self.target
            ),
        );
        RPCError::Unreachable(Unreachable::new(&err))
    }
}

impl RaftNetworkFactory<TypeConfig> for SingleNodeNetwork {
    type Network = NoPeer;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> NoPeer {
        NoPeer { target }
    }
}

impl RaftNetwork<TypeConfig> for NoPeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }
}

/// This member's last durable log entry ([`super::LogStore::durable`]).
type Durable = tokio::sync::watch::Receiver<Option<LogId<NodeId>>>;

/// Raft over the peer connections. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PeerNetwork {
    peers: Arc<Peers>,
    local: Arc<LocalMember>,
    durable: Durable,
}

impl PeerNetwork {
    pub(crate) fn new(peers: Arc<Peers>, local: Arc<LocalMember>, durable: Durable) -> PeerNetwork {
        PeerNetwork {
            peers,
            local,
            durable,
        }
    }
}

/// One peer, as openraft's replication and election address it.
#[derive(Debug)]
pub struct PeerLink {
    peers: Arc<Peers>,
    local: Arc<LocalMember>,
    target: NodeId,
    addr: String,
    durable: Durable,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerLink;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerLink {
        PeerLink {
            peers: Arc::clone(&self.peers),
            local: Arc::clone(&self.local),
            target,
            addr: node.addr.clone(),
            durable: self.durable.clone(),
        }
    }
}

impl PeerLink {
    async fn call<E: std::error::Error>(
        &self,
        action: RPCTypes,
        request: Request,
        option: &RPCOption,
    ) -> Result<Response, RPCError<NodeId, BasicNode, E>> {
        let result = self
            .peers
            .call(self.target, &self.addr, request, option.hard_ttl())
            .await;
        result.map_err(|err| match err {
            CallError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&err)),
            CallError::Lost { .. } => RPCError::Network(NetworkError::new(&err)),
            CallError::Timeout { .. } => RPCError::Timeout(Timeout {
                action,
                id: self.local.node_id,
                target: self.target,
                timeout: option.hard_ttl(),
            }),
            CallError::Rejected {
                rejection: Rejection::SenderRemoved { ref why },
                ..
            } => {
                self.local.mark_removed(why);
                RPCError::Unreachable(Unreachable::new(&err))
            }
            CallError::Rejected { .. } => RPCError::Unreachable(Unreachable::new(&err)),
        })
    }

    fn unexpected<E: std::error::Error>(
        &self,
        response: &Response,
    ) -> RPCError<NodeId, BasicNode, E> {
        let err = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "node {} answered with an unexpected message: {response:?}",
                self.target
            ),
        );
        RPCError::Network(NetworkError::new(&err))
    }
}

/// The commit index to send: no further than this member's durable log.
fn clamp_commit(
    commit: Option<LogId<NodeId>>,
    durable: Option<LogId<NodeId>>,
) -> Option<LogId<NodeId>> {
    match (commit, durable) {
        (Some(c), Some(d)) if d.index < c.index => Some(d),
        (Some(_), None) => None,
        (commit, _) => commit,
    }
}

impl RaftNetwork<TypeConfig> for PeerLink {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        // The leader counts its own copy of an entry toward the commit quorum before that
        // copy is synced (`LogStore::durable`): followers learn only of commits it holds
        // durably, so none applies an entry that is not yet on a majority's disks.
        rpc.leader_commit = clamp_commit(rpc.leader_commit, *self.durable.borrow());
        match self
            .call(
                RPCTypes::AppendEntries,
                Request::AppendEntries(rpc),
                &option,
            )
            .await?
        {
            Response::AppendEntries(result) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self
            .call(
                RPCTypes::InstallSnapshot,
                Request::InstallSnapshot(rpc),
                &option,
            )
            .await?
        {
            Response::InstallSnapshot(result) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        match self
            .call(RPCTypes::Vote, Request::Vote(rpc), &option)
            .await?
        {
            Response::Vote(result) => {
                result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn id(index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(CommittedLeaderId::new(2, 1), index))
    }

    #[test]
    fn followers_hear_only_of_commits_the_leader_holds_durably() {
        assert_eq!(clamp_commit(id(10), id(7)), id(7));
        assert_eq!(clamp_commit(id(10), id(12)), id(10));
        assert_eq!(clamp_commit(id(10), None), None);
        assert_eq!(clamp_commit(None, id(3)), None);
    }
}
