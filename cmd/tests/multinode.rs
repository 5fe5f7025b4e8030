//! A multi-node cluster on one machine (e2e's lab: a network namespace, containerd and data
//! directory per node): one server and two agents joined with its token go Ready; a
//! Deployment spreads over the nodes; a killed agent's node goes NotReady and its pods are
//! replaced elsewhere; the agent restarted brings the node back with nothing duplicated; a
//! server restart loses no object. Needs root, containerd and runc (CI has them).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use shoal_e2e::cluster::eventually;
use shoal_e2e::lab::Lab;

const IMAGE: &str = "localhost/test/busybox:1";

fn is_ready(node: &Value) -> Option<bool> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .map(|c| c["status"] == "True")
}

/// Running pods of the `web` Deployment by node.
fn web_pods_by_node(lab: &Lab) -> BTreeMap<String, usize> {
    let mut by_node = BTreeMap::new();
    for pod in lab.kubectl.items(&["get", "pods", "-l", "app=web"]) {
        let running =
            pod["status"]["phase"] == "Running" && pod["metadata"]["deletionTimestamp"].is_null();
        if let (true, Some(node)) = (running, pod["spec"]["nodeName"].as_str()) {
            *by_node.entry(node.to_string()).or_default() += 1;
        }
    }
    by_node
}

/// Containers (not sandboxes) the containerd of node `index` runs.
fn running_containers(lab: &Lab, index: usize) -> usize {
    let socket = lab.nodes[index]
        .data_dir
        .join("agent/containerd/containerd.sock");
    let out = std::process::Command::new("ctr")
        .arg("--address")
        .arg(&socket)
        .args(["--namespace", "k8s.io", "containers", "ls", "--quiet"])
        .output()
        .expect("ctr containers ls");
    // Sandboxes are containers too: count tasks whose container is not a pause sandbox.
    let ids = String::from_utf8_lossy(&out.stdout).to_string();
    ids.split_whitespace()
        .filter(|id| {
            let info = std::process::Command::new("ctr")
                .arg("--address")
                .arg(&socket)
                .args(["--namespace", "k8s.io", "containers", "info", id])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
            info.contains("\"io.cri-containerd.kind\": \"container\"")
        })
        .count()
}

#[test]
fn a_server_and_two_agents_form_a_cluster_that_survives_losing_a_node() {
    let binary = Path::new(env!("CARGO_BIN_EXE_shoal"));
    let mut lab = Lab::start(
        binary,
        2,
        &[
            "--kube-controller-manager-arg",
            "node-monitor-grace-period=20s",
        ],
        &[],
    );
    let nodes = lab.kubectl.items(&["get", "nodes"]);
    assert_eq!(nodes.len(), 3);
    for node in &nodes {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let internal = node["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["type"] == "InternalIP")
            .and_then(|a| a["address"].as_str())
            .unwrap_or_default();
        let index = lab.node_index(name);
        assert_eq!(internal, lab.nodes[index].ip, "{name}'s address");
        assert!(
            node["spec"]["podCIDR"].as_str().is_some(),
            "{name} has a pod subnet"
        );
    }
    let archive = shoal_e2e::images::busybox_archive(lab.dir.path(), IMAGE);
    lab.import_image(&archive);

    // A Deployment spreads over the three nodes; its pods leave an unreachable node fast.
    lab.kubectl.apply(&format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 6
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      tolerations:
      - {{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}}
      - {{key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 2}}
      containers:
      - name: web
        image: {IMAGE}
        imagePullPolicy: Never
        command: ["sleep", "3600"]
"#
    ));
    let spread = eventually("6 web pods Running", Duration::from_secs(90), || {
        let by_node = web_pods_by_node(&lab);
        (by_node.values().sum::<usize>() == 6).then_some(by_node)
    });
    assert_eq!(spread.len(), 3, "spread over every node: {spread:?}");

    // An object to look for after the server restarts.
    lab.kubectl
        .ok(&["create", "configmap", "keep-me", "--from-literal=k=v"]);

    // agent-2 dies: its node goes NotReady, its pods are replaced on the others.
    let lost = lab.node_index("agent-2");
    lab.kill_node(lost);
    eventually("agent-2 NotReady", Duration::from_secs(60), || {
        let node = lab.kubectl.get(&["get", "node", "agent-2"])?;
        (is_ready(&node) == Some(false)).then_some(())
    });
    eventually(
        "6 web pods Running away from agent-2",
        Duration::from_secs(90),
        || {
            let by_node = web_pods_by_node(&lab);
            let elsewhere: usize = by_node
                .iter()
                .filter(|(n, _)| n.as_str() != "agent-2")
                .map(|(_, c)| c)
                .sum();
            (elsewhere == 6).then_some(())
        },
    );

    // It comes back: Ready again, and it stops the containers of pods that moved away.
    lab.start_node(lost);
    lab.wait_ready(Duration::from_secs(90));
    eventually(
        "agent-2 runs no container of a moved pod",
        Duration::from_secs(60),
        || {
            let bound: usize = web_pods_by_node(&lab)
                .get("agent-2")
                .copied()
                .unwrap_or_default();
            (running_containers(&lab, lost) == bound).then_some(())
        },
    );
    let total: usize = web_pods_by_node(&lab).values().sum();
    assert_eq!(total, 6, "nothing duplicated");

    // The server restarts: every object is still there and the nodes come back Ready.
    assert_eq!(lab.stop_node(0), Some(0), "the server stops cleanly");
    lab.start_node(0);
    lab.wait_ready(Duration::from_secs(90));
    let kept = lab.kubectl.json(&["get", "configmap", "keep-me"]);
    assert_eq!(kept["data"]["k"], "v");
    let deployment = lab.kubectl.json(&["get", "deployment", "web"]);
    assert_eq!(deployment["spec"]["replicas"], 6);
    eventually(
        "6 web pods Running after the server restart",
        Duration::from_secs(60),
        || (web_pods_by_node(&lab).values().sum::<usize>() == 6).then_some(()),
    );
}
