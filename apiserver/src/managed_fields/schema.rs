//! The part of a type's schema that field ownership needs: which lists are associative (and by
//! which keys) or sets, which objects are string maps or owned whole. Kubernetes reads this from
//! `x-kubernetes-list-type`, `x-kubernetes-list-map-keys` and `x-kubernetes-map-type` in the
//! OpenAPI schema; [`BuiltinSchema`] tables it for the built-in kinds, and a CRD schema can
//! implement [`Schema`] itself.

use serde_json::Value;

/// How a list merges and is owned.
#[derive(Debug, Clone, PartialEq)]
pub enum ListKind {
    /// Replaced as a whole and owned as one field (the default).
    Atomic,
    /// A set of scalars (`x-kubernetes-list-type: set`): each value is owned on its own.
    Set,
    /// An associative list (`x-kubernetes-list-type: map`): items are named by these key
    /// fields, merged and owned one by one.
    Map(Vec<ListKey>),
}

/// A key field of an associative list, with the value an item that omits it is keyed by
/// (Kubernetes uses the schema default, e.g. `protocol: TCP` for ports).
#[derive(Debug, Clone, PartialEq)]
pub struct ListKey {
    pub name: String,
    pub default: Option<Value>,
}

impl ListKey {
    pub fn new(name: &str) -> Self {
        ListKey {
            name: name.into(),
            default: None,
        }
    }

    pub fn with_default(name: &str, default: Value) -> Self {
        ListKey {
            name: name.into(),
            default: Some(default),
        }
    }
}

/// How an object's fields are owned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// A struct: its fields are owned one by one; the struct node itself is implied by them.
    Struct,
    /// A string-keyed map (labels, data): each entry is owned as an item of its own.
    Map,
    /// Replaced and owned as a whole (`x-kubernetes-map-type: atomic`, e.g. a LabelSelector).
    Atomic,
}

/// Schema facts by path. `path` holds the field names from the root; list items add nothing,
/// so the items of `spec.containers` and the list itself share `["spec", "containers"]`
/// (`list_kind` is asked about the list, `object_kind` about its items).
pub trait Schema {
    fn list_kind(&self, path: &[&str]) -> ListKind;

    fn object_kind(&self, path: &[&str]) -> ObjectKind;

    /// Whether the node exists in every object of the type, even an empty one (a Go value
    /// field such as `spec`). Kubernetes records an update as owning a struct or list node
    /// itself (`".": {}`) only when the node did not exist before; a value field always did.
    fn always_present(&self, path: &[&str]) -> bool {
        let _ = path;
        false
    }
}

/// The list and map types of the built-in kinds, as their OpenAPI schemas annotate them. Any
/// other kind is a custom resource without list annotations: every list atomic, every object a
/// struct; its `metadata` is still an `ObjectMeta`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltinSchema {
    /// `None` for a kind that is not built in.
    kind: Option<String>,
}

const BUILTIN_KINDS: &[&str] = &[
    "Pod",
    "PodTemplate",
    "ReplicationController",
    "Deployment",
    "ReplicaSet",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "CronJob",
    "Service",
    "Endpoints",
    "EndpointSlice",
    "ConfigMap",
    "Secret",
    "Namespace",
    "Node",
    "ServiceAccount",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Event",
    "LimitRange",
    "ResourceQuota",
    "Ingress",
    "IngressClass",
    "NetworkPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "Lease",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "PriorityClass",
    "StorageClass",
    "CustomResourceDefinition",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "APIService",
];

impl BuiltinSchema {
    pub fn for_kind(kind: &str) -> Self {
        BuiltinSchema {
            kind: BUILTIN_KINDS.contains(&kind).then(|| kind.to_string()),
        }
    }

    fn builtin_kind(&self) -> Option<&str> {
        self.kind.as_deref()
    }
}

fn split_last<'a>(path: &[&'a str]) -> (Option<&'a str>, &'a str) {
    match path {
        [] => (None, ""),
        [only] => (None, only),
        [.., parent, last] => (Some(parent), last),
    }
}

fn is_container_list(name: Option<&str>) -> bool {
    matches!(
        name,
        Some("containers" | "initContainers" | "ephemeralContainers")
    )
}

fn keyed(names: &[&str]) -> ListKind {
    ListKind::Map(names.iter().map(|n| ListKey::new(n)).collect())
}

/// Ports are keyed by number and protocol; the schema defaults the protocol to TCP.
fn ports_keyed_by(number: &str) -> ListKind {
    ListKind::Map(vec![
        ListKey::new(number),
        ListKey::with_default("protocol", Value::String("TCP".into())),
    ])
}

/// `ObjectMeta`, wherever it is embedded (the object's own, a pod template's).
fn object_meta_list(field: &str) -> ListKind {
    match field {
        "finalizers" => ListKind::Set,
        "ownerReferences" => keyed(&["uid"]),
        _ => ListKind::Atomic,
    }
}

fn object_meta_object(field: &str) -> ObjectKind {
    match field {
        "labels" | "annotations" => ObjectKind::Map,
        // OwnerReference is `+structType=atomic`.
        "ownerReferences" => ObjectKind::Atomic,
        _ => ObjectKind::Struct,
    }
}

