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

/// Kubernetes' version priority (`version.CompareKubeAwareVersionStrings`): GA before beta
/// before alpha, higher numbers first, then versions of another form in lexical order. A
/// group's versions are listed in this order and the first is its preferred version.
fn version_rank(version: &str) -> (u8, std::cmp::Reverse<u64>, std::cmp::Reverse<u64>, &str) {
    let parse = |v: &str| -> Option<(u8, u64, u64)> {
        let rest = v.strip_prefix('v')?;
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let major: u64 = rest[..digits].parse().ok()?;
        let (stage, minor) = match &rest[digits..] {
            "" => (0, 0),
            tail => {
                let (stage, number) = if let Some(n) = tail.strip_prefix("beta") {
                    (1, n)
                } else {
                    (2, tail.strip_prefix("alpha")?)
                };
                (stage, number.parse().ok()?)
            }
        };
        Some((stage, major, minor))
    };
    match parse(version) {
        Some((stage, major, minor)) => (
            stage,
            std::cmp::Reverse(major),
            std::cmp::Reverse(minor),
            "",
        ),
        None => (3, std::cmp::Reverse(0), std::cmp::Reverse(0), version),
    }
}

/// Each served group (in catalogue order, custom groups after) with its versions, preferred
/// first.
fn group_versions(
    core: bool,
    custom: &[&'static ResourceDef],
) -> Vec<(&'static str, Vec<&'static str>)> {
    let mut groups: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for def in catalog::BUILTIN.iter().chain(custom.iter().copied()) {
        if def.group.is_empty() != core {
            continue;
        }
        match groups.iter_mut().find(|(g, _)| *g == def.group) {
            Some((_, versions)) if !versions.contains(&def.version) => versions.push(def.version),
            Some(_) => {}
            None => groups.push((def.group, vec![def.version])),
        }
    }
    for (_, versions) in &mut groups {
        versions.sort_by_key(|v| version_rank(v));
    }
    groups
}

/// `/apis`, with the groups of the served custom resources after the built-in ones.
pub fn api_groups(custom: &[&'static ResourceDef]) -> Value {
    let groups: Vec<Value> = group_versions(false, custom)
        .into_iter()
        .map(|(group, versions)| {
            let versions: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                .collect();
            json!({"name": group, "preferredVersion": versions[0].clone(), "versions": versions})
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
        if def.kind == "ServiceAccount" && def.group.is_empty() {
            resources.push(json!({
                "name": "serviceaccounts/token", "singularName": "", "namespaced": true,
                "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"],
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
    if def.kind == "ServiceAccount" && def.group.is_empty() {
        subresources.push(json!({"subresource": "token",
            "responseKind": {"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"}, "verbs": ["create"]}));
    }
    if !subresources.is_empty() {
        resource["subresources"] = json!(subresources);
    }
    resource
}

/// Aggregated discovery: every group-version with its resources in one document, for the core
/// group (`core = true`, what `/api` answers) or for the named groups (`/apis`).
pub fn aggregated(core: bool, version: &str, custom: &[&'static ResourceDef]) -> Value {
    let items: Vec<Value> = group_versions(core, custom)
        .into_iter()
        .map(|(group, versions)| {
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
    fn a_group_lists_all_its_versions_preferred_first() {
        let mut versions = vec![
            "v1alpha1", "foo", "v2beta1", "v1", "v1beta2", "v2", "v1beta1",
        ];
        versions.sort_by_key(|v| version_rank(v));
        assert_eq!(
            versions,
            ["v2", "v1", "v2beta1", "v1beta2", "v1beta1", "v1alpha1", "foo"]
        );
        let widget = |version: &'static str| ResourceDef {
            group: "example.com",
            version,
            kind: "Widget",
            plural: "widgets",
            singular: "widget",
            storage: ("example.com", "v1"),
            ..*catalog::find("", "v1", "configmaps").expect("configmaps")
        };
        let (beta, ga) = (widget("v1beta1"), widget("v1"));
        let custom: Vec<&'static ResourceDef> =
            vec![Box::leak(Box::new(beta)), Box::leak(Box::new(ga))];
        let groups = api_groups(&custom);
        let example: Vec<&Value> = groups["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .filter(|g| g["name"] == "example.com")
            .collect();
        assert_eq!(example.len(), 1, "one entry per group: {example:?}");
        assert_eq!(example[0]["preferredVersion"]["version"], "v1");
        assert_eq!(
            example[0]["versions"][1]["groupVersion"],
            "example.com/v1beta1"
        );
        let aggregated = aggregated(false, "v2", &custom);
        let example = aggregated["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|g| g["metadata"]["name"] == "example.com")
            .expect("example.com");
        let versions: Vec<&str> = example["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .filter_map(|v| v["version"].as_str())
            .collect();
        assert_eq!(versions, ["v1", "v1beta1"]);
    }

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
        let accounts = core["items"][0]["versions"][0]["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .find(|r| r["resource"] == "serviceaccounts")
            .expect("serviceaccounts")
            .clone();
        assert_eq!(accounts["subresources"][0]["subresource"], "token");
        assert_eq!(
            accounts["subresources"][0]["responseKind"]["kind"],
            "TokenRequest"
        );
        let legacy = resource_list("", "v1", &[]).expect("v1");
        assert!(legacy["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .any(|r| r["name"] == "serviceaccounts/token" && r["verbs"] == json!(["create"])));
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
