//! The `default/kubernetes` Service and its endpoints, kept pointing at every live server the
//! way kube-apiserver's lease endpoint reconciler does: each server renews a Lease
//! (`kube-system/apiserver-<address>`, labelled `apiserver.kubernetes.io/identity`) every few
//! seconds, and any server sets the Endpoints and EndpointSlice to the addresses whose Lease
//! has not expired. A server that stops removes its own Lease first, so the endpoints drop it
//! at once rather than after the Lease runs out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;

use axum::body::Bytes;
use axum::http::StatusCode;
use serde_json::{json, Value};
use shoal_common::catalog;
use time::OffsetDateTime;

use super::{bad_request, encode, store_error, Api, Target, SERVER_MANAGER};
use crate::status::ApiError;

/// How long a server's Lease holds without renewal (Kubernetes' master lease TTL).
pub const SERVER_LEASE_SECONDS: i64 = 15;
/// How often servers renew their Lease and reconcile the endpoints.
pub const SERVER_LEASE_RENEW: std::time::Duration = std::time::Duration::from_secs(5);

const IDENTITY_LABEL: &str = "apiserver.kubernetes.io/identity";
const ADDRESS_ANNOTATION: &str = "shoal.io/advertise-address";

fn lease_name(address: &SocketAddr) -> String {
    let text = address.to_string();
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("apiserver-{}", cleaned.trim_matches('-'))
}

fn micro_time(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.microsecond()
    )
}

/// The servers whose Lease is live at `now`, by address.
pub fn live_servers(leases: &[Value], now: OffsetDateTime) -> Vec<SocketAddr> {
    let mut live = BTreeSet::new();
    for lease in leases {
        let is_server = lease
            .pointer(&format!(
                "/metadata/labels/{}",
                IDENTITY_LABEL.replace('/', "~1")
            ))
            .and_then(Value::as_str)
            == Some("kube-apiserver");
        let address = lease
            .pointer(&format!(
                "/metadata/annotations/{}",
                ADDRESS_ANNOTATION.replace('/', "~1")
            ))
            .and_then(Value::as_str)
            .and_then(|a| a.parse::<SocketAddr>().ok());
        let renewed = lease
            .pointer("/spec/renewTime")
            .and_then(Value::as_str)
            .and_then(|t| {
                OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            });
        let duration = lease
            .pointer("/spec/leaseDurationSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(SERVER_LEASE_SECONDS);
        if let (true, Some(address), Some(renewed)) = (is_server, address, renewed) {
            if renewed + time::Duration::seconds(duration) > now {
                live.insert(address);
            }
        }
    }
    live.into_iter().collect()
}

/// The Endpoints and EndpointSlice bodies for `servers` (grouped by port, as Endpoints
/// subsets are).
fn endpoint_objects(servers: &[SocketAddr]) -> [(&'static str, &'static str, Value); 2] {
    let mut by_port: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for server in servers {
        by_port
            .entry(server.port())
            .or_default()
            .push(server.ip().to_string());
    }
    let subsets: Vec<Value> = by_port
        .iter()
        .map(|(port, ips)| {
            json!({"addresses": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
                   "ports": [{"name": "https", "port": port, "protocol": "TCP"}]})
        })
        .collect();
    let port = by_port.keys().next().copied().unwrap_or(6443);
    let family = match servers.first() {
        Some(SocketAddr::V6(_)) => "IPv6",
        _ => "IPv4",
    };
    let endpoints: Vec<Value> = servers
        .iter()
        .filter(|s| s.port() == port)
        .map(|s| json!({"addresses": [s.ip().to_string()], "conditions": {"ready": true}}))
        .collect();
    [
        (
            "",
            json!({"apiVersion": "v1", "kind": "Endpoints",
                "metadata": {"name": "kubernetes", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
                "subsets": subsets}),
        ),
        (
            "discovery.k8s.io",
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes",
                                                            "endpointslice.kubernetes.io/managed-by": "shoal-apiserver"}},
                "addressType": family,
                "endpoints": endpoints,
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}),
        ),
    ]
    .map(|(group, object)| {
        let plural = if group.is_empty() { "endpoints" } else { "endpointslices" };
        (group, plural, object)
    })
}

