//! The overlay between two "nodes", each a network namespace whose `eth0` sits on a bridge in
//! a third "LAN" namespace (192.168.254.0/24, the LAN holding .254 as an address outside the
//! cluster). In each node the real overlay code runs (on a thread inside its namespace) and
//! a "pod" namespace is attached through the real CNI plugin. Everything lives in
//! `shoaltest-<pid>-ov-*` namespaces, deleted at the end (also on failure), so the host's
//! network is never touched. Needs root: fails with a message otherwise.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, NodeSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;
use shoal_common::Cidr;
use shoal_net::cni::{self, Command, Request};
use shoal_net::overlay::{Overlay, OverlayConfig, OverlayError, SyncReport, DEVICE_V4, DEVICE_V6};
use support::{in_netns, ip_json, is_root, Netns};

const CLUSTER: &str = "10.42.0.0/16";
const OUTSIDE: &str = "192.168.254.254";

struct TestNode {
    ns: Netns,
    pod: Netns,
    config: OverlayConfig,
    ipam: tempfile::TempDir,
}

impl TestNode {
    fn name(&self) -> &str {
        &self.config.node_name
    }

    fn subnet(&self) -> Cidr {
        self.config.pod_cidrs[0]
    }
}

/// What one run of the overlay on a node gives: its annotations, pod MTU and sync report.
type Run = (BTreeMap<String, String>, u32, Option<SyncReport>);

/// Runs the overlay on `node`: setup (idempotent), then a sync with `nodes` when given.
fn overlay(node: &TestNode, nodes: Option<&[Node]>) -> Result<Run, OverlayError> {
    overlay_with(node, &node.config, nodes)
}

/// [`overlay`] with another configuration for the same node.
fn overlay_with(
    node: &TestNode,
    config: &OverlayConfig,
    nodes: Option<&[Node]>,
) -> Result<Run, OverlayError> {
    in_netns(&node.ns.path(), || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let overlay = Overlay::setup(config).await?;
            let report = match nodes {
                Some(nodes) => Some(overlay.sync(nodes).await?),
                None => None,
            };
            Ok((overlay.annotations(), overlay.mtu(), report))
        })
    })
}

fn teardown(node: &TestNode) -> Result<(), OverlayError> {
    in_netns(&node.ns.path(), || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(Overlay::teardown())
    })
}

fn node_object(node: &TestNode, annotations: &BTreeMap<String, String>) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(node.name().to_string()),
            annotations: Some(annotations.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(node.subnet().to_string()),
            pod_cidrs: Some(node.config.pod_cidrs.iter().map(Cidr::to_string).collect()),
            ..NodeSpec::default()
        }),
        status: None,
    }
}

/// The "LAN" namespace: a bridge `lan0`, holding `address` when given.
fn make_lan(tag: &str, address: Option<&str>) -> Netns {
    let lan = Netns::add(&format!("{tag}-lan"));
    lan.ip(&["link", "add", "lan0", "type", "bridge"]);
    if let Some(address) = address {
        lan.ip(&["addr", "add", address, "dev", "lan0"]);
    }
    lan.ip(&["link", "set", "lan0", "up"]);
    lan
}

/// Makes node `n` (1-based): its namespace wired to the LAN by `eth0`, and an empty pod
/// namespace. IPv4: 192.168.254.n, pod CIDR 10.42.n.0/24; IPv6: fd99::n, fd00:42:n::/64.
fn make_node(lan: &Netns, tag: &str, n: u8, ipv6: bool) -> TestNode {
    let ns = Netns::add(&format!("{tag}-n{n}"));
    let pod = Netns::add(&format!("{tag}-p{n}"));
    let up = format!("up{n}");
    lan.ip(&[
        "link", "add", &up, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
    ]);
    lan.ip(&["link", "set", &up, "master", "lan0", "up"]);
    let (node_ip, prefix, subnet, cluster) = if ipv6 {
        (
            format!("fd99::{n}"),
            64,
            format!("fd00:42:{n}::/64"),
            "fd00:42::/48",
        )
    } else {
        (
            format!("192.168.254.{n}"),
            24,
            format!("10.42.{n}.0/24"),
            CLUSTER,
        )
    };
    // No duplicate address detection: a tentative address cannot be a tunnel's source yet.
    ns.ip(&[
        "addr",
        "add",
        &format!("{node_ip}/{prefix}"),
        "dev",
        "eth0",
        "nodad",
    ]);
    ns.ip(&["link", "set", "eth0", "up"]);
    ns.ip(&["link", "set", "lo", "up"]);
    TestNode {
        ns,
        pod,
        config: OverlayConfig {
            node_name: format!("node-{n}"),
            node_ips: vec![node_ip.parse().expect("ip")],
            pod_cidrs: vec![subnet.parse().expect("cidr")],
            cluster_cidrs: vec![cluster.parse().expect("cidr")],
        },
        ipam: tempfile::tempdir().expect("tempdir"),
    }
}

