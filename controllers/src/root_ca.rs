//! The root CA publisher's decision (kube-controller-manager's `root-ca-cert-publisher`):
//! every active namespace has a ConfigMap [`ROOT_CA_CONFIGMAP`] whose only data is the
//! cluster CA under `ca.crt`, which pods read from their `kube-api-access-*` volume to trust
//! the API server. A missing one is created, a changed one put back.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::service_account::is_terminating;

/// The ConfigMap's name.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// The key holding the CA.
pub const CA_KEY: &str = "ca.crt";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver \
                           when using internal endpoints such as the internal service IP or \
                           kubernetes.default.svc. No other usage is guaranteed across \
                           distributions of Kubernetes clusters.";

/// What to write in one namespace.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Create(ConfigMap),
    /// Replace the data (and the description annotation) of the existing ConfigMap.
    Update(ConfigMap),
}

fn wanted(namespace: &str, ca_pem: &str, base: Option<&ConfigMap>) -> ConfigMap {
    let mut metadata = base.map(|c| c.metadata.clone()).unwrap_or(ObjectMeta {
        name: Some(ROOT_CA_CONFIGMAP.to_string()),
        namespace: Some(namespace.to_string()),
        ..ObjectMeta::default()
    });
    metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert("kubernetes.io/description".into(), DESCRIPTION.into());
    ConfigMap {
        metadata,
        data: Some(BTreeMap::from([(CA_KEY.to_string(), ca_pem.to_string())])),
        ..ConfigMap::default()
    }
}

/// The write `namespace` needs given its current ConfigMap, if any; `None` when it is right
/// or the namespace is going away.
pub fn plan(namespace: &Namespace, current: Option<&ConfigMap>, ca_pem: &str) -> Option<Plan> {
    if is_terminating(namespace) {
        return None;
    }
    let name = namespace
        .metadata
        .name
        .as_deref()
        .filter(|n| !n.is_empty())?;
    let Some(current) = current else {
        return Some(Plan::Create(wanted(name, ca_pem, None)));
    };
    let right = current
        .data
        .as_ref()
        .is_some_and(|d| d.len() == 1 && d.get(CA_KEY).map(String::as_str) == Some(ca_pem))
        && current.binary_data.as_ref().is_none_or(BTreeMap::is_empty)
        && current
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("kubernetes.io/description"))
            .is_some();
    (!right).then(|| Plan::Update(wanted(name, ca_pem, Some(current))))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ns(name: &str) -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
    }

    const CA: &str = "-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n";

    #[test]
    fn missing_configmap_is_created_with_the_ca() {
        let Some(Plan::Create(cm)) = plan(&ns("shop"), None, CA) else {
            panic!("expected a create");
        };
        assert_eq!(cm.metadata.name.as_deref(), Some("kube-root-ca.crt"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(cm.data.unwrap()["ca.crt"], CA);
    }

    #[test]
    fn a_right_configmap_is_left_and_a_changed_one_restored() {
        let Some(Plan::Create(right)) = plan(&ns("shop"), None, CA) else {
            panic!("expected a create");
        };
        assert_eq!(plan(&ns("shop"), Some(&right), CA), None);

        let mut edited = right.clone();
        edited.data = Some(BTreeMap::from([
            ("ca.crt".to_string(), CA.to_string()),
            ("extra".to_string(), "x".to_string()),
        ]));
        edited.metadata.labels = Some(BTreeMap::from([("keep".into(), "me".into())]));
        let Some(Plan::Update(fixed)) = plan(&ns("shop"), Some(&edited), CA) else {
            panic!("expected an update");
        };
        assert_eq!(fixed.data, right.data);
        assert_eq!(fixed.metadata.labels, edited.metadata.labels);

        // A rotated CA replaces the old one.
        let Some(Plan::Update(rotated)) = plan(&ns("shop"), Some(&right), "new") else {
            panic!("expected an update");
        };
        assert_eq!(rotated.data.unwrap()["ca.crt"], "new");
    }

    #[test]
    fn terminating_namespaces_get_nothing() {
        let ns: Namespace = serde_json::from_value(
            json!({"metadata": {"name": "old"}, "status": {"phase": "Terminating"}}),
        )
        .unwrap();
        assert_eq!(plan(&ns, None, CA), None);
    }
}
