//! The pod network across nodes, with real agents (e2e's lab: a network namespace, containerd
//! and data directory per node): every node publishes its VTEP in flannel's annotations; a pod
//! reaches a pod on another node by its pod IP over the VXLAN overlay and is seen with its own
//! pod IP; a pod reaching the LAN (outside the cluster CIDR) is seen with its node's address.
//! Services work across nodes: a ClusterIP answers from every node and, by its DNS name, from
//! pods on every node; a rolling update under a steady request loop loses no request.
//! Needs root, containerd and runc (CI has them).

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use shoal_e2e::cluster::eventually;
use shoal_e2e::kubectl::is_ready;
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

fn fetch(lab: &Lab, from: &str, ip: &str, port: u16, path: &str) -> String {
    lab.kubectl.http_get_in_pod(from, ip, port, path)
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

    services_work_across_nodes(&lab);
}

/// The `web` Deployment: busybox httpd answering with the pod's name, ready once serving,
/// leaving the Service (preStop) before it stops, rolled one new pod at a time.
const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  strategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 0, maxSurge: 1}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 10
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: web}}}
      containers:
      - name: httpd
        image: localhost/test/busybox:1
        imagePullPolicy: Never
        command: ["sh", "-c", "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"]
        readinessProbe:
          tcpSocket: {port: 8080}
          periodSeconds: 1
        lifecycle:
          preStop:
            exec: {command: ["sleep", "3"]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#;

/// One `GET /` with busybox nc; the body.
const GET: &str = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3";

fn services_work_across_nodes(lab: &Lab) {
    lab.kubectl.apply(WEB);
    lab.kubectl.apply(&pod("client-2", "agent-1", "sleep 3600"));
    let cluster_ip = lab.kubectl.json(&["get", "service", "web"])["spec"]["clusterIP"]
        .as_str()
        .expect("a ClusterIP")
        .to_string();
    eventually(
        "web's 2 pods Ready on both nodes",
        Duration::from_secs(90),
        || {
            let pods = lab.kubectl.items(&["get", "pods", "-l", "app=web"]);
            let ready: std::collections::BTreeSet<&str> = pods
                .iter()
                .filter(|p| is_ready(p))
                .filter_map(|p| p["spec"]["nodeName"].as_str())
                .collect();
            (ready.len() == 2).then_some(())
        },
    );
    eventually("client-2 Running", Duration::from_secs(60), || {
        pod_ip(lab, "client-2")
    });

    // From every node (its own network namespace), through the ClusterIP.
    for index in 0..lab.nodes.len() {
        eventually(
            &format!("{} reaches the ClusterIP", lab.nodes[index].name),
            Duration::from_secs(30),
            || {
                let out = lab.exec_on(
                    index,
                    "/bin/busybox",
                    &["sh", "-c", &format!("{GET} {cluster_ip} 80")],
                );
                String::from_utf8_lossy(&out.stdout)
                    .contains("\nweb-")
                    .then_some(())
            },
        );
    }

    // From pods on every node, by DNS name (full and short), to the address it resolves to.
    for client in ["client", "client-2"] {
        for name in ["web.default.svc.cluster.local", "web"] {
            let resolved = eventually(
                &format!("{client} resolves {name}"),
                Duration::from_secs(30),
                || {
                    let out = lab
                        .kubectl
                        .run(&["exec", client, "--", "nslookup", name], None);
                    let text = String::from_utf8_lossy(&out.stdout).to_string();
                    text.contains("web.default.svc.cluster.local")
                        .then(|| {
                            text.lines()
                                .filter_map(|l| l.strip_prefix("Address: "))
                                .next_back()
                                .map(|a| a.trim().to_string())
                        })
                        .flatten()
                },
            );
            assert_eq!(resolved, cluster_ip, "{client} {name}");
        }
        let body = fetch(lab, client, &cluster_ip, 80, "/");
        assert!(body.starts_with("web-"), "{client}: {body}");
    }

    // A rolling update while a client keeps asking: not one request fails.
    let loop_script = format!(
        "i=0; f=0; while [ $i -lt 200 ]; do {GET} {cluster_ip} 80 | grep -q web- || f=$((f+1)); i=$((i+1)); sleep 0.05; done; echo failures=$f"
    );
    let kubectl = lab.kubectl.clone();
    let load = std::thread::spawn(move || {
        kubectl.run(&["exec", "client", "--", "sh", "-c", &loop_script], None)
    });
    std::thread::sleep(Duration::from_secs(2));
    lab.kubectl
        .ok(&["set", "env", "deployment/web", "VERSION=2"]);
    lab.kubectl
        .ok(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    let out = load.join().expect("the request loop");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("failures=0"),
        "requests failed during the rollout: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
