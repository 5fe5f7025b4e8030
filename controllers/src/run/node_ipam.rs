//! The node IPAM loop: watches Nodes and gives each one without pod subnets the next free one
//! of each cluster CIDR ([`crate::node_ipam`]), written in one merge patch of `spec.podCIDR`
//! (the primary family's) and `spec.podCIDRs` (all), so a node never has one family without
//! the other.

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use serde_json::json;
use shoal_common::Cidr;
use tokio::sync::watch;

use crate::node_ipam::{assign, NodeRange};

/// Runs the loop until `drain` turns true.
pub async fn run(client: kube::Client, cluster_cidrs: Vec<Cidr>, mut drain: watch::Receiver<bool>) {
    let nodes: Api<Node> = Api::all(client);
    let (store, writer) = reflector::store();
    let mut changes = watcher(nodes.clone(), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .touched_objects()
        .boxed();
    loop {
        tokio::select! {
            change = changes.next() => if change.is_none() { return },
            _ = drain.wait_for(|stop| *stop) => return,
        }
        if store.wait_until_ready().await.is_err() {
            return;
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
                Err(err) => tracing::warn!(node = %name, %err, "assigning pod CIDR"),
            }
        }
    }
}
