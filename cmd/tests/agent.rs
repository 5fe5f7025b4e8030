//! The node agent with real containerd and runc: the server's own agent registers the node,
//! runs pods from a busybox image imported as an archive, reports their status, restarts
//! crashing containers with back-off, reports OOM kills, gates readiness on probes, mounts
//! ConfigMap volumes, and adopts running containers across a restart. Needs root and
//! containerd (CI has both; scripts/setup-debian.sh installs containerd, runc and busybox).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use shoal_e2e::cluster::{eventually, Cluster};

const IMAGE: &str = "localhost/test/busybox:1";

/// Waits until `probe` holds.
fn until(what: &str, timeout: Duration, mut probe: impl FnMut() -> bool) {
    eventually(what, timeout, || probe().then_some(()));
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

fn pod(cluster: &Cluster, name: &str) -> Value {
    cluster.get(&["get", "pod", name]).unwrap_or(Value::Null)
}

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or("")
}

fn ready(p: &Value) -> bool {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

#[test]
fn pods_run_in_real_containers() {
    if !is_root() {
        eprintln!("SKIPPED: the agent test needs root (CI runs it as root)");
        return;
    }
    let binary = Path::new(env!("CARGO_BIN_EXE_shoal"));
    let mut cluster = Cluster::start_with_agent(binary, &[]);
    until("the node is Ready", Duration::from_secs(60), || {
        let nodes = cluster.items(&["get", "nodes"]);
        nodes.len() == 1
            && nodes[0]["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    let node = &cluster.items(&["get", "nodes"])[0];
    assert!(
        node["spec"]["podCIDR"]
            .as_str()
            .is_some_and(|c| c.starts_with("10.42.")),
        "{node}"
    );
    assert_eq!(node["status"]["capacity"]["pods"], "110");

    // An image from an archive, imported with `shoal images import`.
    let archive = shoal_e2e::images::busybox_archive(cluster.dir.path(), IMAGE);
    let out = std::process::Command::new(binary)
        .args(["images", "import", "--data-dir"])
        .arg(cluster.dir.path())
        .arg(&archive)
        .output()
        .expect("shoal images import");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = std::process::Command::new(binary)
        .args(["images", "list", "--data-dir"])
        .arg(cluster.dir.path())
        .output()
        .expect("list");
    assert!(
        String::from_utf8_lossy(&list.stdout).contains(IMAGE),
        "{}",
        String::from_utf8_lossy(&list.stdout)
    );

    cluster.apply(&format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{greeting: hello}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  containers:
  - name: app
    image: {IMAGE}
    command: ["sh", "-c", "echo hello from $POD_NAME; echo second line; sleep 3600"]
    env:
    - {{name: POD_NAME, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
    volumeMounts: [{{name: cfg, mountPath: /etc/cfg}}]
    readinessProbe:
      exec: {{command: ["cat", "/tmp/ready"]}}
      periodSeconds: 1
  volumes:
  - {{name: cfg, configMap: {{name: settings}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: crasher}}
spec:
  containers:
  - {{name: app, image: {IMAGE}, command: ["sh", "-c", "echo crashing; exit 3"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: hog}}
spec:
  restartPolicy: Never
  containers:
  - name: app
    image: {IMAGE}
    command: ["sh", "-c", "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done"]
    resources: {{limits: {{memory: 32Mi}}}}
"#
    ));

    // Running, with an address from the node's range, but not Ready until the probe passes.
    until("web runs", Duration::from_secs(60), || {
        phase(&pod(&cluster, "web")) == "Running"
    });
    let web = pod(&cluster, "web");
    assert!(
        web["status"]["podIP"]
            .as_str()
            .is_some_and(|ip| ip.starts_with("10.42.0.")),
        "{web}"
    );
    assert!(!ready(&web), "not ready before the probe passes: {web}");
    let exec = |cmd: &str| {
        let out = std::process::Command::new("ctr")
            .args(["--address"])
            .arg(cluster.dir.path().join("agent/containerd/containerd.sock"))
            .args(["-n", "k8s.io", "tasks", "exec", "--exec-id"])
            .arg(format!("t{}", std::process::id()))
            .arg(
                web["status"]["containerStatuses"][0]["containerID"]
                    .as_str()
                    .unwrap_or_default()
                    .trim_start_matches("containerd://"),
            )
            .args(["sh", "-c", cmd])
            .output()
            .expect("ctr exec");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(exec("echo $POD_NAME; cat /etc/cfg/greeting"), "web\nhello");
    exec("touch /tmp/ready");
    // `kubectl logs` goes through the API server to the node's own API.
    assert_eq!(
        cluster.kubectl(&["logs", "web"]),
        "hello from web\nsecond line\n"
    );
    assert_eq!(
        cluster.kubectl(&["logs", "web", "--tail=1"]),
        "second line\n"
    );
    let stamped = cluster.kubectl(&["logs", "web", "-c", "app", "--timestamps"]);
    assert!(
        stamped
            .lines()
            .all(|l| l.split(' ').next().is_some_and(|t| t.ends_with('Z'))),
        "{stamped}"
    );
    let no_previous = cluster.kubectl_with_input(&["logs", "web", "--previous"], None);
    assert!(!no_previous.status.success());
    until("web becomes Ready", Duration::from_secs(20), || {
        ready(&pod(&cluster, "web"))
    });

    // A crashing container restarts with back-off.
    until("crasher backs off", Duration::from_secs(60), || {
        let status = &pod(&cluster, "crasher")["status"]["containerStatuses"][0];
        status["restartCount"].as_i64().unwrap_or(0) >= 2
            && status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
            && status["lastState"]["terminated"]["exitCode"] == 3
    });
    assert_eq!(
        cluster.kubectl(&["logs", "crasher", "--previous"]),
        "crashing\n"
    );

    // A container over its memory limit is OOM-killed and reported so.
    until("hog is OOM-killed", Duration::from_secs(60), || {
        let hog = pod(&cluster, "hog");
        phase(&hog) == "Failed"
            && hog["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "OOMKilled"
    });

    // A restart of the server (and its agent) adopts the running container.
    let before = pod(&cluster, "web")["status"]["containerStatuses"][0].clone();
    cluster.restart(&[]);
    std::thread::sleep(Duration::from_secs(5));
    until("web is Ready again", Duration::from_secs(60), || {
        ready(&pod(&cluster, "web"))
    });
    let after = pod(&cluster, "web")["status"]["containerStatuses"][0].clone();
    assert_eq!(
        after["containerID"], before["containerID"],
        "the container was not restarted"
    );
    assert_eq!(after["restartCount"], 0);

    // Deleting pods stops their containers and removes them.
    cluster.kubectl(&[
        "delete",
        "pod",
        "web",
        "crasher",
        "hog",
        "--grace-period=1",
        "--wait=true",
        "--timeout=60s",
    ]);
    assert!(cluster.items(&["get", "pods"]).is_empty());
}
