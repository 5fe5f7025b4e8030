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

/// The aggregated-discovery media type a client accepts, if any (`v2` preferred to `v2beta1`).
pub fn aggregated_version(accept: &str) -> Option<&'static str> {
    let offers: Vec<&str> = accept.split(',').map(str::trim).collect();
    let offered = |version: &str| {
        offers.iter().any(|o| {
            let params: Vec<&str> = o.split(';').map(str::trim).collect();
            params.contains(&"g=apidiscovery.k8s.io")
                && params.contains(&format!("v={version}").as_str())
                && params.contains(&"as=APIGroupDiscoveryList")
        })
    };
    ["v2", "v2beta1"].into_iter().find(|v| offered(v))
}

/// The response content type for aggregated discovery `version`.
pub fn aggregated_content_type(version: &str) -> String {
    format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList")
}

fn aggregated_resource(def: &ResourceDef) -> Value {
    let kind = json!({"group": def.group, "version": def.version, "kind": def.kind});
    let mut resource = json!({
        "resource": def.plural,
        "responseKind": kind,
        "scope": if def.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": def.singular,
        "verbs": VERBS,
    });
    if !def.short_names.is_empty() {
        resource["shortNames"] = json!(def.short_names);
    }
    if !def.categories.is_empty() {
        resource["categories"] = json!(def.categories);
    }
    let mut subresources = Vec::new();
    if def.status {
        subresources.push(json!({"subresource": "status", "responseKind": kind, "verbs": ["get", "patch", "update"]}));
    }
    if def.scale {
        subresources.push(json!({"subresource": "scale",
            "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"}, "verbs": ["get", "patch", "update"]}));
    }
    if !subresources.is_empty() {
        resource["subresources"] = json!(subresources);
    }
    resource
}

/// Aggregated discovery: every group-version with its resources in one document, for the core
/// group (`core = true`, what `/api` answers) or for the named groups (`/apis`).
pub fn aggregated(core: bool, version: &str, custom: &[&'static ResourceDef]) -> Value {
    let mut groups: Vec<&str> = Vec::new();
    for def in catalog::BUILTIN.iter().chain(custom.iter().copied()) {
        if def.group.is_empty() == core && !groups.contains(&def.group) {
            groups.push(def.group);
        }
    }
    let items: Vec<Value> = groups
        .into_iter()
        .map(|group| {
            let mut versions: Vec<&str> = Vec::new();
            for def in catalog::BUILTIN
                .iter()
                .chain(custom.iter().copied())
                .filter(|d| d.group == group)
            {
                if !versions.contains(&def.version) {
                    versions.push(def.version);
                }
            }
            let versions: Vec<Value> = versions
                .into_iter()
                .map(|v| {
                    let resources: Vec<Value> = catalog::BUILTIN
                        .iter()
                        .chain(custom.iter().copied())
                        .filter(|d| d.group == group && d.version == v)
                        .map(aggregated_resource)
                        .collect();
                    json!({"version": v, "resources": resources, "freshness": "Current"})
                })
                .collect();
            let mut metadata = json!({"creationTimestamp": null});
            if !group.is_empty() {
                metadata["name"] = json!(group);
            }
            json!({"metadata": metadata, "versions": versions})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{version}"), "metadata": {}, "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_discovery_is_negotiated_and_complete() {
        let kubectl = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";
        assert_eq!(aggregated_version(kubectl), Some("v2"));
        assert_eq!(
            aggregated_version(
                "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
            ),
            Some("v2beta1")
        );
        assert_eq!(aggregated_version("application/json"), None);

        let core = aggregated(true, "v2", &[]);
        assert_eq!(core["items"].as_array().map(Vec::len), Some(1));
        let pods = core["items"][0]["versions"][0]["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .find(|r| r["resource"] == "pods")
            .expect("pods")
            .clone();
        assert_eq!(
            (
                pods["scope"].as_str(),
                pods["responseKind"]["kind"].as_str()
            ),
            (Some("Namespaced"), Some("Pod"))
        );
        assert_eq!(pods["subresources"][0]["subresource"], "status");
        let groups = aggregated(false, "v2", &[]);
        let names: Vec<&str> = groups["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|g| g["metadata"]["name"].as_str())
            .collect();
        assert!(
            names.contains(&"apps")
                && names.contains(&"apiextensions.k8s.io")
                && !names.contains(&"")
        );
        let deployments = groups["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|g| g["metadata"]["name"] == "apps")
            .and_then(|g| g["versions"][0]["resources"].as_array())
            .expect("apps resources")
            .iter()
            .find(|r| r["resource"] == "deployments")
            .expect("deployments")
            .clone();
        assert_eq!(
            deployments["subresources"][1]["responseKind"]["kind"],
            "Scale"
        );
    }
}
