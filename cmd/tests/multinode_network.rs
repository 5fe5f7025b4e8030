//! The pod network across nodes, with real agents (e2e's lab: a network namespace, containerd
//! and data directory per node): every node publishes its VTEP in flannel's annotations; a pod
//! reaches a pod on another node by its pod IP over the VXLAN overlay and is seen with its own
//! pod IP; a pod reaching the LAN (outside the cluster CIDR) is seen with its node's address.
//! Needs root, containerd and runc (CI has them).

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use shoal_e2e::cluster::eventually;
use shoal_e2e::lab::Lab;

const IMAGE: &str = "localhost/test/busybox:1";

/// A busybox httpd whose `/cgi-bin/ip` answers with the caller's address.
const WHOAMI: &str = r#"mkdir -p /www/cgi-bin && printf '#!/bin/sh\necho Content-Type: text/plain\necho\necho $REMOTE_ADDR\n' > /www/cgi-bin/ip && busybox chmod +x /www/cgi-bin/ip && exec httpd -f -p 8080 -h /www"#;

fn pod(name: &str, node: &str, script: &str) -> String {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "main",
                "image": IMAGE,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", script],
            }],
        },
    })
    .to_string()
}

fn pod_ip(lab: &Lab, name: &str) -> Option<String> {
    let pod = lab.kubectl.get(&["get", "pod", name])?;
    if pod["status"]["phase"] != "Running" {
        return None;
    }
    pod["status"]["podIP"].as_str().map(str::to_string)
}

/// An HTTP GET of `path` from pod `from` to `ip:port`, with busybox `nc` (its static `wget`
/// crashes resolving even numeric addresses): the body, once it answers.
fn fetch(lab: &Lab, from: &str, ip: &str, port: u16, path: &str) -> String {
    let script = format!("printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port}");
    eventually(
        &format!("{from} fetches http://{ip}:{port}{path}"),
        Duration::from_secs(60),
        || {
            let out = lab
                .kubectl
                .run(&["exec", from, "--", "sh", "-c", &script], None);
            let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
            let (head, body) = text.split_once("\n\n")?;
            (out.status.success() && head.starts_with("HTTP/1.")).then(|| body.trim().to_string())
        },
    )
}

/// An address as busybox httpd's `REMOTE_ADDR` gives it (`[::ffff:10.42.0.2]` on its IPv6
/// socket), plainly.
fn plain_address(remote: &str) -> String {
    let inner = remote.trim_start_matches('[').trim_end_matches(']');
    inner.strip_prefix("::ffff:").unwrap_or(inner).to_string()
}

#[test]
fn pods_on_different_nodes_reach_each_other_over_the_overlay() {
    let binary = Path::new(env!("CARGO_BIN_EXE_shoal"));
    let lab = Lab::start(binary, 1, &[], &[]);
    for node in lab.kubectl.items(&["get", "nodes"]) {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let notes = &node["metadata"]["annotations"];
        assert_eq!(
            notes["flannel.alpha.coreos.com/backend-type"], "vxlan",
            "{node}"
        );
        assert_eq!(
            notes["flannel.alpha.coreos.com/public-ip"],
            Value::from(lab.nodes[lab.node_index(name)].ip.clone()),
            "{name} publishes its LAN address"
        );
    }
    let archive = shoal_e2e::images::busybox_archive(lab.dir.path(), IMAGE);
    lab.import_image(&archive);
    lab.kubectl.apply(&pod("whoami", "agent-1", WHOAMI));
    lab.kubectl.apply(&pod("client", "server-0", "sleep 3600"));
    let (server_ip, client_ip) = eventually("both pods Running", Duration::from_secs(90), || {
        Some((pod_ip(&lab, "whoami")?, pod_ip(&lab, "client")?))
    });

    // Pod to pod across nodes: the far pod sees the client's pod IP.
    let seen = fetch(&lab, "client", &server_ip, 8080, "/cgi-bin/ip");
    assert_eq!(
        plain_address(&seen),
        client_ip,
        "not masqueraded between pods"
    );

    // Pod to the LAN (the root namespace's bridge address, the nodes' default gateway): the
    // source is the client's node.
    let server_node = &lab.nodes[lab.node_index("server-0")];
    let gateway: IpAddr = {
        let mut octets: Vec<&str> = server_node.ip.split('.').collect();
        octets[3] = "1";
        octets.join(".").parse().expect("gateway")
    };
    let listener = TcpListener::bind((gateway, 0)).expect("listen on the LAN bridge");
    let port = listener.local_addr().expect("addr").port();
    let answer = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().expect("accept");
        let mut request = [0u8; 1024];
        let _ = conn.read(&mut request);
        let _ = conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
        peer.ip()
    });
    assert_eq!(fetch(&lab, "client", &gateway.to_string(), port, "/"), "ok");
    let peer = answer.join().expect("the LAN listener");
    assert_eq!(
        peer.to_string(),
        server_node.ip,
        "masqueraded to the node's address"
    );
}
