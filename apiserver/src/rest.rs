//! The resource endpoints: get, list, create, update (and `status`), delete and
//! deletecollection for every kind in the catalogue, over the store. Objects are stored as JSON
//! under `/registry/<group>/<plural>/[<namespace>/]<name>`; an object's resourceVersion is its
//! key's `mod_revision`, so compare-and-swap in the store is what turns a stale update into 409.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ring::rand::SecureRandom as _;
use serde_json::{json, Value};
use shoal_common::catalog::{self, ResourceDef, SYSTEM_NAMESPACES};
use shoal_store::{ContinueToken, KeyValue, RangeRequest, Revision, Store, StoreError};
use time::OffsetDateTime;

use crate::allocator::{self, Allocation, ServiceRanges, Want};
use crate::convert;
use crate::managed_fields::{self, ApplyError, ApplyOptions, FieldManager, UpdateOptions};
use crate::objects::{self, Invalid};
use crate::patch::{self, PatchKind};
use crate::protobuf::{self, ProtobufError};
use crate::selectors::Selection;
use crate::status::ApiError;
use crate::table;

mod kubernetes_service;
pub use kubernetes_service::{SERVER_LEASE_RENEW, SERVER_LEASE_SECONDS};

/// The API's shared state.
pub struct Api {
    pub store: Arc<dyn Store>,
    /// The custom resources CRDs define.
    pub crds: Arc<crate::crd::CrdRegistry>,
    /// Decoded watch events shared by all watches.
    pub events: Arc<crate::watch::EventCache>,
    /// `host:port` clients reach this server at (for `/api`).
    pub server_address: String,
    /// Where Service ClusterIPs and NodePorts come from.
    pub service_ranges: ServiceRanges,
    /// `/openapi/v2`, encoded once per set of CRDs.
    pub openapi_v2: crate::openapi::v2::Cache,
    /// TLS for calls to nodes' own APIs (`pods/log`); `None` when no node can be reached.
    pub node_client: Option<Arc<rustls::ClientConfig>>,
    /// Admits joining nodes; `None` when this server takes no nodes from elsewhere.
    pub join: Option<Arc<crate::join::JoinAuthority>>,
    /// Issues and verifies ServiceAccount tokens; `None` serves no TokenRequest API and
    /// accepts no bearer tokens.
    pub service_accounts: Option<Arc<crate::service_account::TokenSigner>>,
}

impl Api {
    /// An API over `store` with no CRDs loaded yet and the default Service ranges.
    pub fn new(store: Arc<dyn Store>, server_address: String) -> Api {
        Api {
            store,
            crds: Arc::default(),
            events: Arc::default(),
            server_address,
            service_ranges: ServiceRanges::default(),
            openapi_v2: Default::default(),
            node_client: None,
            join: None,
            service_accounts: None,
        }
    }
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("server_address", &self.server_address)
            .finish_non_exhaustive()
    }
}

/// What a resource URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub def: &'static ResourceDef,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

impl Target {
    fn key(&self) -> String {
        let name = self.name.as_deref().unwrap_or_default();
        match &self.namespace {
            Some(ns) if self.def.namespaced => format!("{}{ns}/{name}", self.def.key_prefix()),
            _ => format!("{}{name}", self.def.key_prefix()),
        }
    }

    fn collection_prefix(&self) -> String {
        match &self.namespace {
            Some(ns) if self.def.namespaced => format!("{}{ns}/", self.def.key_prefix()),
            _ => self.def.key_prefix(),
        }
    }

    /// How messages name the resource: `pods`, `deployments.apps`.
    fn display(&self) -> String {
        if self.def.group.is_empty() {
            self.def.plural.to_string()
        } else {
            format!("{}.{}", self.def.plural, self.def.group)
        }
    }
}

/// The subresources a kind has.
fn has_subresource(def: &ResourceDef, sub: &str) -> bool {
    match sub {
        "status" => def.status,
        "scale" => def.scale,
        "finalize" => def.kind == "Namespace",
        "binding" | "eviction" | "log" | "exec" | "attach" | "portforward" => def.kind == "Pod",
        "proxy" => matches!(def.kind, "Pod" | "Service" | "Node"),
        "token" => def.kind == "ServiceAccount",
        _ => false,
    }
}

/// Parses the part of a resource URL after `/api/v1/` or `/apis/<group>/<version>/` for the
/// built-in kinds.
pub fn parse_target(group: &str, version: &str, rest: &str) -> Option<Target> {
    parse_target_with(&|plural| catalog::find(group, version, plural), rest)
}

/// Parses a resource URL with `find` naming the resources of its group-version.
pub fn parse_target_with(
    find: &dyn Fn(&str) -> Option<&'static ResourceDef>,
    rest: &str,
) -> Option<Target> {
    let segs: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return None;
    }
    let owned = |s: &str| Some(s.to_string());
    let target = match segs.as_slice() {
        ["namespaces", ns, plural, rest @ ..] if find(plural).is_some_and(|d| d.namespaced) => {
            let def = find(plural)?;
            match rest {
                [] => Target {
                    def,
                    namespace: owned(ns),
                    name: None,
                    subresource: None,
                },
                [name] => Target {
                    def,
                    namespace: owned(ns),
                    name: owned(name),
                    subresource: None,
                },
                [name, sub] => Target {
                    def,
                    namespace: owned(ns),
                    name: owned(name),
                    subresource: owned(sub),
                },
                _ => return None,
            }
        }
        [plural, rest @ ..] => {
            let def = find(plural)?;
            match rest {
                [] => Target {
                    def,
                    namespace: None,
                    name: None,
                    subresource: None,
                },
                [name] if !def.namespaced => Target {
                    def,
                    namespace: None,
                    name: owned(name),
                    subresource: None,
                },
                [name, sub] if !def.namespaced => Target {
                    def,
                    namespace: None,
                    name: owned(name),
                    subresource: owned(sub),
                },
                _ => return None,
            }
        }
        [] => return None,
    };
    if target
        .subresource
        .as_deref()
        .is_some_and(|sub| !has_subresource(target.def, sub))
    {
        return None;
    }
    Some(target)
}

/// The manager the server's own writes are recorded under.
const SERVER_MANAGER: &str = "shoal-apiserver";

fn now() -> String {
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // The system RNG failing is not something a request can recover from; fall back to the
    // clock so names stay unique enough to retry.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        let nanos = OffsetDateTime::now_utc()
            .unix_timestamp_nanos()
            .to_le_bytes();
        for (b, n) in bytes.iter_mut().zip(nanos.iter().cycle()) {
            *b = *n;
        }
    }
    bytes
}

fn new_uid() -> String {
    let mut b: [u8; 16] = random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn not_found(target: &Target, name: &str) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{} \"{name}\" not found", target.display()),
    );
    e.details = Some(json!({"name": name, "group": target.def.group, "kind": target.def.plural}));
    e
}

fn invalid(target: &Target, name: &str, err: Invalid) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        format!(
            "{} \"{name}\" is invalid: {}: {}",
            target.def.kind, err.field, err.message
        ),
    );
    e.details = Some(json!({
        "name": name, "group": target.def.group, "kind": target.def.kind,
        "causes": [{"reason": "FieldValueInvalid", "message": err.message, "field": err.field}],
    }));
    e
}

/// What a DELETE's `DeleteOptions` (query and body) ask beyond the plan: preconditions.
#[derive(Default)]
struct DeletePreconditions {
    uid: Option<String>,
    resource_version: Option<String>,
}

impl DeletePreconditions {
    fn check(&self, object: &Value, mod_revision: Revision) -> Result<(), ApiError> {
        let actual_uid = object.pointer("/metadata/uid").and_then(Value::as_str);
        if let Some(uid) = &self.uid {
            if actual_uid != Some(uid.as_str()) {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        actual_uid.unwrap_or_default()
                    ),
                ));
            }
        }
        if let Some(rv) = &self.resource_version {
            if *rv != mod_revision.to_string() {
                return Err(ApiError::new(StatusCode::CONFLICT, "Conflict", format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {mod_revision}"
                )));
            }
        }
        Ok(())
    }
}

/// A DELETE's options: grace period and propagation from the query, overridden by a
/// `DeleteOptions` body, and the body's preconditions.
fn parse_delete_options(
    query: &HashMap<String, String>,
    body: &Bytes,
) -> Result<(objects::DeleteOptions, DeletePreconditions), ApiError> {
    let mut delete_options = objects::DeleteOptions {
        grace_period_seconds: query.get("gracePeriodSeconds").and_then(|g| g.parse().ok()),
        propagation_policy: query.get("propagationPolicy").cloned(),
    };
    let mut preconditions = DeletePreconditions::default();
    if body.is_empty() {
        return Ok((delete_options, preconditions));
    }
    let options: Value =
        serde_json::from_slice(body).map_err(|e| bad_request(format!("DeleteOptions: {e}")))?;
    if let Some(grace) = options.get("gracePeriodSeconds").and_then(Value::as_i64) {
        delete_options.grace_period_seconds = Some(grace);
    }
    if let Some(policy) = options.get("propagationPolicy").and_then(Value::as_str) {
        delete_options.propagation_policy = Some(policy.to_string());
    } else if options.get("orphanDependents").and_then(Value::as_bool) == Some(true) {
        delete_options.propagation_policy = Some("Orphan".into());
    }
    let text = |pointer: &str| {
        options
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(String::from)
    };
    preconditions.uid = text("/preconditions/uid");
    preconditions.resource_version = text("/preconditions/resourceVersion");
    Ok((delete_options, preconditions))
}

