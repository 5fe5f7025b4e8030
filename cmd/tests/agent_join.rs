//! `shoal agent --server --token` joining a server that runs no agent of its own: a wrong
//! token or a CA the token does not pin is refused with a one-line error; the right token
//! gives a node client certificate, the node registers and goes Ready, and pods run on it with
//! logs and exec reaching it through the server. Needs root and containerd (CI has both).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use shoal_e2e::cluster::{eventually, Cluster};
use shoal_e2e::process::is_root;

const IMAGE: &str = "localhost/test/busybox:1";

fn condition(node: &Value, kind: &str) -> String {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str())
        .unwrap_or("")
        .to_string()
}

/// Runs `shoal agent` with `token` to completion (it must exit by itself); its exit code and
/// stderr.
fn join_once(binary: &Path, cluster: &Cluster, token: &str) -> (Option<i32>, String) {
    let server = std::fs::read_to_string(&cluster.kubeconfig)
        .expect("kubeconfig")
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: ").map(str::to_string))
        .expect("server URL");
    let data_dir = cluster.dir.path().join("refused");
    let out = Command::new("timeout")
        .args([
            "30",
            binary.to_str().expect("utf-8 path"),
            "agent",
            "--server",
        ])
        .arg(&server)
        .args(["--token", token, "--node-name", "intruder", "--data-dir"])
        .arg(&data_dir)
        .output()
        .expect("run shoal agent");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn an_agent_joins_with_the_token_and_runs_pods() {
    if !is_root() {
        eprintln!("SKIPPED: the agent test needs root (CI runs it as root)");
        return;
    }
    let binary = Path::new(env!("CARGO_BIN_EXE_shoal"));
    let mut cluster = Cluster::start(binary);
    let token = std::fs::read_to_string(cluster.dir.path().join("server").join("token"))
        .expect("token file")
        .trim()
        .to_string();

    // A wrong secret, and a token pinning another CA: refused at once, in one line.
    let (hash, _) = token.split_once("::").expect("K10 token");
    let (code, stderr) = join_once(binary, &cluster, &format!("{hash}::server:wrong"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("rejected the join token"), "{stderr}");
    let other_ca = format!("K10{}::server:whatever", "0".repeat(64));
    let (code, stderr) = join_once(binary, &cluster, &other_ca);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("does not match the token"), "{stderr}");
    let names: Vec<Value> = cluster.items(&["get", "nodes"]);
    assert!(names.is_empty(), "a refused agent registered: {names:?}");

    // The right token: the node registers as itself and goes Ready.
    let worker = cluster.start_agent(
        "worker-1",
        &[
            "--kubelet-port",
            "0",
            // Build machines' disks are often over 90% full: Kubernetes' default threshold.
            "--eviction-hard",
            "nodefs.available<1%",
        ],
    );
    eventually("worker-1 is Ready", Duration::from_secs(90), || {
        let node = cluster.get(&["get", "node", "worker-1"])?;
        (condition(&node, "Ready") == "True").then_some(())
    });
    let node = cluster.json(&["get", "node", "worker-1"]);
    let labels = &node["metadata"]["labels"];
    assert_eq!(labels["kubernetes.io/hostname"], "worker-1");
    assert!(
        labels
            .get("node-role.kubernetes.io/control-plane")
            .is_none(),
        "an agent is not a control-plane node: {labels}"
    );
    let agent_dir = cluster.agent(worker).data_dir.join("agent");
    let kubeconfig = std::fs::read_to_string(agent_dir.join("kubelet.kubeconfig"))
        .expect("the agent's kubeconfig");
    assert!(kubeconfig.contains("client-certificate-data"));
    let key_mode = std::fs::metadata(agent_dir.join("client-kubelet.key"))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .expect("the node key");
    assert_eq!(key_mode, 0o600);
    // The node's credentials work on their own (kubectl with the agent's kubeconfig).
    let out = Command::new(&cluster.kubectl)
        .arg("--kubeconfig")
        .arg(agent_dir.join("kubelet.kubeconfig"))
        .args(["get", "node", "worker-1", "-o", "name"])
        .output()
        .expect("kubectl with the node's kubeconfig");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "node/worker-1",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A pod on it, with logs and exec going through the server to the node.
    let archive = shoal_e2e::images::busybox_archive(cluster.dir.path(), IMAGE);
    let data_dir = cluster.agent(worker).data_dir.clone();
    shoal_e2e::images::import(binary, &data_dir, &archive);
    cluster.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: hello}}
spec:
  containers:
  - name: main
    image: {IMAGE}
    imagePullPolicy: Never
    command: ["sh", "-c", "echo hello from $(hostname); sleep 3600"]
"#
    ));
    eventually("the pod runs on worker-1", Duration::from_secs(60), || {
        let pod = cluster.get(&["get", "pod", "hello"])?;
        (pod["status"]["phase"] == "Running").then_some(pod)
    });
    let pod = cluster.json(&["get", "pod", "hello"]);
    assert_eq!(pod["spec"]["nodeName"], "worker-1");
    eventually(
        "kubectl logs reaches the node",
        Duration::from_secs(20),
        || {
            let out = cluster.kubectl_with_input(&["logs", "hello"], None);
            String::from_utf8_lossy(&out.stdout)
                .contains("hello from hello")
                .then_some(())
        },
    );
    let exec = cluster.kubectl(&["exec", "hello", "--", "sh", "-c", "echo in-pod"]);
    assert_eq!(exec.trim(), "in-pod");

    cluster.kubectl(&["delete", "pod", "hello", "--grace-period=1"]);
    eventually("the pod is gone", Duration::from_secs(30), || {
        cluster
            .get(&["get", "pod", "hello"])
            .is_none()
            .then_some(())
    });
    assert_eq!(
        cluster.agent(worker).stop(),
        Some(0),
        "SIGTERM is a clean exit"
    );
}
