//! The Endpoints and EndpointSlice loop: one kube-runtime Controller over Services whose
//! sync writes both the Service's Endpoints ([`crate::endpoints`]) and its EndpointSlices
//! ([`crate::endpointslice`]), as kube-controller-manager's two controllers would.
//!
//! A Service is synced when:
//! - it changes (its own watch, kept here: nothing else needs Services);
//! - a pod changes that its selector matches, or that its Endpoints list (the pod's labels
//!   may have just stopped matching: a shared watch hands over the new object only);
//! - its Endpoints (same name) or one of its slices (labeled with its name) changes;
//! - a node appears or changes zone, for the pods on it (slices carry zones; the planner
//!   leaves out pods on nodes it does not know yet, and the Service is retried until it does);
//! - every few seconds, when its Endpoints list a pod the cache no longer has (a safety net:
//!   the shared cache hands deletions over too, since it stopped relying on kube-runtime's).
//!
//! When a Service is deleted, its Endpoints are deleted here (after a live GET confirms the
//! Service is gone), as Kubernetes does, under a per-Service lock shared with the syncs
//! (Kubernetes' single work queue), and looked for again twice shortly after; on every
//! (re)list of Services, Endpoints left without a Service are cleaned up the same way
//! (Kubernetes' `checkLeftoverEndpoints`).
//! Its EndpointSlices are not: they carry an owner reference to the Service, and the
//! garbage collector removes them (Kubernetes leaves them to it too).
//!
//! Slice creates go through expectations: a sync waits until the slice cache shows the
//! slices the previous sync created or deleted, so a stale cache never makes duplicates.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{watcher, Controller};
use kube::{Resource, ResourceExt};
use tokio::sync::{mpsc, watch};

use super::cache::{SharedCache, Subscription};
use super::exec::{self, Written};
use super::expectations::Expectations;
use super::{drained, in_namespace, is_stale, LoopError};
use crate::endpoints::{self, EndpointsPlan};
use crate::endpointslice::{self, CONTROLLER_NAME, MANAGED_BY_LABEL, SERVICE_NAME_LABEL};
use crate::events::{EventType, Recorder};

/// How often Endpoints are checked for pods the cache no longer has.
const MISSING_POD_SCAN: Duration = Duration::from_secs(5);
/// A Service with pods on nodes not yet known is synced again after this.
const MISSING_NODE_RETRY: Duration = Duration::from_secs(5);
/// A sync waiting for the slice cache to show its last writes tries again after this.
const EXPECTATIONS_RETRY: Duration = Duration::from_millis(200);
/// How many times, and how far apart, the Endpoints of a deleted Service are looked for
/// again after their deletion.
const RECHECKS: u8 = 2;
const RECHECK_AFTER: Duration = Duration::from_secs(2);
/// Endpoints kept by leader election (old clients) are not leftovers of a Service.
const LEADER_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";

struct EndpointsContext {
    client: kube::Client,
    services: Store<Service>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    endpoints: Store<Endpoints>,
    slices: Store<EndpointSlice>,
    /// Slice creates and deletes per Service UID, until the slice cache shows them.
    expectations: Expectations,
    endpoint_events: Recorder,
    slice_events: Recorder,
    locks: ServiceLocks,
}

/// One lock per Service, so that a sync and the clean-up after the Service's deletion never
/// overlap: a sync under way when the Service goes could otherwise create its Endpoints
/// again after they were deleted (Kubernetes gets this from one work queue keyed by
/// Service).
#[derive(Default)]
struct ServiceLocks(Mutex<HashMap<ServiceKey, Arc<tokio::sync::Mutex<()>>>>);

/// A Service's namespace and name.
type ServiceKey = (String, String);

impl ServiceLocks {
    fn of(&self, namespace: &str, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            locks
                .entry((namespace.to_string(), name.to_string()))
                .or_default(),
        )
    }

    /// Drops the Service's lock unless someone holds or waits for it.
    fn forget(&self, namespace: &str, name: &str) {
        let mut locks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = (namespace.to_string(), name.to_string());
        if locks.get(&key).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(&key);
        }
    }
}

/// What the Service watch tells the clean-up task.
#[derive(Debug)]
enum Gone {
    /// This Service was deleted; look again `rechecks` more times, [`RECHECK_AFTER`]
    /// apart.
    Service {
        namespace: String,
        name: String,
        rechecks: u8,
    },
    /// Services were (re)listed: look for Endpoints without a Service.
    Relisted,
}

