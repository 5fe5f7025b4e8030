//! Field paths, sets of them, and `FieldsV1`, the JSON encoding `metadata.managedFields`
//! stores a set in (`f:` fields, `k:` associative-list items, `v:` set-list items, `"."` for a
//! node that is itself a member and also has members below it).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value};

/// One step of a [`Path`]. The derived order (fields, then keyed items, then set values, each
/// by its text) is the order Kubernetes lists paths and `FieldsV1` entries in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathElement {
    /// A field of an object: a struct field or a map key.
    Field(String),
    /// An item of an associative list, named by its key fields: the compact JSON object of
    /// them, names sorted, e.g. `{"containerPort":80,"protocol":"TCP"}`.
    Key(String),
    /// An item of a set list, named by its own value as compact JSON.
    Value(String),
}

impl PathElement {
    pub fn field(name: impl Into<String>) -> Self {
        PathElement::Field(name.into())
    }

    /// `fields` are the item's key fields; serde_json's map keeps them sorted by name, which is
    /// the order Kubernetes writes them in.
    pub fn key(fields: Map<String, Value>) -> Self {
        PathElement::Key(Value::Object(fields).to_string())
    }

    pub fn value(value: &Value) -> Self {
        PathElement::Value(value.to_string())
    }

    fn fields_v1_name(&self) -> String {
        match self {
            PathElement::Field(name) => format!("f:{name}"),
            PathElement::Key(key) => format!("k:{key}"),
            PathElement::Value(value) => format!("v:{value}"),
        }
    }

    fn parse_fields_v1_name(name: &str) -> Result<Self, String> {
        if let Some(field) = name.strip_prefix("f:") {
            return Ok(PathElement::field(field));
        }
        if let Some(key) = name.strip_prefix("k:") {
            // Re-encoded so that differently spaced or ordered keys name the same item.
            return match serde_json::from_str::<Value>(key) {
                Ok(Value::Object(fields)) => Ok(PathElement::key(fields)),
                _ => Err(format!("invalid key path element {name:?}")),
            };
        }
        if let Some(value) = name.strip_prefix("v:") {
            return serde_json::from_str::<Value>(value)
                .map(|v| PathElement::value(&v))
                .map_err(|_| format!("invalid value path element {name:?}"));
        }
        Err(format!("unsupported path element {name:?}"))
    }
}

/// Paths print as Kubernetes prints them in conflicts: `.spec.containers[name="nginx"].image`,
/// `.metadata.finalizers[="foo"]`.
impl fmt::Display for PathElement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathElement::Field(name) => write!(f, ".{name}"),
            PathElement::Key(key) => {
                let fields: Map<String, Value> = serde_json::from_str(key).unwrap_or_default();
                let parts: Vec<String> = fields.iter().map(|(n, v)| format!("{n}={v}")).collect();
                write!(f, "[{}]", parts.join(","))
            }
            PathElement::Value(value) => write!(f, "[={value}]"),
        }
    }
}

/// A path from the object's root to a field or list item.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Path(pub Vec<PathElement>);

impl Path {
    /// A path made only of field names, e.g. `Path::fields(&["spec", "replicas"])`.
    pub fn fields(names: &[&str]) -> Path {
        Path(names.iter().map(|n| PathElement::field(*n)).collect())
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|element| write!(f, "{element}"))
    }
}

/// A set of paths, stored as a tree: `members` are the paths ending at this node, `children`
/// hold the longer ones. A child set is never empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet {
    members: BTreeSet<PathElement>,
    children: BTreeMap<PathElement, FieldSet>,
}

