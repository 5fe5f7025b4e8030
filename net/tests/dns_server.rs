//! The cluster DNS server on a loopback port, with a fixed index, asked by a real DNS client
//! (messages encoded with hickory-proto, sent over UDP and TCP): answers, negative answers
//! with the SOA, truncation and TCP retry, forwarding to an upstream on loopback (a small
//! responder that also makes the forwarder fall back to TCP), ExternalName targets resolved
//! upstream, SERVFAIL before the first listing and when no upstream answers.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use shoal_net::dns::forward::Forwarder;
use shoal_net::dns::server::{serve, Handler, Listeners, SharedIndex};
use shoal_net::dns::{Index, ZoneConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

fn zone() -> ZoneConfig {
    ZoneConfig {
        domain: "cluster.local".into(),
        dns_ip: "10.43.0.10".parse().unwrap(),
        reverse_cidrs: vec!["10.43.0.0/16".parse().unwrap()],
        ttl: 5,
    }
}

/// `web` (ClusterIP with a named port), `many` (headless, 100 ready endpoints: more than 512
/// bytes of answers), `ext` (ExternalName to a name the upstream knows).
fn index() -> Index {
    let services: Vec<Service> = [
        json!({"metadata": {"name": "web", "namespace": "default"},
               "spec": {"clusterIP": "10.43.0.20", "ports": [{"name": "http", "port": 80}]}}),
        json!({"metadata": {"name": "many", "namespace": "default"}, "spec": {"clusterIP": "None"}}),
        json!({"metadata": {"name": "ext", "namespace": "default"},
               "spec": {"type": "ExternalName", "externalName": "www.example.org"}}),
    ]
    .into_iter()
    .map(|v| serde_json::from_value(v).unwrap())
    .collect();
    let endpoints: Vec<_> = (1..=100)
        .map(|i| json!({"addresses": [format!("10.42.1.{i}")], "conditions": {"ready": true}}))
        .collect();
    let slices: Vec<EndpointSlice> = vec![serde_json::from_value(json!({
        "metadata": {"name": "many-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "many"}},
        "addressType": "IPv4", "endpoints": endpoints}))
    .unwrap()];
    Index::build(zone(), 7, &services, &slices)
}

/// A stand-in upstream resolver: every A question gets 192.0.2.<n> where n is the number of
/// labels asked; names starting with `big.` get 60 addresses, truncated (TC, no records) over
/// UDP and whole over TCP.
struct Upstream {
    addr: SocketAddr,
    /// Questions received over UDP.
    asked: Arc<AtomicUsize>,
}

fn upstream_answer(query: &Message, over_udp: bool) -> Message {
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.recursion_available = true;
    let Some(question) = query.queries.first() else {
        return reply;
    };
    reply.add_query(question.clone());
    let name = question.name().clone();
    if name.to_ascii().starts_with("nx.") {
        reply.metadata.response_code = ResponseCode::NXDomain;
        return reply;
    }
    if question.query_type() != RecordType::A {
        return reply;
    }
    if name.to_ascii().starts_with("big.") {
        if over_udp {
            reply.metadata.truncation = true;
            return reply;
        }
        for i in 1..=60 {
            reply.add_answer(Record::from_rdata(
                name.clone(),
                60,
                RData::A(A(Ipv4Addr::new(192, 0, 2, i))),
            ));
        }
        return reply;
    }
    reply.add_answer(Record::from_rdata(
        name.clone(),
        60,
        RData::A(A(Ipv4Addr::new(192, 0, 2, name.num_labels()))),
    ));
    reply
}

impl Upstream {
    async fn start() -> Upstream {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let udp = UdpSocket::bind(addr).await.unwrap();
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&asked);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((len, from)) = udp.recv_from(&mut buf).await {
                let Ok(query) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let reply = upstream_answer(&query, true).to_vec().unwrap();
                let _ = udp.send_to(&reply, from).await;
            }
        });
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                tokio::spawn(async move {
                    let Ok(len) = stream.read_u16().await else {
                        return;
                    };
                    let mut query = vec![0u8; usize::from(len)];
                    if stream.read_exact(&mut query).await.is_err() {
                        return;
                    }
                    let query = Message::from_vec(&query).unwrap();
                    let reply = upstream_answer(&query, false).to_vec().unwrap();
                    let mut out = u16::try_from(reply.len()).unwrap().to_be_bytes().to_vec();
                    out.extend(reply);
                    let _ = stream.write_all(&out).await;
                });
            }
        });
        Upstream { addr, asked }
    }
}

