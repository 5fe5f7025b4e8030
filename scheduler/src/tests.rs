//! End-to-end decisions on small clusters: which node wins, and the exact message when none
//! does.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{json, Value};

use crate::fixtures::{node, pending_pod, pod, ready_node};
use crate::{FilterKind, Placement, Scheduler, SchedulerConfig, Snapshot, Unschedulable};

fn scheduler() -> Scheduler {
    Scheduler::new(SchedulerConfig::default())
}

fn place(snapshot: &Snapshot, pod: &Pod) -> Placement {
    scheduler().schedule(snapshot, pod).unwrap()
}

fn reject(snapshot: &Snapshot, pod: &Pod) -> Unschedulable {
    scheduler().schedule(snapshot, pod).unwrap_err()
}

fn with_spec(name: &str, labels: Value, spec: Value) -> Pod {
    let mut spec = spec;
    if spec.get("containers").is_none() {
        spec["containers"] =
            json!([{"name": "c", "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]);
    }
    pod(json!({"metadata": {"name": name, "namespace": "default", "labels": labels}, "spec": spec}))
}

fn tainted(name: &str, taints: Value) -> Node {
    let mut node = ready_node(name, "4", "8Gi", json!({}));
    node.spec = Some(serde_json::from_value(json!({"taints": taints})).unwrap());
    node
}

fn running(name: &str, node: &str, labels: Value, spec: Value) -> Pod {
    let mut pod = with_spec(name, labels, spec);
    pod.spec.as_mut().unwrap().node_name = Some(node.to_string());
    pod
}

#[test]
fn no_nodes_at_all() {
    let error = reject(&Snapshot::new(), &pending_pod("p", "1", "1Gi"));
    assert_eq!(error.message, "no nodes available to schedule pods");
    assert_eq!(error.node_count, 0);
}

#[test]
fn reasons_are_counted_and_sorted_across_nodes() {
    let snapshot = Snapshot::from_objects(
        &[
            ready_node("small", "1", "8Gi", json!({"disk": "ssd"})),
            ready_node("hdd1", "8", "8Gi", json!({"disk": "hdd"})),
            ready_node("hdd2", "8", "8Gi", json!({"disk": "hdd"})),
        ],
        &[],
    );
    let pod = with_spec(
        "p",
        json!({}),
        json!({"nodeSelector": {"disk": "ssd"}, "containers": [{"name": "c", "resources": {"requests": {"cpu": "2"}}}]}),
    );
    let error = reject(&snapshot, &pod);
    assert_eq!(
        error.message,
        "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector."
    );
    assert_eq!(error.node_reasons["small"], vec!["Insufficient cpu"]);
    assert_eq!(
        error.failed_filters,
        BTreeSet::from([FilterKind::NodeAffinity, FilterKind::NodeResourcesFit])
    );
    let condition = error.pod_scheduled_condition();
    assert_eq!(condition.reason.as_deref(), Some("Unschedulable"));
    assert_eq!(condition.message.as_deref(), Some(error.message.as_str()));
}

#[test]
fn only_the_first_failing_filter_is_reported_per_node() {
    // Cordoned, tainted, mismatched and too small: NodeUnschedulable runs first.
    let mut everything_wrong = tainted(
        "n1",
        json!([{"key": "k", "value": "v", "effect": "NoSchedule"}]),
    );
    everything_wrong.spec.as_mut().unwrap().unschedulable = Some(true);
    // Tainted and too small: TaintToleration runs before NodeResourcesFit.
    let mut tainted_small = tainted(
        "n2",
        json!([{"key": "k", "value": "v", "effect": "NoSchedule"}]),
    );
    tainted_small
        .status
        .as_mut()
        .unwrap()
        .allocatable
        .as_mut()
        .unwrap()
        .insert(
            "cpu".into(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("1".into()),
        );
    let snapshot = Snapshot::from_objects(&[everything_wrong, tainted_small], &[]);
    let pod = with_spec(
        "p",
        json!({}),
        json!({"nodeSelector": {"x": "y"}, "containers": [{"name": "c", "resources": {"requests": {"cpu": "2"}}}]}),
    );
    assert_eq!(
        reject(&snapshot, &pod).message,
        "0/2 nodes are available: 1 node(s) had untolerated taint {k: v}, 1 node(s) were unschedulable."
    );
}

#[test]
fn not_ready_and_control_plane_nodes_report_their_taints() {
    let not_ready = node(json!({
        "metadata": {"name": "down"},
        "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "False"}]}
    }));
    let unknown = node(json!({
        "metadata": {"name": "lost"},
        "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
                   "conditions": [{"type": "Ready", "status": "Unknown"}]}
    }));
    let control_plane = tainted(
        "cp",
        json!([{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]),
    );
    let full = ready_node("full", "1", "8Gi", json!({}));
    let snapshot = Snapshot::from_objects(&[not_ready, unknown, control_plane, full], &[]);
    assert_eq!(
        reject(&snapshot, &pending_pod("p", "2", "1Gi")).message,
        "0/4 nodes are available: 1 Insufficient cpu, \
         1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, \
         1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, \
         1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }."
    );
}

#[test]
fn several_short_resources_on_one_node_each_count() {
    let snapshot = Snapshot::from_objects(
        &[
            ready_node("n1", "1", "1Gi", json!({})),
            ready_node("n2", "8", "1Gi", json!({})),
        ],
        &[],
    );
    assert_eq!(
        reject(&snapshot, &pending_pod("p", "2", "2Gi")).message,
        "0/2 nodes are available: 1 Insufficient cpu, 2 Insufficient memory."
    );
}

#[test]
fn too_many_pods() {
    let mut tiny = ready_node("tiny", "8", "8Gi", json!({}));
    tiny.status
        .as_mut()
        .unwrap()
        .allocatable
        .as_mut()
        .unwrap()
        .insert(
            "pods".into(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("1".into()),
        );
    let snapshot = Snapshot::from_objects(&[tiny], &[running("x", "tiny", json!({}), json!({}))]);
    assert_eq!(
        reject(&snapshot, &pending_pod("p", "1", "1Gi")).message,
        "0/1 nodes are available: 1 Too many pods."
    );
}

#[test]
fn node_names_in_match_fields_narrow_the_search() {
    let snapshot = Snapshot::from_objects(
        &[
            ready_node("n1", "1", "8Gi", json!({})),
            ready_node("n2", "8", "8Gi", json!({})),
            ready_node("n3", "8", "8Gi", json!({})),
        ],
        &[],
    );
    let only = |names: Value| {
        with_spec(
            "p",
            json!({}),
            json!({
                "containers": [{"name": "c", "resources": {"requests": {"cpu": "2"}}}],
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": names}]}
                ]}}}
            }),
        )
    };
    assert_eq!(place(&snapshot, &only(json!(["n3"]))).node_name, "n3");
    assert_eq!(
        reject(&snapshot, &only(json!(["n1"]))).message,
        "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't satisfy plugin(s) [NodeAffinity]."
    );
    let rejected = reject(&snapshot, &only(json!(["n1"])));
    assert_eq!(
        rejected.node_reasons["n2"],
        vec!["node(s) didn't satisfy plugin(s) [NodeAffinity]"]
    );
    assert_eq!(
        reject(&snapshot, &only(json!(["gone"]))).message,
        "0/3 nodes are available: 3 node(s) didn't satisfy plugin(s) [NodeAffinity]."
    );
    let conflict = with_spec(
        "p",
        json!({}),
        json!({
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchFields": [
                    {"key": "metadata.name", "operator": "In", "values": ["n1"]},
                    {"key": "metadata.name", "operator": "In", "values": ["n2"]}
                ]}
            ]}}}
        }),
    );
    assert_eq!(
        reject(&snapshot, &conflict).message,
        "0/3 nodes are available: pod affinity terms conflict."
    );
}

