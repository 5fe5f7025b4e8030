//! Container environments as Kubernetes builds them: `envFrom` (ConfigMaps, Secrets, with
//! prefixes), then `env` in order with `$(VAR)` expansion against what came before, values from
//! `fieldRef`, `resourceFieldRef`, `configMapKeyRef` and `secretKeyRef`; plus the `kubernetes`
//! Service's variables. Pure: the referenced objects are looked up beforehand ([`Lookups`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ObjectFieldSelector, Pod, ResourceFieldSelector, Secret,
};
use shoal_common::quantity::ParsedQuantity;

/// Objects a pod refers to, fetched before its containers start.
#[derive(Debug, Clone, Default)]
pub struct Lookups {
    pub config_maps: BTreeMap<String, ConfigMap>,
    pub secrets: BTreeMap<String, Secret>,
    /// Variables every container gets first (Service links such as `KUBERNETES_SERVICE_HOST`).
    pub service_env: Vec<(String, String)>,
    pub node_ip: String,
    pub pod_ips: Vec<String>,
    /// ServiceAccount tokens for projected sources, by [`crate::kubelet::tokens::source_key`].
    pub tokens: BTreeMap<String, String>,
}

/// Why a container's environment cannot be built (the container waits with
/// `CreateContainerConfigError` and this message, as in Kubernetes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKey {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKey {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("unsupported fieldPath: {0}")]
    FieldPath(String),
    #[error("unsupported resource: {0}")]
    Resource(String),
}

/// Names of the ConfigMaps and Secrets the pod's environments and volumes use.
pub fn referenced(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let mut config_maps = Vec::new();
    let mut secrets = Vec::new();
    let Some(spec) = &pod.spec else {
        return (config_maps, secrets);
    };
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
    {
        for from in c.env_from.iter().flatten() {
            if let Some(r) = &from.config_map_ref {
                config_maps.push(r.name.clone());
            }
            if let Some(r) = &from.secret_ref {
                secrets.push(r.name.clone());
            }
        }
        for var in c.env.iter().flatten() {
            if let Some(from) = &var.value_from {
                if let Some(r) = &from.config_map_key_ref {
                    config_maps.push(r.name.clone());
                }
                if let Some(r) = &from.secret_key_ref {
                    secrets.push(r.name.clone());
                }
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map {
            config_maps.push(cm.name.clone());
        }
        if let Some(s) = &v.secret {
            secrets.extend(s.secret_name.clone());
        }
        for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &source.config_map {
                config_maps.push(cm.name.clone());
            }
            if let Some(s) = &source.secret {
                secrets.push(s.name.clone());
            }
        }
    }
    for list in [&mut config_maps, &mut secrets] {
        list.sort();
        list.dedup();
    }
    (config_maps, secrets)
}

fn namespace(pod: &Pod) -> String {
    pod.metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into())
}