fn store_error(target: &Target, name: &str, err: StoreError) -> ApiError {
    let details = Some(json!({"name": name, "group": target.def.group, "kind": target.def.plural}));
    let mut e = match err {
        StoreError::AlreadyExists { .. } => ApiError::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", target.display()),
        ),
        StoreError::Conflict { .. } => ApiError::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                target.display()
            ),
        ),
        StoreError::NotFound { .. } => return not_found(target, name),
        StoreError::Compacted { requested, compacted } => ApiError::new(
            StatusCode::GONE,
            "Expired",
            format!("too old resource version: {requested} ({compacted})"),
        ),
        StoreError::ValueTooLarge { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            "Request entity too large: the object is larger than 1.5 MiB",
        ),
        StoreError::InvalidContinue(m) => bad_request(format!("invalid continue token: {m}")),
        StoreError::FutureRevision { requested, .. } => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            format!("Too large resource version: {requested}"),
        ),
        StoreError::Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", m),
        // Kubernetes answers 504 when etcd gives no answer in time (no leader, no quorum).
        StoreError::NoQuorum(m) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "Timeout", m),
        other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", other.to_string()),
    };
    e.details = details;
    e
}

/// A stored object as `def` serves it, with its resourceVersion.
fn decode(def: &ResourceDef, kv: &KeyValue) -> Result<Value, ApiError> {
    serde_json::from_slice::<Value>(&kv.value)
        .map(|o| objects::with_resource_version(convert::to_served(def, o), kv.mod_revision))
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("stored object {}: {e}", kv.key),
            )
        })
}

/// An object `def` serves, encoded as it is stored.
fn encode_stored(def: &ResourceDef, object: &Value) -> Result<Vec<u8>, ApiError> {
    if def.converted() {
        encode(&convert::to_storage(def, object.clone()))
    } else {
        encode(object)
    }
}

fn encode(object: &Value) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(object).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        )
    })
}

/// A list's items, encoded as they are read.
#[derive(Debug, Default)]
struct EncodedItems {
    bytes: Vec<u8>,
    count: usize,
}

impl EncodedItems {
    /// Appends `object`; returns how many items there are now.
    fn push(&mut self, object: &Value) -> Result<usize, ApiError> {
        if self.count > 0 {
            self.bytes.push(b',');
        }
        serde_json::to_writer(&mut self.bytes, object).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                e.to_string(),
            )
        })?;
        self.count += 1;
        Ok(self.count)
    }

    /// The list response, byte for byte what encoding it as one JSON tree gives (keys in
    /// order: `apiVersion`, `items`, `kind`, `metadata`).
    fn into_list(self, kind: &str, api_version: &str, metadata: &Value) -> Response {
        let mut body = Vec::with_capacity(self.bytes.len() + 256);
        body.extend_from_slice(b"{\"apiVersion\":");
        // Strings and a `Value` always encode.
        let _ = serde_json::to_writer(&mut body, api_version);
        body.extend_from_slice(b",\"items\":[");
        body.extend_from_slice(&self.bytes);
        body.extend_from_slice(b"],\"kind\":");
        let _ = serde_json::to_writer(&mut body, kind);
        body.extend_from_slice(b",\"metadata\":");
        let _ = serde_json::to_writer(&mut body, metadata);
        body.push(b'}');
        (
            [(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response()
    }
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(bad_request("the request body is empty"));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        bad_request(format!(
            "the body of the request was in an unknown format: {e}"
        ))
    })?;
    if !value.is_object() {
        return Err(bad_request("the body must be a JSON object"));
    }
    Ok(value)
}

fn dry_run(query: &HashMap<String, String>) -> Result<bool, ApiError> {
    match query.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(bad_request(format!(
            "unsupported dryRun value {other:?} (only All)"
        ))),
    }
}

impl Api {
    /// Creates what every cluster starts with: the system namespaces.
    pub async fn bootstrap(&self) -> Result<(), ApiError> {
        let def =
            catalog::find("", "v1", "namespaces").ok_or_else(|| bad_request("no namespaces"))?;
        for ns in SYSTEM_NAMESPACES {
            let target = Target {
                def,
                namespace: None,
                name: Some(ns.into()),
                subresource: None,
            };
            let object = namespace_object(json!({"metadata": {"name": ns}}));
            let object = objects::prepare_create(def, None, object, &now(), &new_uid(), "")
                .map_err(|e| invalid(&target, ns, e))?;
            match self.store.create(&target.key(), encode(&object)?).await {
                Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
                Err(e) => return Err(store_error(&target, ns, e)),
            }
        }
        self.publish_kubernetes_service().await?;
        self.publish_cluster_dns_service().await
    }