/// Runs the loop until `drain` turns true. `pods` and `nodes` are subscriptions to the
/// shared caches.
pub(super) async fn run(
    client: kube::Client,
    pods: Subscription<Pod>,
    nodes: Subscription<Node>,
    drain: watch::Receiver<bool>,
) {
    if let Err(e) = run_loop(&client, pods, nodes, drain).await {
        tracing::error!(error = %e, "endpoints loop stopped");
    }
}

async fn run_loop(
    client: &kube::Client,
    pods: Subscription<Pod>,
    nodes: Subscription<Node>,
    drain: watch::Receiver<bool>,
) -> Result<(), LoopError> {
    let mut service_cache = SharedCache::<Service>::new();
    let mut endpoints_cache = SharedCache::<Endpoints>::new();
    let mut slice_cache = SharedCache::<EndpointSlice>::new();
    let service_changes = service_cache.subscribe();
    let endpoints_changes = endpoints_cache.subscribe();
    let slice_changes = slice_cache.subscribe();
    let (services, endpoints_store, slices) = (
        service_cache.store(),
        endpoints_cache.store(),
        slice_cache.store(),
    );
    let (gone_tx, gone_rx) = mpsc::unbounded_channel();
    let tasks = [
        drive_services(client, service_cache, gone_tx.clone()),
        endpoints_cache.drive(client),
        slice_cache.drive(client),
    ];
    let context = Arc::new(EndpointsContext {
        client: client.clone(),
        services: services.clone(),
        pods: pods.reader(),
        nodes: nodes.reader(),
        endpoints: endpoints_store,
        slices,
        expectations: Expectations::default(),
        endpoint_events: Recorder::new(client.clone(), "endpoint-controller"),
        slice_events: Recorder::new(client.clone(), "endpointslice-controller"),
        locks: ServiceLocks::default(),
    });
    let clean_up = tokio::spawn(clean_up_after_services(
        Arc::clone(&context),
        gone_rx,
        gone_tx,
    ));

    let for_pods = Arc::clone(&context);
    let for_nodes = Arc::clone(&context);
    let zones_seen: Mutex<HashMap<String, Option<String>>> = Mutex::new(HashMap::new());
    let for_scan = Arc::clone(&context);
    Controller::for_shared_stream(service_changes, services)
        .watches_shared_stream(pods, move |pod| services_for_pod(&for_pods, &pod))
        .watches_shared_stream(endpoints_changes, |e| {
            let namespace = e.namespace()?;
            Some(ObjectRef::<Service>::new(&e.name_any()).within(&namespace))
        })
        .watches_shared_stream(slice_changes, |slice| slice_service(&slice))
        .watches_shared_stream(nodes, move |node| {
            let mut seen = zones_seen.lock().unwrap_or_else(|e| e.into_inner());
            if zone_changed(&mut seen, &node) {
                services_for_node(&for_nodes, &node.name_any())
            } else {
                Vec::new()
            }
        })
        .reconcile_on(missing_pod_scan(for_scan))
        .graceful_shutdown_on(drained(drain))
        .run(reconcile, retry, Arc::clone(&context))
        .for_each(|_| async {})
        .await;
    for task in tasks {
        task.abort();
    }
    clean_up.abort();
    Ok(())
}

/// Keeps the Service cache, telling the clean-up task about deletions and relists.
fn drive_services(
    client: &kube::Client,
    cache: SharedCache<Service>,
    gone: mpsc::UnboundedSender<Gone>,
) -> tokio::task::JoinHandle<()> {
    cache.drive_with(client, move |event| {
        let message = match event {
            watcher::Event::Delete(service) => Gone::Service {
                namespace: service.namespace().unwrap_or_default(),
                name: service.name_any(),
                rechecks: RECHECKS,
            },
            watcher::Event::InitDone => Gone::Relisted,
            _ => return,
        };
        // Unbounded: one message per deleted Service, and the watch must not wait.
        let _ = gone.send(message);
    })
}

