//! The Endpoints controller's decisions (kube-controller-manager's `pkg/controller/endpoint`):
//! the `Endpoints` object named after a Service with a selector, listing the addresses of
//! the pods it selects, grouped into subsets by the ports they offer.
//!
//! [`plan`] follows `syncService`: pods that are terminal, have no IP or (unless the Service
//! publishes not-ready addresses) are terminating are left out; each remaining pod gives
//! one address (of the Service's IP family) per Service port it resolves, ready or not
//! ready; `RepackSubsets` then groups addresses offering identical port sets. More than
//! [`MAX_CAPACITY`] addresses are truncated and flagged with [`OVER_CAPACITY_ANNOTATION`].
//!
//! The loop around it watches Services, Pods and Endpoints, and syncs a Service when it, its
//! Endpoints or one of the pods it selects (before or after a change) changes. A Service
//! without a selector is left alone: users manage those Endpoints. When the Service is gone
//! the loop deletes the Endpoints of the same name, as Kubernetes does; [`plan_service_gone`]
//! gives that step as a plan. It decides on the API's live answer for the Service, not on
//! the Endpoints cache: an Endpoints object written just before the Service went may not be
//! in the cache yet, and Kubernetes deletes by name (a missing object is no error). The helpers shared with the EndpointSlice controller
//! (`FindPort`, `ShouldPodBeInEndpoints`, `ShouldSetHostname`, IP families) live here.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
    ServicePort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

use crate::pod_state;

/// When the change that caused this write happened (for the endpoints latency SLI).
pub const LAST_CHANGE_TRIGGER_TIME_ANNOTATION: &str =
    "endpoints.kubernetes.io/last-change-trigger-time";
/// Set to `truncated` when more than [`MAX_CAPACITY`] addresses were dropped.
pub const OVER_CAPACITY_ANNOTATION: &str = "endpoints.kubernetes.io/over-capacity";
/// Label on Endpoints and EndpointSlices of a Service without a cluster IP.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// At most this many addresses (ready and not ready) in one Endpoints object.
pub const MAX_CAPACITY: usize = 1000;

/// What to write for one Service's Endpoints.
#[derive(Debug, Clone, PartialEq)]
pub enum EndpointsPlan {
    /// The Service has no selector: its Endpoints belong to the user.
    NotManaged,
    /// The Endpoints are already as desired (the trigger-time annotation aside).
    Unchanged,
    /// Create this object.
    Create(Endpoints),
    /// Replace the object with this one (PUT; it carries the observed `resourceVersion`,
    /// so a concurrent change conflicts and the loop retries with fresh state).
    Update(Endpoints),
    /// Delete the Endpoints (only from [`plan_service_gone`]).
    Delete { namespace: String, name: String },
}

impl EndpointsPlan {
    /// True when nothing is written.
    pub fn is_noop(&self) -> bool {
        matches!(self, EndpointsPlan::NotManaged | EndpointsPlan::Unchanged)
    }
}

/// The Service's selector, if it manages Endpoints. An empty selector counts as none: the
/// API server's protobuf storage turns `selector: {}` into nil, which Kubernetes' controllers
/// read as "no selector".
pub fn service_selector(service: &Service) -> Option<&BTreeMap<String, String>> {
    service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
}

/// The pod's labels include every `key=value` of the Service selector.
pub fn selector_matches(selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = pod.metadata.labels.as_ref();
    selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// `helper.IsServiceIPSet`: a cluster IP other than `None`.
pub fn is_service_ip_set(service: &Service) -> bool {
    let ip = cluster_ip(service);
    !ip.is_empty() && ip != "None"
}

fn cluster_ip(service: &Service) -> &str {
    service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .unwrap_or("")
}

pub(crate) fn publish_not_ready(service: &Service) -> bool {
    service
        .spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

pub(crate) fn service_ports(service: &Service) -> &[ServicePort] {
    service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or(&[])
}

/// `utilnet.IsIPv6String`: anything that does not parse as IPv6 counts as IPv4, as there.
pub fn is_ipv6(ip: &str) -> bool {
    matches!(ip.parse::<IpAddr>(), Ok(IpAddr::V6(_)))
}

/// The pod's IPs: `status.podIPs`, or `status.podIP` when the list is missing.
pub fn pod_ips(pod: &Pod) -> Vec<&str> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let listed: Vec<&str> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|p| p.ip.as_str())
        .filter(|ip| !ip.is_empty())
        .collect();
    if !listed.is_empty() {
        return listed;
    }
    status
        .pod_ip
        .as_deref()
        .filter(|ip| !ip.is_empty())
        .into_iter()
        .collect()
}

