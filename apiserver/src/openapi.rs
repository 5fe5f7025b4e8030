//! `/openapi/v3`: the root (one entry per group-version) and one document per group-version
//! listing each resource's operations with `x-kubernetes-group-version-kind` and the query
//! parameters the server honours — `fieldValidation` among them, which is how kubectl learns
//! that it can leave validation to the server instead of fetching `/openapi/v2`. Schemas are
//! not published yet (`kubectl explain` needs them).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use serde_json::{json, Map, Value};
use shoal_common::catalog::{self, ResourceDef};

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

/// The document for one group-version, or `None` if nothing is served there.
pub fn group_version(group: &str, version: &str, custom: &[&'static ResourceDef]) -> Option<Value> {
    let served: Vec<&ResourceDef> = defs(custom)
        .filter(|d| d.group == group && d.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let query = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
    let mut paths = Map::new();
    for def in served {
        let gvk = json!({"group": def.group, "version": def.version, "kind": def.kind});
        let base = if def.namespaced {
            format!(
                "/{}/namespaces/{{namespace}}/{}",
                gv_path(group, version),
                def.plural
            )
        } else {
            format!("/{}/{}", gv_path(group, version), def.plural)
        };
        let write_params = vec![
            query("dryRun"),
            query("fieldManager"),
            query("fieldValidation"),
            query("pretty"),
        ];
        let op = |action: &str, params: &[Value]| {
            json!({
                "operationId": format!("{action}{}", def.kind),
                "parameters": params,
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
            })
        };
        paths.insert(
            base.clone(),
            json!({"get": op("list", &[query("labelSelector"), query("fieldSelector"), query("limit"), query("continue"), query("watch")]),
                   "post": op("post", &write_params)}),
        );
        let mut item = json!({"get": op("get", &[]), "put": op("put", &write_params), "patch": op("patch", &write_params),
                              "delete": op("delete", &[query("dryRun"), query("gracePeriodSeconds"), query("propagationPolicy")])});
        if def.namespaced {
            item["parameters"] = json!([{"name": "namespace", "in": "path", "required": true, "schema": {"type": "string"}},
                                        {"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}]);
        }
        paths.insert(format!("{base}/{{name}}"), item);
        for sub in ["status", "scale"] {
            if (sub == "status" && def.status) || (sub == "scale" && def.scale) {
                paths.insert(
                    format!("{base}/{{name}}/{sub}"),
                    json!({"patch": op("patch", &write_params), "put": op("put", &write_params)}),
                );
            }
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": shoal_common::KUBERNETES_VERSION},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

/// `/openapi/v3`: where each group-version's document is, with a hash that changes with it.
pub fn root(custom: &[&'static ResourceDef]) -> Value {
    let mut group_versions: Vec<(&str, &str)> = vec![("", "v1")];
    for def in defs(custom) {
        if !group_versions.contains(&(def.group, def.version)) {
            group_versions.push((def.group, def.version));
        }
    }
    let mut paths = Map::new();
    for (group, version) in group_versions {
        let doc = group_version(group, version, custom).unwrap_or_default();
        let mut hasher = DefaultHasher::new();
        doc.to_string().hash(&mut hasher);
        let path = gv_path(group, version);
        paths.insert(path.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={:016X}", hasher.finish())}));
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
}

/// The content type of the protobuf `/openapi/v2` (kubectl asks for `...spec.v2@v1.0+protobuf`;
/// the answer must be parseable by Go's mime package, which rejects the `@`).
pub const V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// `/openapi/v2` as JSON: the header of a Swagger 2.0 document, without definitions (only the
/// v3 documents are published; kubectl 1.27 fetches this first and must be able to parse it).
pub fn v2_json() -> Value {
    json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": shoal_common::KUBERNETES_VERSION}, "paths": {}, "definitions": {}})
}

/// The same document as the gnostic `openapi_v2.Document` protobuf message:
/// `swagger = 1` and `info = 2` (`title = 1`, `version = 2`).
pub fn v2_protobuf() -> Vec<u8> {
    fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3) | 2];
        let mut len = bytes.len();
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
        out.extend_from_slice(bytes);
        out
    }
    let info = [
        field(1, b"Kubernetes"),
        field(2, shoal_common::KUBERNETES_VERSION.as_bytes()),
    ]
    .concat();
    [field(1, b"2.0"), field(2, &info)].concat()
}

#[cfg(test)]
mod v2_tests {
    use super::*;

    #[test]
    fn v2_protobuf_is_a_swagger_header() {
        let bytes = v2_protobuf();
        assert_eq!(&bytes[..5], &[0x0a, 3, b'2', b'.', b'0']);
        assert_eq!(bytes[5], 0x12);
        assert_eq!(usize::from(bytes[6]), bytes.len() - 7);
        assert_eq!(v2_json()["swagger"], "2.0");
    }
}
