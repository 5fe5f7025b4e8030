//! The peer protocol between store members: what travels over a peer connection and how it is
//! framed. Pure: no sockets, no TLS (see `client.rs` and `server.rs`).
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of `bincode`. Each request
//! carries an id that its response repeats, so one connection carries many requests at once
//! (replication, votes, forwarded writes and reads) and answers may come back in any order.
//! Besides Raft's three RPCs the protocol carries Shoal's own: a write or membership change
//! forwarded to the leader, a read index asked of the leader, and the notice a removed member
//! gets.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::LogId;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::cluster::Members;
use super::TypeConfig;
use crate::error::StoreError;
use crate::mvcc::{Command, Outcome};

type NodeId = u64;

/// The largest frame either side accepts. Raft appends are bounded by the payload-entry limit
/// times the largest batch (`proposer.rs`), snapshots travel in chunks.
pub(crate) const MAX_FRAME_BYTES: usize = 512 * 1024 * 1024;

/// Who sends a request, as the receiver needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Header {
    /// The sender's Raft node id.
    pub from: NodeId,
    /// The sender's cluster id (`None` only from a member still waiting to join).
    pub cluster: Option<String>,
    /// The log id of the membership the sender acts on: lets a receiver tell a removed
    /// member that a later membership, already committed, left it out.
    pub membership: Option<LogId<NodeId>>,
}

/// One request and its id.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RequestFrame {
    pub id: u64,
    pub header: Header,
    pub body: Request,
}

/// One response, with the id of the request it answers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ResponseFrame {
    pub id: u64,
    pub body: Response,
}

/// What one member asks of another.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A write forwarded to the leader.
    Write(Command),
    /// The leader's commit index once it has confirmed its leadership with a quorum.
    ReadIndex,
    /// Add a member (learner, then voter once caught up); to the leader.
    AddMember {
        id: NodeId,
        addr: String,
    },
    /// Remove a member; to the leader.
    RemoveMember {
        id: NodeId,
    },
    /// The leader's view of the membership.
    Members,
    /// Tells the receiver it was removed from the cluster.
    Removed {
        why: String,
    },
}

impl Request {
    /// A short name for logs and errors.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Request::AppendEntries(_) => "append-entries",
            Request::Vote(_) => "vote",
            Request::InstallSnapshot(_) => "install-snapshot",
            Request::Write(_) => "write",
            Request::ReadIndex => "read-index",
            Request::AddMember { .. } => "add-member",
            Request::RemoveMember { .. } => "remove-member",
            Request::Members => "members",
            Request::Removed { .. } => "removed",
        }
    }
}

/// A write the leader applied: its outcome and the log index that carried it, which the
/// forwarding member waits to have applied itself before it answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Applied {
    pub outcome: Outcome,
    pub index: u64,
}

/// The answers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Response {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Write(Result<Applied, Refusal>),
    ReadIndex(Result<u64, Refusal>),
    /// For `AddMember` and `RemoveMember`.
    Changed(Result<(), Refusal>),
    Members(Result<Members, Refusal>),
    /// For `Removed`.
    Ack,
    /// The request was refused before it reached Raft.
    Rejected(Rejection),
}

/// Why the leader-side part of a forwarded request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Refusal {
    /// The receiver is not (or no longer) the leader; nothing was done, so the sender may
    /// retry with the leader named here, if any.
    NotLeader {
        leader: Option<NodeId>,
    },
    NoQuorum(String),
    NoSpace(String),
    Membership(String),
    Removed(String),
    Unavailable(String),
}

impl From<StoreError> for Refusal {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NoQuorum(m) => Refusal::NoQuorum(m),
            StoreError::NoSpace(m) => Refusal::NoSpace(m),
            StoreError::Membership(m) => Refusal::Membership(m),
            StoreError::Removed(m) => Refusal::Removed(m),
            StoreError::Unavailable(m) => Refusal::Unavailable(m),
            other => Refusal::Unavailable(other.to_string()),
        }
    }
}

impl Refusal {
    /// The error the forwarding member's caller sees (`NotLeader` is retried before that).
    pub(crate) fn into_store_error(self, leader: NodeId) -> StoreError {
        match self {
            Refusal::NotLeader { leader: now } => StoreError::NoQuorum(format!(
                "node {leader} is no longer the leader (now: {})",
                now.map_or_else(|| "unknown".to_string(), |id| id.to_string())
            )),
            Refusal::NoQuorum(m) => StoreError::NoQuorum(m),
            Refusal::NoSpace(m) => StoreError::NoSpace(format!("on the leader: {m}")),
            Refusal::Membership(m) => StoreError::Membership(m),
            Refusal::Removed(m) => StoreError::Unavailable(format!("the leader: {m}")),
            Refusal::Unavailable(m) => StoreError::Unavailable(format!("the leader: {m}")),
        }
    }
}

