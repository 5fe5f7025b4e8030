//! One member of a store cluster at work: where each request goes and what the leader does
//! with the ones it is sent.
//!
//! Writes, read indexes and membership changes run at the leader. When this member leads it
//! runs them itself; otherwise it forwards them over the peer connection, and a write comes
//! back with the log index that carried it, which this member waits to have applied before it
//! answers — so a client sees its own writes on the member it wrote through. A linearizable
//! read asks the leader for a read index (the leader confirms its leadership with a quorum, as
//! `Raft::ensure_linearizable` does), waits to have applied it, then reads locally.
//!
//! Every such request has a deadline (`request_timeout`, longer for membership changes). A
//! request is retried while it surely was not acted on (no leader known yet, leader
//! unreachable, the receiver no longer leads); a write whose fate is unknown is never retried.
//! Forwarded writes carry a tag: when the answer is lost with a leader that dies, the member
//! still answers success if a later leader commits the write (it sees its tag applied), and
//! fails with [`StoreError::NoQuorum`] saying the outcome is unknown otherwise.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft, RaftMetrics};
use serde::{Deserialize, Serialize};
use tokio::time::{timeout_at, Instant};

use super::client::{server_name, CallError, Peers};
use super::local::LocalMember;
use super::proposer::{ProposeError, Proposer};
use super::server::Handler;
use super::sm::SmShared;
use super::space::DiskSpace;
use super::wire::{Applied, Header, Refusal, Rejection, Request, Response};
use super::TypeConfig;
use crate::error::{Result, StoreError};
use crate::mvcc::{Command, Outcome};

type NodeId = u64;

/// How long to wait before asking again when the leader is unknown or just changed.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How long a removed member is given to hear the news.
const REMOVED_NOTICE_TIMEOUT: Duration = Duration::from_secs(2);

/// One member of the store cluster, as [`crate::RaftStore::members`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its Raft node id.
    pub id: u64,
    /// The peer address (`host:port`) the others reach it at.
    pub addr: String,
    /// A voter counts towards quorums; a learner only receives the log (a member being
    /// added is a learner until it has caught up).
    pub voter: bool,
}

/// The cluster's membership as its leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    /// The leader's node id.
    pub leader: Option<u64>,
    /// Every member, by id.
    pub members: Vec<Member>,
}

impl Members {
    fn from_metrics(metrics: &RaftMetrics<NodeId, BasicNode>) -> Members {
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        Members {
            leader: metrics.current_leader,
            members: membership
                .nodes()
                .map(|(id, node)| Member {
                    id: *id,
                    addr: node.addr.clone(),
                    voter: voters.contains(id),
                })
                .collect(),
        }
    }
}

/// Timeouts of requests that depend on other members.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Writes and linearizable reads.
    pub request: Duration,
    /// Adding a member (which includes its catching up) and removing one.
    pub membership: Duration,
}

/// Where a leader-side request runs.
enum Route {
    Here,
    Remote { id: NodeId, addr: String },
}

/// What a member shares between its store handle and its peer server.
pub(crate) struct Core {
    pub raft: Raft<TypeConfig>,
    pub shared: Arc<SmShared>,
    pub proposer: Proposer,
    pub local: Arc<LocalMember>,
    /// `None` for a one-member store without a peer transport.
    pub peers: Option<Arc<Peers>>,
    pub limits: Limits,
    /// One membership change at a time on this member (Raft allows one in flight anyway).
    pub membership_lock: tokio::sync::Mutex<()>,
    pub space: DiskSpace,
    /// See [`Core::next_tag`].
    pub tag_prefix: u64,
    pub tag_count: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("node_id", &self.local.node_id)
            .finish_non_exhaustive()
    }
}

fn no_quorum(what: &str, limit: Duration) -> StoreError {
    StoreError::NoQuorum(format!("{what} within {limit:?}"))
}

/// The refusal a leader-side answer carries, if any.
fn refusal(response: &Response) -> Option<&Refusal> {
    match response {
        Response::Write(Err(r))
        | Response::ReadIndex(Err(r))
        | Response::Changed(Err(r))
        | Response::Members(Err(r)) => Some(r),
        _ => None,
    }
}

fn unexpected(response: &Response) -> StoreError {
    StoreError::Unavailable(format!("unexpected answer from the leader: {response:?}"))
}

