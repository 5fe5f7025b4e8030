//! Store membership follows server Nodes, as k3s's etcd members follow theirs: a server that
//! runs an agent marks its Node with its store member id and a finalizer, and when a server's
//! Node is deleted its member is removed from the store before the Node may go. The finalizer
//! is what makes this reliable: a deletion is acted on by whichever server sees the Node
//! terminating, also one that was down or whose watch restarted when the delete came.
//!
//! [`plan`] is the decision (pure); [`follow`] carries it out against the API and the store.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use shoal_store::RaftStore;

/// The annotation a server's Node carries with its store member id.
pub const STORE_MEMBER_ANNOTATION: &str = "shoal.io/store-member-id";
/// Holds a server's Node until its store member is removed.
pub const STORE_MEMBER_FINALIZER: &str = "shoal.io/store-member";

/// How often removals that failed (no quorum, say) are tried again.
const RETRY_EVERY: Duration = Duration::from_secs(5);

/// What a server Node as observed asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do.
    None,
    /// The Node is going: remove member `id` (if it still is one), then the finalizer.
    Remove { id: u64 },
    /// The Node is going and names no member: only the finalizer holds it.
    Release,
}

/// The decision for one Node.
pub fn plan(node: &Node) -> Action {
    let finalized = node
        .metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == STORE_MEMBER_FINALIZER);
    if node.metadata.deletion_timestamp.is_none() || !finalized {
        return Action::None;
    }
    match member_id(node) {
        Some(id) => Action::Remove { id },
        None => Action::Release,
    }
}

fn member_id(node: &Node) -> Option<u64> {
    node.metadata
        .annotations
        .as_ref()?
        .get(STORE_MEMBER_ANNOTATION)?
        .parse()
        .ok()
}

/// The merge patch that marks this server's Node (keeping its other finalizers), or `None`
/// when it already is. Carries the resourceVersion, so a concurrent change is a conflict.
pub fn mark(node: &Node, id: u64) -> Option<serde_json::Value> {
    let finalizers = node.metadata.finalizers.clone().unwrap_or_default();
    let has_finalizer = finalizers.iter().any(|f| f == STORE_MEMBER_FINALIZER);
    if has_finalizer && member_id(node) == Some(id) {
        return None;
    }
    let mut finalizers = finalizers;
    if !has_finalizer {
        finalizers.push(STORE_MEMBER_FINALIZER.to_string());
    }
    Some(serde_json::json!({
        "metadata": {
            "resourceVersion": node.metadata.resource_version,
            "annotations": {STORE_MEMBER_ANNOTATION: id.to_string()},
            "finalizers": finalizers,
        }
    }))
}

/// The merge patch that lets a Node go: its finalizers without ours.
fn release(node: &Node) -> serde_json::Value {
    let finalizers: Vec<&String> = node
        .metadata
        .finalizers
        .iter()
        .flatten()
        .filter(|f| *f != STORE_MEMBER_FINALIZER)
        .collect();
    serde_json::json!({
        "metadata": {
            "resourceVersion": node.metadata.resource_version,
            "finalizers": finalizers,
        }
    })
}

/// Marks `own_node` (when this server runs an agent) and follows every Node, removing the
/// store members of deleted server Nodes. Runs until the process ends.
pub async fn follow(client: kube::Client, store: RaftStore, own_node: Option<String>) {
    let nodes: kube::Api<Node> = kube::Api::all(client);
    if let Some(name) = own_node {
        tokio::spawn(mark_own(nodes.clone(), name, store.node_id()));
    }
    let mut events = watcher(nodes.clone(), watcher::Config::default()).boxed();
    // Terminating server Nodes whose removal has not gone through yet.
    let mut pending: BTreeMap<String, Node> = BTreeMap::new();
    let mut retry = tokio::time::interval(RETRY_EVERY);
    loop {
        tokio::select! {
            event = events.next() => {
                let node = match event {
                    Some(Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node))) => node,
                    Some(Ok(watcher::Event::Delete(node))) => {
                        pending.remove(&node.metadata.name.unwrap_or_default());
                        continue;
                    }
                    Some(_) => continue,
                    None => return,
                };
                let name = node.metadata.name.clone().unwrap_or_default();
                if plan(&node) == Action::None {
                    pending.remove(&name);
                    continue;
                }
                if !settle(&nodes, &store, &node).await {
                    pending.insert(name, node);
                }
            }
            _ = retry.tick(), if !pending.is_empty() => {
                let due: Vec<Node> = pending.values().cloned().collect();
                for node in due {
                    if settle(&nodes, &store, &node).await {
                        pending.remove(&node.metadata.name.clone().unwrap_or_default());
                    }
                }
            }
        }
    }
}