    // --- cluster DNS: the `kube-system/kube-dns` Service ---
    /// The `kube-system/kube-dns` Service as k3s has it (served by every node's agent, with no
    /// DNS pods, so no selector): it holds the cluster DNS address so no other Service gets
    /// it. Created once; an address already taken by another Service is logged, not fatal.
    async fn publish_cluster_dns_service(&self) -> Result<(), ApiError> {
        let Some(dns) = self.service_ranges.cluster_dns else {
            return Ok(());
        };
        let def = catalog::find("", "v1", "services").ok_or_else(|| bad_request("no services"))?;
        let target = Target {
            def,
            namespace: Some("kube-system".into()),
            name: None,
            subresource: None,
        };
        let named = Target {
            name: Some("kube-dns".into()),
            ..target.clone()
        };
        let exists = self
            .store
            .get(&named.key())
            .await
            .map_err(|e| store_error(&named, "kube-dns", e))?
            .is_some();
        if exists {
            return Ok(());
        }
        let object = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kube-dns",
                "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true",
                           "kubernetes.io/name": "CoreDNS"},
                "annotations": {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"}},
            "spec": {"type": "ClusterIP", "clusterIP": dns.to_string(), "clusterIPs": [dns.to_string()],
                     "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                               {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                               {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}]}});
        let body = Bytes::from(encode(&object)?);
        if let Err(err) = self
            .create(&target, &HashMap::new(), SERVER_MANAGER, &body)
            .await
        {
            tracing::warn!(address = %dns, error = %err.message, "cannot reserve the cluster DNS address with kube-system/kube-dns");
        }
        Ok(())
    }
    // --- end cluster DNS ---

    async fn namespace_exists(&self, ns: &str) -> Result<bool, ApiError> {
        let key = format!("/registry/core/namespaces/{ns}");
        let target_def =
            catalog::find("", "v1", "namespaces").ok_or_else(|| bad_request("no namespaces"))?;
        let target = Target {
            def: target_def,
            namespace: None,
            name: Some(ns.into()),
            subresource: None,
        };
        Ok(self
            .store
            .get(&key)
            .await
            .map_err(|e| store_error(&target, ns, e))?
            .is_some())
    }

    /// The pod, its node's API address and the TLS to reach it.
    async fn pod_and_node(
        &self,
        target: &Target,
        name: &str,
    ) -> Result<(Value, String, Arc<rustls::ClientConfig>), ApiError> {
        let pod = decode(target.def, &self.existing(target, name).await?)?;
        let Some(node_name) = pod.pointer("/spec/nodeName").and_then(Value::as_str) else {
            return Err(bad_request(format!(
                "pod {name} does not have a host assigned"
            )));
        };
        let node_key = shoal_common::catalog::find("", "v1", "nodes")
            .map(|def| format!("{}{node_name}", def.key_prefix()))
            .unwrap_or_default();
        let node = match self.store.get(&node_key).await {
            Ok(Some(kv)) => serde_json::from_slice::<Value>(&kv.value).ok(),
            _ => None,
        };
        let address = node
            .as_ref()
            .and_then(crate::node_proxy::node_address)
            .ok_or_else(|| {
                bad_request(format!("node {node_name} has no address to reach it at"))
            })?;
        let tls = self.node_client.clone().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "this server cannot reach nodes".to_string(),
            )
        })?;
        Ok((pod, address, tls))
    }

    /// `pods/exec`, `pods/attach`, `pods/portforward`: upgrades passed on to the pod's node.
    pub async fn pod_stream(
        &self,
        namespace: &str,
        name: &str,
        subresource: &str,
        request: axum::extract::Request,
    ) -> Result<Response, ApiError> {
        let Some(target) = parse_target(
            "",
            "v1",
            &format!("namespaces/{namespace}/pods/{name}/{subresource}"),
        ) else {
            return Err(ApiError::not_found_path(subresource));
        };
        let (pod, address, tls) = self.pod_and_node(&target, name).await?;
        let query = request.uri().query().unwrap_or_default().to_string();
        let path = match subresource {
            "portforward" => format!("/portForward/{namespace}/{name}?{query}"),
            "exec" | "attach" => {
                let requested = query
                    .split('&')
                    .find_map(|p| p.strip_prefix("container="))
                    .map(str::to_string);
                let container = crate::node_proxy::log_container(&pod, requested.as_deref())?;
                let kind = if subresource == "exec" {
                    "exec"
                } else {
                    "attach"
                };
                format!("/{kind}/{namespace}/{name}/{container}?{query}")
            }
            other => return Err(ApiError::not_found_path(other)),
        };
        crate::node_proxy::upgrade(tls, &address, &path, request).await
    }

    /// `pods/log`: passed on to the node the pod runs on.
    async fn pod_log(
        &self,
        target: &Target,
        name: &str,
        query: &HashMap<String, String>,
    ) -> Result<Response, ApiError> {
        let (pod, address, tls) = self.pod_and_node(target, name).await?;
        let container =
            crate::node_proxy::log_container(&pod, query.get("container").map(String::as_str))?;
        let namespace = target.namespace.as_deref().unwrap_or("default");
        let path = crate::node_proxy::log_path(namespace, name, &container, query);
        crate::node_proxy::get(tls, &address, &path).await
    }

    /// The stored object `target` names, or NotFound.
    async fn existing(&self, target: &Target, name: &str) -> Result<KeyValue, ApiError> {
        self.store
            .get(&target.key())
            .await
            .map_err(|e| store_error(target, name, e))?
            .ok_or_else(|| not_found(target, name))
    }

    async fn get(&self, target: &Target, name: &str, accept: &str) -> Result<Response, ApiError> {
        let object = decode(target.def, &self.existing(target, name).await?)?;
        let rendering = table::Rendering::from_accept(accept);
        match target.subresource.as_deref() {
            None if rendering == table::Rendering::Table => {
                let rv = object
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                Ok(Json(self.table(target, &[object], &rv, None)).into_response())
            }
            None if rendering == table::Rendering::Metadata => {
                Ok(Json(table::partial_metadata(&object)).into_response())
            }
            None | Some("status") => Ok(Json(object).into_response()),
            Some("scale") if target.def.scale => Ok(Json(scale_of(&object)).into_response()),
            Some(other) => Err(ApiError::not_found_path(other)),
        }
    }

    /// `objects` as a Table with the kind's columns (a CRD's printer columns when it has any).
    fn table(
        &self,
        target: &Target,
        objects: &[Value],
        resource_version: &str,
        continue_token: Option<&str>,
    ) -> Value {
        let columns = self
            .crds
            .find(target.def.group, target.def.version, target.def.plural)
            .map(|s| s.columns);
        table::table(
            target.def.kind,
            columns.as_deref().map(Vec::as_slice),
            objects,
            resource_version,
            continue_token,
        )
    }

    async fn list(
        &self,
        target: &Target,
        query: &HashMap<String, String>,
        accept: &str,
    ) -> Result<Response, ApiError> {
        let selection = Selection::from_query(query, target.def.kind).map_err(bad_request)?;
        let limit: usize = match query.get("limit").map(String::as_str) {
            None | Some("") | Some("0") => 0,
            Some(n) => n
                .parse()
                .map_err(|_| bad_request(format!("invalid limit {n:?}")))?,
        };
        let mut continue_from = match query.get("continue").map(String::as_str) {
            None | Some("") => None,
            Some(token) => {
                Some(ContinueToken::decode(token).map_err(|e| bad_request(e.to_string()))?)
            }
        };
        let prefix = target.collection_prefix();
        let page_size = if limit == 0 { 0 } else { limit.max(100) };
        let rendering = table::Rendering::from_accept(accept);
        // Plain lists are encoded item by item as they are read, each object dropped once
        // written, instead of holding every object and then the whole list as one tree.
        let mut encoded = (rendering == table::Rendering::Object).then(EncodedItems::default);
        let mut items = Vec::new();
        let mut revision;
        let mut next_token = None;
        'pages: loop {
            let page = self
                .store
                .range(RangeRequest {
                    prefix: prefix.clone(),
                    limit: page_size,
                    revision: None,
                    continue_from: continue_from.take(),
                })
                .await
                .map_err(|e| store_error(target, "", e))?;
            revision = page.revision;
            let count = page.kvs.len();
            for (i, kv) in page.kvs.iter().enumerate() {
                let object = decode(target.def, kv)?;
                if selection.matches(&object) {
                    let matched = match &mut encoded {
                        Some(encoded) => encoded.push(&object)?,
                        None => {
                            items.push(object);
                            items.len()
                        }
                    };
                    if limit > 0 && matched == limit {
                        if i + 1 < count || page.next.is_some() {
                            next_token = Some(ContinueToken {
                                revision: page.revision,
                                after_key: kv.key.clone(),
                            });
                        }
                        break 'pages;
                    }
                }
            }
            match page.next {
                Some(token) => continue_from = Some(token),
                None => break,
            }
        }
        let rv = revision.to_string();
        let token = next_token.map(|t| t.encode());
        if rendering == table::Rendering::Table {
            return Ok(Json(self.table(target, &items, &rv, token.as_deref())).into_response());
        }
        let mut metadata = json!({"resourceVersion": rv});
        if let Some(token) = token {
            metadata["continue"] = json!(token);
        }
        if let Some(encoded) = encoded {
            let kind = format!("{}List", target.def.kind);
            return Ok(encoded.into_list(&kind, &target.def.api_version(), &metadata));
        }
        let (kind, api_version, items) = if rendering == table::Rendering::Metadata {
            let items: Vec<Value> = items.iter().map(table::partial_metadata).collect();
            (
                "PartialObjectMetadataList".to_string(),
                "meta.k8s.io/v1".to_string(),
                items,
            )
        } else {
            (
                format!("{}List", target.def.kind),
                target.def.api_version(),
                items,
            )
        };
        Ok(Json(json!({
            "kind": kind,
            "apiVersion": api_version,
            "metadata": metadata,
            "items": items,
        }))
        .into_response())
    }

    async fn create(
        &self,
        target: &Target,
        query: &HashMap<String, String>,
        manager: &str,
        body: &Bytes,
    ) -> Result<Response, ApiError> {
        let object = parse_body(body)?;
        self.create_object(target, query, Some(manager), object)
            .await
    }

    /// Creates `object`; `manager` records the write in `managedFields` (None when an apply
    /// already did).
    async fn create_object(
        &self,
        target: &Target,
        query: &HashMap<String, String>,
        manager: Option<&str>,
        mut object: Value,
    ) -> Result<Response, ApiError> {
        if target.def.kind == "Namespace" {
            object = namespace_object(object);
        }
        // An apply recorded its fields already; creation would otherwise drop them.
        let applied_fields = match manager {
            None => object.pointer("/metadata/managedFields").cloned(),
            Some(_) => None,
        };
        if target.def.kind == "Pod" {
            self.admit_pod(target, &mut object).await?;
        }
        let suffix = objects::name_suffix(random());
        let name_hint = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let object = objects::prepare_create(
            target.def,
            target.namespace.as_deref(),
            object,
            &now(),
            &new_uid(),
            &suffix,
        )
        .map_err(|e| invalid(target, &name_hint, e))?;
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut object = object;
        self.validate_custom(target, &name, &mut object)?;
        let (object, warnings) = self.validate_fields(target, query, object)?;
        if let Some(ns) = target
            .namespace
            .as_deref()
            .filter(|_| target.def.namespaced)
        {
            if !self.namespace_exists(ns).await? {
                let ns_def = catalog::find("", "v1", "namespaces")
                    .ok_or_else(|| bad_request("no namespaces"))?;
                let ns_target = Target {
                    def: ns_def,
                    namespace: None,
                    name: Some(ns.into()),
                    subresource: None,
                };
                return Err(not_found(&ns_target, ns));
            }
        }
        let stored = Target {
            name: Some(name.clone()),
            ..target.clone()
        };
        let mut object = object;
        match (manager, applied_fields) {
            (Some(manager), _) => self.track(target, None, &mut object, manager),
            (None, Some(fields)) => {
                if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("managedFields".into(), fields);
                }
            }
            (None, None) => {}
        }
        let service_plan = self.service_plan(target, &name, None, &mut object)?;
        if dry_run(query)? {
            return Ok(warn(
                (StatusCode::CREATED, Json(object)).into_response(),
                &warnings,
            ));
        }
        let reserved = match &service_plan {
            Some(plan) => self.reserve(target, &name, plan, &mut object).await?,
            None => Vec::new(),
        };
        let kv = match self
            .store
            .create(&stored.key(), encode_stored(target.def, &object)?)
            .await
        {
            Ok(kv) => kv,
            Err(e) => {
                self.release(&reserved).await;
                return Err(store_error(target, &name, e));
            }
        };
        let response = (
            StatusCode::CREATED,
            Json(objects::with_resource_version(object, kv.mod_revision)),
        )
            .into_response();
        Ok(warn(response, &warnings))
    }

    async fn update(
        &self,
        target: &Target,
        name: &str,
        query: &HashMap<String, String>,
        manager: &str,
        body: &Bytes,
    ) -> Result<Response, ApiError> {
        let object = parse_body(body)?;
        if let Some(given) = object.pointer("/metadata/name").and_then(Value::as_str) {
            if given != name {
                return Err(bad_request(format!(
                    "the name of the object ({given}) does not match the name on the URL ({name})"
                )));
            }
        }
        let current = self.existing(target, name).await?;
        let stored: Value = serde_json::from_slice(&current.value)
            .map(|o| convert::to_served(target.def, o))
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    e.to_string(),
                )
            })?;
        if let Some(rv) = object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            let rv: i64 = rv
                .parse()
                .map_err(|_| bad_request(format!("invalid resourceVersion {rv:?}")))?;
            if rv != current.mod_revision {
                return Err(store_error(
                    target,
                    name,
                    StoreError::Conflict {
                        key: String::new(),
                        expected: rv,
                        current: None,
                    },
                ));
            }
        }
        if let Some((given, have)) = objects::uid_mismatch(&stored, &object) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": StorageError: invalid object, Code: 4, Key: {}, ResourceVersion: 0, AdditionalErrorMsg: Precondition failed: UID in precondition: {given}, UID in object meta: {have}",
                    target.display(),
                    target.key()
                ),
            ));
        }
        let updated = match target.subresource.as_deref() {
            None => objects::prepare_update(target.def, &stored, object)
                .map_err(|e| invalid(target, name, e))?,
            Some("status") if target.def.status => objects::prepare_status_update(&stored, &object),
            Some("scale") if target.def.scale => with_replicas(target, name, &stored, &object)?,
            Some(other) => return Err(ApiError::not_found_path(other)),
        };
        self.write_back(
            target,
            name,
            query,
            &stored,
            updated,
            current.mod_revision,
            Some(manager),
        )
        .await?
        .ok_or_else(|| conflict(target, name))
    }

    /// PATCH: applies the patch to the current object and stores the result with
    /// compare-and-swap, retrying on a concurrent write unless the patch itself pinned a
    /// resourceVersion (as Kubernetes does).
    async fn patch(
        &self,
        target: &Target,
        name: &str,
        query: &HashMap<String, String>,
        manager: &str,
        content_type: &str,
        body: &Bytes,
    ) -> Result<Response, ApiError> {
        let kind = PatchKind::from_content_type(content_type).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"),
            )
        })?;
        if kind == PatchKind::Apply {
            return self.apply(target, name, query, body).await;
        }
        self.guaranteed_update(target, name, move |current| async move {
            let Current {
                object: stored,
                revision,
            } = current;
            let mut patched = match target.subresource.as_deref() {
                Some("scale") => scale_of(&stored),
                _ => stored.clone(),
            };
            let rv_before = patched.pointer("/metadata/resourceVersion").cloned();
            patch::apply(kind, &mut patched, body).map_err(|m| match kind {
                PatchKind::Json => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", m),
                _ => bad_request(m),
            })?;
            let pinned = patched.pointer("/metadata/resourceVersion").cloned();
            if pinned.is_some() && pinned != rv_before {
                return Err(conflict(target, name));
            }
            let updated = match target.subresource.as_deref() {
                None => objects::prepare_update(target.def, &stored, patched)
                    .map_err(|e| invalid(target, name, e))?,
                Some("status") => objects::prepare_status_update(&stored, &patched),
                Some("scale") => with_replicas(target, name, &stored, &patched)?,
                Some(other) => return Err(ApiError::not_found_path(other)),
            };
            let written = self
                .write_back(
                    target,
                    name,
                    query,
                    &stored,
                    updated,
                    revision,
                    Some(manager),
                )
                .await?;
            Ok(written.map_or(Attempt::Changed, Attempt::Done))
        })
        .await
    }

    async fn delete(
        &self,
        target: &Target,
        name: &str,
        query: &HashMap<String, String>,
        body: &Bytes,
    ) -> Result<Response, ApiError> {
        if target.def.kind == "Namespace"
            && ["default", "kube-system", "kube-public"].contains(&name)
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
            ));
        }
        let (delete_options, preconditions) = parse_delete_options(query, body)?;
        // As Kubernetes' registry does, a delete without a resourceVersion precondition retries
        // when a controller's write lands between the read and the conditional delete: the
        // client asked to delete the object, whatever version it is now.
        let (delete_options, preconditions) = (&delete_options, &preconditions);
        self.guaranteed_update(target, name, move |current| async move {
            let Current { object, revision } = current;
            preconditions.check(&object, revision)?;
            let now = OffsetDateTime::now_utc().unix_timestamp();
            let action = if target.def.kind == "Namespace" {
                objects::DeleteAction::Remove
            } else {
                objects::plan_delete(target.def, &object, delete_options, now)
                    .map_err(bad_request)?
            };
            if dry_run(query)? {
                return Ok(Attempt::Done(Json(object).into_response()));
            }
            let written = match action {
                objects::DeleteAction::Remove => {
                    if target.def.kind == "Namespace" {
                        self.delete_namespace_contents(name).await?;
                    }
                    if target.def.kind == "CustomResourceDefinition" {
                        self.delete_custom_objects(&object).await?;
                    }
                    self.store
                        .delete(&target.key(), Some(revision))
                        .await
                        .map(|_| (Json(&object).into_response(), true))
                }
                objects::DeleteAction::Mark(mut marked) => {
                    if let Some(meta) = marked.get_mut("metadata").and_then(Value::as_object_mut) {
                        meta.remove("resourceVersion");
                    }
                    let encoded = encode_stored(target.def, &marked)?;
                    self.store
                        .update(&target.key(), encoded, revision)
                        .await
                        .map(|kv| {
                            let marked = objects::with_resource_version(marked, kv.mod_revision);
                            ((StatusCode::ACCEPTED, Json(marked)).into_response(), false)
                        })
                }
                objects::DeleteAction::Unchanged => {
                    let response = (StatusCode::ACCEPTED, Json(object)).into_response();
                    return Ok(Attempt::Done(response));
                }
            };
            match written {
                Ok((response, removed)) => {
                    if removed {
                        self.released(target, &object).await;
                    }
                    Ok(Attempt::Done(response))
                }
                Err(StoreError::Conflict { .. }) => Ok(Attempt::Changed),
                Err(e) => Err(store_error(target, name, e)),
            }
        })
        .await
    }

    /// The field manager for writes to `target`: on the main resource of a kind with a status
    /// subresource, `status` is nobody's (it is written through `/status`).
    fn field_manager(target: &Target) -> FieldManager {
        let manager = FieldManager::for_kind(target.def.kind);
        match target.subresource.as_deref() {
            None if target.def.status => manager.ignoring(&["status"]),
            _ => manager,
        }
    }

    /// Records a create, update or patch in `new`'s `managedFields`.
    fn track(&self, target: &Target, old: Option<&Value>, new: &mut Value, manager: &str) {
        let now = now();
        Self::field_manager(target).track_update(
            old,
            new,
            &UpdateOptions {
                manager,
                subresource: target.subresource.as_deref(),
                now: &now,
            },
        );
    }

    /// Server-side apply (`PATCH` with `application/apply-patch+yaml`): merges the applied
    /// configuration into the live object (creating it if absent) with field ownership and
    /// conflict detection, then stores it like any other write.
    async fn apply(
        &self,
        target: &Target,
        name: &str,
        query: &HashMap<String, String>,
        body: &Bytes,
    ) -> Result<Response, ApiError> {
        let manager = query
            .get("fieldManager")
            .map(String::as_str)
            .unwrap_or_default();
        managed_fields::validate_field_manager(manager, true).map_err(|m| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!("PatchOptions.meta.k8s.io \"\" is invalid: {m}"),
            )
        })?;
        let force = match query.get("force").map(String::as_str) {
            None | Some("" | "false") => false,
            Some("true") => true,
            Some(other) => return Err(bad_request(format!("invalid force value {other:?}"))),
        };
        let config: Value = serde_yaml::from_slice(body)
            .map_err(|e| bad_request(format!("error decoding YAML: {e}")))?;
        if !config.is_object() {
            return Err(bad_request("the applied configuration must be an object"));
        }
        let text = |pointer: &str| {
            config
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        if text("/apiVersion") != target.def.api_version() || text("/kind") != target.def.kind {
            return Err(bad_request(format!(
                "the applied configuration is {} {}, but the request is for {} {}",
                text("/apiVersion"),
                text("/kind"),
                target.def.api_version(),
                target.def.kind
            )));
        }
        if !text("/metadata/name").is_empty() && text("/metadata/name") != name {
            return Err(bad_request(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                text("/metadata/name")
            )));
        }
        let mut config = config;
        if let Some(meta) = config.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("name".into(), json!(name));
        } else if let Some(object) = config.as_object_mut() {
            object.insert("metadata".into(), json!({"name": name}));
        }
        let field_manager = Self::field_manager(target);
        let now = now();
        let options = ApplyOptions {
            manager,
            force,
            subresource: target.subresource.as_deref(),
            now: &now,
        };
        let apply_error = |e: ApplyError| {
            let mut error = ApiError::new(
                StatusCode::from_u16(e.code()).unwrap_or(StatusCode::CONFLICT),
                e.reason(),
                e.to_string(),
            );
            error.details = e.status().get("details").cloned();
            error
        };
        let (config, field_manager, options) = (&config, &field_manager, &options);
        self.read_modify_write(target, name, move |current| async move {
            let Some(Current {
                object: stored,
                revision,
            }) = current
            else {
                if target.subresource.is_some() {
                    return Err(not_found(target, name));
                }
                let created = field_manager
                    .apply(None, config, options)
                    .map_err(apply_error)?;
                let collection = Target {
                    name: None,
                    ..target.clone()
                };
                return match self.create_object(&collection, query, None, created).await {
                    Err(e) if e.reason == "AlreadyExists" => Ok(Attempt::Changed),
                    other => other.map(Attempt::Done),
                };
            };
            let merged = field_manager
                .apply(Some(&stored), config, options)
                .map_err(apply_error)?;
            if merged == stored {
                return Ok(Attempt::Done(respond(target, stored)));
            }
            let updated = match target.subresource.as_deref() {
                None => objects::prepare_update(target.def, &stored, merged)
                    .map_err(|e| invalid(target, name, e))?,
                Some("status") if target.def.status => {
                    let mut updated = objects::prepare_status_update(&stored, &merged);
                    if let (Some(meta), Some(fields)) = (
                        updated.get_mut("metadata").and_then(Value::as_object_mut),
                        merged.pointer("/metadata/managedFields"),
                    ) {
                        meta.insert("managedFields".into(), fields.clone());
                    }
                    updated
                }
                Some(other) => return Err(ApiError::not_found_path(other)),
            };
            // The apply recorded its own managed fields.
            let written = self
                .write_back(target, name, query, &stored, updated, revision, None)
                .await?;
            Ok(written.map_or(Attempt::Changed, Attempt::Done))
        })
        .await
    }

    /// What writing a Service needs from the allocator (None for other kinds and for
    /// subresources, which cannot change the spec).
    fn service_plan(
        &self,
        target: &Target,
        name: &str,
        old: Option<&Value>,
        new: &mut Value,
    ) -> Result<Option<allocator::Plan>, ApiError> {
        if target.def.kind != "Service"
            || !target.def.group.is_empty()
            || target.subresource.is_some()
        {
            return Ok(None);
        }
        allocator::plan(old, new, &self.service_ranges)
            .map(Some)
            .map_err(|e| invalid(target, name, e))
    }

    /// Reserves what `plan` asks for and writes it into the Service; on failure nothing stays
    /// reserved.
    async fn reserve(
        &self,
        target: &Target,
        name: &str,
        plan: &allocator::Plan,
        service: &mut Value,
    ) -> Result<Vec<Allocation>, ApiError> {
        let mut reserved = Vec::new();
        let owner = json!({"service": format!("{}/{name}", target.namespace.as_deref().unwrap_or_default()),
                           "time": OffsetDateTime::now_utc().unix_timestamp()});
        let owner = encode(&owner)?;
        let result = async {
            let mut ips = Vec::new();
            for (index, cidr, want) in &plan.cluster_ips {
                let allocation = match *want {
                    Want::Exactly(ip) => {
                        let allocation = Allocation::ClusterIp(ip);
                        if !self.try_reserve(&allocation, &owner).await? {
                            return Err(invalid(target, name, Invalid {
                                field: "spec.clusterIPs".into(),
                                message: format!("Invalid value: []string{{\"{ip}\"}}: failed to allocate IP {ip}: provided IP is already allocated"),
                            }));
                        }
                        allocation
                    }
                    Want::Any => {
                        let seed = u64::from_le_bytes(random());
                        let mut found = None;
                        for offset in allocator::ip_candidates(cidr, seed) {
                            let Some(candidate) = cidr.nth(offset) else { continue };
                            let allocation = Allocation::ClusterIp(candidate);
                            if self.try_reserve(&allocation, &owner).await? {
                                found = Some(allocation);
                                break;
                            }
                        }
                        found.ok_or_else(|| ApiError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "InternalError",
                            format!("failed to allocate a serviceIP: range is full ({cidr})"),
                        ))?
                    }
                };
                if let Allocation::ClusterIp(chosen) = allocation {
                    ips.push((*index, chosen));
                }
                // Pushed before the next reservation, so a failure frees this one too.
                reserved.push(allocation);
            }
            let mut node_ports = Vec::new();
            for (index, want) in &plan.node_ports {
                let port = match *want {
                    Want::Exactly(port) => {
                        if !self.try_reserve(&Allocation::NodePort(port), &owner).await? {
                            return Err(invalid(target, name, Invalid {
                                field: format!("spec.ports[{index}].nodePort"),
                                message: format!("Invalid value: {port}: provided port is already allocated"),
                            }));
                        }
                        port
                    }
                    Want::Any => {
                        let seed = u64::from_le_bytes(random());
                        let mut found = None;
                        for port in allocator::node_port_candidates(&self.service_ranges.node_ports, seed) {
                            if self.try_reserve(&Allocation::NodePort(port), &owner).await? {
                                found = Some(port);
                                break;
                            }
                        }
                        found.ok_or_else(|| ApiError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "InternalError",
                            "failed to allocate a nodePort: range is full",
                        ))?
                    }
                };
                reserved.push(Allocation::NodePort(port));
                node_ports.push((*index, port));
            }
            allocator::record(service, &ips, &node_ports);
            Ok(())
        }
        .await;
        match result {
            Ok(()) => Ok(reserved),
            Err(e) => {
                self.release(&reserved).await;
                Err(e)
            }
        }
    }

    /// Creates the allocation key unless somebody holds it; false if taken.
    async fn try_reserve(&self, allocation: &Allocation, owner: &[u8]) -> Result<bool, ApiError> {
        match self.store.create(&allocation.key(), owner.to_vec()).await {
            Ok(_) => Ok(true),
            Err(StoreError::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("reserving {}: {e}", allocation.key()),
            )),
        }
    }

    /// Frees allocations (already-free ones are fine; the repair pass catches failures).
    async fn release(&self, allocations: &[Allocation]) {
        for allocation in allocations {
            if let Err(e) = self.store.delete(&allocation.key(), None).await {
                if !matches!(e, StoreError::NotFound { .. }) {
                    tracing::warn!(key = %allocation.key(), error = %e, "freeing a service allocation");
                }
            }
        }
    }

    /// An object was removed from the store: free what it held.
    async fn released(&self, target: &Target, object: &Value) {
        if target.def.kind == "Service" && target.def.group.is_empty() {
            self.release(&allocator::held(object)).await;
        }
    }

    /// Frees allocations no stored Service holds (older than `min_age`, so a create between
    /// reserving and storing is not robbed) and re-reserves addresses stored Services hold
    /// without a key. Returns how many were freed and re-reserved.
    pub async fn repair_service_allocations(
        &self,
        min_age: std::time::Duration,
    ) -> Result<(usize, usize), StoreError> {
        let services = self
            .store
            .range(RangeRequest::prefix("/registry/core/services/"))
            .await?;
        let mut held: HashMap<String, Vec<u8>> = HashMap::new();
        for kv in &services.kvs {
            let Ok(service) = serde_json::from_slice::<Value>(&kv.value) else {
                continue;
            };
            let owner = format!(
                "{}/{}",
                service
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
                service
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            );
            for allocation in allocator::held(&service) {
                let value =
                    serde_json::to_vec(&json!({"service": owner, "time": 0})).unwrap_or_default();
                held.insert(allocation.key(), value);
            }
        }
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let min_age = i64::try_from(min_age.as_secs()).unwrap_or(i64::MAX);
        let mut freed = 0;
        for prefix in [allocator::IP_PREFIX, allocator::NODE_PORT_PREFIX] {
            let keys = self.store.range(RangeRequest::prefix(prefix)).await?;
            for kv in keys.kvs {
                if held.remove(&kv.key).is_some() {
                    continue;
                }
                let time = serde_json::from_slice::<Value>(&kv.value)
                    .ok()
                    .and_then(|v| v.get("time").and_then(Value::as_i64))
                    .unwrap_or(0);
                if now.saturating_sub(time) >= min_age {
                    match self.store.delete(&kv.key, Some(kv.mod_revision)).await {
                        Ok(_) => freed += 1,
                        Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        let mut restored = 0;
        for (key, value) in held {
            match self.store.create(&key, value).await {
                Ok(_) => restored += 1,
                Err(StoreError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((freed, restored))
    }

    /// Kubernetes' `GuaranteedUpdate`: reads the object at `target` (`None` when there is
    /// none) and lets `attempt` decide from it — refuse with an error, answer without a
    /// write, or write with a compare-and-swap on the revision read (`Attempt::Changed` when
    /// that found the object changed since) — and reads it again after a change, up to
    /// [`UPDATE_ATTEMPTS`] times, then answers 409. Every read-modify-write that a client
    /// did not pin to a resourceVersion goes through here (PATCH, apply, DELETE, binding),
    /// so a write landing between the read and the write is never the client's 409.
    async fn read_modify_write<T, F>(
        &self,
        target: &Target,
        name: &str,
        mut attempt: impl FnMut(Option<Current>) -> F,
    ) -> Result<T, ApiError>
    where
        F: std::future::Future<Output = Result<Attempt<T>, ApiError>>,
    {
        for _ in 0..UPDATE_ATTEMPTS {
            let current = match self
                .store
                .get(&target.key())
                .await
                .map_err(|e| store_error(target, name, e))?
            {
                Some(kv) => Some(Current {
                    object: decode(target.def, &kv)?,
                    revision: kv.mod_revision,
                }),
                None => None,
            };
            if let Attempt::Done(answer) = attempt(current).await? {
                return Ok(answer);
            }
        }
        Err(conflict(target, name))
    }

    /// [`Api::read_modify_write`] of an object that must exist (404 otherwise).
    async fn guaranteed_update<T, F>(
        &self,
        target: &Target,
        name: &str,
        mut attempt: impl FnMut(Current) -> F,
    ) -> Result<T, ApiError>
    where
        F: std::future::Future<Output = Result<Attempt<T>, ApiError>>,
    {
        self.read_modify_write(target, name, |current| {
            let next = current
                .map(&mut attempt)
                .ok_or_else(|| not_found(target, name));
            async move { next?.await }
        })
        .await
    }

    /// The end of every read-modify-write (PUT, PATCH, apply): custom and field validation,
    /// the writer's managed fields (`manager`, unless an apply recorded them), the dry-run
    /// answer or the compare-and-swap. `Ok(None)`: the object changed since it was read.
    #[allow(clippy::too_many_arguments)]
    async fn write_back(
        &self,
        target: &Target,
        name: &str,
        query: &HashMap<String, String>,
        stored: &Value,
        mut updated: Value,
        revision: i64,
        manager: Option<&str>,
    ) -> Result<Option<Response>, ApiError> {
        self.validate_custom(target, name, &mut updated)?;
        let (mut updated, warnings) = self.validate_fields(target, query, updated)?;
        if let Some(manager) = manager {
            self.track(target, Some(stored), &mut updated, manager);
        }
        // A write that changes nothing is skipped, as Kubernetes does: the object keeps its
        // resourceVersion and watchers see no event.
        if objects::unchanged(stored, &updated) {
            let current = objects::with_resource_version(updated, revision);
            return Ok(Some(warn(respond(target, current), &warnings)));
        }
        if dry_run(query)? {
            let response = respond(target, objects::with_resource_version(updated, revision));
            return Ok(Some(warn(response, &warnings)));
        }
        match self
            .store_update(target, name, stored, updated, revision)
            .await
        {
            Ok(response) => Ok(Some(warn(response, &warnings))),
            Err(UpdateError::Store(StoreError::Conflict { .. })) => Ok(None),
            Err(e) => Err(e.into_api(target, name)),
        }
    }

    /// Stores an updated object with compare-and-swap on `revision`; an object whose deletion
    /// nothing holds any more (its last finalizer removed) is then removed.
    async fn store_update(
        &self,
        target: &Target,
        name: &str,
        stored: &Value,
        updated: Value,
        revision: i64,
    ) -> Result<Response, UpdateError> {
        objects::check_finalizers_on_update(stored, &updated)
            .map_err(|e| UpdateError::Api(invalid(target, name, e)))?;
        let mut updated = updated;
        let service_plan = self
            .service_plan(target, name, Some(stored), &mut updated)
            .map_err(UpdateError::Api)?;
        let reserved = match &service_plan {
            Some(plan) => self
                .reserve(target, name, plan, &mut updated)
                .await
                .map_err(UpdateError::Api)?,
            None => Vec::new(),
        };
        let written = match encode_stored(target.def, &updated) {
            Ok(bytes) => self.store.update(&target.key(), bytes, revision).await,
            Err(e) => {
                self.release(&reserved).await;
                return Err(UpdateError::Api(e));
            }
        };
        let kv = match written {
            Ok(kv) => kv,
            Err(e) => {
                self.release(&reserved).await;
                return Err(UpdateError::Store(e));
            }
        };
        if let Some(plan) = &service_plan {
            self.release(&plan.release).await;
        }
        if objects::deletion_complete(&updated) {
            self.released(target, &updated).await;
            match self
                .store
                .delete(&target.key(), Some(kv.mod_revision))
                .await
            {
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(UpdateError::Store(e)),
            }
        }
        Ok(respond(
            target,
            objects::with_resource_version(updated, kv.mod_revision),
        ))
    }

    /// Reads a namespaced core/v1 object, `None` when it does not exist.
    pub(crate) async fn get_core(
        &self,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, ApiError> {
        let def =
            catalog::find("", "v1", plural).ok_or_else(|| bad_request(format!("no {plural}")))?;
        let target = Target {
            def,
            namespace: Some(namespace.to_string()),
            name: Some(name.to_string()),
            subresource: None,
        };
        match self.store.get(&target.key()).await {
            Ok(Some(kv)) => decode(def, &kv).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(store_error(&target, name, e)),
        }
    }

    /// ServiceAccount admission (see [`crate::service_account::admit_pod`]). A missing
    /// ServiceAccount does not refuse the pod, unlike Kubernetes: a namespace's "default"
    /// account is made by a controller moments after the namespace, and the node retries the
    /// token until it exists.
    async fn admit_pod(&self, target: &Target, pod: &mut Value) -> Result<(), ApiError> {
        if self.service_accounts.is_none() {
            return Ok(());
        }
        let Some(namespace) = target.namespace.as_deref() else {
            return Ok(());
        };
        let spec = pod.get("spec");
        let name = spec
            .and_then(|s| s.get("serviceAccountName"))
            .or_else(|| spec.and_then(|s| s.get("serviceAccount")))
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
            .to_string();
        let account = self.get_core("serviceaccounts", namespace, &name).await?;
        crate::service_account::admit_pod(pod, account.as_ref(), &objects::name_suffix(random()));
        Ok(())
    }

    /// `POST serviceaccounts/<name>/token`: a TokenRequest, answered with a signed token.
    async fn token_request(
        &self,
        target: &Target,
        name: &str,
        body: &Bytes,
    ) -> Result<Response, ApiError> {
        use crate::service_account::{self as sa, Grant, Ref};
        let signer = self
            .service_accounts
            .as_ref()
            .ok_or_else(|| ApiError::not_found_path("serviceaccounts/token"))?;
        let namespace = target.namespace.clone().unwrap_or_default();
        let request = parse_body(body)?;
        let spec = sa::parse_token_request(&request).map_err(|message| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!("TokenRequest.authentication.k8s.io \"{name}\" is invalid: {message}"),
            )
        })?;
        let account = self
            .get_core("serviceaccounts", &namespace, name)
            .await?
            .ok_or_else(|| not_found(target, name))?;
        let uid_of = |o: &Value| {
            o.pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let bound = match &spec.bound {
            None => None,
            Some(r) => {
                let object = self
                    .get_core(r.kind.plural(), &namespace, &r.name)
                    .await?
                    .ok_or_else(|| {
                        ApiError::new(
                            StatusCode::NOT_FOUND,
                            "NotFound",
                            format!("{} \"{}\" not found", r.kind.plural(), r.name),
                        )
                    })?;
                let uid = uid_of(&object);
                if r.uid.as_ref().is_some_and(|want| *want != uid) {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "Conflict",
                        format!(
                            "the UID in the bound object reference ({}) does not match the UID in record. The object might have been deleted and then recreated",
                            r.uid.as_deref().unwrap_or_default()
                        ),
                    ));
                }
                Some((
                    r.kind,
                    Ref {
                        name: r.name.clone(),
                        uid,
                    },
                ))
            }
        };
        let now_time = OffsetDateTime::now_utc();
        let claims = sa::claims_for(
            &spec,
            Grant {
                namespace: &namespace,
                service_account: Ref {
                    name: name.to_string(),
                    uid: uid_of(&account),
                },
                bound,
                now: now_time.unix_timestamp(),
            },
            signer.issuer(),
            new_uid(),
        );
        let token = signer.sign(&claims).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                e.to_string(),
            )
        })?;
        let expires = OffsetDateTime::from_unix_timestamp(claims.exp)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        Ok((
            StatusCode::CREATED,
            Json(sa::token_response(
                &namespace, name, &request, &claims, &token, &expires,
            )),
        )
            .into_response())
    }

    /// `POST pods/<name>/binding`: assigns a pending pod to a node (what the scheduler does).
    async fn bind(&self, target: &Target, name: &str, body: &Bytes) -> Result<Response, ApiError> {
        let binding = parse_body(body)?;
        let pod_target = Target {
            subresource: None,
            ..target.clone()
        };
        // As Kubernetes' binding registry (`GuaranteedUpdate`), a write to the pod between the
        // read and the bind (the scheduler's own `PodScheduled=False`, a label) is retried: a
        // binding is refused only when the pod is already bound or being deleted. A 409 for a
        // mere write race made the scheduler take the pod for bound elsewhere and drop it.
        let (binding, pod_target) = (&binding, &pod_target);
        self.guaranteed_update(pod_target, name, move |current| async move {
            let bound = objects::bind_pod(current.object, binding, &now()).map_err(|m| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "Conflict",
                    format!("Operation cannot be fulfilled on pods/binding \"{name}\": {m}"),
                )
            })?;
            match self
                .store
                .update(&pod_target.key(), encode(&bound)?, current.revision)
                .await
            {
                Ok(_) => Ok(Attempt::Done((StatusCode::CREATED, Json(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}))).into_response())),
                Err(StoreError::Conflict { .. }) => Ok(Attempt::Changed),
                Err(e) => Err(store_error(pod_target, name, e)),
            }
        })
        .await
    }

    /// Server-side field validation of a built-in kind (see [`crate::typed`]): returns the
    /// object to store and the warnings to send.
    fn validate_fields(
        &self,
        target: &Target,
        query: &HashMap<String, String>,
        object: Value,
    ) -> Result<(Value, Vec<String>), ApiError> {
        let mode =
            crate::typed::FieldValidation::parse(query.get("fieldValidation").map(String::as_str))
                .map_err(bad_request)?;
        let def = target.def;
        let checked = match crate::typed::check(def, &object) {
            None => return Ok((object, Vec::new())),
            Some(Err(e)) => {
                return Err(bad_request(format!(
                    "{} in version \"{}\" cannot be handled as a {}: {e}",
                    def.kind, def.version, def.kind
                )))
            }
            Some(Ok(checked)) => checked,
        };
        let problems: Vec<String> = checked
            .unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        match mode {
            crate::typed::FieldValidation::Strict if !problems.is_empty() => Err(bad_request(
                format!("strict decoding error: {}", problems.join(", ")),
            )),
            crate::typed::FieldValidation::Warn => Ok((checked.object, problems)),
            _ => Ok((checked.object, Vec::new())),
        }
    }

    /// Checks a custom object against its CRD's schema, pruning unknown fields.
    fn validate_custom(
        &self,
        target: &Target,
        name: &str,
        object: &mut Value,
    ) -> Result<(), ApiError> {
        let def = target.def;
        let Some(schema) = self
            .crds
            .find(def.group, def.version, def.plural)
            .and_then(|s| s.schema)
        else {
            return Ok(());
        };
        let violations = crate::schema::validate(&schema, object);
        if violations.is_empty() {
            return Ok(());
        }
        let message = violations
            .iter()
            .map(|v| format!("{}: {}", v.field, v.message))
            .collect::<Vec<_>>()
            .join(", ");
        let mut e = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!(
                "{}.{} \"{name}\" is invalid: {message}",
                def.plural, def.group
            ),
        );
        e.details = Some(json!({
            "name": name, "group": def.group, "kind": def.kind,
            "causes": violations.iter().map(|v| json!({"reason": "FieldValueInvalid", "message": v.message, "field": v.field})).collect::<Vec<_>>(),
        }));
        Err(e)
    }

    /// Deleting a CRD deletes the objects it defined.
    async fn delete_custom_objects(&self, crd: &Value) -> Result<(), ApiError> {
        let Ok(served) = crate::crd::served_versions(crd) else {
            return Ok(());
        };
        let Some(first) = served.first() else {
            return Ok(());
        };
        let target = Target {
            def: first.def,
            namespace: None,
            name: None,
            subresource: None,
        };
        self.delete_all(&target).await
    }

    /// Deletes every object of `target`'s collection (a prefix of the store).
    async fn delete_all(&self, target: &Target) -> Result<(), ApiError> {
        let page = self
            .store
            .range(RangeRequest::prefix(target.collection_prefix()))
            .await
            .map_err(|e| store_error(target, "", e))?;
        for kv in page.kvs {
            match self.store.delete(&kv.key, None).await {
                Ok(_) | Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(store_error(target, &kv.key, e)),
            }
            if let Ok(object) = serde_json::from_slice::<Value>(&kv.value) {
                self.released(target, &object).await;
            }
        }
        Ok(())
    }

    /// Deleting a namespace deletes everything in it first.
    async fn delete_namespace_contents(&self, ns: &str) -> Result<(), ApiError> {
        let custom = self.crds.all();
        for def in catalog::BUILTIN
            .iter()
            .chain(custom)
            .filter(|d| d.namespaced)
        {
            let target = Target {
                def,
                namespace: Some(ns.into()),
                name: None,
                subresource: None,
            };
            self.delete_all(&target).await?;
        }
        Ok(())
    }

    async fn delete_collection(
        &self,
        target: &Target,
        query: &HashMap<String, String>,
    ) -> Result<Response, ApiError> {
        let selection = Selection::from_query(query, target.def.kind).map_err(bad_request)?;
        let page = self
            .store
            .range(RangeRequest::prefix(target.collection_prefix()))
            .await
            .map_err(|e| store_error(target, "", e))?;
        let mut deleted = Vec::new();
        for kv in &page.kvs {
            let object = decode(target.def, kv)?;
            if !(selection.matches(&object)) {
                continue;
            }
            if dry_run(query)? {
                deleted.push(object);
                continue;
            }
            // Each object is deleted as a DELETE of it would be (grace periods, finalizers,
            // propagation), retrying when it changed since the list, as Kubernetes does.
            let name = object
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let one = Target {
                name: Some(name.clone()),
                namespace: object
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .or_else(|| target.namespace.clone()),
                ..target.clone()
            };
            let mut attempts = 0;
            loop {
                match self.delete(&one, &name, query, &Bytes::new()).await {
                    Ok(_) => break,
                    Err(e) if e.reason == "NotFound" => break,
                    Err(e) if e.reason == "Conflict" && attempts < 5 => attempts += 1,
                    Err(e) => return Err(e),
                }
            }
            deleted.push(object);
        }
        Ok(Json(json!({
            "kind": format!("{}List", target.def.kind),
            "apiVersion": target.def.api_version(),
            "metadata": {"resourceVersion": page.revision.to_string()},
            "items": deleted,
        }))
        .into_response())
    }
}

