//! `shoal simulate-nodes` against a live server, as real kubectl sees it: 50 nodes register
//! Ready with kubelet-like details, their Leases are renewed, pods bound to them run (with an
//! address from the node's range), exit when annotated or owned by a Job, restart in place
//! under OnFailure, and finish deleting; SIGTERM stops the simulator with exit 0; a restarted
//! simulator takes its nodes and running pods back, and `--cleanup` removes the nodes.
//!
//! Most pods name their node (`spec.nodeName`) so the simulator is tested on its own; the
//! Job's pod comes from the server's Job controller and scheduler.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_e2e::cluster::{eventually, Cluster};

const NODES: usize = 50;

/// A pod bound to `node` with an init container and two containers.
fn pod_manifest(
    name: &str,
    node: &str,
    restart_policy: &str,
    annotations: &[(&str, &str)],
) -> String {
    let annotations = if annotations.is_empty() {
        String::new()
    } else {
        let entries: String = annotations
            .iter()
            .map(|(k, v)| format!("\n    {k}: \"{v}\""))
            .collect();
        format!("\n  annotations:{entries}")
    };
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: {name}{annotations}
spec:
  nodeName: {node}
  restartPolicy: {restart_policy}
  initContainers:
  - name: setup
    image: busybox:1.36
  containers:
  - name: app
    image: nginx:1.27
  - name: sidecar
    image: fluent-bit:3
"
    )
}

fn by_name<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["metadata"]["name"] == name))
        .unwrap_or_else(|| panic!("{name} not in the list"))
}

fn condition<'a>(object: &'a Value, type_: &str) -> &'a Value {
    object["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {object}"))
}

fn phase_is(cluster: &Cluster, pod: &str, phase: &str) -> Option<Value> {
    let pod = cluster.json(&["get", "pod", pod]);
    (pod["status"]["phase"] == phase).then_some(pod)
}

