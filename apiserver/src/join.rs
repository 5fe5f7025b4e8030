//! The server's half of a node joining (the exchange is described in `shoal_common::join`):
//! `GET /cacerts` gives anyone the cluster CA, and `POST /v1-shoal/node-credentials` signs a
//! node client certificate for a caller presenting the join token's secret with HTTP Basic.
//! Both sit outside client-certificate authentication, since a joining node has none yet.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use shoal_common::join::{
    JoinToken, JoinedCluster, NodeCredentials, NodeCredentialsRequest, JOIN_USER,
};

use crate::pki::ClusterPki;
use crate::rest::Api;
use crate::status::ApiError;

/// What the server needs to admit nodes.
pub struct JoinAuthority {
    pki: ClusterPki,
    token: JoinToken,
    cluster: JoinedCluster,
}

impl std::fmt::Debug for JoinAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinAuthority")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl JoinAuthority {
    pub fn new(pki: ClusterPki, cluster: JoinedCluster) -> Self {
        let token = JoinToken {
            ca_hash: None,
            secret: pki.token_secret.clone(),
        };
        JoinAuthority {
            pki,
            token,
            cluster,
        }
    }

    /// Checks the caller's token and signs its certificate: the pure core of the endpoint.
    pub fn admit(
        &self,
        authorization: Option<&str>,
        body: &[u8],
    ) -> Result<NodeCredentials, ApiError> {
        if !authorization.is_some_and(|value| self.authorized(value)) {
            return Err(ApiError::unauthorized());
        }
        let request: NodeCredentialsRequest = serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("the node credentials request is not valid JSON: {e}"),
            )
        })?;
        crate::objects::validate_name("Node", &request.node_name).map_err(|detail| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!("node name {:?}: {detail}", request.node_name),
            )
        })?;
        let client_cert = self
            .pki
            .sign_node_client(&request.node_name, &request.csr)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()))?;
        tracing::info!(node = %request.node_name, "issued a node client certificate");
        Ok(NodeCredentials {
            client_cert,
            ca_cert: self.pki.ca_cert_pem.clone(),
            cluster: self.cluster.clone(),
        })
    }

    /// `Basic base64(node:<secret>)`.
    fn authorized(&self, authorization: &str) -> bool {
        let Some(encoded) = authorization.strip_prefix("Basic ") else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Ok(text) = std::str::from_utf8(&decoded) else {
            return false;
        };
        match text.split_once(':') {
            Some((user, secret)) => user == JOIN_USER && self.token.secret_matches(secret),
            None => false,
        }
    }
}

/// `GET /cacerts`.
pub async fn cacerts(State(api): State<Arc<Api>>) -> Response {
    match &api.join {
        Some(join) => (
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            join.pki.ca_cert_pem.clone(),
        )
            .into_response(),
        None => ApiError::not_found_path(shoal_common::join::CACERTS_PATH).into_response(),
    }
}

/// `POST /v1-shoal/node-credentials`.
pub async fn node_credentials(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(join) = &api.join else {
        return ApiError::not_found_path(shoal_common::join::NODE_CREDENTIALS_PATH).into_response();
    };
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match join.admit(authorization, &body) {
        Ok(credentials) => axum::Json(credentials).into_response(),
        Err(err) => {
            if err.code == StatusCode::UNAUTHORIZED {
                tracing::warn!("a node presented a wrong join token");
            }
            err.into_response()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::pki::ServingIdentity;
    use rcgen::{CertificateParams, KeyPair};

    fn authority(dir: &std::path::Path) -> JoinAuthority {
        let identity = ServingIdentity::kubernetes("s1", "cluster.local", vec![]);
        let pki = ClusterPki::load_or_create(dir, &identity, Some("s3cret")).unwrap();
        JoinAuthority::new(
            pki,
            JoinedCluster {
                cluster_cidr: "10.42.0.0/16".into(),
                service_cidr: "10.43.0.0/16".into(),
                cluster_dns: "10.43.0.10".into(),
                cluster_domain: "cluster.local".into(),
            },
        )
    }

    fn basic(user: &str, secret: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"))
        )
    }

    fn request(name: &str) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        serde_json::to_vec(&NodeCredentialsRequest {
            node_name: name.into(),
            csr,
        })
        .unwrap()
    }

    #[test]
    fn the_token_holder_gets_a_node_certificate_and_the_cluster_settings() {
        let dir = tempfile::TempDir::new().unwrap();
        let join = authority(dir.path());
        let answer = join
            .admit(Some(&basic("node", "s3cret")), &request("worker-1"))
            .unwrap();
        assert!(answer
            .client_cert
            .starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(answer.ca_cert, join.pki.ca_cert_pem);
        assert_eq!(answer.cluster.cluster_dns, "10.43.0.10");
    }

    #[test]
    fn wrong_or_missing_credentials_are_unauthorized() {
        let dir = tempfile::TempDir::new().unwrap();
        let join = authority(dir.path());
        let body = request("worker-1");
        for auth in [
            None,
            Some(basic("node", "wrong")),
            Some(basic("admin", "s3cret")),
            Some("Bearer s3cret".to_string()),
            Some("Basic !!!".to_string()),
        ] {
            let err = join.admit(auth.as_deref(), &body).unwrap_err();
            assert_eq!(err.code, StatusCode::UNAUTHORIZED, "{auth:?}");
        }
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let dir = tempfile::TempDir::new().unwrap();
        let join = authority(dir.path());
        let auth = basic("node", "s3cret");
        let err = join.admit(Some(&auth), b"{").unwrap_err();
        assert_eq!(err.code, StatusCode::BAD_REQUEST);
        let err = join.admit(Some(&auth), &request("Bad_Name")).unwrap_err();
        assert_eq!(err.code, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(err.message.contains("Bad_Name"), "{}", err.message);
        let body = br#"{"nodeName":"w","csr":"junk"}"#;
        let err = join.admit(Some(&auth), body).unwrap_err();
        assert_eq!(err.code, StatusCode::BAD_REQUEST);
        assert!(err.message.contains("PKCS#10"), "{}", err.message);
    }
}
