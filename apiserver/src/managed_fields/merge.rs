//! The object an apply produces: the applied configuration merged into the live object, then
//! pruned of what the applier set last time, left out this time, and nobody else owns.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::path::{FieldSet, PathElement};
use super::schema::{ListKind, ObjectKind};
use super::walk::{index_list, item_element, IndexedList, Walker};

/// Drops null object fields. A null in an applied configuration sets the field to null while
/// ownership and conflicts are worked out (so nulling another manager's field conflicts), then
/// unsets it, as decoding into a typed object would.
pub(crate) fn drop_null_fields(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_null_fields);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_null_fields),
        _ => {}
    }
}

impl Walker<'_> {
    /// `config` merged into `live`: config's values win; objects merge field by field,
    /// associative lists item by item, set lists as a union; atomic values are replaced.
    pub(crate) fn merge(&self, live: Option<&Value>, config: &Value) -> Value {
        self.merge_value(live, config, &mut Vec::new())
    }

    fn merge_value<'v>(
        &self,
        live: Option<&'v Value>,
        config: &'v Value,
        schema_path: &mut Vec<&'v str>,
    ) -> Value {
        match (live, config) {
            (Some(Value::Object(live_fields)), Value::Object(config_fields))
                if schema_path.is_empty()
                    || self.schema.object_kind(schema_path) != ObjectKind::Atomic =>
            {
                Value::Object(self.merge_fields(live_fields, config_fields, schema_path))
            }
            (Some(Value::Array(live_items)), Value::Array(config_items)) => {
                match self.merge_lists(live_items, config_items, schema_path) {
                    Some(items) => Value::Array(items),
                    None => config.clone(),
                }
            }
            _ => config.clone(),
        }
    }

    fn merge_fields<'v>(
        &self,
        live: &'v Map<String, Value>,
        config: &'v Map<String, Value>,
        schema_path: &mut Vec<&'v str>,
    ) -> Map<String, Value> {
        let mut out = Map::new();
        for (name, live_value) in live {
            match config.get(name) {
                None => {
                    out.insert(name.clone(), live_value.clone());
                }
                Some(config_value) => {
                    schema_path.push(name);
                    let merged = self.merge_value(Some(live_value), config_value, schema_path);
                    schema_path.pop();
                    out.insert(name.clone(), merged);
                }
            }
        }
        for (name, config_value) in config {
            if !live.contains_key(name) {
                out.insert(name.clone(), config_value.clone());
            }
        }
        out
    }

    /// The merged items of a granular list; `None` for an atomic list, or when the live list
    /// cannot be keyed (the configuration then replaces it).
    fn merge_lists<'v>(
        &self,
        live: &'v [Value],
        config: &'v [Value],
        schema_path: &mut Vec<&'v str>,
    ) -> Option<Vec<Value>> {
        let kind = self.schema.list_kind(schema_path);
        if kind == ListKind::Atomic {
            return None;
        }
        let live = index_list(live, &kind, false).ok()?;
        let config = index_list(config, &kind, false).ok()?;
        let merge_item = |live_item: Option<&'v Value>, config_item: &'v Value| match kind {
            ListKind::Set => config_item.clone(),
            _ => self.merge_value(live_item, config_item, &mut schema_path.clone()),
        };
        Some(merge_ordered(&live, &config, merge_item))
    }

    /// Removes from `merged` what `last` (the applier's previous set) owned and `owned` (every
    /// manager's set, the applier's new one included) does not, as Kubernetes' prune: a struct
    /// field counts as owned when anything below it is, a list item or map entry only when it
    /// is itself a member; removing a node removes everything below it.
    pub(crate) fn prune(&self, merged: &mut Value, last: &FieldSet, owned: &FieldSet) {
        if let Value::Object(map) = merged {
            self.prune_fields(map, true, last, Some(owned), &mut Vec::new());
        }
    }

    fn prune_fields(
        &self,
        map: &mut Map<String, Value>,
        named_fields: bool,
        last: &FieldSet,
        owned: Option<&FieldSet>,
        schema_path: &mut Vec<String>,
    ) {
        let names: Vec<String> = map.keys().cloned().collect();
        for name in names {
            let element = PathElement::field(name.as_str());
            let last_below = last.child(&element);
            let owned_below = owned.and_then(|o| o.child(&element));
            let in_last = last.has_member(&element) || (named_fields && last_below.is_some());
            let in_owned = owned.is_some_and(|o| o.has_member(&element))
                || (named_fields && owned_below.is_some());
            if in_last && !in_owned {
                map.remove(&name);
                continue;
            }
            let (Some(last_below), Some(value)) = (last_below, map.get_mut(&name)) else {
                continue;
            };
            schema_path.push(name);
            self.prune_value(value, last_below, owned_below, schema_path);
            schema_path.pop();
        }
    }

    fn prune_value(
        &self,
        value: &mut Value,
        last: &FieldSet,
        owned: Option<&FieldSet>,
        schema_path: &mut Vec<String>,
    ) {
        let path: Vec<&str> = schema_path.iter().map(String::as_str).collect();
        match value {
            Value::Object(map) => match self.schema.object_kind(&path) {
                ObjectKind::Atomic => {}
                kind => {
                    self.prune_fields(map, kind == ObjectKind::Struct, last, owned, schema_path)
                }
            },
            Value::Array(items) => match self.schema.list_kind(&path) {
                ListKind::Atomic => {}
                kind => {
                    let item_kind = self.schema.object_kind(&path);
                    self.prune_items(items, &kind, item_kind, last, owned, schema_path);
                }
            },
            _ => {}
        }
    }

    fn prune_items(
        &self,
        items: &mut Vec<Value>,
        kind: &ListKind,
        item_kind: ObjectKind,
        last: &FieldSet,
        owned: Option<&FieldSet>,
        schema_path: &mut Vec<String>,
    ) {
        let mut kept = Vec::with_capacity(items.len());
        for mut item in items.drain(..) {
            let Ok(element) = item_element(&item, kind) else {
                kept.push(item);
                continue;
            };
            if last.has_member(&element) && !owned.is_some_and(|o| o.has_member(&element)) {
                continue;
            }
            if let (Some(last_below), Value::Object(map)) = (last.child(&element), &mut item) {
                if item_kind != ObjectKind::Atomic {
                    let owned_below = owned.and_then(|o| o.child(&element));
                    let named = item_kind == ObjectKind::Struct;
                    self.prune_fields(map, named, last_below, owned_below, schema_path);
                }
            }
            kept.push(item);
        }
        *items = kept;
    }
}