#[test]
fn simulated_nodes_register_heartbeat_and_run_pods() {
    let cluster = Cluster::start(Path::new(env!("CARGO_BIN_EXE_shoal")));
    let simulator = cluster.start_simulator(NODES, &["--node-status-update-frequency", "2s"]);

    // 50 Ready nodes, with the kubelet's columns.
    let table = cluster.kubectl(&["get", "nodes", "--no-headers"]);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), NODES, "{table}");
    let mut names: Vec<&str> = rows.iter().map(|r| r[0]).collect();
    names.sort_by_key(|n| {
        n.trim_start_matches("sim-")
            .parse::<usize>()
            .unwrap_or(usize::MAX)
    });
    let expected: Vec<String> = (0..NODES).map(|i| format!("sim-{i}")).collect();
    assert_eq!(names, expected);
    for row in &rows {
        // NAME STATUS ROLES AGE VERSION
        assert_eq!(row[1], "Ready", "{row:?}");
        assert_eq!(row[2], "agent", "{row:?}");
        assert_eq!(row[4], "v1.33.0", "{row:?}");
    }
    let wide = cluster.kubectl(&["get", "node", "sim-3", "-o", "wide", "--no-headers"]);
    assert!(
        wide.contains("10.64.0.4") && wide.contains("simulated://1.0"),
        "{wide}"
    );

    let nodes = cluster.json(&["get", "nodes"]);
    let sim3 = by_name(&nodes, "sim-3");
    let labels = &sim3["metadata"]["labels"];
    assert_eq!(labels["kubernetes.io/hostname"], "sim-3");
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert_eq!(labels["type"], "simulated");
    assert_eq!(labels["topology.kubernetes.io/zone"], "zone-0");
    assert_eq!(
        by_name(&nodes, "sim-4")["metadata"]["labels"]["topology.kubernetes.io/zone"],
        "zone-1"
    );
    assert_eq!(
        sim3["metadata"]["annotations"]["shoal.dev/simulated"],
        "true"
    );
    assert_eq!(sim3["spec"]["podCIDR"], "10.128.3.0/24");
    assert_eq!(sim3["status"]["allocatable"]["pods"], "110");
    assert_eq!(sim3["status"]["capacity"]["cpu"], "32");
    assert_eq!(condition(sim3, "Ready")["reason"], "KubeletReady");
    assert_eq!(condition(sim3, "MemoryPressure")["status"], "False");
    let node_uid = sim3["metadata"]["uid"].as_str().expect("uid").to_string();

    // Conditions are refreshed: the heartbeat advances, the transition stays.
    let ready = condition(sim3, "Ready").clone();
    let refreshed = eventually(
        "sim-3's heartbeat advancing",
        Duration::from_secs(15),
        || {
            let node = cluster.json(&["get", "node", "sim-3"]);
            let now = condition(&node, "Ready").clone();
            (now["lastHeartbeatTime"].as_str() > ready["lastHeartbeatTime"].as_str()).then_some(now)
        },
    );
    assert_eq!(refreshed["status"], "True");
    assert_eq!(refreshed["lastTransitionTime"], ready["lastTransitionTime"]);

    // One Lease per node, held by it and renewed.
    let leases = cluster.json(&["get", "leases", "-n", "kube-node-lease"]);
    let items = leases["items"].as_array().expect("items");
    assert_eq!(items.len(), NODES);
    for lease in items {
        assert_eq!(lease["spec"]["holderIdentity"], lease["metadata"]["name"]);
        assert_eq!(lease["spec"]["leaseDurationSeconds"], 40);
        assert_eq!(lease["metadata"]["ownerReferences"][0]["kind"], "Node");
    }
    let first_renewals: Vec<(String, String)> = items
        .iter()
        .map(|l| {
            let name = l["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (
                name,
                l["spec"]["renewTime"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    eventually("every lease renewed", Duration::from_secs(30), || {
        let now = cluster.json(&["get", "leases", "-n", "kube-node-lease"]);
        first_renewals
            .iter()
            .all(|(name, first)| {
                // RFC 3339 in UTC with fixed-width fractions: text order is time order.
                by_name(&now, name)["spec"]["renewTime"]
                    .as_str()
                    .unwrap_or_default()
                    > first.as_str()
            })
            .then_some(())
    });

    // A pod bound to sim-3 runs with an address from sim-3's range.
    cluster.apply(&pod_manifest("web", "sim-3", "Always", &[]));
    cluster.kubectl(&["wait", "--for=condition=Ready", "pod/web", "--timeout=30s"]);
    let web = cluster.json(&["get", "pod", "web"]);
    assert_eq!(web["status"]["phase"], "Running");
    assert_eq!(web["status"]["hostIP"], "10.64.0.4");
    let web_ip = web["status"]["podIP"].as_str().expect("podIP").to_string();
    assert!(web_ip.starts_with("10.128.3."), "{web_ip}");
    assert_eq!(web["status"]["podIPs"][0]["ip"], web_ip.as_str());
    for type_ in [
        "PodReadyToStartContainers",
        "Initialized",
        "ContainersReady",
        "Ready",
        "PodScheduled",
    ] {
        assert_eq!(condition(&web, type_)["status"], "True", "{type_}");
    }
    let app = &web["status"]["containerStatuses"][0];
    assert_eq!(app["name"], "app");
    assert_eq!(app["ready"], true);
    assert_eq!(app["image"], "nginx:1.27");
    assert!(app["state"]["running"]["startedAt"].is_string(), "{app}");
    assert_eq!(
        app["containerID"],
        format!(
            "simulated://{}-app",
            web["metadata"]["uid"].as_str().unwrap_or_default()
        )
    );
    assert_eq!(
        web["status"]["containerStatuses"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(
        web["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"],
        "Completed"
    );
    let row = cluster.kubectl(&["get", "pod", "web", "--no-headers"]);
    assert!(
        row.split_whitespace().take(3).eq(["web", "2/2", "Running"]),
        "{row}"
    );

    // A second pod on the node gets another address.
    cluster.apply(&pod_manifest("web2", "sim-3", "Always", &[]));
    cluster.kubectl(&["wait", "--for=condition=Ready", "pod/web2", "--timeout=30s"]);
    let web2_ip = cluster.kubectl(&["get", "pod", "web2", "-o", "jsonpath={.status.podIP}"]);
    assert!(
        web2_ip.starts_with("10.128.3.") && web2_ip != web_ip,
        "{web2_ip} vs {web_ip}"
    );

    // Annotated to exit: 0 succeeds, 3 fails.
    cluster.apply(&pod_manifest(
        "once",
        "sim-1",
        "Never",
        &[("shoal.dev/simulate-exit-after", "2s")],
    ));
    cluster.apply(&pod_manifest(
        "crash",
        "sim-2",
        "Never",
        &[
            ("shoal.dev/simulate-exit-after", "1s"),
            ("shoal.dev/simulate-exit-code", "3"),
        ],
    ));
    let once = eventually("pod once Succeeded", Duration::from_secs(30), || {
        phase_is(&cluster, "once", "Succeeded")
    });
    let terminated = &once["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(terminated["exitCode"], 0);
    assert_eq!(terminated["reason"], "Completed");
    assert_eq!(condition(&once, "Ready")["status"], "False");
    let crash = eventually("pod crash Failed", Duration::from_secs(30), || {
        phase_is(&cluster, "crash", "Failed")
    });
    assert_eq!(
        crash["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        3
    );
    assert_eq!(
        crash["status"]["containerStatuses"][0]["state"]["terminated"]["reason"],
        "Error"
    );

    // OnFailure: a failing container restarts in place, counted.
    cluster.apply(&pod_manifest(
        "flaky",
        "sim-5",
        "OnFailure",
        &[
            ("shoal.dev/simulate-exit-after", "1s"),
            ("shoal.dev/simulate-exit-code", "1"),
        ],
    ));
    let flaky = eventually("pod flaky restarted twice", Duration::from_secs(30), || {
        let pod = cluster.json(&["get", "pod", "flaky"]);
        (pod["status"]["containerStatuses"][0]["restartCount"].as_i64() >= Some(2)).then_some(pod)
    });
    assert_eq!(flaky["status"]["phase"], "Running");
    assert_eq!(
        flaky["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"],
        1
    );

    // A Job's pod completes on its own (after the default 1 s).
    cluster.apply(
        "apiVersion: batch/v1
kind: Job
metadata:
  name: batch
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: work, image: perl}]
",
    );
    // The Job controller creates the pod and the scheduler binds it to a simulated node.
    let worker = eventually("the Job's pod Succeeded", Duration::from_secs(30), || {
        let pods = cluster.json(&["get", "pods", "-l", "batch.kubernetes.io/job-name=batch"]);
        pods["items"]
            .as_array()
            .and_then(|items| items.iter().find(|p| p["status"]["phase"] == "Succeeded"))
            .cloned()
    });
    assert_eq!(
        worker["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        0
    );

    // kubectl delete waits for the simulated kubelet to finish the pod.
    let started = Instant::now();
    cluster.kubectl(&["delete", "pod", "web", "--timeout=30s"]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let gone = cluster.kubectl_with_input(&["get", "pod", "web"], None);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("NotFound"));

    // SIGTERM: a clean stop, and the nodes stay.
    assert_eq!(simulator.stop(), Some(0));
    assert_eq!(
        cluster
            .kubectl(&["get", "nodes", "--no-headers"])
            .lines()
            .count(),
        NODES
    );

    // A new run takes the same nodes back (same objects) and leaves running pods as they are.
    let simulator = cluster.start_simulator(NODES, &["--cleanup"]);
    let sim3 = cluster.json(&["get", "node", "sim-3"]);
    assert_eq!(sim3["metadata"]["uid"], node_uid.as_str());
    let web2 = cluster.json(&["get", "pod", "web2"]);
    assert_eq!(web2["status"]["phase"], "Running");
    assert_eq!(web2["status"]["podIP"], web2_ip.as_str());
    // The address web2 holds is not handed out again.
    cluster.apply(&pod_manifest("web3", "sim-3", "Always", &[]));
    cluster.kubectl(&["wait", "--for=condition=Ready", "pod/web3", "--timeout=30s"]);
    let web3_ip = cluster.kubectl(&["get", "pod", "web3", "-o", "jsonpath={.status.podIP}"]);
    assert!(
        web3_ip.starts_with("10.128.3.") && web3_ip != web2_ip,
        "{web3_ip}"
    );

    // --cleanup removes the nodes and their Leases on the way out.
    assert_eq!(simulator.stop(), Some(0));
    assert_eq!(
        cluster.kubectl(&["get", "nodes", "--no-headers"]).trim(),
        ""
    );
    assert_eq!(
        cluster
            .kubectl(&["get", "leases", "-n", "kube-node-lease", "--no-headers"])
            .trim(),
        ""
    );
}

#[test]
fn bad_simulator_flags_are_usage_errors() {
    for (args, needle) in [
        (&["--count", "0"][..], "at least 1"),
        (&["--count", "5", "--memory", "lots"][..], "memory"),
        (
            &["--count", "5", "--pod-start-delay", "5"][..],
            "--pod-start-delay",
        ),
        (&["--count", "5", "--node-taint", "gpu"][..], "--node-taint"),
        (
            &["--count", "300", "--pod-cidr", "10.200.0.0/16"][..],
            "fewer than 300 nodes",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .arg("simulate-nodes")
            .args(args)
            .args(["--kubeconfig", "/nonexistent"])
            .stdin(Stdio::null())
            .output()
            .expect("run shoal");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("shoal: ") && err.contains(needle),
            "{args:?}: {err}"
        );
    }
}
