//! What the API server does to an object's metadata on the way into the store: validation of
//! names, labels and annotations, and the fields the server owns (uid, creationTimestamp,
//! generation, resourceVersion). Pure: the caller supplies the clock and the randomness.

use serde_json::{json, Map, Value};
use shoal_common::ResourceDef;

/// Why an object was refused (422 Invalid, with the field at fault).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

fn invalid(field: &str, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.to_string(),
        message: message.into(),
    }
}

/// The rule a kind's names follow, as Kubernetes validates them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NameRule {
    /// DNS-1123 subdomain: most kinds.
    Subdomain,
    /// DNS-1123 label: namespaces.
    Label,
    /// DNS-1035 label (must start with a letter): services.
    Label1035,
}

fn name_rule(kind: &str) -> NameRule {
    match kind {
        "Namespace" => NameRule::Label,
        "Service" => NameRule::Label1035,
        _ => NameRule::Subdomain,
    }
}

/// Checks a name as Kubernetes does for `kind`; the error is Kubernetes' own detail text.
pub fn validate_name(kind: &str, name: &str) -> Result<(), String> {
    let rule = name_rule(kind);
    let max = if rule == NameRule::Subdomain { 253 } else { 63 };
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if name.is_empty() {
        return Err("name or generateName is required".into());
    }
    if name.len() > max {
        return Err(format!("must be no more than {max} characters"));
    }
    let valid = match rule {
        NameRule::Subdomain => name.split('.').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| alnum(c) || c == '-')
                && part.starts_with(alnum)
                && part.ends_with(alnum)
        }),
        NameRule::Label => {
            name.chars().all(|c| alnum(c) || c == '-')
                && name.starts_with(alnum)
                && name.ends_with(alnum)
        }
        NameRule::Label1035 => {
            name.chars().all(|c| alnum(c) || c == '-')
                && name.starts_with(|c: char| c.is_ascii_lowercase())
                && name.ends_with(alnum)
        }
    };
    if valid {
        return Ok(());
    }
    Err(match rule {
        NameRule::Subdomain => "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
        NameRule::Label => "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')",
        NameRule::Label1035 => "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')",
    }
    .to_string())
}

fn validate_string_map(
    meta: &Map<String, Value>,
    field: &str,
    values_are_labels: bool,
) -> Result<(), Invalid> {
    let Some(map) = meta.get(field) else {
        return Ok(());
    };
    let Some(map) = map.as_object() else {
        return Err(invalid(
            &format!("metadata.{field}"),
            "must be a map of strings",
        ));
    };
    let mut total = 0;
    for (key, value) in map {
        let path = format!("metadata.{field}");
        let Some(value) = value.as_str() else {
            return Err(invalid(&path, format!("value of {key:?} must be a string")));
        };
        if crate::selectors::LabelSelector::parse(key).map(|s| s.0.len()) != Ok(1)
            || key.contains(['=', '!', ' ', ','])
        {
            return Err(invalid(&path, format!("{key:?}: name part must consist of alphanumeric characters, '-', '_' or '.', with an optional DNS subdomain prefix and '/'")));
        }
        if values_are_labels
            && !(value.is_empty()
                || (value.len() <= 63
                    && value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                    && value.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && value.ends_with(|c: char| c.is_ascii_alphanumeric())))
        {
            return Err(invalid(&path, format!("{value:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (max 63)")));
        }
        total += key.len() + value.len();
    }
    if !values_are_labels && total > 256 * 1024 {
        return Err(invalid(
            "metadata.annotations",
            "Too long: must have at most 262144 bytes",
        ));
    }
    Ok(())
}

