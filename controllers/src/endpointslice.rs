//! The EndpointSlice controller's decisions (kube-controller-manager's
//! `pkg/controller/endpointslice` and its reconciler in `k8s.io/endpointslice`): the
//! EndpointSlices of a Service with a selector, one group of slices per address type
//! (IPv4/IPv6, from the Service's IP families) and per distinct set of resolved ports, at
//! most [`MAX_ENDPOINTS_PER_SLICE`] endpoints each.
//!
//! [`plan`] follows `Reconciler.reconcile` so that a change touches as few slices as
//! possible: endpoints that did not change stay where they are; changed or removed ones are
//! rewritten in place; a slice left empty is deleted; new endpoints fill the slices being
//! updated anyway (fullest first), then the unchanged slice they fit best, then new slices;
//! a slice about to be deleted is reused (updated) instead of creating one. A Service with
//! no endpoints keeps one empty placeholder slice per address type.
//!
//! Terminating pods are included with `ready: false` (unless the Service publishes
//! not-ready addresses), `serving` per pod readiness, `terminating: true`, as Kubernetes
//! does since 1.26.
//!
//! The loop around it watches Services, Pods, Nodes (for zones; see [`node_zones`]) and
//! EndpointSlices, and syncs a Service when it, a pod it selects, or one of its slices
//! changes. It passes the slices of the Service's namespace; only those labeled with the
//! Service's name and managed by [`CONTROLLER_NAME`] are considered (others, such as the
//! mirroring controller's or a user's, are never touched). Slices carry an owner reference
//! to the Service, so the garbage collector removes them when the Service goes. Like the
//! ReplicaSet loop, this loop must not act on a slice cache that has not yet seen its own
//! last writes (Kubernetes' `EndpointSliceTracker`), or it would create duplicates.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::endpoints::{
    find_port, is_ipv6, is_service_ip_set, pod_ips, pod_node_name, pod_reference,
    publish_not_ready, recorded_trigger_time, selected_pods, service_ports, service_selector,
    set_trigger_time, should_pod_be_in_endpoints, should_set_hostname, trigger_time,
    HEADLESS_LABEL,
};
use crate::owner;
use crate::pod_state;

/// Label naming the Service a slice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value for [`MANAGED_BY_LABEL`].
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
/// Kubernetes' default `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// The node label an endpoint's zone comes from.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

pub const ADDRESS_TYPE_IPV4: &str = "IPv4";
pub const ADDRESS_TYPE_IPV6: &str = "IPv6";

/// Every node the loop knows, by name, with its zone label (`None` when unlabeled). A pod
/// on a node missing here is left out (unless the Service publishes not-ready addresses)
/// and reported in [`EndpointSlicePlan::pods_on_missing_nodes`].
pub type NodeZones = BTreeMap<String, Option<String>>;

/// Builds [`NodeZones`] from the nodes.
pub fn node_zones(nodes: &[Node]) -> NodeZones {
    nodes
        .iter()
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            let zone = n
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(ZONE_LABEL))
                .filter(|z| !z.is_empty())
                .cloned();
            Some((name, zone))
        })
        .collect()
}

/// A slice to delete; the loop deletes with a `uid` precondition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceToDelete {
    pub name: String,
    pub uid: Option<String>,
}

/// What one EndpointSlice sync writes, in this order: creates, updates, deletes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EndpointSlicePlan {
    /// New slices (`generateName: <service>-`).
    pub create: Vec<EndpointSlice>,
    /// Whole slices to PUT. Each carries the `resourceVersion` observed (a reused slice
    /// the one it replaces), so a concurrent change conflicts and the loop resyncs.
    pub update: Vec<EndpointSlice>,
    pub delete: Vec<SliceToDelete>,
    /// Pods skipped because their node is unknown. Kubernetes returns an error for these
    /// so the Service is retried with backoff; the loop should do the same.
    pub pods_on_missing_nodes: Vec<String>,
}

impl EndpointSlicePlan {
    /// True when the plan writes nothing.
    pub fn is_noop(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

/// `getAddressTypesForService`: the Service's IP families; without them (an API server
/// that predates them) the cluster IP's family, or both for a headless Service.
fn address_types(service: &Service) -> BTreeSet<&'static str> {
    let mut types = BTreeSet::new();
    for family in service
        .spec
        .as_ref()
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
    {
        match family.as_str() {
            "IPv4" => types.insert(ADDRESS_TYPE_IPV4),
            "IPv6" => types.insert(ADDRESS_TYPE_IPV6),
            _ => false,
        };
    }
    if !types.is_empty() {
        return types;
    }
    if is_service_ip_set(service) {
        let ip = service
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.as_deref())
            .unwrap_or("");
        types.insert(if is_ipv6(ip) {
            ADDRESS_TYPE_IPV6
        } else {
            ADDRESS_TYPE_IPV4
        });
        return types;
    }
    types.insert(ADDRESS_TYPE_IPV4);
    types.insert(ADDRESS_TYPE_IPV6);
    types
}

/// A port set's identity: its ports, sorted (Kubernetes sorts them by hash).
type PortKey = Vec<(String, i32, String, Option<String>)>;

