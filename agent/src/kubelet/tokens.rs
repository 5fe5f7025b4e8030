//! The kubelet's ServiceAccount token manager: tokens for pods' projected
//! `serviceAccountToken` sources, requested from the TokenRequest API for the pod's
//! ServiceAccount with the source's audience and lifetime and bound to the pod, cached per pod
//! and source and renewed once 80% of their lifetime has passed or they are older than 24 h,
//! as the kubelet's `token.Manager` does. When to renew is pure ([`needs_refresh`]).

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount, ServiceAccountTokenProjection};
use kube::api::{Api, PostParams};

/// Tokens are renewed at the latest when they are this old (seconds).
const MAX_AGE_SECONDS: i64 = 24 * 60 * 60;
/// The lifetime a source without `expirationSeconds` asks for (Kubernetes' default).
const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

/// A token and its validity, in unix seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub token: String,
    pub issued_at: i64,
    pub expires_at: i64,
}

/// Whether `token` should be replaced at `now`: 80% of its lifetime is gone, or it is older
/// than 24 hours.
pub fn needs_refresh(token: &Token, now: i64) -> bool {
    let lifetime = token.expires_at - token.issued_at;
    now >= token.issued_at + lifetime * 8 / 10 || now >= token.issued_at + MAX_AGE_SECONDS
}

/// How a projected source names its token within a pod (and in [`crate::kubelet::env::Lookups`]).
pub fn source_key(source: &ServiceAccountTokenProjection) -> String {
    format!(
        "{}|{}",
        source.audience.as_deref().unwrap_or_default(),
        source
            .expiration_seconds
            .unwrap_or(DEFAULT_EXPIRATION_SECONDS)
    )
}

/// The token sources of a pod's projected volumes.
pub fn sources(pod: &Pod) -> Vec<&ServiceAccountTokenProjection> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|s| s.service_account_token.as_ref())
        .collect()
}

/// Tokens by pod uid and source key.
#[derive(Debug, Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<(String, String), Token>>,
}

impl TokenCache {
    /// The token for `source` of `pod`, from the cache or freshly requested; `None` (logged)
    /// when the API refuses it (for example while the ServiceAccount does not exist yet).
    pub async fn get(
        &self,
        client: &kube::Client,
        pod: &Pod,
        source: &ServiceAccountTokenProjection,
        now: i64,
    ) -> Option<String> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let key = (uid.clone(), source_key(source));
        let cached = self.lock().get(&key).cloned();
        if let Some(token) = &cached {
            if !needs_refresh(token, now) {
                return Some(token.token.clone());
            }
        }
        match request(client, pod, source).await {
            Ok(fresh) => {
                let token = fresh.token.clone();
                self.lock().insert(key, fresh);
                Some(token)
            }
            Err(err) => {
                tracing::warn!(pod = ?pod.metadata.name, %err, "requesting a service account token");
                // A token that is still valid beats none while the API is unreachable.
                cached.filter(|t| now < t.expires_at).map(|t| t.token)
            }
        }
    }

    /// Forgets a pod's tokens (the pod is gone from this node).
    pub fn forget_pod(&self, uid: &str) {
        self.lock().retain(|(pod, _), _| pod != uid);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Token>> {
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Why no token was obtained.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error(transparent)]
    Api(#[from] kube::Error),
    #[error("the TokenRequest answer has no status")]
    NoStatus,
}

/// Seconds since the epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

async fn request(
    client: &kube::Client,
    pod: &Pod,
    source: &ServiceAccountTokenProjection,
) -> Result<Token, RequestError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: source.audience.iter().cloned().collect(),
            expiration_seconds: Some(
                source
                    .expiration_seconds
                    .unwrap_or(DEFAULT_EXPIRATION_SECONDS),
            ),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..TokenRequest::default()
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let answer = api
        .create_token_request(account, &PostParams::default(), &request)
        .await?;
    let now = unix_now();
    let status = answer.status.ok_or(RequestError::NoStatus)?;
    let expires_at = status.expiration_timestamp.0.as_second();
    Ok(Token {
        token: status.token,
        issued_at: now,
        expires_at,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn token(issued_at: i64, expires_at: i64) -> Token {
        Token {
            token: "t".into(),
            issued_at,
            expires_at,
        }
    }

    #[test]
    fn renewed_after_80_percent_of_the_lifetime() {
        let t = token(1000, 1000 + 3607);
        assert!(!needs_refresh(&t, 1000));
        assert!(!needs_refresh(&t, 1000 + 2884));
        assert!(needs_refresh(&t, 1000 + 2885));
        assert!(needs_refresh(&t, 1000 + 4000), "expired");
    }

    #[test]
    fn renewed_after_a_day_whatever_the_lifetime() {
        let t = token(0, 7 * 24 * 3600);
        assert!(!needs_refresh(&t, 24 * 3600 - 1));
        assert!(needs_refresh(&t, 24 * 3600));
    }

    #[test]
    fn sources_are_keyed_by_audience_and_lifetime() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u"},
            "spec": {"containers": [], "volumes": [{"name": "v", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
                {"serviceAccountToken": {"path": "vault", "audience": "vault"}},
                {"configMap": {"name": "c"}}]}}]}
        }))
        .unwrap();
        let keys: Vec<String> = sources(&pod).into_iter().map(source_key).collect();
        assert_eq!(keys, ["|3607", "vault|3600"]);
    }
}
