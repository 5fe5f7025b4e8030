//! The node agent with real containerd and runc: the server's own agent registers the node,
//! runs pods from a busybox image imported as an archive, reports their status, restarts
//! crashing containers with back-off, reports OOM kills, gates readiness on probes, mounts
//! ConfigMap volumes, publishes host ports, and adopts running containers across a restart.
//! Needs root and containerd (CI has both; scripts/setup-debian.sh installs containerd, runc
//! and busybox).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use shoal_e2e::cluster::{eventually, Cluster};
use shoal_e2e::kubectl::is_ready as ready;
use shoal_e2e::process::is_root;

const IMAGE: &str = "localhost/test/busybox:1";

/// Waits until `probe` holds.
fn until(what: &str, timeout: Duration, mut probe: impl FnMut() -> bool) {
    eventually(what, timeout, || probe().then_some(()));
}

fn pod(cluster: &Cluster, name: &str) -> Value {
    cluster.get(&["get", "pod", name]).unwrap_or(Value::Null)
}

fn phase(p: &Value) -> &str {
    p["status"]["phase"].as_str().unwrap_or("")
}

#[test]
fn pods_run_in_real_containers() {
    if !is_root() {
        eprintln!("SKIPPED: the agent test needs root (CI runs it as root)");
        return;
    }
    let binary = Path::new(env!("CARGO_BIN_EXE_shoal"));
    // The build machines' disks are often over 90% full, which is disk pressure by Kubernetes'
    // default threshold (and would taint the node); what this test checks does not need it.
    let node_flags = [
        "--kubelet-port",
        "0",
        "--eviction-hard",
        "nodefs.available<1%",
        // Small, so the log rotation check below needs only a few seconds of output.
        "--container-log-max-size",
        "256Ki",
        "--container-log-max-files",
        "3",
    ];
    let mut cluster = Cluster::start_with_agent(binary, &node_flags);
    until("the node is Ready", Duration::from_secs(60), || {
        let nodes = cluster.items(&["get", "nodes"]);
        nodes.len() == 1 && ready(&nodes[0])
    });
    let node = &cluster.items(&["get", "nodes"])[0];
    assert!(
        node["spec"]["podCIDR"]
            .as_str()
            .is_some_and(|c| c.starts_with("10.42.")),
        "{node}"
    );
    assert_eq!(node["status"]["capacity"]["pods"], "110");
    // The overlay published this node's VTEP (flannel's annotations) before the node was Ready.
    let notes = &node["metadata"]["annotations"];
    assert_eq!(
        notes["flannel.alpha.coreos.com/backend-type"], "vxlan",
        "{node}"
    );
    assert!(
        notes["flannel.alpha.coreos.com/backend-data"]
            .as_str()
            .is_some_and(|d| d.contains("\"VNI\":1")),
        "{node}"
    );

    // An image from an archive, imported with `shoal images import`.
    let archive = shoal_e2e::images::busybox_archive(cluster.dir.path(), IMAGE);
    shoal_e2e::images::import(binary, cluster.dir.path(), &archive);
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

    // web's httpd is also published on a host port of the node (hostPort, as CNI portmap).
    let host_port = shoal_e2e::server::free_port().expect("free port");
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
    command: ["sh", "-c", "echo hello from $POD_NAME; echo second line; httpd -p 8080 -h /etc/cfg; sleep 3600"]
    ports: [{{containerPort: 8080, hostPort: {host_port}}}]
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
    // `kubectl exec` goes through the API server and the node API to containerd's streams:
    // kubectl 1.33 (WebSocket first) and 1.27 (SPDY), with stdin and exit codes.
    let exec = |cmd: &str| cluster.kubectl(&["exec", "web", "--", "sh", "-c", cmd]);
    assert_eq!(exec("echo $POD_NAME; cat /etc/cfg/greeting"), "web\nhello");
    let piped = cluster.kubectl_with_input(
        &["exec", "-i", "web", "--", "sh", "-c", "tr a-z A-Z"],
        Some("shout\n"),
    );
    assert_eq!(
        String::from_utf8_lossy(&piped.stdout),
        "SHOUT\n",
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    let failed = cluster.kubectl_with_input(&["exec", "web", "--", "sh", "-c", "exit 7"], None);
    assert_eq!(
        failed.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
    let old = shoal_e2e::cluster::kubectl_binary().with_file_name("kubectl.1.27");
    let spdy = std::process::Command::new(&old)
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args(["exec", "web", "--", "sh", "-c", "echo over spdy"])
        .env("HOME", cluster.dir.path())
        .output()
        .expect("kubectl 1.27");
    assert_eq!(
        String::from_utf8_lossy(&spdy.stdout),
        "over spdy\n",
        "{}",
        String::from_utf8_lossy(&spdy.stderr)
    );
    exec("touch /tmp/ready");

    // `kubectl port-forward` reaches a port inside the pod.
    assert_eq!(
        exec("wget -qO- http://127.0.0.1:8080/greeting"),
        "hello",
        "httpd serves in the pod"
    );
    let mut forward = std::process::Command::new(&cluster.kubectl)
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args(["port-forward", "--address", "127.0.0.1", "pod/web", ":8080"])
        .env("HOME", cluster.dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl port-forward");
    let mut line = String::new();
    let mut stdout = std::io::BufReader::new(forward.stdout.take().expect("stdout"));
    std::io::BufRead::read_line(&mut stdout, &mut line).expect("forwarding line");
    // kubectl reports each connection on stdout; a closed pipe would kill it (SIGPIPE).
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let port: u16 = line
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    let mut conn =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the forwarded port");
    std::io::Write::write_all(&mut conn, b"GET /greeting HTTP/1.0\r\n\r\n").expect("request");
    let mut reply = String::new();
    let read = std::io::Read::read_to_string(&mut conn, &mut reply);
    let _ = forward.kill();
    let output = forward.wait_with_output().expect("port-forward output");
    assert!(
        read.is_ok(),
        "{read:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        reply.starts_with("HTTP/1.") && reply.ends_with("hello"),
        "{reply}"
    );
    // The host port: the node's address reaches the pod's httpd (nat output, as any process
    // on the node; traffic from other machines takes prerouting, see net's hostport test).
    let node_ip = node_address(&cluster);
    assert_eq!(
        http_get(&node_ip, host_port).as_deref(),
        Some("hello"),
        "{node_ip}:{host_port} reaches web"
    );
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
    // The kubelet's Events print with Kubernetes' columns.
    let events = cluster.kubectl(&["get", "events"]);
    let header: Vec<&str> = events
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        "{events}"
    );
    assert!(
        events
            .lines()
            .any(|l| l.contains("BackOff") && l.contains("pod/crasher")),
        "{events}"
    );

    // A container over its memory limit is OOM-killed and reported so.
    until("hog is OOM-killed", Duration::from_secs(60), || {
        let hog = pod(&cluster, "hog");
        phase(&hog) == "Failed"
            && hog["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "OOMKilled"
    });

    // A local registry (Debian's docker-registry) holding the image under another name, reached
    // through a registries.yaml mirror over plain HTTP; the agent reads it when it restarts.
    let registry_port = shoal_e2e::server::free_port().expect("free port");
    let registry_config = cluster.dir.path().join("registry.yml");
    std::fs::write(
        &registry_config,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{registry_port}\n",
            cluster.dir.path().join("registry").display()
        ),
    )
    .expect("registry config");
    let mut registry = std::process::Command::new("docker-registry")
        .arg("serve")
        .arg(&registry_config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("docker-registry (Debian package docker-registry)");
    until("the registry listens", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", registry_port)).is_ok()
    });
    let pushed = std::process::Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci-archive:{}", archive.display()))
        .arg(format!("docker://127.0.0.1:{registry_port}/test/busybox:2"))
        .output()
        .expect("skopeo (Debian package skopeo)");
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    let registries = cluster.dir.path().join("registries.yaml");
    std::fs::write(
        &registries,
        format!("mirrors:\n  registry.test:5000:\n    endpoint:\n      - \"http://127.0.0.1:{registry_port}\"\n"),
    )
    .expect("registries.yaml");
    let registries_flag = registries.display().to_string();
    let mut restart_flags = node_flags.to_vec();
    restart_flags.extend(["--private-registry", registries_flag.as_str()]);

    // A restart of the server (and its agent) adopts the running container.
    let before = pod(&cluster, "web")["status"]["containerStatuses"][0].clone();
    cluster.restart(&restart_flags);
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
    // The restarted agent rewrote the host ports table with the adopted pod in it.
    assert_eq!(
        http_get(&node_ip, host_port).as_deref(),
        Some("hello"),
        "the host port after a restart"
    );

    // Pulled through the mirror; an archive dropped into the air-gap folder is imported; a
    // Secret volume follows updates; a failing liveness probe restarts its container.
    let airgap = shoal_e2e::images::busybox_archive(cluster.dir.path(), "localhost/test/airgap:1");
    std::fs::copy(&airgap, cluster.dir.path().join("agent/images/airgap.tar"))
        .expect("air-gap copy");
    cluster.apply(
        r#"
apiVersion: v1
kind: Secret
metadata: {name: token}
stringData: {token: one}
---
apiVersion: v1
kind: Pod
metadata: {name: pulled}
spec:
  containers:
  - {name: app, image: "registry.test:5000/test/busybox:2", command: ["sleep", "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: offline}
spec:
  containers:
  - {name: app, image: "localhost/test/airgap:1", imagePullPolicy: Never, command: ["sleep", "3600"]}
---
apiVersion: v1
kind: Pod
metadata: {name: prober}
spec:
  containers:
  - name: app
    image: localhost/test/busybox:1
    command: ["sh", "-c", "touch /tmp/alive; sleep 4; rm /tmp/alive; sleep 3600"]
    livenessProbe:
      exec: {command: ["cat", "/tmp/alive"]}
      periodSeconds: 1
      failureThreshold: 1
---
apiVersion: v1
kind: Pod
metadata: {name: secrets}
spec:
  containers:
  - name: app
    image: localhost/test/busybox:1
    command: ["sleep", "3600"]
    volumeMounts: [{name: secret, mountPath: /etc/secret}]
  volumes:
  - {name: secret, secret: {secretName: token}}
"#,
    );
    until("the mirrored image runs", Duration::from_secs(60), || {
        phase(&pod(&cluster, "pulled")) == "Running"
    });
    until("the air-gap image runs", Duration::from_secs(60), || {
        phase(&pod(&cluster, "offline")) == "Running"
    });
    until("secrets runs", Duration::from_secs(30), || {
        phase(&pod(&cluster, "secrets")) == "Running"
    });
    assert_eq!(
        cluster.kubectl(&["exec", "secrets", "--", "cat", "/etc/secret/token"]),
        "one"
    );
    cluster.kubectl(&[
        "patch",
        "secret",
        "token",
        "-p",
        r#"{"stringData":{"token":"two"}}"#,
    ]);
    until(
        "the secret update reaches the volume",
        Duration::from_secs(40),
        || {
            cluster
                .kubectl_with_input(&["exec", "secrets", "--", "cat", "/etc/secret/token"], None)
                .stdout
                == b"two"
        },
    );
    until(
        "the liveness failure restarts the container",
        Duration::from_secs(40),
        || {
            pod(&cluster, "prober")["status"]["containerStatuses"][0]["restartCount"]
                .as_i64()
                .unwrap_or(0)
                >= 1
        },
    );
    let _ = registry.kill();
    let _ = registry.wait();

    // `kubectl attach -i` reaches a running container's stdin and streams its output back.
    cluster.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: talker}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 0
  containers:
  - name: talk
    image: {IMAGE}
    imagePullPolicy: Never
    stdin: true
    stdinOnce: true
    command: ["sh", "-c", "while read line; do echo \"got $line\"; done; echo bye"]
"#
    ));
    until("talker runs", Duration::from_secs(60), || {
        phase(&pod(&cluster, "talker")) == "Running"
    });
    let attached = std::process::Command::new("timeout")
        .arg("60")
        .arg(&cluster.kubectl)
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args(["attach", "-i", "talker"])
        .env("HOME", cluster.dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(b"hello\nworld\n")?;
            }
            child.wait_with_output()
        })
        .expect("kubectl attach");
    let out = String::from_utf8_lossy(&attached.stdout);
    assert!(
        out.contains("got hello\ngot world\n"),
        "{out}{}",
        String::from_utf8_lossy(&attached.stderr)
    );
    until(
        "talker ends when its stdin closes",
        Duration::from_secs(30),
        || phase(&pod(&cluster, "talker")) == "Succeeded",
    );

    // A chatty container's log rotates: at most 3 files, and `kubectl logs` still reads it.
    cluster.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: chatty}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: talk
    image: {IMAGE}
    imagePullPolicy: Never
    command: ["sh", "-c", "while true; do seq 1 2000; sleep 0.1; done"]
