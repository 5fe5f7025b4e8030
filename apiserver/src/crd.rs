//! CustomResourceDefinitions as served resources. The registry holds what the stored CRDs
//! define — one served resource per served version, with its schema — and is reloaded from the
//! store whenever a CRD changes (right after a write through this server, and from a store
//! watch, which also covers writes through other servers). A CRD this server serves is marked
//! `NamesAccepted` and `Established` in its status, as Kubernetes does.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use serde_json::{json, Value};
use shoal_common::catalog::{self, ResourceDef};
use shoal_store::{RangeRequest, Store, StoreError};

/// The store prefix CRDs live under.
pub const CRD_PREFIX: &str = "/registry/apiextensions.k8s.io/customresourcedefinitions/";

/// Strings of served CRDs live as long as the process, as the built-in catalogue's do; interning
/// bounds that memory by the number of distinct names ever served.
fn intern(text: &str) -> &'static str {
    static STRINGS: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut set = STRINGS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(existing) = set.get(text) {
        return existing;
    }
    let leaked: &'static str = Box::leak(text.to_string().into_boxed_str());
    set.insert(leaked);
    leaked
}

fn intern_list(items: &[String]) -> &'static [&'static str] {
    static LISTS: OnceLock<Mutex<Vec<&'static [&'static str]>>> = OnceLock::new();
    let interned: Vec<&'static str> = items.iter().map(|s| intern(s)).collect();
    let mut lists = LISTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(existing) = lists.iter().find(|l| **l == interned.as_slice()) {
        return existing;
    }
    let leaked: &'static [&'static str] = Box::leak(interned.into_boxed_slice());
    lists.push(leaked);
    leaked
}

fn intern_def(def: ResourceDef) -> &'static ResourceDef {
    static DEFS: OnceLock<Mutex<Vec<&'static ResourceDef>>> = OnceLock::new();
    let mut defs = DEFS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(existing) = defs.iter().find(|d| ***d == def) {
        return existing;
    }
    let leaked: &'static ResourceDef = Box::leak(Box::new(def));
    defs.push(leaked);
    leaked
}

/// One served version of a CRD.
#[derive(Debug, Clone)]
pub struct Served {
    pub def: &'static ResourceDef,
    pub schema: Option<Arc<Value>>,
    /// `additionalPrinterColumns` of this version.
    pub columns: Arc<Vec<crate::table::PrinterColumn>>,
}

/// The strings of a JSON array (other elements skipped; not an array: none).
pub(crate) fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// What a CRD object serves, or why it cannot be served.
pub fn served_versions(crd: &Value) -> Result<Vec<Served>, String> {
    let spec = crd.get("spec").ok_or("no spec")?;
    let text = |pointer: &str| {
        spec.pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (group, kind, plural) = (text("/group"), text("/names/kind"), text("/names/plural"));
    if group.is_empty() || kind.is_empty() || plural.is_empty() {
        return Err("spec.group, spec.names.kind and spec.names.plural are required".into());
    }
    if !group.contains('.') {
        return Err(format!(
            "spec.group {group:?} must be a DNS subdomain with at least one dot"
        ));
    }
    if catalog::groups().iter().any(|(g, _)| *g == group) {
        return Err(format!("group {group:?} belongs to a built-in API"));
    }
    let expected_name = format!("{plural}.{group}");
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if name != expected_name {
        return Err(format!("metadata.name must be {expected_name:?}"));
    }
    let singular = match text("/names/singular") {
        s if s.is_empty() => kind.to_lowercase(),
        s => s,
    };
    let namespaced = match text("/scope").as_str() {
        "Namespaced" => true,
        "Cluster" => false,
        other => {
            return Err(format!(
                "spec.scope {other:?} must be Namespaced or Cluster"
            ))
        }
    };
    let short_names = intern_list(&strings(spec.pointer("/names/shortNames")));
    let categories = intern_list(&strings(spec.pointer("/names/categories")));
    // Every served version is stored at the storage version (conversion strategy None: only
    // apiVersion differs between versions).
    let storage_version = spec
        .get("versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .and_then(|v| v.get("name"))
        .and_then(Value::as_str);
    let mut served = Vec::new();
    for version in spec
        .get("versions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if version.get("served").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let name = version
            .get("name")
            .and_then(Value::as_str)
            .ok_or("a version has no name")?;
        let subresources = version.get("subresources");
        let scale = subresources.and_then(|s| s.get("scale")).is_some_and(|s| {
            s.get("specReplicasPath").and_then(Value::as_str) == Some(".spec.replicas")
        });
        let def = ResourceDef {
            group: intern(&group),
            version: intern(name),
            kind: intern(&kind),
            plural: intern(&plural),
            singular: intern(&singular),
            namespaced,
            short_names,
            categories,
            status: subresources.and_then(|s| s.get("status")).is_some(),
            scale,
            storage: (intern(&group), intern(storage_version.unwrap_or(name))),
        };
        let schema = version
            .pointer("/schema/openAPIV3Schema")
            .cloned()
            .map(Arc::new);
        let columns = version
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(crate::table::PrinterColumn::from_crd)
                    .collect()
            })
            .unwrap_or_default();
        served.push(Served {
            def: intern_def(def),
            schema,
            columns: Arc::new(columns),
        });
    }
    Ok(served)
}

impl Served {
    /// Whether two registries serve the same resources with the same schemas and columns.
    fn same(a: &[Served], b: &[Served]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(a, b)| {
                std::ptr::eq(a.def, b.def) && a.schema == b.schema && a.columns == b.columns
            })
    }
}