/// Five characters from Kubernetes' generateName alphabet, from random bytes.
pub fn name_suffix(random: [u8; 5]) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    random
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// Turns a request body into the object to create: checks kind and apiVersion, name (or
/// generateName), namespace, labels and annotations; sets uid, creationTimestamp and
/// generation; drops what clients may not set.
pub fn prepare_create(
    def: &ResourceDef,
    namespace: Option<&str>,
    mut object: Value,
    now: &str,
    uid: &str,
    suffix: &str,
) -> Result<Value, Invalid> {
    check_type(def, &mut object)?;
    let meta = metadata_mut(&mut object)?;
    if meta
        .get("name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        match meta.get("generateName").and_then(Value::as_str) {
            Some(prefix) if !prefix.is_empty() => {
                let name = format!("{prefix}{suffix}");
                meta.insert("name".into(), json!(name));
            }
            _ => {
                return Err(invalid(
                    "metadata.name",
                    "Required value: name or generateName is required",
                ))
            }
        }
    }
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    validate_name(def.kind, &name)
        .map_err(|m| invalid("metadata.name", format!("Invalid value: {name:?}: {m}")))?;
    check_namespace(def, namespace, meta)?;
    validate_string_map(meta, "labels", true)?;
    validate_string_map(meta, "annotations", false)?;
    for owned in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
        "managedFields",
    ] {
        meta.remove(owned);
    }
    meta.insert("uid".into(), json!(uid));
    meta.insert("creationTimestamp".into(), json!(now));
    meta.insert("generation".into(), json!(1));
    crate::defaults::apply(def.kind, &mut object, true);
    Ok(object)
}

/// Whether an update leaves the stored object as it was (resourceVersion aside): Kubernetes then
/// skips the write, so the resourceVersion stays and no watch event is sent.
pub fn unchanged(stored: &Value, updated: &Value) -> bool {
    /// `a` and `b` hold the same entries, `skip` aside (compared without copying either).
    fn same(a: &Map<String, Value>, b: &Map<String, Value>, skip: &str) -> bool {
        let count = |m: &Map<String, Value>| m.len() - usize::from(m.contains_key(skip));
        count(a) == count(b) && a.iter().all(|(k, v)| k == skip || b.get(k) == Some(v))
    }
    match (stored.as_object(), updated.as_object()) {
        (Some(a), Some(b)) => {
            let same_meta = match (
                a.get("metadata").and_then(Value::as_object),
                b.get("metadata").and_then(Value::as_object),
            ) {
                (Some(x), Some(y)) => same(x, y, "resourceVersion"),
                _ => a.get("metadata") == b.get("metadata"),
            };
            same_meta && same(a, b, "metadata")
        }
        _ => stored == updated,
    }
}

/// The uid a PUT body names when it differs from the stored object's: Kubernetes takes a
/// given uid as a precondition of the update. `(given, stored)`.
pub fn uid_mismatch<'a>(stored: &'a Value, body: &'a Value) -> Option<(&'a str, &'a str)> {
    let uid = |o: &'a Value| o.pointer("/metadata/uid").and_then(Value::as_str);
    let given = uid(body).filter(|u| !u.is_empty())?;
    let have = uid(stored).unwrap_or_default();
    (given != have).then_some((given, have))
}