/// Attaches the node's pod through the CNI plugin; returns the pod's address.
fn attach_pod(node: &TestNode, mtu: u32) -> IpAddr {
    attach_pod_ips(node, mtu)[0]
}

/// Attaches the node's pod through the CNI plugin, with an address of each of the node's
/// pod CIDRs; returns them.
fn attach_pod_ips(node: &TestNode, mtu: u32) -> Vec<IpAddr> {
    let subnets: Vec<String> = node.config.pod_cidrs.iter().map(Cidr::to_string).collect();
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "shoaltest",
        "type": "shoal-cni",
        "bridge": "shoal0",
        "subnets": subnets,
        "mtu": mtu,
        "dataDir": node.ipam.path(),
    })
    .to_string();
    let request = Request {
        command: Command::Add,
        container_id: format!("pod-{}", node.name()),
        netns: Some(node.pod.path()),
        ifname: "eth0".to_string(),
        args: Vec::new(),
        path: Vec::new(),
    };
    let out =
        in_netns(&node.ns.path(), || cni::execute(&request, conf.as_bytes())).expect("CNI ADD");
    let result: Value = serde_json::from_str(&out).expect("result json");
    result["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .map(|ip| {
            ip["address"]
                .as_str()
                .and_then(|a| a.split('/').next())
                .and_then(|a| a.parse().ok())
                .expect("pod address")
        })
        .collect()
}

fn listen(ns: &Netns, at: SocketAddr) -> TcpListener {
    in_netns(&ns.path(), || {
        let listener = TcpListener::bind(at).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        listener
    })
}

/// Connects from `from` to `listener` (at `to`), sends `bytes` bytes and reads them back as
/// counted by the far side; returns the source address the far side saw.
fn exchange(
    from: &Netns,
    listener: &TcpListener,
    to: SocketAddr,
    bytes: usize,
) -> Result<IpAddr, String> {
    let mut client = in_netns(&from.path(), || {
        TcpStream::connect_timeout(&to, Duration::from_secs(2))
    })
    .map_err(|e| format!("connect to {to}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let (mut server, peer) = loop {
        match listener.accept() {
            Ok(pair) => break pair,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    };
    server.set_nonblocking(false).map_err(|e| e.to_string())?;
    server
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let reader = std::thread::spawn(move || {
        let mut total = 0usize;
        let mut buf = vec![0u8; 65536];
        loop {
            match server.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) => return Err(e.to_string()),
            }
        }
        server
            .write_all(&total.to_be_bytes())
            .map_err(|e| e.to_string())?;
        Ok(total)
    });
    let chunk = vec![0x5au8; 65536];
    let mut sent = 0;
    while sent < bytes {
        let n = chunk.len().min(bytes - sent);
        client
            .write_all(&chunk[..n])
            .map_err(|e| format!("send: {e}"))?;
        sent += n;
    }
    client
        .shutdown(std::net::Shutdown::Write)
        .map_err(|e| e.to_string())?;
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut count = [0u8; 8];
    client
        .read_exact(&mut count)
        .map_err(|e| format!("reading the count back: {e}"))?;
    let received = reader.join().map_err(|_| "reader panicked")??;
    if usize::from_be_bytes(count) != bytes || received != bytes {
        return Err(format!("sent {bytes}, received {received}"));
    }
    Ok(peer.ip())
}

/// The VXLAN device's forwarding database (`bridge -j fdb show`).
fn fdb_of(ns: &Netns) -> Option<Value> {
    let out = std::process::Command::new("bridge")
        .args(["-n", &ns.name, "-j", "fdb", "show", "dev", DEVICE_V4])
        .output()
        .expect("run bridge");
    assert!(
        out.status.success(),
        "bridge fdb show: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).ok()
}

fn has(list: &Option<Value>, key: &str, value: &str) -> bool {
    list.as_ref()
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|e| e[key] == value))
}

