//! The node's side of the pod network between nodes ([`shoal_net::overlay`]): brought up once
//! the node has its pod CIDR, its VTEP published in flannel's annotations on its own Node,
//! then the peers' routes, neighbour and FDB entries kept in step with the Node objects — on
//! every change that moves what the overlay needs, and every [`RESYNC`] (which also repairs
//! entries someone else removed).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::json;
use shoal_common::Cidr;
use shoal_net::overlay::desired::{self, Desired};
use shoal_net::overlay::{Overlay, OverlayConfig, OverlayError, VNI};
use tokio::sync::watch;

/// How often the entries are re-read and repaired even when no Node changed.
pub const RESYNC: Duration = Duration::from_secs(60);
/// How long events are gathered before one sync (a burst of Node changes costs one pass).
const SETTLE: Duration = Duration::from_millis(100);

/// What the overlay needs to know of the node.
#[derive(Debug, Clone)]
pub struct OverlaySettings {
    pub node_name: String,
    pub node_ip: IpAddr,
    /// `--cluster-cidr`.
    pub cluster_cidrs: Vec<Cidr>,
}

/// Brings the overlay up for `pod_cidrs` and publishes this node's VTEP on its Node.
pub async fn start(
    client: &kube::Client,
    settings: &OverlaySettings,
    pod_cidrs: &[Cidr],
) -> Result<Overlay, String> {
    let overlay = Overlay::setup(&OverlayConfig {
        node_name: settings.node_name.clone(),
        node_ips: vec![settings.node_ip],
        pod_cidrs: pod_cidrs.to_vec(),
        cluster_cidrs: settings.cluster_cidrs.clone(),
    })
    .await
    .map_err(|e: OverlayError| e.to_string())?;
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = json!({"metadata": {"annotations": overlay.annotations()}});
    nodes
        .patch(
            &settings.node_name,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|e| format!("publishing the VTEP on Node {}: {e}", settings.node_name))?;
    Ok(overlay)
}

/// The Nodes as a watch reports them: a relist replaces the set only once complete, so a
/// sync never sees a half-listed cluster (which would remove the peers not listed yet).
#[derive(Debug, Default)]
pub struct NodeSet {
    nodes: BTreeMap<String, Node>,
    relisting: Option<BTreeMap<String, Node>>,
    listed: bool,
}

impl NodeSet {
    /// Folds one watch event in; true when the set changed and is complete.
    pub fn apply(&mut self, event: watcher::Event<Node>) -> bool {
        let key = |n: &Node| n.metadata.name.clone().unwrap_or_default();
        match event {
            watcher::Event::Init => {
                self.relisting = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(node) => {
                if let Some(list) = self.relisting.as_mut() {
                    list.insert(key(&node), node);
                }
                false
            }
            watcher::Event::InitDone => {
                if let Some(list) = self.relisting.take() {
                    self.nodes = list;
                }
                self.listed = true;
                true
            }
            watcher::Event::Apply(node) => {
                self.nodes.insert(key(&node), node);
                self.listed
            }
            watcher::Event::Delete(node) => {
                self.nodes.remove(&key(&node));
                self.listed
            }
        }
    }

    /// The complete set, once the first listing is done.
    pub fn listed(&self) -> Option<Vec<Node>> {
        self.listed.then(|| self.nodes.values().cloned().collect())
    }
}

/// Keeps the peers' entries in step with the Node objects until `shutdown`.
pub async fn run(
    client: kube::Client,
    overlay: Overlay,
    node_name: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Node> = Api::all(client);
    let mut stream = watcher(api, watcher::Config::default()).boxed();
    let mut set = NodeSet::default();
    let mut applied: Option<Desired> = None;
    // When the pending change is applied: set by the first change after a sync, so a steady
    // stream of events (heartbeats of many nodes) delays a sync by SETTLE at most.
    let mut due: Option<tokio::time::Instant> = None;
    let settle = || Some(tokio::time::Instant::now() + SETTLE);
    let mut resync = tokio::time::interval(RESYNC);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            event = stream.next() => match event {
                Some(Ok(event)) => {
                    if set.apply(event) && due.is_none() {
                        due = settle();
                    }
                }
                Some(Err(err)) => {
                    tracing::warn!(%err, "watching nodes for the overlay");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                None => return,
            },
            _ = resync.tick() => {
                // Forgetting what was applied makes the next pass re-read the kernel.
                applied = None;
                due = due.or_else(settle);
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                due = None;
                let Some(nodes) = set.listed() else { continue };
                let wanted = desired::desired(&node_name, &nodes, VNI);
                if applied.as_ref() == Some(&wanted) {
                    continue;
                }
                for (node, why) in &wanted.ignored {
                    tracing::debug!(%node, %why, "not an overlay peer");
                }
                match overlay.apply(&wanted).await {
                    Ok(changes) => {
                        if !changes.is_empty() {
                            tracing::info!(peers = wanted.peers.len(), changes = ?changes, "overlay updated");
                        }
                        applied = Some(wanted);
                    }
                    Err(err) => {
                        tracing::warn!(%err, "updating the overlay; retrying");
                        due = Some(tokio::time::Instant::now() + Duration::from_secs(2));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn node(name: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        }
    }

    fn names(set: &NodeSet) -> Option<Vec<String>> {
        set.listed().map(|nodes| {
            nodes
                .into_iter()
                .map(|n| n.metadata.name.unwrap())
                .collect()
        })
    }

    #[test]
    fn nothing_is_synced_before_the_first_listing_completes() {
        let mut set = NodeSet::default();
        assert!(!set.apply(watcher::Event::Init));
        assert!(!set.apply(watcher::Event::InitApply(node("a"))));
        assert_eq!(names(&set), None);
        assert!(set.apply(watcher::Event::InitDone));
        assert_eq!(names(&set), Some(vec!["a".to_string()]));
    }

    #[test]
    fn a_relist_replaces_the_set_only_when_done() {
        let mut set = NodeSet::default();
        set.apply(watcher::Event::Init);
        set.apply(watcher::Event::InitApply(node("a")));
        set.apply(watcher::Event::InitApply(node("b")));
        set.apply(watcher::Event::InitDone);
        assert!(set.apply(watcher::Event::Apply(node("c"))));
        assert!(set.apply(watcher::Event::Delete(node("a"))));
        assert_eq!(names(&set), Some(vec!["b".into(), "c".into()]));

        // A relist after a watch error: the old set stands until the new one is complete,
        // then nodes missing from it (deleted while the watch was down) are gone.
        assert!(!set.apply(watcher::Event::Init));
        assert!(!set.apply(watcher::Event::InitApply(node("c"))));
        assert_eq!(names(&set), Some(vec!["b".into(), "c".into()]));
        assert!(set.apply(watcher::Event::InitDone));
        assert_eq!(names(&set), Some(vec!["c".into()]));
    }
}
