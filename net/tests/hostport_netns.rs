//! Host ports in a real kernel: a "node" network namespace with an uplink to a "client"
//! namespace (two node addresses) and a pod bridge with two "pod" namespaces on hairpin
//! ports, as the CNI plugin makes them; all named `shoaltest-<pid>-hp-…` and deleted at the end,
//! also when the test fails. The table is rendered from Pod fixtures and applied with `nft` in
//! the node namespace; pod `a` answers every TCP connection and UDP datagram with the address
//! it came from, so the test sees both that a host port leads to the pod and what source
//! address arrived there. Twice: with the node's `bridge-nf-call-iptables` off and on. Needs
//! root, and the `br_netfilter` module for the second.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use nix::sched::{setns, CloneFlags};
use shoal_net::hostport::{self, TableConfig, TABLE};
use shoal_net::proxy::nft::Nft;

mod support;

use support::{in_netns, is_root, Netns};

/// A throwaway namespace with `lo` up.
fn netns(suffix: &str) -> Netns {
    let ns = Netns::add(&format!("hp-{suffix}"));
    ns.ip(&["link", "set", "lo", "up"]);
    ns
}

/// Writes a sysctl of the namespace (`/proc/sys/net` acts on the reader's namespace).
fn sysctl(ns: &Netns, key: &str, value: &str) {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    in_netns(&ns.path(), || {
        std::fs::write(&path, value).unwrap_or_else(|e| panic!("{path}: {e}"))
    });
}

/// Pod `a`'s servers: TCP and UDP on `port` of every address, answering with the peer's
/// address; stopped on drop.
struct EchoPeer {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl EchoPeer {
    fn start(netns: &Netns, port: u16) -> EchoPeer {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::new();
        for udp in [false, true] {
            let (path, flag, ready) = (netns.path(), Arc::clone(&stop), ready_tx.clone());
            threads.push(std::thread::spawn(move || {
                let file = File::open(&path).expect("open netns");
                setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
                let any = SocketAddrV4::new([0, 0, 0, 0].into(), port);
                if udp {
                    let socket = UdpSocket::bind(any).expect("bind udp");
                    socket
                        .set_read_timeout(Some(Duration::from_millis(50)))
                        .expect("timeout");
                    let _ = ready.send(());
                    let mut buf = [0u8; 64];
                    while !flag.load(Ordering::Relaxed) {
                        if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                            let _ = socket.send_to(peer.ip().to_string().as_bytes(), peer);
                        }
                    }
                } else {
                    let listener = TcpListener::bind(any).expect("bind tcp");
                    listener.set_nonblocking(true).expect("nonblocking");
                    let _ = ready.send(());
                    while !flag.load(Ordering::Relaxed) {
                        match listener.accept() {
                            Ok((mut conn, peer)) => {
                                let _ = conn.set_nonblocking(false);
                                let _ = conn.write_all(peer.ip().to_string().as_bytes());
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                                std::thread::sleep(Duration::from_millis(2));
                            }
                            Err(e) => panic!("accept: {e}"),
                        }
                    }
                }
            }));
        }
        for _ in 0..2 {
            ready_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("pod servers listening");
        }
        EchoPeer { stop, threads }
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// The source address pod `a` saw for a TCP connection from `from` to `to`, or the error.
fn tcp(from: &Netns, to: &str) -> Result<String, ErrorKind> {
    let to: SocketAddr = to.parse().expect("address");
    in_netns(&from.path(), || {
        let mut conn =
            TcpStream::connect_timeout(&to, Duration::from_secs(2)).map_err(|e| e.kind())?;
        conn.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.kind())?;
        let mut reply = String::new();
        conn.read_to_string(&mut reply).map_err(|e| e.kind())?;
        Ok(reply)
    })
}

/// The source address pod `a` saw for a datagram from `from` to `to`, if it answered.
fn udp(from: &Netns, to: &str) -> Option<String> {
    let to: SocketAddr = to.parse().expect("address");
    in_netns(&from.path(), || {
        let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
        socket.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        socket.send_to(b"?", to).ok()?;
        let mut buf = [0u8; 64];
        let (n, _) = socket.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
}

fn assert_root() {
    assert!(
        is_root(),
        "this test builds network namespaces and nftables rules: run it as root"
    );
}

const BR_NETFILTER: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

#[test]
fn host_ports_without_br_netfilter() {
    assert_root();
    scenario("plain", false);
}

#[test]
fn host_ports_with_br_netfilter() {
    assert_root();
    assert!(
        Path::new(BR_NETFILTER).exists(),
        "the br_netfilter module is not loaded (modprobe br_netfilter)"
    );
    scenario("brnf", true);
}

fn web_pod() -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "default",
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"containers": [{"name": "app", "ports": [
            {"containerPort": 7000, "hostPort": 18080},
            {"containerPort": 7000, "hostPort": 15353, "protocol": "UDP",
             "hostIP": "192.168.251.1"},
        ]}]},
    }))
    .expect("pod fixture")
}

