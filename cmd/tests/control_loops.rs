//! The control loops of `shoal server` end to end, seen through kubectl, with simulated
//! nodes (`shoal simulate-nodes`) as kubelets: Endpoints and EndpointSlices follow a
//! Deployment behind a Service; the garbage collector cascades deletes in the background,
//! in the foreground and with orphaning; a node whose kubelet dies goes Unknown, is tainted,
//! and its pods are evicted and replaced elsewhere; every new namespace gets a `default`
//! ServiceAccount.
//!
//! Every wait polls with a deadline. The node-loss test takes about a minute: the node
//! monitor grace period is Kubernetes' 50 s (the server has no flag to shorten it yet).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_e2e::cluster::{eventually, Cluster};

fn start_cluster() -> Cluster {
    Cluster::start(Path::new(env!("CARGO_BIN_EXE_shoal")))
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn is_running_and_ready(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && pod["status"]["phase"] == "Running"
        && condition(pod, "Ready").is_some_and(|c| c["status"] == "True")
}

/// Seconds since the epoch of an RFC 3339 UTC time as the API writes it
/// (`2026-01-02T03:04:05Z`), or `None`.
fn epoch_seconds(text: &str) -> Option<i64> {
    let (date, time) = text.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':').map(|p| p.parse::<f64>());
    let (h, min, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + (h as i64) * 3600 + (min as i64) * 60 + s as i64)
}

/// A Deployment of `replicas` pods labeled `app=<name>` with a port named `http`.
fn deployment(name: &str, replicas: usize, extra_pod_spec: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:{extra_pod_spec}
      containers:
      - name: app
        image: nginx:1.27
        ports:
        - {{name: http, containerPort: 8080}}
"
    )
}

fn pods_of(cluster: &Cluster, app: &str) -> Vec<Value> {
    cluster.items(&["get", "pods", "-l", &format!("app={app}")])
}

/// Waits for `replicas` running, ready pods of `app` and returns them.
fn running(cluster: &Cluster, app: &str, replicas: usize) -> Vec<Value> {
    eventually(
        &format!("{replicas} running pods of {app}"),
        Duration::from_secs(60),
        || {
            let pods = pods_of(cluster, app);
            (pods.len() == replicas && pods.iter().all(is_running_and_ready)).then_some(pods)
        },
    )
}

