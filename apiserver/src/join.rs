//! The server's half of a node or server joining (the exchange is described in
//! `shoal_common::join`): `GET /cacerts` gives anyone the cluster CA, and
//! `POST /v1-shoal/node-credentials` signs a node client certificate for a caller presenting
//! the join token's secret with HTTP Basic. A joining server (Basic `server:<secret>`) gets the
//! cluster's shared keys from `POST /v1-shoal/server-bootstrap` and asks to be added to the
//! store at `/v1-shoal/members`, which also lists and removes members. The same credentials
//! ask a server for a store snapshot at [`STORE_SNAPSHOTS_PATH`] (`shoal store snapshot save`).
//! All of them sit outside client-certificate authentication, since a joiner has none yet.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use shoal_common::join::{
    JoinToken, JoinedCluster, NodeCredentials, NodeCredentialsRequest, ServerBootstrap,
    StoreMember, JOIN_USER, SERVER_USER,
};

use crate::pki::ClusterPki;
use crate::rest::Api;
use crate::status::ApiError;

/// Why a membership change or listing failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct MembershipError(pub String);

/// The servers' replicated store as the members endpoint sees it (implemented over the Raft
/// store where the server is wired; any member may be asked, the store forwards to its leader).
#[async_trait::async_trait]
pub trait StoreMembership: Send + Sync + 'static {
    async fn members(&self) -> Result<Vec<StoreMember>, MembershipError>;
    /// Adds a member as a learner, then makes it a voter once it has caught up.
    async fn add(&self, id: u64, peer_address: &str) -> Result<(), MembershipError>;
    async fn remove(&self, id: u64) -> Result<(), MembershipError>;
}

#[async_trait::async_trait]
impl StoreMembership for shoal_store::RaftStore {
    async fn members(&self) -> Result<Vec<StoreMember>, MembershipError> {
        let members = shoal_store::RaftStore::members(self)
            .await
            .map_err(|e| MembershipError(e.to_string()))?;
        Ok(members
            .members
            .into_iter()
            .map(|m| StoreMember {
                id: m.id,
                leader: members.leader == Some(m.id),
                peer_address: m.addr,
                voter: m.voter,
            })
            .collect())
    }

    async fn add(&self, id: u64, peer_address: &str) -> Result<(), MembershipError> {
        self.add_member(id, peer_address)
            .await
            .map_err(|e| MembershipError(e.to_string()))
    }

    async fn remove(&self, id: u64) -> Result<(), MembershipError> {
        self.remove_member(id)
            .await
            .map_err(|e| MembershipError(e.to_string()))
    }
}

/// `POST` asks the server for a snapshot of its store, written to its snapshot directory:
/// a [`SnapshotRequest`] in, the file's [`shoal_store::SnapshotInfo`] out.
pub const STORE_SNAPSHOTS_PATH: &str = "/v1-shoal/store-snapshots";

/// What `POST` [`STORE_SNAPSHOTS_PATH`] carries.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SnapshotRequest {
    /// How the file's name starts (the server adds its node name and the time); the
    /// server's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Why a snapshot was not saved.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SnapshotSaveError {
    /// The request cannot be honoured as asked (a bad name): a 422.
    #[error("{0}")]
    Invalid(String),
    /// The store or the disk failed: a 503.
    #[error("{0}")]
    Failed(String),
}

/// The server's store snapshots as the snapshot endpoint sees them (implemented where the
/// server is wired: it knows the snapshot directory and the node name).
#[async_trait::async_trait]
pub trait StoreSnapshots: Send + Sync + 'static {
    /// Saves a snapshot whose file name starts with `name` (or the default).
    async fn save(
        &self,
        name: Option<&str>,
    ) -> Result<shoal_store::SnapshotInfo, SnapshotSaveError>;
}