/// What to do with one attempt's answer to a leader-side request.
#[derive(Debug)]
enum Step {
    Done(Response),
    /// Ask again (the leader, once known): the request surely was not acted on, or acting on
    /// it twice does no harm.
    Retry,
    /// The leader's side says this member was removed.
    Removed(String),
    Fail(StoreError),
}

/// Decides [`Step`] from an attempt's answer: retry what surely was not acted on (no
/// connection, a receiver that does not lead or is stopping) and, for idempotent requests,
/// what may have been (no answer, no quorum yet); anything else is the answer.
fn next_step(answer: std::result::Result<Response, CallError>, idempotent: bool) -> Step {
    match answer {
        Ok(response) => match refusal(&response) {
            Some(Refusal::NotLeader { .. }) => Step::Retry,
            Some(Refusal::NoQuorum(_)) if idempotent => Step::Retry,
            _ => Step::Done(response),
        },
        Err(CallError::Unreachable { .. }) => Step::Retry,
        Err(CallError::Rejected {
            rejection: Rejection::SenderRemoved { why },
            ..
        }) => Step::Removed(why),
        Err(CallError::Rejected {
            rejection: Rejection::Stopped(_),
            ..
        }) => Step::Retry,
        Err(err @ CallError::Rejected { .. }) => {
            Step::Fail(StoreError::Unavailable(err.to_string()))
        }
        Err(CallError::Lost { .. } | CallError::Timeout { .. }) if idempotent => Step::Retry,
        Err(err) => Step::Fail(StoreError::NoQuorum(format!(
            "{err}; the request may or may not have taken effect"
        ))),
    }
}

/// Whether `committed` — this member's committed membership — shows that the sender of a
/// Raft message, acting on the membership at `sender_membership`, was removed: it leaves the
/// sender out and is newer. A member being added always acts on a membership naming it that
/// is at least as new, so it is never taken for a removed one.
fn sender_was_removed(
    committed: &openraft::StoredMembership<NodeId, BasicNode>,
    sender: NodeId,
    sender_membership: Option<openraft::LogId<NodeId>>,
) -> bool {
    let committed_at = *committed.log_id();
    committed_at.is_some()
        && committed.membership().get_node(&sender).is_none()
        && sender_membership < committed_at
}

