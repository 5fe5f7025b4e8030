//! Services through the agent's proxy, with real containers: two busybox httpd pods
//! behind a NodePort Service answer a third pod's requests to the ClusterIP (both of them),
//! translated at connect() by the socket LB (the client's socket is connected to a pod, not
//! the ClusterIP), and a backend's requests to its own Service (hairpin);
//! one turning unready (its readiness file emptied through `kubectl exec`) stops getting
//! requests; the NodePort and a LoadBalancer Service (ServiceLB: the node's address as its
//! ingress) answer from the host, which is the node; a Service without endpoints refuses at
//! once. Needs root and containerd (CI has both); the proxy's table is deleted at the end.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use shoal_e2e::cluster::{eventually, Cluster};
use shoal_e2e::kubectl::is_ready as ready;

const IMAGE: &str = "localhost/test/busybox:1";

/// Deletes the proxy's nftables tables (one per family) when the test ends, however it ends.
struct ProxyTable;

impl Drop for ProxyTable {
    fn drop(&mut self) {
        for family in ["ip", "ip6"] {
            let _ = std::process::Command::new("nft")
                .args(["delete", "table", family, "shoal-proxy"])
                .status();
        }
    }
}

/// Waits until `probe` returns `Ok`; on timeout fails with its last answer, the proxy's
/// table and the server's log lines about Services.
fn wait_for<T>(
    cluster: &Cluster,
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe() {
            Ok(value) => return value,
            Err(last) => last,
        };
        if Instant::now() > deadline {
            let table = std::process::Command::new("nft")
                .args(["list", "table", "ip", "shoal-proxy"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let log: Vec<String> = cluster
                .server()
                .unread_log()
                .into_iter()
                .filter(|l| {
                    ["proxy", "Services", "ingress", "load balancer"]
                        .iter()
                        .any(|w| l.contains(w))
                })
                .collect();
            panic!(
                "timed out waiting for {what}; last: {last}\ntable:\n{table}\nlog:\n{}",
                log.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The body of `GET /` on `addr` from this process (the node's network namespace).
fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    conn.set_read_timeout(Some(Duration::from_secs(3)))?;
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    Ok(reply
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.trim().to_string())
        .unwrap_or_default())
}

#[test]
fn services_reach_ready_pods() {
    assert!(
        shoal_e2e::process::is_root(),
        "the Service proxy test runs containers and nftables rules: run it as root"
    );
    let binary = Path::new(env!("CARGO_BIN_EXE_shoal"));
    let node_flags = [
        "--kubelet-port",
        "0",
        "--eviction-hard",
        "nodefs.available<1%",
    ];
    let _table = ProxyTable;
    let cluster = Cluster::start_with_agent(binary, &node_flags);
    eventually("the node is Ready", Duration::from_secs(60), || {
        let nodes = cluster.items(&["get", "nodes"]);
        (nodes.len() == 1 && ready(&nodes[0])).then_some(())
    });
    let node = &cluster.items(&["get", "nodes"])[0];
    let node_ip = node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .expect("node InternalIP")
        .to_string();

    let archive = shoal_e2e::images::busybox_archive(cluster.dir.path(), IMAGE);
    shoal_e2e::images::import(binary, cluster.dir.path(), &archive);

    let backend = |name: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: web}}}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: httpd
    image: {IMAGE}
    command: ["sh", "-c", "echo $POD_NAME > /tmp/index.html && echo yes > /tmp/ready && exec httpd -f -p 8080 -h /tmp"]
    env:
    - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
    readinessProbe:
      exec: {{command: ["sh", "-c", "test -s /tmp/ready"]}}
      periodSeconds: 1
---
"#
        )
    };
    cluster.apply(&format!(
        r#"{}{}
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - {{name: sh, image: {IMAGE}, command: ["sleep", "3600"]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-lb}}
spec:
  type: LoadBalancer
  selector: {{app: web}}
  ports: [{{name: http, port: 18080, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: empty}}
spec:
  selector: {{app: nothing}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"#,
        backend("web-a"),
        backend("web-b"),
    ));
    eventually("the pods are Ready", Duration::from_secs(90), || {
        ["web-a", "web-b", "client"]
            .iter()
            .all(|p| cluster.get(&["get", "pod", p]).is_some_and(|p| ready(&p)))
            .then_some(())
    });
    let cluster_ip = |name: &str| {
        cluster.json(&["get", "service", name])["spec"]["clusterIP"]
            .as_str()
            .expect("clusterIP")
            .to_string()
    };
    let web_ip = cluster_ip("web");
    let empty_ip = cluster_ip("empty");
    // 20 requests from the client pod (busybox nc: the image's wget crashes on this host);
    // the pods that answered, or "failed".
    let fetch_all = || {
        cluster.kubectl(&[
            "exec",
            "client",
            "--",
            "sh",
            "-c",
            &format!(
                "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do \
                 printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {web_ip} 80 \
                 | {{ last=failed; while read -r l; do last=$l; done; echo \"$last\"; }}; done"
            ),
        ])
    };

    let answers = wait_for(
        &cluster,
        "the ClusterIP reaches both pods",
        Duration::from_secs(30),
        || {
            let out = fetch_all();
            if out.contains("web-a") && out.contains("web-b") && !out.contains("failed") {
                Ok(out)
            } else {
                Err(out)
            }
        },
    );
    assert_eq!(answers.lines().count(), 20, "{answers}");

    // The socket LB (on by default) translated the client's connect: its socket is connected
    // to a pod's address and port, never to the ClusterIP (which nftables would DNAT per
    // packet, leaving the socket's peer the ClusterIP).
    let pod_ip = |name: &str| -> std::net::Ipv4Addr {
        cluster.json(&["get", "pod", name])["status"]["podIP"]
            .as_str()
            .and_then(|ip| ip.parse().ok())
            .expect("podIP")
    };
    let hex = |ip: std::net::Ipv4Addr, port: u16| {
        format!("{:08X}:{port:04X}", u32::from_le_bytes(ip.octets()))
    };
    let endpoints = [hex(pod_ip("web-a"), 8080), hex(pod_ip("web-b"), 8080)];
    let service = hex(web_ip.parse().expect("ClusterIP"), 80);
    let sockets = cluster.kubectl(&[
        "exec",
        "client",
        "--",
        "sh",
        "-c",
        &format!("(sleep 2 | nc {web_ip} 80 >/dev/null) & sleep 1; cat /proc/net/tcp"),
    ]);
    // `sl local remote st …`: the client's connection, established (01).
    let peers: Vec<&str> = sockets
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 3 && f[3] == "01").then(|| f[2])
        })
        .collect();
    assert!(
        peers.iter().any(|p| endpoints.iter().any(|e| e == p))
            && !peers.contains(&service.as_str()),
        "the client's socket should be connected to {endpoints:?}, not {service}:\n{sockets}"
    );

    // Hairpin: a backend reaching its own Service (now a plain connect, maybe to itself).
    let hairpin = cluster.kubectl(&[
        "exec",
        "web-a",
        "--",
        "sh",
        "-c",
        &format!(
            "for i in 1 2 3 4 5 6 7 8 9 10; do \
             printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {web_ip} 80 \
             | {{ last=failed; while read -r l; do last=$l; done; echo \"$last\"; }}; done"
        ),
    ]);
    assert!(
        hairpin.lines().count() == 10 && hairpin.lines().all(|l| l == "web-a" || l == "web-b"),
        "{hairpin}"
    );

    // NodePort from the host (the node).
    let node_port = cluster.json(&["get", "service", "web"])["spec"]["ports"][0]["nodePort"]
        .as_u64()
        .expect("nodePort");
    let node_port_addr: SocketAddr = format!("{node_ip}:{node_port}").parse().expect("addr");
    let body = wait_for(
        &cluster,
        "the NodePort answers",
        Duration::from_secs(30),
        || http_get(node_port_addr).map_err(|e| e.to_string()),
    );
    assert!(body == "web-a" || body == "web-b", "{body}");

    // ServiceLB: the node's address is the ingress, and the Service's port answers on it.
    let ingress = wait_for(
        &cluster,
        "web-lb gets an ingress",
        Duration::from_secs(30),
        || {
            let service = cluster.json(&["get", "service", "web-lb"]);
            service["status"]["loadBalancer"]["ingress"][0]["ip"]
                .as_str()
                .map(String::from)
                .ok_or_else(|| service.to_string())
        },
    );
    assert_eq!(ingress, node_ip);
    let lb_addr: SocketAddr = format!("{ingress}:18080").parse().expect("addr");
    let body = wait_for(
        &cluster,
        "the load balancer address answers",
        Duration::from_secs(30),
        || http_get(lb_addr).map_err(|e| e.to_string()),
    );
    assert!(body == "web-a" || body == "web-b", "{body}");

    // No endpoints: refused at once.
    let started = Instant::now();
    let refused = cluster.kubectl_with_input(
        &[
            "exec",
            "client",
            "--",
            "sh",
            "-c",
            &format!("nc -w 5 {empty_ip} 80 </dev/null 2>&1; echo exit=$?"),
        ],
        None,
    );
    let refused = String::from_utf8_lossy(&refused.stdout).into_owned();
    assert!(
        refused.contains("refused") && !refused.contains("exit=0"),
        "{refused}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a reject, not a timeout: {:?}",
        started.elapsed()
    );

    // web-b turns unready: only web-a answers.
    cluster.kubectl(&["exec", "web-b", "--", "sh", "-c", ": > /tmp/ready"]);
    eventually("web-b is unready", Duration::from_secs(30), || {
        (!cluster
            .get(&["get", "pod", "web-b"])
            .is_some_and(|p| ready(&p)))
        .then_some(())
    });
    let answers = eventually("only web-a answers", Duration::from_secs(30), || {
        let out = fetch_all();
        (out.lines().filter(|l| *l == "web-a").count() == 20).then_some(out)
    });
    assert!(!answers.contains("web-b"));
    drop(cluster);
}
