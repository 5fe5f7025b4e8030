//! The proxy's nftables rules in a real kernel: a "node" network namespace with a bridge
//! (hairpin ports, as the CNI plugin makes them) and three "pod" namespaces (two TCP backends
//! that answer with their name, one client), all named `shoalpx-<pid>-…` and deleted at the
//! end, also when the test fails. The rules are rendered from Service and EndpointSlice
//! fixtures and applied over netlink in the node namespace, as the proxy does. Twice: with the
//! node's `bridge-nf-call-iptables` off (pod-to-pod replies skip the IP hooks) and on
//! (`br_netfilter` bridges a packet DNATed back onto its bridge), as both kinds of hosts
//! exist; then once more with dual-stack pods and Services, over IPv6. And the tables written
//! over netlink are compared with those nft writes from the same transaction as a script.
//! Needs root, and the `br_netfilter` module for the second.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use nix::sched::{setns, CloneFlags};
use serde_json::json;
use shoal_net::proxy::model::{service_ports, NodeContext, ServicePort};
use shoal_net::proxy::netlink::Nftables;
use shoal_net::proxy::nft::Nft;
use shoal_net::proxy::render::{self, Blocks, Change, TableConfig};
use shoal_net::proxy::ruleset::{Family, Op, Transaction};

struct Netns {
    name: String,
}

impl Netns {
    fn add(suffix: &str) -> Netns {
        let name = format!("shoalpx-{}-{suffix}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        in_netns(&self.path(), || {
            std::fs::write(&path, value).unwrap_or_else(|e| panic!("{path}: {e}"))
        });
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Process::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let out = Process::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(netns).expect("open netns");
            setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in netns")
    })
}

