//! `/openapi/v3` and `/openapi/v2`: the root (one entry per group-version) and one document
//! per group-version listing each resource's operations with `x-kubernetes-group-version-kind`
//! and the query parameters the server honours — `fieldValidation` among them, which is how
//! kubectl learns that it can leave validation to the server — plus `components.schemas`: the
//! Kubernetes schemas of the built-in kinds (from k8s-openapi's generated schemas, which carry
//! the upstream descriptions) and each CRD version's `openAPIV3Schema`, which `kubectl explain`
//! reads.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use k8s_openapi::Resource;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::JsonSchema;
use serde_json::{json, Map, Value};
use shoal_common::catalog::{self, ResourceDef};

use crate::crd::Served;

mod gnostic;
pub mod v2;

/// One built-in kind's schema: its group, version, kind, definition name, and a function that
/// adds its schema (and everything it references) to a generator.
struct KindSchema {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    name: fn() -> std::borrow::Cow<'static, str>,
    add: fn(&mut SchemaGenerator) -> schemars::Schema,
}

macro_rules! kind_schemas {
    ($($t:ty),* $(,)?) => {
        &[$(KindSchema {
            group: <$t as Resource>::GROUP,
            version: <$t as Resource>::VERSION,
            kind: <$t as Resource>::KIND,
            name: <$t as JsonSchema>::schema_name,
            add: |generator| generator.subschema_for::<$t>(),
        }),*]
    };
}

/// Every kind of the built-in catalogue (a test keeps the two lists in step).
static KIND_SCHEMAS: &[KindSchema] = {
    use k8s_openapi::api::{apps, batch, coordination, core, discovery, events, rbac};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
    kind_schemas![
        core::v1::Namespace,
        core::v1::Pod,
        core::v1::Service,
        core::v1::Endpoints,
        core::v1::Node,
        core::v1::ConfigMap,
        core::v1::Secret,
        core::v1::ServiceAccount,
        core::v1::Event,
        core::v1::PersistentVolumeClaim,
        apps::v1::Deployment,
        apps::v1::ReplicaSet,
        apps::v1::DaemonSet,
        apps::v1::StatefulSet,
        apps::v1::ControllerRevision,
        batch::v1::Job,
        batch::v1::CronJob,
        coordination::v1::Lease,
        discovery::v1::EndpointSlice,
        events::v1::Event,
        rbac::v1::Role,
        rbac::v1::RoleBinding,
        rbac::v1::ClusterRole,
        rbac::v1::ClusterRoleBinding,
        apiextensions::CustomResourceDefinition,
    ]
};

const OBJECT_META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

fn gvk_extension(group: &str, version: &str, kind: &str) -> Value {
    json!([{"group": group, "version": version, "kind": kind}])
}

