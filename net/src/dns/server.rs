//! The DNS server: a hickory-server [`RequestHandler`] answering from the current
//! [`Index`] (swapped whole on every change, so a question always sees one consistent
//! state), relaying everything else to the upstream resolvers (their answers cached briefly),
//! over UDP and TCP.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{Name, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};

use super::cache::{AnswerCache, DEFAULT_CAPACITY};
use super::forward::Forwarder;
use super::records::{Index, Outcome, ZoneConfig};

/// How long a TCP client may stay idle between questions.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Answers queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 32;
/// The largest answer sent over UDP whatever a client's EDNS offers (DNS Flag Day 2020).
const MAX_UDP_PAYLOAD: u16 = 1232;

/// The index the server answers from, replaced whole by the watchers.
#[derive(Debug, Clone, Default)]
pub struct SharedIndex {
    current: Arc<RwLock<Option<Arc<Index>>>>,
}

impl SharedIndex {
    /// A shared index already holding `index` (tests, benchmarks).
    pub fn with(index: Index) -> SharedIndex {
        let shared = SharedIndex::default();
        shared.set(index);
        shared
    }

    /// Publishes a new index.
    pub fn set(&self, index: Index) {
        let index = Arc::new(index);
        match self.current.write() {
            Ok(mut current) => *current = Some(index),
            Err(poisoned) => *poisoned.into_inner() = Some(index),
        }
    }

    /// The current index; `None` until the watchers' first full listing.
    pub fn get(&self) -> Option<Arc<Index>> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// Answers questions from the index, forwarding what is not the cluster's.
#[derive(Debug, Clone)]
pub struct Handler {
    index: SharedIndex,
    forwarder: Forwarder,
    /// What is ours before the first listing (questions there get SERVFAIL, as CoreDNS
    /// answers until its caches are synced).
    unsynced: Arc<Index>,
    /// Upstream answers, shared by every question.
    cache: Arc<AnswerCache>,
}

impl Handler {
    pub fn new(zone: ZoneConfig, index: SharedIndex, forwarder: Forwarder) -> Handler {
        Handler {
            index,
            forwarder,
            unsynced: Arc::new(Index::empty(zone, 0)),
            cache: Arc::new(AnswerCache::new(DEFAULT_CAPACITY)),
        }
    }
}

/// A response decided before it is encoded.
struct Reply {
    code: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

impl Reply {
    fn code(code: ResponseCode) -> Reply {
        Reply {
            code,
            authoritative: false,
            answers: vec![],
            authorities: vec![],
            additionals: vec![],
        }
    }

    fn upstream(message: Message) -> Reply {
        Reply {
            code: message.metadata.response_code,
            authoritative: message.metadata.authoritative,
            answers: message.answers,
            authorities: message.authorities,
            additionals: message.additionals,
        }
    }
}

impl Handler {
    async fn decide(&self, request: &Request) -> Reply {
        if request.metadata.message_type != MessageType::Query {
            return Reply::code(ResponseCode::FormErr);
        }
        if request.metadata.op_code != OpCode::Query {
            return Reply::code(ResponseCode::NotImp);
        }
        let Ok(info) = request.request_info() else {
            return Reply::code(ResponseCode::FormErr);
        };
        let name: &Name = info.query.original().name();
        let qtype = info.query.query_type();
        let outcome = match self.index.get() {
            Some(index) => index.lookup(name, qtype),
            None => match self.unsynced.lookup(name, qtype) {
                Outcome::Forward => Outcome::Forward,
                _ => return Reply::code(ResponseCode::ServFail),
            },
        };
        match outcome {
            Outcome::Forward => {
                if let Some(cached) = self.cache.get(name, qtype, Instant::now()) {
                    return Reply::upstream(cached);
                }
                match self.forwarder.relay(request.as_slice()).await {
                    Ok(message) => {
                        self.cache.put(name, qtype, &message, Instant::now());
                        Reply::upstream(message)
                    }
                    Err(err) => {
                        tracing::debug!(%name, error = %err, "forwarding failed");
                        Reply::code(ResponseCode::ServFail)
                    }
                }
            }
            Outcome::NoData { soa } => Reply {
                authorities: vec![soa],
                authoritative: true,
                ..Reply::code(ResponseCode::NoError)
            },
            Outcome::NxDomain { soa } => Reply {
                authorities: vec![soa],
                authoritative: true,
                ..Reply::code(ResponseCode::NXDomain)
            },
            Outcome::Answer {
                mut answers,
                additionals,
                chase,
            } => {
                let mut code = ResponseCode::NoError;
                if let Some(target) = chase.filter(|_| qtype != RecordType::CNAME) {
                    match self.forwarder.resolve(&target, qtype).await {
                        Ok(message) => {
                            code = message.metadata.response_code;
                            answers.extend(message.answers);
                        }
                        Err(err) => {
                            tracing::debug!(%target, error = %err, "resolving a CNAME target failed");
                        }
                    }
                }
                Reply {
                    answers,
                    additionals,
                    authoritative: true,
                    ..Reply::code(code)
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let reply = self.decide(request).await;
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = reply.code;
        metadata.authoritative = reply.authoritative;
        metadata.recursion_available = true;
        // Echo EDNS with the client's buffer size (capped): the encoder truncates to it.
        let edns = request.edns.as_ref().map(|theirs| {
            let mut ours = Edns::new();
            ours.set_max_payload(theirs.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            ours
        });
        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if let Some(edns) = edns.as_ref() {
            builder.edns(edns);
        }
        let response = builder.build(
            metadata,
            reply.answers.iter(),
            reply.authorities.iter(),
            std::iter::empty(),
            reply.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(err) => {
                tracing::debug!(error = %err, "sending a DNS response failed");
                let mut header = Metadata::response_from_request(&request.metadata);
                header.response_code = ResponseCode::ServFail;
                ResponseInfo::from(hickory_proto::op::Header {
                    metadata: header,
                    counts: Default::default(),
                })
            }
        }
    }
}

/// Sockets bound for the server (bound first, so binding errors surface before serving).
#[derive(Debug)]
pub struct Listeners {
    pub udp: UdpSocket,
    pub tcp: TcpListener,
}

impl Listeners {
    /// Binds UDP and TCP on `addr` (port 0: a free port, the same for both).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Listeners> {
        let tcp = TcpListener::bind(addr).await?;
        let addr = tcp.local_addr()?;
        let udp = UdpSocket::bind(addr).await?;
        Ok(Listeners { udp, tcp })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// Serves `handler` on `listeners` until `shutdown` turns true.
pub async fn serve(
    listeners: Listeners,
    handler: Handler,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut server = Server::new(handler);
    server.register_socket(listeners.udp);
    server.register_listener(listeners.tcp, TCP_IDLE, TCP_RESPONSE_BUFFER);
    let token = server.shutdown_token().clone();
    tokio::spawn(async move {
        while !*shutdown.borrow_and_update() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        token.cancel();
    });
    server
        .block_until_done()
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
}