/// A TCP server in a namespace that writes `name` and the address the connection came from
/// to every connection; stopped on drop.
struct Backend {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    fn start(netns: &Netns, addr: SocketAddr, name: &'static str) -> Backend {
        let stop = Arc::new(AtomicBool::new(false));
        let path = netns.path();
        let flag = Arc::clone(&stop);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let file = File::open(&path).expect("open netns");
            setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
            let listener = TcpListener::bind(addr).expect("bind backend");
            listener.set_nonblocking(true).expect("nonblocking");
            let _ = ready_tx.send(());
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        let _ = conn.set_nonblocking(false);
                        // `[::]` listeners see IPv4 clients as mapped addresses.
                        let ip = match peer.ip() {
                            IpAddr::V6(v6) => v6
                                .to_ipv4_mapped()
                                .map(IpAddr::V4)
                                .unwrap_or(IpAddr::V6(v6)),
                            v4 => v4,
                        };
                        let _ = conn.write_all(format!("{name} {ip}").as_bytes());
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("backend listening");
        Backend {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A UDP server in a namespace answering every datagram with `name`, on a thread that ends
/// when the test process does (it only blocks in `recv_from` with a timeout).
fn udp_backend(netns: &Netns, addr: SocketAddr, name: &'static str, stop: Arc<AtomicBool>) {
    let path = netns.path();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let file = File::open(&path).expect("open netns");
        setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        let socket = std::net::UdpSocket::bind(addr).expect("bind udp");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let _ = ready_tx.send(());
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                let _ = socket.send_to(name.as_bytes(), peer);
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("udp backend bound");
}

/// The answer to one datagram from `from` to `to`, if any came within a second.
fn ask_udp(from: &Netns, to: SocketAddr) -> Option<String> {
    in_netns(&from.path(), || {
        let any = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let socket = std::net::UdpSocket::bind(any).ok()?;
        socket.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        socket.send_to(b"?", to).ok()?;
        let mut buf = [0u8; 64];
        let (n, _) = socket.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
}

/// What a connection from `from` to `to` got: the backend's name, or the error kind.
/// The source address the backend saw for one connection from `from` to `to`.
fn seen_source(from: &Netns, to: SocketAddr) -> String {
    let reply =
        fetch(from, to).unwrap_or_else(|e| panic!("connect from {} to {to}: {e:?}", from.name));
    reply.split(' ').nth(1).unwrap_or_default().to_string()
}

fn fetch(from: &Netns, to: SocketAddr) -> Result<String, ErrorKind> {
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

/// Replies to `n` connections, counted by backend name.
fn tally(from: &Netns, to: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let reply =
            fetch(from, to).unwrap_or_else(|e| panic!("connect from {} to {to}: {e:?}", from.name));
        let who = reply.split(' ').next().unwrap_or_default().to_string();
        *counts.entry(who).or_insert(0) += 1;
    }
    counts
}

fn service(value: serde_json::Value) -> Service {
    serde_json::from_value(value).expect("service fixture")
}

/// `web`'s slice: (address, ready) endpoints on this node, port 8080.
fn slice(endpoints: &[(&str, bool)]) -> EndpointSlice {
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|(ip, ready)| {
            json!({"addresses": [ip], "nodeName": "node",
                   "conditions": {"ready": ready, "serving": ready, "terminating": false}})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": "web-x",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }))
    .expect("slice fixture")
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse::<IpAddr>().expect("address"), port)
}

fn assert_root() {
    assert!(
        std::fs::metadata("/proc/self").map(|m| m.uid()).ok() == Some(0),
        "this test builds network namespaces and nftables rules: run it as root"
    );
}

const BR_NETFILTER: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";

#[test]
fn services_without_br_netfilter() {
    assert_root();
    scenario("plain", false);
}

#[test]
fn services_with_br_netfilter() {
    assert_root();
    assert!(
        Path::new(BR_NETFILTER).exists(),
        "the br_netfilter module is not loaded (modprobe br_netfilter)"
    );
    scenario("brnf", true);
}

/// Applies the incremental transaction taking one Service from `old` to `new`.
fn update(
    tables: &Nftables,
    config: &TableConfig,
    blocks: &mut Blocks,
    old: &[ServicePort],
    new: &[ServicePort],
    what: &str,
) {
    tables
        .apply(&render::incremental(config, &[Change { old, new }], blocks))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
}

/// A "node" namespace with an uplink holding the default routes (ClusterIPs are routable from
/// it, as on a real node) and a bridge `br0` (10.88.0.1/24, and fd88::1/64 with `ipv6`), and
/// three "pod" namespaces a, b, c on hairpin bridge ports at 10.88.0.2–4 (and fd88::2–4).
fn bridged_node(tag: &str, br_netfilter: bool, ipv6: bool) -> (Netns, Vec<Netns>) {
    let node = Netns::add(&format!("{tag}-node"));
    node.sysctl("net.ipv4.ip_forward", "1");
    if ipv6 {
        node.sysctl("net.ipv6.conf.all.forwarding", "1");
    }
    for key in ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"] {
        if Path::new("/proc/sys/net/bridge").join(key).exists() {
            node.sysctl(
                &format!("net.bridge.{key}"),
                if br_netfilter { "1" } else { "0" },
            );
        }
    }
    // IPv6 addresses skip duplicate detection, or they would not be usable for a while.
    let add6 = |ns: &Netns, address: &str, dev: &str| {
        if ipv6 {
            ns.ip(&["addr", "add", address, "dev", dev, "nodad"]);
        }
    };
    node.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
    node.ip(&["addr", "add", "192.168.250.1/24", "dev", "up0"]);
    add6(&node, "fd99::1/64", "up0");
    node.ip(&["link", "set", "up0", "up"]);
    node.ip(&["link", "set", "up1", "up"]);
    node.ip(&["route", "add", "default", "via", "192.168.250.2"]);
    if ipv6 {
        node.ip(&["-6", "route", "add", "default", "via", "fd99::2"]);
    }
    node.ip(&["link", "add", "br0", "type", "bridge"]);
    node.ip(&["addr", "add", "10.88.0.1/24", "dev", "br0"]);
    add6(&node, "fd88::1/64", "br0");
    node.ip(&["link", "set", "br0", "up"]);
    let mut pods = Vec::new();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let pod = Netns::add(&format!("{tag}-{name}"));
        let host = format!("vpx{}{name}", std::process::id() % 100_000);
        node.ip(&[
            "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &pod.name,
        ]);
        node.ip(&["link", "set", &host, "master", "br0", "up"]);
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
            &format!("10.88.0.{}/24", i + 2),
            "dev",
            "eth0",
        ]);
        add6(&pod, &format!("fd88::{}/64", i + 2), "eth0");
        pod.ip(&["link", "set", "eth0", "up"]);
        pod.ip(&["route", "add", "default", "via", "10.88.0.1"]);
        if ipv6 {
            pod.ip(&["-6", "route", "add", "default", "via", "fd88::1"]);
        }
        pods.push(pod);
    }
    (node, pods)
}

/// ClusterIP balancing, NodePort, reject, readiness through an incremental update, hairpin, UDP,
/// endpoints appearing, affinity and a stale table replaced.
fn scenario(tag: &str, br_netfilter: bool) {
    let (node, pods) = bridged_node(tag, br_netfilter, false);
    let (a, b, c) = (&pods[0], &pods[1], &pods[2]);
    let _backends = [
        Backend::start(a, addr("10.88.0.2", 8080), "a"),
        Backend::start(b, addr("10.88.0.3", 8080), "b"),
    ];

    let nft = Nft::in_netns(&node.name);
    let tables = Nftables::in_netns(&node.name);
    let config = TableConfig {
        cluster_cidr: Some(("10.88.0.0".parse().expect("cidr"), 16)),
        pod_bridge: Some("br0".into()),
        bridge_calls_iptables: br_netfilter,
        ..TableConfig::new("shoal-proxy")
    };
    let context = NodeContext {
        node_name: "node".into(),
        ..NodeContext::default()
    };
    let web = service(json!({
        "metadata": {"namespace": "default", "name": "web"},
        "spec": {"type": "NodePort", "clusterIP": "10.43.0.20",
                 "ports": [{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"}]}
    }));
    let empty = service(json!({
        "metadata": {"namespace": "default", "name": "empty"},
        "spec": {"clusterIP": "10.43.0.21", "ports": [{"name": "http", "port": 80}]}
    }));
    let stale = service(json!({
        "metadata": {"namespace": "default", "name": "stale"},
        "spec": {"clusterIP": "10.43.0.99", "ports": [{"name": "http", "port": 80}]}
    }));
    let both = slice(&[("10.88.0.2", true), ("10.88.0.3", true)]);
    let only_a = slice(&[("10.88.0.2", true), ("10.88.0.3", false)]);
    let ports = |svc: &Service, s: &[&EndpointSlice]| -> Vec<ServicePort> {
        service_ports(svc, s.iter().copied(), &context)
    };

    // An earlier run's table, with a Service that no longer exists: the full sync replaces it.
    let old = ports(&stale, &[]);
    let mut blocks = Blocks::default();
    tables
        .apply(&render::full(&config, &old, &mut blocks))
        .expect("first full sync");
    assert!(nft
        .output(&["list", "table", "ip", "shoal-proxy"])
        .expect("list")
        .contains("10.43.0.99"));

    let web_both = ports(&web, &[&both]);
    let empty_ports = ports(&empty, &[]);
    let started = Instant::now();
    let script = render::full(&config, web_both.iter().chain(&empty_ports), &mut blocks);
    tables.apply(&script).expect("full sync");
    eprintln!("full sync of 2 Services: {:?}", started.elapsed());
    let listing = nft
        .output(&["list", "table", "ip", "shoal-proxy"])
        .expect("list");
    assert!(
        !listing.contains("10.43.0.99"),
        "stale rules left:\n{listing}"
    );

    // The ClusterIP balances over both ready backends (from a pod on the same bridge).
    let cluster_ip = addr("10.43.0.20", 80);
    let counts = tally(c, cluster_ip, 40);
    assert!(
        counts.get("a").copied().unwrap_or(0) > 0 && counts.get("b").copied().unwrap_or(0) > 0,
        "ClusterIP did not reach both backends: {counts:?}"
    );

    // NodePort from the node itself (to its bridge address, a local address).
    let counts = tally(&node, addr("10.88.0.1", 30080), 20);
    assert_eq!(counts.values().sum::<usize>(), 20, "{counts:?}");
    // ClusterIP from the node too.
    assert_eq!(tally(&node, cluster_ip, 5).values().sum::<usize>(), 5);

    // No endpoints: refused at once, not a timeout.
    let started = Instant::now();
    assert_eq!(
        fetch(c, addr("10.43.0.21", 80)),
        Err(ErrorKind::ConnectionRefused)
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(
        fetch(&node, addr("10.43.0.21", 80)),
        Err(ErrorKind::ConnectionRefused),
        "from the node"
    );

    // b turns unready: an incremental update sends everything to a.
    let web_a = ports(&web, &[&only_a]);
    update(
        &tables,
        &config,
        &mut blocks,
        &web_both,
        &web_a,
        "incremental update",
    );
    assert_eq!(tally(c, cluster_ip, 20), [("a".to_string(), 20)].into());
    assert_eq!(
        tally(&node, addr("10.88.0.1", 30080), 10),
        [("a".to_string(), 10)].into()
    );

    // Hairpin: a reaches itself through its Service, masqueraded to the node.
    assert_eq!(tally(a, cluster_ip, 5), [("a".to_string(), 5)].into());
    assert_eq!(seen_source(a, cluster_ip), "10.88.0.1");
    // Another pod on the bridge keeps its address when br_netfilter un-NATs the bridged
    // reply; without it, it must be masqueraded.
    assert_eq!(
        seen_source(c, cluster_ip),
        if br_netfilter {
            "10.88.0.4"
        } else {
            "10.88.0.1"
        }
    );

    // The Service with no endpoints gets one: the reject is replaced by a DNAT.
    let empty_now = service_ports(&empty, [&slice(&[("10.88.0.3", true)])], &context);
    update(
        &tables,
        &config,
        &mut blocks,
        &empty_ports,
        &empty_now,
        "endpoints appear",
    );
    assert_eq!(
        tally(c, addr("10.43.0.21", 80), 5),
        [("b".to_string(), 5)].into()
    );

    // UDP: a Service port over a UDP backend, added incrementally.
    let udp_stop = Arc::new(AtomicBool::new(false));
    udp_backend(b, addr("10.88.0.3", 5353), "b-udp", Arc::clone(&udp_stop));
    let dns = service(json!({
        "metadata": {"namespace": "default", "name": "dns"},
        "spec": {"clusterIP": "10.43.0.53", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}
    }));
    let dns_slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": "dns-x",
                     "labels": {"kubernetes.io/service-name": "dns"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.88.0.3"], "nodeName": "node"}],
        "ports": [{"name": "dns", "port": 5353, "protocol": "UDP"}]
    }))
    .expect("slice fixture");
    let dns_ports = ports(&dns, &[&dns_slice]);
    update(
        &tables,
        &config,
        &mut blocks,
        &[],
        &dns_ports,
        "add UDP Service",
    );
    assert_eq!(
        ask_udp(c, addr("10.43.0.53", 53)).as_deref(),
        Some("b-udp"),
        "UDP through the ClusterIP"
    );
    udp_stop.store(true, Ordering::Relaxed);

    // ClientIP affinity: one client keeps its backend; the Service is added incrementally.
    let mut sticky = web.clone();
    sticky.metadata.name = Some("sticky".into());
    let spec = sticky.spec.as_mut().expect("spec");
    spec.cluster_ip = Some("10.43.0.30".into());
    spec.type_ = None;
    spec.session_affinity = Some("ClientIP".into());
    let sticky_ports = ports(&sticky, &[&both]);
    update(
        &tables,
        &config,
        &mut blocks,
        &[],
        &sticky_ports,
        "add sticky Service",
    );
    let counts = tally(c, addr("10.43.0.30", 80), 20);
    assert_eq!(counts.len(), 1, "affinity kept one backend: {counts:?}");

    // The tables go away with their namespace; delete them explicitly to check they are ours
    // alone.
    let mut delete = Transaction::new("shoal-proxy");
    delete.push(Family::V4, Op::DeleteTable);
    delete.push(Family::V6, Op::DeleteTable);
    tables.apply(&delete).expect("delete tables");
}

/// Services covering every kind of object the proxy writes, dual-stack.
fn varied_services(endpoints_ready: bool) -> Vec<ServicePort> {
    let context = NodeContext {
        node_name: "node".into(),
        ..NodeContext::default()
    };
    let web = service(json!({
        "metadata": {"namespace": "default", "name": "web"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.43.0.20",
                 "clusterIPs": ["10.43.0.20", "fd43::20"],
                 "externalIPs": ["192.0.2.7", "2001:db8::7"],
                 "ports": [{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}
    }));
    let sticky = service(json!({
        "metadata": {"namespace": "default", "name": "sticky"},
        "spec": {"clusterIP": "10.43.0.30", "clusterIPs": ["10.43.0.30", "fd43::30"],
                 "sessionAffinity": "ClientIP",
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    }));
    let dns = service(json!({
        "metadata": {"namespace": "default", "name": "dns"},
        "spec": {"type": "NodePort", "clusterIP": "fd43::53", "clusterIPs": ["fd43::53"],
                 "externalTrafficPolicy": "Local",
                 "ports": [{"name": "http", "port": 53, "nodePort": 30053, "protocol": "UDP"}]}
    }));
    let empty = service(json!({
        "metadata": {"namespace": "default", "name": "empty"},
        "spec": {"clusterIP": "10.43.0.21", "ports": [{"name": "http", "port": 80}]}
    }));
    let v4 = slice(&[("10.88.0.2", true), ("10.88.0.3", endpoints_ready)]);
    let v6_slice = |name: &str, service: &str, port: u16, protocol: &str| -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": name,
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv6",
            "endpoints": [{"addresses": ["fd88::2"], "nodeName": "node"},
                          {"addresses": ["fd88::3"], "nodeName": "other",
                           "conditions": {"ready": endpoints_ready}}],
            "ports": [{"name": "http", "port": port, "protocol": protocol}]
        }))
        .expect("slice fixture")
    };
    let mut sticky_v4 = v4.clone();
    sticky_v4.metadata.labels =
        Some([("kubernetes.io/service-name".into(), "sticky".into())].into());
    let mut ports = service_ports(
        &web,
        [&v4, &v6_slice("web-6", "web", 8080, "TCP")],
        &context,
    );
    ports.extend(service_ports(
        &sticky,
        [&sticky_v4, &v6_slice("sticky-6", "sticky", 8080, "TCP")],
        &context,
    ));
    ports.extend(service_ports(
        &dns,
        [&v6_slice("dns-6", "dns", 5353, "UDP")],
        &context,
    ));
    ports.extend(service_ports(&empty, [], &context));
    ports
}

/// What nft lists of both tables, rules as the kernel holds them (`--debug=netlink`) included,
/// as sorted lines: a map's elements come out in hash order, which differs between two
/// namespaces holding the same elements, so each element is a line of its own.
fn listing(nft: &Nft) -> Vec<String> {
    let mut lines = Vec::new();
    for family in ["ip", "ip6"] {
        let text = nft
            .output(&["--debug=netlink", "list", "table", family, "shoal-proxy"])
            .expect("list table");
        let mut in_elements = false;
        for line in text.lines() {
            let line = line.trim();
            let items = if let Some(rest) = line.strip_prefix("elements = {") {
                in_elements = true;
                rest
            } else if in_elements {
                line
            } else {
                lines.push(line.to_string());
                continue;
            };
            if items.ends_with('}') {
                in_elements = false;
            }
            lines.extend(
                items
                    .trim_end_matches('}')
                    .split(',')
                    .map(|item| item.trim().to_string())
                    .filter(|item| !item.is_empty()),
            );
        }
    }
    lines.sort();
    lines
}

/// The tables written over netlink are the ones nft writes from the same transaction as a
/// script: same rules, expressions, sets, user data and elements, after a full sync and after
/// an incremental one.
#[test]
fn netlink_writes_what_nft_writes() {
    assert_root();
    let ours = Netns::add("ours");
    let theirs = Netns::add("nft");
    let tables = Nftables::in_netns(&ours.name);
    let nft = Nft::in_netns(&theirs.name);
    let config = TableConfig {
        cluster_cidr: Some(("10.88.0.0".parse().expect("cidr"), 16)),
        cluster_cidr6: Some(("fd88::".parse().expect("cidr"), 64)),
        pod_bridge: Some("br0".into()),
        // Same-bridge traffic masqueraded only when a pod reaches itself (a set), over IPv4.
        bridge_calls_iptables: true,
        ..TableConfig::new("shoal-proxy")
    };
    let before = varied_services(true);
    let after = varied_services(false);
    let (mut ours_blocks, mut theirs_blocks) = (Blocks::default(), Blocks::default());
    let full = render::full(&config, &before, &mut ours_blocks);
    tables.apply(&full).expect("full sync over netlink");
    nft.apply(&render::full(&config, &before, &mut theirs_blocks).to_string())
        .expect("full sync through nft");
    let written = listing(&Nft::in_netns(&ours.name));
    assert!(
        written.iter().any(|l| l.contains("fd88::2 . 8080")),
        "{written:#?}"
    );
    assert_eq!(written, listing(&nft), "full sync");

    let change = [Change {
        old: &before,
        new: &after,
    }];
    let update = render::incremental(&config, &change, &mut ours_blocks);
    assert!(!update.is_empty());
    tables.apply(&update).expect("incremental over netlink");
    nft.apply(&render::incremental(&config, &change, &mut theirs_blocks).to_string())
        .expect("incremental through nft");
    assert_eq!(
        listing(&Nft::in_netns(&ours.name)),
        listing(&nft),
        "after a change"
    );
}

#[test]
fn dual_stack_services() {
    assert_root();
    assert!(
        Path::new("/proc/sys/net/ipv6").exists(),
        "this kernel has no IPv6"
    );
    scenario6("six", false);
}

#[test]
fn dual_stack_services_with_br_netfilter() {
    assert_root();
    assert!(
        Path::new(BR_NETFILTER).exists(),
        "the br_netfilter module is not loaded (modprobe br_netfilter)"
    );
    scenario6("sixbr", true);
}

/// `web`'s IPv6 slice: (address, ready) endpoints on this node, port 8080.
fn slice6(endpoints: &[(&str, bool)]) -> EndpointSlice {
    let mut s = slice(endpoints);
    s.metadata.name = Some("web-6".into());
    s.address_type = "IPv6".into();
    s
}

/// Dual-stack pods ("pods-ish": veths in namespaces with IPv4 and IPv6 addresses) behind a
/// dual-stack Service: balancing over IPv6 and IPv4 at once, NodePort over IPv6, reject,
/// readiness through an incremental update, hairpin and ClientIP affinity over IPv6.
fn scenario6(tag: &str, br_netfilter: bool) {
    let (node, pods) = bridged_node(tag, br_netfilter, true);
    let (a, b, c) = (&pods[0], &pods[1], &pods[2]);
    // `[::]` takes both families.
    let _backends = [
        Backend::start(a, addr("::", 8080), "a"),
        Backend::start(b, addr("::", 8080), "b"),
    ];

    let tables = Nftables::in_netns(&node.name);
    let config = TableConfig {
        cluster_cidr: Some(("10.88.0.0".parse().expect("cidr"), 16)),
        cluster_cidr6: Some(("fd88::".parse().expect("cidr"), 64)),
        pod_bridge: Some("br0".into()),
        bridge_calls_iptables: br_netfilter,
        bridge_calls_ip6tables: br_netfilter,
        ..TableConfig::new("shoal-proxy")
    };
    let context = NodeContext {
        node_name: "node".into(),
        ..NodeContext::default()
    };
    let web = service(json!({
        "metadata": {"namespace": "default", "name": "web"},
        "spec": {"type": "NodePort", "clusterIP": "10.43.0.20",
                 "clusterIPs": ["10.43.0.20", "fd43::20"],
                 "ports": [{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"}]}
    }));
    let empty = service(json!({
        "metadata": {"namespace": "default", "name": "empty"},
        "spec": {"clusterIP": "fd43::21", "clusterIPs": ["fd43::21"],
                 "ports": [{"name": "http", "port": 80}]}
    }));
    let v4 = slice(&[("10.88.0.2", true), ("10.88.0.3", true)]);
    let both6 = slice6(&[("fd88::2", true), ("fd88::3", true)]);
    let only_a6 = slice6(&[("fd88::2", true), ("fd88::3", false)]);
    let web_both = service_ports(&web, [&v4, &both6], &context);
    let empty_ports = service_ports(&empty, [], &context);
    let mut blocks = Blocks::default();
    tables
        .apply(&render::full(
            &config,
            web_both.iter().chain(&empty_ports),
            &mut blocks,
        ))
        .expect("full sync");

    // The node talks to the pods once first: with bridge-nf-call-ip6tables on, the first
    // SYNs of a connection DNATed back onto the bridge towards a pod the node has no
    // neighbour entry for yet are lost, so it takes 1–2 s of retransmissions (seen on kernel
    // 6.18, masqueraded or not; without br_netfilter, or over IPv4, it takes 0.3 ms).
    for pod in ["fd88::2", "fd88::3"] {
        assert!(fetch(&node, addr(pod, 8080)).is_ok(), "node to {pod}");
    }
    // Both ClusterIPs balance over both backends, each over its own family.
    for vip in ["[fd43::20]:80", "10.43.0.20:80"] {
        let vip: SocketAddr = vip.parse().expect("address");
        let counts = tally(c, vip, 40);
        assert!(
            counts.get("a").copied().unwrap_or(0) > 0 && counts.get("b").copied().unwrap_or(0) > 0,
            "{vip} did not reach both backends: {counts:?}"
        );
    }
    // NodePort over IPv6, from the node to its bridge address.
    assert_eq!(
        tally(&node, addr("fd88::1", 30080), 10)
            .values()
            .sum::<usize>(),
        10
    );
    // ClusterIP from the node.
    assert_eq!(
        tally(&node, addr("fd43::20", 80), 5)
            .values()
            .sum::<usize>(),
        5
    );
    // No endpoints: refused at once (TCP reset over IPv6).
    let started = Instant::now();
    assert_eq!(
        fetch(c, addr("fd43::21", 80)),
        Err(ErrorKind::ConnectionRefused)
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    // b turns unready over IPv6 only: IPv6 goes to a, IPv4 still to both.
    let web_a6 = service_ports(&web, [&v4, &only_a6], &context);
    let tx = render::incremental(
        &config,
        &[Change {
            old: &web_both,
            new: &web_a6,
        }],
        &mut blocks,
    );
    assert!(
        tx.ops.iter().all(|(family, _)| *family == Family::V6),
        "only the IPv6 table changes: {tx}"
    );
    tables.apply(&tx).expect("incremental update");
    assert_eq!(
        tally(c, addr("fd43::20", 80), 20),
        [("a".to_string(), 20)].into()
    );
    let counts = tally(c, addr("10.43.0.20", 80), 40);
    assert_eq!(counts.len(), 2, "IPv4 untouched: {counts:?}");

    assert_eq!(
        seen_source(c, addr("fd43::20", 80)),
        if br_netfilter { "fd88::4" } else { "fd88::1" }
    );
    // Hairpin over IPv6: a reaches itself through its Service, masqueraded.
    assert_eq!(
        tally(a, addr("fd43::20", 80), 5),
        [("a".to_string(), 5)].into()
    );
    assert_eq!(seen_source(a, addr("fd43::20", 80)), "fd88::1");

    // ClientIP affinity over IPv6, added incrementally.
    let sticky = service(json!({
        "metadata": {"namespace": "default", "name": "sticky"},
        "spec": {"clusterIP": "fd43::30", "clusterIPs": ["fd43::30"],
                 "sessionAffinity": "ClientIP",
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    }));
    let mut sticky_slice = both6.clone();
    sticky_slice.metadata.labels =
        Some([("kubernetes.io/service-name".into(), "sticky".into())].into());
    let sticky_ports = service_ports(&sticky, [&sticky_slice], &context);
    update(
        &tables,
        &config,
        &mut blocks,
        &[],
        &sticky_ports,
        "add sticky Service",
    );
    let counts = tally(c, addr("fd43::30", 80), 20);
    assert_eq!(counts.len(), 1, "affinity kept one backend: {counts:?}");
}
