//! The gnostic `openapi.v2.Document` protobuf message (github.com/google/gnostic,
//! `openapiv2/OpenAPIv2.proto`) for the subset of Swagger 2.0 the server publishes, and the
//! conversion of a Swagger 2.0 JSON document into it. kubectl decodes this message
//! (`GET /openapi/v2` with the protobuf `Accept`) for `explain --output=plaintext-openapiv2`,
//! client-side validation and strategic-merge patch metadata.
//!
//! The messages are written by hand with prost's derive (no protoc at build time). A proto
//! `oneof` is modelled as plain optional fields, one of which is set: on the wire the two are
//! the same. Vendor extensions, defaults, enums and examples are `Any { yaml }` values; JSON is
//! valid YAML, so their JSON text is used (kube-openapi parses them with a YAML decoder).

use prost::Message;
use serde_json::{Map, Value};

#[derive(Clone, PartialEq, Message)]
pub struct Document {
    #[prost(string, tag = "1")]
    pub swagger: String,
    #[prost(message, optional, tag = "2")]
    pub info: Option<Info>,
    #[prost(message, optional, tag = "8")]
    pub paths: Option<Paths>,
    #[prost(message, optional, tag = "9")]
    pub definitions: Option<Definitions>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Info {
    #[prost(string, tag = "1")]
    pub title: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Any {
    #[prost(string, tag = "2")]
    pub yaml: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct NamedAny {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Any>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Paths {
    #[prost(message, repeated, tag = "2")]
    pub path: Vec<NamedPathItem>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NamedPathItem {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<PathItem>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PathItem {
    #[prost(message, optional, tag = "2")]
    pub get: Option<Operation>,
    #[prost(message, optional, tag = "3")]
    pub put: Option<Operation>,
    #[prost(message, optional, tag = "4")]
    pub post: Option<Operation>,
    #[prost(message, optional, tag = "5")]
    pub delete: Option<Operation>,
    #[prost(message, optional, tag = "8")]
    pub patch: Option<Operation>,
    #[prost(message, repeated, tag = "9")]
    pub parameters: Vec<ParametersItem>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Operation {
    #[prost(string, tag = "3")]
    pub description: String,
    #[prost(string, tag = "5")]
    pub operation_id: String,
    #[prost(message, repeated, tag = "8")]
    pub parameters: Vec<ParametersItem>,
    #[prost(message, optional, tag = "9")]
    pub responses: Option<Responses>,
    #[prost(message, repeated, tag = "13")]
    pub vendor_extension: Vec<NamedAny>,
}

/// `oneof { Parameter parameter = 1; JsonReference json_reference = 2; }`
#[derive(Clone, PartialEq, Message)]
pub struct ParametersItem {
    #[prost(message, optional, tag = "1")]
    pub parameter: Option<Parameter>,
}

/// `oneof { BodyParameter body_parameter = 1; NonBodyParameter non_body_parameter = 2; }`
#[derive(Clone, PartialEq, Message)]
pub struct Parameter {
    #[prost(message, optional, tag = "1")]
    pub body_parameter: Option<BodyParameter>,
    #[prost(message, optional, tag = "2")]
    pub non_body_parameter: Option<NonBodyParameter>,
}

#[derive(Clone, PartialEq, Message)]
pub struct BodyParameter {
    #[prost(string, tag = "1")]
    pub description: String,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub r#in: String,
    #[prost(bool, tag = "4")]
    pub required: bool,
    #[prost(message, optional, tag = "5")]
    pub schema: Option<Schema>,
}

/// `oneof { header = 1; form_data = 2; query = 3; path = 4 }`; only query and path are used.
#[derive(Clone, PartialEq, Message)]
pub struct NonBodyParameter {
    #[prost(message, optional, tag = "3")]
    pub query_parameter_sub_schema: Option<QueryParameterSubSchema>,
    #[prost(message, optional, tag = "4")]
    pub path_parameter_sub_schema: Option<PathParameterSubSchema>,
}

#[derive(Clone, PartialEq, Message)]
pub struct QueryParameterSubSchema {
    #[prost(bool, tag = "1")]
    pub required: bool,
    #[prost(string, tag = "2")]
    pub r#in: String,
    #[prost(string, tag = "3")]
    pub description: String,
    #[prost(string, tag = "4")]
    pub name: String,
    #[prost(string, tag = "6")]
    pub r#type: String,
    #[prost(bool, tag = "20")]
    pub unique_items: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct PathParameterSubSchema {
    #[prost(bool, tag = "1")]
    pub required: bool,
    #[prost(string, tag = "2")]
    pub r#in: String,
    #[prost(string, tag = "3")]
    pub description: String,
    #[prost(string, tag = "4")]
    pub name: String,
    #[prost(string, tag = "5")]
    pub r#type: String,
    #[prost(bool, tag = "19")]
    pub unique_items: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Responses {
    #[prost(message, repeated, tag = "1")]
    pub response_code: Vec<NamedResponseValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NamedResponseValue {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<ResponseValue>,
}

/// `oneof { Response response = 1; JsonReference json_reference = 2; }`
#[derive(Clone, PartialEq, Message)]
pub struct ResponseValue {
    #[prost(message, optional, tag = "1")]
    pub response: Option<Response>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Response {
    #[prost(string, tag = "1")]
    pub description: String,
    #[prost(message, optional, tag = "2")]
    pub schema: Option<SchemaItem>,
}

/// `oneof { Schema schema = 1; FileSchema file_schema = 2; }`
#[derive(Clone, PartialEq, Message)]
pub struct SchemaItem {
    #[prost(message, optional, tag = "1")]
    pub schema: Option<Schema>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Definitions {
    #[prost(message, repeated, tag = "1")]
    pub additional_properties: Vec<NamedSchema>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NamedSchema {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<Schema>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Properties {
    #[prost(message, repeated, tag = "1")]
    pub additional_properties: Vec<NamedSchema>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TypeItem {
    #[prost(string, repeated, tag = "1")]
    pub value: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ItemsItem {
    #[prost(message, repeated, tag = "1")]
    pub schema: Vec<Schema>,
}

/// `oneof { Schema schema = 1; bool boolean = 2; }` (a oneof bool is sent even when false).
#[derive(Clone, PartialEq, Message)]
pub struct AdditionalPropertiesItem {
    #[prost(message, optional, tag = "1")]
    pub schema: Option<Schema>,
    #[prost(bool, optional, tag = "2")]
    pub boolean: Option<bool>,
}

/// gnostic's "deterministic version of a JSON Schema object".
#[derive(Clone, PartialEq, Message)]
pub struct Schema {
    #[prost(string, tag = "1")]
    pub xref: String,
    #[prost(string, tag = "2")]
    pub format: String,
    #[prost(string, tag = "3")]
    pub title: String,
    #[prost(string, tag = "4")]
    pub description: String,
    #[prost(message, optional, tag = "5")]
    pub default: Option<Any>,
    #[prost(double, tag = "6")]
    pub multiple_of: f64,
    #[prost(double, tag = "7")]
    pub maximum: f64,
    #[prost(bool, tag = "8")]
    pub exclusive_maximum: bool,
    #[prost(double, tag = "9")]
    pub minimum: f64,
    #[prost(bool, tag = "10")]
    pub exclusive_minimum: bool,
    #[prost(int64, tag = "11")]
    pub max_length: i64,
    #[prost(int64, tag = "12")]
    pub min_length: i64,
    #[prost(string, tag = "13")]
    pub pattern: String,
    #[prost(int64, tag = "14")]
    pub max_items: i64,
    #[prost(int64, tag = "15")]
    pub min_items: i64,
    #[prost(bool, tag = "16")]
    pub unique_items: bool,
    #[prost(int64, tag = "17")]
    pub max_properties: i64,
    #[prost(int64, tag = "18")]
    pub min_properties: i64,
    #[prost(string, repeated, tag = "19")]
    pub required: Vec<String>,
    #[prost(message, repeated, tag = "20")]
    pub r#enum: Vec<Any>,
    #[prost(message, optional, boxed, tag = "21")]
    pub additional_properties: Option<Box<AdditionalPropertiesItem>>,
    #[prost(message, optional, tag = "22")]
    pub r#type: Option<TypeItem>,
    #[prost(message, optional, tag = "23")]
    pub items: Option<ItemsItem>,
    #[prost(message, repeated, tag = "24")]
    pub all_of: Vec<Schema>,
    #[prost(message, optional, tag = "25")]
    pub properties: Option<Properties>,
    #[prost(bool, tag = "27")]
    pub read_only: bool,
    #[prost(message, optional, tag = "30")]
    pub example: Option<Any>,
    #[prost(message, repeated, tag = "31")]
    pub vendor_extension: Vec<NamedAny>,
}

fn any(value: &Value) -> Any {
    Any {
        yaml: value.to_string(),
    }
}

fn text(object: &Map<String, Value>, key: &str) -> String {
    object
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn flag(object: &Map<String, Value>, key: &str) -> bool {
    object.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn float(object: &Map<String, Value>, key: &str) -> f64 {
    object.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

fn int(object: &Map<String, Value>, key: &str) -> i64 {
    object.get(key).and_then(Value::as_i64).unwrap_or(0)
}

fn strings(object: &Map<String, Value>, key: &str) -> Vec<String> {
    crate::crd::strings(object.get(key))
}

/// The `x-` keys of an object, in order.
fn extensions(object: &Map<String, Value>) -> Vec<NamedAny> {
    object
        .iter()
        .filter(|(k, _)| k.starts_with("x-"))
        .map(|(name, value)| NamedAny {
            name: name.clone(),
            value: Some(any(value)),
        })
        .collect()
}

fn named_schemas(value: Option<&Value>) -> Vec<NamedSchema> {
    value
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(name, schema)| NamedSchema {
            name: name.clone(),
            value: Some(schema_message(schema)),
        })
        .collect()
}

/// A Swagger 2.0 schema (JSON) as the gnostic message.
pub fn schema_message(schema: &Value) -> Schema {
    let Some(object) = schema.as_object() else {
        return Schema::default();
    };
    let additional_properties = object.get("additionalProperties").map(|a| {
        Box::new(match a {
            Value::Bool(b) => AdditionalPropertiesItem {
                schema: None,
                boolean: Some(*b),
            },
            other => AdditionalPropertiesItem {
                schema: Some(schema_message(other)),
                boolean: None,
            },
        })
    });
    let r#type = match object.get("type") {
        Some(Value::String(t)) => Some(TypeItem {
            value: vec![t.clone()],
        }),
        Some(Value::Array(_)) => Some(TypeItem {
            value: strings(object, "type"),
        }),
        _ => None,
    };
    Schema {
        xref: text(object, "$ref"),
        format: text(object, "format"),
        title: text(object, "title"),
        description: text(object, "description"),
        default: object.get("default").map(any),
        multiple_of: float(object, "multipleOf"),
        maximum: float(object, "maximum"),
        exclusive_maximum: flag(object, "exclusiveMaximum"),
        minimum: float(object, "minimum"),
        exclusive_minimum: flag(object, "exclusiveMinimum"),
        max_length: int(object, "maxLength"),
        min_length: int(object, "minLength"),
        pattern: text(object, "pattern"),
        max_items: int(object, "maxItems"),
        min_items: int(object, "minItems"),
        unique_items: flag(object, "uniqueItems"),
        max_properties: int(object, "maxProperties"),
        min_properties: int(object, "minProperties"),
        required: strings(object, "required"),
        r#enum: object
            .get("enum")
            .and_then(Value::as_array)
            .map(|values| values.iter().map(any).collect())
            .unwrap_or_default(),
        additional_properties,
        r#type,
        items: object.get("items").map(|items| ItemsItem {
            schema: match items {
                Value::Array(many) => many.iter().map(schema_message).collect(),
                one => vec![schema_message(one)],
            },
        }),
        all_of: object
            .get("allOf")
            .and_then(Value::as_array)
            .map(|all| all.iter().map(schema_message).collect())
            .unwrap_or_default(),
        properties: object.get("properties").map(|p| Properties {
            additional_properties: named_schemas(Some(p)),
        }),
        read_only: flag(object, "readOnly"),
        example: object.get("example").map(any),
        vendor_extension: extensions(object),
    }
}

fn parameter(param: &Value) -> ParametersItem {
    let object = param.as_object().cloned().unwrap_or_default();
    let (name, r#in, description) = (
        text(&object, "name"),
        text(&object, "in"),
        text(&object, "description"),
    );
    let (required, r#type, unique_items) = (
        flag(&object, "required"),
        text(&object, "type"),
        flag(&object, "uniqueItems"),
    );
    let parameter = match r#in.as_str() {
        "body" => Parameter {
            body_parameter: Some(BodyParameter {
                description,
                name,
                r#in,
                required,
                schema: object.get("schema").map(schema_message),
            }),
            non_body_parameter: None,
        },
        "path" => Parameter {
            body_parameter: None,
            non_body_parameter: Some(NonBodyParameter {
                query_parameter_sub_schema: None,
                path_parameter_sub_schema: Some(PathParameterSubSchema {
                    required,
                    r#in,
                    description,
                    name,
                    r#type,
                    unique_items,
                }),
            }),
        },
        _ => Parameter {
            body_parameter: None,
            non_body_parameter: Some(NonBodyParameter {
                query_parameter_sub_schema: Some(QueryParameterSubSchema {
                    required,
                    r#in,
                    description,
                    name,
                    r#type,
                    unique_items,
                }),
                path_parameter_sub_schema: None,
            }),
        },
    };
    ParametersItem {
        parameter: Some(parameter),
    }
}

fn parameters(value: Option<&Value>) -> Vec<ParametersItem> {
    value
        .and_then(Value::as_array)
        .map(|params| params.iter().map(parameter).collect())
        .unwrap_or_default()
}

fn operation(value: Option<&Value>) -> Option<Operation> {
    let object = value?.as_object()?;
    let responses = object.get("responses").and_then(Value::as_object);
    Some(Operation {
        description: text(object, "description"),
        operation_id: text(object, "operationId"),
        parameters: parameters(object.get("parameters")),
        responses: responses.map(|responses| Responses {
            response_code: responses
                .iter()
                .map(|(code, response)| NamedResponseValue {
                    name: code.clone(),
                    value: Some(ResponseValue {
                        response: Some(Response {
                            description: response
                                .get("description")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_string(),
                            schema: response.get("schema").map(|s| SchemaItem {
                                schema: Some(schema_message(s)),
                            }),
                        }),
                    }),
                })
                .collect(),
        }),
        vendor_extension: extensions(object),
    })
}

/// A Swagger 2.0 document (JSON) as the gnostic `Document` message, encoded.
pub fn encode_document(document: &Value) -> Vec<u8> {
    let info = document.get("info").and_then(Value::as_object);
    let message = Document {
        swagger: document
            .get("swagger")
            .and_then(Value::as_str)
            .unwrap_or("2.0")
            .to_string(),
        info: info.map(|info| Info {
            title: text(info, "title"),
            version: text(info, "version"),
        }),
        paths: document
            .get("paths")
            .and_then(Value::as_object)
            .map(|paths| Paths {
                path: paths
                    .iter()
                    .map(|(name, item)| NamedPathItem {
                        name: name.clone(),
                        value: Some(PathItem {
                            get: operation(item.get("get")),
                            put: operation(item.get("put")),
                            post: operation(item.get("post")),
                            delete: operation(item.get("delete")),
                            patch: operation(item.get("patch")),
                            parameters: parameters(item.get("parameters")),
                        }),
                    })
                    .collect(),
            }),
        definitions: Some(Definitions {
            additional_properties: named_schemas(document.get("definitions")),
        }),
    };
    message.encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schemas_round_trip_through_the_wire_format() {
        let doc = json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": "v1.33.0"},
            "paths": {"/api/v1/namespaces/{namespace}/pods/{name}": {
                "parameters": [{"name": "namespace", "in": "path", "required": true, "type": "string"}],
                "get": {"operationId": "readPod", "parameters": [{"name": "pretty", "in": "query", "type": "string", "uniqueItems": true}],
                        "responses": {"200": {"description": "OK", "schema": {"$ref": "#/definitions/P"}}},
                        "x-kubernetes-action": "get"},
                "put": {"operationId": "replacePod", "parameters": [{"name": "body", "in": "body", "required": true, "schema": {"$ref": "#/definitions/P"}}]}}},
            "definitions": {"P": {
                "type": "object", "description": "A pod.", "required": ["spec"],
                "properties": {
                    "spec": {"$ref": "#/definitions/S", "description": "The spec."},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "open": {"type": "object", "additionalProperties": false},
                    "list": {"type": "array", "items": {"type": "integer", "format": "int32"},
                             "x-kubernetes-patch-merge-key": "name"},
                    "policy": {"type": "string", "enum": ["Always", "Never"], "default": "Always"}},
                "x-kubernetes-group-version-kind": [{"group": "", "kind": "Pod", "version": "v1"}]},
                "S": {"type": "object"}}
        });
        let bytes = encode_document(&doc);
        let decoded = Document::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(decoded.swagger, "2.0");
        assert_eq!(
            decoded.info.as_ref().map(|i| i.version.as_str()),
            Some("v1.33.0")
        );
        let defs = decoded
            .definitions
            .expect("definitions")
            .additional_properties;
        assert_eq!(defs.len(), 2);
        let pod = defs[0].value.as_ref().expect("pod");
        assert_eq!(pod.description, "A pod.");
        assert_eq!(pod.required, ["spec"]);
        assert_eq!(
            pod.r#type.as_ref().map(|t| t.value.clone()),
            Some(vec!["object".to_string()])
        );
        let gvk = &pod.vendor_extension[0];
        assert_eq!(gvk.name, "x-kubernetes-group-version-kind");
        let yaml = &gvk.value.as_ref().expect("value").yaml;
        assert_eq!(
            serde_yaml::from_str::<Value>(yaml).expect("yaml")[0]["kind"],
            "Pod"
        );
        let props = pod.properties.as_ref().expect("props");
        let prop = |name: &str| {
            props
                .additional_properties
                .iter()
                .find(|p| p.name == name)
                .and_then(|p| p.value.clone())
                .expect(name)
        };
        assert_eq!(prop("spec").xref, "#/definitions/S");
        assert_eq!(prop("spec").description, "The spec.");
        let labels = prop("labels").additional_properties.expect("additional");
        assert_eq!(
            labels.schema.and_then(|s| s.r#type).map(|t| t.value),
            Some(vec!["string".to_string()])
        );
        assert_eq!(
            prop("open")
                .additional_properties
                .expect("additional")
                .boolean,
            Some(false)
        );
        assert_eq!(prop("list").items.expect("items").schema[0].format, "int32");
        assert_eq!(
            prop("list").vendor_extension[0].name,
            "x-kubernetes-patch-merge-key"
        );
        assert_eq!(prop("policy").r#enum.len(), 2);
        assert_eq!(
            prop("policy").default.map(|d| d.yaml),
            Some("\"Always\"".to_string())
        );
        let paths = decoded.paths.expect("paths").path;
        let item = paths[0].value.as_ref().expect("item");
        let get = item.get.as_ref().expect("get");
        assert_eq!(get.operation_id, "readPod");
        assert_eq!(get.vendor_extension[0].name, "x-kubernetes-action");
        let query = get.parameters[0]
            .parameter
            .as_ref()
            .and_then(|p| p.non_body_parameter.as_ref())
            .and_then(|p| p.query_parameter_sub_schema.as_ref())
            .expect("query");
        assert_eq!(
            (query.name.as_str(), query.r#in.as_str()),
            ("pretty", "query")
        );
        let body = item
            .put
            .as_ref()
            .and_then(|p| p.parameters[0].parameter.as_ref())
            .and_then(|p| p.body_parameter.as_ref())
            .expect("body");
        assert_eq!(
            body.schema.as_ref().map(|s| s.xref.as_str()),
            Some("#/definitions/P")
        );
        assert!(item.parameters[0]
            .parameter
            .as_ref()
            .and_then(|p| p.non_body_parameter.as_ref())
            .and_then(|p| p.path_parameter_sub_schema.as_ref())
            .is_some_and(|p| p.required));
    }
}