/// Deletes the Endpoints of deleted Services; retries failures after a delay.
async fn clean_up_after_services(
    context: Arc<EndpointsContext>,
    mut gone: mpsc::UnboundedReceiver<Gone>,
    again: mpsc::UnboundedSender<Gone>,
) {
    while let Some(message) = gone.recv().await {
        let candidates = match message {
            Gone::Service {
                namespace,
                name,
                rechecks,
            } => vec![(namespace, name, rechecks)],
            Gone::Relisted => {
                if context.endpoints.wait_until_ready().await.is_err() {
                    return;
                }
                let endpoints: Vec<Arc<Endpoints>> = context.endpoints.state();
                leftover_endpoints(endpoints.iter().map(|e| e.as_ref()), |ns, name| {
                    context
                        .services
                        .get(&ObjectRef::new(name).within(ns))
                        .is_some()
                })
                .into_iter()
                .map(|(ns, name)| (ns, name, 0))
                .collect()
            }
        };
        for (namespace, name, rechecks) in candidates {
            let lock = context.locks.of(&namespace, &name);
            let result = {
                let _held = lock.lock().await;
                delete_endpoints_if_service_gone(&context, &namespace, &name).await
            };
            drop(lock);
            context.locks.forget(&namespace, &name);
            // A failure is retried; a success is checked again shortly, in case a write
            // that was already on its way (or a lagging cache) brought the Endpoints back.
            let rechecks = match result {
                Err(e) => {
                    tracing::warn!(error = %e, %namespace, %name, "deleting the Endpoints of a deleted Service");
                    rechecks.max(1)
                }
                Ok(()) => rechecks,
            };
            if rechecks > 0 {
                let again = again.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(RECHECK_AFTER).await;
                    let _ = again.send(Gone::Service {
                        namespace,
                        name,
                        rechecks: rechecks - 1,
                    });
                });
            }
        }
    }
}

async fn delete_endpoints_if_service_gone(
    context: &EndpointsContext,
    namespace: &str,
    name: &str,
) -> Result<(), LoopError> {
    let key = ObjectRef::new(name).within(namespace);
    if context.services.get(&key).is_some() {
        return Ok(()); // recreated meanwhile: the Controller syncs it
    }
    // The cache may lag a Service just created again, and the Endpoints cache may not yet
    // show Endpoints written just before the deletion: ask the API, delete by name.
    let services: Api<Service> = Api::namespaced(context.client.clone(), namespace);
    let service_exists = services.get_opt(name).await?.is_some();
    if let EndpointsPlan::Delete { namespace, name } =
        endpoints::plan_service_gone(namespace, name, service_exists)
    {
        let api: Api<Endpoints> = Api::namespaced(context.client.clone(), &namespace);
        exec::delete(&api, &name, None).await?;
    }
    Ok(())
}

async fn reconcile(
    service: Arc<Service>,
    context: Arc<EndpointsContext>,
) -> Result<Action, LoopError> {
    // The Controller waits for the Service cache only. Planning before the others are
    // listed would empty the Endpoints (no pods yet) or duplicate the slices (none seen).
    for ready in [
        context.pods.wait_until_ready().await,
        context.nodes.wait_until_ready().await,
        context.endpoints.wait_until_ready().await,
        context.slices.wait_until_ready().await,
    ] {
        ready.map_err(|e| LoopError::Plan(e.to_string()))?;
    }
    let namespace = service.namespace().unwrap_or_default();
    let lock = context.locks.of(&namespace, &service.name_any());
    let _held = lock.lock().await;
    // Deleted while this sync waited: writing now would bring its Endpoints back.
    let current = context.services.get(&ObjectRef::from_obj(service.as_ref()));
    if current.is_none_or(|s| s.metadata.uid != service.metadata.uid) {
        return Ok(Action::await_change());
    }
    let pods = in_namespace(&context.pods, &namespace);
    let endpoints_written = sync_endpoints(&context, &service, &namespace, &pods).await;
    let slices_written = sync_slices(&context, &service, &namespace, &pods).await;
    let regarding = service.object_ref(&());
    if let Err(e) = &endpoints_written {
        context.endpoint_events.record(
            regarding.clone(),
            EventType::Warning,
            "FailedToUpdateEndpoint",
            &format!(
                "Failed to update endpoint {namespace}/{}: {e}",
                service.name_any()
            ),
        );
    }
    if let Err(e) = &slices_written {
        context.slice_events.record(
            regarding,
            EventType::Warning,
            "FailedToUpdateEndpointSlices",
            &format!(
                "Error updating Endpoint Slices for Service {namespace}/{}: {e}",
                service.name_any()
            ),
        );
    }
    let (endpoints_next, slices_next) = (endpoints_written?, slices_written?);
    Ok(match (endpoints_next, slices_next) {
        (Some(a), Some(b)) => Action::requeue(a.min(b)),
        (Some(a), None) | (None, Some(a)) => Action::requeue(a),
        (None, None) => Action::await_change(),
    })
}

