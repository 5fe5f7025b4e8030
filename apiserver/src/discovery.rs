//! Legacy discovery documents: `/api`, `/apis`, and one `APIResourceList` per group-version,
//! built from the resource catalogue. (Clients that ask for aggregated discovery get these when
//! the response's content type says plain JSON, as the REFERENCE notes.)

use serde_json::{json, Value};
use shoal_common::catalog::{self, ResourceDef};

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// `/api`.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// `/apis`, with the groups of the served custom resources after the built-in ones.
pub fn api_groups(custom: &[&'static ResourceDef]) -> Value {
    let mut group_versions = catalog::groups();
    for def in custom {
        if !group_versions.contains(&(def.group, def.version)) {
            group_versions.push((def.group, def.version));
        }
    }
    let groups: Vec<Value> = group_versions
        .into_iter()
        .map(|(group, version)| {
            let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
            json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn entry(def: &ResourceDef) -> Value {
    let mut e = json!({
        "name": def.plural,
        "singularName": def.singular,
        "namespaced": def.namespaced,
        "kind": def.kind,
        "verbs": VERBS,
    });
    if !def.short_names.is_empty() {
        e["shortNames"] = json!(def.short_names);
    }
    if !def.categories.is_empty() {
        e["categories"] = json!(def.categories);
    }
    e
}

/// `/api/v1` or `/apis/<group>/<version>`, or `None` if nothing is served there.
pub fn resource_list(group: &str, version: &str, custom: &[&'static ResourceDef]) -> Option<Value> {
    let defs: Vec<&ResourceDef> = catalog::BUILTIN
        .iter()
        .chain(custom.iter().copied())
        .filter(|d| d.group == group && d.version == version)
        .collect();
    if defs.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for def in defs {
        resources.push(entry(def));
        if def.status {
            resources.push(json!({
                "name": format!("{}/status", def.plural), "singularName": "", "namespaced": def.namespaced,
                "kind": def.kind, "verbs": ["get", "patch", "update"],
            }));
        }
        if def.scale {
            resources.push(json!({
                "name": format!("{}/scale", def.plural), "singularName": "", "namespaced": def.namespaced,
                "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    )
}