#[test]
fn host_ports_must_be_free() {
    let port = json!([{"name": "c", "ports": [{"containerPort": 80, "hostPort": 80}]}]);
    let snapshot = Snapshot::from_objects(
        &[
            ready_node("n1", "4", "8Gi", json!({})),
            ready_node("n2", "4", "8Gi", json!({})),
        ],
        &[running(
            "a",
            "n1",
            json!({}),
            json!({"containers": port.clone()}),
        )],
    );
    let pod = with_spec("p", json!({}), json!({"containers": port.clone()}));
    assert_eq!(place(&snapshot, &pod).node_name, "n2");
    let mut full = snapshot;
    full.upsert_pod(&running("b", "n2", json!({}), json!({"containers": port})));
    assert_eq!(
        reject(&full, &pod).message,
        "0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports."
    );
}

#[test]
fn required_anti_affinity_runs_out_of_hosts() {
    let spec = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "web"}}}]}}});
    let mut snapshot = Snapshot::from_objects(
        &[
            ready_node("n1", "4", "8Gi", json!({})),
            ready_node("n2", "4", "8Gi", json!({})),
            ready_node("n3", "4", "8Gi", json!({})),
        ],
        &[],
    );
    let mut scheduler = scheduler();
    let mut used = BTreeSet::new();
    for i in 0..3 {
        let replica = with_spec(&format!("web-{i}"), json!({"app": "web"}), spec.clone());
        let placement = scheduler.schedule(&snapshot, &replica).unwrap();
        snapshot.assume(&replica, &placement.node_name);
        used.insert(placement.node_name);
    }
    assert_eq!(used.len(), 3, "one replica per host");
    let fourth = with_spec("web-3", json!({"app": "web"}), spec);
    assert_eq!(
        scheduler.schedule(&snapshot, &fourth).unwrap_err().message,
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."
    );
    // A plain pod the replicas' anti-affinity selects is kept away as well.
    let plain = with_spec("intruder", json!({"app": "web"}), json!({}));
    assert_eq!(
        scheduler.schedule(&snapshot, &plain).unwrap_err().message,
        "0/3 nodes are available: 3 node(s) didn't satisfy existing pods anti-affinity rules."
    );
}