fn port_key(ports: &[EndpointPort]) -> PortKey {
    let mut key: PortKey = ports
        .iter()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.port.unwrap_or_default(),
                p.protocol.clone().unwrap_or_default(),
                p.app_protocol.clone(),
            )
        })
        .collect();
    key.sort();
    key
}

fn sorted_ports(mut ports: Vec<EndpointPort>) -> Vec<EndpointPort> {
    ports.sort_by_key(|p| port_key(std::slice::from_ref(p)));
    ports
}

/// `getEndpointPorts`: the Service ports the pod resolves (a headless Service may have
/// none).
fn endpoint_ports(service: &Service, pod: &Pod) -> Vec<EndpointPort> {
    let ports = service_ports(service)
        .iter()
        .filter_map(|sp| {
            let number = find_port(pod, sp)?;
            Some(EndpointPort {
                // Kubernetes always sets name and protocol, empty name included.
                name: Some(sp.name.clone().unwrap_or_default()),
                port: Some(number),
                protocol: Some(
                    sp.protocol
                        .clone()
                        .filter(|p| !p.is_empty())
                        .unwrap_or_else(|| "TCP".to_string()),
                ),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect();
    sorted_ports(ports)
}

/// An endpoint's identity in the reconciler (`hashEndpoint`): its sorted addresses, its
/// hostname and the target's namespace and name.
type EndpointKey = (Vec<String>, String, String, String);

fn endpoint_key(endpoint: &Endpoint) -> EndpointKey {
    let mut addresses = endpoint.addresses.clone();
    addresses.sort();
    let reference = endpoint.target_ref.as_ref();
    (
        addresses,
        endpoint.hostname.clone().unwrap_or_default(),
        reference
            .and_then(|r| r.namespace.clone())
            .unwrap_or_default(),
        reference.and_then(|r| r.name.clone()).unwrap_or_default(),
    )
}

/// `EndpointsEqualBeyondHash`: what the identity leaves out.
fn endpoint_equal_beyond_key(a: &Endpoint, b: &Endpoint) -> bool {
    let conditions = |e: &Endpoint| {
        let c = e.conditions.clone().unwrap_or_default();
        (c.ready, c.serving, c.terminating)
    };
    a.node_name == b.node_name
        && a.zone == b.zone
        && conditions(a) == conditions(b)
        && a.hints == b.hints
        && a.target_ref == b.target_ref
}

/// `podToEndpoint` for one address type (`None` when the pod has no IP of that type).
fn pod_to_endpoint(
    pod: &Pod,
    zone: Option<&String>,
    service: &Service,
    address_type: &str,
) -> Option<Endpoint> {
    let want_v6 = address_type == ADDRESS_TYPE_IPV6;
    let addresses: Vec<String> = pod_ips(pod)
        .into_iter()
        .filter(|ip| is_ipv6(ip) == want_v6)
        .map(str::to_string)
        .collect();
    if addresses.is_empty() {
        return None;
    }
    let serving = pod_state::is_ready(pod);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    // For compatibility, ready is never true for a terminating pod unless the Service
    // publishes not-ready addresses.
    let ready = publish_not_ready(service) || (serving && !terminating);
    Some(Endpoint {
        addresses,
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        deprecated_topology: None,
        hints: None,
        hostname: should_set_hostname(pod, service)
            .then(|| pod.spec.as_ref().and_then(|s| s.hostname.clone()))
            .flatten(),
        node_name: pod_node_name(pod),
        target_ref: Some(pod_reference(pod)),
        zone: zone.cloned(),
    })
}

fn is_reserved_label(key: &str) -> bool {
    key == SERVICE_NAME_LABEL || key == MANAGED_BY_LABEL || key == HEADLESS_LABEL
}

/// `setEndpointSliceLabels`: the Service's labels (reserved keys aside), the headless label
/// when it has no cluster IP, the service-name and managed-by labels; and whether the
/// slice's non-reserved labels differed from the Service's.
fn slice_labels(
    slice_labels: Option<&BTreeMap<String, String>>,
    service: &Service,
) -> (BTreeMap<String, String>, bool) {
    let not_reserved = |labels: Option<&BTreeMap<String, String>>| -> BTreeMap<String, String> {
        labels
            .into_iter()
            .flatten()
            .filter(|(k, _)| !is_reserved_label(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let mut labels = not_reserved(service.metadata.labels.as_ref());
    let changed = not_reserved(slice_labels) != labels;
    if !is_service_ip_set(service) {
        labels.insert(HEADLESS_LABEL.to_string(), String::new());
    }
    labels.insert(
        SERVICE_NAME_LABEL.to_string(),
        service.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(MANAGED_BY_LABEL.to_string(), CONTROLLER_NAME.to_string());
    (labels, changed)
}

/// `getEndpointSlicePrefix`: `<service>-`, or the bare name when that would be too long.
fn generate_name(service: &Service) -> String {
    const MAX_NAME_LENGTH: usize = 253;
    let name = service.metadata.name.clone().unwrap_or_default();
    if name.len() < MAX_NAME_LENGTH {
        format!("{name}-")
    } else {
        name
    }
}

/// `newEndpointSlice`: an empty slice for the Service with these ports.
fn new_slice(service: &Service, ports: &[EndpointPort], address_type: &str) -> EndpointSlice {
    let (labels, _) = slice_labels(None, service);
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(generate_name(service)),
            namespace: service.metadata.namespace.clone(),
            labels: Some(labels),
            owner_references: Some(vec![owner::controller_ref(
                "v1",
                "Service",
                service.metadata.name.as_deref().unwrap_or_default(),
                service.metadata.uid.as_deref().unwrap_or_default(),
            )]),
            ..ObjectMeta::default()
        },
        address_type: address_type.to_string(),
        endpoints: Vec::new(),
        ports: Some(ports.to_vec()),
    }
}

/// The slice names a Service and is managed by this controller.
pub fn is_managed_slice_of(slice: &EndpointSlice, service: &Service) -> bool {
    let labels = slice.metadata.labels.as_ref();
    slice.metadata.namespace == service.metadata.namespace
        && labels.and_then(|l| l.get(SERVICE_NAME_LABEL)) == service.metadata.name.as_ref()
        && labels
            .and_then(|l| l.get(MANAGED_BY_LABEL))
            .map(String::as_str)
            == Some(CONTROLLER_NAME)
}

/// `ownedBy`: an owner reference to this Service's UID.
fn owned_by(slice: &EndpointSlice, service: &Service) -> bool {
    let Some(uid) = service.metadata.uid.as_deref() else {
        return false;
    };
    slice
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.kind == "Service" && r.uid == uid)
}

fn slice_name(slice: &EndpointSlice) -> String {
    slice.metadata.name.clone().unwrap_or_default()
}

fn to_delete(slice: &EndpointSlice) -> SliceToDelete {
    SliceToDelete {
        name: slice_name(slice),
        uid: slice.metadata.uid.clone(),
    }
}

/// The desired endpoints of one port set, by identity (popped in key order, where
/// Kubernetes pops in map order).
type EndpointSet = BTreeMap<EndpointKey, Endpoint>;

struct PortMappingResult {
    create: Vec<EndpointSlice>,
    update: Vec<EndpointSlice>,
    delete: Vec<EndpointSlice>,
}

/// `reconcileByPortMapping`: the changes for the slices of one port set.
fn reconcile_port_mapping(
    service: &Service,
    existing: &[&EndpointSlice],
    mut desired: EndpointSet,
    ports: &[EndpointPort],
    address_type: &str,
    max: usize,
) -> PortMappingResult {
    let mut by_name: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    let mut unchanged: BTreeSet<String> = BTreeSet::new();
    let mut to_update: BTreeSet<String> = BTreeSet::new();
    let mut to_delete: BTreeSet<String> = BTreeSet::new();

    // 1. Keep the endpoints still desired where they are; note changed and removed ones.
    for slice in existing {
        let name = slice_name(slice);
        let mut kept = Vec::new();
        let mut endpoint_updated = false;
        for endpoint in &slice.endpoints {
            if let Some(want) = desired.remove(&endpoint_key(endpoint)) {
                if !endpoint_equal_beyond_key(&want, endpoint) {
                    endpoint_updated = true;
                }
                kept.push(want);
            }
        }
        let (labels, labels_changed) = slice_labels(slice.metadata.labels.as_ref(), service);
        let mut slice = (*slice).clone();
        if endpoint_updated || kept.len() != slice.endpoints.len() {
            if kept.is_empty() {
                to_delete.insert(name.clone());
            } else {
                slice.endpoints = kept;
                slice.metadata.labels = Some(labels);
                to_update.insert(name.clone());
            }
        } else if labels_changed {
            slice.metadata.labels = Some(labels);
            to_update.insert(name.clone());
        } else {
            unchanged.insert(name.clone());
        }
        by_name.insert(name, slice);
    }

    // 2. Fill the slices being written anyway, fullest first.
    if !desired.is_empty() && !to_update.is_empty() {
        let mut names: Vec<&String> = to_update.iter().collect();
        names.sort_by_key(|n| std::cmp::Reverse(by_name.get(*n).map_or(0, |s| s.endpoints.len())));
        for name in names {
            if let Some(slice) = by_name.get_mut(name) {
                while slice.endpoints.len() < max {
                    let Some((_, endpoint)) = desired.pop_first() else {
                        break;
                    };
                    slice.endpoints.push(endpoint);
                }
            }
        }
    }

    // 3. Put the rest in the unchanged slice they fit best, or in new slices.
    let mut create = Vec::new();
    while !desired.is_empty() {
        let mut target: Option<EndpointSlice> = None;
        if desired.len() < max && !unchanged.is_empty() {
            // getSliceToFill: the one left with the least room after the endpoints go in.
            let mut closest = max;
            for name in &unchanged {
                let Some(slice) = by_name.get(name) else {
                    continue;
                };
                let room = max.checked_sub(desired.len() + slice.endpoints.len());
                if let Some(room) = room {
                    if room < closest {
                        closest = room;
                        target = Some(slice.clone());
                        if room == 0 {
                            break;
                        }
                    }
                }
            }
        }
        let mut slice = target.unwrap_or_else(|| new_slice(service, ports, address_type));
        while slice.endpoints.len() < max {
            let Some((_, endpoint)) = desired.pop_first() else {
                break;
            };
            slice.endpoints.push(endpoint);
        }
        match slice.metadata.name.clone() {
            Some(name) => {
                unchanged.remove(&name);
                to_update.insert(name.clone());
                by_name.insert(name, slice);
            }
            None => create.push(slice),
        }
    }

    let pick = |names: &BTreeSet<String>| -> Vec<EndpointSlice> {
        names
            .iter()
            .filter_map(|n| by_name.get(n).cloned())
            .collect()
    };
    PortMappingResult {
        create,
        update: pick(&to_update),
        delete: pick(&to_delete),
    }
}

/// The placeholder matches: same namespace, labels, address type and no ports or
/// endpoints (`placeholderSliceCompare`).
fn is_equivalent_placeholder(slice: &EndpointSlice, placeholder: &EndpointSlice) -> bool {
    slice.metadata.namespace == placeholder.metadata.namespace
        && slice.metadata.labels.clone().unwrap_or_default()
            == placeholder.metadata.labels.clone().unwrap_or_default()
        && slice.address_type == placeholder.address_type
        && slice.ports.as_ref().is_none_or(Vec::is_empty)
        && slice.endpoints.is_empty()
}

/// Plans the EndpointSlices of `service`, given the pods and the EndpointSlices of its
/// namespace and the known nodes' zones.
pub fn plan(
    service: &Service,
    pods: &[Pod],
    existing_slices: &[EndpointSlice],
    nodes: &NodeZones,
) -> EndpointSlicePlan {
    plan_with_max(
        service,
        pods,
        existing_slices,
        nodes,
        MAX_ENDPOINTS_PER_SLICE,
    )
}

/// [`plan`] with another `--max-endpoints-per-slice` (at least 1).
pub fn plan_with_max(
    service: &Service,
    pods: &[Pod],
    existing_slices: &[EndpointSlice],
    nodes: &NodeZones,
    max_endpoints_per_slice: usize,
) -> EndpointSlicePlan {
    let max = max_endpoints_per_slice.max(1);
    let mut result = EndpointSlicePlan::default();
    // ExternalName Services get no endpoints from this controller, and Services without
    // a selector are the mirroring controller's (or the user's).
    let external_name =
        service.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName");
    let Some(selector) = service_selector(service).filter(|_| !external_name) else {
        return result;
    };
    let selected = selected_pods(service, selector, pods);
    let managed: Vec<&EndpointSlice> = existing_slices
        .iter()
        .filter(|s| is_managed_slice_of(s, service))
        .collect();
    let recorded = managed
        .iter()
        .filter_map(|s| recorded_trigger_time(&s.metadata))
        .max();
    let trigger = trigger_time(service, &selected, recorded);
    let types = address_types(service);
    let publish = publish_not_ready(service);

    // Which pods go in, and with which ports, is the same for every address type.
    let mut candidates: Vec<(&Pod, Option<&String>, Vec<EndpointPort>)> = Vec::new();
    for pod in selected {
        if !should_pod_be_in_endpoints(pod, true) {
            continue;
        }
        let node = pod_node_name(pod).unwrap_or_default();
        let zone = match nodes.get(&node) {
            Some(zone) => zone.as_ref(),
            None => {
                // Kubernetes leaves the pod out and retries; a Service that publishes
                // not-ready addresses asked for it anyway.
                result
                    .pods_on_missing_nodes
                    .push(pod.metadata.name.clone().unwrap_or_default());
                if !publish {
                    continue;
                }
                None
            }
        };
        candidates.push((pod, zone, endpoint_ports(service, pod)));
    }

    for slice in &managed {
        if !types.contains(slice.address_type.as_str()) {
            result.delete.push(to_delete(slice));
        }
    }

    for address_type in types {
        let existing: Vec<&EndpointSlice> = managed
            .iter()
            .copied()
            .filter(|s| s.address_type == address_type)
            .collect();
        let mut create: Vec<EndpointSlice> = Vec::new();
        let mut update: Vec<EndpointSlice> = Vec::new();
        let mut delete: Vec<EndpointSlice> = Vec::new();

        let mut existing_by_ports: BTreeMap<PortKey, Vec<&EndpointSlice>> = BTreeMap::new();
        for slice in &existing {
            if owned_by(slice, service) {
                existing_by_ports
                    .entry(port_key(slice.ports.as_deref().unwrap_or(&[])))
                    .or_default()
                    .push(slice);
            } else {
                // Labeled for this Service but owned by another one of the same name
                // (deleted and recreated): it goes.
                delete.push((*slice).clone());
            }
        }

        let mut desired: BTreeMap<PortKey, (Vec<EndpointPort>, EndpointSet)> = BTreeMap::new();
        for (pod, zone, ports) in &candidates {
            let entry = desired
                .entry(port_key(ports))
                .or_insert_with(|| (ports.clone(), EndpointSet::new()));
            if let Some(endpoint) = pod_to_endpoint(pod, *zone, service, address_type) {
                entry.1.insert(endpoint_key(&endpoint), endpoint);
            }
        }

        for (key, slices) in &existing_by_ports {
            if !desired.contains_key(key) {
                delete.extend(slices.iter().map(|s| (*s).clone()));
            }
        }
        for (key, (ports, endpoints)) in desired {
            let slices = existing_by_ports.get(&key).cloned().unwrap_or_default();
            let changes =
                reconcile_port_mapping(service, &slices, endpoints, &ports, address_type, max);
            create.extend(changes.create);
            update.extend(changes.update);
            delete.extend(changes.delete);
        }

        // No endpoints at all: keep (or make) one empty placeholder slice.
        if existing.len() == delete.len() && create.is_empty() {
            let placeholder = new_slice(service, &[], address_type);
            if delete.len() == 1 && is_equivalent_placeholder(&delete[0], &placeholder) {
                delete.clear();
            } else {
                create.push(placeholder);
            }
        }

        // finalize: turn creates into updates of slices that would be deleted, as long as
        // those are this Service's and of the same address type.
        let mut i = 0;
        while i < delete.len() && !create.is_empty() {
            if delete[i].address_type == address_type && owned_by(&delete[i], service) {
                let recycled = delete.remove(i);
                if let Some(mut slice) = create.pop() {
                    // Kubernetes updates without a resourceVersion; carrying the replaced
                    // slice's keeps the write conditional.
                    slice.metadata.name = recycled.metadata.name;
                    slice.metadata.uid = recycled.metadata.uid;
                    slice.metadata.resource_version = recycled.metadata.resource_version;
                    slice.metadata.generate_name = recycled.metadata.generate_name;
                    update.push(slice);
                }
            } else {
                i += 1;
            }
        }

        // A Service being deleted gets no new slices: the garbage collector would race
        // with them.
        if service.metadata.deletion_timestamp.is_none() {
            for mut slice in create {
                set_trigger_time(&mut slice.metadata, trigger);
                result.create.push(slice);
            }
        }
        for mut slice in update {
            set_trigger_time(&mut slice.metadata, trigger);
            result.update.push(slice);
        }
        result.delete.extend(delete.iter().map(to_delete));
    }
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::{at, pod, service, time};

    fn web_service(extra_spec: serde_json::Value) -> Service {
        let mut spec = serde_json::json!({
            "selector": {"app": "web"},
            "clusterIP": "10.96.0.10",
            "ipFamilies": ["IPv4"],
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
        });
        for (k, v) in extra_spec.as_object().unwrap() {
            spec[k] = v.clone();
        }
        service(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "svc-uid",
                "creationTimestamp": at(10), "labels": {"team": "a"}},
            "spec": spec
        }))
    }

    fn web_pod(name: &str, ips: &[&str], node: &str, http_port: i32, ready: bool) -> Pod {
        let pod_ips: Vec<serde_json::Value> =
            ips.iter().map(|ip| serde_json::json!({"ip": ip})).collect();
        pod(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                "labels": {"app": "web"}},
            "spec": {"nodeName": node, "containers": [{"name": "c",
                "ports": [{"name": "http", "containerPort": http_port}]}]},
            "status": {"phase": "Running", "podIP": ips[0], "podIPs": pod_ips,
                "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"},
                    "lastTransitionTime": at(20)}]}
        }))
    }

    fn zones() -> NodeZones {
        [
            ("n1".to_string(), Some("zone-a".to_string())),
            ("n2".to_string(), Some("zone-b".to_string())),
            ("n3".to_string(), None),
        ]
        .into()
    }

    fn many_pods(count: usize) -> Vec<Pod> {
        (0..count)
            .map(|i| {
                web_pod(
                    &format!("p{i:03}"),
                    &[&format!("10.1.{}.{}", i / 256, i % 256)],
                    "n1",
                    8080,
                    true,
                )
            })
            .collect()
    }

    /// Applies a plan the way the API server would, naming new slices.
    fn apply(slices: &mut Vec<EndpointSlice>, plan: &EndpointSlicePlan, counter: &mut u32) {
        for created in &plan.create {
            let mut slice = created.clone();
            *counter += 1;
            let name = format!(
                "{}{}",
                slice.metadata.generate_name.clone().unwrap(),
                counter
            );
            slice.metadata.name = Some(name.clone());
            slice.metadata.uid = Some(format!("uid-{name}"));
            slice.metadata.resource_version = Some(counter.to_string());
            slices.push(slice);
        }
        for updated in &plan.update {
            let slot = slices
                .iter_mut()
                .find(|s| s.metadata.name == updated.metadata.name)
                .unwrap();
            *slot = updated.clone();
        }
        for deleted in &plan.delete {
            slices.retain(|s| s.metadata.name.as_deref() != Some(deleted.name.as_str()));
        }
    }

    fn endpoint_names(slice: &EndpointSlice) -> Vec<String> {
        slice
            .endpoints
            .iter()
            .map(|e| e.target_ref.as_ref().unwrap().name.clone().unwrap())
            .collect()
    }

    #[test]
    fn new_service_gets_a_labeled_owned_slice_with_endpoint_details() {
        let svc = web_service(serde_json::json!({}));
        let mut terminating = web_pod("c", &["10.0.0.3"], "n2", 8080, true);
        terminating.metadata.deletion_timestamp = Some(time(90));
        let mut hostnamed = web_pod("b", &["10.0.0.2"], "n3", 8080, false);
        let spec = hostnamed.spec.as_mut().unwrap();
        spec.hostname = Some("web-b".into());
        spec.subdomain = Some("web".into());
        let pods = vec![
            web_pod("a", &["10.0.0.1"], "n1", 8080, true),
            hostnamed,
            terminating,
        ];
        let plan = plan(&svc, &pods, &[], &zones());
        assert!(plan.update.is_empty() && plan.delete.is_empty());
        assert_eq!(plan.create.len(), 1);
        let slice = &plan.create[0];
        assert_eq!(slice.metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(slice.metadata.namespace.as_deref(), Some("default"));
        let labels = slice.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "web");
        assert_eq!(labels[MANAGED_BY_LABEL], CONTROLLER_NAME);
        assert_eq!(labels["team"], "a");
        assert!(!labels.contains_key(HEADLESS_LABEL));
        let owner = &slice.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (
                owner.api_version.as_str(),
                owner.kind.as_str(),
                owner.name.as_str()
            ),
            ("v1", "Service", "web")
        );
        assert_eq!(owner.uid, "svc-uid");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(slice.address_type, "IPv4");
        let port = &slice.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.port, port.protocol.as_deref()),
            (Some("http"), Some(8080), Some("TCP"))
        );
        let by_name: BTreeMap<String, &Endpoint> = slice
            .endpoints
            .iter()
            .map(|e| (e.target_ref.as_ref().unwrap().name.clone().unwrap(), e))
            .collect();
        let a = by_name["a"];
        assert_eq!(a.addresses, ["10.0.0.1"]);
        assert_eq!(a.node_name.as_deref(), Some("n1"));
        assert_eq!(a.zone.as_deref(), Some("zone-a"));
        assert_eq!(a.target_ref.as_ref().unwrap().uid.as_deref(), Some("uid-a"));
        let conditions = |e: &Endpoint| {
            let c = e.conditions.clone().unwrap();
            (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap())
        };
        assert_eq!(conditions(a), (true, true, false));
        let b = by_name["b"];
        assert_eq!(conditions(b), (false, false, false));
        assert_eq!(b.hostname.as_deref(), Some("web-b"));
        assert_eq!(b.zone, None);
        // Terminating pods stay, not ready but still serving.
        assert_eq!(conditions(by_name["c"]), (false, true, true));
        // The trigger time: the earliest change, the Service's creation.
        assert_eq!(
            slice.metadata.annotations.as_ref().unwrap()
                [crate::endpoints::LAST_CHANGE_TRIGGER_TIME_ANNOTATION],
            at(10)
        );

        // Publishing not-ready addresses makes every endpoint ready.
        let publishing = web_service(serde_json::json!({"publishNotReadyAddresses": true}));
        let plan = super::plan(&publishing, &pods, &[], &zones());
        assert!(plan.create[0]
            .endpoints
            .iter()
            .all(|e| e.conditions.as_ref().unwrap().ready == Some(true)));
    }

    #[test]
    fn more_than_a_hundred_endpoints_split_into_full_slices_and_then_stay_put() {
        let svc = web_service(serde_json::json!({}));
        let pods = many_pods(250);
        let first = plan(&svc, &pods, &[], &zones());
        let mut sizes: Vec<usize> = first.create.iter().map(|s| s.endpoints.len()).collect();
        sizes.sort();
        assert_eq!(sizes, [50, 100, 100]);
        let mut slices = Vec::new();
        let mut counter = 0;
        apply(&mut slices, &first, &mut counter);
        let again = plan(&svc, &pods, &slices, &zones());
        assert!(again.is_noop(), "{again:?}");

        // A smaller limit splits finer.
        let small = plan_with_max(&svc, &pods[..10], &[], &zones(), 4);
        let mut sizes: Vec<usize> = small.create.iter().map(|s| s.endpoints.len()).collect();
        sizes.sort();
        assert_eq!(sizes, [2, 4, 4]);
    }

    #[test]
    fn one_pod_changing_rewrites_only_its_slice() {
        let svc = web_service(serde_json::json!({}));
        let mut pods = many_pods(250);
        let mut slices = Vec::new();
        let mut counter = 0;
        apply(&mut slices, &plan(&svc, &pods, &[], &zones()), &mut counter);
        let before = slices.clone();

        // p100 becomes not ready: exactly its slice is updated, endpoints in place.
        pods[100] = web_pod("p100", &["10.1.0.100"], "n1", 8080, false);
        let change = plan(&svc, &pods, &slices, &zones());
        assert!(change.create.is_empty() && change.delete.is_empty());
        assert_eq!(change.update.len(), 1);
        let updated = &change.update[0];
        let original = before
            .iter()
            .find(|s| s.metadata.name == updated.metadata.name)
            .unwrap();
        assert_eq!(endpoint_names(updated), endpoint_names(original));
        assert_eq!(
            updated.metadata.resource_version,
            original.metadata.resource_version
        );
        let changed: Vec<&Endpoint> = updated
            .endpoints
            .iter()
            .zip(&original.endpoints)
            .filter(|(a, b)| a != b)
            .map(|(a, _)| a)
            .collect();
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].conditions.as_ref().unwrap().ready, Some(false));
        apply(&mut slices, &change, &mut counter);

        // One pod replaced by another: the new endpoint takes the freed place in the slice
        // being updated anyway; nothing else is written.
        let gone = endpoint_names(&slices[0])[5].clone();
        pods.retain(|p| p.metadata.name.as_deref() != Some(gone.as_str()));
        pods.push(web_pod("fresh", &["10.2.0.1"], "n2", 8080, true));
        let swap = plan(&svc, &pods, &slices, &zones());
        assert!(swap.create.is_empty() && swap.delete.is_empty(), "{swap:?}");
        assert_eq!(swap.update.len(), 1);
        assert_eq!(swap.update[0].metadata.name, slices[0].metadata.name);
        let names = endpoint_names(&swap.update[0]);
        assert!(names.contains(&"fresh".to_string()) && !names.contains(&gone));
        apply(&mut slices, &swap, &mut counter);

        // A new pod alone goes into the unchanged slice it fits best (the half-full one).
        pods.push(web_pod("newest", &["10.2.0.2"], "n2", 8080, true));
        let grow = plan(&svc, &pods, &slices, &zones());
        assert!(grow.create.is_empty() && grow.delete.is_empty());
        assert_eq!(grow.update.len(), 1);
        assert_eq!(grow.update[0].endpoints.len(), 51);
    }

    #[test]
    fn dual_stack_services_get_a_slice_per_address_type() {
        let svc = web_service(serde_json::json!({
            "ipFamilies": ["IPv4", "IPv6"], "clusterIPs": ["10.96.0.10", "fd00:96::10"]
        }));
        let pods = vec![
            web_pod("dual", &["10.0.0.1", "fd00::1"], "n1", 8080, true),
            web_pod("v4only", &["10.0.0.2"], "n1", 8080, true),
        ];
        let plan = plan(&svc, &pods, &[], &zones());
        assert_eq!(plan.create.len(), 2);
        let v4 = plan
            .create
            .iter()
            .find(|s| s.address_type == "IPv4")
            .unwrap();
        let v6 = plan
            .create
            .iter()
            .find(|s| s.address_type == "IPv6")
            .unwrap();
        assert_eq!(endpoint_names(v4), ["dual", "v4only"]);
        assert_eq!(v6.endpoints.len(), 1);
        assert_eq!(v6.endpoints[0].addresses, ["fd00::1"]);

        // Back to single stack: the IPv6 slice goes, the IPv4 one is untouched.
        let mut slices = Vec::new();
        let mut counter = 0;
        apply(&mut slices, &plan, &mut counter);
        let single = web_service(serde_json::json!({}));
        let shrink = super::plan(&single, &pods, &slices, &zones());
        assert!(shrink.create.is_empty() && shrink.update.is_empty());
        let v6_name = slices.iter().find(|s| s.address_type == "IPv6").unwrap();
        assert_eq!(
            shrink.delete,
            vec![SliceToDelete {
                name: v6_name.metadata.name.clone().unwrap(),
                uid: v6_name.metadata.uid.clone()
            }]
        );
    }

    #[test]
    fn foreign_slices_are_left_alone_and_stale_labeled_ones_deleted() {
        let svc = web_service(serde_json::json!({}));
        let pods = vec![web_pod("a", &["10.0.0.1"], "n1", 8080, true)];
        let mut user_slice = plan(&svc, &pods, &[], &zones()).create.remove(0);
        user_slice.metadata.name = Some("web-manual".into());
        user_slice
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(MANAGED_BY_LABEL.into(), "someone-else".into());
        user_slice.endpoints.clear();
        let mut other_service = user_slice.clone();
        other_service.metadata.name = Some("db-1".into());
        let labels = other_service.metadata.labels.as_mut().unwrap();
        labels.insert(MANAGED_BY_LABEL.into(), CONTROLLER_NAME.into());
        labels.insert(SERVICE_NAME_LABEL.into(), "db".into());
        // Ours by label, but owned by a previous Service named web: deleted, not updated.
        let mut stale = plan(&svc, &pods, &[], &zones()).create.remove(0);
        stale.metadata.name = Some("web-old".into());
        stale.metadata.owner_references.as_mut().unwrap()[0].uid = "old-svc-uid".into();

        let plan = plan(&svc, &pods, &[user_slice, other_service, stale], &zones());
        assert_eq!(plan.create.len(), 1);
        assert!(plan.update.is_empty());
        assert_eq!(
            plan.delete,
            vec![SliceToDelete {
                name: "web-old".into(),
                uid: None
            }]
        );
    }

    #[test]
    fn distinct_port_sets_get_distinct_slices_and_obsolete_ones_are_recycled() {
        let svc = web_service(serde_json::json!({}));
        let pods = vec![
            web_pod("a", &["10.0.0.1"], "n1", 8080, true),
            web_pod("b", &["10.0.0.2"], "n1", 9090, true),
        ];
        let first = plan(&svc, &pods, &[], &zones());
        assert_eq!(first.create.len(), 2);
        let mut ports: Vec<i32> = first
            .create
            .iter()
            .map(|s| s.ports.as_ref().unwrap()[0].port.unwrap())
            .collect();
        ports.sort();
        assert_eq!(ports, [8080, 9090]);
        let mut slices = Vec::new();
        let mut counter = 0;
        apply(&mut slices, &first, &mut counter);

        // b moves to 8080: its old slice would be emptied, so instead of deleting it and
        // keeping the other, the 8080 slice gets b and the 9090 one is deleted.
        let moved = vec![
            web_pod("a", &["10.0.0.1"], "n1", 8080, true),
            web_pod("b", &["10.0.0.2"], "n1", 8080, true),
        ];
        let change = plan(&svc, &moved, &slices, &zones());
        assert!(change.create.is_empty());
        assert_eq!(change.update.len(), 1);
        assert_eq!(endpoint_names(&change.update[0]), ["a", "b"]);
        assert_eq!(change.delete.len(), 1);

        // A new port set while the old one empties: the emptied slice is reused.
        let renumbered = vec![web_pod("a", &["10.0.0.1"], "n1", 7070, true)];
        let only_a: Vec<EndpointSlice> = slices
            .iter()
            .filter(|s| endpoint_names(s) == ["a"])
            .cloned()
            .collect();
        let recycle = plan(&svc, &renumbered, &only_a, &zones());
        assert!(
            recycle.create.is_empty() && recycle.delete.is_empty(),
            "{recycle:?}"
        );
        assert_eq!(recycle.update.len(), 1);
        assert_eq!(recycle.update[0].metadata.name, only_a[0].metadata.name);
        assert_eq!(
            recycle.update[0].ports.as_ref().unwrap()[0].port,
            Some(7070)
        );
    }

    #[test]
    fn no_endpoints_means_one_placeholder_kept_as_is() {
        let svc = web_service(serde_json::json!({}));
        let first = plan(&svc, &[], &[], &zones());
        assert_eq!(first.create.len(), 1);
        assert!(first.create[0].endpoints.is_empty());
        assert!(first.create[0].ports.as_ref().unwrap().is_empty());
        let mut slices = Vec::new();
        let mut counter = 0;
        apply(&mut slices, &first, &mut counter);
        assert!(plan(&svc, &[], &slices, &zones()).is_noop());

        // The last pod going replaces its slice by the placeholder, in place.
        let pods = vec![web_pod("a", &["10.0.0.1"], "n1", 8080, true)];
        let mut slices = Vec::new();
        apply(&mut slices, &plan(&svc, &pods, &[], &zones()), &mut counter);
        let emptied = plan(&svc, &[], &slices, &zones());
        assert!(emptied.create.is_empty() && emptied.delete.is_empty());
        assert_eq!(emptied.update.len(), 1);
        assert!(emptied.update[0].endpoints.is_empty());
    }

    #[test]
    fn services_without_selector_external_names_and_missing_nodes() {
        let mut no_selector = web_service(serde_json::json!({}));
        no_selector.spec.as_mut().unwrap().selector = None;
        let pods = vec![web_pod("a", &["10.0.0.1"], "gone", 8080, true)];
        assert!(plan(&no_selector, &pods, &[], &zones()).is_noop());
        let external =
            web_service(serde_json::json!({"type": "ExternalName", "externalName": "x.example"}));
        assert!(plan(&external, &pods, &[], &zones()).is_noop());

        // A pod on an unknown node is skipped (and reported), unless published anyway.
        let svc = web_service(serde_json::json!({}));
        let skipped = plan(&svc, &pods, &[], &zones());
        assert_eq!(skipped.pods_on_missing_nodes, ["a"]);
        assert!(skipped.create[0].endpoints.is_empty());
        let publishing = web_service(serde_json::json!({"publishNotReadyAddresses": true}));
        let kept = plan(&publishing, &pods, &[], &zones());
        assert_eq!(endpoint_names(&kept.create[0]), ["a"]);

        // A Service being deleted gets no new slices.
        let mut deleting = svc.clone();
        deleting.metadata.deletion_timestamp = Some(time(100));
        let pods = vec![web_pod("a", &["10.0.0.1"], "n1", 8080, true)];
        assert!(plan(&deleting, &pods, &[], &zones()).create.is_empty());
    }

    #[test]
    fn service_label_changes_update_slices_and_headless_is_labeled() {
        let svc = web_service(serde_json::json!({}));
        let pods = vec![web_pod("a", &["10.0.0.1"], "n1", 8080, true)];
        let mut slices = Vec::new();
        let mut counter = 0;
        apply(&mut slices, &plan(&svc, &pods, &[], &zones()), &mut counter);
        let mut relabeled = svc.clone();
        relabeled.metadata.labels = Some([("team".to_string(), "b".to_string())].into());
        let change = plan(&relabeled, &pods, &slices, &zones());
        assert_eq!(change.update.len(), 1);
        assert_eq!(
            change.update[0].metadata.labels.as_ref().unwrap()["team"],
            "b"
        );

        let headless = web_service(serde_json::json!({"clusterIP": "None"}));
        let created = plan(&headless, &pods, &[], &zones());
        assert_eq!(
            created.create[0].metadata.labels.as_ref().unwrap()[HEADLESS_LABEL],
            ""
        );
    }
}