/// Kubernetes' defaults for a new namespace.
fn namespace_object(mut object: Value) -> Value {
    if object.pointer("/spec/finalizers").is_none() {
        object["spec"] = json!({"finalizers": ["kubernetes"]});
    }
    object["status"] = json!({"phase": "Active"});
    object
}

/// An object as a read-modify-write read it: its served form (with its resourceVersion) and
/// the revision its compare-and-swap must find.
struct Current {
    object: Value,
    revision: i64,
}

/// What one attempt of a read-modify-write came to.
enum Attempt<T> {
    /// Written, or nothing to write: the answer.
    Done(T),
    /// The compare-and-swap found the object changed since it was read: read it again.
    Changed,
}

/// Attempts of a read-modify-write before it answers 409, as Kubernetes' registry bounds
/// its retries.
const UPDATE_ATTEMPTS: usize = 5;

/// Why a store update failed: a refusal already phrased for the client, or a store error
/// (kept apart so PATCH can retry on a conflict).
enum UpdateError {
    Api(ApiError),
    Store(StoreError),
}

impl UpdateError {
    fn into_api(self, target: &Target, name: &str) -> ApiError {
        match self {
            UpdateError::Api(e) => e,
            UpdateError::Store(e) => store_error(target, name, e),
        }
    }
}