/// Writes the Service's Endpoints; `Some(delay)` asks for another sync after it.
async fn sync_endpoints(
    context: &EndpointsContext,
    service: &Service,
    namespace: &str,
    pods: &[Pod],
) -> Result<Option<Duration>, LoopError> {
    let current = context
        .endpoints
        .get(&ObjectRef::new(&service.name_any()).within(namespace));
    let api: Api<Endpoints> = Api::namespaced(context.client.clone(), namespace);
    let written = match endpoints::plan(service, pods, current.as_deref()) {
        EndpointsPlan::NotManaged | EndpointsPlan::Unchanged => Written::Done,
        EndpointsPlan::Create(object) => exec::create(&api, &object).await?,
        EndpointsPlan::Update(object) => {
            let name = object.metadata.name.clone().unwrap_or_default();
            // A PUT over the observed resourceVersion: a concurrent change conflicts.
            match api.replace(&name, &PostParams::default(), &object).await {
                Ok(_) => Written::Done,
                Err(e) if is_stale(&e) => Written::Stale,
                Err(e) => return Err(e.into()),
            }
        }
        // Only planned for a Service that is gone; a Service being synced exists.
        EndpointsPlan::Delete { .. } => Written::Done,
    };
    Ok((written == Written::Stale).then_some(EXPECTATIONS_RETRY))
}

/// Writes the Service's EndpointSlices (creates, updates, deletes, stopping at the first
/// write that fails or finds the cache stale); `Some(delay)` asks for another sync.
async fn sync_slices(
    context: &EndpointsContext,
    service: &Service,
    namespace: &str,
    pods: &[Pod],
) -> Result<Option<Duration>, LoopError> {
    let owner = service.uid().unwrap_or_default();
    let slices = in_namespace(&context.slices, namespace);
    let caught_up = context.expectations.satisfied(
        &owner,
        |key| {
            let (ns, name) = key.split_once('/').unwrap_or(("", key));
            context
                .slices
                .get(&ObjectRef::new(name).within(ns))
                .is_some()
        },
        |uid| {
            slices
                .iter()
                .any(|s| s.metadata.uid.as_deref() == Some(uid))
        },
    );
    if !caught_up {
        return Ok(Some(EXPECTATIONS_RETRY));
    }
    let nodes: Vec<Node> = context
        .nodes
        .state()
        .iter()
        .map(|n| (**n).clone())
        .collect();
    let plan = endpointslice::plan(service, pods, &slices, &endpointslice::node_zones(&nodes));
    let api: Api<EndpointSlice> = Api::namespaced(context.client.clone(), namespace);
    for slice in &plan.create {
        match api.create(&PostParams::default(), slice).await {
            Ok(created) => context
                .expectations
                .created(&owner, format!("{namespace}/{}", created.name_any())),
            Err(e) if is_stale(&e) => return Ok(Some(EXPECTATIONS_RETRY)),
            Err(e) => return Err(e.into()),
        }
    }
    for slice in &plan.update {
        let name = slice.metadata.name.clone().unwrap_or_default();
        match api.replace(&name, &PostParams::default(), slice).await {
            Ok(_) => {}
            Err(e) if is_stale(&e) => return Ok(Some(EXPECTATIONS_RETRY)),
            Err(e) => return Err(e.into()),
        }
    }
    for doomed in &plan.delete {
        match exec::delete(&api, &doomed.name, doomed.uid.as_deref()).await? {
            Written::Done => {
                if let Some(uid) = &doomed.uid {
                    context.expectations.deleted(&owner, uid.clone());
                }
            }
            Written::Stale => return Ok(Some(EXPECTATIONS_RETRY)),
        }
    }
    if !plan.pods_on_missing_nodes.is_empty() {
        tracing::debug!(
            service = %service.name_any(),
            pods = ?plan.pods_on_missing_nodes,
            "pods on unknown nodes left out of the slices"
        );
        return Ok(Some(MISSING_NODE_RETRY));
    }
    Ok(None)
}

