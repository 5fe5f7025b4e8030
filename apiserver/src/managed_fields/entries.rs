//! `metadata.managedFields` entries: decoding them from an object, writing them back in
//! Kubernetes' order, and the bookkeeping around them (one entry per manager identity, a cap
//! on update entries, timestamps left alone when nothing really changed).

use serde_json::{json, Map, Value};

use super::path::FieldSet;
use super::walk::equal_without_managed_fields;

/// The only `fieldsType` there is.
pub const FIELDS_V1: &str = "FieldsV1";

/// How many `Update` entries an object keeps; older ones are merged into one.
pub const MAX_UPDATE_MANAGERS: usize = 10;

/// The manager the oldest `Update` entries are merged into past [`MAX_UPDATE_MANAGERS`].
pub const ANCIENT_CHANGES_MANAGER: &str = "ancient-changes";

/// Which kind of write an entry records. The derived order (`Apply` first) is the order
/// Kubernetes lists entries in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }

    fn parse(text: &str) -> Option<Operation> {
        match text {
            "Apply" => Some(Operation::Apply),
            "Update" => Some(Operation::Update),
            _ => None,
        }
    }
}

/// One `metadata.managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagedFieldsEntry {
    pub manager: String,
    pub operation: Operation,
    pub api_version: String,
    pub time: Option<String>,
    pub subresource: Option<String>,
    pub fields: FieldSet,
}

/// What makes two entries one: manager, operation and subresource, plus the API version for
/// updates (an applier keeps one entry whichever version it applies with).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Identity {
    manager: String,
    operation: Operation,
    api_version: Option<String>,
    subresource: Option<String>,
}

impl Identity {
    pub(crate) fn new(
        manager: &str,
        operation: Operation,
        api_version: &str,
        subresource: Option<&str>,
    ) -> Identity {
        Identity {
            manager: manager.into(),
            operation,
            api_version: (operation == Operation::Update).then(|| api_version.into()),
            subresource: subresource.filter(|s| !s.is_empty()).map(Into::into),
        }
    }

    /// Kubernetes' manager identifier (the entry as JSON without time and fields). Conflicts
    /// are grouped and sorted by it.
    pub(crate) fn identifier(&self) -> String {
        let mut text = format!(
            "{{\"manager\":{},\"operation\":\"{}\"",
            Value::String(self.manager.clone()),
            self.operation.as_str()
        );
        if let Some(version) = &self.api_version {
            text.push_str(&format!(
                ",\"apiVersion\":{}",
                Value::String(version.clone())
            ));
        }
        if let Some(subresource) = &self.subresource {
            text.push_str(&format!(
                ",\"subresource\":{}",
                Value::String(subresource.clone())
            ));
        }
        text.push('}');
        text
    }
}

impl ManagedFieldsEntry {
    pub(crate) fn identity(&self) -> Identity {
        Identity::new(
            &self.manager,
            self.operation,
            &self.api_version,
            self.subresource.as_deref(),
        )
    }

    fn decode(entry: &Value, index: usize) -> Result<ManagedFieldsEntry, String> {
        let entry = entry
            .as_object()
            .ok_or_else(|| format!("managed fields entry {index} must be an object"))?;
        let text = |name: &str| entry.get(name).and_then(Value::as_str);
        let operation = text("operation")
            .and_then(Operation::parse)
            .ok_or("operation must be `Apply` or `Update`")?;
        let api_version = text("apiVersion")
            .filter(|v| !v.is_empty())
            .ok_or("apiVersion must not be empty")?;
        match text("fieldsType") {
            Some(FIELDS_V1) => {}
            None | Some("") => {
                return Err(format!(
                    "missing fieldsType in managed fields entry {index}"
                ))
            }
            Some(other) => {
                return Err(format!(
                    "invalid fieldsType {other:?} in managed fields entry {index}"
                ))
            }
        }
        let fields = match entry.get("fieldsV1") {
            None | Some(Value::Null) => FieldSet::default(),
            Some(fields) => FieldSet::from_fields_v1(fields)
                .map_err(|e| format!("managed fields entry {index}: {e}"))?,
        };
        Ok(ManagedFieldsEntry {
            manager: text("manager").unwrap_or_default().into(),
            operation,
            api_version: api_version.into(),
            time: text("time").map(Into::into),
            subresource: text("subresource")
                .filter(|s| !s.is_empty())
                .map(Into::into),
            fields,
        })
    }