/// The node's own processes, a client off the node, a neighbour pod and the pod itself all
/// reach `web` through its host ports; `hostIP` limits a port to that address; an empty table
/// closes them; removal leaves nothing behind.
fn scenario(tag: &str, br_netfilter: bool) {
    let node = netns(&format!("{tag}-node"));
    sysctl(&node, "net.ipv4.ip_forward", "1");
    if Path::new(BR_NETFILTER).exists() {
        sysctl(
            &node,
            "net.bridge.bridge-nf-call-iptables",
            if br_netfilter { "1" } else { "0" },
        );
    }
    // The uplink to a client off the node; the node has two addresses on it.
    let client = netns(&format!("{tag}-client"));
    node.ip(&[
        "link",
        "add",
        "up0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &client.name,
    ]);
    node.ip(&["addr", "add", "192.168.251.1/24", "dev", "up0"]);
    node.ip(&["addr", "add", "192.168.251.3/24", "dev", "up0"]);
    node.ip(&["link", "set", "up0", "up"]);
    client.ip(&["addr", "add", "192.168.251.2/24", "dev", "eth0"]);
    client.ip(&["link", "set", "eth0", "up"]);
    // The pod bridge, named as the agent's, with two pods.
    node.ip(&["link", "add", "shoal0", "type", "bridge"]);
    node.ip(&["addr", "add", "10.89.0.1/24", "dev", "shoal0"]);
    node.ip(&["link", "set", "shoal0", "up"]);
    let mut pods = Vec::new();
    for (i, name) in ["a", "b"].iter().enumerate() {
        let pod = netns(&format!("{tag}-{name}"));
        let host = format!("vhp{}{name}", std::process::id() % 100_000);
        node.ip(&[
            "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
        ]);
        node.ip(&["link", "set", &host, "master", "shoal0", "up"]);
        node.ip(&[
            "link",
            "set",
            &host,
            "type",
            "bridge_slave",
            "hairpin",
            "on",
        ]);
        pod.ip(&[
            "addr",
            "add",
            &format!("10.89.0.{}/24", i + 2),
            "dev",
            "eth0",
        ]);
        pod.ip(&["link", "set", "eth0", "up"]);
        pod.ip(&["route", "add", "default", "via", "10.89.0.1"]);
        pods.push(pod);
    }
    let (a, b) = (&pods[0], &pods[1]);
    let _servers = EchoPeer::start(a, 7000);
    let nft = Nft::in_netns(&node.name);
    let config = TableConfig {
        bridge: "shoal0".into(),
        pod_networks: vec!["10.89.0.0/16".parse().expect("cidr")],
    };

    // Nothing mapped yet: the node has nothing on 18080.
    hostport::apply(&nft, &BTreeMap::new(), &config).expect("empty table");
    assert_eq!(
        tcp(&client, "192.168.251.1:18080"),
        Err(ErrorKind::ConnectionRefused)
    );

    let web = web_pod();
    let mappings = hostport::mappings([(&web, Some("10.89.0.2".parse().expect("ip")))]);
    hostport::apply(&nft, &mappings, &config).expect("apply");
    // Applying again (an agent restart) replaces the table in place.
    hostport::apply(&nft, &mappings, &config).expect("apply again");

    // Off the node: on every node address, and the client's own address reaches the pod.
    for to in ["192.168.251.1:18080", "192.168.251.3:18080"] {
        assert_eq!(tcp(&client, to).as_deref(), Ok("192.168.251.2"), "{to}");
    }
    // The node's own processes (nat output).
    assert_eq!(
        tcp(&node, "192.168.251.1:18080").as_deref(),
        Ok("192.168.251.1")
    );
    // Another pod and the pod itself, from the bridge back onto it: masqueraded to the
    // bridge's address so the reply comes back the way it went.
    assert_eq!(tcp(b, "192.168.251.1:18080").as_deref(), Ok("10.89.0.1"));
    assert_eq!(tcp(a, "192.168.251.3:18080").as_deref(), Ok("10.89.0.1"));
    // Loopback is not mapped (it would need route_localnet).
    assert_eq!(
        tcp(&node, "127.0.0.1:18080"),
        Err(ErrorKind::ConnectionRefused)
    );

    // UDP with a hostIP: only on that address.
    assert_eq!(
        udp(&client, "192.168.251.1:15353").as_deref(),
        Some("192.168.251.2")
    );
    assert_eq!(udp(&client, "192.168.251.3:15353"), None);
    assert_eq!(udp(b, "192.168.251.1:15353").as_deref(), Some("10.89.0.1"));

    // The pod is gone: its ports close.
    hostport::apply(&nft, &BTreeMap::new(), &config).expect("empty again");
    assert_eq!(
        tcp(&client, "192.168.251.1:18080"),
        Err(ErrorKind::ConnectionRefused)
    );

    nft.apply(&hostport::removal()).expect("removal");
    assert!(nft.output(&["list", "table", "ip", TABLE]).is_err());
    // Removing a table that is not there is fine too.
    nft.apply(&hostport::removal()).expect("removal of nothing");
}