struct TestServer {
    addr: SocketAddr,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn start(index: SharedIndex, upstreams: Vec<SocketAddr>) -> TestServer {
    let listeners = Listeners::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = listeners.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let handler = Handler::new(
        zone(),
        index,
        Forwarder::new(upstreams, Duration::from_millis(500)),
    );
    tokio::spawn(serve(listeners, handler, stopped));
    TestServer { addr, _stop: stop }
}

fn question(id: u16, name: &str, rtype: RecordType, edns: bool) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.id = id;
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        message.set_edns(e);
    }
    message.to_vec().unwrap()
}

async fn ask_udp(server: SocketAddr, name: &str, rtype: RecordType, edns: bool) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(server).await.unwrap();
    socket
        .send(&question(0x1234, name, rtype, edns))
        .await
        .unwrap();
    let mut buf = vec![0u8; 65535];
    let len = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    let message = Message::from_vec(&buf[..len]).unwrap();
    assert_eq!(message.metadata.id, 0x1234);
    message
}

async fn ask_tcp(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let query = question(0x4321, name, rtype, false);
    let mut out = u16::try_from(query.len()).unwrap().to_be_bytes().to_vec();
    out.extend(query);
    stream.write_all(&out).await.unwrap();
    let len = tokio::time::timeout(Duration::from_secs(5), stream.read_u16())
        .await
        .expect("an answer within 5 s")
        .unwrap();
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await.unwrap();
    let message = Message::from_vec(&buf).unwrap();
    assert_eq!(message.metadata.id, 0x4321);
    message
}