fn retry(_service: Arc<Service>, error: &LoopError, _context: Arc<EndpointsContext>) -> Action {
    tracing::debug!(%error, "endpoints sync failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

/// The Services to sync for a pod change: those selecting it now and those whose
/// Endpoints list it (it may have just stopped matching).
fn services_for_pod(context: &EndpointsContext, pod: &Pod) -> Vec<ObjectRef<Service>> {
    let Some(namespace) = pod.namespace() else {
        return Vec::new();
    };
    let services = context
        .services
        .state_filter(|s| s.metadata.namespace.as_deref() == Some(namespace.as_str()));
    let endpoints = context
        .endpoints
        .state_filter(|e| e.metadata.namespace.as_deref() == Some(namespace.as_str()));
    let mut names: BTreeSet<String> =
        services_selecting(services.iter().map(|s| s.as_ref()), pod).collect();
    names.extend(endpoints_listing(endpoints.iter().map(|e| e.as_ref()), pod));
    names
        .into_iter()
        .map(|name| ObjectRef::new(&name).within(&namespace))
        .collect()
}

/// The Services whose pods run on `node`.
fn services_for_node(context: &EndpointsContext, node: &str) -> Vec<ObjectRef<Service>> {
    let pods = context
        .pods
        .state_filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node));
    let mut refs: BTreeSet<(String, String)> = BTreeSet::new();
    for pod in &pods {
        let namespace = pod.namespace().unwrap_or_default();
        let services = context
            .services
            .state_filter(|s| s.metadata.namespace.as_deref() == Some(namespace.as_str()));
        for name in services_selecting(services.iter().map(|s| s.as_ref()), pod) {
            refs.insert((namespace.clone(), name));
        }
    }
    refs.into_iter()
        .map(|(ns, name)| ObjectRef::new(&name).within(&ns))
        .collect()
}

/// Names of the Services (of the pod's namespace) whose selector matches the pod.
fn services_selecting<'a>(
    services: impl Iterator<Item = &'a Service> + 'a,
    pod: &'a Pod,
) -> impl Iterator<Item = String> + 'a {
    services
        .filter(move |s| s.metadata.namespace == pod.metadata.namespace)
        .filter(move |s| {
            endpoints::service_selector(s).is_some_and(|sel| endpoints::selector_matches(sel, pod))
        })
        .filter_map(|s| s.metadata.name.clone())
}

/// Names of the Endpoints (of the pod's namespace) that list the pod, ready or not.
fn endpoints_listing<'a>(
    endpoints: impl Iterator<Item = &'a Endpoints> + 'a,
    pod: &'a Pod,
) -> impl Iterator<Item = String> + 'a {
    endpoints
        .filter(move |e| e.metadata.namespace == pod.metadata.namespace)
        .filter(move |e| {
            e.subsets.iter().flatten().any(|subset| {
                subset
                    .addresses
                    .iter()
                    .flatten()
                    .chain(subset.not_ready_addresses.iter().flatten())
                    .filter_map(|a| a.target_ref.as_ref())
                    .any(|r| {
                        r.kind.as_deref() == Some("Pod")
                            && r.name == pod.metadata.name
                            && r.namespace == pod.metadata.namespace
                    })
            })
        })
        .filter_map(|e| e.metadata.name.clone())
}

/// The Service a slice belongs to, if this controller manages it.
fn slice_service(slice: &EndpointSlice) -> Option<ObjectRef<Service>> {
    let labels = slice.metadata.labels.as_ref()?;
    if labels.get(MANAGED_BY_LABEL).map(String::as_str) != Some(CONTROLLER_NAME) {
        return None;
    }
    let service = labels.get(SERVICE_NAME_LABEL)?;
    Some(ObjectRef::new(service).within(slice.metadata.namespace.as_deref()?))
}

/// Records the node's zone; true when the node is new or its zone changed.
fn zone_changed(seen: &mut HashMap<String, Option<String>>, node: &Node) -> bool {
    let Some(name) = node.metadata.name.clone() else {
        return false;
    };
    let zone = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(endpointslice::ZONE_LABEL))
        .cloned();
    seen.insert(name, zone.clone()) != Some(zone)
}