impl Core {
    pub fn node_id(&self) -> NodeId {
        self.local.node_id
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.node_id())
    }

    fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Proposes a write and returns its outcome once this member has applied it.
    pub async fn propose(&self, command: Command) -> Result<Outcome> {
        self.local.check_not_removed()?;
        // This member must be able to store the write too (it answers once it applied it).
        self.space.check(Some(&command))?;
        if self.peers.is_none() {
            // A one-member store leads for as long as it runs: no deadline, as before.
            return self
                .proposer
                .propose(command)
                .await
                .map(|applied| applied.outcome)
                .map_err(ProposeError::into_store_error);
        }
        let deadline = Instant::now() + self.limits.request;
        super::trace::mark("propose", 0);
        // Tagged, so that this member recognises the write when it applies it even if the
        // answer is lost with a leader that dies (see the end).
        let tag = self.next_tag();
        let mut applied_here = self.shared.expect(tag);
        let term_at_send = self.raft.metrics().borrow().current_term;
        let tagged = Command::Tagged {
            tag,
            command: Box::new(command),
        };
        let via_leader = async {
            let answer = self
                .at_leader(deadline, false, "the write was not committed", || {
                    Request::Write(tagged.clone())
                })
                .await;
            match answer {
                Ok(Response::Write(Ok(Applied { outcome, index }))) => {
                    super::trace::mark("propose.answer", index);
                    self.wait_applied(index, deadline, "the write")
                        .await
                        .map(|()| outcome)
                }
                Ok(Response::Write(Err(refusal))) => {
                    Err(refusal.into_store_error(self.leader().unwrap_or(0)))
                }
                Ok(other) => Err(unexpected(&other)),
                Err(err) => Err(err),
            }
        };
        // Whichever comes first answers: the leader's answer (then this member's applying the
        // index it names), or this member applying the write itself — which is all the answer
        // would say, since an entry is applied only once it is committed and durable on a
        // majority including the leader (`sm.rs`). On the leader that skips the hand-offs from
        // the state machine back through Raft's core to the proposer; on a follower, the wait
        // for the leader's answer when the commit reached this member first.
        let result = tokio::select! {
            biased;
            Ok(outcome) = &mut applied_here => Ok(outcome),
            result = via_leader => result,
        };
        super::trace::mark("propose.done", 0);
        match result {
            // The fate of the write is unknown (its leader died or lost its quorum with it),
            // but a later leader may still commit it: then this member applies it, and it
            // happened.
            //
            // The leader it went to appended it in the term this member knew of when sending,
            // so once this member applies an entry of a later term — the next leader's first
            // — every entry of that term that will ever commit has been applied: the wait is
            // over. (Should that leader have been in a later term unknown here, stopping early
            // only gives the answer the write would have had without its tag.)
            Err(StoreError::NoQuorum(why)) => {
                let left = deadline.saturating_duration_since(Instant::now());
                let wait = self.raft.wait(Some(left));
                let later_term = wait.metrics(
                    move |m| {
                        m.last_applied
                            .is_some_and(|id| id.leader_id.term > term_at_send)
                    },
                    "an entry of a later term applied",
                );
                let outcome = tokio::select! {
                    biased;
                    outcome = &mut applied_here => outcome.ok(),
                    // Applied in the same batch as that entry, the write is there already.
                    _ = later_term => applied_here.try_recv().ok(),
                };
                match outcome {
                    Some(outcome) => Ok(outcome),
                    None => {
                        self.shared.forget(tag);
                        Err(StoreError::NoQuorum(why))
                    }
                }
            }
            other => {
                self.shared.forget(tag);
                other
            }
        }
    }

    /// A tag no other write of this cluster carries: this run's random prefix and a count.
    fn next_tag(&self) -> u128 {
        (u128::from(self.tag_prefix) << 64)
            | u128::from(
                self.tag_count
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            )
    }

    /// Returns once a read of this member's state machine is linearizable.
    pub async fn linearize(&self) -> Result<()> {
        self.local.check_not_removed()?;
        if self.peers.is_none() {
            return self
                .raft
                .ensure_linearizable()
                .await
                .map(|_| ())
                .map_err(|e| StoreError::Unavailable(format!("linearizable read: {e}")));
        }
        let deadline = Instant::now() + self.limits.request;
        let response = self
            .at_leader(deadline, true, "no leader confirmed a read index", || {
                Request::ReadIndex
            })
            .await?;
        match response {
            Response::ReadIndex(Ok(index)) => self.wait_applied(index, deadline, "the read").await,
            Response::ReadIndex(Err(refusal)) => {
                Err(refusal.into_store_error(self.leader().unwrap_or(0)))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// See [`crate::RaftStore::add_member`].
    pub async fn add_member(&self, id: NodeId, addr: String) -> Result<()> {
        self.local.check_not_removed()?;
        if id == 0 {
            return Err(StoreError::Membership("node id 0 is not allowed".into()));
        }
        server_name(&addr).map_err(StoreError::Membership)?;
        if self.peers.is_none() {
            return Err(StoreError::Membership(
                "this store runs without a peer transport: it cannot have other members".into(),
            ));
        }
        let deadline = Instant::now() + self.limits.membership;
        let response = self
            .at_leader(deadline, true, "the member was not added", || {
                Request::AddMember {
                    id,
                    addr: addr.clone(),
                }
            })
            .await?;
        self.changed(response)
    }

    /// See [`crate::RaftStore::remove_member`].
    pub async fn remove_member(&self, id: NodeId) -> Result<()> {
        self.local.check_not_removed()?;
        let deadline = Instant::now() + self.limits.membership;
        let response = self
            .at_leader(deadline, false, "the member was not removed", || {
                Request::RemoveMember { id }
            })
            .await?;
        self.changed(response)
    }

    fn changed(&self, response: Response) -> Result<()> {
        match response {
            Response::Changed(Ok(())) => Ok(()),
            Response::Changed(Err(refusal)) => {
                Err(refusal.into_store_error(self.leader().unwrap_or(0)))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// See [`crate::RaftStore::members`].
    pub async fn members(&self) -> Result<Members> {
        self.local.check_not_removed()?;
        if self.peers.is_none() {
            return Ok(Members::from_metrics(&self.raft.metrics().borrow()));
        }
        let deadline = Instant::now() + self.limits.request;
        match self
            .at_leader(deadline, true, "no leader answered", || Request::Members)
            .await?
        {
            Response::Members(Ok(members)) => Ok(members),
            Response::Members(Err(refusal)) => {
                Err(refusal.into_store_error(self.leader().unwrap_or(0)))
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Waits until a leader is known: this member or a peer.
    async fn route(&self, deadline: Instant) -> Result<Route> {
        let mut metrics = self.raft.metrics();
        loop {
            {
                let m = metrics.borrow_and_update();
                if let Some(leader) = m.current_leader {
                    if leader == self.node_id() {
                        return Ok(Route::Here);
                    }
                    if let Some(node) = m.membership_config.membership().get_node(&leader) {
                        return Ok(Route::Remote {
                            id: leader,
                            addr: node.addr.clone(),
                        });
                    }
                }
            }
            self.local.check_not_removed()?;
            match timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return Err(self
                        .local
                        .removed_error()
                        .unwrap_or_else(|| StoreError::Unavailable("raft stopped".into())))
                }
                Err(_) => {
                    return Err(no_quorum(
                        "no leader was known to this member",
                        self.limits.request,
                    ))
                }
            }
        }
    }

    /// Runs a leader-side request at the leader, here or over the peer connection, retrying
    /// until `deadline` while it surely was not acted on (and, when `idempotent`, also when
    /// that is unknown).
    async fn at_leader(
        &self,
        deadline: Instant,
        idempotent: bool,
        failure: &str,
        request: impl Fn() -> Request,
    ) -> Result<Response> {
        let limit = deadline.saturating_duration_since(Instant::now());
        loop {
            let answer = match self.route(deadline).await? {
                Route::Here => match timeout_at(deadline, self.lead(request())).await {
                    Ok(response) => Ok(response),
                    Err(_) => return Err(no_quorum(failure, limit)),
                },
                Route::Remote { id, addr } => {
                    let Some(peers) = &self.peers else {
                        return Err(StoreError::Unavailable(format!(
                            "node {id} leads but this member has no peer transport"
                        )));
                    };
                    let left = deadline.saturating_duration_since(Instant::now());
                    peers.call(id, &addr, request(), left).await
                }
            };
            match next_step(answer, idempotent) {
                Step::Done(response) => return Ok(response),
                Step::Retry => self.pause(deadline, failure, limit).await?,
                Step::Removed(why) => {
                    self.local.mark_removed(&why);
                    return Err(StoreError::Removed(why));
                }
                Step::Fail(err) => return Err(err),
            }
        }
    }

    async fn pause(&self, deadline: Instant, failure: &str, limit: Duration) -> Result<()> {
        let now = Instant::now();
        if now >= deadline {
            return Err(no_quorum(failure, limit));
        }
        tokio::time::sleep_until((now + RETRY_PAUSE).min(deadline)).await;
        self.local.check_not_removed()
    }

    /// Waits until this member has applied the log up to `index`.
    async fn wait_applied(&self, index: u64, deadline: Instant, what: &str) -> Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(left))
            .applied_index_at_least(Some(index), what)
            .await
            .map(|_| ())
            .map_err(|e| match e {
                openraft::metrics::WaitError::Timeout(..) => StoreError::NoQuorum(format!(
                    "{what} was committed at log index {index} but this member did not apply \
                     it within {:?}",
                    self.limits.request
                )),
                openraft::metrics::WaitError::ShuttingDown => self
                    .local
                    .removed_error()
                    .unwrap_or_else(|| StoreError::Unavailable("raft stopped".into())),
            })
    }

    /// Runs a leader-side request on this member, which must lead: anything else is refused
    /// with `NotLeader` before it is acted on.
    async fn lead(&self, request: Request) -> Response {
        match request {
            Request::Write(command) => Response::Write(self.lead_write(command).await),
            Request::ReadIndex => Response::ReadIndex(self.lead_read_index().await),
            Request::AddMember { id, addr } => Response::Changed(self.lead_add(id, addr).await),
            Request::RemoveMember { id } => Response::Changed(self.lead_remove(id).await),
            Request::Members => Response::Members(self.lead_members()),
            other => Response::Rejected(Rejection::Stopped(format!(
                "{} is not a request for the leader",
                other.kind()
            ))),
        }
    }

    fn not_leader(&self) -> Option<Refusal> {
        let leader = self.leader();
        (leader != Some(self.node_id())).then_some(Refusal::NotLeader { leader })
    }

    async fn lead_write(&self, command: Command) -> std::result::Result<Applied, Refusal> {
        if let Some(refusal) = self.not_leader() {
            return Err(refusal);
        }
        super::trace::mark("lead.write", 0);
        self.space.check(Some(&command))?;
        match tokio::time::timeout(self.limits.request, self.proposer.propose(command)).await {
            Ok(Ok(applied)) => Ok(applied),
            Ok(Err(err)) => Err(err.into_store_error().into()),
            Err(_) => Err(Refusal::NoQuorum(format!(
                "the leader could not commit the write within {:?}; it may still be applied",
                self.limits.request
            ))),
        }
    }

    async fn lead_read_index(&self) -> std::result::Result<u64, Refusal> {
        if let Some(refusal) = self.not_leader() {
            return Err(refusal);
        }
        match tokio::time::timeout(self.limits.request, self.raft.get_read_log_id()).await {
            Ok(Ok((read, _applied))) => Ok(read.map_or(0, |id| id.index)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(Refusal::NotLeader {
                    leader: f.leader_id,
                })
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => {
                Err(Refusal::NoQuorum(q.to_string()))
            }
            Ok(Err(RaftError::Fatal(f))) => Err(Refusal::Unavailable(format!("raft stopped: {f}"))),
            Err(_) => Err(Refusal::NoQuorum(format!(
                "the leader could not confirm its leadership within {:?}",
                self.limits.request
            ))),
        }
    }

    fn lead_members(&self) -> std::result::Result<Members, Refusal> {
        if let Some(refusal) = self.not_leader() {
            return Err(refusal);
        }
        Ok(Members::from_metrics(&self.raft.metrics().borrow()))
    }

    /// Runs a membership change, waiting out one still in progress.
    async fn change(
        &self,
        changes: ChangeMembers<NodeId, BasicNode>,
        deadline: Instant,
    ) -> std::result::Result<(), Refusal> {
        loop {
            let result = match changes.clone() {
                ChangeMembers::AddNodes(nodes) if nodes.len() == 1 => {
                    let Some((id, node)) = nodes.into_iter().next() else {
                        return Ok(());
                    };
                    self.raft.add_learner(id, node, false).await
                }
                changes => self.raft.change_membership(changes, false).await,
            };
            match result {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    return Err(Refusal::NotLeader {
                        leader: f.leader_id,
                    })
                }
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_),
                ))) if Instant::now() < deadline => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                    return Err(Refusal::Membership(e.to_string()))
                }
                Err(RaftError::Fatal(f)) => {
                    return Err(Refusal::Unavailable(format!("raft stopped: {f}")))
                }
            }
        }
    }

    async fn lead_add(&self, id: NodeId, addr: String) -> std::result::Result<(), Refusal> {
        if let Some(refusal) = self.not_leader() {
            return Err(refusal);
        }
        let _one_at_a_time = self.membership_lock.lock().await;
        let deadline = Instant::now() + self.limits.membership;
        let (known, voter) = {
            let metrics = self.raft.metrics().borrow().clone();
            let membership = metrics.membership_config.membership();
            let known = membership.get_node(&id).map(|node| node.addr.clone());
            (known, membership.voter_ids().any(|v| v == id))
        };
        match known {
            Some(current) if current != addr => {
                return Err(Refusal::Membership(format!(
                    "node {id} is already a member at {current}, not {addr}"
                )))
            }
            Some(_) if voter => return Ok(()),
            Some(_) => {}
            None => {
                let node = BasicNode::new(&addr);
                self.change(ChangeMembers::AddNodes([(id, node)].into()), deadline)
                    .await?;
                tracing::info!(node = id, %addr, "added a store learner");
            }
        }
        // A learner becomes a voter once it has the log up to where the leader was when it
        // was added (or later), so it does not hold up commits while it catches up.
        let target = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
        let left = deadline.saturating_duration_since(Instant::now());
        self.raft
            .wait(Some(left))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id).cloned().flatten())
                        .is_some_and(|matched| matched.index >= target)
                },
                "new member caught up",
            )
            .await
            .map_err(|e| {
                Refusal::Membership(format!(
                    "node {id} at {addr} did not catch up with the log ({e}); is it running, \
                     reachable, and does it hold a certificate of the cluster's CA?"
                ))
            })?;
        self.change(ChangeMembers::AddVoterIds([id].into()), deadline)
            .await?;
        tracing::info!(node = id, %addr, "store learner promoted to voter");
        Ok(())
    }

    async fn lead_remove(&self, id: NodeId) -> std::result::Result<(), Refusal> {
        if let Some(refusal) = self.not_leader() {
            return Err(refusal);
        }
        let _one_at_a_time = self.membership_lock.lock().await;
        let deadline = Instant::now() + self.limits.membership;
        let (addr, voters) = {
            let metrics = self.raft.metrics().borrow().clone();
            let membership = metrics.membership_config.membership();
            let addr = membership.get_node(&id).map(|node| node.addr.clone());
            (addr, membership.voter_ids().collect::<BTreeSet<_>>())
        };
        let Some(addr) = addr else {
            return Err(Refusal::Membership(format!("node {id} is not a member")));
        };
        if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(Refusal::Membership(format!(
                    "node {id} is the only voter: a cluster cannot remove its last voter"
                )));
            }
            self.change(ChangeMembers::RemoveVoters([id].into()), deadline)
                .await?;
        } else {
            self.change(ChangeMembers::RemoveNodes([id].into()), deadline)
                .await?;
        }
        let why = format!(
            "node {id} was removed from store cluster {} by node {}",
            self.local.cluster_id().unwrap_or_default(),
            self.node_id()
        );
        tracing::info!(node = id, %addr, "removed a store member");
        if id == self.node_id() {
            self.local.mark_removed(&why);
        } else if let Some(peers) = &self.peers {
            // Best effort: a member that misses this learns it from the first peer it asks
            // for a vote (see `sender_removed`).
            let peers = Arc::clone(peers);
            tokio::spawn(async move {
                let notice = Request::Removed { why };
                if let Err(err) = peers.call(id, &addr, notice, REMOVED_NOTICE_TIMEOUT).await {
                    tracing::info!(node = id, %err, "could not tell a removed member");
                }
            });
        }
        Ok(())
    }

    /// Refuses a Raft message from a member that was removed (see [`sender_was_removed`]);
    /// the refusal tells it so.
    fn sender_removed(&self, header: &Header) -> Option<Response> {
        let (_, committed) = self.shared.applied();
        if !sender_was_removed(&committed, header.from, header.membership) {
            return None;
        }
        Some(Response::Rejected(Rejection::SenderRemoved {
            why: format!(
                "node {} was removed from store cluster {}: node {} has committed a membership \
                 without it",
                header.from,
                self.local.cluster_id().unwrap_or_default(),
                self.node_id()
            ),
        }))
    }
}