/// Why a member refused a request outright.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Rejection {
    /// The sender belongs to another cluster.
    ClusterMismatch { ours: String, theirs: String },
    /// The receiver's committed membership, newer than the sender's, leaves the sender out:
    /// the sender was removed.
    SenderRemoved { why: String },
    /// The receiver is not running (shutting down, or removed itself).
    Stopped(String),
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::ClusterMismatch { ours, theirs } => write!(
                f,
                "the peer belongs to store cluster {ours}, this member to {theirs}"
            ),
            Rejection::SenderRemoved { why } => write!(f, "{why}"),
            Rejection::Stopped(why) => write!(f, "the peer is not serving: {why}"),
        }
    }
}

/// A frame that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("peer connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {size} bytes is larger than the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("encoding a frame: {0}")]
    Encode(String),
    #[error("decoding a frame: {0}")]
    Decode(String),
}

/// A message as one frame: length prefix and body.
pub(crate) fn encode_frame<T: Serialize>(message: &T) -> Result<Vec<u8>, WireError> {
    let size = bincode::serialized_size(message).map_err(|e| WireError::Encode(e.to_string()))?;
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if size > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge {
            size,
            max: MAX_FRAME_BYTES,
        });
    }
    let mut out = Vec::with_capacity(4 + size);
    out.extend_from_slice(&(size as u32).to_be_bytes());
    bincode::serialize_into(&mut out, message).map_err(|e| WireError::Encode(e.to_string()))?;
    Ok(out)
}

