//! Structural-schema validation of custom objects against a CRD version's `openAPIV3Schema`,
//! with Kubernetes' pruning: fields the schema does not declare are dropped unless the schema
//! says `x-kubernetes-preserve-unknown-fields`. `apiVersion`, `kind` and `metadata` are the
//! API server's and are not checked here. `pattern` and `format` are not checked yet.

use serde_json::{Map, Value};

/// One violation: the field path (`spec.replicas`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub message: String,
}

/// Validates and prunes `object` in place; returns every violation found.
pub fn validate(schema: &Value, object: &mut Value) -> Vec<Violation> {
    let mut violations = Vec::new();
    if let Value::Object(map) = object {
        let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
            return violations;
        };
        let keys: Vec<String> = map.keys().cloned().collect();
        for key in keys {
            if matches!(key.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            match properties.get(&key) {
                Some(sub) => {
                    if let Some(value) = map.get_mut(&key) {
                        check(sub, value, &key, &mut violations);
                    }
                }
                None if preserves_unknown(schema) => {}
                None => {
                    map.remove(&key);
                }
            }
        }
        required(schema, map, "", &mut violations);
    }
    violations
}

fn preserves_unknown(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn required(schema: &Value, map: &Map<String, Value>, path: &str, out: &mut Vec<Violation>) {
    for name in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !map.contains_key(name) {
            out.push(Violation {
                field: join(path, name),
                message: "Required value".into(),
            });
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check(schema: &Value, value: &mut Value, path: &str, out: &mut Vec<Violation>) {
    let mut fail = |message: String| {
        out.push(Violation {
            field: path.to_string(),
            message,
        })
    };
    if value.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) != Some(true) {
            fail("Invalid value: \"null\": must not be null".into());
        }
        return;
    }
    if schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true)
    {
        if !matches!(type_name(value), "integer" | "string") {
            fail(format!(
                "Invalid value: \"{}\": must be an integer or a string",
                type_name(value)
            ));
        }
        return;
    }
    if let Some(want) = schema.get("type").and_then(Value::as_str) {
        let have = type_name(value);
        let ok = have == want || (want == "number" && have == "integer");
        if !ok {
            fail(format!(
                "Invalid value: \"{have}\": {path} in body must be of type {want}: \"{have}\""
            ));
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            let list: Vec<String> = options.iter().map(Value::to_string).collect();
            fail(format!(
                "Unsupported value: {value}: supported values: {}",
                list.join(", ")
            ));
        }
    }
    match value {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                if x < min {
                    fail(format!("Invalid value: {n}: {path} in body should be greater than or equal to {min}"));
                }
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                if x > max {
                    fail(format!(
                        "Invalid value: {n}: {path} in body should be less than or equal to {max}"
                    ));
                }
            }
        }
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if schema
                .get("minLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| len < m)
            {
                fail(format!(
                    "Invalid value: {s:?}: {path} in body should be at least {} chars long",
                    schema["minLength"]
                ));
            }
            if schema
                .get("maxLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| len > m)
            {
                fail(format!(
                    "Too long: {path} in body may not be more than {} chars",
                    schema["maxLength"]
                ));
            }
        }
        Value::Array(items) => {
            let len = items.len() as u64;
            if schema
                .get("minItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| len < m)
            {
                fail(format!(
                    "Invalid value: {path} in body should have at least {} items",
                    schema["minItems"]
                ));
            }
            if schema
                .get("maxItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| len > m)
            {
                fail(format!(
                    "Too many: {len}: must have at most {} items",
                    schema["maxItems"]
                ));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let child_path = join(path, &key);
                let sub = properties.and_then(|p| p.get(&key)).or(match additional {
                    Some(Value::Object(_)) => additional,
                    _ => None,
                });
                match sub {
                    Some(sub) => {
                        if let Some(child) = map.get_mut(&key) {
                            check(sub, child, &child_path, out);
                        }
                    }
                    None if preserves_unknown(schema) || additional == Some(&Value::Bool(true)) => {
                    }
                    None => {
                        map.remove(&key);
                    }
                }
            }
            required(schema, map, path, out);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 10},
                "mode": {"type": "string", "enum": ["fast", "safe"]},
                "port": {"x-kubernetes-int-or-string": true},
                "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "note": {"type": "string", "nullable": true, "maxLength": 5}}},
            "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}})
    }

    #[test]
    fn valid_objects_pass_and_unknown_fields_are_pruned() {
        let mut obj = json!({"apiVersion": "x/v1", "kind": "Thing", "metadata": {"name": "a"},
            "spec": {"size": 3, "mode": "fast", "port": "http", "tags": ["a"], "labels": {"k": "v"},
                     "free": {"anything": [1, 2]}, "note": null, "extra": 1},
            "bogus": true});
        assert_eq!(validate(&schema(), &mut obj), vec![]);
        assert!(
            obj.get("bogus").is_none() && obj["spec"].get("extra").is_none(),
            "{obj}"
        );
        assert_eq!(obj["spec"]["free"]["anything"], json!([1, 2]));
        assert_eq!(obj["metadata"]["name"], "a");
    }

    #[test]
    fn violations_name_their_fields() {
        let mut obj = json!({"spec": {"size": 0, "mode": "slow", "port": 1.5, "tags": ["a", "b", 3], "labels": {"k": 1}, "note": "toolong"}});
        let fields: Vec<String> = validate(&schema(), &mut obj)
            .into_iter()
            .map(|v| v.field)
            .collect();
        for want in [
            "spec.size",
            "spec.mode",
            "spec.port",
            "spec.tags",
            "spec.tags[2]",
            "spec.labels.k",
            "spec.note",
        ] {
            assert!(fields.iter().any(|f| f == want), "{want} not in {fields:?}");
        }
        let mut missing = json!({"spec": {}});
        assert_eq!(
            validate(&schema(), &mut missing),
            vec![Violation {
                field: "spec.size".into(),
                message: "Required value".into()
            }]
        );
        let mut wrong_type = json!({"spec": "nope"});
        assert_eq!(validate(&schema(), &mut wrong_type).len(), 1);
    }
}