/// Turns an update body into the object to store in place of `existing`: name, namespace and
/// uid must not change (a PUT naming another uid is refused earlier, as a failed precondition); uid, creationTimestamp and the deletion fields are the server's; status is
/// left as it was for kinds with a status subresource; generation moves when anything but
/// metadata and status changed.
pub fn prepare_update(
    def: &ResourceDef,
    existing: &Value,
    mut object: Value,
) -> Result<Value, Invalid> {
    check_type(def, &mut object)?;
    let old_meta = existing
        .get("metadata")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let meta = metadata_mut(&mut object)?;
    // An empty uid is "not given" (Kubernetes fills it in from the stored object).
    if meta.get("uid").and_then(Value::as_str) == Some("") {
        meta.remove("uid");
    }
    for immutable in ["name", "namespace", "uid"] {
        let old = old_meta.get(immutable);
        match meta.get(immutable) {
            None | Some(Value::Null) => {
                if let Some(old) = old {
                    meta.insert(immutable.into(), old.clone());
                }
            }
            Some(new) if Some(new) != old => {
                return Err(invalid(
                    &format!("metadata.{immutable}"),
                    "field is immutable",
                ))
            }
            Some(_) => {}
        }
    }
    validate_string_map(meta, "labels", true)?;
    validate_string_map(meta, "annotations", false)?;
    for owned in [
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        match old_meta.get(owned) {
            Some(v) => meta.insert(owned.into(), v.clone()),
            None => meta.remove(owned),
        };
    }
    meta.remove("resourceVersion");
    if def.status {
        match existing.get("status") {
            Some(status) => object["status"] = status.clone(),
            None => {
                if let Some(o) = object.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    }
    crate::defaults::apply(def.kind, &mut object, false);
    let spec_changed = {
        let strip = |v: &Value| {
            let mut v = v.clone();
            if let Some(o) = v.as_object_mut() {
                o.remove("metadata");
                o.remove("status");
            }
            v
        };
        {
            // Compare like with like: the stored object as it would be defaulted today.
            let mut before = existing.clone();
            crate::defaults::apply(def.kind, &mut before, false);
            strip(&before) != strip(&object)
        }
    };
    let generation = old_meta
        .get("generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    object["metadata"]["generation"] = json!(if spec_changed {
        generation + 1
    } else {
        generation
    });
    Ok(object)
}

/// A status-subresource update: only `status` is taken from the body.
pub fn prepare_status_update(existing: &Value, object: &Value) -> Value {
    let mut updated = existing.clone();
    match object.get("status") {
        Some(status) => updated["status"] = status.clone(),
        None => {
            if let Some(o) = updated.as_object_mut() {
                o.remove("status");
            }
        }
    }
    if let Some(meta) = updated.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    updated
}

fn check_type(def: &ResourceDef, object: &mut Value) -> Result<(), Invalid> {
    let Some(map) = object.as_object_mut() else {
        return Err(invalid("", "the body must be a JSON object"));
    };
    let api_version = def.api_version();
    match map.get("kind").and_then(Value::as_str) {
        None | Some("") => {
            map.insert("kind".into(), json!(def.kind));
        }
        Some(kind) if kind == def.kind => {}
        Some(kind) => {
            return Err(invalid(
                "kind",
                format!("{kind} is not {} (the kind this URL serves)", def.kind),
            ))
        }
    }
    match map.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {
            map.insert("apiVersion".into(), json!(api_version));
        }
        Some(v) if v == api_version => {}
        Some(v) => return Err(invalid("apiVersion", format!("{v} is not {api_version}"))),
    }
    Ok(())
}

fn metadata_mut(object: &mut Value) -> Result<&mut Map<String, Value>, Invalid> {
    let map = object
        .as_object_mut()
        .ok_or_else(|| invalid("", "the body must be a JSON object"))?;
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    meta.as_object_mut()
        .ok_or_else(|| invalid("metadata", "must be an object"))
}

fn check_namespace(
    def: &ResourceDef,
    namespace: Option<&str>,
    meta: &mut Map<String, Value>,
) -> Result<(), Invalid> {
    match (def.namespaced, namespace) {
        (true, Some(ns)) => match meta.get("namespace").and_then(Value::as_str) {
            None | Some("") => {
                meta.insert("namespace".into(), json!(ns));
                Ok(())
            }
            Some(given) if given == ns => Ok(()),
            Some(_) => Err(invalid(
                "metadata.namespace",
                "the namespace of the provided object does not match the namespace sent on the request",
            )),
        },
        (true, None) => Err(invalid("metadata.namespace", "a namespaced resource must be created in a namespace")),
        (false, _) => {
            meta.remove("namespace");
            Ok(())
        }
    }
}