impl Api {
    fn server_address(&self) -> Result<SocketAddr, ApiError> {
        self.server_address.parse().map_err(|_| {
            bad_request(format!(
                "server address {:?} is not IP:PORT",
                self.server_address
            ))
        })
    }

    fn default_target(group: &str, plural: &str, namespace: &str) -> Result<Target, ApiError> {
        let def = catalog::find(group, "v1", plural)
            .ok_or_else(|| bad_request(format!("no {plural}")))?;
        Ok(Target {
            def,
            namespace: Some(namespace.into()),
            name: None,
            subresource: None,
        })
    }

    /// Creates `object` named `name`, or replaces it when it differs from what is stored.
    async fn put_system_object(
        &self,
        target: Target,
        name: &str,
        object: Value,
    ) -> Result<(), ApiError> {
        let named = Target {
            name: Some(name.into()),
            ..target.clone()
        };
        let no_query = HashMap::new();
        let body = Bytes::from(encode(&object)?);
        // Every server writes these objects: a write racing another server's (a conflict, or
        // a create that lost) is tried again on what is stored then.
        let mut attempts = 0;
        loop {
            let stored = self
                .store
                .get(&named.key())
                .await
                .map_err(|e| store_error(&named, name, e))?;
            let written = match stored {
                None => self.create(&target, &no_query, SERVER_MANAGER, &body).await,
                Some(_) => {
                    self.update(&named, name, &no_query, SERVER_MANAGER, &body)
                        .await
                }
            };
            attempts += 1;
            match written {
                Err(e) if e.code == StatusCode::CONFLICT && attempts < 5 => continue,
                written => return written.map(drop),
            }
        }
    }