/// Adds `Warning: 299 - "..."` headers, as Kubernetes sends them (kubectl prints them).
fn warn(mut response: Response, warnings: &[String]) -> Response {
    for warning in warnings {
        let text = format!("299 - \"{}\"", warning.replace('"', "\\\""));
        if let Ok(value) = axum::http::HeaderValue::from_str(&text) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

/// The response body for a write: the Scale for the scale subresource, else the object.
/// 409 Conflict for a write that kept finding the object changed (or pinned a stale version).
fn conflict(target: &Target, name: &str) -> ApiError {
    store_error(
        target,
        name,
        StoreError::Conflict {
            key: String::new(),
            expected: 0,
            current: None,
        },
    )
}

fn respond(target: &Target, object: Value) -> Response {
    match target.subresource.as_deref() {
        Some("scale") => Json(scale_of(&object)).into_response(),
        _ => Json(object).into_response(),
    }
}

/// The stored object with `spec.replicas` taken from a Scale.
fn with_replicas(
    target: &Target,
    name: &str,
    stored: &Value,
    scale: &Value,
) -> Result<Value, ApiError> {
    let replicas = scale
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .filter(|r| *r >= 0)
        .ok_or_else(|| {
            invalid(
                target,
                name,
                Invalid {
                    field: "spec.replicas".into(),
                    message: "must be a non-negative integer".into(),
                },
            )
        })?;
    let mut object = stored.clone();
    object["spec"]["replicas"] = json!(replicas);
    objects::prepare_update(target.def, stored, object).map_err(|e| invalid(target, name, e))
}

/// The `autoscaling/v1` Scale of an object with `spec.replicas`.
fn scale_of(object: &Value) -> Value {
    let meta = object.get("metadata").cloned().unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"), "creationTimestamp": meta.get("creationTimestamp"),
        },
        "spec": {"replicas": object.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {
            "replicas": object.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": object.pointer("/status/selector").cloned().unwrap_or(json!("")),
        },
    })
}