    fn encode(&self) -> Value {
        let mut entry = json!({
            "manager": self.manager,
            "operation": self.operation.as_str(),
            "apiVersion": self.api_version,
            "fieldsType": FIELDS_V1,
            "fieldsV1": self.fields.to_fields_v1(),
        });
        if let Some(time) = &self.time {
            entry["time"] = Value::String(time.clone());
        }
        if let Some(subresource) = &self.subresource {
            entry["subresource"] = Value::String(subresource.clone());
        }
        entry
    }
}

/// Decodes a `managedFields` list. An entry repeating an identity replaces the earlier one.
pub fn decode_managed_fields(list: &Value) -> Result<Vec<ManagedFieldsEntry>, String> {
    let items = list.as_array().ok_or("managedFields must be a list")?;
    let mut entries: Vec<ManagedFieldsEntry> = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let entry = ManagedFieldsEntry::decode(item, index)?;
        match entries
            .iter_mut()
            .find(|e| e.identity() == entry.identity())
        {
            Some(existing) => *existing = entry,
            None => entries.push(entry),
        }
    }
    Ok(entries)
}

/// The object's recorded entries; none when it has none, or when they do not decode (the
/// object then starts over, as Kubernetes does with unreadable managed fields).
pub(crate) fn recorded_entries(object: &Value) -> Vec<ManagedFieldsEntry> {
    managed_fields_of(object)
        .and_then(|list| decode_managed_fields(list).ok())
        .unwrap_or_default()
}

pub(crate) fn managed_fields_of(object: &Value) -> Option<&Value> {
    object
        .get("metadata")?
        .get("managedFields")
        .filter(|v| !v.is_null())
}

/// Takes `metadata.managedFields` out of `object`.
pub(crate) fn take_managed_fields(object: &mut Value) -> Option<Value> {
    object
        .get_mut("metadata")?
        .as_object_mut()?
        .remove("managedFields")
        .filter(|v| !v.is_null())
}

/// A copy of `object` without `metadata.managedFields`.
pub(crate) fn without_managed_fields(object: &Value) -> Value {
    let mut copy = object.clone();
    take_managed_fields(&mut copy);
    copy
}

/// Whether a client's `managedFields` asks to clear them: an empty list, or a list of one
/// empty entry (`[{}]`, as the Kubernetes docs show).
pub(crate) fn is_reset_request(list: &Value) -> bool {
    match list.as_array().map(Vec::as_slice) {
        Some([]) => true,
        Some([only]) => only.as_object().is_some_and(Map::is_empty),
        _ => false,
    }
}

/// Writes `entries` (empty ones dropped) into `object`'s metadata in Kubernetes' order:
/// appliers first, then by time, manager, API version and subresource. No entries, no field.
pub(crate) fn store_entries(object: &mut Value, mut entries: Vec<ManagedFieldsEntry>) {
    entries.retain(|e| !e.fields.is_empty());
    entries.sort_by(|a, b| {
        (
            a.operation,
            &a.time,
            &a.manager,
            &a.api_version,
            &a.subresource,
        )
            .cmp(&(
                b.operation,
                &b.time,
                &b.manager,
                &b.api_version,
                &b.subresource,
            ))
    });
    let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if entries.is_empty() {
        metadata.remove("managedFields");
    } else {
        let list = entries.iter().map(ManagedFieldsEntry::encode).collect();
        metadata.insert("managedFields".into(), Value::Array(list));
    }
}

