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

/// The commit index to send with an append: no further than this member's durable log. The
/// leader counts its own copy of an entry toward the commit quorum before that copy is synced
/// (`LogStore::durable`); followers learn only of commits it holds durably, so none applies an
/// entry that is not yet on a majority's disks.
///
/// An append without entries is there to carry a new commit index (or it is a heartbeat): it
/// waits, at most `wait`, for the leader's sync to reach it, since a commit index held back
/// here would otherwise reach the follower only with the next heartbeat. An append with
/// entries does not wait (that would serialize replication behind the leader's sync again);
/// the commit it holds back follows with a later append.
async fn commit_to_send(
    rpc: &AppendEntriesRequest<TypeConfig>,
    durable: &mut Durable,
    wait: Duration,
) -> Option<LogId<NodeId>> {
    let commit = rpc.leader_commit;
    if let (true, Some(commit)) = (rpc.entries.is_empty(), commit) {
        let reached = durable.wait_for(|d| d.is_some_and(|d| d.index >= commit.index));
        // A failed log or a slow sync leaves the clamp below to decide.
        let _ = tokio::time::timeout(wait, reached).await;
    }
    let durable = *durable.borrow();
    clamp_commit(commit, durable)
}

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
        let traced = super::cluster::append_trace_index(&rpc);
        super::trace::mark("net.append", traced);
        rpc.leader_commit = commit_to_send(&rpc, &mut self.durable, option.soft_ttl()).await;
        super::trace::mark("net.send", traced);
        let response = self
            .call(
                RPCTypes::AppendEntries,
                Request::AppendEntries(rpc),
                &option,
            )
            .await;
        super::trace::mark("net.reply", traced);
        match response? {
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn id(index: u64) -> Option<LogId<NodeId>> {
        Some(LogId::new(CommittedLeaderId::new(2, 1), index))
    }

    /// An append from leader node 1 in term 2 committing `commit`, with entries from
    /// `entries_from` to `commit + 1` (none for `None`).
    fn append(commit: u64, entries_from: Option<u64>) -> AppendEntriesRequest<TypeConfig> {
        let entries = entries_from.map_or(Vec::new(), |from| {
            (from..=commit + 1)
                .map(|index| openraft::Entry {
                    log_id: LogId::new(CommittedLeaderId::new(2, 1), index),
                    payload: openraft::EntryPayload::Blank,
                })
                .collect()
        });
        AppendEntriesRequest {
            vote: openraft::Vote::new_committed(2, 1),
            prev_log_id: id(commit),
            leader_commit: id(commit),
            entries,
        }
    }

    #[tokio::test]
    async fn commit_only_appends_wait_for_the_leaders_sync() {
        let (durable, mut rx) = tokio::sync::watch::channel(id(5));
        let wait = Duration::from_secs(5);
        // With entries: sent at once, clamped.
        assert_eq!(
            commit_to_send(&append(8, Some(8)), &mut rx, wait).await,
            id(5)
        );
        // Without: held until the sync reaches the commit.
        let mut waiting_rx = rx.clone();
        let waiting =
            tokio::spawn(
                async move { commit_to_send(&append(8, None), &mut waiting_rx, wait).await },
            );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        durable.send_replace(id(9));
        assert_eq!(waiting.await.unwrap(), id(8));
        // A sync that does not come in time: sent clamped.
        let short = Duration::from_millis(20);
        assert_eq!(
            commit_to_send(&append(12, None), &mut rx, short).await,
            id(9)
        );
        // A failed log: sent clamped, not held.
        drop(durable);
        assert_eq!(
            commit_to_send(&append(12, None), &mut rx, wait).await,
            id(9)
        );
    }

    #[test]
    fn followers_hear_only_of_commits_the_leader_holds_durably() {
        assert_eq!(clamp_commit(id(10), id(7)), id(7));
        assert_eq!(clamp_commit(id(10), id(12)), id(10));
        assert_eq!(clamp_commit(id(10), None), None);
        assert_eq!(clamp_commit(None, id(3)), None);
    }
}