/// What the server needs to admit nodes and servers.
pub struct JoinAuthority {
    pki: ClusterPki,
    token: JoinToken,
    cluster: JoinedCluster,
    members: Option<Arc<dyn StoreMembership>>,
    snapshots: Option<Arc<dyn StoreSnapshots>>,
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
            members: None,
            snapshots: None,
        }
    }

    /// Lets holders of the token as a server ask for store snapshots.
    pub fn with_snapshots(mut self, snapshots: Arc<dyn StoreSnapshots>) -> Self {
        self.snapshots = Some(snapshots);
        self
    }

    fn snapshots_for(
        &self,
        authorization: Option<&str>,
    ) -> Result<&Arc<dyn StoreSnapshots>, ApiError> {
        self.check_server(authorization)?;
        self.snapshots
            .as_ref()
            .ok_or_else(|| ApiError::not_found_path(STORE_SNAPSHOTS_PATH))
    }

    /// Lets servers join through this one (without it only nodes can).
    pub fn with_members(mut self, members: Arc<dyn StoreMembership>) -> Self {
        self.members = Some(members);
        self
    }

    /// The shared keys, for a caller holding the token as a server.
    pub fn bootstrap(&self, authorization: Option<&str>) -> Result<ServerBootstrap, ApiError> {
        self.check_server(authorization)?;
        if self.members.is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                "this server does not take other servers".to_string(),
            ));
        }
        Ok(self.pki.bootstrap(self.cluster.clone()))
    }

    fn members_for(
        &self,
        authorization: Option<&str>,
    ) -> Result<&Arc<dyn StoreMembership>, ApiError> {
        self.check_server(authorization)?;
        self.members.as_ref().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                "this server does not take other servers".to_string(),
            )
        })
    }

    /// Checks the caller's token and signs its certificate: the pure core of the endpoint.
    pub fn admit(
        &self,
        authorization: Option<&str>,
        body: &[u8],
    ) -> Result<NodeCredentials, ApiError> {
        if !authorization.is_some_and(|value| self.authorized(value, JOIN_USER)) {
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

    /// Only a caller holding the token as a server gets past this.
    fn check_server(&self, authorization: Option<&str>) -> Result<(), ApiError> {
        if authorization.is_some_and(|value| self.authorized(value, SERVER_USER)) {
            Ok(())
        } else {
            Err(ApiError::unauthorized())
        }
    }

    /// `Basic base64(<user>:<secret>)`.
    fn authorized(&self, authorization: &str, user: &str) -> bool {
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
            Some((presented, secret)) => presented == user && self.token.secret_matches(secret),
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
    match join.admit(authorization(&headers), &body) {
        Ok(credentials) => axum::Json(credentials).into_response(),
        Err(err) => {
            if err.code == StatusCode::UNAUTHORIZED {
                tracing::warn!("a node presented a wrong join token");
            }
            err.into_response()
        }
    }
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// `POST /v1-shoal/server-bootstrap`.
pub async fn server_bootstrap(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    let Some(join) = &api.join else {
        return ApiError::not_found_path(shoal_common::join::SERVER_BOOTSTRAP_PATH).into_response();
    };
    match join.bootstrap(authorization(&headers)) {
        Ok(bundle) => {
            tracing::info!("gave a joining server the cluster's keys");
            axum::Json(bundle).into_response()
        }
        Err(err) => {
            if err.code == StatusCode::UNAUTHORIZED {
                tracing::warn!("a server presented a wrong join token");
            }
            err.into_response()
        }
    }
}

/// `GET`, `POST` and `DELETE /v1-shoal/members`: list, add (`StoreMember` body; `voter` and
/// `leader` ignored) and remove (`?id=N`) members of the store.
pub async fn members(
    State(api): State<Arc<Api>>,
    method: axum::http::Method,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(join) = &api.join else {
        return ApiError::not_found_path(shoal_common::join::MEMBERS_PATH).into_response();
    };
    let members = match join.members_for(authorization(&headers)) {
        Ok(members) => members,
        Err(err) => return err.into_response(),
    };
    let failed = |e: MembershipError| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", e.0).into_response()
    };
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", m).into_response();
    match method {
        axum::http::Method::GET => match members.members().await {
            Ok(list) => axum::Json(list).into_response(),
            Err(e) => failed(e),
        },
        axum::http::Method::POST => {
            let member: StoreMember = match serde_json::from_slice(&body) {
                Ok(member) => member,
                Err(e) => return bad(format!("the member is not valid JSON: {e}")),
            };
            if member.peer_address.parse::<std::net::SocketAddr>().is_err() {
                return bad(format!(
                    "peerAddress {:?} is not an IP:port",
                    member.peer_address
                ));
            }
            tracing::info!(id = member.id, address = %member.peer_address, "adding a store member");
            match members.add(member.id, &member.peer_address).await {
                Ok(()) => StatusCode::NO_CONTENT.into_response(),
                Err(e) => failed(e),
            }
        }
        axum::http::Method::DELETE => {
            let Some(id) = query.get("id").and_then(|id| id.parse::<u64>().ok()) else {
                return bad("DELETE needs ?id=<member id>".to_string());
            };
            tracing::info!(id, "removing a store member");
            match members.remove(id).await {
                Ok(()) => StatusCode::NO_CONTENT.into_response(),
                Err(e) => failed(e),
            }
        }
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
}

/// `POST /v1-shoal/store-snapshots`: saves a snapshot of this server's store.
pub async fn store_snapshots(
    State(api): State<Arc<Api>>,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(join) = &api.join else {
        return ApiError::not_found_path(STORE_SNAPSHOTS_PATH).into_response();
    };
    let snapshots = match join.snapshots_for(authorization(&headers)) {
        Ok(snapshots) => snapshots,
        Err(err) => return err.into_response(),
    };
    if method != axum::http::Method::POST {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let request: SnapshotRequest = if body.is_empty() {
        SnapshotRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(e) => {
                return ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("the snapshot request is not valid JSON: {e}"),
                )
                .into_response()
            }
        }
    };
    match snapshots.save(request.name.as_deref()).await {
        Ok(info) => {
            tracing::info!(file = %info.path.display(), revision = info.header.revision, "saved a store snapshot");
            axum::Json(info).into_response()
        }
        Err(SnapshotSaveError::Invalid(m)) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", m).into_response()
        }
        Err(SnapshotSaveError::Failed(m)) => {
            tracing::warn!(error = %m, "a store snapshot failed");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", m).into_response()
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
    fn only_a_server_holding_the_token_gets_the_keys_and_only_where_servers_may_join() {
        let dir = tempfile::TempDir::new().unwrap();
        let join = authority(dir.path());
        // A node's credentials never open the server endpoints.
        let err = join.bootstrap(Some(&basic("node", "s3cret"))).unwrap_err();
        assert_eq!(err.code, StatusCode::UNAUTHORIZED);
        let err = join.bootstrap(Some(&basic("server", "wrong"))).unwrap_err();
        assert_eq!(err.code, StatusCode::UNAUTHORIZED);
        // Without a replicated store this server takes no other servers.
        let err = join
            .bootstrap(Some(&basic("server", "s3cret")))
            .unwrap_err();
        assert_eq!(err.code, StatusCode::NOT_FOUND);

        struct NoMembers;
        #[async_trait::async_trait]
        impl StoreMembership for NoMembers {
            async fn members(&self) -> Result<Vec<StoreMember>, MembershipError> {
                Ok(vec![])
            }
            async fn add(&self, _: u64, _: &str) -> Result<(), MembershipError> {
                Err(MembershipError("not here".into()))
            }
            async fn remove(&self, _: u64) -> Result<(), MembershipError> {
                Err(MembershipError("not here".into()))
            }
        }
        let join = join.with_members(Arc::new(NoMembers));
        let bundle = join.bootstrap(Some(&basic("server", "s3cret"))).unwrap();
        assert_eq!(bundle.ca_cert, join.pki.ca_cert_pem);
        assert_eq!(bundle.peer_ca_cert, join.pki.peer_ca_cert_pem);
        assert_ne!(bundle.peer_ca_cert, bundle.ca_cert);
        assert_eq!(bundle.cluster.cluster_cidr, "10.42.0.0/16");
    }

    #[test]
    fn only_a_server_holding_the_token_may_ask_for_snapshots() {
        let dir = tempfile::TempDir::new().unwrap();
        let join = authority(dir.path());
        let err = join
            .snapshots_for(Some(&basic("server", "s3cret")))
            .err()
            .unwrap();
        assert_eq!(err.code, StatusCode::NOT_FOUND);

        struct Saves;
        #[async_trait::async_trait]
        impl StoreSnapshots for Saves {
            async fn save(
                &self,
                _: Option<&str>,
            ) -> Result<shoal_store::SnapshotInfo, SnapshotSaveError> {
                Err(SnapshotSaveError::Failed("not here".into()))
            }
        }
        let join = join.with_snapshots(Arc::new(Saves));
        assert!(join.snapshots_for(Some(&basic("server", "s3cret"))).is_ok());
        for auth in [
            None,
            Some(basic("node", "s3cret")),
            Some(basic("server", "wrong")),
        ] {
            let err = join.snapshots_for(auth.as_deref()).err().unwrap();
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
