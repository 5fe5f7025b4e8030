//! Applying a [`Transaction`] through the kernel's nf_tables netlink interface: the batch
//! from [`super::wire`] goes out in one `sendmsg` (one batch is one kernel transaction: all
//! of it commits or none), and the kernel's answers say which message, if any, it refused.
//!
//! The kernel handles a batch inside the `sendmsg` call, so every answer is queued when it
//! returns; they are read without waiting. Every message asks for an acknowledgement, so a
//! batch counts as applied only once the last one is acknowledged and nothing was refused.
//!
//! The socket is kept open between transactions: closing a netfilter netlink socket costs
//! the kernel ~15 ms (measured: it was most of an incremental update's time, and is part of
//! why every `nft` run takes that long).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{setsockopt, sockopt};

use super::ruleset::Transaction;
use super::wire::{self, Batch};

/// Why a transaction was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("nf_tables netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot enter network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the kernel refused `{op}`: {source}{}", .detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        /// The refused op in nft syntax (shortened when long).
        op: String,
        source: std::io::Error,
        /// The kernel's extended message, if it gave one.
        detail: Option<String>,
    },
    #[error("the kernel did not acknowledge the transaction (last answer for message {seen:?} of {expected})")]
    Unacknowledged { seen: Option<u32>, expected: u32 },
}

/// Where transactions are applied: this thread's network namespace or a named one. Clones
/// share one socket, opened on first use (in the namespace of the thread that first applies,
/// for [`Nftables::current`]) and again after a failure.
#[derive(Debug, Clone, Default)]
pub struct Nftables {
    netns: Option<PathBuf>,
    socket: Arc<Mutex<Option<Open>>>,
}

#[derive(Debug)]
struct Open {
    socket: Socket,
    /// The send buffer size set so far.
    sndbuf: usize,
}

/// Sequence numbers for batches, distinct across the process's batches.
static NEXT_SEQ: AtomicU32 = AtomicU32::new(1);

const NLMSG_ERROR: u16 = 2;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;

impl Nftables {
    /// The network namespace of the calling thread.
    pub fn current() -> Self {
        Nftables::default()
    }

    /// The namespace `ip netns` knows by `name`.
    pub fn in_netns(name: &str) -> Self {
        Nftables {
            netns: Some(Path::new("/var/run/netns").join(name)),
            socket: Arc::default(),
        }
    }

    /// Applies `tx` as one kernel transaction. Nothing to do for an empty one.
    pub fn apply(&self, tx: &Transaction) -> Result<(), ApplyError> {
        if tx.is_empty() {
            return Ok(());
        }
        // More than the batch's messages (element lists are split every ~1,800), and kept far
        // below the wrap of the 32-bit sequence numbers.
        let messages = (tx.ops.len() + 2 + tx.element_count() / 100).min(1 << 24) as u32;
        let step = |seq: u32| {
            Some(if seq > u32::MAX / 2 {
                1
            } else {
                seq + messages * 2
            })
        };
        let first = match NEXT_SEQ.fetch_update(Ordering::Relaxed, Ordering::Relaxed, step) {
            Ok(seq) | Err(seq) => seq,
        };
        let batch = wire::encode(tx, first);
        let mut guard = self
            .socket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let open = match guard.take() {
            Some(open) => open,
            None => Open {
                socket: self.open()?,
                sndbuf: 0,
            },
        };
        let result = send(&open, &batch, tx);
        // A socket that failed may hold a half-read answer: the next apply opens a new one.
        if result.is_ok() {
            *guard = Some(Open {
                sndbuf: open.sndbuf.max(batch.bytes.len() + 64 * 1024),
                socket: open.socket,
            });
        }
        result
    }

