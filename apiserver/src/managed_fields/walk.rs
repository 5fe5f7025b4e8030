//! Walks over objects that turn them into field sets: the fields an applied configuration sets
//! (what its applier comes to own) and the fields an update added, changed or removed.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::path::{FieldSet, Path, PathElement};
use super::schema::{ListKey, ListKind, ObjectKind, Schema};

/// Schema-aware walks over JSON objects.
pub(crate) struct Walker<'s> {
    pub(crate) schema: &'s dyn Schema,
}

/// The items of a granular list by the path element naming each, first occurrence kept.
pub(crate) struct IndexedList<'v> {
    pub(crate) items: Vec<(PathElement, &'v Value)>,
    positions: HashMap<PathElement, usize>,
}

impl<'v> IndexedList<'v> {
    pub(crate) fn get(&self, element: &PathElement) -> Option<&'v Value> {
        self.positions.get(element).map(|&i| self.items[i].1)
    }

    pub(crate) fn contains(&self, element: &PathElement) -> bool {
        self.positions.contains_key(element)
    }
}

/// The path element naming one item of a granular list.
pub(crate) fn item_element(item: &Value, kind: &ListKind) -> Result<PathElement, String> {
    match kind {
        ListKind::Set if item.is_object() || item.is_array() => {
            Err("set lists may only hold scalars".into())
        }
        ListKind::Set => Ok(PathElement::value(item)),
        ListKind::Map(keys) => associative_key(item, keys),
        ListKind::Atomic => Err("atomic lists have no items of their own".into()),
    }
}

fn associative_key(item: &Value, keys: &[ListKey]) -> Result<PathElement, String> {
    let item = item
        .as_object()
        .ok_or("associative list with keys may not have non-map elements")?;
    let mut fields = Map::new();
    for key in keys {
        let value = match (item.get(&key.name), &key.default) {
            (Some(value), _) if !value.is_null() => value,
            (_, Some(default)) => default,
            _ => {
                return Err(format!(
                    "associative list with keys has an element that omits key field {:?} \
                     (and doesn't have default value)",
                    key.name
                ))
            }
        };
        fields.insert(key.name.clone(), value.clone());
    }
    Ok(PathElement::key(fields))
}

/// Indexes a granular list. `strict` (for applied configurations) rejects duplicate items;
/// otherwise the first of duplicates wins, as Kubernetes reads stored objects.
pub(crate) fn index_list<'v>(
    items: &'v [Value],
    kind: &ListKind,
    strict: bool,
) -> Result<IndexedList<'v>, String> {
    let mut list = IndexedList {
        items: Vec::with_capacity(items.len()),
        positions: HashMap::with_capacity(items.len()),
    };
    for (i, item) in items.iter().enumerate() {
        let element = item_element(item, kind).map_err(|e| format!("element {i}: {e}"))?;
        if list.positions.contains_key(&element) {
            if strict {
                return Err(format!("duplicate entries for key {element}"));
            }
            continue;
        }
        list.positions.insert(element.clone(), list.items.len());
        list.items.push((element, item));
    }
    Ok(list)
}

/// JSON equality with numbers compared by value (`1` equals `1.0`).
pub(crate) fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, a)| y.get(k).is_some_and(|b| json_equal(a, b)))
        }
        _ => a == b,
    }
}

/// Objects equal (as [`json_equal`]) once `metadata.managedFields` is left out of both,
/// compared without copying either.
pub(crate) fn equal_without_managed_fields(a: &Value, b: &Value) -> bool {
    fn equal_skipping(
        x: &Map<String, Value>,
        y: &Map<String, Value>,
        skip: Option<&str>,
        equal: impl Fn(&str, &Value, &Value) -> bool,
    ) -> bool {
        let skipped = |k: &str| skip == Some(k);
        let count =
            |m: &Map<String, Value>| m.len() - usize::from(skip.is_some_and(|s| m.contains_key(s)));
        count(x) == count(y)
            && x.iter()
                .all(|(k, v)| skipped(k) || y.get(k).is_some_and(|w| equal(k, v, w)))
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            equal_skipping(x, y, None, |key, v, w| match (v, w) {
                (Value::Object(m), Value::Object(n)) if key == "metadata" => {
                    equal_skipping(m, n, Some("managedFields"), |_, v, w| json_equal(v, w))
                }
                _ => json_equal(v, w),
            })
        }
        _ => json_equal(a, b),
    }
}

