//! Coalescing concurrent writes into one Raft entry. openraft 0.9 appends each proposal as its
//! own log entry and waits for that append to be durable before taking the next, so proposals
//! sent one by one reach the disk one fsync each. The proposer queues them instead and sends
//! whatever has gathered as one [`Command::Batch`] while earlier batches are in flight: under
//! load many writes share an fsync (as etcd's proposal batching does). A write that finds
//! nothing queued and room in flight goes to Raft from its caller's task, as the plain
//! command: a lone writer's latency is mostly hand-offs between tasks, and queueing it would
//! add two (to the batching task and the task that waits on Raft for the batch).
//!
//! Each write learns its outcome and the index of the log entry that carried it (a member that
//! forwarded the write waits to have applied that index before it answers its caller).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::wire::Applied;
use super::TypeConfig;
use crate::error::StoreError;
use crate::mvcc::{Command, Outcome};

/// Batches in flight at once: one being made durable while the next gathers and queues.
const MAX_IN_FLIGHT: usize = 2;
/// Commands in one batch at most.
const MAX_BATCH_COMMANDS: usize = 1024;
/// Bytes of keys and values in one batch at most (one value alone may exceed it).
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

type Reply = oneshot::Sender<Result<Applied, ProposeError>>;

/// Why a proposal failed.
#[derive(Debug, Clone)]
pub enum ProposeError {
    /// Raft answered that this member does not lead (any more). That happens when the
    /// proposal reached Raft after leadership moved, but also when leadership moved after it
    /// was appended and the new leader overwrote it — then a later leader may still commit it
    /// — so the write's outcome is unknown and it must not be retried blindly.
    LeaderChanged(Option<u64>),
    Failed(StoreError),
}

impl ProposeError {
    /// The error a caller of this member sees.
    pub fn into_store_error(self) -> StoreError {
        match self {
            ProposeError::LeaderChanged(leader) => StoreError::NoQuorum(format!(
                "leadership moved (to {}) while the write was in flight; it may or may not \
                 have been applied",
                leader.map_or_else(|| "an unknown node".to_string(), |id| format!("node {id}"))
            )),
            ProposeError::Failed(err) => err,
        }
    }
}

/// The handle writes go through. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::UnboundedSender<(Command, Reply)>,
    raft: Raft<TypeConfig>,
    in_flight: Arc<Semaphore>,
    /// Proposals sent to the batching task and not yet taken by it.
    queued: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Proposer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposer")
            .field("queued", &self.queued.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Proposer {
    /// Starts the batching task for `raft`; it ends when every handle is dropped.
    pub fn start(raft: Raft<TypeConfig>) -> Proposer {
        let (queue, rx) = mpsc::unbounded_channel();
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let queued = Arc::new(AtomicUsize::new(0));
        tokio::spawn(batch_loop(
            raft.clone(),
            rx,
            Arc::clone(&in_flight),
            Arc::clone(&queued),
        ));
        Proposer {
            queue,
            raft,
            in_flight,
            queued,
        }
    }

    /// Proposes one command and waits for its outcome once it is durable and applied.
    pub async fn propose(&self, command: Command) -> Result<Applied, ProposeError> {
        if self.queued.load(Ordering::Acquire) == 0 {
            if let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() {
                super::trace::mark("proposer.direct", 0);
                let result = self.raft.client_write(command).await;
                drop(permit);
                return result
                    .map(|response| Applied {
                        outcome: response.data,
                        index: response.log_id.index,
                    })
                    .map_err(raft_write_error);
            }
        }
        let (reply, outcome) = oneshot::channel();
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.queue.send((command, reply)).map_err(|_| {
            ProposeError::Failed(StoreError::Unavailable("the store is shutting down".into()))
        })?;
        outcome.await.map_err(|_| {
            ProposeError::Failed(StoreError::Unavailable(
                "the store stopped before answering".into(),
            ))
        })?
    }
}

fn command_bytes(command: &Command) -> usize {
    match command {
        Command::Create { key, value } | Command::Put { key, value } => key.len() + value.len(),
        Command::Update { key, value, .. } => key.len() + value.len(),
        Command::Delete { key, .. } => key.len(),
        Command::Compact { .. } => 8,
        Command::Batch(commands) => commands.iter().map(command_bytes).sum(),
        Command::Tagged { command, .. } => 16 + command_bytes(command),
    }
}

async fn batch_loop(
    raft: Raft<TypeConfig>,
    mut rx: mpsc::UnboundedReceiver<(Command, Reply)>,
    in_flight: Arc<Semaphore>,
    queued: Arc<AtomicUsize>,
) {
    let mut carried: Option<(Command, Reply)> = None;
    loop {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(item) => item,
            None => match rx.recv().await {
                Some(item) => {
                    queued.fetch_sub(1, Ordering::AcqRel);
                    item
                }
                None => return,
            },
        };
        super::trace::mark("proposer.batch", 0);
        let mut bytes = command_bytes(&first.0);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS {
            let Ok(item) = rx.try_recv() else { break };
            queued.fetch_sub(1, Ordering::AcqRel);
            bytes += command_bytes(&item.0);
            if bytes > MAX_BATCH_BYTES {
                carried = Some(item);
                break;
            }
            batch.push(item);
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let (mut commands, replies): (Vec<Command>, Vec<Reply>) = batch.into_iter().unzip();
            let command = match commands.len() {
                1 => commands.pop().unwrap_or(Command::Batch(Vec::new())),
                _ => Command::Batch(commands),
            };
            super::trace::mark("proposer.submit", 0);
            let result = raft.client_write(command).await;
            super::trace::mark(
                "proposer.written",
                result.as_ref().map_or(0, |r| r.log_id.index),
            );
            drop(permit);
            match result {
                Ok(response) => {
                    let index = response.log_id.index;
                    match response.data {
                        Outcome::Batch(outcomes) if replies.len() > 1 => {
                            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                                let _ = reply.send(Ok(Applied { outcome, index }));
                            }
                        }
                        outcome => {
                            for reply in replies {
                                let _ = reply.send(Ok(Applied {
                                    outcome: outcome.clone(),
                                    index,
                                }));
                            }
                        }
                    }
                }
                Err(err) => {
                    let err = raft_write_error(err);
                    for reply in replies {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
            }
        });
    }
}

/// Maps Raft's write errors to the store's.
fn raft_write_error(err: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> ProposeError {
    match err {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            ProposeError::LeaderChanged(f.leader_id)
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ProposeError::Failed(StoreError::Unavailable(e.to_string()))
        }
        RaftError::Fatal(fatal) => {
            ProposeError::Failed(StoreError::Unavailable(format!("raft stopped: {fatal}")))
        }
    }
}