/// Reads one frame; `None` when the stream ends cleanly between frames.
pub(crate) async fn read_frame<R, T>(reader: &mut R) -> Result<Option<T>, WireError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let size = u32::from_be_bytes(len) as usize;
    if size > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge {
            size,
            max: MAX_FRAME_BYTES,
        });
    }
    let mut body = vec![0u8; size];
    reader.read_exact(&mut body).await?;
    bincode::deserialize(&body)
        .map(Some)
        .map_err(|e| WireError::Decode(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use openraft::error::{Fatal, SnapshotMismatch};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, Membership, SnapshotMeta, Vote};

    use super::*;
    use crate::types::{Event, EventKind, KeyValue};

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn header() -> Header {
        Header {
            from: 2,
            cluster: Some("c1".into()),
            membership: Some(log_id(1, 3)),
        }
    }

    async fn round_trip<T: Serialize + DeserializeOwned>(message: &T) -> T {
        let bytes = encode_frame(message).unwrap();
        let mut reader = &bytes[..];
        let back = read_frame(&mut reader).await.unwrap().unwrap();
        assert!(reader.is_empty(), "the frame was not read whole");
        back
    }

    #[tokio::test]
    async fn raft_rpcs_survive_the_wire() {
        let entries = vec![
            Entry::<TypeConfig> {
                log_id: log_id(2, 4),
                payload: EntryPayload::Normal(Command::Put {
                    key: "/k".into(),
                    value: vec![0, 1, 2, 255],
                }),
            },
            Entry {
                log_id: log_id(2, 5),
                payload: EntryPayload::Membership(Membership::new(
                    vec![[1, 2].into()],
                    BTreeMap::from([
                        (1, openraft::BasicNode::new("a:1")),
                        (2, openraft::BasicNode::new("b:2")),
                    ]),
                )),
            },
            Entry {
                log_id: log_id(2, 6),
                payload: EntryPayload::Blank,
            },
        ];
        let request = RequestFrame {
            id: 42,
            header: header(),
            body: Request::AppendEntries(AppendEntriesRequest {
                vote: Vote::new_committed(2, 1),
                prev_log_id: Some(log_id(1, 3)),
                entries: entries.clone(),
                leader_commit: Some(log_id(1, 3)),
            }),
        };
        let back = round_trip(&request).await;
        assert_eq!(back.id, 42);
        assert_eq!(back.header, header());
        match back.body {
            Request::AppendEntries(rpc) => {
                assert_eq!(rpc.entries, entries);
                assert_eq!(rpc.prev_log_id, Some(log_id(1, 3)));
            }
            other => panic!("{other:?}"),
        }

        let snapshot = RequestFrame {
            id: 7,
            header: header(),
            body: Request::InstallSnapshot(InstallSnapshotRequest {
                vote: Vote::new_committed(2, 1),
                meta: SnapshotMeta {
                    last_log_id: Some(log_id(2, 6)),
                    last_membership: Default::default(),
                    snapshot_id: "2-6-10".into(),
                },
                offset: 3,
                data: vec![9; 1000],
                done: true,
            }),
        };
        match round_trip(&snapshot).await.body {
            Request::InstallSnapshot(rpc) => {
                assert_eq!((rpc.offset, rpc.data.len(), rpc.done), (3, 1000, true));
                assert_eq!(rpc.meta.snapshot_id, "2-6-10");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn errors_and_outcomes_survive_the_wire() {
        let mismatch: RaftError<NodeId, InstallSnapshotError> =
            RaftError::APIError(InstallSnapshotError::SnapshotMismatch(SnapshotMismatch {
                expect: openraft::SnapshotSegmentId {
                    id: "a".into(),
                    offset: 0,
                },
                got: openraft::SnapshotSegmentId {
                    id: "b".into(),
                    offset: 5,
                },
            }));
        let frame = ResponseFrame {
            id: 1,
            body: Response::InstallSnapshot(Err(mismatch.clone())),
        };
        match round_trip(&frame).await.body {
            Response::InstallSnapshot(Err(err)) => assert_eq!(err, mismatch),
            other => panic!("{other:?}"),
        }

        let fatal: RaftError<NodeId> = RaftError::Fatal(Fatal::Stopped);
        match round_trip(&ResponseFrame {
            id: 2,
            body: Response::Vote(Err(fatal.clone())),
        })
        .await
        .body
        {
            Response::Vote(Err(err)) => assert_eq!(err, fatal),
            other => panic!("{other:?}"),
        }

        let applied = Applied {
            outcome: Outcome::Written(Event {
                kind: EventKind::Put,
                kv: KeyValue {
                    key: "/k".into(),
                    value: b"v".to_vec(),
                    create_revision: 3,
                    mod_revision: 5,
                    version: 2,
                },
                prev: None,
            }),
            index: 17,
        };
        match round_trip(&ResponseFrame {
            id: 3,
            body: Response::Write(Ok(applied.clone())),
        })
        .await
        .body
        {
            Response::Write(Ok(back)) => assert_eq!(back, applied),
            other => panic!("{other:?}"),
        }
        let refusal = Refusal::NotLeader { leader: Some(3) };
        match round_trip(&ResponseFrame {
            id: 4,
            body: Response::ReadIndex(Err(refusal.clone())),
        })
        .await
        .body
        {
            Response::ReadIndex(Err(back)) => assert_eq!(back, refusal),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn frames_are_read_one_at_a_time_and_eof_is_clean() {
        let mut bytes = encode_frame(&ResponseFrame {
            id: 1,
            body: Response::Ack,
        })
        .unwrap();
        bytes.extend(
            encode_frame(&ResponseFrame {
                id: 2,
                body: Response::Ack,
            })
            .unwrap(),
        );
        let mut reader = &bytes[..];
        let a: ResponseFrame = read_frame(&mut reader).await.unwrap().unwrap();
        let b: ResponseFrame = read_frame(&mut reader).await.unwrap().unwrap();
        assert_eq!((a.id, b.id), (1, 2));
        let end: Option<ResponseFrame> = read_frame(&mut reader).await.unwrap();
        assert!(end.is_none());
    }

    #[tokio::test]
    async fn bad_frames_are_errors() {
        // Cut short inside the body.
        let bytes = encode_frame(&ResponseFrame {
            id: 1,
            body: Response::Ack,
        })
        .unwrap();
        let mut reader = &bytes[..bytes.len() - 1];
        let cut = read_frame::<_, ResponseFrame>(&mut reader).await;
        assert!(matches!(cut, Err(WireError::Io(_))), "{cut:?}");

        // A length beyond the limit is refused before anything is allocated.
        let huge = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes();
        let mut reader = &huge[..];
        let big = read_frame::<_, ResponseFrame>(&mut reader).await;
        assert!(matches!(big, Err(WireError::TooLarge { .. })), "{big:?}");

        // Garbage of the right length.
        let mut garbage = 4u32.to_be_bytes().to_vec();
        garbage.extend([0xff; 4]);
        let mut reader = &garbage[..];
        let bad = read_frame::<_, ResponseFrame>(&mut reader).await;
        assert!(matches!(bad, Err(WireError::Decode(_))), "{bad:?}");
    }

    #[test]
    fn refusals_become_store_errors() {
        assert!(matches!(
            Refusal::from(StoreError::NoQuorum("x".into())).into_store_error(1),
            StoreError::NoQuorum(m) if m == "x"
        ));
        assert!(matches!(
            Refusal::NotLeader { leader: None }.into_store_error(1),
            StoreError::NoQuorum(m) if m.contains("no longer the leader")
        ));
        assert!(matches!(
            Refusal::from(StoreError::Io("disk full".into())).into_store_error(1),
            StoreError::Unavailable(m) if m.contains("disk full")
        ));
    }
}