/// The object as clients see it: with `metadata.resourceVersion`.
pub fn with_resource_version(mut object: Value, revision: i64) -> Value {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(revision.to_string()));
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_common::catalog::find;

    fn cm() -> &'static ResourceDef {
        find("", "v1", "configmaps").expect("configmaps")
    }

    #[test]
    fn create_fills_server_fields_and_checks_names() {
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web", "resourceVersion": "9"}, "data": {"a": "b"}});
        let obj = prepare_create(
            cm(),
            Some("ns"),
            body,
            "2026-01-01T00:00:00Z",
            "u-1",
            "abcde",
        )
        .expect("valid");
        assert_eq!(obj["metadata"]["namespace"], "ns");
        assert_eq!(obj["metadata"]["uid"], "u-1");
        assert_eq!(obj["metadata"]["generation"], 1);
        assert!(obj["metadata"].get("resourceVersion").is_none());

        let generated = prepare_create(
            cm(),
            Some("ns"),
            json!({"metadata": {"generateName": "web-"}}),
            "t",
            "u",
            "x2b4z",
        )
        .expect("valid");
        assert_eq!(generated["metadata"]["name"], "web-x2b4z");
        assert_eq!(generated["kind"], "ConfigMap");

        for bad in ["", "Web", "-web", "web_1", "a..b."] {
            let err = prepare_create(
                cm(),
                Some("ns"),
                json!({"metadata": {"name": bad}}),
                "t",
                "u",
                "s",
            );
            assert_eq!(
                err.map_err(|e| e.field),
                Err("metadata.name".to_string()),
                "{bad:?}"
            );
        }
        let ns = find("", "v1", "namespaces").expect("ns");
        assert!(prepare_create(
            ns,
            None,
            json!({"metadata": {"name": "a.b"}}),
            "t",
            "u",
            "s"
        )
        .is_err());
        let wrong_ns = prepare_create(
            cm(),
            Some("ns"),
            json!({"metadata": {"name": "x", "namespace": "other"}}),
            "t",
            "u",
            "s",
        );
        assert_eq!(
            wrong_ns.map_err(|e| e.field),
            Err("metadata.namespace".to_string())
        );
        let wrong_kind = prepare_create(
            cm(),
            Some("ns"),
            json!({"kind": "Secret", "metadata": {"name": "x"}}),
            "t",
            "u",
            "s",
        );
        assert_eq!(wrong_kind.map_err(|e| e.field), Err("kind".to_string()));
        let bad_label = prepare_create(
            cm(),
            Some("ns"),
            json!({"metadata": {"name": "x", "labels": {"a": "not valid!"}}}),
            "t",
            "u",
            "s",
        );
        assert_eq!(
            bad_label.map_err(|e| e.field),
            Err("metadata.labels".to_string())
        );
    }

    #[test]
    fn update_keeps_server_fields_and_bumps_generation_on_spec_change() {
        let deploy = find("apps", "v1", "deployments").expect("deployments");
        let existing = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "namespace": "ns", "uid": "u", "creationTimestamp": "t", "generation": 3},
            "spec": {"replicas": 1}, "status": {"replicas": 1}});
        let same_spec = json!({"metadata": {"name": "d", "namespace": "ns", "labels": {"a": "b"}}, "spec": {"replicas": 1}, "status": {"replicas": 99}});
        let updated = prepare_update(deploy, &existing, same_spec).expect("valid");
        assert_eq!(updated["metadata"]["uid"], "u");
        assert_eq!(updated["metadata"]["generation"], 3);
        // Another uid is refused (see a_put_naming_another_uid_is_...), not replaced.
        let forged = json!({"metadata": {"name": "d", "uid": "forged"}, "spec": {"replicas": 1}});
        assert!(prepare_update(deploy, &existing, forged).is_err());
        assert_eq!(
            updated["status"]["replicas"], 1,
            "status is the status subresource's"
        );
        let scaled = prepare_update(
            deploy,
            &existing,
            json!({"metadata": {"name": "d"}, "spec": {"replicas": 2}}),
        )
        .expect("valid");
        assert_eq!(scaled["metadata"]["generation"], 4);
        assert_eq!(scaled["metadata"]["namespace"], "ns");
        let renamed = prepare_update(deploy, &existing, json!({"metadata": {"name": "other"}}));
        assert_eq!(
            renamed.map_err(|e| e.field),
            Err("metadata.name".to_string())
        );
        let status = prepare_status_update(
            &existing,
            &json!({"status": {"replicas": 5}, "spec": {"replicas": 9}}),
        );
        assert_eq!(
            (
                status["status"]["replicas"].as_i64(),
                status["spec"]["replicas"].as_i64()
            ),
            (Some(5), Some(1))
        );
    }

    #[test]
    fn generate_name_suffixes_use_the_kubernetes_alphabet() {
        let s = name_suffix([0, 26, 27, 200, 255]);
        assert_eq!(s.len(), 5);
        assert!(s.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }
}

/// What a DELETE asked for (from `DeleteOptions` in the body or the query).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    /// `Foreground`, `Background` or `Orphan`.
    pub propagation_policy: Option<String>,
}

