//! Rough decisions-per-second on a synthetic cluster: `cargo run --release -p shoal-scheduler
//! --example throughput -- [nodes] [pods]`. Benchmarks proper live elsewhere; this is a quick
//! local check of the ≥ 1,000 pods/s target at 1,000 nodes.

use std::time::Instant;

use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;
use shoal_scheduler::{Scheduler, SchedulerConfig, Snapshot};

fn node(index: usize) -> Node {
    let name = format!("node-{index:05}");
    let resources = json!({"cpu": "16", "memory": "64Gi", "pods": "110"});
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "topology.kubernetes.io/zone": format!("zone-{}", index % 3)
        }},
        "status": {"capacity": resources, "allocatable": resources,
                   "conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .expect("valid node")
}

/// Replicas of 50 deployments; every 10th deployment spreads over zones (DoNotSchedule) and
/// every 7th keeps replicas off each other's hosts (required anti-affinity).
fn pod(index: usize) -> Pod {
    let deployment = index % 50;
    let app = format!("app-{deployment}");
    let mut spec = json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}}}]});
    if deployment % 10 == 0 {
        spec["topologySpreadConstraints"] = json!([{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": app}}}]);
    }
    if deployment % 7 == 0 {
        spec["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": app}}}]}});
    }
    serde_json::from_value(json!({
        "metadata": {"name": format!("pod-{index}"), "namespace": "default", "labels": {"app": app},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": app,
                                 "uid": format!("rs-{deployment}"), "controller": true}]},
        "spec": spec
    }))
    .expect("valid pod")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let pods: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);

    let building = Instant::now();
    let mut snapshot = Snapshot::new();
    for i in 0..nodes {
        snapshot.upsert_node(&node(i));
    }
    println!("{nodes} nodes added one by one in {:?}", building.elapsed());
    let pending: Vec<Pod> = (0..pods).map(pod).collect();
    let mut scheduler = Scheduler::new(SchedulerConfig::default());
    let started = Instant::now();
    let mut unschedulable = 0;
    for pod in &pending {
        match scheduler.schedule(&snapshot, pod) {
            Ok(placement) => {
                snapshot.assume(pod, &placement.node_name);
            }
            Err(_) => unschedulable += 1,
        }
    }
    let elapsed = started.elapsed();
    println!(
        "{nodes} nodes, {pods} pods: {:.0} pods/s ({:.1} µs/pod), {unschedulable} unschedulable",
        pods as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / pods as f64
    );
}
