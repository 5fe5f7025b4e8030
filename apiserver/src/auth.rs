//! Who is calling: the user a TLS client certificate names (CN = user, O = groups, as
//! Kubernetes reads them), else the ServiceAccount a bearer token names (a token this server
//! signed, unexpired, for its audience, whose ServiceAccount and bound object still exist
//! with the uids it records), or nobody. Anonymous callers may only read health and version, as
//! on a Kubernetes API server with anonymous auth limited to those endpoints.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::status::ApiError;

/// The authenticated caller, attached to every request as an extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum User {
    Anonymous,
    Authenticated { name: String, groups: Vec<String> },
}

impl User {
    /// Reads the user from a client certificate the TLS layer already verified against the CA.
    pub fn from_certificate(der: &[u8]) -> User {
        let Ok((_, cert)) = X509Certificate::from_der(der) else {
            return User::Anonymous;
        };
        let subject = cert.subject();
        let name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        let groups = subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_string))
            .collect();
        match name {
            Some(name) if !name.is_empty() => User::Authenticated { name, groups },
            _ => User::Anonymous,
        }
    }
}

/// Paths anyone may call: health and version, and joining (which checks the join token).
fn is_public(path: &str) -> bool {
    matches!(path, "/version" | "/healthz" | "/livez" | "/readyz")
        || path == shoal_common::join::CACERTS_PATH
        || path == shoal_common::join::NODE_CREDENTIALS_PATH
        || path == shoal_common::join::SERVER_BOOTSTRAP_PATH
        || path == shoal_common::join::MEMBERS_PATH
        || path == crate::join::STORE_SNAPSHOTS_PATH
        || path.starts_with("/healthz/")
        || path.starts_with("/livez/")
        || path.starts_with("/readyz/")
}

/// The token of an `Authorization: Bearer` header.
fn bearer_token(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The user a ServiceAccount token authenticates, or `None` when it is not valid (now).
async fn token_user(api: &crate::rest::Api, token: &str) -> Option<User> {
    let signer = api.service_accounts.as_ref()?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = match signer.verify(token, now) {
        Ok(claims) => claims,
        Err(e) => {
            tracing::debug!(error = %e, "bearer token refused");
            return None;
        }
    };
    let k = &claims.kubernetes;
    // A token outlives nothing it names: a recreated object (same name, new uid) is another.
    let mut named = vec![("serviceaccounts", &k.serviceaccount)];
    named.extend(k.pod.as_ref().map(|p| ("pods", p)));
    named.extend(k.secret.as_ref().map(|s| ("secrets", s)));
    for (plural, r) in named {
        let object = api.get_core(plural, &k.namespace, &r.name).await.ok()??;
        let uid = object
            .pointer("/metadata/uid")
            .and_then(serde_json::Value::as_str);
        // As Kubernetes: a pod's tokens die a minute after its deletion began.
        let deleted_long_ago = object
            .pointer("/metadata/deletionTimestamp")
            .and_then(serde_json::Value::as_str)
            .and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .is_some_and(|t| t.unix_timestamp() + 60 < now);
        if uid != Some(r.uid.as_str()) || (plural == "pods" && deleted_long_ago) {
            tracing::debug!(plural, name = %r.name, "bearer token names an object that is gone");
            return None;
        }
    }
    let (name, groups) = claims.user();
    Some(User::Authenticated { name, groups })
}

/// Middleware: authenticates a bearer token when no client certificate did; rejects a bad
/// token, and anonymous requests outside the public paths, with 401.
pub async fn require_user(
    State(api): State<Arc<crate::rest::Api>>,
    mut request: Request,
    next: Next,
) -> Response {
    let mut authenticated = matches!(
        request.extensions().get::<User>(),
        Some(User::Authenticated { .. })
    );
    if !authenticated {
        if let Some(token) = bearer_token(&request) {
            match token_user(&api, token).await {
                Some(user) => {
                    request.extensions_mut().insert(user);
                    authenticated = true;
                }
                None => return ApiError::unauthorized().into_response(),
            }
        }
    }
    if !authenticated && !is_public(request.uri().path()) {
        return ApiError::unauthorized().into_response();
    }
    next.run(request).await
}