/// Carries out [`plan`] for a terminating Node; whether it is done (a conflict on the
/// finalizer means another server did it, and the next event tells).
async fn settle(nodes: &kube::Api<Node>, store: &RaftStore, node: &Node) -> bool {
    let name = node.metadata.name.clone().unwrap_or_default();
    if let Action::Remove { id } = plan(node) {
        let member = match store.members().await {
            Ok(members) => members.members.iter().any(|m| m.id == id),
            Err(e) => {
                tracing::warn!(node = %name, error = %e, "listing store members");
                return false;
            }
        };
        if member {
            tracing::info!(node = %name, id, "a server's Node is being deleted: removing its store member");
            if let Err(e) = store.remove_member(id).await {
                tracing::warn!(node = %name, id, error = %e, "removing a deleted server's store member");
                return false;
            }
        }
    }
    match nodes
        .patch(&name, &PatchParams::default(), &Patch::Merge(release(node)))
        .await
    {
        Ok(_) => true,
        Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => true,
        Err(e) => {
            tracing::warn!(node = %name, error = %e, "releasing a deleted server's Node");
            false
        }
    }
}

/// Marks this server's Node once it exists (the agent registers it a moment after the server
/// starts), and again after a conflict.
async fn mark_own(nodes: kube::Api<Node>, name: String, id: u64) {
    loop {
        let marked = match nodes.get_opt(&name).await {
            Ok(Some(node)) if node.metadata.deletion_timestamp.is_some() => return,
            Ok(Some(node)) => match mark(&node, id) {
                None => return,
                Some(patch) => nodes
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .is_ok(),
            },
            Ok(None) => false,
            Err(e) => {
                tracing::debug!(error = %e, "reading this server's Node");
                false
            }
        };
        if !marked {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn node(json: serde_json::Value) -> Node {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_live_or_unmarked_node_asks_for_nothing() {
        let live = node(serde_json::json!({"metadata": {"name": "s1",
            "annotations": {STORE_MEMBER_ANNOTATION: "7"},
            "finalizers": [STORE_MEMBER_FINALIZER]}}));
        assert_eq!(plan(&live), Action::None);
        let unmarked = node(serde_json::json!({"metadata": {"name": "a1",
            "deletionTimestamp": "2026-11-22T10:00:00Z", "finalizers": ["other"]}}));
        assert_eq!(plan(&unmarked), Action::None);
    }

    #[test]
    fn a_terminating_server_node_removes_its_member_or_only_lets_go() {
        let going = node(serde_json::json!({"metadata": {"name": "s1",
            "deletionTimestamp": "2026-11-22T10:00:00Z",
            "annotations": {STORE_MEMBER_ANNOTATION: "7"},
            "finalizers": [STORE_MEMBER_FINALIZER]}}));
        assert_eq!(plan(&going), Action::Remove { id: 7 });
        let nameless = node(serde_json::json!({"metadata": {"name": "s1",
            "deletionTimestamp": "2026-11-22T10:00:00Z",
            "annotations": {STORE_MEMBER_ANNOTATION: "not a number"},
            "finalizers": [STORE_MEMBER_FINALIZER]}}));
        assert_eq!(plan(&nameless), Action::Release);
    }

    #[test]
    fn marking_keeps_other_finalizers_and_is_done_once() {
        let fresh = node(serde_json::json!({"metadata": {"name": "s1",
            "resourceVersion": "12", "finalizers": ["other"]}}));
        let patch = mark(&fresh, 7).unwrap();
        assert_eq!(
            patch["metadata"]["finalizers"],
            serde_json::json!(["other", STORE_MEMBER_FINALIZER])
        );
        assert_eq!(
            patch["metadata"]["annotations"][STORE_MEMBER_ANNOTATION],
            "7"
        );
        assert_eq!(patch["metadata"]["resourceVersion"], "12");

        let marked = node(serde_json::json!({"metadata": {"name": "s1",
            "annotations": {STORE_MEMBER_ANNOTATION: "7"},
            "finalizers": ["other", STORE_MEMBER_FINALIZER]}}));
        assert_eq!(mark(&marked, 7), None);
        // A new member id (the server's store was reset) is written again.
        assert!(mark(&marked, 8).is_some());
    }

    #[test]
    fn releasing_drops_only_ours() {
        let going = node(serde_json::json!({"metadata": {"name": "s1",
            "resourceVersion": "20", "finalizers": ["other", STORE_MEMBER_FINALIZER]}}));
        assert_eq!(
            release(&going),
            serde_json::json!({"metadata": {"resourceVersion": "20", "finalizers": ["other"]}})
        );
    }
}
