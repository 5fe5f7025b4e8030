//! The node IPAM loop: watches Nodes and gives each one without pod subnets the next free one
//! of each cluster CIDR ([`crate::node_ipam`]), written in one merge patch of `spec.podCIDR`
//! (the primary family's) and `spec.podCIDRs` (all), so a node never has one family without
//! the other.

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use serde_json::json;
use shoal_common::Cidr;
use tokio::sync::watch;

use crate::node_ipam::{assign, NodeRange};

/// Whether `node` still waits for its pod subnets.
fn lacks_pod_cidrs(node: &Node) -> bool {
    node.spec
        .as_ref()
        .is_none_or(|s| s.pod_cidr.is_none() && s.pod_cidrs.as_ref().is_none_or(Vec::is_empty))
}

/// Runs the loop until `drain` turns true.
pub async fn run(client: kube::Client, cluster_cidrs: Vec<Cidr>, mut drain: watch::Receiver<bool>) {
    let nodes: Api<Node> = Api::all(client);
    let (store, writer) = reflector::store();
    let mut changes = watcher(nodes.clone(), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .touched_objects()
        .boxed();
    // Whether a node seen since the last pass has no subnets: a pass reads every node, and
    // most updates (heartbeats, cordons) are of nodes that have theirs.
    let mut wanted = false;
    loop {
        let first = tokio::select! {
            change = changes.next() => change,
            _ = drain.wait_for(|stop| *stop) => return,
        };
        // The rest of a burst is taken before the pass, as one change.
        for change in super::with_ready(first, &mut changes) {
            match change {
                None => return,
                Some(Ok(node)) => wanted |= lacks_pod_cidrs(&node),
                Some(Err(_)) => {} // the watcher retries with its backoff
            }
        }
        // Not awaited: this loop is what drives the watch, so waiting here for the first
        // list to finish would wait forever (it did, on a restart with nodes listed).
        match store.wait_until_ready().now_or_never() {
            Some(Ok(())) => {}
            Some(Err(_)) => return,
            None => continue,
        }
        if !std::mem::take(&mut wanted) {
            continue;
        }
        let mut all: Vec<NodeRange> = store
            .state()
            .iter()
            .map(|n| {
                let spec = n.spec.as_ref();
                let listed = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
                NodeRange {
                    name: n.metadata.name.clone().unwrap_or_default(),
                    pod_cidrs: if listed.is_empty() {
                        spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect()
                    } else {
                        listed
                    },
                }
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        for (name, cidrs) in assign(&cluster_cidrs, &all) {
            let texts: Vec<String> = cidrs.iter().map(Cidr::to_string).collect();
            let cidr = texts.join(",");
            let patch = json!({"spec": {"podCIDR": texts[0], "podCIDRs": texts}});
            match nodes
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => tracing::info!(node = %name, %cidr, "assigned pod CIDR"),
                Err(err) => {
                    tracing::warn!(node = %name, %err, "assigning pod CIDR");
                    wanted = true; // tried again at the next node update
                }
            }
        }
    }
}