#[test]
fn required_affinity_follows_its_target() {
    let snapshot = Snapshot::from_objects(
        &[
            ready_node(
                "a1",
                "4",
                "8Gi",
                json!({"topology.kubernetes.io/zone": "a"}),
            ),
            ready_node(
                "b1",
                "4",
                "8Gi",
                json!({"topology.kubernetes.io/zone": "b"}),
            ),
            ready_node(
                "b2",
                "4",
                "8Gi",
                json!({"topology.kubernetes.io/zone": "b"}),
            ),
        ],
        &[running("db", "b1", json!({"app": "db"}), json!({}))],
    );
    let affine = |key: &str| {
        with_spec(
            "web",
            json!({"app": "web"}),
            json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": key, "labelSelector": {"matchLabels": {"app": "db"}}}]}}}),
        )
    };
    let placement = place(&snapshot, &affine("topology.kubernetes.io/zone"));
    assert!(placement.node_name.starts_with('b'), "{placement:?}");
    assert_eq!(placement.feasible_nodes, 2);
    let missing = affine("rack");
    assert_eq!(
        reject(&snapshot, &missing).message,
        "0/3 nodes are available: 3 node(s) didn't match pod affinity rules."
    );
}

#[test]
fn hard_topology_spread_reports_skew_and_missing_labels() {
    let zone = |z: &str| json!({"topology.kubernetes.io/zone": z});
    let snapshot = Snapshot::from_objects(
        &[
            ready_node("a1", "4", "8Gi", zone("a")),
            ready_node("b1", "4", "8Gi", zone("b")),
            ready_node("bare", "4", "8Gi", json!({})),
        ],
        &[
            running("w1", "a1", json!({"app": "web"}), json!({})),
            running("w2", "a1", json!({"app": "web"}), json!({})),
            running("w3", "b1", json!({"app": "web"}), json!({})),
        ],
    );
    let spread = |max_skew: i32| {
        with_spec(
            "w4",
            json!({"app": "web"}),
            json!({"topologySpreadConstraints": [
            {"maxSkew": max_skew, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
             "labelSelector": {"matchLabels": {"app": "web"}}}]}),
        )
    };
    assert_eq!(place(&snapshot, &spread(1)).node_name, "b1");
    let mut crowded = snapshot;
    crowded.upsert_pod(&running("w5", "b1", json!({"app": "web"}), json!({})));
    // Zones a and b hold 2 each: minimum 2, so both still fit with maxSkew 1.
    assert_eq!(place(&crowded, &spread(1)).feasible_nodes, 2);
    let strict = with_spec(
        "w4",
        json!({"app": "web"}),
        json!({
        "nodeSelector": {"topology.kubernetes.io/zone": "a"},
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
             "labelSelector": {"matchLabels": {"app": "web"}}, "nodeAffinityPolicy": "Ignore"}]}),
    );
    crowded.upsert_pod(&running("w6", "a1", json!({"app": "web"}), json!({})));
    assert_eq!(
        reject(&crowded, &strict).message,
        "0/3 nodes are available: 1 node(s) didn't match pod topology spread constraints, \
         2 node(s) didn't match Pod's node affinity/selector."
    );
    let no_label_anywhere = with_spec(
        "w4",
        json!({"app": "web"}),
        json!({"topologySpreadConstraints": [
        {"maxSkew": 1, "topologyKey": "rack", "whenUnsatisfiable": "DoNotSchedule",
         "labelSelector": {"matchLabels": {"app": "web"}}}]}),
    );
    assert_eq!(
        reject(&crowded, &no_label_anywhere).message,
        "0/3 nodes are available: 3 node(s) didn't match pod topology spread constraints (missing required label)."
    );
}