/// Merges two keyed lists in Kubernetes' order: live items the configuration does not name
/// keep their place, items it names follow its order, and its new items go where it puts
/// them relative to those (so new items come after the live ones when appended last).
fn merge_ordered<'v>(
    live: &IndexedList<'v>,
    config: &IndexedList<'v>,
    mut merge_item: impl FnMut(Option<&'v Value>, &'v Value) -> Value,
) -> Vec<Value> {
    let mut out = Vec::with_capacity(live.items.len() + config.items.len());
    let mut shared = config
        .items
        .iter()
        .map(|(e, _)| e)
        .filter(|e| live.contains(e));
    let mut next_shared = shared.next();
    let mut emitted: HashSet<&PathElement> = HashSet::new();
    let (mut li, mut ci) = (0, 0);
    while li < live.items.len() || ci < config.items.len() {
        if let Some((live_element, live_item)) = live.items.get(li) {
            if emitted.contains(live_element) {
                li += 1;
                continue;
            }
            if let Some((config_element, config_item)) = config.items.get(ci) {
                if live_element == config_element {
                    out.push(merge_item(Some(*live_item), config_item));
                    emitted.insert(live_element);
                    next_shared = shared.next();
                    li += 1;
                    ci += 1;
                    continue;
                }
                if config.contains(live_element) && next_shared != Some(live_element) {
                    // A shared item the configuration wants later: it is emitted in its turn.
                    li += 1;
                    continue;
                }
            }
            if !config.contains(live_element) {
                out.push((*live_item).clone());
                li += 1;
                continue;
            }
        }
        match config.items.get(ci) {
            Some((config_element, config_item)) => {
                out.push(merge_item(live.get(config_element), config_item));
                emitted.insert(config_element);
                if next_shared == Some(config_element) {
                    next_shared = shared.next();
                }
                ci += 1;
            }
            // Only shared items are left on the live side and they were all emitted.
            None => li += 1,
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::schema::BuiltinSchema;
    use super::*;
    use serde_json::json;

    fn names(list: &Value) -> Vec<&str> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect()
    }

    fn containers(names: &[&str]) -> Value {
        let items: Vec<Value> = names.iter().map(|n| json!({"name": n})).collect();
        json!({"spec": {"containers": items}})
    }

    #[test]
    fn merges_keyed_items_in_kubernetes_order() {
        let schema = BuiltinSchema::for_kind("Pod");
        let walker = Walker { schema: &schema };
        let merged = |live: &[&str], config: &[&str]| {
            let out = walker.merge(Some(&containers(live)), &containers(config));
            names(&out["spec"]["containers"])
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(merged(&["a", "b"], &["c"]), ["a", "b", "c"]);
        assert_eq!(merged(&["a", "b", "c"], &["c", "d"]), ["a", "b", "c", "d"]);
        assert_eq!(merged(&["a", "b"], &["c", "a"]), ["c", "a", "b"]);
        assert_eq!(merged(&["b", "a"], &["a", "b"]), ["a", "b"]);
        assert_eq!(merged(&["a", "b", "c"], &["c", "b", "a"]), ["c", "b", "a"]);
        // Items the configuration reorders move behind the live-only ones between them.
        assert_eq!(merged(&["a", "x", "b"], &["b", "a"]), ["x", "b", "a"]);
    }

    #[test]
    fn merges_fields_sets_and_replaces_atomics() {
        let schema = BuiltinSchema::for_kind("Pod");
        let walker = Walker { schema: &schema };
        let live = json!({
            "metadata": {"labels": {"a": "1"}, "finalizers": ["x", "y"]},
            "spec": {"containers": [{"name": "c", "image": "old", "args": ["1", "2"], "tty": true}]}
        });
        let config = json!({
            "metadata": {"labels": {"b": "2"}, "finalizers": ["z", "x"]},
            "spec": {"containers": [{"name": "c", "image": "new", "args": ["3"], "tty": null}]}
        });
        let mut merged = walker.merge(Some(&live), &config);
        assert_eq!(merged["spec"]["containers"][0]["tty"], Value::Null);
        drop_null_fields(&mut merged);
        assert_eq!(
            merged,
            json!({
                "metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["z", "x", "y"]},
                "spec": {"containers": [{"name": "c", "image": "new", "args": ["3"]}]}
            })
        );
    }

    #[test]
    fn prune_removes_only_what_the_applier_alone_owned() {
        let schema = BuiltinSchema::for_kind("Deployment");
        let walker = Walker { schema: &schema };
        let mut object = json!({"spec": {"replicas": 3, "paused": true, "minReadySeconds": 5}});
        let last = walker
            .field_set(&json!({"spec": {"replicas": 3, "paused": true, "minReadySeconds": 5}}))
            .unwrap();
        let owned = walker
            .field_set(&json!({"spec": {"replicas": 3, "minReadySeconds": 5}}))
            .unwrap();
        walker.prune(&mut object, &last, &owned);
        assert_eq!(
            object,
            json!({"spec": {"replicas": 3, "minReadySeconds": 5}})
        );

        // A struct nobody owns anything under goes whole, unowned defaults with it.
        let mut object = json!({"spec": {"replicas": 3, "strategy": {"type": "Recreate", "x": 1}}});
        let last = walker
            .field_set(&json!({"spec": {"strategy": {"type": "Recreate"}}}))
            .unwrap();
        let owned = walker.field_set(&json!({"spec": {"replicas": 3}})).unwrap();
        walker.prune(&mut object, &last, &owned);
        assert_eq!(object, json!({"spec": {"replicas": 3}}));
    }
}