    fn open(&self) -> Result<Socket, ApplyError> {
        let socket = match &self.netns {
            None => Socket::new(NETLINK_NETFILTER)?,
            // A socket belongs to the namespace it was made in: make it on a thread that
            // entered the namespace, and use it from here.
            Some(path) => std::thread::scope(|s| {
                s.spawn(|| {
                    let file = File::open(path).map_err(|source| ApplyError::Netns {
                        path: path.clone(),
                        source,
                    })?;
                    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| ApplyError::Netns {
                        path: path.clone(),
                        source: e.into(),
                    })?;
                    Ok::<_, ApplyError>(Socket::new(NETLINK_NETFILTER)?)
                })
                .join()
                .unwrap_or_else(|_| {
                    Err(ApplyError::Io(std::io::Error::other(
                        "thread opening the netlink socket panicked",
                    )))
                })
            })?,
        };
        let mut socket = socket;
        socket.bind_auto()?;
        setsockopt(&socket, sockopt::RcvBufForce, &(1024 * 1024)).map_err(std::io::Error::from)?;
        // Refusals quote only the message header, not the whole message, plus the reason.
        socket.set_cap_ack(true)?;
        socket.set_ext_ack(true)?;
        socket.set_non_blocking(true)?;
        Ok(socket)
    }
}

fn send(open: &Open, batch: &Batch, tx: &Transaction) -> Result<(), ApplyError> {
    let size = batch.bytes.len() + 64 * 1024;
    if size > open.sndbuf {
        // A batch must fit one send; raising the limit past `wmem_max` needs CAP_NET_ADMIN,
        // which programming nf_tables needs anyway.
        setsockopt(&open.socket, sockopt::SndBufForce, &size).map_err(std::io::Error::from)?;
    }
    open.socket
        .send_to(&batch.bytes, &SocketAddr::new(0, 0), 0)?;
    read_answers(&open.socket, batch, tx)
}

fn shorten(text: String) -> String {
    let text = text.trim_end().to_string();
    if text.len() <= 300 {
        return text;
    }
    let mut cut = 300;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{} …", &text[..cut])
}