/// What to do with a DELETE.
#[derive(Debug, Clone, PartialEq)]
pub enum DeleteAction {
    /// Remove the object from the store now.
    Remove,
    /// Keep it, marked as being deleted (finalizers pending, or a pod's grace period running).
    Mark(Value),
    /// It is already being deleted and nothing changes.
    Unchanged,
}

fn finalizers(object: &Value) -> Vec<String> {
    object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Decides a DELETE as Kubernetes does. `now` is the current time as seconds since the epoch.
///
/// - `propagationPolicy: Foreground` adds the `foregroundDeletion` finalizer, `Orphan` the
///   `orphan` finalizer (the garbage collector removes them once dependents are handled).
/// - A pod bound to a node is deleted gracefully: marked with a deletion timestamp its grace
///   period ahead (the node agent stops it, then deletes it with grace 0).
/// - An object with finalizers is only marked; it goes once the last finalizer is removed.
pub fn plan_delete(
    def: &ResourceDef,
    object: &Value,
    options: &DeleteOptions,
    now: i64,
) -> Result<DeleteAction, String> {
    let mut finalizers = finalizers(object);
    match options.propagation_policy.as_deref() {
        None | Some("Background") => {}
        Some("Foreground") => finalizers.push("foregroundDeletion".into()),
        Some("Orphan") => finalizers.push("orphan".into()),
        Some(other) => {
            return Err(format!(
                "invalid propagationPolicy {other:?}: must be Foreground, Background or Orphan"
            ))
        }
    }
    finalizers.dedup();
    if options.grace_period_seconds.is_some_and(|g| g < 0) {
        return Err("gracePeriodSeconds must be 0 or more".into());
    }
    // Only a pod a kubelet may still be running gets a grace period: an unbound pod or one
    // that already finished (Succeeded/Failed) is removed at once, as Kubernetes does.
    let terminal = matches!(
        object.pointer("/status/phase").and_then(Value::as_str),
        Some("Succeeded" | "Failed")
    );
    let bound_pod = def.kind == "Pod"
        && !terminal
        && object
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
    let grace = if bound_pod {
        options
            .grace_period_seconds
            .or_else(|| {
                object
                    .pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
            })
            .unwrap_or(30)
    } else {
        0
    };
    let already = object
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null());
    if already {
        let current_grace = object
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if finalizers.is_empty() && grace == 0 {
            return Ok(DeleteAction::Remove);
        }
        if grace < current_grace {
            let mut marked = object.clone();
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            marked["metadata"]["deletionTimestamp"] = json!(rfc3339(now + grace));
            return Ok(DeleteAction::Mark(marked));
        }
        return Ok(DeleteAction::Unchanged);
    }
    if finalizers.is_empty() && grace == 0 {
        return Ok(DeleteAction::Remove);
    }
    let mut marked = object.clone();
    marked["metadata"]["deletionTimestamp"] = json!(rfc3339(now + grace));
    marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
    if !finalizers.is_empty() {
        marked["metadata"]["finalizers"] = json!(finalizers);
    }
    Ok(DeleteAction::Mark(marked))
}

/// Whether an object being deleted has nothing left holding it (no finalizers, no grace).
pub fn deletion_complete(object: &Value) -> bool {
    object
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
        && finalizers(object).is_empty()
        && object
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            == 0
}

/// Refuses new finalizers on an object that is already being deleted (as Kubernetes does).
pub fn check_finalizers_on_update(existing: &Value, updated: &Value) -> Result<(), Invalid> {
    if existing
        .pointer("/metadata/deletionTimestamp")
        .is_none_or(Value::is_null)
    {
        return Ok(());
    }
    let before = finalizers(existing);
    if let Some(added) = finalizers(updated)
        .into_iter()
        .find(|f| !before.contains(f))
    {
        return Err(invalid("metadata.finalizers", format!("no new finalizers can be added if the object is being deleted, found new finalizers [{added}]")));
    }
    Ok(())
}

