//! Cluster DNS end to end: `shoal server` with its agent (real containerd and runc) serves the
//! cluster DNS address on the node; busybox pods resolve a ClusterIP Service by its full name
//! and by its short name (the pod's search path), a headless Service to its pods' addresses
//! and a StatefulSet-style pod by `hostname.subdomain`, an ExternalName Service to its
//! target, a name outside the cluster through the node's resolvers, and `kube-system/kube-dns`
//! holds the cluster DNS address. Needs root and containerd (CI has both).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use shoal_e2e::cluster::{eventually, Cluster, TEST_NODE_FLAGS};
use shoal_e2e::process::is_root;

const IMAGE: &str = "localhost/test/busybox:1";
const DNS_INTERFACE: &str = "shoal-dns";

/// Removes the node's DNS interface after the test if the test's agent made it and could not
/// take it down itself (a failed test's killed server).
struct InterfaceGuard {
    existed: bool,
}

impl Drop for InterfaceGuard {
    fn drop(&mut self) {
        if self.existed {
            return;
        }
        let removed = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(shoal_net::dns::iface::remove(DNS_INTERFACE)));
        if let Ok(Err(err)) = removed {
            eprintln!("cannot remove {DNS_INTERFACE}: {err}");
        }
    }
}

fn phase(cluster: &Cluster, name: &str) -> String {
    cluster
        .get(&["get", "pod", name])
        .and_then(|p| p["status"]["phase"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// `nslookup` in the client pod: its output (stdout and stderr) and whether it succeeded.
fn nslookup(cluster: &Cluster, args: &[&str]) -> (String, bool) {
    let mut command = vec!["exec", "client", "--", "nslookup"];
    command.extend_from_slice(args);
    let out = cluster.kubectl_with_input(&command, None);
    (
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        out.status.success(),
    )
}

/// The addresses busybox nslookup printed for answers (`Address: X`, not the server's
/// `Address:\tIP:53` line).
fn answered(output: &str) -> Vec<String> {
    let mut out: Vec<String> = output
        .split("Name:")
        .skip(1)
        .flat_map(|block| {
            block
                .lines()
                .filter_map(|l| l.trim().strip_prefix("Address:"))
                .map(|a| a.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[test]
fn pods_resolve_cluster_names() {
    assert!(
        is_root(),
        "the cluster DNS test needs root (real containers, a node interface); CI runs it as root"
    );
    let interface = InterfaceGuard {
        existed: Path::new("/sys/class/net").join(DNS_INTERFACE).exists(),
    };
    let binary = Path::new(env!("CARGO_BIN_EXE_shoal"));
    let cluster = Cluster::start_with_agent(binary, &TEST_NODE_FLAGS);
    cluster.wait_for_ready_node(Duration::from_secs(60));

    // The API server reserved the cluster DNS address.
    let kube_dns = cluster.kubectl(&["get", "svc", "-n", "kube-system", "kube-dns"]);
    assert!(kube_dns.contains("10.43.0.10"), "{kube_dns}");
    let kube_dns: Value = cluster.json(&["get", "svc", "-n", "kube-system", "kube-dns"]);
    assert_eq!(kube_dns["spec"]["clusterIP"], "10.43.0.10");
    assert_eq!(kube_dns["metadata"]["labels"]["k8s-app"], "kube-dns");

    let _archive = cluster.import_busybox(IMAGE);

    // StatefulSet-style pods: `hostname` + `subdomain` naming the headless Service.
    let db_pods: String = ["db-0", "db-1"]
        .iter()
        .map(|name| {
            format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: db}}}}\n\
                 spec:\n  hostname: {name}\n  subdomain: db\n  terminationGracePeriodSeconds: 0\n  \
                 containers: [{{name: app, image: {IMAGE}, command: [\"sleep\", \"3600\"]}}]\n"
            )
        })
        .collect();
    cluster.apply(&format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: db}}
spec:
  clusterIP: None
  selector: {{app: db}}
  ports: [{{name: sql, port: 5432}}]
---
apiVersion: v1
kind: Service
metadata: {{name: alias}}
spec:
  type: ExternalName
  externalName: web.default.svc.cluster.local
---
apiVersion: v1
kind: Pod
metadata: {{name: web, labels: {{app: web}}}}
spec:
  terminationGracePeriodSeconds: 0
  containers: [{{name: app, image: {IMAGE}, command: ["sleep", "3600"]}}]
{db_pods}---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  terminationGracePeriodSeconds: 0
  containers: [{{name: app, image: {IMAGE}, command: ["sleep", "3600"]}}]
"#
    ));
    for pod in ["web", "db-0", "db-1", "client"] {
        eventually(&format!("{pod} runs"), Duration::from_secs(90), || {
            (phase(&cluster, pod) == "Running").then_some(())
        });
    }
    let web_ip = cluster.json(&["get", "svc", "web"])["spec"]["clusterIP"]
        .as_str()
        .expect("web has a ClusterIP")
        .to_string();
    let mut db_ips: Vec<String> = ["db-0", "db-1"]
        .iter()
        .map(|p| {
            cluster.json(&["get", "pod", p])["status"]["podIP"]
                .as_str()
                .expect("pod IP")
                .to_string()
        })
        .collect();
    db_ips.sort();

    // The pod's resolv.conf points at the cluster DNS address.
    let resolv = cluster.kubectl(&["exec", "client", "--", "cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 10.43.0.10"), "{resolv}");

    // Full name; short name through the search path.
    let (out, _) = eventually(
        "web.default.svc.cluster.local resolves",
        Duration::from_secs(30),
        || {
            let (out, ok) = nslookup(&cluster, &["web.default.svc.cluster.local"]);
            answered(&out).contains(&web_ip).then_some((out, ok))
        },
    );
    assert_eq!(answered(&out), vec![web_ip.clone()], "{out}");
    let (out, _) = nslookup(&cluster, &["web"]);
    assert!(answered(&out).contains(&web_ip), "{out}");

    // Headless: the ready pods' addresses, and each pod by hostname.subdomain.
    let out = eventually(
        "the headless Service lists both pods",
        Duration::from_secs(30),
        || {
            let (out, _) = nslookup(&cluster, &["db.default.svc.cluster.local"]);
            (answered(&out) == db_ips).then_some(out)
        },
    );
    assert_eq!(answered(&out), db_ips, "{out}");
    let db0_ip = cluster.json(&["get", "pod", "db-0"])["status"]["podIP"]
        .as_str()
        .expect("pod IP")
        .to_string();
    let (out, _) = nslookup(&cluster, &["db-0.db.default.svc.cluster.local"]);
    assert_eq!(answered(&out), vec![db0_ip.clone()], "{out}");
    let (out, _) = nslookup(
        &cluster,
        &["-type=srv", "_sql._tcp.db.default.svc.cluster.local"],
    );
    assert!(
        out.contains("5432 db-0.db.default.svc.cluster.local")
            && out.contains("5432 db-1.db.default.svc.cluster.local"),
        "{out}"
    );
    let reverse = format!(
        "{}.in-addr.arpa",
        db0_ip.split('.').rev().collect::<Vec<_>>().join(".")
    );
    let (out, _) = nslookup(&cluster, &["-type=ptr", &reverse]);
    assert!(out.contains("db-0.db.default.svc.cluster.local"), "{out}");

    // ExternalName: a CNAME, followed to the target's address.
    let (out, _) = nslookup(&cluster, &["alias.default.svc.cluster.local"]);
    assert!(
        out.contains("canonical name = web.default.svc.cluster.local"),
        "{out}"
    );
    assert!(answered(&out).contains(&web_ip), "{out}");

    // A missing name is NXDOMAIN, authoritatively (not a timeout or SERVFAIL).
    let (out, ok) = nslookup(&cluster, &["nothere.default.svc.cluster.local"]);
    assert!(!ok && out.contains("NXDOMAIN"), "{out}");

    // Outside the cluster: relayed to the node's resolvers, whose answer comes back as they
    // gave it (the machines this runs on resolve nothing outside; NXDOMAIN is their answer).
    let (out, _) = nslookup(&cluster, &["shoal-dns-test.invalid."]);
    assert!(out.contains("NXDOMAIN"), "{out}");

    // The pods go through the agent (sandboxes, network namespaces and veths torn down)
    // before the cluster stops; then the stopped agent takes its interface with it.
    cluster.kubectl(&[
        "delete",
        "pods",
        "--all",
        "--grace-period=0",
        "--wait=true",
        "--timeout=90s",
    ]);
    drop(cluster);
    if !interface.existed {
        assert!(
            !Path::new("/sys/class/net").join(DNS_INTERFACE).exists(),
            "{DNS_INTERFACE} outlived the agent"
        );
    }
}