/// `(namespace, name)` of Endpoints that list a pod for which `exists` is false (its
/// reference's namespace, name and uid).
fn endpoints_with_missing_pods<'a>(
    endpoints: impl Iterator<Item = &'a Endpoints>,
    exists: impl Fn(&str, &str, Option<&str>) -> bool,
) -> Vec<(String, String)> {
    endpoints
        .filter(|e| {
            e.subsets.iter().flatten().any(|subset| {
                subset
                    .addresses
                    .iter()
                    .flatten()
                    .chain(subset.not_ready_addresses.iter().flatten())
                    .filter_map(|a| a.target_ref.as_ref())
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .any(|r| {
                        !exists(
                            r.namespace.as_deref().unwrap_or_default(),
                            r.name.as_deref().unwrap_or_default(),
                            r.uid.as_deref(),
                        )
                    })
            })
        })
        .filter_map(|e| Some((e.metadata.namespace.clone()?, e.metadata.name.clone()?)))
        .collect()
}

/// Every [`MISSING_POD_SCAN`], the Services whose Endpoints list pods that are gone.
fn missing_pod_scan(
    context: Arc<EndpointsContext>,
) -> impl futures::Stream<Item = ObjectRef<Service>> + Send {
    futures::stream::unfold(context, |context| async move {
        tokio::time::sleep(MISSING_POD_SCAN).await;
        let endpoints = context.endpoints.state();
        let stale =
            endpoints_with_missing_pods(endpoints.iter().map(|e| e.as_ref()), |ns, name, uid| {
                context
                    .pods
                    .get(&ObjectRef::new(name).within(ns))
                    .is_some_and(|p| uid.is_none() || p.metadata.uid.as_deref() == uid)
            });
        let refs: Vec<ObjectRef<Service>> = stale
            .into_iter()
            .map(|(ns, name)| ObjectRef::new(&name).within(&ns))
            .collect();
        Some((futures::stream::iter(refs), context))
    })
    .flatten()
}