#[test]
fn pods_reach_each_other_across_the_vxlan_overlay() {
    assert!(
        is_root(),
        "pods_reach_each_other_across_the_vxlan_overlay needs root (network namespaces, VXLAN, \
         nftables); run the tests as root"
    );
    let lan = make_lan("ov", Some(&format!("{OUTSIDE}/24")));
    let one = make_node(&lan, "ov", 1, false);
    let two = make_node(&lan, "ov", 2, false);

    // Each node brings its side up and publishes its VTEP; the MTU leaves room for VXLAN.
    let (notes1, mtu1, _) = overlay(&one, None).expect("overlay setup on node 1");
    let (notes2, mtu2, _) = overlay(&two, None).expect("overlay setup on node 2");
    assert_eq!((mtu1, mtu2), (1450, 1450));
    assert_eq!(
        notes1["flannel.alpha.coreos.com/public-ip"],
        "192.168.254.1"
    );
    let link = ip_json(&one.ns, &["-d", "addr", "show", "dev", DEVICE_V4]).expect("vxlan device");
    let link = &link[0];
    assert_eq!(link["mtu"], 1450);
    assert_eq!(link["linkinfo"]["info_kind"], "vxlan");
    assert_eq!(link["linkinfo"]["info_data"]["id"], 1);
    assert_eq!(link["linkinfo"]["info_data"]["port"], 8472);
    assert_eq!(link["linkinfo"]["info_data"]["local"], "192.168.254.1");
    assert_eq!(link["linkinfo"]["info_data"]["learning"], false);
    assert!(
        has(&Some(link["addr_info"].clone()), "local", "10.42.1.0")
            && link["addr_info"][0]["prefixlen"] == 32,
        "{link}"
    );
    let backend: Value =
        serde_json::from_str(&notes1["flannel.alpha.coreos.com/backend-data"]).expect("json");
    assert_eq!(backend["VtepMAC"], link["address"]);

    let pod1 = attach_pod(&one, mtu1);
    let pod2 = attach_pod(&two, mtu2);
    let nodes = [node_object(&one, &notes1), node_object(&two, &notes2)];
    let (_, _, report) = overlay(&one, Some(&nodes)).expect("sync node 1");
    assert_eq!(
        report.expect("report").changes.len(),
        3,
        "route, neighbour, FDB"
    );
    overlay(&two, Some(&nodes)).expect("sync node 2");

    // Node 1 holds node 2's route, neighbour and FDB entry.
    let routes = ip_json(&one.ns, &["route", "show", "dev", DEVICE_V4]);
    assert!(has(&routes, "dst", "10.42.2.0/24"), "{routes:?}");
    assert!(has(&routes, "gateway", "10.42.2.0"), "{routes:?}");
    let neigh = ip_json(&one.ns, &["neigh", "show", "dev", DEVICE_V4]);
    assert!(has(&neigh, "dst", "10.42.2.0"), "{neigh:?}");
    let mac2: Value =
        serde_json::from_str(&notes2["flannel.alpha.coreos.com/backend-data"]).expect("json");
    let mac2 = mac2["VtepMAC"].as_str().expect("mac").to_string();
    assert!(has(&neigh, "lladdr", &mac2), "{neigh:?}");
    let fdb = fdb_of(&one.ns);
    assert!(
        has(&fdb, "mac", &mac2) && has(&fdb, "dst", "192.168.254.2"),
        "{fdb:?}"
    );

    // A second sync changes nothing.
    let (_, _, again) = overlay(&one, Some(&nodes)).expect("sync node 1 again");
    let again = again.expect("report").changes;
    assert!(again.is_empty(), "{again:?}");

    // Pod to pod across nodes, 4 MiB both ways of the handshake, keeps the pod source IP.
    let at2 = SocketAddr::new(pod2, 7001);
    let listener2 = listen(&two.pod, at2);
    let seen = exchange(&one.pod, &listener2, at2, 4 << 20).expect("pod 1 → pod 2");
    assert_eq!(seen, pod1, "pod 2 sees pod 1's address (not masqueraded)");
    let at1 = SocketAddr::new(pod1, 7002);
    let listener1 = listen(&one.pod, at1);
    assert_eq!(
        exchange(&two.pod, &listener1, at1, 1 << 20).expect("pod 2 → pod 1"),
        pod2
    );

    // Leaving the cluster CIDR, the pod's traffic takes the node's address.
    let outside = SocketAddr::new(OUTSIDE.parse().expect("ip"), 7003);
    let lan_listener = listen(&lan, outside);
    assert_eq!(
        exchange(&one.pod, &lan_listener, outside, 1 << 20).expect("pod 1 → LAN"),
        "192.168.254.1".parse::<IpAddr>().expect("ip"),
        "masqueraded to node 1's address"
    );

    // Node 2 leaves: its route, neighbour and FDB entry go, and so does the path.
    let (_, _, gone) = overlay(&one, Some(&nodes[..1])).expect("sync without node 2");
    assert_eq!(gone.expect("report").changes.len(), 3);
    let routes = ip_json(&one.ns, &["route", "show", "dev", DEVICE_V4]);
    assert!(!has(&routes, "dst", "10.42.2.0/24"), "{routes:?}");
    let neigh = ip_json(&one.ns, &["neigh", "show", "dev", DEVICE_V4]);
    assert!(!has(&neigh, "dst", "10.42.2.0"), "{neigh:?}");
    let fdb = fdb_of(&one.ns);
    assert!(!has(&fdb, "mac", &mac2), "{fdb:?}");
    assert!(exchange(&one.pod, &listener2, at2, 1024).is_err());

    // It comes back (a restart reconciling from scratch looks the same).
    overlay(&one, Some(&nodes)).expect("sync with node 2 again");
    assert_eq!(
        exchange(&one.pod, &listener2, at2, 1024).expect("pod 1 → pod 2 again"),
        pod1
    );

    // A node whose address changed gets its device recreated with the new tunnel source.
    one.ns
        .ip(&["addr", "add", "192.168.254.11/24", "dev", "eth0"]);
    let mut moved = one.config.clone();
    moved.node_ips = vec!["192.168.254.11".parse().expect("ip")];
    let (notes, _, _) = overlay_with(&one, &moved, None).expect("setup after the address moved");
    assert_eq!(
        notes["flannel.alpha.coreos.com/public-ip"],
        "192.168.254.11"
    );
    let link = ip_json(&one.ns, &["-d", "link", "show", "dev", DEVICE_V4]).expect("device");
    assert_eq!(link[0]["linkinfo"]["info_data"]["local"], "192.168.254.11");
    assert_eq!(link[0]["address"], backend["VtepMAC"], "the MAC survives");

    // Teardown removes the device and our nftables table.
    teardown(&one).expect("teardown");
    assert!(ip_json(&one.ns, &["link", "show", "dev", DEVICE_V4]).is_none());
    let table = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &one.ns.name,
            "nft",
            "list",
            "table",
            "inet",
            "shoal-masq",
        ])
        .output()
        .expect("nft");
    assert!(!table.status.success(), "the masquerade table is gone");
}

