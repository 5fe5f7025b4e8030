//! Interplay with client-side `kubectl apply`, which records what it applied in the
//! `kubectl.kubernetes.io/last-applied-configuration` annotation. As Kubernetes does for the
//! manager `kubectl` only: a server-side apply may take over, without `force`, fields that the
//! annotation says client-side apply set, and keeps the annotation current so a user can go
//! back to client-side apply.

use serde_json::Value;

use super::path::FieldSet;
use super::walk::Walker;

pub(crate) const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The manager `kubectl apply --server-side` uses; only it gets the client-side apply upgrade.
pub(crate) const KUBECTL_APPLY_MANAGER: &str = "kubectl";

fn annotation(object: &Value) -> Option<&str> {
    object
        .get("metadata")?
        .get("annotations")?
        .get(LAST_APPLIED_ANNOTATION)?
        .as_str()
}

/// The fields the live object's last-applied annotation sets: the conflicts a `kubectl`
/// server-side apply may override without `force`.
pub(crate) fn last_applied_fields(live: &Value, walker: &Walker<'_>) -> Option<FieldSet> {
    let last_applied: Value = serde_json::from_str(annotation(live)?).ok()?;
    walker.field_set(&last_applied).ok()
}

/// Rewrites the annotation, when `object` has one, to the configuration just applied.
pub(crate) fn refresh_annotation(object: &mut Value, config: &Value) {
    if annotation(object).is_none() {
        return;
    }
    let text = encode_like_kubectl(config);
    if let Some(annotations) = object
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        annotations.insert(LAST_APPLIED_ANNOTATION.into(), Value::String(text));
    }
}

/// The configuration without the annotation itself, as Go's JSON encoder writes it: sorted
/// keys, HTML-safe escapes, a trailing newline.
fn encode_like_kubectl(config: &Value) -> String {
    let mut config = config.clone();
    if let Some(annotations) = config
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
    let mut text = config
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029");
    text.push('\n');
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::path::Path;
    use super::super::schema::BuiltinSchema;
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_fields_client_side_apply_set() {
        let schema = BuiltinSchema::for_kind("ConfigMap");
        let walker = Walker { schema: &schema };
        let live = json!({"metadata": {"annotations": {
            LAST_APPLIED_ANNOTATION: "{\"data\":{\"k\":\"v\"}}"
        }}});
        let fields = last_applied_fields(&live, &walker).unwrap();
        assert_eq!(fields.paths(), vec![Path::fields(&["data", "k"])]);
        assert!(last_applied_fields(&json!({"metadata": {}}), &walker).is_none());
    }

    #[test]
    fn refreshes_an_existing_annotation_only() {
        let config = json!({"kind": "ConfigMap", "data": {"a": "<b>"}});
        let mut object = json!({"metadata": {"annotations": {LAST_APPLIED_ANNOTATION: "old"}}});
        refresh_annotation(&mut object, &config);
        assert_eq!(
            object["metadata"]["annotations"][LAST_APPLIED_ANNOTATION],
            "{\"data\":{\"a\":\"\\u003cb\\u003e\"},\"kind\":\"ConfigMap\"}\n"
        );
        let mut plain = json!({"metadata": {}});
        refresh_annotation(&mut plain, &config);
        assert_eq!(plain, json!({"metadata": {}}));
    }
}
