//! `/openapi/v2`: one Swagger 2.0 document for the whole API — every resource's paths and
//! operations, and `definitions` holding the schemas the v3 documents publish (built-in kinds
//! and every served CRD version), converted to what Swagger 2.0 and kube-openapi's reader can
//! express. Served as JSON, or as the gnostic protobuf message kubectl asks for; both encodings
//! are built once per set of CRDs and cached.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use serde_json::{json, Map, Value};
use shoal_common::catalog::ResourceDef;

use super::{custom_schema_name, defs, gvk, paths, schemas, KIND_SCHEMAS};
use crate::crd::{CrdRegistry, Served};

/// The content type of the protobuf answer (kubectl asks for `...spec.v2@v1.0+protobuf`; the
/// answer must be parseable by Go's mime package, which rejects the `@`).
pub const PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

const V3_REFS: &str = "#/components/schemas/";
const V2_REFS: &str = "#/definitions/";

/// A v3 schema as Swagger 2.0 publishes it. References move to `#/definitions/`; a reference
/// wrapped in a one-element `allOf` (how schemars attaches a description to a reference)
/// becomes a plain `$ref` beside its description, as Kubernetes writes them; `oneOf`, `anyOf`,
/// `not` and `nullable` have no Swagger 2.0 form and are dropped (the field then accepts
/// anything, as in Kubernetes' own v2 document for CRDs); int-or-string becomes
/// `type: string, format: int-or-string`.
pub fn to_v2(schema: &Value) -> Value {
    let Value::Object(object) = schema else {
        // A boolean schema: `true` accepts anything.
        return json!({});
    };
    let mut out = Map::new();
    if let Some(Value::Array(all)) = object.get("allOf") {
        if let [only] = all.as_slice() {
            if let Some(reference) = only.get("$ref").and_then(Value::as_str) {
                out.insert("$ref".into(), json!(reference.replace(V3_REFS, V2_REFS)));
            }
        }
    }
    for (key, value) in object {
        let converted = match key.as_str() {
            "$ref" => json!(value.as_str().unwrap_or_default().replace(V3_REFS, V2_REFS)),
            "allOf" | "oneOf" | "anyOf" | "not" | "nullable" => continue,
            "properties" => Value::Object(
                value
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(name, schema)| (name.clone(), to_v2(schema)))
                    .collect(),
            ),
            "items" => match value {
                Value::Array(many) => many.first().map(to_v2).unwrap_or_else(|| json!({})),
                one => to_v2(one),
            },
            "additionalProperties" => match value {
                Value::Bool(b) => Value::Bool(*b),
                schema => to_v2(schema),
            },
            // A nullable type written as a list: the non-null one.
            "type" => match value {
                Value::Array(types) => match types.iter().find(|t| t.as_str() != Some("null")) {
                    Some(t) => t.clone(),
                    None => continue,
                },
                one => one.clone(),
            },
            _ => value.clone(),
        };
        out.insert(key.clone(), converted);
    }
    if out.contains_key("$ref") {
        // kube-openapi refuses a reference with a type or properties beside it.
        out.remove("type");
        out.remove("properties");
    } else if object.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        && !out.contains_key("type")
    {
        out.insert("type".into(), json!("string"));
        out.insert("format".into(), json!("int-or-string"));
    }
    Value::Object(out)
}

/// The definition name of a served kind's schema.
fn definition_name(def: &ResourceDef) -> String {
    KIND_SCHEMAS
        .iter()
        .find(|k| (k.group, k.version, k.kind) == (def.group, def.version, def.kind))
        .map(|k| (k.name)().into_owned())
        .unwrap_or_else(|| custom_schema_name(def))
}

/// The Swagger 2.0 document for the built-in kinds and `custom`.
pub fn document(custom: &[Served]) -> Value {
    let custom_defs: Vec<&'static ResourceDef> = custom.iter().map(|s| s.def).collect();
    let query =
        |name: &str| json!({"name": name, "in": "query", "type": "string", "uniqueItems": true});
    let path_param =
        |name: &str| json!({"name": name, "in": "path", "required": true, "type": "string"});
    let operation = |def: &ResourceDef, method: &str, action: &str, params: &[&str]| {
        let schema = json!({"$ref": format!("{V2_REFS}{}", definition_name(def))});
        let mut params: Vec<Value> = params.iter().map(|p| query(p)).collect();
        if matches!(method, "post" | "put" | "patch") {
            let body = if method == "patch" {
                json!({"type": "object"})
            } else {
                schema.clone()
            };
            params.push(json!({"name": "body", "in": "body", "required": true, "schema": body}));
        }
        json!({
            "operationId": format!("{action}{}", def.kind),
            "parameters": params,
            "responses": {"200": {"description": "OK", "schema": schema}},
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk(def),
        })
    };
    let paths = paths(defs(&custom_defs), operation, path_param);
    let definitions: Map<String, Value> = schemas(None, custom)
        .into_iter()
        .map(|(name, schema)| (name, to_v2(&schema)))
        .collect();
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": shoal_common::KUBERNETES_VERSION},
        "paths": paths,
        "definitions": definitions,
    })
}