impl FieldSet {
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.children.is_empty()
    }

    pub fn insert(&mut self, path: &[PathElement]) {
        match path {
            [] => {}
            [last] => {
                self.members.insert(last.clone());
            }
            [first, rest @ ..] => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }

    pub fn contains(&self, path: &[PathElement]) -> bool {
        match path {
            [] => false,
            [last] => self.members.contains(last),
            [first, rest @ ..] => self.children.get(first).is_some_and(|c| c.contains(rest)),
        }
    }

    /// Whether the one-element path `element` is in the set.
    pub(crate) fn has_member(&self, element: &PathElement) -> bool {
        self.members.contains(element)
    }

    /// The paths below `element`, relative to it.
    pub(crate) fn child(&self, element: &PathElement) -> Option<&FieldSet> {
        self.children.get(element)
    }

    pub fn union_with(&mut self, other: &FieldSet) {
        self.members.extend(other.members.iter().cloned());
        for (element, theirs) in &other.children {
            self.children
                .entry(element.clone())
                .or_default()
                .union_with(theirs);
        }
    }

    /// The paths of `self` that are not in `other` (exact paths: a member of `other` does not
    /// remove the paths below it).
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let members = self.members.difference(&other.members).cloned().collect();
        let children = self
            .children
            .iter()
            .filter_map(|(element, mine)| {
                let rest = match other.children.get(element) {
                    Some(theirs) => mine.difference(theirs),
                    None => mine.clone(),
                };
                (!rest.is_empty()).then(|| (element.clone(), rest))
            })
            .collect();
        FieldSet { members, children }
    }

    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let members = self.members.intersection(&other.members).cloned().collect();
        let children = self
            .children
            .iter()
            .filter_map(|(element, mine)| {
                let both = mine.intersection(other.children.get(element)?);
                (!both.is_empty()).then(|| (element.clone(), both))
            })
            .collect();
        FieldSet { members, children }
    }

    /// Removes `prefix` and every path below it.
    pub fn remove_subtree(&mut self, prefix: &[PathElement]) {
        match prefix {
            [] => {}
            [last] => {
                self.members.remove(last);
                self.children.remove(last);
            }
            [first, rest @ ..] => {
                if let Some(child) = self.children.get_mut(first) {
                    child.remove_subtree(rest);
                    if child.is_empty() {
                        self.children.remove(first);
                    }
                }
            }
        }
    }

    /// Every path, in Kubernetes' order: at each node its members first, then the paths below
    /// each child.
    pub fn paths(&self) -> Vec<Path> {
        let mut out = Vec::new();
        self.collect_paths(&mut Vec::new(), &mut out);
        out
    }

    fn collect_paths(&self, prefix: &mut Vec<PathElement>, out: &mut Vec<Path>) {
        for member in &self.members {
            prefix.push(member.clone());
            out.push(Path(prefix.clone()));
            prefix.pop();
        }
        for (element, child) in &self.children {
            prefix.push(element.clone());
            child.collect_paths(prefix, out);
            prefix.pop();
        }
    }

    /// The `fieldsV1` object. serde_json sorts object keys, which puts `"."` first and the
    /// `f:`, `k:` and `v:` names in the order Kubernetes writes them.
    pub fn to_fields_v1(&self) -> Value {
        Value::Object(self.encode())
    }

    fn encode(&self) -> Map<String, Value> {
        let mut out = Map::new();
        for member in &self.members {
            if !self.children.contains_key(member) {
                out.insert(member.fields_v1_name(), Value::Object(Map::new()));
            }
        }
        for (element, child) in &self.children {
            let mut inner = child.encode();
            if self.members.contains(element) {
                inner.insert(".".into(), Value::Object(Map::new()));
            }
            out.insert(element.fields_v1_name(), Value::Object(inner));
        }
        out
    }

    pub fn from_fields_v1(fields: &Value) -> Result<FieldSet, String> {
        let map = fields.as_object().ok_or("fieldsV1 must be a JSON object")?;
        let mut set = FieldSet::default();
        set.decode(map)?;
        Ok(set)
    }

    fn decode(&mut self, map: &Map<String, Value>) -> Result<(), String> {
        for (name, inner) in map {
            if name == "." {
                continue;
            }
            let element = PathElement::parse_fields_v1_name(name)?;
            let inner = inner
                .as_object()
                .ok_or_else(|| format!("fieldsV1 entry {name:?} must be an object"))?;
            let mut child = FieldSet::default();
            child.decode(inner)?;
            if child.is_empty() || inner.contains_key(".") {
                self.members.insert(element.clone());
            }
            if !child.is_empty() {
                match self.children.get_mut(&element) {
                    Some(existing) => existing.union_with(&child),
                    None => {
                        self.children.insert(element, child);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(name: &str) -> PathElement {
        PathElement::field(name)
    }

    fn named(name: &str) -> PathElement {
        let mut key = Map::new();
        key.insert("name".into(), json!(name));
        PathElement::key(key)
    }

    #[test]
    fn encodes_members_with_children_as_dot() {
        let mut set = FieldSet::default();
        set.insert(&[f("spec"), f("containers"), named("nginx")]);
        set.insert(&[f("spec"), f("containers"), named("nginx"), f("image")]);
        set.insert(&[f("spec"), f("replicas")]);
        assert_eq!(
            set.to_fields_v1().to_string(),
            r#"{"f:spec":{"f:containers":{"k:{\"name\":\"nginx\"}":{".":{},"f:image":{}}},"f:replicas":{}}}"#
        );
    }

    #[test]
    fn fields_v1_round_trips() {
        let text = json!({
            "f:metadata": {"f:finalizers": {".": {}, "v:\"a\"": {}}},
            "f:spec": {"f:ports": {"k:{\"port\":80, \"protocol\":\"TCP\"}": {".": {}, "f:port": {}}}}
        });
        let set = FieldSet::from_fields_v1(&text).unwrap();
        assert!(set.contains(&[f("metadata"), f("finalizers")]));
        assert!(set.contains(&[
            f("metadata"),
            f("finalizers"),
            PathElement::value(&json!("a"))
        ]));
        let encoded = set.to_fields_v1().to_string();
        // The key is re-encoded compactly.
        assert!(encoded.contains(r#""k:{\"port\":80,\"protocol\":\"TCP\"}":{".":{},"f:port":{}}"#));
        assert_eq!(FieldSet::from_fields_v1(&set.to_fields_v1()).unwrap(), set);
    }

    #[test]
    fn rejects_malformed_fields_v1() {
        assert!(FieldSet::from_fields_v1(&json!([])).is_err());
        assert!(FieldSet::from_fields_v1(&json!({"x:spec": {}})).is_err());
        assert!(FieldSet::from_fields_v1(&json!({"f:spec": 1})).is_err());
        assert!(FieldSet::from_fields_v1(&json!({"k:[1]": {}})).is_err());
    }

    #[test]
    fn prints_paths_as_kubernetes_does() {
        let mut port = Map::new();
        port.insert("containerPort".into(), json!(80));
        port.insert("protocol".into(), json!("TCP"));
        let path = Path(vec![
            f("spec"),
            f("ports"),
            PathElement::key(port),
            f("name"),
        ]);
        assert_eq!(
            path.to_string(),
            r#".spec.ports[containerPort=80,protocol="TCP"].name"#
        );
        let set_item = Path(vec![
            f("metadata"),
            f("finalizers"),
            PathElement::value(&json!("x")),
        ]);
        assert_eq!(set_item.to_string(), r#".metadata.finalizers[="x"]"#);
    }

    #[test]
    fn set_algebra_is_exact_and_prunes_empty_children() {
        let mut a = FieldSet::default();
        a.insert(&[f("spec"), f("replicas")]);
        a.insert(&[f("spec"), f("paused")]);
        let mut b = FieldSet::default();
        b.insert(&[f("spec"), f("replicas")]);
        b.insert(&[f("spec")]);

        let diff = a.difference(&b);
        assert_eq!(diff.paths(), vec![Path::fields(&["spec", "paused"])]);
        assert_eq!(
            a.intersection(&b).paths(),
            vec![Path::fields(&["spec", "replicas"])]
        );
        assert!(a.difference(&a).is_empty());

        let mut c = a.clone();
        c.remove_subtree(&[f("spec")]);
        assert!(c.is_empty());
    }

    #[test]
    fn lists_members_before_deeper_paths() {
        let mut set = FieldSet::default();
        set.insert(&[f("spec"), f("template"), f("x")]);
        set.insert(&[f("spec"), f("replicas")]);
        let printed: Vec<String> = set.paths().iter().map(ToString::to_string).collect();
        assert_eq!(printed, vec![".spec.replicas", ".spec.template.x"]);
    }
}