/// Dispatches one resource request; a successful write to a CRD reloads the served custom
/// resources at once.
pub async fn handle(
    api: &Api,
    method: &Method,
    target: Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let is_crd =
        target.def.kind == "CustomResourceDefinition" && target.def.group == "apiextensions.k8s.io";
    let response = dispatch(api, method, target, query, headers, body).await?;
    if is_crd && *method != Method::GET {
        if let Err(err) = api.crds.reload(api.store.as_ref()).await {
            tracing::warn!(%err, "reloading CustomResourceDefinitions failed");
        }
    }
    Ok(response)
}

/// A request header as text (`""` when absent or not text).
pub fn header_str(headers: &HeaderMap, name: header::HeaderName) -> &str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// How a request body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFormat {
    Json,
    Yaml,
    Protobuf,
    /// A PATCH body, or a request without one.
    Other,
}

/// The body's encoding from `Content-Type`, refusing what Kubernetes refuses with 415.
fn body_format(method: &Method, content_type: &str) -> Result<BodyFormat, ApiError> {
    if !matches!(*method, Method::POST | Method::PUT) {
        return Ok(BodyFormat::Other);
    }
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match media_type.as_str() {
        // No Content-Type: clients that send bare JSON (Kubernetes assumes JSON too).
        "" | "application/json" | "*/*" => Ok(BodyFormat::Json),
        "application/yaml" => Ok(BodyFormat::Yaml),
        protobuf::CONTENT_TYPE => Ok(BodyFormat::Protobuf),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {other:?})"),
        )),
    }
}