/// What an update did, path by path.
#[derive(Debug, Default)]
pub(crate) struct Comparison {
    pub(crate) added: FieldSet,
    pub(crate) modified: FieldSet,
    pub(crate) removed: FieldSet,
}

impl Comparison {
    /// Added or modified: what the writer now owns and others lose.
    pub(crate) fn changed(&self) -> FieldSet {
        let mut changed = self.added.clone();
        changed.union_with(&self.modified);
        changed
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Object,
    List,
    Scalar,
}

fn shape(value: &Value) -> Shape {
    match value {
        Value::Object(_) => Shape::Object,
        Value::Array(_) => Shape::List,
        _ => Shape::Scalar,
    }
}

fn is_empty_container(value: Option<&Value>) -> bool {
    match value {
        None => true,
        Some(Value::Object(map)) => map.is_empty(),
        Some(Value::Array(items)) => items.is_empty(),
        Some(_) => false,
    }
}

impl Walker<'_> {
    /// The fields `object` sets, as Kubernetes' `ToFieldSet`: every scalar, atomic list or
    /// object, empty object and null; every associative or set list item (with `"."` when it
    /// has fields); every string-map entry. Struct nodes are implied by their fields.
    pub(crate) fn field_set(&self, object: &Value) -> Result<FieldSet, String> {
        let mut out = FieldSet::default();
        if let Value::Object(map) = object {
            self.collect_fields(
                map,
                ObjectKind::Struct,
                &mut Vec::new(),
                &mut Vec::new(),
                &mut out,
            )?;
        }
        Ok(out)
    }

