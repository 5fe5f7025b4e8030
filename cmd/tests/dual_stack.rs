//! A dual-stack cluster with real containers (e2e's lab: a server and an agent, each node in
//! its own network namespace with its own containerd, one IPv4 address each):
//! `--cluster-cidr` and `--service-cidr` of both families (the agent learns them when it
//! joins) give each Node a /24 and a /64, each pod an IPv4 and an IPv6 address
//! (`status.podIPs`, IPv4 first as `status.podIP`), and a pod reaches a pod on the other node
//! over IPv6 (inside the IPv4 VXLAN overlay) with its own IPv6 address as the source. A `RequireDualStack` Service gets a ClusterIP per
//! family, an EndpointSlice per family, answers on its IPv6 ClusterIP through the proxy's
//! `ip6` table, and its name resolves to the IPv6 ClusterIP (AAAA) at the cluster DNS.
//! Needs root, containerd and runc (CI has them).

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use shoal_e2e::cluster::eventually;
use shoal_e2e::kubectl::is_ready;
use shoal_e2e::lab::Lab;

const IMAGE: &str = "localhost/test/busybox:1";

/// A busybox httpd whose `/cgi-bin/ip` answers with the caller's address.
const WHOAMI: &str = r#"mkdir -p /www/cgi-bin && printf '#!/bin/sh\necho Content-Type: text/plain\necho\necho $REMOTE_ADDR\n' > /www/cgi-bin/ip && busybox chmod +x /www/cgi-bin/ip && exec httpd -f -p 8080 -h /www"#;

fn pod(name: &str, node: &str, labels: Value, script: &str) -> String {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "main",
                "image": IMAGE,
                "imagePullPolicy": "Never",
                "command": ["sh", "-c", script],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
            }],
        },
    })
    .to_string()
}

/// The pod's `status.podIPs` once it is Ready.
fn pod_ips(lab: &Lab, name: &str) -> Option<Vec<String>> {
    let pod = lab.kubectl.get(&["get", "pod", name])?;
    if !is_ready(&pod) {
        return None;
    }
    let ips: Vec<String> = pod["status"]["podIPs"]
        .as_array()?
        .iter()
        .filter_map(|ip| ip["ip"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        pod["status"]["podIP"].as_str(),
        ips.first().map(String::as_str),
        "podIP is the first of podIPs: {pod}"
    );
    Some(ips)
}

fn fetch(lab: &Lab, from: &str, ip: &str, port: u16, path: &str) -> String {
    lab.kubectl.http_get_in_pod(from, ip, port, path)
}

fn is_v6(ip: &str) -> bool {
    ip.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_ipv6())
}