/// The strategic-merge-patch metadata of list and object fields, by definition and property
/// (Kubernetes' `patchStrategy`/`patchMergeKey` struct tags, which k8s-openapi's schemas do not
/// carry). kubectl reads them from the published schemas when it computes an apply patch.
const PATCH_METADATA: &[(&str, &str, Option<&str>, &str)] = &[
    (
        "io.k8s.api.apps.v1.DaemonSetStatus",
        "conditions",
        Some("type"),
        "merge",
    ),
    (
        "io.k8s.api.apps.v1.DeploymentSpec",
        "strategy",
        None,
        "retainKeys",
    ),
    (
        "io.k8s.api.apps.v1.DeploymentStatus",
        "conditions",
        Some("type"),
        "merge",
    ),
    (
        "io.k8s.api.apps.v1.ReplicaSetStatus",
        "conditions",
        Some("type"),
        "merge",
    ),
    (
        "io.k8s.api.apps.v1.StatefulSetStatus",
        "conditions",
        Some("type"),
        "merge",
    ),
    (
        "io.k8s.api.batch.v1.JobStatus",
        "conditions",
        Some("type"),
        "merge",
    ),
    ("io.k8s.api.core.v1.Container", "env", Some("name"), "merge"),
    (
        "io.k8s.api.core.v1.Container",
        "ports",
        Some("containerPort"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeDevices",
        Some("devicePath"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeMounts",
        Some("mountPath"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.ContainerStatus",
        "volumeMounts",
        Some("mountPath"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "env",
        Some("name"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "ports",
        Some("containerPort"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeDevices",
        Some("devicePath"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeMounts",
        Some("mountPath"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.NamespaceStatus",
        "conditions",
        Some("type"),
        "merge",
    ),
    ("io.k8s.api.core.v1.NodeSpec", "podCIDRs", None, "merge"),
    (
        "io.k8s.api.core.v1.NodeStatus",
        "addresses",
        Some("type"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.NodeStatus",
        "conditions",
        Some("type"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PersistentVolumeClaimStatus",
        "conditions",
        Some("type"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "containers",
        Some("name"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "ephemeralContainers",
        Some("name"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "hostAliases",
        Some("ip"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "imagePullSecrets",
        Some("name"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "initContainers",
        Some("name"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "resourceClaims",
        Some("name"),
        "merge,retainKeys",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "schedulingGates",
        Some("name"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "topologySpreadConstraints",
        Some("topologyKey"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "volumes",
        Some("name"),
        "merge,retainKeys",
    ),
    (
        "io.k8s.api.core.v1.PodStatus",
        "conditions",
        Some("type"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodStatus",
        "hostIPs",
        Some("ip"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.PodStatus",
        "podIPs",
        Some("ip"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.ServiceAccount",
        "secrets",
        Some("name"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.ServiceSpec",
        "ports",
        Some("port"),
        "merge",
    ),
    (
        "io.k8s.api.core.v1.ServiceStatus",
        "conditions",
        Some("type"),
        "merge",
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        None,
        "merge",
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        Some("uid"),
        "merge",
    ),
];

fn add_patch_metadata(definitions: &mut Map<String, Value>) {
    for (definition, property, key, strategy) in PATCH_METADATA {
        let Some(Value::Object(schema)) = definitions
            .get_mut(*definition)
            .and_then(|d| d.get_mut("properties"))
            .and_then(|p| p.get_mut(*property))
        else {
            continue;
        };
        if let Some(key) = key {
            schema.insert("x-kubernetes-patch-merge-key".into(), json!(key));
        }
        schema.insert("x-kubernetes-patch-strategy".into(), json!(strategy));
    }
}

/// The schemas of one group-version (or of all of them, `None`): the built-in kinds' schemas
/// with their references, and the CRD versions served there, keyed by definition name.
fn schemas(only: Option<(&str, &str)>, custom: &[Served]) -> Map<String, Value> {
    let wanted = |group: &str, version: &str| only.is_none_or(|gv| gv == (group, version));
    let mut generator = SchemaSettings::openapi3().into_generator();
    let builtin: Vec<&KindSchema> = KIND_SCHEMAS
        .iter()
        .filter(|k| wanted(k.group, k.version))
        .collect();
    for kind in &builtin {
        (kind.add)(&mut generator);
    }
    let custom: Vec<&Served> = custom
        .iter()
        .filter(|s| wanted(s.def.group, s.def.version))
        .collect();
    if !custom.is_empty() {
        generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>();
    }
    let mut definitions = generator.take_definitions(true);
    add_patch_metadata(&mut definitions);
    for kind in builtin {
        if let Some(Value::Object(schema)) = definitions.get_mut((kind.name)().as_ref()) {
            schema.insert(
                "x-kubernetes-group-version-kind".into(),
                gvk_extension(kind.group, kind.version, kind.kind),
            );
        }
    }
    for served in custom {
        let def = served.def;
        definitions.insert(custom_schema_name(def), custom_schema(served));
    }
    definitions
}

/// CRD schemas are named like Kubernetes names them: the group reversed, then version and kind
/// (`com.example.stable.v1.CronTab`).
fn custom_schema_name(def: &ResourceDef) -> String {
    let mut parts: Vec<&str> = def.group.split('.').collect();
    parts.reverse();
    format!("{}.{}.{}", parts.join("."), def.version, def.kind)
}

/// A CRD version's schema as Kubernetes publishes it: the declared `openAPIV3Schema` with the
/// standard `apiVersion`, `kind` and `metadata` properties filled in.
fn custom_schema(served: &Served) -> Value {
    let def = served.def;
    let mut schema =
        served.schema.as_deref().cloned().unwrap_or_else(
            || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        );
    if let Value::Object(object) = &mut schema {
        let properties = object.entry("properties").or_insert_with(|| json!({}));
        if let Value::Object(properties) = properties {
            properties.entry("apiVersion").or_insert_with(|| json!({
                "type": "string",
                "description": "APIVersion defines the versioned schema of this representation of an object. Servers should convert recognized schemas to the latest internal value, and may reject unrecognized values.",
            }));
            properties.entry("kind").or_insert_with(|| json!({
                "type": "string",
                "description": "Kind is a string value representing the REST resource this object represents. Servers may infer this from the endpoint the client submits requests to. Cannot be updated. In CamelCase.",
            }));
            properties.insert(
                "metadata".into(),
                json!({"allOf": [{"$ref": format!("#/components/schemas/{OBJECT_META}")}],
                       "description": "Standard object's metadata."}),
            );
        }
        object.insert(
            "x-kubernetes-group-version-kind".into(),
            gvk_extension(def.group, def.version, def.kind),
        );
    }
    schema
}

/// `api/v1` or `apis/<group>/<version>`.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn defs<'a>(custom: &'a [&'static ResourceDef]) -> impl Iterator<Item = &'static ResourceDef> + 'a {
    catalog::BUILTIN.iter().chain(custom.iter().copied())
}

/// The document for one group-version, or `None` if nothing is served there. Documents of
/// built-in group-versions are built once; CRD groups never share a group with built-ins.
pub fn group_version(group: &str, version: &str, custom: &[Served]) -> Option<Arc<Value>> {
    if custom
        .iter()
        .any(|s| s.def.group == group && s.def.version == version)
    {
        return build_document(group, version, custom).map(Arc::new);
    }
    builtin_documents()
        .get(&(group, version))
        .map(|(doc, _)| doc.clone())
}

type DocumentCache = HashMap<(&'static str, &'static str), (Arc<Value>, String)>;

/// The built-in group-versions' documents with their hashes.
fn builtin_documents() -> &'static DocumentCache {
    static DOCUMENTS: OnceLock<DocumentCache> = OnceLock::new();
    DOCUMENTS.get_or_init(|| {
        let mut documents = HashMap::new();
        for def in catalog::BUILTIN {
            let key = (def.group, def.version);
            if documents.contains_key(&key) {
                continue;
            }
            if let Some(doc) = build_document(def.group, def.version, &[]) {
                let hash = hash_of(&doc);
                documents.insert(key, (Arc::new(doc), hash));
            }
        }
        documents
    })
}

fn hash_of(doc: &Value) -> String {
    let mut hasher = DefaultHasher::new();
    doc.to_string().hash(&mut hasher);
    format!("{:016X}", hasher.finish())
}

/// Query parameters of list, write and delete operations.
const LIST_PARAMS: &[&str] = &[
    "labelSelector",
    "fieldSelector",
    "limit",
    "continue",
    "watch",
];
const WRITE_PARAMS: &[&str] = &["dryRun", "fieldManager", "fieldValidation", "pretty"];
const DELETE_PARAMS: &[&str] = &["dryRun", "gracePeriodSeconds", "propagationPolicy"];

/// One operation: HTTP method, Kubernetes action, query parameters.
type Operation = (&'static str, &'static str, &'static [&'static str]);

/// One path of a resource and its operations.
struct Endpoint {
    path: String,
    /// Whether the path names one object (`{name}` is a path parameter).
    named: bool,
    operations: Vec<Operation>,
}

/// The paths a resource is served at, each with its operations, in the Swagger/OpenAPI form
/// both documents share.
fn endpoints(def: &ResourceDef) -> Vec<Endpoint> {
    let gv = gv_path(def.group, def.version);
    let base = if def.namespaced {
        format!("/{gv}/namespaces/{{namespace}}/{}", def.plural)
    } else {
        format!("/{gv}/{}", def.plural)
    };
    let mut endpoints = vec![
        Endpoint {
            path: base.clone(),
            named: false,
            operations: vec![("get", "list", LIST_PARAMS), ("post", "post", WRITE_PARAMS)],
        },
        Endpoint {
            path: format!("{base}/{{name}}"),
            named: true,
            operations: vec![
                ("get", "get", &[]),
                ("put", "put", WRITE_PARAMS),
                ("patch", "patch", WRITE_PARAMS),
                ("delete", "delete", DELETE_PARAMS),
            ],
        },
    ];
    for (sub, served) in [("status", def.status), ("scale", def.scale)] {
        if served {
            endpoints.push(Endpoint {
                path: format!("{base}/{{name}}/{sub}"),
                named: true,
                operations: vec![
                    ("patch", "patch", WRITE_PARAMS),
                    ("put", "put", WRITE_PARAMS),
                ],
            });
        }
    }
    endpoints
}

/// The `paths` of a document: every endpoint of `defs`, with `operation` rendering one
/// operation (resource, method, action, query parameters) and `path_param` one path
/// parameter, each in the document's dialect.
fn paths<'a>(
    defs: impl Iterator<Item = &'a ResourceDef>,
    operation: impl Fn(&ResourceDef, &str, &str, &[&str]) -> Value,
    path_param: impl Fn(&str) -> Value,
) -> Map<String, Value> {
    let mut paths = Map::new();
    for def in defs {
        for endpoint in endpoints(def) {
            let mut item = Map::new();
            for (method, action, params) in endpoint.operations {
                item.insert(method.into(), operation(def, method, action, params));
            }
            let mut params = Vec::new();
            if def.namespaced {
                params.push(path_param("namespace"));
            }
            if endpoint.named {
                params.push(path_param("name"));
            }
            if !params.is_empty() {
                item.insert("parameters".into(), Value::Array(params));
            }
            paths.insert(endpoint.path, Value::Object(item));
        }
    }
    paths
}

fn gvk(def: &ResourceDef) -> Value {
    json!({"group": def.group, "version": def.version, "kind": def.kind})
}

fn build_document(group: &str, version: &str, custom: &[Served]) -> Option<Value> {
    let custom_defs: Vec<&'static ResourceDef> = custom.iter().map(|s| s.def).collect();
    let served: Vec<&ResourceDef> = defs(&custom_defs)
        .filter(|d| d.group == group && d.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let query = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
    let path_param = |name: &str| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}});
    let operation = |def: &ResourceDef, _method: &str, action: &str, params: &[&str]| {
        let params: Vec<Value> = params.iter().map(|p| query(p)).collect();
        json!({
            "operationId": format!("{action}{}", def.kind),
            "parameters": params,
            "responses": {"200": {"description": "OK"}},
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk(def),
        })
    };
    let paths = paths(served.into_iter(), operation, path_param);
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": shoal_common::KUBERNETES_VERSION},
        "paths": paths,
        "components": {"schemas": schemas(Some((group, version)), custom)},
    }))
}

/// `/openapi/v3`: where each group-version's document is, with a hash that changes with it.
pub fn root(custom: &[Served]) -> Value {
    let custom_defs: Vec<&'static ResourceDef> = custom.iter().map(|s| s.def).collect();
    let mut group_versions: Vec<(&str, &str)> = vec![("", "v1")];
    for def in defs(&custom_defs) {
        if !group_versions.contains(&(def.group, def.version)) {
            group_versions.push((def.group, def.version));
        }
    }
    let mut paths = Map::new();
    for (group, version) in group_versions {
        let hash = match builtin_documents().get(&(group, version)) {
            Some((_, hash)) if !custom_defs.iter().any(|d| d.group == group) => hash.clone(),
            _ => group_version(group, version, custom)
                .map(|doc| hash_of(&doc))
                .unwrap_or_default(),
        };
        let path = gv_path(group, version);
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
        );
    }
    json!({"paths": paths})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_operations_advertise_field_validation() {
        let doc = group_version("apps", "v1", &[]).expect("apps/v1");
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        let params: Vec<&str> = patch["parameters"]
            .as_array()
            .expect("params")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert!(params.contains(&"fieldValidation"));
        assert!(doc["paths"]
            .get("/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale")
            .is_some());
        assert!(group_version("nope", "v1", &[]).is_none());
        let root = root(&[]);
        assert!(root["paths"]["api/v1"]["serverRelativeURL"]
            .as_str()
            .is_some_and(|u| u.starts_with("/openapi/v3/api/v1?hash=")));
        assert!(root["paths"].get("apis/apps/v1").is_some());
    }

    #[test]
    fn every_builtin_kind_has_a_schema() {
        for def in catalog::BUILTIN {
            assert!(
                KIND_SCHEMAS
                    .iter()
                    .any(|k| (k.group, k.version, k.kind) == (def.group, def.version, def.kind)),
                "no schema for {}/{}",
                def.api_version(),
                def.kind
            );
        }
    }

    #[test]
    fn documents_carry_kind_schemas_with_their_references() {
        let doc = group_version("apps", "v1", &[]).expect("apps/v1");
        let schemas = &doc["components"]["schemas"];
        let deployment = &schemas["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            deployment["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        assert!(deployment["description"]
            .as_str()
            .is_some_and(|d| d.contains("declarative updates")));
        // Referenced types come along, and references point into the same document.
        assert!(schemas.get("io.k8s.api.core.v1.PodSpec").is_some());
        assert!(schemas.get(OBJECT_META).is_some());
        let text = doc.to_string();
        assert!(
            !text.contains("#/$defs"),
            "references must point at components"
        );
    }

    #[test]
    fn crd_versions_are_published_with_object_meta() {
        let crd = json!({"metadata": {"name": "crontabs.stable.example.com"},
            "spec": {"group": "stable.example.com", "scope": "Namespaced",
            "names": {"plural": "crontabs", "singular": "crontab", "kind": "CronTab"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "description": "A cron tab.",
                    "properties": {"spec": {"type": "object", "properties": {"cronSpec": {"type": "string"}}}}}}}]}});
        let served = crate::crd::served_versions(&crd).expect("served");
        let doc = group_version("stable.example.com", "v1", &served).expect("document");
        let schema = &doc["components"]["schemas"]["com.example.stable.v1.CronTab"];
        assert_eq!(schema["description"], "A cron tab.");
        assert_eq!(
            schema["x-kubernetes-group-version-kind"][0]["group"],
            "stable.example.com"
        );
        assert!(schema["properties"]["metadata"]["allOf"][0]["$ref"]
            .as_str()
            .is_some_and(|r| r.ends_with(OBJECT_META)));
        assert!(doc["components"]["schemas"].get(OBJECT_META).is_some());
        assert!(root(&served)["paths"]
            .get("apis/stable.example.com/v1")
            .is_some());
    }
}