    fn collect_fields<'v>(
        &self,
        map: &'v Map<String, Value>,
        kind: ObjectKind,
        path: &mut Vec<PathElement>,
        schema_path: &mut Vec<&'v str>,
        out: &mut FieldSet,
    ) -> Result<(), String> {
        for (name, value) in map {
            path.push(PathElement::field(name.as_str()));
            schema_path.push(name);
            self.collect_value(value, path, schema_path, out)?;
            if kind == ObjectKind::Map {
                out.insert(path);
            }
            path.pop();
            schema_path.pop();
        }
        Ok(())
    }

    fn collect_value<'v>(
        &self,
        value: &'v Value,
        path: &mut Vec<PathElement>,
        schema_path: &mut Vec<&'v str>,
        out: &mut FieldSet,
    ) -> Result<(), String> {
        match value {
            Value::Object(map) => match self.schema.object_kind(schema_path) {
                ObjectKind::Atomic => out.insert(path),
                _ if map.is_empty() => out.insert(path),
                kind => self.collect_fields(map, kind, path, schema_path, out)?,
            },
            Value::Array(items) => match self.schema.list_kind(schema_path) {
                ListKind::Atomic => out.insert(path),
                kind => {
                    let list = index_list(items, &kind, true)
                        .map_err(|e| format!("{}: {e}", Path(path.clone())))?;
                    for (element, item) in list.items {
                        path.push(element);
                        if let Value::Object(map) = item {
                            match self.schema.object_kind(schema_path) {
                                ObjectKind::Atomic => {}
                                kind => self.collect_fields(map, kind, path, schema_path, out)?,
                            }
                        }
                        out.insert(path);
                        path.pop();
                    }
                }
            },
            _ => out.insert(path),
        }
        Ok(())
    }

    /// What changed from `old` to `new`, as Kubernetes' `Compare`: leaves (scalars, atomic
    /// values, empty containers) are added, modified or removed; a list item, a map or an
    /// optional struct that appears or disappears is itself added or removed.
    pub(crate) fn compare(&self, old: Option<&Value>, new: Option<&Value>) -> Comparison {
        let mut comparison = Comparison::default();
        self.compare_fields(
            old.and_then(Value::as_object),
            new.and_then(Value::as_object),
            &mut Vec::new(),
            &mut Vec::new(),
            &mut comparison,
        );
        comparison
    }

    fn compare_fields<'v>(
        &self,
        old: Option<&'v Map<String, Value>>,
        new: Option<&'v Map<String, Value>>,
        path: &mut Vec<PathElement>,
        schema_path: &mut Vec<&'v str>,
        out: &mut Comparison,
    ) {
        let in_old = |name: &String| old.is_some_and(|o| o.contains_key(name));
        let old_fields = old.into_iter().flatten().map(|(k, v)| (k, Some(v)));
        let new_only = new
            .into_iter()
            .flatten()
            .filter(|(k, _)| !in_old(k))
            .map(|(k, _)| (k, None));
        for (name, old_value) in old_fields.chain(new_only) {
            // As Kubernetes compares objects with their managed fields removed (without
            // copying whole objects to remove them).
            if name == "managedFields" && schema_path.as_slice() == ["metadata"] {
                continue;
            }
            path.push(PathElement::field(name.as_str()));
            schema_path.push(name);
            let new_value = new.and_then(|n| n.get(name));
            self.compare_value(old_value, new_value, false, path, schema_path, out);
            path.pop();
            schema_path.pop();
        }
    }

    fn compare_value<'v>(
        &self,
        old: Option<&'v Value>,
        new: Option<&'v Value>,
        is_list_item: bool,
        path: &mut Vec<PathElement>,
        schema_path: &mut Vec<&'v str>,
        out: &mut Comparison,
    ) {
        let node_shape = match (old.map(shape), new.map(shape)) {
            (Some(a), Some(b)) if a != b => Shape::Scalar,
            (Some(s), _) | (None, Some(s)) => s,
            (None, None) => return,
        };
        let both_empty = is_empty_container(old) && is_empty_container(new);
        let descended = match node_shape {
            Shape::Object
                if !both_empty && self.schema.object_kind(schema_path) != ObjectKind::Atomic =>
            {
                let (o, n) = (
                    old.and_then(Value::as_object),
                    new.and_then(Value::as_object),
                );
                self.compare_fields(o, n, path, schema_path, out);
                true
            }
            Shape::List if !both_empty => self.compare_lists(old, new, path, schema_path, out),
            _ => false,
        };
        if !descended {
            compare_leaf(old, new, path, out);
        } else if is_list_item || !self.schema.always_present(schema_path) {
            if old.is_none() {
                out.added.insert(path);
            }
            if new.is_none() {
                out.removed.insert(path);
            }
        }
    }

    /// Compares granular lists item by item; false (compare as a leaf) for an atomic list or
    /// one whose items cannot be keyed.
    fn compare_lists<'v>(
        &self,
        old: Option<&'v Value>,
        new: Option<&'v Value>,
        path: &mut Vec<PathElement>,
        schema_path: &mut Vec<&'v str>,
        out: &mut Comparison,
    ) -> bool {
        let kind = self.schema.list_kind(schema_path);
        if kind == ListKind::Atomic {
            return false;
        }
        let items = |v: Option<&'v Value>| -> &'v [Value] {
            v.and_then(Value::as_array).map_or(&[], Vec::as_slice)
        };
        let (Ok(old_list), Ok(new_list)) = (
            index_list(items(old), &kind, false),
            index_list(items(new), &kind, false),
        ) else {
            return false;
        };
        let new_only = new_list.items.iter().filter(|(e, _)| !old_list.contains(e));
        let pairs = old_list
            .items
            .iter()
            .map(|(e, v)| (e, Some(*v), new_list.get(e)))
            .chain(new_only.map(|(e, v)| (e, None, Some(*v))));
        for (element, old_item, new_item) in pairs {
            path.push(element.clone());
            if kind == ListKind::Set {
                compare_leaf(old_item, new_item, path, out);
            } else {
                self.compare_value(old_item, new_item, true, path, schema_path, out);
            }
            path.pop();
        }
        true
    }
}