#[test]
fn the_emptier_node_wins() {
    let snapshot = Snapshot::from_objects(
        &[
            ready_node("busy", "4", "8Gi", json!({})),
            ready_node("idle", "4", "8Gi", json!({})),
        ],
        &[running(
            "x",
            "busy",
            json!({}),
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "3", "memory": "6Gi"}}}]}),
        )],
    );
    let placement = place(&snapshot, &pending_pod("p", "500m", "1Gi"));
    assert_eq!(placement.node_name, "idle");
    assert_eq!(placement.feasible_nodes, 2);
    assert_eq!(placement.evaluated_nodes, 2);
    // Fit 1×87 + Balanced 1×100 + TaintToleration 3×100 (spread, affinity: none).
    assert_eq!(placement.score, 87 + 100 + 300);
}

#[test]
fn soft_preferences_steer_the_choice() {
    let snapshot = Snapshot::from_objects(
        &[
            tainted(
                "soft-tainted",
                json!([{"key": "spot", "effect": "PreferNoSchedule"}]),
            ),
            ready_node("hdd", "4", "8Gi", json!({"disk": "hdd"})),
            ready_node("ssd", "4", "8Gi", json!({"disk": "ssd"})),
        ],
        &[],
    );
    let prefers_ssd = with_spec(
        "p",
        json!({}),
        json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 1, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}}]}}}),
    );
    assert_eq!(place(&snapshot, &prefers_ssd).node_name, "ssd");
    let mut scheduler = scheduler();
    for _ in 0..20 {
        let placement = scheduler
            .schedule(&snapshot, &pending_pod("p", "100m", "128Mi"))
            .unwrap();
        assert_ne!(placement.node_name, "soft-tainted");
    }
    let near_db = Snapshot::from_objects(
        &[
            ready_node("a", "4", "8Gi", json!({})),
            ready_node("b", "4", "8Gi", json!({})),
        ],
        &[running("db", "b", json!({"app": "db"}), json!({}))],
    );
    let prefers_db = with_spec(
        "p",
        json!({}),
        json!({"affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "db"}}}}]}}}),
    );
    assert_eq!(place(&near_db, &prefers_db).node_name, "b");
}

#[test]
fn replicas_spread_over_zones_by_default() {
    let zone = |z: &str| json!({"topology.kubernetes.io/zone": z});
    let mut snapshot = Snapshot::from_objects(
        &[
            ready_node("a1", "64", "256Gi", zone("a")),
            ready_node("a2", "64", "256Gi", zone("a")),
            ready_node("a3", "64", "256Gi", zone("a")),
            ready_node("a4", "64", "256Gi", zone("a")),
            ready_node("b1", "64", "256Gi", zone("b")),
            ready_node("c1", "64", "256Gi", zone("c")),
        ],
        &[],
    );
    let mut scheduler = scheduler();
    let mut zones_in_order = Vec::new();
    for i in 0..6 {
        let replica = pod(json!({
            "metadata": {"name": format!("web-{i}"), "namespace": "default", "labels": {"app": "web"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "rs-web", "controller": true}]},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}
        }));
        let placement = scheduler.schedule(&snapshot, &replica).unwrap();
        snapshot.assume(&replica, &placement.node_name);
        zones_in_order.push(placement.node_name.chars().next().unwrap());
    }
    // The first three replicas take one zone each although zone a has four of six nodes.
    let first_three: BTreeSet<char> = zones_in_order[..3].iter().copied().collect();
    assert_eq!(
        first_three,
        BTreeSet::from(['a', 'b', 'c']),
        "{zones_in_order:?}"
    );
    // Then host spreading (maxSkew 3) and zone spreading (maxSkew 5) balance out: zone a
    // takes three replicas on three different nodes, b and c the other three.
    let mut per_zone: BTreeMap<char, usize> = BTreeMap::new();
    for zone in &zones_in_order {
        *per_zone.entry(*zone).or_default() += 1;
    }
    assert_eq!(per_zone[&'a'], 3, "{zones_in_order:?}");
    for node in ["a1", "a2", "a3", "a4"] {
        assert!(
            snapshot.node_usage(node).unwrap().pods <= 1,
            "{node} doubled up"
        );
    }
}