/// Keeps at most `max` `Update` entries by merging the oldest into one
/// [`ANCIENT_CHANGES_MANAGER`] entry, which takes the API version and time of the newest of
/// them.
pub(crate) fn cap_update_entries(entries: &mut Vec<ManagedFieldsEntry>, max: usize) {
    let mut updates: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].operation == Operation::Update)
        .collect();
    if updates.len() <= max || max == 0 {
        return;
    }
    updates.sort_by(|&a, &b| {
        let (a, b) = (&entries[a], &entries[b]);
        (&a.time, a.identity().identifier()).cmp(&(&b.time, b.identity().identifier()))
    });
    let oldest: Vec<usize> = updates[..=updates.len() - max].to_vec();
    let Some(&newest_merged) = oldest.last() else {
        return;
    };
    let mut bucket = ManagedFieldsEntry {
        manager: ANCIENT_CHANGES_MANAGER.into(),
        ..entries[newest_merged].clone()
    };
    for &i in &oldest {
        bucket.fields.union_with(&entries[i].fields);
    }
    *entries = std::mem::take(entries)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !oldest.contains(i))
        .map(|(_, entry)| entry)
        .collect();
    match entries
        .iter_mut()
        .find(|e| e.identity() == bucket.identity())
    {
        Some(existing) => existing.fields.union_with(&bucket.fields),
        None => entries.push(bucket),
    }
}

