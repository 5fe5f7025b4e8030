//! Server-side printing (`kubectl get` asks for `as=Table`): column definitions and one row per
//! object, with `Name` and `Age` for every kind. Kind-specific columns come with the kinds'
//! strategies.

use serde_json::{json, Value};
use time::OffsetDateTime;

/// How a response presents the objects it carries, as the `Accept` header asks: the objects
/// themselves, a Table (`kubectl get`), or metadata only (`as=PartialObjectMetadata[List]`,
/// what metadata informers such as Kubernetes' garbage collector and kube-rs'
/// `metadata_watcher` ask for). The first alternative in the header the server can give wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rendering {
    Object,
    Table,
    Metadata,
}

impl Rendering {
    pub fn from_accept(accept: &str) -> Rendering {
        for part in accept.split(',') {
            let params: Vec<&str> = part.split(';').map(str::trim).collect();
            if !params.iter().any(|p| p.starts_with("g=meta.k8s.io")) {
                if params.iter().any(|p| p.starts_with("as=")) {
                    continue;
                }
                return Rendering::Object;
            }
            if params.contains(&"as=Table") {
                return Rendering::Table;
            }
            if params.contains(&"as=PartialObjectMetadata")
                || params.contains(&"as=PartialObjectMetadataList")
            {
                return Rendering::Metadata;
            }
        }
        Rendering::Object
    }
}

/// Whether an `Accept` header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    Rendering::from_accept(accept) == Rendering::Table
}

/// `object` as a `meta.k8s.io/v1` PartialObjectMetadata: its kind's identity dropped, its
/// metadata kept whole.
pub fn partial_metadata(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// Kubernetes' `HumanDuration`: `45s`, `3m20s`, `5h`, `12d`, `2y10d`.
pub fn human_duration(seconds: i64) -> String {
    if seconds < 0 {
        return "<invalid>".into();
    }
    let (minutes, hours, days) = (seconds / 60, seconds / 3600, seconds / 86_400);
    if seconds < 120 {
        format!("{seconds}s")
    } else if minutes < 10 {
        match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        }
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        }
    } else if days < 365 * 2 {
        format!("{days}d")
    } else if days < 365 * 8 {
        match days % 365 {
            0 => format!("{}y", days / 365),
            d => format!("{}y{d}d", days / 365),
        }
    } else {
        format!("{}y", days / 365)
    }
}

fn age(object: &Value, now: OffsetDateTime) -> String {
    since(object, "/metadata/creationTimestamp", now).unwrap_or_else(|| "<unknown>".into())
}