/// The IPv6 half of dual-stack, node to node: IPv6 underlay addresses, IPv6 pod CIDRs, the
/// `shoal-vxlan6` device with flannel's v6 annotations. (The CNI plugin gives pods IPv4
/// only so far, so the VTEP addresses stand in for pods: each node's source address towards
/// the other's pod CIDR is its own VTEP address, which lies in its pod CIDR.)
#[test]
fn ipv6_nodes_reach_each_other_across_the_vxlan_overlay() {
    assert!(
        is_root(),
        "ipv6_nodes_reach_each_other_across_the_vxlan_overlay needs root (network namespaces, \
         VXLAN, nftables); run the tests as root"
    );
    let lan = make_lan("ov6", None);
    let nodes = [
        make_node(&lan, "ov6", 1, true),
        make_node(&lan, "ov6", 2, true),
    ];
    let (one, two) = (&nodes[0], &nodes[1]);
    let (notes1, mtu, _) = overlay(one, None).expect("overlay setup on node 1");
    let (notes2, _, _) = overlay(two, None).expect("overlay setup on node 2");
    assert_eq!(mtu, 1430, "1500 minus VXLAN over IPv6");
    assert_eq!(notes1["flannel.alpha.coreos.com/public-ipv6"], "fd99::1");
    assert!(notes1.contains_key("flannel.alpha.coreos.com/backend-v6-data"));
    let objects = [node_object(one, &notes1), node_object(two, &notes2)];
    let (_, _, report) = overlay(one, Some(&objects)).expect("sync node 1");
    assert_eq!(report.expect("report").changes.len(), 3);
    overlay(two, Some(&objects)).expect("sync node 2");

    let link = ip_json(&one.ns, &["-d", "link", "show", "dev", DEVICE_V6]).expect("device");
    assert_eq!(link[0]["linkinfo"]["info_data"]["local6"], "fd99::1");
    let routes = ip_json(&one.ns, &["-6", "route", "show", "dev", DEVICE_V6]);
    assert!(has(&routes, "dst", "fd00:42:2::/64"), "{routes:?}");

    let vtep2: IpAddr = "fd00:42:2::".parse().expect("ip");
    let at = SocketAddr::new(vtep2, 7004);
    let listener = listen(&two.ns, at);
    assert_eq!(
        exchange(&one.ns, &listener, at, 1 << 20).expect("node 1 → node 2's pod CIDR"),
        "fd00:42:1::".parse::<IpAddr>().expect("ip"),
        "the source is node 1's VTEP address, not masqueraded"
    );
}

