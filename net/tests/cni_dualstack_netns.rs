//! A dual-stack ADD, CHECK and DEL through the plugin library against real network
//! namespaces: a "node" namespace holding the bridge and two "pod" namespaces, all named
//! `shoaltest-<pid>-ds-…` and deleted at the end, also when the test fails. Each pod gets an IPv4
//! and an IPv6 address, both gateways sit on the bridge, and the pods reach each other and
//! the gateway over IPv6 (TCP, with the client's own address as the source). Needs root.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use shoal_net::cni::{self, Command, Request};
use support::{in_netns, ip_json, is_root, Netns};

fn request(command: Command, id: &str, netns: Option<&Netns>) -> Request {
    support::cni_request(command, id, netns)
}

/// The addresses of `family` (`inet`/`inet6`) with global scope on `dev` in `ns`.
fn global_addresses(ns: &Netns, dev: &str, family: &str) -> Vec<(String, u64)> {
    let Some(links) = ip_json(ns, &["addr", "show", "dev", dev]) else {
        return Vec::new();
    };
    links[0]["addr_info"]
        .as_array()
        .map(|infos| {
            infos
                .iter()
                .filter(|a| a["family"] == family && a["scope"] == "global")
                .map(|a| {
                    (
                        a["local"].as_str().unwrap_or_default().to_string(),
                        a["prefixlen"].as_u64().unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A TCP connection from inside `from` to `to` (which listens inside `at`): the source
/// address the listener saw, or None when nothing connected within a few seconds.
fn tcp_reach(from: &Path, at: &Path, to: SocketAddr) -> Option<IpAddr> {
    let listener = in_netns(at, || TcpListener::bind(to).expect("listen"));
    listener.set_nonblocking(false).expect("blocking");
    let client = in_netns(from, || {
        TcpStream::connect_timeout(&to, Duration::from_secs(5)).map(|mut s| {
            let _ = s.write_all(b"hello");
            s
        })
    });
    let _client = client.ok()?;
    let (mut conn, peer) = listener.accept().ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut got = [0u8; 5];
    conn.read_exact(&mut got).ok()?;
    (&got == b"hello").then_some(peer.ip())
}

#[test]
fn dual_stack_add_check_del_in_network_namespaces() {
    assert!(
        is_root(),
        "dual_stack_add_check_del_in_network_namespaces needs root (network namespaces)"
    );
    let node = Netns::add("ds-node");
    let pod_a = Netns::add("ds-a");
    let pod_b = Netns::add("ds-b");
    let state = tempfile::tempdir().expect("tempdir");
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "shoaltest",
        "type": "shoal-cni",
        "bridge": "shoaldsbr0",
        "subnets": ["10.98.7.0/24", "fd00:98:0:7::/64"],
        "mtu": 1400,
        "dataDir": state.path(),
    })
    .to_string();
    let conf_040 = conf.replace("\"1.0.0\"", "\"0.4.0\"");
    let run =
        |req: Request, conf: &str| in_netns(&node.path(), || cni::execute(&req, conf.as_bytes()));

    let out = run(request(Command::Add, "pod-a", Some(&pod_a)), &conf).expect("ADD a");
    let result: Value = serde_json::from_str(&out).expect("result json");
    assert_eq!(
        result["ips"],
        serde_json::json!([
            {"address": "10.98.7.2/24", "gateway": "10.98.7.1", "interface": 1},
            {"address": "fd00:98:0:7::2/64", "gateway": "fd00:98:0:7::1", "interface": 1},
        ])
    );
    assert_eq!(
        result["routes"],
        serde_json::json!([
            {"dst": "0.0.0.0/0", "gw": "10.98.7.1"},
            {"dst": "::/0", "gw": "fd00:98:0:7::1"},
        ])
    );

    // Inside the pod: both addresses (the IPv6 one not tentative) and both default routes.
    assert_eq!(
        global_addresses(&pod_a, "eth0", "inet"),
        [("10.98.7.2".to_string(), 24)]
    );
    assert_eq!(
        global_addresses(&pod_a, "eth0", "inet6"),
        [("fd00:98:0:7::2".to_string(), 64)]
    );
    let eth0 = ip_json(&pod_a, &["addr", "show", "dev", "eth0"]).expect("eth0");
    let tentative = eth0[0]["addr_info"]
        .as_array()
        .expect("addr_info")
        .iter()
        .any(|a| a["family"] == "inet6" && a["scope"] == "global" && a["tentative"] == true);
    assert!(!tentative, "the pod's IPv6 address is still tentative");
    let routes6 = ip_json(&pod_a, &["-6", "route", "show", "default"]).expect("routes");
    assert_eq!(routes6[0]["gateway"], "fd00:98:0:7::1");
    assert_eq!(routes6[0]["dev"], "eth0");
    let routes4 = ip_json(&pod_a, &["route", "show", "default"]).expect("routes");
    assert_eq!(routes4[0]["gateway"], "10.98.7.1");

    // The bridge holds both gateways.
    assert_eq!(
        global_addresses(&node, "shoaldsbr0", "inet"),
        [("10.98.7.1".to_string(), 24)]
    );
    assert_eq!(
        global_addresses(&node, "shoaldsbr0", "inet6"),
        [("fd00:98:0:7::1".to_string(), 64)]
    );

    // The bridge's own link-local address is usable at once (not tentative), so the node
    // resolves pods' addresses for traffic it routes.
    let bridge = ip_json(&node, &["-6", "addr", "show", "dev", "shoaldsbr0"]).expect("bridge");
    let link_local = bridge[0]["addr_info"]
        .as_array()
        .expect("addr_info")
        .iter()
        .find(|a| a["local"] == "fe80::1")
        .expect("fe80::1 on the bridge");
    assert_ne!(link_local["tentative"], true, "{link_local}");

    // A second pod, in a 0.4.0 configuration: each IP says its version.
    let out = run(request(Command::Add, "pod-b", Some(&pod_b)), &conf_040).expect("ADD b");
    let result_b: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(result_b["ips"][0]["address"], "10.98.7.3/24");
    assert_eq!(result_b["ips"][0]["version"], "4");
    assert_eq!(result_b["ips"][1]["address"], "fd00:98:0:7::3/64");
    assert_eq!(result_b["ips"][1]["version"], "6");

    // Pod to pod over IPv6 on the bridge keeps the source address; the node reaches a pod
    // through its gateway address; IPv4 still works alongside.
    let a6: SocketAddr = "[fd00:98:0:7::2]:7070".parse().expect("addr");
    let b6: SocketAddr = "[fd00:98:0:7::3]:7071".parse().expect("addr");
    assert_eq!(
        tcp_reach(&pod_b.path(), &pod_a.path(), a6),
        Some("fd00:98:0:7::3".parse().expect("ip")),
        "pod b cannot reach pod a over IPv6"
    );
    assert_eq!(
        tcp_reach(&pod_a.path(), &pod_b.path(), b6),
        Some("fd00:98:0:7::2".parse().expect("ip")),
        "pod a cannot reach pod b over IPv6"
    );
    assert_eq!(
        tcp_reach(&node.path(), &pod_a.path(), a6),
        Some("fd00:98:0:7::1".parse().expect("ip")),
        "the node cannot reach pod a over IPv6"
    );
    let a4: SocketAddr = "10.98.7.2:7072".parse().expect("addr");
    assert_eq!(
        tcp_reach(&pod_b.path(), &pod_a.path(), a4),
        Some("10.98.7.3".parse().expect("ip")),
        "pod b cannot reach pod a over IPv4"
    );

    // A repeated ADD keeps both addresses; CHECK verifies both and fails without the v6 one.
    let again = run(request(Command::Add, "pod-a", Some(&pod_a)), &conf).expect("ADD again");
    let again: Value = serde_json::from_str(&again).expect("json");
    assert_eq!(again["ips"], result["ips"]);
    run(request(Command::Check, "pod-a", Some(&pod_a)), &conf).expect("CHECK a");
    pod_b.ip(&["-6", "addr", "flush", "dev", "eth0", "scope", "global"]);
    let err = run(request(Command::Check, "pod-b", Some(&pod_b)), &conf).expect_err("CHECK b");
    assert_eq!(err.code(), cni::error::code::CHECK_FAILED, "{err}");

    // DEL releases both families' addresses.
    run(request(Command::Del, "pod-a", Some(&pod_a)), &conf).expect("DEL a");
    assert!(!state.path().join("10.98.7.2").exists());
    assert!(!state.path().join("fd00:98:0:7::2").exists());
    assert!(state.path().join("fd00:98:0:7::3").exists());
    run(request(Command::Del, "pod-b", Some(&pod_b)), &conf).expect("DEL b");
    let left: Vec<_> = std::fs::read_dir(state.path())
        .expect("state")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n.to_string_lossy().parse::<IpAddr>().is_ok())
        .collect();
    assert!(left.is_empty(), "addresses left: {left:?}");
}