/// `ShouldPodBeInEndpoints`: not terminal, has an IP, and not terminating unless
/// `include_terminating`.
pub fn should_pod_be_in_endpoints(pod: &Pod, include_terminating: bool) -> bool {
    if pod_state::is_terminal(pod) || pod_ips(pod).is_empty() {
        return false;
    }
    include_terminating || pod.metadata.deletion_timestamp.is_none()
}

/// `ShouldSetHostname`: the pod names a hostname and its subdomain is this Service.
pub fn should_set_hostname(pod: &Pod, service: &Service) -> bool {
    let Some(spec) = &pod.spec else {
        return false;
    };
    spec.hostname.as_deref().is_some_and(|h| !h.is_empty())
        && spec.subdomain.as_deref() == service.metadata.name.as_deref()
        && pod.metadata.namespace == service.metadata.namespace
}

fn protocol(protocol: Option<&str>) -> &str {
    // The API server defaults both sides to TCP.
    protocol.filter(|p| !p.is_empty()).unwrap_or("TCP")
}

/// `podutil.FindPort`: the pod port a Service port targets. A named `targetPort` resolves to
/// the container port of that name and the Service port's protocol (regular containers,
/// then sidecar init containers); a number is taken as is; an unset one means the Service
/// port itself (the API server's default). `None` when the pod has no such named port.
pub fn find_port(pod: &Pod, service_port: &ServicePort) -> Option<i32> {
    match &service_port.target_port {
        None => Some(service_port.port),
        Some(IntOrString::Int(port)) => Some(*port),
        Some(IntOrString::String(name)) => {
            // A numeric string is a number (intstr's IntValue), as Kubernetes parses it.
            if let Ok(port) = name.parse::<i32>() {
                return Some(port);
            }
            let spec = pod.spec.as_ref()?;
            let wanted = protocol(service_port.protocol.as_deref());
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && protocol(p.protocol.as_deref()) == wanted
                })
                .map(|p| p.container_port)
        }
    }
}

/// `Kind: Pod` reference to the pod (namespace, name, uid), as endpoints carry it.
pub(crate) fn pod_reference(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".to_string()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..ObjectReference::default()
    }
}

pub(crate) fn pod_node_name(pod: &Pod) -> Option<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty())
}

/// `podToEndpointAddressForService`: the pod's IP of the Service's (first) IP family.
fn pod_address(service: &Service, pod: &Pod) -> Option<EndpointAddress> {
    let spec = service.spec.as_ref();
    let ips = pod_ips(pod);
    let want_v6 = match spec
        .and_then(|s| s.ip_families.as_ref())
        .and_then(|f| f.first())
    {
        Some(family) => family == "IPv6",
        // An API server that predates IP families: the cluster IP tells, or for a headless
        // Service the pod's primary IP.
        None if is_service_ip_set(service) => is_ipv6(cluster_ip(service)),
        None => ips.first().is_some_and(|ip| is_ipv6(ip)),
    };
    let ip = ips.into_iter().find(|ip| is_ipv6(ip) == want_v6)?;
    Some(EndpointAddress {
        ip: ip.to_string(),
        hostname: None,
        node_name: pod_node_name(pod),
        target_ref: Some(pod_reference(pod)),
    })
}

/// The pods a Service selects, in its namespace.
pub(crate) fn selected_pods<'a>(
    service: &Service,
    selector: &BTreeMap<String, String>,
    pods: &'a [Pod],
) -> Vec<&'a Pod> {
    pods.iter()
        .filter(|p| p.metadata.namespace == service.metadata.namespace)
        .filter(|p| selector_matches(selector, p))
        .collect()
}

/// An approximation of Kubernetes' `TriggerTimeTracker`, which remembers in memory the
/// state it last saw: the earliest change not yet reflected in what was last written. The
/// changes are the pods' Ready transitions and the Service's creation; "not yet reflected"
/// is "after the trigger time recorded on the current object" (`recorded`), or every one
/// when nothing was recorded. `None` clears the annotation, as Kubernetes does when it has
/// no trigger time.
pub(crate) fn trigger_time(
    service: &Service,
    pods: &[&Pod],
    recorded: Option<Timestamp>,
) -> Option<Timestamp> {
    let service_time = service.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let pod_times = pods.iter().filter_map(|p| {
        pod_state::ready_condition(p)
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0)
    });
    service_time
        .into_iter()
        .chain(pod_times)
        .filter(|t| recorded.is_none_or(|r| *t > r))
        .min()
}