/// The environment of `container`, in order.
pub fn environment(
    pod: &Pod,
    container: &Container,
    lookups: &Lookups,
) -> Result<Vec<(String, String)>, EnvError> {
    let ns = namespace(pod);
    let mut vars: Vec<(String, String)> = lookups.service_env.clone();
    let set = |vars: &mut Vec<(String, String)>, key: String, value: String| {
        if let Some(existing) = vars.iter_mut().find(|(k, _)| *k == key) {
            existing.1 = value;
        } else {
            vars.push((key, value));
        }
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match lookups.config_maps.get(&r.name) {
                Some(cm) => {
                    for (k, v) in cm.data.iter().flatten() {
                        set(&mut vars, format!("{prefix}{k}"), v.clone());
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(EnvError::ConfigMapNotFound(r.name.clone())),
            }
        }
        if let Some(r) = &from.secret_ref {
            match lookups.secrets.get(&r.name) {
                Some(secret) => {
                    for (k, v) in secret.data.iter().flatten() {
                        set(
                            &mut vars,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(EnvError::SecretNotFound(r.name.clone())),
            }
        }
    }
    for var in container.env.iter().flatten() {
        let value = if let Some(value) = &var.value {
            let known: BTreeMap<&str, &str> =
                vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            expand(value, &known)
        } else if let Some(from) = &var.value_from {
            if let Some(field) = &from.field_ref {
                field_value(pod, field, lookups)?
            } else if let Some(resource) = &from.resource_field_ref {
                resource_value(pod, container, resource)?
            } else if let Some(r) = &from.config_map_key_ref {
                match lookups
                    .config_maps
                    .get(&r.name)
                    .map(|cm| cm.data.as_ref().and_then(|d| d.get(&r.key)))
                {
                    Some(Some(v)) => v.clone(),
                    _ if r.optional == Some(true) => continue,
                    Some(None) => {
                        return Err(EnvError::ConfigMapKey {
                            namespace: ns,
                            name: r.name.clone(),
                            key: r.key.clone(),
                        })
                    }
                    None => return Err(EnvError::ConfigMapNotFound(r.name.clone())),
                }
            } else if let Some(r) = &from.secret_key_ref {
                match lookups
                    .secrets
                    .get(&r.name)
                    .map(|s| s.data.as_ref().and_then(|d| d.get(&r.key)))
                {
                    Some(Some(v)) => String::from_utf8_lossy(&v.0).into_owned(),
                    _ if r.optional == Some(true) => continue,
                    Some(None) => {
                        return Err(EnvError::SecretKey {
                            namespace: ns,
                            name: r.name.clone(),
                            key: r.key.clone(),
                        })
                    }
                    None => return Err(EnvError::SecretNotFound(r.name.clone())),
                }
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        set(&mut vars, var.name.clone(), value);
    }
    Ok(vars)
}

/// Kubernetes' `$(VAR)` expansion: known variables are replaced, unknown references are left
/// as written, `$$` is a literal `$`.
pub fn expand(text: &str, vars: &BTreeMap<&str, &str>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match vars.get(name) {
                        Some(value) => out.push_str(value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = inner;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A downward-API field of the pod.
pub fn field_value(
    pod: &Pod,
    field: &ObjectFieldSelector,
    lookups: &Lookups,
) -> Result<String, EnvError> {
    let path = field.field_path.as_str();
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let in_map = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref()
            .and_then(|m| m.get(key))
            .cloned()
            .unwrap_or_default()
    };
    let bracket = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .map(str::to_string)
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => namespace(pod),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" => lookups.node_ip.clone(),
        "status.hostIPs" => lookups.node_ip.clone(),
        "status.podIP" => lookups.pod_ips.first().cloned().unwrap_or_default(),
        "status.podIPs" => lookups.pod_ips.join(","),
        _ => {
            if let Some(key) = bracket("metadata.labels['") {
                in_map(&meta.labels, &key)
            } else if let Some(key) = bracket("metadata.annotations['") {
                in_map(&meta.annotations, &key)
            } else {
                return Err(EnvError::FieldPath(path.to_string()));
            }
        }
    })
}

/// `key="value"` lines, as the downward API writes label and annotation files.
pub fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A container's request or limit, in units of the divisor (rounded up, at least 1 for CPU).
pub fn resource_value(
    pod: &Pod,
    container: &Container,
    selector: &ResourceFieldSelector,
) -> Result<String, EnvError> {
    let target = match &selector.container_name {
        Some(name) if !name.is_empty() => pod
            .spec
            .as_ref()
            .and_then(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
                    .find(|c| &c.name == name)
            })
            .unwrap_or(container),
        _ => container,
    };
    let resources = target.resources.clone().unwrap_or_default();
    let (kind, name) = selector
        .resource
        .split_once('.')
        .ok_or_else(|| EnvError::Resource(selector.resource.clone()))?;
    let map = match kind {
        "limits" => resources.limits,
        "requests" => resources.requests,
        _ => return Err(EnvError::Resource(selector.resource.clone())),
    };
    let cpu = name == "cpu";
    let quantity = map.and_then(|m| m.get(name).cloned());
    let Some(quantity) = quantity else {
        // Unset limits read as the node's allocatable in Kubernetes; 0 stands for "none" here.
        return Ok(if kind == "limits" {
            node_default(cpu)
        } else {
            "0".into()
        });
    };
    let divisor = selector.divisor.as_ref().map_or("1", |d| d.0.as_str());
    let parse = |q: &str| ParsedQuantity::parse(q).ok().and_then(|p| p.milli_value());
    match (parse(&quantity.0), parse(divisor)) {
        (Some(value), Some(div)) if div > 0 => {
            let result = (value + div - 1) / div;
            Ok(if cpu { result.max(1) } else { result }.to_string())
        }
        _ => Err(EnvError::Resource(selector.resource.clone())),
    }
}

fn node_default(cpu: bool) -> String {
    if cpu {
        std::thread::available_parallelism()
            .map_or(1, usize::from)
            .to_string()
    } else {
        let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib: u64 = text
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        (kib * 1024).to_string()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{
                "name": "app", "image": "b",
                "resources": {"limits": {"memory": "64Mi", "cpu": "250m"}},
                "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
                "env": [
                    {"name": "A", "value": "1"},
                    {"name": "B", "value": "$(A)-$(CFG_color)-$(MISSING)-$$(A)"},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                    {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                    {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                    {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": true}}}
                ]
            }]}
        }))
        .unwrap()
    }

    fn lookups() -> Lookups {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"color": "blue"}}))
                .unwrap();
        let secret: Secret = serde_json::from_value(
            json!({"metadata": {"name": "creds"}, "data": {"password": "czNjcjN0"}}),
        )
        .unwrap();
        Lookups {
            config_maps: [("cfg".to_string(), cm)].into(),
            secrets: [("creds".to_string(), secret)].into(),
            service_env: vec![("KUBERNETES_SERVICE_HOST".into(), "10.43.0.1".into())],
            node_ip: "192.168.0.2".into(),
            pod_ips: vec!["10.42.0.7".into()],
            ..Lookups::default()
        }
    }

    #[test]
    fn the_environment_is_built_as_kubernetes_builds_it() {
        let p = pod();
        let env: BTreeMap<String, String> =
            environment(&p, &p.spec.as_ref().unwrap().containers[0], &lookups())
                .unwrap()
                .into_iter()
                .collect();
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.43.0.1");
        assert_eq!(env["CFG_color"], "blue");
        assert_eq!(env["B"], "1-blue-$(MISSING)-$(A)");
        assert_eq!(env["POD"], "web");
        assert_eq!(env["APP"], "web");
        assert_eq!(env["IP"], "10.42.0.7");
        assert_eq!(env["MEM"], "64");
        assert_eq!(env["CPU"], "1");
        assert_eq!(env["PASS"], "s3cr3t");
        assert!(!env.contains_key("OPT"));
    }

    #[test]
    fn missing_references_are_config_errors() {
        let p = pod();
        let mut l = lookups();
        l.secrets.clear();
        let err = environment(&p, &p.spec.as_ref().unwrap().containers[0], &l).unwrap_err();
        assert_eq!(err.to_string(), "secret \"creds\" not found");
    }

    #[test]
    fn references_are_collected() {
        assert_eq!(
            referenced(&pod()),
            (
                vec!["cfg".to_string(), "nope".to_string()],
                vec!["creds".to_string()]
            )
        );
    }
}