fn timestamp(object: &Value, pointer: &str) -> Option<OffsetDateTime> {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .and_then(|t| OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
}

/// How long ago the timestamp at `pointer` was, as kubectl prints ages.
fn since(object: &Value, pointer: &str, now: OffsetDateTime) -> Option<String> {
    timestamp(object, pointer).map(|t| human_duration((now - t).whole_seconds()))
}

fn str_at<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn int_at(object: &Value, pointer: &str) -> i64 {
    object.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn or_none(text: String) -> String {
    if text.is_empty() {
        "<none>".into()
    } else {
        text
    }
}

fn array<'a>(object: &'a Value, pointer: &str) -> &'a [Value] {
    object
        .pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn label_selector(object: &Value, pointer: &str) -> String {
    let Some(map) = object.pointer(pointer).and_then(Value::as_object) else {
        return String::new();
    };
    map.iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(",")
}

fn containers_and_images(object: &Value, pointer: &str) -> (String, String) {
    let containers = array(object, pointer);
    let names = containers
        .iter()
        .map(|c| str_at(c, "/name"))
        .collect::<Vec<_>>()
        .join(",");
    let images = containers
        .iter()
        .map(|c| str_at(c, "/image"))
        .collect::<Vec<_>>()
        .join(",");
    (names, images)
}

/// A column: name, type, and whether it shows only with `-o wide`.
type Column = (&'static str, &'static str, bool);

/// Events print as Kubernetes prints them: when and what first, the name only with `-o wide`.
const EVENT_COLUMNS: &[Column] = &[
    ("Last Seen", "string", false),
    ("Type", "string", false),
    ("Reason", "string", false),
    ("Object", "string", false),
    ("Subobject", "string", true),
    ("Source", "string", true),
    ("Message", "string", false),
    ("First Seen", "string", true),
    ("Count", "string", true),
    ("Name", "string", true),
];

/// One Event's cells, in [`EVENT_COLUMNS`] order; core/v1 fields, or events.k8s.io/v1's.
fn event_cells(o: &Value, now: OffsetDateTime) -> Vec<Value> {
    let either = |core: &str, events: &str| {
        let value = str_at(o, core);
        if value.is_empty() {
            str_at(o, events)
        } else {
            value
        }
    };
    let first = since(o, "/firstTimestamp", now)
        .or_else(|| since(o, "/deprecatedFirstTimestamp", now))
        .or_else(|| since(o, "/eventTime", now))
        .unwrap_or_else(|| "<unknown>".into());
    let last = since(o, "/series/lastObservedTime", now)
        .or_else(|| since(o, "/lastTimestamp", now))
        .or_else(|| since(o, "/deprecatedLastTimestamp", now))
        .or_else(|| since(o, "/eventTime", now))
        .unwrap_or_else(|| first.clone());
    let component = either("/source/component", "/reportingController");
    let host = either("/source/host", "/deprecatedSource/host");
    let source = [component, host]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(", ");
    let count = o
        .pointer("/series/count")
        .and_then(Value::as_i64)
        .unwrap_or_else(|| {
            int_at(o, "/count")
                .max(int_at(o, "/deprecatedCount"))
                .max(1)
        });
    vec![
        json!(last),
        json!(str_at(o, "/type")),
        json!(str_at(o, "/reason")),
        json!(format!(
            "{}/{}",
            either("/involvedObject/kind", "/regarding/kind").to_lowercase(),
            either("/involvedObject/name", "/regarding/name")
        )),
        json!(either("/involvedObject/fieldPath", "/regarding/fieldPath")),
        json!(source),
        json!(either("/message", "/note").trim()),
        json!(first),
        json!(count.to_string()),
        o.pointer("/metadata/name").cloned().unwrap_or(Value::Null),
    ]
}

fn columns(kind: &str) -> Vec<Column> {
    if kind == "Event" {
        return EVENT_COLUMNS.to_vec();
    }
    let base: &[Column] = match kind {
        "Pod" => &[
            ("Ready", "string", false),
            ("Status", "string", false),
            ("Restarts", "string", false),
            ("Age", "string", false),
            ("IP", "string", true),
            ("Node", "string", true),
            ("Nominated Node", "string", true),
            ("Readiness Gates", "string", true),
        ],
        "Deployment" => &[
            ("Ready", "string", false),
            ("Up-to-date", "integer", false),
            ("Available", "integer", false),
            ("Age", "string", false),
            ("Containers", "string", true),
            ("Images", "string", true),
            ("Selector", "string", true),
        ],
        "ReplicaSet" => &[
            ("Desired", "integer", false),
            ("Current", "integer", false),
            ("Ready", "integer", false),
            ("Age", "string", false),
            ("Containers", "string", true),
            ("Images", "string", true),
            ("Selector", "string", true),
        ],
        "Service" => &[
            ("Type", "string", false),
            ("Cluster-IP", "string", false),
            ("External-IP", "string", false),
            ("Port(s)", "string", false),
            ("Age", "string", false),
            ("Selector", "string", true),
        ],
        "Node" => &[
            ("Status", "string", false),
            ("Roles", "string", false),
            ("Age", "string", false),
            ("Version", "string", false),
            ("Internal-IP", "string", true),
            ("External-IP", "string", true),
            ("OS-Image", "string", true),
            ("Kernel-Version", "string", true),
            ("Container-Runtime", "string", true),
        ],
        "Namespace" => &[("Status", "string", false), ("Age", "string", false)],
        "ConfigMap" => &[("Data", "integer", false), ("Age", "string", false)],
        "Secret" => &[
            ("Type", "string", false),
            ("Data", "integer", false),
            ("Age", "string", false),
        ],
        "DaemonSet" => &[
            ("Desired", "integer", false),
            ("Current", "integer", false),
            ("Ready", "integer", false),
            ("Up-to-date", "integer", false),
            ("Available", "integer", false),
            ("Node Selector", "string", false),
            ("Age", "string", false),
            ("Containers", "string", true),
            ("Images", "string", true),
            ("Selector", "string", true),
        ],
        "StatefulSet" => &[
            ("Ready", "string", false),
            ("Age", "string", false),
            ("Containers", "string", true),
            ("Images", "string", true),
        ],
        "Job" => &[
            ("Status", "string", false),
            ("Completions", "string", false),
            ("Duration", "string", false),
            ("Age", "string", false),
            ("Containers", "string", true),
            ("Images", "string", true),
            ("Selector", "string", true),
        ],
        "CronJob" => &[
            ("Schedule", "string", false),
            ("Timezone", "string", false),
            ("Suspend", "boolean", false),
            ("Active", "integer", false),
            ("Last Schedule", "string", false),
            ("Age", "string", false),
            ("Containers", "string", true),
            ("Images", "string", true),
            ("Selector", "string", true),
        ],
        "ServiceAccount" => &[("Secrets", "string", false), ("Age", "string", false)],
        "Endpoints" => &[("Endpoints", "string", false), ("Age", "string", false)],
        "EndpointSlice" => &[
            ("AddressType", "string", false),
            ("Ports", "string", false),
            ("Endpoints", "string", false),
            ("Age", "string", false),
        ],
        "Lease" => &[("Holder", "string", false), ("Age", "string", false)],
        "ControllerRevision" => &[
            ("Controller", "string", false),
            ("Revision", "integer", false),
            ("Age", "string", false),
        ],
        "PersistentVolumeClaim" => &[
            ("Status", "string", false),
            ("Volume", "string", false),
            ("Capacity", "string", false),
            ("Access Modes", "string", false),
            ("StorageClass", "string", false),
            ("Age", "string", false),
        ],
        _ => &[("Age", "string", false)],
    };
    let mut all = vec![("Name", "string", false)];
    all.extend_from_slice(base);
    all
}

fn pod_cells(o: &Value) -> Vec<Value> {
    let statuses = array(o, "/status/containerStatuses");
    let total = array(o, "/spec/containers").len();
    let ready = statuses
        .iter()
        .filter(|s| s.get("ready").and_then(Value::as_bool) == Some(true))
        .count();
    let restarts: i64 = statuses.iter().map(|s| int_at(s, "/restartCount")).sum();
    let mut status = str_at(o, "/status/phase").to_string();
    if let Some(reason) = o.pointer("/status/reason").and_then(Value::as_str) {
        status = reason.to_string();
    }
    for s in statuses {
        let waiting = str_at(s, "/state/waiting/reason");
        let terminated = str_at(s, "/state/terminated/reason");
        if !waiting.is_empty() {
            status = waiting.to_string();
        } else if !terminated.is_empty() {
            status = terminated.to_string();
        }
    }
    if o.pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
    {
        status = "Terminating".into();
    }
    vec![
        json!(format!("{ready}/{total}")),
        json!(status),
        json!(restarts.to_string()),
        Value::Null,
        json!(or_none(str_at(o, "/status/podIP").to_string())),
        json!(or_none(str_at(o, "/spec/nodeName").to_string())),
        json!(or_none(str_at(o, "/status/nominatedNodeName").to_string())),
        json!("<none>"),
    ]
}

fn service_cells(o: &Value) -> Vec<Value> {
    let service_type = str_at(o, "/spec/type");
    let external: Vec<String> = if service_type == "ExternalName" {
        vec![str_at(o, "/spec/externalName").to_string()]
    } else {
        let mut ips: Vec<String> = array(o, "/spec/externalIPs")
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
        ips.extend(array(o, "/status/loadBalancer/ingress").iter().map(|i| {
            let ip = str_at(i, "/ip");
            if ip.is_empty() {
                str_at(i, "/hostname").to_string()
            } else {
                ip.to_string()
            }
        }));
        if ips.is_empty() && service_type == "LoadBalancer" {
            ips.push("<pending>".into());
        }
        ips
    };
    let ports = array(o, "/spec/ports")
        .iter()
        .map(|p| {
            let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(node_port) => format!("{}:{node_port}/{protocol}", int_at(p, "/port")),
                None => format!("{}/{protocol}", int_at(p, "/port")),
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    vec![
        json!(service_type),
        json!(or_none(str_at(o, "/spec/clusterIP").to_string())),
        json!(or_none(external.join(","))),
        json!(or_none(ports)),
        Value::Null,
        json!(or_none(label_selector(o, "/spec/selector"))),
    ]
}

fn node_cells(o: &Value) -> Vec<Value> {
    let ready = array(o, "/status/conditions")
        .iter()
        .find(|c| str_at(c, "/type") == "Ready")
        .map(|c| str_at(c, "/status"));
    // As kubectl prints it: a Ready condition that is not True (False or Unknown) is
    // NotReady; only a node without one is Unknown.
    let mut status = match ready {
        Some("True") => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if o.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let roles: Vec<&str> = o
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .collect()
        })
        .unwrap_or_default();
    let address = |kind: &str| {
        array(o, "/status/addresses")
            .iter()
            .find(|a| str_at(a, "/type") == kind)
            .map(|a| str_at(a, "/address").to_string())
            .unwrap_or_default()
    };
    vec![
        json!(status),
        json!(or_none(roles.join(","))),
        Value::Null,
        json!(str_at(o, "/status/nodeInfo/kubeletVersion")),
        json!(or_none(address("InternalIP"))),
        json!(or_none(address("ExternalIP"))),
        json!(str_at(o, "/status/nodeInfo/osImage")),
        json!(str_at(o, "/status/nodeInfo/kernelVersion")),
        json!(str_at(o, "/status/nodeInfo/containerRuntimeVersion")),
    ]
}

/// Up to three entries, then how many more, as kubectl abbreviates endpoint lists.
fn first_three(items: &[String]) -> String {
    let shown = items.iter().take(3).cloned().collect::<Vec<_>>().join(",");
    match items.len() {
        0..=3 => shown,
        n => format!("{shown} + {} more...", n - 3),
    }
}

/// `ip:port` pairs of an Endpoints object.
fn endpoints_summary(o: &Value) -> String {
    let mut pairs = Vec::new();
    for subset in array(o, "/subsets") {
        for address in array(subset, "/addresses") {
            for port in array(subset, "/ports") {
                pairs.push(format!(
                    "{}:{}",
                    str_at(address, "/ip"),
                    int_at(port, "/port")
                ));
            }
        }
    }
    or_none(first_three(&pairs))
}

/// A Job's row: status, completions, duration (kubectl 1.33's columns).
fn job_cells(o: &Value, now: OffsetDateTime) -> Vec<Value> {
    let (containers, images) = containers_and_images(o, "/spec/template/spec/containers");
    let condition = |kind: &str| {
        array(o, "/status/conditions")
            .iter()
            .any(|c| str_at(c, "/type") == kind && str_at(c, "/status") == "True")
    };
    let status = if condition("Failed") {
        "Failed"
    } else if condition("Complete") {
        "Complete"
    } else if condition("Suspended") {
        "Suspended"
    } else if condition("FailureTarget") {
        "FailureTarget"
    } else if condition("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    };
    let completions = match o.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(total) => format!("{}/{total}", int_at(o, "/status/succeeded")),
        None => format!(
            "{}/1 of {}",
            int_at(o, "/status/succeeded"),
            o.pointer("/spec/parallelism")
                .and_then(Value::as_i64)
                .unwrap_or(1)
        ),
    };
    let duration = timestamp(o, "/status/startTime").map(|start| {
        let end = timestamp(o, "/status/completionTime").unwrap_or(now);
        human_duration((end - start).whole_seconds())
    });
    vec![
        json!(status),
        json!(completions),
        json!(duration.unwrap_or_default()),
        Value::Null,
        json!(containers),
        json!(images),
        json!(label_selector(o, "/spec/selector/matchLabels")),
    ]
}

/// The cells of one row; `Value::Null` marks where the age goes.
fn kind_cells(kind: &str, o: &Value, now: OffsetDateTime) -> Vec<Value> {
    let count = |pointer: &str| {
        o.pointer(pointer)
            .and_then(Value::as_object)
            .map_or(0, |m| m.len())
    };
    match kind {
        "Pod" => pod_cells(o),
        "Deployment" => {
            let (containers, images) = containers_and_images(o, "/spec/template/spec/containers");
            vec![
                json!(format!(
                    "{}/{}",
                    int_at(o, "/status/readyReplicas"),
                    int_at(o, "/spec/replicas")
                )),
                json!(int_at(o, "/status/updatedReplicas")),
                json!(int_at(o, "/status/availableReplicas")),
                Value::Null,
                json!(containers),
                json!(images),
                json!(label_selector(o, "/spec/selector/matchLabels")),
            ]
        }
        "ReplicaSet" => {
            let (containers, images) = containers_and_images(o, "/spec/template/spec/containers");
            vec![
                json!(int_at(o, "/spec/replicas")),
                json!(int_at(o, "/status/replicas")),
                json!(int_at(o, "/status/readyReplicas")),
                Value::Null,
                json!(containers),
                json!(images),
                json!(label_selector(o, "/spec/selector/matchLabels")),
            ]
        }
        "Service" => service_cells(o),
        "Node" => node_cells(o),
        "Namespace" => vec![json!(str_at(o, "/status/phase")), Value::Null],
        "ConfigMap" => vec![json!(count("/data") + count("/binaryData")), Value::Null],
        "Secret" => vec![
            json!(str_at(o, "/type")),
            json!(count("/data")),
            Value::Null,
        ],
        "DaemonSet" => {
            let (containers, images) = containers_and_images(o, "/spec/template/spec/containers");
            vec![
                json!(int_at(o, "/status/desiredNumberScheduled")),
                json!(int_at(o, "/status/currentNumberScheduled")),
                json!(int_at(o, "/status/numberReady")),
                json!(int_at(o, "/status/updatedNumberScheduled")),
                json!(int_at(o, "/status/numberAvailable")),
                json!(or_none(label_selector(
                    o,
                    "/spec/template/spec/nodeSelector"
                ))),
                Value::Null,
                json!(containers),
                json!(images),
                json!(label_selector(o, "/spec/selector/matchLabels")),
            ]
        }
        "StatefulSet" => {
            let (containers, images) = containers_and_images(o, "/spec/template/spec/containers");
            let replicas = o
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            vec![
                json!(format!("{}/{replicas}", int_at(o, "/status/readyReplicas"))),
                Value::Null,
                json!(containers),
                json!(images),
            ]
        }
        "Job" => job_cells(o, now),
        "CronJob" => {
            let (containers, images) =
                containers_and_images(o, "/spec/jobTemplate/spec/template/spec/containers");
            vec![
                json!(str_at(o, "/spec/schedule")),
                json!(or_none(str_at(o, "/spec/timeZone").to_string())),
                json!(o
                    .pointer("/spec/suspend")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)),
                json!(array(o, "/status/active").len()),
                json!(since(o, "/status/lastScheduleTime", now).unwrap_or_else(|| "<none>".into())),
                Value::Null,
                json!(containers),
                json!(images),
                json!(or_none(label_selector(
                    o,
                    "/spec/jobTemplate/spec/selector/matchLabels"
                ))),
            ]
        }
        "ServiceAccount" => vec![json!(array(o, "/secrets").len().to_string()), Value::Null],
        "Endpoints" => vec![json!(endpoints_summary(o)), Value::Null],
        "EndpointSlice" => {
            let ports: Vec<String> = array(o, "/ports")
                .iter()
                .map(|p| int_at(p, "/port").to_string())
                .collect();
            let addresses: Vec<String> = array(o, "/endpoints")
                .iter()
                .flat_map(|e| array(e, "/addresses").iter().filter_map(Value::as_str))
                .map(str::to_string)
                .collect();
            vec![
                json!(str_at(o, "/addressType")),
                json!(or_none(ports.join(","))),
                json!(or_none(first_three(&addresses))),
                Value::Null,
            ]
        }
        "Lease" => vec![
            json!(or_none(str_at(o, "/spec/holderIdentity").to_string())),
            Value::Null,
        ],
        "ControllerRevision" => {
            let controller = array(o, "/metadata/ownerReferences")
                .iter()
                .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
                .map(|r| {
                    let group = str_at(r, "/apiVersion")
                        .split_once('/')
                        .map(|(g, _)| g)
                        .unwrap_or("");
                    let kind = str_at(r, "/kind").to_lowercase();
                    let kind = if group.is_empty() {
                        kind
                    } else {
                        format!("{kind}.{group}")
                    };
                    format!("{kind}/{}", str_at(r, "/name"))
                })
                .unwrap_or_default();
            vec![
                json!(or_none(controller)),
                json!(int_at(o, "/revision")),
                Value::Null,
            ]
        }
        "PersistentVolumeClaim" => {
            let modes: Vec<&str> = array(o, "/status/accessModes")
                .iter()
                .filter_map(Value::as_str)
                .map(|m| match m {
                    "ReadWriteOnce" => "RWO",
                    "ReadOnlyMany" => "ROX",
                    "ReadWriteMany" => "RWX",
                    "ReadWriteOncePod" => "RWOP",
                    other => other,
                })
                .collect();
            vec![
                json!(str_at(o, "/status/phase")),
                json!(str_at(o, "/spec/volumeName")),
                json!(str_at(o, "/status/capacity/storage")),
                json!(modes.join(",")),
                json!(or_none(str_at(o, "/spec/storageClassName").to_string())),
                Value::Null,
            ]
        }
        _ => vec![Value::Null],
    }
}

/// A CRD's `additionalPrinterColumns` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrinterColumn {
    pub name: String,
    /// `string`, `integer`, `number`, `boolean` or `date` (shown as an age).
    pub kind: String,
    /// A simple JSONPath: `.spec.replicas`, `.status.items[0].name`.
    pub json_path: String,
    pub priority: i64,
    pub description: String,
}

