//! Server-side field validation for the built-in kinds: an object is decoded into its typed
//! form (k8s-openapi, the Kubernetes v1.33 API) and encoded again. What the typed form drops is
//! an unknown field; what it cannot decode is a type error. Kubernetes stores only what its
//! typed form keeps, so the round-tripped object is what gets stored — and every stored object
//! is one typed clients (kube-rs, client-go) can read back.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use shoal_common::ResourceDef;

/// `?fieldValidation=`: what to do about unknown fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Strict,
    Warn,
    Ignore,
}

impl FieldValidation {
    /// Kubernetes' default is `Warn`.
    pub fn parse(value: Option<&str>) -> Result<FieldValidation, String> {
        match value {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some(other) => Err(format!(
                "fieldValidation {other:?} is not one of Strict, Warn or Ignore"
            )),
        }
    }
}

/// The outcome of a round trip.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// The object as it will be stored: unknown fields dropped.
    pub object: Value,
    /// Paths of the unknown fields (`spec.replica`).
    pub unknown: Vec<String>,
}

fn round_trip<T: DeserializeOwned + Serialize>(object: &Value) -> Result<Value, String> {
    // Decoded from the borrowed tree: no copy of the object first.
    let typed = T::deserialize(object).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

/// Round-trips `object` through the typed form of `def`'s kind; `None` for kinds without one
/// (custom resources, which their CRD schema validates instead).
pub fn check(def: &ResourceDef, object: &Value) -> Option<Result<Checked, String>> {
    use k8s_openapi::api::{apps, batch, coordination, core, discovery, events, rbac};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions;
    let result = match (def.group, def.kind) {
        ("", "Namespace") => round_trip::<core::v1::Namespace>(object),
        ("", "Pod") => round_trip::<core::v1::Pod>(object),
        ("", "Service") => round_trip::<core::v1::Service>(object),
        ("", "Endpoints") => round_trip::<core::v1::Endpoints>(object),
        ("", "Node") => round_trip::<core::v1::Node>(object),
        ("", "ConfigMap") => round_trip::<core::v1::ConfigMap>(object),
        ("", "Secret") => round_trip::<core::v1::Secret>(object),
        ("", "ServiceAccount") => round_trip::<core::v1::ServiceAccount>(object),
        ("", "Event") => round_trip::<core::v1::Event>(object),
        ("", "PersistentVolumeClaim") => round_trip::<core::v1::PersistentVolumeClaim>(object),
        ("apps", "Deployment") => round_trip::<apps::v1::Deployment>(object),
        ("apps", "ReplicaSet") => round_trip::<apps::v1::ReplicaSet>(object),
        ("apps", "DaemonSet") => round_trip::<apps::v1::DaemonSet>(object),
        ("apps", "StatefulSet") => round_trip::<apps::v1::StatefulSet>(object),
        ("apps", "ControllerRevision") => round_trip::<apps::v1::ControllerRevision>(object),
        ("batch", "Job") => round_trip::<batch::v1::Job>(object),
        ("batch", "CronJob") => round_trip::<batch::v1::CronJob>(object),
        ("coordination.k8s.io", "Lease") => round_trip::<coordination::v1::Lease>(object),
        ("discovery.k8s.io", "EndpointSlice") => round_trip::<discovery::v1::EndpointSlice>(object),
        ("events.k8s.io", "Event") => round_trip::<events::v1::Event>(object),
        ("rbac.authorization.k8s.io", "Role") => round_trip::<rbac::v1::Role>(object),
        ("rbac.authorization.k8s.io", "RoleBinding") => round_trip::<rbac::v1::RoleBinding>(object),
        ("rbac.authorization.k8s.io", "ClusterRole") => round_trip::<rbac::v1::ClusterRole>(object),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            round_trip::<rbac::v1::ClusterRoleBinding>(object)
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            round_trip::<apiextensions::CustomResourceDefinition>(object)
        }
        _ => return None,
    };
    Some(result.map(|typed| {
        let mut unknown = Vec::new();
        dropped(object, &typed, "", &mut unknown);
        Checked {
            object: typed,
            unknown,
        }
    }))
}

/// Paths present (and not null) in `input` but absent from `output`.
fn dropped(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (key, value) in i {
                if value.is_null() {
                    continue;
                }
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match o.get(key) {
                    Some(kept) => dropped(value, kept, &child, out),
                    None => out.push(child),
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (index, (a, b)) in i.iter().zip(o.iter()).enumerate() {
                dropped(a, b, &format!("{path}[{index}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use shoal_common::catalog::find;

    #[test]
    fn unknown_fields_are_found_and_dropped() {
        let deploy = find("apps", "v1", "deployments").expect("deployments");
        let object = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "creationTimestamp": null, "labels": {"any": "label"}},
            "spec": {"replica": 3, "selector": {"matchLabels": {"a": "b"}},
                     "template": {"metadata": {"labels": {"a": "b"}},
                                  "spec": {"containers": [{"name": "c", "image": "x", "imagePullPolice": "Always"}]}}}});
        let checked = check(deploy, &object).expect("typed").expect("decodes");
        assert_eq!(
            checked.unknown,
            [
                "spec.replica",
                "spec.template.spec.containers[0].imagePullPolice"
            ]
        );
        assert!(checked.object["spec"].get("replica").is_none());
        assert_eq!(checked.object["metadata"]["labels"]["any"], "label");
    }

    #[test]
    fn type_errors_are_errors_and_custom_kinds_are_not_typed() {
        let deploy = find("apps", "v1", "deployments").expect("deployments");
        let bad = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": "three"}});
        assert!(matches!(check(deploy, &bad), Some(Err(_))));
        let custom = ResourceDef {
            group: "example.com",
            ..*deploy
        };
        assert!(check(&custom, &bad).is_none());
        assert_eq!(FieldValidation::parse(None), Ok(FieldValidation::Warn));
        assert!(FieldValidation::parse(Some("Loud")).is_err());
    }

    #[test]
    fn every_built_in_kind_has_a_typed_form() {
        for def in shoal_common::catalog::BUILTIN {
            let object = json!({"apiVersion": def.api_version(), "kind": def.kind, "metadata": {"name": "x"}});
            let checked =
                check(def, &object).unwrap_or_else(|| panic!("{} has no typed form", def.kind));
            assert!(checked.is_ok(), "{}: {checked:?}", def.kind);
        }
    }
}