    /// The `default/kubernetes` Service (the first address of the service range, port 443),
    /// this server's Lease, and the endpoints, as kube-apiserver keeps them.
    pub(super) async fn publish_kubernetes_service(&self) -> Result<(), ApiError> {
        let server = self.server_address()?;
        let target = Self::default_target("", "services", "default")?;
        let named = Target {
            name: Some("kubernetes".into()),
            ..target.clone()
        };
        let exists = self
            .store
            .get(&named.key())
            .await
            .map_err(|e| store_error(&named, "kubernetes", e))?
            .is_some();
        // The Service keeps its address once made; only the endpoints follow the servers.
        if !exists {
            let cluster_ip = self
                .service_ranges
                .cluster_ips
                .nth(1)
                .map(|ip| ip.to_string())
                .unwrap_or_default();
            let service = json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
                "spec": {"type": "ClusterIP", "clusterIP": cluster_ip,
                         "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": server.port()}]}});
            let body = Bytes::from(encode(&service)?);
            self.create(&target, &HashMap::new(), SERVER_MANAGER, &body)
                .await?;
        }
        self.renew_server_lease().await?;
        self.reconcile_kubernetes_endpoints().await
    }

    /// Renews this server's Lease (creating it if needed).
    pub async fn renew_server_lease(&self) -> Result<(), ApiError> {
        let server = self.server_address()?;
        let name = lease_name(&server);
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-system",
                         "labels": {IDENTITY_LABEL: "kube-apiserver"},
                         "annotations": {ADDRESS_ANNOTATION: server.to_string()}},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": SERVER_LEASE_SECONDS,
                     "renewTime": micro_time(OffsetDateTime::now_utc())}});
        let target = Self::default_target("coordination.k8s.io", "leases", "kube-system")?;
        self.put_system_object(target, &name, lease).await
    }

    /// Removes this server's Lease and takes it out of the endpoints (on shutdown).
    pub async fn release_server_lease(&self) -> Result<(), ApiError> {
        let server = self.server_address()?;
        let name = lease_name(&server);
        let target = Target {
            name: Some(name.clone()),
            ..Self::default_target("coordination.k8s.io", "leases", "kube-system")?
        };
        match self.store.delete(&target.key(), None).await {
            Ok(_) | Err(shoal_store::StoreError::NotFound { .. }) => {}
            Err(e) => return Err(store_error(&target, &name, e)),
        }
        self.reconcile_kubernetes_endpoints().await
    }

    /// Sets the `kubernetes` Endpoints and EndpointSlice to the live servers (unchanged objects
    /// are not rewritten). With no live Lease at all (a lone server whose Lease just lapsed),
    /// this server's own address is kept.
    pub async fn reconcile_kubernetes_endpoints(&self) -> Result<(), ApiError> {
        let leases_target = Self::default_target("coordination.k8s.io", "leases", "kube-system")?;
        let page = self
            .store
            .range(shoal_store::RangeRequest {
                prefix: leases_target.collection_prefix(),
                limit: 0,
                revision: None,
                continue_from: None,
            })
            .await
            .map_err(|e| store_error(&leases_target, "", e))?;
        let leases: Vec<Value> = page
            .kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect();
        let mut servers = live_servers(&leases, OffsetDateTime::now_utc());
        if servers.is_empty() {
            servers.push(self.server_address()?);
        }
        for (group, plural, object) in endpoint_objects(&servers) {
            let target = Self::default_target(group, plural, "default")?;
            let named = Target {
                name: Some("kubernetes".into()),
                ..target.clone()
            };
            let stored: Option<Value> = self
                .store
                .get(&named.key())
                .await
                .map_err(|e| store_error(&named, "kubernetes", e))?
                .and_then(|kv| serde_json::from_slice(&kv.value).ok());
            let unchanged = stored.as_ref().is_some_and(|s| {
                s.get("subsets") == object.get("subsets")
                    && s.get("endpoints") == object.get("endpoints")
                    && s.get("ports") == object.get("ports")
            });
            if !unchanged {
                self.put_system_object(target, "kubernetes", object).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn lease(address: &str, renewed: &str, identity: &str) -> Value {
        json!({"metadata": {"name": "x", "labels": {IDENTITY_LABEL: identity},
                            "annotations": {ADDRESS_ANNOTATION: address}},
               "spec": {"leaseDurationSeconds": 15, "renewTime": renewed}})
    }

    #[test]
    fn only_unexpired_server_leases_count() {
        let now = OffsetDateTime::parse(
            "2026-11-22T10:00:20Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        let leases = [
            lease(
                "10.0.0.2:6443",
                "2026-11-22T10:00:10.000000Z",
                "kube-apiserver",
            ),
            lease(
                "10.0.0.1:6443",
                "2026-11-22T10:00:19.500000Z",
                "kube-apiserver",
            ),
            // Expired 1 s ago.
            lease(
                "10.0.0.3:6443",
                "2026-11-22T10:00:04.000000Z",
                "kube-apiserver",
            ),
            // Not a server's Lease.
            lease(
                "10.0.0.4:6443",
                "2026-11-22T10:00:19.000000Z",
                "something-else",
            ),
            json!({"metadata": {"name": "node-lease"}, "spec": {}}),
        ];
        let live: Vec<String> = live_servers(&leases, now)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(live, ["10.0.0.1:6443", "10.0.0.2:6443"]);
    }

    #[test]
    fn endpoints_list_every_server() {
        let servers: Vec<SocketAddr> = vec![
            "10.0.0.1:6443".parse().unwrap(),
            "10.0.0.2:6443".parse().unwrap(),
        ];
        let [(_, plural, endpoints), (_, slice_plural, slice)] = endpoint_objects(&servers);
        assert_eq!((plural, slice_plural), ("endpoints", "endpointslices"));
        assert_eq!(
            endpoints["subsets"],
            json!([{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}],
                    "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]}])
        );
        assert_eq!(slice["endpoints"].as_array().unwrap().len(), 2);
        assert_eq!(slice["addressType"], "IPv4");
    }

    #[test]
    fn lease_names_are_valid_object_names() {
        assert_eq!(
            lease_name(&"10.0.0.1:6443".parse().unwrap()),
            "apiserver-10-0-0-1-6443"
        );
        assert_eq!(
            lease_name(&"[fd00::1]:6443".parse().unwrap()),
            "apiserver-fd00--1--6443"
        );
        assert!(micro_time(OffsetDateTime::UNIX_EPOCH).ends_with(".000000Z"));
    }
}