/// The index a traced append is known by: its last entry's, or for one without entries (a
/// commit or heartbeat) the commit index it carries, with the top bit set to tell them apart.
pub(super) fn append_trace_index(rpc: &openraft::raft::AppendEntriesRequest<TypeConfig>) -> u64 {
    match rpc.entries.last() {
        Some(entry) => entry.log_id.index,
        None => rpc.leader_commit.map_or(0, |c| c.index) | (1 << 63),
    }
}

impl Handler for Core {
    async fn handle(&self, header: Header, request: Request) -> Response {
        if let Some(err) = self.local.removed_error() {
            return Response::Rejected(Rejection::Stopped(err.to_string()));
        }
        if let Err((ours, theirs)) = self.local.check_cluster(header.cluster.as_deref()) {
            return Response::Rejected(Rejection::ClusterMismatch { ours, theirs });
        }
        match request {
            Request::AppendEntries(rpc) => {
                if let Some(refused) = self.sender_removed(&header) {
                    return refused;
                }
                // Turned away rather than failing in the log store, which would stop Raft;
                // the leader retries until there is room again.
                if !rpc.entries.is_empty() {
                    if let Err(err) = self.space.check(None) {
                        return Response::Rejected(Rejection::Stopped(err.to_string()));
                    }
                }
                let traced = append_trace_index(&rpc);
                super::trace::mark("srv.append", traced);
                let response = Response::AppendEntries(self.raft.append_entries(rpc).await);
                super::trace::mark("srv.append.done", traced);
                response
            }
            Request::Vote(rpc) => match self.sender_removed(&header) {
                Some(refused) => refused,
                None => Response::Vote(self.raft.vote(rpc).await),
            },
            Request::InstallSnapshot(rpc) => {
                if let Err(err) = self.space.check(None) {
                    return Response::Rejected(Rejection::Stopped(err.to_string()));
                }
                Response::InstallSnapshot(self.raft.install_snapshot(rpc).await)
            }
            Request::Removed { why } => {
                // Only the leader removes members; a notice from anyone else is ignored (a
                // member really removed learns it anyway when it next asks for votes).
                if self.leader() == Some(header.from) {
                    self.local.mark_removed(&why);
                }
                Response::Ack
            }
            leader_side => self.lead(leader_side).await,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use openraft::{CommittedLeaderId, LogId, Membership, StoredMembership};

    use super::*;

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn membership(
        at: Option<LogId<NodeId>>,
        voters: &[NodeId],
    ) -> StoredMembership<NodeId, BasicNode> {
        let nodes: BTreeMap<NodeId, BasicNode> = voters
            .iter()
            .map(|id| (*id, BasicNode::new(format!("10.0.0.{id}:6444"))))
            .collect();
        StoredMembership::new(
            at,
            Membership::new(vec![voters.iter().copied().collect()], nodes),
        )
    }

    #[test]
    fn a_sender_is_removed_only_by_a_newer_membership_without_it() {
        let committed = membership(Some(log_id(2, 10)), &[1, 2]);
        // Node 3 acts on an older membership that still had it: removed.
        assert!(sender_was_removed(&committed, 3, Some(log_id(1, 5))));
        assert!(sender_was_removed(&committed, 3, None));
        // A member of the committed membership is not.
        assert!(!sender_was_removed(&committed, 2, Some(log_id(1, 5))));
        // A member being added acts on a membership at least as new: not removed, even though
        // this member has not committed the membership that adds it yet.
        assert!(!sender_was_removed(&committed, 3, Some(log_id(2, 10))));
        assert!(!sender_was_removed(&committed, 3, Some(log_id(2, 11))));
        // A member that never joined anything knows no one as removed.
        assert!(!sender_was_removed(&membership(None, &[]), 3, None));
    }

    fn unreachable() -> CallError {
        CallError::Unreachable {
            target: 1,
            addr: "a:1".into(),
            why: "refused".into(),
        }
    }

    #[test]
    fn only_what_surely_was_not_done_is_retried_for_writes() {
        let write = false;
        assert!(matches!(next_step(Err(unreachable()), write), Step::Retry));
        assert!(matches!(
            next_step(
                Ok(Response::Write(Err(Refusal::NotLeader { leader: Some(2) }))),
                write
            ),
            Step::Retry
        ));
        for unknown in [
            CallError::Lost { target: 1 },
            CallError::Timeout {
                target: 1,
                timeout: Duration::from_secs(1),
            },
        ] {
            match next_step(Err(unknown), write) {
                Step::Fail(StoreError::NoQuorum(m)) => assert!(m.contains("may or may not")),
                other => panic!("{other:?}"),
            }
        }
        // The leader's own "no quorum" is the answer: the write may be in its log.
        assert!(matches!(
            next_step(
                Ok(Response::Write(Err(Refusal::NoQuorum("x".into())))),
                write
            ),
            Step::Done(_)
        ));
    }

    #[test]
    fn idempotent_requests_are_retried_until_answered() {
        let read = true;
        for unknown in [
            CallError::Lost { target: 1 },
            CallError::Timeout {
                target: 1,
                timeout: Duration::from_secs(1),
            },
            unreachable(),
        ] {
            assert!(matches!(next_step(Err(unknown), read), Step::Retry));
        }
        assert!(matches!(
            next_step(
                Ok(Response::ReadIndex(Err(Refusal::NoQuorum("x".into())))),
                read
            ),
            Step::Retry
        ));
        assert!(matches!(
            next_step(Ok(Response::ReadIndex(Ok(7))), read),
            Step::Done(Response::ReadIndex(Ok(7)))
        ));
    }

    #[test]
    fn rejections_end_the_request_or_wait_for_the_leader() {
        let rejected = |rejection| CallError::Rejected {
            target: 1,
            rejection,
        };
        assert!(matches!(
            next_step(Err(rejected(Rejection::SenderRemoved { why: "gone".into() })), true),
            Step::Removed(why) if why == "gone"
        ));
        assert!(matches!(
            next_step(Err(rejected(Rejection::Stopped("stopping".into()))), false),
            Step::Retry
        ));
        assert!(matches!(
            next_step(
                Err(rejected(Rejection::ClusterMismatch {
                    ours: "a".into(),
                    theirs: "b".into()
                })),
                true
            ),
            Step::Fail(StoreError::Unavailable(_))
        ));
    }
}