"#
    ));
    let logs_root = cluster.dir.path().join("agent/logs/pods");
    until("chatty's log rotates", Duration::from_secs(90), || {
        let Some(dir) = std::fs::read_dir(&logs_root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().contains("default_chatty_"))
        else {
            return false;
        };
        let files: Vec<String> = std::fs::read_dir(dir.join("talk"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(files.len() <= 3, "more log files than allowed: {files:?}");
        files.iter().filter(|f| f.starts_with("0.log.")).count() == 2
    });
    // Right after a rotation the new 0.log may hold nothing yet, and the tail reads only the
    // current file, as kubelet's does; the writer fills it within a tenth of a second.
    let tail = eventually(
        "a line of chatty's log after the rotation",
        Duration::from_secs(10),
        || {
            let tail = cluster.kubectl(&["logs", "chatty", "--tail=1"]);
            (!tail.trim().is_empty()).then_some(tail)
        },
    );
    assert!(
        tail.trim()
            .parse::<u32>()
            .is_ok_and(|n| (1..=2000).contains(&n)),
        "{tail:?}"
    );

    // Deleting pods stops their containers and removes them.
    cluster.kubectl(&[
        "delete",
        "pod",
        "web",
        "crasher",
        "hog",
        "pulled",
        "offline",
        "prober",
        "secrets",
        "chatty",
        "talker",
        "--grace-period=1",
        "--wait=true",
        "--timeout=60s",
    ]);
    assert!(cluster.items(&["get", "pods"]).is_empty());
    // web's host port went with it.
    until("the host port is closed", Duration::from_secs(10), || {
        http_get(&node_ip, host_port).is_none()
    });
    // The agent leaves its (now empty) host ports table, as kube-proxy leaves its rules; this
    // test made it, so it goes (unless another agent on this machine has ports in it).
    let table = ["list", "table", "ip", "shoal-hostport"];
    let listed = std::process::Command::new("nft").args(table).output();
    if listed.is_ok_and(|out| !String::from_utf8_lossy(&out.stdout).contains("elements")) {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "ip", "shoal-hostport"])
            .status();
    }
}

/// The node's InternalIP.
fn node_address(cluster: &Cluster) -> String {
    let node = &cluster.items(&["get", "nodes"])[0];
    node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .unwrap_or_else(|| panic!("no InternalIP: {node}"))
        .to_string()
}

/// The body of `GET /greeting` from `ip:port`, if anything answered.
fn http_get(ip: &str, port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::new(ip.parse().ok()?, port);
    let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    conn.write_all(b"GET /greeting HTTP/1.0\r\n\r\n").ok()?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).ok()?;
    reply.split("\r\n\r\n").nth(1).map(str::to_string)
}