#[test]
fn ties_are_broken_by_the_seed_and_spread() {
    let snapshot = Snapshot::from_objects(
        &(0..4)
            .map(|i| ready_node(&format!("n{i}"), "4", "8Gi", json!({})))
            .collect::<Vec<_>>(),
        &[],
    );
    let pod = pending_pod("p", "100m", "128Mi");
    let run = |seed: u64| {
        let mut scheduler = Scheduler::new(SchedulerConfig {
            tie_break_seed: seed,
            ..Default::default()
        });
        (0..40)
            .map(|_| scheduler.schedule(&snapshot, &pod).unwrap().node_name)
            .collect::<Vec<_>>()
    };
    let first = run(7);
    assert_eq!(first, run(7), "same seed, same choices");
    assert_ne!(first, run(8), "another seed, other choices");
    let distinct: BTreeSet<_> = first.iter().collect();
    assert_eq!(distinct.len(), 4, "equal nodes all get picked: {first:?}");
}

#[test]
fn unreadable_requests_are_noted_and_count_as_zero() {
    let snapshot = Snapshot::from_objects(&[ready_node("n1", "1", "1Gi", json!({}))], &[]);
    let pod = with_spec(
        "p",
        json!({}),
        json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "a lot"}}}]}),
    );
    let placement = place(&snapshot, &pod);
    assert_eq!(placement.node_name, "n1");
    assert_eq!(placement.notes.len(), 1);
    assert!(
        placement.notes[0].contains("\"a lot\""),
        "{:?}",
        placement.notes
    );
    let too_big = with_spec(
        "p",
        json!({}),
        json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "a lot", "memory": "2Gi"}}}]}),
    );
    let error = reject(&snapshot, &too_big);
    assert_eq!(
        error.message,
        "0/1 nodes are available: 1 Insufficient memory."
    );
    assert_eq!(error.notes.len(), 1);
}

/// A synthetic cluster of `nodes` nodes in 3 zones, 16 CPUs and 64 GiB each.
fn synthetic_cluster(nodes: usize) -> Snapshot {
    let mut snapshot = Snapshot::new();
    for i in 0..nodes {
        snapshot.upsert_node(&ready_node(
            &format!("node-{i:04}"),
            "16",
            "64Gi",
            json!({"topology.kubernetes.io/zone": format!("zone-{}", i % 3)}),
        ));
    }
    snapshot
}

fn replica(deployment: usize, index: usize) -> Pod {
    pod(json!({
        "metadata": {"name": format!("app-{deployment}-{index}"), "namespace": "default",
            "labels": {"app": format!("app-{deployment}")},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("app-{deployment}"),
                                 "uid": format!("rs-{deployment}"), "controller": true}]},
        "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}}}]}
    }))
}

#[test]
fn a_thousand_nodes_take_two_thousand_pods_in_a_row() {
    let mut snapshot = synthetic_cluster(1000);
    let mut scheduler = scheduler();
    for i in 0..2000 {
        let pod = replica(i % 50, i);
        let placement = scheduler.schedule(&snapshot, &pod).unwrap();
        assert_eq!(
            placement.feasible_nodes, 420,
            "adaptive share of 1000 nodes"
        );
        snapshot.assume(&pod, &placement.node_name);
    }
    assert_eq!(snapshot.pod_count(), 2000);
    let most_loaded = snapshot
        .node_names()
        .iter()
        .map(|name| snapshot.node_usage(name).unwrap().pods)
        .max()
        .unwrap();
    assert!(most_loaded <= 4, "pods pile up: {most_loaded} on one node");
}

#[test]
fn a_full_cluster_explains_itself_for_every_node() {
    let mut snapshot = synthetic_cluster(150);
    let mut scheduler = scheduler();
    let huge = pending_pod("huge", "17", "1Gi");
    let error = scheduler.schedule(&snapshot, &huge).unwrap_err();
    assert_eq!(
        error.message,
        "0/150 nodes are available: 150 Insufficient cpu."
    );
    assert_eq!(error.node_reasons.len(), 150);
    snapshot.remove_node("node-0000");
    assert_eq!(
        scheduler.schedule(&snapshot, &huge).unwrap_err().message,
        "0/149 nodes are available: 149 Insufficient cpu."
    );
}