impl Schema for BuiltinSchema {
    fn list_kind(&self, path: &[&str]) -> ListKind {
        let (parent, field) = split_last(path);
        if parent == Some("metadata") {
            return object_meta_list(field);
        }
        let Some(kind) = self.builtin_kind() else {
            return ListKind::Atomic;
        };
        match field {
            "containers"
            | "initContainers"
            | "ephemeralContainers"
            | "volumes"
            | "imagePullSecrets"
            | "schedulingGates"
            | "resourceClaims"
            | "webhooks" => keyed(&["name"]),
            "env" if is_container_list(parent) => keyed(&["name"]),
            "volumeMounts" if is_container_list(parent) => keyed(&["mountPath"]),
            "volumeDevices" if is_container_list(parent) => keyed(&["devicePath"]),
            "ports" if is_container_list(parent) => ports_keyed_by("containerPort"),
            "ports" if kind == "Service" && path == ["spec", "ports"] => ports_keyed_by("port"),
            "claims" if parent == Some("resources") => keyed(&["name"]),
            // JobStatus.conditions is the one `+listType=atomic` conditions list.
            "conditions" if !matches!(kind, "Job" | "CronJob") => keyed(&["type"]),
            "hostAliases" => keyed(&["ip"]),
            "topologySpreadConstraints" => keyed(&["topologyKey", "whenUnsatisfiable"]),
            _ => ListKind::Atomic,
        }
    }

    fn object_kind(&self, path: &[&str]) -> ObjectKind {
        let (parent, field) = split_last(path);
        if parent == Some("metadata") {
            return object_meta_object(field);
        }
        let Some(kind) = self.builtin_kind() else {
            return ObjectKind::Struct;
        };
        let top_level = path.len() == 1;
        match field {
            // Service and ReplicationController select with a plain string map...
            "selector"
                if path == ["spec", "selector"]
                    && matches!(kind, "Service" | "ReplicationController") =>
            {
                ObjectKind::Map
            }
            // ...everything else with a LabelSelector, which is `+structType=atomic`.
            "selector" | "labelSelector" | "namespaceSelector" | "podSelector" => {
                ObjectKind::Atomic
            }
            // PodSpec.nodeSelector is `+mapType=atomic`.
            "nodeSelector" => ObjectKind::Atomic,
            // Object references and key selectors are `+structType=atomic`.
            "secretKeyRef" | "configMapKeyRef" | "fieldRef" | "resourceFieldRef"
            | "configMapRef" | "secretRef" => ObjectKind::Atomic,
            "requiredDuringSchedulingIgnoredDuringExecution" if parent == Some("nodeAffinity") => {
                ObjectKind::Atomic
            }
            "data" | "binaryData" | "stringData" | "parameters" if top_level => ObjectKind::Map,
            "limits" | "requests" if parent == Some("resources") => ObjectKind::Map,
            "capacity" | "allocatable" | "hard" | "used" => ObjectKind::Map,
            _ => ObjectKind::Struct,
        }
    }

    fn always_present(&self, path: &[&str]) -> bool {
        let (_, field) = split_last(path);
        if field == "metadata" {
            return true;
        }
        self.builtin_kind().is_some()
            && matches!(
                field,
                // Value (non-pointer) struct fields of the built-in types, and PodSpec's
                // `containers`, the one common list serialized even when empty.
                "spec"
                    | "status"
                    | "template"
                    | "strategy"
                    | "updateStrategy"
                    | "resources"
                    | "jobTemplate"
                    | "containers"
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(kind: ListKind) -> Vec<String> {
        match kind {
            ListKind::Map(keys) => keys.into_iter().map(|k| k.name).collect(),
            other => panic!("expected an associative list, got {other:?}"),
        }
    }

    #[test]
    fn tables_the_pod_spec_lists() {
        let deployment = BuiltinSchema::for_kind("Deployment");
        let pod_spec = ["spec", "template", "spec"];
        let at = |rest: &[&'static str]| -> Vec<&'static str> {
            pod_spec.iter().chain(rest.iter()).copied().collect()
        };
        assert_eq!(keys(deployment.list_kind(&at(&["containers"]))), ["name"]);
        assert_eq!(
            keys(deployment.list_kind(&at(&["containers", "env"]))),
            ["name"]
        );
        assert_eq!(
            keys(deployment.list_kind(&at(&["containers", "ports"]))),
            ["containerPort", "protocol"]
        );
        assert_eq!(
            keys(deployment.list_kind(&at(&["containers", "volumeMounts"]))),
            ["mountPath"]
        );
        assert_eq!(
            deployment.list_kind(&at(&["containers", "args"])),
            ListKind::Atomic
        );
        assert_eq!(
            deployment.list_kind(&at(&["tolerations"])),
            ListKind::Atomic
        );
        assert_eq!(
            deployment.list_kind(&["metadata", "finalizers"]),
            ListKind::Set
        );
    }

    #[test]
    fn service_ports_default_their_protocol() {
        let service = BuiltinSchema::for_kind("Service");
        let ListKind::Map(keys) = service.list_kind(&["spec", "ports"]) else {
            panic!("service ports are associative");
        };
        assert_eq!(keys[1].default, Some(Value::String("TCP".into())));
        assert_eq!(service.object_kind(&["spec", "selector"]), ObjectKind::Map);
        let deployment = BuiltinSchema::for_kind("Deployment");
        assert_eq!(
            deployment.object_kind(&["spec", "selector"]),
            ObjectKind::Atomic
        );
    }

    #[test]
    fn custom_resources_are_untyped_except_their_metadata() {
        let custom = BuiltinSchema::for_kind("Widget");
        assert_eq!(custom.list_kind(&["spec", "containers"]), ListKind::Atomic);
        assert_eq!(custom.list_kind(&["metadata", "finalizers"]), ListKind::Set);
        assert_eq!(custom.object_kind(&["metadata", "labels"]), ObjectKind::Map);
        assert!(!custom.always_present(&["spec"]));
        assert!(BuiltinSchema::for_kind("Deployment").always_present(&["spec"]));
    }
}