/// Kubernetes ignores a write that only moves managed-fields timestamps: when `new` equals
/// `old` apart from `metadata.managedFields`, and the entries are the same but for their
/// times, `new` gets `old`'s managed fields back unchanged.
pub(crate) fn keep_old_timestamps_if_unchanged(old: &Value, new: &mut Value) {
    if !equal_without_managed_fields(old, new) {
        return;
    }
    let (before, after) = (recorded_entries(old), recorded_entries(new));
    let same_but_time = before.len() == after.len()
        && before.iter().all(|b| {
            after.iter().any(|a| {
                a.identity() == b.identity()
                    && a.api_version == b.api_version
                    && a.fields == b.fields
            })
        });
    if !same_but_time {
        return;
    }
    let old_list = managed_fields_of(old).cloned();
    if let Some(metadata) = new.get_mut("metadata").and_then(Value::as_object_mut) {
        match old_list {
            Some(list) => metadata.insert("managedFields".into(), list),
            None => metadata.remove("managedFields"),
        };
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::path::{Path, PathElement};
    use super::*;

    fn entry(manager: &str, operation: Operation, time: &str, field: &str) -> ManagedFieldsEntry {
        let mut fields = FieldSet::default();
        fields.insert(&[PathElement::field("spec"), PathElement::field(field)]);
        ManagedFieldsEntry {
            manager: manager.into(),
            operation,
            api_version: "apps/v1".into(),
            time: Some(time.into()),
            subresource: None,
            fields,
        }
    }

    #[test]
    fn decodes_and_validates_entries() {
        let list = json!([{
            "manager": "kubectl", "operation": "Apply", "apiVersion": "apps/v1",
            "time": "2024-01-01T00:00:00Z", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {"f:replicas": {}}}
        }]);
        let entries = decode_managed_fields(&list).unwrap();
        assert_eq!(
            entries[0].fields.paths(),
            vec![Path::fields(&["spec", "replicas"])]
        );
        assert_eq!(entries[0].operation, Operation::Apply);

        let bad = |patch: Value| {
            let mut entry = list[0].clone();
            for (k, v) in patch.as_object().unwrap() {
                entry[k] = v.clone();
            }
            decode_managed_fields(&json!([entry])).unwrap_err()
        };
        assert_eq!(
            bad(json!({"operation": "Patch"})),
            "operation must be `Apply` or `Update`"
        );
        assert_eq!(
            bad(json!({"apiVersion": ""})),
            "apiVersion must not be empty"
        );
        assert_eq!(
            bad(json!({"fieldsType": "FieldsV2"})),
            "invalid fieldsType \"FieldsV2\" in managed fields entry 0"
        );
        assert!(decode_managed_fields(&json!([{}])).is_err());
    }

    #[test]
    fn identifiers_match_kubernetes() {
        let update = Identity::new("kubectl", Operation::Update, "apps/v1", None);
        assert_eq!(
            update.identifier(),
            r#"{"manager":"kubectl","operation":"Update","apiVersion":"apps/v1"}"#
        );
        let apply = Identity::new("kubectl", Operation::Apply, "apps/v1", Some("status"));
        assert_eq!(
            apply.identifier(),
            r#"{"manager":"kubectl","operation":"Apply","subresource":"status"}"#
        );
        assert_eq!(
            apply,
            Identity::new("kubectl", Operation::Apply, "apps/v2", Some("status"))
        );
    }

    #[test]
    fn stores_appliers_first_then_by_time_and_drops_empty_entries() {
        let mut object = json!({"metadata": {}});
        let mut empty = entry("gone", Operation::Update, "2024-01-01T00:00:00Z", "x");
        empty.fields = FieldSet::default();
        store_entries(
            &mut object,
            vec![
                entry("b", Operation::Update, "2024-01-02T00:00:00Z", "x"),
                entry("a", Operation::Update, "2024-01-03T00:00:00Z", "y"),
                entry("z", Operation::Apply, "2024-01-04T00:00:00Z", "z"),
                empty,
            ],
        );
        let managers: Vec<&str> = object["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["manager"].as_str().unwrap())
            .collect();
        assert_eq!(managers, ["z", "b", "a"]);

        store_entries(&mut object, Vec::new());
        assert_eq!(object, json!({"metadata": {}}));
    }

    #[test]
    fn caps_update_entries_into_ancient_changes() {
        let mut entries: Vec<ManagedFieldsEntry> = (0..12)
            .map(|i| {
                let time = format!("2024-01-{:02}T00:00:00Z", i + 1);
                entry(&format!("m{i}"), Operation::Update, &time, &format!("f{i}"))
            })
            .collect();
        entries.push(entry(
            "applier",
            Operation::Apply,
            "2024-01-01T00:00:00Z",
            "a",
        ));
        cap_update_entries(&mut entries, MAX_UPDATE_MANAGERS);
        let updates = entries
            .iter()
            .filter(|e| e.operation == Operation::Update)
            .count();
        assert_eq!(updates, MAX_UPDATE_MANAGERS);
        let bucket = entries
            .iter()
            .find(|e| e.manager == ANCIENT_CHANGES_MANAGER)
            .unwrap();
        assert_eq!(bucket.fields.paths().len(), 3);
        assert_eq!(bucket.time.as_deref(), Some("2024-01-03T00:00:00Z"));
        assert!(entries
            .iter()
            .all(|e| e.manager != "m0" && e.manager != "m2"));
        assert!(entries.iter().any(|e| e.manager == "m3"));
    }

    #[test]
    fn restores_timestamps_only_for_time_only_changes() {
        let old = json!({"metadata": {"managedFields": [
            entry("a", Operation::Update, "2024-01-01T00:00:00Z", "x").encode()
        ]}, "spec": {"x": 1}});
        let mut new = json!({"metadata": {"managedFields": [
            entry("a", Operation::Update, "2024-02-01T00:00:00Z", "x").encode()
        ]}, "spec": {"x": 1}});
        keep_old_timestamps_if_unchanged(&old, &mut new);
        assert_eq!(new, old);

        let mut changed = json!({"metadata": {"managedFields": [
            entry("a", Operation::Update, "2024-02-01T00:00:00Z", "x").encode()
        ]}, "spec": {"x": 2}});
        let before = changed.clone();
        keep_old_timestamps_if_unchanged(&old, &mut changed);
        assert_eq!(changed, before);
    }
}