/// The IPs listed as ready in the Endpoints, with their ports, and the not-ready ones.
fn endpoint_addresses(endpoints: &Value) -> (Vec<(String, String)>, Vec<String>, Vec<Value>) {
    let mut ready = Vec::new();
    let mut not_ready = Vec::new();
    let mut ports = Vec::new();
    for subset in endpoints["subsets"].as_array().into_iter().flatten() {
        for address in subset["addresses"].as_array().into_iter().flatten() {
            ready.push((
                address["ip"].as_str().unwrap_or_default().to_string(),
                address["targetRef"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ));
        }
        for address in subset["notReadyAddresses"].as_array().into_iter().flatten() {
            not_ready.push(address["ip"].as_str().unwrap_or_default().to_string());
        }
        ports.extend(subset["ports"].as_array().into_iter().flatten().cloned());
    }
    ready.sort();
    (ready, not_ready, ports)
}

#[test]
fn endpoints_and_slices_follow_a_deployment_behind_a_service() {
    let cluster = start_cluster();
    let _nodes = cluster.start_simulator(3, &[]);
    cluster.apply(&deployment("web", 3, ""));
    cluster.apply(
        "apiVersion: v1
kind: Service
metadata:
  name: web
  labels: {team: shop}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
",
    );
    let pods = running(&cluster, "web", 3);
    let mut expected: Vec<(String, String)> = pods
        .iter()
        .map(|p| {
            (
                p["status"]["podIP"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                name(p).to_string(),
            )
        })
        .collect();
    expected.sort();

    // Endpoints: the three pods, ready, on the port the name resolves to.
    let endpoints = eventually("3 ready addresses", Duration::from_secs(20), || {
        let endpoints = cluster.get(&["get", "endpoints", "web"])?;
        (endpoint_addresses(&endpoints).0 == expected).then_some(endpoints)
    });
    let (_, not_ready, ports) = endpoint_addresses(&endpoints);
    assert!(not_ready.is_empty(), "{endpoints}");
    assert_eq!(ports.len(), 1, "{endpoints}");
    assert_eq!(ports[0]["name"], "http");
    assert_eq!(ports[0]["port"], 8080);
    assert_eq!(ports[0]["protocol"], "TCP");
    assert_eq!(endpoints["metadata"]["labels"]["team"], "shop");
    let row = cluster.kubectl(&["get", "endpoints", "web", "--no-headers"]);
    for (ip, _) in &expected {
        assert!(row.contains(&format!("{ip}:8080")), "{row}");
    }

    // The EndpointSlice: owned by the Service, every endpoint ready with its node and zone.
    let service_uid = cluster.json(&["get", "service", "web"])["metadata"]["uid"].clone();
    let slices = eventually(
        "a slice with 3 ready endpoints",
        Duration::from_secs(20),
        || {
            let slices = cluster.items(&[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=web",
            ]);
            let ready = slices
                .iter()
                .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
                .filter(|e| e["conditions"]["ready"] == true)
                .count();
            (slices.len() == 1 && ready == 3).then_some(slices)
        },
    );
    let slice = &slices[0];
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(slice["ports"][0]["name"], "http");
    assert_eq!(slice["ports"][0]["port"], 8080);
    assert_eq!(
        slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(slice["metadata"]["ownerReferences"][0]["kind"], "Service");
    assert_eq!(slice["metadata"]["ownerReferences"][0]["uid"], service_uid);
    let mut slice_ips: Vec<(String, String)> = slice["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            assert!(
                e["nodeName"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("sim-")),
                "{e}"
            );
            assert!(
                e["zone"].as_str().is_some_and(|z| z.starts_with("zone-")),
                "{e}"
            );
            assert_eq!(e["conditions"]["serving"], true, "{e}");
            assert_eq!(e["conditions"]["terminating"], false, "{e}");
            (
                e["addresses"][0].as_str().unwrap_or_default().to_string(),
                e["targetRef"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    slice_ips.sort();
    assert_eq!(slice_ips, expected);

    // Scaled to one: one address left, in both.
    cluster.kubectl(&["scale", "deployment", "web", "--replicas=1"]);
    let survivor = running(&cluster, "web", 1).remove(0);
    let survivor_ip = survivor["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let endpoints = eventually("1 address", Duration::from_secs(30), || {
        let endpoints = cluster.get(&["get", "endpoints", "web"])?;
        let (ready, not_ready, _) = endpoint_addresses(&endpoints);
        (ready.len() == 1 && not_ready.is_empty()).then_some(endpoints)
    });
    assert_eq!(
        endpoint_addresses(&endpoints).0,
        [(survivor_ip.clone(), name(&survivor).to_string())]
    );
    eventually("a slice with 1 endpoint", Duration::from_secs(30), || {
        let slices = cluster.items(&[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
        ]);
        let endpoints: Vec<Value> = slices
            .iter()
            .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
            .collect();
        (endpoints.len() == 1
            && endpoints[0]["addresses"][0] == survivor_ip.as_str()
            && endpoints[0]["conditions"]["ready"] == true)
            .then_some(())
    });

    // The Service goes: its Endpoints are deleted, its slices collected.
    cluster.kubectl(&["delete", "service", "web"]);
    eventually("the Endpoints deleted", Duration::from_secs(20), || {
        cluster
            .get(&["get", "endpoints", "web"])
            .is_none()
            .then_some(())
    });
    eventually("the slices collected", Duration::from_secs(20), || {
        cluster
            .items(&[
                "get",
                "endpointslices",
                "-l",
                "kubernetes.io/service-name=web",
            ])
            .is_empty()
            .then_some(())
    });
}

#[test]
fn deletes_cascade_in_the_background_in_the_foreground_or_not_at_all() {
    let cluster = start_cluster();
    let _nodes = cluster.start_simulator(3, &[]);
    for app in ["background", "foreground", "orphan"] {
        cluster.apply(&deployment(app, 2, ""));
    }
    let orphan_pods: Vec<String> = running(&cluster, "orphan", 2)
        .iter()
        .map(|p| name(p).to_string())
        .collect();
    running(&cluster, "background", 2);
    running(&cluster, "foreground", 2);
    let replica_sets =
        |app: &str| cluster.items(&["get", "replicasets", "-l", &format!("app={app}")]);

    // Background (kubectl's default): the Deployment goes at once, then what it owned.
    cluster.kubectl(&["delete", "deployment", "background"]);
    eventually(
        "the background ReplicaSet and pods collected",
        Duration::from_secs(30),
        || {
            (replica_sets("background").is_empty() && pods_of(&cluster, "background").is_empty())
                .then_some(())
        },
    );

    // Foreground: kubectl returns once the Deployment is gone, and by then so is the rest.
    let started = Instant::now();
    cluster.kubectl(&[
        "delete",
        "deployment",
        "foreground",
        "--cascade=foreground",
        "--timeout=60s",
    ]);
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(
        replica_sets("foreground").is_empty(),
        "the ReplicaSet outlived its Deployment"
    );
    assert!(
        pods_of(&cluster, "foreground").is_empty(),
        "pods outlived their Deployment"
    );

    // Orphan: the ReplicaSet stays, released, and keeps its pods running.
    cluster.kubectl(&[
        "delete",
        "deployment",
        "orphan",
        "--cascade=orphan",
        "--timeout=60s",
    ]);
    assert!(cluster.get(&["get", "deployment", "orphan"]).is_none());
    let left = replica_sets("orphan");
    assert_eq!(left.len(), 1, "{left:?}");
    let references = &left[0]["metadata"]["ownerReferences"];
    assert!(
        references.as_array().is_none_or(Vec::is_empty),
        "the orphaned ReplicaSet still names an owner: {references}"
    );
    let mut pods: Vec<String> = pods_of(&cluster, "orphan")
        .iter()
        .filter(|p| is_running_and_ready(p))
        .map(|p| name(p).to_string())
        .collect();
    pods.sort();
    let mut before = orphan_pods;
    before.sort();
    assert_eq!(pods, before, "the orphaned ReplicaSet's pods were touched");
    // And it stays that way: nothing collects the orphans later.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(replica_sets("orphan").len(), 1);
    assert_eq!(pods_of(&cluster, "orphan").len(), 2);
}

#[test]
fn pods_of_a_lost_node_are_evicted_and_replaced_elsewhere() {
    let cluster = start_cluster();
    let _healthy = cluster.start_simulator(3, &[]);
    let doomed = cluster.start_simulator(
        1,
        &[
            "--name-prefix",
            "lost-",
            "--pod-cidr",
            "10.192.0.0/16",
            "--node-ip-cidr",
            "10.200.0.0/16",
        ],
    );
    // One pod per node (spread by hostname; a tainted node stops counting, or the
    // replacement could not go anywhere), each tolerating an unreachable node for 5 s
    // instead of the default 300 s.
    cluster.apply(&deployment(
        "spread",
        4,
        "
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule,
         nodeTaintsPolicy: Honor, labelSelector: {matchLabels: {app: spread}}}
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute,
         tolerationSeconds: 5}",
    ));
    let pods = running(&cluster, "spread", 4);
    let lost_pod = pods
        .iter()
        .find(|p| p["spec"]["nodeName"] == "lost-0")
        .unwrap_or_else(|| panic!("no pod landed on lost-0: {pods:?}"))
        .clone();
    let lost_name = name(&lost_pod).to_string();

    doomed.kill();
    let killed = Instant::now();

    // Within the grace period (50 s) and a monitor period (5 s): Unknown, and tainted.
    let node = eventually(
        "lost-0 Unknown and tainted",
        Duration::from_secs(70),
        || {
            let node = cluster.json(&["get", "node", "lost-0"]);
            let tainted = node["spec"]["taints"].as_array().is_some_and(|taints| {
                taints.iter().any(|t| {
                    t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoExecute"
                })
            });
            let unknown = condition(&node, "Ready").is_some_and(|c| c["status"] == "Unknown");
            (unknown && tainted).then_some(node)
        },
    );
    let unreachable = killed.elapsed();
    let ready = condition(&node, "Ready").cloned().unwrap_or_default();
    assert_eq!(ready["reason"], "NodeStatusUnknown", "{ready}");
    assert_eq!(
        condition(&node, "MemoryPressure").map(|c| c["status"].clone()),
        Some(Value::from("Unknown"))
    );
    let taints = node["spec"]["taints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        taints
            .iter()
            .any(|t| t["key"] == "node.kubernetes.io/unreachable" && t["effect"] == "NoSchedule"),
        "{taints:?}"
    );
    let tainted_at = taints
        .iter()
        .find(|t| t["effect"] == "NoExecute")
        .and_then(|t| epoch_seconds(t["timeAdded"].as_str()?))
        .expect("the NoExecute taint has a timeAdded");

    // The pod on it: marked not ready, then evicted once its 5 s toleration ran out. Its
    // kubelet is gone, so it stays Terminating, as in Kubernetes.
    let evicted = eventually("the lost pod evicted", Duration::from_secs(20), || {
        let pod = cluster.get(&["get", "pod", &lost_name])?;
        (!pod["metadata"]["deletionTimestamp"].is_null()).then_some(pod)
    });
    let eviction = killed.elapsed();
    assert_eq!(
        condition(&evicted, "Ready").map(|c| c["status"].clone()),
        Some(Value::from("False"))
    );
    let disruption = condition(&evicted, "DisruptionTarget")
        .cloned()
        .unwrap_or_default();
    assert_eq!(disruption["reason"], "DeletionByTaintManager", "{evicted}");
    let evicted_at = disruption["lastTransitionTime"]
        .as_str()
        .and_then(epoch_seconds)
        .expect("a DisruptionTarget time");
    assert!(
        evicted_at - tainted_at >= 5,
        "evicted {}s after the taint, before tolerationSeconds ran out",
        evicted_at - tainted_at
    );
    let events = cluster.items(&[
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.name={lost_name}"),
    ]);
    assert!(
        events.iter().any(|e| e["reason"] == "TaintManagerEviction"),
        "{events:?}"
    );

    // Replaced: four running pods again, none on the lost node.
    let replaced = eventually(
        "a replacement running elsewhere",
        Duration::from_secs(30),
        || {
            let live: Vec<Value> = pods_of(&cluster, "spread")
                .into_iter()
                .filter(is_running_and_ready)
                .collect();
            (live.len() == 4 && live.iter().all(|p| p["spec"]["nodeName"] != "lost-0"))
                .then_some(live)
        },
    );
    let recovered = killed.elapsed();
    assert!(replaced.iter().all(|p| name(p) != lost_name));
    eprintln!(
        "node lost → Unknown and tainted after {:.1} s, pod evicted after {:.1} s, \
         replacement running after {:.1} s",
        unreachable.as_secs_f64(),
        eviction.as_secs_f64(),
        recovered.as_secs_f64()
    );
}

#[test]
fn new_namespaces_get_a_default_service_account() {
    let cluster = start_cluster();
    cluster.kubectl(&["create", "namespace", "team-a"]);
    let account = eventually(
        "ServiceAccount default in team-a",
        Duration::from_secs(10),
        || cluster.get(&["get", "serviceaccount", "default", "-n", "team-a"]),
    );
    assert_eq!(account["metadata"]["namespace"], "team-a");
    // Deleted, it comes back (a new object).
    let uid = account["metadata"]["uid"].clone();
    cluster.kubectl(&["delete", "serviceaccount", "default", "-n", "team-a"]);
    eventually(
        "ServiceAccount default recreated",
        Duration::from_secs(10),
        || {
            let again = cluster.get(&["get", "serviceaccount", "default", "-n", "team-a"])?;
            (again["metadata"]["uid"] != uid).then_some(())
        },
    );
    // The built-in namespaces have theirs too.
    for namespace in ["default", "kube-system"] {
        assert!(
            cluster
                .get(&["get", "serviceaccount", "default", "-n", namespace])
                .is_some(),
            "{namespace}"
        );
    }
}

/// The pod subnet node IPAM gives `node`, once it has one.
fn pod_cidr_of(cluster: &Cluster, node: &str) -> String {
    eventually(
        &format!("a podCIDR on {node}"),
        Duration::from_secs(20),
        || {
            let node = cluster.get(&["get", "node", node])?;
            node["spec"]["podCIDR"].as_str().map(str::to_owned)
        },
    )
}

#[test]
fn nodes_get_pod_subnets_also_when_they_join_after_a_server_restart() {
    let mut cluster = start_cluster();
    let node = |name: &str| format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n");
    cluster.apply(&node("ipam-a"));
    let first = pod_cidr_of(&cluster, "ipam-a");
    // The restarted server's node IPAM starts from a list that already holds a node: the
    // loop once waited there for its cache to fill, which only the loop itself could do.
    cluster.restart(&[]);
    cluster.apply(&node("ipam-b"));
    let second = pod_cidr_of(&cluster, "ipam-b");
    assert_ne!(first, second, "two nodes, two subnets");
    assert_eq!(
        pod_cidr_of(&cluster, "ipam-a"),
        first,
        "kept across the restart"
    );
}

#[test]
fn rfc3339_times_convert_to_epoch_seconds() {
    assert_eq!(epoch_seconds("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(epoch_seconds("2000-03-01T00:00:01Z"), Some(951_868_801));
    assert_eq!(epoch_seconds("2026-11-22T05:51:26Z"), Some(1_795_326_686));
    assert_eq!(epoch_seconds("garbage"), None);
}