impl PrinterColumn {
    /// Reads one entry of a CRD version's `additionalPrinterColumns`.
    pub fn from_crd(entry: &Value) -> Option<PrinterColumn> {
        Some(PrinterColumn {
            name: entry.get("name")?.as_str()?.to_string(),
            kind: entry
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("string")
                .to_string(),
            json_path: entry.get("jsonPath")?.as_str()?.to_string(),
            priority: entry.get("priority").and_then(Value::as_i64).unwrap_or(0),
            description: entry
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        })
    }
}

/// Follows a simple JSONPath (dotted fields and `[n]` indexes) into `object`.
pub fn json_path<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = object;
    for part in path
        .trim_start_matches('.')
        .split('.')
        .filter(|p| !p.is_empty())
    {
        let (field, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !field.is_empty() {
            current = current.get(field)?;
        }
        for index in indexes.split('[').filter(|s| !s.is_empty()) {
            let n: usize = index.trim_end_matches(']').parse().ok()?;
            current = current.get(n)?;
        }
    }
    Some(current)
}

fn custom_cells(columns: &[PrinterColumn], o: &Value, now: OffsetDateTime) -> Vec<Value> {
    columns
        .iter()
        .map(|c| match (json_path(o, &c.json_path), c.kind.as_str()) {
            (Some(Value::String(t)), "date") => {
                let parsed =
                    OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339);
                parsed.map_or(Value::Null, |at| {
                    json!(human_duration((now - at).whole_seconds()))
                })
            }
            (Some(v), _) => v.clone(),
            (None, _) => Value::Null,
        })
        .collect()
}