fn addresses(message: &Message) -> Vec<IpAddr> {
    message
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn answers_over_udp_and_tcp() {
    let server = start(SharedIndex::with(index()), vec![]).await;
    for message in [
        ask_udp(
            server.addr,
            "web.default.svc.cluster.local.",
            RecordType::A,
            true,
        )
        .await,
        ask_udp(
            server.addr,
            "Web.Default.Svc.Cluster.Local.",
            RecordType::A,
            false,
        )
        .await,
        ask_tcp(server.addr, "web.default.svc.cluster.local.", RecordType::A).await,
    ] {
        assert_eq!(message.metadata.response_code, ResponseCode::NoError);
        assert!(message.metadata.authoritative);
        assert_eq!(
            addresses(&message),
            ["10.43.0.20".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(message.queries.len(), 1);
    }

    let nx = ask_udp(
        server.addr,
        "web.default.svc.cluster.local.default.svc.cluster.local.",
        RecordType::A,
        true,
    )
    .await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(nx.answers.is_empty());
    assert_eq!(nx.authorities.len(), 1);
    assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);
    assert_eq!(nx.authorities[0].name.to_ascii(), "cluster.local.");
    assert!(nx.edns.is_some(), "EDNS is echoed");

    let nodata = ask_tcp(
        server.addr,
        "web.default.svc.cluster.local.",
        RecordType::AAAA,
    )
    .await;
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    assert_eq!(nodata.authorities[0].record_type(), RecordType::SOA);

    let srv = ask_udp(
        server.addr,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
        true,
    )
    .await;
    assert_eq!(srv.answers.len(), 1);
    assert_eq!(
        srv.answers[0].data.to_string(),
        "0 100 80 web.default.svc.cluster.local."
    );
    assert_eq!(srv.additionals.len(), 1);

    let ptr = ask_udp(
        server.addr,
        "20.0.43.10.in-addr.arpa.",
        RecordType::PTR,
        false,
    )
    .await;
    assert_eq!(
        ptr.answers[0].data.to_string(),
        "web.default.svc.cluster.local."
    );
}

#[tokio::test]
async fn large_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let server = start(SharedIndex::with(index()), vec![]).await;
    let name = "many.default.svc.cluster.local.";
    let udp = ask_udp(server.addr, name, RecordType::A, false).await;
    assert!(
        udp.metadata.truncation,
        "100 addresses do not fit 512 bytes"
    );
    assert!(udp.answers.len() < 100);
    let edns = ask_udp(server.addr, name, RecordType::A, true).await;
    assert!(edns.metadata.truncation, "nor 1232 bytes");
    let tcp = ask_tcp(server.addr, name, RecordType::A).await;
    assert!(!tcp.metadata.truncation);
    assert_eq!(addresses(&tcp).len(), 100);
}

#[tokio::test]
async fn other_names_are_forwarded_upstream() {
    let upstream = Upstream::start().await;
    // A dead upstream first: the forwarder moves on to the next one.
    let dead = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    let server = start(SharedIndex::with(index()), vec![dead_addr, upstream.addr]).await;

    let answer = ask_udp(server.addr, "www.example.org.", RecordType::A, true).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(!answer.metadata.authoritative);
    assert_eq!(addresses(&answer), ["192.0.2.3".parse::<IpAddr>().unwrap()]);
    // Asked again (another case), it comes from the cache: the upstream hears it once.
    let before = upstream.asked.load(Ordering::SeqCst);
    let again = ask_tcp(server.addr, "WWW.example.org.", RecordType::A).await;
    assert_eq!(addresses(&again), addresses(&answer));
    assert!(again.answers[0].ttl <= 60);
    assert_eq!(
        upstream.asked.load(Ordering::SeqCst),
        before,
        "answered from the cache"
    );

    let nx = ask_tcp(server.addr, "nx.example.org.", RecordType::A).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);

    // The upstream truncates over UDP: the forwarder asks again over TCP, and the client,
    // over TCP, gets all 60.
    let big = ask_tcp(server.addr, "big.example.org.", RecordType::A).await;
    assert_eq!(addresses(&big).len(), 60);
    let big_udp = ask_udp(server.addr, "big.example.org.", RecordType::A, false).await;
    assert!(
        big_udp.metadata.truncation,
        "60 addresses do not fit 512 bytes"
    );

    // An ExternalName's target is resolved upstream after the CNAME.
    let ext = ask_udp(
        server.addr,
        "ext.default.svc.cluster.local.",
        RecordType::A,
        true,
    )
    .await;
    assert_eq!(ext.metadata.response_code, ResponseCode::NoError);
    assert_eq!(ext.answers.len(), 2, "{ext:?}");
    assert_eq!(ext.answers[0].record_type(), RecordType::CNAME);
    assert_eq!(addresses(&ext), ["192.0.2.3".parse::<IpAddr>().unwrap()]);
    drop(dead);
}

#[tokio::test]
async fn servfail_before_the_first_listing_and_without_upstreams() {
    let upstream = Upstream::start().await;
    let shared = SharedIndex::default();
    let server = start(shared.clone(), vec![upstream.addr]).await;
    let early = ask_udp(
        server.addr,
        "web.default.svc.cluster.local.",
        RecordType::A,
        true,
    )
    .await;
    assert_eq!(early.metadata.response_code, ResponseCode::ServFail);
    let outside = ask_udp(server.addr, "www.example.org.", RecordType::A, true).await;
    assert_eq!(
        addresses(&outside).len(),
        1,
        "outside names need no listing"
    );
    shared.set(index());
    let late = ask_udp(
        server.addr,
        "web.default.svc.cluster.local.",
        RecordType::A,
        true,
    )
    .await;
    assert_eq!(late.metadata.response_code, ResponseCode::NoError);

    // No upstream answers: SERVFAIL, after the timeout.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let lonely = start(
        SharedIndex::with(index()),
        vec![silent.local_addr().unwrap()],
    )
    .await;
    let failed = ask_udp(lonely.addr, "www.example.org.", RecordType::A, true).await;
    assert_eq!(failed.metadata.response_code, ResponseCode::ServFail);
    let none = start(SharedIndex::with(index()), vec![]).await;
    let failed = ask_tcp(none.addr, "www.example.org.", RecordType::A).await;
    assert_eq!(failed.metadata.response_code, ResponseCode::ServFail);
}