#[test]
fn dual_stack_pods_and_services() {
    let binary = Path::new(env!("CARGO_BIN_EXE_shoal"));
    let lab = Lab::start(
        binary,
        1,
        &[
            "--cluster-cidr",
            "10.42.0.0/16,fd00:42::/56",
            "--service-cidr",
            "10.43.0.0/16,fd00:43::/112",
        ],
        &[],
    );
    let nodes = lab.kubectl.items(&["get", "nodes"]);
    assert_eq!(nodes.len(), 2);
    let mut v6_subnets = Vec::new();
    for node in &nodes {
        let cidrs = node["spec"]["podCIDRs"].as_array().expect("podCIDRs");
        assert_eq!(cidrs.len(), 2, "{node}");
        assert_eq!(node["spec"]["podCIDR"], cidrs[0], "{node}");
        let (v4, v6) = (
            cidrs[0].as_str().unwrap_or_default(),
            cidrs[1].as_str().unwrap_or_default(),
        );
        assert!(v4.starts_with("10.42.") && v4.ends_with(".0/24"), "{node}");
        assert!(
            v6.starts_with("fd00:42:") && v6.ends_with("::/64"),
            "{node}"
        );
        v6_subnets.push(v6.to_string());
    }
    assert_ne!(v6_subnets[0], v6_subnets[1], "each node its own /64");

    let archive = shoal_e2e::images::busybox_archive(lab.dir.path(), IMAGE);
    lab.import_image(&archive);
    lab.kubectl
        .apply(&pod("whoami", "agent-1", json!({"app": "whoami"}), WHOAMI));
    lab.kubectl.apply(&pod(
        "client",
        "server-0",
        json!({"app": "client"}),
        "exec httpd -f -p 8080 -h /tmp",
    ));
    let (server_ips, client_ips) = eventually("both pods Ready", Duration::from_secs(120), || {
        Some((pod_ips(&lab, "whoami")?, pod_ips(&lab, "client")?))
    });
    for ips in [&server_ips, &client_ips] {
        assert_eq!(ips.len(), 2, "{ips:?}");
        assert!(ips[0].starts_with("10.42."), "{ips:?}");
        assert!(ips[1].starts_with("fd00:42:"), "{ips:?}");
    }

    // Pod to pod across nodes over IPv6: the server sees the client's IPv6 address.
    let seen = fetch(&lab, "client", &server_ips[1], 8080, "/cgi-bin/ip");
    let seen = seen.trim_start_matches('[').trim_end_matches(']');
    assert_eq!(
        seen, client_ips[1],
        "the source is the client's IPv6 address"
    );
    // And over IPv4, as before.
    let seen = fetch(&lab, "client", &server_ips[0], 8080, "/cgi-bin/ip");
    assert!(seen.contains(&client_ips[0]), "{seen}");

    // A dual-stack Service: a ClusterIP per family, an EndpointSlice per family.
    lab.kubectl.apply(
        &json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "whoami"},
            "spec": {
                "ipFamilyPolicy": "RequireDualStack",
                "selector": {"app": "whoami"},
                "ports": [{"port": 80, "targetPort": 8080}],
            },
        })
        .to_string(),
    );
    let service = lab.kubectl.json(&["get", "service", "whoami"]);
    assert_eq!(service["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
    let cluster_ips: Vec<String> = service["spec"]["clusterIPs"]
        .as_array()
        .expect("clusterIPs")
        .iter()
        .filter_map(|ip| ip.as_str().map(str::to_string))
        .collect();
    assert_eq!(cluster_ips.len(), 2, "{service}");
    assert_eq!(
        service["spec"]["clusterIP"].as_str(),
        Some(cluster_ips[0].as_str())
    );
    assert!(cluster_ips[0].starts_with("10.43."), "{cluster_ips:?}");
    assert!(cluster_ips[1].starts_with("fd00:43::"), "{cluster_ips:?}");
    eventually(
        "an EndpointSlice per family",
        Duration::from_secs(30),
        || {
            let slices = lab.kubectl.items(&[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=whoami",
            ]);
            let address = |family: &str| {
                slices
                    .iter()
                    .find(|s| s["addressType"] == family)
                    .and_then(|s| s["endpoints"][0]["addresses"][0].as_str())
                    .map(str::to_string)
            };
            (address("IPv4")? == server_ips[0] && address("IPv6")? == server_ips[1]).then_some(())
        },
    );
    // Through the proxy's ip6 table: the IPv6 ClusterIP reaches the pod on the other node,
    // which sees the client's own IPv6 address (pod traffic is not masqueraded).
    let seen = fetch(&lab, "client", &cluster_ips[1], 80, "/cgi-bin/ip");
    let seen = seen.trim_start_matches('[').trim_end_matches(']');
    assert!(is_v6(seen), "{seen}");
    assert_eq!(seen, client_ips[1]);

    // The cluster DNS answers AAAA with the IPv6 ClusterIP.
    let answer = eventually("an AAAA answer", Duration::from_secs(30), || {
        let out = lab.kubectl.run(
            &[
                "exec",
                "client",
                "--",
                "nslookup",
                "-type=AAAA",
                "whoami.default.svc.cluster.local",
            ],
            None,
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && text.contains(&cluster_ips[1])).then_some(text)
    });
    assert!(answer.contains(&cluster_ips[1]), "{answer}");
}
