//! Relaying questions outside the cluster to the node's upstream resolvers (the `nameserver`
//! lines of its `/etc/resolv.conf`): the client's message as it came, over UDP from a fresh
//! socket (a random source port per question), again over TCP when the answer is truncated;
//! the next upstream when one does not answer in time.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long one upstream gets to answer before the next is tried.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest answer read over UDP (EDNS lets upstreams send more than 512 bytes).
const UDP_BUFFER: usize = 4096;
/// The EDNS payload size advertised on questions this server asks itself (DNS Flag Day 2020).
const EDNS_PAYLOAD: u16 = 1232;

/// Why no upstream answered.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream resolvers are configured")]
    NoUpstreams,
    #[error("upstream {upstream}: {source}")]
    Io {
        upstream: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {0} did not answer in time")]
    Timeout(SocketAddr),
    #[error("upstream {upstream} sent an answer that does not decode: {reason}")]
    Malformed {
        upstream: SocketAddr,
        reason: String,
    },
    #[error("cannot encode the question: {0}")]
    Encode(String),
}

/// The upstream resolvers named by resolv.conf text, port 53, in order, without `exclude`
/// (the cluster DNS address itself: asking ourselves would loop).
pub fn upstreams_from_resolv_conf(text: &str, exclude: &[IpAddr]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        // A zone index (`fe80::1%eth0`) is dropped: the kernel routes link-local by default.
        let Some(ip) = words
            .next()
            .and_then(|w| w.split('%').next())
            .and_then(|w| w.parse::<IpAddr>().ok())
        else {
            continue;
        };
        let addr = SocketAddr::new(ip, 53);
        if !exclude.contains(&ip) && !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

/// The node's upstream resolvers.
#[derive(Debug, Clone)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>, timeout: Duration) -> Forwarder {
        Forwarder { upstreams, timeout }
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// Sends `query` (an encoded DNS message) to the upstreams in turn; returns the first
    /// answer, decoded.
    pub async fn relay(&self, query: &[u8]) -> Result<Message, ForwardError> {
        let id = query
            .get(..2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| ForwardError::Encode("a message shorter than its header".into()))?;
        let mut last = ForwardError::NoUpstreams;
        for &upstream in &self.upstreams {
            match self.exchange(upstream, id, query).await {
                Ok(message) => return Ok(message),
                Err(err) => {
                    tracing::debug!(%upstream, error = %err, "upstream resolver failed");
                    last = err;
                }
            }
        }
        Err(last)
    }

    /// Asks the upstreams `rtype` for `name` (recursion desired), for names an answer of ours
    /// points outside the cluster (an ExternalName's CNAME target).
    pub async fn resolve(&self, name: &Name, rtype: RecordType) -> Result<Message, ForwardError> {
        let mut message = Message::query();
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(name.clone(), rtype));
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        message.set_edns(edns);
        let bytes = message
            .to_vec()
            .map_err(|e| ForwardError::Encode(e.to_string()))?;
        self.relay(&bytes).await
    }

    async fn exchange(
        &self,
        upstream: SocketAddr,
        id: u16,
        query: &[u8],
    ) -> Result<Message, ForwardError> {
        let io = |source| ForwardError::Io { upstream, source };
        let bind: SocketAddr = if upstream.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(bind).await.map_err(io)?;
        socket.connect(upstream).await.map_err(io)?;
        socket.send(query).await.map_err(io)?;
        let mut buf = vec![0u8; UDP_BUFFER];
        let deadline = tokio::time::Instant::now() + self.timeout;
        let message = loop {
            let len = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
                .await
                .map_err(|_| ForwardError::Timeout(upstream))?
                .map_err(io)?;
            let Ok(message) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            // A connected socket only hears the upstream; a stale or spoofed ID is skipped.
            if message.metadata.id == id {
                break message;
            }
        };
        if !message.metadata.truncation {
            return Ok(message);
        }
        tokio::time::timeout(self.timeout, tcp_exchange(upstream, query))
            .await
            .map_err(|_| ForwardError::Timeout(upstream))?
    }
}

/// One question over TCP (two-byte length prefix each way).
async fn tcp_exchange(upstream: SocketAddr, query: &[u8]) -> Result<Message, ForwardError> {
    let io = |source| ForwardError::Io { upstream, source };
    let len = u16::try_from(query.len())
        .map_err(|_| ForwardError::Encode("a question over 64 KiB".into()))?;
    let mut stream = TcpStream::connect(upstream).await.map_err(io)?;
    let mut out = Vec::with_capacity(query.len() + 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(query);
    stream.write_all(&out).await.map_err(io)?;
    let answer_len = stream.read_u16().await.map_err(io)?;
    let mut answer = vec![0u8; usize::from(answer_len)];
    stream.read_exact(&mut answer).await.map_err(io)?;
    Message::from_vec(&answer).map_err(|e| ForwardError::Malformed {
        upstream,
        reason: e.to_string(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_in_order() {
        let text = "# generated\nsearch example.com\nnameserver 10.0.0.2\nnameserver  fe80::1%eth0 # link\n\
                    nameserver 10.43.0.10\nnameserver 10.0.0.2\nnameserver bogus\noptions ndots:2\n";
        let dns: IpAddr = "10.43.0.10".parse().unwrap();
        assert_eq!(
            upstreams_from_resolv_conf(text, &[dns]),
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
        assert!(upstreams_from_resolv_conf("", &[]).is_empty());
    }
}