/// `(namespace, name)` of Endpoints whose Service does not exist, leader-election
/// records aside.
fn leftover_endpoints<'a>(
    endpoints: impl Iterator<Item = &'a Endpoints>,
    service_exists: impl Fn(&str, &str) -> bool,
) -> Vec<(String, String)> {
    endpoints
        .filter(|e| {
            !e.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(LEADER_ANNOTATION))
        })
        .filter_map(|e| Some((e.metadata.namespace.clone()?, e.metadata.name.clone()?)))
        .filter(|(ns, name)| !service_exists(ns, name))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::{node, pod, service};

    fn endpoints_of(json: serde_json::Value) -> Endpoints {
        serde_json::from_value(json).unwrap()
    }

    fn web_pod(name: &str, labels: serde_json::Value) -> Pod {
        pod(serde_json::json!({
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"), "labels": labels}
        }))
    }

    fn listing(name: &str, pods: &[(&str, &str)]) -> Endpoints {
        let addresses: Vec<serde_json::Value> = pods
            .iter()
            .enumerate()
            .map(|(i, (pod, uid))| {
                serde_json::json!({"ip": format!("10.0.0.{i}"),
                    "targetRef": {"kind": "Pod", "namespace": "shop", "name": pod, "uid": uid}})
            })
            .collect();
        endpoints_of(serde_json::json!({
            "metadata": {"name": name, "namespace": "shop"},
            "subsets": [{"notReadyAddresses": addresses, "ports": [{"port": 80}]}]
        }))
    }

    #[test]
    fn a_pod_maps_to_the_services_selecting_it_in_its_namespace() {
        let services = [
            service(
                serde_json::json!({"metadata": {"name": "web", "namespace": "shop"},
                "spec": {"selector": {"app": "web"}}}),
            ),
            service(
                serde_json::json!({"metadata": {"name": "all-web", "namespace": "shop"},
                "spec": {"selector": {"app": "web", "tier": "front"}}}),
            ),
            service(
                serde_json::json!({"metadata": {"name": "db", "namespace": "shop"},
                "spec": {"selector": {"app": "db"}}}),
            ),
            // Same selector, other namespace.
            service(
                serde_json::json!({"metadata": {"name": "web", "namespace": "other"},
                "spec": {"selector": {"app": "web"}}}),
            ),
            // No selector (or an empty one): user-managed Endpoints.
            service(
                serde_json::json!({"metadata": {"name": "manual", "namespace": "shop"},
                "spec": {"selector": {}}}),
            ),
        ];
        let pod = web_pod("w1", serde_json::json!({"app": "web", "tier": "front"}));
        let names: Vec<String> = services_selecting(services.iter(), &pod).collect();
        assert_eq!(names, ["web", "all-web"]);
        let back = web_pod("w2", serde_json::json!({"app": "web"}));
        let names: Vec<String> = services_selecting(services.iter(), &back).collect();
        assert_eq!(names, ["web"]);
    }

    #[test]
    fn a_relabeled_pod_still_maps_to_the_endpoints_listing_it() {
        let endpoints = [
            listing("web", &[("w1", "uid-w1"), ("w2", "uid-w2")]),
            listing("db", &[("d1", "uid-d1")]),
        ];
        let relabeled = web_pod("w1", serde_json::json!({"app": "other"}));
        let names: Vec<String> = endpoints_listing(endpoints.iter(), &relabeled).collect();
        assert_eq!(names, ["web"]);
        let stranger = web_pod("x", serde_json::json!({}));
        assert_eq!(endpoints_listing(endpoints.iter(), &stranger).count(), 0);
    }

    #[test]
    fn endpoints_listing_pods_that_are_gone_or_replaced_are_found() {
        let endpoints = [
            listing("web", &[("w1", "uid-w1"), ("w2", "uid-w2")]),
            listing("db", &[("d1", "uid-d1")]),
        ];
        let present = [("w1", "uid-w1"), ("w2", "uid-w2"), ("d1", "uid-d1")];
        let exists = |present: &[(&str, &str)]| {
            let present: Vec<(String, String)> = present
                .iter()
                .map(|(n, u)| (n.to_string(), u.to_string()))
                .collect();
            move |ns: &str, name: &str, uid: Option<&str>| {
                ns == "shop"
                    && present
                        .iter()
                        .any(|(n, u)| n == name && uid.is_none_or(|uid| uid == u))
            }
        };
        assert!(endpoints_with_missing_pods(endpoints.iter(), exists(&present)).is_empty());
        // w2 force-deleted; d1 deleted and recreated under the same name.
        let now = [("w1", "uid-w1"), ("d1", "uid-d1-new")];
        assert_eq!(
            endpoints_with_missing_pods(endpoints.iter(), exists(&now)),
            [
                ("shop".to_string(), "web".to_string()),
                ("shop".to_string(), "db".to_string())
            ]
        );
    }

    #[test]
    fn slices_map_to_their_service_only_when_managed_here() {
        let slice = |labels: serde_json::Value| -> EndpointSlice {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "web-abc", "namespace": "shop", "labels": labels},
                "addressType": "IPv4", "endpoints": []
            }))
            .unwrap()
        };
        let ours = slice(
            serde_json::json!({SERVICE_NAME_LABEL: "web", MANAGED_BY_LABEL: CONTROLLER_NAME}),
        );
        assert_eq!(
            slice_service(&ours),
            Some(ObjectRef::new("web").within("shop"))
        );
        let mirrored = slice(serde_json::json!({SERVICE_NAME_LABEL: "web",
            MANAGED_BY_LABEL: "endpointslicemirroring-controller.k8s.io"}));
        assert_eq!(slice_service(&mirrored), None);
        assert_eq!(slice_service(&slice(serde_json::json!({}))), None);
    }

    #[test]
    fn nodes_trigger_only_when_new_or_moved_to_another_zone() {
        let mut seen = HashMap::new();
        let in_zone = |zone: Option<&str>| {
            let labels = match zone {
                Some(z) => serde_json::json!({"topology.kubernetes.io/zone": z}),
                None => serde_json::json!({}),
            };
            node(serde_json::json!({"metadata": {"name": "n1", "labels": labels}}))
        };
        assert!(zone_changed(&mut seen, &in_zone(Some("a"))), "new node");
        assert!(!zone_changed(&mut seen, &in_zone(Some("a"))), "a heartbeat");
        assert!(zone_changed(&mut seen, &in_zone(Some("b"))));
        assert!(zone_changed(&mut seen, &in_zone(None)));
        assert!(!zone_changed(&mut seen, &in_zone(None)));
    }

    #[test]
    fn leftover_endpoints_are_those_without_a_service() {
        let mut leader = listing("scheduler", &[]);
        leader.metadata.annotations =
            Some([(LEADER_ANNOTATION.to_string(), "{}".to_string())].into());
        let endpoints = [listing("web", &[]), listing("gone", &[]), leader];
        let left = leftover_endpoints(endpoints.iter(), |ns, name| ns == "shop" && name == "web");
        assert_eq!(left, [("shop".to_string(), "gone".to_string())]);
    }
}