/// RFC 3339 UTC time at whole seconds.
pub fn rfc3339(unix_seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_seconds)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod deletion_tests {
    use super::*;
    use shoal_common::catalog::find;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn plain_objects_go_at_once_unless_finalized() {
        let cm = find("", "v1", "configmaps").expect("cm");
        let plain = json!({"metadata": {"name": "a"}});
        assert_eq!(
            plan_delete(cm, &plain, &DeleteOptions::default(), NOW),
            Ok(DeleteAction::Remove)
        );
        let finalized = json!({"metadata": {"name": "a", "finalizers": ["example.com/hold"]}});
        let Ok(DeleteAction::Mark(marked)) =
            plan_delete(cm, &finalized, &DeleteOptions::default(), NOW)
        else {
            panic!("not marked")
        };
        assert_eq!(marked["metadata"]["deletionTimestamp"], rfc3339(NOW));
        assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 0);
        assert!(!deletion_complete(&marked));
        let mut released = marked.clone();
        released["metadata"]["finalizers"] = json!([]);
        assert!(deletion_complete(&released));
        assert_eq!(
            plan_delete(cm, &marked, &DeleteOptions::default(), NOW),
            Ok(DeleteAction::Unchanged)
        );
        assert!(check_finalizers_on_update(
            &marked,
            &json!({"metadata": {"finalizers": ["example.com/hold", "new"]}})
        )
        .is_err());
        assert!(check_finalizers_on_update(&marked, &released).is_ok());
    }

    #[test]
    fn propagation_policies_add_their_finalizers() {
        let deploy = find("apps", "v1", "deployments").expect("deploy");
        let obj = json!({"metadata": {"name": "d"}});
        for (policy, finalizer) in [("Foreground", "foregroundDeletion"), ("Orphan", "orphan")] {
            let options = DeleteOptions {
                propagation_policy: Some(policy.into()),
                ..Default::default()
            };
            let Ok(DeleteAction::Mark(marked)) = plan_delete(deploy, &obj, &options, NOW) else {
                panic!("{policy}")
            };
            assert_eq!(marked["metadata"]["finalizers"], json!([finalizer]));
        }
        let background = DeleteOptions {
            propagation_policy: Some("Background".into()),
            ..Default::default()
        };
        assert_eq!(
            plan_delete(deploy, &obj, &background, NOW),
            Ok(DeleteAction::Remove)
        );
        let bad = DeleteOptions {
            propagation_policy: Some("Sideways".into()),
            ..Default::default()
        };
        assert!(plan_delete(deploy, &obj, &bad, NOW).is_err());
    }

    #[test]
    fn bound_pods_are_deleted_gracefully() {
        let pod = find("", "v1", "pods").expect("pods");
        let unbound = json!({"metadata": {"name": "p"}, "spec": {}});
        assert_eq!(
            plan_delete(pod, &unbound, &DeleteOptions::default(), NOW),
            Ok(DeleteAction::Remove)
        );
        let bound = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 10}});
        let Ok(DeleteAction::Mark(marked)) =
            plan_delete(pod, &bound, &DeleteOptions::default(), NOW)
        else {
            panic!("not graceful")
        };
        assert_eq!(marked["metadata"]["deletionTimestamp"], rfc3339(NOW + 10));
        assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 10);
        // The node agent's final delete with grace 0 removes it; a shorter grace shortens it.
        let now = DeleteOptions {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        assert_eq!(
            plan_delete(pod, &marked, &now, NOW + 3),
            Ok(DeleteAction::Remove)
        );
        let shorter = DeleteOptions {
            grace_period_seconds: Some(2),
            ..Default::default()
        };
        let Ok(DeleteAction::Mark(again)) = plan_delete(pod, &marked, &shorter, NOW) else {
            panic!("not shortened")
        };
        assert_eq!(again["metadata"]["deletionGracePeriodSeconds"], 2);
        let forced = plan_delete(pod, &bound, &now, NOW);
        assert_eq!(forced, Ok(DeleteAction::Remove));
        // A pod that finished has nothing left to stop: it goes at once.
        for phase in ["Succeeded", "Failed"] {
            let mut finished = bound.clone();
            finished["status"] = json!({"phase": phase});
            assert_eq!(
                plan_delete(pod, &finished, &DeleteOptions::default(), NOW),
                Ok(DeleteAction::Remove),
                "{phase}"
            );
        }
    }
}