/// Reads every queued answer: the first refusal is the error; success needs the last
/// message acknowledged.
fn read_answers(socket: &Socket, batch: &Batch, tx: &Transaction) -> Result<(), ApplyError> {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut last_acked = None;
    let mut refused: Option<ApplyError> = None;
    loop {
        buf.clear();
        match socket.recv(&mut buf, 0) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e.into()),
        }
        for answer in parse_answers(&buf) {
            // Answers to an earlier batch (none are expected: they are all read) are not ours.
            if answer.seq < batch.first_seq || answer.seq > batch.last_seq() + 1 {
                continue;
            }
            if answer.errno == 0 {
                last_acked = last_acked.max(Some(answer.seq));
                continue;
            }
            if refused.is_some() {
                continue;
            }
            let op = match batch.op_index(answer.seq) {
                Some(i) => {
                    let (family, op) = &tx.ops[i];
                    shorten(tx.op_text(*family, op))
                }
                // The batch as a whole (its commit) failed.
                None => format!("the transaction of {} ops", tx.ops.len()),
            };
            refused = Some(ApplyError::Refused {
                op,
                source: std::io::Error::from_raw_os_error(answer.errno),
                detail: answer.message,
            });
        }
    }
    if let Some(err) = refused {
        return Err(err);
    }
    if last_acked != Some(batch.last_seq()) {
        return Err(ApplyError::Unacknowledged {
            seen: last_acked,
            expected: batch.last_seq(),
        });
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
struct Answer {
    seq: u32,
    /// 0 for an acknowledgement, else the errno.
    errno: i32,
    message: Option<String>,
}

/// The `NLMSG_ERROR` answers (acknowledgements and refusals) in a buffer of netlink messages.
fn parse_answers(mut buf: &[u8]) -> Vec<Answer> {
    let u16_at = |b: &[u8], i: usize| b.get(i..i + 2).map(|s| u16::from_ne_bytes([s[0], s[1]]));
    let u32_at = |b: &[u8], i: usize| {
        b.get(i..i + 4)
            .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
    };
    let mut out = Vec::new();
    while let (Some(len), Some(ty), Some(flags)) = (u32_at(buf, 0), u16_at(buf, 4), u16_at(buf, 6))
    {
        let len = len as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        let msg = &buf[..len];
        // nlmsgerr: the errno, then the header of the message it answers (whose sequence
        // number names it), then with NLM_F_ACK_TLVS extended-ack attributes.
        if let (NLMSG_ERROR, Some(errno), Some(seq)) = (ty, u32_at(msg, 16), u32_at(msg, 28)) {
            let errno = -(errno as i32);
            let mut message = None;
            if flags & NLM_F_ACK_TLVS != 0 {
                let mut attrs = msg.get(36..).unwrap_or_default();
                while let (Some(alen), Some(aty)) = (u16_at(attrs, 0), u16_at(attrs, 2)) {
                    let alen = alen as usize;
                    if alen < 4 || alen > attrs.len() {
                        break;
                    }
                    if aty & 0x3fff == NLMSGERR_ATTR_MSG {
                        let text = &attrs[4..alen];
                        let text = text.split(|b| *b == 0).next().unwrap_or_default();
                        message = Some(String::from_utf8_lossy(text).into_owned());
                    }
                    attrs = attrs.get(alen.next_multiple_of(4)..).unwrap_or_default();
                }
            }
            out.push(Answer {
                seq,
                errno,
                message,
            });
        }
        buf = buf.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::proxy::ruleset::{Family, Op};

    fn error_message(seq: u32, errno: i32, ext: Option<&str>) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&(-errno).to_ne_bytes());
        // The answered message's header (16 bytes): length, type, flags, seq, port.
        body.extend_from_slice(&20u32.to_ne_bytes());
        body.extend_from_slice(&0x0a06u16.to_ne_bytes());
        body.extend_from_slice(&5u16.to_ne_bytes());
        body.extend_from_slice(&seq.to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        let mut flags = 0u16;
        if let Some(text) = ext {
            flags |= NLM_F_ACK_TLVS;
            let mut data = text.as_bytes().to_vec();
            data.push(0);
            body.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
            body.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
            body.extend_from_slice(&data);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut msg = Vec::new();
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn answers_are_parsed() {
        let mut buf = error_message(7, 0, None);
        buf.extend(error_message(8, 2, Some("no such chain")));
        assert_eq!(
            parse_answers(&buf),
            vec![
                Answer {
                    seq: 7,
                    errno: 0,
                    message: None
                },
                Answer {
                    seq: 8,
                    errno: 2,
                    message: Some("no such chain".into())
                }
            ]
        );
        assert!(
            parse_answers(&buf[..10]).is_empty(),
            "a cut message is ignored"
        );
    }

    /// A refusal names the op in nft syntax, with the kernel's reason.
    #[test]
    fn refusal_names_the_op() {
        crate::proxy::nft::tests::assert_root();
        let netns = format!("shoalnl-{}", std::process::id());
        let status = std::process::Command::new("ip")
            .args(["netns", "add", &netns])
            .status()
            .unwrap();
        assert!(status.success());
        struct Gone(String);
        impl Drop for Gone {
            fn drop(&mut self) {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &self.0])
                    .status();
            }
        }
        let _gone = Gone(netns.clone());
        let nft = Nftables::in_netns(&netns);
        let mut tx = Transaction::new("shoal-nl-test");
        tx.push(Family::V4, Op::AddTable);
        tx.push(Family::V4, Op::FlushChain("missing".into()));
        let err = nft.apply(&tx).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("flush chain ip shoal-nl-test missing") && text.contains("No such file"),
            "{text}"
        );
        // Nothing of a refused transaction stays.
        let mut probe = Transaction::new("shoal-nl-test");
        probe.push(Family::V4, Op::DeleteTable);
        assert!(nft.apply(&probe).is_err(), "the table was not created");
        let mut ok = Transaction::new("shoal-nl-test");
        ok.push(Family::V4, Op::AddTable);
        ok.push(Family::V6, Op::AddTable);
        nft.apply(&ok).unwrap();
        nft.apply(&probe).unwrap();
    }
}
