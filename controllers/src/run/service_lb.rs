//! The ServiceLB loop: watches Services and Nodes and writes each LoadBalancer Service's
//! `status.loadBalancer.ingress` ([`crate::service_lb`]) with a merge patch of its status.

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use serde_json::json;
use tokio::sync::watch;

use crate::service_lb::{node_addresses, plan};

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
    .map(|_| ());
    let node_changes = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(node_writer)
        .touched_objects()
        .map(|_| ());
    let mut changes = futures::stream::select(service_changes.boxed(), node_changes.boxed());
    loop {
        tokio::select! {
            change = changes.next() => if change.is_none() { return },
            _ = drain.wait_for(|stop| *stop) => return,
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
                    tracing::warn!(service = %format!("{namespace}/{name}"), %err, "setting load balancer ingress")
                }
            }
        }
    }
}