/// Applies a `Binding` to a pod: sets `spec.nodeName` and the `PodScheduled` condition.
/// Refuses (with the message Kubernetes gives) a pod that is already bound or being deleted.
/// Takes the pod as read, so the bound pod is written without a copy of it.
pub fn bind_pod(pod: Value, binding: &Value, now: &str) -> Result<Value, String> {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| "a binding needs target.name (the node)".to_string())?;
    if let Some(kind) = binding.pointer("/target/kind").and_then(Value::as_str) {
        if !kind.is_empty() && kind != "Node" {
            return Err(format!("a pod can only be bound to a Node, not a {kind}"));
        }
    }
    if let Some(current) = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        return Err(format!(
            "pod {name} is already assigned to node \"{current}\""
        ));
    }
    if pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
    {
        return Err(format!(
            "pod {name} is being deleted, cannot be assigned to a host"
        ));
    }
    let mut bound = pod;
    bound["spec"]["nodeName"] = json!(node);
    let condition = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
    let status = bound
        .as_object_mut()
        .map(|o| o.entry("status").or_insert_with(|| json!({})));
    if let Some(Value::Object(status)) = status {
        let conditions = status.entry("conditions").or_insert_with(|| json!([]));
        if let Some(list) = conditions.as_array_mut() {
            list.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
            list.push(condition);
        }
    }
    if let Some(meta) = bound.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    Ok(bound)
}

#[cfg(test)]
mod binding_tests {
    use super::*;

    #[test]
    fn binding_sets_the_node_once() {
        let pod = json!({"metadata": {"name": "p", "resourceVersion": "5"}, "spec": {}, "status": {"phase": "Pending",
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}});
        let bound = bind_pod(
            pod.clone(),
            &json!({"target": {"kind": "Node", "name": "n1"}}),
            "t",
        )
        .expect("bind");
        assert_eq!(bound["spec"]["nodeName"], "n1");
        assert_eq!(
            bound["status"]["conditions"],
            json!([{"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": "t"}])
        );
        assert!(bound["metadata"].get("resourceVersion").is_none());
        let again = bind_pod(bound, &json!({"target": {"name": "n2"}}), "t");
        assert_eq!(
            again,
            Err("pod p is already assigned to node \"n1\"".to_string())
        );
        assert!(bind_pod(pod.clone(), &json!({"target": {}}), "t").is_err());
        assert!(bind_pod(pod, &json!({"target": {"kind": "Pod", "name": "x"}}), "t").is_err());
    }
}

#[cfg(test)]
mod update_tests {
    use super::*;

    #[test]
    fn an_update_that_changes_nothing_is_unchanged() {
        let stored = json!({"kind": "ConfigMap", "metadata": {"name": "a", "uid": "u", "resourceVersion": "7"}, "data": {"k": "v"}});
        let same =
            json!({"kind": "ConfigMap", "metadata": {"name": "a", "uid": "u"}, "data": {"k": "v"}});
        assert!(unchanged(&stored, &same));
        let other =
            json!({"kind": "ConfigMap", "metadata": {"name": "a", "uid": "u"}, "data": {"k": "w"}});
        assert!(!unchanged(&stored, &other));
        let labelled = json!({"kind": "ConfigMap", "metadata": {"name": "a", "uid": "u", "labels": {"x": "y"}}, "data": {"k": "v"}});
        assert!(!unchanged(&stored, &labelled));
        let fewer = json!({"kind": "ConfigMap", "metadata": {"name": "a", "uid": "u"}});
        assert!(!unchanged(&stored, &fewer));
    }

    #[test]
    fn a_put_naming_another_uid_is_a_failed_precondition_and_a_patch_an_invalid_one() {
        let stored = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "uid": "u1"}});
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "uid": "u2"}});
        assert_eq!(uid_mismatch(&stored, &body), Some(("u2", "u1")));
        assert_eq!(uid_mismatch(&stored, &stored), None);
        let no_uid = json!({"metadata": {"name": "a", "uid": ""}});
        assert_eq!(uid_mismatch(&stored, &no_uid), None);
        let def = shoal_common::catalog::find("", "v1", "configmaps").expect("configmaps");
        let err = prepare_update(def, &stored, body).expect_err("uid is immutable");
        assert_eq!(err.field, "metadata.uid");
        let kept = prepare_update(def, &stored, no_uid).expect("an empty uid is not given");
        assert_eq!(kept["metadata"]["uid"], "u1");
    }
}