fn compare_leaf(
    old: Option<&Value>,
    new: Option<&Value>,
    path: &[PathElement],
    out: &mut Comparison,
) {
    match (old, new) {
        (None, Some(_)) => out.added.insert(path),
        (Some(_), None) => out.removed.insert(path),
        (Some(a), Some(b)) if !json_equal(a, b) => out.modified.insert(path),
        _ => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::schema::BuiltinSchema;
    use super::*;
    use serde_json::json;

    fn printed(set: &FieldSet) -> Vec<String> {
        set.paths().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn field_set_owns_leaves_items_and_map_entries() {
        let schema = BuiltinSchema::for_kind("Deployment");
        let walker = Walker { schema: &schema };
        let config = json!({
            "metadata": {"name": "web", "labels": {"app": "web"}, "finalizers": ["a"]},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {},
                "template": {"spec": {"containers": [
                    {"name": "web", "image": "nginx", "args": ["-g"], "ports": [{"containerPort": 80}]}
                ]}}
            }
        });
        let set = walker.field_set(&config).unwrap();
        assert_eq!(
            printed(&set),
            [
                ".metadata.name",
                r#".metadata.finalizers[="a"]"#,
                ".metadata.labels.app",
                ".spec.selector",
                ".spec.strategy",
                r#".spec.template.spec.containers[name="web"]"#,
                r#".spec.template.spec.containers[name="web"].args"#,
                r#".spec.template.spec.containers[name="web"].image"#,
                r#".spec.template.spec.containers[name="web"].name"#,
                r#".spec.template.spec.containers[name="web"].ports[containerPort=80,protocol="TCP"]"#,
                r#".spec.template.spec.containers[name="web"].ports[containerPort=80,protocol="TCP"].containerPort"#,
            ]
        );
    }

    #[test]
    fn field_set_rejects_unkeyable_and_duplicate_items() {
        let schema = BuiltinSchema::for_kind("Pod");
        let walker = Walker { schema: &schema };
        let missing = json!({"spec": {"containers": [{"image": "nginx"}]}});
        let err = walker.field_set(&missing).unwrap_err();
        assert_eq!(
            err,
            ".spec.containers: element 0: associative list with keys has an element that \
             omits key field \"name\" (and doesn't have default value)"
        );
        let duplicate = json!({"spec": {"containers": [{"name": "a"}, {"name": "a"}]}});
        let err = walker.field_set(&duplicate).unwrap_err();
        assert_eq!(
            err,
            r#".spec.containers: duplicate entries for key [name="a"]"#
        );
    }

    #[test]
    fn compare_marks_new_maps_and_items_but_not_value_structs() {
        let schema = BuiltinSchema::for_kind("Deployment");
        let walker = Walker { schema: &schema };
        let new = json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "web"}]}}}
        });
        let c = walker.compare(None, Some(&new));
        assert_eq!(
            printed(&c.added),
            [
                ".metadata.labels",
                ".metadata.labels.app",
                ".spec.replicas",
                r#".spec.template.spec.containers[name="web"]"#,
                r#".spec.template.spec.containers[name="web"].name"#,
            ]
        );
        assert!(c.modified.is_empty() && c.removed.is_empty());
    }

    #[test]
    fn compare_reports_modified_and_removed() {
        let schema = BuiltinSchema::for_kind("Deployment");
        let walker = Walker { schema: &schema };
        let old = json!({"spec": {"replicas": 1, "paused": true,
            "template": {"spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b"}]}}}});
        let new = json!({"spec": {"replicas": 2.0,
            "template": {"spec": {"containers": [{"name": "a", "image": "y"}]}}}});
        let c = walker.compare(Some(&old), Some(&new));
        assert_eq!(
            printed(&c.modified),
            [
                ".spec.replicas",
                r#".spec.template.spec.containers[name="a"].image"#
            ]
        );
        assert_eq!(
            printed(&c.removed),
            [
                ".spec.paused",
                r#".spec.template.spec.containers[name="b"]"#,
                r#".spec.template.spec.containers[name="b"].name"#
            ]
        );
        let same = walker.compare(Some(&json!({"a": 1})), Some(&json!({"a": 1.0})));
        assert!(same.changed().is_empty());
    }

    #[test]
    fn managed_fields_are_left_out_of_comparisons() {
        let schema = BuiltinSchema::for_kind("Deployment");
        let walker = Walker { schema: &schema };
        let entries = json!([{"manager": "m", "operation": "Update", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {"f:replicas": {}}}}]);
        let old =
            json!({"metadata": {"name": "d", "managedFields": entries}, "spec": {"replicas": 1}});
        let new = json!({"metadata": {"name": "d"}, "spec": {"replicas": 1}});
        assert!(walker.compare(Some(&old), Some(&new)).changed().is_empty());
        assert!(walker.compare(Some(&old), Some(&new)).removed.is_empty());
        assert!(equal_without_managed_fields(&old, &new));
        assert!(equal_without_managed_fields(&new, &old));
        let changed = json!({"metadata": {"name": "d"}, "spec": {"replicas": 2.0}});
        assert!(!equal_without_managed_fields(&old, &changed));
        let renamed =
            json!({"metadata": {"name": "e", "managedFields": []}, "spec": {"replicas": 1}});
        assert!(!equal_without_managed_fields(&old, &renamed));
        // Elsewhere a `managedFields` key is an ordinary field.
        let odd = json!({"metadata": {"name": "d"}, "spec": {"replicas": 1, "managedFields": 1}});
        assert!(!equal_without_managed_fields(&new, &odd));
        assert_eq!(
            printed(&walker.compare(Some(&new), Some(&odd)).added),
            [".spec.managedFields"]
        );
    }
}