/// The served custom resources, shared by every request.
#[derive(Debug, Default)]
pub struct CrdRegistry {
    served: RwLock<ServedSet>,
}

#[derive(Debug, Default)]
struct ServedSet {
    /// Bumped whenever `versions` changes, so what is derived from it (the OpenAPI v2
    /// document) can be cached until then.
    generation: u64,
    versions: Vec<Served>,
}

impl CrdRegistry {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, ServedSet> {
        self.served.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Served> {
        self.read()
            .versions
            .iter()
            .find(|s| s.def.group == group && s.def.version == version && s.def.plural == plural)
            .cloned()
    }

    /// Every served custom resource version, with its schema.
    pub fn served(&self) -> Vec<Served> {
        self.read().versions.clone()
    }

    /// Changes whenever the served resources or their schemas change.
    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    /// Every served custom resource.
    pub fn all(&self) -> Vec<&'static ResourceDef> {
        self.read().versions.iter().map(|s| s.def).collect()
    }

    /// Rebuilds the registry from the stored CRDs, and marks newly served ones established.
    pub async fn reload(&self, store: &dyn Store) -> Result<(), StoreError> {
        let crds = store.range(RangeRequest::prefix(CRD_PREFIX)).await?;
        let mut served = Vec::new();
        for kv in &crds.kvs {
            let Ok(mut crd) = serde_json::from_slice::<Value>(&kv.value) else {
                continue;
            };
            if crd
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|t| !t.is_null())
            {
                continue;
            }
            match served_versions(&crd) {
                Ok(versions) => {
                    served.extend(versions);
                    if !is_established(&crd) {
                        let names = crd
                            .pointer("/spec/names")
                            .cloned()
                            .unwrap_or_else(|| json!({}));
                        let now = crate::objects::rfc3339(
                            time::OffsetDateTime::now_utc().unix_timestamp(),
                        );
                        crd["status"] = json!({
                            "acceptedNames": names,
                            "storedVersions": crd.pointer("/spec/versions").and_then(Value::as_array)
                                .map(|v| v.iter().filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                                    .filter_map(|v| v.get("name").cloned()).collect::<Vec<_>>()).unwrap_or_default(),
                            "conditions": [
                                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
                            ],
                        });
                        let bytes =
                            serde_json::to_vec(&crd).map_err(|e| StoreError::Io(e.to_string()))?;
                        match store.update(&kv.key, bytes, kv.mod_revision).await {
                            Ok(_)
                            | Err(StoreError::Conflict { .. })
                            | Err(StoreError::NotFound { .. }) => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(reason) => {
                    tracing::warn!(crd = %kv.key, %reason, "not serving CustomResourceDefinition")
                }
            }
        }
        let mut set = self.served.write().unwrap_or_else(|e| e.into_inner());
        if !Served::same(&set.versions, &served) {
            set.versions = served;
            set.generation += 1;
        }
        Ok(())
    }

    /// Keeps the registry in step with the stored CRDs until the store goes away.
    pub async fn follow(self: Arc<Self>, store: Arc<dyn Store>) {
        loop {
            if let Err(err) = self.reload(store.as_ref()).await {
                tracing::warn!(%err, "reloading CustomResourceDefinitions failed");
            }
            let start = match store.current_revision().await {
                Ok(r) => r,
                Err(_) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let Ok(mut events) = store.watch(CRD_PREFIX, Some(start)).await else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            // Any change (including this registry's own status writes) triggers a reload;
            // reloads are idempotent and an established CRD is not written again.
            while let Some(Ok(_)) = events.next().await {
                if let Err(err) = self.reload(store.as_ref()).await {
                    tracing::warn!(%err, "reloading CustomResourceDefinitions failed");
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn is_established(crd: &Value) -> bool {
    crd.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({"metadata": {"name": "widgets.example.com"}, "spec": {
            "group": "example.com", "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets", "shortNames": ["wg"], "categories": ["all"]},
            "versions": [
                {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                 "schema": {"openAPIV3Schema": {"type": "object"}}},
                {"name": "v1beta1", "served": false, "storage": false}]}})
    }

    #[test]
    fn a_crd_serves_its_served_versions() {
        let served = served_versions(&crd()).expect("valid");
        assert_eq!(served.len(), 1);
        let def = served[0].def;
        assert_eq!(
            (def.group, def.version, def.kind, def.plural, def.singular),
            ("example.com", "v1", "Widget", "widgets", "widget")
        );
        assert!(def.namespaced && def.status && def.scale);
        assert_eq!(
            (def.short_names, def.categories),
            (&["wg"][..], &["all"][..])
        );
        assert!(served[0].schema.is_some());
        // Interning gives the same definition back for the same CRD.
        assert!(std::ptr::eq(
            def,
            served_versions(&crd()).expect("valid")[0].def
        ));
    }

    #[test]
    fn bad_crds_are_not_served() {
        let mut wrong_name = crd();
        wrong_name["metadata"]["name"] = json!("other.example.com");
        assert!(served_versions(&wrong_name).is_err());
        let mut builtin = crd();
        builtin["spec"]["group"] = json!("apps");
        builtin["metadata"]["name"] = json!("widgets.apps");
        assert!(served_versions(&builtin).is_err());
        let mut scope = crd();
        scope["spec"]["scope"] = json!("Galaxy");
        assert!(served_versions(&scope).is_err());
    }
}
