//! PATCH bodies applied to stored objects: JSON merge patch (RFC 7386), JSON patch (RFC 6902)
//! and Kubernetes' strategic merge patch — lists with a merge key are merged element by element
//! instead of replaced, with the `$patch`, `$retainKeys`, `$deleteFromPrimitiveList/<field>`
//! and `$setElementOrder/<field>` directives. Merge keys follow the `x-kubernetes-patch-merge-key`
//! annotations of the built-in types.

use serde_json::{Map, Value};

/// The patch formats Kubernetes accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchKind {
    pub fn from_content_type(content_type: &str) -> Option<PatchKind> {
        match content_type.split(';').next().map(str::trim) {
            Some("application/merge-patch+json") => Some(PatchKind::Merge),
            Some("application/json-patch+json") => Some(PatchKind::Json),
            Some("application/strategic-merge-patch+json") => Some(PatchKind::Strategic),
            Some("application/apply-patch+yaml") => Some(PatchKind::Apply),
            _ => None,
        }
    }
}

/// Applies `patch` of `kind` to `object`.
pub fn apply(kind: PatchKind, object: &mut Value, patch: &[u8]) -> Result<(), String> {
    match kind {
        PatchKind::Merge => {
            let patch: Value =
                serde_json::from_slice(patch).map_err(|e| format!("invalid merge patch: {e}"))?;
            if !patch.is_object() {
                return Err("a merge patch must be a JSON object".into());
            }
            json_patch::merge(object, &patch);
            Ok(())
        }
        PatchKind::Json => {
            let patch: json_patch::Patch =
                serde_json::from_slice(patch).map_err(|e| format!("invalid JSON patch: {e}"))?;
            json_patch::patch(object, &patch)
                .map_err(|e| format!("the JSON patch cannot be applied: {e}"))
        }
        PatchKind::Strategic => {
            let patch: Value = serde_json::from_slice(patch)
                .map_err(|e| format!("invalid strategic merge patch: {e}"))?;
            let Value::Object(patch) = patch else {
                return Err("a strategic merge patch must be a JSON object".into());
            };
            let Value::Object(target) = object else {
                return Err("the object is not a JSON object".into());
            };
            strategic_merge_map(target, patch)
        }
        PatchKind::Apply => Err("server-side apply is not supported yet".into()),
    }
}

/// The merge key of a list field, judged by its name and (for `ports`) its elements.
fn merge_key(field: &str, sample: Option<&Value>) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "readinessGates" => match field {
            "readinessGates" => Some("conditionType"),
            _ => Some("name"),
        },
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        "hostAliases" => Some("ip"),
        "topologySpreadConstraints" => Some("topologyKey"),
        "ports" => match sample {
            Some(v) if v.get("containerPort").is_some() => Some("containerPort"),
            _ => Some("port"),
        },
        _ => None,
    }
}

/// Primitive lists whose strategy is "merge" (union) rather than replace.
fn merges_primitives(field: &str) -> bool {
    field == "finalizers"
}

