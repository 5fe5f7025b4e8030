//! Conversion between the form a resource is served in and the form it is stored in, for the
//! resources served at more than one group-version (`ResourceDef::storage`): the versions of a
//! CRD (conversion strategy `None`: the object is the same, only `apiVersion` changes) and
//! events.k8s.io/v1 Events, which are core/v1 Events under other field names (Kubernetes'
//! `pkg/apis/events/v1` conversion).

use serde_json::{Map, Value};
use shoal_common::catalog::ResourceDef;

/// events.k8s.io/v1 field names and the core/v1 names they are stored under. Fields not
/// listed (metadata, eventTime, series, reportingInstance, action, reason, related, type) have
/// the same name in both.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

/// Renames the fields of `object` by `pairs` (from the first name to the second), and sets
/// its apiVersion.
fn renamed(
    mut object: Map<String, Value>,
    pairs: impl Iterator<Item = (&'static str, &'static str)>,
    api_version: String,
) -> Map<String, Value> {
    for (from, to) in pairs {
        match object.remove(from) {
            Some(value) => {
                object.insert(to.to_string(), value);
            }
            // A field of the other form that has no place in this one is dropped.
            None => {
                object.remove(to);
            }
        }
    }
    object.insert("apiVersion".into(), Value::String(api_version));
    object
}

fn is_event(def: &ResourceDef) -> bool {
    def.kind == "Event" && def.storage == ("", "v1") && def.group == "events.k8s.io"
}

/// A stored object as `def` serves it.
pub fn to_served(def: &ResourceDef, stored: Value) -> Value {
    convert(def, stored, false)
}

/// An object `def` serves as it is stored.
pub fn to_storage(def: &ResourceDef, served: Value) -> Value {
    convert(def, served, true)
}

fn convert(def: &ResourceDef, object: Value, to_storage: bool) -> Value {
    if !def.converted() {
        return object;
    }
    let Value::Object(object) = object else {
        return object;
    };
    let (group, version) = if to_storage {
        def.storage
    } else {
        (def.group, def.version)
    };
    let pairs = EVENT_FIELDS
        .iter()
        .filter(|_| is_event(def))
        .map(|&(served, stored)| {
            if to_storage {
                (served, stored)
            } else {
                (stored, served)
            }
        });
    Value::Object(renamed(object, pairs, api_version(group, version)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use shoal_common::catalog;

    #[test]
    fn events_convert_both_ways_with_kubernetes_field_names() {
        let def = catalog::find("events.k8s.io", "v1", "events").expect("events");
        let served = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "e", "namespace": "default"},
            "eventTime": "2024-01-01T00:00:00.000000Z",
            "series": {"count": 2, "lastObservedTime": "2024-01-01T00:00:01.000000Z"},
            "reportingController": "example.com/ctl", "reportingInstance": "ctl-1",
            "action": "Started", "reason": "Began", "type": "Normal", "note": "it began",
            "regarding": {"kind": "Pod", "name": "p", "namespace": "default"},
            "related": {"kind": "Node", "name": "n"},
            "deprecatedSource": {"component": "kubelet", "host": "n"},
            "deprecatedFirstTimestamp": "2024-01-01T00:00:00Z",
            "deprecatedLastTimestamp": "2024-01-01T00:00:01Z",
            "deprecatedCount": 2,
        });
        let stored = to_storage(def, served.clone());
        assert_eq!(
            stored,
            json!({
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": "e", "namespace": "default"},
                "eventTime": "2024-01-01T00:00:00.000000Z",
                "series": {"count": 2, "lastObservedTime": "2024-01-01T00:00:01.000000Z"},
                "reportingComponent": "example.com/ctl", "reportingInstance": "ctl-1",
                "action": "Started", "reason": "Began", "type": "Normal", "message": "it began",
                "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
                "related": {"kind": "Node", "name": "n"},
                "source": {"component": "kubelet", "host": "n"},
                "firstTimestamp": "2024-01-01T00:00:00Z",
                "lastTimestamp": "2024-01-01T00:00:01Z",
                "count": 2,
            })
        );
        assert_eq!(to_served(def, stored), served);
        // The core API serves the stored form as it is.
        let core = catalog::find("", "v1", "events").expect("core events");
        assert!(!core.converted());
        assert_eq!(
            to_served(core, json!({"message": "m"})),
            json!({"message": "m"})
        );
    }

    #[test]
    fn custom_versions_differ_only_in_api_version() {
        let def = ResourceDef {
            group: "example.com",
            version: "v1beta1",
            storage: ("example.com", "v1"),
            ..*catalog::find("", "v1", "configmaps").expect("configmaps")
        };
        let served = json!({"apiVersion": "example.com/v1beta1", "kind": "Widget", "note": "kept"});
        let stored = to_storage(&def, served.clone());
        assert_eq!(stored["apiVersion"], "example.com/v1");
        assert_eq!(stored["note"], "kept");
        assert_eq!(to_served(&def, stored), served);
    }
}
