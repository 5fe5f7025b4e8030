//! The control plane end to end: `shoal server`'s scheduler and controllers with simulated
//! nodes, driven by real kubectl 1.33 — Deployments roll out, scale, roll to a new image within
//! their surge/unavailable bounds and roll back; pods that fit nowhere say why; Jobs complete;
//! DaemonSets run one pod per node; StatefulSets come up in order; CronJobs fire.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use shoal_e2e::cluster::{eventually, Cluster};
use shoal_e2e::kubectl::is_ready as ready;

fn cluster() -> Cluster {
    Cluster::start(Path::new(env!("CARGO_BIN_EXE_shoal")))
}

/// Pods of `selector` that are not terminating.
fn active_pods(cluster: &Cluster, selector: &str) -> Vec<Value> {
    let pods = cluster.json(&["get", "pods", "-l", selector]);
    pods["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect()
}

/// The first container's image of each active pod of `selector`.
fn images(cluster: &Cluster, selector: &str) -> Vec<String> {
    active_pods(cluster, selector)
        .iter()
        .map(|p| {
            p["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

/// `kubectl create deployment NAME --image=busybox:1 --replicas=N`, then waits until
/// `kubectl rollout status` says it rolled out.
fn create_and_roll_out(cluster: &Cluster, name: &str, replicas: usize) {
    cluster.kubectl(&[
        "create",
        "deployment",
        name,
        "--image=busybox:1",
        &format!("--replicas={replicas}"),
    ]);
    let deployment = format!("deployment/{name}");
    let status = cluster.kubectl(&["rollout", "status", &deployment, "--timeout=60s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
}

#[test]
fn deployments_roll_out_scale_update_within_bounds_and_undo() {
    let cluster = cluster();
    let _nodes = cluster.start_simulator(5, &["--name-prefix", "worker-"]);
    create_and_roll_out(&cluster, "web", 8);
    let pods = active_pods(&cluster, "app=web");
    assert_eq!(pods.len(), 8);
    assert!(pods.iter().all(ready));
    // The scheduler spread them: with 5 empty nodes no node takes more than 2.
    let mut per_node = std::collections::HashMap::new();
    for pod in &pods {
        *per_node
            .entry(pod["spec"]["nodeName"].as_str().unwrap_or("").to_string())
            .or_insert(0) += 1;
    }
    assert!(per_node.values().all(|n| *n <= 2), "{per_node:?}");

    cluster.kubectl(&["scale", "deployment/web", "--replicas=12"]);
    cluster.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert_eq!(active_pods(&cluster, "app=web").len(), 12);

    // A new image rolls with 25% surge (3 extra) and 25% unavailable (3 fewer available):
    // watched throughout, never more than 15 pods, never fewer than 9 ready.
    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicUsize::new(0));
    let fewest_ready = Arc::new(AtomicUsize::new(usize::MAX));
    let watcher = {
        let (stop, most, fewest_ready) = (stop.clone(), most.clone(), fewest_ready.clone());
        let kubectl = cluster.kubectl.clone();
        let kubeconfig = cluster.kubeconfig.clone();
        let home = cluster.dir.path().to_path_buf();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let out = std::process::Command::new(&kubectl)
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args(["get", "pods", "-l", "app=web", "-o", "json"])
                    .env("HOME", &home)
                    .output();
                if let Ok(out) = out {
                    if let Ok(list) = serde_json::from_slice::<Value>(&out.stdout) {
                        let items = list["items"].as_array().cloned().unwrap_or_default();
                        let active: Vec<&Value> = items
                            .iter()
                            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                            .collect();
                        most.fetch_max(active.len(), Ordering::SeqCst);
                        let ready_count = active.iter().filter(|p| ready(p)).count();
                        fewest_ready.fetch_min(ready_count, Ordering::SeqCst);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    cluster.kubectl(&["set", "image", "deployment/web", "busybox=busybox:2"]);
    let status = cluster.kubectl(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    stop.store(true, Ordering::SeqCst);
    let _ = watcher.join();
    assert!(status.contains("successfully rolled out"), "{status}");
    let most = most.load(Ordering::SeqCst);
    let fewest_ready = fewest_ready.load(Ordering::SeqCst);
    assert!(most <= 15, "surge bound broken: {most} pods at once");
    assert!(
        fewest_ready >= 9,
        "unavailable bound broken: {fewest_ready} ready"
    );
    let images = images(&cluster, "app=web");
    assert_eq!(images.len(), 12);
    assert!(images.iter().all(|i| i == "busybox:2"), "{images:?}");
    let history = cluster.kubectl(&["rollout", "history", "deployment/web"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");

    // Undo goes back to the previous template.
    cluster.kubectl(&["rollout", "undo", "deployment/web"]);
    cluster.kubectl(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    let image = cluster.kubectl(&[
        "get",
        "deployment/web",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ]);
    assert_eq!(image, "busybox:1");
    let described = cluster.kubectl(&["describe", "deployment/web"]);
    assert!(described.contains("ScalingReplicaSet"), "{described}");
}

/// `kubectl rollout pause` holds template changes back (no new ReplicaSet, `rollout status`
/// shows none of the new replicas), `resume` rolls them out, `restart` replaces every pod
/// with the same image, and `rollout status` ends with success after each.
#[test]
fn rollout_pause_resume_and_restart() {
    let cluster = cluster();
    let _nodes = cluster.start_simulator(3, &["--name-prefix", "worker-"]);
    create_and_roll_out(&cluster, "api", 4);
    let replica_sets = |cluster: &Cluster| {
        cluster.json(&["get", "replicasets", "-l", "app=api"])["items"]
            .as_array()
            .map_or(0, Vec::len)
    };
    assert_eq!(replica_sets(&cluster), 1);

    cluster.kubectl(&["rollout", "pause", "deployment/api"]);
    cluster.kubectl(&["set", "image", "deployment/api", "busybox=busybox:2"]);
    // The controller records the pause: Progressing says DeploymentPaused.
    eventually("the pause recorded", Duration::from_secs(30), || {
        let deployment = cluster.json(&["get", "deployment/api"]);
        deployment["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Progressing" && c["reason"] == "DeploymentPaused")
            .then_some(())
    });
    // Nothing rolls while paused, and `rollout status` says so instead of waiting.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        replica_sets(&cluster),
        1,
        "a paused Deployment made a ReplicaSet"
    );
    assert!(images(&cluster, "app=api").iter().all(|i| i == "busybox:1"));
    let paused = cluster.kubectl_with_input(
        &["rollout", "status", "deployment/api", "--watch=false"],
        None,
    );
    let said = String::from_utf8_lossy(&paused.stdout);
    assert!(
        said.contains("0 out of 4 new replicas have been updated"),
        "{said}"
    );

    cluster.kubectl(&["rollout", "resume", "deployment/api"]);
    let status = cluster.kubectl(&["rollout", "status", "deployment/api", "--timeout=90s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    let now = images(&cluster, "app=api");
    assert_eq!(now.len(), 4);
    assert!(now.iter().all(|i| i == "busybox:2"), "{now:?}");

    // restart: a new template (the restartedAt annotation), every pod replaced, same image.
    let before: Vec<String> = active_pods(&cluster, "app=api")
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
        .collect();
    cluster.kubectl(&["rollout", "restart", "deployment/api"]);
    let status = cluster.kubectl(&["rollout", "status", "deployment/api", "--timeout=90s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    let after = active_pods(&cluster, "app=api");
    assert_eq!(after.len(), 4);
    assert!(
        after.iter().all(|p| p["metadata"]["name"]
            .as_str()
            .is_some_and(|n| !before.iter().any(|b| b == n))),
        "some pods were not replaced: before {before:?}"
    );
    assert!(images(&cluster, "app=api").iter().all(|i| i == "busybox:2"));
    assert!(after
        .iter()
        .all(|p| !p["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"].is_null()));
    let history = cluster.kubectl(&["rollout", "history", "deployment/api"]);
    assert!(history.contains('3'), "three revisions: {history}");
}

#[test]
fn unschedulable_pods_say_why() {
    let cluster = cluster();
    let _nodes = cluster.start_simulator(3, &["--cpu", "2"]);
    cluster.kubectl(&[
        "run",
        "huge",
        "--image=busybox",
        "--overrides",
        r#"{"spec":{"containers":[{"name":"huge","image":"busybox","resources":{"requests":{"cpu":"64"}}}]}}"#,
    ]);
    let message = eventually("PodScheduled=False", Duration::from_secs(30), || {
        let pod = cluster.json(&["get", "pod", "huge"]);
        pod["status"]["conditions"].as_array().and_then(|c| {
            c.iter()
                .find(|c| c["type"] == "PodScheduled" && c["status"] == "False")
                .and_then(|c| c["message"].as_str().map(str::to_string))
        })
    });
    assert_eq!(message, "0/3 nodes are available: 3 Insufficient cpu.");
    let described = cluster.kubectl(&["describe", "pod", "huge"]);
    assert!(
        described.contains("FailedScheduling") && described.contains("Insufficient cpu"),
        "{described}"
    );
}

#[test]
fn jobs_daemon_sets_and_stateful_sets_do_their_work() {
    let cluster = cluster();
    let _nodes = cluster.start_simulator(3, &["--complete-after", "1s"]);
    cluster.kubectl(&["create", "job", "once", "--image=busybox"]);
    cluster.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/once",
        "--timeout=60s",
    ]);
    let job = cluster.json(&["get", "job", "once"]);
    assert_eq!(job["status"]["succeeded"], 1, "{job}");

    cluster.apply(
        "apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec: {containers: [{name: agent, image: busybox}]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 3
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: db, image: busybox}]}
",
    );
    let status = cluster.kubectl(&["rollout", "status", "daemonset/agent", "--timeout=60s"]);
    assert!(status.contains("successfully rolled out"), "{status}");
    let nodes: std::collections::BTreeSet<String> = active_pods(&cluster, "app=agent")
        .iter()
        .map(|p| p["spec"]["nodeName"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(nodes.len(), 3, "one daemon per node: {nodes:?}");
    let status = cluster.kubectl(&["rollout", "status", "statefulset/db", "--timeout=60s"]);
    assert!(
        status.contains("roll out complete")
            || status.contains("rolling update complete")
            || status.contains("partitioned roll out complete"),
        "{status}"
    );
    let mut names: Vec<String> = active_pods(&cluster, "app=db")
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["db-0", "db-1", "db-2"]);
}

#[test]
fn cron_jobs_fire_on_schedule() {
    let cluster = cluster();
    let _nodes = cluster.start_simulator(1, &["--complete-after", "1s"]);
    cluster.kubectl(&[
        "create",
        "cronjob",
        "tick",
        "--image=busybox",
        "--schedule=* * * * *",
    ]);
    // The next minute boundary is at most 60 s away.
    let job = eventually("a Job from the CronJob", Duration::from_secs(75), || {
        let jobs = cluster.json(&["get", "jobs"]);
        jobs["items"].as_array().and_then(|items| {
            items
                .iter()
                .find(|j| {
                    j["metadata"]["ownerReferences"][0]["name"] == "tick"
                        && j["metadata"]["name"]
                            .as_str()
                            .is_some_and(|n| n.starts_with("tick-"))
                })
                .cloned()
        })
    });
    let name = job["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    cluster.kubectl(&[
        "wait",
        "--for=condition=complete",
        &format!("job/{name}"),
        "--timeout=60s",
    ]);
    let cron_job = cluster.json(&["get", "cronjob", "tick"]);
    assert!(
        cron_job["status"]["lastScheduleTime"].is_string(),
        "{cron_job}"
    );
}