/// A Table of `objects` of `kind` (already carrying their resourceVersions), with kubectl's
/// default columns for the kind (and its `-o wide` ones at priority 1), or a custom resource's
/// printer columns when it declares any.
pub fn table(
    kind: &str,
    custom: Option<&[PrinterColumn]>,
    objects: &[Value],
    resource_version: &str,
    continue_token: Option<&str>,
) -> Value {
    let now = OffsetDateTime::now_utc();
    let custom = custom.filter(|c| !c.is_empty());
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut cells = vec![o.pointer("/metadata/name").cloned().unwrap_or(Value::Null)];
            if kind == "Event" && custom.is_none() {
                cells = event_cells(o, now);
            } else {
                match custom {
                    Some(columns) => cells.extend(custom_cells(columns, o, now)),
                    None => cells.extend(kind_cells(kind, o, now).into_iter().map(|c| {
                        if c.is_null() {
                            json!(age(o, now))
                        } else {
                            c
                        }
                    })),
                }
            }
            json!({
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or_else(|| json!({})),
                },
            })
        })
        .collect();
    let mut metadata = json!({"resourceVersion": resource_version});
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    let name_column = json!({"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0});
    let column_definitions: Vec<Value> = match custom {
        Some(columns) => std::iter::once(name_column)
            .chain(columns.iter().map(|c| {
                let kind = if c.kind == "date" { "string" } else { c.kind.as_str() };
                json!({"name": c.name, "type": kind, "format": "", "description": c.description, "priority": c.priority})
            }))
            .collect(),
        None => columns(kind)
            .into_iter()
            .map(|(name, kind, wide)| {
                json!({"name": name, "type": kind, "format": if name == "Name" { "name" } else { "" },
                       "description": "", "priority": i32::from(wide)})
            })
            .collect(),
    };
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": column_definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_print_when_and_what_first() {
        let now = OffsetDateTime::now_utc();
        let stamp = |ago: i64| {
            (now - time::Duration::seconds(ago))
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        let event = json!({"metadata": {"name": "web.1"}, "type": "Warning", "reason": "BackOff",
            "involvedObject": {"kind": "Pod", "name": "web", "fieldPath": "spec.containers{app}"},
            "source": {"component": "kubelet", "host": "n1"}, "message": "Back-off restarting",
            "firstTimestamp": stamp(300), "lastTimestamp": stamp(5), "count": 4});
        let table = table("Event", None, &[event], "1", None);
        let names: Vec<&str> = table["columnDefinitions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["priority"] == 0)
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["Last Seen", "Type", "Reason", "Object", "Message"]);
        let cells = &table["rows"][0]["cells"];
        assert_eq!(cells[0], "5s");
        assert_eq!(cells[3], "pod/web");
        assert_eq!(cells[5], "kubelet, n1");
        assert_eq!(cells[7], "5m");
        assert_eq!(cells[8], "4");
        assert_eq!(cells[9], "web.1");
        assert_eq!(
            table["columnDefinitions"].as_array().map(Vec::len),
            Some(cells.as_array().map_or(0, Vec::len))
        );
    }

    #[test]
    fn durations_print_like_kubectl() {
        let cases = [
            (5, "5s"),
            (119, "119s"),
            (120, "2m"),
            (200, "3m20s"),
            (3000, "50m"),
            (4 * 3600 + 60, "4h1m"),
            (20 * 3600, "20h"),
            (3 * 86_400 + 3600, "3d1h"),
            (30 * 86_400, "30d"),
            (800 * 86_400, "2y70d"),
            (-1, "<invalid>"),
        ];
        for (seconds, want) in cases {
            assert_eq!(human_duration(seconds), want, "{seconds}");
        }
    }

    #[test]
    fn rows_have_one_cell_per_column() {
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"nodeName": "n1", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "podIP": "10.42.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let svc = json!({"metadata": {"name": "s"}, "spec": {"type": "NodePort", "clusterIP": "10.43.0.9",
            "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}], "selector": {"app": "web"}}});
        for (kind, object) in [
            ("Pod", &pod),
            ("Service", &svc),
            ("Node", &json!({})),
            ("Deployment", &json!({})),
            ("ReplicaSet", &json!({})),
            ("Namespace", &json!({})),
            ("ConfigMap", &json!({})),
            ("Secret", &json!({})),
            ("Lease", &json!({})),
        ] {
            let t = table(kind, None, std::slice::from_ref(object), "1", None);
            assert_eq!(
                t["rows"][0]["cells"].as_array().map(Vec::len),
                t["columnDefinitions"].as_array().map(Vec::len),
                "{kind}"
            );
        }
        let pod_table = table("Pod", None, &[pod], "1", None);
        let cells = pod_table["rows"][0]["cells"].as_array().expect("cells");
        assert_eq!(
            cells[1..4],
            [json!("1/2"), json!("CrashLoopBackOff"), json!("3")]
        );
        assert_eq!(cells[5..7], [json!("10.42.0.5"), json!("n1")]);
        let svc_table = table("Service", None, &[svc], "1", None);
        let cells = svc_table["rows"][0]["cells"].as_array().expect("cells");
        assert_eq!(
            cells[1..5],
            [
                json!("NodePort"),
                json!("10.43.0.9"),
                json!("<none>"),
                json!("80:30080/TCP,53/UDP")
            ]
        );
        assert_eq!(cells[6], json!("app=web"));
    }

    #[test]
    fn custom_resources_use_their_printer_columns() {
        let columns: Vec<PrinterColumn> = [
            json!({"name": "Size", "type": "integer", "jsonPath": ".spec.size"}),
            json!({"name": "First", "type": "string", "jsonPath": ".spec.items[0].name", "priority": 1}),
            json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}),
        ]
        .iter()
        .filter_map(PrinterColumn::from_crd)
        .collect();
        let widget = json!({"metadata": {"name": "w", "creationTimestamp": "2020-01-01T00:00:00Z"},
                            "spec": {"size": 3, "items": [{"name": "a"}]}});
        let t = table("Widget", Some(&columns), &[widget], "1", None);
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .expect("cols")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["Name", "Size", "First", "Age"]);
        assert_eq!(t["columnDefinitions"][2]["priority"], 1);
        let cells = t["rows"][0]["cells"].as_array().expect("cells");
        assert_eq!(cells[..3], [json!("w"), json!(3), json!("a")]);
        assert!(
            cells[3]
                .as_str()
                .is_some_and(|age| age.ends_with('y') || age.contains('y')),
            "{cells:?}"
        );
        assert_eq!(
            json_path(&json!({"a": [1, {"b": 2}]}), ".a[1].b"),
            Some(&json!(2))
        );
        assert_eq!(json_path(&json!({}), ".missing"), None);
    }

    #[test]
    fn recognises_kubectl_table_requests() {
        assert!(wants_table("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"));
        assert!(!wants_table("application/json"));
    }

    #[test]
    fn recognises_metadata_only_requests() {
        use super::Rendering;
        let metadata = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1";
        assert_eq!(Rendering::from_accept(metadata), Rendering::Metadata);
        assert_eq!(
            Rendering::from_accept(
                "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
            ),
            Rendering::Metadata
        );
        // An alternative the server cannot give is skipped for the next one.
        assert_eq!(
            Rendering::from_accept("application/json;as=Other;g=x.io;v=v1,application/json"),
            Rendering::Object
        );
        assert_eq!(Rendering::from_accept(""), Rendering::Object);
        let pod = json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "p", "uid": "u"}, "spec": {}});
        assert_eq!(
            super::partial_metadata(&pod),
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": {"name": "p", "uid": "u"}})
        );
    }

    #[test]
    fn node_status_reads_like_kubectl() {
        let status = |conditions: Value| {
            let node = json!({"metadata": {"name": "n"}, "status": {"conditions": conditions}});
            node_cells(&node)[0].clone()
        };
        assert_eq!(
            status(json!([{"type": "Ready", "status": "True"}])),
            "Ready"
        );
        assert_eq!(
            status(json!([{"type": "Ready", "status": "False"}])),
            "NotReady"
        );
        assert_eq!(
            status(json!([{"type": "Ready", "status": "Unknown"}])),
            "NotReady"
        );
        assert_eq!(status(json!([])), "Unknown");
    }
}