/// The document in both encodings.
#[derive(Debug)]
pub struct Encoded {
    /// Shared by every answer without copying.
    pub json: Bytes,
    pub protobuf: Bytes,
}

impl Encoded {
    fn build(custom: &[Served]) -> Encoded {
        let document = document(custom);
        Encoded {
            json: serde_json::to_vec(&document).unwrap_or_default().into(),
            protobuf: super::gnostic::encode_document(&document).into(),
        }
    }
}

/// The encoded document of the CRD registry's current generation.
#[derive(Debug, Default)]
pub struct Cache {
    built: Mutex<Option<(u64, Arc<Encoded>)>>,
}

impl Cache {
    /// The cached encodings, rebuilt first if the CRDs changed since. Building takes a while
    /// (hundreds of definitions): call it off the async workers. Concurrent callers wait for
    /// one build instead of each building.
    pub fn get(&self, crds: &CrdRegistry) -> Arc<Encoded> {
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        // The generation is read before the CRDs, so what is built is never older than the
        // generation it is filed under.
        let generation = crds.generation();
        match &*built {
            Some((at, encoded)) if *at == generation => Arc::clone(encoded),
            _ => {
                let encoded = Arc::new(Encoded::build(&crds.served()));
                *built = Some((generation, Arc::clone(&encoded)));
                encoded
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    use crate::openapi::gnostic::{self, Document};

    /// Every definition passes the checks kube-openapi's `proto.NewOpenAPIData` makes (which
    /// fail the whole document, and so every kubectl command that reads it): references point
    /// into `#/definitions/` at a definition that exists and have no type or properties beside
    /// them; arrays have one item schema; types are single and known.
    fn check_parseable(schema: &gnostic::Schema, names: &[String], path: &str) {
        if !schema.xref.is_empty() {
            let name = schema
                .xref
                .strip_prefix(V2_REFS)
                .unwrap_or_else(|| panic!("{path}: {}", schema.xref));
            assert!(names.iter().any(|n| n == name), "{path}: unknown {name}");
            assert!(
                schema.r#type.is_none() && schema.properties.is_none(),
                "{path}"
            );
            return;
        }
        let types = schema
            .r#type
            .as_ref()
            .map(|t| t.value.clone())
            .unwrap_or_default();
        assert!(types.len() <= 1, "{path}: {types:?}");
        match types.first().map(String::as_str) {
            Some("array") => {
                let items = schema.items.as_ref().map(|i| i.schema.len());
                assert_eq!(items, Some(1), "{path}: array items");
                if let Some(items) = &schema.items {
                    check_parseable(&items.schema[0], names, &format!("{path}[]"));
                }
            }
            Some("object") | None => {}
            Some(t) => assert!(
                ["string", "integer", "number", "boolean"].contains(&t),
                "{path}: {t}"
            ),
        }
        for property in schema
            .properties
            .iter()
            .flat_map(|p| &p.additional_properties)
        {
            if let Some(value) = &property.value {
                check_parseable(value, names, &format!("{path}.{}", property.name));
            }
        }
        if let Some(schema) = schema
            .additional_properties
            .as_ref()
            .and_then(|a| a.schema.as_ref())
        {
            check_parseable(schema, names, &format!("{path}{{}}"));
        }
    }

    #[test]
    fn the_protobuf_document_carries_every_kind_and_parses_as_kubectl_parses_it() {
        let crd = json!({"metadata": {"name": "crontabs.stable.example.com"},
            "spec": {"group": "stable.example.com", "scope": "Namespaced",
            "names": {"plural": "crontabs", "singular": "crontab", "kind": "CronTab"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "description": "A cron tab.",
                    "properties": {"spec": {"type": "object", "properties": {
                        "cronSpec": {"type": "string", "nullable": true},
                        "port": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]}}}}}}}]}});
        let served = crate::crd::served_versions(&crd).expect("served");
        let encoded = Encoded::build(&served);
        let decoded = Document::decode(encoded.protobuf.clone()).expect("protobuf decodes");
        assert_eq!(decoded.swagger, "2.0");
        let definitions = decoded
            .definitions
            .expect("definitions")
            .additional_properties;
        let names: Vec<String> = definitions.iter().map(|d| d.name.clone()).collect();
        for definition in &definitions {
            check_parseable(
                definition.value.as_ref().expect("schema"),
                &names,
                &definition.name,
            );
        }
        let find = |name: &str| {
            definitions
                .iter()
                .find(|d| d.name == name)
                .and_then(|d| d.value.clone())
                .unwrap_or_else(|| panic!("no {name}"))
        };
        // Every built-in kind, with its group-version-kind.
        for kind in KIND_SCHEMAS {
            let schema = find(&(kind.name)());
            let gvk = schema
                .vendor_extension
                .iter()
                .find(|e| e.name == "x-kubernetes-group-version-kind")
                .and_then(|e| e.value.as_ref())
                .map(|v| serde_yaml::from_str::<Value>(&v.yaml).expect("yaml"))
                .unwrap_or_else(|| panic!("{} has no gvk", kind.kind));
            assert_eq!(
                gvk[0],
                json!({"group": kind.group, "version": kind.version, "kind": kind.kind})
            );
        }
        // Descriptions and references as kubectl explain reads them.
        let spec = find("io.k8s.api.apps.v1.DeploymentSpec");
        let property = |schema: &gnostic::Schema, name: &str| {
            schema
                .properties
                .as_ref()
                .and_then(|p| p.additional_properties.iter().find(|p| p.name == name))
                .and_then(|p| p.value.clone())
                .unwrap_or_else(|| panic!("no {name}"))
        };
        assert!(property(&spec, "replicas")
            .description
            .contains("Number of desired pods"));
        let template = property(&spec, "template");
        assert_eq!(
            template.xref,
            "#/definitions/io.k8s.api.core.v1.PodTemplateSpec"
        );
        assert!(template.description.starts_with("Template describes"));
        // Patch metadata for kubectl's apply.
        let containers = property(&find("io.k8s.api.core.v1.PodSpec"), "containers");
        assert!(containers
            .vendor_extension
            .iter()
            .any(|e| e.name == "x-kubernetes-patch-merge-key"
                && e.value.as_ref().is_some_and(|v| v.yaml == "\"name\"")));
        // The CRD's schema, with metadata pointing at ObjectMeta.
        let crontab = find("com.example.stable.v1.CronTab");
        assert_eq!(crontab.description, "A cron tab.");
        assert_eq!(
            property(&crontab, "metadata").xref,
            "#/definitions/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
        );
        let port = property(&property(&crontab, "spec"), "port");
        assert_eq!(port.format, "int-or-string");
        // Paths carry their operations.
        let paths = decoded.paths.expect("paths").path;
        let deployments = paths
            .iter()
            .find(|p| p.name == "/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
            .and_then(|p| p.value.clone())
            .expect("deployments path");
        assert_eq!(
            deployments.patch.map(|p| p.operation_id).as_deref(),
            Some("patchDeployment")
        );
        assert!(paths
            .iter()
            .any(|p| p.name == "/apis/stable.example.com/v1/namespaces/{namespace}/crontabs"));
        // The JSON form says the same.
        let json: Value = serde_json::from_slice(&encoded.json).expect("json");
        assert_eq!(
            json["definitions"]["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"]
                [0]["kind"],
            "Deployment"
        );
        assert!(!String::from_utf8_lossy(&encoded.json).contains(V3_REFS));
    }

    #[tokio::test]
    async fn the_cache_rebuilds_only_when_the_crds_change() -> Result<(), Box<dyn std::error::Error>>
    {
        use shoal_store::Store;
        let store = shoal_store::MemStore::new(Default::default());
        let crds = CrdRegistry::default();
        let cache = Cache::default();
        let first = cache.get(&crds);
        assert!(Arc::ptr_eq(&first, &cache.get(&crds)));
        let crd = json!({"metadata": {"name": "gizmos.example.com"},
            "spec": {"group": "example.com", "scope": "Cluster",
            "names": {"plural": "gizmos", "kind": "Gizmo"},
            "versions": [{"name": "v1", "served": true, "storage": true}]}});
        store
            .create(
                &format!("{}gizmos.example.com", crate::crd::CRD_PREFIX),
                serde_json::to_vec(&crd)?,
            )
            .await?;
        crds.reload(&store).await?;
        let second = cache.get(&crds);
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(String::from_utf8_lossy(&second.json).contains("com.example.v1.Gizmo"));
        // Reloading the same CRDs (the registry's own status write) keeps the cache.
        crds.reload(&store).await?;
        assert!(Arc::ptr_eq(&second, &cache.get(&crds)));
        Ok(())
    }
}