fn yaml_to_json(body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let value: Value = serde_yaml::from_slice(body).map_err(|e| {
        bad_request(format!(
            "the body of the request was in an unknown format: {e}"
        ))
    })?;
    encode(&value)
}

fn protobuf_to_json(body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let object = protobuf::decode(body).map_err(|e| match e {
        ProtobufError::UnknownApiVersion(_) | ProtobufError::UnknownKind { .. } => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            e.to_string(),
        ),
        _ => bad_request(e.to_string()),
    })?;
    encode(&object)
}

async fn dispatch(
    api: &Api,
    method: &Method,
    target: Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let accept = header_str(headers, header::ACCEPT);
    let content_type = header_str(headers, header::CONTENT_TYPE);
    // Protobuf and YAML bodies become the JSON object they stand for, and everything after
    // this works on JSON alone. (PATCH bodies are patches: their types are checked there.)
    let json_body;
    let body = match body_format(method, content_type)? {
        BodyFormat::Protobuf if !body.is_empty() => {
            json_body = Bytes::from(protobuf_to_json(body)?);
            &json_body
        }
        BodyFormat::Yaml if !body.is_empty() => {
            json_body = Bytes::from(yaml_to_json(body)?);
            &json_body
        }
        _ => body,
    };
    let manager = match query.get("fieldManager").filter(|m| !m.is_empty()) {
        Some(manager) => {
            managed_fields::validate_field_manager(manager, false).map_err(|m| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    format!("PatchOptions.meta.k8s.io \"\" is invalid: {m}"),
                )
            })?;
            manager.clone()
        }
        None => managed_fields::default_manager(header_str(headers, header::USER_AGENT)),
    };
    let name = target.name.clone();
    match (method, name.as_deref()) {
        (&Method::GET, Some(name)) if target.subresource.as_deref() == Some("log") => {
            api.pod_log(&target, name, query).await
        }
        (&Method::GET, Some(name)) => api.get(&target, name, accept).await,
        (&Method::GET, None)
            if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) =>
        {
            let request = crate::watch::WatchRequest::parse(query, target.def.kind, accept)
                .map_err(bad_request)?;
            {
                let columns = api
                    .crds
                    .find(target.def.group, target.def.version, target.def.plural)
                    .map(|s| s.columns);
                crate::watch::watch(
                    Arc::clone(&api.store),
                    Arc::clone(&api.events),
                    target,
                    request,
                    columns,
                )
            }
            .await
        }
        (&Method::GET, None) => api.list(&target, query, accept).await,
        (&Method::POST, None) => api.create(&target, query, &manager, body).await,
        (&Method::POST, Some(name)) if target.subresource.as_deref() == Some("binding") => {
            api.bind(&target, name, body).await
        }
        (&Method::POST, Some(name)) if target.subresource.as_deref() == Some("token") => {
            api.token_request(&target, name, body).await
        }
        (&Method::PUT, Some(name)) => api.update(&target, name, query, &manager, body).await,
        (&Method::PATCH, Some(name)) => {
            api.patch(&target, name, query, &manager, content_type, body)
                .await
        }
        (&Method::DELETE, Some(name)) => api.delete(&target, name, query, body).await,
        (&Method::DELETE, None) => api.delete_collection(&target, query).await,
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )),
    }
}