/// The trigger time recorded in an object's annotations.
pub(crate) fn recorded_trigger_time(meta: &ObjectMeta) -> Option<Timestamp> {
    meta.annotations
        .as_ref()?
        .get(LAST_CHANGE_TRIGGER_TIME_ANNOTATION)?
        .parse()
        .ok()
}

/// Sets or clears the trigger-time annotation (RFC 3339 in UTC, as Go's `RFC3339Nano`).
pub(crate) fn set_trigger_time(meta: &mut ObjectMeta, time: Option<Timestamp>) {
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    match time {
        Some(t) => {
            annotations.insert(
                LAST_CHANGE_TRIGGER_TIME_ANNOTATION.to_string(),
                t.to_string(),
            );
        }
        None => {
            annotations.remove(LAST_CHANGE_TRIGGER_TIME_ANNOTATION);
        }
    }
    if annotations.is_empty() {
        meta.annotations = None;
    }
}

/// The Service's labels plus the headless label when it has no cluster IP.
fn endpoints_labels(service: &Service) -> BTreeMap<String, String> {
    let mut labels = service.metadata.labels.clone().unwrap_or_default();
    if is_service_ip_set(service) {
        labels.remove(HEADLESS_LABEL);
    } else {
        labels.insert(HEADLESS_LABEL.to_string(), String::new());
    }
    labels
}

/// An address's identity in `RepackSubsets`: its IP and the pod's UID.
type AddressKey = (String, String);

fn address_key(address: &EndpointAddress) -> AddressKey {
    let uid = address
        .target_ref
        .as_ref()
        .and_then(|r| r.uid.clone())
        .unwrap_or_default();
    (address.ip.clone(), uid)
}

/// A port as a sortable key; `None` is the sentinel for "no ports" (headless Services
/// without ports still list their addresses).
type PortKey = Option<(String, i32, String, Option<String>)>;

fn port_key(port: &EndpointPort) -> PortKey {
    Some((
        port.name.clone().unwrap_or_default(),
        port.port,
        port.protocol.clone().unwrap_or_default(),
        port.app_protocol.clone(),
    ))
}

/// The subsets Kubernetes' `syncService` + `RepackSubsets` produce: every port maps to the
/// set of addresses offering it (not ready wins over ready when a pod is both), and ports
/// with the same address set share a subset. Addresses are sorted by IP then UID; ports
/// and subsets by name, number and protocol (Kubernetes sorts those by an object hash).
pub fn desired_subsets(service: &Service, pods: &[&Pod]) -> Vec<EndpointSubset> {
    let publish = publish_not_ready(service);
    let ports = service_ports(service);
    let headless = !is_service_ip_set(service);
    let mut addresses: BTreeMap<AddressKey, EndpointAddress> = BTreeMap::new();
    let mut by_port: BTreeMap<PortKey, (Option<EndpointPort>, BTreeMap<AddressKey, bool>)> =
        BTreeMap::new();
    let mut add = |address: &EndpointAddress, port: Option<EndpointPort>, ready: bool| {
        let key = address_key(address);
        addresses
            .entry(key.clone())
            .or_insert_with(|| address.clone());
        let port_key = port.as_ref().and_then(port_key);
        let entry = by_port
            .entry(port_key)
            .or_insert_with(|| (port, BTreeMap::new()));
        let state = entry.1.entry(key).or_insert(ready);
        *state = *state && ready;
    };
    for pod in pods {
        if !should_pod_be_in_endpoints(pod, publish) {
            continue;
        }
        let Some(mut address) = pod_address(service, pod) else {
            continue;
        };
        if should_set_hostname(pod, service) {
            address.hostname = pod.spec.as_ref().and_then(|s| s.hostname.clone());
        }
        let ready = publish || pod_state::is_ready(pod);
        if ports.is_empty() {
            // Only a headless Service may have no ports.
            if headless {
                add(&address, None, ready);
            }
            continue;
        }
        for service_port in ports {
            let Some(number) = find_port(pod, service_port) else {
                continue;
            };
            let port = EndpointPort {
                name: service_port.name.clone().filter(|n| !n.is_empty()),
                port: number,
                protocol: Some(protocol(service_port.protocol.as_deref()).to_string()),
                app_protocol: service_port.app_protocol.clone(),
            };
            add(&address, Some(port), ready);
        }
    }

    // Group ports by their (address, ready) sets.
    let mut groups: BTreeMap<Vec<(AddressKey, bool)>, Vec<EndpointPort>> = BTreeMap::new();
    for (port, members) in by_port.into_values() {
        let key: Vec<(AddressKey, bool)> = members.into_iter().collect();
        let group = groups.entry(key).or_default();
        group.extend(port);
    }
    let mut subsets: Vec<EndpointSubset> = groups
        .into_iter()
        .map(|(members, ports)| {
            let mut ready = Vec::new();
            let mut not_ready = Vec::new();
            for (key, is_ready) in members {
                if let Some(address) = addresses.get(&key) {
                    if is_ready {
                        ready.push(address.clone());
                    } else {
                        not_ready.push(address.clone());
                    }
                }
            }
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then_some(ports),
            }
        })
        .collect();
    sort_subsets(&mut subsets);
    subsets
}

