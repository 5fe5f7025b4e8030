//! The `shoal-dns` dummy interface and the server bound on port 53 of the cluster DNS address,
//! in a network namespace of the test's own (a thread that `unshare`s one: it goes away with
//! the thread, so nothing is left on the machine whatever happens). Needs root.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::TryStreamExt;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use nix::sched::{unshare, CloneFlags};
use shoal_net::dns::forward::Forwarder;
use shoal_net::dns::iface::{ensure, remove, INTERFACE};
use shoal_net::dns::server::{serve, Handler, Listeners, SharedIndex};
use shoal_net::dns::{Index, ZoneConfig};
use tokio::net::UdpSocket;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
}

async fn set_lo_up() {
    let (conn, handle, _) = rtnetlink::new_connection().unwrap();
    tokio::spawn(conn);
    let lo = handle
        .link()
        .get()
        .match_name("lo".to_string())
        .execute()
        .try_next()
        .await
        .unwrap()
        .unwrap();
    handle
        .link()
        .set(
            rtnetlink::LinkUnspec::new_with_index(lo.header.index)
                .up()
                .build(),
        )
        .execute()
        .await
        .unwrap();
}

async fn addresses_of(name: &str) -> Vec<(IpAddr, u8)> {
    let netlink = shoal_net::cni::link::Netlink::here().unwrap();
    let link = netlink
        .link(name)
        .await
        .unwrap()
        .expect("the interface exists");
    netlink.addresses(link.index).await.unwrap()
}

async fn scenario() {
    set_lo_up().await;
    let dns: IpAddr = "10.43.0.10".parse().unwrap();
    ensure(INTERFACE, dns).await.unwrap();
    // Again, as an agent restart does: the interface is taken as it is.
    ensure(INTERFACE, dns).await.unwrap();
    let v4: Vec<_> = addresses_of(INTERFACE)
        .await
        .into_iter()
        .filter(|(ip, _)| ip.is_ipv4())
        .collect();
    assert_eq!(v4, [(dns, 32)], "the address once, as a host address");

    let zone = ZoneConfig {
        domain: "cluster.local".into(),
        dns_ip: dns,
        reverse_cidrs: vec![],
        ttl: 5,
    };
    let service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.43.0.20"}}))
    .unwrap();
    let index = Index::build(zone.clone(), 1, [&service], []);
    let listen = SocketAddr::new(dns, 53);
    let listeners = Listeners::bind(listen).await.unwrap();
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let handler = Handler::new(
        zone,
        SharedIndex::with(index),
        Forwarder::new(vec![], Duration::from_secs(1)),
    );
    tokio::spawn(serve(listeners, handler, stopped));

    let mut query = Message::query();
    query.metadata.id = 7;
    query.add_query(Query::query(
        Name::from_ascii("web.default.svc.cluster.local.").unwrap(),
        RecordType::A,
    ));
    let client = UdpSocket::bind("0.0.0.0:0").await.unwrap();
    client.connect(listen).await.unwrap();
    client.send(&query.to_vec().unwrap()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let len = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
        .await
        .expect("an answer from 10.43.0.10:53")
        .unwrap();
    let answer = Message::from_vec(&buf[..len]).unwrap();
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(
        matches!(&answer.answers[0].data, RData::A(a) if a.0 == "10.43.0.20".parse::<std::net::Ipv4Addr>().unwrap())
    );

    assert!(remove(INTERFACE).await.unwrap());
    assert!(!remove(INTERFACE).await.unwrap());
}

#[test]
fn dummy_interface_carries_the_dns_address() {
    assert!(
        is_root(),
        "this test needs root (it creates a network namespace and a dummy interface); CI runs as root"
    );
    std::thread::spawn(|| {
        unshare(CloneFlags::CLONE_NEWNET).expect("a network namespace of our own");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(scenario());
    })
    .join()
    .expect("the scenario in its own network namespace");
}
