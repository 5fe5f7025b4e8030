//! The node IPAM loop: watches Nodes and gives each one without a pod subnet the next free one
//! from the cluster CIDR ([`crate::node_ipam`]), written with a merge patch of `spec.podCIDR`
//! and `spec.podCIDRs`.

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use serde_json::json;
use shoal_common::Cidr;
use tokio::sync::watch;

use crate::node_ipam::{assign, NodeRange};

/// Runs the loop until `drain` turns true.
pub async fn run(client: kube::Client, cluster_cidr: Cidr, mut drain: watch::Receiver<bool>) {
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
            .map(|n| NodeRange {
                name: n.metadata.name.clone().unwrap_or_default(),
                pod_cidr: n.spec.as_ref().and_then(|s| s.pod_cidr.clone()),
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        for (name, cidr) in assign(&cluster_cidr, &all) {
            let patch =
                json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}});
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