#[test]
fn dual_stack_pods_reach_each_other_over_the_ipv4_vxlan() {
    assert!(
        is_root(),
        "dual_stack_pods_reach_each_other_over_the_ipv4_vxlan needs root (network namespaces, \
         VXLAN, nftables); run the tests as root"
    );
    let lan = make_lan("ds", None);
    let mut one = make_node(&lan, "ds", 1, false);
    let mut two = make_node(&lan, "ds", 2, false);
    // Dual-stack nodes with one (IPv4) address each, as `--node-ip` gives them.
    for (node, n) in [(&mut one, 1), (&mut two, 2)] {
        node.config
            .pod_cidrs
            .push(format!("fd00:42:0:{n}::/64").parse().expect("cidr"));
        node.config
            .cluster_cidrs
            .push("fd00:42::/56".parse().expect("cidr"));
    }
    let (notes1, mtu1, _) = overlay(&one, None).expect("overlay setup on node 1");
    let (notes2, mtu2, _) = overlay(&two, None).expect("overlay setup on node 2");
    assert!(
        !notes1.contains_key("flannel.alpha.coreos.com/backend-v6-data"),
        "no IPv6 VTEP without an IPv6 node address: {notes1:?}"
    );
    assert!(ip_json(&one.ns, &["link", "show", "dev", DEVICE_V6]).is_none());
    let pod1 = attach_pod_ips(&one, mtu1);
    let pod2 = attach_pod_ips(&two, mtu2);
    assert!(pod1[1].is_ipv6() && pod2[1].is_ipv6(), "{pod1:?} {pod2:?}");
    let nodes = [node_object(&one, &notes1), node_object(&two, &notes2)];
    let (_, _, report) = overlay(&one, Some(&nodes)).expect("sync node 1");
    assert_eq!(
        report.expect("report").changes.len(),
        5,
        "a route and a neighbour per family, one FDB entry"
    );
    overlay(&two, Some(&nodes)).expect("sync node 2");
    let routes = ip_json(&one.ns, &["-6", "route", "show", "dev", DEVICE_V4]);
    assert!(has(&routes, "dst", "fd00:42:0:2::/64"), "{routes:?}");
    let neigh = ip_json(&one.ns, &["-6", "neigh", "show", "dev", DEVICE_V4]);
    assert!(has(&neigh, "dst", "fd00:42:0:2::"), "{neigh:?}");
    // What the kernel holds is read back for both families: a second sync changes nothing.
    let (_, _, again) = overlay(&one, Some(&nodes)).expect("sync node 1 again");
    let again = again.expect("report").changes;
    assert!(again.is_empty(), "{again:?}");

    // Pod to pod across nodes over IPv6 (inside IPv4 VXLAN), keeping the source address,
    // and over IPv4 alongside.
    let at2 = SocketAddr::new(pod2[1], 7101);
    let listener2 = listen(&two.pod, at2);
    let seen = exchange(&one.pod, &listener2, at2, 1 << 20).expect("pod 1 → pod 2 over IPv6");
    assert_eq!(seen, pod1[1], "pod 2 sees pod 1's IPv6 address");
    let at1 = SocketAddr::new(pod1[1], 7102);
    let listener1 = listen(&one.pod, at1);
    assert_eq!(
        exchange(&two.pod, &listener1, at1, 1 << 20).expect("pod 2 → pod 1 over IPv6"),
        pod2[1]
    );
    let at2v4 = SocketAddr::new(pod2[0], 7103);
    let listener2v4 = listen(&two.pod, at2v4);
    assert_eq!(
        exchange(&one.pod, &listener2v4, at2v4, 1024).expect("pod 1 → pod 2 over IPv4"),
        pod1[0]
    );

    // Node 2 leaves: both families' entries go.
    let (_, _, gone) = overlay(&one, Some(&nodes[..1])).expect("sync without node 2");
    assert_eq!(gone.expect("report").changes.len(), 5);
    assert!(exchange(&one.pod, &listener2, at2, 1024).is_err());
    teardown(&one).expect("teardown node 1");
    teardown(&two).expect("teardown node 2");
}