/// Canonical order: addresses by IP then UID, ports by name/number/protocol, subsets by
/// their ports then first address. Applied to both sides before comparing.
fn sort_subsets(subsets: &mut [EndpointSubset]) {
    for subset in subsets.iter_mut() {
        for list in [&mut subset.addresses, &mut subset.not_ready_addresses]
            .into_iter()
            .flatten()
        {
            list.sort_by_key(address_key);
        }
        if let Some(ports) = &mut subset.ports {
            ports.sort_by_key(port_key);
        }
    }
    subsets.sort_by_key(subset_key);
}

fn subset_key(subset: &EndpointSubset) -> (Vec<PortKey>, Option<AddressKey>) {
    let ports = subset.ports.iter().flatten().map(port_key).collect();
    let first = subset
        .addresses
        .iter()
        .flatten()
        .chain(subset.not_ready_addresses.iter().flatten())
        .map(address_key)
        .min();
    (ports, first)
}

/// `truncateEndpoints`: past [`MAX_CAPACITY`] addresses, keep ready ones first and share
/// the room among subsets in proportion to their size (rounded up, in order). Returns
/// whether anything was dropped.
fn truncate(subsets: &mut [EndpointSubset]) -> bool {
    let count = |l: &Option<Vec<EndpointAddress>>| l.as_ref().map_or(0, Vec::len);
    let total_ready: usize = subsets.iter().map(|s| count(&s.addresses)).sum();
    let total_not_ready: usize = subsets.iter().map(|s| count(&s.not_ready_addresses)).sum();
    if total_ready + total_not_ready <= MAX_CAPACITY {
        return false;
    }
    let truncate_ready = total_ready > MAX_CAPACITY;
    let (max, total) = if truncate_ready {
        (MAX_CAPACITY, total_ready)
    } else {
        (MAX_CAPACITY - total_ready, total_not_ready)
    };
    let mut room = max;
    for subset in subsets.iter_mut() {
        let in_subset = if truncate_ready {
            count(&subset.addresses)
        } else {
            count(&subset.not_ready_addresses)
        };
        // ceil(in_subset / total * max) without floating point.
        let share = (in_subset * max).div_ceil(total.max(1)).min(room);
        let list = if truncate_ready {
            subset.not_ready_addresses = None;
            &mut subset.addresses
        } else {
            &mut subset.not_ready_addresses
        };
        if let Some(list) = list {
            list.truncate(share);
            room -= list.len();
        }
    }
    true
}

/// Normalizes observed subsets for comparison: canonical order, no empty lists, and no
/// pod `resourceVersion` in target references (Kubernetes ignores those so that pod
/// updates it does not care about cause no write).
fn normalized(subsets: Option<&Vec<EndpointSubset>>) -> Vec<EndpointSubset> {
    let mut subsets: Vec<EndpointSubset> = subsets
        .into_iter()
        .flatten()
        .cloned()
        .map(|mut s| {
            for list in [&mut s.addresses, &mut s.not_ready_addresses] {
                for address in list.iter_mut().flatten() {
                    if let Some(reference) = &mut address.target_ref {
                        reference.resource_version = None;
                    }
                    if address.node_name.as_deref() == Some("") {
                        address.node_name = None;
                    }
                }
                if list.as_ref().is_some_and(Vec::is_empty) {
                    *list = None;
                }
            }
            if s.ports.as_ref().is_some_and(Vec::is_empty) {
                s.ports = None;
            }
            s
        })
        .filter(|s| s.addresses.is_some() || s.not_ready_addresses.is_some())
        .collect();
    sort_subsets(&mut subsets);
    subsets
}

