//! The ServiceAccount controller's decision (kube-controller-manager's
//! `pkg/controller/serviceaccount`): every active namespace has a ServiceAccount named
//! [`DEFAULT_SERVICE_ACCOUNT`], created when missing (pods without `serviceAccountName` run
//! as it).
//!
//! Like Kubernetes, a namespace that is not active (being deleted) gets nothing: the
//! namespace controller is emptying it, and a new account would only be deleted again. An
//! existing account is left as it is, even if a user changed it.

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The account every namespace gets.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// Whether the namespace is being deleted (`deletionTimestamp` set or phase `Terminating`).
pub fn is_terminating(namespace: &Namespace) -> bool {
    namespace.metadata.deletion_timestamp.is_some()
        || namespace.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
}

/// The ServiceAccount to create in `namespace`, given whether its `default` account exists.
/// `None` when nothing is to be created.
pub fn plan(namespace: &Namespace, default_exists: bool) -> Option<ServiceAccount> {
    if default_exists || is_terminating(namespace) {
        return None;
    }
    let name = namespace.metadata.name.clone().filter(|n| !n.is_empty())?;
    Some(ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT_SERVICE_ACCOUNT.to_string()),
            namespace: Some(name),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::time;

    fn namespace(json: serde_json::Value) -> Namespace {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn an_active_namespace_without_the_account_gets_one() {
        let ns = namespace(serde_json::json!({
            "metadata": {"name": "shop"}, "status": {"phase": "Active"}
        }));
        let account = plan(&ns, false).unwrap();
        assert_eq!(account.metadata.name.as_deref(), Some("default"));
        assert_eq!(account.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(plan(&ns, true), None, "already there");
        // A namespace fresh from the API may not have a phase yet: it is active.
        let new = namespace(serde_json::json!({"metadata": {"name": "new"}}));
        assert!(plan(&new, false).is_some());
    }

    #[test]
    fn terminating_namespaces_get_nothing() {
        let mut ns = namespace(serde_json::json!({
            "metadata": {"name": "old"}, "status": {"phase": "Terminating"}
        }));
        assert!(is_terminating(&ns));
        assert_eq!(plan(&ns, false), None);
        ns.status = None;
        ns.metadata.deletion_timestamp = Some(time(10));
        assert_eq!(plan(&ns, false), None);
    }
}