/// Axum handler for `pods/{exec,attach,portforward}`: an upgrade passed on to the pod's node,
/// with the raw query (exec repeats `command`).
pub async fn pod_stream(
    State(api): State<Arc<Api>>,
    Path((namespace, name, subresource)): Path<(String, String, String)>,
    request: axum::extract::Request,
) -> Response {
    api.pod_stream(&namespace, &name, &subresource, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Axum handler for `/api/v1/{*rest}`.
pub async fn core(
    State(api): State<Arc<Api>>,
    method: Method,
    Path(rest): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(target) = parse_target("", "v1", &rest) else {
        return ApiError::not_found_path(&format!("/api/v1/{rest}")).into_response();
    };
    handle(&api, &method, target, &query, &headers, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// Axum handler for `/apis/{group}/{version}/{*rest}`.
pub async fn grouped(
    State(api): State<Arc<Api>>,
    method: Method,
    Path((group, version, rest)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let find = |plural: &str| {
        catalog::find(&group, &version, plural)
            .or_else(|| api.crds.find(&group, &version, plural).map(|s| s.def))
    };
    let Some(target) = parse_target_with(&find, &rest) else {
        return ApiError::not_found_path(&format!("/apis/{group}/{version}/{rest}"))
            .into_response();
    };
    handle(&api, &method, target, &query, &headers, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_targets() {
        let t = parse_target("", "v1", "namespaces/ns/pods/web/status").expect("pod status");
        assert_eq!(
            (
                t.def.kind,
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.subresource.as_deref()
            ),
            ("Pod", Some("ns"), Some("web"), Some("status"))
        );
        assert_eq!(t.key(), "/registry/core/pods/ns/web");
        let t = parse_target("", "v1", "namespaces/ns").expect("namespace");
        assert_eq!(
            (t.def.kind, t.name.as_deref(), t.namespace.as_deref()),
            ("Namespace", Some("ns"), None)
        );
        assert_eq!(t.key(), "/registry/core/namespaces/ns");
        let t = parse_target("", "v1", "pods").expect("all pods");
        assert_eq!(
            (t.namespace.as_deref(), t.collection_prefix()),
            (None, "/registry/core/pods/".to_string())
        );
        let t = parse_target("apps", "v1", "namespaces/ns/deployments").expect("deployments");
        assert_eq!(t.collection_prefix(), "/registry/apps/deployments/ns/");
        assert_eq!(t.display(), "deployments.apps");
        let t = parse_target("", "v1", "nodes/n1").expect("node");
        assert_eq!(t.key(), "/registry/core/nodes/n1");
        for bad in [
            "",
            "pods/web",
            "nosuch",
            "namespaces/ns/nosuch",
            "namespaces/ns/pods/a/b/c",
            "pods//x",
        ] {
            assert!(parse_target("", "v1", bad).is_none(), "{bad}");
        }
        assert!(parse_target("apps", "v1", "pods").is_none());
    }

    #[test]
    fn uids_look_like_uuids() {
        let uid = new_uid();
        assert_eq!(uid.len(), 36);
        assert_eq!(uid.as_bytes()[14], b'4');
    }

    #[tokio::test]
    async fn lists_encoded_item_by_item_read_as_one_tree_would() {
        let items = [
            json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"n": 1.5}}),
            json!({"metadata": {"name": "b\"q"}, "data": {"k": "v\n"}}),
        ];
        let metadata = json!({"resourceVersion": "42", "continue": "abc"});
        for count in 0..=items.len() {
            let mut encoded = EncodedItems::default();
            for item in &items[..count] {
                encoded.push(item).expect("encodes");
            }
            let response = encoded.into_list("PodList", "v1", &metadata);
            assert_eq!(
                response.headers().get(header::CONTENT_TYPE),
                Some(&header::HeaderValue::from_static("application/json"))
            );
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .expect("body");
            let tree = json!({"kind": "PodList", "apiVersion": "v1", "metadata": metadata,
                "items": items[..count]});
            assert_eq!(body, serde_json::to_vec(&tree).expect("encodes"));
        }
    }
}