/// Plans the Endpoints of `service` given the pods of its namespace and the current
/// Endpoints of the same name, if any.
pub fn plan(service: &Service, pods: &[Pod], current: Option<&Endpoints>) -> EndpointsPlan {
    let Some(selector) = service_selector(service) else {
        return EndpointsPlan::NotManaged;
    };
    let selected = selected_pods(service, selector, pods);
    let mut subsets = desired_subsets(service, &selected);
    let truncated = truncate(&mut subsets);
    let labels = endpoints_labels(service);

    if let Some(current) = current {
        let current_labels = current.metadata.labels.clone().unwrap_or_default();
        let current_truncated = current
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(OVER_CAPACITY_ANNOTATION));
        if normalized(current.subsets.as_ref()) == subsets
            && current_labels == labels
            && current_truncated == truncated
        {
            return EndpointsPlan::Unchanged;
        }
    }

    let recorded = current.and_then(|c| recorded_trigger_time(&c.metadata));
    let mut metadata = match current {
        // Keep everything else the object carries (resourceVersion included).
        Some(current) => current.metadata.clone(),
        None => ObjectMeta {
            name: service.metadata.name.clone(),
            namespace: service.metadata.namespace.clone(),
            ..ObjectMeta::default()
        },
    };
    metadata.labels = (!labels.is_empty()).then_some(labels);
    set_trigger_time(&mut metadata, trigger_time(service, &selected, recorded));
    let annotations = metadata.annotations.get_or_insert_with(BTreeMap::new);
    if truncated {
        annotations.insert(
            OVER_CAPACITY_ANNOTATION.to_string(),
            "truncated".to_string(),
        );
    } else {
        annotations.remove(OVER_CAPACITY_ANNOTATION);
    }
    if annotations.is_empty() {
        metadata.annotations = None;
    }
    let endpoints = Endpoints {
        metadata,
        subsets: (!subsets.is_empty()).then_some(subsets),
    };
    match current {
        Some(_) => EndpointsPlan::Update(endpoints),
        None => EndpointsPlan::Create(endpoints),
    }
}