fn strategic_merge_map(
    target: &mut Map<String, Value>,
    mut patch: Map<String, Value>,
) -> Result<(), String> {
    match patch.remove("$patch").as_ref().and_then(Value::as_str) {
        Some("replace") => {
            *target = patch;
            return Ok(());
        }
        Some("delete") => {
            target.clear();
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown $patch directive {other:?}")),
    }
    if let Some(retain) = patch.remove("$retainKeys") {
        let keep: Vec<&str> = retain
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        target.retain(|k, _| keep.contains(&k.as_str()));
    }
    let directives: Vec<String> = patch
        .keys()
        .filter(|k| k.starts_with("$deleteFromPrimitiveList/"))
        .cloned()
        .collect();
    for key in directives {
        let field = key
            .trim_start_matches("$deleteFromPrimitiveList/")
            .to_string();
        let remove = patch
            .remove(&key)
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default();
        if let Some(Value::Array(list)) = target.get_mut(&field) {
            list.retain(|v| !remove.contains(v));
        }
    }
    // Element order hints do not change content; the merged list keeps patch order for new
    // elements after the existing ones.
    patch.retain(|k, _| !k.starts_with("$setElementOrder/"));

    for (field, value) in patch {
        match value {
            Value::Null => {
                target.remove(&field);
            }
            Value::Object(sub) => match target.get_mut(&field) {
                Some(Value::Object(existing)) => strategic_merge_map(existing, sub)?,
                _ => {
                    let mut fresh = Map::new();
                    strategic_merge_map(&mut fresh, sub)?;
                    target.insert(field, Value::Object(fresh));
                }
            },
            Value::Array(items) => {
                let merged = match target.remove(&field) {
                    Some(Value::Array(existing)) => merge_list(&field, existing, items)?,
                    _ => merge_list(&field, Vec::new(), items)?,
                };
                target.insert(field, Value::Array(merged));
            }
            scalar => {
                target.insert(field, scalar);
            }
        }
    }
    Ok(())
}

fn merge_list(
    field: &str,
    mut existing: Vec<Value>,
    patch: Vec<Value>,
) -> Result<Vec<Value>, String> {
    // `[{"$patch": "replace"}, ...]` replaces the whole list.
    if patch
        .iter()
        .any(|v| v.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Ok(patch
            .into_iter()
            .filter(|v| v.get("$patch").is_none())
            .collect());
    }
    let sample = patch.iter().chain(existing.iter()).find(|v| v.is_object());
    let Some(key) = merge_key(field, sample) else {
        if merges_primitives(field) {
            for item in patch {
                if !existing.contains(&item) {
                    existing.push(item);
                }
            }
            return Ok(existing);
        }
        return Ok(patch
            .into_iter()
            .filter(|v| v.get("$patch").is_none())
            .collect());
    };
    for item in patch {
        let Value::Object(mut item) = item else {
            return Err(format!("elements of {field} must be objects with {key:?}"));
        };
        let id = item
            .get(key)
            .cloned()
            .ok_or_else(|| format!("an element of {field} lacks its merge key {key:?}"))?;
        let position = existing.iter().position(|e| e.get(key) == Some(&id));
        if item.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(i) = position {
                existing.remove(i);
            }
            continue;
        }
        item.remove("$patch");
        match position {
            Some(i) => {
                if let Value::Object(target) = &mut existing[i] {
                    strategic_merge_map(target, item)?;
                }
            }
            None => {
                let mut fresh = Map::new();
                strategic_merge_map(&mut fresh, item)?;
                existing.push(Value::Object(fresh));
            }
        }
    }
    Ok(existing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(mut object: Value, patch: Value) -> Value {
        apply(
            PatchKind::Strategic,
            &mut object,
            patch.to_string().as_bytes(),
        )
        .expect("patch");
        object
    }

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let pod = json!({"spec": {"containers": [
            {"name": "web", "image": "a", "env": [{"name": "X", "value": "1"}]},
            {"name": "side", "image": "s"}]}});
        let patched = smp(
            pod,
            json!({"spec": {
            "$setElementOrder/containers": [{"name": "web"}, {"name": "side"}],
            "containers": [{"name": "web", "image": "b", "env": [{"name": "Y", "value": "2"}]}]}}),
        );
        assert_eq!(patched["spec"]["containers"][0]["image"], "b");
        assert_eq!(
            patched["spec"]["containers"][0]["env"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );
        assert_eq!(patched["spec"]["containers"][1]["image"], "s");
    }

    #[test]
    fn strategic_merge_directives() {
        let obj = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "args": ["x", "y"]},
            "metadata": {"finalizers": ["f1"], "labels": {"keep": "1", "drop": "2"}}});
        let patched = smp(
            obj.clone(),
            json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}),
        );
        assert_eq!(patched["spec"]["containers"], json!([{"name": "b"}]));
        let patched = smp(
            obj.clone(),
            json!({"spec": {"args": ["z"]}, "metadata": {"finalizers": ["f2"], "labels": {"drop": null}}}),
        );
        assert_eq!(
            patched["spec"]["args"],
            json!(["z"]),
            "plain lists are replaced"
        );
        assert_eq!(
            patched["metadata"]["finalizers"],
            json!(["f1", "f2"]),
            "finalizers are unioned"
        );
        assert_eq!(patched["metadata"]["labels"], json!({"keep": "1"}));
        let patched = smp(
            obj.clone(),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["f1"]}}),
        );
        assert_eq!(patched["metadata"]["finalizers"], json!([]));
        let patched = smp(
            obj.clone(),
            json!({"metadata": {"labels": {"$patch": "replace", "new": "3"}}}),
        );
        assert_eq!(patched["metadata"]["labels"], json!({"new": "3"}));
        let patched = smp(
            obj.clone(),
            json!({"spec": {"$retainKeys": ["args"], "args": ["q"]}}),
        );
        assert_eq!(patched["spec"], json!({"args": ["q"]}));
        let patched = smp(
            obj,
            json!({"spec": {"containers": [{"$patch": "replace"}, {"name": "c"}]}}),
        );
        assert_eq!(patched["spec"]["containers"], json!([{"name": "c"}]));
    }

    #[test]
    fn service_and_container_ports_use_their_own_keys() {
        let svc = json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443}]}});
        let patched = smp(
            svc,
            json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}]}}),
        );
        assert_eq!(
            patched["spec"]["ports"][0],
            json!({"port": 80, "name": "http", "targetPort": 8080})
        );
        assert_eq!(patched["spec"]["ports"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn merge_and_json_patches() {
        let mut obj = json!({"metadata": {"labels": {"a": "1"}}, "data": {"k": "v"}});
        apply(
            PatchKind::Merge,
            &mut obj,
            br#"{"metadata":{"labels":{"b":"2","a":null}}}"#,
        )
        .expect("merge");
        assert_eq!(obj["metadata"]["labels"], json!({"b": "2"}));
        apply(
            PatchKind::Json,
            &mut obj,
            br#"[{"op":"replace","path":"/data/k","value":"w"}]"#,
        )
        .expect("json");
        assert_eq!(obj["data"]["k"], "w");
        assert!(apply(
            PatchKind::Json,
            &mut obj,
            br#"[{"op":"remove","path":"/nope"}]"#
        )
        .is_err());
        assert!(apply(PatchKind::Merge, &mut obj, b"[1]").is_err());
        assert!(apply(
            PatchKind::Strategic,
            &mut obj,
            br#"{"spec":{"containers":[{"image":"x"}]}}"#
        )
        .is_err());
        assert_eq!(
            PatchKind::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchKind::Merge)
        );
    }
}
