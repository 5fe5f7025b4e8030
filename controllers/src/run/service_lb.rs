//! The ServiceLB loop: watches Services and Nodes and writes each LoadBalancer Service's
//! `status.loadBalancer.ingress` ([`crate::service_lb`]) with a merge patch of its status.

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use serde_json::json;
use tokio::sync::watch;

use crate::service_lb::{node_addresses, plan};

/// What a watch event changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Changed {
    Service,
    Node,
}

/// Runs the loop until `drain` turns true.
pub async fn run(client: kube::Client, mut drain: watch::Receiver<bool>) {
    let (services, service_writer) = reflector::store();
    let (nodes, node_writer) = reflector::store::<Node>();
    let service_changes = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(service_writer)
    .touched_objects()
    .map(|_| Changed::Service);
    let node_changes = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(node_writer)
        .touched_objects()
        .map(|_| Changed::Node);
    let mut changes = futures::stream::select(service_changes.boxed(), node_changes.boxed());
    // A pass plans every Service against every node's addresses: it runs when a Service
    // changed (or a write failed), or when the ready nodes' addresses did — not on each of
    // a thousand nodes' heartbeats.
    let mut services_changed = true;
    let mut planned_for: Option<Vec<String>> = None;
    loop {
        let first = tokio::select! {
            change = changes.next() => change,
            _ = drain.wait_for(|stop| *stop) => return,
        };
        // The rest of a burst is taken before the pass, as one change.
        for change in super::with_ready(first, &mut changes) {
            match change {
                None => return,
                Some(Changed::Service) => services_changed = true,
                Some(Changed::Node) => {}
            }
        }
        // Not awaited: this loop is what drives both watches, so waiting here for one of
        // them to finish its first list would wait forever.
        match (
            services.wait_until_ready().now_or_never(),
            nodes.wait_until_ready().now_or_never(),
        ) {
            (Some(Ok(())), Some(Ok(()))) => {}
            (Some(Err(_)), _) | (_, Some(Err(_))) => return,
            _ => continue,
        }
        let addresses = node_addresses(nodes.state().iter().map(|n| n.as_ref()));
        if !services_changed && planned_for.as_ref() == Some(&addresses) {
            continue;
        }
        services_changed = false;
        planned_for = Some(addresses.clone());
        for service in services.state() {
            let Some(ingress) = plan(&service, &addresses) else {
                continue;
            };
            let (Some(namespace), Some(name)) = (
                service.metadata.namespace.as_deref(),
                service.metadata.name.as_deref(),
            ) else {
                continue;
            };
            let patch = json!({"status": {"loadBalancer": {"ingress": ingress}}});
            let api: Api<Service> = Api::namespaced(client.clone(), namespace);
            match api
                .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(service = %format!("{namespace}/{name}"), ?addresses, "load balancer ingress set")
                }
                Err(err) => {
                    tracing::warn!(service = %format!("{namespace}/{name}"), %err, "setting load balancer ingress");
                    services_changed = true; // tried again at the next change
                }
            }
        }
    }
}