/// The Service is gone (not found in the API): delete its Endpoints, if any. Kubernetes
/// does this whether or not the Service had a selector.
pub fn plan_service_gone(namespace: &str, name: &str, service_exists: bool) -> EndpointsPlan {
    if service_exists {
        // Recreated meanwhile: the sync of the new Service owns its Endpoints.
        return EndpointsPlan::Unchanged;
    }
    EndpointsPlan::Delete {
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
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
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                {"name": "metrics", "port": 9090, "targetPort": 9090, "protocol": "TCP"}
            ]
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

    /// A running pod of `web` with IP `ip`, container port `http` = `http_port` (none when
    /// `None`), ready since `ready_at` (not ready when `None`).
    fn web_pod(name: &str, ip: &str, http_port: Option<i32>, ready_at: Option<i64>) -> Pod {
        let ports = match http_port {
            Some(p) => serde_json::json!([{"name": "http", "containerPort": p}]),
            None => serde_json::json!([]),
        };
        let ready = match ready_at {
            Some(t) => {
                serde_json::json!({"type": "Ready", "status": "True", "lastTransitionTime": at(t)})
            }
            None => {
                serde_json::json!({"type": "Ready", "status": "False", "lastTransitionTime": at(5)})
            }
        };
        pod(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": ports}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "conditions": [ready]}
        }))
    }

    fn created(plan: EndpointsPlan) -> Endpoints {
        match plan {
            EndpointsPlan::Create(e) => e,
            other => panic!("expected a create, got {other:?}"),
        }
    }

    fn ips(list: &Option<Vec<EndpointAddress>>) -> Vec<&str> {
        list.iter().flatten().map(|a| a.ip.as_str()).collect()
    }

    fn port_numbers(subset: &EndpointSubset) -> Vec<(String, i32)> {
        subset
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone().unwrap_or_default(), p.port))
            .collect()
    }

    #[test]
    fn named_target_ports_resolve_per_pod_and_group_by_port_set() {
        let svc = web_service(serde_json::json!({}));
        let pods = vec![
            web_pod("a", "10.0.0.2", Some(8080), Some(20)),
            web_pod("b", "10.0.0.1", Some(8080), Some(20)),
            web_pod("c", "10.0.0.3", Some(8443), Some(20)),
            // No port named http: only in the metrics subset.
            web_pod("d", "10.0.0.4", None, Some(20)),
        ];
        let endpoints = created(plan(&svc, &pods, None));
        assert_eq!(endpoints.metadata.name.as_deref(), Some("web"));
        assert_eq!(endpoints.metadata.namespace.as_deref(), Some("default"));
        let subsets = endpoints.subsets.unwrap();
        type Summary<'a> = Vec<(Vec<(String, i32)>, Vec<&'a str>)>;
        let summary: Summary<'_> = subsets
            .iter()
            .map(|s| (port_numbers(s), ips(&s.addresses)))
            .collect();
        assert_eq!(
            summary,
            vec![
                (vec![("http".into(), 8080)], vec!["10.0.0.1", "10.0.0.2"]),
                (vec![("http".into(), 8443)], vec!["10.0.0.3"]),
                (
                    vec![("metrics".into(), 9090)],
                    vec!["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
                ),
            ]
        );
        let address = &subsets[0].addresses.as_ref().unwrap()[0];
        assert_eq!(address.node_name.as_deref(), Some("n1"));
        let reference = address.target_ref.as_ref().unwrap();
        assert_eq!(reference.kind.as_deref(), Some("Pod"));
        assert_eq!(reference.name.as_deref(), Some("b"));
        assert_eq!(reference.namespace.as_deref(), Some("default"));
        assert_eq!(reference.uid.as_deref(), Some("uid-b"));
        assert_eq!(
            subsets[0].ports.as_ref().unwrap()[0].protocol.as_deref(),
            Some("TCP")
        );
    }

    #[test]
    fn identical_port_sets_share_one_subset() {
        let svc = web_service(serde_json::json!({}));
        let pods = vec![
            web_pod("a", "10.0.0.1", Some(8080), Some(20)),
            web_pod("b", "10.0.0.2", Some(8080), Some(20)),
        ];
        let subsets = created(plan(&svc, &pods, None)).subsets.unwrap();
        assert_eq!(subsets.len(), 1);
        assert_eq!(
            port_numbers(&subsets[0]),
            vec![("http".into(), 8080), ("metrics".into(), 9090)]
        );
        assert_eq!(ips(&subsets[0].addresses), ["10.0.0.1", "10.0.0.2"]);
    }

    #[test]
    fn not_ready_pods_are_listed_apart_unless_the_service_publishes_them() {
        let pods = vec![
            web_pod("ready", "10.0.0.1", Some(8080), Some(20)),
            web_pod("unready", "10.0.0.2", Some(8080), None),
        ];
        let subsets = created(plan(&web_service(serde_json::json!({})), &pods, None))
            .subsets
            .unwrap();
        assert_eq!(subsets.len(), 1);
        assert_eq!(ips(&subsets[0].addresses), ["10.0.0.1"]);
        assert_eq!(ips(&subsets[0].not_ready_addresses), ["10.0.0.2"]);

        let publishing = web_service(serde_json::json!({"publishNotReadyAddresses": true}));
        let subsets = created(plan(&publishing, &pods, None)).subsets.unwrap();
        assert_eq!(ips(&subsets[0].addresses), ["10.0.0.1", "10.0.0.2"]);
        assert!(subsets[0].not_ready_addresses.is_none());
    }

    #[test]
    fn terminating_terminal_ipless_and_unselected_pods_are_left_out() {
        let mut terminating = web_pod("terminating", "10.0.0.2", Some(8080), Some(20));
        terminating.metadata.deletion_timestamp = Some(time(90));
        let mut succeeded = web_pod("succeeded", "10.0.0.3", Some(8080), Some(20));
        succeeded.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let mut no_ip = web_pod("no-ip", "", Some(8080), None);
        no_ip.status.as_mut().unwrap().pod_ips = None;
        let mut other_app = web_pod("other", "10.0.0.4", Some(8080), Some(20));
        other_app.metadata.labels = Some([("app".to_string(), "db".to_string())].into());
        let mut other_namespace = web_pod("elsewhere", "10.0.0.5", Some(8080), Some(20));
        other_namespace.metadata.namespace = Some("other".into());
        let pods = vec![
            web_pod("ok", "10.0.0.1", Some(8080), Some(20)),
            terminating.clone(),
            succeeded,
            no_ip,
            other_app,
            other_namespace,
        ];
        let subsets = created(plan(&web_service(serde_json::json!({})), &pods, None))
            .subsets
            .unwrap();
        assert_eq!(subsets.len(), 1);
        assert_eq!(ips(&subsets[0].addresses), ["10.0.0.1"]);
        assert!(subsets[0].not_ready_addresses.is_none());

        // Publishing not-ready addresses keeps terminating pods, as ready addresses.
        let publishing = web_service(serde_json::json!({"publishNotReadyAddresses": true}));
        let subsets = created(plan(&publishing, &pods, None)).subsets.unwrap();
        assert_eq!(ips(&subsets[0].addresses), ["10.0.0.1", "10.0.0.2"]);
    }

    #[test]
    fn unchanged_endpoints_produce_no_write() {
        let svc = web_service(serde_json::json!({}));
        let pods = vec![
            web_pod("a", "10.0.0.1", Some(8080), Some(20)),
            web_pod("b", "10.0.0.2", Some(8081), None),
        ];
        let mut current = created(plan(&svc, &pods, None));
        current.metadata.resource_version = Some("7".into());
        // As read back: pod resourceVersions in the references, a different trigger time
        // and another order must not cause a write.
        for subset in current.subsets.as_mut().unwrap() {
            for address in subset.addresses.iter_mut().flatten() {
                address.target_ref.as_mut().unwrap().resource_version = Some("99".into());
            }
        }
        current.subsets.as_mut().unwrap().reverse();
        set_trigger_time(&mut current.metadata, Some(time(30).0));
        assert_eq!(plan(&svc, &pods, Some(&current)), EndpointsPlan::Unchanged);

        // A pod turning ready is a change, written over the observed resourceVersion.
        let mut now_ready = pods.clone();
        now_ready[1] = web_pod("b", "10.0.0.2", Some(8081), Some(50));
        let EndpointsPlan::Update(updated) = plan(&svc, &now_ready, Some(&current)) else {
            panic!("expected an update");
        };
        assert_eq!(updated.metadata.resource_version.as_deref(), Some("7"));
        // The trigger time is the earliest change after the one recorded: b ready at 50.
        assert_eq!(
            recorded_trigger_time(&updated.metadata),
            Some(time(50).0),
            "{:?}",
            updated.metadata.annotations
        );

        // A label change on the Service is a change too.
        let mut relabeled = svc.clone();
        relabeled.metadata.labels = Some([("team".to_string(), "b".to_string())].into());
        assert!(matches!(
            plan(&relabeled, &pods, Some(&current)),
            EndpointsPlan::Update(_)
        ));
    }

    #[test]
    fn services_without_selector_are_left_to_their_users() {
        let mut svc = web_service(serde_json::json!({}));
        svc.spec.as_mut().unwrap().selector = None;
        let pods = vec![web_pod("a", "10.0.0.1", Some(8080), Some(20))];
        assert_eq!(plan(&svc, &pods, None), EndpointsPlan::NotManaged);
        svc.spec.as_mut().unwrap().selector = Some(BTreeMap::new());
        assert!(plan(&svc, &pods, None).is_noop());
    }

    #[test]
    fn a_gone_service_deletes_its_endpoints_by_name_whatever_the_cache_holds() {
        // Nothing about the Endpoints is an input: the cache may not show Endpoints written
        // just before the Service's deletion, and they must go all the same.
        assert_eq!(
            plan_service_gone("default", "web", false),
            EndpointsPlan::Delete {
                namespace: "default".into(),
                name: "web".into()
            }
        );
        assert_eq!(
            plan_service_gone("default", "web", true),
            EndpointsPlan::Unchanged
        );
    }

    #[test]
    fn headless_service_labels_hostnames_and_portless_addresses() {
        let svc = web_service(serde_json::json!({"clusterIP": "None", "ports": []}));
        let mut with_hostname = web_pod("a", "10.0.0.1", None, Some(20));
        let spec = with_hostname.spec.as_mut().unwrap();
        spec.hostname = Some("web-0".into());
        spec.subdomain = Some("web".into());
        let mut other_subdomain = web_pod("b", "10.0.0.2", None, Some(20));
        let spec = other_subdomain.spec.as_mut().unwrap();
        spec.hostname = Some("web-1".into());
        spec.subdomain = Some("other".into());
        let endpoints = created(plan(&svc, &[with_hostname, other_subdomain], None));
        let labels = endpoints.metadata.labels.unwrap();
        assert_eq!(labels.get(HEADLESS_LABEL).map(String::as_str), Some(""));
        assert_eq!(labels.get("team").map(String::as_str), Some("a"));
        let subsets = endpoints.subsets.unwrap();
        assert_eq!(subsets.len(), 1);
        assert!(subsets[0].ports.is_none());
        let addresses = subsets[0].addresses.as_ref().unwrap();
        assert_eq!(addresses[0].hostname.as_deref(), Some("web-0"));
        assert_eq!(addresses[1].hostname, None);

        // A Service with a cluster IP and no ports lists nothing.
        let headful = web_service(serde_json::json!({"ports": []}));
        let pods = vec![web_pod("a", "10.0.0.1", None, Some(20))];
        let endpoints = created(plan(&headful, &pods, None));
        assert!(endpoints.subsets.is_none());
        assert!(!endpoints
            .metadata
            .labels
            .unwrap()
            .contains_key(HEADLESS_LABEL));
    }

    #[test]
    fn addresses_follow_the_service_ip_family() {
        let mut dual = web_pod("a", "10.0.0.1", Some(8080), Some(20));
        dual.status.as_mut().unwrap().pod_ips = Some(
            serde_json::from_value(serde_json::json!([{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]))
                .unwrap(),
        );
        let v6 =
            web_service(serde_json::json!({"clusterIP": "fd00:96::10", "ipFamilies": ["IPv6"]}));
        let subsets = created(plan(&v6, std::slice::from_ref(&dual), None))
            .subsets
            .unwrap();
        assert_eq!(ips(&subsets[0].addresses), ["fd00::1"]);
        let v4 = web_service(serde_json::json!({}));
        let subsets = created(plan(&v4, &[dual], None)).subsets.unwrap();
        assert_eq!(ips(&subsets[0].addresses), ["10.0.0.1"]);
        // A v4-only pod has no address for an IPv6 Service.
        let only_v4 = web_pod("b", "10.0.0.2", Some(8080), Some(20));
        assert!(created(plan(&v6, &[only_v4], None)).subsets.is_none());
    }

    #[test]
    fn not_ready_wins_when_a_pod_is_listed_twice_and_protocols_must_match() {
        let svc = web_service(serde_json::json!({"ports": [
            {"name": "dns", "port": 53, "targetPort": "dns", "protocol": "UDP"}
        ]}));
        let mut p = web_pod("a", "10.0.0.1", None, Some(20));
        p.spec.as_mut().unwrap().containers[0].ports = Some(
            serde_json::from_value(serde_json::json!([
                {"name": "dns", "containerPort": 5353, "protocol": "TCP"},
                {"name": "dns", "containerPort": 5354, "protocol": "UDP"}
            ]))
            .unwrap(),
        );
        let subsets = created(plan(&svc, &[p], None)).subsets.unwrap();
        assert_eq!(port_numbers(&subsets[0]), vec![("dns".into(), 5354)]);
        assert_eq!(
            subsets[0].ports.as_ref().unwrap()[0].protocol.as_deref(),
            Some("UDP")
        );

        // Two pods with the same IP and UID (a stale duplicate) collapse, not ready winning.
        let ready = web_pod("x", "10.0.0.9", Some(8080), Some(20));
        let unready = web_pod("x", "10.0.0.9", Some(8080), None);
        let subsets = created(plan(
            &web_service(serde_json::json!({})),
            &[ready, unready],
            None,
        ))
        .subsets
        .unwrap();
        assert_eq!(subsets.len(), 1);
        assert!(subsets[0].addresses.is_none());
        assert_eq!(ips(&subsets[0].not_ready_addresses), ["10.0.0.9"]);
    }

    #[test]
    fn over_capacity_truncates_keeping_ready_addresses() {
        let svc = web_service(serde_json::json!({"ports": [{"name": "http", "port": 80}]}));
        let pods: Vec<Pod> = (0..1100)
            .map(|i| {
                let ready = (i % 2 == 0).then_some(20);
                web_pod(
                    &format!("p{i}"),
                    &format!("10.1.{}.{}", i / 256, i % 256),
                    None,
                    ready,
                )
            })
            .collect();
        let endpoints = created(plan(&svc, &pods, None));
        let subsets = endpoints.subsets.as_ref().unwrap();
        assert_eq!(subsets.len(), 1);
        assert_eq!(subsets[0].addresses.as_ref().unwrap().len(), 550);
        assert_eq!(subsets[0].not_ready_addresses.as_ref().unwrap().len(), 450);
        assert_eq!(
            endpoints.metadata.annotations.as_ref().unwrap()[OVER_CAPACITY_ANNOTATION],
            "truncated"
        );
        // Truncated output is stable: planning again over it writes nothing.
        assert_eq!(
            plan(&svc, &pods, Some(&endpoints)),
            EndpointsPlan::Unchanged
        );
        // Back under capacity, the annotation goes.
        let EndpointsPlan::Update(smaller) = plan(&svc, &pods[..10], Some(&endpoints)) else {
            panic!("expected an update");
        };
        assert!(smaller
            .metadata
            .annotations
            .is_none_or(|a| !a.contains_key(OVER_CAPACITY_ANNOTATION)));
    }
}
